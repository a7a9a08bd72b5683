"""A fixture for tests that run on every adapter trioflow ships (retention, listing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Adapter]:
    """Adapters on one storage, as a restart gets them: the same MemoryAdapter each call, or a
    new SQLiteAdapter on the same file."""
    if request.param == "memory":
        memory = MemoryAdapter()
        return lambda: memory
    return lambda: SQLiteAdapter(tmp_path / "flows.db")
