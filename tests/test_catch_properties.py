"""Errors as values (issue 13) as properties over generated workflows with catchers, succeed and
fail steps: ``trioflow.testing.strategies.workflows(catches=True)``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import attrs
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow._definition import FailStep, ParallelStep, TaskStep
from trioflow.testing import Returns, ScriptedJob, explore_crashes, open_test_engine, raises, returns, sleeps
from trioflow.testing.strategies import GeneratedWorkflow, task_steps, workflows


def run_generated(gen: GeneratedWorkflow) -> tuple[tf.WorkflowInstance, list[dict[str, Any]], dict[str, Any]]:
    """Run ``gen`` on a test engine: the instance, its events, and its shared data at the end
    (from the ``on_complete``/``on_failed`` hook's result)."""
    gen.reset()
    results: list[tf.WorkflowResult] = []
    definition = attrs.evolve(gen.definition, hooks=tf.Hooks(on_complete=results.append, on_failed=results.append))

    async def main() -> tuple[tf.WorkflowInstance, list[dict[str, Any]]]:
        async with open_test_engine() as engine:
            for name, job in gen.jobs.items():
                engine.jobs.register(name, job)
            engine.register(definition)
            events: list[dict[str, Any]] = []
            engine.events.on("workflow.*", events.append)
            instance = await engine.wait(await engine.start("generated", gen.input))
        return instance, events

    instance, events = tf.testing.run(main)
    assert len(results) == 1
    return instance, events, results[0].data


def catching_steps(gen: GeneratedWorkflow) -> dict[str, TaskStep | ParallelStep]:
    return {s.name: s for s, _ in gen.definition.lookup.values() if isinstance(s, (TaskStep, ParallelStep)) and s.catch}


@given(workflows(catches=True))
def test_a_run_with_catches_ends_as_the_model_says(gen: GeneratedWorkflow) -> None:
    instance, events, data = run_generated(gen)
    assert instance.status == gen.expected_status()
    assert instance.completed_at is not None and instance.current_step is None
    if instance.status == "failed":
        assert instance.error_name in gen.expected_error_names()
    main_caught = [r.step_name for r in instance.history if r.lane == "" and r.status == "caught"]
    assert main_caught == gen.expected_caught(), "the main line's caught steps"
    caught = [r for r in instance.history if r.status == "caught"]
    catching = catching_steps(gen)
    for r in caught:
        assert r.step_name in catching, f"{r.step_name} has no catcher but was caught"
        assert r.output == {"error": r.error_name, "cause": r.cause}
    # workflow.step.caught follows the checkpoint that stores the caught record: a branch's
    # checkpoint cancelled by a failing fail-fast sibling emits nothing (as for step.completed),
    # though a later checkpoint stores the record. The main line is never cancelled here.
    announced = [(e["step_name"], e["error"], e["cause"]) for e in events if e["event"] == "workflow.step.caught"]
    records = iter([(r.step_name, r.error_name, r.cause) for r in caught])
    assert all(a in records for a in announced), "every event is of a caught record, in order"
    assert [(r.step_name, r.error_name, r.cause) for r in caught if r.lane == ""] == [
        a for a in announced if a[0] in main_caught]
    # A fail step's cause(ctx) reads ctx.error: the failure caught most recently in its lane.
    for r in instance.history:
        step = gen.definition.lookup[r.step_name][0]
        if isinstance(step, FailStep) and callable(step.cause):
            before = [x for x in instance.history[:r.seq] if x.lane == r.lane and x.status == "caught"]
            seen = before[-1].error_name.lower() if before and before[-1].error_name else "nothing"
            assert r.cause == f"declined after {seen}" and r.error_name == "Declined"
    # Only a step's last catcher can match (decoys match nothing) and only it may carry result=.
    for name, step in catching.items():
        key = step.catch[-1].result
        if key is None:
            continue
        mine = [r for r in caught if r.step_name == name]
        if mine:
            assert data[key] == mine[-1].output
        else:
            assert key not in data


@given(workflows(catches=True))
def test_a_failure_after_catches_compensates_every_completed_execution_once_newest_first(
    gen: GeneratedWorkflow,
) -> None:
    instance, _, _ = run_generated(gen)
    compensable = {s.name for s in task_steps(gen.definition) if s.compensate is not None}
    ran = [r for r in instance.history if r.status in ("completed", "compensated") and r.step_name in compensable]
    if instance.status == "completed":
        assert instance.compensated_steps == () and instance.compensation_errors == {}
        assert all(r.status == "completed" for r in ran)
    else:
        compensated = [r for r in reversed(ran) if r.status == "compensated"]
        assert list(instance.compensated_steps) == [r.step_name for r in compensated], "newest first, once each"
    for step in task_steps(gen.definition):
        if step.compensate is None:
            continue
        undo = gen.jobs[str(step.compensate)]
        successes = sum(isinstance(undo.behaviour(c.number), Returns) for c in undo.calls)
        executions = [r for r in ran if r.step_name == step.name]
        assert successes == sum(r.status == "compensated" for r in executions), step.name
        if not executions:
            # Caught (or failed, or cancelled) executions only: nothing to undo.
            assert undo.calls == [], f"{step.name} never completed but was compensated"
        elif instance.status == "failed" and step.name not in instance.compensation_errors:
            assert all(r.status == "compensated" for r in executions), f"an execution of {step.name} leaked"
    # A caught execution keeps its error and its status: it is never the one compensated.
    assert all(r.error_name is None for r in instance.history if r.status == "compensated")


@settings(max_examples=20)
@given(workflows(max_steps=3, catches=True))
def test_crash_exploration_with_catches_finds_no_divergence_on_memory(gen: GeneratedWorkflow) -> None:
    async def main() -> None:
        report = await explore_crashes(gen.definition, gen.input, jobs=gen.jobs)
        assert report.baseline.status == gen.expected_status()
        assert len(report.points) == 2 * report.writes  # after each write, and with each write lost

    tf.testing.run(main)


@settings(max_examples=5)
@given(workflows(max_steps=3, timing=False, catches=True), st.integers(0, 10**9))
def test_crash_exploration_with_catches_finds_no_divergence_on_sqlite(gen: GeneratedWorkflow, salt: int) -> None:
    async def main(tmp: str) -> None:
        files = iter(range(10**6))
        report = await explore_crashes(
            gen.definition, gen.input, jobs=gen.jobs,
            adapter_factory=lambda: tf.adapters.SQLiteAdapter(Path(tmp) / f"{next(files)}.db"))
        assert report.baseline.status == gen.expected_status()

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, tmp)


# -- found by the properties above -------------------------------------------------------------


async def _slow_alert(*args: Any) -> None:
    await trio.sleep(1)  # an on_step_failed hook that takes a while (an alert, a log shipper)


def test_after_a_restart_a_parallel_steps_catch_predicate_sees_the_recorded_failure() -> None:
    """A fail-fast parallel step whose branch failure a sibling's checkpoint stored before the
    parallel step ended (here: while the slow hook runs). Resumed from that checkpoint, the
    branch's failure is known only from its record (the failed step is not run again), so a
    catch predicate gets a ``tf.RecordedError`` with the recorded ``error_name`` and ``cause``
    (docs/errors.md): a predicate written on those routes the same with or without a crash."""

    def declined(error: BaseException) -> bool:
        assert isinstance(error, (RuntimeError, tf.RecordedError))
        return tf.error_name(error) == "RuntimeError"

    wf = (tf.workflow("w")
          .parallel("p", branches=[
              tf.branch("fails").task("charge", job=ScriptedJob(raises(RuntimeError, "declined"))).build(),
              tf.branch("works").task("a", job=ScriptedJob(sleeps(0.5, returns(1))))
                                .task("b", job=ScriptedJob(sleeps(5, returns(2)))).build(),
          ], on_error="fail-fast", catch=[tf.Catch(errors=declined, next="notify")])
          .succeed("done")
          .pass_("notify", result="notified")
          .with_hooks(on_step_failed=_slow_alert)
          .build())

    async def main() -> None:
        report = await explore_crashes(wf, check=False)
        assert (report.baseline.status, report.baseline.output) == ("completed", "notified")
        assert [(p.after, p.divergence) for p in report.divergent] == []

    tf.testing.run(main)
