"""Durations as numbers or ``timedelta`` (issue 16, item 5)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf


def test_every_duration_takes_a_timedelta() -> None:
    retry = tf.Retry(interval=timedelta(milliseconds=500), max_interval=timedelta(minutes=1))
    assert (retry.interval, retry.max_interval) == (0.5, 60.0)
    wf = (tf.workflow("w").task("a", job="j", timeout=timedelta(seconds=90), retry=retry)
          .step("b", lambda ctx: None, timeout=timedelta(hours=1))
          .with_timeout(timedelta(days=2)).with_compensation_timeout(timedelta(minutes=5)).build())
    assert [s.timeout for s in wf.steps] == [90.0, 3600.0]
    assert (wf.timeout, wf.compensation_timeout) == (172800.0, 300.0)
    assert tf.step("c", lambda ctx: None, timeout=timedelta(seconds=2)).timeout == 2.0


def test_bad_timedeltas_are_refused_like_bad_numbers() -> None:
    with pytest.raises(tf.DefinitionError, match="timeout must be a number of seconds > 0"):
        tf.workflow("w").with_timeout(timedelta(0))
    with pytest.raises(tf.DefinitionError, match="step 'a'.*timeout"):
        tf.workflow("w").task("a", job="j", timeout=timedelta(seconds=-1)).build()
    with pytest.raises(tf.DefinitionError, match="interval"):
        tf.Retry(interval=timedelta(seconds=-1))


async def test_a_timedelta_timeout_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(data: Any) -> None:
        await trio.sleep(10)

    wf = tf.workflow("w").task("a", job=slow, timeout=timedelta(seconds=2)).build()
    async with tf.open_engine() as engine:
        engine.register(wf)
        start = trio.current_time()
        inst = await engine.wait(await engine.start("w"))
        assert inst.status == "failed" and inst.error_name == "StepTimeoutError"
        assert trio.current_time() - start == pytest.approx(2.0)


async def test_storage_retry_for_takes_a_timedelta_and_refuses_nonsense() -> None:
    async with tf.open_engine(storage_retry_for=timedelta(seconds=5)):
        pass
    with pytest.raises(tf.InvalidArgumentError, match="storage_retry_for"):
        async with tf.open_engine(storage_retry_for=-1):
            pass
