"""From a second review of what grows faster than it should, on axes the first one
(tests/test_review_of_scale.py) did not cover, counted, never timed: lines of Python
(``sys.settrace``) around the one operation measured, compared as ratios between a small and a
large N. The test failed until the commit that added this file (the review's purge findings
are in tests/test_review_of_scale2_purge.py)."""

from __future__ import annotations

import sys
from typing import Any

import trio
import trio.testing

import trioflow as tf

# -- a fan-out of child workflows that end together: each notice found by a scan of them all -----


async def _call_service(ctx: tf.WorkflowContext) -> int:
    await trio.sleep(1)  # every child calls the same service, which answers each in a second
    return ctx.input["i"]


_shipment = tf.workflow("shipment").step("book", _call_service).build()
_batch = (tf.workflow("batch")
          .map("ship", items=lambda ctx: list(range(ctx.input["n"])),
               branch=tf.branch("one").child("book-one", workflow="shipment", input=lambda ctx: {"i": ctx.item}).build())
          .build())


class _LinesIn:
    """Counts the lines of Python run in one function (by its code object) while entered."""

    def __init__(self, code: Any) -> None:
        self.code, self.count = code, 0

    def _local(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            self.count += 1
        return self._local

    def _global(self, frame: Any, event: str, arg: Any) -> Any:
        return self._local if frame.f_code is self.code else None

    def __enter__(self) -> _LinesIn:
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)


async def _notice_lines(n: int) -> int:
    from trioflow.actors._run import Run

    async with tf.open_engine(adapter=tf.adapters.MemoryAdapter()) as engine:
        engine.register(_shipment)
        engine.register(_batch)
        with _LinesIn(Run.take_signal.__code__) as lines:
            done = await engine.wait(await engine.start("batch", {"n": n}))
    assert done.status == "completed", done.error
    assert done.output == list(range(n)), done.output
    return lines.count


async def test_a_map_of_child_workflows_that_end_together_takes_each_end_notice_in_constant_work(
        autojump_clock: trio.testing.MockClock) -> None:
    """A user maps a child workflow over a batch (``.map(...).child(...)``, SPEC §14), each
    child calling one service that answers them all within the same second. SPEC §14: "cost
    per item independent of the number of items"; SPEC's wave-2 performance table sets a
    map of 10,000 items as a target; a Temporal user's child-completion events are matched to
    their futures by id, whatever the width.

    Was: the children's end notices reach the parent as signals delivered together, into
    one list (``state.signals``); each item lane then takes its own with
    ``Run.take_signal`` (actors/_run.py:780), a linear scan of that list by name, so item k
    scans past the notices of the items still waiting before it: N²/2 entries for N items.
    (Children ending one by one, at distinct times, cost one entry each: only a burst piles
    up.) Counted (lines run in ``take_signal``, per item, varying a little from run to run with the order
    the notices land in): 26-28 with 20 items, 295-324 with 600
    (~11x); entries scanned per item, 15.5 with 30 items, 150 with 300, 500 with 1,000, while
    the whole run's lines per item went 3,127 -> 4,913 from 30 to 1,000 items."""
    few, many = await _notice_lines(20), await _notice_lines(600)
    assert many / 600 <= 2 * few / 20, (
        f"lines in take_signal: {few} for 20 items ({few / 20:.0f} each), {many} for 600 ({many / 600:.0f} each)")
