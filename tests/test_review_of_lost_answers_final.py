"""Adversarial review of lost-answer retries (``start(..., instance_id=X)`` after an earlier try
raised though its create may have stored the row) and of what takes such a row up (``resume()``,
a signal, the waker, a retry), at 5fa9af6. On trio's MockClock (``autojump_clock``), on the
MemoryAdapter and on ``SQLiteAdapter`` over a real file.

README promises relied on. Hooks: ``on_start`` and ``workflow.started`` come "when the instance
starts its first step: a delayed start's once its delay is over (again after a restart that
came before that start was stored)"; "a step never runs without what the hook sets" and the hook
runs again only when "a crash before that store" left the instance never started. Storage
failures: an instance whose storage stays unusable "stops where it was last stored, resumable by
the next engine or ``engine.resume()``"; ``start()``: "retry it with the same ``instance_id``; a
retry on the same engine that finds the instance its earlier try stored, the answer lost, runs
it as a start made here, announced if it had not started, whatever ``resume=`` says, and so does
a ``resume()`` that takes it up first".

Every test here failed at 5fa9af6; fixed by the commit that added this file: a delayed start's
store after its hook counts as announcing it (its row says whether its start was stored); a
``resume()`` tells the waker to look again (a parked row whose run stopped as its wake time was
stored, the answer lost, had nothing else to tell it); a delayed start cancelled before it ran
never starts, even past its start time. The review also found sound: cancels before any retry,
signals to lost rows, lost creates of map items' children, concurrent retries, retries with
another input, purged rows, and workflow timeouts.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine

from test_review_of_5a5c205 import adapter  # noqa: F401  (a fixture: the lost-answer storage, on both adapters)


class _Seen:
    """``on_start`` runs (each adds 1 to ``n``), ``workflow.started`` events, first-step runs."""

    def __init__(self) -> None:
        self.hooks: list[str] = []
        self.started: list[str] = []
        self.firsts: list[str] = []

    def on_start(self, ctx: tf.WorkflowContext) -> None:
        self.hooks.append(ctx.metadata.id)
        ctx.set("n", ctx.get("n") + 1)

    def listen(self, engine: Any) -> None:
        engine.events.on("workflow.started", lambda event: self.started.append(event["instance_id"]))


def _w(seen: _Seen, *, hooked: bool = True) -> tf.WorkflowDefinition:
    async def first(ctx: tf.WorkflowContext) -> Any:
        seen.firsts.append(ctx.metadata.id)
        await trio.sleep(5)
        return ctx.get("n")  # what on_start set: 1 once it has run

    b = tf.workflow("w").with_data({"n": 0}).step("first", first)
    return (b.with_hooks(on_start=seen.on_start) if hooked else b).build()


def _when(engine: Any, kind: str, seconds: float) -> dict[str, Any]:
    return {"delay": seconds} if kind == "delay" else {"start_at": engine._clock() + seconds}


@pytest.mark.parametrize("then", ["retry", "resume"])
@pytest.mark.parametrize("kind", ["delay", "start_at"])
async def test_a_delayed_lost_start_whose_hook_checkpoint_was_stored_runs_on_start_again(
    autojump_clock: trio.testing.MockClock, adapter: Any, kind: str, then: str,
) -> None:
    """Relied on: Hooks, a delayed start is announced once its delay is over, "again after a
    restart that came before that start was stored" (only then); the first step sees what the
    hook set, and the hook runs again only if its checkpoint was not made. Storage failures: a
    retry (or a ``resume()``) runs a lost try's row "announced if it had not started".

    Reproduction: ``w`` has an ``on_start`` hook (``n += 1``); its first step returns ``n``.
    ``open_test_engine(storage_retry_for=5)``. ``start("w", instance_id="x", delay=0.5)`` (or
    ``start_at=now+0.5``) stores ``x`` (``running``, waiting for its start) and loses its answer.
    ``engine.resume()`` takes the row up: at t=0.5 ``workflow.started``, the hook (n=1), and the
    checkpoint right after the hook, which stores the start (``waiting`` cleared) with n=1, IS
    stored but its answer is lost, and storage stays down past ``storage_retry_for``: ``x``
    stops, stored ``running``, not waiting, no records, n=1. Storage comes back; the caller
    retries ``start()`` (or calls ``resume()`` again).

    Expected: the hook's checkpoint was made (storage says the start is stored, n=1): hook and
    ``workflow.started`` once, the first step returns 1. The same without the lost create (a
    plain delayed start whose hook checkpoint's answer is lost, then a retry or ``resume()``)
    gives exactly that.

    What happens: both come a second time; the hook runs on top of the stored n=1 and the first
    step returns 2. ``_announce_start`` (actors/_instance.py:244-248) sets ``run.announced =
    False`` around the store for any row not stored ``pending``: a delayed row is stored
    ``running`` (``pending_until_announced`` is False while it waits for its start), so the lost
    answer leaves ``_unanswered["x"]`` False (``_instance_actor``'s finally,
    runtime/_engine.py:1984-1988). The retry then takes the row as ``fresh``
    (runtime/_engine.py:531-536) and ``_resume_one`` sets ``unannounced``
    (runtime/_engine.py:1506-1512), though a delayed try's row found not waiting had its start
    stored, which is done only after it was announced. (4e41d96's "its status says whether it
    was made" covers only rows created ``pending``.)"""
    seen = _Seen()
    async with open_test_engine(adapter=adapter, storage_retry_for=5) as engine:
        engine.register(_w(seen))
        seen.listen(engine)
        adapter.lose.add("x")
        when = _when(engine, kind, 0.5)
        with pytest.raises(tf.StorageUnavailableError):
            await engine.start("w", instance_id="x", **when)  # stored waiting for its start, answer lost
        adapter.lost_all.add("x")
        assert await engine.resume() == ["x"]
        await trio.sleep(40)  # announced, hook run; its checkpoint stored, answer lost; storage down
        adapter.lost_all.discard("x")
        stored = await adapter.load("x")
        assert stored is not None and (stored.status, len(stored.records)) == ("running", 0)
        assert (seen.hooks, seen.started, seen.firsts) == (["x"], ["x"], [])
        if then == "retry":
            assert await engine.start("w", instance_id="x", **when) == "x"  # the caller's retry
        else:
            await engine.resume()
        with trio.fail_after(600):
            done = await engine.wait("x")
    assert (done.status, done.output, seen.hooks, seen.started) == ("completed", 1, ["x"], ["x"]), \
        (done.status, done.output, seen.hooks, seen.started)


@pytest.mark.parametrize("hooked", [False, True], ids=["no hook", "on_start hook"])
@pytest.mark.parametrize("kind", ["delay", "start_at"])
async def test_a_lost_delayed_start_stalled_on_its_park_checkpoint_is_never_resumed_by_resume(
    autojump_clock: trio.testing.MockClock, adapter: Any, kind: str, hooked: bool,
) -> None:
    """Relied on: Storage failures, an instance whose storage stays unusable "stops where it
    was last stored, resumable by the next engine or ``engine.resume()``"; a ``resume()`` that
    takes up a lost try's row first runs it as the retry would; Hooks, a delayed start starts
    (announced) once its delay is over.

    Reproduction: ``open_test_engine(storage_retry_for=5)``. ``start("w", instance_id="x",
    delay=10)`` (or ``start_at=now+10``) stores ``x`` and loses its answer. ``engine.resume()``
    takes it up (returns ``["x"]``): the run waits for its start out of memory, and its park
    checkpoint (the wake time) IS stored but its answer lost, storage then down past
    ``storage_retry_for``: ``x`` stops (``wait()`` says "it stays running in storage and resumes
    with the next engine or engine.resume()"). Storage comes back at t=40; the caller calls
    ``engine.resume()`` as told.

    Expected: ``x`` is taken up (now, or by the waker, its start time being past) and completes.

    What happens: ``resume()`` returns ``[]`` and ``x`` never runs (``wait()`` still blocks
    2000 s later), whereas a retried ``start()`` instead of ``resume()`` runs it. ``resume()``
    leaves a row with a stored wake time to the waker (``_look_at_parked``,
    runtime/_engine.py:1431-1446), but nothing tells the waker of it: it read no wake time when
    it last asked storage (``soonest`` None: it sleeps until ``_wake_changed`` is set,
    runtime/_engine.py:2026-2030), and the stalled run set none (``_instance_actor`` sets
    ``_wake_changed`` only for a run that parked, runtime/_engine.py:1993-1995, not for one that
    stopped on a park checkpoint stored with its answer lost). ``x`` waits for some other
    instance to park, or for the next engine. (A plain delayed start, without the lost create,
    stalls and stays stuck the same way.)"""
    seen = _Seen()
    async with open_test_engine(adapter=adapter, storage_retry_for=5) as engine:
        engine.register(_w(seen, hooked=hooked))
        seen.listen(engine)
        adapter.lose.add("x")
        when = _when(engine, kind, 10)
        with pytest.raises(tf.StorageUnavailableError):
            await engine.start("w", instance_id="x", **when)  # stored, its answer lost
        adapter.lost_all.add("x")
        assert await engine.resume() == ["x"]  # parks: its wake time stored, the answer lost
        await trio.sleep(40)
        adapter.lost_all.discard("x")
        stored = await adapter.load("x")
        assert stored is not None and stored.status == "running" and stored.wake_at is not None
        # (Before the fix, wait() raised here, "... resumes with the next engine or
        # engine.resume()", and the resume() below did not: now the waker, told of the row by
        # the first resume(), has taken it up again at its start time, and again while storage
        # stayed down, each time announcing it anew, its start not stored: at least once, as a
        # step runs.)
        announced_while_down = len(seen.started)
        await engine.resume()
        done = None
        with trio.move_on_after(2000):
            done = await engine.wait("x")
        assert done is not None, "x never resumed after resume(), its start 2000 s past"
    assert done.status == "completed" and set(seen.started) == {"x"}, (done.status, seen.started)
    assert len(seen.started) <= announced_while_down + 1  # (once more at most, storage back)


@pytest.mark.parametrize("hooked", [False, True], ids=["no hook", "on_start hook"])
@pytest.mark.parametrize("kind", ["delay", "start_at"])
async def test_a_lost_delayed_start_cancelled_before_any_retry_after_its_start_time_is_announced(
    autojump_clock: trio.testing.MockClock, adapter: Any, kind: str, hooked: bool,
) -> None:
    """Relied on: Hooks, "one cancelled before its first step (while it waits for its start, or
    queued for a ``max_running`` slot) never started, and ends without them [``on_start`` and
    ``workflow.started``] (nor a ``started_at``, ...)"; ``cancel()`` of an instance stored
    unfinished and not running here is stored in it / taken up and compensated; a retried
    ``start()`` of the same id and input is idempotent.

    Reproduction: ``start("w", instance_id="x", delay=10)`` (or ``start_at=now+10``) stores
    ``x`` waiting for its start and loses its answer; nothing takes the row up (no retry yet).
    At t=15, before any retry, the caller calls ``cancel("x")`` (True), then retries
    ``start()``, and waits.

    Expected: ``x`` ends ``cancelled`` without ever having started: no ``on_start``, no
    ``workflow.started``, no ``started_at`` (its first step never ran). Cancelled at t=5
    (before its start time) that is what happens.

    What happens: ``workflow.started`` is published, ``on_start`` runs (sets its data) and
    ``started_at`` is set, then ``x`` ends cancelled, its first step never run. ``cancel()``
    takes the row up (``_wake_if_waiting``, its lane waits for ``start``) and marks the run
    ``cancel_requested`` before it runs; the run's delayed branch (actors/_instance.py:182-190)
    calls ``wait_for_start``, which returns without awaiting for a start time already past (and
    sets ``started_at``), then ``_announce_start`` with no ``run.cancel_requested`` check: the
    non-delayed branch just above (actors/_instance.py:178) has one; the comment's "one
    cancelled while it waited for its start never started" relies on the wait raising
    ``Cancelled``, which it does not once the time is past. (Not only after a lost answer: any
    delayed row cancelled after its start time, before a run took it up, e.g. by an engine
    opened with ``resume=False``, gets the same.)"""
    seen = _Seen()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_w(seen, hooked=hooked))
        seen.listen(engine)
        adapter.lose.add("x")
        when = _when(engine, kind, 10)
        with pytest.raises(tf.StorageUnavailableError):
            await engine.start("w", instance_id="x", **when)  # stored waiting for its start, answer lost
        await trio.sleep(15)
        assert (seen.started, seen.hooks) == ([], [])  # nothing took it up
        assert await engine.cancel("x") is True
        assert await engine.start("w", instance_id="x", **when) == "x"  # the caller's retry
        with trio.fail_after(600):
            done = await engine.wait("x")
    assert (done.status, seen.firsts) == ("cancelled", [])
    assert (seen.started, seen.hooks, done.started_at) == ([], [], None), (seen.started, seen.hooks, done.started_at)
