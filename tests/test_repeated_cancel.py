"""A cancel() repeated while the first one's decision is being stored: it says yes as the first
does, and returns only once that decision is stored (a caller killed right after it returned
must find the instance compensated by the next engine). Virtual time only."""

from __future__ import annotations

from typing import Any

import trio

import trioflow as tf
from trioflow.testing import open_test_engine


class _SlowToStore(tf.adapters.MemoryAdapter):
    """Checkpoints take 3 s once ``slow`` is set; ``stored`` notes when each one is stored."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = False
        self.stored: list[tuple[float, str]] = []

    async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Any, **options: Any) -> Any:
        if self.slow:
            await trio.sleep(3)
        result = await super().checkpoint(instance_id, status, header, records, **options)
        self.stored.append((trio.current_time(), status))
        return result


async def test_a_repeated_cancel_says_yes_once_the_decision_is_stored(autojump_clock: Any) -> None:
    """Before the fix: the second of two concurrent cancels returned False at once, before the
    decision was stored, although the instance was being cancelled."""
    undone: list[str] = []

    async def reserve(data: Any) -> str:
        return "r-1"

    async def release(output: str) -> None:
        undone.append(output)

    async def long(data: Any) -> None:
        await trio.sleep_forever()

    adapter = _SlowToStore()
    wf = tf.workflow("w").task("reserve", job=reserve, compensate=release).task("long", job=long).build()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(10)
        adapter.slow = True
        asked = trio.current_time()
        answers: list[tuple[bool, float]] = []

        async def cancel() -> None:
            answers.append((await engine.cancel(iid), trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel)
            nursery.start_soon(cancel)
        decided = min(at for at, _ in adapter.stored if at > asked)
        assert [ok for ok, _ in answers] == [True, True]
        assert all(at >= decided for _, at in answers), (answers, adapter.stored)
        done = await engine.wait(iid)
        assert done.status == "cancelled" and undone == ["r-1"]
        # Over: nothing left to cancel.
        assert await engine.cancel(iid) is False


async def test_a_repeated_cancel_after_the_decision_was_stored_returns_at_once(autojump_clock: Any) -> None:
    """The first cancel came from a step's code (which does not wait for the decision); once the
    decision is stored, a cancel from outside says yes at once, while the compensation (100 s)
    still runs. (Without the mark that the decision is stored, it waited 10 s for an event
    that only the run's end would set.)"""

    async def reserve(data: Any) -> str:
        return "r-1"

    async def release(output: str) -> None:
        await trio.sleep(100)

    async def long(data: Any) -> None:
        await trio.sleep_forever()

    async with open_test_engine() as engine:
        engine.register(tf.workflow("target").task("reserve", job=reserve, compensate=release)
                        .task("long", job=long).build())
        target = await engine.start("target")
        await trio.sleep(1)

        async def cancel_target(data: Any) -> bool:
            return await engine.cancel(target)

        engine.register(tf.workflow("canceller").task("c", job=cancel_target).build())
        assert (await engine.wait(await engine.start("canceller"))).output is True
        await trio.sleep(1)
        asked = trio.current_time()
        assert await engine.cancel(target) is True
        assert trio.current_time() == asked
        assert (await engine.get_instance(target)).status == "running"  # type: ignore[union-attr]
        assert (await engine.wait(target)).status == "cancelled"
