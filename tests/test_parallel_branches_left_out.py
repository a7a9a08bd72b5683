"""A parallel step of 32 branches or more stores a start record naming its branches, where each
begins and where each of their steps that goes one way sends its lane; a header then leaves out
every branch that stands untouched or where its newest record's step sends it, and reading it
puts them back. A wide parallel step whose branches end one by one rewrites a header that does
not grow with its width (tests/test_review_of_scale.py counts the bytes). Branches after a
choice, waiting, retrying or failed are written out; a parallel step run again (a loop) does not
take its run before's records for its branches'."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow._codec import decode, encode_header, encode_record, encode_start
from trioflow._decide import complete_step, fail_step, new_execution, new_state, open_branches, open_wide, parallel_start
from trioflow._errors import SnapshotDecodeError
from trioflow._parallel import START_RECORD_FROM

#: Where the lanes are in a header, and where the start records of parallel steps whose
#: branches it leaves out are.
LANES = 8
STARTS = 21
WIDTH = START_RECORD_FROM + 1


async def _pass(value: Any) -> Any:
    return value


def _branch(i: int) -> tf.Branch:
    return (tf.branch(f"b{i}")
            .choice(f"route{i}", choices=[tf.when(lambda ctx: True, next=f"work{i}")], default=f"other{i}")
            .step(f"work{i}", _pass).step(f"finish{i}", _pass, end=True)
            .step(f"other{i}", _pass).build())


FAN = tf.workflow("fan").parallel("p", branches=[_branch(i) for i in range(WIDTH)]).build()
PARALLEL = FAN.lookup["p"][0]

#: Where a branch's lane may stand.
KINDS = st.sampled_from(["untouched", "routed", "worked", "finished", "retrying", "failed", "waiting"])


def _place(state: Any, i: int, kind: str) -> None:
    """Put branch ``i``'s lane where ``kind`` says."""
    key = f"p/b{i}"

    def run(step: str, target: str | None) -> None:
        record = new_execution(state, key, step, "completed", output=i, started_at=0.0, now=1.0)
        complete_step(state, FAN.lookup[step][0], record, target)

    if kind in ("routed", "worked", "finished"):
        run(f"route{i}", f"work{i}")  # (a choice: where it went is the header's to say)
    if kind in ("worked", "finished"):
        run(f"work{i}", f"finish{i}")
    if kind == "finished":
        run(f"finish{i}", None)
    lane = state.lanes[key]
    if kind == "retrying":
        lane.waiting = {"attempt": 2}
    elif kind == "failed":
        fail_step(state, new_execution(state, key, f"route{i}", "failed", error="KeyError: 'x'", started_at=0.0,
                                       now=1.0), for_good=True)
    elif kind == "waiting":
        lane.waiting = {"timer": 5.0, "since": 0.0}


def _read_back(state: Any) -> tuple[Any, list[Any]]:
    header = encode_header(state)
    read = decode(encode_start(state), header, [encode_record(r) for r in state.records])
    return read, msgpack.unpackb(header, strict_map_key=False)


@settings(max_examples=150, deadline=None)
@given(runs=st.integers(1, 2), data=st.data())
def test_branch_lanes_read_back_where_they_stand(runs: int, data: Any) -> None:
    """Wherever its branches stand, a wide parallel step's header reads back as the lanes it
    was written from, and names no branch that stands untouched or where its newest record's
    step sends it (in its second run, a loop's, too: the branches' records of the first run say
    nothing of the second's)."""
    state = new_state(FAN, "i", None, 0.0)
    main = state.lanes[""]
    for run in range(runs):
        main.step, main.waiting = "p", {"since": 0.0}
        assert open_branches(state, PARALLEL, "")
        start = parallel_start(state, PARALLEL, main, "", 0.0)
        assert start is not None
        open_wide(state, main, start)
        kinds = {i: data.draw(KINDS) for i in range(WIDTH)}
        for i, kind in kinds.items():
            _place(state, i, kind)
        read, raw = _read_back(state)
        assert read.lanes == state.lanes
        left_out = {f"p/b{i}" for i, kind in kinds.items() if kind in ("untouched", "worked", "finished")}
        assert not set(raw[LANES]) & left_out
        if left_out:
            assert raw[STARTS] == [start.seq]
        if run == 0 and runs == 2:  # the step ends, and the loop runs it again
            record = new_execution(state, "", "p", "completed", output={}, started_at=0.0, now=1.0)
            complete_step(state, PARALLEL, record, "p")
            assert main.begun is None and not any(key.startswith("p/") for key in state.lanes)


def test_a_narrower_parallel_step_stores_no_start_record() -> None:
    """Below 32 branches, a parallel step's lanes cost less in the header than a start record
    would: it stores none, and its history is as it was."""
    narrow = tf.workflow("narrow").parallel("p", branches=[_branch(i) for i in range(3)]).build()
    state = new_state(narrow, "i", None, 0.0)
    main = state.lanes[""]
    main.step = "p"
    open_branches(state, narrow.lookup["p"][0], "")
    assert parallel_start(state, narrow.lookup["p"][0], main, "", 0.0) is None


def test_a_header_that_names_a_record_no_parallel_step_began_is_refused() -> None:
    """Damage that makes the header name, as a parallel step's start, a record that is none
    (or whose lane is not at that step) is refused as malformed, not run from a wrong place."""
    state = new_state(FAN, "i", None, 0.0)
    main = state.lanes[""]
    main.step, main.waiting = "p", {"since": 0.0}
    open_branches(state, PARALLEL, "")
    start = parallel_start(state, PARALLEL, main, "", 0.0)
    assert start is not None
    open_wide(state, main, start)
    _place(state, 0, "worked")
    raw = msgpack.unpackb(encode_header(state), strict_map_key=False)
    records = [encode_record(r) for r in state.records]
    for damaged in ([1], [], "0", [0, 0.5]):
        raw[STARTS] = damaged
        with pytest.raises(SnapshotDecodeError):
            decode(encode_start(state), msgpack.packb(raw), records)


_calls: Counter[str] = Counter()


def _job(name: str, sleep: float = 0.0) -> Any:
    async def job(ctx: tf.WorkflowContext) -> str:
        _calls[name] += 1
        if sleep:
            await trio.sleep(sleep)
        return name
    return job


def _looping(width: int) -> tf.WorkflowDefinition:
    return (tf.workflow("loop")
            .parallel("p", branches=[tf.branch(f"b{i}").step(f"fetch{i}", _job(f"fetch{i}"))
                                     .step(f"store{i}", _job(f"store{i}", 100 + i)).build() for i in range(width)])
            .step("round", lambda ctx: ctx.set("rounds", int(ctx.get("rounds", 0)) + 1))
            .choice("again", choices=[tf.when(lambda ctx: ctx.get("rounds") < 2, next="p")], default="done")
            .succeed("done")
            .build())


async def test_a_restart_mid_parallel_in_a_loop_runs_no_branch_step_again(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A wide parallel step run twice (a loop), the engine closed while its second run's
    branches wait in their second step: the header lists the main lane alone, and the next
    engine takes every branch up at its second step (no branch's first step runs a third
    time), not where its first run's records left it."""
    _calls.clear()
    width = START_RECORD_FROM + 3
    path = tmp_path / "loop.db"
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(_looping(width))
        iid = await engine.start("loop")
        await trio.sleep(200)  # the first run's branches ended; the second's are in their store steps
        stored = await engine.adapter.load(iid)
        assert stored is not None
        raw = msgpack.unpackb(stored.header, strict_map_key=False)
        assert list(raw[LANES]) == [""] and len(raw[STARTS]) == 1  # (every branch left out)
    assert all(_calls[f"fetch{i}"] == 2 for i in range(width)), _calls
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(_looping(width))
        done = await engine.wait(iid)
    assert done.status == "completed", done.error
    assert all(_calls[f"fetch{i}"] == 2 for i in range(width)), _calls  # (none ran again)
    assert done.step_results["p"].output == {f"b{i}": f"store{i}" for i in range(width)}
    starts = [r for r in done.history if r.step_name == "p" and r.status == "started"]
    ends = [r for r in done.history if r.step_name == "p" and r.status == "completed"]
    assert [r.id for r in starts] == [r.id for r in ends] == ["p#1", "p#2"]  # (one execution each)


_undone: list[str] = []


def _reserve(i: int) -> Any:
    async def undo(ctx: tf.WorkflowContext, result: Any) -> None:
        _undone.append(f"r{i}")
    return undo


async def _fail(ctx: tf.WorkflowContext) -> None:
    raise RuntimeError("declined")


async def test_a_wide_parallel_step_resumed_mid_way_then_failing_compensates_each_branch_once(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """Branches that ended before a restart, their lanes left out of the header, are
    compensated once each when a step after the parallel fails; a view of the instance
    in flight shows the step begun (its start record), as a map's."""
    width = START_RECORD_FROM + 1
    _undone.clear()

    def definition() -> tf.WorkflowDefinition:
        return (tf.workflow("undo")
                .parallel("p", branches=[tf.branch(f"b{i}").step(f"r{i}", _job(f"r{i}", 10 * i),
                                                                   compensate=_reserve(i)).build()
                                         for i in range(width)])
                .step("charge", _fail)
                .build())

    path = tmp_path / "undo.db"
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(definition())
        iid = await engine.start("undo")
        await trio.sleep(10 * width // 2 + 1)  # about half the branches ended
        view = await engine.get_instance(iid)
        assert view.step_results["p"].status == "started"
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(definition())
        done = await engine.wait(iid)
    assert done.status == "failed" and done.failed_step == "charge", done.error
    assert sorted(_undone) == sorted(f"r{i}" for i in range(width)), _undone
    assert len(done.compensated_steps) == width


async def _one(ctx: tf.WorkflowContext) -> int:
    return 1


def _mixed(width: int) -> tf.WorkflowDefinition:
    """Branches of every kind a header may leave out or must list: two steps in a row, a
    choice, a timer, a step that fails and is caught."""
    def branch(i: int) -> tf.Branch:
        kind = i % 4
        builder = tf.branch(f"b{i}")
        if kind == 0:
            return builder.step(f"a{i}", _one).step(f"z{i}", _one).build()
        if kind == 1:
            return (builder.choice(f"c{i}", choices=[tf.when(lambda ctx: True, next=f"y{i}")], default=f"n{i}")
                    .step(f"y{i}", _one, end=True).step(f"n{i}", _one).build())
        if kind == 2:
            return builder.wait(f"w{i}", seconds=5 + i).step(f"after{i}", _one).build()
        return (builder.step(f"f{i}", _declined, catch=[tf.Catch(errors=[KeyError], next=f"h{i}")])
                .step(f"h{i}", _one).build())

    return tf.workflow("mixed").parallel("p", branches=[branch(i) for i in range(width)]).step("end", _one).build()


async def _declined(ctx: tf.WorkflowContext) -> None:
    raise KeyError("declined")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_crash_at_every_write_of_a_wide_parallel_step_gives_the_crash_free_outcome(
        tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    """The testing kit's crash explorer, over a parallel step whose lanes the header leaves out
    or lists (moved on, after a choice, waiting on a timer, caught): dying after every write and
    while making it, each resumed run ends as the crash-free one, and no step recorded
    completed runs again. (Eight branches stand for a wide step here: the threshold is lowered,
    so that each of the explorer's hundred-odd runs stays short.)"""
    from trioflow import _parallel
    from trioflow.testing import explore_crashes

    monkeypatch.setattr(_parallel, "START_RECORD_FROM", 4)
    files = iter(range(10**6))
    factory = tf.adapters.MemoryAdapter if kind == "memory" \
        else (lambda: tf.adapters.SQLiteAdapter(tmp_path / f"{next(files)}.db"))
    report = await explore_crashes(_mixed(8), 1, adapter_factory=factory)
    assert report.baseline.status == "completed"
    assert report.baseline.history[0].status == "started"  # (the step stored its start record)
    assert len(report.points) > 8


async def test_a_wide_parallel_steps_layout_is_read_once_not_at_every_checkpoint(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header's kept entries read a wide parallel step's layout from its start record once
    per execution: read at each of its branches' checkpoints (a walk over every branch each
    time), a 1,000-branch step whose branches end one by one cost 5.6 times per branch what a
    10-branch one does (bench/run.py's wide_parallel_staggered), against 1.3 read once."""
    from trioflow import _header_lanes

    reads = Counter[int]()
    layout = _header_lanes.layout

    def counted(record: Any) -> Any:
        reads[len(record.input["branches"]) if isinstance(record.input, dict) else 0] += 1
        return layout(record)

    monkeypatch.setattr(_header_lanes, "layout", counted)
    # (The suite checks every header written from kept entries against a walk over every lane,
    # which reads the layout each time: not what a user's engine does.)
    monkeypatch.setattr(_header_lanes, "CHECK_KEPT", False)

    async def staggered(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(1 + 0.01 * int(ctx.lane.rpartition("/b")[2]))
        return 1

    for width in (40, 200):
        wf = tf.workflow(f"w{width}").parallel("p", branches=[
            tf.branch(f"b{i}").step(f"s{i}", staggered).build() for i in range(width)]).build()
        async with tf.open_engine() as engine:
            engine.register(wf)
            done = await engine.wait(await engine.start(wf.name))
        assert done.status == "completed", done.error
    assert reads[200] <= 4 and reads[40] <= 4, reads  # (once as the kept entries are built, say)
