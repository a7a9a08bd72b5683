"""Runs of one async function under each of several seeds of trio's scheduler, so that the order
in which tasks due in one virtual instant run is reproducible (tests of what happens when an
engine closes in the same instant as something else)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from trio._core import _run as trio_run


def seeded_runs(fn: Any, *args: Any, seeds: range) -> list[tuple[int, Any]]:
    """``(seed, fn(*args))`` for each seed, each in a fresh trio run on an autojumping
    MockClock (trio's own scheduler state restored after)."""
    saved = trio_run._r.getstate()
    out: list[tuple[int, Any]] = []
    try:
        for seed in seeds:
            trio_run._r.seed(seed)
            out.append((seed, trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))))
    finally:
        trio_run._r.setstate(saved)
    return out
