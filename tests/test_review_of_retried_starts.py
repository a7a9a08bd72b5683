"""From a review of cf0cd35 (retried starts whose create's answer was lost). The tests here
failed on cf0cd35 because of a library bug, fixed by the commit that added this file, except
the delayed start's, which pins that it runs once (its first version counted another
instance's step too)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine

from lost_answers import AnswerLostFor, FirstAnswerLost


class AnswerLostThenSlowLoad(FirstAnswerLost):
    """The first ``create()`` stores the row, then raises ``StorageUnavailableError`` (its
    answer lost). Once ``slow_load`` is set, ``load()`` reads the row, then takes
    ``load_for`` s (1) to answer (``loading`` set as it begins)."""

    def __init__(self) -> None:
        super().__init__()
        self.slow_load = False
        self.load_for = 1.0
        self.loading = trio.Event()

    async def load(self, instance_id: str) -> Any:
        row = await super().load(instance_id)
        if self.slow_load:
            self.loading.set()
            await trio.sleep(self.load_for)  # (read, its answer slow on the way back)
        return row


async def test_a_retried_start_racing_resume_runs_the_instance_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``Engine.resume``: "Resume every stored pending/running instance ... not already running
    here ... Never starts an instance twice"; README, Storage failures: "``start()``: retry it
    with the same ``instance_id``".

    Reproduction: ``open_test_engine(resume=False)``; ``start("w", instance_id="x")``'s
    ``create()`` stores the row and loses its answer. The caller retries the start; its
    ``create()`` says the row exists and the retry reads the row (its answer takes 1 s). While
    it reads, ``resume()`` is called: ``x`` is stored ``running`` and not running here, so it
    is resumed and runs its step.

    What happens instead: ``Engine._start`` takes the row it read as its own (nothing run, in
    the row it read) and ``_spawn``s it as a fresh start without looking at ``self._live``
    again (``_resume_one`` would have: "running here, or being started"), so a second run of
    ``x`` runs the step again: the job runs twice, and the second run's checkpoint is refused
    (``CheckpointConflictError``), which replaces the first run in ``_live``: ``wait("x")``
    raises ``InstanceNotLiveError`` ("x failed (CheckpointConflictError ...)")."""
    ran: list[int] = []

    async def step(ctx: tf.WorkflowContext) -> int:
        ran.append(1)
        await trio.sleep(20)
        return 1

    w = tf.workflow("w").step("s", step).build()
    adapter = AnswerLostThenSlowLoad()
    async with open_test_engine(adapter=adapter, resume=False) as engine:
        engine.register(w)
        try:
            await engine.start("w", instance_id="x")
        except tf.StorageUnavailableError:
            pass
        adapter.slow_load = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: engine.start("w", instance_id="x"))
            await adapter.loading.wait()
            adapter.slow_load = False
            resumed = await engine.resume()
        try:
            outcome = (await engine.wait("x")).status
        except tf.TrioflowError as exc:
            outcome = repr(exc)
        await trio.sleep(20)
        got = await engine.get_instance("x")
        # (The retry holds ``x`` as being started while it reads its row, as any start holds
        # its id: resume() leaves it to the retry, which runs it. Before the commit that added
        # tests/test_review_of_close_and_held_starts.py, resume() ran it and the retry found
        # it running here.)
        assert (resumed, outcome, got.status, len(ran)) == ([], "completed", "completed", 1)


async def test_a_retried_delayed_start_racing_the_waker_runs_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """docs/waiting.md / ``Engine.start``: ``delay`` "holds the first step back until then,
    durably: the instance is stored now, waits without a task, and starts on time"; README,
    Storage failures: "``start()``: retry it with the same ``instance_id``"; ``Engine.resume``:
    "Never starts an instance twice".

    Reproduction: default engine (auto-resume on, nothing else called);
    ``start("w", instance_id="x", delay=1)``'s ``create()`` stores the row (waiting for its
    start) and loses its answer. The caller retries the same start at once; its ``create()``
    says the row exists and the retry reads the row (its answer takes 2 s). Meanwhile another
    ``start(..., delay=60)`` wakes the waker, which finds ``x`` in storage, due at t=1, and
    takes it up: it runs its step.

    What happens instead: the retry's ``Engine._start`` takes the row it read as its own
    (nothing run in it) and ``_spawn``s a second run of ``x`` without looking at
    ``self._live`` again: the step's job runs twice (``ran == [1, 1]``)."""
    ran: list[int] = []

    async def step(ctx: tf.WorkflowContext) -> int:
        if tf.current_step().instance_id == "x":  # (not "other", which runs at 60 s)
            ran.append(1)
        await trio.sleep(5)
        return 1

    w = tf.workflow("w").step("s", step).build()
    adapter = AnswerLostThenSlowLoad()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(w)
        try:
            await engine.start("w", instance_id="x", delay=1)
        except tf.StorageUnavailableError:
            pass
        adapter.slow_load = True
        adapter.load_for = 2.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: engine.start("w", instance_id="x", delay=1))
            await adapter.loading.wait()
            adapter.slow_load = False
            # Any other start wakes the waker up to look at storage (it finds x due at t=1).
            await engine.start("w", instance_id="other", delay=60)
        await trio.sleep(100)
        got = await engine.get_instance("x")
        assert (got.status, len(ran)) == ("completed", 1)


async def _sleepy(ctx: tf.WorkflowContext) -> int:
    await trio.sleep(10)
    return 1


async def test_a_retried_start_queued_for_a_slot_is_listed_as_get_instance_says(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, The engine: "At most ``max_running`` instances run at once; the rest wait in a
    queue (stored as ``pending``, no task of their own) and start as slots free, each stored as
    ``running`` when it gets its slot, so a listing by status and a workflow timeout (counted
    from then) hold across a restart"; cf0cd35: a retry runs its own row "with or without a
    slot as this call decided".

    Reproduction: ``max_running=1``. ``start("w", instance_id="x")`` takes the free slot, so
    its ``create()`` stores ``x`` ``running`` (``started_at`` set), then loses its answer (the
    slot is freed). ``start("w", instance_id="busy")`` takes the slot (its step takes 10 s).
    The caller retries ``start("w", instance_id="x")``: no slot is free, so this try would store
    ``pending``; its ``create()`` says the row exists.

    What happens instead: ``Engine._start`` sets ``own.status = "pending"`` in memory only and
    queues the run; the row stays ``running`` (with the first try's ``started_at``) until the
    run gets its slot 10 s later: meanwhile ``get_instances(status="running")`` lists ``x``
    beside ``busy`` (two running under ``max_running=1``), ``get_instances(status="pending")``
    lists nothing, while ``get_instance("x").status`` says ``pending``. (A restart meanwhile
    resumes it as ``running`` with its workflow timeout counted from the first try.)"""
    w = tf.workflow("w").step("s", _sleepy).build()
    async with open_test_engine(adapter=AnswerLostFor("x"), max_running=1) as engine:
        engine.register(w)
        try:
            await engine.start("w", instance_id="x")
        except tf.StorageUnavailableError:
            pass
        await engine.start("w", instance_id="busy")
        await engine.start("w", instance_id="x")
        await trio.sleep(1)
        running = sorted(i.id for i in await engine.get_instances(status="running"))
        pending = sorted(i.id for i in await engine.get_instances(status="pending"))
        one = (await engine.get_instance("x")).status
        # Decided (the commit that added this file): the retry runs the row as a resume of it
        # does, so ``x`` waits for its slot listed as stored, ``running`` (as an instance resumed
        # from a ``running`` row under slot pressure does); ``get_instance`` and the listings agree.
        assert (running, pending, one) == (["busy", "x"], [], "running")
        assert (await engine.wait("x")).status == "completed"


async def test_a_retried_start_that_got_a_slot_is_stored_running_with_a_start_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, The engine: queued instances are "stored as ``pending`` ... and start as slots
    free, each stored as ``running`` when it gets its slot, so a listing by status and a
    workflow timeout (counted from then) hold across a restart".

    Reproduction: ``max_running=1``; ``busy`` holds the slot (its step takes 10 s).
    ``start("w", instance_id="x")`` finds no slot, so its ``create()`` stores ``x`` ``pending``
    (no ``started_at``), then loses its answer. Once ``busy`` completed, the caller retries
    ``start("w", instance_id="x")``: it takes the free slot (this try would store
    ``running``); its ``create()`` says the row exists. ``x``'s step takes 10 s.

    What happens instead: ``Engine._start`` sets ``own.status = "running"`` in memory, so
    ``_instance_actor`` never ``admit``s it (it does only for ``status == "pending"``): its
    step runs while the row says ``pending`` (``get_instances(status="running")`` is empty,
    ``status="pending"`` lists ``x``), and ``started_at`` is never set: the completed instance
    has ``started_at=None`` (an instance started without a lost answer has it)."""
    w = tf.workflow("w").step("s", _sleepy).build()
    async with open_test_engine(adapter=AnswerLostFor("x"), max_running=1) as engine:
        engine.register(w)
        await engine.start("w", instance_id="busy")
        try:
            await engine.start("w", instance_id="x")
        except tf.StorageUnavailableError:
            pass
        await engine.wait("busy")
        await engine.start("w", instance_id="x")
        await trio.sleep(1)
        running = sorted(i.id for i in await engine.get_instances(status="running"))
        pending = sorted(i.id for i in await engine.get_instances(status="pending"))
        got = await engine.wait("x")
        assert (running, pending, got.status, got.started_at is not None) == (["x"], [], "completed", True)
