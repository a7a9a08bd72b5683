"""From a review ("rrstart") of 9414396 (``start(..., instance_id=X)`` racing a purge of a
finished X): a ``cancel()`` that said yes while a ``start()`` from a task outside the engine's
block was being stored was lost when the engine closed before the create answered (on SQLite:
the close did not wait for the store, and the cancel was then written to a closed adapter).
Each test failed until the commit that added this file, but for the first test's
MemoryAdapter cases (it takes writes after ``close()``) and the two guards at the end, which
passed before and must keep passing (concurrent starts of one id racing one purge; a lost
answer of the create made again). The two after the first were added with the fix: the same
with the create's late answer lost, and the close's wait for a start's store being bounded."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import open_test_engine

pytestmark = pytest.mark.trio

RUNS: list[Any] = []


async def echo(ctx: Any) -> Any:
    RUNS.append(ctx.input)
    return ctx.input


quick = tf.workflow("quick").step("s", echo).build()


class Hooked:
    """An adapter whose creates can be held: ``hold(id)``: a create of ``id`` refused (the row
    exists) sets ``refused`` and answers once ``go_on`` is set (a purge deletes the row
    between); ``slow_answer()``: the next create writes its row, then its answer is held until
    ``answer`` is set (storage slow to answer; a network round trip); ``lose_next_answer``: the
    next create that writes its row raises as if its answer were lost."""

    refuse_hold: str | None = None
    hold_answer = False
    lose_next_answer = False

    def hold(self, instance_id: str) -> None:
        self.refuse_hold, self.refused, self.go_on = instance_id, trio.Event(), trio.Event()

    def slow_answer(self) -> None:
        self.hold_answer, self.written, self.answer = True, trio.Event(), trio.Event()

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        created: bool = await super().create(instance_id, *args, **kwargs)  # type: ignore[misc]
        if created and self.lose_next_answer:
            self.lose_next_answer = False
            raise tf.StorageUnavailableError("the answer was lost")
        if created and self.hold_answer:
            self.hold_answer = False
            self.written.set()
            with trio.CancelScope(shield=True):
                await self.answer.wait()
        if not created and instance_id == self.refuse_hold:
            self.refuse_hold = None
            self.refused.set()
            await self.go_on.wait()
        return created


class Mem(Hooked, tf.adapters.MemoryAdapter):
    pass


class Lite(Hooked, tf.adapters.SQLiteAdapter):
    pass


def adapter_of(storage: str, tmp_path: Any) -> Any:
    return Mem() if storage == "memory" else Lite(str(tmp_path / "r.db"))


async def finished_ten_seconds_ago(engine: Any) -> None:
    assert (await engine.wait(await engine.start("quick", "old", instance_id="r"))).output == "old"
    await trio.sleep(10)


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
@pytest.mark.parametrize("race", [False, True], ids=["plain-start", "start-racing-a-purge"])
async def test_cancel_said_yes_while_the_start_was_stored_is_lost_when_the_engine_closes_before_the_answer(
    autojump_clock: Any, tmp_path: Any, race: bool, storage: str,
) -> None:
    """A service calls ``start("quick", "new", instance_id="r")`` from a task of its
    own; storage writes the row but is slow to answer. An operator's ``cancel("r")`` waits 10 s
    for the store and says True. The service then shuts down (its engine block ends); the
    create answers 1 s later. README (Cancellation): "an instance whose start was still being
    stored is cancelled once that store is over ... even when the engine closes before that
    store is over: the cancel is then stored in it, and the next engine ends it cancelled
    without running a step". With ``start-racing-a-purge`` the row stored is the one 9414396's
    loop creates again after a purge deleted the finished ``r`` (its refused create answered
    after the purge): the same.

    Was: the engine closed its adapter as its block ended, without waiting for the start
    in flight; the create's answer then comes, ``_store_cancel_as_made`` writes to a closed
    adapter (``DatabaseError: ... is not open``), logs "the next engine runs it", and the
    next engine runs ``echo``: ``r`` ends ``completed``, though ``cancel()`` said True. (On
    MemoryAdapter, which takes writes after ``close()``, it ended cancelled.)"""
    RUNS.clear()
    adapter = adapter_of(storage, tmp_path)
    said: list[Any] = []
    async with trio.open_nursery() as service:
        async with open_test_engine(adapter=adapter) as engine:
            engine.register(quick)
            if race:
                await finished_ten_seconds_ago(engine)
                adapter.hold("r")
            RUNS.clear()

            async def request() -> None:
                try:
                    said.append(await engine.start("quick", "new", instance_id="r"))
                except tf.EngineClosedError:
                    said.append("closed")

            async def operator() -> None:
                said.append(await engine.cancel("r"))

            service.start_soon(request)
            if race:
                await adapter.refused.wait()
                assert await engine.purge(older_than=1) == 1
                adapter.slow_answer()
                adapter.go_on.set()
            else:
                adapter.slow_answer()
            await adapter.written.wait()
            service.start_soon(operator)
            await trio.sleep(20)
            assert said == [True]  # the cancel gave up waiting for the store, and said yes

            async def answer_late() -> None:
                await trio.sleep(1)
                adapter.answer.set()

            service.start_soon(answer_late)
        # (the block ended: the engine closed)
    assert said == [True, "closed"]
    # (The same storage again: the memory adapter's rows live in the object.)
    again = adapter if storage == "memory" else tf.adapters.SQLiteAdapter(str(tmp_path / "r.db"))
    async with open_test_engine(adapter=again) as engine:
        engine.register(quick)
        assert (await engine.wait("r")).status == "cancelled"
        assert RUNS == []


class LosesHeldAnswer(Lite):
    """``Lite`` whose held answer (see ``slow_answer``), once given, is lost: the row is
    written, and the create raises."""

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        held = self.hold_answer
        created = await super().create(instance_id, *args, **kwargs)
        if created and held:
            raise tf.StorageUnavailableError("the answer was lost")
        return created


async def test_cancel_said_yes_while_the_start_was_stored_is_kept_when_its_answer_is_lost_after_the_close(
    autojump_clock: Any, tmp_path: Any,
) -> None:
    """As the first test, but the create's late answer is lost (the row written, the create
    raising): the start's row is read back and the cancel stored in it before storage
    closes; ``start()`` raises what the create raised, and the next engine ends ``r``
    cancelled without running its step."""
    RUNS.clear()
    adapter = LosesHeldAnswer(str(tmp_path / "r.db"))
    said: list[Any] = []
    async with trio.open_nursery() as service:
        async with open_test_engine(adapter=adapter) as engine:
            engine.register(quick)

            async def request() -> None:
                try:
                    said.append(await engine.start("quick", "new", instance_id="r"))
                except tf.StorageUnavailableError:
                    said.append("lost")

            async def operator() -> None:
                said.append(await engine.cancel("r"))

            adapter.slow_answer()
            service.start_soon(request)
            await adapter.written.wait()
            service.start_soon(operator)
            await trio.sleep(20)

            async def answer_late() -> None:
                await trio.sleep(1)
                adapter.answer.set()

            service.start_soon(answer_late)  # (before what may fail: the shielded create then ends)
            assert said == [True]
    assert said == [True, "lost"]
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(str(tmp_path / "r.db"))) as engine:
        engine.register(quick)
        assert (await engine.wait("r")).status == "cancelled"
        assert RUNS == []


async def test_the_close_waits_for_a_start_storing_only_for_a_bounded_time(
    autojump_clock: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """Storage that does not answer a start's create does not hold the engine's close for
    ever: the close waits for it as long as for a decision stored as the engine stops
    (``DECISION_TIMEOUT``), logs that a start was still storing, and closes storage. What the
    create stored is then the next engine's, as stored (README, Cancellation: "an engine that
    closes before a decision could be stored leaves the instance as last stored"): the cancel
    said meanwhile is lost, and ``r`` runs its step."""
    RUNS.clear()
    adapter = Lite(str(tmp_path / "r.db"))
    said: list[Any] = []
    async with trio.open_nursery() as service:
        async with open_test_engine(adapter=adapter) as engine:
            engine.register(quick)

            async def request() -> None:
                try:
                    said.append(await engine.start("quick", "new", instance_id="r"))
                except tf.EngineClosedError:
                    said.append("closed")

            async def operator() -> None:
                said.append(await engine.cancel("r"))

            adapter.slow_answer()
            service.start_soon(request)
            await adapter.written.wait()
            service.start_soon(operator)
            await trio.sleep(20)
            told = said == [True]
        # (Closed, the create still unanswered.)
        logged = "start() calls still storing" in caplog.text
        adapter.answer.set()  # (before what may fail: the shielded create then ends)
    assert told and logged
    assert said == [True, "closed"]
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(str(tmp_path / "r.db"))) as engine:
        engine.register(quick)
        assert (await engine.wait("r")).status == "completed"
        assert RUNS == ["new"]


# -- guards (pass; what the loop must keep) -------------------------------------------------


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_guard_three_starts_of_one_id_racing_one_purge_make_one_instance(
    autojump_clock: Any, tmp_path: Any, storage: str,
) -> None:
    """Guard: three requests start ``r`` (finished, being purged) at once, two with one new
    input and one with another. One instance is stored and runs once (``workflow.started``
    once), with the first start's input; the other same-input caller gets ``r`` too, and the
    other-input one ``InstanceIdConflictError`` (the same-input check applied to the loser)."""
    adapter = adapter_of(storage, tmp_path)
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(quick)
        started: list[str] = []
        engine.events.on("workflow.started", lambda event: started.append(event["instance_id"]))
        await finished_ten_seconds_ago(engine)
        adapter.hold("r")
        started.clear()
        RUNS.clear()
        got: list[Any] = []

        async def request(value: str) -> None:
            try:
                got.append(await engine.start("quick", value, instance_id="r"))
            except tf.InstanceIdConflictError:
                got.append("conflict")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(request, "new")
            await adapter.refused.wait()
            nursery.start_soon(request, "other")
            nursery.start_soon(request, "new")
            await trio.sleep(0.1)
            assert await engine.purge(older_than=1) == 1
            adapter.go_on.set()
        assert sorted(got) == ["conflict", "r", "r"]
        assert (await engine.wait("r")).output == "new"
        assert RUNS == ["new"]
        assert started == ["r"]


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_guard_lost_answer_of_the_create_made_again_after_a_purge_runs_once_on_retry(
    autojump_clock: Any, tmp_path: Any, storage: str,
) -> None:
    """Guard: the create 9414396's loop makes again (after a purge deleted the finished ``r``)
    stores the row and its answer is lost: ``start()`` raises ``StorageError``; the caller's
    retry returns ``r``, which runs once, announced once."""
    adapter = adapter_of(storage, tmp_path)
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(quick)
        started: list[str] = []
        engine.events.on("workflow.started", lambda event: started.append(event["instance_id"]))
        await finished_ten_seconds_ago(engine)
        adapter.hold("r")
        started.clear()
        RUNS.clear()
        raised: list[Exception] = []

        async def request() -> None:
            try:
                await engine.start("quick", "new", instance_id="r")
            except tf.StorageError as exc:
                raised.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(request)
            await adapter.refused.wait()
            assert await engine.purge(older_than=1) == 1
            adapter.lose_next_answer = True
            adapter.go_on.set()
        assert len(raised) == 1
        assert await engine.start("quick", "new", instance_id="r") == "r"
        assert (await engine.wait("r")).output == "new"
        await trio.sleep(100)
        assert RUNS == ["new"]
        assert started == ["r"]
