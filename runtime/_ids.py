"""Instance ids (time-ordered, with random bits read ahead in blocks) and creation times (one
per instance made in this process)."""

from __future__ import annotations

import math
import os
import time

#: Ids' random parts (20 hex digits each) read ahead: one system call per block of ids
#: rather than one per id, which showed in the cost of a start.
_BLOCK = 256
_random_parts: list[str] = []


def _forget_random_parts() -> None:
    # A forked child must not hand out the ids its parent will: it reads its own.
    _random_parts.clear()


os.register_at_fork(after_in_child=_forget_random_parts)


def new_instance_id() -> str:
    """A 128-bit id in hex whose first 48 bits are the creation time in milliseconds, the rest
    random from the OS's generator (the layout of a UUIDv7): ids made one after another sort
    together, so storage indexes keyed by them grow at one end instead of being written all
    over."""
    if not _random_parts:
        block = os.urandom(10 * _BLOCK).hex()
        _random_parts.extend(block[i:i + 20] for i in range(0, len(block), 20))
    return f"{int(time.time() * 1000) & 0xFFFF_FFFF_FFFF:012x}{_random_parts.pop()}"


_last_creation = -math.inf


def creation_time(now: float) -> float:
    """``now`` as an instance's creation time: later than the one this process gave before, by
    the least a float can be, where the clock has not moved since (a test's virtual clock stands
    still between sleeps; another clock, a second behind or more, is taken as it is). With its
    id, it tells an instance from an earlier one of that id (deleted, then started again),
    whose records kept outside the instance (an entity step's, in the driver's run ledger) must
    not be taken for its own."""
    global _last_creation
    if now > _last_creation or _last_creation - now > 1.0:
        _last_creation = now
    else:
        _last_creation = math.nextafter(_last_creation, math.inf)
    return _last_creation
