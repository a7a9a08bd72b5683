"""Adversarial review of d41084e (events for steps cut short, BaseExceptions of user code),
735fed2 (explore_crashes comparisons) and 7002dc5 (conformance kit cancellation checks).

Each test is one finding and fails on the reviewed code because of a real problem. Every run is
on trio's ``MockClock(autojump_threshold=0)`` (``trioflow.testing.run``): no real sleeps.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import trio

import trioflow as tf
from trioflow.testing import CrashReport, explore_crashes, open_test_engine, run, virtual_wall_clock

from test_review_of_service_monitoring import STEP_ENDS, TERMINAL, boom, ok, release, slow
from test_review_of_service_monitoring import Recorder as MonitoringRecorder

class Recorder(MonitoringRecorder):
    """What a monitoring service subscribed with ``on("workflow.*")`` sees."""

    def brief(self, instance_id: str) -> list[tuple[Any, ...]]:
        return [(e["event"], e.get("lane", ""), e.get("step_name"), e.get("error_name")) for e in self.of(instance_id)]

    def pairing_problems(self, instance_id: str) -> list[str]:
        """Ends with no start, and steps started with no end before the terminal event."""
        open_: collections.Counter[tuple[str, Any]] = collections.Counter()
        problems = []
        for e in self.of(instance_id):
            key = (e.get("lane", ""), e.get("step_name"))
            if e["event"] == "workflow.step.started":
                open_[key] += 1
            elif e["event"] in STEP_ENDS:
                if open_[key]:
                    open_[key] -= 1
                else:
                    problems.append(f"{e['event']} ({e.get('error_name')}) for {key} that never started")
            elif e["event"] in TERMINAL:
                problems += [f"{key} started and never ended" for key, n in open_.items() if n]
        return problems


class _OddExit(BaseException):
    """A BaseException of user code's own (neither a cancellation nor KeyboardInterrupt /
    SystemExit), as trioflow._escapes means it."""


# -- 1 ------------------------------------------------------------------------------------------


def test_steps_in_branches_resting_out_of_memory_get_an_end_when_the_instance_is_cut_short() -> None:
    """README (Events): "a step of any kind cut short by a cancel, a timeout or a fail-fast
    sibling has one too [a workflow.step.failed, Cancelled] ... whether it ran in memory or
    waited out of it". A monitor counts in-flight steps (+1 on step.started, -1 on an end).
    An approval fan-out (a parallel step whose branches wait for a timer and a signal) rests
    out of memory after a second. When its workflow timeout passes, or it is cancelled, only
    the parallel step itself gets its Cancelled end: the run taken up from storage is cut short
    at the main line's first checkpoint (actors/_lane.py, run_lane's checkpoint_if_cancelled),
    and the branches' wait and receive steps, which published workflow.step.started, never get
    an end (the same with map items). The same instance cut short while still in memory, or
    cancelled while its workflow is not registered (_cancel_stored), does end them all."""
    fan = (tf.workflow("fan").step("a", ok, release).parallel("p", branches=[
        tf.branch("x").wait("xw", seconds=5000).build(),
        tf.branch("y").receive("yr", signal="go").build()]))
    timed = fan.with_timeout(50).build()
    plain = (tf.workflow("fan-plain").step("a", ok, release).parallel("p", branches=[
        tf.branch("x").wait("xw", seconds=5000).build(),
        tf.branch("y").receive("yr", signal="go").build()]).build())
    items = (tf.workflow("items").step("a", ok, release).map(
        "m", items=lambda ctx: [1, 2], branch=tf.branch("it").receive("ir", signal="go").build()).build())

    async def main() -> list[str]:
        rec = Recorder()
        problems = []
        async with open_test_engine() as engine:
            engine.events.on("workflow.*", rec)
            for definition in (timed, plain, items):
                engine.register(definition)
            i_timed = await engine.start("fan")
            i_plain = await engine.start("fan-plain")
            i_items = await engine.start("items")
            await trio.sleep(20)  # every lane rests: the instances have left memory
            assert await engine.cancel(i_plain)
            assert await engine.cancel(i_items)
            for iid in (i_timed, i_plain, i_items):
                instance = await engine.wait(iid)
                await trio.sleep(1)
                problems += [f"{instance.workflow_name} ({instance.status}): {p}" for p in rec.pairing_problems(iid)]
        return problems

    assert run(main) == []


# -- 2 ------------------------------------------------------------------------------------------


def test_a_delayed_start_cancelled_before_its_workflow_is_registered_publishes_no_end_without_a_start(
        tmp_path: Path) -> None:
    """README: a delayed start announces ``workflow.started`` and its first step only once its
    delay is over; "one cancelled while it waited for its start never started: it ends without
    being announced". And the README says an end with no start "would be worse" than none.
    Cancelled from an engine whose workflow is not registered yet (a deploy registering
    workflows after the engine opens), the instance gets a ``workflow.step.failed``
    (Cancelled) for its first step, which never started: _decide.steps_under_way counts the
    main lane's ``{"start": due}`` wait as a step under way, and Engine._cancel_stored publishes
    an end for it. The same cancel with the workflow registered publishes none."""
    wf = tf.workflow("later").step("a", ok, release).step("b", ok).build()
    path = str(tmp_path / "flows.db")

    async def main() -> list[tuple[Any, ...]]:
        rec = Recorder()
        clock = virtual_wall_clock()
        async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(path), clock=clock) as engine:
            engine.register(wf)
            iid = await engine.start("later", {}, delay=1000)
            await trio.sleep(10)
        async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(path), clock=clock) as engine:
            engine.events.on("workflow.*", rec)
            assert await engine.cancel(iid)  # stored: the workflow is not registered yet
            engine.register(wf)
            assert (await engine.wait(iid)).status == "cancelled"
            await trio.sleep(1)
        return [e for e in rec.brief(iid) if e[0].startswith("workflow.step.")]

    assert run(main) == []


# -- 3 ------------------------------------------------------------------------------------------


def test_a_stored_cancel_of_a_step_waiting_to_retry_reports_the_attempts_it_made(tmp_path: Path) -> None:
    """README: ``workflow.step.failed`` carries ``attempts``, and a retry delay is a durable wait
    (the attempt count survives a restart). A step that failed 3 times and waits out of memory
    for its 4th attempt, cancelled, publishes ``attempts: 3`` (and records a failed execution of
    3 attempts) when its workflow is registered. Cancelled while its workflow is not registered
    yet (Engine._cancel_stored), the same step publishes ``attempts: 1`` (``cut_short(name)``
    with its default) and no execution of it is recorded: a dashboard of retries spent, or an
    alert on "cancelled after N attempts", gets the wrong count depending on deploy order."""
    async def flaky(ctx: Any) -> None:
        raise ConnectionError("down")

    wf = (tf.workflow("retrying").step("a", ok, release)
          .step("b", flaky, retry=tf.Retry(max_attempts=5, interval=100, backoff_rate=1.0, max_interval=100)).build())

    async def one(path: str, registered_first: bool) -> tuple[list[Any], list[Any]]:
        rec = Recorder()
        clock = virtual_wall_clock()
        async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(path), clock=clock) as engine:
            engine.register(wf)
            iid = await engine.start("retrying", {})
            await trio.sleep(250)  # 3 attempts made; the 4th is due at 300
        async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(path), clock=clock) as engine:
            engine.events.on("workflow.*", rec)
            if registered_first:
                engine.register(wf)
            assert await engine.cancel(iid)
            if not registered_first:
                engine.register(wf)
            instance = await engine.wait(iid)
            await trio.sleep(1)
        ends = [e["attempts"] for e in rec.of(iid) if e["event"] == "workflow.step.failed" and e["step_name"] == "b"]
        history = [(r.step_name, r.status, r.attempts) for r in instance.history if r.step_name == "b"]
        return ends, history

    async def main() -> tuple[Any, Any]:
        return (await one(str(tmp_path / "registered.db"), True),
                await one(str(tmp_path / "unregistered.db"), False))

    registered, unregistered = run(main)
    assert registered == ([3], [("b", "failed", 3)])
    assert unregistered == registered


# -- 4 ------------------------------------------------------------------------------------------


class _RoundTripAdapter(tf.adapters.MemoryAdapter):
    """A correct adapter (check_persistence_adapter passes it) whose checkpoint waits for a
    network round trip before writing: cancelled there, it has written nothing, as
    docs/adapters.md ("Cancellation") allows."""

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        await trio.sleep(0.01)
        return await super().checkpoint(*args, **kwargs)


def test_a_step_whose_checkpoint_a_cancel_interrupts_still_gets_its_end_event() -> None:
    """A monitor pairs each workflow.step.started with an end. With an adapter whose write can
    be cancelled before it is made (allowed, and passed by the conformance kit), a cancel that
    arrives while a step's completion is being checkpointed leaves the step with no end at
    all: run_lane (actors/_lane.py) publishes workflow.step.completed only after
    ``await run.persist()`` returns; the Cancelled skips it, yet the completion stays staged
    (Run._write's not_taken), is stored by the cancel's checkpoint, and the step is then
    compensated: the stream reads step.started, step.compensated, workflow.cancelled, a
    compensation of a step that never completed."""
    box: dict[str, Any] = {}

    async def charge(ctx: tf.WorkflowContext) -> int:
        box["nursery"].start_soon(box["engine"].cancel, ctx.metadata.id)  # the user hits "cancel" now
        return 1

    wf = tf.workflow("w").step("charge", charge, release).step("ship", slow).build()

    async def main() -> tuple[Any, list[str], list[Any]]:
        rec = Recorder()
        async with trio.open_nursery() as nursery:
            box["nursery"] = nursery
            async with open_test_engine(adapter=_RoundTripAdapter()) as engine:
                box["engine"] = engine
                engine.events.on("workflow.*", rec)
                engine.register(wf)
                iid = await engine.start("w")
                instance = await engine.wait(iid)
                await trio.sleep(1)
        return instance.compensated_steps, rec.pairing_problems(iid), rec.brief(iid)

    compensated, problems, events = run(main)
    assert compensated == ("charge",)  # it completed, and was compensated
    assert problems == [], events


# -- 5 ------------------------------------------------------------------------------------------


async def _leaks_a_cancelled(*args: Any) -> Any:
    """User code that lets a trio.Cancelled out of a cancel scope of its own (re-raised outside
    it, as a shared "single flight" result cache re-raising a captured outcome does)."""
    saved: BaseException | None = None
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.sleep(1)
        except trio.Cancelled as exc:
            saved = exc
    assert saved is not None
    raise saved


def test_a_stray_cancelled_from_a_mapper_or_items_does_not_orphan_instances() -> None:
    """The same stray Cancelled out of a job fails its step with RuntimeError ("trio.Cancelled
    escaped the job, though nothing cancelled ...", actors/_task.py _stray_cancel): the
    instance must not be taken for an engine shutdown. Out of an async ``input=`` mapper or an
    async map ``items=`` it goes on (runtime/_escapes.py goes_on/failure_of treat every
    Cancelled as a real one): the instance actor stops as if the engine closed, and the
    Cancelled leaves the actor (Supervisor._supervise catches Exception only) into the
    engine's nursery, which cancels every other actor: an unrelated instance of another
    workflow, one step from completing, is stopped too. All of them stay ``running`` in storage
    with nothing running them, their completed steps never compensated, until a restart."""
    async def job(data: Any) -> int:
        return 1

    async def five_seconds(ctx: Any) -> str:
        await trio.sleep(5)
        return "done"

    wfs = [
        tf.workflow("mapped").step("a", ok, release).task("b", job=job, input=_leaks_a_cancelled).build(),
        tf.workflow("items").step("a", ok, release).map(
            "m", items=_leaks_a_cancelled, branch=tf.branch("i").step("i1", ok).build()).build(),
        tf.workflow("bystander").step("a", five_seconds).build(),
    ]

    async def main() -> dict[str, str]:
        statuses = {}
        for leaky in ("mapped", "items"):
            async with open_test_engine() as engine:
                for wf in wfs:
                    engine.register(wf)
                bystander = await engine.start("bystander")
                iid = await engine.start(leaky)
                await trio.sleep(10)
                for name, i in ((leaky, iid), (f"bystander beside {leaky}", bystander)):
                    instance = await engine.get_instance(i)
                    assert instance is not None
                    statuses[name] = instance.status
        return statuses

    assert run(main) == {"mapped": "failed", "bystander beside mapped": "completed",
                         "items": "failed", "bystander beside items": "completed"}


# -- 6 ------------------------------------------------------------------------------------------


def _odd_predicate(error: BaseException) -> bool:
    raise _OddExit("predicate blew up")


def test_a_catch_predicate_raising_a_base_exception_fails_its_step_and_compensates() -> None:
    """d41084e: "a BaseException of user code's own (not a cancellation, KeyboardInterrupt or
    SystemExit) ... fails that step, catchable and compensated, as out of a job"; an Exception
    out of a catch predicate fails the step with that error (actors/_task.py step_failed). A
    predicate in ``tf.Catch(errors=[...])`` that raises such a BaseException escapes
    step_failed (``except Exception`` only) and the engine's catch-all fails the instance with
    "internal error: _OddExit: ...": no workflow.step.failed for the step, and the completed
    step before it is never compensated (its reservation is never released)."""
    wf = (tf.workflow("cp").step("reserve", ok, release)
          .step("charge", boom, catch=[tf.Catch(errors=[_odd_predicate], next="h")])
          .pass_("h", result="handled").build())

    async def main() -> tf.WorkflowInstance:
        async with open_test_engine() as engine:
            engine.register(wf)
            return await engine.wait(await engine.start("cp"))

    instance = run(main)
    assert (instance.status, instance.compensated_steps) == ("failed", ("reserve",)), instance.error
    assert not (instance.error or "").startswith("internal error"), instance.error


# -- 7 ------------------------------------------------------------------------------------------


def test_a_compensation_retry_predicate_raising_a_base_exception_is_that_compensations_failure() -> None:
    """_compensate_and_finish (actors/_instance.py): "Whatever went wrong around the
    compensation (a retry_on predicate that raised, a broken callable) is that compensation's
    failure: the others still run". For a retry_on predicate raising a BaseException of its
    own (which d41084e says is user code's failure, as an Exception is) the handler is
    ``except Exception``: the exception escapes, the instance ends "internal error" (its real
    error, the step that failed, is overwritten), the compensation is in neither
    compensated_steps nor compensation_errors, and the compensations after it never run."""
    undone: list[str] = []

    async def refund_fails(ctx: Any, result: Any) -> None:
        raise ValueError("refund service down")

    async def release_stock(ctx: Any, result: Any) -> None:
        undone.append("stock")

    wf = (tf.workflow("crp").step("stock", ok, release_stock)
          .step("pay", ok, refund_fails, retry=tf.Retry(max_attempts=2, interval=1, retry_on=[_odd_predicate]))
          .step("ship", boom).build())

    async def main() -> tf.WorkflowInstance:
        async with open_test_engine() as engine:
            engine.register(wf)
            return await engine.wait(await engine.start("crp"))

    instance = run(main)
    assert instance.status == "failed" and instance.failed_step == "ship", instance.error
    assert "pay" in instance.compensation_errors, instance.compensation_errors
    assert undone == ["stock"] and instance.compensated_steps == ("stock",), (undone, instance.compensated_steps)


# -- 8 ------------------------------------------------------------------------------------------


async def _approved(ctx: Any) -> str:
    return "approved"


async def _rejected(ctx: Any) -> str:
    return "rejected"


def _voter(name: str) -> tf.Branch:
    return (tf.branch(name).receive(f"{name}-vote", signal="vote")
            .choice(f"{name}-count", choices=[tf.when(lambda ctx, n=name: ctx.steps[f"{n}-vote"] == "yes",
                                                      next=f"{name}-yes")], default=f"{name}-no")
            .step(f"{name}-yes", _approved, end=True).step(f"{name}-no", _rejected).build())


def test_contested_signals_that_route_each_branch_by_payload_are_not_a_divergence() -> None:
    """docs/testing.md: receive steps that wait at once for one signal name "take them in an
    order that is not specified, so a crash run's output may differ from the fault-free one by
    which took which: ... the explorer accepts that difference as long as the payloads taken,
    by signal name, are those of the fault-free run". Two voters each receive a 'vote' and
    route on its payload (a choice in their own branch): which voter took "yes" decides which
    branch's steps complete, by design. 735fed2 also demands the same multiset of completed
    step names (_crashes._signals_swapped), so a legitimate swap (x took "no", y "yes") is
    reported as a divergence at almost every crash point; the explorer before 735fed2 passed
    this workflow."""
    wf = tf.workflow("votes").parallel("p", branches=[_voter("x"), _voter("y")]).build()

    async def main() -> CrashReport:
        return await explore_crashes(wf, {}, signals=[("vote", "yes"), ("vote", "no")], check=False)

    report = run(main)
    assert [p.divergence for p in report.divergent] == []
