"""Crash exploration: stop the engine after every snapshot write, resume, check the outcome.

The engine "dies" right after write k: its whole nursery is cancelled at once (instance actors
do not compensate on an engine shutdown) and every later write is swallowed before it reaches
storage, as if the process had been killed. A fresh engine then resumes from that storage.

What is checked is what holds whatever the scheduler does. trio randomizes the order of tasks
that are ready at the same instant, so in a fail-fast parallel step a sibling's step may or may
not get to run before a failing branch cancels it: which steps ran (and so which are compensated)
may differ from run to run. Status and output must equal the fault-free run's; a step that the
crash point had recorded as completed must never run again after the resume, nor a compensation
recorded as done; and each run must compensate exactly its own completed compensable steps,
newest first.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from trioflow._builder import index_steps
from trioflow._definition import ParallelStep, Step, StepFn, TaskStep, WorkflowDefinition, is_async
from trioflow._engine import open_engine
from trioflow._errors import UnknownJobError
from trioflow._snapshot import InstanceState, Status, StepResult
from trioflow._codec import decode_stored
from trioflow._current import current_step
from trioflow.adapters._memory import MemoryAdapter
from trioflow.adapters._protocol import Adapter, StoredInstance

from ._scripted import ScriptedJob

INSTANCE_ID = "explored-instance"


@attrs.frozen(kw_only=True)
class Outcome:
    """What one run ended with, and how often each step's callables ran."""

    status: Status
    output: Any
    compensated_steps: tuple[str, ...]
    compensation_errors: tuple[str, ...]
    #: Steps in the order their completion was recorded (compensated ones included).
    completion_order: tuple[str, ...]
    #: Calls per step callable ("name", "name (compensate)") over the whole run.
    calls: Mapping[str, int]
    #: Of those, the calls made after the resume (empty for the fault-free run).
    calls_after_resume: Mapping[str, int] = attrs.field(factory=dict)
    #: Every step execution, in order.
    history: tuple[StepResult, ...] = ()


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
    signals: Sequence[tuple[str, Any]] = (),
) -> CrashReport:
    """Run ``workflow`` once without faults, then once per snapshot write k, dying after write k
    and resuming in a fresh engine over the same storage.

    Each crash run must end with the fault-free run's status and output; no step recorded as
    completed at the crash point may run again after the resume (the step in flight may), nor a
    compensation recorded as done; and the run must compensate exactly its completed compensable
    steps, newest first (see the module docstring for why this, and not equal call counts, is
    what is compared). Meant for workflows without loops. ``ScriptedJob`` objects (in ``jobs`` or
    in the definition) are reset before every run. ``adapter_factory()`` gives fresh, unopened storage for each run.
    ``signals`` (``(name, payload)`` pairs) are sent to the instance right after it starts, in
    order (a receive step keeps them until it runs): timers and signals are explored like any
    step, every crash run must receive each signal exactly once. Raises
    :class:`CrashDivergenceError` naming the first crash point that differs (unless
    ``check=False``); returns the :class:`CrashReport`.
    """
    counter = _Counter()
    instrumented = _instrument(workflow, dict(jobs or {}), counter)
    scripted = _scripted_jobs(workflow, jobs or {})
    compensable = frozenset(
        s.name for s, _ in workflow.lookup.values() if isinstance(s, TaskStep) and s.compensate is not None
    )
    attempts_of = {
        s.name: (s.retry.max_attempts if s.retry is not None else 1)
        for s, _ in workflow.lookup.values() if isinstance(s, TaskStep)
    }

    async def one_run(crash_after: int | None) -> tuple[Outcome, _CrashingAdapter]:
        for job in scripted:
            job.reset()
        counter.counts = collections.Counter()
        counter.numbers = {}
        storage = adapter_factory()
        crashing = _CrashingAdapter(storage, crash_after)
        sent = 0
        try:
            with trio.CancelScope() as crashing.process:
                async with open_engine(adapter=crashing, services=services, threads=False) as engine:
                    engine.register(instrumented)
                    await engine.start(workflow.name, input, instance_id=INSTANCE_ID)
                    for name, payload in signals:
                        await engine.signal(INSTANCE_ID, name, payload)
                        sent += 1
                    instance = await engine.wait(INSTANCE_ID)
        except Exception:
            # What a process that has died raised on its way down (a wait() that saw its
            # instance stop, an adapter call the crash cut short) is nobody's outcome.
            if not crashing.crashed:
                raise
        before_crash = counter.counts
        counter.counts = collections.Counter()
        if crashing.crashed:
            async with open_engine(adapter=storage, services=services, threads=False) as engine:
                engine.register(instrumented)
                for name, payload in signals[sent:]:  # never acknowledged: the sender sends again
                    await engine.signal(INSTANCE_ID, name, payload)
                instance = await engine.wait(INSTANCE_ID)
        outcome = Outcome(
            history=instance.history,
            status=instance.status, output=instance.output, compensated_steps=instance.compensated_steps,
            compensation_errors=tuple(instance.compensation_errors),
            completion_order=tuple(r.step_name for r in instance.history if r.status in ("completed", "compensated")),
            calls=dict(before_crash + counter.counts), calls_after_resume=dict(counter.counts),
        )
        return outcome, crashing

    baseline, clean = await one_run(None)
    points = []
    for k in range(1, clean.writes + 1):
        outcome, crashed = await one_run(k)
        if crashed.crash_state is None:
            # Branches that end in one scheduler pass share a checkpoint, so how many writes a
            # run makes can vary with scheduling (real threads): this run ended before write k.
            after = f"no crash: this run made {crashed.writes} writes"
            divergence = _compare_uncrashed(baseline, outcome)
        else:
            after = _describe_write(crashed.states, k)
            divergence = _compare(baseline, crashed.crash_state, outcome, compensable, attempts_of)
        points.append(CrashPoint(write=k, after=after, outcome=outcome, divergence=divergence))
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
        #: For each scripted job (by id): the script position each attempt got, in this run.
        self.numbers: dict[int, dict[tuple[str, int, bool], int]] = {}


def _compare_uncrashed(base: Outcome, got: Outcome) -> str | None:
    if (got.status, got.output) != (base.status, base.output):
        return f"a run without a crash ended {got.status!r} with {got.output!r}, another {base.status!r}"
    return None


def _compare(
    base: Outcome, at_crash: InstanceState, got: Outcome, compensable: frozenset[str], attempts_of: Mapping[str, int]
) -> str | None:
    if got.status != base.status:
        return f"final status {got.status!r}, the fault-free run ended {base.status!r}"
    if got.output != base.output:
        return f"output {got.output!r}, the fault-free run gave {base.output!r}"
    stored = at_crash.records
    if [r.id for r in got.history[:len(stored)]] != [r.id for r in stored]:
        return "the history stored before the crash was not kept as it was"
    # Every call after the resume belongs to an execution recorded after the crash point (a step
    # in flight at the crash runs again; a loop runs a step again as a new execution): none to
    # an execution that had completed before it.
    later: collections.Counter[str] = collections.Counter()
    for r in got.history[len(stored):]:
        later[r.step_name] += max(r.attempts, 1)
    for step, calls in got.calls_after_resume.items():
        if step.endswith(" (compensate)"):
            continue
        if calls > later[step]:
            return (f"step {step!r} ran {calls} times after the resume, but only {later[step]} attempts of it"
                    " were recorded after the crash: an execution that had completed ran again")
    done_before = collections.Counter(stored[seq].step_name for seq in at_crash.compensated)
    done_before.update(stored[seq].step_name for seq in at_crash.compensation_errors)
    done_after = collections.Counter(got.compensated_steps) - done_before
    for step in compensable:
        calls = got.calls_after_resume.get(f"{step} (compensate)", 0)
        allowed = (done_after[step] + 1) * attempts_of.get(step, 1)  # + 1: one in flight at the crash
        if calls > allowed:
            return f"step {step!r} had been compensated before the crash but was compensated again"
    if got.status != "completed":
        expected = tuple(
            r.step_name for r in reversed(got.history)
            if r.status in ("completed", "compensated") and r.step_name in compensable and r.compensation_error is None
        )
        if got.compensated_steps != expected:
            return (f"compensated steps {list(got.compensated_steps)}; its completed compensable steps,"
                    f" newest first, are {list(expected)}")
    elif got.compensated_steps:
        return f"a completed run compensated {list(got.compensated_steps)}"
    return None


def _describe_write(states: list[InstanceState], k: int) -> str:
    state = states[k - 1]
    if k == 1:
        return "instance created"
    before = states[k - 2]
    if len(state.records) > len(before.records):
        done = ", ".join(_described(r) for r in state.records[len(before.records):])
        # The main line's last step is recorded by the instance's terminal checkpoint.
        return f"{done}; instance {state.status}" if state.phase == "done" else done
    if len(state.compensated) > len(before.compensated):
        return _described(state.records[state.compensated[-1]], "compensated")
    if len(state.compensation_errors) > len(before.compensation_errors):
        return "a compensation failed for good"
    if state.phase == "compensating" and before.phase != "compensating":
        return f"failure recorded ({state.error}); compensation starts"
    return f"instance {state.status}"


def _described(record: StepResult, status: str | None = None) -> str:
    run = f" (execution {record.execution})" if record.execution > 1 else ""
    return f"step {record.step_name!r}{run} {status or record.status}"


class _CrashingAdapter:
    """Delegates to real storage, counts writes, and kills the engine after write ``crash_after``."""

    def __init__(self, inner: Adapter, crash_after: int | None) -> None:
        self.inner = inner
        self.crash_after = crash_after
        self.writes = 0
        self.crashed = False
        self.states: list[InstanceState] = []
        self.crash_state: InstanceState | None = None
        self.process: trio.CancelScope | None = None

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def create(self, instance_id: str, workflow_name: str, status: Status, *, start: bytes, header: bytes) -> bool:
        await self._before_write()
        created = await self.inner.create(instance_id, workflow_name, status, start=start, header=header)
        await self._after_write(instance_id)
        return created

    async def checkpoint(
        self, instance_id: str, status: Status, header: bytes, records: Sequence[bytes], *,
        first_seq: int, start: bytes | None = None, consumed: Sequence[int] = (), wake_at: float | None = None,
        notify: tuple[str, str, bytes] | None = None,
    ) -> None:
        await self._before_write()
        extra: dict[str, Any] = {"consumed": consumed} if consumed else {}
        if wake_at is not None:
            extra["wake_at"] = wake_at
        if notify is not None:
            extra["notify"] = notify
        await self.inner.checkpoint(instance_id, status, header, records, first_seq=first_seq, start=start, **extra)
        await self._after_write(instance_id)

    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        return await self.inner.send_signal(instance_id, name, payload)

    async def signals(self, instance_id: str) -> list[tuple[int, str, bytes]]:
        return await self.inner.signals(instance_id)

    async def load(self, instance_id: str) -> StoredInstance | None:
        return await self.inner.load(instance_id)

    async def list_instances(
        self, workflow_name: str | None = None, status: Status | None = None, *,
        after: str | None = None, limit: int | None = None, newest_first: bool = False,
    ) -> list[StoredInstance]:
        return await self.inner.list_instances(
            workflow_name, status, after=after, limit=limit, newest_first=newest_first)

    async def resumable(self) -> list[StoredInstance]:
        return await self.inner.resumable()

    async def due(self, before: float, limit: int) -> list[StoredInstance]:
        return await self.inner.due(before, limit)

    async def next_wake(self) -> float | None:
        return await self.inner.next_wake()

    async def delete(self, instance_id: str) -> bool:
        return await self.inner.delete(instance_id)

    def use_clock(self, clock: Callable[[], float]) -> None:
        self.inner.use_clock(clock)

    async def purge(
        self, finished_by: float, limit: int, *, status: Status | None = None, workflow_name: str | None = None,
    ) -> int:
        return await self.inner.purge(finished_by, limit, status=status, workflow_name=workflow_name)

    async def _before_write(self) -> None:
        if self.crashed:
            await trio.sleep_forever()  # a dead process writes nothing more

    async def _after_write(self, instance_id: str) -> None:
        self.writes += 1
        crash = self.writes == self.crash_after
        if crash:
            self.crashed = True  # before anything else can write: this write is the last
            assert self.process is not None
            self.process.cancel()
        with trio.CancelScope(shield=True):
            stored = await self.inner.load(instance_id)
        assert stored is not None
        state = decode_stored(stored)
        self.states.append(state)
        if crash:
            self.crash_state = state


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
    if isinstance(fn, ScriptedJob):
        return _replayed(key, fn, counter)
    if is_async(fn):
        async def counted_async(*args: Any) -> Any:
            counter.counts[key] += 1
            return await fn(*args)
        return counted_async

    def counted(*args: Any) -> Any:
        counter.counts[key] += 1
        return fn(*args)
    return counted


def _replayed(key: str, job: ScriptedJob, counter: _Counter) -> StepFn:
    """A scripted job whose script advances per attempt, not per call: an attempt run again
    after a resume (the one in flight at the crash, or one whose failure was not stored yet)
    gets the behaviour it got before, as a real service would answer the same request the same
    way. Without this, a resumed run would meet a different world and diverge for no fault of
    the engine's."""

    async def replayed(*args: Any) -> Any:
        counter.counts[key] += 1
        step = current_step()
        attempt = (step.execution_id, step.attempt, step.compensating)
        number = counter.numbers.setdefault(id(job), {}).setdefault(attempt, len(counter.numbers[id(job)]) + 1)
        return await job.play(number, *args)

    return replayed


def _scripted_jobs(definition: WorkflowDefinition, jobs: Mapping[str, StepFn]) -> list[ScriptedJob]:
    found = [j for j in jobs.values() if isinstance(j, ScriptedJob)]
    for step, _ in definition.lookup.values():
        if isinstance(step, TaskStep):
            found += [f for f in (step.run, step.compensate) if isinstance(f, ScriptedJob)]
    unique: dict[int, ScriptedJob] = {id(j): j for j in found}
    return list(unique.values())
