"""Adversarial review of 4d36749 (cut-short ends of steps resting in fan-outs, deferred
completion events, stray cancellations, explore_crashes' contested-signal excuse), bd07312
(workflows(waits=True)) and 2c87590 (unreadable children).

Each test is one finding and fails on the reviewed code because of a real problem. Every run is
on trio's ``MockClock(autojump_threshold=0)`` (``trioflow.testing.run``): no real sleeps.
"""

from __future__ import annotations

from typing import Any

import trio

import trioflow as tf
from trioflow.testing import CrashReport, explore_crashes, open_test_engine, run, virtual_wall_clock

from test_review_of_service_monitoring import ok, release

# -- 1 ------------------------------------------------------------------------------------------

_charged = {"n": 0}


def _reset() -> None:
    _charged["n"] = 0


async def _charge(ctx: Any) -> str:
    _charged["n"] += 1  # a side effect outside trioflow: a re-run after a crash charges twice
    return "charged"


async def _approve(ctx: Any) -> str:
    return "approved"


async def _reject(ctx: Any) -> str:
    return "rejected"


def _ballot(opening_signal: str) -> tf.WorkflowDefinition:
    return (tf.workflow("ballot").receive("open", signal=opening_signal)
            .parallel("p", branches=[tf.branch("x").receive("xv", signal="vote").build()])
            .step("charge", _charge)
            .choice("route", choices=[tf.when(lambda ctx: _charged["n"] == 1, next="yes")], default="no")
            .step("yes", _approve, end=True).step("no", _reject).build())


def test_a_main_line_receive_sharing_a_signal_name_does_not_hide_a_divergence_after_the_fan_out() -> None:
    """docs/testing.md: the contested-signal excuse holds only while "the same steps completed
    outside the lanes of those receive steps (...; a choice after the fan-out that went
    elsewhere after the resume is still reported)". A ballot opens with a receive of 'vote' on
    the main line, then a branch receives a 'vote' too, then a step with a side effect and a
    choice after the fan-out. A crash between the charge and its checkpoint charges twice and
    the choice goes to "no": with the opening signal named 'opener' the explorer reports
    "output 'rejected', the fault-free run gave 'approved'"; named 'vote' it reports nothing.
    _Shape.of (runtime/testing/_crashes.py) puts the main line ("") among the contested lanes,
    so ``settled`` leaves out every main-line step and _signals_swapped excuses any output.
    (Before 4d36749 the explorer reported it.)"""
    async def explore(opening: str, signals: list[tuple[str, Any]]) -> CrashReport:
        _reset()
        return await explore_crashes(_ballot(opening), {}, signals=signals, check=False, before_run=_reset)

    async def main() -> tuple[list[str], list[str]]:
        distinct = await explore("opener", [("opener", "a"), ("vote", "b")])
        shared = await explore("vote", [("vote", "a"), ("vote", "b")])
        return [p.divergence for p in distinct.divergent], [p.divergence for p in shared.divergent]

    distinct, shared = run(main)
    assert any("the fault-free run gave 'approved'" in d for d in distinct), distinct  # (holds)
    assert any("the fault-free run gave 'approved'" in d for d in shared), shared


# -- 2 ------------------------------------------------------------------------------------------


async def _down(ctx: Any) -> None:
    raise ConnectionError("down")


_RETRY = tf.Retry(max_attempts=5, interval=100, backoff_rate=1.0, max_interval=100)


def test_a_task_step_between_attempts_in_a_branch_is_recorded_cut_short_with_its_start_as_in_memory() -> None:
    """README (Events): a step cut short "in a branch or a map item too; a task step between
    attempts with the attempts it made", and 4d36749: "recorded cut short, with its attempts,
    as in memory". The same retrying step, resting out of memory between attempts and then
    cancelled, is recorded with ``started_at`` (its stored ``since``) on the main line, but
    with ``started_at=None`` in a parallel branch (actors/_lane.py _cut_short_inside passes
    ``started_at=None``; so does Engine._cancel_stored): a dashboard of step durations from
    ``instance.history`` loses every such execution, and the two records of one kind of event
    differ by where the step stands."""
    main_line = tf.workflow("m").step("a", ok, release).step("f", _down, retry=_RETRY).build()
    branched = (tf.workflow("b").step("a", ok, release).parallel("p", branches=[
        tf.branch("x").step("f", _down, retry=_RETRY).build(),
        tf.branch("y").receive("r", signal="go").build()]).build())

    async def main() -> dict[str, list[tuple[Any, ...]]]:
        out = {}
        async with open_test_engine(clock=virtual_wall_clock()) as engine:
            engine.register(main_line)
            engine.register(branched)
            ids = [await engine.start("m"), await engine.start("b")]
            await trio.sleep(250)  # 3 attempts made; both rest out of memory until the 4th
            for iid in ids:
                assert await engine.cancel(iid)
            for iid in ids:
                instance = await engine.wait(iid)
                out[instance.workflow_name] = [(r.status, r.attempts, r.started_at is not None)
                                               for r in instance.history if r.step_name == "f"]
        return out

    got = run(main)
    assert got["m"] == [("failed", 3, True)]  # (holds)
    assert got["b"] == got["m"], got
