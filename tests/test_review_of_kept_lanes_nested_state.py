"""Review of 3e3017c: a map of maps driven step by step through the decisions the actors make
(items starting, moving on, waiting, retrying with the wait changed in place, failing, ending,
inner maps beginning and ending inside outer items), with the instance read back from its
header after each change, and at times carried on from the state read back (a restart) or
turned to compensating: the header written from kept entries reads back as the lanes stand.
With ``CHECK_KEPT`` on (tests/conftest.py) every such header is also compared with a walk.
Also: ``TrackedLane`` compares, hashes and reads like a ``Lane``."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow import _header_lanes
from trioflow._codec import decode, encode_header, encode_record, encode_start
from trioflow._decide import begin_compensation, complete_step, fail_step, new_execution, new_state
from trioflow._lanes import item_lane
from trioflow._map import item_ended, open_items, start_item, start_record
from trioflow._snapshot import Lane, TrackedLane, new_lane


async def _pass(value: Any) -> Any:
    return value


LINE = tf.branch("line").step("work", _pass).step("finish", _pass).build()
ORDER = (tf.branch("order").step("label", _pass)
         .map("lines", items=lambda ctx: ctx.item, branch=LINE)
         .step("total", _pass).build())
NESTED = tf.workflow("nested").map("each", items=lambda ctx: ctx.input, branch=ORDER).build()
EACH, LINES = NESTED.lookup["each"][0], NESTED.lookup["lines"][0]
NEXT = {"label": "lines", "lines": "total", "total": None, "work": "finish", "finish": None}


def _read_back(state: Any) -> Any:
    return decode(encode_start(state), encode_header(state), [encode_record(r) for r in state.records])


def _move(state: Any, key: str) -> None:
    lane = state.lanes[key]
    record = new_execution(state, key, lane.step, "completed", output=key, started_at=0.0, now=1.0)
    complete_step(state, NESTED.lookup[lane.step][0], record, NEXT[lane.step])


OPS = st.sampled_from(["start", "start", "move", "move", "inner start", "inner move", "inner end", "end",
                       "wait", "retry", "unwait", "fail", "restart"])


@settings(max_examples=40, deadline=None)
@given(outer=st.integers(17, 40), data=st.data())
def test_a_map_of_maps_kept_lane_by_lane_reads_back_as_its_lanes_stand(outer: int, data: Any) -> None:
    for wide_from in (2, 32):
        _header_lanes.WIDE, saved = wide_from, _header_lanes.WIDE
        try:
            _drive(outer, data, wide_from)
        finally:
            _header_lanes.WIDE = saved


def _drive(outer: int, data: Any, wide_from: int) -> None:
    inner_counts = [1 + (i * 5) % 3 for i in range(outer)]
    state = new_state(NESTED, "i", inner_counts, 0.0)
    state.lanes[""].step = "each"
    open_items(state, EACH, state.lanes[""], start_record(state, "", EACH, inner_counts, 0.0))
    for _ in range(data.draw(st.integers(1, 4 * outer), label="ops")):
        op = data.draw(OPS, label="op")
        progress = state.lanes[""].fanout
        outer_keys = [k for k in state.lanes if k.count("/") == 1 and k.startswith("each/#")]
        if op == "start" and progress.started < progress.count:
            start_item(state, EACH, progress, "")
            continue
        if op == "restart":
            state = _read_back(state)  # carried on from what storage holds
            continue
        if not outer_keys:
            continue
        key = data.draw(st.sampled_from(outer_keys), label="item")
        lane = state.lanes[key]
        inner_keys = [k for k in state.lanes if k.startswith(key + "/lines/#")]
        if op == "move" and lane.step in ("label", "total") and lane.failed is None:
            _move(state, key)
        elif op == "move" and lane.step == "lines" and lane.begun is None and lane.failed is None:
            index = int(key.rpartition("#")[2])
            open_items(state, LINES, lane, start_record(state, key, LINES, list(range(inner_counts[index])), 0.0))
        elif op == "move" and lane.step == "lines" and lane.fanout is not None and not inner_keys \
                and lane.fanout.started == lane.fanout.count:
            _move(state, key)  # every line ended: the inner map completes, its lanes go
        elif op == "inner start" and lane.fanout is not None and lane.fanout.started < lane.fanout.count:
            start_item(state, LINES, lane.fanout, key)
        elif op in ("inner move", "inner end", "wait", "retry", "unwait") and inner_keys and data.draw(st.booleans()):
            inner = data.draw(st.sampled_from(inner_keys), label="line")
            _touch(state, inner, op, lane)
        elif op == "inner move" and inner_keys:
            inner = data.draw(st.sampled_from(inner_keys), label="line")
            _touch(state, inner, op, lane)
        elif op in ("wait", "retry", "unwait") and lane.step is not None and lane.failed is None:
            _touch(state, key, op, lane)
        elif op == "fail" and lane.step is not None and lane.failed is None:
            fail_step(state, new_execution(state, key, lane.step, "failed", error="KeyError: 'x'", started_at=0.0,
                                           now=1.0), for_good=True)
        elif op == "end" and (lane.step is None or lane.failed is not None):
            item_ended(state, EACH, progress, int(key.rpartition("#")[2]), key, failed=lane.failed is not None)
        assert _read_back(state).lanes == state.lanes
    if data.draw(st.booleans(), label="compensate"):
        begin_compensation(state, "failed", KeyError("x"), "work")
    assert _read_back(state).lanes == state.lanes


def _touch(state: Any, key: str, op: str, map_lane: Lane) -> None:
    lane = state.lanes[key]
    if op == "inner move":
        if lane.step is not None and lane.failed is None:
            _move(state, key)
    elif op == "inner end":
        if lane.step is None:
            item_ended(state, LINES, map_lane.fanout, int(key.rpartition("#")[2]), key, failed=False)
    elif op == "wait":
        lane.waiting = {"timer": 5.0, "since": 0.0}
    elif op == "retry":
        lane.waiting = {"retry": 9.0, "attempt": 2}
        lane.waiting["since"] = 1.0  # (changed in place right after, as a retried task step does)
    elif op == "unwait":
        lane.waiting = None


# -- TrackedLane as a Lane ----------------------------------------------------------------------

def test_a_tracked_lane_compares_and_hashes_as_a_lane_does() -> None:
    state = new_state(NESTED, "i", [1], 0.0)
    tracked = new_lane(state, item_lane("each", 0), "label", last=3, waiting={"timer": 1.0})
    plain = Lane(step="label", last=3, waiting={"timer": 1.0})
    assert isinstance(tracked, TrackedLane)
    assert tracked == plain and plain == tracked and not (tracked != plain) and not (plain != tracked)
    assert {"a": tracked} == {"a": plain} and [plain] == [tracked]
    assert tracked != Lane(step="label", last=4, waiting={"timer": 1.0})
    assert plain != new_lane(state, "each/#1", "label", last=3)
    with pytest.raises(TypeError):
        hash(tracked)
    with pytest.raises(TypeError):
        hash(plain)
    assert tracked.waits() and plain.waits()
    assert repr(tracked).partition("(")[2] == repr(plain).partition("(")[2]  # (the same fields shown)


def test_a_new_lane_for_the_main_line_is_a_plain_lane_and_notes_nothing() -> None:
    state = new_state(NESTED, "i", [1], 0.0)
    main = new_lane(state, "", "each")
    assert type(main) is Lane and not state.lane_notes
    item = new_lane(state, "each/#0", "label")
    assert list(state.lane_notes) == ["each/#0"]
    state.lane_notes.clear()
    item.step = "lines"
    assert list(state.lane_notes) == ["each/#0"]
