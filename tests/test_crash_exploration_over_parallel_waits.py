"""Crash exploration (every checkpoint, lost writes included) over parallel steps whose
branches wait, loop, fail and start children: the outcome of every crash point is the
crash-free one (the adversarial review of c508bd6, December 5th)."""
from __future__ import annotations

from typing import Any

import trio
import trio.testing
import trioflow as tf
from trioflow.testing import explore_crashes


async def _a(ctx: tf.WorkflowContext) -> str:
    return "a"


async def _undo(ctx: tf.WorkflowContext, r: str) -> None:
    return None


async def _b(ctx: tf.WorkflowContext) -> int:
    return 2


def _spans(history: Any) -> None:
    """Each parallel/branch record: the parallel execution started no later than its branches'
    first steps, and ended no earlier than they did."""
    by = {}
    for r in history:
        by.setdefault(r.step_name, []).append(r)
    for par in by.get("par", []):
        for name in ("wa", "wr", "x"):
            for r in by.get(name, []):
                if r.status == "completed" and par.completed_at is not None and r.completed_at <= par.completed_at:
                    assert par.started_at <= r.started_at + 1e-6, (name, par.started_at, r.started_at)


async def test_crashes_over_parallel_with_wait_and_receive(autojump_clock: trio.testing.MockClock) -> None:
    wf = (tf.workflow("cp").step("a", _a, _undo)
          .parallel("par", branches=[
              tf.branch("A").wait("wa", seconds=100).step("x", _b).build(),
              tf.branch("B").receive("wr", signal="go", timeout=5000).build()])
          .pass_("after", transform=lambda ctx: ctx.steps["par"])
          .build())
    report = await explore_crashes(wf, None, signals=[("go", 7)])
    assert report.baseline.status == "completed", report.baseline
    assert report.divergent == (), [(p.after, p.divergence) for p in report.divergent][:3]
    for p in report.points:
        _spans(p.outcome.history)
        pars = [r for r in p.outcome.history if r.step_name == "par"]
        assert len(pars) == 1, (p.after, pars)


async def test_crashes_over_parallel_loop(autojump_clock: trio.testing.MockClock) -> None:
    wf = (tf.workflow("cl").step("a", _a, _undo)
          .parallel("par", branches=[
              tf.branch("A").wait("wa", seconds=100).build(),
              tf.branch("B").wait("wb", seconds=300).build()])
          .pass_("count", transform=lambda ctx: ctx.data.__setitem__("n", ctx.data.get("n", 0) + 1))
          .choice("again", choices=[tf.Choice(condition=lambda ctx: ctx.data["n"] < 2, next="par")], default="done")
          .succeed("done").build())
    report = await explore_crashes(wf, None)
    assert report.baseline.status == "completed", report.baseline
    assert report.divergent == (), [(p.after, p.divergence) for p in report.divergent][:3]
    for p in report.points:
        pars = [r for r in p.outcome.history if r.step_name == "par"]
        assert len(pars) == 2, (p.after, pars)
        assert pars[1].started_at >= pars[0].completed_at, (p.after, [(r.started_at, r.completed_at) for r in pars])


async def test_crashes_over_parallel_in_map_with_failure_caught(autojump_clock: trio.testing.MockClock) -> None:
    async def boom(ctx: tf.WorkflowContext) -> None:
        if ctx.item == 1:
            raise ValueError("no")

    wf = (tf.workflow("cm").step("a", _a, _undo)
          .map("each", items=lambda ctx: [0, 1], tolerated_failures=1, on_error="wait-all",
               branch=tf.branch("item").parallel("par", on_error="wait-all", branches=[
                   tf.branch("A").wait("wa", seconds=100).step("boom", boom).build(),
                   tf.branch("B").wait("wb", seconds=300).build()]).build())
          .build())
    report = await explore_crashes(wf, None)
    assert report.baseline.status == "completed", report.baseline
    assert report.divergent == (), [(p.after, p.divergence) for p in report.divergent][:3]


async def test_crashes_over_first_step_parallel_with_catch_back_edge(autojump_clock: trio.testing.MockClock) -> None:
    async def flaky(ctx: tf.WorkflowContext) -> str:
        n = ctx.data.get("tries", 0)
        ctx.data["tries"] = n + 1
        if n == 0:
            raise ValueError("first")
        return "ok"

    wf = (tf.workflow("cc")
          .parallel("par", catch=tf.Catch(errors=[tf.ALL], next="par"), branches=[
              tf.branch("A").wait("wa", seconds=100).step("x", flaky).build(),
              tf.branch("B").wait("wb", seconds=300).build()])
          .build())
    report = await explore_crashes(wf, None)
    assert report.baseline.status == "completed", report.baseline
    assert report.divergent == (), [(p.after, p.divergence) for p in report.divergent][:3]


async def test_crashes_over_parallel_with_child_and_wait(autojump_clock: trio.testing.MockClock) -> None:
    kid = tf.workflow("kid").wait("nap", seconds=50).step("k", _b).build()
    wf = (tf.workflow("pc").step("a", _a, _undo)
          .parallel("par", branches=[
              tf.branch("A").child("c", workflow="kid").build(),
              tf.branch("B").wait("wb", seconds=100).receive("wr", signal="go", timeout=5000).build()])
          .map("m", items=lambda ctx: [1, 2], branch=tf.branch("it").child("c2", workflow="kid").build())
          .build())
    report = await explore_crashes(wf, None, signals=[("go", 1)], also=[kid])
    assert report.baseline.status == "completed", report.baseline
    assert report.divergent == (), [(p.after, p.divergence) for p in report.divergent][:3]
