"""Adversarial review of d1a9e52 + dcbf368 (``resume()`` leaves to the waker a parked row listed
for pending signals none of its lanes waits for; the signals it read are handed to the run it
takes up) and 4a2b2d9 (an end stored, its answer lost, the row purged before the retry: taken
as stored).

Self-contained: from a trioflow checkout,
``pytest -q -c pyproject.toml /tmp/review_fixes_dec7/test_review_of_resume_and_purged_end.py``.
Deterministic: trio's MockClock (autojump); an adapter whose ``signals()`` takes time stands
for SQLite's thread round trip or a database behind a network.

Failing tests (bugs, both regressions of d1a9e52: they pass at d1a9e52^): ``test_bug_*``. The
others pin behaviour worth keeping."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._codec import encode_payload
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


def slow_signals(kind: str, tmp_path: Path) -> Any:
    """A SlowSignalsAdapter, on memory or on a SQLite file."""
    if kind == "memory":
        return SlowSignalsAdapter()
    class SlowSQLite(SQLiteAdapter):
        slow_for: set[str] = set()

        async def signals(self, instance_id: str) -> Any:
            if instance_id in self.slow_for:
                await trio.sleep(30)
            return await super().signals(instance_id)
    return SlowSQLite(tmp_path / "flows.db")


class SlowSignalsAdapter(MemoryAdapter):
    """A MemoryAdapter whose ``signals()`` for the ids in ``slow_for`` takes 30 s (a slow
    database read; SQLite's is a thread round trip): nothing else differs."""

    def __init__(self) -> None:
        super().__init__()
        self.slow_for: set[str] = set()

    async def signals(self, instance_id: str) -> Any:
        if instance_id in self.slow_for:
            await trio.sleep(30)
        return await super().signals(instance_id)


def drain(stream: Any) -> list[dict[str, Any]]:
    out = []
    while True:
        try:
            out.append(stream.receive_nowait())
        except trio.WouldBlock:
            return out


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


APPROVAL = tf.workflow("approval").receive("r", signal="x", timeout=3_600).build()


def two_receives(counted: list[int]) -> tf.WorkflowDefinition:
    async def count(ctx: tf.WorkflowContext) -> int:
        counted.append(1)
        return len(counted)
    return (tf.workflow("two").receive("a", signal="go").step("count", count)
            .wait("pause", seconds=600).build())


# -- bugs ---------------------------------------------------------------------------------------


async def _park_two_with_unwoken_signals(engine: tf.Engine, adapter: Any, counted: list[int]) -> None:
    """a1 (approval) and b1 (two receives) parked, out of memory, each with a signal stored as
    if a crash came between the signal's store and its wake; a1's ``signals()`` read slow."""
    engine.register(APPROVAL)
    engine.register(two_receives(counted))
    await engine.start("approval", instance_id="a1")
    await engine.start("two", instance_id="b1")
    await trio.sleep(5)  # both parked, out of memory
    await adapter.send_signal("a1", "x", encode_payload(1, "p"))
    await adapter.send_signal("b1", "go", encode_payload("first", "p"))
    adapter.slow_for = {"a1"}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_bug_resume_runs_an_instance_again_from_a_row_that_went_out_of_date_during_an_earlier_rows_read(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, kind: str, tmp_path: Path) -> None:
    """Promised (Engine.resume: "Never starts an instance twice"; docs: a row read before a run's
    last checkpoint is never resumed from): an instance that ran here and parked again while
    ``resume()`` was in its loop is not taken up again from the row ``resumable()`` gave.

    What happens: d1a9e52 made ``_resume`` await (``_look_at_parked`` reads each parked row's
    signals) between rows. ``resume()`` watches ends only while ``resumable()`` reads, and
    ``_look_at_parked`` only while the row's own signals are read. Here row a1 (a signal
    stored before a crash) is read first; meanwhile ``signal(b1, "go")`` wakes b1, which takes
    the first "go", runs ``count`` and parks at its 600 s wait. Then the loop reaches b1's OLD
    row (standing at the receive), storage still holds the second "go", so it is taken up from
    that snapshot: its receive takes the signal again (a second ``workflow.signal.received``),
    the checkpoint conflicts, "instance actor b1 crashed" is logged, ``resume()`` lists b1,
    and ``wait(b1)`` raises InstanceNotLiveError ("stays running in storage") rather than
    giving the completed instance 600 s later."""
    counted: list[int] = []
    adapter = slow_signals(kind, tmp_path)
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        await _park_two_with_unwoken_signals(engine, adapter, counted)

        async def resume() -> None:
            await engine.resume()

        async with engine.events.subscribe("*") as stream:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(resume)
                await trio.sleep(1)  # resume() is reading a1's signals
                await engine.signal("b1", "go", "second")
            received = [e for e in drain(stream)
                        if e["instance_id"] == "b1" and e["event"] == "workflow.signal.received"]
        assert len(received) == 1
        with trio.fail_after(10_000):
            done = await engine.wait("b1")
        assert (done.status, done.step_results["count"].output, counted) == ("completed", 1, [1])
    assert errors(caplog) == []


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_bug_resume_runs_a_cancelled_instance_again_from_the_row_it_had_before_its_cancel(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, kind: str, tmp_path: Path) -> None:
    """The same window with ``cancel()``. Promised: ``cancel()`` returning True means the
    instance is compensated and ends cancelled; it runs nothing more (never run an instance
    twice, never resume from an old snapshot).

    What happens: ``cancel(b1)`` wakes b1 (parked, with a "go" a crash left unwoken) while
    ``resume()`` reads a1's signals; b1 ends ``cancelled`` (published). The loop then reaches
    b1's old row (running, at its receive); storage still holds the "go" (an ended row keeps
    its pending signals), so that snapshot is taken up: the receive takes "go", ``count``
    runs, and its checkpoint (appending at 0, as many records as the cancelled row holds) is
    accepted over the ended row. The instance, cancelled, comes back ``running`` and then
    ``completed``: ``workflow.cancelled`` then ``workflow.completed`` are both published."""
    counted: list[int] = []
    adapter = slow_signals(kind, tmp_path)
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        await _park_two_with_unwoken_signals(engine, adapter, counted)

        async def resume() -> None:
            await engine.resume()

        async with engine.events.subscribe("workflow.*") as stream:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(resume)
                await trio.sleep(1)
                cancelled = await engine.cancel("b1")
            await trio.sleep(1_000)
            ends = [e["event"] for e in drain(stream) if e["instance_id"] == "b1"
                    and e["event"] in ("workflow.cancelled", "workflow.completed", "workflow.failed")]
        seen = await engine.get_instance("b1")
        assert seen is not None
        assert (cancelled, seen.status, ends) == (True, "cancelled", ["workflow.cancelled"])
        assert len(counted) <= 1  # (before d1a9e52 resume() took b1 up first, and count ran once)
    assert errors(caplog) == []


# -- pinned: what holds ---------------------------------------------------------------------------


async def test_open_resume_is_not_fooled_by_the_same_window(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """The resume an engine does as it opens (``_resume_leftovers``, ``old=True``) checks
    ``_old_rows`` at each row, after the earlier rows' reads: a row whose instance ran here
    meanwhile is passed over. (Only ``resume()``'s path lacks it.)"""
    counted: list[int] = []
    adapter = SlowSignalsAdapter()
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(APPROVAL)
        engine.register(two_receives(counted))
        await engine.start("approval", instance_id="a1")
        await engine.start("two", instance_id="b1")
        await trio.sleep(5)
    await adapter.send_signal("a1", "x", encode_payload(1, "p"))
    await adapter.send_signal("b1", "go", encode_payload("first", "p"))
    adapter.slow_for = {"a1"}
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(APPROVAL)
        engine.register(two_receives(counted))
        await trio.sleep(1)
        await engine.signal("b1", "go", "second")
        with trio.fail_after(10_000):
            done = await engine.wait("b1")
        assert (done.status, counted) == ("completed", [1])
        assert (await engine.wait("a1")).output == 1
    assert errors(caplog) == []


async def test_a_child_end_stored_while_its_parent_could_not_run_wakes_the_parent_at_the_next_open(
        autojump_clock: trio.testing.MockClock) -> None:
    """A parent parked on its child (lane waiting ``{"child", "signal": notice}``) whose child
    ended while no engine could run the parent: the notice is a pending signal its lane waits
    for, so the open's resume takes it up (not left to a waker that has only ``inf``)."""
    adapter = MemoryAdapter()
    kid = tf.workflow("kid").receive("r", signal="go").build()
    parent = tf.workflow("parent").child("c", workflow="kid").build()
    clock = virtual_wall_clock()
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(kid)
        engine.register(parent)
        await engine.start("parent", instance_id="p")
        await trio.sleep(5)
        (child,) = [i.id for i in await engine.get_instances("kid")]
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(kid)  # the parent's workflow is not registered here
        await engine.signal(child, "go", "ok")
        assert (await engine.wait(child)).status == "completed"
        assert [n for _, n, _ in await adapter.signals("p")] == [f"trioflow.child-ended:{child}"]
    async with open_test_engine(adapter=adapter, clock=clock, resume=False) as engine:
        engine.register(kid)
        engine.register(parent)
        assert await engine.resume() == ["p"]
        with trio.fail_after(100):
            done = await engine.wait("p")
        assert (done.status, done.output) == ("completed", "ok")


async def test_branches_waiting_for_different_signals_one_stored_and_a_stray(
        autojump_clock: trio.testing.MockClock) -> None:
    """Parallel branches waiting for "a" and "b"; storage holds "b" (a crash before its wake)
    and a stray "zzz": resume() takes the instance up for "b"; "a" still waits; the stray
    stays pending and costs no take-up at the next resume()."""
    adapter = MemoryAdapter()
    wf = (tf.workflow("fan").parallel("p", branches=[
        tf.branch("ba").receive("ra", signal="a").build(),
        tf.branch("bb").receive("rb", signal="b").build()]).build())
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        await engine.start("fan", instance_id="f")
        await trio.sleep(5)
        await adapter.send_signal("f", "b", encode_payload(2, "p"))
        await adapter.send_signal("f", "zzz", encode_payload(0, "p"))
        assert await engine.resume() == ["f"]
        await trio.sleep(5)  # took "b", parked again waiting for "a"
        assert await engine.resume() == []
        await engine.signal("f", "a", 1)
        done = await engine.wait("f")
        assert done.status == "completed"
        assert [n for _, n, _ in await adapter.signals("f")] == ["zzz"]


async def test_a_delayed_start_with_an_early_signal_is_left_to_its_start_time(
        autojump_clock: trio.testing.MockClock) -> None:
    """``start(delay=)`` then a signal for its first receive: resume() leaves it (its start is
    not brought forward), and at its time it starts and takes the early signal."""
    adapter = MemoryAdapter()
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(APPROVAL)
        await engine.start("approval", instance_id="d", delay=100)
        await trio.sleep(5)
        await engine.signal("d", "x", "early")
        assert await engine.resume() == []
        await trio.sleep(50)
        seen = await engine.get_instance("d")
        assert seen is not None and seen.started_at is None and seen.step_results == {}
        with trio.fail_after(100):
            done = await engine.wait("d")
        assert (done.status, done.output) == ("completed", "early")


class NoWakeAtAdapter(MemoryAdapter):
    """A wrapper-style adapter written before ``StoredInstance.wake_at``: its listings leave it
    None."""

    async def resumable(self) -> Any:
        import attrs
        return [attrs.evolve(r, wake_at=None) for r in await super().resumable()]


async def test_an_adapter_that_leaves_wake_at_none_works_as_before(autojump_clock: trio.testing.MockClock) -> None:
    """Such a row is taken up (and parks again) at every resume(), as before d1a9e52; the
    stray signal is never taken and the instance still ends by its timeout."""
    adapter = NoWakeAtAdapter()
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(APPROVAL)
        await engine.start("approval", instance_id="n")
        await trio.sleep(5)
        await engine.signal("n", "stray", 1)
        assert await engine.resume() == ["n"]
        await engine.signal("n", "x", "yes")
        done = await engine.wait("n")
        assert (done.status, done.output) == ("completed", "yes")


def losing_the_end_of(instance_id: str) -> Any:
    """A MemoryAdapter whose checkpoint giving ``instance_id`` its end is stored and then
    raises StorageUnavailableError once (a commit that failed late)."""
    class Lossy(MemoryAdapter):
        lost = trio.Event()

        async def checkpoint(self, iid: str, status: Any, header: bytes, records: Any, **kw: Any) -> Any:
            got = await super().checkpoint(iid, status, header, records, **kw)
            if iid == instance_id and status in ("completed", "failed", "cancelled") and not self.lost.is_set():
                self.lost.set()
                raise tf.StorageUnavailableError("commit failed late")
            return got
    return Lossy()


@pytest.mark.parametrize("fails", [False, True])
async def test_an_end_purged_before_its_retry_runs_its_hook_and_publishes_its_end_once(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, fails: bool) -> None:
    """4a2b2d9: the end's events go out once, ``on_complete``/``on_failed`` run once, wait()
    gives the outcome, and nothing is logged as a crash."""
    adapter = losing_the_end_of("x")
    hooks: list[str] = []

    async def step(ctx: tf.WorkflowContext) -> int:
        if fails:
            raise ValueError("no")
        return 1

    wf = (tf.workflow("w").step("s", step)
          .with_hooks(on_complete=lambda ctx: hooks.append("complete"), on_failed=lambda ctx: hooks.append("failed"))
          .build())
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        async with engine.events.subscribe("workflow.*") as stream:
            async with trio.open_nursery() as nursery:
                async def purge() -> None:
                    await adapter.lost.wait()
                    assert await engine.purge(older_than=0) == 1
                nursery.start_soon(purge)
                await engine.start("w", instance_id="x")
                done = await engine.wait("x")
            await trio.sleep(1)
            ends = [e["event"] for e in drain(stream) if e["event"] in ("workflow.completed", "workflow.failed")]
        assert done.status == ("failed" if fails else "completed")
        assert ends == (["workflow.failed"] if fails else ["workflow.completed"])
        assert hooks == (["failed"] if fails else ["complete"])
        assert await engine.get_instance("x") is None
    assert errors(caplog) == []


@pytest.mark.parametrize("purge", [False, True])
async def test_a_cancel_while_a_lost_end_is_retried_says_no_and_the_end_stands(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, purge: bool) -> None:
    """A ``cancel()`` that comes while the terminal checkpoint (stored, its answer lost) is
    backing off, with or without a purge of the row first: it says False, nothing is
    compensated, the end is published once and ``on_complete`` runs once."""
    adapter = losing_the_end_of("x")
    log: list[str] = []

    async def s(ctx: tf.WorkflowContext) -> int:
        log.append("s")
        return 1

    async def undo(ctx: tf.WorkflowContext, out: int) -> None:
        log.append("undo")

    wf = (tf.workflow("w").step("s", s, undo)
          .with_hooks(on_complete=lambda ctx: log.append("complete"), on_failed=lambda ctx: log.append("failed"))
          .build())
    got: dict[str, Any] = {}
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        async with engine.events.subscribe("workflow.*") as stream:
            async def canceller() -> None:
                await adapter.lost.wait()
                if purge:
                    got["purged"] = await engine.purge(older_than=0)
                got["cancel"] = await engine.cancel("x")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(canceller)
                await engine.start("w", instance_id="x")
                done = await engine.wait("x")
            await trio.sleep(10)
            ends = [e["event"] for e in drain(stream) if e["event"] in (
                "workflow.completed", "workflow.cancelled", "workflow.failed", "workflow.compensated")]
        seen = await engine.get_instance("x")
    assert got["cancel"] is False and got.get("purged", 1) == 1
    assert (done.status, done.output, ends, log) == ("completed", 1, ["workflow.completed"], ["s", "complete"])
    assert (seen is None) if purge else (seen is not None and seen.status == "completed")
    assert errors(caplog) == []
