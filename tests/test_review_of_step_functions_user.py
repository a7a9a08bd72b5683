"""From a review of trioflow's state machines as an AWS Step Functions (and Temporal) user reads
them. Each test failed until the commit that added this file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import open_test_engine


async def _on_engine(wf: tf.WorkflowDefinition, input: Any, adapter: tf.adapters.Adapter) -> tf.WorkflowInstance:
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        return await engine.wait(await engine.start(wf.name, input))


@pytest.mark.parametrize("storage", ["none", "memory", "sqlite"])
async def test_a_wait_step_first_in_its_lane_passes_the_lane_input_on(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str) -> None:
    """A Step Functions user starts a state machine (or a Map iterator, or a Parallel branch)
    with a Wait state and expects its input to pass through it, as ASL's Wait does and as the
    README promises ("the lane's last output passes on"; first in a lane, "the lane's input: the
    workflow input on the main line, the item in a map item, and in a branch what the lane
    running the parallel step had"). A pass or choice step first in its lane does that.

    Was: a wait step first in its lane passed ``None`` on (docs/waiting.md said so): ``wait -> pass`` completes with
    ``None`` instead of the workflow input, a map whose branch starts with a wait gives
    ``[None, None]`` instead of the items, and such a branch's output is ``None``; the same with
    ``execute_workflow``, a MemoryAdapter and a SQLiteAdapter."""
    main = tf.workflow("wait-first").wait("pause", seconds=5).pass_("after").build()
    items = (tf.workflow("wait-first-items")
             .map("each", items=lambda ctx: ctx.input["items"],
                  branch=tf.branch("one").wait("item-pause", seconds=3).pass_("item-after").build())
             .build())
    branch = (tf.workflow("wait-first-branch")
              .step("a", lambda ctx: "from-a")
              .parallel("fan", branches=[tf.branch("x").pass_("x-pass").build(),
                                         tf.branch("y").wait("y-pause", seconds=1).build()])
              .build())
    outputs = []
    for number, (wf, input) in enumerate([(main, {"order": 7}), (items, {"items": [1, 2]}), (branch, {})]):
        if storage == "none":
            result = await tf.execute_workflow(None, wf, input)
            assert result.success, result.error
            outputs.append(result.output)
        else:
            adapter = (tf.adapters.MemoryAdapter() if storage == "memory"
                       else tf.adapters.SQLiteAdapter(str(tmp_path / f"wait-{number}.db")))
            instance = await _on_engine(wf, input, adapter)
            assert instance.status == "completed", instance.error
            outputs.append(instance.output)
    assert outputs == [{"order": 7}, [1, 2], {"x": "from-a", "y": "from-a"}]


async def test_execute_workflow_refuses_a_child_step_before_any_step_runs(autojump_clock: trio.testing.MockClock) -> None:
    """``execute_workflow`` cannot run child steps (they need an engine). For a job name missing
    from ``jobs=`` the README promises the run "fails before any step runs", and a Temporal user
    expects such a setup mistake to surface, never to be taken for a business failure.

    Was: the child step failed at run time with ``InvalidArgumentError`` (a ``ValueError``),
    as an ordinary step failure: the steps before it have run already (here a charge), a
    ``Catch(errors=[ValueError])`` (or ``tf.ALL``) routes it as if the child had failed and the
    run reports success; and a map of child steps with tolerated failures "completes" a batch
    in which no child ever ran, each slot ``{"error": "InvalidArgumentError", ...}``."""
    charged: list[str] = []
    checkout = (tf.workflow("checkout")
                .step("charge", lambda ctx: charged.append("charge") or "ch-1")
                .child("ship", workflow="shipping", catch=[tf.Catch(errors=[ValueError], next="bad-address")])
                .succeed("done")
                .pass_("bad-address", result="asked the customer for a new address")
                .build())
    result = await tf.execute_workflow(None, checkout, {"order": 1})
    assert charged == [] and not result.success, (charged, result.success, result.output)

    batch = (tf.workflow("batch")
             .map("invoices", items=lambda ctx: ctx.input, tolerated_failures=1.0,
                  branch=tf.branch("one").child("bill", workflow="invoice").build())
             .build())
    result = await tf.execute_workflow(None, batch, [1, 2])
    assert not result.success, result.output


def test_build_refuses_a_cycle_that_can_never_end() -> None:
    """A Step Functions user who wires states into a loop with no way out (no End, Succeed or
    Fail state reachable from it) has the definition refused (no terminal state), and expects
    trioflow's ``build()``, which refuses unreachable steps, to refuse too, naming a step.

    Was: ``build()`` accepted ``a -> b -> a`` (and a choice whose rule and default loop back to
    itself); the instance then ran pass steps for ever, storing a record for each (24,000 in
    half a second on a MemoryAdapter), until its workflow timeout, if it has one; on trio's
    MockClock, which a test engine uses, virtual time never moves, so it never ends at all."""
    with pytest.raises(tf.DefinitionError, match="'a'|'b'"):
        tf.workflow("spin").pass_("a", next="b").pass_("b", next="a").build()
    with pytest.raises(tf.DefinitionError, match="'again'"):
        tf.workflow("spin-choice").choice("again", choices=[tf.when(lambda ctx: True, next="again")],
                                          default="again").build()
    # Ways out: a choice without a default may fail (NoChoiceMatchedError), a transform may raise,
    # and any other kind of step does work (a cancel or a timeout may be its end).
    tf.workflow("may-fail").choice("again", choices=[tf.when(lambda ctx: True, next="again")]).build()
    tf.workflow("transforms").pass_("a", transform=lambda ctx: 1, next="b").pass_("b", next="a").build()
    tf.workflow("polls").pass_("a").wait("w", seconds=1).choice(
        "c", choices=[tf.when(lambda ctx: True, next="a")], default="a").build()
