"""The testing kit's generated workflows with durable waits (``workflows(waits=True)``): timers
of half a second to a day, and receive steps whose signal is sent or not (``gen.signals``).
What the kit's model predicts (status, error names, the steps a catch routes) is what the
engine does; every completed compensable step is compensated once, newest first; crashes at
every checkpoint end as a run without them."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow._definition import ReceiveStep, WaitStep
from trioflow.testing import explore_crashes
from trioflow.testing.strategies import GeneratedWorkflow, task_steps, workflows

from test_fanout_properties import run_generated


@settings(max_examples=80)
@given(workflows(waits=True, catches=True))
def test_generated_waits_end_as_the_model_says(gen: GeneratedWorkflow) -> None:
    instance = run_generated(gen)
    assert instance.status == gen.expected_status(), (instance.error, gen.expected_error_names())
    if instance.status == "failed":
        assert instance.error_name in gen.expected_error_names()
    payloads = dict(gen.signals)
    for record in instance.history:
        if record.step_name.startswith("r-") and record.status == "completed":
            assert record.output == payloads[f"sig-{record.step_name[2:]}"], record


@settings(max_examples=60)
@given(workflows(waits=True))
def test_generated_waits_compensate_every_completed_execution_once_newest_first(gen: GeneratedWorkflow) -> None:
    instance = run_generated(gen)
    compensable = {s.name for s in task_steps(gen.definition) if s.compensate is not None}
    ran = [r for r in instance.history if r.status in ("completed", "compensated") and r.step_name in compensable]
    if instance.status == "completed":
        assert instance.compensated_steps == ()
        return
    errors = set(instance.compensation_errors)
    assert all(r.step_name in errors for r in ran if r.status == "completed"), "a completed execution was not undone"
    assert list(instance.compensated_steps) == [r.step_name for r in reversed(ran) if r.status == "compensated"]


@settings(max_examples=20)
@given(workflows(waits=True, max_steps=3, catches=True))
def test_crash_exploration_of_generated_waits_finds_no_divergence(gen: GeneratedWorkflow) -> None:
    async def main() -> None:
        report = await explore_crashes(gen.definition, gen.input, jobs=gen.jobs, signals=list(gen.signals))
        assert report.baseline.status == gen.expected_status()

    tf.testing.run(main)


def test_generation_draws_day_long_timers_and_receives_that_time_out() -> None:
    """Not vacuous: the strategy draws a timer that leaves memory (a day) and a receive whose
    signal is not sent, and the model says that receive fails the run (uncaught)."""
    def waits_a_day_and_times_out(gen: GeneratedWorkflow) -> bool:
        steps = [s for s, _ in gen.definition.lookup.values()]
        sent = {name for name, _ in gen.signals}
        return (any(isinstance(s, WaitStep) and s.seconds == 86_400.0 for s in steps)
                and any(isinstance(s, ReceiveStep) and s.signal not in sent for s in steps)
                and "SignalTimeoutError" in gen.expected_error_names())

    assert find(workflows(waits=True).map(waits_a_day_and_times_out), bool,
                settings=settings(database=None, max_examples=2_000, phases=[Phase.generate]))


@settings(max_examples=1)
@given(st.data())
def test_waits_without_timing_are_refused(data: Any) -> None:
    with pytest.raises(tf.InvalidArgumentError, match="timing=True"):
        data.draw(workflows(waits=True, timing=False))
