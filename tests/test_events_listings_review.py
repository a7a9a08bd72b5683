"""Events, listings and purges (an adversarial review; each test failed before its fix)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock
from storages import written_before_parents


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    """A factory of the same storage for each engine of a test, on each adapter."""
    if request.param == "memory":
        memory = MemoryAdapter()
        return lambda: memory
    return lambda: SQLiteAdapter(tmp_path / "flows.db")


async def ok(data: Any) -> Any:
    return "ok"


async def test_a_queued_instance_resumed_by_a_new_engine_is_announced_as_started_and_runs_on_start(autojump_clock: trio.testing.MockClock, storage: Callable[[], Any]) -> None:
    gate = trio.Event()
    clock = virtual_wall_clock()
    on_start_calls: list[str] = []

    async def held(data: Any) -> str:
        await gate.wait()
        return "held"

    def wf() -> tf.WorkflowDefinition:
        return (tf.workflow("w").task("a", job=held)
                .with_hooks(on_start=lambda ctx: on_start_calls.append(ctx.input)).build())

    async with open_test_engine(adapter=storage(), max_running=1, clock=clock) as engine:
        engine.register(wf())
        await engine.start("w", "first", instance_id="first")
        await engine.start("w", "second", instance_id="second")   # no slot: stored pending, queued
        await trio.sleep(1)
        assert (await engine.get_instance("second")).status == "pending"
    gate.set()
    started: list[str] = []
    async with open_test_engine(adapter=storage(), max_running=1, clock=clock) as engine:
        engine.events.on("workflow.started", lambda e: started.append(e["instance_id"]))
        engine.register(wf())
        with trio.fail_after(100):
            assert (await engine.wait("second")).status == "completed"
    # "second" never started in the first engine: its start must be announced (once), on_start run
    assert (started, on_start_calls) == (["second"], ["first", "second"]), (started, on_start_calls)



class SlowCheckpoints(MemoryAdapter):
    """A MemoryAdapter whose checkpoints take 5 s to become durable (a slow disk)."""

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        await trio.sleep(5)
        return await super().checkpoint(*args, **kwargs)


async def test_an_instance_whose_end_is_being_stored_is_listed_under_one_status(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine(adapter=SlowCheckpoints()) as engine:
        engine.register(tf.workflow("w").task("a", job=ok).build())
        await engine.start("w", instance_id="x")
        await trio.sleep(2)  # step done; terminal checkpoint being written
        everything = {i.id: i.status for i in await engine.get_instances("w")}
        alone = (await engine.get_instance("x")).status  # type: ignore[union-attr]
        by_status = {s: [i.id for i in await engine.get_instances("w", status=s)] for s in ("running", "completed")}
        assert (everything, alone, by_status) == ({"x": "running"}, "running", {"running": ["x"], "completed": []})
        done = await engine.wait("x")   # its end stored: every view says so
        everything = {i.id: i.status for i in await engine.get_instances("w")}
        by_status = {s: [i.id for i in await engine.get_instances("w", status=s)] for s in ("running", "completed")}
    assert (done.status, everything, by_status) == ("completed", {"x": "completed"}, {"running": [], "completed": ["x"]})


async def test_a_view_of_an_instance_whose_end_is_being_stored_shows_no_output_nor_end_yet(
        autojump_clock: trio.testing.MockClock) -> None:
    """Views say the stored status, ``running``, while the end's checkpoint is in flight: they
    show the instance as it was before it ended, not a running instance with an output and a
    completion time."""
    async with open_test_engine(adapter=SlowCheckpoints()) as engine:
        engine.register(tf.workflow("w").task("a", job=ok).build())
        await engine.start("w", instance_id="x")
        await trio.sleep(2)  # step done; terminal checkpoint being written
        alone = await engine.get_instance("x")
        [listed] = await engine.get_instances("w")
        for view in (alone, listed):
            assert view is not None
            assert (view.status, view.output, view.completed_at) == ("running", None, None)
        done = await engine.wait("x")
    assert done.status == "completed" and done.output is not None and done.completed_at is not None


async def test_an_instance_whose_admission_is_being_stored_is_listed_under_one_status(
        autojump_clock: trio.testing.MockClock) -> None:
    gates = {"a": trio.Event(), "b": trio.Event()}

    async def held(data: Any) -> str:
        await gates[data].wait()
        return "held"

    async with open_test_engine(adapter=SlowCheckpoints(), max_running=1) as engine:
        engine.register(tf.workflow("w").task("a", job=held).build())
        await engine.start("w", "a", instance_id="a")
        await engine.start("w", "b", instance_id="b")
        await trio.sleep(1)
        gates["a"].set()
        await trio.sleep(7)  # a's end stored at ~6; b admitted, its 'running' being stored
        everything = {i.id: i.status for i in await engine.get_instances("w")}
        alone = (await engine.get_instance("b")).status  # type: ignore[union-attr]
        by_status = {s: [i.id for i in await engine.get_instances("w", status=s)] for s in ("pending", "running")}
        # Each view says what is stored (pending, until the admission's checkpoint lands).
        assert (everything, alone, by_status) == (
            {"a": "completed", "b": "pending"}, "pending", {"pending": ["b"], "running": []})
        await trio.sleep(5)
        by_status = {s: [i.id for i in await engine.get_instances("w", status=s)] for s in ("pending", "running")}
        assert ((await engine.get_instance("b")).status, by_status) == (  # type: ignore[union-attr]
            "running", {"pending": [], "running": ["b"]})
        gates["b"].set()


async def test_listings_show_a_running_step_holding_unstorable_scratch_data(autojump_clock: trio.testing.MockClock) -> None:
    async def step(ctx: Any) -> str:
        ctx.data["conn"] = object()   # scratch value, removed before the step ends
        await trio.sleep(10)
        del ctx.data["conn"]
        return "done"

    async with open_test_engine() as engine:
        engine.register(tf.workflow("w").step("s", step).build())
        iid = await engine.start("w")
        await trio.sleep(1)
        try:
            listed: Any = [i.id for i in await engine.get_instances()]
        except Exception as exc:
            listed = exc
        inst = await engine.wait(iid)
    assert inst.status == "completed"
    assert listed == [iid], listed



async def test_both_adapters_keep_a_finished_rows_finish_time_across_its_undos_checkpoints(autojump_clock: trio.testing.MockClock, storage: Callable[[], Any]) -> None:
    undone: list[str] = []

    async def undo_y(out: Any) -> None:
        undone.append("y")

    async def undo_x(out: Any) -> None:
        await trio.sleep(100)
        undone.append("x")

    async def fail_late(data: Any) -> None:
        await trio.sleep(200)
        raise RuntimeError("late failure")

    child = tf.workflow("child").task("x", job=ok, compensate=undo_x).task("y", job=ok, compensate=undo_y).build()
    parent = tf.workflow("parent").child("c", workflow="child").task("f", job=fail_late).build()
    # (An adapter that keeps no parents: one that does keeps the child while its parent is stored.)
    async with open_test_engine(adapter=written_before_parents(storage())) as engine:
        engine.register(child)
        engine.register(parent)
        await engine.start("parent", instance_id="p")
        await trio.sleep(250)  # child completed at ~0; parent failed at 200, undoing the child (y done, x running)
        purged = await engine.purge(older_than=100)
        with trio.fail_after(1000):
            inst = await engine.wait("p")
    # The child finished at ~0, and its undo's checkpoints do not change that (SQLite said ~200, and
    # purged nothing, where memory purged it): purged on both, its undo's first compensation done.
    assert (purged, undone) == (1, ["y", "x"]), (purged, undone)
    assert "purged while it was being compensated" in dict(inst.compensation_errors)["c"], inst.compensation_errors



async def test_a_child_purged_during_its_undo_is_reported_as_a_child_compensation_error(autojump_clock: trio.testing.MockClock, storage: Callable[[], Any]) -> None:
    async def undo_x(out: Any) -> None:
        await trio.sleep(100)

    async def fail_late(data: Any) -> None:
        await trio.sleep(200)
        raise RuntimeError("late failure")

    child = tf.workflow("child").task("x", job=ok, compensate=undo_x).build()
    parent = tf.workflow("parent").child("c", workflow="child").task("f", job=fail_late).build()
    # (An adapter that keeps no parents: one that does keeps the child while its parent is stored.)
    async with open_test_engine(adapter=written_before_parents(storage())) as engine:
        engine.register(child)
        engine.register(parent)
        await engine.start("parent", instance_id="p")
        await trio.sleep(250)
        purged = await engine.purge(older_than=100)
        with trio.fail_after(1000):
            inst = await engine.wait("p")
    errors = dict(inst.compensation_errors)
    assert purged == 1 and errors["c"].startswith("ChildCompensationError") and "purged" in errors["c"], (purged, errors)

async def test_a_map_item_that_failed_before_a_restart_sends_no_progress_event_again(autojump_clock: trio.testing.MockClock, storage: Callable[[], Any]) -> None:
    clock = virtual_wall_clock()
    seen: list[tuple] = []

    async def j(d: Any) -> Any:
        await trio.sleep(d)
        if d == 1:
            raise RuntimeError("bad")
        return d

    def wf() -> tf.WorkflowDefinition:
        return (tf.workflow("m")
                .map("each", items=lambda ctx: [1, 100], tolerated_failures=1,
                     branch=tf.branch("one").task("j", job=j, input=lambda ctx: ctx.item).build())
                .build())

    for phase in range(2):
        async with open_test_engine(adapter=storage(), clock=clock) as engine:
            engine.events.on("workflow.map.progress", lambda e: seen.append((e["done"], e["failed"], e["total"])))
            engine.register(wf())
            if phase == 0:
                await engine.start("m", instance_id="x")
                await trio.sleep(5)
            else:
                with trio.fail_after(500):
                    inst = await engine.wait("x")
    assert inst.status == "completed"
    assert seen == [(1, 1, 2), (2, 1, 2)], seen   # got [(1, 1, 2), (1, 1, 2), (2, 1, 2)]



async def test_an_async_callback_that_unsubscribed_is_not_called_again(autojump_clock: trio.testing.MockClock) -> None:
    got: list[str] = []
    unsubscribe: Any = None

    async def once(event: dict) -> None:
        got.append(event["event"])
        unsubscribe()

    async with open_test_engine() as engine:
        unsubscribe = engine.events.on("workflow.*", once)
        engine.register(tf.workflow("w").task("a", job=ok).task("b", job=ok).build())
        await engine.wait(await engine.start("w"))
        await trio.sleep(1)
    assert got == ["workflow.started"], got
