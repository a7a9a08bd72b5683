"""From a review of what grows faster than it should (wave 2's promise: "storage that does
not grow with the square of the work", SPEC §10-14, README's Storage and Performance
sections). Everything is COUNTED, never timed: bytes handed to a real MemoryAdapter (a
subclass that counts what ``checkpoint`` is given), and the lines of Python the engine runs
(``sys.settrace``), compared as ratios between a small and a large N; the measured figures
are in each docstring. The last test failed until the commit that added this file, the second
until the commit after; the first is a strict xfail naming a limit left: a header lists every
branch of a parallel step in flight."""

from __future__ import annotations

import sys
from collections.abc import Collection, Sequence
from types import FrameType
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf


class CountingMemoryAdapter(tf.adapters.MemoryAdapter):
    """The real MemoryAdapter, counting the checkpoints it is given and their bytes (declaring
    the keywords it hands on, as a wrapper must for the engine to use them)."""

    def __init__(self) -> None:
        super().__init__()
        self.checkpoints = 0
        self.header_bytes = 0
        self.record_bytes = 0

    async def checkpoint(
        self, instance_id: str, status: Any, header: bytes, records: Sequence[bytes], *, first_seq: int,
        start: bytes | None = None, consumed: Sequence[int] = (), wake_at: float | None = None,
        notify: tuple[str, str, bytes] | None = None, restart: bool = False,
    ) -> int | None:
        self.checkpoints += 1
        self.header_bytes += len(header)
        self.record_bytes += sum(len(r) for r in records)
        return await super().checkpoint(instance_id, status, header, records, first_seq=first_seq, start=start,
                                        consumed=consumed, wake_at=wake_at, notify=notify, restart=restart)

    async def due(self, before: float, limit: int, *, skip_workflows: Collection[str] = (),
                  exclude: Collection[str] = ()) -> Any:
        return await super().due(before, limit, skip_workflows=skip_workflows, exclude=exclude)


class _Lines:
    """Counts the lines of Python run in this thread (the event loop's) while entered."""

    def __init__(self) -> None:
        self.count = 0

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.count += 1
        return self._trace

    def __enter__(self) -> _Lines:
        sys.settrace(self._trace)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)


# -- wide fan-outs: the header lists every lane in flight ------------------------------------


async def _branch_step(ctx: tf.WorkflowContext) -> int:
    # Each branch ends at its own moment, so each end is a checkpoint of its own (as jobs that
    # call out to services do); no-op jobs would all end in one pass and share one.
    index = int(tf.current_step().step_name[1:])
    await trio.sleep(0.001 * (index + 1))
    return index


def _wide_parallel(n: int) -> tf.WorkflowDefinition:
    return (tf.workflow(f"wide-{n}")
            .parallel("fan", branches=[tf.branch(f"b{i}").step(f"s{i}", _branch_step).build() for i in range(n)])
            .build())


async def _parallel_bytes(n: int) -> CountingMemoryAdapter:
    adapter = CountingMemoryAdapter()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(_wide_parallel(n))
        done = await engine.wait(await engine.start(f"wide-{n}", {}))
    assert done.status == "completed", done.error
    assert isinstance(done.output, dict) and len(done.output) == n, done.output
    return adapter


async def test_a_parallel_step_writes_header_bytes_per_branch_that_grow_with_its_branches(
        autojump_clock: trio.testing.MockClock) -> None:
    """A user fans out a parallel step over many branches whose steps end one by one (each
    end a checkpoint, as the README says). SPEC's wave-2 table asks the per-branch cost of a
    1,000-branch parallel step to stay within 2x that of a 10-branch one, and §10 that the
    bytes a step costs to store do not grow with the work around it; a Temporal or Step
    Functions user pays one history event / state transition per branch step, whatever the
    width.

    Was: every checkpoint's header listed every branch still in flight (a branch still in
    its first step in full, ``["s11", nil, nil]`` under its lane key, one that moved on by its
    record's seq), so the header bytes per branch grew linearly with the width and the total
    with its square. Counted (MemoryAdapter, one step per branch): 212 header bytes per branch
    at 10 branches, 1,880 at 200, 9,765 at 1,000 (46x), while the records stay at 57 bytes per
    branch: a 1,000-branch step writes 9.8 MB of headers for 60 KB of records. (This test, 10
    against 300 branches: 193 and 2,835 header bytes per branch.)"""
    small, large = await _parallel_bytes(10), await _parallel_bytes(300)
    per_small, per_large = small.header_bytes / 10, large.header_bytes / 300
    assert large.checkpoints >= 300  # (each branch's end was a checkpoint of its own)
    assert per_large <= 2 * per_small, (
        f"header bytes per branch: {per_small:.0f} with 10 branches, {per_large:.0f} with 300"
        f" (records: {small.record_bytes / 10:.0f} and {large.record_bytes / 300:.0f} per branch)")


async def _item_step(ctx: tf.WorkflowContext) -> Any:
    await trio.sleep(0.001 * (ctx.item_index + 1))
    return ctx.item


_map_of_two_steps = (tf.workflow("batch")
                     .map("items", items=lambda ctx: list(range(ctx.input["n"])),
                          branch=tf.branch("item").step("fetch", _item_step).step("store", _item_step).build())
                     .build())


async def _map_bytes(n: int) -> CountingMemoryAdapter:
    adapter = CountingMemoryAdapter()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(_map_of_two_steps)
        done = await engine.wait(await engine.start("batch", {"n": n}))
    assert done.status == "completed", done.error
    return adapter


async def test_a_map_of_two_step_items_writes_header_bytes_per_item_that_grow_with_its_items(
        autojump_clock: trio.testing.MockClock) -> None:
    """A user maps a two-step branch (fetch, then store) over a batch of items, with the default
    ``max_concurrency=None`` (every item at once). SPEC §14: "each item's steps are
    checkpointed on their own (cost per item independent of the number of items)"; README:
    "what a step costs to store does not grow with the steps run ... before it".

    Was: every checkpoint's header names each item standing between its two steps (its
    lane "moved on", by its record's seq, grouped by step), so a header holds a number per item
    in flight and the header bytes per item grow with the batch: 209 per item with 20 items,
    343 with 200, 2,529 with 2,000 (12x; the largest header 3,136 bytes), while the records
    stay at 109 to 119 bytes per item. With ``max_concurrency=10`` the same map stays flat
    (143 per item at 1,000): what grows is the header's list of lanes in flight. (This test,
    20 against 1,000 items, the items' sleeps as written here: 210 and 1,517 per item.)"""
    small, large = await _map_bytes(20), await _map_bytes(1000)
    per_small, per_large = small.header_bytes / 20, large.header_bytes / 1000
    assert per_large <= 2 * per_small, (
        f"header bytes per item: {per_small:.0f} with 20 items, {per_large:.0f} with 1,000"
        f" (records: {small.record_bytes / 20:.0f} and {large.record_bytes / 1000:.0f} per item)")


# -- pending signals: kept in a list and searched linearly ------------------------------------


_reminder = (tf.workflow("reminder")
             .wait("cool-off", seconds=3600)
             .receive("go-ahead", signal="go")
             .build())


async def _lines_to_wake_with(pending: int) -> int:
    adapter = CountingMemoryAdapter()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(_reminder)
        iid = await engine.start("reminder", {})
        await trio.sleep(10)  # parked: out of memory, on its timer
        for i in range(pending):
            await engine.signal(iid, "note", i)  # notes it may receive later
        await engine.signal(iid, "go")
        with _Lines() as lines:
            await trio.sleep(3600)  # the timer fires: the waker takes it up, its receive takes "go"
        instance = await engine.get_instance(iid)
    assert instance is not None and instance.status == "completed", instance
    return lines.count


async def test_waking_an_instance_costs_work_linear_not_quadratic_in_its_pending_signals(
        autojump_clock: trio.testing.MockClock) -> None:
    """A user's instance parks on a timer while signals pile up for it (notes, updates it will
    read later; or, the same path, the end notices of a parked parent's many children). Waking
    it must read its pending signals, so a user expects work linear in them: twice the
    signals, twice the work, never the square (Temporal buffers signals per name; SPEC §13
    keeps early signals first in, first out).

    Was: the run taken up delivers each stored signal through ``_Run.deliver``
    (actors/_run.py), which first asks ``any(q == seq for q, _, _ in state.signals)`` over the
    signals delivered so far: P pending signals cost P²/2 steps of that generator. Counted
    (lines of Python from the timer's due time to the instance's end): 11,477 with 100 pending
    (115 a signal), 533,030 with 1,000 (533 a signal), 2,062,527 with 2,000 (1,031 a signal);
    the generator alone runs 5,150, 501,500 and 2,003,000 lines. (A map of 1,000 child items
    whose parent is parked while they end pays the same: 500,499 lines in that generator, and
    397,635 in ``take_signal``, which scans the list past the other children's notices.)"""
    few, many = await _lines_to_wake_with(100), await _lines_to_wake_with(1000)
    assert many / 1000 <= 2 * (few / 100), (
        f"lines to wake: {few} with 100 pending signals ({few / 100:.0f} each),"
        f" {many} with 1,000 ({many / 1000:.0f} each)")
