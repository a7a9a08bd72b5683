"""A fifth review of transactional runs and the SQLite driver (f464f07; each test failed before
its fix): a committed run whose ledger lookup fails once, a keyless table with a column named
rowid, a table whose every name for the rowid is a column's, on SQLite before 3.35."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
import trioflow.adapters._sqlite_driver as sqlite_driver
from trioflow._snapshot import TERMINAL, Status
from trioflow.adapters import DriverError, MemoryAdapter, MemoryDriver, SQLiteDriver
from trioflow.testing import open_test_engine


class HangOnTerminalSave(MemoryAdapter):
    """While ``hang`` is set a terminal snapshot never gets stored: closing the engine then is a
    crash right after the driver's commit and before the terminal snapshot."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = True
        self.reached = trio.Event()

    async def checkpoint(self, instance_id: str, status: Status, header: bytes, records: Any, **kw: Any) -> Any:
        if self.hang and status in TERMINAL:
            self.reached.set()
            await trio.sleep_forever()
        return await super().checkpoint(instance_id, status, header, records, **kw)


class LedgerLockedOnce(MemoryDriver):
    """A MemoryDriver whose ledger lookup fails ``fail_times`` times (the database locked past
    its busy timeout for a moment), then answers."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_times = 0

    async def find_run(self, key: str) -> bytes | None:
        if self.fail_times:
            self.fail_times -= 1
            raise DriverError("database is locked")
        return await super().find_run(key)


async def test_a_committed_run_whose_ledger_lookup_fails_once_is_not_reported_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A transactional workflow's step writes an order row through ``ctx.driver``; the run
    commits, and the engine dies before the terminal snapshot is stored. The next engine's
    ledger lookup fails once (``DriverError("database is locked")``, a transient error); a third
    engine's lookup would succeed.

    Observed: the second engine ends the instance ``failed`` with ``DriverError: database is
    locked`` (``rolled_back=False``), for good: the third engine reports ``failed`` too, while
    the order row its transaction committed stays in the database (and nothing compensates it:
    the steps' records were never stored). Expected: what committed is its outcome (README
    "Transactional runs": "It looks before the run's deadline and cancel apply (what committed is
    its outcome)"); a lookup that could not tell whether the run committed must not decide that
    it failed: the instance stays resumable (or the lookup is retried) and ends ``completed``
    with its one row, its step run once.

    Suspected cause: actors/_instance.py:_forward (f464f07) turns any exception of
    ``committed_before_a_crash`` into ``("failed", exc, None)``, a terminal outcome, although
    the lookup's failure says nothing about whether the transaction committed; it should leave
    the instance as stored for a later resume (as a StorageUnavailableError does) or retry.
    """
    driver = LedgerLockedOnce()
    adapter = HangOnTerminalSave()
    calls: list[float] = []

    async def create(ctx: tf.WorkflowContext) -> Any:
        calls.append(trio.current_time())
        return await ctx.driver.create("orders", {"ref": ctx.input["ref"]})

    wf = tf.workflow("order").step("create", create).transactional().build()
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("order", {"ref": "r1"})
        await adapter.reached.wait()  # committed; the terminal snapshot is never stored
    adapter.hang = False
    driver.fail_times = 1
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        with trio.move_on_after(100):
            try:
                await engine.wait(iid)
            except tf.TrioflowError:
                pass  # left resumable: fine
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        with trio.fail_after(100):
            inst = await engine.wait(iid)
    rows = await driver.find_many("orders", {})
    assert (inst.status, inst.error) == ("completed", None), f"rows in the database: {rows}"
    assert (len(calls), rows) == (1, [{"ref": "r1", "id": 1}])


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


async def test_a_create_steps_compensation_in_a_keyless_table_with_a_rowid_column_deletes_only_its_row(
    tmp_path: Path,
) -> None:
    """A table with no declared primary key (README: "keyed by its rowid") that has a column
    named ``rowid``: ``log (rowid INTEGER, msg TEXT)`` holding ``(2, 'old')`` (its real rowid
    1). A workflow creates ``{"rowid": 9, "msg": "new"}`` with ``create_entity_step`` (real
    rowid 2), then a step fails.

    Observed: the create step's output is the *other* row (``{'rowid': 2, 'msg': 'old'}``: its
    ``store_as`` value is 2), and its compensation deletes ``old``, leaving ``new`` behind: a row the workflow never touched is
    lost (the table holds ``[(9, 'new')]`` instead of ``[(2, 'old')]``). Expected: the output
    is the row created, and after the compensation the table is as before.

    Suspected cause: f464f07 finds the rowid "by a name no column takes" (``_rowid_alias``)
    only for tables with a declared key; the keyless path of
    adapters/_sqlite_driver.py:SQLiteDriver._schema still uses the literal ``rowid`` as the key
    (``columns = ["rowid", ...]``, ``_star`` selects ``rowid AS rowid``), and create reads back
    ``WHERE rowid = lastrowid`` (``alias`` defaults to ``"rowid"``), both naming the user's
    column; the compensation deletes ``WHERE "rowid" IS 2``. The keyless path should use the
    free alias too (or refuse such a table).
    """
    path = _db(tmp_path, "CREATE TABLE log (rowid INTEGER, msg TEXT)", "INSERT INTO log VALUES (2, 'old')")
    before = _content(path, "log")

    async def fail(ctx: tf.WorkflowContext) -> None:
        raise ValueError("no courier")

    wf = (tf.workflow("w")
          .step(tf.create_entity_step("entry", "log", lambda ctx: {"rowid": 9, "msg": "new"}, store_as="entry"))
          .step("fail", fail).build())
    driver = SQLiteDriver(path)
    try:
        result = await tf.execute_workflow(driver, wf)
    finally:
        await driver.aclose()
    assert result.status == "failed"
    assert _content(path, "log") == before, \
        f"compensated: {result.compensated_steps}, compensation errors: {result.compensation_errors}"


async def test_sqlite_before_3_35_create_in_a_rowid_table_whose_rowid_names_are_all_columns_gets_its_integer_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rowid table keyed by ``id INTEGER PRIMARY KEY`` that also has columns named ``rowid``,
    ``_rowid_`` and ``oid`` (legal; SQLite still gives ``id`` the rowid). On SQLite < 3.35
    (``_RETURNING = False``), ``create("t", {"rowid": 1, "_rowid_": 2, "oid": 3, "name": "a"})``
    without an id.

    Observed: ``DriverError: create in 't': give the row its primary key 'id'`` (nothing
    written), although SQLite assigns an INTEGER PRIMARY KEY (as it does for the same table
    without those columns, and as ``cur.lastrowid`` says). Expected: the row ``{"id": 1,
    "rowid": 1, "_rowid_": 2, "oid": 3, "name": "a"}``. (With RETURNING, 3.35+, it works.)

    Suspected cause: adapters/_sqlite_driver.py:SQLiteDriver._schema (f464f07) takes a table
    whose three rowid names are all columns' for a WITHOUT ROWID table ("every name of the
    rowid is a column's") instead of asking SQLite (``pragma_table_list``'s ``wr``, or
    ``sqlite_master.sql``); create then takes the without-rowid path, which before 3.35 reads
    the row back only by the key given (``None``), ignoring ``cur.lastrowid``, which for an
    INTEGER PRIMARY KEY is the key.
    """
    monkeypatch.setattr(sqlite_driver, "_RETURNING", False)
    driver = SQLiteDriver(_db(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, rowid INT, _rowid_ INT, oid INT,"
                                        " name TEXT)"))
    try:
        try:
            row: Any = await driver.create("t", {"rowid": 1, "_rowid_": 2, "oid": 3, "name": "a"})
        except Exception as exc:  # noqa: BLE001
            row = exc
    finally:
        await driver.aclose()
    assert row == {"id": 1, "rowid": 1, "_rowid_": 2, "oid": 3, "name": "a"}, repr(row)
