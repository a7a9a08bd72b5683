"""Regressions and incomplete fixes a review of a session's fixes found (a test each): cancellations
out of a job's own nursery mixed with errors, bounds on a child compensated on the cancel path,
and an instance that failed for not fitting its definition, restarted while compensating."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


def rec(log: list[str], name: str, *, exc: BaseException | None = None) -> Any:
    async def job(data: Any) -> Any:
        log.append(name)
        if exc is not None:
            raise exc
        return name
    return job


async def fans_out_and_fails_to_clean_up(data: Any) -> None:
    """A job that runs a nursery of its own, one of whose tasks fails while it is cancelled
    (cleanup that raises): cancelled, the job lets out a group of a Cancelled and a ValueError."""
    async def worker() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise ValueError("cleanup failed")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        nursery.start_soon(trio.sleep_forever)


# -- actors/_task.py: cancellations that come out of a job as an exception group ------------------


async def test_cancelling_a_job_whose_nursery_fails_while_cancelled_still_compensates(
        autojump_clock: trio.testing.MockClock) -> None:
    """SPEC §9: cancel() "really stops the running step (its cancel scope), then compensates".
    A job that runs a nursery of its own and whose cleanup raises when cancelled lets out a group
    mixing Cancelled with the ValueError. With the bare job (no nursery) the instance ends
    `failed` with the ValueError and step "a" is compensated; with the nursery, the instance ends
    as `internal error: ExceptionGroup ...` and NOTHING is compensated (log ['a']): the group
    is neither taken as a cancellation nor as the step's failure. Expected: compensated as the
    bare job is (and never an internal error).
    Cause: actors/_task.py run_task/attempt (_as_cancellation): a group that is not only
    Cancelled is re-raised as it is, past every handler; out of the instance's cancel scope it
    is an ExceptionGroup that the engine's _instance_actor takes for a crash (fail_alone)."""
    log: list[str] = []
    wf = (tf.workflow("w").task("a", job=rec(log, "a"), compensate=rec(log, "undo-a"))
          .task("b", job=fans_out_and_fails_to_clean_up).build())
    async with open_test_engine() as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(1)
        assert await engine.cancel(iid)
        with trio.fail_after(100):
            inst = await engine.wait(iid)
    assert not (inst.error or "").startswith("internal error"), inst.error
    assert log == ["a", "undo-a"], (log, inst.status, inst.error)


async def test_closing_the_engine_while_a_job_whose_nursery_fails_on_cancel_runs_does_not_raise(
        autojump_clock: trio.testing.MockClock) -> None:
    """Leaving `async with open_engine()` while instances run stops the engine; they stay
    `running` for the next engine (README, SPEC "leaving the block stops the engine"). With a
    running job like the above (a nursery whose cleanup raises when cancelled) the engine's close
    raises `ExceptionGroup(... ValueError('cleanup failed'))` out of the `async with` into the
    application, which is brought down by one misbehaving job; the same job without a nursery
    closes cleanly. Expected: the close returns normally.
    Cause: actors/_task.py run_task (_as_cancellation returns None for a mixed group, which is
    re-raised) so the group escapes _instance_actor (only Exception is contained) and the
    engine's nursery."""
    log: list[str] = []
    wf = (tf.workflow("w").task("a", job=rec(log, "a"), compensate=rec(log, "undo-a"))
          .task("b", job=fans_out_and_fails_to_clean_up).build())
    adapter = MemoryAdapter()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        await engine.start("w")
        await trio.sleep(1)
    # (reaching here is the point: the close above raised)


# -- a child compensated as a unit under its parent's compensation timeout ------------------------


async def test_a_child_compensated_when_its_failing_parent_cancels_it_is_bounded_by_the_parents_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    """README (Compensation): each compensation is bounded by the workflow's
    with_compensation_timeout, "for a child compensated as a unit, each of the child's
    compensations", "so a hanging compensation never keeps an instance running forever";
    docs/fanout.md: a parent that fails cancels the children it waits on, and "a child that
    completes all the same ... is compensated as a unit then". Here the parent (bound 5 s) waits
    on a child that completed while the parent was not running; resumed under a definition it no
    longer fits, the parent fails and compensates that child as a unit, but the child's
    compensation (which hangs for 10,000 s; the child sets no bound of its own) is not cut at
    5 s: the parent is still `running` after 1000 s and ends only when the compensation does
    (one that never returns keeps the parent running, and the engine's close waiting, forever).
    Expected: the child's compensation is cut at the parent's 5 s (a CompensationTimeoutError in
    the child's compensation_errors) and the parent ends `failed`.
    Cause: runtime/_children.py EngineChildren.cancel calls engine._undo_child(child_id) without
    the parent's bound (the fix passed it only on the _compensate_and_finish -> _undo_child
    path)."""
    async def work(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(10)
        return "w"

    async def undo(ctx: tf.WorkflowContext, result: str) -> None:
        await trio.sleep(10_000)  # hangs, as far as the parent's 5 s bound is concerned

    child = tf.workflow("child").step("work", work, undo).with_compensation_timeout(None).build()

    def parent(step: str) -> tf.WorkflowDefinition:
        return tf.workflow("p").child(step, workflow="child").with_compensation_timeout(5).build()

    adapter, clock = MemoryAdapter(), virtual_wall_clock()
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(parent("k"))
        engine.register(child)
        iid = await engine.start("p")
        await trio.sleep(5)  # the parent waits on its child, which runs its step
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(child)  # the child resumes and completes; the parent is not registered yet
        await trio.sleep(20)
        (kid,) = await engine.get_instances("child")
        assert kid.status == "completed"
        engine.register(parent("k2"))  # the new release renamed the child step: the parent fails
        with trio.move_on_after(1000):
            inst = await engine.wait(iid)
        now = await engine.get_instance(iid)
        kid_now = await engine.get_instance(kid.id)
    assert now is not None and now.status == "failed", now and now.status
    assert inst.status == "failed"
    assert kid_now is not None and "CompensationTimeoutError" in kid_now.compensation_errors.get("work", "")


# -- run.doomed: a resumed instance that no longer fits its definition, restarted meanwhile ------


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_a_doomed_instance_restarted_during_its_compensation_still_compensates(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str) -> None:
    """README (Registration) / SPEC §9: an instance that no longer fits the registered
    definition ("a branch changed shape") fails with DefinitionMismatchError "and compensates what
    it can"; SPEC §6: after a crash, what was in flight runs again. Here the new release renamed
    branch B of the running parallel step: the resumed instance fails and starts compensating
    step "a", then the engine stops during that compensation. The next engine (same definition)
    does not take the compensation up: it fails the instance alone ("parallel step 'par'
    changed its branches") with "a" never compensated (compensated_steps == (), no
    compensation error). Before f1b7b97..HEAD it compensated "a" on the restart.
    Cause: runtime/_engine.py _resume_one no longer replaces the doomed instance's lanes with
    `{MAIN: Lane(step=None)}`; the branch lanes stored with the compensating header make
    runtime/_decide.py misfit (which checks branch sets whatever the phase) report a problem on
    the next resume, and a compensating instance with a problem is fail_alone'd."""
    log: list[str] = []

    async def a(ctx: tf.WorkflowContext) -> str:
        log.append("a")
        return "a"

    async def undo_a(ctx: tf.WorkflowContext, result: str) -> None:
        log.append("undo-a started")
        await trio.sleep(10)
        log.append("undo-a done")

    async def quick(ctx: tf.WorkflowContext) -> int:
        return 1

    async def slow(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(100)
        return 1

    def wf(second_branch: str) -> tf.WorkflowDefinition:
        return (tf.workflow("w").step("a", a, undo_a)
                .parallel("par", branches=[
                    tf.branch("A").step("x", slow).build(),
                    tf.branch(second_branch).step("y1", quick).step("y2", slow).build()])
                .build())

    memory = MemoryAdapter()

    def adapter() -> Any:
        return memory if storage == "memory" else SQLiteAdapter(tmp_path / "flows.db")

    clock = virtual_wall_clock()
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.register(wf("B"))
        iid = await engine.start("w")
        await trio.sleep(5)  # "a" and "y1" completed (the branch lanes are stored), x and y2 run
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.register(wf("C"))  # the new release renamed branch B: the instance no longer fits
        await trio.sleep(5)  # it failed and compensates "a" (10 s) when this engine stops
        mid = await engine.get_instance(iid)
        assert mid is not None and mid.error_name == "DefinitionMismatchError"
        assert log[-1] == "undo-a started"
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.register(wf("C"))
        with trio.fail_after(1000):
            inst = await engine.wait(iid)
    assert inst.status == "failed"
    assert "undo-a done" in log, (log, inst.error)
    assert inst.compensated_steps == ("a",), (inst.compensated_steps, inst.compensation_errors, inst.error)
