"""Hooks (README "Events and hooks") under cancels, timeouts, fail-fast, children, slots,
waits out of memory, close/reopen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine, virtual_wall_clock


class Calls:
    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []

    def hooks(self, tag: str = "") -> dict[str, Any]:
        def on_start(ctx: Any) -> None:
            self.log.append((tag + "start", ctx.metadata.id))

        def on_step_complete(name: str, output: Any, ctx: Any) -> None:
            self.log.append((tag + "step", name, ctx.metadata.id))

        def on_step_failed(name: str, error: Any, ctx: Any) -> None:
            self.log.append((tag + "stepfail", name, ctx.metadata.id))

        def on_compensate(name: str, ctx: Any) -> None:
            self.log.append((tag + "comp", name, ctx.metadata.id))

        def on_complete(result: Any) -> None:
            self.log.append((tag + "complete", result.instance_id, result.status))

        def on_failed(result: Any) -> None:
            self.log.append((tag + "failed", result.instance_id, result.status))

        return dict(on_start=on_start, on_step_complete=on_step_complete, on_step_failed=on_step_failed,
                    on_compensate=on_compensate, on_complete=on_complete, on_failed=on_failed)

    def kinds(self, iid: str | None = None) -> list[tuple[Any, ...]]:
        return [c for c in self.log if iid is None or iid in c]


async def ok(ctx: Any) -> str:
    return "ok"


async def undo(ctx: Any, result: Any) -> None:
    pass


async def hog(ctx: Any) -> None:
    await trio.sleep(100)


async def boom(ctx: Any) -> None:
    await trio.sleep(1)
    raise RuntimeError("boom")


async def test_queued_cancel_nothing_to_undo(autojump_clock: trio.testing.MockClock) -> None:
    """Pin: queued for the only slot and cancelled before its first step: on_failed only (no on_start)."""
    c = Calls()
    wf = tf.workflow("w").step("a", ok, undo).with_hooks(**c.hooks()).build()
    with trio.fail_after(5000):
        async with open_test_engine(max_running=1, clock=virtual_wall_clock()) as engine:
            engine.register(wf)
            engine.register(tf.workflow("hog").step("h", hog).build())
            await engine.start("hog")
            iid = await engine.start("w")
            assert await engine.cancel(iid)
            inst = await engine.wait(iid)
            await trio.sleep(1)
    assert inst.status == "cancelled"
    assert c.kinds(iid) == [("failed", iid, "cancelled")]


async def test_delayed_cancel(autojump_clock: trio.testing.MockClock) -> None:
    """Pin: cancelled while it waits for a delayed start: on_failed only (no on_start)."""
    c = Calls()
    wf = tf.workflow("w").step("a", ok, undo).with_hooks(**c.hooks()).build()
    with trio.fail_after(5000):
        async with open_test_engine(clock=virtual_wall_clock()) as engine:
            engine.register(wf)
            iid = await engine.start("w", delay=50)
            await trio.sleep(10)
            assert await engine.cancel(iid)
            inst = await engine.wait(iid)
            await trio.sleep(1)
    assert inst.status == "cancelled"
    assert c.kinds(iid) == [("failed", iid, "cancelled")]


async def test_timeout_while_parked(autojump_clock: trio.testing.MockClock) -> None:
    """Pin: timed out while waiting out of memory on a timer: on_compensate then on_failed(timed_out), once each."""
    c = Calls()
    wf = tf.workflow("w").step("a", ok, undo).wait("t", seconds=1000).step("b", ok).with_timeout(100).with_hooks(**c.hooks()).build()
    with trio.fail_after(5000):
        async with open_test_engine(clock=virtual_wall_clock()) as engine:
            engine.register(wf)
            iid = await engine.start("w")
            inst = await engine.wait(iid)
            await trio.sleep(1)
    assert inst.status == "timed_out"
    assert c.kinds(iid) == [("start", iid), ("step", "a", iid), ("comp", "a", iid), ("failed", iid, "timed_out")]


async def test_cancel_parked_receive(autojump_clock: trio.testing.MockClock) -> None:
    """Pin: cancelled while parked in a receive: on_compensate then on_failed(cancelled), once each."""
    c = Calls()
    wf = tf.workflow("w").step("a", ok, undo).receive("r", signal="go").step("b", ok).with_hooks(**c.hooks()).build()
    with trio.fail_after(5000):
        async with open_test_engine(clock=virtual_wall_clock()) as engine:
            engine.register(wf)
            iid = await engine.start("w")
            await trio.sleep(100)
            assert await engine.cancel(iid)
            inst = await engine.wait(iid)
            await trio.sleep(1)
    assert inst.status == "cancelled"
    assert c.kinds(iid) == [("start", iid), ("step", "a", iid), ("comp", "a", iid), ("failed", iid, "cancelled")]


async def test_child_cancelled_with_parent_hooks_each_once(autojump_clock: trio.testing.MockClock) -> None:
    """Pin: a parent cancelled while its child runs: child's on_compensate then on_failed
    (cancelled), once each; the parent's on_compensate and on_failed once."""
    c = Calls()
    child = tf.workflow("c").step("ca", ok, undo).step("ch", hog).with_hooks(**c.hooks("c.")).build()
    parent = tf.workflow("p").step("pa", ok, undo).child("kid", workflow="c").with_hooks(**c.hooks("p.")).build()
    with trio.fail_after(5000):
        async with open_test_engine(clock=virtual_wall_clock()) as engine:
            engine.register(child)
            engine.register(parent)
            iid = await engine.start("p")
            await trio.sleep(10)
            assert await engine.cancel(iid)
            inst = await engine.wait(iid)
            await trio.sleep(1)
    kid = iid + "/kid#1"
    assert inst.status == "cancelled"
    assert c.log == [("p.start", iid), ("p.step", "pa", iid), ("c.start", kid), ("c.step", "ca", kid),
                     ("c.comp", "ca", kid), ("c.failed", kid, "cancelled"), ("p.comp", "pa", iid),
                     ("p.failed", iid, "cancelled")]


async def test_children_queued_for_a_slot_never_start(autojump_clock: trio.testing.MockClock) -> None:
    """Pin: max_running=1, the child queued behind a hog; its parent cancelled, its parent
    timed out, or the child cancelled itself: the child ends cancelled with on_failed only
    (no on_start), the parent's hooks once each."""
    for how in ("cancel_parent", "cancel_child", "timeout"):
        c = Calls()
        child = tf.workflow("c").step("ca", ok, undo).with_hooks(**c.hooks("c.")).build()
        pb = tf.workflow("p").step("pa", ok, undo).child("kid", workflow="c")
        if how == "timeout":
            pb = pb.with_timeout(50)
        parent = pb.with_hooks(**c.hooks("p.")).build()
        with trio.fail_after(5000):
            async with open_test_engine(max_running=1, clock=virtual_wall_clock()) as engine:
                engine.register(child)
                engine.register(parent)
                engine.register(tf.workflow("hog").step("h", hog).build())
                iid = await engine.start("p")
                await engine.start("hog")
                await trio.sleep(10)
                if how == "cancel_parent":
                    assert await engine.cancel(iid)
                elif how == "cancel_child":
                    assert await engine.cancel(iid + "/kid#1")
                inst = await engine.wait(iid)
                await trio.sleep(1)
                kid = await engine.get_instance(iid + "/kid#1")
        assert kid.status == "cancelled" and kid.started_at is None
        expected = {"cancel_parent": "cancelled", "cancel_child": "failed", "timeout": "timed_out"}[how]
        assert inst.status == expected
        assert [x for x in c.log if x[0].startswith("c.")] == [("c.failed", kid.id, "cancelled")], how
        assert [x[0] for x in c.log if x[0].startswith("p.")] == (
            ["p.start", "p.step"] + (["p.stepfail"] if how == "cancel_child" else []) + ["p.comp", "p.failed"]), how


async def test_queued_cancel_with_undo_across_reopen(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Pin: woken from a timer into the queue (max_running=1), cancelled there, engine closed
    before it gets a slot; the next engine compensates: on_compensate once, on_failed once, no
    second on_start."""
    c = Calls()
    wf = tf.workflow("w").step("a", ok, undo).wait("t", seconds=15).step("b", ok).with_hooks(**c.hooks()).build()
    clock = virtual_wall_clock()
    db = tmp_path / "q.db"
    with trio.fail_after(5000):
        async with open_test_engine(max_running=1, clock=clock, adapter=tf.adapters.SQLiteAdapter(db)) as engine:
            engine.register(wf)
            engine.register(tf.workflow("hog").step("h", hog).build())
            iid = await engine.start("w")
            await trio.sleep(10)
            await engine.start("hog")
            await trio.sleep(6)
            assert await engine.cancel(iid)
            await trio.sleep(5)
        async with open_test_engine(max_running=1, clock=clock, adapter=tf.adapters.SQLiteAdapter(db)) as engine:
            engine.register(wf)
            engine.register(tf.workflow("hog").step("h", hog).build())
            inst = await engine.wait(iid)
            await trio.sleep(1)
    assert inst.status == "cancelled"
    assert c.log == [("start", iid), ("step", "a", iid), ("comp", "a", iid), ("failed", iid, "cancelled")]


async def test_close_during_each_async_hook_then_reopen(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Pin: an engine closed while an async hook sleeps. on_step_complete cut is not run again
    for that execution; on_compensate runs again before the compensation runs again;
    on_complete/on_failed are let finish by the close and not run again."""
    expected = {
        "on_step_complete": [("on_step_complete", "a"), ("on_step_complete", "b"), "done"],
        "on_compensate": [("on_compensate", "a"), ("on_compensate", "a"), "done"],
        "on_complete": [("on_complete", None), "done"],
        "on_failed": [("on_failed", None), "done"],
    }
    for which, want in expected.items():
        calls: list[Any] = []

        async def h(*args: Any) -> None:
            calls.append((which, args[0] if isinstance(args[0], str) else None))
            await trio.sleep(10)
            calls.append("done")

        fails = which in ("on_compensate", "on_failed")
        wf = tf.workflow("w").step("a", ok, undo).step("b", boom if fails else ok).with_hooks(**{which: h}).build()
        clock = virtual_wall_clock()
        db = tmp_path / f"{which}.db"
        with trio.fail_after(5000):
            async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock) as engine:
                engine.register(wf)
                iid = await engine.start("w")
                await trio.sleep(3)
            async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock) as engine:
                engine.register(wf)
                inst = await engine.wait(iid)
                await trio.sleep(20)
        assert inst.status == ("failed" if fails else "completed")
        assert calls == want, which


async def test_on_failed_error_of_a_cancel_made_in_this_engine_while_queued(
        autojump_clock: trio.testing.MockClock) -> None:
    """WorkflowResult.error is "the exception that ended the run"; RecordedError is meant for a
    run that "ended before this process saw the exception itself (a resumed instance's)"
    (actors/_run.py Run.result). An instance cancelled here while parked in a receive gets a
    WorkflowCancelledError in on_failed. One cancelled here while queued for a max_running slot
    with steps to undo (same process, no restart) gets a RecordedError instead, so
    ``isinstance(result.error, tf.WorkflowCancelledError)`` in on_failed depends on whether the
    instance happened to be queued."""
    got: list[Any] = []
    hooks = dict(on_failed=got.append)
    wq = tf.workflow("w").step("a", ok, undo).wait("t", seconds=15).step("b", ok).with_hooks(**hooks).build()
    wr = tf.workflow("r").step("a", ok, undo).receive("rr", signal="go").step("b", ok).with_hooks(**hooks).build()
    with trio.fail_after(5000):
        async with open_test_engine(max_running=1, clock=virtual_wall_clock()) as engine:
            engine.register(wq)
            engine.register(wr)
            engine.register(tf.workflow("hog").step("h", hog).build())
            r = await engine.start("r")
            await trio.sleep(50)
            assert await engine.cancel(r)
            assert (await engine.wait(r)).status == "cancelled"
            q = await engine.start("w")
            await trio.sleep(10)
            await engine.start("hog")
            await trio.sleep(6)  # its timer woke it: queued behind the hog, "a" to undo
            assert await engine.cancel(q)
            assert (await engine.wait(q)).status == "cancelled"
            await trio.sleep(1)
    by_id = {res.instance_id: res for res in got}
    assert isinstance(by_id[r].error, tf.WorkflowCancelledError)
    assert by_id[q].compensated_steps == ("a",)
    assert isinstance(by_id[q].error, tf.WorkflowCancelledError), type(by_id[q].error)
