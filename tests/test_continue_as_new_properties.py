"""Continue-as-new over generated workflows (``workflows(continues=True)``): an instance that
continues as new before its last run ends as the model says of that run, with the runs it was
given, none of the runs before in its history or compensated; and crash exploration at every
write of such an instance (the continues' restarts included) ends as the run without a crash."""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow.testing import explore_crashes
from trioflow.testing.strategies import GeneratedWorkflow, workflows

# (Signals sent right after the start: kept, as pending signals are, for the run whose receive
# steps take them.)
from test_fanout_properties import run_generated


@given(workflows(continues=True, catches=True, maps=True, waits=True, loops=True))
def test_an_instance_that_continues_ends_as_the_model_says_of_its_last_run(gen: GeneratedWorkflow) -> None:
    instance = run_generated(gen)
    assert instance.status == gen.expected_status()
    assert instance.runs == gen.expected_runs() >= 1
    assert instance.input["runs_left"] == 0  # (the last run's)
    assert len(gen.jobs["job-tick"].calls) == gen.expected_runs()
    # Only the last run's history, which begins at the choice that sent it to its body.
    assert [r.step_name for r in instance.history[:2]] == ["runs-left", "body"]
    assert "tick" not in {r.step_name for r in instance.history}
    # What ran before the run is never compensated, as a completed instance's steps are not.
    assert gen.jobs["undo-tick"].calls == [] and "tick" not in instance.compensated_steps


@settings(max_examples=10)
@given(workflows(max_steps=3, continues=True, catches=True, waits=True))
def test_crash_exploration_of_an_instance_that_continues_finds_no_divergence(gen: GeneratedWorkflow) -> None:
    async def main() -> None:
        report = await explore_crashes(gen.definition, gen.input, jobs=gen.jobs, signals=gen.signals)
        assert report.baseline.runs == gen.expected_runs()

    tf.testing.run(main)


@settings(max_examples=3)
@given(workflows(max_steps=2, timing=False, continues=True), st.integers(0, 10**9))
def test_crash_exploration_of_an_instance_that_continues_on_sqlite(gen: GeneratedWorkflow, salt: int) -> None:
    async def main(tmp: str) -> None:
        files = iter(range(10**6))
        report = await explore_crashes(
            gen.definition, gen.input, jobs=gen.jobs,
            adapter_factory=lambda: tf.adapters.SQLiteAdapter(Path(tmp) / f"{salt}-{next(files)}.db"))
        assert report.baseline.runs == gen.expected_runs()

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, tmp)
