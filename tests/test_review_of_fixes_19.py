"""A review of ce55324 and 2b9db6b: each test failed on 2b9db6b, before its fix. Virtual time
only (pytest-trio's autojump MockClock; open_test_engine / explore_crashes), no real sleeps.
(Not taken: a delayed start cancelled before its delay is over ends without workflow.started
and on_start, as documented: it never started.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.adapters import SQLiteAdapter
from trioflow.testing import ScriptedJob, explore_crashes, open_test_engine, returns, sleeps, virtual_wall_clock


def _parent_catching_all(kid: str) -> tf.WorkflowDefinition:
    """A parent whose child step runs beside a slow sibling branch (so a crash can land between
    the child step's failure record and the parallel's catch), caught by tf.ALL."""
    return (tf.workflow("w").parallel("p", branches=[
            tf.branch("x").child("c", workflow=kid).build(),
            tf.branch("y").task("ty", job="slow").build()],
            catch=[tf.Catch(errors=tf.ALL, next="h")])
            .succeed("ok").pass_("h").build())


async def _raises_definition_error(data: Any) -> Any:
    raise tf.DefinitionError("bad config")


async def test_all_catches_a_childs_own_trioflow_error_only_after_a_restart(autojump_clock: Any) -> None:
    """REGRESSION (ce55324; passes on ce55324^). Expected: a child that fails with trioflow's
    own DefinitionError is not routed by the parent's Catch(errors=tf.ALL), before or after a
    restart (9ce2da9: "tf.ALL passes over trioflow's own errors ... in a child's recorded
    failure"); the fault-free run ends 'failed', and so must every crash run.

    Before the fix: CrashDivergenceError: "crash after snapshot write 7 of 10 (step 'c' failed), then
    resume: final status 'completed', the fault-free run ended 'failed'".

    Cause: runtime/_matching.py:91 now skips the by-name test whenever ``raised_as`` is set, but
    runtime/_decide.py:92 (recorded_failure) sets ``raised_as=ChildWorkflowError`` on every
    child step failure rebuilt from its record, whose error_name is the *child's* error
    ("DefinitionError"), not a fail step's text. ``raised_as`` only proves the name is not
    the workflow's own text for a FailStep."""
    kid = tf.workflow("kid").task("k", job=_raises_definition_error).build()
    jobs = {"slow": ScriptedJob(sleeps(50, returns(1)))}
    report = await explore_crashes(_parent_catching_all("kid"), {}, jobs=jobs, also=[kid])
    assert report.baseline.status == "failed"


async def test_all_and_a_grandchilds_fail_step_named_like_trioflows_errors(autojump_clock: Any) -> None:
    """MISSED CASE (ce55324: a child's end notice says its failure was a fail step's name).
    Expected: a grandchild ending at ``fail(error="DefinitionError")`` (workflow text) reaches
    the parent through its child as ChildWorkflowError(... ChildWorkflowError(... DefinitionError));
    the parent's Catch(errors=tf.ALL) routes it as it does when the fail step is in a direct
    child (that case completes), and a crash does not change the outcome.

    Before the fix: the fault-free run ends 'failed' (ALL takes the name for trioflow's own error), and
    explore_crashes raises CrashDivergenceError: "crash after snapshot write 12 of 15 (step 'c'
    failed), then resume: final status 'completed', the fault-free run ended 'failed'".

    Cause: actors/_run.py:543-545 (_end_notice) marks "fail_step" only when the ending
    instance's own failed step is a FailStep; the middle child failed at a *child* step, so its
    notice carries the grandchild's fail-step name unmarked, and actors/_child.py:60-61 builds
    RecordedError(named_by_workflow=False). After the restart, runtime/_decide.py:92 sets
    raised_as=ChildWorkflowError and runtime/_matching.py:91 skips the name test: ALL matches."""
    g = tf.workflow("g").fail("f", error="DefinitionError").build()
    kid = tf.workflow("kid").child("gc", workflow="g").build()
    jobs = {"slow": ScriptedJob(sleeps(50, returns(1)))}
    report = await explore_crashes(_parent_catching_all("kid"), {}, jobs=jobs, also=[kid, g])
    assert report.baseline.status == "completed", report.baseline.error


async def _one(data: Any) -> int:
    return 1


async def test_the_workflow_timeout_reaches_a_delayed_starts_on_start_hook(autojump_clock: Any) -> None:
    """HOLE (2b9db6b claims it: _announce_start's docstring, "Inside the run's scope: a cancel
    or the workflow timeout reaches a slow hook too"; README: on_start runs when the instance
    starts its first step). Expected: with ``with_timeout(5)`` and an async on_start that takes
    20 s, the instance times out, as it does without a delay (that variant: 'timed_out').

    Before the fix: with ``delay=100`` it completes: the hook runs 20 s unbounded, and the 5 s count
    only starts after it.

    Cause: actors/_instance.py:135 opens the scope with ``deadline=inf`` for a delayed start and
    :148 announces (runs on_start) before :150 sets ``scope.deadline``."""
    async def slow_hook(ctx: Any) -> None:
        await trio.sleep(20)

    wf = tf.workflow("x").with_timeout(5).with_hooks(on_start=slow_hook).task("a", job=_one).build()
    async with open_test_engine(clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("x", delay=100))
    assert done.status == "timed_out", (done.status, done.error)


@pytest.mark.parametrize("call", ["get_instances", "purge"])
async def test_a_workflow_filter_that_is_not_valid_text_fails_sqlite(
    autojump_clock: Any, tmp_path: Path, call: str,
) -> None:
    """MISSED CASE (2b9db6b: "ids that are not valid text are refused with InvalidArgumentError
    instead of failing SQLite"). Expected: ``get_instances(workflow_name="\\udc80")`` and
    ``purge(older_than=0, workflow="\\udc80")`` (a name decoded with surrogateescape) are
    refused with InvalidArgumentError, or answer [] / 0 as they do on MemoryAdapter.

    Before the fix on SQLiteAdapter: ``DatabaseError: SQLite list failed: 'utf-8' codec can't encode
    character '\\udc80' ...`` (and ``SQLite purge failed: ...``): a storage failure for bad input.

    Cause: runtime/_engine.py:1542 (_check_listing) and Engine.purge (:761) check the
    workflow name's type only, not ``valid_text`` as :1549 now does for ``after=``."""
    async with open_test_engine(adapter=SQLiteAdapter(tmp_path / "f.db"), clock=virtual_wall_clock()) as engine:
        engine.register(tf.workflow("x").task("a", job=_one).build())
        await engine.wait(await engine.start("x"))
        try:
            if call == "get_instances":
                result: Any = await engine.get_instances(workflow_name="\udc80")
            else:
                result = await engine.purge(older_than=0, workflow="\udc80")
        except tf.InvalidArgumentError:
            return
    assert result in ([], 0)
