"""Driver transactions belong to the trio task tree, and an engine's tasks are spawned below the
task that opened it: a transaction that task held used to take in every instance's driver
writes, and its rollback undid them under instances stored as done (a review of b40aef6 found
it, with the ledger's deletes). The engine's tasks are kept apart now: their writes wait for
such a transaction to end, as other tasks' do, and are theirs alone. On both drivers, SQLite on
a real file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import SQLiteDriver
from trioflow.testing import open_test_engine

from test_entity_steps_once import shop_driver


class _CallerRollsBack(Exception):
    """Raised in the caller's transaction, to roll it back."""


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_instances_writes_are_not_part_of_a_transaction_the_engine_task_holds(
    autojump_clock: trio.testing.MockClock, kind: str, tmp_path: Path,
) -> None:
    driver: Any = shop_driver(kind, tmp_path)
    wf = tf.workflow("add").step(tf.create_entity_step("add", "product", lambda ctx: {"name": "pen", "stock": 1})).build()
    try:
        async with open_test_engine(driver=driver) as engine:
            engine.register(wf)
            with pytest.raises(_CallerRollsBack):
                async with driver.transaction():  # the caller's own, in the task holding the engine open
                    await driver.create("product", {"name": "caller's", "stock": 0})
                    iid = await engine.start("add")
                    await trio.sleep(5)  # the instance's write waits for this transaction to end
                    assert (await engine.get_instance(iid)).status == "running"  # type: ignore[union-attr]
                    raise _CallerRollsBack
            done = await engine.wait(iid)
            assert done.status == "completed"
            names = sorted(row["name"] for row in await driver.find_many("product", {}))
            assert names == ["book", "pen"]  # the caller's row rolled back, the instance's kept
    finally:
        if isinstance(driver, SQLiteDriver):
            await driver.aclose()
