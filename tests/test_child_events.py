"""A child workflow's events name its parent (``parent_id``), so a subscriber can follow a
family: which parent a child's start, steps and end belong to. A top-level instance's events
carry no such field."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


async def _charge(_: Any) -> str:
    return "charged"


async def test_every_event_of_a_child_names_its_parent_and_none_of_the_parents_does(
    autojump_clock: trio.testing.MockClock,
) -> None:
    child = tf.workflow("line").step("charge", _charge).build()
    parent = (tf.workflow("order")
              .map("lines", items=lambda ctx: [1, 2], branch=tf.branch("l").child("bill", workflow="line").build())
              .build())
    events: list[dict[str, Any]] = []
    async with open_test_engine() as engine:
        engine.register(parent)
        engine.register(child)
        engine.events.on("workflow.*", events.append)
        iid = await engine.start("order")
        done = await engine.wait(iid)
    assert done.status == "completed" and len(done.children) == 2
    of_children = [e for e in events if e["instance_id"] in done.children]
    assert {e["event"] for e in of_children} >= {"workflow.started", "workflow.step.completed", "workflow.completed"}
    assert all(e["parent_id"] == iid for e in of_children)
    assert {e["instance_id"] for e in of_children} == set(done.children)
    of_parent = [e for e in events if e["instance_id"] == iid]
    assert of_parent and all("parent_id" not in e for e in of_parent)
