"""Crash exploration: stop the engine after every snapshot write, resume, compare outcomes.

The engine "dies" right after write k: its whole nursery is cancelled at once (instance actors
do not compensate on an engine shutdown) and every later write is swallowed before it reaches
storage, as if the process had been killed. A fresh engine then resumes from that storage.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from trioflow._builder import index_steps
from trioflow._definition import ParallelStep, Step, StepFn, TaskStep, WorkflowDefinition
from trioflow._engine import open_engine
from trioflow._errors import UnknownJobError
from trioflow._snapshot import InstanceState, Status
from trioflow.actors._run import is_async
from trioflow.adapters._codec import decode
from trioflow.adapters._memory import MemoryAdapter
from trioflow.adapters._protocol import Adapter, InstanceRecord

from ._scripted import ScriptedJob

INSTANCE_ID = "explored-instance"


@attrs.frozen(kw_only=True)
class Outcome:
    """What one run ended with, and how often each step's callables ran."""

    status: Status
    output: Any
    compensated_steps: tuple[str, ...]
    calls: Mapping[str, int]


@attrs.frozen(kw_only=True)
class CrashPoint:
    """One explored crash: after which write, what that write recorded, what followed."""

    write: int
    after: str
    outcome: Outcome
    divergence: str | None


@attrs.frozen(kw_only=True)
class CrashReport:
    """The fault-free outcome and every explored crash point."""

    baseline: Outcome
    writes: int
    points: tuple[CrashPoint, ...]

    @property
    def divergent(self) -> tuple[CrashPoint, ...]:
        return tuple(p for p in self.points if p.divergence is not None)


class CrashDivergenceError(AssertionError):
    """A crash point whose resumed outcome differs from the fault-free run."""

    def __init__(self, message: str, report: CrashReport) -> None:
        super().__init__(message)
        self.report = report


async def explore_crashes(
    workflow: WorkflowDefinition,
    input: Any = None,
    *,
    jobs: Mapping[str, StepFn] | None = None,
    services: Mapping[str, Any] | None = None,
    adapter_factory: Callable[[], Adapter] = MemoryAdapter,
    check: bool = True,
) -> CrashReport:
    """Run ``workflow`` once without faults, then once per snapshot write k, dying after write k
    and resuming in a fresh engine over the same storage.

    Each crash run must end like the fault-free run: same final status, output and compensated
    steps in order, and every step's callables run as often, except that a step in flight at the
    crash may run once more. ``ScriptedJob`` objects (in ``jobs`` or in the definition) are
    reset before every run. ``adapter_factory()`` gives fresh, unopened storage for each run.
    Raises :class:`CrashDivergenceError` naming the first crash point that differs (unless
    ``check=False``); returns the :class:`CrashReport`.
    """
    counter = _Counter()
    instrumented = _instrument(workflow, dict(jobs or {}), counter)
    scripted = _scripted_jobs(workflow, jobs or {})

    async def one_run(crash_after: int | None) -> tuple[Outcome, _CrashingAdapter]:
        for job in scripted:
            job.reset()
        counter.counts = collections.Counter()
        storage = adapter_factory()
        crashing = _CrashingAdapter(storage, crash_after)
        with trio.CancelScope() as crashing.process:
            async with open_engine(adapter=crashing, services=services, threads=False) as engine:
                engine.register(instrumented)
                await engine.start(workflow.name, input, instance_id=INSTANCE_ID)
                instance = await engine.wait(INSTANCE_ID)
        if crashing.crashed:
            async with open_engine(adapter=storage, services=services, threads=False) as engine:
                engine.register(instrumented)
                instance = await engine.wait(INSTANCE_ID)
        outcome = Outcome(
            status=instance.status, output=instance.output, compensated_steps=instance.compensated_steps,
            calls=dict(counter.counts),
        )
        return outcome, crashing

    baseline, clean = await one_run(None)
    points = []
    for k in range(1, clean.writes + 1):
        outcome, _ = await one_run(k)
        after = _describe_write(clean.states, k)
        point = CrashPoint(write=k, after=after, outcome=outcome, divergence=_compare(baseline, outcome))
        points.append(point)
    report = CrashReport(baseline=baseline, writes=clean.writes, points=tuple(points))
    if check and report.divergent:
        first = report.divergent[0]
        raise CrashDivergenceError(
            f"workflow {workflow.name!r}: crash after snapshot write {first.write} of {clean.writes}"
            f" ({first.after}), then resume: {first.divergence}", report,
        )
    return report


class _Counter:
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()


def _compare(base: Outcome, got: Outcome) -> str | None:
    if got.status != base.status:
        return f"final status {got.status!r}, the fault-free run ended {base.status!r}"
    if got.output != base.output:
        return f"output {got.output!r}, the fault-free run gave {base.output!r}"
    if got.compensated_steps != base.compensated_steps:
        return (f"compensated steps {list(got.compensated_steps)}, the fault-free run compensated"
                f" {list(base.compensated_steps)}")
    for key in sorted(set(base.calls) | set(got.calls)):
        want, ran = base.calls.get(key, 0), got.calls.get(key, 0)
        if not want <= ran <= want + 1:
            return f"{key} ran {ran} times, the fault-free run {want} (one more is allowed for a step in flight)"
    return None


def _describe_write(states: list[InstanceState], k: int) -> str:
    state = states[k - 1]
    if k == 1:
        return "instance created"
    before = states[k - 2]
    if len(state.completed) > len(before.completed):
        return f"step {state.completed[-1]!r} completed"
    if len(state.compensated) > len(before.compensated):
        return f"step {state.compensated[-1]!r} compensated"
    if len(state.compensation_errors) > len(before.compensation_errors):
        return "a compensation failed for good"
    if state.phase == "compensating" and before.phase != "compensating":
        return f"failure recorded ({state.error}); compensation starts"
    return f"instance {state.status}"


class _CrashingAdapter:
    """Delegates to real storage, counts writes, and kills the engine after write ``crash_after``."""

    def __init__(self, inner: Adapter, crash_after: int | None) -> None:
        self.inner = inner
        self.crash_after = crash_after
        self.writes = 0
        self.crashed = False
        self.states: list[InstanceState] = []
        self.process: trio.CancelScope | None = None

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def create(self, instance_id: str, workflow_name: str, status: Status, snapshot: bytes) -> bool:
        await self._before_write()
        created = await self.inner.create(instance_id, workflow_name, status, snapshot)
        self._after_write(snapshot)
        return created

    async def save(self, instance_id: str, workflow_name: str, status: Status, snapshot: bytes) -> None:
        await self._before_write()
        await self.inner.save(instance_id, workflow_name, status, snapshot)
        self._after_write(snapshot)

    async def load(self, instance_id: str) -> InstanceRecord | None:
        return await self.inner.load(instance_id)

    async def list_instances(self, workflow_name: str, status: Status | None = None) -> list[InstanceRecord]:
        return await self.inner.list_instances(workflow_name, status)

    async def resumable(self) -> list[InstanceRecord]:
        return await self.inner.resumable()

    async def delete(self, instance_id: str) -> bool:
        return await self.inner.delete(instance_id)

    async def _before_write(self) -> None:
        if self.crashed:
            await trio.sleep_forever()  # a dead process writes nothing more

    def _after_write(self, snapshot: bytes) -> None:
        self.writes += 1
        if self.crash_after is None:
            self.states.append(decode(snapshot))
        elif self.writes == self.crash_after:
            self.crashed = True
            assert self.process is not None
            self.process.cancel()


def _instrument(definition: WorkflowDefinition, jobs: dict[str, StepFn], counter: _Counter) -> WorkflowDefinition:
    """A copy of ``definition`` whose task callables count their calls per step."""

    def resolve(ref: StepFn | str, step: TaskStep) -> StepFn:
        if isinstance(ref, str):
            if ref not in jobs:
                raise UnknownJobError(f"step {step.name!r} uses job {ref!r}, which is not in jobs=")
            return jobs[ref]
        return ref

    def task(step: TaskStep) -> TaskStep:
        run = _counted(step.name, resolve(step.run, step), counter)
        compensate = step.compensate
        if compensate is not None:
            compensate = _counted(f"{step.name} (compensate)", resolve(compensate, step), counter)
        return attrs.evolve(step, run=run, compensate=compensate)

    def lane(steps: tuple[Step, ...]) -> tuple[Step, ...]:
        out: list[Step] = []
        for s in steps:
            if isinstance(s, TaskStep):
                out.append(task(s))
            elif isinstance(s, ParallelStep):
                out.append(attrs.evolve(s, branches=tuple(attrs.evolve(b, steps=lane(b.steps)) for b in s.branches)))
            else:
                out.append(s)
        return tuple(out)

    steps = lane(definition.steps)
    lookup: dict[str, tuple[Step, str]] = {}
    index_steps(lookup, "", steps)
    return attrs.evolve(definition, steps=steps, lookup=lookup, job_names=frozenset())


def _counted(key: str, fn: StepFn, counter: _Counter) -> StepFn:
    if is_async(fn):
        async def counted_async(*args: Any) -> Any:
            counter.counts[key] += 1
            return await fn(*args)
        return counted_async

    def counted(*args: Any) -> Any:
        counter.counts[key] += 1
        return fn(*args)
    return counted


def _scripted_jobs(definition: WorkflowDefinition, jobs: Mapping[str, StepFn]) -> list[ScriptedJob]:
    found = [j for j in jobs.values() if isinstance(j, ScriptedJob)]
    for step, _ in definition.lookup.values():
        if isinstance(step, TaskStep):
            found += [f for f in (step.run, step.compensate) if isinstance(f, ScriptedJob)]
    unique: dict[int, ScriptedJob] = {id(j): j for j in found}
    return list(unique.values())
