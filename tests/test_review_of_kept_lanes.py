"""Review of 3e3017c (a wide fan-out's header kept lane by lane between checkpoints): what a
header written from kept entries says differently from one written by a walk over every lane.

1. The lanes' order. A header's lanes map is read back in the order it was written, and that
   order is what ``WorkflowInstance.waiting`` goes by: "the main line's wait, or else the first
   waiting branch's" (docs/waiting.md; ``trioflow._snapshot._waiting`` takes the first lane of
   the instance read back that waits). A walk writes the lanes in the instance's own order (the
   branches' definition order, the items' index order). ``KeptLanes`` writes them in the order
   their packed entries were (re)made: a lane named by seq (moved on) that starts waiting is
   written last. So a wide parallel step whose later branches reach their wait first shows, in
   ``get_instance()``, the wait of whichever branch started waiting first, not the first branch's;
   from 32 lanes on (the user's default) as from 2. The kept check (``CHECK_KEPT``) compares the
   lanes as dicts, so it does not see this.

2. Performance: lanes waiting on a child step are re-encoded at every checkpoint. ``KeptLanes``
   treats every lane with ``begun`` set as one "written every time" (meant for a running map's
   lane, whose ``MapProgress`` changes in place), and a child step's lane has ``begun`` set for as
   long as it waits for its child. A map of items that each wait for a child (the wide fan-out the
   docs describe: "a map of 10,000 items waiting on children") repacks every waiting item at every
   checkpoint, one ``msgpack`` call each: the work per checkpoint grows with the items, as before
   the commit, only slower (measured: 2,000 child items, encode_header 1.3 s kept against 0.6 s
   walked).

3. Performance: in a map of maps, every inner map that begins or ends changes ``firsts`` and has
   ``KeptLanes.update`` give up and build every entry anew (a walk and a pack per lane): dozens
   of rebuilds for 60 orders, 2,419 for 2,000 (encode_header 1.33 s kept, 1.11 s walked).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from storages import finish
from trioflow import _header_lanes
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock

N = 40  # (above WIDE's 32)


@pytest.fixture(params=[2, 32], ids=["wide-from-2", "wide-from-32"])
def wide_from(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(_header_lanes, "WIDE", request.param)
    return int(request.param)


def _staggered_naps() -> tf.WorkflowDefinition:
    """Branch ``b<i>`` runs a step of ``N - i`` seconds (the last branch ends it first), then
    waits a timer of its own length (each branch's due time differs)."""
    def first(i: int) -> Any:
        async def step(_: Any) -> int:
            await trio.sleep(N - i)
            return i
        return step

    return tf.workflow("naps").parallel("p", branches=[
        tf.branch(f"b{i}").step(f"one{i}", first(i)).wait(f"nap{i}", seconds=10_000 + 100 * i).build()
        for i in range(N)]).build()


async def test_a_wide_parallel_shows_its_first_branchs_wait_whichever_branch_began_waiting_first(
        autojump_clock: trio.testing.MockClock, wide_from: int) -> None:
    """FAILS: ``waiting`` shows the wait of branch b39 (the first to start waiting), not b0's.
    (With the walk, ``WIDE`` above the lane count, it shows b0's, live and after a restart.)"""
    adapter = MemoryAdapter()
    waits: dict[str, Any] = {}
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.events.on("workflow.step.waiting", lambda e: waits.__setitem__(e["lane"], e["waiting"]))
        engine.register(_staggered_naps())
        iid = await engine.start("naps")
        await trio.sleep(N + 0.5)  # every branch waits now (b39 since 1 s, b0 since 40 s)
        live = await engine.get_instance(iid)
    assert waits["p/b0"] != waits["p/b39"]
    assert live is not None and live.waiting == waits["p/b0"], (
        f"shows {live and live.waiting}; b0 waits {waits['p/b0']}, b39 {waits['p/b39']}")
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(_staggered_naps())
        await trio.sleep(1)
        stored = await engine.get_instance(iid)
    assert stored is not None and stored.waiting == waits["p/b0"]


async def test_a_wide_map_shows_its_first_items_wait_whichever_item_began_waiting_first(
        autojump_clock: trio.testing.MockClock, wide_from: int) -> None:
    """FAILS: as above, for a map's items (index order, not the order they began waiting)."""
    async def first(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(N - ctx.item_index)
        return int(ctx.item)

    item = tf.branch("item").step("one", first).receive("go", signal="go", timeout=50_000).build()
    wf = tf.workflow("receives").map("each", items=lambda ctx: ctx.input, branch=item).build()
    waits: dict[str, Any] = {}
    async with open_test_engine(clock=virtual_wall_clock()) as engine:
        engine.events.on("workflow.step.waiting", lambda e: waits.__setitem__(e["lane"], e["waiting"]))
        engine.register(wf)
        iid = await engine.start("receives", list(range(N)))
        await trio.sleep(N + 0.5)
        live = await engine.get_instance(iid)
    assert waits["each/#0"] != waits[f"each/#{N - 1}"]
    assert live is not None and live.waiting == waits["each/#0"], (
        f"shows {live and live.waiting}; item 0 waits {waits['each/#0']}")


async def test_a_checkpoint_of_a_wide_map_of_child_steps_encodes_only_the_lanes_that_changed(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAILS (performance): 200 items each waiting on a child that ends one a second; each
    checkpoint of the parent repacks every item still waiting (about 116 lane entries per
    header on average), where a map of plain steps repacks about one."""
    monkeypatch.setattr(_header_lanes, "WIDE", 32)  # (the user's default)
    monkeypatch.setattr(_header_lanes, "CHECK_KEPT", False)  # (its walk packs too: not counted)
    packed: list[int] = [0]
    headers: list[int] = [0]
    real_pack, real_written = _header_lanes._pack, _header_lanes.KeptLanes.written

    def pack(value: Any) -> bytes:
        packed[0] += 1
        return real_pack(value)

    def written(self: Any) -> Any:
        headers[0] += 1
        return real_written(self)

    monkeypatch.setattr(_header_lanes, "_pack", pack)
    monkeypatch.setattr(_header_lanes.KeptLanes, "written", written)

    async def work(ctx: tf.WorkflowContext) -> int:
        return int(ctx.input)

    child = tf.workflow("kid").wait("nap", seconds=lambda ctx: 10 + ctx.input).step("work", work).build()
    item = tf.branch("item").child("spawn", workflow="kid").build()
    wf = tf.workflow("parent").map("each", items=lambda ctx: ctx.input, branch=item).build()
    async with open_test_engine(clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        engine.register(child)
        done = await finish(engine, await engine.start("parent", list(range(200))))
    assert done.status == "completed", done.error
    assert done.output == list(range(200))
    assert headers[0] > 100
    per_header = packed[0] / headers[0]
    assert per_header <= 4, f"{per_header:.1f} lane entries packed per checkpoint"


async def test_a_wide_map_of_maps_keeps_its_entries_as_inner_maps_begin_and_end(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAILS (performance): each inner map that begins or ends changes ``KeptLanes.firsts``, and
    ``update`` then throws every kept entry away and walks every lane again (three dozen rebuilds for 60
    outer items here; 2,419 for 2,000, where encoding took 1.33 s kept against 1.11 s walked).
    The lanes whose entries such a change affects (the inner map's items) are new or dropped,
    so noted, anyway."""
    monkeypatch.setattr(_header_lanes, "WIDE", 32)
    builds: list[int] = [0]
    real_init = _header_lanes.KeptLanes.__init__

    def init(self: Any, state: Any) -> None:
        builds[0] += 1
        real_init(self, state)

    monkeypatch.setattr(_header_lanes.KeptLanes, "__init__", init)

    async def pre(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(1 + ctx.item_index)
        return int(ctx.item)

    async def line(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(1)
        return int(ctx.item)

    order = (tf.branch("order").step("pre", pre)
             .map("lines", items=lambda ctx: [ctx.item, ctx.item], branch=tf.branch("l").step("line", line).build())
             .build())
    wf = tf.workflow("orders").map("each", items=lambda ctx: ctx.input, branch=order).build()
    async with open_test_engine(clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        done = await finish(engine, await engine.start("orders", list(range(60))))
    assert done.status == "completed", done.error
    assert done.output == [[i, i] for i in range(60)]
    assert builds[0] <= 5, f"the kept entries were built anew {builds[0]} times"
