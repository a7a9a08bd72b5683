"""An adversarial review of the engine's calls on waiting instances and on parents and
children, on real SQLite files with restarts (autojump MockClock): each test failed before its
fix."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def errors() -> Any:
    handler = ErrorLog()
    logging.getLogger("trioflow").addHandler(handler)
    yield handler.messages
    logging.getLogger("trioflow").removeHandler(handler)


def saga_step(log: list[str], name: str) -> tuple[Any, Any]:
    """A saga step's execute and compensate, each noting in ``log`` that it ran."""
    async def execute(ctx: Any) -> str:
        log.append(name)
        return name

    async def compensate(ctx: Any, result: Any) -> None:
        log.append(f"undo {name}")

    return execute, compensate


class WatchedSQLite(tf.adapters.SQLiteAdapter):
    """The real adapter; it tells the test when a child's row starts being created."""

    creating: trio.Event | None = None

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if "/" in instance_id and self.creating is not None:
            self.creating.set()
        return await super().create(instance_id, *args, **kwargs)


async def test_an_engine_closing_while_a_child_is_stored_leaves_its_parent_to_resume(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, errors: list[str]) -> None:
    """``Engine._start`` raised ``EngineClosedError`` inside the parent's run, which took it
    for a crash: the parent was stored failed ("internal error"), its completed step never
    compensated, its child left to run on alone."""
    log: list[str] = []
    kid = tf.workflow("kid").step("k1", lambda ctx: "k1").build()
    parent = tf.workflow("par").step("p1", *saga_step(log, "p1")).child("c", workflow="kid").build()
    adapter = WatchedSQLite(tmp_path / "f.db")
    adapter.creating = trio.Event()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(kid)
        engine.register(parent)
        iid = await engine.start("par")
        await adapter.creating.wait()  # the child's row is being written: stop the engine now
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(tmp_path / "f.db")) as engine:
        first = await engine.get_instance(iid)
        engine.register(kid)
        engine.register(parent)
        with trio.fail_after(60):
            done = await engine.wait(iid)
        child = await engine.get_instance(f"{iid}/c#1")
    assert first is not None and (first.status, first.error) == ("running", None)
    assert (done.status, done.output) == ("completed", "k1"), done.error
    assert child is not None and child.status == "completed"
    assert log == ["p1"]
    assert errors == []


async def test_an_engine_closing_while_a_map_item_stores_its_child_raises_nothing_from_its_block(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """With a sibling item cancelled beside it, the item's ``EngineClosedError`` came out of the
    caller's ``async with open_engine(...)`` in an exception group."""
    async def pre(ctx: Any) -> Any:
        await trio.sleep(10 * ctx.item)
        return ctx.item

    kid = tf.workflow("kid").step("k", lambda ctx: ctx.input).build()
    mapper = (tf.workflow("mapper")
              .map("m", items=lambda ctx: [0, 1],
                   branch=tf.branch("item").step("pre", pre).child("c", workflow="kid").build())
              .build())
    adapter = WatchedSQLite(tmp_path / "f.db")
    adapter.creating = trio.Event()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(kid)
        engine.register(mapper)
        iid = await engine.start("mapper")
        await adapter.creating.wait()  # item 0's child is being written: stop the engine
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(tmp_path / "f.db")) as engine:
        engine.register(kid)
        engine.register(mapper)
        with trio.fail_after(60):
            done = await engine.wait(iid)
    assert (done.status, done.output) == ("completed", [0, 1]), done.error


class SlowAckSQLite(tf.adapters.SQLiteAdapter):
    """The real adapter, whose answer to ``send_signal`` comes 3 s after the signal is
    committed (a database behind a network, a busy writer)."""

    async def send_signal(self, *args: Any, **kwargs: Any) -> Any:
        seq = await super().send_signal(*args, **kwargs)
        with trio.CancelScope(shield=True):
            await trio.sleep(3.0)
        return seq


class SlowAckMemory(tf.adapters.MemoryAdapter):
    async def send_signal(self, *args: Any, **kwargs: Any) -> Any:
        seq = await super().send_signal(*args, **kwargs)
        with trio.CancelScope(shield=True):
            await trio.sleep(3.0)
        return seq


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_a_signal_taken_while_signal_awaited_its_answer_is_not_taken_again_by_a_later_run(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str) -> None:
    """The run that was live when ``signal()`` began read the signal from storage and took it,
    then left memory on a timer; ``signal()``, answered after a new run was woken, handed the
    signal to that run, whose second receive took it again (its checkpoint then refused: the
    instance stalled ``running``)."""
    async def pause(data: Any) -> str:
        await trio.sleep(1.0)
        return "done"

    wf = (tf.workflow("w").task("pre", job=pause).receive("r1", signal="go")
          .wait("t", seconds=2.0).task("work", job=pause).receive("r2", signal="go").build())
    adapter = SlowAckSQLite(tmp_path / "f.db") if kind == "sqlite" else SlowAckMemory()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(0.5)  # 'pre' runs
        await engine.signal(iid, "go", "s1")  # stored at 0.5, answered at 3.5
        await trio.sleep(5)
        await engine.signal(iid, "go", "s2")
        with trio.fail_after(60):
            done = await engine.wait(iid)
    outputs = {r.step_name: r.output for r in done.history if r.status == "completed"}
    assert (done.status, outputs["r1"], outputs["r2"]) == ("completed", "s1", "s2"), done.error


@pytest.mark.parametrize("together", [True, False])
async def test_a_second_cancel_of_a_woken_queued_instance_returns_once_the_cancel_is_stored(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, together: bool) -> None:
    """The path for an instance woken from storage and queued for a slot stored the decision
    but never said so: every later ``cancel()`` waited its 10 s out."""
    async def a(data: Any) -> str:
        await trio.sleep(0.3)
        return "a"

    async def undo(output: Any) -> None:
        return None

    async def hold(data: Any) -> None:
        await trio.sleep(100)

    wf = tf.workflow("w").task("a", job=a, compensate=undo).wait("t", seconds=2.0).task("b", job=a).build()
    blocker = tf.workflow("blk").task("h", job=hold).build()
    took: dict[int, tuple[bool, float]] = {}
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(tmp_path / "f.db"), max_running=1) as engine:
        engine.register(wf)
        engine.register(blocker)
        await engine.start("w", instance_id="A")
        await trio.sleep(1.0)  # A is parked on its timer
        await engine.start("blk", instance_id="B")  # B takes the only slot
        await trio.sleep(2.0)  # A is woken, and queued behind B

        async def cancel(k: int) -> None:
            t0 = trio.current_time()
            took[k] = (await engine.cancel("A"), trio.current_time() - t0)

        if together:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel, 1)
                nursery.start_soon(cancel, 2)
        else:
            await cancel(1)
            await trio.sleep(0.5)
            await cancel(2)
    assert took[1][0] is True and took[2][0] is True
    assert took[1][1] < 1.0 and took[2][1] < 1.0, took


async def test_a_compensation_that_ends_as_the_engine_stops_is_not_run_again_in_a_map(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """With more than one lane, the checkpoint of a compensation that ended as the engine
    stopped was dropped at the checkpoint lock (a cancellation point) before it reached
    storage, and the next engine ran the compensation again (a lone lane's was stored)."""
    undone: list[str] = []
    started = trio.Event()

    async def undo_m0(ctx: Any, result: Any) -> None:
        started.set()
        with trio.CancelScope(shield=True):  # a refund that must not be cut in half
            await trio.sleep(0.5)
        undone.append(ctx.metadata.id)

    kid = tf.workflow("kid").step("k", lambda ctx: ctx.input).wait("kw", seconds=5).build()
    wf = (tf.workflow("w").step("m0", lambda ctx: "m0", undo_m0)
          .map("m", items=lambda ctx: [0, 1], max_concurrency=1,
               branch=tf.branch("item").child("c", workflow="kid").build())
          .receive("r", signal="go").build())
    path = tmp_path / "f.db"
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(kid)
        engine.register(wf)
        iid = await engine.start("w", instance_id="I")
        await trio.sleep(1)  # the map's first item waits on its child
        assert await engine.cancel(iid)
        await started.wait()  # the compensation runs: stop the engine now
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(kid)
        engine.register(wf)
        with trio.fail_after(60):
            done = await engine.wait(iid)
    assert done.status == "cancelled"
    assert undone == ["I"]


async def test_an_engine_stopping_while_a_parent_waits_to_undo_a_child_is_no_failed_compensation(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """The parent's compensation waited for the child's jobs to be registered; the engine's
    stop made that wait raise ``EngineClosedError``, recorded as the child step's compensation
    failure for good: the next engine never undid the child."""
    log: list[str] = []

    async def k1(data: Any) -> str:
        log.append("k1")
        return "k1"

    async def undo_k1(output: Any) -> None:
        log.append("undo k1")

    kid = tf.workflow("kid").task("k1", job="k1", compensate="undo-k1").build()
    parent = (tf.workflow("par").step("p1", *saga_step(log, "p1")).child("c", workflow="kid")
              .receive("r", signal="go").build())

    def jobs(engine: tf.Engine) -> None:
        engine.jobs.register("k1", k1)
        engine.jobs.register("undo-k1", undo_k1)

    path = tmp_path / "f.db"
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        jobs(engine)
        engine.register(kid)
        engine.register(parent)
        await engine.start("par", instance_id="P")
        await trio.sleep(10)  # the child completed; P waits for 'go'
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(kid)  # its jobs are not registered (yet)
        engine.register(parent)
        await trio.sleep(1)
        assert await engine.cancel("P")  # P's compensation waits for the child's jobs
        await trio.sleep(1)
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        jobs(engine)
        engine.register(kid)
        engine.register(parent)
        with trio.fail_after(60):
            done = await engine.wait("P")
            child = await engine.get_instance("P/c#1")
    assert done.status == "cancelled"
    assert done.compensation_errors == {}
    assert child is not None and child.status == "compensated"
    assert log == ["p1", "k1", "undo k1", "undo p1"]
