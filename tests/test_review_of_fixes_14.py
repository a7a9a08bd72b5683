"""Review of afcdcc4 (a receive with a timeout takes only signals that arrived by its deadline)
and a027882 (get_instance reads through ``_load_fresh``); each test failed before its fix.

All run on trio's autojumping MockClock (virtual time); adapters are MemoryAdapter subclasses
whose calls take (virtual) time, as in tests/test_review_of_fixes_13.py.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine, virtual_wall_clock

# -- a027882: get_instance re-reads for as long as the instance keeps leaving memory -------------


class SlowLoadsFor(tf.adapters.MemoryAdapter):
    """``load()`` called from one chosen task reads the row at once and hands it back 0.3 s
    later (a busy database); other callers (the engine's own wakes) are served at once."""

    slow_task: Any = None

    async def load(self, instance_id: str) -> Any:
        record = await super().load(instance_id)
        if trio.lowlevel.current_task() is self.slow_task:
            await trio.sleep(0.3)
        return record


async def test_get_instance_of_an_instance_fed_a_stream_of_signals_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An event-processing instance: ``receive("next", signal="event")`` in a loop (no timeout,
    so it leaves memory after each event and each signal wakes it), fed one signal every 0.1 s
    for 20 s, then ``"stop"``. A storage read takes 0.3 s. ``get_instance`` is called at 0.05 s.

    Expected: one read, then the instance as it stands: ``running`` (what a027882~ returns).
    Actual: ``get_instance`` now reads through ``_load_fresh``, which reads again whenever a run
    of the instance ended -- a park counts -- during the read, and never looks at ``_live``
    between reads. Every 0.3 s read overlaps a park, so it re-reads ~70 times and returns only
    once the stream stops and the instance has ``completed``. A status query (and ``wait()``)
    on any busy long-lived instance blocks for as long as it stays busy (for ever, if it is)."""
    wf = (tf.workflow("events")
          .receive("next", signal="event")
          .choice("more", choices=[tf.when(lambda ctx: ctx.steps["next"] != "stop", next="next")],
                  default="done")
          .pass_("done", result="done")
          .build())
    adapter = SlowLoadsFor()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("events")

        async def send() -> None:
            for i in range(200):
                await engine.signal(iid, "event", i)
                await trio.sleep(0.1)
            await engine.signal(iid, "event", "stop")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await trio.sleep(0.05)  # parked between two events
            adapter.slow_task = trio.lowlevel.current_task()
            with trio.fail_after(10**6):
                seen = await engine.get_instance(iid)
            adapter.slow_task = None
    assert seen is not None
    assert seen.status == "running", seen.status


# -- afcdcc4: a signal delivered in time is refused behind an older, late one --------------------


class SlowCommitSlowFirstAck(tf.adapters.MemoryAdapter):
    """A checkpoint takes 2 s to commit (as in tests/test_review_of_fixes_13.py); the first
    ``send_signal`` stores its signal at once and acknowledges 1 s later."""

    slow_acks = 1

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        with trio.CancelScope(shield=True):
            await trio.sleep(2.0)
        return await super().checkpoint(*args, **kwargs)

    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        seq = await super().send_signal(instance_id, name, payload)
        if self.slow_acks:
            self.slow_acks -= 1
            await trio.sleep(1.0)
        return seq


async def test_a_signal_delivered_before_the_deadline_is_taken_behind_a_late_older_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``receive("r", signal="go", timeout=1)`` starts at 0; storing its wait takes until 2.0.
    Signal "first" is sent at 0.2 (stored at once, seq 1; its acknowledgement, hence its
    delivery to the run, comes at 1.2). Signal "second" is sent at 0.5 and delivered to the
    run at 0.5 (it is in ``run.state.signals`` with arrival 0.5, before the 1.0 deadline).

    Expected: the step completes (with "second", delivered in time; or "first", stored in
    time) -- with a fast checkpoint it completes with "second", and before afcdcc4 it completed
    with "first". Actual: at 2.0 ``take_signal(name, by=due)`` looks only at the oldest signal
    of the name, "first" (arrival 1.2 > 1.0), returns ``None`` and the step fails with
    ``SignalTimeoutError``: a signal that arrived in time is not taken, and whether it is
    depends again on how fast storage commits."""
    wf = tf.workflow("w").receive("r", signal="go", timeout=1.0).build()
    async with open_test_engine(adapter=SlowCommitSlowFirstAck(), clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        async with trio.open_nursery() as nursery:
            await trio.sleep(0.2)
            nursery.start_soon(engine.signal, iid, "go", "first")  # stored 0.2, delivered 1.2
            await trio.sleep(0.3)
            await engine.signal(iid, "go", "second")  # stored and delivered at 0.5
        with trio.fail_after(10**6):
            done = await engine.wait(iid)
    assert done.status == "completed", (done.status, done.error_name)


# -- afcdcc4 (incomplete, not a regression: fails before it too) --------------------------------


class SlowDue(tf.adapters.MemoryAdapter):
    """The waker's ``due()`` read reads at once and hands its rows back 1 s later."""

    async def due(self, *args: Any, **kwargs: Any) -> Any:
        rows = await super().due(*args, **kwargs)
        await trio.sleep(1.0)
        return rows


async def test_a_signal_sent_after_a_parked_receives_deadline_is_not_taken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``receive("r", signal="go", timeout=5)`` parks (deadline 5.0, stored). The waker's read
    of due rows is slow (5.0 .. 6.0). The signal is sent at 5.5, after the deadline.

    Expected (docs/waiting.md: fails with SignalTimeoutError "if no signal came in time"; the
    point of afcdcc4: a late signal is not taken because storage was slow): the step times out
    (with a fast ``due()`` it does, and the signal is refused as the instance has ended).
    Actual: ``signal()`` resumes the instance itself through ``_wake_if_waiting``; the run gets
    the signal from the row (no arrival time: "in time") and ``run_receive`` takes it with
    ``take()`` (no ``by=``): it completes with the late payload. ``Engine.signal`` knows this
    signal was just sent (``pending=seq``) but passes no arrival for it."""
    wf = tf.workflow("w").receive("r", signal="go", timeout=5.0).build()
    async with open_test_engine(adapter=SlowDue(), clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(5.5)  # past the deadline; the waker's read returns at 6.0
        await engine.signal(iid, "go", "late")
        with trio.fail_after(10**6):
            done = await engine.wait(iid)
    assert (done.status, done.error_name) == ("failed", "SignalTimeoutError"), (done.status, done.output)
