"""From an adversarial review of 9a5f967 (an owed cancel knows its store's instance by the
creation times its tries gave or found, hands itself on to a store of the id under way, waits
for resumes inside its bound and not once the actors stopped).

Each test failed on 9a5f967, one per distinct bug, and is fixed by the commit that added this
file: an owed cancel waits for resumes under way before its bound starts; a child step that
lets go of its hold to wait for its workflow's registration hands its owed cancel to the next
hold; an owed cancel is handed on only to a start of the same workflow (a retry). All run on
trio's MockClock with adapter wrappers, no real sleeps.

1. an owed cancel waiting for an unrelated resume longer than its 20 s bound is dropped
   (a regression of 9a5f967: passes on 9a5f967^);
2. an owed cancel of a resumed parent's child hold is lost when the child step lets go of the
   hold to wait for its workflow's registration (fails on 9a5f967^ too);
3. an owed cancel whose store made nothing is handed on to a new start of the id, of another
   workflow, and cancels that new instance (a regression of 9a5f967: passes on 9a5f967^).
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine

from owed_cancels import cancel_as_x_is_stored_and_a_resume_begins


async def _one_second(ctx: Any) -> str:
    await trio.sleep(1)
    return "done"


# -- 1. an owed cancel waiting for a resume longer than its 20 s bound is dropped ---------------


class SlowLostCreateOfXAndSlowSignalReadOfParked(MemoryAdapter):
    """``create()`` of ``"x"`` takes 20 s, stores the row and then answers
    ``StorageUnavailableError`` (its answer lost); once ``slow_signals``, reading the signals
    of ``"parked"`` takes 200 s (storage slow to answer)."""

    slow_signals = False

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id == "x":
            await trio.sleep(20)
            await super().create(instance_id, *args, **kwargs)
            raise tf.StorageUnavailableError("the answer was lost")
        return await super().create(instance_id, *args, **kwargs)

    async def signals(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id == "parked" and self.slow_signals:
            await trio.sleep(200)
        return await super().signals(instance_id, *args, **kwargs)


async def test_an_owed_cancel_is_dropped_when_an_unrelated_resume_outlasts_its_20_s_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, The engine: ``cancel()`` returns True "waiting 10 s at most for [...] storage
    slow to answer (the engine stores the decision beside the caller, so a caller that gives
    up meanwhile does not undo it; an instance whose start was still being stored is cancelled
    once that store is over [...])"; Engine.cancel: "the decision stands in this engine, and
    is stored as soon as it can be".

    Reproduction: a first engine leaves "parked" parked with a signal it does not wait for.
    Second engine (no shutdown at all): ``start("w", instance_id="x")`` whose create takes
    20 s, stores the row and loses its answer; ``cancel("x")`` at 0.5 s says True at 10.5 s
    (``cancel_owed``). "parker" is then registered: a resume in the background reads
    "parked"'s signals (200 s, storage slow). At 20 s the start raises and lets go of its
    guard: ``_owed_cancel`` finds "x" not live with a resume pending and waits for
    ``_resumes_settled`` *inside* its ``CancelScope(deadline=now + 20)``
    (runtime/_engine.py:571-574, moved inside the bound by 9a5f967). At 40 s the deadline
    ends it: a warning "could not be cancelled in 20 s", and the debt is gone. The resume it
    waited for never concerned "x". "x" stays stored ``running``, and the next engine resumes
    it going forward: it ends ``completed``."""
    adapter = SlowLostCreateOfXAndSlowSignalReadOfParked()
    parker = tf.workflow("parker").receive("go", signal="go", timeout=100_000).build()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(parker)
        await engine.start("parker", instance_id="parked")
        await trio.sleep(5)
        await engine.signal("parked", "other")  # kept for a later receive: it stays parked
        await trio.sleep(5)
    adapter.slow_signals = True
    async with open_test_engine(adapter=adapter) as engine:
        said = await cancel_as_x_is_stored_and_a_resume_begins(engine, parker)  # (a 200 s resume)
        await trio.sleep(300)  # the resume is over; the owed cancel has had every chance
    assert said == [True]
    adapter.slow_signals = False
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("w").step("s", _one_second).build())
        engine.register(parker)
        with trio.fail_after(600):
            ended = await engine.wait("x")
    assert ended.status == "cancelled", ended


# -- 2. a resumed parent's child step lets go of its hold to wait for a registration: debt lost --


class KidStoreFailsThenSlowSignalReadOfP(MemoryAdapter):
    """While ``kid_fails``, every ``create()`` of child ``p/kid#1`` raises
    ``StorageUnavailableError``, storing nothing; while ``slow_signals``, reading the signals
    of ``"p"`` takes 15 s (storage slow to answer)."""

    kid_fails = True
    slow_signals = False

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id == "p/kid#1" and self.kid_fails:
            raise tf.StorageUnavailableError("connection dropped")
        return await super().create(instance_id, *args, **kwargs)

    async def signals(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id == "p" and self.slow_signals:
            await trio.sleep(15)
        return await super().signals(instance_id, *args, **kwargs)


async def test_an_owed_cancel_of_a_resumed_parents_child_hold_is_lost_when_the_step_waits_for_a_registration(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """docs/fanout.md, Links: while a parent stores a child, "``cancel()`` [...] of the child
    wait[s] for that store rather than answer that there is no such instance (a ``cancel()``
    that waited so cancels the child before its first step; it waits 10 s at most, and then
    says yes, the decision standing for the run that store makes)"; README, The engine: "an
    instance whose start was still being stored is cancelled once that store is over".

    Reproduction: a first engine stops while parent ``p`` ("dad", one child step of "kid")
    keeps failing to store ``p/kid#1``: ``p`` is stored listing a child that was never
    stored. A second engine resumes ``p`` with "kid" not registered: the child step's resume
    branch (``p`` taken up at 7 s to check its child is stored) holds ``p/kid#1``
    (actors/_child.py:98) and reads ``p``'s signals (15 s, storage slow).
    ``cancel("p/kid#1")`` at 7.5 s waits on the hold and says True at 17.5 s
    (``cancel_owed``; ``created_ats`` empty: no store tried). At 22 s the step finds "kid" not
    runnable, lets go of the hold (actors/_child.py:106) and waits for the registration:
    ``_owed_cancel`` finds no store of the id under way, nothing live and nothing stored, and
    returns (runtime/_engine.py:581-584): the debt is gone. "kid" is registered at 40 s; the
    step holds the id again (actors/_child.py:108) and stores the child, which runs and ends
    ``completed`` (its parent too), though ``cancel()`` said yes for the run that store makes."""
    adapter = KidStoreFailsThenSlowSignalReadOfP()
    kid = tf.workflow("kid").step("k", _one_second).build()
    dad = tf.workflow("dad").child("kid", workflow="kid").build()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(kid)
        engine.register(dad)
        await engine.start("dad", instance_id="p")
        await trio.sleep(3)
    assert await adapter.load("p/kid#1") is None  # listed by p, never stored
    adapter.kid_fails = False
    adapter.slow_signals = True
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(dad)  # "kid" is not registered yet
        await trio.sleep(7.5)  # p is taken up at 7 s, to check that its child is stored
        assert await engine.cancel("p/kid#1")  # True at 17.5 s: the resumed step holds the id
        await trio.sleep(22.5)  # 40 s: the step let go of its hold at 22 s
        adapter.slow_signals = False
        engine.register(kid)
        await trio.sleep(0.5)  # the step holds the id again and stores the child
        with trio.fail_after(600):
            ended = await engine.wait("p/kid#1")
    assert ended.status == "cancelled", ended


# -- 3. an owed cancel is handed on to a new start of the id (another workflow) and cancels it ---


class FirstCreateOfXFailsLaterOnesTakeASecond(MemoryAdapter):
    """The first ``create()`` of ``"x"`` waits for ``create_gate`` and then fails, storing
    nothing (``StorageUnavailableError``); later ones take 1 s (storage not instant)."""

    def __init__(self) -> None:
        super().__init__()
        self.create_gate = trio.Event()
        self.create_entered = trio.Event()
        self.x_tried = False

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id == "x":
            if not self.x_tried:
                self.x_tried = True
                self.create_entered.set()
                await self.create_gate.wait()
                raise tf.StorageUnavailableError("connection dropped")
            await trio.sleep(1)
        return await super().create(instance_id, *args, **kwargs)


async def _thousand_seconds(ctx: Any) -> str:
    await trio.sleep(1000)
    return "done"


async def test_an_owed_cancel_whose_store_made_nothing_cancels_a_new_instance_of_another_workflow_started_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Engine._owed_cancel (9a5f967): the cancel is "of the instance that store made or found
    [...], not of one created under its id since"; README, The engine: "an instance whose
    start was still being stored is cancelled once that store is over"; Engine.cancel:
    "Cancel an unfinished instance". test_review_of_dd8800a's third test and
    test_review_of_f47d73d's second test (which pass) have a new instance of "x", of workflow
    "w2", started after ``cancel()`` returned, left running: this is that scenario with the
    new start made at once.

    Reproduction: ``start("w", instance_id="x")`` whose create fails after 10 s, storing
    nothing; ``cancel("x")`` says True at 10 s (``cancel_owed``, ``created_ats = [t1]``). The
    start raises and its caller at once starts "x" of *another workflow*, "w2" (a 1000 s
    step): its ``_Storing`` (``created_ats = [t2]``) is in place before the owed cancel's task
    first looks. ``_owed_cancel`` hands the debt to it (runtime/_engine.py:575-579), merging
    ``[t1]`` into the new store's own ``[t2]``; once that store is over, the owed cancel finds
    the run live with ``created_at == t2`` in ``created_ats`` and cancels it: the new
    instance, which no ``cancel()`` was ever asked for, ends ``cancelled``."""
    adapter = FirstCreateOfXFailsLaterOnesTakeASecond()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("w").step("s", _one_second).build())
        engine.register(tf.workflow("w2").step("s", _thousand_seconds).build())
        first: list[Any] = []

        async def start_first() -> None:
            try:
                await engine.start("w", instance_id="x")
            except tf.StorageUnavailableError as exc:
                first.append(exc)
                await engine.start("w2", instance_id="x")  # a new instance, of another workflow

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_first)
            await adapter.create_entered.wait()
            assert await engine.cancel("x")  # True after 10 s: the store has not answered
            adapter.create_gate.set()  # the store ends, nothing stored
        assert first, "the first start raised"
        await trio.sleep(60)
        again = await engine.get_instance("x")
        assert again is not None and again.workflow_name == "w2"
        assert again.status == "running", again  # its 1000 s step is under way; nobody cancelled it
