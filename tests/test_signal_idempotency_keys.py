"""``engine.signal(..., idempotency_key=)``: a signal stored once per instance and key.

A payment provider delivers its webhook again when it gets no answer in time, and a caller
whose ``signal()`` raised after the write (a lost answer, a cancellation, a restart) sends it
again: without a key, the second copy waits in the inbox for the next receive of that name (a
second payment taken for one). DBOS's ``send`` takes an idempotency key for the same reason.
Keys are kept as long as the instance is stored (consumed signals' too) and go with it."""

from __future__ import annotations

import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow.testing import open_test_engine

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _payments(receives: int) -> tf.WorkflowDefinition:
    """Takes up to ``receives`` "paid" signals, each waited for at most 10 minutes."""
    builder = tf.workflow("payments")
    for i in range(receives):
        builder.receive(f"r{i}", signal="paid", timeout=600,
                        catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="end")])
    return builder.succeed("end").build()


def _taken(instance: tf.WorkflowInstance) -> list[Any]:
    return [r.output for r in instance.history if r.step_name.startswith("r") and r.status == "completed"]


async def _count_keys(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return int(con.execute("SELECT count(*) FROM trioflow_signal_keys").fetchone()[0])


@pytest.fixture(params=["memory", "sqlite"])
def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> tf.adapters.Adapter:
    if request.param == "memory":
        return tf.adapters.MemoryAdapter()
    return tf.adapters.SQLiteAdapter(tmp_path / "flows.db")


async def test_a_webhook_delivered_twice_is_taken_once(
        autojump_clock: trio.testing.MockClock, adapter: tf.adapters.Adapter) -> None:
    """The same key twice, the instance waiting on its receive: one payment taken, the next
    receive gets the next distinct signal, not the copy."""
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_payments(3))
        iid = await engine.start("payments", None)
        await trio.sleep(5)
        await engine.signal(iid, "paid", {"charge": "ch_1"}, idempotency_key="evt_1")
        await engine.signal(iid, "paid", {"charge": "ch_1"}, idempotency_key="evt_1")
        await trio.sleep(5)
        await engine.signal(iid, "paid", {"charge": "ch_2"}, idempotency_key="evt_2")
        done = await engine.wait(iid)
    assert _taken(done) == [{"charge": "ch_1"}, {"charge": "ch_2"}]


async def test_a_copy_sent_before_the_receive_runs_is_not_kept(
        autojump_clock: trio.testing.MockClock, adapter: tf.adapters.Adapter) -> None:
    """Signals sent while the instance waits to start are kept in its inbox: a copy of one is
    not kept beside it, and a signal without a key is kept as it always is."""
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_payments(4))
        iid = await engine.start("payments", None, delay=60)
        for key in ("a", "a", "b", "a", None, "b"):
            await engine.signal(iid, "paid", key, idempotency_key=key)
        pending = await adapter.signals(iid)  # type: ignore[attr-defined]
        assert [bytes(p) for _, _, p in pending] == [b"\xa1a", b"\xa1b", b"\xc0"]
        done = await engine.wait(iid)
    assert _taken(done) == ["a", "b", None]


async def test_a_retry_after_the_instance_ended_returns_and_a_new_key_is_refused(
        autojump_clock: trio.testing.MockClock, adapter: tf.adapters.Adapter) -> None:
    """The retry of a signal stored before the instance ended is not an error (it was stored,
    and taken); a signal with a key never seen is refused as every late signal is."""
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_payments(1))
        iid = await engine.start("payments", None)
        await engine.signal(iid, "paid", 1, idempotency_key="evt_1")
        assert (await engine.wait(iid)).status == "completed"
        await engine.signal(iid, "paid", 1, idempotency_key="evt_1")
        with pytest.raises(tf.InstanceNotLiveError):
            await engine.signal(iid, "paid", 2, idempotency_key="evt_2")
        with pytest.raises(tf.UnknownInstanceError):
            await engine.signal("nobody", "paid", 2, idempotency_key="evt_1")


async def test_a_key_is_the_instance_s_own(autojump_clock: trio.testing.MockClock,
                                            adapter: tf.adapters.Adapter) -> None:
    """Two orders paid by one provider event id each take their signal."""
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_payments(1))
        first = await engine.start("payments", None)
        second = await engine.start("payments", None)
        await engine.signal(first, "paid", "one", idempotency_key="evt")
        await engine.signal(second, "paid", "two", idempotency_key="evt")
        assert _taken(await engine.wait(first)) == ["one"]
        assert _taken(await engine.wait(second)) == ["two"]


@pytest.mark.parametrize("key", ["", 7, b"evt", "\ud800"])
async def test_a_bad_key_is_refused_and_nothing_is_stored(
        autojump_clock: trio.testing.MockClock, adapter: tf.adapters.Adapter, key: Any) -> None:
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_payments(1))
        iid = await engine.start("payments", None, delay=60)
        with pytest.raises(tf.InvalidArgumentError, match="idempotency_key"):
            await engine.signal(iid, "paid", 1, idempotency_key=key)
        assert await adapter.signals(iid) == []  # type: ignore[attr-defined]


async def test_an_adapter_that_cannot_keep_keys_refuses_keyed_signals(autojump_clock: trio.testing.MockClock) -> None:
    """A subclass that changes ``send_signal`` (to count) keeps seeing every signal: keyed ones,
    which it would not see, are refused with a StorageError naming what is missing; nothing is
    stored, and signals without a key go on working."""
    class Counting(tf.adapters.MemoryAdapter):
        sent = 0

        async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
            Counting.sent += 1
            return await super().send_signal(instance_id, name, payload)

    adapter = Counting()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_payments(1))
        iid = await engine.start("payments", None, delay=60)
        with pytest.raises(tf.StorageError, match="send_keyed_signal"):
            await engine.signal(iid, "paid", 1, idempotency_key="evt")
        assert await adapter.signals(iid) == []
        await engine.signal(iid, "paid", 2)
        assert _taken(await engine.wait(iid)) == [2]
    assert Counting.sent == 1


def test_keys_outlive_the_engine_that_stored_them(tmp_path: Path) -> None:
    """A webhook acknowledged by one process is delivered again to the next (the provider had
    no answer before the restart): it is not stored twice."""
    db = tmp_path / "flows.db"

    async def first() -> str:
        async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
            engine.register(_payments(2))
            iid = await engine.start("payments", None)
            await engine.signal(iid, "paid", "one", idempotency_key="evt_1")
            await trio.sleep(5)
            return iid

    async def second(iid: str) -> tf.WorkflowInstance:
        async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
            engine.register(_payments(2))
            await engine.signal(iid, "paid", "one", idempotency_key="evt_1")
            return await engine.wait(iid)

    iid = trio.run(first, clock=trio.testing.MockClock(autojump_threshold=0))
    done = trio.run(second, iid, clock=trio.testing.MockClock(autojump_threshold=0))
    assert _taken(done) == ["one"]  # the second receive timed out: no copy was kept


async def test_a_deleted_instance_s_keys_go_with_it(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """An id reused after its instance was purged takes a signal whatever key it comes with,
    also when the rows were deleted by a release from before keys (a trigger in the file does it)."""
    db = tmp_path / "flows.db"
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(_payments(1))
        for iid in ("order-1", "order-2"):
            await engine.start("payments", None, instance_id=iid)
            await engine.signal(iid, "paid", 1, idempotency_key="evt")
            await engine.wait(iid)
        assert await engine.purge(older_than=0) == 2
    assert await _count_keys(db) == 0
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(_payments(1))
        await engine.start("payments", None, instance_id="order-1")
        await engine.signal("order-1", "paid", 2, idempotency_key="evt")
        assert _taken(await engine.wait("order-1")) == [2]
    assert await _count_keys(db) == 1
    with sqlite3.connect(db) as con:  # as an earlier release deletes a row
        for sql in ("DELETE FROM trioflow_signals WHERE instance_id = 'order-1'",
                    "DELETE FROM trioflow_records WHERE instance_id = 'order-1'",
                    "DELETE FROM trioflow_instances WHERE instance_id = 'order-1'"):
            con.execute(sql)
    assert await _count_keys(db) == 0


def test_a_database_written_by_an_earlier_release_takes_keyed_signals(tmp_path: Path) -> None:
    """A file written by fd148ba (before keys), with an instance waiting on its second receive:
    opened by this release, a keyed signal sent twice is taken once."""
    sys.path.insert(0, str(FIXTURES))
    import review_formats2_workflows as w

    db = tmp_path / "old.db"
    shutil.copy(FIXTURES / "review_formats2_fd148ba.db", db)
    with sqlite3.connect(db) as con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
    assert "trioflow_signal_keys" not in tables

    async def main() -> tuple[tf.WorkflowInstance, list[Any]]:
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db),
                                  clock=lambda: w.T0 + w.MADE_AT + trio.current_time()) as engine:
            for d in w.definitions(True):
                engine.register(d)
            await engine.signal("sig2-1", "go", "evt-9", idempotency_key="evt-9")
            await engine.signal("sig2-1", "go", "evt-9", idempotency_key="evt-9")
            done = await engine.wait("sig2-1")
            await engine.signal("sig2-1", "go", "evt-9", idempotency_key="evt-9")  # ended: no error
            return done, await engine.adapter.signals("sig2-1")  # type: ignore[attr-defined]

    done, left = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert done.status == "completed"
    assert [r.output for r in done.history if r.step_name == "r2"] == ["evt-9"]
    assert left == []


@settings(max_examples=40, deadline=None)
@given(sends=st.lists(st.tuples(st.sampled_from(["a", "b", "c", None]), st.booleans()), min_size=1, max_size=12))
def test_each_key_is_taken_once_in_the_order_first_sent(sends: list[tuple[str | None, bool]]) -> None:
    """Whatever the keys, and whether each is sent before the receives run or while they wait:
    the receives take the signals without a key and the first of each key, in the order sent."""
    async def main() -> list[Any]:
        async with open_test_engine() as engine:
            engine.register(_payments(len(sends)))
            iid = await engine.start("payments", None, delay=60)
            for i, (key, later) in enumerate(sends):
                if later:
                    await trio.sleep(30)  # (12 of them stay within a receive's timeout)
                await engine.signal(iid, "paid", i, idempotency_key=key)
            return _taken(await engine.wait(iid))

    seen: set[str] = set()
    expected = []
    for i, (key, _) in enumerate(sends):
        if key is None or key not in seen:
            expected.append(i)
        if key is not None:
            seen.add(key)
    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == expected


@pytest.mark.parametrize("forgets", ["consumed", "reopen"])
async def test_the_conformance_kit_fails_an_adapter_that_forgets_keys(forgets: str) -> None:
    """An adapter that drops a key once its signal is taken (or keeps keys in memory only) lets a
    webhook's copy in after the first was taken: the kit names the check it fails."""
    from trioflow.testing import check_persistence_adapter

    class Forgetful(tf.adapters.MemoryAdapter):
        def __init__(self) -> None:
            super().__init__()
            self.keys: dict[tuple[str, str], int | None] = {}

        async def send_keyed_signal(
            self, instance_id: str, name: str, payload: bytes, key: str,
        ) -> tuple[int | None, bool]:
            if (instance_id, key) in self.keys:
                before = self.keys[instance_id, key]
                pending = {seq for seq, _, _ in await self.signals(instance_id)}
                if before in pending:
                    return before, True
                if forgets == "reopen":
                    return None, True
            seq = await self.send_signal(instance_id, name, payload)
            self.keys[instance_id, key] = seq
            return seq, False

    stores: dict[str, tf.adapters.MemoryAdapter] = {}

    def open_adapter(key: str) -> tf.adapters.MemoryAdapter:
        if forgets == "reopen":
            fresh = Forgetful()
            if key in stores:
                fresh.__dict__.update({k: v for k, v in stores[key].__dict__.items() if k != "keys"})
            stores[key] = fresh
            return fresh
        return stores.setdefault(key, Forgetful())

    with pytest.raises(AssertionError, match="check 'keyed_signals_are_stored_once' failed"):
        await check_persistence_adapter(open_adapter)


async def test_the_crash_explorer_sends_keyed_signals_again_after_every_crash(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """``explore_crashes(signals=[(name, payload, key), ...])``: after each crash every keyed
    signal is sent again, acknowledged or not, as a webhook's sender does; each crash run must
    take each once, as the fault-free run does (a copy of "evt_1" among them is taken once)."""
    from trioflow.testing import explore_crashes

    async def charge(ctx: tf.WorkflowContext) -> list[Any]:
        return [ctx.steps["r0"], ctx.steps["r1"]]

    wf = (tf.workflow("payments").receive("r0", signal="paid").receive("r1", signal="paid")
          .step("charge", charge).build())
    files = iter(range(1000))
    report = await explore_crashes(
        wf, signals=[("paid", "a", "evt_1"), ("paid", "a", "evt_1"), ("paid", "b", "evt_2")],
        adapter_factory=lambda: tf.adapters.SQLiteAdapter(tmp_path / f"run{next(files)}.db"))
    assert report.baseline.status == "completed" and report.baseline.output == ["a", "b"]
    assert len(report.points) >= 4


async def test_the_crash_explorer_refuses_a_keyed_signal_with_a_bad_key(autojump_clock: trio.testing.MockClock) -> None:
    from trioflow.testing import explore_crashes

    wf = tf.workflow("payments").receive("r0", signal="paid").build()
    for entry in [("paid", 1, ""), ("paid", 1, 5), ("paid", 1, "k", "extra")]:
        with pytest.raises(tf.InvalidArgumentError, match="idempotency_key"):
            await explore_crashes(wf, signals=[entry])  # type: ignore[list-item]
