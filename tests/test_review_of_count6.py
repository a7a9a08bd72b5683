"""Two findings of a sixth review of what grows with what it should not (reviewer "count6"):
the parked instances an open walks on SQLite (``SQLiteAdapter.resumable()``), and the rows a
MemoryDriver holds for other instances (its savepoints copied every table).

Everything is COUNTED, never timed: SQLite virtual-machine steps (``set_progress_handler`` on
the adapter's own connection) and Python function calls (``sys.setprofile``), compared between
a small and a large N. Time is trio's MockClock (pytest-trio's ``autojump_clock``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf

from counting import VMSteps


class _Calls:
    """Counts Python function calls (any module) made while entered."""

    def __init__(self) -> None:
        self.count = 0

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            self.count += 1

    def __enter__(self) -> _Calls:
        self.count = 0
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)


async def _noop(ctx: tf.WorkflowContext) -> int:
    return 1


# -- 4. opening an engine on SQLite walks every parked instance -----------------------------------


_reminder = tf.workflow("reminder").wait("until", seconds=lambda ctx: 10**6 + ctx.input).step("send", _noop).build()
_order = tf.workflow("order").step("take", _noop).build()


class _CountingSQLite(tf.adapters.SQLiteAdapter):
    """The real SQLiteAdapter, counting virtual-machine steps from the moment it is open."""

    steps: VMSteps | None = None

    async def open(self) -> None:
        await super().open()
        assert self._conn is not None
        self.steps = VMSteps()
        self._conn.set_progress_handler(self.steps, 1)


async def _open_with_parked(parked: int, path: Path) -> int:
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(_reminder)
        for k in range(parked):
            await engine.start("reminder", k)
        await trio.sleep(30)  # every reminder parked on its timer, out of memory
    adapter = _CountingSQLite(path)
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(_reminder)
        engine.register(_order)
        assert (await engine.wait(await engine.start("order", {}))).status == "completed"
        assert adapter.steps is not None
        count = adapter.steps.count
        assert adapter._conn is not None
        adapter._conn.set_progress_handler(None, 1)
        return count


async def test_opening_an_engine_on_sqlite_walks_every_parked_instance(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A reminders service keeps many instances parked on long timers (SPEC Performance:
    "memory per instance waiting on a timer or signal <= 200 bytes (100k waiting; 1M in a
    ``--large`` run)"; recovery within 2 s). It restarts (a deploy). docs/adapters.md:
    ``resumable()`` lists the instances to resume, "leaving out instances that have a
    ``wake_at`` and no pending signal: the waker resumes those"; the MemoryAdapter's
    ``resumable()`` is held to a lookup that does not scan (tests/test_memory_lookups_do_not_scan.py).
    The user expects an open with nothing to resume to cost the same beside 20 or 400 (or a
    million) parked reminders.

    Actual (SQLiteAdapter, virtual-machine steps from the adapter's open to the end of one new
    instance): 808 with 20 parked, 8,788 with 400 (x10.9 for x20): about 21 steps per parked
    instance. ``SQLiteAdapter.resumable()`` selects ``status IN ('pending', 'running') AND
    (wake_at IS NULL OR EXISTS (SELECT 1 FROM trioflow_signals ...) OR typeof(wake_at) ...)``:
    no index serves that disjunction, so it walks every pending/running row and probes the
    signals table for each, to hand back none of them. (engine.resume() with ``resume=False``
    costs the same walk: 8,438 steps with 400 parked.)"""
    small = await _open_with_parked(20, tmp_path / "small.db")
    large = await _open_with_parked(400, tmp_path / "large.db")
    assert large <= 1.5 * small, (small, large)


# -- 5. an entity step on a MemoryDriver copies every row stored ------------------------------------


_make_order = tf.workflow("make-order").step(
    tf.create_entity_step("create", "orders", lambda ctx: {"item": ctx.input})).build()


async def _calls_per_instance(stored: int) -> float:
    driver = tf.adapters.MemoryDriver()
    async with tf.open_engine(driver=driver) as engine:
        engine.register(_make_order)
        for k in range(stored):  # earlier orders, each its own instance, long completed
            await engine.wait(await engine.start("make-order", k))
        with _Calls() as calls:
            for k in range(10):
                assert (await engine.wait(await engine.start("make-order", k))).status == "completed"
        assert len(driver.tables["orders"]) == stored + 10
        return calls.count / 10


async def test_an_entity_step_on_a_memory_driver_costs_calls_that_grow_with_the_rows_other_instances_stored(
        autojump_clock: trio.testing.MockClock) -> None:
    """An order service runs each order as an instance whose ``create_entity_step`` writes
    its row through ``tf.adapters.MemoryDriver`` (README, Data drivers: "MemoryDriver() (dicts,
    real transactions)"). The user expects creating the 1,000th order to cost what creating
    the 10th did: the work of a step must not grow with the number of other instances stored
    (this review's brief; SPEC §10's rule for storage).

    Actual (Python function calls, any module, per instance of a one-step workflow): 834 with
    10 orders stored before, 13,704 with 1,000 (x16.4). Every entity step runs in
    ``driver.transaction()``, whose savepoint (``MemoryDriver._save``) is
    ``copy.deepcopy((self.tables, self._next_id))`` plus a copy of the run ledger: every row of
    every table, written by every instance before, is copied to take one savepoint."""
    small = await _calls_per_instance(10)
    large = await _calls_per_instance(1_000)
    assert large <= 1.5 * small, (small, large)
