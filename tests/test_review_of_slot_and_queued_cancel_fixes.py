"""Adversarial review of d91153f (slot pressure and queued cancels): a parent whose branch fails
for good lends its slot at once (``Run.note_failed_branch`` -> ``Children.lend_slot(at_once=True)``),
a cancel of a run queued for a slot records the ends of the steps it stood in
(``store_queued_cancel`` / ``cut_short_resting``), and one with nothing to undo starts at once
(``Engine._starts_to_cancel``).

The tests marked "FAILS today" show a bug; those marked "passes today; pins ..." keep behaviour
worth keeping.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


async def hog(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(100)


HOG = tf.workflow("hog").step("h", hog).build()


async def noted(ctx: tf.WorkflowContext) -> str:
    return "noted"


def step_events(events: list[dict[str, Any]], instance_id: str) -> list[tuple[str, str, str, Any]]:
    """``(event, lane, step, error_name)`` of the step events of ``instance_id`` (not ``waiting``)."""
    return [(e["event"].rsplit(".", 1)[-1], str(e.get("lane", "")), str(e.get("step_name")), e.get("error_name"))
            for e in events
            if e.get("instance_id") == instance_id and e["event"].startswith("workflow.step.")
            and e["event"] != "workflow.step.waiting"]


# -- 1. lending at once, to children a fail-fast is about to cancel -------------------------------

kid_calls: list[str] = []


async def _kid_work(ctx: tf.WorkflowContext) -> int:
    kid_calls.append(ctx.metadata.id)
    await trio.sleep(3)
    return 1


async def _sibling_fails(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(8)
    raise ValueError("sibling fails")


KID = tf.workflow("kid").step("work", _kid_work).build()


@pytest.mark.parametrize("shape", ["child step in a branch", "map of children in a branch"])
async def test_fail_fast_does_not_start_the_queued_children_it_is_about_to_cancel(
        autojump_clock: trio.testing.MockClock, shape: str) -> None:
    """FAILS today (a regression of d91153f; passes at 644472e). README (Hooks): an instance
    "cancelled before its first step (while it waits for its start, or queued for a
    ``max_running`` slot) never started, and ends without [workflow.started / on_start]";
    docs/fanout.md: fail-fast "cancels the running items and starts no more", and a parent
    that must cancel its children cancels them. A user relies on a child whose parent's
    fail-fast step has already failed never doing its work (charging a card, say).

    With ``max_running=1`` the child (or the map's children) queues behind its parent, whose
    sibling branch runs a task step. At t=8 the sibling fails for good, fail-fast. Before
    d91153f the queued children were cancelled where they stood: no ``workflow.started``, no
    job called, empty history. Now ``Run.note_failed_branch`` (actors/_run.py:464-470) calls
    ``lend_slot(at_once=True)`` for *any* parallel branch that fails for good, fail-fast
    included, so each queued child is launched into the parent's slot (runtime/_children.py
    ``lend_slot`` -> ``Engine._adopt_child``), publishes ``workflow.started``, and its job
    runs, only to be cut short a moment later by the fail-fast's ``cancel_children``. (A job
    that returned at once would even complete, and then be compensated as a unit.) The lend is
    only needed for a branch failure that keeps the parent waiting (wait-all)."""
    kid_calls.clear()
    holder = (tf.branch("m").child("c", workflow="kid").build() if shape == "child step in a branch" else
              tf.branch("m").map("each", items=lambda ctx: [1, 2],
                                 branch=tf.branch("ib").child("c", workflow="kid").build()).build())
    wf = (tf.workflow("p")
          .parallel("par", on_error="fail-fast", branches=[holder, tf.branch("s").step("sib", _sibling_fails).build()])
          .build())
    events: list[dict[str, Any]] = []
    async with open_test_engine(max_running=1, clock=virtual_wall_clock()) as engine:
        engine.events.on("workflow.*", events.append)
        engine.register(KID)
        engine.register(wf)
        iid = await engine.start("p", None)
        with trio.fail_after(500):
            inst = await engine.wait(iid)
        kids = [await engine.get_instance(c) for c in inst.children]
    assert inst.status == "failed" and inst.error_name == "ValueError"
    assert [k.status for k in kids if k is not None] == ["cancelled"] * len(kids) != []
    started = [e["instance_id"] for e in events if e["event"] == "workflow.started" and e["instance_id"] != iid]
    assert started == [], "children cancelled while queued were announced as started"
    assert kid_calls == [], "the children's job ran after their parent's fail-fast step had failed"
    assert [h.id for k in kids if k is not None for h in k.history] == []


# -- 2. a child whose start is being stored as the branch fails ----------------------------------


class SlowToCreate(MemoryAdapter):
    """A store whose ``create`` takes half a second to answer, as SQLite's writer thread or a
    networked store takes time (the adapter protocol's ``create`` is awaited)."""

    async def create(self, instance_id: str, workflow_name: str, status: Any, *, start: bytes, header: bytes,
                     parent_id: str | None = None) -> bool:
        if parent_id is not None:
            await trio.sleep(0.5)
        return await super().create(instance_id, workflow_name, status, start=start, header=header,
                                    parent_id=parent_id)


async def _before_the_child(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(7.8)


async def test_a_child_stored_while_its_wait_all_sibling_fails_does_not_deadlock_with_max_running_1(
        autojump_clock: trio.testing.MockClock) -> None:
    """FAILS today (hangs; fail_after turns it into TooSlowError). docs/fanout.md: "A parent that
    cannot leave memory (... one with a parallel branch that failed for good while its
    siblings run on) runs its children in its slot instead (they start at once, whatever
    max_running says)" -- what d91153f set out to guarantee for children queued before the
    failure.

    A wait-all branch starts a child at t=7.8; storing the child takes 0.5 s. At t=8 the
    sibling fails for good, and ``lend_slot(at_once=True)`` looks for queued children: this one
    is not in ``engine._live`` yet, so it is missed. ``Engine._start_child``
    (runtime/_engine.py:350) had already decided ``slot=parent.may_park(inf)`` (True then)
    before awaiting ``adapter.create``, so at t=8.3 the child is queued for a slot of its own,
    which its parent holds. The child wait then calls ``lend_slot(run)`` once
    (actors/_wait.py:200), which lends only children queued a second or more ago, and waits
    with no timeout: nothing ever looks again. Parent ``running`` and child ``pending`` for
    ever. With the real ``SQLiteAdapter`` (its create in the writer thread) the same workflow,
    the child step starting at ~t=7.99, hangs in about one run in ten."""
    wf = (tf.workflow("p")
          .parallel("par", on_error="wait-all", branches=[
              tf.branch("m").step("pre", _before_the_child).child("c", workflow="kid").build(),
              tf.branch("s").step("sib", _sibling_fails).build()])
          .build())
    async with open_test_engine(adapter=SlowToCreate(), max_running=1, clock=virtual_wall_clock()) as engine:
        engine.register(KID)
        engine.register(wf)
        iid = await engine.start("p", None)
        with trio.fail_after(500):
            inst = await engine.wait(iid)
        kids = [await engine.get_instance(c) for c in inst.children]
    assert inst.status == "failed" and inst.error_name == "ParallelError"
    assert [k.status for k in kids if k is not None] == ["compensated"]


# -- 3. a cancel with nothing to undo while the engine's actors stop ------------------------------


async def _stubborn_hog(ctx: tf.WorkflowContext) -> None:
    try:
        await trio.sleep(100)
    finally:
        with trio.CancelScope(shield=True):
            await trio.sleep(0.5)  # its clean-up takes a moment


STUBBORN_HOG = tf.workflow("stubborn-hog").step("h", _stubborn_hog).build()


async def test_cancel_of_a_queued_run_with_nothing_to_undo_as_the_engine_stops_raises_engine_closed(
        autojump_clock: trio.testing.MockClock) -> None:
    """FAILS today (a regression of d91153f; at 644472e it raises EngineClosedError).
    README: after the engine stops, ``cancel`` raises ``EngineClosedError``; ``Engine.cancel``
    has a branch for exactly this (a service shut down from outside the engine's block, its
    clean-up cancelling an instance): "the engine is closing; instance ... was not cancelled".
    A caller relies on getting a trioflow error, and on a cancel that said nothing having
    stored nothing, or one that said ``True`` being honoured by the next engine.

    The instance (one step without a compensation, then a 15 s wait) is woken at t=15 and
    queued behind an instance holding the only slot. The service's scope is cancelled; the
    engine's actors stop (``_actors_stopped``), their nursery closes, and the block's shielded
    clean-up calls ``cancel()``. Fix 3 makes ``_starts_to_cancel`` true for it (nothing to
    undo), so the guard ``if self._actors_stopped and not self._starts_to_cancel(run)``
    (runtime/_engine.py:827) lets it through to ``_cancel_queued`` -> ``_launch``, which starts a
    task in the closed nursery: trio's ``RuntimeError('Nursery is closed to new arrivals')``
    escapes ``cancel()``, nothing is stored, and the next engine runs the instance to
    ``completed``. (The same path was already open for a queued run that never ran.)"""
    wf = tf.workflow("w").step("note", noted).wait("pause", seconds=15).step("after", noted).build()
    adapter = MemoryAdapter()
    clock = virtual_wall_clock()
    outcome: Any = None
    with trio.CancelScope() as service:
        async with open_test_engine(adapter=adapter, max_running=1, clock=clock) as engine:
            engine.register(wf)
            engine.register(STUBBORN_HOG)
            iid = await engine.start("w", None)
            await trio.sleep(10)
            await engine.start("stubborn-hog", None)
            await trio.sleep(6)  # its timer fell due at 15: woken, it queues behind the hog
            service.cancel()  # the service shuts down from outside the engine's block
            try:
                await trio.sleep(1)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(1)  # (the actors stop; the hog's clean-up ends)
                    try:
                        outcome = await engine.cancel(iid)
                    except tf.EngineClosedError:
                        outcome = False
                    except Exception as exc:  # noqa: BLE001 (what the test is about)
                        outcome = exc
    assert not isinstance(outcome, Exception), f"cancel() raised {outcome!r}"
    async with open_test_engine(adapter=adapter, max_running=2, clock=clock) as engine:
        engine.register(wf)
        engine.register(STUBBORN_HOG)
        with trio.fail_after(1000):
            inst = await engine.wait(iid)
    assert inst.status == ("cancelled" if outcome else "completed")


# -- pins ----------------------------------------------------------------------------------------

running: set[str] = set()
peak = [0]


async def _counted(ctx: tf.WorkflowContext) -> int:
    running.add(ctx.metadata.id)
    peak[0] = max(peak[0], len(running))
    try:
        await trio.sleep(3)
    finally:
        running.discard(ctx.metadata.id)
    return 1


async def _fails_after_input(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(ctx.input or 8)
    raise ValueError("sibling fails")


@pytest.mark.parametrize("max_running", [1, 2])
async def test_slots_lent_by_nested_failed_branches_are_given_back(
        autojump_clock: trio.testing.MockClock, max_running: int) -> None:
    """Passes today; pins that nested wait-all fan-outs whose branches fail for good (a parent
    and the children it lends its slot to, each lending in turn), with unrelated instances
    queued meanwhile, all end; the queued instances then run; and once it is over
    ``max_running`` holds again for new work (the lent runs gave back what they took)."""
    kid = tf.workflow("kid").step("work", _counted).build()
    mid = (tf.workflow("mid").parallel("par", on_error="wait-all", branches=[
        tf.branch("m").map("each", items=lambda ctx: [1, 2],
                           branch=tf.branch("ib").child("k", workflow="kid").build()).build(),
        tf.branch("s").step("sib", _fails_after_input).build()]).build())
    top = (tf.workflow("top").parallel("par", on_error="wait-all", branches=[
        tf.branch("m").map("each", items=lambda ctx: [4, 10],
                           branch=tf.branch("ib").child("c", workflow="mid").build()).build(),
        tf.branch("s").step("sib", _fails_after_input).build()]).build())
    other = tf.workflow("other").step("o", _counted).build()
    async with open_test_engine(max_running=max_running, clock=virtual_wall_clock()) as engine:
        for wf in (kid, mid, top, other):
            engine.register(wf)
        iid = await engine.start("top", None)
        await trio.sleep(0.5)
        others = [await engine.start("other", None) for _ in range(3)]
        with trio.fail_after(500):
            inst = await engine.wait(iid)
            assert [(await engine.wait(o)).status for o in others] == ["completed"] * 3
        assert inst.status == "failed" and inst.error_name == "ParallelError"
        assert [i.id for i in await engine.get_instances() if i.status in ("running", "pending")] == []
        peak[0] = 0
        more = [await engine.start("other", None) for _ in range(5)]
        with trio.fail_after(500):
            for o in more:
                await engine.wait(o)
        assert peak[0] == max_running


undone: Counter[str] = Counter()


async def _undone(ctx: tf.WorkflowContext, result: Any) -> None:
    undone[ctx.metadata.id] += 1


async def _down(ctx: tf.WorkflowContext) -> None:
    raise OSError("down")


@pytest.mark.parametrize("shape", ["main line", "map items in a parallel branch"])
async def test_queued_cancel_stored_then_restart_records_and_publishes_each_cut_short_step_once(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, shape: str) -> None:
    """Passes today; pins that a cancel reaching an instance queued for a slot with task steps
    between retry attempts, stored on SQLite, then the engine closed (the hog still holding
    the slot) and another opened: each cut-short execution is recorded once (``Cancelled``,
    with its attempt), its ``workflow.step.failed`` comes from the first engine only, the
    compensation runs once, and the instance ends ``cancelled``."""
    retry = tf.Retry(max_attempts=5, interval=30)
    builder = tf.workflow("w").step("n", noted, _undone)
    if shape == "main line":
        wf = builder.step("f", _down, retry=retry).build()
        cut = {("", "f")}
    else:
        wf = builder.parallel("par", branches=[
            tf.branch("a").map("each", items=lambda ctx: [1, 2],
                               branch=tf.branch("ib").step("f", _down, retry=retry).build()).build(),
            tf.branch("b").wait("wt", seconds=60).build()]).build()
        cut = {("each/#0", "f"), ("each/#1", "f"), ("", "par"), ("par/a", "each"), ("par/b", "wt")}
    undone.clear()
    clock = virtual_wall_clock()
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    async with open_test_engine(adapter=SQLiteAdapter(tmp_path / "w.db"), max_running=1, clock=clock) as engine:
        engine.events.on("workflow.*", first.append)
        engine.register(wf)
        engine.register(HOG)
        iid = await engine.start("w", None)
        await trio.sleep(10)  # out of memory, waiting 30 s for the next attempt
        await engine.start("hog", None)
        await trio.sleep(1)
        assert await engine.cancel(iid)
        await trio.sleep(1)
    async with open_test_engine(adapter=SQLiteAdapter(tmp_path / "w.db"), max_running=1, clock=clock) as engine:
        engine.events.on("workflow.*", second.append)
        engine.register(HOG)
        engine.register(wf)
        with trio.fail_after(1000):
            inst = await engine.wait(iid)
    assert inst.status == "cancelled"
    cut_records = sorted((h.lane, h.step_name, h.attempts, h.error_name) for h in inst.history if h.status == "failed")
    # The task steps' records, and (since review newcomer7, twentieth session of December 7th)
    # the map step's own end: a map cut short ends with a record; the parallel step (2 branches)
    # and the wait record none.
    assert cut_records == sorted((lane, step, 1, "Cancelled") for lane, step in cut if step in ("f", "each"))
    failed_first = [(lane, step) for kind, lane, step, name in step_events(first, iid) if kind == "failed"]
    assert sorted(failed_first) == sorted(cut) and all(
        name == "Cancelled" for kind, _, _, name in step_events(first, iid) if kind == "failed")
    assert step_events(second, iid) == [("compensated", "", "n", None)]
    assert undone == Counter({iid: 1})


resumed_after: list[str] = []


async def _after(ctx: tf.WorkflowContext) -> int:
    resumed_after.append(ctx.metadata.id)
    return 1


@pytest.mark.parametrize("wake", ["signal", "timer"])
async def test_cancel_with_nothing_to_undo_racing_what_woke_it_ends_as_if_cancelled_before(
        autojump_clock: trio.testing.MockClock, wake: str) -> None:
    """Passes today; pins that an instance with nothing to undo, woken from storage by the
    signal it waits for (or its timer) and queued behind a hog, then cancelled, ends at once
    (fix 3) and takes nothing: the step after the wait never runs, and the history and step
    events are those of the same instance cancelled while it still waited, slot free."""

    def build() -> tf.WorkflowDefinition:
        b = tf.workflow("w").step("n", noted)
        b = b.receive("r", signal="go") if wake == "signal" else b.wait("r", seconds=15)
        return b.step("after", _after).build()

    async def cancelled(woken_and_queued: bool) -> tuple[Any, ...]:
        events: list[dict[str, Any]] = []
        async with open_test_engine(max_running=1, clock=virtual_wall_clock()) as engine:
            engine.events.on("workflow.*", events.append)
            engine.register(build())
            engine.register(HOG)
            iid = await engine.start("w", None)
            await trio.sleep(5)  # out of memory
            if woken_and_queued:
                await engine.start("hog", None)
                await trio.sleep(1)
                if wake == "signal":
                    await engine.signal(iid, "go", {"by": "kim"})
                else:
                    await trio.sleep(15)  # its timer fell due: woken, it queues behind the hog
            at = trio.current_time()
            assert await engine.cancel(iid)
            with trio.fail_after(1000):
                inst = await engine.wait(iid)
            took = trio.current_time() - at
        return (inst.status, sorted((h.id, h.status, h.error_name) for h in inst.history),
                sorted(step_events(events, iid)), took < 1)

    resumed_after.clear()
    assert await cancelled(woken_and_queued=True) == await cancelled(woken_and_queued=False)
    assert resumed_after == []
