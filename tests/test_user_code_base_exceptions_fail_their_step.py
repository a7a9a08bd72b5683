"""A BaseException of user code's own (not a cancellation, KeyboardInterrupt or SystemExit:
GeneratorExit, asyncio's CancelledError from a bridged client, a library's odd exit) raised by
a condition, a mapper, a map's items or a wait's time fails that code's step, as it does out of
a job: the step is catchable, the completed steps are compensated, the failure is published.
Before, it ended the instance with "internal error" and compensated nothing."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import open_test_engine


class OddExit(BaseException):
    """What a library might raise: neither an Exception nor a way to stop the process."""


def odd(*args: Any) -> Any:
    raise OddExit("odd exit")


async def reserve(ctx: tf.WorkflowContext) -> str:
    return "r-1"


async def ok(data: Any) -> str:
    return "ok"


released: list[str] = []


async def release(ctx: tf.WorkflowContext, result: str) -> None:
    released.append(result)


def _then(kind: str) -> tf.WorkflowDefinition:
    wf = tf.workflow(kind).step("reserve", reserve, release)
    if kind == "condition":
        wf = wf.choice("route", choices=[tf.when(odd, next="done")], default="done").task("done", job=ok)
    elif kind == "input":
        wf = wf.task("charge", job=ok, input=odd)
    elif kind == "output":
        wf = wf.task("charge", job=ok, output=odd)
    elif kind == "items":
        wf = wf.map("each", items=odd, branch=tf.branch("one").task("i", job=ok).build())
    elif kind == "seconds":
        wf = wf.wait("nap", seconds=odd)
    elif kind == "child input":
        wf = wf.child("kid", workflow="kid", input=odd)
    elif kind == "transform":
        wf = wf.pass_("shape", transform=odd)
    return wf.build()


@pytest.mark.parametrize("kind", ["condition", "input", "output", "items", "seconds", "child input", "transform"])
async def test_a_base_exception_of_user_codes_own_fails_its_step_and_compensates(
        autojump_clock: trio.testing.MockClock, kind: str) -> None:
    released.clear()
    events: list[str] = []
    async with open_test_engine() as engine:
        engine.events.on("workflow.*", lambda event: events.append(event["event"]))
        engine.register(tf.workflow("kid").task("k", job=ok).build())
        engine.register(_then(kind))
        done = await engine.wait(await engine.start(kind, {}))
    assert (done.status, done.error_name, done.cause) == ("failed", "OddExit", "odd exit"), done.error
    assert done.compensated_steps == ("reserve",) and released == ["r-1"]
    assert "workflow.step.failed" in events and events[-1] == "workflow.failed", events


async def test_a_catch_takes_a_base_exception_of_user_codes_own(autojump_clock: trio.testing.MockClock) -> None:
    wf = (tf.workflow("caught").task("charge", job=ok, input=odd, catch=[tf.Catch(errors=tf.ALL, next="after")])
          .task("after", job=ok).build())
    async with open_test_engine() as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("caught", {}))
    assert done.status == "completed" and done.step_results["charge"].output == {"error": "OddExit", "cause": "odd exit"}
