"""A cancel() that says yes to an instance that no longer fits the definition registered since
(taken up from storage to be cancelled) ends it ``cancelled``, compensating what the definition
can, as the caller asked; without a cancel it fails with DefinitionMismatchError as before
(README, Registration). A review (soakcan) found it ended ``failed`` though cancel() said True."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

import trioflow as tf
from storages import storage  # noqa: F401  (a fixture: the tests taking it run on both adapters)
from trioflow.testing import open_test_engine

DAY = 86_400.0


def _release(wait_name: str, refunds: list[Any]) -> tf.WorkflowDefinition:
    async def bill(ctx: Any) -> int:
        return 1

    async def refund(ctx: Any, billed: int) -> None:
        refunds.append(billed)

    return tf.workflow("sub").step("bill", bill, refund).wait(wait_name, seconds=30 * DAY).build()


async def _parked_then_replaced(engine: tf.Engine, refunds: list[Any]) -> str:
    """An instance billed and parked out of memory in "month", whose release then renames it."""
    engine.register(_release("month", refunds))
    iid = await engine.start("sub")
    await trio.sleep(DAY)
    engine.register(_release("cycle", refunds), replace=True)
    return iid


async def test_a_cancelled_instance_that_no_longer_fits_ends_cancelled(
    storage: Callable[[], Any], autojump_clock: trio.testing.MockClock,
) -> None:
    refunds: list[Any] = []
    async with open_test_engine(adapter=storage()) as engine:
        iid = await _parked_then_replaced(engine, refunds)
        assert await engine.cancel(iid)
        done = await engine.wait(iid)
    assert (done.status, done.error_name, done.compensated_steps, refunds) == (
        "cancelled", "WorkflowCancelledError", ("bill",), [1])


async def test_without_a_cancel_it_fails_with_the_mismatch(
    storage: Callable[[], Any], autojump_clock: trio.testing.MockClock,
) -> None:
    refunds: list[Any] = []
    async with open_test_engine(adapter=storage()) as engine:
        iid = await _parked_then_replaced(engine, refunds)
        await trio.sleep(30 * DAY)  # (woken on the new release)
        done = await engine.wait(iid)
    assert (done.status, done.error_name, refunds) == ("failed", "DefinitionMismatchError", [1])
