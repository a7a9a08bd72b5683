"""A fixture for tests that run on every adapter trioflow ships (retention, listing), and the
helpers of tests on a test engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Adapter]:
    """Adapters on one storage, as a restart gets them: the same MemoryAdapter each call, or a
    new SQLiteAdapter on the same file."""
    if request.param == "memory":
        memory = MemoryAdapter()
        return lambda: memory
    return lambda: SQLiteAdapter(tmp_path / "flows.db")


Clock = Callable[[], float]


@asynccontextmanager
async def engine_on(adapter: Adapter, clock: Clock | None = None, **options: Any) -> AsyncIterator[tf.Engine]:
    """A test engine on ``adapter``, on the virtual wall clock (or ``clock``)."""
    async with open_test_engine(adapter=adapter, clock=clock or virtual_wall_clock(), **options) as engine:
        yield engine


def returning(value: Any) -> Any:
    """An async job that returns ``value``."""
    async def job(data: Any) -> Any:
        return value
    return job


async def finish(engine: tf.Engine, iid: str, limit: float = 10**6) -> tf.WorkflowInstance:
    """``engine.wait(iid)``, failing (at once, on the autojumping clock) instead of hanging."""
    with trio.fail_after(limit):
        return await engine.wait(iid)
