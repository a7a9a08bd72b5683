"""Hypothesis strategies: valid workflow definitions with scripted jobs, and job behaviours.

``workflows()`` draws a :class:`GeneratedWorkflow`: a definition (sagas and task chains, choice
diamonds on generated flags, nested parallels with fail-fast and wait-all, retries and step
timeouts), the scripted jobs its steps name, an input, and :meth:`GeneratedWorkflow.expected_status`,
the status the faults it injected must lead to.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import attrs
from hypothesis import strategies as st

from trioflow._builder import BranchBuilder, WorkflowBuilder, branch, when, workflow
from trioflow._definition import ChoiceStep, ParallelStep, Step, TaskStep, WorkflowDefinition
from trioflow._retry import NO_RETRY, Retry
from trioflow._snapshot import Status

from ._scripted import Behaviour, Hangs, Raises, Returns, ScriptedJob, Sleeps


class ScriptedFailure(Exception):
    """The error generated jobs raise."""


#: Sleep lengths and step timeouts are disjoint, so "sleep == timeout" races never arise.
SLEEPS = (0.5, 2.0, 10.0)
TIMEOUTS = (1.0, 5.0)


def job_behaviours(*, may_hang: bool = False, timing: bool = True) -> st.SearchStrategy[tuple[Behaviour, ...]]:
    """A job's script: up to two faulty behaviours (raise n times, sleep then raise or return,
    hang if ``may_hang``), then a final return. ``timing=False``: no sleeps or hangs."""
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
    return st.builds(
        Retry,
        max_attempts=st.integers(1, 4),
        interval=st.sampled_from((0.1, 1.0, 3.0)) if timing else st.just(0.0),
        backoff_rate=st.sampled_from((1.0, 2.0)),
        max_interval=st.sampled_from((3.0, 30.0)),  # never below the largest interval
    )


@attrs.frozen(kw_only=True)
class GeneratedWorkflow:
    """A generated definition, the jobs it names (register them all), and its input."""

    definition: WorkflowDefinition
    jobs: dict[str, ScriptedJob]
    input: dict[str, Any]

    def reset(self) -> None:
        """Start every job's script over (before running the workflow again)."""
        for job in self.jobs.values():
            job.reset()

    def step_succeeds(self, step: TaskStep) -> bool:
        """Whether a task step's script yields a success within its retry policy."""
        assert isinstance(step.run, str)
        job = self.jobs[step.run]
        for attempt in range(1, (step.retry or NO_RETRY).max_attempts + 1):
            if _attempt_succeeds(job.behaviour(attempt), step.timeout):
                return True
        return False

    def expected_status(self) -> Status:
        """``completed`` if no step on the path the flags choose fails for good, else ``failed``."""
        return "completed" if self._lane_ok(self.definition.steps) else "failed"

    def _lane_ok(self, steps: tuple[Step, ...]) -> bool:
        by_name = {s.name: s for s in steps}
        name: str | None = steps[0].name
        while name is not None:
            step = by_name[name]
            if isinstance(step, TaskStep) and not self.step_succeeds(step):
                return False
            if isinstance(step, ParallelStep) and not all(self._lane_ok(b.steps) for b in step.branches):
                return False
            if isinstance(step, ChoiceStep) and step.name.startswith("again-"):
                name = step.default  # a loop's body always succeeds: only where it ends matters
            elif isinstance(step, ChoiceStep):
                flag = self.input["flags"][int(step.name.split("-")[1])]
                name = step.choices[0].next if flag else step.default
            else:
                name = None if step.end else step.next
        return True


def _attempt_succeeds(b: Behaviour, timeout: float | None) -> bool:
    if isinstance(b, Hangs):
        return False  # only generated with a timeout
    if isinstance(b, Sleeps):
        if timeout is not None and b.seconds > timeout:
            return False
        return isinstance(b.then, Returns)
    return isinstance(b, Returns)


@st.composite
def workflows(
    draw: st.DrawFn, *, max_steps: int = 4, max_depth: int = 2, timing: bool = True, parallel: bool = True,
    loops: bool = False,
) -> GeneratedWorkflow:
    """A valid random workflow with scripted jobs (see the module docstring).

    ``timing=False`` leaves out sleeps, hangs, step timeouts and retry intervals (for runs on a
    real clock); ``parallel=False`` leaves out parallel steps; ``loops=True`` adds loops: a
    step run again and again through a choice's back-edge (``body-N`` then ``again-N``), a
    given number of times, its job always succeeding (its compensation may fail).
    """
    ids = itertools.count()
    jobs: dict[str, ScriptedJob] = {}
    flags: list[bool] = []

    def task(builder: WorkflowBuilder | BranchBuilder, name: str, next: str | None = None) -> None:
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
        if draw(st.booleans()):  # saga style: execute(ctx), compensate(ctx, result)
            builder.step(name, f"job-{name}", compensate, retry=retry, timeout=timeout, next=next)
        else:
            builder.task(name, job=f"job-{name}", compensate=compensate, retry=retry, timeout=timeout, next=next)

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

    def lane(builder: WorkflowBuilder | BranchBuilder, depth: int) -> None:
        kinds = ["task", "choice"] + (["parallel"] if parallel and depth < max_depth else []) + (
            ["loop"] if loops else [])
        for _ in range(draw(st.integers(1, max_steps))):
            kind = draw(st.sampled_from(kinds))
            n = next(ids)
            if kind == "task":
                task(builder, f"t{n}")
            elif kind == "loop":
                loop(builder, n)
            elif kind == "choice":
                flag = len(flags)
                flags.append(draw(st.booleans()))
                join = f"join-{n}"
                builder.choice(f"choice-{flag}-{n}", choices=[when(_flag(flag), next=f"yes-{n}")], default=f"no-{n}")
                task(builder, f"yes-{n}", next=join)
                task(builder, f"no-{n}", next=join)
                builder.pass_(join)
            else:
                branches = []
                for _ in range(draw(st.integers(1, 3))):
                    b = branch(f"b{next(ids)}")
                    lane(b, depth + 1)
                    branches.append(b.build())
                builder.parallel(f"p{n}", branches=branches, on_error=draw(st.sampled_from(("fail-fast", "wait-all"))))

    builder = workflow("generated")
    lane(builder, 0)
    return GeneratedWorkflow(definition=builder.build(), jobs=jobs, input={"flags": flags})


def _flag(i: int) -> Any:
    return lambda ctx: ctx.input["flags"][i]


def _fewer_runs_than(step: str, times: int) -> Any:
    return lambda ctx: sum(r.step_name == step for r in ctx.instance.history) < times


def task_steps(definition: WorkflowDefinition) -> Iterator[TaskStep]:
    """Every task step of a definition, branches included."""
    for step, _ in definition.lookup.values():
        if isinstance(step, TaskStep):
            yield step
