"""From an adversarial re-review of f540672 ("a job's call in a worker thread gets a context of
its own"): plain ``def`` jobs run by the engine in worker threads, and what they run in trio
through ``trio.from_thread.run``. Every test failed until the commit that added this file (a
run or task started from the thread's call goes by its own lane; a task trio runs for the
thread's call is the step's to its end if it began while the call was on). Its fifth finding,
a write through the mapping ``ctx.data`` gave a thread its step gave up, is a case of
tests/test_review_of_thread_jobs.py's test of late writes.

Threads block on ``threading.Event`` and are released by the test; under the autojump
``MockClock`` virtual time runs at real speed while a thread job is in flight (docs/testing.md),
so step timeouts that must fire are kept short, and every thread wait has a guard.
"""

from __future__ import annotations

import threading
from typing import Any

import trio
import trio.testing

import trioflow as tf

async def test_an_instance_started_from_a_plain_job_through_from_thread_sees_its_own_step(
        autojump_clock: trio.testing.MockClock) -> None:
    """README (Hosting): a thread calls the engine through trio,
    ``trio.from_thread.run(engine.start, ...)``. A plain ``def`` job ``kick`` of workflow
    ``parent`` starts an instance of ``child`` that way; the child's ``async def`` step
    ``look`` makes its idempotency key from ``tf.current_step()``. Expected: ``look``'s own
    StepInfo (workflow ``child``, step ``look``). Was: ``StepInfo(workflow_name='parent',
    step_name='kick', ...)``: ``engine.start`` launches the run with its caller's contextvars,
    which (since f540672) hold the parent's thread call, and ``lane_of_caller`` takes that
    before the child's own lane; once ``kick``'s call is over, every step of the child gets
    ``NotInStepError`` instead."""
    seen: list[Any] = []
    engine_of: dict[str, tf.Engine] = {}

    async def look(ctx: tf.WorkflowContext) -> str:
        try:
            info = tf.current_step()
            seen.append((info.workflow_name, info.step_name))
        except tf.NotInStepError as exc:
            seen.append(exc)
        return "looked"

    def kick(ctx: tf.WorkflowContext) -> str:
        engine = engine_of["engine"]
        child_id = trio.from_thread.run(engine.start, "child", {})
        trio.from_thread.run(engine.wait, child_id)
        return child_id

    child = tf.workflow("child").step("look", look).build()
    parent = tf.workflow("parent").step("kick", kick).build()
    async with tf.open_engine() as engine:
        engine_of["engine"] = engine
        engine.register(child)
        engine.register(parent)
        done = await engine.wait(await engine.start("parent", {}))
    assert done.status == "completed"
    assert seen == [("child", "look")]


async def test_a_write_of_an_instance_started_from_a_plain_job_is_not_rolled_back_with_the_starter(
        autojump_clock: trio.testing.MockClock) -> None:
    """A ``.transactional()`` workflow ``parent``: its plain job ``kick`` starts an instance
    of the (non-transactional) workflow ``audit`` with ``trio.from_thread.run(engine.start,
    ...)`` and its next step fails, so the parent's transaction rolls back. ``audit`` writes an
    audit row through the driver and completes. Expected: the audit row stays (an engine's
    instances are not their caller's transaction: keep_apart; an ``async def`` ``kick`` gets
    that: its started instance's write waits for the parent's transaction to end). Was:
    the row is gone although the ``audit`` instance is stored ``completed``:
    ``TransactionOwnership`` takes the audit's driver call (``calling_task()``) for the
    parent's step, from the contextvars the audit run inherited, and the write joins the
    parent's transaction and is rolled back with it."""
    driver = tf.adapters.MemoryDriver()
    engine_of: dict[str, tf.Engine] = {}
    audit_wrote = threading.Event()
    audit_ids: list[str] = []

    async def write_audit(ctx: tf.WorkflowContext) -> str:
        await ctx.driver.create("audit", {"what": "order seen"})
        audit_wrote.set()
        return "written"

    def kick(ctx: tf.WorkflowContext) -> str:
        audit_ids.append(trio.from_thread.run(engine_of["engine"].start, "audit", {}))
        # (Expected: the audit's write waits for this run's transaction, so the wait times out.)
        audit_wrote.wait(2)
        return "kicked"

    def charge(ctx: tf.WorkflowContext) -> None:
        raise RuntimeError("card declined")

    audit = tf.workflow("audit").step("write", write_audit).build()
    parent = tf.workflow("parent").step("kick", kick).step("charge", charge).transactional().build()
    async with tf.open_engine(driver=driver) as engine:
        engine_of["engine"] = engine
        engine.register(audit)
        engine.register(parent)
        ended = await engine.wait(await engine.start("parent", {}))
        audited = await engine.wait(audit_ids[0])
    assert ended.status == "failed" and ended.rolled_back
    assert audited.status == "completed"
    rows = await driver.find_many("audit", {})
    assert [row["what"] for row in rows] == ["order seen"]


async def test_execute_workflow_run_from_a_plain_job_through_from_thread_sees_its_own_steps() -> None:
    """A plain ``def`` step of an ``execute_workflow`` run runs a small workflow of its own
    with ``trio.from_thread.run(tf.execute_workflow, None, inner, ...)``; the inner ``async
    def`` step ``inner_step`` asks ``tf.current_step()``. Expected: ``inner_step`` (the run it
    is in; it was so before f540672, when a thread's lane was a thread-local). Was:
    ``outer_step``: the context variable set in the worker thread is handed to the task
    trio runs the call in, and ``lane_of_caller`` reads it before the inner run's own lane."""
    seen: list[Any] = []

    async def inner_step(ctx: tf.WorkflowContext) -> str:
        try:
            seen.append(tf.current_step().step_name)
        except tf.NotInStepError as exc:
            seen.append(exc)
        return "inner"

    inner = tf.workflow("inner").step("inner_step", inner_step).build()

    def outer_step(ctx: tf.WorkflowContext) -> str:
        result = trio.from_thread.run(tf.execute_workflow, None, inner, {})
        return str(result.status)

    outer = tf.workflow("outer").step("outer_step", outer_step).build()
    result = await tf.execute_workflow(None, outer, {})
    assert result.status == "completed"
    assert seen == ["inner_step"]


async def test_an_abandoned_threads_open_driver_block_does_not_deadlock_the_runs_transaction(
        autojump_clock: trio.testing.MockClock) -> None:
    """A ``.transactional()`` workflow's plain job writes two rows in a nested block, through
    trio: ``trio.from_thread.run(body)`` with ``body`` = ``async with ctx.driver.transaction():
    create; <a slow await>; create``. The step's ``timeout=0.2`` abandons the thread during the
    slow await; a catch routes the lane on to ``after``. Expected: the run ends (the block the
    thread opened while its call was on can finish, or its later calls fail fast); the
    second ``create`` is not held up by the run's own transaction. Was: a deadlock. The
    block was opened for the step's task (``calling_task()`` while the call was on), but once
    the call is ended its second ``create`` counts as a stranger's and waits for the run's
    transaction lock, while the run's commit waits (shielded) for that inner block to close.
    Without the body's own ``move_on_after`` below, the run hangs for ever, and so do
    ``engine.cancel`` and leaving the engine's block (the commit wait is shielded)."""
    driver = tf.adapters.MemoryDriver()
    entered = trio.Event()
    released = trio.Event()
    second_write_waited: list[bool] = []

    def write(ctx: tf.WorkflowContext) -> str:
        async def body() -> None:
            async with ctx.driver.transaction():
                await ctx.driver.create("orders", {"n": 1})
                entered.set()
                await released.wait()  # a slow await inside the block (an HTTP call, say)
                with trio.move_on_after(60) as guard:  # the user's own guard; virtual seconds
                    await ctx.driver.create("orders", {"n": 2})
                second_write_waited.append(guard.cancelled_caught)
        trio.from_thread.run(body)
        return "written"

    wf = (tf.workflow("w")
          .step("write", write, timeout=0.2, catch=[tf.Catch(errors=[tf.StepTimeoutError], next="after")])
          .step("after", lambda ctx: "after")
          .transactional()
          .build())
    async with tf.open_engine(driver=driver) as engine:
        engine.register(wf)
        iid = await engine.start("w", {})
        await entered.wait()
        await trio.sleep(1)  # past the step's timeout: the thread is abandoned, the lane goes on
        released.set()
        ended = await engine.wait(iid)
    assert ended.status == "completed"
    assert second_write_waited == [False], "the abandoned thread's write waited for the run's own transaction"
