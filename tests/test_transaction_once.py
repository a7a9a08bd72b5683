"""A committed transactional run applies exactly once, even if the process dies between the
driver's COMMIT and the instance's terminal snapshot (the drivers' run ledger); and SQLiteDriver
quotes identifiers correctly (names containing a double quote)."""

from __future__ import annotations

import collections
import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._decide import new_state
from trioflow._snapshot import TERMINAL, Status
from trioflow.adapters import MemoryDriver, SQLiteDriver
from trioflow._codec import decode_stored, encode_whole
from trioflow.adapters._driver import RunLedger
from trioflow.adapters._sqlite_driver import LEDGER_TABLE

from processes import kill_when

CHILD = str(Path(__file__).with_name("tx_crash_child.py"))
N = 50
ORDERS = "CREATE TABLE orders (id INTEGER PRIMARY KEY, ref TEXT NOT NULL)"


# -- helpers ----------------------------------------------------------------------------------


class HangOnTerminalSave(tf.adapters.MemoryAdapter):
    """Stores snapshots like a MemoryAdapter, but while ``hang`` is set a terminal snapshot never
    gets stored: the save parks forever, so closing the engine then is a crash right after the
    driver's commit and before the terminal snapshot."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = True
        self.reached = trio.Event()

    async def checkpoint(self, instance_id: str, status: Status, header: bytes, records: Any, **kw: Any) -> None:
        if self.hang and status in TERMINAL:
            self.reached.set()
            await trio.sleep_forever()
        await super().checkpoint(instance_id, status, header, records, **kw)


class PlainDriver:
    """A third-party driver: the Driver protocol only, no run ledger."""

    def __init__(self, inner: MemoryDriver) -> None:
        self._inner = inner

    async def create(self, entity: str, data: Mapping[str, Any]) -> dict[str, Any]:
        return await self._inner.create(entity, data)

    async def find_one(self, entity: str, where: Mapping[str, Any]) -> dict[str, Any] | None:
        return await self._inner.find_one(entity, where)

    async def find_many(self, entity: str, where: Mapping[str, Any]) -> list[dict[str, Any]]:
        return await self._inner.find_many(entity, where)

    async def update(self, entity: str, where: Mapping[str, Any], data: Mapping[str, Any]) -> list[dict[str, Any]]:
        return await self._inner.update(entity, where, data)

    async def delete(self, entity: str, where: Mapping[str, Any]) -> int:
        return await self._inner.delete(entity, where)

    async def primary_key(self, entity: str) -> str:
        return await self._inner.primary_key(entity)

    def transaction(self) -> AbstractAsyncContextManager[None]:
        return self._inner.transaction()


@pytest.fixture(params=["memory", "sqlite"])
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryDriver()
        return
    path = tmp_path / "user.db"
    with sqlite3.connect(path) as conn:
        conn.execute(ORDERS)
    sqlite_driver = SQLiteDriver(path)
    yield sqlite_driver
    await sqlite_driver.aclose()


def order_flow(**hooks: Any) -> tf.WorkflowDefinition:
    builder = (tf.workflow("order")
               .step(tf.create_entity_step("create-order", "orders", lambda ctx: {"ref": ctx.input["ref"]},
                                           store_as="order_id"))
               .transactional())
    if hooks:
        builder.with_hooks(**hooks)
    return builder.build()


def gated_flow(gate: trio.Event, entered: trio.Event) -> tf.WorkflowDefinition:
    """Creates an order, then waits in "pay" (its transaction still open) until ``gate`` is set."""
    async def pay(ctx: tf.WorkflowContext) -> str:
        entered.set()
        await gate.wait()
        return "paid"

    return (tf.workflow("order")
            .step(tf.create_entity_step("create-order", "orders", lambda ctx: {"ref": ctx.input["ref"]}))
            .step("pay", pay)
            .transactional()
            .build())


async def crash_before_commit(adapter: tf.adapters.Adapter, driver: Any, ref: str, iid: str) -> trio.Event:
    """Start an instance and stop the engine while its transaction is open; returns its gate."""
    gate, entered = trio.Event(), trio.Event()
    async with tf.open_engine(adapter=adapter, driver=driver) as engine:
        engine.register(gated_flow(gate, entered))
        await engine.start("order", {"ref": ref}, instance_id=iid)
        await entered.wait()
    return gate


async def crash_after_commit(adapter: HangOnTerminalSave, driver: Any, wf: tf.WorkflowDefinition,
                             ref: str = "r1") -> str:
    """Run one instance until it has committed and is storing its terminal snapshot, then stop
    the engine there (nothing of it is stored after the commit)."""
    async with tf.open_engine(adapter=adapter, driver=driver) as engine:
        engine.register(wf)
        iid = await engine.start("order", {"ref": ref})
        await adapter.reached.wait()
    stored = await adapter.load(iid)
    assert stored is not None and stored.status == "running"
    adapter.hang = False
    return iid


async def resume_and_wait(adapter: tf.adapters.Adapter, driver: Any, wf: tf.WorkflowDefinition,
                          iid: str) -> tf.WorkflowInstance:
    async with tf.open_engine(adapter=adapter, driver=driver) as engine:
        engine.register(wf)
        return await engine.wait(iid)


# -- SIGKILL between the COMMIT and the terminal snapshot ---------------------------------------


def terminal_markers(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_sigkill_after_commit_before_terminal_snapshot_applies_once(tmp_path: Path) -> None:
    db, userdb, log = tmp_path / "flows.db", tmp_path / "user.db", tmp_path / "markers.log"
    with sqlite3.connect(userdb) as conn:
        conn.execute(ORDERS)
    child = subprocess.Popen([sys.executable, CHILD, str(db), str(userdb), str(log), "run", str(N)],
                             stdout=subprocess.DEVNULL)
    kill_when(child, lambda: terminal_markers(log) >= N,
              lambda: f"only {terminal_markers(log)} of {N} instances committed", timeout=60)
    with sqlite3.connect(db) as conn:
        running = conn.execute("SELECT count(*) FROM trioflow_instances WHERE status = 'running'").fetchone()[0]
    assert running == N, "the crash left every instance stored running"
    with sqlite3.connect(userdb) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == N, "every transaction committed"

    done = subprocess.run([sys.executable, CHILD, str(db), str(userdb), str(log), "resume"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    with sqlite3.connect(userdb) as conn:
        rows = conn.execute("SELECT id, ref FROM orders").fetchall()
        # A run's record goes once its end is stored (as those of its entity steps' executions do):
        # none is left once the resumed instances have ended.
        ledger = conn.execute(
            f"SELECT count(*) FROM {LEDGER_TABLE} WHERE run_key NOT LIKE 'trioflow.entity/%'").fetchone()[0]
    per_ref = collections.Counter(ref for _, ref in rows)
    assert per_ref == {f"r{k}": 1 for k in range(N)}, "each committed run applied exactly once"
    ids = {ref: oid for oid, ref in rows}
    assert len(summary) == N and ledger == 0
    for k in range(N):
        inst = summary[f"i{k}"]
        assert inst["status"] == "completed" and not inst["rolled_back"]
        assert inst["steps"] == {"create-order": "completed"}
        assert inst["output"] == {"id": ids[f"r{k}"], "ref": f"r{k}"}, "the state the transaction committed"


# -- the same window, in process, on both drivers ----------------------------------------------


async def test_a_run_committed_before_a_crash_is_not_run_again(driver: Any) -> None:
    adapter = HangOnTerminalSave()
    wf = order_flow()
    iid = await crash_after_commit(adapter, driver, wf)
    inst = await resume_and_wait(adapter, driver, wf, iid)
    assert inst.status == "completed" and not inst.rolled_back
    rows = await driver.find_many("orders", {})
    assert [r["ref"] for r in rows] == ["r1"]
    assert inst.output == rows[0] and inst.step_results["create-order"].output == rows[0]
    stored = await adapter.load(iid)
    assert stored is not None and decode_stored(stored).data == {"order_id": rows[0]["id"]}


async def test_a_recovered_run_does_not_repeat_step_events_or_hooks(driver: Any) -> None:
    calls: list[str] = []
    completed = trio.Event()

    def on_complete(*args: Any) -> None:
        calls.append("done")
        completed.set()

    wf = order_flow(on_step_complete=lambda *a: calls.append("step"), on_complete=on_complete)
    adapter = HangOnTerminalSave()
    iid = await crash_after_commit(adapter, driver, wf)
    assert calls == ["step"]
    events: list[str] = []
    async with tf.open_engine(adapter=adapter, driver=driver) as engine:
        engine.events.on("*", lambda e: events.append(e["event"]))
        engine.register(wf)
        assert (await engine.wait(iid)).status == "completed"
        await completed.wait()  # the end hook may run beside the instance
    assert calls == ["step", "done"], "the step hook ran once, before the crash; on_complete once, now"
    assert not [e for e in events if e.startswith("workflow.step")]
    assert events.count("workflow.completed") == 1


async def test_a_crash_before_the_commit_still_runs_afresh(driver: Any) -> None:
    adapter = tf.adapters.MemoryAdapter()
    gate = await crash_before_commit(adapter, driver, "r1", "i1")
    assert await driver.find_many("orders", {}) == [] and await driver.find_run("i1") is None
    gate.set()
    inst = await resume_and_wait(adapter, driver, gated_flow(gate, trio.Event()), "i1")
    assert inst.status == "completed" and inst.output == "paid"
    assert [r["ref"] for r in await driver.find_many("orders", {})] == ["r1"]


async def test_a_record_of_an_earlier_instance_with_the_same_id_is_ignored(driver: Any) -> None:
    done = trio.Event()
    done.set()
    async with tf.open_engine(driver=driver) as engine:  # other storage, same user database
        engine.register(gated_flow(done, trio.Event()))
        await engine.start("order", {"ref": "old"}, instance_id="same")
        assert (await engine.wait("same")).status == "completed"
    adapter = tf.adapters.MemoryAdapter()
    gate = await crash_before_commit(adapter, driver, "new", "same")
    gate.set()
    inst = await resume_and_wait(adapter, driver, gated_flow(gate, trio.Event()), "same")
    assert inst.status == "completed" and inst.step_results["create-order"].output["ref"] == "new"
    assert sorted(r["ref"] for r in await driver.find_many("orders", {})) == ["new", "old"]


async def test_failed_and_in_process_runs_leave_no_record(driver: Any) -> None:
    async def decline(ctx: tf.WorkflowContext) -> None:
        raise RuntimeError("declined")

    failing = (tf.workflow("order")
               .step(tf.create_entity_step("create-order", "orders", lambda ctx: {"ref": "x"}))
               .step("pay", decline)
               .transactional()
               .build())
    async with tf.open_engine(driver=driver) as engine:
        engine.register(failing)
        iid = await engine.start("order")
        inst = await engine.wait(iid)
    assert inst.status == "failed" and inst.rolled_back and await driver.find_run(iid) is None
    result = await tf.execute_workflow(driver, order_flow(), {"ref": "r1"})
    assert result.success and await driver.find_run(result.instance_id) is None  # never resumed


async def test_a_driver_without_a_ledger_keeps_the_old_behaviour() -> None:
    inner = MemoryDriver()
    plain = PlainDriver(inner)
    assert not isinstance(plain, RunLedger) and isinstance(inner, RunLedger)
    wf = order_flow()
    result = await tf.execute_workflow(plain, wf, {"ref": "r0"})
    assert result.success and [r["ref"] for r in await plain.find_many("orders", {})] == ["r0"]
    adapter = HangOnTerminalSave()
    iid = await crash_after_commit(adapter, plain, wf)
    inst = await resume_and_wait(adapter, plain, wf, iid)
    assert inst.status == "completed"
    # Nothing tells the resume the commit happened: it runs the forward part again.
    assert [r["ref"] for r in await plain.find_many("orders", {})] == ["r0", "r1", "r1"]
    assert inner.ledger == {}


# -- the ledger methods themselves -------------------------------------------------------------


async def test_ledger_records_commit_and_roll_back_with_the_transaction(driver: Any) -> None:
    assert await driver.find_run("k") is None
    with pytest.raises(tf.adapters.DriverError, match=r"record_run must be called inside driver\.transaction"):
        await driver.record_run("k", b"outside")
    with pytest.raises(RuntimeError):
        async with driver.transaction():
            await driver.record_run("k", b"gone")
            assert await driver.find_run("k") == b"gone"  # the transaction sees its own write
            raise RuntimeError("roll back")
    assert await driver.find_run("k") is None
    async with driver.transaction():
        await driver.record_run("k", b"one")
    async with driver.transaction():
        await driver.record_run("k", b"two")  # replaces
    assert await driver.find_run("k") == b"two"


async def test_sqlite_ledger_table_is_made_on_first_record_and_is_not_an_entity(tmp_path: Path) -> None:
    path = tmp_path / "user.db"
    with sqlite3.connect(path) as conn:
        conn.execute(ORDERS)
    d = SQLiteDriver(path)
    await d.find_run("k")
    with pytest.raises(tf.adapters.DriverError):
        await d.record_run("k", b"x")

    def tables() -> set[str]:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}

    assert LEDGER_TABLE not in tables()
    state_bytes = encode_whole(new_state(order_flow(), "sample", {"ref": "r"}, 1.0))
    async with d.transaction():
        await d.record_run("k", state_bytes)
    assert LEDGER_TABLE in tables() and await d.find_run("k") == state_bytes
    with pytest.raises(tf.adapters.UnknownEntityError, match=r"\(tables: orders\)"):
        await d.find_many(LEDGER_TABLE, {})
    await d.aclose()


# -- identifiers containing a double quote (SQLiteDriver) --------------------------------------

WEIRD, COL = 'we"ird', 'co"l'


@pytest.fixture
async def weird(tmp_path: Path) -> AsyncIterator[SQLiteDriver]:
    path = tmp_path / "weird.db"
    with sqlite3.connect(path) as conn:
        conn.execute('CREATE TABLE "we""ird" ("i""d" INTEGER PRIMARY KEY, "co""l" TEXT, other TEXT)')
        conn.execute('CREATE TABLE victim (id INTEGER PRIMARY KEY)')
        conn.execute("INSERT INTO victim VALUES (1)")
    d = SQLiteDriver(path)
    yield d
    await d.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM victim").fetchone()[0] == 1, "nothing was injected"


async def test_names_with_a_double_quote_work_for_every_call(weird: SQLiteDriver) -> None:
    assert await weird.primary_key(WEIRD) == 'i"d'
    row = await weird.create(WEIRD, {COL: "a", "other": "o"})
    assert row == {'i"d': 1, COL: "a", "other": "o"}
    await weird.create(WEIRD, {COL: "b"})
    assert [r[COL] for r in await weird.find_many(WEIRD, {})] == ["a", "b"]
    assert (await weird.find_one(WEIRD, {COL: "b"}))['i"d'] == 2  # type: ignore[index]
    assert await weird.update(WEIRD, {COL: "a"}, {COL: "c"}) == [{'i"d': 1, COL: "c", "other": "o"}]
    assert await weird.delete(WEIRD, {COL: "c"}) == 1
    assert [r['i"d'] for r in await weird.find_many(WEIRD, {})] == [2]
    assert (await weird.create(WEIRD, {}))['i"d'] == 3  # DEFAULT VALUES


async def test_entity_steps_on_names_with_a_double_quote(weird: SQLiteDriver) -> None:
    await weird.create(WEIRD, {COL: "old", "other": "x"})

    async def fail(ctx: tf.WorkflowContext) -> None:
        raise RuntimeError("declined")

    def saga(final: Any, transactional: bool) -> tf.WorkflowDefinition:
        return (tf.workflow("w")
                .step(tf.create_entity_step("create", WEIRD, lambda ctx: {COL: "new"}, store_as="k"))
                .step(tf.update_entity_step("update", WEIRD, lambda ctx: {COL: "old"}, lambda ctx: {"other": "y"}))
                .step(tf.delete_entity_step("delete", WEIRD, lambda ctx: {"other": "y"}))
                .step("final", final)
                .transactional(transactional)
                .build())

    before = await weird.find_many(WEIRD, {})
    for transactional in (False, True):
        result = await tf.execute_workflow(weird, saga(fail, transactional))
        assert result.status == "failed" and result.rolled_back is transactional
        assert await weird.find_many(WEIRD, {}) == before  # compensated, or rolled back
    result = await tf.execute_workflow(weird, saga(lambda ctx: None, True))
    assert result.success and [r[COL] for r in await weird.find_many(WEIRD, {})] == ["new"]


@pytest.mark.parametrize("entity", ['we"ird"; DROP TABLE victim; --', 'we"', '"we""ird"', "victim; --"])
async def test_entity_injection_attempts_are_unknown_entities(weird: SQLiteDriver, entity: str) -> None:
    with pytest.raises(tf.adapters.UnknownEntityError):
        await weird.create(entity, {"x": 1})
    with pytest.raises(tf.adapters.UnknownEntityError):
        await weird.find_many(entity, {})


@pytest.mark.parametrize("column", ['co"l" = 1; DROP TABLE victim; --', 'co"', '"co""l"', "co"])
async def test_column_injection_attempts_are_unknown_columns(weird: SQLiteDriver, column: str) -> None:
    with pytest.raises(tf.adapters.UnknownColumnError):
        await weird.create(WEIRD, {column: 1})
    with pytest.raises(tf.adapters.UnknownColumnError):
        await weird.find_many(WEIRD, {column: 1})
    with pytest.raises(tf.adapters.UnknownColumnError):
        await weird.update(WEIRD, {}, {column: 1})
    with pytest.raises(tf.adapters.UnknownColumnError):
        await weird.delete(WEIRD, {column: 1})
    assert await weird.find_many(WEIRD, {}) == []
