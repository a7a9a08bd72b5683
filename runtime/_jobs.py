"""Jobs registered by name, for tasks that say ``job="name"``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from ._callables import check_arguments, generator_kind, is_async, refusal
from ._definition import TaskStep, WorkflowDefinition
from ._engine_arguments import check_switch, refuses_unbound_arguments
from ._errors import DefinitionError, UnknownJobError, safe_repr

F = TypeVar("F", bound=Callable[..., Any])


def check_job(name: object, fn: object) -> None:
    """:class:`DefinitionError` naming the job unless ``name`` is a job's name and ``fn`` can
    be called as a job (not a generator function: a job returns its output)."""
    if not isinstance(name, str) or not name:
        raise DefinitionError(f"a job name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise DefinitionError(f"job {name!r}: {fn!r} is not callable")
    kind = generator_kind(fn)
    if kind is not None:
        raise DefinitionError(f"job {name!r}: {fn!r} is {kind} (it yields); a job returns its output:"
                              " collect what it yields and return that")
    # Every call of a job passes one argument or two (TaskStep.calls): one that takes neither
    # would fail at each call, after its retries. Which of them it gets is known only where a
    # workflow naming it meets it (check_job_calls).
    refused = refusal(fn, ("data",))
    if refused is not None and refusal(fn, ("ctx", "result")) is not None:
        raise DefinitionError(
            f"job {name!r}: a job is called with one argument (job(data), execute(ctx), compensate(output)) or two"
            f" (a saga's compensate(ctx, result)), but {refused} cannot take 1 or 2 arguments")


def check_job_calls(definition: WorkflowDefinition, jobs: Mapping[str, Callable[..., Any]]) -> None:
    """:class:`DefinitionError` naming the step unless each job of ``jobs`` that a step of
    ``definition`` names can take the call it gets there, as ``build()`` checks a callable
    given directly (a compensation that cannot would fail only once a later step has)."""
    for step, _ in definition.lookup.values():
        if isinstance(step, TaskStep):
            for what, ref, arguments in step.calls():
                if isinstance(ref, str) and ref in jobs:
                    check_arguments(f"workflow {definition.name!r}, step {step.name!r}, job {ref!r}", what,
                                    jobs[ref], arguments)


class JobRegistry(Mapping[str, Callable[..., Any]]):
    """Name -> callable. Each engine has its own (no process-wide state)."""

    @refuses_unbound_arguments
    def __init__(
        self, jobs: Mapping[str, Callable[..., Any]] | None = None, *, on_register: Callable[[], None] | None = None,
        check_open: Callable[[], None] | None = None,
        check_fits: Callable[[str, Callable[..., Any]], None] | None = None,
    ) -> None:
        #: Told after each registration (the engine resumes instances that waited for a job).
        self._on_register = on_register
        #: Asked before each registration (an engine's: raises once it has closed).
        self._check_open = check_open
        #: Asked with each job about to be registered (an engine's: refuses one that a workflow
        #: registered calls in a way it cannot take).
        self._check_fits = check_fits
        self._jobs: dict[str, Callable[..., Any]] = {}
        #: Whether each job is awaited (``True``) or run in a thread, worked out at registration.
        self._async: dict[str, bool] = {}
        if jobs is not None and not isinstance(jobs, Mapping):
            raise DefinitionError(f"jobs must be a mapping of job names to callables (a dict), got {safe_repr(jobs)}")
        for name, fn in (jobs or {}).items():
            self.register(name, fn)

    @refuses_unbound_arguments
    def register(self, name: str, fn: Callable[..., Any], *, replace: bool = False) -> None:
        """Register ``fn`` (``async def`` or plain ``def``, called as ``fn(data)``, or as a
        step's callable given directly is: ``TaskStep.calls``) as ``name``. The same callable
        again does nothing; another one under a name already registered raises
        :class:`DefinitionError` unless ``replace=True``, and so does one no call can bind, or
        (on an engine) that a workflow registered calls in a way it cannot take."""
        if self._check_open is not None:
            self._check_open()
        check_job(name, fn)
        check_switch(replace, "jobs.register()'s replace")
        known = self._jobs.get(name)
        if known is not None and not replace:
            if known == fn:
                return
            raise DefinitionError(f"job {name!r} is registered already as {known!r}; pass replace=True to replace it")
        if self._check_fits is not None:
            self._check_fits(name, fn)
        self._jobs[name] = fn
        self._async[name] = is_async(fn)
        if self._on_register is not None:
            self._on_register()

    @refuses_unbound_arguments
    def job(self, name: str) -> Callable[[F], F]:
        """Decorator form of :meth:`register`: ``@jobs.job("name")``."""
        if not isinstance(name, str):
            hint = f": write @job({name.__name__!r})" if callable(name) and hasattr(name, "__name__") else ""
            raise DefinitionError(f"job() takes the job's name, got {name!r}{hint}")

        def decorate(fn: F) -> F:
            self.register(name, fn)
            return fn

        return decorate

    def __getitem__(self, name: str) -> Callable[..., Any]:
        try:
            return self._jobs[name]
        except KeyError:
            known = ", ".join(sorted(self._jobs)) or "none"
            raise UnknownJobError(f"no job registered as {name!r} (registered: {known})") from None

    def resolve(self, name: str) -> tuple[Callable[..., Any], bool]:
        """The job registered as ``name`` and whether it is awaited."""
        return self[name], self._async[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, name: object) -> bool:
        return name in self._jobs
