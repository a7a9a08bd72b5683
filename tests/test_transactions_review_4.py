"""A fourth review of transactional runs and the SQLite driver (493e810; each test failed before
its fix): a short delayed start that committed before a crash, a ledger lookup that fails,
tables with a column named rowid, AFTER INSERT triggers."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._snapshot import TERMINAL, Status
from trioflow.adapters import DriverError, MemoryAdapter, MemoryDriver, SQLiteDriver
from trioflow.testing import open_test_engine


class HangOnTerminalSave(MemoryAdapter):
    """While ``hang`` is set a terminal snapshot never gets stored: closing the engine then is a
    crash right after the driver's commit and before the terminal snapshot (as in
    tests/test_transaction_once.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = True
        self.reached = trio.Event()

    async def checkpoint(self, instance_id: str, status: Status, header: bytes, records: Any, **kw: Any) -> None:
        if self.hang and status in TERMINAL:
            self.reached.set()
            await trio.sleep_forever()
        await super().checkpoint(instance_id, status, header, records, **kw)


# -- resumed transactional runs ------------------------------------------------------------------


async def test_a_short_delayed_transactional_run_committed_before_a_crash_is_not_run_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A transactional workflow (no timeout) whose step writes through ``ctx.driver`` is started
    with ``delay=0.5`` (shorter than the engine's park threshold, so it waits in memory). It
    runs and commits; the engine dies before the terminal snapshot is stored; a new engine
    resumes it.

    Observed: the step runs a second time and a second order row is written (two rows, the
    instance's output names the second). Expected: exactly one row; the resume takes the
    committed ledger record ("the resume finds it there and finishes the instance without
    running anything again", README "Transactional runs"), as it did before 493e810 and as it
    does for an instance started without a delay.

    Suspected cause: actors/_transaction.py:committed_before_a_crash skips the lookup when the
    stored main lane still says ``waiting == {"start": ...}``. But the end of a delay is only
    stored (actors/_instance.py:_forward) when the workflow has a timeout or the instance was
    parked (``past_stored_wait`` persists only if ``run.stored_wake_at`` is set); inside the
    transaction nothing is stored (``run.deferred``). So the stored state still shows the delay
    although the run began and committed. (Checking whether the start time is past, or always
    looking, would do.)
    """
    driver = MemoryDriver()
    adapter = HangOnTerminalSave()
    calls: list[float] = []

    async def create(ctx: tf.WorkflowContext) -> Any:
        calls.append(trio.current_time())
        return await ctx.driver.create("orders", {"ref": ctx.input["ref"]})

    wf = tf.workflow("order").step("create", create).transactional().build()
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("order", {"ref": "r1"}, delay=0.5)
        await adapter.reached.wait()  # committed; the terminal snapshot is never stored
    adapter.hang = False
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        inst = await engine.wait(iid)
    rows = await driver.find_many("orders", {})
    assert inst.status == "completed"
    assert (len(calls), rows) == (1, [{"ref": "r1", "id": 1}]), f"step calls {calls}, rows {rows}"


class _FlakyLedger(MemoryDriver):
    """A MemoryDriver whose ledger lookup fails while ``failing`` is set (a database locked
    past its busy timeout, a lost connection: a DriverError)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    async def find_run(self, key: str) -> bytes | None:
        if self.failing:
            raise DriverError("database is locked")
        return await super().find_run(key)


async def test_a_resumed_transactional_run_whose_ledger_lookup_fails_stays_as_stored_for_a_later_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A transactional instance is interrupted mid-run (engine closed; rolled back, stored
    ``running``); on resume the driver's ledger lookup raises ``DriverError("database is
    locked")``. It crashed the instance actor (failed as an internal error, without its own end);
    a first fix failed it with the driver's error, for good. Whether it committed is not known
    then: it stays as stored (``wait`` says so, naming the driver's error), and the next engine,
    whose lookup works, runs it to its end."""
    driver = _FlakyLedger()
    adapter = MemoryAdapter()

    async def slow(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(100)
        return "done"

    wf = tf.workflow("w").step("slow", slow).transactional().build()
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(3)  # the engine closes mid-step: rolled back, stored running
    driver.failing = True
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        with pytest.raises(tf.StorageUnavailableError, match="database is locked"):
            await engine.wait(iid)
        assert (await engine.get_instance(iid)).status == "running"  # type: ignore[union-attr]
    driver.failing = False
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        inst = await engine.wait(iid)
    assert (inst.status, inst.output) == ("completed", "done")


# -- SQLiteDriver --------------------------------------------------------------------------------


def _db(tmp_path: Path, *statements: str) -> Path:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        for statement in statements:
            conn.execute(statement)
    return path


def _content(path: Path, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)


async def test_a_create_steps_compensation_in_a_without_rowid_table_with_a_rowid_column_deletes_only_its_row(
    tmp_path: Path,
) -> None:
    """A WITHOUT ROWID table that has a real column named ``rowid`` (``codes (code TEXT PRIMARY
    KEY, rowid INTEGER, name TEXT) WITHOUT ROWID``) holding a row ``('OLD', 1, 'old')``. A plain
    workflow creates an order (rowid table: the connection's last insert rowid becomes 1), then
    a code ``('NEW', 2, 'new')`` with ``create_entity_step``, then a step fails.

    Observed: the create step's output is the *other* row (``OLD``: its ``store_as`` key is
    ``'OLD'``), and its compensation
    deletes ``OLD``, leaving ``NEW`` behind: a row the workflow never touched is lost. (Without
    the order first, the create fails with "give the row its primary key 'code'" although the
    key was given.) Expected: the output is the row created; after the compensation the codes
    table is as before. Before 493e810 (a regex on the SQL) this worked.

    Suspected cause: adapters/_sqlite_driver.py:SQLiteDriver._schema probes ``SELECT rowid FROM
    t LIMIT 0``, which succeeds when a column is named ``rowid``, so the table is taken for a
    rowid table; SQLiteDriver.create then reads the row back ``WHERE rowid = cur.lastrowid``:
    the user's column against the connection's last rowid from another table.
    (``pragma_table_list``'s ``wr`` column, or probing all of rowid/_rowid_/oid, would not be
    fooled.)
    """
    path = _db(tmp_path,
               "CREATE TABLE orders (id INTEGER PRIMARY KEY, ref TEXT)",
               "CREATE TABLE codes (code TEXT PRIMARY KEY, rowid INTEGER, name TEXT) WITHOUT ROWID",
               "INSERT INTO codes VALUES ('OLD', 1, 'old')")
    before = _content(path, "codes")

    async def fail(ctx: tf.WorkflowContext) -> None:
        raise ValueError("no courier")

    wf = (tf.workflow("w")
          .step(tf.create_entity_step("order", "orders", lambda ctx: {"ref": "r1"}))
          .step(tf.create_entity_step("code", "codes", lambda ctx: {"code": "NEW", "rowid": 2, "name": "new"},
                                      store_as="code"))
          .step("fail", fail).build())
    driver = SQLiteDriver(path)
    try:
        result = await tf.execute_workflow(driver, wf)
    finally:
        await driver.aclose()
    assert result.status == "failed"
    assert (result.data.get("code"), _content(path, "codes")) == ("NEW", before), \
        f"compensation errors: {result.compensation_errors}"
    assert _content(path, "codes") == before, f"compensation errors: {result.compensation_errors}"


async def test_sqlite_create_in_a_rowid_table_with_a_column_named_rowid_returns_the_row(tmp_path: Path) -> None:
    """A plain rowid table keyed by ``id INTEGER PRIMARY KEY`` that also has a column named
    ``rowid`` (legal in SQLite: the column shadows the name; ``_rowid_`` and ``oid`` still name
    the real rowid). ``create("t", {"rowid": 7, "name": "a"})``.

    Observed: ``DriverError: create in 't': give the row its primary key 'id'`` (nothing
    written) although the key is an alias of the rowid and SQLite assigns it. Expected: the row
    ``{"id": 1, "rowid": 7, "name": "a"}``. (Predates 493e810: since c00a355 the row is read back
    by rowid; there it was a bare IndexError.)

    Suspected cause: adapters/_sqlite_driver.py:SQLiteDriver.create reads the row back ``WHERE
    rowid = cur.lastrowid``, and ``rowid`` here is the user's column, not the row's rowid.
    """
    driver = SQLiteDriver(_db(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, rowid INTEGER, name TEXT)"))
    try:
        try:
            row: Any = await driver.create("t", {"rowid": 7, "name": "a"})
        except Exception as exc:  # noqa: BLE001
            row = exc
    finally:
        await driver.aclose()
    assert row == {"id": 1, "rowid": 7, "name": "a"}, repr(row)


async def test_sqlite_create_in_a_without_rowid_table_with_an_after_insert_trigger_returns_the_row_as_stored(
    tmp_path: Path,
) -> None:
    """A WITHOUT ROWID table with an ``AFTER INSERT`` trigger that fills a column of the new row
    (``UPDATE t SET stamp = 'set' WHERE code = new.code``: an audit stamp, a derived value).
    ``create("t", {"code": "A", "name": "a"})``.

    Observed: ``{"code": "A", "name": "a", "stamp": None}`` while the database holds
    ``stamp = 'set'``; the same table as a rowid table gives ``'set'``, and so did this one
    before 493e810. Expected: the row as stored (Driver.create: "returns it as stored";
    create_entity_step: "output: the row as stored").

    Suspected cause: adapters/_sqlite_driver.py:SQLiteDriver.create reads a WITHOUT ROWID row
    back with ``INSERT ... RETURNING *``, which reports the row as the INSERT itself left it,
    before AFTER triggers ran (SQLite: RETURNING "does not report any additional database
    changes caused by ... triggers"). Re-reading it by the returned key would keep the
    default-key fix.
    """
    path = _db(tmp_path, "CREATE TABLE t (code TEXT PRIMARY KEY, name TEXT, stamp TEXT) WITHOUT ROWID",
               "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET stamp = 'set' WHERE code = new.code; END")
    driver = SQLiteDriver(path)
    try:
        row = await driver.create("t", {"code": "A", "name": "a"})
    finally:
        await driver.aclose()
    assert _content(path, "t") == [("A", "a", "set")]
    assert row == {"code": "A", "name": "a", "stamp": "set"}, row
