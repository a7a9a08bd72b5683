"""From a review as a user who runs mypy --strict on service code using trioflow's documented
public API (scripts/typecheck checks this file; it is not run). Each block under a "Was:"
comment failed mypy until the commit that added this file.

Correct lines carry typing.assert_type for the types a user relies on; wrong user code carries a
`# type: ignore[code]` that --strict's warn_unused_ignores turns into an error if mypy accepts it.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, assert_type

import trio

import trioflow as tf
from trioflow.testing import (
    CrashReport, EnginePortal, Outcome, ScriptedJob, engine_portal, explore_crashes, hangs,
    open_test_engine, raises, returns, run, sleeps,
)

UTC = datetime.timezone.utc


async def reserve(ctx: tf.WorkflowContext) -> dict[str, str]:
    assert_type(ctx.input, Any)
    assert_type(ctx.item_index, int | None)
    assert_type(ctx.error, dict[str, str] | None)
    assert_type(ctx.lane, str)
    assert_type(ctx.step_index, int)
    assert_type(ctx.total_steps, int)
    assert_type(ctx.metadata, tf.WorkflowMetadata)
    assert_type(ctx.metadata.id, str)
    assert_type(ctx.instance, tf.WorkflowInstance)
    assert_type(ctx.data, dict[str, Any])
    ctx.set("reserved", True)
    ctx.get("reserved", False)
    info = tf.current_step()
    assert_type(info, tf.StepInfo)
    assert_type(info.attempt, int)
    assert_type(info.execution_id, str)
    assert_type(info.compensating, bool)
    return {"id": "res-1"}


async def release(ctx: tf.WorkflowContext, result: dict[str, str]) -> None:
    return None


def charge_sync(data: dict[str, int]) -> dict[str, str]:  # a plain def job (runs in a thread)
    return {"charge_id": "ch-1"}


def on_complete(result: tf.WorkflowResult) -> None:
    assert_type(result.status, tf.Status)
    assert_type(result.error, BaseException | None)
    assert_type(result.duration, float)


async def on_step_complete(step_name: str, output: Any, ctx: tf.WorkflowContext) -> None:
    return None


inner = tf.branch("line").step("reserve", reserve, release).build()
assert_type(inner, tf.Branch)

order = (
    tf.workflow("order")
    .default_retry(tf.Retry(max_attempts=3, interval=datetime.timedelta(seconds=1), retry_on=[ConnectionError, "busy"]))
    .with_hooks(on_complete=on_complete, on_step_complete=on_step_complete)
    .with_timeout(datetime.timedelta(hours=1))
    .with_data({"k": 1})
    .step("reserve-main", reserve, release, timeout=5.0, catch=[tf.Catch(errors=[tf.ALL], next="fail-it")])
    .task("charge", job=charge_sync, input=lambda ctx: {"total": ctx.input["total"]},
          output=lambda result, ctx: result["charge_id"], retry=tf.Retry(max_attempts=5),
          catch=tf.Catch(errors=[ConnectionError, "Declined", lambda e: True], next="fail-it", result="err"))
    .choice("route", choices=[tf.when(lambda ctx: ctx.steps["charge"] == "ch-1", next="hold")], default="ship")
    .wait("hold", seconds=lambda ctx: datetime.timedelta(minutes=5), next="later")
    .wait("later", until=lambda ctx: datetime.datetime(2030, 1, 1, tzinfo=UTC), next="approve")
    .receive("approve", signal="approved", timeout=datetime.timedelta(days=3),
             catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="fail-it")], next="ship")
    .parallel("ship", branches=[tf.branch("a").task("s", job="ship").build()], on_error="wait-all", next="each")
    .map("each", items=lambda ctx: ctx.input["lines"], branch=inner, max_concurrency=2, tolerated_failures=0.1,
         next="kid")
    .child("kid", workflow="invoice", input=lambda ctx: ctx.input, next="shape")
    .pass_("shape", transform=lambda ctx: {"ok": True}, next="done")
    .succeed("done", output=lambda ctx: ctx.steps["shape"])
    .fail("fail-it", error="OrderFailed", cause=lambda ctx: str(ctx.error))
    .build()
)
assert_type(order, tf.WorkflowDefinition)
simple = tf.workflow("simple").pass_("p", result=1).end("e").build()
fixed_wait = tf.workflow("timer").wait("w", until=datetime.datetime(2030, 1, 1, tzinfo=UTC)).wait("w2", seconds=60).build()


async def service() -> None:
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter("orders.db"), max_running=100,
                              retain_finished=datetime.timedelta(days=7)) as engine:
        assert_type(engine, tf.Engine)
        engine.register(order)
        engine.register(order, replace=True)
        engine.jobs.register("ship", charge_sync)

        @engine.job("notify")
        async def notify(data: Any) -> None:
            return None

        iid = await engine.start("order", {"total": 10}, instance_id="o-1", delay=datetime.timedelta(hours=1))
        assert_type(iid, str)
        await engine.start("order", {"total": 10}, start_at=datetime.datetime(2030, 1, 1, tzinfo=UTC))
        # A misspelt keyword is flagged where it is written (and refused at run time with
        # InvalidArgumentError: start()'s wrapper keeps its signature), as is a missing name.
        await engine.start("order", {"total": 10}, instanceid="o-2")  # type: ignore[call-arg]
        await engine.start(workflow="order", input={"total": 10})  # type: ignore[call-arg]
        await engine.signal(iid, "approved", {"by": "kim"})
        await engine.signal(iid, "approved", payload=None)
        assert_type(await engine.cancel(iid), bool)
        done = await engine.wait(iid)
        assert_type(done, tf.WorkflowInstance)
        assert_type(done.status, tf.Status)
        assert_type(done.history, tuple[tf.StepResult, ...])
        assert_type(done.step_results, dict[str, tf.StepResult])
        assert_type(done.step_results["charge"].attempts, int)
        assert_type(done.step_results["charge"].status, tf.StepStatus)
        assert_type(done.step_results["charge"].id, str)
        assert_type(done.waiting, dict[str, Any] | None)
        assert_type(done.children, tuple[str, ...])
        assert_type(done.to_dict(), dict[str, Any])
        seen = await engine.get_instance(iid)
        assert_type(seen, tf.WorkflowInstance | None)
        page = await engine.get_instances("order", "running", limit=10, after=done, order="newest")
        assert_type(page, list[tf.WorkflowInstance])
        assert_type(await engine.resume(), list[str])
        assert_type(await engine.purge(older_than=datetime.timedelta(days=1), status="completed"), int)
        assert_type(await engine.adapter.delete(iid), bool)
        unsubscribe = engine.events.on("workflow.*", lambda e: print(e["instance_id"]))
        assert_type(unsubscribe, Callable[[], None])

        async def async_cb(event: dict[str, Any]) -> None:
            return None

        engine.events.on("workflow.completed", async_cb)
        async with engine.events.subscribe("workflow.*", buffer=100) as events:
            async for event in events:
                assert_type(event, dict[str, Any])
                break
        assert_type(engine.events.wants("workflow.progress"), bool)
        assert_type(engine.trio_token, trio.lowlevel.TrioToken)
    try:
        pass
    except tf.RecordedError as recorded:
        assert_type(recorded.error_name, str)
        assert_type(recorded.cause, str)


async def tests_on_virtual_time() -> None:
    async with open_test_engine(max_running=5) as engine:
        assert_type(engine, tf.Engine)
        job = ScriptedJob(raises(ConnectionError, times=2), returns({"ok": True}), sleeps(datetime.timedelta(minutes=5)), hangs())
        engine.jobs.register("ship", job)
        assert_type(job.calls[0].time, float)
    report = await explore_crashes(order, {"total": 1}, jobs={"ship": ScriptedJob()}, signals=[("approved", {})],
                                   after_run=lambda outcome: None)
    assert_type(report, CrashReport)
    assert_type(report.baseline, Outcome)


def sync_test() -> None:
    async def main() -> str:
        return "x"

    assert_type(run(main), str)

    def setup(engine: tf.Engine) -> None:
        engine.jobs.register("ship", charge_sync)
        engine.register(order)

    with engine_portal(setup=setup) as portal:
        assert_type(portal, EnginePortal)
        async def start_one(engine: tf.Engine) -> str:
            return await engine.start("order", {"total": 1})

        assert_type(portal.call(start_one), str)  # (a named async def is typed; see FINDING 2)
        assert_type(portal.now, float)


# ------------------------------------------------------------------------------------------------
# Findings: each block below makes mypy --strict fail on the current code.
# ------------------------------------------------------------------------------------------------

# Was: the callables of ctx the builder takes (task input=/output=, tf.when conditions, map
# items=, child input=, pass transform=, succeed output=, fail cause=, wait seconds=/until=) are
# typed Callable[[Any], Any], so a lambda's ctx is Any: a typo is accepted and the instance fails
# at run time ("AttributeError: 'WorkflowContext' object has no attribute 'inptu'"). The entity
# step factories already type theirs Callable[[WorkflowContext], ...].
typo = (tf.workflow("typo")
        .task("t", job="ship", input=lambda ctx: ctx.inptu["x"])  # type: ignore[attr-defined]
        .choice("c", choices=tf.when(lambda ctx: assert_type(ctx, tf.WorkflowContext).input["x"] > 1, next="e"),
                default="e")
        .end("e")
        .build())

# Was: succeed's output= and continue_as_new's input= (a value, or a function of ctx) were typed
# Any: a lambda's ctx was Any too.
typo_ends = (tf.workflow("typo-ends")
             .choice("c", choices=tf.when(lambda ctx: bool(ctx.input), next="again"), default="done")
             .continue_as_new("again", input=lambda ctx: ctx.inptu + 1)  # type: ignore[attr-defined]
             .succeed("done", output=lambda ctx: ctx.inptu)  # type: ignore[attr-defined]
             .build())
values_too = tf.workflow("values").continue_as_new("again", input={"n": 1}).succeed("done", output=3)


# Was: EnginePortal.call with a lambda, as docs/testing.md and tests/typing/user_code.py write
# it, gives Any (its two overloads both match a lambda): the id, the instance (possibly None) a
# stateful test then uses are unchecked. At run time they are a str and a WorkflowInstance.
def portal_lambdas() -> None:
    with engine_portal(setup=lambda engine: engine.register(simple)) as portal:
        iid = portal.call(lambda engine: engine.start("simple", {"total": 1}))
        assert_type(iid, str)
        assert_type(portal.call(lambda engine: engine.get_instance(iid)), tf.WorkflowInstance | None)


# Was: ParallelError and MapError are ExceptionGroups of BranchError / ItemError only (the
# README: "an ExceptionGroup of BranchErrors in branch order"), but .exceptions keeps
# ExceptionGroup's typing (T | ExceptionGroup[T]): reading each branch's or item's error is a
# false union-attr error. At run time it works: ['a', 'b'] / [0, 1].
def branch_errors(result: tf.WorkflowResult) -> list[str]:
    if isinstance(result.error, tf.ParallelError):
        return [e.branch_name for e in result.error.exceptions]
    if isinstance(result.error, tf.MapError):
        return [f"{e.map_step}[{e.index}]" for e in result.error.exceptions]
    return []


# Was: open_engine() misused as the engine is accepted: _Opening defines __await__ (-> NoReturn)
# and __getattr__ (-> NoReturn) only to raise helpful errors at run time, which silences mypy.
# Run time: AttributeError "open_engine() gives the engine's block, not the engine (no 'register')"
# and TypeError "use it as `async with tf.open_engine(...) as engine:`".
def engine_misused() -> None:
    tf.open_engine().register(order)  # type: ignore[attr-defined]


async def engine_awaited() -> None:
    engine: tf.Engine = await tf.open_engine()  # type: ignore[misc]
    engine.register(order)


# Was: trioflow.testing.run(async_fn, *args: Any) does not tie args to async_fn, unlike the
# trio.run it wraps (TypeVarTuple). Run time: TypeError "main() takes 0 positional arguments but 2
# were given".
def run_wrong_args() -> None:
    async def main() -> None:
        return None

    run(main, 1, 2)  # type: ignore[arg-type]


# Was: with_hooks(**hooks: Callable[..., Any]) accepts any hook name and any arity; build
# refuses both at run time (DefinitionError "unknown hook on_strat" / "on_complete is called as
# on_complete(result), but ... cannot take 1 argument").
def on_done() -> None:
    return None


misspelt_hook = tf.workflow("h1").with_hooks(on_strat=on_complete)  # type: ignore[call-arg]
wrong_arity_hook = tf.workflow("h2").with_hooks(on_complete=on_done)  # type: ignore[arg-type]


# Was: tf.Catch(errors=...) is typed `object` (the attrs converter's parameter), so anything
# is accepted; run time: DefinitionError "Catch.errors must be a type, string, predicate or a list
# of them, got 42".
bad_catch = tf.Catch(errors=42, next="x")  # type: ignore[arg-type]


# Was: a saga step's execute is StepFn = Callable[..., Any]: a function that cannot take ctx
# is accepted; build() refuses it (DefinitionError "execute is called as execute(ctx), but ...
# cannot take 1 argument").
def no_ctx() -> int:
    return 1


no_ctx_step = tf.step("a", no_ctx)  # type: ignore[arg-type]


# Was: tf.Retry's own __init__ takes its fields positionally ("Retry(5) reads naturally",
# _retry.py) and Retry(5) works at run time, but the class is @attrs.frozen(kw_only=True) and
# mypy's attrs plugin types the generated kw-only __init__: a false "Too many positional
# arguments" error.
five_attempts = tf.Retry(5, 2.0)
