"""Adversarial review of entity steps and transactional workflows under cancels, timeouts,
engine close and reopen, parallel branches and map items.

The first test fails on the code reviewed: a ``cancel()`` that says yes while a resumed
transactional instance asks the driver's run ledger whether it committed before a crash is
dropped when the answer is yes. The others pin behaviour that holds."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._snapshot import TERMINAL, Status
from trioflow.adapters import MemoryAdapter, MemoryDriver, SQLiteDriver
from trioflow.testing import open_test_engine


# -- helpers -------------------------------------------------------------------------------------


class HangOnTerminalSave(MemoryAdapter):
    """While ``hang`` is set a terminal snapshot is never stored: closing the engine then is a
    crash right after the driver's COMMIT and before the instance's end is stored."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = True
        self.reached = trio.Event()

    async def checkpoint(self, instance_id: str, status: Status, header: bytes, records: Any, **kw: Any) -> None:
        if self.hang and status in TERMINAL:
            self.reached.set()
            await trio.sleep_forever()
        await super().checkpoint(instance_id, status, header, records, **kw)


class SlowRunLookup(MemoryDriver):
    """The lookup of a run's record (not an entity step's) waits for ``gate`` once set: a
    database busy for a moment, answering in the end."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: trio.Event | None = None
        self.asked = trio.Event()

    async def find_run(self, key: str) -> bytes | None:
        if not key.startswith("trioflow.entity/"):
            self.asked.set()
            if self.gate is not None:
                await self.gate.wait()
        return await super().find_run(key)


class Recording(MemoryDriver):
    """Logs every write (to see which compensations wrote)."""

    def __init__(self, entities: Any = None) -> None:
        super().__init__(entities)
        self.writes: list[tuple[Any, ...]] = []

    async def create(self, entity: str, data: Any) -> dict[str, Any]:
        self.writes.append(("create", entity, dict(data)))
        return await super().create(entity, data)

    async def update(self, entity: str, where: Any, data: Any) -> list[dict[str, Any]]:
        self.writes.append(("update", entity, dict(where), dict(data)))
        return await super().update(entity, where, data)

    async def delete(self, entity: str, where: Any) -> int:
        self.writes.append(("delete", entity, dict(where)))
        return await super().delete(entity, where)


def order_flow() -> tf.WorkflowDefinition:
    return (tf.workflow("order")
            .step(tf.create_entity_step("create-order", "orders", lambda ctx: {"ref": ctx.input["ref"]},
                                        store_as="order_id"))
            .transactional()
            .build())


# -- 1. a cancel that said yes during a successful ledger lookup ---------------------------------


async def test_a_cancel_that_said_yes_during_a_ledger_lookup_that_finds_the_commit_is_honoured(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A transactional instance committed its order row, then the engine stopped before its end
    was stored (a crash between COMMIT and the terminal snapshot). The next engine takes it up
    and asks the driver's run ledger whether it committed; the database is busy for a moment.
    Meanwhile the caller runs ``engine.cancel(iid)``, which returns ``True``.

    A user relies on README's ``cancel()``: it "returns True once that decision is stored (a
    process killed right after still compensates the instance)", and on the neighbouring cases:
    a cancel that says yes while the transaction commits is honoured after it, and one that says
    yes during a ledger lookup that *fails* ends the instance ``cancelled``. So the instance
    should end ``cancelled`` with its committed order row compensated (deleted), or ``cancel()``
    should have said ``False``.

    Instead ``cancel()`` says ``True`` and the instance ends ``completed``, its row kept:
    ``_forward`` (actors/_instance.py, ``if await committed_before_a_crash(run): return
    _COMPLETED``) never looks at ``run.cancel_requested`` after a lookup that found the commit.
    """
    adapter, driver = HangOnTerminalSave(), SlowRunLookup()
    wf = order_flow()
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("order", {"ref": "r1"})
        with trio.fail_after(100):
            await adapter.reached.wait()
    adapter.hang = False
    assert [r["ref"] for r in await driver.find_many("orders", {})] == ["r1"], "the transaction committed"

    driver.gate = trio.Event()
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        with trio.fail_after(100):
            await driver.asked.wait()
            said = await engine.cancel(iid)
            driver.gate.set()
            inst = await engine.wait(iid)
    rows = await driver.find_many("orders", {})
    assert not (said and inst.status == "completed"), (
        f"cancel() said {said} but the instance ended {inst.status} (compensated {inst.compensated_steps},"
        f" rows left {rows})")
    if said:
        assert inst.status == "cancelled" and rows == [], (inst.status, rows)


# -- pins that hold ------------------------------------------------------------------------------


def saga_flow(*, timeout: float | None = None, slow_refund: bool = False,
              log: list[str] | None = None) -> tf.WorkflowDefinition:
    """A plain step with a compensation (a refund through a payment service), then entity steps
    of each kind, then a slow step; transactional."""
    calls = log if log is not None else []

    async def charge(ctx: tf.WorkflowContext) -> str:
        calls.append("charge")
        return "c"

    async def refund(ctx: tf.WorkflowContext, out: Any) -> None:
        calls.append("refund")
        if slow_refund:
            await trio.sleep(50)

    async def slow(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(100)
        return 1

    b = (tf.workflow("w")
         .step("charge", charge, compensate=refund)
         .step(tf.create_entity_step("a", "orders", lambda ctx: {"ref": "x"}, store_as="oid"))
         .step(tf.update_entity_step("u", "stock", lambda ctx: {"id": 1}, lambda ctx: {"n": 4}))
         .step(tf.delete_entity_step("d", "stock", lambda ctx: {"id": 2}))
         .step("slow", slow)
         .transactional())
    if timeout is not None:
        b = b.timeout(timeout)
    return b.build()


STOCK = {"stock": [{"id": 1, "n": 5}, {"id": 2, "n": 9}], "orders": []}
STOCK_AFTER = {"stock": {1: {"id": 1, "n": 5}, 2: {"id": 2, "n": 9}}, "orders": {}}


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_cancel_or_timeout_mid_transaction_rolls_back_and_compensates_only_the_plain_step(
    autojump_clock: trio.testing.MockClock, how: str,
) -> None:
    driver, log = Recording(STOCK), []
    async with open_test_engine(driver=driver, adapter=MemoryAdapter()) as engine:
        engine.register(saga_flow(timeout=10 if how == "timeout" else None, log=log))
        iid = await engine.start("w")
        await trio.sleep(5)
        if how == "cancel":
            assert await engine.cancel(iid)
        with trio.fail_after(1000):
            inst = await engine.wait(iid)
    assert inst.status == ("cancelled" if how == "cancel" else "timed_out") and inst.rolled_back
    assert inst.compensated_steps == ("charge",)
    assert log == ["charge", "refund"]
    assert len(driver.writes) == 3, f"no entity compensation wrote after the rollback: {driver.writes}"
    assert driver.tables == STOCK_AFTER and driver.ledger == {}


async def test_engine_closed_during_the_plain_compensation_after_a_rollback_does_not_undo_entity_steps_on_reopen(
    autojump_clock: trio.testing.MockClock,
) -> None:
    driver, adapter, log = Recording(STOCK), MemoryAdapter(), []
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(saga_flow(slow_refund=True, log=log))
        iid = await engine.start("w")
        await trio.sleep(5)
        assert await engine.cancel(iid)
        await trio.sleep(20)  # closes while the refund runs
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(saga_flow(log=log))
        with trio.fail_after(1000):
            inst = await engine.wait(iid)
    assert inst.status == "cancelled" and inst.rolled_back and inst.compensated_steps == ("charge",)
    assert len(driver.writes) == 3, driver.writes
    assert driver.tables == STOCK_AFTER


def fanout_flow(shape: str) -> tf.WorkflowDefinition:
    async def boom(ctx: tf.WorkflowContext) -> None:
        await trio.sleep(2)
        raise ValueError("boom")

    def create(n: str) -> tf.TaskStep:
        return tf.create_entity_step(n, "orders", lambda ctx: {"ref": n if ctx.item is None else f"{n}{ctx.item}"})

    b = tf.workflow("w")
    if shape == "parallel":
        b = b.parallel("p", branches=[tf.branch("x").step(create("a")).step(create("a2")).build(),
                                      tf.branch("y").step(create("b")).step("boom", boom).build()])
    else:
        b = b.map("mp", items=lambda ctx: [1, 2, 3], max_concurrency=2,
                  branch=tf.branch("one").step(create("m")).step("boom", boom).build())
    return b.transactional().build()


@pytest.mark.parametrize("shape", ["parallel", "map"])
async def test_a_failing_branch_or_item_rolls_back_every_entity_write_of_the_fanout(
    autojump_clock: trio.testing.MockClock, shape: str,
) -> None:
    driver = MemoryDriver()
    async with open_test_engine(driver=driver, adapter=MemoryAdapter()) as engine:
        engine.register(fanout_flow(shape))
        with trio.fail_after(100):
            inst = await engine.wait(await engine.start("w"))
    assert inst.status == "failed" and inst.rolled_back and inst.compensated_steps == ()
    assert driver.tables.get("orders", {}) == {} and driver.ledger == {}


async def test_engine_closed_mid_fanout_transaction_on_sqlite_applies_once_after_reopen(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    path = tmp_path / "user.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, ref TEXT NOT NULL)")
    gate = trio.Event()

    async def hold(ctx: tf.WorkflowContext) -> int:
        await gate.wait()
        return 1

    def flow() -> tf.WorkflowDefinition:
        return (tf.workflow("w")
                .map("mp", items=lambda ctx: [1, 2, 3],
                     branch=tf.branch("one").step(tf.create_entity_step(
                         "m", "orders", lambda ctx: {"ref": f"m{ctx.item}"})).build())
                .parallel("p", branches=[
                    tf.branch("x").step(tf.create_entity_step("a", "orders", lambda ctx: {"ref": "a"})).build(),
                    tf.branch("y").step(tf.create_entity_step("b", "orders", lambda ctx: {"ref": "b"})).build()])
                .step("hold", hold)
                .transactional().build())

    adapter = MemoryAdapter()
    driver = SQLiteDriver(path)
    try:
        async with open_test_engine(driver=driver, adapter=adapter) as engine:
            engine.register(flow())
            iid = await engine.start("w")
            await trio.sleep(5)  # closes while "hold" waits, the transaction open
        assert await driver.find_many("orders", {}) == []
    finally:
        await driver.aclose()
    gate.set()
    driver = SQLiteDriver(path)
    try:
        async with open_test_engine(driver=driver, adapter=adapter) as engine:
            engine.register(flow())
            with trio.fail_after(100):
                inst = await engine.wait(iid)
        rows = sorted(r["ref"] for r in await driver.find_many("orders", {}))
    finally:
        await driver.aclose()
    assert inst.status == "completed" and not inst.rolled_back
    assert rows == ["a", "b", "m1", "m2", "m3"]
