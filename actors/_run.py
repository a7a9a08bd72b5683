"""What one instance's actors share: its definition, state, services, storage and listeners."""

from __future__ import annotations

import bisect
import contextlib
import contextvars
import inspect
import logging
import math
import operator
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any, Protocol

import attrs
import trio

from trioflow._values import PLAIN, detached
from trioflow._codec import (
    as_stored,
    check_data,
    copied,
    decode_payload,
    encode_payload,
    check_encodable,
    not_taken,
    stage,
    take_changes,
    take_changes_holding,
    take_changes_with_data,
    taken,
)
from trioflow._context import ItemPlace, WorkflowContext
from trioflow._decide import (
    catch_failure, fail_step, failure_named_by_workflow, record_compensation_failed, take_up, wake_at,
)
from trioflow._definition import Catch, ParallelStep, Step, StepFn, WorkflowDefinition
from trioflow._errors import (
    CheckpointConflictError,
    RecordedError,
    SnapshotDecodeError,
    StorageUnavailableError,
    UnencodableValueError,
    UnknownInstanceError,
    describe_error,
    error_cause,
    error_name,
)
from trioflow._escapes import first_stop, goes_on, stops_the_process
from trioflow._events import EventBus
from trioflow._jobs import JobRegistry
from trioflow._lanes import MAIN, child_ended_signal, fanout_place, parallel_of
from trioflow._storage_retry import BACKOFF_MAX, FIRST_BACKOFF, back_off, retried
from trioflow._snapshot import (
    TERMINAL,
    InstanceState,
    Status,
    StepResult,
    WorkflowInstance,
    WorkflowResult,
    compensated_steps,
    compensation_errors,
    compensation_errors_by_execution,
    failed_compensation,
    metadata_of,
)
from trioflow.adapters._driver import forgets_runs
from trioflow.adapters._protocol import Adapter

from ._flag import Flag
from ._ledger import forget_ended_runs
from ._threads import ThreadSlots

log = logging.getLogger("trioflow")
#: A pending signal's seq (``(seq, name, payload)``): the order they are kept in.
_seq_of = operator.itemgetter(0)


#: From this many pending signals, a run takes one by name through an index of them by name
#: (built once, then kept as signals come and go) rather than a walk over them all: the end
#: notices of a map's children that end in one burst would cost a walk per item.
INDEX_FROM = 16


class _SignalIndex:
    """The seqs of a run's pending signals by name, in seq order, for the list ``of`` (the
    state's ``signals``; another list, a next run's, is indexed anew)."""

    __slots__ = ("of", "seqs")

    def __init__(self, signals: list[tuple[int, str, Any]]) -> None:
        self.of = signals
        self.seqs: dict[str, list[int]] = {}
        for seq, name, _ in signals:
            self.seqs.setdefault(name, []).append(seq)


def _holds(signals: Sequence[tuple[int, str, Any]], seq: int) -> bool:
    """Whether the signal ``seq`` is among ``signals`` (a run's pending ones, kept in seq
    order): a search, not a walk, as a run taken up with thousands pending (a parent whose
    children ended while it was parked) delivers each of them through here."""
    i = bisect.bisect_left(signals, seq, key=_seq_of)
    return i < len(signals) and signals[i][0] == seq

#: Longest a lifecycle hook may run; one that takes longer is cancelled and logged, so a hook
#: never holds an instance, its waiters or its slot.
HOOK_TIMEOUT = 30.0
#: Default of ``open_engine(storage_retry_for=...)``: how long a checkpoint that fails for a
#: reason that may pass (busy, locked, full) is retried before the instance is left resumable.
STORAGE_RETRY_FOR = 60.0
#: Longest a checkpoint cut short while it was retried asks storage whether an earlier try of it
#: was stored (seconds): the cancel, or the engine's close, waits that long at most.
LOOK_BACK_MOST = 10.0

#: The bus of runs nobody can subscribe to (``execute_workflow``): always inactive.
SILENT = EventBus()


_NO_EXTRA: dict[str, Any] = {}


class _Nothing:
    """An awaitable that does nothing, and may be awaited any number of times: what
    :meth:`Run.persist` returns when there is nothing to write."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


_NOTHING = _Nothing()


class _Unreadable:
    """In place of a delivered signal's payload this release cannot read (a newer release's)."""

    __slots__ = ("error",)

    def __init__(self, error: SnapshotDecodeError) -> None:
        self.error = error


class Parked(Exception):
    """Raised by a step that waits long: the instance's wait is stored, and its actor ends
    without finishing it, holding no task and no slot; the engine wakes it when it is due."""


class StoreFailed(Exception):
    """A checkpoint the run makes between a step's (or a compensation's) attempts found storage
    unusable for longer than ``storage_retry_for``: the run's failure, not the step's. Carried
    past the handlers that make what a step raises its failure, which raise ``error`` on, as a
    checkpoint's failure anywhere else goes: the instance stops as last stored, for a resume.
    (Storage's other refusals stay the step's failure: the engine would end the instance
    without compensating it.)"""

    def __init__(self, error: StorageUnavailableError) -> None:
        super().__init__(error)
        self.error = error


class StepFailure(Exception):
    """A step failed for good; carries the step's name, the error, the attempts made and the
    input the failed execution had (recorded with it)."""

    def __init__(
        self, step_name: str, error: BaseException, attempts: int, input: Any = None, uses_input: bool = False,
    ) -> None:
        super().__init__(step_name, error)
        self.step_name = step_name
        self.error = error
        self.attempts = attempts
        self.input = input
        self.uses_input = uses_input


#: How near its deadline a run counts as at it: the wall clock's seconds (about 1.8e9) are
#: floats a step of 2.4e-7 s apart, and the time spent is a difference of two of them.
_ROUNDING = 1e-6


def timeout_left(timeout: float, spent: float) -> float:
    """What is left of a workflow timeout of ``timeout`` seconds once ``spent`` are: 0 within a
    few float steps of it (see ``_ROUNDING``)."""
    left = timeout - spent
    return left if left > _ROUNDING else 0.0


def event_payload(state: InstanceState, lane: str, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` of an event about ``state``'s instance, with the fields every such event
    has (``lane``: see :meth:`Run.emit`)."""
    if lane:
        payload["lane"] = lane
    payload["instance_id"] = state.instance_id
    payload["workflow_name"] = state.workflow_name
    if state.runs:  # one that continued as new: its run, which its execution ids are counted in
        payload["run"] = state.runs
    if state.parent_id is not None:  # a child workflow's: its parent, for following a family
        payload["parent_id"] = state.parent_id
    return payload


def unwrapped(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """What a parallel or map step's nursery raised, as its callers expect it: KeyboardInterrupt or
    SystemExit if a branch raised one; else, when every branch raised the same kind of thing (a
    cancellation, storage that stayed unusable, a signal this release cannot read, the instance
    leaving memory), the first of them; else the group itself."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = exc.exceptions
        else:
            leaves.append(exc)
    stop = first_stop(leaves)
    if stop is not None:
        return stop
    if all(isinstance(exc, (trio.Cancelled, Parked)) for exc in leaves):
        # Leaving memory as a cancel came from outside (the engine closing): the cancel goes on.
        return next((exc for exc in leaves if isinstance(exc, trio.Cancelled)), leaves[0])
    for kind in (StorageUnavailableError, SnapshotDecodeError):
        if all(isinstance(exc, kind) for exc in leaves):
            return leaves[0]
    return leaves[0] if len(leaves) == 1 else group


class Children(Protocol):
    """What a run's child steps ask of the engine that runs it (``Run.children``)."""

    @property
    def closing(self) -> bool:
        """Whether the engine is stopping (a run cancelled then leaves its children be)."""
        ...

    def start(
        self, workflow: str, input: Any, child_id: str, parent_id: str, held: object = None, ours: bool = False,
    ) -> Awaitable[Any]:
        """Start (or find already started) the child instance ``child_id``: await what this
        returns. ``held``: what :meth:`hold` gave for it; ``ours``: its id is new to this
        engine (a row found under it is from an earlier try: it runs, whatever ``resume=``)."""
        ...

    def hold(self, child_id: str, workflow: str, before: object = None) -> object:
        """Hold ``child_id`` as being stored from now, before its parent's write that lists it:
        ``signal()``, ``cancel()`` and ``wait()`` of it wait for its store rather than find no
        such instance. Pass what this gives to :meth:`start`; :meth:`release` it in any case.
        ``before``: what :meth:`release` gave for a hold of it let go of for now."""
        ...

    def release(self, held: object, *, for_now: bool = False) -> object:
        """Let go of what :meth:`hold` gave, if :meth:`start` has not (its store ended);
        ``for_now``: to hold it again (pass what this gives to that :meth:`hold`)."""
        ...

    def cancel_as_made(self, held: object, at: float = -math.inf) -> None:
        """The child being stored under ``held`` (what :meth:`hold` gave) is cancelled as its
        run is made, before its first step, if that is at ``at`` (trio's clock) or later: its
        parent's step is cut (the parent cancelled or timed out, a fail-fast sibling failed)
        while the store is in flight, and a child must start nothing once its parent is cut."""
        ...

    def check_runnable(self, workflow: str) -> None:
        """Raise what :meth:`start` would (:class:`UnknownWorkflowError`,
        :class:`UnknownJobError`) if ``workflow`` cannot run here now."""
        ...

    def runnable(self, workflow: str) -> bool:
        """Whether ``workflow`` is registered with every job it uses."""
        ...

    async def until_registered(self, workflow: str) -> None:
        """Return once ``workflow`` is registered with every job it uses (at once if it is)."""
        ...

    def slots_wanted(self) -> bool:
        """Whether instances wait in the engine's queue for a ``max_running`` slot: a run whose
        lanes all rest then gives its own up at once (see ``_wait.settle``)."""
        ...

    def watch_slots(self, event: trio.Event) -> None:
        """Set ``event`` when an instance starts waiting for a slot (until :meth:`unwatch_slots`)."""
        ...

    def unwatch_slots(self, event: trio.Event) -> None:
        ...

    def in_parent_slot(self, parent_id: str) -> bool:
        """Whether a child of ``parent_id`` runs in its parent's slot: the parent waits for it
        in memory here, holding its slot (see :meth:`Run.may_park`)."""
        ...

    def lend_slot(self, run: Run, *, at_once: bool = False) -> None:
        """A lane of ``run`` starts to wait in memory (too briefly to leave it: a poll's short
        timer), ``run`` holding its slot: the children it waits on that have been queued for
        a slot of their own for a second or more (the time an instance rests before it leaves
        memory; ``at_once``: however briefly) run in its slot now. With every slot held by
        parents whose polls keep them in memory, those children would wait for ever."""
        ...

    async def cancel(self, child_id: str, bound: float | None, *, undo: bool = True) -> WorkflowInstance | None:
        """Cancel the child instance (and so its own children), if it still runs, and wait for
        its end; compensate it as a unit if it completed all the same (the step that waited on
        it never will), each of its compensations bounded by ``bound`` seconds too (the
        parent's compensation timeout). ``undo=False``: not yet; the child as it completed, if
        it did, to be compensated later (see :meth:`compensate`)."""
        ...

    def adopt(self, child_id: str, parent_id: str) -> None:
        """A resumed parent waits again for its child: if the child is queued for a slot while
        the parent holds one, it runs in the parent's now."""
        ...

    async def compensate(self, child_id: str, bound: float | None) -> str | None:
        """Compensate a completed child as a unit, each of its compensations bounded by
        ``bound`` seconds too (``None``: by its own definition's only); ``None``, or why a
        compensation failed."""
        ...

    def deliver_notice(self, parent_id: str, notice: str, seq: int | None, payload: bytes) -> bool:
        """A child's end notice to its parent is stored as signal ``seq`` (``None``: the adapter
        did not say which): hand it to the parent if it runs here; whether that was all to do
        (else :meth:`ended` reads it, or wakes the parent)."""
        ...

    def ended_soon(self, parent_id: str, notice: str) -> None:
        """A child's end notice to its parent is stored: deliver it, or wake the parent, in a
        task of the engine's own (it may read storage)."""
        ...


#: What a run's :attr:`Run.end` or :attr:`Run.decided` is once set before anyone waited on it:
#: a flag set for good (waiting on a set flag only checkpoints, in any trio run).
_SET_FOR_GOOD = Flag()
_SET_FOR_GOOD.set()


class Run:
    """The shared context of one instance run, owned by its instance actor.

    Slotted: one lives for every instance in flight, and parked instances should cost little.
    """

    __slots__ = (
        "definition", "state", "adapter", "jobs", "services", "driver", "bus", "resumed", "unannounced", "announced", "from_storage",
        "compensate_on_outer_cancel", "cancellable", "threads", "has_hooks", "deferred", "cancel_scope",
        "cancel_requested", "error", "stored_status", "started", "end", "spawn", "storage_retry_for",
        "clock", "arrived", "consumed_seqs", "signals_fetched", "fetching", "park_after", "parked", "stored_wake_at",
        "gathering", "writing", "children", "doomed", "signal_times", "decided", "woken", "fired_at", "fired_data", "storing",
        "hold", "active", "resting", "announcing", "settling", "late", "failed_in", "lends", "unheld", "unpublished",
        "lent", "contextvars", "doubt", "child_stores", "releases", "start_due", "at_deadline", "failed_fast",
        "stops_process", "signal_index",
    )

    def __init__(
        self,
        definition: WorkflowDefinition,
        state: InstanceState,
        *,
        adapter: Adapter | None,
        jobs: JobRegistry,
        services: Mapping[str, Any],
        driver: Any,
        bus: EventBus = SILENT,
        resumed: bool = False,
        compensate_on_outer_cancel: bool = False,
        cancellable: bool = True,
        threads: ThreadSlots | None = None,
        spawn: Callable[..., None] | None = None,
        storage_retry_for: float = STORAGE_RETRY_FOR,
        clock: Callable[[], float] = time.time,
        park_after: float | None = None,
        children: Children | None = None,
        releases: Mapping[str, WorkflowDefinition] | None = None,
    ) -> None:
        self.definition = definition
        self.state = state
        self.adapter = adapter
        self.jobs = jobs
        self.services = services
        self.driver = driver
        self.bus = bus
        self.resumed = resumed
        #: Taken up from storage, whether or not it ran before (``resumed`` is cleared for an
        #: instance stored ``pending``, which starts now): its child steps wait for a child
        #: workflow not registered yet, as a service's modules may register it a moment later.
        self.from_storage = resumed
        #: Resumed, though it never started: this engine stored it, and its start's answer was
        #: lost (see ``Engine._start``). It is announced as it starts its first step.
        self.unannounced = False
        #: Whether this run has announced the instance (``workflow.started``, ``on_start``): a
        #: retried ``start()`` of it after a lost answer then knows not to (see ``Engine._start``).
        self.announced = False
        #: ``execute_workflow`` has no resume, so its caller's cancellation compensates at once;
        #: an engine leaves instances interrupted by its shutdown to the next resume.
        self.compensate_on_outer_cancel = compensate_on_outer_cancel
        #: Whether something (``engine.cancel``) may cancel this run from outside its steps.
        self.cancellable = cancellable
        #: Where plain ``def`` callables run (``None``: inline, as the test engine wants).
        self.threads = threads
        #: Starts a task beside the instance: end-of-run hooks run there, apart from the
        #: instance's lifecycle, and an engine that closes lets them finish. ``None``: they run
        #: inline (``execute_workflow``).
        self.spawn = spawn
        self.storage_retry_for = storage_retry_for
        #: The engine's wall clock (Unix seconds): timestamps, timers' due times and timeouts
        #: that outlive a restart are all on it.
        self.clock = clock
        #: By signal name: set (and dropped) when a signal of that name is delivered while a
        #: step waits for one (a receive step, a child step's end notice).
        self.arrived: dict[str, Flag] | None = None
        #: Seqs of the signals this run's receive steps took (never taken twice, even while the
        #: checkpoint deleting them is in flight).
        self.consumed_seqs: set[int] | None = None
        #: The pending signals' seqs by name, once a run holds many (see :meth:`take_signal`).
        self.signal_index: _SignalIndex | None = None
        #: When (on :attr:`clock`) ``signal()`` had each signal it handed this run stored (its
        #: adapter call returned), by seq: a receive with a timeout takes only those stored by
        #: its deadline (``None``: none noted).
        self.signal_times: dict[int, float] | None = None
        #: Whether the signals storage held for the instance were delivered to this run (they
        #: are looked up once; later ones are delivered as they are sent). A run started here
        #: has none to look up: every signal sent to it comes through the engine, one per
        #: storage, which hands it to the run as it is stored (a storage read less for its
        #: first receive or child step, which every lane of a fan-out would wait on).
        self.signals_fetched = not resumed
        #: The contextvars its task starts with (``None``: those of the task that launches it,
        #: its caller's for a start launched at once): see ``Engine._launch``.
        self.contextvars: contextvars.Context | None = None
        #: Set once the read of stored signals in flight is over (``None``: none in flight).
        self.fetching: Flag | None = None
        #: Waits longer than this many seconds let the instance leave memory (``None``: never,
        #: as in ``execute_workflow``, which has nothing to wake it again); ``parked`` says it did.
        self.park_after = park_after
        self.parked = False
        #: The ``wake_at`` the adapter holds for this instance (see :func:`wake_at`); NaN: it
        #: holds one, not known which (a run taken up from storage, until its first checkpoint).
        self.stored_wake_at: float | None = None
        #: While branches run: the checkpoint gathering this scheduler pass's completions, and
        #: the lock that keeps one checkpoint of this instance in flight at a time.
        self.gathering: _Gathering | None = None
        self.writing: trio.Lock | None = None
        #: Woken from storage by the engine's waker and not checkpointed here yet: the waker
        #: passes its row (due until then) over meanwhile.
        self.woken = False
        #: A checkpoint cut short whose earlier try may have been stored (its answer lost, and
        #: storage could not tell as the cancel came): its first seq, records and consumed
        #: signals, for the next checkpoint to look up first (see :meth:`_settle_doubt`).
        self.doubt: tuple[int, tuple[bytes, ...], tuple[int, ...]] | None = None
        #: When (trio's clock) the timer a woken run was woken for fired, with that not stored
        #: yet: the next checkpoint stores it (see :func:`run_lane`), or the waker has it stored
        #: (see :meth:`store_fired`). ``None``: nothing such unstored.
        self.fired_at: float | None = None
        #: The shared data as the timer's end left it (packed; ``None``: empty), for the
        #: waker's checkpoint, made while the step after it runs.
        self.fired_data: bytes | None = None
        #: Set once the checkpoint :meth:`store_fired` makes is over (``None``: none in flight).
        self.storing: trio.Event | None = None
        #: Events about a step whose completion the next checkpoint stores, published once it
        #: is stored (see :meth:`emit_once_stored`); ``None``: none.
        self.unpublished: list[tuple[str, str, dict[str, Any]]] | None = None
        #: The engine, for child steps (``None``: no engine, as in ``execute_workflow``).
        self.children = children
        #: The definitions registered now, by name (the engine's; ``None``: no engine): a run
        #: that has run nothing yet starts on the one registered as it starts (see
        #: :meth:`take_up_release`).
        self.releases = releases
        #: A delayed start's start time, kept once its wait is over and until its start is
        #: stored (views say what storage does: it waits for it).
        self.start_due: float | None = None
        #: Launched from the queue as its workflow deadline came (see
        #: ``Engine._watch_queued_deadlines``): it times out at once.
        self.at_deadline = False
        #: The nursery scopes of the fail-fast fan-outs whose failure was decided (see
        #: :meth:`fail_fast`).
        self.failed_fast: set[trio.CancelScope] | None = None
        #: Whether user code in this run stopped the process (a branch's or an item's
        #: ``sys.exit()``): set before its fan-out's nursery cuts the siblings, which are then
        #: cut by the engine stopping alone (see :meth:`stopped_alone`), as they are once the
        #: stop leaves the run and the engine is marked stopping.
        self.stops_process = False
        self.has_hooks = definition.has_hooks
        #: The error a resumed run fails with before it runs anything (its instance no longer
        #: fits the definition registered now); ``None``: none.
        self.doomed: BaseException | None = None
        #: Inside a transactional run's transaction: snapshots wait for its commit.
        self.deferred = False
        #: Runs in the slot its parent lent it (see ``Children.lend_slot``): its own children
        #: run in that slot too, and it stays in memory while it waits on them.
        self.lent = False
        self.cancel_scope: trio.CancelScope | None = None
        #: The shielded scopes its child steps store their children in now (see
        #: ``trioflow.actors._child``), with the fail-fast fan-outs whose cancel reaches each and
        #: its hold: a cancel bounds how long each may still take.
        self.child_stores: dict[trio.CancelScope, tuple[tuple[object, ...], object]] | None = None
        #: Taken up ahead of its time by the engine's waker: it sleeps in this scope (its
        #: deadline the time), holding no ``max_running`` slot, until then or until a cancel or
        #: a signal ends the hold sooner (``None``: not held).
        self.hold: trio.CancelScope | None = None
        #: Lanes with an actor of their own that are not inside a parallel or map step (whose
        #: branches or items run for them), and how many of those rest in a long wait: once all
        #: of them do, the instance may leave memory (see ``trioflow.actors._wait``).
        self.active = 1
        self.resting = 0
        #: Lanes whose checkpoint storing their wait is in flight, and that rest once it is
        #: stored (see ``trioflow.actors._wait.announce``): counted as resting by that checkpoint.
        self.announcing = 0
        #: Set when something may keep the instance from leaving memory (a lane wakes, a lane
        #: starts, a signal a lane waits for comes) while it waits to see every lane stay at
        #: rest (``None``: nothing waits to).
        self.settling: trio.Event | None = None
        #: The parallel steps running with a branch that failed for good, while its siblings
        #: run on (``None``: none): it stays in memory until they end (``wake_at`` has nothing
        #: for a failed lane), so its lanes do not rest and their children run in its slot.
        self.failed_in: set[str] | None = None
        #: A wait-all parallel step among those holds it: its children run in its slot.
        self.lends = False
        #: Set (and dropped) once :attr:`failed_in` empties, for the timers that waited without
        #: resting while it held (see :meth:`held_by_failures`): they may rest now.
        self.unheld: trio.Event | None = None
        #: Names of the signals delivered after the run decided to leave memory, while it
        #: unwound (``None``: none): storage holds them, and the engine wakes it for them.
        self.late: set[str] | None = None
        self.cancel_requested = False
        self.error: BaseException | None = None
        #: The status of the last snapshot the adapter has taken (``None``: none yet). ``wait``
        #: trusts the in-memory state of a finished run only once its end is stored.
        self.stored_status: Status | None = None
        self.started = trio.current_time()
        #: Set when the run has ended, for the tasks in :meth:`wait_ended` (``None``: made by
        #: the first that waits).
        self.end: Flag | None = None
        #: Set once the decision that the run ends badly is stored, or the run is over (made
        #: only when a ``cancel()`` waits for it: see :meth:`decision_stored`).
        self.decided: Flag | None = None

    def context(
        self, lane: str, total_steps: int, item: ItemPlace | None = None, until: int | None = None,
    ) -> WorkflowContext:
        """A context for one lane of this run (``item``: a map item's place, see
        :data:`trioflow._context.ItemPlace`; ``until``: compensating, the seq after the
        execution's record)."""
        return WorkflowContext(
            self.state, lane=lane, total_steps=total_steps, services=self.services, driver=self.driver,
            encodable=check_encodable if self.adapter is not None else None, item=item, until=until,
        )

    def take_up_release(self) -> None:
        """A run that has run nothing yet (queued for a slot, or waiting in memory for a delayed
        start) starts on the definition registered as it starts, as one taken up from storage
        does (see :func:`~trioflow._decide.take_up`): ``register(replace=True)`` meanwhile
        reaches it whether or not it stayed in memory. Not one whose jobs are not all
        registered yet: it runs on the definition it has, which has them. Nor a transactional
        one that has started: its transaction may have committed before a restart (its records
        go with the end stored after it), which its run asks the driver, going on as it began."""
        current = self._replacement()
        if current is None or self.state.records or self.state.phase != "forward" \
                or (self.definition.transactional and self.state.started_at is not None):
            return
        take_up(self.state, current)
        if self.state.fingerprint == current.fingerprint:  # (not if its first step is under way)
            self.definition = current
            self.has_hooks = current.has_hooks

    def release_for_next_run(self) -> WorkflowDefinition:
        """The definition a ``continue_as_new`` step's next run starts on: the one registered
        now (``register(replace=True)`` reaches a looping instance at its next run, as a
        Temporal workflow's continue-as-new runs the latest code), once its jobs are all
        registered. Not a transactional one: its run would need the driver's transaction from
        its first step, which a run under way does not open; the next resume takes it up."""
        current = self._replacement()
        return self.definition if current is None or current.transactional else current

    def _replacement(self) -> WorkflowDefinition | None:
        """The definition registered now in place of the run's, if its jobs are all registered."""
        current = None if self.releases is None else self.releases.get(self.definition.name)
        if current is None or current is self.definition or any(name not in self.jobs for name in current.job_names):
            return None
        return current

    def callable(self, fn: StepFn | str, asynchronous: bool) -> tuple[Callable[..., Any], bool]:
        """A step's callable and whether it is awaited, looking registered job names up
        (``asynchronous`` is the definition's flag for a callable given directly)."""
        return self.jobs.resolve(fn) if isinstance(fn, str) else (fn, asynchronous)

    def stage(self, record: StepResult, output_as_stored: bool = False) -> StepResult:
        """Encode a step execution's record as it ends (durable runs only), so that an output
        that cannot be stored fails its step, and the checkpoint needs no second encode.
        Returns the record to add: with its values as storage gives them back (durable runs),
        so that the run goes on as a restarted one would (``output_as_stored``: its output
        was read from storage, a signal's payload, and is not read back again). Raises
        :class:`UnencodableValueError` naming the value."""
        if self.adapter is not None:
            return stage(self.state, record, output_as_stored)
        # Nothing is stored: a live view in the output (a step returning ``ctx.steps``) is kept
        # as it shows now, as an engine's read-back keeps it, not as it shows later (itself).
        output = record.output
        if type(output) in PLAIN:
            return record  # (most outputs: nothing to look into)
        output = detached(output)
        return record if output is record.output else attrs.evolve(record, output=output)

    def lane_runs(self) -> None:
        """A lane's actor is started, or a lane is back from its parallel or map step: one lane
        more that does not rest (see :attr:`active`)."""
        self.active += 1
        if self.settling is not None:
            self.settling.set()

    @contextlib.contextmanager
    def fanned_out(self) -> Generator[None, None, None]:
        """Around a parallel or map step: its lane runs nothing itself meanwhile."""
        self.active -= 1
        try:
            yield
        finally:
            self.lane_runs()

    def note_failed_branch(self, place: str, *, waits_for_all: bool) -> None:
        """A branch of the parallel step at ``place`` (see :func:`~trioflow._lanes.fanout_place`)
        failed for good (or was found so, taken up): see :attr:`failed_in`, until
        :meth:`parallel_ended`. ``waits_for_all``: the step is a wait-all one, whose siblings
        run on (a fail-fast one cancels them, and the children they wait on, at once)."""
        if self.failed_in is None:
            self.failed_in = set()
        self.failed_in.add(place)
        if waits_for_all and not self.lends and self.children is not None:
            # Held in memory, in its slot, while the siblings run on: the children its lanes
            # wait on that queued for a slot of their own (it could leave memory when they
            # started) run in its slot now, and so do those stored from now on (see
            # ``Children.stored_queued``), or they would wait for ever for one it holds.
            self.lends = True
            self.children.lend_slot(self, at_once=True)

    def parallel_ended(self, place: str) -> None:
        """The parallel step at ``place`` is over: its failed branches no longer hold the
        instance in memory. If none holds it now, the waits that did not rest while they did (a parallel step that
        failed in one map item, or whose failure a catch took, while other lanes wait) look
        again: timers through :attr:`unheld`, receive steps woken as a signal would wake them."""
        failed = self.failed_in
        if failed is None or place not in failed:
            return  # (none of its branches failed: nothing held the instance for it)
        failed.discard(place)
        if failed:
            return
        self.failed_in = None
        self.lends = False
        if self.unheld is not None:
            self.unheld.set()
            self.unheld = None
        if self.arrived:
            for waiting in self.arrived.values():
                waiting.set()
            self.arrived.clear()

    def held_by_failures(self) -> trio.Event | None:
        """The event set once no failed branch holds the instance in memory (``None``: none
        does): what a wait that may not rest for that reason alone waits on as well."""
        if not self.failed_in:
            return None
        if self.unheld is None:
            self.unheld = trio.Event()
        return self.unheld

    def stopped_alone(self, fanouts: tuple[object, ...]) -> bool:
        """Whether what cut a step short, in a lane inside the fail-fast fan-outs whose cancel
        scopes are ``fanouts``, is its engine stopping alone: no cancel of the instance, no
        workflow timeout, no fail-fast failure. The step then goes on with the next engine, so
        it is neither recorded nor published as cut short (a sibling's checkpoint in the same
        instant would store it so: the step would run again under another execution id). One a
        decision cut in that instant is, or it would have no end at all: its next engine takes
        that decision up without running it again."""
        if self.children is None or not (self.children.closing or self.stops_process) or self.cancel_requested:
            return False
        scope = self.cancel_scope
        if scope is not None and scope.deadline <= trio.current_time():
            return False  # (its workflow timeout came)
        # (Not a fan-out scope's ``cancel_called``: a nursery cancels itself as a branch's task
        # ends with the engine's own cancel.)
        failed_fast = self.failed_fast
        return not failed_fast or not any(fanout in failed_fast for fanout in fanouts)

    def note_escaping(self, exc: BaseException) -> None:
        """``exc`` leaves a fan-out's branch or item, and is about to cut its siblings: a
        process stop marks the run stopping first (see :attr:`stops_process`)."""
        if stops_the_process(exc):
            self.stops_process = True

    def fail_fast(self, scope: trio.CancelScope) -> None:
        """Cancel the nursery ``scope`` of a fail-fast fan-out whose failure is decided: what it
        cuts short is cut by that decision (see :meth:`stopped_alone`)."""
        if self.failed_fast is None:
            self.failed_fast = set()
        self.failed_fast.add(scope)
        scope.cancel()

    def may_park(self, seconds: float) -> bool:
        """Whether a wait of ``seconds`` lets the instance leave memory (once every lane of it
        that runs rests so): an engine runs it, the wait is long enough, and no parallel branch
        of it failed for good while its siblings run on. A child that runs in its parent's
        slot stays: come back, it would need a slot of its own, which its parent, waiting on
        it, may hold."""
        if self.park_after is None or seconds <= self.park_after or self.deferred or self.state.phase != "forward" \
                or self.failed_in:
            return False
        if self.lent and any(lane.waiting is not None and "child" in lane.waiting for lane in self.state.lanes.values()):
            # Run in a slot its parent lent it: its children run in that slot too (they would
            # queue for slots its parent holds), and it stays while it waits on them.
            return False
        timeout, started = self.definition.timeout, self.state.started_at
        if timeout is not None and started is not None and started + timeout - self.clock() <= self.park_after:
            # Its workflow timeout is as near as a short wait (or due): it stays, and the timeout
            # fires here as trio gets to its deadline. Parked, the waker would take it up again
            # at once (it takes instances up ahead of their time), and it would leave again.
            return False
        parent = self.state.parent_id
        return parent is None or self.children is None or not self.children.in_parent_slot(parent)

    def deliver(self, seq: int, name: str, payload: Any, *, stored_at: float | None = None) -> None:
        """A signal stored for this instance while it runs here: keep it for a receive step
        (``stored_at``: when ``signal()`` had it stored, for one sent now)."""
        state = self.state
        if (self.consumed_seqs is not None and seq in self.consumed_seqs) or (
                state.signals and _holds(state.signals, seq)):
            return
        if self.parked:
            # Leaving memory: no lane takes it here now, and it may be what one waits for.
            if self.late is None:
                self.late = set()
            self.late.add(name)
            return
        signals = state.signals if isinstance(state.signals, list) else []
        if signals and signals[-1][0] > seq:  # (rare: most come in seq order)
            bisect.insort(signals, (seq, name, payload), key=_seq_of)
        else:
            signals.append((seq, name, payload))
        state.signals = signals
        if (index := self.signal_index) is not None and index.of is signals:
            bisect.insort(index.seqs.setdefault(name, []), seq)
        if stored_at is not None:
            self.note_signal_time(seq, stored_at)
        if self.hold is not None and any(
                lane.waiting is not None and lane.waiting.get("signal") == name for lane in state.lanes.values()):
            self.hold.cancel()  # taken up ahead of its time, waiting for it: it runs now, to take it
        if self.arrived is not None:
            waiting = self.arrived.pop(name, None)
            if waiting is not None:
                waiting.set()
                if self.settling is not None:
                    self.settling.set()  # (the lane that waits for it may be the one settling)

    async def fetch_signals(self) -> None:
        """Deliver the signals storage holds for this instance (sent before it ran here), once
        per run. Lanes that ask while the read is in flight wait for it rather than read again
        (the items of a map each wait for a child): what is stored once it began is delivered
        to the run as it is sent. A read that failed leaves the next caller to read again."""
        while not self.signals_fetched and (adapter := self.adapter) is not None:
            fetching = self.fetching
            if fetching is not None:
                await fetching.wait()
                continue
            fetching = self.fetching = Flag()
            iid = self.state.instance_id
            try:
                self.deliver_stored(await retried(lambda: adapter.signals(iid), retry_for=self.storage_retry_for,
                                                  what=f"reading the signals of instance {iid}", instance_id=iid))
            finally:
                self.fetching = None
                fetching.set()

    def deliver_stored(self, signals: Sequence[tuple[int, str, bytes]]) -> None:
        """Deliver every signal storage held (all of them, as read in one go); those delivered
        or taken already are passed over without decoding them again."""
        # (A run just taken up holds none yet, and has taken none: no set made for it.)
        known = {seq for seq, _, _ in self.state.signals} if self.state.signals else None
        if self.consumed_seqs is not None:
            known = self.consumed_seqs if known is None else known | self.consumed_seqs
        for seq, name, payload in signals:
            if known is None or seq not in known:
                try:
                    value: Any = decode_payload(payload)
                except SnapshotDecodeError as exc:
                    value = _Unreadable(exc)  # a newer release's: only a receive of it fails
                self.deliver(seq, name, value)
        self.signals_fetched = True

    def note_signal_time(self, seq: int, stored_at: float) -> None:
        """Note when ``signal()`` had a signal this run holds pending stored: a receive whose
        deadline came before then passes it over. (Nothing for one it no longer holds.)"""
        if self.state.signals and _holds(self.state.signals, seq):
            if self.signal_times is None:
                self.signal_times = {}
            self.signal_times[seq] = stored_at

    def take_signal(self, name: str, *, by: float | None = None) -> tuple[int, Any] | None:
        """The oldest delivered signal named ``name``, consumed: ``(seq, payload)``, or ``None``.
        With ``by`` (a receive's deadline), those known to have been stored after it are passed
        over (they stay, for the next receive). The next checkpoint deletes it from storage,
        with the record of the step that took it."""
        signals = self.state.signals
        index = self.signal_index
        if index is None or index.of is not signals:
            if len(signals) < INDEX_FROM:
                # (Most runs hold a signal or two: a walk costs less than an index.)
                for i, (seq, signal, payload) in enumerate(signals):
                    if signal == name and self._in_time(seq, by):
                        return self._consume(i, seq, payload)
                return None
            assert isinstance(signals, list)
            index = self.signal_index = _SignalIndex(signals)
        seqs = index.seqs.get(name)
        for j, seq in enumerate(seqs or ()):
            if self._in_time(seq, by):
                i = bisect.bisect_left(signals, seq, key=_seq_of)
                taken = self._consume(i, seq, signals[i][2])
                assert seqs is not None
                del seqs[j]
                if not seqs:
                    del index.seqs[name]  # (a child's end notice has a name of its own)
                return taken
        return None

    def _in_time(self, seq: int, by: float | None) -> bool:
        """Whether the signal ``seq`` counts for a receive whose deadline is ``by`` (one with no
        time noted, read from storage, counts as in time)."""
        return by is None or self.signal_times is None or self.signal_times.get(seq, by) <= by

    def _consume(self, i: int, seq: int, payload: Any) -> tuple[int, Any]:
        """Take the ``i``-th pending signal (``seq``, holding ``payload``): see :meth:`take_signal`."""
        if self.signal_times is not None:
            self.signal_times.pop(seq, None)
        if isinstance(payload, _Unreadable):
            # Left stored, as the newer release that wrote it stored it: the run stops
            # here, and its instance is reported failed as an unreadable row is.
            raise payload.error
        state = self.state
        assert isinstance(state.signals, list)
        del state.signals[i]
        # (Appended in place: a checkpoint takes the list away whole, and a failed one puts
        # its seqs back in a new one.)
        if isinstance(state.consumed, list):
            state.consumed.append(seq)
        else:
            state.consumed = [seq]
        if self.consumed_seqs is None:
            self.consumed_seqs = set()
        self.consumed_seqs.add(seq)
        return seq, payload

    def check_value(self, value: Any, what: str) -> None:
        """Raise :class:`UnencodableValueError` naming ``what`` if ``value`` cannot be stored
        (durable runs only)."""
        if self.adapter is not None:
            check_encodable(value, what)

    def check_data(self, ended: str | None = None) -> None:
        """As a step execution ends (durable runs only; ``ended``: its lane's key): raise
        :class:`UnencodableValueError` if the shared data can no longer be stored, having put
        it back as it was at the last check (see :func:`check_data`)."""
        if self.adapter is not None:
            check_data(self.state, ended)

    def add_failure(self, record: StepResult, *, for_good: bool) -> None:
        """Add the record of a failed execution (see :func:`fail_step`). Its input is dropped if
        it cannot be stored, and what it left in the shared data that cannot be stored is put
        back: the step has failed already, and the record must still be written."""
        fail_step(self.state, self._stage_ended(record), for_good=for_good)
        if for_good and (parallel := parallel_of(record.lane)) is not None:
            entry = self.definition.lookup.get(parallel)
            self.note_failed_branch(fanout_place(record.lane), waits_for_all=entry is not None and isinstance(
                entry[0], ParallelStep) and entry[0].on_error == "wait-all")

    def add_compensation_failure(self, record: StepResult, error: BaseException, attempts: int = 0) -> None:
        """``record``'s compensation failed for good with ``error`` (after ``attempts``, when
        known): its own record goes with the next checkpoint (see
        :func:`record_compensation_failed`), and listeners hear of it, as of one that ran."""
        state = self.state
        failure = failed_compensation(record, describe_error(error), len(state.records), self.clock(),
                                      name=error_name(error), cause=error_cause(error), attempts=attempts)
        record_compensation_failed(state, record, self.stage(failure))
        if self.bus.active:
            self.emit("workflow.step.compensation_failed", record.lane, step_name=record.step_name,
                      execution_id=record.id, error=failure.error, error_name=failure.error_name, cause=failure.cause,
                      attempts=attempts)

    def add_caught(self, record: StepResult, step: Step, catcher: Catch) -> None:
        """Add the record of a caught failure and route its lane (see :func:`catch_failure`)."""
        catch_failure(self.state, step, self._stage_ended(record), catcher)

    def _stage_ended(self, record: StepResult) -> StepResult:
        """Stage the record of a failed execution; returns it as staged (without its input, if
        that could not be stored)."""
        with contextlib.suppress(UnencodableValueError):
            self.check_data(record.lane)
        try:
            return self.stage(record)
        except UnencodableValueError:
            return self.stage(attrs.evolve(record, input=None, input_is_workflow_input=False))

    def persist(self) -> Awaitable[None]:
        """Checkpoint: hand the header and the new records to the adapter, and wait until they
        are stored (await what this returns: a plain function, so that the checkpoint every
        step ends with costs no coroutine frame of its own).

        While branches run, the lanes that complete steps in one scheduler pass share one
        checkpoint: each lane still returns only once a checkpoint holding its own step is
        stored. A failure that may pass (:class:`StorageUnavailableError`) is retried with
        backoff for up to ``storage_retry_for`` seconds; after that the error propagates and the
        instance stays as last stored, for a later resume.
        """
        if self.adapter is None or self.deferred:
            return _NOTHING
        if self.storing is not None:
            return self._after_storing(self.storing)
        if len(self.state.lanes) > 1:
            return self._persist_together()
        return self._write()

    async def persist_shielded(self) -> None:
        """:meth:`persist` inside a cancel scope that shields it (a cancel that comes meanwhile
        is delivered at the caller's next checkpoint), with no scope made for a lane that joins
        a checkpoint another lane gathers: it waits for that one shielded (a child step's start,
        which every item of a map of children stores, mostly together with its siblings')."""
        if self.adapter is not None and not self.deferred and self.storing is None and len(self.state.lanes) > 1:
            # Where persist() goes: the joining loop of _persist_together, its waits shielded;
            # with nothing awaited between its end and the call below, that call leads the next
            # gathering, shielded.
            while (gathering := self.gathering) is not None:
                if await gathering.joined(shielded=True):
                    return
            with trio.CancelScope(shield=True):
                await self._persist_together()
            return
        with trio.CancelScope(shield=True):
            await self.persist()

    async def _after_storing(self, storing: trio.Event) -> None:
        # One checkpoint of an instance in flight at a time (each is fenced on the records
        # stored before it). Shielded: a checkpoint the run makes as it is cancelled (its
        # cancel, its compensations) must still be made.
        with trio.CancelScope(shield=True):
            await storing.wait()
        await self.persist()

    async def store_fired(self) -> None:
        """Checkpoint now, if a timer of this woken run fired and nothing has stored that since:
        for the engine's waker, which counts the run among those on their way to their first
        checkpoint until then, and lets only so many be. (The step after the timer, which would
        store it as it ends, may run for an hour.) Only while the main line is all that runs:
        then the run's own checkpoints come one at a time, and this one waits for none.

        It stores the shared data as the timer left it, not as the running step has half
        changed it: a restart runs that step again from where it began."""
        fired = self.fired_at
        if fired is None or len(self.state.lanes) != 1 or self.deferred or self.storing is not None:
            return
        storing = self.storing = trio.Event()
        try:
            await self._write(as_fired=True)
        except BaseException:
            if self.fired_at is None:
                self.fired_at = trio.current_time()  # not stored: the waker tries again later
            raise
        finally:
            self.storing = None
            storing.set()

    async def _persist_together(self) -> None:
        while (gathering := self.gathering) is not None:
            if await gathering.joined():
                return
            # Its leader was cancelled before it wrote: gather (and write) again.
        gathering = self.gathering = _Gathering()
        try:
            # One pass of the scheduler at least: sibling lanes whose steps end in it join this
            # checkpoint; and while the one before it is being written, every lane whose step
            # ends joins too (a group commit: one write in flight, one gathering behind it).
            await trio.lowlevel.cancel_shielded_checkpoint()
            if self.writing is None:
                self.writing = trio.Lock()
            # Handed to storage as a lone lane's checkpoint is, cancelled or not: the engine
            # stopping as a compensation ends must not drop its record while the write before
            # it is in flight (the next engine would run that compensation again). A free lock
            # is taken as a shielded acquire() takes it (its checkpoint shielded), with no
            # cancel scope to enter and leave (some fifty Python calls).
            try:
                self.writing.acquire_nowait()
            except trio.WouldBlock:
                with trio.CancelScope(shield=True):
                    await self.writing.acquire()
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
            try:
                self.gathering = None
                await self._write()
            finally:
                self.writing.release()
        except BaseException as exc:
            gathering.failed(exc)
            raise
        finally:
            if self.gathering is gathering:
                self.gathering = None
            gathering.done.set()

    async def _write(self, as_fired: bool = False) -> None:
        assert self.adapter is not None
        s = self.state
        if self.doubt is not None:
            await self._settle_doubt()
        self.fired_at = None  # (stored by this checkpoint)
        try:
            header, records, first_seq, start, consumed = take_changes_with_data(s, self.fired_data) if as_fired \
                else take_changes(s)
        except UnencodableValueError:
            # A step still running (in a sibling branch, another map item) holds a value in the
            # shared data that cannot be stored: the checkpoint stores the data without it, and
            # leaves it to that step, which is checked as it ends.
            header, records, first_seq, start, consumed = take_changes_holding(s)
        # The events about what this checkpoint stores go out once it is stored.
        to_publish = self.unpublished
        if to_publish is not None:
            self.unpublished = None
        status = s.status
        # Only a checkpoint that consumes signals passes ``consumed``, and only one of an
        # instance that waits (or did) passes ``wake_at``: adapters written before either
        # existed keep working for workflows that use neither.
        # A definition with nothing that waits, started without a delay, never waits. Nor does an
        # instance with several lanes while one of them does not rest: storage then says it
        # runs, and a restart takes it up at once (a look at every lane, each time a map of
        # thousands of items checkpoints, would cost as much as all the rest of it).
        wake = wake_at(s, self.definition) if (self.definition.waits or s.lanes[MAIN].waiting
                                               or self.stored_wake_at is not None) \
            and (self.resting + self.announcing == self.active or len(s.lanes) == 1) else None
        extra = _NO_EXTRA
        if consumed or wake is not None or self.stored_wake_at is not None:
            extra = {"consumed": consumed} if consumed else {}
            if wake is not None or self.stored_wake_at is not None:
                extra["wake_at"] = wake
        notify = None if s.parent_id is None else self._end_notice(status)  # (most are no child: no call)
        if notify is not None:
            extra = {**extra, "notify": notify}
        notice_seq: int | None = None
        deadline: float | None = None
        delay = FIRST_BACKOFF
        try:
            while True:
                try:
                    if extra is _NO_EXTRA:  # the usual case: no keyword dict to build
                        await self.adapter.checkpoint(s.instance_id, status, header, records, first_seq=first_seq,
                                                      start=start)
                    else:
                        notice_seq = await self.adapter.checkpoint(
                            s.instance_id, status, header, records, first_seq=first_seq, start=start, **extra)
                    break
                except StorageUnavailableError as exc:
                    if deadline is None:
                        deadline = trio.current_time() + self.storage_retry_for
                    await back_off(exc, deadline, delay, f"checkpoint of instance {s.instance_id}", s.instance_id,
                                   s.workflow_name)
                    delay = min(delay * 2, BACKOFF_MAX)
                except CheckpointConflictError:
                    # Tried again after an error, and refused: the first try may have been stored
                    # and only its answer lost (a commit that failed late, a database behind a
                    # network). If storage holds exactly this checkpoint, it was.
                    if deadline is None or not await self._stored_already(header, records, first_seq, status):
                        raise
                    break
                except UnknownInstanceError:
                    # Tried again after an error, and the row is gone: see ``_purged_once_stored``.
                    if deadline is None or not self._purged_once_stored(status):
                        raise
                    break
        except BaseException as exc:
            if deadline is not None and not isinstance(exc, Exception) \
                    and await self._stored_after_all(header, records, first_seq, status):
                # Cut short (a cancel, the engine closing) while a try whose answer was lost was
                # tried again or read back: that try stored it. Taken as stored, or the next
                # checkpoint would write these records again, and be refused.
                self._now_stored(status, wake, len(records), to_publish, notify, None)
                raise
            if deadline is not None and not isinstance(exc, Exception):
                self.doubt = (first_seq, tuple(records), tuple(consumed))  # (storage could not tell)
            not_taken(s, records, consumed)
            if to_publish is not None:  # (as its records: for the checkpoint that stores them)
                self.unpublished = to_publish + (self.unpublished or [])
            raise
        self._now_stored(status, wake, len(records), to_publish, notify, notice_seq)

    def _now_stored(
        self, status: Status, wake: float | None, count: int, to_publish: list[tuple[str, str, dict[str, Any]]] | None,
        notify: tuple[str, str, bytes] | None, notice_seq: int | None,
    ) -> None:
        """A checkpoint of ``status`` and ``count`` records is stored: note it, publish the
        events it stores, and hand its child's end notice (``notify``) to the parent."""
        taken(self.state, count)
        self.stored_status = status
        self.stored_wake_at = wake
        self.woken = False  # (storage no longer holds the wake-up: later timers are stored as they fire)
        if to_publish is not None:
            for name, lane, payload in to_publish:
                self.emit(name, lane, **payload)
        if notify is not None and self.children is not None \
                and not self.children.deliver_notice(*notify[:2], notice_seq, notify[2]):
            # Beside the run: waking the parent may read storage, and is not this run's work.
            self.children.ended_soon(notify[0], notify[1])
        if (self.definition.records_runs or self.doomed is not None) and status in TERMINAL \
                and self.state.phase == "done" and self.spawn is not None and forgets_runs(self.driver):
            # Its end is stored: what its runs recorded in the driver's ledger is of no more use.
            # (Not a completed child's checkpoints as its parent compensates it as a unit: its
            # status stays completed until that ends, and its compensations' records are read
            # by an undo taken up again after a restart. One ended for a definition changed since
            # may have recorded under steps its definition no longer has: see ended_run_keys.)
            self.spawn(f"forget the ledger records of {self.state.instance_id}", forget_ended_runs, self.driver,
                       self.state, self.definition)

    async def _settle_doubt(self) -> None:
        """Before the next checkpoint after one in doubt (see :attr:`doubt`): if storage holds
        that one's records, they are stored (taken out of the staged ones, its consumed signals
        gone), or this checkpoint would write them again, and be refused. Storage unusable for
        longer than ``storage_retry_for`` raises, as the checkpoint itself would."""
        assert self.doubt is not None and self.adapter is not None
        first_seq, records, consumed = self.doubt
        adapter, s = self.adapter, self.state
        iid = s.instance_id
        stored = await retried(lambda: adapter.load(iid), retry_for=self.storage_retry_for,
                               what=f"reading instance {iid} back", instance_id=iid)
        self.doubt = None
        if stored is None or tuple(stored.records[first_seq:first_seq + len(records)]) != records \
                or s.stored != first_seq or tuple(s.staged[:len(records)]) != records:
            return  # not stored (or written over since): written again with the rest
        s.staged = list(s.staged[len(records):])
        s.stored += len(records)
        s.start_stored = True
        if consumed:
            s.consumed = [seq for seq in s.consumed if seq not in consumed]

    async def _stored_after_all(self, header: bytes, records: Sequence[bytes], first_seq: int, status: str) -> bool:
        """:meth:`_stored_already`, asked as a cancel cuts a retried checkpoint short: shielded,
        and for at most :data:`LOOK_BACK_MOST` seconds (``False`` if storage cannot tell)."""
        with trio.CancelScope(shield=True), trio.move_on_after(LOOK_BACK_MOST):
            try:
                return await self._stored_already(header, records, first_seq, status)
            except Exception:  # (storage still unusable: not known, taken as not stored)
                return False
        return False

    async def _stored_already(self, header: bytes, records: Sequence[bytes], first_seq: int, status: str) -> bool:
        """Whether storage holds this checkpoint's records at ``first_seq`` (records are never
        rewritten), or, for one that appends none, its header: it was stored, though it raised.
        (``status``: the one it stores.)"""
        adapter, iid = self.adapter, self.state.instance_id
        assert adapter is not None
        stored = await retried(lambda: adapter.load(iid), retry_for=self.storage_retry_for,
                               what=f"reading instance {iid} back", instance_id=iid)
        if stored is None:
            return self._purged_once_stored(status)
        if records:
            return tuple(stored.records[first_seq:first_seq + len(records)]) == tuple(records)
        return stored.header == header and len(stored.records) == first_seq

    def _purged_once_stored(self, status: str) -> bool:
        """Whether a row found gone as a checkpoint storing ``status`` is tried again was stored
        by its first try, then purged before the answer came (a commit that failed late, and
        retention or ``purge()`` in the pause before the retry): adapters delete only finished
        rows, and only this checkpoint can have finished it. Its end stands: the run ends as
        stored, and ``wait()`` gives the outcome rather than an error."""
        return status in TERMINAL and self.stored_status not in TERMINAL

    def _end_notice(self, status: str) -> tuple[str, str, bytes] | None:
        """The signal a child instance's end sends its parent, stored with the checkpoint that
        records that end (``None``: not a child, or not its end)."""
        s = self.state
        if s.parent_id is None or status not in TERMINAL or status == "compensated" or self.stored_status in TERMINAL:
            return None
        outcome = {"status": status, "output": s.output, "error": s.error, "error_name": s.error_name,
                   "cause": s.cause}
        if status == "failed" and failure_named_by_workflow(s, self.definition):
            outcome["fail_step"] = True  # its error name is a fail step's text (newer than the notice: read with .get)
        return s.parent_id, child_ended_signal(s.instance_id), encode_payload(outcome, "the child's outcome")

    def wait_ended(self) -> Awaitable[None]:
        """Wait until :meth:`ended` is called (await what this returns: a plain function, so
        that every instance in flight, which usually has a caller of ``wait()``, keeps no
        coroutine frame of its own for it)."""
        if self.end is None:
            self.end = Flag()
        return self.end.wait()

    async def decision_stored(self) -> None:
        """Wait until the decision that the run ends badly (a cancel's) is stored, or the run is
        over, whichever comes first (see :meth:`note_decided`)."""
        if self.decided is None:
            self.decided = Flag()
        await self.decided.wait()

    def note_decided(self) -> None:
        """The decision that the run ends badly is stored (or the run is over)."""
        if self.decided is None:
            # Nobody waits yet: one who asks later (a repeated cancel) must not wait for it.
            self.decided = _SET_FOR_GOOD
        else:
            self.decided.set()

    def ended(self) -> None:
        """Wake every task in :meth:`wait_ended`; called once, when the run has ended."""
        self.note_decided()
        if self.end is None:
            self.end = _SET_FOR_GOOD  # (nobody waits yet: one who asks later returns at once)
        else:
            self.end.set()

    def emit(self, name: str, lane: str = MAIN, **payload: Any) -> None:
        """Publish an event about this instance (callers check ``bus.active``, or for events
        sent at every step ``bus.wants(name)``, first). ``lane``: the key of the lane a step
        event is about, given as ``lane`` unless it is the main line's (a branch's, a map
        item's, one nested in an item: the same step runs in many of them at once)."""
        self.bus.emit(name, event_payload(self.state, lane, payload))

    def emit_end(self, name: str, **payload: Any) -> None:
        """Publish the instance's terminal event (stored already), with when it started (``None``:
        it never did, cancelled while queued or delayed) and ended, Unix seconds: what a metric
        of durations needs without reading the instance back."""
        state = self.state
        self.emit(name, started_at=state.started_at, completed_at=state.completed_at, **payload)

    def emit_once_stored(self, name: str, lane: str = MAIN, **payload: Any) -> None:
        """Publish an event about a step whose completion is staged and not stored yet (the main
        line's last, stored by the instance's terminal checkpoint) once the next checkpoint has
        stored it: a crash before that publishes nothing, and the restart that runs the step
        again publishes it once. Inside a transaction (checkpoints wait for its commit), now."""
        if self.deferred:
            self.emit(name, lane, **payload)
        elif self.unpublished is None:
            self.unpublished = [(name, lane, payload)]
        else:
            self.unpublished.append((name, lane, payload))

    async def step_completed_hook(self, name: str, output: Any, ctx: WorkflowContext) -> None:
        """``on_step_complete`` for an execution whose completion is stored. The hook gets a
        copy of its own: the output may be an earlier record's object (passed on), hold the
        branches' or items' (a fan-out's), or be the shared data's (a task step returning
        ``ctx.get(...)``), and a hook's edits must reach no later step, compensation or outcome,
        which a restart (reading records back) would not see."""
        if self.adapter is not None:
            with contextlib.suppress(UnencodableValueError):  # (stored already: it reads back)
                output = as_stored(output, f"output of step {name!r}")
        await self.hook("on_step_complete", name, output, ctx)

    async def hook(self, name: str, *args: Any) -> None:
        """Call a lifecycle hook, bounded by :data:`HOOK_TIMEOUT`; one that raises or overruns
        is logged and never changes the outcome."""
        fn = getattr(self.definition.hooks, name)
        if fn is None:
            return
        with trio.move_on_after(HOOK_TIMEOUT) as scope:
            try:
                # A plain function runs inline, in the event loop's thread, as a sync event
                # callback does (it may touch trio objects: set an event, start nothing slow);
                # only what it returns to await is bounded.
                result = fn(*args)
                if inspect.isawaitable(result):
                    await result
                elif result is not None and (inspect.isgenerator(result) or inspect.isasyncgen(result)):
                    # (A generator function behind a wrapper build() cannot see through: its
                    # body never runs, which must not pass unseen.)
                    log.error("hook %s of workflow %r gave a generator, which nothing runs: a hook is a function or"
                              " an async def", name, self.definition.name)
            except Exception:
                log.exception("hook %s of workflow %r raised; ignored", name, self.definition.name)
            except BaseException as exc:
                # (Cancelled goes on, as do KeyboardInterrupt and SystemExit; any other is the
                # hook's own, as an Exception would be.)
                if goes_on(exc):
                    raise
                log.exception("hook %s of workflow %r raised; ignored", name, self.definition.name)
        if scope.cancelled_caught:
            log.error("hook %s of workflow %r ran over %g s; cancelled", name, self.definition.name, HOOK_TIMEOUT)
        try:
            self.check_data()
        except UnencodableValueError as exc:
            # A hook never fails a step: what it left that cannot be stored is dropped here,
            # before the next step's check would blame that step.
            log.warning("hook %s of workflow %r left shared data that cannot be stored; dropped: %s",
                        name, self.definition.name, exc)

    async def end_hook(self, name: str) -> None:
        """The ``on_complete``/``on_failed`` hook of a run that has ended: beside the instance
        when an engine runs it (waiters and the slot are not held by it), else inline."""
        if self.spawn is not None:
            # A copy: the hook runs beside callers that already hold the instance's values.
            self.spawn(f"{name} {self.state.instance_id}", self._end_hook_beside, name, self.result(copy=True))
        else:
            await self.hook(name, self.result())

    async def _end_hook_beside(self, name: str, result: WorkflowResult) -> None:
        try:
            await self.hook(name, result)
        except trio.Cancelled:
            # The engine closed without waiting for it (its block raised or was cancelled, or
            # HOOK_TIMEOUT passed as it closed): an end hook runs at most once, so say it was lost.
            log.warning("hook %s of instance %r (workflow %r) cut short as the engine closed; it does not run again",
                        name, self.state.instance_id, self.definition.name)
            raise

    def _duration(self, s: InstanceState) -> float:
        """How long the run took: in an engine, from its start to its end as stored (a run that
        waited out of memory, or was resumed after a crash, was taken up more than once); else
        since this run began."""
        if self.adapter is not None and s.started_at is not None and s.completed_at is not None:
            return float(s.completed_at - s.started_at)
        return float(trio.current_time() - self.started)

    def result(self, *, copy: bool = False) -> WorkflowResult:
        """The outcome of a finished run (``copy``: holding none of the run's own values)."""
        s = copied(self.state) if copy and self.adapter is not None else self.state
        error = self.error
        if error is None and s.error is not None:
            # Ended before this process saw the exception itself (a resumed instance's): known
            # as it was recorded.
            error = RecordedError(s.error, s.error_name, s.cause)
        return WorkflowResult(
            success=s.status == "completed", status=s.status, instance_id=s.instance_id, data=s.data,
            output=s.output, error=error, failed_step=s.failed_step, compensated_steps=compensated_steps(s),
            compensation_errors=compensation_errors(s),
            compensation_errors_by_execution=compensation_errors_by_execution(s), rolled_back=s.rolled_back,
            duration=self._duration(s),
            metadata=metadata_of(s), error_name=s.error_name, cause=s.cause,
        )


class _Gathering:
    """One checkpoint that the lanes completing steps in one scheduler pass share."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = Flag()
        self.error: BaseException | None = None

    def failed(self, error: BaseException) -> None:
        self.error = error

    async def joined(self, shielded: bool = False) -> bool:
        """Wait until the shared checkpoint is over: ``True`` if it was stored, ``False`` if its
        leader was cancelled first (the caller must checkpoint itself); raises what made the
        write fail. ``shielded``: a cancel does not end the wait (see ``Flag.wait_shielded``)."""
        await (self.done.wait_shielded() if shielded else self.done.wait())
        if isinstance(self.error, Exception):
            raise self.error
        return self.error is None

