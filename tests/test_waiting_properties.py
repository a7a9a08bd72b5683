"""Property test: generated scenarios of start / signal / cancel / sleep / restart (and
signals and cancels sent from background tasks, over a storage whose calls take time) on one
storage, checked against the durable-waiting contract (SPEC §13, docs/waiting.md).

What is checked, per instance, at the end (after 100 virtual seconds with an engine open and a
cancel of whatever still waits for a signal): every signal whose ``signal()`` returned is in the
history as a receive step's output or still pending, exactly once; signals of one name keep
the order they were sent in; a receive with a timeout times out no earlier than its deadline
and never while a signal sent before the deadline was there; a timer fires once and not early;
a delayed start does not run its first step early; a cancel that said True ends cancelled;
``wait()`` agrees with ``get_instance``; nothing but a signal wait stays running; no ERROR log.
The scenarios and their checks are in ``waiting_scenarios.py``; test_waiting_races_review.py
holds what this found, each as an explicit scenario.
"""

from __future__ import annotations

import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trioflow as tf
from waiting_scenarios import RECEIVES, run_ops

KINDS = sorted(RECEIVES)
N = 200

plain = st.one_of(
    st.tuples(st.just("start"), st.sampled_from(KINDS), st.sampled_from([None, None, 0.3, 2.5])),
    st.tuples(st.just("signal"), st.integers(0, 5), st.sampled_from(["go", "go", "other"]), st.booleans()),
    st.tuples(st.just("cancel"), st.integers(0, 5)),
    st.tuples(st.just("sleep"), st.sampled_from([0.0, 0.01, 0.3, 0.5, 1.0, 1.2, 2.0, 3.0, 3.1, 40.0])),
    st.tuples(st.just("restart")),
    st.tuples(st.just("check")),
)
bg = st.tuples(st.just("bg"), st.one_of(
    st.tuples(st.just("signal"), st.integers(0, 5), st.sampled_from(["go", "go", "other"]), st.booleans()),
    st.tuples(st.just("cancel"), st.integers(0, 5)),
))
bg = st.one_of(bg, st.tuples(st.just("wait"), st.integers(0, 5)),
               st.tuples(st.just("resume")))
op = st.one_of(plain, plain, bg)
lags = st.lists(st.sampled_from([0.0, 0.0, 0.0, 0.001, 0.05, 0.3, 1.5]), max_size=8)


@settings(max_examples=N, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(plain, min_size=1, max_size=25))
def test_memory_scenarios(ops: list[tuple]) -> None:
    problems = run_ops(ops)
    assert not problems, problems


@settings(max_examples=N, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(op, min_size=1, max_size=30), lags, st.sampled_from([1, 2, 10_000]))
def test_concurrent_scenarios_on_a_slow_storage(ops: list[tuple], lags: list[float], max_running: int) -> None:
    problems = run_ops(ops, lags=lags, max_running=max_running)
    assert not problems, problems


@settings(max_examples=max(N // 6, 10), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(plain.filter(lambda o: o[0] != "sleep" or o[1] <= 3.1), min_size=1, max_size=12))
def test_sqlite_scenarios(ops: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as d:
        problems = run_ops(ops, lambda: tf.adapters.SQLiteAdapter(f"{d}/f.db"))
    assert not problems, problems
