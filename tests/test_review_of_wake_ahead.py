"""An adversarial review of 4c36df6 (the waker takes parked instances up ``WAKE_AHEAD`` = 0.5 s
before their ``wake_at``; an instance whose workflow timeout is within ``PARK_AFTER`` stays in
memory).

What a user relies on, tried around the new half second in memory: a step after a timer (a
retry's next attempt, a delayed start's first step, a receive's timeout) never runs before its
due time on the engine's clock, and not noticeably after it; it runs once; a signal sent or a
``cancel()`` made while the instance sleeps its last half second in memory is taken once; an
engine closed in that half second and reopened fires the timer once, at or after its time; the
waker does not ask storage hundreds of times a virtual second, nor take the same instance up
over and over.

Every test runs on trio's MockClock (``autojump_clock``) with the virtual wall clock, on the
MemoryAdapter and on SQLite.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
import trioflow._engine as engine_module
from trioflow.adapters import Adapter
from trioflow.testing import virtual_wall_clock

from storages import DueWatch, StorageBusy, engine_on, finish, watched

PARK_AFTER = engine_module.PARK_AFTER
WAKE_AHEAD = engine_module.WAKE_AHEAD
#: Never early: the engine's clock is Unix seconds (about 1.7e9), where a float's step is about
#: 2.4e-7 s; a due time computed as ``clock() + seconds`` may round by that much.
EARLY = 1e-5
#: Not late: the waker looks again within WAKE_RETRY (50 ms) at most while it has work.
LATE = engine_module.WAKE_RETRY


#: The waker's questions to storage (a busy loop: hundreds in one virtual second).
watch = DueWatch(busy_at=200)


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Adapter]:
    """Adapters on one storage, as a restart gets them."""
    return watched(request.param, tmp_path, watch)


def spun() -> bool:
    return watch.busy


def live(engine: tf.Engine, iid: str) -> bool:
    """Whether the instance runs in this engine's memory (taken up from storage)."""
    return iid in engine._live  # (private: only to check that a test reaches the window it means)


async def taken_up_by(engine: tf.Engine, iid: str, at: float, clock: Callable[[], float]) -> None:
    """Sleep until ``at`` (on the engine's clock, in the last half second of the instance's
    wait): by then it is taken up, sleeping out the rest of its wait in memory."""
    await trio.sleep_until(trio.current_time() + (at - clock()))
    # On SQLite the take-up reads the row in real time, and the mock clock runs at real speed
    # meanwhile: on a loaded machine it can come tens of milliseconds after its time. Waited for
    # a little (still well inside the last half second), rather than reported as never taken up.
    for _ in range(40):
        if live(engine, iid):
            return
        await trio.sleep(0.001)
    assert live(engine, iid), "not taken up early"


class Marks:
    """When each step's job ran (on the engine's clock), and how often."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.times: dict[str, list[float]] = {}

    def job(self, name: str, result: Any = None) -> Callable[[Any], Any]:
        async def job(data: Any) -> Any:
            self.times.setdefault(name, []).append(self.clock())
            return data if result is None else result
        return job

    def at(self, name: str) -> list[float]:
        return self.times.get(name, [])


class Booking:
    """A reservation undone by its compensation, and a payment that always fails: when each
    payment attempt ran (on the engine's clock), and what was undone."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.calls: list[float] = []
        self.undone: list[Any] = []

    async def reserve(self, data: Any) -> str:
        return "r"

    async def undo(self, out: Any) -> None:
        self.undone.append(out)

    async def failing(self, data: Any) -> None:
        self.calls.append(self.clock())
        raise RuntimeError("down")


def on_time(at: float, due: float) -> bool:
    return due - EARLY <= at < due + LATE


async def each_fires_once_on_time(storage: Callable[[], Adapter], clock: Callable[[], float],
                                  dues: dict[int, float]) -> None:
    """An instance per due time (numbered), each waiting until it: the step after each timer
    runs once, at its own time, and the waker never spins."""
    fired: dict[int, list[float]] = {}

    async def after(data: Any) -> None:
        fired.setdefault(data["n"], []).append(clock())

    wf = tf.workflow("s").wait("w", until=lambda ctx: ctx.input["due"]).task("after", job=after).build()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        ids = [await engine.start("s", {"n": n, "due": due}) for n, due in dues.items()]
        done = [await finish(engine, iid) for iid in ids]
    assert not spun()
    assert [d.status for d in done] == ["completed"] * len(dues)
    assert {n: len(t) for n, t in fired.items()} == {n: 1 for n in dues}
    wrong = {n: round(fired[n][0] - due, 4) for n, due in dues.items() if not on_time(fired[n][0], due)}
    assert not wrong, f"fired this long after (negative: before) their time: {wrong}"


async def times_out_at_its_deadline(storage: Callable[[], Adapter], clock: Callable[[], float],
                                    wf: tf.WorkflowDefinition, timeout: float, late: float = LATE) -> None:
    """An instance of ``wf`` (whose workflow timeout is ``timeout``) times out at its deadline,
    never before, with the waker asking storage only a handful of times and never spinning."""
    storage_busy = StorageBusy(clock)
    async with engine_on(storage_busy.timed(storage)(), clock) as engine:
        engine.register(wf)
        t0 = clock()
        done = await finish(engine, await engine.start(wf.name))
        ended = clock()
    assert not spun(), f"the waker spun: {watch.most_in_a_second()} due() in a virtual second"
    assert done.status == "timed_out", done.error
    # From the instance's start (start() stores it first), and ended once what the timeout
    # stores (the compensation, the outcome) is stored: on SQLite each write takes real time
    # (the mock clock runs at real speed while storage works), 140 ms in all seen on a loaded
    # machine. That storage time is not counted as lateness.
    assert done.started_at is not None and done.started_at >= t0, (done.started_at, t0)
    deadline = done.started_at + timeout
    stored = storage_busy.between(deadline, ended)
    assert deadline - EARLY <= ended and ended - stored < deadline + late, (ended - t0, stored)
    assert watch.total <= 30, f"due() asked {watch.total} times"


# -- timers around the thresholds -------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [
    0.5, PARK_AFTER, PARK_AFTER + 1e-3, 1.2, PARK_AFTER + WAKE_AHEAD - 1e-3, PARK_AFTER + WAKE_AHEAD,
    PARK_AFTER + WAKE_AHEAD + 1e-3, 2.0, 3600.0,
])
async def test_a_timer_fires_once_at_its_time_whatever_its_length(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], seconds: float,
) -> None:
    """The step after a timer runs once, never before the stored due time and within 50 ms of
    it, for waits that stay in memory, that park and are taken up 0.5 s early, and those right
    at PARK_AFTER and PARK_AFTER + WAKE_AHEAD; the waker asks storage a handful of times."""
    clock = virtual_wall_clock()
    marks = Marks(clock)
    wf = (tf.workflow("t").task("a", job=marks.job("a")).wait("w", until=lambda ctx: ctx.input["due"])
          .task("b", job=marks.job("b")).build())
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        due = clock() + seconds
        done = await finish(engine, await engine.start("t", {"due": due}))
    assert not spun()
    assert done.status == "completed", done.error
    assert len(marks.at("b")) == 1, marks.times
    assert on_time(marks.at("b")[0], due), (marks.at("b")[0] - due)
    assert watch.total <= 20, f"due() asked {watch.total} times for one timer"


async def test_timers_staggered_within_the_lookahead_each_fire_at_their_own_time(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """Twenty timers due 25 ms apart (all within half a second), and a few more half a second
    and a second after them: each step after its timer runs once, at its own time (none with
    the first of the batch taken up with it)."""
    clock = virtual_wall_clock()
    base = clock() + 100
    await each_fires_once_on_time(storage, clock, {n: base + 0.025 * n for n in range(20)} | {
        20: base + 0.5, 21: base + 0.75, 22: base + 1.0, 23: base + 1.49})


@pytest.mark.parametrize("gap", [0.6, 0.8, 0.9, 1.1])
async def test_a_timer_due_soon_after_another_is_not_late_while_the_other_runs_its_next_step(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], gap: float,
) -> None:
    """Instance A's timer falls due at T; the step after it runs for 0.4 s (a call to a slow
    service), and A goes on running (a long step after). Instance B's timer falls due at
    T + gap. B's next step must run at its time: the waker, which took A up at T - 0.5 and sees
    A's row still due in storage until A's next checkpoint, must not back off so far meanwhile
    that it takes B up after B's time."""
    clock = virtual_wall_clock()
    fired: dict[str, float] = {}

    async def slow(data: Any) -> Any:
        await trio.sleep(0.4)
        return data

    async def after(data: Any) -> Any:
        fired[data["who"]] = clock()
        return data

    async def tail(data: Any) -> None:
        await trio.sleep(30)

    wf = (tf.workflow("pair").wait("w", until=lambda ctx: ctx.input["due"])
          .task("call", job=slow).task("after", job=after).task("tail", job=tail).build())
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        t = clock() + 100
        a = await engine.start("pair", {"who": "A", "due": t})
        b = await engine.start("pair", {"who": "B", "due": t + gap})
        done = [await finish(engine, iid) for iid in (a, b)]
    assert not spun()
    assert [d.status for d in done] == ["completed", "completed"]
    # The step after B's timer is B's "call" (0.4 s), then "after": so B's "after" at its due + 0.4.
    late = fired["B"] - (t + gap + 0.4)
    assert -EARLY <= late < LATE, f"B's timer fired {late:.3f} s late"


# -- delayed starts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [1.2, PARK_AFTER + WAKE_AHEAD, 3600.0])
@pytest.mark.parametrize("how", ["delay", "start_at"])
@pytest.mark.parametrize("timeout", [0.4, 2.0])
async def test_a_delayed_start_under_a_short_workflow_timeout_starts_on_time_and_times_out_on_time(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], delay: float, how: str, timeout: float,
) -> None:
    """A delayed start (taken up 0.5 s early) of a workflow with a short timeout (under the 0.5 s
    it is taken up early by, or 2 s) whose second step waits an hour: the first step runs at the
    start time, not before; the timeout counts from the start, so it fires ``timeout`` after it
    (not after the take-up, nor after creation)."""
    clock = virtual_wall_clock()
    marks = Marks(clock)
    storage_busy = StorageBusy(clock)
    wf = (tf.workflow("d").with_timeout(timeout).task("a", job=marks.job("a")).wait("w", seconds=3600)
          .task("b", job=marks.job("b")).build())
    async with engine_on(storage_busy.timed(storage)(), clock) as engine:
        engine.register(wf)
        start = clock() + delay
        iid = await (engine.start("d", delay=delay) if how == "delay" else engine.start("d", start_at=start))
        done = await finish(engine, iid)
        ended = clock()
    assert not spun()
    assert done.status == "timed_out", done.error
    assert len(marks.at("a")) == 1 and not marks.at("b"), marks.times
    assert on_time(marks.at("a")[0], start), marks.at("a")[0] - start
    # Ended once what the timeout stores is stored: on SQLite that takes real time (the mock
    # clock runs at real speed while storage works), over LATE now and then on a loaded machine.
    stored = storage_busy.between(start + timeout, ended)
    assert on_time(ended - stored, start + timeout), (ended - (start + timeout), stored)
    assert watch.total <= 30, f"due() asked {watch.total} times"


# -- retries -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interval", [1.2, PARK_AFTER + WAKE_AHEAD, 20.0])
async def test_retry_attempts_run_at_their_delays_and_no_more_often(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], interval: float,
) -> None:
    """Retry(max_attempts=3, interval, backoff 1): the attempts run at 0, interval, 2*interval
    after the first, never before, three calls in all (the instance parked and taken up early
    between them)."""
    clock = virtual_wall_clock()
    calls: list[float] = []

    async def flaky(data: Any) -> str:
        calls.append(clock())
        if len(calls) < 3:
            raise RuntimeError("down")
        return "ok"

    wf = tf.workflow("r").task("pay", job=flaky, retry=tf.Retry(max_attempts=3, interval=interval, backoff_rate=1.0)).build()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        done = await finish(engine, await engine.start("r"))
    assert not spun()
    assert done.status == "completed" and done.output == "ok", done.error
    assert len(calls) == 3, calls
    assert on_time(calls[1], calls[0] + interval), calls[1] - calls[0]
    assert on_time(calls[2], calls[1] + interval), calls[2] - calls[1]
    assert watch.total <= 30, f"due() asked {watch.total} times"


@pytest.mark.parametrize("left", [1.2, PARK_AFTER + WAKE_AHEAD, 1.7, 5.0])
async def test_a_long_retry_delay_cut_by_the_workflow_timeout_times_out_at_the_deadline_once(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], left: float,
) -> None:
    """A step fails and its retry waits an hour; the workflow timeout is ``left`` seconds away
    (the instance parks, is taken up 0.5 s before the deadline, and must not leave again): it
    times out at the deadline, the job tried once, the earlier step compensated once."""
    clock = virtual_wall_clock()
    booking = Booking(clock)
    calls, undone = booking.calls, booking.undone

    timeout = 10.0
    wf = (tf.workflow("rt").with_timeout(timeout)
          .task("wait-a-bit", job=booking.reserve, compensate=booking.undo)
          .wait("pause", seconds=lambda ctx: timeout - left)
          .task("pay", job=booking.failing, retry=tf.Retry(max_attempts=3, interval=3600, max_interval=3600)).build())
    await times_out_at_its_deadline(storage, clock, wf, timeout, late=LATE + 0.01)
    assert len(calls) == 1, calls
    assert undone == ["r"], undone


# -- receive steps --------------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [1.2, PARK_AFTER + WAKE_AHEAD, 3600.0])
async def test_a_receive_with_no_signal_times_out_at_its_timeout_not_before(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], timeout: float,
) -> None:
    """A receive step with a timeout; no signal comes. The catcher's step runs once, at the
    timeout (taken up 0.5 s before it), with SignalTimeoutError."""
    clock = virtual_wall_clock()
    storage_busy = StorageBusy(clock)
    marks = Marks(clock)
    wf = (tf.workflow("rx").task("a", job=marks.job("a"))
          .receive("r", signal="go", timeout=timeout, catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="late")])
          .task("ok", job=marks.job("ok"), end=True)
          .task("late", job=marks.job("late")).build())
    async with engine_on(storage_busy.timed(storage)(), clock) as engine:
        engine.register(wf)
        done = await finish(engine, await engine.start("rx"))
    assert not spun()
    assert done.status == "completed", done.error
    assert not marks.at("ok") and len(marks.at("late")) == 1, marks.times
    # The timeout counts from the receive's start, not from a's run: on SQLite a's record is
    # written in between, and a write takes real time (the mock clock runs at real speed while
    # storage works), tens of milliseconds now and then on a loaded machine.
    (r,) = [rec for rec in done.history if rec.step_name == "r"]
    start = r.started_at
    assert start is not None and start >= marks.at("a")[0], (start, marks.times)
    # The timed-out receive's record is stored before the catcher's step runs: that storage
    # time (real time, as above) is not counted as lateness; never early is checked as strictly.
    late, deadline = marks.at("late")[0], start + timeout
    stored = storage_busy.between(deadline, late)
    assert late >= deadline - EARLY and on_time(late - stored, deadline), (late - start, stored)
    assert watch.total <= 20, f"due() asked {watch.total} times"


@pytest.mark.parametrize("offset", [0.02, 0.2, 0.45])
async def test_a_signal_sent_in_the_last_half_second_before_a_receive_times_out_is_taken_once(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], offset: float,
) -> None:
    """A receive with a 10 s timeout parks and is taken up at 9.5 s; a signal sent just after
    (or 0.2 s / 0.45 s later, while it sleeps in memory; SQLite takes it up a few ms late) is its output; a second receive of the same
    name (30 s timeout) does not get it again, and times out."""
    clock = virtual_wall_clock()
    marks = Marks(clock)
    catch = [tf.Catch(errors=[tf.SignalTimeoutError], next="timed-out")]
    wf = (tf.workflow("rx2").task("a", job=marks.job("a", "a"))
          .receive("first", signal="go", timeout=10)
          .task("got", job=marks.job("got"))
          .receive("second", signal="go", timeout=30, catch=catch)
          .task("again", job=marks.job("again"), end=True)
          .task("timed-out", job=marks.job("timed-out")).build())
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("rx2")
        await trio.sleep(1)
        assert not live(engine, iid), "the 10 s receive did not leave memory"
        # The receive's own stored timeout, not a's run + 10 s: on SQLite a's record is written
        # in between, and a write takes real time (the mock clock runs at real speed while
        # storage works), more than the 20 ms offset now and then on a loaded machine.
        parked = await engine.get_instance(iid)
        assert parked is not None and parked.waiting is not None, parked
        due = parked.waiting["timeout"]
        assert due >= marks.at("a")[0] + 10 - EARLY, (due, marks.times)
        await taken_up_by(engine, iid, due - WAKE_AHEAD + offset + 0.001, clock)
        await engine.signal(iid, "go", {"payload": 1})
        stored_by = clock()  # signal() returns once the signal is stored
        done = await finish(engine, iid)
    assert not spun()
    if stored_by >= due:
        # The engine counts a signal from when it is stored (a receive whose deadline came
        # before does not take it): on SQLite the write takes real time (the mock clock runs at
        # real speed while storage works), and sent 49 ms before the timeout (offset 0.45) it
        # ends after it now and then on a loaded machine. Then either outcome is right, once.
        first = [r for r in done.history if r.step_name == "first"]
        assert len(first) == 1 and (first[0].output == {"payload": 1}) != (done.status == "failed"), done.history
        assert done.status == "completed" or "SignalTimeoutError" in (done.error or ""), done.error
        if done.status == "failed":
            return
    assert done.status == "completed", (done.error, stored_by - due)
    got = [r.output for r in done.history if r.step_name == "first"]
    assert got == [{"payload": 1}], done.history
    assert marks.at("got") and not marks.at("again") and len(marks.at("timed-out")) == 1, marks.times
    second = [r for r in done.history if r.step_name == "second"]
    assert len(second) == 1 and second[0].status == "caught", second


# -- cancel() in the window -------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.02, 0.25, 0.49])
async def test_a_cancel_in_the_last_half_second_of_a_timer_compensates_once_and_runs_nothing_after(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], offset: float,
) -> None:
    """A timer of 10 s parks; cancel() in the half second it sleeps in memory after being taken
    up: the instance ends cancelled, the step before the timer is compensated once, the step
    after it never runs (not even once the timer's time comes), and it stays cancelled."""
    clock = virtual_wall_clock()
    marks = Marks(clock)
    undone: list[Any] = []

    async def undo(out: Any) -> None:
        undone.append(out)

    wf = (tf.workflow("c").task("a", job=marks.job("a", "reserved"), compensate=undo)
          .wait("w", seconds=10).task("b", job=marks.job("b")).build())
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("c")
        await trio.sleep(1)
        # The timer's own due time, not a's run + 10 s: on SQLite a's record is written in
        # between, and a write takes real time (the mock clock runs at real speed while storage
        # works), more than the 20 ms offset now and then on a loaded machine.
        parked = await engine.get_instance(iid)
        assert parked is not None and parked.waiting is not None, parked
        due = parked.waiting["timer"]
        await taken_up_by(engine, iid, due - WAKE_AHEAD + offset, clock)
        assert await engine.cancel(iid)
        done = await finish(engine, iid)
        await trio.sleep(20)
        again = await engine.get_instance(iid)
    assert not spun()
    assert done.status == "cancelled", done.error
    assert undone == ["reserved"]
    assert not marks.at("b"), marks.times
    assert again is not None and again.status == "cancelled"


# -- the engine closed in the window, and reopened -----------------------------------------------------------


@pytest.mark.parametrize("reopen_after", [0.0, 0.3, 5.0])
async def test_an_engine_closed_while_a_timer_sleeps_its_last_half_second_fires_it_once_on_time(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, reopen_after: float,
) -> None:
    """SQLite: a 10 s timer is taken up at 9.5 s; the engine closes at 9.7 s (the instance in
    memory, storage still saying it waits) and another opens on the same file ``reopen_after``
    later: the step after the timer runs once, at the timer's time (or at once, reopened after
    it), never before it."""
    clock = virtual_wall_clock()
    storage_busy = StorageBusy(clock)
    sqlite = storage_busy.timed(watched("sqlite", tmp_path, watch))
    marks = Marks(clock)
    wf = tf.workflow("z").task("a", job=marks.job("a")).wait("w", seconds=10).task("b", job=marks.job("b")).build()
    async with engine_on(sqlite(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("z")
        await trio.sleep(1)
        # The timer's own due time, not a's run + 10 s: on SQLite a's record is written in
        # between, and a write takes real time (the mock clock runs at real speed while storage
        # works), 100 ms now and then on a loaded machine.
        parked = await engine.get_instance(iid)
        assert parked is not None and parked.waiting is not None, parked
        due = parked.waiting["timer"]
        await taken_up_by(engine, iid, due - 0.3, clock)
    assert not marks.at("b"), "the step after the timer ran before its time, as the engine closed"
    await trio.sleep(reopen_after)
    async with engine_on(sqlite(), clock) as engine:
        engine.register(wf)
        reopened = clock()
        done = await finish(engine, iid)
    assert not spun()
    assert done.status == "completed", done.error
    assert len(marks.at("b")) == 1, marks.times
    # Reopened after the due time, the instance is read back before b runs: that storage time
    # (real time, as above) is not counted as lateness.
    b = marks.at("b")[0]
    stored = storage_busy.between(max(due, reopened), b)
    assert b >= due - EARLY and on_time(b - stored, max(due, reopened)), (b - due, b - reopened, stored)


# -- child steps: the parent's 10 s "check" -------------------------------------------------------------------------


@pytest.mark.parametrize("parent_timeout", [None, 10.3, 10.6, 11.2])
async def test_a_parent_taken_up_early_for_its_child_check_goes_on_once(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], parent_timeout: float | None,
) -> None:
    """A parent waits on a child that takes 60 s; the parent parks with a "check" 10 s on
    (CHECK_CHILD_STORED_AFTER), taken up 0.5 s before it. Without a workflow timeout the parent
    completes once its child does, the child's steps having run once; with a timeout near the
    check (10.3 / 10.6 / 11.2 s) it times out at its deadline, never before, its child cancelled;
    the waker does not spin in either case."""
    clock = virtual_wall_clock()
    marks = Marks(clock)
    storage_busy = StorageBusy(clock)

    async def long(data: Any) -> str:
        await trio.sleep(60)
        return "kid-done"

    kid = tf.workflow("kid").task("k1", job=marks.job("k1", "k1")).task("k2", job=long).build()
    b = tf.workflow("parent")
    if parent_timeout is not None:
        b = b.with_timeout(parent_timeout)
    parent = b.task("p0", job=marks.job("p0", "p0")).child("c", workflow="kid").task("p1", job=marks.job("p1")).build()
    async with engine_on(storage_busy.timed(storage)(), clock) as engine:
        engine.register(kid)
        engine.register(parent)
        iid = await engine.start("parent")
        done = await finish(engine, iid)
        ended = clock()
        await trio.sleep(100)
        kids = await engine.get_instances("kid")
    assert not spun(), f"the waker spun: {watch.most_in_a_second()} due() in a virtual second"
    assert len(marks.at("k1")) == 1, marks.times
    start = marks.at("p0")[0]
    if parent_timeout is None:
        assert done.status == "completed", done.error
        assert len(marks.at("p1")) == 1
        # The child's 60 s count from its long step's start, and the parent goes on once the
        # child's end is stored and read back: on SQLite writes and reads come in between, each
        # real time (the mock clock runs at real speed while storage works), over LATE in all
        # now and then on a loaded machine. That storage time is not counted as lateness.
        (kid_done,) = kids
        (k2,) = [rec for rec in kid_done.history if rec.step_name == "k2"]
        assert k2.started_at is not None and k2.completed_at is not None and k2.started_at >= start, k2
        assert on_time(k2.completed_at, k2.started_at + 60), k2.completed_at - k2.started_at
        stored = storage_busy.between(k2.completed_at, marks.at("p1")[0])
        assert on_time(marks.at("p1")[0] - stored, k2.completed_at), (marks.at("p1")[0] - start, stored)
    else:
        assert done.status == "timed_out", done.error
        assert not marks.at("p1")
        # Counted from the instance's start, which comes before p0 runs: between the two, a
        # write takes real time (the mock clock runs at real speed while storage works), a
        # millisecond or two on a loaded machine.
        # And ended once the timeout's outcome is stored (the parent's, its child's cancel):
        # storage time, real time as above, over LATE now and then on a loaded machine.
        assert done.started_at is not None
        deadline = done.started_at + parent_timeout
        stored = storage_busy.between(deadline, ended)
        assert on_time(ended - stored, deadline), (ended - done.started_at, stored)
        assert [k.status for k in kids] == ["cancelled"], kids
    assert watch.total <= 40, f"due() asked {watch.total} times"


# -- workflow timeouts right at the thresholds ---------------------------------------------------------------------


@pytest.mark.parametrize("left", [PARK_AFTER - 1e-3, PARK_AFTER, PARK_AFTER + 1e-3, PARK_AFTER + WAKE_AHEAD,
                                  PARK_AFTER + WAKE_AHEAD + 1e-3, 2.0])
@pytest.mark.parametrize("what", ["timer", "receive", "receive-with-timeout"])
async def test_a_workflow_timeout_at_the_thresholds_fires_once_at_its_deadline(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], left: float, what: str,
) -> None:
    """The instance starts an hour-long wait when its workflow timeout is ``left`` seconds away
    (just under, at and over PARK_AFTER, and at PARK_AFTER + WAKE_AHEAD): it times out at the
    deadline (never before), the earlier step compensated once, with the waker asking storage
    only a handful of times."""
    clock = virtual_wall_clock()
    booking = Booking(clock)
    undone = booking.undone

    timeout = 20.0
    b = (tf.workflow("wt").with_timeout(timeout).task("reserve", job=booking.reserve, compensate=booking.undo)
         .wait("pause", seconds=timeout - left))
    if what == "timer":
        b = b.wait("w", seconds=3600)
    elif what == "receive":
        b = b.receive("w", signal="go")
    else:
        b = b.receive("w", signal="go", timeout=3600)
    wf = b.build()
    await times_out_at_its_deadline(storage, clock, wf, timeout)
    assert undone == ["r"]


# -- signals and events in the window ----------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-0.01, 0.01])
async def test_a_signal_sent_just_before_or_after_a_receive_times_out_in_memory_is_payload_or_timeout_never_both(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], offset: float,
) -> None:
    """A receive with a 10 s timeout, taken up 0.5 s before it; a signal sent 10 ms before the
    timeout is the step's output; one sent 10 ms after it is not (the step timed out, the
    catcher ran): never both, each step once.

    A signal counts from when it is stored (``Engine.signal``: ``stored_at``), and on SQLite the
    write takes real time (the mock clock runs at real speed while storage works), more than
    10 ms now and then on a loaded machine: a signal sent 10 ms before the timeout but stored
    after it rightly times out. So the deadline is the receive's own (stored with its wait, not
    the first step's run + 10 s: a write comes between the two), and a try whose signal was not
    stored by the time ``signal()`` returned, before the deadline, only checks "never both";
    tries go on until one was (16 at most)."""
    clock = virtual_wall_clock()
    marks = Marks(clock)
    catch = [tf.Catch(errors=[tf.SignalTimeoutError], next="timed-out")]
    wf = (tf.workflow("edge").task("a", job=marks.job("a", "a"))
          .receive("r", signal="go", timeout=10, catch=catch)
          .task("got", job=marks.job("got"), next="linger")
          .task("timed-out", job=marks.job("timed-out"))
          .wait("linger", seconds=5).build())  # (still running when the late signal comes)
    checked = False
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        for _ in range(16):
            marks.times.clear()
            iid = await engine.start("edge")
            await trio.sleep(1)
            inst = await engine.get_instance(iid)
            assert inst is not None and inst.waiting is not None and inst.waiting["signal"] == "go", inst
            due = inst.waiting["timeout"]
            await trio.sleep_until(trio.current_time() + (due + offset - clock()))
            if offset < 0:
                assert live(engine, iid), "not taken up early"
            await engine.signal(iid, "go", "payload")
            stored_by = clock()
            done = await finish(engine, iid)
            assert done.status == "completed", done.error
            r = [rec for rec in done.history if rec.step_name == "r"]
            assert len(r) == 1, r
            took = r[0].output == "payload" and len(marks.at("got")) == 1 and not marks.at("timed-out")
            timed_out = r[0].status == "caught" and len(marks.at("timed-out")) == 1 and not marks.at("got")
            assert took != timed_out, (r, marks.times)  # one or the other, never both
            if offset < 0 and stored_by >= due:
                continue  # stored across the deadline: either is right
            if offset < 0:
                assert took, (r, marks.times)
            else:
                assert timed_out, (r, marks.times)
                assert on_time(marks.at("timed-out")[0], due)
            checked = True
            break
    assert not spun()
    assert checked, "no signal sent 10 ms before the timeout was stored before it in 16 tries"


async def test_a_signal_sent_while_a_timer_sleeps_its_last_half_second_is_taken_once_by_the_receive_after_it(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """Timer (10 s, parks, taken up at 9.5 s) then two receives of the same signal name (5 s
    timeouts, caught). One signal sent at 9.7 s (while the run sleeps in memory, before it has
    read its stored signals) is the first receive's output, and only its: the second times out."""
    clock = virtual_wall_clock()
    marks = Marks(clock)
    catch = [tf.Catch(errors=[tf.SignalTimeoutError], next="end")]
    wf = (tf.workflow("tr").task("a", job=marks.job("a", "a")).wait("w", seconds=10)
          .receive("r1", signal="go", timeout=5, catch=catch)
          .receive("r2", signal="go", timeout=5, catch=catch)
          .task("end", job=marks.job("end")).build())
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("tr")
        await trio.sleep(1)
        due = marks.at("a")[0] + 10
        await taken_up_by(engine, iid, due - 0.3, clock)
        await engine.signal(iid, "go", 7)
        done = await finish(engine, iid)
    assert not spun()
    assert done.status == "completed", done.error
    by_step = {rec.step_name: rec for rec in done.history}
    assert by_step["r1"].output == 7 and by_step["r1"].status == "completed", done.history
    assert by_step["r2"].status == "caught", done.history
    assert len(marks.at("end")) == 1
    # r2's timeout counts from r2's start, not from the first step's run + 10 s: on SQLite the
    # records of a, w and r1 are written in between, and each write takes real time (the mock
    # clock runs at real speed while storage works), 56 ms in all seen on a loaded machine.
    r2_started = by_step["r2"].started_at
    assert r2_started is not None and r2_started >= due - EARLY, (r2_started, due)
    assert on_time(marks.at("end")[0], r2_started + 5), (marks.at("end")[0] - due, marks.at("end")[0] - r2_started)


async def test_the_wait_steps_completed_event_comes_once_at_its_time(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """Listeners of ``workflow.step.completed`` hear the timer step end once, at its due time
    (not when the instance was taken up, 0.5 s before)."""
    clock = virtual_wall_clock()
    heard: list[tuple[str, float]] = []
    wf = tf.workflow("ev").wait("w", seconds=30).task("b", job=Marks(clock).job("b")).build()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        engine.events.on("workflow.step.completed", lambda event: heard.append((event["step_name"], clock())))
        done = await finish(engine, await engine.start("ev"))
    assert done.status == "completed", done.error
    waits = [t for name, t in heard if name == "w"]
    assert len(waits) == 1, heard
    # Due 30 s after the wait step started (not after start() was called: storing the instance
    # takes real time on SQLite, which the mock clock counts).
    began = done.step_results["w"].started_at
    assert began is not None
    assert on_time(waits[0], began + 30), waits[0] - began


# -- delayed starts in the window ------------------------------------------------------------------------------------


async def test_a_delayed_start_cancelled_in_its_last_half_second_never_starts(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """start(delay=10), cancel() at 9.7 s (taken up, sleeping in memory): the instance ends
    cancelled, its first step never runs and ``on_start`` is never called."""
    clock = virtual_wall_clock()
    marks = Marks(clock)
    started: list[float] = []

    async def on_start(ctx: Any) -> None:
        started.append(clock())

    wf = tf.workflow("ds").with_hooks(on_start=on_start).task("a", job=marks.job("a")).build()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        t0 = clock()
        iid = await engine.start("ds", delay=10)
        await taken_up_by(engine, iid, t0 + 9.7, clock)
        assert await engine.cancel(iid)
        done = await finish(engine, iid)
        await trio.sleep(10)
    assert done.status == "cancelled", done.error
    assert not marks.at("a") and not started, (marks.times, started)


@pytest.mark.parametrize("reopen_after", [0.0, 5.0])
async def test_a_delayed_start_whose_engine_closes_in_its_last_half_second_starts_once_on_time(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, reopen_after: float,
) -> None:
    """SQLite: start(delay=10); the engine closes at 9.7 s, once the instance was taken up; the
    next engine on the file starts it once (``on_start`` once, first step once), at 10 s (or
    at once, reopened after it), and its workflow timeout (3 s) counts from that start."""
    clock = virtual_wall_clock()
    storage_busy = StorageBusy(clock)
    sqlite = storage_busy.timed(watched("sqlite", tmp_path, watch))
    marks = Marks(clock)
    started: list[float] = []

    async def on_start(ctx: Any) -> None:
        started.append(clock())

    wf = (tf.workflow("dc").with_timeout(3).with_hooks(on_start=on_start).task("a", job=marks.job("a"))
          .wait("w", seconds=3600).build())
    async with engine_on(sqlite(), clock) as engine:
        engine.register(wf)
        t0 = clock()
        iid = await engine.start("dc", delay=10)
        await taken_up_by(engine, iid, t0 + 9.7, clock)
    assert not marks.at("a") and not started
    await trio.sleep(reopen_after)
    async with engine_on(sqlite(), clock) as engine:
        engine.register(wf)
        begin = max(t0 + 10, clock())
        done = await finish(engine, iid)
        ended = clock()
    assert not spun()
    assert done.status == "timed_out", done.error
    assert len(marks.at("a")) == 1 and len(started) == 1, (marks.times, started)
    # Reopened after 10 s, the instance is read back before it starts, and each step's record
    # is stored before the next runs; the timeout stores the outcome before the instance ends.
    # On SQLite that takes real time (the mock clock runs at real speed while storage works),
    # over LATE now and then on a loaded machine: storage time after a due time is not counted
    # as lateness (never early is checked as strictly).

    def on_time_but_storage(at: float, due: float) -> bool:
        return due - EARLY <= at and on_time(at - storage_busy.between(due, at), due)

    assert on_time_but_storage(started[0], begin), started[0] - begin
    assert on_time_but_storage(marks.at("a")[0], begin), marks.at("a")[0] - begin
    # The workflow timeout counts from the instance's start.
    assert done.started_at is not None and on_time_but_storage(done.started_at, begin), done.started_at - begin
    deadline = done.started_at + 3
    assert on_time_but_storage(ended, deadline), (ended - deadline, storage_busy.between(deadline, ended))


async def test_a_signal_sent_in_a_delayed_starts_last_half_second_is_taken_once_by_its_first_receive(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """start(delay=10) of a workflow that first receives "go" (20 s timeout); the signal, sent
    at 9.8 s (taken up, sleeping in memory), is its output once the instance starts at 10 s."""
    clock = virtual_wall_clock()
    marks = Marks(clock)
    wf = (tf.workflow("dr").receive("r", signal="go", timeout=20).task("b", job=marks.job("b")).build())
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        t0 = clock()
        iid = await engine.start("dr", delay=10)
        await taken_up_by(engine, iid, t0 + 9.8, clock)
        await engine.signal(iid, "go", "x")
        done = await finish(engine, iid)
    assert done.status == "completed", done.error
    assert [rec.output for rec in done.history if rec.step_name == "r"] == ["x"], done.history
    assert len(marks.at("b")) == 1 and on_time(marks.at("b")[0], t0 + 10), marks.at("b")


# -- retries in the window -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reopen_after", [0.0, 15.0])
async def test_an_engine_closed_in_a_retry_delays_last_half_second_keeps_the_attempt_count(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, reopen_after: float,
) -> None:
    """SQLite: Retry(max_attempts=3, interval=10, backoff 1); attempt 1 fails; the engine closes
    at 9.7 s into the delay (taken up, sleeping); the next engine makes attempt 2 at 10 s (or at
    once, reopened later) and attempt 3 10 s after it: three calls in all, never early."""
    clock = virtual_wall_clock()
    storage_busy = StorageBusy(clock)
    sqlite = storage_busy.timed(watched("sqlite", tmp_path, watch))
    booking = Booking(clock)
    calls = booking.calls

    wf = tf.workflow("rc").task("pay", job=booking.failing, retry=tf.Retry(max_attempts=3, interval=10, backoff_rate=1.0)).build()
    async with engine_on(sqlite(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("rc")
        await trio.sleep(1)
        assert len(calls) == 1
        await taken_up_by(engine, iid, calls[0] + 9.7, clock)
    await trio.sleep(reopen_after)
    async with engine_on(sqlite(), clock) as engine:
        engine.register(wf)
        reopened = clock()
        done = await finish(engine, iid)
    assert not spun()
    assert done.status == "failed", done.error
    assert len(calls) == 3, calls
    # Reopened after its time, attempt 2 comes at once, but only once the new engine has read
    # the instance back (and stored what it stores before the attempt): time the mock clock
    # runs at real speed, up to 75 ms seen on a loaded machine. That storage time is not counted
    # as lateness (a wait of its own, an interval over again, is still seen; an early call too).
    due = max(calls[0] + 10, reopened)
    assert on_time(calls[1] - storage_busy.between(due, calls[1]), due), (
        calls[1] - calls[0], storage_busy.between(due, calls[1]))
    assert on_time(calls[2], calls[1] + 10), calls[2] - calls[1]


async def test_a_cancel_in_a_retry_delays_last_half_second_records_the_attempts_and_compensates_once(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """A step before compensates; the next fails and waits 10 s to retry; cancel() at 9.7 s
    (taken up, sleeping): cancelled, no further attempt, the earlier step compensated once."""
    clock = virtual_wall_clock()
    booking = Booking(clock)
    calls, undone = booking.calls, booking.undone

    wf = (tf.workflow("rcc").task("reserve", job=booking.reserve, compensate=booking.undo)
          .task("pay", job=booking.failing, retry=tf.Retry(max_attempts=3, interval=10, backoff_rate=1.0)).build())
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("rcc")
        await trio.sleep(1)
        await taken_up_by(engine, iid, calls[0] + 9.7, clock)
        assert await engine.cancel(iid)
        done = await finish(engine, iid)
        await trio.sleep(30)
    assert done.status == "cancelled", done.error
    assert len(calls) == 1, calls
    assert undone == ["r"]


# -- many timers and small batches -------------------------------------------------------------------------------------


async def test_more_timers_within_half_a_second_than_half_a_wake_batch_each_fire_on_time(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """WAKE_BATCH made 10 (the real 1,000 needs 500 timers within half a second): 30 timers due
    15 ms apart. Those taken up early count among the batch on its way until they fire, so the
    waker takes the later ones up as the earlier fire: each must still fire at its time, once."""
    monkeypatch.setattr(engine_module, "WAKE_BATCH", 10)
    clock = virtual_wall_clock()
    base = clock() + 50
    await each_fires_once_on_time(storage, clock, {n: base + 0.015 * n for n in range(30)})


# -- max_running ---------------------------------------------------------------------------------------------------------


async def test_an_instance_in_the_last_half_second_of_a_long_wait_does_not_hold_back_a_new_start(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """max_running=1. Docs: a wait longer than PARK_AFTER "holds no task and no max_running
    slot". Instance A waits 10 s (parked); at 9.6 s a one-step instance S is started: its step
    runs at once, not once A's timer has fired (A taken up at 9.5 s, sleeping out its last half
    second in the only slot). A still fires on time."""
    clock = virtual_wall_clock()
    marks = Marks(clock)
    a_wf = tf.workflow("A").task("a0", job=marks.job("a0")).wait("w", seconds=10).task("a1", job=marks.job("a1")).build()
    s_wf = tf.workflow("S").task("s", job=marks.job("s")).build()
    async with engine_on(storage(), clock, max_running=1) as engine:
        engine.register(a_wf)
        engine.register(s_wf)
        a = await engine.start("A")
        await trio.sleep(1)
        due = marks.at("a0")[0] + 10
        await trio.sleep_until(trio.current_time() + (due - 0.4 - clock()))
        s = await engine.start("S")
        s_started = clock()  # once start() has stored S (on SQLite that write takes real time)
        await finish(engine, s)
        await finish(engine, a)
    assert on_time(marks.at("a1")[0], due), marks.at("a1")[0] - due
    assert marks.at("s")[0] - s_started < LATE, f"S's step ran {marks.at('s')[0] - s_started:.3f} s after its start"


# -- held runs: a second review (each failed before its fix) -----------------------------------------------------


@pytest.mark.parametrize("timeout", [None, 3600])
async def test_an_instance_whose_definition_was_replaced_is_not_held_past_the_time_it_was_taken_up_for(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], timeout: float | None,
) -> None:
    """Parked under a definition with a 60 s workflow timeout, then the definition is replaced
    by one with none (or an hour): taken up at the stored time, it parks again with its new
    wake time rather than being held in memory that long, its row still due (the waker then
    looked every 50 ms for ever, and 500 such runs stopped it taking up anything else)."""
    clock = virtual_wall_clock()
    v1 = tf.workflow("r").with_timeout(60).receive("w", signal="go").build()
    b = tf.workflow("r")
    v2 = (b if timeout is None else b.with_timeout(timeout)).receive("w", signal="go").build()
    async with engine_on(storage(), clock) as engine:
        engine.register(v1)
        iid = await engine.start("r")
        await trio.sleep(10)
        assert not live(engine, iid)
        engine.register(v2, replace=True)
        await trio.sleep(60)  # past the stored wake time: taken up, and parked again
        before = watch.total
        await trio.sleep(100)
        assert not live(engine, iid), "held in memory past the time it was taken up for"
        assert watch.total - before < 20, f"due() asked {watch.total - before} times in 100 s"
        await engine.signal(iid, "go", 1)
        done = await finish(engine, iid)
    assert done.status == "completed" and done.output == 1


@pytest.mark.parametrize("held", [True, False])
async def test_a_cancel_that_said_yes_as_the_engine_closed_is_kept_by_the_next_engine(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], held: bool,
) -> None:
    """cancel() says yes to a run held in its last half second (or, for comparison, to one in a
    long step), and the engine closes before the run gets to go on: the next engine compensates
    it, and never runs the step after (a held run's close stored nothing: cancel() said yes,
    and the next engine went forward). Eight tries at least, more until one said yes (64 at
    most): trio runs a batch of tasks in random order, and whether the decision is stored before
    the close is a race (each try says yes about half the time, but runs of eight that all said
    no came in about one run in twenty)."""
    clock = virtual_wall_clock()
    ran: list[Any] = []
    undone: list[Any] = []

    async def b(data: Any) -> None:
        ran.append(data)

    async def slow(data: Any) -> Any:
        await trio.sleep(1000)
        return data

    async def undo(out: Any) -> None:
        undone.append(out)

    wf = tf.workflow("z").task("a", job=lambda d: d, compensate=undo)
    wf = (wf.wait("w", seconds=10) if held else wf.task("s", job=slow)).task("b", job=b).build()
    said_yes: list[str] = []
    async with trio.open_nursery() as outer:
        for n in range(64):
            if n >= 8 and said_yes:
                break
            async with engine_on(storage(), clock) as engine:
                engine.register(wf)
                iid = await engine.start("z", n)
                await trio.sleep(9.7)
                assert (engine._live[iid].hold is not None) == held

                async def canceller(engine: tf.Engine = engine, iid: str = iid) -> None:
                    try:
                        if await engine.cancel(iid):
                            said_yes.append(iid)
                    except tf.EngineClosedError:
                        pass

                outer.start_soon(canceller)
                await trio.sleep(0)
            await trio.sleep(1)
    assert said_yes
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        done = {iid: (await finish(engine, iid)).status for iid in said_yes}
    assert set(done.values()) == {"cancelled"}, (done, undone, ran)


async def test_a_signal_no_lane_waits_for_yet_leaves_a_held_run_held(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """max_running=1. A signal for the receive after the timer, sent while the run is held in
    its timer's last half second, does not end the hold: the run does not take the slot early,
    and a start made then runs at once."""
    clock = virtual_wall_clock()
    marks = Marks(clock)
    a_wf = tf.workflow("A").wait("w", seconds=10).receive("r", signal="later").build()
    s_wf = tf.workflow("S").task("s", job=marks.job("s")).build()
    async with engine_on(storage(), clock, max_running=1) as engine:
        engine.register(a_wf)
        engine.register(s_wf)
        a = await engine.start("A")
        await taken_up_by(engine, a, clock() + 9.6, clock)
        assert engine._live[a].hold is not None
        await engine.signal(a, "later", "x")
        await trio.sleep(0.05)
        # From when start() returns: S's step runs after it (its run is spawned as it returns),
        # but the write start() waits for takes real time on SQLite (the mock clock runs at
        # real speed while storage works), over 10 ms now and then on a loaded machine.
        await engine.start("S")
        t0 = clock()
        await trio.sleep(2)
        done = await finish(engine, a)
    assert done.status == "completed" and done.output == "x"
    assert marks.at("s")[0] - t0 < 0.01, f"S kept waiting {marks.at('s')[0] - t0:.2f} s"


@pytest.mark.parametrize("seed", range(6))
async def test_slots_balance_through_holds_cancels_and_signals(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], seed: int,
) -> None:
    """max_running=2, sixteen instances (a step, a timer, a receive with a timeout, a step),
    random cancels and signals while some are held and others queued: every instance ends,
    each compensation and each last step runs at most once, and the engine ends with no slot
    taken, nothing queued and nothing live."""
    rnd = random.Random(seed)
    clock = virtual_wall_clock()
    undone: dict[str, int] = {}
    after: dict[str, int] = {}

    async def step(data: Any) -> Any:
        await trio.sleep(data["busy"])
        return data

    async def undo(out: Any) -> None:
        undone[out["k"]] = undone.get(out["k"], 0) + 1

    async def last(data: Any) -> None:
        after[data["k"]] = after.get(data["k"], 0) + 1

    wf = (tf.workflow("s").task("a", job=step, compensate=undo)
          .wait("t", until=lambda ctx: ctx.input["due"])
          .receive("w", signal="go", timeout=1.3)
          .task("b", job=last, input=lambda ctx: ctx.input).build())
    async with engine_on(storage(), clock, max_running=2) as engine:
        engine.register(wf)
        ids = [await engine.start("s", {"k": str(i), "busy": rnd.choice([0, 0.3, 2.0]),
                                        "due": clock() + rnd.choice([1.2, 1.6, 3.0, 5.0, 8.0, 12.0])})
               for i in range(16)]
        for _ in range(40):
            await trio.sleep(rnd.uniform(0.05, 0.4))
            assert engine._running >= 0
            iid = rnd.choice(ids)
            try:
                if rnd.random() < 0.5:
                    await engine.cancel(iid)
                else:
                    await engine.signal(iid, "go", {"k": iid})
            except tf.InstanceNotLiveError:
                pass
        done = [await finish(engine, iid) for iid in ids]
        assert engine._running == 0 and not engine._waiting and not engine._live, (
            engine._running, len(engine._waiting), list(engine._live))
    assert all(d.status in ("completed", "cancelled", "timed_out", "failed") for d in done)
    assert all(c == 1 for c in undone.values()), undone
    assert all(c == 1 for c in after.values()), after
