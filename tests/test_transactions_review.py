"""Transactional workflows, data drivers and entity steps (a review; each test failed before its
fix): a delayed start, a workflow timeout and a cancel around the driver's transaction; tables
with a composite key or WITHOUT ROWID."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryDriver, SQLiteDriver
from trioflow.testing import open_test_engine


# -- transactional runs: what happens outside the forward part -----------------------------------


async def test_a_delayed_transactional_instance_does_not_hold_the_driver_during_its_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A transactional workflow started with ``delay=3600`` holds the driver's transaction (on
    SQLite: ``BEGIN IMMEDIATE``, the database's write lock) for the whole hour before its first
    step: every other instance's driver call waits for it.

    Observed: a plain (non-transactional) instance that writes one row through ``ctx.driver``,
    started a second later, completes only when the hour is over (3599 s later). Expected: it completes at once (the delayed
    instance has not started; "a delayed start ... holds no task and no max_running slot"), and the
    delayed instance itself waits out of memory.

    Suspected cause: actors/_transaction.py:forward_in_transaction opens ``driver.transaction()``
    around the whole of actors/_instance.py:_forward, which runs wait_for_start (the delay) inside
    it; ``Run.may_park`` then refuses to park because ``run.deferred`` is set.
    """
    driver = MemoryDriver()

    async def note(ctx: tf.WorkflowContext) -> Any:
        return await ctx.driver.create("notes", {"text": "hello"})

    delayed = (tf.workflow("delayed-order")
               .step(tf.create_entity_step("create-order", "orders", lambda ctx: {"ref": "r1"}))
               .transactional().build())
    plain = tf.workflow("plain").step("note", note).build()
    async with open_test_engine(driver=driver) as engine:
        engine.register(delayed)
        engine.register(plain)
        await engine.start("delayed-order", delay=3600)
        await trio.sleep(1)  # virtual: the delayed instance is set up and waits for its start
        t0 = trio.current_time()
        iid = await engine.start("plain")
        inst = await engine.wait(iid)
        took = trio.current_time() - t0
    assert inst.status == "completed"
    assert took < 60, f"a one-row write waited {took} s for another instance's delayed start"


async def test_a_workflow_timeout_bounds_the_wait_for_the_drivers_transaction(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``with_timeout(10)`` on a transactional workflow does not bound the time the instance waits
    for the driver while another transactional instance holds it.

    Observed: the instance waits 100 s for the other's transaction, then runs and ends
    ``completed`` 100 s after its start. Expected: ``timed_out`` after 10 s (SPEC §4: a workflow
    timeout bounds the whole run; README: "A workflow past its with_timeout is cancelled ... and
    ends timed_out").

    Suspected cause: actors/_transaction.py:forward_in_transaction awaits
    ``driver.transaction()`` before actors/_instance.py:_forward creates the cancel scope that
    carries the workflow deadline, so the wait for the driver's lock is outside every deadline.
    """
    driver = MemoryDriver()
    holding = trio.Event()

    async def hold(ctx: tf.WorkflowContext) -> str:
        holding.set()
        await trio.sleep(100)
        return "held"

    async def quick(ctx: tf.WorkflowContext) -> str:
        return "ok"

    holder = tf.workflow("holder").step("hold", hold).transactional().build()
    bounded = tf.workflow("bounded").step("quick", quick).transactional().with_timeout(10).build()
    async with open_test_engine(driver=driver) as engine:
        engine.register(holder)
        engine.register(bounded)
        await engine.start("holder")
        await holding.wait()
        t0 = trio.current_time()
        inst = await engine.wait(await engine.start("bounded"))
        took = trio.current_time() - t0
    assert (inst.status, took) == ("timed_out", 10.0)


async def test_a_cancel_of_an_instance_waiting_for_the_drivers_transaction_takes_effect_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``engine.cancel()`` of a transactional instance that waits for the driver (another
    instance's transaction is open) returns ``True`` but does nothing until that transaction ends.

    Observed: ``wait()`` returns ``cancelled`` only 100 s later, when the other transaction
    commits. Expected: it ends at once (README: ``cancel()`` cancels the running step and then
    compensates; nothing has run yet here).

    Suspected cause: runtime/_engine.py:Engine.cancel only cancels ``run.cancel_scope``, which is
    created inside the transaction by actors/_instance.py:_forward; while
    actors/_transaction.py:forward_in_transaction waits in ``driver.transaction()`` there is no
    scope to cancel, so the cancel is noticed only once the transaction is acquired.
    """
    driver = MemoryDriver()
    holding = trio.Event()

    async def hold(ctx: tf.WorkflowContext) -> str:
        holding.set()
        await trio.sleep(100)
        return "held"

    async def quick(ctx: tf.WorkflowContext) -> str:
        return "ok"

    holder = tf.workflow("holder").step("hold", hold).transactional().build()
    other = tf.workflow("other").step("quick", quick).transactional().build()
    async with open_test_engine(driver=driver) as engine:
        engine.register(holder)
        engine.register(other)
        await engine.start("holder")
        await holding.wait()
        iid = await engine.start("other")
        await trio.sleep(1)
        t0 = trio.current_time()
        assert await engine.cancel(iid)
        inst = await engine.wait(iid)
        took = trio.current_time() - t0
    assert inst.status == "cancelled"
    assert took < 5, f"the cancel took effect {took} s after cancel() said yes"


class SlowCommitDriver(MemoryDriver):
    """A MemoryDriver whose outermost COMMIT takes 1 s (as an fsync on a slow disk does)."""

    async def _keep(self, level: int, saved: Any) -> None:
        if level == 1:
            await trio.sleep(1)
        await super()._keep(level, saved)


async def test_a_cancel_that_says_yes_while_the_transaction_commits_is_honoured(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A ``cancel()`` that arrives while a transactional run's forward part is committing returns
    ``True`` ("now being cancelled"), yet the instance ends ``completed``: nothing is compensated
    (the reservation is never released) and the caller was told the opposite.

    Observed: ``cancel()`` -> True, status ``completed``, no compensation. Expected: either
    ``cancel()`` returns False (too late: the run is committing), or the instance ends
    ``cancelled`` with its steps compensated, as tests/test_lifecycle_review.py
    ``test_a_cancel_in_the_pass_the_last_step_ends_in_is_honoured`` pins for plain runs.

    Suspected cause: actors/_transaction.py:forward_in_transaction commits (and records the ledger
    entry) after actors/_instance.py:_forward has left its cancel scope, while ``state.phase`` is
    still ``forward``; runtime/_engine.py:Engine.cancel then sets ``cancel_requested`` and cancels
    a scope that has exited, and nothing looks at ``cancel_requested`` after the commit.
    """
    driver = SlowCommitDriver()
    released: list[str] = []

    async def reserve(ctx: tf.WorkflowContext) -> str:
        return "res-1"

    async def release(ctx: tf.WorkflowContext, reservation: str) -> None:
        released.append(reservation)

    wf = (tf.workflow("order")
          .step("reserve", reserve, release)
          .step(tf.create_entity_step("create-order", "orders", lambda ctx: {"ref": "r1"}))
          .transactional().build())
    async with open_test_engine(driver=driver) as engine:
        engine.register(wf)
        iid = await engine.start("order")
        await trio.sleep(0.5)  # the steps are done; the commit is in progress
        said = await engine.cancel(iid)
        inst = await engine.wait(iid)
    assert not said or (inst.status == "cancelled" and released == ["res-1"]), (
        f"cancel() said {said}, the instance ended {inst.status!r}, released {released}")


# -- SQLiteDriver on real schemas -------------------------------------------------------------------


def _lines_db(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE line (order_id INTEGER, line_no INTEGER, qty INTEGER,"
                     " PRIMARY KEY (order_id, line_no))")
        conn.executemany("INSERT INTO line VALUES (?, ?, ?)", [(1, 1, 5), (1, 2, 7), (1, 3, 9)])


async def test_a_table_with_a_composite_primary_key_is_refused_with_a_clear_error_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    """On a table with a composite primary key ``(order_id, line_no)``,
    ``driver.update("line", {"order_id": 1, "line_no": 2}, {"qty": 0})`` set ``qty = 0`` on all
    three lines of order 1 (the first key column was taken for the key). The driver works on
    tables keyed by one column (or the rowid): such a table is refused, untouched."""
    path = tmp_path / "shop.db"
    _lines_db(path)
    driver = SQLiteDriver(path)
    try:
        with pytest.raises(tf.adapters.DriverError, match="primary key of several columns"):
            await driver.update("line", {"order_id": 1, "line_no": 2}, {"qty": 0})
    finally:
        await driver.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT line_no, qty FROM line ORDER BY line_no").fetchall() == [(1, 5), (2, 7), (3, 9)]


async def test_a_delete_entity_step_on_a_composite_key_table_fails_and_deletes_nothing(
    tmp_path: Path,
) -> None:
    """``delete_entity_step`` matching one line of an order (composite key) deleted every line
    of that order, while its output (what its compensation re-creates) listed only the one: the
    others were lost for good. It fails, and deletes nothing."""
    path = tmp_path / "shop.db"
    _lines_db(path)
    driver = SQLiteDriver(path)
    wf = tf.workflow("drop-line").step(
        tf.delete_entity_step("drop", "line", lambda ctx: {"order_id": 1, "line_no": 2})).build()
    try:
        result = await tf.execute_workflow(driver, wf)
    finally:
        await driver.aclose()
    assert not result.success and "primary key of several columns" in (result.cause or "")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM line").fetchone() == (3,)


async def test_sqlite_driver_create_in_a_without_rowid_table_returns_the_row(tmp_path: Path) -> None:
    """``driver.create`` on a ``WITHOUT ROWID`` table (a plain SQLite schema feature) raises
    ``DriverError: create in 'sku' failed: no such column: rowid`` **after** the row has been
    inserted and committed.

    Observed: the call fails, the row is stored anyway (a create_entity_step then fails with
    nothing to compensate, leaving an orphan row; a retry fails on the UNIQUE key). Expected: the
    row is returned (read back by its primary key); at the very least a failed create writes
    nothing.

    Suspected cause: adapters/_sqlite_driver.py:SQLiteDriver.create reads the new row back with
    ``WHERE rowid = ?`` (``cursor.lastrowid``), which a WITHOUT ROWID table lacks, and the INSERT
    and that SELECT are not one atomic unit (no ``_atomic`` savepoint around ``insert``).
    """
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE sku (code TEXT PRIMARY KEY, name TEXT) WITHOUT ROWID")
    driver = SQLiteDriver(path)
    try:
        try:
            row: Any = await driver.create("sku", {"code": "A1", "name": "apple"})
        except tf.adapters.DriverError as exc:
            row = exc
        stored = await driver.find_many("sku", {})
    finally:
        await driver.aclose()
    assert row == {"code": "A1", "name": "apple"}, f"create gave {row!r} while the table holds {stored!r}"
