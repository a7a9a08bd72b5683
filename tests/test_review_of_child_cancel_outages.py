"""From a review of bc843ba (a parent's cancel of a child tried again while storage may come
back, then stopping the parent as stored), which found no bug: two guards of its fragile cases
(a fail-fast map's children, parked children taken up by the next engine). MemoryAdapter
subclasses failing chosen calls for chosen instances for a while; trio's autojumping MockClock."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


class _Outage(tf.adapters.MemoryAdapter):
    """Chosen calls raise StorageUnavailableError for the instances in ``down`` while trio's
    clock is before ``until``."""

    until = -1.0
    methods: frozenset[str] = frozenset({"load", "checkpoint"})
    down: frozenset[str] = frozenset()

    def _is_down(self, method: str, instance_id: str) -> bool:
        return method in self.methods and instance_id in self.down and trio.current_time() < self.until

    async def load(self, instance_id: str) -> Any:
        if self._is_down("load", instance_id):
            raise tf.StorageUnavailableError("database is locked")
        return await super().load(instance_id)

    async def checkpoint(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if self._is_down("checkpoint", instance_id):
            raise tf.StorageUnavailableError("database is locked")
        return await super().checkpoint(instance_id, *args, **kwargs)

    def outage(self, seconds: float, *ids: str) -> None:
        self.until = trio.current_time() + seconds
        self.down = frozenset(ids)


async def _wait_through(engine: Any, iid: str) -> Any:
    for _ in range(5):
        try:
            return await engine.wait(iid)
        except tf.StorageUnavailableError:
            await trio.sleep(10)
            await engine.resume()
    raise AssertionError("never ended")


async def _children(engine: Any, name: str) -> list[Any]:
    return sorted(await engine.get_instances(name), key=lambda i: i.id)


def _approval() -> Any:
    return tf.workflow("approval").receive("wait", signal="approved").build()


async def test_failfast_map_child_down(autojump_clock: trio.testing.MockClock) -> None:
    """Guard (passes): a fail-fast map whose items wait on children, one child's storage down
    past storage_retry_for: the parent stops as stored; resumed, both children end cancelled,
    the earlier step compensated once."""
    adapter = _Outage()
    undone: list[str] = []

    async def reserve(ctx: Any) -> str:
        return "r"

    async def release(ctx: Any, r: str) -> None:
        undone.append(r)

    async def maybe(ctx: Any) -> Any:
        if ctx.item == 0:
            await trio.sleep(5)
            raise ValueError("no")
        return ctx.item

    parent = (tf.workflow("order").step("reserve", reserve, release)
              .map("m", items=lambda ctx: [0, 1, 2], branch=tf.branch("i").step("maybe", maybe)
                   .child("c", workflow="approval").build()).build())
    async with open_test_engine(adapter=adapter, storage_retry_for=1.0) as engine:
        engine.register(_approval())
        engine.register(parent)
        iid = await engine.start("order", {})
        await trio.sleep(2)
        kids = await _children(engine, "approval")
        assert len(kids) == 2
        adapter.outage(8.0, kids[0].id)
        done = await _wait_through(engine, iid)
        assert done.status == "failed", (done.status, done.error)
        await trio.sleep(10)
        await engine.resume()
        await trio.sleep(10)
        assert [k.status for k in await _children(engine, "approval")] == ["cancelled", "cancelled"]
        assert undone == ["r"]


async def test_parked_children_next_engine(autojump_clock: trio.testing.MockClock) -> None:
    """Guard (passes): two parked children, one's storage down past storage_retry_for as the
    user cancels the parent: it stops as stored; the next engine cancels both, compensates once."""
    adapter = _Outage()
    undone: list[str] = []

    async def reserve(ctx: Any) -> str:
        return "r"

    async def release(ctx: Any, r: str) -> None:
        undone.append(r)

    parent = (tf.workflow("order").step("reserve", reserve, release)
              .parallel("both", on_error="wait-all", branches=[
                  tf.branch("a").child("ca", workflow="approval").build(),
                  tf.branch("b").child("cb", workflow="approval").build()]).build())
    async with open_test_engine(adapter=adapter, storage_retry_for=1.0) as engine:
        engine.register(_approval())
        engine.register(parent)
        iid = await engine.start("order", {})
        await trio.sleep(3600)
        kids = await _children(engine, "approval")
        adapter.outage(30.0, kids[1].id)
        await engine.cancel(iid)
        try:
            done = await engine.wait(iid)
            pytest.fail(f"ended {done.status} without the stalled child cancelled")
        except tf.StorageUnavailableError:
            pass  # stopped as stored, as README says
    await trio.sleep(60)
    async with open_test_engine(adapter=adapter, storage_retry_for=1.0) as engine:
        engine.register(_approval())
        engine.register(parent)
        await trio.sleep(10)
        done = await engine.wait(iid)
        assert done.status == "cancelled", (done.status, done.error)
        assert [k.status for k in await _children(engine, "approval")] == ["cancelled", "cancelled"]
        assert undone == ["r"]
