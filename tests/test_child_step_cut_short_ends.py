"""A child step cut short (its parent cancelled, timed out, or a fail-fast sibling failed) is
recorded and published once its child's cancel has settled how it ended: cut short
(``failed``, ``Cancelled``) if the child was stopped, or, for a parent about to compensate,
``completed`` if the child completed all the same (then compensated as a unit in the plan).
Events and stored history then tell the same story, whichever came first at the same instant:
the child's end or the parent's cancel."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


async def work(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(5)
    return "done"


async def undo_work(ctx: tf.WorkflowContext, result: Any) -> None:
    pass


KID = tf.workflow("kid").step("work", work, undo_work).build()
PARENT = tf.workflow("parent").child("run", workflow="kid").build()


async def boom(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(ctx.input)
    raise ValueError("boom")


FANOUT = (tf.workflow("fanout")
          .parallel("both", branches=[tf.branch("kid").child("run", workflow="kid").build(),
                                      tf.branch("fails").step("boom", boom).build()])
          .build())


def _story(events: list[dict[str, Any]], instance_id: str) -> dict[tuple[str, str], list[str]]:
    told: dict[tuple[str, str], list[str]] = defaultdict(list)
    for event in events:
        if event.get("instance_id") == instance_id and event["event"].startswith("workflow.step.") \
                and event["event"] != "workflow.step.waiting":
            told[(event.get("lane", ""), event["step_name"])].append(event["event"].removeprefix("workflow.step."))
    return told


async def _run_family(
    workflow: tf.WorkflowDefinition, input: Any, cancel_at: float | None = None,
) -> tuple[tf.WorkflowInstance, tf.WorkflowInstance, list[dict[str, Any]], bool]:
    """Run ``workflow`` (cancelled at ``cancel_at``, if given) to its end: the instance, its first
    child, every event, and whether the cancel said yes."""
    events: list[dict[str, Any]] = []
    cancelled = False
    async with open_test_engine() as engine:
        engine.events.on("*", events.append)
        engine.register(KID)
        engine.register(workflow)
        iid = await engine.start(workflow.name, input)
        if cancel_at is not None:
            await trio.sleep(cancel_at)
            cancelled = await engine.cancel(iid)
        ended = await engine.wait(iid)
        kid = await engine.get_instance(ended.children[0])
    assert kid is not None
    return ended, kid, events, cancelled


@pytest.mark.parametrize("cancel_at", [4.999, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.001])
async def test_a_parent_cancelled_as_its_child_completes_tells_one_story(
        autojump_clock: trio.testing.MockClock, cancel_at: float) -> None:
    ended, kid, events, cancelled = await _run_family(PARENT, None, cancel_at)
    iid = ended.id
    told = _story(events, iid)[("", "run")]
    records = [(r.status, r.error_name) for r in ended.history if r.step_name == "run"]
    if not cancelled:  # (it completed before the cancel came)
        assert ended.status == "completed" and told == ["started", "completed"]
        return
    assert ended.status == "cancelled"
    if kid.status == "compensated":  # it completed all the same: its step completed, then undone
        assert told == ["started", "completed", "compensated"], told
        assert records == [("started", None), ("compensated", None)], records  # (completed, then undone)
        assert ended.compensated_steps == ("run",)
    else:
        assert kid.status == "cancelled", kid.status
        assert told == ["started", "failed"], told
        assert records == [("started", None), ("failed", "Cancelled")], records
        assert ended.compensated_steps == ()


@pytest.mark.parametrize("fails_at", [4.999, 5.0, 5.0, 5.0, 5.0, 5.001])
async def test_a_child_step_a_fail_fast_sibling_cut_short_ends_once_in_events_and_history(
        autojump_clock: trio.testing.MockClock, fails_at: float) -> None:
    """The sibling fails before, at or after the instant the child completes: the child step is
    cut short (failed, Cancelled) in both events and history, or completed first (then undone
    with the failed parent); its child, if it completed all the same, is undone as a unit; the
    step ends once."""
    ended, kid, events, _ = await _run_family(FANOUT, fails_at)
    iid = ended.id
    assert ended.status == "failed"
    told = _story(events, iid)
    ends = [e for e in told[("both/kid", "run")] if e != "started"]
    records = [(r.status, r.error_name) for r in ended.history if r.step_name == "run"]
    assert told[("both/kid", "run")][0] == "started"
    if ends[0] == "completed":  # (before the sibling failed: the failed parent undoes it)
        assert records == [("started", None), ("compensated", None)], records
        assert ends == ["completed", "compensated"] and kid.status == "compensated", (ends, kid.status)
    else:
        assert ends[0] == "failed" and records == [("started", None), ("failed", "Cancelled")], (ends, records)
        assert kid.status in ("cancelled", "compensated"), kid.status
    assert len([e for e in ends if e in ("completed", "failed")]) == 1, ends
