"""Adversarial review of map steps under pressure: cancels, timeouts, retries, restarts and
``max_running`` slot pressure (review of map steps, SPEC §14, README "Events and hooks",
docs/fanout.md "Waiting").

The tests marked "FAILS today" show a bug; those marked "passes today; pins ..." keep behaviour
worth keeping.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


def open_steps(events: list[dict[str, Any]], instance_id: str) -> set[tuple[str, str]]:
    """``(lane, step)`` of the steps of ``instance_id`` that published ``workflow.step.started``
    and never an end (completed, failed or caught)."""
    started: set[tuple[str, str]] = set()
    ended: set[tuple[str, str]] = set()
    for event in events:
        if event.get("instance_id") != instance_id:
            continue
        key = (str(event.get("lane", "")), str(event.get("step_name")))
        if event["event"] == "workflow.step.started":
            started.add(key)
        elif event["event"] in ("workflow.step.completed", "workflow.step.failed", "workflow.step.caught"):
            ended.add(key)
    return started - ended


async def hog(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(100)


HOG = tf.workflow("hog").step("h", hog).build()


# -- a cancel that reaches a map while every slot is taken ----------------------------------------


async def test_cancel_of_a_parked_map_queued_for_a_slot_publishes_the_ends_of_its_open_steps(
        autojump_clock: trio.testing.MockClock) -> None:
    """FAILS today. README (Events): "a step of any kind cut short by a cancel ... has [a
    workflow.step.failed] too, error_name "Cancelled", once the end that cut it is stored, whether
    it ran in memory or waited out of it (in a branch or a map item too ...)". A monitoring
    service closes its open spans on those events.

    A map whose items wait for a signal leaves memory; another instance then holds the only
    ``max_running`` slot, and the map is cancelled. Without the other instance (or with a free
    slot) the map step and both items' receive steps publish ``workflow.step.failed``
    (Cancelled). With the slot taken, the cancel goes through the queued-run path
    (``Engine._store_queued_cancel`` -> ``actors._instance.store_queued_cancel``), which stores
    the decision and compensates later without publishing any end for the steps it cut short:
    ``each``, ``each/#0 r`` and ``each/#1 r`` stay open for ever."""
    wf = (tf.workflow("w")
          .map("each", items=lambda ctx: [1, 2], branch=tf.branch("b").receive("r", signal="go").build())
          .build())
    events: list[dict[str, Any]] = []
    async with open_test_engine(max_running=1, clock=virtual_wall_clock()) as engine:
        engine.events.on("workflow.*", events.append)
        engine.register(wf)
        engine.register(HOG)
        iid = await engine.start("w", None)
        await trio.sleep(10)  # both items rest: the instance leaves memory
        await engine.start("hog", None)
        await trio.sleep(1)  # the hog holds the only slot
        assert await engine.cancel(iid)
        with trio.fail_after(1000):
            inst = await engine.wait(iid)
    assert inst.status == "cancelled"
    assert open_steps(events, iid) == set()


async def test_cancel_of_a_map_queued_for_a_slot_records_its_items_steps_between_attempts(
        autojump_clock: trio.testing.MockClock) -> None:
    """FAILS today. README (Events) and 4c9353c: a task step between attempts cut short by a
    cancel, in a map item too, is recorded cut short ("Cancelled: cancelled while running") with
    the attempts it made, as in memory. With a free slot, cancelling the map below records
    ``each/#0/f#1`` and ``each/#1/f#1`` failed with ``Cancelled`` (and publishes their ends). With
    the only slot taken by another instance, the same cancel records neither: the history says
    the items' ``f`` never ran, though each made an attempt (``workflow.step.retry`` was
    published for it). Same cause as the test above: ``store_queued_cancel`` calls
    ``begin_compensation`` without recording ``steps_under_way`` as ``Engine._cancel_stored``
    does (runtime/_engine.py, the ``cut_short_execution`` loop)."""
    undone: Counter[int] = Counter()

    async def a(ctx: tf.WorkflowContext) -> Any:
        return ctx.item

    async def undo_a(ctx: tf.WorkflowContext, result: Any) -> None:
        undone[ctx.item_index] += 1

    async def flaky(ctx: tf.WorkflowContext) -> None:
        raise OSError("down")

    wf = (tf.workflow("w")
          .map("each", items=lambda ctx: [1, 2], branch=tf.branch("b")
               .step("a", a, undo_a)
               .step("f", flaky, retry=tf.Retry(max_attempts=5, interval=30)).build())
          .build())

    async def cancelled_history(slot_taken: bool) -> list[tuple[str, str, int, str | None]]:
        async with open_test_engine(max_running=1, clock=virtual_wall_clock()) as engine:
            engine.register(wf)
            engine.register(HOG)
            iid = await engine.start("w", None)
            await trio.sleep(10)  # each item waits 30 s for its next attempt, out of memory
            if slot_taken:
                await engine.start("hog", None)
                await trio.sleep(1)
            assert await engine.cancel(iid)
            with trio.fail_after(1000):
                inst = await engine.wait(iid)
        assert inst.status == "cancelled"
        return sorted((h.id, h.status, h.attempts, h.error_name) for h in inst.history)

    free = await cancelled_history(slot_taken=False)
    assert ("each/#0/f#1", "failed", 1, "Cancelled") in free  # (as in memory)
    assert await cancelled_history(slot_taken=True) == free
    assert undone == Counter({0: 2, 1: 2})  # (each item's ``a`` undone once per run)


# -- max_running slot pressure: children queued before a wait-all branch fails -------------------


async def _kid_work(ctx: tf.WorkflowContext) -> Any:
    await trio.sleep(3)
    return ctx.input


async def _sibling_fails(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(8)
    raise ValueError("sibling fails")


KID = tf.workflow("kid").step("work", _kid_work).build()


@pytest.mark.parametrize("shape", ["map in a wait-all parallel branch", "wait-all parallel in a map item"])
async def test_children_queued_before_a_wait_all_branch_fails_do_not_deadlock_with_max_running_1(
        autojump_clock: trio.testing.MockClock, shape: str) -> None:
    """FAILS today (hangs; fail_after turns it into TooSlowError). docs/fanout.md: "A parent that
    cannot leave memory (... one with a parallel branch that failed for good while its siblings
    run on) runs its children in its slot instead (they start at once, whatever max_running
    says)"; docs/waiting.md: "A branch that failed for good in a wait-all parallel step keeps it
    in memory until its siblings end (the children they wait on run in its slot meanwhile, so
    that they never wait for one it holds)".

    With ``max_running=1``, the map's child steps start while a sibling lane runs a task step,
    which holds the slot ("its children queue meanwhile"). At t=8 the sibling fails for good:
    the wait-all parallel step now keeps the parent in memory, in the only slot, but the
    children queued before that are never moved into it. They stay ``pending`` and the parent
    ``running`` for ever. With ``max_running=2`` the same workflow fails with ``ParallelError``
    at t=8. Likely cause: ``Children.lend_slot`` (runtime/_children.py) is called only as a
    wait that cannot park begins (actors/_wait.py, run_receive / the child wait); a child wait
    that began resting before ``Run.note_failed_branch`` (actors/_run.py) made the run
    unparkable is never looked at again."""
    if shape == "map in a wait-all parallel branch":
        wf = (tf.workflow("p")
              .parallel("par", on_error="wait-all", branches=[
                  tf.branch("m").map("each", items=lambda ctx: [1, 2],
                                     branch=tf.branch("ib").child("c", workflow="kid").build()).build(),
                  tf.branch("s").step("sib", _sibling_fails).build()])
              .build())
    else:
        wf = (tf.workflow("p")
              .map("each", items=lambda ctx: [0, 1], branch=tf.branch("ib").parallel("par", on_error="wait-all", branches=[
                  tf.branch("m").child("c", workflow="kid").build(),
                  tf.branch("s").step("sib", _sibling_fails).build()]).build())
              .build())
    async with open_test_engine(max_running=1, clock=virtual_wall_clock()) as engine:
        engine.register(KID)
        engine.register(wf)
        iid = await engine.start("p", None)
        with trio.fail_after(500):
            inst = await engine.wait(iid)
        kids = [await engine.get_instance(c) for c in inst.children]
    assert inst.status == "failed"
    assert inst.error_name == "ParallelError"
    # Every child ran and completed; the failed parent then undid each as a unit.
    assert [k.status for k in kids if k is not None] == ["compensated"] * len(kids) != []


# -- pins --------------------------------------------------------------------------------------------


async def test_cancel_closed_mid_compensation_then_reopened_undoes_every_completed_item_once(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """Passes today; pins that a cancel reaching a map of task and child steps (items in a
    durable retry delay, ``max_concurrency`` below the item count, ``max_running=1``), with the
    engine closed in the middle of the compensation and a new one opened on the same SQLite file,
    finishes every compensation exactly once (one in flight at the close runs again; none that
    returned does), ends the instance ``cancelled`` and leaves no child running."""
    done: Counter[str] = Counter()

    async def a(ctx: tf.WorkflowContext) -> Any:
        await trio.sleep(ctx.item_index)
        return ctx.item

    async def undo_a(ctx: tf.WorkflowContext, result: Any) -> None:
        await trio.sleep(2)
        done[f"a{ctx.item_index}"] += 1

    async def kid_a(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(5)
        return 1

    async def kid_undo(ctx: tf.WorkflowContext, result: Any) -> None:
        await trio.sleep(1)
        done[ctx.metadata.id] += 1

    async def down(ctx: tf.WorkflowContext) -> None:
        raise OSError("down")

    kid = tf.workflow("kid").step("ka", kid_a, kid_undo).build()
    wf = (tf.workflow("w")
          .map("each", items=lambda ctx: list(range(4)), max_concurrency=3, branch=tf.branch("b")
               .step("a", a, undo_a).child("c", workflow="kid")
               .step("f", down, retry=tf.Retry(max_attempts=5, interval=30)).build())
          .build())
    clock = virtual_wall_clock()
    path = tmp_path / "map.db"
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock, max_running=1) as engine:
        engine.register(wf)
        engine.register(kid)
        iid = await engine.start("w", None)
        await trio.sleep(40)  # three items wait for their next attempt; their children completed
        assert await engine.cancel(iid)
        await trio.sleep(1.5)  # mid-compensation
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock, max_running=1) as engine:
        engine.register(wf)
        engine.register(kid)
        with trio.fail_after(1000):
            inst = await engine.wait(iid)
        kids = [await engine.get_instance(c) for c in inst.children]
        unfinished = [i.id for i in await engine.get_instances() if i.status in ("running", "pending")]
    assert inst.status == "cancelled"
    assert unfinished == []
    assert sorted(k.status for k in kids if k is not None) == ["compensated"] * 3
    assert set(done.values()) == {1} and len(done) == 6  # a0-a2 and the three children


async def test_a_restart_among_durable_retry_delays_keeps_max_concurrency_and_item_order(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """Passes today; pins that a map whose items wait out durable retry delays, taken up by a
    new engine on the same file, still runs no more than ``max_concurrency`` items at once,
    counts attempts across the restart, and gives its outputs in item order."""
    attempts: Counter[int] = Counter()
    running: set[int] = set()
    most = 0

    async def work(ctx: tf.WorkflowContext) -> int:
        nonlocal most
        attempts[ctx.item_index] += 1
        running.add(ctx.item_index)
        most = max(most, len(running))
        try:
            await trio.sleep(1 + ctx.item_index % 3)
            if ctx.item_index % 2 and attempts[ctx.item_index] < 2:
                raise OSError("flaky")
        finally:
            running.discard(ctx.item_index)
        return int(ctx.item) * 10

    wf = (tf.workflow("w")
          .map("each", items=lambda ctx: list(range(7)), max_concurrency=2,
               branch=tf.branch("b").step("s", work, retry=tf.Retry(max_attempts=3, interval=20)).build())
          .build())
    clock = virtual_wall_clock()
    path = tmp_path / "map.db"
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(wf)
        iid = await engine.start("w", None)
        await trio.sleep(12)  # items 1 and 3 wait out their retry delays
    running.clear()
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(wf)
        with trio.fail_after(1000):
            inst = await engine.wait(iid)
    assert inst.status == "completed"
    assert inst.output == [i * 10 for i in range(7)]
    assert most <= 2
    assert all(attempts[i] == (2 if i % 2 else 1) for i in range(7))
