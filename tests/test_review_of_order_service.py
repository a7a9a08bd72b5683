"""From a review that used trioflow as a Temporal / Step Functions user would, building an
order-fulfilment service (saga, receive with a timeout, durable timer, map of child workflows,
catch, retries) on a SQLite file, the engine closed and reopened between phases, on trio's
MockClock. The test failed until the commit that added this file."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import trio

import trioflow as tf


def _order_with_child(hooks: Counter[tuple[str, str]], undone: list[str]) -> tuple[tf.WorkflowDefinition, tf.WorkflowDefinition]:
    async def pack(ctx: Any) -> str:
        return "packed"

    async def unpack(ctx: Any, result: Any) -> None:
        undone.append(ctx.metadata.id)

    async def reserve(ctx: Any) -> str:
        return "r-1"

    async def release(ctx: Any, result: Any) -> None:
        undone.append(ctx.metadata.id)

    line = tf.workflow("line").receive("packed", signal="packed").step("pack", pack, unpack).build()
    order = (
        tf.workflow("order")
        .step("reserve", reserve, release)
        .child("ship-line", workflow="line")
        .with_hooks(
            on_step_complete=lambda name, output, ctx: hooks.update([("complete", name)]),
            on_compensate=lambda name, ctx: hooks.update([("compensate", name)]),
        )
        .build()
    )
    return line, order


async def test_child_step_completed_as_its_parent_is_cancelled_runs_on_step_complete(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A user tracks an order's progress with hooks: ``on_step_complete`` for every step that
    completes and ``on_compensate`` for every one undone (a counter that goes up and down, an
    audit table). An order waits on a child workflow (a line waiting for its "packed" signal);
    after a restart the warehouse signals the child and, in the same instant, the customer
    cancels the order. The child completes all the same, so the parent records its child step
    ``completed``, publishes ``workflow.step.completed`` for it and compensates it as a unit
    (``compensated_steps == ("ship-line", "reserve")``, ``on_compensate("ship-line")`` runs).
    The user expects ``on_step_complete("ship-line")`` to have run once too, as for every other
    completed step (README: hooks and events agree; ``on_step_complete`` runs once per execution
    once its completion is stored).

    Was: ``on_step_complete`` never ran for that step: the step is reported completed by the
    event and by the history, and compensated by the hook, but the completion hook was skipped
    (actors/_child.py ``cancel_children`` records and publishes the late completion, with no
    hook call), so a hook-maintained count ends at -1 for the step."""
    db = str(tmp_path / "orders.db")
    hooks: Counter[tuple[str, str]] = Counter()
    undone: list[str] = []
    events: Counter[tuple[str, str]] = Counter()
    line, order = _order_with_child(hooks, undone)

    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(line)
        engine.register(order)
        await engine.start("order", {"order": 1}, instance_id="ord-1")
        await trio.sleep(5)  # the child waits for "packed", the parent for the child

    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(line)
        engine.register(order)
        engine.events.on("workflow.step.*", lambda e: events.update([(e["event"], e["step_name"])]))
        await engine.signal("ord-1/ship-line#1", "packed")
        assert await engine.cancel("ord-1")
        instance = await engine.wait("ord-1")
        child = await engine.get_instance("ord-1/ship-line#1")

    assert instance.status == "cancelled"
    assert child is not None and child.status == "compensated"
    assert instance.compensated_steps == ("ship-line", "reserve")
    assert events[("workflow.step.completed", "ship-line")] == 1
    assert hooks[("compensate", "ship-line")] == 1
    # What a user relies on: each completed (and then compensated) execution had its completion hook.
    assert hooks[("complete", "ship-line")] == 1


async def test_map_items_children_completed_as_their_parent_is_cancelled_run_on_step_complete_first(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """As above, in a map of child steps: each item's child completes as the order is cancelled.
    Each item's ``on_step_complete`` runs once, with its item's context, before the
    ``on_compensate`` of that execution."""
    db = str(tmp_path / "orders.db")
    calls: list[tuple[str, str, Any]] = []

    async def pack(ctx: Any) -> str:
        return "packed"

    line = tf.workflow("line").receive("packed", signal="packed").step("pack", pack).build()
    order = (
        tf.workflow("order")
        .map("lines", items=lambda ctx: ctx.input["lines"], branch=tf.branch("line").child("ship-line", workflow="line").build())
        .with_hooks(
            on_step_complete=lambda name, output, ctx: calls.append(("complete", name, ctx.item_index)),
            on_compensate=lambda name, ctx: calls.append(("compensate", name, ctx.item_index)),
        )
        .build()
    )
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(line)
        engine.register(order)
        await engine.start("order", {"lines": ["a", "b"]}, instance_id="ord-1")
        await trio.sleep(5)
        children = sorted(i.id for i in await engine.get_instances("line"))
        assert len(children) == 2, children
        for child in children:
            await engine.signal(child, "packed")
        assert await engine.cancel("ord-1")
        instance = await engine.wait("ord-1")

    assert instance.status == "cancelled"
    ship = [c for c in calls if c[1] == "ship-line"]
    assert sorted(c[2] for c in ship if c[0] == "complete") == [0, 1], calls
    for index in (0, 1):
        mine = [c[0] for c in ship if c[2] == index]
        assert mine == ["complete", "compensate"], calls
