"""An instance whose lanes all rest gives its ``max_running`` slot up at once while instances
wait in the queue for one, rather than after the rest period (``PARK_AFTER`` and 10 ms a
lane), which stays for an engine with slots to spare. Found by a newcomer's review: a map of 20
children of 10 ms each, five at a time, took 4.5 s at ``max_running=1`` (the parent rested a
second for each wave of children that waited for its slot) against 0.2 s at 2.

On trio's MockClock, on the MemoryAdapter and SQLite (``storage`` fixture)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import Adapter, MemoryAdapter

from storages import engine_on, finish, storage  # noqa: F401  (a fixture)


async def _work(data: Any) -> Any:
    await trio.sleep(0.01)
    return data * 10


CHILD = tf.workflow("child").task("work", job=_work).build()
PARENT = tf.workflow("parent").map(
    "m", items=lambda ctx: list(range(20)), max_concurrency=5,
    branch=tf.branch("item").child("c", workflow="child").build(),
).build()


@pytest.mark.parametrize("max_running", [1, 2])
async def test_a_parent_of_children_waiting_for_its_slot_leaves_memory_at_once(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], max_running: int,
) -> None:
    async with engine_on(storage(), max_running=max_running) as engine:
        engine.register(CHILD)
        engine.register(PARENT)
        t0 = trio.current_time()
        done = await finish(engine, await engine.start("parent"))
        took = trio.current_time() - t0
    assert done.status == "completed" and done.output == [i * 10 for i in range(20)]
    # 20 children of 10 ms, one at a time at the most: 0.2 s, and the parent's waves between
    # them (4.5 s at max_running=1 when it rested a second for each). SQLite's commits take
    # real time, which virtual time follows while they run.
    assert took < 1.0, f"took {took:.2f} s of virtual time"


async def test_with_slots_to_spare_resting_lanes_keep_their_rest_period(autojump_clock: trio.testing.MockClock) -> None:
    """Two branches waiting an hour: with no instance queued, the instance stays in memory for
    the rest period (``PARK_AFTER`` and 10 ms a lane) before it leaves."""
    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch(f"b{i}").wait(f"t{i}", seconds=3600).build() for i in range(2)]).build()
    async with engine_on(MemoryAdapter(), max_running=2) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(0.9)
        assert iid in engine._live
        await trio.sleep(1.0)
        assert iid not in engine._live



async def test_a_resting_instance_gives_its_slot_to_one_queued_after_it_rests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``max_running=1``: an instance whose two branches wait an hour holds the slot while it
    rests; a second instance started then waits in the queue, and the first leaves memory at
    once for it, rather than at the end of its rest period (a second and 10 ms a lane)."""
    ran_at: list[float] = []

    async def mark(data: Any) -> None:
        ran_at.append(trio.current_time())

    waits = tf.workflow("w").parallel("p", branches=[
        tf.branch(f"b{i}").wait(f"t{i}", seconds=3600).build() for i in range(2)]).build()
    quick = tf.workflow("q").task("mark", job=mark).build()
    async with engine_on(MemoryAdapter(), max_running=1) as engine:
        engine.register(waits)
        engine.register(quick)
        first = await engine.start("w")
        await trio.sleep(0.1)  # both branches rest; nothing waits for the slot yet
        assert first in engine._live
        t0 = trio.current_time()
        done = await finish(engine, await engine.start("q"))
        assert done.status == "completed"
        assert ran_at and ran_at[0] - t0 < 0.1, ran_at[0] - t0
        assert first not in engine._live
        back = await finish(engine, first)
        assert back.status == "completed"
