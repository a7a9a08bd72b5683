"""A test engine driven from synchronous code, for hypothesis's stateful tests.

``RuleBasedStateMachine`` rules are plain functions, and the machine runs no trio. The portal
runs a test engine in a trio run of its own, in a background thread, on a ``MockClock`` that
moves only when :meth:`EnginePortal.advance` says: between two rules nothing happens, and
every call returns once the engine has done all it can at that virtual instant, so a rule sees
the same outcome whatever the threads' timing.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import trio
import trio.testing

from trioflow._engine import Engine
from trioflow._errors import InvalidArgumentError, safe_repr

from ._engine import open_test_engine

T = TypeVar("T")


class EnginePortal:
    """A test engine in a trio run of its own (see :func:`engine_portal`)."""

    def __init__(self, token: trio.lowlevel.TrioToken, clock: trio.testing.MockClock, engine: Engine) -> None:
        self._token = token
        self._clock = clock
        self._engine = engine

    def call(self, fn: Callable[[Engine], Awaitable[T]]) -> T:
        """``await fn(engine)`` in the engine's trio run (``lambda e: e.start("order", data)``);
        its result, or the exception it raised. Returns once the engine has nothing left to do
        at this virtual instant (what the call started has run as far as it can without time
        moving on)."""
        return trio.from_thread.run(self._settled, fn, trio_token=self._token)

    def advance(self, seconds: float) -> None:
        """Move virtual time ``seconds`` on, from one deadline to the next, running all that
        falls due on the way in order (timers, retry delays, timeouts), each at its own time."""
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not math.isfinite(seconds) \
                or seconds < 0:
            raise InvalidArgumentError(f"advance(): seconds must be a finite number >= 0, got {safe_repr(seconds)}")
        trio.from_thread.run(self._advance, float(seconds), trio_token=self._token)

    @property
    def now(self) -> float:
        """The engine's virtual time (trio's clock), in seconds."""
        return trio.from_thread.run_sync(trio.current_time, trio_token=self._token)

    async def _settled(self, fn: Callable[[Engine], Awaitable[T]]) -> T:
        result = await fn(self._engine)
        await trio.testing.wait_all_tasks_blocked()
        return result

    async def _advance(self, seconds: float) -> None:
        remaining = seconds
        while True:
            await trio.testing.wait_all_tasks_blocked()
            if remaining <= 0:
                return
            # (Settled: nothing is due now, so the next deadline lies ahead, or nowhere.)
            step = min(trio.lowlevel.current_statistics().seconds_to_next_deadline, remaining)
            self._clock.jump(step)
            remaining -= step


@contextmanager
def engine_portal(**engine_options: Any) -> Iterator[EnginePortal]:
    """A test engine (``open_test_engine(**engine_options)``: a fresh ``MemoryAdapter`` and
    plain ``def`` jobs inline unless given) in a trio run of its own, in a background thread,
    driven through the :class:`EnginePortal` it gives; leaving the block closes the engine and
    ends the run (raising what the run raised). Virtual time stands still until
    :meth:`EnginePortal.advance` moves it. For synchronous test code: hypothesis's
    ``RuleBasedStateMachine``, whose rules are plain functions. Work that leaves the trio
    thread (a ``SQLiteAdapter``'s writes) is waited for by the calls that make it, not by the
    settling that follows them: give such a test a ``MemoryAdapter`` for determinism."""
    ready = threading.Event()
    handed: list[EnginePortal] = []
    failed: list[BaseException] = []
    stop: list[trio.Event] = []

    async def main() -> None:
        clock = trio.lowlevel.current_clock()
        assert isinstance(clock, trio.testing.MockClock)
        try:
            async with open_test_engine(**engine_options) as engine:
                clock.autojump_threshold = math.inf  # (open_test_engine makes it jump: time moves when told)
                stop.append(trio.Event())
                handed.append(EnginePortal(trio.lowlevel.current_trio_token(), clock, engine))
                ready.set()
                await stop[0].wait()
        finally:
            ready.set()  # (an engine that failed to open: the caller learns why below)

    def thread() -> None:
        try:
            trio.run(main, clock=trio.testing.MockClock())
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)
            ready.set()

    runner = threading.Thread(target=thread, name="trioflow engine portal", daemon=True)
    runner.start()
    ready.wait()
    if not handed:
        runner.join()
        raise failed[0] if failed else RuntimeError("engine_portal: the engine's trio run ended before it opened")
    try:
        yield handed[0]
    finally:
        trio.from_thread.run_sync(stop[0].set, trio_token=handed[0]._token)
        runner.join()
        if failed:
            raise failed[0]
