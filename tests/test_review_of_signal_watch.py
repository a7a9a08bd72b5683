"""An adversarial review of 1ca9b8d (the engine's watch on a read of one instance's row counts
the signals stored for it meanwhile; a run taken up from a row whose read saw one stored reads
storage at its first receive; a combined ``send_signal_and_load``'s row is used only if no run
ended and no other signal was stored during the call), building on 75bfbc6, 9af319f, 79fd3c3.

Promises under review (SPEC §13, docs/waiting.md): once ``signal()`` returned, a signal is
delivered exactly once; signals of one name are taken first in, first out; no watch is left
behind.

No test here fails on main at 1ca9b8d: the review found no bug in the change. The tests pin
behaviour that is not obvious from the code. Everything runs on trio's MockClock.

Run from a checkout:  .venv/bin/pytest -q -p no:cacheprovider /tmp/review_1ca9b8d/
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class SlowReply(MemoryAdapter):
    """The next combined ``send_signal_and_load`` stores at once and answers ``delay`` later
    (the wait shielded: the write is all or nothing, as adapters.md asks); counts loads."""

    def __init__(self) -> None:
        super().__init__()
        self.next_combined: float | None = None
        self.loads = 0

    async def send_signal_and_load(self, instance_id: str, name: str, payload: bytes) -> Any:
        delay, self.next_combined = self.next_combined, None
        found = await super().send_signal_and_load(instance_id, name, payload)
        if delay:
            with trio.CancelScope(shield=True):
                await trio.sleep(delay)
        return found

    async def load(self, instance_id: str) -> Any:
        self.loads += 1
        return await super().load(instance_id)


class Laggy(MemoryAdapter):
    """Random latency (seeded) before and after each call; after a write, shielded (all or
    nothing: a caller cancelled after the write gets its answer)."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    async def _lag(self, shield: bool = False) -> None:
        if self.rng.random() < 0.6:
            with trio.CancelScope(shield=shield):
                await trio.sleep(self.rng.random() * 3)

    async def send_signal(self, *a: Any, **k: Any) -> Any:
        await self._lag()
        r = await super().send_signal(*a, **k)
        await self._lag(shield=True)
        return r

    async def send_signal_and_load(self, *a: Any, **k: Any) -> Any:
        await self._lag()
        r = await super().send_signal_and_load(*a, **k)
        await self._lag(shield=True)
        return r

    async def signals(self, *a: Any, **k: Any) -> Any:
        await self._lag()
        r = await super().signals(*a, **k)
        await self._lag()
        return r

    async def load(self, *a: Any, **k: Any) -> Any:
        await self._lag()
        r = await super().load(*a, **k)
        await self._lag()
        return r

    async def due(self, *a: Any, **k: Any) -> Any:
        await self._lag()
        r = await super().due(*a, **k)
        await self._lag()
        return r

    async def resumable(self, *a: Any, **k: Any) -> Any:
        await self._lag()
        r = await super().resumable(*a, **k)
        await self._lag()
        return r

    async def checkpoint(self, *a: Any, **k: Any) -> Any:
        await self._lag()
        r = await super().checkpoint(*a, **k)
        await self._lag()
        return r


def _one(ctx: tf.WorkflowContext) -> Any:
    return ctx.steps["ra"]


def _three(ctx: tf.WorkflowContext) -> list[Any]:
    return [ctx.steps["a1"], ctx.steps["a2"], ctx.steps["a3"]]


B_THEN_A = (
    tf.workflow("b-then-a")
    .receive("rb", signal="b")
    .receive("ra", signal="a")
    .pass_("got", transform=_one, end=True)
    .build()
)


def _b_then_three_a(timeout: float | None) -> tf.WorkflowDefinition:
    return (
        tf.workflow("b-then-three-a")
        .receive("rb", signal="b")
        .receive("a1", signal="a", timeout=timeout)
        .receive("a2", signal="a", timeout=timeout)
        .receive("a3", signal="a", timeout=timeout)
        .pass_("got", transform=_three, end=True)
        .build()
    )


@pytest.mark.trio
async def test_a_combined_row_is_read_again_when_another_signal_was_stored_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Passes (pins 1ca9b8d). The instance waits for "b" out of memory. ``signal("b")``'s
    combined call stores at t=2 (its row: no "a" yet) and answers at t=5; ``signal("a", "A")``
    is stored and returns at t=3 (no lane waits for "a": nothing woken). At t=5 the watch has
    seen two signals stored during the call ("b" itself and A): the returned row is dropped and
    read again (one ``load``), and the run taken up from it takes A."""
    adapter = SlowReply()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(B_THEN_A)
        iid = await engine.start("b-then-a", {})
        await trio.sleep(2)
        assert iid not in engine._live
        loads = adapter.loads
        async with trio.open_nursery() as nursery:
            adapter.next_combined = 3.0
            nursery.start_soon(engine.signal, iid, "b", None)
            await trio.sleep(1)
            await engine.signal(iid, "a", "A")
        assert adapter.loads == loads + 1, "the combined row of 'b' is read again"
        with trio.move_on_after(60):
            done = await engine.wait(iid)
        assert done.status == "completed" and done.output == "A"
        assert not engine._ends._one and not engine._ends._signals


@pytest.mark.trio
async def test_a_combined_row_with_no_other_signal_meanwhile_is_used_as_it_is(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Passes (pins 1ca9b8d). As above without the "a" meanwhile: the row that came back with
    the write wakes the run, no ``load`` of its own (the signal's own store is counted once)."""
    adapter = SlowReply()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(B_THEN_A)
        iid = await engine.start("b-then-a", {})
        await trio.sleep(2)
        loads = adapter.loads
        adapter.next_combined = 3.0
        await engine.signal(iid, "b", None)
        assert adapter.loads == loads
        await engine.signal(iid, "a", "A")
        with trio.move_on_after(60):
            done = await engine.wait(iid)
        assert done.status == "completed" and done.output == "A"


async def _soak(seed: int, combined: bool) -> list[tuple[str, Any]]:
    rng = random.Random(seed)
    adapter = Laggy(rng)
    async with open_test_engine(adapter=adapter, max_running=1) as engine:
        engine._sends_and_loads = combined  # (without it: send_signal, then a load of its own)
        engine.register(_b_then_three_a(None if seed % 2 else 50))
        ids = [await engine.start("b-then-three-a", {}) for _ in range(3)]

        async def a_sender(iid: str) -> None:
            for i in range(3):
                await trio.sleep(rng.random() * 4)
                while True:  # cancelled before it was stored: sent again
                    stored = False
                    with trio.move_on_after(rng.random() * 2):
                        await engine.signal(iid, "a", i)
                        stored = True
                    if stored:
                        break

        async def b_sender(iid: str) -> None:
            await trio.sleep(rng.random() * 4)
            await engine.signal(iid, "b", None)
            for _ in range(3):
                await trio.sleep(rng.random() * 3)
                try:
                    await engine.signal(iid, "x", None)
                except tf.InstanceNotLiveError:
                    return

        async def resumer() -> None:
            for _ in range(2):
                await trio.sleep(rng.random() * 5)
                await engine.resume()

        async with trio.open_nursery() as nursery:
            for iid in ids:
                nursery.start_soon(a_sender, iid)
                nursery.start_soon(b_sender, iid)
            nursery.start_soon(resumer)
        outs = []
        for iid in ids:
            with trio.move_on_after(500):
                await engine.wait(iid)
            got = await engine.get_instance(iid)
            assert got is not None
            outs.append((got.status, got.output))
        assert not engine._ends._one and not engine._ends._signals and not engine._ends._ends, "a watch leaked"
        return outs


@pytest.mark.trio
@pytest.mark.parametrize("combined", [True, False])
@pytest.mark.parametrize("seed", range(6))
async def test_exactly_once_and_in_order_under_random_latency_cancels_slots_and_resumes(
    autojump_clock: trio.testing.MockClock, seed: int, combined: bool,
) -> None:
    """Passes (pins 1ca9b8d). Three instances, ``max_running=1``, every adapter call slow at
    random (writes all or nothing), senders cancelled at random (sent again only if not
    stored), other signals ("b", "x") and ``resume()`` racing them: each instance takes its
    three "a"s once each, in the order sent. (A soak of 120 seeds each way found nothing.)"""
    outs = await _soak(seed, combined)
    assert outs == [("completed", [0, 1, 2])] * 3
