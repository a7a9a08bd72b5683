"""Fluent builders: ``workflow(name)`` and ``branch(name)`` -> validated frozen definitions."""

from __future__ import annotations

import hashlib
from datetime import datetime
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Self, TypedDict, Unpack, overload

import attrs

from ._callables import check_arguments, generator_kind
from ._context import WorkflowContext  # (at run time too: the functions' type hints, resolved, name it)
from ._definition import (
    HOOK_ARGUMENTS,
    CATCHING,
    Branch,
    Catch,
    ChildStep,
    Choice,
    DEFAULT_COMPENSATION_TIMEOUT,
    ChoiceStep,
    ContinueAsNewStep,
    FailStep,
    FANNING_OUT,
    Hooks,
    JobFn,
    MapStep,
    OnError,
    ParallelStep,
    PassStep,
    OfContext,
    ReceiveStep,
    SagaCompensation,
    StorableValue,
    Step,
    SucceedStep,
    TaskStep,
    WaitStep,
    WorkflowDefinition,
)
from ._durations import Seconds, unix_seconds
from ._engine_arguments import refuses_unbound_arguments
from ._durations import seconds as as_seconds
from ._errors import DefinitionError
from ._lanes import branch_lane, item_lanes, valid_text
from ._retry import Retry
from ._snapshot import WorkflowResult
from ._validate import check_lane, check_timeout, check_unique_names


class HookFunctions(TypedDict, total=False):
    """The lifecycle hooks by name, each with what it is called with (README, Hooks), as
    :meth:`WorkflowBuilder.with_hooks` and :func:`trioflow.run_workflow` take them: a checker
    sees a misspelt hook, or one that reads what its call does not have, where it is written.
    Sync or async; one that raises is logged and ignored."""

    on_start: Callable[[WorkflowContext], Any] | None
    on_step_complete: Callable[[str, Any, WorkflowContext], Any] | None
    on_step_failed: Callable[[str, BaseException, WorkflowContext], Any] | None
    on_compensate: Callable[[str, WorkflowContext], Any] | None
    on_complete: Callable[[WorkflowResult], Any] | None
    on_failed: Callable[[WorkflowResult], Any] | None


_UNSET: Any = object()


@refuses_unbound_arguments
def step(
    name: str,
    execute: OfContext | str,
    compensate: SagaCompensation | str | None = None,
    *,
    retry: Retry | None = None,
    timeout: Seconds | None = None,
    catch: Sequence[Catch] | Catch | None = (),
    next: str | None = None,
    end: bool = False,
) -> TaskStep:
    """A saga step: ``execute(ctx) -> result``, optional ``compensate(ctx, result)``."""
    return TaskStep(
        name=name, run=execute, style="saga", compensate=compensate,
        retry=retry, timeout=timeout, catch=catchers(name, catch), next=next, end=end,
    )


def catchers(step_name: str, catch: Sequence[Catch] | Catch | None) -> tuple[Catch, ...]:
    """``catch=`` as a tuple (one ``Catch`` alone is accepted too, and ``None`` for none, as
    ``retry=None`` is: options built from a config file); ``build()`` checks its items."""
    if catch is None:
        return ()
    return _listed(step_name, "catch", catch, Catch, "trioflow.Catch")


def _listed(step_name: str, field: str, value: Any, kind: type[Any], what: str) -> tuple[Any, ...]:
    """A step option that lists ``kind`` items, as a tuple (one item alone is accepted too);
    anything else is a :class:`DefinitionError` naming the step and the option."""
    if isinstance(value, kind):
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise DefinitionError(f"step {step_name!r}: {field} must be a list of {what}, got {value!r}")
    if kind is not Catch:  # (catch items are checked by build(), with the step's lane)
        for item in value:
            if not isinstance(item, kind):
                raise DefinitionError(f"step {step_name!r}: {field} items must be {what}, got {item!r}")
    return tuple(value)


@refuses_unbound_arguments
def when(condition: OfContext, *, next: str) -> Choice:
    """A choice rule: go to ``next`` when ``condition(ctx)`` is true."""
    return Choice(condition=condition, next=next)


class _LaneBuilder:
    """The step-adding methods shared by workflows and branches."""

    @refuses_unbound_arguments
    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise DefinitionError(f"a workflow or branch name must be a non-empty string, got {name!r}")
        self._name = name
        self._steps: list[Step] = []

    # Two forms, for checkers: a step built here needs its ``execute``; a prebuilt one takes
    # nothing more (``build()`` refuses either mistake, but only once it runs).
    @overload
    def step(self, name: TaskStep, /) -> Self: ...
    @overload
    def step(
        self,
        name: str,
        execute: OfContext | str,
        compensate: SagaCompensation | str | None = None,
        *,
        retry: Retry | None = None,
        timeout: Seconds | None = None,
        catch: Sequence[Catch] | Catch | None = (),
        next: str | None = None,
        end: bool = False,
    ) -> Self: ...

    @refuses_unbound_arguments
    def step(
        self,
        name: str | TaskStep,
        execute: OfContext | str | None = None,
        compensate: SagaCompensation | str | None = None,
        *,
        retry: Retry | None = None,
        timeout: Seconds | None = None,
        catch: Sequence[Catch] | Catch | None = (),
        next: str | None = None,
        end: bool = False,
    ) -> Self:
        """Add a saga step, or a prebuilt one from :func:`trioflow.step`."""
        if isinstance(name, TaskStep):
            given = [option for option, value in (
                ("execute", execute), ("compensate", compensate), ("retry", retry), ("timeout", timeout),
                ("catch", catch or None), ("next", next), ("end", end or None)) if value is not None]
            if given:
                # The step is built already: what is given here would be dropped without a word.
                raise DefinitionError(
                    f"{self._owner()}, step {name.name!r}: a prebuilt step takes no {', '.join(given)} here;"
                    f" give them to tf.step() (or to the tf.*_entity_step factory that built it)")
            self._steps.append(name)
            return self
        if execute is None:
            raise DefinitionError(f"{self._owner()}, step {name!r}: execute is missing")
        self._steps.append(
            step(name, execute, compensate, retry=retry, timeout=timeout, catch=catch, next=next, end=end)
        )
        return self

    add_step = step

    @refuses_unbound_arguments
    def task(
        self,
        name: str,
        *,
        job: JobFn | str,
        input: OfContext | None = None,
        output: Callable[[Any, WorkflowContext], Any] | None = None,
        retry: Retry | None = None,
        timeout: Seconds | None = None,
        compensate: JobFn | str | None = None,
        catch: Sequence[Catch] | Catch | None = (),
        next: str | None = None,
        end: bool = False,
    ) -> Self:
        """Add a task: ``job(input(ctx))`` whose result, through ``output``, is the step output."""
        self._steps.append(
            TaskStep(
                name=name, run=job, style="job", input=input, output=output, retry=retry,
                timeout=timeout, compensate=compensate, catch=catchers(name, catch), next=next, end=end,
            )
        )
        return self

    @refuses_unbound_arguments
    def choice(self, name: str, *, choices: Sequence[Choice] | Choice, default: str | None = None) -> Self:
        """Add a choice: the first rule whose condition holds wins, else ``default``."""
        self._steps.append(ChoiceStep(name=name, choices=_listed(name, "choices", choices, Choice, "tf.when(...) rules"),
                                      default=default))
        return self

    @refuses_unbound_arguments
    def parallel(
        self,
        name: str,
        *,
        branches: Sequence[Branch] | Branch,
        on_error: OnError = "fail-fast",
        catch: Sequence[Catch] | Catch | None = (),
        next: str | None = None,
        end: bool = False,
    ) -> Self:
        """Add a parallel step whose branches run as actors in one nursery. A ``catch`` routes
        the step's failure (fail-fast: after the other branches are cancelled)."""
        self._steps.append(
            ParallelStep(
                name=name, branches=_listed(name, "branches", branches, Branch, "tf.branch(...).build() branches"),
                on_error=on_error, catch=catchers(name, catch), next=next, end=end,
            )
        )
        return self

    @refuses_unbound_arguments
    def map(
        self,
        name: str,
        *,
        items: OfContext,
        branch: Branch,
        max_concurrency: int | None = None,
        on_error: OnError = "fail-fast",
        tolerated_failures: int | float = 0,
        catch: Sequence[Catch] | Catch | None = (),
        next: str | None = None,
        end: bool = False,
    ) -> Self:
        """Add a map step: ``branch`` runs once per item of ``items(ctx)`` (sync or async), each
        item as its own actor (``ctx.item``, ``ctx.item_index``), at most ``max_concurrency`` at once; the
        output is the items' outputs in item order. ``tolerated_failures`` (a count, or a
        fraction such as ``0.1``) items may fail and leave ``{"error", "cause"}`` in their slot;
        one more fails the step (``on_error``: cancelling the running items at once, or once all
        have ended). A ``catch`` routes the step's failure."""
        self._steps.append(MapStep(
            name=name, items=items, branch=branch, max_concurrency=max_concurrency, on_error=on_error,
            tolerated_failures=tolerated_failures, catch=catchers(name, catch), next=next, end=end,
        ))
        return self

    @refuses_unbound_arguments
    def child(
        self,
        name: str,
        *,
        workflow: str,
        input: OfContext | None = None,
        catch: Sequence[Catch] | Catch | None = (),
        next: str | None = None,
        end: bool = False,
    ) -> Self:
        """Add a child step: start the registered workflow ``workflow`` as a child instance with
        ``input(ctx)`` (sync or async; default: in a map item the item, elsewhere the workflow
        input) and wait for it to end; its output is the
        step's output, and a child that does not complete fails the step
        (``ChildWorkflowError``, catchable). When this workflow compensates, a completed child
        is compensated as a unit at this step's place."""
        self._steps.append(ChildStep(name=name, workflow=workflow, input=input, catch=catchers(name, catch),
                                     next=next, end=end))
        return self

    @refuses_unbound_arguments
    def pass_(
        self,
        name: str,
        *,
        transform: OfContext | None = None,
        result: Any = _UNSET,
        next: str | None = None,
        end: bool = False,
    ) -> Self:
        """Add a pass step: ``transform(ctx)``, a fixed ``result``, or the previous output."""
        has_result = result is not _UNSET
        self._steps.append(
            PassStep(
                name=name, transform=transform, result=result if has_result else None,
                has_result=has_result, next=next, end=end,
            )
        )
        return self

    @refuses_unbound_arguments
    def succeed(self, name: str, *, output: OfContext | StorableValue = _UNSET) -> Self:
        """Add a step that ends its lane successfully: with ``output(ctx)`` if ``output`` is
        callable, else ``output``, else (not given) the lane's last output."""
        has_output = output is not _UNSET
        self._steps.append(SucceedStep(name=name, output=output if has_output else None, has_output=has_output))
        return self

    @refuses_unbound_arguments
    def fail(self, name: str, *, error: str, cause: str | OfContext = "") -> Self:
        """Add a step that fails its lane with the error name ``error`` and ``cause`` (text, or
        ``cause(ctx)``): the workflow fails and compensates, unless a catch on an enclosing
        parallel step routes the failure."""
        self._steps.append(FailStep(name=name, error=error, cause=cause))
        return self

    @refuses_unbound_arguments
    def wait(
        self, name: str, *, seconds: Seconds | Callable[[WorkflowContext], Seconds] | None = None,
        until: float | datetime | Callable[[WorkflowContext], float | datetime] | None = None, next: str | None = None,
        end: bool = False,
    ) -> Self:
        """Add a durable timer: wait ``seconds`` (a number, a ``timedelta``, or a callable of
        ctx giving one) or until ``until`` (Unix seconds, an aware ``datetime``, or a callable
        of ctx giving either). The due time is stored when the step starts; the lane's last
        output passes on."""
        if isinstance(until, datetime):
            moment = unix_seconds(until)
            if moment is None:
                raise DefinitionError(f"{self._owner()}, step {name!r}: until must be an aware datetime (with a tzinfo"
                                      " that gives a UTC offset)")
            until = moment
        self._steps.append(WaitStep(name=name, seconds=as_seconds(seconds), until=until, next=next, end=end))
        return self

    @refuses_unbound_arguments
    def receive(
        self, name: str, *, signal: str, timeout: Seconds | None = None, catch: Sequence[Catch] | Catch | None = (),
        next: str | None = None, end: bool = False,
    ) -> Self:
        """Add a step that waits for the next signal named ``signal`` (``engine.signal``), first
        in first out; its payload is the step's output. ``timeout`` fails the step with
        ``SignalTimeoutError`` (catchable) when none arrives in time."""
        self._steps.append(ReceiveStep(
            name=name, signal=signal, timeout=timeout, catch=catchers(name, catch), next=next, end=end))
        return self

    @refuses_unbound_arguments
    def end(self, name: str) -> Self:
        """Add a pass step that ends the lane (shorthand for ``pass_(name, end=True)``)."""
        return self.pass_(name, end=True)

    def _owner(self) -> str:
        raise NotImplementedError

    def _resolved(self, default_retry: Retry | None) -> tuple[tuple[Step, ...], dict[str, int]]:
        """Validate this lane, then fill in fall-through ``next`` and the default retry."""
        check_lane(self._owner(), self._steps)
        return _resolve(self._steps, default_retry)


def _resolve(steps: Sequence[Step], default_retry: Retry | None) -> tuple[tuple[Step, ...], dict[str, int]]:
    out: list[Step] = []
    for i, s in enumerate(steps):
        changes: dict[str, Any] = {}
        if (isinstance(s, (TaskStep, PassStep, ParallelStep, MapStep, ChildStep, WaitStep, ReceiveStep)) and s.next is None
                and not s.end and i + 1 < len(steps)):
            changes["next"] = steps[i + 1].name
        if isinstance(s, TaskStep) and s.retry is None and default_retry is not None:
            changes["retry"] = default_retry
        if isinstance(s, ParallelStep) and default_retry is not None:
            changes["branches"] = tuple(_with_default_retry(b, default_retry) for b in s.branches)
        if isinstance(s, MapStep) and default_retry is not None:
            changes["branch"] = _with_default_retry(s.branch, default_retry)
        out.append(attrs.evolve(s, **changes) if changes else s)
    return tuple(out), {s.name: i for i, s in enumerate(out)}


def _with_default_retry(branch: Branch, default_retry: Retry) -> Branch:
    steps, index = _resolve(branch.steps, default_retry)
    return attrs.evolve(branch, steps=steps, index=index)


class BranchBuilder(_LaneBuilder):
    """Builds a :class:`Branch` for a parallel step."""

    @refuses_unbound_arguments  # (its own: messages name BranchBuilder, not the base class)
    def __init__(self, name: str) -> None:
        super().__init__(name)

    def _owner(self) -> str:
        return f"branch {self._name!r}"

    @refuses_unbound_arguments
    def build(self) -> Branch:
        steps, index = self._resolved(None)
        return Branch(name=self._name, steps=steps, index=index)


class WorkflowBuilder(_LaneBuilder):
    """Builds a validated, frozen :class:`WorkflowDefinition`."""

    @refuses_unbound_arguments
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._data: dict[str, Any] = {}
        self._transactional = False
        self._timeout: float | None = None
        self._compensation_timeout: float | None = DEFAULT_COMPENSATION_TIMEOUT
        self._default_retry: Retry | None = None
        self._hooks = Hooks()

    def _owner(self) -> str:
        return f"workflow {self._name!r}"

    @refuses_unbound_arguments
    def continue_as_new(self, name: str, *, input: OfContext | StorableValue = _UNSET) -> Self:
        """Add a step that ends this run of the instance and starts its next one, from the first
        step, with ``input(ctx)`` if ``input`` is callable, else ``input``, else (not given) the
        main line's last output as its input. The instance keeps its id, its pending signals and
        its workflow timeout; its history, shared data and compensations start afresh (what ran
        before is never compensated), so a loop that runs for ever (a monthly renewal) stores
        and reads no more as it ages. On the main line only: a branch's builder has no such step."""
        has_input = input is not _UNSET
        self._steps.append(ContinueAsNewStep(name=name, input=input if has_input else None, has_input=has_input))
        return self

    @refuses_unbound_arguments
    def with_data(self, data: Mapping[str, Any]) -> Self:
        """Initial shared data (``ctx.data``)."""
        if not isinstance(data, Mapping):
            raise DefinitionError(f"{self._owner()}: with_data takes a mapping, got {data!r}")
        self._data = dict(data)
        return self

    @refuses_unbound_arguments
    def transactional(self, enabled: bool = True) -> Self:
        """Run the workflow's driver calls inside one ``driver.transaction()``."""
        if not isinstance(enabled, bool):
            raise DefinitionError(f"{self._owner()}: transactional takes True or False, got {enabled!r}")
        self._transactional = enabled
        return self

    @refuses_unbound_arguments
    def with_timeout(self, seconds: Seconds) -> Self:
        """Bound the whole run; an instance past it ends ``timed_out`` and is compensated."""
        value = as_seconds(seconds)
        check_timeout(self._owner(), value)
        self._timeout = float(value)
        return self

    timeout = with_timeout

    @refuses_unbound_arguments
    def with_compensation_timeout(self, seconds: Seconds | None) -> Self:
        """Bound each compensation, all its attempts together (default 300 s; ``None``:
        unbounded). One that overruns is recorded in ``compensation_errors`` as a
        ``CompensationTimeoutError`` and the others still run, so a hanging compensation can
        never keep an instance (or a cancelled ``execute_workflow`` caller) waiting forever."""
        value = None if seconds is None else as_seconds(seconds)
        if value is not None:
            check_timeout(f"{self._owner()} compensation", value)
            value = float(value)
        self._compensation_timeout = value
        return self

    @refuses_unbound_arguments
    def default_retry(self, retry: Retry) -> Self:
        """The retry policy of every task that sets none of its own, branches included."""
        if not isinstance(retry, Retry):
            raise DefinitionError(f"{self._owner()}: default_retry must be a trioflow.Retry, got {retry!r}")
        self._default_retry = retry
        return self

    @refuses_unbound_arguments
    def with_hooks(self, **hooks: Unpack[HookFunctions]) -> Self:
        """Lifecycle hooks: on_start, on_step_complete, on_step_failed, on_compensate,
        on_complete, on_failed (see :class:`HookFunctions` for what each is called with)."""
        return self._with_hooks(**hooks)

    def _with_hooks(self, **hooks: Callable[..., Any] | None) -> Self:
        """:meth:`with_hooks`, taking any name: an unknown one is refused with
        ``DefinitionError`` (a dict of hooks passed on with ``**`` is checked as it runs)."""
        known = [f.name for f in attrs.fields(Hooks)]
        unknown = sorted(set(hooks) - set(known))
        if unknown:
            raise DefinitionError(f"{self._owner()}: unknown hook {', '.join(unknown)}; hooks are {', '.join(known)}")
        for name, hook in hooks.items():
            if hook is not None and not callable(hook):
                raise DefinitionError(f"{self._owner()}: hook {name} must be a function, got {hook!r}")
            kind = generator_kind(hook)
            if kind is not None:
                # Called, it would hand back a generator that nothing runs: the hook would
                # silently never do anything.
                raise DefinitionError(f"{self._owner()}: hook {name} {hook!r} is {kind} (it yields); a hook is a"
                                      " function or an async def")
            check_arguments(self._owner(), name, hook, HOOK_ARGUMENTS[name])
        self._hooks = attrs.evolve(self._hooks, **hooks)
        return self

    @refuses_unbound_arguments
    def build(self) -> WorkflowDefinition:
        if not valid_text(self._name):  # (a branch's is checked where its step is)
            raise DefinitionError(
                f"workflow name {self._name!r} is not valid text (it holds a lone surrogate): it could not be stored")
        steps, index = self._resolved(self._default_retry)
        check_unique_names(self._owner(), steps)
        lookup: dict[str, tuple[Step, str]] = {}
        index_steps(lookup, "", steps)
        if self._transactional:
            _check_transactional(self._owner(), lookup)
        _check_continues(self._owner(), lookup)
        return WorkflowDefinition(
            name=self._name, steps=steps, index=index, lookup=lookup, data=dict(self._data),
            transactional=self._transactional, timeout=self._timeout,
            compensation_timeout=self._compensation_timeout, hooks=self._hooks,
            fingerprint=_fingerprint(steps),
            job_names=frozenset(
                ref for s, _ in lookup.values() if isinstance(s, TaskStep)
                for ref in (s.run, s.compensate) if isinstance(ref, str)
            ),
        )


def _check_transactional(owner: str, lookup: Mapping[str, tuple[Step, str]]) -> None:
    """A transactional workflow runs its forward part in one driver transaction, open from its
    first step to its end, while every other user of the driver waits. A child runs as an
    instance of its own, in a task of its own, and cannot take part in it: its rows would
    outlive a rollback, and its first driver write would wait for the transaction to end, which
    waits for the child. A wait or a receive would hold the transaction for as long as it
    waits (a person's approval: days), and would not be durable either: the run's checkpoints
    are written when it commits, and a crash runs it again from its start."""
    for step, _ in lookup.values():
        if isinstance(step, ChildStep):
            raise DefinitionError(
                f"{owner}, step {step.name!r}: a transactional workflow cannot start child workflows (a child"
                " runs outside its driver transaction, and a child that writes through the driver would wait"
                " for that transaction for ever); make the child's work steps of this workflow, or drop"
                " transactional()")
        if isinstance(step, ContinueAsNewStep):
            raise DefinitionError(
                f"{owner}, step {step.name!r}: a transactional workflow cannot continue as new (its whole forward"
                " run is one driver transaction, and its runs' records in the driver are named by step execution);"
                " start the next run as a new instance, or drop transactional()")
        if isinstance(step, (WaitStep, ReceiveStep)):
            raise DefinitionError(
                f"{owner}, step {step.name!r}: a transactional workflow cannot have {step.kind} steps (its driver transaction"
                " would stay open, and every other user of the driver wait, for as long as it waits); wait in a"
                " workflow that starts this one after it, or drop transactional() (a short pause can be a"
                " trio.sleep in a step)")


def _check_continues(owner: str, lookup: Mapping[str, tuple[Step, str]]) -> None:
    """A run that records in the driver's run ledger (a transactional one, one with entity
    steps) names its records by step execution, whose counters start again in the next run
    of an instance that continues as new: that run would take the first one's records for its
    own, and skip work it never did."""
    continuing = next((step for step, _ in lookup.values() if isinstance(step, ContinueAsNewStep)), None)
    if continuing is None:
        return
    for step, _ in lookup.values():
        if isinstance(step, TaskStep) and step.entity is not None:
            raise DefinitionError(
                f"{owner}, step {continuing.name!r}: a workflow with entity steps ({step.name!r}) cannot continue as"
                " new (their records in the driver are named by step execution, counted afresh in each run); start"
                " the entity work as a child workflow")


def index_steps(lookup: dict[str, tuple[Step, str]], lane: str, steps: Iterable[Step]) -> None:
    for s in steps:
        lookup[s.name] = (s, lane)
        if isinstance(s, ParallelStep):
            for b in s.branches:
                index_steps(lookup, branch_lane(s.name, b.name), b.steps)
        elif isinstance(s, MapStep):
            index_steps(lookup, item_lanes(s.name), s.branch.steps)


def _fingerprint(steps: Iterable[Step]) -> str:
    """A short hash of the definition's shape (names, kinds, flow), not of its callables.
    Computed before the definition's checks run: a name that is not valid text must reach
    them, which name it, rather than fail its encoding here."""
    digest = hashlib.sha256()

    def feed(lane: Iterable[Step]) -> None:
        for s in lane:
            digest.update(f"{s.kind}:{s.name}>{s.next}|".encode(errors="surrogatepass"))
            if isinstance(s, CATCHING) and s.catch:
                digest.update(repr([c.next for c in s.catch]).encode())
            if isinstance(s, ChoiceStep):
                digest.update(repr([c.next for c in s.choices] + [s.default]).encode())
            if isinstance(s, FANNING_OUT):
                for b in s.branches if isinstance(s, ParallelStep) else (s.branch,):
                    digest.update(f"[{b.name}".encode(errors="surrogatepass"))
                    feed(b.steps)
                    digest.update(b"]")

    feed(steps)
    return digest.hexdigest()[:16]


@refuses_unbound_arguments
def branch(name: str) -> BranchBuilder:
    """Start a branch for a parallel step, or the branch each item of a map step runs."""
    return BranchBuilder(name)


class _WorkflowFactory:
    """``workflow(name)`` starts a builder; ``workflow.branch(name)`` starts a branch."""

    branch = staticmethod(branch)

    @refuses_unbound_arguments(called="workflow")
    def __call__(self, name: str) -> WorkflowBuilder:
        return WorkflowBuilder(name)


workflow = _WorkflowFactory()
