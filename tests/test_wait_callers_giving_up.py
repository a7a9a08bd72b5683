"""Callers of ``wait()`` on an instance waiting out of memory (a timer of a day) that give up
(their own timeouts: an HTTP handler's, say) leave nothing behind in the engine: before, each
such instance kept the event its callers had waited on until it next ran, so a service polling
many parked instances held an object for each of them. One still waiting keeps it, and is
woken when the instance ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import SQLiteAdapter
from trioflow.testing import virtual_wall_clock


async def ok(ctx: Any) -> str:
    return "done"


async def test_callers_that_give_up_waiting_on_parked_instances_leave_nothing(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    wf = tf.workflow("later").wait("day", seconds=86_400).step("go", ok).build()
    async with tf.open_engine(adapter=SQLiteAdapter(tmp_path / "w.db"), clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        ids = [await engine.start("later") for _ in range(50)]
        await trio.sleep(10)  # parked: out of memory
        assert not engine._live

        async def impatient(iid: str) -> None:
            with trio.move_on_after(5):
                await engine.wait(iid)

        async with trio.open_nursery() as nursery:
            for iid in ids:
                for _ in range(3):
                    nursery.start_soon(impatient, iid)
        assert engine._next_run == {}

        patient: list[str] = []

        async def waits(iid: str) -> None:
            patient.append((await engine.wait(iid)).status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waits, ids[0])
            nursery.start_soon(impatient, ids[0])
            await trio.sleep(60)
            assert list(engine._next_run) == [ids[0]]  # one still waits on it
        assert patient == ["completed"]
        assert engine._next_run == {}
