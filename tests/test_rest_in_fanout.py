"""Waits inside parallel branches and map items leave memory (issue 14 item 3, issue 15 items 2
and 4): once every lane of an instance that runs rests in a long wait (a timer, a signal, a
child's end, a retry's delay) and they all stay at rest for ``PARK_AFTER``, the instance is
stored with when to wake it and holds no task and no ``max_running`` slot; a due timer, a
signal a lane waits for, a child's end, a cancel or the workflow timeout takes it up again, and
only the lanes that had not ended run on.

On trio's MockClock, on the MemoryAdapter and SQLite (``storage`` fixture).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import Adapter, MemoryAdapter

from storages import engine_on, finish, returning, storage  # noqa: F401  (a fixture)

HOUR = 3600.0
#: Slack on virtual-time measurements (SQLite commits take real time, and virtual time runs at
#: real speed meanwhile); every wait below is an hour or more.
SLACK = 3.0


def in_memory(engine: tf.Engine, iid: str) -> bool:
    return iid in engine._live


def timers(*hours: float) -> tf.WorkflowDefinition:
    """A parallel step whose branches each wait ``hours``, then return their name."""
    branches = [
        tf.branch(f"b{i}").wait(f"t{i}", seconds=h * HOUR).pass_(f"done{i}", result=f"b{i}").build()
        for i, h in enumerate(hours)
    ]
    return tf.workflow("timers").parallel("p", branches=branches).build()


async def test_branches_that_all_wait_leave_memory_and_each_fires_on_time(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    fired: list[tuple[str, float]] = []
    async with engine_on(storage()) as engine:
        engine.register(timers(1, 2, 3))
        engine.events.on("workflow.step.completed",
                         lambda e: fired.append((e["step_name"], trio.current_time())))
        t0 = trio.current_time()
        iid = await engine.start("timers")
        await trio.sleep(5)
        assert not in_memory(engine, iid)
        stored = await engine.get_instance(iid)
        assert stored is not None and stored.status == "running" and stored.waiting is not None
        done = await finish(engine, iid)
    assert done.status == "completed"
    assert done.output == {"b0": "b0", "b1": "b1", "b2": "b2"}
    times = {name: at - t0 for name, at in fired}
    for i in range(3):
        assert (i + 1) * HOUR <= times[f"t{i}"] <= (i + 1) * HOUR + SLACK


async def test_a_branch_that_runs_keeps_the_instance_in_memory_until_it_ends(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    async def work(data: Any) -> str:
        await trio.sleep(100)
        return "worked"

    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch("a").wait("t", seconds=HOUR).build(),
        tf.branch("b").task("work", job=work).build(),
    ]).build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(50)
        assert in_memory(engine, iid)  # "b" runs
        await trio.sleep(60)
        assert not in_memory(engine, iid)  # "b" ended, "a" rests
        done = await finish(engine, iid)
    assert done.status == "completed" and done.output["b"] == "worked"


async def test_a_short_rest_keeps_the_instance_in_memory(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """Every lane must stay at rest for PARK_AFTER: a branch whose wait ends within it keeps the
    instance (its siblings included) in memory, with no write or load for it."""
    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch("a").wait("t", seconds=HOUR).build(),
        tf.branch("b").wait("t2", seconds=1.5).wait("t3", seconds=0.5).build(),
    ]).build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(1.9)
        assert in_memory(engine, iid)
        await trio.sleep(5)
        assert not in_memory(engine, iid)
        assert (await finish(engine, iid)).status == "completed"


async def test_map_items_that_wait_for_signals_leave_memory_and_each_signal_wakes_its_item(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    wf = tf.workflow("w").map(
        "m", items=lambda ctx: [0, 1, 2, 3],
        branch=tf.branch("item").receive("r", signal="go").build(),
    ).build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(5)
        assert not in_memory(engine, iid)
        for payload in ["p0", "p1", "p2", "p3"]:
            await engine.signal(iid, "go", payload)
            await trio.sleep(10)  # each time: woken, one item takes it, the rest rest again
            assert not in_memory(engine, iid) or payload == "p3"
        done = await finish(engine, iid)
    assert done.status == "completed"
    assert sorted(done.output) == ["p0", "p1", "p2", "p3"]


async def test_children_of_map_items_get_slots_of_their_own_and_never_deadlock(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """``max_running=2`` and two parents of four items that each start a child: the children
    are not run in their parents' slots; the parents leave memory while they wait, so the
    children get slots, and at no moment do more than two instances run."""
    most = 0

    async def work(data: Any) -> Any:
        nonlocal most
        most = max(most, engine._running)
        await trio.sleep(30)
        return data * 10

    child = tf.workflow("child").task("work", job=work).build()
    parent = tf.workflow("parent").map(
        "m", items=lambda ctx: [ctx.input + i for i in range(4)],
        branch=tf.branch("item").child("c", workflow="child").build(),
    ).build()
    async with engine_on(storage(), max_running=2) as engine:
        engine.register(child)
        engine.register(parent)
        first = await engine.start("parent", 0)
        second = await engine.start("parent", 100)
        a, b = await finish(engine, first), await finish(engine, second)
    assert a.status == b.status == "completed"
    assert a.output == [0, 10, 20, 30] and b.output == [1000, 1010, 1020, 1030]
    assert most <= 2


async def test_a_parked_fanout_is_cancelled_and_compensated(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    undone: list[str] = []

    async def undo(output: str) -> None:
        undone.append(output)

    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch(name).task(f"do-{name}", job=returning(name), compensate=undo).wait(f"t-{name}", seconds=HOUR)
        .build()
        for name in ("a", "b")
    ]).build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(5)
        assert not in_memory(engine, iid)
        assert await engine.cancel(iid)
        done = await finish(engine, iid)
    assert done.status == "cancelled"
    assert sorted(undone) == ["a", "b"]


async def test_the_workflow_timeout_reaches_a_parked_fanout(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    wf = tf.workflow("w").with_timeout(2 * HOUR).parallel("p", branches=[
        tf.branch("a").wait("ta", seconds=HOUR).receive("r", signal="never").build(),
        tf.branch("b").wait("tb", seconds=5 * HOUR).build(),
    ]).build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        iid = await engine.start("w")
        await trio.sleep(HOUR + 10)
        assert not in_memory(engine, iid)  # "a" fired, then rests again
        done = await finish(engine, iid)
        took = trio.current_time() - t0
    assert done.status == "timed_out"
    assert 2 * HOUR <= took <= 2 * HOUR + SLACK


async def test_a_parked_fanout_resumes_with_the_next_engine_when_due(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    async with engine_on(storage()) as engine:
        engine.register(timers(1, 2))
        iid = await engine.start("timers")
        await trio.sleep(5)
        assert not in_memory(engine, iid)
    async with engine_on(storage()) as engine:
        engine.register(timers(1, 2))
        await trio.sleep(10)
        assert not in_memory(engine, iid)  # not resumed at once: it waits in storage
        done = await finish(engine, iid)
    assert done.status == "completed"


async def test_a_retry_delay_in_a_branch_leaves_memory_and_keeps_its_attempts(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    attempts: list[float] = []

    async def flaky(data: Any) -> str:
        attempts.append(trio.current_time())
        if len(attempts) < 3:
            raise ValueError("not yet")
        return "ok"

    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch("a").task("flaky", job=flaky, retry=tf.Retry(max_attempts=3, interval=HOUR, max_interval=HOUR)).build(),
        tf.branch("b").wait("t", seconds=3 * HOUR).build(),
    ]).build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(10)
        assert not in_memory(engine, iid)
        done = await finish(engine, iid)
    assert done.status == "completed" and done.output["a"] == "ok"
    assert len(attempts) == 3
    assert attempts[1] - attempts[0] >= HOUR


async def test_lanes_that_all_rest_again_after_a_signal_leave_memory_whatever_comes_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two branches wait for "x", a third on a timer; one "x" comes just as they have all rested
    long enough (the same virtual moment: float rounding of the start decides which comes
    first, so the start is swept). One branch takes it and ends, the other rests again: the
    instance leaves memory again. (It stayed, once in five starts: the branch that went back to
    rest found another lane settling and left it to it, and that one, disturbed, gave up.)"""
    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch("A").receive("ra", signal="x").build(),
        tf.branch("B").receive("rb", signal="x").build(),
        tf.branch("C").wait("tc", seconds=HOUR).build(),
    ]).build()
    stayed = []
    for k in range(100):
        async with engine_on(MemoryAdapter()) as engine:
            engine.register(wf)
            await trio.sleep(k * 0.0137)
            t0 = trio.current_time()
            iid = await engine.start("w")
            await trio.sleep_until(t0 + 1.04)  # PARK_AFTER and 10 ms for each of its four lanes
            await engine.signal(iid, "x", 1)
            await trio.sleep(10)
            if in_memory(engine, iid):
                stayed.append(k)
            await engine.signal(iid, "x", 2)
            done = await finish(engine, iid)
        assert done.status == "completed" and sorted([done.output["A"], done.output["B"]]) == [1, 2]
    assert stayed == []


def ticking_wall_clock() -> Callable[[], float]:
    """A wall clock that moves on by a microsecond at every read, as a real one does between
    two reads: woken at a deadline on trio's clock, a lane reads it past the due time."""
    base = tf.testing.virtual_wall_clock()
    reads = [0]

    def now() -> float:
        reads[0] += 1
        return base() + reads[0] * 1e-6

    return now


async def test_resting_receives_whose_timeout_comes_within_the_rest_time_out(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """Branches that wait for signals with timeouts a little over ``PARK_AFTER`` rest, and the
    rest ends at their due time, before the instance may leave: each times out as its step
    says (caught here), rather than the instance failing with an internal error as the wall
    clock has moved past the due time by the time the lane looks."""
    def branch(name: str) -> tf.WorkflowDefinition:
        return (tf.branch(name)
                .receive(f"r{name}", signal=name, timeout=1.01,
                         catch=[tf.Catch(errors=[tf.SignalTimeoutError], next=f"late{name}")])
                .pass_(f"late{name}", result=f"{name} timed out", end=True).build())

    wf = tf.workflow("w").parallel("p", branches=[branch("a"), branch("b")]).build()
    async with engine_on(storage(), ticking_wall_clock()) as engine:
        engine.register(wf)
        done = await finish(engine, await engine.start("w"))
    assert done.status == "completed", done.error
    assert done.output == {"a": "a timed out", "b": "b timed out"}


async def test_resting_items_whose_timeout_comes_within_the_rest_time_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same in a map: 150 items rest 2.5 s before the instance may leave (``PARK_AFTER``
    and 10 ms a lane), longer than their 2 s timeouts; one signalled item takes its signal."""
    wf = tf.workflow("w").map("m", items=lambda ctx: list(range(150)), branch=(
        tf.branch("item").receive("r", signal="go", timeout=2.0,
                                  catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="late")])
        .pass_("late", result="timed out", end=True).build())).build()
    async with engine_on(MemoryAdapter(), ticking_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(0.5)
        await engine.signal(iid, "go", "here")
        done = await finish(engine, iid)
    assert done.status == "completed", done.error
    received = [r for r in done.history if r.step_name == "r"]
    assert sorted(r.status for r in received) == ["caught"] * 149 + ["completed"]
    assert [r.output for r in received if r.status == "completed"] == ["here"]


class CountedCheckpoints(MemoryAdapter):
    """Keeps the ``wake_at`` of each checkpoint, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.wakes: list[float | None] = []

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        self.wakes.append(kwargs.get("wake_at"))
        return await super().checkpoint(*args, **kwargs)


async def test_branches_that_start_waiting_together_leave_memory_after_one_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A timer branch and a receive branch begin their waits in one pass: one checkpoint stores
    both waits and when to wake the instance (the sooner of the timer and the receive's
    timeout), and the instance leaves memory after its rest with no write more. Taken up
    again, each branch waits only what is left."""
    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch("t").wait("sleep", seconds=2 * HOUR).pass_("slept", result="woke", end=True).build(),
        tf.branch("r").receive("get", signal="go", timeout=3 * HOUR).build(),
    ]).build()
    adapter = CountedCheckpoints()
    async with engine_on(adapter) as engine:
        engine.register(wf)
        t0 = engine._clock()
        iid = await engine.start("w")
        await trio.sleep(5)
        assert not in_memory(engine, iid)
        assert len(adapter.wakes) == 1
        wake = adapter.wakes[0]
        assert wake is not None and t0 + 2 * HOUR <= wake <= t0 + 2 * HOUR + SLACK
        await trio.sleep(HOUR)
        await engine.signal(iid, "go", "here")
        done = await finish(engine, iid)
        took = engine._clock() - t0
    assert done.status == "completed"
    assert done.output == {"t": "woke", "r": "here"}
    assert 2 * HOUR <= took <= 2 * HOUR + SLACK
