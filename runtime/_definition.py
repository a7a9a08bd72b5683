"""Frozen values that say what a workflow is. Built by :mod:`trioflow._builder`, never mutated.

Implicit flow is resolved at build time: every step that does not end its lane carries the name
of the step that follows it in ``next``, so the runtime never has to work out fall-through.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, Union

import attrs

from ._callables import is_async
from ._durations import seconds
from ._engine_arguments import refuses_unbound_arguments
from ._errors import DefinitionError, InvalidArgumentError, safe_repr
from ._lanes import holds_items, valid_text
from ._matching import ErrorMatcher, matcher_tuple
from ._retry import Retry

if TYPE_CHECKING:
    import decimal
    import uuid

    from ._context import WorkflowContext

#: A step callable: ``async def`` or plain ``def`` (plain ones run in a worker thread).
StepFn = Callable[..., Any]
#: What the builder calls with a step's context (a saga step's ``execute``, a condition, a
#: mapper, a cause, a computed duration): typed so that what user code reads off ``ctx`` is
#: checked where it is written.
OfContext: TypeAlias = Callable[["WorkflowContext"], Any]
#: A value a definition gives for a step to store as it is (a succeed step's output, the next
#: run's input): what storage keeps (docs/errors.md lists it). (Not ``object``: beside
#: :data:`OfContext` in a builder method's union, a checker would read a lambda given there as
#: untyped.)
if TYPE_CHECKING:
    StorableValue: TypeAlias = Union[None, bool, int, float, str, bytes, Sequence[Any], Mapping[Any, Any],
                                     datetime.datetime, datetime.date, datetime.time, datetime.timedelta,
                                     decimal.Decimal, uuid.UUID]
else:
    # (At run time, for ``typing.get_type_hints``, without the modules ``import trioflow``
    # does not load: a workflow that never stores a Decimal or a UUID need not pay for them.)
    StorableValue = Union[None, bool, int, float, str, bytes, Sequence[Any], Mapping[Any, Any], datetime.datetime,
                          datetime.date, datetime.time, datetime.timedelta]
#: A saga step's compensation: ``compensate(ctx, result)``.
SagaCompensation: TypeAlias = Callable[["WorkflowContext", Any], Any]
#: A task's job, ``job(data)``, and its compensation, ``compensate(output)``.
JobFn = Callable[[Any], Any]
OnError = Literal["fail-fast", "wait-all"]
StepKind = Literal[
    "task", "choice", "parallel", "pass", "succeed", "fail", "wait", "receive", "map", "child", "continue_as_new"]
#: Seconds a compensation may take, all attempts together, unless the workflow says otherwise.
DEFAULT_COMPENSATION_TIMEOUT = 300.0


def _callable_is_async(fn: object) -> bool:
    # A registered job name is looked up (with its own flag) in the job registry at run time.
    return fn is not None and not isinstance(fn, str) and is_async(fn)


def _errors_tuple(value: ErrorMatcher | Sequence[ErrorMatcher]) -> tuple[ErrorMatcher, ...]:
    items = matcher_tuple(value, "Catch.errors")
    if not items:
        raise DefinitionError("Catch.errors must name at least one error (trioflow.ALL catches them all)")
    return items


def _catch_target(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise DefinitionError(f"Catch.next must be the name of a step, got {value!r}")


def _result_key(_: object, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value or not valid_text(value)):
        raise DefinitionError(
            f"Catch.result must be a key of the shared data (a non-empty string of valid text) or None, got {value!r}")


@attrs.frozen(kw_only=True)
class Catch:
    """Where a step's lane goes when the step fails for good (its retries spent) with an error
    that ``errors`` matches (exception types, error names or message fragments, predicates, or
    :data:`trioflow.ALL`; the precedence of ``Retry.retry_on``).

    The failed execution's output is ``{"error": name, "cause": message}``, which the next step
    sees as ``ctx.steps[step]`` and ``ctx.error``; ``result="key"`` also puts it in the shared
    data. A caught failure compensates nothing (Amazon States Language's ``Catch``:
    ``ErrorEquals``, ``Next``, ``ResultPath``).
    """

    errors: tuple[ErrorMatcher, ...] = attrs.field(converter=_errors_tuple)
    next: str = attrs.field(validator=_catch_target)
    result: str | None = attrs.field(default=None, validator=_result_key)


# (attrs writes its __init__: wrapped once it is there, as a written one is decorated. Users make
# their catches with it: tf.Catch(erors=...) is refused naming errors=.)
setattr(Catch, "__init__", refuses_unbound_arguments(Catch.__init__))


@attrs.frozen(kw_only=True)
class TaskStep:
    """Runs a callable with retries and a per-attempt timeout.

    ``style="saga"``: ``execute(ctx)`` / ``compensate(ctx, result)``.
    ``style="job"``: ``job(data)`` with ``data = input(ctx)``, output through ``output(result,
    ctx)``; ``compensate(output)``. ``job`` and ``compensate`` may be registered names.
    """

    name: str
    run: StepFn | str
    style: Literal["saga", "job"] = "saga"
    input: Callable[[Any], Any] | None = None
    output: Callable[[Any, Any], Any] | None = None
    compensate: StepFn | str | None = None
    retry: Retry | None = None
    #: Seconds (a ``timedelta`` is converted).
    timeout: float | None = attrs.field(default=None, converter=seconds)
    catch: tuple[Catch, ...] = ()
    next: str | None = None
    end: bool = False
    #: Set by the entity steps: the entity their driver writes go to. A rolled-back transaction
    #: has already undone those writes, so their compensation is skipped then.
    entity: str | None = None
    kind: StepKind = attrs.field(default="task", init=False)
    #: Whether ``run`` / ``compensate`` (when callables, not job names) are awaited.
    run_is_async: bool = attrs.field(
        init=False, eq=False, repr=False, default=attrs.Factory(lambda s: _callable_is_async(s.run), takes_self=True))
    compensate_is_async: bool = attrs.field(
        init=False, eq=False, repr=False,
        default=attrs.Factory(lambda s: _callable_is_async(s.compensate), takes_self=True))

    def calls(self) -> tuple[tuple[str, StepFn | str | None, tuple[str, ...]], ...]:
        """What each of its callables (or jobs named) is, it, and the arguments it is called
        with: checked against a callable at ``build()``, against a job named when both meet."""
        saga = self.style == "saga"
        return (("execute" if saga else "job", self.run, ("ctx",) if saga else ("data",)),
                ("compensate", self.compensate, ("ctx", "result") if saga else ("output",)))


@attrs.frozen(kw_only=True)
class Choice:
    """One rule of a choice step: when ``condition(ctx)`` is true, go to ``next``."""

    condition: Callable[[Any], Any]
    next: str


@attrs.frozen(kw_only=True)
class ChoiceStep:
    """Goes to the first choice whose condition holds, else ``default``."""

    name: str
    choices: tuple[Choice, ...]
    default: str | None = None
    kind: StepKind = attrs.field(default="choice", init=False)

    @property
    def next(self) -> None:
        """A choice never falls through; its targets are in ``choices`` and ``default``."""
        return None

    @property
    def end(self) -> bool:
        return False


@attrs.frozen(kw_only=True)
class PassStep:
    """Produces ``transform(ctx)``, or ``result``, or passes the previous output through."""

    name: str
    transform: Callable[[Any], Any] | None = None
    result: Any = None
    has_result: bool = False
    next: str | None = None
    end: bool = False
    kind: StepKind = attrs.field(default="pass", init=False)


@attrs.frozen(kw_only=True)
class Branch:
    """A named sequence of steps run as its own actor inside a parallel step."""

    name: str
    steps: tuple[Step, ...]
    index: Mapping[str, int] = attrs.field(eq=False, repr=False)


@attrs.frozen(kw_only=True)
class ParallelStep:
    """Runs its branches concurrently in one nursery; output ``{branch_name: branch_output}``."""

    name: str
    branches: tuple[Branch, ...]
    on_error: OnError = "fail-fast"
    catch: tuple[Catch, ...] = ()
    next: str | None = None
    end: bool = False
    kind: StepKind = attrs.field(default="parallel", init=False)


@attrs.frozen(kw_only=True)
class MapStep:
    """Runs ``branch`` once per item of ``items(ctx)`` (a list worked out when the step starts
    and stored before any item runs), each item as its own actor with ``ctx.item`` and
    ``ctx.item_index``, at most ``max_concurrency`` at once (``None``: all). The output is the
    list of the items' outputs, in item order.

    Up to ``tolerated_failures`` items (a count, or a fraction of the items such as ``0.1``) may
    fail; their slots then hold ``{"error": name, "cause": message}``. One more failure fails
    the step: at once, cancelling the running items (``on_error="fail-fast"``), or once every
    item has ended (``"wait-all"``). Amazon States Language's ``Map``.
    """

    name: str
    items: Callable[[Any], Any]
    branch: Branch
    max_concurrency: int | None = None
    on_error: OnError = "fail-fast"
    tolerated_failures: int | float = 0
    catch: tuple[Catch, ...] = ()
    next: str | None = None
    end: bool = False
    kind: StepKind = attrs.field(default="map", init=False)


@attrs.frozen(kw_only=True)
class ChildStep:
    """Starts the registered workflow ``workflow`` as a child instance with ``input(ctx)`` (no
    ``input``: in a map item the item, elsewhere the workflow input) and waits for it to end, holding no task while it waits when
    it can; the child's output is the step's output, and a child that fails, is cancelled or
    times out fails the step with :class:`ChildWorkflowError`. The child's id comes from the
    parent's id and the step execution's, so a resume never starts it twice. When the parent
    compensates, a completed child is compensated as a unit, at this step's place."""

    name: str
    workflow: str
    input: Callable[[Any], Any] | None = None
    catch: tuple[Catch, ...] = ()
    next: str | None = None
    end: bool = False
    kind: StepKind = attrs.field(default="child", init=False)


class _EndsItsLane:
    """Succeed, fail and continue-as-new steps: nothing follows them in their lane."""

    __slots__ = ()

    @property
    def next(self) -> None:
        return None

    @property
    def end(self) -> bool:
        return True


@attrs.frozen(kw_only=True)
class SucceedStep(_EndsItsLane):
    """Ends its lane successfully with ``output(ctx)``, ``output``, or (neither given) the
    lane's last output (Amazon States Language's ``Succeed``)."""

    name: str
    output: Any = None
    has_output: bool = False
    kind: StepKind = attrs.field(default="succeed", init=False)


@attrs.frozen(kw_only=True)
class FailStep(_EndsItsLane):
    """Fails its lane with the error name ``error`` and ``cause`` (text, or ``cause(ctx)``):
    the workflow fails and compensates, unless a catch on an enclosing parallel step routes it
    (Amazon States Language's ``Fail``)."""

    name: str
    error: str
    cause: str | Callable[[Any], Any] = ""
    kind: StepKind = attrs.field(default="fail", init=False)


@attrs.frozen(kw_only=True)
class ContinueAsNewStep(_EndsItsLane):
    """Ends the instance's run, and starts its next one from the first step with ``input(ctx)``,
    ``input``, or (neither given) the main line's last output as its input (Temporal's
    continue-as-new): its history is then that run's alone, so an instance that loops for ever
    stores and reads no more as it ages. Only on the main line."""

    name: str
    input: Any = None
    has_input: bool = False
    kind: StepKind = attrs.field(default="continue_as_new", init=False)


#: A due time for a timer: Unix seconds, or worked out from the context when the step starts.
When = Union[float, Callable[[Any], Any]]


@attrs.frozen(kw_only=True)
class WaitStep:
    """A durable timer: waits ``seconds`` (from when the step starts) or until ``until`` (Unix
    seconds, or an aware ``datetime`` given to the builder); either may be a callable of ctx.
    The due time is stored when the step starts, on the engine's wall clock, so a resumed
    instance waits only what is left. Passes the lane's last output on."""

    name: str
    seconds: When | None = None
    until: When | None = None
    next: str | None = None
    end: bool = False
    kind: StepKind = attrs.field(default="wait", init=False)


@attrs.frozen(kw_only=True)
class ReceiveStep:
    """Waits for the next signal named ``signal`` sent to the instance (first in, first out;
    signals sent before the step starts are kept); its payload is the step's output. With
    ``timeout`` (seconds), fails with :class:`SignalTimeoutError` when none arrives in time."""

    name: str
    signal: str
    timeout: float | None = attrs.field(default=None, converter=seconds)
    catch: tuple[Catch, ...] = ()
    next: str | None = None
    end: bool = False
    kind: StepKind = attrs.field(default="receive", init=False)


Step = Union[
    TaskStep, ChoiceStep, PassStep, ParallelStep, MapStep, ChildStep, SucceedStep, FailStep, WaitStep, ReceiveStep,
    ContinueAsNewStep]
#: The step kinds a catch can sit on (the others cannot fail, or end their lane themselves).
CATCHING = (TaskStep, ParallelStep, MapStep, ChildStep, ReceiveStep)
#: The step kinds that run lanes of their own (branches, items) inside their lane.
FANNING_OUT = (ParallelStep, MapStep)


@attrs.frozen(kw_only=True)
class Hooks:
    """Lifecycle callbacks. Sync or async; one that raises is logged and ignored."""

    on_start: Callable[..., Any] | None = None
    on_step_complete: Callable[..., Any] | None = None
    on_step_failed: Callable[..., Any] | None = None
    on_compensate: Callable[..., Any] | None = None
    on_complete: Callable[..., Any] | None = None
    on_failed: Callable[..., Any] | None = None

    def any(self) -> bool:
        """Whether at least one hook is set."""
        return any(getattr(self, f.name) is not None for f in attrs.fields(Hooks))


#: What each hook is called with (``build()`` refuses one that cannot take it: it would fail,
#: logged, at every run).
HOOK_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "on_start": ("ctx",),
    "on_step_complete": ("step_name", "output", "ctx"),
    "on_step_failed": ("step_name", "error", "ctx"),
    "on_compensate": ("step_name", "ctx"),
    "on_complete": ("result",),
    "on_failed": ("result",),
}


@attrs.frozen(kw_only=True)
class WorkflowDefinition:
    """A validated workflow: its main lane of steps and its options.

    ``lookup`` maps every step name (branches included; names are unique in a workflow, as in
    Amazon States Language) to the step and the key of the lane it lives in.
    ``fingerprint`` identifies the definition's shape; snapshots record it so a resume can tell
    when the definition changed under a running instance.
    """

    name: str
    steps: tuple[Step, ...]
    index: Mapping[str, int] = attrs.field(eq=False, repr=False)
    lookup: Mapping[str, tuple[Step, str]] = attrs.field(eq=False, repr=False)
    data: Mapping[str, Any] = attrs.field(factory=dict)
    transactional: bool = False
    timeout: float | None = None
    #: Bound on each compensation, all its attempts together (``None``: unbounded). A hanging
    #: compensation would otherwise keep its instance running forever; one that overruns is
    #: recorded as a :class:`CompensationTimeoutError` and the rest still run.
    compensation_timeout: float | None = DEFAULT_COMPENSATION_TIMEOUT
    hooks: Hooks = attrs.field(factory=Hooks)
    fingerprint: str = ""
    #: Job names the steps refer to (``job=`` and ``compensate=`` strings), branches included.
    job_names: frozenset[str] = frozenset()
    #: Whether any hook is set, worked out once: runs without hooks skip all hook work.
    has_hooks: bool = attrs.field(init=False, default=attrs.Factory(lambda self: self.hooks.any(), takes_self=True))
    #: Whether a step can wait (a timer, a signal, a child, a retry delay), worked out once:
    #: the checkpoints of runs that cannot skip working out when to wake them.
    waits: bool = attrs.field(init=False, eq=False, repr=False, default=attrs.Factory(
        lambda self: any(isinstance(s, (WaitStep, ReceiveStep, ChildStep)) or isinstance(s, TaskStep)
                         and s.retry is not None for s, _ in self.lookup.values()), takes_self=True))
    #: The names of its child steps (branches included), worked out once: ``execute_workflow``,
    #: which runs no child instance, refuses a workflow that has any, at every call.
    child_steps: tuple[str, ...] = attrs.field(init=False, eq=False, repr=False, default=attrs.Factory(
        lambda self: tuple(name for name, (s, _) in self.lookup.items() if isinstance(s, ChildStep)), takes_self=True))
    #: The signal names its receive steps take (branches included), worked out once:
    #: ``signal()`` warns of a signal that no step of the workflow can take (a misspelt name).
    signals: frozenset[str] = attrs.field(init=False, eq=False, repr=False, default=attrs.Factory(
        lambda self: frozenset(s.signal for s, _ in self.lookup.values() if isinstance(s, ReceiveStep)),
        takes_self=True))
    #: Whether its runs record in the driver's run ledger (a transactional run, an entity step),
    #: worked out once: the records of an instance that ended are then deleted (see
    #: ``trioflow.actors._ledger``).
    records_runs: bool = attrs.field(init=False, eq=False, repr=False, default=attrs.Factory(
        lambda self: self.transactional or any(isinstance(s, TaskStep) and s.entity is not None
                                               for s, _ in self.lookup.values()), takes_self=True))
    #: Whether a child's completion may fail a fail-fast fan-out, worked out once: only where
    #: one holds, at any depth, a wait-all fan-out (ended by it, that fails) or a fail step (the
    #: child step leads to it). A fail-fast fan-out fails on a failure, never on a completion.
    completions_may_fail: bool = attrs.field(init=False, eq=False, repr=False, default=attrs.Factory(
        lambda self: _completion_may_fail(self.steps, False), takes_self=True))
    #: Where a completed execution of each step of a map's branch that goes one way (not a
    #: choice) moves its item's lane (``None``: the item ends), worked out once: a header leaves
    #: out an item lane that stands just after such an execution, and holds these instead
    #: (see ``trioflow._header_lanes``). Empty without a map.
    item_next: Mapping[str, str | None] = attrs.field(init=False, eq=False, repr=False, default=attrs.Factory(
        lambda self: _item_next(self.lookup), takes_self=True))

    def place_of(self, step_name: str) -> tuple[int, int]:
        """Where a step stands in its lane (the main line, or its branch's): its index there and
        the lane's step count, as ``ctx.step_index`` and ``ctx.total_steps`` tell its callables
        (a compensation's context too, made long after the lane ran)."""
        def find(steps: tuple[Step, ...], index: Mapping[str, int]) -> tuple[int, int] | None:
            if step_name in index:
                return index[step_name], len(steps)
            for step in steps:
                if isinstance(step, FANNING_OUT):
                    for branch in step.branches if isinstance(step, ParallelStep) else (step.branch,):
                        found = find(branch.steps, branch.index)
                        if found is not None:
                            return found
            return None

        found = find(self.steps, self.index)
        assert found is not None, f"step {step_name!r} is not in workflow {self.name!r}"
        return found

    def check_driver(self, driver: object, how_to_give_one: str) -> None:
        """Refuse to run a transactional workflow where there is no driver, or where what was
        given as one has no ``transaction()``: its forward run is one ``driver.transaction()``,
        and running it without one would not be atomic, silently. (Any object may be a
        workflow's ``ctx.driver`` otherwise: its own steps use it.)"""
        if not self.transactional:
            return
        if driver is None:
            raise DefinitionError(
                f"workflow {self.name!r} is transactional (its forward run is one driver transaction), but there is"
                f" no driver: pass one to {how_to_give_one}")
        if not callable(getattr(driver, "transaction", None)):
            raise InvalidArgumentError(
                f"workflow {self.name!r} is transactional (its forward run is one driver transaction), but the driver"
                f" given to {how_to_give_one} has no transaction(): {safe_repr(driver)} (a data driver, such as"
                " trioflow.adapters.SQLiteDriver(path), has one)")


def built(value: object, who: str) -> WorkflowDefinition:
    """``value``, a built definition, or :class:`DefinitionError` saying ``who`` needs one."""
    if not isinstance(value, WorkflowDefinition):
        raise DefinitionError(f"{who} needs a built WorkflowDefinition, got {safe_repr(value)}{unbuilt_hint(value)}")
    return value


def unbuilt_hint(value: object) -> str:
    """What to add to an error about ``value``, given where a built definition goes: a builder
    whose ``.build()`` was left out is told so."""
    if callable(getattr(value, "build", None)):
        return ": it is a builder, call its .build() (tf.workflow(name).step(...).build())"
    return ""


def _item_next(lookup: Mapping[str, tuple[Step, str]]) -> dict[str, str | None]:
    """See :attr:`WorkflowDefinition.item_next`."""
    return {name: None if step.end else step.next for name, (step, lane) in lookup.items()
            if holds_items(lane) and has_fixed_next(step)}


def has_fixed_next(step: Step) -> bool:
    """Whether a completed execution of ``step`` always moves its lane to the same place (its
    ``next``, or the lane's end): not a choice, which decides, nor a step that never completes."""
    return not isinstance(step, (ChoiceStep, FailStep, ContinueAsNewStep))


def _completion_may_fail(steps: tuple[Step, ...], in_fail_fast: bool) -> bool:
    """See :attr:`WorkflowDefinition.completions_may_fail` (``in_fail_fast``: ``steps`` run
    inside a fail-fast parallel or map step)."""
    for step in steps:
        if in_fail_fast and (isinstance(step, FailStep)
                             or isinstance(step, (ParallelStep, MapStep)) and step.on_error == "wait-all"):
            return True
        if isinstance(step, (ParallelStep, MapStep)):
            branches = step.branches if isinstance(step, ParallelStep) else (step.branch,)
            inner = in_fail_fast or step.on_error == "fail-fast"
            if any(_completion_may_fail(b.steps, inner) for b in branches):
                return True
    return False
