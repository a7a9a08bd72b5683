"""Retries, step and workflow timeouts, catch and compensation, from a review (each failed before
its fix): a step's record spans the waits it left memory in; a cancel or timeout while a retry
waits out of memory keeps the execution in history; predicates and blank error names that would
match every error are refused at build(); a prebuilt step takes no options it would drop. All run on trio's
MockClock(autojump_threshold=0) (pytest-trio's ``autojump_clock`` fixture); none sleeps for real
or asserts on real time.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import open_test_engine


class Boom(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# 1. A retried step whose retry delay let the instance leave memory records the wrong start.
# ---------------------------------------------------------------------------------------------


async def test_a_retried_steps_record_starts_when_its_first_attempt_started(autojump_clock: Any) -> None:
    """StepResult.started_at / completed_at must span the step's attempts and delays, as they do
    under execute_workflow and when the delay is waited in memory. When the delay is long enough
    for the instance to leave memory (docs/waiting.md), the woken run takes the wake-up time as
    the step's start (actors/_lane.py:88), so the record says a step that took 10 s took 0 s.
    (With interval=0.5, waited in memory, the same test passes: 1.0 s.) The same goes for every
    step an instance parks in: a one-hour ``.wait`` step's record shows 0 s."""
    interval = 5.0  # > PARK_AFTER (1 s): the instance leaves memory between attempts
    tries = 0

    async def flaky(ctx: tf.WorkflowContext) -> str:
        nonlocal tries
        tries += 1
        if tries < 3:
            raise Boom(f"try {tries}")
        return "ok"

    wf = (tf.workflow("retried")
          .step("charge", flaky, retry=tf.Retry(max_attempts=3, interval=interval, backoff_rate=1.0))
          .build())
    async with open_test_engine() as engine:
        engine.register(wf)
        instance = await engine.wait(await engine.start("retried"))
    record = instance.step_results["charge"]
    assert instance.status == "completed" and record.attempts == 3
    assert record.started_at is not None and record.completed_at is not None
    # Two delays of `interval` seconds passed between the first attempt and the last one.
    assert record.completed_at - record.started_at == pytest.approx(2 * interval)
    assert record.started_at == pytest.approx(instance.started_at, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# 2. A workflow timeout during a parked retry delay drops the step's execution from history.
# ---------------------------------------------------------------------------------------------


async def test_a_workflow_timeout_during_a_parked_retry_delay_keeps_the_steps_execution_in_history(
    autojump_clock: Any,
) -> None:
    """A step that made attempts and was then cut short by the workflow timeout while waiting
    for its next attempt is recorded in ``history`` / ``step_results`` with the attempts it made
    when the delay is waited in memory (status failed, attempts 3). When the delay parks the
    instance, the woken run is cancelled at actors/_lane.py:74 before run_task
    (actors/_task.py:184-191) can record the interrupted execution: the step, which ran three
    attempts, is simply missing from the history (same for engine.cancel()). With interval=0.75
    (in memory) this same test passes."""
    interval = 20.0  # > PARK_AFTER: the instance leaves memory while it waits for attempt 4
    calls = 0

    async def flaky(ctx: tf.WorkflowContext) -> None:
        nonlocal calls
        calls += 1
        raise Boom("payment service down")

    wf = (tf.workflow("times-out")
          .step("charge", flaky, retry=tf.Retry(max_attempts=10, interval=interval, backoff_rate=1.0,
                                                max_interval=interval))
          .with_timeout(2.5 * interval)
          .build())
    async with open_test_engine() as engine:
        engine.register(wf)
        instance = await engine.wait(await engine.start("times-out"))
    assert instance.status == "timed_out" and calls == 3
    assert [h.step_name for h in instance.history] == ["charge"]
    record = instance.step_results["charge"]
    assert record.status == "failed" and record.attempts == 3


# ---------------------------------------------------------------------------------------------
# 3. An async predicate in retry_on / Catch.errors always "matches".
# ---------------------------------------------------------------------------------------------


async def _is_transient(error: BaseException) -> bool:
    return isinstance(error, ConnectionError)


async def _ok(ctx: tf.WorkflowContext) -> str:
    return "ok"


def test_an_async_retry_on_predicate_is_refused_at_build() -> None:
    """``retry_on=[async_predicate]`` is accepted (runtime/_matching.py:46) and at run time
    ``i(root)`` (runtime/_matching.py:70) is a coroutine, which is truthy: every error is
    retried, a ValueError as often as max_attempts says. build() refuses async choice
    conditions and pass transforms for exactly this reason; a retry_on or catch predicate
    must be refused the same way (DefinitionError naming the step)."""
    with pytest.raises(tf.DefinitionError, match="'charge'|retry_on"):
        (tf.workflow("w")
         .step("charge", _ok, retry=tf.Retry(max_attempts=5, retry_on=[_is_transient]))
         .build())


def test_an_async_catch_predicate_is_refused_at_build() -> None:
    """Same for ``Catch(errors=[async_predicate])``: it catches every error (even the
    DefinitionError/StorageError that tf.ALL leaves alone), whatever the predicate says."""
    with pytest.raises(tf.DefinitionError, match="'charge'|Catch"):
        (tf.workflow("w")
         .step("charge", _ok, catch=[tf.Catch(errors=[_is_transient], next="handle")])
         .succeed("done")
         .step("handle", _ok)
         .build())


# ---------------------------------------------------------------------------------------------
# 4. An empty error-name string matches every error, more than tf.ALL does.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["catch", "retry_on"])
def test_an_empty_error_name_is_refused(where: str) -> None:
    """``Catch(errors=[""])`` / ``Retry(retry_on="")`` are accepted, and since a string matches
    when it occurs in the error's message (runtime/_matching.py:60-62), ``""`` matches every
    error, including trioflow's DefinitionError and StorageError that tf.ALL deliberately does
    not. An empty error name (Step Functions: an ErrorEquals entry) can only be a mistake (a
    blank config value); Catch already refuses an empty list of errors, and it must refuse this."""
    with pytest.raises(tf.DefinitionError):
        if where == "catch":
            (tf.workflow("w").step("a", _ok, catch=[tf.Catch(errors=[""], next="b")]).step("b", _ok).build())
        else:
            tf.workflow("w").step("a", _ok, retry=tf.Retry(max_attempts=3, retry_on="")).build()


# ---------------------------------------------------------------------------------------------
# 5. Options given with a prebuilt step are silently dropped.
# ---------------------------------------------------------------------------------------------


async def test_options_given_with_a_prebuilt_step_are_applied_or_refused(autojump_clock: Any) -> None:
    """SPEC: ``.step(tf.step("notify", notify))  # prebuilt step objects are accepted too``.
    ``.step(prebuilt, timeout=5, retry=..., catch=[...])`` builds without a word, and every
    option is dropped (runtime/_builder.py:110-112): the step has no timeout (it hangs past
    it), is not retried, and even ``catch=[tf.Catch(errors=tf.ALL, next="nowhere")]`` passes
    build() (§7 requires a target that points nowhere to be refused)."""
    calls = 0

    async def hang(ctx: tf.WorkflowContext) -> None:
        nonlocal calls
        calls += 1
        await trio.sleep(3600)

    try:
        wf = (tf.workflow("w")
              .step(tf.step("call-api", hang), timeout=5, retry=tf.Retry(max_attempts=2, interval=1))
              .build())
    except tf.DefinitionError:
        return  # refused, naming the step: fine
    step = wf.steps[0]
    assert isinstance(step, tf.TaskStep)
    assert step.timeout == 5 and step.retry == tf.Retry(max_attempts=2, interval=1)
    with trio.move_on_after(60):
        result = await tf.execute_workflow(None, wf)
        assert isinstance(result.error, tf.StepTimeoutError) and calls == 2
        return
    pytest.fail("the step ran past the timeout it was given")


async def test_a_wait_steps_record_spans_the_wait_it_left_memory_in(autojump_clock: Any) -> None:
    """A one-hour timer parks its instance out of memory; the run woken for it records the
    step's execution from when the wait began, not from the wake-up."""
    wf = tf.workflow("w").wait("hour", seconds=3600).build()
    async with open_test_engine() as engine:
        engine.register(wf)
        instance = await engine.wait(await engine.start("w"))
    record = instance.step_results["hour"]
    assert record.started_at is not None and record.completed_at is not None
    assert record.completed_at - record.started_at == pytest.approx(3600)


@pytest.mark.parametrize("where", ["catch", "retry_on"])
def test_states_all_written_as_a_string_is_refused_with_a_hint(where: str) -> None:
    """Amazon States Language's "States.ALL" as a string would match only errors whose message
    holds it: refused, pointing to tf.ALL."""
    with pytest.raises(tf.DefinitionError, match="trioflow.ALL"):
        if where == "catch":
            tf.workflow("w").step("a", _ok, catch=[tf.Catch(errors=["States.ALL"], next="b")]).step("b", _ok).build()
        else:
            tf.workflow("w").step("a", _ok, retry=tf.Retry(max_attempts=3, retry_on=["States.ALL"])).build()


def test_an_empty_retry_on_is_refused() -> None:
    """retry_on=[] would retry nothing (Catch refuses an empty errors list the same way)."""
    with pytest.raises(tf.DefinitionError, match="retry_on"):
        tf.Retry(max_attempts=3, retry_on=[])


async def test_a_job_whose_own_nursery_fails_is_retried_caught_and_named_as_its_one_error(
        autojump_clock: Any) -> None:
    """A job that runs a nursery of its own raises an exception group holding its failed task's
    error: retry_on and catch match that error, and the record names it."""
    calls = 0

    async def fans_out(ctx: tf.WorkflowContext) -> None:
        nonlocal calls
        calls += 1

        async def call_api() -> None:
            raise ConnectionError("provider down")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_api)

    wf = (tf.workflow("w")
          .step("fan", fans_out, retry=tf.Retry(max_attempts=3, interval=1, retry_on=[ConnectionError]),
                catch=[tf.Catch(errors=[ConnectionError], next="fallback")])
          .succeed("done")
          .step("fallback", _ok)
          .build())
    async with open_test_engine() as engine:
        engine.register(wf)
        instance = await engine.wait(await engine.start("w"))
    assert (instance.status, calls) == ("completed", 3)
    record = instance.step_results["fan"]
    assert (record.status, record.error_name, record.cause) == ("caught", "ConnectionError", "provider down")
    assert record.error == "ConnectionError: provider down"
