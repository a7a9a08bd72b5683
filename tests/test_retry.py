"""Retry policy: defaults, the delay formula, retry_on precedence, validation."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import trioflow as tf


def test_defaults_follow_the_seeds() -> None:
    r = tf.Retry()
    assert (r.max_attempts, r.interval, r.backoff_rate, r.max_interval, r.retry_on) == (3, 1.0, 2.0, 30.0, None)


@given(
    interval=st.floats(0, 100), backoff=st.floats(1, 5), cap=st.floats(0, 1000), n=st.integers(1, 30),
)
def test_delay_follows_the_formula(interval: float, backoff: float, cap: float, n: int) -> None:
    assume(interval <= cap)  # a policy whose interval exceeds its cap is refused (test_validation_numbers)
    r = tf.Retry(max_attempts=50, interval=interval, backoff_rate=backoff, max_interval=cap)
    assert r.delay(n) == min(interval * backoff ** (n - 1), cap)


@given(max_attempts=st.integers(1, 20), attempt=st.integers(1, 25))
def test_no_sleep_after_the_last_attempt(max_attempts: int, attempt: int) -> None:
    r = tf.Retry(max_attempts=max_attempts)
    delay = r.next_delay(attempt, RuntimeError("x"))
    assert (delay is None) == (attempt >= max_attempts)


class Transient(Exception):
    pass


def test_retry_on_types_strings_and_predicates() -> None:
    r = tf.Retry(retry_on=[Transient, "busy", lambda e: getattr(e, "code", 0) == 503])
    assert r.retries(Transient())
    assert r.retries(RuntimeError("server busy, try later"))
    assert r.retries(type("HTTPError", (Exception,), {"code": 503})())
    assert not r.retries(ValueError("bad input"))
    assert r.next_delay(1, ValueError("bad input")) is None


def test_retry_on_string_matches_the_class_name() -> None:
    assert tf.Retry(retry_on="ConnectionError").retries(ConnectionError())


def test_retry_on_single_type_is_accepted() -> None:
    assert tf.Retry(retry_on=KeyError).retry_on == (KeyError,)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"max_attempts": 0}, "max_attempts"), ({"interval": -1}, "interval"), ({"backoff_rate": 0.5}, "backoff_rate"),
     ({"max_interval": -2}, "max_interval"), ({"retry_on": [3]}, "retry_on")],
)
def test_invalid_policies_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        tf.Retry(**kwargs)  # type: ignore[arg-type]
