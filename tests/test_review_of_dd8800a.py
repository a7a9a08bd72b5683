"""From an adversarial review of b5880dc (owed cancels run beside the actors, shielded and
bounded, only for an instance created before the cancel was said) and dd8800a (SQLite turns to
reading text with its bad bytes kept only once a query fails on it; map checks only for an
instance with a map).

Each test failed on dd8800a, one per distinct bug, and is fixed by the commit that added this
file: a listing pages past a row whose id is not UTF-8 by its bytes; an owed cancel of a run live
here does not wait for resumes under way (it was dropped when one outlasted its 10 s), and tells
the instance it is owed to from a later one of its id by creation times (equal clock readings,
a clock stepped back); a damaged record count of a row with no records makes it unreadable. All
run on trio's MockClock with adapter wrappers or a SQLite file damaged between engine runs (as
tests/test_review_of_damaged_storage.py damages one), no real sleeps.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine

from owed_cancels import PARKER, leave_parked, start_beside, SlowCreateOfX, SlowCreateOfXAndSlowSignalsOfParked, one_second as _one_second, thousand_seconds as _thousand_seconds

sys.path.insert(0, str(Path(__file__).parent))
from test_review_of_damaged_storage import _make, _reopen, _run, _sql  # noqa: E402

T0 = 1_800_000_000.0


async def _thirty_seconds(ctx: Any) -> str:
    await trio.sleep(30)
    return "done"


# -- 1. a listing's own refill pages after a row whose id is not UTF-8 ---------------------------


def test_a_paged_listing_by_status_whose_read_ends_on_a_row_with_a_damaged_id_raises_for_every_caller(
    tmp_path: Path,
) -> None:
    """README, Durability: a stored row this release cannot read "is reported ``failed`` to
    callers (``wait``, ``get_instance``, ``get_instances``) with the reason [...]; every other
    row still resumes"; SPEC §6: an unreadable snapshot "fails that one instance with a clear
    error and never stops the engine"; Engine.get_instances: "Pages: at most ``limit``
    instances [...] none is listed twice and none left out". adapters/_sqlite.py ``_read``:
    such text is read "so that the row it is in [...] is reported as it is (held back, or
    unreadable), every other row read as it is".

    Reproduction: two finished instances of "done", "bad" then "c"; "bad"'s ``instance_id``
    (in its row and its records) is damaged into ``X'6261ff'`` (not UTF-8). SQLite reads it as
    ``'ba\\udcff'`` and the engine reports it failed (unreadable), as promised.
    ``get_instances(status="completed", limit=1)``: the adapter's first read returns "bad"
    (stored ``completed``), which the engine reports ``failed`` and leaves out; to fill the page
    ``get_instances`` (runtime/_engine.py:1200) reads on ``after=read[-1].instance_id``, the
    surrogate id, which ``_list`` binds as a parameter (adapters/_sqlite.py:1348): sqlite3
    cannot encode it, and every such listing raises ``DatabaseError: SQLite list failed:
    'utf-8' codec can't encode character '\\udcff'`` -- "c" is never listed."""
    db = tmp_path / "f.db"
    _make(db, ("done", "bad"), ("done", "c"))
    _sql(db, "UPDATE trioflow_instances SET instance_id = CAST(X'6261ff' AS TEXT) WHERE instance_id = 'bad'")
    _sql(db, "UPDATE trioflow_records SET instance_id = CAST(X'6261ff' AS TEXT) WHERE instance_id = 'bad'")

    async def body(engine: tf.Engine) -> Any:
        every = [(i.id, i.status) for i in await engine.get_instances()]
        assert every == [("ba\udcff", "failed"), ("c", "completed")], every  # reported as promised
        try:
            return [i.id for i in await engine.get_instances(status="completed", limit=1)]
        except tf.TrioflowError as exc:
            return f"{type(exc).__name__}: {exc}"

    assert _run(_reopen, db, body) == ["c"]


# -- 2. an owed cancel waiting for a resume() is dropped after 10 s, silently --------------------


async def test_an_owed_cancel_of_a_queued_start_that_waits_for_a_slow_resume_is_dropped_and_the_instance_completes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, The engine: ``cancel()`` returns True "waiting 10 s at most for [...] storage
    slow to answer (the engine stores the decision beside the caller, so a caller that gives
    up meanwhile does not undo it; an instance whose start was still being stored is cancelled
    once that store is over [...])"; Engine.cancel: "the decision stands in this engine, and is
    stored as soon as it can be".

    Reproduction (the setup of test_review_of_c596e22's last test): "parked" is left parked
    with a signal it does not wait for; second engine, ``max_running=1``, "b" holds the slot
    (a 30 s step). ``start("w", instance_id="x")`` (queued: ``pending``; its create takes
    11 s); ``cancel("x")`` says True 10.5 s after the engine opened (``cancel_owed``); "parker"
    is registered then: a resume in the background reads "parked"'s signals for 200 s. At 11 s
    the store ends and "x" is queued (a queued run is not cancelled by ``cancel_wanted``:
    runtime/_engine.py:540); ``_release_start`` starts ``_owed_cancel``, which waits for
    ``_resumes_settled`` (runtime/_engine.py:568) inside ``CancelScope(shield=True,
    deadline=now + 10)``: at 21 s the deadline cancels the wait (traced: the owed cancel runs
    from 11 s to 21 s and never calls ``cancel()``), ``trio.Cancelled`` is not a
    ``TrioflowError`` so nothing is even logged, and the cancel is gone. At 30 s "b" ends, "x"
    takes the slot and ends ``completed``."""
    adapter = SlowCreateOfXAndSlowSignalsOfParked()
    parker = PARKER
    await leave_parked(adapter)
    adapter.slow_signals = True
    async with open_test_engine(adapter=adapter, max_running=1) as engine:
        engine.register(tf.workflow("w").step("s", _one_second).build())
        engine.register(tf.workflow("blocker").step("s", _thirty_seconds).build())
        await engine.start("blocker", instance_id="b")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(engine.start, "w", instance_id="x"))
            await trio.sleep(0.5)
            assert await engine.cancel("x")  # True at 10.5 s: storage is slow
            engine.register(parker)  # a resume in the background, 200 s long
        with trio.fail_after(1000):
            ended = await engine.wait("x")
        assert ended.status == "cancelled", ended


# -- 3. an owed cancel cancels a new instance created at the instant it was said -----------------


class GatedCreateAndLoadOfX(MemoryAdapter):
    """The first ``create()`` of ``"x"`` waits for ``create_gate`` and then fails, storing
    nothing (``StorageUnavailableError``); once ``load_gate`` is set to an event, the next
    ``load("x")`` waits for it first (storage slow to answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.create_gate = trio.Event()
        self.create_entered = trio.Event()
        self.load_gate: trio.Event | None = None
        self.load_waiting = trio.Event()
        self.x_tried = False

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id == "x" and not self.x_tried:
            self.x_tried = True
            self.create_entered.set()
            await self.create_gate.wait()
            raise tf.StorageUnavailableError("connection dropped")
        return await super().create(instance_id, *args, **kwargs)

    async def load(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        gate = self.load_gate
        if instance_id == "x" and gate is not None:
            self.load_gate = None
            self.load_waiting.set()
            await gate.wait()
        return await super().load(instance_id, *args, **kwargs)


async def test_an_owed_cancel_cancels_a_new_instance_started_under_the_id_at_the_same_clock_reading(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Engine.cancel: "Cancel an unfinished instance"; README, The engine: "an instance whose
    start was still being stored is cancelled once that store is over"; Engine._owed_cancel
    (b5880dc): the cancel is "of that instance, not of one created under its id since";
    docs/testing.md: on virtual time instances "started in one virtual instant" are told apart
    by creation times a float step apart (the clock does not move between them).

    Reproduction: ``start("w", instance_id="x")`` whose create waits (storage slow);
    ``cancel("x")`` says True at 10 s (``cancel_owed = clock()``, T). At that same virtual
    instant the create fails, storing nothing (``start`` raises ``StorageUnavailableError``):
    the owed cancel starts and reads "x" from storage (slow to answer). Meanwhile the caller
    starts "x" again, of workflow "w2" (a 1000 s step): created at ``stamp(T) == T``. The owed
    cancel's read then finds that new instance, ``created_at <= said_at`` holds
    (runtime/_engine.py:577, ``T <= T``), and it cancels an instance started after the
    ``cancel()`` returned."""
    adapter = GatedCreateAndLoadOfX()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("w").step("s", _one_second).build())
        engine.register(tf.workflow("w2").step("s", _thousand_seconds).build())
        async with trio.open_nursery() as nursery:
            first_done, first = start_beside(nursery, engine)
            await adapter.create_entered.wait()
            assert await engine.cancel("x")  # True after 10 s: the store has not answered
            said = trio.current_time()
            release = adapter.load_gate = trio.Event()
            adapter.create_gate.set()  # the store ends, nothing stored
            await first_done.wait()
            assert isinstance(first[0], tf.StorageUnavailableError), first
            with trio.fail_after(1):
                await adapter.load_waiting.wait()  # the owed cancel reads "x"
            assert trio.current_time() == said  # all in one virtual instant
            await engine.start("w2", instance_id="x")  # after cancel() returned: a new instance
            release.set()
        await trio.sleep(60)
        again = await engine.get_instance("x")
        assert again is not None and again.workflow_name == "w2"
        assert again.status == "running", again  # its 1000 s step is under way; nobody cancelled it


# -- 4. an owed cancel is dropped when the wall clock steps back ---------------------------------


async def test_an_owed_cancel_is_dropped_when_the_wall_clock_steps_back_while_the_start_is_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, The engine: ``cancel()`` returns True "waiting 10 s at most for [...] storage
    slow to answer (the engine stores the decision beside the caller, so a caller that gives
    up meanwhile does not undo it; an instance whose start was still being stored is cancelled
    once that store is over [...])"; README: ``open_engine(clock=...)`` "sets the wall clock";
    docs/adapters.md and runtime/_ids.py ``CreationTimes`` take a clock that steps back as a
    case they handle ("another clock, a second behind or more, is taken as it is").

    Reproduction: ``max_running=1``, "b" holds the slot (a 30 s step); ``start("w",
    instance_id="x")`` is queued (``pending``) and its create takes 20 s; its ``created_at`` is
    stamped at 0 s. At 5 s the wall clock is set back a minute (an NTP step) and ``cancel("x")``
    is called: it says True at 15 s with ``cancel_owed = clock()``, 45 s *earlier* on the wall
    clock than the creation time. At 20 s the store ends, "x" is queued (not cancelled by
    ``cancel_wanted``: it waits for a slot); the owed cancel finds ``created_at > said_at``
    (runtime/_engine.py:577) and does nothing: "x" runs once "b" ends (30 s) and ends
    ``completed``."""
    back = {"by": 0.0}

    def clock() -> float:
        return T0 + trio.current_time() - back["by"]

    adapter = SlowCreateOfX()
    async with open_test_engine(adapter=adapter, max_running=1, clock=clock) as engine:
        engine.register(tf.workflow("w").step("s", _one_second).build())
        engine.register(tf.workflow("blocker").step("s", _thirty_seconds).build())
        await engine.start("blocker", instance_id="b")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(engine.start, "w", instance_id="x"))
            await trio.sleep(5)
            back["by"] = 60.0  # the wall clock is stepped back a minute
            assert await engine.cancel("x")  # True at 15 s (45 s before "x"'s creation, on the wall clock)
        with trio.fail_after(1000):
            ended = await engine.wait("x")
        assert ended.status == "cancelled", ended


# -- 5. a damaged record count is taken for none when the header counts none ---------------------


def test_a_delayed_start_whose_record_count_is_damaged_is_run_into_a_refused_checkpoint_not_reported_unreadable(
    tmp_path: Path,
) -> None:
    """README, Durability: "A stored row this release cannot read (corrupt, malformed, [...]) is
    reported ``failed`` to callers (``wait``, ``get_instance``, ``get_instances``) with the
    reason [...], and its stored bytes are **left untouched** [...] (on SQLite, a column
    damaged into text that is not UTF-8 too: it is read with its bad bytes kept, so its row
    alone is unreadable [...])"; adapters/_sqlite.py:1129: "A damaged count (not an int,
    negative, or more records than any instance writes) gets no records: the kernel then finds
    the header's count unmet and reports that one instance unreadable".

    Reproduction: ``start("done", instance_id="late", delay=100)`` (stored with no record, its
    header counting none); the row's ``next_seq`` is damaged into text that is not UTF-8
    (``'zero'`` or ``-1`` do the same). Reopened: ``_selected`` gives the row no records, which
    the header's count of 0 meets, so the row is taken as readable (``get_instance`` says
    ``running``). When due, its first checkpoint (``WHERE next_seq = 0``) matches nothing;
    ``_checkpoint_one`` then reads ``next_seq`` outside ``_read`` (adapters/_sqlite.py:1048)
    and refuses it: ``CheckpointConflictError: instance 'late' has \\udcff records stored``.
    ``wait("late")`` raises ``InstanceNotLiveError`` ("its failure could not be stored [...] it
    stays running in storage and resumes with the next engine"), and every next engine does
    the same again."""
    db = tmp_path / "f.db"

    async def make() -> None:
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=lambda: T0 + trio.current_time()) as e:
            e.register(tf.workflow("done").step("a", _one_second).build())
            await e.start("done", {"k": 1}, instance_id="late", delay=100)

    _run(make)
    _sql(db, "UPDATE trioflow_instances SET next_seq = CAST(X'ff' AS TEXT) WHERE instance_id = 'late'")

    async def body(engine: tf.Engine) -> Any:
        with trio.move_on_after(5000):
            try:
                ended = await engine.wait("late")
            except tf.TrioflowError as exc:
                return f"{type(exc).__name__}: {exc}"
            return ended.status, ended.error_name
        return "HANG"

    assert _run(_reopen, db, body) == ("failed", "SnapshotDecodeError")
