"""A receive taken up again names the timeout its stored deadline came from, stored with its
wait (``within``): a wait stored before that (no ``since`` either) named ``-3005 s``, and on a
wall clock that moves, ``SignalTimeoutError.timeout`` read ``600.00000095`` after a restart, so a
catch predicate on ``error.timeout == 600`` stopped matching (the adversarial review of
c508bd6, December 5th)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing
import trioflow as tf
from trioflow._codec import _pack, _read
from trioflow.adapters import Adapter

from storages import engine_on, finish, storage  # noqa: F401


def _without_since(adapter: Adapter) -> Adapter:
    """``adapter`` as a release before 4f80ad3 wrote to it: a receive's wait holds no 'since'."""
    checkpoint = adapter.checkpoint

    async def old_checkpoint(instance_id: str, status: Any, header: bytes, records: Any, **kw: Any) -> Any:
        fields = _read(header)
        for entry in fields[8].values():
            if len(entry) > 3 and isinstance(entry[3], dict):
                entry[3].pop("since", None)
        return await checkpoint(instance_id, status, _pack(fields), records, **kw)

    adapter.checkpoint = old_checkpoint  # type: ignore[method-assign]
    return adapter


async def _charge(ctx: tf.WorkflowContext) -> str:
    return "ch"


async def test_receive_stored_without_since_names_its_timeout(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    wf = tf.workflow("approve").step("charge", _charge).receive("approval", signal="ok", timeout=600).build()
    adapter = _without_since(storage())
    async with engine_on(adapter) as engine:
        engine.register(wf)
        iid = await engine.start("approve", None)
        await trio.sleep(5)
    adapter.checkpoint = type(adapter).checkpoint.__get__(adapter)  # type: ignore[method-assign]
    await trio.sleep(3600)  # no engine runs past its deadline
    async with engine_on(storage()) as engine:
        engine.register(wf)
        done = await finish(engine, iid)
    assert (done.status, done.error_name) == ("failed", "SignalTimeoutError"), done.error
    assert "within 600 s" in (done.cause or ""), done.cause


async def test_receive_timeout_attribute_is_the_steps_after_a_restart(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """On a wall clock that moves while the step starts (any real one), the woken receive's
    SignalTimeoutError.timeout is 'due - since', a hair over the step's timeout: a catch predicate
    on it matches in memory and not after a restart."""
    from trioflow.testing import virtual_wall_clock
    base = virtual_wall_clock()
    ticks = [0]

    def clock() -> float:
        ticks[0] += 1
        return base() + ticks[0] * 1e-6

    seen: list[float] = []

    def is_ten_minutes(error: BaseException) -> bool:
        seen.append(getattr(error, "timeout", None))
        return isinstance(error, tf.SignalTimeoutError) and error.timeout == 600

    wf = (tf.workflow("approve").step("charge", _charge)
          .receive("approval", signal="ok", timeout=600, catch=tf.Catch(errors=[is_ten_minutes], next="late"))
          .pass_("late", result="late").build())
    async with engine_on(storage(), clock=clock) as engine:
        engine.register(wf)
        iid = await engine.start("approve", None)
        await trio.sleep(5)
    async with engine_on(storage(), clock=clock) as engine:
        engine.register(wf)
        done = await finish(engine, iid)
    assert done.status == "completed", (done.error, seen)
