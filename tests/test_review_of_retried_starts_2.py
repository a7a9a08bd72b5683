"""From a review of fd670f6 (a retried start's own row runs as a resume of it does, announced
if it ran nothing). Each test here failed on fd670f6 because of a library bug, fixed by the commit that added this file."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine

from lost_answers import AnswerLostFor


class RefusedOnceFor(tf.adapters.MemoryAdapter):
    """The first ``create()`` of each id in ``refuse`` raises ``StorageUnavailableError``
    before writing anything (a locked database)."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse: set[str] = set()

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id in self.refuse:
            self.refuse.discard(instance_id)
            raise tf.StorageUnavailableError("database is locked; nothing was written")
        return await super().create(instance_id, *args, **kwargs)


async def _quick(ctx: tf.WorkflowContext) -> int:
    return 1


async def _sleepy(ctx: tf.WorkflowContext) -> int:
    await trio.sleep(10)
    return 1


def _receiving(starts: list[str]) -> tf.WorkflowDefinition:
    """``w``: a first step that waits for the signal ``go`` (parking out of memory, storing
    no record), then a quick step; its ``on_start`` hook notes ``x``'s starts."""

    def on_start(ctx: Any) -> None:
        if ctx.metadata.id == "x":
            starts.append("x")

    return tf.workflow("w").receive("r", signal="go").step("s", _quick).with_hooks(on_start=on_start).build()


def _count_started(engine: tf.Engine) -> list[str]:
    started: list[str] = []
    engine.events.on("workflow.started", lambda e: started.append(e["instance_id"]) if e["instance_id"] == "x" else None)
    return started


async def test_a_retried_delayed_start_that_already_started_is_not_announced_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Hooks: "``on_start`` runs ..., with the ``workflow.started`` event, when the
    instance starts its first step: a delayed start's once its delay is over"; README, Storage
    failures: "a retry that finds the instance its earlier try stored, the answer lost, runs it
    as a start made here, announced *if it had not started*"; ``take_up``: "what its on_start
    hook set, which runs once".

    Reproduction: ``open_test_engine(resume=False)``; ``w``'s first step is
    ``.receive("r", signal="go")``. ``start("w", instance_id="x", delay=1)``'s ``create()``
    stores the row and loses its answer. ``engine.resume()`` takes ``x`` up: at t=1 its delay
    is over, it is announced (``workflow.started``, ``on_start``: one each), and it parks in its
    first step waiting for ``go`` (its row: ``running``, no records, main lane waiting for the
    signal). At t=10 the caller retries the start.

    What happens instead: ``Engine._start`` finds the row (``ours``: the id is in
    ``_unanswered``) and, because it has no records, takes it as ``fresh`` and sets
    ``run.resumed = False``: ``run_instance`` announces it again. After ``go`` it completes with
    two ``workflow.started`` events and ``on_start`` run twice."""
    hooks: list[str] = []
    async with open_test_engine(adapter=AnswerLostFor("x"), resume=False) as engine:
        engine.register(_receiving(hooks))
        started = _count_started(engine)
        try:
            await engine.start("w", instance_id="x", delay=1)
        except tf.StorageUnavailableError:
            pass
        await engine.resume()
        await trio.sleep(10)  # started at t=1, parked on "go"
        before = (len(started), len(hooks), (await engine.get_instance("x")).status)
        await engine.start("w", instance_id="x", delay=1)  # the caller's retry
        await trio.sleep(1)
        await engine.signal("x", "go", None)
        got = await engine.wait("x")
        assert (before, got.status, len(started), len(hooks)) == ((1, 1, "running"), "completed", 1, 1)


async def test_a_retried_queued_start_that_already_started_is_not_announced_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Storage failures: "a retry that finds the instance its earlier try stored, the
    answer lost, runs it as a start made here, announced *if it had not started*"; README,
    Hooks: ``on_start`` and ``workflow.started`` come "when the instance starts its first step".

    Reproduction: ``open_test_engine(resume=False, max_running=1)``; ``busy`` holds the slot
    for 10 s, so ``start("w", instance_id="x")`` stores ``x`` ``pending``, and its answer is
    lost. Once ``busy`` completed, ``engine.resume()`` takes ``x`` up: ``_instance_actor``
    admits it (stored ``running``) and it is announced once; it parks in its first step
    (``.receive``, no record stored). The caller then retries the start.

    What happens instead: the retry's ``fresh`` (same workflow, no records) sets
    ``run.resumed = False`` on the run it resumes from that row: ``workflow.started`` and
    ``on_start`` come a second time."""
    hooks: list[str] = []
    b = tf.workflow("b").step("s", _sleepy).build()
    async with open_test_engine(adapter=AnswerLostFor("x"), resume=False, max_running=1) as engine:
        engine.register(_receiving(hooks))
        engine.register(b)
        started = _count_started(engine)
        await engine.start("b", instance_id="busy")
        try:
            await engine.start("w", instance_id="x")  # stored pending (no slot), answer lost
        except tf.StorageUnavailableError:
            pass
        await engine.wait("busy")
        await engine.resume()  # x gets the slot: announced; it parks on "go"
        await trio.sleep(10)
        before = (len(started), len(hooks), (await engine.get_instance("x")).status)
        await engine.start("w", instance_id="x")  # the caller's retry
        await trio.sleep(1)
        await engine.signal("x", "go", None)
        got = await engine.wait("x")
        assert (before, got.status, len(started), len(hooks)) == ((1, 1, "running"), "completed", 1, 1)


async def test_a_retried_start_keeps_the_workflow_timeout_its_start_time_says(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Timeouts: "A workflow past its ``with_timeout`` is cancelled, compensated and
    ends ``timed_out``"; README, The engine: "each stored as ``running`` when it gets its slot,
    so a listing by status and a workflow timeout (counted from then) hold across a restart";
    README, Hooks: "The result's ``duration`` is ... from the instance's ``started_at`` to its
    ``completed_at``"; fd670f6: the retry runs the row "as a resume of it does".

    Reproduction: ``w`` has ``with_timeout(10)`` and one 5 s step. ``start("w",
    instance_id="x")`` at t=0 takes the free slot, so its ``create()`` stores ``x``
    ``running`` with ``started_at`` = t=0, then loses its answer. The caller backs off and
    retries at t=8. (``engine.resume()`` at t=8 instead, on a ``resume=False`` engine, times
    ``x`` out at t=10, as a restart would.)

    What happens instead: the run resumed from the row has ``run.resumed = False`` (``fresh``),
    so ``actors/_instance.py`` ``_deadline`` ignores the stored ``started_at`` and counts the
    timeout from t=8, while the row keeps ``started_at`` = t=0: ``x`` ends ``completed`` at t=13,
    a ``duration`` of 13 s under a 10 s workflow timeout (and a restart during its step would
    time it out at once, the deadline counted from t=0)."""

    async def five(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(5)
        return 1

    w = tf.workflow("w").step("s", five).with_timeout(10).build()
    async with open_test_engine(adapter=AnswerLostFor("x")) as engine:
        engine.register(w)
        try:
            await engine.start("w", instance_id="x")
        except tf.StorageUnavailableError:
            pass
        await trio.sleep(8)  # the caller backs off, then retries
        await engine.start("w", instance_id="x")
        got = await engine.wait("x")
        assert got.started_at is not None and got.completed_at is not None
        duration = got.completed_at - got.started_at
        assert got.status == "timed_out" or duration <= 10, (got.status, duration)


async def test_a_retry_after_a_create_that_wrote_nothing_leaves_an_earlier_engines_row_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``Engine.start``: "an id that exists already, of the same workflow with the same input,
    is returned as it is, and nothing new starts"; README: "An engine opened on an adapter
    resumes the instances that adapter held as pending or running when the engine opened ...
    (``open_engine(resume=False)`` to opt out; ``engine.resume()`` to resume explicitly"; README,
    Storage failures: the retry runs "the instance *its earlier try stored*, the answer lost ...
    whatever ``resume=`` says".

    Reproduction: a first engine starts ``x`` (steps ``a``, quick, then ``b``, 100 s) and closes
    at t=10 with ``b`` in flight: the row is ``running``, ``a`` completed. A second engine opens
    on the same adapter with ``resume=False``. ``start("w", instance_id="x")`` there raises
    ``StorageUnavailableError`` from ``create()`` *before anything is written* (a locked
    database); the caller retries, and ``create()`` says ``x`` exists. (Without the failed
    first try, the start returns and ``x`` stays as stored, not resumed: checked.)

    What happens instead: the failed try put ``x`` in ``Engine._unanswered``, so the retry
    takes the earlier engine's row as its own (``ours``) and resumes it through ``_resume_one``
    "whatever ``resume=`` says": ``b`` runs again in the second engine and ``x`` completes,
    though ``resume=False`` and nobody called ``resume()``."""
    ran: list[float] = []

    async def second(ctx: tf.WorkflowContext) -> int:
        ran.append(trio.current_time())
        await trio.sleep(100)
        return 2

    w = tf.workflow("w").step("a", _quick).step("b", second).build()
    adapter = RefusedOnceFor()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(w)
        await engine.start("w", instance_id="x")
        await trio.sleep(10)  # "a" completed, "b" in flight: the engine closes under it
    before = ((await adapter.load("x")).status, len(ran))
    adapter.refuse.add("x")
    async with open_test_engine(adapter=adapter, resume=False) as engine:
        engine.register(w)
        try:
            await engine.start("w", instance_id="x")
        except tf.StorageUnavailableError:
            pass
        await engine.start("w", instance_id="x")  # the caller's retry: x exists, as it was
        await trio.sleep(200)
        after = ((await engine.get_instance("x")).status, len(ran))
        assert (before, after) == (("running", 1), ("running", 1))
