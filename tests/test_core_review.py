"""A review of the core engine: each test failed before its fix. Every test but the SIGKILL
ones runs on trio's MockClock (autojump); those run cancel_kill_child.py (next to this file) as
a real process, which kills itself with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import explore_crashes, open_test_engine


class Boom(Exception):
    pass


class CustomBase(BaseException):
    """A BaseException subclass that is neither KeyboardInterrupt/SystemExit nor trio.Cancelled
    (what gevent's Timeout, some SDKs' abort signals, asyncio.CancelledError, GeneratorExit are)."""


# --------------------------------------------------------------------------------------------
# 1. One job raising a BaseException subclass tears the whole engine down.
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("exc", [GeneratorExit, CustomBase, asyncio.CancelledError])
async def test_a_job_raising_a_base_exception_fails_its_instance_alone(
        exc: type[BaseException], autojump_clock: trio.testing.MockClock) -> None:
    """Expected (actors/_supervisor.py docstring: "An actor that crashes ... is logged; the
    crash never propagates into the nursery, so it never cancels the other actors"; SPEC §9
    "fails alone"): the instance whose job raised ``GeneratorExit`` / ``asyncio.CancelledError``
    / a custom ``BaseException`` subclass fails (or at worst is reported failed) and every other
    instance in the engine goes on.

    Before the fix: ``actors/_task.py:_interrupted`` re-raises every non-``trio.Cancelled``
    BaseException "as it is" (it was written for KeyboardInterrupt/SystemExit only), and
    ``Engine._instance_actor`` (runtime/_engine.py, ``except Exception``) does not contain it, so
    it escapes ``start_contained_soon`` into the engine's nursery: every other running instance
    is cancelled, ``wait()`` on the failing one raises InstanceNotLiveError ("running in
    storage but not running in this engine"), the ``async with open_engine`` block raises a
    BaseExceptionGroup, and the instance stays ``running`` in storage, so the next engine
    runs the same job again and dies again (a poison pill)."""

    async def bad(data: Any) -> None:
        raise exc()

    async def good(data: Any) -> str:
        await trio.sleep(5)
        return "ok"

    async with open_test_engine() as engine:
        engine.register(tf.workflow("bad").task("t", job=bad).build())
        engine.register(tf.workflow("good").task("t", job=good).build())
        good_id = await engine.start("good")
        bad_id = await engine.start("bad")
        failed = await engine.wait(bad_id)
        assert failed.status == "failed"
        assert (await engine.wait(good_id)).status == "completed"


# --------------------------------------------------------------------------------------------
# 2. A job that mutates its argument (the workflow input) or ctx.steps changes the live run's
#    state but not what is stored: crash-free and resumed runs diverge.
# --------------------------------------------------------------------------------------------

async def test_a_job_mutating_its_input_does_not_change_the_workflow_input(
        autojump_clock: trio.testing.MockClock) -> None:
    """Expected: a job gets the task's input as data it owns (Step Functions hands each state
    its own JSON; SPEC §6: a resumed run goes on exactly as the crash-free one). Mutating it
    in place (``data.pop("card")`` to drop a secret, ``data["n"] += 1``) changes neither the
    instance's input nor what later steps see.

    Before the fix: ``actors/_task.py:161`` passes ``ctx.input``, i.e. ``state.input`` itself
    (runtime/_context.py:159 returns it uncopied), to the job. The mutation leaks into the
    live instance (later steps, ``wait()``'s ``input``) while storage keeps the original, so
    the project's own crash explorer reports a divergence: "crash after snapshot write 2 of 3
    (step 'a' completed), then resume: output 0, the fault-free run gave 1"."""

    async def a(data: Any) -> int:
        data["n"] += 1
        return data["n"]

    async def b(data: Any) -> int:
        return data["n"]

    wf = tf.workflow("w").task("a", job=a).task("b", job=b).build()
    await explore_crashes(wf, {"n": 0})  # raises CrashDivergenceError


async def test_wait_and_get_instance_agree_on_the_input_after_a_job_mutated_it(
        autojump_clock: trio.testing.MockClock) -> None:
    """Expected: ``wait()`` and a later ``get_instance()`` describe the same finished instance.

    Before the fix: ``wait()`` returns ``to_instance(run.state)`` whose ``input`` the job mutated
    (``{'n': 99}``), ``get_instance()`` reads storage (``{'n': 0}``). Same cause as above
    (actors/_task.py:161)."""

    async def a(data: Any) -> int:
        data["n"] = 99
        return 1

    async with open_test_engine() as engine:
        engine.register(tf.workflow("w").task("a", job=a).build())
        iid = await engine.start("w", {"n": 0})
        done = await engine.wait(iid)
        stored = await engine.get_instance(iid)
        assert stored is not None
        assert done.input == stored.input == {"n": 0}


async def test_idempotent_start_of_a_running_instance_survives_a_job_mutating_its_input(
        autojump_clock: trio.testing.MockClock) -> None:
    """Expected (README, Hosting: "start(..., instance_id=order_id) is idempotent, so a client
    that retries the POST does not start a second checkout"): the client retrying with the very
    same body gets the same id back.

    Before the fix: InstanceIdConflictError "already belongs to an instance of 'w' with another input":
    ``_check_same_start`` (runtime/_engine.py) compares the retried body with the live
    ``run.state.input``, which the first step mutated (``data.pop("card")``) through the
    uncopied reference handed to it at actors/_task.py:161."""
    reached = trio.Event()
    go_on = trio.Event()

    async def scrub(data: Any) -> int:
        data.pop("card")  # drop the secret before logging the order
        return 1

    async def hold(data: Any) -> int:
        reached.set()
        await go_on.wait()
        return 2

    async with open_test_engine() as engine:
        engine.register(tf.workflow("w").task("scrub", job=scrub).task("hold", job=hold).build())
        body = {"order": 1, "card": "4242"}
        await engine.start("w", dict(body), instance_id="ORD-1")
        await reached.wait()
        assert await engine.start("w", dict(body), instance_id="ORD-1") == "ORD-1"
        go_on.set()


async def test_a_step_mutating_an_earlier_output_through_ctx_steps_changes_nothing_stored(
        autojump_clock: trio.testing.MockClock) -> None:
    """Expected: ``ctx.steps`` is documented "a live, read-only view"
    (runtime/_context.py:150); a step that (mistakenly) edits a value it reads there must not
    rewrite another step's recorded output, or the run and its resume diverge (the
    compensation of step ``a`` gets one value in the crash-free run and another after a
    restart).

    Before the fix: ``StepOutputs.__getitem__`` returns the record's own output object, so the edit
    rewrites ``step_results['a'].output`` / ``history[0].output`` in memory (``{'v': [1, 99]}``)
    while storage keeps ``{'v': [1]}``."""

    async def a(data: Any) -> dict[str, list[int]]:
        return {"v": [1]}

    async def b(ctx: tf.WorkflowContext) -> int:
        ctx.steps["a"]["v"].append(99)
        return 2

    async with open_test_engine() as engine:
        engine.register(tf.workflow("w").task("a", job=a).step("b", b).build())
        iid = await engine.start("w")
        done = await engine.wait(iid)
        stored = await engine.get_instance(iid)
        assert stored is not None
        assert stored.step_results["a"].output == {"v": [1]}
        assert done.step_results["a"].output == stored.step_results["a"].output


# --------------------------------------------------------------------------------------------
# 3. cancel() that said True is not durable: SIGKILL right after it, and the instance runs on.
# --------------------------------------------------------------------------------------------

CHILD = str(Path(__file__).with_name("cancel_kill_child.py"))


@pytest.mark.parametrize("which", ["running", "pending"])
def test_a_cancel_that_returned_true_survives_sigkill(tmp_path: Path, which: str) -> None:
    """Expected: once ``await engine.cancel(iid)`` returned ``True`` the cancel is decided for
    good (Temporal's RequestCancelWorkflowExecution / Step Functions' StopExecution are durable
    when acknowledged; the engine itself stores the decision before a *graceful* shutdown, see
    ``store_cancel`` in actors/_instance.py, and before compensating a queued resumed instance
    in ``Engine.cancel``): a process killed right after it leaves the instance to be
    compensated and end ``cancelled``.

    Before the fix: ``Engine.cancel`` (runtime/_engine.py, ``run.cancel_requested = True;
    run.cancel_scope.cancel()`` for a running instance, ``self._launch(run)`` for a queued
    pending one) stores nothing before returning True; the decision is only written by
    ``_end_badly`` later, after the step's cancellation has unwound. SIGKILL in between: the
    next engine resumes the instance *forward*, re-runs the step and ends it ``completed``."""
    db = str(tmp_path / "c.db")
    first = subprocess.run([sys.executable, CHILD, db, "run", which], capture_output=True, text=True, timeout=120)
    assert "CANCELLED True" in first.stdout, first.stdout + first.stderr
    second = subprocess.run([sys.executable, CHILD, db, "resume", which], capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    target = "second" if which == "pending" else "first"
    assert summary[target] == "cancelled", summary
