"""Review of the fixes after 6df983d (each test failed before its fix).

All run on trio's autojumping MockClock (``trioflow.testing.run``): no real sleeps; a run that
would hang ends at a virtual deadline instead.
"""

from __future__ import annotations

import math
import pickle

import trio

import trioflow as tf
from trioflow.testing import run

HANG = 10**10  # virtual seconds: far beyond anything these runs need


def test_execute_workflow_receive_without_step_timeout_still_obeys_the_workflow_timeout() -> None:
    """Fix 3 (``run_receive`` fails a receive step without a timeout at once under
    execute_workflow) assumes such a step "would wait for ever". It would not when the
    workflow has a timeout: before the fix (6df983d) this run ended ``timed_out`` with
    ``WorkflowTimeoutError`` after 3600 s, its completed step compensated, which is what
    README/SPEC promise for a workflow timeout ("an instance past it ends timed_out and is
    compensated") and what docs/waiting.md says of execute_workflow ("A receive step there can
    only time out").

    Expected: status ``timed_out``, error_name ``WorkflowTimeoutError``.
    Actual: status ``failed`` at once, with ``InvalidArgumentError`` ("waits for signal
    'approved' with no timeout, and execute_workflow has no engine to signal it"): a test of
    the approval-never-comes path changes outcome."""

    async def main() -> tuple[str, str | None]:
        wf = (tf.workflow("expense")
              .step("reserve", lambda ctx: 1, lambda ctx, r: None)
              .receive("approve", signal="approved")
              .with_timeout(3600)
              .build())
        with trio.fail_after(HANG):
            result = await tf.execute_workflow(None, wf)
        return result.status, result.error_name

    status, error_name = run(main)
    assert (status, error_name) == ("timed_out", "WorkflowTimeoutError"), (status, error_name)


def test_execute_workflow_receive_with_infinite_timeout_does_not_hang() -> None:
    """Fix 3 fails a receive step "without a timeout" at once under execute_workflow, rather
    than hang, but checks only ``step.timeout is None``. ``timeout=math.inf`` is accepted by
    build() (``check_timeout``: "inf is accepted: like a trio deadline of inf, it never
    expires"), i.e. it is also no timeout, and nothing can signal the step.

    Expected: the run ends (fails, as with ``timeout=None``), or build() refuses it.
    Actual: execute_workflow waits for ever (still waiting after 10**10 virtual seconds)."""

    async def main() -> bool:
        wf = tf.workflow("r").receive("r", signal="approved", timeout=math.inf).build()
        with trio.move_on_after(HANG) as scope:
            await tf.execute_workflow(None, wf)
        return scope.cancelled_caught

    assert not run(main), "execute_workflow hung on a receive step whose timeout is inf"


def test_a_result_failed_by_a_ctx_steps_typo_can_be_pickled() -> None:
    """Fix 5 made ``ctx.steps[missing]`` raise ``trioflow._context._MissingStep`` with its
    ``__name__``/``__qualname__`` rewritten to "KeyError". Pickle finds classes by module and
    qualname, and ``trioflow._context.KeyError`` does not exist, so the error (and every
    ``WorkflowResult`` carrying it in ``.error``) can no longer be pickled, e.g. to hand it to
    another process or a result queue; tracebacks also name a class,
    ``trioflow._context.KeyError``, that cannot be imported. Before the fix it was a plain
    ``KeyError`` and pickled like any other failure's result.

    Expected: ``pickle.loads(pickle.dumps(result))`` works and gives back a KeyError.
    Actual: ``PicklingError: Can't pickle <class 'trioflow._context.KeyError'>: attribute
    lookup KeyError on trioflow._context failed``."""

    async def main() -> tf.WorkflowResult:
        wf = tf.workflow("z").step("a", lambda ctx: 1).step("b", lambda ctx: ctx.steps["aa"]).build()
        return await tf.execute_workflow(None, wf)

    result = run(main)
    assert isinstance(result.error, KeyError)
    again = pickle.loads(pickle.dumps(result))
    assert isinstance(again.error, KeyError) and again.error_name == "KeyError"
