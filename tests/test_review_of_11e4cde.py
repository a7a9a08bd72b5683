"""From an adversarial review of 66e152d, 6d0fde0 and 11e4cde.

Each test here failed on 11e4cde and is fixed by the commit that added this file: a cancel()
that said yes after waiting 10 s for a store now has the instance cancelled beside it once the
store is let go of, whatever it made (a queued run, a row whose answer was lost and that the
caller's retry takes up); a fail-fast fan-out bounds only the child stores of the lanes it
cancels (``WorkflowContext._fanouts``); only a child whose cancel was stored is taken up here
under resume=False; a ledger record damaged into text or NULL, or read for a run cancelled
after its commit, is reported unreadable. The three on cancel() after 10 s and on bounded child stores
pass on 11e4cde^ (regressions of 11e4cde); the resume=False one passes on 66e152d^ (a
regression of 66e152d); the two on the run ledger fail on 6d0fde0^ and on 6d0fde0 alike (the
fix left those paths out). All run on a MockClock with adapter wrappers, no real sleeps."""

from __future__ import annotations

import functools
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine

from test_review_of_close_and_held_starts import ChildStoreKeepsFailing, dad_cancelled_while_its_kid_is_stored


class SlowCreate(MemoryAdapter):
    """``create()`` of instance ``"x"`` takes 11 s (storage slow to answer, past
    ``CANCEL_STORE_WAIT``); ``lose``: it stores the row and then answers
    ``StorageUnavailableError`` (its answer lost), once. Everything else answers at once."""

    def __init__(self, lose: bool = False) -> None:
        super().__init__()
        self.lose = lose

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id == "x":
            await trio.sleep(11)
            created = await super().create(instance_id, *args, **kwargs)
            if self.lose:
                self.lose = False
                raise tf.StorageUnavailableError("the answer was lost")
            return created
        return await super().create(instance_id, *args, **kwargs)


async def _one_second(ctx: Any) -> str:
    await trio.sleep(1)
    return "done"


async def _blocker_step(ctx: Any) -> str:
    await trio.sleep(60)
    return "blocked"


async def test_a_cancel_that_said_yes_after_10_s_is_lost_when_the_slow_start_is_queued_for_a_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, The engine: ``cancel()`` "returns True once that decision is stored [...] waiting
    10 s at most for a step that holds its cancellation off, or storage slow to answer (the
    engine stores the decision beside the caller, so a caller that gives up meanwhile does not
    undo it)"; docs/fanout.md, Links: "it waits 10 s at most, and then says yes, the decision
    standing for the run that store makes".

    Reproduction: ``max_running=1``, the slot held by a 60 s instance; ``start("w",
    instance_id="x")`` whose create takes 11 s; ``cancel("x")`` while it is stored. At 10 s
    cancel() says True. The create answers at 11 s: no slot, so the run is queued
    (``pending``). ``_start`` sets ``cancel_requested`` from ``storing.cancel_wanted`` only
    ``if run not in self._waiting`` (before 11e4cde, cancel() waited for the store and then
    cancelled the queued run itself). The cancel is lost: "x" runs once the slot frees and
    ends ``completed``."""
    async with open_test_engine(adapter=SlowCreate(), max_running=1) as engine:
        engine.register(tf.workflow("w").step("s", _one_second).build())
        engine.register(tf.workflow("blocker").step("b", _blocker_step).build())
        await engine.start("blocker", instance_id="b")
        said: list[bool] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(engine.start, "w", instance_id="x"))

            async def cancel() -> None:
                said.append(await engine.cancel("x"))

            await trio.sleep(0.5)
            nursery.start_soon(cancel)
        assert said == [True]
        with trio.fail_after(600):
            ended = await engine.wait("x")
        assert ended.status == "cancelled"


async def test_a_cancel_that_said_yes_after_10_s_is_lost_when_the_start_is_tried_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, The engine: ``cancel()`` returns True "waiting 10 s at most for a step that holds
    its cancellation off, or storage slow to answer (the engine stores the decision beside the
    caller, so a caller that gives up meanwhile does not undo it)"; README: "a repeated cancel
    says yes until the instance is over" / ``start(..., instance_id=)`` is idempotent (a start
    whose answer was lost is tried again with the same id).

    Reproduction: ``start("w", instance_id="x")`` whose create takes 11 s, stores the row and
    answers ``StorageUnavailableError``; ``cancel("x")`` while it is stored says True at 10 s.
    The start raises; its caller tries it again (same id, same input): the retry finds its own
    row and resumes it. The ``_Storing`` that carried ``cancel_wanted`` was dropped when the
    first try raised; the retry makes a new one: the cancel is lost and "x" ends ``completed``."""
    async with open_test_engine(adapter=SlowCreate(lose=True)) as engine:
        engine.register(tf.workflow("w").step("s", _one_second).build())
        said: list[bool] = []
        failed: list[BaseException] = []

        async def start() -> None:
            try:
                await engine.start("w", instance_id="x")
            except tf.StorageUnavailableError as exc:
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start)

            async def cancel() -> None:
                said.append(await engine.cancel("x"))

            await trio.sleep(0.5)
            nursery.start_soon(cancel)
        assert said == [True] and len(failed) == 1
        await engine.start("w", instance_id="x")  # the caller tries its start again
        with trio.fail_after(600):
            ended = await engine.wait("x")
        assert ended.status == "cancelled"


class ChildStoreKeepsFailingAndCancelWriteLost(ChildStoreKeepsFailing):
    """The first ``create()`` of child ``p/kid#1`` stores it and loses its answer; every later
    one raises ``StorageUnavailableError`` (its step keeps trying). The first checkpoint of
    ``p/kid#1`` (the parent's cancel storing the decision in it) fails, storing nothing (a
    storage call failing "for a reason that may pass"); later ones succeed."""

    def __init__(self) -> None:
        super().__init__()
        self.checkpoint_failed = False

    async def checkpoint(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id == "p/kid#1" and not self.checkpoint_failed:
            self.checkpoint_failed = True
            raise tf.StorageUnavailableError("disk I/O error")
        return await super().checkpoint(instance_id, *args, **kwargs)


async def test_with_resume_false_a_child_whose_cancel_write_failed_once_runs_forward_and_completes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """docs/fanout.md, Cancel: "A parent that is cancelled [...] cancels the children it waits
    on [...] and waits for their ends"; README, Durability: ``open_engine(resume=False)`` "to
    opt out, save for the children of instances running here, which a parent cancelling them
    has compensated here"; README, Storage failures: a storage call an instance makes that
    fails for a reason that may pass "is retried with backoff [...] its checkpoints, and its
    other reads and writes too".

    Reproduction (the scenario of 66e152d's own test, plus one failed write): ``resume=False``;
    parent ``p`` runs a child step whose child's create stores it and loses its answer, later
    tries failing; ``cancel("p")``. The parent's cancel of the child (``Children.cancel`` ->
    ``engine.cancel`` -> ``_cancel_stored``) has its one checkpoint fail, nothing stored, and is
    not tried again (only a warning "could not be cancelled or compensated"). The re-read
    beside it (``_reread_old_row``) finds the row still going ``forward`` and, since 66e152d,
    ``_replace_old_row`` resumes it here because its parent is in ``_live``: the child runs its
    step FORWARD and ends ``completed`` (uncompensated), while its parent ends ``cancelled``
    (on 66e152d^ it stayed unrun in storage)."""

    adapter = ChildStoreKeepsFailingAndCancelWriteLost()
    async with dad_cancelled_while_its_kid_is_stored(adapter) as engine:
        await trio.sleep(60)
        kid = await engine.get_instance("p/kid#1")
        assert kid is not None and adapter.checkpoint_failed
        assert kid.status != "completed", kid.history


# -- 6d0fde0: a damaged run ledger record --------------------------------------------------------


def _ledger_outcome(make_driver: Any, damage: Any, *, cancel_first: bool = False) -> tuple[Any, Any, Any]:
    """An instance of ``test_transaction_once.order_flow`` crashed after its commit, before its
    terminal snapshot; ``damage(driver, iid)`` damages its ledger record; ``cancel_first``: an
    engine its workflow is not registered in cancels it (the cancel stored in it); then an
    engine resumes it. (stored before, what ``wait()`` gave or raised, stored after.)"""
    import test_transaction_once as once

    async def main() -> tuple[Any, Any, Any]:
        adapter, driver = once.HangOnTerminalSave(), make_driver()
        wf = once.order_flow()
        iid = await once.crash_after_commit(adapter, driver, wf)
        await damage(driver, iid)
        if cancel_first:
            async with tf.open_engine(adapter=adapter, driver=driver) as engine:
                assert await engine.cancel(iid)
        stored = await adapter.load(iid)
        outcome: Any
        try:
            with trio.fail_after(300):
                outcome = await once.resume_and_wait(adapter, driver, wf, iid)
        except tf.TrioflowError as exc:
            outcome = exc
        return stored, outcome, await adapter.load(iid)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def _reported_unreadable(outcome: Any) -> bool:
    return isinstance(outcome, tf.WorkflowInstance) and outcome.status == "failed" \
        and outcome.error_name == "SnapshotDecodeError"


def test_a_sqlite_ledger_record_damaged_into_text_is_taken_for_the_driver_not_answering(tmp_path: Any) -> None:
    """README, Transactions (6d0fde0): "A lookup that fails (the database locked) leaves it as
    stored, and ``wait()`` raises ``StorageUnavailableError`` [...]; an entry that cannot be read
    (damaged) has its instance reported as an unreadable row is, left as stored"; README,
    Durability: a stored row this release cannot read "is reported ``failed`` to callers [...]
    with the reason" (on SQLite, "a column damaged into text [...]: its row alone is
    unreadable").

    Reproduction: the SQLiteDriver's ledger (``trioflow_transactions``) row of a run that
    committed before a crash has its ``state`` column set to TEXT (``UPDATE ... SET state =
    'damaged'``; the BLOB column takes it as text). ``SQLiteDriver.find_run``
    (adapters/_sqlite_driver.py, ``bytes(row[0])``) raises ``TypeError`` (a str without an
    encoding), which is neither ``sqlite3.Error`` nor ``SnapshotDecodeError``: ``_forward``
    (actors/_instance.py) takes it for a driver that could not be asked and ``wait()`` raises
    ``StorageUnavailableError`` (every later engine asks again), not the instance reported
    unreadable."""
    import sqlite3

    import test_transaction_once as once

    userdb = tmp_path / "user.db"
    with sqlite3.connect(userdb) as conn:
        conn.execute(once.ORDERS)

    async def damage(driver: Any, iid: str) -> None:
        with sqlite3.connect(userdb) as conn:
            assert conn.execute("UPDATE trioflow_transactions SET state = 'damaged' WHERE run_key = ?",
                                (iid,)).rowcount == 1

    before, outcome, after = _ledger_outcome(lambda: tf.adapters.SQLiteDriver(userdb), damage)
    assert _reported_unreadable(outcome), repr(outcome)
    assert (after.status, after.header, after.records) == (before.status, before.header, before.records)


def test_a_damaged_ledger_record_of_a_run_cancelled_after_its_commit_is_taken_for_the_driver_not_answering() -> None:
    """README, Transactions (6d0fde0): "an entry that cannot be read (damaged) has its instance
    reported as an unreadable row is, left as stored" (and a lookup that fails, the database
    locked, gives ``StorageUnavailableError``).

    Reproduction: the 6d0fde0 test's setup (a run that committed, crashed before its terminal
    snapshot, its MemoryDriver ledger record set to ``b"\\xc1"``, not msgpack), with one engine
    more in between that has not registered its workflow and ``cancel()`` s it (the cancel is
    stored in it: ``compensating``, outcome ``cancelled``). The resuming engine asks the ledger
    through ``committed_under_a_cancel``, whose caller in ``run_instance``
    (actors/_instance.py:86-92) still catches every ``Exception`` as "the driver could not
    tell": the ``SnapshotDecodeError`` 6d0fde0 lets through in ``_forward`` becomes
    ``StorageUnavailableError`` here, and every later engine asks again."""

    async def damage(driver: Any, iid: str) -> None:
        driver.ledger[iid] = b"\xc1"  # (not msgpack)

    before, outcome, after = _ledger_outcome(tf.adapters.MemoryDriver, damage, cancel_first=True)
    assert before.status == "running"
    assert _reported_unreadable(outcome), repr(outcome)
    assert (after.status, after.header, after.records) == (before.status, before.header, before.records)


# -- 11e4cde: a fail-fast step bounds the child stores of lanes it does not cancel ---------------


class SlowBranchAChildCreate(MemoryAdapter):
    """``create()`` of the child of branch ``a`` (an id holding ``"/a/"``) takes 15 s each time
    (storage slow, not down: nothing is written until then, as a cancelled create writes
    nothing); every other call answers at once."""

    def __init__(self) -> None:
        super().__init__()
        self.tries: list[float] = []

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if "/a/" in instance_id:
            self.tries.append(trio.current_time())
            await trio.sleep(15)
        return await super().create(instance_id, *args, **kwargs)


async def test_a_slow_child_store_of_a_lane_nothing_cancels_is_cut_by_a_sibling_branchs_fail_fast_steps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """docs/fanout.md, Links: "a cancel or timeout of the parent (or the engine's close) in that
    span lets the store finish first, for up to 10 s from then [...]. With nothing cancelling, a
    store takes as long as storage does"; README, Storage failures: an instance stops with
    ``StorageUnavailableError`` only "if storage is still unusable" after
    ``storage_retry_for``.

    Reproduction: parent ``p``: a wait-all parallel step ``outer``; branch ``a`` a child step
    whose child's create takes 15 s; branch ``b`` loops (a choice back to it) over a fail-fast
    parallel step ``inner`` (one sub-branch fails after 5 s, the other sleeps) whose failure is
    caught. Nothing cancels branch ``a``. Each time ``inner`` fails, ``_branch_actor``
    (actors/_lane.py:301) calls ``bound_child_stores(run)``, which bounds EVERY child store of
    the run (``run.child_stores``), branch ``a``'s included, to 10 s: its store is cut at 10 s
    ("storing child ... took over 10 s"), tried again, cut again by the next round, and once
    ``storage_retry_for`` (60 s) is spent ``p`` stops: ``wait()`` raises
    ``StorageUnavailableError`` ("storage stayed unavailable") though storage answered every
    call within 15 s. (One cut alone is recovered by the retry; a fan-out that fails fast more
    than once a minute in a sibling lane is enough.)"""
    rounds: list[int] = []

    async def fails(ctx: Any) -> None:
        await trio.sleep(5)
        raise ValueError("inner failed")

    async def sleeps(ctx: Any) -> str:
        await trio.sleep(100)
        return "slept"

    async def count(ctx: Any) -> int:
        rounds.append(1)
        return len(rounds)

    async def done(ctx: Any) -> str:
        return "done"

    async def kid(ctx: Any) -> str:
        return "kid"

    adapter = SlowBranchAChildCreate()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("kid").step("k", kid).build())
        inner = [tf.branch("x").step("f", fails).build(), tf.branch("y").step("s", sleeps).build()]
        b = (tf.branch("b")
             .parallel("inner", branches=inner, on_error="fail-fast", catch=[tf.Catch(errors=[tf.ALL], next="count")])
             .step("count", count)
             .choice("again", choices=[tf.when(lambda ctx: ctx.steps["count"] < 20, next="inner")], default="done")
             .step("done", done)
             .build())
        a = tf.branch("a").child("c", workflow="kid").build()
        engine.register(tf.workflow("dad").parallel("outer", branches=[a, b], on_error="wait-all").build())
        await engine.start("dad", instance_id="p")
        with trio.fail_after(600):
            ended = await engine.wait("p")  # raises StorageUnavailableError at ~75 s
        assert (ended.status, ended.output) == ("completed", {"a": "kid", "b": "done"})
