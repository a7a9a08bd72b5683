"""A review of Catch, tf.ALL and ctx.error against docs/errors.md, README.md and SPEC §12: each
test failed before its fix (its docstring says what is expected and what happened; autojump
MockClock, no real sleeps)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import ScriptedJob, explore_crashes, open_test_engine, raises, returns, sleeps


class Boom(Exception):
    pass


class CardDeclined(Exception):
    pass


async def run_wf(wf: tf.WorkflowDefinition, input: Any = None, *, also: tuple[tf.WorkflowDefinition, ...] = ()) -> tf.WorkflowInstance:
    async with open_test_engine() as engine:
        for other in also:
            engine.register(other)
        engine.register(wf)
        return await engine.wait(await engine.start(wf.name, input))


# --------------------------------------------------------------------------------------------
# ctx.error leaked from an earlier execution into a nested branch
# --------------------------------------------------------------------------------------------

async def test_ctx_error_is_stale_in_a_nested_branch_after_the_outer_parallel_is_caught_and_run_again(autojump_clock: Any) -> None:
    """docs/errors.md: ``ctx.error`` is "the failure most recently caught in this lane" and
    (runtime/_context.py) "only this execution of the map or parallel step the lane runs in
    counts: its lane key is reused ... in a later execution (a loop)".

    Setup: outer fail-fast parallel P (caught, routed back to P) whose branch x runs an inner
    parallel Q; in Q's branch y, ``t1`` fails and is caught in P's first execution, then y
    goes on to a slow step while P's other branch fails, so fail-fast cancels Q (Q never gets
    a record). P is caught and runs again; this time ``t1`` succeeds and ``look`` reads
    ``ctx.error``.

    Expected: ``None`` (nothing was caught in this execution of branch y).
    Before the fix: the error caught in the *previous* execution, ``{'error': 'CardDeclined', ...}``.

    Cause: WorkflowContext.error stopped scanning back only at a
    record of the innermost parallel step (Q); a Q that was cancelled by an outer fail-fast
    has no record, so the scan runs into the earlier execution's records of the reused lane
    key "P/x/Q/y"."""
    rounds = {"t1": 0, "z": 0}
    seen: list[Any] = []

    async def t1(d: Any) -> str:
        rounds["t1"] += 1
        if rounds["t1"] == 1:
            raise CardDeclined("first round")
        return "ok"

    async def slow(d: Any) -> str:
        await trio.sleep(10)
        return "slow"

    async def z(d: Any) -> str:
        rounds["z"] += 1
        if rounds["z"] == 1:
            await trio.sleep(5)
            raise Boom("z fails once")
        return "z"

    def look(ctx: tf.WorkflowContext) -> str:
        seen.append(ctx.error)
        return "looked"

    inner = (tf.branch("y").task("t1", job=t1, catch=tf.Catch(errors=tf.ALL, next="h1"))
             .pass_("look", transform=look, end=True)
             .pass_("h1").task("slow", job=slow).build())
    wf = (tf.workflow("w")
          .parallel("P", branches=[tf.branch("x").parallel("Q", branches=[inner]).build(),
                                   tf.branch("zz").task("z", job=z).build()],
                    catch=tf.Catch(errors=Boom, next="again"))
          .succeed("done")
          .pass_("again", next="P")
          .build())
    inst = await run_wf(wf)
    assert inst.status == "completed", inst.error
    assert rounds == {"t1": 2, "z": 2}
    assert seen == [None], seen


# --------------------------------------------------------------------------------------------
# tf.ALL routed trioflow's own DefinitionError / StorageError when they came wrapped
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["parallel-wait-all", "map-wait-all", "map-tolerated"])
@pytest.mark.parametrize("err", [tf.DefinitionError, tf.StorageUnavailableError])
async def test_all_routes_definition_and_storage_errors_of_wait_all_and_tolerating_fanouts(
    autojump_clock: Any, kind: str, err: type[Exception]
) -> None:
    """docs/errors.md / SPEC §12: ``tf.ALL`` "matches every error except trioflow's own
    ``DefinitionError`` and ``StorageError`` (subclasses included), which no workflow should
    route around".

    Expected: a branch / item failing with ``DefinitionError`` or ``StorageUnavailableError``
    is not routed by ``Catch(errors=tf.ALL)``: the instance fails, exactly as it does for the
    same failure under a fail-fast parallel or fail-fast map (which do fail: checked in
    test_passing.py).
    Before the fix: under ``on_error="wait-all"`` (ParallelError / MapError) or with
    ``tolerated_failures`` (MapError) the catch routes it and the instance completes.

    Cause: runtime/_matching.py:77 checks the exclusion on ``root`` only; a ParallelError /
    MapError is its own root, so the DefinitionError / StorageError inside is never looked at."""
    async def job(data: Any) -> Any:
        raise err("engine-level problem")

    br = tf.branch("x").task("t", job=job).build()
    b = tf.workflow("w")
    if kind == "parallel-wait-all":
        b = b.parallel("p", branches=[br], on_error="wait-all", catch=[tf.Catch(errors=tf.ALL, next="h")])
    else:
        opts: dict[str, Any] = {"on_error": "wait-all"} if kind == "map-wait-all" else {"tolerated_failures": 1}
        b = b.map("p", items=lambda ctx: [0, 1, 2], branch=br, catch=[tf.Catch(errors=tf.ALL, next="h")], **opts)
    wf = b.succeed("ok").pass_("h").build()
    inst = await run_wf(wf)
    assert inst.status == "failed", [(r.id, r.status) for r in inst.history]


async def test_all_routes_a_child_that_failed_with_a_storage_error(autojump_clock: Any) -> None:
    """Same promise as above; a child step fails "with the child's own error", which catchers
    match (docs/errors.md, README "Map and child steps").

    Expected: a child that failed with ``StorageUnavailableError`` is not routed by
    ``tf.ALL`` (as the same error in a task step is not): the parent fails.
    Before the fix: the parent's ``Catch(errors=tf.ALL)`` routes it and the parent completes.

    Cause: the child's error reaches the parent as a ``RecordedError`` (actors/_child.py:60);
    runtime/_matching.py:77 only checks ``isinstance(root, (DefinitionError, StorageError))``,
    never the recorded name."""
    async def job(d: Any) -> Any:
        raise tf.StorageUnavailableError("db gone")

    kid = tf.workflow("kid").task("t", job=job).build()
    wf = (tf.workflow("w").child("c", workflow="kid", catch=tf.Catch(errors=tf.ALL, next="h"))
          .succeed("ok").pass_("h").build())
    inst = await run_wf(wf, also=(kid,))
    assert inst.status == "failed", [(r.id, r.status) for r in inst.history]


# --------------------------------------------------------------------------------------------
# A catch decided differently after a crash (recorded failures)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [tf.DefinitionError, tf.StorageUnavailableError])
async def test_all_routes_a_recorded_definition_or_storage_error_after_a_restart(autojump_clock: Any, error: type[Exception]) -> None:
    """README "Durability" / SPEC §6 and docs/errors.md ("A failure a resume finds already
    stored is matched from its record"): a crash must not change the outcome.

    Fault-free: a fail-fast parallel whose branch fails with ``DefinitionError`` (or
    ``StorageUnavailableError``) is not routed by ``Catch(errors=tf.ALL)``; the run fails.
    With a crash right after the branch failure's checkpoint (before the parallel step
    decides), the resume matches a ``RecordedError`` named "DefinitionError" and ``tf.ALL``
    routes it: the run completes. ``explore_crashes`` raises ``CrashDivergenceError``
    ("final status 'completed', the fault-free run ended 'failed'").

    Cause: runtime/_matching.py:77 excludes only live ``DefinitionError``/``StorageError``
    instances; for a ``RecordedError`` it should exclude by recorded name (as line 68 matches
    types by recorded name)."""
    wf = (tf.workflow("w").parallel("p", branches=[
            tf.branch("x").task("tx", job="bad").build(),
            tf.branch("y").task("ty", job="slow").build()],
            catch=[tf.Catch(errors=tf.ALL, next="h")])
          .succeed("ok").pass_("h").build())
    jobs = {"bad": ScriptedJob(raises(error, "engine-level problem")), "slow": ScriptedJob(sleeps(5, returns(1)))}
    report = await explore_crashes(wf, {}, jobs=jobs)
    assert report.baseline.status == "failed"


@pytest.mark.parametrize("matcher", [tf.FailStepError, tf.StepError])
async def test_a_type_catch_of_a_branch_fail_step_is_lost_after_a_restart(autojump_clock: Any, matcher: type[Exception]) -> None:
    """docs/errors.md: a fail step fails its lane with a ``tf.FailStepError``; a catch on the
    parallel step can route it; a failure found stored after a restart is "matched from its
    record: types by the recorded class name".

    Fault-free: ``Catch(errors=tf.FailStepError)`` (or ``tf.StepError``, its base) on a
    fail-fast parallel routes the branch's fail step; the run completes.
    With a crash right after the fail step's record is stored, the resume matches a
    ``RecordedError`` named "OrderCancelled" (the fail step's *error name*), which is not a
    class name, so the type no longer matches: the run fails. ``explore_crashes`` raises
    ``CrashDivergenceError`` ("final status 'failed', the fault-free run ended 'completed'").

    Cause: actors/_lane.py:93 rebuilds the failure as ``RecordedError(error, error_name,
    cause)``, which loses that it was a ``FailStepError``; runtime/_matching.py:68 can only
    match types by that name."""
    wf = (tf.workflow("w").parallel("p", branches=[
            tf.branch("x").fail("nope", error="OrderCancelled", cause="c").build(),
            tf.branch("y").task("ty", job="slow").build()],
            catch=[tf.Catch(errors=matcher, next="h")])
          .succeed("ok").pass_("h").build())
    jobs = {"slow": ScriptedJob(sleeps(5, returns(1)))}
    report = await explore_crashes(wf, {}, jobs=jobs)
    assert report.baseline.status == "completed"


async def test_a_child_workflow_error_catch_is_lost_after_a_restart(autojump_clock: Any) -> None:
    """As above, for a child step in a branch: ``Catch(errors=tf.ChildWorkflowError)`` on the
    fail-fast parallel routes the failed child in a fault-free run (completed). With a crash
    after the child step's failure is stored and before the parallel decides, the recorded
    error is only the child's own error ("ValueError"), the ``ChildWorkflowError`` wrapper is
    gone, the catch does not match, and the run fails (``CrashDivergenceError``: "final
    status 'failed', the fault-free run ended 'completed'").

    Cause: same as above (actors/_lane.py:93; runtime/_matching.py:68)."""
    kid = tf.workflow("kid").task("k", job="bad").build()
    wf = (tf.workflow("w").parallel("p", branches=[
            tf.branch("x").child("c", workflow="kid").build(),
            tf.branch("y").task("ty", job="slow").build()],
            catch=[tf.Catch(errors=tf.ChildWorkflowError, next="h")])
          .succeed("ok").pass_("h").build())
    jobs = {"slow": ScriptedJob(sleeps(50, returns(1))), "bad": ScriptedJob(raises(ValueError, "v"))}
    report = await explore_crashes(wf, {}, jobs=jobs, also=[kid])
    assert report.baseline.status == "completed"


async def test_all_still_routes_a_child_that_failed_with_a_job_error_of_a_shared_name(autojump_clock: Any) -> None:
    """A recorded failure is known by its name only: ``sqlite3.DatabaseError`` shares its name
    with trioflow's SQLite adapter's ``DatabaseError`` (a storage error), and a child whose job
    raised it is routed by ``tf.ALL``, as the same error in a task step is."""
    import sqlite3

    async def job(d: Any) -> Any:
        raise sqlite3.DatabaseError("the job's own database")

    kid = tf.workflow("kid").task("t", job=job).build()
    wf = (tf.workflow("w").child("c", workflow="kid", catch=tf.Catch(errors=tf.ALL, next="h"))
          .succeed("ok").pass_("h").build())
    inst = await run_wf(wf, also=(kid,))
    assert inst.status == "completed", [(r.id, r.status) for r in inst.history]
