"""``ctx.error`` in a parallel branch run again by a loop: only the catch of this execution of
the parallel step counts (the branch's lane key is the same in every execution)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


async def test_ctx_error_in_a_parallel_branch_run_again_in_a_loop_sees_only_this_executions_catch(
        autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Any] = []
    rounds = 0

    async def flaky(ctx: tf.WorkflowContext) -> str:
        if rounds == 1:
            raise ValueError("first round fails")
        return "ok"

    async def look(ctx: tf.WorkflowContext) -> None:
        seen.append(ctx.error)

    async def count(ctx: tf.WorkflowContext) -> int:
        nonlocal rounds
        rounds += 1
        return rounds

    wf = (tf.workflow("w")
          .step("count", count)
          .parallel("p", branches=[
              tf.branch("b").step("flaky", flaky, catch=tf.Catch(errors=ValueError, next="look"))
              .step("look", look).build()])
          .choice("again", choices=[tf.when(lambda ctx: rounds < 2, next="count")], default="done")
          .succeed("done")
          .build())
    async with open_test_engine() as engine:
        engine.register(wf)
        inst = await engine.wait(await engine.start("w"))
    assert inst.status == "completed"
    assert seen[0] is not None and seen[0]["error"] == "ValueError"
    assert seen[1] is None, seen
