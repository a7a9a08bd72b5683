"""Review of 3245eac (the MemoryAdapter's _FinishOrder, SQLite's trioflow_let_go trigger): an
adversarial tester's checks. The first three pinned bugs of 3245eac (fixed since: a row holds
its current place, so a row finishing again at the same time leaves one stale place, counted;
a child let go takes its place by a binary search); the others guard what was looked at
(random sequences with finish times that tie, retention through the engine with children).
(The review also ran a file written alternately by this code and by 5823bc0, each purging
and deleting in turn: both did right. That test needed a venv of 5823bc0 made by hand, and
is not kept.)"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

import trioflow as tf
import trioflow.adapters._memory as memory_module
from storages import finish
from test_review_of_purge_walk import (Clock, count_key_calls, end, ids, make, places, run_against_model,
                                      stale_places)
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.adapters._memory import _Row
from trioflow.testing import open_test_engine, virtual_wall_clock


def rows_alive(prefix: str) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is _Row and o.instance_id.startswith(prefix))


# -- 1. a row finished twice at one time: two current places, one counted -----------------------


async def test_rows_finished_twice_at_one_time_stay_alive_after_their_purge() -> None:
    """A row that finishes again at the same clock reading (completed, then compensated, on a
    virtual clock or a coarse one) leaves its first place stale, counted once, and its purge
    leaves no place current. (At 3245eac the first place was current again: ``_current``
    compared finish times only, so both places counted as the row's, while ``_stamp`` counted
    the first as stale. A sweep in between keeps both (and sets the count to 0); once the row is purged
    its two places are stale, counted once. 1,000 such rows, purged by status while a failed
    row is kept at the front: 2,000 places stay for 1 stored row, holding the 1,000 purged
    ``_Row``s (and each purge by status walks them again), where the sweep's bound is the live
    places plus 64."""
    clock = Clock(1000.0)
    a = MemoryAdapter()
    a.use_clock(clock)
    await a.open()
    await make(a, "front", "plain", "failed")  # kept for inspection: the deque's front never moves
    for n in range(1000):
        await make(a, f"twice{n}", "saga")
        await end(a, clock, f"twice{n}", "completed", 1000.0)
        await end(a, clock, f"twice{n}", "compensated", 1000.0)  # (same time: the clock did not move)
    for n in range(70):  # completed rows purged by status: enough stale places for one sweep
        await make(a, f"done{n}", "plain", "completed")
        assert await a.purge(1e12, 100, status="completed") == 1
    assert await a.purge(1e12, 10_000, status="compensated") == 1000
    assert await ids(a) == ["front"]
    stale = stale_places(a)
    assert stale <= 1 + 64 + 1, f"{stale} stale places in the finish order for 1 stored row"
    assert rows_alive("twice") <= 66, f"{rows_alive('twice')} purged _Row objects alive for 1 stored row"


async def test_children_let_go_and_finished_again_at_one_time_stay_alive_after_their_delete() -> None:
    """The same through ``released``: 500 children let go by their parent's deletion (their
    places in the sorted list), each back to running and finished again at the same time (a
    deque place too: the released one is current again), a sweep, then each deleted through
    the adapter beside a failed row kept at the front: 1,000 stale places stay, counted 500,
    and the 500 deleted ``_Row``s with them."""
    clock = Clock(1000.0)
    a = MemoryAdapter()
    a.use_clock(clock)
    await a.open()
    await make(a, "front", "plain", "failed")
    await make(a, "p", "order")
    for n in range(500):
        await make(a, f"again{n}", "kid", "completed", "p")
    await end(a, clock, "p", "completed", 1000.0)
    assert await a.delete("p") is True  # the 500 children are let go: 500 released places
    for n in range(500):
        await end(a, clock, f"again{n}", "running", 1000.0)
        await end(a, clock, f"again{n}", "completed", 1000.0)  # (same time: both places current)
    for n in range(70):  # deleted rows: enough stale places for one sweep, which keeps both
        await make(a, f"x{n}", "plain", "completed")
        assert await a.delete(f"x{n}") is True
    for n in range(500):
        assert await a.delete(f"again{n}") is True
    assert await ids(a) == ["front"]
    stale = stale_places(a)
    assert stale <= 1 + 64 + 1, f"{stale} stale places (counted {a._order.stale}) for 1 stored row"
    assert rows_alive("again") <= 66, f"{rows_alive('again')} deleted _Row objects alive for 1 stored row"


# -- 2. the released list: each release sorts all of it ---------------------------------------


async def test_letting_go_of_one_child_beside_many_released_costs_what_it_lets_go(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/adapters.md: a purge or a delete that lets children go costs what it deletes and
    what it lets go, not what is stored. (At 3245eac ``_FinishOrder.release`` appended to and
    sorted the whole ``released`` list, one key call per place: beside 20,000 children let go
    earlier, letting go of one more cost 20,000 key calls, each time.)"""
    calls = count_key_calls(monkeypatch)
    clock = Clock(1000.0)
    a = MemoryAdapter()
    a.use_clock(clock)
    await a.open()
    for parent in ("p", "q"):
        await make(a, parent, "order", "completed")
    clock.now = 1500.0
    for parent in ("p", "q"):
        await make(a, f"{parent}/k", "kid", "failed", parent)
    clock.now = 2000.0
    await make(a, "big", "map")
    for n in range(20_000):
        await make(a, f"big/k{n}", "kid", "completed", "big")
    await end(a, clock, "big", "completed", 2000.0)
    assert await a.delete("big") is True
    assert len(a._order.released) == 20_000
    calls[0] = 0
    assert await a.purge(1700.0, 1, workflow_name="order") == 1, "p; its child (another workflow) is let go"
    assert await a.delete("q") is True, "q; its child is let go"
    assert calls[0] <= 100, f"{calls[0]} key calls to let go of two children"


# -- 3. both adapters and the model, finish times that tie --------------------------------------


IDS = [f"i{n}" for n in range(5)]
CREATE = st.tuples(st.just("create"), st.sampled_from(IDS), st.sampled_from(["a", "b"]),
                   st.sampled_from(["running", "completed", "failed"]), st.sampled_from([None, *IDS, *IDS]))
CHECKPOINT = st.tuples(st.just("checkpoint"), st.sampled_from(IDS),
                       st.sampled_from(["running", "completed", "failed", "compensated"]))
OPS = st.lists(st.tuples(st.sampled_from([0, 0, 1]), st.one_of(  # (the clock moves, or not)
    CREATE, CREATE, CHECKPOINT, CHECKPOINT, CHECKPOINT,
    st.tuples(st.just("delete"), st.sampled_from(IDS)),
    st.tuples(st.just("purge"), st.sampled_from([0, 1, 3]), st.sampled_from([0, 100]),
              st.sampled_from([None, "completed", "failed", "compensated"]), st.sampled_from([None, "a", "b"])),
    st.tuples(st.just("reopen")),
)), min_size=20, max_size=80)


@settings(max_examples=100, deadline=None)
@given(ops=OPS)
@example(ops=[  # (found by this property at 2,000 examples, shrunk by hand)
    (0, ("create", "i4", "a", "completed", None)),
    (0, ("checkpoint", "i4", "failed")),  # same time: its completed place is current again
    (0, ("create", "i1", "a", "completed", None)),
    (0, ("delete", "i1")),  # a sweep: keeps both of i4's places, counts 0 stale
    (0, ("checkpoint", "i4", "running")),  # two stale places, counted 1
])
def test_both_adapters_agree_when_finish_times_tie(ops: list[tuple[int, tuple[Any, ...]]]) -> None:
    """The review's model, with a clock that moves on one op in three (finishes at one time,
    a row finishing again at the time it finished), and a sweep at every stale place
    (``_COMPACT_AT`` 0): counts and rows agree (3,000 random sequences did), and the
    MemoryAdapter's count of stale places never falls below the stale places it holds (the
    example fails it: see the first test)."""
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(memory_module, "_COMPACT_AT", 0):
        trio.run(run_against_model, ops, Path(tmp) / "tie.db")


# -- 5. through the engine: retention on SQLite with children and compensation ------------------


async def _reserve(ctx: tf.WorkflowContext) -> Any:
    return ctx.input


async def _release(ctx: tf.WorkflowContext, result: Any) -> None:
    return None


async def _boom(ctx: tf.WorkflowContext) -> Any:
    raise ValueError("declined")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_retention_takes_compensated_families_whole(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str) -> None:
    """Parents whose map's children complete and then fail, compensating them as a unit,
    all at one virtual time, under retention: every family goes whole, and the finish order
    holds no more than the sweep's bound afterwards."""
    kid = tf.workflow("kid").step("reserve", _reserve, _release).build()
    item = tf.branch("b").child("run", workflow="kid", input=lambda ctx: ctx.item).build()
    order = tf.workflow("order").map("each", items=lambda ctx: [0, 1, 2], branch=item).step("pay", _boom).build()
    memory = MemoryAdapter()
    adapter = memory if kind == "memory" else SQLiteAdapter(tmp_path / "r.db")
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock(), retain_finished=30) as engine:
        engine.register(kid)
        engine.register(order)
        for n in range(40):
            inst = await finish(engine, await engine.start("order", instance_id=f"o{n}"))
            assert inst.status == "failed"
        kids = [i.status for i in await engine.get_instances("kid")]
        assert kids == ["compensated"] * 120
        await trio.sleep(200)
        assert await engine.get_instances() == []
    if kind == "memory":
        assert len(places(memory)) <= 64 + 1
