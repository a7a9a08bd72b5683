"""Helpers the tests of plain ``def`` jobs in worker threads share: threads block on
``threading.Event`` and are released by the test, so nothing depends on how long real work
takes (under the autojump ``MockClock`` virtual time runs at real speed while a thread job is
in flight)."""

from __future__ import annotations

from typing import Any

import trio

import trioflow as tf

#: A thread never waits longer than this for its event (a guard: no test can hang on a thread).
RELEASE_WAIT = 10


async def until(predicate: Any) -> None:
    """Let time move until ``predicate()`` holds (thread work takes real time)."""
    for _ in range(10_000):
        if predicate():
            return
        await trio.sleep(0.001)
    raise AssertionError("condition never held")


def note_current_step(seen: list[Any]) -> None:
    """Append the step ``tf.current_step()`` names, or ``"not in a step"``."""
    try:
        seen.append(tf.current_step().step_name)
    except tf.NotInStepError:
        seen.append("not in a step")
