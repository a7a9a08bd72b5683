"""A parent stores its child step's start before it stores the child (from an adversarial
review; failed before the change): an engine that stops in between, on a real SQLite file, and
a next engine that ends the parent badly before it takes the step up again (a cancel at once,
or the parent's workflow timeout, passed while no engine ran) no longer leaves the completed
child behind, uncompensated and not listed by its parent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.adapters import SQLiteAdapter
from trioflow.testing import virtual_wall_clock


async def reserve(ctx: Any) -> str:
    return "r-1"


async def slow(ctx: Any) -> int:
    await trio.sleep(50)
    return 1


@pytest.mark.parametrize("ending", ["cancel", "timeout"])
async def test_a_parent_ended_before_it_took_its_child_step_up_again_undoes_the_child(
    tmp_path: Path, ending: str, autojump_clock: trio.testing.MockClock,
) -> None:
    released: list[str] = []

    async def release(ctx: Any, result: str) -> None:
        released.append(result)

    child = tf.workflow("child").step("reserve", reserve, release).build()
    parent = tf.workflow("parent").child("ch", workflow="child").step("after", slow)
    parent = (parent.with_timeout(100) if ending == "timeout" else parent).build()
    clock = virtual_wall_clock()
    # The first engine closes after more and more scheduler passes, so that one of its stops
    # falls between the parent's checkpoint and the child's create, whichever comes first.
    for passes in range(30):
        path = tmp_path / f"{passes}.db"
        released.clear()
        async with tf.open_engine(adapter=SQLiteAdapter(path), threads=False, clock=clock) as engine:
            engine.register(child)
            engine.register(parent)
            await engine.start("parent", instance_id="P")
            for _ in range(passes):
                await trio.sleep(0)
        if ending == "timeout":
            await trio.sleep(200)
        async with tf.open_engine(adapter=SQLiteAdapter(path), threads=False, clock=clock) as engine:
            engine.register(child)
            engine.register(parent)
            if ending == "cancel":
                await engine.cancel("P")
            ended = await engine.wait("P")
            stored = await engine.get_instance("P/ch#1")
            if stored is None:
                assert ended.children in ((), ("P/ch#1",)), passes  # the child was never stored
                continue
            done = await engine.wait("P/ch#1")
        assert ended.status == ("cancelled" if ending == "cancel" else "timed_out")
        assert done.id in ended.children, f"after {passes} passes: the parent does not list its child"
        if done.status != "cancelled":
            assert (done.status, released) == ("compensated", ["r-1"]), f"after {passes} passes: {done.status}"
