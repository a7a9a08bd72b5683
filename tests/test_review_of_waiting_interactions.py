"""The adversarial review of waiting, children, events and redeployed definitions (December
5th), on trio's MockClock (autojump) and real SQLite files:

- a parallel step taken up again (woken from storage for a branch, or resumed) got a new
  ``started_at`` and published ``workflow.step.started`` again, at every wake;
- a release that changed the kind of a step an instance waited at crashed it as an internal
  error with nothing compensated, left its child running, or made its parent spin (fixed by
  8075be5's kind check; these cases pin it from outside);
- a child step whose workflow a release renamed, taken up, tried to store its child again
  under the new name, failed the parent with ``InstanceIdConflictError`` and left the child
  running: the execution keeps the child it started;
- a receive whose signal a release renamed waited for ever whatever was sent: it keeps the
  name it stored as it began (what ``waiting`` shows), as a wait keeps its due time."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine


# -- 1. a parallel step taken up again (woken from storage, or resumed) starts over -----------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_parallel_step_started_at_survives_waking_from_storage(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str) -> None:
    """A parallel step whose branches wait out of memory is taken up again at each timer; its
    execution began when the instance first reached it, not at the last wake."""
    adapter = MemoryAdapter() if kind == "memory" else SQLiteAdapter(tmp_path / "e.db")
    wf = (tf.workflow("w").parallel("par", branches=[
        tf.branch("a").wait("short", seconds=100).wait("short2", seconds=100).build(),
        tf.branch("b").wait("long", seconds=10000).build(),
    ]).build())
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("w"))
    par = done.step_results["par"]
    long = done.step_results["long"]
    assert par.status == "completed"
    assert par.started_at <= long.started_at + 1, (
        f"par#1 started {par.started_at - done.started_at:.0f} s after the instance, its branch "
        f"'long' {long.started_at - done.started_at:.0f} s after")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_parallel_step_started_event_once_when_woken_for_its_branches(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str) -> None:
    adapter = MemoryAdapter() if kind == "memory" else SQLiteAdapter(tmp_path / "e.db")
    wf = (tf.workflow("w").parallel("par", branches=[
        tf.branch("a").wait("short", seconds=100).wait("short2", seconds=100).build(),
        tf.branch("b").wait("long", seconds=10000).build(),
        tf.branch("c").receive("sig", signal="go").build(),
    ]).build())
    events: list[dict[str, Any]] = []
    async with open_test_engine(adapter=adapter) as engine:
        engine.events.on("workflow.step.*", lambda e: events.append(e))
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(5000)
        await engine.signal(iid, "go", 1)
        done = await engine.wait(iid)
    assert done.status == "completed"
    started = Counter(e["step_name"] for e in events if e["event"] == "workflow.step.started")
    completed = Counter(e["step_name"] for e in events if e["event"] == "workflow.step.completed")
    assert completed["par"] == 1
    assert started["par"] == 1, started


# -- 2. a redeployed definition whose step changed kind where an instance waits -------------------


@pytest.mark.parametrize("change", [("wait", "receive"), ("receive", "wait"), ("retry", "wait")])
async def test_waiting_step_changed_kind_fails_cleanly_and_compensates(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, change: tuple[str, str]) -> None:
    """An instance waits at step 'nap' (a timer, a signal, a retry's delay); the redeployed
    definition keeps the name but makes it another kind of waiting step. It must either go on or
    fail with DefinitionMismatchError, compensating 'a'; not fail with an internal KeyError and
    leave 'a' undone."""
    log: list[str] = []

    async def a(ctx: tf.WorkflowContext) -> str:
        log.append("a")
        return "a"

    async def undo_a(ctx: tf.WorkflowContext, r: str) -> None:
        log.append("undo a")

    async def flaky(ctx: tf.WorkflowContext) -> None:
        raise RuntimeError("flaky")

    def wf(kind: str) -> tf.WorkflowDefinition:
        b = tf.workflow("w").step("a", a, undo_a)
        if kind == "wait":
            b = b.wait("nap", seconds=1000)
        elif kind == "receive":
            b = b.receive("nap", signal="go")
        else:
            b = b.step("nap", flaky, retry=tf.Retry(max_attempts=3, interval=1000, max_interval=1000))
        return b.pass_("after", result="done").build()

    db = tmp_path / "k.db"
    async with open_test_engine(adapter=SQLiteAdapter(db)) as engine:
        engine.register(wf(change[0]))
        await engine.start("w", None, instance_id="w")
        await trio.sleep(10)
    async with open_test_engine(adapter=SQLiteAdapter(db)) as engine:
        engine.register(wf(change[1]))
        await trio.sleep(2000)
        if change[0] == "receive":
            await engine.signal("w", "go", 1)  # wakes it
        with trio.fail_after(5000):
            done = await engine.wait("w")
    assert "internal error" not in (done.error or ""), done.error
    assert done.status in ("completed", "failed")
    if done.status == "failed":
        assert done.error_name == "DefinitionMismatchError", done.error
        assert done.compensated_steps == ("a",) and log == ["a", "undo a"], (done.compensated_steps, log)


class _Counting(SQLiteAdapter):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.checkpoints = 0

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        self.checkpoints += 1
        return await super().checkpoint(*args, **kwargs)


def _parent(log: list[str], kid: str) -> tf.WorkflowDefinition:
    async def a(ctx: tf.WorkflowContext) -> str:
        log.append("a")
        return "a"

    async def undo_a(ctx: tf.WorkflowContext, r: str) -> None:
        log.append("undo a")

    async def task(ctx: tf.WorkflowContext) -> str:
        log.append("kid task")
        return "task"

    b = tf.workflow("p").step("a", a, undo_a)
    b = {"child": lambda: b.child("kid", workflow="c"),
         "task": lambda: b.step("kid", task),
         "wait": lambda: b.wait("kid", seconds=5),
         "receive": lambda: b.receive("kid", signal="go"),
         "child2": lambda: b.child("kid", workflow="c2")}[kid]()
    return b.step("after", lambda ctx: log.append("after")).build()


def _children(log: list[str]) -> list[tf.WorkflowDefinition]:
    async def rc(ctx: tf.WorkflowContext) -> str:
        log.append("rc")
        return "rc"

    async def undo_rc(ctx: tf.WorkflowContext, r: str) -> None:
        log.append("undo rc")

    return [tf.workflow("c").step("rc", rc, undo_rc).receive("r", signal="go").build(),
            tf.workflow("c2").pass_("x", result="c2").build()]


@pytest.mark.parametrize("to", ["task", "wait", "receive", "child2"])
async def test_parent_waiting_on_child_whose_step_changed_kind(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, to: str) -> None:
    """v1's child step 'kid' is, in v2, a task / wait / receive step (or a child step of another
    workflow). The parent, taken up under v2, must not leave its child running for ever, must
    not crash with an internal error, must compensate what it can, and must not spin."""
    log: list[str] = []
    db = tmp_path / "r.db"
    async with open_test_engine(adapter=SQLiteAdapter(db)) as engine:
        engine.register(_parent(log, "child"))
        for wf in _children(log):
            engine.register(wf)
        await engine.start("p", None, instance_id="p")
        await trio.sleep(5)  # the parent waits on its child, which waits for "go"
    adapter = _Counting(db)
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_parent(log, to))
        for wf in _children(log):
            engine.register(wf)
        with trio.fail_after(3600):
            while True:
                p = await engine.get_instance("p")
                # (a spinning parent keeps the SQLite writer busy: virtual time then crawls)
                if p.status != "running" or trio.current_time() > 1000 or adapter.checkpoints > 200:
                    break
                await trio.sleep(10)
        assert adapter.checkpoints < 50, f"{adapter.checkpoints} checkpoints in {trio.current_time():.0f} s: the parent spins"
        if p.status == "running" and to == "receive":
            await engine.signal("p", "go", "for the parent")
            with trio.fail_after(3600):
                p = await engine.wait("p")
        if to == "child2":
            # The execution waits for the child it started (on workflow 'c'), as it began.
            assert p.status == "running" and p.waiting is not None and p.waiting.get("child") == "p/kid#1", p
            await engine.signal("p/kid#1", "go", "for the child")
            with trio.fail_after(3600):
                p = await engine.wait("p")
            assert p.status == "completed" and p.step_results["kid"].output == "for the child", p
        await trio.sleep(10)
        c = await engine.get_instance("p/kid#1")
    assert p.status in ("failed", "completed"), p
    assert "internal error" not in (p.error or ""), p.error
    if p.status == "failed":
        assert p.compensated_steps == ("a",), (p.error, p.compensated_steps, log)
    assert c is not None and c.status != "running", f"child left {c.status} by a parent that ended {p.status}: {p.error}"


# -- 3. a redeployed receive step that waits for another signal name ---------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_receive_whose_signal_name_changed_takes_the_one_it_stored_and_says_so(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str) -> None:
    """An instance waits (out of memory) at receive step 'r' for signal 'go'; the redeployed
    definition's 'r' waits for 'go2'. The execution under way keeps what it stored: its
    ``waiting`` says 'go', a 'go2' sent stays pending, and 'go' ends it (it waited for ever,
    whatever was sent)."""
    memory = MemoryAdapter()

    def adapter() -> Any:
        return memory if kind == "memory" else SQLiteAdapter(tmp_path / "s.db")

    async with open_test_engine(adapter=adapter()) as engine:
        engine.register(tf.workflow("w").receive("r", signal="go").build())
        await engine.start("w", None, instance_id="w")
        await trio.sleep(10)
    async with open_test_engine(adapter=adapter()) as engine:
        engine.register(tf.workflow("w").receive("r", signal="go2").build())
        await trio.sleep(10)
        await engine.signal("w", "go2", "go2")
        await trio.sleep(10)
        stuck = await engine.get_instance("w")
        assert stuck is not None and stuck.status == "running" and stuck.waiting == {"signal": "go", "timeout": None}
        await engine.signal("w", "go", "go")
        with trio.fail_after(1000):
            done = await engine.wait("w")
    assert (done.status, done.output) == ("completed", "go"), done
