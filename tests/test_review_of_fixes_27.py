"""Adversarial review (fixes3) of 8dfb7f5 (``Run.stopped_alone``: a step the engine's stop alone
cuts short is neither recorded nor published as cut short; a task step leaves
``lane.waiting = {"attempt": n, "since": t}`` in memory, stored if a sibling's checkpoint comes
in that instant). An engine is closed at a virtual instant while a sibling step completes (and
checkpoints), then another is opened on the same storage. trio's scheduler is seeded per run
(as tests/test_review_of_closes_beside_checkpoints.py does), several seeds per test, so that ties
within one instant are reproducible. Every test failed at 8dfb7f5 and passes since the commit
that added this file: a fail-fast's decision is marked where it is made (``Run.fail_fast``; a
nursery also cancels itself as a branch's task ends with the engine's cancel), the marker keeps
the attempts made before the one cut, and a run taken up at its workflow deadline cancels its
scope at once.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock
from seeded_runs import seeded_runs


async def _restarted(definition: Any, close_at: float, **engine_options: Any) -> tuple[tf.WorkflowInstance, list[dict[str, Any]]]:
    """Start ``definition`` as instance "i", close the engine at virtual ``close_at``, open
    another on the same storage (and driver) and wait for the instance. Returns it and every
    workflow event both engines published."""
    storage = tf.adapters.MemoryAdapter()
    events: list[dict[str, Any]] = []
    async with open_test_engine(adapter=storage, **engine_options) as engine:
        engine.register(definition)
        engine.events.on("workflow.*", events.append)
        await engine.start(definition.name, {}, instance_id="i")
        await trio.sleep_until(close_at)  # the service shuts down cleanly in this instant
    async with open_test_engine(adapter=storage, **engine_options) as engine:
        engine.register(definition)
        engine.events.on("workflow.*", events.append)
        with trio.fail_after(1000):
            instance = await engine.wait("i")
    return instance, events


# -- 1. a step cut mid-attempt by a clean stop runs again as the next attempt ------------------------


def _attempt_workflow(calls: list[tuple[str, int]], retry: tf.Retry | None) -> tf.WorkflowDefinition:
    async def label(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(0.8)  # completes (and checkpoints) in the instant the service shuts down
        return "label printed"

    async def charge(ctx: tf.WorkflowContext) -> str:
        step = tf.current_step()
        calls.append((step.execution_id, step.attempt))
        if retry is not None and step.attempt == 1:
            await trio.sleep(0.1)
            raise ConnectionError("payment gateway timed out")  # retried at t=0.2
        await trio.sleep(5)  # under way when the service shuts down
        return "charged"

    return (tf.workflow("order")
            .parallel("fulfil", branches=[
                tf.branch("pay").step("charge", charge, retry=retry).build(),
                tf.branch("label").step("print", label).build()])
            .build())


async def _attempts_across_a_restart(retry: tf.Retry | None) -> tuple[tf.WorkflowInstance, list[tuple[str, int]]]:
    calls: list[tuple[str, int]] = []
    instance, _ = await _restarted(_attempt_workflow(calls, retry), 0.8)
    return instance, calls


@pytest.mark.parametrize("retry", [None, tf.Retry(max_attempts=2, interval=0.1)], ids=["no-retry", "last-attempt"])
def test_a_step_a_clean_stop_cuts_mid_attempt_runs_again_counted_as_it_was(retry: tf.Retry | None) -> None:
    """A user's charge step reads ``tf.current_step().attempt`` (README: "``attempt``, for
    idempotency keys"; docs/waiting.md: "a restart during an attempt runs that attempt again,
    counted as it was"; "a step with ``max_attempts=3`` is tried three times in all, not three
    more"). The charge is under way (its only attempt with no retry policy; its last, attempt 2
    of ``max_attempts=2``, with one) when the service is shut down cleanly in the instant a
    sibling branch's step completes; a new engine opens on the same storage.

    Expected: the charge runs again as the attempt it was in (1, resp. 2), as after a crash or
    a close with no sibling checkpoint in that instant; never an attempt the policy does not
    allow.

    Was (about half the scheduler orders, those where the sibling's checkpoint stores the
    marker ``{"attempt": n, "since": t}``): it runs again as attempt n+1: attempt **2** of a step
    with no retry policy, attempt **3** of ``max_attempts=2``; its record says ``attempts`` 2 (3),
    and the count a job sees depends on a scheduler tie."""
    expected = 1 if retry is None else 2
    wrong: list[Any] = []
    for seed, (instance, calls) in seeded_runs(_attempts_across_a_restart, retry, seeds=range(12)):
        charges = [(r.id, r.status, r.attempts) for r in instance.history if r.step_name == "charge"]
        if (instance.status != "completed" or calls[-1] != ("fulfil/pay/charge#1", expected)
                or charges != [("fulfil/pay/charge#1", "completed", expected)]):
            wrong.append((seed, calls, charges))
    assert not wrong, wrong


# -- 2. a fan-out's own nursery cancel makes a clean stop look like a fail-fast ---------------------


async def _long(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(5)
    return "long"


async def _short(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(0.8)
    return "short"


async def _item(ctx: tf.WorkflowContext) -> int:
    await trio.sleep(0.8 if ctx.item == 2 else 5)
    return int(ctx.item)


def _definition(kind: str) -> tf.WorkflowDefinition:
    if kind == "parallel":
        return (tf.workflow("w").parallel("par", branches=[
            tf.branch("b0").step("c", _long).build(),
            tf.branch("b1").step("d", _long).build(),
            tf.branch("b2").step("s", _short).build()]).build())
    if kind == "map":
        return tf.workflow("w").map("m", items=lambda ctx: [0, 1, 2], branch=tf.branch("it").step("t", _item).build()).build()
    assert kind == "transactional"

    async def pre(ctx: tf.WorkflowContext) -> int:
        return 1

    return (tf.workflow("w").step("pre", pre).parallel("par", branches=[
        tf.branch("b0").step("c", _long).build(),
        tf.branch("b1").step("s", _short).build()]).transactional().build())


async def _fanout_across_a_restart(kind: str) -> tuple[tf.WorkflowInstance, list[dict[str, Any]]]:
    options: dict[str, Any] = {"driver": tf.adapters.MemoryDriver()} if kind == "transactional" else {}
    return await _restarted(_definition(kind), 0.8, **options)


@pytest.mark.parametrize("kind", ["parallel", "map", "transactional"])
def test_a_clean_stop_records_and_publishes_no_cancel_beside_another_cut_branch(kind: str) -> None:
    """A user runs a parallel step (``on_error`` left at its default, fail-fast), a map, or a
    transactional workflow's parallel step; some branches (items) are under way when the
    service is shut down cleanly in the instant another completes; nothing fails, nothing is
    cancelled, no timeout comes. A monitoring service counts ``workflow.step.failed`` events
    with ``error_name == "Cancelled"``, and jobs use ``execution_id`` as an idempotency key.

    Expected (README: an execution "an engine's clean stop alone cut short" runs again on
    resume "as the same execution"; Events: "no end is published for it by the engine that
    stopped"): the instance completes with no failed record, no ``Cancelled`` event, and each
    execution ends exactly once under its first id.

    Was (3 to 4 scheduler orders of 12): one branch's (item's) step is recorded
    ``failed`` (Cancelled) and published so; it runs again as ``#2`` (parallel, map), or, in the
    transactional run (rolled back, so run again from its start), the same execution ``c#1`` is
    published ``failed`` (Cancelled) by the closing engine and ``completed`` by the next: two ends
    for one execution, one a cancel that never happened."""
    wrong: list[Any] = []
    for seed, (instance, events) in seeded_runs(_fanout_across_a_restart, kind, seeds=range(12)):
        failed = [(r.id, r.error_name) for r in instance.history if r.status == "failed"]
        cancels = [e["execution_id"] for e in events if e["event"] == "workflow.step.failed"]
        ends: dict[str, int] = {}
        for e in events:
            if e["event"] in ("workflow.step.completed", "workflow.step.failed"):
                ends[e["execution_id"]] = ends.get(e["execution_id"], 0) + 1
        reruns = sorted(r.id for r in instance.history if r.id.endswith("#2"))
        if kind == "transactional":
            # (A completion inside the transaction may be published again by the next engine,
            # which runs it again from the rollback: README, Events; only the false cancel counts.)
            ends = {execution: n for execution, n in ends.items() if execution in cancels}
        if instance.status != "completed" or failed or cancels or reruns or any(n != 1 for n in ends.values()):
            wrong.append((seed, failed, cancels, reruns, {k: n for k, n in ends.items() if n != 1}))
    assert not wrong, wrong


async def test_an_instance_taken_up_at_its_workflow_deadline_runs_no_job(
        autojump_clock: trio.testing.MockClock) -> None:
    """From the same review (noted, older): an engine reopened at the very instant of a stored
    instance's workflow deadline called its step's job once more (its synchronous start ran)
    before it timed out: trio sees a deadline equal to now only at the next pass of its
    scheduler. It now times out without calling the job, as when taken up later."""
    calls: list[float] = []

    async def slow(_: Any) -> str:
        calls.append(trio.current_time())
        await trio.sleep(10)
        return "slow"

    adapter = MemoryAdapter()
    wf = tf.workflow("w").step("s", slow).with_timeout(0.8).build()
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(0.3)
    await trio.sleep(0.5)  # the new engine opens at the deadline exactly
    assert len(calls) == 1
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        done = await engine.wait(iid)
    assert done.status == "timed_out"
    assert len(calls) == 1, calls
