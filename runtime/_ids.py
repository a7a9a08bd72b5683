"""Instance ids: time-ordered, with random bits read ahead in blocks."""

from __future__ import annotations

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
