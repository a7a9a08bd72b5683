"""A map's item lanes that stand where their last record's step sends them are left out of the
header (which holds, once, where each step of the map's branch sends its item), so a map with
thousands of items in flight rewrites a header that does not grow with them; reading the header
puts each back after its newest record since its map began. Items after a choice (which goes
where it decides), waiting, retrying or failed are written out; a map run again (a loop) does
not take the records of its run before for its items'."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow._codec import decode, encode_header, encode_record, encode_start
from trioflow._decide import complete_step, fail_step, new_execution, new_state
from trioflow._map import open_items, start_item, start_record

#: Where the lanes are in a header, and where the steps that send item lanes on are.
LANES = 8
ITEM_NEXT = 20


async def _pass(value: Any) -> Any:
    return value


FAN = (tf.workflow("fan")
       .map("each", items=lambda ctx: list(range(ctx.input)),
            branch=tf.branch("item")
            .choice("route", choices=[tf.when(lambda ctx: ctx.item % 2 == 0, next="work")], default="other")
            .step("work", _pass).step("finish", _pass, end=True)
            .step("other", _pass).build())
       .build())
MAP = FAN.lookup["each"][0]

#: Where an item's lane may stand.
KINDS = st.sampled_from(["untouched", "routed", "worked", "finished", "retrying", "failed", "waiting"])


def _place(state: Any, key: str, kind: str, item: int) -> None:
    """Put the item lane ``key`` where ``kind`` says."""
    def run(step: str, target: str | None) -> None:
        record = new_execution(state, key, step, "completed", output=item, started_at=0.0, now=1.0)
        complete_step(state, FAN.lookup[step][0], record, target)

    if kind in ("routed", "worked", "finished"):
        run("route", "work")  # (a choice: where it went is the header's to say)
    if kind in ("worked", "finished"):
        run("work", "finish")
    if kind == "finished":
        run("finish", None)
    lane = state.lanes[key]
    if kind == "retrying":
        lane.waiting = {"attempt": 2}
    elif kind == "failed":
        fail_step(state, new_execution(state, key, "route", "failed", error="KeyError: 'x'", started_at=0.0, now=1.0),
                  for_good=True)
    elif kind == "waiting":
        lane.waiting = {"timer": 5.0, "since": 0.0}


@settings(max_examples=150, deadline=None)
@given(count=st.integers(1, 40), runs=st.integers(1, 2), data=st.data())
def test_item_lanes_read_back_where_they_stand(count: int, runs: int, data: Any) -> None:
    """Whatever its items stand at, a map's header reads back as the lanes it was written from,
    and names no item that stands where its last record's step sends it (in its second run, a
    loop's, too: the items' records of the first run say nothing of the second's)."""
    state = new_state(FAN, "i", count, 0.0)
    main = state.lanes[""]
    for run in range(runs):
        main.step = "each"
        progress = open_items(state, MAP, main, start_record(state, "", MAP, list(range(count)), 0.0))
        kinds = {}
        for _ in range(data.draw(st.integers(0, count))):
            index, key = start_item(state, MAP, progress, "")
            kinds[key] = data.draw(KINDS)
            _place(state, key, kinds[key], index)
        header = encode_header(state)
        raw = msgpack.unpackb(header, strict_map_key=False)
        left_out = {key for key, kind in kinds.items() if kind in ("worked", "finished")}
        assert not set(raw[LANES]) & left_out
        if left_out:
            assert raw[ITEM_NEXT] == {"work": "finish", "finish": None, "other": None}
        read = decode(encode_start(state), header, [encode_record(r) for r in state.records])
        assert read.lanes == state.lanes
        if run == 0 and runs == 2:  # the map ends, and the loop runs it again
            record = new_execution(state, "", "each", "completed", output=[], started_at=0.0, now=1.0)
            complete_step(state, MAP, record, "each")


_calls: Counter[str] = Counter()


async def _fetch(ctx: tf.WorkflowContext) -> int:
    _calls[f"fetch {ctx.item}"] += 1
    return int(ctx.item)


async def _store(ctx: tf.WorkflowContext) -> int:
    _calls[f"store {ctx.item}"] += 1
    await trio.sleep(100 + ctx.item)
    return int(ctx.item) * 10


async def _count(ctx: tf.WorkflowContext) -> int:
    return int(ctx.get("rounds", 0)) + 1


BATCH = (tf.workflow("batch")
         .map("items", items=lambda ctx: list(range(ctx.input)),
              branch=tf.branch("item").step("fetch", _fetch).step("store", _store).build())
         .step("round", lambda ctx: ctx.set("rounds", int(ctx.get("rounds", 0)) + 1))
         .choice("again", choices=[tf.when(lambda ctx: ctx.get("rounds") < 2, next="items")], default="done")
         .succeed("done")
         .build())


async def test_a_restart_mid_map_in_a_loop_runs_no_item_step_again(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A map run twice (a loop), the engine closed while its second run's items wait in their
    second step, each past its first: the next engine takes every item up at its second step
    (no item's first step runs a third time), not where its first run's records left it."""
    _calls.clear()
    path = tmp_path / "loop.db"
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(BATCH)
        iid = await engine.start("batch", 30)
        await trio.sleep(250)  # the first run's items ended; the second's are in their store steps
        stored = await engine.adapter.load(iid)
        assert stored is not None
        raw = msgpack.unpackb(stored.header, strict_map_key=False)
        assert list(raw[LANES]) == [""] and raw[ITEM_NEXT]["fetch"] == "store"  # (every item left out)
    assert all(_calls[f"fetch {i}"] == 2 for i in range(30)), _calls
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(BATCH)
        done = await engine.wait(iid)
    assert done.status == "completed", done.error
    assert all(_calls[f"fetch {i}"] == 2 for i in range(30)), _calls  # (none ran again)
    assert done.step_results["items"].output == [i * 10 for i in range(30)]
