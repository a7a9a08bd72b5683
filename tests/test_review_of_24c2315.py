"""From an adversarial review of 24c2315 (an owed cancel waits for resumes under way before,
not inside, its shielded 20 s bound; it is handed on only to a store of the same workflow; a
child step that lets go of its hold for now, to wait for its workflow's registration, hands the
hold's owed cancel to the next hold).

Each test failed on 24c2315, one per distinct bug. The second and third are fixed by the
commit that added this file (a hold let go of for now runs its owed cancel then too, and the
next hold still takes the debt on); the first was a strict xfail naming a limit, until December
7th (see its docstring).
All run on trio's MockClock with adapter wrappers, no real sleeps.

1. an owed cancel waiting (unbounded, before its bound) for a resume that has nothing to do
   with its instance is lost when the engine closes normally meanwhile, though storage could
   have taken the decision all along (without that resume the same close leaves it cancelled);
2. a child step's hold taken again after its workflow's registration is not made when a resume
   of the child's row ran first (the id is live): ``_hold_start`` drops ``before`` and its debt;
3. a debt riding on a hold let go of for now is never stored in the stored child (unregistered
   workflow: the case ``cancel()`` stores the cancel in), and the engine's close drops it.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine

from owed_cancels import cancel_as_x_is_stored_and_a_resume_begins, PARKER, leave_parked, end_in_a_new_engine, one_second as _one_second
from test_review_of_9a5f967 import SlowLostCreateOfXAndSlowSignalReadOfParked


# -- 1. an owed cancel that waits for an unrelated resume is lost when the engine closes -----------


async def test_an_owed_cancel_waiting_for_an_unrelated_resume_is_lost_when_the_engine_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Engine.cancel: "after CANCEL_STORE_WAIT seconds at most [...] the decision stands in this
    engine, and is stored as soon as it can be"; README, The engine: "the engine stores the
    decision beside the caller, so a caller that gives up meanwhile does not undo it; an
    instance whose start was still being stored is cancelled once that store is over; an
    engine that closes before the decision could be stored leaves the instance as last stored".

    Reproduction: a first engine leaves "parked" parked with a signal it does not wait for.
    Second engine: ``start("w", instance_id="x")`` whose create takes 20 s, stores the row and
    loses its answer; ``cancel("x")`` at 0.5 s says True at 10.5 s (owed). "parker" is then
    registered: a resume in the background reads "parked"'s signals (200 s, storage slow). At
    20 s the store is over and "x" is stored, readable and writable: the decision can be
    stored now. But ``_owed_cancel`` (runtime/_engine.py:574-577) waits, unbounded, for every
    resume under way, the unrelated 200 s one included. The engine closes normally at 80 s:
    the resume is cancelled, the owed cancel goes on, meets ``_check_open()`` and only logs
    "could not be cancelled: the engine is closed". "x" was never cancelled in storage though
    storage could take the decision for 60 s: the next engine ran it to ``completed``. (The
    same test without ``engine.register(PARKER)``, no resume under way, ends ``cancelled``.)
    A strict xfail until December 7th: an owed cancel that meets the close now stores the
    cancel in the row, for the next engine (tests/test_review_of_owed_cancels_in_any_order.py)."""
    adapter = SlowLostCreateOfXAndSlowSignalReadOfParked()
    await leave_parked(adapter)
    adapter.slow_signals = True
    async with open_test_engine(adapter=adapter) as engine:
        said = await cancel_as_x_is_stored_and_a_resume_begins(engine, PARKER)  # (a 200 s resume)
        await trio.sleep(60)  # 80 s: "x" has been stored (and storage answering for it) for 60 s
    assert said == [True]
    adapter.slow_signals = False
    assert await end_in_a_new_engine(adapter) == "cancelled"


# -- 2. the hold taken again after a registration wait is not made: the debt is dropped ------------


class KidStoredThenSlowSignalReadOfP(MemoryAdapter):
    """``create()`` of child ``p/kid#1`` takes 5 s (it is stored); while ``slow_signals``,
    reading the signals of ``"p"`` takes 15 s (storage slow to answer)."""

    slow_signals = False

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id == "p/kid#1":
            await trio.sleep(5)
        return await super().create(instance_id, *args, **kwargs)

    async def signals(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id == "p" and self.slow_signals:
            await trio.sleep(15)
        return await super().signals(instance_id, *args, **kwargs)

async def _kid_stored_as_an_engine_closed() -> tuple[KidStoredThenSlowSignalReadOfP, Any, Any]:
    """A first engine closes while child ``p/kid#1`` of ``dad`` is stored (the store finishes
    first, ``running``); its adapter then reads ``p``'s signals slowly. (adapter, kid, dad)."""
    adapter = KidStoredThenSlowSignalReadOfP()
    kid = tf.workflow("kid").step("k", _one_second).build()
    dad = tf.workflow("dad").child("kid", workflow="kid").build()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(kid)
        engine.register(dad)
        await engine.start("dad", instance_id="p")
        await trio.sleep(3)
    stored = await adapter.load("p/kid#1")
    assert stored is not None and stored.status == "running"
    adapter.slow_signals = True
    return adapter, kid, dad



async def test_an_owed_cancel_carried_across_a_registration_wait_is_dropped_when_a_resume_takes_the_child_first(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/fanout.md, Links: while a parent stores a child "``cancel()`` [...] of the child
    wait[s] for that store [...] (a ``cancel()`` that waited so cancels the child before its
    first step; it waits 10 s at most, and then says yes, the decision standing for the run
    that store makes)"; README, The engine: "an instance whose start was still being stored is
    cancelled once that store is over"; ``Children.hold``: "``before``: what release gave for
    a hold of it let go of for now" (24c2315: its owed cancel is taken on).

    Reproduction: a first engine closes while parent ``p``'s child step stores ``p/kid#1``
    (5 s): the store finishes, ``p`` stays stored listing it with its ``check``. Second engine,
    "dad" registered only: ``p`` is taken up, its child step holds ``p/kid#1`` and reads
    ``p``'s signals (15 s); ``cancel("p/kid#1")`` waits on the hold and says True (owed). The
    step finds "kid" not registered and lets go of the hold for now
    (actors/_child.py:106). Once "kid" is registered, ``register`` both wakes the step and
    starts the resume of "kid"'s leftovers (``p/kid#1`` among them): two tasks made runnable
    in the same batch, which trio runs in either order (at random: half of the runs). Where the
    resume runs first (pinned here: the newest task first), ``p/kid#1`` is live when the step
    holds it again: ``_hold_start`` returns ``None`` (runtime/_engine.py:367-368) and drops
    ``before`` with its debt. The child runs uncancelled and ends ``completed``."""
    # Trio runs each batch of runnable tasks in an order of its choosing (one at random): pinned
    # here to one it may choose, the newest task first (sorted by creation, never shuffled).
    monkeypatch.setattr(trio._core._run, "_ALLOW_DETERMINISTIC_SCHEDULING", True)
    monkeypatch.setattr(trio._core._run._r, "shuffle", lambda batch: None)
    adapter, kid, dad = await _kid_stored_as_an_engine_closed()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(dad)  # "kid" is not registered yet
        await trio.sleep(7.5)  # p is taken up to check that its child is stored
        assert await engine.cancel("p/kid#1")  # True: the resumed step holds the id
        await trio.sleep(22.5)  # the step let go of its hold for now
        adapter.slow_signals = False
        engine.register(kid)
        with trio.fail_after(600):
            ended = await engine.wait("p/kid#1")
    assert ended.status == "cancelled", ended


# -- 3. a debt parked on a hold let go of for now is never stored: an engine's close drops it ------


async def test_an_owed_cancel_parked_on_a_hold_let_go_of_for_now_is_never_stored_in_the_stored_child(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Engine.cancel: the decision "stands in this engine, and is stored as soon as it can be
    [...] An instance stored unfinished that cannot run here now (its workflow, or a job it
    uses, is not registered [...]) has the cancel stored in it: whichever engine runs it next
    compensates it"; README, The engine: "the engine stores the decision beside the caller, so
    a caller that gives up meanwhile does not undo it [...] an engine that closes before the
    decision could be stored leaves the instance as last stored".

    Reproduction: as in the test above, ``p/kid#1`` is stored ``running`` by a first engine
    and ``p`` lists it with its ``check``. Second engine, "dad" registered only ("kid" never
    is): ``p``'s child step holds ``p/kid#1``; ``cancel("p/kid#1")`` waits on the hold and says
    True (owed). At 25 s the step lets go of the hold for now, to wait for "kid"'s
    registration: ``_release_start(..., for_now=True)`` (runtime/_engine.py:383) starts no
    owed cancel, the debt only rides on the released ``_Storing`` for the next hold
    (actors/_child.py:106-108). From then on ``p/kid#1`` is held by nothing, stored unfinished,
    its workflow not registered: the very case ``cancel()`` stores the cancel in
    (``_cancel_stored``). Nothing does. The engine closes at 80 s: the debt is gone with the
    step. The next engine (both workflows registered) runs ``p/kid#1`` to ``completed``. (A
    second ``cancel("p/kid#1")`` made at 50 s in the same engine says True and stores it: the
    next engine ends it ``cancelled``.)"""
    adapter, kid, dad = await _kid_stored_as_an_engine_closed()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(dad)  # "kid" is not registered in this engine
        await trio.sleep(7.5)  # p is taken up to check that its child is stored
        assert await engine.cancel("p/kid#1")  # True: the resumed step holds the id
        await trio.sleep(60)  # the step let go of its hold for now long ago
    adapter.slow_signals = False
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(kid)
        engine.register(dad)
        with trio.fail_after(600):
            ended = await engine.wait("p/kid#1")
    assert ended.status == "cancelled", ended
