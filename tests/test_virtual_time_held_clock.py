"""``trioflow._virtual_time``: thread calls under a clock held still (an engine portal's) leave
its time alone, and letting it jump while a thread call is in flight applies only once that
call is over, its time standing still meanwhile (the portal's close, or a restart: hooks then
finish on the autojump clock, and a SQLite adapter's close moves no time)."""

from __future__ import annotations

import math
import time

import trio
import trio.testing

from trioflow._virtual_time import hold_still, let_jump, threads_finished, threads_under


def test_thread_calls_leave_a_held_clock_still_and_are_waited_for() -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def main() -> None:
        hold_still(clock)
        start = trio.current_time()
        finished = []

        async def in_thread() -> None:
            with threads_under(clock):
                await trio.to_thread.run_sync(time.sleep, 0.05)
            finished.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(in_thread)
            await trio.testing.wait_all_tasks_blocked()
            assert not finished  # blocked to trio, working in its thread
            assert await threads_finished(clock)
            await trio.testing.wait_all_tasks_blocked()
            assert finished == [start]  # 50 ms of real time, none of virtual time
        assert not await threads_finished(clock)  # (none in flight: returns at once)
        assert (clock.rate, clock.autojump_threshold) == (0.0, math.inf)

    trio.run(main, clock=clock)


def test_letting_a_held_clock_jump_during_a_thread_call_applies_once_it_is_over() -> None:
    clock = trio.testing.MockClock()

    async def main() -> None:
        hold_still(clock)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            async def in_thread() -> None:
                with threads_under(clock):
                    await trio.to_thread.run_sync(time.sleep, 0.02)

            nursery.start_soon(in_thread)
            await trio.testing.wait_all_tasks_blocked()
            let_jump(clock)
            # Meanwhile still and no jump: a deadline must not leap ahead of the thread.
            assert (clock.rate, clock.autojump_threshold) == (0.0, math.inf)
        assert trio.current_time() == start
        assert (clock.rate, clock.autojump_threshold) == (0.0, 0)
        await trio.sleep(3_600)  # autojumps again
        assert trio.current_time() == start + 3_600
        # Thread calls on it now stop its jumps, and still move no time.
        with threads_under(clock):
            assert (clock.rate, clock.autojump_threshold) == (0.0, math.inf)
            await trio.to_thread.run_sync(time.sleep, 0.01)
        assert trio.current_time() == start + 3_600

    trio.run(main, clock=clock)
