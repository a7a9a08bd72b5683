"""The crash explorer names each write by what it records, the same in any run: a failure by
its error's name and step, not by its message, which may differ from run to run (an object's
address, an id, a time). Named by its message, a failure's write was a new record to crash at
in every run, and the explorer never ended (found exploring a parallel step whose branch
returned its context, an UnencodableValueError naming the object's address)."""

from __future__ import annotations

import uuid

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import explore_crashes


async def _ok(ctx: tf.WorkflowContext) -> int:
    await trio.sleep(1)
    return 1


async def _declined(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(2)
    raise RuntimeError(f"card declined (request {uuid.uuid4()})")


async def test_a_failure_whose_message_differs_from_run_to_run_is_explored_once(
        autojump_clock: trio.testing.MockClock) -> None:
    """A saga that fails in one branch of a parallel step, its error's message different in
    every run: the explorer ends, with a crash point per write of the fault-free run both ways
    and no more than a few extra ones (it ran for ever before)."""
    branches = [tf.branch(f"b{i}").step(f"s{i}", _ok).step(f"t{i}", _ok).build() for i in range(4)]
    wf = (tf.workflow("w")
          .parallel("p", branches=[*branches, tf.branch("pay").step("charge", _declined).build()],
                    on_error="wait-all")
          .build())
    with trio.fail_after(10**6):  # (virtual time: a run that never ended would reach it)
        report = await explore_crashes(wf, None)
    assert report.baseline.status == "failed"
    assert len(report.points) == 2 * report.writes
    assert len(report.extra_points) <= 2 * report.writes, [p.after for p in report.extra_points]
