"""Event subscribers get copies: editing an event changes neither the instance nor other subscribers.

Payloads carry live state (a step's output, the workflow input); a subscriber that redacts a
secret from ``event["output"]`` before logging it must not take it from the next step too.
"""

from __future__ import annotations

import threading
from typing import Any

import trio
import trio.testing

import trioflow as tf


def fresh_account() -> dict[str, Any]:
    return {"user": "ada", "secret": "s3cr3t", "roles": ["admin"]}


async def account(data: Any) -> dict[str, Any]:
    return fresh_account()


async def echo(data: Any) -> Any:
    return data


def two_steps() -> tf.WorkflowDefinition:
    """``b`` gets the whole output of ``a`` as its input and returns it."""
    return tf.workflow("w").task("a", job="a").task("b", job="b", input=lambda ctx: ctx.steps["a"]).build()


def register(engine: tf.Engine, b: Any = None) -> None:
    engine.jobs.register("a", account)
    engine.jobs.register("b", b or echo)
    engine.register(two_steps())


def redact(event: dict[str, Any]) -> None:
    """What a logging subscriber might do: edit the event in place."""
    if event["step_name"] == "a":
        event["output"].pop("secret")
        event["output"]["roles"].append("hacked")


async def test_a_sync_subscriber_that_edits_an_output_changes_neither_the_next_step_nor_the_instance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tf.open_engine() as engine:
        engine.events.on("workflow.step.completed", redact)
        register(engine)
        inst = await engine.wait(await engine.start("w"))
    assert inst.status == "completed"
    assert inst.step_results["a"].output == fresh_account()
    assert inst.step_results["b"].input == fresh_account() and inst.output == fresh_account()


async def test_subscribers_do_not_see_each_others_edits(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[dict[str, Any]] = []
    async with tf.open_engine() as engine:
        engine.events.on("workflow.step.completed", redact)
        engine.events.on("workflow.step.completed", seen.append)
        async with engine.events.subscribe("workflow.step.completed") as stream:
            # A second redactor, called after the others: editing after delivery changes no one's either.
            engine.events.on("workflow.step.completed", redact)
            register(engine)
            await engine.wait(await engine.start("w"))
            streamed = [stream.receive_nowait(), stream.receive_nowait()]
    for events in (seen, streamed):
        assert [e["output"] for e in events] == [fresh_account(), fresh_account()]
    assert seen[0] is not streamed[0] and seen[0]["output"] is not streamed[0]["output"]


async def test_an_async_subscriber_that_edits_an_output_changes_nothing_either(
    autojump_clock: trio.testing.MockClock,
) -> None:
    edited = trio.Event()

    async def redact_later(event: dict[str, Any]) -> None:
        redact(event)
        if event["step_name"] == "a":
            edited.set()

    async def b(data: Any) -> Any:
        # ``b`` reads its input only once the subscriber has edited its copy of ``a``'s output.
        await edited.wait()
        return dict(data)

    async with tf.open_engine() as engine:
        engine.events.on("workflow.step.completed", redact_later)
        register(engine, b)
        inst = await engine.wait(await engine.start("w"))
    assert edited.is_set()
    assert inst.step_results["a"].output == fresh_account() and inst.output == fresh_account()


async def test_an_event_is_a_copy_made_when_it_is_published(autojump_clock: trio.testing.MockClock) -> None:
    """A queued event does not change when the instance's state does after it was published."""
    async def b(data: Any) -> Any:
        data["roles"].append("changed by b")  # edits the live output of ``a`` (bad manners)
        return data

    async with tf.open_engine() as engine:
        async with engine.events.subscribe("workflow.step.completed") as stream:
            register(engine, b)
            await engine.wait(await engine.start("w"))
            first = stream.receive_nowait()
    assert first["step_name"] == "a" and first["output"] == fresh_account()


class Point:
    def __init__(self, xy: list[int]) -> None:
        self.xy = xy


class Uncopyable:
    def __init__(self) -> None:
        self.lock = threading.Lock()  # deepcopy cannot pickle a lock


class Tagged(dict[str, Any]):
    pass


def test_values_that_are_not_plain_data_are_deep_copied_or_passed_as_they_are() -> None:
    bus = tf.EventBus()
    got: list[dict[str, Any]] = []
    bus.on("e", got.append)
    point, odd, tagged, cycle = Point([1, 2]), Uncopyable(), Tagged(k=[1]), [0]
    cycle.append(cycle)  # type: ignore[arg-type]
    shared = (1, [2])
    bus.emit("e", {"point": point, "odd": odd, "tagged": tagged, "tuple": shared, "cycle": cycle})
    event = got[0]
    assert event["point"] is not point and event["point"].xy == [1, 2] and event["point"].xy is not point.xy
    assert event["odd"] is odd
    assert type(event["tagged"]) is Tagged and event["tagged"] == tagged and event["tagged"]["k"] is not tagged["k"]
    assert event["tuple"] == shared and type(event["tuple"]) is tuple and event["tuple"][1] is not shared[1]
    assert event["cycle"] is not cycle and event["cycle"][1] is event["cycle"]


def test_nothing_is_copied_for_events_nobody_subscribed_to() -> None:
    copies: list[object] = []

    class Counted:
        def __deepcopy__(self, memo: dict[int, object]) -> Counted:
            copies.append(self)
            return Counted()

    bus = tf.EventBus()
    bus.on("other", lambda e: None)
    bus.emit("e", {"value": Counted()})
    assert copies == []
    bus.on("e", lambda e: None)
    bus.on("e", lambda e: None)
    bus.emit("e", {"value": Counted()})
    assert len(copies) == 2
