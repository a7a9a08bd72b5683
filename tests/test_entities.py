"""Data drivers, entity steps and transactional runs (seed 000; issue 6), on both drivers."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._codec import decode_stored
from trioflow.adapters import DriverError, MemoryDriver, SQLiteDriver

SCHEMA = """
CREATE TABLE product (id INTEGER PRIMARY KEY, name TEXT NOT NULL, stock INTEGER NOT NULL);
CREATE TABLE "order" (id INTEGER PRIMARY KEY, product_id INTEGER, quantity INTEGER,
                      status TEXT NOT NULL DEFAULT 'pending', payment_id TEXT);
CREATE TABLE temp (id INTEGER PRIMARY KEY, note TEXT);
"""
PRODUCTS = [{"id": 1, "name": "book", "stock": 5}, {"id": 2, "name": "pen", "stock": 50}]
TEMP = [{"id": 7, "note": "scratch"}]


@pytest.fixture(params=["memory", "sqlite"])
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryDriver({"product": [dict(p) for p in PRODUCTS], "order": [], "temp": [dict(t) for t in TEMP]})
        return
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA)
        conn.executemany("INSERT INTO product VALUES (:id, :name, :stock)", PRODUCTS)
        conn.executemany("INSERT INTO temp VALUES (:id, :note)", TEMP)
    sqlite_driver = SQLiteDriver(path)
    yield sqlite_driver
    await sqlite_driver.aclose()


async def contents(driver: Any) -> dict[str, list[dict[str, Any]]]:
    return {e: await driver.find_many(e, {}) for e in ("product", "order", "temp")}


def without_nulls(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if v is not None} for r in rows]


# -- drivers ----------------------------------------------------------------------------------


async def test_driver_crud(driver: Any) -> None:
    order = await driver.create("order", {"product_id": 1, "quantity": 2, "status": "pending"})
    assert order["id"] == 1 and order["quantity"] == 2
    assert (await driver.find_one("order", {"id": 1}))["product_id"] == 1
    assert await driver.find_one("order", {"id": 99}) is None
    updated = await driver.update("product", {"name": "book"}, {"stock": 3})
    assert [(r["id"], r["stock"]) for r in updated] == [(1, 3)]
    assert await driver.delete("temp", {"id": 7}) == 1 and await driver.find_many("temp", {}) == []
    assert await driver.primary_key("product") == "id"


async def test_an_update_may_not_change_a_rows_key(driver: Any) -> None:
    # Entity steps find (and compensate) rows by their key: a changed key left the memory
    # table keyed by the old one, and the SQLite driver failed with an IndexError.
    before = await contents(driver)
    with pytest.raises(DriverError, match="may not change a row's primary key 'id'"):
        await driver.update("product", {"id": 1}, {"id": 10})
    assert await contents(driver) == before
    same = await driver.update("product", {"id": 1}, {"id": 1, "stock": 4})  # the whole row: key unchanged
    assert [(r["id"], r["stock"]) for r in same] == [(1, 4)]


async def test_a_rolled_back_transaction_leaves_no_trace(driver: Any) -> None:
    before = await contents(driver)
    with pytest.raises(RuntimeError):
        async with driver.transaction():
            await driver.create("order", {"product_id": 1, "quantity": 1, "status": "pending"})
            await driver.update("product", {"id": 1}, {"stock": 0})
            await driver.delete("temp", {"id": 7})
            raise RuntimeError("abort")
    assert await contents(driver) == before
    async with driver.transaction():
        await driver.update("product", {"id": 2}, {"stock": 49})
        with pytest.raises(RuntimeError):
            async with driver.transaction():  # a savepoint: only the inner block rolls back
                await driver.update("product", {"id": 1}, {"stock": 0})
                raise RuntimeError("inner")
    assert [p["stock"] for p in await driver.find_many("product", {})] == [5, 49]


async def test_another_tasks_write_waits_for_an_open_transaction_and_survives_its_rollback(driver: Any) -> None:
    log: list[str] = []
    inside = trio.Event()

    async def owner() -> None:
        with pytest.raises(RuntimeError):
            async with driver.transaction():
                await driver.create("temp", {"id": 9, "note": "mine"})
                inside.set()
                await trio.sleep(0.05)
                log.append("owner rolls back")
                raise RuntimeError("roll back")

    async def other_writer() -> None:  # started from outside the transaction: not part of it
        await driver.create("temp", {"id": 8, "note": "other"})
        log.append("other wrote")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(owner)
        await inside.wait()
        nursery.start_soon(other_writer)
    assert log == ["owner rolls back", "other wrote"]
    assert [t["id"] for t in await driver.find_many("temp", {})] == [7, 8]


async def test_tasks_spawned_inside_a_transaction_take_part_in_it(driver: Any) -> None:
    with pytest.raises(RuntimeError):
        async with driver.transaction():
            async with trio.open_nursery() as nursery:  # like the branches of a parallel step
                for i in (10, 11):
                    nursery.start_soon(driver.create, "temp", {"id": i, "note": "branch"})
            assert len(await driver.find_many("temp", {})) == 3
            raise RuntimeError("roll back")
    assert [t["id"] for t in await driver.find_many("temp", {})] == [7]


async def test_sqlite_driver_checks_names_against_the_real_schema(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA)
    d = SQLiteDriver(path)
    with pytest.raises(tf.adapters.UnknownEntityError, match=r"no table 'orders' in the database \(tables: order, product, temp\)"):
        await d.create("orders", {"quantity": 1})
    with pytest.raises(tf.adapters.UnknownColumnError, match="table 'order' has no column 'qty'"):
        await d.create("order", {"product_id": 1, "qty": 1})
    with pytest.raises(tf.adapters.UnknownColumnError, match="has no column 'nme'"):
        await d.find_many("product", {"nme": "x"})
    nasty = "x'); DROP TABLE product; --"
    await d.create("temp", {"note": nasty})
    assert (await d.find_one("temp", {"note": nasty}))["note"] == nasty  # bound, never spliced
    await d.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute('SELECT count(*) FROM "order"').fetchone()[0] == 0  # nothing half-written
        assert conn.execute("SELECT count(*) FROM product").fetchone()[0] == 0


async def test_a_connection_from_another_thread_gets_a_clear_error(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    with pytest.raises(tf.adapters.DriverError, match="check_same_thread=False"):
        await SQLiteDriver(conn).find_many("t", {})
    conn.close()


# -- entity steps -----------------------------------------------------------------------------


async def fail(ctx: tf.WorkflowContext) -> None:
    raise RuntimeError("payment declined")


def entity_saga(final: Any = fail) -> tf.WorkflowDefinition:
    return (tf.workflow("shop")
            .step(tf.create_entity_step("create-order", "order",
                                        lambda ctx: {"product_id": 1, "quantity": 2, "status": "pending"},
                                        store_as="order_id"))
            .step(tf.update_entity_step("take-stock", "product", lambda ctx: {"id": 1}, lambda ctx: {"stock": 3}))
            .step(tf.delete_entity_step("cleanup", "temp", lambda ctx: {"note": "scratch"}))
            .step("finish", final)
            .build())


async def test_entity_steps_are_compensated_by_delete_restore_and_recreate(driver: Any) -> None:
    before = await contents(driver)
    result = await tf.execute_workflow(driver, entity_saga())
    assert result.failed_step == "finish"
    assert result.compensated_steps == ("cleanup", "take-stock", "create-order")
    assert without_nulls((await contents(driver))["order"]) == []
    assert await contents(driver) == before  # temp row re-created with its id, stock restored


async def test_entity_steps_record_what_compensation_needs(driver: Any) -> None:
    async def ok(ctx: tf.WorkflowContext) -> dict[str, Any]:
        return {"order": ctx.get("order_id"), "steps": sorted(ctx.steps)}

    result = await tf.execute_workflow(driver, entity_saga(ok))
    assert result.success and result.output == {"order": 1, "steps": ["cleanup", "create-order", "take-stock"]}
    assert result.data["order_id"] == 1
    product = await driver.find_one("product", {"id": 1})
    assert product["stock"] == 3 and await driver.find_many("temp", {}) == []


async def test_a_where_clause_that_matches_nothing_fails_the_step_naming_it(driver: Any) -> None:
    wf = tf.workflow("w").step(tf.update_entity_step("bump", "product", lambda ctx: {"id": 42},
                                                     lambda ctx: {"stock": 1})).build()
    result = await tf.execute_workflow(driver, wf)
    assert isinstance(result.error, tf.adapters.EntityNotFoundError)
    assert "step 'bump': no 'product' row matches {'id': 42}" in str(result.error)


async def test_an_entity_step_without_a_driver_says_so() -> None:
    result = await tf.execute_workflow(None, entity_saga())
    assert isinstance(result.error, tf.adapters.DriverError) and "needs a data driver" in str(result.error)


# -- transactional runs ------------------------------------------------------------------------


def transactional_checkout(refunds: list[str], final: Any = fail) -> tf.WorkflowDefinition:
    async def charge(ctx: tf.WorkflowContext) -> dict[str, str]:
        return {"charge_id": "ch-1"}

    async def refund(ctx: tf.WorkflowContext, charge: dict[str, str]) -> None:
        refunds.append(charge["charge_id"])  # a side effect outside the database

    return (tf.workflow("checkout")
            .step(tf.create_entity_step("create-order", "order",
                                        lambda ctx: {"product_id": 1, "quantity": 1, "status": "pending"}))
            .step("charge", charge, refund)
            .step(tf.update_entity_step("take-stock", "product", lambda ctx: {"id": 1}, lambda ctx: {"stock": 4}))
            .step("finish", final)
            .transactional()
            .build())


async def test_a_failed_transactional_run_rolls_back_and_still_compensates_other_side_effects(driver: Any) -> None:
    before = await contents(driver)
    refunds: list[str] = []
    result = await tf.execute_workflow(driver, transactional_checkout(refunds))
    assert result.rolled_back and result.status == "failed"
    assert await contents(driver) == before  # the rollback undid every driver write
    assert result.compensated_steps == ("charge",) and refunds == ["ch-1"]  # entity steps: skipped


async def test_a_successful_transactional_run_commits(driver: Any) -> None:
    async def ok(ctx: tf.WorkflowContext) -> str:
        return "done"

    result = await tf.execute_workflow(driver, transactional_checkout([], ok))
    assert result.success and not result.rolled_back
    assert len(await driver.find_many("order", {})) == 1
    assert (await driver.find_one("product", {"id": 1}))["stock"] == 4


async def test_run_workflow_with_use_transaction(driver: Any) -> None:
    steps = [tf.create_entity_step("c", "order", lambda ctx: {"product_id": 2, "quantity": 1, "status": "x"}),
             tf.step("boom", fail)]
    result = await tf.run_workflow(driver, "quick", steps, use_transaction=True)
    assert result.rolled_back and await driver.find_many("order", {}) == []


# -- crash and resume --------------------------------------------------------------------------


async def test_entity_compensation_is_right_after_a_crash_and_resume(driver: Any) -> None:
    adapter = tf.adapters.MemoryAdapter()
    before = await contents(driver)
    release = trio.Event()

    async def wait_then_fail(ctx: tf.WorkflowContext) -> None:
        await release.wait()
        raise RuntimeError("declined after the restart")

    wf = entity_saga(wait_then_fail)
    async with tf.open_engine(adapter=adapter, driver=driver) as engine:
        engine.register(wf)
        iid = await engine.start("shop")
        with trio.move_on_after(1):
            await engine.wait(iid)  # parked in "finish": the engine stops with it running
    assert (await adapter.load(iid)).status == "running"  # type: ignore[union-attr]
    release.set()
    async with tf.open_engine(adapter=adapter, driver=driver) as engine:
        engine.register(wf)
        inst = await engine.wait(iid)
    assert inst.status == "failed" and inst.compensated_steps == ("cleanup", "take-stock", "create-order")
    assert await contents(driver) == before


async def test_a_transactional_run_interrupted_by_a_crash_starts_afresh(driver: Any) -> None:
    adapter = tf.adapters.MemoryAdapter()
    release = trio.Event()

    async def wait_then_finish(ctx: tf.WorkflowContext) -> str:
        await release.wait()
        return "done"

    wf = transactional_checkout([], wait_then_finish)
    async with tf.open_engine(adapter=adapter, driver=driver) as engine:
        engine.register(wf)
        iid = await engine.start("checkout")
        with trio.move_on_after(1):
            await engine.wait(iid)
    assert await driver.find_many("order", {}) == []  # the transaction died with the engine
    stored = await adapter.load(iid)
    assert stored is not None and len(decode_stored(stored).records) == 0
    release.set()
    async with tf.open_engine(adapter=adapter, driver=driver) as engine:
        engine.register(wf)
        inst = await engine.wait(iid)
    assert inst.status == "completed" and len(await driver.find_many("order", {})) == 1
