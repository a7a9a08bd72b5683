"""From a review of ee87203. Each test here failed on ee87203 because of a library bug, fixed by the
commit that added this file."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine

from lost_answers import FirstAnswerLost


class ChildCreateAnswerLostThenSlotTaken(tf.adapters.MemoryAdapter):
    """The first ``create()`` of a child (an id with a ``/``) stores the row, then raises
    ``StorageUnavailableError`` (the answer was lost); ``lost`` is set just before it raises."""

    def __init__(self) -> None:
        super().__init__()
        self.child_id: str | None = None
        self.lost = trio.Event()

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        created = await super().create(instance_id, *args, **kwargs)
        if "/" in instance_id and not self.lost.is_set():
            self.child_id = instance_id
            self.lost.set()
            raise tf.StorageUnavailableError("connection dropped after the write")
        return created


async def test_a_child_whose_lost_create_had_a_slot_and_whose_retry_has_none_is_never_announced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Hooks: "``on_start`` runs ..., with the ``workflow.started`` event, when the
    instance starts its first step"; ee87203: "a child whose create's answer was lost and has
    run nothing starts as a fresh one (workflow.started and on_start)".

    Reproduction: ``max_running=2``; the parent holds one slot, its child's first ``create()``
    reserves the other (stored ``running``), stores the row and loses its answer; the slot is
    freed, and an unrelated ``start("busy")`` takes it while the child step backs off. The
    retry has no free slot (it would store ``pending``), its ``create()`` says the row exists.

    What happens instead: ``Engine._start`` takes the row as its own only if its status is the
    one this try would store (``existing.status == status``: ``running`` != ``pending``), so it
    resumes it (``resumed=True``, stored ``running``): once a slot frees, the child runs its
    step and completes with no ``workflow.started`` event and its ``on_start`` hook never runs."""
    hooked: list[str] = []
    kid = (tf.workflow("kid").step("s", lambda ctx: "kid done")
           .with_hooks(on_start=lambda ctx: hooked.append("on_start")).build())
    dad = tf.workflow("dad").child("c", workflow="kid").build()

    async def slow(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1)
        return "busy done"

    busy = tf.workflow("busy").step("s", slow).build()
    adapter = ChildCreateAnswerLostThenSlotTaken()
    async with open_test_engine(adapter=adapter, max_running=2) as engine:
        started: list[str] = []
        engine.events.on("workflow.started", lambda event: started.append(event["instance_id"]))
        engine.register(kid)
        engine.register(busy)
        engine.register(dad)
        parent_id = await engine.start("dad")
        await adapter.lost.wait()
        await engine.start("busy")
        parent = await engine.wait(parent_id)
        assert parent.status == "completed"
        (child_id,) = parent.children
        assert (started.count(child_id), hooked) == (1, ["on_start"])


async def test_a_start_retried_as_the_readme_says_after_its_answer_was_lost_is_never_announced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Storage failures: "Calls you make raise at once (``start()``: retry it with the
    same ``instance_id``)"; README, Hooks: "``on_start`` runs ..., with the ``workflow.started``
    event, when the instance starts its first step" (ee87203 made a child in this very
    situation start "as a fresh one (workflow.started and on_start)").

    Reproduction: default engine; ``start("w", instance_id="x")``'s ``create()`` stores the row
    and loses its answer (``StorageUnavailableError``); the caller retries
    ``start("w", instance_id="x")`` as told; the retry's ``create()`` says the row exists.

    What happens instead: ``Engine._start`` (not-created branch) resumes the row
    (``_resume_one``: ``resumed=True``, stored ``running``): the instance runs its step and
    completes, but no ``workflow.started`` event is published and its ``on_start`` hook never
    runs (with a create that answers, both happen once)."""
    hooked: list[str] = []
    w = tf.workflow("w").step("s", lambda ctx: 1).with_hooks(on_start=lambda ctx: hooked.append("on_start")).build()
    async with open_test_engine(adapter=FirstAnswerLost()) as engine:
        started: list[str] = []
        engine.events.on("workflow.started", lambda event: started.append(event["instance_id"]))
        engine.register(w)
        try:
            await engine.start("w", instance_id="x")
        except tf.StorageUnavailableError:
            pass
        await engine.start("w", instance_id="x")
        got = await engine.wait("x")
        assert (got.status, started, hooked) == ("completed", ["x"], ["on_start"])


async def test_with_resume_false_a_start_retried_after_its_answer_was_lost_never_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Storage failures: "Calls you make raise at once (``start()``: retry it with the
    same ``instance_id``)"; README, Durability: an engine "resumes the instances that adapter held
    as pending or running when the engine opened ... (``open_engine(resume=False)`` to opt
    out)" -- this row was stored after the engine opened, by this engine's own ``start()``
    (893ef9b/ee87203 run a child in the same situation "whatever resume= says").

    Reproduction: ``open_test_engine(resume=False)``; ``start("w", instance_id="x")``'s
    ``create()`` stores the row and loses its answer; the caller retries the start as told;
    it returns ``"x"``.

    What happens instead: the retry's ``_start`` does not resume the row (``ours`` is only
    ever true for a child, and ``resume=False`` holds back every other row), so the instance
    is stored ``running`` and never runs: ``wait("x")`` raises ``InstanceNotLiveError``
    ("running in storage but not running in this engine; register its workflow or call
    resume()")."""
    w = tf.workflow("w").step("s", lambda ctx: 1).build()
    async with open_test_engine(adapter=FirstAnswerLost(), resume=False) as engine:
        engine.register(w)
        try:
            await engine.start("w", instance_id="x")
        except tf.StorageUnavailableError:
            pass
        await engine.start("w", instance_id="x")
        with trio.fail_after(60):
            got = await engine.wait("x")
        assert got.status == "completed"


class BreaksOnceThenSlowCreate(tf.adapters.MemoryAdapter):
    """``checkpoint()`` raises ``StorageUnavailableError`` while ``broken``; ``create()`` takes
    0.05 s while ``slow_create`` (``storing`` set as it begins)."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False
        self.slow_create = False
        self.storing = trio.Event()

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        if self.broken:
            raise tf.StorageUnavailableError("disk full")
        return await super().checkpoint(*args, **kwargs)

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if self.slow_create:
            self.storing.set()
            await trio.sleep(0.05)
        return await super().create(instance_id, *args, **kwargs)


async def test_cancel_waiting_on_a_start_that_resumes_an_instance_compensating_after_a_failure_says_yes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``Engine.cancel``: "``False`` if it is unknown, over, or compensating already after a
    failure or its timeout (it ends as the failure or timeout that began that)".

    Reproduction: default engine, ``storage_retry_for=1``. Instance ``x``: step ``a``
    (compensable) completes, step ``b`` fails; the failure is stored (compensating), then
    storage breaks while ``a`` is compensated, so ``x`` stops (stalled, stored ``running``,
    compensating, outcome failed: "resumable by ... engine.resume()"). Storage recovers;
    ``start("w", instance_id="x")`` (same input) is called with a ``create()`` that takes
    0.05 s, and ``cancel("x")`` while it stores. The start resumes ``x`` (its compensation
    takes 1 s this time). On 893ef9b, ``cancel()`` says ``False`` here.

    What happens instead: ``cancel()`` waited on the start's store (``cancel_wanted``), and
    ``Engine._start`` (not-created branch, after ``_resume_one``) sets
    ``run.cancel_requested = True`` on the resumed run without looking at its phase (cancel()
    itself checks ``phase != "forward"`` first): ``cancel()`` then finds ``cancel_requested``
    and says ``True`` (after waiting for the whole compensation), while ``x`` ends ``failed``."""
    adapter = BreaksOnceThenSlowCreate()
    undos: list[int] = []

    async def undo(ctx: tf.WorkflowContext, result: Any) -> None:
        undos.append(1)
        if len(undos) == 1:
            adapter.broken = True
        else:
            await trio.sleep(1)

    def boom(ctx: tf.WorkflowContext) -> None:
        raise ValueError("boom")

    w = tf.workflow("w").step("a", lambda ctx: 1, compensate=undo).step("b", boom).build()
    async with open_test_engine(adapter=adapter, storage_retry_for=1.0) as engine:
        engine.register(w)
        await engine.start("w", instance_id="x")
        try:
            await engine.wait("x")
        except tf.StorageUnavailableError:
            pass  # stalled while compensating, as set up
        adapter.broken = False
        adapter.slow_create = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: engine.start("w", instance_id="x"))
            await adapter.storing.wait()
            said = await engine.cancel("x")
        got = await engine.wait("x")
        assert (said, got.status) == (False, "failed")
