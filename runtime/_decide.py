"""The engine's decisions, as plain synchronous functions over an :class:`InstanceState`.

No trio, no I/O: which step runs next, what a result does to the state, what to compensate and
in which order. The actors call these and then persist; tests and hypothesis call them directly.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from ._callables import plain_result
from ._definition import (
    CATCHING, Catch, ChildStep, ChoiceStep, FailStep, MapStep, ParallelStep, PassStep, ReceiveStep, Step, SucceedStep,
    TaskStep, WaitStep, WorkflowDefinition,
)
from ._errors import (
    ChildWorkflowError, FailStepError, NoChoiceMatchedError, RecordedError, describe_error, error_cause, error_name,
    split_description,
)
from ._lanes import (
    MAIN,
    branch_lane,
    child_instance_id,
    execution_id,
    item_lanes,
    item_of,
    item_scope,
    lane_in_definition,
    parallel_of,
    step_key,
)
from ._matching import matches
from ._parallel import layout, start_input
from ._shared_data import SharedData
from ._snapshot import (
    PASSES_WORKFLOW_INPUT, InstanceState, Lane, Status, StepResult, StepStatus, completed_compensation, drop_lane,
    new_instance_state, new_lane, new_record, note_compensation, outer_lane,
)


def new_state(
    definition: WorkflowDefinition, instance_id: str, input: Any, now: float, *, status: Status = "running"
) -> InstanceState:
    """A fresh instance positioned at its first step."""
    state = new_instance_state(
        instance_id, definition.name, definition.fingerprint, status, input,
        # Each instance its own: nested values of the definition's data are copied too.
        SharedData(fresh_copy(dict(definition.data)) if definition.data else ()),
        {MAIN: Lane(step=definition.steps[0].name)}, now, now if status == "running" else None,
    )
    if definition.item_next:
        state.item_next = definition.item_next
    return state


def next_run(state: InstanceState, definition: WorkflowDefinition, input: Any) -> InstanceState:
    """The state an instance's next run starts from, as a ``continue_as_new`` step ends its
    run: at its first step with ``input``, the definition's shared data, no history; what the
    instance keeps across its runs is its id, its parent, its creation and start times (its
    workflow timeout counts from the first run's start) and its pending signals."""
    following = new_state(definition, state.instance_id, input, state.created_at)
    following.started_at = state.started_at
    following.parent_id = state.parent_id
    following.runs = state.runs + 1
    following.signals = state.signals
    return following


def fresh_copy(value: Any) -> Any:
    """A value given with a definition (initial shared data, a pass step's result), copied for
    one run: deeply, so that a run changing it in place changes no other run's. One that
    cannot be copied (a connection handed to ``execute_workflow``) is shared, as given."""
    try:
        return copy.deepcopy(value)
    except Exception:
        return value


def passed_on(state: InstanceState, lane: Lane, key: str, item: Any) -> tuple[Any, int | None]:
    """What a step that passes its input on (a choice, a pass or succeed step without their
    own) passes on: ``(output, seq of the record holding it)``. Its lane's last output; first
    in its lane, the lane's input, as Amazon States Language has it: the workflow input on the
    main line (:data:`PASSES_WORKFLOW_INPUT`), the item in a map item, and in a parallel step's
    branch what the lane running the parallel step had: the seq of its record, or ``None``
    where the value has no record to refer to (a map item's item: stored again with the
    record)."""
    if lane.last is not None:
        return state.records[lane.last].output, lane.last
    if key == MAIN:
        return state.input, PASSES_WORKFLOW_INPUT
    if item_of(key) is not None:
        return item, None
    outer = outer_lane(state, key)
    if outer is None:
        return None, None
    return passed_on(state, outer[1], outer[0], item)


def recorded_failure(record: StepResult, step: Step, state: InstanceState, *,
                     raised_by: StepResult | None = None) -> RecordedError:
    """The failure of ``step``'s execution (of the instance ``state`` is) as its record tells it
    (the exception itself went with a restart), raised as what the step's kind raises: a catch
    for ``FailStepError`` or ``ChildWorkflowError`` then matches it as before the restart, and
    ``ALL`` judges its name as it did (a fail step's name is the workflow's own text).
    ``raised_by``: ``step``'s own failed record, where ``record`` is a fan-out's that failed as
    ``step`` did (see ``failed_step_of``): a child's failure is read back from it."""
    raised_as: type[BaseException] | None = None
    named = False
    own = raised_by or record
    if isinstance(step, FailStep) and record.error_name == step.error:
        raised_as, named = FailStepError, True  # (not when working out its cause raised)
    elif isinstance(step, ChildStep):
        child_ended, named = ChildWorkflowError.read_back(own.error or "",
                                                          child_instance_id(state.instance_id, own.id, state.runs),
                                                          step.workflow)
        if child_ended:
            raised_as = ChildWorkflowError
    return RecordedError(record.error or "failed", record.error_name, record.cause, raised_as=raised_as,
                         named_by_workflow=named)


def failure_named_by_workflow(state: InstanceState, definition: WorkflowDefinition) -> bool:
    """Whether the error an instance failed with is named by a ``fail`` step (its own, or one of
    a child's it failed with): what its end notice tells its parent."""
    found = None if state.failed_step is None else definition.lookup.get(state.failed_step)
    if found is None:
        return False
    failed = next((r for r in reversed(state.records) if r.step_name == state.failed_step and r.status == "failed"), None)
    return failed is not None and recorded_failure(failed, found[0], state).named_by_workflow


def pending_until_announced(definition: WorkflowDefinition, state: InstanceState) -> bool:
    """Whether an instance that is not started yet stays stored ``pending`` until its start is
    announced: one whose ``on_start`` hook may set shared data, its start not delayed (a
    delayed start stores its start once it has announced it already). The checkpoint right
    after the hook stores it running, with what the hook set; a crash before then leaves it
    pending, and its next run announces it (and runs the hook) again, rather than go on
    without what the hook would have set."""
    return definition.hooks.on_start is not None and state.lanes[MAIN].waiting is None


def admit(state: InstanceState, now: float | None) -> None:
    """A pending instance got a running slot (``now=None``: to end at once, cancelled while it
    was queued: it never starts, as a delayed start cancelled before its time does not)."""
    state.status = "running"
    if now is not None and state.started_at is None and "start" not in (state.lanes[MAIN].waiting or ()):
        state.started_at = not_before_creation(state, now)  # (a delayed start's is set when its delay is over)


def not_before_creation(state: InstanceState, now: float) -> float:
    """``now`` as the time an instance starts or ends: never before its creation time, which
    may be later than the clock by a few of the least steps a float can make (see
    :func:`trioflow._ids.creation_time`)."""
    return now if now >= state.created_at else state.created_at


def choose(step: ChoiceStep, ctx: Any) -> str:
    """The target of a choice: first matching condition, else default, else an error."""
    for choice in step.choices:
        if plain_result(choice.condition, ctx):
            return choice.next
    if step.default is None:
        raise NoChoiceMatchedError(step.name)
    return step.default


def decide_flow_step(
    step: ChoiceStep | PassStep | SucceedStep | FailStep, state: InstanceState, lane: Lane, ctx: Any,
) -> tuple[Any, int | None, str | None]:
    """A step that runs no job, decided in one go from what the run holds: ``(output, seq of the
    record whose output it passes on, next step)``. Raises what fails it: a fail step's
    :class:`FailStepError`, or what one of its callables raised (the run records it as the
    step's failure)."""
    if isinstance(step, FailStep):
        cause = plain_result(step.cause, ctx) if callable(step.cause) else step.cause
        raise FailStepError(step.error, str(cause))
    if isinstance(step, ChoiceStep):
        # Passes the lane's last output on: stored as a reference to the record that holds it.
        return (*passed_on(state, lane, ctx.lane, ctx.item), choose(step, ctx))
    if isinstance(step, SucceedStep):
        if not step.has_output:
            return (*passed_on(state, lane, ctx.lane, ctx.item), None)
        # A value given with the definition is copied: every run gets its own.
        return (plain_result(step.output, ctx) if callable(step.output) else fresh_copy(step.output)), None, None
    if step.transform is None and not step.has_result:
        return (*passed_on(state, lane, ctx.lane, ctx.item), next_of(step))
    output = plain_result(step.transform, ctx) if step.transform is not None else fresh_copy(step.result)
    return output, None, next_of(step)


def next_execution_id(state: InstanceState, lane_key: str, step_name: str) -> str:
    """The id the next execution of ``step_name`` in ``lane_key`` will have."""
    return execution_id(lane_key, step_name, state.executions.get(step_key(lane_key, step_name), 0) + 1)


def running_execution_id(state: InstanceState, lane_key: str, step_name: str) -> str:
    """The id of the execution of ``step_name`` under way in ``lane_key``, not recorded yet (the
    one its end will be recorded under, as :func:`new_execution` numbers it): its start
    record's, for a step that has one (a map, a child step), else the next."""
    lane = state.lanes.get(lane_key)
    if lane is not None and lane.begun is not None and lane.step == step_name:
        return state.records[lane.begun].id
    return next_execution_id(state, lane_key, step_name)


def new_execution(
    state: InstanceState, lane_key: str, step_name: str, status: Any, *, output: Any = None, error: str | None = None,
    error_name: str | None = None, cause: str | None = None, input: Any = None, input_is_workflow_input: bool = False, passes: int | None = None, attempts: int = 1,
    started_at: float | None, now: float,
) -> StepResult:
    """The record of a step execution that just ended, not yet added to the state (the actor
    first encodes it: an output that cannot be stored fails the step instead).

    ``passes`` is the seq of the record whose output this one passes on unchanged;
    ``input_is_workflow_input`` says ``input`` is the workflow input itself. An execution that
    has a start record (``Lane.begun``: a map or child step's) ends with that record's counter
    and start time: it is one execution, begun before a restart perhaps."""
    lane = state.lanes.get(lane_key)
    created = state.created_at
    if lane is not None and lane.begun is not None and lane.step == step_name:
        begun = state.records[lane.begun]
        execution, started_at = begun.execution, begun.started_at
    else:
        execution = state.executions.get(step_key(lane_key, step_name), 0) + 1
        # Within its instance's run: never before its creation time, as the instance's own
        # times are not (see not_before_creation, written out: every step asks).
        if started_at is not None and started_at < created:
            started_at = created
    if status == "started":
        # The start of an execution under way (a map's, a child step's, a wide parallel
        # step's): nothing has completed, and no attempt has ended, as a narrower step's view
        # under way says (``to_instance``).
        completed_at, attempts = None, 0
    else:
        completed_at = now if now >= created else created
    return new_record(
        step_name=step_name, status=status, input=input, output=output, error=error, started_at=started_at,
        completed_at=completed_at, attempts=attempts, lane=lane_key,
        execution=execution, seq=len(state.records), passes=passes, input_is_workflow_input=input_is_workflow_input,
        error_name=error_name, cause=cause,
    )


def complete_step(state: InstanceState, step: Step, record: StepResult, next_step: str | None) -> None:
    """Add a completed execution's record and move its lane on (``next_step`` ``None``: the
    lane is done)."""
    state.add(record)
    lane = state.lanes[record.lane]
    lane.step = next_step
    lane.last = record.seq
    lane.begun = None
    lane.waiting = None  # (what the step waited for, or the attempts a retried one made, is over)
    if isinstance(step, (ParallelStep, MapStep)):
        # A finished parallel step's branch lanes are spent, and so are a map's progress and the
        # lanes of items a fail-fast cancelled before a catch routed the step on, with every
        # lane nested in them (a map in a branch a fail-fast cancelled): dropping them means a
        # step entered again (a loop through a choice, a catch) starts afresh.
        lane.fanout = None
        for key in inner_lanes(state, step, item_scope(record.lane)):
            drop_lane(state, key)


def catcher_for(step: Step, error: BaseException) -> Catch | None:
    """The first of a failed step's catchers whose errors match ``error`` (``None``: none)."""
    if isinstance(step, CATCHING):
        for catcher in step.catch:
            if matches(catcher.errors, error):
                return catcher
    return None


def catch_failure(state: InstanceState, step: Step, record: StepResult, catcher: Catch) -> None:
    """A failure a catcher matched: add its record (status ``caught``, output the error) and
    send the lane to the catcher's target; ``result`` also puts the error in the shared data.
    Nothing is compensated: the lane goes on."""
    complete_step(state, step, record, catcher.next)
    if catcher.result is not None:
        # A copy (two strings: a dict's is whole): a step changing it in place must not
        # rewrite the record, which storage keeps as it was.
        state.data[catcher.result] = dict(record.output)


def fail_step(state: InstanceState, record: StepResult, *, for_good: bool) -> None:
    """Add the record of an execution that failed: ``for_good`` (retries spent, or an error
    nothing retries), its lane stays failed even across a restart; otherwise (cancelled while
    running) a resume runs the step again."""
    state.add(record)
    if for_good:
        state.lanes[record.lane].failed = record.seq


def next_of(step: Step) -> str | None:
    """Where a completed non-choice step goes (``None``: its lane ends)."""
    return None if step.end else step.next


def branch_keys(step: ParallelStep, scope: str) -> list[str]:
    """The keys of ``step``'s branch lanes, the step running in a lane of ``scope``."""
    return [branch_lane(step.name, b.name, scope) for b in step.branches]


def inner_lanes(state: InstanceState, step: ParallelStep | MapStep, scope: str) -> list[str]:
    """The keys of the lanes that run inside ``step`` (running in a lane of ``scope``): its
    branches' or items', and those nested in them in turn (a map or a parallel step in a
    branch; what runs in the items, all under their keys)."""
    keys: set[str] = set()
    prefixes: list[str] = []
    todo: list[Step] = [step]
    while todo:
        inner = todo.pop()
        if isinstance(inner, ParallelStep):
            keys.update(branch_keys(inner, scope))
            todo.extend(s for b in inner.branches for s in b.steps)
        elif isinstance(inner, MapStep):
            prefixes.append(item_lanes(inner.name, scope))  # (what runs in its items is under their keys)
    starts = tuple(prefixes)
    return [key for key in state.lanes if key in keys or key.startswith(starts)]


def open_branches(state: InstanceState, step: ParallelStep, scope: str) -> bool:
    """Create the branch lanes of a parallel step (running in a lane of ``scope``) unless a
    resume finds them already there.

    Returns whether they were created (``False``: this is a resume of a running parallel step).
    """
    keys = branch_keys(step, scope)
    if keys[0] in state.lanes:
        return False
    for key, b in zip(keys, step.branches):
        state.lanes[key] = new_lane(state, key, b.steps[0].name)
    return True


def parallel_start(state: InstanceState, step: ParallelStep, lane: Lane, lane_key: str, now: float) -> StepResult | None:
    """The start record of the execution of ``step`` whose branches ``lane`` just opened, for a
    step wide enough to store one (see ``trioflow._parallel``); not added yet: the actor first
    encodes it. ``None`` for a narrower step."""
    held = start_input(step)
    if held is None:
        return None
    since = now if lane.waiting is None else lane.waiting.get("since", now)
    return new_execution(state, lane_key, step.name, "started", input=held, started_at=since, now=now)


def open_wide(state: InstanceState, lane: Lane, start: StepResult) -> None:
    """Add a parallel step's start record and point its lane at it: its branches may now be
    left out of the header."""
    state.add(start)
    lane.begun = start.seq


def parallel_output(state: InstanceState, step: ParallelStep, scope: str) -> dict[str, Any]:
    """``{branch_name: branch_output}`` in the order the branches are defined."""
    return {b.name: state.lane_output(key) for key, b in zip(branch_keys(step, scope), step.branches)}


def begin_compensation(state: InstanceState, outcome: Status, error: BaseException, failed_step: str | None) -> None:
    """The forward run ended badly: remember how, and switch to compensating.

    The stored status stays "running" until compensation is done, so a crash in between leaves
    the instance resumable; ``outcome`` is the status it will end with.
    """
    state.phase = "compensating"
    state.outcome = outcome
    for lane in state.lanes.values():
        lane.waiting = None  # what a cancelled or timed-out step waited for is over
    state.error = describe_error(error)
    state.error_name, state.cause = error_name(error), error_cause(error)
    state.failed_step = failed_step


def steps_under_way(state: InstanceState) -> list[tuple[str, str, int | None, float | None]]:
    """``(lane key, step name, attempts, since)`` of each lane standing in a step whose
    execution began and has not ended: one that waits (a timer, a signal, a child, its branches;
    a retry's delay, with the attempts it made: ``None`` for the others) or that holds a start
    record (a map, a child step); ``since``: when its execution began, where stored. Not a
    delayed start's: it has started nothing. Nor one that failed for good (a wait-all branch's):
    it has ended. Nor a child step's: the cancel of its child records
    its end, which knows whether that child completed all the same (see
    ``trioflow.actors._child.cancel_children``)."""
    under_way: list[tuple[str, str, int | None, float | None]] = []
    for key, lane in state.lanes.items():
        waiting = lane.waiting
        if lane.step is None or lane.failed is not None or (lane.begun is None and (waiting is None or "start" in waiting)) \
                or (waiting is not None and "child" in waiting):
            continue
        if waiting is None:
            under_way.append((key, lane.step, None, None))
        else:
            under_way.append((key, lane.step, waiting.get("attempt"), waiting.get("since")))
    return under_way


#: The cause recorded for a step cut short (its ``error`` reads ``"Cancelled: "`` before it, as
#: every failed execution's reads ``"Name: cause"``).
CUT_SHORT = "cancelled while running"


def cut_short_fields(step_name: str, execution: str, attempts: int = 1) -> dict[str, Any]:
    """The ``workflow.step.failed`` fields of a step a cancel, a timeout or a fail-fast cut short
    (``execution``: its execution's id)."""
    return {"step_name": step_name, "execution_id": execution, "error": f"Cancelled: {CUT_SHORT}",
            "error_name": "Cancelled", "cause": CUT_SHORT, "attempts": attempts}


def cut_short_execution(
    state: InstanceState, lane_key: str, step_name: str, *, attempts: int, started_at: float | None, now: float,
    input: Any = None, input_is_workflow_input: bool = False,
) -> StepResult:
    """The record of a task step's execution a cancel, a timeout or a fail-fast cut short
    (added with ``fail_step(..., for_good=False)``: a resume would run it again)."""
    return new_execution(
        state, lane_key, step_name, "failed", error=f"Cancelled: {CUT_SHORT}", error_name="Cancelled",
        cause=CUT_SHORT, input=input, input_is_workflow_input=input_is_workflow_input, attempts=attempts,
        started_at=started_at, now=now,
    )


def cut_short_record(
    state: InstanceState, lane_key: str, step_name: str, attempts: int | None, since: float | None, now: float,
) -> StepResult | None:
    """The record that ends the execution of ``step_name`` under way in ``lane_key``, cut short
    by a cancel, a timeout or a fail-fast sibling (``attempts`` and ``since`` as
    :func:`steps_under_way` gives them), not added yet: a task step's between attempts, and a
    map's or a wide parallel step's, whose ``started`` record would otherwise stand in the
    ended instance's views as an execution under way for ever (added with
    ``fail_step(..., for_good=False)``, as a task step's). ``None`` for a step that records
    none (a wait, a receive, a narrower parallel step: their execution has no record until it
    ends) and for a child step's, whose end its child's cancel records, knowing whether that
    child completed all the same (see :func:`child_step_cut_short`)."""
    if attempts is not None:
        return cut_short_execution(state, lane_key, step_name, attempts=max(attempts, 1), started_at=since, now=now)
    lane = state.lanes.get(lane_key)
    # (A child step's start record names its child in its output; a map's or a parallel
    # step's holds none.)
    if lane is None or lane.begun is None or lane.step != step_name or state.records[lane.begun].output is not None:
        return None
    return cut_short_execution(state, lane_key, step_name, attempts=1, started_at=since, now=now)


def unended_children(state: InstanceState) -> list[str]:
    """The children whose child-step executions started and never ended (waited on when the
    instance stopped going forward), oldest first: from the records alone, so that an instance
    taken up while compensating still knows them (its lanes' waits are gone)."""
    ended = {(r.lane, r.step_name, r.execution) for r in state.records if r.status != "started"}
    return [r.output for r in state.records
            if r.status == "started" and r.output == child_instance_id(state.instance_id, r.id, state.runs)
            and (r.lane, r.step_name, r.execution) not in ended]


def child_completed_late(state: InstanceState, child_id: str, output: Any, now: float) -> StepResult:
    """The record that completes the child step execution that started ``child_id``, cut short
    as its instance ended badly, its child having completed all the same: the compensation
    that follows then undoes that child as a unit, the newest execution, as it undoes any
    completed child step, and says so on the result."""
    return _child_step_end(state, child_id, "completed", output, None, None, None, now)


def child_step_cut_short(state: InstanceState, child_id: str, now: float) -> StepResult:
    """The record that ends, cut short, the child step execution that started ``child_id`` (a
    cancel, a timeout, a fail-fast sibling), once its child was cancelled (or, completed all
    the same, is to be undone as a unit): as a task step cut short is recorded."""
    return _child_step_end(state, child_id, "failed", None, f"Cancelled: {CUT_SHORT}", "Cancelled", CUT_SHORT, now)


def _child_step_end(
    state: InstanceState, child_id: str, status: StepStatus, output: Any, error: str | None, name: str | None,
    cause: str | None, now: float,
) -> StepResult:
    # The execution's own start record gives its counter, start time and input: its lane may be
    # gone, or stand elsewhere, by now (a fan-out that ended; compensation).
    begun = next(r for r in state.records if r.status == "started" and r.output == child_id
                 and child_instance_id(state.instance_id, r.id, state.runs) == child_id)
    return new_record(
        step_name=begun.step_name, status=status, input=begun.input, output=output, error=error,
        started_at=begun.started_at, completed_at=now, attempts=1, lane=begun.lane, execution=begun.execution,
        seq=len(state.records), passes=None, input_is_workflow_input=begun.input_is_workflow_input,
        error_name=name, cause=cause,
    )


def pending_compensations(state: InstanceState, definition: WorkflowDefinition) -> list[StepResult]:
    """Completed step executions with a compensation (and completed child steps, whose child is
    compensated as a unit), newest first, minus those already handled.

    Every execution is compensated on its own: a loop that reserved twice releases twice. After
    a rolled-back transaction, entity steps are left out: the rollback undid their writes.
    """
    # Compensation runs newest first, one execution at a time: those from the cursor on are done.
    start = state.compensated_from
    plan: list[StepResult] = []
    for record in reversed(state.records if start is None else state.records[:start]):
        if record.status != "completed":
            continue
        entry = definition.lookup.get(record.step_name)
        if entry is not None and isinstance(entry[0], ChildStep):
            plan.append(record)  # a completed child is compensated as a unit, here
            continue
        if entry is None or not isinstance(entry[0], TaskStep) or entry[0].compensate is None:
            continue
        if not (state.rolled_back and entry[0].entity is not None):
            plan.append(record)
    return plan


def record_compensated(state: InstanceState, record: StepResult, now: float | None = None) -> StepResult:
    """``record``'s compensation ran at ``now``: returns the record that says so (see
    :func:`~trioflow._snapshot.completed_compensation`), added, for a durable run to stage."""
    done = completed_compensation(record, len(state.records), now)
    state.add(done)
    note_compensation(state, record.seq, done)
    return done


def record_compensation_failed(state: InstanceState, record: StepResult, failure: StepResult) -> None:
    """``record``'s compensation failed for good: handled all the same, and ``failure`` (see
    :func:`~trioflow._snapshot.failed_compensation`) joins the history with its error."""
    state.add(failure)
    note_compensation(state, record.seq, failure)


def finish(state: InstanceState, definition: WorkflowDefinition, status: Status, now: float) -> None:
    """Terminal state. On completion, main-lane steps that never ran are recorded as skipped."""
    state.status = status
    state.phase = "done"
    state.completed_at = not_before_creation(state, now)
    for lane in state.lanes.values():
        lane.waiting = None
    if status == "completed":
        ran = {r.step_name for r in state.records}
        # (A list comprehension: no generator for tuple() to step through.)
        state.skipped = tuple([s.name for s in definition.steps if s.name not in ran])
    state.lanes[MAIN].step = None


def fail_alone(state: InstanceState, error: str, now: float) -> None:
    """End an instance as failed without running anything more (it cannot be run on)."""
    state.status = "failed"
    state.phase = "done"
    state.error = error
    state.error_name, state.cause = split_description(error)
    state.completed_at = not_before_creation(state, now)
    for lane in state.lanes.values():
        lane.step = None
        lane.waiting = None  # (an ended instance waits for nothing, as finish() has it)


def misfit(state: InstanceState, definition: WorkflowDefinition) -> str | None:
    """Why a stored instance can no longer run on ``definition`` (``None``: it still fits).

    Every lane position must exist where the snapshot says it is (checked whatever the
    fingerprint: a damaged row must fail alone, not crash its run). Every running parallel
    step's set of branches and every step that ran must still exist too,
    and each step a lane stands at must be of the kind whose execution the lane stored (a
    wait's timer, a receive's signal, a child, a retry's attempts, a map's items): a release
    that made a receive a wait would otherwise run it on what the receive left. (A parallel
    step's branch lanes stand at its branches' steps, checked above.) Compensating, lanes stand nowhere (an instance that failed for not fitting keeps the
    ones it had): only the steps that ran matter.
    """
    lookup = definition.lookup
    # (Compensating, the lanes stand nowhere: only the steps that ran must still be there.)
    for key, lane in state.lanes.items() if state.phase == "forward" else ():
        if lane.step is None:
            continue
        entry = lookup.get(lane.step)
        if entry is None:
            return f"step {lane.step!r}, where the instance stands, is no longer in workflow {definition.name!r}"
        if entry[1] != lane_in_definition(key):
            return f"step {lane.step!r} is no longer in the same lane ({key or 'main'!r}) of workflow {definition.name!r}"
    # (Whatever the fingerprint too: the one stored is the release the instance started on,
    # and it may have run under another since, one that added a step a rollback removes.)
    branches: dict[tuple[str, str], set[str]] = {}  # (scope, parallel step) -> its branch lanes stored
    for key, lane in state.lanes.items() if state.phase == "forward" else ():
        if (parallel := parallel_of(key)) is not None:
            branches.setdefault((item_scope(key), parallel), set()).add(key)
        if lane.step is not None and (stored_as := _stored_kind(state, lane)) is not None:
            step = lookup[lane.step][0]
            if not isinstance(step, stored_as):
                return (f"step {lane.step!r} is now a {step.kind} step, and the instance stored it"
                        f" {_STORED_AS[stored_as]} (lane {key or 'main'!r})")
    for (scope, name), stored in branches.items():
        found = lookup.get(name)
        if found is not None and isinstance(found[0], ParallelStep) and stored != set(branch_keys(found[0], scope)):
            return f"parallel step {name!r} changed its branches while the instance was running it"
    # Compensating, only the completed steps matter (their compensations are what is left).
    ran = state.records if state.phase == "forward" else [r for r in state.records if r.status == "completed"]
    for name in dict.fromkeys(r.step_name for r in ran):
        if name not in lookup:
            return f"step {name!r}, which the instance ran, is no longer in workflow {definition.name!r}"
    return None


#: What a lane's stored execution says of its step's kind, by that kind, in words.
_STORED_AS: dict[type[Step], str] = {
    ChildStep: "waiting for a child workflow",
    WaitStep: "waiting for a timer",
    ReceiveStep: "waiting for a signal",
    TaskStep: "between attempts of a task",
    MapStep: "running a map's items",
    ParallelStep: "running a parallel step's branches",
}


def _stored_kind(state: InstanceState, lane: Lane) -> type[Step] | None:
    """The kind of step whose execution ``lane`` stored as under way (``None``: nothing that
    only one kind stores, or it failed for good and runs no more, whatever its kind; a parallel
    step's branches are lanes of their own)."""
    if lane.failed is not None:
        return None
    waiting = lane.waiting
    if waiting is not None:
        if "child" in waiting:  # (its "signal" names the child's end notice)
            return ChildStep
        if "timer" in waiting:
            return WaitStep
        if "signal" in waiting:
            return ReceiveStep
        if "attempt" in waiting:
            return TaskStep
        if "since" in waiting:  # (and nothing else: only a parallel step's lane keeps that alone)
            return ParallelStep
    if lane.begun is None:
        return None
    begun = state.records[lane.begun]  # (a child step's holds its child's id; a map's, its items)
    if begun.output == child_instance_id(state.instance_id, begun.id, state.runs):
        return ChildStep
    # (A wide parallel step's names its branches: its lane waits for them no more once it
    # compensates.)
    return ParallelStep if layout(begun) is not None else MapStep


def take_up(state: InstanceState, definition: WorkflowDefinition) -> None:
    """An instance taken up from storage that has run nothing yet (queued for a slot, waiting
    for a delayed start, or its first step cut short) starts at the first step of the
    definition registered now, whatever release stored it (with that definition's initial data
    if it had not begun); unless it began under that very release (see below)."""
    # (Whatever it stands at: its next header goes by this release's item steps.)
    state.item_next = definition.item_next or None
    if state.records or state.phase != "forward":
        return
    main = state.lanes.get(MAIN)
    waiting = None if main is None else main.waiting
    if waiting and waiting.keys() - {"start"}:
        # Its first step's execution is under way (a timer, a signal, a retry's attempts): it
        # keeps what it stored as it began, as any step's does (and ``misfit`` checks that step
        # still fits). Reset, it would begin again at every take-up, for ever: what says it was
        # reset, the fingerprint, is stored only with the instance's start.
        return
    first = definition.steps[0].name
    if state.started_at is not None and state.fingerprint == definition.fingerprint and main is not None \
            and main.step == first:
        # Begun under this very release (the fingerprint stored is the one it started on, and
        # it stands at this release's first step): as stored, with what its on_start hook set.
        # One begun under another (a rollback since) starts afresh, as one not begun does.
        return
    state.lanes = {MAIN: Lane(step=first, waiting=waiting if waiting and "start" in waiting else None)}
    state.fingerprint = definition.fingerprint
    if state.started_at is None or state.runs:
        # Not begun: nothing changed its data, and it starts with this release's, as a new one
        # would; so does a run after the first, which begins with its release's data (a
        # continue_as_new step's next run, stored on the release before). (A first run that
        # began keeps what it stored: what its on_start hook set, which runs once.)
        state.data = SharedData(fresh_copy(dict(definition.data)) if definition.data else ())


def wake_at(state: InstanceState, definition: WorkflowDefinition) -> float | None:
    """When a waiting instance must be woken (Unix seconds; ``inf``: only by a signal), or
    ``None`` unless every lane that has a step to run waits (a running lane must be resumed at
    once after a restart). A lane whose parallel or map step has its inner lanes carry on for
    it runs nothing itself: its branches or items count instead. The workflow's timeout counts:
    it must fire while the instance waits."""
    if state.phase != "forward":
        return None  # compensating or done: nothing left to wait for
    due = math.inf
    waits = False  # (whether a lane above waits: then none need be looked at again below)
    for key, lane in state.lanes.items():
        if lane.step is None:
            continue
        waiting = lane.waiting
        if waiting is None or not lane.waits():
            if lane.failed is None and _fanned_out(state, key, lane, definition):
                continue
            return None
        waits = True
        due = min(due, waiting.get("timer", math.inf), waiting.get("start", math.inf), waiting.get("retry", math.inf),
                  waiting.get("timeout") or math.inf, waiting.get("check", math.inf))
    if due == math.inf and not waits:
        for lane in state.lanes.values():  # (a loop, not any() over a generator: every wake asks)
            if lane.waits():
                break
        else:
            return None
    main = state.lanes.get(MAIN)
    delayed = main is not None and main.waiting is not None and "start" in main.waiting
    if definition.timeout is not None and state.started_at is not None and not delayed:
        due = min(due, state.started_at + definition.timeout)
    return due


def _fanned_out(state: InstanceState, key: str, lane: Lane, definition: WorkflowDefinition) -> bool:
    """Whether ``lane`` stands at a parallel step with a branch still open, or at a map step
    with items running and none it may start (all started, or ``max_concurrency`` running): it
    has nothing to run until one of them ends. (Once the last one has ended, the step goes on.)"""
    assert lane.step is not None
    found = definition.lookup.get(lane.step)
    step = None if found is None else found[0]
    if isinstance(step, ParallelStep):
        lanes = state.lanes
        scope = item_scope(key)
        for branch in step.branches:
            inner = lanes.get(branch_lane(step.name, branch.name, scope))
            if inner is not None and inner.step is not None:
                return True
        return False
    progress = lane.fanout
    if not isinstance(step, MapStep) or progress is None:
        return False
    running = progress.started - progress.ended_count
    return running > 0 and (progress.started == progress.count
                            or (step.max_concurrency is not None and running >= step.max_concurrency))


def progress(state: InstanceState, definition: WorkflowDefinition) -> tuple[int, int]:
    """(percent, completed main-lane steps). 100 once the main line has run its last step (the
    instance completes next), and only then: a percentage never goes down, and a run reports
    100 once."""
    total = len(definition.steps)
    done = sum(1 for s in definition.steps if s.name in state.latest)
    main = state.lanes.get(MAIN)
    if state.status == "completed" or (main is not None and main.step is None and main.failed is None):
        return 100, done
    return min(99, done * 100 // total), done
