"""From a review written as a user whose jobs and compensations are plain blocking ``def``
functions, run by the engine in worker threads (``open_engine``'s default ``threads=True``).

Every test here failed until the commit that added this file (a plain job's call in a worker
thread gets a context of its own, ended when the step is done with the call, and the tasks trio
runs for the thread's calls back into trio count as the step's). Threads block on ``threading.Event`` and
are released by the test, so nothing depends on how long real work takes; under the autojump
``MockClock`` virtual time runs at real speed while a thread job is in flight (docs), so the
timeouts that must fire are kept short.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from thread_jobs import RELEASE_WAIT, until

async def test_current_step_in_an_abandoned_thread_names_the_step_that_timed_out(
        autojump_clock: trio.testing.MockClock) -> None:
    """A user's plain job ``charge`` makes its idempotency key from ``tf.current_step()``
    (README: "for idempotency keys", "plain def jobs in threads included"). Its step timeout
    abandons the thread (README: "its thread runs on"), a catch routes the lane to ``mail``,
    and the blocked HTTP call of ``charge`` returns while ``mail`` runs; it then asks
    ``current_step()`` for its key. Expected: ``charge``'s own execution (or
    ``NotInStepError``: it is no longer in a step). Was: ``StepInfo(step_name='mail',
    execution_id='mail#1', ...)``: the lane's live state, so the late charge is keyed as the
    mail (two different steps share one idempotency key; a retried attempt likewise sees the
    attempt number of the attempt after it)."""
    charge_returns = threading.Event()
    mail_running = threading.Event()
    mail_returns = threading.Event()
    seen: list[Any] = []

    def charge(data: Any) -> str:
        charge_returns.wait(RELEASE_WAIT)  # a slow payment API
        try:
            seen.append(tf.current_step())
        except tf.NotInStepError as exc:
            seen.append(exc)
        return "late"

    def mail(data: Any) -> str:
        mail_running.set()
        mail_returns.wait(RELEASE_WAIT)
        return "mailed"

    wf = (tf.workflow("w")
          .task("charge", job="charge", timeout=0.05,
                catch=[tf.Catch(errors=[tf.StepTimeoutError], next="mail")])
          .task("mail", job="mail")
          .build())
    async with tf.open_engine() as engine:
        engine.jobs.register("charge", charge)
        engine.jobs.register("mail", mail)
        engine.register(wf)
        iid = await engine.start("w", {})
        await until(mail_running.is_set)
        charge_returns.set()
        await until(lambda: bool(seen))
        mail_returns.set()
        done = await engine.wait(iid)
    assert done.status == "completed"
    info = seen[0]
    assert isinstance(info, tf.NotInStepError) or (info.step_name, info.execution_id) == ("charge", "charge#1"), info


@pytest.mark.parametrize("write", ["ctx.set", "kept mapping"])
async def test_ctx_set_of_an_abandoned_attempt_does_not_overwrite_what_the_completed_attempt_set(
        autojump_clock: trio.testing.MockClock, write: str) -> None:
    """A saga step ``charge`` (plain ``def``, ``timeout=0.5``, ``retry=Retry(2)``) records the
    charge it made with ``ctx.set("charge_id", ...)``; its refund reads it. Attempt 1 blocks
    on a slow payment API and is abandoned by the timeout (README: "what it does after that
    is not the step's"); attempt 2 charges ``ch-2``, sets it and completes. Attempt 1's call
    then returns and its ``ctx.set("charge_id", "ch-1")`` runs. Expected: the run's shared data
    keeps ``ch-2`` (what the completed attempt set; Temporal drops a timed-out activity's
    effects on the workflow). Was: the abandoned thread writes straight into the live
    shared data, so the next step (and a refund, and the stored data) sees ``ch-1``: the
    wrong charge would be refunded. And (from a re-review of the fix) the same through the
    mapping ``ctx.data`` gave the job at its start (``data = ctx.data``, then
    ``data["charge_id"] = ...``): the guard was on the ``ctx.data`` property only."""
    attempt_1_returns = threading.Event()
    attempt_1_done = threading.Event()
    ship_running = threading.Event()
    ship_returns = threading.Event()
    refused: list[Exception] = []

    def charge(ctx: tf.WorkflowContext) -> str:
        data = ctx.data
        set_ = ctx.set if write == "ctx.set" else data.__setitem__
        attempt = tf.current_step().attempt
        if attempt == 1:
            attempt_1_returns.wait(RELEASE_WAIT)
            try:
                set_("charge_id", "ch-1")
            except tf.NotInStepError as exc:  # (refused, saying why: see the test's docstring)
                refused.append(exc)
            finally:
                attempt_1_done.set()
            return "ch-1"
        set_("charge_id", "ch-2")
        return "ch-2"

    def ship(ctx: tf.WorkflowContext) -> Any:
        ship_running.set()
        ship_returns.wait(RELEASE_WAIT)
        return {"charge_id": ctx.get("charge_id"), "charge_output": ctx.steps["charge"]}

    wf = (tf.workflow("w")
          .step("charge", charge, timeout=0.5, retry=tf.Retry(max_attempts=2, interval=0.01))
          .step("ship", ship)
          .build())
    async with tf.open_engine() as engine:
        engine.register(wf)
        iid = await engine.start("w", {})
        await until(ship_running.is_set)
        attempt_1_returns.set()
        await until(attempt_1_done.is_set)
        ship_returns.set()
        done = await engine.wait(iid)
    assert done.status == "completed"
    assert done.output == {"charge_id": "ch-2", "charge_output": "ch-2"} and done.data["charge_id"] == "ch-2"
    assert len(refused) == 1 and "gave the thread up" in str(refused[0]), refused


async def test_an_abandoned_attempt_does_not_share_ctx_input_with_the_next_attempt(
        autojump_clock: trio.testing.MockClock) -> None:
    """README: "Each step execution gets its own copy of the workflow input (ctx.input) ...
    (each attempt of a step that may be retried gets its own): a step that changes them in
    place changes nothing stored and nothing a later step or attempt sees." A plain saga step
    with ``timeout=0.5`` and ``retry=Retry(2)``: attempt 1 is abandoned by its timeout, attempt
    2 reads ``ctx.input`` and works on it; attempt 1's thread then appends to ``ctx.input``'s
    list. Expected: attempt 2's copy is untouched. Was: the abandoned thread's
    ``ctx.input`` is attempt 2's own copy (the lane's ``ctx.copies``), so attempt 2 returns
    ``['book', 'from-attempt-1']``."""
    attempt_1_returns = threading.Event()
    attempt_1_done = threading.Event()
    attempt_2_has_input = threading.Event()
    attempt_2_returns = threading.Event()

    def charge(ctx: tf.WorkflowContext) -> Any:
        if tf.current_step().attempt == 1:
            attempt_1_returns.wait(RELEASE_WAIT)
            ctx.input["items"].append("from-attempt-1")
            attempt_1_done.set()
            return None
        mine = ctx.input
        attempt_2_has_input.set()
        attempt_2_returns.wait(RELEASE_WAIT)
        return list(mine["items"])

    wf = tf.workflow("w").step("charge", charge, timeout=0.5, retry=tf.Retry(max_attempts=2, interval=0.01)).build()
    async with tf.open_engine() as engine:
        engine.register(wf)
        iid = await engine.start("w", {"items": ["book"]})
        await until(attempt_2_has_input.is_set)
        attempt_1_returns.set()
        await until(attempt_1_done.is_set)
        attempt_2_returns.set()
        done = await engine.wait(iid)
    assert done.status == "completed"
    assert done.output == ["book"]


async def test_a_plain_job_writing_through_the_driver_in_a_transactional_workflow_does_not_hang(
        autojump_clock: trio.testing.MockClock) -> None:
    """A plain ``def`` step of a ``.transactional()`` workflow writes a row through the
    driver, the way README's Hosting section tells a thread to call trio:
    ``trio.from_thread.run(ctx.driver.create, "orders", {...})``; the next step fails.
    Expected: the write is part of the run's transaction and is rolled back (``rolled_back``,
    no row left), as an ``async def`` step's write is. Was: the run hangs for ever: the
    engine runs plain jobs with ``abandon_on_cancel=True``, for which trio runs
    ``from_thread.run`` in a system task, outside the step's task tree, so the write waits for
    the run's own transaction, which waits for the step (and every other instance using the
    driver waits behind it). Cancelled after 2 s here; the row is then written after the
    rollback, outside any transaction."""
    driver = tf.adapters.MemoryDriver()

    def write(ctx: tf.WorkflowContext) -> str:
        trio.from_thread.run(ctx.driver.create, "orders", {"what": "book"})
        return "written"

    def fail(ctx: tf.WorkflowContext) -> None:
        raise RuntimeError("card declined")

    wf = tf.workflow("w").step("write", write).step("charge", fail).transactional().build()
    ended = None
    async with tf.open_engine(driver=driver) as engine:
        engine.register(wf)
        iid = await engine.start("w", {})
        with trio.move_on_after(2):  # real seconds: a thread is in flight the whole time
            ended = await engine.wait(iid)
        if ended is None:
            await engine.cancel(iid)
    assert ended is not None, "the transactional run with a plain job writing through the driver hung"
    assert ended.status == "failed" and ended.rolled_back
    assert await driver.find_many("orders", {}) == []
