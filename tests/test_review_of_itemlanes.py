"""From an adversarial review (itemlanes) of commit 3c983ce: a map's item lanes that stand where
their last record's step sends them are left out of the header, which holds the definition's
``item_next`` once.

Nothing broke in this review (catches, choices, nested maps, parallel steps in items, maps in
parallel branches, loops, continue_as_new, retries, waits, receives, child steps,
max_concurrency with wait-all and tolerated failures, compensation, cancels and views across
restarts, at both lane thresholds of the header's kept entries); these two guard the cases
judged most fragile: a restart under a replaced definition whose item steps' ``next`` changed
(the header's own ``item_next``, not the new release's, must place the items), and a crash at
every checkpoint of a map whose items are routed by a catch and a choice and run a nested map
(records of status "caught", choices' records and inner items' records all sit among the ones the
decoder reads to put items back)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import explore_crashes

#: Where the lanes are in a header, and where the steps that send item lanes on are.
LANES = 8
ITEM_NEXT = 20

_calls: Counter[str] = Counter()


def _counted(tag: str, seconds: float) -> Any:
    async def run(ctx: tf.WorkflowContext) -> int:
        _calls[f"{tag}{ctx.item}"] += 1
        await trio.sleep(seconds)
        return int(ctx.item)
    return run


def _release_1() -> tf.WorkflowDefinition:
    return (tf.workflow("replaced")
            .map("m", items=lambda ctx: list(range(ctx.input)),
                 branch=tf.branch("i").step("a", _counted("a", 1)).step("b", _counted("b", 10))
                 .step("c", _counted("c", 1)).build())
            .build())


def _release_2() -> tf.WorkflowDefinition:
    # "a" now goes to a new step "x"; "b" is still there, in the same lane, and goes on to "c".
    return (tf.workflow("replaced")
            .map("m", items=lambda ctx: list(range(ctx.input)),
                 branch=tf.branch("i").step("a", _counted("a", 1), next="x").step("c", _counted("c", 1), end=True)
                 .step("x", _counted("x", 1)).step("b", _counted("b", 10), next="c").build())
            .build())


async def test_items_left_out_go_back_by_the_stored_release_steps_after_a_replacement(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A user's map items stand in step "b" (past "a") when the engine stops; they replace the
    definition (register(replace=True)) with one where "a" now leads to a new step "x", and
    restart. They expect each item to go on at "b" where it stood (its "b" again, at least once),
    never to run "a" again nor to run "x" (which it never reached), and the map to complete.
    Guard: the header left every item out, so only the stored ``item_next`` (release 1's)
    can say where they stand; the replacement's would put them at "x"."""
    _calls.clear()
    path = tmp_path / "replaced.db"
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(_release_1())
        iid = await engine.start("replaced", 40)  # (more than 32 lanes: the kept lanes' path)
        await trio.sleep(5)  # every item past "a", in "b"
        stored = await engine.adapter.load(iid)
        assert stored is not None
        raw = msgpack.unpackb(stored.header, strict_map_key=False)
        assert list(raw[LANES]) == [""] and raw[ITEM_NEXT]["a"] == "b"  # (every item left out)
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(_release_2(), replace=True)
        done = await engine.wait(iid)
    assert done.status == "completed", done.error
    assert done.output == list(range(40))
    assert all(_calls[f"a{i}"] == 1 and _calls[f"x{i}"] == 0 and _calls[f"c{i}"] == 1 for i in range(40)), _calls


class _Declined(Exception):
    pass


async def _check(ctx: tf.WorkflowContext) -> int:
    await trio.sleep(1 + ctx.item % 3)
    if ctx.item % 3 == 1:
        raise _Declined("declined")
    return int(ctx.item)


async def _slow(ctx: tf.WorkflowContext) -> int:
    await trio.sleep(2 + ctx.item % 2)
    return int(ctx.item) * 10


ROUTED = (tf.workflow("routed")
          .map("m", items=lambda ctx: list(range(5)), branch=tf.branch("item")
               .step("check", _check, catch=[tf.Catch(errors=["_Declined"], next="declined")])
               .choice("route", choices=[tf.when(lambda ctx: ctx.item % 2 == 0, next="even")], default="odd")
               .step("even", _slow)
               .map("inner", items=lambda ctx: [ctx.item, ctx.item + 1],
                    branch=tf.branch("part").step("p1", _slow).step("p2", _slow).build())
               .step("joined", _slow, end=True)
               .step("odd", _slow).step("odd2", _slow, end=True)
               .step("declined", _slow).step("declined2", _slow, end=True)
               .build())
          .build())


async def test_a_crash_at_every_checkpoint_of_routed_items_with_a_nested_map_ends_as_without(
        autojump_clock: trio.testing.MockClock) -> None:
    """A user's map items are routed by a catch (a declined check goes to "declined") and by a
    choice, and the even ones run a map of their own; the engine dies at any checkpoint and a
    fresh one resumes. They expect the same outcome as without the crash, and no step recorded
    as completed to run again. Guard: items left out of the header after caught records,
    choices' records and a nested map's completion are put back by their newest record alone."""
    report = await explore_crashes(ROUTED)
    assert report.baseline.status == "completed"
    assert report.writes >= 10 and report.divergent == ()
