"""From a re-review of 6ba575c (a map item's inner fan-out failure read back from the first
failed record of its own execution; an inner map's tolerance from its start record's item count;
a process stop goes on when storing the cancel of its instant fails) and ab7fdd5 (a Flag is its
own abort function; an instance's forward part enters and leaves its cancel scope by hand).

No failing behaviour was found (see REPORT.md for what was tried). The two tests here are
guards of the fragile parts of ab7fdd5, which pass on ab7fdd5 and on its parent: the abort path
of the run's end/decision flags (a waiter that gives up must leave the flag able to wake the
next), and the hand-written enter/exit of the forward part's cancel scope (a cancel or the
workflow timeout at each point of the forward part ends the instance as before). Real adapters,
trio's autojumping MockClock."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


class _SlowStorage(tf.adapters.MemoryAdapter):
    """A MemoryAdapter whose checkpoints take 3 s once ``slow`` is set (a busy database)."""

    slow = False

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        if self.slow:
            await trio.sleep(3)
        return await super().checkpoint(*args, **kwargs)


async def test_callers_of_wait_and_cancel_that_give_up_leave_the_others_to_be_woken(
        autojump_clock: trio.testing.MockClock) -> None:
    """Guard (ab7fdd5, actors/_flag.py: the flag itself is the first waiter's abort function).
    A user's HTTP handlers wait on one order: some ``engine.wait(order)`` calls give up under
    their own timeouts (``trio.move_on_after``), the first one among them (the flag's first
    slot), while others wait on; a ``wait()`` arriving later waits too. Likewise several
    ``engine.cancel(order)`` calls while storage is slow to take the decision (each waits for
    the decision to be stored): the first two give up, the others get ``True`` once it is
    stored. README: ``wait()`` returns once the instance is over; ``cancel()`` returns once the
    decision is stored. They expect every caller that did not give up to get its answer, and
    the givers-up to leave nothing stuck. (Passes: kept as a guard of the abort path.)"""
    storage = _SlowStorage()

    async def undo(ctx: Any, result: Any) -> None:
        pass

    async def charge(ctx: Any) -> int:
        return 1

    async def ship(ctx: Any) -> str:
        await trio.sleep(10)
        return "shipped"

    async with open_test_engine(adapter=storage) as engine:
        engine.register(tf.workflow("w").step("ship", ship).build())
        engine.register(tf.workflow("c").step("charge", charge, undo).step("ship", ship).build())
        order = await engine.start("w")
        got: list[tuple[str, Any]] = []

        async def waiter(name: str, patience: float) -> None:
            with trio.move_on_after(patience):
                got.append((name, (await engine.wait(order)).status))
                return
            got.append((name, "gave up"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, "first", 1)
            await trio.sleep(0)
            nursery.start_soon(waiter, "patient", 100)
            nursery.start_soon(waiter, "third", 2)
            await trio.sleep(3)
            nursery.start_soon(waiter, "late", 100)
        assert sorted(got) == [("first", "gave up"), ("late", "completed"), ("patient", "completed"),
                               ("third", "gave up")]
        assert (await engine.wait(order)).status == "completed"  # (after set(): at once)

        second = await engine.start("c")
        await trio.sleep(1)
        storage.slow = True
        said: list[tuple[str, Any]] = []

        async def canceller(name: str, patience: float) -> None:
            with trio.move_on_after(patience):
                said.append((name, await engine.cancel(second)))
                return
            said.append((name, "gave up"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(canceller, "first", 0.5)
            await trio.sleep(0.1)
            nursery.start_soon(canceller, "patient", 100)
            nursery.start_soon(canceller, "third", 0.7)
            await trio.sleep(1)
            nursery.start_soon(canceller, "late", 100)
        assert sorted(said) == [("first", "gave up"), ("late", True), ("patient", True), ("third", "gave up")]
        assert (await engine.wait(second)).status == "cancelled"


_RAN: list[str] = []


async def _charge(ctx: Any) -> int:
    _RAN.append("charge")
    return 1


async def _refund(ctx: Any, result: Any) -> None:
    _RAN.append("refund")


async def _slow(ctx: Any) -> None:
    await trio.sleep(10)


async def _flaky(ctx: Any) -> None:
    raise ValueError("card declined")


def _shape(where: str, timeout: float | None) -> tf.WorkflowDefinition:
    builder = tf.workflow(f"w-{where}")
    if timeout is not None:
        builder = builder.with_timeout(timeout)
    builder = builder.step("charge", _charge, _refund)
    if where == "in a step":
        builder = builder.step("ship", _slow)
    elif where == "in a retry delay":
        builder = builder.step("ship", _flaky, retry=tf.Retry(max_attempts=5, interval=3))
    elif where == "parked":
        builder = builder.wait("cool-off", seconds=10)
    else:
        builder = builder.receive("confirm", signal="go")
    return builder.build()


@pytest.mark.parametrize("where", ["in a step", "in a retry delay", "parked", "waiting for a signal"])
@pytest.mark.parametrize("by", ["cancel", "timeout"])
async def test_a_cancel_or_the_workflow_timeout_in_the_forward_part_ends_it_and_refunds(
        autojump_clock: trio.testing.MockClock, where: str, by: str) -> None:
    """Guard (ab7fdd5, actors/_instance.py ``_forward``: its cancel scope entered and left by
    hand). A user's saga charges a card (with a refund as compensation) and then ships (a long
    step, a step retried after a delay, a wait step, a receive step). ``engine.cancel()`` at
    1.5 s (or the workflow's 2.5 s timeout) must end it ``cancelled`` (``timed_out``) and run
    the refund once, as README promises for cancel() and ``with_timeout``. (Passes: kept as a
    guard of the hand-written scope exit.)"""
    _RAN.clear()
    definition = _shape(where, 2.5 if by == "timeout" else None)
    async with open_test_engine() as engine:
        engine.register(definition)
        order = await engine.start(definition.name, {})
        if by == "cancel":
            await trio.sleep(1.5)
            assert await engine.cancel(order) is True
        instance = await engine.wait(order)
    assert instance.status == ("cancelled" if by == "cancel" else "timed_out")
    assert _RAN.count("charge") == 1 and _RAN.count("refund") == 1
