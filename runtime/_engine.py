"""The engine service: registers workflows and jobs, starts, inspects, cancels and resumes
instances, each run by a supervised instance actor in the engine's nursery."""

from __future__ import annotations

import heapq
import contextlib
import contextvars
import functools
import math
import threading
import time
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Generator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NoReturn, ParamSpec, TypeVar, get_args

import attrs
import trio

from trioflow.actors._child import bound_child_stores
from trioflow.actors._instance import DECISION_TIMEOUT, run_instance, store_cancel, store_queued_cancel, undo
from trioflow.actors._run import HOOK_TIMEOUT, STORAGE_RETRY_FOR, Run, event_payload
from trioflow.actors._supervisor import Supervisor
from trioflow.actors._threads import ThreadSlots
from trioflow._virtual_time import default_clock
from trioflow._codec import (
    as_stored,
    check_encodable,
    copied_view,
    StoredHead,
    decode_head,
    decode_payload,
    decode_stored,
    detached,
    encode_header,
    encode_payload,
    encode_start,
    parent_named_in,
    remember_data,
    stage,
    take_changes,
)
from trioflow.adapters._driver import in_a_transaction_of
from trioflow.adapters._memory import MemoryAdapter
from trioflow.adapters._protocol import (
    Adapter, HeadLoads, KeyedSignals, KeyedSignalsAndLoads, SignalsAndLoads, StoredInstance, creates_waiting,
    excludes_instances, keeps_families, loads_heads, restarts_history, sends_and_loads, sends_keyed,
    sends_keyed_and_loads, skips_workflows, stores_signals, waits_out_of_memory,
)

from ._context import check_services
from ._current import check_in_trio, keep_apart, lane_of_caller
from ._decide import (
    admit, begin_compensation, cut_short_fields, cut_short_record, fail_alone, fail_step, misfit, new_state,
    pending_compensations, pending_until_announced, running_execution_id, steps_under_way, take_up, unended_children,
    wake_at,
)
from ._ids import CreationTimes, new_instance_id
from ._definition import ChildStep, ContinueAsNewStep, ReceiveStep, WorkflowDefinition, built
from ._durations import Seconds, in_range, seconds, unix_seconds
from ._errors import (
    DefinitionError,
    DefinitionMismatchError,
    EngineClosedError,
    InstanceNotLiveError,
    InvalidArgumentError,
    SnapshotDecodeError,
    StorageError,
    StorageUnavailableError,
    TrioflowError,
    UnknownInstanceError,
    UnknownJobError,
    UnknownWorkflowError,
    WorkflowCancelledError,
    WrongTrioRunError,
    describe_error,
    safe_repr,
)
from ._engine_arguments import (
    check_adapter, check_driver_apart, check_given_instance_id, check_instance_id, check_listing, check_same_start, check_same_workflow, check_switch, duration,
    not_the_child, refuses_unbound_arguments,
)
from ._ends_during_reads import EndsDuringReads
from ._escapes import first_stop, goes_on, raise_keeping_context, stops_the_process
from ._events import EventBus
from ._jobs import JobRegistry, check_job_calls
from ._children import EngineChildren, ended_badly
from ._lanes import MAIN, RESERVED_SIGNALS, child_ended_signal, is_signal_name, valid_text
from ._fanout_failures import fails_a_fail_fast_fanout, lane_ends
from ._slot_queue import SlotQueue
from ._storage_retry import BACKOFF_MAX, FIRST_BACKOFF, retried
from ._snapshot import (
    RESUMABLE,
    TERMINAL,
    InstanceState,
    FinishedStatus,
    Status,
    WorkflowInstance,
    compensation_errors_by_execution,
    waits_for,
    to_instance,
    unreadable_instance,
)

log = logging.getLogger("trioflow")

#: Records from which a parked instance's row is decoded header first, to tell whether a lane
#: waits for what would wake it (see ``Engine._wake_if_waiting``): below it, decoding the whole
#: row at once costs less than the header twice.
HEAD_FIRST_FROM = 8
F = TypeVar("F", bound=Callable[..., Any])
#: The order ``get_instances`` lists in: by creation, oldest or newest first.
Order = Literal["oldest", "newest"]


class Engine:
    """A running engine (get one from :func:`open_engine`). No process-wide state: any number
    of engines can run side by side."""

    def __init__(
        self, supervisor: Supervisor, adapter: Adapter, *, max_running: int,
        services: Mapping[str, Any], driver: Any, threads: bool = True,
        leftovers: list[StoredInstance] | None = None, storage_retry_for: float = STORAGE_RETRY_FOR,
        clock: Callable[[], float] = time.time, beside: Supervisor | None = None,
        parked: Iterable[StoredInstance] = (),
    ) -> None:
        #: The trio run the engine runs in, and its thread: calls from any other thread (its own
        #: trio run, or none) are refused (see _check_open).
        self._trio_token = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()
        self.jobs = JobRegistry(on_register=self._jobs_registered, check_open=self._check_open,
                                check_fits=self._check_job_fits)
        self.events = EventBus(check_caller=self._check_thread)
        self.adapter = adapter
        #: Instance actors and the engine's own tasks: stopped when the engine closes.
        self._supervisor = supervisor
        #: What runs start their end hooks with (``beside``: a supervisor whose tasks a closing
        #: engine lets finish), bound once, not once per run.
        self._start_beside = (beside or supervisor).start_soon
        self._services = dict(services)
        self._driver = driver
        #: Instances a previous engine left unfinished, read when this one opened, by workflow:
        #: ``register`` resumes a workflow's share (``None``: auto-resume is off).
        self._leftovers: dict[str, list[StoredInstance]] | None = None
        if leftovers is not None:
            self._leftovers = {}
            for record in leftovers:
                self._leftovers.setdefault(record.workflow_name, []).append(record)
        #: Ids of rows read earlier that wait to be resumed from (an engine's leftovers, rows
        #: held for their jobs). A run of one of them here makes its row old: it is then passed
        #: over, not run again from the snapshot it holds.
        self._old_rows: set[str] = {record.instance_id for record in leftovers or ()}
        #: Opened with ``resume=False`` and no :meth:`resume` since: what an earlier engine left
        #: in flight (a lane mid-step) is held back, a signal for it or not.
        self._holding_back = leftovers is None
        self._threads = ThreadSlots() if threads else None
        self._storage_retry_for = storage_retry_for
        #: Set when what the waker waits for may have changed (an instance parked, a workflow
        #: was registered); the waker replaces it each time it looks.
        self._wake_changed = trio.Event()
        #: Runs that end while reads of storage are in flight (see :class:`EndsDuringReads`).
        self._ends = EndsDuringReads()
        #: Instances the waker resumed that storage may still say are due (they have not
        #: checkpointed since): it passes them over.
        self._waking: set[str] = set()
        #: Workflows replaced (register(replace=True)) whose new definition the runs queued on
        #: the one before switch to once its jobs are registered (see ``_take_up_queued``).
        self._replaced: set[str] = set()
        #: How many due rows the waker's last look found running here (see ``_wake_due``).
        self._live_due = 0
        #: Waits longer than this let an instance leave memory (``None``: never).
        self._park_after: float | None = PARK_AFTER
        #: Instances signalled before their workflow (or a job it uses) was registered, by
        #: workflow name. With auto-resume off, ``parked``: the rows listed as resumable that
        #: wait out of memory (only for signals pending for them, which nothing else would
        #: wake them for: one stored as the engine before closed, say).
        self._wake_on_register: dict[str, set[str]] = {}
        for record in parked:
            self._wake_on_register.setdefault(record.workflow_name, set()).add(record.instance_id)
        #: Due instances the waker cannot resume here, until something is registered: the
        #: workflows whose workflow, or a job it uses, is not registered (the adapter leaves
        #: them out of ``due()`` and ``next_wake()``), and the ids of unreadable rows, and of
        #: all of them with an adapter that cannot leave workflows out (passed over, and not
        #: asked for in place of others). While only passed-over ones are due, it looks again
        #: less and less often (``_look_again`` seconds, up to WAKE_LOOK_MAX).
        self._skipped_workflows: set[str] = set()
        self._passed_over: set[str] = set()
        self._look_again = WAKE_RETRY
        self._adapter_skips = skips_workflows(adapter)
        self._adapter_excludes = excludes_instances(adapter)
        self._adapter_keeps_families = keeps_families(adapter)
        #: Whether a delayed start's row waits from its creation on (see ``creates_waiting``).
        self._adapter_creates_waiting = creates_waiting(adapter)
        #: Whether a signal to an instance not running here is stored and its row read back in
        #: one call (see ``SignalsAndLoads``).
        self._sends_and_loads = sends_and_loads(adapter)
        #: Whether ``signal(..., idempotency_key=)`` can be stored (see ``KeyedSignals``).
        self._sends_keyed = sends_keyed(adapter)
        #: Whether a keyed one to an instance not running here comes back with its row too (see
        #: ``KeyedSignalsAndLoads``).
        self._sends_keyed_and_loads = sends_keyed_and_loads(adapter)
        #: Whether a row is read without its records where its start and header will do (see
        #: ``HeadLoads``).
        self._loads_heads = loads_heads(adapter)
        self._stores_signals = stores_signals(adapter)
        #: For callers of ``wait()`` on a parked instance: set when it runs here again.
        self._next_run: dict[str, _NextRun] = {}
        #: The wall clock timers are on (Unix seconds; ``open_engine(clock=...)``).
        self._clock = clock
        #: (Shared by the engines of one trio run: see CreationTimes.)
        self._creation_times = CreationTimes.of_this_run()
        self._max_running = max_running
        #: Actors running now, and runs waiting for a slot. A waiting run has no task yet:
        #: thousands of queued instances cost a queue entry each, not a parked task.
        self._running = 0
        self._waiting: SlotQueue[Run] = SlotQueue()
        #: Queued parents with a workflow timeout whose children run or wait for slots here, as
        #: ``(deadline, instance id)``: each leaves the queue at its deadline, to cancel them
        #: (see :meth:`_must_cancel_children`). Watched by a task started on first use.
        self._queued_deadlines: list[tuple[float, str]] = []
        self._queued_deadlines_known: set[tuple[float, str]] = set()  # (each once: a parent queues again and again)
        self._queued_deadlines_changed: trio.Event | None = None
        self._definitions: dict[str, WorkflowDefinition] = {}
        #: Each workflow's definition once found to have all its jobs registered (jobs are never
        #: removed): starts and resumes of it (parents and children alike) check them once.
        self._jobs_found: dict[str, WorkflowDefinition] = {}
        #: Instances whose actor lives in this engine (running, or queued for a slot).
        self._live: dict[str, Run] = {}
        #: Ids ``start`` is storing now. A concurrent ``start`` or ``wait`` of the same id waits
        #: until the store is over; a resume leaves them be.
        self._storing: dict[str, _Storing] = {}
        #: Ids a caller gave whose create raised here (other than cancelled: its answer lost, say),
        #: with the creation times those tries stored, if they stored, each with whether a run
        #: here has announced that row since (see ``_instance_actor``): a row found under one
        #: later with one of them (a retried ``start()``) is this engine's own, and announced
        #: already or not. Dropped once such a retry has read the row, or its child step is done
        #: with it.
        self._unanswered: dict[str, dict[float, bool]] = {}
        #: The owed cancels (see :meth:`_owed_cancel`) under way, by id: a start of the id made
        #: meanwhile notes its creation time in them, as an instance not theirs to cancel.
        self._owing: dict[str, list[_Storing]] = {}
        #: The ``signal()`` calls for an id that go one at a time (see :meth:`signal`).
        self._in_order: dict[str, _InOrder] = {}
        #: Stored instances held back from a resume until their workflow's jobs are registered
        #: (a resume that ran them now would fail them for good), by workflow.
        self._held: dict[str, list[StoredInstance]] = {}
        #: Set (and made anew) when a workflow or a job is registered, or the engine closes:
        #: for those waiting until a workflow can run here (see :meth:`_until_runnable`).
        self._registered_more = trio.Event()
        #: Children being compensated as a unit, each until its undo ends: a second undo of one
        #: waits for the first (see :meth:`_undo_child`).
        self._undoing: dict[str, trio.Event] = {}
        #: Instances whose stored snapshot this release cannot read: failed for callers, with
        #: the reason, while their stored bytes stay untouched (a newer release may read them).
        self._unreadable: dict[str, WorkflowInstance] = {}
        #: Instances whose run stopped because storage stayed unusable (or took no checkpoint at
        #: all, not even of their failure), with the error ``wait`` raises for them, until a
        #: resume runs them again.
        self._stalled: dict[str, StorageUnavailableError | InstanceNotLiveError] = {}
        #: Resumes started by ``register`` that have not finished; ``wait``/``cancel`` let them
        #: settle first, so an instance being resumed is never mistaken for one that is not.
        self._pending_resumes = 0
        self._resumes_settled = trio.Event()
        self._resumes_settled.set()
        #: With ``retain_finished``: set when :data:`RETAIN_EVERY` instances finished here since
        #: the last purge, so a busy engine purges before its finished instances pile up.
        self._retain_wake: trio.Event | None = None
        self._finished_since_purge = 0
        #: With ``retain_finished``: when an instance last finished here (the engine's clock;
        #: its opening, if storage held rows an earlier engine finished), and whether the
        #: retention task waits for the next to finish (``wake`` is set then too).
        self._last_finish = -math.inf
        self._retain_idle = False
        self._children = EngineChildren(self)
        #: The contextvars of the task that opened the engine: runs taken up from storage run
        #: with these (see :meth:`_spawn`).
        self._context = contextvars.copy_context()
        self._closed = False
        #: ``_start`` calls past their hold whose store is under way (a caller's task outside the
        #: engine's block may still be in one as the block ends): the close lets them finish, and
        #: store the cancel a ``cancel()`` said yes to meanwhile, before it closes storage (see
        #: :meth:`_let_starts_store`), which sets ``_starts_stored`` once none is left and the
        #: bound those stores then have, ``_starts_store_by`` (for ever until then).
        self._starts_storing = 0
        self._starts_stored: trio.Event | None = None
        self._starts_store_by = math.inf
        #: Set as the actors' nursery stops taking tasks: cancelled from outside the engine's
        #: block (a service shutting down), it stops before the block's body ends and closes the
        #: engine. Nothing may start a run then (a ``start()`` whose write cannot be cancelled
        #: raises ``EngineClosedError``); reads and stores still work until the body ends.
        self._actors_stopped = False

    # -- registration -------------------------------------------------------------------------

    @refuses_unbound_arguments
    def job(self, name: str) -> Callable[[F], F]:
        """Decorator: ``@engine.job("name")`` registers a job."""
        self._check_open()
        return self.jobs.job(name)

    @refuses_unbound_arguments
    def register(self, definition: WorkflowDefinition, *, replace: bool = False) -> None:
        """Make a workflow startable. With auto-resume on (the default), this also resumes the
        instances of that workflow that were left unfinished on the adapter when this engine
        opened.

        Registering the same definition again does nothing; another definition under a name
        already registered raises :class:`DefinitionError` unless ``replace=True``. Then
        instances started from now on use it, and so do instances taken up from storage (after
        a restart, or waking from a wait out of memory); one that no longer fits it fails with
        :class:`DefinitionMismatchError` and compensates what it can. Instances running in
        memory finish on the definition they run with (a ``continue_as_new`` step's next run
        starts on the one registered then); one that has run nothing yet (queued
        for a slot, or waiting in memory for its delayed start) starts on the one registered
        as it starts, as one taken up from storage does (once that one's jobs are registered:
        until then on its own)."""
        self._check_open()
        built(definition, "register()")
        check_switch(replace, "register()'s replace")
        known = self._definitions.get(definition.name)
        if known is not None and not replace:
            if known == definition:
                return
            raise DefinitionError(
                f"workflow {definition.name!r} is registered already with another definition;"
                " pass replace=True to replace it"
            )
        check_encodable(dict(definition.data), f"the initial data of workflow {definition.name!r}: with_data")
        definition.check_driver(self._driver, "open_engine(driver=...)")
        # Its named jobs registered so far take the calls its steps make (those registered later
        # are checked as they are: _check_job_fits), as build() checks the callables it is given.
        check_job_calls(definition, self.jobs)
        if not self._stores_signals:
            self._check_without_signals(definition)
        continuing = next((step for step in definition.steps if isinstance(step, ContinueAsNewStep)), None)
        if continuing is not None and not restarts_history(self.adapter):
            raise InvalidArgumentError(
                f"workflow {definition.name!r}: step {continuing.name!r} continues as new, which needs an adapter"
                f" whose checkpoint() takes restart; {type(self.adapter).__name__}'s does not (docs/adapters.md)")
        if definition.transactional:
            check_driver_apart(self._driver, self.adapter, definition.name)
        self._definitions[definition.name] = definition
        if known is not None:
            self._replaced.add(definition.name)
            self._take_up_queued()
            # Callers of wait() on its parked instances look again: held for jobs this one
            # misses, they must be told so, not wait for a run that will not come.
            self._let_waiters_look(lambda next_run: next_run.workflow == definition.name)
        self._registered()
        if self._actors_stopped:
            return  # (what it would resume or wake is the next engine's)
        signalled = self._wake_on_register.pop(definition.name, None)
        if signalled:
            self._supervisor.start_soon(f"wake signalled {definition.name}", self._wake_signalled, signalled)
        records = self._leftovers.pop(definition.name, None) if self._leftovers is not None else None
        if records:
            self._resume_soon(definition, records)
        elif definition.name in self._held and not self._missing_jobs(definition):
            # Held for jobs the definition it replaces needed, and this one does not.
            self._resume_soon(definition, self._held.pop(definition.name))

    def _check_without_signals(self, definition: WorkflowDefinition) -> None:
        """Refuse a workflow that needs signals stored, on an adapter that stores none: its
        receive steps would wait for ever, and its child steps for their children's ends."""
        needs = next((step for step, _ in definition.lookup.values() if isinstance(step, (ReceiveStep, ChildStep))), None)
        if needs is not None:
            what = "receives a signal" if isinstance(needs, ReceiveStep) else \
                "starts a child workflow, whose end comes as a signal"
            raise InvalidArgumentError(
                f"workflow {definition.name!r}: step {needs.name!r} {what}, which needs an"
                f" adapter that stores signals; {type(self.adapter).__name__} has no send_signal() and signals()"
                " (docs/adapters.md)")

    def _take_up_queued(self) -> None:
        """Runs queued for a slot here that have run nothing yet start on the definition
        registered now in place of theirs, once its jobs are (see ``Run.take_up_release``): as
        it is registered, or they are, not as they launch, so that the workflow timeout watched
        while they queue is the one they run with. (Only workflows replaced while runs queued
        are looked for, and only once their jobs are all there: a call per job registered.)"""
        ready = {name for name in self._replaced if not self._missing_jobs(self._definitions[name])}
        if not ready:
            return
        self._replaced -= ready
        for run in list(self._waiting):
            queued_on = run.definition
            if queued_on.name in ready and self._definitions[queued_on.name] is not queued_on:
                run.take_up_release()
                if run.definition.timeout != queued_on.timeout:  # (the same: watched as it is)
                    self._forget_queued_deadline(run, queued_on)
                    self._watch_queued_deadline(run)

    def _resume_soon(self, definition: WorkflowDefinition, records: list[StoredInstance]) -> None:
        """Resume ``records`` in the background, or hold them until the jobs they need exist
        (refusing at once those that cannot be read: they are reported failed meanwhile)."""
        if self._missing_jobs(definition):
            self._held.setdefault(definition.name, []).extend(r for r in records if self._readable(r))
            return
        if self._actors_stopped:
            return  # stopping (a cleanup's call): they stay as stored, for the next engine
        self._resume_begins()
        self._supervisor.start_soon(f"resume {definition.name}", self._resume_leftovers, records)

    def _resume_begins(self) -> None:
        """A resume in the background begins: ``wait()`` and ``cancel()`` wait for it to end
        (:meth:`_resume_ends`) before they look, rather than find its instances nowhere."""
        if self._pending_resumes == 0:
            self._resumes_settled = trio.Event()
        self._pending_resumes += 1

    def _resume_ends(self) -> None:
        self._pending_resumes -= 1
        if self._pending_resumes == 0:
            self._resumes_settled.set()

    def _registered(self) -> None:
        """A workflow or a job was registered: those waiting until a workflow can run look again,
        and so does the waker, at the due instances it passed over."""
        self._registered_more.set()
        self._registered_more = trio.Event()
        if self._passed_over or self._skipped_workflows:
            self._passed_over.clear()
            self._skipped_workflows.clear()
            self._look_again = WAKE_RETRY
            self._wake_changed.set()

    def _jobs_registered(self) -> None:
        """A job was registered: resume the held instances whose jobs now all exist, and switch
        the queued runs whose replacement waited for it."""
        self._registered()
        self._take_up_queued()
        if self._closed or self._actors_stopped:
            return
        for name in list(self._held):
            definition = self._definitions[name]
            if not self._missing_jobs(definition):
                self._resume_soon(definition, self._held.pop(name))
        for name in list(self._wake_on_register):
            known = self._definitions.get(name)
            if known is not None and not self._missing_jobs(known):
                self._supervisor.start_soon(f"wake signalled {name}", self._wake_signalled,
                                            self._wake_on_register.pop(name))

    def _check_job_fits(self, name: str, fn: Callable[..., Any]) -> None:
        """A job about to be registered as ``name``: :class:`DefinitionError` if a workflow
        registered names it for a call it cannot take (checked the other way at register())."""
        for definition in self._definitions.values():
            if name in definition.job_names:
                check_job_calls(definition, {name: fn})

    def _missing_jobs(self, definition: WorkflowDefinition) -> list[str]:
        if self._jobs_found.get(definition.name) is definition:
            return []  # jobs are never unregistered: found once, found for good
        missing = sorted(n for n in definition.job_names if n not in self.jobs)
        if not missing:
            self._jobs_found[definition.name] = definition
        return missing

    # -- instances ----------------------------------------------------------------------------

    @refuses_unbound_arguments
    async def start(
        self, workflow_name: str, input: Any = None, *, instance_id: str | None = None,
        delay: Seconds | None = None, start_at: datetime | float | None = None,
    ) -> str:
        """Start an instance and return its id once it is stored.

        With ``instance_id`` the call is idempotent: an id that exists already, of the same
        workflow with the same input, is returned as it is, and nothing new starts; one that
        exists with another workflow or input raises :class:`InstanceIdConflictError`. Bad
        input raises before anything is stored. ``delay`` (seconds or a ``timedelta``) or
        ``start_at`` (an aware ``datetime`` or Unix seconds) holds the first step back until
        then, durably: the instance is stored now, waits without a task, and starts on time
        even after a restart. Arguments that do not fit (a keyword it does not take, the
        workflow's name left out, the instance id given positionally) raise
        :class:`InvalidArgumentError` naming them, and the nearest keyword it takes.
        """
        self._check_open()
        starts_at = None if delay is None and start_at is None else self._start_time(delay, start_at)
        return await self._start(workflow_name, input, instance_id, starts_at)

    def _hold_start(self, instance_id: str, workflow_name: str, before: object = None) -> _Storing | None:
        """Hold ``instance_id`` as being stored (see ``Children.hold``): ``None`` if it is
        already (a start of the id in flight: the child step's start waits for it). ``before``:
        a hold of it let go of for now, whose owed cancel (see :meth:`cancel`) this one takes on."""
        if instance_id in self._storing or instance_id in self._live:
            return None
        held = self._storing[instance_id] = _Storing(workflow_name, instance_id)
        if isinstance(before, _Storing):
            held.cancel_owed, held.created_ats, held.newer = before.cancel_owed, before.created_ats, before.newer
            held.cut_at = before.cut_at
        return held

    @staticmethod
    def _cancel_as_made(held: object, at: float) -> None:
        """See ``Children.cancel_as_made``."""
        if isinstance(held, _Storing):
            held.cut_at = min(held.cut_at, at)

    def _cancel_as_made_run(self, storing: _Storing, run: Run) -> None:
        """The run a start made, or took up, is cancelled before its first step (see
        ``_Storing.cancels_its_run``); queued for a slot, as ``cancel()`` cancels a queued run
        (a ``cancel()`` that waited for the store then finds it cancelled; one that gave up
        meanwhile does not undo it, and a child whose parent's step was cut has no call to
        come: queued, it would run its first step as soon as a slot frees)."""
        if run not in self._waiting:
            run.cancel_requested = True
        elif not self._actors_stopped:
            run.cancel_requested = True
            self._cancel_queued(run)

    def _release_start(self, held: object, *, step_over: bool = False) -> None:
        """Let go of what :meth:`_hold_start` held (or ``_start`` itself); ``step_over``: its
        child step is done with it, stored or not (its parent cancelled while it was tried):
        the failed tries' creation times (see ``_start``) are of no more use. (A child hold let
        go of for now runs its owed cancel too, the next hold taking the debt on: see
        :meth:`_hold_start`.)"""
        if isinstance(held, _Storing):
            if self._storing.get(held.instance_id) is held:
                del self._storing[held.instance_id]
                held.done()
                # (Also when let go of for now: the next hold takes the debt on, and may be
                # refused, a resume having taken the child up; the row may be there meanwhile.)
                if held.cancel_owed is not None:
                    # A cancel() said yes as it waited for this store: whatever the store made
                    # of it (a run, queued or not; a row, its answer lost), it is cancelled now;
                    # the engine closed, stored in its row for the next (see _owed_cancel_of).
                    # (Beside the actors, as end hooks run: the actors' nursery may be stopping.)
                    with contextlib.suppress(RuntimeError):  # (that nursery closed first)
                        self._start_beside(f"cancel {held.instance_id}", self._owed_cancel, held)
                        self._owing.setdefault(held.instance_id, []).append(held)
            if step_over and held.instance_id not in self._live:
                # (A run of it here notes whether it announced it, as it ends: see _instance_actor.)
                self._unanswered.pop(held.instance_id, None)

    def _start_child(
        self, workflow_name: str, input: Any, child_id: str, parent_id: str, held: object = None, ours: bool = False,
    ) -> Awaitable[str]:
        """Start a child instance for a child step (``trioflow._children``). An existing child
        is the one a resumed parent started before: taken as it is, whatever its input (an
        ``input`` callable may give another value after a restart). A child of a parent that
        cannot leave memory while it waits (its child steps run in map items or parallel
        branches) runs in its parent's slot rather than wait for one of its own: parents
        holding every slot would otherwise wait forever for their children. (A plain function
        handing back ``_start``'s coroutine: no frame of its own while the child is stored.)"""
        parent = self._live[parent_id]  # it is the parent's run that asks
        return self._start(workflow_name, input, child_id, None, parent=parent.state, slot=parent.may_park(math.inf),
                           ended_maybe=parent.resumed, held=held, ours=ours)

    async def _start(
        self, workflow_name: str, input: Any, instance_id: str | None, starts_at: float | None, *,
        parent: InstanceState | None = None, slot: bool = True, ended_maybe: bool = False, held: object = None,
        ours: bool = False,
    ) -> str:
        if not isinstance(workflow_name, str):
            hint = f": pass its name, {workflow_name.name!r}" if isinstance(workflow_name, WorkflowDefinition) else ""
            raise InvalidArgumentError(
                f"start() takes a registered workflow's name, got {type(workflow_name).__name__}{hint}")
        definition = self._runnable(workflow_name)
        given_id = instance_id is not None
        if instance_id is None:
            instance_id = new_instance_id()
        else:
            check_given_instance_id(instance_id)
        waited: _Storing | None = None
        while (storing := self._storing.get(instance_id)) is not None and storing is not held:
            # Another ``start`` of this id is storing it: its outcome decides this one's.
            check_same_workflow(instance_id, storing.workflow_name, workflow_name)
            await storing.wait()
            if storing.cancel_owed is not None or waited is None:
                waited = storing  # (one owed a cancel is kept: another start may store between)
            self._check_open()  # (closed meanwhile: see _close)
        live = self._live.get(instance_id)
        if live is not None:
            check_same_start(instance_id, live.state, workflow_name, input, parent)
            return instance_id
        if ended_maybe and parent is not None and await self._ended_before(instance_id, parent):
            return instance_id  # it ran, and ended: its parent's step takes the end notice
        # Kept as storage gives it back: a resumed run reads the same (a tuple as a list).
        input = as_stored(input, "workflow input")
        # A free slot is taken now, not when the instance is spawned: starts storing at the same
        # time would otherwise all store ``running`` and then wait in the queue, listed under
        # a status they do not have.
        reserved = slot and self._running < self._max_running
        status: Status = "pending" if slot and not reserved else "running"
        state = new_state(definition, instance_id, input, self._creation_times.stamp(self._clock()), status=status)
        state.parent_id = None if parent is None else parent.instance_id
        if starts_at is not None:
            state.lanes[MAIN].waiting = {"start": starts_at}
            state.started_at = None  # set when it starts: its timeout counts from then
        elif status == "running" and pending_until_announced(definition, state):
            state.status = status = "pending"  # (until its on_start hook has run: see there)
            state.started_at = None  # (set as it is admitted)
        if state.data:
            remember_data(state)
        start, header = encode_start(state), encode_header(state)
        # (Not on an adapter the waker cannot ask: its rows that wait are woken by nothing.)
        wake = None if starts_at is None or not self._adapter_creates_waiting or self._park_after is None \
            else _created_wake(starts_at, self._clock())
        # Written out rather than split into a helper: every waiting start's coroutine frame is
        # alive while it stores, and thousands of starts in flight are walked by the cyclic GC.
        if reserved:
            self._running += 1
        # (Held since before its parent's write that lists it, for a child: see _hold_start.)
        if storing is None:
            storing = self._storing[instance_id] = _Storing(workflow_name, instance_id)
            if waited is not None and waited.cancel_owed is not None:
                # A retry of a start that a cancel() said yes to as it waited, made while that
                # start stored: what it stores is cancelled too (README), whatever the order in
                # which the owed cancel and this retry run now.
                storing.cancel_owed, storing.created_ats = waited.cancel_owed, waited.created_ats
        else:
            self._storing[instance_id] = storing
        storing.created_ats += (state.created_at,)
        for owed in self._owing.get(instance_id, ()):
            if owed is not waited:  # (not the one it retries: see above)
                owed.newer += (state.created_at,)
        self._starts_storing += 1  # (the engine's close waits for it: see _let_starts_store)
        try:
            freed = 0  # refused creates whose row was gone as it was read (see below)
            while True:
                try:
                    if parent is not None and self._adapter_keeps_families:
                        # (Kept by purges while its parent is stored: the parent may compensate it.)
                        created = await self.adapter.create(instance_id, workflow_name, status, start=start, header=header,
                                                            parent_id=parent.instance_id)
                    elif wake is not None:
                        created = await self.adapter.create(instance_id, workflow_name, status, start=start, header=header,
                                                            wake_at=wake)
                    else:
                        created = await self.adapter.create(instance_id, workflow_name, status, start=start, header=header)
                except trio.Cancelled:
                    raise  # (a create cancelled wrote nothing: docs/adapters.md, Cancellation)
                except BaseException:
                    if given_id:
                        # Stored, perhaps, its answer lost: a retry finds it (see not created, below).
                        # (An id made here is known to nobody who could retry it.)
                        tries = self._unanswered.setdefault(instance_id, {})
                        tries[state.created_at] = False
                        if len(tries) == 1 and not self._closed:  # (one look per id: later tries join it)
                            with contextlib.suppress(RuntimeError):  # (the actors' nursery closed first)
                                # (With the actors: a look storage keeps waiting ends as the engine closes.)
                                self._supervisor.start_soon(f"look for the row of lost start {instance_id}",
                                                            self._look_for_lost_start, instance_id)
                    if (self._closed or self._actors_stopped) and storing.cancels_its_run():
                        # Stored, perhaps: no owed cancel runs once the engine is closed (see
                        # _release_start), so the cancel goes into its row now, if it is there
                        # (before storage closes, within the close's bound: see _let_starts_store).
                        await self._store_cancel_in_its_row(storing, self._starts_store_by)
                    raise
                if created and (self._closed or self._actors_stopped):
                    if storing.cancels_its_run() and await self._store_cancel_as_made(state, self._starts_store_by):
                        raise EngineClosedError(
                            f"the engine closed while instance {instance_id!r} was being stored, cancelled; the next"
                            " engine ends it cancelled without running a step")
                    raise EngineClosedError(
                        f"the engine closed while instance {instance_id!r} was being stored; it is stored {status}"
                        " and the next engine resumes it"
                    )
                # (Read, not taken: a try that fails to read its row below keeps them for the next.)
                tried = self._unanswered.get(instance_id, _NO_TRIES)
                if created:
                    break
                # It exists: stored by an earlier engine (a resume may be running it here by now),
                # or by a concurrent ``start``. Idempotent, unless it is another workflow's.
                run = self._live.get(instance_id)
                if run is not None:
                    check_same_start(instance_id, run.state, workflow_name, input, parent)
                    self._unanswered.pop(instance_id, None)
                    return instance_id
                if (self._closed or self._actors_stopped) and storing.cancels_its_run() \
                        and await self._store_cancel_in_its_row(storing, self._starts_store_by):
                    raise EngineClosedError(
                        f"the engine closed while instance {instance_id!r} was being stored, cancelled; the next"
                        " engine ends it cancelled without running a step")
                self._check_open()  # closed while it was stored: an idempotent start may be made again
                # (A caller's start of an instance that has ended needs only its start and status:
                # read without its records where the adapter can. A child step's reads it whole,
                # told of a child whose records are unreadable.)
                existing = await self._load_fresh(instance_id) if parent is not None \
                    else await self._load_unless_ended(instance_id)
                self._check_open()  # (as a first try closed on its store says: the next engine goes on)
                if existing is None:
                    # Deleted between the refused create and this read (a purge, or retention,
                    # of the finished instance that refused it): the id is free again. This call
                    # returns only once an instance is stored under it, so it is created again,
                    # as the same start: its hold, its slot and its creation time (noted above,
                    # for owed cancels) are kept. A child that ended and was purged meanwhile
                    # does not run again: its parent holds its end notice, as checked above.
                    if parent is not None and await self._ended_before(instance_id, parent):
                        return instance_id
                    freed += 1
                    if freed >= START_FREED_TRIES:
                        # Not a race any more (each pass needs a finished row deleted between
                        # two calls), but storage whose create and load disagree.
                        raise StorageError(
                            f"instance {instance_id!r} could not be started: {type(self.adapter).__name__}.create()"
                            f" refused it {freed} times as stored, and load() found no row under it after each")
                    continue
                never_ran = fresh = False  # (this call's own row, nothing run: see below)
                try:
                    found = _decoded(existing) if parent is not None or existing.status in RESUMABLE \
                        else _decoded_head(existing)
                except SnapshotDecodeError as exc:  # unreadable: reported as such elsewhere
                    check_same_workflow(instance_id, existing.workflow_name, workflow_name)
                    if parent is not None:
                        # Its parent, taking up its child step, knows it by now: told it
                        # failed, whatever the row names (its start may be the damaged part).
                        self._children.unreadable(parent.instance_id, instance_id, exc)
                else:
                    check_same_start(instance_id, found, workflow_name, input, parent)
                    storing.created_ats += (found.created_at,)  # (the instance this start stands for)
                    for owed in self._owing.get(instance_id, ()):
                        if owed is not storing and owed.made_it(found.created_at):
                            # The instance a cancel() said yes to, its owed cancel under
                            # way: cancelled as it is taken up, not once its run has begun.
                            storing.cancel_owed = owed.cancel_owed
                    # This engine's own row: a child's (its id is new), or stored by an
                    # earlier try of this start whose answer was lost (its creation time).
                    ours = ours or found.created_at in tried
                    if isinstance(found, InstanceState):  # (not a head: one of a row that has ended runs no more)
                        # Nothing run of it: it runs as a start made here does (a child step
                        # of an unregistered workflow fails), not as one taken up from storage.
                        never_ran = ours and existing.workflow_name == workflow_name and not found.records
                        # Not started yet either (not waiting in its first step, not queued: a
                        # pending row is announced as it gets its slot, and a delayed one once
                        # its start time comes, as a resumed one is), nor announced by a run
                        # here since its lost try (how the row came to be stored running depends
                        # on the definitions registered since: register(replace=True) may have
                        # added or removed an on_start hook). (A row of this engine's not among
                        # its lost tries: see pending_until_announced.)
                        announced = tried.get(found.created_at)
                        if announced is None:
                            announced = pending_until_announced(definition, found)
                        fresh = never_ran and existing.status == "running" and found.lanes[MAIN].waiting is None \
                            and not announced
                if not (fresh or (never_ran and existing.status == "pending")):
                    # Its row is found, and known for what it is. (Not one the run this call
                    # takes up is yet to announce: a fresh one, or a pending one, announced as it
                    # is admitted. The run notes whether it did: a retry after it stopped before
                    # that, its admission's or its on_start hook's store lost, announces it.)
                    self._unanswered.pop(instance_id, None)
                if parent is not None and existing.status in TERMINAL:
                    await self._check_end_noticed(instance_id, parent)
                if (ours or self._leftovers is not None or not self._holding_back) \
                        and existing.status in RESUMABLE:
                    # Unfinished and not running here (a resume may have passed it over while
                    # this call stored it): with auto-resume on, or once resume() was called,
                    # resuming is this call's job; and whatever ``resume=`` says for a row
                    # this engine stored (``ours``: an earlier try's whose answer was lost,
                    # or a child's, whose id is new), not an earlier engine's to hold back.
                    # (On its own workflow: a parent's child step may now name another.)
                    if existing.workflow_name != workflow_name:
                        try:
                            definition = self._runnable(existing.workflow_name)
                        except (UnknownWorkflowError, UnknownJobError):
                            return instance_id  # (resumed once they are registered, as stored ones are)
                    self._release_start(storing)  # (a resume passes over one being stored)
                    run = self._resume_one(definition, existing)
                    if run is not None:
                        if never_ran:
                            run.from_storage = False
                        if fresh:
                            # It starts now, as one just stored does (announced, its on_start
                            # hook run), its slot, status and start time as a resume's.
                            run.unannounced = True
                        if run.state.phase == "forward" and storing.cancels_its_run():
                            self._cancel_as_made_run(storing, run)
                return instance_id
            if tried:
                del self._unanswered[instance_id]  # (nothing was stored under it: this one is new)
            run = self._spawn(definition, state, resumed=False, slot=slot, reserved=reserved)
            if wake is not None:
                run.stored_wake_at = wake
            if parent is not None and not reserved and slot:
                self._children.stored_queued(parent.instance_id, run)
            if storing.cancels_its_run():
                self._cancel_as_made_run(storing, run)
            if storing.signalled:
                # A signal for it may have been stored as it was: handed to the run only once
                # that signal()'s write returns, it could be taken after later ones (sent to the
                # run as it runs). The run reads what storage holds first, in the order stored,
                # as one taken up from storage does.
                run.signals_fetched = False
            reserved = False  # the run has it
            return instance_id
        finally:
            # (Counted off first, so that what follows raising cannot keep the close waiting: it
            # stores nothing, and has no checkpoint at which the close could go on before it ends.)
            self._starts_storing -= 1
            if not self._starts_storing and self._starts_stored is not None:
                self._starts_stored.set()
            # A child's hold outlasts its store: its step lets go of it once this call is over
            # (or tries again, after a failed try). Until then, and until this call is over
            # (its run made, its row read and resumed), a cancel(), signal() or wait() of it
            # waits: none finds it stored and not run here.
            if storing is not held:
                self._release_start(storing)
            if reserved:
                self._free_slot()  # not run here in this slot after all: it goes to the queue

    async def _look_for_lost_start(self, instance_id: str) -> None:
        """After a ``start()`` of a given id raised (its create may have stored the row, its
        answer lost): once storage answers, look whether it holds a row one of the lost tries
        stored. If not, their notes (see ``_unanswered``) go: nothing was stored under them,
        and a caller that never tries again would leave them for the life of the engine. (A
        row one of them stored keeps them, as the row is kept: a retry, a resume or the run's
        end drops them.)"""
        delay = FIRST_BACKOFF
        while True:
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
            tries = self._unanswered.get(instance_id)
            if tries is None:
                return  # (a retry read the row, or a run of its row here ended)
            if instance_id in self._live or instance_id in self._storing:
                # A start of it in flight reads or creates the row itself; a run of it here
                # may be of another row (stored before the failed tries): looked for once over.
                continue
            looked_for = list(tries)
            try:
                stored = await self._load_fresh(instance_id)
                ours = stored is not None and _decoded(stored).created_at in looked_for
            except SnapshotDecodeError:
                return  # (a row all the same: kept with it)
            except StorageError:
                continue  # (still unavailable: looked for again, later)
            if ours:
                return
            tries = self._unanswered.get(instance_id)
            if tries is None:
                return
            for created_at in looked_for:
                tries.pop(created_at, None)  # (a try since, in flight during the read, stays)
            if not tries:
                del self._unanswered[instance_id]
                return

    async def _owed_cancel(self, owed: _Storing) -> None:
        """The cancel a ``cancel()`` said yes to before the store ``owed`` was over: of the
        instance that store made or found (by its creation time: one of its tries', or one from
        before the cancel was said), not of one created under its id since. Handed on to a store
        of the id under way now (a retried start, a child step's next try). Shielded, for a
        bounded time, as a decision stored as the engine stops is (see
        ``trioflow.actors._instance``): the engine's shutdown may be what the store ended in."""
        try:
            await self._owed_cancel_of(owed)
        finally:
            owing = self._owing.get(owed.instance_id, [])
            owing.remove(owed)
            if not owing:
                self._owing.pop(owed.instance_id, None)

    async def _owed_cancel_of(self, owed: _Storing) -> None:
        instance_id = owed.instance_id
        assert owed.cancel_owed is not None
        if self._pending_resumes and instance_id not in self._live and not self._actors_stopped:
            # Unbounded (a resume may read storage slow to answer), and not once the actors
            # stopped (a resume then takes nothing up). An engine that closes meanwhile leaves
            # the instance as last stored (README), as it leaves any decision not yet stored.
            await self._resumes_settled.wait()
        async def attempt() -> None:
            again = self._storing.get(instance_id)
            # Handed on to a retry made while the store was under way, or a child step's next
            # try, which carry it already; not to a start of the id made since (nor one of
            # another workflow).
            if again is not None and again.workflow_name == owed.workflow_name and again.cancel_owed is not None:
                again.cancel_owed = owed.cancel_owed if again.cancel_owed is None else again.cancel_owed
                again.created_ats += owed.created_ats
                again.newer += owed.newer
                return
            run = self._live.get(instance_id)
            if run is None:
                stored = await self._load_fresh(instance_id)
                if stored is None or stored.status not in RESUMABLE:
                    return
                created_at = _decoded(stored).created_at
            else:
                created_at = run.state.created_at
            if owed.made_it(created_at):
                self._check_open()
                await self._cancel(instance_id)

        with trio.CancelScope(shield=True, deadline=trio.current_time() + 2 * CANCEL_STORE_WAIT) as bounded:
            try:
                # (Storage that fails a moment must not drop a cancel a caller was told is made.)
                try:
                    await retried(attempt, retry_for=self._storage_retry_for, what=f"cancelling {instance_id}",
                                  instance_id=instance_id)
                except EngineClosedError:
                    # Closed as it read, waited or wrote: the cancel goes into the row, for the
                    # next engine, as a decision stored as the engine closes (within this bound).
                    await self._store_cancel_in_its_row(owed, bounded.deadline)
            except TrioflowError as exc:
                log.warning("instance %s, cancelled while it was stored, could not be cancelled: %s", instance_id,
                            describe_error(exc), extra={"instance_id": instance_id})
        if bounded.cancelled_caught:
            log.warning("instance %s, cancelled while it was stored, could not be cancelled in %g s", instance_id,
                        2 * CANCEL_STORE_WAIT, extra={"instance_id": instance_id})

    def _runnable(self, workflow_name: str) -> WorkflowDefinition:
        """The definition an instance of ``workflow_name`` would run here now;
        :class:`UnknownWorkflowError` or :class:`UnknownJobError` if none can."""
        definition = self._definitions.get(workflow_name)
        if definition is None:
            known = ", ".join(sorted(self._definitions)) or "none"
            raise UnknownWorkflowError(f"no workflow registered as {workflow_name!r} (registered: {known})")
        missing = self._missing_jobs(definition)
        if missing:
            raise UnknownJobError(f"workflow {workflow_name!r} uses jobs nobody registered: {', '.join(missing)}")
        return definition

    async def _ended_before(self, child_id: str, parent: InstanceState) -> bool:
        """Whether a resumed parent holds the end notice of the child it is about to start: the
        child ran, ended and was purged before the parent stored that it started it (a crash
        in between), and must not run again."""
        notice = child_ended_signal(child_id)
        if any(name == notice for _, name, _ in parent.signals):
            return True
        return any(name == notice for _, name, _ in await self.adapter.signals(parent.instance_id))

    async def _check_end_noticed(self, child_id: str, parent: InstanceState) -> None:
        """A child step found its child ended already: a parent resumed after its child ended
        has the child's end notice pending (the step that would consume it has not completed).
        Without one, the instance is the child of an earlier instance with the parent's id
        (deleted, then its id started again), whose end this parent would wait for in vain."""
        notice = child_ended_signal(child_id)
        if any(name == notice for _, name, _ in parent.signals):
            return
        if not any(name == notice for _, name, _ in await self.adapter.signals(parent.instance_id)):
            raise not_the_child(child_id, parent)

    def _start_time(self, delay: Seconds | None, start_at: datetime | float | None) -> float | None:
        """When a delayed start starts (Unix seconds on the engine's clock), or ``None``."""
        if delay is not None and start_at is not None:
            raise InvalidArgumentError("give either delay or start_at, not both")
        if delay is not None:
            value = seconds(delay)
            if not in_range(value):
                raise InvalidArgumentError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
            return float(self._clock() + value)
        if start_at is None:
            return None
        if isinstance(start_at, datetime):
            moment = unix_seconds(start_at)
            if moment is None:
                raise InvalidArgumentError(
                    f"start_at must be an aware datetime (with a tzinfo that gives a UTC offset), got {start_at!r}")
            return moment
        if not in_range(start_at):
            raise InvalidArgumentError(f"start_at must be an aware datetime or Unix seconds (a finite number >= 0), got {start_at!r}")
        return float(start_at)

    @refuses_unbound_arguments
    async def signal(
        self, instance_id: str, name: str, payload: Any = None, *, idempotency_key: str | None = None,
    ) -> None:
        """Send the signal ``name`` to an instance; returns once it is stored. The instance's
        next receive step for that name takes it (first in, first out), now or later, even
        after a restart; each signal is taken once. With ``idempotency_key``, it is stored once
        per instance and key: a call with a key stored before for the instance (a webhook
        delivered again, a retry after a lost answer) returns, storing nothing, even once the
        instance has ended.

        Raises :class:`UnknownInstanceError` for an unknown instance, and
        :class:`InstanceNotLiveError` for one that has ended (nothing is stored then)."""
        self._check_open()
        check_instance_id(instance_id)
        if not is_signal_name(name):
            raise InvalidArgumentError(
                f"a signal name must be a non-empty string of valid text not starting with"
                f" {RESERVED_SIGNALS!r} (trioflow's own), got {name!r}")
        if idempotency_key is not None and not (
                isinstance(idempotency_key, str) and idempotency_key and valid_text(idempotency_key)):
            raise InvalidArgumentError(
                f"idempotency_key must be a non-empty string of valid text (or None), got {safe_repr(idempotency_key)}")
        if not self._stores_signals:
            raise StorageError(f"signal {name!r} cannot be stored: {type(self.adapter).__name__} has no send_signal()"
                               " and signals() (docs/adapters.md); nothing was stored")
        if idempotency_key is not None and not self._sends_keyed:
            adapter = type(self.adapter).__name__
            why = f"{adapter} has no send_keyed_signal()" if not hasattr(self.adapter, "send_keyed_signal") else (
                f"{adapter} overrides send_signal() below the class that defines its send_keyed_signal(), which would"
                " store keyed signals past it (override send_keyed_signal() too)")
            raise StorageError(
                f"signal {name!r} cannot be stored with an idempotency key: {why} (tf.adapters.KeyedSignals,"
                " docs/adapters.md); nothing was stored")
        data = encode_payload(payload, f"the payload of signal {name!r}")
        running = self._live.get(instance_id)
        storing = None if running is not None else self._storing.get(instance_id)
        queue = self._in_order.get(instance_id)
        if storing is None and queue is None:
            await self._send(instance_id, name, data, running, idempotency_key)
            return
        # Its start is being stored (a child's, from before its parent's write that lists it),
        # or a cancel's write; or calls made then are still under way. The calls go one at a
        # time, in the order made, until none is left: none overtakes one made before it, as
        # their retries, woken together, would. Each is sent at once: the row may be there
        # (stored, its answer not back), and the run that start makes then reads storage before
        # it takes anything (see _start); where no row is there yet, sent again once the store
        # is over.
        if storing is not None:
            storing.signalled = True
        if queue is None:
            queue = self._in_order[instance_id] = _InOrder()
        queue.calls += 1
        try:
            async with queue.lock:
                self._check_open()  # (closed while calls before it went: see _close)
                if instance_id not in self._storing:
                    await self._send(instance_id, name, data, self._live.get(instance_id), idempotency_key)
                    return
                try:
                    await self._send(instance_id, name, data, None, idempotency_key)
                except UnknownInstanceError:
                    while (storing := self._storing.get(instance_id)) is not None:
                        await storing.wait()
                        self._check_open()
                    await self._send(instance_id, name, data, self._live.get(instance_id), idempotency_key)
        finally:
            queue.calls -= 1
            if not queue.calls:
                del self._in_order[instance_id]

    async def _send(self, instance_id: str, name: str, data: bytes, running: Run | None, key: str | None) -> None:
        """Store signal ``name`` (its payload encoded: ``data``) and hand it over (see
        :meth:`signal`); ``running``: the instance's run here when it was called; ``key``: its
        idempotency key."""
        row = None
        # The runs of it that end here from now on, until the signal is handed over.
        watch = self._ends.watching(instance_id)
        with watch as ended_since:
            # Not running here (parked, most likely), and the adapter can: its row comes back with
            # the write, for the wake, rather than in a read of its own. Unless a run of it ended
            # meanwhile (the row may predate that run's last checkpoint), or another signal was
            # stored (the row may not hold it): it is read again.
            if key is not None:
                if running is None and self._sends_keyed_and_loads:
                    keyed_combined: KeyedSignalsAndLoads = self.adapter  # type: ignore[assignment]
                    seq, seen, row = await keyed_combined.send_keyed_signal_and_load(instance_id, name, data, key)
                else:
                    keyed: KeyedSignals = self.adapter  # type: ignore[assignment]
                    seq, seen = await keyed.send_keyed_signal(instance_id, name, data, key)
                if seen:
                    if seq is not None:
                        await self._hand_over_stored(instance_id, seq)
                    return
            elif running is None and self._sends_and_loads:
                combined: SignalsAndLoads = self.adapter  # type: ignore[assignment]
                seq, row = await combined.send_signal_and_load(instance_id, name, data)
            else:
                seq = await self.adapter.send_signal(instance_id, name, data)
            if seq is not None:
                self._ends.signal_stored(instance_id)
                self._warn_if_untaken(instance_id, name, running, row)
            if row is not None and (ended_since() or watch.signals_stored() > 1):
                row = None
            stored_at = self._clock()  # a receive whose deadline came before now does not take it
            if seq is None:
                raise InstanceNotLiveError(f"instance {instance_id!r} has ended; signal {name!r} was not stored")
            if self._closed:
                return  # stored: the next engine delivers it (an error here would have it sent twice)
            await self._hand_over(instance_id, name, seq, data, running, stored_at, row, ended_since)

    def _warn_if_untaken(self, instance_id: str, name: str, run: Run | None, row: StoredInstance | None) -> None:
        """Warn of a signal just stored that no receive step of the instance's workflow takes
        (a misspelt name, most likely: nothing would ever take it). It stays stored all the same,
        for a later release of the workflow may take it. Said when the workflow is known here
        without a read: its run here, or its row read back with the signal (the bundled adapters)."""
        run = run or self._live.get(instance_id)
        definition = run.definition if run is not None else (
            None if row is None else self._definitions.get(row.workflow_name))
        if definition is not None and name not in definition.signals:
            log.warning("signal %r for instance %s is stored, but no receive step of workflow %r takes it%s",
                        name, instance_id, definition.name,
                        f" (it takes {sorted(definition.signals)!r})" if definition.signals else " (it has none)",
                        extra={"instance_id": instance_id, "workflow_name": definition.name})

    async def _hand_over_stored(self, instance_id: str, seq: int) -> None:
        """``signal()``'s :meth:`_deliver` of the keyed signal ``seq`` an earlier call stored and
        is pending still: that call may have raised after the write (its answer lost, or it was
        cancelled, or its engine closed), its hand-over never made, and the retry the docs
        prescribe must not leave it for a restart. (Handed over twice, if that call's went
        through: a run passes over a signal it holds or took.) As stored: its name and payload
        are the first call's."""
        stored = next(((name, data) for q, name, data in await self.adapter.signals(instance_id) if q == seq), None)
        if stored is not None and not self._closed:
            await self._hand_over(instance_id, stored[0], seq, stored[1], None, self._clock(), None, None)

    async def _hand_over(self, instance_id: str, name: str, seq: int, data: bytes, running: Run | None,
                         stored_at: float, row: StoredInstance | None, ended_since: Callable[[], bool] | None) -> None:
        """``signal()``'s :meth:`_deliver` of the signal it stored."""
        try:
            await self._deliver(instance_id, name, seq, data, running, stored_at, row, ended_since)
        except (trio.Cancelled, StorageError) as exc:
            # The signal is stored: an error now, or ``Cancelled`` (for trio: not done), would
            # have the caller send it again (taken twice), and a parked receive with no timeout
            # has nothing else to wake it before a restart. It is delivered beside the caller
            # instead (unless the engine is closing: the next one's resume takes it up), and
            # ``signal()`` returns: it is done. A cancellation of the caller stays in force
            # (trio's are level-triggered): the caller's next checkpoint raises it.
            if not self._closed:
                with contextlib.suppress(RuntimeError):  # (its nursery closed first)
                    self._supervisor.start_soon(f"deliver signal to {instance_id}", self._deliver_later,
                                                instance_id, name, seq, data, stored_at)
            if isinstance(exc, StorageError):
                log.warning("signal %r for instance %s is stored, and is delivered %s: %s", name, instance_id,
                            "by the next engine" if self._closed else "beside the caller", describe_error(exc),
                            extra={"instance_id": instance_id})

    @staticmethod
    def _give_stored(run: Run, signals: Sequence[tuple[int, str, bytes]], *, complete: bool) -> None:
        """Give a run taken up here the signals read with its row (or just after), so that it
        needs no read of its own; unless another signal was stored for it while they were read
        (not ``complete``): the read may not hold it, and its hand-over, over by now, found no
        run to give it to. It then reads storage at its first receive (a signal sent later,
        handed to it, would otherwise be taken first, or that one left for nobody)."""
        run.deliver_stored(signals)
        if not complete:
            run.signals_fetched = False

    async def _deliver(self, instance_id: str, name: str, seq: int, data: bytes, running: Run | None,
                       stored_at: float, row: StoredInstance | None = None,
                       ended_since: Callable[[], bool] | None = None) -> None:
        """Hand a stored signal to the instance's run here, or resume the instance if it is
        parked waiting for it. ``running``: the run that was live when the signal was sent;
        ``row``: the instance's row, read with the write that stored the signal (``None``: read
        it if need be); ``ended_since``: whether a run of it has ended here since the signal
        was sent (``None``: not known)."""
        while (storing := self._storing.get(instance_id)) is not None:
            # Being stored here (a start that finds it stored, a cancel's write): handed to the
            # run that makes, or woken for it from a row read now (that run may have left
            # memory meanwhile).
            await storing.wait()
            if self._closed:
                return  # stored: the next engine delivers it
            row = None
        run = self._live.get(instance_id)
        if run is not None and run is not running:
            # Taken up from storage while the signal was stored (storage slow to answer): a run
            # of it that ended here since may have read the signal from storage and taken it,
            # and a later receive must not take it again. (The live one passes over what it took
            # or holds.) Handed over at once otherwise: a look at storage first would let later
            # signals of the name, handed over meanwhile, be taken before it.
            if ended_since is not None:
                # signal() has watched since before the send: only runs that ended since can
                # have taken it, and they are known.
                if self._ends.took(instance_id, seq):
                    return
            else:
                # Beside signal() (see _deliver_later): storage says whether it is pending still,
                # read until no run of it ended during the read (one that did may have taken it
                # after the read began).
                while True:
                    with self._ends.watching(instance_id) as ended_during:
                        pending = any(q == seq for q, _, _ in await self.adapter.signals(instance_id))
                        if not ended_during():
                            break
                if not pending:
                    return
                run = self._live.get(instance_id)
                row = None
        if run is None:  # parked (or stored, not running here): resumed if it waits for this
            run, fresh = await self._wake_if_waiting(
                instance_id, lambda waiting: waiting.get("signal") == name, pending=seq, row=row)
            if fresh:
                # Resumed from a row read after the signal was stored: the run has it if it is
                # still pending. (Handed over again, one a run before this one took and parked
                # after would be taken twice.)
                assert run is not None
                run.note_signal_time(seq, stored_at)
                return
        if run is not None:
            run.deliver(seq, name, decode_payload(data), stored_at=stored_at)  # (a copy: the caller keeps its own)

    async def _deliver_later(self, instance_id: str, name: str, seq: int, data: bytes, stored_at: float) -> None:
        """:meth:`_deliver`, beside a ``signal()`` whose caller went (cancelled) or whose
        delivery failed; storage that fails in a way that may pass is tried again."""
        await retried(lambda: self._deliver(instance_id, name, seq, data, None, stored_at),
                      retry_for=self._storage_retry_for, what=f"delivering signal {name!r} to instance {instance_id}",
                      instance_id=instance_id)

    async def _wake_for(self, instance_id: str, names: set[str]) -> None:
        """Resume a parked instance if a lane of it waits for one of the signals ``names``,
        stored for it; storage that fails in a way that may pass is tried again."""
        await retried(lambda: self._wake_if_waiting(instance_id, lambda waiting: waiting.get("signal") in names),
                      retry_for=self._storage_retry_for, what=f"waking instance {instance_id} for its signals",
                      instance_id=instance_id)

    async def _wake_signalled(self, instance_ids: set[str]) -> None:
        """Instances signalled before their workflow was registered: resumed if they wait for a
        signal storage holds for them (the run takes it)."""
        for instance_id in instance_ids:
            if instance_id not in self._live:
                try:
                    await retried(lambda: self._wake_if_waiting(instance_id, None),  # noqa: B023 (awaited here)
                                  retry_for=self._storage_retry_for, what=f"waking instance {instance_id} for its signals",
                                  instance_id=instance_id)
                except StorageError as exc:  # (each alone: one bad row never stops the others)
                    log.error("instance %s could not be woken for its signals: %s", instance_id, exc,
                              extra={"instance_id": instance_id})

    async def _wake_if_waiting(
        self, instance_id: str, wakes: Callable[[dict[str, Any]], bool] | None, *, pending: int | None = None,
        row: StoredInstance | None = None, complete: bool = True, signalled: bool = True,
    ) -> tuple[Run | None, bool]:
        """Resume a parked instance here if what its lanes wait for passes ``wakes``: its run
        (``None``: not running here), and whether this call resumed it, from a row read now
        (or ``row``, read with the signal just stored, no run of it having ended since).
        ``wakes`` ``None``: a wait for one of the signals the row holds. ``signalled``: for a
        signal (or a child's end notice), which leaves an instance held back by
        ``resume=False`` where it is; a cancel does not.
        ``pending``: the seq of a signal just stored, for a run found running to be handed:
        ``None`` for the run if the row read holds it no more (a run that has ended since took
        it; the one running now, resumed after that, must not take it again). ``complete``:
        whether ``row`` holds every signal stored before it was read (see :meth:`_give_stored`)."""
        stored, complete = (row, complete) if row is not None else await self._load_for_wake(instance_id)
        if stored is None or stored.status not in RESUMABLE or instance_id in self._live:
            if stored is not None and pending is not None and all(seq != pending for seq, _, _ in stored.signals):
                return None, False
            return self._live.get(instance_id), False
        definition = self._definitions.get(stored.workflow_name)
        if definition is None or self._missing_jobs(definition):
            # Woken once its workflow is registered with every job it uses (it may wait for
            # this very signal); until then it is held, as a resume holds it.
            self._wake_on_register.setdefault(stored.workflow_name, set()).add(instance_id)
            return None, False
        if wakes is None:
            names = {name for _, name, _ in stored.signals}
            wakes = lambda waiting: waiting.get("signal") in names  # noqa: E731
        try:
            # Its header first, if it has records enough for that to pay (decoding it twice, for
            # a wake, costs about what two records do): it lists every lane that waits (see
            # written_lanes), so a signal no lane waits for (kept for a later receive) is told so
            # without decoding the records, which grow with all the instance ran.
            waits = _decoded_head(stored).waits if len(stored.records) >= HEAD_FIRST_FROM else None
            state = None if waits is not None and not any(waits_for(w) and wakes(w) for w in waits) \
                else _decoded(stored)
        except SnapshotDecodeError:
            return None, False
        if state is not None and _woken_by(state, wakes) \
                and not (signalled and self._holding_back and wake_at(state, definition) is None):
            # (Held back, it waits for resume(), whose run takes what storage holds for it.)
            run = self._resume_one(definition, stored, state)
            if run is not None:
                # Every signal storage held came with the load: the run needs no look of its own.
                self._give_stored(run, stored.signals, complete=complete)
                return run, True
        if pending is not None and all(seq != pending for seq, _, _ in stored.signals):
            return None, False
        return self._live.get(instance_id), False

    async def _load_fresh(self, instance_id: str) -> StoredInstance | None:
        """The instance's stored row, read again if a run of it ended here while it was read:
        the row may then predate that run's last checkpoint, and resuming it would run the
        instance again from an old snapshot."""
        stored, _ = await self._load_for_wake(instance_id)
        return stored

    async def _load_for_wake(self, instance_id: str) -> tuple[StoredInstance | None, bool]:
        """:meth:`_load_fresh`, and whether no signal was stored for the instance while it was
        read (the row then holds every signal stored before it: see :meth:`_give_stored`)."""
        return await self._read_fresh(instance_id, self.adapter.load)

    async def _load_unless_ended(self, instance_id: str) -> StoredInstance | None:
        """:meth:`_load_fresh`, its records left out if the instance has ended and the adapter
        reads rows so (see ``HeadLoads``): one that may run is read whole, to be taken up."""
        stored, _ = await self._load_head_for_wake(instance_id)
        if self._loads_heads and stored is not None and stored.status in RESUMABLE:
            return await self._load_fresh(instance_id)
        return stored

    async def _load_head_for_wake(self, instance_id: str) -> tuple[StoredInstance | None, bool]:
        """:meth:`_load_for_wake`, its records (and signals) left out if the adapter reads rows
        so (see ``HeadLoads``): for a look at its start, status and header alone."""
        if not self._loads_heads:
            return await self._load_for_wake(instance_id)
        heads: HeadLoads = self.adapter  # type: ignore[assignment]
        return await self._read_fresh(instance_id, heads.load_head)

    async def _read_fresh(
        self, instance_id: str, read: Callable[[str], Awaitable[StoredInstance | None]],
    ) -> tuple[StoredInstance | None, bool]:
        """The row ``read`` gives, read again while a run of it ended here during the read (see
        :meth:`_load_fresh`), and whether no signal was stored for it meanwhile."""
        while True:
            watch = self._ends.watching(instance_id)
            with watch as ended_since:
                stored = await read(instance_id)
                if not ended_since():
                    return stored, watch.signals_stored() == 0

    @refuses_unbound_arguments
    async def get_instance(self, instance_id: str) -> WorkflowInstance | None:
        """The instance as it stands (``None`` if unknown)."""
        self._check_open()
        check_instance_id(instance_id)
        run = self._live.get(instance_id)
        if run is not None and not _end_in_flight(run):
            return _live_view(run, run.stored_status)
        # (One whose end is being stored is viewed as its row holds it: read it too.)
        record = await self.adapter.load(instance_id)
        run = self._live.get(instance_id)
        if run is not None:
            # Resumed here while storage was read: its row may hold a write the run has not
            # seen acknowledged yet; the run's view is the one every later call gives, until it ends.
            return _live_view(run, run.stored_status, record)
        if record is not None and instance_id in self._unreadable:
            return self._unreadable[instance_id]  # its row reads, but not all it holds
        return None if record is None else self._view(record)

    def _view(self, record: StoredInstance) -> WorkflowInstance:
        """The public view of a stored record; an unreadable one is reported failed, with why."""
        return _stored_view(record)

    @refuses_unbound_arguments(frameless=True)  # (its callers wait in it: see there)
    async def wait(self, instance_id: str) -> WorkflowInstance:
        """Wait until the instance has reached a terminal status (compensation included)."""
        check_instance_id(instance_id)
        # A loop, not a recursion: an instance that waits out of memory many times over is
        # followed across each of its runs.
        handed: Run | None = None  # (its next run, handed over as it started: see _next_run_of)
        while True:
            self._check_open()
            if self._pending_resumes:
                await self._resumes_settled.wait()
            if (storing := self._storing.get(instance_id)) is not None:
                # ``start`` is still storing it (or a cancel's caller reading it again): then
                # look again, at the resume that may have come of it too.
                await storing.wait()
                continue
            run, handed = handed or self._live.get(instance_id), None
            if run is not None:
                if run in self._waiting:
                    self._lend_to_waited(run)
                await run.wait_ended()
                if run.stored_status in TERMINAL:
                    # Its end is stored, and a finished run's state is never touched again;
                    # each caller's view is its own (not sharing a container with another's).
                    return to_instance(detached(run.state))
                self._check_stopped(instance_id)
                if run.parked and (parked := self._next_run.get(instance_id)) is not None:
                    # It left memory to wait, and its next run here sets this (made as it
                    # parked, for its callers): no read of its row to learn that it waits.
                    handed = await self._next_run_of(instance_id, parked)
                    continue
            stalled = self._stalled.get(instance_id)
            if stalled is not None:
                raise stalled
            unreadable = self._unreadable.get(instance_id)
            if unreadable is not None:
                return unreadable
            if run is None and (parked := self._next_run.get(instance_id)) is not None:
                # Parked, others waiting for its next run already (its start takes this entry
                # away): no read of its row. (Not if its jobs are missing now: said at once.)
                waited = self._definitions.get(parked.workflow)
                if waited is not None and self._missing_jobs(waited):
                    raise _held_for_jobs(instance_id, self._missing_jobs(waited))
                handed = await self._next_run_of(instance_id, parked)
                continue
            with self._ends.watching(instance_id) as ended_since:
                instance = await self.get_instance(instance_id)
                stale = ended_since()
            if stale:
                # A run of it ended here while it was read: the row may be from before that
                # end (a parked row whose wake has come and gone): look again.
                continue
            if instance is None:
                raise UnknownInstanceError(f"no instance {instance_id!r}")
            definition = self._definitions.get(instance.workflow_name)
            if instance.status not in TERMINAL and instance.waiting is not None and definition is not None:
                # Parked: it waits in storage, without a task, until the waker (or a signal)
                # resumes it here; then wait for that run. (Not before the jobs it uses are
                # registered: it is held till then, as a resumed instance is.)
                if self._missing_jobs(definition):
                    raise _held_for_jobs(instance_id, self._missing_jobs(definition))
                if instance_id not in self._live:
                    self._check_stopped(instance_id)  # stopped while storage was read: nobody would set it
                    handed = await self._next_run_of(
                        instance_id, self._next_run.setdefault(instance_id, _NextRun(instance.workflow_name)))
                continue
            if instance.status not in TERMINAL:
                self._check_stopped(instance_id)
                if instance_id in self._live:
                    continue  # woken here while storage was read (the row may say it no longer waits)
                held = self._held_as(instance_id)
                if held is not None:
                    raise _held_for_jobs(instance_id, self._missing_jobs(self._definitions[held]))
                # (A start here whose answer was lost, not retried: its workflow is registered.)
                hint = "start it again with the same instance_id and input, or call resume()" \
                    if instance_id in self._unanswered else "register its workflow or call resume()"
                raise InstanceNotLiveError(
                    f"instance {instance_id!r} is {instance.status} in storage but not running in this engine; {hint}")
            return instance

    async def _next_run_of(self, instance_id: str, next_run: _NextRun) -> Run | None:
        """Wait (in ``wait()``) for the next run of a parked instance here, its entry in
        ``_next_run``, which that run's start sets (as does the engine stopping); the run,
        to wait on even if it ends before this caller gets to look (no read of its row then)."""
        event = next_run.event
        try:
            await event.wait()
        finally:
            if not event.is_set() and not event.statistics().tasks_waiting \
                    and self._next_run.get(instance_id) is next_run:
                # Its last caller gave up (an HTTP handler's timeout, say): nothing is kept for
                # an instance that may wait for days.
                del self._next_run[instance_id]
        self._check_stopped(instance_id)
        return next_run.run

    def _let_waiters_look(self, which: Callable[[_NextRun], bool]) -> None:
        """Set the entries of ``_next_run`` that ``which`` picks, with no run: their callers
        of ``wait()`` look again (and the entries go, but the engine's when it stops: a
        ``wait()`` after that finds the engine closed first)."""
        for instance_id, next_run in list(self._next_run.items()):
            if which(next_run):
                next_run.event.set()
                if not (self._closed or self._actors_stopped):
                    del self._next_run[instance_id]

    def _held_as(self, instance_id: str) -> str | None:
        """The workflow an instance is held for until its jobs exist, if it is. (Not inline in
        ``wait``: a generator there naming ``instance_id`` would make it a cell of every
        waiter's frame, one object more for the cyclic collector for each.)"""
        return next((name for name, records in self._held.items()
                     if any(r.instance_id == instance_id for r in records)), None)

    def _check_stopped(self, instance_id: str) -> None:
        """A run that did not end while waited on: the engine is stopping (closed, or its actors
        stopped: the scope around it cancelled, and the caller in a cleanup of its own)."""
        if self._closed or self._actors_stopped:
            raise EngineClosedError(
                f"the engine stopped before instance {instance_id!r} ended; it stays in storage"
                " for the next engine to resume"
            )

    @refuses_unbound_arguments
    async def cancel(self, instance_id: str) -> bool:
        """Cancel an unfinished instance: its running step is cancelled, then its completed
        steps are compensated. ``True`` if it is now being cancelled (by this call or an earlier
        one, before a restart too: a repeated cancel says yes until the instance is over); ``False``
        if it is unknown, over, or compensating already after a failure or its timeout (it ends
        as the failure or timeout that began that).

        It returns once that decision is stored (a process killed then still compensates the
        instance, with the next engine), or the instance is over, or after
        :data:`CANCEL_STORE_WAIT` seconds at most (a step that holds off its cancellation, storage
        that is slow to answer: the decision stands in this engine, and is stored as soon as it
        can be). (Called from a step's code, the instance's own or another's, it returns at once.)
        An instance stored unfinished that cannot run here now (its workflow, or a job it uses,
        is not registered; auto-resume is off) has the cancel stored in it: whichever engine
        runs it next compensates it."""
        self._check_open()
        check_instance_id(instance_id)
        if self._pending_resumes:
            await self._resumes_settled.wait()
        return await self._cancel(instance_id)

    async def _cancel(self, instance_id: str) -> bool:
        """:meth:`cancel`, once the resumes under way have settled (or for a run live here)."""
        while (storing := self._storing.get(instance_id)) is not None:
            # Being started (or stored by another cancel): its outcome first. The run its start
            # makes is cancelled as it is made (see _start), before it can run a step: its whole
            # run may otherwise come before this call looks again, and it would say no. For as
            # long as a decision is waited for (storage that does not answer a child's store:
            # the decision stands in this engine, for the run that store makes).
            storing.cancel_wanted = True
            with trio.move_on_after(CANCEL_STORE_WAIT) as waited:
                await storing.wait()
            self._check_open()  # (closed meanwhile: see _close)
            if waited.cancelled_caught:
                # (When it said yes. Which row it cancels is told by what this engine stored
                # since, not by comparing times: see _Storing.made_it.)
                storing.cancel_owed = self._clock()
                return True
        run = self._live.get(instance_id)
        stored = None
        if run is None:
            # Its status first, read without its records where the adapter can: an instance
            # that has ended (most of those a support tool asks about) needs no more.
            stored, complete = await self._load_head_for_wake(instance_id)
            if stored is not None and stored.status in RESUMABLE:
                # Parked (or stored, not running here): woken from its whole row (this one, if
                # the adapter read it whole).
                run, _ = await self._wake_if_waiting(instance_id, lambda waiting: True, signalled=False,
                                                     row=None if self._loads_heads else stored, complete=complete)
            else:
                run = self._live.get(instance_id)  # (taken up here as it was read)
        if run is None:
            self._check_open()  # (closed while storage was read)
            if stored is None or stored.status not in RESUMABLE:
                return False  # unknown, or over
            return await self._cancel_not_running(instance_id)
        self._check_open()  # (closed while it waited for a resume, a start or storage)
        # Code of a step (this instance's, whose cancellation comes first, or another's, which
        # has a timeout of its own to keep) does not wait for the decision to be stored.
        decided = None if lane_of_caller() is not None else run.decision_stored
        if run.cancel_requested:
            # Cancelled already, by another call that may still wait for the decision to be
            # stored: this one waits as that one does, and says yes too (a caller killed right
            # after it returned must find the instance compensated by the next engine).
            if decided is not None:
                with trio.move_on_after(CANCEL_STORE_WAIT):
                    await decided()
            return True
        if run.state.phase != "forward":
            # Going back already: for a cancel stored before (a restart since, say), yes again,
            # as for one stored in an instance not running here; else it ends as the failure or
            # timeout that began it. Queued for a slot, it starts now if it never ran or its
            # parent waits here for its end (see _starts_to_cancel), as one cancelled going
            # forward does: its parent, resumed going back too, may hold the slot it waits for.
            if run in self._waiting and not self._actors_stopped and self._starts_to_cancel(run):
                self._waiting.remove(run)
                self._launch(run)
            return run.state.outcome == "cancelled"
        run.cancel_requested = True
        if run.cancel_scope is not None:
            run.cancel_scope.cancel()
            bound_child_stores(run)
        elif run.hold is not None:
            run.hold.cancel()  # taken up ahead of its time: it takes its slot now (see _unhold)
        elif run in self._waiting:
            if self._actors_stopped:
                # Nothing will store it, nor start it: the next engine goes on.
                run.cancel_requested = False
                raise EngineClosedError(f"the engine is closing; instance {instance_id!r} was not cancelled")
            self._cancel_queued(run)
        if decided is not None:
            with trio.move_on_after(CANCEL_STORE_WAIT):
                await decided()
        return True

    def _starts_to_cancel(self, run: Run) -> bool:
        """Whether a queued run that is cancelled starts now: if it has nothing to undo (it
        never ran, or no step it completed has a compensation and no child of it runs: it ends
        before its next step, holding the slot only for an instant, rather than wait for one
        to do nothing), or if it is the child of a parent here, which waits for its end holding
        a slot it would wait for."""
        state = run.state
        return (not state.records or state.parent_id in self._live
                or not (unended_children(state) or pending_compensations(state, run.definition)))

    def _cancel_queued(self, run: Run) -> None:
        """A run queued for a slot is cancelled: started now (see :meth:`_starts_to_cancel`),
        or, woken or resumed with steps to compensate (work: it waits for its slot), has the
        cancel stored first, so that a restart compensates rather than goes on; out of the
        queue meanwhile, so that no slot starts it while its checkpoint is made."""
        self._waiting.remove(run)
        if self._starts_to_cancel(run):
            self._launch(run)
        else:
            self._supervisor.start_soon(f"store the cancel of {run.state.instance_id}", self._store_queued_cancel, run)

    async def _store_queued_cancel(self, run: Run) -> None:
        """:meth:`cancel` of a queued run with steps to compensate, beside its caller: the
        decision stored, the run back at the head of the queue, and the children its lanes wait
        on cancelled too (as its end would; closed, the next engine does it)."""
        children = [lane.waiting["child"] for lane in run.state.lanes.values()
                    if lane.waiting is not None and "child" in lane.waiting]
        try:
            await store_queued_cancel(run)
        except StorageError as exc:
            log.warning("instance %s: the decision to cancel it could not be stored yet (%s); its next checkpoint"
                        " stores it", run.state.instance_id, describe_error(exc),
                        extra={"instance_id": run.state.instance_id, "workflow_name": run.state.workflow_name})
        finally:
            if self._closed:
                run.ended()  # (its callers of wait() learn the engine closed)
            else:
                self._waiting.appendleft(run, trio.current_time())
                self._free_slot(taken=False)
        # (One that completes all the same is left for the run's compensation, which completes
        # its step and undoes it in its plan, on the result.)
        for child_id in children if not self._closed else ():
            self._supervisor.start_soon(f"cancel child {child_id}", functools.partial(
                self._children.cancel, child_id, run.definition.compensation_timeout, undo=False))

    async def _cancel_not_running(self, instance_id: str) -> bool:
        """:meth:`cancel` of an instance no run here has: stored in it, if it is stored going
        forward (see :meth:`_cancel_stored`)."""
        stored = await self._load_fresh(instance_id)
        self._check_open()
        if stored is None or stored.status not in RESUMABLE:
            return False
        try:
            state = _decoded(stored)
        except SnapshotDecodeError:
            return False  # reported failed, and left as it is for a release that reads it
        if state.phase != "forward":
            return state.outcome == "cancelled"  # (a cancel stored already says yes again)
        if await self._cancel_stored(instance_id, stored.workflow_name):
            return True
        return await self.cancel(instance_id)  # it runs here after all

    @refuses_unbound_arguments
    async def get_instances(
        self, workflow_name: str | None = None, status: Status | None = None, *,
        limit: int | None = None, after: str | WorkflowInstance | None = None, order: Order = "oldest",
    ) -> list[WorkflowInstance]:
        """Instances of one workflow (``None``: of every workflow), optionally only those of one
        status, in creation order: oldest first (the default) or, with ``order="newest"``,
        newest first.

        Pages: at most ``limit`` instances; ``after=`` the last instance of the previous page
        (or its id) gives the next page. Pages go by each instance's place in the creation
        order, so they are stable while instances are created: none is listed twice and none
        left out (new ones come on the last page oldest first, and not at all newest first).
        A page shorter than ``limit`` is the last. An ``after`` instance deleted or purged since
        raises :class:`UnknownInstanceError`: list again from the first page. (Given the
        instance rather than its id, one whose id was started again since is told apart too:
        an id alone would page from the new instance's place.)

        An instance whose snapshot this release cannot read is reported ``failed``; an unpaged
        ``status="failed"`` listing includes those stored with another status too."""
        self._check_open()
        check_listing(workflow_name, status, limit, after, order)
        if isinstance(after, WorkflowInstance):
            await self._check_still_there(after)
            after = after.id
        # Unpaged, the failed ones include the rows this release cannot read, whatever status
        # they are stored with: every row is read, and each kept as it is reported.
        stored_status = None if status == "failed" and limit is None and after is None else status
        out: list[WorkflowInstance] = []
        cursor = after
        seen: set[str] = set()
        went_on_from: list[str] = []  # the rows read, in order: where a refill may go on from
        while True:
            wanted = None if limit is None else limit - len(out)
            try:
                read = await self.adapter.list_instances(
                    workflow_name, stored_status, after=cursor, limit=wanted, newest_first=order == "newest")
            except UnknownInstanceError:
                if cursor == after:
                    raise
                # The row this call went on from (never the caller's) was purged meanwhile: go
                # on from the one read before it (in the listing's order: from the caller's
                # cursor, newest first, rows created since would come in), passing over the
                # rows read already.
                went_on_from = [iid for iid in went_on_from if iid != cursor]
                cursor = went_on_from[-1] if went_on_from else after
                continue
            records = [record for record in read if record.instance_id not in seen]
            seen.update(record.instance_id for record in records)
            went_on_from.extend(record.instance_id for record in records)
            for record in records:
                run = self._live.get(record.instance_id)
                if run is not None:
                    # Under the status the adapter read and listed it by (a checkpoint may have
                    # changed it since): a listing by status holds only instances of that status.
                    if status is None or record.status == status:
                        out.append(_live_view(run, record.status, record))
                    continue
                # An unreadable row is reported failed, whatever status it is stored with (as is
                # one whose run found a signal it cannot read).
                view = self._unreadable.get(record.instance_id) or self._view(record)
                if status is None or view.status == status:
                    out.append(view)
            if wanted is None or len(read) < wanted or len(out) == limit:
                break
            cursor = read[-1].instance_id  # rows were left out: fill the page from after them
        return out

    async def _check_still_there(self, instance: WorkflowInstance) -> None:
        """Raise :class:`UnknownInstanceError` unless the instance a page ended with is still
        stored: under its id, an instance created when it was."""
        if not valid_text(instance.id):
            return  # a damaged row's id (see docs/adapters.md): it is there, and storage pages past it
        run = self._live.get(instance.id)
        if run is not None:
            created_at: float | None = run.state.created_at
        else:
            stored = await self.adapter.load(instance.id)
            try:
                created_at = None if stored is None else _decoded(stored).created_at
            except SnapshotDecodeError:
                return  # unreadable, but there: its place in the order still holds
        if created_at != instance.created_at:
            raise UnknownInstanceError(
                f"instance {instance.id!r}, the cursor, was deleted or purged since"
                f"{'' if created_at is None else ' (its id was started again)'}; list again from the first page")

    @refuses_unbound_arguments
    async def purge(self, *, older_than: Seconds, status: FinishedStatus | None = None, workflow: str | None = None) -> int:
        """Delete the finished instances (every status but pending and running) that finished
        at least ``older_than`` seconds (or a ``timedelta``) ago on the engine's clock, with
        their records and pending signals; optionally only those of one finished ``status`` or
        of one ``workflow``. Returns how many were deleted. Running and pending instances are
        never touched, nor is a child workflow while its parent is stored (the parent may yet
        compensate it): the parent, once this purge deletes it, takes with it those of its
        children (and theirs) that the purge would take. Deletes in batches of :data:`PURGE_BATCH` (on SQLite, one transaction
        each), letting instances run and checkpoint between them."""
        self._check_open()
        age = duration(older_than, "older_than")
        if status is not None and (not isinstance(status, str) or status not in TERMINAL):
            raise InvalidArgumentError(
                f"status must be one of {', '.join(sorted(TERMINAL))} (only finished instances are purged),"
                f" got {status!r}")
        if workflow is not None and (not isinstance(workflow, str) or not valid_text(workflow)):
            raise InvalidArgumentError(f"workflow must be a workflow name or None, got {workflow!r}")
        finished_by = self._clock() - age
        total = 0
        while True:
            purged = await self.adapter.purge(finished_by, PURGE_BATCH, status=status, workflow_name=workflow)
            total += purged
            if purged < PURGE_BATCH:  # (the children a deleted parent kept came with it)
                return total
            await trio.lowlevel.checkpoint()  # an adapter that never yields (memory) lets others run

    async def _retain(self, keep: float, wake: trio.Event) -> None:
        """The retention task (``open_engine(retain_finished=keep)``): purges what finished
        ``keep`` seconds ago every ``keep`` seconds (at least once a minute, at most once a
        second), and as soon as :data:`RETAIN_EVERY` instances finished here since the last
        purge (``wake`` is set then). A purge that fails is logged and tried again next time.
        Once a purge has taken everything finished here (and, kept ``keep`` past the engine's
        opening, what an earlier engine finished), it waits for the next instance to finish
        rather than look every second (looking at least every :data:`RETAIN_IDLE_MAX`, for an
        end stored some other way): an idle engine purges once an hour, and virtual time under the
        testing kit moves through days without a purge a second."""
        period = min(max(keep, RETAIN_PERIOD_MIN), RETAIN_PERIOD_MAX)
        opened = self._clock()
        if await self._finished_stored():
            # An earlier engine's, finished up to now: each falls due within ``keep`` of now.
            self._last_finish = max(self._last_finish, opened)
        purged_at = -math.inf
        while True:
            if self._last_finish < purged_at - keep:
                self._retain_idle = True
                with trio.move_on_after(RETAIN_IDLE_MAX):
                    await wake.wait()
                self._retain_idle = False
                wake = self._retain_wake = trio.Event()
            if self._finished_since_purge < RETAIN_EVERY:  # (a burst may have passed it meanwhile)
                with trio.move_on_after(period):
                    await wake.wait()
            # Counted afresh before the purge: what finishes while it runs counts toward the next.
            wake = self._retain_wake = trio.Event()
            self._finished_since_purge = 0
            began = self._clock()
            try:
                purged = await self.purge(older_than=keep)
            except Exception as exc:
                log.warning("retention: purging finished instances failed (%s); trying again in %g s", exc, period,
                            exc_info=True)
            else:
                purged_at = began
                log.debug("retention: purged %d finished instance(s)", purged, extra={"purged": purged})

    async def _finished_stored(self) -> bool:
        """Whether storage holds a finished instance (one read per finished status, of one row;
        storage that cannot say is taken to hold one)."""
        try:
            for status in get_args(Status):
                if status in TERMINAL and await self.adapter.list_instances(status=status, limit=1):
                    return True
        except Exception:
            return True
        return False

    @refuses_unbound_arguments
    async def resume(self) -> list[str]:
        """Resume every stored ``pending``/``running`` instance of a registered workflow that is
        not already running here; returns their ids (not those a start of the same id being
        stored meanwhile takes up itself). Never starts an instance twice."""
        self._check_open()
        self._holding_back = False
        # Parked rows are the waker's (storage lists few of them here), and it looks again now:
        # it may not know of one whose run here stopped as its wake time was stored (the
        # answer lost), which parked no run to tell it.
        self._wake_changed.set()
        with self._ends.watching_all() as ended:
            found = await self.adapter.resumable()
            # An instance that stalled (its checkpoint failed) but is no longer resumable in
            # storage (its end was stored after all, then purged; or deleted) stalls no more.
            unfinished = {record.instance_id for record in found}
            for iid in [iid for iid in self._stalled if iid not in unfinished and iid not in self._live]:
                del self._stalled[iid]
            # A run that ended while the rows were read, or while those before it were looked
            # at (see _look_at_parked), may be in them as it stood before.
            return await self._resume(found, ended=ended)

    # -- internals ----------------------------------------------------------------------------

    async def _resume_leftovers(self, records: list[StoredInstance]) -> None:
        try:
            resumed = await self._resume(records, old=True)
            if resumed:
                name = records[0].workflow_name
                log.info("resumed %d unfinished instance(s) of workflow %r left by an earlier engine", len(resumed),
                         name, extra={"workflow_name": name, "resumed": len(resumed)})
        finally:
            self._resume_ends()

    async def _resume(
        self, records: list[StoredInstance], *, old: bool = False, ended: Collection[str] = (),
    ) -> list[str]:
        """Resume ``records``; ``old``: read earlier (see ``_old_rows``), not just now;
        ``ended``: the instances whose runs ended here since they were read (kept up to date)."""
        resumed = []
        for record in records:
            definition = self._definitions.get(record.workflow_name)
            iid = record.instance_id
            if (old and iid not in self._old_rows) or iid in ended:
                continue  # it ran here since the row was read: the row is out of date
            if iid in self._live or definition is None or self._closed or self._actors_stopped:
                continue
            if self._missing_jobs(definition):
                held = self._held.setdefault(definition.name, [])
                # The newest row read of it: each resume() reads every held instance again.
                held[:] = [row for row in held if row.instance_id != iid]
                held.append(record)
                self._old_rows.add(iid)  # resumed from this row later, unless it runs meanwhile
                continue
            self._old_rows.discard(iid)
            try:
                # Each record resumes or fails alone: one bad row never stops the others.
                leave, signals = await self._look_at_parked(definition, record)
                if leave:
                    continue
                if signals is not None:  # (read just now: for the take-up, and the run needs no look of its own)
                    record = attrs.evolve(record, signals=tuple(signals))
                run = self._resume_one(definition, record)
                if run is not None:
                    if signals is not None:
                        self._give_stored(run, record.signals, complete=True)
                    resumed.append(record.instance_id)
            except StorageError as exc:
                log.error("instance %s could not be resumed: %s", record.instance_id, exc,
                          extra={"instance_id": record.instance_id, "workflow_name": record.workflow_name})
        return resumed

    async def _look_at_parked(
        self, definition: WorkflowDefinition, record: StoredInstance,
    ) -> tuple[bool, list[tuple[int, str, bytes]] | None]:
        """For a listed row that waits out of memory (every lane waits): whether to leave it
        to the waker, and the signals storage holds for it, read now (``None``: not read, the
        run reads them). Adapters list a parked row that has pending signals (one a crash left
        unwoken), but a signal none of its lanes waits for (kept for a later receive, or come
        after its receive timed out) wakes nothing: taken up, it would only park again, a
        checkpoint at every ``resume()``. Also left: a row a run of which ended here while its
        signals were read (the row is out of date, see :meth:`_load_fresh`)."""
        if record.wake_at is None:
            return False, None  # storage holds no wake time for the waker to go by
        try:
            state = _decoded(record)
            take_up(state, definition)
            if misfit(state, definition) is not None or wake_at(state, definition) is None:
                return False, None  # it has something to run (or to fail) now
        except Exception:
            return False, None  # unreadable: resuming it reports why
        iid = record.instance_id
        watch = self._ends.watching(iid)
        try:
            with watch as ended_since:
                signals = await self.adapter.signals(iid)
                if ended_since():
                    return True, None
                if watch.signals_stored():
                    # Another signal was stored meanwhile: the read may not hold it. Taken up,
                    # and its run reads them itself.
                    return False, None
        except Exception:  # (storage failing, or an adapter's own error: this row alone)
            return False, None  # resumed, as before storage was asked: its run reads them
        names = {name for _, name, _ in signals}
        waited = any(lane.waits() and lane.waiting is not None and lane.waiting.get("signal") in names
                     for lane in state.lanes.values())
        return not waited, signals

    def _resume_one(
        self, definition: WorkflowDefinition, record: StoredInstance, state: InstanceState | None = None, *,
        early: bool = False,
    ) -> Run | None:
        """Resume one stored instance (``state``: already decoded from it); its run, if it now
        runs here. ``early``: taken up by the waker, perhaps ahead of its time, which it then
        sleeps out holding no slot. (Plain, not async: it awaits nothing, and a frame fewer per
        wake.)"""
        try:
            state = _decoded(record) if state is None else state
            take_up(state, definition)
            problem = misfit(state, definition)
        except SnapshotDecodeError as exc:
            self._refuse_unreadable(record.instance_id, record.workflow_name, exc, parent_named_in(record.start))
            return None
        except Exception as exc:  # a decodable snapshot the kernel cannot make sense of
            self._refuse_unreadable(record.instance_id, record.workflow_name, SnapshotDecodeError(
                f"snapshot fields are malformed: {describe_error(exc)}"), parent_named_in(record.start))
            return None
        # It cannot go on: its run fails before anything runs. Going forward, as a failed step
        # would fail it (the children it waits on are cancelled, the completed steps the new
        # definition still has compensated, newest first); compensating, it fails alone once the
        # children it waited on are cancelled (see ``run_instance``).
        doomed = None if problem is None else DefinitionMismatchError(problem)
        iid = record.instance_id
        if iid in self._live or iid in self._storing or self._closed or self._actors_stopped:
            return None  # running here, or being started
        # A child whose parent waits for it here holding its slot runs in that slot, as when it
        # was started: with a slot of its own to wait for, it could wait on its parent for ever.
        in_parent_slot = state.parent_id is not None and self._children.in_parent_slot(state.parent_id)
        due = None if doomed is not None else wake_at(state, definition)
        ahead = 0.0 if due is None or not early or in_parent_slot else due - self._clock()
        # (Held only for what the waker asked for: a wake time later than the stored one, its
        # definition replaced since, is stored by a run that parks again.)
        urgent = self._must_cancel_children(state, definition, record.signals)
        run = self._spawn(definition, state, resumed=True, slot=not (in_parent_slot or urgent),
                          hold_until=trio.current_time() + ahead if 0 < ahead <= WAKE_AHEAD else None)
        run.doomed = doomed
        tries = self._unanswered.get(iid)
        if tries and tries.get(state.created_at) is False and not state.records and state.status == "running" \
                and state.lanes[MAIN].waiting is None:
            # This engine's own lost try, not announced by a run here and not started otherwise
            # (see ``_start``): taken up before the caller's retry (a resume(), a signal), it
            # starts now, as the retry would have it start.
            run.unannounced = True
        # Storage holds a time to wake it at until its first checkpoint here (the waker passes
        # it over meanwhile), as computed by the definition that stored it: not known (NaN).
        run.stored_wake_at = None if due is None else math.nan
        return run

    def _must_cancel_children(
        self, state: InstanceState, definition: WorkflowDefinition, signals: Iterable[tuple[int, str, Any]],
    ) -> bool:
        """Whether a parent taken up here has to run at once, without a slot of its own, to
        cancel children it waits on: it is going back with children running here, its workflow
        timeout came, or the ends of some make a fail-fast parallel or map step fail (see
        :mod:`trioflow._fanout_failures`: one that ended other than completed in it, at a child
        step no catch of which may route on, or one that ended a fan-out nested in it that then
        failed); the others are cancelled then. Waiting for a slot, it could wait behind its
        own family for ever: a child, or a child's child, holding the slot and never ending. (A
        cancelled instance starts at once the same way: see :meth:`_starts_to_cancel`.) A parent
        whose failure a catch may take, or that waits for every item or branch, waits for a slot
        as any run does: ``max_running`` bounds what it runs next."""
        if state.phase == "compensating":
            # Going back (a cancel, a timeout or a failure stored before a restart): its lanes'
            # waits are gone, and its records name the children it may have yet to cancel (they
            # do not say which it did): those running here, in slots it would wait for, it has.
            live = self._live
            return any(child in live for child in unended_children(state))
        waited: dict[str, str] = {}
        for key, lane in state.lanes.items():  # (a loop: every wake asks, and most wait for no child)
            if lane.waiting is not None and "child" in lane.waiting:
                waited[key] = lane.waiting["child"]
        if not waited:
            return False
        if definition.timeout is not None and state.started_at is not None \
                and state.started_at + definition.timeout <= self._clock() + _DEADLINE_SLACK:
            return True
        ended = {name: ended_badly(payload) for _, name, payload in signals if name.startswith(RESERVED_SIGNALS)}
        # How each lane whose child ended goes: failed, completed, or on (a failure a catch of
        # its child step may take fails nothing: it counts for nothing).
        ends = {key: how for key, child in waited.items() if (notice := child_ended_signal(child)) in ended
                and (how := lane_ends(definition, state.lanes[key], ended[notice])) is not None}
        return fails_a_fail_fast_fanout(definition, state, ends)

    def _run_to_cancel_children(self, run: Run) -> None:
        """A queued parent that now has to cancel its children (see :meth:`_must_cancel_children`)
        leaves the queue and runs, in their slots."""
        if (run in self._waiting and not (self._closed or self._actors_stopped)
                and self._must_cancel_children(run.state, run.definition, run.state.signals)):
            self._waiting.remove(run)
            self._launch(run)

    async def _look_at_notices(self, run: Run) -> None:
        """Read the signals of a queued parent resumed without them, and let it run at once if
        the end notices among them make it cancel its children."""
        try:
            await run.fetch_signals()
        except StorageError:
            return  # (it reads them itself once it runs)
        self._run_to_cancel_children(run)

    def _queue(self, run: Run, at: float | None = None) -> None:
        """Queue a run for a slot; one with a workflow timeout that has started is watched, to
        leave the queue at its deadline (see :meth:`_watch_queued_deadlines`). A run started
        here keeps its caller's contextvars for its task, which another task launches. ``at``:
        now on trio's clock, if the caller has it (a run made in this scheduler pass)."""
        if run.contextvars is None:
            run.contextvars = contextvars.copy_context()
        self._waiting.append(run, trio.current_time() if at is None else at)
        self._children.slot_wanted()
        if not run.signals_fetched and any(lane.waiting is not None and "child" in lane.waiting
                                           for lane in run.state.lanes.values()):
            # Resumed from a listing (the resume scan, the waker), which holds no signals: the
            # end notices pending for it may make it run at once (see _must_cancel_children).
            self._supervisor.start_soon(f"notices of queued parent {run.state.instance_id}",
                                        self._look_at_notices, run)
        if run.definition.timeout is not None:  # (most have none: no call)
            self._watch_queued_deadline(run)

    def _watch_queued_deadline(self, run: Run) -> None:
        """Watch the workflow deadline of a queued run that has started (see :meth:`_queue`)."""
        state, timeout = run.state, run.definition.timeout
        if timeout is None or state.started_at is None or self._closed or self._actors_stopped:
            return
        entry = (state.started_at + timeout, state.instance_id)
        if entry in self._queued_deadlines_known:
            return
        self._queued_deadlines_known.add(entry)
        heapq.heappush(self._queued_deadlines, entry)
        if self._queued_deadlines_changed is None:
            self._queued_deadlines_changed = trio.Event()
            self._supervisor.start_soon("deadlines of queued parents", self._watch_queued_deadlines)
        else:
            self._queued_deadlines_changed.set()

    async def _watch_queued_deadlines(self) -> None:
        deadlines = self._queued_deadlines
        while True:
            # (A fresh event before reading the heap: one pushed after the read sets it.)
            changed = self._queued_deadlines_changed = trio.Event()
            with trio.move_on_after(max(0.0, deadlines[0][0] - self._clock()) if deadlines else math.inf):
                await changed.wait()
            while deadlines and deadlines[0][0] <= self._clock() + _DEADLINE_SLACK:
                entry = heapq.heappop(deadlines)
                if entry not in self._queued_deadlines_known:
                    continue  # (its run ended, or left memory, before its deadline)
                self._queued_deadlines_known.discard(entry)
                run = self._live.get(entry[1])
                if run is not None and run in self._waiting and not (self._closed or self._actors_stopped):
                    # Its workflow timeout came while it waited for a slot (resumed, or taken up
                    # from storage, behind others): it runs at once, taking no slot of its own,
                    # as a cancelled instance does, to end timed_out then (compensating what it
                    # completed, cancelling its children), not once a slot frees. At once: its own
                    # deadline may be a hair later (within the slack), and it runs no step meanwhile.
                    run.at_deadline = True
                    self._waiting.remove(run)
                    self._launch(run)

    def _forget_queued_deadline(self, run: Run, definition: WorkflowDefinition | None = None) -> None:
        """A run that was queued with a deadline to watch (see :meth:`_queue`) ends, or leaves
        memory, or switched from ``definition`` to another: that deadline is no longer watched
        here (a workflow timeout of days would otherwise keep an entry for each such parent
        until then). The heap drops what it holds of such runs as it pops them, and all of it
        once that is most of it."""
        timeout, started_at = (definition or run.definition).timeout, run.state.started_at  # (queued on)
        known = self._queued_deadlines_known
        if timeout is None or started_at is None or not known:
            return
        known.discard((started_at + timeout, run.state.instance_id))
        deadlines = self._queued_deadlines
        if len(deadlines) > 2 * len(known) + _STALE_DEADLINES:
            deadlines[:] = [entry for entry in deadlines if entry in known]
            heapq.heapify(deadlines)

    def _readable(self, record: StoredInstance) -> bool:
        try:
            _decoded(record)
        except SnapshotDecodeError as exc:
            self._refuse_unreadable(record.instance_id, record.workflow_name, exc, parent_named_in(record.start))
            return False
        return True

    def _refuse_unreadable(
        self, instance_id: str, workflow_name: str, exc: SnapshotDecodeError, parent_id: str | None,
    ) -> None:
        """An unreadable snapshot (or a signal in its inbox) fails its instance for this
        engine's callers. Its stored bytes are left as they are: a newer release (after a
        rolled-back deploy) may still read them. A child's parent is told it failed, as its
        end would tell it: it would otherwise wait for that end for ever."""
        log.error("instance %s holds what this release cannot read, left untouched: %s", instance_id, exc,
                  extra={"instance_id": instance_id, "workflow_name": workflow_name})
        self._unreadable[instance_id] = unreadable_instance(instance_id, workflow_name, describe_error(exc))
        # (Its callers of wait() waiting for its next run get this instead.)
        self._let_waiters_look(lambda next_run: next_run is self._next_run.get(instance_id))
        if parent_id is not None and not (self._closed or self._actors_stopped):
            self._children.unreadable(parent_id, instance_id, exc)

    def _spawn(
        self, definition: WorkflowDefinition, state: InstanceState, *, resumed: bool, slot: bool = True,
        reserved: bool = False, hold_until: float | None = None,
    ) -> Run:
        """Run an instance here: at once if a slot is free (or it needs none, or ``reserved``
        one for it), else queued; or, ``hold_until`` (trio's clock) given, it sleeps until then
        holding no slot (see :meth:`_unhold`)."""
        run = self._run(definition, state, resumed=resumed)
        if resumed:
            # Taken up from storage (by the waker, a signal's sender, a restart): it runs with
            # the contextvars the engine was opened with, not those of whoever took it up. A
            # caller's are not kept while an instance waits out of memory: they may hold a
            # whole request, for days.
            run.contextvars = self._context
        run.stored_status = state.status  # as created, or as read back
        self._live[state.instance_id] = run
        next_run = self._next_run.pop(state.instance_id, None)
        if next_run is not None:
            next_run.run = run  # callers of wait() on a parked instance: it runs again
            next_run.event.set()
        self._stalled.pop(state.instance_id, None)
        self._unreadable.pop(state.instance_id, None)  # it runs: what it ends with is stored
        if hold_until is not None:
            run.hold = trio.CancelScope(deadline=hold_until)
            self._supervisor.start_contained_soon(state.instance_id, self._instance_actor, run)
        elif reserved:
            self._launch(run, reserved=True)
        elif not slot or self._running < self._max_running:
            self._launch(run)
        else:
            # Queued with the status it is stored with: a new instance is stored pending, and
            # one resumed from storage says what it said before the restart until it runs.
            # (Queued as its run was made, nothing awaited since: the time that run noted.)
            self._queue(run, run.started)
        return run

    def _lend_to_waited(self, run: Run) -> None:
        """A step's job here waits for ``run``, queued for a slot: it runs now, in the slot the
        job's instance holds, as a child step's instance runs in its parent's. The job keeps
        that slot until ``run`` ends, so ``run`` waiting for one of its own would deadlock once
        every slot is held by such a job (``max_running`` of them). (Not for one that leaves
        memory to wait later on: woken, it takes a slot of its own; a child step's does not.)"""
        ctx = lane_of_caller()
        if ctx is None or ctx._calling is None:
            return  # (a caller outside any step: it holds no slot)
        caller = self._live.get(ctx._state.instance_id)
        if caller is not None and caller.state is ctx._state and caller not in self._waiting:
            run.lent = True
            self._adopt_child(run.state.instance_id)

    def _adopt_child(self, child_id: str) -> None:
        """A parent resumed here waits in memory, holding its slot, for a child queued for a
        slot of its own (resumed before its parent was): it runs now, in its parent's slot."""
        run = self._live.get(child_id)
        if run is not None and run in self._waiting and not (self._closed or self._actors_stopped):
            # (Stopping: a queued run stays as stored, for the next engine, as _free_slot leaves it.)
            self._waiting.remove(run)
            self._launch(run)

    def _run(self, definition: WorkflowDefinition, state: InstanceState, *, resumed: bool) -> Run:
        return Run(
            definition, state, adapter=self.adapter, jobs=self.jobs, services=self._services,
            driver=self._driver, bus=self.events, resumed=resumed, threads=self._threads,
            spawn=self._start_beside, storage_retry_for=self._storage_retry_for, clock=self._clock,
            park_after=self._park_after, children=self._children, releases=self._definitions,
        )

    async def until_runnable(self, workflow_name: str, bound: float | None) -> bool:
        """Wait until a workflow of that name is registered with every job it uses (as an
        engine starts up, a child's may be registered after its parent's), for at most
        ``bound`` seconds; whether it is. :class:`EngineClosedError` if the engine closes first."""
        with trio.move_on_after(math.inf if bound is None else bound):
            while (definition := self._definitions.get(workflow_name)) is None or self._missing_jobs(definition):
                self._check_open()
                await self._registered_more.wait()
            return True
        return False

    async def _store_cancel_as_made(self, state: InstanceState, until: float = math.inf) -> bool:
        """An instance just stored (or its row read back), whose run was to be cancelled as it
        was made (see ``_Storing.cancels_its_run``: a child whose parent's step was cut, one a
        ``cancel()`` waited for), as the engine closes: no run is made here, so the cancel is
        stored in it, and the next engine ends it cancelled rather than run its next step (its
        parent, taken up compensating, would only cancel it once that step had run). Whether it
        was stored. ``until``: when a caller's own bound ends, if before this one's."""
        _decide_cancel(state, self._clock())
        header, records, first_seq, start, _ = take_changes(state)
        failure: str | None = None
        try:
            # The engine is closing: shielded, as the store before it, for a bounded time (storage
            # that does not answer must not hold the close for ever), as any decision stored then.
            with trio.CancelScope(shield=True, deadline=min(trio.current_time() + DECISION_TIMEOUT, until)) as bounded:
                await self.adapter.checkpoint(state.instance_id, state.status, header, records, first_seq=first_seq,
                                              start=start, wake_at=None)
            if bounded.cancelled_caught:
                failure = "storage did not answer in time"
        except StorageError as exc:
            failure = describe_error(exc)
        if failure is None:
            return True
        log.warning("instance %s: the cancel it was stored under could not be stored in it (%s); the next"
                    " engine runs it", state.instance_id, failure,
                    extra={"instance_id": state.instance_id, "workflow_name": state.workflow_name})
        return False

    async def _store_cancel_in_its_row(self, storing: _Storing, until: float = math.inf) -> bool:
        """:meth:`_store_cancel_as_made` for a start whose answer was lost, or that found a row
        stored before, as the engine closes: its row, read again, if one of its tries made it (by
        its creation time), or it was there when a ``cancel()`` that waited for the store said
        yes. Whether the cancel was stored. The read and the write share one bound, ``until`` if
        that comes first (a caller's own)."""
        instance_id = storing.instance_id
        tried = self._unanswered.get(instance_id, _NO_TRIES)
        failure: str | None = None
        stored = None
        until = min(trio.current_time() + DECISION_TIMEOUT, until)
        try:
            # (Shielded as the write after it: see there.)
            with trio.CancelScope(shield=True, deadline=until) as bounded:
                stored = await self._load_fresh(instance_id)
            if bounded.cancelled_caught:
                failure = "storage did not answer in time"
            state = None if stored is None or stored.status not in RESUMABLE else _decoded(stored)
        except TrioflowError as exc:  # (storage failing, or a row it cannot read)
            failure = describe_error(exc)
        if failure is not None:
            log.warning("instance %s: the cancel it was stored under could not be stored in it (%s); the next"
                        " engine runs it, if it was stored", instance_id, failure, extra={"instance_id": instance_id})
            return False
        if state is None or state.phase != "forward":
            return False  # not there, or going back already
        if not (state.created_at in tried or storing.made_it(state.created_at)):
            return False  # not this start's, nor there when a cancel() said yes
        return await self._store_cancel_as_made(state, until)

    async def _cancel_stored(self, instance_id: str, workflow_name: str) -> bool:
        """Store a cancel in an instance that no engine runs here (its workflow is not
        registered): it is stored compensating, as a cancel that said yes to a running instance
        leaves it, and the engine that next runs it (here, once its workflow is registered, or
        after a restart) cancels its own children and compensates it. ``False`` if it runs here
        after all, or is being started or resumed: then ``cancel()`` it."""
        if instance_id in self._live or instance_id in self._storing:
            return False
        # Held as being stored meanwhile: a resume passes it over rather than go on from the
        # row read before this write (it would then store ``forward`` over the cancel).
        guard = self._storing[instance_id] = _Storing(workflow_name, instance_id)
        handed_over = False
        try:
            stored = await self._load_fresh(instance_id)
            if stored is None or stored.status not in RESUMABLE:
                return True
            state = _decoded(stored)
            if state.phase != "forward":
                return True  # going back already: nothing left to cancel
            cut = _decide_cancel(state, self._clock())
            header, records, first_seq, start, _ = take_changes(state)
            try:
                # The records before stay as they are; the header says what comes next.
                await self.adapter.checkpoint(instance_id, state.status, header, records, first_seq=first_seq,
                                              start=start, wake_at=None)
                fresh = await self.adapter.load(instance_id)
            except BaseException:
                # Interrupted (the caller cancelled, storage failing) where the write may be
                # made: the rows read before must not resume it going forward over the cancel.
                # They give way now, and the row is read again beside the caller, which holds
                # the guard till then (nothing resumes it meanwhile; a wait() on it waits).
                self._drop_old_row(instance_id, workflow_name)
                if not (self._closed or self._actors_stopped):
                    self._supervisor.start_soon(f"read {instance_id} again", self._reread_old_row, instance_id, guard)
                    handed_over = True
                raise
        finally:
            if not handed_over:
                self._release_start(guard)
        if fresh is not None:
            self._replace_old_row(fresh)
        if self.events.active:
            # The steps it stood in, started by a run before and cut short by this cancel: their
            # end, as a run in memory publishes it (see trioflow.actors._lane): innermost first,
            # as a fan-out step's branches and items end before it.
            for (lane_key, step_name, attempts, _), execution in reversed(cut):
                self.events.emit("workflow.step.failed",
                                 event_payload(state, lane_key, cut_short_fields(step_name, execution, attempts or 1)))
        return True

    def _undone_for_a_parent_here(self, fresh: StoredInstance) -> bool:
        """Whether ``fresh`` is a child going back (its cancel stored, as its parent, running
        here, ends badly): run here whatever ``resume=`` says, or it would wait for a resume()
        nobody calls."""
        if parent_named_in(fresh.start) not in self._live:
            return False
        try:
            return _decoded(fresh).phase != "forward"
        except SnapshotDecodeError:
            return False

    def _drop_old_row(self, instance_id: str, workflow_name: str) -> None:
        """The rows read before of an instance not running here (waiting for their workflow,
        or the jobs it uses, to be registered) no longer stand for it."""
        for rows in (self._leftovers or {}).get(workflow_name), self._held.get(workflow_name):
            if rows is not None:
                rows[:] = [row for row in rows if row.instance_id != instance_id]

    async def _reread_old_row(self, instance_id: str, guard: _Storing) -> None:
        """The row of an instance :meth:`_drop_old_row` dropped, read again to take their place
        (see :meth:`_replace_old_row`), under ``guard``, handed over by the caller."""
        try:
            fresh = await retried(lambda: self.adapter.load(instance_id), retry_for=self._storage_retry_for,
                                  what=f"reading instance {instance_id} again", instance_id=instance_id)
            if fresh is not None and fresh.status in RESUMABLE and instance_id not in self._live:
                self._replace_old_row(fresh)
        finally:
            self._release_start(guard)

    def _replace_old_row(self, fresh: StoredInstance) -> None:
        """An instance not running here was stored anew, to be resumed (it no longer waits): the
        rows read before (those waiting for their workflow, or for the jobs it uses, to be
        registered) give way to ``fresh``. One not among them (it was parked: the resume at
        open leaves those out; or its resume passed it over while it was written) waits for
        the registration now, or resumes now if its workflow is registered. (Without
        auto-resume, ``resume()`` takes it up; once it was called, this does, as auto-resume
        would.)"""
        iid, name = fresh.instance_id, fresh.workflow_name
        found = False
        for rows in (self._leftovers or {}).get(name), self._held.get(name):
            if rows is not None and any(row.instance_id == iid for row in rows):
                rows[:] = [fresh if row.instance_id == iid else row for row in rows]
                found = True
        if found or self._closed or self._actors_stopped or iid in self._live:
            return  # (stopping: the next engine resumes it, as stored)
        if self._leftovers is None and self._holding_back and not self._undone_for_a_parent_here(fresh):
            return  # held back for resume(), as an earlier engine's rows are
        definition = self._definitions.get(name)
        if definition is None:
            if self._leftovers is not None:  # (else the next resume() reads it afresh)
                self._old_rows.add(iid)
                self._leftovers.setdefault(name, []).append(fresh)
            return
        self._old_rows.add(iid)  # resumed from this row, unless it runs here meanwhile
        self._resume_soon(definition, [fresh])  # (held until its jobs are registered)

    async def _undo_child(self, child_id: str, bound: float | None = None) -> str | None:
        """Compensate a completed child instance as a unit, in its parent's compensation (an
        undo an earlier engine left half done is taken up where it stood), each compensation
        bounded by ``bound`` seconds too; ``None``, or what kept it from being undone whole.
        One undo of a child at a time: another asked meanwhile (the parent's cancel and its run
        both cancelling the children it waited on) waits, then finds it compensated."""
        while (undoing := self._undoing.get(child_id)) is not None:
            await undoing.wait()
        done = self._undoing[child_id] = trio.Event()
        try:
            return await self._undo_once(child_id, bound)
        finally:
            del self._undoing[child_id]
            done.set()

    async def _undo_once(self, child_id: str, bound: float | None) -> str | None:
        live = self._live.get(child_id)
        if live is not None:
            # Its run here has stored its end but not finished (its last checkpoint's answer
            # lost and tried again, its end hooks): one run of an instance at a time.
            await live.wait_ended()
            self._check_open()
        stored = await retried(lambda: self.adapter.load(child_id), retry_for=self._storage_retry_for,
                               what=f"loading child {child_id} to compensate it", instance_id=child_id)
        if stored is None:
            return "it is no longer stored (purged, or deleted through the adapter, before its parent compensated it)"
        state = _decoded(stored)
        if state.status == "completed":
            if not await self.until_runnable(state.workflow_name, bound):
                return f"its workflow {state.workflow_name!r} is not registered with the jobs it uses"
            definition = self._definitions[state.workflow_name]
            run = self._run(definition, state, resumed=True)
            run.stored_status = state.status
            try:
                await undo(run, bound)
            except UnknownInstanceError:
                return "it was purged while it was being compensated (the compensations that ran stay done)"
        elif state.status != "compensated":
            return f"it is {state.status}, not completed"
        # Undone already, when its parent stopped before storing the answer: the same answer.
        if state.compensation_errors:
            failed = "; ".join(f"{execution!r}: {error}"
                               for execution, error in compensation_errors_by_execution(state).items())
            return f"its compensations failed: {failed}"
        return None

    def _launch(self, run: Run, *, reserved: bool = False) -> None:
        """Start a run's task. Its contextvars are its caller's when ``start()`` launches it;
        otherwise those ``run.contextvars`` holds (see :meth:`_spawn` and :meth:`_queue`), never
        those of the task that happens to launch it (one that freed a slot, a signal's sender)."""
        if not reserved:
            self._running += 1
        context = run.contextvars
        if context is None:
            self._supervisor.start_contained_soon(run.state.instance_id, self._instance_actor, run)
        else:
            context.run(self._supervisor.start_contained_soon, run.state.instance_id, self._instance_actor, run)

    def _unhold(self, run: Run) -> bool:
        """The hold of a run taken up ahead of its time is over (its time came, or a cancel or
        a signal came first): it takes a slot now, or queues for one as any run does (one
        cancelled meanwhile then goes as a queued run that is cancelled). Whether it took one.
        Held, it kept no slot: a start, or a run due sooner, was not kept waiting by its sleep."""
        run.hold = None
        parent = run.state.parent_id
        if (self._running < self._max_running or (parent is not None and self._children.in_parent_slot(parent))
                or self._must_cancel_children(run.state, run.definition, run.state.signals)):
            # (A child whose parent now waits for it here holding a slot runs in that slot.)
            self._running += 1
            return True
        self._queue(run)  # (its task ends: a freed slot launches it again)
        if run.cancel_requested:
            self._cancel_queued(run)
        return False

    async def _instance_actor(self, run: Run) -> None:
        """Run one instance to its end, or until it parks. Contains its own crashes: an error
        the instance cannot record as its end is logged here and goes no further."""
        state = run.state
        if run.hold is not None:
            try:
                with run.hold:
                    await trio.sleep_forever()
            except BaseException:
                # The engine closing: it has no end to store, as a queued run has none; a
                # cancel() that said yes meanwhile is stored, as a running run's is.
                run.hold = None
                try:
                    await store_cancel(run)
                finally:
                    self._live.pop(state.instance_id, None)
                    run.ended()
                raise
            if not self._unhold(run):
                return
        if self._definitions.get(run.definition.name) is not run.definition:
            run.take_up_release()  # (replaced while it was queued or held)
        try:
            if state.status == "pending":
                # Stored at once: listings by status agree with it, and a restart during the
                # first step keeps the time its workflow timeout counts from. It never ran, even
                # if resumed from storage: it starts now (workflow.started, on_start). (Once its
                # on_start hook has run, for one that stays pending until then: see
                # ``pending_until_announced``.)
                # (One whose cancel was stored while it was queued, going back already, never
                # starts either: it ends with no start time, as one cancelled here as it queues.)
                admit(state, None if run.cancel_requested or state.phase != "forward" else self._clock())
                run.resumed = False
                if run.cancel_requested or not pending_until_announced(run.definition, state):
                    try:
                        await run.persist()
                    except trio.Cancelled:
                        await store_cancel(run)  # (a cancel() that launched it, and the engine closing)
                        raise
            await run_instance(run)
        except SnapshotDecodeError as exc:
            # Storage holds something for it that this release cannot read (a signal a newer
            # release stored): it stays as stored, for that release, reported failed here as
            # an unreadable row is.
            self._refuse_unreadable(state.instance_id, state.workflow_name, exc, state.parent_id)
        except StorageUnavailableError as exc:
            # Storage stayed unusable past the retries: leave the instance as last stored, to be
            # resumed, rather than claim an end that could not be recorded.
            self._stalled[state.instance_id] = StorageUnavailableError(
                f"instance {state.instance_id!r} stopped: storage stayed unavailable ({exc}); it stays"
                f" {run.stored_status or 'as first stored'} in storage and resumes with the next engine"
                " or engine.resume()"
            )
            log.error(
                "instance %s stopped: storage unusable (%s); it stays resumable", state.instance_id, exc,
                extra={"instance_id": state.instance_id, "workflow_name": state.workflow_name},
            )
        except BaseException as exc:
            if goes_on(exc):  # (the engine closing; the process stopping)
                if stops_the_process(exc) and not self._actors_stopped:
                    # User code stopped the process: the engine stops under its callers, whose
                    # wait() of this run (woken as it ends, below) must say so, not take it for
                    # a run of another engine's.
                    self._stop_actors()
                raise
            # A bug, or a failing adapter: this instance fails alone, the others go on. (User
            # code's own BaseExceptions fail its step, as Exceptions do: see trioflow._escapes.)
            fail_alone(state, f"internal error: {describe_error(exc)}", self._clock())
            try:
                await run.persist()
            except Exception as again:
                # Not even its failure can be stored: it stays as last stored, resumable, and
                # ``wait()`` says so rather than report a run that is not going on.
                self._stalled[state.instance_id] = InstanceNotLiveError(
                    f"instance {state.instance_id!r} failed ({describe_error(exc)}) and its failure could not be"
                    f" stored ({describe_error(again)}); it stays {run.stored_status or 'as first stored'} in"
                    " storage and resumes with the next engine or engine.resume()"
                )
                log.error("instance %s failed and its failure could not be stored: %s", state.instance_id, again,
                          extra={"instance_id": state.instance_id, "workflow_name": state.workflow_name})
            else:
                if run.bus.active:  # (its end, stored, as any failure's is published)
                    run.emit_end("workflow.failed", error=state.error, error_name=state.error_name, cause=state.cause,
                             failed_step=state.failed_step)
            log.error("instance actor %s crashed", state.instance_id, exc_info=exc,
                      extra={"instance_id": state.instance_id, "workflow_name": state.workflow_name})
        finally:
            self._live.pop(state.instance_id, None)
            self._forget_queued_deadline(run)
            if (tries := self._unanswered.get(state.instance_id)) and state.created_at in tries:
                if run.stored_status in TERMINAL:
                    del self._unanswered[state.instance_id]  # (a retry finds it ended: nothing to announce)
                elif run.announced:
                    tries[state.created_at] = True  # (a retried start of it must not announce it again)
            # Rows read before this run ended may hold it as it stood before: reads in flight
            # learn of it, and a row waiting to be resumed from is out of date.
            self._ends.ended(state.instance_id, run.consumed_seqs)
            self._old_rows.discard(state.instance_id)
            if run.parked:
                # It waits in storage now: a later wake resumes it, and the waker looks again.
                self._wake_changed.set()
                if run.end is not None and not run.end.is_set():
                    # Its callers of wait() wait for its next run here (made now, before any
                    # can start: that run's start sets it), rather than each read its row to
                    # learn that it waits.
                    self._next_run.setdefault(state.instance_id, _NextRun(run.definition.name))
                if run.late is not None and not self._closed:
                    # Signals delivered as its lanes unwound to leave memory: one may be what a
                    # lane waits for, which nothing else would wake it for now.
                    self._supervisor.start_soon(f"wake {state.instance_id} for its signals", self._wake_for,
                                                state.instance_id, run.late)
            elif state.instance_id in self._waking:
                self._wake_changed.set()  # one woken fewer on its way: the waker may wake more
            if self._retain_wake is not None and run.stored_status in TERMINAL:
                self._finished_since_purge += 1
                self._last_finish = self._clock()
                # (At or past the count: finishes counted while the task left its idle wait, and
                # before it waits again, must not leave it to its period.)
                if self._finished_since_purge >= RETAIN_EVERY or self._retain_idle:
                    self._retain_wake.set()
            run.ended()
            self._free_slot()

    def _free_slot(self, *, taken: bool = True) -> None:
        """A slot frees (``taken=False``: see whether one is free): hand it on, unless the engine
        is stopping (a queued run stays stored as it is, for the next engine to resume)."""
        if taken:
            self._running -= 1
        # (The count first: once the slot is taken, the queue's own test is a Python call saved.)
        while self._running < self._max_running and self._waiting and not (self._closed or self._actors_stopped):
            self._launch(self._waiting.popleft())

    async def _waker(self, soonest: float | None) -> None:
        """Resume parked instances as they fall due (their ``wake_at``, on the engine's clock,
        ``WAKE_AHEAD`` early): waits for the soonest, or for something to change, then hands the
        due ones to slots.
        ``soonest`` is what storage said when the engine opened."""
        changed = self._wake_changed
        backoff = WAKE_RETRY
        while True:
            delay = math.inf if soonest is None else soonest - WAKE_AHEAD - self._clock()
            try:
                more = False
                if delay > 0:
                    with trio.move_on_after(delay):
                        await changed.wait()
                else:
                    more = await self._wake_due(changed)
                # A fresh event before asking: a change while the question is in flight is not missed.
                changed = self._wake_changed = trio.Event()
                if more:
                    # Storage holds more due now: look again at once, rather than first ask it
                    # when the next wake is. That question would be a transaction of its own,
                    # in flight while those just woken run: their checkpoints would wait for it.
                    continue
                skip = self._skipped_workflows
                soonest = await (self.adapter.next_wake(skip_workflows=tuple(skip)) if skip
                                 else self.adapter.next_wake())
            except StorageError as exc:
                # Storage failing (locked by another connection, a disk full, down): the
                # waker is the only one to wake parked instances, so it tries again, slower
                # each time, rather than stop for good.
                log.warning("the waker could not read due instances (%s); trying again in %.2f s", exc, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, WAKE_BACKOFF_MAX)
                soonest = self._clock()  # look again at once
                continue
            backoff = WAKE_RETRY

    async def _wake_due(self, changed: trio.Event) -> bool:
        """Resume the instances due now (or within ``WAKE_AHEAD``), so that at most a batch of
        them is on its way to its first checkpoint: thousands due at once then go through in a
        steady stream, rather than thousands of fresh runs in memory (walked by the cyclic GC)
        at once. Whether more may be due now: it woke some, and read as many due rows as it
        asked for."""
        woke = 0
        # Instances woken before stay due in storage until their first checkpoint: ask for as
        # many more as are still in that state, and pass them over. Not a delayed start past its
        # wait, running its on_start hook before it stores its start: it runs as any run here
        # (as one the waker did not wake), and a slow hook must not hold other timers back.
        waking = self._waking = {
            i for i in self._waking if (run := self._live.get(i)) is not None and run.stored_wake_at is not None
            and not _starting(run)}
        self._store_fired(waking)
        room = WAKE_BATCH - len(waking)
        if room < WAKE_BATCH // 2:
            # Half a batch or more is still on its way: wait for it (each one that ends says
            # so) rather than read it again with the next.
            with trio.move_on_after(WAKE_RETRY):
                await changed.wait()
            return False
        passed, skip = self._passed_over, self._skipped_workflows
        skipping = len(skip)
        # Those on their way and those passed over are left out by an adapter that can (not
        # read again, records and all, at every look), or asked for and passed over here.
        known = waking | passed if self._adapter_excludes else ()
        limit = room + (0 if known else len(waking) + len(passed)) + self._live_due
        live = 0
        # A run that ends (or leaves memory) while the question is in flight may be read as it
        # stood before its last checkpoint: such an answer is stale, and is passed over.
        with self._ends.watching_all() as ended:
            by = self._clock() + WAKE_AHEAD
            found = await self._due(by, limit, known)
        # (Rows passed over stay due: left out, they would have been found, and the waker looks
        # less often while they are, as when it reads them.)
        all_on_their_way = not (known and passed)
        for stored in found:
            iid = stored.instance_id
            if iid in waking or iid in ended or iid in passed or stored.workflow_name in skip:
                all_on_their_way = all_on_their_way and iid in waking
                continue
            if iid in self._live:
                # Running here, due in storage until its next checkpoint (a delayed start running
                # a slow on_start hook, one woken by a signal): nothing to wake, nor to count
                # among those on their way (its memory is not the waker's doing); the next look
                # asks for as many rows more, so that those due behind it are not missed.
                live += 1
                continue
            if woke == room:
                break
            definition = self._definitions.get(stored.workflow_name)
            if definition is None or self._missing_jobs(definition):
                if self._adapter_skips and len(skip) < SKIP_MOST:
                    skip.add(stored.workflow_name)
                else:
                    passed.add(iid)
            elif iid in self._unreadable:
                passed.add(iid)  # (reported unreadable once, by the first look)
            elif (run := self._resume_one(definition, stored, early=True)) is not None:
                run.woken = True
                waking.add(iid)
                woke += 1
            elif iid in self._unreadable:
                passed.add(iid)
        self._live_due = live
        if woke or len(skip) > skipping:
            # (Workflows left out from now on: ask again at once, what they hid may be due.)
            self._look_again = WAKE_RETRY
            return len(found) == limit
        # Due ones that cannot run here, or running already until their next checkpoint:
        # look again when something changes, or shortly; less often while nothing changes
        # (each look reads every due row passed over). While those due are all on their way
        # (a timer's step after it running, or queued for a slot), storage says the soonest is
        # due until their checkpoints: look again when the next other one is due (a timer due
        # just after them must be taken up on time), not every WAKE_RETRY meanwhile.
        if all_on_their_way and (found or known and waking):
            wait = min(self._until_fired_stored(waking), await self._until_next_other(found, known))
        else:
            wait = self._look_again
        with trio.move_on_after(wait):
            await changed.wait()
        if not all_on_their_way:
            self._look_again = min(self._look_again * 2, WAKE_LOOK_MAX)
        return False

    def _due(self, before: float, limit: int, known: Collection[str]) -> Awaitable[list[StoredInstance]]:
        """``adapter.due``, leaving out the workflows the engine cannot run now and the
        instances ``known`` (given only to an adapter that takes ``exclude``)."""
        options: dict[str, tuple[str, ...]] = {"exclude": tuple(known)} if known else {}
        if self._skipped_workflows:
            options["skip_workflows"] = tuple(self._skipped_workflows)
        return self.adapter.due(before, limit, **options)

    async def _until_next_other(self, found: list[StoredInstance], known: Collection[str]) -> float:
        """Seconds until the waker must look again for the soonest waiting instance that is
        not among ``found`` nor ``known`` (the due ones, all on their way, and those the last
        look left out): until ``WAKE_AHEAD`` before its wake time, at most ``WAKE_LOOK_MAX``.
        Its wake time is read from its row, with the definition registered here: a row another
        release stored with a sooner one is taken up ``WAKE_LOOK_MAX`` late at most."""
        on_their_way = {stored.instance_id for stored in found}
        rows = await self._due(math.inf, len(found) + 1, known)
        for stored in rows:
            if stored.instance_id in on_their_way:
                continue
            definition = self._definitions.get(stored.workflow_name)
            try:
                due = None if definition is None else wake_at(_decoded(stored), definition)
            except SnapshotDecodeError:
                due = None
            if due is None:
                return WAKE_RETRY  # (one the next look passes over, or reports)
            if stored.wake_at is not None:
                # (No look finds it before the time stored: a delay waited in memory is stored
                # due after its start time, see _created_wake.)
                due = max(due, stored.wake_at)
            # Not due yet by the time stored in its row, though due by this definition's (another
            # release's workflow timeout), or due since the look: looked at again shortly, not
            # at once (the waker would ask storage over and over).
            return min(max(WAKE_RETRY, due - WAKE_AHEAD - self._clock()), WAKE_LOOK_MAX)
        return WAKE_LOOK_MAX

    def _until_fired_stored(self, waking: set[str]) -> float:
        """Seconds until the first of the runs ``waking`` whose timer fired, not stored since, is
        to store it (see :meth:`_store_fired`): the waker looks again then."""
        now, wait = trio.current_time(), math.inf
        for i in waking:
            run = self._live.get(i)
            if run is not None and run.fired_at is not None:
                wait = min(wait, run.fired_at + STORE_FIRED_AFTER - now)
        return max(wait, WAKE_RETRY)

    def _store_fired(self, waking: set[str]) -> None:
        """Have the woken runs whose timer fired ``STORE_FIRED_AFTER`` ago or more, and is not
        stored yet, store it now: the step after it (which would store it as it ends) may run
        for an hour, and until then they count among those on their way. Beside the waker:
        storage that fails is retried for a while, and the waker goes on meanwhile."""
        now = trio.current_time()
        for i in waking:
            run = self._live[i]
            if run.fired_at is not None and run.storing is None and now - run.fired_at >= STORE_FIRED_AFTER:
                self._supervisor.start_soon(f"store the fired timer of {i}", self._store_one_fired, run)

    async def _store_one_fired(self, run: Run) -> None:
        try:
            await run.store_fired()
        except Exception as exc:
            # Its own next checkpoint stores it (or meets the same failure, and deals with it);
            # the waker goes on.
            log.warning("instance %s: its fired timer could not be stored yet (%s)", run.state.instance_id, exc,
                        extra={"instance_id": run.state.instance_id, "workflow_name": run.state.workflow_name})

    def _stop_actors(self) -> None:
        self._actors_stopped = True
        self._release_waiters()

    def _release_waiters(self) -> None:
        """No run starts from now on: callers of ``wait()`` on parked instances, and on queued
        runs, which have no actor to end them, learn that the engine stopped
        (``EngineClosedError``) rather than wait for ever; and the runs storing a child stop
        doing so within a bounded time (see ``bound_child_stores``)."""
        self._let_waiters_look(lambda next_run: True)
        for run in self._waiting:
            run.ended()
        for run in self._live.values():
            bound_child_stores(run, cut=False)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("the engine is closed (its async with block has ended)")
        if threading.get_ident() != self._thread:  # (inline: every call of every caller asks)
            self._check_thread()

    def _check_thread(self) -> None:
        if threading.get_ident() != self._thread:
            # Its tasks, locks and storage belong to its own run: a call from another would
            # store half an instance and leave it to nobody. (One thread runs one trio run at a
            # time: the thread tells the run, and costs far less to ask than trio's token.)
            raise WrongTrioRunError(
                "the engine runs in another trio run than this call's (called from another thread, in a"
                " trio.run of its own or none); call it from its own run, or from another thread through"
                " trio.from_thread.run(engine.start, ..., trio_token=engine.trio_token)")

    @property
    def trio_token(self) -> trio.lowlevel.TrioToken:
        """The trio run the engine runs in: what a thread of its own hands
        ``trio.from_thread.run`` (or ``run_sync``) to call the engine."""
        return self._trio_token

    async def _let_starts_store(self) -> None:
        """As the engine closes, before storage does: wait for the ``start()`` calls still
        storing (from tasks outside the engine's block: those of its actors have ended by now)
        to finish, so that the cancel a ``cancel()`` said yes to as one was stored goes into its
        row (see ``_start``) rather than to storage closed under it. Bounded, as a decision
        stored as the engine stops is (storage that does not answer must not hold the close for
        ever): a store still under way then is left to what it finds, its cancel lost (logged),
        and the instance to the next engine as stored. No time at all with none under way."""
        if not self._starts_storing:
            return
        self._starts_store_by = trio.current_time() + DECISION_TIMEOUT
        self._starts_stored = trio.Event()
        with trio.move_on_at(self._starts_store_by):
            await self._starts_stored.wait()
        if self._starts_storing:
            log.warning("the engine closed with %d start() calls still storing after %g s; a cancel said to any"
                        " of them may be lost, the next engine going on with what they stored",
                        self._starts_storing, DECISION_TIMEOUT)

    def _close(self) -> None:
        self._closed = True
        self.events.attach(None)
        self._release_waiters()
        self._registered_more.set()
        for storing in self._storing.values():
            # Its waiters (a start, signal() or cancel() of an id being stored) raise
            # EngineClosedError now rather than when the store ends, which may take long.
            storing.done()


#: Waits longer than this (seconds) let an instance leave memory: it is stored with what it
#: waits for and holds no task and no ``max_running`` slot until it is due or signalled.
PARK_AFTER = 1.0
#: How long (seconds) before its time the waker takes an instance up from storage: it then waits
#: the rest in memory (less than ``PARK_AFTER``: it does not leave again), holding no slot until
#: its time, so that reading and decoding its row come before its time rather than make it late.
#: Timers that fall due together (a batch of reminders) then fire at their time, a batch at once.
WAKE_AHEAD = PARK_AFTER / 2
#: Most woken instances on their way to their first checkpoint (the waker wakes more once half
#: of them are past it); and how long the waker waits before it looks again at due instances it
#: could not wake, or at those on their way.
WAKE_BATCH = 1000
WAKE_RETRY = 0.05
#: How long (seconds) a woken run's fired timer may go unstored, the step after it running,
#: before the waker has it stored: its next checkpoint usually comes well before.
STORE_FIRED_AFTER = 1.0
#: Longest the waker waits before it asks storage again after a failure.
WAKE_BACKOFF_MAX = 5.0
#: Most workflows the waker asks the adapter to leave out (each is a query parameter); the due
#: instances of any more it cannot run are passed over one by one.
SKIP_MOST = 100
#: Longest the waker waits before it looks again at due instances it could not resume while
#: nothing changes: a timer that falls due meanwhile fires up to this late.
WAKE_LOOK_MAX = 1.0
#: Most instances one adapter call of a purge deletes (on SQLite, one transaction).
PURGE_BATCH = 1000
#: Most times a ``start()`` creates again an id whose refused create's row was gone when read
#: (purged in between): more means storage whose create and load disagree.
START_FREED_TRIES = 8
#: The bounds of how often the retention task purges (seconds), and after how many instances
#: finished it purges sooner.
RETAIN_PERIOD_MIN = 1.0
RETAIN_PERIOD_MAX = 60.0
RETAIN_EVERY = 1000
#: Longest the retention task waits, once it has purged everything finished here, before it
#: looks again all the same (seconds).
RETAIN_IDLE_MAX = 3600.0


class _Opening(AbstractAsyncContextManager[Engine]):
    """What ``open_engine(...)`` returns: the engine's ``async with`` block, which also says
    how to use it when it is used as the engine itself, or awaited."""

    __slots__ = ("_block",)

    def __init__(self, block: AbstractAsyncContextManager[Engine]) -> None:
        self._block = block

    async def __aenter__(self) -> Engine:
        return await self._block.__aenter__()

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._block.__aexit__(*exc)

    if not TYPE_CHECKING:
        # Here only to say how to use it, as it runs: a checker must not take the block for
        # something awaitable, a plain context manager, or the engine with its attributes.
        def __await__(self) -> Generator[Any, None, NoReturn]:
            raise TypeError(_USE_OPEN_ENGINE)

        def __enter__(self) -> NoReturn:
            raise TypeError(f"open_engine() needs async with, not with: {_USE_OPEN_ENGINE}")

        def __exit__(self, *exc: Any) -> None:
            """(Never reached: ``__enter__`` refuses.)"""

        def __getattr__(self, name: str) -> NoReturn:
            raise AttributeError(
                f"open_engine() gives the engine's block, not the engine (no {name!r}): {_USE_OPEN_ENGINE}")


_USE_OPEN_ENGINE = "use it as `async with tf.open_engine(...) as engine:` and call engine methods inside the block"
P_ = ParamSpec("P_")


def _as_block(opener: Callable[P_, AbstractAsyncContextManager[Engine]]) -> Callable[P_, _Opening]:
    """``opener``, its block wrapped in an :class:`_Opening`."""
    @functools.wraps(opener)
    def open(*args: P_.args, **kwargs: P_.kwargs) -> _Opening:
        return _Opening(opener(*args, **kwargs))
    return open


@refuses_unbound_arguments
@_as_block
@asynccontextmanager
async def open_engine(
    *,
    adapter: Adapter | None = None,
    max_running: int = 10_000,
    services: Mapping[str, Any] | None = None,
    driver: Any = None,
    resume: bool = True,
    threads: bool = True,
    storage_retry_for: Seconds = STORAGE_RETRY_FOR,
    clock: Callable[[], float] | None = None,
    retain_finished: Seconds | None = None,
) -> AsyncIterator[Engine]:
    """Run an engine for the duration of the block.

    ``adapter`` defaults to a fresh :class:`MemoryAdapter`. At most ``max_running`` instances
    run at once; more wait as ``pending``. With ``resume`` (the default), the instances the
    adapter holds as pending or running when the engine opens are resumed, each when its
    workflow is registered; ``resume=False`` holds them back until :meth:`Engine.resume` (those
    waiting out of memory for a timer or a signal are woken when due either way: waiting is
    not being in flight). Leaving the block stops every
    actor; running instances stay ``running`` in the adapter for the next engine to resume
    (a ``start()`` from a task outside the block still storing its instance is waited for, up
    to 10 s, before the adapter closes, so that a cancel said to it meanwhile is stored in it). The
    ``on_complete``/``on_failed`` hooks of runs that ended, and async event callbacks with the
    events queued for them, are then given up to 30 s to finish (not when the block raised or
    was cancelled: they are cut at once, each cut logged as a WARNING).
    Plain ``def`` jobs run in worker threads; ``threads=False`` runs them inline in the trio
    thread (what ``trioflow.testing.open_test_engine`` does, to keep virtual time still); a job
    abandoned by its timeout or a cancel gives its thread slot back at once.
    A checkpoint that fails for a reason that may pass (database busy or locked, disk full) is
    retried for up to ``storage_retry_for`` seconds; if storage is still unusable then, the
    instance stops where it was last stored, resumable, and ``wait()`` raises
    :class:`StorageUnavailableError`. ``clock`` is the wall clock (Unix seconds) durable timers
    are on: ``time.time`` by default, or, in a trio run on a ``MockClock`` (tests), one that
    moves with virtual time, so timers of days take no real time; the adapter stamps finish
    times with it too. ``retain_finished`` (seconds or a ``timedelta``; ``None``, the default:
    keep them all) has a background task delete finished instances that long after they
    finished (see :meth:`Engine.purge`): it runs every ``retain_finished`` seconds (at least
    once a minute, at most once a second), so one is deleted within that period after it is
    due, and sooner after every 1,000 instances that finish in this engine, so a busy engine's
    finished instances do not pile up between runs. Read an instance's outcome (``wait``,
    ``get_instance``) before it is deleted.
    """
    check_in_trio("open_engine()")
    if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1:
        raise InvalidArgumentError(f"max_running must be an int >= 1, got {max_running!r}")
    check_switch(resume, "resume")
    check_switch(threads, "threads")
    if clock is not None:
        if not callable(clock):
            raise InvalidArgumentError(f"clock must be a function giving Unix seconds (time.time), got {clock!r}")
        now = clock()  # asked once now: a clock that gives no number fails here, not in a start
        if not in_range(now, -math.inf) or now == -math.inf:  # (a number, finite, that a float holds)
            raise InvalidArgumentError(f"clock must give Unix seconds as a number (as time.time does), it gave {safe_repr(now)}")
    check_adapter(adapter)
    check_services(services)
    if driver is not None and in_a_transaction_of(driver):
        # Its tasks are kept apart from this task's transactions (see keep_apart): their
        # writes would wait for this one to end, and it for them (a wait(), the close).
        raise InvalidArgumentError(
            "open_engine(driver=...) inside a transaction of that driver: the engine's instances, hooks and"
            " callbacks write through it outside your transaction, and would wait for it to end while it waits"
            " for them; open the engine outside the transaction (and open transactions in tasks of their own)")
    retry_for = duration(storage_retry_for, "storage_retry_for")
    keep = None if retain_finished is None else duration(retain_finished, "retain_finished")
    storage: Adapter = adapter if adapter is not None else MemoryAdapter()
    if keep is not None and not keeps_families(storage):
        log.warning(
            "open_engine(retain_finished=...): %s.create() takes no parent_id, so retention may purge a"
            " completed child workflow that its running parent would still compensate (see docs/adapters.md)",
            type(storage).__name__)
    wall_clock = clock if clock is not None else default_clock()
    if hasattr(storage, "use_clock"):  # an adapter from before retention stamps no finish times
        storage.use_clock(wall_clock)
    await storage.open()
    raised: BaseException | None = None  # what the caller's block raised
    handed_on: BaseException | None = None
    engine: Engine | None = None
    try:
        # Read before anything starts: what to resume is what a previous engine left.
        found = await storage.resumable()
        leftovers = found if resume else None
        # Two nurseries: instance actors and the engine's own tasks in one, held by a task of
        # the other, which holds what must outlive them (end hooks of runs that ended, async
        # event callbacks): leaving the block stops the first, then lets the second finish
        # what it was given, for up to HOOK_TIMEOUT.
        with trio.CancelScope() as settling:
            async with trio.open_nursery() as beside:
                keep_apart(beside)  # (its tasks, the actors' too, are not the caller's, in the driver)
                closing: list[Callable[[], None]] = []
                ended: list[Callable[[], None]] = []
                nursery: trio.Nursery = await beside.start(_hold_nursery, closing, ended)
                engine = Engine(
                    Supervisor(nursery), storage, max_running=max_running, services=services or {},
                    driver=driver, threads=threads, leftovers=leftovers, storage_retry_for=retry_for,
                    clock=wall_clock, beside=Supervisor(beside),
                    parked=() if resume else [record for record in found if record.wake_at is not None],
                )
                engine.events.attach(beside)
                closing.append(engine._stop_actors)
                # Events stop once the actors have ended, not when they are told to: an end
                # stored as the engine closes reaches async callbacks and streams too.
                ended.append(engine.events.close)
            # Asked before the caller gets the engine: the waker's reads then only follow
            # instances that wait, never run beside the caller's first calls.
                if waits_out_of_memory(storage):
                    engine._supervisor.start_soon("waker", engine._waker, await storage.next_wake())
                else:
                    # An adapter from before waiting instances existed: they wait in memory.
                    engine._park_after = None
                if keep is not None:
                    engine._retain_wake = trio.Event()  # finishes count from now, not from the task's start
                    engine._supervisor.start_soon("retention", engine._retain, keep, engine._retain_wake)
                try:
                    yield engine
                except BaseException as failure:
                    raised = failure
                    engine._close()
                    engine.events.close()
                    beside.cancel_scope.cancel()  # the block failed: nothing is waited for
                    raise
                engine._close()
                nursery.cancel_scope.cancel()
                settling.deadline = trio.current_time() + HOOK_TIMEOUT
        if settling.cancelled_caught:
            log.warning("the engine closed with end hooks or async event callbacks still running after %g s;"
                        " they were cancelled", HOOK_TIMEOUT)
    except BaseExceptionGroup as group:
        handed_on = _handed_on(group, raised)
        if handed_on is None:
            raise
    finally:
        with trio.CancelScope(shield=True):
            try:
                if engine is not None:
                    await engine._let_starts_store()
            finally:
                # (Closed whatever the wait ends with: a KeyboardInterrupt reaches it through
                # the shield, and storage left open would hold its file, or its adapter, for
                # the rest of the process.)
                await storage.close()
    if handed_on is not None:
        # Raised out here, not in the handler, and keeping its context: Python would make the
        # group, or the block's exception being handled as the block exits, its context, hiding
        # the one user code raised it while handling.
        raise_keeping_context(handed_on)


def _handed_on(group: BaseExceptionGroup[BaseException], raised: BaseException | None) -> BaseException | None:
    """What leaves the engine's block, bare, for the group its nursery raised (``None``: the
    group itself); ``raised``: what the block raised."""
    # (Told apart by their leaves: a cancel scope's exit may rebuild a group it passes on.)
    own = {id(leaf) for leaf in _leaves(raised)}
    stop = first_stop(leaf for leaf in _leaves(group) if id(leaf) not in own)
    if stop is not None:
        # User code the engine ran stopped the process (a step's sys.exit(), Ctrl+C in a step):
        # that goes on bare, as it was raised, so that the process exits as it asked and a
        # service's ``except SystemExit`` sees it. What the block raised came of the engine
        # stopping under it (a wait() released with EngineClosedError, say). (The block's own
        # exception, a group of its own included, goes on as raised, below.)
        return stop
    # The actors never raise into this nursery, so a group holds the block's own exception:
    # handed back as the caller raised it rather than wrapped.
    return group.exceptions[0] if len(group.exceptions) == 1 else None


def _leaves(exc: BaseException | None) -> list[BaseException]:
    """The exceptions ``exc`` holds, groups taken apart (none for ``None``)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [] if exc is None else [exc]


async def _hold_nursery(closing: list[Callable[[], None]], ended: list[Callable[[], None]], *,
                        task_status: trio.TaskStatus[trio.Nursery]) -> None:
    """Open a nursery and hand it over; return once it is cancelled and its tasks are done,
    calling ``ended`` then. ``closing`` is called as it stops taking tasks (see
    ``Engine._actors_stopped``)."""
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(nursery)
            try:
                await trio.sleep_forever()
            finally:
                for call in closing:
                    call()
    finally:
        for call in ended:
            call()


def _held_for_jobs(instance_id: str, missing: list[str]) -> InstanceNotLiveError:
    return InstanceNotLiveError(
        f"instance {instance_id!r} resumes once the jobs its workflow uses are registered (missing: {', '.join(missing)})")


def _starting(run: Run) -> bool:
    """Whether ``run`` is a delayed start past its wait, its start not stored yet."""
    main = run.state.lanes.get(MAIN)
    return main is not None and main.waiting is None and run.state.started_at is not None and not run.state.records \
        and run.fired_at is None and len(run.state.lanes) == 1 and run.state.phase == "forward"


def _created_wake(starts_at: float, now: float) -> float:
    """The wake time a delayed start's row is created with: it waits from its creation on, so
    that a delay waited in memory, its engine stopped during it, is taken up by the next
    engine's waker (with resume=False too), not left as an instance in flight; and one that
    leaves memory needs no write more to store it. A delay waited in memory (under
    ``PARK_AFTER``) is due ``WAKE_AHEAD`` after its start time: the waker, which reads the rows
    due that much ahead, meets it only from its start time on, when its run stores its start,
    rather than for all of its last ``WAKE_AHEAD``; after a restart it takes it up on time."""
    return starts_at if starts_at - now >= PARK_AFTER else starts_at + WAKE_AHEAD


#: No lost tries of an id (see ``Engine._unanswered``).
_NO_TRIES: Mapping[float, bool] = MappingProxyType({})


class _Storing:
    """An id ``start`` is storing: its workflow, and the tasks waiting for the store to end (the
    event is made only if someone waits: most starts are waited on by nobody). Also over for
    its waiters once the engine closes (see :meth:`Engine._close`): each then checks whether
    the engine is open, rather than wait for a store whose outcome no longer matters to it."""

    __slots__ = ("workflow_name", "instance_id", "_over", "_ended", "signalled", "cancel_wanted", "cancel_owed", "newer",
                 "created_ats", "cut_at")

    def __init__(self, workflow_name: str, instance_id: str) -> None:
        self.workflow_name = workflow_name
        self.instance_id = instance_id
        self._over: trio.Event | None = None
        self._ended = False
        #: Whether a ``signal()`` for the id began while it was stored (see :meth:`Engine._start`).
        self.signalled = False
        #: Whether a ``cancel()`` of the id waits for this store (see :meth:`Engine.cancel`).
        self.cancel_wanted = False
        #: When one gave up waiting and said yes (``None``: none did): the instance is cancelled
        #: beside it once the store is let go of (see :meth:`Engine._release_start`).
        self.cancel_owed: float | None = None
        #: The creation times the starts storing it gave the instance, or found it stored with.
        #: (Tuples, not lists: the collector stops tracking a tuple of floats, and every child
        #: being stored has a ``_Storing``; ``newer`` is nearly always empty, the shared ``()``.)
        self.created_ats: tuple[float, ...] = ()
        #: Those of starts of the id made since its cancel was owed (see ``Engine._owing``).
        self.newer: tuple[float, ...] = ()
        #: From when (trio's clock) a child's run made by this store is cancelled as it is made:
        #: its parent's step was cut meanwhile (see ``Children.cancel_as_made``).
        self.cut_at = math.inf

    def made_it(self, created_at: float) -> bool:
        """Whether the row created at ``created_at`` is the instance this store stands for: one
        of its tries made it, or, once a ``cancel()`` said yes as it waited, it was there before
        (found, or its answer lost), as no start of the id made since in this engine made it.
        (Known by what this engine did, not by comparing times: another process's clock, or
        this one stepped back, would say otherwise.)"""
        return created_at in self.created_ats or self.cancel_owed is not None and created_at not in self.newer

    def cancels_its_run(self) -> bool:
        """Whether the run this store makes is cancelled as it is made, before its first step:
        a ``cancel()`` waits for the store (or said yes as it waited, for it or the start it
        retries), or a child's parent step was cut meanwhile."""
        return self.cancel_wanted or self.cancel_owed is not None or (
            self.cut_at < math.inf and self.cut_at <= trio.current_time())

    async def wait(self) -> None:
        if self._ended:
            await trio.lowlevel.checkpoint()
            return
        if self._over is None:
            self._over = trio.Event()
        await self._over.wait()

    def done(self) -> None:
        self._ended = True
        if self._over is not None:
            self._over.set()


class _NextRun:
    """The next run here of a parked instance of ``workflow`` that callers of ``wait()`` wait
    for: set as it starts, and handed to them (or set without one: the engine stopping, a
    registration of its workflow, its row found unreadable; they look again)."""

    __slots__ = ("event", "run", "workflow")

    def __init__(self, workflow: str) -> None:
        self.event = trio.Event()
        self.run: Run | None = None
        self.workflow = workflow


class _InOrder:
    """The ``signal()`` calls for one id that go one at a time, in the order made."""

    __slots__ = ("lock", "calls")

    def __init__(self) -> None:
        self.lock = trio.StrictFIFOLock()
        self.calls = 0


#: Longest ``cancel()`` waits for its decision to be stored before it returns (seconds).
CANCEL_STORE_WAIT = 10.0


#: How many entries of runs that ended the heap of queued parents' deadlines may keep beyond
#: twice those it watches (see ``Engine._forget_queued_deadline``).
_STALE_DEADLINES = 64
#: How near its workflow deadline a parent counts as at it (see ``_must_cancel_children``), and
#: a queued run is launched to time out (see ``_watch_queued_deadlines``): the engine's clock,
#: read as the deadline comes, may be a float's rounding before it, and runs started in one
#: instant have deadlines a float step apart.
_DEADLINE_SLACK = 0.001


def _stored_view(record: StoredInstance, data: dict[str, Any] | None = None) -> WorkflowInstance:
    """The public view of a stored record (with the shared data ``data``, if given); an
    unreadable one is reported failed, with why."""
    try:
        state = _decoded(record)
    except SnapshotDecodeError as exc:
        return unreadable_instance(record.instance_id, record.workflow_name, describe_error(exc))
    if data is not None:
        state.data = data
    return to_instance(state)


def _end_in_flight(run: Run) -> bool:
    """Whether the run has ended and the checkpoint storing its end is not acknowledged yet."""
    stored = run.stored_status
    return stored is not None and stored not in TERMINAL and run.state.status in TERMINAL


def _live_view(run: Run, stored: Status | None, row: StoredInstance | None = None) -> WorkflowInstance:
    """The view of an instance running here, with the status ``stored`` (``None``: as in
    memory): the status in memory runs ahead of storage while the checkpoint of a change is in
    flight (an admission, an end), and a view says what is stored, as ``wait()`` does. ``row``:
    its row, read since it ended (needed only while its end is being stored)."""
    state = copied_view(run.state)  # (a copy: the view is never aliased to the running state)
    if stored is not None and state.status != stored:
        if state.status in TERMINAL and stored not in TERMINAL:
            # Its end is being stored: until it is, the view is of the instance as its row holds
            # it (the records stored, the step the main line stood in and what it waited for
            # there, as a restart would take it up), its shared data as it stands, as in any
            # live view. A row that holds the end already, or is gone (purged once it did):
            # the end stands.
            if row is not None and row.status not in TERMINAL:
                return _stored_view(row, state.data)
            return to_instance(state)
        # (Admitted, its admission not stored yet, or its on_start hook running: storage holds
        # no start time for it either, and its first step has not begun.)
        state.status = stored
        if stored == "pending":
            state.started_at = None
    elif run.stored_wake_at is not None and _starting(run):
        # A delayed start past its wait, its on_start hook running: storage says it waits for
        # its start (due now), which it stores once the hook is over, and no step has begun.
        state.lanes[MAIN].waiting = {"start": run.start_due}
        state.started_at = None
    return to_instance(state)


def _decide_cancel(state: InstanceState, now: float) -> list[tuple[tuple[str, str, int | None, float | None], str]]:
    """A cancel decided in a stored instance going forward that no run holds here: it goes back
    compensating, the steps it stood in recorded cut short where a record ends them (a task step
    between attempts, a map or a wide parallel step: see ``cut_short_record``), as in a run. The
    steps it stood in, with their execution ids, for their events."""
    under_way = steps_under_way(state)
    # (Their ids before the records below count them.)
    executions = [running_execution_id(state, lane_key, step_name) for lane_key, step_name, _, _ in under_way]
    begin_compensation(state, "cancelled", WorkflowCancelledError.of(state.instance_id), None)
    for lane_key, step_name, attempts, since in reversed(under_way):  # (innermost first, as in a run)
        if (record := cut_short_record(state, lane_key, step_name, attempts, since, now)) is not None:
            fail_step(state, stage(state, record), for_good=False)
    return list(zip(under_way, executions))


def _woken_by(state: InstanceState, wakes: Callable[[dict[str, Any]], bool]) -> bool:
    """Whether a lane of ``state`` waits for what passes ``wakes``. (A loop, not any() over a
    generator: every wake asks.)"""
    for lane in state.lanes.values():
        if lane.waiting is not None and lane.waits() and wakes(lane.waiting):
            return True
    return False


def _decoded(record: StoredInstance) -> InstanceState:
    """The state a stored row holds, or :class:`SnapshotDecodeError`. It must be the row's own:
    a row holding another instance's data (a copied or tampered row) would otherwise run that
    instance a second time; and its status must be the one the adapter lists it under (a row
    marked finished by hand, its header still running, would be neither run nor reported)."""
    return _its_own(record, decode_stored(record))


def _decoded_head(record: StoredInstance) -> StoredHead:
    """What a stored row's start and header say (its records neither read nor checked), checked
    as :func:`_decoded` checks the state."""
    return _its_own(record, decode_head(record))


_Decoded = TypeVar("_Decoded", InstanceState, StoredHead)


def _its_own(record: StoredInstance, state: _Decoded) -> _Decoded:
    """``state``, decoded from ``record``, if it is the row's own (see :func:`_decoded`)."""
    if state.instance_id != record.instance_id or state.workflow_name != record.workflow_name:
        raise SnapshotDecodeError(
            f"the row of instance {record.instance_id!r} ({record.workflow_name!r}) holds the snapshot of"
            f" instance {state.instance_id!r} ({state.workflow_name!r})"
        )
    if state.status != record.status:
        raise SnapshotDecodeError(
            f"the row of instance {record.instance_id!r} is stored as {safe_repr(record.status)}, and its snapshot"
            f" says {state.status!r} (a status changed by hand?)"
        )
    return state
