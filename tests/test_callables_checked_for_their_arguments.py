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
