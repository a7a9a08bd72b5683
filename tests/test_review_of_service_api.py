"""An adversarial review of the engine service API, events and hooks: options, bad input,
idempotent starts, every call on every status, calls after close, event names and fields,
subscribers and hooks held. The tests below failed until the commit that added this file: a
running instance's ``step_results`` lists the step each lane stands in as ``running``; a run
that has run nothing yet (queued for a slot, or waiting in memory for a delayed start) starts
on the definition registered as it starts (``Run.take_up_release``), as one taken up from
storage does.

Each test quotes the promise it holds the engine to (SPEC.md / README.md), with the
reproduction, what is expected and what happened.
"""

from __future__ import annotations

import trio
import trio.testing

import trioflow as tf


async def test_step_in_flight_is_listed_running_in_step_results(autojump_clock: trio.testing.MockClock) -> None:
    """SPEC.md, Public API: "`WorkflowInstance`: ... `current_step`, ..., `step_results` (name ->
    `StepResult`) ... `StepResult`: `step_name`, `status` (`pending running completed failed
    skipped compensated`), ..., `started_at`, ..., `attempts`" (seed 003's `StepResult.status`:
    "pending" | "running" | ...; its SSE status page reads `stepResults`).

    Reproduction: a three-task workflow whose second task takes 10 s; `get_instance()` one
    second into that task; then a timer step, viewed as it waits.
    Expected: `step_results["s2"]` is there with status "running" (execution 1, in the main
    lane), as the instance's `current_step` already says "s2"; a waiting timer's entry has its
    `started_at` (stored as it began to wait); `history` still lists only what ended.
    Was: `step_results` held only `s1`: a task step in flight had no `StepResult` at all, and
    no `StepResult` was ever `running`, so a status page built on `step_results` could not show
    what the instance is doing now.
    """
    async with tf.open_engine() as engine:
        async def quick(data: object) -> int:
            return 1

        async def slow(data: object) -> int:
            await trio.sleep(10)
            return 2

        engine.jobs.register("quick", quick)
        engine.jobs.register("slow", slow)
        engine.register(tf.workflow("w").task("s1", job="quick").task("s2", job="slow").task("s3", job="quick").build())
        iid = await engine.start("w", {})
        await trio.sleep(1)
        instance = await engine.get_instance(iid)
        assert instance is not None and instance.status == "running" and instance.current_step == "s2"
        assert "s2" in instance.step_results, f"step_results lists only {sorted(instance.step_results)}"
        running = instance.step_results["s2"]
        assert (running.status, running.execution, running.lane, running.id) == ("running", 1, "", "s2#1")
        assert [r.step_name for r in instance.history] == ["s1"]
        await engine.cancel(iid)

        engine.register(tf.workflow("t").task("s1", job="quick").wait("nap", seconds=3600).build())
        waiting = await engine.start("t", {})
        await trio.sleep(1)
        instance = await engine.get_instance(waiting)
        assert instance is not None and instance.waiting is not None
        nap = instance.step_results["nap"]
        assert nap.status == "running" and nap.started_at is not None
        assert abs(nap.started_at - instance.step_results["s1"].completed_at) < 0.01  # type: ignore[operator]
        done = await engine.wait(waiting)
        assert done.step_results["nap"].status == "completed"


def _two_releases(engine: tf.Engine) -> None:
    async def v1(data: object) -> str:
        return "v1"

    async def v2(data: object) -> str:
        return "v2"

    engine.jobs.register("v1", v1)
    engine.jobs.register("v2", v2)
    engine.register(tf.workflow("w").task("old-step", job="v1").build())


NEW_RELEASE = "the new release's first step"


async def test_instance_queued_for_a_slot_starts_on_the_replaced_definition(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Registration: "A replaced definition is used by instances started from then on
    and by instances taken up from storage ... One that has run nothing yet (queued, waiting
    for a delayed start, or its first step cut short under another release) starts at the new
    release's first step". README, The engine: queued instances wait "stored as `pending`, no
    task of their own".

    Reproduction: `max_running=1`; a blocker holds the slot; an instance of "w" is started and
    queues (`pending`); `register(new_w, replace=True)`; the blocker ends.
    Expected: the queued instance, which has run nothing, runs the new release ("new-step").
    Actual: it runs the replaced definition ("old-step", output "v1"), while the same instance
    taken up from storage (a restart while it queued) would run the new one.
    """
    async with tf.open_engine(max_running=1) as engine:
        gate = trio.Event()

        async def hold(data: object) -> str:
            await gate.wait()
            return "held"

        engine.jobs.register("hold", hold)
        _two_releases(engine)
        engine.register(tf.workflow("blocker").task("hold", job="hold").build())
        await engine.start("blocker", {})
        queued = await engine.start("w", {})
        await trio.sleep(0.1)
        instance = await engine.get_instance(queued)
        assert instance is not None and instance.status == "pending"
        engine.register(tf.workflow("w").task("new-step", job="v2").build(), replace=True)
        gate.set()
        done = await engine.wait(queued)
        assert done.status == "completed"
        assert list(done.step_results) == ["new-step"] and done.output == "v2", (
            f"queued instance ran {list(done.step_results)} -> {done.output!r}, not {NEW_RELEASE}")


async def test_short_delayed_start_starts_on_the_replaced_definition(autojump_clock: trio.testing.MockClock) -> None:
    """README, Registration: "One that has run nothing yet (queued, waiting for a delayed start,
    ...) starts at the new release's first step".

    Reproduction: `start("w", delay=0.5)`; 0.1 s later `register(new_w, replace=True)`.
    Expected: as with `delay=100` (which does run the new release), the delayed instance, which
    has run nothing, starts at the new release's first step.
    Actual: with a delay under a second (kept in memory rather than parked) it runs the replaced
    definition: which release a delayed start runs depends on the length of its delay.
    """
    async with tf.open_engine() as engine:
        _two_releases(engine)
        delayed = await engine.start("w", {}, delay=0.5)
        await trio.sleep(0.1)
        instance = await engine.get_instance(delayed)
        assert instance is not None and instance.waiting is not None and "start" in instance.waiting
        engine.register(tf.workflow("w").task("new-step", job="v2").build(), replace=True)
        done = await engine.wait(delayed)
        assert done.status == "completed"
        assert list(done.step_results) == ["new-step"] and done.output == "v2", (
            f"delayed instance ran {list(done.step_results)} -> {done.output!r}, not {NEW_RELEASE}")
