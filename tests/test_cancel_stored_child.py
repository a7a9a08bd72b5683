"""A child that no engine can run when its parent is cancelled (its workflow is not registered
with the jobs it uses, within the parent's compensation timeout) is stored cancelled: the engine
that runs it next compensates it, rather than run it on to completion, never undone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_a_child_whose_workflow_is_not_registered_when_its_parent_is_cancelled_is_compensated_later(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str) -> None:
    done: list[str] = []

    async def reserve(data: Any) -> str:
        done.append("reserve")
        return "r"

    async def release(data: Any) -> None:
        done.append("release")

    async def forever(data: Any) -> None:
        await trio.sleep_forever()

    child = tf.workflow("kid").task("reserve", job=reserve, compensate=release).task("wait", job=forever).build()
    parent = tf.workflow("p").child("c", workflow="kid").with_compensation_timeout(5).build()
    memory = MemoryAdapter()

    def adapter() -> Any:
        return memory if storage == "memory" else SQLiteAdapter(tmp_path / "flows.db")

    clock = virtual_wall_clock()
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.register(parent)
        engine.register(child)
        pid = await engine.start("p")
        await trio.sleep(1)  # the child reserved, and waits in its second step
    kid = f"{pid}/c#1"
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.register(parent)  # not the child's workflow
        await trio.sleep(1)
        assert await engine.cancel(pid)
        with trio.fail_after(60):
            assert (await engine.wait(pid)).status == "cancelled"
        stored = await engine.get_instance(kid)
        assert stored is not None and stored.status == "running"  # stored compensating
    assert done == ["reserve"]
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.register(parent)
        engine.register(child)
        with trio.fail_after(60):
            ended = await engine.wait(kid)
    assert ended.status == "cancelled", ended.status
    assert ended.compensated_steps == ("reserve",)
    assert done == ["reserve", "release"]


@pytest.mark.parametrize("late", [4.9, 5.0, 5.1])
async def test_a_stored_cancel_is_not_lost_to_a_registration_about_then(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, late: float) -> None:
    """The child's workflow is registered about when the parent's wait for it (5 s) runs out:
    the child, resumed by that registration before or after its cancel is stored, ends
    cancelled and compensated, never completed."""
    done: list[str] = []

    async def reserve(data: Any) -> str:
        done.append("reserve")
        return "r"

    async def release(data: Any) -> None:
        done.append("release")

    async def slow(data: Any) -> None:
        await trio.sleep(100)

    child = tf.workflow("kid").task("reserve", job=reserve, compensate=release).task("wait", job=slow).build()
    parent = tf.workflow("p").child("c", workflow="kid").with_compensation_timeout(5).build()
    db, clock = tmp_path / "flows.db", virtual_wall_clock()
    async with open_test_engine(adapter=SQLiteAdapter(db), clock=clock) as engine:
        engine.register(parent)
        engine.register(child)
        pid = await engine.start("p")
        await trio.sleep(1)
    kid = f"{pid}/c#1"
    async with open_test_engine(adapter=SQLiteAdapter(db), clock=clock) as engine:
        engine.register(parent)
        await trio.sleep(1)
        assert await engine.cancel(pid)

        async def register_late() -> None:
            await trio.sleep(late)
            engine.register(child)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(register_late)
            with trio.fail_after(300):
                assert (await engine.wait(pid)).status == "cancelled"
        with trio.fail_after(300):
            ended = await engine.wait(kid)  # (its workflow registered by now)
    assert ended.status in ("cancelled", "compensated"), ended.status
    assert done == ["reserve", "release"]
