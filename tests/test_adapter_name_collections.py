"""A single name where an adapter takes a collection of names (``due``'s ``exclude`` and
``skip_workflows``, ``next_wake``'s ``skip_workflows``) is refused, naming the parameter: taken as
a collection, a ``str`` is its characters, and would leave out nothing the caller named.
(Failed until the commit that added this file: both bundled adapters took the characters.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import trioflow as tf


def _memory(_: Path) -> Any:
    return tf.adapters.MemoryAdapter()


def _sqlite(tmp_path: Path) -> Any:
    return tf.adapters.SQLiteAdapter(tmp_path / "names.db")


@asynccontextmanager
async def _opened(make: Callable[[Path], Any], tmp_path: Path) -> AsyncIterator[Any]:
    adapter = make(tmp_path)
    await adapter.open()
    try:
        yield adapter
    finally:
        await adapter.close()


@pytest.mark.parametrize("make", [_memory, _sqlite], ids=["memory", "sqlite"])
async def test_a_single_name_for_a_collection_of_names_is_refused(make: Callable[[Path], Any], tmp_path: Path) -> None:
    async with _opened(make, tmp_path) as adapter:
        await adapter.create("w-1", "orders", "pending", start=b"start", header=b"header", wake_at=10.0)
        with pytest.raises(tf.StorageError, match=r"due's exclude must be a collection of names.*\['w-1'\]"):
            await adapter.due(100.0, 10, exclude="w-1")
        with pytest.raises(tf.StorageError, match=r"due's skip_workflows must be a collection of names"):
            await adapter.due(100.0, 10, skip_workflows="orders")
        with pytest.raises(tf.StorageError, match=r"next_wake's skip_workflows must be a collection of names"):
            await adapter.next_wake(skip_workflows="orders")
        # As a list, each does what it says.
        assert [row.instance_id for row in await adapter.due(100.0, 10)] == ["w-1"]
        assert await adapter.due(100.0, 10, exclude=["w-1"]) == []
        assert await adapter.due(100.0, 10, skip_workflows=["orders"]) == []
        assert await adapter.next_wake(skip_workflows=["orders"]) is None
        assert await adapter.next_wake() == 10.0
