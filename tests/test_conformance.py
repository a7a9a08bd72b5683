"""The adapter conformance kit, run against the adapters trioflow ships."""

from __future__ import annotations

from pathlib import Path

import trioflow as tf
from trioflow.testing import check_persistence_adapter


async def test_memory_adapter_conforms() -> None:
    stores: dict[str, tf.adapters.MemoryAdapter] = {}
    passed = await check_persistence_adapter(lambda key: stores.setdefault(key, tf.adapters.MemoryAdapter()))
    assert len(passed) == 9


async def test_sqlite_adapter_conforms(tmp_path: Path) -> None:
    passed = await check_persistence_adapter(lambda key: tf.adapters.SQLiteAdapter(tmp_path / f"{key}.db"))
    assert len(passed) == 9


async def test_the_kit_names_the_failing_check() -> None:
    class ForgetfulAdapter(tf.adapters.MemoryAdapter):
        async def resumable(self) -> list[tf.adapters.InstanceRecord]:
            return []

    stores: dict[str, tf.adapters.MemoryAdapter] = {}
    try:
        await check_persistence_adapter(lambda key: stores.setdefault(key, ForgetfulAdapter()))
    except AssertionError as exc:
        assert "check 'resumable_lists_pending_and_running' failed" in str(exc)
    else:
        raise AssertionError("a non-conforming adapter passed the kit")
