"""A caller of ``wait()`` holds the wait's own coroutine and nothing more while it waits: every
instance in flight usually has one, and a frame more each (the argument check's wrapper, as
fd148ba had it) is an object more for the cyclic collector, which cost engine + MemoryAdapter a
tenth of its throughput (``bench/run.py --cases bare_trio,engine_memory``: 0.297 of bare trio
with it, 0.338 without). Its arguments are still checked (tests/test_engine_calls_refuse_bad_arguments.py)."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


async def _hold(ctx: Any) -> None:
    await trio.sleep(10)


async def test_wait_hands_back_its_own_coroutine(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine() as engine:
        engine.register(tf.workflow("w").step("a", _hold).build())
        iid = await engine.start("w")
        waiting = engine.wait(iid)
        assert inspect.iscoroutine(waiting) and waiting.cr_code.co_name == "wait", waiting.cr_code.co_name
        assert (await waiting).status == "completed"


def test_wait_is_a_coroutine_function_to_inspect_where_it_can_be_marked_so() -> None:
    """(``inspect.markcoroutinefunction`` is new in Python 3.12: on 3.11 the wrapper, a plain
    function handing back the coroutine, is not one; its result is awaited all the same.)"""
    assert inspect.iscoroutinefunction(tf.Engine.wait) is (sys.version_info >= (3, 12))
