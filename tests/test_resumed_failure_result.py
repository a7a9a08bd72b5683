"""The ``on_failed`` hook of an instance whose failure was recorded before a restart gets a
``WorkflowResult`` whose ``error`` is a :class:`trioflow.RecordedError` (exported, with the
recorded ``error_name`` and ``cause``), not a class of the actors' own that nobody could
import or catch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import SQLiteAdapter
from trioflow.testing import virtual_wall_clock


class CardDeclined(Exception):
    pass


async def test_a_resumed_failure_reaches_on_failed_as_a_recorded_error(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    seen: list[tf.WorkflowResult] = []
    first_engine = [True]

    async def reserve(ctx: Any) -> str:
        return "r1"

    async def release(ctx: Any, result: Any) -> None:
        if first_engine[0]:
            await trio.sleep_forever()  # the engine closes while the compensation runs

    async def charge(ctx: Any) -> None:
        raise CardDeclined("card declined")

    async def on_failed(result: tf.WorkflowResult) -> None:
        seen.append(result)

    wf = (tf.workflow("checkout").step("reserve", reserve, release).step("charge", charge)
          .with_hooks(on_failed=on_failed).build())
    clock = virtual_wall_clock()
    async with tf.open_engine(adapter=SQLiteAdapter(tmp_path / "c.db"), clock=clock) as engine:
        engine.register(wf)
        iid = await engine.start("checkout")
        await trio.sleep(10)  # failed at charge, compensating reserve
    first_engine[0] = False
    async with tf.open_engine(adapter=SQLiteAdapter(tmp_path / "c.db"), clock=clock) as engine:
        engine.register(wf)
        done = await engine.wait(iid)
        await trio.sleep(1)
    assert (done.status, done.error_name, done.cause) == ("failed", "CardDeclined", "card declined")
    assert len(seen) == 1
    error = seen[0].error
    assert isinstance(error, tf.RecordedError), repr(error)
    assert (error.error_name, error.cause) == ("CardDeclined", "card declined")
    assert str(error) == "CardDeclined: card declined"
