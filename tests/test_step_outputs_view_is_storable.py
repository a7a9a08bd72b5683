"""``ctx.steps`` (a read-only view) can be stored: seed 003's own pass step,
``transform: (ctx) => ({summary: {input: ctx.input, results: ctx.steps}})``, failed its
instance in an engine with ``UnencodableValueError`` (the wave-1 spec audit of December 5th).
The view is stored as a dict of the outputs as they stood when the step ended, and read back
as that dict, on both adapters and after a restart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import Adapter

from storages import engine_on, finish, storage  # noqa: F401  (a fixture)


def _calc(data: Any) -> dict[str, int]:
    return {"total": data["n"] * 2}


SUMMARY = (tf.workflow("summary").task("calc", job=_calc)
           .pass_("transform", transform=lambda ctx: {"summary": {"input": ctx.input, "results": ctx.steps}})
           .build())


async def test_the_seeds_pass_step_stores_the_outputs_it_summarises(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    async with engine_on(storage()) as engine:
        engine.register(SUMMARY)
        done = await finish(engine, await engine.start("summary", {"n": 21}))
    assert done.status == "completed", (done.status, done.error)
    want = {"summary": {"input": {"n": 21}, "results": {"calc": {"total": 42}}}}
    assert done.output == want
    assert type(done.output["summary"]["results"]) is dict  # a value, not a live view
    async with engine_on(storage()) as engine:  # read back from storage by the next engine
        engine.register(SUMMARY)
        again = await engine.get_instance(done.id)
    assert again is not None and again.output == want


async def test_a_step_returning_ctx_steps_in_a_map_item_stores_the_items_own_view(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # A map item's view shows its own executions only: that is what is stored for it.
    def double(ctx: tf.WorkflowContext) -> int:
        return int(ctx.item) * 2

    wf = (tf.workflow("items").step("first", lambda ctx: "before")
          .map("each", items=lambda ctx: [1, 2],
               branch=tf.branch("item").step("double", double).step("seen", lambda ctx: ctx.steps).build())
          .build())
    async with engine_on(storage()) as engine:
        engine.register(wf)
        done = await finish(engine, await engine.start("items"))
    assert done.status == "completed", (done.status, done.error)
    assert done.output == [{"first": "before", "double": 2}, {"first": "before", "double": 4}]

