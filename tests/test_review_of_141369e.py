"""Review of 141369e (an engine's tasks are kept apart from driver transactions of the task
that opened it, ``adapters._driver.keep_apart`` on ``open_engine``'s ``beside`` nursery).

Every test here failed at 141369e and passed at its parent 58d148a (checked by making
``keep_apart`` a no-op); the commit that added this file refuses ``open_engine(driver=d)``
inside a transaction of ``d`` with an error that says so, which these tests accept. The README (Data drivers) now says of a transaction held by the task
that opened the engine: instances' driver writes wait for it to end, "so it must not wait for an
instance that writes through the driver". These tests follow that rule: their instances write
nothing through the driver. But leaving the engine block waits (up to 30 s, HOOK_TIMEOUT) for
``on_complete``/``on_failed`` hooks and async event callbacks, which run in the kept-apart
``beside`` nursery: one that writes through the driver waits for the caller's transaction, which
waits for the engine to close. After 30 s the engine cancels it and logs a generic warning
("end hooks or async event callbacks still running"); the hook's write is lost and nothing says
why. On both drivers, SQLite on a real file, on trio's MockClock."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryDriver, SQLiteDriver
from trioflow.testing import open_test_engine

SCHEMA = "CREATE TABLE audit (id INTEGER PRIMARY KEY, note TEXT);"


def _driver(kind: str, tmp_path: Path) -> Any:
    if kind == "memory":
        return MemoryDriver()
    path = tmp_path / "audit.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA)
    return SQLiteDriver(path)


async def _notes(driver: Any) -> list[str]:
    return sorted(row["note"] for row in await driver.find_many("audit", {}))


async def _no_driver(ctx: tf.WorkflowContext) -> int:
    return 1


async def _run_in_callers_transaction(driver: Any, setup: Any) -> BaseException | None:
    """Open the engine inside the caller's own transaction, run one instance that writes
    nothing through the driver to its end (waiting for it is allowed: README), leave the engine
    block, then commit. Returns what the block raised, if anything."""
    try:
        async with driver.transaction():
            async with open_test_engine(driver=driver) as engine:
                setup(engine)
                iid = await engine.start("quiet")
                assert (await engine.wait(iid)).status == "completed"
    except Exception as exc:  # a close that reports the deadlock is fine too
        return exc
    return None


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_on_complete_hook_that_writes_is_not_lost_when_the_engine_closes_inside_the_callers_transaction(
    autojump_clock: trio.testing.MockClock, kind: str, tmp_path: Path,
) -> None:
    """What the user relies on: README, Data drivers: the opener's transaction must not wait
    for an instance that writes through the driver (this one writes nothing), and README, hooks:
    leaving the engine block gives ``on_complete`` hooks up to 30 s to finish. An audit hook
    writes a row through the driver.

    Reproduction: ``async with driver.transaction(): async with open_test_engine(driver=d)``,
    start the instance, ``wait`` for it (completed), leave the block, commit.

    What happens: the hook runs in the kept-apart ``beside`` nursery
    (runtime/_engine.py:2362), so its ``driver.create`` waits for the caller's transaction
    (adapters/_driver.py ``TransactionOwnership.call`` -> ``self._lock``); the caller waits for
    the engine to close, which waits 30 s for the hook, then cancels it with a warning that
    does not name the transaction. The row is never written, and no error is raised. At
    58d148a the hook's write was part of the transaction and committed with it."""
    driver = _driver(kind, tmp_path)

    async def audit(result: Any) -> None:
        await driver.create("audit", {"note": "completed"})

    wf = tf.workflow("quiet").step("s", _no_driver).with_hooks(on_complete=audit).build()
    try:
        with trio.fail_after(120):
            raised = await _run_in_callers_transaction(driver, lambda engine: engine.register(wf))
            notes = await _notes(driver)
        assert notes == ["completed"] or (raised is not None and "transaction" in str(raised)), (
            f"the on_complete hook's write was silently lost (rows {notes}, raised {raised!r})")
    finally:
        if isinstance(driver, SQLiteDriver):
            await driver.aclose()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_async_event_callback_that_writes_is_not_lost_when_the_engine_closes_inside_the_callers_transaction(
    autojump_clock: trio.testing.MockClock, kind: str, tmp_path: Path,
) -> None:
    """What the user relies on: open_engine's docstring: async event callbacks, with the
    events queued for them, are given up to 30 s to finish as the engine closes ("an end stored
    as the engine closes reaches async callbacks"); README, Data drivers, forbids only waiting
    for an instance that writes through the driver (this one does not).

    Reproduction: as above, with ``engine.events.on("workflow.completed", cb)`` where ``cb``
    writes a row through the driver.

    What happens: the callback runs in the kept-apart ``beside`` nursery
    (``engine.events.attach(beside)``, runtime/_engine.py:2372), waits for the caller's
    transaction, is cancelled after 30 s of closing with a generic warning; the row is lost
    and nothing is raised. At 58d148a it was written inside the transaction and committed."""
    driver = _driver(kind, tmp_path)

    async def on_completed(event: Any) -> None:
        await driver.create("audit", {"note": event["event"]})

    wf = tf.workflow("quiet").step("s", _no_driver).build()

    def setup(engine: tf.Engine) -> None:
        engine.events.on("workflow.completed", on_completed)
        engine.register(wf)

    try:
        with trio.fail_after(120):
            raised = await _run_in_callers_transaction(driver, setup)
            notes = await _notes(driver)
        assert notes == ["workflow.completed"] or (raised is not None and "transaction" in str(raised)), (
            f"the async event callback's write was silently lost (rows {notes}, raised {raised!r})")
    finally:
        if isinstance(driver, SQLiteDriver):
            await driver.aclose()
