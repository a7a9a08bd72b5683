"""Running a lane of steps; parallel steps run each branch as an actor in their own nursery."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import trio

from trioflow._context import ItemPlace, WorkflowContext
from trioflow._current import swap_lane
from trioflow._decide import (
    branch_keys,
    cut_short_record,
    complete_step,
    decide_flow_step,
    inner_lanes,
    new_execution,
    next_execution_id,
    next_of,
    open_branches,
    open_wide,
    parallel_start,
    parallel_output,
    passed_on,
    progress,
    recorded_failure,
    running_execution_id,
    steps_under_way,
)
from trioflow._definition import (
    Branch,
    ChildStep,
    ContinueAsNewStep,
    MapStep,
    ParallelStep,
    ReceiveStep,
    Step,
    TaskStep,
    WaitStep,
)
from trioflow._escapes import failure_of, raise_keeping_context
from trioflow._errors import (
    BranchError,
    ParallelError,
    UnencodableValueError,
)
from trioflow._fanout_failures import failed_step_of
from trioflow._lanes import MAIN, branch_lane, fanout_key, item_scope
from trioflow._snapshot import Lane

from ._run import Run, StepFailure, unwrapped
from ._child import bound_child_stores, cancel_children, run_child, waited_on
from ._continue import run_continue
from ._task import publish_cut_short, run_task, step_failed
from ._wait import run_receive, run_wait, settle

# A module, not its function: the map actor runs its items' lanes through run_lane, here.
from . import _map


#: A lane gives the scheduler a turn after this many steps, whatever they awaited.
YIELD_EVERY = 32


async def run_lane(run: Run, lane_key: str, index: Mapping[str, int], ctx: WorkflowContext) -> Any:
    """Run a lane from its current step to its end; returns the output of its last step.

    After each step the state is persisted before the next step starts, so a crash never loses
    a completed step and a resume continues from the lane's recorded position. A step that fails
    for good raises :class:`StepFailure`, unless one of its catchers routes the lane on.
    """
    state = run.state
    lane = state.lanes[lane_key]
    lookup = run.definition.lookup
    bus = run.bus
    steps = 0
    while (name := lane.step) is not None:
        ctx.copies = None  # (what the step before was handed: a new step execution gets its own)
        waiting = lane.waiting
        if waiting is None or "attempt" not in waiting:
            # Steps that never reach a checkpoint would otherwise keep a cancelled lane (a
            # fail-fast sibling, a cancelled instance) starting new steps; this costs nothing
            # when not cancelled. (A retried step taken up checks in ``attempt``: a cancel then
            # records the execution its attempts made, as it does in memory.)
            try:
                await trio.lowlevel.checkpoint_if_cancelled()
            except trio.Cancelled:
                if (waiting is not None or lane.begun is not None) and not run.stopped_alone(ctx._fanouts):
                    # Taken up in a step begun before: the steps inside first, as the branches'
                    # and items' actors end in memory before their fan-out step does.
                    _cut_short_inside(run, lookup[name][0], item_scope(lane_key))
                    _cut_short(run, lane_key, lane, lookup[name][0])
                raise
        steps += 1
        if steps % YIELD_EVERY == 0:
            # Nor might they ever yield (no-op jobs, a pass/choice loop, a MemoryAdapter's
            # checkpoints do not): every so many steps the lane lets the others run, and trio
            # fire the deadlines due (a workflow timeout), rather than hold the whole engine.
            await trio.lowlevel.checkpoint()
        if lane.failed is not None:
            # Resumed after this step failed for good: that decision stands.
            failed = state.records[lane.failed]
            first, inner = failed_step_of(state, lookup, lookup[name][0], lane_key, lane)
            raise StepFailure(first, recorded_failure(failed, lookup[first][0], state, raised_by=inner),
                              failed.attempts)
        step = lookup[name][0]
        ctx.step_index = index[name]
        # Taken up after it left memory mid-step (a timer, a signal, a retry's delay), the step's
        # execution started with the run before.
        started_at = run.clock() if waiting is None or "since" not in waiting else waiting["since"]
        # (Not for a step taken up again: it started before.)
        if bus.active and lane.waiting is None and lane.begun is None and bus.wants("workflow.step.started"):
            run.emit("workflow.step.started", lane_key, step_name=name, step_type=step.kind,
                     execution_id=next_execution_id(state, lane_key, name))
        data = None
        uses_input = False
        as_stored = False  # (an output read from storage: a signal's payload)
        attempts = 1
        passes = None
        try:
            if isinstance(step, TaskStep):
                output, data, uses_input, attempts = await run_task(run, step, ctx, started_at, waiting is not None)
                target = None if step.end else step.next  # (_decide.next_of, inline: every task step asks)
            elif isinstance(step, ParallelStep):
                if waiting is None:
                    # Stored with its branches: taken up again (woken for one of them, or
                    # resumed), its execution began now, and has said so, once.
                    lane.waiting = {"since": started_at}
                with run.fanned_out():
                    output = await run_parallel(run, step, ctx)
                target = next_of(step)
            elif isinstance(step, MapStep):
                with run.fanned_out():
                    output = await _map.run_map(run, step, lane_key, ctx)
                target = next_of(step)
            elif isinstance(step, WaitStep):
                await run_wait(run, step, lane, ctx, started_at)
                # (First in its lane, the lane's input, as a pass step's: ASL's Wait passes its input on.)
                (output, passes), target = passed_on(state, lane, lane_key, ctx.item), next_of(step)
            elif isinstance(step, ReceiveStep):
                output, target = await run_receive(run, step, lane_key, lane, started_at), next_of(step)
                # Its output, a payload just read from storage, reads back as it is: the record
                # keeps it, not a copy. Unless a hook is handed it too: the hook's edits must
                # not reach the record, as for any step.
                as_stored = not run.has_hooks
            elif isinstance(step, ChildStep):
                output, target = await run_child(run, step, lane_key, lane, ctx), next_of(step)
            elif isinstance(step, ContinueAsNewStep):
                await run_continue(run, step, lane, ctx)
                lane = state.lanes[lane_key]  # the next run's main line, at its first step
                # (On the definition registered now, if another replaced the run's.)
                lookup, index = run.definition.lookup, run.definition.index
                ctx.total_steps = len(run.definition.steps)
                continue
            else:
                try:
                    output, passes, target = decide_flow_step(step, state, lane, ctx)
                except BaseException as exc:  # (a fail step's own, or what its callables raised)
                    raise StepFailure(name, failure_of(exc), 1) from exc
            record = new_execution(
                state, lane_key, name, "completed", output=output, input=data, input_is_workflow_input=uses_input,
                passes=passes, attempts=attempts, started_at=started_at, now=run.clock(),
            )
            try:
                # A value this step left that cannot be stored (in the shared data, its output,
                # its input) fails it: not retried, catchable, compensated like any failure.
                if state.data:  # most runs share nothing: skip the call
                    run.check_data(lane_key)
                record = run.stage(record, as_stored)
            except UnencodableValueError as exc:
                raise StepFailure(name, exc, attempts, data, uses_input) from exc
        except StepFailure as failure:
            await step_failed(run, step, failure, started_at, ctx)  # raises unless caught
            continue
        except trio.Cancelled:
            # (A task step's records its cut-short execution; a step the engine's stop alone cut
            # goes on with the next engine: see Run.stopped_alone.)
            if not isinstance(step, TaskStep) and not run.stopped_alone(ctx._fanouts):
                _cut_short(run, lane_key, lane, step)
            raise
        complete_step(state, step, record, target)
        writes = run.adapter is not None and (target is not None or lane_key != MAIN or run.has_hooks)
        fired_unstored = writes and run.woken and _fired_unstored(run, step, lane_key, target)
        if bus.active:
            # Its events go out once the checkpoint that stores it has (the one below, or,
            # should a cancel interrupt it, the one that stores the cancel with it); a timer
            # left for the next step's checkpoint publishes at once, before that step's own.
            emit = run.emit if run.adapter is None or fired_unstored else run.emit_once_stored
            if bus.wants("workflow.step.completed"):
                emit("workflow.step.completed", lane_key, step_name=name, execution_id=record.id, output=record.output)
            if lane_key == MAIN and bus.wants("workflow.progress"):
                percent, done = progress(state, run.definition)
                emit(
                    "workflow.progress", progress=percent, current_step=lane.step,
                    completed_steps=done, total_steps=len(run.definition.steps),
                )
        if writes:
            # (Nothing to write without storage: execute_workflow.)
            # The main line's last step needs no write of its own: the instance's terminal
            # snapshot, written next with nothing in between that awaits, records it (and its
            # events go out once it has). (An ``on_step_complete`` hook awaits: a restart during
            # it must find the step stored.)
            if fired_unstored:
                run.fired_at = trio.current_time()
                run.fired_data = state.good_data if state.data else None  # (checked as the timer ended)
            else:
                await run.persist()
        if run.has_hooks:
            await run.step_completed_hook(name, output, ctx)
    return state.output_of(lane.last)


def _cut_short(run: Run, lane_key: str, lane: Lane, step: Step) -> None:
    """A step other than a task step cut short in its lane: its end published (see
    :func:`~trioflow.actors._task.publish_cut_short`), and recorded for a map or a wide parallel
    step, whose start record it ends (see :func:`~trioflow._decide.cut_short_record`). Not a
    child step's once its child has started: the cancel of that child records and publishes its
    end, which knows whether the child completed all the same (see
    :func:`~trioflow.actors._child.cancel_children`)."""
    if isinstance(step, ChildStep) and lane.begun is not None:
        return
    execution = running_execution_id(run.state, lane_key, step.name)  # (before its record counts it)
    if (record := cut_short_record(run.state, lane_key, step.name, None, None, run.clock())) is not None:
        run.add_failure(record, for_good=False)
    publish_cut_short(run, lane_key, step.name, execution)


def _cut_short_inside(run: Run, step: Step, scope: str) -> None:
    """A parallel or map step taken up only to be cut short: the steps under way in its
    branches or items, resting out of memory with it, are cut short too."""
    if not isinstance(step, (ParallelStep, MapStep)):
        return
    inside = set(inner_lanes(run.state, step, scope))
    cut_short_resting(run, [under_way for under_way in steps_under_way(run.state) if under_way[0] in inside])


def cut_short_resting(run: Run, under_way: Iterable[tuple[str, str, int | None, float | None]]) -> None:
    """Steps under way (as :func:`~trioflow._decide.steps_under_way` gives them) that rested
    out of memory with the run, cut short now, no actor of theirs running: recorded so, as in
    memory, where a record ends them (see :func:`~trioflow._decide.cut_short_record`), and each
    one's end published once it is stored; innermost first (a fan-out step's branches and items
    before it, as they end in memory)."""
    for key, step_name, attempts, since in reversed(list(under_way)):  # (lanes are kept outer first)
        execution = running_execution_id(run.state, key, step_name)  # (before its record counts it)
        if (record := cut_short_record(run.state, key, step_name, attempts, since, run.clock())) is not None:
            run.add_failure(record, for_good=False)
        publish_cut_short(run, key, step_name, execution, attempts or 1)


def _fired_unstored(run: Run, step: Step, lane_key: str, target: str | None) -> bool:
    """Whether the timer step that fired in a woken run is left for the next checkpoint to
    store: one write fewer for each of thousands of timers due together. Storage still holding
    the wait is safe: taken up again after a crash, the timer, due, fires at once. Only on the
    main line, and before a step that runs on it (not branches, nor map items): while the step
    after it runs, the engine's waker may have it stored (:meth:`Run.store_fired`)."""
    return (isinstance(step, WaitStep) and lane_key == MAIN and run.stored_wake_at is not None
            and not run.has_hooks and target is not None
            and not isinstance(run.definition.lookup[target][0], (ParallelStep, MapStep)))


async def run_parallel(run: Run, step: ParallelStep, ctx: WorkflowContext) -> dict[str, Any]:
    """Run the branches as actors in one nursery (fail-fast cancels it at the first failure).

    A resumed parallel step restarts only the branches that had not finished.
    """
    state = run.state
    scope = item_scope(ctx.lane)  # (the branches of a parallel step in a map item are that item's)
    place = fanout_key(step.name, scope)  # (this execution's, among those of other items: see Run.failed_in)
    own = state.lanes[ctx.lane]
    if open_branches(state, step, scope) and (start := parallel_start(state, step, own, ctx.lane, run.clock())):
        open_wide(state, own, run.stage(start))  # (its branches may now be left out of the header)
    failures: list[BranchError] = []
    fail_fast = step.on_error == "fail-fast"
    # Resumed after a branch failed for good, a fail-fast step's outcome is decided: only the
    # failed branches are taken up (each fails again at once). Another one could otherwise end
    # first from what storage holds (a child's end notice), as it never did before the restart.
    left = [0]  # (branches running: the last one to end goes on at once, see _branch_actor)
    failed = any(state.lanes[key].failed is not None for key in branch_keys(step, scope))
    decided = fail_fast and failed
    if failed:
        run.note_failed_branch(place, waits_for_all=not fail_fast)  # (taken up after it failed: see Run.failed_in)
    escaped: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            for branch in step.branches:
                key = branch_lane(step.name, branch.name, scope)
                lane = state.lanes[key]
                if lane.step is not None and (not decided or lane.failed is not None):
                    run.lane_runs()  # (counted now, not as it starts: see trioflow.actors._wait.settle)
                    left[0] += 1
                    nursery.start_soon(_branch_actor, run, branch, key, failures,
                                       nursery.cancel_scope if fail_fast else None, left, ctx._item, ctx._fanouts)
    except BaseExceptionGroup as group:
        # Branch failures are values (``failures``); what escapes (KeyboardInterrupt,
        # SystemExit, cancellation, storage gone) callers expect as itself, not wrapped.
        escaped = unwrapped(group)
    finally:
        run.parallel_ended(place)
    if escaped is not None:
        raise_keeping_context(escaped)  # (out here, not in the handler, and as it was raised)
    if decided:
        # The branches not taken up may rest with steps under way (a wait, a task step whose
        # start a checkpoint stored as its engine stopped): the fail-fast cut them short.
        inside = set(inner_lanes(state, step, scope))
        cut_short_resting(run, [under_way for under_way in steps_under_way(state) if under_way[0] in inside])
    if not failures:
        return parallel_output(state, step, scope)
    # Branches a fail-fast cancelled may wait on children, or hold lanes that do (the items of
    # a map in a branch): those children go too.
    await cancel_children(run, waited_on(state.lanes[key] for key in inner_lanes(state, step, scope)))
    if fail_fast:
        # ``failed_step`` names the branch step that failed first; the record is the parallel's.
        raise StepFailure(failures[0].step_name, failures[0], 1)
    order = {b.name: i for i, b in enumerate(step.branches)}
    raise StepFailure(step.name, ParallelError(step.name, sorted(failures, key=lambda e: order[e.branch_name])), 1)


async def _branch_actor(
    run: Run, branch: Branch, key: str, failures: list[BranchError], cancel_siblings: trio.CancelScope | None,
    left: list[int], item: ItemPlace | None, fanouts: tuple[object, ...],
) -> None:
    ctx = run.context(key, len(branch.steps), item)  # (in a map item, the branch's steps are the item's)
    ctx._fanouts = fanouts if cancel_siblings is None else (*fanouts, cancel_siblings)
    swap_lane(ctx)  # the branch's steps report this lane
    try:
        await run_lane(run, key, branch.index, ctx)
    except StepFailure as failure:
        failures.append(BranchError(branch.name, failure.step_name, failure.error))
        if cancel_siblings is not None:
            run.fail_fast(cancel_siblings)
            bound_child_stores(run, cancel_siblings)  # (a sibling storing a child: see trioflow.actors._child)
        return
    except BaseException as exc:
        run.note_escaping(exc)
        raise
    finally:
        swap_lane(None)  # the task ends: leave no entry behind
        run.active -= 1
        left[0] -= 1
    if left[0]:
        await settle(run, None)  # the other branches may all rest
