"""Child steps: start a child instance, wait for its end as for a signal, take its outcome.

The parent stores the step's start (with the child's id, and what its lane waits for: the
child's end notice, a signal trioflow sends) before it stores the child, as Temporal records a
child's initiation in its parent's history first: whatever stops it in between, its records name
every child it may have started, so a cancel, a workflow timeout or a failure that ends it
before it takes the step up again still cancels that child (or compensates it, if it completed).
The child's id comes from the parent's id and the step execution's id, so starting it is
idempotent: a parent taken up again before its child's end starts the same child again, which
the engine takes as the one already there. The parent leaves memory while it waits (once every
lane of it rests), holding no task and no ``max_running`` slot. The child's last checkpoint stores the end notice in
the same atomic write that records its end, so it is never lost.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import trio

from trioflow._context import WorkflowContext
from trioflow._current import swap_lane
from trioflow._decide import (
    child_completed_late, child_step_cut_short, new_execution, next_execution_id, unended_children,
)
from trioflow._definition import ChildStep
from trioflow._escapes import failure_of
from trioflow._errors import (
    ChildWorkflowError,
    EngineClosedError,
    InstanceIdConflictError,
    RecordedError,
    SnapshotDecodeError,
    StorageUnavailableError,
    TrioflowError,
    UnknownJobError,
    UnknownWorkflowError,
    describe_error,
)
from trioflow._lanes import child_instance_id
from trioflow._map import ItemIndex
from trioflow._snapshot import TERMINAL, Lane, StepResult, child_wait
from trioflow._storage_retry import BACKOFF_MAX, FIRST_BACKOFF, back_off

from ._run import Children, Run, StepFailure
from ._task import publish_cut_short
from ._wait import announce, signal_or_timeout, take

log = logging.getLogger("trioflow")
#: Longest a child's store is shielded from a cancel of its parent's lane (seconds), counted
#: from the cancel (or the timeout) on.
STORE_CHILD_MOST = 10.0


def bound_child_stores(run: Run, within: object = None, *, cut: bool = True) -> None:
    """``run`` is being cancelled (``engine.cancel()``; ``cut=False``: the engine closing), or,
    ``within``, the fail-fast fan-out whose nursery scope that is: the stores of children its
    child steps (in that fan-out's branches or items) are making may take
    :data:`STORE_CHILD_MOST` seconds more at most, then the cancel goes on (storage that does
    not answer must not hold it for ever); ``cut``: those children are cancelled as they are
    made (see ``Children.cancel_as_made``), while a closing engine leaves them to the next."""
    if run.child_stores:
        assert run.children is not None
        most = trio.current_time() + STORE_CHILD_MOST
        for scope, (fanouts, held) in run.child_stores.items():
            if within is None or within in fanouts:
                scope.deadline = min(scope.deadline, most)
                if cut:
                    run.children.cancel_as_made(held)


def _store_bound(timeout: float) -> float:
    """Until when a child's store may take, as it begins, its step's effective deadline
    ``timeout``: no bound, unless a timeout comes (or has come: ``-inf``) first, and then that
    much past it. (A cancel coming later bounds it then: see :func:`bound_child_stores`.)"""
    return math.inf if timeout == math.inf else max(timeout, trio.current_time()) + STORE_CHILD_MOST


async def run_child(run: Run, step: ChildStep, lane_key: str, lane: Lane, ctx: WorkflowContext) -> Any:
    """Start the child (unless this execution did already) and wait for it to end; its output,
    or :class:`StepFailure` with :class:`ChildWorkflowError` if it did not complete."""
    children = run.children
    assert children is not None  # (execute_workflow refuses child steps before any step runs)
    if lane.begun is None:
        await _start(run, step, lane_key, lane, ctx)
        assert lane.waiting is not None
        child_id, notice = lane.waiting["child"], lane.waiting["signal"]
        taken = await take(run, notice)
    else:  # taken up again (a resume)
        assert lane.waiting is not None
        child_id, notice = lane.waiting["child"], lane.waiting["signal"]
        if lane.waiting.get("check") != math.inf:
            # It may not even be stored (the parent stopped between storing the step's start,
            # which lists it, and storing the child): held as being stored until it is (see
            # _start), from before anything awaits.
            held = children.hold(child_id, step.workflow)
            try:
                taken = await take(run, notice)
                if taken is None:
                    # Not ended: started again (one stored is taken as it is), once its workflow
                    # is registered (see _start). (Not held while it waits for that: a cancel()
                    # of it must not wait for a registration.)
                    if not children.runnable(step.workflow):
                        before = children.release(held, for_now=True)
                        await children.until_registered(step.workflow)
                        held = children.hold(child_id, step.workflow, before)
                    begun = run.state.records[lane.begun]
                    await _store_child(run, step, lane, child_id, begun.input, begun.input_is_workflow_input, held,
                                       ctx._fanouts)
                    # Stored now: not to be looked at again, at this take-up nor at any later one
                    # (a map of children woken for each one's end would start every open one
                    # again each time); the wait stored next says so. (A wait with no ``check``
                    # at all was stored by a release that had it only on the main line: its
                    # child is stored the first time too.)
                    lane.waiting = child_wait(child_id, None)
            finally:
                children.release(held)
        else:
            taken = await take(run, notice)
        # It may be queued for a slot this parent holds. (Not by a parent taken up to be
        # cancelled, or to time out: the child is cancelled next, and must not run a step first.)
        await trio.lowlevel.checkpoint_if_cancelled()
        children.adopt(child_id, run.state.instance_id)
    taken = await signal_or_timeout(run, lane, notice, taken)
    assert taken is not None  # no timeout
    outcome = _child_outcome(child_id, taken[1])
    lane.waiting = None
    if outcome["status"] == "completed":
        return outcome["output"]
    error = RecordedError(outcome.get("error") or outcome["status"], outcome.get("error_name"), outcome.get("cause"),
                          named_by_workflow=bool(outcome.get("fail_step")))
    raise StepFailure(step.name, ChildWorkflowError(child_id, step.workflow, outcome["status"], error), 1)


#: What a child's end notice says it ended as (see ``Run._end_notice``).
_ENDS = frozenset(TERMINAL - {"compensated"})
_TEXT_OR_NONE = (str, type(None))


def _child_outcome(child_id: str, outcome: Any) -> dict[str, Any]:
    """A child's end notice as its parent reads it, checked: one damaged in storage (it is
    stored as a signal) is unreadable, reported so with its parent left as stored, rather than
    failing the step (or the run) on a missing field."""
    if not (isinstance(outcome, dict) and outcome.get("status") in _ENDS and "output" in outcome
            and isinstance(outcome.get("error"), _TEXT_OR_NONE) and isinstance(outcome.get("error_name"), _TEXT_OR_NONE)
            and isinstance(outcome.get("cause"), _TEXT_OR_NONE)):
        raise SnapshotDecodeError(f"the end notice of child {child_id!r} is malformed")
    return outcome


async def _start(run: Run, step: ChildStep, lane_key: str, lane: Lane, ctx: WorkflowContext) -> None:
    """Record the execution's start (with the child's id and input) and what the lane waits
    for, store them, then start the child."""
    state = run.state
    assert run.children is not None
    try:
        # No input= mapper: a map item's child gets the item, any other the workflow input.
        uses_input = step.input is None and ctx.item_index is None
        if step.input is not None:
            child_input = step.input(ctx)
            if inspect.isawaitable(child_input):  # an async def: the input comes once awaited
                child_input = await child_input
        else:
            child_input = ctx.input if uses_input else ctx.item
        run.check_value(child_input, f"input of step {step.name!r}")
    except BaseException as exc:
        raise StepFailure(step.name, failure_of(exc), 1) from exc
    if not run.from_storage:
        # Refused before anything is stored: a name nobody registers fails the step at once.
        try:
            run.children.check_runnable(step.workflow)
        except (UnknownWorkflowError, UnknownJobError) as exc:
            raise StepFailure(step.name, exc, 1, child_input, uses_input) from exc
    else:
        # Taken up from storage (resumed as the engine starts, or woken from a wait): as a
        # service starts up, its modules may each register their workflows after an ``await``,
        # and this parent's resume may come first. It waits for the child's workflow rather than
        # fail the step, and compensate the children it had run, for a workflow about to be
        # registered. (A run that started here fails the step: a name nobody registers.) Before
        # anything is staged: a sibling's checkpoint would list a child not yet held (below).
        await run.children.until_registered(step.workflow)
    now = run.clock()
    child_id = child_instance_id(state.instance_id, next_execution_id(state, lane_key, step.name), state.runs)
    # Held as being stored from before the write that lists it in its parent (its start, staged
    # next, goes with whichever checkpoint comes first): a signal(), cancel() or wait() of it
    # meanwhile (a caller that read the parent's children) waits for its store rather than find
    # no such instance (a cancel would say False, and it would run uncancelled).
    held = run.children.hold(child_id, step.workflow)
    try:
        start = new_execution(
            state, lane_key, step.name, "started", output=child_id, input=child_input,
            input_is_workflow_input=uses_input, started_at=now, now=now)
        start = run.stage(start)
        state.add(start)
        lane.begun = start.seq
        # Stored as a wait that wakes the parent at ``check``, should it be out of memory by then
        # with its child still running: so a parent that stopped before it stored its child (no
        # end notice would ever wake it) is taken up again, and stores it then. A child that ends
        # before then wakes it first, with no write more.
        lane.waiting = child_wait(child_id, start.started_at)
        # Shielded: the start is staged, and the next checkpoint stores it whoever makes it (a
        # sibling lane's shared write, the cancel's or timeout's decision). A cancel that reached
        # this lane as it waited for that write would leave a child listed (and never cancelled)
        # that is never stored: the child is stored once its start is, cancelled or not, and the
        # cancel then stops the lane (and cancel_children the child) as for one started before it.
        await announce(run, step, lane_key, lane, shielded=True)
        await _store_child(run, step, lane, child_id, child_input, uses_input, held, ctx._fanouts, ours=True)
    finally:
        run.children.release(held)


async def _store_child(
    run: Run, step: ChildStep, lane: Lane, child_id: str, child_input: Any, uses_input: bool, held: object,
    fanouts: tuple[object, ...], *, ours: bool = False,
) -> None:
    """Store the child (or find it stored) and run it, its workflow registered; once its start
    is stored in the parent. ``held``: what ``Children.hold`` gave for it; ``fanouts``: its
    lane's (see ``WorkflowContext._fanouts``); ``ours``: a new child id (see ``Children.start``)."""
    state = run.state
    assert run.children is not None
    deadline: float | None = None
    delay = FIRST_BACKOFF
    timeout = trio.current_effective_deadline()
    if timeout != math.inf:
        # A child made once its step is cut (by a timeout, or cut already) starts nothing.
        run.children.cancel_as_made(held, timeout)
    while True:  # (a loop, not a wrapper: no frame more for each of thousands of children starting)
        try:
            # Shielded: its start is stored (it lists the child), so a cancel or timeout coming
            # now must not leave the child unstored (an adapter whose create awaits before it
            # writes); for a bounded time once one comes: storage that does not answer must not
            # hold the cancel, or the engine's close, for ever. Past that, it is tried again.
            # (Storage that is merely slow, with nothing cancelling, takes the time it takes.)
            with trio.CancelScope(shield=True, deadline=_store_bound(timeout)) as bounded:
                if run.child_stores is None:
                    run.child_stores = {}
                # (The fail-fast fan-outs whose cancel reaches it, and its hold.)
                run.child_stores[bounded] = (fanouts, held)
                try:
                    await run.children.start(step.workflow, child_input, child_id, state.instance_id, held, ours)
                finally:
                    del run.child_stores[bounded]
            if bounded.cancelled_caught:
                raise StorageUnavailableError(f"storing child {child_id} took over {STORE_CHILD_MOST:g} s")
            return
        except (UnknownWorkflowError, UnknownJobError, InstanceIdConflictError) as exc:  # the step fails
            lane.waiting = None
            raise StepFailure(step.name, exc, 1, child_input, uses_input) from exc
        except StorageUnavailableError as exc:
            # Tried again as a checkpoint is: a start whose answer was lost finds the child there.
            if deadline is None:
                deadline = trio.current_time() + run.storage_retry_for
            await back_off(exc, deadline, delay, f"storing child {child_id}", state.instance_id)
            delay = min(delay * 2, BACKOFF_MAX)
        except EngineClosedError:
            # The engine stopped while the child was stored: not this step's failure. The engine
            # cancels its runs right after it closes, and this one stops as stored; the next
            # engine's resume starts the same child id again, which it takes as the one there.
            await trio.lowlevel.checkpoint_if_cancelled()
            raise


async def _late_completion_hooks(run: Run, records: list[StepResult]) -> None:
    """``on_step_complete`` for child steps recorded completed as their parent went back (see
    :func:`cancel_children`), once stored, as their lanes would have run it: every completed
    execution has its hook, before ``on_compensate`` for it."""
    items = ItemIndex(run.state.records)
    for record in records:
        index, total = run.definition.place_of(record.step_name)
        ctx = run.context(record.lane, total, items.item(record))
        ctx.step_index = index
        previous = swap_lane(ctx)
        try:
            await run.step_completed_hook(record.step_name, record.output, ctx)
        finally:
            swap_lane(previous)


def waited_on(lanes: Iterable[Lane]) -> list[str]:
    """The children ``lanes`` wait on."""
    return [lane.waiting["child"] for lane in lanes if lane.waiting is not None and "child" in lane.waiting]


async def cancel_children(run: Run, child_ids: Sequence[str], *, completes_steps: bool = False) -> None:
    """Cancel the children ``child_ids`` and wait for their ends: those the lanes of a parent
    whose run ended badly (cancelled, timed out, failed) waited on, or fan-out siblings a
    fail-fast cancelled. The child step that started each is recorded cut short, and its end
    published (see ``trioflow.actors._lane._cut_short``). A child that completed all the same
    is compensated as a unit (the step that waited on it never completes, so nothing else
    would), or, ``completes_steps`` (a parent about to compensate), its step is recorded
    completed instead, to be staged and compensated with the others, on the result. Not when the
    engine is stopping: parents and children then resume with the next engine (a parent taken
    up while compensating cancels them then)."""
    children = run.children
    if children is None or children.closing or not child_ids:
        return
    # Not those whose step has ended already (cut short by a fail-fast nested inside, say, or
    # before a restart): a lane keeps naming the child it waited on.
    unended = set(unended_children(run.state))
    child_ids = [child_id for child_id in child_ids if child_id in unended]
    bound = run.definition.compensation_timeout
    completed: list[str] = []
    #: The child steps recorded completed all the same (``completes_steps``).
    late: list[StepResult] = []
    #: Storage down past storage_retry_for for a child: once the others are done, the parent
    #: stops as stored (see Children.cancel).
    stalled: list[StorageUnavailableError] = []

    async def cancel(child_id: str) -> None:
        try:
            ended = await children.cancel(child_id, bound, undo=False)
        except StorageUnavailableError as exc:
            stalled.append(exc)  # (its step stays unended: taken up again, the parent cancels it again)
            return
        state = run.state
        if ended is not None and completes_steps:
            record = child_completed_late(state, child_id, ended.output, run.clock())
            entry = run.definition.lookup.get(record.step_name)
            if entry is not None and isinstance(entry[0], ChildStep):  # (a release may have dropped it)
                record = run.stage(record)
                state.add(record)
                late.append(record)
                if run.bus.active and run.bus.wants("workflow.step.completed"):
                    run.emit_once_stored("workflow.step.completed", record.lane, step_name=record.step_name,
                                         execution_id=record.id,
                                         output=record.output)
                return
        if children.closing:
            return  # (stopped, not ended: the next engine takes it up)
        record = child_step_cut_short(state, child_id, run.clock())
        run.add_failure(record, for_good=False)
        publish_cut_short(run, record.lane, record.step_name, record.id)
        if ended is not None:
            completed.append(child_id)

    with trio.CancelScope(shield=True):  # the parent's own cancellation must not stop this
        # Each is waited on to its end: together, not one cancellation after another. Those
        # that completed all the same are compensated once all have ended, together: with few
        # ``max_running`` slots, an undo would otherwise run beside a child still stopping in one.
        async with trio.open_nursery() as nursery:
            for child_id in child_ids:
                nursery.start_soon(cancel, child_id)
        if completes_steps and not children.closing:
            # Their steps' ends stored (and published) before the compensation that follows: a
            # compensation of a step just recorded completed must not be told first. (A fan-out
            # stores them with its failure, in one write.)
            await run.persist()
            if late and run.has_hooks:
                await _late_completion_hooks(run, late)
        async with trio.open_nursery() as nursery:
            for child_id in completed:
                nursery.start_soon(_undo_cancelled, children, child_id, bound, stalled)
        if stalled:
            # (Only now: a child that completed as it was cancelled, its step recorded cut short
            # beside one that stalled, is undone first; stored by a sibling lane's checkpoint
            # meanwhile, it would otherwise be left undone.)
            raise stalled[0]


async def _undo_cancelled(
    children: Children, child_id: str, bound: float | None, stalled: list[StorageUnavailableError],
) -> None:
    """Compensate, as a unit, a child whose step was cancelled after it completed (storage down
    past storage_retry_for: noted in ``stalled``, for the parent to stop as stored)."""
    try:
        problem = await children.compensate(child_id, bound)
    except StorageUnavailableError as exc:
        stalled.append(exc)
        return
    except TrioflowError as exc:  # it cannot be read here (its jobs are missing)
        problem = describe_error(exc)
    if problem is not None:
        log.warning("child %s, whose step was cancelled, could not be compensated: %s", child_id, problem,
                    extra={"instance_id": child_id})
