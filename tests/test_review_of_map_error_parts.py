"""Review of the map step (issue 15, SPEC §14), h_map: only tests that fail today.

Everything else probed held (see /tmp/h_map/REPORT.md).
"""

from __future__ import annotations

import trio
import trio.testing
import trioflow as tf


class Declined(Exception):
    pass


async def _work(ctx: tf.WorkflowContext) -> int:
    if ctx.item in (1, 4):
        raise Declined(f"card {ctx.item} declined")
    if ctx.item == 5:
        raise KeyError("no such card")
    return int(ctx.item)


async def test_a_map_error_handled_with_except_star_keeps_its_item_count_and_tolerance(
        autojump_clock: trio.testing.MockClock) -> None:
    """docs/fanout.md: a map failing beyond its tolerance fails "with a `MapError` (an
    `ExceptionGroup` of `ItemError`s, its message naming the first five)", and the message says
    "N of TOTAL items failed, T tolerated" (tests/test_map.py checks it).

    Reproduction: a wait-all map of 6 items tolerating 1, items 1, 4 and 5 fail; take the
    `MapError` from `execute_workflow`'s result and handle it the way an `ExceptionGroup` is
    handled, `except* tf.ItemError as eg` (or `error.split(...)`).
    Expected: the group `except*` hands over still says "3 of 6 items failed, 1 tolerated" (a
    derived group keeps its message, as Python's own `ExceptionGroup.derive` does), and a
    split-off part does not claim the map had only as many items as that part.
    Actual: "map step 'each': 3 of 3 items failed, 0 tolerated: ..." (and a split of the two
    Declined items: "2 of 2 items failed, 0 tolerated"): `MapError.derive`
    (runtime/_errors.py:238-239) rebuilds the message with `len(excs)` items and 0 tolerated.
    """
    wf = (tf.workflow("m")
          .map("each", items=lambda ctx: list(range(6)), on_error="wait-all", tolerated_failures=1,
               branch=tf.branch("b").step("w", _work).build())
          .build())
    res = await tf.execute_workflow(None, wf, None)
    error = res.error
    assert isinstance(error, tf.MapError)
    assert "3 of 6 items failed, 1 tolerated" in str(error)

    handled: list[str] = []
    try:
        raise error
    except* tf.ItemError as group:
        handled.append(str(group))
    assert len(handled) == 1
    assert "3 of 6 items failed, 1 tolerated" in handled[0], handled[0]

    declined, _rest = error.split(lambda e: isinstance(e, tf.ItemError) and isinstance(e.error, Declined))
    assert declined is not None
    assert "of 6 items" in str(declined) and "1 tolerated" in str(declined), str(declined)
