"""Review of 57a39bd/8f36183: what a child's completion notice costs a parent queued for a slot.

``EngineChildren.deliver_notice`` now asks ``_must_cancel_children`` on every completion when
``definition.completions_may_fail``; that re-walks every pending end notice, and
``_fanout_failures._count`` re-scans all of them once per notice (O(k^2) per notice, O(N^3)
for a map of N items), on the event loop. The flag is also set where no completion can fail
anything (a fail-fast map of fail-fast parallels, the defaults)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
import trioflow._fanout_failures as ff
from trioflow.testing import open_test_engine, virtual_wall_clock

N = 120


async def work(ctx: Any) -> int:
    await trio.sleep(10.0 if ctx.input is None or isinstance(ctx.input, int) else ctx.input)
    return 1


async def run_counting(parent: tf.WorkflowDefinition, monkeypatch: pytest.MonkeyPatch) -> tuple[str, int, int]:
    item_of_calls = [0]
    real = ff.item_of

    def counting(lane: str) -> Any:
        item_of_calls[0] += 1
        return real(lane)

    monkeypatch.setattr(ff, "item_of", counting)
    async with open_test_engine(clock=virtual_wall_clock(), max_running=4) as eng:
        e: Any = eng
        asked = [0]
        must = e._must_cancel_children

        def spied(*args: Any) -> bool:
            asked[0] += 1
            return must(*args)

        e._must_cancel_children = spied
        eng.register(tf.workflow("kid").step("w", work).build())
        eng.register(parent)
        iid = await eng.start(parent.name)
        with trio.fail_after(10**7):
            done = await eng.wait(iid)
        return done.status, asked[0], item_of_calls[0]


def nested_map_of_children() -> tf.WorkflowDefinition:
    """A wait-all map of N child items in branch A of a fail-fast parallel, a long child in B."""
    m = tf.branch("A").map("m", items=lambda ctx: [10.0] * N, on_error="wait-all",
                           branch=tf.branch("item").child("c", workflow="kid").build()).build()
    b = tf.branch("B").child("cb", workflow="kid", input=lambda ctx: 10.0 * N).build()
    return tf.workflow("p").parallel("par", branches=[m, b]).build()


async def test_completion_notices_cost_linear_in_pending_notices(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wait-all map of N child items in a branch of a fail-fast parallel; the parent is
    queued behind its own children while they end one by one. Each notice should cost
    O(pending notices), not O(pending^2): fewer than 2*N^2 item_of calls in all
    (the current code makes about N^3/3)."""
    parent = nested_map_of_children()
    status, asked, calls = await run_counting(parent, monkeypatch)
    assert status == "completed"
    assert calls < 2 * N * N, f"{calls} item_of calls for {asked} notices ({N} items)"


async def test_no_look_on_completions_where_none_can_fail_a_fanout(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fail-fast map of fail-fast parallels of children (every default): no completion can
    fail either (a fail-fast fan-out fails on a failure, never on a completion), so a completion
    notice should not make the engine work the fan-outs out again."""
    inner = tf.branch("item").parallel("p", branches=[
        tf.branch("x").child("cx", workflow="kid").build(),
        tf.branch("y").child("cy", workflow="kid").build()]).build()
    parent = tf.workflow("p").map("m", items=lambda ctx: list(range(N)), branch=inner).build()
    status, asked, calls = await run_counting(parent, monkeypatch)
    assert status == "completed"
    assert asked < 10, f"_must_cancel_children asked {asked} times for {2 * N} completions ({calls} item_of calls)"


async def test_completions_that_cannot_end_their_map_skip_the_whole_look(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shape of the first test: a completion that ends one item of a map with more items
    yet to end than end notices pending cannot end the map, so it cannot fail the fail-fast
    parallel around it: the engine works the fan-outs out again only for the few that may
    (before: once per notice, O(lanes) each, so O(N^2) over the map: 2.6 s for 1,000 items)."""
    parent = nested_map_of_children()
    status, asked, calls = await run_counting(parent, monkeypatch)
    assert status == "completed"
    assert asked < 10, f"_must_cancel_children asked {asked} times for {N} completions ({calls} item_of calls)"
