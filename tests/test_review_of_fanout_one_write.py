"""Review of bc0b177: lanes of a fan-out that start waiting together store when to wake the
instance in the checkpoint that stores their waits (``announce(rests=...)``, ``Run.announcing``).

Storage then says "waiting, wake at T" while the instance is still in memory and its lanes do
not rest yet. These tests crash at every checkpoint of such workflows (the testing kit's crash
explorer) and probe what may keep a lane from resting after that write: a signal during the
write, a failed branch, a cancel, the workflow timeout, a near due time, the engine closing.
MockClock only (``autojump_clock``), MemoryAdapter and SQLite.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import Raises, Returns, ScriptedJob, explore_crashes

from storages import engine_on, finish, storage  # noqa: F401  (a fixture)

HOUR = 3600.0
SLACK = 3.0


def factory_for(kind: str, tmp_path: Path) -> Callable[[], Adapter]:
    if kind == "memory":
        return MemoryAdapter
    counter = itertools.count()
    return lambda: SQLiteAdapter(tmp_path / f"{next(counter)}.db")


def in_memory(engine: tf.Engine, iid: str) -> bool:
    return iid in engine._live


# -- workflows -----------------------------------------------------------------------------------

def timer_and_receive(timeout: float | None = 3 * HOUR, wf_timeout: float | None = None) -> tf.WorkflowDefinition:
    """A parallel step whose branches start a timer and a receive in one pass."""
    builder = tf.workflow("tr")
    if wf_timeout is not None:
        builder = builder.with_timeout(wf_timeout)
    return (builder
            .task("before", job=ScriptedJob(Returns(value="b")), compensate=ScriptedJob(Returns(value=None)))
            .parallel("p", branches=[
                tf.branch("t").wait("sleep", seconds=2 * HOUR)
                  .task("after-sleep", job=ScriptedJob(Returns(value="woke"))).build(),
                tf.branch("r").receive("get", signal="go", timeout=timeout,
                                       catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="late")])
                  .succeed("got")
                  .pass_("late", result="late", end=True).build(),
            ])
            .task("end", job=ScriptedJob(Returns(value="end")))
            .build())


def three_timers_and_receive() -> tf.WorkflowDefinition:
    return (tf.workflow("ttr")
            .parallel("p", branches=[
                tf.branch("a").wait("wa", seconds=HOUR).task("ja", job=ScriptedJob(Returns(value="a"))).build(),
                tf.branch("b").wait("wb", seconds=1.5).task("jb", job=ScriptedJob(Returns(value="b"))).build(),
                tf.branch("c").receive("rc", signal="go", timeout=2 * HOUR).build(),
                tf.branch("d").receive("rd", signal="go2").build(),
            ])
            .build())


def map_of_waits() -> tf.WorkflowDefinition:
    branch = (tf.branch("item")
              .wait("w", seconds=lambda ctx: HOUR * (1 + ctx.item))
              .receive("r", signal="go", timeout=5 * HOUR,
                       catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="timed-out")])
              .succeed("ok")
              .pass_("timed-out", result="timed out", end=True)
              .build())
    return tf.workflow("mw").map("each", items=lambda ctx: [0, 1, 2], branch=branch).build()


def map_of_parallels() -> tf.WorkflowDefinition:
    inner = tf.branch("item").parallel("inner", branches=[
        tf.branch("t").wait("w", seconds=lambda ctx: HOUR * (1 + ctx.item)).pass_("slept", result="s", end=True).build(),
        tf.branch("r").receive("r", signal="go", timeout=4 * HOUR,
                               catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="gave-up")])
          .succeed("got").pass_("gave-up", result="gave up", end=True).build(),
    ]).build()
    return tf.workflow("mp").map("each", items=lambda ctx: [0, 1], branch=inner).build()


def wait_all_with_failure() -> tf.WorkflowDefinition:
    return (tf.workflow("wa")
            .parallel("p", on_error="wait-all", branches=[
                tf.branch("f").task("boom", job=ScriptedJob(Raises(error=ValueError, message="no", times=1000))).build(),
                tf.branch("t").wait("w", seconds=2 * HOUR).task("jt", job=ScriptedJob(Returns(value="t"))).build(),
                tf.branch("r").receive("r", signal="go", timeout=3 * HOUR).build(),
            ], catch=[tf.Catch(errors=[tf.ALL], next="caught")])
            .succeed("done")
            .pass_("caught", result="caught")
            .build())


def retry_and_timer() -> tf.WorkflowDefinition:
    return (tf.workflow("rt")
            .parallel("p", branches=[
                tf.branch("x").task("flaky", job=ScriptedJob(Raises(error=ValueError, message="busy", times=2),
                                                             Returns(value="ok")),
                                    retry=tf.Retry(max_attempts=3, interval=30)).build(),
                tf.branch("t").wait("w", seconds=HOUR).task("jt", job=ScriptedJob(Returns(value="t"))).build(),
                tf.branch("r").receive("r", signal="go", timeout=2 * HOUR).build(),
            ])
            .build())


def kid() -> tf.WorkflowDefinition:
    return (tf.workflow("kid")
            .wait("kw", seconds=HOUR)
            .task("k", job=ScriptedJob(Returns(value="k")), compensate=ScriptedJob(Returns(value=None)))
            .build())


def child_and_waits() -> tf.WorkflowDefinition:
    return (tf.workflow("cw")
            .parallel("p", branches=[
                tf.branch("c").child("c", workflow="kid").build(),
                tf.branch("t").wait("w", seconds=2 * HOUR).task("jt", job=ScriptedJob(Returns(value="t"))).build(),
                tf.branch("r").receive("r", signal="go", timeout=3 * HOUR).build(),
            ])
            .build())


# -- the crash explorer --------------------------------------------------------------------------

EXPLORED: dict[str, tuple[Callable[[], tf.WorkflowDefinition], list[tuple[str, Any]], tuple[Callable[[], tf.WorkflowDefinition], ...]]] = {
    "timer+receive, signal sent at once": (timer_and_receive, [("go", {"n": 1})], ()),
    "timer+receive, no signal (timeout)": (timer_and_receive, [], ()),
    "timer+receive, workflow timeout": (lambda: timer_and_receive(timeout=None, wf_timeout=HOUR), [], ()),
    "two timers (one near) + two receives": (three_timers_and_receive, [("go", 1), ("go2", 2)], ()),
    "map items wait together": (map_of_waits, [("go", 1), ("go", 2)], ()),
    "map of parallels": (map_of_parallels, [("go", 1)], ()),
    "wait-all with a failed branch": (wait_all_with_failure, [("go", 1)], ()),
    "retry delay beside waits": (retry_and_timer, [("go", 1)], ()),
    "child beside waits": (child_and_waits, [("go", 1)], (kid,)),
}


@pytest.mark.parametrize("name", list(EXPLORED))
async def test_crash_at_every_write_ends_as_without(autojump_clock: trio.testing.MockClock, name: str) -> None:
    make, signals, also = EXPLORED[name]
    report = await explore_crashes(make(), signals=signals, also=[a() for a in also], check=False)
    assert report.writes >= 2
    assert report.divergent == (), [(p.write, p.lost, p.after, p.divergence) for p in report.divergent]


@pytest.mark.parametrize("name", ["timer+receive, signal sent at once", "map of parallels"])
async def test_crash_at_every_write_ends_as_without_on_sqlite(
    autojump_clock: trio.testing.MockClock, name: str, tmp_path: Path,
) -> None:
    make, signals, also = EXPLORED[name]
    report = await explore_crashes(make(), signals=signals, also=[a() for a in also], check=False,
                                   adapter_factory=factory_for("sqlite", tmp_path))
    assert report.divergent == (), [(p.write, p.lost, p.after, p.divergence) for p in report.divergent]


# -- targeted tests: what happens around the one write ---------------------------------------------

def simple_pair(timer: float = 2 * HOUR, timeout: float | None = 3 * HOUR, wf_timeout: float | None = None,
                name: str = "pair") -> tf.WorkflowDefinition:
    builder = tf.workflow(name)
    if wf_timeout is not None:
        builder = builder.with_timeout(wf_timeout)
    return builder.parallel("p", branches=[
        tf.branch("t").wait("sleep", seconds=timer).pass_("slept", result="woke", end=True).build(),
        tf.branch("r").receive("get", signal="go", timeout=timeout).build(),
    ]).build()


class Probe:
    """Mixin for an adapter: keeps each checkpoint's ``wake_at`` (``"-"``: none passed), and
    around the first checkpoint of the instance that stores a wake time while it has several
    lanes, calls ``during`` (before the write reaches storage) and ``after`` (once it has)."""

    def _probe_init(self) -> None:
        self.wakes: list[Any] = []
        self.during: Callable[[], Any] | None = None
        self.after: Callable[[], Any] | None = None
        self.hit = False

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        wake = kwargs.get("wake_at", "-")
        self.wakes.append(wake)
        first = not self.hit and wake not in ("-", None)
        if first:
            self.hit = True
            if self.during is not None:
                await self.during()
        result = await super().checkpoint(*args, **kwargs)  # type: ignore[misc]
        if first and self.after is not None:
            await self.after()
        return result


class ProbedMemory(Probe, MemoryAdapter):
    def __init__(self) -> None:
        MemoryAdapter.__init__(self)
        self._probe_init()


class ProbedSQLite(Probe, SQLiteAdapter):
    def __init__(self, path: Path) -> None:
        SQLiteAdapter.__init__(self, path)
        self._probe_init()


def probed(kind: str, tmp_path: Path) -> Callable[[], Any]:
    """Adapters on one storage, as a restart gets them, each probed afresh."""
    if kind == "memory":
        memory = ProbedMemory()
        return lambda: memory
    return lambda: ProbedSQLite(tmp_path / "flows.db")


def snapshot_of(adapter: MemoryAdapter) -> MemoryAdapter:
    """What a process killed now leaves behind: a copy of the storage, closed."""
    copied = copy.deepcopy(adapter)
    copied.__class__ = MemoryAdapter
    copied._open = False  # type: ignore[attr-defined]
    return copied


async def test_one_write_stores_waits_and_wake_time(autojump_clock: trio.testing.MockClock) -> None:
    """The premise: branches that start waiting together make one checkpoint with a wake time,
    and the instance leaves memory with no write more."""
    adapter = ProbedMemory()
    async with engine_on(adapter) as engine:
        engine.register(simple_pair())
        t0 = engine._clock()
        iid = await engine.start("pair")
        await trio.sleep(5)
        assert not in_memory(engine, iid)
        stored = [w for w in adapter.wakes if w != "-"]
        assert len(stored) == 1 and t0 + 2 * HOUR <= stored[0] <= t0 + 2 * HOUR + SLACK
        view = await engine.get_instance(iid)
        assert view is not None and view.status == "running" and view.waiting is not None


@pytest.mark.parametrize("kill_at", ["after the write", "during settle"])
async def test_killed_after_the_one_write_wakes_on_time_and_takes_each_signal_once(
    autojump_clock: trio.testing.MockClock, kill_at: str,
) -> None:
    """A process killed right after the checkpoint that stored the waits and the wake time (or
    while the lanes settle): the next engine leaves the instance waiting (not taken up at once,
    nothing to run), shows what it waits for, takes it up for a signal, and fires the timer at
    its due time."""
    adapter = ProbedMemory()
    left: list[MemoryAdapter] = []

    async def keep() -> None:
        if kill_at == "after the write":
            left.append(snapshot_of(adapter))

    adapter.after = keep
    with trio.CancelScope() as process:
        async with engine_on(adapter) as engine:
            engine.register(simple_pair())
            t0 = engine._clock()
            iid = await engine.start("pair")
            await trio.sleep(0.5)
            if kill_at == "during settle":
                assert in_memory(engine, iid)
                left.append(snapshot_of(adapter))
            process.cancel()
    assert len(left) == 1
    async with engine_on(left[0]) as engine:
        engine.register(simple_pair())
        await trio.sleep(10)
        assert not in_memory(engine, iid)
        view = await engine.get_instance(iid)
        assert view is not None and view.status == "running"
        assert view.waiting is not None
        await trio.sleep(HOUR - engine._clock() + t0)
        await engine.signal(iid, "go", "here")
        await trio.sleep(1)
        view = await engine.get_instance(iid)
        assert view is not None and [r.output for r in view.history if r.step_name == "get"] == ["here"]
        done = await finish(engine, iid)
        took = engine._clock() - t0
    assert done.status == "completed" and done.output == {"t": "woke", "r": "here"}
    assert 2 * HOUR <= took <= 2 * HOUR + SLACK


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("crash", [False, True])
async def test_signal_during_the_one_write_is_taken_at_once_and_once(
    autojump_clock: trio.testing.MockClock, kind: str, crash: bool, tmp_path: Path,
) -> None:
    """A signal for the receive lane sent while the checkpoint storing its wait (and the wake
    time) is in flight: the lane takes it at once (it does not rest until the timer), and after a
    crash right after that write, the next engine takes the instance up at once for it."""
    make = probed(kind, tmp_path)
    adapter = make()
    sent = trio.Event()
    box: dict[str, Any] = {}

    async def during() -> None:
        box["nursery"].start_soon(send)
        await sent.wait()

    async def send() -> None:
        await box["engine"].signal(box["iid"], "go", "now")
        sent.set()

    adapter.during = during
    got_at: list[float] = []
    with trio.CancelScope() as process:
        async with engine_on(adapter) as engine, trio.open_nursery() as nursery:
            box["engine"], box["nursery"] = engine, nursery
            engine.events.on("workflow.signal.received", lambda e: got_at.append(engine._clock()))
            engine.register(simple_pair())
            t0 = engine._clock()
            box["iid"] = iid = "sig"
            await engine.start("pair", instance_id=iid)
            await sent.wait()
            if crash:
                await trio.sleep(0)  # the write returns ...
                process.cancel()     # ... and the process dies
            else:
                done = await finish(engine, iid)
    if crash:
        adapter2 = make()
        async with engine_on(adapter2) as engine:
            engine.register(simple_pair())
            engine.events.on("workflow.signal.received", lambda e: got_at.append(engine._clock()))
            await trio.sleep(5)
            view = await engine.get_instance(iid)
            assert view is not None
            assert [r.output for r in view.history if r.step_name == "get"] == ["now"]
            done = await finish(engine, iid)
    took = engine._clock() - t0
    assert done.status == "completed" and done.output == {"t": "woke", "r": "now"}
    assert 2 * HOUR <= took <= 2 * HOUR + SLACK
    assert got_at and got_at[0] - t0 <= SLACK + 5
    assert len(got_at) == 1


@pytest.mark.parametrize("when", ["during", "after"])
async def test_cancel_around_the_one_write(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], when: str,
) -> None:
    """A cancel() while the checkpoint storing the waits and the wake time is in flight, or
    just after it: the instance ends cancelled at once, its completed step compensated, and
    storage no longer says it waits."""
    undone: list[str] = []

    async def undo(ctx: tf.WorkflowContext, result: Any) -> None:
        undone.append(result)

    wf = (tf.workflow("cx")
          .step("hold", returning_async("held"), undo)
          .parallel("p", branches=[
              tf.branch("t").wait("sleep", seconds=2 * HOUR).build(),
              tf.branch("r").receive("get", signal="go", timeout=3 * HOUR).build(),
          ]).build())
    adapter = storage()
    box: dict[str, Any] = {}
    said: list[bool] = []

    async def cancel() -> None:
        said.append(await box["engine"].cancel(box["iid"]))

    async def hook() -> None:
        box["nursery"].start_soon(cancel)
        await trio.sleep(0.01)

    wrap_checkpoint(adapter, **{when: hook})
    async with engine_on(adapter) as engine, trio.open_nursery() as nursery:
        box["engine"], box["nursery"] = engine, nursery
        engine.register(wf)
        t0 = engine._clock()
        box["iid"] = iid = await engine.start("cx")
        done = await finish(engine, iid)
        took = engine._clock() - t0
        assert said == [True]
        assert done.status == "cancelled" and undone == ["held"]
        assert took < 5
        await trio.sleep(3 * HOUR)
    async with engine_on(storage()) as engine:
        engine.register(wf)
        await trio.sleep(3 * HOUR)
        view = await engine.get_instance(iid)
        assert view is not None and view.status == "cancelled" and undone == ["held"]


def returning_async(value: Any) -> Any:
    async def job(ctx: tf.WorkflowContext) -> Any:
        return value
    return job


def wrap_checkpoint(adapter: Any, during: Callable[[], Any] | None = None,
                    after: Callable[[], Any] | None = None) -> list[Any]:
    """Wrap ``adapter.checkpoint`` (any adapter): ``during``/``after`` the first checkpoint
    that stores a wake time. Returns the list of ``wake_at`` passed (``"-"``: none)."""
    inner = adapter.checkpoint
    wakes: list[Any] = []
    state = {"hit": False}

    async def checkpoint(*args: Any, **kwargs: Any) -> Any:
        wake = kwargs.get("wake_at", "-")
        wakes.append(wake)
        first = not state["hit"] and wake not in ("-", None)
        if first:
            state["hit"] = True
            if during is not None:
                await during()
        result = await inner(*args, **kwargs)
        if first and after is not None:
            await after()
        return result

    adapter.checkpoint = checkpoint
    return wakes


async def test_engine_closing_right_after_the_one_write(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """The engine closes right after the checkpoint storing the waits and the wake time: the
    next engine leaves it waiting, and the timer fires at its due time."""
    written = trio.Event()

    async def after() -> None:
        written.set()

    adapter = storage()
    wrap_checkpoint(adapter, after=after)
    async with engine_on(adapter) as engine:
        engine.register(simple_pair())
        t0 = engine._clock()
        iid = await engine.start("pair")
        await written.wait()
        assert in_memory(engine, iid)
    fired: list[float] = []
    async with engine_on(storage()) as engine:
        engine.register(simple_pair())
        engine.events.on("workflow.step.completed",
                         lambda e: fired.append(engine._clock() - t0) if e["step_name"] == "sleep" else None)
        await trio.sleep(5)
        assert not in_memory(engine, iid)
        view = await engine.get_instance(iid)
        assert view is not None and view.status == "running" and view.waiting is not None
        await engine.signal(iid, "go", 1)
        done = await finish(engine, iid)
    assert done.status == "completed" and done.output == {"t": "woke", "r": 1}
    assert len(fired) == 1 and 2 * HOUR <= fired[0] <= 2 * HOUR + SLACK


async def test_workflow_timeout_after_the_one_write_fires_on_time(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """The wake time the one write stores is the workflow timeout's when it comes first: killed
    after that write (the engine closes), the next engine times the instance out on time."""
    written = trio.Event()

    async def after() -> None:
        written.set()

    wf = simple_pair(timer=2 * HOUR, timeout=None, wf_timeout=HOUR, name="timed")
    adapter = storage()
    wakes = wrap_checkpoint(adapter, after=after)
    async with engine_on(adapter) as engine:
        engine.register(wf)
        t0 = engine._clock()
        iid = await engine.start("timed")
        await written.wait()
    stored = [w for w in wakes if w not in ("-", None)]
    assert stored and t0 + HOUR - SLACK <= stored[0] <= t0 + HOUR + SLACK
    async with engine_on(storage()) as engine:
        engine.register(wf)
        done = await finish(engine, iid)
        took = engine._clock() - t0
    assert done.status == "timed_out"
    assert HOUR <= took <= HOUR + SLACK


@pytest.mark.parametrize("timer", [1.02, 1.2, 1.5])
async def test_a_timer_due_within_the_rest_fires_on_time(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], timer: float,
) -> None:
    """A timer long enough to rest, due before the lanes' rest is over (or just after): stored
    as the wake time by the one write, it fires at its time whether the instance stays or
    leaves, and the receive beside it takes its signal."""
    adapter = storage()
    wakes = wrap_checkpoint(adapter)
    fired: list[float] = []
    async with engine_on(adapter) as engine:
        engine.register(simple_pair(timer=timer, timeout=None))
        engine.events.on("workflow.step.completed",
                         lambda e: fired.append(engine._clock()) if e["step_name"] == "sleep" else None)
        t0 = engine._clock()
        iid = await engine.start("pair")
        await trio.sleep(HOUR)
        assert not in_memory(engine, iid)
        await engine.signal(iid, "go", 7)
        done = await finish(engine, iid)
    assert done.status == "completed" and done.output == {"t": "woke", "r": 7}
    assert len(fired) == 1 and timer - 1e-3 <= fired[0] - t0 <= timer + 0.25
    assert any(w not in ("-", None) for w in wakes)


async def test_map_items_starting_waits_together_one_write_and_on_time(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """Map items whose first steps are timers (and receives) all start together: their waits are
    stored with the wake time, and each fires on time; killed (engine closed) after that write,
    the next engine fires each on time too."""
    branch = (tf.branch("item")
              .wait("w", seconds=lambda ctx: HOUR * (1 + ctx.item))
              .pass_("done", result="d", end=True).build())
    wf = tf.workflow("items").map("each", items=lambda ctx: [0, 1, 2, 3], branch=branch).build()
    written = trio.Event()

    async def after() -> None:
        written.set()

    adapter = storage()
    wakes = wrap_checkpoint(adapter, after=after)
    async with engine_on(adapter) as engine:
        engine.register(wf)
        t0 = engine._clock()
        iid = await engine.start("items")
        await written.wait()
    stored = [w for w in wakes if w not in ("-", None)]
    assert stored and t0 + HOUR <= stored[0] <= t0 + HOUR + SLACK
    fired: list[float] = []
    async with engine_on(storage()) as engine:
        engine.register(wf)
        engine.events.on("workflow.step.completed",
                         lambda e: fired.append(engine._clock() - t0) if e["step_name"] == "w" else None)
        done = await finish(engine, iid)
    assert done.status == "completed" and done.output == ["d"] * 4
    assert len(fired) == 4
    for i, at in enumerate(sorted(fired)):
        assert HOUR * (1 + i) <= at <= HOUR * (1 + i) + SLACK


# -- a property: branches that wait together, signals and a restart at any moment ----------------

branch_kinds = st.one_of(
    st.tuples(st.just("timer"), st.sampled_from([0.5, 1.01, 1.02, 1.3, 2.0, 30.0, HOUR])),
    st.tuples(st.just("receive"), st.sampled_from([None, 1.5, 40.0, 2 * HOUR]),
              st.one_of(st.none(), st.sampled_from([0.0, 0.01, 0.5, 1.0, 1.03, 1.2, 3.0, 50.0, HOUR]))),
)


def property_workflow(kinds: list[tuple[Any, ...]]) -> tf.WorkflowDefinition:
    branches = []
    for i, kind in enumerate(kinds):
        if kind[0] == "timer":
            branches.append(tf.branch(f"b{i}").wait(f"w{i}", seconds=kind[1])
                            .pass_(f"d{i}", result=f"t{i}", end=True).build())
        else:
            branches.append(tf.branch(f"b{i}").receive(
                f"r{i}", signal=f"s{i}", timeout=kind[1],
                catch=[tf.Catch(errors=[tf.SignalTimeoutError], next=f"late{i}")])
                .succeed(f"ok{i}").pass_(f"late{i}", result="late", end=True).build())
    return tf.workflow("prop").parallel("p", branches=branches).build()


@settings(max_examples=40, deadline=None)
@given(kinds=st.lists(branch_kinds, min_size=2, max_size=4),
       restart_at=st.one_of(st.none(), st.sampled_from([0.0, 0.001, 0.5, 1.0, 1.02, 1.1, 2.5, 60.0])))
def test_branches_waiting_together_end_as_expected_whatever_the_restart(
    kinds: list[tuple[Any, ...]], restart_at: float | None,
) -> None:
    # A receive with no timeout always gets its signal (else the run never ends).
    kinds = [k if k[0] == "timer" or k[1] is not None or k[2] is not None else (k[0], k[1], 5.0) for k in kinds]
    wf = property_workflow(kinds)
    expected: dict[str, Any] = {}
    for i, kind in enumerate(kinds):
        if kind[0] == "timer":
            expected[f"b{i}"] = f"t{i}"
        else:
            _, timeout, send_at = kind
            sent_in_time = send_at is not None and (timeout is None or send_at < timeout)
            expected[f"b{i}"] = i if sent_in_time else "late"

    async def main() -> None:
        adapter = MemoryAdapter()
        events: list[tuple[float, str, Any]] = []
        for i, kind in enumerate(kinds):
            if kind[0] == "receive" and kind[2] is not None:
                events.append((kind[2], "signal", i))
        if restart_at is not None:
            events.append((restart_at, "restart", None))
        events.sort(key=lambda e: (e[0], e[1] != "restart"))
        iid = "p1"

        async with trio.open_nursery():
            cm = engine_on(adapter)
            engine = await cm.__aenter__()
            engine.register(wf)
            t0 = engine._clock()
            await engine.start("prop", instance_id=iid)
            try:
                for at, what, arg in events:
                    delay = t0 + at - engine._clock()
                    if delay > 0:
                        await trio.sleep(delay)
                    if what == "restart":
                        await cm.__aexit__(None, None, None)
                        cm = engine_on(adapter)
                        engine = await cm.__aenter__()
                        engine.register(wf)
                    else:
                        try:
                            await engine.signal(iid, f"s{arg}", arg)
                        except tf.InstanceNotLiveError:
                            pass
                done = await finish(engine, iid)
                view = await engine.get_instance(iid)
            finally:
                await cm.__aexit__(None, None, None)
        assert done.status == "completed", (done.status, done.error)
        assert done.output == expected
        assert view is not None and view.waiting is None
        for i, kind in enumerate(kinds):
            if kind[0] == "timer":
                runs = [r for r in done.history if r.step_name == f"w{i}"]
                assert [r.status for r in runs] == ["completed"], runs
                assert runs[0].completed_at is not None
                at = runs[0].completed_at - t0
                # A restart while the timer is due: it fires once the next engine takes it up.
                assert kind[1] - 1e-3 <= at <= kind[1] + 0.25, (i, kind, at)
        # Each signal sent in time is taken (and deleted); only one sent too late may stay.
        left = sorted(name for _, name, _ in await adapter.signals(iid))
        assert set(left) <= {f"s{i}" for i, k in enumerate(kinds)
                             if k[0] == "receive" and k[2] is not None and expected[f"b{i}"] == "late"}

    tf.testing.run(main)
