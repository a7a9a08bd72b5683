"""An adversarial review of trioflow's events, as a user who builds monitoring on them relies
on them. The first two tests failed until the commit that added this file: a fan-out step that
rested out of memory published its end before its branches' steps did (cancelled in storage,
or woken only to be cut short), and no step event named its execution (README's
``workflow.step.started`` speaks of its ``execution_id``). The last checks every step event's
``execution_id`` against the records."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import SQLiteAdapter
from trioflow.testing import ScriptedJob, hangs, open_test_engine, returns


async def _ok(_: Any) -> str:
    return "ok"


def _ends(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["event"], e.get("step_name")) for e in events
            if e["event"] in ("workflow.step.failed", "workflow.cancelled", "workflow.timed_out")]


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_inner_steps_end_before_their_fanout_step_when_it_rested_out_of_memory(
        autojump_clock: trio.testing.MockClock, tmp_path: Any, how: str) -> None:
    """A user builds a tree of step executions from the events (as a Step Functions execution
    history nests a Parallel state's branch events inside ParallelStateEntered/Failed): a
    parallel step's branch steps end before the parallel step itself does. That is what the
    engine publishes when a cancel (or the workflow timeout) reaches the branches while they
    wait in memory: `t1`, `t2`, then `p`.

    Was: when the same branches wait long enough to leave memory (waits of 100 s), the
    cancel/timeout publishes `workflow.step.failed` for `p` first, then for `t1` and `t2`: the
    container ends before the steps inside it, so a consumer closing `p` sees two more
    steps of an already-ended parallel step (the order differs only by how long the waits are).
    """
    builder = tf.workflow("w").parallel("p", branches=[tf.branch("x").wait("t1", seconds=100).build(),
                                                       tf.branch("y").wait("t2", seconds=200).build()])
    wf = (builder.with_timeout(50) if how == "timeout" else builder).build()
    events: list[dict[str, Any]] = []
    async with open_test_engine(adapter=SQLiteAdapter(str(tmp_path / "x.db"))) as engine:
        engine.register(wf)
        engine.events.on("workflow.*", events.append)
        iid = await engine.start("w")
        await trio.sleep(10)  # both branches rest out of memory
        if how == "cancel":
            assert await engine.cancel(iid)
        done = await engine.wait(iid)
    assert done.status == ("cancelled" if how == "cancel" else "timed_out")
    ends = [name for event, name in _ends(events) if event == "workflow.step.failed"]
    assert sorted(ends) == ["p", "t1", "t2"], ends
    assert ends[-1] == "p", f"the parallel step ended before its branch steps: {ends}"


async def test_step_events_name_the_execution_they_are_about(
        autojump_clock: trio.testing.MockClock, tmp_path: Any) -> None:
    """README, Events: `workflow.step.started` is "a step execution's start, ended by one of
    workflow.step.completed, workflow.step.failed or workflow.step.caught ...; a step an
    engine's stop cut short that the next engine runs again starts again under the same
    `execution_id`". A monitoring user pairs each start with its end and tells a restart's
    second start of one execution from a new execution of the same step (a loop) by that
    `execution_id` (Step Functions and Temporal history events carry ids for this).

    Was: no step event carries `execution_id` (nor anything else naming the execution):
    two `workflow.step.started` of step `h` (the one cut short by the engine's close and the
    one the next engine runs) cannot be told from two executions of a loop.
    """
    path = str(tmp_path / "x.db")
    job = ScriptedJob(hangs(), returns("x"))
    wf = tf.workflow("w").step("a", _ok).task("h", job="j").build()
    events: list[dict[str, Any]] = []
    async with open_test_engine(adapter=SQLiteAdapter(path)) as engine:
        engine.jobs.register("j", job)
        engine.register(wf)
        engine.events.on("workflow.step.*", events.append)
        iid = await engine.start("w")
        await trio.sleep(10)  # h hangs; the engine closes under it
    async with open_test_engine(adapter=SQLiteAdapter(path)) as engine:
        engine.jobs.register("j", job)
        engine.register(wf)
        engine.events.on("workflow.step.*", events.append)
        done = await engine.wait(iid)
    assert done.status == "completed"
    starts = [e for e in events if e["event"] == "workflow.step.started" and e["step_name"] == "h"]
    assert len(starts) == 2
    assert all("execution_id" in e for e in events), [sorted(e) for e in events]
    assert starts[0]["execution_id"] == starts[1]["execution_id"] == "h#1"


async def test_every_step_event_names_its_execution_as_its_record_does(
        autojump_clock: trio.testing.MockClock, tmp_path: Any) -> None:
    """Each step event's ``execution_id`` is the id of the record that execution ends as
    (``StepResult.id``): a loop's executions, a branch's (keyed by its lane), a receive's
    waiting and signal, a caught failure, and the compensation of each execution, newest
    first."""
    polls = {"n": 0}

    async def poll(_: Any) -> int:
        polls["n"] += 1
        return polls["n"]

    async def boom(_: Any) -> None:
        raise ValueError("no")

    async def undo(_: Any) -> None:
        return None

    wf = (tf.workflow("w")
          .task("poll", job="poll", compensate="undo")
          .choice("again", choices=[tf.when(lambda ctx: ctx.steps["poll"] >= 2, next="fan")], default="poll")
          .parallel("fan", branches=[tf.branch("x").receive("r", signal="go").build()])
          .task("caught", job="boom", catch=[tf.Catch(errors=[ValueError], next="last")])
          .task("last", job="boom")
          .build())
    events: list[dict[str, Any]] = []
    async with open_test_engine(adapter=SQLiteAdapter(str(tmp_path / "x.db"))) as engine:
        for name, job in (("poll", poll), ("boom", boom), ("undo", undo)):
            engine.jobs.register(name, job)
        engine.register(wf)
        engine.events.on("workflow.step.*", events.append)
        engine.events.on("workflow.signal.received", events.append)
        iid = await engine.start("w")
        await trio.sleep(5)
        await engine.signal(iid, "go", "payload")
        done = await engine.wait(iid)
    assert done.status == "failed"
    ids = {record.id for record in done.history}
    seen = [(e["event"].removeprefix("workflow."), e["execution_id"]) for e in events]
    assert {execution for _, execution in seen} <= ids, (seen, sorted(ids))
    assert seen == [
        ("step.started", "poll#1"), ("step.completed", "poll#1"),
        ("step.started", "again#1"), ("step.completed", "again#1"),
        ("step.started", "poll#2"), ("step.completed", "poll#2"),
        ("step.started", "again#2"), ("step.completed", "again#2"),
        ("step.started", "fan#1"),
        ("step.started", "fan/x/r#1"), ("step.waiting", "fan/x/r#1"),
        ("signal.received", "fan/x/r#1"), ("step.completed", "fan/x/r#1"),
        ("step.completed", "fan#1"),
        ("step.started", "caught#1"), ("step.caught", "caught#1"),
        ("step.started", "last#1"), ("step.failed", "last#1"),
        ("step.compensated", "poll#2"), ("step.compensated", "poll#1"),
    ], seen


async def test_a_compensation_that_fails_for_good_is_published(autojump_clock: trio.testing.MockClock) -> None:
    """A monitor hears of every compensation, not only those that ran: one that raised (its
    retries spent) and one out of time each publish ``workflow.step.compensation_failed`` with
    the execution undone and the error (until this commit, nothing was published for them)."""
    async def ok(_: Any) -> str:
        return "ok"

    async def boom(_: Any) -> None:
        raise ValueError("no")

    async def undo_raises(_: Any) -> None:
        raise RuntimeError("cannot undo")

    async def undo_hangs(_: Any) -> None:
        await trio.sleep_forever()

    async def undo_ok(_: Any) -> None:
        return None

    wf = (tf.workflow("w")
          .task("a", job="ok", compensate="undo_ok")
          .task("b", job="ok", compensate="undo_hangs")
          .task("c", job="ok", compensate="undo_raises", retry=tf.Retry(max_attempts=2, interval=1))
          .task("d", job="boom")
          .with_compensation_timeout(30)
          .build())
    events: list[dict[str, Any]] = []
    async with open_test_engine() as engine:
        for name, job in (("ok", ok), ("boom", boom), ("undo_raises", undo_raises), ("undo_hangs", undo_hangs),
                          ("undo_ok", undo_ok)):
            engine.jobs.register(name, job)
        engine.register(wf)
        engine.events.on("workflow.step.compensat*", events.append)
        done = await engine.wait(await engine.start("w"))
    assert done.status == "failed"
    seen = [(e["event"].removeprefix("workflow.step."), e["execution_id"], e.get("error_name"), e.get("attempts"))
            for e in events]
    assert seen == [("compensation_failed", "c#1", "RuntimeError", 2),
                    ("compensation_failed", "b#1", "CompensationTimeoutError", 0),
                    ("compensated", "a#1", None, None)], seen
    assert events[0]["error"] == "RuntimeError: cannot undo" and events[0]["cause"] == "cannot undo"
