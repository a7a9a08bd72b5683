"""Crash exploration over waits, signals, delayed starts and durable retry delays (issue 14):
every crash point ends as the run without a crash, each signal taken exactly once."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import trio.testing

import trioflow as tf
from trioflow.testing import Raises, Returns, ScriptedJob, explore_crashes


def waiting_workflow() -> tf.WorkflowDefinition:
    return (tf.workflow("w")
            .task("reserve", job=ScriptedJob(Returns(value="r")), compensate=ScriptedJob(Returns(value=None)))
            .wait("cool-off", seconds=7200)
            .receive("approve", signal="go", timeout=86400,
                     catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="escalated")])
            .receive("confirm", signal="go")
            .task("pay", job=ScriptedJob(Raises(error=ValueError, message="busy", times=1), Returns(value="paid")),
                  retry=tf.Retry(max_attempts=3, interval=30))
            .succeed("done")
            .pass_("escalated", result="escalated")
            .build())


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_crashes_at_every_write_of_a_waiting_workflow_end_as_without(
    autojump_clock: trio.testing.MockClock, storage: str, tmp_path: Path,
) -> None:
    counter = itertools.count()
    factory: Any = tf.adapters.MemoryAdapter if storage == "memory" else (
        lambda: tf.adapters.SQLiteAdapter(tmp_path / f"{next(counter)}.db"))
    report = await explore_crashes(waiting_workflow(), signals=[("go", {"n": 1}), ("go", {"n": 2})],
                                   adapter_factory=factory)
    assert report.baseline.status == "completed" and report.baseline.output == "paid"
    steps = [(r.step_name, r.status, r.output) for r in report.baseline.history]
    assert ("approve", "completed", {"n": 1}) in steps and ("confirm", "completed", {"n": 2}) in steps
    assert len(report.points) >= 6 and report.divergent == ()


async def test_crashes_with_a_signal_that_never_comes_end_as_without(autojump_clock: trio.testing.MockClock) -> None:
    report = await explore_crashes(waiting_workflow(), signals=[])
    assert report.baseline.status == "completed" and report.baseline.output == "escalated"
    assert report.divergent == ()
