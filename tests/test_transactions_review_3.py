"""A third review of transactional runs and the SQLite driver (c00a355; each test failed before
its fix): resumed runs waiting for another run's transaction, tables WITHOUT ROWID declared any
way, keys with defaults, NULL keys, generated columns, MemoryDriver's None id."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import DriverError, MemoryAdapter, MemoryDriver, SQLiteDriver
from trioflow.testing import open_test_engine


# -- a resumed transactional run waits for another run's transaction, shielded ------------------


def _holder_and_quick() -> tuple[trio.Event, tf.WorkflowDefinition]:
    holding = trio.Event()

    async def hold(ctx: tf.WorkflowContext) -> str:
        holding.set()
        await trio.sleep(10_000)
        return "held"

    return holding, tf.workflow("holder").step("hold", hold).transactional().build()


async def _quick(ctx: tf.WorkflowContext) -> str:
    return "ok"


async def test_a_woken_delayed_transactional_instance_times_out_while_it_waits_for_the_driver(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A transactional workflow with ``with_timeout(10)`` started with ``delay=100`` (it parks:
    out of memory, woken from storage, so it runs as a *resumed* run) finds another instance's
    transaction open (a 10 000 s step).

    Observed: it ends ``timed_out`` only when the other transaction ends, 10 000 s after it was
    started (9 890 s past its deadline). Expected: ``timed_out`` at 110 s, as a non-delayed
    instance does (tests/test_transactions_review.py
    test_a_workflow_timeout_bounds_the_wait_for_the_drivers_transaction, fixed by 6549d8d;
    README "Transactional runs": "a cancel or the workflow timeout also ends a wait for another
    run's transaction").

    Suspected cause: actors/_transaction.py:forward_in_transaction enters
    ``block.__aenter__()`` (the wait for the driver's lock) inside
    ``trio.CancelScope(shield=recovering)``; ``recovering`` is true for every resumed run in its
    forward phase with a ledger driver (both shipped drivers are ledgers), so the deadline cannot
    reach the wait. Only the ledger lookup needs the shield (and only once the lock is held).
    """
    driver = MemoryDriver()
    holding, holder = _holder_and_quick()
    bounded = tf.workflow("bounded").step("quick", _quick).transactional().with_timeout(10).build()
    async with open_test_engine(driver=driver) as engine:
        engine.register(holder)
        engine.register(bounded)
        iid = await engine.start("bounded", delay=100)
        await engine.start("holder")
        await holding.wait()
        t0 = trio.current_time()
        inst = await engine.wait(iid)
        took = trio.current_time() - t0
    assert (inst.status, took) == ("timed_out", 110.0)


async def test_a_cancel_of_a_woken_delayed_transactional_instance_waiting_for_the_driver_takes_effect_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``engine.cancel()`` of a transactional instance that was started with a delay (parked,
    then woken: a resumed run) and now waits for another instance's open transaction.

    Observed: ``cancel()`` says True, but the instance ends ``cancelled`` only 9 800 s later,
    when the other transaction ends. Expected: at once (README: a cancel "also ends a wait for
    another run's transaction"; pinned for non-resumed runs by tests/test_transactions_review.py
    test_a_cancel_of_an_instance_waiting_for_the_drivers_transaction_takes_effect_at_once).

    Suspected cause: actors/_transaction.py:forward_in_transaction shields
    ``block.__aenter__()`` when ``recovering`` (any resumed forward-phase run with a ledger).
    """
    driver = MemoryDriver()
    holding, holder = _holder_and_quick()
    other = tf.workflow("other").step("quick", _quick).transactional().build()
    async with open_test_engine(driver=driver) as engine:
        engine.register(holder)
        engine.register(other)
        await engine.start("holder")
        await holding.wait()
        iid = await engine.start("other", delay=100)
        await trio.sleep(200)  # woken at 100 s; it waits for the holder's transaction
        t0 = trio.current_time()
        assert await engine.cancel(iid)
        inst = await engine.wait(iid)
        took = trio.current_time() - t0
    assert inst.status == "cancelled"
    assert took < 5, f"the cancel took effect {took} s after cancel() said yes"


async def test_closing_the_engine_while_a_resumed_transactional_run_waits_for_the_driver_does_not_hang(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A transactional instance is interrupted by an engine shutdown mid-run (stored
    ``running``); the next engine resumes it while the application holds the driver's
    transaction for a long time (``async with driver.transaction()`` in a task beside the engine,
    or a transactional ``execute_workflow`` run). Then the application closes the engine.

    Observed: ``open_engine``'s exit does not return until the application's transaction ends,
    9 980 s later (the engine cannot be shut down; in production, for ever if that transaction
    waits on the engine). Expected: the engine closes promptly, leaving the instance stored as
    it was for the next engine (nothing was committed: there is nothing to recover).

    Suspected cause: actors/_transaction.py:forward_in_transaction waits for the driver's lock
    (``block.__aenter__()``) inside ``trio.CancelScope(shield=recovering)``, so the engine's
    cancel cannot reach it; only the ledger lookup, once the transaction is open, should be
    shielded.
    """
    driver = MemoryDriver()
    adapter = MemoryAdapter()

    async def slow(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(100)
        return "done"

    wf = tf.workflow("w").step("slow", slow).transactional().build()
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(3)  # the engine closes mid-step: the run rolls back, stays stored running
    stored = await adapter.load(iid)
    assert stored is not None and stored.status == "running"

    async def application(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with driver.transaction():
            task_status.started()
            await trio.sleep(10_000)

    async with trio.open_nursery() as nursery:
        await nursery.start(application)
        async with open_test_engine(driver=driver, adapter=adapter) as engine:
            engine.register(wf)
            await trio.sleep(20)  # resumed; it waits for the application's transaction
            t0 = trio.current_time()
        took = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    assert took < 5, f"closing the engine took {took} s"


# -- SQLiteDriver: which tables are WITHOUT ROWID -----------------------------------------------


def _db(tmp_path: Path, *statements: str) -> Path:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        for statement in statements:
            conn.execute(statement)
    return path


def _content(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute("SELECT * FROM t").fetchall(), key=repr)


@pytest.mark.parametrize("schema", [
    "CREATE TABLE t (code TEXT PRIMARY KEY, name TEXT) STRICT, WITHOUT ROWID",
    "CREATE TABLE t (code TEXT PRIMARY KEY, name TEXT) /* codes */ WITHOUT ROWID",
    "CREATE TABLE t (code TEXT PRIMARY KEY, name TEXT) -- catalogue codes\nWITHOUT ROWID",
], ids=["strict-first", "block-comment", "line-comment"])
async def test_sqlite_create_in_a_without_rowid_table_declared_another_valid_way_returns_the_row(
    tmp_path: Path, schema: str,
) -> None:
    """``driver.create("t", {"code": "A", "name": "a"})`` on a WITHOUT ROWID table whose SQL puts
    ``STRICT`` first (``) STRICT, WITHOUT ROWID``: table options come in any order, SQLite
    >= 3.37) or a comment between ``)`` and ``WITHOUT ROWID`` (SQLite keeps comments in
    sqlite_master.sql).

    Observed: ``DriverError: create in 't' failed: no such column: rowid``, nothing written.
    Expected: the row (README: "``WITHOUT ROWID`` tables work"), as for
    ``) WITHOUT ROWID``.

    Suspected cause: adapters/_sqlite_driver.py:_WITHOUT_ROWID (``\\)\\s*WITHOUT\\s+ROWID\\s*(,|;|$)``)
    searched over the raw CREATE statement in SQLiteDriver._schema; it needs ``WITHOUT ROWID``
    right after the closing parenthesis. Asking SQLite instead (``pragma_table_list``'s ``wr``
    column, 3.37+, or whether ``SELECT rowid FROM t`` compiles) would not depend on the text.
    """
    driver = SQLiteDriver(_db(tmp_path, schema))
    try:
        try:
            row: Any = await driver.create("t", {"code": "A", "name": "a"})
        except Exception as exc:  # noqa: BLE001
            row = exc
    finally:
        await driver.aclose()
    assert row == {"code": "A", "name": "a"}


async def test_a_delete_entity_steps_compensation_on_a_strict_without_rowid_table_restores_the_row(
    tmp_path: Path,
) -> None:
    """``delete_entity_step`` on ``CREATE TABLE t (...) STRICT, WITHOUT ROWID``, then a later step
    fails (a plain, non-transactional workflow).

    Observed: the row is deleted for good: the compensation (which re-creates it through
    ``driver.create``) fails with ``DriverError: create in 't' failed: no such column: rowid``
    (``compensation_errors``). Expected: the row is back, the instance ``failed`` with the later
    step's error and no compensation error.

    Suspected cause: adapters/_sqlite_driver.py:_WITHOUT_ROWID misses this (valid) spelling, so
    SQLiteDriver.create reads the re-created row back ``WHERE rowid = ?``; the delete itself,
    which needs no rowid, went through.
    """
    path = _db(tmp_path, "CREATE TABLE t (code TEXT PRIMARY KEY, name TEXT) STRICT, WITHOUT ROWID",
               "INSERT INTO t VALUES ('A', 'apple'), ('B', 'banana')")
    before = _content(path)

    async def fail(ctx: tf.WorkflowContext) -> None:
        raise ValueError("no courier")

    wf = (tf.workflow("drop").step(tf.delete_entity_step("drop", "t", lambda ctx: {"code": "A"}))
          .step("fail", fail).build())
    driver = SQLiteDriver(path)
    try:
        result = await tf.execute_workflow(driver, wf)
    finally:
        await driver.aclose()
    assert result.status == "failed"
    assert _content(path) == before, f"compensation errors: {result.compensation_errors}"


async def test_sqlite_create_in_an_integer_key_table_whose_sql_mentions_without_rowid_returns_the_row(
    tmp_path: Path,
) -> None:
    """A plain rowid table keyed by ``id INTEGER PRIMARY KEY`` (ids auto-assigned) whose SQL holds
    the text ``)WITHOUT ROWID,`` inside a string literal (a column DEFAULT); the same happens
    with a quoted column name such as ``"a) without rowid,b"``.

    Observed: ``create("t", {"note": "n"})`` raises a bare ``IndexError: list index out of
    range`` (not even a DriverError). Expected: the new row ``{"id": 1, ...}``.

    Suspected cause: adapters/_sqlite_driver.py:_WITHOUT_ROWID matches text anywhere in the
    CREATE statement, literals and quoted names included, so SQLiteDriver._schema takes the table
    for WITHOUT ROWID and create reads the row back ``WHERE "id" = NULL`` (the key was not given)
    instead of by its rowid; ``_rows(found)[0]`` then fails.
    """
    driver = SQLiteDriver(_db(
        tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT, tag TEXT DEFAULT ')WITHOUT ROWID,')"))
    try:
        try:
            row: Any = await driver.create("t", {"note": "n"})
        except Exception as exc:  # noqa: BLE001
            row = exc
    finally:
        await driver.aclose()
    assert isinstance(row, dict) and (row["id"], row["note"]) == (1, "n"), repr(row)


async def test_sqlite_create_in_a_without_rowid_table_whose_key_has_a_default_returns_the_row(
    tmp_path: Path,
) -> None:
    """A WITHOUT ROWID table whose key has a DEFAULT (a generated text id:
    ``code TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(8))))``); ``create("t", {"name": "a"})``
    leaves the key to the database, as a ``create_entity_step`` with ``store_as`` would.

    Observed: a bare ``IndexError: list index out of range`` (the insert rolled back). Expected:
    the row as stored, its generated code included (README: "``WITHOUT ROWID`` tables work").

    Suspected cause: adapters/_sqlite_driver.py:SQLiteDriver.create reads a WITHOUT ROWID row
    back ``WHERE key = ?`` with ``data.get(key)``, i.e. NULL when the key comes from the column's
    default; nothing matches. (Reading it back needs the key the database chose: e.g. an
    ``INSERT ... RETURNING *``, SQLite 3.35+.)
    """
    driver = SQLiteDriver(_db(
        tmp_path, "CREATE TABLE t (code TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(8)))), name TEXT) WITHOUT ROWID"))
    try:
        try:
            row: Any = await driver.create("t", {"name": "a"})
        except Exception as exc:  # noqa: BLE001
            row = exc
    finally:
        await driver.aclose()
    assert isinstance(row, dict) and row["name"] == "a" and len(row["code"]) == 16, repr(row)


# -- entity-step compensations on other tables -------------------------------------------------


async def test_a_delete_entity_steps_compensation_restores_a_legacy_row_whose_key_is_null(
    tmp_path: Path,
) -> None:
    """A rowid table keyed by ``sku TEXT PRIMARY KEY`` holds a legacy row whose sku is NULL
    (SQLite allows it; the driver now only refuses to *create* such rows).
    ``delete_entity_step`` matching that row by name, then a later step fails (a plain workflow).

    Observed: the row is gone for good: the compensation re-creates it through
    ``driver.create``, which now refuses it (``DriverError: create in 't': its primary key 'sku'
    is NULL``; ``compensation_errors``). Before c00a355 the re-create went through. Expected: the
    row is restored (a compensation must undo what its step did), or the delete refused up front
    so that nothing is lost.

    Suspected cause: c00a355's NULL-key check in adapters/_sqlite_driver.py:SQLiteDriver.create,
    reached from runtime/_entity_steps.py:delete_entity_step's ``recreate``; the delete side
    (``driver.delete(entity, {key: None})``, ``IS NULL``) still accepts such rows (and removes
    every NULL-key row, not only the one it reports).
    """
    path = _db(tmp_path, "CREATE TABLE t (sku TEXT PRIMARY KEY, name TEXT)",
               "INSERT INTO t VALUES (NULL, 'legacy'), ('b-1', 'bolt')")
    before = _content(path)

    async def fail(ctx: tf.WorkflowContext) -> None:
        raise ValueError("no courier")

    wf = (tf.workflow("drop").step(tf.delete_entity_step("drop", "t", lambda ctx: {"name": "legacy"}))
          .step("fail", fail).build())
    driver = SQLiteDriver(path)
    try:
        result = await tf.execute_workflow(driver, wf)
    finally:
        await driver.aclose()
    assert result.status == "failed"
    assert _content(path) == before, f"compensation errors: {result.compensation_errors}"


@pytest.mark.parametrize("kind", ["VIRTUAL", "STORED"])
async def test_a_delete_entity_steps_compensation_restores_a_row_of_a_table_with_a_generated_column(
    tmp_path: Path, kind: str,
) -> None:
    """``delete_entity_step`` on a table with a generated column
    (``up TEXT GENERATED ALWAYS AS (upper(name))``), then a later step fails.

    Observed: the row is gone for good; the compensation fails with ``UnknownColumnError: table
    't' has no column 'up' (columns: id, name)``. Expected: the row restored.

    Suspected cause: adapters/_sqlite_driver.py:SQLiteDriver reads rows with ``SELECT *`` (the
    generated column included: it is in the step's output, ``deleted``) but takes the writable
    columns from ``pragma_table_info``, which leaves generated columns out;
    runtime/_entity_steps.py:delete_entity_step's ``recreate`` hands the whole row back to
    ``create`` (which must not write a generated column anyway). Predates c00a355.
    """
    path = _db(tmp_path, f"CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, up TEXT GENERATED ALWAYS AS (upper(name)) {kind})",
               "INSERT INTO t (id, name) VALUES (1, 'a'), (2, 'b')")
    before = _content(path)

    async def fail(ctx: tf.WorkflowContext) -> None:
        raise ValueError("no courier")

    wf = (tf.workflow("drop").step(tf.delete_entity_step("drop", "t", lambda ctx: {"name": "a"}))
          .step("fail", fail).build())
    driver = SQLiteDriver(path)
    try:
        result = await tf.execute_workflow(driver, wf)
    finally:
        await driver.aclose()
    assert result.status == "failed"
    assert _content(path) == before, f"compensation errors: {result.compensation_errors}"


async def test_memory_driver_create_with_a_none_key_is_refused_or_gets_an_id_as_in_sqlite() -> None:
    """``MemoryDriver().create("orders", {"id": None, "ref": ...})`` (a data_fn built from a record
    whose id is not set yet, the case tests/test_transactions_review_2.py pins for SQLite).

    Observed: the row is stored under the key ``None``; a second such create fails with
    ``DriverError: orders: a row with id None already exists``. Expected, as with SQLiteDriver
    (README: "Both ..."; "a create that would leave a row's key NULL" is refused with
    DriverError, writing nothing; an INTEGER PRIMARY KEY given None gets the next id): either
    each row gets the next integer id, or the create is refused and nothing is written -- tests
    written against MemoryDriver must not pass where SQLite behaves otherwise.

    Suspected cause: adapters/_memory_driver.py:MemoryDriver.create assigns an id only when
    ``"id" not in row``, and never checks for a None key.
    """
    driver = MemoryDriver()
    outcomes: list[Any] = []
    for ref in ("a", "b"):
        try:
            outcomes.append(await driver.create("orders", {"id": None, "ref": ref}))
        except DriverError as exc:
            outcomes.append(exc)
    stored = await driver.find_many("orders", {})
    refused = all(isinstance(o, DriverError) for o in outcomes) and stored == []
    assigned = [r["id"] for r in stored] == [1, 2]
    assert refused or assigned, f"outcomes {outcomes!r}, stored {stored!r}"
