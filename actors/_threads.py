"""Worker threads for plain ``def`` jobs, with capacity that abandoned threads give back.

A thread cannot be interrupted: when a step's timeout or a cancel abandons a blocking job, its
thread runs on until the job returns. With trio's default limiter that thread keeps its token
meanwhile, so forty stuck jobs would leave no thread for any other job. Here an abandoned call
gives its token back at once: the capacity bounds the jobs the engine is *waiting on*, and a
stuck thread costs only itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from trioflow._virtual_time import waiting_on_a_thread

#: Jobs the engine waits on in threads at once (trio's default thread limit).
DEFAULT_THREADS = 40


class ThreadSlots:
    """The thread capacity of one engine (or one ``execute_workflow`` call)."""

    __slots__ = ("_total", "_limiter")

    def __init__(self, total: int = DEFAULT_THREADS) -> None:
        self._total = total
        # Made on first use: most runs never call a plain ``def`` job.
        self._limiter: trio.CapacityLimiter | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker thread; a cancellation abandons the thread and frees its slot."""
        if self._limiter is None:
            self._limiter = trio.CapacityLimiter(self._total)
        slot = _Slot(self._limiter)
        with waiting_on_a_thread():
            try:
                # trio takes any object with CapacityLimiter's acquire/release_on_behalf_of methods.
                return await trio.to_thread.run_sync(
                    fn, *args, abandon_on_cancel=True, limiter=slot)  # type: ignore[arg-type]
            except trio.Cancelled:
                slot.give_back()
                raise


class _Slot:
    """One call's hold on the shared limiter, releasable by whichever comes first: the
    abandoning task, or trio once the thread really ends."""

    __slots__ = ("_limiter", "_held")

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self._limiter = limiter
        self._held = False

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        await self._limiter.acquire_on_behalf_of(self)
        self._held = True

    def release_on_behalf_of(self, borrower: object) -> None:
        self.give_back()

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._limiter.release_on_behalf_of(self)
