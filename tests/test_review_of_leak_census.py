"""A census of the engine's and adapters' long-lived containers after a long mixed load through
ONE engine (a review for "many short-lived sagas in one long-lived process").

Every container that lives as long as the engine or its adapter is measured before the load and
after it (everything ended; retention has deleted the finished rows), at two load sizes, on
MemoryAdapter and on SQLite: each must be back to its baseline, or within a documented bound,
and none may grow with the load. ``test_long_lived_leaks.py`` covers the wake heaps' per-signal
growth, purge by status, ``_held``, ``_stalled`` and ``_current._lanes`` for a child undone as a
unit; this module covers everything else, and repeats none of those loads.

The load (per unit ``k``): completing sagas, failing ones that compensate, retries with stored
delays, cancels while running, while queued for a ``max_running`` slot, while waiting on a
timer, on a signal, or before a delayed start; workflow timeouts; receives signalled and timing
out (caught and not); ``delay=``/``start_at=``; maps (one tolerating a failed item); child
workflows, a map of children, a parent cancelled while its children run, a parent failing after
its children completed (undone as units), a parent with a workflow timeout queued behind its
children; ``wait()`` callers cancelled by their own timeouts on parked instances;
``get_instance()`` callers; event subscribers (``on`` sync and async, ``subscribe``) that come
and go with each wave; ``purge()`` and ``adapter.delete()`` of finished instances.

It found two, both fixed: the deadlines of parents queued for a slot were kept until the
deadline (a workflow timeout of days: an entry for each such parent until then), and SQLite's
look at when the next instance is due marked a parked row as about to run (kept until that
instance next checkpointed). Every other container came back to its baseline.
"""

from __future__ import annotations

import collections
import gc
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow import _current, _engine, _ids, _virtual_time
from trioflow.actors._run import Run
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.adapters import _sqlite
from trioflow.testing import open_test_engine, virtual_wall_clock

KEEP = 5.0  # retain_finished
MAX_RUNNING = 24


# -- the census ---------------------------------------------------------------------------------

def _nursery_tasks(supervisor: Any) -> int:
    return len(supervisor._nursery.child_tasks)


def census(engine: tf.Engine) -> dict[str, int]:
    """The size of every container that lives as long as the engine or its adapter."""
    e: Any = engine
    sizes: dict[str, int] = {
        # Engine (runtime/_engine.py)
        "engine._leftovers": sum(len(v) for v in (e._leftovers or {}).values()),
        "engine._old_rows": len(e._old_rows),
        "engine._waking": len(e._waking),
        "engine._wake_on_register": sum(len(v) for v in e._wake_on_register.values()),
        "engine._skipped_workflows": len(e._skipped_workflows),
        "engine._passed_over": len(e._passed_over),
        "engine._next_run": len(e._next_run),
        "engine._waiting": len(e._waiting),
        "engine._running": e._running,
        "engine._queued_deadlines": len(e._queued_deadlines),
        "engine._queued_deadlines_known": len(e._queued_deadlines_known),
        "engine._definitions": len(e._definitions),
        "engine._jobs_found": len(e._jobs_found),
        "engine._live": len(e._live),
        "engine._storing": len(e._storing),
        "engine._held": sum(len(v) for v in e._held.values()),
        "engine._undoing": len(e._undoing),
        "engine._unreadable": len(e._unreadable),
        "engine._stalled": len(e._stalled),
        "engine._pending_resumes": e._pending_resumes,
        "engine._ends._all": len(e._ends._all),
        "engine._ends._one": len(e._ends._one),
        "engine._ends._ends": len(e._ends._ends),
        "engine.jobs._jobs": len(e.jobs._jobs),
        "engine.jobs._async": len(e.jobs._async),
        # EngineChildren (runtime/_children.py)
        "children._fetching": len(e._children._fetching),
        "children._slots_watched": len(e._children._slots_watched),
        # EventBus (runtime/_events.py)
        "events._subscribers": len(e.events._subscribers),
        "events._routes": len(e.events._routes),
        "events._queues": len(e.events._queues),
        "events._streams": len(e.events._streams),
        # Supervisor (actors/_supervisor.py): the tasks of the two nurseries
        "supervisor.tasks": _nursery_tasks(e._supervisor),
        "beside.tasks": _nursery_tasks(e._start_beside.__self__),
        # module-level
        "_current._lanes": len(_current._lanes),
        "_ids._random_parts": len(_ids._random_parts),
        "_virtual_time._paused": len(_virtual_time._paused),
        "_sqlite._LOCKED_FILES": len(_sqlite._LOCKED_FILES),
        "_sqlite._FLOCKED": len(_sqlite._FLOCKED),
    }
    # ThreadSlots (actors/_threads.py)
    limiter = None if e._threads is None else e._threads._limiter
    sizes["threads.borrowed"] = 0 if limiter is None else limiter.borrowed_tokens
    sizes["threads.waiting"] = 0 if limiter is None else limiter.statistics().tasks_waiting
    adapter = engine.adapter
    if isinstance(adapter, MemoryAdapter):
        a: Any = adapter
        sizes.update({
            "memory._rows": len(a._rows),
            "memory._wakes": sum(len(h) for h in a._wakes.values()),
            "memory._wakes.keys": len(a._wakes),
            "memory._waiting_rows": sum(a._waiting_rows.values()),
            "memory._by_status": sum(len(v) for v in a._by_status.values()),
            "memory._by_workflow": sum(len(v) for v in a._by_workflow.values()),
            "memory._order.finished": len(a._order.finished),
            "memory._order.released": len(a._order.released),
            "memory._order.stale": a._order.stale,
            "memory._children": len(a._children),
            "memory._children.ids": sum(len(v) for v in a._children.values()),
        })
    if isinstance(adapter, SQLiteAdapter):
        s: Any = adapter
        sizes.update({
            "sqlite._known": len(s._known),
            "sqlite._pending": len(s._pending),
            "sqlite._queue": s._queue.qsize(),
            "sqlite._lock_fds": len(s._lock_fds),
        })
    return sizes


def alive_objects() -> dict[str, int]:
    """Objects of the engine's own kinds still alive: runs, instance states, lane contexts."""
    gc.collect()
    counts = {"gc.Run": 0, "gc.InstanceState": 0, "gc.WorkflowContext": 0}
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name == "Run" and isinstance(obj, Run):
            counts["gc.Run"] += 1
        elif name == "InstanceState":
            counts["gc.InstanceState"] += 1
        elif name == "WorkflowContext":
            counts["gc.WorkflowContext"] += 1
    return counts


# -- the workflows ------------------------------------------------------------------------------

async def ok(ctx: Any) -> int:
    return 1


async def undo(ctx: Any, result: Any) -> None:
    pass


async def boom(ctx: Any) -> None:
    raise ValueError("card declined")


async def sleepy(ctx: Any) -> int:
    await trio.sleep(5)
    return 2


async def sleepy10(ctx: Any) -> int:
    await trio.sleep(10)
    return 3


async def flaky(ctx: Any) -> int:
    if tf.current_step().attempt < 3:
        raise ConnectionError("try again")
    return 4


async def item_job(ctx: Any) -> int:
    if ctx.item == 2:
        raise ValueError("bad item")
    return int(ctx.item)


def plain(ctx: Any) -> int:
    return 6  # a plain def: run in a worker thread


def hooked(ctx: Any, *args: Any) -> None:
    pass


async def kid_work(ctx: Any) -> int:
    await trio.sleep(2)
    return 5


def workflows() -> list[Any]:
    b = tf.workflow
    return [
        b("saga").step("a", ok, undo).step("b", ok).build(),
        b("bad").step("a", ok, undo).step("b", boom).build(),
        b("retry").step("a", ok, undo).step("b", flaky, retry=tf.Retry(max_attempts=3, interval=2.0)).build(),
        b("slow").step("a", ok, undo).step("b", sleepy).build(),
        b("timer").step("a", ok, undo).wait("nap", seconds=30).step("b", ok).build(),
        b("approval").step("a", ok, undo)
        .receive("ok", signal="go", timeout=20, catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="late")])
        .step("pay", ok).succeed("paid").step("late", ok).build(),
        b("strict").step("a", ok, undo).receive("ok", signal="go", timeout=20).step("pay", ok).build(),
        b("slowpoke").step("a", ok, undo).step("b", sleepy10).with_timeout(3).build(),
        b("mapper").map("each", items=lambda ctx: [1, 2, 3], branch=tf.branch("item").step("x", item_job).build(),
                        tolerated_failures=1).build(),
        b("kid").step("a", ok, undo).step("b", kid_work).build(),
        b("parent").step("a", ok, undo).child("c", workflow="kid").step("b", ok).build(),
        b("map_parent").map("each", items=lambda ctx: [1, 2, 3],
                            branch=tf.branch("item").child("c", workflow="kid").build()).build(),
        b("bad_parent").map("each", items=lambda ctx: [1, 2],
                            branch=tf.branch("item").child("c", workflow="kid").build())
        .step("b", boom).build(),
        b("timed_parent").child("c", workflow="kid").step("b", ok).with_timeout(3600).build(),
        b("fork").parallel("both", branches=[tf.branch("l").step("x", sleepy).build(),
                                             tf.branch("r").step("y", boom).build()]).build(),
        b("threaded").step("a", plain, undo).step("b", ok).with_hooks(on_complete=hooked, on_failed=hooked).build(),
        # Waits for ever: the baseline's live wake-heap entries.
        b("forever").receive("never", signal="never").build(),
    ]


KINDS = 30
#: How the units ended, by kind: ``(kind, status)`` -> count (checked: the load takes every path).
OUTCOMES: collections.Counter[tuple[int, str]] = collections.Counter()


async def _wait_quietly(engine: tf.Engine, iid: str, kind: int) -> None:
    try:
        status = (await engine.wait(iid)).status
    except tf.UnknownInstanceError:
        status = "purged"  # finished and purged already
    OUTCOMES[kind, status] += 1


async def unit(engine: tf.Engine, k: int, wall: Callable[[], float]) -> None:
    """One short-lived instance (or family) of kind ``k % KINDS``, followed to its end."""
    kind = k % KINDS
    if kind == 0:
        iid = await engine.start("saga", {"k": k})
    elif kind == 1:
        iid = await engine.start("bad", {"k": k})
    elif kind == 2:
        iid = await engine.start("retry", {"k": k})
    elif kind == 3:  # cancelled while running (a wait() on it gives up first)
        iid = await engine.start("slow", {"k": k})
        with trio.move_on_after(0.5):
            await engine.wait(iid)
        await engine.cancel(iid)
    elif kind == 4:  # cancelled at once: queued for a slot, most of the time, in a burst
        iid = await engine.start("slow", {"k": k})
        await engine.cancel(iid)
    elif kind == 5:  # cancelled while parked on its timer
        iid = await engine.start("timer", {"k": k})
        await trio.sleep(3)
        await engine.cancel(iid)
    elif kind == 6:  # signalled while parked on its receive
        iid = await engine.start("approval", {"k": k})
        await trio.sleep(3)
        await engine.signal(iid, "go", {"by": "kim"})
    elif kind == 7:  # the receive times out, caught
        iid = await engine.start("approval", {"k": k})
    elif kind == 8:  # the receive times out, not caught: fails, compensates
        iid = await engine.start("strict", {"k": k})
    elif kind == 9:  # cancelled while parked on its receive
        iid = await engine.start("strict", {"k": k})
        await trio.sleep(3)
        await engine.cancel(iid)
    elif kind == 10:  # workflow timeout
        iid = await engine.start("slowpoke", {"k": k})
    elif kind == 11:
        iid = await engine.start("saga", {"k": k}, delay=5)
    elif kind == 12:
        iid = await engine.start("saga", {"k": k}, start_at=wall() + 7)
    elif kind == 13:  # cancelled before its delayed start
        iid = await engine.start("saga", {"k": k}, delay=60)
        await trio.sleep(2)
        await engine.cancel(iid)
    elif kind == 14:
        iid = await engine.start("mapper", {"k": k})
    elif kind == 15:
        iid = await engine.start("parent", {"k": k})
    elif kind == 16:
        iid = await engine.start("map_parent", {"k": k})
    elif kind == 17:  # a parent cancelled while its children run
        iid = await engine.start("map_parent", {"k": k})
        await trio.sleep(1)
        await engine.cancel(iid)
    elif kind == 18:  # fails after its children completed: they are undone as units
        iid = await engine.start("bad_parent", {"k": k})
    elif kind == 19:
        iid = await engine.start("timed_parent", {"k": k})
    elif kind == 20:  # wait() callers cancelled by their own timeout, on a parked instance
        iid = await engine.start("timer", {"k": k})
        await trio.sleep(2)
        with trio.move_on_after(1):
            await engine.wait(iid)
        with trio.move_on_after(0):
            await engine.wait(iid)
    elif kind == 21:  # get_instance() callers, some cut short
        iid = await engine.start("timer", {"k": k})
        for _ in range(3):
            await engine.get_instance(iid)
            await trio.sleep(2)
        with trio.move_on_after(0):
            await engine.get_instance(iid)
    elif kind == 22:  # deleted through the adapter once it has ended
        iid = await engine.start("saga", {"k": k})
        await engine.wait(iid)
        assert await engine.adapter.delete(iid)
        OUTCOMES[kind, "deleted"] += 1
        return
    elif kind == 23:  # a signal sent while it runs its first step (kept till the receive)
        iid = await engine.start("approval", {"k": k})
        await engine.signal(iid, "go", k)
    elif kind == 24:  # cancelled while taken up ahead of its timer (held, no slot)
        iid = await engine.start("timer", {"k": k})
        await trio.sleep(29.8)
        await engine.cancel(iid)
    elif kind == 25:  # a fail-fast parallel step: one branch fails, the other is cancelled
        iid = await engine.start("fork", {"k": k})
    elif kind == 26:  # a plain def step in a worker thread, end hooks
        iid = await engine.start("threaded", {"k": k})
    elif kind == 27:  # signal() whose caller is cancelled at once (delivered beside it, or not sent)
        iid = await engine.start("approval", {"k": k})
        await trio.sleep(3)
        with trio.move_on_after(0):
            await engine.signal(iid, "go", k)
    elif kind == 28:  # a repeated cancel, and a cancel of an instance that has ended
        iid = await engine.start("slow", {"k": k})
        await trio.sleep(1)
        await engine.cancel(iid)
        await engine.cancel(iid)
        await engine.wait(iid)
        assert not await engine.cancel(iid)
    else:  # resume() called by a service (finds nothing to take up)
        iid = await engine.start("saga", {"k": k})
        await engine.resume()
    await _wait_quietly(engine, iid, kind)


async def wave(engine: tf.Engine, ks: range, wall: Callable[[], float]) -> None:
    """A burst of units, with event subscribers that come and go around it."""
    seen = [0]

    def on_any(event: dict[str, Any]) -> None:
        seen[0] += 1

    async def on_done(event: dict[str, Any]) -> None:
        seen[0] += 1

    remove_sync = engine.events.on("workflow.*", on_any)
    remove_async = engine.events.on("workflow.completed", on_done)
    async with trio.open_nursery() as nursery:
        async def read_stream(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            async with engine.events.subscribe("workflow.step.*", buffer=100) as stream:
                task_status.started()
                with trio.move_on_after(15):
                    async for _ in stream:
                        seen[0] += 1

        await nursery.start(read_stream)
        async with trio.open_nursery() as units:
            for k in ks:
                units.start_soon(unit, engine, k, wall)
    remove_sync()
    remove_async()
    assert seen[0] > 0
    # A caller's own purge of what it has read (some completed sagas).
    await engine.purge(older_than=1, status="completed", workflow="saga")


async def run_load(engine: tf.Engine, n: int, wall: Callable[[], float], size: int = 100) -> None:
    for start in range(0, n, size):
        await wave(engine, range(start, min(n, start + size)), wall)
    # Everything has ended; retention deletes the finished rows (it purges every KEEP s).
    await trio.sleep(4 * KEEP + 2)


#: How each kind of unit ends.
EXPECTED = {
    0: "completed", 1: "failed", 2: "completed", 3: "cancelled", 4: "cancelled", 5: "cancelled", 6: "completed",
    7: "completed", 8: "failed", 9: "cancelled", 10: "timed_out", 11: "completed", 12: "completed",
    13: "cancelled", 14: "completed", 15: "completed", 16: "completed", 17: "cancelled", 18: "failed",
    19: "completed", 20: "completed", 21: "completed", 22: "deleted", 23: "completed", 24: "cancelled",
    25: "failed", 26: "completed", 27: "completed", 28: "cancelled", 29: "completed",
}


# -- what may stay after the load ---------------------------------------------------------------

def allowed(key: str, workflows_registered: int, waiting: int) -> int:
    """How far above its baseline a container may be once the load is over, and why (a bound
    independent of the load; 0 unless said here). ``waiting``: instances stored waiting for ever."""
    return {
        # (Statuses of rows the waker's ``due`` reads mark "woken next"; ``_until_next_other``'s
        # look one waiting row past those on their way, ``due(inf, ...)``, once marked a parked
        # instance too, which stayed until it next checkpointed: it no longer does.)
        "sqlite._known": 0,
        # Random parts of ids read ahead, a block at a time.
        "_ids._random_parts": _ids._BLOCK,
        # The ids of the last batch the waker woke, until its next look at due rows (strings).
        "engine._waking": _engine.WAKE_BATCH,
        # One per workflow whose jobs were found registered (workflows are never unregistered).
        "engine._jobs_found": workflows_registered,
        # The watcher of queued parents' deadlines, started on first use, lives with the engine.
        "supervisor.tasks": 1,
        # A heap with lazy deletion may keep stale entries up to a compaction slack (64, as the
        # wake heaps' _COMPACT_AT); the set of its live entries may not.
        "engine._queued_deadlines": 64,
        # A wake heap keeps at most twice its live entries plus _COMPACT_AT (per workflow).
        "memory._wakes": 64,
        # The finish order's stale places, swept once they outnumber the current ones plus 64.
        "memory._order.finished": 64,
        "memory._order.released": 64,
        "memory._order.stale": 64,
    }.get(key, 0)


def table(rows: dict[str, list[int]], labels: list[str]) -> str:
    head = f"{'container':32}" + "".join(f"{label:>14}" for label in labels)
    return "\n".join([head] + [f"{key:32}" + "".join(f"{v:>14}" for v in values) for key, values in rows.items()])


def sqlite_leftovers(path: Path, kept: list[str]) -> dict[str, int]:
    """Rows the file holds once the engine closed, beyond those of the instances ``kept``."""
    conn = sqlite3.connect(path)
    try:
        marks = ", ".join("?" * len(kept))
        return {
            "db.instances": conn.execute(
                f"SELECT count(*) FROM trioflow_instances WHERE instance_id NOT IN ({marks})", kept).fetchone()[0],
            "db.records": conn.execute(
                f"SELECT count(*) FROM trioflow_records WHERE instance_id NOT IN ({marks})", kept).fetchone()[0],
            "db.signals": conn.execute(
                f"SELECT count(*) FROM trioflow_signals WHERE instance_id NOT IN ({marks})", kept).fetchone()[0],
        }
    finally:
        conn.close()


# -- the census ---------------------------------------------------------------------------------

SIZES = (500, 2000)


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_census_after_a_long_mixed_load(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str, caplog: pytest.LogCaptureFixture) -> None:
    """One engine runs 500 units, then 1,500 more (2,000 in all; about 2,450 instances counting
    children); after each load, once everything has ended and retention has deleted it, every
    container is back to its baseline (or within a bound that does not depend on the load),
    and none held to its baseline is larger after 2,000 units than after 500."""
    OUTCOMES.clear()
    caplog.set_level(logging.ERROR, logger="trioflow")  # (thousands of expected failures, cancels and timeouts)
    wall = virtual_wall_clock()
    path = tmp_path / "flows.db"
    adapter = MemoryAdapter() if storage == "memory" else SQLiteAdapter(path, synchronous="NORMAL")
    started = [0]

    def count_start(event: dict[str, Any]) -> None:
        started[0] += 1

    flows = workflows()
    async with open_test_engine(adapter=adapter, clock=wall, threads=True, retain_finished=KEEP,
                                max_running=MAX_RUNNING) as engine:
        for flow in flows:
            engine.register(flow)
        engine.events.on("workflow.started", count_start)  # stays: part of the baseline
        forever = [await engine.start("forever", {"k": k}) for k in range(2)]
        await trio.sleep(3)  # parked
        snapshots = [{**census(engine), **alive_objects()}]
        labels = ["before"]
        done = 0
        for size in SIZES:
            await run_load(engine, size - done, wall)  # (ends with retention's purges)
            done = size
            snapshots.append({**census(engine), **alive_objects()})
            labels.append(f"after {size}")
        instances = started[0]
    if storage == "sqlite":
        left = sqlite_leftovers(path, forever)
        for key, value in left.items():
            snapshots[0][key] = 0
            for snap in snapshots[1:]:
                snap[key] = value

    rows = {key: [snap[key] for snap in snapshots] for key in snapshots[0]}
    report = table(rows, labels) + f"\n({instances} instances started, counting children)"
    print(report)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:5]
    assert {kind for kind, _ in OUTCOMES} == set(range(KINDS))
    wrong = {(kind, status): n for (kind, status), n in OUTCOMES.items() if EXPECTED[kind] != status}
    assert not wrong, f"units that ended otherwise than their kind: {wrong}"

    problems = []
    for key, (before, *after) in rows.items():
        bound = allowed(key, len(flows), len(forever))
        for size, value in zip(SIZES, after):
            if value > before + bound:
                problems.append(f"{key}: {before} before, {value} after {size} units (allowed +{bound})")
        small, big = after
        if not bound and big > max(small, before):  # (bounded ones: within their bound, whatever the load)
            problems.append(f"{key}: grows with the load ({small} after {SIZES[0]} units, {big} after {SIZES[1]})")
    assert not problems, "\n".join(problems) + "\n" + report


# -- leaks, each reproduced alone -----------------------------------------------------------------

async def test_queued_deadline_entries_outlive_their_parents(autojump_clock: trio.testing.MockClock) -> None:
    """A parent with a workflow timeout, woken for its child's end while no slot is free, is
    queued, and ``Engine._queue`` pushes ``(deadline, id)`` on ``_queued_deadlines`` and adds it
    to ``_queued_deadlines_known``. Only ``_watch_queued_deadlines`` takes entries out, and only
    at the deadline: the parent gets its slot, completes and is purged, and its entry stays for
    the rest of its workflow timeout (a day here). 150 parents, all ended and purged, leave 150
    entries in each (a day later, none)."""
    kid = tf.workflow("kid").step("a", ok).build()
    parent = tf.workflow("parent").child("c", workflow="kid").with_timeout(86400).build()
    n = 150
    OUTCOMES.clear()
    async with open_test_engine(clock=virtual_wall_clock(), retain_finished=0, max_running=1) as engine:
        engine.register(kid)
        engine.register(parent)
        for wave in range(n // 3):  # three at a time: one's child holds the only slot as another wakes
            ids = [await engine.start("parent", {"wave": wave, "k": k}) for k in range(3)]
            for iid in ids:
                await _wait_quietly(engine, iid, -1)
        await trio.sleep(5)  # retention
        e: Any = engine
        assert OUTCOMES[-1, "completed"] + OUTCOMES[-1, "purged"] == n
        assert len(e.adapter._rows) == 0 and not e._live and not e._waiting
        heap, known = len(e._queued_deadlines), len(e._queued_deadlines_known)
        assert known == 0 and heap <= 64, (
            f"{heap} heap entries, {known} known, for 0 instances queued or stored")
