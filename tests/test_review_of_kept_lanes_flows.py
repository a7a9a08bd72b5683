"""Review of 3e3017c (a wide fan-out's header kept lane by lane): wide instances run through
every way a lane moves, on a test engine, with every kept header checked against a walk over
every lane (tests/conftest.py turns ``CHECK_KEPT`` on: a divergence fails the instance with an
internal error). Each test asserts what a user relies on: the instance ends as it should, with
the right output, each step run the expected number of times, across restarts and while the
instance leaves memory and is woken.

Each runs with entries kept from two lanes on (the suite's setting) and at the threshold a
user gets (``WIDE`` 32, every fan-out here has more than 32 lanes in flight).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from storages import finish
from trioflow import _header_lanes
from trioflow._codec import decode
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock

N = 36  # (lanes in flight: above WIDE's 32)


class Declined(Exception):
    pass


@pytest.fixture(params=[2, 32], ids=["wide-from-2", "wide-from-32"])
def wide_from(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(_header_lanes, "WIDE", request.param)
    monkeypatch.setattr(_header_lanes, "CHECK_KEPT", True)
    return int(request.param)


@pytest.fixture(params=["memory", "sqlite"])
def adapters(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Adapter]:
    if request.param == "memory":
        memory = MemoryAdapter()
        return lambda: memory
    return lambda: SQLiteAdapter(tmp_path / "flows.db")


class KeptCount:
    """Counts the wide headers written (so that a test knows the kept path ran at all)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from trioflow import _codec
        self.wide = 0
        real = _codec._encode_wide_header

        def counted(state: Any) -> bytes:
            self.wide += 1
            return real(state)

        monkeypatch.setattr(_codec, "_encode_wide_header", counted)


async def _engine_run(adapter: Adapter, wfs: list[tf.WorkflowDefinition], body: Callable[[tf.Engine], Any]) -> Any:
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        for wf in wfs:
            engine.register(wf)
        return await body(engine)


# -- retries whose delay is stored, in every branch, with a restart during the delays ----------

async def test_a_wide_parallel_of_retried_steps_restarted_during_the_delays_tries_each_three_times(
        autojump_clock: trio.testing.MockClock, wide_from: int, adapters: Callable[[], Adapter],
        monkeypatch: pytest.MonkeyPatch) -> None:
    kept = KeptCount(monkeypatch)
    calls: Counter[int] = Counter()

    def flaky(i: int) -> Any:
        async def step(ctx: tf.WorkflowContext) -> int:
            calls[i] += 1
            await trio.sleep(0.1 * (i % 5))
            if calls[i] < 3:
                raise Declined(f"b{i} attempt {calls[i]}")
            return i
        return step

    wf = tf.workflow("retries").parallel("p", branches=[
        tf.branch(f"b{i}").step(f"try{i}", flaky(i), retry=tf.Retry(max_attempts=3, interval=20, max_interval=60))
        .pass_(f"after{i}", result="ok").build()
        for i in range(N)]).build()

    async def first(engine: tf.Engine) -> str:
        iid = await engine.start("retries")
        await trio.sleep(5)  # every branch failed once and waits out its 20 s delay
        return iid

    iid = await _engine_run(adapters(), [wf], first)
    assert all(calls[i] == 1 for i in range(N))

    async def second(engine: tf.Engine) -> tf.WorkflowInstance:
        return await finish(engine, iid)

    done = await _engine_run(adapters(), [wf], second)
    assert done.status == "completed", done.error
    assert done.output == {f"b{i}": "ok" for i in range(N)}
    assert calls == {i: 3 for i in range(N)}
    assert kept.wide > 0


# -- a wide map of timers leaving memory, restarted, woken ------------------------------------

def _timer_map(ran: Counter[str]) -> tf.WorkflowDefinition:
    async def before(ctx: tf.WorkflowContext) -> int:
        ran[f"before{ctx.item}"] += 1
        await trio.sleep(ctx.item_index % 3)
        return int(ctx.item)

    async def after(ctx: tf.WorkflowContext) -> int:
        ran[f"after{ctx.item}"] += 1
        return int(ctx.steps["before"]) * 10

    item = (tf.branch("item").step("before", before)
            .wait("nap", seconds=lambda ctx: 3_600 + 60 * ctx.item_index)
            .step("after", after).build())
    return tf.workflow("naps").map("each", items=lambda ctx: ctx.input, branch=item).build()


async def test_a_wide_map_of_timers_leaves_memory_is_restarted_and_woken_running_each_step_once(
        autojump_clock: trio.testing.MockClock, wide_from: int, adapters: Callable[[], Adapter]) -> None:
    ran: Counter[str] = Counter()
    wf = _timer_map(ran)

    async def first(engine: tf.Engine) -> tuple[str, bool]:
        iid = await engine.start("naps", list(range(N)))
        await trio.sleep(600)  # every item waits its hour, and the instance rests out of memory
        return iid, iid not in engine._live

    iid, parked = await _engine_run(adapters(), [wf], first)
    assert parked

    async def second(engine: tf.Engine) -> tf.WorkflowInstance:
        await trio.sleep(3_600 + 60 * (N // 2))  # half the items woke (the instance is taken up)
        return await finish(engine, iid)

    done = await _engine_run(adapters(), [wf], second)
    assert done.status == "completed", done.error
    assert done.output == [i * 10 for i in range(N)]
    assert ran == Counter({**{f"before{i}": 1 for i in range(N)}, **{f"after{i}": 1 for i in range(N)}})


# -- a wide map of receives, woken by one signal at a time -----------------------------------

async def test_a_wide_map_of_receives_woken_one_signal_at_a_time_takes_each_signal_once(
        autojump_clock: trio.testing.MockClock, wide_from: int) -> None:
    item = (tf.branch("item").pass_("first", transform=lambda ctx: ctx.item)
            .receive("go", signal="go").build())
    wf = tf.workflow("receives").map("each", items=lambda ctx: ctx.input, branch=item).build()
    adapter = MemoryAdapter()

    async def body(engine: tf.Engine) -> tf.WorkflowInstance:
        iid = await engine.start("receives", list(range(N)))
        for k in range(N):
            await trio.sleep(30)  # long enough for the instance to leave memory between signals
            await engine.signal(iid, "go", k)
            if k == N // 2:
                break
        return iid

    iid = await _engine_run(adapter, [wf], body)

    async def rest(engine: tf.Engine) -> tf.WorkflowInstance:
        for k in range(N // 2 + 1, N):
            await trio.sleep(30)
            await engine.signal(iid, "go", k)
        return await finish(engine, iid)

    done = await _engine_run(adapter, [wf], rest)
    assert done.status == "completed", done.error
    assert sorted(done.output) == list(range(N))


# -- nested fan-outs: a map whose branch holds a parallel step, and a map of maps ---------------

def _map_of_parallels(ran: Counter[str]) -> tf.WorkflowDefinition:
    def check(name: str) -> Any:
        async def step(ctx: tf.WorkflowContext) -> str:
            await trio.sleep(1 + (ctx.item_index * 7 + len(name)) % 11)
            ran[f"{name}{ctx.item}"] += 1  # (counted as it ends: one cut short by the stop runs again)
            return f"{name}-{ctx.item}"
        return step

    item = (tf.branch("item")
            .parallel("checks", branches=[tf.branch("fraud").step("fraud", check("fraud")).build(),
                                          tf.branch("stock").step("stock", check("stock"))
                                          .wait("settle", seconds=3).build()])
            .pass_("both", transform=lambda ctx: sorted(ctx.steps["checks"].values())).build())
    return tf.workflow("nested").map("orders", items=lambda ctx: ctx.input, branch=item).build()


async def test_a_wide_map_of_parallel_steps_restarted_halfway_runs_each_check_once(
        autojump_clock: trio.testing.MockClock, wide_from: int, adapters: Callable[[], Adapter]) -> None:
    ran: Counter[str] = Counter()
    wf = _map_of_parallels(ran)
    count = 20  # (20 items and 40 branches in flight)

    async def first(engine: tf.Engine) -> str:
        iid = await engine.start("nested", list(range(count)))
        await trio.sleep(5.5)
        return iid

    iid = await _engine_run(adapters(), [wf], first)
    assert 0 < sum(ran.values()) <= 2 * count

    done = await _engine_run(adapters(), [wf], lambda engine: finish(engine, iid))
    assert done.status == "completed", done.error
    assert done.output == [[f"fraud-{i}", f"stock-{i}"] for i in range(count)]
    assert set(ran.values()) == {1} and len(ran) == 2 * count


def _map_of_maps(ran: Counter[str], *, fail: Any = None, tolerated: int = 0) -> tf.WorkflowDefinition:
    async def line(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1 + int(ctx.item.rpartition(".")[2]) + int(ctx.item[1:].partition(".")[0]) % 3)
        ran[f"{ctx.steps['label']}/{ctx.item}"] += 1  # (counted as it ends)
        if fail is not None and fail(ctx.item):
            raise Declined(f"line {ctx.item}")
        return f"{ctx.steps['label']}/{ctx.item}"

    async def release(ctx: tf.WorkflowContext, held: str) -> None:
        ran[f"release {held}"] += 1

    lines = tf.branch("line").step("reserve", line, release).wait("cool", seconds=2).build()
    order = (tf.branch("order").pass_("label", transform=lambda ctx: ctx.item["label"])
             .map("lines", items=lambda ctx: ctx.item["lines"], branch=lines).build())
    return tf.workflow("orders").map("each", items=lambda ctx: ctx.input, branch=order,
                                     tolerated_failures=tolerated).build()


ORDERS = [{"label": f"o{i}", "lines": [f"l{i}.{j}" for j in range(3)]} for i in range(14)]


async def test_a_wide_map_of_maps_restarted_halfway_reserves_each_line_once(
        autojump_clock: trio.testing.MockClock, wide_from: int, adapters: Callable[[], Adapter]) -> None:
    ran: Counter[str] = Counter()
    wf = _map_of_maps(ran)

    async def first(engine: tf.Engine) -> str:
        iid = await engine.start("orders", ORDERS)
        await trio.sleep(3.5)
        return iid

    iid = await _engine_run(adapters(), [wf], first)
    done = await _engine_run(adapters(), [wf], lambda engine: finish(engine, iid))
    assert done.status == "completed", done.error
    assert done.output == [[f"o{i}/l{i}.{j}" for j in range(3)] for i in range(14)]
    assert ran == Counter({f"o{i}/l{i}.{j}": 1 for i in range(14) for j in range(3)})


async def test_a_wide_map_of_maps_with_a_tolerated_failed_order_drops_its_lines_and_completes(
        autojump_clock: trio.testing.MockClock, wide_from: int) -> None:
    ran: Counter[str] = Counter()
    wf = _map_of_maps(ran, fail=lambda item: item == "l3.1", tolerated=1)
    done = await _engine_run(MemoryAdapter(), [wf], lambda engine: _start_and_finish(engine, "orders", ORDERS))
    assert done.status == "completed", done.error
    assert done.output[3] == {"error": "Declined", "cause": "line l3.1"}
    assert [done.output[i] for i in range(14) if i != 3] == [[f"o{i}/l{i}.{j}" for j in range(3)]
                                                            for i in range(14) if i != 3]


async def test_a_wide_map_of_maps_that_fails_compensates_every_line_once(
        autojump_clock: trio.testing.MockClock, wide_from: int) -> None:
    ran: Counter[str] = Counter()
    wf = _map_of_maps(ran, fail=lambda item: item == "l9.2")
    done = await _engine_run(MemoryAdapter(), [wf], lambda engine: _start_and_finish(engine, "orders", ORDERS))
    assert done.status == "failed" and done.error_name == "Declined", done.error
    reserved = {key for key in ran if not key.startswith("release")}
    completed = {r.output for r in done.history if r.step_name == "reserve" and r.status in ("completed", "compensated")}
    assert {key.removeprefix("release ") for key in ran if key.startswith("release")} == completed
    assert all(ran[f"release {held}"] == 1 for held in completed)
    assert completed <= reserved


async def _start_and_finish(engine: tf.Engine, name: str, input: Any) -> tf.WorkflowInstance:
    return await finish(engine, await engine.start(name, input))


# -- child steps in the items of a wide map, restarted while the children run -----------------

async def test_a_wide_map_of_child_steps_restarted_while_children_wait_runs_each_child_once(
        autojump_clock: trio.testing.MockClock, wide_from: int, adapters: Callable[[], Adapter]) -> None:
    ran: Counter[int] = Counter()

    async def work(ctx: tf.WorkflowContext) -> int:
        ran[ctx.input] += 1
        return int(ctx.input) * 2

    child = tf.workflow("kid").wait("nap", seconds=lambda ctx: 100 + ctx.input).step("work", work).build()
    item = tf.branch("item").child("spawn", workflow="kid").pass_("seen", transform=lambda ctx: ctx.steps["spawn"]).build()
    wf = tf.workflow("parent").map("each", items=lambda ctx: ctx.input, branch=item).build()

    async def first(engine: tf.Engine) -> str:
        iid = await engine.start("parent", list(range(N)))
        await trio.sleep(100 + N // 2 + 0.5)  # half the children have ended
        return iid

    iid = await _engine_run(adapters(), [wf, child], first)
    done = await _engine_run(adapters(), [wf, child], lambda engine: finish(engine, iid))
    assert done.status == "completed", done.error
    assert done.output == [2 * i for i in range(N)]
    assert ran == Counter({i: 1 for i in range(N)})


# -- compensation, cancel ---------------------------------------------------------------------

async def test_a_wide_parallel_that_fails_late_compensates_each_completed_branch_once(
        autojump_clock: trio.testing.MockClock, wide_from: int) -> None:
    log: list[str] = []

    def reserve(i: int) -> Any:
        async def step(ctx: tf.WorkflowContext) -> str:
            await trio.sleep(1 + i)
            if i == N - 1:
                raise Declined("last branch")
            log.append(f"reserve {i}")
            return f"r{i}"
        return step

    async def release(ctx: tf.WorkflowContext, held: str) -> None:
        log.append(f"release {held[1:]}")

    wf = tf.workflow("saga").parallel("p", branches=[
        tf.branch(f"b{i}").step(f"reserve{i}", reserve(i), release).wait(f"hold{i}", seconds=10_000).build()
        for i in range(N)]).build()
    done = await _engine_run(MemoryAdapter(), [wf], lambda engine: _start_and_finish(engine, "saga", None))
    assert done.status == "failed" and done.error_name == "Declined"
    reserved = [entry.split()[1] for entry in log if entry.startswith("reserve")]
    released = [entry.split()[1] for entry in log if entry.startswith("release")]
    assert sorted(reserved, key=int) == [str(i) for i in range(N - 1)]
    assert released == reserved[::-1]


def _counted_reservations(log: Counter[str]) -> tuple[Any, Any]:
    """A map item's step that reserves its item and its compensation, counted in ``log``."""
    async def reserve(ctx: tf.WorkflowContext) -> str:
        log[f"reserve {ctx.item}"] += 1
        return f"r{ctx.item}"

    async def release(ctx: tf.WorkflowContext, held: str) -> None:
        log[f"release {held}"] += 1

    return reserve, release


async def test_a_wide_map_cancelled_while_out_of_memory_compensates_each_item_once(
        autojump_clock: trio.testing.MockClock, wide_from: int, adapters: Callable[[], Adapter]) -> None:
    log: Counter[str] = Counter()
    reserve, release = _counted_reservations(log)

    item = tf.branch("item").step("reserve", reserve, release).wait("hold", seconds=86_400).build()
    wf = tf.workflow("held").map("each", items=lambda ctx: ctx.input, branch=item).build()

    async def first(engine: tf.Engine) -> tuple[str, bool]:
        iid = await engine.start("held", list(range(N)))
        await trio.sleep(600)
        return iid, iid not in engine._live

    iid, parked = await _engine_run(adapters(), [wf], first)
    assert parked

    async def second(engine: tf.Engine) -> tf.WorkflowInstance:
        await trio.sleep(1)
        await engine.cancel(iid)
        return await finish(engine, iid)

    done = await _engine_run(adapters(), [wf], second)
    assert done.status == "cancelled"
    assert log == Counter({**{f"reserve {i}": 1 for i in range(N)}, **{f"release r{i}": 1 for i in range(N)}})


# -- lanes dropped and added again under the same keys (a loop back into the fan-out) -----------

async def test_a_wide_map_entered_again_through_a_loop_starts_its_items_afresh(
        autojump_clock: trio.testing.MockClock, wide_from: int) -> None:
    ran: Counter[tuple[int, int]] = Counter()

    async def work(ctx: tf.WorkflowContext) -> int:
        ran[(ctx.data["round"], ctx.item)] += 1
        await trio.sleep(ctx.item % 4)
        return int(ctx.item) + ctx.data["round"]

    async def bump(ctx: tf.WorkflowContext) -> int:
        ctx.data["round"] += 1
        return int(ctx.data["round"])

    item = tf.branch("item").step("work", work).wait("beat", seconds=lambda ctx: 1 + ctx.item % 3).build()
    wf = (tf.workflow("loop").with_data({"round": 0})
          .map("each", items=lambda ctx: ctx.input, branch=item, max_concurrency=N - 2)
          .step("bump", bump)
          .choice("again", choices=[tf.when(lambda ctx: ctx.data["round"] < 3, next="each")], default="out")
          .pass_("out", transform=lambda ctx: ctx.steps["each"]).build())
    done = await _engine_run(MemoryAdapter(), [wf], lambda engine: _start_and_finish(engine, "loop", list(range(N))))
    assert done.status == "completed", done.error
    assert done.output == [i + 2 for i in range(N)]
    assert ran == Counter({(r, i): 1 for r in range(3) for i in range(N)})


async def test_a_wide_parallel_caught_and_entered_again_runs_each_round_once(
        autojump_clock: trio.testing.MockClock, wide_from: int) -> None:
    ran: Counter[tuple[int, int]] = Counter()

    def work(i: int) -> Any:
        async def step(ctx: tf.WorkflowContext) -> int:
            ran[(ctx.data["round"], i)] += 1
            await trio.sleep(1 + i % 5)
            if i == 7 and ctx.data["round"] < 2:
                raise Declined("round")
            return i
        return step

    async def bump(ctx: tf.WorkflowContext) -> int:
        ctx.data["round"] += 1
        return int(ctx.data["round"])

    wf = (tf.workflow("retry-round").with_data({"round": 0})
          .parallel("p", branches=[tf.branch(f"b{i}").step(f"w{i}", work(i)).build() for i in range(N)],
                    on_error="wait-all", catch=[tf.Catch(errors=["ParallelError", "Declined"], next="bump")],
                    next="out")
          .step("bump", bump, next="p")
          .pass_("out", transform=lambda ctx: len(ctx.steps["p"])).build())
    done = await _engine_run(MemoryAdapter(), [wf], lambda engine: _start_and_finish(engine, "retry-round", None))
    assert done.status == "completed", done.error
    assert done.output == N
    assert ran == Counter({(r, i): 1 for r in range(3) for i in range(N)})


# -- shared data a running step holds that cannot be stored, while siblings checkpoint ---------

async def test_a_wide_parallel_checkpoints_while_a_branch_holds_unstorable_shared_data(
        autojump_clock: trio.testing.MockClock, wide_from: int) -> None:
    async def holder(ctx: tf.WorkflowContext) -> str:
        ctx.data["conn"] = object()  # (a scratch value: taken out before the step ends)
        await trio.sleep(20)
        del ctx.data["conn"]
        return "held"

    def other(i: int) -> Any:
        async def step(ctx: tf.WorkflowContext) -> int:
            await trio.sleep(1 + i % 10)
            return i
        return step

    branches = [tf.branch("h").step("hold", holder).build()] + [
        tf.branch(f"b{i}").step(f"o{i}", other(i)).wait(f"t{i}", seconds=3).build() for i in range(N)]
    wf = tf.workflow("scratch").parallel("p", branches=branches).build()
    done = await _engine_run(MemoryAdapter(), [wf], lambda engine: _start_and_finish(engine, "scratch", None))
    assert done.status == "completed", done.error
    assert done.output == {"h": "held", **{f"b{i}": i for i in range(N)}}


# -- an item whose step leaves shared data that cannot be stored fails, tolerated ---------------

async def test_a_wide_map_whose_item_leaves_unstorable_data_fails_that_item_only(
        autojump_clock: trio.testing.MockClock, wide_from: int) -> None:
    async def work(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(ctx.item_index % 4)
        if ctx.item_index == 5:
            ctx.data["bad"] = object()
        return int(ctx.item)

    item = tf.branch("item").step("work", work).wait("beat", seconds=2).build()
    wf = tf.workflow("bad-data").map("each", items=lambda ctx: ctx.input, branch=item, tolerated_failures=1).build()
    done = await _engine_run(MemoryAdapter(), [wf],
                             lambda engine: _start_and_finish(engine, "bad-data", list(range(N))))
    assert done.status == "completed", done.error
    assert done.output[5]["error"] == "UnencodableValueError"
    assert [done.output[i] for i in range(N) if i != 5] == [i for i in range(N) if i != 5]


# -- the stored header, read back, is where the lanes stand -----------------------------------

async def test_a_wide_parallel_stopped_halfway_reads_back_from_storage_as_its_branches_stood(
        autojump_clock: trio.testing.MockClock, wide_from: int) -> None:
    """Read from storage after a stop: ended branches at their end, waiting ones with their
    timer, the others where they were, and no branch missing or named twice."""
    def first_step(i: int) -> Any:
        async def step(ctx: tf.WorkflowContext) -> int:
            await trio.sleep(1 + i)
            return i
        return step

    wf = tf.workflow("half").parallel("p", branches=[
        tf.branch(f"b{i}").step(f"one{i}", first_step(i)).wait(f"nap{i}", seconds=5 if i % 2 else 0.5)
        .step(f"two{i}", first_step(0)).build() for i in range(N)]).build()
    adapter = MemoryAdapter()

    async def body(engine: tf.Engine) -> str:
        iid = await engine.start("half")
        await trio.sleep(N // 2 + 0.25)
        return iid

    iid = await _engine_run(adapter, [wf], body)
    stored = await adapter.load(iid)
    assert stored is not None
    state = decode(stored.start, stored.header, list(stored.records))
    assert set(state.lanes) == {"", *(f"p/b{i}" for i in range(N))}
    for i in range(N):
        lane = state.lanes[f"p/b{i}"]
        if i + 1 > N // 2:  # still on its first step
            assert (lane.step, lane.last, lane.waiting) == (f"one{i}", None, None), (i, lane)
        elif i % 2 and i + 1 + 5 > N // 2:  # waiting on its 5 s timer
            assert lane.step == f"nap{i}" and lane.waiting is not None and "timer" in lane.waiting, (i, lane)
        elif i + 1 + (5 if i % 2 else 0.5) + 2 <= N // 2:  # its second step ended: the branch is done
            assert lane.step is None, (i, lane)
    done = await _engine_run(adapter, [wf], lambda engine: finish(engine, iid))
    assert done.status == "completed", done.error
    assert done.output == {f"b{i}": 0 for i in range(N)}


# -- a crash at every checkpoint of a wide fan-out ends as the run without one ------------------

async def test_a_wide_map_with_timers_and_a_failure_crashed_at_every_checkpoint_ends_as_without(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    from trioflow.testing import explore_crashes

    monkeypatch.setattr(_header_lanes, "WIDE", 32)  # (the user's default; 33 items in flight)

    async def reserve(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(ctx.item_index / 4)
        return int(ctx.item)

    async def release(ctx: tf.WorkflowContext, held: int) -> None:
        pass

    async def check(ctx: tf.WorkflowContext) -> int:
        if ctx.item == 20:
            raise Declined("item 20")
        return int(ctx.steps["reserve"])

    item = (tf.branch("item").step("reserve", reserve, release).wait("nap", seconds=lambda ctx: 2 + ctx.item % 4)
            .step("check", check).build())
    wf = tf.workflow("crashy").map("each", items=lambda ctx: ctx.input, branch=item, tolerated_failures=1).build()
    report = await explore_crashes(wf, list(range(33)), lost_writes=False)
    assert report.baseline.status == "completed"
    assert report.writes > 33 and len(report.points) >= report.writes, report.writes
    assert not report.divergent


async def test_a_wide_map_cancelled_where_its_workflow_is_not_registered_compensates_once_it_is(
        autojump_clock: trio.testing.MockClock, wide_from: int) -> None:
    """The cancel is stored into the row read back (a decoded wide state turned compensating,
    its header written from entries kept anew), and the engine that registers the workflow
    compensates every item once."""
    log: Counter[str] = Counter()
    reserve, release = _counted_reservations(log)

    item = tf.branch("item").step("reserve", reserve, release).receive("go", signal="go").build()
    wf = tf.workflow("held").map("each", items=lambda ctx: ctx.input, branch=item).build()
    adapter = MemoryAdapter()

    async def first(engine: tf.Engine) -> str:
        iid = await engine.start("held", list(range(N)))
        await trio.sleep(600)
        return iid

    iid = await _engine_run(adapter, [wf], first)

    async def cancel(engine: tf.Engine) -> bool:
        return await engine.cancel(iid)

    assert await _engine_run(adapter, [], cancel)
    done = await _engine_run(adapter, [wf], lambda engine: finish(engine, iid))
    assert done.status == "cancelled"
    assert log == Counter({**{f"reserve {i}": 1 for i in range(N)}, **{f"release r{i}": 1 for i in range(N)}})
