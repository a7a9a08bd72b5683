"""Running one workflow in the caller's task, without an engine or storage."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trioflow.actors._instance import run_instance
from trioflow.actors._run import Run
from trioflow._virtual_time import default_clock
from trioflow.actors._threads import ThreadSlots

from ._builder import HookFunctions, WorkflowBuilder
from ._context import check_services
from ._current import check_in_trio
from ._decide import new_state
from ._ids import new_instance_id
from ._definition import TaskStep, WorkflowDefinition, unbuilt_hint
from ._durations import Seconds
from ._engine_arguments import check_given_instance_id, refuses_unbound_arguments
from ._errors import DefinitionError, InvalidArgumentError, UnknownJobError, safe_repr
from ._jobs import JobRegistry, check_job_calls
from ._snapshot import WorkflowResult


#: The jobs of a run given none, shared: nothing registers into a run's registry, and making one
#: (with the check that a mapping is one, an ABC's) cost 3 % of a short saga's run.
_NO_JOBS = JobRegistry()


@refuses_unbound_arguments
async def execute_workflow(
    driver: Any,
    workflow: WorkflowDefinition,
    input: Any = None,
    *,
    services: Mapping[str, Any] | None = None,
    jobs: Mapping[str, Callable[..., Any]] | None = None,
    instance_id: str | None = None,
) -> WorkflowResult:
    """Run ``workflow`` to its end in the calling task and return its :class:`WorkflowResult`.

    Nothing is stored; a failure compensates the completed steps and is reported on the result
    (it is not raised). Cancelling the caller cancels the run, compensates (shielded), and
    re-raises the cancellation.
    """
    check_in_trio("execute_workflow()")
    if not isinstance(workflow, WorkflowDefinition):
        hint = unbuilt_hint(workflow)
        if isinstance(driver, WorkflowDefinition):
            hint = (": the definition came first; the first argument is the driver steps get as ctx.driver"
                    f" (None for none): execute_workflow(None, {driver.name}, input)")
        raise DefinitionError(f"execute_workflow needs a built WorkflowDefinition, got {safe_repr(workflow)}{hint}")
    if services is not None:  # (none: nothing to check)
        check_services(services)
    if instance_id is not None:
        check_given_instance_id(instance_id)
    workflow.check_driver(driver, "execute_workflow(driver, workflow, ...)")
    clock = default_clock()
    state = new_state(workflow, new_instance_id() if instance_id is None else instance_id, input, clock())
    registry = _NO_JOBS if jobs is None else jobs if isinstance(jobs, JobRegistry) else JobRegistry(jobs)
    if jobs is not None:  # (none given: no job of them for a step to call)
        check_job_calls(workflow, registry)  # (as an engine's register() checks them)
    run = Run(
        workflow, state, adapter=None, jobs=registry,
        services=services or {}, driver=driver, compensate_on_outer_cancel=True, cancellable=False,
        threads=ThreadSlots(), clock=clock,
    )
    # (Most definitions name no job: no list sorted for them.)
    missing = [name for name in sorted(workflow.job_names) if name not in run.jobs] if workflow.job_names else ()
    children = workflow.child_steps
    # Failed before any step runs, as an engine refuses to start it: a misspelt job name, or a
    # child step (a child is an instance of its own, which only an engine runs), in a late step
    # would otherwise run (and compensate) the steps before it; and a child step's failure
    # could be caught, or tolerated in a map, as if its child had failed.
    if missing:
        run.doomed = UnknownJobError(
            f"workflow {workflow.name!r} uses jobs that are not in jobs=: {', '.join(map(repr, missing))}; no step ran")
    elif children:
        run.doomed = InvalidArgumentError(
            f"workflow {workflow.name!r} has child steps ({', '.join(map(repr, children))}): a child step needs an"
            " engine (open_engine), as execute_workflow runs no child instances; no step ran")
    await run_instance(run)
    return run.result()


@refuses_unbound_arguments
async def run_workflow(
    driver: Any,
    name: str | Mapping[str, Any],
    steps: Sequence[TaskStep] | None = None,
    input: Any = None,
    *,
    use_transaction: bool = False,
    timeout: Seconds | None = None,
    initial_data: Mapping[str, Any] | None = None,
    services: Mapping[str, Any] | None = None,
    hooks: HookFunctions | None = None,
    jobs: Mapping[str, Callable[..., Any]] | None = None,
) -> WorkflowResult:
    """Build a saga from ``steps`` and execute it at once (``runWorkflow`` in other saga libraries).

    ``run_workflow(driver, {"name": ..., "steps": [...], ...})`` (the other form those take)
    gives the name, the steps and any of the other arguments in one mapping; the keywords
    add to it (one given both ways is refused). ``jobs`` holds the callables of steps given a
    job's name, as :func:`execute_workflow`'s does."""
    if isinstance(name, Mapping):
        options = _run_options(name)
        given = {"steps": steps, "input": input, "use_transaction": use_transaction or None, "timeout": timeout,
                 "initial_data": initial_data, "services": services, "hooks": hooks, "jobs": jobs}
        for key, value in given.items():
            if value is None:
                continue  # (not given: its default)
            if key in options:
                raise DefinitionError(f"run_workflow takes its {key} in the mapping or as an argument, not both")
            options[key] = value
        missing = [key for key in ("name", "steps") if key not in options]
        if missing:
            raise DefinitionError(f"run_workflow's mapping needs {' and '.join(map(repr, missing))}")
        return await run_workflow(driver, **options)
    if steps is None:
        raise DefinitionError(f"run_workflow({name!r}) needs its steps: a list of steps made by tf.step(name, execute, ...)")
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) \
            or not all(isinstance(s, TaskStep) for s in steps):
        raise DefinitionError(
            f"run_workflow's steps must be a list of steps made by tf.step(name, execute, ...), got {safe_repr(steps)}")
    builder = WorkflowBuilder(name).transactional(use_transaction)
    for s in steps:
        builder.step(s)
    if timeout is not None:
        builder.with_timeout(timeout)
    if initial_data is not None:
        builder.with_data(initial_data)
    if hooks is not None and not isinstance(hooks, Mapping):
        raise DefinitionError(f"run_workflow's hooks must be a mapping of hook names to callables (a dict), got"
                              f" {safe_repr(hooks)}")
    if hooks:
        strays = [safe_repr(name) for name in hooks if not isinstance(name, str)]
        if strays:  # (not keywords: with_hooks could not even be called with them)
            raise DefinitionError(f"run_workflow's hooks are named by strings: unknown hook {', '.join(strays)}")
        builder.with_hooks(**hooks)
    return await execute_workflow(driver, builder.build(), input, services=services, jobs=jobs)


#: What ``run_workflow``'s one-mapping form may hold (its other arguments, by name).
_RUN_OPTIONS = ("name", "steps", "input", "use_transaction", "timeout", "initial_data", "services", "hooks", "jobs")


def _run_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments a ``run_workflow(driver, {...})`` mapping gives, or :class:`DefinitionError`
    naming what is not one of them."""
    unknown = [key for key in options if key not in _RUN_OPTIONS]
    if unknown:
        raise DefinitionError(
            f"run_workflow's mapping takes {', '.join(_RUN_OPTIONS)}; not {', '.join(map(safe_repr, unknown))}")
    return dict(options)
