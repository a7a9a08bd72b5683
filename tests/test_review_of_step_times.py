"""From an adversarial review of the state-machine steps (task/choice/pass/parallel/catch/retry) as
a Step Functions user would use them, whose one finding is below: it failed until the commit that
added this file (a step record's times are never before its instance's creation time, as the
instance's own are not)."""

from __future__ import annotations

import trioflow as tf
from trioflow.testing import ScriptedJob, open_test_engine, returns


async def test_step_times_fall_within_their_instances_run(autojump_clock: object) -> None:
    """A user reads an instance's step records to draw a timeline (or to compute each step's
    offset from the run's start, as Step Functions' execution history gives it). They expect
    every step to start no earlier than the instance started, and to end no later than the
    instance completed.

    Was: on an engine whose clock has not moved since a previous instance was created in
    the same instant (always so on the test engine's virtual clock; on the real clock when
    instances are started in one clock reading), the instance's ``created_at``/``started_at``
    are bumped a few float steps past the clock (``_ids.creation_time``), but the step records
    keep the raw clock reading, so the second instance's first step has
    ``started_at < instance.started_at`` (and the step "ends" before its instance began)."""
    wf = tf.workflow("timeline").task("a", job=ScriptedJob(returns(1))).build()
    async with open_test_engine() as engine:
        engine.register(wf)
        first = await engine.start("timeline", {})
        second = await engine.start("timeline", {})
        for iid in (first, second):
            inst = await engine.wait(iid)
            step = inst.step_results["a"]
            assert inst.started_at is not None and inst.completed_at is not None
            assert step.started_at is not None and step.completed_at is not None
            assert inst.created_at <= inst.started_at <= step.started_at <= step.completed_at <= inst.completed_at, (
                iid, inst.created_at, inst.started_at, step.started_at, step.completed_at, inst.completed_at)
