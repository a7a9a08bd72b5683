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

from ._engine_arguments import refuses_unbound_arguments
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
#: Clocks whose virtual time never flows by itself (an engine portal's): a thread call stops
#: their jumps, and leaves their rate at 0.
_still: weakref.WeakSet[MockClock] = weakref.WeakSet()
#: For each MockClock with thread calls in flight that someone waits to see end: the event.
_idle: weakref.WeakKeyDictionary[MockClock, trio.Event] = weakref.WeakKeyDictionary()


def real_time_while_threads(clock: MockClock, change: int) -> None:
    """Under a MockClock (tests), a thread's work takes real time that the trio side cannot see:
    an autojumping clock would leap to the next deadline (a 600 s workflow timeout would fire
    while a job works for 0.5 s, or while the SQLite adapter's writer commits). While any thread
    call is in flight (``change=+1`` when one starts, ``-1`` when it is over), virtual time runs
    at real speed and does not jump; the clock's own settings come back when the last one ends.
    Shared by every user of threads in the run, so that their settings are saved only once.
    A clock held still (:func:`hold_still`) does not jump either, and stays still."""
    count, rate, threshold = _paused.get(clock, (0, clock.rate, clock.autojump_threshold))
    count += change
    if count == 0:
        del _paused[clock]
        clock.rate, clock.autojump_threshold = rate, threshold
        idle = _idle.pop(clock, None)
        if idle is not None:
            idle.set()
        return
    if count == 1 and change > 0:
        clock.rate, clock.autojump_threshold = (rate if clock in _still else 1.0), math.inf
    _paused[clock] = (count, rate, threshold)


def _apply(clock: MockClock, rate: float, autojump_threshold: float) -> None:
    """Set ``clock``'s settings; while thread calls are in flight, those they restore."""
    entry = _paused.get(clock)
    if entry is None:
        clock.rate, clock.autojump_threshold = rate, autojump_threshold
    else:
        _paused[clock] = (entry[0], rate, autojump_threshold)


def hold_still(clock: MockClock) -> None:
    """From now on ``clock`` moves only when told (rate 0, no autojump), thread calls or not:
    an engine portal's, whose virtual time stands still between its calls and while a call's
    SQLite writes commit (the engine runs no jobs in threads, whose timeouts would need it)."""
    _still.add(clock)
    clock.rate = 0.0
    _apply(clock, 0.0, math.inf)


def held(clock: MockClock) -> bool:
    """Whether ``clock`` is held still (:func:`hold_still`)."""
    return clock in _still


def let_jump(clock: MockClock) -> None:
    """Let a clock held still jump to the next deadline as soon as every task waits (an engine
    portal's engine closing: hooks and callbacks that sleep finish), once no thread call is in
    flight; its time still does not flow while one is."""
    _apply(clock, 0.0, 0.0)


async def threads_finished(clock: MockClock) -> bool:
    """Wait until no thread call bracketed by :func:`threads_under` is in flight in ``clock``'s
    run (a task parked on one looks blocked to trio: see ``engine_portal``); whether one was."""
    if clock not in _paused:
        return False
    idle = _idle.get(clock)
    if idle is None:
        idle = _idle[clock] = trio.Event()
    await idle.wait()
    return True


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


@refuses_unbound_arguments
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
