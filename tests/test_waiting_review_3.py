"""From an adversarial review of timers and signals: each test failed before its fix."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import trio

import trioflow as tf
from trioflow.testing import explore_crashes

BEFORE_1970 = datetime(1969, 12, 31, 23, 0, tzinfo=timezone.utc)


async def test_receive_steps_waiting_at_once_for_one_name_may_take_either_signal_under_the_explorer() -> None:
    # docs/waiting.md: which of several receive steps waiting for one name at once takes which
    # signal is not specified. The explorer took a crash run whose branches took them the other
    # way round for a divergence (20 times in 20).
    two = (tf.workflow("two-approvers")
           .parallel("both", branches=[tf.branch("first").receive("r0", signal="ok").build(),
                                       tf.branch("second").receive("r1", signal="ok").build()])
           .build())
    mapped = (tf.workflow("approvers")
              .map("each", items=lambda ctx: [0, 1], branch=tf.branch("item").receive("r", signal="ok").build())
              .build())
    for workflow in (two, mapped):
        for _ in range(5):
            report = await explore_crashes(workflow, None, signals=[("ok", {"n": 0}), ("ok", {"n": 1})])
            assert not report.divergent


async def test_a_signal_taken_twice_by_contested_receive_steps_is_still_a_divergence() -> None:
    # The explorer lets the order go, not the count: a run whose branches took the payloads
    # {n: 0} twice differs from the fault-free one by more than which took which.
    from trioflow.testing._crashes import Outcome, _Shape, _signals_swapped
    from trioflow._snapshot import StepResult

    two = (tf.workflow("two-approvers")
           .parallel("both", branches=[tf.branch("first").receive("r0", signal="ok").build(),
                                       tf.branch("second").receive("r1", signal="ok").build()])
           .build())
    shape = _Shape.of(two)

    def outcome(*payloads: int) -> Outcome:
        history = tuple(StepResult(step_name=step, status="completed", output={"n": n})
                        for step, n in zip(("r0", "r1"), payloads))
        return Outcome(status="completed", output={"first": {"n": payloads[0]}, "second": {"n": payloads[1]}},
                       compensated_steps=(), compensation_errors=(), completion_order=(), calls={},
                       history=history)

    assert shape.contested
    assert _signals_swapped(outcome(0, 1), outcome(1, 0), shape)
    assert not _signals_swapped(outcome(0, 1), outcome(0, 0), shape)


async def test_an_aware_datetime_before_1970_is_a_moment_past_and_comes_at_once() -> None:
    async def after(ctx: Any) -> str:
        return "after"

    fixed = tf.workflow("fixed").wait("t", until=BEFORE_1970).step("after", after).build()
    computed = tf.workflow("computed").wait("t", until=lambda ctx: BEFORE_1970).step("after", after).build()
    async with tf.open_engine() as engine:
        engine.register(fixed)
        engine.register(computed)
        for name in ("fixed", "computed"):
            done = await engine.wait(await engine.start(name))
            assert (done.status, done.output) == ("completed", "after")
        delayed = await engine.wait(await engine.start("fixed", start_at=BEFORE_1970))
        assert delayed.status == "completed"


async def test_a_receive_timeout_of_inf_is_no_timeout_in_the_waiting_view() -> None:
    # docs/waiting.md: waiting is {"signal": name, "timeout": due or None}; inf is no due time
    # (and not JSON).
    flow = tf.workflow("w").receive("r", signal="s", timeout=math.inf).build()
    async with tf.open_engine() as engine:
        engine.register(flow)
        iid = await engine.start("w")
        await trio.sleep(1)
        instance = await engine.get_instance(iid)
        assert instance is not None and instance.waiting is not None
        assert instance.waiting["timeout"] is None
        await engine.signal(iid, "s", "yes")
        assert (await engine.wait(iid)).output == "yes"
