"""Slots and the queue of instances waiting for one (an adversarial review; each test failed
before its fix)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


async def test_a_restart_with_max_running_1_does_not_deadlock_a_parent_on_its_grandchild(
        autojump_clock: trio.testing.MockClock) -> None:
    async def job(data: Any) -> Any:
        await trio.sleep(10)
        return data

    kid = tf.workflow("kid").task("a", job=job).build()
    grand = tf.workflow("grand").child("k", workflow="kid").build()
    top = (tf.workflow("top").parallel("p", branches=[
        tf.branch("one").child("g", workflow="grand").build(),
        tf.branch("two").task("t", job=job).build()]).build())

    adapter, clock = MemoryAdapter(), virtual_wall_clock()
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        for wf in (kid, grand, top):
            engine.register(wf)
        iid = await engine.start("top")
        await trio.sleep(5)           # top waits on grand, grand on kid, kid is in its job
    async with open_test_engine(adapter=adapter, clock=clock, max_running=1) as engine:
        engine.register(top)
        engine.register(grand)
        await trio.sleep(1)           # (registering all three at once deadlocks ~60% of runs)
        engine.register(kid)
        with trio.fail_after(1000):
            assert (await engine.wait(iid)).status == "completed"


# -- 2. on_start / workflow.started lost for a queued instance across a restart ----------------
async def test_cancelled_parked_instances_compensate_within_max_running(
        autojump_clock: trio.testing.MockClock) -> None:
    busy = {"now": 0, "peak": 0}

    async def work(secs: float) -> None:
        busy["now"] += 1
        busy["peak"] = max(busy["peak"], busy["now"])
        try:
            await trio.sleep(secs)
        finally:
            busy["now"] -= 1

    async def reserve(data: Any) -> str:
        await work(1)
        return "r"

    async def release(data: Any, result: Any = None) -> None:
        await work(50)                       # a slow compensation

    async def block(data: Any) -> None:
        await work(500)

    saga = tf.workflow("saga").step("reserve", reserve, release).wait("later", seconds=10_000).build()
    blocker = tf.workflow("blocker").task("b", job=block).build()
    async with open_test_engine(max_running=1) as engine:
        engine.register(saga)
        engine.register(blocker)
        ids = [await engine.start("saga") for _ in range(3)]
        await trio.sleep(30)                 # each reserved, then left memory to wait
        await engine.start("blocker")        # takes the only slot for 500 s
        await trio.sleep(1)
        for i in ids:
            assert await engine.cancel(i) is True
        with trio.fail_after(5000):
            assert [(await engine.wait(i)).status for i in ids] == ["cancelled"] * 3
        assert busy["peak"] <= 1, busy       # got 4: the blocker's job and 3 compensations at once


# -- 4. listed under no status while a status change is being stored ---------------------------


async def test_a_queued_delayed_start_has_no_start_time_until_its_delay_is_over(
        autojump_clock: trio.testing.MockClock) -> None:
    gate = trio.Event()

    async def held(data: Any) -> None:
        if data == "first":
            await gate.wait()

    async with open_test_engine(max_running=1) as engine:
        engine.register(tf.workflow("w").task("a", job=held).build())
        first = await engine.start("w", "first")
        delayed = await engine.start("w", "later", delay=100)   # queued behind first
        await trio.sleep(10)
        gate.set()                                               # admitted; its delay runs on
        await trio.sleep(10)
        waiting = await engine.get_instance(delayed)
        done = await engine.wait(delayed)
        assert (await engine.wait(first)).status == "completed"
    assert waiting is not None and waiting.started_at is None, waiting
    assert done.status == "completed" and done.started_at is not None
