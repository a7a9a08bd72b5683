"""Durable waiting (SPEC §13, issue 14 part 1): timer steps, receive steps and engine.signal(),
in process, on the MemoryAdapter and the SQLiteAdapter, on virtual time.

What a user relies on: a timer waits what it says (numbers, timedeltas, Unix seconds, aware
datetimes, callables of ctx) and passes the previous output on; its due time is stored, so a
resumed instance waits only what is left and a timer that fell due while no engine ran fires
at once; ``WorkflowInstance.waiting`` says what an instance waits for; cancel and workflow
timeouts reach a waiting instance. Signals are kept when sent early, first in first out per
name, consumed once (in the write that records the receive step), never lost across a restart;
a receive times out with a catchable ``SignalTimeoutError`` or gets the payload, never both. The
adapters' ``send_signal`` / ``signals`` / ``checkpoint(consumed=...)`` are checked directly.

Every test runs on trio's MockClock (``autojump_clock``, or ``trioflow.testing.run`` inside
hypothesis tests) with a wall clock on virtual time (``trioflow.testing.virtual_wall_clock``).
On SQLite, virtual time runs at real speed while the writer thread commits, so timings there
are checked with a tolerance of a few (virtual) seconds against timers of hundreds.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
import trioflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from trioflow._codec import decode_stored
from trioflow._engine import WAKE_BATCH
from trioflow._snapshot import to_instance
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock

from storages import Clock, engine_on, finish, returning

#: Slack on virtual-time measurements (SQLite commits take real time, and virtual time runs at
#: real speed meanwhile); every timer below is hundreds of seconds long.
SLACK = 3.0


# -- helpers ----------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Adapter]:
    """A factory of adapters on one storage: every call gives an adapter on the same data (the
    same MemoryAdapter object, or a new SQLiteAdapter on the same file), as a restart would."""
    if request.param == "memory":
        memory = MemoryAdapter()
        return lambda: memory
    path = tmp_path / "flows.db"
    return lambda: SQLiteAdapter(path)





async def send_raw(adapter: Adapter, iid: str, name: str, payload: Any) -> int | None:
    """Store a signal straight through an adapter, with no engine open: what a process leaves
    when it dies after storing a signal and before anything woke the instance for it."""
    await adapter.open()
    try:
        return await adapter.send_signal(iid, name, msgpack.packb(payload, use_bin_type=True))
    finally:
        await adapter.close()


def outputs(inst: tf.WorkflowInstance, *steps: str) -> list[Any]:
    """Outputs of the executions of ``steps``, in history order."""
    return [r.output for r in inst.history if r.step_name in steps]


def executions(inst: tf.WorkflowInstance, step: str) -> int:
    return sum(1 for r in inst.history if r.step_name == step)


def payloads(stored: list[tuple[int, str, bytes]]) -> list[tuple[str, Any]]:
    return [(name, msgpack.unpackb(data, raw=False)) for _, name, data in stored]


async def stored_view(engine: tf.Engine, iid: str) -> tf.WorkflowInstance:
    """The instance as storage holds it (not the live run's state)."""
    record = await engine.adapter.load(iid)
    assert record is not None
    return to_instance(decode_stored(record))


async def wait_until_waiting(engine: tf.Engine, iid: str, what: str = "signal", limit: float = 10**5) -> dict[str, Any]:
    """Wait until the instance waits for ``what`` (a timer, a signal), as stored: a new engine
    on the same storage then finds it waiting. Returns what it waits for."""
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


def receiver(*names: str, timeout: float | None = None, catch: bool = False) -> tf.WorkflowDefinition:
    """Receives ``names`` in order (steps r0, r1, ...); output: the list of what they gave."""
    b = tf.workflow("recv")
    for i, name in enumerate(names):
        following = f"r{i + 1}" if i + 1 < len(names) else "collect"
        catchers = [tf.Catch(errors=[tf.SignalTimeoutError], next=following)] if catch else []
        b = b.receive(f"r{i}", signal=name, timeout=timeout, catch=catchers)
    return b.pass_("collect", transform=lambda ctx: [ctx.steps[f"r{i}"] for i in range(len(names))],
                   end=True).build()


# -- timers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, expected", [
    (3600, 3600.0),
    (2.5, 2.5),
    (timedelta(days=7), 7 * 86400.0),
    (timedelta(minutes=1, seconds=30), 90.0),
    (0, 0.0),
])
async def test_a_timer_waits_its_seconds_and_passes_the_previous_output_on(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], seconds: Any, expected: float,
) -> None:
    wf = (tf.workflow("t").task("a", job=returning({"x": 1})).wait("w", seconds=seconds)
          .task("b", job=lambda data: data, input=lambda ctx: ctx.steps["w"]).build())
    async with engine_on(storage()) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        done = await finish(engine, await engine.start("t"))
        elapsed = trio.current_time() - t0
    assert done.status == "completed", done.error
    assert expected <= elapsed <= expected + (SLACK if seconds else 1.0)
    assert done.step_results["w"].output == {"x": 1}
    assert done.step_results["w"].status == "completed"
    assert done.output == {"x": 1}
    assert done.waiting is None
    assert [r.step_name for r in done.history] == ["a", "w", "b"]


async def test_a_timer_as_the_first_step_passes_the_workflow_input_on(autojump_clock: trio.testing.MockClock) -> None:
    # (As a pass step does, and ASL's Wait; it passed None until December 7th: see
    # test_review_of_step_functions_user.py.)
    async with engine_on(MemoryAdapter()) as engine:
        engine.register(tf.workflow("t").wait("w", seconds=10).build())
        done = await finish(engine, await engine.start("t", {"in": 1}))
    assert done.status == "completed" and done.output == {"in": 1}


def _until(kind: str, clock: Clock, delay: float) -> dict[str, Any]:
    """Keyword arguments of ``.wait`` for a timer due ``delay`` seconds after now, given as ``kind``."""
    due = clock() + delay
    plus5 = timezone(timedelta(hours=5))
    return {
        "unix-int": {"until": math.ceil(due)},
        "unix-float": {"until": due},
        "aware-utc": {"until": datetime.fromtimestamp(due, tz=UTC)},
        "aware-plus-5h": {"until": datetime.fromtimestamp(due, tz=plus5)},
        "until-callable-number": {"until": lambda ctx: clock() + ctx.input["delay"]},
        "until-callable-datetime": {
            "until": lambda ctx: datetime.fromtimestamp(clock() + ctx.input["delay"], tz=plus5)},
        "seconds-callable-number": {"seconds": lambda ctx: ctx.input["delay"]},
        "seconds-callable-timedelta": {"seconds": lambda ctx: timedelta(seconds=ctx.input["delay"])},
    }[kind]


@pytest.mark.parametrize("kind", [
    "unix-int", "unix-float", "aware-utc", "aware-plus-5h", "until-callable-number",
    "until-callable-datetime", "seconds-callable-number", "seconds-callable-timedelta",
])
async def test_a_timer_until_a_time_or_from_a_callable_of_ctx(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], kind: str,
) -> None:
    clock = virtual_wall_clock()
    wf = tf.workflow("t").task("a", job=returning("a-out")).wait("w", **_until(kind, clock, 500)).build()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        iid = await engine.start("t", {"delay": 500})
        waiting = await wait_until_waiting(engine, iid, "timer")
        assert waiting["timer"] == pytest.approx(clock() + 500 - (trio.current_time() - t0), abs=1.0)
        done = await finish(engine, iid)
        elapsed = trio.current_time() - t0
    assert done.status == "completed", done.error
    assert done.output == "a-out"
    assert 499 <= elapsed <= 500 + SLACK


async def test_a_timer_due_in_the_past_fires_at_once(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    clock = virtual_wall_clock()
    wf = (tf.workflow("t")
          .wait("past", until=clock() - 3600)
          .wait("epoch", until=0)
          .wait("past-datetime", until=datetime(2001, 1, 1, tzinfo=UTC))
          .wait("past-callable", until=lambda ctx: clock() - 1)
          .build())
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        done = await finish(engine, await engine.start("t"))
    assert done.status == "completed", done.error
    assert trio.current_time() - t0 <= SLACK


def test_build_refuses_a_naive_datetime_naming_the_step() -> None:
    with pytest.raises(tf.DefinitionError, match="'w'"):
        tf.workflow("t").wait("w", until=datetime(2030, 1, 1)).build()


@pytest.mark.parametrize("kwargs", [
    {},
    {"seconds": 1, "until": 10**10},
    {"seconds": -1},
    {"seconds": math.nan},
    {"seconds": math.inf},
    {"seconds": "10"},
    {"seconds": True},
    {"until": -5},
    {"until": "tomorrow"},
    {"seconds": timedelta(seconds=-1)},
])
def test_build_refuses_a_bad_timer(kwargs: dict[str, Any]) -> None:
    with pytest.raises(tf.DefinitionError, match="'w'"):
        tf.workflow("t").wait("w", **kwargs).build()


@pytest.mark.parametrize("kwargs, error", [
    ({"until": lambda ctx: datetime(2030, 1, 1)}, "naive"),
    ({"seconds": lambda ctx: -1}, "seconds"),
    ({"seconds": lambda ctx: math.nan}, "seconds"),
    ({"seconds": lambda ctx: "ten"}, "seconds"),
    ({"seconds": lambda ctx: None}, "seconds"),
    ({"seconds": lambda ctx: True}, "seconds"),
    ({"until": lambda ctx: math.inf}, "until"),
    ({"until": lambda ctx: 1 / 0}, "division"),
])
async def test_a_timer_whose_callable_gives_no_usable_time_fails_the_step_and_compensates(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], kwargs: dict[str, Any], error: str,
) -> None:
    released: list[str] = []
    wf = (tf.workflow("t")
          .task("reserve", job=returning("r-1"), compensate=lambda out: released.append(out))
          .wait("w", **kwargs)
          .task("never", job=returning("no"))
          .build())
    async with engine_on(storage()) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        done = await finish(engine, await engine.start("t"))
    assert done.status == "failed" and done.failed_step == "w"
    assert error in (done.error or "")
    assert released == ["r-1"]
    assert executions(done, "never") == 0
    assert done.waiting is None
    assert trio.current_time() - t0 <= SLACK


async def test_the_waiting_field_shows_the_due_time_while_waiting_and_none_after(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    clock = virtual_wall_clock()
    wf = tf.workflow("t").task("a", job=returning(1)).wait("w", seconds=1000).task("b", job=returning(2)).build()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("t")
        started = clock()
        await trio.sleep(100)
        inst = await engine.get_instance(iid)
        assert inst is not None and inst.status == "running" and inst.current_step == "w"
        assert set(inst.waiting or {}) == {"timer"}
        assert inst.waiting["timer"] == pytest.approx(started + 1000, abs=SLACK)
        listed = await engine.get_instances("t", status="running")
        assert [i.waiting for i in listed] == [inst.waiting]
        done = await finish(engine, iid)
        assert done.waiting is None
        again = await engine.get_instance(iid)
        assert again is not None and again.waiting is None and again.status == "completed"


async def test_a_resumed_timer_waits_only_what_is_left(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    calls: list[int] = []

    def delay(ctx: Any) -> float:
        calls.append(1)
        return 1000.0

    wf = tf.workflow("t").task("a", job=returning("a")).wait("w", seconds=delay).task("b", job=returning("b")).build()
    clock = virtual_wall_clock()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("t")
        waiting = await wait_until_waiting(engine, iid, "timer")
        await trio.sleep(300)
    # A new engine on the same storage, on the same (later) clock.
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        stored = await engine.get_instance(iid)
        assert stored is not None and stored.waiting == waiting, "the due time is stored, not worked out again"
        t0 = trio.current_time()
        done = await finish(engine, iid)
        elapsed = trio.current_time() - t0
    assert done.status == "completed", done.error
    assert 700 - SLACK <= elapsed <= 700 + SLACK, elapsed
    assert calls == [1], "the callable is asked once; a resume uses the stored due time"
    assert [r.step_name for r in done.history] == ["a", "w", "b"]


async def test_engines_opened_one_after_another_in_one_test_share_one_wall_clock(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """The test kit's default clock: a restart test that opens a second test engine without
    passing ``clock=`` must still see the timer wait only what is left (the second engine's
    wall clock must not start behind the first's by the virtual time that passed)."""
    wf = tf.workflow("t").wait("w", seconds=1000).build()
    async with open_test_engine(adapter=storage()) as engine:
        engine.register(wf)
        iid = await engine.start("t")
        await trio.sleep(300)
    async with open_test_engine(adapter=storage()) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        done = await finish(engine, iid)
        elapsed = trio.current_time() - t0
    assert done.status == "completed"
    assert elapsed <= 700 + SLACK, f"waited {elapsed:.0f} s after the restart; 700 s were left"


async def test_a_timer_that_fell_due_while_no_engine_ran_fires_at_once(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    wf = tf.workflow("t").task("a", job=returning("a")).wait("w", seconds=1000).task("b", job=returning("b")).build()
    clock = virtual_wall_clock()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("t")
        await wait_until_waiting(engine, iid, "timer")
    await trio.sleep(5000)  # no engine runs
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        done = await finish(engine, iid)
        assert trio.current_time() - t0 <= SLACK
    assert done.status == "completed" and done.output == "b"


async def test_a_later_wall_clock_given_to_the_next_engine_makes_the_timer_due(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """The engine's wall clock is what timers are on: a next engine whose clock says a day later
    fires a one-hour timer at once, and one that says 10 minutes later waits the other 50."""
    base = virtual_wall_clock()
    wf = tf.workflow("t").wait("w", seconds=3600).build()
    async with engine_on(storage(), base) as engine:
        engine.register(wf)
        soon, later = await engine.start("t"), await engine.start("t")
        await wait_until_waiting(engine, soon, "timer")
        await wait_until_waiting(engine, later, "timer")
    async with engine_on(storage(), lambda: base() + 600) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        await finish(engine, later)
        assert 3000 - SLACK <= trio.current_time() - t0 <= 3000 + SLACK
    async with engine_on(storage(), lambda: base() + 86400) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        done = await finish(engine, soon)
        assert trio.current_time() - t0 <= SLACK
    assert done.status == "completed"


async def test_a_timer_in_a_loop_waits_again_each_time(autojump_clock: trio.testing.MockClock) -> None:
    """Each execution stores a due time of its own: the second pass does not reuse the first's."""
    count = {"n": 0}

    def tick(data: Any) -> int:
        count["n"] += 1
        return count["n"]

    wf = (tf.workflow("loop")
          .task("tick", job=tick)
          .wait("w", seconds=100)
          .choice("again", choices=[tf.when(lambda ctx: ctx.steps["tick"] < 3, next="tick")], default="done")
          .end("done")
          .build())
    async with engine_on(MemoryAdapter()) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        done = await finish(engine, await engine.start("loop"))
    assert done.status == "completed", done.error
    assert trio.current_time() - t0 == pytest.approx(300, abs=1)
    assert executions(done, "w") == 3


async def test_timers_in_parallel_branches_run_together(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    wf = (tf.workflow("par").parallel("p", branches=[
        tf.branch("short").task("s", job=returning("s")).wait("ws", seconds=100).build(),
        tf.branch("long").task("l", job=returning("l")).wait("wl", seconds=400).build(),
    ]).build())
    async with engine_on(storage()) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        iid = await engine.start("par")
        await trio.sleep(200)
        inst = await engine.get_instance(iid)
        assert inst is not None and inst.waiting is not None and "timer" in inst.waiting
        done = await finish(engine, iid)
    assert 400 - 1 <= trio.current_time() - t0 <= 400 + SLACK
    assert done.status == "completed" and done.output == {"short": "s", "long": "l"}
    assert done.waiting is None


async def test_a_resumed_timer_in_a_parallel_branch_waits_only_what_is_left(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    wf = (tf.workflow("par").parallel("p", branches=[
        tf.branch("x").wait("wx", seconds=100).task("x1", job=returning("x")).build(),
        tf.branch("y").wait("wy", seconds=1000).task("y1", job=returning("y")).build(),
    ]).build())
    clock = virtual_wall_clock()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("par")
        await trio.sleep(400)  # x is done; y has 600 s left
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        done = await finish(engine, iid)
        assert 600 - SLACK <= trio.current_time() - t0 <= 600 + SLACK
    assert done.status == "completed" and done.output == {"x": "x", "y": "y"}
    assert executions(done, "x1") == executions(done, "wx") == executions(done, "wy") == 1


@pytest.mark.parametrize("what", ["timer", "signal"])
async def test_cancel_reaches_a_waiting_instance_and_compensates(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], what: str,
) -> None:
    released: list[str] = []
    b = tf.workflow("t").task("reserve", job=returning("r-1"), compensate=lambda out: released.append(out))
    b = b.wait("w", seconds=10_000) if what == "timer" else b.receive("w", signal="go", timeout=10_000)
    wf = b.task("after", job=returning("no")).build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("t")
        await wait_until_waiting(engine, iid, what)
        t0 = trio.current_time()
        assert await engine.cancel(iid) is True
        done = await finish(engine, iid)
        assert trio.current_time() - t0 <= SLACK
        again = await engine.get_instance(iid)
    assert done.status == "cancelled"
    assert released == ["r-1"]
    assert executions(done, "after") == 0
    assert done.waiting is None, f"a cancelled instance waits for nothing, got {done.waiting}"
    assert again is not None and again.waiting is None


@pytest.mark.parametrize("what", ["timer", "signal", "signal-with-timeout"])
async def test_a_workflow_timeout_fires_while_waiting(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], what: str,
) -> None:
    released: list[str] = []
    b = tf.workflow("t").with_timeout(60).task("reserve", job=returning("r-1"),
                                               compensate=lambda out: released.append(out))
    if what == "timer":
        b = b.wait("w", seconds=3600)
    else:
        b = b.receive("w", signal="go", timeout=3600 if what == "signal-with-timeout" else None)
    wf = b.task("after", job=returning("no")).build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        done = await finish(engine, await engine.start("t"))
        elapsed = trio.current_time() - t0
    assert done.status == "timed_out", done.error
    assert 60 - 1 <= elapsed <= 60 + SLACK
    assert released == ["r-1"]
    assert done.waiting is None, f"a timed-out instance waits for nothing, got {done.waiting}"


async def test_waiting_events(autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    clock = virtual_wall_clock()
    events: list[dict[str, Any]] = []
    wf = (tf.workflow("ev").wait("w", seconds=100).receive("r", signal="go", timeout=500)
          .receive("r2", signal="go").build())
    async with engine_on(storage(), clock) as engine:
        engine.events.on("workflow.*", events.append)
        engine.register(wf)
        iid = await engine.start("ev")
        await engine.signal(iid, "go", {"n": 1})  # early: r takes it without waiting
        t_timer = clock()
        await trio.sleep(150)
        await engine.signal(iid, "go", {"n": 2})
        done = await finish(engine, iid)
    assert done.status == "completed" and done.output == {"n": 2}
    names = [(e["event"], e.get("step_name")) for e in events if e["event"] != "workflow.progress"]
    assert names == [
        ("workflow.started", None),
        ("workflow.step.started", "w"), ("workflow.step.waiting", "w"), ("workflow.step.completed", "w"),
        ("workflow.step.started", "r"), ("workflow.signal.received", "r"), ("workflow.step.completed", "r"),
        ("workflow.step.started", "r2"), ("workflow.step.waiting", "r2"), ("workflow.signal.received", "r2"),
        ("workflow.step.completed", "r2"),
        ("workflow.completed", None),
    ]
    by = {(e["event"], e.get("step_name")): e for e in events}
    waiting_w = by[("workflow.step.waiting", "w")]
    assert waiting_w["instance_id"] == iid and waiting_w["workflow_name"] == "ev"
    assert set(waiting_w["waiting"]) == {"timer"}
    assert waiting_w["waiting"]["timer"] == pytest.approx(t_timer + 100, abs=SLACK)
    assert by[("workflow.step.waiting", "r2")]["waiting"] == {"signal": "go", "timeout": None}
    received = [e for e in events if e["event"] == "workflow.signal.received"]
    assert [(e["step_name"], e["signal"], e["payload"]) for e in received] == [
        ("r", "go", {"n": 1}), ("r2", "go", {"n": 2})]
    assert received[0]["seq"] < received[1]["seq"]
    assert all(e["instance_id"] == iid for e in received)


async def test_a_receive_with_a_timeout_announces_its_due_time(autojump_clock: trio.testing.MockClock) -> None:
    clock = virtual_wall_clock()
    events: list[dict[str, Any]] = []
    async with engine_on(MemoryAdapter(), clock) as engine:
        engine.events.on("workflow.step.waiting", events.append)
        engine.register(tf.workflow("ev").receive("r", signal="go", timeout=timedelta(hours=1)).build())
        started = clock()
        iid = await engine.start("ev")
        waiting = await wait_until_waiting(engine, iid)
        assert waiting["signal"] == "go"
        assert waiting["timeout"] == pytest.approx(started + 3600, abs=1)
        await engine.signal(iid, "go")
        done = await finish(engine, iid)
    assert done.status == "completed" and done.output is None
    assert [e["waiting"] for e in events] == [waiting]


async def test_timers_due_together_are_woken_a_batch_at_a_time_and_all_fire(
        autojump_clock: trio.testing.MockClock) -> None:
    """Thousands due at one moment go through in a steady stream: the waker does not put them
    all in memory at once (it keeps at most WAKE_BATCH on their way to their first checkpoint),
    and every one fires, once."""
    n = 3 * WAKE_BATCH
    fired: list[int] = []

    async def after(data: Any) -> None:
        fired.append(data)

    wf = tf.workflow("w").wait("sleep", seconds=60).task("after", job=after).build()
    # Every checkpoint takes a second: the woken stay on their way to their first one long
    # enough for the waker to show how many it lets be.
    adapter = SlowCheckpoints(delay=1.0)
    adapter.slow = True
    async with engine_on(adapter) as engine:
        engine.register(wf)
        ids = [await engine.start("w", i) for i in range(n)]
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                # Woken and not yet past a checkpoint: storage still has their wake time.
                on_their_way = sum(1 for run in engine._live.values() if run.stored_wake_at is not None)
                peak = max(peak, on_their_way)
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            done = [await finish(engine, iid) for iid in ids]
            nursery.cancel_scope.cancel()
    assert [i.status for i in done] == ["completed"] * n
    assert sorted(fired) == list(range(n))
    assert WAKE_BATCH // 2 <= peak <= WAKE_BATCH, peak


@pytest.mark.parametrize("woken_by", ["retry", "delayed start", "timer"])
async def test_woken_instances_running_a_long_step_first_do_not_hold_back_other_timers(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], woken_by: str,
) -> None:
    """More than half a wake batch of instances woken from storage (a retry's delay, a delayed
    start, a timer) whose first step then runs for an hour: a timer due meanwhile still fires
    on time. (The waker counted them as on their way until their next checkpoint, an hour
    later, and woke nothing more meanwhile. A timer's end is stored with the next checkpoint,
    unless the step after it runs long: then the waker has it stored.)"""
    tried: dict[int, int] = {}

    async def slow(i: int) -> None:
        tried[i] = tried.get(i, 0) + 1
        if woken_by == "retry" and tried[i] == 1:
            raise RuntimeError("the first attempt fails")
        await trio.sleep(3600)

    retry = tf.Retry(max_attempts=2, interval=10.0) if woken_by == "retry" else None
    first = tf.workflow("slow").wait("nap", seconds=10) if woken_by == "timer" else tf.workflow("slow")
    wf = first.task("work", job=slow, retry=retry).build()
    timer = tf.workflow("timer").wait("nap", seconds=60).task("done", job=returning("done")).build()
    clock = virtual_wall_clock()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        engine.register(timer)
        for i in range(WAKE_BATCH // 2 + 10):
            await engine.start("slow", i, delay=10.0 if woken_by == "delayed start" else None)
        await trio.sleep(30)  # every one was woken, and runs its hour-long step
        assert len(tried) == WAKE_BATCH // 2 + 10
        iid = await engine.start("timer")
        started = clock()
        done = await finish(engine, iid, limit=600)
        assert done.status == "completed"
        assert done.completed_at is not None and done.completed_at - started <= 60 + SLACK


async def test_a_fired_timer_is_stored_while_a_long_step_after_it_runs_and_a_restart_does_not_wait_again(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """A woken timer's end goes with the next checkpoint; while the step after it runs long,
    the waker has it stored (within a few seconds): storage then says the instance waits for
    nothing and holds the timer's execution, and a restart runs the step again (at least once)
    without waiting for the timer again, nor recording it twice."""
    ran: list[float] = []
    clock = virtual_wall_clock()

    async def work(_: Any) -> str:
        ran.append(clock())
        await trio.sleep(3600)
        return "worked"

    wf = tf.workflow("t").wait("nap", seconds=60).task("work", job=work).task("done", job=returning("done")).build()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("t")
        await trio.sleep(60 + 10)  # woken, fired; "work" runs for an hour
        assert len(ran) == 1
        stored = await stored_view(engine, iid)
        assert stored.status == "running" and stored.waiting is None
        assert [r.step_name for r in stored.history] == ["nap"]
        assert iid not in [due.instance_id for due in await engine.adapter.due(clock() + 10**6, 10)]
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        restarted = clock()
        done = await finish(engine, iid)
    assert done.status == "completed", done.error
    assert len(ran) == 2 and ran[1] - restarted <= SLACK, "the timer, stored as fired, is not waited for again"
    assert [r.step_name for r in done.history] == ["nap", "work", "done"]


async def test_a_fired_timer_stored_by_the_waker_while_the_step_after_it_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The step after a woken timer ends while the waker's checkpoint of the timer is being
    written (a slow disk): the run's own checkpoint waits for it, then stores the step, and the
    instance goes on as usual; so does one cancelled at that moment."""
    async def work(_: Any) -> str:
        await trio.sleep(2.5)  # past STORE_FIRED_AFTER, and into the waker's slow write
        return "worked"

    wf = (tf.workflow("t").wait("nap", seconds=60).task("work", job=work, compensate=returning(None))
          .task("done", job=returning("done")).build())
    adapter = SlowCheckpoints(delay=2.0)
    async with engine_on(adapter) as engine:
        engine.register(wf)
        finished = await engine.start("t")
        cancelled = await engine.start("t")
        await trio.sleep(30)
        adapter.slow = True
        await trio.sleep(30 + 2.5)  # both woken, their timers fired: "work" ends about now
        await engine.cancel(cancelled)
        done, undone = await finish(engine, finished), await finish(engine, cancelled)
        stored_done, stored_undone = await stored_view(engine, finished), await stored_view(engine, cancelled)
    assert (done.status, stored_done.status) == ("completed", "completed"), done.error
    assert [r.step_name for r in stored_done.history] == ["nap", "work", "done"]
    assert (undone.status, stored_undone.status) == ("cancelled", "cancelled")
    assert [r.step_name for r in stored_undone.history][:1] == ["nap"]


# -- signals ----------------------------------------------------------------------------------------


async def test_signals_sent_before_the_receive_step_starts_are_kept(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    wf = (tf.workflow("early").wait("first", seconds=100)
          .receive("r", signal="approved").task("after", job=lambda d: d, input=lambda ctx: ctx.steps["r"]).build())
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("early")
        await engine.signal(iid, "approved", {"by": "ann"})
        t0 = trio.current_time()
        done = await finish(engine, iid)
    assert done.status == "completed" and done.output == {"by": "ann"}
    assert 100 - 1 <= trio.current_time() - t0 <= 100 + SLACK, "the receive step takes the kept signal at once"


async def test_a_signal_sent_while_a_task_runs_is_kept_for_a_later_receive(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    started = trio.Event()
    release = trio.Event()

    async def slow(data: Any) -> str:
        started.set()
        await release.wait()
        return "slow"

    wf = tf.workflow("t").task("slow", job=slow).receive("r", signal="x").build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("t")
        await started.wait()
        await engine.signal(iid, "x", 7)
        release.set()
        done = await finish(engine, iid)
    assert done.status == "completed" and done.output == 7


async def test_a_signal_wakes_a_waiting_receive_at_once(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    async with engine_on(storage()) as engine:
        engine.register(receiver("go"))
        iid = await engine.start("recv")
        await wait_until_waiting(engine, iid)
        await trio.sleep(1000)
        t0 = trio.current_time()
        await engine.signal(iid, "go", "now")
        done = await finish(engine, iid)
        assert trio.current_time() - t0 <= SLACK
    assert done.output == ["now"]


async def test_signals_of_one_name_arrive_first_in_first_out(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    async with engine_on(storage()) as engine:
        engine.register(receiver("x", "x", "x", "x", "x"))
        iid = await engine.start("recv")
        for n in (1, 2):  # before the first receive waits
            await engine.signal(iid, "x", n)
        await wait_until_waiting(engine, iid)
        await trio.sleep(10)
        for n in (3, 4, 5):
            await engine.signal(iid, "x", n)
        done = await finish(engine, iid)
    assert done.status == "completed" and done.output == [1, 2, 3, 4, 5]


async def test_concurrent_senders_each_signal_is_taken_once(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    n = 30
    async with engine_on(storage()) as engine:
        engine.register(receiver(*["x"] * n))
        iid = await engine.start("recv")
        async with trio.open_nursery() as nursery:
            for k in range(n):
                nursery.start_soon(engine.signal, iid, "x", k)
        done = await finish(engine, iid)
        left = await engine.adapter.signals(iid)
    assert done.status == "completed"
    assert sorted(done.output) == list(range(n))
    assert left == []


async def test_signals_of_other_names_do_not_interfere(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    async with engine_on(storage()) as engine:
        engine.register(receiver("a", "b", "a", "c"))
        iid = await engine.start("recv")
        await engine.signal(iid, "b", "b1")
        await engine.signal(iid, "c", "c1")
        await engine.signal(iid, "b", "b2")  # never received: stays pending
        await engine.signal(iid, "zzz", "unrelated")
        await engine.signal(iid, "a", "a1")
        await trio.sleep(50)
        inst = await engine.get_instance(iid)
        assert inst is not None and inst.waiting == {"signal": "a", "timeout": None}
        await engine.signal(iid, "a", "a2")
        done = await finish(engine, iid)
        left = await engine.adapter.signals(iid)
    assert done.output == ["a1", "b1", "a2", "c1"]
    assert payloads(left) == [("b", "b2"), ("zzz", "unrelated")], "signals nobody took stay stored"


async def test_the_payload_is_the_steps_output_and_a_copy_of_what_was_sent(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    payload = {"items": [1, 2], "who": {"name": "ann"}, "tuple": (1, "a"), "bytes": b"\x00\x01", "none": None}
    seen: list[Any] = []

    def keep(data: Any) -> str:
        seen.append(data)
        return "kept"

    wf = (tf.workflow("p").receive("r", signal="x")
          .task("use", job=keep, input=lambda ctx: ctx.steps["r"]).build())
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("p")
        await wait_until_waiting(engine, iid)
        await engine.signal(iid, "x", payload)
        payload["items"].append(3)  # the caller keeps its object: the instance has a copy
        payload["who"]["name"] = "bob"
        done = await finish(engine, iid)
    expected = {"items": [1, 2], "who": {"name": "ann"}, "tuple": [1, "a"], "bytes": b"\x00\x01", "none": None}
    assert done.step_results["r"].output == expected
    assert seen == [expected] and seen[0] is not payload


@pytest.mark.parametrize("payload", [None, 0, "", [], {}, 3.5, "é" * 1000, list(range(1000))])
async def test_any_storable_payload_is_delivered_as_it_was_sent(
    autojump_clock: trio.testing.MockClock, payload: Any,
) -> None:
    async with engine_on(MemoryAdapter()) as engine:
        engine.register(receiver("x"))
        iid = await engine.start("recv")
        await engine.signal(iid, "x", payload)
        done = await finish(engine, iid)
    assert done.output == [payload]


async def test_a_signal_to_an_unknown_instance_is_refused(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    async with engine_on(storage()) as engine:
        engine.register(receiver("x"))
        with pytest.raises(tf.UnknownInstanceError, match="nope"):
            await engine.signal("nope", "x", 1)
        assert await engine.adapter.signals("nope") == []


@pytest.mark.parametrize("ending", ["completed", "failed", "cancelled", "timed_out"])
async def test_a_signal_to_an_instance_that_has_ended_is_refused_and_not_stored(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], ending: str,
) -> None:
    async def boom(data: Any) -> None:
        raise RuntimeError("boom")

    b = tf.workflow("end")
    if ending == "timed_out":
        b = b.with_timeout(5)
    if ending == "completed":
        b = b.task("a", job=returning(1))
    elif ending == "failed":
        b = b.task("a", job=boom)
    else:
        b = b.receive("a", signal="never")
    async with engine_on(storage()) as engine:
        engine.register(b.build())
        iid = await engine.start("end")
        if ending == "cancelled":
            await wait_until_waiting(engine, iid)
            await engine.cancel(iid)
        done = await finish(engine, iid)
        assert done.status == ending
        with pytest.raises(tf.InstanceNotLiveError, match=iid):
            await engine.signal(iid, "x", {"late": True})
        assert await engine.adapter.signals(iid) == []
        assert (await engine.get_instance(iid)).status == ending


@pytest.mark.parametrize("payload", [object(), {"k": {1, 2}}, {"f": lambda: 1}, {"c": 1j}, [1, 2**70]])
async def test_a_payload_that_cannot_be_stored_is_refused_and_nothing_stored(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], payload: Any,
) -> None:
    async with engine_on(storage()) as engine:
        engine.register(receiver("x", timeout=100, catch=True))
        iid = await engine.start("recv")
        with pytest.raises(tf.UnencodableValueError, match="'x'"):
            await engine.signal(iid, "x", payload)
        assert await engine.adapter.signals(iid) == []
        done = await finish(engine, iid)
    assert done.output[0]["error"] == "SignalTimeoutError", "nothing was delivered"


@pytest.mark.parametrize("name", ["", None, 3])
async def test_a_bad_signal_name_is_refused(autojump_clock: trio.testing.MockClock, name: Any) -> None:
    async with engine_on(MemoryAdapter()) as engine:
        engine.register(receiver("x"))
        iid = await engine.start("recv")
        with pytest.raises(tf.InvalidArgumentError):
            await engine.signal(iid, name, 1)
        assert await engine.adapter.signals(iid) == []
        await engine.cancel(iid)


async def test_a_closed_engine_refuses_signals(autojump_clock: trio.testing.MockClock) -> None:
    async with engine_on(MemoryAdapter()) as engine:
        engine.register(receiver("x"))
        iid = await engine.start("recv")
    with pytest.raises(tf.EngineClosedError):
        await engine.signal(iid, "x", 1)


def test_build_refuses_a_bad_receive() -> None:
    for kwargs in ({"signal": ""}, {"signal": 3}, {"signal": "x", "timeout": -1}, {"signal": "x", "timeout": math.nan}):
        with pytest.raises(tf.DefinitionError, match="'r'"):
            tf.workflow("t").receive("r", **kwargs).build()
    with pytest.raises(tf.DefinitionError, match="'r'"):
        tf.workflow("t").receive("r", signal="x", catch=[tf.Catch(errors=[tf.ALL], next="nowhere")]).build()


async def test_a_receive_times_out_with_signal_timeout_error_and_compensates(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    released: list[str] = []
    wf = (tf.workflow("t")
          .task("reserve", job=returning("r-1"), compensate=lambda out: released.append(out))
          .receive("approval", signal="approved", timeout=timedelta(days=3))
          .task("after", job=returning("no"))
          .build())
    async with engine_on(storage()) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        done = await finish(engine, await engine.start("t"))
        elapsed = trio.current_time() - t0
    assert done.status == "failed" and done.failed_step == "approval"
    assert done.error_name == "SignalTimeoutError"
    assert "approved" in (done.cause or "")
    assert 3 * 86400 - 1 <= elapsed <= 3 * 86400 + SLACK
    assert released == ["r-1"]
    assert done.step_results["approval"].status == "failed"
    assert done.waiting is None


def test_signal_timeout_error_is_a_trioflow_step_error_and_a_timeout_error() -> None:
    error = tf.SignalTimeoutError("r", "approved", 5)
    assert isinstance(error, tf.TrioflowError) and isinstance(error, TimeoutError)
    assert (error.step_name, error.signal, error.timeout) == ("r", "approved", 5)


@pytest.mark.parametrize("errors", [
    [tf.SignalTimeoutError], ["SignalTimeoutError"], [TimeoutError], [tf.ALL], tf.ALL,
    [lambda e: isinstance(e, tf.SignalTimeoutError)],
])
async def test_a_signal_timeout_is_catchable_by_type_by_name_and_predicate(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], errors: Any,
) -> None:
    wf = (tf.workflow("t")
          .receive("approval", signal="approved", timeout=3600,
                   catch=[tf.Catch(errors=errors, next="escalate", result="why")])
          .pass_("approved", result="ok", end=True)
          .task("escalate", job=lambda data: data, input=lambda ctx: {"error": ctx.error, "why": ctx.get("why")})
          .build())
    async with engine_on(storage()) as engine:
        engine.register(wf)
        done = await finish(engine, await engine.start("t"))
    assert done.status == "completed", done.error
    assert done.step_results["approval"].status == "caught"
    err = done.output["error"]
    assert err["error"] == "SignalTimeoutError" and "approved" in err["cause"]
    assert done.output["why"] == err


async def test_a_catch_for_other_errors_lets_a_signal_timeout_fail_the_instance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wf = (tf.workflow("t")
          .receive("r", signal="x", timeout=10, catch=[tf.Catch(errors=[KeyError, "StepTimeoutError"], next="h")])
          .end("ok").end("h").build())
    async with engine_on(MemoryAdapter()) as engine:
        engine.register(wf)
        done = await finish(engine, await engine.start("t"))
    assert done.status == "failed" and done.error_name == "SignalTimeoutError"


async def test_a_signal_that_arrives_after_a_timeout_stays_for_the_next_receive(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    wf = (tf.workflow("t")
          .receive("first", signal="x", timeout=100, catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="second")])
          .receive("second", signal="x")
          .build())
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("t")
        await trio.sleep(150)
        await engine.signal(iid, "x", "late")
        done = await finish(engine, iid)
    assert done.status == "completed" and done.output == "late"
    assert done.step_results["first"].output["error"] == "SignalTimeoutError"


@pytest.mark.parametrize("send_at", [0, 50, 99, 99.999, 100.001, 101, 300])
async def test_a_receive_with_a_timeout_gets_the_payload_or_times_out_never_both(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], send_at: float,
) -> None:
    wf = receiver("x", timeout=100, catch=True)
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("recv")
        await trio.sleep(send_at)
        try:
            await engine.signal(iid, "x", "payload")
            sent = True
        except tf.InstanceNotLiveError:
            sent = False
        done = await finish(engine, iid)
        left = payloads(await engine.adapter.signals(iid))
    (out,) = done.output
    got = out == "payload"
    timed_out = isinstance(out, dict) and out.get("error") == "SignalTimeoutError"
    assert got != timed_out, out
    if got:
        assert left == []
    else:
        assert left == ([("x", "payload")] if sent else [])
    if send_at < 99.5:
        assert got
    if send_at > 101:  # (SQLite: a small real-time slack either side of the due time)
        assert timed_out


async def test_parallel_receives_of_one_name_each_get_a_distinct_signal(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    wf = (tf.workflow("par").parallel("p", branches=[
        tf.branch("left").receive("rl", signal="x").receive("rl2", signal="x").build(),
        tf.branch("right").receive("rr", signal="x").build(),
        tf.branch("other").receive("ro", signal="y").build(),
    ]).build())
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("par")
        await engine.signal(iid, "x", 1)  # maybe before the branches wait
        await trio.sleep(10)
        await engine.signal(iid, "y", "why")
        await engine.signal(iid, "x", 2)
        await trio.sleep(10)
        await engine.signal(iid, "x", 3)
        await engine.signal(iid, "x", 4)  # one too many: stays pending
        done = await finish(engine, iid)
        left = payloads(await engine.adapter.signals(iid))
    assert done.status == "completed", done.error
    got = outputs(done, "rl", "rl2", "rr")
    assert sorted(got) == [1, 2, 3], got
    assert outputs(done, "rl")[0] < outputs(done, "rl2")[0], "first in first out within a branch"
    assert done.output["other"] == "why"
    assert left == [("x", 4)]


async def test_parallel_receives_waiting_together_each_get_one_of_a_burst(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    n = 8
    wf = tf.workflow("par").parallel(
        "p", branches=[tf.branch(f"b{i}").receive(f"r{i}", signal="x").build() for i in range(n)]).build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("par")
        await trio.sleep(10)
        async with trio.open_nursery() as nursery:
            for k in range(n):
                nursery.start_soon(engine.signal, iid, "x", k)
        done = await finish(engine, iid)
        left = await engine.adapter.signals(iid)
    assert done.status == "completed", done.error
    assert sorted(done.output.values()) == list(range(n))
    assert left == []


async def test_a_signal_sent_while_no_engine_runs_the_instance_is_delivered_by_the_next_engine(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    clock = virtual_wall_clock()
    wf = receiver("x", "x")
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("recv")
        await engine.signal(iid, "x", "first")
        await trio.sleep(10)
        inst = await engine.get_instance(iid)
        assert inst is not None and inst.waiting == {"signal": "x", "timeout": None}
    # Stored while no engine runs it (say, by a process that died right after storing it).
    assert await send_raw(storage(), iid, "x", "while-away") is not None
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        done = await finish(engine, iid)
        left = await engine.adapter.signals(iid)
    assert done.status == "completed" and done.output == ["first", "while-away"]
    assert left == []


async def test_a_signal_sent_through_an_engine_that_does_not_resume_is_delivered(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    clock = virtual_wall_clock()
    wf = receiver("x", "x")
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("recv")
        await engine.signal(iid, "x", "first")
        # (Its first receive may be storing that it waits as the signal comes: the second's
        # wait is the one to see stored.)
        while (now := await engine.get_instance(iid)) is not None and now.current_step != "r1":
            await trio.sleep(0.001)
        await wait_until_waiting(engine, iid)
    async with engine_on(storage(), clock, resume=False) as engine:
        engine.register(wf)
        await engine.signal(iid, "x", "second")
        done = await finish(engine, iid)
    assert done.status == "completed" and done.output == ["first", "second"]


async def test_a_signal_stored_before_resume_is_called_is_delivered_by_it(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    wf = receiver("x")
    clock = virtual_wall_clock()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("recv")
        await wait_until_waiting(engine, iid)
    await send_raw(storage(), iid, "x", "stored")
    async with engine_on(storage(), clock, resume=False) as engine:
        engine.register(wf)
        await engine.resume()
        done = await finish(engine, iid)
    assert done.output == ["stored"]


async def test_a_consumed_signal_is_never_delivered_again_after_a_restart(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    clock = virtual_wall_clock()
    wf = (tf.workflow("twice").receive("r1", signal="x").wait("pause", seconds=1000)
          .receive("r2", signal="x").build())
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("twice")
        await engine.signal(iid, "x", "one")
        await wait_until_waiting(engine, iid, "timer")
        assert await engine.adapter.signals(iid) == [], "consumed with the receive step's record"
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        await wait_until_waiting(engine, iid, "signal")
        await engine.signal(iid, "x", "two")
        done = await finish(engine, iid)
    assert done.status == "completed" and done.output == "two"
    assert outputs(done, "r1", "r2") == ["one", "two"]
    assert executions(done, "r1") == 1


async def test_a_resumed_receive_waits_only_what_is_left_of_its_timeout(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    clock = virtual_wall_clock()
    wf = receiver("x", timeout=1000, catch=True)
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("recv")
        waiting = await wait_until_waiting(engine, iid)
        await trio.sleep(400)
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        assert (await engine.get_instance(iid)).waiting == waiting
        t0 = trio.current_time()
        done = await finish(engine, iid)
        assert 600 - SLACK <= trio.current_time() - t0 <= 600 + SLACK
    assert done.output[0]["error"] == "SignalTimeoutError"


async def test_a_resumed_receive_whose_timeout_passed_while_no_engine_ran(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """Its timeout passed while no engine ran: the next engine ends the step at once, either way
    (a signal stored meanwhile may be taken, or left stored; never both)."""
    clock = virtual_wall_clock()
    wf = receiver("x", timeout=100, catch=True)
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("recv")
        await wait_until_waiting(engine, iid)
    await send_raw(storage(), iid, "x", "in-time")
    await trio.sleep(1000)
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        done = await finish(engine, iid)
        assert trio.current_time() - t0 <= SLACK
        left = payloads(await engine.adapter.signals(iid))
    (out,) = done.output
    if out == "in-time":
        assert left == []
    else:
        assert out["error"] == "SignalTimeoutError" and left == [("x", "in-time")]


class SlowCheckpoints(MemoryAdapter):
    """A MemoryAdapter whose checkpoints take ``delay`` (virtual) seconds once ``slow`` is set:
    a window in which a signal arrives while a receive step stores its wait."""

    def __init__(self, delay: float = 5.0) -> None:
        super().__init__()
        self.delay = delay
        self.slow = False

    async def checkpoint(self, *args: Any, **kwargs: Any) -> None:
        if self.slow:
            await trio.sleep(self.delay)
        await super().checkpoint(*args, **kwargs)


async def test_a_signal_delivered_while_the_receive_stores_its_wait_is_taken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adapter = SlowCheckpoints()
    async with engine_on(adapter) as engine:
        engine.register(tf.workflow("w").receive("r", signal="x").build())
        adapter.slow = True
        iid = await engine.start("w")
        await trio.sleep(2)  # r is storing what it waits for (that takes 5 s)
        await engine.signal(iid, "x", "p")
        done = await finish(engine, iid, limit=1000)
    assert done.status == "completed" and done.output == "p"


async def test_a_signal_delivered_while_a_receive_in_a_branch_stores_its_wait_is_taken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same with a sibling branch running (the instance stays in memory)."""
    adapter = SlowCheckpoints()

    async def busy(data: Any) -> str:
        await trio.sleep(100)
        return "busy"

    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch("recv").receive("r", signal="x").build(),
        tf.branch("busy").task("b", job=busy).build(),
    ]).build()
    async with engine_on(adapter) as engine:
        engine.register(wf)
        adapter.slow = True
        iid = await engine.start("w")
        await trio.sleep(2)  # r is storing what it waits for (that takes 5 s)
        await engine.signal(iid, "x", "p")
        done = await finish(engine, iid, limit=1000)
    assert done.status == "completed" and done.output == {"recv": "p", "busy": "busy"}


async def test_a_signal_delivered_while_a_short_receive_stores_its_wait_is_taken_in_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A receive whose timeout is short (the instance stays in memory): a signal sent while the
    step stores its wait is taken as soon as the wait is stored, not left until the timeout."""
    adapter = SlowCheckpoints(delay=0.3)
    wf = receiver("x", timeout=0.9, catch=True)
    async with engine_on(adapter) as engine:
        engine.register(wf)
        adapter.slow = True
        t0 = trio.current_time()
        iid = await engine.start("recv")
        await trio.sleep(0.1)  # r0 is storing what it waits for (that takes 0.3 s)
        await engine.signal(iid, "x", "in-time")
        done = await finish(engine, iid, limit=1000)
        took = trio.current_time() - t0
    assert done.output == ["in-time"]
    # Three slow checkpoints: the wait stored (0.3 s), r0's record, the end: 0.9 s. Taken only at
    # the timeout (0.9 s), the run ends at 1.5 s.
    assert took <= 0.9 + 0.05, f"the signal was taken at the timeout: the run took {took:.2f} s"


@pytest.mark.parametrize("what", ["timer", "signal"])
async def test_a_cancelled_waiting_instance_whose_engine_stops_while_compensating_is_resumed(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], what: str,
) -> None:
    """Cancelled while it waits; the engine stops during the compensation; the next engine
    finishes the compensation at once (not when the old wait would have ended)."""
    calls: list[str] = []

    async def release(out: Any) -> None:
        calls.append(out)
        if len(calls) == 1:
            await trio.sleep_forever()  # the engine stops here

    b = tf.workflow("t").task("reserve", job=returning("r-1"), compensate=release)
    b = b.wait("w", seconds=30 * 86400) if what == "timer" else b.receive("w", signal="go")
    wf = b.build()
    clock = virtual_wall_clock()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("t")
        await wait_until_waiting(engine, iid, what)
        assert await engine.cancel(iid)
        await trio.sleep(10)
        assert calls == ["r-1"]
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        done = await finish(engine, iid, limit=3600)
    assert done.status == "cancelled" and done.compensated_steps == ("reserve",)
    assert calls == ["r-1", "r-1"]
    assert done.waiting is None


async def test_signal_reaches_an_instance_queued_for_a_slot(autojump_clock: trio.testing.MockClock) -> None:
    hold = trio.Event()

    async def blocker(data: Any) -> None:
        await hold.wait()

    async with engine_on(MemoryAdapter(), max_running=1) as engine:
        engine.register(tf.workflow("block").task("b", job=blocker).build())
        engine.register(receiver("x"))
        first = await engine.start("block")
        queued = await engine.start("recv")
        await trio.sleep(5)
        assert (await engine.get_instance(queued)).status == "pending"
        await engine.signal(queued, "x", "q")
        hold.set()
        await finish(engine, first)
        done = await finish(engine, queued)
    assert done.output == ["q"]


# -- the adapters -----------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
async def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Adapter]:
    a: Adapter = MemoryAdapter() if request.param == "memory" else SQLiteAdapter(tmp_path / "a.db")
    await a.open()
    try:
        yield a
    finally:
        await a.close()


async def _create(a: Adapter, iid: str, status: Any = "running") -> None:
    assert await a.create(iid, "wf", status, start=b"start-" + iid.encode(), header=b"h0")


async def test_adapter_stores_signals_in_seq_order(autojump_clock: trio.testing.MockClock, adapter: Adapter) -> None:
    await _create(adapter, "i1")
    await _create(adapter, "i2", "pending")
    s1 = await adapter.send_signal("i1", "a", b"p1")
    s2 = await adapter.send_signal("i2", "a", b"q1")
    s3 = await adapter.send_signal("i1", "b", b"p2")
    s4 = await adapter.send_signal("i1", "a", bytearray(b"p3"))
    assert all(isinstance(s, int) for s in (s1, s2, s3, s4))
    assert s1 < s2 < s3 < s4, "seqs only grow, across instances"
    assert await adapter.signals("i1") == [(s1, "a", b"p1"), (s3, "b", b"p2"), (s4, "a", b"p3")]
    assert await adapter.signals("i2") == [(s2, "a", b"q1")]
    assert await adapter.signals("unknown") == []
    stored = await adapter.signals("i1")
    assert all(type(p) is bytes for _, _, p in stored)


async def test_adapter_send_signal_to_an_unknown_instance_raises(
    autojump_clock: trio.testing.MockClock, adapter: Adapter,
) -> None:
    with pytest.raises(tf.UnknownInstanceError):
        await adapter.send_signal("ghost", "a", b"x")
    assert await adapter.signals("ghost") == []


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled", "timed_out"])
async def test_adapter_send_signal_to_an_ended_instance_stores_nothing(
    autojump_clock: trio.testing.MockClock, adapter: Adapter, status: Any,
) -> None:
    await _create(adapter, "i1")
    await adapter.send_signal("i1", "a", b"before")
    await adapter.checkpoint("i1", status, b"h-end", [b"r0"], first_seq=0)
    assert await adapter.send_signal("i1", "a", b"after") is None
    assert [p for _, _, p in await adapter.signals("i1")] == [b"before"]


async def test_adapter_checkpoint_consumes_signals_with_its_records(
    autojump_clock: trio.testing.MockClock, adapter: Adapter,
) -> None:
    await _create(adapter, "i1")
    await _create(adapter, "i2")
    s1 = await adapter.send_signal("i1", "a", b"1")
    s2 = await adapter.send_signal("i1", "a", b"2")
    s3 = await adapter.send_signal("i1", "b", b"3")
    o1 = await adapter.send_signal("i2", "a", b"other")
    await adapter.checkpoint("i1", "running", b"h1", [b"r0"], first_seq=0, consumed=[s2])
    assert await adapter.signals("i1") == [(s1, "a", b"1"), (s3, "b", b"3")]
    await adapter.checkpoint("i1", "running", b"h2", [b"r1", b"r2"], first_seq=1, consumed=[s3, s1])
    assert await adapter.signals("i1") == []
    assert await adapter.signals("i2") == [(o1, "a", b"other")]
    await adapter.checkpoint("i1", "completed", b"h3", [], first_seq=3)
    loaded = await adapter.load("i1")
    assert loaded is not None and loaded.header == b"h3" and loaded.records == (b"r0", b"r1", b"r2")
    assert loaded.status == "completed"


@pytest.mark.parametrize("case", ["never-sent", "consumed-already", "another-instance", "one-of-two-missing"])
async def test_adapter_refuses_a_checkpoint_consuming_a_signal_that_is_not_pending(
    autojump_clock: trio.testing.MockClock, adapter: Adapter, case: str,
) -> None:
    await _create(adapter, "i1")
    await _create(adapter, "i2")
    s1 = await adapter.send_signal("i1", "a", b"1")
    s2 = await adapter.send_signal("i1", "a", b"2")
    other = await adapter.send_signal("i2", "a", b"o")
    assert s1 is not None and s2 is not None and other is not None
    await adapter.checkpoint("i1", "running", b"h1", [b"r0"], first_seq=0, consumed=[s1])
    bad = {
        "never-sent": [10_000],
        "consumed-already": [s1],
        "another-instance": [other],
        "one-of-two-missing": [s2, 10_000],
    }[case]
    before = await adapter.load("i1")
    with pytest.raises(tf.CheckpointConflictError):
        await adapter.checkpoint("i1", "completed", b"h2", [b"r1"], first_seq=1, consumed=bad)
    after = await adapter.load("i1")
    assert after == before, "nothing written"
    assert await adapter.signals("i1") == [(s2, "a", b"2")]
    assert await adapter.signals("i2") == [(other, "a", b"o")]
    assert await adapter.send_signal("i1", "a", b"3") is not None, "still running: still takes signals"


async def test_adapter_refuses_a_checkpoint_consuming_one_signal_twice(
    autojump_clock: trio.testing.MockClock, adapter: Adapter,
) -> None:
    await _create(adapter, "i1")
    s1 = await adapter.send_signal("i1", "a", b"1")
    before = await adapter.load("i1")
    with pytest.raises(tf.StorageError):
        await adapter.checkpoint("i1", "running", b"h1", [b"r0"], first_seq=0, consumed=[s1, s1])
    assert await adapter.load("i1") == before
    assert await adapter.signals("i1") == [(s1, "a", b"1")]


async def test_adapter_a_fenced_checkpoint_keeps_the_signals_it_would_consume(
    autojump_clock: trio.testing.MockClock, adapter: Adapter,
) -> None:
    await _create(adapter, "i1")
    s1 = await adapter.send_signal("i1", "a", b"1")
    await adapter.checkpoint("i1", "running", b"h1", [b"r0"], first_seq=0)
    with pytest.raises(tf.CheckpointConflictError):
        await adapter.checkpoint("i1", "running", b"h-stale", [b"r0-again"], first_seq=0, consumed=[s1])
    assert await adapter.signals("i1") == [(s1, "a", b"1")]
    loaded = await adapter.load("i1")
    assert loaded is not None and loaded.header == b"h1" and loaded.records == (b"r0",)


async def test_adapter_checkpoint_of_an_unknown_instance_consuming_signals_raises(
    autojump_clock: trio.testing.MockClock, adapter: Adapter,
) -> None:
    await _create(adapter, "i1")
    s1 = await adapter.send_signal("i1", "a", b"1")
    with pytest.raises((tf.UnknownInstanceError, tf.CheckpointConflictError)):
        await adapter.checkpoint("ghost", "running", b"h", [], first_seq=0, consumed=[s1])
    assert await adapter.signals("i1") == [(s1, "a", b"1")]


async def test_adapter_delete_removes_signals(autojump_clock: trio.testing.MockClock, adapter: Adapter) -> None:
    await _create(adapter, "i1")
    await _create(adapter, "i2")
    await adapter.send_signal("i1", "a", b"1")
    await adapter.send_signal("i1", "b", b"2")
    s = await adapter.send_signal("i2", "a", b"keep")
    await adapter.checkpoint("i1", "failed", b"h", [], first_seq=0)  # only a finished instance can be deleted
    assert await adapter.delete("i1") is True
    assert await adapter.signals("i1") == []
    with pytest.raises(tf.UnknownInstanceError):
        await adapter.send_signal("i1", "a", b"x")
    await _create(adapter, "i1")  # the same id again: a new instance, with no old signals
    assert await adapter.signals("i1") == []
    assert await adapter.signals("i2") == [(s, "a", b"keep")]


async def test_adapter_concurrent_checkpoints_one_refused_the_others_consume(
    autojump_clock: trio.testing.MockClock, adapter: Adapter,
) -> None:
    """Checkpoints in one scheduler pass (one SQLite group commit): one consuming a signal that
    is not pending is refused alone; the others are written and consume theirs."""
    n = 20
    seqs = {}
    for i in range(n):
        await _create(adapter, f"i{i}")
        seqs[i] = await adapter.send_signal(f"i{i}", "a", f"p{i}".encode())
    errors: dict[int, BaseException] = {}

    async def one(i: int) -> None:
        consumed = [10_000] if i == 7 else [seqs[i]]
        try:
            await adapter.checkpoint(f"i{i}", "running", b"h1", [b"r0"], first_seq=0, consumed=consumed)
        except tf.CheckpointConflictError as exc:
            errors[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    assert list(errors) == [7]
    for i in range(n):
        loaded = await adapter.load(f"i{i}")
        assert loaded is not None
        if i == 7:
            assert loaded.records == () and await adapter.signals("i7") == [(seqs[7], "a", b"p7")]
        else:
            assert loaded.records == (b"r0",) and await adapter.signals(f"i{i}") == []


async def test_sqlite_signals_survive_a_reopen(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    a = SQLiteAdapter(path)
    await a.open()
    await _create(a, "i1")
    s1 = await a.send_signal("i1", "a", b"1")
    s2 = await a.send_signal("i1", "a", b"2")
    await a.checkpoint("i1", "running", b"h1", [b"r0"], first_seq=0, consumed=[s1])
    await a.close()
    b = SQLiteAdapter(path)
    await b.open()
    try:
        assert await b.signals("i1") == [(s2, "a", b"2")]
        s3 = await b.send_signal("i1", "a", b"3")
        assert s3 is not None and s2 is not None and s3 > s2
        with pytest.raises(tf.CheckpointConflictError):
            await b.checkpoint("i1", "running", b"h2", [], first_seq=1, consumed=[s1])
    finally:
        await b.close()


# -- properties -------------------------------------------------------------------------------------

NAMES = ["a", "b", "c"]


def _check_deliveries(
    receives: list[str], sent: list[tuple[str, int]], done: tf.WorkflowInstance, left: list[tuple[str, Any]],
) -> None:
    """Each stored signal is delivered to at most one receive step, those of one name in the
    order sent (a prefix of them: first in, first out), and the others are still stored."""
    delivered: dict[str, list[int]] = {n: [] for n in NAMES}
    for record in done.history:
        i = int(record.step_name[1:]) if record.step_name.startswith("r") else None
        if i is None or isinstance(record.output, dict):
            continue  # a timeout (caught)
        assert record.status == "completed"
        name, payload = receives[i], record.output
        assert isinstance(payload, int)
        delivered[name].append(payload)
    flat = [p for ps in delivered.values() for p in ps]
    assert len(flat) == len(set(flat)), f"a signal was delivered twice: {delivered}"
    for name in NAMES:
        of_name = [p for n, p in sent if n == name]
        got = delivered[name]
        assert got == of_name[:len(got)], f"{name}: delivered {got}, sent {of_name}"
        assert [p for n, p in left if n == name] == of_name[len(got):], "none lost, none left twice"


async def _deliveries(adapter: Adapter, receives: list[str], sends: list[tuple[str, float]]) -> None:
    async with engine_on(adapter) as engine:
        engine.register(_receiving(receives))
        iid = await engine.start("prop")
        sent: list[tuple[str, int]] = []
        for k, (name, gap) in enumerate(sends):
            await trio.sleep(gap)
            try:
                await engine.signal(iid, name, k)
            except tf.InstanceNotLiveError:
                continue
            sent.append((name, k))
        done = await finish(engine, iid)
        left = payloads(await engine.adapter.signals(iid))
    assert done.status == "completed", done.error
    _check_deliveries(receives, sent, done, left)


def _receiving(receives: list[str]) -> tf.WorkflowDefinition:
    b = tf.workflow("prop")
    for i, name in enumerate(receives):
        following = f"r{i + 1}" if i + 1 < len(receives) else "end"
        b = b.receive(f"r{i}", signal=name, timeout=20,
                      catch=[tf.Catch(errors=[tf.SignalTimeoutError], next=following)])
    return b.end("end").build()


_receives = st.lists(st.sampled_from(NAMES), min_size=1, max_size=8)
_sends = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from([0, 0, 0.5, 5, 19.999, 20, 25])), max_size=14)


@given(receives=_receives, sends=_sends)
def test_property_each_signal_goes_to_at_most_one_receive_in_send_order_per_name(
    receives: list[str], sends: list[tuple[str, float]],
) -> None:
    tf.testing.run(_deliveries, MemoryAdapter(), receives, sends)


@settings(max_examples=15)
@given(receives=_receives, sends=_sends)
def test_property_each_signal_goes_to_at_most_one_receive_in_send_order_per_name_sqlite(
    receives: list[str], sends: list[tuple[str, float]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tf.testing.run(_deliveries, SQLiteAdapter(Path(tmp) / "p.db"), receives, sends)


@given(
    branches=st.lists(st.integers(1, 3), min_size=1, max_size=4),
    signals=st.integers(0, 10),
    gaps=st.lists(st.sampled_from([0, 0, 1]), min_size=10, max_size=10),
)
def test_property_parallel_receives_of_one_name_never_share_a_signal(
    branches: list[int], signals: int, gaps: list[float],
) -> None:
    async def main() -> None:
        wf = tf.workflow("par").parallel("p", branches=[
            _branch_receiving(f"b{i}", count) for i, count in enumerate(branches)]).build()
        async with engine_on(MemoryAdapter()) as engine:
            engine.register(wf)
            iid = await engine.start("par")
            refused = []
            for k in range(signals):
                await trio.sleep(gaps[k])
                try:
                    await engine.signal(iid, "x", k)
                except tf.InstanceNotLiveError:
                    refused.append(k)  # every receive took one already: the instance has ended
            with trio.move_on_after(100):
                await finish(engine, iid)
            inst = await engine.get_instance(iid)
            assert inst is not None
            left = [p for _, p in payloads(await engine.adapter.signals(iid))]
            got = [r.output for r in inst.history if r.step_name.startswith("b")]
            assert len(got) == len(set(got)), got
            assert not refused or len(got) == sum(branches), "refused only once every receive took one"
            assert sorted(got + left + refused) == list(range(signals)), (
                "every signal taken once, still stored, or refused after the end")
            assert len(got) == min(signals, sum(branches))
            for i, count in enumerate(branches):
                mine = [r.output for r in inst.history if r.step_name.startswith(f"b{i}-")]
                assert mine == sorted(mine), "first in first out within a branch"
            if inst.status == "running":
                await engine.cancel(iid)
    tf.testing.run(main)


def _branch_receiving(name: str, count: int) -> Any:
    b = tf.branch(name)
    for j in range(count):
        b = b.receive(f"{name}-{j}", signal="x")
    return b.build()


@given(timeout=st.integers(1, 50), send_at=st.one_of(st.integers(0, 60), st.floats(0, 60)))
def test_property_a_receive_with_a_timeout_gets_the_payload_or_times_out(timeout: int, send_at: float) -> None:
    async def main() -> None:
        async with engine_on(MemoryAdapter()) as engine:
            engine.register(receiver("x", "y", timeout=timeout, catch=True))
            iid = await engine.start("recv")
            await trio.sleep(send_at)
            try:
                await engine.signal(iid, "x", "px")
                stored = True
            except tf.InstanceNotLiveError:
                stored = False
            done = await finish(engine, iid)
            left = payloads(await engine.adapter.signals(iid))
        out = done.output[0]
        got = out == "px"
        timed_out = isinstance(out, dict) and out["error"] == "SignalTimeoutError"
        assert got != timed_out
        assert left == ([] if got or not stored else [("x", "px")])
        if send_at < timeout:
            assert got, (timeout, send_at, out)
        elif send_at > timeout:
            assert timed_out, (timeout, send_at, out)
    tf.testing.run(main)
