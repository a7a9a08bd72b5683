"""A time-skipping test engine: trio's MockClock with autojump, a MemoryAdapter, jobs inline."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar, TypeVarTuple, Unpack

import trio
import trio.testing

from trioflow._engine import Engine, open_engine
from trioflow._engine_arguments import nearest, refuses_unbound_arguments
from trioflow._errors import InvalidArgumentError, TrioflowError
from trioflow._retry import seed_jitter
from trioflow._virtual_time import held
from trioflow.adapters._memory import MemoryAdapter

T = TypeVar("T")
P = ParamSpec("P")
Ts = TypeVarTuple("Ts")


def _typed_as_options_of(source: Callable[P, object]) -> Callable[[Callable[..., T]], Callable[P, T]]:
    """Give the decorated function ``source``'s parameters, for type checkers only: it passes
    its keyword options on to ``source``, and a misspelt one is then an error where it is
    written rather than a ``**kwargs`` that takes anything."""
    def typed(function: Callable[..., T]) -> Callable[P, T]:
        return function
    return typed


class NotOnMockClockError(TrioflowError, RuntimeError):
    """``open_test_engine`` was used in a trio run whose clock is not a ``MockClock``."""


def autojumping(who: str, *, required: bool = True) -> None:
    """Make the current trio run's ``MockClock`` jump to the next deadline as soon as every
    task waits (one that never jumps would hang for ever); on any other clock,
    :class:`NotOnMockClockError` naming ``who`` (``required``), or nothing: its waits then take
    the real time they say."""
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, trio.testing.MockClock):
        if not required:
            return
        raise NotOnMockClockError(
            f"{who} needs trio's MockClock: run the test with trioflow.testing.run(), the "
            "trioflow_engine fixture, or pytest-trio's autojump_clock fixture (under hypothesis's "
            "@given, which refuses both fixtures, a plain def test that calls trioflow.testing.run())"
        )
    if not held(clock):  # (an engine portal's moves only when told)
        clock.autojump_threshold = 0


def refuse_unknown_options(options: dict[str, Any], who: str, own: Sequence[str] = ()) -> None:
    """:class:`InvalidArgumentError` naming ``who`` and every key of ``options`` that is not one
    of ``open_engine``'s (nor of ``own``, the caller's own keywords, which a misspelt key may
    be nearest). (They are passed on to it: a misspelt one would otherwise fail there with a
    bare ``TypeError``, and a type checker cannot see it through ``**options``.)"""
    known = list(inspect.signature(open_engine).parameters)
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = f"{', '.join(own)} and open_engine's" if own else "open_engine's"
        raise InvalidArgumentError(
            f"{who}: no option {', '.join(map(repr, unknown))}; it takes {takes}: {', '.join(known)}"
            + "".join(f"; did you mean {near}= for {key!r}?" for key in unknown
                      if (near := nearest(key, [*own, *known]))))


@refuses_unbound_arguments
@_typed_as_options_of(open_engine)
@asynccontextmanager
async def open_test_engine(**engine_options: Any) -> AsyncIterator[Engine]:
    """An engine for tests: sleeps, retries and timeouts of hours take no real time.

    Must run on trio's ``MockClock`` (use :func:`run`, the ``trioflow_engine`` pytest fixture,
    or pytest-trio's ``autojump_clock``); its autojump threshold is set to 0. Defaults: a fresh
    ``MemoryAdapter``, plain ``def`` jobs called inline (in a worker thread they would let
    virtual time jump ahead while they run), and a wall clock on virtual time (durable timers
    of days take no real time), and retry jitter drawn from a generator seeded the same way each
    time one opens (two identical runs retry at the same virtual times). Other options are
    ``open_engine``'s.
    """
    refuse_unknown_options(engine_options, "open_test_engine")
    autojumping("open_test_engine")
    seed_jitter()
    engine_options.setdefault("adapter", MemoryAdapter())
    engine_options.setdefault("threads", False)

    async with open_engine(**engine_options) as engine:
        yield engine


@refuses_unbound_arguments
def run(async_fn: Callable[[Unpack[Ts]], Awaitable[T]], *args: Unpack[Ts]) -> T:
    """``trio.run`` on a ``MockClock(autojump_threshold=0)``: virtual time, real semantics. For
    synchronous code: inside a trio run, await ``async_fn`` (a test under the ``autojump_clock``
    fixture runs on such a clock already)."""
    if trio.lowlevel.in_trio_run():
        raise InvalidArgumentError(
            "trioflow.testing.run() starts a trio run of its own, for synchronous code: in a trio run,"
            " await the function instead (pytest-trio's autojump_clock fixture gives the same clock)")
    return trio.run(async_fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))
