"""Retries, catches, compensation and how failures are recorded, with jobs that misbehave (an
adversarial review; each test failed before its fix)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._errors import MAX_ERROR_TEXT
from trioflow.testing import open_test_engine


def rec(log: list[str], name: str, *, exc: BaseException | None = None) -> Any:
    async def job(data: Any) -> Any:
        log.append(name)
        if exc is not None:
            raise exc
        return name
    return job


async def run_one(wf: tf.WorkflowDefinition, **options: Any) -> tf.WorkflowInstance:
    async with open_test_engine(**options) as engine:
        engine.register(wf)
        with trio.fail_after(1000):
            return await engine.wait(await engine.start(wf.name))


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str exploded")


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


class Huge(Exception):
    pass


# 1. An error whose str() raises: the instance fails as "internal error" and nothing is compensated.
async def test_step_error_whose_str_raises_still_compensates(autojump_clock: trio.testing.MockClock) -> None:
    log: list[str] = []
    wf = (tf.workflow("w").task("a", job=rec(log, "a"), compensate=rec(log, "undo-a"))
          .task("b", job=rec(log, "b", exc=BadStr())).build())
    inst = await run_one(wf)
    assert inst.status == "failed"
    assert log == ["a", "b", "undo-a"], (log, inst.error)  # got ['a', 'b'], error 'internal error: RuntimeError: str exploded'


# 2. The same in a compensation: the remaining compensations are skipped and the run's own error is lost.
async def test_compensation_error_whose_str_raises_does_not_skip_the_others(
        autojump_clock: trio.testing.MockClock) -> None:
    log: list[str] = []
    wf = (tf.workflow("w").task("a", job=rec(log, "a"), compensate=rec(log, "undo-a"))
          .task("b", job=rec(log, "b"), compensate=rec(log, "undo-b", exc=BadStr()))
          .task("c", job=rec(log, "c", exc=ValueError("boom"))).build())
    inst = await run_one(wf)
    assert inst.error_name == "ValueError", inst.error   # got 'internal error: RuntimeError: str exploded'
    assert log == ["a", "b", "c", "undo-b", "undo-a"], log  # undo-a never runs


# 3. A step output whose repr() raises: should be an UnencodableValueError (catchable), is an internal error.
async def test_unstorable_output_whose_repr_raises_is_a_catchable_step_failure(
        autojump_clock: trio.testing.MockClock) -> None:
    log: list[str] = []

    async def b(data: Any) -> Any:
        return BadRepr()

    wf = (tf.workflow("w").task("a", job=rec(log, "a"), compensate=rec(log, "undo-a"))
          .task("b", job=b, catch=[tf.Catch(errors=tf.UnencodableValueError, next="h")])
          .succeed("ok").pass_("h", transform=lambda ctx: ctx.error["error"]).build())
    inst = await run_one(wf)
    assert (inst.status, inst.output) == ("completed", "UnencodableValueError"), (inst.status, inst.error, log)


# 4. An error with a long message (9 MiB, under the 16 MiB per-value limit; the record holds it twice):
#    the failure cannot be recorded, the instance fails as "internal error" and nothing is compensated.
async def test_error_with_a_long_message_is_recorded_and_compensated(autojump_clock: trio.testing.MockClock) -> None:
    log: list[str] = []
    wf = (tf.workflow("w").task("a", job=rec(log, "a"), compensate=rec(log, "undo-a"))
          .task("b", job=rec(log, "b", exc=Huge("x" * (9 * 2**20)))).build())
    inst = await run_one(wf)
    assert inst.error_name == "Huge", (inst.error or "")[:90]  # 'internal error: ValueTooLargeError: step record ...'
    assert log == ["a", "b", "undo-a"], log
    note = f"... ({9 * 2**20 - MAX_ERROR_TEXT + 33} more characters cut)"  # (the note takes 33 of the cap)
    assert inst.cause is not None and inst.cause.endswith(note), inst.cause[-40:]
    assert len(inst.cause) == MAX_ERROR_TEXT


# 5. Same when caught: a 6 MiB message (stored three times: error, cause, output) is not routed.
async def test_caught_error_with_a_long_message_routes_to_the_catcher(autojump_clock: trio.testing.MockClock) -> None:
    wf = (tf.workflow("w")
          .task("b", job=rec([], "b", exc=Huge("x" * (6 * 2**20))), catch=[tf.Catch(errors=Huge, next="h")])
          .succeed("ok").pass_("h", result="handled").build())
    inst = await run_one(wf)
    assert (inst.status, inst.output) == ("completed", "handled"), (inst.error or "")[:90]


# 6. A job that lets a trio.Cancelled escape that nobody asked for (no cancel(), no timeout, engine
#    open): the instance is taken for "interrupted by engine shutdown" and left `running` in storage with
#    no task; wait() raises InstanceNotLiveError; nothing is compensated until some later engine reruns it.
async def test_a_stray_cancelled_from_a_job_does_not_orphan_the_instance(autojump_clock: trio.testing.MockClock) -> None:
    log: list[str] = []

    async def leaky(data: Any) -> None:
        log.append("b")
        saved: BaseException | None = None
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.sleep(1)
            except trio.Cancelled as exc:
                saved = exc
        assert saved is not None
        raise saved  # re-raised outside the scope it belongs to

    wf = (tf.workflow("w").task("a", job=rec(log, "a"), compensate=rec(log, "undo-a"))
          .task("b", job=leaky).build())
    async with open_test_engine() as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(10)
        inst = await engine.get_instance(iid)
        assert inst is not None
        assert inst.status in ("failed", "cancelled"), inst.status  # 'running', with nothing running it
        assert log == ["a", "b", "undo-a"], log


async def test_a_stray_cancelled_in_a_group_from_a_jobs_nursery_does_not_orphan_the_instance(
        autojump_clock: trio.testing.MockClock) -> None:
    """The same, where the stray ``Cancelled`` comes out grouped, as out of a nursery: it fails
    the step (the instance was left ``running`` with nothing running it)."""
    log: list[str] = []

    async def leaky(data: Any) -> None:
        log.append("b")
        saved: BaseException | None = None
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.sleep(1)
            except trio.Cancelled as exc:
                saved = exc
        assert saved is not None
        raise BaseExceptionGroup("from a nursery", [saved])

    wf = (tf.workflow("w").task("a", job=rec(log, "a"), compensate=rec(log, "undo-a"))
          .task("b", job=leaky).build())
    async with open_test_engine() as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(10)
        inst = await engine.get_instance(iid)
    assert inst is not None and (inst.status, inst.error_name) == ("failed", "RuntimeError"), inst.status
    assert log == ["a", "b", "undo-a"], log


async def test_a_cancelled_job_that_runs_a_nursery_is_recorded_as_cancelled_while_running(
        autojump_clock: trio.testing.MockClock) -> None:
    """A job that fans out in a nursery of its own lets its cancellation out as a group of
    ``Cancelled``: it is recorded as a bare one is (the history had no record of the step)."""
    async def fan_out(data: Any) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(trio.sleep_forever)

    async with open_test_engine() as engine:
        engine.register(tf.workflow("w").task("a", job=fan_out).build())
        iid = await engine.start("w")
        await trio.sleep(1)
        await engine.cancel(iid)
        inst = await engine.wait(iid)
    assert inst.status == "cancelled"
    assert [(r.step_name, r.error_name, r.cause) for r in inst.history] == [("a", "Cancelled", "cancelled while running")]


# 7. A compensation that returns a coroutine (a lambda around an async def, or an async function behind
#    a plain functools.wraps decorator): the test engine (threads=False) records it `compensated`
#    without running it; a production engine (threads=True) records a TypeError compensation error.
@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
async def test_test_engine_does_not_report_an_unrun_compensation_as_done(
        autojump_clock: trio.testing.MockClock) -> None:
    log: list[str] = []

    async def refund(output: Any) -> None:
        log.append("refund")

    wf = (tf.workflow("w").task("a", job=rec(log, "a"), compensate=lambda output: refund(output))
          .task("b", job=rec(log, "b", exc=ValueError("x"))).build())
    inst = await run_one(wf)  # open_test_engine: threads=False
    assert "refund" in log or inst.compensation_errors, (inst.compensated_steps, log)  # ('a',), ['a', 'b']


# 8. A retry_on predicate that raises on the 2nd failure: 2 attempts ran, the record says 1.
async def test_attempts_are_counted_when_a_retry_on_predicate_raises(autojump_clock: trio.testing.MockClock) -> None:
    log: list[str] = []
    seen = {"n": 0}

    def retry_on(error: BaseException) -> bool:
        seen["n"] += 1
        if seen["n"] >= 2:
            raise KeyError("predicate broke")
        return True

    wf = (tf.workflow("w").task("b", job=rec(log, "b", exc=ConnectionError("down")),
                                retry=tf.Retry(max_attempts=5, interval=1, retry_on=retry_on)).build())
    inst = await run_one(wf)
    assert inst.status == "failed" and len(log) == 2
    assert inst.step_results["b"].attempts == 2, inst.step_results["b"].attempts  # 1
