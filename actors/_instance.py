"""The instance actor: runs one workflow instance to a terminal status.

One cancel scope wraps the forward run: it carries the workflow timeout as its deadline, and it
is what ``engine.cancel()`` cancels (``run.cancel_requested`` tells the two apart). A run that
nothing can cancel or time out (``execute_workflow`` without a timeout) opens no scope at all:
scopes cost more than the steps of a short saga. Compensation runs after the scope has exited,
so neither can interrupt it; an engine shutdown can (the instance stays resumable, its compensation position
recorded), while ``execute_workflow``, which has no resume, shields it completely.

A transactional workflow runs its forward part inside one ``driver.transaction()`` (see
:mod:`._transaction`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math

import trio

from trioflow._context import WorkflowContext
from trioflow._current import swap_lane
from trioflow._decide import (
    begin_compensation,
    fail_alone,
    finish,
    pending_compensations,
    record_compensated,
    steps_under_way,
    unended_children,
)
from trioflow._definition import ChildStep, TaskStep
from trioflow._escapes import failure_of, stops_the_process
from trioflow._errors import (
    ChildCompensationError,
    CompensationTimeoutError,
    SnapshotDecodeError,
    StorageUnavailableError,
    WorkflowCancelledError,
    WorkflowTimeoutError,
    describe_error,
)
from trioflow._lanes import MAIN, child_instance_id
from trioflow._map import ItemIndex
from trioflow._snapshot import Status, StepResult

from ._child import cancel_children
from ._lane import cut_short_resting, run_lane
from ._run import Parked, Run, StepFailure, StoreFailed, timeout_left
from ._task import compensate
from ._transaction import (
    Forward,
    committed_before_a_crash,
    committed_under_a_cancel,
    forward_in_transaction,
    may_have_committed,
)
from ._wait import wait_for_start


_UNBOUNDED = contextlib.nullcontext()
log = logging.getLogger("trioflow")
#: How the lifecycle log line says an instance ended badly.
_ENDED = {"failed": "failed", "cancelled": "was cancelled", "timed_out": "timed out"}


def _deadline(run: Run) -> float:
    """The trio-clock deadline of the workflow timeout, counting time spent before a resume."""
    timeout = run.definition.timeout
    if timeout is None:
        return math.inf
    if run.at_deadline:
        return trio.current_time()  # (launched from the queue as its deadline came)
    started = run.state.started_at
    spent = max(0.0, run.clock() - started) if (run.resumed and started is not None) else 0.0
    return trio.current_time() + timeout_left(timeout, spent)


async def run_instance(run: Run) -> None:
    """Drive ``run.state`` from wherever it stands to a terminal status."""
    state = run.state
    # The lanes below register their contexts for current_step(); what the calling task had
    # (an execute_workflow run inside a step) comes back when the run is over.
    previous = swap_lane(None)
    try:
        if state.phase == "compensating":
            # The engine that decided may have closed before it cancelled the children.
            if run.doomed is not None:
                await _fail_alone(run, run.doomed)
            else:
                try:
                    await committed_under_a_cancel(run)
                except SnapshotDecodeError:
                    raise  # its ledger record is unreadable: reported so, the instance left as stored
                except Exception as exc:  # the driver could not be asked (its database locked, ...)
                    # Whether it committed is not known: it stays as stored, for a later resume
                    # to ask again (compensated now, writes that did commit would be left).
                    raise StorageUnavailableError(
                        f"the driver could not tell whether its transaction committed before the engine"
                        f" stopped ({describe_error(exc)})") from exc
                await _cancel_children_and_compensate(run)
            return
        if run.doomed is not None:
            if run.cancel_requested:
                # Taken up by a cancel() that said yes: the caller asked for its end, which
                # compensates what the definition can as the mismatch's would; it ends so.
                log.warning("instance %s of workflow %r, cancelled, no longer fits its definition: %s",
                            state.instance_id, state.workflow_name, run.doomed,
                            extra={"instance_id": state.instance_id, "workflow_name": state.workflow_name})
                await _end_badly(run, "cancelled", _cancelled(run), None)
            else:
                await _end_badly(run, "failed", run.doomed, None)
            return
        try:
            outcome, error, failed_step = await _forward(run)
        except Parked:
            if not run.cancel_requested:
                return  # it waits, stored, without a task; the engine wakes it
            # Cancelled as its lanes unwound to leave memory: the cancel said yes, so it is
            # honoured here, from the state they left (as it stands in storage).
            run.parked = False
            outcome, error, failed_step = "cancelled", _cancelled(run), None
        except trio.Cancelled:
            await store_cancel(run)
            if not run.compensate_on_outer_cancel:
                raise  # engine shutdown: leave the instance as last persisted, for resume
            with trio.CancelScope(shield=True):
                await _end_badly(run, "cancelled", WorkflowCancelledError("the caller was cancelled"), None)
            raise
        except BaseException as exc:
            if stops_the_process(exc):
                # User code stopped the process (a branch's sys.exit()): a cancel() that said
                # yes in that instant is stored first, as the engine's close stores one, if
                # storage takes it (the stop goes on whatever it answers).
                try:
                    await store_cancel(run)
                except Exception as failure:
                    log.warning("instance %s: the cancel it was given as the process stopped could not be stored"
                                " (%s); the next engine goes on with it", run.state.instance_id, describe_error(failure),
                                extra={"instance_id": run.state.instance_id, "workflow_name": run.state.workflow_name})
            raise
        # The forward part's scope is over (a cancel now cancels nothing in it): not kept, and
        # walked by the cyclic collector, while the end is stored.
        run.cancel_scope = None
        if error is None:
            # Written out rather than split into a helper: every completing instance waits here
            # for its last checkpoint, and its coroutine frame is walked by the cyclic collector.
            finish(state, run.definition, "completed", run.clock())
            await run.persist()
            if run.bus.active:
                # The main line's last step reported progress 100 already.
                run.emit_end("workflow.completed", output=state.output)
            if run.has_hooks:
                await run.end_hook("on_complete")
        else:
            await _end_badly(run, outcome, error, failed_step)
    finally:
        swap_lane(previous)




async def _forward(run: Run) -> Forward:
    """Run the main lane under the run's cancel scope (if it needs one), a transactional
    workflow's inside one driver transaction (from its first step: a delayed start does not
    hold it while it waits); say how it ended."""
    definition = run.definition
    transactional = definition.transactional and run.driver is not None
    if transactional or may_have_committed(run):
        try:
            if await committed_before_a_crash(run):
                if run.cancel_requested:
                    # A cancel that said yes while the driver was asked is honoured after what
                    # committed, as one that says yes while a transaction commits is: its steps,
                    # its entity steps' among them, are compensated.
                    return "cancelled", _cancelled(run), None
                return _COMPLETED
        except SnapshotDecodeError:
            raise  # its ledger record is unreadable: reported so, the instance left as stored
        except Exception as exc:  # the driver could not be asked (its database locked, ...)
            if run.cancel_requested:
                # A cancel that said yes meanwhile is honoured, with what is stored: the steps
                # before the transaction are compensated.
                return "cancelled", _cancelled(run), None
            # Whether it committed is not known: it stays as stored, for a later resume to ask
            # again (failed now, writes that did commit would be left, undone by nothing).
            raise StorageUnavailableError(
                f"the driver could not tell whether its transaction committed before the engine stopped"
                f" ({describe_error(exc)})") from exc
    ctx = run.context(MAIN, len(definition.steps))
    swap_lane(ctx)
    main = run.state.lanes[MAIN]
    # A delayed instance's timeout counts from its start: set once the delay is over.
    delayed = main.waiting is not None and "start" in main.waiting
    scope = None
    if run.cancellable or definition.timeout is not None:
        scope = run.cancel_scope = trio.CancelScope(deadline=math.inf if delayed else _deadline(run))
        if run.cancel_requested or (definition.timeout is not None and scope.deadline <= trio.current_time()):
            # (Taken up at or past its deadline: trio would see it only at the next pass of its
            # scheduler, after the first step's job had begun. Most have no timeout: no call.)
            scope.cancel()
    # Written out rather than split into a helper: every coroutine frame stays alive as long as
    # the instance is parked in a step, and parked instances should be cheap.
    # Entered and left by hand, not in a ``with``: that keeps the scope's bound ``__exit__`` on
    # this frame's stack, one more object per instance in flight for the cyclic collector.
    if scope is not None:
        scope.__enter__()
    try:
        try:
            if (not run.resumed or run.unannounced) and not delayed and not run.cancel_requested:
                # (One cancelled before its first step, while it was queued for a slot, never
                # started: it ends without being announced, as a delayed one does.)
                await _announce_start(run, ctx)
            if delayed:
                await wait_for_start(run, main)
                # It starts on the release registered now (see Run.take_up_release).
                definition = run.definition
                transactional = definition.transactional and run.driver is not None
                ctx.total_steps = len(definition.steps)
                if scope is not None and definition.timeout is not None:
                    scope.deadline = trio.current_time() + definition.timeout
                # It starts now (taken up from storage, most likely): announced now, under its
                # timeout, and before the start is stored, so that a restart in between
                # announces it again rather than never. (One cancelled while it waited for its
                # start never started: it ends without being announced.)
                await _announce_start(run, ctx, start_stored_after=True)
                # Its start stored at once, before its first step: a restart during that step
                # does not announce it again, counts its timeout from here, and knows its
                # transaction may have begun (and committed). (A short delay waited in memory:
                # storage still says it waits for its start, with no wake time, until now.)
                await run.persist()
            if transactional:
                # Inside the scope: a cancel or the workflow timeout reaches a wait for the
                # driver's lock too. (A partial, not a lambda: a closure would make ``run``,
                # ``ctx`` and ``definition`` cells of this frame, three objects more for the
                # cyclic collector to walk in every instance in flight, transactional or not.)
                ended = await forward_in_transaction(run, functools.partial(run_lane, run, MAIN, definition.index, ctx))
            else:
                await run_lane(run, MAIN, definition.index, ctx)
                ended = _COMPLETED
        except StepFailure as failure:
            ended = "failed", failure.error, failure.step_name
    except BaseException as exc:
        if scope is None or not scope.__exit__(type(exc), exc, exc.__traceback__):
            raise
        # (Cut short by its scope: a cancel, or the workflow timeout.)
    else:
        if scope is not None:
            scope.__exit__(None, None, None)
        if run.cancel_requested and ended[0] == "failed" and ended[2] is not None:
            # A cancel() that said yes while a step's failure was being stored (or its
            # transaction rolled back) is honoured, as one that did while the last step's
            # completion was (below). Not when the transaction's commit or ledger failed (no
            # step named): what the driver said is the outcome to report.
            return "cancelled", _cancelled(run), None
        if ended[1] is not None or not run.cancel_requested:
            return ended
        # Cancelled in the pass its last step ended in, before anything awaited again (or while
        # its transaction committed): the cancel() said yes, so it is honoured (the completed
        # steps are compensated).
    if run.cancel_requested:
        return "cancelled", _cancelled(run), None
    definition = run.definition  # (a continue_as_new step's next run may have taken up another)
    assert definition.timeout is not None
    return "timed_out", WorkflowTimeoutError(definition.name, definition.timeout), None


async def _announce_start(run: Run, ctx: WorkflowContext, *, start_stored_after: bool = False) -> None:
    """The instance starts its first step: ``workflow.started`` and the ``on_start`` hook (a
    delayed start's once its delay is over: ``start_stored_after``, its stored row says whether
    its start was stored, as a pending one's status does). Inside the run's scope: a cancel or
    the workflow timeout reaches a slow hook too."""
    run.announced = True
    if run.bus.wants("workflow.started"):
        run.emit("workflow.started", input=run.state.input)
    if run.has_hooks:
        await run.hook("on_start", ctx)
        if run.adapter is not None and run.definition.hooks.on_start is not None \
                and (run.state.data or run.stored_status == "pending"):
            # What it may have set in the shared data is stored before the first step: a restart
            # during that step does not run the hook again, and would start it without that data.
            # (Whatever it set: the check after a hook drops what cannot be stored, and keeps
            # the rest without noting it as checked.) Until then it is stored pending (see
            # ``pending_until_announced``): a restart before this store announces it again.
            # So does a retried ``start()`` of a lost try's row stored running already (its
            # hook registered since: see ``Engine._unanswered``): announced, for it, once this
            # store is made. (A pending row's status says whether it was.)
            stored_running = run.stored_status != "pending" and not start_stored_after
            if stored_running:
                run.announced = False
            await run.persist()
            run.announced = True


_COMPLETED: Forward = ("completed", None, None)


def _cancelled(run: Run) -> WorkflowCancelledError:
    return WorkflowCancelledError.of(run.state.instance_id)


#: Longest an engine that closes waits for an instance to store how it ends badly (seconds).
DECISION_TIMEOUT = 10.0


async def store_cancel(run: Run) -> None:
    """If a cancel() said yes to ``run`` and it still goes forward, store the decision to
    compensate it, shielded for a bounded time: called as the engine shuts down (from an
    ``except trio.Cancelled``), so that the next engine compensates rather than goes on."""
    if run.cancel_requested and run.state.phase == "forward" and not run.compensate_on_outer_cancel:
        with _storing_decision():
            begin_compensation(run.state, "cancelled", _cancelled(run), None)
            await run.persist()
        run.note_decided()


async def store_queued_cancel(run: Run) -> None:
    """Store the decision to compensate ``run``, cancelled while it waits in the queue for a
    slot with steps to compensate: in a task of the engine's, not the caller's (a caller that
    gives up must not leave a decision a repeated ``cancel()`` says yes to, unstored), tried
    again while storage is unavailable, and as :func:`store_cancel` does if the engine closes
    meanwhile (or the next engine goes forward). A failure leaves it to the run's next
    checkpoint."""
    under_way = steps_under_way(run.state)  # (before the decision, which ends their waits)
    # Its end, when it comes, carries this error itself, as an instance cancelled in memory's
    # does (not the stand-in a resumed instance's end gets).
    run.error = _cancelled(run)
    begin_compensation(run.state, "cancelled", run.error, None)
    # Taken up with steps under way (woken, or resumed), it runs none of them again: they end
    # here, as they would in its lanes (it goes back once it has a slot, no lane running).
    cut_short_resting(run, under_way)
    try:
        await run.persist()
    except trio.Cancelled:
        with _storing_decision():
            await run.persist()
            run.note_decided()
        raise
    run.note_decided()


def _storing_decision() -> trio.CancelScope:
    """Around storing the decision that an instance ends badly: shielded from the engine's
    closing (the next engine must compensate, not go forward), for at most
    :data:`DECISION_TIMEOUT` (storage that does not answer must not hold a shutdown for ever;
    the instance then resumes as it was last stored)."""
    return trio.CancelScope(shield=True, deadline=trio.current_time() + DECISION_TIMEOUT)


async def _end_badly(run: Run, outcome: Status, error: BaseException, failed_step: str | None) -> None:
    run.error = error
    # Stored first: a cancel() that said yes whatever comes (an engine closing now must not
    # leave the instance to go forward again with the next one: nothing else remembers the
    # cancel; a failure or a timeout the next engine meets again), and an instance woken from
    # storage (its workflow timeout) must not stay due there while its children are cancelled
    # (the waker counts it as on its way until its first checkpoint).
    with _storing_decision() if run.cancel_requested else _UNBOUNDED:
        begin_compensation(run.state, outcome, error, failed_step)
        await run.persist()
    run.note_decided()
    if run.compensate_on_outer_cancel:
        with trio.CancelScope(shield=True):
            await _compensate_and_finish(run)  # (no engine, no children)
    else:
        # An engine closing meanwhile stops it here, stored compensating: the next engine
        # cancels the children it waited on, then compensates (ended now, it would not).
        await trio.lowlevel.checkpoint_if_cancelled()
        await _cancel_children_and_compensate(run)


async def _cancel_children_and_compensate(run: Run) -> None:
    """After the decision to go back is stored: cancel the children the instance waited on
    (found from its records: child steps that started and never ended), then compensate. An
    engine closing meanwhile, having cancelled not all of them, stops it as stored, so that
    the next one cancels them still (ended, the instance would be taken up no more). A child
    that completed all the same has its step completed, to be compensated in the plan, unless
    compensation has begun (a restart: a step completed now would fall past its cursor)."""
    await cancel_children(run, unended_children(run.state), completes_steps=run.state.compensated_from is None)
    await trio.lowlevel.checkpoint_if_cancelled()
    await _compensate_and_finish(run)


async def _fail_alone(run: Run, error: BaseException) -> None:
    """A compensating instance that no longer fits its definition (its compensations may be
    gone) fails alone, compensating nothing more: once the children it waited on are
    cancelled. Stored failed before, it would never be taken up again to cancel them; an engine
    closing meanwhile leaves it compensating, and the next one does this again."""
    run.error = error  # (not a cancel's, stored as it queued: the end is this error's)
    await cancel_children(run, unended_children(run.state))
    await trio.lowlevel.checkpoint_if_cancelled()
    fail_alone(run.state, describe_error(error), run.clock())
    # Stored as a run stores its end: a child's end notice to its parent goes with it.
    await run.persist()
    await _publish_bad_end(run, "failed")


async def undo(run: Run, bound: float | None) -> None:
    """Compensate a completed instance as a unit (a child whose parent compensates): its
    completed steps newest first, each bounded by ``bound`` seconds too (its parent's
    compensation timeout), then its status becomes ``compensated``. Taken up where it stood if
    an earlier undo was interrupted."""
    state = run.state
    if state.phase == "done":
        # Stored status stays "completed" until the end: a crash in between leaves the undo
        # to the parent's compensation, which asks for it again.
        state.phase = "compensating"
        state.outcome = "compensated"
    # Its compensations set the lane they run in: given back as it was when they end (the
    # task may be the parent's run, or one of its own that would leave its entry behind).
    previous = swap_lane(None)
    try:
        await _compensate_and_finish(run, bound)
    finally:
        swap_lane(previous)


async def _compensate_and_finish(run: Run, bound: float | None = None) -> None:
    """Compensate every completed step that has a compensation (and every completed child),
    newest first, exactly once; each is bounded by the definition's compensation timeout, and by
    ``bound`` (a parent's, for a child compensated as a unit) if that is shorter."""
    state = run.state
    lookup = run.definition.lookup
    own = run.definition.compensation_timeout
    bounded = own if bound is None or (own is not None and own < bound) else bound
    items = ItemIndex(state.records)
    for record in pending_compensations(state, run.definition):
        name = record.step_name
        step = lookup[name][0]
        index, total = run.definition.place_of(name)
        ctx = run.context(record.lane, total, items.item(record), record.seq + 1)
        ctx.step_index = index
        swap_lane(ctx)
        if run.has_hooks:
            await run.hook("on_compensate", name, ctx)
        try:
            if isinstance(step, ChildStep):
                # Each of the child's compensations is bounded, not its undo as a whole: cut
                # short, a child would be left completed with half its steps undone.
                await _undo_child(run, record, bounded)
            else:
                assert isinstance(step, TaskStep)
                with trio.fail_after(bounded) if bounded is not None else _UNBOUNDED:
                    await compensate(run, step, record, ctx)
        except trio.TooSlowError:
            assert bounded is not None
            run.add_compensation_failure(record, CompensationTimeoutError(name, bounded))
        except StepFailure as failure:
            run.add_compensation_failure(record, failure.error, failure.attempts)
        except StoreFailed as failed:
            raise failed.error from None  # the run's, not the compensation's: it stops as last stored
        except StorageUnavailableError:
            # Storage unusable while a child compensated as a unit was read or stored (what
            # the compensation callables raise comes wrapped): the run's too.
            raise
        except BaseException as exc:
            # Whatever went wrong around the compensation (a ``retry_on`` predicate that raised,
            # a broken callable, a BaseException of its own) is that compensation's failure:
            # the others still run.
            run.add_compensation_failure(record, failure_of(exc))
        else:
            run.stage(record_compensated(state, record, run.clock()))
            if run.bus.active:
                run.emit("workflow.step.compensated", record.lane, step_name=name, execution_id=record.id)
        await run.persist()
    outcome = state.outcome or "failed"
    finish(state, run.definition, outcome, run.clock())
    await run.persist()
    if outcome == "compensated":
        log.info("instance %s of workflow %r was compensated by its parent %s", state.instance_id,
                 state.workflow_name, state.parent_id,
                 extra={"instance_id": state.instance_id, "workflow_name": state.workflow_name, "status": outcome})
        if run.bus.active:
            run.emit_end("workflow.compensated")
        return
    await _publish_bad_end(run, outcome)


async def _publish_bad_end(run: Run, outcome: Status) -> None:
    """Log, publish and hook the end of a run that did not complete, once it is stored."""
    state = run.state
    at = f" at step {state.failed_step!r}" if state.failed_step is not None else ""
    log.warning(
        "instance %s of workflow %r %s%s: %s", state.instance_id, state.workflow_name,
        _ENDED[outcome], at, state.error,
        extra={"instance_id": state.instance_id, "workflow_name": state.workflow_name, "status": outcome,
               "failed_step": state.failed_step, "error_name": state.error_name, "cause": state.cause},
    )
    if run.bus.active:
        if outcome == "cancelled":
            run.emit_end("workflow.cancelled")
        elif outcome == "timed_out":
            run.emit_end("workflow.timed_out", error=state.error, error_name=state.error_name, cause=state.cause)
        else:
            run.emit_end("workflow.failed", error=state.error, error_name=state.error_name, cause=state.cause,
                     failed_step=state.failed_step)
    if run.has_hooks:
        await run.end_hook("on_failed")


async def _undo_child(run: Run, record: StepResult, bound: float | None) -> None:
    """Compensate the child that a child step's execution started, as a unit (each of its
    compensations bounded by ``bound`` seconds too)."""
    assert run.children is not None  # a child step completed: an engine ran it
    child_id = child_instance_id(run.state.instance_id, record.id, run.state.runs)
    problem = await run.children.compensate(child_id, bound)
    if problem is not None:
        raise ChildCompensationError(child_id, problem)
