"""A cancel that reaches an instance queued for a ``max_running`` slot (woken, or taken up
after a restart, every slot held by others): with nothing to undo it ends at once rather than
wait for a slot to do nothing; with compensations to run it waits for its slot, and either way
the steps it stood in end (recorded, and published) as they would in memory."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine, virtual_wall_clock


async def hog(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(100)


async def noted(ctx: tf.WorkflowContext) -> str:
    return "noted"


async def unnote(ctx: tf.WorkflowContext, result: Any) -> None:
    undone.append(result)


undone: list[Any] = []
HOG = tf.workflow("hog").step("h", hog).build()


async def _cancelled_while_queued(wf: tf.WorkflowDefinition) -> tuple[tf.WorkflowInstance, float, list[dict[str, Any]]]:
    """Start ``wf`` (it leaves memory on a 15 s timer), let a hog take the only slot for 100 s,
    then cancel ``wf`` once its timer has woken it: its end, how long after the cancel it came,
    and the events."""
    events: list[dict[str, Any]] = []
    async with open_test_engine(max_running=1, clock=virtual_wall_clock()) as engine:
        engine.events.on("workflow.*", events.append)
        engine.register(wf)
        engine.register(HOG)
        iid = await engine.start(wf.name, None)
        await trio.sleep(10)
        await engine.start("hog", None)
        await trio.sleep(1)
        await trio.sleep(5)  # its timer falls due: woken, it queues behind the hog
        cancelled_at = trio.current_time()
        assert await engine.cancel(iid)
        ended = await engine.wait(iid)
        return ended, trio.current_time() - cancelled_at, events


async def test_with_nothing_to_undo_it_ends_at_once(autojump_clock: trio.testing.MockClock) -> None:
    wf = tf.workflow("plain").step("note", noted).wait("pause", seconds=15).step("after", noted).build()
    ended, took, events = await _cancelled_while_queued(wf)
    assert ended.status == "cancelled" and took < 1, took  # (not the hog's 100 s)
    ends = [e for e in events if e["event"] == "workflow.step.failed" and e.get("instance_id") == ended.id]
    assert [(e["step_name"], e["error_name"]) for e in ends] == [("pause", "Cancelled")]


async def test_with_a_compensation_to_run_it_waits_for_its_slot_and_undoes_once(
        autojump_clock: trio.testing.MockClock) -> None:
    undone.clear()
    wf = tf.workflow("undoable").step("note", noted, unnote).wait("pause", seconds=15).step("after", noted).build()
    ended, took, events = await _cancelled_while_queued(wf)
    assert ended.status == "cancelled" and took >= 80, took  # it ran once the hog let the slot go
    assert undone == ["noted"]
    ends = [e for e in events if e["event"] == "workflow.step.failed" and e.get("instance_id") == ended.id]
    assert [(e["step_name"], e["error_name"]) for e in ends] == [("pause", "Cancelled")]
