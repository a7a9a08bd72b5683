"""A review of 0e657a7 (newcomer fixes), 9ce2da9 (catch fixes) and 25304ea (shared data): each
test failed before its fix (on 25304ea). Each docstring says what is expected, what happened,
the cause, and whether it was a regression (passed on the commit's parent) or a case the change
claimed to handle but missed. Autojump MockClock only, no real sleeps, no timed assertions."""

from __future__ import annotations

import functools
from typing import Any
from unittest import mock

import pytest
import trio

import trioflow as tf
from trioflow.adapters import MemoryDriver
from trioflow.testing import ScriptedJob, explore_crashes, open_test_engine, returns, sleeps, virtual_wall_clock


class Conn:
    """Something a step holds in ctx.data while it runs (a connection); never stored."""

    def query(self) -> str:
        return "row"


async def run_wf(wf: tf.WorkflowDefinition, *, also: tuple[tf.WorkflowDefinition, ...] = (), **opts: Any) -> Any:
    async with open_test_engine(clock=virtual_wall_clock(), **opts) as engine:
        for other in also:
            engine.register(other)
        engine.register(wf)
        return await engine.wait(await engine.start(wf.name))


# =============================================================================================
# 0e657a7: build() refuses callables "that cannot take their arguments"
# =============================================================================================

def with_db(f: Any) -> Any:
    """A dependency-injecting decorator (the usual SQLAlchemy-session / DI-container shape):
    the wrapper takes ``data``, supplies ``db`` itself, and keeps ``f``'s metadata."""
    @functools.wraps(f)
    async def wrapper(data: Any) -> Any:
        return await f(data, "db")
    return wrapper


@with_db
async def charge_with_db(data: Any, db: str) -> dict[str, str]:
    return {"db": db}


@mock.patch("os.getcwd", return_value="/patched")
async def charge_with_patch(data: Any, getcwd: Any) -> dict[str, str]:
    import os
    return {"cwd": os.getcwd()}


@pytest.mark.parametrize("job", [charge_with_db, charge_with_patch], ids=["functools.wraps-injector", "mock.patch"])
async def test_build_refuses_a_job_whose_decorator_supplies_an_argument(autojump_clock: Any, job: Any) -> None:
    """REGRESSION (0e657a7). Expected: a job wrapped by a decorator that takes ``data`` and
    supplies the wrapped function's other arguments itself (functools.wraps-based dependency
    injection, or ``unittest.mock.patch`` used as a decorator) builds and runs, as it did
    before: the wrapper *can* be called as ``job(data)``.
    Before the fix: ``build()`` raises ``DefinitionError: ... job is called as job(data), but
    charge_with_db(data, db) cannot take 1 argument``.
    Cause: runtime/_validate.py:208 ``inspect.signature(fn)`` follows ``__wrapped__`` (its
    default ``follow_wrapped=True``), so it checks the *wrapped* function's signature, not the
    callable that is actually called. Same for saga ``execute``/``compensate``."""
    wf = tf.workflow("w").task("t", job=job).build()
    inst = await run_wf(wf)
    assert inst.status == "completed", inst.error


async def test_explore_crashes_refuses_every_transactional_workflow(autojump_clock: Any) -> None:
    """REGRESSION (0e657a7), testing kit. Expected: ``explore_crashes`` can explore a
    transactional workflow (as before), or takes a ``driver=`` so that it can.
    Before the fix: ``DefinitionError: workflow 'w' is transactional ..., but there is no driver: pass
    one to open_engine(driver=...)``; the caller cannot, since explore_crashes opens its
    engines itself and has no driver option.
    Cause: runtime/_engine.py:220 (register refuses without a driver) vs
    runtime/testing/_crashes.py:177,193 (``open_engine(adapter=..., services=..., threads=False)``,
    never a driver)."""
    wf = tf.workflow("w").transactional().task("a", job="pay", compensate="refund").task("b", job="ship").build()
    jobs = {"pay": ScriptedJob(returns(1)), "refund": ScriptedJob(returns(None)), "ship": ScriptedJob(returns(2))}
    report = await explore_crashes(wf, {}, jobs=jobs)
    assert report.baseline.status == "completed"


async def test_update_entity_step_where_fn_giving_pairs_is_refused(autojump_clock: Any) -> None:
    """REGRESSION (0e657a7), minor. Expected: an update/delete entity step whose ``where_fn``
    gives column/value pairs (``[("id", 1)]``) works as it did: the step took
    ``dict(where_fn(ctx))``.
    Before the fix: the step fails with ``DriverError: step 'u': where_fn must return a dict of column
    names to values, got [('id', 1)]``.
    Cause: runtime/_entity_steps.py:72 ``_columns`` requires a ``Mapping`` where the old code
    (``dict(where_fn(ctx))``) accepted anything ``dict()`` takes."""
    driver = MemoryDriver()
    await driver.create("users", {"id": 1, "name": "a"})
    step = tf.update_entity_step("u", "users", lambda ctx: [("id", 1)], lambda ctx: {"name": "b"})
    result = await tf.execute_workflow(driver, tf.workflow("w").step(step).build(), None)
    assert result.status == "completed", result.error


# =============================================================================================
# 9ce2da9: recorded failures "raised as" FailStepError / ChildWorkflowError; tf.ALL by name
# =============================================================================================

async def test_a_child_steps_input_error_is_caught_as_child_workflow_error_after_a_restart(autojump_clock: Any) -> None:
    """REGRESSION (9ce2da9): a crash changes the outcome. Expected (SPEC: a crash must not
    change the outcome): a child step whose ``input=`` mapper raises ``KeyError`` fails with
    that ``KeyError`` (no child is started); ``Catch(errors=tf.ChildWorkflowError)`` on the
    enclosing parallel does not match it, before or after a restart: the run fails.
    Before the fix: ``CrashDivergenceError: crash after snapshot write 2 of 5 (step 'c' failed), then
    resume: final status 'completed', the fault-free run ended 'failed'``.
    Cause: runtime/_decide.py:88 ``recorded_failure`` marks *every* recorded failure of a
    ChildStep ``raised_as=ChildWorkflowError``; a child step also fails with its input
    mapper's error, ``UnknownWorkflowError``, ``InstanceIdConflictError``, ``InvalidArgumentError``
    (actors/_child.py:41-45,72-83), none of them a ChildWorkflowError; runtime/_matching.py:70
    then matches the type via ``raised_as`` (and :76 adds the name for string matchers)."""
    kid = tf.workflow("kid").task("k", job="ok").build()

    def bad_input(ctx: Any) -> Any:
        raise KeyError("missing")

    wf = (tf.workflow("w").parallel("p", branches=[
            tf.branch("x").child("c", workflow="kid", input=bad_input).build(),
            tf.branch("y").task("ty", job="slow").build()],
            catch=[tf.Catch(errors=tf.ChildWorkflowError, next="h")])
          .succeed("ok").pass_("h").build())
    jobs = {"slow": ScriptedJob(sleeps(50, returns(1))), "ok": ScriptedJob(returns(1))}
    report = await explore_crashes(wf, {}, jobs=jobs, also=[kid])
    assert report.baseline.status == "failed"


async def test_a_fail_steps_cause_error_is_caught_as_fail_step_error_after_a_restart(autojump_clock: Any) -> None:
    """REGRESSION (9ce2da9), same kind. Expected: a fail step whose ``cause(ctx)`` raises
    ``KeyError`` fails its lane with that ``KeyError`` (actors/_lane.py:191), which
    ``Catch(errors=tf.FailStepError)`` does not match, before or after a restart: the run fails.
    Before the fix: ``CrashDivergenceError: ... final status 'completed', the fault-free run ended
    'failed'``.
    Cause: runtime/_decide.py:88 marks every recorded failure of a FailStep
    ``raised_as=FailStepError``, whatever the step actually raised."""
    def cause(ctx: Any) -> Any:
        return ctx.data["reason"]

    wf = (tf.workflow("w").parallel("p", branches=[
            tf.branch("x").fail("nope", error="Rejected", cause=cause).build(),
            tf.branch("y").task("ty", job="slow").build()],
            catch=[tf.Catch(errors=tf.FailStepError, next="h")])
          .succeed("ok").pass_("h").build())
    report = await explore_crashes(wf, {}, jobs={"slow": ScriptedJob(sleeps(5, returns(1)))})
    assert report.baseline.status == "failed"


async def test_all_stops_routing_a_fail_step_named_storage_error_after_a_restart(autojump_clock: Any) -> None:
    """REGRESSION (9ce2da9): a crash changes the outcome. Expected: ``tf.fail(error=
    "StorageError")`` (a user-chosen name: "our blob store is down") in a branch is routed by
    ``Catch(errors=tf.ALL)`` on the parallel, as it is in the fault-free run, also after a
    restart.
    Before the fix: ``CrashDivergenceError: ... final status 'failed', the fault-free run ended
    'completed'``.
    Cause: runtime/_matching.py:91 ``_engines_own`` treats a ``RecordedError`` by its
    ``error_name`` alone; for one ``raised_as=FailStepError`` the name is the fail step's
    free-text ``error``, never a class, yet ``_named_engines_own("StorageError")`` says it is
    trioflow's own. (Live, a ``FailStepError`` is not checked by name, so the two runs differ.)"""
    wf = (tf.workflow("w").parallel("p", branches=[
            tf.branch("x").fail("nope", error="StorageError", cause="our blob store is down").build(),
            tf.branch("y").task("ty", job="slow").build()],
            catch=[tf.Catch(errors=tf.ALL, next="h")])
          .succeed("ok").pass_("h").build())
    report = await explore_crashes(wf, {}, jobs={"slow": ScriptedJob(sleeps(5, returns(1)))})
    assert report.baseline.status == "completed"


async def test_all_no_longer_routes_a_child_whose_fail_step_is_named_like_trioflows_errors(autojump_clock: Any) -> None:
    """REGRESSION (9ce2da9). Expected: a child ending in ``tf.fail(error="DefinitionError")``
    (the order's definition, a business name) is routed by the parent's
    ``Catch(errors=tf.ALL)``, as before, and as the same fail step in a parent branch is.
    Before the fix: the parent fails (``ChildWorkflowError ... failed: DefinitionError: ...``); the
    branch variant completes.
    Cause: runtime/_matching.py:91 — the child's failure reaches the parent as a
    ``RecordedError`` named "DefinitionError" (actors/_child.py:60) and ``_named_engines_own``
    takes it for trioflow's own error; the child's end notice does not carry that the failure
    was a fail step's name."""
    kid = tf.workflow("kid").fail("bad", error="DefinitionError", cause="the order's definition is invalid").build()
    wf = (tf.workflow("w").child("c", workflow="kid", catch=tf.Catch(errors=tf.ALL, next="h"))
          .succeed("ok").pass_("h", result="handled").build())
    wf2 = (tf.workflow("w2").parallel("p", branches=[tf.branch("x").fail("bad", error="DefinitionError").build()],
                                      catch=tf.Catch(errors=tf.ALL, next="h"))
           .succeed("ok").pass_("h", result="handled").build())
    inst = await run_wf(wf, also=(kid,))
    inst2 = await run_wf(wf2)
    assert (inst.status, inst2.status) == ("completed", "completed")


# =============================================================================================
# 25304ea: SharedData / take_changes_holding
# =============================================================================================

async def test_a_value_left_by_a_failed_attempt_now_fails_the_retried_step(autojump_clock: Any) -> None:
    """REGRESSION (25304ea). Expected (as before): attempt 1 puts a connection in ctx.data and
    raises ``ConnectionError``; the retry's durable checkpoint drops what cannot be stored
    (logged), attempt 2 succeeds: the run completes.
    Before the fix: the step fails with ``UnencodableValueError: shared data['conn'] is a Conn``.
    Cause: actors/_run.py:490 — the retry-delay checkpoint now uses ``take_changes_holding``,
    which keeps the value in ``state.data`` although no step holds it any more (the attempt is
    over, ``ctx._calling`` is None); the step's end check (actors/_lane.py:133) then blames the
    successful attempt. ``take_changes_holding`` should only keep values that
    ``held_by_another_step`` says a running step holds, and drop (restore) the rest."""
    calls: list[int] = []

    async def job(ctx: Any) -> str:
        calls.append(1)
        if len(calls) == 1:
            ctx.data["conn"] = Conn()
            raise ConnectionError("once")
        return "ok"

    wf = tf.workflow("w").step("s", job, retry=tf.Retry(max_attempts=3, interval=1)).build()
    inst = await run_wf(wf)
    assert inst.status == "completed", inst.error


async def test_a_value_left_by_a_failed_attempt_now_fails_an_innocent_sibling(autojump_clock: Any) -> None:
    """REGRESSION (25304ea), the commit's own promise inverted. Expected: branch b's attempt 1
    leaves a connection and raises; while b waits out its retry delay, branch a's step ends;
    a is not blamed (b's retry checkpoint dropped the value before): completed.
    Before the fix: branch a fails: ``UnencodableValueError: shared data['conn'] is a Conn``.
    Cause: as above (actors/_run.py:490 keeps the value), then runtime/_shared_data.py:66
    ``held_by_another_step`` is False because b's step is between attempts
    (``writer._calling is None``), so runtime/_codec.py check_data blames a."""
    calls: list[int] = []

    async def b(ctx: Any) -> str:
        calls.append(1)
        if len(calls) == 1:
            ctx.data["conn"] = Conn()
            raise ConnectionError("once")
        ctx.data.pop("conn", None)
        return "b"

    async def a(ctx: Any) -> str:
        await trio.sleep(5)
        return "a"

    wf = (tf.workflow("w").parallel("p", branches=[
        tf.branch("a").step("qa", a).build(),
        tf.branch("b").step("hb", b, retry=tf.Retry(max_attempts=3, interval=10)).build()])).build()
    inst = await run_wf(wf)
    assert inst.status == "completed", inst.error


async def holds_conn(ctx: Any) -> str:
    ctx.data["conn"] = Conn()
    await trio.sleep(10)
    return ctx.data.pop("conn").query()


async def test_a_hook_drops_a_value_a_running_sibling_holds(autojump_clock: Any) -> None:
    """MISSED CASE (25304ea claims: a value a running step holds "is not dropped by [siblings']
    checkpoints"). Expected: with an ``on_step_complete`` hook, branch b still finds the
    connection it put in ctx.data when branch a's step ends meanwhile: completed,
    ``{"a": "fast", "b": "row"}``.
    Before the fix: b fails with ``KeyError: 'conn'``.
    Cause: actors/_run.py:619 — after every hook ``self.check_data()`` runs with no ctx, so
    runtime/_codec.py check_data cannot tell a held value and ``restore_data`` deletes it."""
    async def quick(ctx: Any) -> str:
        await trio.sleep(5)
        return "fast"

    wf = (tf.workflow("w").parallel("p", branches=[
        tf.branch("a").step("qa", quick).build(),
        tf.branch("b").step("hb", holds_conn).build()])
          .with_hooks(on_step_complete=lambda *args: None).build())
    inst = await run_wf(wf)
    assert inst.status == "completed", inst.error
    assert inst.output == {"a": "fast", "b": "row"}


async def test_a_caught_sibling_failure_drops_a_value_a_running_sibling_holds(autojump_clock: Any) -> None:
    """MISSED CASE (25304ea). Expected: branch a's step fails and its catch routes it; branch b,
    still running, keeps the connection it holds in ctx.data: completed.
    Before the fix: b fails with ``KeyError: 'conn'``.
    Cause: actors/_run.py:434 ``_stage_ended`` (for ``add_caught``/``add_failure``) calls
    ``self.check_data()`` without the failing lane's ctx: the held value is restored away."""
    async def fails(ctx: Any) -> str:
        await trio.sleep(5)
        raise ValueError("x")

    wf = (tf.workflow("w").parallel("p", branches=[
        tf.branch("a").step("qa", fails, catch=tf.Catch(errors=ValueError, next="h")).succeed("ok")
        .pass_("h", result="handled").build(),
        tf.branch("b").step("hb", holds_conn).build()])).build()
    inst = await run_wf(wf)
    assert inst.status == "completed", inst.error
    assert inst.output == {"a": "handled", "b": "row"}
