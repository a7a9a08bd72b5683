"""The public testing kit: time-skipping engine, pytest fixture, scripted jobs."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import ScriptedJob, hangs, raises, returns, sleeps


async def test_the_fixture_runs_on_virtual_time(trioflow_engine: tf.Engine) -> None:
    flaky = ScriptedJob(raises(ConnectionError, "busy", times=2), returns("ok"))
    wf = tf.workflow("w").task("t", job=flaky, retry=tf.Retry(max_attempts=3, interval=3600, max_interval=86_400)).build()
    trioflow_engine.register(wf)
    real = time.monotonic()
    inst = await trioflow_engine.wait(await trioflow_engine.start("w", {"n": 1}))
    assert time.monotonic() - real < 5  # two hours of retry sleeps took no real time
    assert inst.status == "completed" and inst.output == "ok"
    assert [c.number for c in flaky.calls] == [1, 2, 3]
    assert [c.time - flaky.calls[0].time for c in flaky.calls] == [0, 3600, 3600 + 7200]
    assert flaky.calls[0].args == ({"n": 1},)


async def test_plain_def_jobs_run_inline_so_virtual_time_stands_still(trioflow_engine: tf.Engine) -> None:
    def blocking(data: Any) -> float:
        time.sleep(0.05)
        return trio.current_time()

    trioflow_engine.register(tf.workflow("w").task("t", job=blocking).build())
    start = trio.current_time()
    inst = await trioflow_engine.wait(await trioflow_engine.start("w"))
    assert inst.output == start


def test_open_test_engine_refuses_a_real_clock() -> None:
    async def main() -> None:
        async with tf.testing.open_test_engine():
            pass

    with pytest.raises(tf.testing.NotOnMockClockError, match="needs trio's MockClock"):
        trio.run(main)


def test_the_kit_is_reachable_from_a_plain_import() -> None:
    import subprocess
    import sys

    code = "import trioflow as tf; print(tf.testing.open_test_engine.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "open_test_engine", done.stderr


def test_run_helper_skips_time() -> None:
    async def main() -> float:
        await trio.sleep(86_400)
        return trio.current_time()

    assert tf.testing.run(main) >= 86_400


async def test_scripted_behaviours_play_in_order_and_the_last_repeats(autojump_clock: trio.testing.MockClock) -> None:
    job = ScriptedJob(returns(1), sleeps(5, then=raises(KeyError("k"))), returns(2, times=2), hangs())
    assert await job() == 1
    t0 = trio.current_time()
    with pytest.raises(KeyError):
        await job()
    assert trio.current_time() - t0 == 5
    assert [await job(), await job()] == [2, 2]
    with trio.move_on_after(100) as scope:
        await job()
    assert scope.cancelled_caught
    with trio.move_on_after(100) as scope:
        await job()  # the last behaviour repeats
    assert scope.cancelled_caught and len(job.calls) == 6
    job.reset()
    assert await job() == 1


def test_a_behaviour_must_play_at_least_once() -> None:
    with pytest.raises(ValueError, match="at least once"):
        ScriptedJob(returns(1, times=0))
