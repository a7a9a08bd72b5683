"""Adversarial review of the commits e9366a6..fe27a06 (execution_id on step events, inner steps'
ends before their fan-out step's, workflow.step.compensation_failed, TrioflowError.__reduce__,
DEADLINE_SLACK for resumed runs). Every test failed at fe27a06 and passes since the commit that
added this file (resting steps publish their ends innermost first, only a run launched from the
queue as its deadline came times out at once: ``Run.at_deadline``, and an error's attributes
are its reduce state), save the child steps' order, a strict xfail naming a limit left."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import SQLiteAdapter
from trioflow.testing import open_test_engine


def _ends(events: list[dict[str, Any]], iid: str) -> list[str]:
    """The ids of the step executions that ended, in the order their ends were published."""
    return [e["execution_id"] for e in events
            if e["instance_id"] == iid and e["event"] in ("workflow.step.completed", "workflow.step.failed")]


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_a_nested_parallel_step_ends_after_its_own_branch_steps(
        autojump_clock: trio.testing.MockClock, tmp_path: Any, how: str) -> None:
    """README, Events: "the steps a fan-out step holds end before it does". A user builds a
    tree of executions from the events (a Step Functions history closes a Parallel state after
    its branches). Here a parallel step `pp` sits in a map item; its one branch waits (long
    enough to rest out of memory); the run is cancelled, or times out.

    Expected ends: `m/#0/pp/c/w#1`, then `m/#0/pp#1`, then `m#1`.
    Was: `m/#0/pp#1` ends first, then its own branch step `m/#0/pp/c/w#1`, then `m#1` (the
    same with a parallel inside a parallel's branch; only the outermost step is ordered)."""
    inner = tf.branch("q").parallel("pp", branches=[tf.branch("c").wait("w", seconds=10_000).build()]).build()
    builder = tf.workflow("w").map("m", items=lambda ctx: [1], branch=inner)
    wf = (builder.with_timeout(600) if how == "timeout" else builder).build()
    events: list[dict[str, Any]] = []
    async with open_test_engine(adapter=SQLiteAdapter(str(tmp_path / "x.db"))) as engine:
        engine.register(wf)
        engine.events.on("workflow.*", events.append)
        iid = await engine.start("w")
        await trio.sleep(200)
        if how == "cancel":
            assert await engine.cancel(iid)
        await engine.wait(iid)
    assert _ends(events, iid) == ["m/#0/pp/c/w#1", "m/#0/pp#1", "m#1"]


@pytest.mark.xfail(strict=True, reason=(
    "known, left (December 6th): a child step's end comes once the cancel of its child has ended it,"
    " after the fan-out step holding it has ended (README, Events). Holding the fan-out's end back until"
    " then (b3ef4d6, reverted in the commit after) lost it when the engine closed meanwhile, and let an"
    " unrelated cancel publish it early"))
@pytest.mark.parametrize("fanout", ["map", "parallel"])
async def test_a_child_step_in_a_fanout_ends_before_the_fanout_step(
        autojump_clock: trio.testing.MockClock, fanout: str) -> None:
    """README, Events: "the steps a fan-out step holds end before it does". A map (or
    parallel) step whose item (branch) runs a child step; the parent is cancelled while the
    child runs (in memory, MemoryAdapter).

    Expected: the child step's `workflow.step.failed` (`m/#0/ch#1`) before the map step's
    (`m#1`).
    Was: `m#1` is published first, then `m/#0/ch#1` (``cancel_children`` records and
    publishes the child steps' ends after every lane, their fan-out steps included, has
    ended)."""
    kid = tf.workflow("kid").wait("kw", seconds=10_000).build()
    branch = tf.branch("q").child("ch", workflow="kid").build()
    builder = tf.workflow("w")
    builder = (builder.map("m", items=lambda ctx: [1], branch=branch) if fanout == "map"
               else builder.parallel("m", branches=[branch]))
    wf = builder.build()
    events: list[dict[str, Any]] = []
    async with open_test_engine() as engine:
        engine.register(kid)
        engine.register(wf)
        engine.events.on("workflow.*", events.append)
        iid = await engine.start("w")
        await trio.sleep(1)
        assert await engine.cancel(iid)
        await engine.wait(iid)
    inner = "m/#0/ch#1" if fanout == "map" else "m/q/ch#1"
    assert _ends(events, iid) == [inner, "m#1"]


async def test_a_run_taken_up_half_a_millisecond_before_its_deadline_runs_its_last_step(
        autojump_clock: trio.testing.MockClock) -> None:
    """A workflow waits 100 s, then runs an instant step; its timeout is 100.0005 s. Run by
    ``execute_workflow``, or with a wait short enough to stay in memory, it completes: the
    step ends before the deadline. A user expects the same whether or not the engine let the
    run rest out of memory during the wait (README: resting is invisible but for memory).

    Was: with the engine, the 100 s wait rests out of memory; the woken run is "resumed",
    ``_deadline`` (actors/_instance.py) sees 0.5 ms left, within ``DEADLINE_SLACK`` (1 ms),
    and gives it a deadline of now: the instance ends ``timed_out`` without running `s`
    (before a0f840d it completed)."""
    async def ok(_: Any) -> str:
        return "ok"

    wf = tf.workflow("w").wait("t", seconds=100).step("s", ok).with_timeout(100.0005).build()
    in_process = await tf.execute_workflow(None, wf)
    assert in_process.status == "completed"
    async with open_test_engine() as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("w"))
    assert done.status == "completed", (done.status, done.error)


class _WithRelated(tf.TrioflowError):
    """A user's error that keeps the errors related to it, itself included."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id} failed")
        self.order_id = order_id
        self.related: list[BaseException] = [self]


@pytest.mark.parametrize("how", ["pickle-self", "deepcopy-self", "deepcopy-list"])
def test_an_error_that_refers_to_itself_pickles_and_copies(how: str) -> None:
    """README: each trioflow error "pickles and copy.deepcopys whole". A user's subclass of
    TrioflowError whose attributes refer back to the error (an attribute naming the root
    error, or a list of related errors holding it) pickles and deep-copies as any Python
    exception does (``BaseException.__reduce__`` hands the attributes as state, set once the
    new object is memoized), the copy referring to itself as the original does.

    Was: with an attribute that is the error itself, pickle.dumps and copy.deepcopy raise
    RecursionError; with a list holding it, the deep copy's list holds a second, different
    copy. ``TrioflowError.__reduce__`` (runtime/_errors.py) passes the attributes inside the
    constructor arguments, which must be copied before the error exists to be memoized."""
    error = _WithRelated("A-1")
    if how.endswith("self"):
        error.root = error
    copied = pickle.loads(pickle.dumps(error)) if how.startswith("pickle") else copy.deepcopy(error)
    assert copied.order_id == "A-1" and copied.related[0] is copied
    assert not how.endswith("self") or copied.root is copied
