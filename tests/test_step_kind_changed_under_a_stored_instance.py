"""A release that changes the kind of the step an instance stands at (a receive made a wait, a
child step made a map, a retried task made a receive, a map made a task...) fails that instance
with ``DefinitionMismatchError`` and compensates its completed steps, as any instance that no
longer fits does (README: "never marked failed without compensation"). Before, the run read
what the lane stored as the new kind's: ``KeyError: 'timer'``, an instance failed with
``error_name`` ``"Error"`` and nothing compensated (a charged card never refunded), an
``AssertionError``, or a running map's items dropped (the newcomer review of December 5th).
Changes that keep each waiting lane's kind still resume; a receive waiting when its signal was
renamed takes the signal it stored as it began (it waited for ever: the waker woke it for that
name, and the run looked for the new one), as a wait keeps its stored due time.

On trio's MockClock (autojump), on the MemoryAdapter and SQLite."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import Adapter

from storages import engine_on, finish, storage  # noqa: F401  (a fixture)


async def _charge(ctx: tf.WorkflowContext) -> str:
    return "ch-1"


async def _noop(ctx: tf.WorkflowContext) -> None:
    return None


async def _hang(ctx: tf.WorkflowContext) -> None:
    await trio.sleep_forever()


async def _flaky(ctx: tf.WorkflowContext) -> None:
    raise ConnectionError("down")


#: The approval step of an order, as one release or another builds it.
Shape = Callable[[tf.WorkflowBuilder], tf.WorkflowBuilder]


def _order(refunds: list[str], make: Shape) -> tf.WorkflowDefinition:
    async def refund(ctx: tf.WorkflowContext, charged: str) -> None:
        refunds.append(charged)

    return make(tf.workflow("order").step("charge", _charge, refund)).step("ship", _noop).build()


def _child_wf() -> tf.WorkflowDefinition:
    return tf.workflow("line").step("work", _hang).build()


def _items(ctx: tf.WorkflowContext) -> list[int]:
    return [1, 2]


RECEIVE = lambda b: b.receive("approval", signal="approved")  # noqa: E731
WAIT = lambda b: b.wait("approval", seconds=3600)  # noqa: E731
RETRIED = lambda b: b.task("approval", job=_flaky, retry=tf.Retry(max_attempts=5, interval=600, max_interval=600))  # noqa: E731
CHILD = lambda b: b.child("approval", workflow="line")  # noqa: E731
MAP = lambda b: b.map("approval", items=_items, branch=tf.branch("each").step("hang", _hang).build())  # noqa: E731
MAP_OF_RECEIVES = lambda b: b.map("approval", items=_items,  # noqa: E731
                                  branch=tf.branch("each").receive("ok", signal="approved").build())
MAP_OF_WAITS = lambda b: b.map("approval", items=_items,  # noqa: E731
                               branch=tf.branch("each").wait("ok", seconds=3600).build())
TASK = lambda b: b.step("approval", _noop)  # noqa: E731
RENAMED = lambda b: b.receive("approval", signal="approved-v2")  # noqa: E731
PARALLEL = lambda b: b.parallel("approval", branches=[  # noqa: E731  (a branch stores a step: its lanes are stored)
    tf.branch("x").step("quick", _noop).step("hang", _hang).build(), tf.branch("y").step("hang-y", _hang).build()])

CHANGES = {
    "receive-made-wait": (RECEIVE, WAIT),
    "wait-made-receive": (WAIT, RECEIVE),
    "retried-task-made-receive": (RETRIED, RECEIVE),
    "child-made-wait": (CHILD, WAIT),
    "map-made-child": (MAP, CHILD),
    "child-made-map": (CHILD, MAP),
    "map-made-task": (MAP, TASK),
    "map-made-wait": (MAP, WAIT),
    "parallel-made-task": (PARALLEL, TASK),
    "item-receive-made-wait": (MAP_OF_RECEIVES, MAP_OF_WAITS),
}


SAME_KIND = {
    "wait-longer": (WAIT, lambda b: b.wait("approval", seconds=7200)),
    "receive-with-a-timeout": (RECEIVE, lambda b: b.receive("approval", signal="approved", timeout=7200)),
    "receive-signal-renamed": (RECEIVE, RENAMED),
}


async def _restarted_on(storage: Callable[[], Adapter], before: Shape, after: Shape,
                        refunds: list[str], approve: bool = True) -> tf.WorkflowInstance:
    """An order started on ``before``, left waiting at its approval step, then taken up by an
    engine where ``after`` is registered (and signalled, as an approval would be, if ``approve``)."""
    async with engine_on(storage()) as engine:
        engine.register(_order(refunds, before))
        engine.register(_child_wf())
        iid = await engine.start("order", None)
        await trio.sleep(5)  # (the lane waits: left memory, or still in it)
    async with engine_on(storage()) as engine:
        engine.register(_order(refunds, after))
        engine.register(_child_wf())
        with trio.move_on_after(60):
            if approve:
                await engine.signal(iid, "approved")
        return await finish(engine, iid, limit=10_000)


@pytest.mark.parametrize("change", list(CHANGES))
async def test_an_instance_whose_waiting_step_changed_kind_fails_as_a_misfit_and_compensates(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], change: str) -> None:
    refunds: list[str] = []
    done = await _restarted_on(storage, *CHANGES[change], refunds)
    assert (done.status, done.error_name) == ("failed", "DefinitionMismatchError"), (done.status, done.error)
    assert ("hang" if change == "parallel-made-task" else "approval") in (done.cause or ""), done.cause
    assert refunds == ["ch-1"]
    assert done.compensated_steps == ("charge",)


@pytest.mark.parametrize("change", list(SAME_KIND))
async def test_a_change_that_keeps_the_waiting_steps_kind_still_resumes(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], change: str) -> None:
    refunds: list[str] = []
    done = await _restarted_on(storage, *SAME_KIND[change], refunds)
    assert done.status == "completed", done.error
    assert refunds == []


async def test_a_receive_whose_timeout_a_release_removed_still_times_out_at_its_stored_deadline(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    refunds: list[str] = []
    with_timeout: Shape = lambda b: b.receive("approval", signal="approved", timeout=600)  # noqa: E731
    done = await _restarted_on(storage, with_timeout, RECEIVE, refunds, approve=False)
    assert (done.status, done.error_name) == ("failed", "SignalTimeoutError"), done.error
    assert "within 600 s" in (done.cause or ""), done.cause
    assert refunds == ["ch-1"]
