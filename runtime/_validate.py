"""Checks a lane of steps before it becomes a definition (SPEC §7). Every error names the step."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import get_args

from ._definition import (
    CATCHING,
    Branch,
    Catch,
    ChildStep,
    ChoiceStep,
    ContinueAsNewStep,
    FailStep,
    MapStep,
    OnError,
    ParallelStep,
    PassStep,
    ReceiveStep,
    Step,
    SucceedStep,
    TaskStep,
    WaitStep,
    WorkflowDefinition,
)
from ._callables import check_arguments, generator_kind, not_plain
from ._durations import in_range
from ._errors import DefinitionError, safe_repr
from ._lanes import RESERVED_SIGNALS, check_name, is_signal_name, valid_text
from ._matching import ASL_PREFIX, catches_all
from ._retry import Retry

#: Longest error name a fail step may give (as AWS Step Functions caps an error's name).
MAX_ERROR_NAME = 256


def check_lane(owner: str, steps: Sequence[Step]) -> None:
    """Validate one lane (a workflow's main line or a branch) as written by the user.

    ``owner`` says whose lane it is ("workflow 'x'", "branch 'b'") for the messages.
    Runs before fall-through is resolved, so ``next`` still means "written by the user".
    """
    if not steps:
        raise DefinitionError(f"{owner} has no steps")
    names = [s.name for s in steps]
    for step in steps:
        _check_step(owner, step, names)
    _check_reachable(owner, steps)
    _check_can_leave(owner, steps)


def check_unique_names(owner: str, steps: Sequence[Step]) -> None:
    """Step names are unique across a whole workflow, branches included.

    Like Amazon States Language: one name space keeps ``ctx.steps``, ``compensated_steps`` and
    snapshots unambiguous.
    """
    seen: dict[str, str] = {}
    for where, step in _walk(owner, steps):
        if step.name in seen:
            places = "in its main line" if seen[step.name] == where == owner else f"({seen[step.name]} and {where})"
            raise DefinitionError(
                f"{owner}: step name {step.name!r} is used twice {places};"
                " step names must be unique in a workflow, branches included"
            )
        seen[step.name] = where


def check_timeout(label: str, seconds: object) -> None:
    """A timeout (a workflow's or a step's) is a number of seconds > 0.

    ``bool`` is refused although it is an ``int``: ``timeout=True`` is a mistake, not 1 s.
    NaN is out of every range (see :func:`in_range`). ``inf`` is accepted: like a trio deadline
    of ``inf``, it never expires.
    """
    if not in_range(seconds, infinite=True) or seconds == 0:
        raise DefinitionError(f"{label}: timeout must be a number of seconds > 0, got {seconds!r}")


def _walk(where: str, steps: Sequence[Step]) -> Iterator[tuple[str, Step]]:
    for step in steps:
        yield where, step
        if isinstance(step, ParallelStep):
            for branch in step.branches:
                yield from _walk(f"branch {branch.name!r} of step {step.name!r}", branch.steps)
        elif isinstance(step, MapStep) and isinstance(step.branch, Branch):
            yield from _walk(f"the branch of map step {step.name!r}", step.branch.steps)


def _check_step(owner: str, step: Step, names: list[str]) -> None:
    if not isinstance(step.name, str) or not step.name:
        raise DefinitionError(f"{owner}: a step name must be a non-empty string, got {step.name!r}")
    check_name(owner, "step", step.name)
    label = f"{owner}, step {step.name!r}"
    if not isinstance(getattr(step, "end", False), bool):
        # (Truthy or not, anything else would end the lane or not by accident, and the error
        # would then blame the step after it: "can never be reached".)
        raise DefinitionError(f"{label}: end takes True or False, got {safe_repr(getattr(step, 'end'))}")
    if step.next is not None and step.end:
        raise DefinitionError(f"{label}: 'next' and 'end' are mutually exclusive")
    if step.next is not None:
        _check_target(label, "next", step.next, names)
    if isinstance(step, CATCHING):
        for catcher in step.catch:
            if not isinstance(catcher, Catch):
                raise DefinitionError(f"{label}: catch items must be trioflow.Catch, got {catcher!r}")
            _check_target(label, "catch next", catcher.next, names)
        for number, catcher in enumerate(step.catch[:-1], 1):
            if catches_all(catcher.errors):
                # The first catcher that matches routes the lane: after one with ALL, the others
                # see only the errors ALL leaves, trioflow's own definition and storage errors,
                # which a catcher before it sees the same (Amazon States Language refuses
                # States.ALL anywhere but last, too).
                raise DefinitionError(
                    f"{label}: catch #{number} holds trioflow.ALL, which matches every error but trioflow's own"
                    " DefinitionError and StorageError: put it last (a catcher for those goes before it)")
    if isinstance(step, TaskStep):
        _check_task(label, step)
    elif isinstance(step, ChoiceStep):
        if not step.choices:
            raise DefinitionError(f"{label}: a choice step needs at least one choice")
        for choice in step.choices:
            if not callable(choice.condition):
                raise DefinitionError(f"{label}: choice condition {choice.condition!r} is not callable")
            kind = not_plain(choice.condition)
            if kind is not None:
                # A decision is made in one go, from what the run holds: a coroutine (or a
                # generator) would count as true, and the first rule would always win.
                raise DefinitionError(f"{label}: choice condition {choice.condition!r} is {kind};"
                                      " conditions are plain functions of ctx (fetch what they need in a step before)")
            check_arguments(label, "condition", choice.condition, ("ctx",))
            _check_target(label, "choice next", choice.next, names)
        if step.default is not None:
            _check_target(label, "default", step.default, names)
    elif isinstance(step, ParallelStep):
        _check_parallel(label, step)
    elif isinstance(step, MapStep):
        _check_map(label, step)
    elif isinstance(step, ChildStep):
        if isinstance(step.workflow, WorkflowDefinition):
            raise DefinitionError(f"{label}: workflow takes a registered workflow's name: pass {step.workflow.name!r}")
        if not isinstance(step.workflow, str) or not step.workflow:
            raise DefinitionError(
                f"{label}: workflow must be the name of a registered workflow, got {safe_repr(step.workflow)}")
        if step.input is not None and not callable(step.input):
            raise DefinitionError(f"{label}: input must be a callable of ctx, got {step.input!r}")
        _refuse_generator(label, "input", step.input)
        check_arguments(label, "input", step.input, ("ctx",))
    elif isinstance(step, PassStep):
        if step.transform is not None and step.has_result:
            raise DefinitionError(f"{label}: give either 'transform' or 'result', not both")
        if step.transform is not None and not callable(step.transform):
            raise DefinitionError(f"{label}: transform {step.transform!r} is not callable")
        kind = None if step.transform is None else not_plain(step.transform)
        if kind is not None:
            # Decided in one go, as a choice is: its coroutine would be the step's output.
            raise DefinitionError(f"{label}: transform {step.transform!r} is {kind}; a pass step's"
                                  " transform is a plain function of ctx (do async work in a task step)")
        check_arguments(label, "transform", step.transform, ("ctx",))
    elif isinstance(step, FailStep):
        if not isinstance(step.error, str) or not step.error or len(step.error) > MAX_ERROR_NAME \
                or not valid_text(step.error):
            raise DefinitionError(
                f"{label}: error must be an error name of 1 to {MAX_ERROR_NAME} characters, got {safe_repr(step.error)}")
        if step.error.startswith(ASL_PREFIX):
            # Amazon States Language keeps the prefix for its own errors, and so does a catcher
            # here (see trioflow._matching): a name no catcher could name is refused too.
            raise DefinitionError(
                f"{label}: error must not begin with {ASL_PREFIX!r} (Amazon States Language keeps that prefix for"
                f" its own errors, and no catcher may name one), got {safe_repr(step.error)}")
        if not (isinstance(step.cause, str) or callable(step.cause)):
            raise DefinitionError(f"{label}: cause must be text or a callable of ctx, got {step.cause!r}")
        kind = not_plain(step.cause) if callable(step.cause) else None
        if kind is not None:
            raise DefinitionError(f"{label}: cause {step.cause!r} is {kind}; a fail step's cause is text"
                                  " or a plain function of ctx")
        check_arguments(label, "cause", step.cause, ("ctx",))
    elif isinstance(step, WaitStep):
        _check_wait(label, step)
    elif isinstance(step, ReceiveStep):
        if not is_signal_name(step.signal):  # (what engine.signal accepts)
            raise DefinitionError(
                f"{label}: signal must be a non-empty signal name of valid text not starting with {RESERVED_SIGNALS!r}, got"
                f" {step.signal!r}")
        if step.timeout is not None:
            check_timeout(label, step.timeout)
    elif isinstance(step, SucceedStep):
        if step.has_output:
            _check_value_or_plain_function(label, "succeed step's output", step.output)
    elif isinstance(step, ContinueAsNewStep):
        if step.has_input:
            _check_value_or_plain_function(label, "continue_as_new step's input", step.input)
    else:
        raise DefinitionError(f"{owner}: {step!r} is not a step")


def _check_value_or_plain_function(label: str, what: str, value: object) -> None:
    """A value, or a plain function of ctx: decided in one go, as a pass step's transform is,
    an ``async def``'s coroutine would be the value."""
    kind = not_plain(value) if callable(value) else None
    if kind is not None:
        name = what.rpartition(" ")[2]
        raise DefinitionError(f"{label}: {name} {value!r} is {kind}; a {what} is a value or a plain function of"
                              " ctx (do async work in a task step)")
    if callable(value):
        check_arguments(label, what.rpartition(" ")[2], value, ("ctx",))


def _check_wait(label: str, step: WaitStep) -> None:
    if (step.seconds is None) == (step.until is None):
        raise DefinitionError(f"{label}: give either 'seconds' or 'until'")
    for field, value in (("seconds", step.seconds), ("until", step.until)):
        if value is None:
            continue
        if callable(value):
            kind = not_plain(value)
            if kind is not None:
                # Worked out in one go, as the step starts waiting, as a choice's condition is:
                # its coroutine would be taken for the time.
                raise DefinitionError(f"{label}: {field} {value!r} is {kind}; a timer's {field} is a"
                                      " value or a plain function of ctx (fetch what it needs in a step before)")
            check_arguments(label, field, value, ("ctx",))
            continue
        if not in_range(value):
            allowed = ("a finite number of seconds >= 0, a timedelta, or a callable of ctx" if field == "seconds"
                       else "Unix seconds (a finite number >= 0), an aware datetime, or a callable of ctx")
            raise DefinitionError(f"{label}: {field} must be {allowed}, got {value!r}")


def _check_target(label: str, field: str, target: str, names: list[str]) -> None:
    if target not in names:
        raise DefinitionError(f"{label}: {field} {target!r} is not a step of this lane")


def _refuse_generator(label: str, field: str, fn: object) -> None:
    """A mapper (a plain function or an ``async def``, whose answer is a value to store: an
    input, an output, a map's items) that is a generator function would hand back a generator,
    which fails its step only as it is stored (a task's output: after its job has acted)."""
    kind = generator_kind(fn)
    if kind is not None:
        raise DefinitionError(f"{label}: {field} {safe_repr(fn)} is {kind} (it yields); it returns its value:"
                              " collect what it yields and return that")


def _check_task(label: str, step: TaskStep) -> None:
    if not (callable(step.run) or (isinstance(step.run, str) and step.run)):
        what = "execute" if step.style == "saga" else "job"
        raise DefinitionError(f"{label}: {what} must be a callable or a job name, got {step.run!r}")
    if step.compensate is not None and not (callable(step.compensate) or (isinstance(step.compensate, str) and step.compensate)):
        raise DefinitionError(f"{label}: compensate must be a callable or a job name, got {step.compensate!r}")
    for what, fn, arguments in step.calls():
        _refuse_generator(label, what, fn)
        check_arguments(label, what, fn, arguments)
    for field, fn, arguments in (("input", step.input, ("ctx",)), ("output", step.output, ("result", "ctx"))):
        if fn is not None and not callable(fn):
            raise DefinitionError(f"{label}: {field} must be callable, got {fn!r}")
        _refuse_generator(label, field, fn)
        check_arguments(label, field, fn, arguments)
    if step.retry is not None and not isinstance(step.retry, Retry):
        raise DefinitionError(f"{label}: retry must be a trioflow.Retry, got {step.retry!r}")
    if step.timeout is not None:
        check_timeout(label, step.timeout)


def _check_on_error(label: str, on_error: object) -> None:
    if on_error not in _ON_ERROR:
        raise DefinitionError(f"{label}: on_error must be {' or '.join(map(repr, _ON_ERROR))}, got {on_error!r}")


_ON_ERROR = get_args(OnError)


def _check_map(label: str, step: MapStep) -> None:
    _check_on_error(label, step.on_error)
    if not callable(step.items):
        raise DefinitionError(f"{label}: items must be a callable of ctx giving the list of items, got {step.items!r}")
    _refuse_generator(label, "items", step.items)
    check_arguments(label, "items", step.items, ("ctx",))
    if not isinstance(step.branch, Branch):
        raise DefinitionError(f"{label}: branch must be a branch (trioflow.branch(name)...build()), got {step.branch!r}")
    if not valid_text(step.branch.name):  # (its items' lanes are named for the step, not the branch)
        raise DefinitionError(f"{label}: branch name {step.branch.name!r} is not valid text (it holds a lone surrogate)")
    limit = step.max_concurrency
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DefinitionError(f"{label}: max_concurrency must be an int >= 1 or None, got {limit!r}")
    tolerated = step.tolerated_failures
    count = isinstance(tolerated, int) and not isinstance(tolerated, bool) and tolerated >= 0
    fraction = isinstance(tolerated, float) and 0.0 <= tolerated <= 1.0
    if not (count or fraction):
        raise DefinitionError(
            f"{label}: tolerated_failures must be a count (an int >= 0) or a fraction of the items (a float from 0"
            f" to 1), got {tolerated!r}")


def _check_parallel(label: str, step: ParallelStep) -> None:
    _check_on_error(label, step.on_error)
    if not step.branches:
        raise DefinitionError(f"{label}: a parallel step needs at least one branch")
    seen: set[str] = set()
    for branch in step.branches:
        if not isinstance(branch, Branch):
            raise DefinitionError(f"{label}: {branch!r} is not a branch (use trioflow.branch(name)...build())")
        check_name(label, "branch", branch.name)
        if branch.name in seen:
            raise DefinitionError(f"{label}: branch name {branch.name!r} is used twice")
        seen.add(branch.name)


def _targets(steps: Sequence[Step], i: int) -> list[str]:
    """The steps the ``i``-th of a lane may go to next (caught errors included)."""
    step = steps[i]
    targets: list[str] = []
    if isinstance(step, ChoiceStep):
        targets = [c.next for c in step.choices] + ([step.default] if step.default else [])
    elif step.next is not None:
        targets = [step.next]
    elif not step.end and i + 1 < len(steps):
        targets = [steps[i + 1].name]
    if isinstance(step, CATCHING):
        targets += [c.next for c in step.catch]
    return targets


def _check_reachable(owner: str, steps: Sequence[Step]) -> None:
    reached: set[str] = set()
    todo = [0]
    position = {s.name: i for i, s in enumerate(steps)}
    while todo:
        i = todo.pop()
        step = steps[i]
        if step.name in reached:
            continue
        reached.add(step.name)
        todo.extend(position[t] for t in _targets(steps, i))
    for step in steps:
        if step.name not in reached:
            raise DefinitionError(f"{owner}, step {step.name!r}: can never be reached")


def _check_can_leave(owner: str, steps: Sequence[Step]) -> None:
    """Refuse a loop of pass steps (without a ``transform``) and choice steps that nothing can
    leave: each of its steps goes on to another of it whatever its conditions say, and none can
    end the lane or fail (a choice without a ``default`` can: ``NoChoiceMatchedError``; only a
    condition that raises would end it). It would store a record per step for ever (until a
    workflow timeout, if any; never, on a virtual clock, which does not move), as Step Functions
    refuses a machine with no way to an end. A loop with any other step (a task, a wait, a
    receive) is left be: it does something, and a cancel or a timeout may be its end. A
    continue_as_new step goes on to the first step (in the next run), and is stuck as such a
    pass step is, unless its input is worked out by a function."""
    def targets(i: int) -> list[str]:
        step = steps[i]
        return [steps[0].name] if isinstance(step, ContinueAsNewStep) else _targets(steps, i)

    def stuck(i: int) -> bool:
        step = steps[i]
        if isinstance(step, ChoiceStep):
            return step.default is not None
        if isinstance(step, ContinueAsNewStep):
            return not (step.has_input and callable(step.input))
        return isinstance(step, PassStep) and step.transform is None and bool(_targets(steps, i))

    leaves = {i for i in range(len(steps)) if not stuck(i)}
    position = {s.name: i for i, s in enumerate(steps)}
    before: dict[int, list[int]] = {}
    for i in range(len(steps)):
        for target in targets(i):
            before.setdefault(position[target], []).append(i)
    todo = list(leaves)
    while todo:  # (back from every step that may leave: what can reach one)
        for i in before.get(todo.pop(), ()):
            if i not in leaves:
                leaves.add(i)
                todo.append(i)
    stuck_in = [step.name for i, step in enumerate(steps) if i not in leaves]
    if stuck_in:
        raise DefinitionError(
            f"{owner}, step {stuck_in[0]!r}: "
            + (f"with {', '.join(map(repr, stuck_in[1:]))}, never reaches" if stuck_in[1:] else "never reaches")
            + " an end: a loop of pass, choice and continue_as_new steps that nothing can leave (each goes on to another,"
            " whatever its conditions say, and none ends, fails, waits or does work), which would run for ever;"
            " give a choice a rule or a default that leads out, or put a task, wait or end step in it")
