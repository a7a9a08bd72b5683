"""From an adversarial review of 467c630 (wake times through checked_time, MemoryAdapter's
wake entry for a row that starts waiting again at the time it had, SQLite's checkpoint naming
an unknown instance first, due() refusing a limit that is not an int >= 0), driving the
bundled adapters directly. Each failed until the commit that added this file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trioflow.adapters import DatabaseError, MemoryAdapter, SQLiteAdapter


async def _opened(adapter: Any) -> Any:
    adapter.use_clock(lambda: 1000.0)
    await adapter.open()
    return adapter


async def test_memory_due_hands_back_an_instance_id_reused_in_another_workflow_once_and_never_when_skipped() -> None:
    """A user (or the engine's retention) deletes a finished instance ``x`` of workflow ``a``
    that had waited until t=5, and starts a new instance under the same id ``x`` in workflow
    ``b``, waiting until the same t=5 (a fixed ``until=``, or ``inf``: every receive without
    timeout stores ``inf``). docs/adapters.md / adapters/_protocol.py: ``due()`` hands back the
    waiting instances (each once), "leaving out the workflows ``skip_workflows`` names", and
    ``next_wake(skip_workflows=...)`` is ``None`` when every waiting instance is left out.
    SQLiteAdapter does exactly that.
    Was (MemoryAdapter): ``due(10, 10)`` is ``['x', 'x']``, ``due(10, 10,
    skip_workflows=['b'])`` is ``['x']`` and ``next_wake(skip_workflows=['b'])`` is ``5.0``: the
    first incarnation's wake-heap entry ``(5.0, order, 'x')`` in workflow ``a``'s heap was never
    popped, and ``_live_head`` takes it for live since the row now stored under ``x`` waits at
    5.0 too (it checks neither the entry's order nor its workflow)."""
    adapter = await _opened(MemoryAdapter())
    try:
        await adapter.create("x", "a", "running", start=b"s", header=b"h", wake_at=5.0)
        await adapter.checkpoint("x", "completed", b"h", [], first_seq=0)  # its wait ended: it finished
        assert await adapter.delete("x")
        await adapter.create("x", "b", "running", start=b"s", header=b"h", wake_at=5.0)
        assert [s.instance_id for s in await adapter.due(10.0, 10)] == ["x"]
        assert [s.instance_id for s in await adapter.due(10.0, 10, skip_workflows=["b"])] == []
        assert await adapter.next_wake(skip_workflows=["b"]) is None
    finally:
        await adapter.close()


@pytest.mark.parametrize("call", ["create", "checkpoint"])
async def test_sqlite_refuses_a_wake_at_that_is_not_a_number_with_database_error(tmp_path: Path, call: str) -> None:
    """A user's wrapper writes to SQLiteAdapter and catches its refusals as docs/adapters.md
    says they come: failures that may pass raise ``DatabaseUnavailableError``, "the others
    raise ``DatabaseError``". Until 467c630 a ``wake_at`` that is not a number raised
    ``DatabaseError`` from both ``create`` and ``checkpoint``.
    Was: a bare ``StorageError`` (adapters/_arguments.py ``checked_time``, now shared with
    MemoryAdapter), which ``except DatabaseError`` no longer catches. (Low severity; the limit
    refusals of ``list_instances``/``purge``/``due`` on SQLite raise a bare ``StorageError`` too.)"""
    adapter = await _opened(SQLiteAdapter(tmp_path / "wakes.db"))
    try:
        with pytest.raises(DatabaseError):
            if call == "create":
                await adapter.create("i", "a", "running", start=b"s", header=b"h", wake_at="soon")
            else:
                await adapter.create("i", "a", "running", start=b"s", header=b"h")
                await adapter.checkpoint("i", "running", b"h", [], first_seq=0, wake_at="soon")
    finally:
        await adapter.close()
