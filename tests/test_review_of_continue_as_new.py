"""From an adversarial review of continue-as-new (as a Temporal user would use it); each test
failed until the commit that added this file."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


class _SlowRestart(tf.adapters.MemoryAdapter):
    """A MemoryAdapter whose restart checkpoint (continue-as-new's write) takes a while, as a
    database behind a network does: ``entered`` is set when it begins, ``release`` lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = trio.Event()
        self.release = trio.Event()

    async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Any, *,
                         restart: bool = False, **kwargs: Any) -> Any:
        if restart:
            self.entered.set()
            await self.release.wait()
        return await super().checkpoint(instance_id, status, header, records, restart=restart, **kwargs)


async def test_a_signal_sent_while_the_continue_is_being_stored_is_received_by_the_next_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A user's loop: run 1 does some work and continues; run 2 waits for a "stop" signal. The
    user sends "stop" while the continue's write is in flight (a slow database). Storage keeps
    the signal pending, and README promises "a signal sent to one run is received by the next's
    receive step": run 2 should take it and complete.
    Was: the signal is delivered to the run's in-memory state as a fresh list on the old
    state, which the continue then overwrites with the next run's (empty) signals; the receive
    in run 2 never sees it and the instance waits for ever (here: the receive times out)."""
    adapter = _SlowRestart()
    definition = (
        tf.workflow("loop")
        .choice("first", choices=[tf.Choice(condition=lambda ctx: ctx.input == 0, next="again")], default="take")
        .continue_as_new("again", input=1)
        .receive("take", signal="stop", timeout=0.5)  # (short: it stays in memory)
        .succeed("done", output=lambda ctx: ctx.steps["take"])
        .build())
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(definition)
        iid = await engine.start("loop", 0)
        await adapter.entered.wait()
        await engine.signal(iid, "stop", "now")
        adapter.release.set()
        done = await engine.wait(iid)
    assert (done.status, done.output, done.runs) == ("completed", "now", 1), (done.status, done.error)


async def test_explore_crashes_does_not_false_alarm_on_a_child_started_in_an_earlier_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A user checks a monthly billing loop (a child step charges, then the parent continues as
    new) with ``explore_crashes``, as docs/testing.md advises. The workflow is correct (the
    engine run of it is: see tests/test_continue_as_new.py, each run starts children of its
    own) and the exploration should report no divergence.
    Was: CrashDivergenceError "child 'explored-instance/pay#1' was started but no parent
    lists it": the explorer's family check looks for each stored child in the parent's
    *current* run's history only, and the first run's child is in none after the continue."""
    kid = tf.workflow("charge").step("charge", lambda ctx: f"charged {ctx.input}").build()
    parent = (
        tf.workflow("monthly").child("pay", workflow="charge", input=lambda ctx: ctx.input)
        .choice("more", choices=[tf.Choice(condition=lambda ctx: ctx.input < 2, next="renew")], default="done")
        .continue_as_new("renew", input=lambda ctx: ctx.input + 1)
        .succeed("done", output=lambda ctx: ctx.steps["pay"])
        .build())
    report = await tf.testing.explore_crashes(parent, 1, also=[kid])
    assert (report.baseline.status, report.baseline.output) == ("completed", "charged 2")
    assert not report.divergent
