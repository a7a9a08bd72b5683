"""Wave-2 features (catch, map, child) meeting entity steps and transactional runs, an
adversarial review; each test failed before its fix."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import EntityNotFoundError, MemoryDriver


def test_a_transactional_workflow_with_a_child_step_is_refused_at_build() -> None:
    """A ``.transactional()`` workflow with a ``.child()`` step (or a map whose branch starts
    one) hung for ever when the child wrote through the driver: the parent held the driver's
    transaction while it waited for the child, whose entity step waited for that transaction
    to end; the driver stayed locked for every other instance too. A child runs as an instance
    of its own, outside the parent's transaction (its rows would outlive a rollback): build()
    now refuses the combination, naming the step."""
    with pytest.raises(tf.DefinitionError, match="'sub'.*transactional workflow cannot start child workflows"):
        tf.workflow("checkout").child("sub", workflow="make-order").transactional().build()
    branch = tf.branch("each").child("one", workflow="make-order").build()
    with pytest.raises(tf.DefinitionError, match="'one'"):
        tf.workflow("batch").map("all", items=lambda ctx: [1, 2], branch=branch).transactional().build()


async def test_an_entity_step_cannot_be_given_a_catcher(autojump_clock: trio.testing.MockClock) -> None:
    """SPEC §12: ``catch=[tf.Catch(...)]`` on ``task``, ``step``, ``parallel``, ``map`` and
    ``child`` steps; README "Data drivers": "A where-clause that matches nothing fails the step
    with adapters.EntityNotFoundError naming it" -- the obvious thing to route with a catch
    (no such order: go to "apologise").

    Entity steps are added with ``.step(...)``, but neither way takes a catcher:
    ``tf.update_entity_step(..., catch=...)`` is a ``TypeError`` (the factories take only
    ``retry``/``timeout``, nor ``next``/``end``), and ``.step(entity_step, catch=...)`` is a
    ``DefinitionError`` telling the user to "give them to tf.step()", which cannot build an
    entity step. So an entity step's failure can never be caught: errors-as-values do not reach
    the prebuilt steps at all."""
    driver = MemoryDriver({"product": [{"id": 1, "name": "book", "stock": 5}]})
    catcher = tf.Catch(errors=[EntityNotFoundError], next="apologise")

    def take_missing(**extra: Any) -> Any:
        return tf.update_entity_step("take", "product", lambda ctx: {"id": 99}, lambda ctx: {"stock": 0}, **extra)

    builder = tf.workflow("order")
    try:
        builder.step(take_missing(catch=[catcher]))
    except TypeError:
        builder = tf.workflow("order")
        builder.step(take_missing(), catch=[catcher])  # raises DefinitionError today
    wf = builder.succeed("taken").step("apologise", lambda ctx: "sorry").build()
    async with tf.open_engine(driver=driver) as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("order"))
    assert done.status == "completed" and done.output == "sorry"
