"""An adversarial review of df20d37 (``Adapter.create(wake_at=)``: a delayed start's row
waits from its creation on; the waker counted a due row of a run live here as on its way).
Restarts with and without resume, cancels, idempotent and lost starts, queues, hooks, timeouts,
views, 2,000 starts at once, older adapters and database files held. The tests below failed
until the commit that added this file: the waker passes over a due row that runs here without
counting it on its way (and asks for as many rows more next time); a delay waited in memory is
created due WAKE_AHEAD after its start time (the waker reads rows that much ahead); a delayed start
past its wait, running its on_start hook, no longer counts among those the waker woke (the
second test failed before df20d37 too). On trio's MockClock (``autojump_clock``), on the MemoryAdapter
(counting its ``due()`` / ``next_wake()`` calls). (The probes that held were not kept.)

Promises relied on (docs/waiting.md, "How the waker works"):

- "One woken for a retry's next attempt, or for a delayed start, stores that its wait is over
  first, before it runs a step, so that a long attempt or first step does not keep it counted
  among those on their way (more than half a batch of them would hold every other timer back)."
- "While every due row is an instance on its way (a timer's next step running, or one queued
  for a slot), it reads when the next other instance is due and looks again then (at most a
  second later), so that a timer due just after those is taken up in time, without asking
  storage every 50 ms for as long as they wait for slots."

README, Waiting: a parked instance "is resumed by the engine's waker when due (taken up half a
second early, and holding no slot until its time, it runs its next step on time)".
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine


class Counting(MemoryAdapter):
    """A MemoryAdapter that counts the waker's questions."""

    def __init__(self) -> None:
        super().__init__()
        self.dues = 0
        self.nexts = 0

    async def due(self, before: float, limit: int, **kw: Any) -> Any:
        self.dues += 1
        return await super().due(before, limit, **kw)

    async def next_wake(self, **kw: Any) -> Any:
        self.nexts += 1
        return await super().next_wake(**kw)


async def _noop(ctx: tf.WorkflowContext) -> None:
    pass


def _timers(ran: list[float]) -> tf.WorkflowDefinition:
    async def after(ctx: tf.WorkflowContext) -> None:
        ran.append(trio.current_time())

    return tf.workflow("t").wait("nap", seconds=lambda ctx: ctx.input["nap"]).step("after", after).build()


def _hooked(hook_seconds: float) -> tf.WorkflowDefinition:
    async def on_start(ctx: tf.WorkflowContext) -> None:
        await trio.sleep(hook_seconds)  # (an on_start hook that calls a slow service)

    return tf.workflow("w").step("s", _noop).with_hooks(on_start=on_start).build()


async def _timers_beside_hooked_delayed_starts(
    naps: tuple[float, ...], *, at: float, delay: float,
) -> tuple[list[float], Counting]:
    """Start a ``t`` for each nap at t=0, then at ``at`` 600 ``w`` delayed by ``delay`` whose
    ``on_start`` hook takes 10 s; wait for the first ``t``. When the timers ran (from t=0)."""
    adapter = Counting()
    timer_ran: list[float] = []
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_hooked(10.0))
        engine.register(_timers(timer_ran))
        t0 = trio.current_time()
        first = [await engine.start("t", {"nap": nap}) for nap in naps][0]
        await trio.sleep_until(t0 + at)
        for _ in range(600):
            await engine.start("w", {}, delay=delay)
        with trio.fail_after(60):
            await engine.wait(first)
    return [ran - t0 for ran in timer_ran], adapter


async def test_short_delayed_starts_with_a_slow_on_start_hook_hold_back_a_due_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Relied on: docs/waiting.md (the waker): a delayed start "stores that its wait is over
    first, before it runs a step, so that a long attempt or first step does not keep it counted
    among those on their way (more than half a batch of them would hold every other timer
    back)"; README: a parked instance woken by the waker "runs its next step on time".

    Reproduction: a timer workflow ``t`` (``wait`` then a step). At t=0 start ``t`` twice, with
    naps of 4.8 s and 6.0 s (both park). At t=4.0, start 600 instances of ``w`` with
    ``delay=0.7`` (< 1 s: waited in memory); ``w`` has an ``on_start`` hook that takes 10 s.

    Expected: the 6.0 s timer's step runs at t=6.0 (as it did before df20d37: a short delayed
    start's row had no wake time, and the waker never counted it).

    Was: it ran at t=14.7, when the hooks are over (the 4.8 s one is on time).

    Cause: df20d37 stores the short delayed starts' rows with ``wake_at``, and ``_wake_due``
    (runtime/_engine.py:2146) now adds every due row of a run live here to ``waking``; the
    run keeps ``stored_wake_at`` until its start is stored, which comes only after
    ``_announce_start`` ran the ``on_start`` hook (actors/_instance.py:194-199). With more than
    half a batch (500) of them, ``room < WAKE_BATCH // 2`` (runtime/_engine.py:2125) makes
    every look wait and return without reading due rows: the 6.0 s timer is never woken."""
    timer_ran, adapter = await _timers_beside_hooked_delayed_starts((6.0, 4.8), at=4.0, delay=0.7)
    assert len(timer_ran) == 2
    assert timer_ran[-1] == pytest.approx(6.0, abs=0.2), (
        f"the 6 s timer ran at t={timer_ran[-1]:.2f}", adapter.dues, adapter.nexts)


async def test_parked_delayed_starts_with_a_slow_on_start_hook_hold_back_a_due_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """(Pre-existing: the same at 05951a9, before df20d37; same root cause as the test above.)

    Relied on: as above (docs/waiting.md: a delayed start woken by the waker "stores that its
    wait is over first ... (more than half a batch of them would hold every other timer back)";
    README: "it runs its next step on time").

    Reproduction: start ``t`` with a 6 s nap at t=0; at t=3.0 start 600 ``w`` with
    ``delay=2.0`` (parked, woken by the waker at 4.5-5.0); ``w``'s ``on_start`` hook takes 10 s.

    Expected: ``t``'s step runs at t=6.0. Was: at t=15.0.

    Cause: the woken delayed starts count among those on their way until their start is
    stored, after their ``on_start`` hook (actors/_instance.py:194-199); 600 > WAKE_BATCH // 2
    keeps ``_wake_due`` (runtime/_engine.py:2125) from reading due rows for as long."""
    timer_ran, _ = await _timers_beside_hooked_delayed_starts((6.0,), at=3.0, delay=2.0)
    assert timer_ran[0] == pytest.approx(6.0, abs=0.2), f"the timer ran at t={timer_ran[0]:.2f}"


async def test_delayed_starts_queued_for_a_slot_make_the_waker_ask_storage_every_50_ms(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Relied on: docs/waiting.md (the waker): "While every due row is an instance on its way (a
    timer's next step running, or one queued for a slot), it reads when the next other instance
    is due and looks again then (at most a second later) ..., without asking storage every 50 ms
    for as long as they wait for slots."

    Reproduction: ``open_engine(max_running=1)``. Start ``t`` (a 3 s ``wait``: it parks, so the
    waker looks at storage at t=2.5), then ``b`` (one 100 s step: it holds the only slot), then
    600 ``start("w", delay=0.5)`` (pending, queued for the slot; due at t=0.5). Count the
    adapter's ``due()`` + ``next_wake()`` calls from t=10 to t=60 (all 601 due rows are queued
    for the slot meanwhile).

    Expected: about one look a second (150 calls at 05951a9, before df20d37).

    Was: 1,001 ``next_wake()`` calls in those 50 s: one every 50 ms.

    Cause: the due rows of the queued delayed starts (stored with ``wake_at`` since df20d37)
    are counted in ``waking`` (runtime/_engine.py:2146, ``stored_wake_at`` set at
    runtime/_engine.py:614); with 500 or more there, ``_wake_due`` waits ``WAKE_RETRY`` and
    returns (runtime/_engine.py:2125-2130), and ``_waker`` asks ``next_wake()``
    (runtime/_engine.py:2099), gets a past time and comes straight back. (600 timers woken and
    queued the same way get the same loop, before df20d37 too.)"""
    adapter = Counting()
    timer_ran: list[float] = []

    async def blocker(ctx: tf.WorkflowContext) -> None:
        await trio.sleep(100)

    async with open_test_engine(adapter=adapter, max_running=1) as engine:
        engine.register(tf.workflow("w").step("s", _noop).build())
        engine.register(tf.workflow("b").step("b", blocker).build())
        engine.register(_timers(timer_ran))
        await engine.start("t", {"nap": 3.0})
        await trio.sleep(0.1)
        await engine.start("b", {})
        for _ in range(600):
            await engine.start("w", {}, delay=0.5)
        await trio.sleep(10)
        looks = adapter.dues + adapter.nexts
        await trio.sleep(50)
        looks = adapter.dues + adapter.nexts - looks
    assert looks <= 200, f"{looks} storage looks in 50 s while the delayed starts queued"
