"""A fail-fast parallel step whose failure a restart takes up fails the instance as the live
failure did: at the branch step that failed first."""

from __future__ import annotations

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock



async def test_a_fail_fast_parallel_failure_taken_up_after_a_restart_names_the_branch_step_that_failed(
        autojump_clock: trio.testing.MockClock) -> None:
    """Live, a fail-fast parallel step fails as the branch step that failed first did
    (``failed_step``); a restart between storing the parallel's failure and deciding on it
    must give the instance the same ``failed_step``, not the parallel step's name."""
    class Declined(Exception):
        pass

    async def bad(ctx: tf.WorkflowContext) -> None:
        raise Declined("card declined")

    async def fine(ctx: tf.WorkflowContext) -> str:
        return "ok"

    async def on_step_failed(step_name: str, error: BaseException, ctx: tf.WorkflowContext) -> None:
        if step_name == "p":
            await trio.sleep_forever()  # the engine closes here: the parallel's failure is stored

    def definition(hooked: bool) -> tf.WorkflowDefinition:
        builder = tf.workflow("w").parallel("p", branches=[
            tf.branch("a").step("bad", bad).build(), tf.branch("b").step("fine", fine).build()])
        return (builder.with_hooks(on_step_failed=on_step_failed) if hooked else builder).build()

    adapter = MemoryAdapter()
    clock = virtual_wall_clock()
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(definition(hooked=False))
        live = await engine.wait(await engine.start("w"))
    assert (live.status, live.failed_step) == ("failed", "bad")
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(definition(hooked=True))
        iid = await engine.start("w")
        await trio.sleep(1)
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(definition(hooked=False))
        with trio.fail_after(100):
            resumed = await engine.wait(iid)
    assert (resumed.status, resumed.failed_step, resumed.error_name) == ("failed", "bad", "Declined")
