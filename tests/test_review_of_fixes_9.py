"""Regressions a third review of this session's fixes found (each failed before its fix): a plain
`def` that runs an async function to its end (a sync facade) is called, as a job and as a
condition; with_data that cannot be deep-copied still runs; the crash explorer accepts a
workflow timeout only where a step run again could reach it."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


def sync_facade(afn: Any) -> Any:
    """A common decorator: a blocking (plain ``def``) facade over an async client call, keeping
    the name and docstring with functools.wraps (asgiref's async_to_sync does the same with
    update_wrapper). What it gives trioflow is a plain function that returns a plain value."""
    @functools.wraps(afn)
    def wrapper(*args: Any) -> Any:
        return asyncio.run(afn(*args))
    return wrapper


@sync_facade
async def lookup(data: Any) -> Any:
    await asyncio.sleep(0)
    return {"price": data * 2}


# -- 1. a plain def behind functools.wraps is now awaited -----------------------------------------


async def test_a_plain_def_job_that_wraps_an_async_function_is_called_not_awaited(
        autojump_clock: trio.testing.MockClock) -> None:
    """README: "Step callables may be async def or plain def (plain ones run in a worker
    thread)". A plain ``def`` job made by a decorator that runs an async function to its end
    and returns its value (functools.wraps keeps its name) worked before 5ab82e6. Now
    ``is_async`` unwraps ``__wrapped__`` (runtime/_callables.py:22-26) and answers for the
    wrapped ``async def``: the job's flag says awaited, ``attempt``/``run_task`` do
    ``await fn(arg)`` on the plain dict it returns, and the step fails with ``TypeError: object
    dict can't be used in 'await' expression`` (in execute_workflow and in an engine; the same
    holds for a job registered by name, runtime/_jobs.py:47, and a compensation)."""
    wf = tf.workflow("quote").task("lookup", job=lookup).build()
    result = await tf.execute_workflow(None, wf, 21)
    assert (result.success, result.output) == (True, {"price": 42}), result.error
    async with open_test_engine() as engine:
        engine.register(wf)
        engine.jobs.register("lookup-by-name", lookup)
        by_name = tf.workflow("quote2").task("lookup", job="lookup-by-name").build()
        engine.register(by_name)
        with trio.fail_after(100):
            done = await engine.wait(await engine.start("quote", 21))
            named = await engine.wait(await engine.start("quote2", 21))
    assert (done.status, done.output) == ("completed", {"price": 42}), done.error
    assert (named.status, named.output) == ("completed", {"price": 42}), named.error


# -- 2. with_data deep-copied: values execute_workflow took now crash it ---------------------------


async def test_execute_workflow_with_data_that_cannot_be_deep_copied_still_runs(
        autojump_clock: trio.testing.MockClock) -> None:
    """README: "execute_workflow stores nothing and keeps every value as returned", and "a
    failure is reported on the WorkflowResult, not raised". A workflow run with
    execute_workflow whose initial shared data holds an object that cannot be deep-copied (a
    connection, a lock, a client) ran before 5ab82e6. ``new_state`` now deep-copies the data
    for every run (runtime/_decide.py:42, ``copy.deepcopy(dict(definition.data))``), and
    execute_workflow raises ``TypeError: cannot pickle 'sqlite3.Connection' object`` before any
    step runs (nor is it a failed WorkflowResult). A copy where one is possible (or a shallow
    fallback) would keep the fix for nested lists without breaking these runs."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)

    def count(ctx: tf.WorkflowContext) -> int:
        return int(ctx.data["db"].execute("select 41 + 1").fetchone()[0])

    wf = tf.workflow("report").with_data({"db": conn}).step("count", count).build()
    try:
        result = await tf.execute_workflow(None, wf, None)
    finally:
        conn.close()
    assert (result.success, result.output) == (True, 42), result.error


# -- 3. the crash explorer: any timed_out is accepted, whatever caused it -------------------------


async def test_explore_crashes_reports_a_step_that_hangs_when_run_again_under_a_long_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    """docs/testing.md: the explorer exists to report a step that is not idempotent ("a step
    that is not idempotent then shows as a divergent output"); with a workflow timeout "one of
    them may end timed_out where the other did not: a step run again takes its time again".
    Here a step takes 1 s and the workflow has an hour: a step run again adds a second, and can
    never explain a timeout. ``reserve`` takes a lease and waits while it is held, so run again
    after a lost write it waits for itself and the run ends ``timed_out`` an hour later, where
    the fault-free run completed. afc4a9b accepts any ``timed_out`` against any other status as
    soon as some workflow of the family has a timeout (runtime/testing/_crashes.py:328-329),
    and stops comparing outputs then (:331): the explorer reports nothing. Before it, this was a
    divergence ("final status 'timed_out', the fault-free run ended 'completed'")."""
    from trioflow.testing import explore_crashes

    leases: set[str] = set()

    async def reserve(ctx: tf.WorkflowContext) -> str:
        while "order-9" in leases:  # held (by whom? by our own first call, lost in the crash)
            await trio.sleep(1)
        leases.add("order-9")
        await trio.sleep(1)
        return "reserved"

    async def release(ctx: tf.WorkflowContext) -> str:
        leases.discard("order-9")
        return "released"

    wf = (tf.workflow("lease").step("reserve", reserve).step("release", release)
          .with_timeout(3600).build())
    report = await explore_crashes(wf, check=False)
    assert report.baseline.status == "completed"
    hung = [p for p in report.points if p.outcome.status == "timed_out"]
    assert hung, "no crash run hung: the scenario did not play out"
    assert report.divergent, (
        f"{len(hung)} crash runs ended timed_out after an hour (a 1 s step run again) and none was reported")


# -- 4. build() now refuses plain-def decision callables that wrap an async function --------------


@sync_facade
async def in_stock(ctx: tf.WorkflowContext) -> bool:
    await asyncio.sleep(0)
    return bool(ctx.input["qty"] <= 3)


async def test_build_accepts_a_plain_def_choice_condition_that_wraps_an_async_function(
        autojump_clock: trio.testing.MockClock) -> None:
    """README: conditions and transforms "are plain functions of ctx (an async def is refused at
    build())". ``in_stock`` is a plain function returning a bool (a sync facade over an async
    check, functools.wraps keeping its name); it built and routed before 5ab82e6. Now
    ``is_async`` answers for the function behind ``__wrapped__`` (runtime/_callables.py:22-26),
    so build() raises DefinitionError for it (runtime/_validate.py:108; the same for a pass
    transform, :133, a fail cause, :144, a succeed output, :157), though calling it gives a
    plain bool that ``plain_result`` would accept."""
    wf = (tf.workflow("stock")
          .choice("check", choices=[tf.when(in_stock, next="ship")], default="backorder")
          .pass_("ship", result="ship", end=True).pass_("backorder", result="backorder").build())
    result = await tf.execute_workflow(None, wf, {"qty": 2})
    assert (result.success, result.output) == (True, "ship"), result.error
