"""A step cut short (a cancel, the workflow timeout, a fail-fast sibling) keeps the format every
failed execution's ``error`` has, ``"Name: cause"`` (README, docs/errors.md): it read
``"cancelled"``, so a consumer that splits ``error`` on ": " got no cause for it (the docs
audit of December 5th). In the history, the step's event and after a restart (SQLite)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import Adapter

from storages import engine_on, finish, storage  # noqa: F401  (a fixture)

CUT_SHORT = "Cancelled: cancelled while running"


async def _hang(ctx: tf.WorkflowContext) -> None:
    await trio.sleep_forever()


async def _boom(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(1)
    raise RuntimeError("declined")


WORKFLOWS = {
    "timeout": (tf.workflow("timeout").step("h", _hang).with_timeout(5).build(), "h"),
    "fail-fast": (tf.workflow("fail-fast").parallel("p", branches=[
        tf.branch("a").step("a1", _hang).build(), tf.branch("b").step("b1", _boom).build()]).build(), "a1"),
    "cancel": (tf.workflow("cancel").step("h", _hang).build(), "h"),
}


@pytest.mark.parametrize("how", list(WORKFLOWS))
async def test_a_step_cut_short_reads_name_colon_cause(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], how: str) -> None:
    workflow, step = WORKFLOWS[how]
    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.register(workflow)
        engine.events.on("workflow.step.failed", events.append)
        iid = await engine.start(how)
        if how == "cancel":
            await trio.sleep(2)
            assert await engine.cancel(iid)
        done = await finish(engine, iid, limit=600)
        await trio.sleep(1)  # (events are published beside the run)
    async with engine_on(storage()) as engine:  # (a restart reads it back as stored)
        engine.register(workflow)
        again = await engine.get_instance(iid)
    assert again is not None and again.history == done.history
    cut = [r for r in done.history if r.step_name == step]
    assert [(r.error, r.error_name, r.cause) for r in cut] == [(CUT_SHORT, "Cancelled", "cancelled while running")]
    assert [e["error"] for e in events if e["step_name"] == step] == [CUT_SHORT]
    name, _, cause = cut[0].error.partition(": ")
    assert (name, cause) == (cut[0].error_name, cut[0].cause)
