"""State machines as a Step Functions user builds them, from a review (each failed before its
fix): initial shared data and pass results are each run's own; async callables trioflow calls
without awaiting (choice conditions behind a decorator, succeed outputs, fail causes) are refused,
and an async output mapper is awaited as input= is; steps that pass their input on pass the
lane's input when first in their lane (the workflow input, the item, the parallel's input)."""

from __future__ import annotations

import functools
import gc
import warnings
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine

# Tests that hand trioflow an ``async def`` where it calls without awaiting leave a coroutine
# that is never awaited; its RuntimeWarning is not what these tests are about.
never_awaited = pytest.mark.filterwarnings(
    "ignore::RuntimeWarning", "ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_unawaited_coroutines() -> Any:
    """Finalize the coroutines a test left unawaited while their warning is ignored, so that
    it is not reported against a later test or the session."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gc.collect()


async def run_in_engine(wf: tf.WorkflowDefinition, *inputs: Any) -> list[tf.WorkflowInstance]:
    """Start one instance per input, one after the other, in one test engine."""
    done = []
    async with open_test_engine() as engine:
        engine.register(wf)
        for value in inputs:
            with trio.fail_after(10**6):
                done.append(await engine.wait(await engine.start(wf.name, value)))
    return done


# --- 1. initial shared data (with_data) leaks between instances ----------------------------------


async def test_with_data_nested_values_are_fresh_for_every_instance(autojump_clock: trio.testing.MockClock) -> None:
    """A user seeds shared data with ``.with_data({"seen": []})`` and a step appends to
    ``ctx.data["seen"]`` (the data flow between steps that stands in for Step Functions' JSON
    state). Every instance must start from the workflow's initial data (SPEC: ``with_data`` is
    "initial shared data"; the definition is "frozen"). Instead the second instance starts with
    the first one's items, and the frozen definition's own data has grown: ``new_state`` copies
    the data only one level deep (runtime/_decide.py:29, ``data=dict(definition.data)``), so every
    instance, in an engine as in execute_workflow, shares the definition's nested list."""
    async def add(ctx: Any) -> list[Any]:
        ctx.data["seen"].append(ctx.input)
        return list(ctx.data["seen"])

    wf = tf.workflow("collect").with_data({"seen": []}).step("add", add).build()
    first, second = await run_in_engine(wf, "a", "b")
    assert first.output == ["a"]
    assert second.output == ["b"], f"the second instance saw the first one's data: {second.output!r}"
    assert wf.data == {"seen": []}, f"the frozen definition's initial data changed: {wf.data!r}"


# --- 2. execute_workflow hands out the definition's own pass result -------------------------------


async def test_pass_result_is_not_shared_between_execute_workflow_runs(autojump_clock: trio.testing.MockClock) -> None:
    """A Pass state with a fixed ``result=`` seeds a structure a later step fills in (as an ASL
    ``Result`` does). In an engine each run gets its own copy of it (outputs are stored and read
    back). ``execute_workflow`` hands every run the very object held by the definition
    (actors/_lane.py:195, ``step.result`` returned as it is), so the second run starts from what
    the first run put in it: the two ways of running one definition disagree, and a frozen
    definition changes under its runs."""
    async def append(ctx: Any) -> Any:
        ctx.steps["init"]["items"].append(ctx.input)
        return ctx.steps["init"]

    wf = tf.workflow("fill").pass_("init", result={"items": []}).step("append", append).build()
    engine_outputs = [i.output for i in await run_in_engine(wf, 1, 2)]
    assert engine_outputs == [{"items": [1]}, {"items": [2]}]
    first = await tf.execute_workflow(None, wf, 1)
    second = await tf.execute_workflow(None, wf, 2)
    assert second.output == {"items": [2]}, f"the second run saw the first one's items: {second.output!r}"
    assert first.output == {"items": [1]}


# --- 3. async callables behind a decorator, and async succeed/fail/output callables ----------


def _logged(fn: Any) -> Any:
    """A typical sync decorator (functools.wraps), as used to log or time a function."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    return wrapper


@never_awaited
async def test_async_choice_condition_behind_a_decorator_does_not_always_match(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A user decorates an ``async def`` choice condition with a logging decorator. ``build()``
    refuses a bare ``async def`` condition (a coroutine is truthy: the rule would always win).
    Behind a wrapper ``build()`` cannot tell it from a plain function that runs an async one to
    its end; ``choose`` took the coroutine it gave for true and routed a non-VIP to "vip"
    (SPEC §3: conditions in order, first match wins, else default)."""
    @_logged
    async def is_vip(ctx: Any) -> bool:
        return bool(ctx.input["vip"])

    try:
        wf = (tf.workflow("route").choice("c", choices=[tf.when(is_vip, next="vip")], default="normal")
              .pass_("vip", result="vip", end=True).pass_("normal", result="normal").build())
    except tf.DefinitionError:
        return  # refused up front: fine
    [instance] = await run_in_engine(wf, {"vip": False})
    # Never routed by a coroutine taken for true: the choice fails, saying why (a wrapper that
    # runs the async function to its end, and returns a bool, is a plain function: allowed).
    assert (instance.status, instance.failed_step, instance.error_name) == ("failed", "c", "TypeError"), instance
    assert "gave an awaitable" in (instance.cause or "")


@never_awaited
async def test_async_succeed_output_is_awaited_or_refused(autojump_clock: trio.testing.MockClock) -> None:
    """``.succeed("done", output=callable)`` with an ``async def`` (as ``input=`` mappers, map
    ``items=`` and child ``input=`` may be, and are awaited). ``build()`` accepts it
    (runtime/_validate.py:153 checks nothing on a succeed step), and the step calls it without
    awaiting (actors/_lane.py:192): ``execute_workflow`` completes with a coroutine object as the
    workflow output, while an engine fails the same definition with UnencodableValueError. It
    should be awaited, or refused by build() as an async pass transform is."""
    async def summary(ctx: Any) -> dict[str, Any]:
        return {"order": ctx.input["order"], "status": "ok"}

    try:
        wf = tf.workflow("w").succeed("done", output=summary).build()
    except tf.DefinitionError:
        return
    result = await tf.execute_workflow(None, wf, {"order": 7})
    [instance] = await run_in_engine(wf, {"order": 7})
    assert (result.status, result.output) == ("completed", {"order": 7, "status": "ok"}), result.output
    assert (instance.status, instance.output) == ("completed", {"order": 7, "status": "ok"}), instance.error


@never_awaited
async def test_async_fail_cause_is_awaited_or_refused(autojump_clock: trio.testing.MockClock) -> None:
    """``.fail("cancelled", error="OrderCancelled", cause=async_fn)``: the cause (ASL's
    ``CausePath``) is worked out by an ``async def`` (it may look something up). build() takes
    it (runtime/_validate.py:142 asks only ``callable``), the step calls it without awaiting and
    stores ``str()`` of the coroutine (actors/_lane.py:183-184): the instance fails with cause
    ``"<coroutine object reason at 0x...>"``, which is no cause at all, in both execute_workflow and an
    engine."""
    async def reason(ctx: Any) -> str:
        return f"order {ctx.input['order']} was cancelled"

    try:
        wf = tf.workflow("w").fail("cancelled", error="OrderCancelled", cause=reason).build()
    except tf.DefinitionError:
        return
    [instance] = await run_in_engine(wf, {"order": 7})
    assert instance.error_name == "OrderCancelled"
    assert instance.cause == "order 7 was cancelled", f"cause stored: {instance.cause!r}"


@never_awaited
async def test_async_task_output_mapper_is_awaited_or_refused(autojump_clock: trio.testing.MockClock) -> None:
    """A task's ``input=`` mapper may be an ``async def`` (awaited: README, "a plain function or an
    async def"); its ``output=`` mapper is not awaited (actors/_task.py:181) and build() does not
    refuse it: execute_workflow completes with a coroutine object as the step's (and workflow's)
    output, while an engine fails the step with UnencodableValueError."""
    async def job(data: Any) -> int:
        return 21

    async def shape(result: Any, ctx: Any) -> dict[str, Any]:
        return {"doubled": result * 2}

    try:
        wf = tf.workflow("w").task("t", job=job, output=shape).build()
    except tf.DefinitionError:
        return
    result = await tf.execute_workflow(None, wf, None)
    assert result.output == {"doubled": 42}, f"execute_workflow gave {result.output!r}"


# --- 4. a pass/succeed/choice first in its lane passes on nothing, not its input -------------------


def _first_in_lane(shape: str) -> tf.WorkflowDefinition:
    if shape == "main line: choice then succeed":
        return (tf.workflow("w")
                .choice("route", choices=[tf.when(lambda ctx: ctx.input["ok"], next="accepted")], default="rejected")
                .succeed("accepted").fail("rejected", error="Rejected").build())
    if shape == "parallel branch: pass first":
        return (tf.workflow("w").pass_("prepare", result={"order": 7})
                .parallel("fan", branches=[tf.branch("audit").pass_("audit-in").build()]).build())
    return (tf.workflow("w")
            .map("each", items=lambda ctx: ctx.input["items"], branch=tf.branch("one").pass_("echo").build()).build())


@pytest.mark.parametrize("shape", ["main line: choice then succeed", "parallel branch: pass first", "map item: pass first"])
async def test_pass_through_steps_first_in_their_lane_pass_on_the_lanes_input(
    shape: str, autojump_clock: trio.testing.MockClock,
) -> None:
    """README: "Choice and pass steps without a transform/result pass the previous output on (as
    Amazon States Language does)"; docs/errors.md: ``.succeed(name)`` "passes its input on, as
    ASL's does". In ASL a state's input, first in its lane, is the execution input (main line),
    the Parallel state's input (a branch) or the item (a Map iterator). trioflow passes ``None``
    instead (actors/_lane.py:186-194, ``state.output_of(lane.last)`` with no record yet): a
    Choice -> Succeed state machine completes with output ``None``; a Map whose iterator is a
    Pass gives ``[None, None]`` instead of the items; a branch that starts with a Pass gets
    nothing from the step before the parallel step. (Where the docs are silent, this is what a
    Step Functions user expects: the input flows in.)"""
    wf = _first_in_lane(shape)
    workflow_input: dict[str, Any] = {"ok": True, "items": ["a", "b"]}
    [instance] = await run_in_engine(wf, workflow_input)
    expected = {
        "main line: choice then succeed": workflow_input,
        "parallel branch: pass first": {"audit": {"order": 7}},
        "map item: pass first": ["a", "b"],
    }[shape]
    assert instance.status == "completed"
    assert instance.output == expected, f"{shape}: output {instance.output!r}"
