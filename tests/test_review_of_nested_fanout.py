"""Adversarial review of "A map's branch may hold a parallel step or another map step".

Shapes: three levels of maps, a parallel in a map in a parallel, tolerated failures at each
level, catches on inner fan-outs, signals in nested lanes, parked waits, restarts, crash
exploration, cancel, workflow timeout, children, history ids, header size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

import trioflow as tf
from storages import finish, storage  # noqa: F401  (storage: a fixture on both adapters)
from test_nested_fanout import run_one
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import explore_crashes, open_test_engine, virtual_wall_clock

DAY = 86_400.0


class Declined(Exception):
    pass


def in_memory(engine: tf.Engine, iid: str) -> bool:
    return iid in engine._live


class HeaderLanes(MemoryAdapter):
    """A MemoryAdapter that keeps, for each checkpoint, the lane keys and size of its header."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[tuple[int, list[str]]] = []

    async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Any, **kw: Any) -> Any:
        fields = msgpack.unpackb(header, raw=False, strict_map_key=False)
        self.headers.append((len(header), list(fields[8])))
        return await super().checkpoint(instance_id, status, header, records, **kw)


# -- three levels of maps ------------------------------------------------------------------------


def three_levels(log: list[str], *, fail_after: bool = False, concurrency: int | None = None) -> tf.WorkflowDefinition:
    """input: list (a) of lists (b) of lists (c) of strings."""
    async def leaf(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1 + (ctx.item_index % 2))
        out = f"{ctx.steps['la']}.{ctx.steps['lb']}.{ctx.item_index}:{ctx.item}"
        log.append(f"do {out}")
        return out

    async def undo_leaf(ctx: tf.WorkflowContext, out: str) -> None:
        assert out.endswith(f".{ctx.item_index}:{ctx.item}"), (out, ctx.item, ctx.item_index)
        assert out.startswith(f"{ctx.steps['la']}.{ctx.steps['lb']}."), (out, dict(ctx.steps))
        log.append(f"undo {out}")

    async def boom(ctx: tf.WorkflowContext) -> None:
        raise Declined("after")

    c = tf.branch("c").step("leaf", leaf, undo_leaf).build()
    b = (tf.branch("b").pass_("lb", transform=lambda ctx: f"b{ctx.item_index}")
         .map("mc", items=lambda ctx: ctx.item, branch=c, max_concurrency=concurrency).build())
    a = (tf.branch("a").pass_("la", transform=lambda ctx: f"a{ctx.item_index}")
         .map("mb", items=lambda ctx: ctx.item, branch=b, max_concurrency=concurrency).build())
    wf = tf.workflow("three").map("ma", items=lambda ctx: ctx.input, branch=a, max_concurrency=concurrency)
    if fail_after:
        wf = wf.step("boom", boom)
    return wf.build()


THREE = [[["x", "y"], ["z"]], [[], ["w", "v", "u"]], []]
THREE_OUT = [[["a0.b0.0:x", "a0.b0.1:y"], ["a0.b1.0:z"]], [[], ["a1.b1.0:w", "a1.b1.1:v", "a1.b1.2:u"]], []]


@pytest.mark.parametrize("concurrency", [None, 1, 2])
async def test_three_levels_of_maps_give_nested_outputs_and_item_scoped_steps(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], concurrency: int | None) -> None:
    log: list[str] = []
    inst = await run_one(storage(), THREE, three_levels(log, concurrency=concurrency))
    assert inst.status == "completed", inst.error
    assert inst.output == THREE_OUT
    ids = sorted(r.id for r in inst.history if r.step_name == "leaf")
    assert ids == sorted({"ma/#0/mb/#0/mc/#0/leaf#1", "ma/#0/mb/#0/mc/#1/leaf#1", "ma/#0/mb/#1/mc/#0/leaf#1",
                          "ma/#1/mb/#1/mc/#0/leaf#1", "ma/#1/mb/#1/mc/#1/leaf#1", "ma/#1/mb/#1/mc/#2/leaf#1"})


@pytest.mark.parametrize("concurrency", [None, 1])
async def test_three_levels_compensate_each_leaf_once_newest_first_with_its_items(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], concurrency: int | None) -> None:
    log: list[str] = []
    inst = await run_one(storage(), THREE, three_levels(log, fail_after=True, concurrency=concurrency))
    assert inst.status == "failed" and inst.error_name == "Declined", inst.error
    done = [e.split()[1] for e in log if e.startswith("do")]
    undone = [e.split()[1] for e in log if e.startswith("undo")]
    assert undone == done[::-1]
    assert Counter(inst.compensated_steps) == {"leaf": 6}


async def test_crashes_at_every_checkpoint_of_three_levels_of_maps_end_as_without(
        autojump_clock: trio.testing.MockClock) -> None:
    report = await explore_crashes(three_levels([], fail_after=True), [[["x", "y"], ["z"]], [["w"]]])
    assert report.baseline.status == "failed"
    assert Counter(report.baseline.compensated_steps) == {"leaf": 4}
    assert report.divergent == ()


async def test_progress_events_of_the_innermost_map_count_its_own_items(
        autojump_clock: trio.testing.MockClock) -> None:
    events: list[dict[str, Any]] = []
    await run_one(MemoryAdapter(), THREE, three_levels([]), events=events)
    inner = sorted((e["done"], e["total"]) for e in events
                   if e["event"] == "workflow.map.progress" and e["step_name"] == "mc")
    assert inner == sorted([(1, 2), (2, 2), (1, 1), (1, 3), (2, 3), (3, 3)])


# -- a parallel in a map in a parallel -----------------------------------------------------------


def par_map_par(log: list[str], *, fail: str | None = None, tolerated: int = 0,
                inner_on_error: str = "fail-fast") -> tf.WorkflowDefinition:
    async def check(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1 + ctx.item_index)
        if ctx.item == fail:
            raise Declined(f"bad {ctx.item}")
        out = f"{ctx.steps['tag']}:{ctx.item}@{ctx.item_index}"
        log.append(f"check {out}")
        return out

    async def uncheck(ctx: tf.WorkflowContext, out: str) -> None:
        assert out == f"{ctx.steps['tag']}:{ctx.item}@{ctx.item_index}", (out, ctx.item, ctx.item_index)
        log.append(f"uncheck {out}")

    async def slow(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(5)
        log.append(f"slow {ctx.item}")
        return f"slow {ctx.item}"

    async def unslow(ctx: tf.WorkflowContext, out: str) -> None:
        assert out == f"slow {ctx.item}"
        log.append(f"unslow {ctx.item}")

    inner = tf.branch("item").pass_("tag", transform=lambda ctx: f"t{ctx.item_index}").parallel("q", branches=[
        tf.branch("qa").step("check", check, uncheck).build(),
        tf.branch("qb").step("slow", slow, unslow).build(),
    ], on_error=inner_on_error).build()
    return (tf.workflow("pmp")
            .parallel("p", branches=[
                tf.branch("x").map("m", items=lambda ctx: ctx.input, branch=inner, tolerated_failures=tolerated).build(),
                tf.branch("y").pass_("other", result="y").build(),
            ])
            .build())


async def test_a_parallel_in_a_map_in_a_parallel_keys_and_outputs(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    inst = await run_one(storage(), ["u", "v"], par_map_par(log))
    assert inst.status == "completed", inst.error
    assert inst.output == {"x": [{"qa": "t0:u@0", "qb": "slow u"}, {"qa": "t1:v@1", "qb": "slow v"}], "y": "y"}
    ids = {r.id for r in inst.history}
    assert {"m/#0/q/qa/check#1", "m/#1/q/qa/check#1", "m/#0/q/qb/slow#1", "m/#1/q/qb/slow#1"} <= ids


async def test_a_tolerated_inner_parallel_failure_in_a_map_in_a_parallel(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    inst = await run_one(storage(), ["u", "bad", "v"], par_map_par(log, fail="bad", tolerated=1))
    assert inst.status == "completed", inst.error
    assert inst.output["x"][1] == {"error": "Declined", "cause": "bad bad"}
    assert inst.output["x"][0] == {"qa": "t0:u@0", "qb": "slow u"}


async def test_crashes_in_a_parallel_in_a_map_in_a_parallel_end_as_without(
        autojump_clock: trio.testing.MockClock) -> None:
    report = await explore_crashes(par_map_par([], fail="bad", tolerated=0, inner_on_error="wait-all"),
                                   ["u", "bad"])
    assert report.baseline.status == "failed"
    assert report.divergent == ()


async def test_crashes_in_a_tolerated_parallel_failure_in_a_map_in_a_parallel_end_as_without(
        autojump_clock: trio.testing.MockClock) -> None:
    report = await explore_crashes(par_map_par([], fail="bad", tolerated=1), ["u", "bad", "v"])
    assert report.baseline.status == "completed"
    assert report.divergent == ()


async def test_cancel_mid_parallel_in_map_in_parallel_undoes_every_completed_execution(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as engine:
        engine.register(par_map_par(log))
        iid = await engine.start("pmp", ["u", "v", "w"])
        await trio.sleep(2.5)  # checks of u (1s) and v (2s) done; slow ones run (5s)
        assert await engine.cancel(iid)
        inst = await finish(engine, iid)
    assert inst.status == "cancelled", inst.status
    done = [e.split(maxsplit=1)[1] for e in log if e.startswith("check")]
    undone = [e.split(maxsplit=1)[1] for e in log if e.startswith("uncheck")]
    assert sorted(done) == ["t0:u@0", "t1:v@1"]
    assert undone == done[::-1]


# -- failed items leave nothing behind: the header, and parking ----------------------------------


def failing_items_with_timers(inner: str) -> tf.WorkflowDefinition:
    """Items: "bad" fails at once inside its inner fan-out (a fail-fast parallel, or a fail-fast
    inner map); the others wait a day. The outer map tolerates one failure."""
    async def fraud(ctx: tf.WorkflowContext) -> str:
        if ctx.item == "bad" or ctx.item == ["bad"]:
            raise Declined("fraud")
        return "ok"

    if inner == "parallel":
        branch = tf.branch("item").parallel("checks", branches=[
            tf.branch("fraud").step("fraud-check", fraud).build(),
            tf.branch("timer").wait("a-day", seconds=DAY).pass_("late", result="late").build(),
        ]).build()
        items = ["bad", "x", "y"]
    elif inner == "map":
        line = tf.branch("line").step("fraud-check", fraud).wait("a-day", seconds=DAY).build()
        branch = tf.branch("item").map("lines", items=lambda ctx: [ctx.item, ctx.item, ctx.item], branch=line).build()
        items = [["bad"], ["x"], ["y"]]
    else:  # "map-cancelled": the bad order's good line is cancelled by its fail-fast while it works
        async def work(ctx: tf.WorkflowContext) -> str:
            if ctx.item == "bad":
                raise Declined("fraud")
            await trio.sleep(10)
            return "ok"

        line = tf.branch("line").step("work", work).wait("a-day", seconds=DAY).build()
        branch = tf.branch("item").map("lines", items=lambda ctx: ctx.item, branch=line).build()
        items = [["bad", "good"], ["x"], ["y"]]
    return (tf.workflow("fit").map("each", items=lambda ctx: ctx.input, branch=branch, tolerated_failures=1)
            .build()), items  # type: ignore[return-value]


@pytest.mark.parametrize("inner", ["parallel", "map", "map-cancelled"])
async def test_an_instance_whose_other_items_wait_a_day_leaves_memory_after_one_failed_inside(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], inner: str) -> None:
    wf, items = failing_items_with_timers(inner)  # type: ignore[misc]
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("fit", items)
        await trio.sleep(600)
        stored = await engine.get_instance(iid)
        assert stored is not None and stored.status == "running"
        parked = not in_memory(engine, iid)
        inst = await finish(engine, iid)
    assert inst.status == "completed", inst.error
    assert inst.output[0]["error"] == "Declined"
    assert parked, "every live lane waits a day, yet the instance stays in memory"


@pytest.mark.parametrize("inner", ["parallel", "map", "map-cancelled"])
async def test_the_lanes_of_an_item_that_failed_inside_leave_the_header(
        autojump_clock: trio.testing.MockClock, inner: str) -> None:
    wf, items = failing_items_with_timers(inner)  # type: ignore[misc]
    adapter = HeaderLanes()
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("fit", items)
        await trio.sleep(600)
        inst = await finish(engine, iid)
    assert inst.status == "completed", inst.error
    # After item 0 failed (its lane "each/#0", listed once it failed, left the header), no lane
    # under it is kept. (Before it failed, standing untouched at its first step, the header may
    # leave it out while listing the lanes under it.)
    listed = [n for n, (_, keys) in enumerate(adapter.headers) if "each/#0" in keys]
    assert listed
    after = [keys for _, keys in adapter.headers[listed[-1] + 1:] if any(k.startswith("each/#1") for k in keys)]
    assert after
    leftover = sorted({k for keys in after for k in keys if k.startswith("each/#0/")})
    assert leftover == [], leftover


# -- a wide map of maps: the header does not grow with items that ended --------------------------


async def _largest_header(orders: int, inner_on_error: str) -> int:
    """Orders run 4 at a time; each maps two lines: line 0 fails at once, line 1 takes a while
    (a fail-fast inner map cancels it; the outer map tolerates every failure)."""
    async def line(ctx: tf.WorkflowContext) -> int:
        if ctx.item_index == 0:
            await trio.sleep(1)
            raise Declined("line 0")
        await trio.sleep(5)
        return int(ctx.item)

    order = tf.branch("order").map("lines", items=lambda ctx: [ctx.item, ctx.item],
                                   branch=tf.branch("l").step("work", line).build(),
                                   on_error=inner_on_error).build()
    wf = tf.workflow("wide").map("orders", items=lambda ctx: list(range(ctx.input)), branch=order,
                                 tolerated_failures=1.0, max_concurrency=4).build()
    adapter = HeaderLanes()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("wide", orders))
    assert done.status == "completed", done.error
    return max(size for size, _ in adapter.headers)


@pytest.mark.parametrize("inner_on_error", ["wait-all", "fail-fast"])
async def test_the_header_of_a_wide_map_of_maps_does_not_grow_with_items_that_ended(
        autojump_clock: trio.testing.MockClock, inner_on_error: str) -> None:
    small, large = await _largest_header(10, inner_on_error), await _largest_header(80, inner_on_error)
    assert large < small * 1.5, (small, large)


# -- catches on inner fan-outs, ctx.error --------------------------------------------------------


def caught_inner(log: list[str], inner: str) -> tf.WorkflowDefinition:
    async def work(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1 + ctx.item_index)
        if "bad" in str(ctx.item):
            raise LookupError(f"no {ctx.item}")
        return f"ok {ctx.item}"

    catch = [tf.Catch(errors=["LookupError", "ItemError", "MapError"], next="fix")]
    if inner == "parallel":
        branch = (tf.branch("o").parallel("inner", branches=[
            tf.branch("a").step("work", work).build(), tf.branch("b").pass_("pb", result=1).build()], catch=catch))
    else:
        branch = tf.branch("o").map("inner", items=lambda ctx: ctx.item, branch=tf.branch("i").step("work", work).build(),
                                    catch=catch)
    branch = (branch.pass_("fine", transform=lambda ctx: {"fine": ctx.steps["inner"], "error": ctx.error}, end=True)
              .pass_("fix", transform=lambda ctx: {"fixed": ctx.item_index, "error": ctx.error}).build())
    return tf.workflow("caught").map("outer", items=lambda ctx: ctx.input, branch=branch).build()


async def test_a_catch_on_an_inner_map_routes_its_item_alone_and_ctx_error_is_that_items(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    inst = await run_one(storage(), [["x"], ["bad", "y"], ["z"]], caught_inner([], "map"))
    assert inst.status == "completed", inst.error
    assert inst.output[0] == {"fine": ["ok x"], "error": None}
    assert inst.output[1]["fixed"] == 1 and inst.output[1]["error"]["error"] == "LookupError"
    assert inst.output[2] == {"fine": ["ok z"], "error": None}


async def test_a_catch_on_an_inner_parallel_routes_its_item_alone_and_ctx_error_is_that_items(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    inst = await run_one(storage(), ["x", "bad", "z"], caught_inner([], "parallel"))
    assert inst.status == "completed", inst.error
    assert inst.output[0] == {"fine": {"a": "ok x", "b": 1}, "error": None}
    assert inst.output[1]["fixed"] == 1 and inst.output[1]["error"]["error"] == "LookupError"
    assert inst.output[2] == {"fine": {"a": "ok z", "b": 1}, "error": None}


async def test_crashes_around_a_catch_on_an_inner_map_end_as_without(
        autojump_clock: trio.testing.MockClock) -> None:
    report = await explore_crashes(caught_inner([], "map"), [["x"], ["bad", "y"]])
    assert report.baseline.status == "completed"
    assert report.divergent == ()


# -- ctx.item and ctx.steps in branches and inner items ------------------------------------------


async def test_ctx_item_and_steps_in_a_parallel_in_a_map_in_a_map(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    seen: list[tuple[Any, ...]] = []

    async def look(ctx: tf.WorkflowContext) -> str:
        seen.append((ctx.lane, ctx.item, ctx.item_index, ctx.steps.get("outer-tag"), ctx.steps.get("inner-tag"),
                     sorted(ctx.steps)))
        return f"{ctx.steps['outer-tag']}/{ctx.steps['inner-tag']}/{ctx.item}"

    inner = (tf.branch("i").pass_("inner-tag", transform=lambda ctx: f"i{ctx.item_index}")
             .parallel("p", branches=[tf.branch("l").step("look", look).build(),
                                      tf.branch("r").pass_("r", transform=lambda ctx: ctx.item).build()]).build())
    outer = (tf.branch("o").pass_("outer-tag", transform=lambda ctx: f"o{ctx.item_index}")
             .map("mi", items=lambda ctx: ctx.item, branch=inner).build())
    wf = tf.workflow("look").pass_("first", result=0).map("mo", items=lambda ctx: ctx.input, branch=outer).build()
    inst = await run_one(storage(), [["a", "b"], ["c"]], wf)
    assert inst.status == "completed", inst.error
    assert inst.output == [[{"l": "o0/i0/a", "r": "a"}, {"l": "o0/i1/b", "r": "b"}], [{"l": "o1/i0/c", "r": "c"}]]
    for lane, item, index, _, _, names in seen:
        assert lane.endswith("/p/l")
        assert {"first", "outer-tag", "inner-tag"} <= set(names) <= {"first", "outer-tag", "inner-tag", "r"}, names


# -- signals to receive steps in nested lanes ----------------------------------------------------


async def test_signals_to_receive_steps_in_a_map_of_maps_each_taken_once(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    inner = tf.branch("i").receive("go", signal="go").build()
    wf = (tf.workflow("sig").map("mo", items=lambda ctx: ctx.input, branch=tf.branch("o").map(
        "mi", items=lambda ctx: ctx.item, branch=inner).build()).build())
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("sig", [[1, 2], [3]])
        await trio.sleep(3600)
        parked = not in_memory(engine, iid)
        for n in range(3):
            await engine.signal(iid, "go", n)
            await trio.sleep(10)
        inst = await finish(engine, iid)
    assert inst.status == "completed", inst.error
    flat = [x for xs in inst.output for x in xs]
    assert sorted(flat) == [0, 1, 2]
    assert parked


async def test_signals_in_a_map_of_maps_across_restarts(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    inner = tf.branch("i").receive("go", signal="go").pass_("echo", transform=lambda ctx: [ctx.item, ctx.steps["go"]]).build()
    wf = (tf.workflow("sig").map("mo", items=lambda ctx: ctx.input, branch=tf.branch("o").map(
        "mi", items=lambda ctx: ctx.item, branch=inner).build()).build())
    clock = virtual_wall_clock()
    path = tmp_path / "s.db"
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(wf)
        iid = await engine.start("sig", [["a", "b"], ["c"]])
        await trio.sleep(10)
        await engine.signal(iid, "go", 0)
        await trio.sleep(10)
    for n in (1, 2):
        async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
            engine.register(wf)
            await trio.sleep(1)
            await engine.signal(iid, "go", n)
            await trio.sleep(10)
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(wf)
        inst = await finish(engine, iid)
    assert inst.status == "completed", inst.error
    flat = [x for xs in inst.output for x in xs]
    assert sorted(x[1] for x in flat) == [0, 1, 2]
    assert sorted(x[0] for x in flat) == ["a", "b", "c"]


# -- restarts mid-run ----------------------------------------------------------------------------


@pytest.mark.parametrize("stop_at", [0.5, 1.5, 2.5, 3.5, 5.5, 6.5])
async def test_restarts_mid_three_levels_of_maps_end_as_without(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, stop_at: float) -> None:
    log: list[str] = []
    wf = three_levels(log, concurrency=1)
    clock = virtual_wall_clock()
    path = tmp_path / "r.db"
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(wf)
        iid = await engine.start("three", THREE)
        await trio.sleep(stop_at)
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(wf)
        inst = await finish(engine, iid)
    assert inst.status == "completed", inst.error
    assert inst.output == THREE_OUT
    ids = [r.id for r in inst.history if r.status == "completed" and r.step_name == "leaf"]
    assert len(ids) == len(set(ids)) == 6


# -- waits and retries with delays in nested lanes -----------------------------------------------


async def test_retry_delays_in_a_parallel_in_a_map_item_park_and_resume(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    tries: Counter[str] = Counter()

    async def flaky(ctx: tf.WorkflowContext) -> str:
        tries[ctx.item] += 1
        if tries[ctx.item] < 3:
            raise ConnectionError("flaky")
        return f"ok {ctx.item}"

    retry = tf.Retry(max_attempts=5, interval=3600.0, backoff_rate=1.0, max_interval=3600.0)
    item = tf.branch("i").parallel("p", branches=[
        tf.branch("a").step("flaky", flaky, retry=retry).build(),
        tf.branch("b").wait("w", seconds=1800).build()]).build()
    wf = (tf.workflow("retr").map("mo", items=lambda ctx: ctx.input,
                                  branch=tf.branch("o").map("mi", items=lambda ctx: ctx.item, branch=item).build())
          .build())
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("retr", [["a", "b"], ["c"]])
        await trio.sleep(600)
        parked = not in_memory(engine, iid)
        inst = await finish(engine, iid)
    assert inst.status == "completed", inst.error
    assert [[x["a"] for x in xs] for xs in inst.output] == [["ok a", "ok b"], ["ok c"]]
    assert parked


# -- workflow timeout ----------------------------------------------------------------------------


async def test_a_workflow_timeout_in_a_map_of_maps_compensates_every_completed_leaf(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []

    async def leaf(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(10 * (ctx.item + 1))
        log.append(f"do {ctx.item}")
        return str(ctx.item)

    async def undo(ctx: tf.WorkflowContext, out: str) -> None:
        assert out == str(ctx.item)
        log.append(f"undo {out}")

    wf = (tf.workflow("to").with_timeout(25).map("mo", items=lambda ctx: ctx.input, branch=tf.branch("o").map(
        "mi", items=lambda ctx: ctx.item, branch=tf.branch("i").step("leaf", leaf, undo).build()).build()).build())
    inst = await run_one(storage(), [[0, 1, 2], [0, 3]], wf)
    assert inst.status == "timed_out", inst.status
    done = [e.split()[1] for e in log if e.startswith("do")]
    undone = [e.split()[1] for e in log if e.startswith("undo")]
    assert sorted(done) == ["0", "0", "1"]
    assert undone == done[::-1]


# -- children in nested items --------------------------------------------------------------------


async def test_children_in_a_parallel_in_map_items_across_a_restart_are_not_duplicated(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    started: Counter[str] = Counter()

    async def kid_work(ctx: tf.WorkflowContext) -> str:
        started[ctx.metadata.id] += 1
        await trio.sleep(100)
        return f"kid {ctx.input}"

    kid = tf.workflow("kid").step("work", kid_work).build()
    item = tf.branch("i").parallel("p", branches=[
        tf.branch("a").child("ka", workflow="kid", input=lambda ctx: f"a{ctx.item}").build(),
        tf.branch("b").child("kb", workflow="kid", input=lambda ctx: f"b{ctx.item}").build()]).build()
    wf = tf.workflow("par").map("m", items=lambda ctx: ctx.input, branch=item).build()
    clock = virtual_wall_clock()
    path = tmp_path / "c.db"
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(wf)
        engine.register(kid)
        iid = await engine.start("par", [1, 2])
        await trio.sleep(50)
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(wf)
        engine.register(kid)
        inst = await finish(engine, iid)
    assert inst.status == "completed", inst.error
    assert inst.output == [{"a": "kid a1", "b": "kid b1"}, {"a": "kid a2", "b": "kid b2"}]
    assert sorted(inst.children) == sorted(f"{iid}/m/#{i}/p/{b}/k{b}#1" for i in (0, 1) for b in "ab")
    assert len(started) == 4


# -- definition changes between runs -------------------------------------------------------------


async def test_a_changed_inner_parallel_in_a_map_item_is_a_misfit(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    def wf(second: str) -> tf.WorkflowDefinition:
        item = tf.branch("i").parallel("p", branches=[
            tf.branch("a").wait("w", seconds=100).build(),
            tf.branch(second).wait("w2", seconds=100).build()]).build()
        return tf.workflow("chg").map("m", items=lambda ctx: ctx.input, branch=item).build()

    clock = virtual_wall_clock()
    path = tmp_path / "m.db"
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(wf("b"))
        iid = await engine.start("chg", [1, 2])
        await trio.sleep(10)
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(wf("c"))
        inst = await finish(engine, iid)
    assert inst.status == "failed"
    assert inst.error_name == "DefinitionMismatchError", (inst.error_name, inst.error)


@pytest.mark.parametrize("inner", ["parallel", "map-cancelled"])
async def test_a_restart_after_an_item_failed_inside_ends_as_without(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, inner: str) -> None:
    wf, items = failing_items_with_timers(inner)  # type: ignore[misc]
    clock = virtual_wall_clock()
    path = tmp_path / "f.db"
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(wf)
        iid = await engine.start("fit", items)
        await trio.sleep(600)
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(wf)
        inst = await finish(engine, iid)
    assert inst.status == "completed", inst.error
    assert inst.output[0]["error"] == "Declined"
    assert inst.output[1:] in ([{"fraud": "ok", "timer": "late"}] * 2, [["ok"], ["ok"]])


@pytest.mark.parametrize("inner", ["parallel", "map-cancelled"])
async def test_crashes_after_an_item_failed_inside_end_as_without(
        autojump_clock: trio.testing.MockClock, inner: str) -> None:
    wf, items = failing_items_with_timers(inner)  # type: ignore[misc]
    report = await explore_crashes(wf, items)
    assert report.baseline.status == "completed"
    assert report.divergent == ()


async def test_cancel_of_a_parked_map_of_maps_compensates_newest_first_with_items(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []

    async def take(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1 + ctx.item_index)
        log.append(f"take {ctx.steps['o']}.{ctx.item}")
        return f"{ctx.steps['o']}.{ctx.item}"

    async def give(ctx: tf.WorkflowContext, out: str) -> None:
        assert out == f"{ctx.steps['o']}.{ctx.item}", (out, dict(ctx.steps), ctx.item)
        log.append(f"give {out}")

    inner = tf.branch("i").parallel("p", branches=[
        tf.branch("a").step("take", take, give).wait("later", seconds=DAY).build(),
        tf.branch("b").receive("go", signal="go").build()]).build()
    outer = tf.branch("o").pass_("o", transform=lambda ctx: f"o{ctx.item_index}").map(
        "mi", items=lambda ctx: ctx.item, branch=inner).build()
    wf = tf.workflow("cx").map("mo", items=lambda ctx: ctx.input, branch=outer).build()
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("cx", [["a", "b"], ["c"]])
        await trio.sleep(600)
        parked = not in_memory(engine, iid)
        assert await engine.cancel(iid)
        inst = await finish(engine, iid)
    assert inst.status == "cancelled"
    takes = [e.split()[1] for e in log if e.startswith("take")]
    gives = [e.split()[1] for e in log if e.startswith("give")]
    assert sorted(takes) == ["o0.a", "o0.b", "o1.c"]
    assert gives == takes[::-1]
    assert parked


def failing_leaf(fail: str) -> tf.WorkflowDefinition:
    async def leaf(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1 + ctx.item_index)
        if ctx.item == fail:
            raise Declined(f"leaf {ctx.item}")
        return str(ctx.item)

    async def undo(ctx: tf.WorkflowContext, out: str) -> None:
        assert out == str(ctx.item)

    item = tf.branch("i").parallel("p", branches=[
        tf.branch("a").step("leaf", leaf, undo).build(),
        tf.branch("b").wait("w", seconds=3600).build()]).build()
    outer = tf.branch("o").map("mi", items=lambda ctx: ctx.item, branch=item, max_concurrency=1).build()
    return tf.workflow("fl").map("mo", items=lambda ctx: ctx.input, branch=outer).build()


async def test_crashes_in_a_fail_fast_leaf_two_levels_down_end_as_without(
        autojump_clock: trio.testing.MockClock) -> None:
    report = await explore_crashes(failing_leaf("bad"), [["x", "bad"], ["y"]])
    assert report.baseline.status == "failed"
    assert report.baseline.failed_step == "leaf", report.baseline.failed_step
    assert report.divergent == ()


@pytest.mark.parametrize("stop_at", [0.5, 2.5, 1800.0, 3601.5, 3602.5, 7300.0])
async def test_failed_step_of_a_fail_fast_leaf_two_levels_down_across_a_restart(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, stop_at: float) -> None:
    wf = failing_leaf("bad")
    clock = virtual_wall_clock()
    path = tmp_path / "ff.db"
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(wf)
        iid = await engine.start("fl", [["x", "bad"], ["y"]])
        await trio.sleep(stop_at)
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(wf)
        inst = await finish(engine, iid)
    assert inst.status == "failed"
    assert inst.failed_step == "leaf" and inst.error_name == "Declined", (inst.failed_step, inst.error_name)
