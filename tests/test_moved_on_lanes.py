"""Branch and item lanes that stand just after their last record, in the header: named by that
record's seq alone, grouped by the step they stand at (the record names the lane), rather than
written out in full. A fan-out whose branches or items have moved past their first step, or
ended, then writes a few bytes per lane with each checkpoint rather than a key and a position.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow._codec import decode, encode_header, encode_record, encode_start
from trioflow._decide import complete_step, fail_step, new_execution, new_state, open_branches
from trioflow._errors import SnapshotDecodeError
from trioflow._map import open_items, start_item, start_record
from trioflow.testing import open_test_engine

from storages import largest_header_of_staggered_map

#: Where the lanes are in a header, and where the lanes named by their last record are (see
#: ``trioflow._codec.encode_header``).
LANES = 8
MOVED_ON = 19


async def _pass(value: Any) -> Any:
    return value


def _branch(i: int) -> Any:
    return tf.branch(f"b{i}").step(f"one{i}", _pass).step(f"two{i}", _pass).build()


WIDE = tf.workflow("wide").parallel("p", branches=[_branch(i) for i in range(6)]).build()
PARALLEL = WIDE.lookup["p"][0]
FAN = (tf.workflow("fan")
       .map("each", items=lambda ctx: list(range(ctx.input)),
            branch=tf.branch("item").step("work", _pass).step("finish", _pass).build())
       .build())
MAP = FAN.lookup["each"][0]

#: Where a branch's or an item's lane may stand.
KINDS = st.sampled_from(["untouched", "moved on", "ended", "retrying", "failed", "waiting"])


def _run_first(state: Any, key: str, definition: tf.WorkflowDefinition, first: str, second: str,
               kind: str) -> None:
    """Put the lane ``key`` where ``kind`` says: moved on to ``second`` (or ended) once its
    first step ``first`` ran, or still at ``first``."""
    lane = state.lanes[key]
    if kind in ("moved on", "ended"):
        record = new_execution(state, key, first, "completed", output=1, started_at=0.0, now=1.0)
        complete_step(state, definition.lookup[first][0], record, None if kind == "ended" else second)
    elif kind == "retrying":
        lane.waiting = {"attempt": 2}
    elif kind == "failed":
        fail_step(state, new_execution(state, key, first, "failed", error="KeyError: 'x'", started_at=0.0, now=1.0),
                  for_good=True)
    elif kind == "waiting":
        lane.waiting = {"timer": 5.0, "since": 0.0}


def _listed(header: bytes) -> tuple[set[str], list[int]]:
    raw = msgpack.unpackb(header, strict_map_key=False)
    # (None there, in a header that holds only what sends item lanes where they stand.)
    moved = (raw[MOVED_ON] if len(raw) > MOVED_ON else None) or {}
    return set(raw[LANES]), sorted(seq for seqs in moved.values() for seq in seqs)


def _round_trip(state: Any) -> Any:
    return decode(encode_start(state), encode_header(state), [encode_record(r) for r in state.records])


@settings(max_examples=200, deadline=None)
@given(kinds=st.lists(KINDS, min_size=6, max_size=6))
def test_branches_after_their_last_record_are_named_by_it_and_read_back(kinds: list[str]) -> None:
    state = new_state(WIDE, "i", None, 0.0)
    assert open_branches(state, PARALLEL, "")
    for i, kind in enumerate(kinds):
        _run_first(state, f"p/b{i}", WIDE, f"one{i}", f"two{i}", kind)
    listed, seqs = _listed(encode_header(state))
    moved = {f"p/b{i}" for i, kind in enumerate(kinds) if kind in ("moved on", "ended")}
    assert listed == {""} | {f"p/b{i}" for i in range(6)} - moved
    assert seqs == sorted(state.lanes[key].last for key in moved)
    assert _round_trip(state).lanes == state.lanes


@settings(max_examples=100, deadline=None)
@given(count=st.integers(1, 30), data=st.data())
def test_items_after_their_last_record_are_named_by_it_and_read_back(count: int, data: Any) -> None:
    state = new_state(FAN, "i", count, 0.0)
    main = state.lanes[""]
    main.step = "each"
    progress = open_items(state, MAP, main, start_record(state, "", MAP, list(range(count)), 0.0))
    moved = set()
    for _ in range(data.draw(st.integers(0, count))):
        _, key = start_item(state, MAP, progress, "")
        kind = data.draw(KINDS.filter(lambda k: k != "ended"))
        _run_first(state, key, FAN, "work", "finish", kind)
        if kind == "moved on":
            moved.add(key)
    listed, _ = _listed(encode_header(state))
    assert not listed & moved
    assert _round_trip(state).lanes == state.lanes


def test_a_header_without_lanes_moved_on_is_the_one_written_before() -> None:
    """Only a fan-out's lanes are named by their records: a one-lane instance's header keeps
    the nineteen fields every earlier release of format 4 reads."""
    state = new_state(WIDE, "i", None, 0.0)
    record = new_execution(state, "", "p", "completed", output=1, started_at=0.0, now=1.0)
    complete_step(state, PARALLEL, record, None)
    raw = msgpack.unpackb(encode_header(state), strict_map_key=False)
    assert len(raw) == MOVED_ON and raw[LANES][""] == [None, 0, None]


@pytest.mark.parametrize(("moved_on", "says"), [
    ({"two0": [0, 0]}, "named twice"),
    ({"two0": [99]}, "malformed lanes moved on"),
    ({"two0": ["0"]}, "malformed lanes moved on"),
    ({3: [0]}, "malformed lanes moved on"),
    ([0], "malformed lanes moved on"),
])
def test_a_damaged_list_of_lanes_moved_on_is_refused(moved_on: Any, says: str) -> None:
    state = new_state(WIDE, "i", None, 0.0)
    assert open_branches(state, PARALLEL, "")
    _run_first(state, "p/b0", WIDE, "one0", "two0", "moved on")
    raw = msgpack.unpackb(encode_header(state), strict_map_key=False)
    raw[MOVED_ON] = moved_on
    with pytest.raises(SnapshotDecodeError, match=says):
        decode(encode_start(state), msgpack.packb(raw), [encode_record(r) for r in state.records])


def test_a_lane_named_both_in_full_and_by_its_record_is_refused() -> None:
    state = new_state(WIDE, "i", None, 0.0)
    assert open_branches(state, PARALLEL, "")
    _run_first(state, "p/b0", WIDE, "one0", "two0", "moved on")
    raw = msgpack.unpackb(encode_header(state), strict_map_key=False)
    raw[LANES]["p/b0"] = ["two", 0, None]
    with pytest.raises(SnapshotDecodeError, match="named twice"):
        decode(encode_start(state), msgpack.packb(raw), [encode_record(r) for r in state.records])


async def test_items_in_flight_past_their_first_step_cost_a_few_bytes_each_in_the_header(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """2,000 items that all ran their first step, then end one at a time: each lane in flight
    takes at most 3 bytes of the header (the seq of its record), where it took some 16 (its
    key and its position) before."""
    few, many = (await largest_header_of_staggered_map(20, first_step=True),
                  await largest_header_of_staggered_map(2_000, first_step=True))
    assert many - few <= 3 * (2_000 - 20), (few, many)


def test_a_header_from_before_lists_lanes_moved_on_in_full_and_reads_back_as_it_was() -> None:
    """Format 4's header as written before this field: nineteen fields, every lane in full."""
    state = new_state(WIDE, "i", None, 0.0)
    assert open_branches(state, PARALLEL, "")
    for i, kind in enumerate(["moved on", "ended", "untouched", "moved on", "ended", "waiting"]):
        _run_first(state, f"p/b{i}", WIDE, f"one{i}", f"two{i}", kind)
    raw = msgpack.unpackb(encode_header(state), strict_map_key=False)
    assert len(raw.pop(MOVED_ON)) == 3  # (at "two0", at "two3", and ended)
    for key in ("p/b0", "p/b1", "p/b3", "p/b4"):
        lane = state.lanes[key]
        raw[LANES][key] = [lane.step, lane.last, lane.failed]
    again = decode(encode_start(state), msgpack.packb(raw), [encode_record(r) for r in state.records])
    assert again.lanes == state.lanes


async def test_an_ended_instance_lists_every_lane_so_the_release_before_still_shows_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A fan-out that failed while a branch stood past its first step: the instance's last
    header is one of nineteen fields, every lane in full (the release before refuses a header
    with lanes named by their records, and would report a finished instance unreadable after
    a rollback)."""
    async def fine(_: Any) -> str:
        return "ok"

    async def slow(_: Any) -> None:
        await trio.sleep(3_600)

    async def broken(_: Any) -> None:
        await trio.sleep(1)
        raise RuntimeError("down")

    wf = tf.workflow("half").parallel("p", branches=[
        tf.branch("a").step("a1", fine).step("a2", slow).build(),
        tf.branch("b").step("b1", broken).build()]).build()
    adapter = tf.adapters.MemoryAdapter()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("half")
        assert (await engine.wait(iid)).status == "failed"
    stored = await adapter.load(iid)
    assert stored is not None
    raw = msgpack.unpackb(stored.header, strict_map_key=False)
    assert len(raw) == MOVED_ON and set(raw[LANES]) == {"", "p/a", "p/b"}
    assert raw[LANES]["p/a"][:2] == ["a2", 0]
