"""From an adversarial review of c596e22 (an owed cancel for a cancel() that said yes after
waiting 10 s for a store; fail-fast bounds only the child stores of the lanes they cancel;
under resume=False only a child whose cancel was stored is taken up for its parent; SQLite
ledger reads as BLOB).

Each test here failed on c596e22, one per distinct bug, and is fixed by the commit that added
this file: a child going back is taken up for a parent running here by what its row says, not
by which path stored it; an owed cancel runs beside the actors (shielded, bounded), so a store
ending in the shutdown's cleanup still has it stored; every guard of an id being stored is let
go of through one place that runs the owed cancel; and it cancels only an instance created
before it was said. All run on a MockClock with adapter wrappers, no real sleeps.

- ``test_with_resume_false_a_child_whose_cancel_was_stored_but_its_answer_lost_is_never_compensated``:
  a regression of c596e22 (passes on c596e22^).
- ``test_a_cancel_that_said_yes_while_the_start_was_stored_is_dropped_when_the_store_ends_in_the_shutdown_cleanup``
  and ``test_a_cancel_that_said_yes_while_another_cancel_stored_the_decision_is_lost_when_that_write_fails``:
  the owed cancel c596e22 added does not cover these (both fail on c596e22^ too).
- ``test_an_owed_cancel_held_back_by_a_resume_cancels_a_new_instance_started_under_the_same_id``:
  new in c596e22 (passes on c596e22^).
"""

from __future__ import annotations

import functools
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine

from owed_cancels import PARKER, leave_parked, end_in_a_new_engine, start_beside, SlowCreateOfX, SlowCreateOfXAndSlowSignalsOfParked, one_second as _one_second, thousand_seconds as _thousand_seconds

from test_review_of_close_and_held_starts import ChildStoreKeepsFailing, dad_cancelled_while_its_kid_is_stored


async def _hundred_seconds(ctx: Any) -> str:
    await trio.sleep(100)
    return "done"


# -- 1. resume=False: a child whose cancel write committed, its answer lost ----------------------


class ChildStoreKeepsFailingAndCancelAnswerLost(ChildStoreKeepsFailing):
    """The first ``create()`` of child ``p/kid#1`` stores it and loses its answer; every later
    one raises ``StorageUnavailableError`` (its step keeps trying). The first checkpoint of
    ``p/kid#1`` (the parent's cancel storing the decision in it) IS stored, and then answered
    ``StorageUnavailableError`` (its answer lost); later ones answer normally."""

    def __init__(self) -> None:
        super().__init__()
        self.cancel_answer_lost = False

    async def checkpoint(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id == "p/kid#1" and not self.cancel_answer_lost:
            self.cancel_answer_lost = True
            await super().checkpoint(instance_id, *args, **kwargs)
            raise tf.StorageUnavailableError("the answer was lost")
        return await super().checkpoint(instance_id, *args, **kwargs)


async def test_with_resume_false_a_child_whose_cancel_was_stored_but_its_answer_lost_is_never_compensated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Durability: ``open_engine(resume=False)`` "to opt out, save for the children of
    instances running here, which a parent cancelling them has compensated here"; docs/fanout.md,
    Cancel: a parent that is cancelled cancels the children it waits on "and waits for their
    ends".

    Reproduction (the scenario of test_review_of_11e4cde's resume=False test, with the cancel
    write's answer lost instead of the write failing): ``resume=False``; parent ``p``'s child
    step stores ``p/kid#1`` (stored, answer lost; later tries fail); ``cancel("p")``. The
    parent's cancel of the child goes to ``_cancel_stored``, whose checkpoint stores the cancel
    (``compensating``) and answers ``StorageUnavailableError``. ``_reread_old_row``
    (runtime/_engine.py:1663) reads the row back (compensating, its cancel stored) and calls
    ``_replace_old_row(fresh)`` WITHOUT ``cancelled=True``: since c596e22 the row is held back
    for a ``resume()`` nobody calls. The child stays ``running`` in storage for ever, never
    compensated here (on c596e22^ it was taken up for its parent and ended ``cancelled``)."""

    adapter = ChildStoreKeepsFailingAndCancelAnswerLost()
    async with dad_cancelled_while_its_kid_is_stored(adapter) as engine:
        await trio.sleep(60)
        kid = await engine.get_instance("p/kid#1")
        assert kid is not None and adapter.cancel_answer_lost
        assert kid.status == "cancelled", kid


# -- 2. the owed cancel dropped in the shutdown cleanup -----------------------------------------


async def test_a_cancel_that_said_yes_while_the_start_was_stored_is_dropped_when_the_store_ends_in_the_shutdown_cleanup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Engine.cancel docstring: after ``CANCEL_STORE_WAIT`` seconds at most "(a step that holds
    off its cancellation, storage that is slow to answer: the decision stands in this engine,
    and is stored as soon as it can be)"; README, The engine: ``cancel()`` returns True "waiting
    10 s at most for [...] storage slow to answer (the engine stores the decision beside the
    caller, so a caller that gives up meanwhile does not undo it)"; README: "When a scope around
    the block is cancelled (a service's shutdown), [...] in the block's own shielded cleanup
    reads, ``signal()`` and ``cancel()`` (stored: the next engine compensates) still work".

    Reproduction: ``start("w", instance_id="x")`` (its create takes 20 s) from a task outside
    the engine's scope; ``cancel("x")`` says True at 10.5 s (``cancel_owed``); at 11.5 s the
    scope around the engine block is cancelled; in the block's shielded cleanup the store
    ends (the row is stored ``running``; ``start`` raises ``EngineClosedError``). In
    ``_release_start`` (runtime/_engine.py:379) the owed cancel is skipped because
    ``_actors_stopped``, though a ``cancel("x")`` made at that very point stores the cancel (it
    does: checked by hand). The next engine resumes "x" going forward: it ends ``completed``."""
    adapter = SlowCreateOfX()
    said: list[bool] = []
    async with trio.open_nursery() as outer:
        with trio.CancelScope() as shutdown:
            async with open_test_engine(adapter=adapter) as engine:
                engine.register(tf.workflow("w").step("s", _one_second).build())

                start_done, _ = start_beside(outer, engine)
                await trio.sleep(0.5)
                said.append(await engine.cancel("x"))  # True at 10.5 s: storage is slow
                await trio.sleep(1)
                shutdown.cancel()  # a service's shutdown
                try:
                    await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True):
                        await start_done.wait()  # the store ends in the cleanup (at 20 s)
                        await trio.sleep(1)
    assert said == [True]
    assert await end_in_a_new_engine(adapter) == "cancelled"


# -- 3. the owed cancel on the guard of _cancel_stored -------------------------------------------


class SlowFailingCancelWrite(MemoryAdapter):
    """Once ``armed``, the next checkpoint of ``"x"`` takes 20 s and then fails, storing
    nothing (``StorageUnavailableError``)."""

    armed = False

    async def checkpoint(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id == "x" and self.armed:
            self.armed = False
            await trio.sleep(20)
            raise tf.StorageUnavailableError("disk I/O error")
        return await super().checkpoint(instance_id, *args, **kwargs)


async def test_a_cancel_that_said_yes_while_another_cancel_stored_the_decision_is_lost_when_that_write_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, The engine: ``cancel()`` returns True "waiting 10 s at most for [...] storage
    slow to answer (the engine stores the decision beside the caller, so a caller that gives
    up meanwhile does not undo it)"; Engine.cancel docstring: "the decision stands in this
    engine, and is stored as soon as it can be"; "An instance stored unfinished that cannot
    run here now (its workflow [...] is not registered [...]) has the cancel stored in it".

    Reproduction: "x" (workflow "w", a 100 s step) is left ``running`` by a first engine; a
    second engine on the same storage has "w" not registered. ``cancel("x")`` #1 goes to
    ``_cancel_stored``, which holds "x" under a ``_Storing`` guard while its checkpoint takes
    20 s and then fails. ``cancel("x")`` #2, made 1 s later, waits on that guard and says True
    at 11 s (``cancel_owed`` set on the guard). #1 raises ``StorageUnavailableError``; the
    guard is let go of by ``_reread_old_row`` (runtime/_engine.py:1665: ``del
    self._storing[...]; guard.done()``, not ``_release_start``), so the owed cancel never runs.
    Once "w" is registered, "x" is resumed going forward and ends ``completed``."""
    adapter = SlowFailingCancelWrite()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("w").step("s", _hundred_seconds).build())
        await engine.start("w", instance_id="x")
        await trio.sleep(0.5)
    said: dict[str, Any] = {}
    async with open_test_engine(adapter=adapter) as engine:
        adapter.armed = True

        async def cancel(tag: str) -> None:
            try:
                said[tag] = await engine.cancel("x")
            except tf.StorageUnavailableError as exc:
                said[tag] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel, "first")
            await trio.sleep(1)
            nursery.start_soon(cancel, "second")
        assert said["second"] is True and isinstance(said["first"], tf.StorageUnavailableError)
        await trio.sleep(5)
        engine.register(tf.workflow("w").step("s", _hundred_seconds).build())
        with trio.fail_after(600):
            ended = await engine.wait("x")
        assert ended.status == "cancelled"


# -- 4. the owed cancel reaches a later instance of the same id ----------------------------------


async def test_an_owed_cancel_held_back_by_a_resume_cancels_a_new_instance_started_under_the_same_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """docs/fanout.md, Links: a ``cancel()`` that waited for a store "waits 10 s at most, and
    then says yes, the decision standing for the run that store makes"; Engine.cancel
    docstring: "Cancel an unfinished instance"; README, The engine: an id "purged whose id was
    started again since" is another instance (``get_instances(after=)``; docs/fanout.md, Ids
    are the parent's: "deleted since and its id started again").

    Reproduction: an instance "parked" of "parker" is left parked by a first engine with a
    signal it does not wait for (so ``resumable()`` lists it). Second engine:
    ``start("w", instance_id="x")`` whose create takes 11 s; ``cancel("x")`` says True at
    10.5 s (``cancel_owed``); "parker" is registered then: a resume in the background
    (``_pending_resumes``) reads "parked"'s signals for 200 s. At 11 s the store ends: "x" runs
    with ``cancel_requested`` (``cancel_wanted``) and ends ``cancelled``; ``_release_start``
    (runtime/_engine.py:379) also starts ``_owed_cancel``, a full ``cancel("x")`` that waits
    for ``_resumes_settled`` first (runtime/_engine.py:996). Meanwhile "x" is purged and a NEW
    instance is started under the id (workflow "w2", a 1000 s step). At ~210 s the owed cancel
    runs and cancels that new instance, which nobody cancelled."""
    adapter = SlowCreateOfXAndSlowSignalsOfParked()
    parker = PARKER
    await leave_parked(adapter)
    adapter.slow_signals = True
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("w").step("s", _hundred_seconds).build())
        engine.register(tf.workflow("w2").step("s", _thousand_seconds).build())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(engine.start, "w", instance_id="x"))
            await trio.sleep(0.5)
            assert await engine.cancel("x")  # True at 10.5 s: storage is slow
            engine.register(parker)  # a resume in the background, 200 s long
        await trio.sleep(5)
        first = await engine.get_instance("x")
        assert first is not None and first.status == "cancelled"  # the cancel did its work
        assert await engine.purge(older_than=0) == 1
        await engine.start("w2", instance_id="x")  # the id started again: another instance
        await trio.sleep(300)
        again = await engine.get_instance("x")
        assert again is not None and again.workflow_name == "w2"
        assert again.status == "running", again  # its 1000 s step is under way; nobody cancelled it
