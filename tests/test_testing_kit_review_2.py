"""The crash explorer as a user who property-tests their workflows relies on it, from a second
review (each failed before its fix): it reports a compensation that is not idempotent in any
workflow, and a choice that decides otherwise when run again after a crash."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import CrashDivergenceError, ScriptedJob, explore_crashes, raises, returns
from trioflow.testing.strategies import ScriptedFailure


class Bank:
    """A fake bank that refuses a second refund of one charge, as a real one would."""

    def __init__(self) -> None:
        self.refunded: set[str] = set()

    def fresh(self) -> MemoryAdapter:
        """``adapter_factory``: each explored run starts with no refunds."""
        self.refunded.clear()
        return MemoryAdapter()

    async def charge(self, ctx: Any) -> dict[str, str]:
        return {"id": "ch-1"}

    async def refund(self, ctx: Any, result: Any) -> None:
        if result["id"] in self.refunded:
            raise RuntimeError(f"{result['id']} already refunded")
        self.refunded.add(result["id"])


async def ship(ctx: Any) -> None:
    raise ValueError("warehouse on fire")


async def note(ctx: Any) -> str:
    return "noted"


@pytest.mark.parametrize("shape", ["parallel", "timeout"])
async def test_a_compensation_that_fails_when_run_twice_is_reported_in_a_timing_dependent_workflow(
        autojump_clock: trio.testing.MockClock, shape: str) -> None:
    """With a parallel step (or a workflow timeout that never fires) the strict comparisons are
    off, and a crash that had the refund run twice, refused the second time, went unreported."""
    bank = Bank()
    builder = tf.workflow("checkout")
    if shape == "parallel":
        builder = builder.parallel("notify", branches=[tf.branch("n1").step("note1", note).build(),
                                                       tf.branch("n2").step("note2", note).build()])
    else:
        builder = builder.with_timeout(86_400)
    wf = builder.step("charge", bank.charge, bank.refund).step("ship", ship).build()
    with pytest.raises(CrashDivergenceError, match=r"failed to compensate \['charge'\], which the fault-free run"
                                                   r" compensated: a compensation run again .* idempotent"):
        await explore_crashes(wf, {}, adapter_factory=bank.fresh)


async def test_a_choice_that_decides_otherwise_after_a_crash_is_reported(autojump_clock: trio.testing.MockClock) -> None:
    """Both paths end with the same output and compensate nothing: only the path taken tells."""
    seen = {"evaluations": 0}

    def first_time_only(ctx: Any) -> bool:  # a cache warmed by the first call, say
        seen["evaluations"] += 1
        return seen["evaluations"] == 1

    def fresh() -> MemoryAdapter:
        seen["evaluations"] = 0
        return MemoryAdapter()

    wf = (tf.workflow("route").task("fetch", job="fetch")
          .choice("pick", choices=[tf.when(first_time_only, next="express")], default="standard")
          .task("express", job="fast", next="finish").task("standard", job="slow", next="finish")
          .task("finish", job="finish", end=True).build())
    jobs = {"fetch": ScriptedJob(returns(1)), "fast": ScriptedJob(returns("E")), "slow": ScriptedJob(returns("S")),
            "finish": ScriptedJob(returns("done"))}
    with pytest.raises(CrashDivergenceError, match=r"took the path \['fetch', 'pick', 'standard', 'finish'\],"
                                                   r" the fault-free run \['fetch', 'pick', 'express', 'finish'\]"):
        await explore_crashes(wf, {}, jobs=jobs, adapter_factory=fresh)


async def test_a_deterministic_workflow_still_explores_cleanly(autojump_clock: trio.testing.MockClock) -> None:
    """The new comparisons raise nothing for a workflow that behaves: idempotent refunds, a
    choice on the run's own data, a parallel step."""
    refunds: list[str] = []

    async def refund(ctx: Any, result: Any) -> None:
        refunds.append(result)

    wf = (tf.workflow("ok").parallel("notify", branches=[tf.branch("n1").step("note1", note).build(),
                                                         tf.branch("n2").step("note2", note).build()])
          .step("charge", lambda ctx: "ch-1", refund)
          .choice("pick", choices=[tf.when(lambda ctx: ctx.input["fast"], next="express")], default="ship")
          .task("express", job="fast", next="ship")
          .step("ship", ship).build())
    report = await explore_crashes(wf, {"fast": True}, jobs={"fast": ScriptedJob(returns("E"))})
    assert report.baseline.status == "failed"
    assert report.points


def test_expected_map_output_of_a_step_that_is_no_map_says_so() -> None:
    """It raised a bare ``AssertionError``."""
    from hypothesis import given, settings

    from trioflow.testing.strategies import workflows

    @settings(max_examples=1, database=None)
    @given(workflows())
    def check(generated: Any) -> None:
        name = generated.definition.steps[0].name
        if generated.definition.steps[0].kind != "map":
            with pytest.raises(tf.InvalidArgumentError, match=rf"step {name!r} .* not a map"):
                generated.expected_map_output(name)

    check()



async def test_a_loop_whose_compensation_fails_once_in_the_fault_free_run_too_is_not_reported(
        autojump_clock: trio.testing.MockClock) -> None:
    """Found by the check above in generated looping workflows: the step ran twice, one of its
    compensations failed (scripted) and the other worked, in every run; the step's name was in
    both lists of the fault-free run, and the check took it for a compensation run twice."""
    wf = (tf.workflow("loop").task("body", job="body", compensate="undo")
          .choice("again", choices=[tf.when(lambda ctx: sum(r.step_name == "body" for r in ctx.instance.history) < 2,
                                            next="body")], default="last")
          .task("last", job="last").build())
    jobs = {"body": ScriptedJob(returns(0), returns(0)),
            "undo": ScriptedJob(raises(ScriptedFailure), returns(None), returns(None)),
            "last": ScriptedJob(raises(ScriptedFailure), returns(0))}
    report = await explore_crashes(wf, {}, jobs=jobs)
    assert (report.baseline.compensated_steps, report.baseline.compensation_errors) == (("body",), ("body",))
