"""``tf.current_step()``: which step execution the calling code runs in, for idempotency keys
(what Temporal's ``activity.info()`` and DBOS's step ids give).

The actors set a context variable around each call of a step's callable (every attempt, and
every compensation attempt). It holds a cheap tuple; the :class:`StepInfo` is built only when
asked for. Plain ``def`` jobs in worker threads see it too: trio copies the context into them.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import attrs

from ._errors import TrioflowError
from ._lanes import execution_id, step_key


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


#: (state, lane, step name, execution number or None: the one running now, attempt, compensating)
_where: ContextVar[tuple[Any, str, str, int | None, int, bool] | None] = ContextVar("trioflow_step", default=None)
enter = _where.set
leave = _where.reset


def current_step() -> StepInfo:
    """The step execution the calling code runs in; :class:`NotInStepError` outside of one."""
    where = _where.get()
    if where is None:
        raise NotInStepError(
            "trioflow.current_step() is only available inside a step's callable (a job, an execute or"
            " a compensate function) while the engine or execute_workflow runs it"
        )
    state, lane, step, execution, attempt, compensating = where
    if execution is None:  # the execution running now: not recorded until it ends
        execution = state.executions.get(step_key(lane, step), 0) + 1
    return StepInfo(
        instance_id=state.instance_id, workflow_name=state.workflow_name, step_name=step,
        execution_id=execution_id(lane, step, execution), attempt=attempt, compensating=compensating,
    )
