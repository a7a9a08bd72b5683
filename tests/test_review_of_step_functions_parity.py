"""From a parity review: trioflow as a user migrating from AWS Step Functions, Temporal and DBOS
reads docs/errors.md, docs/waiting.md and docs/fanout.md. The first test (and the last, added
with the fix) failed until the commit that added this file: Amazon States Language names other
than States.ALL are refused as matchers (no Python error has one), and so is a catcher after one
that matches every error; the second guards a boundary that held."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import SQLiteAdapter
from trioflow.testing import open_test_engine


async def run_one(wf: tf.WorkflowDefinition, input: Any = None, *, adapter: Any = None,
                  extra: tuple[tf.WorkflowDefinition, ...] = ()) -> tf.WorkflowInstance:
    async with open_test_engine(adapter=adapter) as engine:
        for other in extra:
            engine.register(other)
        engine.register(wf)
        iid = await engine.start(wf.name, input)
        with trio.fail_after(10**6):
            return await engine.wait(iid)


async def hangs(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(3600)


@pytest.mark.parametrize("asl_name", ["States.Timeout", "States.TaskFailed"])
async def test_asl_error_names_other_than_states_all_are_not_silently_accepted(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, asl_name: str) -> None:
    """A user porting ``"Catch": [{"ErrorEquals": ["States.Timeout"], "Next": "late"}]`` writes
    ``tf.Catch(errors=["States.Timeout"], next="late")``, as errors.md's table maps
    ``ErrorEquals: ["CardDeclined"]`` to ``errors=["CardDeclined"]``. ``"States.ALL"`` is refused
    at definition with a hint to use ``tf.ALL``, so the user expects any other ``States.*``
    name either to mean its ASL counterpart (a step timeout, any task failure) or to be refused
    the same way.

    Was: ``build()`` accepts it, and it can never match (no Python error is named with a
    dot; it matches only a cause that happens to contain the text): the step's timeout is not
    caught and the instance fails with ``StepTimeoutError``."""
    try:
        wf = (tf.workflow("asl-port")
              .step("call", hangs, timeout=5, catch=[tf.Catch(errors=[asl_name], next="late")])
              .succeed("ok")
              .pass_("late", end=True)
              .build())
    except tf.DefinitionError:
        return  # refused like "States.ALL": fine
    instance = await run_one(wf, adapter=SQLiteAdapter(tmp_path / "asl.db"))
    assert instance.status == "completed", (instance.status, instance.error)
    assert instance.step_results["call"].status == "caught"


class CardDeclined(Exception):
    pass


async def charge_item(ctx: tf.WorkflowContext) -> Any:
    if ctx.item["fail"]:
        raise CardDeclined(f"item {ctx.item_index} declined")
    return ctx.item["v"]


@pytest.mark.parametrize(("failing", "status"), [(29, "completed"), (30, "failed")])
async def test_guard_a_fraction_tolerates_exactly_what_it_says_at_the_boundary(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, failing: int, status: str) -> None:
    """(Guard, passes today.) A Step Functions user's ``ToleratedFailurePercentage: 29`` becomes
    ``tolerated_failures=0.29``; of 100 items, 29 failures are tolerated (their slots hold
    ``{"error", "cause"}``, in item order) and 30 fail the step, though ``0.29 * 100`` is
    ``28.999...`` in floats: a rewrite to ``int(fraction * count)`` would break this."""
    wf = (tf.workflow("batch")
          .map("charge", items=lambda ctx: ctx.input, tolerated_failures=0.29,
               branch=tf.branch("one").step("charge-one", charge_item).build())
          .build())
    items = [{"v": i, "fail": i < failing} for i in range(100)]
    instance = await run_one(wf, items, adapter=SQLiteAdapter(tmp_path / "frac.db"))
    assert instance.status == status, instance.error
    if status == "completed":
        assert instance.output[28] == {"error": "CardDeclined", "cause": "item 28 declined"}
        assert instance.output[29:] == list(range(29, 100))
    else:
        assert instance.error_name == "MapError"


def test_a_catcher_after_one_that_catches_every_error_is_refused() -> None:
    """ASL refuses ``States.ALL`` anywhere but in the last catcher. A user who puts
    ``tf.Catch(errors=tf.ALL, ...)`` first expects either the later, more specific catchers to
    be reached or to be told they never will be. (Was: accepted, and the catchers after it
    silently never ran.)"""
    builder = (tf.workflow("order")
               .step("charge", hangs, timeout=5, catch=[tf.Catch(errors=tf.ALL, next="any"),
                                                        tf.Catch(errors=CardDeclined, next="declined")])
               .succeed("ok")
               .pass_("any", end=True)
               .pass_("declined", end=True))
    with pytest.raises(tf.DefinitionError, match=r"catch #1 holds trioflow\.ALL.*put it last"):
        builder.build()
