"""Virtual time while the trio side waits on threads (trio's ``MockClock``, in tests).

A task parked on a worker thread looks idle to trio, so an autojumping ``MockClock`` would leap
to the next deadline while the thread works. Whoever waits on a thread (jobs in threads, the
SQLite adapter's writer) brackets the wait with :func:`real_time_while_threads`.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import trio

from ._errors import InvalidArgumentError

if TYPE_CHECKING:
    from trio.testing import MockClock


def mock_clock() -> MockClock | None:
    """The run's clock if it is trio's ``MockClock`` (a test), else ``None``."""
    # A MockClock can only exist once ``trio.testing`` is imported: production runs never pay
    # for importing it, nor for an isinstance check against it.
    testing = sys.modules.get("trio.testing")
    if testing is None:
        return None
    mock: type[MockClock] = testing.MockClock
    clock = trio.lowlevel.current_clock()
    return clock if isinstance(clock, mock) else None


#: For each MockClock: thread calls in flight, and the settings to restore when none are left.
_paused: weakref.WeakKeyDictionary[MockClock, tuple[int, float, float]] = weakref.WeakKeyDictionary()


def real_time_while_threads(clock: MockClock, change: int) -> None:
    """Under a MockClock (tests), a thread's work takes real time that the trio side cannot see:
    an autojumping clock would leap to the next deadline (a 600 s workflow timeout would fire
    while a job works for 0.5 s, or while the SQLite adapter's writer commits). While any thread
    call is in flight (``change=+1`` when one starts, ``-1`` when it is over), virtual time runs
    at real speed and does not jump; the clock's own settings come back when the last one ends.
    Shared by every user of threads in the run, so that their settings are saved only once."""
    count, rate, threshold = _paused.get(clock, (0, clock.rate, clock.autojump_threshold))
    count += change
    if count == 0:
        del _paused[clock]
        clock.rate, clock.autojump_threshold = rate, threshold
        return
    if count == 1 and change > 0:
        clock.rate, clock.autojump_threshold = 1.0, math.inf
    _paused[clock] = (count, rate, threshold)


def waiting_on_a_thread() -> contextlib.AbstractContextManager[None]:
    """Around an await of a worker thread's call: :func:`real_time_while_threads` under a
    MockClock, nothing otherwise."""
    return threads_under(mock_clock())


@contextlib.contextmanager
def threads_under(clock: MockClock | None) -> Iterator[None]:
    """:func:`waiting_on_a_thread` for a run whose clock was looked up once (``None``: not a
    MockClock)."""
    if clock is None:
        yield
        return
    real_time_while_threads(clock, +1)
    try:
        yield
    finally:
        real_time_while_threads(clock, -1)


def virtual_wall_clock() -> Callable[[], float]:
    """A wall clock (Unix seconds) that moves with the trio run's clock: under a ``MockClock``,
    durable timers of days fall due as soon as virtual time gets there. Starts at the real time
    when the run first asks, and is the same clock for everything in that run.
    ``open_engine`` uses one by default in a run on a ``MockClock``."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        raise InvalidArgumentError(
            "virtual_wall_clock() reads the clock of the trio run it is called in: call it inside"
            " trio.run (in the test, on its MockClock), not at module level") from None
    try:
        offset = _WALL_OFFSET.get()
    except LookupError:
        # One per trio run: every engine opened in it (a restart in a test) reads one clock.
        offset = time.time() - trio.current_time()
        _WALL_OFFSET.set(offset)
    return lambda: offset + trio.current_time()


_WALL_OFFSET: trio.lowlevel.RunVar[float] = trio.lowlevel.RunVar("trioflow_wall_offset")


def default_clock() -> Callable[[], float]:
    """The wall clock an engine or ``execute_workflow`` uses unless given one: ``time.time``,
    or, in a run on a ``MockClock`` (tests), :func:`virtual_wall_clock`."""
    return virtual_wall_clock() if mock_clock() is not None else time.time
