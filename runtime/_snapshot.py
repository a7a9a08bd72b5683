"""Where an instance stands: the state the actors mutate, and the public read-only views.

``InstanceState`` is deliberately mutable: exactly one instance actor (and its branch actors, in
the same trio thread, never across an ``await``) owns it, and copying it on every step would put
allocation on the hot path. Callers never see it: they get :class:`WorkflowInstance` /
:class:`WorkflowResult`, frozen values. Timestamps are Unix seconds (``time.time()``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, get_args

import attrs

from ._errors import split_description
from ._lanes import MAIN, child_ended_signal, execution_id, item_scope, parallel_of, step_key

#: The statuses of an instance whose run has not ended: a resume picks it up.
ResumableStatus = Literal["pending", "running"]
#: The statuses of an instance whose run has ended (what ``purge`` takes).
FinishedStatus = Literal["completed", "failed", "cancelled", "timed_out", "compensated"]
Status = Literal[ResumableStatus, FinishedStatus]
StepStatus = Literal[
    "pending", "running", "started", "completed", "failed", "caught", "skipped", "compensated", "compensation_failed",
    "compensation_completed"]
Phase = Literal["forward", "compensating", "done"]

#: Every status, step status and phase (what a stored snapshot may say).
STATUSES: frozenset[str] = frozenset(get_args(Status))
STEP_STATUSES: frozenset[str] = frozenset(get_args(StepStatus))
PHASES: frozenset[str] = frozenset(get_args(Phase))
#: Step executions whose output later steps see (``ctx.steps``): a caught failure's output is
#: its error, ``{"error": name, "cause": message}``.
HAS_OUTPUT: frozenset[str] = frozenset({"completed", "caught"})
#: The records of compensations (in storage only: each carries the id of the execution it undid).
OF_COMPENSATIONS: frozenset[str] = frozenset({"compensation_completed", "compensation_failed"})

#: Statuses of instances a resume picks up.
RESUMABLE: frozenset[str] = frozenset(get_args(ResumableStatus))
#: Statuses an instance has once its run has ended (every other one). It never leaves them, but
#: for one: a child instance that completed becomes ``compensated`` when its parent compensates it.
TERMINAL: frozenset[str] = frozenset(get_args(FinishedStatus))

#: A record's ``passes`` when what it passes on is the workflow input (a choice, pass or wait
#: step first on the main line): stored as this reference, not a second copy. Releases before
#: it refuse such a record as malformed (its row left as stored) rather than misread it.
PASSES_WORKFLOW_INPUT = -1

#: The compensation errors of an instance with none (shared: see ``InstanceState``).
NO_ERRORS: Mapping[int, str] = MappingProxyType({})


@attrs.frozen(kw_only=True)
class StepResult:
    """One execution of one step of one instance (a record of its history).

    ``id`` names the execution: its lane, its step and a counter (``"charge#2"``: the second
    run of ``charge``); ``seq`` is its place in the instance's history, from 0. ``status`` is
    ``"compensated"`` once this execution's compensation ran (views only: records are never
    rewritten; a record of its own says so). A failed execution says why in
    ``error_name`` (the exception's class name, or a ``fail`` step's error) and ``cause`` (its
    message); ``error`` is the two as one line. ``"caught"``: it failed and a catch routed its
    lane on; its output is ``{"error": error_name, "cause": cause}``. ``"started"``: the start of
    an execution that a later record with the same id ends: a map step's (its input is the
    list of items), a child step's (its input is the child's input, its output the child's
    instance id) or a wide parallel step's (see ``trioflow._parallel``); it has a
    ``started_at``, no ``completed_at`` and ``attempts`` 0, as a view of an execution under way
    (a cancel, a timeout or a fail-fast sibling that cuts it short records its end too).
    ``"compensation_completed"`` and ``"compensation_failed"``: in storage only, the record of an
    execution's compensation that ran, or failed for good, with the same id as that execution
    (and the compensation's error: views show the execution as ``"compensated"``, or with that
    ``compensation_error``, instead).
    ``passes`` (the seq of the record whose output this one passed on unchanged: a choice, a
    pass step; :data:`PASSES_WORKFLOW_INPUT` for the workflow input) and
    ``input_is_workflow_input`` say how the record is stored, as a reference rather than a
    second copy; ``output`` and ``input`` hold the values either way.
    """

    step_name: str
    status: StepStatus
    input: Any = None
    output: Any = None
    error: str | None = None
    started_at: float | None = None
    completed_at: float | None = None
    attempts: int = 0
    lane: str = ""
    execution: int = 0
    seq: int = -1
    #: The record whose output this one passes on unchanged (a choice, or a pass step without
    #: transform/result), or :data:`PASSES_WORKFLOW_INPUT`: stored as a reference, not a
    #: second copy.
    passes: int | None = None
    #: Whether ``input`` is the workflow input itself (a task without an ``input=`` mapper):
    #: stored as a flag, not a second copy.
    input_is_workflow_input: bool = False
    #: Why this execution's compensation failed for good (views only, like ``compensated``).
    compensation_error: str | None = None
    error_name: str | None = None
    cause: str | None = None

    @property
    def id(self) -> str:
        """The execution's id: its lane, its step and its counter (``"fulfill/ship/ship#2"``)."""
        return execution_id(self.lane, self.step_name, self.execution)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values (see :meth:`WorkflowInstance.to_dict`), with its id."""
        from ._json import json_ready  # loaded on first use: import trioflow stays light

        return {"id": self.id, **json_ready(attrs.asdict(self, recurse=False))}



# Each field's slot setter. attrs' __init__ of a frozen slotted class sets every field through
# ``object.__setattr__`` (a bound call and a type lookup each): for the sixteen fields of a
# record, made at every step execution and for every record decoded, that cost 40 % more than
# setting the slots directly, as new_record does.
(_set_step_name, _set_status, _set_input, _set_output, _set_error, _set_started_at, _set_completed_at,
 _set_attempts, _set_lane, _set_execution, _set_seq, _set_passes, _set_input_is_workflow_input,
 _set_compensation_error, _set_error_name, _set_cause) = (
    getattr(StepResult, field.name).__set__ for field in attrs.fields(StepResult))
_RECORD_FIELDS = (
    "step_name", "status", "input", "output", "error", "started_at", "completed_at", "attempts", "lane",
    "execution", "seq", "passes", "input_is_workflow_input", "compensation_error", "error_name", "cause")
if tuple(field.name for field in attrs.fields(StepResult)) != _RECORD_FIELDS:  # pragma: no cover
    raise ImportError("StepResult's fields changed: update new_record and its setters to match")
_new_object = object.__new__


def new_record(
    *, step_name: str, status: StepStatus, input: Any = None, output: Any = None, error: str | None = None,
    started_at: float | None = None, completed_at: float | None = None, attempts: int = 0, lane: str = "",
    execution: int = 0, seq: int = -1, passes: int | None = None, input_is_workflow_input: bool = False,
    compensation_error: str | None = None, error_name: str | None = None, cause: str | None = None,
) -> StepResult:
    """``StepResult(...)`` with the same arguments and defaults, built faster (see above): for
    the engine's hot paths. It skips nothing attrs does for this class (it has no validators
    nor converters)."""
    record: StepResult = _new_object(StepResult)
    _set_step_name(record, step_name)
    _set_status(record, status)
    _set_input(record, input)
    _set_output(record, output)
    _set_error(record, error)
    _set_started_at(record, started_at)
    _set_completed_at(record, completed_at)
    _set_attempts(record, attempts)
    _set_lane(record, lane)
    _set_execution(record, execution)
    _set_seq(record, seq)
    _set_passes(record, passes)
    _set_input_is_workflow_input(record, input_is_workflow_input)
    _set_compensation_error(record, compensation_error)
    _set_error_name(record, error_name)
    _set_cause(record, cause)
    return record


def completed_compensation(compensated: StepResult, seq: int, now: float | None) -> StepResult:
    """The record of ``compensated``'s compensation having run, at ``seq``: appended like an
    execution's, so that the header does not grow with the executions compensated (it holds
    a cursor); it carries the id of the execution it was for."""
    return new_record(step_name=compensated.step_name, status="compensation_completed", completed_at=now,
                      lane=compensated.lane, execution=compensated.execution, seq=seq)


def failed_compensation(
    compensated: StepResult, error: str, seq: int, now: float | None, *, name: str | None = None,
    cause: str | None = None, attempts: int = 0,
) -> StepResult:
    """The record of ``compensated``'s compensation failing for good with ``error`` (``"Name:
    cause"``; ``name`` and ``cause`` taken from it unless given), at ``seq``: appended like an
    execution's, so that the header does not grow with the failures; it carries the id of the
    execution it was for."""
    if name is None or cause is None:
        name, cause = split_description(error)
    return new_record(
        step_name=compensated.step_name, status="compensation_failed", error=error, error_name=name, cause=cause,
        completed_at=now, attempts=attempts, lane=compensated.lane, execution=compensated.execution, seq=seq,
    )


def note_compensation(state: InstanceState, seq: int, done: StepResult) -> None:
    """``done``, among ``state``'s records, says that the compensation of the execution at
    ``seq`` ran or failed for good (see :func:`completed_compensation`,
    :func:`failed_compensation`): indexed, and the cursor moves to that execution."""
    if done.status == "compensation_failed":
        errors = state.compensation_errors
        if not isinstance(errors, dict):  # (the shared empty default)
            errors = state.compensation_errors = {}
        errors[seq] = done.error or ""
    elif isinstance(state.compensations, list):
        state.compensations.append(seq)
    else:
        state.compensations = [seq]
    state.compensated_from = seq


def with_values(record: StepResult, *, input: Any, output: Any) -> StepResult:
    """``attrs.evolve(record, input=input, output=output)``, built as :func:`new_record`
    builds (evolve reads every field and calls the slow ``__init__``)."""
    return new_record(
        step_name=record.step_name, status=record.status, input=input, output=output, error=record.error,
        started_at=record.started_at, completed_at=record.completed_at, attempts=record.attempts, lane=record.lane,
        execution=record.execution, seq=record.seq, passes=record.passes,
        input_is_workflow_input=record.input_is_workflow_input, compensation_error=record.compensation_error,
        error_name=record.error_name, cause=record.cause,
    )

@attrs.define(kw_only=True)
class MapProgress:
    """Where a running map step stands, kept in its lane (so in the header): small whatever the
    number of items. The items themselves are in the step's start record (``Lane.begun``);
    items run in index order, so those below ``started`` were started, and each either still
    has its lane or is in ``ended``, kept as half-open ranges ``[lo, hi, lo, hi, ...]`` (as many
    as there are gaps between ended items, which only running items make)."""

    #: The lane it is kept in, when that lane notes its changes (a :class:`TrackedLane`): a
    #: change to the position is noted as the lane's. (First: set before the fields below.)
    owner: TrackedLane | None = attrs.field(default=None, eq=False, repr=False)
    count: int
    started: int = 0
    ended: list[int] = attrs.field(factory=list)
    #: How many items ended (what ``ended`` covers), and how many of them failed for good and
    #: were tolerated.
    ended_count: int = 0
    failed: int = 0
    #: The first step of the map's branch: where an item's lane stands until its first step
    #: execution ends. The header leaves such lanes out and names it instead, so that a map
    #: with thousands of items in flight keeps a small header (``None``: read from a header
    #: written before it was named, which lists every lane).
    first: str | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        owner = self.owner
        if owner is not None:
            owner._notes[owner._key] = None  # (``end`` changes ``ended`` in place beside ``ended_count``)

    def running(self) -> list[int]:
        """The items started and not ended, in index order."""
        ended, lo = self.ended, 0
        running: list[int] = []
        for i in range(0, len(ended), 2):
            running.extend(range(lo, min(ended[i], self.started)))
            lo = ended[i + 1]
        running.extend(range(lo, self.started))
        return running

    def end(self, index: int) -> None:
        """Mark item ``index`` ended (once)."""
        ranges = self.ended
        i = bisect.bisect_right(ranges, index)
        if i % 2:  # inside a range already
            return
        self.ended_count += 1
        joins_left = i > 0 and ranges[i - 1] == index
        joins_right = i < len(ranges) and ranges[i] == index + 1
        if joins_left and joins_right:
            del ranges[i - 1:i + 1]
        elif joins_left:
            ranges[i - 1] = index + 1
        elif joins_right:
            ranges[i] = index
        else:
            ranges[i:i] = [index, index + 1]

    def has_ended(self, index: int) -> bool:
        return bisect.bisect_right(self.ended, index) % 2 == 1


@attrs.define(kw_only=True)
class Lane:
    """Progress of one lane: the main line (key ``""``), one branch of a running parallel step,
    or one item of a running map step.

    ``step`` is the step to run next (``None`` once the lane is done); ``last`` is the seq of the
    lane's last completed step execution, whose output a pass step passes on and a branch returns.
    """

    step: str | None
    last: int | None = None
    #: The seq of the record of ``step``'s execution that failed for good, once it has: a
    #: resume must not run that step again, only go on failing from there.
    failed: int | None = None
    #: What ``step`` waits for, stored when it starts waiting: ``{"timer": due}`` or
    #: ``{"signal": name, "timeout": due or None}`` (due times in Unix seconds). While a
    #: retried step's next attempt runs, ``{"attempt": n}`` keeps the attempts made before it
    #: (for a restart) and waits for nothing (see :meth:`waits`). A task, wait or receive
    #: step's waits also keep ``"since"``: when its execution started (a run taken up after it
    #: left memory records that start, not its own).
    waiting: dict[str, Any] | None = None
    #: The seq of the start record of ``step``'s execution, once it has one: a map step's
    #: (holding its items) or a child step's (holding the child's id). The record that ends
    #: the execution has the same id (see :func:`trioflow._decide.new_execution`).
    begun: int | None = None
    #: While ``step`` is a map step that has started its items: how far they are.
    fanout: MapProgress | None = None

    def waits(self) -> bool:
        """Whether the lane waits for something (a timer, a signal, a child, its start, a
        retry's delay), rather than run its step (or only keep the attempts made before it)."""
        return waits_for(self.waiting)


def waits_for(waiting: Mapping[str, Any] | None) -> bool:
    """Whether a lane whose ``waiting`` this is waits for something (see :meth:`Lane.waits`):
    also asked of a wait as a header holds it, its lane not built."""
    return waiting is not None and not waiting.keys() <= _KEPT_ONLY


#: Keys of ``Lane.waiting`` that say what a wait kept, not what the lane waits for (the
#: ``undo`` ones: the main lane's, of a compensation under way, see ``actors._task.attempt``).
_KEPT_ONLY = frozenset({"attempt", "since", "undo", "undo_attempt", "undo_at", "error_name", "cause"})


class TrackedLane(Lane):
    """A fan-out's lane (a parallel branch's, a map item's, or one inside them): each change to
    it is noted in its instance's ``lane_notes``, so that a checkpoint of an instance with
    thousands of lanes in flight encodes again only the lanes that changed since the one
    before (see ``trioflow._codec``). Made by :func:`new_lane`; equal to a :class:`Lane` with
    the same fields."""

    __slots__ = ("_key", "_notes")
    _key: str
    _notes: dict[str, None]

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        self._notes[self._key] = None
        if name == "fanout" and value is not None:
            value.owner = self  # (its position's changes are the lane's)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Lane):
            return NotImplemented
        return (self.step == other.step and self.last == other.last and self.failed == other.failed
                and self.waiting == other.waiting and self.begun == other.begun and self.fanout == other.fanout)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # (mutable, as Lane)


def new_lane(
    state: InstanceState, key: str, step: str | None, *, last: int | None = None, failed: int | None = None,
    waiting: dict[str, Any] | None = None, begun: int | None = None, fanout: MapProgress | None = None,
) -> Lane:
    """A lane for ``key`` in ``state`` (not yet added to its lanes): the main line's a plain
    :class:`Lane`, any other a :class:`TrackedLane`, noted as new."""
    if key == MAIN:
        return Lane(step=step, last=last, failed=failed, waiting=waiting, begun=begun, fanout=fanout)
    notes = state.lane_notes
    if notes is None:
        notes = state.lane_notes = {}
    # Each field set through its slot, not through ``__setattr__`` (which notes, and needs the
    # first two set before): a lane per branch or item, thousands at once.
    lane = _new_tracked(TrackedLane)
    _set_key(lane, key)
    _set_notes(lane, notes)
    _set_step(lane, step)
    _set_last(lane, last)
    _set_failed(lane, failed)
    _set_waiting(lane, waiting)
    _set_begun(lane, begun)
    _set_fanout(lane, fanout)
    if fanout is not None:
        fanout.owner = lane
    notes[key] = None
    return lane


_new_tracked = object.__new__
_set_key, _set_notes = TrackedLane._key.__set__, TrackedLane._notes.__set__  # type: ignore[attr-defined]
_set_step, _set_last, _set_failed, _set_waiting, _set_begun, _set_fanout = (
    getattr(Lane, name).__set__ for name in ("step", "last", "failed", "waiting", "begun", "fanout"))


def drop_lane(state: InstanceState, key: str) -> None:
    """Take lane ``key`` out of ``state``, noted (see :class:`TrackedLane`)."""
    del state.lanes[key]
    if state.lane_notes is not None:
        state.lane_notes[key] = None


#: Seconds after a child step stored its start when its parent, out of memory and not woken by
#: its child's end, is taken up to store the child should it not be (its wait's ``check``).
CHECK_CHILD_STORED_AFTER = 10.0


class ChildWait(dict[str, Any]):
    """What a lane waits for while its child step waits for the child's end, as
    :func:`child_wait` makes it (and nothing else: it is never changed in place). All of it
    follows from the step's start record, so a header names it in a word, ``word`` (see
    ``trioflow._codec``): a map of thousands of items waiting for children would otherwise
    write each child's ids in every header."""

    __slots__ = ("word",)
    word: int

    #: ``word`` of a wait whose child's store is still to be checked, and of one known stored.
    UNCHECKED = 1
    STORED = 2


def child_wait(child_id: str, started_at: float | None) -> ChildWait:
    """What a lane waits for while its child step waits for the child's end: the end notice (a
    signal), with no timeout; ``check``, when its parent is taken up to store the child should
    it not be stored (``started_at``: the step's start), or ``inf`` once it is known stored
    (``started_at`` ``None``)."""
    check = math.inf if started_at is None else started_at + CHECK_CHILD_STORED_AFTER
    waiting = ChildWait(signal=child_ended_signal(child_id), timeout=None, child=child_id, check=check)
    waiting.word = ChildWait.STORED if started_at is None else ChildWait.UNCHECKED
    return waiting


def waiting_view(waiting: dict[str, Any]) -> dict[str, Any]:
    """What a lane waits for as callers see it (``WorkflowInstance.waiting``, the
    ``workflow.step.waiting`` event): without what only the engine needs."""
    return {key: value for key, value in waiting.items() if key not in _UNSEEN_WAIT_KEYS}


#: What a lane's wait holds for the engine alone: when its execution started, when a parent
#: that stored a child step's start looks whether it stored the child too (see
#: ``trioflow.actors._child``), the timeout a receive's deadline came from, and the error of
#: the attempt before a retry delay (see ``trioflow.actors._task``).
_UNSEEN_WAIT_KEYS = frozenset({"since", "check", "within", "error_name", "cause"})


@attrs.define(kw_only=True, eq=False)
class InstanceState:
    """Where an instance stands: what its start, header and records hold (see ``trioflow._codec``).

    ``records`` is the instance's whole history in memory; the first ``stored`` of them are in
    storage, the rest go with the next checkpoint. ``latest`` and ``executions`` are indexes
    over ``records``, kept as records are added and rebuilt when an instance is loaded.
    """

    instance_id: str
    workflow_name: str
    fingerprint: str
    status: Status
    input: Any
    data: dict[str, Any]
    lanes: dict[str, Lane]
    #: The instance whose child step started this one (``None``: started by a caller).
    parent_id: str | None = None
    #: An empty tuple until the first record: one list fewer per instance waiting for a slot.
    records: list[StepResult] | tuple[()] = ()
    #: How many of ``records`` are stored.
    stored: int = 0
    #: Whether the start bytes are stored (``False`` for an instance read from a format-1 row).
    start_stored: bool = True
    #: Encoded records taken by a checkpoint still being written.
    inflight: int = 0
    #: Encoded records not stored yet, nor being written: ``records[stored + inflight:]`` in
    #: order (each record is encoded once, when it is added; a checkpoint takes them from here).
    #: An empty tuple while there are none: one list fewer per instance in flight.
    staged: list[bytes] | tuple[()] = ()
    #: Indexes behind :attr:`latest` and :meth:`latest_in_item`, built on first use (most runs
    #: never ask).
    _latest: dict[str, StepResult] | None = attrs.field(default=None, alias="_latest")
    _item_latest: dict[str, StepResult] | None = attrs.field(default=None, alias="_item_latest")
    #: How many executions each step has had, by lane and step (:func:`trioflow._lanes.step_key`).
    executions: dict[str, int] = attrs.field(factory=dict)
    phase: Phase = "forward"
    #: While compensating: the status the instance ends with once compensation is done.
    outcome: Status | None = None
    #: A transactional run whose driver transaction was rolled back.
    rolled_back: bool = False
    error: str | None = None
    #: The shared data as packed at the last step end whose check passed (``None``: it was
    #: empty); what ``data`` goes back to when a step leaves something in it that cannot be
    #: stored (see ``trioflow._codec.check_data``).
    good_data: bytes | None = None
    #: Signals delivered to this run and not consumed yet, ``(seq, name, payload)`` in seq
    #: order (loaded from storage when a receive step needs them), and the seqs consumed by
    #: receive steps that the next checkpoint deletes, atomically with their records.
    #: (Empty tuples until there are some: most instances never receive a signal.)
    signals: list[tuple[int, str, Any]] | tuple[()] = ()
    consumed: list[int] | tuple[()] = ()
    #: The instance's error as a name and a cause (see :class:`StepResult`).
    error_name: str | None = None
    cause: str | None = None
    failed_step: str | None = None
    # The five below start as shared empty values (replaced, not mutated, until the instance
    # has its own): most instances never compensate nor skip a step, and fewer containers per
    # instance means less work for the cyclic garbage collector.
    #: Compensating: the seq of the execution handled last (compensated, or its compensation
    #: failed for good). Compensation runs newest first, one execution at a time, so every
    #: execution it still has to handle comes before it; the header holds this cursor alone,
    #: the records of the compensations say which were handled (see :func:`note_compensation`).
    compensated_from: int | None = None
    #: Seqs of the executions compensated, in the order they were (newest first): an index
    #: over the ``"compensation_completed"`` records (see :attr:`compensated`).
    compensations: list[int] | tuple[()] = ()
    #: Seq of each execution whose compensation failed for good -> its error: an index over
    #: the ``"compensation_failed"`` records (see :func:`failed_compensation`).
    compensation_errors: Mapping[int, str] = NO_ERRORS
    #: Main-line steps a completed instance never ran (a choice went elsewhere).
    skipped: tuple[str, ...] = ()
    created_at: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None
    #: The keys of the fan-out lanes added, changed or dropped since the header was last
    #: encoded, in the order first noted (see :class:`TrackedLane`); ``None`` until the
    #: instance has such a lane.
    lane_notes: dict[str, None] | None = None
    #: What ``trioflow._codec`` kept of the lanes in the header it last encoded, to encode only
    #: the noted ones again next time (an instance with many lanes; ``None`` otherwise).
    header_lanes: Any = None
    #: How many times the instance continued as new (a ``continue_as_new`` step): its history
    #: is that of its latest run, which ``runs`` numbers from 0.
    runs: int = 0
    #: Its definition's :attr:`~trioflow.WorkflowDefinition.item_next` (``None``: not known,
    #: or no map), which lets its header leave out the item lanes that stand just after an
    #: execution of such a step (read back from a header that did).
    item_next: Mapping[str, str | None] | None = None

    @property
    def latest(self) -> dict[str, StepResult]:
        """The newest completed execution of each step by step name, map items' executions
        left out (what ``ctx.steps`` shows outside a map item): every item runs the same
        steps, so an item's outputs are its own (and the map's output has them all)."""
        if self._latest is None:
            self._latest = {r.step_name: r for r in self.records
                            if r.status in HAS_OUTPUT and not item_scope(r.lane)}
        return self._latest

    def latest_in_item(self, scope: str, name: str) -> StepResult | None:
        """The newest completed execution of step ``name`` in the map item whose lane key is
        ``scope`` (in its lane, or in a lane inside it: a branch of a parallel step it runs)."""
        if self._item_latest is None:
            self._item_latest = {}
            for r in self.records:
                if r.status in HAS_OUTPUT and (within := item_scope(r.lane)):
                    self._item_latest[step_key(within, r.step_name)] = r
        return self._item_latest.get(step_key(scope, name))

    def add(self, record: StepResult) -> None:
        """Append a record (its ``seq`` must be the next one) and index it."""
        if isinstance(self.records, list):
            self.records.append(record)
        else:
            self.records = [record]
        if record.status in HAS_OUTPUT and (self._latest is not None or self._item_latest is not None):
            scope = item_scope(record.lane)
            if not scope:
                if self._latest is not None:
                    self._latest[record.step_name] = record
            elif self._item_latest is not None:
                self._item_latest[step_key(scope, record.step_name)] = record
        if record.execution and record.status not in OF_COMPENSATIONS:  # (an earlier execution's)
            self.executions[step_key(record.lane, record.step_name)] = record.execution

    @property
    def compensated(self) -> tuple[int, ...]:
        """Seqs of the executions compensated, in the order they were (newest first)."""
        return tuple(self.compensations)

    def output_of(self, seq: int | None) -> Any:
        """The output of the record at ``seq`` (``None``: no record, no output)."""
        return None if seq is None else self.records[seq].output

    def lane_output(self, key: str) -> Any:
        """The output of a lane's last completed step."""
        return self.output_of(self.lanes[key].last)

    @property
    def output(self) -> Any:
        """The workflow's output: the main line's, once the instance completed."""
        return self.lane_output(MAIN) if self.status == "completed" and MAIN in self.lanes else None


def new_instance_state(
    instance_id: str, workflow_name: str, fingerprint: str, status: Status, input: Any, data: dict[str, Any],
    lanes: dict[str, Lane], created_at: float, started_at: float | None,
) -> InstanceState:
    """``InstanceState(...)`` with these fields and every other at its default, built faster:
    a state is made at every start and every decode (each resume, signal's wake, timer), and
    attrs' ``__init__`` binds its 35 keyword-only parameters, 26 from their defaults, at three
    times the cost of these positional ones and plain stores (callgrind). The caller sets any
    other field after."""
    state: InstanceState = _new_object(InstanceState)
    state.instance_id = instance_id
    state.workflow_name = workflow_name
    state.fingerprint = fingerprint
    state.status = status
    state.input = input
    state.data = data
    state.lanes = lanes
    state.parent_id = None
    state.records = ()
    state.stored = 0
    state.start_stored = True
    state.inflight = 0
    state.staged = ()
    state._latest = None
    state._item_latest = None
    state.executions = {}
    state.phase = "forward"
    state.outcome = None
    state.rolled_back = False
    state.error = None
    state.good_data = None
    state.signals = ()
    state.consumed = ()
    state.error_name = None
    state.cause = None
    state.failed_step = None
    state.compensated_from = None
    state.compensations = ()
    state.compensation_errors = NO_ERRORS
    state.skipped = ()
    state.created_at = created_at
    state.started_at = started_at
    state.completed_at = None
    state.lane_notes = None
    state.header_lanes = None
    state.runs = 0
    state.item_next = None
    return state


_UNSET = object()


def _check_new_instance_state() -> None:
    """Refuse to load if ``InstanceState``'s fields or defaults changed without
    :func:`new_instance_state` (a field it leaves unset would raise on first read)."""
    given: dict[str, Any] = {"instance_id": "i", "workflow_name": "w", "fingerprint": "f", "status": "running",
                             "input": None, "data": {}, "lanes": {}, "created_at": 1.0, "started_at": 2.0}
    made, reference = new_instance_state(**given), InstanceState(**given)
    for field in attrs.fields(InstanceState):
        if getattr(made, field.name, _UNSET) != getattr(reference, field.name):
            raise ImportError(f"InstanceState's field {field.name!r} changed: update new_instance_state to match")


_check_new_instance_state()


@attrs.frozen(kw_only=True)
class WorkflowMetadata:
    """Identity of the run a step belongs to (``ctx.metadata``)."""

    id: str
    workflow_name: str
    started_at: float | None


# With a __dict__ (slots=False), as WorkflowResult: built once per view, where storing each
# field in a dict costs less than the setattr call a frozen slotted class makes per field.
@attrs.frozen(kw_only=True, slots=False)
class WorkflowInstance:
    """A read-only view of one instance, as stored (``engine.get_instance``)."""

    id: str
    workflow_name: str
    status: Status
    current_step: str | None
    input: Any
    output: Any
    error: str | None
    failed_step: str | None
    step_results: dict[str, StepResult]
    compensated_steps: tuple[str, ...]
    compensation_errors: dict[str, str]
    rolled_back: bool
    created_at: float
    started_at: float | None
    completed_at: float | None
    #: Every step execution, in the order each ended (``step_results`` holds the newest of
    #: each step).
    history: tuple[StepResult, ...] = ()
    #: Why the instance failed, as a name (an exception's class name, or a ``fail`` step's
    #: error) and a cause (its message); ``error`` says both in one line.
    error_name: str | None = None
    cause: str | None = None
    #: What the instance waits for: ``{"timer": due}``, ``{"signal": name, "timeout": due}``,
    #: ``{"start": due}``, ``{"retry": due, "attempt": n}``, or for a child step
    #: ``{"child": id, "signal": ..., "timeout": None}`` (the main line's wait, else the first
    #: waiting branch's; ``None``: none; docs/waiting.md has the table).
    waiting: dict[str, Any] | None = None
    #: The instance whose child step started this one (``None``: started by a caller), and the
    #: child instances this one's child steps started, in the order they were (a step's start
    #: is stored before its child: one ended after an engine stopped between the two may list a
    #: child never stored).
    parent_id: str | None = None
    children: tuple[str, ...] = ()
    #: Every execution whose compensation failed for good, by its id (``"reserve#2"``), in the
    #: order the executions ended: ``compensation_errors`` keeps a step's newest only, as
    #: ``step_results`` does, and a loop or a map's items run a step many times.
    compensation_errors_by_execution: dict[str, str] = attrs.field(factory=dict)
    #: The instance's shared data (``with_data``, ``ctx.set``): as stored, or while it runs
    #: here as it stands now. What a dashboard shows of a running instance without a step of
    #: its own. The view's own copy, as its other values are (an engine's views: ``ctx.instance``
    #: in a step holds the run's values, not to be changed).
    data: dict[str, Any] = attrs.field(factory=dict)
    #: How many times the instance continued as new (a ``continue_as_new`` step); ``input``,
    #: ``history``, ``data`` and the rest are its latest run's (numbered from 0).
    runs: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The instance as JSON-ready values (``json.dumps`` takes it as it is): records as
        dicts with their ids, tuples as lists, dates and times as ISO 8601 text, a ``timedelta``
        as seconds, ``Decimal`` and ``UUID`` as text, bytes as base64, NaN and the infinities as
        None (as ``JSON.stringify``), dict keys as text (two keys that read the same as text,
        ``1`` and ``"1"``, keep one value: the last)."""
        return _instance_dict(self)


@attrs.frozen(kw_only=True, slots=False)  # (a __dict__: see WorkflowInstance)
class WorkflowResult:
    """The outcome of one run (``execute_workflow`` and the ``on_complete``/``on_failed`` hooks).

    ``error`` is the exception that ended the run (``None`` on success); ``compensation_errors``
    maps each compensation that still failed after its retries to its error; ``rolled_back``
    says a transactional run's driver transaction was rolled back.
    """

    success: bool
    status: Status
    instance_id: str
    data: dict[str, Any]
    output: Any
    error: BaseException | None
    failed_step: str | None
    compensated_steps: tuple[str, ...]
    compensation_errors: dict[str, str]
    rolled_back: bool
    duration: float
    metadata: WorkflowMetadata
    #: ``error`` as a name and a cause, as :class:`WorkflowInstance` has them.
    error_name: str | None = None
    cause: str | None = None
    #: As :attr:`WorkflowInstance.compensation_errors_by_execution`: every failed compensation.
    compensation_errors_by_execution: dict[str, str] = attrs.field(factory=dict)


def to_instance(state: InstanceState) -> WorkflowInstance:
    """The public view of a state. Shares values with ``state``: give it a decoded copy."""
    if state.compensated_from is not None:  # (set once anything was compensated, or failed to be)
        compensated, errors = set(state.compensated), state.compensation_errors
        history = tuple(viewed(r, compensated, errors) for r in executions(state.records))
    else:
        history = tuple(state.records)
    results = {r.step_name: r for r in history}
    for name in state.skipped:
        results.setdefault(name, StepResult(step_name=name, status="skipped"))
    if state.status == "running" and state.phase == "forward":
        _add_running(state, results)
    return WorkflowInstance(
        id=state.instance_id,
        workflow_name=state.workflow_name,
        status=state.status,
        current_step=state.lanes[MAIN].step if MAIN in state.lanes else None,
        input=state.input,
        output=state.output,
        error=state.error,
        failed_step=state.failed_step,
        step_results=results,
        compensated_steps=compensated_steps(state),
        compensation_errors=compensation_errors(state),
        compensation_errors_by_execution=compensation_errors_by_execution(state),
        rolled_back=state.rolled_back,
        created_at=state.created_at,
        started_at=state.started_at,
        completed_at=state.completed_at,
        history=history,
        error_name=state.error_name,
        cause=state.cause,
        waiting=_waiting(state),
        parent_id=state.parent_id,
        children=children_started(state.records),
        data=dict(state.data) if state.data else {},
        runs=state.runs,
    )


def _add_running(state: InstanceState, results: dict[str, StepResult]) -> None:
    """The step each lane of a running instance stands in, as a ``running`` execution (its next
    one), in place of its newest ended one: records are written as executions end, so the one
    under way has none. Not a map, child or wide parallel step's once it has begun (its
    ``started`` record stands for it, as one under way: no ``completed_at``), a lane that
    failed for good, nor an instance waiting for its delayed start. ``started_at`` where it is stored (a step that waits or waited: ``since``); ``attempts``, a
    retried step's made so far."""
    for key, lane in state.lanes.items():
        name, waiting = lane.step, lane.waiting
        if name is None or lane.failed is not None or lane.begun is not None or (waiting and "start" in waiting):
            continue
        results[name] = StepResult(
            step_name=name, status="running", lane=key, execution=state.executions.get(step_key(key, name), 0) + 1,
            started_at=None if waiting is None else waiting.get("since"),
            attempts=0 if waiting is None else waiting.get("attempt", 0),
        )


def executions(records: Sequence[StepResult]) -> list[StepResult]:
    """The step executions among ``records``, in order: what ``history`` lists (a compensation's
    own record shows as its execution's status, or ``compensation_error``, instead)."""
    return [r for r in records if r.status not in OF_COMPENSATIONS]


def children_started(records: Sequence[StepResult]) -> tuple[str, ...]:
    """The ids of the child instances that the child steps of these records started, in the
    order they were. A child step stores its start before its child (see
    ``trioflow.actors._child``): one that then found its child's id taken by another instance
    (:class:`InstanceIdConflictError`) started none."""
    started = [r for r in records if r.status == "started" and isinstance(r.output, str)]
    if not started:
        return ()
    refused = {r.id for r in records if r.error_name == "InstanceIdConflictError"}
    return tuple(r.output for r in started if r.id not in refused)


def _instance_dict(instance: WorkflowInstance) -> dict[str, Any]:
    from ._json import json_ready  # loaded on first use: import trioflow stays light

    fields = attrs.asdict(instance, recurse=False)
    fields["step_results"] = {name: r.to_dict() for name, r in instance.step_results.items()}
    fields["history"] = [r.to_dict() for r in instance.history]
    out: dict[str, Any] = json_ready(fields)
    return out


def _waiting(state: InstanceState) -> dict[str, Any] | None:
    for lane in state.lanes.values():
        if lane.waits():
            return waiting_view(lane.waiting or {})
    return None


def viewed(record: StepResult, compensated: set[int], errors: Mapping[int, str]) -> StepResult:
    """A record as callers see it: ``compensated`` once its compensation ran, or with the error
    its compensation failed with."""
    if record.status == "completed" and record.seq in compensated:
        return attrs.evolve(record, status="compensated")
    if record.seq in errors:
        return attrs.evolve(record, compensation_error=errors[record.seq])
    return record


def compensated_steps(state: InstanceState) -> tuple[str, ...]:
    """Names of the compensated executions' steps, in the order they were compensated."""
    if state.compensated_from is None:
        return ()  # (most runs: every result and view asks)
    return tuple(state.records[seq].step_name for seq in state.compensated)


def compensation_errors(state: InstanceState) -> dict[str, str]:
    """Step name -> error, for each step whose compensation failed for good (a step run more
    than once: its newest failing execution's error; see :func:`compensation_errors_by_execution`)."""
    if not state.compensation_errors:
        return {}  # (most runs: every result and view asks)
    return {state.records[seq].step_name: error for seq, error in sorted(state.compensation_errors.items())}


def compensation_errors_by_execution(state: InstanceState) -> dict[str, str]:
    """Execution id -> error, for each execution whose compensation failed for good, in the
    order the executions ended."""
    if not state.compensation_errors:
        return {}  # (most runs: every result and view asks)
    return {state.records[seq].id: error for seq, error in sorted(state.compensation_errors.items())}


def unreadable_instance(instance_id: str, workflow_name: str, error: str) -> WorkflowInstance:
    """What callers see of an instance whose stored snapshot cannot be read: failed, with why."""
    name, cause = split_description(error)
    return WorkflowInstance(
        id=instance_id, workflow_name=workflow_name, status="failed", current_step=None, input=None,
        output=None, error=error, failed_step=None, step_results={}, compensated_steps=(),
        compensation_errors={}, rolled_back=False, created_at=0.0, started_at=None, completed_at=None,
        error_name=name, cause=cause,
    )


def metadata_of(state: InstanceState) -> WorkflowMetadata:
    """``ctx.metadata`` / ``WorkflowResult.metadata`` for a state."""
    return WorkflowMetadata(id=state.instance_id, workflow_name=state.workflow_name, started_at=state.started_at)


def outer_lane(state: InstanceState, key: str) -> tuple[str, Lane] | None:
    """``(key, lane)`` of the lane running the parallel step whose branch lane ``key`` is: the
    one of its scope standing at that step (``None``: none, or ``key`` is no branch lane)."""
    parallel = parallel_of(key)
    if parallel is None:
        return None
    scope = item_scope(key)
    return next(((k, other) for k, other in state.lanes.items()
                 if other.step == parallel and k != key and item_scope(k) == scope), None)
