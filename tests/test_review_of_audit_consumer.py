"""From a review of a travel-booking service on trioflow (svc1, an audit consumer of
``engine.events.subscribe``); each test failed until the commit that added this file."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import open_test_engine


async def _hold(ctx: tf.WorkflowContext) -> dict[str, bool]:
    await trio.sleep(1)
    return {"held": True}


_parked = tf.workflow("parked-trip").step("hold", _hold).receive("confirm", signal="confirmed").build()


async def test_an_audit_reader_in_its_own_task_ends_cleanly_when_its_subscription_block_is_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A service keeps an audit log: it opens ``engine.events.subscribe("workflow.*")`` and hands
    the stream to a consumer task (``nursery.start_soon(consume, events)``), the usual trio shape
    for a reader. When the service leaves the subscription block (unsubscribing, say on a
    reconfiguration), the user expects the consumer's ``async for`` to end, as the README says
    the stream ends when the engine closes ("a reader in another task is not left waiting") and
    as a Temporal/Step Functions user expects an unsubscribed feed to just stop.

    Was: the consumer blocked in ``async for`` gets ``trio.ClosedResourceError`` (not even a
    trioflow error), which crashes the consumer's nursery and with it the engine's block.
    """
    ended: list[str] = []
    crashed: list[BaseException] = []

    async def consume(events: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
        try:
            async for event in events:
                ended.append(event["event"])
            ended.append("END")
        except BaseException as exc:  # recorded, so the assertion below says what happened
            crashed.append(exc)

    async with open_test_engine() as engine:
        engine.register(_parked)
        async with trio.open_nursery() as nursery:
            async with engine.events.subscribe("workflow.*") as events:
                nursery.start_soon(consume, events)
                await engine.start("parked-trip", None, instance_id="trip-1")
                await trio.sleep(5)
            # the block is left while the consumer waits for the next event
    assert crashed == [], f"the reader crashed with {crashed!r} instead of its stream ending"
    assert ended[-1] == "END" and "workflow.started" in ended


async def test_a_reader_behind_its_stream_reads_what_was_queued_then_ends_when_the_block_is_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same consumer, busy with an earlier event (writing it out) while more are queued
    when the block is left: as at the engine's close, it gets what was queued before the block
    was left, then its ``async for`` ends; nothing published after reaches it.

    Was: its next read after the block raised ``trio.ClosedResourceError`` (the queued events
    were lost with it), so whether a consumer crashed depended on whether it had kept up."""
    got: list[str] = []
    crashed: list[BaseException] = []

    async def consume(events: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
        try:
            async for event in events:
                await trio.sleep(10)  # slower than the events come
                got.append(event["event"])
            got.append("END")
        except BaseException as exc:
            crashed.append(exc)

    async with open_test_engine() as engine:
        engine.register(_parked)
        async with trio.open_nursery() as nursery:
            async with engine.events.subscribe("workflow.started") as events:
                nursery.start_soon(consume, events)
                for k in range(3):
                    await engine.start("parked-trip", None, instance_id=f"trip-{k}")
                await trio.sleep(1)  # the consumer holds the first, the other two are queued
            await engine.start("parked-trip", None, instance_id="after")  # not for this stream
    assert crashed == [], f"the reader crashed with {crashed!r} instead of its stream ending"
    assert got == ["workflow.started"] * 3 + ["END"]


async def test_a_misspelt_keyword_to_start_is_refused_with_invalid_argument_error_naming_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Review point 4: every other misuse of ``start()`` raises trioflow's own error naming the
    field, but a misspelt keyword (``instanceid=``) was Python's plain ``TypeError``, outside
    ``tf.TrioflowError``. Nothing is started.

    Was: ``TypeError: Engine.start() got an unexpected keyword argument 'instanceid'``."""
    async with open_test_engine() as engine:
        engine.register(_parked)
        with pytest.raises(tf.InvalidArgumentError, match="'instanceid'.*instance_id"):
            await engine.start("parked-trip", None, instanceid="trip-1")  # type: ignore[arg-type]
        assert await engine.get_instances() == []
