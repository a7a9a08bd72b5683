"""Issue 11: reproductions of lost, doubled, orphaned and stuck work, each fixed (SPEC §6, §9)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import attrs
import trio
import trio.testing

import trioflow as tf


class Boom(Exception):
    pass


@attrs.define
class Release:
    """A compensation that is an unhashable callable object (attrs classes with eq are)."""

    calls: list[str]

    async def __call__(self, output: Any) -> None:
        self.calls.append(f"release {output}")


async def test_an_unhashable_compensation_callable_is_compensated_like_any_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[str] = []

    async def ok(data: Any) -> str:
        return "ok"

    async def fails(data: Any) -> None:
        raise Boom("no")

    wf = (tf.workflow("w").task("a", job=ok, compensate=Release(calls)).task("b", job=ok, compensate=Release(calls))
          .task("c", job=fails).build())
    result = await tf.execute_workflow(None, wf)
    assert result.compensated_steps == ("b", "a") and calls == ["release ok", "release ok"]
    assert result.compensation_errors == {}


async def test_a_retry_on_predicate_that_raises_in_compensation_fails_only_that_compensation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[str] = []

    def bad_predicate(error: BaseException) -> bool:
        raise RuntimeError("predicate broke")

    async def ok(data: Any) -> str:
        return "ok"

    async def undo_a(output: Any) -> None:
        calls.append("undo-a")

    async def undo_b(output: Any) -> None:
        calls.append("undo-b")
        raise Boom("undo-b failed")

    async def fails(data: Any) -> None:
        raise Boom("no")

    wf = (tf.workflow("w").task("a", job=ok, compensate=undo_a)
          .task("b", job=ok, compensate=undo_b, retry=tf.Retry(max_attempts=3, retry_on=bad_predicate))
          .task("c", job=fails).build())
    async with tf.open_engine() as engine:
        engine.register(wf)
        inst = await engine.wait(await engine.start("w"))
    assert inst.status == "failed" and "Boom: no" in (inst.error or "")
    assert calls == ["undo-b", "undo-a"], "the compensation after the broken one still runs"
    assert inst.compensated_steps == ("a",)
    assert "predicate broke" in inst.compensation_errors["b"]


@attrs.define(weakref_slot=True)
class Payload:
    data: bytearray


async def test_step_callables_are_not_kept_alive_by_the_engine(autojump_clock: trio.testing.MockClock) -> None:
    """Per-request workflows with closures: once a run is over, nothing of trioflow holds them."""
    refs: list[weakref.ref[Any]] = []
    for i in range(50):
        payload = Payload(bytearray(256 * 1024))

        async def handler(ctx: Any, payload: Payload = payload) -> int:
            return len(payload.data)

        refs.append(weakref.ref(payload))
        wf = tf.workflow(f"request-{i}").step("s", handler).build()
        assert (await tf.execute_workflow(None, wf)).output == 256 * 1024
        del handler, wf, payload
    gc.collect()
    assert sum(r() is not None for r in refs) == 0
