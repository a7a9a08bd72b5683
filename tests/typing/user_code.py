"""Code as a user writes it, checked by ``mypy --strict`` (scripts/typecheck) against the
installed package's types, not run: what the README shows must type-check, not only work."""

from __future__ import annotations

import datetime

import trioflow as tf
from trioflow.testing import ScriptedJob, open_test_engine, returns, engine_portal, sleeps


async def reserve(ctx: tf.WorkflowContext) -> str:
    return "r-1"


async def release(ctx: tf.WorkflowContext, held: str) -> None:
    return None


async def charge(data: dict[str, int]) -> dict[str, str]:
    return {"charge_id": "ch-1"}


# One rule, one branch or one catcher alone, as the README says each option takes.
order = (
    tf.workflow("order")
    .step("reserve", reserve, release)
    .task("charge", job=charge, input=lambda ctx: {"total": ctx.input["total"]},
          output=lambda result, ctx: result["charge_id"], retry=tf.Retry(max_attempts=3),
          catch=tf.Catch(errors=[ConnectionError], next="notify"))
    .choice("route", choices=tf.Choice(condition=lambda ctx: ctx.input["total"] > 100, next="approve"),
            default="ship")
    .receive("approve", signal="approved", timeout=datetime.timedelta(days=3), next="ship")
    .parallel("ship", branches=tf.branch("parcel").step("send", reserve).build(), next="notify")
    .wait("notify", seconds=60)
    .build()
)


async def main() -> None:  # (run on trio's MockClock, as tests run it)
    async with open_test_engine() as engine:
        engine.register(order)
        engine.jobs.register("charge", ScriptedJob(returns({"charge_id": "ch-1"})))
        iid: str = await engine.start("order", {"total": 10})
        await engine.signal(iid, "approved", payload={"by": "manager"})
        done: tf.WorkflowInstance = await engine.wait(iid)
        status: tf.Status = done.status
        print(status, done.history, done.compensated_steps)



async def engine_options() -> None:
    """open_test_engine takes open_engine's options, typed: a misspelt one is a type error (the
    ignore below is itself an error under --strict if mypy stops seeing it)."""
    async with open_test_engine(max_running=5, retain_finished=60):
        pass
    async with open_test_engine(max_runing=5):  # type: ignore[call-arg]
        pass


def portal_with_restarts() -> None:
    """A synchronous test drives an engine through a portal; setup registers on every open."""
    with engine_portal(setup=lambda engine: engine.register(order), max_running=5) as portal:
        iid: str = portal.call(lambda engine: engine.start("order", {"total": 10}))
        portal.advance(60.0)
        portal.advance(datetime.timedelta(days=1))  # durations take a timedelta everywhere
        portal.restart(downtime=3_600)
        portal.restart(downtime=datetime.timedelta(hours=1))
        seen: tf.WorkflowInstance | None = portal.call(lambda engine: engine.get_instance(iid))
        print(seen, portal.now)


def portal_options() -> None:
    """engine_portal takes open_engine's options, typed as open_test_engine's are: a misspelt
    one, or threads=True (which it refuses), is a type error."""
    with engine_portal(retain_finished=datetime.timedelta(minutes=1), storage_retry_for=5, threads=False):
        pass
    with engine_portal(max_runing=5):  # type: ignore[call-arg]
        pass
    with engine_portal(max_running="5"):  # type: ignore[arg-type]
        pass
    with engine_portal(threads=True):  # type: ignore[arg-type]
        pass


async def saga_without_an_engine() -> None:
    """run_workflow with a timedelta timeout and a job by name (its callable in jobs=)."""
    result: tf.WorkflowResult = await tf.run_workflow(
        None, "n", [tf.step("a", "charge-card")], timeout=datetime.timedelta(seconds=3), jobs={"charge-card": reserve})
    print(result.status)
    tf.create_entity_step("c", "orders", lambda ctx: {"id": 1}, timeout=datetime.timedelta(seconds=3))
    ScriptedJob(sleeps(datetime.timedelta(minutes=5)))


async def renewals(engine: tf.Engine) -> int:
    """A loop kept small with continue_as_new: input a value or a callable of ctx."""
    monthly = (tf.workflow("monthly").wait("month", seconds=datetime.timedelta(days=30))
               .continue_as_new("renew", input=lambda ctx: ctx.input + 1).build())
    engine.register(monthly)
    view: tf.WorkflowInstance | None = await engine.get_instance(await engine.start("monthly", 1))
    return 0 if view is None else view.runs


async def hooks_shared_and_purged(engine: tf.Engine) -> int:
    """Hooks given to run_workflow by name (a dict annotated as the hooks it holds), a retry
    policy's errors from a module's shared list, and a purge of one finished status."""
    transient: list[type[Exception]] = [ConnectionError, TimeoutError]
    hooks: tf.HookFunctions = {"on_complete": lambda result: print(result.status)}
    await tf.run_workflow(None, "n", [tf.step("a", reserve, retry=tf.Retry(3, retry_on=transient))], hooks=hooks)
    tf.run_workflow(None, "n", [], hooks={"on_complte": print})  # type: ignore[arg-type,unused-coroutine]
    await engine.purge(older_than=datetime.timedelta(days=30), status="running")  # type: ignore[arg-type]
    return await engine.purge(older_than=datetime.timedelta(days=30), status="failed")
