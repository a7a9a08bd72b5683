"""Transactions of a data driver belong to the task tree that opened them: a nested transaction
rolls back its own writes only, and an instance started from a transactional step is not inside
that step's transaction (issue 11 review findings). Every test runs on both drivers, SQLiteDriver
on a real file."""

from __future__ import annotations

import contextvars
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryDriver, SQLiteDriver

SCHEMA = """
CREATE TABLE orders (id INTEGER PRIMARY KEY, ref TEXT);
CREATE TABLE audit (id INTEGER PRIMARY KEY, note TEXT);
"""


class Boom(Exception):
    pass


@pytest.fixture(params=["memory", "sqlite"])
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryDriver()
        return
    path = tmp_path / "isolation.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA)
    sqlite_driver = SQLiteDriver(path)
    yield sqlite_driver
    await sqlite_driver.aclose()


async def refs(driver: Any) -> list[str]:
    return sorted(r["ref"] for r in await driver.find_many("orders", {}))


async def test_an_instance_started_from_a_transactional_step_is_not_inside_its_transaction(
    driver: Any, autojump_clock: trio.testing.MockClock,
) -> None:
    """Failed before the fix (and broke the ledger's isolation too). ``engine.start`` from a
    step of a transactional workflow spawns the child's actor from the step's task; trio copies
    the spawner's context, so the child inherits the parent's TransactionOwnership depth
    (adapters/_driver.py, a ContextVar) and writes inside the parent's open transaction without
    the lock. The parent then fails and rolls back: the child is stored "completed" but its row
    is gone. Ownership should follow the task tree (owner task and its nursery descendants),
    not a ContextVar that engine actors inherit from whoever called ``start``."""

    async def spawn_child(ctx: tf.WorkflowContext) -> str:
        engine: tf.Engine = ctx.resolve("box")["engine"]
        child = await engine.start("child", instance_id="child")
        await trio.sleep(1)  # the child runs meanwhile
        return child

    async def decline(ctx: tf.WorkflowContext) -> None:
        raise Boom("declined")

    box: dict[str, Any] = {}
    async with tf.open_engine(driver=driver, services={"box": box}) as engine:
        box["engine"] = engine
        engine.register(tf.workflow("child").step(tf.create_entity_step("order", "orders", lambda ctx: {"ref": "c"}))
                        .build())
        engine.register(tf.workflow("parent").step("spawn", spawn_child).step("pay", decline).transactional().build())
        parent = await engine.wait(await engine.start("parent"))
        child = await engine.wait("child")
    assert parent.status == "failed" and parent.rolled_back
    assert child.status == "completed"
    assert [r["ref"] for r in await driver.find_many("orders", {})] == ["c"], "the parent's rollback erased the child's row"


async def test_a_nested_transaction_rolled_back_in_one_branch_keeps_the_sibling_branchs_writes(
    driver: Any, autojump_clock: trio.testing.MockClock,
) -> None:
    """Failed before the fix ( README: transaction() "nests as savepoints" and parallel branches
    take part in the workflow's transaction). MemoryDriver's inner transaction snapshots *all*
    tables at its start and restores them on rollback, so a sibling branch's write made
    meanwhile (it is inside the same outer transaction, so it does not wait) is discarded too,
    while that branch reports success. (SQLiteDriver named both savepoints ``trioflow_2``.) Now
    the writer's call waits for the careful branch's nested block to end."""

    async def careful(ctx: tf.WorkflowContext) -> str:
        try:
            async with ctx.driver.transaction():
                await ctx.driver.create("audit", {"note": "tentative"})
                await trio.sleep(2)
                raise Boom("undo my own writes only")
        except Boom:
            return "rolled back its own"

    async def writer(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1)
        await ctx.driver.create("orders", {"ref": "sibling"})
        return "written"

    wf = (tf.workflow("w").parallel("p", branches=[tf.branch("x").step("careful", careful).build(),
                                                   tf.branch("y").step("writer", writer).build()])
          .transactional().build())
    result = await tf.execute_workflow(driver, wf)
    assert result.success
    assert [r["ref"] for r in await driver.find_many("orders", {})] == ["sibling"]


# -- the task tree, below the engine --------------------------------------------------------------


async def test_a_task_spawned_into_a_nursery_opened_outside_the_transaction_waits_for_it(
    driver: Any, autojump_clock: trio.testing.MockClock,
) -> None:
    """What an engine does with ``start``, in plain trio: the owner spawns a task into a nursery
    that another task opened. That task inherits the owner's context variables (they still
    reach it: only ownership stopped being one), yet is not in the owner's tree, so it waits
    and its write survives the owner's rollback."""
    log: list[str] = []
    seen = contextvars.ContextVar[str]("seen", default="unset")

    async def outsider() -> None:
        log.append(f"outsider sees {seen.get()}")
        await driver.create("orders", {"ref": "outsider"})
        log.append("outsider wrote")

    async def owner(elsewhere: trio.Nursery) -> None:
        seen.set("owner's value")
        with pytest.raises(Boom):
            async with driver.transaction():
                await driver.create("orders", {"ref": "owner"})
                elsewhere.start_soon(outsider)
                await trio.sleep(1)
                log.append("owner rolls back")
                raise Boom

    async with trio.open_nursery() as elsewhere:
        elsewhere.start_soon(owner, elsewhere)
    assert log == ["outsider sees owner's value", "owner rolls back", "outsider wrote"]
    assert await refs(driver) == ["outsider"]


async def test_a_descendant_spawned_before_the_transaction_opened_takes_part(driver: Any) -> None:
    """Ownership is the task tree, whenever the task was spawned: a child of the owner that is
    already running when the owner opens its transaction writes inside it (no deadlock on the
    owner's lock) and is rolled back with it."""
    opened, written = trio.Event(), trio.Event()

    async def child() -> None:
        await opened.wait()
        await driver.create("orders", {"ref": "child"})
        written.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(child)
        with pytest.raises(Boom):
            async with driver.transaction():
                opened.set()
                await written.wait()
                assert await refs(driver) == ["child"]
                raise Boom
    assert await refs(driver) == []


# -- nested transactions among the tasks of one transaction ------------------------------------------


async def test_a_sibling_plain_call_waits_for_a_nested_block_and_survives_its_rollback(
    driver: Any, autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    opened = trio.Event()

    async def careful() -> None:
        with pytest.raises(Boom):
            async with driver.transaction():
                await driver.create("orders", {"ref": "tentative"})
                opened.set()
                await trio.sleep(1)
                log.append("careful rolls back")
                raise Boom

    async def sibling() -> None:
        await opened.wait()
        await driver.create("orders", {"ref": "sibling"})
        log.append("sibling wrote")
        assert await driver.find_many("audit", {}) == []  # reads wait too

    async with driver.transaction():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(careful)
            nursery.start_soon(sibling)
    assert log == ["careful rolls back", "sibling wrote"]
    assert await refs(driver) == ["sibling"]


async def test_nested_in_nested_rolls_back_only_the_innermost_block(
    driver: Any, autojump_clock: trio.testing.MockClock,
) -> None:
    """Three levels in one branch, a sibling writing throughout: the innermost rollback discards
    its own row only; the middle block commits into the outer one, which commits."""
    opened = trio.Event()

    async def deep() -> None:
        async with driver.transaction():
            await driver.create("orders", {"ref": "level 2"})
            with pytest.raises(Boom):
                async with driver.transaction():
                    await driver.create("orders", {"ref": "level 3"})
                    opened.set()
                    await trio.sleep(1)
                    raise Boom
            await driver.create("orders", {"ref": "level 2 again"})

    async def sibling() -> None:
        await opened.wait()
        await driver.create("orders", {"ref": "sibling"})

    async with driver.transaction():
        await driver.create("orders", {"ref": "level 1"})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(deep)
            nursery.start_soon(sibling)
    assert await refs(driver) == ["level 1", "level 2", "level 2 again", "sibling"]


async def test_children_of_a_nested_blocks_holder_take_part_in_it(
    driver: Any, autojump_clock: trio.testing.MockClock,
) -> None:
    """The holder of a nested block spawns tasks that use the driver, one opening a block of its
    own: they are its descendants, so they get in (no deadlock), and its rollback discards
    their writes, while a sibling of the holder waits and keeps its own."""
    log: list[str] = []
    opened = trio.Event()

    async def child(ref: str) -> None:
        await driver.create("orders", {"ref": ref})

    async def child_with_a_block() -> None:
        async with driver.transaction():
            await driver.create("orders", {"ref": "grandchild block"})

    async def holder() -> None:
        with pytest.raises(Boom):
            async with driver.transaction():
                opened.set()
                async with trio.open_nursery() as children:
                    children.start_soon(child, "child 1")
                    children.start_soon(child, "child 2")
                    children.start_soon(child_with_a_block)
                assert await refs(driver) == ["child 1", "child 2", "grandchild block"]
                log.append("holder rolls back")
                raise Boom

    async def sibling() -> None:
        await opened.wait()
        await driver.create("orders", {"ref": "sibling"})
        log.append("sibling wrote")

    async with driver.transaction():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            nursery.start_soon(sibling)
    assert log == ["holder rolls back", "sibling wrote"]
    assert await refs(driver) == ["sibling"]


async def test_the_outer_owner_waits_while_a_branch_holds_a_nested_block(
    driver: Any, autojump_clock: trio.testing.MockClock,
) -> None:
    """The task that opened the outer transaction is not inside a branch's nested block: its
    calls (and a nested block of its own) wait for the branch's block to end."""
    log: list[str] = []
    opened = trio.Event()

    async def branch() -> None:
        async with driver.transaction():
            await driver.create("orders", {"ref": "branch"})
            opened.set()
            await trio.sleep(1)
            log.append("branch commits")

    async with driver.transaction():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(branch)
            await opened.wait()
            await driver.create("orders", {"ref": "owner"})
            log.append("owner wrote")
            async with driver.transaction():
                await driver.create("orders", {"ref": "owner's block"})
    assert log == ["branch commits", "owner wrote"]
    assert await refs(driver) == ["branch", "owner", "owner's block"]


async def test_a_task_cancelled_while_waiting_for_a_nested_block_leaves_the_driver_usable(
    driver: Any, autojump_clock: trio.testing.MockClock,
) -> None:
    opened = trio.Event()

    async def holder() -> None:
        async with driver.transaction():
            await driver.create("orders", {"ref": "holder"})
            opened.set()
            await trio.sleep(2)

    async def impatient() -> None:
        await opened.wait()
        with trio.move_on_after(1) as scope:
            async with driver.transaction():
                await driver.create("orders", {"ref": "never"})
        assert scope.cancelled_caught

    async with driver.transaction():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            nursery.start_soon(impatient)
        async with driver.transaction():
            await driver.create("orders", {"ref": "after"})
    await driver.create("orders", {"ref": "outside"})
    assert await refs(driver) == ["after", "holder", "outside"]


async def test_a_siblings_ledger_record_waits_for_a_nested_block_and_survives_its_rollback(
    driver: Any, autojump_clock: trio.testing.MockClock,
) -> None:
    """``record_run`` is a write like the others: a sibling's record waits for a nested block
    and survives its rollback."""
    opened = trio.Event()

    async def careful() -> None:
        with pytest.raises(Boom):
            async with driver.transaction():
                await driver.record_run("careful", b"gone")
                opened.set()
                await trio.sleep(1)
                raise Boom

    async def sibling() -> None:
        await opened.wait()
        await driver.record_run("sibling", b"kept")

    async with driver.transaction():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(careful)
            nursery.start_soon(sibling)
    assert await driver.find_run("careful") is None
    assert await driver.find_run("sibling") == b"kept"


async def test_a_nested_block_is_not_starved_by_a_siblings_stream_of_calls(tmp_path: Path) -> None:
    """SQLiteDriver's calls stay in progress across awaits, and a block opens only when none is.
    A sibling issuing one call after another (its next starts as its last ends, with no
    checkpoint between) would keep that count above zero for ever; a waiting opener holds new
    calls back instead, so it gets in after the call in progress."""
    path = tmp_path / "stream.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA)
    driver = SQLiteDriver(path)
    log: list[str] = []
    first = trio.Event()

    async def stream() -> None:
        for i in range(20):
            await driver.create("audit", {"note": str(i)})
            log.append(f"call {i}")
            first.set()

    async def opener() -> None:
        await first.wait()
        async with driver.transaction():
            log.append("block")

    async with driver.transaction():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream)
            nursery.start_soon(opener)
    await driver.aclose()
    assert log.index("block") < 5, log
