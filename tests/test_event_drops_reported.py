"""A subscriber whose queue is full loses events; every run of such drops is logged, as it begins
(naming the subscriber: a stream's pattern, an async callback's name) and as it ends (how many
events it lost), so that a service learns of each gap in its metrics, not only of the first."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf


def _drops(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("trioflow") and r.levelno == logging.WARNING and "drop" in r.getMessage()]


async def _run(engine: Any, n: int) -> None:
    for iid in [await engine.start("w") for _ in range(n)]:
        await engine.wait(iid)


async def _step(ctx: Any) -> int:
    return 1


async def test_each_run_of_drops_of_a_stream_is_logged_as_it_begins_and_as_it_ends(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="trioflow"):
        async with tf.open_engine() as engine:
            engine.register(tf.workflow("w").step("a", _step).build())
            async with engine.events.subscribe("workflow.completed", buffer=2) as stream:
                await _run(engine, 5)  # 2 queued, 3 dropped
                assert len(_drops(caplog)) == 1
                await stream.receive()
                await stream.receive()
                await _run(engine, 1)  # queued again: the run of drops is over
                await _run(engine, 4)  # 1 more queued, 3 dropped: a second run
    first, over, second = _drops(caplog)
    assert first == ("event stream of 'workflow.completed' is too slow (its queue holds 2); dropping events for it"
                     " (1 dropped in all)")
    assert over == "event stream of 'workflow.completed' takes events again, after 3 dropped"
    assert second.endswith("(4 dropped in all)")


async def test_an_async_callback_that_falls_behind_is_named_by_its_function(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    gate = trio.Event()

    async def export_metrics(event: dict[str, Any]) -> None:
        await gate.wait()

    with caplog.at_level(logging.WARNING, logger="trioflow"):
        async with tf.open_engine() as engine:
            engine.register(tf.workflow("w").step("a", _step).build())
            engine.events.on("workflow.*", export_metrics, buffer=1)
            await _run(engine, 3)
            gate.set()
    first = next(m for m in _drops(caplog) if "too slow" in m)
    assert "callback " in first and "export_metrics" in first and "'workflow.*'" in first
