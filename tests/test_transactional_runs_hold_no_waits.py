"""A transactional run keeps its driver transaction open from its first step to its end, and
while it is open every other driver user waits, and (on one SQLite file) so does the engine's
own storage. Two setups that turned that into stalls are refused up front, naming what to
change (the newcomer review of December 5th):

- a ``wait`` or ``receive`` step in a transactional workflow (``build()``): the transaction
  stayed open for the whole wait (a manager's approval: days), and the wait was not durable
  anyway (a transactional run's checkpoints are written at its commit; a crash reruns it);
- a transactional workflow registered on an engine whose ``SQLiteDriver`` works on the
  adapter's own file: the run held SQLite's write lock, and ``start`` of any other instance
  failed after ``busy_timeout`` with ``DatabaseUnavailableError``.

A workflow that is not transactional still works on one file, and a transactional one on
another file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow.testing import open_test_engine


async def _noop(ctx: tf.WorkflowContext) -> int:
    return 1


@pytest.mark.parametrize("kind", ["wait", "receive"])
def test_a_transactional_workflow_with_a_wait_or_a_receive_is_refused_at_build(kind: str) -> None:
    builder = tf.workflow("tx").step("a", _noop)
    builder = builder.wait("pause", seconds=1) if kind == "wait" else builder.receive("pause", signal="go")
    with pytest.raises(tf.DefinitionError) as caught:
        builder.transactional().build()
    assert "step 'pause'" in str(caught.value) and "transactional" in str(caught.value), caught.value
    builder.transactional(False).build()  # (not transactional: fine)


def test_one_inside_a_parallel_branch_is_refused_too() -> None:
    with pytest.raises(tf.DefinitionError, match="step 'pause'"):
        (tf.workflow("tx").parallel("p", branches=[tf.branch("b").wait("pause", seconds=1).build()])
         .transactional().build())


def _orders(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")


def _transactional() -> tf.WorkflowDefinition:
    return (tf.workflow("tx").step(tf.create_entity_step("mk", "orders", lambda ctx: {"id": ctx.input}))
            .transactional().build())


async def test_a_transactional_workflow_on_a_driver_sharing_the_engines_sqlite_file_is_refused(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    _orders(path)
    driver = tf.adapters.SQLiteDriver(str(path))
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(path), driver=driver) as engine:
        with pytest.raises(tf.InvalidArgumentError) as caught:
            engine.register(_transactional())
        assert "shop.db" in str(caught.value) and "another file" in str(caught.value), caught.value
        engine.register(tf.workflow("plain").step(tf.create_entity_step("mk", "orders", lambda ctx: {"id": ctx.input}))
                        .build())
        done = await engine.wait(await engine.start("plain", 7))
        assert done.status == "completed", done.error
    await driver.aclose()


async def test_a_transactional_workflow_on_another_file_runs(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    _orders(tmp_path / "shop.db")
    driver = tf.adapters.SQLiteDriver(tmp_path / "shop.db")
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(tmp_path / "engine.db"), driver=driver) as engine:
        engine.register(_transactional())
        done = await engine.wait(await engine.start("tx", 7))
        assert done.status == "completed", done.error
    await driver.aclose()
