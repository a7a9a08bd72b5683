"""From a review of what grows faster than it should (second pass, "scale2", finding 1):
purges filtered by status or workflow beside many finished rows they keep. Everything is
COUNTED, never timed: the places a MemoryAdapter purge looks at, SQLite's virtual machine
steps (``set_progress_handler``), compared between a small and a large N; the measured
figures are in each docstring. Each test failed until the commit that added this file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf

# -- filtered purges walk every finished row they do not take ----------------------------------


class LooksCounted(tf.adapters.MemoryAdapter):
    """The real MemoryAdapter, counting the places in its finish order a purge looks at."""

    looks = 0

    def _current(self, place: Any) -> bool:
        self.looks += 1
        return super()._current(place)  # type: ignore[misc]


async def _ok(ctx: tf.WorkflowContext) -> int:
    return 1


async def _bad(ctx: tf.WorkflowContext) -> int:
    raise ValueError("declined")


_orders = tf.workflow("orders").step("charge", _ok).build()
_failing = tf.workflow("failing").step("charge", _bad).build()


async def _finish(engine: tf.Engine, completed: int, failed: int) -> None:
    engine.register(_orders)
    engine.register(_failing)
    for _ in range(completed):
        await engine.wait(await engine.start("orders", {}))
    await trio.sleep(10)
    for _ in range(failed):
        await engine.wait(await engine.start("failing", {}))
    await trio.sleep(10)


async def _memory_looks(kept: int) -> int:
    adapter = LooksCounted()
    async with tf.open_engine(adapter=adapter) as engine:
        await _finish(engine, kept, 5)
        adapter.looks = 0
        assert await engine.purge(older_than=1, status="failed") == 5
        assert await engine.purge(older_than=1, workflow="failing") == 0  # (nothing left to take)
        return adapter.looks


async def test_a_purge_by_status_on_memory_costs_what_it_deletes_not_the_finished_rows_it_keeps(
        autojump_clock: trio.testing.MockClock) -> None:
    """A user keeps completed instances (an audit trail) and purges the failed ones once an
    hour: ``engine.purge(older_than=3600, status="failed")`` (or ``workflow=`` one noisy
    workflow). The adapter protocol promises a purge is "found through an index on finish
    time ...: its cost follows what it deletes, not what is stored nor what it keeps" (README:
    purges go in batches "letting instances run"); a DBOS or Temporal user expects a retention
    sweep over one status or one workflow type to touch those rows only.

    Was: MemoryAdapter.purge (adapters/_memory.py:384) walks the whole finish order from
    the earliest finish, passing over every row of another status or workflow one by one
    until the cutoff; the filter is tested per row, and nothing indexes status or workflow
    in that order. So every filtered purge looks at every finished row it keeps, even one that
    deletes nothing, and each PURGE_BATCH of a large purge walks them again. Counted (two
    purges, the first deleting 5 failed rows, the second nothing): 32 places looked at beside
    10 completed rows, 10,012 beside 5,000 (313x)."""
    few, many = await _memory_looks(10), await _memory_looks(5_000)
    assert many <= 2 * few, f"places looked at by two filtered purges: {few} beside 10 kept rows, {many} beside 5,000"


async def _sqlite_steps(path: Path, kept: int) -> int:
    adapter = tf.adapters.SQLiteAdapter(path)
    async with tf.open_engine(adapter=adapter) as engine:
        await _finish(engine, kept, 5)
        conn = adapter._conn
        assert conn is not None
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        conn.set_progress_handler(count, 1)  # (counted in the writer's thread, on its connection)
        try:
            assert await engine.purge(older_than=1, status="failed") == 5
            assert await engine.purge(older_than=1, workflow="failing") == 0
        finally:
            conn.set_progress_handler(None, 1)
        return steps[0]


async def test_a_purge_by_status_on_sqlite_costs_what_it_deletes_not_the_finished_rows_it_keeps(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The same user on SQLiteAdapter: ``purge(older_than=..., status="failed")`` beside a
    growing table of completed instances kept for audit. Same promise (adapters/_protocol.py,
    ``purge``: "its cost follows what it deletes, not what is stored nor what it keeps").

    Was: ``_purge`` (adapters/_sqlite.py:1406) forces ``INDEXED BY
    trioflow_instances_by_finish``, an index on ``finished_at`` alone, and tests ``status`` /
    ``workflow_name`` on each row it reads from it: every finished row of another status or
    workflow that finished before the cutoff is read, by each purge call (and by each batch
    of one). Counted in SQLite virtual-machine steps for the same two purges as the
    MemoryAdapter test: 922 beside 10 completed rows, 50,822 beside 5,000 (55x; ~10 steps
    a kept row)."""
    few = await _sqlite_steps(tmp_path / "few.db", 10)
    many = await _sqlite_steps(tmp_path / "many.db", 5_000)
    assert many <= 2 * few, f"SQLite steps of two filtered purges: {few} beside 10 kept rows, {many} beside 5,000"
