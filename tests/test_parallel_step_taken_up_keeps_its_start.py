"""A parallel step taken up again (woken from storage for a branch, resumed after a restart)
keeps its execution's ``started_at`` and publishes ``workflow.step.started`` once, while each
new execution of it (a loop through a choice, its own catch) gets its own; nested in map items
and in branches, failed for good, cancelled, in a wide map's kept header, and under a new
release (the adversarial review of c508bd6, December 5th)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import Adapter

from storages import engine_on, finish, storage  # noqa: F401


def _started(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["step_name"] for e in events if e["event"] == "workflow.step.started")


def _completed(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["step_name"] for e in events if e["event"] in ("workflow.step.completed", "workflow.step.caught", "workflow.step.failed"))


async def test_parallel_in_a_loop_gets_fresh_started_at_and_event(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    wf = (tf.workflow("loop")
          .pass_("init", result=0)
          .parallel("par", branches=[
              tf.branch("a").wait("wa", seconds=100).build(),
              tf.branch("b").wait("wb", seconds=1000).build()])
          .pass_("count", transform=lambda ctx: ctx.data.__setitem__("n", ctx.data.get("n", 0) + 1))
          .choice("again", choices=[tf.Choice(condition=lambda ctx: ctx.data["n"] < 3, next="par")],
                  default="done")
          .succeed("done").build())
    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.events.on("workflow.step.*", lambda e: events.append(e))
        engine.register(wf)
        iid = await engine.start("loop", None)
        done = await finish(engine, iid)
    assert done.status == "completed", done.error
    pars = [r for r in done.history if r.step_name == "par"]
    assert len(pars) == 3
    for earlier, later in zip(pars, pars[1:]):
        assert later.started_at >= earlier.completed_at, [(r.started_at, r.completed_at) for r in pars]
    assert _started(events)["par"] == 3, _started(events)


async def test_parallel_reentered_through_its_catch_gets_fresh_started_at(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    tries: list[int] = []

    async def flaky(ctx: tf.WorkflowContext) -> str:
        tries.append(1)
        if len(tries) == 1:
            raise ValueError("first time")
        return "ok"

    wf = (tf.workflow("c")
          .parallel("par", catch=tf.Catch(errors=[tf.ALL], next="par"), branches=[
              tf.branch("a").wait("wa", seconds=100).step("f", flaky).build(),
              tf.branch("b").wait("wb", seconds=1000).build()])
          .build())
    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.events.on("workflow.step.*", lambda e: events.append(e))
        engine.register(wf)
        iid = await engine.start("c", None)
        done = await finish(engine, iid)
    assert done.status == "completed", done.error
    pars = [r for r in done.history if r.step_name == "par"]
    assert [r.status for r in pars] == ["caught", "completed"], [r.status for r in pars]
    assert pars[1].started_at >= pars[0].completed_at, [(r.started_at, r.completed_at) for r in pars]
    assert _started(events)["par"] == 2, _started(events)


async def test_parallel_in_map_items_started_once_and_keeps_started_at(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    wf = (tf.workflow("m")
          .map("each", items=lambda ctx: [1, 2, 3], branch=tf.branch("item").parallel("par", branches=[
              tf.branch("a").wait("wa", seconds=100).wait("wa2", seconds=100).build(),
              tf.branch("b").wait("wb", seconds=5000).build()]).build())
          .build())
    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.events.on("workflow.step.*", lambda e: events.append(e))
        engine.register(wf)
        iid = await engine.start("m", None)
        done = await finish(engine, iid)
    assert done.status == "completed", done.error
    assert _started(events)["par"] == 3, _started(events)
    for r in done.history:
        if r.step_name == "par":
            assert r.completed_at - r.started_at >= 4999, (r.started_at, r.completed_at)


async def test_parallel_nested_in_a_branch_started_once_and_keeps_started_at(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    wf = (tf.workflow("n")
          .parallel("outer", branches=[
              tf.branch("x").parallel("inner", branches=[
                  tf.branch("a").wait("wa", seconds=100).wait("wa2", seconds=100).build(),
                  tf.branch("b").wait("wb", seconds=5000).build()]).build(),
              tf.branch("y").wait("wy", seconds=50).wait("wy2", seconds=7000).build()])
          .build())
    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.events.on("workflow.step.*", lambda e: events.append(e))
        engine.register(wf)
        iid = await engine.start("n", None)
        done = await finish(engine, iid)
    assert done.status == "completed", done.error
    s = _started(events)
    assert s["inner"] == 1 and s["outer"] == 1, s
    inner, outer = done.step_results["inner"], done.step_results["outer"]
    assert inner.completed_at - inner.started_at >= 4999
    assert outer.completed_at - outer.started_at >= 7049


async def test_parallel_in_map_loop_items_restart(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """A map item whose branch loops through a parallel: each pass its own started_at/event,
    across an engine restart mid-way."""
    wf = (tf.workflow("ml")
          .map("each", items=lambda ctx: [1, 2], branch=tf.branch("item")
               .parallel("par", branches=[
                   tf.branch("a").wait("wa", seconds=100).build(),
                   tf.branch("b").wait("wb", seconds=1000).build()])
               .pass_("mark", transform=lambda ctx: ctx.data.__setitem__(f"n{ctx.item}", ctx.data.get(f"n{ctx.item}", 0) + 1))
               .choice("again", choices=[tf.Choice(
                   condition=lambda ctx: ctx.data[f"n{ctx.item}"] < 2, next="par")], default="end")
               .succeed("end").build())
          .build())
    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.events.on("workflow.step.*", lambda e: events.append(e))
        engine.register(wf)
        iid = await engine.start("ml", None)
        await trio.sleep(500)
    async with engine_on(storage()) as engine:
        engine.events.on("workflow.step.*", lambda e: events.append(e))
        engine.register(wf)
        done = await finish(engine, iid)
    assert done.status == "completed", done.error
    assert _started(events)["par"] == sum(1 for r in done.history if r.step_name == "par"), _started(events)
    for r in done.history:
        if r.step_name == "par":
            assert r.completed_at - r.started_at >= 999, (r.started_at, r.completed_at)


@pytest.mark.parametrize("restart", [False, True])
async def test_parallel_failed_for_good_in_tolerated_map_item(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], restart: bool) -> None:
    async def boom(ctx: tf.WorkflowContext) -> None:
        if ctx.item == 0:
            raise ValueError("no")

    wf = (tf.workflow("t")
          .map("each", items=lambda ctx: [0, 1, 2], tolerated_failures=1, on_error="wait-all",
               branch=tf.branch("item").parallel("par", branches=[
                   tf.branch("a").step("boom", boom).build(),
                   tf.branch("b").wait("wb", seconds=1000).build()]).build())
          .build())
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("t", None)
        if restart:
            await trio.sleep(10)
        else:
            done = await finish(engine, iid)
    if restart:
        async with engine_on(storage()) as engine:
            engine.register(wf)
            done = await finish(engine, iid)
    assert done.status == "completed", done.error
    out = done.output
    assert isinstance(out[0], dict) and "error" in out[0], out


def _logged_undo(log: list[str]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """A step and its compensation, which logs "undo"."""
    async def a(ctx: tf.WorkflowContext) -> str:
        return "a"

    async def undo(ctx: tf.WorkflowContext, r: str) -> None:
        log.append("undo")

    return a, undo


async def test_parallel_failed_and_not_caught_compensates(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    a, undo = _logged_undo(log)

    async def boom(ctx: tf.WorkflowContext) -> None:
        raise ValueError("no")

    wf = (tf.workflow("f").step("a", a, undo)
          .parallel("par", on_error="wait-all", branches=[
              tf.branch("x").wait("w", seconds=100).step("boom", boom).build(),
              tf.branch("y").wait("wy", seconds=1000).build()]).build())
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("f", None)
        await trio.sleep(500)
        mid = await engine.get_instance(iid)
        assert mid is not None and mid.status == "running"
        assert mid.current_step == "par", mid.current_step
    async with engine_on(storage()) as engine:
        engine.register(wf)
        done = await finish(engine, iid)
    assert done.status == "failed", done.status
    assert log == ["undo"], log


async def test_cancel_instance_with_parallel_since(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    a, undo = _logged_undo(log)

    wf = (tf.workflow("k").step("a", a, undo)
          .parallel("par", branches=[
              tf.branch("x").wait("w", seconds=100).build(),
              tf.branch("y").receive("r", signal="go").build()]).build())
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("k", None)
        await trio.sleep(500)
        inst = await engine.get_instance(iid)
        assert inst is not None
        assert inst.waiting is not None and inst.waiting.get("signal") == "go", inst.waiting
        assert "since" not in (inst.waiting or {})
    async with engine_on(storage()) as engine:
        engine.register(wf)
        await engine.cancel(iid)
        done = await finish(engine, iid)
    assert done.status == "cancelled", done.status
    assert log == ["undo"], log


@pytest.mark.parametrize("restart", [False, True])
async def test_wide_map_of_parallel_items_kept_header(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], restart: bool) -> None:
    from trioflow import _header_lanes
    assert _header_lanes.CHECK_KEPT

    wf = (tf.workflow("wide")
          .map("each", items=lambda ctx: list(range(40)), branch=tf.branch("item")
               .wait("lead", seconds=lambda ctx: 10 + ctx.item)
               .parallel("par", branches=[
                   tf.branch("a").wait("wa", seconds=lambda ctx: 100 + 7 * ctx.item).build(),
                   tf.branch("b").parallel("inner", branches=[
                       tf.branch("c").wait("wc", seconds=lambda ctx: 50 + 3 * ctx.item).build(),
                       tf.branch("d").receive("rd", signal="go", timeout=400, catch=tf.Catch(errors=[tf.ALL], next="rd2")).pass_("rd2").build()]).build()])
               .build())
          .build())
    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.events.on("workflow.step.*", lambda e: events.append(e))
        engine.register(wf)
        iid = await engine.start("wide", None)
        if restart:
            await trio.sleep(120)
        else:
            done = await finish(engine, iid)
    if restart:
        async with engine_on(storage()) as engine:
            engine.events.on("workflow.step.*", lambda e: events.append(e))
            engine.register(wf)
            done = await finish(engine, iid)
    assert done.status == "completed", done.error
    s = _started(events)
    if not restart:
        assert s["par"] == 40 and s["inner"] == 40, s
    for r in done.history:
        if r.step_name in ("par", "inner"):
            assert r.completed_at - r.started_at >= 99, (r.step_name, r.started_at, r.completed_at)


@pytest.mark.parametrize("new_release", [False, True])
async def test_first_step_parallel_under_a_new_release(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], new_release: bool) -> None:
    async def noop(ctx: tf.WorkflowContext) -> None:
        return None

    def make(extra: bool) -> tf.WorkflowDefinition:
        b = tf.workflow("fp").parallel("par", branches=[
            tf.branch("a").wait("wa", seconds=3600).build(),
            tf.branch("b").receive("rb", signal="go", timeout=3600,
                                   catch=tf.Catch(errors=[tf.ALL], next="rb2")).pass_("rb2").build()])
        if extra:
            b = b.step("notify", noop)
        return b.build()

    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.events.on("workflow.step.*", lambda e: events.append(e))
        engine.register(make(False))
        iid = await engine.start("fp", None)
        await trio.sleep(1800)
    async with engine_on(storage()) as engine:
        engine.events.on("workflow.step.*", lambda e: events.append(e))
        engine.register(make(new_release))
        done = await finish(engine, iid, limit=100_000)
    assert done.status == "completed", done.error
    assert done.completed_at - done.created_at < 3700, done.completed_at - done.created_at
    par = done.step_results["par"]
    assert par.started_at - done.created_at < 5
    assert _started(events)["par"] == 1, _started(events)
