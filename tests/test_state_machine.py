"""State-machine semantics: choice, pass, tasks, parallel fail-fast / wait-all (SPEC §2, §3)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import trioflow as tf


def run(wf: tf.WorkflowDefinition, input: Any = None, **kwargs: Any) -> tf.WorkflowResult:
    async def main() -> tf.WorkflowResult:
        return await tf.execute_workflow(None, wf, input, **kwargs)

    result: tf.WorkflowResult = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return result


class Boom(Exception):
    pass


def choice_workflow(n: int, has_default: bool) -> tf.WorkflowDefinition:
    builder = tf.workflow("w").choice(
        "c",
        choices=[tf.when(lambda ctx, i=i: ctx.input[i], next=f"t{i}") for i in range(n)],
        default="fallback" if has_default else None,
    )
    for i in range(n):
        builder.pass_(f"t{i}", result=i, end=True)
    if has_default:
        builder.pass_("fallback", result="default", end=True)
    return builder.build()


@given(conditions=st.lists(st.booleans(), min_size=1, max_size=6), has_default=st.booleans())
def test_first_matching_choice_wins(conditions: list[bool], has_default: bool) -> None:
    result = run(choice_workflow(len(conditions), has_default), conditions)
    if True in conditions:
        assert result.success and result.output == conditions.index(True)
    elif has_default:
        assert result.success and result.output == "default"
    else:
        assert result.status == "failed" and isinstance(result.error, tf.NoChoiceMatchedError)
        assert "choice step 'c': no choice matched" in str(result.error) and result.failed_step == "c"


def test_tasks_map_input_and_output_and_pass_steps_transform() -> None:
    seen = []

    async def double(data: int) -> int:
        seen.append(data)
        return data * 2

    wf = (tf.workflow("w")
          .task("a", job=double, input=lambda ctx: ctx.input["n"], output=lambda r, ctx: {"doubled": r})
          .pass_("keep")  # passes the previous output on
          .pass_("fixed", result={"k": 1})
          .pass_("summary", transform=lambda ctx: [ctx.steps["a"], ctx.steps["keep"], ctx.steps["fixed"]])
          .build())
    result = run(wf, {"n": 21})
    assert seen == [21]
    assert result.output == [{"doubled": 42}, {"doubled": 42}, {"k": 1}]


def test_task_job_defaults_to_the_workflow_input_and_jobs_resolve_by_name() -> None:
    wf = tf.workflow("w").task("a", job="echo").build()
    assert run(wf, {"x": 1}, jobs={"echo": lambda data: data}).output == {"x": 1}


def test_unknown_job_name_fails_the_step_naming_the_job() -> None:
    result = run(tf.workflow("w").task("a", job="ghost").build())
    assert isinstance(result.error, tf.UnknownJobError) and "'ghost'" in str(result.error)


def test_task_compensation_by_job_name_receives_the_output() -> None:
    refunded: list[Any] = []
    wf = (tf.workflow("w").task("charge", job="charge", compensate="refund")
          .task("ship", job="explode").build())

    async def explode(data: Any) -> None:
        raise Boom("no truck")

    jobs = {"charge": lambda d: {"charge_id": "ch-1"}, "refund": refunded.append, "explode": explode}
    result = run(wf, jobs=jobs)
    assert result.compensated_steps == ("charge",) and refunded == [{"charge_id": "ch-1"}]


def test_parallel_output_is_keyed_by_branch_in_definition_order() -> None:
    async def slow(data: Any) -> str:
        await trio.sleep(5)
        return "slow"

    async def fast(data: Any) -> str:
        return "fast"

    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch("z-slow").task("s", job=slow).build(),
        tf.branch("a-fast").task("f", job=fast).task("f2", job=fast).build(),
    ]).build()
    result = run(wf)
    assert list(result.output.items()) == [("z-slow", "slow"), ("a-fast", "fast")]


def test_fail_fast_cancels_the_siblings_running_steps_and_compensates_completed_ones() -> None:
    log: list[str] = []

    def step(name: str, delay: float, fail: bool = False) -> Any:
        async def job(data: Any) -> str:
            log.append(f"start {name}")
            await trio.sleep(delay)
            if fail:
                raise Boom(name)
            log.append(f"end {name}")
            return name
        return job

    async def undo(out: Any) -> None:
        log.append(f"undo {out}")

    async def main() -> tf.WorkflowResult:
        wf = tf.workflow("w").parallel("p", branches=[
            tf.branch("a").task("a1", job=step("a1", 1), compensate=undo)
                          .task("a2", job=step("a2", 100), compensate=undo).build(),
            tf.branch("b").task("b1", job=step("b1", 5, fail=True)).build(),
        ]).build()
        return await tf.execute_workflow(None, wf)

    result = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert result.status == "failed" and result.failed_step == "b1"
    assert isinstance(result.error, tf.BranchError) and result.error.branch_name == "b"
    assert "end a2" not in log  # really cancelled, not left running
    assert result.compensated_steps == ("a1",) and log[-1] == "undo a1"


def test_wait_all_lets_every_branch_finish_and_raises_all_errors() -> None:
    finished: list[str] = []

    def job(name: str, delay: float, fail: bool) -> Any:
        async def run_it(data: Any) -> str:
            await trio.sleep(delay)
            if fail:
                raise Boom(name)
            finished.append(name)
            return name
        return run_it

    wf = tf.workflow("w").parallel("p", on_error="wait-all", branches=[
        tf.branch("c").task("c1", job=job("c1", 3, True)).build(),
        tf.branch("a").task("a1", job=job("a1", 1, True)).build(),
        tf.branch("b").task("b1", job=job("b1", 10, False)).build(),
    ]).build()
    result = run(wf)
    assert finished == ["b1"] and result.failed_step == "p"
    error = result.error
    assert isinstance(error, tf.ParallelError) and isinstance(error, ExceptionGroup)
    assert [e.branch_name for e in error.exceptions] == ["c", "a"]  # branch order, not failure order
    assert all(isinstance(e.error, Boom) for e in error.exceptions)


def test_branch_steps_are_compensated_in_reverse_completion_order() -> None:
    undone: list[str] = []

    def job(delay: float) -> Any:
        async def run_it(data: Any) -> float:
            await trio.sleep(delay)
            return delay
        return run_it

    async def undo(out: float) -> None:
        undone.append(str(out))

    async def fail(data: Any) -> None:
        raise Boom("late")

    wf = (tf.workflow("w")
          .parallel("p", branches=[
              tf.branch("x").task("x1", job=job(1), compensate=undo).task("x2", job=job(3), compensate=undo).build(),
              tf.branch("y").task("y1", job=job(2), compensate=undo).build()])
          .task("after", job=fail).build())
    result = run(wf)
    # completion order: x1 (t=1), y1 (t=2), x2 (t=1+3) -> compensation x2, y1, x1
    assert result.compensated_steps == ("x2", "y1", "x1") and undone == ["3", "2", "1"]


def test_nested_parallel_steps_produce_nested_outputs() -> None:
    inner = tf.branch("inner").parallel("q", branches=[
        tf.branch("i1").pass_("p1", result=1).build(), tf.branch("i2").pass_("p2", result=2).build()]).build()
    wf = tf.workflow("w").parallel("p", branches=[inner, tf.branch("flat").pass_("p3", result=3).build()]).build()
    assert run(wf).output == {"inner": {"i1": 1, "i2": 2}, "flat": 3}


def test_choice_can_loop_until_a_condition_holds() -> None:
    polls = 0

    async def poll(data: Any) -> int:
        nonlocal polls
        polls += 1
        return polls

    wf = (tf.workflow("w").task("poll", job=poll)
          .choice("ready?", choices=[tf.when(lambda ctx: ctx.steps["poll"] >= 3, next="done")], default="poll")
          .end("done").build())
    result = run(wf)
    assert result.success and result.output == 3 and polls == 3
