"""Running one task step (or its compensation): attempts, per-attempt timeout, retry sleeps."""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any

import trio

from trioflow._codec import as_stored
from trioflow._current import call_inline, in_lane
from trioflow._decide import (
    catcher_for,
    cut_short_execution,
    cut_short_fields,
    new_execution,
    next_execution_id,
    running_execution_id,
)
from trioflow._definition import Step, TaskStep
from trioflow._escapes import failure_of, stops_the_process, stray_cancel
from trioflow._errors import (
    RecordedError,
    StorageUnavailableError,
    StepTimeoutError,
    UnencodableValueError,
    capped,
    describe_error,
    error_cause,
    error_name,
    root_error,
)
from trioflow._lanes import MAIN
from trioflow._retry import NO_RETRY
from trioflow._snapshot import StepResult

from ._run import Parked, Run, StepFailure, StoreFailed, unwrapped
from ._wait import wait_for_retry

_NO_TIMEOUT = contextlib.nullcontext()
log = logging.getLogger("trioflow")


async def attempt(
    run: Run, step: TaskStep, fn: Any, asynchronous: bool, args: tuple[Any, ...], *, ctx: Any, announce: bool,
    since: float | None = None, undo: StepResult | None = None,
) -> tuple[Any, int]:
    """Call ``fn(*args)`` until it succeeds or the step's retry policy gives up.

    Each attempt is bounded by the step's timeout (a cancel scope); between attempts the actor
    sleeps on trio's clock. Raises :class:`StepFailure` with the last error. Each call is
    marked on ``ctx`` (the lane's context) for ``current_step()``. ``undo``: the execution
    whose compensation this is.
    """
    retry = step.retry or NO_RETRY
    timeout = step.timeout
    attempts = 0
    # A step's own attempts wait between them durably: the lane stores the attempt count and
    # when the next is due, so a restart neither starts the count over nor waits the whole delay
    # again; a long delay lets the instance leave memory. A compensation's attempts are kept on
    # the main lane (whose steps' waits are over once compensating), for the same reasons; their
    # delays are slept in memory.
    lane = run.state.lanes.get(ctx.lane) if announce else None
    undoing = run.state.lanes[MAIN] if undo is not None and run.adapter is not None else None
    try:
        if lane is not None and lane.waiting is not None and "attempt" in lane.waiting:
            attempts = ctx._attempt = lane.waiting["attempt"]  # made before a restart
            # Cancelled (or timed out) while it waited out of memory: the execution's attempts
            # are recorded, as when the cancel reaches its delay in memory.
            await trio.lowlevel.checkpoint_if_cancelled()
            if "retry" in lane.waiting:
                if attempts >= retry.max_attempts and "error_name" in lane.waiting:
                    # Taken up by a release that allows no more attempts (its retry removed, or
                    # its max_attempts lowered since): the step fails now with the last
                    # attempt's error, as that release would have failed it then, rather than
                    # make an attempt no release allows (a second charge). (retry_on is not
                    # asked again: a predicate would see the error as recorded, not raised.)
                    raise StepFailure(step.name, _last_error(lane.waiting), attempts)
                try:
                    await wait_for_retry(run, lane)
                except StorageUnavailableError as exc:
                    raise StoreFailed(exc) from exc
        elif undo is not None and (kept := _kept_compensation(run, undo)) is not None:
            attempts = ctx._attempt = kept["undo_attempt"]  # made before a restart
            if attempts >= retry.max_attempts and "error_name" in kept:
                raise StepFailure(step.name, _last_error(kept), attempts)  # (as a step's, above)
            await trio.sleep(max(0.0, kept["undo_at"] - run.clock()))
        # In an engine, each attempt of a step that may be tried again gets its own copies of
        # what it is given (its input, ctx.input, ctx.steps): one that changes them in place
        # must not hand the next attempt what a restart between the two would not.
        fresh = run.adapter is not None and retry.max_attempts > 1
        while True:
            attempts += 1
            ctx._calling, ctx._attempt = step.name, attempts
            call = args
            if fresh:
                ctx.copies = None
                call = tuple(a if a is ctx else as_stored(a, f"input of step {step.name!r}") for a in args)
            try:
                # The call is written out here, not in a helper coroutine: a parked instance keeps
                # every frame of its await chain alive. Plain functions run in a worker thread
                # (abandoned on cancel: a timeout or cancel need not wait for a thread that cannot
                # be interrupted; jobs are at-least-once anyway), or inline for a test engine, where
                # a busy thread would let the autojump clock race ahead.
                with trio.move_on_after(timeout) if timeout is not None else _NO_TIMEOUT:
                    if asynchronous:
                        return await fn(*call), attempts
                    if run.threads is not None:
                        # (Its own context: a thread given up runs on, and must not reach
                        # the lane's next step or attempt through it.)
                        thread_ctx = ctx.for_thread_call()
                        in_thread, thread_call = in_lane(thread_ctx, fn)
                        try:
                            return await run.threads.run(
                                in_thread, *(thread_ctx if a is ctx else a for a in call)), attempts
                        finally:
                            thread_call.end()
                    # Refused as in a worker thread: a test engine must fail where production does.
                    return call_inline(fn, *call), attempts
                assert timeout is not None
                error: BaseException = StepTimeoutError(step.name, timeout)
            except Exception as exc:
                error = exc
            except BaseException as exc:
                error = _interrupted(exc, step.name)
            finally:
                ctx._calling = None
            # A value that cannot be stored (put into ctx.data) fails the same way on every attempt.
            try:
                delay = None if isinstance(root_error(error), UnencodableValueError) else retry.next_delay(attempts, error)
            except BaseException as exc:  # a retry_on predicate that raised: the step fails with that
                raise StepFailure(step.name, failure_of(exc), attempts) from exc
            if delay is None:
                raise StepFailure(step.name, error, attempts)
            if announce and run.bus.active:
                run.emit(
                    "workflow.step.retry", ctx.lane, step_name=step.name,
                    execution_id=next_execution_id(run.state, ctx.lane, step.name), attempt=attempts + 1,
                    max_attempts=retry.max_attempts, delay=delay, error=describe_error(error),
                    error_name=error_name(error), cause=error_cause(error),
                )
            try:
                if lane is not None and run.adapter is not None:
                    lane.waiting = {"retry": run.clock() + delay, "attempt": attempts, **_kept_error(error)}
                    if since is not None:
                        lane.waiting["since"] = since
                    await run.persist()
                    await wait_for_retry(run, lane)
                elif undoing is not None:
                    assert undo is not None
                    undoing.waiting = {"undo": undo.seq, "undo_attempt": attempts, "undo_at": run.clock() + delay,
                                       **_kept_error(error)}
                    await run.persist()
                    await trio.sleep(delay)
                else:
                    await trio.sleep(delay)
            except StorageUnavailableError as exc:
                raise StoreFailed(exc) from exc
    finally:
        if lane is not None and lane.waiting is not None and not lane.waits():
            lane.waiting = None  # the attempts are over: the count kept for a restart goes
        if undoing is not None:
            undoing.waiting = None  # (stored with the compensation's end)


#: Longest cause of the error before a retry delay that its wait keeps: a wait is in the
#: header, which every checkpoint rewrites (a map's items in retry delays each keep one).
KEPT_ERROR_TEXT = 256


def _kept_error(error: BaseException) -> dict[str, str]:
    """What a retry delay's wait keeps of the error before it (see :func:`_last_error`)."""
    # (The name whole: a catch by class matches the name a class has.)
    return {"error_name": error_name(error), "cause": capped(error_cause(error), KEPT_ERROR_TEXT)}


def _last_error(waiting: dict[str, Any]) -> RecordedError:
    """The error of the attempt before a retry delay, as its wait keeps it: what the step (or
    compensation) fails with when a release taking it up allows no more attempts."""
    name, cause = waiting["error_name"], waiting["cause"]
    return RecordedError(f"{name}: {cause}" if cause else name, name, cause)


def _kept_compensation(run: Run, record: StepResult) -> dict[str, Any] | None:
    """What storage kept of the compensation of ``record`` under way (the attempts it made and
    when the next is due), or ``None``: none made, or not in an engine."""
    kept = run.state.lanes[MAIN].waiting
    return kept if kept is not None and kept.get("undo") == record.seq else None


def _as_cancellation(exc: BaseException, step_name: str) -> trio.Cancelled | None:
    """``exc`` if it is a cancellation; for a group holding one (what a job that runs a nursery
    of its own lets out when it is cancelled), the first, so that callers see it as a bare one
    is seen: errors the job's cleanup raised beside it are logged, as the step is cancelled
    anyway (a KeyboardInterrupt or SystemExit among them goes on as it is); else ``None``."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc if isinstance(exc, trio.Cancelled) else None
    cancelled, rest = exc.split(trio.Cancelled)
    if cancelled is None or (rest is not None and rest.split((KeyboardInterrupt, SystemExit))[0] is not None):
        return None
    if rest is not None:
        log.warning("step %r: its job raised while it was being cancelled: %s", step_name, describe_error(rest))
    first = unwrapped(cancelled)
    assert isinstance(first, trio.Cancelled)
    return first


def _interrupted(exc: BaseException, step_name: str) -> BaseException:
    """What a ``BaseException`` out of a job means for its step: a cancellation of the step,
    its instance or the engine is raised as a bare ``Cancelled``; a stray one (nothing
    cancelled them) is returned, to fail the step with; KeyboardInterrupt and SystemExit (or a
    group holding one) are raised as they are, to stop the process; any other (GeneratorExit,
    asyncio's CancelledError, a job's own) is returned, to fail the step with: one job's odd
    exception must not stop every instance in the engine."""
    cancelled = _as_cancellation(exc, step_name)
    if cancelled is None:
        if stops_the_process(exc):
            raise exc
        return exc
    stray = stray_cancel()
    if stray is None:
        raise cancelled from None
    return stray


async def run_task(
    run: Run, step: TaskStep, ctx: Any, started_at: float, taken_up: bool = False,
) -> tuple[Any, Any, bool, int]:
    """Run a task step; returns ``(output, input, input is the workflow input, attempts)`` or
    raises :class:`StepFailure` (not recorded yet: the lane decides whether a catch routes it).
    A cancellation is recorded here, as an execution a resume runs again. ``taken_up``: its
    execution began before (its lane keeps the attempts made: see :func:`attempt`)."""
    data = None
    uses_input = False
    attempts = 0
    ctx._attempt = 0  # the attempts made so far, for a cancellation to record truthfully
    try:
        fn, asynchronous = run.callable(step.run, step.run_is_async)
        if step.style == "job":
            if step.input is None:
                uses_input, data = True, ctx.input
            else:
                data = step.input(ctx)
                if inspect.isawaitable(data):  # an async def: the input comes once awaited
                    data = await data
                # Checked before the job runs: a job must not act on an input that fails its
                # step only once it is recorded.
                run.check_value(data, f"input of step {step.name!r}")
            arg = data
        else:
            arg = ctx
        if step.retry is None and step.timeout is None and asynchronous and not taken_up:
            # The common case, written out: one attempt, no timeout scope, and one coroutine
            # frame fewer, both per step and for as long as an instance is parked in it.
            ctx._calling, ctx._attempt = step.name, 1
            try:
                result = await fn(arg)
            except Exception as exc:
                raise StepFailure(step.name, exc, 1) from None
            except BaseException as exc:
                raise StepFailure(step.name, _interrupted(exc, step.name), 1) from None
            finally:
                ctx._calling = None
            attempts = 1
        else:
            result, attempts = await attempt(run, step, fn, asynchronous, (arg,), ctx=ctx, announce=True,
                                             since=started_at)
        output = step.output(result, ctx) if step.output is not None else result
        if step.output is not None and inspect.isawaitable(output):  # an async def: as input= is
            output = await output
        return output, data, uses_input, attempts
    except StepFailure as failure:
        failure.input, failure.uses_input = data, uses_input
        raise
    except Parked:
        raise  # between attempts, stored: the instance left memory
    except StoreFailed as failed:
        raise failed.error from None  # the run's, not the step's: it stops as last stored
    except Exception as exc:  # input/output mapping, unknown job, storage refusing a retry's delay: no retry
        # (The attempts made so far: attempt() did not return them if it raised.)
        raise StepFailure(step.name, exc, max(attempts, ctx._attempt, 1), data, uses_input) from exc
    except BaseException as exc:
        cancelled = _as_cancellation(exc, step.name)
        if cancelled is None or stray_cancel() is not None:
            # (A mapper's BaseException of its own fails the step, as an Exception does; so
            # does a cancellation it let out of a scope of its own.)
            raise StepFailure(step.name, failure_of(exc), max(attempts, 1), data, uses_input) from exc
        if run.stopped_alone(ctx._fanouts):
            # It goes on with the next engine, as the same execution: a checkpoint that comes in
            # this instant (a sibling's) stores that it began, with the attempts made before the
            # one cut (that one runs again, counted as it was), so that a decision stored then
            # (a fail-fast's) ends it as cut short, and a retry's delay keeps counting (see
            # Run.stopped_alone).
            lane = run.state.lanes[ctx.lane]
            if lane.waiting is None or "attempt" not in lane.waiting:
                lane.waiting = {"attempt": max(ctx._attempt - 1, 0), "since": started_at}
            raise cancelled from None
        record = cut_short_execution(
            run.state, ctx.lane, step.name, attempts=ctx._attempt, started_at=started_at, now=run.clock(),
            input=data, input_is_workflow_input=uses_input,
        )
        run.add_failure(record, for_good=False)
        # Its execution ended: a retry's delay it was cut in is over (taken up later, the lane
        # must not read as still under way, to be ended again).
        run.state.lanes[ctx.lane].waiting = None
        if run.bus.active:
            # Its end, as for any step that started: published once the checkpoint that stores
            # the record (the cancel's, the timeout's, the fail-fast's end) has (an engine
            # closing stores none: the step runs again with the next engine).
            run.emit_once_stored("workflow.step.failed", ctx.lane, **cut_short_fields(step.name, record.id, record.attempts))
        raise cancelled from None


def publish_cut_short(run: Run, lane_key: str, step_name: str, execution: str | None = None, attempts: int = 1) -> None:
    """A step cut short (a cancel, a timeout, a fail-fast sibling): its end, as a task step's,
    once the checkpoint that stores what cut it has; an engine closing stores none, and the
    step goes on with the next engine. ``execution``: its id, where a record of its end was
    added already (else the one under way in the lane)."""
    if run.bus.active and run.bus.wants("workflow.step.failed"):
        if execution is None:
            execution = running_execution_id(run.state, lane_key, step_name)
        run.emit_once_stored("workflow.step.failed", lane_key, **cut_short_fields(step_name, execution, attempts))


async def step_failed(run: Run, step: Step, failure: StepFailure, started_at: float, ctx: Any) -> None:
    """A step failed for good (retries spent, or an error nothing retries). If one of its
    catchers matches the error, record the execution as caught, move the lane to the catcher's
    target and return; otherwise record the failure (its lane will not run the step again, even
    after a restart), tell listeners and the hook, and raise ``failure``."""
    error = failure.error
    try:
        catcher = catcher_for(step, error)
    except BaseException as exc:
        # A predicate that raises: the step fails with that error, as with ``retry_on``.
        catcher, error = None, failure_of(exc)
        failure = StepFailure(failure.step_name, error, failure.attempts, failure.input, failure.uses_input)
    name, cause = error_name(error), error_cause(error)
    record = new_execution(
        run.state, ctx.lane, step.name, "failed" if catcher is None else "caught", error=describe_error(error),
        error_name=name, cause=cause, output=None if catcher is None else {"error": name, "cause": cause},
        input=failure.input, input_is_workflow_input=failure.uses_input, attempts=failure.attempts,
        started_at=started_at, now=run.clock(),
    )
    # Its event goes out once the checkpoint that stores its record has, whoever awaits that
    # checkpoint: a sibling's may store it as the engine's close cuts this wait short (the next
    # engine takes the stored end as it stands, and publishes nothing).
    emit = run.emit if run.adapter is None else run.emit_once_stored
    if catcher is not None:
        run.add_caught(record, step, catcher)
        if run.bus.active:
            # (``error`` is the name here, as it was before ``error_name`` came: both are kept,
            # so that one handler reads ``error_name`` and ``cause`` off any step event.)
            emit("workflow.step.caught", ctx.lane, step_name=step.name, execution_id=record.id, error=name,
                 error_name=name, cause=cause, next=catcher.next)
        await run.persist()
        return
    run.add_failure(record, for_good=True)
    if run.bus.active:
        emit("workflow.step.failed", ctx.lane, step_name=step.name, execution_id=record.id, error=record.error,
             error_name=name, cause=cause, attempts=failure.attempts)
    # Stored now, before anything can await (the hook below, the siblings of a branch or map
    # item going on, children being cancelled): a restart then takes the failure as it stands
    # instead of running the step again.
    await run.persist()
    if run.has_hooks:
        await run.hook("on_step_failed", step.name, error, ctx)
    raise failure


async def compensate(run: Run, step: TaskStep, record: StepResult, ctx: Any) -> None:
    """Run the compensation of one execution of a step (it gets that execution's output), with
    the step's retry policy; raises :class:`StepFailure`."""
    assert step.compensate is not None
    try:
        fn, asynchronous = run.callable(step.compensate, step.compensate_is_async)
    except Exception as exc:
        raise StepFailure(step.name, exc, 0) from exc
    # A copy in an engine, as a step's own inputs are (see WorkflowContext.input).
    output = record.output if run.adapter is None else as_stored(record.output, f"output of step {step.name!r}")
    args = (ctx, output) if step.style == "saga" else (output,)
    ctx._compensating = record.execution
    await attempt(run, step, fn, asynchronous, args, ctx=ctx, announce=False, undo=record)
