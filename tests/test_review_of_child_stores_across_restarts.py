"""From a review of child workflows whose store is in flight when their parent's child step
is cut (cancel(), workflow timeout), with an engine restart in between (docs/fanout.md,
"Links" and "Cancel"; SPEC §14: "Cancelling the parent cancels its running children"). Each
failed until the commit that added this file (a store cut as the engine closes stores the
cancel in the child it made).

Storage is slowed only by adapters that subclass the real ones (MemoryAdapter, SQLiteAdapter
on a tmp_path file) and sleep in ``create`` of a child; time is trio's MockClock."""
from __future__ import annotations

import functools

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine

STORE = 5.0  # how long storing a child takes


def _slow_child_create(base: type) -> type:
    class SlowChildCreate(base):  # type: ignore[misc, valid-type]
        async def create(self, instance_id, *args, parent_id=None, **kwargs):
            if parent_id is not None:
                await trio.sleep(STORE)
            return await super().create(instance_id, *args, parent_id=parent_id, **kwargs)
    return SlowChildCreate


def _adapters(kind: str, tmp_path):
    """A factory of adapters on one store (the same object for memory, the same file for SQLite)."""
    if kind == "memory":
        one = _slow_child_create(tf.adapters.MemoryAdapter)()
        return lambda: one
    return lambda: _slow_child_create(tf.adapters.SQLiteAdapter)(str(tmp_path / "cut.db"))


def _definitions(log: list, timeout: float | None = None, on_start: bool = False):
    async def charge(ctx):
        log.append(("charge", trio.current_time()))
        return "charged"

    async def refund(ctx, result):
        log.append(("refund", trio.current_time()))

    async def hold(ctx):
        return "held"

    async def release(ctx, result):
        log.append(("release", trio.current_time()))

    async def started(ctx):
        log.append(("on_start", trio.current_time()))

    card = tf.workflow("card").step("charge", charge, refund)
    card = (card.with_hooks(on_start=started) if on_start else card).build()
    parent = tf.workflow("parent").step("hold", hold, release)
    if timeout is not None:
        parent = parent.with_timeout(timeout)
    return card, parent.child("pay", workflow="card").build()


async def _after_a_restart(adapter, card, parent):
    """The next engine on the same storage: the parent's end, and its child's view a minute on."""
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(card)
        engine.register(parent)
        with trio.fail_after(1000):
            done = await engine.wait("p")
        await trio.sleep(60)
        return done, await engine.get_instance("p/pay#1")


def _run(fn):
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("on_start", [False, True])
def test_child_stored_across_a_restart_after_its_parent_was_cancelled_runs_no_step(kind, on_start, tmp_path):
    """A user's order saga starts a child that charges a card; storing the child is slow (5 s).
    At 0.1 s the user calls `engine.cancel(order)`; at 1 s the service shuts down (the engine's
    block is left) and starts again on the same store. `cancel()` answers True.
    docs/fanout.md: a cancel of the parent while its child is being stored "lets the store
    finish first ... and the child it makes is cancelled before its first step"; the brief of
    the fix: the child must never run its first step after its parent was cancelled. A
    Temporal user expects a cancelled workflow never to start a new side effect in a child.

    Was: the close left the child stored `running` and the parent's cut is forgotten:
    the next engine resumes the child, which charges the card at t=5 s (after cancel()
    returned True), and the parent then undoes it as a unit (`refund`); the parent ends
    `cancelled` with `compensated_steps == ('pay', 'hold')` and the child `compensated`."""
    log: list = []
    card, parent = _definitions(log, on_start=on_start)  # (with a hook: stored pending until it ran)
    adapter = _adapters(kind, tmp_path)
    said: list = []

    async def main():
        async with trio.open_nursery() as nursery:
            async with open_test_engine(adapter=adapter()) as engine:
                engine.register(card)
                engine.register(parent)
                await engine.start("parent", "x", instance_id="p")
                await trio.sleep(0.1)               # the child's store is in flight

                async def cancel():
                    said.append(await engine.cancel("p"))
                nursery.start_soon(cancel)
                await trio.sleep(0.9)               # the service shuts down at 1 s
        return await _after_a_restart(adapter(), card, parent)

    done, child = _run(main)
    assert said == [True]
    assert done.status == "cancelled"
    assert [entry for entry in log if entry[0] in ("charge", "on_start")] == [], \
        f"the child ran its first step (or its on_start hook) after its parent's cancel() said True: {log}"
    assert child is None or child.status == "cancelled"
    assert done.compensated_steps == ("hold",)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_child_stored_across_a_restart_after_its_parent_timed_out_runs_no_step(kind, tmp_path):
    """As above, with the parent's `with_timeout(2)` instead of a cancel: the parent's
    workflow timeout comes at 2 s while its child is still being stored (5 s); the service
    shuts down at 3 s and starts again. Without the restart the child is cancelled before its
    first step (tests/test_review_of_child_stores_cut.py); a Step Functions user expects an
    execution that timed out to start no new work in a nested execution, across a restart
    or not.

    Was: the parent is still stored `running` at the close (its timeout waits for the
    store); the next engine resumes the child, which charges the card at t=5 s, three seconds
    after its parent timed out, and the parent then undoes it as a unit (`pay` in its
    `compensated_steps`, the child `compensated`)."""
    log: list = []
    card, parent = _definitions(log, timeout=2)
    adapter = _adapters(kind, tmp_path)

    async def main():
        async with open_test_engine(adapter=adapter()) as engine:
            engine.register(card)
            engine.register(parent)
            await engine.start("parent", "x", instance_id="p")
            await trio.sleep(3)                     # timed out at 2 s; the service shuts down at 3 s
        return await _after_a_restart(adapter(), card, parent)

    done, child = _run(main)
    assert done.status == "timed_out"
    assert [entry for entry in log if entry[0] == "charge"] == [], \
        f"the child ran its first step after its parent timed out: {log}"
    assert child is None or child.status == "cancelled"
    assert done.compensated_steps == ("hold",)


@pytest.mark.parametrize("kind", ["memory"])  # (SQLite's file closes with the engine, the store unmade)
def test_an_instance_cancelled_as_it_is_stored_runs_no_step_after_a_restart(kind, tmp_path):
    """The same for an instance of its own: ``start()`` is slow to store it (5 s), a
    ``cancel()`` of it comes meanwhile and waits for the store, and the service shuts down
    before the store is over. The next engine ends it cancelled, its first step never run."""
    log: list = []
    card, _ = _definitions(log)

    class SlowCreate(tf.adapters.MemoryAdapter if kind == "memory" else tf.adapters.SQLiteAdapter):  # type: ignore[misc]
        async def create(self, instance_id, *args, **kwargs):
            await trio.sleep(STORE)
            return await super().create(instance_id, *args, **kwargs)

    one = SlowCreate() if kind == "memory" else None

    def adapter():
        return one if one is not None else SlowCreate(str(tmp_path / "cut.db"))

    said: list = []

    async def main():
        async with trio.open_nursery() as nursery:
            async with open_test_engine(adapter=adapter()) as engine:
                engine.register(card)
                async def call(fn, *args, **kwargs):
                    try:
                        said.append(await fn(*args, **kwargs))
                    except tf.EngineClosedError as exc:
                        said.append(type(exc).__name__)

                nursery.start_soon(functools.partial(call, engine.start, "card", "x", instance_id="c"))
                await trio.sleep(0.1)
                nursery.start_soon(call, engine.cancel, "c")
                await trio.sleep(0.9)
        async with open_test_engine(adapter=adapter()) as engine:
            engine.register(card)
            with trio.fail_after(1000):
                return await engine.wait("c")

    done = _run(main)
    assert said == ["EngineClosedError", "EngineClosedError"], said  # (the store ended after the close)
    assert done.status == "cancelled"
    assert [entry for entry in log if entry[0] == "charge"] == [], log
