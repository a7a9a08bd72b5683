"""Scripted jobs: callables that follow a script ("fail twice with X, then return y") and record
every call, for tests of workflows and of trioflow itself."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Union

import attrs
import trio

from trioflow._errors import InvalidArgumentError, safe_repr


def _plays(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    """A behaviour plays at least once: refused as it is made, not as the job runs."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(
            f"{type(instance).__name__.lower()}(): a behaviour must play at least once, got times={safe_repr(value)}")


def _an_error(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not (isinstance(value, BaseException) or isinstance(value, type) and issubclass(value, BaseException)):
        hint = f" (a name: pass the class itself, {value})" if isinstance(value, str) else ""
        raise InvalidArgumentError(f"raises(): error must be an exception class or instance, got {safe_repr(value)}{hint}")


def _seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"sleeps(): seconds must be a finite number >= 0, got {safe_repr(value)}")


def _then(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, (Returns, Raises)):
        raise InvalidArgumentError(f"sleeps(): then must be made by returns() or raises(), got {safe_repr(value)}")


@attrs.frozen(kw_only=True)
class Returns:
    """Return ``value``."""

    value: Any = None
    times: int = attrs.field(default=1, validator=_plays)


@attrs.frozen(kw_only=True)
class Raises:
    """Raise ``error`` (an exception instance, or a class instantiated with ``message``)."""

    error: BaseException | type[BaseException] = attrs.field(validator=_an_error)
    message: str = "scripted failure"
    times: int = attrs.field(default=1, validator=_plays)

    def exception(self) -> BaseException:
        if isinstance(self.error, BaseException):
            return self.error
        return self.error(self.message)


@attrs.frozen(kw_only=True)
class Sleeps:
    """Sleep ``seconds`` on trio's clock, then behave as ``then``."""

    seconds: float = attrs.field(validator=_seconds)
    then: Returns | Raises = attrs.field(default=Returns(), validator=_then)
    times: int = attrs.field(default=1, validator=_plays)


@attrs.frozen(kw_only=True)
class Hangs:
    """Never return (until cancelled)."""

    times: int = attrs.field(default=1, validator=_plays)


Behaviour = Union[Returns, Raises, Sleeps, Hangs]


def returns(value: Any = None, *, times: int = 1) -> Returns:
    return Returns(value=value, times=times)


def raises(error: BaseException | type[BaseException], message: str = "scripted failure", *, times: int = 1) -> Raises:
    return Raises(error=error, message=message, times=times)


def sleeps(seconds: float, then: Returns | Raises = Returns(), *, times: int = 1) -> Sleeps:
    return Sleeps(seconds=seconds, then=then, times=times)


def hangs(*, times: int = 1) -> Hangs:
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

    def __init__(self, *behaviours: Behaviour, name: str = "scripted") -> None:
        if not behaviours:
            behaviours = (Returns(),)
        for b in behaviours:
            if not isinstance(b, (Returns, Raises, Sleeps, Hangs)):
                raise InvalidArgumentError(
                    f"{name}: each behaviour is made by returns(), raises(), sleeps() or hangs(), got {b!r}"
                    f" (for a job returning it: returns({b!r}))")
        self.behaviours: Sequence[Behaviour] = behaviours
        self.name = name
        self.calls: list[Call] = []

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
    return b.value
