"""The waker takes parked instances up ``WAKE_AHEAD`` before their time (SPEC §13): reading,
decoding and starting them come before the due time, so a timer fires at its time even when
storage is slow to answer; and an instance taken up early waits the rest in memory rather than
leaving again (a workflow timeout a moment away included: it used to park and be taken up again
at once, for ever)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import Adapter
from trioflow.testing import virtual_wall_clock

from storages import DueWatch, StorageBusy, engine_on, finish, watched

#: How long (seconds, virtual) the slow storage takes to answer ``due()``: less than
#: ``WAKE_AHEAD`` (0.5 s), so that the answer still comes before the timers' time.
DUE_TAKES = 0.3


#: The waker's questions to storage, each answered ``DUE_TAKES`` late.
watch = DueWatch(busy_at=500, takes=DUE_TAKES)


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Adapter]:
    return watched(request.param, tmp_path, watch)


async def test_timers_due_together_fire_at_their_time_on_slow_storage(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    clock = virtual_wall_clock()
    due = clock() + 3600
    fired: dict[int, float] = {}

    async def after(n: int) -> None:
        fired[n] = clock()

    wf = tf.workflow("remind").wait("w", until=due).task("after", job=after).build()
    # (due()'s slowness is not left out: absorbing it by asking ahead is what this file tests.)
    storage_busy = StorageBusy(clock, uncounted={"due"})
    async with engine_on(storage_busy.timed(storage)(), clock) as engine:
        engine.register(wf)
        ids = [await engine.start("remind", n) for n in range(20)]
        await trio.sleep(60)
        for iid in ids:
            inst = await engine.get_instance(iid)
            assert inst is not None and inst.waiting is not None and inst.waiting["timer"] == due
        done = [await finish(engine, iid) for iid in ids]
    assert [d.status for d in done] == ["completed"] * 20
    late = sorted(t - due for t in fired.values())
    # Never early, and not DUE_TAKES late: the waker asked ahead of time. On SQLite, the first
    # ones to fire store their records while the others' steps are still to run, and a write
    # takes real time (the mock clock runs at real speed while storage works): over 30 ms seen
    # on a loaded machine. That storage time is not counted as lateness; due()'s time is.
    assert late[0] >= 0, late
    lateness = sorted(t - due - storage_busy.between(due, t) for t in fired.values())
    assert lateness[-1] < DUE_TAKES / 10, (late, lateness)


async def test_a_wait_longer_than_the_park_threshold_by_less_than_the_lookahead(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """A 1.2 s wait leaves memory (over PARK_AFTER, 1 s); taken up 0.5 s early, the 0.7 s left
    are slept in memory, once: the step after it runs at the timer's time."""
    clock = virtual_wall_clock()
    times: list[float] = []

    async def mark(data: Any) -> None:
        times.append(clock())

    wf = tf.workflow("short").task("a", job=mark).wait("w", seconds=1.2).task("b", job=mark).build()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        done = await finish(engine, await engine.start("short"))
    assert done.status == "completed"
    # From the wait's own start, not from a's run: on SQLite a's record is written in between,
    # and a write takes real time (the mock clock runs at real speed while storage works), over
    # DUE_TAKES / 10 now and then on a loaded machine.
    (w,) = [rec for rec in done.history if rec.step_name == "w"]
    assert w.started_at is not None and w.started_at >= times[0], (w.started_at, times)
    assert 1.2 <= times[1] - w.started_at < 1.2 + DUE_TAKES / 10, (times, w.started_at)
    assert watch.total < 10, f"due() asked {watch.total} times for one timer"


@pytest.mark.parametrize("what", ["timer", "signal"])
async def test_a_workflow_timeout_a_moment_away_fires_in_memory(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], what: str,
) -> None:
    """Taken up early for its workflow timeout, the instance meets a wait of an hour: it stays
    in memory for the moment left (it used to leave again, be taken up again at once, and so on
    without the clock ever moving), and times out at its deadline."""
    clock = virtual_wall_clock()
    b = tf.workflow("t").with_timeout(60)
    b = b.wait("w", seconds=3600) if what == "timer" else b.receive("w", signal="go")
    wf = b.build()
    # (due()'s slowness is not left out: absorbing it by asking ahead is what this file tests.)
    storage_busy = StorageBusy(clock, uncounted={"due"})
    async with engine_on(storage_busy.timed(storage)(), clock) as engine:
        engine.register(wf)
        t0 = clock()
        with trio.fail_after(10**5):
            done = await finish(engine, await engine.start("t"))
        ended = clock()
    assert done.status == "timed_out", done.error
    # From the instance's start (start() stores it first), and ended once what the timeout
    # stores (the outcome) is stored: on SQLite each write takes real time (the mock clock runs
    # at real speed while storage works), 80 ms seen on a loaded machine. That storage time is
    # not counted as lateness; due()'s time is.
    assert done.started_at is not None and done.started_at >= t0, (done.started_at, t0)
    deadline = done.started_at + 60
    stored = storage_busy.between(deadline, ended)
    assert deadline <= ended and ended - stored < deadline + DUE_TAKES / 10, (ended - t0, stored)
    assert watch.total < 10, f"due() asked {watch.total} times for one timeout"


@pytest.mark.parametrize("what", ["cancel", "signal"])
async def test_a_run_held_ahead_of_its_time_with_every_slot_taken_queues_and_is_cancelled_or_signalled(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], what: str,
) -> None:
    """max_running=1, the slot held by a long step of another instance: A, taken up ahead of
    its timer, is cancelled (it is compensated once the slot frees, as a queued run is) or
    signalled (it takes the signal once the slot frees, though its timeout has passed since)."""
    clock = virtual_wall_clock()
    released: list[str] = []
    busy_until = trio.Event()

    async def long_step(data: Any) -> None:
        await busy_until.wait()

    b = tf.workflow("A").task("reserve", job=lambda data: "r-1", compensate=lambda out: released.append(out))
    b = b.wait("w", seconds=10) if what == "cancel" else b.receive("w", signal="go", timeout=10)
    a_wf = b.task("after", job=lambda data: data, input=lambda ctx: ctx.steps["w"]).build()
    s_wf = tf.workflow("S").task("s", job=long_step).build()
    async with engine_on(storage(), clock, max_running=1) as engine:
        engine.register(a_wf)
        engine.register(s_wf)
        a = await engine.start("A")
        await trio.sleep(9.6)  # A is taken up at 9.5 s: held, no slot
        s = await engine.start("S")  # takes the only slot
        await trio.sleep(0.1)
        if what == "cancel":
            assert await engine.cancel(a)
        else:
            await engine.signal(a, "go", {"ok": True})
        await trio.sleep(5)
        assert not released, "A ran while S held the only slot"
        busy_until.set()
        done_s = await finish(engine, s)
        done = await finish(engine, a)
    assert done_s.status == "completed"
    if what == "cancel":
        assert done.status == "cancelled" and released == ["r-1"], (done.status, released)
    else:
        assert done.status == "completed" and done.output == {"ok": True}, (done.status, done.output)
        assert released == []
