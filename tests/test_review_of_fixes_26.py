"""From an adversarial review of b3ef4d6 (``Run.held_ends``: a fan-out step whose branches or
items wait on children held its end back until their cancel had ended their steps; reverted in
the commit that added this file: the review found it lost that end when the engine closed
meanwhile, and let another lane's cancel of children publish it early). Kept: every step cut
short ends once across such a close, and a queued parent launched at its workflow deadline
cancels its children and times out (``Run.at_deadline``). That a child step's end comes after
its fan-out step's is the known limit tests/test_review_of_fixes_25.py marks. On trio's
MockClock (autojump)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import SQLiteAdapter
from trioflow.testing import open_test_engine


def _ends(events: list[dict[str, Any]], iid: str) -> list[str]:
    """Ids of the step executions of ``iid`` that ended, in the order their ends went out."""
    return [e["execution_id"] for e in events
            if e.get("instance_id") == iid
            and e["event"] in ("workflow.step.completed", "workflow.step.failed", "workflow.step.caught")]


def _kid(name: str, undo_seconds: float) -> tf.WorkflowDefinition:
    """A child that completes a step, then waits long; cancelled, its compensation takes
    ``undo_seconds`` (so the parent's cancel of it takes as long)."""
    async def k(_: Any) -> str:
        return "k"

    async def undo(_: Any, __: Any) -> None:
        await trio.sleep(undo_seconds)

    return tf.workflow(name).step("k", k, undo).wait("kw", seconds=10_000).build()


async def test_a_fanout_steps_end_survives_an_engine_closing_while_its_children_are_cancelled(
        autojump_clock: trio.testing.MockClock, tmp_path: Any) -> None:
    """README, Events: a step of any kind cut short by a cancel has a `workflow.step.failed`
    "once the end that cut it is stored, whether it ran in memory or waited out of it"; and
    the steps a fan-out step holds end before it does. A map `m` whose one item waits on a
    child (whose cancel takes 50 s: its compensation is slow); the parent is cancelled at 1 s
    (the decision to compensate is stored at once), the engine closes at 20 s while the child
    is being cancelled, and a new engine on the same SQLite file finishes the job.

    Expected, across both engines: `m/#0/ch#1` and `m#1` end, each once.
    Was (at b3ef4d6): `m#1` never ended with a step event: engine 1 held it, and the engine
    closed before a checkpoint published it; engine 2 resumed the parent compensating, its
    lanes gone, so nothing published it any more."""
    wf = tf.workflow("w").map("m", items=lambda ctx: [1],
                              branch=tf.branch("i").child("ch", workflow="k50").build()).build()
    path = str(tmp_path / "x.db")
    events: list[dict[str, Any]] = []
    async with open_test_engine(adapter=SQLiteAdapter(path)) as engine:
        engine.register(_kid("k50", 50))
        engine.register(wf)
        engine.events.on("workflow.*", events.append)
        iid = await engine.start("w")
        await trio.sleep(1)
        assert await engine.cancel(iid)
        await trio.sleep(19)
    async with open_test_engine(adapter=SQLiteAdapter(path)) as engine:
        engine.register(_kid("k50", 50))
        engine.register(wf)
        engine.events.on("workflow.*", events.append)
        done = await engine.wait(iid)
    assert done.status == "cancelled"
    ends = _ends(events, iid)
    assert Counter(ends) == {"m/#0/ch#1": 1, "m#1": 1}, ends


async def _busy(_: Any) -> str:
    await trio.sleep(10_000)
    return "busy"


async def test_guard_a_parent_launched_at_its_deadline_cancels_its_children_and_times_out(
        autojump_clock: trio.testing.MockClock, tmp_path: Any) -> None:
    """Guards ``Run.at_deadline`` with a parent that waits on children: with a 100 s workflow
    timeout it waits in the queue for a slot (busy instances hold them) when its deadline comes,
    is launched at once by ``Engine._watch_queued_deadlines`` and must end ``timed_out``, its
    map's child cancelled, each of its steps ended once."""
    async def five(_: Any) -> int:
        await trio.sleep(5)
        return 5

    k1 = tf.workflow("k1").step("kw", five).build()
    k2 = tf.workflow("k2").wait("kw", seconds=10_000).build()
    busy = tf.workflow("busy").step("b", _busy).build()
    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch("a").child("c1", workflow="k1").build(),
        tf.branch("b").map("m", items=lambda ctx: [1],
                           branch=tf.branch("i").child("c2", workflow="k2").build()).build(),
    ]).with_timeout(100).build()
    events: list[dict[str, Any]] = []
    async with open_test_engine(adapter=SQLiteAdapter(str(tmp_path / "x.db")), max_running=2) as engine:
        for definition in (k1, k2, busy, wf):
            engine.register(definition)
        engine.events.on("workflow.*", events.append)
        iid = await engine.start("w")
        await trio.sleep(0.5)
        for _ in range(3):
            await engine.start("busy")
        done = await engine.wait(iid)
        kid = await engine.get_instance(f"{iid}/m/#0/c2#1")
    assert done.status == "timed_out"
    assert kid is not None and kid.status == "cancelled"
    ends = [e for e in _ends(events, iid) if e != "p/a/c1#1"]
    assert Counter(ends) == {"m/#0/c2#1": 1, "p/b/m#1": 1, "p#1": 1}, ends
