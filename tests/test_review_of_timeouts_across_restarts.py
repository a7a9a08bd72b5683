"""From a review written as a user who relies on timeouts (workflow, step, receive, retry
delays, children, compensation) across SQLite restarts: no bug found; two guards of the most
fragile interplay seen (a deadline that passes while no engine runs)."""
from __future__ import annotations

from pathlib import Path

import trio
import trioflow as tf
from trioflow.testing import open_test_engine


async def test_retry_delay_past_deadline_while_engine_down_times_out_once(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A user gives a step a 20 s retry delay inside a 10 s workflow timeout, and the engine is
    down from t=3 to t=50 (past both the deadline and the retry's due time). They expect, as with
    Step Functions' TimeoutSeconds, the instance to end timed_out without a second attempt, the
    completed step compensated exactly once, and wait()/get_instance()/events to agree.
    Guard test: this holds today."""
    calls: list[str] = []

    async def ok(ctx: tf.WorkflowContext) -> int:
        calls.append("ok")
        return 1

    async def undo(ctx: tf.WorkflowContext, result: object) -> None:
        calls.append("undo")

    async def boom(ctx: tf.WorkflowContext) -> None:
        calls.append(f"boom{tf.current_step().attempt}")
        raise ConnectionError("down")

    wf = (tf.workflow("r4").step("a", ok, undo)
          .step("b", boom, retry=tf.Retry(max_attempts=3, interval=20, max_interval=100))
          .with_timeout(10).build())
    path = str(tmp_path / "flows.db")
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        iid = await engine.start("r4", {})
        await trio.sleep(3)
        assert (await engine.get_instance(iid)).waiting["attempt"] == 1  # type: ignore[union-attr,index]
    await trio.sleep(47)
    events: list[dict[str, object]] = []
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.events.on("workflow.*", events.append)
        engine.register(wf)
        done = await engine.wait(iid)
        viewed = await engine.get_instance(iid)
    assert done.status == "timed_out" and done.error_name == "WorkflowTimeoutError"
    assert viewed is not None and viewed.status == "timed_out"
    assert calls == ["ok", "boom1", "undo"]
    assert done.compensated_steps == ("a",)
    assert [e["event"] for e in events if e["event"] in ("workflow.timed_out", "workflow.failed")] == ["workflow.timed_out"]


async def test_child_timeout_while_engine_down_is_caught_by_name(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A parent (100 s timeout) runs a child with its own 10 s timeout that waits on a timer;
    the engine is down from t=5 to t=50. The user expects the child to end timed_out (its
    completed step compensated once) and the parent's catch on "WorkflowTimeoutError" to route
    to the fallback, as docs/fanout.md says a child's error is caught by its name.
    Guard test: this holds today."""
    calls: list[str] = []

    async def ok(ctx: tf.WorkflowContext) -> int:
        calls.append(tf.current_step().step_name)
        return 1

    async def undo(ctx: tf.WorkflowContext, result: object) -> None:
        calls.append("undo-" + tf.current_step().step_name)

    child = tf.workflow("ch").step("c1", ok, undo).wait("cw", seconds=100).with_timeout(10).build()
    parent = (tf.workflow("pc").step("a", ok, undo)
              .child("k", workflow="ch", catch=tf.Catch(errors=["WorkflowTimeoutError"], next="fb"))
              .succeed("d").step("fb", ok, end=True).with_timeout(100).build())
    path = str(tmp_path / "flows.db")
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(child)
        engine.register(parent)
        iid = await engine.start("pc", {})
        await trio.sleep(5)
    await trio.sleep(45)
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(child)
        engine.register(parent)
        done = await engine.wait(iid)
        kid = await engine.get_instance(done.children[0])
    assert done.status == "completed"
    assert done.step_results["k"].status == "caught"
    assert done.step_results["k"].error_name == "WorkflowTimeoutError"
    assert kid is not None and kid.status == "timed_out" and kid.compensated_steps == ("c1",)
    assert calls == ["a", "c1", "undo-c1", "fb"]
