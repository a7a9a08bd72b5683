"""From an adversarial review of waiting instances in the bundled adapters (MemoryAdapter,
SQLiteAdapter) against docs/adapters.md: a hypothesis state machine (tests/wakes_machine.py)
drives both adapters and a plain model of the contract with random creates, checkpoints
(wake_at, consumed, notify), signals, deletes, purges and due() looks, and compares
due/next_wake/resumable/load/signals and listings after every step (and MemoryAdapter's wake
heaps, waiting counts and finish order). Each discrepancy it found is an explicit test below,
each failing until the commit that added this file; the machine itself is kept as a guard."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from wakes_machine import WakesMachine


def test_adapters_agree_with_the_contract_on_waiting_instances() -> None:
    """Guard: random sequences of the waiting-instance calls give the same answers on
    MemoryAdapter, SQLiteAdapter and a model of docs/adapters.md."""
    run_state_machine_as_test(WakesMachine, settings=settings(
        max_examples=120, stateful_step_count=15, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


async def _opened(adapter: Any) -> Any:
    adapter.use_clock(lambda: 1000.0)
    await adapter.open()
    return adapter


async def test_memory_a_finished_instance_checkpointed_back_to_waiting_at_the_same_time_is_due() -> None:
    """A user's repair script (or an adapter wrapper replaying writes) checkpoints an instance
    that was stored finished with a ``wake_at`` back to ``pending`` with that same ``wake_at``.
    The contract (docs/adapters.md, ``checkpoint``: "replace status, header and wake_at";
    ``due``/``next_wake``: the waiting pending/running instances) says it now waits: it is left
    out of ``resumable()``, ``next_wake()`` names its time and ``due()`` hands it back, as
    SQLiteAdapter does.
    Was (MemoryAdapter): ``next_wake()`` is ``None`` and ``due()`` never hands it back: the
    checkpoint counts the row as waiting but pushes no wake-heap entry because its wake time
    did not change, and the entry it had was dropped by a look made while it was finished. The
    instance is neither resumable (it has a wake_at) nor ever woken: stuck for good."""
    adapter = await _opened(MemoryAdapter())
    try:
        await adapter.create("i0", "a", "completed", start=b"s", header=b"h0", wake_at=0.0)
        await adapter.next_wake()  # a look while it is finished (the engine's waker looks often)
        await adapter.checkpoint("i0", "pending", b"h1", [], first_seq=0, wake_at=0.0)
        assert [s.instance_id for s in await adapter.resumable()] == []
        assert await adapter.next_wake() == 0.0
        assert [s.instance_id for s in await adapter.due(10.0, 10)] == ["i0"]
    finally:
        await adapter.close()


async def test_sqlite_a_checkpoint_consuming_signals_of_an_instance_not_stored_raises_unknown_instance(
    tmp_path: Path,
) -> None:
    """A caller checkpoints an instance that is not stored (deleted meanwhile, or a wrong id),
    naming signals its receive step consumed. docs/adapters.md: a checkpoint "for an instance
    that is not stored raises UnknownInstanceError"; MemoryAdapter does.
    Was (SQLiteAdapter): ``CheckpointConflictError`` ("not all of them are pending"): the
    consumed signals are counted before the instance is looked up (_sqlite.py
    ``_checkpoint_one``), so the caller takes a missing instance for a repeated or lost write
    (the engine reads a conflict as "re-read the row and compare")."""
    adapter = await _opened(SQLiteAdapter(tmp_path / "wakes.db"))
    try:
        with pytest.raises(tf.UnknownInstanceError):
            await adapter.checkpoint("gone", "running", b"h", [], first_seq=0, consumed=[1])
    finally:
        await adapter.close()


async def test_sqlite_due_with_a_negative_limit_hands_back_no_more_than_it(tmp_path: Path) -> None:
    """A user pages through what is due by hand (``engine.adapter.due(now, limit)``) and
    computes ``limit`` as "room left", which can go below zero. ``due`` promises "at most
    ``limit`` of them" (adapters/_protocol.py); the bundled adapters refuse a negative limit in
    ``list_instances`` and ``purge`` precisely because "-1 means no limit to SQLite"
    (adapters/_arguments.py), and MemoryAdapter's ``due`` hands back nothing.
    Was (SQLiteAdapter): ``due(before, -1)`` hands back every due instance (``LIMIT -1``),
    as ``int(limit)`` is passed straight to SQL; a float limit is truncated likewise."""
    adapter = await _opened(SQLiteAdapter(tmp_path / "wakes.db"))
    try:
        for k in range(3):
            await adapter.create(f"i{k}", "a", "pending", start=b"s", header=b"h", wake_at=float(k))
        try:
            due = await adapter.due(math.inf, -1)
        except tf.StorageError:
            return  # refused, as list_instances and purge refuse it: fine
        assert due == [], f"due(inf, -1) handed back {[s.instance_id for s in due]}"
    finally:
        await adapter.close()


async def test_sqlite_stores_a_wake_time_given_as_a_large_int(tmp_path: Path) -> None:
    """A user stores a delayed start or a timer far in the future with an int of seconds
    (``wake_at=2**63``, e.g. a "never" sentinel computed in integer nanoseconds and divided with
    ``//``). docs/adapters.md refuses a ``wake_at`` "when it is not a number or NaN"; an int is
    a number, and MemoryAdapter stores it (``next_wake()`` names it).
    Was (SQLiteAdapter): ``create`` fails with ``DatabaseError('SQLite create failed:
    Python int too large to convert to SQLite INTEGER')`` after the op reached the writer
    (the same in ``checkpoint``): ``_check_wake_at`` lets it through, and sqlite3 cannot bind
    it. Converting it with ``float()`` (as ``due`` does with ``before``) would store it."""
    adapter = await _opened(SQLiteAdapter(tmp_path / "wakes.db"))
    try:
        assert await adapter.create("i0", "a", "pending", start=b"s", header=b"h", wake_at=2**63)
        assert await adapter.next_wake() == float(2**63)
    finally:
        await adapter.close()
