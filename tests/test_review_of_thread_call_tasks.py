"""From an adversarial re-review of f540672/f405ad8 (plain ``def`` jobs in worker threads, the
thread call's context) and 5d79b75 (deferred SQLite reads, ``before_its_end``). The first test
failed until the commit that added this file (the tasks of the tree the step runs in are never
the thread call's); the second holds what was decided after later reviews.

Threads block on ``threading.Event`` with a guard; under the autojump ``MockClock`` virtual time
runs at real speed while a thread job is in flight, so step timeouts that must fire are short.
"""

from __future__ import annotations

import threading
from typing import Any

import trio
import trio.testing

import trioflow as tf
from thread_jobs import RELEASE_WAIT, note_current_step, until

async def test_end_hook_of_a_run_started_from_a_plain_job_is_not_the_starters_step(
        autojump_clock: trio.testing.MockClock) -> None:
    """README (Hosting/Behaviour): a run a thread's call starts with
    ``trio.from_thread.run(engine.start, ...)`` "goes by its own steps", and an engine's
    instances are not their caller's transaction. A ``.transactional()`` workflow ``parent``:
    its plain job ``kick`` starts an ``audit`` instance that way and waits until audit's
    ``on_complete`` hook has begun; the hook writes an audit row through the driver (and asks
    ``tf.current_step()``, which is only for a step's callable). ``parent``'s next step fails,
    so its transaction rolls back. Expected: the audit row stays, and ``current_step()`` in the
    hook raises ``NotInStepError``. Was: the row is rolled back with the parent's
    transaction, and ``current_step()`` in audit's hook answers ``parent``'s step ``kick``:
    the hook runs in a task the engine's supervisor started from the audit's instance task,
    which inherited the thread call's context variable; ``_outside_lanes`` walks that task up
    to the program's main task and returns it (not ``None``), so it is taken for a task trio
    runs for the thread's call."""
    driver = tf.adapters.MemoryDriver()
    hook_started = threading.Event()
    engine_of: dict[str, tf.Engine] = {}
    ids: list[str] = []
    seen: list[Any] = []

    async def on_complete(result: Any) -> None:
        note_current_step(seen)
        hook_started.set()
        await driver.create("audit", {"what": "order seen"})

    def kick(ctx: tf.WorkflowContext) -> str:
        ids.append(trio.from_thread.run(engine_of["e"].start, "audit", {}))
        hook_started.wait(RELEASE_WAIT)
        return "kicked"

    def charge(ctx: tf.WorkflowContext) -> None:
        raise RuntimeError("card declined")

    audit = tf.workflow("audit").step("look", lambda ctx: "x").with_hooks(on_complete=on_complete).build()
    parent = tf.workflow("parent").step("kick", kick).step("charge", charge).transactional().build()
    async with tf.open_engine(driver=driver) as engine:
        engine_of["e"] = engine
        engine.register(audit)
        engine.register(parent)
        ended = await engine.wait(await engine.start("parent", {}))
        assert (await engine.wait(ids[0])).status == "completed"
    assert ended.status == "failed" and ended.rolled_back
    rows = await driver.find_many("audit", {})
    assert ([row["what"] for row in rows], seen) == (["order seen"], ["not in a step"])


async def test_a_from_thread_write_made_after_the_thread_was_given_up_is_not_the_steps(
        autojump_clock: trio.testing.MockClock) -> None:
    """A ``.transactional()`` workflow's plain job ``write`` runs ``body`` through
    ``trio.from_thread.run``; ``body`` awaits a slow call, then creates an order row. The
    step's ``timeout=0.2`` gives the thread up during the slow call (a catch routes the lane
    to ``check``), ``body`` goes on and writes while ``check`` runs, and ``check`` fails, so
    the run's transaction rolls back. Decided (README, The engine): once the step is done
    with the call, what its thread does is not the step's: the write waits for the run's
    transaction to end and then commits on its own (as at 21f7eb7). The re-review that wrote
    this test expected it rolled back with the run (a task begun while the call was on being
    the step's to its end); that let a given-up thread's late write into a later step's own
    block, to be rolled back with it (tests/test_review_of_given_up_thread_writes.py)."""
    driver = tf.adapters.MemoryDriver()
    began = trio.Event()
    released = trio.Event()
    wrote: list[bool] = []

    def write(ctx: tf.WorkflowContext) -> str:
        async def body() -> None:
            began.set()
            await released.wait()  # a slow await before the write (an HTTP call, say)
            with trio.move_on_after(60) as guard:  # (virtual seconds)
                await ctx.driver.create("orders", {"n": 1})
            wrote.append(not guard.cancelled_caught)
        trio.from_thread.run(body)
        return "written"

    async def check(ctx: tf.WorkflowContext) -> None:
        await trio.sleep(5)
        raise RuntimeError("fraud check failed")

    wf = (tf.workflow("w")
          .step("write", write, timeout=0.2, catch=[tf.Catch(errors=[tf.StepTimeoutError], next="check")])
          .step("check", check)
          .transactional()
          .build())
    async with tf.open_engine(driver=driver) as engine:
        engine.register(wf)
        iid = await engine.start("w", {})
        await began.wait()
        await trio.sleep(1)  # past the step's timeout: the thread is given up; check runs
        released.set()
        ended = await engine.wait(iid)
        await until(lambda: bool(wrote))
    assert ended.status == "failed" and ended.rolled_back
    assert wrote == [True] and [row["n"] for row in await driver.find_many("orders", {})] == [1]
