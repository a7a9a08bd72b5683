"""A lane waiting for its child's end is named in a word in the header (its child's ids follow
from the child step's start record): a map of items each waiting for its child writes a few
bytes per item at each checkpoint, not both of the child's ids. Headers that spell the wait out
(written before) still read, and a word with no start record to follow from is refused."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow._codec import (
    decode,
    decode_stored,
    encode_header,
    encode_record,
    encode_start,
)
from trioflow._snapshot import ChildWait, child_wait
from trioflow.adapters import MemoryAdapter

from storages import engine_on, finish

ITEMS = 50


def family() -> tuple[tf.WorkflowDefinition, tf.WorkflowDefinition]:
    child = tf.workflow("child").receive("r", signal="go").build()
    parent = tf.workflow("parent").map(
        "m", items=lambda ctx: list(range(ITEMS)),
        branch=tf.branch("item").child("c", workflow="child").build(),
    ).build()
    return parent, child


async def test_a_map_of_items_waiting_for_their_children_writes_a_word_per_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adapter = MemoryAdapter()
    parent, child = family()
    async with engine_on(adapter) as engine:
        engine.register(parent)
        engine.register(child)
        iid = await engine.start("parent")
        await trio.sleep(5)  # every item waits for its child; the parent has left memory
        assert iid not in engine._live
        stored = await adapter.load(iid)
        assert stored is not None
        state = decode_stored(stored)
        waits = [lane.waiting for key, lane in state.lanes.items() if key != ""]
        assert len(waits) == ITEMS
        for lane in state.lanes.values():
            if lane.waiting is not None:
                start = state.records[lane.begun]
                # Read back in full, with its check time (10 s after the step started).
                assert lane.waiting == child_wait(start.output, start.started_at)
        lanes = msgpack.unpackb(stored.header, raw=False, strict_map_key=False)[8]
        assert sorted({fields[3] for key, fields in lanes.items() if key != ""}) == [ChildWait.UNCHECKED]
        assert len(stored.header) < 40 * ITEMS  # (each child's two ids: over 150 bytes an item)

        # 10 s after they started, the parent is taken up to store any child it might not have
        # (each is taken as the one there), and says so: it is not taken up for it again.
        await trio.sleep(30)
        stored = await adapter.load(iid)
        assert stored is not None
        lanes = msgpack.unpackb(stored.header, raw=False, strict_map_key=False)[8]
        assert sorted({fields[3] for key, fields in lanes.items() if key != ""}) == [ChildWait.STORED]
        state = decode_stored(stored)
        assert all(lane.waiting == child_wait(state.records[lane.begun].output, None)
                   for key, lane in state.lanes.items() if key != "")
        view = await engine.get_instance(iid)
        assert view is not None
        for k, kid in enumerate(view.children):
            await engine.signal(kid, "go", k)
        done = await finish(engine, iid)
    assert done.status == "completed"
    assert sorted(done.output) == list(range(ITEMS))


def _waiting_state() -> Any:
    """The state of a stored instance whose one child step waits (read from a real run)."""
    async def main() -> Any:
        adapter = MemoryAdapter()
        parent = tf.workflow("p").child("c", workflow="k").build()
        kid = tf.workflow("k").receive("r", signal="go").build()
        async with engine_on(adapter) as engine:
            engine.register(parent)
            engine.register(kid)
            iid = await engine.start("p")
            await trio.sleep(5)
            stored = await adapter.load(iid)
            assert stored is not None
            return decode_stored(stored)
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_header_that_spells_the_child_wait_out_reads_as_it_did() -> None:
    """As a release before the word wrote it: the dict itself, read back as it is."""
    state = _waiting_state()
    lane = state.lanes[""]
    full = msgpack.unpackb(encode_header(state), raw=False, strict_map_key=False)
    assert full[8][""][3] == ChildWait.UNCHECKED
    full[8][""] = (*full[8][""][:3], lane.waiting, *full[8][""][4:])  # spelled out
    header = msgpack.packb(full, use_bin_type=True)
    again = decode(encode_start(state), header, [encode_record(r) for r in state.records])
    assert again.lanes[""].waiting == lane.waiting


def test_a_word_with_no_start_record_to_follow_is_refused() -> None:
    state = _waiting_state()
    full = msgpack.unpackb(encode_header(state), raw=False, strict_map_key=False)
    fields = list(full[8][""])
    fields[4] = None  # no start record
    full[8][""] = fields
    with pytest.raises(tf.SnapshotDecodeError, match="waits for a child its records do not name"):
        decode(encode_start(state), msgpack.packb(full, use_bin_type=True),
               [encode_record(r) for r in state.records])
