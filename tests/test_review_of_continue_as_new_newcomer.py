"""From a newcomer's review of continue-as-new; each test failed until the commit that added this
file."""

from __future__ import annotations

import typing
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


async def _bill(ctx: tf.WorkflowContext) -> dict[str, Any]:
    return {"month": ctx.input["month"]}


def _three_months() -> tf.WorkflowDefinition:
    return (tf.workflow("three-months")
            .step("bill", _bill)
            .choice("more", choices=[tf.when(lambda ctx: ctx.input["month"] < 3, next="renew")], default="done")
            .continue_as_new("renew", input=lambda ctx: {"month": ctx.input["month"] + 1})
            .succeed("done")
            .build())


async def test_step_events_of_different_runs_can_be_told_apart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A user feeds ``workflow.step.*`` events into an audit log / metrics store keyed by
    ``(instance_id, execution_id)`` (README: step events "carry ``execution_id`` (the
    execution's id, as its record in ``history`` has it ...; a start and its end have the same
    one)"), and bills a subscription that continues as new each month. They expect each
    month's ``bill`` to be a distinct event (Temporal tags every event with its run id; the
    job itself sees ``tf.current_step().execution_id`` ``"bill#1"``, ``"#1/bill#1"``,
    ``"#2/bill#1"``).

    Was: every run's events say ``execution_id="bill#1"`` and carry no run number (only
    ``workflow.continued`` has ``run``), so the three months' events collide: the log keeps
    one bill, and an event cannot be matched to the idempotency key the job used."""
    events: list[dict[str, Any]] = []
    async with open_test_engine(adapter=tf.adapters.MemoryAdapter()) as engine:
        engine.register(_three_months())
        engine.events.on("workflow.step.completed", events.append)
        done = await engine.wait(await engine.start("three-months", {"month": 1}, instance_id="sub"))
    assert done.status == "completed" and done.runs == 2
    bills = [e for e in events if e["step_name"] == "bill"]
    assert len(bills) == 3
    keys = {(e["instance_id"], e["execution_id"], e.get("run")) for e in bills}
    assert len(keys) == 3, f"three months' bill events are indistinguishable: {sorted(map(str, keys))}"


def test_continue_as_new_input_is_typed_as_a_function_of_the_context() -> None:
    """README ("It is typed"): "the functions of the step context the builder takes
    (conditions, mappers, causes, durations) are typed as taking a ``tf.WorkflowContext`` ...
    so a checker sees a misspelt ``ctx.inptu`` ... where it is written". A user writes
    ``.continue_as_new("renew", input=lambda ctx: {"month": ctx.inptu["month"] + 1})`` and
    runs ``mypy --strict``.

    Was: ``WorkflowBuilder.continue_as_new``'s ``input`` is typed ``Any``
    (runtime/_builder.py:358), so the lambda's ``ctx`` is ``Any`` and mypy passes the typo
    (checked: the same typo in a ``tf.when`` condition of the same chain is reported); it
    shows up only at run time, as the step failing in the first month's renewal."""
    hint = typing.get_type_hints(tf.WorkflowBuilder.continue_as_new)["input"]
    assert hint is not Any, "continue_as_new(input=) is typed Any: a lambda's ctx is unchecked"


@pytest.mark.parametrize("shape", ["continue alone", "pass then continue"])
def test_a_loop_that_only_continues_as_new_is_refused_at_build(shape: str) -> None:
    """README ("Builder and validation"): ``build()`` rejects "a loop of pass and choice steps
    that nothing can leave" because it would spin for ever. A newcomer sketching a
    subscription writes ``tf.workflow("spin").continue_as_new("again").build()`` (or puts a
    pass step before it) meaning to add the bill and the wait later, and starts it.

    Was: ``build()`` accepts it, and the instance continues as new for ever without
    waiting: measured 347 runs (each a SQLite commit of a new start record) in 0.5 s of
    real time, until cancelled; on the testing kit's MockClock virtual time never advances
    again, so the test that started it hangs."""
    builder = tf.workflow("spin")
    if shape == "pass then continue":
        builder = builder.pass_("p")
    with pytest.raises(tf.DefinitionError):
        builder.continue_as_new("again").build()
