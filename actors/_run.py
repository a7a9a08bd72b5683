"""What one instance's actors share: its definition, state, services, storage and listeners."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import trio

from trioflow._context import WorkflowContext
from trioflow._definition import StepFn, WorkflowDefinition
from trioflow._errors import TrioflowError
from trioflow._events import EventBus
from trioflow._jobs import JobRegistry
from trioflow._snapshot import InstanceState, WorkflowResult, metadata_of
from trioflow.adapters._codec import check_encodable, encode
from trioflow.adapters._protocol import Adapter

log = logging.getLogger("trioflow")

#: The bus of runs nobody can subscribe to (``execute_workflow``): always inactive.
SILENT = EventBus()


class StepFailure(Exception):
    """A step failed for good; carries the step's name, the error and the attempts made."""

    def __init__(self, step_name: str, error: BaseException, attempts: int) -> None:
        super().__init__(step_name, error)
        self.step_name = step_name
        self.error = error
        self.attempts = attempts


class WorkflowFailedError(TrioflowError):
    """The recorded error of a run that ended before this process saw the exception itself
    (a resumed instance): the message is the error as it was stored."""


class Run:
    """The shared context of one instance run, owned by its instance actor.

    Slotted: one lives for every instance in flight, and parked instances should cost little.
    """

    __slots__ = (
        "definition", "state", "adapter", "jobs", "services", "driver", "bus", "resumed",
        "compensate_on_outer_cancel", "cancellable", "threads", "has_hooks", "deferred", "cancel_scope",
        "cancel_requested", "error", "stored_status", "started", "waiters",
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
        threads: bool = True,
    ) -> None:
        self.definition = definition
        self.state = state
        self.adapter = adapter
        self.jobs = jobs
        self.services = services
        self.driver = driver
        self.bus = bus
        self.resumed = resumed
        #: ``execute_workflow`` has no resume, so its caller's cancellation compensates at once;
        #: an engine leaves instances interrupted by its shutdown to the next resume.
        self.compensate_on_outer_cancel = compensate_on_outer_cancel
        #: Whether something (``engine.cancel``) may cancel this run from outside its steps.
        self.cancellable = cancellable
        self.threads = threads
        self.has_hooks = definition.has_hooks
        #: Inside a transactional run's transaction: snapshots wait for its commit.
        self.deferred = False
        self.cancel_scope: trio.CancelScope | None = None
        self.cancel_requested = False
        self.error: BaseException | None = None
        #: The status of the last snapshot the adapter has taken (``None``: none yet). ``wait``
        #: trusts the in-memory state of a finished run only once its end is stored.
        self.stored_status: str | None = None
        self.started = trio.current_time()
        #: Tasks parked until the run ends (``None``: nobody has waited yet, the usual case).
        self.waiters: list[trio.lowlevel.Task] | None = None

    def context(self, lane: str, total_steps: int) -> WorkflowContext:
        """A context for one lane of this run."""
        return WorkflowContext(
            self.state, lane=lane, total_steps=total_steps, services=self.services, driver=self.driver,
            encodable=check_encodable if self.adapter is not None else None,
        )

    def callable(self, fn: StepFn | str, asynchronous: bool) -> tuple[Callable[..., Any], bool]:
        """A step's callable and whether it is awaited, looking registered job names up
        (``asynchronous`` is the definition's flag for a callable given directly)."""
        return self.jobs.resolve(fn) if isinstance(fn, str) else (fn, asynchronous)

    async def persist(self) -> None:
        """Hand the current snapshot to the adapter and wait until it is stored."""
        if self.adapter is not None and not self.deferred:
            s = self.state
            status = s.status
            await self.adapter.save(s.instance_id, s.workflow_name, status, encode(s))
            self.stored_status = status

    async def wait_ended(self) -> None:
        """Park the calling task until :meth:`ended` is called.

        Parks the task directly rather than through a ``trio.Event``: most runs are waited on
        once, and an event with its parking lot would be made for each of them.
        """
        task = trio.lowlevel.current_task()
        if self.waiters is None:
            self.waiters = []
        waiters = self.waiters
        waiters.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            waiters.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def ended(self) -> None:
        """Wake every task in :meth:`wait_ended`; called once, when the run has ended."""
        if self.waiters is not None:
            for task in self.waiters:
                trio.lowlevel.reschedule(task)
            self.waiters.clear()

    def emit(self, name: str, **payload: Any) -> None:
        """Publish an event about this instance (callers check ``bus.active`` first)."""
        payload["instance_id"] = self.state.instance_id
        payload["workflow_name"] = self.state.workflow_name
        self.bus.emit(name, payload)

    async def hook(self, name: str, *args: Any) -> None:
        """Call a lifecycle hook; one that raises is logged and never changes the outcome."""
        fn = getattr(self.definition.hooks, name)
        if fn is None:
            return
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("hook %s of workflow %r raised; ignored", name, self.definition.name)

    def result(self) -> WorkflowResult:
        """The outcome of a finished run."""
        s = self.state
        error = self.error
        if error is None and s.error is not None:
            error = WorkflowFailedError(s.error)
        return WorkflowResult(
            success=s.status == "completed", status=s.status, instance_id=s.instance_id, data=s.data,
            output=s.output, error=error, failed_step=s.failed_step, compensated_steps=tuple(s.compensated),
            compensation_errors=dict(s.compensation_errors), rolled_back=s.rolled_back,
            duration=trio.current_time() - self.started,
            metadata=metadata_of(s),
        )


#: Wall-clock timestamp for records (Unix seconds): ``time.time`` itself rather than a wrapper,
#: since it is read several times per step.
now = time.time
