"""A child step taken up again finds its child stored under the workflow an earlier release
named and waits for it (the execution keeps the child it started), but only its own child: an
instance a caller started under that id (ids may hold '/') is not adopted, and the step fails
with ``InstanceIdConflictError`` as before. A first fix accepted any conflict: the parent
waited for ever on a stranger, and cancelling it compensated the caller's instance (the
adversarial review of c508bd6, December 5th)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import Adapter

from storages import engine_on, finish, storage  # noqa: F401


async def _taken_by_a_caller(storage: Callable[[], Adapter], kid: tf.WorkflowDefinition) -> str:
    """Instance "p" of a parent whose child step stored its start and stopped before it stored
    its child; then a caller starts (and finishes) an instance of ``kid`` under that child's id.
    Returns the id."""
    parent = tf.workflow("parent").child("c", workflow="kid").build()
    adapter = storage()
    create = adapter.create
    stalled = trio.Event()

    async def stalling_create(instance_id: str, workflow_name: str, status: Any, **kw: Any) -> bool:
        if workflow_name == "kid":  # the parent stops between storing the step's start and its child
            stalled.set()
            await trio.sleep_forever()
        return await create(instance_id, workflow_name, status, **kw)

    adapter.create = stalling_create  # type: ignore[method-assign]
    async with engine_on(adapter) as engine:
        engine.register(kid)
        engine.register(parent)
        await engine.start("parent", None, instance_id="p")
        await stalled.wait()
        await trio.sleep(1)
        stands = await engine.get_instance("p")
        assert stands is not None and stands.waiting is not None, stands
        child_id: str = stands.waiting["child"]
    adapter.create = create  # type: ignore[method-assign]
    async with engine_on(storage()) as engine:  # a caller takes that id (ids may hold '/')
        engine.register(kid)
        await engine.start("kid", {"mine": True}, instance_id=child_id)
        foreign = await finish(engine, child_id)
        assert foreign.status == "completed"
    return child_id


def _registered(engine: tf.Engine, kid: tf.WorkflowDefinition) -> None:
    engine.register(kid)
    engine.register(tf.workflow("parent").child("c", workflow="kid").build())


async def test_resumed_child_step_does_not_adopt_an_instance_a_caller_started_under_its_id(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    kid = tf.workflow("kid").wait("nap", seconds=10).build()
    await _taken_by_a_caller(storage, kid)
    async with engine_on(storage()) as engine:
        _registered(engine, kid)
        with trio.move_on_after(100_000):
            done = await engine.wait("p")
            assert done.status == "failed" and done.error_name == "InstanceIdConflictError", (done.status, done.error)
            return
        stands = await engine.get_instance("p")
        raise AssertionError(f"parent still {stands.status if stands else None} after 100000 s, waiting on"
                             f" {stands.waiting if stands else None}: it adopted an instance that is not its child")


async def test_cancelling_that_parent_leaves_the_callers_instance_alone(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    undone: list[str] = []

    async def work(ctx: tf.WorkflowContext) -> str:
        return "done"

    async def undo(ctx: tf.WorkflowContext, r: str) -> None:
        undone.append(r)

    kid = tf.workflow("kid").step("work", work, undo).wait("nap", seconds=10).build()
    child_id = await _taken_by_a_caller(storage, kid)
    async with engine_on(storage()) as engine:
        _registered(engine, kid)
        await trio.sleep(100)
        await engine.cancel("p")
        await finish(engine, "p")
        mine = await engine.get_instance(child_id)
    assert mine is not None and mine.status == "completed" and undone == [], (mine.status if mine else None, undone)
