"""MemoryDriver's transaction blocks keep an undo log of what they change (not a copy of every
table): checked against a driver that copies everything at each block, as it did before, over
random runs of writes in nested blocks that commit, roll back, or fail to."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

import trioflow as tf
from trioflow.adapters import DriverError

_Copy = tuple[Any, dict[str, int], dict[str, bytes]]


class _Copying(tf.adapters.MemoryDriver):
    """The reference: each block saves a deep copy of everything, and a rollback puts it back."""

    def _log(self) -> None:  # type: ignore[override]
        return None

    async def _save(self, level: int) -> _Copy:  # type: ignore[override]
        return copy.deepcopy(self.tables), dict(self._next_id), dict(self.ledger)

    async def _keep(self, level: int, saved: _Copy) -> None:  # type: ignore[override]
        pass

    async def _restore(self, level: int, saved: _Copy) -> None:  # type: ignore[override]
        self.tables, self._next_id, self.ledger = copy.deepcopy(saved)


class _Fail(Exception):
    pass


async def _op(driver: tf.adapters.MemoryDriver, rng: random.Random, depth: int) -> None:
    entity = rng.choice(["a", "b", "c"])
    kind = rng.random()
    try:
        if kind < 0.3:
            data: dict[str, Any] = {"v": rng.randrange(4), "tags": [rng.randrange(3)]}
            if rng.random() < 0.3:
                data["id"] = rng.choice([1, 2, 3, 7, "x"])
            await driver.create(entity, data)
        elif kind < 0.5:
            await driver.update(entity, {"v": rng.randrange(4)}, {"v": rng.randrange(4), "tags": [rng.randrange(3)]})
        elif kind < 0.6:
            await driver.delete(entity, {"v": rng.randrange(4)})
        elif kind < 0.7 and depth:
            await driver.record_run(rng.choice("pqr"), bytes([rng.randrange(256)]))
        elif kind < 0.75:
            await driver.forget_runs([rng.choice("pqr")])
        elif kind < 0.8:
            await driver.find_many(rng.choice(["d", "e"]), {})  # (makes the table)
        elif depth < 4:
            try:
                async with driver.transaction():
                    for _ in range(rng.randrange(5)):
                        await _op(driver, rng, depth + 1)
                    if rng.random() < 0.4:
                        raise _Fail
            except _Fail:
                pass
    except DriverError:  # (a create of an id there already)
        pass


def _state(driver: tf.adapters.MemoryDriver) -> Any:
    return driver.tables, driver._next_id, driver.ledger


@pytest.mark.parametrize("seed", range(40))
async def test_undo_logs_restore_what_copies_would(seed: int) -> None:
    logged, copying = tf.adapters.MemoryDriver(), _Copying()
    for driver in (logged, copying):
        rng = random.Random(seed)
        for _ in range(30):
            await _op(driver, rng, 0)
    assert _state(logged) == _state(copying)
    assert logged._undo == []


async def test_a_rollback_that_fails_halfway_leaves_no_log_to_write_to() -> None:
    """A subclass whose outermost rollback raises before the driver's: its block's log is left
    behind, and is neither written to by later calls outside a transaction nor read by the
    next transaction, which starts its own."""

    class RollbackFails(tf.adapters.MemoryDriver):
        async def _restore(self, level: int, saved: Any) -> None:
            if level == 1:
                raise DriverError("rollback failed")
            await super()._restore(level, saved)

    driver = RollbackFails()
    with pytest.raises(DriverError):
        async with driver.transaction():
            await driver.create("a", {"v": 1})
            raise _Fail
    left = dict(driver._undo[0])
    await driver.create("a", {"v": 2})
    assert driver._undo[0] == left  # (no transaction is open: nothing logged)
    async with driver.transaction():
        assert driver._undo == [{}]
        with pytest.raises(_Fail):
            async with driver.transaction():
                await driver.create("a", {"v": 3})
                raise _Fail
    assert await driver.find_many("a", {}) == [{"v": 1, "id": 1}, {"v": 2, "id": 2}]
