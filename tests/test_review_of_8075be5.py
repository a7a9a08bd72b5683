"""The adversarial review of 8075be5 (December 5th): what its kind checks of ``misfit()`` got
wrong, and a first step in the middle of its execution that a new release restarted for ever.

- A parallel branch whose child step failed for good keeps the start record of its execution
  (``begun``) and waits for nothing: read as a map's, it made every later release a misfit (a
  fitting instance failed, its charge refunded).
- An instance whose only execution under way is its first step's (a wait, a receive, a retry's
  delay) was reset to the new release's first step at every take-up (the fingerprint that
  says it was is stored only with its start): the wait began again every time, for ever.
- A receive whose timeout a release changed timed out at its stored deadline but named the new
  release's timeout."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import Adapter

from storages import engine_on, finish, storage  # noqa: F401


async def _charge(ctx: tf.WorkflowContext) -> str:
    return "ch-1"


async def _noop(ctx: tf.WorkflowContext) -> None:
    return None


async def _work(ctx: tf.WorkflowContext) -> int:
    if ctx.input == 0:
        raise ValueError("line 0 refused")
    return ctx.input


def _line() -> tf.WorkflowDefinition:
    return tf.workflow("line").step("work", _work).wait("pause", seconds=3600).build()


def _order(refunds: list[str], extra: bool) -> tf.WorkflowDefinition:
    async def refund(ctx: tf.WorkflowContext, charged: str) -> None:
        refunds.append(charged)

    b = (tf.workflow("order").step("charge", _charge, refund)
         .map("lines", items=lambda ctx: [0, 1], tolerated_failures=1, on_error="wait-all",
              branch=tf.branch("each").child("bill", workflow="line").build()))
    if extra:
        b = b.step("notify", _noop)  # a new release: one more step at the end, nothing else
    return b.build()


@pytest.mark.parametrize("new_release", [False, True])
async def test_a_tolerated_failed_child_item_does_not_make_a_later_release_a_misfit(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], new_release: bool) -> None:
    refunds: list[str] = []
    async with engine_on(storage()) as engine:
        engine.register(_order(refunds, extra=False))
        engine.register(_line())
        iid = await engine.start("order", None)
        await trio.sleep(5)  # item 0's child failed (tolerated), item 1's child waits 3600 s
        mid = await engine.get_instance(iid)
        assert mid is not None and mid.status == "running", mid
    async with engine_on(storage()) as engine:
        engine.register(_order(refunds, extra=new_release))
        engine.register(_line())
        done = await finish(engine, iid, limit=100_000)
    assert done.status == "completed", (done.error_name, done.cause)
    assert refunds == []


def _order_parallel(refunds: list[str], extra: bool) -> tf.WorkflowDefinition:
    async def refund(ctx: tf.WorkflowContext, charged: str) -> None:
        refunds.append(charged)

    b = (tf.workflow("order").step("charge", _charge, refund)
         .parallel("both", on_error="wait-all", catch=tf.Catch(errors=[tf.ALL], next="handle"), branches=[
             tf.branch("x").child("bill", workflow="line", input=lambda ctx: 0).build(),
             tf.branch("y").wait("pause-y", seconds=3600).build()])
         .step("ship", _noop, end=True)
         .step("handle", _noop))
    if extra:
        b = b.step("notify", _noop)
    return b.build()


@pytest.mark.parametrize("new_release", [False, True])
async def test_a_failed_child_branch_does_not_make_a_later_release_a_misfit(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], new_release: bool) -> None:
    refunds: list[str] = []
    async with engine_on(storage()) as engine:
        engine.register(_order_parallel(refunds, extra=False))
        engine.register(_line())
        iid = await engine.start("order", None)
        await trio.sleep(5)  # branch x's child failed, branch y waits 3600 s
        mid = await engine.get_instance(iid)
        assert mid is not None and mid.status == "running", mid
    async with engine_on(storage()) as engine:
        engine.register(_order_parallel(refunds, extra=new_release))
        engine.register(_line())
        done = await finish(engine, iid, limit=100_000)
    assert done.status == "completed", (done.error_name, done.cause)
    assert "handle" in [r.step_name for r in done.history]
    assert refunds == []


def _cooling(extra: bool, first: Callable[[tf.WorkflowBuilder], tf.WorkflowBuilder]) -> tf.WorkflowDefinition:
    b = first(tf.workflow("cool-off")).step("charge", _charge)
    if extra:
        b = b.step("notify", _noop)
    return b.build()


FIRST_WAIT = lambda b: b.wait("cool", seconds=3600)  # noqa: E731
FIRST_RECEIVE = lambda b: b.receive("cool", signal="go", timeout=3600)  # noqa: E731


@pytest.mark.parametrize("new_release", [False, True])
async def test_a_first_step_wait_keeps_its_due_time_under_a_new_release(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], new_release: bool) -> None:
    """README: 'A step in the middle of its execution keeps what it stored as it began: a wait
    its due time'."""
    async with engine_on(storage()) as engine:
        engine.register(_cooling(False, FIRST_WAIT))
        iid = await engine.start("cool-off", None)
        await trio.sleep(1800)  # half-way through the wait
    async with engine_on(storage()) as engine:
        engine.register(_cooling(new_release, FIRST_WAIT))
        done = await finish(engine, iid, limit=100_000)
    assert done.status == "completed", done.error
    cool = done.step_results["cool"]
    assert cool.completed_at is not None
    assert cool.completed_at - done.created_at < 3610, cool.completed_at - done.created_at


@pytest.mark.parametrize("new_release", [False, True])
async def test_a_first_step_receive_keeps_its_deadline_under_a_new_release(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], new_release: bool) -> None:
    """README: '... a receive the signal's name and deadline'."""
    async with engine_on(storage()) as engine:
        engine.register(_cooling(False, FIRST_RECEIVE))
        iid = await engine.start("cool-off", None)
        await trio.sleep(1800)
    async with engine_on(storage()) as engine:
        engine.register(_cooling(new_release, FIRST_RECEIVE))
        done = await finish(engine, iid, limit=100_000)
    assert (done.status, done.error_name) == ("failed", "SignalTimeoutError"), done.error
    assert done.completed_at is not None
    assert done.completed_at - done.created_at < 3610, done.completed_at - done.created_at


@pytest.mark.parametrize("new_release", [False, True])
async def test_a_first_step_retry_keeps_its_attempt_count_under_a_new_release(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], new_release: bool) -> None:
    calls: list[float] = []

    async def flaky(ctx: tf.WorkflowContext) -> None:
        calls.append(trio.current_time())
        raise ConnectionError("down")

    def make(extra: bool) -> tf.WorkflowDefinition:
        b = tf.workflow("pay").step("charge", flaky, retry=tf.Retry(max_attempts=3, interval=600, max_interval=600))
        if extra:
            b = b.step("notify", _noop)
        return b.build()

    async with engine_on(storage()) as engine:
        engine.register(make(False))
        iid = await engine.start("pay", None)
        await trio.sleep(5)  # attempt 1 failed; waits 600 s for attempt 2
    async with engine_on(storage()) as engine:
        engine.register(make(new_release))
        done = await finish(engine, iid, limit=100_000)
    assert (done.status, done.error_name) == ("failed", "ConnectionError"), done.error
    assert len(calls) <= 3 + 1, len(calls)  # (at most one attempt run again, cut short)


async def test_a_receive_whose_timeout_a_release_changed_names_the_timeout_it_waited(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    def make(timeout: float) -> tf.WorkflowDefinition:
        return (tf.workflow("approve").step("charge", _charge)
                .receive("approval", signal="approved", timeout=timeout).build())

    async with engine_on(storage()) as engine:
        engine.register(make(600))
        iid = await engine.start("approve", None)
        await trio.sleep(5)
    async with engine_on(storage()) as engine:
        engine.register(make(7200))
        done = await finish(engine, iid, limit=100_000)
    assert (done.status, done.error_name) == ("failed", "SignalTimeoutError"), done.error
    assert done.completed_at is not None and done.completed_at - done.created_at < 700  # the stored deadline
    assert "within 600 s" in (done.cause or ""), done.cause
