"""Where an instance stands: the state the actors mutate, and the public read-only views.

``InstanceState`` is deliberately mutable: exactly one instance actor (and its branch actors, in
the same trio thread, never across an ``await``) owns it, and copying it on every step would put
allocation on the hot path. Callers never see it: they get :class:`WorkflowInstance` /
:class:`WorkflowResult`, frozen values. Timestamps are Unix seconds (``time.time()``).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

Status = Literal["pending", "running", "completed", "failed", "cancelled", "timed_out"]
StepStatus = Literal["pending", "running", "completed", "failed", "skipped", "compensated"]
Phase = Literal["forward", "compensating", "done"]

#: Statuses an instance never leaves.
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled", "timed_out"})
#: Statuses of instances a resume picks up.
RESUMABLE: frozenset[str] = frozenset({"pending", "running"})


@attrs.frozen(kw_only=True)
class StepResult:
    """What happened to one step of one instance."""

    step_name: str
    status: StepStatus
    input: Any = None
    output: Any = None
    error: str | None = None
    started_at: float | None = None
    completed_at: float | None = None
    attempts: int = 0


@attrs.define(kw_only=True)
class Lane:
    """Progress of one lane: the main line (key ``""``) or one branch of a running parallel step.

    ``step`` is the step to run next (``None`` once the lane is done); ``output`` is the output
    of the lane's last completed step, which a pass step passes on and a branch returns.
    """

    step: str | None
    output: Any = None


@attrs.define(kw_only=True, eq=False)
class InstanceState:
    """Everything a snapshot holds; encoded by :mod:`trioflow.adapters._codec`."""

    instance_id: str
    workflow_name: str
    fingerprint: str
    status: Status
    input: Any
    data: dict[str, Any]
    lanes: dict[str, Lane]
    step_results: dict[str, StepResult] = attrs.field(factory=dict)
    #: Names of completed steps in completion order, branch steps included.
    completed: list[str] = attrs.field(factory=list)
    phase: Phase = "forward"
    #: While compensating: the status the instance ends with once compensation is done.
    outcome: Status | None = None
    #: A transactional run whose driver transaction was rolled back.
    rolled_back: bool = False
    output: Any = None
    error: str | None = None
    failed_step: str | None = None
    compensated: list[str] = attrs.field(factory=list)
    compensation_errors: dict[str, str] = attrs.field(factory=dict)
    created_at: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None


@attrs.frozen(kw_only=True)
class WorkflowMetadata:
    """Identity of the run a step belongs to (``ctx.metadata``)."""

    id: str
    workflow_name: str
    started_at: float | None


@attrs.frozen(kw_only=True)
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


@attrs.frozen(kw_only=True)
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


def to_instance(state: InstanceState) -> WorkflowInstance:
    """The public view of a state. Shares values with ``state``: give it a decoded copy."""
    return WorkflowInstance(
        id=state.instance_id,
        workflow_name=state.workflow_name,
        status=state.status,
        current_step=state.lanes[""].step if "" in state.lanes else None,
        input=state.input,
        output=state.output,
        error=state.error,
        failed_step=state.failed_step,
        step_results=state.step_results,
        compensated_steps=tuple(state.compensated),
        compensation_errors=state.compensation_errors,
        rolled_back=state.rolled_back,
        created_at=state.created_at,
        started_at=state.started_at,
        completed_at=state.completed_at,
    )


def unreadable_instance(instance_id: str, workflow_name: str, error: str) -> WorkflowInstance:
    """What callers see of an instance whose stored snapshot cannot be read: failed, with why."""
    return WorkflowInstance(
        id=instance_id, workflow_name=workflow_name, status="failed", current_step=None, input=None,
        output=None, error=error, failed_step=None, step_results={}, compensated_steps=(),
        compensation_errors={}, rolled_back=False, created_at=0.0, started_at=None, completed_at=None,
    )


def metadata_of(state: InstanceState) -> WorkflowMetadata:
    """``ctx.metadata`` / ``WorkflowResult.metadata`` for a state."""
    return WorkflowMetadata(id=state.instance_id, workflow_name=state.workflow_name, started_at=state.started_at)
