"""Durable waiting under stress (a review of SPEC §13; each test failed before its fix): retry
counts across a restart, definitions replaced while instances park, due instances the waker
cannot resume, parents timing out while their children compensate, unreadable parked rows,
parked instances whose jobs are registered late, storage locked while a timer falls due."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow._codec import decode_stored
import trioflow._engine as engine_module
from trioflow._snapshot import to_instance
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import virtual_wall_clock

from storages import DueWatch, engine_on, finish, returning, watched

SLACK = 3.0


#: The waker's questions to storage (a busy loop: hundreds in one virtual second).
watch = DueWatch(busy_at=500)


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Adapter]:
    return watched(request.param, tmp_path, watch)


def spun() -> bool:
    return watch.busy





async def stored_view(engine: tf.Engine, iid: str) -> tf.WorkflowInstance:
    record = await engine.adapter.load(iid)
    assert record is not None
    return to_instance(decode_stored(record))


async def wait_until_waiting(engine: tf.Engine, iid: str, what: str = "signal", limit: float = 10**5) -> dict[str, Any]:
    with trio.fail_after(limit):
        for tries in itertools.count():
            inst = await engine.get_instance(iid)
            assert inst is not None
            if inst.waiting is not None and what in inst.waiting:
                stored = await stored_view(engine, iid)
                if stored.waiting == inst.waiting:
                    return inst.waiting
            await trio.sleep(0.001 if tries < 100 else 1.0)
    raise AssertionError("unreachable")


# -- retries ------------------------------------------------------------------------------------


async def test_a_restart_during_a_retried_attempt_keeps_the_attempt_count(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """A step with Retry(max_attempts=3): attempt 1 fails, the engine stops during attempt 2
    (after the retry delay). The docs promise the count goes on after a restart ("tried three
    times in all, not three more"). Observed: the next engine starts the count over and calls
    the job three more times (five calls in all, the last record saying attempts=3)."""
    calls: list[int] = []
    in_second = trio.Event()

    async def flaky(data: Any) -> None:
        calls.append(len(calls) + 1)
        if len(calls) == 2:
            in_second.set()
            await trio.sleep_forever()  # the engine stops during attempt 2
        raise RuntimeError("down")

    wf = tf.workflow("r").task("pay", job=flaky, retry=tf.Retry(max_attempts=3, interval=10.0)).build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("r")
        await in_second.wait()
        await trio.sleep(1)
    assert calls == [1, 2]
    async with engine_on(storage()) as engine:
        engine.register(wf)
        done = await finish(engine, iid)
    assert done.status == "failed"
    # Attempt 2 was cut short: at most it runs again, then attempt 3. Never three more.
    assert len(calls) <= 4, f"the job was called {len(calls)} times for max_attempts=3"


# -- definitions replaced while instances are parked ----------------------------------------


@pytest.mark.parametrize("new_timeout", [None, 100_000])
async def test_a_longer_workflow_timeout_in_the_next_release_does_not_spin_the_waker(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], new_timeout: float | None,
) -> None:
    """An instance parked on a 1000 s timer under a workflow timeout of 100 s; the next engine
    (a new release) registers the workflow with a longer timeout (or none). Docs: instances
    taken up from storage use the definition registered now. Observed: at the old deadline
    the waker wakes it, the run finds nothing due and parks again without storing its new
    wake time, so storage still says it is due: woken again and again at 100 % CPU with
    virtual time frozen (the timer never fires on the memory adapter)."""
    def definition(timeout: float | None) -> tf.WorkflowDefinition:
        b = tf.workflow("t")
        if timeout is not None:
            b = b.with_timeout(timeout)
        return b.task("a", job=returning("a")).wait("nap", seconds=1000).task("b", job=returning("b")).build()

    async with engine_on(storage()) as engine:
        engine.register(definition(100))
        iid = await engine.start("t")
        await wait_until_waiting(engine, iid, "timer")
    async with engine_on(storage()) as engine:
        engine.register(definition(new_timeout))
        t0 = trio.current_time()
        with trio.move_on_after(5000):
            done = await engine.wait(iid)
        assert not spun(), "the waker woke the instance over and over at one virtual instant"
    assert done.status == "completed" and done.output == "b"
    assert trio.current_time() - t0 <= 1000 + SLACK


# -- the waker: due instances it cannot wake ----------------------------------------------------


async def test_overdue_instances_of_an_unregistered_workflow_do_not_stall_other_timers(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restarted engine that does not register (or not yet) a workflow with a batch's worth of
    overdue parked instances: the timers of the workflows it does register must still fire.
    Observed: ``due()`` is asked for a batch of the soonest due rows; all are of the
    unregistered workflow, none can be woken, and the waker polls that same batch every 50 ms
    for ever: the registered workflow's 200 s timer never fires. (WAKE_BATCH is made 10 to keep
    the test fast; with the real 1,000 and 1,000 overdue instances it fails the same way.)"""
    monkeypatch.setattr(engine_module, "WAKE_BATCH", 10)
    batch = engine_module.WAKE_BATCH
    adapter = MemoryAdapter()
    old = tf.workflow("old").wait("nap", seconds=100).task("x", job=returning("x")).build()
    new = tf.workflow("new").wait("nap", seconds=200).task("y", job=returning("y")).build()
    async with engine_on(adapter) as engine:
        engine.register(old)
        for i in range(batch):
            await engine.start("old", i)
        await trio.sleep(10)  # all parked
    async with engine_on(adapter) as engine:
        engine.register(new)
        iid = await engine.start("new")
        t0 = trio.current_time()
        with trio.move_on_after(400):
            done = await engine.wait(iid)
        waited = trio.current_time() - t0
    assert waited <= 200 + SLACK, f"a 200 s timer fired after {waited:.0f} s (or never)"
    assert done.status == "completed"


async def test_parents_woken_by_their_timeout_while_children_compensate_do_not_stall_other_timers(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parents parked on a child step time out (their workflow timeout is part of wake_at): the
    waker wakes them, each cancels its child and waits for the child's compensation (an hour
    here) before its first checkpoint. More than half a wake batch of them held every other due
    timer back for that hour: a 200 s timer started meanwhile fired an hour late (the neighbour of
    the fixed retry / delayed-start bug, through ``_end_badly`` -> ``cancel_children`` before
    ``persist``). WAKE_BATCH is made 10 to keep the test small (6 parents); with 1,000 it is 501."""
    monkeypatch.setattr(engine_module, "WAKE_BATCH", 10)
    n = engine_module.WAKE_BATCH // 2 + 1

    async def slow_undo(out: Any) -> None:
        await trio.sleep(3600)

    async def forever(data: Any) -> None:
        await trio.sleep(10 * 86400)

    kid = (tf.workflow("kid").with_compensation_timeout(None).task("reserve", job=returning("r"), compensate=slow_undo)
           .task("long", job=forever).build())
    # (No bound on the child's compensation; with the default 300 s bounds the stall is 300 s.)
    parent = tf.workflow("parent").with_timeout(100).with_compensation_timeout(None).child("c", workflow="kid").build()
    timer = tf.workflow("timer").wait("nap", seconds=200).task("done", job=returning("done")).build()
    clock = virtual_wall_clock()
    async with engine_on(MemoryAdapter(), clock) as engine:
        for wf in (kid, parent, timer):
            engine.register(wf)
        parents = [await engine.start("parent", i) for i in range(n)]
        await trio.sleep(150)  # the parents timed out at 100 s, their children compensate
        iid = await engine.start("timer")
        started = clock()
        with trio.move_on_after(5000):
            done = await engine.wait(iid)
        late = clock() - started
        assert late <= 200 + SLACK, f"a 200 s timer fired after {late:.0f} s"
        assert done.status == "completed"
        for p in parents:
            assert (await finish(engine, p)).status == "timed_out"


async def test_a_parked_instance_with_an_unreadable_snapshot_is_reported_once_not_twenty_times_a_second(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    """A parked row this release cannot read (stored by a newer release, as the docs foresee)
    is left untouched and reported failed: logged once, like a resume does. Observed: the waker
    finds it due, fails to decode it, logs an ERROR, and asks again 50 ms later, for ever: about
    20 error lines a second (and a batch of such rows would starve every other timer, as
    unregistered workflows do)."""
    garbage = b"\x93garbage"
    adapter = MemoryAdapter()
    await adapter.open()
    await adapter.create("broken", "w", "running", start=garbage, header=garbage)
    await adapter.checkpoint("broken", "running", garbage, [], first_seq=0, wake_at=1.0)  # long overdue
    await adapter.close()
    wf = tf.workflow("w").wait("nap", seconds=100).task("x", job=returning("x")).build()
    async with engine_on(adapter) as engine:
        engine.register(wf)
        with caplog.at_level("ERROR", logger="trioflow"):
            caplog.clear()
            done = await finish(engine, await engine.start("w"))
        reports = [r for r in caplog.records if "cannot read" in r.getMessage()]
        broken = await engine.get_instance("broken")
    assert done.status == "completed"
    assert broken is not None and broken.status == "failed"
    assert len(reports) <= 1, f"the unreadable row was reported {len(reports)} times in 100 s"


# -- restart: parked instances whose jobs are not registered yet ---------------------------------


@pytest.mark.parametrize("woken_by", ["timer", "signal"])
async def test_a_parked_instance_is_held_until_its_jobs_are_registered_like_a_resumed_one(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], woken_by: str,
) -> None:
    """README: "An instance whose workflow's jobs are not all registered yet is held back and
    resumes as soon as they are". A new engine registers the workflow first and its job a
    moment later (an await in between, as service start-up code does). Observed: an instance
    parked on a timer that fell due while no engine ran (or one woken by a signal) is woken at
    once by the waker (or by ``signal()``) without its job: the step fails for good with
    UnknownJobError and the instance ends failed, where an instance resumed from storage is held."""
    charged: list[Any] = []

    async def charge(data: Any) -> str:
        charged.append(data)
        return "paid"

    b = tf.workflow("pay").task("reserve", job=returning("r"))
    b = b.wait("cool-off", seconds=100) if woken_by == "timer" else b.receive("ok", signal="go")
    wf = b.task("charge", job="charge").build()
    async with engine_on(storage()) as engine:
        engine.jobs.register("charge", charge)
        engine.register(wf)
        iid = await engine.start("pay", 42)
        await wait_until_waiting(engine, iid, "timer" if woken_by == "timer" else "signal")
    await trio.sleep(200)  # no engine runs: the timer falls due meanwhile
    async with engine_on(storage()) as engine:
        engine.register(wf)
        if woken_by == "signal":
            await engine.signal(iid, "go")
        await trio.sleep(1)  # start-up goes on: the job is registered a moment later
        engine.jobs.register("charge", charge)
        done = await finish(engine, iid, limit=1000)
    assert done.status == "completed", (done.status, done.error)
    assert charged == [42]


# -- the waker and storage that fails for a while -------------------------------------------------


async def test_a_timer_still_fires_after_storage_was_locked_when_it_fell_due(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Another connection holds SQLite's write lock for a moment (the case the README says is
    retried) just when a parked timer falls due. Every adapter call, reads included, runs in a
    BEGIN IMMEDIATE transaction, so the waker's ``due()`` fails with DatabaseUnavailableError.
    Expected: the waker tries again once the lock is gone and the timer fires. Observed: the
    waker task dies ("actor waker crashed") and no parked instance of this engine is ever woken
    again: the instance stays running, waiting on a timer long past due."""
    import sqlite3

    path = tmp_path / "f.db"
    wf = tf.workflow("w").wait("nap", seconds=100).task("x", job=returning("x")).build()
    async with engine_on(SQLiteAdapter(path, busy_timeout=0.05)) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await wait_until_waiting(engine, iid, "timer")
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            # Taken in this thread (free at once: nothing writes), so virtual time cannot jump
            # past the timer's due time before the lock is held.
            blocker.execute("BEGIN IMMEDIATE")
            await trio.sleep(110)  # the timer falls due while the lock is held
            blocker.execute("COMMIT")
        finally:
            blocker.close()
        later = await engine.start("w")  # a timer started after the lock is gone
        with trio.move_on_after(1000):
            await engine.wait(iid)
            await engine.wait(later)
        first, second = await engine.get_instance(iid), await engine.get_instance(later)
    crashed = [r for r in caplog.records if "waker crashed" in r.getMessage()]
    assert first is not None and first.status == "completed", (first and first.status, first and first.waiting)
    assert second is not None and second.status == "completed", (second and second.status, second and second.waiting)
    assert not crashed, "the waker task died on a storage error that may pass"
