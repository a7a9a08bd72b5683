"""Review of trioflow by a newcomer (helper newcomer7) coming from Temporal / DBOS / Step Functions.

Each test is a finding: it fails on the code as reviewed. Public API only.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


async def _echo(data: Any) -> Any:
    return data


async def _undo(data: Any) -> None:
    return None


def _parallel_wf(name: str, branches: int, *, timeout: float | None = None) -> tf.WorkflowDefinition:
    br = [tf.branch(f"b{i}").task(f"s{i}", job="echo", compensate="undo")
          .wait(f"w{i}", seconds=60).task(f"t{i}", job="echo").build() for i in range(branches)]
    b = tf.workflow(name).parallel("p", branches=br, on_error="wait-all")
    if timeout is not None:
        b = b.with_timeout(timeout)
    return b.build()


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_an_ended_instance_shows_its_wide_parallel_step_as_started_unlike_a_narrow_one(
        autojump_clock: trio.testing.MockClock, how: str) -> None:
    """A user reads ``instance.step_results`` (and ``to_dict()``) of an instance that has ENDED
    (cancelled, or timed out) to show which steps ran and how each ended.

    Actual: a parallel step of 32 branches, cut short by ``cancel()`` or the workflow timeout,
    stays in ``step_results`` with status ``"started"`` (its start record, whose
    ``completed_at`` equals its ``started_at``), and ``history``'s only entry for it is that
    ``started`` record: the ended instance claims a step still under way. The same workflow
    with 31 branches lists no entry for the step at all. So the view of a cancelled instance
    changes with the branch count, a storage detail (README, Persistence: "a parallel step of 32
    branches or more stores, as it begins, a `started` record").

    Why wrong: README says ``step_results`` holds the ``started`` record only "until it ends",
    and that "a run that failed, was cancelled or timed out lists only the steps it ran"; a
    child step cut short the same way is recorded ``failed`` (``Cancelled``), and a task step
    cut short is recorded ``failed``. No entry of an ended instance should say ``started``, and
    31 vs 32 branches should not change what a user sees.
    """
    views: dict[int, dict[str, str]] = {}
    async with open_test_engine() as engine:
        engine.jobs.register("echo", _echo)
        engine.jobs.register("undo", _undo)
        for n in (31, 32):
            engine.register(_parallel_wf(f"wf{n}", n, timeout=30.0 if how == "timeout" else None))
            iid = await engine.start(f"wf{n}", {})
            await trio.sleep(3)
            if how == "cancel":
                assert await engine.cancel(iid)
            inst = await engine.wait(iid)
            assert inst.status == ("cancelled" if how == "cancel" else "timed_out")
            views[n] = {k: v.status for k, v in inst.step_results.items() if k == "p"}
            assert all(r.status != "started" for r in inst.step_results.values()), (
                n, {k: v.status for k, v in inst.step_results.items() if v.status == "started"})
    # (Corrected by the fixer: README, Persistence, says a step of 32 branches or more stores a
    # ``started`` record as it begins, which its end follows, cut short included, while a
    # narrower step, as a wait or a receive step, records nothing of its own when cut short.
    # What the two must share is what README promises: no step of an ended instance under way.
    # The wide step's end is then the one a child step cut short gets.)
    assert views[31] == {} and views[32] == {"p": "failed"}, views


async def test_a_cancelled_map_step_stays_started_in_the_ended_instances_view(
        autojump_clock: trio.testing.MockClock) -> None:
    """The same as above, for a map step (README's "a map or child step's execution has two
    records under one id: a `started` one when it begins, and its end").

    Actual: cancel an instance while its map's items wait on a timer: the instance ends
    ``cancelled``, and ``step_results["each"].status == "started"``, ``history`` holding only
    the ``started`` record for it: no end is ever recorded. A child step cut short the same way
    is recorded ``failed`` (``Cancelled``) after its ``started`` record (tests of
    test_child_step_cut_short_ends.py), so the two fan-out kinds disagree, and a dashboard
    built on ``to_dict()`` shows a cancelled order's map as still in progress.
    """
    async with open_test_engine() as engine:
        engine.jobs.register("echo", _echo)
        engine.register(tf.workflow("batch").map(
            "each", items=lambda ctx: ctx.input,
            branch=tf.branch("one").wait("w", seconds=60).task("t", job="echo").build()).build())
        engine.register(tf.workflow("kid").wait("w", seconds=60).build())
        engine.register(tf.workflow("parent").child("c", workflow="kid").build())
        ends = {}
        for wf, step in (("batch", "each"), ("parent", "c")):
            iid = await engine.start(wf, [1, 2, 3])
            await trio.sleep(3)
            assert await engine.cancel(iid)
            inst = await engine.wait(iid)
            assert inst.status == "cancelled"
            ends[step] = [r.status for r in inst.history if r.step_name == step]
    assert ends["c"] == ["started", "failed"]            # holds: the child step's end is recorded
    assert ends["each"][-1] != "started", ends           # fails: the map step has no end


async def test_a_wide_parallel_step_under_way_reports_a_completed_at_and_an_attempt(
        autojump_clock: trio.testing.MockClock) -> None:
    """A user polls ``get_instance()`` and shows, for each step, how long it has run
    (``completed_at - started_at``, or "running since started_at" when ``completed_at`` is
    None), as a Step Functions console shows a state's entered/exited times.

    Actual: while a parallel step of 32 branches is under way, its ``step_results`` entry has
    ``completed_at == started_at`` (and ``attempts == 1``), so it reads as a step that
    completed in 0 s; the same step with 31 branches has ``completed_at is None`` and
    ``attempts == 0``. (Map and child steps' entries under way show the same
    ``completed_at``.)

    Why wrong: README (Every step execution is its own record) says a running instance's entry
    for the step it stands in is "its execution under way ... with its started_at where
    stored"; nothing has completed, and the branch count (a storage threshold) should not
    change the view.
    """
    seen = {}
    async with open_test_engine() as engine:
        engine.jobs.register("echo", _echo)
        engine.jobs.register("undo", _undo)
        for n in (31, 32):
            engine.register(_parallel_wf(f"wf{n}", n))
            iid = await engine.start(f"wf{n}", {})
            await trio.sleep(2)
            inst = await engine.get_instance(iid)
            assert inst is not None and inst.status == "running"
            p = inst.step_results["p"]
            seen[n] = (p.completed_at, p.attempts)
            await engine.cancel(iid)
    assert seen[31] == (None, 0)
    assert seen[32][0] is None, f"a step under way reports completed_at={seen[32][0]}"


# Added by the fixer (fix7): the same end, and the same view of a start, on the other paths a
# step cut short takes (a fail-fast sibling; a cancel decided on a stored row no run holds), and
# for rows written by the release before.

async def test_a_map_in_a_branch_a_fail_fast_sibling_cuts_short_ends_failed(
        autojump_clock: trio.testing.MockClock) -> None:
    async def boom(data: Any) -> None:
        raise ValueError("boom")

    async with open_test_engine() as engine:
        engine.jobs.register("echo", _echo)
        engine.jobs.register("boom", boom)
        each = tf.branch("one").wait("w", seconds=60).task("t", job="echo").build()
        engine.register(tf.workflow("ff").parallel("p", branches=[
            tf.branch("a").wait("late", seconds=5).task("boom", job="boom").build(),
            tf.branch("b").map("each", items=lambda ctx: [1, 2], branch=each).build(),
        ]).build())
        inst = await engine.wait(await engine.start("ff", None))
    assert inst.status == "failed"
    ends = [r for r in inst.history if r.step_name == "each"]
    assert [r.status for r in ends] == ["started", "failed"], ends
    start, end = ends
    assert (end.id, end.error_name, end.started_at) == (start.id, "Cancelled", start.started_at)
    assert end.completed_at is not None and start.completed_at is None and start.attempts == 0


sys.path.insert(0, str(Path(__file__).with_name("fixtures")))  # (the fixtures' workflows, as test_migration)
WIDE_BRANCHES_LEFT_OUT = Path(__file__).with_name("fixtures") / "wide_parallel_branches_left_out.db"
MAP_ITEMS_LEFT_OUT = Path(__file__).with_name("fixtures") / "map_items_left_out.db"


@pytest.mark.parametrize(("fixture", "iid", "step"), [(WIDE_BRANCHES_LEFT_OUT, "wide-1", "p"),
                                                       (MAP_ITEMS_LEFT_OUT, "map-1", "each")])
async def test_a_start_stored_by_the_release_before_reads_as_under_way(
        tmp_path: Path, fixture: Path, iid: str, step: str) -> None:
    """Those releases stored a start with its start time as its completion, and one attempt."""
    db = tmp_path / "flows.db"
    shutil.copy(fixture, db)
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), resume=False) as engine:
        inst = await engine.get_instance(iid)
    assert inst is not None and inst.status == "running"
    start = inst.step_results[step]
    assert (start.status, start.completed_at, start.attempts) == ("started", None, 0), start
    assert start.started_at is not None


async def test_a_cancel_decided_on_a_stored_wide_parallel_step_records_its_end(tmp_path: Path) -> None:
    """A cancel of a row no run holds (resume=False) is decided on the row: the wide parallel
    step it stood in ends ``failed`` (``Cancelled``), as it would in a run."""
    from make_parallel_lanes import wide

    db = tmp_path / "flows.db"
    shutil.copy(WIDE_BRANCHES_LEFT_OUT, db)
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), resume=False) as engine:
        engine.register(wide())
        assert await engine.cancel("wide-1")
        decided = await engine.get_instance("wide-1")  # (the row as the cancel stored it)
        await engine.resume()  # (it then compensates: nothing to undo here)
        with trio.fail_after(30):
            inst = await engine.wait("wide-1")
    assert decided is not None and inst.status == "cancelled"
    for view in (decided, inst):
        assert [(r.status, r.error_name) for r in view.history if r.step_name == "p"] == [
            ("started", None), ("failed", "Cancelled")]
        assert all(r.status != "started" for r in view.step_results.values())
