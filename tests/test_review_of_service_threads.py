"""From a review of trioflow as the orchestrator a threaded, highly concurrent service embeds:
calls made from other threads / trio runs, and misuse errors being trioflow's own. Both tests
failed until the commit that added this file (an engine refuses a call from another trio run
with ``WrongTrioRunError`` before doing anything; an ``engine_portal`` called after its block
raises ``EngineClosedError``). (Many interleavings held; only the failures are kept.)
"""

from __future__ import annotations

import functools
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import engine_portal


async def _one(ctx: tf.WorkflowContext) -> int:
    return 1


_wf = tf.workflow("w").step("a", _one).build()


async def test_start_from_another_trio_run_is_refused_and_stores_nothing(
        autojump_clock: trio.testing.MockClock) -> None:
    """A service opens the engine in its main trio run; a worker thread (a sync request
    handler, a job queue consumer) calls ``trio.run(engine.start, ...)`` on it instead of going
    through ``trio.from_thread.run`` with the engine's token.

    Expected (SPEC §8: misuse is "a clear error of trioflow's own exception hierarchy, raised to
    the caller, with nothing half-written to the adapter"; a Temporal or DBOS client is either
    usable from any thread or refuses at once): the call raises a ``TrioflowError`` saying the
    engine belongs to another trio run (and how to call it: ``trio.from_thread.run``), and no
    instance ``order-1`` is stored.

    Was: the row is created (``status="running"``, step ``a`` "running"), then the call
    dies either with ``TrioInternalError`` ("internal error in Trio - please file a bug!") or
    with ``EngineClosedError`` claiming "the engine closed while instance 'order-1' was being
    stored" although the engine is open. Nothing ever runs that instance in this engine:
    ``wait()`` on it hangs, an idempotent ``start`` of the same id returns it without running
    it, and leaving the engine's block hangs (bounded here by ``move_on_after``)."""
    outcome: dict[str, object] = {}
    with trio.move_on_after(1000):
        async with tf.open_engine() as engine:
            engine.register(_wf)

            def handler_thread() -> None:
                try:
                    outcome["result"] = trio.run(functools.partial(
                        engine.start, "w", {"order": 1}, instance_id="order-1"))
                except BaseException as exc:  # what the handler sees
                    outcome["error"] = exc

            await trio.to_thread.run_sync(handler_thread)
            stored = await engine.get_instance("order-1")
            error = outcome.get("error")
            assert isinstance(error, tf.TrioflowError) and not isinstance(error, tf.EngineClosedError), \
                f"expected trioflow's own error naming the wrong trio run, got {error!r} / {outcome.get('result')!r}"
            assert stored is None, f"a refused start must store nothing; stored {stored.status!r}"


def test_portal_call_after_the_block_raises_trioflow_error() -> None:
    """A test (or a sync service using the kit's ``engine_portal`` as its thread bridge) keeps
    the portal and calls it after the ``with`` block closed the engine.

    Expected (README, The engine: after the engine closes, ``start``, ``get_instance(s)``, ...
    "raise ``EngineClosedError``"; misuse errors are trioflow's own and name what is wrong):
    ``EngineClosedError`` (a ``TrioflowError``) saying the portal's engine is closed.

    Was: ``trio.RunFinishedError: run() has exited`` leaks out of ``EnginePortal.call`` (and
    ``advance``, ``restart``, ``now``): trio's internals, not naming the engine or the portal."""
    with engine_portal(setup=lambda engine: engine.register(_wf)) as portal:
        iid = portal.call(lambda engine: engine.start("w"))
    try:
        portal.call(lambda engine: engine.get_instance(iid))
    except BaseException as exc:  # noqa: BLE001 (what leaks out is the point)
        assert isinstance(exc, tf.EngineClosedError), f"got {type(exc).__module__}.{type(exc).__name__}: {exc}"
    else:
        raise AssertionError("a portal call after its block ended returned")


async def test_a_thread_calls_the_engine_through_its_trio_token(autojump_clock: trio.testing.MockClock) -> None:
    """What the refusal above tells the user to do: a worker thread calls
    ``trio.from_thread.run(engine.start, ..., trio_token=engine.trio_token)``; the instance
    runs, and the thread can wait for it the same way."""
    async with tf.open_engine() as engine:
        engine.register(_wf)

        def handler_thread() -> tf.WorkflowInstance:
            iid = trio.from_thread.run(functools.partial(engine.start, "w", instance_id="order-2"),
                                       trio_token=engine.trio_token)
            return trio.from_thread.run(engine.wait, iid, trio_token=engine.trio_token)

        done = await trio.to_thread.run_sync(handler_thread)
    assert (done.id, done.status, done.output) == ("order-2", "completed", 1)


async def test_a_thread_subscribes_through_run_sync_and_unsubscribes(autojump_clock: trio.testing.MockClock) -> None:
    """README, Hosting: the engine's plain methods go through ``trio.from_thread.run_sync``
    (``trio.from_thread.run`` of ``events.on``, a plain function, raises TypeError after trio
    has called it: the subscription made and its unsubscribe lost, from a review of the docs).
    A thread subscribes, sees an instance complete, unsubscribes, and sees no more."""
    async with tf.open_engine() as engine:
        engine.register(_wf)
        seen: list[str] = []

        def subscribe() -> Any:
            return trio.from_thread.run_sync(engine.events.on, "workflow.completed",
                                             lambda event: seen.append(event["instance_id"]),
                                             trio_token=engine.trio_token)

        unsubscribe = await trio.to_thread.run_sync(subscribe)
        await engine.wait(await engine.start("w", instance_id="one"))
        await trio.to_thread.run_sync(lambda: trio.from_thread.run_sync(unsubscribe, trio_token=engine.trio_token))
        await engine.wait(await engine.start("w", instance_id="two"))
    assert seen == ["one"]
