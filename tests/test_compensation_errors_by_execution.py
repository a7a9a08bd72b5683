"""Every failed compensation is on the result, by execution: ``compensation_errors`` keeps a
step's newest only (as ``step_results`` does), and a loop or a map's items run a step many
times (found by a newcomer's review: a loop releasing three reservations, each release failing,
showed one failure, and ``execute_workflow``'s result, which has no history, lost two)."""

from __future__ import annotations

import json
from typing import Any

import trio

import trioflow as tf
from trioflow.testing import open_test_engine


def _looping() -> tf.WorkflowDefinition:
    made = {"n": 0}

    async def reserve(ctx: Any) -> dict[str, int]:
        made["n"] += 1
        return {"res": made["n"]}

    async def release(ctx: Any, result: dict[str, int]) -> None:
        raise RuntimeError(f"cannot release {result['res']}")

    async def boom(ctx: Any) -> None:
        raise ValueError("final failure")

    return (tf.workflow("loop").step("reserve", reserve, release)
            .choice("again?", choices=[tf.when(lambda ctx: ctx.steps["reserve"]["res"] % 3 != 0, next="reserve")],
                    default="boom")
            .step("boom", boom).build())


async def test_a_loop_whose_releases_fail_shows_each_on_an_engine_and_after_a_reload(autojump_clock: Any) -> None:
    async with open_test_engine() as engine:
        engine.register(_looping())
        done = await engine.wait(await engine.start("loop", {}))
        again = await engine.get_instance(done.id)
    assert done.status == "failed" and done.compensated_steps == ()  # (none of them succeeded)
    expected = {"reserve#1": "RuntimeError: cannot release 1", "reserve#2": "RuntimeError: cannot release 2",
                "reserve#3": "RuntimeError: cannot release 3"}
    assert done.compensation_errors_by_execution == expected
    assert list(done.compensation_errors_by_execution) == ["reserve#1", "reserve#2", "reserve#3"]
    assert done.compensation_errors == {"reserve": "RuntimeError: cannot release 3"}  # (the newest, as before)
    assert again.compensation_errors_by_execution == expected
    assert json.loads(json.dumps(done.to_dict()))["compensation_errors_by_execution"] == expected


async def test_execute_workflow_s_result_has_each_failed_compensation() -> None:
    result = await tf.execute_workflow(None, _looping(), {})
    assert not result.success
    assert result.compensation_errors_by_execution == {
        "reserve#1": "RuntimeError: cannot release 1", "reserve#2": "RuntimeError: cannot release 2",
        "reserve#3": "RuntimeError: cannot release 3"}


async def test_every_map_item_whose_compensation_failed_is_named(autojump_clock: Any) -> None:
    async def charge(ctx: Any) -> int:
        return int(ctx.item)

    async def refund(ctx: Any, result: int) -> None:
        raise RuntimeError(f"refund {result} failed")

    async def after(ctx: Any) -> None:
        raise ValueError("later")

    wf = (tf.workflow("m").map("each", items=lambda ctx: [0, 1, 2],
                               branch=tf.branch("item").step("charge", charge, refund).build())
          .step("after", after).build())
    async with open_test_engine() as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("m"))
    assert done.status == "failed"
    assert sorted(done.compensation_errors_by_execution.items()) == [
        (f"each/#{i}/charge#1", f"RuntimeError: refund {i} failed") for i in range(3)]
    assert len(done.compensation_errors) == 1


async def test_a_run_with_nothing_that_failed_to_compensate_has_an_empty_mapping(autojump_clock: Any) -> None:
    async def ok(ctx: Any) -> int:
        return 1

    async with open_test_engine() as engine:
        engine.register(tf.workflow("ok").step("a", ok).build())
        done = await engine.wait(await engine.start("ok"))
    assert done.compensation_errors_by_execution == {}
    await trio.lowlevel.checkpoint()
