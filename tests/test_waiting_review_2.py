"""A review of durable waiting: each test failed before its fix (its docstring says what was
expected and what happened). Virtual time only (MockClock via pytest-trio's autojump_clock, the
engine's virtual wall clock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        memory = MemoryAdapter()
        return lambda: memory
    return lambda: SQLiteAdapter(tmp_path / "flows.db")


async def _one(data: Any) -> int:
    return 1


async def test_a_delayed_start_emits_workflow_started_and_runs_on_start_when_it_starts(
    autojump_clock: trio.testing.MockClock, storage: Any,
) -> None:
    """Expected: ``start(..., delay=5000)`` holds the instance back until the delay is over
    (docs/waiting.md "Delayed starts": it "runs its first step at that time"; the workflow
    timeout "counts from when the delayed instance starts, not from when start stored it";
    ``started_at`` stays None until then). So ``workflow.started`` and the ``on_start`` hook,
    which announce that start, should come ~5000 s later, as Temporal's ``start_delay`` runs no
    workflow code before the delay.

    Before the fix: both fire at once, when ``start()`` stores the instance (+0 s), while the
    instance's ``started_at`` is still None and its first step runs 5000 s later. (For a
    delayed start queued ``pending`` they fire when it gets a slot instead: when they fire
    depends on max_running, not on the delay.)

    Cause: actors/_instance.py run_instance emits ``workflow.started`` (line 87) and
    ``_forward`` runs ``on_start`` (line 145) before ``wait_for_start`` (line 147); a
    woken run is ``resumed`` so neither happens at the real start."""
    clock = virtual_wall_clock()
    hook_at: list[float] = []
    event_at: list[float] = []
    wf = (tf.workflow("x").with_hooks(on_start=lambda ctx: hook_at.append(clock()))
          .task("a", job=_one).build())
    async with open_test_engine(adapter=storage(), clock=clock) as engine:
        engine.events.on("workflow.started", lambda e: event_at.append(clock()))
        engine.register(wf)
        t0 = clock()
        iid = await engine.start("x", delay=5000)
        with trio.fail_after(10**6):
            done = await engine.wait(iid)
    assert done.status == "completed"
    assert done.started_at is not None and done.started_at >= t0 + 4999  # (this holds)
    assert event_at and event_at[0] >= t0 + 4999, f"workflow.started came at +{event_at[0] - t0:.3f} s"
    assert hook_at and hook_at[0] >= t0 + 4999, f"on_start ran at +{hook_at[0] - t0:.3f} s"


class _CheckpointFailsOnceWhileWaiting(MemoryAdapter):
    """A MemoryAdapter whose first checkpoint storing a wake time raises a plain error (a bug in
    an adapter, a corrupt database): the engine fails that instance alone."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed and kwargs.get("wake_at") is not None:
            self.armed = False
            raise RuntimeError("disk on fire")
        return await super().checkpoint(*args, **kwargs)


async def test_an_instance_failed_alone_while_it_waits_waits_for_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Expected: an instance that has ended waits for nothing: ``WorkflowInstance.waiting`` is
    None once it is failed (as for completed, cancelled and timed-out instances, which the
    existing tests pin down: "a timed-out instance waits for nothing").

    Before the fix: an instance the engine fails alone (``internal error: ...``) while a timer step
    waits is reported ``status='failed'`` with ``waiting={'timer': due}``, both by ``wait()``
    and by ``get_instance()`` (the stored header keeps the lane's wait).

    Cause: runtime/_decide.py ``fail_alone`` (line 301) sets every lane's ``step`` to None
    but leaves ``lane.waiting``, unlike ``finish`` and ``begin_compensation``, which clear it;
    ``_snapshot._waiting`` then reports it."""
    wf = tf.workflow("x").wait("w", seconds=500).build()
    async with open_test_engine(adapter=_CheckpointFailsOnceWhileWaiting(), clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("x")
        with trio.fail_after(10**6):
            done = await engine.wait(iid)
        again = await engine.get_instance(iid)
    assert done.status == "failed" and "disk on fire" in (done.error or "")
    assert again is not None and again.status == "failed"
    assert done.waiting is None, f"a failed instance still waits for {done.waiting}"
    assert again.waiting is None, f"a failed instance still waits for {again.waiting}"
