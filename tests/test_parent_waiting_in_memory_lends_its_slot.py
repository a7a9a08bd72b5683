"""A parent kept in memory by a lane that waits briefly (a poll of a few tenths of a second, a
receive with a short timeout, a retry's short delay) holds its ``max_running`` slot the whole
time: its children run in that slot rather than queue for one of their own. Before, with every
slot held by such parents, their children waited for ever (or until the parents' workflow
timeout): issue 15's "parents waiting on children never deadlock on ``max_running``" did not
hold (found by the spec audit of December 5th).

On trio's MockClock (autojump), on the MemoryAdapter and SQLite; every wait is bounded."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import Adapter

from storages import engine_on, finish, storage  # noqa: F401  (a fixture)


class Board:
    """What the children did, which the parents' polls look at (a side channel, as an external
    system a child provisions and its parent polls would be)."""

    def __init__(self) -> None:
        self.done: list[str] = []
        self.running = 0
        self.peak = 0

    def child(self, seconds: float = 0.0) -> tf.WorkflowDefinition:
        async def work(ctx: tf.WorkflowContext) -> str:
            self.running += 1
            self.peak = max(self.peak, self.running)
            try:
                await trio.sleep(seconds)
            finally:
                self.running -= 1
            self.done.append(ctx.input)
            return f"did {ctx.input}"
        return tf.workflow("kid").step("work", work).build()

    async def all_done(self, ctx: tf.WorkflowContext) -> bool:
        """Whether the parent's own children are all done (their inputs start with its id)."""
        return sum(d.startswith(ctx.instance.id) for d in self.done) >= ctx.input["n"]


def poll_until_done(wait: Callable[[tf.BranchBuilder], tf.BranchBuilder]) -> tf.Branch:
    """A branch that looks at the board after each brief wait until every child is done."""
    return (wait(tf.branch("poll")).step("look", "all-done")
            .choice("again", choices=[tf.when(lambda ctx: ctx.steps["look"], next="seen")], default="nap")
            .pass_("seen", end=True).build())


def nap(seconds: float) -> Callable[[tf.BranchBuilder], tf.BranchBuilder]:
    return lambda b: b.wait("nap", seconds=seconds)


def short_receive(b: tf.BranchBuilder) -> tf.BranchBuilder:
    # A receive whose short timeout is caught: it waits in memory, as a short timer does.
    return b.receive("nap", signal="never", timeout=0.4, catch=[tf.Catch(errors=["SignalTimeoutError"], next="look")])


async def _run(adapter: Adapter, board: Board, parent: tf.WorkflowDefinition, *, parents: int,
               children: int, max_running: int) -> list[tf.WorkflowInstance]:
    async with engine_on(adapter, max_running=max_running) as engine:
        engine.job("all-done")(board.all_done)
        engine.register(board.child())
        engine.register(parent)
        ids = [await engine.start("parent", {"n": children}) for _ in range(parents)]
        return [await finish(engine, iid, limit=600) for iid in ids]


@pytest.mark.parametrize("wait", [nap(0.5), short_receive], ids=["short-timer", "short-receive"])
async def test_a_parent_polling_beside_its_child_with_the_only_slot_sees_it_run(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
        wait: Callable[[tf.BranchBuilder], tf.BranchBuilder]) -> None:
    # The audit's case: before, the child waited for the slot its parent held, the poll never
    # saw it done, and the parent timed out after the hour (without a timeout: for ever).
    board = Board()
    parent = tf.workflow("parent").parallel("both", branches=[
        tf.branch("run").child("c", workflow="kid", input=lambda ctx: ctx.instance.id).build(),
        poll_until_done(wait),
    ]).with_timeout(3600).build()
    start = trio.current_time()
    [done] = await _run(storage(), board, parent, parents=1, children=1, max_running=1)
    assert done.status == "completed", (done.status, done.error)
    assert board.done == [done.id]
    assert trio.current_time() - start < 5, "the child waited for a slot its parent held"


async def test_a_child_queued_before_its_parent_starts_polling_runs_once_it_does(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # The child queues while the other branch runs a step (the parent holds its slot, as it
    # must for a step that runs); once that branch waits briefly, the child runs in the slot.
    board = Board()

    async def busy(ctx: tf.WorkflowContext) -> None:
        await trio.sleep(3)

    parent = tf.workflow("parent").parallel("both", branches=[
        tf.branch("run").child("c", workflow="kid", input=lambda ctx: ctx.instance.id).build(),
        poll_until_done(lambda b: b.step("busy", busy).wait("nap", seconds=0.5)),
    ]).with_timeout(3600).build()
    start = trio.current_time()
    [done] = await _run(storage(), board, parent, parents=1, children=1, max_running=1)
    assert done.status == "completed", (done.status, done.error)
    assert board.done == [done.id]
    assert trio.current_time() - start < 8


async def test_parents_holding_every_slot_all_see_their_map_of_children_run(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # Three parents, two slots, each polling beside a map of three children: every child runs
    # (in its parent's slot: with a slot of its own to wait for, none would), every parent ends.
    board = Board()
    parent = tf.workflow("parent").parallel("both", branches=[
        tf.branch("run").map("each", items=lambda ctx: [f"{ctx.instance.id}-{i}" for i in range(ctx.input["n"])],
                             branch=tf.branch("item").child("c", workflow="kid").build()).build(),
        poll_until_done(nap(0.3)),
    ]).with_timeout(3600).build()
    start = trio.current_time()
    ends = await _run(storage(), board, parent, parents=3, children=3, max_running=2)
    assert [e.status for e in ends] == ["completed"] * 3, [(e.status, e.error) for e in ends]
    assert len(board.done) == 9 and len(set(board.done)) == 9
    assert trio.current_time() - start < 30


async def test_a_parent_whose_lanes_all_rest_long_still_leaves_its_child_to_queue(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # The bound that stays: a parent that waits only long (it leaves memory, its slot free)
    # lends nothing, and max_running=1 still runs one job body at a time.
    board = Board()
    parent = tf.workflow("parent").map(
        "each", items=lambda ctx: [f"{ctx.instance.id}-{i}" for i in range(ctx.input["n"])],
        branch=tf.branch("item").child("c", workflow="kid").build()).build()
    async with engine_on(storage(), max_running=1) as engine:
        slow = board.child(seconds=2)
        engine.register(slow)
        engine.register(parent)
        ids = [await engine.start("parent", {"n": 3}) for _ in range(2)]
        ends = [await finish(engine, iid, limit=600) for iid in ids]
    assert [e.status for e in ends] == ["completed"] * 2
    assert len(board.done) == 6
    assert board.peak == 1, f"{board.peak} children ran at once at max_running=1"
