"""From a review of 893ef9b (a child a parent's step started in this engine is resumed whatever
``resume=`` says when its create's answer was lost and the retry finds the row). Each test
here failed on main at 186d64b because of a library bug, fixed by the commit that added this
file."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine

done_kid = tf.workflow("done-kid").step("s", lambda ctx: "kid done").build()
dad = tf.workflow("dad").child("c", workflow="done-kid").build()


class LostAnswerSlowRead(tf.adapters.MemoryAdapter):
    """The first ``create()`` of a child (an id with a ``/``) stores the row, then raises
    ``StorageUnavailableError`` (the answer was lost). The first ``load()`` of that child after
    its retry's ``create()`` said "exists" reads the row, then takes 5 s to answer (a slow
    network): ``reading`` is set when the row has been read."""

    def __init__(self) -> None:
        super().__init__()
        self.child_id: str | None = None
        self.lost = False
        self.found = False
        self.slowed = False
        self.reading = trio.Event()

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        created = await super().create(instance_id, *args, **kwargs)
        if "/" in instance_id:
            if not self.lost:
                self.lost = True
                self.child_id = instance_id
                raise tf.StorageUnavailableError("connection dropped after the write")
            if not created:
                self.found = True
        return created

    async def load(self, instance_id: str) -> Any:
        row = await super().load(instance_id)
        if instance_id == self.child_id and self.found and not self.slowed:
            self.slowed = True
            self.reading.set()
            await trio.sleep(5)
        return row


class ChildCreateAnswerLost(tf.adapters.MemoryAdapter):
    """The first ``create()`` of a child stores the row, then raises ``StorageUnavailableError``
    (the answer was lost)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = False

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        created = await super().create(instance_id, *args, **kwargs)
        if "/" in instance_id and not self.lost:
            self.lost = True
            raise tf.StorageUnavailableError("connection dropped after the write")
        return created


class SlowChildCreate(tf.adapters.MemoryAdapter):
    """The first ``create()`` of a child takes 0.05 s before it writes (a network round trip);
    ``storing`` is set as it begins."""

    def __init__(self) -> None:
        super().__init__()
        self.child_id: str | None = None
        self.storing = trio.Event()

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if "/" in instance_id and self.child_id is None:
            self.child_id = instance_id
            self.storing.set()
            await trio.sleep(0.05)
        return await super().create(instance_id, *args, **kwargs)


async def test_wait_of_a_child_found_by_its_retry_raises_instance_not_live(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """docs/fanout.md, Links: "While a parent stores a child (from before the write that lists
    it until the child is stored), ``signal()``, ``cancel()`` and ``wait()`` of the child wait for
    that store"; ``Engine.wait``: "Wait until the instance has reached a terminal status".

    Reproduction: default engine (``resume=True``); the child's first ``create()`` stores the
    row and loses its answer; the retry's ``create()`` says it exists, and ``Engine._start``
    reads the row (``_load_fresh``: this read answers 5 s late) before it resumes it
    (``ours=True``). ``wait(child)`` is called while that read is in flight.

    What happens instead: ``_start`` dropped the child from ``_storing`` as soon as the retry's
    create answered, and the child is not live yet: ``wait()`` reads a ``running`` row with no
    run here and raises ``InstanceNotLiveError`` ("running in storage but not running in this
    engine; register its workflow or call resume()"), though the engine runs it a moment later
    and it completes."""
    adapter = LostAnswerSlowRead()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(done_kid)
        engine.register(dad)
        await engine.start("dad")
        await adapter.reading.wait()
        assert adapter.child_id is not None
        ended = None
        with trio.move_on_after(60):
            ended = await engine.wait(adapter.child_id)
        assert ended is not None and ended.status == "completed"


async def test_cancel_of_a_child_found_by_its_retry_says_yes_and_the_child_completes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``Engine.cancel``: "``True`` if it is now being cancelled"; "its running step is
    cancelled, then its completed steps are compensated". docs/fanout.md, Links: ``cancel()``
    of a child being stored waits for that store.

    Reproduction: ``open_engine(resume=False)``; the child's first ``create()`` stores the row
    and loses its answer; the retry finds the row and ``Engine._start`` reads it (that read
    answers 5 s late) to resume it (``ours=True``). ``cancel(child)`` meanwhile.

    What happens instead: ``cancel()`` finds the child neither held nor live, stores the cancel
    in its row (``_cancel_stored``: compensating) and returns ``True``; nothing runs it then
    (``_replace_old_row`` holds it back: ``resume=False``). Then ``_start`` resumes it from the
    row it read before the cancel was stored: the child runs forward, its step runs, it
    completes (``"kid done"``) over the stored cancel, and its parent completes with it."""
    ran: list[str] = []
    kid = tf.workflow("done-kid").step("s", lambda ctx: ran.append("s") or "kid done").build()
    adapter = LostAnswerSlowRead()
    async with open_test_engine(adapter=adapter, resume=False) as engine:
        engine.register(kid)
        engine.register(dad)
        parent_id = await engine.start("dad")
        await adapter.reading.wait()
        assert adapter.child_id is not None
        assert await engine.cancel(adapter.child_id) is True
        await trio.sleep(30)
        child = await engine.get_instance(adapter.child_id)
        parent = await engine.get_instance(parent_id)
        assert child is not None and parent is not None
        assert (child.status, parent.status, ran) == ("cancelled", "failed", [])


async def test_a_child_whose_create_answer_was_lost_starts_without_on_start_or_workflow_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Hooks: "``on_start`` runs ..., with the ``workflow.started`` event, when the
    instance starts its first step"; README, Events: ``workflow.started``.

    Reproduction: default engine; the child's first ``create()`` stores the row and loses its
    answer (no crash, no restart: one engine throughout); the retry finds the row and
    ``Engine._start`` resumes it (893ef9b's path). The child workflow has an ``on_start`` hook;
    the test listens to every event.

    What happens instead: the child is resumed as if taken up from storage (``resumed=True``,
    stored ``running``), so ``run_instance`` never announces it: it runs its first step and
    completes with no ``workflow.started`` event and its ``on_start`` hook never runs (the same
    workflow started with a create that answers emits both once)."""
    hooked: list[str] = []
    kid = (tf.workflow("done-kid").step("s", lambda ctx: "kid done")
           .with_hooks(on_start=lambda ctx: hooked.append("on_start")).build())
    async with open_test_engine(adapter=ChildCreateAnswerLost()) as engine:
        started: list[str] = []
        engine.events.on("workflow.started", lambda event: started.append(event["instance_id"]))
        engine.register(kid)
        engine.register(dad)
        parent_id = await engine.start("dad")
        parent = await engine.wait(parent_id)
        assert parent.status == "completed"
        (child_id,) = parent.children
        assert (started.count(child_id), hooked) == (1, ["on_start"])


async def test_cancel_of_a_child_being_stored_says_no_and_the_child_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """docs/fanout.md, Links: "While a parent stores a child ..., ``signal()``, ``cancel()`` and
    ``wait()`` of the child wait for that store rather than answer that there is no such
    instance"; ``Engine.cancel``: ``True`` if it is now being cancelled, ``False`` "if it is
    unknown, over, or compensating already" (1a2c908 held the child for this: "cancel() said
    False and the child ran on").

    Reproduction: default engine; the child's ``create()`` takes 0.05 s; ``cancel(child)`` is
    called as it begins (the child is held: nothing of it has run). Repeated 12 times.

    What happens instead: ``cancel()`` waits on the hold, but ``_start`` releases the hold
    (``storing.done()``) and spawns the run, whose task is scheduled beside the woken
    ``cancel()``: in about half the tries (trio's scheduling order) the child's first step runs
    and the child completes before ``cancel()`` looks, and ``cancel()`` says ``False`` for an
    instance that had run nothing when it was called; the child's step runs and the child
    completes."""
    outcomes = []
    for _ in range(12):
        ran: list[str] = []
        kid = tf.workflow("done-kid").step("s", lambda ctx: ran.append("s") or "kid done").build()  # noqa: B023
        adapter = SlowChildCreate()
        async with open_test_engine(adapter=adapter) as engine:
            engine.register(kid)
            engine.register(dad)
            await engine.start("dad")
            await adapter.storing.wait()
            assert adapter.child_id is not None
            said = await engine.cancel(adapter.child_id)
            child = await engine.wait(adapter.child_id)
            outcomes.append((said, child.status, len(ran)))
    assert all(outcome == (True, "cancelled", 0) for outcome in outcomes), outcomes
