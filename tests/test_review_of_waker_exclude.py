"""From an adversarial re-review of 21f7eb7..b14f6c0 (PASSES_WORKFLOW_INPUT, due(exclude=),
WorkflowInstance.data, typing of the public API): no bug found; two guards of what the
waker's use of ``exclude`` made fragile."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import explore_crashes, open_test_engine


class _SlowFirstCheckpoint(tf.adapters.MemoryAdapter):
    """The real MemoryAdapter; once ``slow`` is set, each checkpoint of instance ``x`` takes 50 s."""

    slow = False

    async def checkpoint(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if self.slow and instance_id == "x":
            await trio.sleep(50)
        return await super().checkpoint(instance_id, *args, **kwargs)


async def test_guard_a_timer_due_while_another_woken_instance_is_slow_to_checkpoint_is_taken_up_on_time(
        autojump_clock: trio.testing.MockClock) -> None:
    """(A guard.) Two parked instances: x due at 100 s, y at 110 s; after a restart, x's first
    checkpoint once woken takes 50 s (a slow disk). The user expects y's step to run at 110 s,
    not once x's checkpoint is through (150 s): the waker now leaves x out of its looks with
    ``due(exclude=)`` and must still look again when the next *other* instance is due."""
    ran: dict[str, float] = {}

    async def stamp(ctx: tf.WorkflowContext) -> int:
        ran[ctx.metadata.id] = trio.current_time()
        return 1

    wx = tf.workflow("wx").wait("w", seconds=100).step("s", stamp).build()
    wy = tf.workflow("wy").wait("w", seconds=110).step("s", stamp).build()
    store = _SlowFirstCheckpoint()
    async with open_test_engine(adapter=store) as engine:
        engine.register(wx)
        engine.register(wy)
        t0 = trio.current_time()
        await engine.start("wx", None, instance_id="x")
        await engine.start("wy", None, instance_id="y")
        await trio.sleep(1)
    store.slow = True
    async with open_test_engine(adapter=store) as engine:
        engine.register(wx)
        engine.register(wy)
        await trio.sleep(300)
        x, y = await engine.get_instance("x"), await engine.get_instance("y")
    assert x is not None and y is not None and (x.status, y.status) == ("completed", "completed")
    assert ran["y"] - t0 < 111, ran  # (virtual time: MemoryAdapter runs no thread)


class _DueWithoutExclude(tf.adapters.MemoryAdapter):
    """A subclass written before ``exclude``: ``due()`` with the old signature."""

    async def due(self, before: float, limit: int, *,  # type: ignore[override]
                  skip_workflows: Collection[str] = ()) -> Any:
        return await super().due(before, limit, skip_workflows=skip_workflows)


async def test_guard_an_adapter_whose_due_has_no_exclude_still_wakes_every_due_instance_once(
        autojump_clock: trio.testing.MockClock) -> None:
    """(A guard.) An adapter subclass whose ``due()`` predates ``exclude`` (the engine and the
    crash explorer's wrapper must fall back to asking for more rows and passing them over),
    with many timers due together mixed with due rows of a workflow this engine does not know.
    Every known timer fires once and passes the workflow input on (a wait first on the main
    line), also at every crash point."""
    calls: dict[str, int] = {}

    def count(ctx: tf.WorkflowContext) -> Any:
        calls[ctx.metadata.id] = calls.get(ctx.metadata.id, 0) + 1
        return ctx.steps["w"]

    wf = tf.workflow("t").wait("w", seconds=5).step("s", count).build()
    unknown = tf.workflow("gone").wait("w", seconds=5).step("s", lambda ctx: 1).build()
    report = await explore_crashes(wf, {"a": [1]}, adapter_factory=_DueWithoutExclude)
    assert report.baseline.output == {"a": [1]}
    calls.clear()
    store = _DueWithoutExclude()
    async with open_test_engine(adapter=store) as engine:
        engine.register(unknown)
        for i in range(30):
            await engine.start("gone", None, instance_id=f"g{i}")
        await trio.sleep(1)
    async with open_test_engine(adapter=store) as engine:
        engine.register(wf)
        ids = [await engine.start("t", {"i": i}, instance_id=f"t{i}") for i in range(300)]
        done = [await engine.wait(i) for i in ids]
    assert [d.output for d in done] == [{"i": i} for i in range(300)]
    assert sorted(calls.values()) == [1] * 300
