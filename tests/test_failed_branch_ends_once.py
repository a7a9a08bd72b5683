"""A branch step that failed for good in a wait-all parallel step has ended: an instance taken
up again (a restart while its siblings wait) and then cancelled or timed out, or cancelled while
stored (its workflow not registered yet), does not publish a second end (``Cancelled``) for it."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine, virtual_wall_clock


class Declined(Exception):
    pass


async def declined(ctx: tf.WorkflowContext) -> None:
    raise Declined("no")


KID = tf.workflow("kid").step("no", declined).build()


def _workflow(kind: str) -> tf.WorkflowDefinition:
    failing = {
        "task": tf.branch("a").step("fails", declined).build(),
        "child": tf.branch("a").child("fails", workflow="kid").build(),
        "map": tf.branch("a").map("fails", items=lambda ctx: [1], branch=tf.branch("i").step("no", declined).build())
                               .build(),
    }[kind]
    waits = tf.branch("b").receive("later", signal="go", timeout=3_600).build()
    return tf.workflow("w").with_timeout(600).parallel("both", on_error="wait-all", branches=[failing, waits]).build()


@pytest.mark.parametrize("kind", ["task", "child", "map"])
@pytest.mark.parametrize("end", ["cancel", "timeout", "cancel while stored"])
async def test_a_failed_branch_step_taken_up_and_cut_short_ends_once(
        autojump_clock: trio.testing.MockClock, kind: str, end: str) -> None:
    adapter = tf.adapters.MemoryAdapter()
    clock = virtual_wall_clock()
    events: list[dict[str, Any]] = []
    wf = _workflow(kind)
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.events.on("workflow.step.failed", events.append)
        engine.register(KID)
        engine.register(wf)
        iid = await engine.start("w", None)
        await trio.sleep(5)  # branch a failed for good; b waits
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.events.on("workflow.step.failed", events.append)
        engine.register(KID)
        if end == "cancel while stored":  # (its workflow not registered yet: the cancel is stored in it)
            assert await engine.cancel(iid)
        engine.register(wf)
        await trio.sleep(1)
        if end == "cancel":
            assert await engine.cancel(iid)
        ended = await engine.wait(iid)
    assert ended.status == ("timed_out" if end == "timeout" else "cancelled"), ended.status
    mine = [(e.get("lane", ""), e["step_name"], e["error_name"]) for e in events if e["instance_id"] == iid]
    fails = [m for m in mine if m[1] == "fails"]
    assert len(fails) == 1 and fails[0][2] != "Cancelled", mine
