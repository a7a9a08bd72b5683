"""A task step cut short (by ``cancel()``, the workflow timeout or a fail-fast sibling) is
recorded failed, and now says so to listeners too: ``workflow.step.failed`` with
``error_name`` ``"Cancelled"``, once, before the instance's end event. Before, a consumer of the
event stream (a live dashboard) saw the step start and never end (the wave-1 spec audit of
December 5th). An engine that closes mid-step publishes nothing for it: the step runs again
with the next engine, and ends there. Its ``error`` reads ``"Name: cause"`` as every failed
execution's does, ``"Cancelled: cancelled while running"``, in the event, the history and read
back after a restart (it read ``"cancelled"``: the docs audit of December 5th).

On trio's MockClock (autojump), on the MemoryAdapter and SQLite."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import Adapter

from storages import engine_on, finish, storage  # noqa: F401  (a fixture)


async def _hang(ctx: tf.WorkflowContext) -> None:
    await trio.sleep_forever()


async def _boom(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(1)
    raise RuntimeError("declined")


WORKFLOWS = {
    "timeout": tf.workflow("timeout").step("h", _hang).with_timeout(5).build(),
    "fail-fast": tf.workflow("fail-fast").parallel("p", branches=[
        tf.branch("a").step("a1", _hang).build(), tf.branch("b").step("b1", _boom).build()]).build(),
    "cancel": tf.workflow("cancel").step("h", _hang).build(),
}
CUT = {"timeout": ("h", "timed_out"), "fail-fast": ("a1", "failed"), "cancel": ("h", "cancelled")}


@pytest.mark.parametrize("how", list(WORKFLOWS))
async def test_a_step_cut_short_publishes_its_failure_once_before_the_end(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], how: str) -> None:
    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.register(WORKFLOWS[how])
        engine.events.on("workflow.*", events.append)
        iid = await engine.start(how)
        if how == "cancel":
            await trio.sleep(2)
            assert await engine.cancel(iid)
        done = await finish(engine, iid, limit=600)
        await trio.sleep(1)  # (events are published beside the run)
    step, status = CUT[how]
    assert done.status == status
    ends = [e for e in events if e["event"] == "workflow.step.failed" and e["step_name"] == step]
    assert len(ends) == 1, events
    assert ends[0]["error_name"] == "Cancelled" and ends[0]["attempts"] == 1
    assert ends[0]["error"] == "Cancelled: cancelled while running"
    assert ends[0]["instance_id"] == iid
    names = [e["event"] for e in events]
    assert names.index("workflow.step.failed") < names.index(f"workflow.{status}")
    [record] = [r for r in done.history if r.step_name == step]
    assert record.status == "failed" and record.error_name == "Cancelled"
    assert (record.error, record.cause) == ("Cancelled: cancelled while running", "cancelled while running")
    async with engine_on(storage()) as engine:  # (read back as stored)
        engine.register(WORKFLOWS[how])
        again = await engine.get_instance(iid)
    assert again is not None and again.history == done.history


async def test_an_engine_closing_mid_step_publishes_no_failure_for_it(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    gate = {"hang": True}

    async def maybe_hang(ctx: tf.WorkflowContext) -> str:
        if gate["hang"]:
            await trio.sleep_forever()
        return "done"

    wf = tf.workflow("w").step("s", maybe_hang).build()
    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.register(wf)
        engine.events.on("workflow.step.*", events.append)
        iid = await engine.start("w")
        await trio.sleep(1)
    assert [e["event"] for e in events] == ["workflow.step.started"]
    gate["hang"] = False
    async with engine_on(storage()) as engine:
        engine.events.on("workflow.step.*", events.append)
        engine.register(wf)
        done = await finish(engine, iid, limit=600)
        await trio.sleep(1)
    assert done.status == "completed"
    assert [e["event"] for e in events] == ["workflow.step.started", "workflow.step.started", "workflow.step.completed"]
