"""The waker takes parked instances up ``WAKE_AHEAD`` before their time (SPEC §13): reading,
decoding and starting them come before the due time, so a timer fires at its time even when
storage is slow to answer; and an instance taken up early waits the rest in memory rather than
leaving again (a workflow timeout a moment away included: it used to park and be taken up again
at once, for ever)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import virtual_wall_clock

from storages import engine_on, finish

#: How long (seconds, virtual) the slow storage takes to answer ``due()``: less than
#: ``WAKE_AHEAD`` (0.5 s), so that the answer still comes before the timers' time.
DUE_TAKES = 0.3


def _slow(base: type) -> type:
    class Slow(base):  # type: ignore[misc, valid-type]
        """Storage that takes ``DUE_TAKES`` to answer which instances are due (a large table on
        a busy disk), and counts how often it is asked."""

        asked = 0

        async def due(self, before: float, limit: int, **options: Any) -> Any:
            Slow.asked += 1
            await trio.sleep(DUE_TAKES)
            return await super().due(before, limit, **options)
    return Slow


SlowMemory = _slow(MemoryAdapter)
SlowSQLite = _slow(SQLiteAdapter)


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Adapter]:
    SlowMemory.asked = SlowSQLite.asked = 0
    if request.param == "memory":
        memory = SlowMemory()
        return lambda: memory
    path = tmp_path / "flows.db"
    return lambda: SlowSQLite(path)


def asked() -> int:
    return int(SlowMemory.asked + SlowSQLite.asked)


async def test_timers_due_together_fire_at_their_time_on_slow_storage(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    clock = virtual_wall_clock()
    due = clock() + 3600
    fired: dict[int, float] = {}

    async def after(n: int) -> None:
        fired[n] = clock()

    wf = tf.workflow("remind").wait("w", until=due).task("after", job=after).build()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        ids = [await engine.start("remind", n) for n in range(20)]
        await trio.sleep(60)
        for iid in ids:
            inst = await engine.get_instance(iid)
            assert inst is not None and inst.waiting is not None and inst.waiting["timer"] == due
        done = [await finish(engine, iid) for iid in ids]
    assert [d.status for d in done] == ["completed"] * 20
    late = sorted(t - due for t in fired.values())
    # Never early, and not DUE_TAKES late: the waker asked ahead of time.
    assert late[0] >= 0 and late[-1] < DUE_TAKES / 10, late


async def test_a_wait_longer_than_the_park_threshold_by_less_than_the_lookahead(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """A 1.2 s wait leaves memory (over PARK_AFTER, 1 s); taken up 0.5 s early, the 0.7 s left
    are slept in memory, once: the step after it runs at the timer's time."""
    clock = virtual_wall_clock()
    times: list[float] = []

    async def mark(data: Any) -> None:
        times.append(clock())

    wf = tf.workflow("short").task("a", job=mark).wait("w", seconds=1.2).task("b", job=mark).build()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        done = await finish(engine, await engine.start("short"))
    assert done.status == "completed"
    assert 1.2 <= times[1] - times[0] < 1.2 + DUE_TAKES / 10, times
    assert asked() < 10, f"due() asked {asked()} times for one timer"


@pytest.mark.parametrize("what", ["timer", "signal"])
async def test_a_workflow_timeout_a_moment_away_fires_in_memory(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], what: str,
) -> None:
    """Taken up early for its workflow timeout, the instance meets a wait of an hour: it stays
    in memory for the moment left (it used to leave again, be taken up again at once, and so on
    without the clock ever moving), and times out at its deadline."""
    clock = virtual_wall_clock()
    b = tf.workflow("t").with_timeout(60)
    b = b.wait("w", seconds=3600) if what == "timer" else b.receive("w", signal="go")
    wf = b.build()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        t0 = clock()
        with trio.fail_after(10**5):
            done = await finish(engine, await engine.start("t"))
        elapsed = clock() - t0
    assert done.status == "timed_out", done.error
    assert 60 <= elapsed < 60 + DUE_TAKES / 10, elapsed
    assert asked() < 10, f"due() asked {asked()} times for one timeout"
