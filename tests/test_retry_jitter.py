"""Retry jitter: each delay less a random share of up to ``jitter`` of it, drawn once as the
attempt fails and stored with the next attempt's time, so that instances failing on one
dependency together spread their retries, and a restart keeps the time drawn."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import trioflow as tf
from trioflow.testing import open_test_engine


@given(jitter=st.floats(0, 1), interval=st.floats(0, 30), attempt=st.integers(1, 5))
def test_a_jittered_delay_lies_between_its_share_off_and_the_full_delay(
    jitter: float, interval: float, attempt: int,
) -> None:
    r = tf.Retry(max_attempts=10, interval=interval, max_interval=30.0, jitter=jitter)
    full = r.delay(attempt)
    delay = r.next_delay(attempt, RuntimeError("x"))
    assert delay is not None and full * (1 - jitter) - 1e-9 <= delay <= full


def test_no_jitter_by_default_and_the_delays_are_the_formulas() -> None:
    r = tf.Retry(max_attempts=5)
    assert r.jitter == 0.0
    assert [r.next_delay(n, RuntimeError("x")) for n in range(1, 5)] == [1.0, 2.0, 4.0, 8.0]


def test_full_jitter_spreads_delays_over_the_whole_range() -> None:
    r = tf.Retry(max_attempts=2, interval=10.0, jitter=1.0)
    delays = [r.next_delay(1, RuntimeError("x")) for _ in range(1_000)]
    assert all(d is not None for d in delays)
    assert min(d for d in delays if d is not None) < 1.0 and max(d for d in delays if d is not None) > 9.0


def test_no_sleep_after_the_last_attempt_whatever_the_jitter() -> None:
    assert tf.Retry(max_attempts=2, jitter=1.0).next_delay(2, RuntimeError("x")) is None


@pytest.mark.parametrize("jitter", [-0.1, 1.5, math.nan, math.inf, True, "0.5", None])
def test_a_jitter_outside_zero_to_one_is_refused_naming_it(jitter: Any) -> None:
    with pytest.raises(tf.DefinitionError, match="Retry.jitter must be a number from 0 to 1"):
        tf.Retry(jitter=jitter)


async def test_instances_failing_together_retry_at_moments_of_their_own_and_keep_them_across_a_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Twenty instances whose step fails at once: with full jitter their second attempts come
    at twenty moments within the 100 s delay, not all at 100 s. A restart while they wait
    keeps each one's stored time: the attempts come when they were due."""
    first: dict[str, float] = {}
    second: dict[str, float] = {}

    async def flaky(_: Any) -> str:
        iid = tf.current_step().instance_id
        if iid not in first:
            first[iid] = trio.current_time()
            raise ConnectionError("the dependency is down")
        second[iid] = trio.current_time()
        return "ok"

    wf = (tf.workflow("jittered")
          .task("call", job=flaky, retry=tf.Retry(max_attempts=2, interval=100.0, max_interval=100.0, jitter=1.0))
          .build())
    adapter = tf.adapters.MemoryAdapter()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        ids = [await engine.start("jittered") for _ in range(20)]
        with trio.fail_after(1):
            while len(first) < 20:
                await trio.sleep(0.001)
        due = {iid: (await engine.get_instance(iid)).waiting["retry"] for iid in ids}  # type: ignore[union-attr]
    assert len(set(due.values())) == 20  # twenty draws
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        for iid in ids:
            assert (await engine.wait(iid)).status == "completed"
    spread = [second[iid] - first[iid] for iid in ids]
    assert all(0 <= s <= 100.0 + 0.5 for s in spread), spread
    assert max(spread) - min(spread) > 10.0, spread  # not all at the full delay
