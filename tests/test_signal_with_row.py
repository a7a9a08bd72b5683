"""A signal to an instance not running here is stored, and the instance's row read back for its
wake, in one adapter call (``send_signal_and_load``): one storage round trip fewer per signal.
A row that a run's end may have made stale is read again, and an adapter subclass that changes
``send_signal`` or ``load`` alone keeps seeing every call. On trio's autojumping MockClock.
"""

from __future__ import annotations

import collections
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, StoredInstance
from trioflow.adapters._protocol import sends_and_loads
from trioflow.testing import open_test_engine, virtual_wall_clock

_T = TypeVar("_T")


class Counted(MemoryAdapter):
    """Counts the calls the engine makes of the three; defines all three itself, as an adapter
    written with ``send_signal_and_load`` does."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        self.calls["send_signal"] += 1
        return await super().send_signal(instance_id, name, payload)

    async def load(self, instance_id: str) -> StoredInstance | None:
        self.calls["load"] += 1
        return await super().load(instance_id)

    async def send_signal_and_load(
        self, instance_id: str, name: str, payload: bytes,
    ) -> tuple[int | None, StoredInstance | None]:
        self.calls["send_signal_and_load"] += 1
        return await super().send_signal_and_load(instance_id, name, payload)


async def _slow(data: Any) -> str:
    await trio.sleep(20)
    return "slow"


async def test_a_signal_to_a_parked_instance_stores_and_reads_its_row_in_one_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wf = tf.workflow("w").receive("r", signal="go").build()
    adapter = Counted()
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(10)  # a receive with no timeout waits out of memory
        assert iid not in engine._live
        adapter.calls.clear()
        await engine.signal(iid, "go", {"by": "ann"})
        done = await engine.wait(iid)
        calls = dict(adapter.calls)
    assert (done.status, done.output) == ("completed", {"by": "ann"})
    assert calls.get("send_signal_and_load") == 1 and "send_signal" not in calls, calls
    # (wait() reads nothing more: the run it waited for ended here.)
    assert "load" not in calls, f"the row came with the signal, yet the engine read it again: {calls}"


async def test_a_signal_to_a_running_instance_reads_no_row(autojump_clock: trio.testing.MockClock) -> None:
    calls = await calls_of_a_signal_to_a_running_instance(Counted(), key=None)
    assert calls == {"send_signal": 1}, f"a signal to a run in memory needs no row: {calls}"


async def calls_of_a_signal_to_a_running_instance(adapter: Any, *, key: str | None) -> dict[str, int]:
    """The calls (as ``adapter.calls`` counts them) that storing a signal sent with ``key`` to an
    instance running here makes; its run then takes it (tests/test_keyed_signal_and_load.py)."""
    wf = tf.workflow("w").task("slow", job=_slow).receive("r", signal="go").build()
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(1)
        assert iid in engine._live
        adapter.calls.clear()
        await engine.signal(iid, "go", "early", idempotency_key=key)  # kept for the receive, which has not started
        calls = dict(adapter.calls)
        done = await engine.wait(iid)
    assert (done.status, done.output) == ("completed", "early")
    return calls


class SlowFirstAnswer(MemoryAdapter):
    """``send_signal_and_load`` (and ``send_keyed_signal_and_load``) stores the signal and reads
    the row at once, and its answer comes ``slow_next`` (virtual) seconds later, once it is set:
    a busy database, a network."""

    def __init__(self) -> None:
        super().__init__()
        self.slow_next = 0.0

    async def send_signal_and_load(
        self, instance_id: str, name: str, payload: bytes,
    ) -> tuple[int | None, StoredInstance | None]:
        return await self._late(await super().send_signal_and_load(instance_id, name, payload))

    async def send_keyed_signal_and_load(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool, StoredInstance | None]:
        return await self._late(await super().send_keyed_signal_and_load(instance_id, name, payload, key))

    async def _late(self, answer: _T) -> _T:
        delay, self.slow_next = self.slow_next, 0.0
        if delay:
            with trio.CancelScope(shield=True):
                await trio.sleep(delay)
        return answer


async def test_a_row_read_with_a_signal_that_runs_have_since_moved_past_is_not_resumed_from(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The row read with "a" shows the instance parked at r1 with "a" pending. While its answer
    is slow to come back, "b" resumes the instance (r1 takes "a", r2 "b", r3 parks), and "c"
    resumes it again (r3 takes "c", r4 parks). Resumed from the row read with "a", the instance
    would run r1 again and take "a" a second time; the engine reads the row again instead."""
    adapter = SlowFirstAnswer()
    assert sends_and_loads(adapter)
    await resumed_past_a_slow_answer(adapter, keyed=False)


async def resumed_past_a_slow_answer(adapter: Any, *, keyed: bool) -> None:
    """The test above on ``adapter``, whose combined call answers ``adapter.slow_next`` seconds
    late once that is set; ``keyed``: each signal sent with a key (tests/test_keyed_signal_and_load.py)."""
    wf = (tf.workflow("w")
          .receive("r1", signal="x")
          .receive("r2", signal="x")
          .receive("r3", signal="y")
          .receive("r4", signal="x", timeout=100, catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="done")])
          .end("done")
          .build())
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(wf)

        async def send(name: str, value: str) -> None:
            await engine.signal(iid, name, value, idempotency_key=value if keyed else None)

        iid = await engine.start("w")
        await trio.sleep(10)  # r1 waits out of memory
        with trio.fail_after(10**5):
            async with trio.open_nursery() as nursery:
                adapter.slow_next = 10.0
                nursery.start_soon(send, "x", "a")
                await trio.sleep(1)
                await send("x", "b")
                await trio.sleep(2)
                await send("y", "c")
                await trio.sleep(1)
                assert iid not in engine._live  # r4 waits out of memory when "a"'s answer comes
            try:
                done = await engine.wait(iid)
            except tf.InstanceNotLiveError as exc:
                pytest.fail(f"the instance crashed instead of completing: {exc}")
        received = [(r.step_name, r.output) for r in done.history if r.step_name.startswith("r")]
    assert done.status == "completed", done.error
    assert received[:3] == [("r1", "a"), ("r2", "b"), ("r3", "c")], received
    assert [out for _, out in received].count("a") == 1, f"signal 'a' was taken twice: {received}"
    assert done.step_results["r4"].status == "caught"


class _SlowAck(MemoryAdapter):
    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        seq = await super().send_signal(instance_id, name, payload)
        await trio.sleep(3)
        return seq


class _SlowLoad(MemoryAdapter):
    async def load(self, instance_id: str) -> StoredInstance | None:
        await trio.sleep(3)
        return await super().load(instance_id)


class _Delegating:
    """Hands everything over to a MemoryAdapter (as test wrappers and proxies do)."""

    def __init__(self) -> None:
        self.inner = MemoryAdapter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _OwnSend(_Delegating):
    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        result: int | None = await self.inner.send_signal(instance_id, name, payload)
        return result


@pytest.mark.parametrize(("adapter", "combined"), [
    (MemoryAdapter(), True), (Counted(), True), (SlowFirstAnswer(), True), (_Delegating(), True),
    (_SlowAck(), False), (_SlowLoad(), False), (_OwnSend(), False), (object(), False),
], ids=lambda value: type(value).__name__ if not isinstance(value, bool) else str(value))
def test_the_engine_uses_the_combined_call_only_where_it_replaces_no_override(adapter: Any, combined: bool) -> None:
    assert sends_and_loads(adapter) is combined


async def test_an_adapter_whose_send_signal_alone_is_slow_is_slow_for_every_signal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A subclass that overrides ``send_signal`` (a delay here) has it called for a parked
    instance too: the combined call, which it did not override, would skip it."""
    wf = tf.workflow("w").receive("r", signal="go").build()
    async with open_test_engine(adapter=_SlowAck(), clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(10)
        before = trio.current_time()
        await engine.signal(iid, "go")
        assert trio.current_time() - before >= 3
        assert (await engine.wait(iid)).status == "completed"
