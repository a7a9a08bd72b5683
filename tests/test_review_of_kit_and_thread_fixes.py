"""From an adversarial review of 20c6742 (explore_crashes: a re-run attempt that raises where it
returned is reported; an ``output=`` mapper's output is compared) and 9e03f2c (an engine refuses
calls from another thread with WrongTrioRunError; Engine.trio_token; engine_portal after its
block raises EngineClosedError). Each test failed until the commit that added this file (a job's
cancellation group is no answer; a mapper's output is compared only for a result that cannot be
stored as it is, and counts as returned for a re-run that raises; ``engine.events`` checks the
calling thread; a portal called after a block that raised says its engine is closed)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import ScriptedJob, engine_portal, explore_crashes, raises


# -- 20c6742: false divergences and a false pass of explore_crashes ------------------------------


async def _reserve_with_nursery(data: Any) -> str:
    """An idempotent job that does two lookups at once (any job that opens a nursery, or an
    anyio task group, inside: cut short, it raises a BaseExceptionGroup of Cancelled)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 2)
        await trio.sleep(2)
    return "reserved"


async def _release(data: Any) -> None:
    return None


def _fail_fast_workflow() -> tuple[tf.WorkflowDefinition, dict[str, Any]]:
    pay = ScriptedJob(raises(ConnectionError, "down", times=2))
    wf = (tf.workflow("ff").parallel("p", branches=[
        tf.branch("a").task("reserve", job=_reserve_with_nursery, compensate=_release).build(),
        tf.branch("b").task("pay", job=pay, retry=tf.Retry(max_attempts=2, interval=3)).build()]).build())
    return wf, {}


def _timeout_workflow() -> tuple[tf.WorkflowDefinition, dict[str, Any]]:
    async def quote(data: Any) -> str:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 5)
            await trio.sleep(5)
        return "quote"
    wf = tf.workflow("to").with_timeout(8).task("reserve", job=quote).pass_("done", result="ok", end=True).build()
    return wf, {}


@pytest.mark.parametrize("make", [_fail_fast_workflow, _timeout_workflow], ids=["fail-fast-sibling", "workflow-timeout"])
async def test_explorer_does_not_report_a_rerun_cut_short_by_a_sibling_or_timeout_when_the_job_uses_a_nursery(
        autojump_clock: trio.testing.MockClock, make: Any) -> None:
    """A user explores an idempotent workflow whose async job opens a nursery (two lookups at
    once). docs/testing.md: a re-run attempt must not *raise* where it returned; a run cut short
    is not an answer (the kit itself lets ``trio.Cancelled`` through untouched: "cut short: by the
    crash, a timeout, a sibling"), and "with a workflow timeout, one of them may end timed_out
    where the other did not: a step run again takes its time again". Case 1: a fail-fast sibling
    (its retry due at t=3, stored) fails before the re-run of ``reserve`` (2 s, restarted at t=2)
    returns; case 2: the re-run of a 5 s job passes the 8 s workflow timeout. Expected: no
    divergence (with ``await trio.sleep(2)`` alone instead of the nursery, none is reported).

    Was: "step 'reserve' ... ran again after the crash and raised BaseExceptionGroup:
    Exceptions from Trio nursery (2 sub-exceptions), where its first run returned ...: it is not
    idempotent". ``counted_async`` only lets a bare ``trio.Cancelled`` through; a nursery cut
    short raises a BaseExceptionGroup of Cancelled (trio's strict exception groups), which
    ``_raised`` reports. (Before 20c6742 no such point was divergent.)"""
    wf, data = make()
    report = await explore_crashes(wf, data, check=False)
    assert report.divergent == (), [(p.after, p.divergence) for p in report.divergent]


async def test_explorer_does_not_compare_a_mappers_output_when_the_jobs_result_is_stored_as_it_is(
        autojump_clock: trio.testing.MockClock) -> None:
    """A user's quote job is idempotent (same answer each call) and returns a plain dict; the
    task's ``output=`` mapper stamps when the quote was taken (``trio.current_time()`` here;
    ``datetime.now()`` in a real program), which no later step's output holds. docs/testing.md:
    the job's result is compared, and only "a job whose result cannot be stored as it is (an
    SDK's object, whose id an output= mapper keeps) is compared by the output its mapper makes
    of it"; the first run's mapped output was never stored nor seen by anyone. Expected: no
    divergence.

    Was: the point where the quote's completion write is lost is reported "ran again after the
    crash and returned {... 'quoted_at': 6.0} as its output, where its first run returned
    {... 'quoted_at': 5.0}: it is not idempotent". ``_mapped`` compares every mapper's output,
    whether or not the job's result could be stored (runtime/testing/_crashes.py, _mapped /
    _returned(..., "output", ...)). (Before 20c6742: no divergence.)"""
    async def quote(data: Any) -> dict[str, Any]:
        await trio.sleep(1)
        return {"sku": "book", "price": 12}

    wf = (tf.workflow("q")
          .task("quote", job=quote, output=lambda r, ctx: {**r, "quoted_at": trio.current_time()})
          .pass_("done", result="ok", end=True).build())
    report = await explore_crashes(wf, None, check=False)
    assert report.baseline.status == "completed" and report.baseline.output == "ok"
    assert report.divergent == (), [(p.after, p.divergence) for p in report.divergent]


class AlreadyCharged(Exception):
    """What a payment service answers to a repeated request."""


async def test_explorer_reports_an_sdk_object_job_that_raises_when_run_again(
        autojump_clock: trio.testing.MockClock) -> None:
    """The two fixes of 20c6742 together: a charge job returns the SDK's object (a dataclass,
    as ``stripe.Charge``), its ``output=`` mapper keeps the id; the service refuses a repeated
    request (AlreadyCharged), which the step catches and routes to ``done``; an earlier parallel
    step makes the path uncompared. docs/testing.md: a re-run attempt that "does not raise where
    it returned (a service that refuses a repeated request ... is reported too, whatever catches
    its error)". Expected: the point where the charge's completion write is lost is divergent,
    as it is when the job returns a plain dict (tests/test_review_of_testing_kit_reruns.py).

    Was: no point is divergent: ``_raised`` looks only for the first run's encoded *result*,
    which ``_returned`` never notes for a result msgpack refuses (it notes the mapper's "output"
    only), so a raise after an SDK object's return is never seen."""
    charged: list[str] = []

    @dataclasses.dataclass
    class Charge:
        id: str

    async def charge(data: Any) -> Charge:
        if charged:
            raise AlreadyCharged("duplicate request")
        charged.append("ch-1")
        return Charge("ch-1")

    async def prepare(ctx: tf.WorkflowContext) -> str:
        return "ready"

    wf = (tf.workflow("c")
          .parallel("prepare", branches=[tf.branch("a").step("pa", prepare).build(),
                                         tf.branch("b").step("pb", prepare).build()])
          .task("charge", job=charge, output=lambda r, ctx: r.id,
                catch=[tf.Catch(errors=[AlreadyCharged], next="done")])
          .pass_("done", result="ok", end=True).build())
    report = await explore_crashes(wf, None, check=False, before_run=charged.clear)
    assert report.baseline.status == "completed"
    rerun = [p for p in report.points if p.lost and p.after.startswith("write lost (step 'charge' completed")]
    assert rerun, [p.after for p in report.points]
    assert all(p.divergence is not None for p in rerun), [(p.after, p.outcome.output) for p in rerun]


# -- 9e03f2c: calls from another thread ---------------------------------------------------------


async def _one(ctx: tf.WorkflowContext) -> int:
    return 1


_wf = tf.workflow("w").step("a", _one).build()


@pytest.mark.parametrize("where", ["thread-with-own-trio-run", "thread-without-trio-run"])
def test_events_on_from_another_thread_is_refused_and_leaves_the_engine_working(where: str) -> None:
    """A service opens the engine in its main trio run; a worker thread (in a ``trio.run`` of its
    own, or none) subscribes an async callback with ``engine.events.on("*", cb)`` instead of
    going through ``trio.from_thread.run_sync(..., trio_token=engine.trio_token)``. README
    (Hosting): "A call from any other trio run (a thread's own trio.run), or from no trio run at
    all, is refused with WrongTrioRunError before anything is done". Expected: the call raises
    ``tf.WrongTrioRunError``; the engine goes on (an instance started after completes, the run
    ends cleanly).

    Was: EventBus.on (runtime/_events.py) checks only that the engine is open, then calls the
    engine nursery's ``start_soon`` from the foreign thread. In a thread's own trio run this
    schedules the engine's task into the foreign run: the call raises ``TrioInternalError``
    ("internal error in Trio - please file a bug!") and so does the *engine's* trio run, its
    instance failing. Without a trio run it raises ``AttributeError: 'RunContext' object has no
    attribute 'runner'``, not trioflow's error. (``events.subscribe`` from another run is let
    through too: the engine's instances then fail with "internal error: AssertionError" and its
    close hangs.)"""
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with tf.open_engine() as engine:
            engine.register(_wf)

            async def callback(event: Any) -> None:
                return None

            def foreign() -> None:
                try:
                    if where == "thread-with-own-trio-run":
                        async def subscribe() -> Any:
                            return engine.events.on("*", callback)
                        trio.run(subscribe)
                    else:
                        engine.events.on("*", callback)
                except BaseException as exc:  # what the thread's caller sees
                    seen["error"] = exc

            await trio.to_thread.run_sync(foreign)
            iid = await engine.start("w", None)
            seen["status"] = (await engine.wait(iid)).status

    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    except BaseException as exc:
        seen["engine run"] = exc
    assert isinstance(seen.get("error"), tf.WrongTrioRunError), seen
    assert "engine run" not in seen and seen.get("status") == "completed", seen


def test_portal_called_after_a_block_that_raised_gives_engine_closed_error() -> None:
    """A hypothesis stateful test drives an engine through ``engine_portal``; a step raises
    ``SystemExit`` (a job calling ``sys.exit``), so leaving the block raises it, which the test
    expects and catches; a teardown later calls the portal again. docs/testing.md (9e03f2c):
    "Leaving the block closes the engine ... and raises what its run raised (a step's
    SystemExit, say); a portal called after that raises EngineClosedError". Expected:
    ``EngineClosedError``.

    Was: the portal raises the run's failure again, the very exception object the block
    already raised (runtime/testing/_portal.py ``_in_run``: ``failed = ended_with()`` is checked
    before the EngineClosedError), at every later call."""
    async def boom(ctx: tf.WorkflowContext) -> None:
        raise SystemExit(3)

    wf = tf.workflow("b").step("a", boom).build()
    with pytest.raises(BaseException) as left:
        with engine_portal(setup=lambda e: e.register(wf)) as portal:
            with pytest.raises(BaseException):
                portal.call(lambda e: e.start("b", None))
    assert left.value is not None
    with pytest.raises(tf.EngineClosedError):
        portal.call(lambda e: e.get_instances())
