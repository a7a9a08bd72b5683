"""From an adversarial review of 6ae58b5 (a failure known only from its record is matched by the
class it names or ``raised_as``, not as the ``tf.RecordedError`` carrying it). The oracle is
the crash-free run: docs/errors.md says a failure a resume finds stored "is matched from its
record" as it was matched live (types by the recorded class name, or for a fail step's or a
child step's failure by the class the step raises), and explore_crashes checks every crash
point ends as the crash-free run did. Each test failed on 6ae58b5; the first passes since the
commit that added this file (a child's failure read back from its own record, found inward);
the last since a fail step's recorded name is no longer matched as a class's; the second since a
map item's failure is read back inward from the records its lanes left."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import explore_crashes


async def _slow(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(1)
    return "ok"


async def _handled(ctx: tf.WorkflowContext) -> str:
    return "handled"


async def _declined(ctx: tf.WorkflowContext) -> None:
    raise ValueError("card declined")


def _kid() -> tf.WorkflowDefinition:
    return tf.workflow("kid").step("charge", _declined).build()


def _divergences(report: Any) -> list[tuple[str, str, Any]]:
    return [(p.after, p.outcome.status, p.outcome.output) for p in report.divergent]


async def test_a_child_failure_in_a_nested_parallel_is_caught_as_child_workflow_error_after_a_restart(
        autojump_clock: trio.testing.MockClock) -> None:
    """A user's workflow runs a fail-fast parallel step ``outer`` whose branch holds another
    fail-fast parallel ``inner``, one of whose branches runs a child workflow; ``outer`` has
    ``catch=[tf.Catch(errors=[tf.ChildWorkflowError], next="handle")]`` (docs/errors.md: a
    fail-fast parallel's catchers are matched against the failed branch's own error; a child
    step fails with ``ChildWorkflowError``, matched after a restart "by the class the step
    raises"). Crash-free, the child's failure is caught and the instance completes through
    ``handle``. They expect the same whatever crash point the process stops at.
    Was: after a crash once the inner parallel's failure was stored in the outer branch's
    lane (before ``outer`` decided), the resume re-raised it as a ``RecordedError`` named
    ``ValueError`` with no ``raised_as``: the catch missed and the instance failed (same for
    ``"ChildWorkflowError"`` and ``tf.StepError``)."""
    inner_kid = tf.branch("pay").child("pay-kid", workflow="kid").build()
    inner = tf.branch("n").parallel("inner", branches=[inner_kid, tf.branch("slow2").step("s2", _slow).build()]).build()
    wf = (tf.workflow("w")
          .parallel("outer", branches=[inner, tf.branch("slow").step("s", _slow).build()],
                    catch=[tf.Catch(errors=[tf.ChildWorkflowError], next="handle")])
          .succeed("done")
          .step("handle", _handled)
          .build())
    report = await explore_crashes(wf, {}, also=[_kid()], check=False)
    assert (report.baseline.status, report.baseline.output) == ("completed", "handled")
    assert _divergences(report) == []


async def test_a_fail_step_in_a_parallel_inside_a_map_item_is_caught_as_fail_step_error_after_a_restart(
        autojump_clock: trio.testing.MockClock) -> None:
    """A user's map ``orders`` (fail-fast, nothing tolerated) runs, per item, a fail-fast parallel
    step whose branch ends at ``.fail("refuse", error="OrderCancelled")``; the map has
    ``catch=[tf.Catch(errors=[tf.FailStepError], next="handle")]`` (docs/errors.md: a fail step
    fails its lane with a ``tf.FailStepError``; recorded, it is matched "by the class the step
    raises"). Crash-free the map's catch routes to ``handle``. They expect the same at every
    crash point.
    Was: resumed after the item's parallel failure was stored, the map rebuilds the item's
    error with ``recorded_failure`` on the *parallel* step's record (runtime/_map.py /
    actors/_map.py use ``branch_step(step, record.step_name)``, not the fail step that failed
    inside it), so ``raised_as`` is ``None`` and ``OrderCancelled`` names no class: the catch
    misses and the instance fails (same for ``"FailStepError"`` and ``tf.StepError``). A map
    directly holding the fail step, or a parallel holding a parallel, is matched right."""
    refuse = tf.branch("r").fail("refuse", error="OrderCancelled", cause="out of stock").build()
    item = tf.branch("item").parallel(
        "check", branches=[refuse, tf.branch("slow").step("s", _slow).build()]).build()
    wf = (tf.workflow("w")
          .map("orders", items=lambda ctx: [1, 2], branch=item,
               catch=[tf.Catch(errors=[tf.FailStepError], next="handle")])
          .succeed("done")
          .step("handle", _handled)
          .build())
    report = await explore_crashes(wf, {}, check=False)
    assert (report.baseline.status, report.baseline.output) == ("completed", "handled")
    assert _divergences(report) == []


@pytest.mark.parametrize("fanout", ["parallel", "map"])
async def test_a_fail_steps_name_is_not_matched_as_a_python_class_after_a_restart(
        autojump_clock: trio.testing.MockClock, fanout: str) -> None:
    """A user's fan-out step has a branch ending at ``.fail("lookup", error="KeyError",
    cause="no such sku")`` (their own error name, which happens to be a builtin's) and a catch
    for Python's ``KeyError`` (``catch=[tf.Catch(errors=[KeyError], next="handle")]``, meant for
    jobs raising it). Crash-free the fail step's ``FailStepError`` is no ``KeyError`` (types are
    matched with ``isinstance``): the catch misses and the instance fails. docs/errors.md: a
    recorded failure is matched "types by the recorded class name ... or, for a fail step's ...
    failure, by the class the step raises (tf.FailStepError)", and a fail step's name "is the
    workflow's own text", naming no class. They expect the instance to fail at every crash point.
    Was: resumed after the branch's (item's) failure was stored, the recorded error, named
    ``KeyError`` with ``named_by_workflow=True``, is matched by ``_names_a_subclass(KeyError,
    "KeyError")`` (runtime/_matching.py, the ``types`` check on a RecordedError ignores
    ``named_by_workflow``): the instance is caught and completes through ``handle``."""
    lookup = tf.branch("l").fail("lookup", error="KeyError", cause="no such sku").build()
    catch = [tf.Catch(errors=[KeyError], next="handle")]
    b = tf.workflow("w")
    if fanout == "parallel":
        b = b.parallel("fan", branches=[lookup, tf.branch("slow").step("s", _slow).build()], catch=catch)
    else:
        b = b.map("fan", items=lambda ctx: [1, 2], branch=lookup, catch=catch)
    wf = b.succeed("done").step("handle", _handled).build()
    report = await explore_crashes(wf, {}, check=False)
    assert (report.baseline.status, report.baseline.error_name) == ("failed", "KeyError")
    assert _divergences(report) == []


async def test_a_parents_catch_by_class_does_not_take_a_childs_fail_step_named_like_it(
        autojump_clock: trio.testing.MockClock) -> None:
    """The same rule for a child: a child workflow ends at ``.fail("lookup", error="KeyError")``.
    Its parent's child step catches Python's ``KeyError`` (a type) on one route and the name
    ``"KeyError"`` (a string, as Step Functions' ErrorEquals matches names) on another. The type
    does not take it, live as after any restart (the name is the workflow's own text); the
    string does, and so does ``tf.ChildWorkflowError``, the class the child step raises."""
    kid = tf.workflow("kid").fail("lookup", error="KeyError", cause="no such sku").build()
    for matcher, status in ((KeyError, "failed"), ("KeyError", "completed"), (tf.ChildWorkflowError, "completed")):
        wf = (tf.workflow("w")
              .child("run", workflow="kid", catch=[tf.Catch(errors=[matcher], next="handle")])
              .succeed("done")
              .step("handle", _handled)
              .build())
        report = await explore_crashes(wf, {}, also=[kid], check=False)
        assert report.baseline.status == status, (matcher, report.baseline.status)
        assert _divergences(report) == [], matcher

