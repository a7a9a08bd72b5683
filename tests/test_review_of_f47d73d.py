"""From an adversarial review of f47d73d (an owed cancel of a run live here no longer waits for
resumes, and tells its instance from a later one of the same id by creation times; SQLite pages
``after=`` by the id's bytes; a damaged record count of a row with no records is unreadable).

Each test failed on f47d73d, one per distinct bug, and is fixed by the commit that added this
file: an owed cancel knows its store's instance by the creation times its tries gave or found
(not by comparing clock readings), hands itself on to a store of the id under way, waits for
resumes inside its bound and not once the actors stopped; paging past an instance whose id is
not valid text does not look it up by that id. All run on trio's
MockClock with adapter wrappers (or a SQLite file damaged between engine runs, as
tests/test_review_of_damaged_storage.py damages one), no real sleeps:

1. an owed cancel of a child hold skips the child its step's next store try makes (queued);
2. an owed cancel cancels a new instance of its id once the wall clock steps back;
3. a page ending on a row whose id is not UTF-8 cannot be paged past with that instance;
4. an owed cancel waiting for a resume as the engine's scope is cancelled is dropped;
5. an owed cancel that meets a retried start of its id ends at its own deadline, silently.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine

from owed_cancels import PARKER, leave_parked, end_in_a_new_engine, start_beside, one_second as _one_second, thousand_seconds as _thousand_seconds


# -- 1. an owed cancel of a child hold skips the child its step's next try stores ---------------


class FirstKidCreateSlowAndFailing(MemoryAdapter):
    """The first ``create()`` of child ``p/kid#1`` takes 11 s and then fails, storing nothing
    (``StorageUnavailableError``); later ones answer at once."""

    def __init__(self) -> None:
        super().__init__()
        self.tries = 0

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id == "p/kid#1":
            self.tries += 1
            if self.tries == 1:
                await trio.sleep(11)
                raise tf.StorageUnavailableError("connection dropped")
        return await super().create(instance_id, *args, **kwargs)


async def test_an_owed_cancel_of_a_held_child_is_skipped_when_the_childs_next_store_try_queues_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, The engine: ``cancel()`` returns True "waiting 10 s at most for [...] storage
    slow to answer (the engine stores the decision beside the caller, so a caller that gives
    up meanwhile does not undo it; an instance whose start was still being stored is cancelled
    once that store is over [...])"; docs/fanout.md, Links: a ``cancel()`` that waited for a
    store "waits 10 s at most, and then says yes, the decision standing for the run that store
    makes"; ``Children.hold``: "Hold ``child_id`` as being stored from now [...]: ``signal()``,
    ``cancel()`` and ``wait()`` of it wait for its store".

    Reproduction: ``max_running=1``; parent ``p`` (workflow "dad", one child step of "kid")
    holds the slot. Its child step holds ``p/kid#1`` and stores it: the first create takes
    11 s and fails, storing nothing. ``cancel("p/kid#1")`` at 0.5 s waits on the hold and says
    True at 10.5 s: ``cancel_owed = max(stamp(10.5), created_at of the first try)`` = 10.5 s.
    The step backs off and tries again (the hold is kept across tries): the second try's
    instance is stamped ``created_at`` 11.05 s and queued (``pending``: the parent holds the
    one slot), so ``cancel_wanted`` does not cancel it (runtime/_engine.py:541, ``run not in
    self._waiting``). The step releases its hold; ``_owed_cancel`` finds the run live with
    ``created_at > said_at`` (runtime/_engine.py:578) and does nothing. The child runs once its
    parent parks and ends ``completed`` (its parent too), though ``cancel()`` said yes."""
    adapter = FirstKidCreateSlowAndFailing()
    async with open_test_engine(adapter=adapter, max_running=1) as engine:
        engine.register(tf.workflow("kid").step("k", _one_second).build())
        engine.register(tf.workflow("dad").child("kid", workflow="kid").build())
        await engine.start("dad", instance_id="p")
        await trio.sleep(0.5)
        assert await engine.cancel("p/kid#1")  # True at 10.5 s: the child's store has not answered
        with trio.fail_after(600):
            kid = await engine.wait("p/kid#1")
        assert adapter.tries == 2
        assert kid.status == "cancelled", kid


# -- 2. an owed cancel cancels a new instance of its id once the wall clock steps back -----------


T0 = 1_800_000_000.0


async def test_an_owed_cancel_cancels_a_new_instance_of_its_id_started_after_the_wall_clock_stepped_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Engine.cancel: "Cancel an unfinished instance"; README, The engine: "an instance whose
    start was still being stored is cancelled once that store is over"; Engine._owed_cancel:
    the cancel is "of that instance, not of one created under its id since"; Engine._cancel
    (f47d73d): ``cancel_owed`` is "a creation time of its own: an instance created under the id
    from now on is strictly later, the clock moving or not"; README: ``open_engine(clock=...)``
    "sets the wall clock"; runtime/_ids.py ``CreationTimes``: "another clock, a second behind or
    more, is taken as it is".

    Reproduction (test_review_of_dd8800a's third test, with the wall clock stepped back a
    minute, an NTP step, after ``cancel()`` said yes): ``start("w", instance_id="x")`` whose
    create waits; ``cancel("x")`` says True at 10 s (``cancel_owed = stamp(W)`` = W). The
    create then fails, storing nothing; the owed cancel reads "x" from storage (slow to
    answer). Meanwhile the wall clock is stepped back 60 s and the caller starts "x" again, of
    workflow "w2": ``CreationTimes.stamp`` takes a clock over a second behind "as it is"
    (runtime/_ids.py:71), so the new instance's ``created_at`` is W - 60, *before* the said
    time. The owed cancel's read finds it, ``created_at <= said_at`` (runtime/_engine.py:578)
    holds, and it cancels an instance started after the ``cancel()`` returned."""
    from test_review_of_dd8800a import GatedCreateAndLoadOfX

    back = {"by": 0.0}

    def clock() -> float:
        return T0 + trio.current_time() - back["by"]

    adapter = GatedCreateAndLoadOfX()
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(tf.workflow("w").step("s", _one_second).build())
        engine.register(tf.workflow("w2").step("s", _thousand_seconds).build())
        async with trio.open_nursery() as nursery:
            first_done, first = start_beside(nursery, engine)
            await adapter.create_entered.wait()
            assert await engine.cancel("x")  # True after 10 s: the store has not answered
            release = adapter.load_gate = trio.Event()
            adapter.create_gate.set()  # the store ends, nothing stored
            await first_done.wait()
            assert isinstance(first[0], tf.StorageUnavailableError), first
            with trio.fail_after(1):
                await adapter.load_waiting.wait()  # the owed cancel reads "x"
            back["by"] = 60.0  # the wall clock is stepped back a minute
            await engine.start("w2", instance_id="x")  # after cancel() returned: a new instance
            release.set()
        await trio.sleep(60)
        again = await engine.get_instance("x")
        assert again is not None and again.workflow_name == "w2"
        assert again.status == "running", again  # its 1000 s step is under way; nobody cancelled it


# -- 3. a page that ends on a row whose id is not UTF-8 cannot be paged past ---------------------


def test_a_page_ending_on_a_row_whose_id_is_not_utf8_cannot_be_paged_past_with_that_instance(tmp_path: Any) -> None:
    """docs/adapters.md (f47d73d): text columns damaged into bytes that are not UTF-8 are
    read with those bytes kept as lone surrogates: such a row "is held back or reported
    unreadable on its own (listings show it, and page past it; its id, not valid text, is
    refused by ``get_instance()``, ``wait()`` and ``cancel()``: delete the row by hand)";
    Engine.get_instances: "``after=`` the last instance of the previous page (or its id) gives
    the next page [...] none is listed twice and none left out"; README, Durability: an
    unreadable row is reported failed and "every other row still resumes".

    Reproduction (test_review_of_dd8800a's first test's file): finished "bad" then "c";
    "bad"'s id damaged into ``X'6261ff'``. ``get_instances(limit=1)`` gives the damaged
    instance (``'ba\\udcff'``, failed) as promised. The next page,
    ``get_instances(limit=1, after=<that instance>)``, goes through ``_check_still_there``
    (runtime/_engine.py:1218), which loads the id: ``SQLiteAdapter.load`` binds it as text and
    raises ``DatabaseError: SQLite load failed: 'utf-8' codec can't encode character
    '\\udcff'`` (a ``StorageError``, as if storage failed) -- "c" is never listed. (Given the
    id instead, ``check_listing`` refuses it: ``InvalidArgumentError``.)"""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_review_of_damaged_storage import _make, _reopen, _run, _sql

    db = Path(tmp_path) / "f.db"
    _make(db, ("done", "bad"), ("done", "c"))
    _sql(db, "UPDATE trioflow_instances SET instance_id = CAST(X'6261ff' AS TEXT) WHERE instance_id = 'bad'")
    _sql(db, "UPDATE trioflow_records SET instance_id = CAST(X'6261ff' AS TEXT) WHERE instance_id = 'bad'")

    async def body(engine: tf.Engine) -> Any:
        page = await engine.get_instances(limit=1)
        assert [(i.id, i.status) for i in page] == [("ba\udcff", "failed")]  # shown, as promised
        try:
            return [i.id for i in await engine.get_instances(limit=1, after=page[0])]
        except tf.TrioflowError as exc:
            return f"{type(exc).__name__}: {exc}"

    assert _run(_reopen, db, body) == ["c"]


# -- 4. an owed cancel waiting for a resume as the engine's scope is cancelled is dropped ---------


class SlowCreateOfXAndUncutSignalReadOfParked(MemoryAdapter):
    """``create()`` of ``"x"`` takes 20 s; once ``slow_signals``, reading the signals of
    ``"parked"`` takes 200 s and is not cut short by a cancel (a read in a worker thread, as
    ``trio.to_thread.run_sync`` makes one: storage slow to answer)."""

    slow_signals = False

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id == "x":
            await trio.sleep(20)
        return await super().create(instance_id, *args, **kwargs)

    async def signals(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id == "parked" and self.slow_signals:
            with trio.CancelScope(shield=True):
                await trio.sleep(200)
        return await super().signals(instance_id, *args, **kwargs)


async def test_an_owed_cancel_is_dropped_in_the_shutdown_cleanup_when_a_resume_is_under_way(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, The engine: ``cancel()`` returns True "waiting 10 s at most for [...] storage
    slow to answer (the engine stores the decision beside the caller, so a caller that gives
    up meanwhile does not undo it; an instance whose start was still being stored is cancelled
    once that store is over [...])"; README: "When a scope around the block is cancelled (a
    service's shutdown), [...] in the block's own shielded cleanup reads, ``signal()`` and
    ``cancel()`` (stored: the next engine compensates) still work"; Engine._owed_cancel:
    "Shielded, for a bounded time [...]: the engine's shutdown may be what the store ended in"
    (test_review_of_c596e22's second test, which passes: this is that test with a resume under
    way).

    Reproduction: "parked" is left parked by a first engine with a signal it does not wait
    for. Second engine: ``start("w", instance_id="x")`` from a task outside the engine's scope
    (its create takes 20 s); ``cancel("x")`` says True 10 s later (``cancel_owed``); "parker"
    is registered: a resume in the background reads "parked"'s signals (200 s, a read not cut
    short). The scope around the engine block is cancelled (a shutdown); in the block's
    shielded cleanup the store ends (stored ``running``, ``start`` raises
    ``EngineClosedError``) and ``_release_start`` starts ``_owed_cancel``. "x" is not live and a
    resume is pending, so it waits for ``_resumes_settled`` *before* its shielded scope
    (runtime/_engine.py:566-567), in a task the shutdown has cancelled: ``trio.Cancelled``, not
    a ``TrioflowError``, ends it silently. (Traced: it begins at 30 s with
    ``_pending_resumes == 1`` and ``_actors_stopped``; ``_resume_one`` takes nothing up once
    the actors stopped, so nothing was to be waited for.) Without the resume the cancel is
    stored; with it, the next engine resumes "x" going forward and it ends ``completed``."""
    adapter = SlowCreateOfXAndUncutSignalReadOfParked()
    parker = PARKER
    await leave_parked(adapter)
    adapter.slow_signals = True
    said: list[bool] = []
    async with trio.open_nursery() as outer:
        with trio.CancelScope() as shutdown:
            async with open_test_engine(adapter=adapter) as engine:
                engine.register(tf.workflow("w").step("s", _one_second).build())

                start_done, _ = start_beside(outer, engine)
                await trio.sleep(0.5)
                said.append(await engine.cancel("x"))  # True at 20.5 s: storage is slow
                engine.register(parker)  # a resume in the background, 200 s long
                await trio.sleep(1)
                shutdown.cancel()  # a service's shutdown
                try:
                    await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True):
                        await start_done.wait()  # the store ends in the cleanup (at 30 s)
                        await trio.sleep(1)
    assert said == [True]
    adapter.slow_signals = False
    assert await end_in_a_new_engine(adapter) == "cancelled"


# -- 5. an owed cancel that meets a retried start of its id ends at its own deadline, silently ---


class EveryCreateOfXSlowFirstAnswerLost(MemoryAdapter):
    """Every ``create()`` of ``"x"`` takes 11 s; the first stores the row and then answers
    ``StorageUnavailableError`` (its answer lost)."""

    lost = False

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id == "x":
            await trio.sleep(11)
            created = await super().create(instance_id, *args, **kwargs)
            if not self.lost:
                self.lost = True
                raise tf.StorageUnavailableError("the answer was lost")
            return created
        return await super().create(instance_id, *args, **kwargs)


async def _sixty_seconds(ctx: Any) -> str:
    await trio.sleep(60)
    return "blocked"


async def test_an_owed_cancel_waiting_on_a_retried_start_of_its_id_is_dropped_and_the_queued_run_completes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, The engine: ``cancel()`` returns True "waiting 10 s at most for [...] storage
    slow to answer (the engine stores the decision beside the caller, so a caller that gives
    up meanwhile does not undo it; an instance whose start was still being stored is cancelled
    once that store is over [...])"; README: ``start(..., instance_id=)`` is idempotent (a
    start whose answer was lost is tried again with the same id: test_review_of_11e4cde's
    second test, which passes without a slot to wait for).

    Reproduction: ``max_running=1``, "b" holds the slot (60 s). ``start("w",
    instance_id="x")``: its create takes 11 s, stores the row (``pending``) and loses its
    answer. ``cancel("x")`` at 0.5 s says True at 10.5 s (``cancel_owed``). At 11 s the start
    raises and its caller tries it again at once (its create takes 11 s too). The owed cancel
    starts: "x" is not live, its row is stored and older than the said time, so it calls
    ``_cancel("x")``, which waits on the retry's ``_Storing`` with ``move_on_after(10)``
    (runtime/_engine.py:1029) inside the owed cancel's own ``CancelScope(shield=True,
    deadline=now + 10)`` (runtime/_engine.py:568): both end at 21 s, the outer scope takes the
    ``trio.Cancelled`` (no ``TrioflowError``: nothing logged) and ``cancel_owed`` is never set
    on the retry's guard. At 22 s the retry finds its own row and resumes it: queued for the
    slot, so ``cancel_wanted`` does not cancel it (runtime/_engine.py:533). "x" runs once "b"
    ends and ends ``completed``."""
    adapter = EveryCreateOfXSlowFirstAnswerLost()
    async with open_test_engine(adapter=adapter, max_running=1) as engine:
        engine.register(tf.workflow("w").step("s", _one_second).build())
        engine.register(tf.workflow("blocker").step("b", _sixty_seconds).build())
        await engine.start("blocker", instance_id="b")
        said: list[bool] = []

        async def start() -> None:
            try:
                await engine.start("w", instance_id="x")
            except tf.StorageUnavailableError:
                await engine.start("w", instance_id="x")  # its caller tries it again

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start)
            await trio.sleep(0.5)
            said.append(await engine.cancel("x"))  # True at 10.5 s: storage is slow
        assert said == [True] and adapter.lost
        with trio.fail_after(600):
            ended = await engine.wait("x")
        assert ended.status == "cancelled", ended
