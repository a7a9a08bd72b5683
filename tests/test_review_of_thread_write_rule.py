"""From a re-review of 893f36c (thread-call tasks and TransactionOwnership) that found no bug:
guards of async branches, nested blocks and an entity step rolled back with a transactional run
(as at 21f7eb7), and of the rule for a given-up thread's writes (README, The engine)."""

from __future__ import annotations

from pathlib import Path
import sqlite3

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryDriver, SQLiteDriver
from thread_jobs import until


def _driver(kind: str, tmp_path: Path):
    if kind == "memory":
        return MemoryDriver()
    path = tmp_path / "biz.db"
    con = sqlite3.connect(path)
    con.executescript("CREATE TABLE orders (id INTEGER PRIMARY KEY, n INTEGER);"
                      "CREATE TABLE audit (id INTEGER PRIMARY KEY, n INTEGER);")
    con.commit(); con.close()
    return SQLiteDriver(path)


async def _close(driver) -> None:
    if hasattr(driver, "aclose"):
        await driver.aclose()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_guard_async_branches_nested_blocks_and_entity_step_roll_back(
        kind: str, tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Guard (holds at 21f7eb7 and 893f36c): a transactional run with two async branches, one
    of which rolls back its own nested block, then an entity step, then a failing step: every
    write is rolled back with the run, and nothing hangs."""
    driver = _driver(kind, tmp_path)

    async def a(ctx: tf.WorkflowContext) -> str:
        try:
            async with ctx.driver.transaction():
                await ctx.driver.create("orders", {"n": 1})
                raise LookupError
        except LookupError:
            pass
        async with trio.open_nursery() as n:
            n.start_soon(ctx.driver.create, "orders", {"n": 2})
        return "a"

    async def b(ctx: tf.WorkflowContext) -> str:
        async with ctx.driver.transaction():
            await ctx.driver.create("orders", {"n": 3})
        return "b"

    async def fail(ctx: tf.WorkflowContext) -> None:
        raise ValueError("boom")

    wf = (tf.workflow("w")
          .parallel("p", branches=[tf.branch("ba").step("a", a).build(), tf.branch("bb").step("b", b).build()])
          .step(tf.create_entity_step("e", "audit", lambda ctx: {"n": 9}))
          .step("fail", fail).transactional().build())
    try:
        async with tf.open_engine(driver=driver) as engine:
            engine.register(wf)
            ended = None
            with trio.move_on_after(30):
                ended = await engine.wait(await engine.start("w", {}))
        assert ended is not None
        assert (ended.status, ended.rolled_back) == ("failed", True)
        assert await driver.find_many("orders", {}) == []
        assert await driver.find_many("audit", {}) == []
    finally:
        await _close(driver)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_given_up_threads_in_block_write_rolls_back_with_run_and_later_write_commits(
        kind: str, tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """README: a nested block a from_thread task opened while the call was on is gone on in to
    its end, in the run's transaction; its writes after the block commit on their own."""
    driver = _driver(kind, tmp_path)
    gateway = trio.Event()
    in_block = trio.Event()
    done: list[str] = []

    def pay(ctx: tf.WorkflowContext) -> str:
        async def body() -> None:
            async with ctx.driver.transaction():
                await ctx.driver.create("orders", {"n": 1})
                in_block.set()
                with trio.move_on_after(30):
                    await gateway.wait()
                await ctx.driver.create("orders", {"n": 2})  # late, inside the block
            with trio.move_on_after(30) as g:
                await ctx.driver.create("audit", {"n": 3})  # late, after the block
            done.append("timeout" if g.cancelled_caught else "ok")
        trio.from_thread.run(body)
        return "paid"

    async def check(ctx: tf.WorkflowContext) -> None:
        gateway.set()
        raise ValueError("declined")

    wf = (tf.workflow("w")
          .step("pay", pay, timeout=0.2, catch=[tf.Catch(errors=[tf.StepTimeoutError], next="check")])
          .step("check", check).transactional().build())
    try:
        async with tf.open_engine(driver=driver) as engine:
            engine.register(wf)
            ended = None
            with trio.move_on_after(60):
                ended = await engine.wait(await engine.start("w", {}))
                await until(lambda: bool(done))
        assert ended is not None
        assert (ended.status, ended.rolled_back) == ("failed", True)
        assert done == ["ok"]
        assert await driver.find_many("orders", {}) == []
        assert [r["n"] for r in await driver.find_many("audit", {})] == [3]
    finally:
        await _close(driver)
