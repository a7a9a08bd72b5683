"""A running map's items in the header: the lane of an item that stands untouched at its
branch's first step is left out (the map's position names that step, and decoding puts the lane
back), so the header, rewritten by every checkpoint, does not grow with the items in flight.
"""

from __future__ import annotations

from typing import Any

import msgpack
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow._codec import decode, encode_header, encode_record, encode_start
from trioflow._decide import new_state
from trioflow._map import item_ended, open_items, start_item, start_record
from trioflow._snapshot import Lane

from storages import largest_header_of_staggered_map

#: Where the lanes are in a header (see ``trioflow._codec.encode_header``).
LANES = 8


async def _work(ctx: tf.WorkflowContext) -> int:
    return int(ctx.item)


async def _finish(ctx: tf.WorkflowContext) -> int:
    return int(ctx.steps["work"]) + 1


FAN = (tf.workflow("fan")
       .task("before", job=_work)
       .map("each", items=lambda ctx: list(range(ctx.input)),
            branch=tf.branch("item").step("work", _work).step("finish", _finish).build())
       .build())
MAP = FAN.lookup["each"][0]

#: What a running item's lane may hold besides standing untouched at "work".
KINDS = st.sampled_from(["untouched", "finish", "looped", "retrying", "failed", "done"])


@settings(max_examples=200, deadline=None)
@given(count=st.integers(1, 40), data=st.data())
def test_a_header_leaves_out_untouched_items_and_reads_back_every_lane(count: int, data: Any) -> None:
    state = new_state(FAN, "i", count, 0.0)
    main = state.lanes[""]
    main.step = "each"
    start = start_record(state, "", MAP, list(range(count)), 0.0)
    progress = open_items(state, MAP, main, start)
    started = data.draw(st.integers(0, count))
    kinds = {}
    for _ in range(started):
        index, key = start_item(state, MAP, progress, "")
        if data.draw(st.booleans()):
            item_ended(state, MAP, progress, index, key, failed=data.draw(st.booleans()))
            continue
        kind = kinds[key] = data.draw(KINDS)
        lane = state.lanes[key]
        if kind == "finish":
            lane.step, lane.last = "finish", 0
        elif kind == "looped":  # back at its first step, having run it
            lane.last = 0
        elif kind == "retrying":
            lane.waiting = {"attempt": 2}
        elif kind == "failed":
            lane.failed = 0
        elif kind == "done":
            lane.step, lane.last = None, 0
    stored = encode_header(state)
    listed = set(msgpack.unpackb(stored, strict_map_key=False)[LANES])
    assert listed == {""} | {key for key, kind in kinds.items() if kind != "untouched"}
    again = decode(encode_start(state), stored, [encode_record(r) for r in state.records])
    assert again.lanes == state.lanes
    assert again.lanes[""].fanout == progress and progress.first == "work"


def test_a_header_from_before_lists_every_lane_and_reads_back_as_it_was() -> None:
    """A map position of five fields (written before the first step was named): nothing is
    left out, and nothing is put back."""
    state = new_state(FAN, "i", 3, 0.0)
    main = state.lanes[""]
    main.step = "each"
    progress = open_items(state, MAP, main, start_record(state, "", MAP, [0, 1, 2], 0.0))
    for _ in range(3):
        start_item(state, MAP, progress, "")
    progress.first = None
    raw = msgpack.unpackb(encode_header(state), strict_map_key=False)
    assert set(raw[LANES]) == {"", "each/#0", "each/#1", "each/#2"}
    raw[LANES][""][5] = raw[LANES][""][5][:5]
    del raw[LANES]["each/#1"]  # (an item such a header does not list is not running)
    again = decode(encode_start(state), msgpack.packb(raw), [encode_record(r) for r in state.records])
    assert set(again.lanes) == {"", "each/#0", "each/#2"} and again.lanes["each/#0"] == Lane(step="work")


async def test_a_map_with_thousands_of_items_in_flight_keeps_a_small_header(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """2,000 items started at once (no ``max_concurrency``), ending one at a time: the largest
    header any checkpoint wrote is no larger than with 20 items (it listed every running item
    before: 2,000 lanes, some 30 KB, rewritten by each of the 2,000 items' ends)."""
    few, many = await largest_header_of_staggered_map(20), await largest_header_of_staggered_map(2_000)
    assert many <= few + 16, (few, many)
