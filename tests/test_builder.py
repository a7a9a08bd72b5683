"""The builder and build-time validation (SPEC §7): every error names the step."""

from __future__ import annotations

import re
from typing import Any

import attrs
import pytest

import trioflow as tf


async def noop(ctx: Any) -> None:
    return None


async def undo(ctx: Any, result: Any) -> None:
    return None


def test_saga_builder_produces_frozen_definition_with_fall_through() -> None:
    wf = tf.workflow("w").step("a", noop).step(tf.step("b", noop, undo)).step("c", noop).build()
    assert [s.name for s in wf.steps] == ["a", "b", "c"]
    assert [s.next for s in wf.steps] == ["b", "c", None]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        wf.name = "other"  # type: ignore[misc]


def test_workflow_options_are_stored() -> None:
    retry = tf.Retry(max_attempts=5)
    hook = lambda result: None  # noqa: E731
    wf = (tf.workflow("w").step("a", noop).with_data({"source": "web"}).transactional()
          .with_timeout(30).default_retry(retry).with_hooks(on_complete=hook).build())
    assert wf.data == {"source": "web"} and wf.transactional and wf.timeout == 30.0
    assert wf.hooks.on_complete is hook
    assert wf.steps[0].retry == retry  # type: ignore[union-attr]


def test_default_retry_reaches_branch_tasks_but_not_steps_with_their_own() -> None:
    own = tf.Retry(max_attempts=9)
    branch = tf.branch("b").task("x", job="j").task("y", job="j", retry=own).build()
    wf = tf.workflow("w").default_retry(tf.Retry(max_attempts=2)).parallel("p", branches=[branch]).build()
    steps = {name: step for name, (step, _) in wf.lookup.items()}
    assert steps["x"].retry.max_attempts == 2  # type: ignore[union-attr]
    assert steps["y"].retry is own  # type: ignore[union-attr]


def test_branch_factory_is_reachable_from_workflow() -> None:
    assert tf.workflow.branch("b").task("t", job="j").build().name == "b"


def test_job_names_are_collected_from_tasks_and_compensations() -> None:
    wf = (tf.workflow("w").task("a", job="ja", compensate="undo-a")
          .parallel("p", branches=[tf.branch("b").task("x", job="jx").build()]).build())
    assert wf.job_names == {"ja", "undo-a", "jx"}


def test_fingerprint_tracks_shape_not_callables() -> None:
    a = tf.workflow("w").step("a", noop).step("b", noop).build()
    b = tf.workflow("w").step("a", lambda ctx: 1).step("b", noop).build()
    c = tf.workflow("w").step("a", noop).step("c", noop).build()
    assert a.fingerprint == b.fingerprint != c.fingerprint


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: tf.workflow("w").build(), "workflow 'w' has no steps"),
        (lambda: tf.branch("b").build(), "branch 'b' has no steps"),
        (lambda: tf.workflow("w").step("a", noop).step("a", noop).build(), "step name 'a' is used twice"),
        (lambda: tf.workflow("w").step("a", noop, next="zzz").build(), "step 'a': next 'zzz' is not a step"),
        (lambda: tf.workflow("w").step("a", noop, next="b", end=True).step("b", noop).build(),
         "step 'a': 'next' and 'end' are mutually exclusive"),
        (lambda: tf.workflow("w").choice("c", choices=[]).build(), "step 'c': a choice step needs at least one choice"),
        (lambda: tf.workflow("w").choice("c", choices=[tf.when(bool, next="a")], default="nowhere")
         .step("a", noop).build(), "step 'c': default 'nowhere' is not a step"),
        (lambda: tf.workflow("w").choice("c", choices=[tf.when(bool, next="nowhere")]).build(),
         "step 'c': choice next 'nowhere'"),
        (lambda: tf.workflow("w").step("a", noop, end=True).step("b", noop).build(), "step 'b': can never be reached"),
        (lambda: tf.workflow("w").parallel("p", branches=[]).build(), "step 'p': a parallel step needs at least one branch"),
        (lambda: tf.workflow("w").parallel("p", branches=[tf.branch("b").task("x", job="j").build()] * 2).build(),
         "branch name 'b' is used twice"),
        (lambda: tf.workflow("w").parallel("p", branches=[tf.branch("b").task("x", job="j").build()],
                                           on_error="sometimes").build(),  # type: ignore[arg-type]
         "on_error must be 'fail-fast' or 'wait-all'"),
        (lambda: tf.workflow("w").task("a", job="j").parallel(
            "p", branches=[tf.branch("b").task("a", job="j").build()]).build(), "step name 'a' is used twice"),
        (lambda: tf.workflow("w").pass_("p", transform=lambda c: 1, result=2).build(),
         "step 'p': give either 'transform' or 'result'"),
        (lambda: tf.workflow("w").task("t", job=42).build(), "step 't': job must be a callable or a job name"),  # type: ignore[arg-type]
        (lambda: tf.workflow("w").step("t", noop, timeout=0).build(), "step 't': timeout must be"),
        (lambda: tf.workflow("w").step("t", noop, retry=3).build(), "step 't': retry must be a trioflow.Retry"),  # type: ignore[arg-type]
        (lambda: tf.workflow("w").with_timeout(-1), "timeout must be a number of seconds > 0"),
        (lambda: tf.workflow("w").with_hooks(on_party=print), "unknown hook"),
        (lambda: tf.workflow("w").with_hooks(on_start=5), "workflow 'w': hook on_start must be a function, got 5"),
        (lambda: tf.workflow("w").transactional("no"),  # type: ignore[arg-type]
         "workflow 'w': transactional takes True or False, got 'no'"),
        (lambda: tf.workflow(""), "non-empty string"),
    ],
)
def test_invalid_definitions_are_rejected_naming_the_step(build: Any, message: str) -> None:
    with pytest.raises(tf.DefinitionError, match=re.escape(message)):
        build()


def test_definition_error_is_a_value_error_and_a_trioflow_error() -> None:
    with pytest.raises(ValueError):
        tf.workflow("w").build()
    assert issubclass(tf.DefinitionError, tf.TrioflowError)


def test_choice_loops_back_are_reachable_and_valid() -> None:
    wf = (tf.workflow("w").task("poll", job="j")
          .choice("done?", choices=[tf.when(lambda c: True, next="finish")], default="poll")
          .end("finish").build())
    assert wf.steps[-1].end


def test_compensation_timeout_defaults_to_five_minutes_and_can_be_set_or_lifted() -> None:
    assert tf.workflow("w").step("a", lambda ctx: None).build().compensation_timeout == 300.0
    assert tf.workflow("w").step("a", lambda ctx: None).with_compensation_timeout(5).build().compensation_timeout == 5.0
    assert tf.workflow("w").step("a", lambda ctx: None).with_compensation_timeout(None).build().compensation_timeout is None
    with pytest.raises(tf.DefinitionError, match="compensation: timeout must be a number of seconds > 0"):
        tf.workflow("w").with_compensation_timeout(float("nan"))
