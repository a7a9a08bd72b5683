"""The engine's lifecycle (an adversarial review, a test each): leaving ``open_engine`` while
things are in flight, registration after open, and open_engine's options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine, virtual_wall_clock


async def test_an_event_stream_read_in_another_task_ends_when_the_engine_closes(
        autojump_clock: trio.testing.MockClock) -> None:
    """A task reading ``engine.events.subscribe(...)`` (an SSE endpoint, a metrics pump) beside
    the engine is never told the engine closed: its ``async for`` waits for ever, so the
    program's nursery never exits. Async callbacks (``events.on``) get their queues closed at
    close (``close_queues``), but subscription streams are left open, and ``subscribe()`` on a
    closed engine hands out a stream that never yields nor ends (``on(async_cb)`` raises
    ``EngineClosedError`` there). The stream should end (or raise ``EngineClosedError``) when
    the engine closes, as every other waiter is released (README "The engine")."""
    outcome: list[str] = []
    async with trio.open_nursery() as outer:
        async with open_test_engine() as engine:
            engine.register(tf.workflow("w").step("a", lambda ctx: 1).build())

            async def reader() -> None:
                with trio.move_on_after(10_000):
                    try:
                        async with engine.events.subscribe("workflow.*") as events:
                            async for _ in events:
                                pass
                        outcome.append("ended")
                    except tf.EngineClosedError:
                        outcome.append("EngineClosedError")
                    return
                outcome.append("hung")

            outer.start_soon(reader)
            await engine.wait(await engine.start("w"))
    assert outcome in (["ended"], ["EngineClosedError"]), outcome

    # And a stream asked of a closed engine.
    with trio.move_on_after(10_000) as scope:
        try:
            async with engine.events.subscribe("workflow.*") as events:
                async for _ in events:
                    pass
        except tf.EngineClosedError:
            pass
    assert not scope.cancelled_caught, "subscribe() on a closed engine gave a stream that never ends"


async def slow(data: Any) -> str:
    await trio.sleep(100)
    return "slow"


async def fast(data: Any) -> str:
    return "fast"


async def test_instances_held_for_missing_jobs_resume_once_a_replacing_definition_needs_none(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A deploy registers the old release of a workflow whose jobs (by name) it no longer
    registers: its unfinished instances are held (README "Storage and durability"). It then
    registers the new release with ``replace=True``, whose steps need no registered job. The
    held instances should resume now ("held back and resumes as soon as they are"; "A replaced
    definition is used by ... instances taken up from storage"); they stay held until some
    unrelated job happens to be registered, and ``wait()`` raises ``InstanceNotLiveError``
    saying they wait for missing jobs: "(missing: )", none. Cause: ``Engine.register`` never
    looks at ``_held`` (only ``_jobs_registered`` does)."""
    db = tmp_path / "f.db"
    clock = virtual_wall_clock()
    v1 = tf.workflow("w").task("a", job="slow").task("b", job="fast").build()
    v2 = tf.workflow("w").task("a", job=slow).task("b", job=fast).build()
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock) as engine:
        engine.jobs.register("slow", slow)
        engine.jobs.register("fast", fast)
        engine.register(v1)
        iid = await engine.start("w")
        await trio.sleep(1)                      # in step a
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock) as engine:
        engine.register(v1)                      # its jobs are not registered here: held
        await trio.sleep(1)
        engine.register(v2, replace=True)        # needs no registered job
        await trio.sleep(1)
        try:
            with trio.fail_after(1000):
                instance = await engine.wait(iid)
        except tf.InstanceNotLiveError as exc:
            raise AssertionError(f"still held after the replacing definition was registered: {exc}") from None
    assert instance.status == "completed", instance.status


async def never(data: Any) -> str:
    await trio.sleep(10_000)
    return "never"


async def quick(data: Any) -> str:
    return "quick"


def _parent_and_child() -> list[tf.WorkflowDefinition]:
    child = tf.workflow("c").task("cs", job=never).build()
    parent = (tf.workflow("p").task("a", job=quick, compensate=quick)
              .parallel("par", branches=[tf.branch("x").child("kid", workflow="c").build(),
                                         tf.branch("y").task("ys", job=never).build()])
              .build())
    blocker = tf.workflow("b").task("bs", job=never).build()
    return [blocker, child, parent]


async def test_a_cancel_of_a_queued_parent_in_flight_when_the_engine_closes_ends_cleanly(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """``cancel()`` of a resumed parent queued for a ``max_running`` slot, whose parallel branch
    waits on a child, stores the cancel, then starts tasks to cancel the children. When the
    engine closes while that checkpoint is in flight, the call raises trio's
    ``RuntimeError: Nursery is closed to new arrivals`` (escaping into the caller's nursery)
    instead of returning ``True`` or raising ``EngineClosedError``. Cause:
    ``Engine.cancel`` (the queued-with-records branch) calls ``self._supervisor.start_soon``
    after the ``await run.persist()`` without looking at ``self._closed``. The stored cancel
    must still hold: the next engine ends the parent ``cancelled``."""
    db = tmp_path / "f.db"
    clock = virtual_wall_clock()
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock) as engine:
        for definition in _parent_and_child():
            engine.register(definition)
        pid = await engine.start("p")
        await trio.sleep(5)                      # a done; the child runs in the parent's slot
    outcome: list[str] = []
    async with trio.open_nursery() as outer:
        async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock,
                                    max_running=1) as engine:
            blocker, child, parent = _parent_and_child()
            engine.register(blocker)
            await engine.start("b")              # holds the only slot
            await trio.sleep(1)
            engine.register(child)
            engine.register(parent)              # the parent is resumed and queued for a slot
            await trio.sleep(1)

            async def go() -> None:
                try:
                    outcome.append(repr(await engine.cancel(pid)))
                except tf.EngineClosedError:
                    outcome.append("EngineClosedError")
                except Exception as exc:
                    outcome.append(f"{type(exc).__name__}: {exc}")

            outer.start_soon(go)
            await trio.testing.wait_all_tasks_blocked()  # its checkpoint is in flight as the engine closes
    assert outcome in (["True"], ["EngineClosedError"]), outcome
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock) as engine:
        for definition in _parent_and_child():
            engine.register(definition)
        with trio.fail_after(1000):
            assert (await engine.wait(pid)).status == "cancelled"
            # Its running child is cancelled too, by this engine: the one that stored the cancel
            # closed before it could (the child ran on for good).
            assert (await engine.wait(f"{pid}/par/x/kid#1")).status == "cancelled"


async def test_open_engine_refuses_a_clock_that_is_not_callable_and_a_bool_max_running() -> None:
    """``open_engine(clock=123)`` (a timestamp passed where the clock function goes) opens on a
    MemoryAdapter without complaint; then every ``start`` raises a bare ``TypeError: 'int'
    object is not callable``, and the waker task crashes (logged as an actor crash) as soon as
    storage holds a waiting instance, so its timers are never woken. (On SQLite the
    open fails with that TypeError.) ``max_running=True`` is taken as 1 (``bool`` passes the
    ``isinstance(int)`` check), where every other count and duration refuses a bool. Both
    should be refused by ``open_engine`` with ``InvalidArgumentError`` before anything opens,
    as ``max_running=0`` and ``storage_retry_for=-1`` are. Cause: ``open_engine`` validates
    neither."""
    for options in ({"clock": 123}, {"max_running": True}):
        try:
            async with tf.open_engine(**options):
                pass
        except tf.InvalidArgumentError:
            continue
        raise AssertionError(f"open_engine({options}) was accepted")
