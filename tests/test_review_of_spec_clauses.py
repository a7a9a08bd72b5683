"""Review of SPEC.md's Semantics 1-9 and sections 11-14, by feature combinations.

Each test fails on the code as reviewed because of a deviation from the SPEC (or the docs);
its docstring quotes the clause and says what happens instead.
"""

from __future__ import annotations

import contextvars
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine, virtual_wall_clock

TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("TENANT", default="unset")


def read_tenant(ctx: tf.WorkflowContext) -> str:  # a plain def: runs in a worker thread
    return TENANT.get()


async def test_a_run_taken_up_from_storage_sees_the_engines_contextvars_never_those_of_who_woke_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """SPEC 9: "contextvars set by the caller are visible inside steps, also plain-`def` steps in
    threads". Decided (README, "contextvars"): while the run stays in memory (a short wait, a
    short retry delay) its steps see the caller's; an instance taken up from storage (a wait or
    retry delay long enough to leave memory, a receive, a restart) runs with those of the task
    that opened the engine: a caller's are not kept for days, nor restored after a restart.

    Before, a run taken up again ran with those of whatever task took it up: a step after a
    `receive` saw the values of whoever sent the signal ("tenant-of-the-signaller"), one
    tenant's context in another tenant's workflow."""
    attempts: list[str] = []

    def flaky(ctx: tf.WorkflowContext) -> str:
        attempts.append(TENANT.get())
        if len(attempts) == 1:
            raise ConnectionError("try again")
        return TENANT.get()

    TENANT.set("the-engine's")
    async with tf.open_engine(clock=virtual_wall_clock()) as engine:  # threads=True (the default)
        engine.register(tf.workflow("waits").wait("w", seconds=lambda ctx: ctx.input).step("s", read_tenant).build())
        engine.register(tf.workflow("retries").step(
            "s", flaky, retry=tf.Retry(max_attempts=2, interval=30.0)).build())
        engine.register(tf.workflow("receives").receive("r", signal="go").step("s", read_tenant).build())
        TENANT.set("tenant-a")
        short = await engine.wait(await engine.start("waits", 0.5))
        waited = await engine.wait(await engine.start("waits", 100))
        await engine.wait(await engine.start("retries"))
        receiver = await engine.start("receives")
        await trio.sleep(5)
        TENANT.set("tenant-of-the-signaller")
        await engine.signal(receiver, "go")
        received = await engine.wait(receiver)
    seen = (short.output, waited.output, attempts, received.output)
    assert seen == ("tenant-a", "the-engine's", ["tenant-a", "the-engine's"], "the-engine's"), seen


async def test_an_instance_queued_for_a_slot_never_sees_another_callers_contextvars(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """SPEC 9: "contextvars set by the caller are visible inside steps" and "no process-wide
    state: several engines can run in one process (tests, multi-tenancy)".

    With `max_running=1`, tenant A starts an instance, then tenant B starts one that waits for
    the slot. B's instance is spawned by whichever task frees the slot (A's run), so its steps
    see A's context variables: B's plain-`def` step reads "tenant-A" - one tenant's context
    leaks into another tenant's workflow."""

    async def slow(ctx: tf.WorkflowContext) -> None:
        await trio.sleep(10)

    async with tf.open_engine(clock=virtual_wall_clock(), max_running=1) as engine:
        engine.register(tf.workflow("q").step("slow", slow).step("read", read_tenant).build())
        TENANT.set("tenant-A")
        a = await engine.start("q")
        TENANT.set("tenant-B")
        b = await engine.start("q")
        outputs = ((await engine.wait(a)).output, (await engine.wait(b)).output)
    assert outputs == ("tenant-A", "tenant-B"), outputs


async def test_an_unreadable_child_snapshot_fails_the_parents_child_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """SPEC 6: "an unreadable snapshot fails that one instance with a clear error"; SPEC 14: "a
    child that fails fails the step"; SPEC 12: "Nothing is left `running` forever".

    A parent waits (parked) on a child that waits on a long timer; the engine stops and the
    child's stored header is damaged. The next engine reports the child failed
    (SnapshotDecodeError), as it should, but never tells the parent: the parent stays
    `running` for ever, `waiting={"signal": "trioflow.child-ended:...", ...}`, its child step
    never fails and its completed step `p1` is never compensated."""
    undone: list[str] = []

    async def ok(ctx: tf.WorkflowContext) -> str:
        return "done"

    async def undo(ctx: tf.WorkflowContext, result: Any) -> None:
        undone.append(tf.current_step().step_name)

    def register(engine: tf.Engine) -> None:
        engine.register(tf.workflow("kid").step("k1", ok).wait("w", seconds=1000).build())
        engine.register(tf.workflow("parent").step("p1", ok, undo).child("c", workflow="kid").build())

    adapter, clock = tf.adapters.MemoryAdapter(), virtual_wall_clock()
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        register(engine)
        await engine.start("parent", instance_id="P")
        await trio.sleep(10)
        parent = await engine.get_instance("P")
        assert parent is not None and len(parent.children) == 1
        kid_id = parent.children[0]
    stored = await adapter.load(kid_id)
    assert stored is not None
    await adapter.checkpoint(kid_id, "running", b"\xc1 not msgpack", [], first_seq=len(stored.records))

    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        register(engine)
        with trio.move_on_after(10_000):
            await engine.wait("P")
        kid = await engine.get_instance(kid_id)
        parent = await engine.get_instance("P")
    assert kid is not None and kid.status == "failed"
    assert parent is not None and parent.status == "failed" and undone == ["p1"], (
        parent.status if parent else None, parent.waiting if parent else None, undone)


async def test_a_failing_compensation_of_a_completed_child_whose_step_a_cancel_cut_short_is_on_the_result(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """SPEC 9: "a failing compensation is on the result (`compensation_errors`), not only in a
    log"; SPEC 1: "every completed step that has a compensation is compensated exactly once
    ... and `compensated_steps` lists them"; SPEC 14: "when the parent compensates, every
    completed child is compensated too".

    With `max_running=1`, a map runs two child workflows; the first child completes while its
    parent has not taken the child's end up yet (no slot), then the parent is cancelled. The
    completed child is compensated as a unit (it ends `compensated`, its compensation of `k`
    fails), but the parent's result shows nothing of it: `compensation_errors == {}`,
    `compensated_steps == ("a",)`, and its history keeps the child step `started` for ever.
    The failure is only a WARNING in the log (actors/_child.py `_undo_cancelled`)."""
    undone: list[str] = []

    async def ok(ctx: tf.WorkflowContext) -> int:
        return 1

    async def undo(ctx: tf.WorkflowContext, result: Any) -> None:
        undone.append(ctx.metadata.id)

    async def cannot_undo(ctx: tf.WorkflowContext, result: Any) -> None:
        undone.append(ctx.metadata.id)
        raise OSError("cannot undo")

    async def slow(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(50)
        return 1

    async with open_test_engine(max_running=1) as engine:
        engine.register(tf.workflow("kid").step("k", ok, cannot_undo).step("ks", slow).build())
        engine.register(tf.workflow("parent").step("a", ok, undo)
                        .map("m", items=lambda ctx: [0, 1], branch=tf.branch("b").child("c", workflow="kid").build())
                        .build())
        await engine.start("parent", instance_id="P")
        await trio.sleep(60)
        assert await engine.cancel("P")
        parent = await engine.wait("P")
        kids = [await engine.get_instance(kid) for kid in parent.children]
    compensated_kids = [kid.id for kid in kids if kid is not None and kid.status == "compensated"]
    assert parent.status == "cancelled" and compensated_kids, [(k.id, k.status) for k in kids if k]
    assert "c" in parent.compensation_errors, (
        compensated_kids, parent.compensation_errors, parent.compensated_steps,
        [(h.id, h.status) for h in parent.history])
