"""Adversarial review (fixes4) of 8dfb7f5 and 39df03f (``Run.stopped_alone``, ``Run.fail_fast``).

Technique as in tests/test_review_of_fixes_27.py: trio's scheduler is seeded per run, an engine
is closed at the virtual instant a step fails beside a sibling that completes (and checkpoints),
and another engine is opened on the same storage. The test failed at 39df03f and passes since
the commit that added this file (a failed or caught step's event goes out once the checkpoint
that stores its record has, whoever awaits it).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine
from seeded_runs import seeded_runs


async def _restarted(definition: Any, close_at: float) -> tuple[tf.WorkflowInstance, list[dict[str, Any]]]:
    storage = tf.adapters.MemoryAdapter()
    events: list[dict[str, Any]] = []
    async with open_test_engine(adapter=storage) as engine:
        engine.register(definition)
        engine.events.on("workflow.*", events.append)
        await engine.start(definition.name, {}, instance_id="i")
        await trio.sleep_until(close_at)  # the service shuts down cleanly in this instant
    async with open_test_engine(adapter=storage) as engine:
        engine.register(definition)
        engine.events.on("workflow.*", events.append)
        with trio.fail_after(1000):
            instance = await engine.wait("i")
    return instance, events


async def _bad(ctx: tf.WorkflowContext) -> int:
    await trio.sleep(0.8)
    raise ValueError("card declined")


async def _long(ctx: tf.WorkflowContext) -> int:
    await trio.sleep(5)
    return 1


async def _short(ctx: tf.WorkflowContext) -> int:
    await trio.sleep(0.8)  # completes (and checkpoints) in the instant the service shuts down
    return 2


async def _recover(ctx: tf.WorkflowContext) -> str:
    return "recovered"


async def _item(ctx: tf.WorkflowContext) -> int:
    if ctx.item == 2:
        return await _bad(ctx)
    if ctx.item == 3:
        return await _short(ctx)
    return await _long(ctx)


def _definition(kind: str) -> tf.WorkflowDefinition:
    if kind == "parallel-catch":
        return (tf.workflow("w").parallel("par", branches=[
            tf.branch("a").step("bad", _bad).build(),
            tf.branch("b").step("slow", _long).build(),
            tf.branch("c").step("fin", _short).build()], catch=[tf.Catch(errors=[tf.ALL], next="recover")])
            .step("recover", _recover).build())
    assert kind == "map-tolerated"
    return tf.workflow("w").map("m", items=lambda ctx: [0, 1, 2, 3], tolerated_failures=1,
                                branch=tf.branch("it").step("t", _item).build()).build()


async def _run_kind(kind: str) -> tuple[tf.WorkflowInstance, list[dict[str, Any]]]:
    return await _restarted(_definition(kind), 0.8)


@pytest.mark.parametrize("kind", ["parallel-catch", "map-tolerated"])
def test_a_failure_stored_as_the_engine_closes_is_published(kind: str) -> None:
    """A user runs a fail-fast parallel step with a ``Catch`` routing its failure on (or a map
    with ``tolerated_failures=1``); one branch's (item's) step fails in the instant the service
    is shut down cleanly, while a sibling completes (and checkpoints) in that instant. A
    monitoring service counts ``workflow.step.failed`` events, and pairs each
    ``workflow.step.started`` with its end.

    Expected (README, Events: a step execution's start is "ended by one of
    ``workflow.step.completed``, ``workflow.step.failed`` or ``workflow.step.caught``, or else by
    the instance's terminal event", and ``workflow.completed`` ends none): the instance completes,
    and the failed execution (recorded ``failed``, ``ValueError``, in ``history``) has its
    ``workflow.step.failed`` event, once.

    Was (1 to 3 scheduler orders of 12, depending on the definition): the failure is stored by the sibling's shared checkpoint,
    but the failing lane's own wait for that checkpoint is cancelled by the close, so its
    ``workflow.step.failed`` is never published; the next engine takes the stored failure up
    (the decision stands, the step is not run again) and publishes nothing for it either: a
    failed execution with a start and no end, on an instance that completed."""
    wrong: list[Any] = []
    for seed, (instance, events) in seeded_runs(_run_kind, kind, seeds=range(12)):
        failed = [r.id for r in instance.history if r.status == "failed" and r.error_name == "ValueError"]
        published = [e["execution_id"] for e in events
                     if e["event"] == "workflow.step.failed" and e.get("error_name") == "ValueError"]
        if instance.status != "completed" or sorted(failed) != sorted(published) or len(failed) != 1:
            wrong.append((seed, instance.status, failed, published))
    assert not wrong, wrong
