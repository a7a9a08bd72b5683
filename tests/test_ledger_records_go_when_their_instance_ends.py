"""A long-lived service running entity steps keeps flat storage: what an instance's runs record
in the driver's run ledger (an entry per entity-step execution and per compensation of one, and
a transactional run's end state) is deleted once the instance's end is stored, on both shipped
drivers (SQLite on a real file), including a child compensated as a unit after it completed.
(A long-lived-process review found ``MemoryDriver.ledger`` keeping 4 entries per pair of
instances run, purged or not; README said they stayed, "not deleted yet".) And a resume after
a crash between a transaction's commit and its stored end still finds the end state recorded
(tests/test_crash_run_hooks.py and the transactional tests cover that the record is used)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryDriver, SQLiteDriver
from trioflow.testing import open_test_engine, virtual_wall_clock


async def _ok(ctx: Any) -> int:
    return 1


async def _declined(ctx: Any) -> int:
    raise ValueError("card declined")


def _order(ctx: Any) -> dict[str, Any]:
    return {"id": ctx.input["k"], "status": "new"}


@pytest.fixture(params=["memory", "sqlite"])
def driver(request: Any, tmp_path: Path) -> Any:
    if request.param == "memory":
        return MemoryDriver({"orders": [], "bookings": []})
    path = tmp_path / "app.db"
    connection = sqlite3.connect(path)
    connection.executescript("CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT);"
                             "CREATE TABLE bookings (id INTEGER PRIMARY KEY, status TEXT);")
    connection.close()
    return SQLiteDriver(path)


def _ledger_size(driver: Any) -> int:
    if isinstance(driver, MemoryDriver):
        return len(driver.ledger)
    assert driver.path is not None
    with sqlite3.connect(driver.path) as connection:
        if not connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'trioflow_transactions'").fetchone():
            return 0
        count: int = connection.execute("SELECT count(*) FROM trioflow_transactions").fetchone()[0]
        return count


async def test_an_ended_instance_leaves_no_ledger_records(autojump_clock: trio.testing.MockClock, driver: Any) -> None:
    saga = tf.workflow("saga").step(tf.create_entity_step("reserve", "orders", _order)).step("pay", _declined).build()
    booking = (tf.workflow("booking").step(tf.create_entity_step("book", "bookings", _order))
               .step("confirm", _ok).transactional().build())
    try:
        async with open_test_engine(driver=driver, clock=virtual_wall_clock(), retain_finished=0) as engine:
            engine.register(saga)
            engine.register(booking)
            for k in range(1, 41):
                assert (await engine.wait(await engine.start("saga", {"k": k}))).status == "failed"
                assert (await engine.wait(await engine.start("booking", {"k": k}))).status == "completed"
            await trio.sleep(5)  # (the deletes run beside the runs, as they end)
            assert _ledger_size(driver) == 0
            assert await driver.find_many("orders", {}) == []  # (each reservation was compensated)
            assert len(await driver.find_many("bookings", {})) == 40
    finally:
        if isinstance(driver, SQLiteDriver):
            await driver.aclose()


async def test_a_child_compensated_as_a_unit_leaves_no_ledger_records(
    autojump_clock: trio.testing.MockClock, driver: Any,
) -> None:
    """The child completes (its entity step's record goes); its parent then fails and compensates
    it as a unit: the compensation records anew, and that record goes as the child's end,
    ``compensated``, is stored."""
    child = tf.workflow("reserve").step(tf.create_entity_step("reserve", "orders", _order)).build()
    parent = tf.workflow("order").child("hold", workflow="reserve", input=lambda ctx: ctx.input) \
        .step("pay", _declined).build()
    try:
        async with open_test_engine(driver=driver, clock=virtual_wall_clock()) as engine:
            engine.register(child)
            engine.register(parent)
            done = await engine.wait(await engine.start("order", {"k": 7}))
            assert done.status == "failed" and len(done.children) == 1
            await trio.sleep(5)
            assert (await engine.wait(done.children[0])).status == "compensated"
            assert await driver.find_many("orders", {}) == []
            assert _ledger_size(driver) == 0
    finally:
        if isinstance(driver, SQLiteDriver):
            await driver.aclose()
