"""Adversarial review of the testing kit's commits 862eb68, 78a2603, 96933dc and 81c8ba1
(behaviour validators, explore_crashes' signal checks, autojumping, never-ends messages,
open_test_engine option checks), as a user who property-tests their own workflows with it.

Each test fails on the reviewed code because of a real problem: a crash exploration that
reports a false difference or misses a real one, an input that is accepted and then fails
obscurely, or an error that does not say what was wrong. Every run is on trio's
``MockClock(autojump_threshold=0)`` (``trioflow.testing.run``): no real sleeps.
"""

from __future__ import annotations

import pytest
import trioflow as tf
from trioflow.testing import (
    CrashDivergenceError, CrashReport, ScriptedJob, explore_crashes, open_test_engine, raises, returns, run, sleeps,
)

# -- explore_crashes: false differences ----------------------------------------------------------


def test_a_nan_in_the_output_is_not_reported_as_a_divergence() -> None:
    """A user relies on explore_crashes passing a workflow whose resumed runs end exactly as the
    fault-free one did. An output holding NaN (the mean of no samples; the codec stores NaN)
    is compared with ``!=``, and NaN is never equal to itself: every crash point is reported
    divergent, with the message "output nan, the fault-free run gave nan"."""
    stats = tf.workflow("stats").task("mean", job="mean").build()

    async def main() -> CrashReport:
        return await explore_crashes(stats, jobs={"mean": ScriptedJob(returns({"mean": float("nan")}))}, check=False)

    report = run(main)
    assert [p.divergence for p in report.divergent] == [], report.divergent[0].divergence


def test_a_transactional_rollback_is_not_reported_as_a_missing_compensation() -> None:
    """The docs say a transactional workflow gets a fresh MemoryDriver from explore_crashes, and
    (README) that when such a run fails its transaction rolls back and entity-step compensations
    are skipped and not listed in compensated_steps. The explorer's check still demands every
    completed compensable step be compensated: every crash point of a correct transactional
    run that fails is reported divergent ("compensated steps []; its completed compensable
    steps, newest first, are ['mk']"), though each ends exactly as the fault-free run."""
    order = (tf.workflow("tx-order")
             .step(tf.create_entity_step("mk", "orders", lambda ctx: {"id": 1, "total": 5}))
             .task("ship", job="ship").transactional().build())

    async def main() -> CrashReport:
        return await explore_crashes(order, jobs={"ship": ScriptedJob(raises(PermissionError))}, check=False)

    report = run(main)
    assert report.baseline.status == "failed" and report.baseline.compensated_steps == ()
    assert [p.divergence for p in report.divergent] == [], report.divergent[0].divergence


def test_a_scripted_value_is_not_shared_between_calls_and_runs() -> None:
    """A user relies on ScriptedJob(returns(v)) answering like a real service, with a fresh
    value per call (the docs: a replayed attempt gets "the behaviour it got before the crash,
    as a real service answers a repeated request"). It hands out the same object every call,
    so an ``output=`` mapper that updates its result in place changes the script itself: the
    next call (and every later run of explore_crashes) starts from the mutated value, and the
    explorer reports a false divergence (tags ['charged', 'charged'] against ['charged'])."""

    def tag(result: dict[str, list[str]], ctx: tf.WorkflowContext) -> dict[str, list[str]]:
        result["tags"].append("charged")
        return result

    charge = tf.workflow("charge").task("charge", job="charge", output=tag).build()

    async def main() -> CrashReport:
        return await explore_crashes(charge, jobs={"charge": ScriptedJob(returns({"id": "ch-1", "tags": []}))},
                                     check=False)

    report = run(main)
    assert report.baseline.output == {"id": "ch-1", "tags": ["charged"]}
    assert [p.divergence for p in report.divergent] == [], report.divergent[0].divergence


def test_a_child_pushed_past_its_workflow_timeout_by_a_rerun_is_tolerated_as_the_root_is() -> None:
    """docs/testing.md: "with a workflow timeout, one of them may end timed_out where the other did
    not: a step run again takes its time again", and with also= "each child is checked as the
    root is". Explored as the root, two 3 s steps under with_timeout(7) pass (a lost write
    re-runs a step: 9 s, timed_out, tolerated). The same workflow as a child fails the
    exploration: the child times out, its parent's child step fails, and the parent's status
    'failed' is reported against the fault-free 'completed', with no tolerance for the child's
    own timeout."""
    jobs = {"slow": ScriptedJob(sleeps(3, returns("s"))), "undo": ScriptedJob()}

    def timed(name: str) -> tf.WorkflowDefinition:
        return (tf.workflow(name).task("a", job="slow", compensate="undo")
                .task("b", job="slow", compensate="undo").with_timeout(7).build())

    async def as_root() -> CrashReport:
        return await explore_crashes(timed("root"), jobs=jobs)

    assert run(as_root).baseline.status == "completed"  # (passes: the root's timeout is tolerated)
    parent = tf.workflow("parent").child("c", workflow="kid-timed").build()

    async def as_child() -> CrashReport:
        return await explore_crashes(parent, jobs=jobs, also=[timed("kid-timed")], check=False)

    report = run(as_child)
    assert [p.divergence for p in report.divergent] == [], report.divergent[0].divergence


# -- explore_crashes: real differences missed ----------------------------------------------------

_flag = {"calls": 0}


def _first_call_only(ctx: tf.WorkflowContext) -> bool:
    """A condition on something besides the run's own data (a feature flag read from a
    service): true the first time it is asked in a run, false after."""
    _flag["calls"] += 1
    return _flag["calls"] == 1


def _reset_flag() -> None:
    _flag["calls"] = 0


def _picks(name: str) -> tf.WorkflowDefinition:
    return (tf.workflow(name).step("a", lambda ctx: 1)
            .choice("pick", choices=tf.when(_first_call_only, next="left"), default="right")
            .pass_("left", result="L", next="done").pass_("right", result="R", next="done")
            .pass_("done", transform=lambda ctx: ctx.steps.get("left") or ctx.steps.get("right")).build())


def test_a_child_that_decides_otherwise_after_a_crash_is_reported() -> None:
    """docs/testing.md: with also=, "each child is checked as the root is", and for a root the
    explorer reports a choice that decides otherwise after a resume (it does: the same
    workflow explored as the root raises CrashDivergenceError). As a child whose output the
    parent does not return, the resumed child ends 'R' down the other path where the
    fault-free child ended 'L' (report.points[...].outcome.children shows it), and the
    exploration passes: the child is never compared with the fault-free child."""
    parent = tf.workflow("parent").child("c", workflow="picks").pass_("fin", result="constant").build()

    async def main() -> CrashReport:
        return await explore_crashes(parent, also=[_picks("picks")], before_run=_reset_flag)

    with pytest.raises(CrashDivergenceError):
        run(main)


def test_contested_signals_do_not_excuse_an_unrelated_difference() -> None:
    """docs/testing.md: for receive steps that wait at once for signals of one name, "the explorer
    accepts that difference [which took which] as long as the payloads taken, by signal name,
    are those of the fault-free run". It accepts any difference instead: after two voters'
    receives of 'vote', a choice that decides otherwise after a resume ends 'slow lane' where
    the fault-free run ended 'fast lane', and that point is not reported (the same workflow
    with two signal names is)."""
    votes = (tf.workflow("votes")
             .parallel("ballot", branches=[tf.branch("ann").receive("ra", signal="vote", timeout=60).build(),
                                           tf.branch("bob").receive("rb", signal="vote", timeout=60).build()])
             .choice("pick", choices=tf.when(_first_call_only, next="fast"), default="slow")
             .pass_("fast", result="fast lane", end=True).pass_("slow", result="slow lane").build())

    async def main() -> CrashReport:
        return await explore_crashes(votes, signals=[("vote", 1), ("vote", 2)], before_run=_reset_flag)

    with pytest.raises(CrashDivergenceError):
        run(main)


# -- explore_crashes: arguments accepted, then failing obscurely ---------------------------------

_kid = tf.workflow("kid").step("k", lambda ctx: 1).build()


def _explore_or_error(workflow: object, **options: object) -> tuple[CrashReport | None, BaseException | None]:
    async def main() -> CrashReport:
        return await explore_crashes(workflow, **options)  # type: ignore[arg-type]

    try:
        return run(main), None
    except Exception as exc:  # (what a user sees)
        return None, exc


def test_also_given_one_definition_is_named_as_the_mistake() -> None:
    """signals= given one pair rather than a list is an InvalidArgumentError saying so (862eb68).
    also= given one definition rather than a list (also=kid) fails with a bare TypeError:
    "Value after * must be an iterable, not WorkflowDefinition", naming neither also= nor the fix."""
    parent = tf.workflow("parent").child("c", workflow="kid").build()
    report, error = _explore_or_error(parent, also=_kid)
    if error is not None:
        assert isinstance(error, tf.TrioflowError) and "also" in str(error), repr(error)
    else:
        assert report is not None and report.baseline.status == "completed"


def test_a_workflow_not_built_is_named_as_the_mistake() -> None:
    """engine.register(builder) says "register() needs a built WorkflowDefinition ... call its
    .build()". explore_crashes(builder), forgetting .build() (as easy in a test as anywhere),
    fails with a bare AttributeError: 'WorkflowBuilder' object has no attribute 'name'."""
    _, error = _explore_or_error(tf.workflow("w").step("k", lambda ctx: 1))
    assert isinstance(error, tf.TrioflowError) and "build()" in str(error), repr(error)


def test_the_explored_workflow_listed_in_also_is_not_a_conflicting_definition() -> None:
    """A user who passes every workflow of their app as also= (the root among them) gets a
    DefinitionError "workflow 'parent' is registered already with another definition; pass
    replace=True to replace it": it is the same definition, and explore_crashes takes no
    replace=. (A definition without callables is accepted twice: the copies explore_crashes
    instruments differ only when they hold callables.) Either accept the duplicate or name it."""
    parent = tf.workflow("parent").step("a", lambda ctx: 0).child("c", workflow="kid").build()
    report, error = _explore_or_error(parent, also=[parent, _kid])
    if error is not None:
        assert "replace=True" not in str(error) and "also" in str(error), repr(error)
    else:
        assert report is not None and report.baseline.status == "completed"


def _yields_its_rows(data: object) -> object:
    yield {"row": 1}


@pytest.mark.parametrize("job", [returns("ch-1"), _yields_its_rows], ids=["a behaviour, not a ScriptedJob", "a generator"])
def test_jobs_given_to_explore_crashes_are_checked_as_engine_jobs_register_checks_them(job: object) -> None:
    """engine.jobs.register refuses, with DefinitionError naming the job, a job that is not
    callable (jobs={"charge": returns("ch-1")}, the ScriptedJob( ) forgotten) and a generator
    function. explore_crashes(jobs=...) takes both unchecked, and the exploration passes, no
    error and no divergence: every run fails step 'charge' with a bare "TypeError: 'Returns'
    object is not callable" (or UnencodableValueError: the output is a generator), as if the
    workflow were wrong; a test that does not assert the baseline's status sees nothing."""
    flow = tf.workflow("pay").task("charge", job="charge").build()
    report, error = _explore_or_error(flow, jobs={"charge": job})
    assert isinstance(error, tf.TrioflowError) and "charge" in str(error), (
        repr(error) if error is not None else f"explored: baseline {report.baseline.status}"  # type: ignore[union-attr]
        f" {report.baseline.error_name}, {len(report.divergent)} divergent")  # type: ignore[union-attr]


# -- scripted behaviours ------------------------------------------------------------------------


def test_raises_stop_iteration_plays_as_stop_iteration_or_is_refused() -> None:
    """The behaviour validators (862eb68, 78a2603) refuse what a ScriptedJob cannot play, so
    that a test double does not fail the step with an error the real job would not raise.
    raises(StopIteration) (a real job's ``next(iter(rows))`` on no rows) is accepted, and plays
    as RuntimeError "coroutine raised StopIteration" (PEP 479: it is raised inside an async
    def), where the real job's step fails with StopIteration: a catch on StopIteration, or an
    assertion on error_name, sees another error."""
    try:
        job = ScriptedJob(raises(StopIteration))
    except tf.InvalidArgumentError:
        return  # (refused as it is made: fine)
    flow = tf.workflow("lookup").task("first", job="first").build()

    async def main() -> tf.WorkflowInstance:
        async with open_test_engine() as engine:
            engine.jobs.register("first", job)
            engine.register(flow)
            return await engine.wait(await engine.start("lookup", {}))

    instance = run(main)
    assert instance.error_name == "StopIteration", instance.error


def test_a_list_of_behaviours_is_not_advised_into_a_job_returning_them() -> None:
    """job_behaviours() draws a tuple of behaviours; passing it as it is, ScriptedJob(drawn)
    rather than ScriptedJob(*drawn), is refused with advice to write returns((Returns(...),
    Raises(...))): a job that returns the behaviour objects themselves. The message should say
    to unpack them (ScriptedJob(*behaviours)), or ScriptedJob should take the sequence."""
    drawn = (raises(ConnectionError), returns("ok"))
    try:
        job = ScriptedJob(drawn)  # type: ignore[arg-type]
    except tf.InvalidArgumentError as exc:
        assert "returns((Raises(" not in str(exc) and "*" in str(exc), str(exc)
    else:
        assert job.behaviour(2) == returns("ok")
