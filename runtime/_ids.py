"""Instance ids (time-ordered, with random bits read ahead in blocks) and creation times."""

from __future__ import annotations

import math
import os
import time

import trio

#: Ids' random parts (20 hex digits each) read ahead: one system call per block of ids
#: rather than one per id, which showed in the cost of a start.
_BLOCK = 256
_random_parts: list[str] = []
#: A random byte with its high half made the version's (7), and with its two high bits made
#: the variant's (``10``): tables for ``bytes.translate``.
_VERSION_7 = bytes(0x70 | (b & 0x0F) for b in range(256))
_VARIANT = bytes(0x80 | (b & 0x3F) for b in range(256))


def _forget_random_parts() -> None:
    # A forked child must not hand out the ids its parent will: it reads its own.
    _random_parts.clear()


os.register_at_fork(after_in_child=_forget_random_parts)


def new_instance_id() -> str:
    """A UUIDv7 (RFC 9562) as 32 hex digits: the creation time in milliseconds in its first 48
    bits, then its version and variant bits, the rest random from the OS's generator. Ids made
    one after another sort together, so storage indexes keyed by them grow at one end instead
    of being written all over; ``uuid.UUID(id)`` reads it as version 7."""
    if not _random_parts:
        block = bytearray(os.urandom(10 * _BLOCK))
        # In each id's 10 random bytes: version 7 in the first one's high half, and the
        # variant's two high bits (``10``) in the third one's (byte by byte through a table, in
        # C: a generator over the block cost three Python calls per id).
        block[0::10] = block[0::10].translate(_VERSION_7)
        block[2::10] = block[2::10].translate(_VARIANT)
        digits = block.hex()
        _random_parts.extend(digits[i:i + 20] for i in range(0, len(digits), 20))
    return f"{int(time.time() * 1000) & 0xFFFF_FFFF_FFFF:012x}{_random_parts.pop()}"


class CreationTimes:
    """Instances' creation times, one run of trio's: each later than the one given before, by
    the least a float can be, where the clock has not moved since (a test's virtual clock stands
    still between sleeps; another clock, a second behind or more, is taken as it is). With its
    id, a creation time tells an instance from an earlier one of that id (deleted, then started
    again), whose records kept outside the instance (an entity step's, in the driver's run
    ledger) must not be taken for its own. (An instance's start and end are never earlier: see
    :func:`trioflow._decide.not_before_creation`.)

    One per trio run, shared by the engines opened in it (a restart in a test), as a test's
    virtual wall clock is: a run on a ``MockClock`` that went ahead of the wall clock must not
    push the times of the next run's instances past its own clock."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = -math.inf

    @staticmethod
    def of_this_run() -> CreationTimes:
        try:
            return _CREATION_TIMES.get()
        except LookupError:
            times = CreationTimes()
            _CREATION_TIMES.set(times)
            return times

    def stamp(self, now: float) -> float:
        """``now`` as the creation time of an instance made now."""
        last = self._last
        last = self._last = now if now > last or last - now > 1.0 else math.nextafter(last, math.inf)
        return last


_CREATION_TIMES: trio.lowlevel.RunVar[CreationTimes] = trio.lowlevel.RunVar("trioflow_creation_times")
