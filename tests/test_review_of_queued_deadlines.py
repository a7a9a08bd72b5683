"""An adversarial review of 8a93f53: ``Engine._take_up_queued`` (queued runs switch only for
workflows in ``_replaced``, their deadline watched again only if they switched),
``Run.start_due`` and ``_until_next_other``: replaces in a row, start times in views and the
waker's waits held. Both tests failed at 8a93f53: the first passes since the commit that added
this file (a switch that keeps the workflow timeout leaves the deadline watched as it is); the
second, older than these commits, was a strict xfail until the commit that removed its mark
(a resumed run's workflow timeout within ``DEADLINE_SLACK`` of its deadline counts as over)."""

from __future__ import annotations

import collections
import heapq

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine


async def _slow(data: object) -> str:
    await trio.sleep(50)
    return "slow"


def _blocker(engine: tf.Engine, gate: trio.Event) -> None:
    """Workflow "blocker": one step that holds its slot until ``gate`` is set."""
    async def hold(data: object) -> None:
        await gate.wait()

    engine.jobs.register("hold", hold)
    engine.register(tf.workflow("blocker").task("hold", job="hold").build())


def _release(step: str, timeout: float | None) -> tf.WorkflowDefinition:
    builder = tf.workflow("w").task(step, job="slow")
    return (builder.with_timeout(timeout) if timeout is not None else builder).build()


async def _stored_mid_first_step(adapter: MemoryAdapter, n: int, definition: tf.WorkflowDefinition,
                                 job: object = _slow) -> list[str]:
    """``n`` instances of ``definition`` stored ``running`` during their first step (started,
    no records: a new release takes them up), the engine closed 1 s in."""
    async with open_test_engine(adapter=adapter) as engine:
        engine.jobs.register("slow", job)  # type: ignore[arg-type]
        engine.register(definition)
        ids = [await engine.start("w", None) for _ in range(n)]
        await trio.sleep(1)
    return ids


async def test_each_replace_with_the_same_timeout_doubles_queued_deadlines_and_rebuilds_the_heap_per_run(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Relied on: 8a93f53 (its message): "watches a run's deadline again only if it switched
    (with thousands queued for ever on the release before, every call grew the deadline heap by
    one entry a run and rebuilt it)"; docs/performance.md: a queued run's deadline watch costs
    a call only for a workflow with a timeout; ``register()`` is a plain synchronous call made
    at deploy time (README, Registration: replace=True, queued runs switch to it).

    Reproduction: 1,000 instances of ``w`` (``with_timeout(1000)``) stored mid first step; a new
    engine (``max_running=1``, a blocker holding the slot) resumes them: 1,000 queued, each
    deadline watched once (heap 1,000 entries). Then ``register(w', replace=True)`` four times,
    each release with the same ``with_timeout(1000)`` and its jobs registered (every queued run
    switches each time).

    Expected: each switched run's deadline is watched once: the heap holds no entry twice, and
    a replace costs a constant number of heap rebuilds, not one per queued run.

    Was: the first replace leaves every entry twice in the heap (2,000 entries, 1,000
    known); from the second on, the heap sits over 2*known+64, the compaction cannot bring it
    under, and most forgets rebuild the whole heap: after the 4th replace the heap holds 2,063
    entries for 1,000 watched (277 twice), and that replace called ``heapify`` 723 times
    (0.15 s here; 0.4-0.6 s of blocked event loop per replace with 2,000 queued, growing with
    the square of the queue).

    Cause (guess): ``_take_up_queued`` (runtime/_engine.py:333-335) forgets the entry
    ``(started_at + queued_on.timeout, iid)`` then watches ``(started_at + new.timeout, iid)``:
    with an equal timeout that is the same tuple, discarded from ``known`` and re-added, while
    the heap keeps its old copy and gets a new one (runtime/_engine.py:1659-1662); the
    compaction in ``_forget_queued_deadline`` (runtime/_engine.py:1701-1704) keeps every entry
    that is in ``known``, duplicates included, so it never shrinks the heap and runs on every
    forget."""
    adapter = MemoryAdapter()
    n = 1000
    await _stored_mid_first_step(adapter, n, _release("a", 1000))
    gate = trio.Event()
    async with open_test_engine(adapter=adapter, max_running=1) as engine:
        engine.jobs.register("slow", _slow)
        _blocker(engine, gate)
        await engine.start("blocker", None)
        engine.register(_release("a", 1000))
        await trio.sleep(1)
        assert len(engine._queued_deadlines) == len(engine._queued_deadlines_known) == n
        for i in range(3):
            engine.register(_release(f"r{i}", 1000), replace=True)
        heapified = [0]
        real = heapq.heapify

        def counting(x: list) -> None:  # type: ignore[type-arg]
            heapified[0] += 1
            real(x)

        monkeypatch.setattr(heapq, "heapify", counting)
        engine.register(_release("r3", 1000), replace=True)
        monkeypatch.setattr(heapq, "heapify", real)
        heap, known = list(engine._queued_deadlines), set(engine._queued_deadlines_known)
        twice = sum(1 for entry, count in collections.Counter(heap).items() if count > 1 and entry in known)
        gate.set()
    assert (twice, heapified[0]) == (0, 0), (
        f"after 4 replaces: heap {len(heap)} entries for {len(known)} watched, {twice} of them twice; the 4th"
        f" register() rebuilt the heap {heapified[0]} times")


async def test_queued_runs_launched_at_a_deadline_within_the_slack_run_their_step_beyond_max_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Relied on: README, open_engine: "At most `max_running` instances run at once; ... (an
    instance resumed by a new engine waits for a slot with the status it was stored with; one
    still waiting at its workflow deadline then runs at once, as a cancelled instance does, and
    ends `timed_out`)" (a cancelled queued instance runs none of its steps); docs/testing.md:
    instances started in one instant have start times a float step apart.

    Reproduction: three instances of ``w`` (``with_timeout(50)``, first step on job "slow")
    stored mid first step, started in one instant; a new engine with ``max_running=1`` and a
    blocker holding the slot resumes them (all queued); 60 s later, count the calls of "slow".

    Expected: all three end ``timed_out`` at their deadline without running "slow" (they
    never got a slot); never more than one instance runs at once.

    Was: the first ends ``timed_out`` with no step; the two others (deadlines 2.4e-7 s and
    4.8e-7 s later) are launched with it, outside ``max_running``, start their first step
    (the job "slow" is called twice, both at once, beside the blocker: 3 running with
    max_running=1) and are cancelled a moment later ("failed: Cancelled" records).
    Not from 8a93f53: the same without any replace.

    Cause: ``_watch_queued_deadlines`` (runtime/_engine.py) pops and launches
    every entry due within ``DEADLINE_SLACK`` (1 ms) of now, taking no slot; the run's own
    workflow-timeout scope (actors/_instance.py, deadline from ``started_at + timeout``) is
    not over yet for those whose deadline is a hair later, so they run their first step."""
    calls = {"n": 0, "now": 0, "most": 0}

    async def counted(data: object) -> str:
        calls["n"] += 1
        calls["now"] += 1
        calls["most"] = max(calls["most"], calls["now"])
        try:
            await trio.sleep(50)
        finally:
            calls["now"] -= 1
        return "x"

    adapter = MemoryAdapter()
    ids = await _stored_mid_first_step(adapter, 3, _release("a", 50))
    calls.update(n=0, most=0)
    gate = trio.Event()
    async with open_test_engine(adapter=adapter, max_running=1) as engine:
        engine.jobs.register("slow", counted)
        _blocker(engine, gate)
        await engine.start("blocker", None)
        engine.register(_release("a", 50))
        await trio.sleep(60)
        ends = [await engine.get_instance(i) for i in ids]
        gate.set()
    summary = [(end.status, {k: r.status for k, r in end.step_results.items()}) for end in ends]
    assert [status for status, _ in summary] == ["timed_out"] * 3, summary
    assert calls["n"] == 0, (
        f"the job was called {calls['n']} times ({calls['most']} at once beside the blocker, max_running=1)"
        f" by queued runs past their deadline: {summary}")
