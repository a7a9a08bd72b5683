"""From an adversarial re-review of 53c927f (a wait first in its lane passes the lane's input
on; execute_workflow refuses child steps; build() refuses pass/choice loops nothing can leave).
The branch case failed until the commit that added this file; the main line's was a strict xfail
until the commit that stores a reference to the workflow input; then a guard of the loop check against refusing loops with a way out,
and one of references across lanes in a loop, across crashes."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import explore_crashes, open_test_engine

BIG = "x" * 1_000_000  # (1 MB of text: a document, a batch, an image as base64)


async def _record_sizes(wf: tf.WorkflowDefinition, input: Any, path: Path) -> tuple[tf.WorkflowInstance, dict[str, int]]:
    """Run ``wf`` on a SQLite file; the stored size of each step's record, by step name."""
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(str(path))) as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start(wf.name, input))
    with sqlite3.connect(path) as db:
        sizes = dict(db.execute("SELECT seq, length(data) FROM trioflow_records"))
    return done, {r.step_name: sizes[r.seq] for r in done.history}


def _first(name: str, first: str, *, then: str, wait: float = 60) -> tf.WorkflowBuilder:
    """A workflow whose first step ``w`` is a wait (of ``wait`` seconds), a pass or a choice
    (going to ``then``): each passes the workflow input on."""
    builder = tf.workflow(name)
    if first == "wait":
        return builder.wait("w", seconds=wait)
    if first == "pass":
        return builder.pass_("w")
    return builder.choice("w", choices=[tf.when(lambda ctx: True, next=then)])


@pytest.mark.parametrize("first", ["wait", "pass", "choice"])
async def test_a_step_first_on_the_main_line_does_not_store_the_workflow_input_again(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, first: str) -> None:
    """A user starts an instance with a large input (1 MB) whose first step is a wait (a
    delayed reminder), or a pass or a choice, and relies on the README's storage promise:
    "each value is stored once (a choice or pass step that passes its input on stores a
    reference, a task without an ``input=`` mapper a flag for 'the workflow input')". They
    expect the first step's record to hold a reference to the stored input, a few dozen bytes.

    Was (a strict xfail until the commit that made ``PASSES_WORKFLOW_INPUT``):
    ``passed_on`` (runtime/_decide.py) had no record to refer to for the workflow input, so
    the record stored a full copy: the input was stored twice (the record of ``w`` was
    1,000,052 bytes). Since 53c927f a wait first in its lane did so too (before, it stored
    ``None``)."""
    wf = _first(f"big-{first}", first, then="s").step("s", lambda ctx: "small").build()
    done, sizes = await _record_sizes(wf, {"doc": BIG}, tmp_path / "main.db")
    assert done.status == "completed" and done.history[0].output == {"doc": BIG}
    assert sizes["w"] < 10_000, sizes


@pytest.mark.parametrize("first", ["wait", "pass"])
async def test_a_step_first_in_a_branch_refers_to_what_its_parallel_step_started_from(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, first: str) -> None:
    """As above, in a parallel step's branches after a step with a large output: a wait (or a
    pass step) first in each branch passes that output on, and refers to its record.

    Was: ``passed_on`` computed the outer lane's record, then dropped it: a wait first in each
    of N branches stored N more copies of the output its branches started from (1,000,062 bytes
    each), and so did a pass step; the parallel step's own record is 50 bytes."""
    def branch(b: str) -> tf.Branch:
        start = tf.branch(b)
        start = start.wait(f"{b}-first", seconds=60) if first == "wait" else start.pass_(f"{b}-first")
        return start.step(f"{b}-s", lambda ctx: 1).build()

    fan = tf.workflow("big-fan").step("load", lambda ctx: {"doc": BIG}).parallel("fan", branches=[
        branch("x"), branch("y")]).build()
    done, sizes = await _record_sizes(fan, None, tmp_path / "fan.db")
    assert done.status == "completed"
    assert done.step_results["x-first"].output == {"doc": BIG}
    assert sizes["x-first"] < 10_000 and sizes["y-first"] < 10_000, sizes


@pytest.mark.parametrize("first", ["wait", "pass", "choice"])
async def test_a_reference_to_the_workflow_input_reads_back_after_a_restart_and_at_every_crash(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, first: str) -> None:
    """(A guard of the reference above.) A step first on the main line that passes the
    workflow input on, read back from a SQLite file by a new engine: the instance parked in
    a wait after it resumes, and the next step sees
    the input as that step's output, its record's output the input; a crash at every write
    gives the crash-free outcome."""
    wf = _first(f"ref-{first}", first, then="later", wait=1).wait("later", seconds=60).step(
        "s", lambda ctx: ctx.steps["w"]["doc"][:3]).build()
    path = tmp_path / "ref.db"
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(str(path))) as engine:
        engine.register(wf)
        iid = await engine.start(wf.name, {"doc": "abc" + "x" * 100})
        await trio.sleep(5)
        assert (await engine.get_instance(iid)).waiting is not None
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(str(path))) as engine:
        engine.register(wf)
        stored = await engine.get_instance(iid)
        assert stored.history[0].output == {"doc": "abc" + "x" * 100}
        done = await engine.wait(iid)
    assert done.status == "completed" and done.output == "abc", done
    assert done.history[0].output == done.input
    files = itertools.count()
    report = await explore_crashes(
        wf, {"doc": "abc"}, adapter_factory=lambda: tf.adapters.SQLiteAdapter(str(tmp_path / f"{next(files)}.db")))
    assert report.baseline.status == "completed" and report.baseline.output == "abc"


def test_build_accepts_loops_of_pass_and_choice_steps_with_a_way_out() -> None:
    """(A guard: _check_can_leave is new and easy to tighten by mistake.) Loops of
    pass and choice steps a Step Functions user writes, each with a way out: a choice rule to
    a succeed, fail, or `end=True` step, or to the end of a map item's or a branch's lane, a
    default that leaves, pass steps with `result=`, and a catch from a task in the loop."""
    yes = lambda ctx: True  # noqa: E731
    tf.workflow("rule-to-succeed").pass_("p", result=1).choice(
        "c", choices=[tf.when(yes, next="done")], default="p").succeed("done").build()
    tf.workflow("rule-to-fail").pass_("p").choice(
        "c", choices=[tf.when(yes, next="bad")], default="p").fail("bad", error="Gave up").build()
    tf.workflow("default-leaves").pass_("p").choice("c", choices=[tf.when(yes, next="p")], default="out").pass_("out").build()
    tf.workflow("rule-to-end").choice("c", choices=[tf.when(yes, next="e")], default="c").end("e").build()
    tf.workflow("in-map").map("m", items=lambda ctx: [1], branch=tf.branch("item").pass_("ip").choice(
        "ic", choices=[tf.when(yes, next="ie")], default="ip").pass_("ie").build()).build()
    tf.workflow("in-branch").parallel("par", branches=[tf.branch("b").pass_("bp", result="r").choice(
        "bc", choices=[tf.when(yes, next="bp"), tf.when(yes, next="be")], default="bp").pass_("be", end=True).build()]).build()
    tf.workflow("catch-out").step("t", lambda ctx: 1, catch=[tf.Catch(errors=[tf.ALL], next="gone")]).pass_(
        "p", next="t").succeed("gone").build()


async def test_guard_a_loop_that_runs_the_parallel_step_again_refers_to_each_executions_own_output(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """(A guard, from a re-review of the commit that refers across lanes: what such a reference
    makes fragile.) A loop
    runs a parallel step three times, each after a task with a different output; the pass and
    wait steps first in its branches must pass on that execution's output, with a crash at any
    write (SQLite, a fresh engine resuming), as execute_workflow (no storage) does."""
    def branch(b: str, first: str) -> tf.Branch:
        start = tf.branch(b)
        start = start.pass_(f"{b}-first") if first == "pass" else start.wait(f"{b}-first", seconds=5)
        return start.step(f"{b}-s", lambda ctx, b=b: ctx.steps[f"{b}-first"]).build()

    wf = (tf.workflow("loop-fan").step("load", lambda ctx: {"n": ctx.get("i", 0)})
          .parallel("fan", branches=[branch("x", "pass"), branch("y", "wait")])
          .step("inc", lambda ctx: ctx.set("i", ctx.get("i", 0) + 1))
          .choice("again", choices=[tf.when(lambda ctx: ctx.get("i") < 3, next="load")], default="done")
          .succeed("done").build())
    plain = await tf.execute_workflow(None, wf, None)
    assert plain.success
    files = itertools.count()
    report = await explore_crashes(
        wf, None, adapter_factory=lambda: tf.adapters.SQLiteAdapter(str(tmp_path / f"{next(files)}.db")))
    assert report.baseline.status == "completed"
    async with open_test_engine() as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start(wf.name, None))
    fans = [r.output for r in done.history if r.step_name == "fan"]
    assert fans == [{"x": {"n": n}, "y": {"n": n}} for n in range(3)]
    firsts = [(r.step_name, r.output) for r in done.history if r.step_name.endswith("-first")]
    assert sorted(firsts, key=lambda f: (f[1]["n"], f[0])) == [
        (name, {"n": n}) for n in range(3) for name in ("x-first", "y-first")]
