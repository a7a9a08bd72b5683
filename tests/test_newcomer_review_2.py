"""A newcomer's review of the wave-2 features: what a new user's likely mistakes get (each test
failed before its fix).

Every test runs on trio's MockClock (autojump), so waits of days take no real time; a test
that would hang instead ends at a virtual deadline and fails.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import explore_crashes, open_test_engine, run

HANG = 10**10  # virtual seconds (three centuries): far beyond anything these runs should need


def test_execute_workflow_receive_without_timeout_fails_instead_of_hanging() -> None:
    """User expects: docs/waiting.md says that under execute_workflow "a receive step ... can only
    time out, since there is no engine to signal it", and a child step there "fails with a clear
    error" (InvalidArgumentError). So a receive step with no timeout, which can never end, should
    fail promptly with a clear error too.
    What happens: execute_workflow waits forever (here: still waiting after 10**6 virtual s)."""

    async def main() -> tuple[bool, object]:
        wf = tf.workflow("r").receive("r", signal="approved").build()
        with trio.move_on_after(HANG) as scope:
            result = await tf.execute_workflow(None, wf, None)
            return False, result
        return scope.cancelled_caught, None

    hung, result = run(main)
    assert not hung, "execute_workflow hung on a receive step without a timeout (no engine can signal it)"
    assert result is not None and not result.success  # type: ignore[attr-defined]


def test_explore_crashes_receive_without_its_signal_does_not_hang() -> None:
    """User expects: explore_crashes on a workflow with a receive step, called without a signal
    of that name in signals= (forgotten, or a typo such as "aproved"), reports that the
    fault-free run cannot end, as it does for a missing job ("... not in jobs=").
    What happens: the fault-free run waits forever for the signal; the test suite hangs."""

    async def main() -> bool:
        wf = tf.workflow("r").receive("r", signal="approved").build()
        with trio.move_on_after(HANG) as scope:
            try:
                await explore_crashes(wf, None, signals=[("aproved", {"by": "kim"})])
            except tf.TrioflowError:
                return False
        return scope.cancelled_caught

    assert not run(main), "explore_crashes hung: the receive step's signal was never sent"


def test_explore_crashes_child_workflow_missing_from_also_is_refused() -> None:
    """User expects: explore_crashes on a parent whose child step starts a workflow not given in
    also= is refused at once with a clear error, as a job missing from jobs= is
    (UnknownJobError "step 't' uses job 'nojob', which is not in jobs=").
    What happens: no error; it explores a baseline that failed with UnknownWorkflowError at the
    child step (report.baseline.status == "failed"), so a test that checks only that no
    CrashDivergenceError is raised passes without testing anything."""

    async def main() -> None:
        parent = tf.workflow("parent").child("bill", workflow="invoice").build()
        with pytest.raises(tf.TrioflowError, match="also"):
            await explore_crashes(parent, None)

    run(main)


def test_forgetting_await_on_start_is_named_in_the_error() -> None:
    """User expects: `await engine.wait(engine.start("s"))` (await forgotten on start) raises an
    error that says the argument is an un-awaited coroutine, as the engine already hints for
    other wrong arguments (a WorkflowInstance: "pass its id, ...", a definition: "pass the id
    start() returned").
    What happens: InvalidArgumentError "an instance id must be a string, got <coroutine object
    Engine.start ...>", with no hint to await it."""

    async def main() -> str:
        async def a(ctx: tf.WorkflowContext) -> int:
            return 1

        async with open_test_engine() as engine:
            engine.register(tf.workflow("s").step("a", a).build())
            coro = engine.start("s")
            try:
                await engine.wait(coro)  # type: ignore[arg-type]
            except tf.InvalidArgumentError as e:
                return str(e)
            finally:
                coro.close()
        return ""

    message = run(main)
    assert "await" in message, message


def test_ctx_steps_typo_cause_is_not_wrapped_in_quotes() -> None:
    """User expects: a typo in ctx.steps["..."] fails the step with a readable cause,
    no completed step named 'aa' (completed: 'a').
    What happens: the KeyError's str() is its repr, so the recorded cause (in
    instance.cause, logs, to_dict()) is wrapped in an extra pair of double quotes:
    "no completed step named 'aa' (completed: 'a')"."""

    async def main() -> str | None:
        async def a(ctx: tf.WorkflowContext) -> int:
            return 1

        async def b(ctx: tf.WorkflowContext) -> object:
            return ctx.steps["aa"]

        result = await tf.execute_workflow(None, tf.workflow("z").step("a", a).step("b", b).build(), {})
        return result.cause

    cause = run(main)
    assert cause is not None and not cause.startswith('"'), cause


def test_virtual_wall_clock_outside_trio_says_what_to_do() -> None:
    """User expects: trioflow.testing.virtual_wall_clock() called outside a trio run (e.g. at
    module level, to share one clock between engines as docs/waiting.md advises) raises a
    trioflow error saying it must be made inside the trio run on a MockClock.
    What happens: trio's bare RuntimeError "Cannot be used outside of a run context"."""
    from trioflow.testing import virtual_wall_clock

    with pytest.raises(tf.TrioflowError):
        virtual_wall_clock()
