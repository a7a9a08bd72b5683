"""An adversarial review of 878b227 (with df20d37, 4d8c331 for context): delayed starts, the
waker, queued runs switching release. Restarts in the middle of short delays (on time within
0.1 s), timers beside thousands of delayed starts, cancels and views held. The tests below
failed at 878b227 and pass since the commit that added this file: queued runs are looked at
only for workflows replaced, once their jobs are all there, and a run's deadline is watched
again only if it switched; a delayed start's view during its on_start hook shows the start
time it waited for; the waker waits for the next row's stored wake time."""

from __future__ import annotations

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine


async def _quick(ctx: tf.WorkflowContext) -> int:
    return 1


async def _slow(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(100)


def _release(n: int) -> tf.WorkflowDefinition:
    builder = tf.workflow("w").step("a", _quick).step("b", _slow)
    for i in range(n):
        builder = builder.step(f"more{i}", _quick)
    return builder.with_timeout(10_000).build()


async def test_registering_jobs_while_runs_are_queued_stalls_the_event_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Relied on: README (releases): a run in memory "stays on the release it has while the new
    one's jobs are not all registered (a queued one switches once they are)"; ``jobs.register()``
    is a plain synchronous call, made at deploy time; queued instances are kept "as data"
    (docs/performance.md), so a queue of a few thousand costs nothing while it waits.

    Reproduction: an engine stops with 1,500 instances of ``w`` (``with_timeout(10000)``) in the
    middle of their second step. A new engine on the same storage with ``max_running=1``
    resumes them: one runs, 1,499 are queued for the slot (they have records, so they can never
    switch release). ``register(v2, replace=True)``, then ``engine.jobs.register()`` five jobs.

    Expected: each ``jobs.register()`` takes microseconds, as at 4d8c331 (0.1 ms for 20 calls
    with 2,000 queued).

    Was: the five calls took seconds of real time, blocking the trio loop; the time grows
    with the square of the queue (20 calls: 10.6 s with 2,000 queued, 55.6 s with 4,000), and
    the queued-deadline heap grows by one entry per queued run per call.

    Cause (guess): ``_jobs_registered`` now calls ``_take_up_queued()`` (runtime/_engine.py:364),
    which for every queued run whose definition is not the registered one (here all of them,
    for ever) forgets and watches its deadline again (runtime/_engine.py:320-324); the watch
    pushes a duplicate heap entry (runtime/_engine.py:1646-1650), and ``_forget_queued_deadline``'s
    compaction (runtime/_engine.py:1689-1691) keeps duplicates (both are in ``known``), so once
    the heap is over ``2 * len(known) + 64`` it rebuilds the whole heap on every forget."""
    adapter = MemoryAdapter()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_release(0))
        for _ in range(1500):
            await engine.start("w", {})
        await trio.sleep(1)
    async with open_test_engine(adapter=adapter, max_running=1) as engine:
        engine.register(_release(0))
        await trio.sleep(1)
        engine.register(_release(1), replace=True)
        watched = len(engine._queued_deadlines)
        for j in range(5):
            engine.jobs.register(f"job{j}", _quick)
        heap = len(engine._queued_deadlines)
    # (Its cost is the heap's work, counted here rather than timed: one entry per queued run.)
    assert heap == watched <= 1500, f"the deadline heap grew from {watched} to {heap} entries over 5 jobs.register()"


async def test_view_of_a_late_delayed_start_during_its_on_start_hook_shows_another_start_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Relied on: README, Waiting: ``(await engine.get_instance(iid)).waiting   # {"start": due}``;
    docs/waiting.md: ``start_at=`` "stores the instance at once, with ... waiting={"start": due}";
    878b227: "a delayed start's view while its on_start hook runs is as stored"; README
    (views): an instance in memory reads "as after a restart".

    Reproduction: ``start("w", {}, start_at=now - 5)`` of a workflow whose ``on_start`` hook
    takes 2 s; 0.5 s later, ``get_instance`` (and ``get_instances``); then the engine stops and a
    new one (``resume=False``, on the same storage) reads the stored row.

    Expected: ``waiting == {"start": now - 5}`` (the ``start_at`` given, as stored), in memory as
    after the restart.

    Was: in memory ``waiting == {"start": now}`` (the moment its wait ended, 5 s after the
    due time it was given); the stored row says ``now - 5``. The same with a short ``delay=``
    whose run was queued for a ``max_running`` slot past its start time.

    Cause (guess): ``_live_view`` (runtime/_engine.py:2611-2615) builds
    ``waiting={"start": state.started_at}``, but ``wait_for_start`` set ``started_at`` to the
    clock when the wait ended (actors/_wait.py:56), not to the due time stored under
    ``start``."""
    async def on_start(ctx: tf.WorkflowContext) -> None:
        await trio.sleep(2)

    wf = tf.workflow("w").step("s", _quick).with_hooks(on_start=on_start).build()
    adapter = MemoryAdapter()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        due = engine._clock() - 5.0
        iid = await engine.start("w", {}, start_at=due)
        await trio.sleep(0.5)
        live = await engine.get_instance(iid)
        listed = [i for i in await engine.get_instances() if i.id == iid][0]
    async with open_test_engine(adapter=adapter, resume=False) as engine:
        stored = await engine.get_instance(iid)
    assert stored.waiting == {"start": due}
    assert (live.waiting, listed.waiting) == ({"start": due}, {"start": due}), (
        f"in memory: {live.waiting} / {listed.waiting}; stored: {stored.waiting} (start_at={due})")


class _Counting(MemoryAdapter):
    """A MemoryAdapter that counts the waker's questions."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    async def due(self, before: float, limit: int, **kw: object) -> object:
        self.looks += 1
        return await super().due(before, limit, **kw)

    async def next_wake(self, **kw: object) -> object:
        self.looks += 1
        return await super().next_wake(**kw)


async def test_short_delayed_starts_with_slow_on_start_hooks_make_the_waker_poll_every_50_ms(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Relied on: docs/waiting.md (the waker): "A due row whose instance runs here (one that
    waited out a short delay in memory, its start not stored yet) is passed over ... While every
    due row is an instance on its way ..., it reads when the next other instance is due and looks
    again then (at most a second later), ... without asking storage every 50 ms"; 878b227 (its
    message and ``_created_wake``): a delay waited in memory is created due WAKE_AHEAD after its
    start time, so that the waker "meets it only from its start time on ... rather than for all
    of its last WAKE_AHEAD", the fix for a waker that "asked storage every 50 ms" while delayed
    starts ran slow on_start hooks.

    Reproduction: ``w`` has an ``on_start`` hook that takes 5 s. From t=0, ``start("w", {},
    delay=0.9)`` every 0.6 s; at t=1 a ``t`` instance parks on a 1000 s timer (the waker reads
    storage from then on). Count the adapter's ``due()`` + ``next_wake()`` calls from t=5 to
    t=15.

    Expected: a look or so per delayed start, as at 4d8c331 (54 calls in those 10 s; 51 here
    with the next row's due time read from its row; 0 at 05951a9).

    Was: 549 calls: the waker asks storage every 50 ms.

    Cause (guess): ``_until_next_other`` (runtime/_engine.py:2207-2221) reads the next row's
    due time from its decoded state (``wake_at(_decoded(stored), definition)``: the start time),
    not from the row, which ``_created_wake`` (runtime/_engine.py:2530) now stores WAKE_AHEAD
    later: it returns ``max(WAKE_RETRY, start - WAKE_AHEAD - now)``, 50 ms, for the whole last
    half second before that row is due; each look finds it not due yet, ``next_wake()`` gives
    the past wake time of a row running its hook here, and ``_wake_due`` runs again."""
    async def on_start(ctx: tf.WorkflowContext) -> None:
        await trio.sleep(5)

    adapter = _Counting()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("w").step("s", _quick).with_hooks(on_start=on_start).build())
        engine.register(tf.workflow("t").wait("nap", seconds=1000).step("a", _quick).build())
        t0 = trio.current_time()

        async def stream() -> None:
            while trio.current_time() - t0 < 20:
                await engine.start("w", {}, delay=0.9)
                await trio.sleep(0.6)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream)
            await trio.sleep_until(t0 + 1)
            await engine.start("t", {})
            await trio.sleep_until(t0 + 5)
            before = adapter.looks
            await trio.sleep_until(t0 + 15)
            looks = adapter.looks - before
            nursery.cancel_scope.cancel()
    assert looks <= 150, f"{looks} due()/next_wake() calls in 10 s"
