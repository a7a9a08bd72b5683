"""Adversarial review of ``trioflow.testing.engine_portal`` (be29aeb).

Each test is one problem found by using the portal as a hypothesis ``RuleBasedStateMachine``
user would; each fails on be29aeb. Every wait is bounded (threads joined with a timeout, and
portals left behind by a failure are stopped), so a failure never hangs the suite.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import engine_portal

BOUND = 3.0  # real seconds any single wait below is allowed


async def ok(ctx: tf.WorkflowContext) -> str:
    return "ok"


def _registering(*definitions: tf.WorkflowDefinition) -> Any:
    async def register(engine: tf.Engine) -> None:
        for definition in definitions:
            engine.register(definition)
    return register


def _status(portal: Any, iid: str) -> str:
    seen = portal.call(lambda e: e.get_instance(iid))
    assert seen is not None
    return seen.status


def _portal_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "trioflow engine portal" and t.is_alive()]


def _stop_leaked_portal_threads() -> None:
    """Stop portal threads whose ``engine_portal`` block never told them to (test hygiene):
    the thread's target closes over ``main``, which closes over the ``stop`` event."""
    for runner in _portal_threads():
        target = getattr(runner, "_target", None)
        if target is None:
            continue
        cells = {name: cell.cell_contents for name, cell in zip(target.__code__.co_freevars, target.__closure__ or ())}
        main = cells.get("main")
        if main is None:
            continue
        inner = dict(zip(main.__code__.co_freevars, (c.cell_contents for c in main.__closure__ or ())))
        stop, handed = inner.get("stop"), inner.get("handed")
        if stop and handed:
            def set_stop(stop: Any = stop, token: Any = handed[0]._token) -> None:
                trio.from_thread.run_sync(stop[0].set, trio_token=token)
            helper = threading.Thread(target=set_stop)  # (not from a trio thread)
            helper.start()
            helper.join(BOUND)
        runner.join(BOUND)


# --- 1. Jobs in worker threads are refused


def test_a_portal_refuses_jobs_in_worker_threads() -> None:
    """Reviewed: with ``threads=True`` (plain ``def`` jobs in worker threads) ``call`` returned
    while a job was in its thread (trio counts the task as blocked), virtual time ran at real
    speed meanwhile, and ``advance`` jumped straight to the step's timeout: the instance failed
    with ``StepTimeoutError``, or not, by thread timing. Decided: a portal's engine runs plain
    ``def`` jobs inline (its default), and ``threads=True`` is refused, naming why."""
    with pytest.raises(tf.InvalidArgumentError, match="threads=True"):
        with engine_portal(threads=True):
            pass


# --- 2. advance(s) stops short of durable deadlines s seconds away ----------------------------


def test_advance_by_a_timers_own_seconds_fires_it() -> None:
    """A user who writes ``.wait("w", seconds=0.7)``, ``receive(..., timeout=2.7)`` or
    ``start(..., delay=0.7)`` relies on ``advance(0.7)`` (resp. ``2.7``) running what falls due
    "at its own time". Instead they are all still waiting: their due times are stored on the
    virtual wall clock (``offset + trio.current_time()`` with an offset of ~1.78e9 Unix
    seconds, a resolution of 2.4e-7 s), so the trio deadline they sleep to rounds to ~5e-8 s
    *after* ``start + s``, and ``advance(s)`` ends just before it (a further ``advance(1e-7)``
    fires them). Integer and binary-fraction seconds happen to round exactly, which is why
    the shipped tests (3600 s) pass."""
    wait = tf.workflow("wait").wait("w", seconds=0.7).step("after", ok).build()
    receive = tf.workflow("receive").receive("r", signal="never", timeout=2.7).build()
    delayed = tf.workflow("delayed").step("a", ok).build()
    with engine_portal() as portal:
        portal.call(_registering(wait, receive, delayed))
        waiting = portal.call(lambda e: e.start("wait", {}))
        receiving = portal.call(lambda e: e.start("receive", {}))
        later = portal.call(lambda e: e.start("delayed", {}, delay=0.7))
        portal.advance(0.7)
        after_07 = (_status(portal, waiting), _status(portal, later))
        portal.advance(2.0)  # 2.7 s since the receive started
        after_27 = _status(portal, receiving)
    assert after_07 == ("completed", "completed"), after_07
    assert after_27 == "failed", after_27


# --- 3. A call that raises returns before the engine has settled ------------------------------

seen_by_step: list[str] = []


async def many_checkpoints(ctx: tf.WorkflowContext) -> str:
    for _ in range(200):
        await trio.sleep(0)
    seen_by_step.append(ctx.input["n"])
    return "ran"


def test_a_call_that_raises_returns_only_once_the_engine_has_settled() -> None:
    """The docs: ``call`` "returns its result (or raises its exception) once the engine has
    done all it can at that virtual instant". A rule whose function starts an instance and then
    raises (an expected error the rule catches) relies on the engine having run the started
    instance as far as it can, as it would after a returning call. Instead ``_settled`` only
    waits for ``wait_all_tasks_blocked`` after ``fn`` returned: the exception reaches the
    caller at once, and the engine goes on running in its thread beside the caller's code
    (state the steps change outside trioflow changes under the rule's feet)."""
    seen_by_step.clear()
    wf = tf.workflow("busy").step("s", many_checkpoints).build()

    async def start_then_raise(engine: tf.Engine) -> None:
        await engine.start("busy", {"n": "one"})
        raise LookupError("expected by the rule")

    with engine_portal() as portal:
        portal.call(_registering(wf))
        try:
            portal.call(start_then_raise)
        except LookupError:
            right_after = list(seen_by_step)
        else:
            raise AssertionError("the call's exception did not reach the caller")
    assert right_after == ["one"], right_after


# --- 4. A call that waits for virtual time hangs for ever -------------------------------------


def test_a_call_that_waits_for_virtual_time_fails_rather_than_hang() -> None:
    """``call`` "returns once the engine has nothing left to do at this virtual instant"; a
    stateful rule that writes ``portal.call(lambda e: e.wait(iid))`` on an instance waiting
    for a timer relies on getting an answer (on ``open_test_engine``'s autojump clock the
    timer fires). Instead the call never returns: virtual time moves only by ``advance``, the
    engine is idle, and nothing notices that the awaited function can never finish at this
    instant (a test hangs with no hint; hypothesis shrinking hangs too). The portal could
    race ``fn`` against ``wait_all_tasks_blocked`` and raise, naming ``advance``."""
    wf = tf.workflow("timer").wait("w", seconds=60).step("after", ok).build()
    outcome: list[BaseException | str] = []
    with engine_portal() as portal:
        portal.call(_registering(wf))
        iid = portal.call(lambda e: e.start("timer", {}))

        def waiter() -> None:
            try:
                portal.call(lambda e: e.wait(iid))
                outcome.append("returned")
            except BaseException as exc:  # noqa: BLE001 (what reaches the caller)
                outcome.append(exc)

        helper = threading.Thread(target=waiter, daemon=True)
        helper.start()
        helper.join(BOUND)
        hung = helper.is_alive()
        # (leaving the block ends the run, which cancels the waiting call: the helper ends)
    helper.join(BOUND)
    assert not hung, "portal.call(lambda e: e.wait(iid)) on an instance waiting for a timer never returned"
    assert outcome and isinstance(outcome[0], Exception), outcome


# --- 5. Leaving the block hangs while an async callback or hook sleeps -------------------------


async def sleepy_callback(event: Any) -> None:
    await trio.sleep(5)  # e.g. a callback that retries a webhook after a pause


def test_leaving_the_block_does_not_hang_on_an_async_event_callback_that_sleeps() -> None:
    """A user relies on leaving ``engine_portal()`` (hypothesis's ``teardown``) closing the
    engine as ``open_test_engine`` does: ``open_engine`` gives async event callbacks and end
    hooks up to HOOK_TIMEOUT (30 s) to finish. Instead the portal closes the engine with the
    autojump threshold still at infinity and rate 0: the callback's ``trio.sleep(5)`` and the
    30 s bound are on virtual time that never moves, so leaving the block hangs for ever.
    Suggested fix: restore ``clock.autojump_threshold = 0`` before setting ``stop``."""
    wf = tf.workflow("quick").step("a", ok).build()
    portals: list[Any] = []
    done: list[bool] = []

    def body() -> None:
        with engine_portal() as portal:
            portals.append(portal)

            async def setup(engine: tf.Engine) -> None:
                engine.register(wf)
                engine.events.on("*", sleepy_callback)

            portal.call(setup)
            portal.call(lambda e: e.start("quick", {}))
        done.append(True)

    runner = threading.Thread(target=body, daemon=True)
    runner.start()
    runner.join(BOUND)
    hung = runner.is_alive()
    if hung and portals:  # release it: let the closing engine's clock jump, as open_test_engine's does
        portal = portals[0]

        def unjam() -> None:
            trio.from_thread.run_sync(lambda: setattr(portal._clock, "autojump_threshold", 0),
                                      trio_token=portal._token)

        helper = threading.Thread(target=unjam)
        helper.start()
        helper.join(BOUND)
        runner.join(BOUND)
    assert not hung, "leaving engine_portal() hung while an async event callback slept"
    assert done == [True]


# --- 6. An engine that crashes is reported as trio.Cancelled, then RunFinishedError ------------


async def exits(ctx: tf.WorkflowContext) -> None:
    raise SystemExit(3)  # a step calling a helper that sys.exit()s


def _contains(exc: BaseException | None, kind: type[BaseException]) -> bool:
    if exc is None:
        return False
    if isinstance(exc, kind):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_contains(inner, kind) for inner in exc.exceptions)
    return False


def test_an_engine_run_that_ends_in_a_crash_reaches_the_caller_with_its_exception() -> None:
    """The docstring: leaving the block ends the run "raising what the run raised". A step's
    ``SystemExit`` is not contained by the engine: the engine's trio run ends with it. The
    user relies on seeing it. Instead the ``advance`` during which it happened raises
    ``trio.Cancelled`` ("main task done, shutting down system tasks") into synchronous code,
    later calls raise ``trio.RunFinishedError``, and leaving the block raises
    ``RunFinishedError`` from ``trio.from_thread.run_sync(stop[0].set, ...)`` in the
    ``finally``, before ``runner.join()`` and ``raise failed[0]``: the SystemExit is lost."""
    wf = tf.workflow("crashes").wait("w", seconds=5).step("a", exits).build()
    during: BaseException | None = None
    at_exit: BaseException | None = None
    try:
        with engine_portal() as portal:
            portal.call(_registering(wf))
            portal.call(lambda e: e.start("crashes", {}))
            try:
                portal.advance(10)
            except BaseException as exc:  # noqa: BLE001
                during = exc
            time.sleep(0.2)  # (the run has ended by now)
    except BaseException as exc:  # noqa: BLE001
        at_exit = exc
    assert not isinstance(during, trio.Cancelled), f"advance raised trio.Cancelled: {during!r}"
    assert _contains(at_exit, SystemExit), f"leaving the block raised {at_exit!r}, not the run's SystemExit"


# --- 7. engine_portal inside a trio run: no clear error, and a leaked engine thread ------------


def test_engine_portal_in_a_trio_run_fails_clearly_and_leaves_no_thread() -> None:
    """A user converting an async pytest test (pytest-trio, ``trioflow.testing.run``) relies
    on a clear refusal pointing at ``open_test_engine``/the ``trioflow_engine`` fixture.
    Instead ``engine_portal()`` opens (blocking the caller's event loop while it waits for the
    thread), the first ``call`` raises trio's bare "this is a blocking function; call it from a
    thread", and leaving the block raises the same from its ``finally``
    (``trio.from_thread.run_sync`` refuses in a trio thread) before ``stop`` is set: the
    ``trioflow engine portal`` thread and its open engine live on for the rest of the process."""
    before = set(_portal_threads())
    raised: list[BaseException] = []

    async def main() -> None:
        try:
            with engine_portal() as portal:
                portal.call(_registering(tf.workflow("x").step("a", ok).build()))
        except Exception as exc:  # noqa: BLE001
            raised.append(exc)

    try:
        trio.run(main)
        leaked = [t for t in _portal_threads() if t not in before]
    finally:
        _stop_leaked_portal_threads()
    assert not leaked, f"engine_portal() left {len(leaked)} engine thread(s) running"
    assert raised and "open_test_engine" in str(raised[0]), raised


# --- 8. A plain (non-async) function given to call runs, then fails with a TypeError ------------


def test_call_with_a_plain_function_either_runs_it_or_refuses_before_running_it() -> None:
    """``engine.register`` and ``engine.jobs.register`` are plain methods: a user writes
    ``portal.call(lambda e: e.register(ORDER))`` (the shipped example hides this behind an
    ``async def _register`` helper). They rely on it working, or on a refusal that did nothing.
    Instead the function runs (the workflow is registered) and then ``await None`` raises
    "TypeError: object NoneType can't be used in 'await' expression", before settling."""
    wf = tf.workflow("plain").step("a", ok).build()
    with engine_portal() as portal:
        try:
            portal.call(lambda e: e.register(wf))
        except tf.InvalidArgumentError:
            try:
                portal.call(lambda e: e.start("plain", {}))
            except tf.UnknownWorkflowError:
                return  # refused, and nothing was done: fine
            raise AssertionError("call() refused the function, but ran it first") from None
        except TypeError as exc:
            raise AssertionError(f"call() ran the plain function, then raised {exc!r}") from exc
