"""Hypothesis strategies: valid workflow definitions with scripted jobs, and job behaviours.

``workflows()`` draws a :class:`GeneratedWorkflow`: a definition (sagas and task chains, choice
diamonds on generated flags, nested parallels with fail-fast and wait-all, retries and step
timeouts; with ``catches=True`` also catchers, succeed and fail steps; with ``maps=True`` also
map steps over generated items, and with ``nested=True`` fan-outs in their items; with
``waits=True`` durable timers and receive steps; with ``continues=True`` runs before the last
that continue as new), the scripted jobs its steps name, an input,
the signals to send it, and :meth:`GeneratedWorkflow.expected_status`, the status the faults it
injected must lead to.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Union

import attrs
import trio
try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - exercised in a venv without hypothesis
    raise ImportError(
        "trioflow.testing.strategies needs hypothesis; install trioflow's testing extra:"
        " pip install 'trioflow[testing]'"
    ) from exc

from trioflow._builder import BranchBuilder, WorkflowBuilder, branch, when, workflow
from trioflow._current import current_step
from trioflow._engine_arguments import check_switch
from trioflow._definition import (
    Branch,
    Catch,
    ChoiceStep,
    FailStep,
    MapStep,
    OnError,
    ParallelStep,
    ReceiveStep,
    Step,
    SucceedStep,
    TaskStep,
    WorkflowDefinition,
)
from trioflow._errors import (
    BranchError,
    InvalidArgumentError,
    ItemError,
    MapError,
    ParallelError,
    RecordedError,
    error_cause,
)
from trioflow._matching import ALL, ErrorMatcher
from trioflow._retry import NO_RETRY, Retry
from trioflow._snapshot import Status

from ._scripted import Behaviour, Hangs, Raises, Returns, ScriptedJob, Sleeps


class ScriptedFailure(Exception):
    """The error generated jobs raise."""


#: Sleep lengths and step timeouts are disjoint, so "sleep == timeout" races never arise.
SLEEPS = (0.5, 2.0, 10.0)
TIMEOUTS = (1.0, 5.0)

#: The error name generated ``fail`` steps give.
DECLINED = "Declined"


def is_scripted(error: BaseException) -> bool:
    """A predicate matcher: the error is a :class:`ScriptedFailure`."""
    return isinstance(error, ScriptedFailure)


#: What a generated catcher that is meant to match may list. Each matches a modelled error
#: exactly as :func:`_matches` says; no generated step name, branch name or cause contains one of
#: the strings, so a string matches only as an error's name (or, in a wait-all parallel step's
#: message, as the name of one of its branches' errors).
CATCH_MATCHERS: tuple[ErrorMatcher, ...] = (
    ScriptedFailure, "ScriptedFailure", is_scripted, ALL, "StepTimeoutError", DECLINED, "ParallelError",
)
#: Matchers no generated failure matches (a catcher put before the one that may match).
DECOY_MATCHERS: tuple[ErrorMatcher, ...] = (KeyError, "NoSuchError")
#: What a generated map step's catcher may list besides :data:`CATCH_MATCHERS` (no predicate:
#: after a restart an item's failure is known only as recorded).
MAP_MATCHERS: tuple[ErrorMatcher, ...] = ("MapError",)

#: How long a generated wait step waits: in memory, and out of it (a day).
WAITS = (0.5, 3.0, 86_400.0)
#: A generated receive step's timeout: apart from every sleep, step timeout and wait above, and
#: from the others' sums, so that a signal's arrival never races it.
RECEIVE_TIMEOUTS = (7.0, 3_600.0)
#: What a generated receive step's catcher may list besides :data:`CATCH_MATCHERS`.
RECEIVE_MATCHERS: tuple[ErrorMatcher, ...] = ("SignalTimeoutError",)

#: How long a generated item sleeps in a step: items end in an order of their own, with ties.
ITEM_SLEEPS = (0.0, 0.5, 1.0, 3.0)
#: How many attempts of a generated item's step fail (9: every attempt; at most 4 are made).
ITEM_FAILURES = (0, 0, 0, 1, 9)


def item_cause(index: int, step: str) -> str:
    """The message of a generated item's failure at ``step`` (it names no matcher)."""
    return f"item {index} failed at {step}"


@attrs.frozen(kw_only=True)
class ItemCall:
    """One call of an :class:`ItemScript`: the item, the execution and attempt it was for, and
    whether it was the compensation."""

    index: int
    execution_id: str
    attempt: int
    compensating: bool


class ItemScript:
    """The job of a task step in a generated map's branch, or in a parallel branch or an inner
    map within it (``run`` as its execute, ``undo`` as its compensation).

    What it does is in the item it runs for, not in a count of its calls: ``ctx.item["plan"]
    [step]`` is ``[seconds, failures]``: sleep that long, then fail (with a
    :class:`ScriptedFailure`) if the attempt is one of the first ``failures``, else return
    ``[step, item index]``. Items run concurrently and end in any order, so a script played
    by call number would make whichever item called first fail; keyed by item and attempt, an
    attempt run again after a crash does what it did before, as the crash explorer needs.
    Every call is recorded in :attr:`calls`.
    """

    def __init__(self, step: str) -> None:
        self.step = step
        self.calls: list[ItemCall] = []

    def reset(self) -> None:
        """Forget every call."""
        self.calls = []

    async def run(self, ctx: Any) -> list[Any]:
        index, info = ctx.item_index, current_step()
        self.calls.append(ItemCall(index=index, execution_id=info.execution_id, attempt=info.attempt,
                                   compensating=False))
        seconds, failures = ctx.item["plan"][self.step]
        if seconds:
            await trio.sleep(seconds)
        if info.attempt <= failures:
            raise ScriptedFailure(item_cause(index, self.step))
        return [self.step, index]

    async def undo(self, ctx: Any, result: Any) -> None:
        info = current_step()
        self.calls.append(ItemCall(index=ctx.item_index, execution_id=info.execution_id, attempt=info.attempt,
                                   compensating=True))

    def __repr__(self) -> str:
        return f"ItemScript({self.step!r})"


def tolerated(step: MapStep, count: int) -> int:
    """How many of ``count`` items ``step`` tolerates, worked out apart from the engine: a
    fraction ``p`` tolerates the most failures ``f`` with ``f / count <= p`` (``0.29`` of 100
    items is 29, as written)."""
    allowed = step.tolerated_failures
    if isinstance(allowed, float):
        return max(f for f in range(count + 1) if count == 0 or f / count <= allowed)
    return allowed


def job_behaviours(*, may_hang: bool = False, timing: bool = True) -> st.SearchStrategy[tuple[Behaviour, ...]]:
    """A job's script: up to two faulty behaviours (raise n times, sleep then raise or return,
    hang if ``may_hang``), then a final return. ``timing=False``: no sleeps or hangs."""
    check_switch(may_hang, "job_behaviours(may_hang=)")
    check_switch(timing, "job_behaviours(timing=)")
    failure: st.SearchStrategy[Behaviour] = st.builds(
        Raises, error=st.just(ScriptedFailure), message=st.just("scripted"), times=st.integers(1, 3))
    value = st.integers(-5, 100) | st.text("abc", max_size=3)
    final = st.builds(Returns, value=value)
    faults = [failure]
    if timing:
        faults.append(st.builds(Sleeps, seconds=st.sampled_from(SLEEPS), then=st.one_of(
            st.builds(Returns, value=value), st.builds(Raises, error=st.just(ScriptedFailure)))))
        if may_hang:
            faults.append(st.builds(Hangs))
    return st.tuples(st.lists(st.one_of(faults), max_size=2), final).map(lambda t: (*t[0], t[1]))


def retry_policies(*, timing: bool = True) -> st.SearchStrategy[Retry]:
    """A retry policy: 1 to 4 attempts, intervals of 0.1, 1 or 3 s (0 with ``timing=False``, for
    runs on a real clock), a backoff rate of 1 or 2, and a cap no lower than the largest interval."""
    check_switch(timing, "retry_policies(timing=)")
    return st.builds(
        Retry,
        max_attempts=st.integers(1, 4),
        interval=st.sampled_from((0.1, 1.0, 3.0)) if timing else st.just(0.0),
        backoff_rate=st.sampled_from((1.0, 2.0)),
        max_interval=st.sampled_from((3.0, 30.0)),  # never below the largest interval
    )


# -- the model: which error a generated step fails with, and where a catch sends its lane ------


@attrs.frozen
class _Leaf:
    """A step's own failure: ``name`` as recorded, whether it is a :class:`ScriptedFailure`,
    and the step it comes from (failures of different steps are told apart)."""

    name: str
    scripted: bool
    origin: str
    #: What it is recorded with as its cause, where the model knows it (a map item's failure).
    cause: str | None = None


@attrs.frozen
class _Group:
    """A wait-all parallel step's failure (a ``ParallelError``): its failed branches' errors,
    in branch order; or a map step's that failed with a ``MapError``: its failed items' errors."""

    members: tuple[_Error, ...]
    name: str = "ParallelError"
    #: As :attr:`_Leaf.cause`.
    cause: str | None = None


_Error = Union[_Leaf, _Group]


class UndecidedCatchError(Exception):
    """The model cannot tell where a catch sends a lane: in a fail-fast parallel step whose
    branches fail differently, the first failure is the scheduler's choice."""


def _names(error: _Error) -> frozenset[str]:
    """The error names a failure's message holds (a wait-all step names every branch error)."""
    if isinstance(error, _Leaf):
        return frozenset({error.name})
    return frozenset({error.name}).union(*(_names(m) for m in error.members))


def _matches(matcher: ErrorMatcher, error: _Error) -> bool:
    """Whether ``matcher`` (one of :data:`CATCH_MATCHERS` or :data:`DECOY_MATCHERS`) matches
    ``error`` (for a fail-fast parallel step: its first failed branch's own error)."""
    if matcher is ALL:
        return True
    if matcher is ScriptedFailure or matcher is is_scripted:
        return isinstance(error, _Leaf) and error.scripted
    if isinstance(matcher, str):
        return matcher in _names(error)
    return False


def _first_catcher(catch: Sequence[Catch], error: _Error) -> int | None:
    for i, catcher in enumerate(catch):
        if any(_matches(m, error) for m in catcher.errors):
            return i
    return None


class _Model:
    """Predicts a generated lane from its scripts and flags (see :meth:`lane`)."""

    def __init__(self, jobs: dict[str, ScriptedJob], flags: Sequence[bool],
                 items: Mapping[str, Sequence[Any]] | None = None, sent: Collection[str] = ()) -> None:
        self.jobs = jobs
        self.flags = flags
        self.items = items if items is not None else {}
        #: The signal names sent to the instance (each taken by one receive step).
        self.sent = sent

    def task_error(self, step: TaskStep) -> _Error | None:
        """``None`` if the task's script succeeds within its retry policy, else the error of
        its last attempt."""
        assert isinstance(step.run, str)
        job = self.jobs[step.run]
        error: _Error | None = None
        for attempt in range(1, (step.retry or NO_RETRY).max_attempts + 1):
            error = _attempt_error(job.behaviour(attempt), step)
            if error is None:
                return None
        return error

    def catcher(self, catch: Sequence[Catch], errors: frozenset[_Error]) -> Catch | None:
        """The catcher that routes a failure with one of ``errors`` (``None``: it propagates).
        Raises :class:`UndecidedCatchError` unless that is the same for each of them, and, if
        it is caught, there is only one (the caught error becomes an output)."""
        chosen = {_first_catcher(catch, e) for e in errors}
        if len(chosen) > 1 or (chosen != {None} and len(errors) > 1):
            raise UndecidedCatchError(f"errors {sorted(map(repr, errors))} are routed differently by {catch!r}")
        (index,) = chosen
        return None if index is None else catch[index]

    def lane(self, steps: tuple[Step, ...], caught: list[str] | None = None) -> frozenset[_Error]:
        """The errors the lane may fail with (empty: it ends well), following the flags and the
        catches; the names of the steps whose failures are caught go into ``caught``."""
        by_name = {s.name: s for s in steps}
        name: str | None = steps[0].name
        while name is not None:
            step = by_name[name]
            errors: frozenset[_Error] = frozenset()
            if isinstance(step, TaskStep):
                error = self.task_error(step)
                errors = frozenset() if error is None else frozenset({error})
            elif isinstance(step, ParallelStep):
                errors = self.parallel_errors(step)
            elif isinstance(step, MapStep):
                errors = self.map_errors(step)
            elif isinstance(step, ReceiveStep) and step.signal not in self.sent:
                errors = frozenset({_Leaf(name="SignalTimeoutError", scripted=False, origin=step.name)})
            elif isinstance(step, FailStep):
                return frozenset({_Leaf(name=step.error, scripted=False, origin=step.name)})
            elif isinstance(step, SucceedStep):
                return frozenset()
            if errors:
                assert isinstance(step, (TaskStep, ParallelStep, MapStep, ReceiveStep))
                catcher = self.catcher(step.catch, errors)
                if catcher is None:
                    return errors
                if caught is not None:
                    caught.append(step.name)
                name = catcher.next
            elif isinstance(step, ChoiceStep) and (step.name.startswith("again-") or step.name == "runs-left"):
                # A loop's body always succeeds: only where it ends matters. (So do the runs
                # before the last, which only tick and continue: the model is the last run's.)
                name = step.default
            elif isinstance(step, ChoiceStep):
                flag = self.flags[int(step.name.split("-")[1])]
                name = step.choices[0].next if flag else step.default
            else:
                name = None if step.end else step.next
        return frozenset()

    def item_errors(self, steps: tuple[Step, ...], item: Any, index: int) -> frozenset[_Error]:
        """What generated item ``index`` may fail with running ``steps`` (a map's branch, or a
        parallel branch in it; empty: it gets through): the errors of the first of them that
        fails for good (a task whose every attempt fails, a fan-out that fails)."""
        for step in steps:
            if isinstance(step, TaskStep):
                if item["plan"][step.name][1] >= (step.retry or NO_RETRY).max_attempts:
                    return frozenset({_Leaf(name=ScriptedFailure.__name__, scripted=True, origin=step.name,
                                            cause=item_cause(index, step.name))})
                continue
            errors = (self._parallel_in_item(step, item, index) if isinstance(step, ParallelStep)
                      else self.map_errors(step, item["inner"][step.name]) if isinstance(step, MapStep)
                      else frozenset())
            if errors:
                return errors
        return frozenset()

    def _parallel_in_item(self, step: ParallelStep, item: Any, index: int) -> frozenset[_Error]:
        """As :meth:`branch_errors`, for a parallel step in item ``index`` (its branches' task
        steps are the item's scripts)."""
        failing = [(b.name, errors) for b in step.branches if (errors := self.item_errors(b.steps, item, index))]
        if not failing:
            return frozenset()
        if step.on_error == "fail-fast":
            return frozenset().union(*(errors for _, errors in failing))
        return frozenset(
            _Group(members=combo, cause=error_cause(ParallelError(step.name, [
                BranchError(name, e.origin if isinstance(e, _Leaf) else step.name, _recorded(e))
                for (name, _), e in zip(failing, combo)])))
            for combo in itertools.product(*(errors for _, errors in failing)))

    def map_errors(self, step: MapStep, items: Sequence[Any] | None = None) -> frozenset[_Error]:
        """What a map step may fail with (over ``items``; by default, its generated items in
        the workflow's input): nothing while no more items fail than it tolerates; fail-fast
        tolerating none, the error of whichever failing item fails first; else one
        ``MapError`` (which names its items' errors)."""
        items = self.items[step.name] if items is None else items
        failing = [(i, errors) for i, item in enumerate(items)
                   if (errors := self.item_errors(step.branch.steps, item, i))]
        allowed = tolerated(step, len(items))
        if len(failing) <= allowed:
            return frozenset()
        if step.on_error == "fail-fast" and allowed == 0:
            return frozenset().union(*(errors for _, errors in failing))
        return frozenset(
            _Group(members=combo, name="MapError", cause=error_cause(MapError(step.name, [
                ItemError(step.name, i, e.origin if isinstance(e, _Leaf) else step.name, _recorded(e))
                for (i, _), e in zip(failing, combo)], len(items), allowed)))
            for combo in itertools.product(*(errors for _, errors in failing)))

    def item_output(self, steps: tuple[Step, ...], item: Any, index: int) -> Any:
        """The output of generated item ``index`` that gets through ``steps``: that of the last
        of them (a task's ``[step, index]``, a parallel step's by branch, a map's by item)."""
        last = steps[-1]
        if isinstance(last, ParallelStep):
            return {b.name: self.item_output(b.steps, item, index) for b in last.branches}
        if isinstance(last, MapStep):
            return self.map_output(last, item["inner"][last.name])
        return [last.name, index]

    def map_output(self, step: MapStep, items: Sequence[Any]) -> list[Any] | None:
        """A map step's output over ``items`` (``None``: it fails): item by item, in item
        order, its branch's output, or ``{"error": ..., "cause": ...}`` for a failure it
        tolerates."""
        out: list[Any] = []
        for index, item in enumerate(items):
            errors = self.item_errors(step.branch.steps, item, index)
            if not errors:
                out.append(self.item_output(step.branch.steps, item, index))
                continue
            (error,) = errors  # (a failed item's error is one: see ``workflows(nested=True)``)
            out.append({"error": error.name, "cause": error.cause})
        failed = sum(isinstance(o, dict) and set(o) == {"error", "cause"} for o in out)
        return out if failed <= tolerated(step, len(items)) else None

    def parallel_errors(self, step: ParallelStep) -> frozenset[_Error]:
        return self.branch_errors(step.branches, step.on_error)

    def branch_errors(self, branches: Sequence[Branch], on_error: OnError) -> frozenset[_Error]:
        """What a parallel step may fail with: fail-fast, the error of whichever failing branch
        fails first; wait-all, one group of all failing branches' errors."""
        failing = [e for e in (self.lane(b.steps) for b in branches) if e]
        if not failing:
            return frozenset()
        if on_error == "fail-fast":
            return frozenset().union(*failing)
        return frozenset(_Group(members=combo) for combo in itertools.product(*failing))


def _recorded(error: _Error) -> BaseException:
    """An exception named and described as ``error`` is recorded (for the message of a group
    holding it)."""
    return RecordedError(f"{error.name}: {error.cause}", error.name, error.cause)


def _attempt_error(b: Behaviour, step: TaskStep) -> _Error | None:
    timeout = _Leaf(name="StepTimeoutError", scripted=False, origin=step.name)
    if isinstance(b, Hangs):
        return timeout  # only generated with a timeout
    if isinstance(b, Sleeps):
        if step.timeout is not None and b.seconds > step.timeout:
            return timeout
        b = b.then
    if isinstance(b, Raises):
        return _Leaf(name=type(b.exception()).__name__, scripted=isinstance(b.exception(), ScriptedFailure),
                     origin=step.name)
    return None


@attrs.frozen(kw_only=True)
class GeneratedWorkflow:
    """A generated definition, the jobs it names (register them all), and its input."""

    definition: WorkflowDefinition
    jobs: dict[str, ScriptedJob]
    input: dict[str, Any]
    #: The jobs of the task steps in map branches, by step (``maps=True``): in the definition,
    #: not registered by name.
    item_scripts: dict[str, ItemScript] = attrs.field(factory=dict)
    #: ``(name, payload)`` pairs to send the instance once it has started, in order
    #: (``waits=True``; ``explore_crashes(..., signals=gen.signals)``): a receive step whose
    #: signal is not among them times out.
    signals: tuple[tuple[str, Any], ...] = ()

    def reset(self) -> None:
        """Start every job's script over (before running the workflow again)."""
        for job in self.jobs.values():
            job.reset()
        for script in self.item_scripts.values():
            script.reset()

    def _model(self) -> _Model:
        return _Model(self.jobs, self.input["flags"], self.input.get("items"), {name for name, _ in self.signals})

    def expected_map_output(self, name: str) -> list[Any] | None:
        """The output map step ``name`` gives when it runs (``None``: it fails): item by item,
        in item order, its branch's output (its last step's: a task's ``[step, index]``, with
        ``nested=True`` a parallel step's by branch or an inner map's list) or, for a failure it
        tolerates, ``{"error": ..., "cause": ...}`` (``ScriptedFailure``; with ``nested=True``
        also a wait-all parallel step's ``ParallelError`` or an inner map's ``MapError``).
        Whether the run reaches the step at all (a step before it may fail for good) is not
        asked here: look at its record. Only for the maps of ``input["items"]``: a map in a
        map's branch is refused, its output being part of its items'."""
        found = self.definition.lookup.get(name)
        if found is None:
            raise InvalidArgumentError(f"workflow {self.definition.name!r} has no step {name!r}")
        step = found[0]
        if not isinstance(step, MapStep):
            raise InvalidArgumentError(f"step {name!r} of workflow {self.definition.name!r} is a {step.kind} step, not a map")
        if name not in self.input.get("items", {}):
            holders = [m.name for m, _ in self.definition.lookup.values()
                       if isinstance(m, MapStep) and any(s.name == name for s in m.branch.steps)]
            raise InvalidArgumentError(
                f"step {name!r} of workflow {self.definition.name!r} is a map in a map's branch"
                f"{f' (of {holders[0]!r})' if holders else ''}, over each item's own items: ask for that map's"
                " output (each of its items' outputs holds this map's when it is the last step of its branch)")
        return self._model().map_output(step, self.input["items"][name])

    def expected_runs(self) -> int:
        """How many times the instance continues as new (``continues=True``; else 0): its
        ``runs`` at the end."""
        return int(self.input.get("runs_left", 0))

    def step_succeeds(self, step: TaskStep) -> bool:
        """Whether a task step's script yields a success within its retry policy."""
        return self._model().task_error(step) is None

    def expected_status(self) -> Status:
        """``completed`` if no step on the path the flags and catches choose fails for good
        (or only a ``succeed`` step ends it early), else ``failed``."""
        return "failed" if self._model().lane(self.definition.steps) else "completed"

    def expected_error_names(self) -> frozenset[str]:
        """The error names the instance may fail with (empty: it completes). More than one
        only where fail-fast branches (or the items of a fail-fast map tolerating none) fail
        differently and the scheduler picks the first."""
        errors = self._model().lane(self.definition.steps)
        return frozenset(e.name for e in errors)

    def expected_caught(self) -> list[str]:
        """The main line's steps whose failures a catch routes, in the order they run."""
        caught: list[str] = []
        self._model().lane(self.definition.steps, caught)
        return caught


@st.composite
def workflows(
    draw: st.DrawFn, *, max_steps: int = 4, max_depth: int = 2, timing: bool = True, parallel: bool = True,
    loops: bool = False, catches: bool = False, maps: bool = False, max_items: int = 4, nested: bool = False,
    waits: bool = False, continues: bool = False,
) -> GeneratedWorkflow:
    """A valid random workflow with scripted jobs (see the module docstring).

    ``timing=False`` leaves out sleeps, hangs, step timeouts and retry intervals (for runs on a
    real clock); ``parallel=False`` leaves out parallel steps; ``loops=True`` adds loops: a
    step run again and again through a choice's back-edge (``body-N`` then ``again-N``), a
    given number of times, its job always succeeding (its compensation may fail).

    ``catches=True`` adds errors as values: catchers (:data:`CATCH_MATCHERS`, sometimes after a
    decoy that matches nothing, sometimes with ``result="err-STEP"``) on task and parallel
    steps, routing to a later step of the same lane (a landing pass ``at-L-K`` before its K-th
    part) or to the lane's catch route (``caught-L``, then maybe a task ``h-L``, then maybe a
    ``fail`` or ``succeed`` step, the normal flow ending before it at ``ok-L``); choice arms
    that are ``succeed`` or ``fail`` steps. A parallel step's catchers are left out where the
    route they pick, or the error they store, would depend on which fail-fast branch fails
    first, so :meth:`GeneratedWorkflow.expected_status` stays exact.

    ``maps=True`` adds map steps (``m-N``, in any lane) over up to ``max_items`` generated items
    (the input's ``items[name]``), with or without ``max_concurrency``, fail-fast or wait-all,
    tolerating none, a count or a fraction of failures; their branch is one or two task steps
    (``i-N``, maybe retried, maybe compensated) run by :class:`ItemScript`, which each item's
    plan tells how long to take and whether to fail; with ``catches=True`` also catchers
    (``"MapError"`` among what they may list). :meth:`GeneratedWorkflow.expected_map_output`
    gives each map's output.

    ``nested=True`` (with ``maps=True``) lets a map's branch fan out too: each of its parts may
    be a parallel step (``ip-N``) of one to three branches of item tasks, or a map (``im-N``)
    over the item's own list of items (``ctx.item["inner"]["im-N"]``, each with its own plan),
    its branch item tasks. Where which failures a fail-fast fan-out (in an item, or the map
    holding such items) meets before it stops would be the scheduler's choice, the plans let no
    more fail than it stops at (one for a parallel step or a map tolerating none, one past what
    a map tolerates), so that its error (and the slot a tolerated failure leaves) stays known.
    Use ``input["items"]`` for the maps to ask :meth:`GeneratedWorkflow.expected_map_output`
    about (an inner map's output is part of its items'); an item holds ``"inner"`` only when
    its branch has an ``im-N``.

    ``waits=True`` (needs ``timing``) adds durable timers (``w-N``, of :data:`WAITS` seconds:
    in memory, or a day out of it) and receive steps (``r-N``, each for a signal of its own,
    ``sig-N``, with one of :data:`RECEIVE_TIMEOUTS`), in the main line and parallel branches
    (not in map items); :attr:`GeneratedWorkflow.signals` sends some of those signals, and a
    receive whose signal is not sent fails with ``SignalTimeoutError`` (with ``catches=True``
    its catchers may list that name). Send them right after the start, as
    ``explore_crashes(signals=...)`` does.

    ``continues=True`` makes the instance continue as new one or two times before its last run
    (``input["runs_left"]``; :meth:`GeneratedWorkflow.expected_runs`): its first step, the
    choice ``runs-left``, sends a run with runs left to ``tick`` (a task with a compensation,
    ``job-tick`` and ``undo-tick``, that always succeed) and the ``continue_as_new`` step
    ``again``, whose input is the run's with one run fewer left; the last run takes the pass
    step ``body`` to the generated steps. What the model predicts is the last run's; ``tick``
    is never in its history, and ``undo-tick`` is never called (a run before is never
    compensated). Signals sent after the start are kept for the run that receives them.
    """
    for name, value, lowest in (("max_steps", max_steps, 1), ("max_depth", max_depth, 0), ("max_items", max_items, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise InvalidArgumentError(f"workflows({name}=) takes an int >= {lowest}, got {value!r}")
    for name, switch in (("timing", timing), ("parallel", parallel), ("loops", loops), ("catches", catches),
                         ("maps", maps), ("nested", nested), ("waits", waits), ("continues", continues)):
        check_switch(switch, f"workflows({name}=)")
    if nested and not maps:
        raise InvalidArgumentError("workflows(nested=True) generates fan-outs in map items: pass maps=True too")
    if waits and not timing:
        raise InvalidArgumentError("workflows(waits=True) generates timers and receive timeouts: it needs timing=True")
    ids = itertools.count()
    jobs: dict[str, ScriptedJob] = {}
    flags: list[bool] = []
    items: dict[str, list[Any]] = {}
    scripts: dict[str, ItemScript] = {}
    signals: list[tuple[str, Any]] = []
    sent: set[str] = set()
    model = _Model(jobs, flags, items, sent)

    def catchers(name: str, targets: Sequence[str], *, predicates: bool = True,
                 extra: Sequence[ErrorMatcher] = ()) -> list[Catch]:
        if not targets or not draw(st.booleans()):
            return []
        out = []
        if draw(st.booleans()):
            out.append(Catch(errors=draw(st.sampled_from(DECOY_MATCHERS)), next=draw(st.sampled_from(targets))))
        # A parallel step's catch may, after a restart, see a branch failure only as recorded
        # (docs/errors.md): its generated catchers match by type, name or ALL, never predicate.
        allowed = [m for m in CATCH_MATCHERS if predicates or m is not is_scripted] + list(extra)
        picks = draw(st.lists(st.integers(0, len(allowed) - 1), min_size=1, max_size=2, unique=True))
        result = f"err-{name}" if draw(st.booleans()) else None
        out.append(Catch(errors=[allowed[i] for i in picks], next=draw(st.sampled_from(targets)),
                         result=result))
        return out

    def task(builder: WorkflowBuilder | BranchBuilder, name: str, next: str | None = None,
             targets: Sequence[str] = (), targeted: set[str] | None = None) -> None:
        timeout = draw(st.sampled_from((None, *TIMEOUTS))) if timing else None
        script = draw(job_behaviours(may_hang=timeout is not None, timing=timing))
        retry = draw(st.none() | retry_policies(timing=timing))
        jobs[f"job-{name}"] = ScriptedJob(*script, name=f"job-{name}")
        compensate = None
        if draw(st.booleans()):
            compensate = f"undo-{name}"
            undo = draw(st.sampled_from(((Returns(),), (Raises(error=ScriptedFailure), Returns()),
                                         (Raises(error=ScriptedFailure, times=9),))))
            jobs[compensate] = ScriptedJob(*undo, name=compensate)
        catch = catchers(name, targets) if catches else []
        if targeted is not None:
            targeted.update(c.next for c in catch)
        if draw(st.booleans()):  # saga style: execute(ctx), compensate(ctx, result)
            builder.step(name, f"job-{name}", compensate, retry=retry, timeout=timeout, catch=catch, next=next)
        else:
            builder.task(name, job=f"job-{name}", compensate=compensate, retry=retry, timeout=timeout, catch=catch,
                         next=next)

    def terminal(builder: WorkflowBuilder | BranchBuilder, kind: str, name: str) -> None:
        if kind == "fail":
            builder.fail(name, error=DECLINED, cause=draw(st.sampled_from(("card declined", _cause_from_ctx))))
        else:
            output = draw(st.sampled_from((None, {"won": name})))
            if output is None:
                builder.succeed(name)
            else:
                builder.succeed(name, output=output)

    def arm(builder: WorkflowBuilder | BranchBuilder, name: str, join: str, kind: str,
            targets: Sequence[str], targeted: set[str]) -> None:
        if kind == "task":
            task(builder, name, next=join, targets=targets, targeted=targeted)
        else:
            terminal(builder, kind, name)

    def loop(builder: WorkflowBuilder | BranchBuilder, n: int) -> None:
        body, times = f"body-{n}", draw(st.integers(1, 3))
        jobs[f"job-{body}"] = ScriptedJob(Returns(value=n, times=times), name=f"job-{body}")
        compensate = None
        if draw(st.booleans()):
            compensate = f"undo-{body}"
            undo = draw(st.sampled_from(((Returns(times=times),), (Raises(error=ScriptedFailure), Returns(times=times)))))
            jobs[compensate] = ScriptedJob(*undo, name=compensate)
        builder.task(body, job=f"job-{body}", compensate=compensate)
        builder.choice(f"again-{n}", choices=[when(_fewer_runs_than(body, times), next=body)], default=f"done-{n}")
        builder.pass_(f"done-{n}")

    def item_task(body: BranchBuilder) -> str:
        step = f"i-{next(ids)}"
        retry = draw(st.none() | retry_policies(timing=timing))
        script = scripts[step] = ItemScript(step)
        body.step(step, script.run, script.undo if draw(st.booleans()) else None, retry=retry)
        return step

    def item_plans(steps: Sequence[str]) -> list[dict[str, Any]]:
        sleeps = ITEM_SLEEPS if timing else (0.0,)
        return [{"plan": {step: [draw(st.sampled_from(sleeps)), draw(st.sampled_from(ITEM_FAILURES))]
                          for step in steps}}
                for _ in range(draw(st.integers(0, max_items)))]

    def map_options() -> tuple[OnError, int | None, int | float]:
        on_error: OnError = draw(st.sampled_from(("fail-fast", "wait-all")))
        return on_error, draw(st.sampled_from((None, 1, 2))), draw(st.sampled_from((0, 1, 2, 0.25, 0.5)))

    def fan_out_in_items(body: BranchBuilder, n: int, tasks: list[str], fan_outs: list[Step]) -> None:
        """A parallel step of item tasks, or a map over each item's own list of items, in a
        map's branch (``nested=True``)."""
        if draw(st.booleans()):
            branches = []
            for _ in range(draw(st.integers(1, 3))):
                b = branch(f"b{next(ids)}")
                for _ in range(draw(st.integers(1, 2))):
                    tasks.append(item_task(b))
                branches.append(b.build())
            on_error: OnError = draw(st.sampled_from(("fail-fast", "wait-all")))
            body.parallel(f"ip-{n}", branches=branches, on_error=on_error)
            fan_outs.append(ParallelStep(name=f"ip-{n}", branches=tuple(branches), on_error=on_error))
            return
        inner = branch(f"inner-{n}")
        for _ in range(draw(st.integers(1, 2))):
            item_task(inner)
        on_error, bound, allowed = map_options()
        inner_map = MapStep(name=f"im-{n}", items=_inner_items(f"im-{n}"), branch=inner.build(),
                            max_concurrency=bound, on_error=on_error, tolerated_failures=allowed)
        fan_outs.append(inner_map)
        body.map(inner_map.name, items=inner_map.items, branch=inner_map.branch, max_concurrency=bound,
                 on_error=on_error, tolerated_failures=allowed)

    def map_step(builder: WorkflowBuilder | BranchBuilder, n: int, targets: Sequence[str], targeted: set[str]) -> None:
        name = f"m-{n}"
        body = branch(f"items-{n}")
        tasks: list[str] = []
        fan_outs: list[Step] = []
        for _ in range(draw(st.integers(1, 2))):
            if nested and draw(st.booleans()):
                fan_out_in_items(body, next(ids), tasks, fan_outs)
            else:
                tasks.append(item_task(body))
        items[name] = item_plans(tasks)
        for item in items[name]:
            for fan_out in fan_outs:
                if isinstance(fan_out, MapStep):  # (each item maps over its own items)
                    item.setdefault("inner", {})[fan_out.name] = item_plans([t.name for t in fan_out.branch.steps])
            _first_failures_known(item, fan_outs)
        on_error, bound, allowed = map_options()
        definition = MapStep(name=name, items=_items(name), branch=body.build(), max_concurrency=bound,
                             on_error=on_error, tolerated_failures=allowed)
        limit = _failing_bound(definition, len(items[name])) if fan_outs else None
        if limit is not None:
            # The same for the map itself: its items' errors vary once they fail in fan-outs,
            # and which of them its error names would be the scheduler's choice.
            failing = [item for i, item in enumerate(items[name])
                       if model.item_errors(definition.branch.steps, item, i)]
            for item in failing[limit:]:
                _succeeding(item)
        catch = catchers(name, targets, predicates=False, extra=MAP_MATCHERS) if catches else []
        catch = decidable(catch, lambda: model.map_errors(definition))
        targeted.update(c.next for c in catch)
        builder.map(name, items=definition.items, branch=definition.branch, max_concurrency=bound,
                    on_error=on_error, tolerated_failures=allowed, catch=catch)

    def decidable(catch: list[Catch], errors: Callable[[], Any]) -> list[Catch]:
        """``catch``, or none if the model cannot tell which catcher the errors would meet."""
        if catch:
            found = errors()
            try:
                if found:
                    model.catcher(catch, found)
            except UndecidedCatchError:
                return []
        return catch

    def lane(builder: WorkflowBuilder | BranchBuilder, depth: int) -> None:
        kinds = ["task", "choice"] + (["parallel"] if parallel and depth < max_depth else []) + (
            ["loop"] if loops else []) + (["map"] if maps else []) + (["wait", "receive"] if waits else [])
        parts = draw(st.integers(1, max_steps))
        # Catch targets: a landing pass before a later part (added once something targets it),
        # or this lane's catch route after its normal end.
        lane_id = next(ids) if catches else 0
        landings = [f"at-{lane_id}-{k}" for k in range(parts)]
        route = f"caught-{lane_id}"
        targeted: set[str] = set()
        for k in range(parts):
            targets = (*landings[k + 1:], route) if catches else ()
            if landings[k] in targeted:
                builder.pass_(landings[k])
            kind = draw(st.sampled_from(kinds))
            n = next(ids)
            if kind == "task":
                task(builder, f"t{n}", targets=targets, targeted=targeted)
            elif kind == "loop":
                loop(builder, n)
            elif kind == "map":
                map_step(builder, n, targets, targeted)
            elif kind == "wait":
                builder.wait(f"w-{n}", seconds=draw(st.sampled_from(WAITS)))
            elif kind == "receive":
                signal = f"sig-{n}"
                if draw(st.booleans()):
                    signals.append((signal, {"signal": n}))
                    sent.add(signal)
                catch = catchers(f"r-{n}", targets, extra=RECEIVE_MATCHERS) if catches else []
                targeted.update(c.next for c in catch)
                builder.receive(f"r-{n}", signal=signal, timeout=draw(st.sampled_from(RECEIVE_TIMEOUTS)), catch=catch)
            elif kind == "choice":
                flag = len(flags)
                flags.append(draw(st.booleans()))
                join = f"join-{n}"
                yes = no = "task"
                if catches:  # at most one arm ends the lane, so the join is reached
                    yes = draw(st.sampled_from(("task", "task", "succeed", "fail")))
                    no = "task" if yes != "task" else draw(st.sampled_from(("task", "task", "succeed", "fail")))
                builder.choice(f"choice-{flag}-{n}", choices=[when(_flag(flag), next=f"yes-{n}")], default=f"no-{n}")
                arm(builder, f"yes-{n}", join, yes, targets, targeted)
                arm(builder, f"no-{n}", join, no, targets, targeted)
                builder.pass_(join)
            else:
                branches = []
                for _ in range(draw(st.integers(1, 3))):
                    b = branch(f"b{next(ids)}")
                    lane(b, depth + 1)
                    branches.append(b.build())
                on_error: OnError = draw(st.sampled_from(("fail-fast", "wait-all")))
                catch = catchers(f"p{n}", targets, predicates=False) if catches else []
                catch = decidable(catch, lambda: model.branch_errors(branches, on_error))
                targeted.update(c.next for c in catch)
                builder.parallel(f"p{n}", branches=branches, on_error=on_error, catch=catch)
        if route in targeted:
            terminal(builder, "succeed", f"ok-{lane_id}")  # the normal flow ends here
            builder.pass_(route)
            if draw(st.booleans()):
                task(builder, f"h-{lane_id}")
            end = draw(st.sampled_from(("fail", "succeed", None)))
            if end is not None:
                terminal(builder, end, f"{'fail' if end == 'fail' else 'win'}-{lane_id}")

    builder = workflow("generated")
    runs = 0
    if continues:
        runs = draw(st.integers(1, 2))
        jobs["job-tick"], jobs["undo-tick"] = ScriptedJob(name="job-tick"), ScriptedJob(name="undo-tick")
        builder.choice("runs-left", choices=[when(_runs_left, next="tick")], default="body")
        builder.task("tick", job="job-tick", compensate="undo-tick")
        builder.continue_as_new("again", input=_one_run_fewer)
        builder.pass_("body")
    lane(builder, 0)
    given: dict[str, Any] = {"flags": flags, "items": items} if maps else {"flags": flags}
    if continues:
        given["runs_left"] = runs
    return GeneratedWorkflow(definition=builder.build(), jobs=jobs, input=given, item_scripts=scripts,
                             signals=tuple(signals))


def _runs_left(ctx: Any) -> bool:
    return bool(ctx.input["runs_left"] > 0)


def _one_run_fewer(ctx: Any) -> dict[str, Any]:
    """The next run's input (``continues=True``): the run's, with one run fewer left."""
    return {**ctx.input, "runs_left": ctx.input["runs_left"] - 1}


def _flag(i: int) -> Any:
    return lambda ctx: ctx.input["flags"][i]


def _items(name: str) -> Any:
    return lambda ctx: ctx.input["items"][name]


def _inner_items(name: str) -> Any:
    return lambda ctx: ctx.item["inner"][name]


def _fails(plan: Mapping[str, Any], steps: Sequence[Step]) -> bool:
    """Whether a generated item's ``plan`` fails one of ``steps`` (item tasks) for good."""
    return any(plan[t.name][1] >= (t.retry or NO_RETRY).max_attempts for t in steps if isinstance(t, TaskStep))


def _failing_bound(step: ParallelStep | MapStep, count: int) -> int | None:
    """How many of a fan-out's ``count`` branches or items may fail for the model to know how
    it fails: a fail-fast one stops at its first failure (a parallel step, a map tolerating
    none) or at the one past what it tolerates, and which failures came in by then would be
    the scheduler's choice; ``None``: any (wait-all)."""
    if step.on_error != "fail-fast":
        return None
    return 1 if isinstance(step, ParallelStep) else tolerated(step, count) + 1


def _first_failures_known(item: dict[str, Any], fan_outs: Sequence[Step]) -> None:
    """Change a generated item's plans so that each fail-fast fan-out in it has no more
    failing branches (or items) than :func:`_failing_bound` lets it: the others succeed."""
    for step in fan_outs:
        if isinstance(step, ParallelStep):
            plans = [(item["plan"], b.steps) for b in step.branches]
        elif isinstance(step, MapStep):
            plans = [(inner["plan"], step.branch.steps) for inner in item["inner"][step.name]]
        else:
            continue
        bound = _failing_bound(step, len(plans) if isinstance(step, MapStep) else 0)
        if bound is None:
            continue
        failing = [(plan, steps) for plan, steps in plans if _fails(plan, steps)]
        for plan, steps in failing[bound:]:
            for task in steps:
                plan[task.name][1] = 0


def _succeeding(item: dict[str, Any]) -> None:
    """Change a generated item's plans so that it gets through: no step of it fails."""
    for entry in item["plan"].values():
        entry[1] = 0
    for inner_items in item.get("inner", {}).values():
        for inner in inner_items:
            _succeeding(inner)


def _fewer_runs_than(step: str, times: int) -> Any:
    return lambda ctx: sum(r.step_name == step for r in ctx.instance.history) < times


def _cause_from_ctx(ctx: Any) -> str:
    """A fail step's cause computed from ``ctx.error`` (lower case: it names no error)."""
    caught = ctx.error
    return "declined after " + (caught["error"].lower() if caught is not None else "nothing")


def task_steps(definition: WorkflowDefinition) -> Iterator[TaskStep]:
    """Every task step of a definition, branches included."""
    for step, _ in definition.lookup.values():
        if isinstance(step, TaskStep):
            yield step
