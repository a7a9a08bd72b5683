"""Crash exploration: stop the engine after every snapshot write, resume, check the outcome.

The engine "dies" right after write k: its whole nursery is cancelled at once (instance actors
do not compensate on an engine shutdown) and every later write is swallowed before it reaches
storage, as if the process had been killed. A fresh engine then resumes from that storage.
Write k is the fault-free run's, found in each crash run by a record it holds: the scheduler's
order moves it and groups records otherwise, so every record any run stores is crashed at
(after the write that holds it, and with that write lost), whatever else its write holds.

What is checked is what holds whatever the scheduler does. trio randomizes the order of tasks
that are ready at the same instant, so in a fail-fast parallel step a sibling's step may or may
not get to run before a failing branch cancels it: which steps ran (and so which are compensated)
may differ from run to run. Status and output must equal the fault-free run's; a step that the
crash point had recorded as completed must never run again after the resume, nor a compensation
recorded as done; and each run must compensate exactly its own completed compensable steps,
newest first.

A workflow whose child steps start other workflows (``also=``) is explored as one family: every
instance's writes count as crash points, a crash stops them all at once, and each child instance
is held to what the instance itself is held to (no execution it had completed runs again, its
compensations run exactly once, newest first). On top of that come what only a family can get
wrong: a child started twice (a second instance for one child step execution, or one its parent
does not know of, so nothing would ever compensate it), and a child whose end does not say what
its parent did with it (compensated as a unit where the parent compensated its step, completed
where the parent kept it).
"""

from __future__ import annotations

import collections
import inspect
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import attrs
import trio

from trioflow._builder import index_steps
from trioflow._callables import is_async
from trioflow._definition import (
    ChildStep, MapStep, ParallelStep, ReceiveStep, Step, StepFn, TaskStep, WorkflowDefinition, built,
)
from trioflow._engine import Engine, open_engine
from trioflow._engine_arguments import check_adapter, check_switch, refuses_unbound_arguments
from trioflow._errors import (
    InvalidArgumentError,
    StorageError,
    TrioflowError,
    UnknownJobError,
    UnknownWorkflowError,
    describe_error,
    safe_repr,
)
from trioflow._jobs import check_job
from trioflow._lanes import (
    MAIN,
    SEPARATOR,
    child_instance_id,
    child_lane,
    enclosing_scope,
    execution_id,
    in_run,
    item_of,
    item_scope,
    step_key,
)
from trioflow._retry import seed_jitter
from trioflow._snapshot import (
    RESUMABLE,
    FinishedStatus,
    InstanceState,
    Status,
    StepResult,
    WorkflowInstance,
    children_started,
    executions,
)
from trioflow._codec import decode, decode_payload, decode_stored, encode_payload
from trioflow._context import WorkflowContext
from trioflow._current import INLINE_CALL_BACK, NotInStepError, current_step
from trioflow.adapters._memory import MemoryAdapter
from trioflow.adapters._memory_driver import MemoryDriver
from trioflow.adapters._protocol import (
    Adapter, KeyedSignals, KeyedSignalsAndLoads, SignalsAndLoads, StoredInstance, creates_waiting, excludes_instances,
    keeps_families, restarts_history, sends_and_loads, sends_keyed, sends_keyed_and_loads, skips_workflows,
)

from ._engine import autojumping
from ._scripted import Hangs, Raises, Returns, ScriptedJob, Sleeps

INSTANCE_ID = "explored-instance"
#: Runs made to crash at a record before it is reported as a "no crash" point: a record that a
#: step side by side stores may be missing from a run (a fail-fast sibling cancelled it first).
_TRIES = 3


@attrs.frozen(kw_only=True)
class Outcome:
    """What one run ended with, and how often each step's callables ran."""

    status: Status
    output: Any
    #: The shared data it ended with (``ctx.set``): a step may keep its result there alone.
    data: Mapping[str, Any] = attrs.field(factory=dict)
    compensated_steps: tuple[str, ...]
    compensation_errors: tuple[str, ...]
    #: Steps in the order their completion was recorded (compensated ones included).
    completion_order: tuple[str, ...]
    #: Calls per step callable ("name", "name (compensate)") over the whole run.
    calls: Mapping[str, int]
    #: Of those, the calls made after the resume (empty for the fault-free run).
    calls_after_resume: Mapping[str, int] = attrs.field(factory=dict)
    #: Every step execution, in order.
    history: tuple[StepResult, ...] = ()
    #: The workflow the instance ran.
    workflow_name: str | None = None
    #: Every child instance the run started, their own children included however deep, by id:
    #: what each ended with and the calls of its own steps (``calls`` above are the instance's
    #: own). Empty for a workflow without child steps.
    children: Mapping[str, Outcome] = attrs.field(factory=dict)
    #: The step it failed at, and the name of the error it ended with (``None``: none).
    failed_step: str | None = None
    error_name: str | None = None
    #: A transactional run's transaction rolled back: its entity steps' writes are undone, and
    #: their compensations are not run.
    rolled_back: bool = False
    #: How many times it continued as new (``history`` is its latest run's).
    runs: int = 0
    #: The input its latest run started with (the workflow input, unless it continued as new).
    input: Any = None


@attrs.frozen(kw_only=True)
class CrashPoint:
    """One explored crash: after which write, what that write recorded, what followed."""

    #: The write's number in the run that crashed, which may differ from the fault-free run's
    #: (for a "no crash" point: the number of the fault-free run's write it was to crash at, 0
    #: for a record only crash runs stored).
    write: int
    after: str
    outcome: Outcome
    #: The write never reached storage: the engine died while making it, after the step it
    #: would have recorded had run (so that step runs again after the resume: at least once).
    lost: bool = False
    divergence: str | None


@attrs.frozen(kw_only=True)
class CrashReport:
    """The fault-free outcome and every explored crash point."""

    baseline: Outcome
    writes: int
    #: Two per write of the fault-free run (after it, and while making it, unless
    #: ``lost_writes=False``), in its order: each run crashes at the write that stores a record
    #: of it (the first not yet crashed at that way), whatever else that write holds.
    points: tuple[CrashPoint, ...]
    #: One per record, stored by any run up to its crash, that no point had crashed at yet (the
    #: records of steps side by side share writes otherwise from run to run), and each kind
    #: (after the write that stores it, and while making that write).
    extra_points: tuple[CrashPoint, ...] = ()

    @property
    def divergent(self) -> tuple[CrashPoint, ...]:
        return tuple(p for p in (*self.points, *self.extra_points) if p.divergence is not None)


class CrashDivergenceError(AssertionError):
    """A crash point whose resumed outcome differs from the fault-free run."""

    def __init__(self, message: str, report: CrashReport) -> None:
        super().__init__(message)
        self.report = report


@refuses_unbound_arguments
async def explore_crashes(
    workflow: WorkflowDefinition,
    input: Any = None,
    *,
    jobs: Mapping[str, StepFn] | None = None,
    services: Mapping[str, Any] | None = None,
    adapter_factory: Callable[[], Adapter] = MemoryAdapter,
    check: bool = True,
    signals: Sequence[tuple[str, Any] | tuple[str, Any, str]] = (),
    also: Sequence[WorkflowDefinition] = (),
    lost_writes: bool = True,
    driver_factory: Callable[[], Any] | None = None,
    before_run: Callable[[], Any] | None = None,
    after_run: Callable[[Outcome], Any] | None = None,
) -> CrashReport:
    """Run ``workflow`` once without faults, then once per snapshot write k of that run, dying
    after the write that records what write k did and resuming in a fresh engine over the same
    storage; and (``lost_writes``) once more per write k, dying while making it: it never
    reaches storage, but what it would have recorded has run, and runs again after the resume,
    as at-least-once execution has it (a step that is not idempotent then shows as a divergent
    output). A write is found by a record it stores (a step's completion, say), not by its
    number nor by all it holds: steps side by side that end in one scheduler pass share a
    write, so the order, number and grouping of a run's writes can vary. Every record that any
    run stored up to its crash is crashed at, both ways, in some run: those the points for
    write k did not reach are :attr:`CrashReport.extra_points`. A run that never stores its
    record (a step a fail-fast sibling cancelled first) is made again, up to three runs in all,
    and is then a "no crash" point. Retry jitter is drawn from a generator seeded afresh for
    each run.

    Each crash run must end with the fault-free run's status and output; no step recorded as
    completed at the crash point may run again after the resume (the step in flight may), nor a
    compensation recorded as done; and the run must compensate exactly its completed compensable
    steps, newest first (see the module docstring for why this, and not equal call counts, is
    what is compared). ``ScriptedJob`` objects (in ``jobs`` or
    in the definition) are reset before every run. ``adapter_factory()`` gives fresh, unopened storage for each run.
    ``driver_factory()`` gives the data driver (``ctx.driver``) each run's engines share, the
    one that resumes after the crash included, as they share storage (``None``: none, or a
    fresh :class:`~trioflow.adapters.MemoryDriver` when a workflow is transactional, which
    needs one). ``signals`` (``(name, payload)`` pairs) are sent to the instance right after it starts, in
    order (a receive step keeps them until it runs): timers and signals are explored like any
    step, every crash run must receive each signal exactly once. After a crash the signals
    never acknowledged are sent again; a ``(name, payload, idempotency_key)`` triple is sent with
    that key, and again after a crash whether it was acknowledged or not, as a webhook's sender
    does that had no answer.

    ``also``: the workflows that ``workflow``'s child steps start (and theirs), registered on
    every engine. The writes of child instances are crash points too; every child instance is
    checked as the instance is (its completed executions never run again, its compensations run
    once each, newest first; a completed child step counts as compensable: its child is
    compensated as a unit), no child is started twice or unknown to its parent, and each child
    the parent compensated ends ``compensated``, each it kept ``completed``
    (:attr:`Outcome.children` holds what each ended with). Raises
    :class:`CrashDivergenceError` naming the first crash point that differs (unless
    ``check=False``); returns the :class:`CrashReport`. A child step whose workflow is not in
    ``also`` raises :class:`UnknownWorkflowError` before anything runs; on an autojumping
    ``MockClock``, a run that can never end raises instead of hanging
    (:class:`InvalidArgumentError` when it waits, with no timeout, for a signal ``signals`` does
    not send).

    ``before_run()`` and ``after_run(outcome)`` (plain or ``async`` functions) are called before
    and after every run, the fault-free one and each crash run (its resume included): to reset
    and to check what your steps change outside trioflow (a fake payment service, a list of
    mails sent), which the explorer cannot see. An ``AssertionError`` from ``after_run`` is that
    crash point's divergence (unless the checks above found one first); after the fault-free run
    it is raised as it is: the workflow fails the check without any crash.
    """
    for hook, what in ((before_run, "before_run"), (after_run, "after_run")):
        if hook is not None and not callable(hook):
            raise InvalidArgumentError(f"{what} must be a function or None, got {safe_repr(hook)}")
    for factory, what in ((adapter_factory, "adapter_factory"), (driver_factory, "driver_factory")):
        if factory is not None and not callable(factory):
            # (Each run needs fresh storage: the object itself would be shared by all of them.)
            raise InvalidArgumentError(
                f"{what} must be a function giving a fresh one for each run, got {safe_repr(factory)}: pass"
                f" lambda: {type(factory).__name__}(...)")
    check_switch(check, "explore_crashes(): check")
    check_switch(lost_writes, "explore_crashes(): lost_writes")
    autojumping("explore_crashes", required=False)
    counter = _Counter()
    family = _family(built(workflow, "explore_crashes()"), also)
    _check_jobs(jobs)
    _check_also(family)
    registered = [_instrument(d, dict(jobs or {}), counter) for d in family]
    scripted = _scripted_jobs(family, jobs or {})
    shapes = {d.name: _Shape.of(d) for d in family}
    _check_signals(signals, set(shapes[workflow.name].receives.values()),
                   {name: shape_name for shape_name, shape in shapes.items() for name in shape.receives.values()})
    if driver_factory is None and any(d.transactional for d in family):
        driver_factory = MemoryDriver

    def register(engine: Engine) -> None:
        # All before any resume starts: a resumed parent may start a child at once.
        for definition in registered:
            engine.register(definition)

    async def one_run(target: _Target | None, lost: bool = False) -> tuple[Outcome, _CrashingAdapter, str | None]:
        for job in scripted:
            job.reset()
        if before_run is not None:
            await _call(before_run)
        counter.counts = collections.Counter()
        counter.numbers = {}
        counter.results, counter.changed, counter.returned, counter.unstorable = {}, [], set(), set()
        storage = adapter_factory()
        check_adapter(storage)  # (None is no storage here: the runs crash and resume on it)
        if storage is None:
            raise InvalidArgumentError("adapter_factory() gave None: it must give fresh, empty storage each time")
        driver = None if driver_factory is None else driver_factory()
        crashing = _CrashingAdapter(storage, target, lost)
        seed_jitter()  # (each run retries at the fault-free run's times, until its crash)
        sent = 0
        try:
            with trio.CancelScope() as crashing.process:
                async with open_engine(adapter=crashing, services=services, driver=driver, threads=False) as engine:
                    if await storage.list_instances(limit=1):
                        raise InvalidArgumentError(
                            "explore_crashes: adapter_factory() gave storage that holds instances already (from"
                            " an earlier run?): it must give fresh, empty storage each time it is called, e.g."
                            " a SQLiteAdapter on a new file each call")
                    register(engine)
                    await engine.start(workflow.name, input, instance_id=INSTANCE_ID)
                    for entry in signals:
                        await _send(engine, entry)
                        sent += 1
                    instance = await _end_or_never(engine, signals, fault_free=target is None)
                    children = await _children(engine, instance, bool(also))
                    data = await _shared_data(engine, [INSTANCE_ID, *children])
        except Exception:
            # What a process that has died raised on its way down (a wait() that saw its
            # instance stop, an adapter call the crash cut short) is nobody's outcome.
            if not crashing.crashed:
                raise
        before_crash = counter.counts
        counter.counts = collections.Counter()
        if crashing.crashed:
            async with open_engine(adapter=storage, services=services, driver=driver, threads=False) as engine:
                register(engine)
                # A start the dead process never acknowledged (its create was lost) is made
                # again, as its caller would; one that was is found and taken as it is.
                await engine.start(workflow.name, input, instance_id=INSTANCE_ID)
                for index, entry in enumerate(signals):
                    # Never acknowledged: the sender sends it again; and every keyed one, as a
                    # sender that keys its signals may (the key keeps it from being taken twice).
                    if index >= sent or len(entry) == 3:
                        await _send(engine, entry)
                instance = await _end_or_never(engine, signals, fault_free=False)
                children = await _children(engine, instance, bool(also))
                data = await _shared_data(engine, [INSTANCE_ID, *children])
        before, after = _by_instance(before_crash), _by_instance(counter.counts)
        outcome = _outcome(instance, before, after, {
            child_id: _outcome(child, before, after, data=data[child_id]) for child_id, child in children.items()},
            data[INSTANCE_ID])
        failed_check = None
        if after_run is not None:
            try:
                await _call(after_run, outcome)
            except AssertionError as exc:
                if target is None:
                    raise  # (the fault-free run: no crash to blame)
                failed_check = f"after_run: {str(exc) or 'an assertion failed'}"
        return outcome, crashing, failed_check

    baseline, clean, _ = await one_run(None)
    _refuse_inline_call_backs(baseline)
    points: list[CrashPoint] = []
    extra: list[CrashPoint] = []
    variants = (False, True) if lost_writes else (False,)
    # Every record the fault-free run and the crash runs below stored (up to the crash, the
    # lost write included), in the order first seen; and, for each kind of crash, the records
    # some run died right after storing (False) or while storing (True). Targets are records,
    # not writes: which records share a write varies from run to run, but a run that stores a
    # record can always be crashed at it, so every record seen is crashed at both ways.
    seen = dict.fromkeys(t for held in clean.keys for t in held)
    covered: dict[bool, set[_Target]] = {lost: set() for lost in variants}

    async def crash_at(target: _Target, lost: bool) -> tuple[Outcome, _CrashingAdapter, str | None, int]:
        """A run that crashes at ``target``: tried again (up to _TRIES runs in all) while the
        runs never store it (a step side by side that a fail-fast sibling cancelled first) and
        end as the fault-free run did."""
        for tries in range(1, _TRIES + 1):
            outcome, crashed, failed_check = await one_run(target, lost)
            seen.update(dict.fromkeys(t for held in crashed.keys for t in held))
            if crashed.crash_write is not None:
                covered[lost].update(crashed.crash_write)
                break
            if failed_check or _compare_uncrashed(baseline, outcome, shapes[workflow.name]):
                break  # (reported as it is: another run would hide it)
        return outcome, crashed, failed_check, tries

    def crash_point(outcome: Outcome, crashed: _CrashingAdapter, failed_check: str | None, lost: bool) -> CrashPoint:
        assert crashed.crash_states is not None
        # Named by the crash run's own write: another run may make its writes in another order.
        if lost:
            assert crashed.lost_write is not None
            # What it would have stored, and what was stored before it ("after" alone read as
            # the step that ran again).
            after = (f"write lost ({_describe_write([*crashed.states, crashed.lost_write], crashed.writes)}), after "
                     + (_describe_write(crashed.states, crashed.writes - 1) if crashed.writes > 1 else "nothing stored"))
        else:
            after = _describe_write(crashed.states, crashed.writes)
        divergence = counter.changed[0] if counter.changed else _compare(
            baseline, crashed.crash_states, outcome, shapes)
        return CrashPoint(write=crashed.writes, after=after, outcome=outcome, divergence=divergence or failed_check,
                          lost=lost)

    def point(target: _Target, lost: bool, ran: tuple[Outcome, _CrashingAdapter, str | None, int], k: int) -> CrashPoint:
        outcome, crashed, failed_check, tries = ran
        if crashed.crash_states is not None:
            return crash_point(outcome, crashed, failed_check, lost)
        # No run stored that record (which steps run can depend on the scheduler): only the
        # outcome is compared.
        runs = "this run" if tries == 1 else f"{tries} runs, each"
        of = f" (of the fault-free run's write {k}: {_describe_write(clean.states, k)})" if k else ""
        return CrashPoint(
            write=k, outcome=outcome, lost=lost,
            after=f"no crash: {runs} made {crashed.writes} writes, none storing {_describe_record(target)}{of}",
            divergence=_compare_uncrashed(baseline, outcome, shapes[workflow.name]) or failed_check)

    # Each write of the fault-free run, both ways: the crash runs crash at the write that stores
    # one of its records (the first not yet crashed at that way), whatever else that write holds.
    for k, held in enumerate(clean.keys, 1):
        for lost in variants:
            target = next((t for t in held if t not in covered[lost]), held[0])
            points.append(point(target, lost, await crash_at(target, lost), k))
    # Then each record, stored by any of those runs up to its crash (or by the runs here), that
    # no run has crashed at yet that way: one more run for each (it may store others).
    first_write = {t: k for k, held in enumerate(clean.keys, 1) for t in held}
    tried: set[tuple[_Target, bool]] = set()
    while todo := next(((t, lost) for t in seen for lost in variants
                        if t not in covered[lost] and (t, lost) not in tried), None):
        tried.add(todo)
        extra.append(point(*todo, await crash_at(*todo), first_write.get(todo[0], 0)))
    report = CrashReport(baseline=baseline, writes=clean.writes, points=tuple(points), extra_points=tuple(extra))
    if check and report.divergent:
        first = report.divergent[0]
        when = "while making" if first.lost else "after"
        of = f"of {clean.writes}" if first.write <= clean.writes else f"(the fault-free run made {clean.writes})"
        # (0: a "no crash" point for a record only crash runs stored.)
        write = f"snapshot write {first.write} {of}" if first.write else "a write only crash runs made"
        raise CrashDivergenceError(
            f"workflow {workflow.name!r}: crash {when} {write} ({first.after}), then resume: {first.divergence}",
            report,
        )
    return report


async def _call(hook: Callable[..., Any], *args: Any) -> None:
    """Call a hook given to :func:`explore_crashes`, a plain or an ``async`` function."""
    result = hook(*args)
    if inspect.isawaitable(result):
        await result


class _Counter:
    def __init__(self) -> None:
        #: Calls per calling instance and step callable ("name", "name (compensate)").
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        #: What each attempt of a step (instance, execution, attempt, compensating) returned
        #: first in this run, encoded: its job's result ("result"), or, for a result that
        #: cannot be stored as it is, the step's output its ``output=`` mapper made of it
        #: ("output"); and what the run found when one ran again and returned something else,
        #: or raised.
        self.results: dict[tuple[tuple[str, str, int, bool], str], bytes] = {}
        self.changed: list[str] = []
        #: The attempts that returned in this run, and of those, the ones whose result cannot
        #: be stored as it is (compared by their mapped output).
        self.returned: set[tuple[str, str, int, bool]] = set()
        self.unstorable: set[tuple[str, str, int, bool]] = set()
        #: For each scripted job (by id): the script position each attempt got, in this run.
        self.numbers: dict[int, dict[tuple[str, str, int, bool], int]] = {}


@attrs.frozen(kw_only=True)
class _Shape:
    """What the checks need to know of one workflow of the family."""

    #: Steps whose completed executions its compensation undoes: task steps with a
    #: compensation, and child steps (their child is compensated as a unit).
    compensable: frozenset[str]
    #: Of those, the entity steps: a rolled-back transaction undid them instead.
    entity_steps: frozenset[str]
    #: Attempts each task step may make (its compensation has as many).
    attempts_of: Mapping[str, int]
    child_steps: frozenset[str]
    #: Whether its end may depend on timing: steps run side by side (parallel or map steps:
    #: which fails first, and which completes before a fail-fast cancels it, is the scheduler's
    #: choice), or a workflow timeout (``timed``: a step run again after a resume takes its time
    #: again, and may reach the timeout the fault-free run did not).
    timing: bool
    #: Its workflow timeout (``None``: none).
    timeout: float | None
    #: The signal each receive step takes, by step.
    receives: Mapping[str, str]
    #: Whether receive steps that may wait at once (in parallel branches, in map items) take
    #: signals of one name: which of them takes which signal is not specified, so the run's
    #: output may differ by that alone.
    contested: bool
    #: The steps outside the lanes of those receive steps (and the lanes inside them): what they
    #: complete does not depend on which receive took which signal.
    settled: frozenset[str]

    @classmethod
    def of(cls, definition: WorkflowDefinition) -> _Shape:
        steps = [s for s, _ in definition.lookup.values()]
        children = frozenset(s.name for s in steps if isinstance(s, ChildStep))
        # (The lanes a map's branch steps live in, and those of fan-outs inside them: run per item.)
        in_items = {definition.lookup[inner.name][1] for s in steps if isinstance(s, MapStep)
                    for inner in _nested_steps(s.branch.steps)}
        # Receives wait at once only in a fan-out's lanes: one on the main line waits alone.
        lanes_of: dict[str, set[str]] = collections.defaultdict(set)
        for step, lane in definition.lookup.values():
            if isinstance(step, ReceiveStep) and lane != MAIN:
                lanes_of[step.signal].add(lane)
        contested = [lanes for lanes in lanes_of.values() if len(lanes) > 1 or not lanes.isdisjoint(in_items)]
        contested_lanes = {lane for lanes in contested for lane in lanes}
        return cls(
            compensable=children | {s.name for s in steps if isinstance(s, TaskStep) and s.compensate is not None},
            entity_steps=frozenset(s.name for s in steps if isinstance(s, TaskStep) and s.entity is not None),
            attempts_of={s.name: (s.retry.max_attempts if s.retry is not None else 1)
                         for s in steps if isinstance(s, TaskStep)},
            child_steps=children,
            timing=definition.timeout is not None or any(isinstance(s, (ParallelStep, MapStep)) for s in steps),
            timeout=definition.timeout,
            receives={s.name: s.signal for s in steps if isinstance(s, ReceiveStep)},
            contested=bool(contested),
            settled=frozenset(name for name, (_, lane) in definition.lookup.items()
                              if not any(lane == c or lane.startswith(f"{c}{SEPARATOR}") for c in contested_lanes)),
        )


async def _send(engine: Engine, entry: tuple[str, Any] | tuple[str, Any, str]) -> None:
    """Send one entry of ``signals=`` to the explored instance (with its key, if it has one)."""
    await engine.signal(INSTANCE_ID, entry[0], entry[1], idempotency_key=entry[2] if len(entry) == 3 else None)


def _check_signals(signals: object, received: Collection[str], in_family: Mapping[str, str]) -> None:
    """``signals`` as ``(name, payload)`` pairs or ``(name, payload, idempotency_key)`` triples
    whose names a receive step of the explored workflow takes (``received``; they are sent to
    its instance only, not to its children: ``in_family`` names the workflow of ``also=`` that
    takes each signal); anything else is an :class:`InvalidArgumentError` before any run (a
    misspelt name would be explored as a receive that times out, and pass)."""
    if not isinstance(signals, (list, tuple)):
        raise InvalidArgumentError(f"signals must be a list of (name, payload) pairs, got {safe_repr(signals)}")
    for entry in signals:
        if not (isinstance(entry, (list, tuple)) and len(entry) in (2, 3) and isinstance(entry[0], str)
                and (len(entry) == 2 or (isinstance(entry[2], str) and entry[2]))):
            raise InvalidArgumentError(
                f"signals must be (name, payload, idempotency_key) triples (the key a non-empty string) or"
                f" (name, payload) pairs, got {safe_repr(entry)}")
        if entry[0] not in received:
            if entry[0] in in_family:
                raise InvalidArgumentError(
                    f"signals: signal {entry[0]!r} is taken only by workflow {in_family[entry[0]]!r}, a child (in"
                    " also=), and signals= is sent to the explored instance only, not to its children")
            known = ", ".join(repr(name) for name in sorted(received)) or "none"
            raise InvalidArgumentError(
                f"signals: no receive step of the workflow (or of those in also=) takes signal {entry[0]!r}"
                f" (they take: {known})")


def _family(workflow: WorkflowDefinition, also: object) -> tuple[WorkflowDefinition, ...]:
    """``workflow`` and the workflows of ``also``, each once (the explored one listed again
    there, or one listed twice, is the same workflow); two definitions of one name are an
    :class:`InvalidArgumentError`, as is ``also`` given one definition rather than a list."""
    if not isinstance(also, (list, tuple)):
        hint = f" (one workflow: also=[{also.name!r}'s definition])" if isinstance(also, WorkflowDefinition) else ""
        raise InvalidArgumentError(f"also= takes a list of workflow definitions, got {safe_repr(also)}{hint}")
    family = [workflow]
    for definition in also:
        built(definition, "also=")
        known = next((d for d in family if d.name == definition.name), None)
        if known is None:
            family.append(definition)
        elif known != definition:
            raise InvalidArgumentError(f"also= holds another definition of workflow {definition.name!r}: give one")
    return tuple(family)


def _check_jobs(jobs: object) -> None:
    """Jobs as ``engine.jobs.register`` takes them (a behaviour given where its ScriptedJob goes
    is named as such): each run would otherwise fail the step with a bare error, and pass."""
    if jobs is None:
        return
    if not isinstance(jobs, Mapping):
        raise InvalidArgumentError(f"jobs= takes a mapping of job names to jobs, got {safe_repr(jobs)}")
    for name, fn in jobs.items():
        if isinstance(fn, (Returns, Raises, Sleeps, Hangs)):
            raise InvalidArgumentError(f"jobs=: job {name!r} is a behaviour, not a job: give ScriptedJob({fn!r})")
        check_job(name, fn)


def _check_also(family: Sequence[WorkflowDefinition]) -> None:
    """Refuse a child step that starts a workflow not given (in ``also``): every run would
    explore a parent failing at that step with :class:`UnknownWorkflowError`."""
    names = {d.name for d in family}
    for definition in family:
        for step, _ in definition.lookup.values():
            if isinstance(step, ChildStep) and step.workflow not in names:
                raise UnknownWorkflowError(
                    f"step {step.name!r} of workflow {definition.name!r} starts workflow {step.workflow!r},"
                    " which is not in also=")


async def _end_or_never(
    engine: Engine, signals: Sequence[tuple[str, Any] | tuple[str, Any, str]], *, fault_free: bool,
) -> WorkflowInstance:
    """``engine.wait`` for the explored instance, bounded: on a ``MockClock`` that autojumps, a
    run where nothing is left to happen (a receive step, without a timeout, for a signal
    ``signals=`` does not send) jumps to this deadline at once, rather than hang the test for
    ever. The fault-free run then raises (:class:`InvalidArgumentError` naming the signal, or
    :class:`TrioflowError`); a crash run gives the instance as it stands, not ended, which the
    checks report as that crash point's divergence (a step that is not idempotent sent the
    resumed run elsewhere)."""
    if not fault_free:
        return await _as_it_ends(engine, INSTANCE_ID)
    with trio.move_on_after(NEVER_ENDS_AFTER):
        return await engine.wait(INSTANCE_ID)
    sent = ", ".join(repr(entry[0]) for entry in signals) or "none"
    for instance in await engine.get_instances():
        waiting = instance.waiting or {}
        name = waiting.get("signal")
        if instance.status in RESUMABLE and isinstance(name, str) and "child" not in waiting \
                and waiting.get("timeout") is None:
            if instance.id != INSTANCE_ID:
                raise InvalidArgumentError(
                    f"child instance {instance.id!r} waits for signal {name!r} with no timeout, and signals= is"
                    " sent to the explored instance only, not to its children: the run can never end (give that"
                    " receive step a timeout)")
            raise InvalidArgumentError(
                f"instance {instance.id!r} waits for signal {name!r} with no timeout, and no signal of that name"
                f" is left to send (signals= sends: {sent}): the run can never end")
    stuck = "; ".join(
        f"{instance.id!r} at step {instance.current_step!r}, {_stands(instance.waiting)}"
        for instance in await engine.get_instances() if instance.status in RESUMABLE)
    raise TrioflowError(f"the explored run had not ended after {NEVER_ENDS_AFTER:g} seconds (signals= sends: {sent});"
                        f" not ended: {stuck or 'none'}")


def _stands(waiting: Mapping[str, Any] | None) -> str:
    """What an instance that never ended stands at, in words."""
    if not waiting:
        return "running (it, or a step inside it, has no timeout= and never returns?)"
    if "child" in waiting:
        return f"waiting for its child {waiting['child']!r}"
    return f"waiting for {dict(waiting)}"


async def _as_it_ends(engine: Engine, instance_id: str) -> WorkflowInstance:
    """The instance once it has ended, or as it stands if it has not after
    :data:`NEVER_ENDS_AFTER` (the checks then report it as not ended)."""
    with trio.move_on_after(NEVER_ENDS_AFTER):
        return await engine.wait(instance_id)
    stands = await engine.get_instance(instance_id)
    assert stands is not None  # (it was started, and nothing here deletes it)
    return stands


#: Virtual seconds (about a century) after which a run of ``explore_crashes`` is taken to
#: never end.
NEVER_ENDS_AFTER = 3.2e9


async def _children(engine: Engine, root: WorkflowInstance, family: bool) -> dict[str, WorkflowInstance]:
    """Every instance descended from ``root``, each once it has ended, by id: those its parents
    list, and (``family``: child workflows are registered) any stored with a parent among them
    that its parent does not list, which the checks then report."""
    found: dict[str, WorkflowInstance] = {}
    todo = list(root.children)
    while True:
        while todo:
            child_id = todo.pop(0)
            if child_id not in found and await engine.get_instance(child_id) is not None:
                # (Not stored: its parent stored the step's start, then the crash came before
                # it stored the child, and the parent ended before it started it again.)
                # A child a failing parent cancelled may still be compensating: wait for its end
                # (bounded: a crash run may have sent it to a wait that never ends).
                found[child_id] = child = await _as_it_ends(engine, child_id)
                todo += child.children
        if not family:
            return found
        members = {root.id, *found}
        todo = [i.id for i in await engine.get_instances() if i.parent_id in members and i.id not in found]
        if not todo:
            return found



def _refuse_inline_call_backs(baseline: Outcome) -> None:
    """The explorer runs plain ``def`` jobs inline, as the test engine does (a worker thread
    would let the autojump clock race ahead of it): one that calls back into trio fails in every
    run alike, which no crash point would tell from the fault-free run. Refused instead."""
    for outcome in (baseline, *baseline.children.values()):
        for record in outcome.history:
            if INLINE_CALL_BACK in (record.cause or ""):
                raise InvalidArgumentError(
                    f"explore_crashes: the job of step {record.step_name!r} of workflow {outcome.workflow_name!r}"
                    " is a plain def that calls back into trio (trio.from_thread), which it can only do from the"
                    " worker thread an engine runs it in; the explorer runs plain jobs inline, in trio's"
                    " thread: make it an async def to explore it")


def _by_instance(counts: collections.Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (instance_id, key), n in counts.items():
        out.setdefault(instance_id, {})[key] = n
    return out


async def _shared_data(engine: Engine, instance_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The shared data each instance's row holds (an instance's view does not show it)."""
    data = {}
    for instance_id in instance_ids:
        stored = await engine.adapter.load(instance_id)
        data[instance_id] = {} if stored is None else dict(decode_stored(stored).data)
    return data


def _outcome(
    instance: WorkflowInstance, before: Mapping[str, Mapping[str, int]], after: Mapping[str, Mapping[str, int]],
    children: Mapping[str, Outcome] | None = None, data: Mapping[str, Any] | None = None,
) -> Outcome:
    calls = collections.Counter(before.get(instance.id, {}))
    calls.update(after.get(instance.id, {}))
    return Outcome(
        history=instance.history, workflow_name=instance.workflow_name,
        status=instance.status, output=instance.output, data=data or {}, compensated_steps=instance.compensated_steps,
        compensation_errors=tuple(instance.compensation_errors),
        completion_order=tuple(r.step_name for r in instance.history if r.status in ("completed", "compensated")),
        calls=dict(calls), calls_after_resume=dict(after.get(instance.id, {})), children=children or {},
        failed_step=instance.failed_step, error_name=instance.error_name, rolled_back=instance.rolled_back,
        runs=instance.runs, input=instance.input,
    )


def _same_output(a: Any, b: Any) -> bool:
    """Equal outputs: by value, or stored alike (a NaN equals no value, itself included)."""
    if a == b:
        return True
    try:
        return encode_payload(a, "an output") == encode_payload(b, "an output")
    except TrioflowError:
        return False


def _compare_uncrashed(base: Outcome, got: Outcome, shape: _Shape) -> str | None:
    if got.status != base.status or (not _same_output(got.output, base.output) and not _signals_swapped(base, got, shape)):
        return f"a run without a crash ended {got.status!r} with {got.output!r}, another {base.status!r}"
    return _same_runs(base, got)


def _same_runs(base: Outcome, got: Outcome) -> str | None:
    """Whether ``got``, ending as the fault-free run did, continued as new as often, its last
    run started with the same input: what a run hands its next (its ``continue_as_new``
    step's input, a choice before it) must not depend on the calls it makes. (Not when both
    timed out: a re-run's time may reach the timeout a run sooner.)"""
    if got.status == "timed_out" or (got.runs == base.runs and (not base.runs or _same_output(got.input, base.input))):
        return None
    return (f"continued as new {got.runs} times, its last run with input {got.input!r}; the fault-free run"
            f" {base.runs} times, with {base.input!r}: what a continue_as_new step hands on must not depend on"
            " the calls its run makes")


def _signals_swapped(base: Outcome, got: Outcome, shape: _Shape) -> bool:
    """Whether two runs whose outputs differ may differ by which receive step took which
    signal alone: receive steps that wait at once for one name take them in either order
    (docs/waiting.md). Each signal must still be taken exactly once: the payloads taken, by
    signal name, are those the fault-free run took."""
    return shape.contested and _taken(base, shape) == _taken(got, shape) and _settled(base, shape) == _settled(got, shape)


def _settled(outcome: Outcome, shape: _Shape) -> collections.Counter[str]:
    """The steps a run completed outside the lanes whose receives contest signals (inside
    them, which took which signal may send a lane elsewhere)."""
    return collections.Counter(name for name in outcome.completion_order if name in shape.settled)


def _taken(outcome: Outcome, shape: _Shape) -> collections.Counter[tuple[str, bytes]]:
    return collections.Counter(
        (shape.receives[r.step_name], encode_payload(r.output, "a signal's payload")) for r in outcome.history
        if r.status == "completed" and r.step_name in shape.receives)


def _compare(
    base: Outcome, at_crash: Mapping[str, InstanceState], got: Outcome, shapes: Mapping[str, _Shape],
) -> str | None:
    assert got.workflow_name is not None
    problem = _ends_as(base, got, shapes)
    if problem is not None:
        return problem
    # A compensation that worked in the fault-free run and fails after a crash was run twice
    # and is not idempotent (a refund refused as "already refunded"), whatever the timing.
    # (Counted: in a loop, one execution's compensation may fail in the fault-free run too.)
    extra = collections.Counter(got.compensation_errors) - collections.Counter(base.compensation_errors)
    twice = [name for name in extra if name in base.compensated_steps]
    if twice:
        return (f"failed to compensate {twice}, which the fault-free run compensated: a compensation run"
                " again after the crash must be idempotent")
    if not any(shape.timing for shape in shapes.values()):
        # One step at a time and no workflow timeout, a run ends as the fault-free one did in
        # every respect, and so does each child. (Otherwise which step fails first, or is
        # reached by the timeout, may differ: the checks below hold whatever it was.)
        for child_id, mine in (("", got), *got.children.items()):
            theirs = base if not child_id else base.children.get(child_id)
            problem = None if theirs is None else _same_run(theirs, mine, shapes)
            if problem is not None:
                return f"child {child_id!r}: {problem}" if child_id else problem
    problem = _check_instance(at_crash.get(INSTANCE_ID), got, shapes[got.workflow_name])
    if problem is not None:
        return problem
    for child_id, child in got.children.items():
        assert child.workflow_name is not None
        problem = _check_instance(at_crash.get(child_id), child, shapes[child.workflow_name])
        if problem is not None:
            return f"child {child_id!r}: {problem}"
    return _check_family(got, at_crash, shapes)


def _ends_as(base: Outcome, got: Outcome, shapes: Mapping[str, _Shape]) -> str | None:
    """Whether ``got`` ends with the fault-free run's status and output: a status other than
    the fault-free one's only by a workflow timeout a re-run may reach, its own or a child's."""
    assert got.workflow_name is not None
    if got.status != base.status and not (
            got.status == "timed_out" and _may_time_out(base, shapes[got.workflow_name])) and not (
            got.status == "failed" and _a_child_may_time_out(base, got, shapes)):
        return f"final status {got.status!r}, the fault-free run ended {base.status!r}"
    if got.status == base.status and not _same_output(got.output, base.output) and not _signals_swapped(
            base, got, shapes[got.workflow_name]):
        return f"output {got.output!r}, the fault-free run gave {base.output!r}"
    return _same_runs(base, got) if got.status == base.status else None


def _same_run(base: Outcome, got: Outcome, shapes: Mapping[str, _Shape]) -> str | None:
    """Where a run of a deterministic family (one step at a time, no workflow timeout) differs
    from the fault-free run of the same instance, in any respect."""
    problem = _ends_as(base, got, shapes)
    if problem is not None:
        return problem
    if (got.failed_step, got.error_name) != (base.failed_step, base.error_name):
        return (f"ended with {got.error_name} at step {got.failed_step!r}, the fault-free run with"
                f" {base.error_name} at step {base.failed_step!r}")
    differ = sorted(key for key in {*got.data, *base.data}
                    if key not in got.data or key not in base.data or not _same_output(got.data[key], base.data[key]))
    if differ:
        # (A step that keeps its result with ctx.set, returning nothing, and ran again.)
        again = sorted(step for step in got.calls_after_resume if not step.endswith(" (compensate)"))
        return (f"shared data {differ} ended {[got.data.get(k) for k in differ]!r}, the fault-free run"
                f" {[base.data.get(k) for k in differ]!r}; steps run after the resume: {again} (one that"
                " sets it is not idempotent)")
    for what, mine, theirs in (("compensated", got.compensated_steps, base.compensated_steps),
                               ("failed to compensate", got.compensation_errors, base.compensation_errors),
                               ("took the path", got.completion_order, base.completion_order)):
        if mine != theirs:
            # (The path: a choice that decides otherwise when run again, a condition on
            # something besides the run's own data, is not deterministic.)
            return f"{what} {list(mine)}, the fault-free run {list(theirs)}"
    return None


def _a_child_may_time_out(base: Outcome, got: Outcome, shapes: Mapping[str, _Shape]) -> bool:
    """Whether a child of ``got`` ended ``timed_out`` where a re-run may make it (see
    :func:`_may_time_out`), and so fail its parent's child step."""
    return any(child.status == "timed_out" and child_id in base.children and child.workflow_name is not None
               and _may_time_out(base.children[child_id], shapes[child.workflow_name])
               for child_id, child in got.children.items())


def _may_time_out(base: Outcome, shape: _Shape) -> bool:
    """Whether a crash run may reach the workflow timeout the fault-free run did not: a step
    run again after the resume takes its time again, so a run as long as the fault-free one
    and its longest step together may pass it (a re-run only adds time)."""
    spans = [(r.started_at, r.completed_at) for r in base.history
             if r.started_at is not None and r.completed_at is not None]
    if shape.timeout is None or not spans:
        return False
    took = max(end for _, end in spans) - min(start for start, _ in spans)
    return took + max(end - start for start, end in spans) >= shape.timeout


def _check_instance(at_crash: InstanceState | None, got: Outcome, shape: _Shape) -> str | None:
    """What must hold of one instance of the run, given what was stored of it at the crash
    (``None``: nothing, it did not exist yet)."""
    if got.runs != (0 if at_crash is None else at_crash.runs):
        # It continued as new since: its history is a later run's, which holds nothing of what
        # was stored at the crash, nor counts the calls of the runs between. (A step that ran
        # again and returned otherwise is still found, by the attempt it made: see _returned.)
        return None
    records = at_crash.records if at_crash is not None else ()
    stored = executions(records)
    if [r.id for r in got.history[:len(stored)]] != [r.id for r in stored]:
        return "the history stored before the crash was not kept as it was"
    # Every call after the resume belongs to an execution recorded after the crash point (a step
    # in flight at the crash runs again; a loop runs a step again as a new execution): none to
    # an execution that had completed before it.
    later: collections.Counter[str] = collections.Counter()
    for r in got.history[len(stored):]:
        later[r.step_name] += max(r.attempts, 1)
    for step, calls in got.calls_after_resume.items():
        if step.endswith(" (compensate)"):
            continue
        if calls > later[step]:
            return (f"step {step!r} ran {calls} times after the resume, but only {later[step]} attempts of it"
                    " were recorded after the crash: an execution that had completed ran again")
    done_before: collections.Counter[str] = collections.Counter()
    if at_crash is not None:
        done_before.update(records[seq].step_name for seq in at_crash.compensated)
        done_before.update(records[seq].step_name for seq in at_crash.compensation_errors)
    # Compensations that ran to their end after the resume, whether they succeeded or failed
    # for good (each made its attempts then).
    done_after = collections.Counter(
        r.step_name for r in got.history if r.status == "compensated" or r.compensation_error is not None) - done_before
    for step in shape.compensable:
        calls = got.calls_after_resume.get(f"{step} (compensate)", 0)
        allowed = (done_after[step] + 1) * shape.attempts_of.get(step, 1)  # + 1: one in flight at the crash
        if calls > allowed:
            return f"step {step!r} had been compensated before the crash but was compensated again"
    if got.status != "completed":
        expected = tuple(
            r.step_name for r in reversed(got.history)
            if r.status in ("completed", "compensated") and r.step_name in shape.compensable
            and r.compensation_error is None and not (got.rolled_back and r.step_name in shape.entity_steps)
        )
        if got.compensated_steps != expected:
            return (f"compensated steps {list(got.compensated_steps)}; its completed compensable steps,"
                    f" newest first, are {list(expected)}")
    elif got.compensated_steps:
        return f"a completed run compensated {list(got.compensated_steps)}"
    return None


def _check_family(got: Outcome, at_crash: Mapping[str, InstanceState], shapes: Mapping[str, _Shape]) -> str | None:
    """What must hold between the instances of a family: each child is started once, by a
    parent that knows it (or nothing would ever compensate it), and ends as its parent's step
    says (compensated with it, or kept)."""
    members = {INSTANCE_ID: got, **got.children}
    listed: dict[str, str] = {}
    for instance_id, outcome in members.items():
        assert outcome.workflow_name is not None
        shape = shapes[outcome.workflow_name]
        # (A step whose execution never ended, or was cut short, may name a child never stored:
        # its start is stored before the child is, and the parent ended, or cut the step short,
        # before it took the step up again.)
        ended = {r.id for r in outcome.history if r.status != "started"
                 and not (r.status == "failed" and r.error_name == "Cancelled")}
        started = set(children_started(outcome.history))  # (not those whose id was taken)
        for r in outcome.history:
            if r.status == "started" and r.step_name in shape.child_steps and r.output in started:
                child_id = r.output
                if child_id in listed:
                    return f"child {child_id!r} was started twice (by {listed[child_id]!r} and {instance_id!r})"
                listed[child_id] = instance_id
                if child_id not in members and r.id in ended:
                    return f"instance {instance_id!r} started child {child_id!r}, which is not stored"
            elif r.step_name in shape.child_steps and r.status in ("completed", "compensated") \
                    and r.compensation_error is None:
                child_id = child_instance_id(instance_id, r.id, outcome.runs)
                child = members.get(child_id)
                wanted = "compensated" if r.status == "compensated" else "completed"
                if child is None or child.status != wanted:
                    found = "not stored" if child is None else f"ended {child.status!r}"
                    return (f"step {r.step_name!r} of {instance_id!r} is {r.status} but its child {child_id!r} is"
                            f" {found}, not {wanted!r}")
    # (Children of a run before a parent's latest, which continued as new since: its history,
    # the latest run's, lists none of them.)
    earlier = {child_id for parent_id, outcome in members.items() if outcome.runs for child_id in got.children
               if child_id.startswith(f"{parent_id}{SEPARATOR}")
               and child_lane(parent_id, child_id, outcome.runs) is None}
    for child_id in got.children:
        if child_id not in listed and child_id not in earlier:
            before = " (it was stored before the crash)" if child_id in at_crash else ""
            return (f"child {child_id!r} was started{before} but no parent lists it: a child step started a second"
                    " child, or lost the one it started, which nothing will compensate")
    return None


def _describe_write(states: Sequence[tuple[str, InstanceState]], k: int) -> str:
    """What write k (of ``states``, a run's writes in order) stored, in words."""
    instance_id, state = states[k - 1]
    who = "" if instance_id == INSTANCE_ID else f"child {instance_id!r}: "
    before = next((s for i, s in reversed(states[:k - 1]) if i == instance_id), None)
    done, rest = _write_parts(state, before)
    return f"{who}{', '.join(done)}{rest}"


#: One thing a write recorded (see :func:`_write_records`): its instance, and the thing in words.
_Record = tuple[str, str]
#: A record as a run stored it: the record, and how many of the run's writes had stored it by
#: then (it included).
_Target = tuple[_Record, int]


def _write_records(instance_id: str, state: InstanceState, before: InstanceState | None) -> tuple[_Record, ...]:
    """What a write of ``instance_id`` that turned ``before`` into ``state`` recorded, one by
    one, as the same in any run that stores them: each step record it added (or compensated),
    or else what it says of the instance. The records of steps that end together in one
    scheduler pass share a write, and which do varies from run to run, so a write is crashed
    at by each record it holds, not by the set (a set the next run may never store together)."""
    done, rest = _write_parts(state, before)
    return tuple((instance_id, what) for what in done) or ((instance_id, rest),)


def _describe_record(target: _Target) -> str:
    """A record a run stored (see :data:`_Target`), in words."""
    (instance_id, what), n = target
    who = "" if instance_id == INSTANCE_ID else f"child {instance_id!r}: "
    return f"{who}{what}" + (f" (again: write {n} of those storing it)" if n > 1 else "")


def _write_parts(state: InstanceState, before: InstanceState | None) -> tuple[tuple[str, ...], str]:
    """What a write that turned ``before`` (``None``: nothing stored) into ``state`` recorded:
    each record it added or compensated, in words, and what else it says of the instance."""
    if before is None:
        return (), "instance created"
    if state.runs != before.runs:
        return (), f"run {state.runs} started (continued as new)"
    if len(state.records) > len(before.records):
        done = tuple(_described(r) for r in state.records[len(before.records):])
        # The main line's last step is recorded by the instance's terminal checkpoint.
        return done, f"; instance {state.status}" if state.phase == "done" else ""
    if state.phase == "compensating" and before.phase != "compensating":
        # By the error's name, not its message: a message may differ from run to run (an
        # object's address, a time, an id), and a write named anew in every run would be a
        # new record to crash at in each, for ever.
        return (), f"failure recorded ({state.error_name} at step {state.failed_step!r}); compensation starts"
    # A wait stored (a timer's due time, a signal's or a child's wait, a retry's delay): named by
    # its step and what it waits for, never by its times, which differ from run to run.
    waits = [f"step {lane.step!r} waits for {_waited_for(lane.waiting)}" for key, lane in state.lanes.items()
             if lane.waiting is not None and lane.step is not None
             and ((was := before.lanes.get(key)) is None or was.waiting is None or was.step != lane.step)]
    return (), "; ".join(waits) if waits else f"instance {state.status}"


def _waited_for(waiting: Mapping[str, Any]) -> str:
    """What a lane's stored wait is for, in words (see ``Lane.waiting``)."""
    if "signal" in waiting:
        return f"signal {waiting['signal']!r}"
    if "child" in waiting:
        return "its child"
    if "attempt" in waiting:
        return "its next attempt"
    if "start" in waiting:
        return "its start"
    return "its timer" if "timer" in waiting else "its branches or items"


def _nested_steps(steps: Sequence[Step]) -> Iterator[Step]:
    """``steps`` and every step inside them (the steps of their branches, in turn)."""
    for step in steps:
        yield step
        if isinstance(step, ParallelStep):
            for branch in step.branches:
                yield from _nested_steps(branch.steps)
        elif isinstance(step, MapStep):
            yield from _nested_steps(step.branch.steps)


def _described(record: StepResult) -> str:
    run = f" (execution {record.execution})" if record.execution > 1 else ""
    scope = item_scope(record.lane)  # (a record of a branch in a map item is the item's too)
    item, outer = item_of(scope), enclosing_scope(scope)
    of_item = "" if item is None else f" of item {item[1]} of {item[0]!r}" + (f" in {outer!r}" if outer else "")
    if record.status == "compensation_failed":
        return f"the compensation of step {record.step_name!r}{of_item}{run} failed for good"
    # (The record of a compensation that ran carries its execution's id: described as it was
    # when the header said it, so that crash points keep their names.)
    status = "compensated" if record.status == "compensation_completed" else record.status
    return f"step {record.step_name!r}{of_item}{run} {status}"


class _ProcessGone(Exception):
    """What a write gets from storage once the simulated process has died."""


#: The adapter methods an engine does without (see ``stores_signals``, ``waits_out_of_memory``).
_OPTIONAL_METHODS = ("send_signal", "signals", "send_signal_and_load", "send_keyed_signal_and_load", "due",
                     "next_wake")


@attrs.frozen
class _Pending:
    """A write about to be made: what its row will hold, and what it records."""

    instance_id: str
    start: bytes | None
    records: list[bytes]
    state: InstanceState
    #: What it records (see :func:`_write_records`), each with its count in the run.
    held: tuple[_Target, ...]


class _CrashingAdapter:
    """Delegates to real storage, counts writes, and kills the engine after the write that
    stores the record ``target``, whatever else it stores (``lost``: while making it, before it
    reaches storage; ``None``: never)."""

    def __init__(self, inner: Adapter, target: _Target | None, lost: bool = False) -> None:
        self.inner = inner
        self.target = target
        self.lost = lost
        self.writes = 0
        self.crashed = False
        #: The instance each write was for, and what it stored, in write order.
        self.states: list[tuple[str, InstanceState]] = []
        #: What each write recorded, in write order (the lost one included).
        self.keys: list[tuple[_Target, ...]] = []
        #: What the write the crash came right after (or the lost one) recorded (``None``: no crash).
        self.crash_write: tuple[_Target, ...] | None = None
        #: The write the crash cut short (``lost``): its instance, and what it would have stored.
        self.lost_write: tuple[str, InstanceState] | None = None
        #: Every instance written so far, as stored when the engine died (``None``: it did not).
        self.crash_states: dict[str, InstanceState] | None = None
        self.process: trio.CancelScope | None = None
        #: Each instance's row as this run wrote it (its start, its records), and the state it
        #: holds: what a write is about to record is known before it reaches storage, to crash
        #: at it with no other task's write in between, or to lose it.
        self._rows: dict[str, tuple[bytes | None, list[bytes]]] = {}
        self._last: dict[str, InstanceState] = {}
        self._recorded: collections.Counter[_Record] = collections.Counter()
        for name in _OPTIONAL_METHODS:
            if not callable(getattr(inner, name, None)):
                # The engine runs without what the storage it wraps has not (signals, waiting
                # out of memory), as it would on that storage itself.
                setattr(self, name, None)
        if not sends_keyed(inner):
            setattr(self, "send_keyed_signal", None)  # (keyed signals refused, as the engine refuses them there)

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def create(
        self, instance_id: str, workflow_name: str, status: Status, *, start: bytes, header: bytes,
        parent_id: str | None = None, wake_at: float | None = None,
    ) -> bool:
        write = await self._before_write(instance_id, header, (), first_seq=0, start=start)
        extra: dict[str, Any] = {"parent_id": parent_id} if parent_id is not None and keeps_families(self.inner) else {}
        waits_apart = wake_at is not None and not creates_waiting(self.inner)
        if wake_at is not None and not waits_apart:
            extra["wake_at"] = wake_at
        created = await self.inner.create(instance_id, workflow_name, status, start=start, header=header, **extra)
        if created and waits_apart:
            # (An adapter written before create() took it: its wake time in a write of its own,
            # as the engine stored it before. A crash in between leaves a row with none.)
            await self._after_write(write)
            write = await self._before_write(instance_id, header, (), first_seq=0)
            await self.inner.checkpoint(instance_id, status, header, [], first_seq=0, wake_at=wake_at)
        await self._after_write(write, stored=created)
        return created

    async def checkpoint(
        self, instance_id: str, status: Status, header: bytes, records: Sequence[bytes], *,
        first_seq: int, start: bytes | None = None, consumed: Sequence[int] = (), wake_at: float | None = None,
        notify: tuple[str, str, bytes] | None = None, restart: bool = False,
    ) -> int | None:
        if restart and not restarts_history(self.inner):
            raise StorageError(f"{type(self.inner).__name__}.checkpoint() takes no restart: a workflow that continues as"
                               " new cannot be run on it")
        write = await self._before_write(instance_id, header, records, first_seq=first_seq, start=start,
                                         restart=restart)
        extra: dict[str, Any] = {"consumed": consumed} if consumed else {}
        if wake_at is not None:
            extra["wake_at"] = wake_at
        if notify is not None:
            extra["notify"] = notify
        if restart:
            extra["restart"] = True
        notice = await self.inner.checkpoint(instance_id, status, header, records, first_seq=first_seq, start=start,
                                             **extra)
        await self._after_write(write)
        return notice

    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        return await self.inner.send_signal(instance_id, name, payload)

    async def send_signal_and_load(
        self, instance_id: str, name: str, payload: bytes,
    ) -> tuple[int | None, StoredInstance | None]:
        # The engine's path for a signal to a parked instance, explored as it runs unwrapped.
        if sends_and_loads(self.inner):
            inner: SignalsAndLoads = self.inner  # type: ignore[assignment]
            return await inner.send_signal_and_load(instance_id, name, payload)
        seq = await self.inner.send_signal(instance_id, name, payload)
        return seq, None if seq is None else await self.inner.load(instance_id)

    async def send_keyed_signal(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool]:
        keyed: KeyedSignals = self.inner  # type: ignore[assignment]
        return await keyed.send_keyed_signal(instance_id, name, payload, key)

    async def send_keyed_signal_and_load(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool, StoredInstance | None]:
        # (As send_signal_and_load: the engine's path for a keyed signal to a parked instance.)
        if sends_keyed_and_loads(self.inner):
            inner: KeyedSignalsAndLoads = self.inner  # type: ignore[assignment]
            return await inner.send_keyed_signal_and_load(instance_id, name, payload, key)
        seq, seen = await self.send_keyed_signal(instance_id, name, payload, key)
        return seq, seen, None if seq is None or seen else await self.inner.load(instance_id)

    async def signals(self, instance_id: str) -> list[tuple[int, str, bytes]]:
        return await self.inner.signals(instance_id)

    async def load(self, instance_id: str) -> StoredInstance | None:
        return await self.inner.load(instance_id)

    async def list_instances(
        self, workflow_name: str | None = None, status: Status | None = None, *,
        after: str | None = None, limit: int | None = None, newest_first: bool = False,
    ) -> list[StoredInstance]:
        return await self.inner.list_instances(
            workflow_name, status, after=after, limit=limit, newest_first=newest_first)

    async def resumable(self) -> list[StoredInstance]:
        return await self.inner.resumable()

    async def due(
        self, before: float, limit: int, *, skip_workflows: Collection[str] = (), exclude: Collection[str] = (),
    ) -> list[StoredInstance]:
        if exclude and not excludes_instances(self.inner):
            # (As the engine does with such an adapter: that many more, passed over here.)
            rows = await self.due(before, limit + len(exclude), skip_workflows=skip_workflows)
            return [s for s in rows if s.instance_id not in exclude][:limit]
        options: dict[str, Collection[str]] = {"exclude": exclude} if exclude else {}
        if not skip_workflows:
            return await self.inner.due(before, limit, **options)
        if skips_workflows(self.inner):
            return await self.inner.due(before, limit, skip_workflows=skip_workflows, **options)
        return [s for s in await self.inner.due(before, limit, **options) if s.workflow_name not in skip_workflows]

    async def next_wake(self, *, skip_workflows: Collection[str] = ()) -> float | None:
        if skip_workflows and skips_workflows(self.inner):
            return await self.inner.next_wake(skip_workflows=skip_workflows)
        return await self.inner.next_wake()  # (sooner, at worst: the waker finds nothing to wake then)

    async def delete(self, instance_id: str) -> bool:
        return await self.inner.delete(instance_id)

    def use_clock(self, clock: Callable[[], float]) -> None:
        if hasattr(self.inner, "use_clock"):  # (an adapter from before retention has none)
            self.inner.use_clock(clock)

    async def purge(
        self, finished_by: float, limit: int, *, status: FinishedStatus | None = None, workflow_name: str | None = None,
    ) -> int:
        return await self.inner.purge(finished_by, limit, status=status, workflow_name=workflow_name)

    async def _before_write(
        self, instance_id: str, header: bytes, records: Sequence[bytes], *, first_seq: int, start: bytes | None = None,
        restart: bool = False,
    ) -> _Pending:
        """What the write is about to store; or, once the process has died (or dies now, this
        being the write to lose), :class:`_ProcessGone`."""
        if not self.crashed:
            # (A restart's records replace every stored one: they start at seq 0.)
            write = await self._pending(instance_id, header, records, 0 if restart else first_seq, start)
            if not self.crashed and not (self.lost and self.target in write.held):
                return write
            if not self.crashed:
                self.writes += 1  # this write is the one the crash cuts short: it stores nothing
                self.keys.append(write.held)
                self.crash_write = write.held
                self.lost_write = (instance_id, write.state)
                self._die()
                await self._keep_crash_states()
        # A dead process writes nothing more: what the crash cancelled stops here; what it
        # cannot cancel (shielded: a decision being stored, children being cancelled) is
        # refused, or it would wait for ever and the crashed engine never close.
        await trio.lowlevel.checkpoint_if_cancelled()
        raise _ProcessGone("the process died: nothing more is written")

    async def _pending(
        self, instance_id: str, header: bytes, records: Sequence[bytes], first_seq: int, start: bytes | None,
    ) -> _Pending:
        row = self._rows.get(instance_id)
        if row is None and start is None:  # (a row this run did not create: as storage holds it)
            stored = await self.inner.load(instance_id)
            row = (None, []) if stored is None else (stored.start, list(stored.records))
        kept_start, kept = row if row is not None else (None, [])
        start = kept_start if start is None else start
        rows = [*kept[:first_seq], *(bytes(r) for r in records)]
        state = decode(start, header, rows)
        in_write: collections.Counter[_Record] = collections.Counter()
        held = []
        for record in _write_records(instance_id, state, self._last.get(instance_id)):
            in_write[record] += 1
            held.append((record, self._recorded[record] + in_write[record]))
        return _Pending(instance_id, start, rows, state, tuple(held))

    async def _after_write(self, write: _Pending, *, stored: bool = True) -> None:
        self.writes += 1
        self.keys.append(write.held)
        self._recorded.update(record for record, _ in write.held)
        if stored:  # (a create that found the instance stored already changed nothing)
            self._rows[write.instance_id] = (write.start, write.records)
            self._last[write.instance_id] = write.state
        crash = not self.crashed and self.target in write.held
        if crash:
            self.crash_write = write.held
            self._die()  # before anything else can write: this write is the last
        if stored:  # (the row as stored is the mirror's: decoding it again from storage doubled the cost)
            self.states.append((write.instance_id, write.state))
        else:
            with trio.CancelScope(shield=True):
                stored_now = await self.inner.load(write.instance_id)
                assert stored_now is not None
                self.states.append((write.instance_id, decode_stored(stored_now)))
        if crash:
            await self._keep_crash_states()

    def _die(self) -> None:
        self.crashed = True
        assert self.process is not None
        self.process.cancel()

    async def _keep_crash_states(self) -> None:
        """The whole family as the dead process left it: a child's completed steps must not
        run again either."""
        with trio.CancelScope(shield=True):
            self.crash_states = {}
            for written in dict.fromkeys(i for i, _ in self.states):
                found = await self.inner.load(written)
                if found is not None:
                    self.crash_states[written] = decode_stored(found)


def _instrument(definition: WorkflowDefinition, jobs: dict[str, StepFn], counter: _Counter) -> WorkflowDefinition:
    """A copy of ``definition`` whose task callables count their calls per step."""

    def resolve(ref: StepFn | str, step: TaskStep) -> StepFn:
        if isinstance(ref, str):
            if ref not in jobs:
                raise UnknownJobError(f"step {step.name!r} uses job {ref!r}, which is not in jobs=")
            return jobs[ref]
        return ref

    def task(step: TaskStep) -> TaskStep:
        run = _counted(step.name, resolve(step.run, step), counter)
        compensate = step.compensate
        if compensate is not None:
            compensate = _counted(f"{step.name} (compensate)", resolve(compensate, step), counter)
        output = step.output if step.output is None else _mapped(step.name, step.output, counter)
        return attrs.evolve(step, run=run, compensate=compensate, output=output)

    def lane(steps: tuple[Step, ...]) -> tuple[Step, ...]:
        out: list[Step] = []
        for s in steps:
            if isinstance(s, TaskStep):
                out.append(task(s))
            elif isinstance(s, ParallelStep):
                out.append(attrs.evolve(s, branches=tuple(attrs.evolve(b, steps=lane(b.steps)) for b in s.branches)))
            elif isinstance(s, MapStep):
                out.append(attrs.evolve(s, branch=attrs.evolve(s.branch, steps=lane(s.branch.steps))))
            else:
                out.append(s)
        return tuple(out)

    steps = lane(definition.steps)
    lookup: dict[str, tuple[Step, str]] = {}
    index_steps(lookup, "", steps)
    return attrs.evolve(definition, steps=steps, lookup=lookup, job_names=frozenset())


def _counted(key: str, fn: StepFn, counter: _Counter) -> StepFn:
    if isinstance(fn, ScriptedJob):
        return _replayed(key, fn, counter)
    if is_async(fn):
        async def counted_async(*args: Any) -> Any:
            attempt = _attempt(counter, key)
            try:
                result = await fn(*args)
            except BaseException as exc:
                _raised(counter, key, attempt, exc)
                raise
            return _returned(counter, key, attempt, "result", result)
        return counted_async

    def counted(*args: Any) -> Any:
        attempt = _attempt(counter, key)
        try:
            result = fn(*args)
        except BaseException as exc:
            _raised(counter, key, attempt, exc)
            raise
        return _returned(counter, key, attempt, "result", result)
    return counted


def _mapped(key: str, mapper: Callable[[Any, Any], Any], counter: _Counter) -> Callable[[Any, Any], Any]:
    """A step's ``output=`` mapper that notes what it made of each attempt's result: a job
    whose result cannot be stored as it is (an SDK's object, whose id the mapper keeps) is
    compared by the output stored. (Called in the step, after its job: the attempt is the one
    the job made, which the step's context still holds.)"""
    def mapped(result: Any, ctx: Any) -> Any:
        attempt = _attempt_of(ctx, key)
        output = mapper(result, ctx)
        if inspect.isawaitable(output):  # (an async def: the step awaits what it gives)
            async def later() -> Any:
                return _returned(counter, key, attempt, "output", await output)
            return later()
        return _returned(counter, key, attempt, "output", output)
    return mapped


def _attempt_of(ctx: Any, step_name: str) -> tuple[str, str, int, bool] | None:
    """The attempt a step's context has just made (as :func:`_attempt` reads it during the call)."""
    if not isinstance(ctx, WorkflowContext):  # pragma: no cover - the engine hands its own
        return None
    state, lane = ctx._state, ctx.lane
    execution = state.executions.get(step_key(lane, step_name), 0) + 1
    return state.instance_id, in_run(execution_id(lane, step_name, execution), state.runs), ctx._attempt, False


def _attempt(counter: _Counter, key: str) -> tuple[str, str, int, bool] | None:
    """Count a call; the attempt it makes. A child's steps are counted as its own, even where
    parent and child share a step name or a job."""
    try:
        step = current_step()
    except NotInStepError:  # pragma: no cover - every counted callable runs in a step
        counter.counts["", key] += 1
        return None
    counter.counts[step.instance_id, key] += 1
    return step.instance_id, step.execution_id, step.attempt, step.compensating


def _returned(
    counter: _Counter, key: str, attempt: tuple[str, str, int, bool] | None, what: str, value: Any,
) -> Any:
    """Note what an attempt of a step returned (``what``: its job's "result", or the "output"
    its ``output=`` mapper made of it). The same attempt run again (its write lost in a crash)
    must return the same: a step that is not idempotent (a charge that makes a new charge id)
    would otherwise record another result than the one the world saw first. Compared as stored
    (encoded at once: a mapper or the step may change it after); a result that cannot be stored
    as it is is compared by the output its mapper makes of it (without one, its step fails; with
    one, a storable result is compared as it is, and the mapper may add what it likes, a time),
    and what a compensation returns (it is not kept) is not compared."""
    if attempt is None or attempt[3]:
        return value
    if what == "result":
        counter.returned.add(attempt)
    elif attempt not in counter.unstorable:
        return value
    try:
        packed = encode_payload(value, "a step's result")
    except Exception:
        if what == "result":
            counter.unstorable.add(attempt)
        return value
    first = counter.results.setdefault((attempt, what), packed)
    if first != packed and not counter.changed:
        counter.changed.append(
            f"step {key!r} ({attempt[1]}, attempt {attempt[2]}) ran again after the crash and returned"
            f" {safe_repr(value, 200)}{' as its output' if what == 'output' else ''}, where its first run"
            f" returned {safe_repr(decode_payload(first), 200)}: it is not idempotent")
    return value


def _raised(counter: _Counter, key: str, attempt: tuple[str, str, int, bool] | None, exc: BaseException) -> None:
    """Note that an attempt of a step raised: one that returned the first time and raises when
    run again after the crash (a service that refuses a repeated request) is not idempotent, and
    its run may take another path (a catch) than the world saw. (One that raised first and
    returns when run again is a service that recovered: at-least-once, not reported. One cut
    short, by the crash, a timeout or a sibling, gave no answer.)"""
    if attempt is None or attempt[3] or counter.changed or attempt not in counter.returned or _cut_short(exc):
        return
    first = counter.results.get((attempt, "result"), counter.results.get((attempt, "output")))
    returned = "a value that cannot be stored" if first is None else safe_repr(decode_payload(first), 200)
    counter.changed.append(
        f"step {key!r} ({attempt[1]}, attempt {attempt[2]}) ran again after the crash and raised"
        f" {describe_error(exc)}, where its first run returned {returned}: it is not idempotent")


def _cut_short(exc: BaseException) -> bool:
    """Whether a job's exception is its cancellation: trio's, or a group of them (what a job
    that runs a nursery of its own lets out when it is cancelled)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


def _replayed(key: str, job: ScriptedJob, counter: _Counter) -> StepFn:
    """A scripted job whose script advances per attempt, not per call: an attempt run again
    after a resume (the one in flight at the crash, or one whose failure was not stored yet)
    gets the behaviour it got before, as a real service would answer the same request the same
    way. Without this, a resumed run would meet a different world and diverge for no fault of
    the engine's."""

    async def replayed(*args: Any) -> Any:
        step = current_step()
        counter.counts[step.instance_id, key] += 1
        # Execution ids are unique within an instance: two children of one workflow both run
        # "charge#1", which are two requests, not one repeated.
        attempt = (step.instance_id, step.execution_id, step.attempt, step.compensating)
        number = counter.numbers.setdefault(id(job), {}).setdefault(attempt, len(counter.numbers[id(job)]) + 1)
        return await job.play(number, *args)

    return replayed


def _scripted_jobs(definitions: Sequence[WorkflowDefinition], jobs: Mapping[str, StepFn]) -> list[ScriptedJob]:
    found = [j for j in jobs.values() if isinstance(j, ScriptedJob)]
    for definition in definitions:
        for step, _ in definition.lookup.values():
            if isinstance(step, TaskStep):
                found += [f for f in (step.run, step.compensate) if isinstance(f, ScriptedJob)]
    unique: dict[int, ScriptedJob] = {id(j): j for j in found}
    return list(unique.values())
