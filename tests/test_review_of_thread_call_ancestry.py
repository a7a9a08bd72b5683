"""From an adversarial re-review of f682778 (with f540672 and f405ad8 before it): plain ``def``
jobs in worker threads, the thread call's context (runtime/_current.py) and the driver's
TransactionOwnership. Every test failed until the commit that added this file (a driver sees
each task as it is, a task trio runs for a thread's call, begun while the step's call was on,
descending from the task running the step; nurseries kept apart and other trio runs are never
a call's; the call holds the tasks it marks weakly). The first test's gateway answers from the
test rather than from a later step (whose wait for the given-up attempt's block would never
end: a nested block is exclusive within the tree).

Threads block on trio events or ``threading.Event`` with guards; under the autojump
``MockClock`` virtual time runs at real speed while a thread job is in flight, so the few
timeouts that must fire are short.
"""

from __future__ import annotations

import gc
from typing import Any

import trio
import trio.testing

import trioflow as tf
from thread_jobs import note_current_step, until
from trioflow.testing import engine_portal


async def test_a_retrys_write_is_not_rolled_back_by_the_given_up_attempts_nested_block(
        autojump_clock: trio.testing.MockClock) -> None:
    """README (Data drivers): "A nested transaction is exclusive within the tree: while it is
    open only its task and that task's descendants use the driver ... so its rollback discards
    only its writes." A ``.transactional()`` workflow's plain job ``pay`` (``timeout=0.3``,
    two attempts) runs through ``trio.from_thread.run``: attempt 1's body opens a nested
    ``ctx.driver.transaction()``, writes charge 1 and waits on the gateway; the timeout gives
    the thread up and attempt 2 writes charge 2 through ``from_thread.run`` and completes.
    Meanwhile attempt 1's gateway answers no and its nested block rolls back (attempt 2's
    write waits for it: a nested block is exclusive within the tree). The run completes and
    commits. Expected: charge 2, written by the attempt that completed, stays. Was: no charge at all: every task trio runs for a thread's call is taken for
    the step's own task (``calling_task()`` answers ``call.host``, the same task for every
    attempt), so attempt 2's write was admitted inside attempt 1's savepoint and rolled back
    with it."""
    driver = tf.adapters.MemoryDriver()
    release = trio.Event()
    first_done = trio.Event()
    attempts: list[int] = []

    async def first(ctx: tf.WorkflowContext) -> None:
        try:
            async with ctx.driver.transaction():
                await ctx.driver.create("charges", {"attempt": 1})
                await release.wait()  # the gateway, slower than the step's timeout
                raise RuntimeError("gateway said no after all")
        except RuntimeError:
            pass
        finally:
            first_done.set()

    async def second(ctx: tf.WorkflowContext) -> None:
        await ctx.driver.create("charges", {"attempt": 2})

    def pay(ctx: tf.WorkflowContext) -> int:
        attempts.append(len(attempts) + 1)
        trio.from_thread.run(first if len(attempts) == 1 else second, ctx)
        return len(attempts)

    wf = (tf.workflow("w")
          .step("pay", pay, timeout=0.3, retry=tf.Retry(max_attempts=2, interval=0.1))
          .transactional()
          .build())
    async with tf.open_engine(driver=driver) as engine:
        engine.register(wf)
        iid = await engine.start("w", {})
        await until(lambda: len(attempts) == 2)
        release.set()  # the gateway answers attempt 1, while attempt 2 is under way
        ended = await engine.wait(iid)
    assert first_done.is_set()
    assert (ended.status, attempts) == ("completed", [1, 2])
    assert [row["attempt"] for row in await driver.find_many("charges", {})] == [2]


async def test_a_nested_block_in_a_from_thread_body_is_exclusive_among_the_tasks_it_spawns(
        autojump_clock: trio.testing.MockClock) -> None:
    """README (Data drivers): a nested transaction is exclusive within the tree (a sibling
    waits), "so its rollback discards only its writes". A ``.transactional()`` workflow's
    plain job runs ``body`` through ``trio.from_thread.run``; ``body`` spawns two tasks: ``a``
    opens a nested ``ctx.driver.transaction()``, writes and then fails (its block rolls back);
    ``b`` writes a row while ``a``'s block is open. The same body as an ``async def`` job keeps
    ``b``'s row. Expected: ``b``'s row stays (``b`` waits for ``a``'s block, then writes).
    Was: ``b``'s row is gone: ``calling_task()`` answers the step's task for both
    (runtime/_current.py), so the driver takes ``b`` for a descendant of ``a``'s block's
    holder, and admits its write into ``a``'s savepoint."""
    driver = tf.adapters.MemoryDriver()

    async def body(ctx: tf.WorkflowContext) -> None:
        a_open = trio.Event()
        b_done = trio.Event()

        async def a() -> None:
            try:
                async with ctx.driver.transaction():
                    await ctx.driver.create("orders", {"who": "a"})
                    a_open.set()
                    with trio.move_on_after(1):  # (b waits for this block: it cannot finish first)
                        await b_done.wait()
                    raise RuntimeError("a fails")
            except RuntimeError:
                pass

        async def b() -> None:
            await a_open.wait()
            await ctx.driver.create("orders", {"who": "b"})
            b_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(a)
            nursery.start_soon(b)

    def job(ctx: tf.WorkflowContext) -> str:
        trio.from_thread.run(body, ctx)
        return "ok"

    wf = tf.workflow("w").step("s", job).transactional().build()
    async with tf.open_engine(driver=driver) as engine:
        engine.register(wf)
        ended = await engine.wait(await engine.start("w", {}))
    assert ended.status == "completed"
    assert [row["who"] for row in await driver.find_many("orders", {})] == ["b"]


async def test_a_plain_job_of_execute_workflow_run_from_a_plain_job_writes_in_the_runs_transaction(
        autojump_clock: trio.testing.MockClock) -> None:
    """README: what a plain job's thread runs through ``trio.from_thread.run``, begun while the
    call is on, is in a transactional run's transaction ("which it joins"); and a run it starts
    with ``execute_workflow`` runs in the calling task. A ``.transactional()`` workflow's plain
    job ``outer`` runs ``trio.from_thread.run(tf.execute_workflow, ctx.driver, inner, {})``;
    ``inner``'s plain job writes an order through ``trio.from_thread.run``. The same
    ``execute_workflow`` from an ``async def`` step writes at once. Expected: the write goes
    through inside the run's transaction. Was: it waits for the run's transaction, which
    waits for it: a deadlock (cut here by a 0.5 s guard). The inner call's ``ThreadCall.host``
    is the raw task running ``execute_workflow`` (trio's task for the outer thread's call, a
    system task): ``in_lane`` takes ``trio.lowlevel.current_task()``, not ``calling_task()``,
    so the inner write is not mapped on to the outer step's task."""
    driver = tf.adapters.MemoryDriver()
    wrote: list[bool] = []

    def inner_job(ctx: tf.WorkflowContext) -> str:
        async def write() -> None:
            with trio.move_on_after(0.5) as guard:  # (real time: a thread job is in flight)
                await ctx.driver.create("orders", {"n": 1})
            wrote.append(not guard.cancelled_caught)
        trio.from_thread.run(write)
        return "inner"

    inner = tf.workflow("inner").step("write", inner_job).build()

    def outer(ctx: tf.WorkflowContext) -> str:
        return trio.from_thread.run(tf.execute_workflow, ctx.driver, inner, {}).status

    wf = tf.workflow("outer").step("s", outer).transactional().build()
    async with tf.open_engine(driver=driver) as engine:
        engine.register(wf)
        ended = await engine.wait(await engine.start("outer", {}))
    assert ended.status == "completed"
    assert wrote == [True]


async def test_the_end_hook_of_an_engine_opened_in_a_from_thread_task_is_not_in_a_step(
        autojump_clock: trio.testing.MockClock) -> None:
    """README: a run a thread's call starts "goes by its own steps"; ``current_step()`` is only
    for a step's callable. A plain job ``kick`` runs a helper through
    ``trio.from_thread.run`` that opens an engine of its own (``async with
    tf.open_engine()``), starts an ``audit`` instance there and waits for it; audit's
    ``on_complete`` hook asks ``tf.current_step()``. Expected: ``NotInStepError`` (as for a
    hook of an instance started with ``engine.start``, fixed in f682778). Was: it answers
    ``kick``: the hook's task descends from trio's task for kick's call back into trio
    (``_top`` walks up through the inner engine's nursery, which is kept apart, to that system
    task, not ``home``), so ``_outside_lanes`` takes it for that task. The same hook's
    ``calling_task()`` answers kick's task: its driver writes would join kick's run's
    transaction, though README says an engine's tasks are kept apart from the task that opened
    it."""
    seen: list[Any] = []

    async def on_complete(result: Any) -> None:
        note_current_step(seen)

    audit = tf.workflow("audit").step("look", lambda ctx: "x").with_hooks(on_complete=on_complete).build()

    async def run_audit() -> str:
        async with tf.open_engine() as inner_engine:
            inner_engine.register(audit)
            return (await inner_engine.wait(await inner_engine.start("audit", {}))).status

    def kick(ctx: tf.WorkflowContext) -> str:
        return trio.from_thread.run(run_audit)

    wf = tf.workflow("p").step("kick", kick).build()
    async with tf.open_engine() as engine:
        engine.register(wf)
        ended = await engine.wait(await engine.start("p", {}))
    assert ended.status == "completed"
    assert seen == ["not in a step"]


def test_the_end_hook_of_another_trio_runs_engine_started_from_a_plain_job_is_not_in_a_step() -> None:
    """README: a run a thread's call starts "goes by its own steps". A plain job ``kick`` of an
    engine in one trio run starts an ``audit`` instance on an engine in another trio run (here
    ``trioflow.testing.engine_portal``'s, through ``portal.call``, i.e.
    ``trio.from_thread.run(..., trio_token=...)``); audit's ``on_complete`` hook asks
    ``tf.current_step()``. Expected: ``NotInStepError``. Was: ``kick``: the hook's task
    carries kick's thread call in its context, and ``_outside_lanes`` compares its top task
    (the other run's main task) with ``home`` (this run's main task); every top task that is
    not ``home`` is taken for one trio ran for the call, even one of another trio run."""
    seen: list[Any] = []

    async def on_complete(result: Any) -> None:
        note_current_step(seen)

    audit = tf.workflow("audit").step("look", lambda ctx: "x").with_hooks(on_complete=on_complete).build()
    ended: list[Any] = []
    with engine_portal(lambda e: e.register(audit)) as portal:
        def kick(ctx: tf.WorkflowContext) -> str:
            return portal.call(lambda e: e.start("audit", {}))

        async def main() -> None:
            wf = tf.workflow("p").step("kick", kick).build()
            async with tf.open_engine() as engine:
                engine.register(wf)
                ended.append(await engine.wait(await engine.start("p", {})))

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        portal.call(lambda e: None)  # (audit has run to its end)
    assert ended[0].status == "completed"
    assert seen == ["not in a step"]


async def test_a_finished_thread_call_that_wrote_through_the_driver_is_not_left_as_cyclic_garbage(
        autojump_clock: trio.testing.MockClock) -> None:
    """runtime/_current.py's docstring: objects kept alive per instance for the garbage
    collector to walk are a cost the module avoids. Twenty instances of a workflow whose plain
    job writes through the driver with ``trio.from_thread.run`` run to their end. Expected:
    once they have ended, no step's ``WorkflowContext`` is alive (reference counting frees it,
    as for a job that does not call back into trio). Was: all twenty thread-call contexts
    (each holding its instance's state and data) stay until a full cyclic collection:
    ``ThreadCall.begun`` holds trio's task for the call, whose ``context`` holds the
    ``ThreadCall`` (a cycle made by ``calling_task()``'s memo)."""
    driver = tf.adapters.MemoryDriver()

    async def note() -> None:
        await driver.create("notes", {"x": 1})

    def job(ctx: tf.WorkflowContext) -> int:
        trio.from_thread.run(note)
        return 1

    wf = tf.workflow("w").step("s", job).build()
    ids: set[str] = set()
    gc.collect()
    gc.disable()
    try:
        async with tf.open_engine(driver=driver) as engine:
            engine.register(wf)
            for _ in range(20):
                ids.add(iid := await engine.start("w", {}))
                assert (await engine.wait(iid)).status == "completed"
        # (This test's instances' contexts only: a context another test leaves alive, held by
        # pytest through an exception given as a parameter, is not this test's.)
        alive = sum(isinstance(o, tf.WorkflowContext) and o._state.instance_id in ids for o in gc.get_objects())
    finally:
        gc.enable()
    assert alive == 0
