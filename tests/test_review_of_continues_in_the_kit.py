"""From a review ("kitc") of 92a8593, ``workflows(continues=True)`` and crash exploration of
instances that continue as new: each test failed until the commit that added this file, but
the guard (the strategy's promises with continues=True and every other option held)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings

import trioflow as tf
from trioflow import when, workflow
from trioflow._definition import MapStep, ReceiveStep
from trioflow.testing import CrashDivergenceError, ScriptedJob, explore_crashes
from trioflow.testing.strategies import GeneratedWorkflow, workflows

from test_fanout_properties import run_generated  # (signals sent right after the start)


def _looping_workflow(next_input: Any) -> tf.WorkflowDefinition:
    """Tick and continue while ``n < 2``; the last run ends with a constant output."""
    return (
        workflow("loop")
        .choice("more", choices=[when(lambda ctx: ctx.input["n"] < 2, next="tick")], default="done")
        .task("tick", job="job-tick")
        .continue_as_new("again", input=next_input)
        .pass_("done", result={"ok": True})
        .build()
    )


async def test_explorer_reports_a_crash_run_that_continued_a_different_number_of_times() -> None:
    """A user explores crashes of a loop that continues as new, whose continue input (a
    transform: README "Continue as new") counts its own calls in a counter kept outside
    trioflow (``before_run`` resets it, so every run without a crash is the same). The
    fault-free run continues twice (``baseline.runs == 2``). A crash that loses the continue's
    write makes the input function run again, so the run after the resume skips a run and the
    instance continues once. The user expects ``CrashDivergenceError`` naming that crash point,
    as the explorer raises "took the path ..." for a choice that decides otherwise when run
    again (docs/testing.md: it raises naming the first crash point whose outcome is wrong), and
    at least a ``divergence`` on the point with ``check=False``.

    Was: ``explore_crashes`` returns; the crash points whose run continued once have
    ``divergence is None``. ``_ends_as``/``_same_run``/``_compare_uncrashed``
    (runtime/testing/_crashes.py) compare status, output, data and the last run's path, never
    ``Outcome.runs``, and ``_check_instance`` skips its checks once the runs differ.
    """
    calls = [0]

    def next_input(ctx: Any) -> dict[str, Any]:
        calls[0] += 1
        return {"n": calls[0]}

    def reset() -> None:
        calls[0] = 0

    definition = _looping_workflow(next_input)
    report = await explore_crashes(definition, {"n": 0}, jobs={"job-tick": ScriptedJob()}, before_run=reset,
                                   check=False)
    assert report.baseline.runs == 2
    points = (*report.points, *report.extra_points)
    wrong = [p for p in points if p.outcome.runs != report.baseline.runs]
    assert wrong, "some crash (a lost continue write) makes the instance continue once"
    assert [p for p in wrong if p.divergence is None] == [], (
        f"{len(wrong)} crash runs continued {sorted({p.outcome.runs for p in wrong})} times, the fault-free"
        f" run {report.baseline.runs}: {[p.after for p in wrong if p.divergence is None]} not reported")
    reset()
    try:
        await explore_crashes(definition, {"n": 0}, jobs={"job-tick": ScriptedJob()}, before_run=reset)
    except CrashDivergenceError:
        pass
    else:
        raise AssertionError("explore_crashes(check=True) raised no CrashDivergenceError")


# -- a guard (passes): the strategy's promises with continues=True and every other option ----------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflows(continues=True, catches=True, maps=True, nested=True, loops=True, waits=True))
def test_guard_continues_composes_with_every_option(gen: GeneratedWorkflow) -> None:
    """Guard: with ``continues=True`` beside every other option, the last run ends as the model
    says (status, error name, caught steps, map outputs), the signals sent right after the start
    reach the last run's receive steps, the input (items included) survives the continues, and a
    reset and rerun ends the same way. (Held over some 1,000 examples in this review.)"""
    instance = run_generated(gen)
    assert instance.status == gen.expected_status()
    if instance.status == "failed":
        assert instance.error_name in gen.expected_error_names()
    assert instance.runs == gen.expected_runs()
    assert instance.input == {**gen.input, "runs_left": 0}
    assert [r.step_name for r in instance.history if r.lane == "" and r.status == "caught"] == gen.expected_caught()
    sent = dict(gen.signals)
    for r in instance.history:
        step = gen.definition.lookup[r.step_name][0]
        if r.status not in ("completed", "compensated"):
            continue
        if isinstance(step, ReceiveStep) and step.signal in sent:
            assert r.output == sent[step.signal]
        if isinstance(step, MapStep) and r.step_name in gen.input.get("items", {}):
            assert r.output == gen.expected_map_output(r.step_name)
    assert "tick" not in {r.step_name for r in instance.history} and gen.jobs["undo-tick"].calls == []
    again = run_generated(gen)
    assert (again.status, again.runs) == (instance.status, instance.runs)
