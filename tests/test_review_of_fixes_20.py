"""A review of eefdae5 and 8118f9c: each test failed on 8118f9c, before its fix. Virtual time
only (pytest-trio's autojump MockClock via open_test_engine / explore_crashes), no real sleeps,
no timed assertions. (Not taken: a job without input= copies the whole workflow input once per
step execution, map items included; README says so and what to do instead.)"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import explore_crashes, open_test_engine


class CustomBase(BaseException):
    """Neither Cancelled nor KeyboardInterrupt/SystemExit (like GeneratorExit, asyncio's CancelledError)."""


def _raise(exc: BaseException) -> Any:
    raise exc


async def _one(data: Any) -> int:
    return 1


async def _good(data: Any) -> str:
    await trio.sleep(5)
    return "ok"


# ------------------------------------------------------------------------------------------
# 2. An odd BaseException from user code other than a job still tears the engine down.
# ------------------------------------------------------------------------------------------

def _bad_workflow(where: str) -> tf.WorkflowDefinition:
    b = tf.workflow("bad")
    if where == "input_mapper":
        b = b.task("t", job=_one, input=lambda ctx: _raise(CustomBase()))
    elif where == "output_mapper":
        b = b.task("t", job=_one, output=lambda r, ctx: _raise(CustomBase()))
    elif where == "choice_condition":
        b = b.choice("c", choices=[tf.Choice(condition=lambda ctx: _raise(CustomBase()), next="x")],
                     default="x").pass_("x")
    elif where == "map_items":
        b = b.map("m", items=lambda ctx: _raise(CustomBase()), branch=tf.branch("i").task("t", job=_one).build())
    elif where == "retry_on":
        async def failing(data: Any) -> None:
            raise RuntimeError("x")
        b = b.task("t", job=failing, retry=tf.Retry(3, 1, retry_on=lambda e: _raise(CustomBase())))
    elif where == "fail_cause":
        b = b.fail("f", error="E", cause=lambda ctx: _raise(CustomBase()))
    elif where == "child_input":
        b = b.child("c", workflow="kid", input=lambda ctx: _raise(CustomBase()))
    elif where == "wait_seconds":
        b = b.wait("w", seconds=lambda ctx: _raise(CustomBase()))
    return b.build()


@pytest.mark.parametrize("where", ["input_mapper", "output_mapper", "choice_condition", "map_items", "retry_on",
                                   "fail_cause", "child_input", "wait_seconds"])
async def test_an_odd_base_exception_from_a_steps_other_callables_fails_its_instance_alone(
        autojump_clock: Any, where: str) -> None:
    """HOLE in 8118f9c (its claim: "a job raising an odd BaseException fails its step instead of
    stopping every instance"; README: only KeyboardInterrupt/SystemExit stop the process).
    Expected: a BaseException subclass (GeneratorExit, asyncio.CancelledError, an SDK's own)
    raised by a step's other user callables -- an ``input=``/``output=`` mapper, a choice
    condition, a map's ``items=``, a ``retry_on`` predicate, a fail step's ``cause=``, a child's
    ``input=``, a wait's ``seconds=`` -- fails that instance (as the same callable raising an
    Exception does) and the other instance completes.

    Before the fix: it escapes the instance actor (runtime/_engine.py _instance_actor catches only
    Exception) into the engine's nursery: the good instance is cancelled, wait() raises
    InstanceNotLiveError "running in storage but not running in this engine", the engine block
    raises a BaseExceptionGroup, and the instance stays 'running' in storage (a poison pill for
    the next engine) -- exactly the failure the commit fixed for jobs only.

    Cause: only actors/_task.py attempt()/run_task's job call go through _interrupted; e.g.
    actors/_task.py:204-207 (run_task's ``except BaseException``: not a cancellation -> ``raise``)
    for input=/output= mappers, actors/_lane.py:_decide_step (choice, fail cause), actors/_task.py
    attempt's ``retry.next_delay`` (``except Exception`` only), actors/_child.py:_start, the map's
    items and the wait's seconds callables all let a non-Exception through."""
    kid = tf.workflow("kid").task("k", job=_one).build()
    async with open_test_engine() as engine:
        engine.register(kid)
        engine.register(_bad_workflow(where))
        engine.register(tf.workflow("good").task("t", job=_good).build())
        good_id = await engine.start("good")
        bad_id = await engine.start("bad")
        assert (await engine.wait(bad_id)).status == "failed"
        assert (await engine.wait(good_id)).status == "completed"


# ------------------------------------------------------------------------------------------
# 3. Retries share one copy: an attempt's in-place change reaches the next attempt in memory,
#    but not after a restart between attempts.
# ------------------------------------------------------------------------------------------

async def _bump_job(data: Any) -> int:
    data["n"] += 1
    if data["n"] < 2:
        raise RuntimeError("again")
    return int(data["n"])


async def _bump_ctx(ctx: Any) -> int:
    ctx.input["n"] += 1
    if ctx.input["n"] < 2:
        raise RuntimeError("again")
    return int(ctx.input["n"])


async def _first(data: Any) -> dict[str, int]:
    return {"n": 0}


@pytest.mark.parametrize("style", ["job_input", "input_mapper_over_ctx_steps", "ctx_input"])
async def test_a_retried_attempt_that_changes_its_input_in_place_diverges_after_a_crash(
        autojump_clock: Any, style: str) -> None:
    """HOLE in 8118f9c ("each step execution gets its own copy ... a step that changes them in
    place changes nothing stored, and the run goes on as a restarted one would"). Expected: a
    retried job that changes its input in place (``data["n"] += 1``) behaves the same with or
    without a crash between attempts: each attempt starts from what storage holds.

    Before the fix: CrashDivergenceError "crash after snapshot write 2 of 4 (instance running), then
    resume: final status 'failed', the fault-free run ended 'completed'". In memory attempt 2
    sees attempt 1's change (n=1 -> 2, completes); after a restart between the attempts (the
    retry delay is stored, a crash point) every attempt gets a fresh copy (n stays 1, fails).

    Cause: the copy is per step *execution*, not per attempt: actors/_task.py:163-170 computes
    ``data`` (ctx.input copy, or the input= mapper's result over ctx.steps copies) once and
    attempt() (actors/_task.py:59-71) passes the same ``args`` to every attempt; ctx.copies
    (runtime/_context.py:_copy) is reset only per step in actors/_lane.py:77, not per attempt."""
    retry = tf.Retry(3, 1)
    if style == "job_input":
        wf = tf.workflow("w").task("a", job=_bump_job, retry=retry).build()
    elif style == "ctx_input":
        wf = tf.workflow("w").step("a", _bump_ctx, retry=retry).build()
    else:
        wf = (tf.workflow("w").task("f", job=_first)
              .task("a", job=_bump_job, input=lambda ctx: ctx.steps["f"], retry=retry).build())
    await explore_crashes(wf, {"n": 0})


# ------------------------------------------------------------------------------------------
# 4. cancel() now blocks up to 10 s: a bounded caller (a compensation) times out.
# ------------------------------------------------------------------------------------------

async def test_a_compensation_that_cancels_another_instance_is_not_cut_short_by_cancel_waiting(
        autojump_clock: Any) -> None:
    """REGRESSION (8118f9c; passes on 8118f9c^). Expected: a compensation that cancels a related
    instance (``await engine.cancel(other)``) succeeds once the cancel is decided: the other
    instance does end 'cancelled', so the saga's own compensation has done its job.

    Before the fix: with a compensation timeout of 5 s and the other instance's step in a shielded
    section (a commit it must not abandon, 30 s), cancel() does not return for 10 s; the
    compensation is cut short with CompensationTimeoutError and recorded as failed, although
    the cancel took effect. Same for a step with ``timeout=`` < 10 s (StepTimeoutError, then
    retries cancelling an instance already being cancelled: cancel() says False). Before the
    commit cancel() returned True at once.

    Cause: runtime/_engine.py:683-686 (Engine.cancel awaits run.decision_stored under
    move_on_after(CANCEL_STORE_WAIT=10)); only a caller in the *target's* own lane is exempt
    (runtime/_engine.py:655-656), so any bounded caller (compensation, step timeout, hook) pays
    for another instance's shielded step."""
    in_commit = trio.Event()

    async def shielded(data: Any) -> int:
        with trio.CancelScope(shield=True):
            in_commit.set()
            await trio.sleep(30)
        return 1

    async with open_test_engine() as engine:
        engine.register(tf.workflow("t").task("s", job=shielded).build())
        target = await engine.start("t")
        await in_commit.wait()

        async def undo(output: Any) -> None:
            assert await engine.cancel(target)

        engine.register(tf.workflow("w").task("a", job=_one, compensate=undo).fail("f", error="E")
                        .with_compensation_timeout(5).build())
        done = await engine.wait(await engine.start("w"))
        assert (await engine.wait(target)).status == "cancelled"
    assert done.status == "failed"
    assert not done.compensation_errors, done.compensation_errors
