"""The ``trioflow_engine`` fixture opens its engine with ``trioflow_engine_options``: a module
overrides that fixture to give its engine services (as this one does)."""

from __future__ import annotations

from typing import Any

import pytest

import trioflow as tf


class Inventory:
    def __init__(self) -> None:
        self.reserved: list[str] = []

    async def reserve(self, item: str) -> str:
        self.reserved.append(item)
        return f"r-{item}"


INVENTORY = Inventory()


@pytest.fixture
def trioflow_engine_options() -> dict[str, Any]:
    return {"services": {"inventory": INVENTORY}, "max_running": 1}


async def test_the_fixtures_engine_has_the_overridden_options(trioflow_engine: tf.Engine) -> None:
    async def reserve(ctx: tf.WorkflowContext) -> str:
        item: str = ctx.input["item"]
        return await ctx.resolve("inventory").reserve(item)  # type: ignore[no-any-return]

    trioflow_engine.register(tf.workflow("order").step("reserve", reserve).build())
    first = await trioflow_engine.start("order", {"item": "book"})
    second = await trioflow_engine.start("order", {"item": "pen"})
    assert (await trioflow_engine.get_instance(second)).status == "pending"  # type: ignore[union-attr]
    done = [await trioflow_engine.wait(first), await trioflow_engine.wait(second)]
    assert [(i.status, i.output) for i in done] == [("completed", "r-book"), ("completed", "r-pen")]
    assert INVENTORY.reserved == ["book", "pen"]
