"""A map whose items each wait for their own child: a child's end wakes the item that waits for
it, not every item (each used to wake all of them: with children ending one after another, the
scheduler's work grew with the square of the items in flight; 4,000 items took 260 s of CPU)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf


class TaskSteps(trio.abc.Instrument):
    """Counts the steps trio's scheduler runs: each time a task wakes and runs."""

    def __init__(self) -> None:
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


async def work(ctx: Any) -> None:
    await trio.sleep(1 + ctx.input)  # one child after another ends


def batch(items: int) -> tf.WorkflowDefinition:
    return (tf.workflow("batch")
            .map("each", items=lambda ctx: list(range(items)),
                 branch=tf.branch("item").child("run", workflow="job", input=lambda ctx: ctx.item).build())
            .build())


async def _steps_to_finish(items: int) -> int:
    steps = TaskSteps()
    async with tf.open_engine() as engine:
        engine.register(tf.workflow("job").step("work", work).build())
        engine.register(batch(items))
        iid = await engine.start("batch")
        trio.lowlevel.add_instrument(steps)
        try:
            assert (await engine.wait(iid)).status == "completed"
        finally:
            trio.lowlevel.remove_instrument(steps)
    return steps.count


def test_the_scheduler_work_per_item_does_not_grow_with_the_items_in_flight() -> None:
    few, many = (trio.run(_steps_to_finish, n, clock=trio.testing.MockClock(autojump_threshold=0))
                 for n in (100, 400))
    # Four times the items: four times the task steps, give or take (it was 14.6 times).
    assert many <= 4.5 * few, (few, many)
