"""Review from the point of view of a long-lived service that monitors trioflow through its
events, hooks and listings (a metrics exporter counting events per workflow and status, an
audit log built from events, a dashboard built from get_instances / get_instance).

Each test is one finding; each runs its scenario on a MemoryAdapter and on a SQLiteAdapter on
a real file, on trio's MockClock(autojump_threshold=0).
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

import trioflow as tf
from trioflow.testing import open_test_engine, run, virtual_wall_clock

TERMINAL = ("workflow.completed", "workflow.failed", "workflow.cancelled", "workflow.timed_out")
STEP_ENDS = ("workflow.step.completed", "workflow.step.failed", "workflow.step.caught")


class Recorder:
    """What an audit log / metrics exporter subscribed with ``on("workflow.*")`` sees."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def of(self, instance_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("instance_id") == instance_id]

    def names(self, instance_id: str) -> list[str]:
        return [e["event"] for e in self.of(instance_id)]

    def unended_steps(self, instance_id: str) -> dict[tuple[str, str], int]:
        """Steps (lane, name) with a ``workflow.step.started`` and no end event after it."""
        open_: collections.Counter[tuple[str, str]] = collections.Counter()
        for e in self.of(instance_id):
            key = (e.get("lane", ""), e.get("step_name"))
            if e["event"] == "workflow.step.started":
                open_[key] += 1
            elif e["event"] in STEP_ENDS and open_[key]:
                open_[key] -= 1
        return {k: v for k, v in open_.items() if v}


def adapters(tmp_path: Path) -> list[tuple[str, Callable[[], Any]]]:
    return [
        ("memory", tf.adapters.MemoryAdapter),
        ("sqlite", lambda: tf.adapters.SQLiteAdapter(str(tmp_path / "flows.db"))),
    ]


def on_each_adapter(tmp_path: Path, scenario: Callable[[Any], Awaitable[list[str]]]) -> list[str]:
    problems: list[str] = []
    for label, make in adapters(tmp_path):
        for problem in run(scenario, make()):
            problems.append(f"{label}: {problem}")
    return problems


async def ok(ctx: Any) -> int:
    return 1


async def release(ctx: Any, result: Any) -> None:
    return None


async def boom(ctx: Any) -> None:
    raise ValueError("boom")


async def slow(ctx: Any) -> int:
    await trio.sleep(1000)
    return 2


async def slow_release(ctx: Any, result: Any) -> None:
    await trio.sleep(100)


# -- 1 ------------------------------------------------------------------------------------------


def test_steps_other_than_tasks_cut_short_get_an_end_event(tmp_path: Path) -> None:
    """A metrics exporter keeps an "in-flight steps" gauge per workflow: +1 on
    ``workflow.step.started``, -1 on ``workflow.step.completed`` / ``.failed`` / ``.caught``,
    and an audit log closes each step it saw start. For a task step cut short by a cancel, the
    workflow timeout or a fail-fast sibling, trioflow publishes a ``workflow.step.failed``
    (``error_name`` "Cancelled") once the end is stored, so the pairing holds. A wait, receive,
    child, parallel or map step cut short the same way publishes its ``workflow.step.started``
    and then nothing, ever: the instance ends (``workflow.cancelled`` / ``.timed_out`` /
    ``.failed``) with that step still open, and the gauge leaks one for every cancelled
    approval, timed-out fan-out or fail-fast branch that was waiting."""
    kid = tf.workflow("kid").step("k", slow).build()
    cases = {
        "wait-cancelled": tf.workflow("wait-cancelled").step("a", ok, release).wait("w", seconds=1000).build(),
        "receive-cancelled": tf.workflow("receive-cancelled").step("a", ok, release)
        .receive("r", signal="go").build(),
        "child-cancelled": tf.workflow("child-cancelled").step("a", ok, release).child("c", workflow="kid").build(),
        "parallel-cancelled": tf.workflow("parallel-cancelled").parallel("p", branches=[
            tf.branch("x").step("x1", slow).build(), tf.branch("y").step("y1", slow).build()]).build(),
        "map-timed-out": tf.workflow("map-timed-out").map(
            "m", items=lambda ctx: [1, 2], branch=tf.branch("one").step("i", slow).build()).with_timeout(10).build(),
        "receive-in-fail-fast-branch": tf.workflow("receive-in-fail-fast-branch").parallel("p", branches=[
            tf.branch("x").receive("xr", signal="never").build(),
            tf.branch("y").step("y1", boom).build()]).build(),
    }

    async def scenario(adapter: Any) -> list[str]:
        rec = Recorder()
        problems = []
        async with open_test_engine(adapter=adapter) as engine:
            engine.events.on("workflow.*", rec)
            engine.register(kid)
            for definition in cases.values():
                engine.register(definition)
            for name in cases:
                iid = await engine.start(name, {})
                await trio.sleep(5)
                if name.endswith("-cancelled"):
                    assert await engine.cancel(iid)
                instance = await engine.wait(iid)
                unended = rec.unended_steps(iid)
                if unended:
                    problems.append(f"{name} ended {instance.status} with steps started and never ended: {unended}")
        return problems

    assert on_each_adapter(tmp_path, scenario) == []


# -- 2 ------------------------------------------------------------------------------------------


def test_an_instance_that_fails_alone_while_compensating_publishes_its_end(tmp_path: Path) -> None:
    """A service deploys a release in which a step was removed while an instance of the old
    release was compensating (README: "one that was compensating goes on compensating ...; if
    one is gone, it fails alone, compensating nothing more"). The instance ends ``failed`` in
    storage, but no ``workflow.failed`` event is ever published (nor does ``on_failed`` run):
    the metrics exporter's failure counter and the audit log never learn that it ended, and
    the instance stays "in progress" on every event-fed dashboard. Every other way to end
    ``failed`` (a step failure, a definition mismatch met going forward) publishes it."""
    v1 = tf.workflow("wf").step("a", ok, release).step("a1", ok, slow_release).step("b", boom).build()
    ended_hooks: list[str] = []

    async def on_failed(result: Any) -> None:
        ended_hooks.append(result.instance_id)

    v2 = (tf.workflow("wf").step("a", ok, release).step("b", boom)
          .with_hooks(on_failed=on_failed).build())

    async def scenario(adapter: Any) -> list[str]:
        rec = Recorder()
        clock = virtual_wall_clock()
        ended_hooks.clear()
        async with open_test_engine(adapter=adapter, clock=clock) as engine:
            engine.events.on("workflow.*", rec)
            engine.register(v1)
            iid = await engine.start("wf", {})
            await trio.sleep(10)  # b failed; a1's compensation runs (100 s) as the service restarts
            assert (await engine.get_instance(iid)).status == "running"
        async with open_test_engine(adapter=adapter, clock=clock) as engine:
            engine.events.on("workflow.*", rec)
            engine.register(v2)
            instance = await engine.wait(iid)
            await trio.sleep(1)
        assert instance.status == "failed" and instance.error_name == "DefinitionMismatchError"
        problems = []
        terminal = [n for n in rec.names(iid) if n in TERMINAL]
        if terminal != ["workflow.failed"]:
            problems.append(f"ended failed in storage; terminal events published: {terminal}")
        if ended_hooks != [iid]:
            problems.append(f"on_failed ran for {ended_hooks}")
        return problems

    assert on_each_adapter(tmp_path, scenario) == []


# -- 3 ------------------------------------------------------------------------------------------


class _OddExit(BaseException):
    """A BaseException that is neither a cancellation nor KeyboardInterrupt / SystemExit (as
    GeneratorExit or asyncio.CancelledError are)."""


def _odd_condition(ctx: Any) -> bool:
    raise _OddExit("condition blew up")


def test_a_condition_raising_a_base_exception_compensates_and_publishes_the_failure(tmp_path: Path) -> None:
    """The README says a job that raises a BaseException other than a cancellation,
    KeyboardInterrupt or SystemExit "fails its step with it, as an Exception would". The same
    exception out of a choice condition (or an ``input=`` mapper) instead ends the instance
    ``failed`` with "internal error: ...": the completed step before it is not compensated
    (``compensated_steps == ()``, its reservation is never released) and neither
    ``workflow.step.failed`` nor ``workflow.failed`` is published, so monitoring never sees
    the failure."""
    wf = (tf.workflow("odd").step("reserve", ok, release)
          .choice("route", choices=[tf.when(_odd_condition, next="ship")], default="ship")
          .step("ship", ok).build())

    async def scenario(adapter: Any) -> list[str]:
        rec = Recorder()
        async with open_test_engine(adapter=adapter) as engine:
            engine.events.on("workflow.*", rec)
            engine.register(wf)
            instance = await engine.wait(await engine.start("odd", {}))
        problems = []
        assert instance.status == "failed"
        if instance.compensated_steps != ("reserve",):
            problems.append(f"compensated_steps {instance.compensated_steps} ({instance.error})")
        names = rec.names(instance.id)
        if "workflow.failed" not in names:
            problems.append(f"no workflow.failed published: {names}")
        return problems

    assert on_each_adapter(tmp_path, scenario) == []


# -- 4 ------------------------------------------------------------------------------------------


def test_a_step_in_flight_at_a_restart_is_ended_by_the_instances_terminal_event(
        tmp_path: Path) -> None:
    """The service restarts (a deploy) while a task step runs. The first engine published its
    ``workflow.step.started``; the step, cut short by the close, has no end. When the next
    engine ends the instance without running the step again (its workflow timeout passed while
    no engine ran, or a ``cancel()`` was stored for it before its workflow was registered),
    storage cannot say whether the step had started, so no ``workflow.step.failed`` is made up
    for it. Decided (README, Events): the instance's terminal event ends every step of it still
    open: a consumer's gauge closes them there. That event must come, once, after the start."""
    timed = tf.workflow("timed").step("a", ok, release).step("s", slow).with_timeout(100).build()
    plain = tf.workflow("plain").step("a", ok, release).step("s", slow).build()

    async def scenario(adapter: Any) -> list[str]:
        rec = Recorder()
        clock = virtual_wall_clock()
        async with open_test_engine(adapter=adapter, clock=clock) as engine:
            engine.events.on("workflow.*", rec)
            engine.register(timed)
            engine.register(plain)
            i_timed = await engine.start("timed", {})
            i_plain = await engine.start("plain", {})
            await trio.sleep(10)  # both run step s
        await trio.sleep(200)  # the service is down past the workflow timeout
        async with open_test_engine(adapter=adapter, clock=clock) as engine:
            engine.events.on("workflow.*", rec)
            assert await engine.cancel(i_plain)  # stored for the engine that runs it
            engine.register(timed)
            engine.register(plain)
            ended = [await engine.wait(i_timed), await engine.wait(i_plain)]
        assert [i.status for i in ended] == ["timed_out", "cancelled"]
        problems = []
        for instance, terminal in zip(ended, ("workflow.timed_out", "workflow.cancelled")):
            names = rec.names(instance.id)
            if names.count(terminal) != 1 or names.index(terminal) < names.index("workflow.step.started"):
                problems.append(f"{instance.workflow_name}: {names}")
        return problems

    assert on_each_adapter(tmp_path, scenario) == []


# -- 5 ------------------------------------------------------------------------------------------


def test_a_sync_subscriber_raising_a_base_exception_does_not_fail_the_instances(tmp_path: Path) -> None:
    """SPEC §9: "a hook or event subscriber that raises is logged and never changes the
    outcome". Hooks honour this for any BaseException but a cancellation, KeyboardInterrupt
    or SystemExit (``Run.hook``), as jobs do. A plain-function subscriber (``events.on``) that
    raises such an exception (a GeneratorExit, asyncio's CancelledError from a bridged
    client, pytest's ``fail()`` in the service's own monitoring tests) instead fails every
    instance it is called for: ``failed`` with "internal error: ...", its completed steps not
    compensated, and no ``workflow.failed`` published."""
    wf = tf.workflow("watched").step("reserve", ok, release).step("charge", ok).step("ship", ok).build()

    def picky_exporter(event: dict[str, Any]) -> None:
        if event.get("step_name") == "charge":
            raise _OddExit("exporter bug")

    async def scenario(adapter: Any) -> list[str]:
        async with open_test_engine(adapter=adapter) as engine:
            engine.register(wf)
            engine.events.on("workflow.step.completed", picky_exporter)
            instance = await engine.wait(await engine.start("watched", {}))
        if instance.status != "completed":
            return [f"ended {instance.status}: {instance.error}; compensated {instance.compensated_steps}"]
        return []

    assert on_each_adapter(tmp_path, scenario) == []


# -- 6 ------------------------------------------------------------------------------------------


def test_an_async_subscriber_raising_a_base_exception_does_not_stop_the_engine(tmp_path: Path) -> None:
    """The same exception out of an ``async def`` subscriber escapes its dispatch task
    (``EventBus._drain`` catches only ``Exception``) into the engine's nursery: the whole
    engine stops and its ``async with open_engine(...)`` block raises it, stopping every
    instance of the service (and the web server the README's Hosting section opens inside that
    block). One bad metrics callback takes the service down."""
    wf = tf.workflow("watched").step("reserve", ok, release).step("charge", ok).step("ship", ok).build()

    async def picky_exporter(event: dict[str, Any]) -> None:
        if event.get("step_name") == "charge":
            raise _OddExit("exporter bug")

    async def scenario(adapter: Any) -> list[str]:
        try:
            async with open_test_engine(adapter=adapter) as engine:
                engine.register(wf)
                engine.events.on("workflow.step.completed", picky_exporter)
                first = await engine.wait(await engine.start("watched", {}))
                await trio.sleep(1)
                second = await engine.wait(await engine.start("watched", {}))
        except BaseException as exc:  # noqa: BLE001 (what the service sees)
            return [f"the engine stopped: {type(exc).__name__}: {exc}"]
        return [] if (first.status, second.status) == ("completed", "completed") else [
            f"{first.status}, {second.status}"]

    assert on_each_adapter(tmp_path, scenario) == []
