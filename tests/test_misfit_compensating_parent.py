"""A parent stored compensating that no longer fits its definition fails alone only once the
children it waited on are cancelled: stored failed before, nothing would cancel them if its
engine closed first (on MemoryAdapter and SQLite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


async def _kid_step(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(100)
    return "k"


async def _ja(data: Any) -> str:
    return "a"


KID = tf.workflow("kid").step("k", _kid_step).build()
PARENT = tf.workflow("p").task("a", job="ja", compensate="ja").child("c", workflow="kid").build()
#: The next release of the parent: the step it ran is gone.
RENAMED = tf.workflow("p").task("a2", job="ja", compensate="ja").child("c", workflow="kid").build()


async def _cancelled_as_its_engine_closes(adapter: Any, clock: Any) -> str:
    """A parent waiting on its running child, cancelled as its engine closes: stored
    compensating, the child not cancelled yet."""
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.jobs.register("ja", _ja)
        engine.register(KID)
        engine.register(PARENT)
        pid = await engine.start("p")
        await trio.sleep(5)
        assert await engine.cancel(pid)  # the engine closes at once
    return pid


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_a_misfit_compensating_parent_closed_before_its_child_is_cancelled_cancels_it_with_the_next_engine(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str) -> None:
    memory = MemoryAdapter()

    def adapter() -> Any:
        return memory if storage == "memory" else SQLiteAdapter(tmp_path / "flows.db")

    clock = virtual_wall_clock()
    pid = await _cancelled_as_its_engine_closes(adapter(), clock)
    child_id = f"{pid}/c#1"
    # The next release: the parent no longer fits; the child's workflow is not registered, so
    # cancelling the child waits (up to the parent's compensation timeout), and the engine
    # closes first.
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.jobs.register("ja", _ja)
        engine.register(RENAMED)
        await trio.sleep(1)
        parent = await engine.get_instance(pid)
        assert parent is not None and parent.status == "running", parent  # not failed yet
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.jobs.register("ja", _ja)
        engine.register(KID)
        engine.register(RENAMED)
        with trio.fail_after(1000):
            parent = await engine.wait(pid)
            child = await engine.wait(child_id)
    assert (parent.status, parent.error_name) == ("failed", "DefinitionMismatchError"), parent
    assert child.status in ("cancelled", "compensated"), child.status


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_wait_on_a_misfit_compensating_parent_returns_its_failure_once_its_child_is_cancelled(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str) -> None:
    memory = MemoryAdapter()

    def adapter() -> Any:
        return memory if storage == "memory" else SQLiteAdapter(tmp_path / "flows.db")

    clock = virtual_wall_clock()
    pid = await _cancelled_as_its_engine_closes(adapter(), clock)
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.jobs.register("ja", _ja)
        engine.register(KID)
        engine.register(RENAMED)
        with trio.fail_after(1000):
            parent = await engine.wait(pid)  # it runs here: waited for, not refused as not live
            child = await engine.get_instance(f"{pid}/c#1")
    assert (parent.status, parent.error_name) == ("failed", "DefinitionMismatchError"), parent
    assert child is not None and child.status in ("cancelled", "compensated"), child.status
