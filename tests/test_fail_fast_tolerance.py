"""A fail-fast map of child workflows whose tolerance is a fraction that allows no failure of
its items (``tolerated_failures=0.05`` of 3 items: none), or a count that a second failure
exceeds: the parent, woken from storage by the failure that is one too many, runs at once in
its children's slots to cancel the others, as with ``tolerated_failures=0``. Before the fix the
engine asked whether a tolerance was given at all (``0.05`` is), not how many failures it
allows of that many items, as the map itself does (``trioflow._map.tolerated``): the parent
queued for a ``max_running`` slot behind its own hanging children, and failed only once they
ended (never, had one hung for good)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from storages import finish, storage  # noqa: F401  (storage: a fixture on both adapters)
from trioflow.adapters import Adapter
from trioflow.testing import open_test_engine, virtual_wall_clock


class Declined(Exception):
    pass


@pytest.mark.parametrize(("tolerated", "failing"), [(0.05, {0}), (1, {0, 1}), (0.4, {0, 1})])
@pytest.mark.parametrize("max_running", [1, 2])
async def test_a_fail_fast_map_fails_at_the_failure_its_tolerance_does_not_allow(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], max_running: int,  # noqa: F811
        tolerated: float, failing: set[int]) -> None:
    # (Children queue for slots in the order their starts were stored, which trio's scheduler
    # may shuffle: with one slot, a sibling may run its 2,000 s before a failing item's child
    # has a slot. What is asked is that the map fails within moments of the failure too many,
    # whenever it comes, and that no sibling still running or queued then runs to its end.)
    finished: list[tuple[int, float]] = []
    failed_at: list[float] = []

    async def work(ctx: tf.WorkflowContext) -> int:
        if ctx.input in failing:
            await trio.sleep(5 + 5 * ctx.input)
            failed_at.append(trio.current_time())
            raise Declined(f"item {ctx.input} declined")
        await trio.sleep(2_000)
        finished.append((int(ctx.input), trio.current_time()))
        return int(ctx.input)

    kid = tf.workflow("kid").step("w", work).build()
    parent = (tf.workflow("p").map("each", items=lambda ctx: [0, 1, 2], tolerated_failures=tolerated,
                                   branch=tf.branch("b").child("c", workflow="kid").build())
              .build())
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock(), max_running=max_running) as eng:
        eng.register(parent)
        eng.register(kid)
        iid = await eng.start("p", None)
        inst = await finish(eng, iid)
        ended = trio.current_time()
        kids = {c: (await finish(eng, c)).status for c in inst.children}
    assert inst.status == "failed", (inst.status, inst.error_name, inst.cause)
    assert len(failed_at) == len(failing)
    assert ended - max(failed_at) < 60, f"the map failed {ended - max(failed_at)} s after the failure too many"
    assert all(at <= max(failed_at) for _, at in finished), "a sibling the fail-fast map should have cancelled ran on"
    assert sorted(kids.values()).count("failed") == len(failing)
    assert sum(status == "cancelled" for status in kids.values()) == 3 - len(failing) - len(finished), kids


async def test_a_failure_within_the_tolerance_does_not_cancel_the_siblings(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    """The other side of the boundary: one failure of three items with ``tolerated_failures=1``
    (or ``0.34``) is tolerated, and the siblings run to their ends."""
    async def work(ctx: tf.WorkflowContext) -> Any:
        if ctx.input == 0:
            await trio.sleep(5)
            raise Declined("item 0 declined")
        await trio.sleep(1000)
        return int(ctx.input)

    kid = tf.workflow("kid").step("w", work).build()
    for tolerated in (1, 0.34):
        parent = (tf.workflow("p").map("each", items=lambda ctx: [0, 1, 2], tolerated_failures=tolerated,
                                       branch=tf.branch("b").child("c", workflow="kid").build())
                  .build())
        async with open_test_engine(adapter=storage(), clock=virtual_wall_clock(), max_running=1) as eng:
            eng.register(parent)
            eng.register(kid)
            inst = await finish(eng, await eng.start("p", None))
        assert inst.status == "completed", (tolerated, inst.error_name, inst.cause)
        assert inst.output[1:] == [1, 2]
        assert inst.output[0]["error"] == "Declined"
