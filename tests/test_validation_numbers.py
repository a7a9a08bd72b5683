"""Numbers that are not numbers: NaN, infinities and bools in timeouts and retry policies.

``nan < 0`` is false, so a validator that asks "is it negative?" lets NaN through, and ``True``
is an ``int``; each case here must be refused with a :class:`trioflow.DefinitionError` whose
message names the field and the value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

import trioflow as tf

NAN = float("nan")
INF = float("inf")


def job(data: Any) -> None:
    return None


#: Every way to give a step a timeout, each building a definition with the timeout given.
STEP_TIMEOUTS: dict[str, Callable[[Any], object]] = {
    "task": lambda t: tf.workflow("w").task("a", job=job, timeout=t).build(),
    "step": lambda t: tf.workflow("w").step("a", job, timeout=t).build(),
    "tf.step": lambda t: tf.workflow("w").step(tf.step("a", job, timeout=t)).build(),
    "branch task": lambda t: tf.branch("b").task("a", job=job, timeout=t).build(),
}


@pytest.mark.parametrize("value", [NAN, True, False, -INF, 0, -1, "5"], ids=repr)
def test_a_workflow_timeout_must_be_a_positive_number_of_seconds(value: Any) -> None:
    with pytest.raises(tf.DefinitionError, match=rf"workflow 'w': timeout must be .* got {re.escape(repr(value))}$"):
        tf.workflow("w").with_timeout(value)


@pytest.mark.parametrize("value", [NAN, True, -INF, 0], ids=repr)
@pytest.mark.parametrize("how", STEP_TIMEOUTS)
def test_a_step_timeout_must_be_a_positive_number_of_seconds(how: str, value: Any) -> None:
    with pytest.raises(tf.DefinitionError, match=rf"step 'a': timeout must be .* got {re.escape(repr(value))}$"):
        STEP_TIMEOUTS[how](value)


def test_an_infinite_timeout_is_accepted_as_one_that_never_expires() -> None:
    # Like a trio deadline of ``inf``: a coherent way to say "no limit", not a mistake.
    assert tf.workflow("w").with_timeout(INF).task("a", job=job).build().timeout == INF
    for build in STEP_TIMEOUTS.values():
        build(INF)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", True),
        ("interval", NAN), ("interval", INF), ("interval", True), ("interval", -1),
        ("backoff_rate", NAN), ("backoff_rate", INF), ("backoff_rate", True), ("backoff_rate", 0.5),
        ("max_interval", NAN), ("max_interval", INF), ("max_interval", False), ("max_interval", -2),
    ],
    ids=lambda v: v if isinstance(v, str) else repr(v),
)
def test_retry_numbers_must_be_finite_numbers_in_range(field: str, value: Any) -> None:
    with pytest.raises(tf.DefinitionError, match=rf"^Retry\.{field} must be .* got {re.escape(repr(value))}$"):
        tf.Retry(**{field: value})


def test_an_interval_above_max_interval_is_refused_naming_both_values() -> None:
    with pytest.raises(tf.DefinitionError, match=r"Retry\.interval \(60\) .* Retry\.max_interval \(30\.0\)"):
        tf.Retry(interval=60)
    assert tf.Retry(interval=60, max_interval=60).delay(3) == 60.0


@pytest.mark.parametrize("retry_on", [5, [3], [int], ("busy", None)], ids=repr)
def test_retry_on_errors_are_definition_errors(retry_on: Any) -> None:
    with pytest.raises(tf.DefinitionError, match=r"^Retry\.retry_on"):
        tf.Retry(retry_on=retry_on)


def test_retry_errors_still_are_value_errors() -> None:
    with pytest.raises(ValueError, match="interval"):
        tf.Retry(interval=NAN)


def test_the_delay_of_a_long_polling_policy_stays_at_the_cap() -> None:
    # ``2.0 ** 1500`` overflows floats; the delay is then simply the cap (or 0 with no interval).
    polling = tf.Retry(max_attempts=10_000, interval=1, max_interval=60)
    assert polling.delay(1500) == 60.0 and polling.next_delay(5000, RuntimeError()) == 60.0
    assert tf.Retry(max_attempts=10_000, interval=0).delay(1500) == 0.0
    assert tf.Retry(max_attempts=10_000, interval=0, backoff_rate=5).delay(9000) == 0.0
