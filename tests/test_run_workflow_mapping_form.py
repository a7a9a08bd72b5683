"""``run_workflow(driver, {"name": ..., "steps": [...]})``: the second form seed 000 gives
``runWorkflow`` ("Run workflows outside of entity actions"), which raised a bare ``TypeError``
(``missing 'steps'``) before (the wave-1 spec audit of December 5th). The mapping holds the name,
the steps and any other argument by name; anything else is a ``DefinitionError`` naming it."""

from __future__ import annotations

from typing import Any

import pytest

import trioflow as tf
from trioflow.adapters import MemoryDriver


async def test_the_mapping_form_runs_the_saga_as_the_arguments_do() -> None:
    log: list[str] = []

    async def fetch(ctx: tf.WorkflowContext) -> list[int]:
        log.append("fetch")
        return [1, 2]

    async def save(ctx: tf.WorkflowContext) -> int:
        log.append("save")
        return sum(ctx.steps["fetch"]) + ctx.input

    result = await tf.run_workflow(MemoryDriver(), {
        "name": "batch-import", "steps": [tf.step("fetch", fetch), tf.step("save", save)], "input": 10,
        "use_transaction": True,
    })
    assert result.success and result.output == 13 and log == ["fetch", "save"]


async def test_a_failing_step_compensates_in_the_mapping_form_too() -> None:
    undone: list[Any] = []

    async def reserve(ctx: tf.WorkflowContext) -> str:
        return "r-1"

    async def release(ctx: tf.WorkflowContext, result: Any) -> None:
        undone.append(result)

    async def charge(ctx: tf.WorkflowContext) -> None:
        raise PermissionError("declined")

    result = await tf.run_workflow(None, {"name": "checkout", "steps": [
        tf.step("reserve", reserve, release), tf.step("charge", charge)]})
    assert not result.success and result.failed_step == "charge" and undone == ["r-1"]


@pytest.mark.parametrize(("call", "says"), [
    (lambda: tf.run_workflow(None, {"name": "b"}), r"needs 'steps'"),
    (lambda: tf.run_workflow(None, {"steps": []}), r"needs 'name'"),
    (lambda: tf.run_workflow(None, {"name": "b", "steps": [], "useTransaction": True}), r"not 'useTransaction'"),
    (lambda: tf.run_workflow(None, {"name": "b", "steps": []}, []), r"in the mapping or as an argument"),
    (lambda: tf.run_workflow(None, "b"), r"run_workflow\('b'\) needs its steps"),
])
async def test_what_the_mapping_lacks_or_holds_wrongly_is_named(call: Any, says: str) -> None:
    with pytest.raises(tf.DefinitionError, match=says):
        await call()
