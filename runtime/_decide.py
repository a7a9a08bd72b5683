"""The engine's decisions, as plain synchronous functions over an :class:`InstanceState`.

No trio, no I/O: which step runs next, what a result does to the state, what to compensate and
in which order. The actors call these and then persist; tests and hypothesis call them directly.
"""

from __future__ import annotations

import os
from typing import Any

from ._definition import ChoiceStep, ParallelStep, Step, TaskStep, WorkflowDefinition
from ._errors import NoChoiceMatchedError
from ._snapshot import InstanceState, Lane, Status, StepResult

MAIN = ""


def new_instance_id() -> str:
    """A random 128-bit id in hex (what ``uuid4().hex`` gives, at a fraction of its cost)."""
    return os.urandom(16).hex()


def new_state(
    definition: WorkflowDefinition, instance_id: str, input: Any, now: float, *, status: Status = "running"
) -> InstanceState:
    """A fresh instance positioned at its first step."""
    return InstanceState(
        instance_id=instance_id,
        workflow_name=definition.name,
        fingerprint=definition.fingerprint,
        status=status,
        input=input,
        data=dict(definition.data),
        lanes={MAIN: Lane(step=definition.steps[0].name)},
        created_at=now,
        started_at=now if status == "running" else None,
    )


def admit(state: InstanceState, now: float) -> None:
    """A pending instance got a running slot."""
    state.status = "running"
    if state.started_at is None:
        state.started_at = now


def choose(step: ChoiceStep, ctx: Any) -> str:
    """The target of a choice: first matching condition, else default, else an error."""
    for choice in step.choices:
        if choice.condition(ctx):
            return choice.next
    if step.default is None:
        raise NoChoiceMatchedError(step.name)
    return step.default


def complete_step(
    state: InstanceState, lane_key: str, step: Step, output: Any, next_step: str | None,
    *, input: Any = None, attempts: int = 1, started_at: float, now: float,
) -> None:
    """Record a completed step and move its lane on (``next_step`` ``None``: the lane is done)."""
    state.step_results[step.name] = StepResult(
        step_name=step.name, status="completed", input=input, output=output,
        started_at=started_at, completed_at=now, attempts=attempts,
    )
    state.completed.append(step.name)
    lane = state.lanes[lane_key]
    lane.step = next_step
    lane.output = output
    if isinstance(step, ParallelStep):
        # A finished parallel step's branch lanes are spent; dropping them means a parallel
        # step entered again (a loop through a choice) starts its branches afresh.
        for key in branch_keys(step):
            state.lanes.pop(key, None)


def fail_step(
    state: InstanceState, step_name: str, error: str, *, attempts: int, started_at: float | None, now: float,
    input: Any = None,
) -> None:
    """Record a step that failed for good (or was cancelled while running)."""
    state.step_results[step_name] = StepResult(
        step_name=step_name, status="failed", input=input, error=error,
        started_at=started_at, completed_at=now, attempts=attempts,
    )


def next_of(step: Step) -> str | None:
    """Where a completed non-choice step goes (``None``: its lane ends)."""
    return None if step.end else step.next


def branch_keys(step: ParallelStep) -> list[str]:
    return [f"{step.name}/{b.name}" for b in step.branches]


def open_branches(state: InstanceState, step: ParallelStep) -> bool:
    """Create the branch lanes of a parallel step unless a resume finds them already there.

    Returns whether they were created (``False``: this is a resume of a running parallel step).
    """
    keys = branch_keys(step)
    if keys[0] in state.lanes:
        return False
    for key, b in zip(keys, step.branches):
        state.lanes[key] = Lane(step=b.steps[0].name)
    return True


def parallel_output(state: InstanceState, step: ParallelStep) -> dict[str, Any]:
    """``{branch_name: branch_output}`` in the order the branches are defined."""
    return {b.name: state.lanes[key].output for key, b in zip(branch_keys(step), step.branches)}


def begin_compensation(
    state: InstanceState, outcome: Status, error: str, failed_step: str | None
) -> None:
    """The forward run ended badly: remember how, and switch to compensating.

    The stored status stays "running" until compensation is done, so a crash in between leaves
    the instance resumable; ``outcome`` is the status it will end with.
    """
    state.phase = "compensating"
    state.outcome = outcome
    state.error = error
    state.failed_step = failed_step


def pending_compensations(state: InstanceState, definition: WorkflowDefinition) -> list[str]:
    """Completed steps with a compensation, newest first, minus those already handled.

    After a rolled-back transaction, entity steps are left out: the rollback undid their writes.
    """
    handled = set(state.compensated) | state.compensation_errors.keys()
    plan: list[str] = []
    for name in reversed(state.completed):
        if name in handled or name in plan:
            continue
        entry = definition.lookup.get(name)
        if entry is None or not isinstance(entry[0], TaskStep) or entry[0].compensate is None:
            continue
        if not (state.rolled_back and entry[0].entity is not None):
            plan.append(name)
    return plan


def record_compensated(state: InstanceState, step_name: str) -> None:
    state.compensated.append(step_name)
    old = state.step_results.get(step_name)
    if old is not None:
        state.step_results[step_name] = StepResult(
            step_name=step_name, status="compensated", input=old.input, output=old.output,
            started_at=old.started_at, completed_at=old.completed_at, attempts=old.attempts,
        )


def record_compensation_failed(state: InstanceState, step_name: str, error: str) -> None:
    state.compensation_errors[step_name] = error


def finish(state: InstanceState, definition: WorkflowDefinition, status: Status, now: float) -> None:
    """Terminal state. On completion, main-lane steps that never ran are marked skipped."""
    state.status = status
    state.phase = "done"
    state.completed_at = now
    main = state.lanes[MAIN]
    if status == "completed":
        state.output = main.output
        for s in definition.steps:
            if s.name not in state.step_results:
                state.step_results[s.name] = StepResult(step_name=s.name, status="skipped")
    main.step = None


def fail_alone(state: InstanceState, error: str, now: float) -> None:
    """End an instance as failed without running anything more (it cannot be run on)."""
    state.status = "failed"
    state.phase = "done"
    state.error = error
    state.completed_at = now
    for lane in state.lanes.values():
        lane.step = None


def misfit(state: InstanceState, definition: WorkflowDefinition) -> str | None:
    """Why a stored instance can no longer run on ``definition`` (``None``: it still fits).

    Same fingerprint: fits. Otherwise every lane position, every running parallel step's set of
    branches, and every completed step must still exist where the snapshot says they are.
    """
    if state.fingerprint == definition.fingerprint:
        return None
    lookup = definition.lookup
    for key, lane in state.lanes.items():
        if lane.step is None:
            continue
        entry = lookup.get(lane.step)
        if entry is None:
            return f"step {lane.step!r}, where the instance stands, is no longer in workflow {definition.name!r}"
        if entry[1] != key:
            return f"step {lane.step!r} is no longer in the same lane ({key or 'main'!r}) of workflow {definition.name!r}"
    for name, (step, _) in lookup.items():
        if isinstance(step, ParallelStep):
            stored = {k for k in state.lanes if k.startswith(name + "/")}
            if stored and stored != set(branch_keys(step)):
                return f"parallel step {name!r} changed its branches while the instance was running it"
    for name in state.completed:
        if name not in lookup:
            return f"completed step {name!r} is no longer in workflow {definition.name!r}"
    return None


def progress(state: InstanceState, definition: WorkflowDefinition) -> tuple[int, int]:
    """(percent, completed main-lane steps). 100 only once the instance completed."""
    total = len(definition.steps)
    done = sum(1 for s in definition.steps if s.name in state.completed)
    if state.status == "completed":
        return 100, done
    return min(99, done * 100 // total), done
