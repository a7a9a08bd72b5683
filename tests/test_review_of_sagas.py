"""From a review of the saga side (compensation per execution, restarts, slots), from the point of
view of a service that runs many short-lived sagas in one long-lived process. The first two
failed until the commit that added this file (a compensation's attempts are stored before each
retry delay; a compensation's context tells the place of the step it undoes); the third, added
with the fix, holds its next attempt to its due time across a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


def _refund_that_keeps_failing(calls: list[int]) -> tf.WorkflowDefinition:
    async def charge(ctx: Any) -> str:
        return "ch-1"

    async def refund(ctx: Any, result: str) -> None:
        calls.append(tf.current_step().attempt)
        raise ConnectionError("payments down")

    async def ship(ctx: Any) -> None:
        raise ValueError("out of stock")

    return (tf.workflow("order")
            .step("charge", charge, refund, retry=tf.Retry(max_attempts=3, interval=10.0))
            .step("ship", ship).build())


async def test_a_compensations_retry_policy_is_not_started_over_by_a_restart(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A user gives the charge step ``Retry(max_attempts=3, interval=10)``; its refund keeps
    failing. The process restarts (engine closed and opened again on the same SQLite file) during
    the delay between the refund's 2nd and 3rd attempts. README: "a failing compensation is
    retried by its step's policy"; max_attempts "counts the first try"; SPEC §13 "a retry delay
    is a durable timer too (the attempt count survives a restart)" and docs/waiting.md "a step
    with max_attempts=3 is tried three times in all, not three more". The user expects the refund
    called 3 times in all (attempts 1, 2, 3), as a forward step is.
    Was: the count starts over after the restart: the refund is called 5 times, attempts
    [1, 2, 1, 2, 3] (tf.current_step().attempt says 1 again)."""
    db = tmp_path / "flows.db"
    calls: list[int] = []
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(_refund_that_keeps_failing(calls))
        iid = await engine.start("order", {})
        await trio.sleep(15)  # attempts 1 (t=0) and 2 (t=10) made; the 3rd is due at t=30
    assert calls == [1, 2]
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(_refund_that_keeps_failing(calls))
        done = await engine.wait(iid)
    assert done.status == "failed"
    assert done.compensation_errors == {"charge": "ConnectionError: payments down"}
    assert calls == [1, 2, 3], "three attempts in all, as max_attempts=3 says"


async def test_a_compensation_s_context_tells_the_step_s_place_in_its_lane() -> None:
    """A user logs "undoing step {ctx.step_index + 1} of {ctx.total_steps}" in each compensation
    (seed 000's WorkflowContext: "stepIndex: current step index", "totalSteps: total steps";
    README: `ctx.step_index`, `ctx.total_steps` (counted within the lane)). The execute callable of
    `b` sees step_index 1 of total_steps 3; its compensation gets the same context type and the
    user expects the same place (the step being undone), or at least the lane's real total.
    Was: every compensation's context says step_index 0 and total_steps 0 (so "step 1 of 0"),
    in execute_workflow and in an engine alike."""
    seen: list[tuple[str, str, int, int]] = []

    async def act(ctx: tf.WorkflowContext) -> None:
        seen.append(("execute", tf.current_step().step_name, ctx.step_index, ctx.total_steps))

    async def undo(ctx: tf.WorkflowContext, result: None) -> None:
        seen.append(("compensate", tf.current_step().step_name, ctx.step_index, ctx.total_steps))

    async def fail(ctx: tf.WorkflowContext) -> None:
        raise ValueError("declined")

    wf = tf.workflow("w").step("a", act, undo).step("b", act, undo).step("c", fail).build()
    result = await tf.execute_workflow(None, wf, {})
    assert result.compensated_steps == ("b", "a")
    assert seen[:2] == [("execute", "a", 0, 3), ("execute", "b", 1, 3)]
    assert seen[2:] == [("compensate", "b", 1, 3), ("compensate", "a", 0, 3)]


async def test_a_compensation_taken_up_after_a_restart_keeps_its_delay_and_shows_no_wait(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """The same refund, tried 4 times 30 s apart. The engine stops at 45 s, between attempts 2
    and 3, and a new one opens at once. While the refund waits out its delay, the instance is not
    shown as waiting (a compensation's delay is slept in memory) and its failed step keeps its own
    attempts. The user expects attempts 3 and 4 when they were due (60 s and 90 s), not at once
    nor a whole delay after the restart, and the refund's failure recorded after attempt 4."""
    db = tmp_path / "flows.db"
    calls: list[tuple[int, float]] = []

    async def charge(ctx: Any) -> str:
        return "ch-1"

    async def refund(ctx: Any, result: str) -> None:
        calls.append((tf.current_step().attempt, trio.current_time()))
        raise ConnectionError("payments down")

    async def ship(ctx: Any) -> None:
        raise ValueError("out of stock")

    wf = (tf.workflow("order")
          .step("charge", charge, refund, retry=tf.Retry(max_attempts=4, interval=30.0, backoff_rate=1.0))
          .step("ship", ship).build())
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(wf)
        iid = await engine.start("order", {})
        await trio.sleep(45)
        seen = await engine.get_instance(iid)
    assert seen is not None and seen.status == "running" and seen.waiting is None
    assert [(r.step_name, r.status, r.attempts) for r in seen.history] == [("charge", "completed", 1),
                                                                          ("ship", "failed", 1)]
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(wf)
        done = await engine.wait(iid)
    assert [(attempt, round(at)) for attempt, at in calls] == [(1, 0), (2, 30), (3, 60), (4, 90)]
    assert done.status == "failed" and done.compensation_errors == {"charge": "ConnectionError: payments down"}
    assert [(r.step_name, r.status) for r in done.history] == [("charge", "completed"), ("ship", "failed")]
