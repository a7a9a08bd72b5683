"""Durable waiting (SPEC §13, docs/waiting.md) beside slow storage: races a scenario property
test found, each minimized to an explicit scenario (each failed before its fix). All run on trio's autojumping MockClock (virtual time); the adapters are MemoryAdapter
subclasses whose calls take (virtual) time, as a real database's do.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


# -- 1. resume() beside the waker's read crashes the waker for good -----------------------------


class SlowReads(tf.adapters.MemoryAdapter):
    """Listing reads take a while, as on a busy database: due() 1 s, resumable() 0.2 s."""

    async def due(self, *args: Any, **kwargs: Any) -> Any:
        await trio.sleep(1.0)
        return await super().due(*args, **kwargs)

    async def resumable(self) -> Any:
        await trio.sleep(0.2)
        return await super().resumable()


async def test_resume_beside_the_wakers_read_leaves_the_waker_running(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    """A user calls ``engine.resume()`` while the waker's ``due()`` read is in flight, and an
    instance ends before the waker's read returns. Expected: nothing visible; the 5 s timer
    fires. What happens: ``_EndsDuringReads.watching_all`` removes its set from ``_all`` with
    ``list.remove`` (equality, not identity): resume()'s exit removes the waker's (equal, empty)
    set instead of its own, so the end is recorded in resume()'s stale set only, and the waker's
    exit raises ``ValueError: list.remove(x): x not in list``. The waker task dies ("actor
    waker crashed", ERROR) and is never restarted: every parked instance of the engine stays
    ``running`` for ever (here a timer due at 5 s, an hour later). (While the sets are merely
    swapped, a run that ends during the waker's read is not seen as ended: the stale-row guard
    it exists for is off.)"""
    async def quick(data: Any) -> str:
        await trio.sleep(0.3)
        return "ok"

    timer = tf.workflow("timer").wait("t", seconds=5).build()
    short = tf.workflow("short").task("a", job=quick).build()
    async with open_test_engine(adapter=SlowReads()) as engine:
        engine.register(timer)
        engine.register(short)
        iid = await engine.start("timer")
        await trio.sleep(5.1)  # the waker's due() read is in flight, 5.0 .. 6.0
        await engine.start("short")  # ends at 5.4, while the waker still reads
        await engine.resume()  # its own read: 5.1 .. 5.3
        with trio.move_on_after(3600):
            done = await engine.wait(iid)
        got = await engine.get_instance(iid)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], errors
    assert got is not None and got.status == "completed", (got and got.status, got and got.waiting)
    assert done.status == "completed"


# -- 2. a cancel() that said True is lost when the engine closes ----------------------------------


class BusyOnce(tf.adapters.MemoryAdapter):
    """The first write of instance "i" finds the database busy: a failure that may pass
    (``StorageUnavailableError``, as SQLite's ``DatabaseUnavailableError``), which the engine
    retries after a short backoff."""

    busy = True

    async def checkpoint(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id == "i" and self.busy:
            self.busy = False
            raise tf.StorageUnavailableError("database is locked")
        return await super().checkpoint(instance_id, *args, **kwargs)


async def test_cancel_of_a_queued_instance_is_stored_when_the_engine_closes_during_its_admission_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With ``max_running=1``, instance "i" is queued (pending) behind one that holds the slot.
    ``cancel("i")`` returns True (it launches the queued run so that it ends at once); its
    admission checkpoint finds the database busy and backs off; the application then stops the
    engine. Expected (as run_instance's own comment says for a cancel that said yes before an
    engine shutdown): the decision is stored and the next engine ends "i" ``cancelled``. What
    happens: the admission write in ``Engine._instance_actor`` runs before ``run_instance``
    and outside its shutdown handling, so the shutdown cancels the backoff and nothing of the
    cancel is stored; the next engine runs "i" as if never cancelled: it waits for its signal
    for ever (``running``, ``waiting={"signal": "go"}``) and ``wait()`` never returns."""
    wf = tf.workflow("w").receive("r", signal="go").build()
    adapter = BusyOnce()
    async with open_test_engine(adapter=adapter, max_running=1) as engine:
        engine.register(wf)
        await engine.start("w", instance_id="first")  # holds the only slot until it parks
        await engine.start("w", instance_id="i")  # queued
        assert await engine.cancel("i") is True
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        await trio.sleep(100)
        got = await engine.get_instance("i")
    assert got is not None and got.status == "cancelled", (got and got.status, got and got.waiting)


# -- 3. wait() raises InstanceNotLiveError for an instance that wakes while wait() reads -------


class SlowLoad(tf.adapters.MemoryAdapter):
    """A load waits 0.5 s (for a connection) before it reads."""

    async def load(self, *args: Any, **kwargs: Any) -> Any:
        await trio.sleep(0.5)
        return await super().load(*args, **kwargs)


async def test_wait_on_a_parked_instance_that_wakes_while_wait_reads_it(autojump_clock: trio.testing.MockClock) -> None:
    """An instance parks on a 5 s timer; ``wait()`` is called at 4.8 s. Expected: ``wait()``
    follows it across the wake (docs/waiting.md: "wait() follows it across: it returns once the
    woken run has ended") and returns ``completed``. What happens: wait() found no live run and
    read the row; the waker resumed the instance meanwhile and its first checkpoint cleared
    ``waiting``; wait() then sees a non-terminal row that does not wait and raises
    ``InstanceNotLiveError("... is running in storage but not running in this engine; register
    its workflow or call resume()")`` although the run is live in this very engine (wait() does
    not look at ``_live`` again after the read). The same happens when ``cancel()`` or a
    signal wakes the instance during wait()'s read."""
    async def work(data: Any) -> str:
        await trio.sleep(10)
        return "done"

    wf = tf.workflow("w").wait("t", seconds=5).task("work", job=work).build()
    async with open_test_engine(adapter=SlowLoad()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(4.8)  # parked on its timer, due at 5
        done = await engine.wait(iid)
    assert (done.status, done.output) == ("completed", "done")


# -- 4. a cancel() that said True ends the instance failed ----------------------------------------


class CommitTakesTime(tf.adapters.MemoryAdapter):
    """A write is made at once and acknowledged 1 s later; the caller cannot be cancelled while
    it waits (as with SQLiteAdapter, whose queued writes are never taken back and whose callers
    wait for the commit)."""

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().checkpoint(*args, **kwargs)
        with trio.CancelScope(shield=True):
            await trio.sleep(1.0)
        return result


async def test_cancel_that_said_yes_while_a_failure_is_stored_ends_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    """``charge`` fails for good at 1 s; while its failure record is being committed (1 .. 2 s)
    the user calls ``cancel()``, which returns True ("is now being cancelled"). Expected: the
    instance ends ``cancelled`` (SPEC: a cancelled instance ends cancelled, compensated), as the
    engine does when the cancel lands while the last step's completion is stored
    (``_forward``: "the cancel() said yes, so it is honoured"). What happens: it ends
    ``failed`` with the step's ValueError: a ``StepFailure`` leaving the run's cancel scope
    wins over ``run.cancel_requested``. (Found with a receive step's ``SignalTimeoutError`` too:
    a receive with a timeout that is cancelled while its deadline is stored ends failed.)"""
    async def reserve(data: Any) -> str:
        return "r-1"

    async def release(output: Any) -> None:
        pass

    async def charge(data: Any) -> None:
        raise ValueError("card declined")

    wf = tf.workflow("w").task("reserve", job=reserve, compensate=release).task("charge", job=charge).build()
    async with open_test_engine(adapter=CommitTakesTime()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(1.5)  # charge's failure is being committed
        assert await engine.cancel(iid) is True
        done = await engine.wait(iid)
    assert done.status == "cancelled", (done.status, done.error)


# -- 5. get_instance goes back from a terminal status to running -------------------------------


class SlowStorage(tf.adapters.MemoryAdapter):
    """A write is made at once and acknowledged 1 s later (uncancellably, as SQLite's commit);
    a load waits 1.5 s before it reads."""

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().checkpoint(*args, **kwargs)
        with trio.CancelScope(shield=True):
            await trio.sleep(1.0)
        return result

    async def load(self, *args: Any, **kwargs: Any) -> Any:
        await trio.sleep(1.5)
        return await super().load(*args, **kwargs)


async def test_get_instance_never_goes_back_from_completed_to_running(autojump_clock: trio.testing.MockClock) -> None:
    """Polling ``get_instance`` on an instance parked on a 5 s timer. Expected: the status moves
    forward only (running, then completed), as storage's does. What happens: a poll that read
    the row says ``completed`` (the woken run's end is stored), the next poll, which finds the
    run live and takes its ``stored_status`` (not updated until the write is acknowledged),
    says ``running`` again, and a later one ``completed``: a terminal status that goes back.
    The same flip was seen after a restart for a cancelled instance (cancelled, running,
    cancelled)."""
    wf = tf.workflow("w").wait("t", seconds=5).build()
    async with open_test_engine(adapter=SlowStorage()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        seen: list[str] = []
        with trio.move_on_after(20):
            while True:
                got = await engine.get_instance(iid)
                assert got is not None
                if not seen or seen[-1] != got.status:
                    seen.append(got.status)
                await trio.sleep(0.1)
    assert seen == ["running", "completed"], seen


# -- 7. a signal that arrived before the receive's deadline is passed over: the step times out ---


class SlowCommit(tf.adapters.MemoryAdapter):
    """A checkpoint takes 2 s to commit (uncancellably, as SQLite's queued writes)."""

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        with trio.CancelScope(shield=True):
            await trio.sleep(2.0)
        return await super().checkpoint(*args, **kwargs)


async def test_a_signal_stored_before_the_receive_deadline_is_received(autojump_clock: trio.testing.MockClock) -> None:
    """A receive step with ``timeout=1`` starts at 0 s and stores its wait (a checkpoint that
    takes 2 s); the signal is sent at 0.5 s and ``signal()`` returns (stored, and delivered to
    the live run). Expected (docs/waiting.md): the receive gets the payload: the signal came
    before the deadline. What happens: after the checkpoint, ``signal_or_timeout`` checks the
    deadline (``left <= 0: return None``) before it looks at the signals delivered to the run,
    so the step fails with ``SignalTimeoutError`` and the signal stays pending. (Found by the
    property test with a signal sent while the receive's fetch of stored signals was in
    flight.)"""
    wf = tf.workflow("w").receive("r", signal="go", timeout=1.0).build()
    async with open_test_engine(adapter=SlowCommit()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(0.5)
        await engine.signal(iid, "go", "yes")
        done = await engine.wait(iid)
    assert (done.status, done.output) == ("completed", "yes"), (done.status, done.error)
