"""From three reviews of the docs against the code, claim by claim (README.md; docs/waiting.md
and docs/fanout.md; docs/adapters.md, docs/errors.md and docs/testing.md). The first test
failed until the commit that added this file; the two after it held and are kept as guards of
promises where the waker, parking and the signal path meet; the last two failed until the
commit after (an end hook or async callback cut as the engine closed left no trace). On trio's
autojumping MockClock.""" 

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import engine_portal


async def _exits(ctx: tf.WorkflowContext) -> None:
    raise SystemExit(3)  # a step calling a helper that sys.exit()s


def test_leaving_engine_portal_raises_the_steps_systemexit_itself() -> None:
    """docs/testing.md: leaving an ``engine_portal`` block "raises what its run raised (a
    step's `SystemExit`, say)". A user drives a workflow whose step calls ``sys.exit()`` and
    expects ``pytest.raises(SystemExit)`` (or ``except SystemExit`` in a harness) to see it.
    Was: ``BaseExceptionGroup([SystemExit(3)])``: the actors' nursery wrapped it and
    ``open_engine`` took off only the outer of the two groups."""
    wf = tf.workflow("exits").wait("w", seconds=5).step("a", _exits).build()
    with pytest.raises(SystemExit):
        with engine_portal(setup=lambda engine: engine.register(wf)) as portal:
            portal.call(lambda engine: engine.start("exits"))
            portal.advance(10)


def _now(ctx: tf.WorkflowContext) -> float:
    return trio.current_time()


async def test_signal_does_not_cut_a_delayed_start_short(trioflow_engine: tf.Engine) -> None:
    """docs/waiting.md, Delayed starts: a user starts an instance with ``delay=3600`` whose
    first step is a receive, and signals it 10 s later: the signal is kept and taken when the
    first step runs at the delay's end; the instance does not start early (the signal path
    takes parked instances up at once, which must not wake a delayed start)."""
    wf = tf.workflow("delayed-receive").receive("r", signal="a").pass_("at", transform=_now).build()
    trioflow_engine.register(wf)
    t0 = trio.current_time()
    iid = await trioflow_engine.start("delayed-receive", delay=3600)
    await trio.sleep(10)
    await trioflow_engine.signal(iid, "a", 1)
    instance = await trioflow_engine.wait(iid)
    assert instance.step_results["r"].output == 1
    assert instance.output - t0 >= 3600 - 1


async def test_receive_timeout_in_a_branch_fires_while_parked(trioflow_engine: tf.Engine) -> None:
    """docs/waiting.md, What leaves memory: a parallel step has a receive with ``timeout=100``
    in one branch and a 1,000 s timer in the other. Both branches rest, so the instance leaves
    memory; its ``wake_at`` is the soonest of its lanes' waits, so the receive times out at
    100 s (and, uncaught, fails the workflow then), not when the timer is due."""
    wf = tf.workflow("branch-timeout").parallel("p", branches=[
        tf.branch("a").receive("r", signal="s", timeout=100).build(),
        tf.branch("b").wait("w", seconds=1000).build(),
    ]).build()
    trioflow_engine.register(wf)
    t0 = trio.current_time()
    instance = await trioflow_engine.wait(await trioflow_engine.start("branch-timeout"))
    assert instance.status == "failed"
    assert instance.error_name == "SignalTimeoutError"
    assert trio.current_time() - t0 < 1000


class _AppBug(Exception):
    pass


@pytest.mark.parametrize("how", ["block raises", "a scope around it is cancelled"])
async def test_an_end_hook_cut_as_the_engine_closes_abruptly_is_logged(
        how: str, autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    """README, Hooks: an engine lets ``on_complete`` hooks finish for up to 30 s when its block
    is left normally; one that raises or is cancelled (a service's shutdown) cuts them at once.
    An end hook runs at most once: a user whose notification hook was cut needs to know it.
    Was: cut with nothing logged, the notification lost unseen."""
    notified: list[str] = []

    async def ok(ctx: tf.WorkflowContext) -> int:
        return 1

    async def on_complete(result: tf.WorkflowResult) -> None:
        await trio.sleep(1)
        notified.append(result.instance_id)

    caplog.set_level(logging.WARNING, logger="trioflow")
    with trio.CancelScope() as shutdown:
        try:
            async with tf.open_engine() as engine:
                engine.register(tf.workflow("w").step("a", ok).with_hooks(on_complete=on_complete).build())
                await engine.wait(await engine.start("w", {}, instance_id="i-1"))
                if how == "block raises":
                    raise _AppBug("a handler failed")
                shutdown.cancel()
                await trio.sleep(0)
        except _AppBug:
            pass
    assert notified == []
    cut = [r.getMessage() for r in caplog.records if "cut short" in r.getMessage()]
    assert cut == ["hook on_complete of instance 'i-1' (workflow 'w') cut short as the engine closed;"
                   " it does not run again"]


async def test_an_async_event_callback_cut_as_the_engine_closes_abruptly_is_logged(
        autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The same for an async event callback: cut with events still queued for it when the
    engine's block raises, it is logged, naming the event it was on and how many were dropped."""
    async def ok(ctx: tf.WorkflowContext) -> int:
        return 1

    async def slow(event: Any) -> None:
        await trio.sleep(1)

    caplog.set_level(logging.WARNING, logger="trioflow")
    with pytest.raises(_AppBug):
        async with tf.open_engine() as engine:
            engine.register(tf.workflow("w").step("a", ok).build())
            engine.events.on("workflow.*", slow)
            await engine.wait(await engine.start("w", {}))
            raise _AppBug("a handler failed")
    cut = [r.getMessage() for r in caplog.records if "cut short" in r.getMessage()]
    assert cut == ["async event callback cut short on 'workflow.started' as the engine closed; 4 queued events dropped"]
