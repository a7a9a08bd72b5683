"""Values that cannot be stored (SPEC §12, issue 13 item 4), on the MemoryAdapter and SQLite,
on trio's MockClock (pytest-trio's autojump_clock: retry delays and sleeps take no real time).

A step output msgpack cannot encode, a value put straight into ``ctx.data``, a nested bad value
in a parallel branch, what an ``input=`` mapper returns, a pass step's transform: each fails
*that* step with ``UnencodableValueError`` naming the path, is not retried, can be caught,
compensates the completed steps, and the instance ends stored as failed (never ``running``),
with the bad value gone from the stored shared data. Shared data grown past the size limit by
many values each under it fails its step with ``ValueTooLargeError``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

import trioflow as tf
import trioflow._codec
from trioflow._codec import decode_stored


class Boom(Exception):
    pass


class Storage:
    """One store, opened by several engines in turn (a MemoryAdapter object, or a SQLite file)."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.path = tmp_path / "x.db"
        self.memory = tf.adapters.MemoryAdapter()

    def adapter(self) -> tf.adapters.Adapter:
        return self.memory if self.kind == "memory" else tf.adapters.SQLiteAdapter(self.path)


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    return Storage(request.param, tmp_path)


class Stored:
    """An instance as a fresh engine reads it back, and its decoded shared data."""

    def __init__(self, instance: tf.WorkflowInstance, status: str, data: dict[str, Any]) -> None:
        self.instance = instance
        self.status = status
        self.data = data


async def run_and_reopen(
    storage: Storage, wf: tf.WorkflowDefinition, input: Any = None,
) -> tuple[tf.WorkflowInstance, Stored]:
    """Run ``wf`` to its end, then read the instance back through a new engine on the same store."""
    async with tf.open_engine(adapter=storage.adapter()) as engine:
        engine.register(wf)
        iid = await engine.start(wf.name, input)
        live = await engine.wait(iid)
    adapter = storage.adapter()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(wf)  # a running instance would be resumed now; a finished one stays as it is
        instance = await engine.get_instance(iid)
        assert instance is not None
        waited = await engine.wait(iid)  # never InstanceNotLiveError: the instance is over
        assert waited.status == instance.status
        raw = await adapter.load(iid)
        assert raw is not None
        state = decode_stored(raw)
    return live, Stored(instance, raw.status, state.data)


def assert_failed_for_good(live: tf.WorkflowInstance, stored: Stored, step: str, path: str) -> None:
    """``step`` failed with UnencodableValueError naming ``path``; the failure is what is stored."""
    assert live.status == "failed" and live.failed_step == step, (live.status, live.error)
    assert live.error_name == "UnencodableValueError"
    assert live.cause is not None and path in live.cause, live.cause
    assert "cannot be stored" in live.cause and "convert it to a supported type" in live.cause
    record = [r for r in live.history if r.step_name == step][-1]
    assert record.status == "failed" and record.error_name == "UnencodableValueError" and path in (record.cause or "")
    assert stored.status == "failed" and stored.instance.status == "failed"
    assert stored.instance.error_name == live.error_name and stored.instance.cause == live.cause
    assert stored.instance.failed_step == step
    assert [(r.id, r.status, r.error_name) for r in stored.instance.history] == [
        (r.id, r.status, r.error_name) for r in live.history]


def releasing(log: list[str], name: str) -> Callable[[Any, Any], None]:
    def compensate(ctx: Any, result: Any) -> None:
        log.append(f"undo {name}")
    return compensate


def saga_step(log: list[str], name: str, value: Any = "ok") -> Callable[[Any], Any]:
    async def execute(ctx: tf.WorkflowContext) -> Any:
        log.append(name)
        return value
    return execute


# -- each way a value that cannot be stored reaches a step -----------------------------------------


async def test_a_step_output_that_cannot_be_stored_fails_that_step_naming_the_path(
    autojump_clock: trio.testing.MockClock, storage: Storage
) -> None:
    log: list[str] = []
    calls: list[int] = []

    async def bad(ctx: tf.WorkflowContext) -> Any:
        calls.append(1)
        return {"receipt": {"lines": [1, object()]}}

    wf = (tf.workflow("w")
          .step("reserve", saga_step(log, "reserve"), releasing(log, "reserve"))
          .step("charge", bad, releasing(log, "charge"), retry=tf.Retry(max_attempts=4, interval=0.01))
          .step("ship", saga_step(log, "ship"))
          .build())
    live, stored = await run_and_reopen(storage, wf)
    assert_failed_for_good(live, stored, "charge", "output of step 'charge'['receipt']['lines'][1]")
    assert calls == [1], "not retried: the same output would fail again"
    assert live.step_results["charge"].attempts == 1
    assert log == ["reserve", "undo reserve"], "charge failed, so only reserve is compensated"
    assert live.compensated_steps == ("reserve",) == stored.instance.compensated_steps


async def test_a_value_put_straight_into_ctx_data_fails_that_step_and_is_dropped(
    autojump_clock: trio.testing.MockClock, storage: Storage
) -> None:
    log: list[str] = []
    calls: list[int] = []

    async def keeps(ctx: tf.WorkflowContext) -> str:
        ctx.data["order"] = {"id": 7}
        return "kept"

    async def leaks(ctx: tf.WorkflowContext) -> str:
        calls.append(1)
        ctx.data["client"] = {"pool": [object()]}
        return "charged"

    wf = (tf.workflow("w")
          .step("reserve", keeps, releasing(log, "reserve"))
          .step("charge", leaks, releasing(log, "charge"), retry=tf.Retry(max_attempts=3, interval=0.01))
          .step("ship", saga_step(log, "ship"))
          .build())
    live, stored = await run_and_reopen(storage, wf)
    assert_failed_for_good(live, stored, "charge", "shared data['client']['pool'][0]")
    assert calls == [1]
    assert log == ["undo reserve"] and live.compensated_steps == ("reserve",)
    assert stored.data == {"order": {"id": 7}}, "the bad value is gone; the good one stays"


async def test_a_step_that_raises_after_leaving_a_bad_value_fails_with_its_own_error_and_is_stored(
    autojump_clock: trio.testing.MockClock, storage: Storage,
) -> None:
    async def leaks_then_raises(ctx: tf.WorkflowContext) -> None:
        ctx.data["bad"] = object()
        raise Boom("gateway down")

    wf = (tf.workflow("w")
          .step("first", lambda ctx: ctx.set("n", 1))
          .step("charge", leaks_then_raises)
          .build())
    live, stored = await run_and_reopen(storage, wf)
    assert live.status == "failed" and live.failed_step == "charge"
    assert (live.error_name, live.cause) == ("Boom", "gateway down")
    assert stored.status == "failed" and stored.instance.error_name == "Boom"
    assert stored.data == {"n": 1}


async def test_what_an_input_mapper_returns_that_cannot_be_stored_fails_that_step(
    autojump_clock: trio.testing.MockClock, storage: Storage
) -> None:
    log: list[str] = []
    wf = (tf.workflow("w")
          .task("reserve", job=lambda data: "r-1", compensate=lambda r: log.append(f"release {r}"))
          .task("charge", job=lambda data: log.append("charge"), input=lambda ctx: {"conn": object()},
                compensate=lambda r: log.append("refund"), retry=tf.Retry(max_attempts=3, interval=0.5))
          .task("ship", job=lambda data: log.append("ship"))
          .build())
    live, stored = await run_and_reopen(storage, wf)
    assert_failed_for_good(live, stored, "charge", "input of step 'charge'['conn']")
    assert log == ["release r-1"], "the job never acts on an input that cannot be recorded"
    assert live.compensated_steps == ("reserve",) and live.step_results["charge"].attempts == 1


async def test_a_pass_step_transform_that_cannot_be_stored_fails_that_step(
    autojump_clock: trio.testing.MockClock, storage: Storage
) -> None:
    log: list[str] = []
    wf = (tf.workflow("w")
          .task("reserve", job=lambda data: "r-1", compensate=lambda r: log.append(f"release {r}"))
          .pass_("shape", transform=lambda ctx: [ctx.steps["reserve"], {"when": object()}])
          .task("ship", job=lambda data: log.append("ship"))
          .build())
    live, stored = await run_and_reopen(storage, wf)
    assert_failed_for_good(live, stored, "shape", "output of step 'shape'[1]['when']")
    assert log == ["release r-1"] and live.compensated_steps == ("reserve",)


async def test_a_nested_bad_value_in_a_parallel_branch_fails_that_branch_step(
    autojump_clock: trio.testing.MockClock, storage: Storage
) -> None:
    log: list[str] = []

    async def bad(data: Any) -> Any:
        return {"deep": {"list": [1, 2, {"x": object()}]}}

    wf = (tf.workflow("w")
          .task("reserve", job=lambda data: "r-1", compensate=lambda r: log.append("release"))
          .parallel("p", on_error="wait-all", branches=[
              tf.branch("a").task("a1", job=lambda data: "a1", compensate=lambda r: log.append("undo a1"))
              .task("a2", job=bad).build(),
              tf.branch("b").task("b1", job=lambda data: "b1", compensate=lambda r: log.append("undo b1")).build(),
          ])
          .task("ship", job=lambda data: log.append("ship"))
          .build())
    live, stored = await run_and_reopen(storage, wf)
    path = "output of step 'a2'['deep']['list'][2]['x']"
    assert live.status == "failed" and live.error_name == "ParallelError"
    assert live.cause is not None and path in live.cause
    assert "branch 'a' failed with UnencodableValueError" in live.cause
    record = live.step_results["a2"]
    assert record.status == "failed" and record.error_name == "UnencodableValueError" and path in (record.cause or "")
    assert sorted(log[:2]) == ["undo a1", "undo b1"] and log[2:] == ["release"] and "ship" not in log
    assert set(live.compensated_steps) == {"a1", "b1", "reserve"} and live.compensated_steps[-1] == "reserve"
    assert stored.status == "failed" and stored.instance.status == "failed"
    assert stored.instance.cause == live.cause
    assert stored.instance.step_results["a2"].error_name == "UnencodableValueError"


async def test_a_bad_value_put_into_ctx_data_in_a_fail_fast_branch_fails_the_instance_for_good(
    autojump_clock: trio.testing.MockClock, storage: Storage,
) -> None:
    async def leaks(ctx: tf.WorkflowContext) -> str:
        ctx.data["b-state"] = [{"lock": object()}]
        return "done"

    wf = (tf.workflow("w")
          .step("first", lambda ctx: ctx.set("n", 1))
          .parallel("p", branches=[
              tf.branch("a").step("a1", leaks).build(),
              tf.branch("b").step("b1", lambda ctx: "b1").build(),
          ])
          .build())
    live, stored = await run_and_reopen(storage, wf)
    assert live.status == "failed" and live.failed_step == "a1"
    assert live.error_name == "UnencodableValueError"
    assert live.cause is not None and "shared data['b-state'][0]['lock']" in live.cause
    assert stored.status == "failed" and stored.instance.cause == live.cause
    assert stored.data == {"n": 1}


# -- catching it -----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["output", "ctx.data", "input", "transform"])
async def test_an_unstorable_value_is_caught_by_a_catch_and_the_lane_goes_on(
    autojump_clock: trio.testing.MockClock, storage: Storage, where: str
) -> None:
    log: list[str] = []

    async def job(data: Any) -> Any:
        return object() if where == "output" else "fine"

    async def saga(ctx: tf.WorkflowContext) -> Any:
        ctx.data["bad"] = object()
        return "fine"

    catch = [tf.Catch(errors=[tf.UnencodableValueError], next="recover", result="why")]
    builder = tf.workflow("w").task("reserve", job=lambda data: "r-1", compensate=lambda r: log.append("release"))
    if where == "ctx.data":
        builder.step("risky", saga, catch=catch)
    elif where == "input":
        builder.task("risky", job=job, input=lambda ctx: object(), catch=catch)
    elif where == "transform":
        # A pass step takes no catch: a parallel step around it routes its failure.
        builder.parallel("risky", catch=catch, branches=[
            tf.branch("only").pass_("shape", transform=lambda ctx: {"t": object()}).build()])
    else:
        builder.task("risky", job=job, catch=catch)
    wf = (builder
          .task("ship", job=lambda data: "not here", end=True)
          .step("recover", lambda ctx: [ctx.error, "bad" in ctx.data, ctx.data["why"]])
          .build())
    live, stored = await run_and_reopen(storage, wf)
    assert live.status == "completed" and log == [] and live.compensated_steps == ()
    error, bad_in_data, why = live.output
    assert error == why and error["error"] == "UnencodableValueError" and "cannot be stored" in error["cause"]
    assert bad_in_data is False
    assert live.step_results["risky"].status == "caught"
    assert stored.status == "completed" and stored.instance.output == live.output
    assert "bad" not in stored.data and stored.data["why"] == error


# -- a sibling's good write is not lost ------------------------------------------------------------


async def test_dropping_a_branchs_bad_value_keeps_what_a_running_sibling_put_in_ctx_data(
    autojump_clock: trio.testing.MockClock, storage: Storage,
) -> None:
    """Branch b sets a good value, then works on; branch a leaves a bad value and is caught.
    Putting the shared data back drops a's value, not b's."""
    async def a1(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1)
        assert trio.current_time() - start < 2, "virtual time"
        ctx.data["a"] = object()
        return "a1"

    async def b1(ctx: tf.WorkflowContext) -> str:
        ctx.data["b"] = "kept"
        await trio.sleep(5)
        return "b1"

    wf = (tf.workflow("w")
          .parallel("p", on_error="wait-all", branches=[
              tf.branch("a").step("a1", a1, catch=[tf.Catch(errors=[tf.ALL], next="a-caught")])
              .pass_("a-caught").build(),
              tf.branch("b").step("b1", b1).build(),
          ])
          .step("read", lambda ctx: dict(ctx.data))
          .build())
    start = trio.current_time()
    live, stored = await run_and_reopen(storage, wf)
    assert live.status == "completed"
    assert live.step_results["a1"].status == "caught"
    assert live.output == {"b": "kept"}
    assert stored.data == {"b": "kept"}


# -- values left by code that is not a step --------------------------------------------------------


async def test_a_compensation_that_leaves_a_bad_value_does_not_keep_the_instance_running(
    autojump_clock: trio.testing.MockClock, storage: Storage,
) -> None:
    log: list[str] = []

    def release(ctx: tf.WorkflowContext, result: Any) -> None:
        ctx.data["handle"] = object()
        log.append("release")

    wf = (tf.workflow("w")
          .step("seed", lambda ctx: ctx.set("n", 1))
          .step("reserve", lambda ctx: "r-1", release)
          .step("charge", lambda ctx: "c-1", lambda ctx, r: log.append("refund"))
          .step("ship", raising_step(Boom("no truck")))
          .build())
    live, stored = await run_and_reopen(storage, wf)
    assert live.status == "failed" and live.failed_step == "ship" and live.error_name == "Boom"
    assert log == ["refund", "release"] and live.compensated_steps == ("charge", "reserve")
    assert stored.status == "failed" and stored.instance.compensated_steps == ("charge", "reserve")
    assert stored.data == {"n": 1}


async def test_an_on_step_complete_hook_that_leaves_a_bad_value_fails_no_step(
    autojump_clock: trio.testing.MockClock, storage: Storage,
) -> None:
    """SPEC §9: a hook never fails a step that succeeded. What it leaves that cannot be stored
    is dropped (as after a compensation), and is not blamed on the next step."""
    def hook(step_name: str, output: Any, ctx: tf.WorkflowContext) -> None:
        if step_name == "a":
            ctx.data["from-hook"] = object()

    wf = (tf.workflow("w")
          .step("a", lambda ctx: "a")
          .step("b", lambda ctx: sorted(ctx.data))
          .with_hooks(on_step_complete=hook)
          .build())
    live, stored = await run_and_reopen(storage, wf)
    assert live.status == "completed", (live.failed_step, live.error)
    assert [(r.step_name, r.status) for r in live.history] == [("a", "completed"), ("b", "completed")]
    assert stored.status == "completed" and "from-hook" not in stored.data


def raising_step(error: BaseException) -> Callable[[Any], Any]:
    async def execute(ctx: tf.WorkflowContext) -> Any:
        raise error
    return execute


# -- shared data grown past the size limit ---------------------------------------------------------


async def test_shared_data_grown_past_the_limit_by_values_each_under_it_fails_that_step(
    autojump_clock: trio.testing.MockClock, storage: Storage, monkeypatch: pytest.MonkeyPatch,
) -> None:
    limit = 2000
    monkeypatch.setattr(trioflow._codec, "MAX_DATA_BYTES", limit)
    log: list[str] = []
    chunk = "x" * 300

    def adder(i: int) -> Callable[[Any], Any]:
        async def execute(ctx: tf.WorkflowContext) -> int:
            ctx.set(f"k{i}", chunk)  # each value is far under every limit
            log.append(f"s{i}")
            return i
        return execute

    # The first step whose value takes the encoded data past the limit.
    data: dict[str, str] = {}
    crossing = None
    for i in range(20):
        data[f"k{i}"] = chunk
        if len(msgpack.packb(data, use_bin_type=True)) > limit:
            crossing = i
            break
    assert crossing is not None and crossing >= 3

    builder = tf.workflow("w")
    for i in range(crossing + 3):
        builder.step(f"s{i}", adder(i), releasing(log, f"s{i}"), retry=tf.Retry(max_attempts=3, interval=0.01))
    live, stored = await run_and_reopen(storage, builder.build())
    assert live.status == "failed" and live.failed_step == f"s{crossing}"
    assert live.error_name == "ValueTooLargeError"
    assert live.step_results[f"s{crossing}"].attempts == 1
    assert log == [f"s{i}" for i in range(crossing + 1)] + [f"undo s{i}" for i in reversed(range(crossing))]
    assert stored.status == "failed" and stored.instance.error_name == "ValueTooLargeError"
    assert stored.data == {f"k{i}": chunk for i in range(crossing)}


async def test_shared_data_grown_past_the_limit_is_catchable_as_value_too_large(
    autojump_clock: trio.testing.MockClock, storage: Storage, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trioflow._codec, "MAX_DATA_BYTES", 2000)

    async def grow(ctx: tf.WorkflowContext) -> int:
        for i in range(10):
            ctx.set(f"k{i}", "y" * 300)
        return 10

    wf = (tf.workflow("w")
          .step("seed", lambda ctx: ctx.set("seed", 1))
          .step("grow", grow, catch=[tf.Catch(errors=[tf.ValueTooLargeError], next="trim")])
          .step("next", lambda ctx: "not here", end=True)
          .step("trim", lambda ctx: [ctx.error["error"], sorted(ctx.data)])
          .build())
    live, stored = await run_and_reopen(storage, wf)
    assert live.status == "completed" and live.output == ["ValueTooLargeError", ["seed"]]
    assert stored.status == "completed" and stored.data == {"seed": 1}


# -- a run without storage does not check ----------------------------------------------------------


async def test_without_storage_nothing_needs_to_be_storable(autojump_clock: trio.testing.MockClock) -> None:
    marker = object()

    async def leaks(ctx: tf.WorkflowContext) -> Any:
        ctx.data["client"] = marker
        return marker

    result = await tf.execute_workflow(None, tf.workflow("w").step("a", leaks).build())
    assert result.success and result.output is marker and result.data["client"] is marker
