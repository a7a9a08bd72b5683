"""A review of 6549d8d (transactional runs entered and exited by hand; SQLiteDriver create read
back by key); each test failed before its fix: a transaction that cannot begin or roll back, a
resumed run that committed before its deadline, rows with a NULL or integer key."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow._snapshot import TERMINAL
from trioflow.adapters import DriverError, MemoryDriver, SQLiteDriver
from trioflow.testing import open_test_engine


# -- helpers ---------------------------------------------------------------------------------------


def _locked_sqlite(tmp_path: Path) -> tuple[SQLiteDriver, sqlite3.Connection]:
    """A SQLiteDriver (busy timeout 0) on a database whose write lock another connection holds,
    so that the driver's ``BEGIN IMMEDIATE`` fails with "database is locked"."""
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, ref TEXT)")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    driver = SQLiteDriver(sqlite3.connect(path, check_same_thread=False, timeout=0))
    return driver, holder


class RollbackFails(MemoryDriver):
    """A driver whose outermost ROLLBACK fails (a disk I/O error, a lost connection)."""

    async def _restore(self, level: int, saved: Any) -> None:
        if level == 1:
            raise DriverError("rollback failed: disk I/O error")
        await super()._restore(level, saved)


def _order_flow(refunds: list[str], *, fail: bool) -> tf.WorkflowDefinition:
    async def charge(ctx: tf.WorkflowContext) -> str:
        return "ch-1"

    async def refund(ctx: tf.WorkflowContext, charged: str) -> None:
        refunds.append(charged)

    async def ship(ctx: tf.WorkflowContext) -> str:
        if fail:
            raise ValueError("no courier")
        return "shipped"

    return (tf.workflow("order")
            .step("charge", charge, refund)
            .step(tf.create_entity_step("create-order", "orders", lambda ctx: {"ref": "r1"}))
            .step("ship", ship)
            .transactional().build())


class HangOnTerminalSave(tf.adapters.MemoryAdapter):
    """While ``hang`` is set a terminal snapshot is never stored: closing the engine then is a
    crash right after the driver's commit, before the instance's end is stored."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = True
        self.reached = trio.Event()

    async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Any, **kw: Any) -> None:
        if self.hang and status in TERMINAL:
            self.reached.set()
            await trio.sleep_forever()
        await super().checkpoint(instance_id, status, header, records, **kw)


# -- a driver transaction that cannot begin, or cannot roll back -----------------------------------


async def test_execute_workflow_reports_a_transaction_that_cannot_begin_on_its_result(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    """``execute_workflow(driver, wf)`` with a transactional workflow whose driver cannot open its
    transaction (SQLite: ``BEGIN IMMEDIATE`` -> "database is locked" past the busy timeout).

    Observed: ``execute_workflow`` raises ``DriverError`` (wrapped in an exception group by the
    test runner). Expected, as before 6549d8d and as its docstring says ("a failure compensates the
    completed steps and is reported on the result (it is not raised)"): a ``WorkflowResult`` with
    ``success=False``, ``status="failed"``, ``error_name="DriverError"``.

    Suspected cause: actors/_transaction.py:forward_in_transaction now calls
    ``block.__aenter__()`` outside its try/except, so the begin's error is no longer turned into a
    ("failed", error, None) outcome; actors/_instance.py:_forward only catches StepFailure, so it
    escapes run_instance.
    """
    driver, holder = _locked_sqlite(tmp_path)
    wf = _order_flow([], fail=False)
    try:
        try:
            result: Any = await tf.execute_workflow(driver, wf)
        except BaseException as exc:  # noqa: BLE001 - what the caller gets
            result = exc
    finally:
        holder.rollback()
        holder.close()
        await driver.aclose()
    assert isinstance(result, tf.WorkflowResult), f"execute_workflow raised {result!r}"
    assert (result.success, result.status, result.error_name) == (False, "failed", "DriverError")


async def test_an_engine_instance_whose_transaction_cannot_begin_fails_with_that_error_and_its_hook(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    """In an engine, a transactional instance whose driver transaction cannot begin (SQLite
    "database is locked").

    Observed: the instance actor crashes ("instance actor ... crashed" logged) and the instance is
    failed alone with ``error="internal error: DriverError: ..."``; its ``on_failed`` hook never
    runs, nor ``workflow.failed``. Expected (as before 6549d8d): an ordinary failure, its error the
    DriverError, ``on_failed`` called with the result (README "Hooks").

    Suspected cause: actors/_transaction.py:forward_in_transaction lets the error of
    ``block.__aenter__()`` propagate; runtime/_engine.py:Engine._instance_actor then takes it for
    a bug (fail_alone).
    """
    driver, holder = _locked_sqlite(tmp_path)
    failed: list[tf.WorkflowResult] = []
    wf = (tf.workflow("w").step(tf.create_entity_step("create-order", "orders", lambda ctx: {"ref": "r1"}))
          .transactional().with_hooks(on_failed=failed.append).build())
    try:
        async with open_test_engine(driver=driver) as engine:
            engine.register(wf)
            inst = await engine.wait(await engine.start("w"))
            await trio.sleep(1)  # on_failed runs beside the instance
    finally:
        holder.rollback()
        holder.close()
        await driver.aclose()
    assert inst.status == "failed"
    assert not (inst.error or "").startswith("internal error"), inst.error
    assert len(failed) == 1, "on_failed was not called"


async def test_a_rollback_that_fails_still_runs_the_other_compensations(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A transactional run fails in its last step and the driver's ROLLBACK itself raises
    ``DriverError``.

    Observed: in an engine the instance is failed alone ("internal error: DriverError: rollback
    failed ...") and the charge is never refunded; ``execute_workflow`` raises the DriverError and
    does not refund either. Expected (as before 6549d8d; README "Transactional runs": "every
    other compensation (a refund through a payment service) still runs"): the instance fails and
    ``refund`` runs.

    Suspected cause: actors/_transaction.py:forward_in_transaction awaits
    ``block.__aexit__(...)`` (the rollback) inside its ``except BaseException`` handler without
    catching what it raises, so the rollback's error replaces the StepFailure and escapes
    run_instance before _end_badly compensates.
    """
    refunds: list[str] = []
    async with open_test_engine(driver=RollbackFails()) as engine:
        engine.register(_order_flow(refunds, fail=True))
        inst = await engine.wait(await engine.start("order"))
    assert inst.status == "failed"
    assert refunds == ["ch-1"], f"engine: the charge was not refunded (error {inst.error!r})"

    refunds.clear()
    try:
        result: Any = await tf.execute_workflow(RollbackFails(), _order_flow(refunds, fail=True))
    except BaseException as exc:  # noqa: BLE001
        result = exc
    assert isinstance(result, tf.WorkflowResult) and result.status == "failed", repr(result)
    assert refunds == ["ch-1"], "execute_workflow: the charge was not refunded"


# -- the run ledger: a resume of a run that committed before a crash --------------------------------


async def test_a_resumed_run_that_committed_before_a_crash_completes_even_past_its_workflow_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A transactional run with ``with_timeout(10)`` commits after 8 s (its order row written, its
    run recorded in the driver's ledger); the engine dies before the terminal snapshot. The next
    engine resumes it later, when its 10 s are spent.

    Observed: it ends ``timed_out``, nothing compensated (the charge is not refunded) while the
    committed order row stays in the database and ``rolled_back`` is False. Expected (as before
    6549d8d; README: "the resume finds it there and finishes the instance without running
    anything again"): ``completed``, the committed state. The same happens when ``cancel()``
    reaches a resumed run while it waits for another run's transaction: ``cancelled`` with its
    committed writes left uncompensated.

    Suspected cause: actors/_instance.py:_forward now calls forward_in_transaction inside the
    run's cancel scope, whose deadline is already past on resume; ``block.__aenter__()`` (the
    wait for the driver's lock) raises Cancelled before _recover ever looks the run up in the
    ledger, and the instance ends timed out from its pre-transaction snapshot.
    """
    driver = MemoryDriver()
    adapter = HangOnTerminalSave()
    refunds: list[str] = []

    async def charge(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(8)
        return "ch-1"

    async def refund(ctx: tf.WorkflowContext, charged: str) -> None:
        refunds.append(charged)

    wf = (tf.workflow("order").step("charge", charge, refund)
          .step(tf.create_entity_step("create-order", "orders", lambda ctx: {"ref": "r1"}))
          .transactional().with_timeout(10).build())
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("order")
        await adapter.reached.wait()  # committed; the terminal snapshot never gets stored
    stored = await adapter.load(iid)
    assert stored is not None and stored.status == "running"
    adapter.hang = False
    await trio.sleep(60)  # the next engine comes up a minute later
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        inst = await engine.wait(iid)
    rows = await driver.find_many("orders", {})
    assert (inst.status, refunds, len(rows)) == ("completed", [], 1), (
        f"ended {inst.status!r}, refunded {refunds}, order rows {rows} (rolled_back={inst.rolled_back})")


# -- SQLiteDriver.create: read back by key ----------------------------------------------------------


def _db(tmp_path: Path, schema: str, rows: list[tuple[Any, ...]] = ()) -> Path:  # type: ignore[assignment]
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute(schema)
        for row in rows:
            conn.execute(f"INSERT INTO t VALUES ({', '.join('?' for _ in row)})", row)
    return path


async def test_sqlite_create_with_a_none_integer_primary_key_returns_the_new_row(tmp_path: Path) -> None:
    """``create("t", {"id": None, "name": "a"})`` on ``id INTEGER PRIMARY KEY`` (SQLite gives the
    row the next rowid; a data_fn built from a record whose id is not set yet passes it).

    Observed: raises a bare ``IndexError: list index out of range`` (not even a DriverError) and
    writes nothing. Expected (as before 6549d8d): returns ``{"id": 1, "name": "a"}``.

    Suspected cause: adapters/_sqlite_driver.py:SQLiteDriver.create reads the row back
    ``WHERE "id" IS ?`` with the given ``None`` whenever the key is in ``data``; the row got id 1,
    so nothing matches and ``_rows(found)[0]`` fails. It should read back by the rowid unless the
    table is WITHOUT ROWID (or unless the key given is not None).
    """
    driver = SQLiteDriver(_db(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)"))
    try:
        try:
            row: Any = await driver.create("t", {"id": None, "name": "a"})
        except Exception as exc:  # noqa: BLE001
            row = exc
        stored = await driver.find_many("t", {})
    finally:
        await driver.aclose()
    assert row == {"id": 1, "name": "a"}, f"create gave {row!r}; the table holds {stored!r}"


async def test_sqlite_create_of_a_row_with_a_null_key_is_refused_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """A rowid table keyed by ``code TEXT PRIMARY KEY`` (SQLite lets such a key be NULL) already
    holds a row whose code is NULL; ``create("t", {"code": None, "name": "b"})`` returned that
    other row. A row no key names cannot be found again, nor undone by an entity step's
    compensation: the create is refused, and nothing is written."""
    path = _db(tmp_path, "CREATE TABLE t (code TEXT PRIMARY KEY, name TEXT)", [(None, "a")])
    driver = SQLiteDriver(path)
    try:
        try:
            await driver.create("t", {"code": None, "name": "b"})
        except DriverError as exc:
            assert "primary key 'code' is NULL" in str(exc)
        else:
            raise AssertionError("a row with a NULL key was created")
        assert await driver.create("t", {"code": "c", "name": "c"}) == {"code": "c", "name": "c"}
    finally:
        await driver.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT code, name FROM t ORDER BY name").fetchall() == [(None, "a"), ("c", "c")]


async def test_a_create_entity_steps_compensation_deletes_only_its_own_row_when_the_key_is_null(
    tmp_path: Path,
) -> None:
    """``create_entity_step`` on a rowid table keyed by ``sku TEXT PRIMARY KEY`` whose data leaves
    the key out (SQLite stores NULL; two such rows exist already), then a later step fails.

    Observed: the compensation deletes every row whose ``sku`` is NULL -- the two rows that were
    there before the run are gone for good. Expected: only the row the step created is deleted
    (or the create is refused with DriverError, writing nothing: its row has no key to be found
    and compensated by).

    Suspected cause: adapters/_sqlite_driver.py:SQLiteDriver.create accepts a NULL key in a rowid
    table whose key is a declared non-INTEGER column, and runtime/_entity_steps.py's
    delete_created then deletes ``{key: None}``, which matches ``"sku" IS NULL`` on every such row
    (an update by a NULL key likewise fails with a bare IndexError, since it uses ``= ?``).
    """
    driver = SQLiteDriver(_db(tmp_path, "CREATE TABLE t (sku TEXT PRIMARY KEY, name TEXT)",
                              [(None, "legacy-1"), (None, "legacy-2")]))

    async def fail(ctx: tf.WorkflowContext) -> None:
        raise ValueError("out of stock")

    wf = (tf.workflow("add").step(tf.create_entity_step("add", "t", lambda ctx: {"name": "new"}))
          .step("fail", fail).build())
    try:
        result = await tf.execute_workflow(driver, wf)
        names = sorted(r["name"] for r in await driver.find_many("t", {}))
    finally:
        await driver.aclose()
    assert result.status == "failed"
    assert names == ["legacy-1", "legacy-2"], f"left after the compensation: {names}"
