"""Predicates and hooks that can take what they are given are accepted by the argument checks
of build(): callable objects, partials, ``*args``, mocks, bound and static methods, keyword-only
defaults; one that cannot is refused (the adversarial review of c508bd6, December 5th)."""

from __future__ import annotations

import functools
from typing import Any
from unittest import mock

import pytest
import trioflow as tf


async def _job(ctx: tf.WorkflowContext) -> int:
    raise ValueError("x")


class Pred:
    def __call__(self, error: BaseException) -> bool:
        return isinstance(error, ValueError)


class Hooks:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_start(self, ctx: Any) -> None:
        self.seen.append("start")

    def step_done(self, step_name: str, output: Any, ctx: Any) -> None:
        self.seen.append(step_name)

    @staticmethod
    def failed(result: Any) -> None:
        pass


def _three(tag: str, step_name: str, output: Any, ctx: Any) -> None:
    pass


def _kw(step_name: str, output: Any, ctx: Any, *, extra: int = 0) -> None:
    pass


def _args(*a: Any) -> None:
    pass


@pytest.mark.parametrize("pred", [Pred(), functools.partial(lambda tag, error: True, "t"), lambda error, extra=1: True,
                                  _args, mock.Mock(return_value=True), ValueError])
def test_catch_predicates_accepted(pred: Any) -> None:
    tf.workflow("w").step("a", _job, catch=tf.Catch(errors=[pred], next="b")).pass_("b").build()


@pytest.mark.parametrize("pred", [Pred(), functools.partial(lambda tag, error: True, "t"), _args])
def test_retry_predicates_accepted(pred: Any) -> None:
    tf.workflow("w").step("a", _job, retry=tf.Retry(max_attempts=2, retry_on=[pred])).build()


def test_hooks_accepted() -> None:
    h = Hooks()
    (tf.workflow("w").pass_("a")
     .with_hooks(on_start=h.on_start, on_step_complete=h.step_done, on_failed=Hooks.failed,
                 on_complete=mock.AsyncMock(), on_step_failed=functools.partial(_three, "t"),
                 on_compensate=_args)
     .build())
    tf.workflow("w").pass_("a").with_hooks(on_step_complete=_kw, on_start=None).build()


@pytest.mark.parametrize("bad", [lambda: None, lambda a, b: None, functools.partial(_three, "t", "x")])
def test_hooks_refused(bad: Any) -> None:
    with pytest.raises(tf.DefinitionError):
        tf.workflow("w").pass_("a").with_hooks(on_start=bad).build()


async def test_callable_instance_predicate_runs(autojump_clock: Any) -> None:
    wf = tf.workflow("w").step("a", _job, catch=tf.Catch(errors=[Pred()], next="b")).pass_("b", result=1).build()
    out = await tf.execute_workflow(None, wf, None)
    assert out.status == "completed", out
