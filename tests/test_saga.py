"""Saga semantics through ``execute_workflow`` (SPEC §1, §4, §9), on trio's MockClock."""

from __future__ import annotations

import contextvars
import threading
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import assume, given
from hypothesis import strategies as st

import trioflow as tf


def run_on_mock_clock(fn: Any, *args: Any) -> Any:
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


class Boom(Exception):
    pass


@given(comp=st.lists(st.booleans(), min_size=1, max_size=8), data=st.data())
def test_compensation_is_reverse_completion_order_for_any_failing_position(comp: list[bool], data: st.DataObject) -> None:
    fail_at = data.draw(st.integers(0, len(comp)), label="fail_at")  # == len(comp): nothing fails
    undone: list[str] = []

    def make(i: int) -> tf.TaskStep:
        async def execute(ctx: tf.WorkflowContext) -> int:
            if i == fail_at:
                raise Boom(f"step {i}")
            return i

        async def compensate(ctx: tf.WorkflowContext, result: int) -> None:
            assert result == i
            undone.append(f"s{i}")

        return tf.step(f"s{i}", execute, compensate if comp[i] else None)

    builder = tf.workflow("saga")
    for i in range(len(comp)):
        builder.step(make(i))
    result = run_on_mock_clock(tf.execute_workflow, None, builder.build())
    expected = [f"s{i}" for i in reversed(range(min(fail_at, len(comp)))) if comp[i]]
    if fail_at == len(comp):
        assert result.success and result.compensated_steps == () and undone == []
    else:
        assert not result.success and result.status == "failed"
        assert result.failed_step == f"s{fail_at}" and isinstance(result.error, Boom)
        assert list(result.compensated_steps) == expected == undone


@given(
    attempts=st.integers(1, 6), interval=st.floats(0.001, 50), backoff=st.floats(1, 4), cap=st.floats(0.5, 100),
)
def test_retries_happen_at_the_times_the_policy_gives(attempts: int, interval: float, backoff: float, cap: float) -> None:
    assume(interval <= cap)  # a policy whose interval exceeds its cap is refused (test_validation_numbers)
    times: list[float] = []
    policy = tf.Retry(max_attempts=attempts, interval=interval, backoff_rate=backoff, max_interval=cap)

    async def flaky(ctx: tf.WorkflowContext) -> None:
        times.append(trio.current_time())
        raise Boom("always")

    async def main() -> tf.WorkflowResult:
        start = trio.current_time()
        result = await tf.execute_workflow(None, tf.workflow("w").step("f", flaky, retry=policy).build())
        times.insert(0, start)
        return result

    result = run_on_mock_clock(main)
    assert len(times) == attempts + 1
    gaps = [b - a for a, b in zip(times[1:], times[2:])]
    assert gaps == pytest.approx([policy.delay(n) for n in range(1, attempts)])
    # no sleep after the last attempt: the run ends when the last attempt fails
    assert result.duration == pytest.approx(times[-1] - times[0], abs=1e-9)


def test_success_shares_data_and_exposes_the_context() -> None:
    seen: dict[str, Any] = {}

    async def first(ctx: tf.WorkflowContext) -> dict[str, int]:
        ctx.set("order_id", 7)
        seen["first"] = (ctx.step_index, ctx.total_steps, ctx.input, ctx.get("source"), ctx.driver)
        return {"n": 1}

    async def second(ctx: tf.WorkflowContext) -> int:
        seen["second"] = (ctx.step_index, ctx.get("order_id"), ctx.steps["first"], ctx.get_step_result("first"),
                          ctx.get_step_result("nope"), ctx.metadata.workflow_name, ctx.instance.current_step)
        return 2

    wf = tf.workflow("w").step("first", first).step("second", second).with_data({"source": "web"}).build()
    driver = object()
    result = run_on_mock_clock(tf.execute_workflow, driver, wf, {"x": 1})
    assert result.success and result.output == 2 and result.status == "completed"
    assert result.data == {"source": "web", "order_id": 7}
    assert seen["first"] == (0, 2, {"x": 1}, "web", driver)
    assert seen["second"] == (1, 7, {"n": 1}, {"n": 1}, None, "w", "second")
    assert result.metadata.id == result.instance_id


def test_error_not_in_retry_on_fails_at_once() -> None:
    calls = 0

    async def bad(ctx: tf.WorkflowContext) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad input")

    wf = tf.workflow("w").step("s", bad, retry=tf.Retry(max_attempts=5, retry_on=[ConnectionError])).build()
    result = run_on_mock_clock(tf.execute_workflow, None, wf)
    assert calls == 1 and result.failed_step == "s" and isinstance(result.error, ValueError)


def test_failing_compensation_is_retried_then_recorded_and_the_rest_still_run() -> None:
    log: list[str] = []
    tries = 0

    async def ok(ctx: tf.WorkflowContext) -> str:
        return "ok"

    async def undo_a(ctx: tf.WorkflowContext, r: str) -> None:
        log.append("undo a")

    async def undo_b(ctx: tf.WorkflowContext, r: str) -> None:
        nonlocal tries
        tries += 1
        raise Boom("refund service down")

    async def fail(ctx: tf.WorkflowContext) -> None:
        raise Boom("declined")

    wf = (tf.workflow("w").step("a", ok, undo_a)
          .step("b", ok, undo_b, retry=tf.Retry(max_attempts=3, interval=1)).step("c", fail).build())
    result = run_on_mock_clock(tf.execute_workflow, None, wf)
    assert tries == 3
    assert result.compensated_steps == ("a",) and log == ["undo a"]
    assert result.compensation_errors == {"b": "Boom: refund service down"}


def test_step_timeout_bounds_each_attempt() -> None:
    async def slow(ctx: tf.WorkflowContext) -> None:
        await trio.sleep(10)

    async def main() -> tuple[tf.WorkflowResult, float]:
        t0 = trio.current_time()
        wf = tf.workflow("w").step("s", slow, timeout=2, retry=tf.Retry(max_attempts=2, interval=1)).build()
        return await tf.execute_workflow(None, wf), trio.current_time() - t0

    result, elapsed = run_on_mock_clock(main)
    assert isinstance(result.error, tf.StepTimeoutError) and "'s' timed out after 2 s" in str(result.error)
    assert elapsed == pytest.approx(2 + 1 + 2)


def test_workflow_timeout_ends_timed_out_and_compensates() -> None:
    undone: list[str] = []

    async def quick(ctx: tf.WorkflowContext) -> int:
        return 1

    async def undo(ctx: tf.WorkflowContext, r: int) -> None:
        await trio.sleep(5)  # compensation is not bound by the expired workflow timeout
        undone.append("a")

    async def hang(ctx: tf.WorkflowContext) -> None:
        await trio.sleep_forever()

    wf = tf.workflow("w").step("a", quick, undo).step("b", hang).with_timeout(30).build()
    result = run_on_mock_clock(tf.execute_workflow, None, wf)
    assert result.status == "timed_out" and not result.success
    assert isinstance(result.error, tf.WorkflowTimeoutError)
    assert result.compensated_steps == ("a",) and undone == ["a"]


def test_caller_cancellation_compensates_in_a_shielded_scope() -> None:
    undone: list[str] = []

    async def quick(ctx: tf.WorkflowContext) -> int:
        return 1

    async def undo(ctx: tf.WorkflowContext, r: int) -> None:
        await trio.sleep(1)
        undone.append("a")

    async def hang(ctx: tf.WorkflowContext) -> None:
        await trio.sleep_forever()

    async def main() -> None:
        wf = tf.workflow("w").step("a", quick, undo).step("b", hang).build()
        with trio.move_on_after(5) as scope:
            await tf.execute_workflow(None, wf)
        assert scope.cancelled_caught

    run_on_mock_clock(main)
    assert undone == ["a"]


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def test_plain_def_steps_run_in_a_worker_thread_and_see_contextvars() -> None:
    seen: dict[str, Any] = {}

    def blocking(ctx: tf.WorkflowContext) -> str:
        seen["thread"] = threading.current_thread() is not threading.main_thread()
        seen["var"] = VAR.get()
        return "done"

    async def main() -> tf.WorkflowResult:
        VAR.set("from caller")
        return await tf.execute_workflow(None, tf.workflow("w").step("s", blocking).build())

    result = trio.run(main)
    assert result.output == "done" and seen == {"thread": True, "var": "from caller"}


def test_hooks_are_called_and_raising_hooks_change_nothing() -> None:
    calls: list[tuple[Any, ...]] = []

    async def ok(ctx: tf.WorkflowContext) -> int:
        return 1

    async def undo(ctx: tf.WorkflowContext, r: int) -> None:
        pass

    async def fail(ctx: tf.WorkflowContext) -> None:
        raise Boom("x")

    def record(name: str, explode: bool = False) -> Any:
        async def hook(*args: Any) -> None:
            calls.append((name, *[a for a in args if isinstance(a, str)]))
            if explode:
                raise RuntimeError("hook bug")
        return hook

    hooks = {n: record(n, explode=True) for n in
             ("on_start", "on_step_complete", "on_step_failed", "on_compensate", "on_complete", "on_failed")}
    good = tf.workflow("w").step("a", ok, undo).with_hooks(**hooks).build()
    result = run_on_mock_clock(tf.execute_workflow, None, good)
    assert result.success and result.compensated_steps == ()
    assert calls == [("on_start",), ("on_step_complete", "a"), ("on_complete",)]
    calls.clear()
    bad = tf.workflow("w").step("a", ok, undo).step("b", fail).with_hooks(**hooks).build()
    result = run_on_mock_clock(tf.execute_workflow, None, bad)
    assert result.failed_step == "b" and result.compensated_steps == ("a",)
    assert calls == [("on_start",), ("on_step_complete", "a"), ("on_step_failed", "b"),
                     ("on_compensate", "a"), ("on_failed",)]


def test_run_workflow_builds_and_runs() -> None:
    async def a(ctx: tf.WorkflowContext) -> int:
        return ctx.input + 1

    result = run_on_mock_clock(tf.run_workflow, None, "quick", [tf.step("a", a)], 41)
    assert result.output == 42


def test_resolve_of_an_unknown_service_fails_the_step_naming_it() -> None:
    async def a(ctx: tf.WorkflowContext) -> Any:
        return ctx.resolve("stripe")

    result = run_on_mock_clock(tf.execute_workflow, None, tf.workflow("w").step("a", a).build(), None)
    assert isinstance(result.error, tf.UnknownServiceError) and "'stripe'" in str(result.error)


def test_execute_workflow_refuses_an_unbuilt_definition() -> None:
    with pytest.raises(tf.DefinitionError, match="built WorkflowDefinition"):
        run_on_mock_clock(tf.execute_workflow, None, tf.workflow("w"))
