"""Review of 2b19ed1 (a child step cut short ends once its child's cancel settles how).

What a user relies on (README "Every step execution is its own record", "Events and hooks";
docs/fanout.md "Cancel"): a child step execution cut short has exactly one end, in its records
(``failed``/``Cancelled``, or ``completed`` then compensated) and in its events ("never one story
in the events and another in the records"); a restart does not end it again; and
``explore_crashes`` (trioflow.testing) accepts what the engine now records.

The failing tests below show where that does not hold. ``cancel_children``
(actors/_child.py) records a cut-short end for every child id it is handed, whether or not the
step already has one; the fan-outs hand it ``waited_on(lanes)`` (actors/_lane.py
``run_parallel``, actors/_map.py ``run_map``), and a lane whose child was cancelled (and its
step recorded cut short) keeps ``lane.waiting`` naming that child: an enclosing fail-fast, or
the same fan-out taken up again after a restart, cancels the child once more and records a
second end. (``unended_children``, used at the instance level, reads the records and is not
affected.)
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import explore_crashes, open_test_engine, virtual_wall_clock


async def work(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(5)
    return "done"


async def undo_work(ctx: tf.WorkflowContext, result: Any) -> None:
    pass


async def boom_later(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(1)
    raise ValueError("boom")


async def boom_now(ctx: tf.WorkflowContext) -> None:
    raise ValueError("boom")


async def slow(ctx: tf.WorkflowContext) -> int:
    await trio.sleep(100)
    return 1


async def check_item(ctx: tf.WorkflowContext) -> Any:
    if ctx.item == "bad":
        await trio.sleep(1)
        raise ValueError("bad item")
    return ctx.item


async def after(ctx: tf.WorkflowContext) -> str:
    return "after"


KID = tf.workflow("kid").step("work", work, undo_work).build()


def _ends(history: Iterable[tf.StepResult], step_name: str) -> dict[str, list[str]]:
    """The end records (not the ``started`` ones) of each execution of ``step_name``."""
    ends: dict[str, list[str]] = collections.defaultdict(list)
    for record in history:
        if record.step_name == step_name and record.status != "started":
            ends[record.id].append(f"{record.status}:{record.error_name}")
    return dict(ends)


def _told(events: list[dict[str, Any]], instance_id: str, step_name: str) -> list[str]:
    return [e["event"].removeprefix("workflow.step.") for e in events
            if e.get("instance_id") == instance_id and e["event"].startswith("workflow.step.")
            and e["event"] != "workflow.step.waiting" and e.get("step_name") == step_name]


# --- 1. A fail-fast parallel step nested in a branch of another fail-fast parallel step ------------

NESTED = (tf.workflow("nested")
          .parallel("outer", branches=[
              tf.branch("outer-a").parallel("inner", branches=[
                  tf.branch("kid").child("run", workflow="kid").build(),
                  tf.branch("fails").step("boom", boom_later).build()]).build(),
              tf.branch("outer-b").step("slow", slow).build()])
          .build())

MAP_IN_BRANCH = (tf.workflow("map-in-branch")
                 .parallel("outer", branches=[
                     tf.branch("x").map("each", items=lambda ctx: ["good", "bad"], branch=tf.branch("one").step(
                         "check", check_item).child("run", workflow="kid").build()).build(),
                     tf.branch("y").step("slow", slow).build()])
                 .build())


@pytest.mark.parametrize(("workflow", "execution"), [(NESTED, "inner/kid/run#1"), (MAP_IN_BRANCH, "each/#0/run#1")],
                         ids=["parallel-in-parallel", "map-in-parallel"])
async def test_a_child_step_cut_short_by_a_nested_fail_fast_ends_once(
        autojump_clock: trio.testing.MockClock, workflow: tf.WorkflowDefinition, execution: str) -> None:
    """A user relies on one end per step execution (records and events). The inner fail-fast
    parallel step cuts the child step short and records it (failed, Cancelled); its failure then
    fails the outer branch, and the outer fail-fast parallel step cancels the children its
    inner lanes wait on: the inner branch lane still names the child (``lane.waiting`` is
    never cleared, actors/_child.py ``cancel_children``; the failed inner step's lanes are not
    dropped), so the same child is cancelled again and its step gets a second ``failed``
    record and a second ``workflow.step.failed`` (seen: ``['started', 'failed', 'failed']``).
    The same with a fail-fast map in a branch (its cancelled items' lanes are not dropped).
    Before 2b19ed1 the second cancel recorded nothing."""
    events: list[dict[str, Any]] = []
    with trio.fail_after(60):
        async with open_test_engine() as engine:
            engine.events.on("*", events.append)
            engine.register(KID)
            engine.register(workflow)
            iid = await engine.start(workflow.name, None)
            ended = await engine.wait(iid)
    assert ended.status == "failed"
    assert _ends(ended.history, "run") == {execution: ["failed:Cancelled"]}
    assert _told(events, iid, "run") == ["started", "failed"]


# --- 2. A restart between the cut-short records and the fan-out's own failure ---------------------

FANOUT = (tf.workflow("fanout")
          .parallel("both", branches=[tf.branch("kid").child("run", workflow="kid").build(),
                                      tf.branch("fails").step("boom", boom_later).build()])
          .build())

MAP = (tf.workflow("mapped")
       .map("each", items=lambda ctx: ["good", "bad"],
            branch=tf.branch("one").step("check", check_item).child("run", workflow="kid").build(),
            catch=[tf.Catch(errors=["ValueError"], next="after")])
       .succeed("ok")
       .step("after", after)
       .build())


@pytest.mark.parametrize("workflow", [FANOUT, MAP], ids=["parallel", "map-with-catch"])
async def test_a_restart_after_the_cut_short_records_does_not_end_the_child_step_again(
        autojump_clock: trio.testing.MockClock, workflow: tf.WorkflowDefinition) -> None:
    """A user relies on a restart not ending a step execution twice. A fail-fast parallel (or
    map, caught) step stores its child steps' cut-short ends (``cancel_children``'s persist)
    before it stores its own failure. An engine that dies in between leaves the branch (item)
    lane still waiting on the cancelled child; the next engine takes the fan-out up (decided:
    only the failed branch runs again; the map cancels its items), calls ``cancel_children``
    again with ``waited_on(lanes)`` (actors/_lane.py ``run_parallel``, actors/_map.py
    ``run_map``) and records a second ``failed``/``Cancelled`` end for the same execution
    (seen at the crash after write "step 'run' failed": ``['failed:Cancelled',
    'failed:Cancelled']``). ``explore_crashes`` itself does not notice."""
    with trio.fail_after(60):
        report = await explore_crashes(workflow, None, also=[KID], check=False)
    doubled = []
    for point in report.points:
        for execution, ends in _ends(point.outcome.history, "run").items():
            if len(ends) != 1:
                doubled.append((point.write, point.lost, point.after, execution, ends))
    assert doubled == []


# --- 3. explore_crashes on a fail-fast parallel step whose sibling fails at once ------------------

AT_ONCE = (tf.workflow("at-once")
           .parallel("both", branches=[tf.branch("kid").child("run", workflow="kid").build(),
                                       tf.branch("fails").step("boom", boom_now).build()])
           .build())


async def test_explore_crashes_accepts_a_child_step_cut_short_before_its_child_was_stored(
        autojump_clock: trio.testing.MockClock) -> None:
    """A user relies on ``explore_crashes`` passing a correct workflow. Here the child step's
    start and the sibling's failure share a checkpoint (write 2); a crash right after it, the
    child never stored, has the next engine take the decided fail-fast step up, and
    ``cancel_children`` now records the child step cut short (failed, Cancelled) although its
    child was never stored, as docs/fanout.md allows ("may list a child that was never
    stored"). The explorer's family check (runtime/testing/_crashes.py ``_check_family``,
    ``child_id not in members and r.id in ended``) still treats an *ended* step naming an
    unstored child as a divergence, so ``explore_crashes`` raises ``CrashDivergenceError``
    ("started child ..., which is not stored") on this plain workflow; it did not before
    2b19ed1. One of the two sides is wrong; either way users' crash tests now fail."""
    with trio.fail_after(60):
        await explore_crashes(AT_ONCE, None, also=[KID])


# --- Pins (pass today) -----------------------------------------------------------------------------

LEAF = tf.workflow("leaf").step("work", work, undo_work).build()
MID = tf.workflow("mid").step("pre", work, undo_work).child("leafstep", workflow="leaf").build()
ROOT = tf.workflow("root").child("midstep", workflow="mid").build()


@pytest.mark.parametrize("cancel_at", [1, 7, 10.001])
async def test_pin_a_family_cancelled_at_its_root_ends_each_child_step_once(
        autojump_clock: trio.testing.MockClock, cancel_at: float) -> None:
    """Passes today; pins a child of a child cancelled at the root: every child step, at every
    level, has one end in records and events, and they agree."""
    events: list[dict[str, Any]] = []
    with trio.fail_after(60):
        async with open_test_engine(clock=virtual_wall_clock()) as engine:
            engine.events.on("*", events.append)
            for wf in (LEAF, MID, ROOT):
                engine.register(wf)
            iid = await engine.start("root", None)
            await trio.sleep(cancel_at)
            await engine.cancel(iid)
            root = await engine.wait(iid)
            mid = await engine.get_instance(root.children[0])
            assert mid is not None
            leaf = await engine.get_instance(mid.children[0]) if mid.children else None
    for instance, step in ((root, "midstep"), (mid, "leafstep")):
        ends = _ends(instance.history, step)
        told = _told(events, instance.id, step)
        if not told:
            continue
        assert len(ends) == 1 and all(len(e) == 1 for e in ends.values()), ends
        end = next(iter(ends.values()))[0]
        assert told == (["started", "failed"] if end == "failed:Cancelled" else ["started", "completed"]), (told, end)
    if cancel_at < 10:
        assert root.status == "cancelled" and mid.status == "cancelled"
        assert leaf is None or leaf.status == "cancelled"


async def undo_slowly(ctx: tf.WorkflowContext, result: Any) -> None:
    await trio.sleep(10)


KID_UNDOES_SLOWLY = (tf.workflow("kid-slow-undo")
                     .step("a", after, undo_slowly)
                     .step("b", slow)
                     .build())
PARENT_OF_SLOW = tf.workflow("parent-of-slow").child("run", workflow="kid-slow-undo").build()


async def test_pin_a_cancel_cut_by_the_engine_closing_ends_the_child_step_once_after_reopening(
        autojump_clock: trio.testing.MockClock, tmp_path: Any) -> None:
    """Passes today; pins a parent cancelled while its child undoes slowly, the engine closing
    meanwhile (SQLite file): no end is recorded by the closing engine, and after reopening the
    child step ends once, in records and events."""
    db = tmp_path / "flows.db"
    clock = virtual_wall_clock()
    events: list[dict[str, Any]] = []
    with trio.fail_after(60):
        async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock) as engine:
            engine.events.on("*", events.append)
            engine.register(KID_UNDOES_SLOWLY)
            engine.register(PARENT_OF_SLOW)
            iid = await engine.start("parent-of-slow", None)
            await trio.sleep(1)
            assert await engine.cancel(iid)
            await trio.sleep(3)  # the child is undoing "a" (10 s) as the engine closes
            stopped = await engine.get_instance(iid)
            assert stopped is not None
        assert _ends(stopped.history, "run") == {}
        async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock) as engine:
            engine.events.on("*", events.append)
            engine.register(KID_UNDOES_SLOWLY)
            engine.register(PARENT_OF_SLOW)
            ended = await engine.wait(iid)
    assert ended.status == "cancelled"
    assert _ends(ended.history, "run") == {"run#1": ["failed:Cancelled"]}
    assert _told(events, iid, "run") == ["started", "failed"]
