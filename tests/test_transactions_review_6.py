"""A sixth review of transactional runs and the SQLite driver (aec2db2; each test failed before
its fix): a cancel during a failing ledger lookup, a temporary table shadowing a main one, a
NULL non-integer key on SQLite before 3.35."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
import trioflow.adapters._sqlite_driver as sqlite_driver
from trioflow.adapters import DriverError, MemoryAdapter, MemoryDriver, SQLiteDriver
from trioflow.testing import open_test_engine


# -- a ledger lookup that fails ------------------------------------------------------------------


class GatedLedger(MemoryDriver):
    """find_run fails while ``failing`` is set; while ``gate`` is set it first waits for it (a
    lookup that waits on the database's busy timeout, then gives up)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.gate: trio.Event | None = None
        self.asked = trio.Event()

    async def find_run(self, key: str) -> bytes | None:
        self.asked.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise DriverError("database is locked")
        return await super().find_run(key)


async def test_a_cancel_that_said_yes_during_a_failing_ledger_lookup_is_honoured(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A transactional instance is interrupted mid-step (engine closed: rolled back, stored
    ``running``). The next engine resumes it; its ledger lookup waits (the database busy) and
    then fails with ``DriverError("database is locked")``. While the lookup is in flight the
    caller runs ``engine.cancel(iid)``.

    ``cancel()`` returned ``True``, then ``wait()`` raised StorageUnavailableError and the
    instance stayed ``running``: the cancel was lost, and the following engine ran the step
    again to ``completed``. A cancel that said yes is honoured: it ends ``cancelled``.
    """
    driver, adapter = GatedLedger(), MemoryAdapter()

    async def slow(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(100)
        return "done"

    wf = tf.workflow("w").step("slow", slow).transactional().build()
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(3)  # closes mid-step: rolled back, stored running
    driver.failing = True
    driver.gate = trio.Event()
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        await driver.asked.wait()
        said = await engine.cancel(iid)
        driver.gate.set()
        with trio.fail_after(1000):
            inst = await engine.wait(iid)
    assert said is True and inst.status == "cancelled", \
        f"cancel() said {said}; the instance ended {inst.status} (output {inst.output!r})"


# -- SQLiteDriver --------------------------------------------------------------------------------


async def test_a_temp_without_rowid_table_shadowing_a_main_rowid_table_cannot_be_created_in() -> None:
    """A connection handed to SQLiteDriver has a main table ``t (k TEXT PRIMARY KEY, v TEXT)``
    and a TEMP table of the same name declared ``WITHOUT ROWID``. Unqualified SQL (every
    statement the driver builds, and ``pragma_table_xinfo(?)``) resolves ``t`` to the temp
    table.

    Observed: ``create("t", {"k": "a", "v": "x"})`` raises ``DriverError: create in 't' failed:
    no such column: rowid``. Expected: the row ``{"k": "a", "v": "x"}``, as before aec2db2 (the
    rowid probe ``SELECT rowid FROM "t"`` went to the same table the statements go to).

    Suspected cause: adapters/_sqlite_driver.py:_without_rowid reads
    ``pragma_table_list WHERE schema = 'main'`` (the main table: ``wr = 0``) while the INSERT and
    the read-back ``WHERE rowid = ?`` run unqualified and hit the temp WITHOUT ROWID table; the
    schema asked should be the one the name resolves to (temp first), or the SQL qualified by
    ``main``.
    """
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TEMP TABLE t (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID")
    driver = SQLiteDriver(conn)
    try:
        try:
            row: Any = await driver.create("t", {"k": "a", "v": "x"})
        except Exception as exc:  # noqa: BLE001
            row = exc
    finally:
        await driver.aclose()
        conn.close()
    assert row == {"k": "a", "v": "x"}, repr(row)


async def test_sqlite_before_3_35_a_create_leaving_a_non_alias_key_null_returns_and_compensates_another_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQLite < 3.35 (``_RETURNING = False``). A rowid table whose key ``id INT PRIMARY KEY``
    is *not* an alias of the rowid (INT, not INTEGER: SQLite lets it be NULL) and whose columns
    include ``rowid``, ``_rowid_`` and ``oid``; it holds ``(id=2, name='old')`` (rowid 1). A
    workflow's ``create_entity_step`` creates ``{"name": "new"}`` (no id: stored with id NULL,
    rowid 2), then a step fails.

    Observed: the create returns the *other* row ``{'id': 2, 'name': 'old', ...}`` instead of
    refusing the NULL key, so the new row (id NULL) is committed and its compensation deletes
    ``old``: the table ends ``[(None, ..., 'new')]`` instead of ``[(2, ..., 'old')]``. Expected,
    as before aec2db2 (and as with RETURNING): ``DriverError`` ("give the row its primary
    key"/"is NULL"), nothing written, the table unchanged.

    Suspected cause: adapters/_sqlite_driver.py:SQLiteDriver.create, ``alias is None`` branch
    without RETURNING: ``given = cur.lastrowid`` whenever the key was not given in a rowid
    table, assuming the key is an INTEGER PRIMARY KEY (a rowid alias); for any other key the
    rowid is unrelated to it, and ``WHERE id = <rowid>`` finds whichever row has that key (a
    TEXT key matches too, by affinity: ``'2' = 2``). Only a rowid-alias key should take
    lastrowid.
    """
    monkeypatch.setattr(sqlite_driver, "_RETURNING", False)
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INT PRIMARY KEY, rowid INT, _rowid_ INT, oid INT, name TEXT)")
        conn.execute("INSERT INTO t (id, name) VALUES (2, 'old')")
    before = [(2, None, None, None, "old")]

    async def fail(ctx: tf.WorkflowContext) -> None:
        raise ValueError("no courier")

    wf = (tf.workflow("w")
          .step(tf.create_entity_step("item", "t", lambda ctx: {"name": "new"}))
          .step("fail", fail).build())
    driver = SQLiteDriver(path)
    try:
        result = await tf.execute_workflow(driver, wf)
    finally:
        await driver.aclose()
    with sqlite3.connect(path) as conn:
        after = sorted(conn.execute("SELECT * FROM t").fetchall(), key=repr)
    assert result.status == "failed"
    assert after == before, f"table after compensation: {after}"
