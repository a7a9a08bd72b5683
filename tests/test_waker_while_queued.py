"""The waker while the due instances are all on their way (woken, and queued for a slot every
other run holds): it does not ask storage for due rows every 50 ms meanwhile (it did: an hour
of it was 72,000 questions; now it asks twice a second at most), yet a timer that falls due meanwhile is still taken up at its
time (once a slot frees, it runs in its turn, on time if its slot was free).

On trio's MockClock, on the MemoryAdapter and SQLite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf

from storages import DueWatch, engine_on, finish, watched


def timer(name: str, seconds: float, ran: dict[str, float]) -> tf.WorkflowDefinition:
    async def after(data: Any) -> None:
        ran[name] = trio.current_time()

    return tf.workflow(name).wait("w", seconds=seconds).task("after", job=after).build()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_storage_is_not_asked_for_due_rows_every_moment_while_they_wait_for_a_slot(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str,
) -> None:
    watch = DueWatch(busy_at=1000)
    gate = trio.Event()
    ran: dict[str, float] = {}

    async def hold(data: Any) -> None:
        await gate.wait()

    async with engine_on(watched(kind, tmp_path, watch)(), max_running=1) as engine:
        engine.register(timer("early", 100, ran))
        engine.register(tf.workflow("block").task("hold", job=hold).build())
        early = await engine.start("early")
        await trio.sleep(10)  # it has left memory
        await engine.start("block")  # every slot taken from here on
        await trio.sleep(100)  # "early" is woken at 100 s, and queued for a slot
        watch.reset()
        await trio.sleep(3600)
        # Twice a second at most while it waits for its slot (it was 20 times).
        assert watch.total <= 2 * 3600 + 10, watch.total
        gate.set()
        assert (await finish(engine, early)).status == "completed"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_timer_due_while_the_woken_wait_for_a_slot_fires_on_time_once_one_frees(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str,
) -> None:
    """``max_running=2``: "block" holds one slot until 1,000 s; "early" (due at 100 s) is woken
    and runs in the other, then holds it (its step after the timer runs until 2,000 s: it is on
    its way all that time, due in storage until it ends); "late", due at 1,500 s, fires at its
    time in the slot "block" freed."""
    watch = DueWatch(busy_at=1000)
    gate = trio.Event()
    ran: dict[str, float] = {}

    async def hold(data: Any) -> None:
        await gate.wait()

    async def long_after(data: Any) -> None:
        ran["early"] = trio.current_time()
        await trio.sleep(1900)

    early_wf = tf.workflow("early").wait("w", seconds=100).task("after", job=long_after).build()
    async with engine_on(watched(kind, tmp_path, watch)(), max_running=2) as engine:
        engine.register(early_wf)
        engine.register(timer("late", 1500, ran))
        engine.register(tf.workflow("block").task("hold", job=hold).build())
        t0 = trio.current_time()
        early = await engine.start("early")
        late = await engine.start("late")
        await trio.sleep(10)
        await engine.start("block")
        await trio.sleep(990)
        gate.set()
        assert (await finish(engine, late)).status == "completed"
        assert (await finish(engine, early)).status == "completed"
    assert 100 <= ran["early"] - t0 <= 103
    assert 1500 <= ran["late"] - t0 <= 1503
