"""A long-lived engine holds nothing per finished instance, from a review (each failed before its
fix): MemoryAdapter's wake heaps and finish order, held rows of repeated resume() calls, and
stalled entries of instances whose end was stored after all. Sizes are asserted against a bound
independent of the number of instances run (the heaps keep at most twice their live entries,
plus a slack of 64)."""

from __future__ import annotations

import gc
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow import _current
from trioflow._snapshot import TERMINAL
from trioflow.adapters import MemoryAdapter
from trioflow.adapters._memory import _Row
from trioflow.testing import open_test_engine, virtual_wall_clock


async def ok(ctx: Any) -> int:
    return 1


async def boom(ctx: Any) -> int:
    raise ValueError("card declined")


def _heap_entries(adapter: MemoryAdapter) -> int:
    return sum(len(heap) for heap in adapter._wakes.values())


async def _wait_all(engine: tf.Engine, ids: list[str]) -> None:
    for iid in ids:
        try:
            await engine.wait(iid)
        except tf.UnknownInstanceError:
            pass  # finished and purged already (retain_finished=0)


# -- 1. MemoryAdapter._wakes: an entry per finished (and purged) signal waiter ------------------

APPROVAL = (tf.workflow("approval").step("submit", ok).receive("approved", signal="approved")
            .step("pay", ok).build())


async def test_memory_wake_heap_keeps_an_entry_per_finished_signal_waiter(
        autojump_clock: trio.testing.MockClock) -> None:
    """Two approvals that never come stay waiting (as some do in any long-lived service). Every
    later approval that parks on its receive pushes ``(inf, order, id)`` on the workflow's heap;
    it completes and retention purges its row, but the entry stays: stale entries are only
    dropped at the head, and the waker's ``next_wake`` (limit 1) never looks past the second
    live entry. 2,000 finished and purged instances leave 2,000 heap entries."""
    adapter = MemoryAdapter()
    n = 2000
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock(), retain_finished=0) as engine:
        engine.register(APPROVAL)
        for k in range(2):  # never approved
            await engine.start("approval", {"forgotten": k})
        await trio.sleep(2)
        ids = [await engine.start("approval", {"k": k}) for k in range(n)]
        await trio.sleep(2)  # each parks (a wait longer than PARK_AFTER)
        for iid in ids:
            await engine.signal(iid, "approved")
        await _wait_all(engine, ids)
        await trio.sleep(5)  # retention purges them
        assert len(adapter._rows) == 2  # only the two forgotten ones are still stored
        assert _heap_entries(adapter) <= 2 * 2 + 64, (
            f"{_heap_entries(adapter)} wake-heap entries for {len(adapter._rows)} stored instances")


# -- 2. MemoryAdapter._wakes: an entry per wake of a long-lived looping waiter ------------------

ACCOUNT = (tf.workflow("account").receive("op", signal="op")
           .choice("more", choices=[tf.when(lambda ctx: ctx.steps["op"] != "close", next="op")], default="closed")
           .pass_("closed", end=True).build())


async def test_memory_wake_heap_grows_per_signal_to_a_long_lived_waiter(
        autojump_clock: trio.testing.MockClock) -> None:
    """Two entity-style instances loop on a receive for ever. Each time the second one parks
    again its wake_at goes None -> inf, so ``checkpoint`` pushes another identical
    ``(inf, order, id)``; duplicates are dropped only at the head (behind the first instance,
    they never are). 300 signals leave 300 heap entries for 2 stored instances."""
    adapter = MemoryAdapter()
    n = 300
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(ACCOUNT)
        await engine.start("account", {"a": 1})
        second = await engine.start("account", {"b": 2})
        await trio.sleep(2)
        for k in range(n):
            await engine.signal(second, "op", k)
            await trio.sleep(2)  # taken, then parked again
        assert len(adapter._rows) == 2
        assert _heap_entries(adapter) <= 2 * 2 + 64, (
            f"{_heap_entries(adapter)} wake-heap entries for {len(adapter._rows)} waiting instances")


# -- 3. MemoryAdapter's finish order: purged rows stay alive behind one kept row ---------------------

async def test_memory_purge_by_status_keeps_purged_rows_alive(autojump_clock: trio.testing.MockClock) -> None:
    """A service keeps failed instances for inspection and purges completed ones
    (``engine.purge(older_than=..., status="completed")``). The oldest finished row, a failed
    one, is never purged, so the finish order's deque never advances: every purged row's
    ``(finished_at, _Row)`` place stays, holding the whole row (start, header, records), and
    each purge walks them all again. 2,000 purged instances stay in memory."""
    adapter = MemoryAdapter()
    n = 2000
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(tf.workflow("good").step("a", ok).build())
        engine.register(tf.workflow("bad").step("a", boom).build())
        assert (await engine.wait(await engine.start("bad"))).status == "failed"
        purged = 0
        ids: set[str] = set()
        for _ in range(n // 500):
            for k in range(500):
                iid = await engine.start("good", {"k": k})
                ids.add(iid)
                await engine.wait(iid)
            await trio.sleep(10)
            purged += await engine.purge(older_than=5, status="completed")
        assert purged == n and len(adapter._rows) == 1
        gc.collect()
        # (This test's rows only: other tests' adapters may be alive in the same process.)
        alive = sum(1 for o in gc.get_objects() if type(o) is _Row and o.instance_id in ids)
        places = len(adapter._order.finished) + len(adapter._order.released)
        assert places <= 10, f"{places} places in the finish order for 1 stored row"
        assert alive <= 10, f"{alive} _Row objects alive for 1 stored row"


# -- 4. Engine._held: every resume() appends the held rows again --------------------------------

async def test_resume_appends_held_rows_again_each_call(autojump_clock: trio.testing.MockClock) -> None:
    """Instances left by an earlier engine whose workflow uses a job not registered (yet) are
    held. Each ``engine.resume()`` (what a service calls to take up stalled instances) appends
    the same StoredInstance rows, with all their records, to ``_held`` again: 100 calls hold
    10 instances 1,010 times."""
    adapter = MemoryAdapter()
    flow = tf.workflow("w").task("a", job="j").task("b", job="j").build()

    async def forever(data: Any) -> None:
        await trio.sleep(10**6)

    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.jobs.register("j", forever)
        engine.register(flow)
        for k in range(10):
            await engine.start("w", {"k": k})
        await trio.sleep(1)
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(flow)  # job "j" is not registered in this engine
        await trio.sleep(1)
        assert sum(len(rows) for rows in engine._held.values()) == 10
        for _ in range(100):
            assert await engine.resume() == []
        held = sum(len(rows) for rows in engine._held.values())
        assert held <= 10, f"{held} held rows for 10 held instances"


# -- 5. Engine._stalled: kept for instances whose end was stored, then purged -------------------

class AmbiguousCommit(MemoryAdapter):
    """Stores an instance's final checkpoint, then reports the connection lost (the commit
    happened, its acknowledgement did not arrive): what a network database, or a SQLite
    COMMIT that fails after writing, does now and then."""

    async def checkpoint(self, instance_id: str, status: Any, *args: Any, **kwargs: Any) -> Any:
        result = await super().checkpoint(instance_id, status, *args, **kwargs)
        if status in TERMINAL:
            raise tf.StorageUnavailableError("connection reset")
        return result


async def test_stalled_entries_outlive_instances_whose_end_was_stored(
        autojump_clock: trio.testing.MockClock) -> None:
    """The retry of such a checkpoint is refused (the fence moved), the failure cannot be
    stored either, and the engine puts the instance in ``_stalled``. Its row is completed, so
    retention purges it and ``resume()`` never takes it up: nothing pops the entry. 200 purged
    instances leave 200 entries (and ``wait()`` says each "stays running in storage")."""
    adapter = AmbiguousCommit()
    n = 200
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock(), retain_finished=0,
                                storage_retry_for=1) as engine:
        engine.register(tf.workflow("w").step("a", ok).build())
        for k in range(n):
            iid = await engine.start("w", {"k": k})
            try:
                await engine.wait(iid)
            except (tf.InstanceNotLiveError, tf.UnknownInstanceError):
                pass
        await trio.sleep(5)  # retention
        assert len(adapter._rows) == 0  # every row was stored completed, then purged
        assert await engine.resume() == []
        assert len(engine._stalled) <= 10, f"{len(engine._stalled)} stalled entries, 0 stored instances"


# -- 5. trioflow._current._lanes: an entry per child undone as a unit from a task of its own ----

async def undo_nothing(ctx: Any, result: Any) -> None:
    pass


async def slow(ctx: Any) -> int:
    await trio.sleep(1)
    return 2


async def test_a_child_undone_by_a_task_of_its_own_leaves_no_lane_behind(
        autojump_clock: trio.testing.MockClock) -> None:
    """A parent cancelled as its child completes (before its child step took the child's end)
    has the child compensated as a unit by a task the engine starts for it. That task set the
    lane of each compensation it ran (for ``current_step()``) in the process-wide registry of
    lanes by task, and never took it out: every such child left its whole state in memory, its
    parent's too, after both were purged, even after the engine closed."""
    kid = tf.workflow("kid").step("a", ok, undo_nothing).step("b", slow).build()
    parent = tf.workflow("parent").child("c", workflow="kid").build()
    n = 50
    async with open_test_engine(retain_finished=0) as engine, trio.open_nursery() as cancels:
        engine.register(kid)
        engine.register(parent)
        undone = []

        def on_completed(event: dict[str, Any]) -> None:  # (a sync listener: as the end is stored)
            if event["workflow_name"] == "kid":
                cancels.start_soon(engine.cancel, event["instance_id"].split("/")[0])

        def on_compensated(event: dict[str, Any]) -> None:
            if event["workflow_name"] == "kid":
                undone.append(event["instance_id"])

        engine.events.on("workflow.completed", on_completed)
        engine.events.on("workflow.compensated", on_compensated)
        ids = [await engine.start("parent", {"k": k}) for k in range(n)]
        await _wait_all(engine, ids)
        await trio.sleep(5)  # retention
    assert undone  # children were undone as units: the path this is about
    ended = [task for task in _current._lanes if task.coro.cr_frame is None]
    assert not ended, f"{len(ended)} ended tasks still hold a lane ({len(undone)} children undone)"
