"""An engine closed gracefully (a redeploy) at any moment, and a new engine opened on the same
storage, from an adversarial review of closes swept over whole runs; each test failed before
its fix (autojump MockClock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf


async def hold(ctx: Any) -> str:
    return "held"


async def kid_step(ctx: Any) -> str:
    return "kid done"


@pytest.mark.parametrize("queued_by", ["max_running", "delay"])
async def test_a_parent_stored_pending_waits_for_its_child_workflow_registered_a_moment_later(
        autojump_clock: trio.testing.MockClock, queued_by: str) -> None:
    """Queued for a slot (or waiting for its delayed start) when the engine closed, the parent
    is stored ``pending``; the next engine took it up as if it had started there, and its child
    step failed at once with ``UnknownWorkflowError`` (compensating ``hold``) for a workflow the
    service's next module registers a moment later, as a parent stored ``running`` waits."""
    undone: list[str] = []

    async def release(ctx: Any, result: Any) -> None:
        undone.append(result)

    async def block(ctx: Any) -> str:
        await trio.sleep(5)
        return "unblocked"

    blocker = tf.workflow("blocker").step("b", block).build()
    parent = tf.workflow("parent").step("hold", hold, release).child("kid", workflow="kid").build()
    kid = tf.workflow("kid").step("k", kid_step).build()
    adapter = tf.adapters.MemoryAdapter()
    async with tf.open_engine(adapter=adapter, max_running=1) as engine:
        for definition in (blocker, parent, kid):
            engine.register(definition)
        await engine.start("blocker", instance_id="b")
        await engine.start("parent", instance_id="p", **({"delay": 2} if queued_by == "delay" else {}))
        await trio.sleep(1)
        assert (await engine.get_instance("p")).status == "pending"  # type: ignore[union-attr]
    async with tf.open_engine(adapter=adapter, max_running=1) as engine:
        engine.register(blocker)
        engine.register(parent)
        await trio.sleep(10)  # another module registers its workflows a little later
        engine.register(kid)
        done = await engine.wait("p")
    assert (done.status, done.output, undone) == ("completed", "kid done", [])


async def test_a_start_storing_as_the_service_is_cancelled_finds_the_engine_closed(tmp_path: Path) -> None:
    """SIGTERM cancels the service's root nursery while request handlers inside the engine's
    block are in ``start()``, whose SQLite write cannot be cancelled. The engine's actors
    stopped first, and each ``start()`` then started the instance's task in their closed
    nursery: ``RuntimeError: Nursery is closed to new arrivals`` out of trioflow, up through
    ``open_engine``. Each instance is stored; the next engine resumes them all."""
    async def step(ctx: Any) -> int:
        return 1

    wf = tf.workflow("w").step("s", step).build()
    path = tmp_path / "f.db"
    seen: list[BaseException] = []
    escaped: list[BaseException] = []
    try:
        async with trio.open_nursery() as root:
            async def service() -> None:
                async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path), max_running=1) as engine:
                    engine.register(wf)
                    await engine.start("w", instance_id="first")

                    async def handler(i: int) -> None:
                        try:
                            await engine.start("w", instance_id=f"req-{i}")
                        except BaseException as exc:
                            seen.append(exc)
                            raise

                    async with trio.open_nursery() as handlers:
                        for i in range(3):
                            handlers.start_soon(handler, i)
                        await trio.sleep(0)  # the handlers are storing their instances
                        root.cancel_scope.cancel()
                        await trio.sleep_forever()

            root.start_soon(service)
    except BaseException as exc:  # noqa: BLE001 (what escapes is what the test looks at)
        escaped.append(exc)
    strays = [exc for exc in seen if not isinstance(exc, (trio.Cancelled, tf.EngineClosedError))]
    for exc in escaped:
        if isinstance(exc, BaseExceptionGroup):
            rest = exc.split((trio.Cancelled, tf.EngineClosedError))[1]
            strays += [] if rest is None else [rest]
        elif not isinstance(exc, (trio.Cancelled, tf.EngineClosedError)):
            strays.append(exc)
    assert not strays, strays
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        for iid in ("first", "req-0", "req-1", "req-2"):
            assert (await engine.wait(iid)).status == "completed"


async def test_an_end_stored_as_the_engine_closes_reaches_async_callbacks_and_streams(
        autojump_clock: trio.testing.MockClock) -> None:
    """A step returns in the scheduler pass in which the engine's block exits: its end is
    stored, the sync callback and the ``on_complete`` hook saw it, but the event bus had closed
    as the actors were told to stop, not once they had: the async callback and the stream
    never got it, and no later engine emits it again."""
    go = trio.Event()
    seen: list[tuple[str, str]] = []

    async def slow(ctx: Any) -> str:
        await go.wait()
        return "done"

    async def on_complete(result: tf.WorkflowResult) -> None:
        seen.append(("hook", result.status))

    async def async_callback(event: dict[str, Any]) -> None:
        seen.append(("async callback", event["instance_id"]))

    wf = tf.workflow("w").step("s", slow).with_hooks(on_complete=on_complete).build()
    async with trio.open_nursery() as outer:
        async with tf.open_engine(adapter=tf.adapters.MemoryAdapter()) as engine:
            engine.register(wf)
            engine.events.on("workflow.completed", lambda event: seen.append(("sync callback", event["instance_id"])))
            engine.events.on("workflow.completed", async_callback)

            async def reader(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                async with engine.events.subscribe("workflow.completed") as events:
                    task_status.started()
                    async for event in events:
                        seen.append(("stream", event["instance_id"]))

            await outer.start(reader)
            await engine.start("w", instance_id="i")
            await trio.sleep(1)
            go.set()  # the step can return now; the block exits in this same pass
    assert sorted(seen) == [("async callback", "i"), ("hook", "completed"), ("stream", "i"), ("sync callback", "i")]


async def test_an_engine_cancelled_from_outside_still_answers_its_blocks_cleanup(
        autojump_clock: trio.testing.MockClock) -> None:
    """The fix for the test above first closed the whole engine as its actors stopped: a
    shielded cleanup in the block's body (the service shutting down) then got
    ``EngineClosedError`` from ``get_instance()`` and ``signal()`` though the block had not
    ended. Only starting runs stops; reads and stored signals still work."""
    wf = tf.workflow("w").receive("r", signal="go").build()
    seen: list[Any] = []
    with trio.CancelScope() as outer:
        async with tf.open_engine() as engine:
            engine.register(wf)
            await engine.start("w", instance_id="i")
            await trio.sleep(0.5)
            try:
                outer.cancel()  # SIGTERM cancels the service's root
                await trio.sleep(1)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(0.1)  # any await of the cleanup: the actors stop meanwhile
                    seen.append((await engine.get_instance("i")).status)  # type: ignore[union-attr]
                    seen.append(await engine.signal("i", "go"))
    assert seen == ["running", None]
