"""From a sixth review of what grows with what it should not (reviewer "count6",
/tmp/count6/tests/test_review_count6.py, finding 1): the header bytes that undoing a long saga
writes. Counted, never timed: header bytes a real MemoryAdapter is handed by ``checkpoint``,
compared between a small and a large saga. Time is trio's MockClock (pytest-trio's
``autojump_clock``)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf


class _CountingMemory(tf.adapters.MemoryAdapter):
    """The real MemoryAdapter, counting the header bytes it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[int] = []

    def reset(self) -> None:
        self.headers = []

    async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Any, **kw: Any) -> Any:
        self.headers.append(len(header))
        return await super().checkpoint(instance_id, status, header, records, **kw)


async def _noop(ctx: tf.WorkflowContext) -> int:
    return 1


async def _release(ctx: tf.WorkflowContext, result: Any) -> None:
    pass


async def _declined(ctx: tf.WorkflowContext) -> None:
    raise PermissionError("card declined")


# -- 1. the header a compensation writes grows with the steps it has undone ------------------------


def _long_saga(steps: int) -> tf.WorkflowDefinition:
    builder = tf.workflow("provision")
    for k in range(steps):
        builder = builder.step(f"resource-{k}", _noop, _release)
    return builder.step("activate", _declined).build()


async def _compensation_header_bytes(steps: int) -> tuple[float, int]:
    adapter = _CountingMemory()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(_long_saga(steps))
        iid = await engine.start("provision", {})
        adapter.reset()
        done = await engine.wait(iid)
        assert done.status == "failed" and len(done.compensated_steps) == steps
        return sum(adapter.headers) / steps, max(adapter.headers)


async def test_undoing_a_long_saga_writes_header_bytes_per_compensation_that_grow_with_the_steps_undone(
        autojump_clock: trio.testing.MockClock) -> None:
    """A provisioning saga creates one resource per step (a 300-step run is what SPEC's
    "per-step cost, 1,000-step vs 3-step linear workflow <= 1.5x" target is about), then its
    last step fails and every resource is released, newest first. SPEC §10: a checkpoint writes
    "the header and the new records"; "the bytes written per step do not grow with the number
    of steps already run"; §11: "Compensation is per execution". The user expects each
    compensation's checkpoint to cost what one step's does, at the 300th as at the first.

    Actual (MemoryAdapter, header bytes handed to ``checkpoint`` over the whole run, its steps
    and their compensations, divided by its steps): 10 steps: 406 bytes per step, largest
    header 292; 300 steps: 2,254 per step, largest header 3,980 (x5.5 per step for x30 steps;
    4,063 bytes in all against 676,323: O(steps²)). The forward steps' headers stay about 100
    bytes; the compensations' grow by about 13 bytes at each step undone.
    The header carries the compensation cursor with the NAME of every step compensated so far
    (snapshot format 3, docs/performance.md "What snapshot format 3's header costs": a fix for
    a loop of one step, which a saga of distinct steps does not get), rewritten in full at each
    compensation's checkpoint."""
    small_per, small_max = await _compensation_header_bytes(10)
    large_per, large_max = await _compensation_header_bytes(300)
    assert large_per <= 1.5 * small_per, ((small_per, small_max), (large_per, large_max))
