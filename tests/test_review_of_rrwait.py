"""From a re-review ("rrwait") of f1437a4: callers of ``wait()`` on an instance that parks join
an entry (``Engine._next_run``) that only the instance's next run started here (``_spawn``) or
the engine stopping set. Where a parked instance could not run again here (held for jobs, its
row unreadable at wake), nothing set it, and ``wait()`` hung (the first test only since
f1437a4; the other two before it too). Each failed until the commit that added this file. Time
is trio's MockClock (``autojump_clock``); every wait is under ``trio.fail_after``, so a hang
fails fast."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

import trioflow as tf


async def _one(ctx: tf.WorkflowContext) -> int:
    return 1


def _timer() -> tf.WorkflowDefinition:
    return tf.workflow("w").step("a", _one).wait("t", seconds=5).step("b", _one).build()


def _timer_with_job() -> tf.WorkflowDefinition:
    # The same shape, its last step now a task of job "ship", which nobody registered.
    return tf.workflow("w").step("a", _one).wait("t", seconds=5).task("b", job="ship").build()


async def test_new_caller_of_wait_on_a_parked_instance_held_for_jobs_raises(
        autojump_clock: trio.testing.MockClock) -> None:
    """A user's instance parks on a 5 s timer while a dashboard request waits on it
    (``engine.wait(id)``). The user deploys a new definition with ``register(replace=True)``
    whose last step is a task of job "ship", not registered yet. Another request calls
    ``engine.wait(id)``. README (Errors: "An instance whose workflow's jobs are not all
    registered yet is held back ... (`wait()` on it meanwhile raises `InstanceNotLiveError`
    naming the missing jobs)") says it raises at once.

    Was: the new caller finds the ``_next_run`` entry the parked run left for the first
    caller and joins it without reading the row (``Engine.wait``: ``run is None and parked :=
    self._next_run.get(...)``), skipping the held-for-jobs check; the wake is passed over for
    the missing job, no run starts, and the call hangs (TooSlowError). Passed before f1437a4
    (the caller read the row and raised)."""
    async with tf.open_engine() as engine:
        engine.register(_timer())
        iid = await engine.start("w", {})
        async def first() -> None:
            # (Told as well, once the replacement is registered: the next test's case.)
            with pytest.raises(tf.InstanceNotLiveError, match="ship"):
                await engine.wait(iid)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)  # the first caller, waiting as it parks
            await trio.sleep(2)  # parked out of memory on its timer
            engine.register(_timer_with_job(), replace=True)
            with trio.fail_after(60), pytest.raises(tf.InstanceNotLiveError, match="ship"):
                await engine.wait(iid)
            nursery.cancel_scope.cancel()


async def test_caller_waiting_on_a_parked_instance_when_it_becomes_held_for_jobs_is_told(
        autojump_clock: trio.testing.MockClock) -> None:
    """As above, but the question is the caller already in ``wait()`` when the replacement
    needing job "ship" is registered. The user expects the documented
    ``InstanceNotLiveError`` naming the missing job once the instance is held (at the latest
    when its wake time comes and it cannot run), not a call that blocks until someone
    registers the job.

    Was: it waits on the ``_next_run`` entry, which only the next run's start
    (``_spawn``) or the engine stopping sets; ``register(replace=True)`` and the waker passing
    the due instance over for its missing job set nothing: it hangs (TooSlowError). (Also so
    before f1437a4, with the old ``trio.Event``; f1437a4 makes every caller of a parking run
    wait there.)"""
    async with tf.open_engine() as engine:
        engine.register(_timer())
        iid = await engine.start("w", {})
        outcome: list[BaseException] = []

        async def caller() -> None:
            with trio.fail_after(60):
                try:
                    await engine.wait(iid)
                except tf.InstanceNotLiveError as exc:
                    outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            await trio.sleep(2)  # parked, the caller waiting for its next run
            engine.register(_timer_with_job(), replace=True)
        assert len(outcome) == 1 and "ship" in str(outcome[0])


async def test_caller_waiting_on_a_parked_instance_whose_row_is_unreadable_at_wake_gets_it_failed(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A user's instance parks on a 5 s timer (SQLiteAdapter) while a request waits on it. Its
    row's header is damaged meanwhile (README, Errors: an unreadable row "is reported `failed`
    to callers (`wait`, `get_instance`, `get_instances`) with the reason"). When its timer is
    due the waker finds it unreadable. The user expects the waiting caller to get the same
    failed view ``get_instance`` gives.

    Was: ``_resume_one`` refuses the row (``_refuse_unreadable``) without a run, so the
    ``_next_run`` entry the caller waits on is never set: ``wait()`` hangs (TooSlowError),
    though ``get_instance`` says failed. (The caller already waiting hung before f1437a4 too;
    since f1437a4 a caller arriving before the wake also joins the entry without reading the
    damaged row, and hangs instead of getting ``failed``.)"""
    db = tmp_path / "db.sqlite"
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(str(db))) as engine:
        engine.register(_timer())
        iid = await engine.start("w", {})
        views: list[tf.WorkflowInstance] = []

        async def caller() -> None:
            with trio.fail_after(60):
                views.append(await engine.wait(iid))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            await trio.sleep(2)  # parked out of memory, the caller waiting
            with sqlite3.connect(db) as damage:  # the row damaged while it is parked
                damage.execute("UPDATE trioflow_instances SET header = x'fffe00' WHERE instance_id = ?", (iid,))
            await trio.sleep(10)  # past its wake time: the waker finds it unreadable
            final = await engine.get_instance(iid)
            assert final is not None and final.status == "failed"
        assert views == [final]
