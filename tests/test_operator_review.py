"""From a review by an operator who runs trioflow in a long-lived service and watches its
events: each test failed before its fix."""

from __future__ import annotations

from typing import Any

import trio

import trioflow as tf


async def test_an_instance_cancelled_while_queued_for_a_slot_never_starts() -> None:
    # README, Events and hooks: on_start and workflow.started come "when the instance starts its
    # first step". One cancelled while it waits in the queue for a max_running slot never does
    # (as a delayed start cancelled before its time): a count of started instances, or an
    # on_start that mails "your order is being processed", must not see it.
    announced: list[str] = []
    hooked: list[str] = []

    async def slow(ctx: Any) -> str:
        await trio.sleep(100)
        return "done"

    flow = (tf.workflow("flow").step("a", slow)
            .with_hooks(on_start=lambda ctx: hooked.append(ctx.metadata.id)).build())
    async with tf.open_engine(max_running=1) as engine:
        engine.events.on("workflow.started", lambda event: announced.append(event["instance_id"]))
        engine.register(flow)
        await engine.start("flow", instance_id="running")
        await engine.start("flow", instance_id="queued")
        await trio.sleep(1)
        queued = await engine.get_instance("queued")
        assert queued is not None and queued.status == "pending"
        assert await engine.cancel("queued")
        ended = await engine.wait("queued")
        assert (ended.status, ended.started_at, ended.history) == ("cancelled", None, ())
        await engine.cancel("running")
    assert announced == hooked == ["running"]


async def test_an_instance_cancelled_before_its_first_step_is_not_announced() -> None:
    announced: list[str] = []
    ran: list[str] = []

    async def step(ctx: Any) -> None:
        ran.append(ctx.metadata.id)

    async with tf.open_engine() as engine:
        engine.events.on("workflow.started", lambda event: announced.append(event["instance_id"]))
        engine.register(tf.workflow("flow").step("a", step).build())
        iid = await engine.start("flow")
        assert await engine.cancel(iid)  # before its actor ran at all
        assert (await engine.wait(iid)).status == "cancelled"
    assert announced == ran == []
