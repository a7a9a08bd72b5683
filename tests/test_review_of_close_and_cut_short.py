"""Adversarial review of 77fb560 (``Run.stopping``: an engine stopping is not a cancel), 2b19ed1 +
473790c (child steps cut short end once their child's cancel settles) and cc5b51a
(``steps_under_way`` passes over lanes failed for good): an engine that closes in the same
virtual instant as a cancel, a workflow timeout or a fail-fast sibling's failure, then another
opened on the same storage (README "Events and hooks", docs/fanout.md "Cancel").

The test marked "FAILS today" shows a bug; those marked "passes today; pins ..." keep behaviour
worth keeping. On trio's MockClock (autojump); trio's scheduler is seeded (as
tests/test_review_of_slot_pressure.py does) so ties within one instant are deterministic.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import trio
import trio.testing
from trio._core import _run as trio_run

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import explore_crashes, open_test_engine, virtual_wall_clock


def await_in_fresh_run(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a trio run of its own on a MockClock (autojump), from a sync context."""
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


def seeded(fn: Any, *args: Any, seeds: range = range(8)) -> list[tuple[int, Any]]:
    """``fn(seed, *args)`` for each seed of trio's scheduler, trio's state restored after."""
    saved = trio_run._r.getstate()
    try:
        return [(seed, await_in_fresh_run(fn, seed, *args)) for seed in seeds]
    finally:
        trio_run._r.setstate(saved)


async def _slow(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(5)
    return "slow"


async def _undo(ctx: tf.WorkflowContext, result: Any) -> None:
    pass


async def _pre(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(0.3)
    return "pre"


async def _boom(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(0.5)
    raise OSError("boom")


# -- a fail-fast sibling's failure in the instant the engine closes -------------------------------


async def _closed_as_a_sibling_fails(seed: int) -> tuple[tf.WorkflowInstance, list[dict[str, Any]]]:
    trio_run._r.seed(seed)
    wf = (tf.workflow("p").step("pre", _pre, _undo)
          .parallel("par", branches=[tf.branch("b0").step("c", _slow, _undo).build(),
                                     tf.branch("b1").step("x", _boom).build()], on_error="fail-fast")
          .build())
    adapter = MemoryAdapter()
    events: list[dict[str, Any]] = []

    def register(engine: Any) -> None:
        engine.events.on("workflow.*", events.append)
        engine.register(wf)

    async with open_test_engine(clock=virtual_wall_clock(), adapter=adapter) as engine:
        register(engine)
        await engine.start("p", None, instance_id="P")
        with trio.fail_after(100):
            await trio.sleep(0.8)  # closed at the instant x fails (0.3 + 0.5)
    events.append({"event": "-- reopened --"})
    async with open_test_engine(clock=virtual_wall_clock(), adapter=adapter) as engine:
        register(engine)
        with trio.fail_after(1000):
            done = await engine.wait("P")
    return done, events


def test_a_step_cut_short_by_a_stored_fail_fast_failure_as_the_engine_closes_keeps_its_end() -> None:
    """FAILS today (seeds 3, 6 and 7 of the eight scheduler orders). README "Events and hooks": a step "cut short
    by a cancel, a timeout or a fail-fast sibling has one too [a workflow.step.failed],
    error_name "Cancelled", once the end that cut it is stored"; a task step cut short is
    recorded ``failed`` (Cancelled) in the history. A user reconciles step starts against step
    ends (events, or ``history``) to find work left half-done by a branch the fail-fast cut.

    A fail-fast parallel step runs a 5 s task ``c`` beside ``x``, which fails at t=0.8; the engine
    is closed at t=0.8 and another opened on the same storage. In five scheduler orders of eight
    the outcome is the same as with a close a nanosecond later: ``par/b0/c#1 failed Cancelled``
    in the history and its ``workflow.step.failed`` (Cancelled), whether the first engine or the
    second ends it. In the others, the first engine stores (and publishes) x's failure, the
    fail-fast's cancel then reaches ``c`` with the engine already closing, so ``Run.stopping`` is
    true and ``c``'s cut-short record and event are dropped (the next engine is meant to run it
    again); but the next engine takes the instance up with b1 failed for good, fails ``par`` at
    once without running ``c`` again, and nothing ends ``c``: its ``workflow.step.started`` has no
    end, its history has no record of it, and the instance ends ``failed`` as if it never ran.

    Cause: actors/_run.py:509-514 (``stopping`` = the engine closing and no cancel requested)
    treats every cancellation that reaches a step while the engine closes as the engine's, even
    one a fail-fast already decided and stored in this engine (actors/_task.py:208,
    ``raise cancelled`` skips ``cut_short_execution``); and the next engine's taken-up fail-fast
    (actors/_lane.py ``run_parallel`` with ``decided``; runtime/_decide.py ``steps_under_way``
    passing over a lane whose task step has no ``begun``) ends the lane without an end for it."""
    wrong: list[tuple[int, Any]] = []
    for seed, (done, events) in seeded(_closed_as_a_sibling_fails):
        assert done.status == "failed" and done.error_name == "OSError"
        assert done.compensated_steps == ("pre",)
        c_records = [(r.id, r.status, r.error_name) for r in done.history if r.step_name == "c"]
        c_events = Counter(e["event"] for e in events if e.get("step_name") == "c")
        if c_records != [("par/b0/c#1", "failed", "Cancelled")] or c_events["workflow.step.failed"] != 1:
            wrong.append((seed, c_records, dict(c_events)))
    assert wrong == []


# -- pins -----------------------------------------------------------------------------------------


async def _kid(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(0.3)
    return "kid"


KID = tf.workflow("kid").step("k", _kid, _undo).build()


async def _outer_scope_cancelled(seed: int, kind: str) -> tuple[tf.WorkflowInstance, list[dict[str, Any]]]:
    trio_run._r.seed(seed)
    first = tf.branch("b0").step("c", _slow, _undo).build() if kind == "task" else \
        tf.branch("b0").child("c", workflow="kid").build()
    wf = (tf.workflow("p").step("pre", _pre, _undo)
          .parallel("par", branches=[first, tf.branch("b1").wait("w", seconds=0.5).build()]).build())
    adapter = MemoryAdapter()
    events: list[dict[str, Any]] = []

    def register(engine: Any) -> None:
        engine.events.on("workflow.*", events.append)
        engine.register(KID)
        engine.register(wf)

    with trio.move_on_after(0.8):  # the scope around the engine cancelled as b1's timer fires
        async with open_test_engine(clock=virtual_wall_clock(), adapter=adapter) as engine:
            register(engine)
            await engine.start("p", None, instance_id="P")
            await trio.sleep_forever()
    async with open_test_engine(clock=virtual_wall_clock(), adapter=adapter) as engine:
        register(engine)
        with trio.fail_after(1000):
            done = await engine.wait("P")
    return done, [e for e in events if e.get("instance_id") == "P"]


def test_a_cancelled_scope_around_the_engine_cuts_nothing_short() -> None:
    """Passes today; pins 77fb560's ``EngineChildren.closing`` counting ``_actors_stopped``: the
    scope around ``open_engine`` cancelled from outside at the instant a sibling branch's timer
    fires (and checkpoints) stores and publishes no cut-short end for the task or child step in
    flight, in any scheduler order; the next engine completes the instance."""
    for kind in ("task", "child"):
        for seed, (done, events) in seeded(_outer_scope_cancelled, kind):
            assert done.status == "completed", (kind, seed)
            assert [r.id for r in done.history if r.status == "failed"] == [], (kind, seed)
            assert [e for e in events if e["event"] == "workflow.step.failed"] == [], (kind, seed)


_calls: list[float] = []


async def _flaky(ctx: tf.WorkflowContext) -> str:
    _calls.append(trio.current_time())
    await trio.sleep(0.2)
    if len(_calls) < 3:
        raise OSError("flaky")
    return "ok"


async def _cancelled_between_attempts(seed: int) -> tuple[tf.WorkflowInstance, list[dict[str, Any]], Any]:
    """A task between retry attempts (0.5 s apart) cancelled by another task at t=0.4, the
    instant the engine's block ends."""
    trio_run._r.seed(seed)
    _calls.clear()
    wf = (tf.workflow("p").parallel("par", branches=[
        tf.branch("b0").step("r", _flaky, _undo, retry=tf.Retry(max_attempts=5, interval=0.5)).build(),
        tf.branch("b1").wait("w", seconds=0.4).build()]).build())
    adapter = MemoryAdapter()
    events: list[dict[str, Any]] = []
    said: list[Any] = []

    def register(engine: Any) -> None:
        engine.events.on("workflow.*", events.append)
        engine.register(wf)

    async with trio.open_nursery() as outside:
        async with open_test_engine(clock=virtual_wall_clock(), adapter=adapter) as engine:
            register(engine)
            await engine.start("p", None, instance_id="P")

            async def cancel_it() -> None:
                await trio.sleep(0.4)
                try:
                    said.append(await engine.cancel("P"))
                except tf.EngineClosedError:
                    said.append("closed")

            outside.start_soon(cancel_it)
            await trio.sleep(0.4)
    async with open_test_engine(clock=virtual_wall_clock(), adapter=adapter) as engine:
        register(engine)
        with trio.fail_after(1000):
            done = await engine.wait("P")
    return done, events, said[0]


def test_a_cancel_between_retry_attempts_as_the_engine_closes_ends_as_the_cancel_said() -> None:
    """Passes today; pins that a cancel() of an instance whose task step waits between retry
    attempts, in the instant the engine closes, either says yes and the instance ends
    ``cancelled`` with the step recorded and published cut short once (with the attempts it
    made), or raises ``EngineClosedError`` and the next engine completes it with no cut-short
    end at all."""
    outcomes = set()
    for seed, (done, events, said) in seeded(_cancelled_between_attempts):
        cut = [(r.id, r.status, r.error_name) for r in done.history if r.status == "failed"]
        failed_r = [e for e in events if e["event"] == "workflow.step.failed" and e["step_name"] == "r"]
        if said is True:
            assert done.status == "cancelled", seed
            assert cut == [("par/b0/r#1", "failed", "Cancelled")], seed
            assert len(failed_r) == 1 and failed_r[0]["attempts"] == 1, seed
        else:
            assert said == "closed", seed
            assert done.status == "completed", seed
            assert cut == [] and failed_r == [], seed
        outcomes.add(done.status)
    assert outcomes == {"cancelled", "completed"}  # (both orders are met in these seeds)


SLOW_KID = tf.workflow("slowkid").step("k", _slow, _undo).build()
BAD_KID = tf.workflow("bad").step("k", _boom).build()


async def test_explore_crashes_over_a_fail_fast_step_of_children(autojump_clock: trio.testing.MockClock) -> None:
    """Passes today; pins 473790c: a crash after every write (and every write lost) of a parent
    whose fail-fast parallel step of child steps fails (one child fails, the other is cut short
    and cancelled), and of one whose nested fail-fast's cut-short child sits beside an outer
    failure, resumes to the same outcome, each child step ended once."""
    flat = (tf.workflow("flat").step("pre", _kid, _undo)
            .parallel("par", branches=[tf.branch("b0").child("c", workflow="slowkid").build(),
                                       tf.branch("b1").child("x", workflow="bad").build()], on_error="fail-fast")
            .build())
    nested = (tf.workflow("nested").parallel("outer", branches=[
        tf.branch("o0").parallel("inner", branches=[tf.branch("i0").child("c", workflow="slowkid").build(),
                                                    tf.branch("i1").child("d", workflow="kid").build()],
                                 on_error="fail-fast").build(),
        tf.branch("o1").child("x", workflow="bad").build()], on_error="fail-fast").build())
    with trio.fail_after(10_000):
        for wf in (flat, nested):
            report = await explore_crashes(wf, None, also=[KID, SLOW_KID, BAD_KID])
            assert report.baseline.status == "failed" and report.writes > 5 and not report.divergent
