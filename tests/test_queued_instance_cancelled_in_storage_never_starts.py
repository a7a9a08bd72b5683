"""A queued (``pending``) instance whose cancel is stored in its row before it ever ran (no
engine ran its workflow then) never starts: it ends ``cancelled`` with no ``started_at``, no
``workflow.started`` and no ``on_start``, as one cancelled while it queued in a running engine
does. (It used to get a start time as the next engine admitted it to compensate.) On both
adapters, SQLite on a real file."""

from __future__ import annotations

from typing import Any, Callable

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import Adapter
from trioflow.testing import open_test_engine

from storages import storage  # noqa: F401  (a fixture: tests taking it run on both adapters)


async def _long(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(100)
    return "done"


async def test_a_queued_instance_cancelled_in_storage_ends_without_having_started(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    hooks: list[str] = []
    wf = tf.workflow("w").step("a", _long).with_hooks(on_start=lambda ctx: hooks.append(ctx.metadata.id)).build()
    async with open_test_engine(adapter=storage(), max_running=1) as engine:
        engine.register(wf)
        await engine.start("w", instance_id="first")
        await engine.start("w", instance_id="queued")  # no slot: stored pending, and stays so
        await trio.sleep(1)
    assert hooks == ["first"]
    started: list[dict[str, Any]] = []
    async with open_test_engine(adapter=storage(), resume=False) as engine:
        engine.events.on("workflow.started", started.append)
        # Its workflow is not registered here yet: the cancel is stored in its row.
        assert await engine.cancel("queued") is True
        engine.register(wf)
        await engine.resume()
        with trio.fail_after(1000):
            done = await engine.wait("queued")
            first = await engine.wait("first")
    assert (done.status, done.started_at, done.history) == ("cancelled", None, ())
    assert done.completed_at is not None and done.completed_at >= done.created_at
    assert [e["instance_id"] for e in started] == [] and hooks == ["first"]
    assert first.status == "completed"  # (resumed and run on: the cancel was "queued"'s alone)
