"""``tf.current_step()``: which step execution the calling code runs in, for idempotency keys
(what Temporal's ``activity.info()`` and DBOS's step ids give).

Each lane actor puts its :class:`~trioflow.WorkflowContext` in a context variable once (the
main line in the instance actor, each branch in its own actor, compensation while it runs), and
marks on it which step it is calling and which attempt: nothing is allocated per step, and a
:class:`StepInfo` is built only when asked for. Plain ``def`` jobs in worker threads see it too
(trio copies the context into them), and so do tasks a job spawns.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

import attrs

from ._errors import TrioflowError
from ._lanes import execution_id, step_key

if TYPE_CHECKING:
    from ._context import WorkflowContext


class NotInStepError(TrioflowError, LookupError):
    """``current_step()`` was called outside a step's callable."""


@attrs.frozen(kw_only=True)
class StepInfo:
    """The step execution a callable runs in. ``execution_id`` is stable across retries and
    restarts of that execution (``"charge#1"``); ``attempt`` counts from 1 within it."""

    instance_id: str
    workflow_name: str
    step_name: str
    execution_id: str
    attempt: int
    #: Whether this call is the step's compensation (then ``execution_id`` names the
    #: execution being compensated).
    compensating: bool = False


#: The context of the lane the calling task belongs to.
lane_context: ContextVar[WorkflowContext | None] = ContextVar("trioflow_lane", default=None)


def current_step() -> StepInfo:
    """The step execution the calling code runs in; :class:`NotInStepError` outside of one."""
    ctx = lane_context.get()
    step = None if ctx is None else ctx._calling
    if ctx is None or step is None:
        raise NotInStepError(
            "trioflow.current_step() is only available inside a step's callable (a job, an execute or"
            " a compensate function) while the engine or execute_workflow runs it"
        )
    state, lane = ctx._state, ctx.lane
    execution = ctx._compensating
    if execution is None:  # the execution running now: not recorded until it ends
        execution = state.executions.get(step_key(lane, step), 0) + 1
    return StepInfo(
        instance_id=state.instance_id, workflow_name=state.workflow_name, step_name=step,
        execution_id=execution_id(lane, step, execution), attempt=ctx._attempt,
        compensating=ctx._compensating is not None,
    )
