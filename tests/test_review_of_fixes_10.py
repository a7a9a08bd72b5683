"""Durations a float cannot hold, from a fourth review of this session's fixes (each failed before
its fix): a delay or start_at past about 1e308 is an InvalidArgumentError, a step timeout that
large is refused at build(), and a large finite older_than purges nothing rather than refuse."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


async def ok(data: Any) -> Any:
    return data


def register(engine: tf.Engine) -> None:
    engine.register(tf.workflow("ok").task("a", job=ok).build())


@pytest.mark.parametrize("kw", [{"delay": 10**400}, {"start_at": 10**400}])
async def test_start_with_huge_int_delay_is_invalid_argument(autojump_clock: trio.testing.MockClock, kw: Any) -> None:
    async with open_test_engine() as engine:
        register(engine)
        with pytest.raises(tf.InvalidArgumentError):
            await engine.start("ok", **kw)


async def test_step_timeout_huge_int_is_refused_not_a_step_overflow(autojump_clock: trio.testing.MockClock) -> None:
    """A step timeout too large for a float is accepted by build(); the step then fails at run
    time with OverflowError instead of the definition being refused (or the timeout meaning never)."""
    try:
        definition = tf.workflow("w").task("a", job=ok, timeout=10**400).build()
    except tf.DefinitionError:
        return  # refused at build(), naming the step: what bad definitions get
    async with open_test_engine() as engine:
        engine.register(definition)
        done = await engine.wait(await engine.start("w", 1))
        assert done.status == "completed", done.error


async def test_purge_older_than_large_finite_float(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine() as engine:
        register(engine)
        await engine.wait(await engine.start("ok"))
        assert await engine.purge(older_than=sys.float_info.max) == 0
