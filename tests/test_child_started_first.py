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
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
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


class StopsAtTheChildsCreate(MemoryAdapter):
    """Storage in which the engine stops while it stores the child (as a process killed then):
    the parent has stored its child step's start, the child is not stored."""

    stopping = True

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if self.stopping and instance_id == "P/ch#1":
            await trio.sleep_forever()
        return await super().create(instance_id, *args, **kwargs)


async def test_a_parent_stopped_before_it_stored_its_child_is_taken_up_and_stores_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Its stored wait names a child nothing stored, whose end would never wake it: the waker
    # takes it up a few seconds on (CHECK_CHILD_STORED_AFTER), and it stores the child then.
    ran: list[str] = []

    async def work(ctx: Any) -> str:
        ran.append(ctx.metadata.id)
        return "done"

    child = tf.workflow("child").step("work", work).build()
    parent = tf.workflow("parent").child("ch", workflow="child").build()
    storage = StopsAtTheChildsCreate()
    async with tf.open_engine(adapter=storage) as engine:
        engine.register(child)
        engine.register(parent)
        await engine.start("parent", instance_id="P")
        while not (stored := await storage.load("P")) or not stored.records:
            await trio.sleep(0.01)
    assert await storage.load("P/ch#1") is None
    storage.stopping = False
    async with tf.open_engine(adapter=storage) as engine:
        engine.register(child)
        engine.register(parent)
        with trio.fail_after(60):
            ended = await engine.wait("P")
    assert (ended.status, ended.output, ended.children) == ("completed", "done", ("P/ch#1",))
    assert ran == ["P/ch#1"]


async def test_a_child_step_whose_id_another_instance_holds_lists_no_child(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Its start is stored before it finds the id taken: the instance holding it is not its child.
    async def done(ctx: Any) -> str:
        return "ok"

    child = tf.workflow("child").step("work", done).build()
    parent = (tf.workflow("parent").child("ch", workflow="child", catch=[tf.Catch(errors=["InstanceIdConflictError"], next="h")])
              .step("h", done).build())
    async with tf.open_engine() as engine:
        engine.register(child)
        engine.register(parent)
        await engine.wait(await engine.start("child", {"mine": True}, instance_id="P/ch#1"))
        ended = await engine.wait(await engine.start("parent", instance_id="P"))
        assert (ended.status, ended.children) == ("completed", ())
        stranger = await engine.get_instance("P/ch#1")
        assert stranger is not None and stranger.parent_id is None
