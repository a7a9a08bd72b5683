"""A signal sent with an idempotency key to an instance not running here is stored, and the
instance's row read back for its wake, in one adapter call (``send_keyed_signal_and_load``), as
an unkeyed one is with ``send_signal_and_load``: one storage round trip fewer per keyed signal.
What a key means is unchanged (stored once; a retry of a pending one hands it over, of a
consumed one or to an ended instance returns), a row that a run's end may have made stale is
read again, and an adapter subclass that changes ``send_keyed_signal``, ``send_signal`` or
``load`` alone keeps seeing every call. On trio's autojumping MockClock.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter, StoredInstance
from trioflow.adapters._protocol import sends_keyed_and_loads
from trioflow.testing import check_persistence_adapter, open_test_engine, virtual_wall_clock
from trioflow.testing._crashes import _CrashingAdapter

from test_signal_with_row import SlowFirstAnswer, calls_of_a_signal_to_a_running_instance, resumed_past_a_slow_answer


class _Counts:
    """Counts the calls the engine makes of the four; each defined in the class that mixes it in
    first, as an adapter written with ``send_keyed_signal_and_load`` defines them all."""

    calls: collections.Counter[str]

    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        self.calls["send_signal"] += 1
        seq: int | None = await super().send_signal(instance_id, name, payload)  # type: ignore[misc]
        return seq

    async def load(self, instance_id: str) -> StoredInstance | None:
        self.calls["load"] += 1
        row: StoredInstance | None = await super().load(instance_id)  # type: ignore[misc]
        return row

    async def send_keyed_signal(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool]:
        self.calls["send_keyed_signal"] += 1
        answer: tuple[int | None, bool] = await super().send_keyed_signal(  # type: ignore[misc]
            instance_id, name, payload, key)
        return answer

    async def send_keyed_signal_and_load(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool, StoredInstance | None]:
        self.calls["send_keyed_signal_and_load"] += 1
        answer: tuple[int | None, bool, StoredInstance | None] = await super().send_keyed_signal_and_load(  # type: ignore[misc]
            instance_id, name, payload, key)
        return answer


class CountedMemory(_Counts, MemoryAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.calls = collections.Counter()


class CountedSQLite(_Counts, SQLiteAdapter):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls = collections.Counter()


@pytest.fixture(params=["memory", "sqlite"])
def counted(request: pytest.FixtureRequest, tmp_path: Path) -> CountedMemory | CountedSQLite:
    return CountedMemory() if request.param == "memory" else CountedSQLite(tmp_path / "s.db")


def _receives(n: int) -> tf.WorkflowDefinition:
    builder = tf.workflow("w")
    for i in range(n):
        builder.receive(f"r{i}", signal="go")
    return builder.build()


@asynccontextmanager
async def _parked(adapter: Any, receives: int = 1) -> AsyncIterator[tuple[tf.Engine, str]]:
    """An engine on ``adapter`` and an instance of :func:`_receives` waiting out of memory."""
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(_receives(receives))
        iid = await engine.start("w")
        await trio.sleep(10)  # a receive with no timeout waits out of memory
        assert iid not in engine._live
        yield engine, iid


async def test_a_keyed_signal_to_a_parked_instance_stores_and_reads_its_row_in_one_call(
    autojump_clock: trio.testing.MockClock, counted: CountedMemory | CountedSQLite,
) -> None:
    async with _parked(counted) as (engine, iid):
        counted.calls.clear()
        await engine.signal(iid, "go", {"by": "ann"}, idempotency_key="evt-1")
        done = await engine.wait(iid)
        calls = dict(counted.calls)
    assert (done.status, done.output) == ("completed", {"by": "ann"})
    assert calls == {"send_keyed_signal_and_load": 1}, (
        f"the row came with the keyed signal: no other store, and no read of it again: {calls}")


async def test_a_keyed_signal_to_a_running_instance_reads_no_row(
    autojump_clock: trio.testing.MockClock, counted: CountedMemory | CountedSQLite,
) -> None:
    calls = await calls_of_a_signal_to_a_running_instance(counted, key="evt-1")
    assert calls == {"send_keyed_signal": 1}, f"a keyed signal to a run in memory needs no row: {calls}"


async def test_what_a_key_means_is_kept_on_the_combined_path(
    autojump_clock: trio.testing.MockClock, counted: CountedMemory | CountedSQLite,
) -> None:
    """A copy of a keyed signal sent to a parked instance is stored once and taken once; once
    consumed, or once the instance has ended, a copy returns and a new key to an ended instance
    is refused, as with ``send_keyed_signal`` alone."""
    async with _parked(counted, receives=2) as (engine, iid):
        await engine.signal(iid, "go", "a", idempotency_key="evt-a")
        await trio.sleep(10)  # r0 took "a", r1 waits out of memory
        assert iid not in engine._live
        await engine.signal(iid, "go", "a again", idempotency_key="evt-a")  # consumed: stores nothing
        await trio.sleep(10)
        assert iid not in engine._live, "a copy of a consumed signal must not wake the instance"
        await engine.signal(iid, "go", "b", idempotency_key="evt-b")
        done = await engine.wait(iid)
        await engine.signal(iid, "go", "b again", idempotency_key="evt-b")  # ended, key known: returns
        with pytest.raises(tf.InstanceNotLiveError):
            await engine.signal(iid, "go", "c", idempotency_key="evt-c")
    assert done.status == "completed"
    assert [done.step_results[f"r{i}"].output for i in range(2)] == ["a", "b"]
    assert counted.calls["send_keyed_signal_and_load"] >= 3


async def test_a_row_read_with_a_keyed_signal_that_runs_have_since_moved_past_is_not_resumed_from(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """tests/test_signal_with_row.py's test of that name, every signal keyed: resumed from the
    row read with "a", which "b" and "c" have moved the instance past while its answer was slow,
    r1 would take "a" a second time."""
    adapter = SlowFirstAnswer()
    assert sends_keyed_and_loads(adapter)
    await resumed_past_a_slow_answer(adapter, keyed=True)


class _RefusesKeyed(MemoryAdapter):
    """Overrides ``send_keyed_signal`` alone (a store that refuses keyed signals for now)."""

    async def send_keyed_signal(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool]:
        raise tf.StorageError("keyed signals are refused here")


class _SlowLoad(MemoryAdapter):
    async def load(self, instance_id: str) -> StoredInstance | None:
        await trio.sleep(3)
        return await super().load(instance_id)


class _OwnSend(MemoryAdapter):
    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        return await super().send_signal(instance_id, name, payload)


class _KeyedAlone:
    """Has ``send_keyed_signal`` but not the combined call: an adapter written before it."""

    def __init__(self) -> None:
        self.inner = MemoryAdapter()

    def __getattr__(self, name: str) -> Any:
        if name == "send_keyed_signal_and_load":
            raise AttributeError(name)
        return getattr(self.inner, name)


class _Delegating:
    """Hands everything over to a MemoryAdapter (as test wrappers and proxies do)."""

    def __init__(self) -> None:
        self.inner = MemoryAdapter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize(("adapter", "combined"), [
    (MemoryAdapter(), True), (CountedMemory(), True), (SlowFirstAnswer(), True), (_Delegating(), True),
    (_RefusesKeyed(), False), (_SlowLoad(), False), (_OwnSend(), False), (_KeyedAlone(), False), (object(), False),
], ids=lambda value: type(value).__name__ if not isinstance(value, bool) else str(value))
def test_the_engine_uses_the_combined_call_only_where_it_replaces_no_override(adapter: Any, combined: bool) -> None:
    assert sends_keyed_and_loads(adapter) is combined


def test_the_sqlite_adapter_has_the_combined_call(tmp_path: Path) -> None:
    assert sends_keyed_and_loads(SQLiteAdapter(tmp_path / "s.db"))


async def test_a_subclass_that_overrides_send_keyed_signal_sees_keyed_signals_to_parked_instances(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The combined call it did not override would store the signal past it."""
    async with _parked(_RefusesKeyed()) as (engine, iid):
        with pytest.raises(tf.StorageError, match="refused here"):
            await engine.signal(iid, "go", idempotency_key="evt-1")
        assert await engine.adapter.signals(iid) == []


async def test_an_adapter_without_the_combined_call_stores_keyed_signals_as_before(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _parked(_KeyedAlone()) as (engine, iid):
        await engine.signal(iid, "go", "a", idempotency_key="evt-1")
        await engine.signal(iid, "go", "a again", idempotency_key="evt-1")
        done = await engine.wait(iid)
    assert (done.status, done.output) == ("completed", "a")


async def test_the_crash_explorers_wrapper_hands_the_combined_call_over_or_makes_it_of_two() -> None:
    """Past an inner adapter that has it, or, where it would bypass an override, as
    ``send_keyed_signal`` then ``load``; not offered where the inner adapter has none."""
    wrapped = _CrashingAdapter(MemoryAdapter(), None)
    await wrapped.inner.create("i", "w", "running", start=b"s", header=b"h")
    seq, seen, row = await wrapped.send_keyed_signal_and_load("i", "go", b"p", "k")
    assert isinstance(seq, int) and seen is False and row is not None and [q for q, _, _ in row.signals] == [seq]
    assert await wrapped.send_keyed_signal_and_load("i", "go", b"p", "k") == (seq, True, None)
    refusing = _CrashingAdapter(_RefusesKeyed(), None)
    await refusing.inner.create("i", "w", "running", start=b"s", header=b"h")
    with pytest.raises(tf.StorageError, match="refused here"):
        await refusing.send_keyed_signal_and_load("i", "go", b"p", "k")
    assert not sends_keyed_and_loads(_CrashingAdapter(_KeyedAlone(), None))  # type: ignore[arg-type]


async def test_the_kit_fails_a_combined_call_that_returns_a_row_for_a_copy() -> None:
    """Only a signal stored now comes back with a row: a copy stores nothing to wake for."""

    class RowForCopies(MemoryAdapter):
        async def send_keyed_signal_and_load(
            self, instance_id: str, name: str, payload: bytes, key: str,
        ) -> tuple[int | None, bool, StoredInstance | None]:
            seq, seen, row = await super().send_keyed_signal_and_load(instance_id, name, payload, key)
            return seq, seen, row if row is not None or seq is None else await self.load(instance_id)

    stores: dict[str, MemoryAdapter] = {}
    with pytest.raises(AssertionError, match="check 'keyed_signal_and_load_is_one_call' failed"):
        await check_persistence_adapter(lambda key: stores.setdefault(key, RowForCopies()))
