"""The engine's semantics as properties over generated workflows and faults (issue 5),
written with the public kit: trioflow.testing and trioflow.testing.strategies."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow._definition import ChoiceStep, ParallelStep, Step, TaskStep
from trioflow.testing import Raises, Returns, ScriptedJob, Sleeps, explore_crashes, open_test_engine
from trioflow.testing.strategies import GeneratedWorkflow, task_steps, workflows


def run_generated(gen: GeneratedWorkflow) -> tuple[tf.WorkflowInstance, list[dict[str, Any]]]:
    gen.reset()

    async def main() -> tuple[tf.WorkflowInstance, list[dict[str, Any]]]:
        async with open_test_engine() as engine:
            for name, job in gen.jobs.items():
                engine.jobs.register(name, job)
            engine.register(gen.definition)
            events: list[dict[str, Any]] = []
            engine.events.on("workflow.*", events.append)
            instance = await engine.wait(await engine.start("generated", gen.input))
            return instance, events

    return tf.testing.run(main)


def completion_order(instance: tf.WorkflowInstance) -> list[str]:
    return [n for n, r in instance.step_results.items() if r.status in ("completed", "compensated")]


def lane_path(gen: GeneratedWorkflow, steps: tuple[Step, ...]) -> list[Step]:
    """The steps a lane runs when nothing fails, following the generated flags."""
    by_name = {s.name: s for s in steps}
    path, name = [], steps[0].name
    while name is not None:
        step = by_name[name]
        path.append(step)
        if isinstance(step, ChoiceStep):
            name = step.choices[0].next if gen.input["flags"][int(step.name.split("-")[1])] else step.default
        else:
            name = None if step.end else step.next
    return path


def inside(step: ParallelStep) -> dict[str, str]:
    """Step name -> name of the branch of ``step`` it is in (nested steps included)."""
    out: dict[str, str] = {}

    def walk(steps: tuple[Step, ...], branch: str) -> None:
        for s in steps:
            out[s.name] = branch
            if isinstance(s, ParallelStep):
                for b in s.branches:
                    walk(b.steps, branch)

    for b in step.branches:
        walk(b.steps, b.name)
    return out


def direct(step: ParallelStep) -> set[str]:
    """Names of the steps that sit directly in one of ``step``'s branch lanes."""
    return {s.name for b in step.branches for s in b.steps}


@given(workflows())
def test_every_instance_ends_with_the_status_its_faults_imply(gen: GeneratedWorkflow) -> None:
    instance, _ = run_generated(gen)
    assert instance.status == gen.expected_status()
    assert instance.completed_at is not None and instance.current_step is None


@given(workflows())
def test_each_completed_compensable_step_is_compensated_once_newest_first(gen: GeneratedWorkflow) -> None:
    instance, _ = run_generated(gen)
    compensable = {s.name for s in task_steps(gen.definition) if s.compensate is not None}
    done = [n for n in completion_order(instance) if n in compensable]
    if instance.status == "completed":
        assert instance.compensated_steps == () and instance.compensation_errors == {}
        return
    handled = list(reversed(done))
    assert list(instance.compensated_steps) == [n for n in handled if n not in instance.compensation_errors]
    assert set(instance.compensation_errors) <= set(handled)
    for step in task_steps(gen.definition):
        if step.compensate is None:
            continue
        undo = gen.jobs[str(step.compensate)]
        successes = sum(isinstance(undo.behaviour(c.number), Returns) for c in undo.calls)
        if step.name in instance.compensated_steps:
            assert successes == 1, f"{step.name} compensated {successes} times"
        elif step.name not in done:
            assert undo.calls == [], f"{step.name} never completed but was compensated"


@given(workflows())
def test_fail_fast_starts_no_sibling_step_after_the_first_failure(gen: GeneratedWorkflow) -> None:
    _, events = run_generated(gen)
    for step, _lane in gen.definition.lookup.values():
        if not isinstance(step, ParallelStep) or step.on_error != "fail-fast":
            continue
        branch_of = inside(step)
        # A branch has failed when a step of its own lane fails; a failure deeper down (inside a
        # nested parallel step) becomes the branch's only once that inner step has wound down.
        own = direct(step)
        failures = [i for i, e in enumerate(events)
                    if e["event"] == "workflow.step.failed" and e["step_name"] in own]
        if not failures:
            continue
        first = failures[0]
        failed_branch = branch_of[events[first]["step_name"]]
        late = [e["step_name"] for e in events[first:] if e["event"] == "workflow.step.started"
                and branch_of.get(e["step_name"], failed_branch) != failed_branch]
        assert late == [], f"siblings of {failed_branch} started {late} after its failure"


@given(workflows())
def test_wait_all_runs_every_branch_to_its_end(gen: GeneratedWorkflow) -> None:
    instance, _ = run_generated(gen)
    results = instance.step_results
    for step, _lane in gen.definition.lookup.values():
        if not isinstance(step, ParallelStep) or step.on_error != "wait-all" or step.name not in results:
            continue
        if results[step.name].status == "skipped":
            continue
        for branch in step.branches:
            for s in lane_path(gen, branch.steps):
                assert s.name in results, f"branch {branch.name} of {step.name} stopped before {s.name}"
                if results[s.name].status == "failed":
                    break


def attempt_duration(behaviour: Any, timeout: float | None) -> float:
    seconds = behaviour.seconds if isinstance(behaviour, Sleeps) else (float("inf") if not isinstance(
        behaviour, (Raises, Returns)) else 0.0)
    return seconds if timeout is None else min(seconds, timeout)


@given(workflows(parallel=False))
def test_retries_happen_when_the_policy_says(gen: GeneratedWorkflow) -> None:
    run_generated(gen)
    for step in task_steps(gen.definition):
        assert isinstance(step, TaskStep) and isinstance(step.run, str)
        job = gen.jobs[step.run]
        policy = step.retry or tf.Retry(max_attempts=1)
        assert len(job.calls) <= policy.max_attempts
        for before, after in zip(job.calls, job.calls[1:]):
            expected = attempt_duration(job.behaviour(before.number), step.timeout) + policy.delay(before.number)
            assert after.time - before.time == pytest.approx(expected), step.name


@given(workflows())
def test_event_streams_are_well_formed(gen: GeneratedWorkflow) -> None:
    instance, events = run_generated(gen)
    names = [e["event"] for e in events]
    terminal = [n for n in names if n in ("workflow.completed", "workflow.failed", "workflow.cancelled",
                                         "workflow.timed_out")]
    assert names[0] == "workflow.started"
    assert len(terminal) == 1 and names[-1] == terminal[0]
    progress = [e["progress"] for e in events if e["event"] == "workflow.progress"]
    assert progress == sorted(progress)
    assert (progress[-1:] == [100]) == (instance.status == "completed")


@settings(max_examples=15)
@given(workflows(max_steps=3))
def test_crash_exploration_finds_no_divergence_on_memory(gen: GeneratedWorkflow) -> None:
    async def main() -> None:
        report = await explore_crashes(gen.definition, gen.input, jobs=gen.jobs)
        assert report.writes >= 2 and len(report.points) == 2 * report.writes

    tf.testing.run(main)


@settings(max_examples=5)
@given(workflows(max_steps=3, timing=False), st.integers(0, 10**9))
def test_crash_exploration_finds_no_divergence_on_sqlite(gen: GeneratedWorkflow, salt: int) -> None:
    async def main(tmp: str) -> None:
        files = iter(range(10**6))
        await explore_crashes(gen.definition, gen.input, jobs=gen.jobs,
                              adapter_factory=lambda: tf.adapters.SQLiteAdapter(Path(tmp) / f"{next(files)}.db"))

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, tmp)


def test_the_explorer_names_the_crash_point_that_diverges() -> None:
    calls = {"n": 0}

    async def not_idempotent(data: Any) -> int:
        calls["n"] += 1  # state outside the job's script: a resume sees a different world
        return calls["n"]

    wf = (tf.workflow("w").task("a", job=not_idempotent).task("b", job=ScriptedJob(Returns(value=1)))
          .pass_("out", transform=lambda ctx: ctx.steps["a"]).build())

    async def main() -> None:
        with pytest.raises(tf.testing.CrashDivergenceError,
                           match=r"crash after snapshot write 1 of 4 \(instance created\), then resume: output 2"):
            await explore_crashes(wf)
        calls["n"] = 0
        report = await explore_crashes(wf, check=False)
        assert [(p.write, p.lost, p.after) for p in report.points] == [
            (1, False, "instance created"), (1, True, "write lost (instance created), after nothing stored"),
            (2, False, "step 'a' completed"), (2, True, "write lost (step 'a' completed), after instance created"),
            (3, False, "step 'b' completed"), (3, True, "write lost (step 'b' completed), after step 'a' completed"),
            (4, False, "step 'out' completed; instance completed"),
            (4, True, "write lost (step 'out' completed; instance completed), after step 'b' completed")]

    tf.testing.run(main)


# -- storage v2: loops and identity per execution (issue 12) -----------------------------------


@given(workflows(loops=True))
def test_every_execution_of_a_compensable_step_is_compensated_once_newest_first(gen: GeneratedWorkflow) -> None:
    instance, _ = run_generated(gen)
    compensable = {s.name for s in task_steps(gen.definition) if s.compensate is not None}
    ran = [r for r in instance.history if r.status in ("completed", "compensated") and r.step_name in compensable]
    assert len({r.id for r in instance.history}) == len(instance.history), "every execution has its own id"
    if instance.status == "completed":
        assert instance.compensated_steps == () and all(r.status == "completed" for r in ran)
        return
    compensated = [r for r in reversed(ran) if r.status == "compensated"]
    assert list(instance.compensated_steps) == [r.step_name for r in compensated], "newest first, once each"
    for step in task_steps(gen.definition):
        if step.compensate is None:
            continue
        undo = gen.jobs[str(step.compensate)]
        successes = sum(isinstance(undo.behaviour(c.number), Returns) for c in undo.calls)
        executions = [r for r in ran if r.step_name == step.name]
        assert successes == sum(r.status == "compensated" for r in executions), step.name
        if step.name not in instance.compensation_errors:
            assert all(r.status == "compensated" for r in executions), f"an execution of {step.name} leaked"


@given(workflows(loops=True))
def test_ctx_steps_is_the_newest_execution_and_history_keeps_them_all(gen: GeneratedWorkflow) -> None:
    instance, _ = run_generated(gen)
    for name, result in instance.step_results.items():
        runs = [r for r in instance.history if r.step_name == name]
        if runs:
            assert result == runs[-1] and [r.execution for r in runs] == list(range(1, len(runs) + 1))
    assert [r.seq for r in instance.history] == list(range(len(instance.history)))


@settings(max_examples=15)
@given(workflows(max_steps=3, loops=True))
def test_crash_exploration_of_looping_workflows_finds_no_divergence(gen: GeneratedWorkflow) -> None:
    async def main() -> None:
        report = await explore_crashes(gen.definition, gen.input, jobs=gen.jobs)
        assert len(report.points) == 2 * report.writes

    tf.testing.run(main)


def test_a_loop_that_reserved_twice_releases_twice_newest_first() -> None:
    """The issue's reproduction: reserve -> loop back to reserve once -> a failing step."""
    released: list[str] = []
    counter = {"n": 0}

    async def reserve(data: Any) -> str:
        counter["n"] += 1
        return f"hold-{counter['n']}"

    async def release(output: Any) -> None:
        released.append(output)

    async def fail(data: Any) -> None:
        raise RuntimeError("card declined")

    wf = (tf.workflow("w").task("reserve", job=reserve, compensate=release)
          .choice("again", choices=[tf.when(lambda ctx: ctx.steps["reserve"] == "hold-1", next="reserve")],
                  default="pay")
          .task("pay", job=fail).build())

    async def main() -> tf.WorkflowInstance:
        async with open_test_engine() as engine:
            engine.register(wf)
            return await engine.wait(await engine.start("w"))

    instance = tf.testing.run(main)
    assert instance.status == "failed" and released == ["hold-2", "hold-1"]
    assert instance.compensated_steps == ("reserve", "reserve")
    assert [(r.id, r.status) for r in instance.history] == [
        ("reserve#1", "compensated"), ("again#1", "completed"), ("reserve#2", "compensated"),
        ("again#2", "completed"), ("pay#1", "failed")]


def wide(branches: int) -> tf.WorkflowDefinition:
    return tf.workflow("wide").parallel("p", branches=[
        tf.branch(f"b{i}").task(f"t{i}", job=ScriptedJob(Returns(value=i))).build() for i in range(branches)
    ]).task("after", job=ScriptedJob(Raises(error=RuntimeError))).build()


def test_crash_exploration_of_a_wide_parallel_step_finds_no_divergence() -> None:
    async def main() -> None:
        report = await explore_crashes(wide(12))
        assert report.baseline.status == "failed"

    tf.testing.run(main)


def test_the_explorer_runs_a_step_again_when_its_write_is_lost() -> None:
    # A job that charges a card and returns how many times this world was charged: idempotent
    # under a crash after any write (no step runs twice), but not when the crash cuts the
    # write short that records it, which at-least-once execution runs again.
    worlds = {"n": 0}
    charges: Counter[int] = Counter()

    def fresh_world() -> tf.adapters.MemoryAdapter:
        worlds["n"] += 1
        return tf.adapters.MemoryAdapter()

    async def charge(data: Any) -> int:
        charges[worlds["n"]] += 1
        return charges[worlds["n"]]

    wf = (tf.workflow("pay").task("charge", job=charge).task("mail", job=ScriptedJob(Returns(value=1)))
          .pass_("out", transform=lambda ctx: ctx.steps["charge"]).build())

    async def main() -> None:
        report = await explore_crashes(wf, adapter_factory=fresh_world, check=False, lost_writes=False)
        assert not report.divergent
        with pytest.raises(tf.testing.CrashDivergenceError,
                           match=r"crash while making snapshot write 2 of 4 \(write lost \(step \'charge\' completed\), after instance created\), then"
                                 r" resume: step 'charge' \(charge#1, attempt 1\) ran again after the crash and returned 2,"
                                 r" where its first run returned 1: it is not idempotent"):
            await explore_crashes(wf, adapter_factory=fresh_world)

    tf.testing.run(main)
