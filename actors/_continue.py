"""Continue-as-new: a ``continue_as_new`` step ends an instance's run and starts its next one.

The next run's start, header and empty history replace the instance's whole history in one
atomic checkpoint (an adapter's ``checkpoint(..., restart=True)``): a crash leaves either the
run that reached the step (which a resume takes up at that step, deciding it again) or the next
one at its first step, never a mix. Only then does the state the actors hold become the next
run's, in place (the context, the lane actor and the engine all hold that object).
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import trio

from trioflow._callables import plain_result
from trioflow._codec import as_stored, encode_header, encode_start
from trioflow._context import WorkflowContext
from trioflow._decide import fresh_copy, next_execution_id, next_run, passed_on
from trioflow._definition import ChildStep, ContinueAsNewStep, WorkflowDefinition
from trioflow._errors import CheckpointConflictError
from trioflow._escapes import failure_of
from trioflow._lanes import MAIN, ended_child
from trioflow._snapshot import InstanceState, Lane
from trioflow._storage_retry import retried

from ._run import Run, StepFailure, timeout_left

_STATE_FIELDS = tuple(field.name for field in attrs.fields(InstanceState))


async def run_continue(run: Run, step: ContinueAsNewStep, lane: Lane, ctx: WorkflowContext) -> None:
    """Run a ``continue_as_new`` step on the main line: work out the next run's input, store
    the next run in place of this one, and leave ``run.state`` at its first step. What the
    step's callable raises, or an input that cannot be stored, fails the step (before anything
    is written)."""
    state = run.state
    try:
        if not step.has_input:
            value = passed_on(state, lane, MAIN, None)[0]
        elif callable(step.input):
            value = plain_result(step.input, ctx)
        else:
            value = fresh_copy(step.input)  # (each instance its own, as a pass step's result)
        definition = run.release_for_next_run()
        # As the next run reads it back (a tuple as a list), and refused now if it cannot be.
        following = next_run(state, definition, as_stored(value, f"the input step {step.name!r} continues with"))
        start, header = encode_start(following), encode_header(following)
    except BaseException as exc:
        if not isinstance(exc, Exception):
            raise
        raise StepFailure(step.name, failure_of(exc), 1) from exc
    if run.adapter is not None:
        if run.storing is not None:
            # The waker's checkpoint of the timer before this step is in flight: one at a time.
            with trio.CancelScope(shield=True):
                await run.storing.wait()
        run.fired_at = None  # (what it had to store goes with this run's history)
        with trio.CancelScope(shield=True):
            # Handed to storage as a whole, cancelled or not: a cancel that cut it short could
            # not tell which run storage holds.
            notices = await _stale_notices(run)
            await _store(run, start, header, notices)
        run.stored_status, run.stored_wake_at, run.woken = "running", None, False
        if notices:
            if run.consumed_seqs is None:
                run.consumed_seqs = set()
            run.consumed_seqs.update(notices)
    bus = run.bus
    if bus.active and bus.wants("workflow.step.completed"):
        # (It ends this run: its execution, which has no record, is named within it.)
        run.emit("workflow.step.completed", step_name=step.name,
                 execution_id=next_execution_id(state, MAIN, step.name), output=following.input)
    # (Signals delivered to the run while the write was in flight are the next run's too; not
    # the end notices of children, which no step of it waits for.)
    following.signals = [s for s in state.signals if ended_child(s[1]) is None] if state.signals else ()
    for name in _STATE_FIELDS:
        setattr(state, name, getattr(following, name))
    if definition is not run.definition:
        _take_up(run, definition)
    if bus.active and bus.wants("workflow.continued"):
        run.emit("workflow.continued", step_name=step.name, run=state.runs)


def _take_up(run: Run, definition: WorkflowDefinition) -> None:
    """The next run goes on with ``definition``, registered in place of the run's: its hooks,
    and its workflow timeout, which counts from the instance's first start as it does across
    runs (and as a resume under it would count it). Not once the run's own timeout has come,
    or a cancel() said yes, while the next run was stored: the instance ends so, on the
    release it ran under (whose timeout is the one that came)."""
    scope = run.cancel_scope
    if scope is not None and (scope.cancel_called or scope.deadline <= trio.current_time()):
        return
    before, run.definition, run.has_hooks = run.definition.timeout, definition, definition.has_hooks
    timeout = definition.timeout
    if scope is None or timeout == before:
        return
    if timeout is None:
        scope.deadline = math.inf
        return
    started = run.state.started_at
    left = timeout_left(timeout, 0.0 if started is None else max(0.0, run.clock() - started))
    scope.deadline = trio.current_time() + left
    if not left:
        # Past it already: trio would see that only at its next pass, after the first step's
        # job had begun (as for a run taken up at its deadline: see _forward).
        scope.cancel()


async def _stale_notices(run: Run) -> tuple[int, ...]:
    """The seqs of the end notices of children stored for the instance and not taken: a child
    cut short (a fail-fast sibling, a timeout) ends after its step has, and no step of the next
    run waits for it. The write that starts the next run consumes them, or every run after
    would carry them (and every wake read them) for ever."""
    adapter, state = run.adapter, run.state
    iid = state.instance_id
    if adapter is None or not callable(getattr(adapter, "signals", None)):
        return ()
    if not any(isinstance(step, ChildStep) for step, _ in run.definition.lookup.values()) \
            and not any(ended_child(signal[1]) is not None for signal in state.signals):
        # (No child step, and no notice from a child an earlier release's run started among
        # the signals it holds: no read.)
        return ()
    pending = await retried(lambda: adapter.signals(iid), retry_for=run.storage_retry_for,
                            what=f"reading the signals of instance {iid}", instance_id=iid)
    taken = set(state.consumed)
    return tuple(seq for seq, name, _ in pending if ended_child(name) is not None and seq not in taken)


async def _store(run: Run, start: bytes, header: bytes, notices: tuple[int, ...]) -> None:
    """Store the next run in place of this one (``Adapter.checkpoint(..., restart=True)``),
    consuming the stale end notices ``notices`` too, tried again while storage is unavailable;
    a retry refused as a conflict was stored by the try before it if storage holds exactly this
    start and header, and no record."""
    adapter, state = run.adapter, run.state
    assert adapter is not None
    checkpoint: Any = adapter.checkpoint  # (the keyword is an adapter's option: see restarts_history)
    iid, first_seq, consumed = state.instance_id, state.stored, (*state.consumed, *notices)
    tries = 0

    async def once() -> None:
        nonlocal tries
        tries += 1
        try:
            await checkpoint(iid, "running", header, [], first_seq=first_seq, start=start, consumed=consumed,
                             restart=True)
        except CheckpointConflictError:
            stored = None if tries == 1 else await adapter.load(iid)
            if stored is None or bytes(stored.start or b"") != start or bytes(stored.header) != header \
                    or stored.records:
                raise

    await retried(once, retry_for=run.storage_retry_for, what=f"continuing instance {iid} as new", instance_id=iid)
