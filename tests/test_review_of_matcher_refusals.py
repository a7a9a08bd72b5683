"""From an adversarial review of 60e1aaa ("States.*" matchers refused, a catcher after tf.ALL
refused). Each failed until the commit that added this file: a fail step's error may not begin
with "States." either (so no name a workflow can fail with is unmatchable), the refusal of a
catcher after ALL says what is true (ALL leaves trioflow's own definition and storage errors)
and is made after every catch item is checked to be a Catch, and the hint for States.TaskFailed
no longer offers ALL (which matches timeouts too)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import SQLiteAdapter
from trioflow.testing import open_test_engine


async def run_one(wf: tf.WorkflowDefinition, *, adapter: Any,
                  extra: tuple[tf.WorkflowDefinition, ...] = ()) -> tf.WorkflowInstance:
    async with open_test_engine(adapter=adapter) as engine:
        for other in extra:
            engine.register(other)
        engine.register(wf)
        iid = await engine.start(wf.name)
        with trio.fail_after(10**6):
            return await engine.wait(iid)


@pytest.mark.parametrize("where", ["parallel-branch", "child"])
async def test_a_fail_steps_error_name_that_build_accepts_can_be_caught_by_that_name(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, where: str) -> None:
    """A user gives a fail step the error name ``"States.TaskFailed"``. ``.fail()`` accepts it
    (tests/test_catch.py guards that such a name is stored as given), and docs/errors.md says a
    string matcher matches "when equal to the error's name", a fail step's name being "the
    workflow's own text, whatever it reads like". So the user expects a parallel step (or a
    child step) wrapping that fail step to route it with
    ``tf.Catch(errors=["States.TaskFailed"], ...)``, or else ``.fail()`` to refuse the name too
    (ASL itself reserves the ``States.`` prefix: no state may report such an error).

    Was: ``.fail(error="States.TaskFailed")`` builds, but ``tf.Catch(errors=["States.TaskFailed"])``
    raises DefinitionError claiming "no Python error has" that name, though trioflow's own
    fail step produces it: the one name the workflow can fail with cannot be matched by name."""
    name = "States.TaskFailed"
    try:
        catch = [tf.Catch(errors=[name], next="handled")]
    except tf.DefinitionError:
        # Refusing the matcher is only consistent if the fail step's name is refused as well.
        with pytest.raises(tf.DefinitionError, match="must not begin with 'States.'"):
            tf.workflow("kid").fail("stop", error=name, cause="no stock").build()
        return
    extra: tuple[tf.WorkflowDefinition, ...] = ()
    if where == "parallel-branch":
        builder = tf.workflow("order").parallel(
            "p", branches=[tf.branch("b").fail("stop", error=name, cause="no stock").build()], catch=catch)
    else:
        kid = tf.workflow("kid").fail("stop", error=name, cause="no stock").build()
        extra = (kid,)
        builder = tf.workflow("order").child("p", workflow="kid", catch=catch)
    wf = builder.succeed("ok").pass_("handled", end=True).build()
    instance = await run_one(wf, adapter=SQLiteAdapter(tmp_path / "f.db"), extra=extra)
    assert instance.status == "completed", (instance.status, instance.error)
    assert instance.step_results["p"].status == "caught"


async def test_a_catcher_after_all_for_trioflows_own_definition_error_is_not_called_unreachable(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """docs/errors.md and the README say ``tf.ALL`` matches every error *except* trioflow's own
    ``DefinitionError`` and ``StorageError``; a ``Catch(errors=tf.DefinitionError)`` does catch
    one a step raises (a step that validates a tenant's workflow options with trioflow, say).
    A user writes ``[Catch(tf.ALL -> "fallback"), Catch(tf.DefinitionError -> "alert")]``:
    the second catcher runs exactly for what the first one skips. The user expects it to build
    (it did before 60e1aaa, and routed a DefinitionError to "alert"), or at least a refusal
    that does not state something false.

    Was: build() refuses it with "catch #1 matches every error (trioflow.ALL), so the
    catchers after it could never run", and docs/errors.md repeats "one after it could never
    run", though catcher #2 is reached for every DefinitionError."""

    async def validates_options(ctx: tf.WorkflowContext) -> None:
        raise tf.DefinitionError("tenant options: retry interval must be a finite number")

    builder = (tf.workflow("provision")
               .step("validate", validates_options, catch=[tf.Catch(errors=tf.ALL, next="fallback"),
                                                           tf.Catch(errors=tf.DefinitionError, next="alert")])
               .succeed("ok")
               .pass_("fallback", result="fallback", end=True)
               .pass_("alert", result="alert", end=True))
    try:
        wf = builder.build()
    except tf.DefinitionError as refused:
        assert "never run" not in str(refused), f"refused with a false claim: {refused}"
        return
    instance = await run_one(wf, adapter=SQLiteAdapter(tmp_path / "d.db"))
    assert (instance.status, instance.output) == ("completed", "alert"), instance.error


def test_the_refusal_of_states_taskfailed_does_not_offer_all_which_also_catches_timeouts() -> None:
    """A Step Functions user ports ``"Catch": [{"ErrorEquals": ["States.TaskFailed"], "Next":
    "failed"}]``. In ASL, ``States.TaskFailed`` matches any error *except* ``States.Timeout``
    (a timed-out task is not caught by it and fails the execution). The refusal tells the user
    what to write instead, so the user expects its advice to keep that meaning.

    Was: the message says "use ... trioflow.ALL for States.ALL or States.TaskFailed";
    ``tf.ALL`` also matches ``StepTimeoutError`` (and ``SignalTimeoutError``), so the ported
    catcher silently starts catching timeouts the original let through. (Following the advice
    for a port of ``[TaskFailed -> failed, Timeout -> late]`` also lands on a catcher after
    ALL, which build() then refuses.)"""
    with pytest.raises(tf.DefinitionError) as refused:
        tf.Catch(errors=["States.TaskFailed"], next="failed")
    message = str(refused.value)
    assert not re.search(r"trioflow\.ALL for [^;:]*States\.TaskFailed", message), message


def test_a_non_catch_item_after_an_all_catcher_is_reported_as_what_it_is() -> None:
    """A user loads ``catch=`` from a config and one item is a stray string:
    ``catch=[tf.Catch(errors=tf.ALL, next="handler"), "handler"]``. build() refuses it; the
    user expects the message to say what is wrong (README: malformed options are named,
    "catch items must be trioflow.Catch").

    Was: the new ALL-last check runs on catcher #1 before item #2 is looked at, so the
    message is "catch #1 matches every error (trioflow.ALL), so the catchers after it could
    never run: put it last"; doing as told (moving the string first) only then reveals the
    real error."""
    builder = tf.workflow("w").task("charge", job=lambda: None,
                                    catch=[tf.Catch(errors=tf.ALL, next="handler"), "handler"])  # type: ignore[list-item]
    with pytest.raises(tf.DefinitionError, match=r"must be trioflow\.Catch"):
        builder.pass_("handler").build()
