"""Scripted jobs: callables that follow a script ("fail twice with X, then return y") and record
every call, for tests of workflows and of trioflow itself."""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from typing import Any, Union

import attrs
import trio

from trioflow._durations import Seconds, virtual_seconds
from trioflow._engine_arguments import refuses_unbound_arguments
from trioflow._errors import InvalidArgumentError, safe_repr


# Each behaviour refuses, as it is made, what it could not play: the mistake would otherwise
# fail the step under test with a bare error, as if the workflow were wrong.


def _whole(value: Any) -> Any:
    """A count as an ``int`` (numpy's integers too); anything else as it is, for :func:`_plays`."""
    try:
        return value if isinstance(value, bool) else operator.index(value)
    except TypeError:
        return value


def _plays(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    """A behaviour plays a whole number of times, at least once."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(
            f"{type(instance).__name__.lower()}(): a behaviour must play at least once: times must be a whole number"
            f" >= 1, got {safe_repr(value)}")


def _copyable(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A value each call can get a fresh deep copy of (a lock cannot be copied: every call
    would fail the step under test with a bare ``TypeError``)."""
    try:
        copy.deepcopy(value)
    except Exception as exc:
        raise InvalidArgumentError(
            f"returns(): each call returns a fresh deep copy of the value, and {safe_repr(value)} cannot be copied"
            f" ({type(exc).__name__}: {exc})") from None


def _an_error(instance: Raises, attribute: attrs.Attribute[Any], value: object) -> None:
    """An exception instance, or a class that can be made from the message (as it is played)."""
    if isinstance(value, BaseException):
        value = type(value)
    if not (isinstance(value, type) and issubclass(value, BaseException)):
        hint = f" (a name: pass the class itself, {value})" if isinstance(value, str) else ""
        raise InvalidArgumentError(f"raises(): error must be an exception class or instance, got {safe_repr(value)}{hint}")
    if issubclass(value, StopIteration):
        # (Raised inside an ``async def``, Python turns it into a RuntimeError: the step would
        # fail with that, not with what the script says.)
        raise InvalidArgumentError(
            f"raises(): {value.__name__} cannot be played: Python turns it into RuntimeError when a coroutine raises"
            " it, as a real async job's would be")
    if isinstance(instance.error, BaseException):
        return
    try:
        value(instance.message)
    except Exception as exc:
        raise InvalidArgumentError(
            f"raises(): {value.__name__}({instance.message!r}) cannot be made ({type(exc).__name__}: {exc});"
            " pass an instance of it") from None


def _sleep_seconds(value: Seconds) -> float:
    return virtual_seconds(value, "sleeps")


def _then(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, (Returns, Raises, Sleeps, Hangs)):
        raise InvalidArgumentError(
            f"sleeps(): then must be made by returns(), raises(), sleeps() or hangs(), got {safe_repr(value)}")


@attrs.frozen(kw_only=True)
class Returns:
    """Return ``value``."""

    value: Any = attrs.field(default=None, validator=_copyable)
    times: int = attrs.field(default=1, converter=_whole, validator=_plays)


@attrs.frozen(kw_only=True)
class Raises:
    """Raise ``error`` (an exception instance, or a class instantiated with ``message``)."""

    error: BaseException | type[BaseException] = attrs.field(validator=_an_error)
    message: str = "scripted failure"
    times: int = attrs.field(default=1, converter=_whole, validator=_plays)

    def exception(self) -> BaseException:
        if isinstance(self.error, BaseException):
            return self.error
        return self.error(self.message)


@attrs.frozen(kw_only=True)
class Sleeps:
    """Sleep ``seconds`` on trio's clock, then behave as ``then``."""

    seconds: float = attrs.field(converter=_sleep_seconds)
    then: Behaviour = attrs.field(default=Returns(), validator=_then)
    times: int = attrs.field(default=1, converter=_whole, validator=_plays)


@attrs.frozen(kw_only=True)
class Hangs:
    """Never return (until cancelled)."""

    times: int = attrs.field(default=1, converter=_whole, validator=_plays)


Behaviour = Union[Returns, Raises, Sleeps, Hangs]


@refuses_unbound_arguments
def returns(value: Any = None, *, times: int = 1) -> Returns:
    """Return a fresh deep copy of ``value``, for ``times`` calls."""
    return Returns(value=value, times=times)


@refuses_unbound_arguments
def raises(error: BaseException | type[BaseException], message: str = "scripted failure", *, times: int = 1) -> Raises:
    """Raise ``error`` (a class is raised with ``message``), for ``times`` calls."""
    return Raises(error=error, message=message, times=times)


@refuses_unbound_arguments
def sleeps(seconds: Seconds, then: Behaviour = Returns(), *, times: int = 1) -> Sleeps:
    """Sleep ``seconds`` (virtual ones, on the test clock; a number or a ``timedelta``), then
    play ``then``, for ``times`` calls."""
    return Sleeps(seconds=seconds, then=then, times=times)


@refuses_unbound_arguments
def hangs(*, times: int = 1) -> Hangs:
    """Wait until cancelled (a step timeout, a cancel), for ``times`` calls."""
    return Hangs(times=times)


@attrs.frozen(kw_only=True)
class Call:
    """One call of a scripted job: its arguments, the trio time it started, its 1-based number."""

    args: tuple[Any, ...]
    time: float
    number: int


class ScriptedJob:
    """An async job that plays ``behaviours`` in order, each ``times`` times; the last one
    repeats forever. Every call is recorded in :attr:`calls`.

    >>> flaky = ScriptedJob(raises(ConnectionError, times=2), returns({"ok": True}))
    """

    @refuses_unbound_arguments
    def __init__(self, *behaviours: Behaviour, name: str = "scripted") -> None:
        if not behaviours:
            behaviours = (Returns(),)
        self.name = name  # (first: a traceback shows the object's repr even when it is refused)
        self.behaviours: Sequence[Behaviour] = behaviours
        self.calls: list[Call] = []
        for b in behaviours:
            if not isinstance(b, (Returns, Raises, Sleeps, Hangs)):
                if isinstance(b, (list, tuple)) and b and all(isinstance(e, (Returns, Raises, Sleeps, Hangs)) for e in b):
                    hint = "unpack them: ScriptedJob(*behaviours)"  # (as job_behaviours() draws them)
                else:
                    hint = f"for a job returning it: returns({b!r})"
                raise InvalidArgumentError(
                    f"ScriptedJob {name!r}: each behaviour is made by returns(), raises(), sleeps() or hangs(),"
                    f" got {b!r} ({hint})")

    def reset(self) -> None:
        """Forget every call: the script starts over."""
        self.calls = []

    def behaviour(self, number: int) -> Behaviour:
        """The behaviour of call ``number`` (1-based)."""
        remaining = number
        for b in self.behaviours:
            if remaining <= b.times:
                return b
            remaining -= b.times
        return self.behaviours[-1]

    async def __call__(self, *args: Any) -> Any:
        return await self.play(len(self.calls) + 1, *args)

    async def play(self, number: int, *args: Any) -> Any:
        """Be called as call ``number`` of the script (the crash explorer replays the behaviour
        an attempt got before a crash when the same attempt runs again after the resume)."""
        self.calls.append(Call(args=args, time=trio.current_time(), number=number))
        return await _play(self.behaviour(number))

    def __repr__(self) -> str:
        return f"ScriptedJob({self.name!r}, {list(self.behaviours)!r})"


async def _play(b: Behaviour) -> Any:
    if isinstance(b, Hangs):
        await trio.sleep_forever()
    if isinstance(b, Sleeps):
        await trio.sleep(b.seconds)
        return await _play(b.then)
    if isinstance(b, Raises):
        raise b.exception()
    assert isinstance(b, Returns)
    # A fresh value each call, as a real service answers: a step that changes its result in
    # place must not change the script (nor what a later call, or run, returns).
    return copy.deepcopy(b.value)
