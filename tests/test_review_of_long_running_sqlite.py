"""From an adversarial review of what a long-running service on one store accumulates (rows,
file pages, engine and adapter state) over many short instances on virtual time. The first
test failed until the commit that added this file; the second held and is kept as a guard."""

from __future__ import annotations

import gc
import sqlite3
from pathlib import Path

import trio
import trio.testing

import trioflow as tf


async def _ok(ctx):
    return 1


async def _undo(ctx, result):
    pass


async def _boom(ctx):
    raise ValueError("declined")


def _run(main, *args):
    return trio.run(main, *args, clock=trio.testing.MockClock(autojump_threshold=0))


def test_memory_adapter_wake_count_drifts_with_every_delayed_start():
    """A service on the MemoryAdapter starts instances with `start(..., delay=)` (durable delayed
    starts) for hours. It expects the adapter's bookkeeping of waiting rows to stay exact, so
    that the wake heap is swept only "once for every so many changes" (amortized constant cost
    per change, as `_count_waiting` says) and that nothing is left over once everything ended.

    Was: `create(..., wake_at=)` pushed the row into the wake heap but never counts it as
    waiting, while the checkpoint that ends the wait counts it out: every delayed start moves
    `_waiting_rows[workflow]` one further below the truth (here -40 after 40 delayed starts
    that all ended). Once it has drifted past the number of rows really waiting, the sweep
    condition `len(heap) > 2 * waiting + 64` holds on every change, so every timer set, fired
    or cancelled walks and re-heapifies the whole wake heap (quadratic over a service's life)."""
    delayed = tf.workflow("delayed").wait("w", seconds=3600).step("s", _ok).build()

    async def main():
        adapter = tf.adapters.MemoryAdapter()
        async with tf.open_engine(adapter=adapter) as engine:
            engine.register(delayed)
            # 40 delayed starts that run, and then end.
            ids = [await engine.start("delayed", {}, delay=5) for _ in range(20)]
            cancelled = [await engine.start("delayed", {}, delay=50) for _ in range(20)]
            for iid in cancelled:
                assert await engine.cancel(iid)
            for iid in ids + cancelled:
                await engine.wait(iid)
            # Now 5 instances wait (out of memory) on their one-hour timer.
            parked = [await engine.start("delayed", {}) for _ in range(5)]
            await trio.sleep(30)
            really_waiting = 0
            for iid in parked:
                really_waiting += (await engine.get_instance(iid)).waiting is not None
            assert really_waiting == 5
            counted = adapter._waiting_rows.get("delayed", 0)
            assert counted == really_waiting, (
                f"the MemoryAdapter counts {counted} rows of 'delayed' as waiting; {really_waiting} wait")

    _run(main)


def _table_counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [t for (t,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'trioflow%'")]
        out = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
        out["page_count"] = conn.execute("PRAGMA page_count").fetchone()[0]
        return out
    finally:
        conn.close()


def test_guard_sqlite_mixed_workload_purged_leaves_no_rows_and_reuses_pages(tmp_path):
    """Guard (passes today): rounds of sagas that fail and compensate, receives with extra
    signals never consumed, timers, maps of children compensated by a failing parent, and
    cancels, each round purged by `retain_finished`, leave no row in any trioflow table, and the
    file's page count stays where the first round left it (freed pages are reused), and
    Python's live object count stays flat."""
    path = tmp_path / "flows.db"
    kid = tf.workflow("kid").step("a", _ok, _undo).build()
    flows = [
        tf.workflow("saga_fail").step("a", _ok, _undo).step("b", _boom).build(),
        tf.workflow("recv").receive("r", signal="go", timeout=100).step("s", _ok).build(),
        tf.workflow("timer").wait("w", seconds=5).step("s", _ok).build(),
        kid,
        tf.workflow("par").map("m", items=lambda ctx: [1, 2, 3],
                               branch=tf.branch("b").child("c", workflow="kid").build()).step("z", _boom).build(),
    ]
    seen: list[tuple[dict[str, int], int]] = []

    async def main():
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path), retain_finished=30) as engine:
            for flow in flows:
                engine.register(flow)
            for _ in range(5):
                for _ in range(30):
                    await engine.start("saga_fail", {})
                    r = await engine.start("recv", {})
                    await engine.signal(r, "go", 1)
                    await engine.signal(r, "go", 2, idempotency_key="evt")  # never consumed; its key purged too
                    await engine.start("timer", {})
                    await engine.start("par", {})
                    c = await engine.start("recv", {})
                    await engine.cancel(c)
                await trio.sleep(600)
                gc.collect()
                seen.append((_table_counts(path), len(gc.get_objects())))
            assert not engine._live and not engine._storing and not engine._unanswered
            assert not engine._next_run and not engine._in_order and not engine._undoing

    _run(main)
    for counts, _ in seen:
        assert {k: v for k, v in counts.items() if k != "page_count"} == {
            "trioflow_instances": 0, "trioflow_records": 0, "trioflow_signals": 0, "trioflow_signal_keys": 0}
    pages = [counts["page_count"] for counts, _ in seen]
    assert max(pages[1:]) <= pages[1] * 1.1, pages
    objects = [n for _, n in seen]
    assert max(objects[1:]) <= objects[1] * 1.05, objects
