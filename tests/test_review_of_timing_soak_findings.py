"""Found by the timing soak (tests/test_review_of_timing_soak.py, engine B, ``max_running=2``):
"slotparent" instances timed out 2.7-4.2 s late in the last process, and in one run three of
them never ended at all (the final process's ``fail_after(60)`` fired; storage held each parent
``running`` with its timeout decided and its child ``running``, cancelled, ``started_at``
``None``, and the two slots taken by the parents themselves).

Both come from a child that a restart finds *going back already* (its cancel, decided when its
parent timed out, stored before the kill) and that the next engine queues for a ``max_running``
slot. The parent, resumed compensating, cancels the children it waited on and waits for their
ends (``EngineChildren.cancel``); ``Engine.cancel`` of such a child returns at once
("Going back already"), leaving it queued: the parent waits, in a slot or running with none, for
a child waiting for a slot. A queued child cancelled while it goes forward is started at once
instead (``Engine._cancel_queued`` / ``_starts_to_cancel``: "the child of a parent here, which
waits for its end holding a slot it would wait for"). README, "The engine": "a parent that must
cancel its children (its timeout ...) runs at once, as a cancelled instance does"; docs/fanout.md:
"Waiting for a slot, it could wait behind its own family for ever".
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow._children import EngineChildren
from trioflow.testing import open_test_engine, virtual_wall_clock

#: The child's first compensation hangs (the engine closes during it), later ones return.
_undos: list[str] = []


async def _quick(ctx: Any) -> str:
    return "ok"


async def _release(ctx: Any, result: Any) -> None:
    pass


async def _hangs(ctx: Any) -> None:
    await trio.sleep(10_000)


async def _undo_k1(ctx: Any, result: Any) -> None:
    _undos.append("k1")
    if len(_undos) == 1:
        await trio.sleep(10_000)


def _hog_for(seconds: float) -> Any:
    async def hog(ctx: Any) -> str:
        await trio.sleep(seconds)
        return "hog"
    return hog


def _kid() -> tf.WorkflowDefinition:
    return tf.workflow("kid").step("k1", _quick, _undo_k1).step("k2", _hangs).build()


async def _child_going_back_and_parent(
        adapter: tf.adapters.MemoryAdapter, clock: Any, parent: tf.WorkflowDefinition) -> None:
    """Engine 1: the parent P runs step ``a``, starts its child (P/kid#1), which runs k1 and hangs
    in k2. P times out (5 s) and cancels the child, whose compensation of k1 hangs; the engine
    closes then. Stored: P compensating, its child compensating (cancelled), neither ended."""
    _undos.clear()
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(_kid())
        engine.register(parent)
        await engine.start(parent.name, instance_id="P")
        await trio.sleep(20)
        assert _undos == ["k1"]
    kid = await adapter.load("P/kid#1")
    top = await adapter.load("P")
    assert kid is not None and top is not None
    assert (kid.status, top.status) == ("running", "running")


async def _restart(adapter: tf.adapters.MemoryAdapter, clock: Any, hog_seconds: float, wait: float) -> tuple[str, str]:
    """Engine 2, one slot, held for ``hog_seconds`` by another instance: the child is resumed
    (queued for the slot), then its parent. The statuses of both ``wait`` seconds later."""
    async with open_test_engine(adapter=adapter, clock=clock, max_running=1) as engine:
        engine.register(tf.workflow("hog").step("hog", _hog_for(hog_seconds)).build())
        await engine.start("hog", instance_id="H")  # takes the only slot
        engine.register(_kid())
        await trio.sleep(0.01)  # (its resume runs in the background: queued now)
        engine.register(_parent())
        with trio.move_on_after(wait):
            await engine.wait("P")
        top, kid = await engine.get_instance("P"), await engine.get_instance("P/kid#1")
        assert top is not None and kid is not None
        return top.status, kid.status


def _parent() -> tf.WorkflowDefinition:
    return tf.workflow("parent").with_timeout(5).step("a", _quick, _release).child("kid", workflow="kid").build()


async def test_a_parent_past_its_deadline_does_not_wait_for_a_slot_for_its_child_cancelled_before_a_restart(
        autojump_clock: trio.testing.MockClock) -> None:
    """The parent (``with_timeout(5)``) timed out, its child was cancelled and was compensating
    when the engine stopped. The next engine has one slot, held for 1000 s by another instance,
    and queues the child for it; the parent, past its deadline, runs at once (``_queue``'s
    deadline watch). Expected: the parent cancels its child at once and both end (``timed_out``,
    ``cancelled``), as when the child is cancelled going forward. Observed: both stay
    ``running`` until the slot frees, 1000 s later (the soak: "w3-sp (slotparent) timed out
    4.24 s after its deadline had passed in a running engine")."""
    adapter, clock = tf.adapters.MemoryAdapter(), virtual_wall_clock()
    await _child_going_back_and_parent(adapter, clock, _parent())
    statuses = await _restart(adapter, clock, hog_seconds=1000, wait=60)
    assert statuses == ("timed_out", "cancelled"), f"60 s after the restart (parent, child): {statuses}"


async def test_a_parent_past_its_deadline_and_its_cancelled_child_do_not_deadlock_on_max_running(
        autojump_clock: trio.testing.MockClock) -> None:
    """The same with the slot held for 10 s only. Expected: both end then at the latest.
    Observed: never: the parent launched past its deadline counts as running (2 of 1), so the
    slot that frees is still not free for the child, and the parent waits for the child for
    ever (the soak's last process: three slotparents that never ended, ``fail_after(60)``)."""
    adapter, clock = tf.adapters.MemoryAdapter(), virtual_wall_clock()
    await _child_going_back_and_parent(adapter, clock, _parent())
    statuses = await _restart(adapter, clock, hog_seconds=10, wait=10_000)
    assert statuses == ("timed_out", "cancelled"), f"10,000 s after the restart (parent, child): {statuses}"


# -- a parent taken up compensating, its child still going forward -----------------------------

class _CancelsNothing(EngineChildren):
    """The engine's children, while engine 1 closes: a parent's cancel of its child never gets
    through (as an engine killed right after storing the parent's cancel)."""

    __slots__ = ()

    async def cancel(self, child_id: str, bound: float | None, *, undo: bool = True) -> tf.WorkflowInstance | None:
        while not self.closing:  # (shielded: it returns once the engine closes)
            await trio.sleep(0.1)
        return None


async def test_a_parent_taken_up_compensating_cancels_its_running_child_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    """Engine 1 stores the parent's cancel (going back) but never gets to cancel its child, which
    hangs in k2. Engine 2 (``max_running=1``) resumes the child first: it runs, in the only slot,
    for 10,000 s. The parent, taken up compensating with a child it never cancelled, must run at
    once and cancel it, as a parent whose child's failure fails it fast does (README: "a parent
    that has to cancel the children it waits on runs at once, taking no slot of its own"):
    queued for the slot, it waits behind its own child."""
    adapter, clock = tf.adapters.MemoryAdapter(), virtual_wall_clock()
    kid = tf.workflow("kid").step("k1", _quick, _release).step("k2", _hangs).build()
    parent = tf.workflow("p").step("a", _quick, _release).child("kid", workflow="kid").build()
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(kid)
        engine.register(parent)
        await engine.start("p", instance_id="P")
        await trio.sleep(5)  # the child hangs in k2
        children: Any = engine._children  # type: ignore[attr-defined]
        children.__class__ = _CancelsNothing
        assert await engine.cancel("P") is True
        await trio.sleep(1)
    top, child = await adapter.load("P"), await adapter.load("P/kid#1")
    assert top is not None and child is not None and (top.status, child.status) == ("running", "running")
    async with open_test_engine(adapter=adapter, clock=clock, max_running=1) as engine:
        engine.register(kid)
        await trio.sleep(1)  # the child, resumed first, takes the slot
        restarted = trio.current_time()
        engine.register(parent)
        with trio.move_on_after(60):
            done = await engine.wait("P")
        ended = trio.current_time() - restarted
        top_status = (await engine.get_instance("P")).status
        kid_status = (await engine.get_instance("P/kid#1")).status
    assert (top_status, kid_status) == ("cancelled", "cancelled"), (top_status, kid_status, ended)
    assert done.status == "cancelled" and ended < 60
