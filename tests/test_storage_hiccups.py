"""One storage call that fails for a moment (``StorageUnavailableError``: a database locked by
another connection, a server restarting) is tried again, whichever call it is, not only a
checkpoint: nothing is left unwoken, stopped or uncompensated when the next try works. Found by
an adversarial review; each test failed before its fix (autojump MockClock)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine


class Hiccups:
    """Mixed into a shipped adapter: the next call of a method (for one instance, or any) fails
    once with ``StorageUnavailableError`` before it reaches storage."""

    def fail_next(self, method: str, instance_id: str | None = None) -> None:
        self._failing: dict[str, str | None] = getattr(self, "_failing", {})
        self._failing[method] = instance_id

    def _hiccup(self, method: str, instance_id: str) -> None:
        failing = getattr(self, "_failing", {})
        if method in failing and failing[method] in (None, instance_id):
            del failing[method]
            raise tf.StorageUnavailableError(f"{method} failed for a moment (test)")

    async def load(self, instance_id: str) -> Any:
        self._hiccup("load", instance_id)
        return await super().load(instance_id)  # type: ignore[misc]

    async def signals(self, instance_id: str) -> Any:
        self._hiccup("signals", instance_id)
        return await super().signals(instance_id)  # type: ignore[misc]

    async def checkpoint(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        """``fail_next("checkpoint after")``: the write is made, and its answer lost."""
        self._hiccup("checkpoint", instance_id)
        stored = await super().checkpoint(instance_id, *args, **kwargs)  # type: ignore[misc]
        self._hiccup("checkpoint after", instance_id)
        return stored

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        self._hiccup("create", instance_id)
        return await super().create(instance_id, *args, **kwargs)  # type: ignore[misc]


class HiccupMemory(Hiccups, MemoryAdapter):
    pass


class HiccupSQLite(Hiccups, SQLiteAdapter):
    pass


@pytest.fixture(params=["memory", "sqlite"])
def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> Hiccups:
    return HiccupMemory() if request.param == "memory" else HiccupSQLite(tmp_path / "f.db")


async def ok(ctx: Any) -> str:
    return "ok"


async def test_a_parent_parked_on_its_child_is_woken_though_the_read_that_wakes_it_failed(
        autojump_clock: trio.testing.MockClock, adapter: Hiccups) -> None:
    """It hung: the wake-up's load failed once (on SQLite, a moment of lock contention), and a
    parent parked on a child has no wake time for the waker to come back to."""
    async def slow(ctx: Any) -> str:
        # The parent leaves memory meanwhile. Under CHECK_CHILD_STORED_AFTER: at that moment
        # the parent is taken up anyway, and the failing load could be ``wait()``'s own read.
        await trio.sleep(5)
        adapter.fail_next("load", "p")
        return "child done"

    child = tf.workflow("kid").step("s", slow).build()
    parent = tf.workflow("parent").child("k", workflow="kid").step("b", ok).build()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(child)
        engine.register(parent)
        await engine.start("parent", instance_id="p")
        with trio.fail_after(3600):
            done = await engine.wait("p")
    assert done.status == "completed", done.error


async def test_signal_returns_for_a_stored_signal_whose_wake_failed_and_the_instance_wakes(
        autojump_clock: trio.testing.MockClock, adapter: Hiccups) -> None:
    """``signal()`` raised for a signal it had stored (a caller trying again sends it twice),
    and the parked receive was never woken."""
    wf = tf.workflow("w").receive("r", signal="go").build()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        await engine.start("w", instance_id="i")
        await trio.sleep(5)  # parked, waiting for 'go'
        adapter.fail_next("load", "i")
        await engine.signal("i", "go", {"n": 1})
        with trio.fail_after(3600):
            done = await engine.wait("i")
    assert (done.status, done.output) == ("completed", {"n": 1})


async def test_a_completed_child_is_compensated_though_its_read_failed_once(
        autojump_clock: trio.testing.MockClock, adapter: Hiccups) -> None:
    """The failed read counted as the child's compensation failing, for good: the child stayed
    ``completed``, its compensation never run."""
    undone: list[str] = []

    async def undo(ctx: Any, result: Any) -> None:
        undone.append(ctx.metadata.id)

    async def boom(ctx: Any) -> None:
        adapter.fail_next("load", "p/k#1")
        raise RuntimeError("declined")

    child = tf.workflow("kid").step("s", ok, undo).build()
    parent = tf.workflow("parent").child("k", workflow="kid").step("b", boom).build()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(child)
        engine.register(parent)
        await engine.start("parent", instance_id="p")
        done = await engine.wait("p")
        kid = await engine.get_instance("p/k#1")
    assert (done.status, done.compensation_errors) == ("failed", {})
    assert kid is not None and kid.status == "compensated"
    assert undone == ["p/k#1"]


@pytest.mark.parametrize("call", ["signals", "create"])
async def test_a_run_whose_signals_read_or_child_start_failed_once_goes_on(
        autojump_clock: trio.testing.MockClock, adapter: Hiccups, call: str) -> None:
    """It stopped at once (``StorageUnavailableError: ... could not be checkpointed``), with
    ``storage_retry_for`` unspent: only checkpoints were tried again."""
    async def first(ctx: Any) -> str:
        adapter.fail_next(call)
        return "first"

    child = tf.workflow("kid").step("s", ok).build()
    wf = (tf.workflow("w").step("a", first).receive("r", signal="go").child("k", workflow="kid").build()
          if call == "signals" else tf.workflow("w").step("a", first).child("k", workflow="kid").build())
    async with open_test_engine(adapter=adapter, storage_retry_for=60) as engine:
        engine.register(child)
        engine.register(wf)
        iid = await engine.start("w", instance_id="i")
        if call == "signals":
            await engine.signal(iid, "go", "sent early")  # (kept in storage for the receive)
        with trio.fail_after(3600):
            done = await engine.wait(iid)
    assert (done.status, done.output) == ("completed", "ok"), done.error


@pytest.mark.parametrize("wf", ["saga", "receive", "child"])
async def test_a_checkpoint_stored_whose_answer_was_lost_is_taken_as_stored(
        autojump_clock: trio.testing.MockClock, adapter: Hiccups, wf: str) -> None:
    """Its retry was refused (``CheckpointConflictError``: the records were there already) and
    the instance stopped with an internal error, its failure unstorable. Storage is read back:
    holding exactly that checkpoint, it was stored. (A checkpoint that consumes a signal, and
    a child's last one, with its notice to its parent, too.)"""
    async def first(ctx: Any) -> str:
        adapter.fail_next("checkpoint after", "i")
        return "first"

    child = tf.workflow("kid").step("s", ok).build()
    definition = {
        "saga": tf.workflow("w").step("a", first).step("b", ok).build(),
        "receive": tf.workflow("w").receive("r", signal="go").step("a", ok).step("b", ok).build(),
        "child": tf.workflow("w").child("k", workflow="kid").step("b", ok).build(),
    }[wf]
    async with open_test_engine(adapter=adapter, storage_retry_for=60) as engine:
        engine.register(child)
        engine.register(definition)
        iid = await engine.start("w", instance_id="i")
        if wf == "receive":
            await trio.sleep(5)  # parked
            adapter.fail_next("checkpoint after", "i")  # the receive's, which consumes the signal
            await engine.signal(iid, "go")
        if wf == "child":
            adapter.fail_next("checkpoint after", "i/k#1")  # the child's end, with its notice
        with trio.fail_after(3600):
            done = await engine.wait(iid)
    assert (done.status, done.output) == ("completed", "ok"), done.error
    assert [r.step_name for r in done.history if r.status == "completed"] == \
        {"saga": ["a", "b"], "receive": ["r", "a", "b"], "child": ["k", "b"]}[wf]


async def test_a_child_whose_last_checkpoint_is_tried_again_is_compensated_once_its_run_is_over(
        autojump_clock: trio.testing.MockClock, adapter: Hiccups, caplog: pytest.LogCaptureFixture) -> None:
    """Its end was stored (the answer lost), and a sibling's end notice read the notice with
    it: the parent went on, failed and compensated the child from storage, a second run of it,
    while its own run waited to try its checkpoint again; that run's retry then failed, with an
    ERROR logged and its failure unstorable."""
    undone: list[str] = []

    async def last(ctx: Any) -> str:
        if ctx.metadata.id == "i/m/#0/k#1":
            adapter.fail_next("checkpoint after", "i/m/#0/k#1")
        return "done"

    async def undo(ctx: Any, result: Any) -> None:
        undone.append(ctx.metadata.id)

    async def boom(ctx: Any) -> None:
        raise RuntimeError("declined")

    child = tf.workflow("kid").step("s", last, undo).build()
    parent = (tf.workflow("w").map("m", items=lambda ctx: [0, 1], branch=tf.branch("item").child("k", workflow="kid")
                                   .build()).step("c", boom).build())
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(child)
        engine.register(parent)
        await engine.start("w", instance_id="i")
        with trio.fail_after(3600):
            done = await engine.wait("i")
        kids = [await engine.get_instance(f"i/m/#{n}/k#1") for n in (0, 1)]
    assert (done.status, done.compensation_errors) == ("failed", {})
    assert [k.status for k in kids if k is not None] == ["compensated", "compensated"]
    assert sorted(undone) == ["i/m/#0/k#1", "i/m/#1/k#1"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
