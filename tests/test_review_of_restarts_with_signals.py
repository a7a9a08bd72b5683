"""From an adversarial review (crashprops2) of signals, timers, child workflows and cancels under
engine restarts, found with hypothesis: generated sequences of starts (receives with and
without a timeout and a catch, short and long timers, a map of children that each receive a
signal, a map whose items receive and wait, delayed starts), signals (in the foreground, and in
the background as the engine closes), cancels of parents and children, virtual time, clean
restarts on a MemoryAdapter or a SQLite file (``resume=True``, ``resume=False`` then
``engine.resume()``, ``resume=False`` with ``resume()`` later or never), under a seeded trio
scheduler, checked against a model (tests/restart_scenarios.py).

The shrunk example is the plain test below: a task step in flight in one of three or more map
items (or parallel branches), cut by a clean close in the instant another item checkpoints, was
recorded cut short and ran again under a new execution id (a nursery cancels itself as a task
ends with the engine's cancel, which ``Run.stopped_alone`` took for a fail-fast); it failed
until 39df03f (``Run.fail_fast``). The property tests check the step events too.
"""

from __future__ import annotations

import tempfile
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trioflow as tf
from restart_scenarios import run_scenario
from trioflow.testing import open_test_engine
from seeded_runs import seeded_runs


# -- 1. a step under way in one of 3+ items/branches as the engine closes cleanly ------------------

def _fanout(shape: str, calls: list[str]) -> tf.WorkflowDefinition:
    async def label(ctx: tf.WorkflowContext) -> str:
        # An effect elsewhere keyed by tf.current_step().execution_id, as README advises.
        calls.append(tf.current_step().execution_id)
        await trio.sleep(5)  # a slow call: under way when the service shuts down
        return "labelled"

    if shape == "map":  # a batch: each order waits for its "go" then prints a label
        return (tf.workflow("batch")
                .map("orders", items=lambda ctx: [0, 1, 2], max_concurrency=3,
                     branch=tf.branch("one").receive("approve", signal="go").step("label", label).build())
                .build())
    return (tf.workflow("batch")  # the same with three parallel branches
            .parallel("orders", branches=[
                tf.branch("a").step("label", label).build(),
                tf.branch("b").step("label-b", label).build(),
                tf.branch("c").receive("approve", signal="go").build()])
            .build())


async def _clean_restart(shape: str) -> tuple[tf.WorkflowInstance, list[str], list[tuple[str, str]]]:
    calls: list[str] = []
    failed: list[tuple[str, str]] = []
    storage = tf.adapters.MemoryAdapter()

    def note(event: dict[str, Any]) -> None:
        failed.append((event["execution_id"], event["error_name"]))

    async with open_test_engine(adapter=storage) as engine:
        engine.register(_fanout(shape, calls))
        engine.events.on("workflow.step.failed", note)
        iid = await engine.start("batch", {}, instance_id="batch-1")
        if shape == "map":
            await engine.signal(iid, "go", {"order": 0})
            await engine.signal(iid, "go", {"order": 1})
        await trio.sleep(0.01)
        # The last approval comes in; it is stored (signal() returned) and the service then
        # shuts down cleanly, in the same instant.
        await engine.signal(iid, "go", {"order": 2})
    async with open_test_engine(adapter=storage) as engine:  # the service starts again
        engine.register(_fanout(shape, calls))
        engine.events.on("workflow.step.failed", note)
        instance = await engine.wait(iid)
    return instance, calls, failed


def test_a_step_under_way_in_one_of_three_items_keeps_its_execution_across_a_clean_restart() -> None:
    """A user runs a batch as a map of 3 items (or a parallel step of 3 branches); each item
    waits for a ``go`` signal and then runs a slow ``label`` step whose idempotency key is
    ``tf.current_step().execution_id``. While two labels are being printed, the last ``go``
    arrives and the service is shut down cleanly in that instant; a new engine opens on the
    same storage.

    Expected (README: a step an engine's stop cut short "that the next engine runs again starts
    again under the same ``execution_id``", "no end is published for it by the engine that
    stopped"; the fix of 8dfb7f5, ``Run.stopped_alone``): the labels in flight run again as
    ``label#1`` (same idempotency key), the instance completes with no failed record, and no
    ``workflow.step.failed`` is published: nothing was cancelled.

    Was (every seed, map and parallel alike): the closing engine records
    ``orders/#k/label#1 failed "Cancelled"`` (and publishes ``workflow.step.failed`` with
    ``error_name="Cancelled"``) for one of the labels in flight, and the next engine runs it as
    a new execution ``orders/#k/label#2``: a second label under a new idempotency key (a double
    effect at any service that dedupes by it) and a cancellation that never happened in the
    history of a batch that completed. A receive waiting in a third item gets the same false
    ``Cancelled`` event (found by the property test). With 2 items or branches it holds.
    """
    wrong: list[Any] = []
    for shape in ("map", "parallel"):
        for seed, (instance, calls, failed) in seeded_runs(_clean_restart, shape, seeds=range(4)):
            bad_records = [(h.id, h.status, h.error_name) for h in instance.history if h.status == "failed"]
            new_keys = sorted({c for c in calls if not c.endswith("#1")})
            if instance.status != "completed" or bad_records or new_keys or failed:
                wrong.append((shape, seed, instance.status, bad_records, new_keys, failed))
    assert not wrong, wrong


# -- the generated scenarios ------------------------------------------------------------------------

KINDS = ["kid", "fan", "fan", "fanrecv", "recv", "recv_to", "wait_short", "wait_long"]
sub = st.one_of(st.none(), st.integers(0, 3))
op = st.one_of(
    st.tuples(st.just("start"), st.sampled_from(KINDS), st.sampled_from([None, None, 0.3, 2.5])),
    st.tuples(st.just("signal"), st.integers(0, 5), sub),
    st.tuples(st.just("bgsignal"), st.integers(0, 5), sub),
    st.tuples(st.just("cancel"), st.integers(0, 5), sub),
    st.tuples(st.just("bgcancel"), st.integers(0, 5), sub),
    st.tuples(st.just("resume")),
    st.tuples(st.just("again"), st.integers(0, 5)),
    st.tuples(st.just("sleep"), st.sampled_from([0.0, 0.01, 0.25, 0.3, 0.5, 0.6, 1.0, 1.01, 1.2, 1.5, 2.0, 2.5,
                                                 3.0, 3.5, 4.5, 5.0, 6.0, 40.0])),
    st.tuples(st.just("restart"), st.sampled_from(["resume", "noresume", "late"])),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(op, min_size=1, max_size=20), st.integers(0, 7), st.sampled_from([1, 2, 10_000]))
def test_generated_scenarios_on_memory_keep_signals_timers_children_and_cancels(
        ops: list[tuple], seed: int, max_running: int) -> None:
    """Every signal whose signal() returned is taken once (in order per name where one receive
    waits), or still pending; a signal sent before a receive's deadline is taken; timers fire
    once and not early; each execution ends once in history; no child is started twice; a
    cancelled (or failed) parent leaves no child completed (undone); cancel() True ends
    cancelled; nothing but a signal wait is left running; no ERROR log."""
    problems, trace = run_scenario(ops, seed, max_running=max_running)
    assert not problems, (problems, trace)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(op, min_size=1, max_size=14), st.integers(0, 3), st.sampled_from([1, 10_000]))
def test_generated_scenarios_on_sqlite_keep_signals_timers_children_and_cancels(
        ops: list[tuple], seed: int, max_running: int) -> None:
    """The same on a SQLite file (its writer thread lets virtual time run while it writes)."""
    with tempfile.TemporaryDirectory() as d:
        problems, trace = run_scenario(ops, seed, sqlite_path=f"{d}/f.db", max_running=max_running)
    assert not problems, (problems, trace)
