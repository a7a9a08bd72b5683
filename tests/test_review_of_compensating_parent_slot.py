"""Review of 4ce6641: a parent taken up compensating runs at once (no max_running slot) if
``unended_children(state)`` is not empty. That reads the records only, and cancel_children
records no end for the children it cancelled: a parent that cancelled its children already
(they ended) and was compensating its own steps when the engine stopped still counts them as
"yet to cancel", so the next engine runs its whole compensation beside a full max_running."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow._decide import unended_children
from trioflow.testing import open_test_engine, virtual_wall_clock

undos: list[float] = []


async def quick(ctx: Any) -> str:
    return "ok"


async def slow_undo(ctx: Any, result: Any) -> None:
    undos.append(trio.current_time())
    await trio.sleep(10_000)  # the engine closes during the first one


async def hangs(ctx: Any) -> None:
    await trio.sleep(100_000)


async def hog(ctx: Any) -> None:
    await trio.sleep(1000)


def parent() -> tf.WorkflowDefinition:
    return tf.workflow("parent").step("a", quick, slow_undo).child("kid", workflow="kid").build()


def kid() -> tf.WorkflowDefinition:
    return tf.workflow("kid").step("k", hangs).build()


async def test_parent_whose_children_ended_waits_for_a_slot_after_a_restart(
        autojump_clock: trio.testing.MockClock) -> None:
    undos.clear()
    adapter, clock = tf.adapters.MemoryAdapter(), virtual_wall_clock()
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(kid())
        engine.register(parent())
        await engine.start("parent", instance_id="P")
        await trio.sleep(5)
        assert await engine.cancel("P")
        await trio.sleep(5)
        child = await engine.get_instance("P/kid#1")
        assert child is not None and child.status == "cancelled"  # its only child has ended
        assert len(undos) == 1  # P compensates step a now; the engine stops during it
    async with open_test_engine(adapter=adapter, clock=clock, max_running=1) as engine:
        engine.register(tf.workflow("hog").step("h", hog).build())
        await engine.start("hog", instance_id="H")  # takes the only slot for 1000 s
        engine.register(kid())
        engine.register(parent())
        await trio.sleep(10)
        run = engine._live.get("P")  # type: ignore[attr-defined]
        assert run is not None
        left = unended_children(run.state)
        # P has no child left to cancel: it must wait for the slot like any compensating run.
        assert len(undos) == 1, (f"P compensated at once beside the hog (max_running=1) although its"
                                 f" child ended before the restart; unended_children says {left}")
