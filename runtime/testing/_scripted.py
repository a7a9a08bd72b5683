"""Scripted jobs: callables that follow a script ("fail twice with X, then return y") and record
every call, for tests of workflows and of trioflow itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import attrs
import trio


@attrs.frozen(kw_only=True)
class Returns:
    """Return ``value``."""

    value: Any = None
    times: int = 1


@attrs.frozen(kw_only=True)
class Raises:
    """Raise ``error`` (an exception instance, or a class instantiated with ``message``)."""

    error: BaseException | type[BaseException]
    message: str = "scripted failure"
    times: int = 1

    def exception(self) -> BaseException:
        if isinstance(self.error, BaseException):
            return self.error
        return self.error(self.message)


@attrs.frozen(kw_only=True)
class Sleeps:
    """Sleep ``seconds`` on trio's clock, then behave as ``then``."""

    seconds: float
    then: Returns | Raises = Returns()
    times: int = 1


@attrs.frozen(kw_only=True)
class Hangs:
    """Never return (until cancelled)."""

    times: int = 1


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
                raise TypeError(
                    f"{name}: each behaviour is made by returns(), raises(), sleeps() or hangs(), got {b!r}"
                    f" (for a job returning it: returns({b!r}))")
            if b.times < 1:
                raise ValueError(f"{name}: a behaviour must play at least once, got times={b.times}")
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
