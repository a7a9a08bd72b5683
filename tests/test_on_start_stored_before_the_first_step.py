"""An instance whose workflow has an ``on_start`` hook is stored ``pending`` until the hook has
run, then ``running`` with what the hook set, before its first step (README, Hooks): an engine
stopped while the hook runs leaves an instance that never started, and the next engine runs the
hook again, so the first step never runs without what it sets. On trio's MockClock, on both
adapters (SQLite through a real file)."""

from __future__ import annotations

from typing import Any, Callable

import trio
import trio.testing

import trioflow as tf
from storages import storage  # noqa: F401  (a fixture: tests taking it run on both adapters)
from trioflow.testing import open_test_engine

LOG: list[Any] = []


async def _slow_tenant(ctx: tf.WorkflowContext) -> None:
    """Looks the tenant up for 10 s (a slow directory), then sets it."""
    LOG.append("on_start")
    await trio.sleep(10)
    ctx.set("tenant", "acme")


def _tenant(ctx: tf.WorkflowContext) -> Any:
    LOG.append(("first", ctx.get("tenant")))
    return ctx.get("tenant")


SLOW_HOOK = tf.workflow("tenanted").step("first", _tenant).with_hooks(on_start=_slow_tenant).build()


async def test_an_engine_stopped_while_on_start_runs_runs_it_again_before_the_first_step(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Any],
) -> None:
    LOG.clear()
    async with open_test_engine(adapter=storage()) as engine:
        engine.register(SLOW_HOOK)
        await engine.start("tenanted", instance_id="t")
        await trio.sleep(5)  # the hook is halfway through its lookup
        seen = await engine.get_instance("t")
        assert seen is not None and (seen.status, seen.started_at) == ("pending", None)  # (as stored)
    stored = await _stored_status(storage(), "t")
    assert stored == "pending", "stopped before its hook had run: it never started"
    async with open_test_engine(adapter=storage()) as engine:
        engine.register(SLOW_HOOK)
        with trio.fail_after(600):
            done = await engine.wait("t")
    assert (done.status, done.output) == ("completed", "acme")
    assert LOG == ["on_start", "on_start", ("first", "acme")], LOG


async def test_it_is_listed_pending_while_the_hook_runs_then_running_with_what_the_hook_set(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Any],
) -> None:
    LOG.clear()

    async def slow_first(ctx: tf.WorkflowContext) -> Any:
        await trio.sleep(100)
        return ctx.get("tenant")

    definition = tf.workflow("w").step("first", slow_first).with_hooks(on_start=_slow_tenant).build()
    async with open_test_engine(adapter=storage()) as engine:
        engine.register(definition)
        await engine.start("w", instance_id="i")
        await trio.sleep(5)
        assert [i.id for i in await engine.get_instances(status="pending")] == ["i"]
        assert await engine.get_instances(status="running") == []
        await trio.sleep(10)  # the hook is over: the first step runs
        assert [i.id for i in await engine.get_instances(status="running")] == ["i"]
        stored = await engine.adapter.load("i")
        assert stored is not None and stored.status == "running"
        with trio.fail_after(600):
            done = await engine.wait("i")
    assert (done.status, done.output) == ("completed", "acme")
    assert done.started_at is not None and done.started_at >= done.created_at


async def test_a_workflow_without_on_start_is_stored_running_at_once(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Any],
) -> None:
    """The rule costs nothing where there is no hook: no write more, no pending stage."""

    async def slow(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(100)
        return "done"

    async with open_test_engine(adapter=storage()) as engine:
        engine.register(tf.workflow("plain").step("s", slow).build())
        await engine.start("plain", instance_id="p")
        stored = await engine.adapter.load("p")
        assert stored is not None and stored.status == "running"
        await engine.cancel("p")


async def _stored_status(adapter: Any, instance_id: str) -> str | None:
    await adapter.open()
    try:
        stored = await adapter.load(instance_id)
        return None if stored is None else stored.status
    finally:
        await adapter.close()
