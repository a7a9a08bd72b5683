"""Adversarial review of "lanes at rest leave memory" (parallel branches and map items that all
rest in long waits park the instance: ``trioflow.actors._wait.settle`` and friends).

What is attacked: signals, ``cancel()``, the workflow timeout and an engine close sent at every
moment around the park decision (swept over virtual time and over scheduler passes); crashes at
every write (the crash explorer) of fan-outs with timers, receives, children and retries inside
branches and items; maps with ``max_concurrency``; nested fan-outs; failures while siblings
rest; children on a small ``max_running``; a map of many children ending one at a time; and
hypothesis-generated fan-outs with random signal times and restarts.

Three of these tests found defects, fixed since; their docstrings say what they found and how
it went wrong (in the past tense: "what happens" there is what happened). Everything runs on
trio's MockClock.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trioflow as tf
import trioflow.actors._wait as wait_module
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import Raises, Returns, ScriptedJob, explore_crashes, open_test_engine, virtual_wall_clock

from storages import engine_on, finish, returning, storage  # noqa: F401  (a fixture)

HOUR = 3600.0


def in_memory(engine: tf.Engine, iid: str) -> bool:
    return iid in engine._live


def adapters(kind: str, tmp_path: Path) -> Callable[[], Callable[[], Adapter]]:
    """Fresh storage for each run of a sweep: a function giving, per run, what the ``storage``
    fixture gives (the same MemoryAdapter each call, or SQLite adapters on one new file)."""
    counter = itertools.count()

    def fresh() -> Callable[[], Adapter]:
        if kind == "memory":
            memory = MemoryAdapter()
            return lambda: memory
        path = tmp_path / f"sweep-{next(counter)}.db"
        return lambda: SQLiteAdapter(path)
    return fresh


async def park_times(workflow: tf.WorkflowDefinition, make: Callable[[], Adapter], drive: Any,
                     monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When (seconds after its start) the instance decided to leave memory, on a run ``drive``
    takes to its end: found by watching ``_wait._leave``."""
    times: list[float] = []
    leave = wait_module._leave
    t0 = 0.0

    def watched(run: Any) -> Any:
        times.append(trio.current_time() - t0)
        return leave(run)

    with monkeypatch.context() as patched:
        patched.setattr(wait_module, "_leave", watched)
        async with engine_on(make()) as engine:
            engine.register(workflow)
            t0 = trio.current_time()
            iid = await engine.start(workflow.name)
            await drive(engine, iid)
            await finish(engine, iid)
    return times


# -- 1. a nested fan-out that ends while an outer lane rests ------------------------------------


def _nested(shape: str, after: Any) -> tf.WorkflowDefinition:
    """An outer lane A that rests, and beside it a lane B whose inner fan-out's lanes end
    (after a short wait each, so that A rests first), followed by ``after``. A waits for a
    signal sent only once ``after`` ran (or, ``timer-*``, for an hour's timer)."""
    if shape.endswith("map-in-parallel"):
        fan = tf.branch("B").map("inner", items=lambda ctx: [1, 2, 3],
                                 branch=tf.branch("item").wait("ti", seconds=0.5).build())
    else:
        fan = tf.branch("B").parallel("inner", branches=[
            tf.branch("b1").wait("t1", seconds=0.5).pass_("p1", result=1).build(),
            tf.branch("b2").wait("t2", seconds=0.7).pass_("p2", result=2).build(),
        ])
    rests = tf.branch("A")
    rests = rests.wait("ta", seconds=HOUR) if shape.startswith("timer") else rests.receive("ra", signal="approved")
    return tf.workflow("nested").parallel("outer", branches=[
        rests.build(), fan.task("after", job=after).build()]).build()


@pytest.mark.parametrize("shape", ["parallel-in-parallel", "map-in-parallel", "timer-parallel-in-parallel"])
async def test_a_nested_fanout_goes_on_while_an_outer_lane_rests(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], shape: str,
) -> None:
    """Found a defect (fixed). A lane whose inner parallel/map step has all its branches/items
    ended must go on to its next step at once. Here the next step ("after": mail the approver)
    is what gets the approval signal sent; the sibling lane rests waiting for that signal.

    What happens: the last inner branch (item) to end calls ``settle(run, None)`` from its own
    task (``actors/_lane.py`` ``_branch_actor``, ``actors/_map.py`` ``_Items.item_actor``). The
    outer resting lane is then all that is counted active (``run.active`` no longer counts the
    lane at the inner fan-out step, ``Run.fanned_out``), so ``resting == active`` and ``settle``
    waits PARK_AFTER + 10 ms/lane *inside the inner nursery*: the inner step cannot return (and
    call ``lane_runs()``, which would end the settle) until ``settle`` does. After the grace,
    ``_may_leave`` agrees (``runtime/_decide.py`` ``_fanned_out`` still says the lane at the
    inner step is fanned out: its branch lanes are still in ``state.lanes``, or its map has
    ``progress.started == progress.count``, though every one has ended) and the instance parks
    with ``wake_at = inf`` (checked: out of memory, stored ``running``, ``wake_at`` inf, ten
    days on): "after" never runs, nothing is ever sent, and the instance waits for ever. With
    a timer instead of a signal in the outer lane, "after" runs only when that timer fires (an
    hour late here). Before the change (759a03f) "after" ran at once.

    Minimal reproduction: ``parallel("outer", [branch A: receive "approved"; branch B:
    parallel("inner", [wait 0.5 s, wait 0.7 s]) then task "after"])``: "after" never runs.
    (Map items cannot fan out again, so this needs a parallel step around the inner one.)"""
    sent = trio.Event()
    ran_at: list[float] = []

    async def after(data: Any) -> str:
        ran_at.append(trio.current_time())
        sent.set()
        return "asked"

    wf = _nested(shape, after)
    async with engine_on(storage()) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        iid = await engine.start("nested")

        async def approver() -> None:
            await sent.wait()
            if not shape.startswith("timer"):
                await engine.signal(iid, "approved", "yes")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(approver)
            with trio.move_on_after(60):
                await sent.wait()
            assert ran_at, f"'after' had not run a minute after the inner fan-out ended ({shape})"
            assert ran_at[0] - t0 < 5
            done = await finish(engine, iid, limit=HOUR)
    assert done.status == "completed"


# -- 2. children of a parent that cannot leave memory --------------------------------------------


@pytest.mark.parametrize("max_running", [1, 2])
async def test_a_wait_all_branch_that_failed_does_not_starve_a_siblings_child_of_a_slot(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], max_running: int,
) -> None:
    """Found a deadlock (fixed). A ``wait-all`` parallel step whose branch A failed for
    good keeps the instance in memory until its siblings end (as documented: ``wake_at`` returns
    ``None`` for a lane with ``failed`` set, so ``_may_leave`` never agrees). Its sibling B
    starts a child. The child is no longer run in the parent's slot: ``Children.in_parent_slot``
    (``runtime/_children.py``) and ``Engine._start_child`` ask ``parent.may_park(math.inf)``,
    which now says yes for any instance with several lanes (``actors/_run.py`` ``Run.may_park``
    lost its ``len(self.state.lanes) != 1`` test), whether or not it will ever leave. So the
    child queues for a slot of its own; with every slot held by parents like this one, it never
    gets one, B never ends, and the parent holds its slot for ever.

    Minimal reproduction: ``max_running=1``; ``parallel("p", on_error="wait-all", [branch A:
    fail; branch B: child "kid"])``: never ends (at 759a03f, before the change: fails with
    ParallelError at once).
    With ``max_running=2``, two such parents deadlock the same way."""

    async def work(data: Any) -> str:
        await trio.sleep(5)
        return "kid"

    kid = tf.workflow("kid").task("work", job=work).build()
    wf = tf.workflow("w").parallel("p", on_error="wait-all", branches=[
        tf.branch("A").fail("f", error="Boom").build(),
        tf.branch("B").child("c", workflow="kid").build(),
    ]).build()
    async with engine_on(storage(), max_running=max_running) as engine:
        engine.register(kid)
        engine.register(wf)
        parents = [await engine.start("w") for _ in range(max_running)]
        ended: list[tf.WorkflowInstance] = []
        with trio.move_on_after(3 * HOUR):
            for iid in parents:
                ended.append(await finish(engine, iid))
        assert len(ended) == len(parents), \
            "deadlock: parents with a failed wait-all branch hold every slot; their children queue for ever"
    assert all(done.status == "failed" and "Boom" in (done.error or "") for done in ended)


class _Concurrency:
    """How many instances execute a job at once (at most), sampled in the jobs themselves."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def job(self, seconds: float, result: Callable[[Any], Any]) -> Any:
        async def job(data: Any) -> Any:
            self.now += 1
            self.most = max(self.most, self.now)
            try:
                await trio.sleep(seconds)
            finally:
                self.now -= 1
            return result(data)
        return job


@pytest.mark.parametrize("max_running", [1, 2])
async def test_fanning_out_parents_and_their_children_share_a_small_max_running(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], max_running: int,
) -> None:
    """Three parents, each a parallel step of a map of children and a child that is itself a
    map of grandchildren, plus a branch with a retry delay: no deadlock, every one completes,
    and never more instances execute jobs at once than ``max_running``."""
    seen = _Concurrency()
    grandkid = tf.workflow("gk").task("g", job=seen.job(7, lambda n: n * 2)).build()
    kid = tf.workflow("kid").task("k", job=seen.job(3, lambda n: n)).build()
    mid = tf.workflow("mid").map("mm", items=lambda ctx: [ctx.input, ctx.input + 1],
                                 branch=tf.branch("mi").child("mc", workflow="gk").build()).build()
    attempts: collections.Counter[int] = collections.Counter()

    async def flaky(n: int) -> str:
        attempts[n] += 1
        if attempts[n] < 2:
            raise ValueError("not yet")
        return "ok"

    parent = tf.workflow("parent").parallel("p", branches=[
        tf.branch("x").map("xm", items=lambda ctx: [ctx.input + i for i in range(3)], max_concurrency=2,
                           branch=tf.branch("xi").child("xc", workflow="kid").build()).build(),
        tf.branch("y").child("yc", workflow="mid", input=lambda ctx: ctx.input * 10).build(),
        tf.branch("z").task("flaky", job=flaky, retry=tf.Retry(max_attempts=2, interval=30)).build(),
    ]).build()
    async with engine_on(storage(), max_running=max_running) as engine:
        for definition in (grandkid, kid, mid, parent):
            engine.register(definition)
        iids = [await engine.start("parent", n) for n in (1, 2, 3)]
        outcomes = [await finish(engine, iid, limit=10 * HOUR) for iid in iids]
        views = [await engine.get_instance(iid) for iid in iids]
    for n, done in zip((1, 2, 3), outcomes):
        assert done.status == "completed", done.error
        assert done.output == {"x": [n, n + 1, n + 2], "y": [n * 20, (n * 10 + 1) * 2], "z": "ok"}
    for view in views:
        assert view is not None and len(view.children) == len(set(view.children)) == 4
    assert seen.most <= max_running


# -- 3. signals at every moment around the park decision -----------------------------------------


def three_lanes() -> tf.WorkflowDefinition:
    """A and B rest at once; C rests last (after a short wait), so C is the lane that settles."""
    return tf.workflow("w").parallel("p", branches=[
        tf.branch("A").receive("ra", signal="a").build(),
        tf.branch("B").receive("rb", signal="b").build(),
        tf.branch("C").wait("short", seconds=0.5).receive("rc", signal="c").build(),
    ]).build()


async def _send_all(engine: tf.Engine, iid: str, names: str) -> None:
    await trio.sleep(10)
    for name in names:
        await engine.signal(iid, name, name + "1")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("names", ["a", "c", "ac", "abc"])
async def test_signals_sent_at_every_moment_around_parking_are_each_taken_once(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str, names: str,
) -> None:
    """Signals for a lane that is not the one settling ("a"), for the settling lane ("c"), and
    for several lanes in the same scheduler pass, sent a moment before the park decision, in
    its very pass (0..N checkpoints later: while the lanes unwind, while the run ends, once it
    is parked): each is taken exactly once, by the lane that waits for it, and none is left
    stored with the instance waiting for ever."""
    fresh = adapters(kind, tmp_path)
    park = (await park_times(three_lanes(), fresh(), lambda e, i: _send_all(e, i, "abc"), monkeypatch))[0]
    bad: list[Any] = []
    spins_range = range(0, 24) if kind == "memory" else range(0, 6)
    for offset in (-0.01, 0.0, 0.001):
        for spins in spins_range:
            async with engine_on(fresh()()) as engine:
                engine.register(three_lanes())
                t0 = trio.current_time()
                iid = await engine.start("w")
                await trio.sleep_until(t0 + park + offset)
                for _ in range(spins):
                    await trio.lowlevel.checkpoint()
                async with trio.open_nursery() as nursery:  # in the same pass
                    for name in names:
                        nursery.start_soon(engine.signal, iid, name, name + "1")
                await trio.sleep(5)
                for name in "abc":
                    if name not in names:
                        await engine.signal(iid, name, name + "1")
                try:
                    done = await finish(engine, iid, limit=HOUR)
                except trio.TooSlowError:
                    bad.append((offset, spins, "stranded"))
                    continue
                taken = sorted(r.output for r in done.history
                               if r.step_name.startswith("r") and r.status == "completed")
                if done.status != "completed" or done.output != {"A": "a1", "B": "b1", "C": "c1"} \
                        or taken != ["a1", "b1", "c1"]:
                    bad.append((offset, spins, done.status, done.output, taken))
    assert bad == []


async def test_one_signal_for_two_lanes_waiting_on_its_name_is_taken_once_and_the_other_rests_again(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """Two branches wait for "x"; the first "x" wakes both (one event per name): one takes it,
    the other rests again, and the instance leaves memory again; the second "x" completes it.
    Sent at a spread of moments around the park decision."""
    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch("A").receive("ra", signal="x").build(),
        tf.branch("B").receive("rb", signal="x").build(),
        tf.branch("C").wait("tc", seconds=HOUR).build(),
    ]).build()
    for at in (0.5, 1.03, 1.04, 1.05, 3.0):
        async with engine_on(storage()) as engine:
            engine.register(wf)
            t0 = trio.current_time()
            iid = await engine.start("w")
            await trio.sleep_until(t0 + at)
            await engine.signal(iid, "x", 1)
            await trio.sleep(10)
            assert not in_memory(engine, iid), at
            await engine.signal(iid, "x", 2)
            done = await finish(engine, iid)
        assert done.status == "completed"
        assert sorted([done.output["A"], done.output["B"]]) == [1, 2], at


# -- 4. cancel() and the workflow timeout around parking -----------------------------------------

undone: list[str] = []


async def undo(output: str) -> None:
    undone.append(output)


def compensable_lanes(timeout: float | None = None) -> tf.WorkflowDefinition:
    builder = tf.workflow("w") if timeout is None else tf.workflow("w").with_timeout(timeout)
    return builder.parallel("p", branches=[
        tf.branch("A").task("da", job=returning("a"), compensate=undo).receive("ra", signal="a").build(),
        tf.branch("B").task("db", job=returning("b"), compensate=undo).wait("tb", seconds=HOUR).build(),
        tf.branch("C").task("dc", job=returning("c"), compensate=undo).wait("short", seconds=0.5)
        .receive("rc", signal="c").build(),
    ]).build()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_cancel_at_every_moment_around_parking_ends_cancelled_and_compensates_once(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str,
) -> None:
    fresh = adapters(kind, tmp_path)

    async def cancel_later(engine: tf.Engine, iid: str) -> None:
        await trio.sleep(10)
        await engine.cancel(iid)

    undone.clear()
    park = (await park_times(compensable_lanes(), fresh(), cancel_later, monkeypatch))[0]
    bad: list[Any] = []
    for offset in (-0.5, -0.01, 0.0, 0.001):
        for spins in range(0, 24 if kind == "memory" else 6):
            undone.clear()
            async with engine_on(fresh()()) as engine:
                engine.register(compensable_lanes())
                t0 = trio.current_time()
                iid = await engine.start("w")
                await trio.sleep_until(t0 + park + offset)
                for _ in range(spins):
                    await trio.lowlevel.checkpoint()
                said = await engine.cancel(iid)
                try:
                    done = await finish(engine, iid, limit=HOUR)
                except trio.TooSlowError:
                    bad.append((offset, spins, "hung"))
                    continue
                if not said or done.status != "cancelled" or sorted(undone) != ["a", "b", "c"]:
                    bad.append((offset, spins, said, done.status, list(undone)))
    assert bad == []


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_the_workflow_timeout_at_every_moment_around_parking(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str,
) -> None:
    """Timeouts from 1 s (before anything rests) through the settling (C rests at 0.5 s, the
    park decision comes at 1.54 s) to well after it: timed out at its deadline, each completed
    step compensated once."""
    fresh = adapters(kind, tmp_path)
    bad: list[Any] = []
    for i in range(0, 60 if kind == "memory" else 20):
        timeout = 1.0 + i * (0.05 if kind == "memory" else 0.15)
        undone.clear()
        async with engine_on(fresh()()) as engine:
            engine.register(compensable_lanes(timeout))
            t0 = trio.current_time()
            iid = await engine.start("w")
            try:
                done = await finish(engine, iid, limit=HOUR)
            except trio.TooSlowError:
                bad.append((timeout, "hung"))
                continue
            took = trio.current_time() - t0
        if done.status != "timed_out" or sorted(undone) != ["a", "b", "c"] or not timeout - 0.01 <= took <= timeout + 1:
            bad.append((timeout, done.status, list(undone), took))
    assert bad == []


# -- 5. engine close and reopen at every moment --------------------------------------------------

calls: list[str] = []


def doing(name: str) -> Any:
    async def job(data: Any) -> str:
        calls.append(name)
        return name
    return job


def lanes_with_work() -> tf.WorkflowDefinition:
    return tf.workflow("w").parallel("p", branches=[
        tf.branch("A").task("da", job=doing("da")).receive("ra", signal="a").task("ea", job=doing("ea")).build(),
        tf.branch("B").task("db", job=doing("db")).wait("tb", seconds=2 * HOUR).task("eb", job=doing("eb")).build(),
        tf.branch("C").task("dc", job=doing("dc")).wait("short", seconds=0.5).receive("rc", signal="c")
        .task("ec", job=doing("ec")).build(),
    ]).build()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_engine_closed_at_every_moment_around_parking_resumes_as_without(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str,
) -> None:
    """The engine closes a moment before, in the pass of, and scheduler passes after the park
    decision (a signal sent just before it closes, or after the next engine opens): the next
    engine ends the instance as if nothing had happened, each step run once, each signal taken
    once."""
    fresh = adapters(kind, tmp_path)
    bad: list[Any] = []
    for offset in (-0.01, 0.0, 0.001):
        for spins in range(0, 16 if kind == "memory" else 4):
            for signal_first in (False, True):
                calls.clear()
                make = fresh()
                async with engine_on(make()) as engine:
                    engine.register(lanes_with_work())
                    t0 = trio.current_time()
                    iid = await engine.start("w")
                    await trio.sleep_until(t0 + 1.54 + offset)
                    for _ in range(spins):
                        await trio.lowlevel.checkpoint()
                    if signal_first:
                        await engine.signal(iid, "a", "A1")
                async with engine_on(make()) as engine:
                    engine.register(lanes_with_work())
                    if not signal_first:
                        await engine.signal(iid, "a", "A1")
                    await trio.sleep(3)
                    await engine.signal(iid, "c", "C1")
                    try:
                        done = await finish(engine, iid, limit=5 * HOUR)
                    except trio.TooSlowError:
                        bad.append((offset, spins, signal_first, "hung"))
                        continue
                taken = sorted(r.output for r in done.history
                               if r.step_name in ("ra", "rc") and r.status == "completed")
                if done.status != "completed" or done.output != {"A": "ea", "B": "eb", "C": "ec"} \
                        or taken != ["A1", "C1"] or sorted(calls) != ["da", "db", "dc", "ea", "eb", "ec"]:
                    bad.append((offset, spins, signal_first, done.status, taken, sorted(calls)))
    assert bad == []


def crash_kid() -> tf.WorkflowDefinition:
    return (tf.workflow("kid")
            .task("k", job=ScriptedJob(Returns(value="k")), compensate=ScriptedJob(Returns(value=None)))
            .wait("kw", seconds=2 * HOUR)
            .build())


def crash_parallel() -> tf.WorkflowDefinition:
    return tf.workflow("cp").parallel("p", branches=[
        tf.branch("A").task("da", job=ScriptedJob(Returns(value="a")), compensate=ScriptedJob(Returns(value=None)))
        .wait("ta", seconds=HOUR).receive("ra", signal="go").build(),
        tf.branch("B").child("cb", workflow="kid").build(),
        tf.branch("C").task("flaky",
                            job=ScriptedJob(Raises(error=ValueError, message="no", times=2), Returns(value="c")),
                            retry=tf.Retry(max_attempts=3, interval=HOUR, max_interval=HOUR)).build(),
        tf.branch("D").receive("rd", signal="go").wait("td", seconds=3 * HOUR).build(),
    ]).build()


def crash_map(count: int) -> tf.WorkflowDefinition:
    """Items that rest on a timer, a child and a signal, ``count - 1`` at a time (their times
    differ, so which item takes which signal is the same in every run)."""
    return tf.workflow("cm").map(
        "m", items=lambda ctx: list(range(count)), max_concurrency=count - 1,
        branch=tf.branch("it").wait("ti", seconds=lambda ctx: HOUR + 60 * ctx.item).child("ci", workflow="kid")
        .receive("ri", signal="go").build(),
    ).build()


def crash_nested() -> tf.WorkflowDefinition:
    return tf.workflow("cn").parallel("outer", branches=[
        tf.branch("A").task("da", job=ScriptedJob(Returns(value="a")), compensate=ScriptedJob(Returns(value=None)))
        .receive("ra", signal="go").build(),
        tf.branch("B").parallel("inner", branches=[
            tf.branch("b1").wait("t1", seconds=2 * HOUR).pass_("p1", result=1).build(),
            tf.branch("b2").receive("r2", signal="go").build(),
        ]).wait("tb", seconds=HOUR).build(),
    ]).build()


@pytest.mark.parametrize("which", ["parallel", "map", "nested"])
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_crash_at_every_write_of_a_resting_fanout_ends_as_without(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, which: str, kind: str,
) -> None:
    counter = itertools.count()
    factory: Any = MemoryAdapter if kind == "memory" else (lambda: SQLiteAdapter(tmp_path / f"{next(counter)}.db"))
    items = 3 if kind == "memory" else 2
    workflow, signals = {
        "parallel": (crash_parallel(), [("go", 1), ("go", 2)]),
        # (Fewer items on SQLite: each crash point's run takes real time there.)
        "map": (crash_map(items), [("go", i) for i in range(1, items + 1)]),
        "nested": (crash_nested(), [("go", 1), ("go", 2)]),
    }[which]
    report = await explore_crashes(workflow, signals=signals, also=[crash_kid()], adapter_factory=factory, check=False)
    assert report.baseline.status == "completed"
    if which == "map":
        assert report.baseline.output == list(range(1, items + 1))
    assert len(report.points) >= 10
    assert [(p.write, p.after, p.lost, p.divergence) for p in report.divergent] == []


# -- 6. maps with max_concurrency, failures while siblings rest -----------------------------------


async def test_a_map_with_queued_items_parks_between_rounds_and_goes_on(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    wf = tf.workflow("w").map(
        "m", items=lambda ctx: list(range(6)), max_concurrency=2,
        branch=tf.branch("it").wait("t", seconds=HOUR).pass_("o", transform=lambda ctx: ctx.item).build(),
    ).build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        iid = await engine.start("w")
        out = []
        for k in range(1, 4):
            await trio.sleep_until(t0 + k * HOUR - 60)
            out.append(in_memory(engine, iid))
        done = await finish(engine, iid)
        took = trio.current_time() - t0
    assert done.status == "completed" and done.output == list(range(6))
    assert out == [False, False, False]
    assert 3 * HOUR <= took <= 3 * HOUR + 30


async def test_a_map_whose_queued_items_wait_for_signals_sent_ahead_takes_each_once(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    wf = tf.workflow("w").map(
        "m", items=lambda ctx: list(range(5)), max_concurrency=2,
        branch=tf.branch("it").receive("r", signal="go").wait("t", seconds=2).build(),
    ).build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(10)
        assert not in_memory(engine, iid)
        for i in range(5):
            await engine.signal(iid, "go", i)
            await trio.sleep(0.3 * i)
        done = await finish(engine, iid, limit=HOUR)
    assert done.status == "completed"
    assert sorted(done.output) == list(range(5))


async def test_a_fail_fast_failure_after_a_park_cancels_the_resting_siblings_and_compensates(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    undone.clear()
    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch("A").task("da", job=returning("a"), compensate=undo).wait("ta", seconds=HOUR).build(),
        tf.branch("B").task("db", job=returning("b"), compensate=undo).receive("rb", signal="never").build(),
        tf.branch("C").wait("tc", seconds=60).fail("boom", error="Boom").build(),
    ]).build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        iid = await engine.start("w")
        await trio.sleep(10)
        assert not in_memory(engine, iid)
        done = await finish(engine, iid)
        took = trio.current_time() - t0
    assert done.status == "failed" and done.error_name == "Boom"
    assert sorted(undone) == ["a", "b"]
    assert 60 <= took <= 70


async def test_a_wait_all_failure_keeps_the_instance_until_the_resting_siblings_end(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    undone.clear()
    wf = tf.workflow("w").parallel("p", on_error="wait-all", branches=[
        tf.branch("A").task("da", job=returning("a"), compensate=undo).wait("ta", seconds=HOUR).build(),
        tf.branch("B").task("db", job=returning("b"), compensate=undo).receive("rb", signal="go").build(),
        tf.branch("C").fail("boom", error="Boom").build(),
    ]).build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(30)
        await engine.signal(iid, "go", 1)
        done = await finish(engine, iid)
    assert done.status == "failed"
    assert sorted(undone) == ["a", "b"]
    taken = [r.output for r in done.history if r.step_name == "rb"]
    assert taken == [1]


async def test_tolerated_item_failures_let_the_resting_items_park(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    async def boom(item: Any) -> Any:
        if item == 0:
            raise ValueError("item 0 fails")
        return item

    wf = tf.workflow("w").map(
        "m", items=lambda ctx: [0, 1, 2], tolerated_failures=1,
        branch=tf.branch("it").task("t", job=boom, input=lambda ctx: ctx.item).wait("w1", seconds=HOUR).build(),
    ).build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(10)
        assert not in_memory(engine, iid)
        done = await finish(engine, iid)
    assert done.status == "completed"
    assert done.output == [{"error": "ValueError", "cause": "item 0 fails"}, 1, 2]


# -- 7. many children ending one at a time ------------------------------------------------------


class _CountingMemory(MemoryAdapter):
    """A MemoryAdapter that counts the calls of the round trips a wake makes per lane."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    async def create(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["create"] += 1
        return await super().create(*args, **kwargs)

    async def load(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["load"] += 1
        return await super().load(*args, **kwargs)

    async def signals(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["signals"] += 1
        return await super().signals(*args, **kwargs)


async def test_a_map_of_200_children_ending_one_at_a_time_completes_without_quadratic_storage_traffic(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Found a defect of cost (fixed): all 200 items complete, no child is started twice
    (``children`` and every child's history say so); but each child's end (every 5 s, longer
    than the 1 s + 10 ms/lane the parent stays at rest) wakes the parent, and each wake
    restarts every still-open item, whose child step (``actors/_child.py`` ``run_child``, the
    ``else`` branch: taken up again) calls ``_store_child`` -> ``Engine._start`` for its child
    again: an ``adapter.create`` (refused: it exists), an ``adapter.load`` of the child and,
    for a resumed parent, an ``adapter.signals`` of the parent (``_ended_before``), every time,
    though the child was known stored long before (the lane's ``check`` was dropped on the
    first wake). 200 children -> ~20,000 of each (n^2/2: 20,101 creates, 20,301 loads, 19,901
    signal reads) instead of ~n; at 759a03f, before the change (the parent stayed in memory),
    201 creates, 1 load, 1 signal read. On SQLite the same run takes ~7 s of real time against 0.4 s before; a map of
    10,000 children ending one at a time would make ~150 million storage round trips.
    Minimal reproduction: this test (count the adapter's ``create`` calls)."""
    n = 200
    child = (tf.workflow("kid").wait("kw", seconds=lambda ctx: 5 + 5 * ctx.input)
             .pass_("out", transform=lambda ctx: ctx.input).build())
    parent = tf.workflow("parent").map("m", items=lambda ctx: list(range(n)),
                                       branch=tf.branch("it").child("c", workflow="kid").build()).build()
    adapter = _CountingMemory()
    async with engine_on(adapter) as engine:
        engine.register(child)
        engine.register(parent)
        iid = await engine.start("parent")
        done = await finish(engine, iid)
        view = await engine.get_instance(iid)
        kids = [await engine.get_instance(kid) for kid in view.children] if view is not None else []
    assert done.status == "completed" and done.output == list(range(n))
    assert view is not None and len(view.children) == len(set(view.children)) == n
    assert all(k is not None and k.status == "completed" for k in kids)
    assert all(sum(1 for r in k.history if r.step_name == "kw") == 1 for k in kids if k is not None)
    per_child = {name: count / n for name, count in adapter.calls.items()}
    assert all(count <= 10 for count in per_child.values()), f"storage calls per child: {per_child}"


# -- 8. generated fan-outs with random signal times ----------------------------------------------

WAITS = (0.5, 1.5, 30.0, 3600.0)
NAMES = ("x", "y")
AT = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 31.0, 32.0, 3601.0, 3602.5)
KID = tf.workflow("kid").wait("kw", seconds=lambda ctx: ctx.input).pass_("ko", result="k").build()


@st.composite
def fanouts(draw: st.DrawFn) -> dict[str, Any]:
    """Branches (or a map's item branch) of waits, receives and children; how many signals of
    each name to send (one per receive), when, after how many extra scheduler passes; an engine
    restart at some moment or none; max_running and a map's max_concurrency."""
    step = st.one_of(
        st.tuples(st.just("wait"), st.sampled_from(WAITS)),
        st.tuples(st.just("recv"), st.sampled_from(NAMES)),
        st.tuples(st.just("child"), st.sampled_from((0.0, 2.0, 40.0))),
    )
    shape = draw(st.sampled_from(("parallel", "map")))
    branches = draw(st.lists(st.lists(step, min_size=1, max_size=3), min_size=1 if shape == "map" else 2,
                             max_size=1 if shape == "map" else 4))
    items = draw(st.integers(1, 4)) if shape == "map" else 0
    copies = items or 1
    receives = {name: copies * sum(1 for b in branches for k, v in b if k == "recv" and v == name) for name in NAMES}
    sends = [(name, draw(st.sampled_from(AT)), draw(st.integers(0, 12)))
             for name in NAMES for _ in range(receives[name])]
    return {
        "branches": branches, "items": items, "sends": sends,
        "restart": draw(st.one_of(st.none(), st.sampled_from((0.5, 1.51, 2.0, 2.54, 3.0, 33.0)))),
        "max_running": draw(st.sampled_from((None, 1, 2))),
        "max_concurrency": draw(st.sampled_from((None, 1, 2))),
    }


def generated(plan: dict[str, Any]) -> tf.WorkflowDefinition:
    built = []
    for b, steps in enumerate(plan["branches"]):
        branch = tf.branch(f"b{b}")
        for s, (kind, value) in enumerate(steps):
            if kind == "wait":
                branch = branch.wait(f"w{b}_{s}", seconds=value)
            elif kind == "child":
                branch = branch.child(f"c{b}_{s}", workflow="kid", input=lambda ctx, v=value: v)
            else:
                branch = branch.receive(f"r{b}_{s}", signal=value)
        built.append(branch.build())
    if plan["items"]:
        return tf.workflow("g").map("m", items=lambda ctx: list(range(plan["items"])),
                                    max_concurrency=plan["max_concurrency"], branch=built[0]).build()
    return tf.workflow("g").parallel("p", branches=built).build()


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(fanouts())
def test_generated_fanouts_take_every_signal_once_in_order_whenever_it_comes(plan: dict[str, Any]) -> None:
    workflow = generated(plan)
    sends = plan["sends"]
    options = {} if plan["max_running"] is None else {"max_running": plan["max_running"]}
    storage_ = MemoryAdapter()

    async def main() -> tuple[tf.WorkflowInstance, dict[str, list[str]]]:
        sent: dict[str, list[str]] = {name: [] for name in NAMES}
        pending = sorted(range(len(sends)), key=lambda i: (sends[i][1], i))
        t0 = trio.current_time()

        async def sender(engine: tf.Engine, iid: str) -> None:
            while pending:
                name, at, spins = sends[pending[0]]
                await trio.sleep_until(t0 + at)
                for _ in range(spins):
                    await trio.lowlevel.checkpoint()
                payload = f"{name}{len(sent[name])}"
                with trio.CancelScope(shield=True):  # sent, or not sent: never twice
                    await engine.signal(iid, name, payload)
                    sent[name].append(payload)
                    pending.pop(0)

        async with open_test_engine(adapter=storage_, clock=virtual_wall_clock(), **options) as engine:
            engine.register(KID)
            engine.register(workflow)
            iid = await engine.start("g")
            if plan["restart"] is None:
                await sender(engine, iid)
                with trio.fail_after(10**5):
                    return await engine.wait(iid), sent
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender, engine, iid)
                await trio.sleep_until(t0 + plan["restart"])
                nursery.cancel_scope.cancel()
        async with open_test_engine(adapter=storage_, clock=virtual_wall_clock(), **options) as engine:
            engine.register(KID)
            engine.register(workflow)
            await sender(engine, iid)
            with trio.fail_after(10**5):
                return await engine.wait(iid), sent

    done, sent = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert done.status == "completed", (done.status, done.error)
    received = [r for r in done.history if r.step_name.startswith("r") and r.status == "completed"]
    assert sorted(r.output for r in received) == sorted(p for ps in sent.values() for p in ps)
    by_lane: dict[str, list[str]] = {}
    for record in received:
        by_lane.setdefault(record.lane, []).append(record.output)
    for outputs in by_lane.values():  # first in, first out, for each name, within a lane
        for name in NAMES:
            order = [int(p[1:]) for p in outputs if p[0] == name]
            assert order == sorted(order), by_lane
