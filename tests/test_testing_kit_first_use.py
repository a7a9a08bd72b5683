"""What a new user of the testing kit runs into first (from a newcomer's review): a crash
explorer given storage that is not fresh says so, and a refused ScriptedJob shows in a
traceback without a second error."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import trioflow as tf
from trioflow.testing import ScriptedJob, explore_crashes, returns


async def _charge(ctx: tf.WorkflowContext) -> str:
    return "charged"


async def test_explore_crashes_refuses_an_adapter_factory_that_gives_the_same_file_twice(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """``adapter_factory()`` must give fresh storage for each run: one that returns the same
    SQLite file every time made the second run find the first run's finished instance, and the
    error named a signal (``InstanceNotLiveError``), not the factory."""
    flow = tf.workflow("pay").step("charge", _charge).build()
    path = tmp_path / "same.db"
    with pytest.raises(tf.InvalidArgumentError, match="adapter_factory.*fresh, empty storage"):
        await explore_crashes(flow, {}, adapter_factory=lambda: tf.adapters.SQLiteAdapter(path))


async def test_explore_crashes_with_a_new_file_per_run_explores(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    flow = tf.workflow("pay").step("charge", _charge).build()
    files = iter(range(1_000))
    report = await explore_crashes(
        flow, {}, adapter_factory=lambda: tf.adapters.SQLiteAdapter(tmp_path / f"run-{next(files)}.db"))
    assert report.baseline.status == "completed" and report.points


def test_a_refused_scripted_job_has_a_repr_and_a_message_naming_it() -> None:
    with pytest.raises(tf.InvalidArgumentError, match=r"ScriptedJob 'charge': each behaviour") as caught:
        ScriptedJob((returns(1),), name="charge")  # type: ignore[arg-type]
    assert "unpack them" in str(caught.value)
    frame_self = caught.traceback[-1].frame.f_locals["self"]
    assert repr(frame_self).startswith("ScriptedJob('charge', ")
