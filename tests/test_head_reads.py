"""Looks that need a row's start, status and header, not its records (December 7th, review
count5): an idempotent ``start`` or a ``cancel`` of an instance that has ended reads it without
its records where the adapter can (``load_head``), and a signal to a parked instance decides
from the header whether a lane waits for it. What they read is still checked, and what they
answer is what a whole read answered. Virtual time only."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._codec import decode_head, decode_stored
from trioflow.adapters import MemoryAdapter, StoredInstance
from trioflow.adapters._protocol import loads_heads


async def _one(ctx: tf.WorkflowContext) -> int:
    return 1


_ORDER = tf.workflow("order").step("a", _one).step("b", _one).build()


class _Counted(MemoryAdapter):
    """Counts the engine's calls of ``load`` and ``load_head`` (both defined here: the engine
    reads heads through it)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    async def load(self, instance_id: str) -> StoredInstance | None:
        self.calls["load"] += 1
        return await super().load(instance_id)

    async def load_head(self, instance_id: str) -> StoredInstance | None:
        self.calls["load_head"] += 1
        return await super().load_head(instance_id)


class _LoadAlone(MemoryAdapter):
    """Changes ``load`` alone (to count it): the engine must read through it, not ``load_head``."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    async def load(self, instance_id: str) -> StoredInstance | None:
        self.loads += 1
        return await super().load(instance_id)


def test_the_engine_reads_heads_only_where_that_replaces_no_override() -> None:
    assert loads_heads(MemoryAdapter()) and loads_heads(_Counted())
    assert not loads_heads(_LoadAlone())


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_start_again_of_an_instance_that_has_ended_reads_no_records_and_still_tells_a_conflict(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str) -> None:
    adapter: Any = _Counted() if kind == "memory" else tf.adapters.SQLiteAdapter(tmp_path / "db")
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(_ORDER)
        iid = await engine.start("order", {"n": 1}, instance_id="ORD-1")
        assert (await engine.wait(iid)).status == "completed"
        if kind == "memory":
            adapter.calls.clear()
        assert await engine.start("order", {"n": 1}, instance_id="ORD-1") == "ORD-1"
        with pytest.raises(tf.InstanceIdConflictError, match="another input"):
            await engine.start("order", {"n": 2}, instance_id="ORD-1")
        with pytest.raises(tf.InstanceIdConflictError, match="already belongs to workflow 'order'"):
            engine.register(tf.workflow("other").step("a", _one).build())
            await engine.start("other", {"n": 1}, instance_id="ORD-1")
        if kind == "memory":
            assert adapter.calls == {"load_head": 3}
        assert await engine.cancel(iid) is False
        if kind == "memory":
            assert adapter.calls == {"load_head": 4}


async def test_a_cancel_of_an_instance_that_has_ended_reads_it_once_through_an_adapter_without_heads(
        autojump_clock: trio.testing.MockClock) -> None:
    adapter = _LoadAlone()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(_ORDER)
        iid = await engine.start("order", {})
        assert (await engine.wait(iid)).status == "completed"
        adapter.loads = 0
        assert await engine.cancel(iid) is False
        assert await engine.cancel("nobody") is False
        assert adapter.loads == 2  # (one each: it read the first one twice)


async def test_a_cancel_of_a_parked_instance_still_cancels_it(autojump_clock: trio.testing.MockClock) -> None:
    for adapter in (_Counted(), _LoadAlone()):
        async with tf.open_engine(adapter=adapter) as engine:
            engine.register(tf.workflow("w").step("a", _one).wait("w", seconds=3600).step("b", _one).build())
            iid = await engine.start("w", {})
            await trio.sleep(60)
            assert iid not in engine._live
            assert await engine.cancel(iid) is True
            assert (await engine.wait(iid)).status == "cancelled"


async def test_a_signal_to_a_parked_instance_wakes_it_when_a_lane_waits_for_it_and_not_otherwise(
        autojump_clock: trio.testing.MockClock) -> None:
    wf = (tf.workflow("w").parallel("both", branches=[
        tf.branch("x").receive("r", signal="go").build(),
        tf.branch("y").wait("t", seconds=86_400).build()]).receive("later", signal="late").build())
    async with tf.open_engine(adapter=MemoryAdapter()) as engine:
        engine.register(wf)
        iid = await engine.start("w", {})
        await trio.sleep(60)
        assert iid not in engine._live
        await engine.signal(iid, "late", 1)  # kept for the later receive: no lane waits for it now
        assert iid not in engine._live
        await engine.signal(iid, "go", 2)  # branch x's receive
        await trio.sleep(1)
        view = await engine.get_instance(iid)
        assert view is not None and view.status == "running"
        await trio.sleep(86_400)
        assert (await engine.wait(iid)).status == "completed"  # took the signal kept for it


async def test_a_head_read_still_checks_what_it_reads(autojump_clock: trio.testing.MockClock) -> None:
    adapter = MemoryAdapter()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(_ORDER)
        iid = await engine.start("order", {})
        await engine.wait(iid)
    row = await adapter.load(iid)
    assert row is not None and len(row.records) == 2
    head = decode_head(row)
    assert (head.status, head.records, head.workflow_name, head.input, head.waits) == ("completed", 2, "order", {}, ())
    assert decode_head(attrs.evolve(row, records=())) == head  # (a row read without its records)
    damaged = attrs.evolve(row, records=(b"\xc1", row.records[1]))
    with pytest.raises(tf.SnapshotDecodeError):
        decode_stored(damaged)
    assert decode_head(damaged) == head  # (records it does not read)
    for header in (b"\xc1", row.header[:-3], row.header.replace(iid.encode(), b"x" * len(iid))):
        with pytest.raises(tf.SnapshotDecodeError):
            decode_head(attrs.evolve(row, header=header))
    with pytest.raises(tf.SnapshotDecodeError):
        decode_head(attrs.evolve(row, start=None))
