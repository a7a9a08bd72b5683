"""``build()`` refuses any callable that cannot take the arguments trioflow will call it with,
naming the step, the field and how it is called; it did so only for a task's job, execute and
compensate. A task's ``output=lambda r: ...`` (it is called ``output(result, ctx)``) built, and
then failed its step after the job had charged the card, with a bare ``TypeError`` and nothing
compensated (the newcomer review of December 5th). Callables that take what they are given
(``*args``, defaults) still build."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trioflow as tf


async def _job(data: Any) -> None:
    return None


def _none() -> None:
    return None


def _two(a: Any, b: Any) -> None:
    return None


def _items_branch() -> tf.Branch:
    return tf.branch("each").task("one", job=_job).build()


BAD: dict[str, tuple[Callable[[], tf.WorkflowBuilder], str]] = {
    "task output": (lambda: tf.workflow("w").task("s", job=_job, output=lambda r: r), "output(result, ctx)"),
    "task input": (lambda: tf.workflow("w").task("s", job=_job, input=_two), "input(ctx)"),
    "choice condition": (lambda: tf.workflow("w").choice("s", choices=[tf.Choice(condition=_none, next="t")])
                         .task("t", job=_job), "condition(ctx)"),
    "pass transform": (lambda: tf.workflow("w").pass_("s", transform=_two), "transform(ctx)"),
    "fail cause": (lambda: tf.workflow("w").fail("s", error="E", cause=_none), "cause(ctx)"),
    "succeed output": (lambda: tf.workflow("w").succeed("s", output=_two), "output(ctx)"),
    "wait seconds": (lambda: tf.workflow("w").wait("s", seconds=_none), "seconds(ctx)"),
    "wait until": (lambda: tf.workflow("w").wait("s", until=_two), "until(ctx)"),
    "map items": (lambda: tf.workflow("w").map("s", items=_none, branch=_items_branch()), "items(ctx)"),
    "child input": (lambda: tf.workflow("w").child("s", workflow="other", input=_two), "input(ctx)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_callable_that_cannot_take_its_arguments_is_refused_at_build(case: str) -> None:
    make, called = BAD[case]
    with pytest.raises(tf.DefinitionError) as caught:
        make().build()
    message = str(caught.value)
    assert "step 's'" in message and called in message, message


GOOD: dict[str, Callable[[], tf.WorkflowBuilder]] = {
    "output taking *args": lambda: tf.workflow("w").task("s", job=_job, output=lambda *a: a[0]),
    "output with a default": lambda: tf.workflow("w").task("s", job=_job, output=lambda r, ctx=None, extra=1: r),
    "condition of ctx": lambda: tf.workflow("w").choice("s", choices=[tf.Choice(condition=lambda ctx: True, next="t")])
    .task("t", job=_job),
    "seconds of ctx": lambda: tf.workflow("w").wait("s", seconds=lambda ctx: 1),
    "items of ctx": lambda: tf.workflow("w").map("s", items=lambda ctx: [1], branch=_items_branch()),
    "a builtin": lambda: tf.workflow("w").task("s", job=_job, output=max),
}


@pytest.mark.parametrize("case", list(GOOD))
def test_callables_that_take_their_arguments_still_build(case: str) -> None:
    GOOD[case]().build()


async def _boom(ctx: tf.WorkflowContext) -> None:
    raise ValueError("x")


# From the adversarial review of the check (December 5th): a catch or retry predicate is called
# predicate(error), an entity step's column function fn(ctx), each hook with what it is told.
# A zero-argument predicate replaced the step's own error with a TypeError at run time, and the
# catch was skipped; a hook that cannot take its arguments failed, logged, at every run.
MORE_BAD: dict[str, tuple[Callable[[], Any], str]] = {
    "catch predicate": (lambda: tf.workflow("w").step("s", _boom, catch=tf.Catch(errors=[lambda: True], next="h"))
                        .step("h", _job).build(), "predicate(error)"),
    "retry_on predicate": (lambda: tf.Retry(max_attempts=2, retry_on=[lambda: True]), "predicate(error)"),
    "entity data_fn": (lambda: tf.create_entity_step("s", "users", lambda: {"a": 1}), "data_fn(ctx)"),
    "entity where_fn": (lambda: tf.delete_entity_step("s", "users", _two), "where_fn(ctx)"),
    "hook on_step_complete": (lambda: tf.workflow("w").step("s", _job).with_hooks(on_step_complete=_two),
                              "on_step_complete(step_name, output, ctx)"),
    "hook on_complete": (lambda: tf.workflow("w").step("s", _job).with_hooks(on_complete=_none), "on_complete(result)"),
}


@pytest.mark.parametrize("case", list(MORE_BAD))
def test_predicates_column_functions_and_hooks_are_checked_as_they_are_given(case: str) -> None:
    make, called = MORE_BAD[case]
    with pytest.raises(tf.DefinitionError) as caught:
        make()
    assert called in str(caught.value), caught.value


def test_predicates_and_hooks_that_take_their_arguments_still_build() -> None:
    (tf.workflow("w").step("s", _boom, retry=tf.Retry(max_attempts=2, retry_on=[lambda error: True]),
                           catch=tf.Catch(errors=[lambda e, *rest: True, ValueError, "x", tf.ALL], next="h"))
     .step("h", _job).with_hooks(on_start=lambda ctx: None, on_step_failed=lambda *a: None, on_failed=print).build())
