"""Regressions and incomplete fixes a second review of a session's fixes found (a test each, on
MemoryAdapter and SQLite): children of parents cancelled or failed while their engine closed,
held for missing jobs, or no longer fitting their definition; a child undone once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


def _adapter_factory(storage: str, tmp_path: Path) -> Any:
    memory = MemoryAdapter()
    return lambda: memory if storage == "memory" else SQLiteAdapter(tmp_path / "flows.db")


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_cancelling_a_queued_parent_whose_child_completed_compensates_the_child_once(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str) -> None:
    """docs/fanout.md (Cancel / Nested sagas) and SPEC §1: a cancelled parent cancels the child
    it waits on; a child that completed all the same is compensated as a unit, each of its
    compensations exactly once. Here the parent, resumed and queued for a slot, is cancelled
    while the child it waits on has completed (its end notice not yet taken): Engine.cancel
    stores the cancel and starts a task to cancel (= undo) the child; when the parent gets its
    slot, run_instance (compensating) calls cancel_children again, because begin_compensation
    now keeps the lane's child wait: the child's undo runs twice at once, and its
    compensation 'k' runs twice ('undo-k' x2).
    Expected: 'k' compensated once. Likely cause: runtime/_engine.py Engine.cancel (queued
    branch) cancels the children itself and stores them still waited on; actors/_instance.py
    run_instance cancels them again, and Engine._undo_child has no guard against a concurrent undo."""
    log: list[str] = []

    async def k(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1)
        log.append("k")
        return "k"

    async def undo_k(ctx: tf.WorkflowContext, result: Any) -> None:
        log.append("undo-k")
        await trio.sleep(5)

    async def a(ctx: tf.WorkflowContext) -> str:
        return "a"

    async def block(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(2)
        return "b"

    kid = tf.workflow("kid").step("k", k, undo_k).build()
    parent = tf.workflow("p").step("a", a).child("c", workflow="kid").build()
    blocker = tf.workflow("b").step("bs", block).build()
    adapter = _adapter_factory(storage, tmp_path)
    clock = virtual_wall_clock()
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.register(kid)
        engine.register(parent)
        pid = await engine.start("p")
        await trio.sleep(0.5)  # the parent waits (parked) on the child, which runs k
    log.clear()
    async with open_test_engine(adapter=adapter(), clock=clock, max_running=2) as engine:
        engine.register(blocker)
        await engine.start("b")                    # slot 1
        engine.register(kid)                        # the child resumes in slot 2 and completes
        await trio.sleep(1.2)
        assert (await engine.get_instance(f"{pid}/c#1")).status == "completed"  # type: ignore[union-attr]
        await engine.start("b")                    # slot 2 again (until t+2)
        engine.register(parent)                     # resumed: queued for a slot, the notice pending
        await trio.testing.wait_all_tasks_blocked()
        assert await engine.cancel(pid)
        with trio.fail_after(100):
            inst = await engine.wait(pid)
            await trio.sleep(20)  # any undo of the child is over
            kid_now = await engine.wait(f"{pid}/c#1")
    assert inst.status == "cancelled", inst.status
    assert kid_now.status == "compensated", kid_now.status
    assert log.count("undo-k") == 1, log


async def _slow_kid(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(100)
    return "k"


async def _ja(data: Any) -> str:
    return "a"


def _cancelled_as_engine_closes_defs() -> tuple[tf.WorkflowDefinition, tf.WorkflowDefinition]:
    kid = tf.workflow("kid").step("k", _slow_kid).build()
    parent = tf.workflow("p").task("a", job="ja", compensate="ja").child("c", workflow="kid").build()
    return kid, parent


async def _store_a_cancel_decided_as_the_engine_closes(adapter: Any, clock: Any) -> str:
    """A parent parked on its running child, cancelled right as its engine closes: the cancel
    is stored (compensating) with the lane's child wait kept for the next engine."""
    kid, parent = _cancelled_as_engine_closes_defs()
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.jobs.register("ja", _ja)
        engine.register(kid)
        engine.register(parent)
        pid = await engine.start("p")
        await trio.sleep(5)
        assert await engine.cancel(pid)
    return pid


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_a_cancelled_parent_held_for_missing_jobs_stays_held_and_compensates_once_they_are_registered(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str) -> None:
    """README (Storage and durability): an instance whose workflow's jobs are not all
    registered "is held back and resumes as soon as they are (wait() on it meanwhile raises
    InstanceNotLiveError naming the missing jobs)". A parent whose cancel was stored as its
    engine closed is now stored compensating with its lane's child wait kept
    (begin_compensation keeps it until a run cancels the child). The next engine has not
    registered the parent's job 'ja' yet and holds the parent, but:
    - wait() takes the kept child wait for a parked instance and blocks (no InstanceNotLiveError);
    - when the child ends, its end notice wakes the held parent (_wake_if_waiting matches the kept
      wait) and it compensates with 'ja' missing: step 'a''s compensation is recorded failed for
      good with UnknownJobError, and registering 'ja' later changes nothing (the refund never runs).
    Before these commits the parent stayed held and compensated 'a' once 'ja' was registered.
    Likely cause: runtime/_decide.py begin_compensation keeps lane.waiting for a child;
    runtime/_engine.py _wake_if_waiting (and Engine.wait's parked test) take it for a wait that
    resumes/parks the instance, without looking at _held / missing jobs."""
    adapter, clock = _adapter_factory(storage, tmp_path), virtual_wall_clock()
    pid = await _store_a_cancel_decided_as_the_engine_closes(adapter(), clock)
    kid, parent = _cancelled_as_engine_closes_defs()
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.register(kid)
        engine.register(parent)      # job "ja" is not registered yet: held
        await trio.sleep(1)
        early = "hung"
        with trio.move_on_after(10):
            try:
                await engine.wait(pid)
                early = "returned"
            except tf.InstanceNotLiveError as exc:
                early = f"InstanceNotLiveError: {exc}"
        await trio.sleep(200)        # the deploy registers the job later
        engine.jobs.register("ja", _ja)
        with trio.fail_after(100):
            inst = await engine.wait(pid)
        kid_now = await engine.get_instance(inst.children[0])
    assert inst.status == "cancelled", inst.status
    # (A child that completed all the same, before its cancel reached it, has its step completed
    # and compensated in the plan, newest first, listed as any compensated child step is; one
    # the cancel stopped compensated itself.)
    assert kid_now is not None and kid_now.status in ("compensated", "cancelled"), kid_now
    undone = ("c", "a") if kid_now.status == "compensated" else ("a",)
    assert inst.compensation_errors == {} and inst.compensated_steps == undone, (
        inst.compensated_steps, inst.compensation_errors, kid_now.status)
    assert early.startswith("InstanceNotLiveError") and "ja" in early, early


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_the_child_of_a_parent_cancelled_as_its_engine_closed_is_cancelled_whatever_the_registration_order(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str) -> None:
    """501395f: "the next engine cancels the children the parent waited on" (README: a parent
    that ends badly cancels the children it waits on). That holds only if the child's workflow
    is registered before the parent's is taken up. Registered the other way round (parent,
    then child a moment later), the resumed parent's cancel_children cannot cancel the child
    (EngineChildren.cancel: engine.cancel says False for an unregistered workflow, engine.wait
    raises InstanceNotLiveError, which is only logged), the lane's wait is dropped anyway and the
    parent ends 'cancelled'; the child then resumes and runs to 'completed' for good, neither
    cancelled nor compensated. Expected: the child ends cancelled (or, had it completed,
    compensated). Likely cause: actors/_child.py cancel_children clears lane.waiting (and the
    compensating run goes on) even when EngineChildren.cancel (runtime/_children.py) could not
    cancel the child."""
    adapter, clock = _adapter_factory(storage, tmp_path), virtual_wall_clock()
    pid = await _store_a_cancel_decided_as_the_engine_closes(adapter(), clock)
    kid, parent = _cancelled_as_engine_closes_defs()
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.jobs.register("ja", _ja)
        engine.register(parent)
        await trio.sleep(1)
        engine.register(kid)
        with trio.fail_after(1000):
            inst = await engine.wait(pid)
            await trio.sleep(200)
            child = await engine.wait(f"{pid}/c#1")
    assert inst.status == "cancelled", inst.status
    assert child.status in ("cancelled", "compensated"), child.status


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_a_cancelled_parent_that_no_longer_fits_its_definition_still_cancels_the_child_it_waited_on(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str) -> None:
    """A parent cancelled as its engine closed is stored compensating with its lane's child
    wait kept, so that "the next engine cancels the children the parent waited on" (501395f).
    If the next engine's release no longer has a step the parent ran (README Registration:
    such an instance "fails with DefinitionMismatchError and compensates what it can"), the
    compensating parent is failed alone (Engine._resume_one -> fail_alone) and nothing cancels
    its child: the child runs on and ends 'completed' for good, and the failed parent's view
    still says it waits on that child (WorkflowInstance.waiting is the kept child wait;
    finish() clears waits, fail_alone does not). Expected: the child is cancelled (as the
    parent's end would have it), and a failed instance waits for nothing.
    Likely cause: runtime/_engine.py _resume_one's fail_alone branch for a compensating
    instance skips cancel_children; runtime/_decide.py fail_alone keeps lane.waiting."""
    adapter, clock = _adapter_factory(storage, tmp_path), virtual_wall_clock()
    pid = await _store_a_cancel_decided_as_the_engine_closes(adapter(), clock)
    kid, _ = _cancelled_as_engine_closes_defs()
    renamed = tf.workflow("p").task("a2", job="ja", compensate="ja").child("c", workflow="kid").build()
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.jobs.register("ja", _ja)
        engine.register(kid)
        engine.register(renamed)
        with trio.fail_after(1000):
            inst = await engine.wait(pid)
            await trio.sleep(200)
            child = await engine.wait(f"{pid}/c#1")
    assert inst.status == "failed" and inst.error_name == "DefinitionMismatchError", (inst.status, inst.error)
    assert inst.waiting is None, inst.waiting
    assert child.status in ("cancelled", "compensated"), child.status


async def test_a_parent_whose_childs_workflow_is_never_registered_is_cancelled_within_its_compensation_bound(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A child's cancel waits for the child's workflow to be registered (as an engine starts up,
    after its parent's); one never registered is waited for no longer than the parent's
    compensation timeout: the parent then ends ``cancelled`` (the child stays as stored, for an
    engine that has its workflow), instead of waiting for ever."""
    async def forever(data: Any) -> None:
        await trio.sleep_forever()

    child = tf.workflow("kid").task("k", job=forever).build()
    parent = tf.workflow("p").child("c", workflow="kid").with_compensation_timeout(5).build()
    db, clock = tmp_path / "flows.db", virtual_wall_clock()
    async with open_test_engine(adapter=SQLiteAdapter(db), clock=clock) as engine:
        engine.register(parent)
        engine.register(child)
        pid = await engine.start("p")
        await trio.sleep(1)
    async with open_test_engine(adapter=SQLiteAdapter(db), clock=clock) as engine:
        engine.register(parent)  # not the child's workflow
        await trio.sleep(1)
        assert await engine.cancel(pid)
        with trio.fail_after(60):
            assert (await engine.wait(pid)).status == "cancelled"
        assert (await engine.get_instance(f"{pid}/c#1")).status == "running"  # type: ignore[union-attr]
