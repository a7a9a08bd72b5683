"""An instance's terminal event carries when it started and ended (README, Events): a service
feeding duration metrics from events needs no read of the instance per event (a review, "dbos",
found it had to call get_instance for each)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


async def _ok(ctx: Any) -> str:
    await trio.sleep(5)
    return "ok"


async def _declined(ctx: Any) -> None:
    await trio.sleep(2)
    raise ValueError("card declined")


async def _hang(ctx: Any) -> None:
    await trio.sleep_forever()


@pytest.mark.parametrize(("definition", "event"), [
    (tf.workflow("w").step("a", _ok).build(), "workflow.completed"),
    (tf.workflow("w").step("a", _declined).build(), "workflow.failed"),
    (tf.workflow("w").step("a", _hang).with_timeout(30).build(), "workflow.timed_out"),
])
async def test_the_terminal_event_says_when_the_instance_started_and_ended(
    definition: tf.WorkflowDefinition, event: str, autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[dict[str, Any]] = []
    async with open_test_engine() as engine:
        engine.register(definition)
        engine.events.on(event, seen.append)
        await trio.sleep(100)
        done = await engine.wait(await engine.start("w"))
    (ended,) = seen
    assert done.started_at is not None and done.completed_at is not None
    assert (ended["started_at"], ended["completed_at"]) == (done.started_at, done.completed_at)
    assert ended["completed_at"] - ended["started_at"] == pytest.approx(
        {"workflow.completed": 5, "workflow.failed": 2, "workflow.timed_out": 30}[event], abs=0.01)


async def test_an_instance_cancelled_before_it_started_ends_with_no_start_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[dict[str, Any]] = []
    async with open_test_engine(max_running=1) as engine:
        engine.register(tf.workflow("w").step("a", _hang).build())
        engine.events.on("workflow.cancelled", seen.append)
        running = await engine.start("w")
        queued = await engine.start("w")
        await trio.sleep(1)
        assert await engine.cancel(queued)
        done = await engine.wait(queued)
        await engine.cancel(running)
    (ended,) = [e for e in seen if e["instance_id"] == queued]
    assert (done.status, ended["started_at"], ended["completed_at"]) == ("cancelled", None, done.completed_at)
    assert ended["completed_at"] is not None
