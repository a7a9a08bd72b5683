"""A wide fan-out's header, kept lane by lane between checkpoints (trioflow._header_lanes): a
checkpoint encodes again only the lanes that changed since the one before, and the header it
writes reads back as the lanes stand, through every way a lane moves, across restarts.

(tests/conftest.py has every header written this way checked against a walk over every lane,
and keeps entries from two lanes on: the whole suite runs through it. These tests also run it
at the threshold a user gets.)
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow import _header_lanes
from trioflow._codec import decode, encode_header, encode_record, encode_start
from trioflow._decide import complete_step, fail_step, new_execution, new_state, open_branches
from trioflow._map import item_ended, open_items, start_item, start_record
from trioflow._snapshot import Lane, TrackedLane
from trioflow.testing import open_test_engine

from test_moved_on_lanes import FAN, MAP  # (a map of two-step items)


async def _pass(value: Any) -> Any:
    return value


BRANCHES = 40  # (above WIDE's 32)
WIDE = tf.workflow("wide").parallel("p", branches=[
    tf.branch(f"b{i}").step(f"one{i}", _pass).step(f"two{i}", _pass).build() for i in range(BRANCHES)]).build()
PARALLEL = WIDE.lookup["p"][0]


@pytest.fixture(params=[2, 32], ids=["every fan-out", "from 32 lanes"])
def wide_from(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(_header_lanes, "WIDE", request.param)
    return int(request.param)


def _read_back(state: Any) -> Any:
    return decode(encode_start(state), encode_header(state), [encode_record(r) for r in state.records])


def _move(state: Any, key: str, step: str, target: str | None) -> None:
    record = new_execution(state, key, step, "completed", output=key, started_at=0.0, now=1.0)
    complete_step(state, WIDE.lookup[step][0] if step in WIDE.lookup else FAN.lookup[step][0], record, target)


#: What a move does to a branch lane: run its step (to the next, or to its end), wait for a
#: timer, keep a retry's attempts, stop waiting, fail for good.
MOVES = st.sampled_from(["step", "wait", "retry", "unwait", "fail"])


def _apply(state: Any, key: str, move: str) -> None:
    lane = state.lanes[key]
    if lane.step is None or lane.failed is not None:
        return
    i = key[len("p/b"):]
    if move == "step":
        _move(state, key, lane.step, f"two{i}" if lane.step == f"one{i}" else None)
    elif move == "wait":
        lane.waiting = {"timer": 5.0, "since": 0.0}
    elif move == "retry":
        lane.waiting = {"attempt": 2}
        lane.waiting["since"] = 1.0  # (changed in place right after, as a retried task step does)
    elif move == "unwait":
        lane.waiting = None
    else:
        fail_step(state, new_execution(state, key, lane.step, "failed", error="KeyError: 'x'", started_at=0.0,
                                       now=1.0), for_good=True)


@settings(max_examples=60, deadline=None)
@given(moves=st.lists(st.tuples(st.integers(0, BRANCHES - 1), MOVES), max_size=120),
       every=st.integers(1, 5))
def test_a_wide_parallel_kept_lane_by_lane_reads_back_as_its_lanes_stand(
    moves: list[tuple[int, str]], every: int,
) -> None:
    for wide_from in (2, 32):
        _header_lanes.WIDE, saved = wide_from, _header_lanes.WIDE
        try:
            state = new_state(WIDE, "i", None, 0.0)
            assert open_branches(state, PARALLEL, "")
            for n, (branch, move) in enumerate(moves):
                _apply(state, f"p/b{branch}", move)
                if n % every == 0:  # (several changes between two checkpoints, or one)
                    assert _read_back(state).lanes == state.lanes
            assert _read_back(state).lanes == state.lanes
            assert isinstance(state.header_lanes, _header_lanes.KeptLanes)
        finally:
            _header_lanes.WIDE = saved


@settings(max_examples=60, deadline=None)
@given(count=st.integers(33, 60), data=st.data())
def test_a_wide_map_kept_lane_by_lane_reads_back_as_its_lanes_stand(count: int, data: Any) -> None:
    """Items start, move on, end and drop out (the lanes fall below the threshold and rise
    above it again), and the untouched ones are left out."""
    state = new_state(FAN, "i", count, 0.0)
    main = state.lanes[""]
    main.step = "each"
    progress = open_items(state, MAP, main, start_record(state, "", MAP, list(range(count)), 0.0))
    running: list[tuple[int, str]] = []
    for _ in range(data.draw(st.integers(1, 3 * count))):
        action = data.draw(st.sampled_from(["start", "start", "move", "end"]))
        if action == "start" and progress.started < count:
            running.append(start_item(state, MAP, progress, ""))
        elif running and action in ("move", "end"):
            index, key = running[data.draw(st.integers(0, len(running) - 1))]
            lane = state.lanes[key]
            if action == "move" and lane.step is not None:
                record = new_execution(state, key, lane.step, "completed", output=index, started_at=0.0, now=1.0)
                complete_step(state, FAN.lookup[lane.step][0], record, "finish" if lane.step == "work" else None)
            elif action == "end":
                item_ended(state, MAP, progress, index, key, failed=False)
                running.remove((index, key))
        assert _read_back(state).lanes == state.lanes


def test_a_change_to_a_lane_that_goes_unnoted_fails_the_check() -> None:
    """The suite-wide check can fail: a lane changed behind its note's back (as code that set
    a field without going through the lane would) is caught at the next header."""
    state = new_state(WIDE, "i", None, 0.0)
    open_branches(state, PARALLEL, "")
    encode_header(state)
    object.__setattr__(state.lanes["p/b3"], "step", "two3")  # (no note)
    with pytest.raises(AssertionError, match="kept lanes"):
        encode_header(state)


def test_a_lane_added_or_dropped_unnoted_has_the_entries_built_anew(monkeypatch: pytest.MonkeyPatch) -> None:
    """The count of lanes kept must be the count of lanes: a plain ``Lane`` put in among a
    fan-out's (which notes nothing), or a lane deleted from the dict, is not missed."""
    monkeypatch.setattr(_header_lanes, "CHECK_KEPT", False)  # (what a user's process runs)
    state = new_state(WIDE, "i", None, 0.0)
    open_branches(state, PARALLEL, "")
    encode_header(state)
    state.lanes["stray"] = Lane(step="one0")
    assert _read_back(state).lanes == state.lanes
    del state.lanes["p/b7"]
    assert _read_back(state).lanes == state.lanes


def test_a_tracked_lane_is_equal_to_a_lane_with_the_same_fields() -> None:
    state = new_state(WIDE, "i", None, 0.0)
    open_branches(state, PARALLEL, "")
    tracked = state.lanes["p/b0"]
    assert isinstance(tracked, TrackedLane)
    assert tracked == Lane(step="one0") and Lane(step="one0") == tracked
    assert tracked != Lane(step="two0") and not (Lane(step="one0", last=3) == tracked)
    assert tracked != "one0"
    assert isinstance(state.lanes[""], Lane) and not isinstance(state.lanes[""], TrackedLane)


def _staggered(branches: int, ran: list[str]) -> tf.WorkflowDefinition:
    def sleeper(i: int) -> Any:
        async def step(_: Any) -> int:
            await trio.sleep(1 + i)
            ran.append(f"b{i}")
            return i
        return step

    def then(i: int) -> Any:
        async def step(_: Any) -> int:
            return i
        return step

    return tf.workflow("staggered").parallel("p", branches=[
        tf.branch(f"b{i}").step(f"one{i}", sleeper(i)).step(f"two{i}", then(i)).build()
        for i in range(branches)]).build()


async def test_a_wide_parallel_stopped_halfway_resumes_each_branch_where_it_stood(
    autojump_clock: trio.testing.MockClock, wide_from: int,
) -> None:
    """64 branches ending one a second, each in a checkpoint of its own (its header kept lane
    by lane); the engine stops when half have ended, and the next one runs only the others."""
    ran: list[str] = []
    wf = _staggered(64, ran)
    adapter = tf.adapters.MemoryAdapter()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("staggered")
        await trio.sleep(32.5)  # branches 0 to 31 have ended (branch i at 1 + i seconds)
    assert sorted(ran) == sorted(f"b{i}" for i in range(32))
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        done = await engine.wait(iid)
    assert done.status == "completed", done.error
    assert done.output == {f"b{i}": i for i in range(64)}
    assert sorted(ran) == sorted(f"b{i}" for i in range(64))  # each branch's step ran once
    assert [r.step_name for r in done.history if r.status == "completed"].count("one5") == 1


def test_what_was_kept_of_a_fan_out_is_let_go_once_the_main_line_runs_alone(wide_from: int) -> None:
    """A long-lived instance does not hold a thousand kept entries for the rest of its run after
    its wide parallel step ended: the next header lets go of them."""
    state = new_state(WIDE, "i", None, 0.0)
    open_branches(state, PARALLEL, "")
    encode_header(state)
    assert state.header_lanes is not None  # (40 lanes and more: kept)
    for i in range(BRANCHES):
        _move(state, f"p/b{i}", f"one{i}", None)
    _move(state, "", "p", None)  # (the parallel step completes: its branch lanes go)
    assert list(state.lanes) == [""]
    assert _read_back(state).lanes == state.lanes
    assert state.header_lanes is None and not state.lane_notes


def test_a_checkpoint_in_which_most_lanes_changed_is_written_out_anew(monkeypatch: pytest.MonkeyPatch) -> None:
    """At the user's settings: the branches all moving on together (their steps ended in one
    pass) are packed in one go, and the entries are kept again from the next quieter one."""
    monkeypatch.setattr(_header_lanes, "WIDE", 32)
    monkeypatch.setattr(_header_lanes, "BUSY", 0.25)
    state = new_state(WIDE, "i", None, 0.0)
    open_branches(state, PARALLEL, "")
    assert _read_back(state).lanes == state.lanes  # (every lane new: written out anew)
    assert state.header_lanes is None and not state.lane_notes
    _move(state, "p/b0", "one0", "two0")
    assert _read_back(state).lanes == state.lanes  # (one changed: kept from here on)
    assert isinstance(state.header_lanes, _header_lanes.KeptLanes)
    for i in range(1, BRANCHES):
        _move(state, f"p/b{i}", f"one{i}", f"two{i}")
    assert _read_back(state).lanes == state.lanes
    assert state.header_lanes is None
    _move(state, "p/b3", "two3", None)
    assert _read_back(state).lanes == state.lanes
    assert isinstance(state.header_lanes, _header_lanes.KeptLanes)
