"""A parent parked on its children (no wake time: only their end notices wake it) is never left
waiting for a child whose end is stored in its signals.

With an adapter whose ``checkpoint`` returns ``None`` for the notice it stored (allowed: "the
engine then reads the parent's signals"), every child's end reaches its parent through
``EngineChildren._ended``: the children that end in the same pass share one read of the
parent's signals (``_fetching``). If that read finds the parent in memory, and the parent
leaves memory while it is read, the notices it read are stored in the parked row, and only a
wake looks at them. That wake looked for the one notice the read was made for: a parent that
had taken that one already (taken up from a row that held it) and waits for the other child,
whose own ``_ended`` left it to this shared read, was never woken, and waited for ever (until
the next engine's resume)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._children import EngineChildren
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


class NoNoticeSeq(MemoryAdapter):
    """Stores the notice, returns no seq for it (as an adapter from before that did); reads of
    ``slow_for``'s signals take ``slow`` seconds once begun."""

    def __init__(self) -> None:
        super().__init__()
        self.slow_for: str | None = None
        self.slow = 0.0

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        await super().checkpoint(*args, **kwargs)
        return None

    async def signals(self, instance_id: str) -> list[tuple[int, str, bytes]]:
        got = await super().signals(instance_id)
        if instance_id == self.slow_for:
            await trio.sleep(self.slow)  # (read as it began: the answer comes late)
        return got


async def _until(what: Any) -> None:
    with trio.fail_after(1000):
        while not what():
            await trio.sleep(0.05)


async def test_a_notice_read_for_another_childs_end_wakes_the_parent_that_left_meanwhile(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = NoNoticeSeq()
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        e: Any = engine
        engine.register(tf.workflow("kid").receive("go", signal="go").build())
        engine.register(tf.workflow("parent").map(
            "m", items=lambda ctx: [0, 1], branch=tf.branch("item").child("c", workflow="kid").build()).build())
        pid = await engine.start("parent")
        await _until(lambda: pid not in e._live and len(e._live) == 0)  # all parked
        parent = await engine.get_instance(pid)
        assert parent is not None and parent.status == "running"
        x, b = parent.children

        # The notices' wakes start late (a scheduling delay, a retry after a storage error):
        # held here, then let go together, as two children's ends in one pass are.
        held: list[tuple[str, str]] = []
        monkeypatch.setattr(EngineChildren, "ended_soon",
                            lambda self, parent_id, notice: held.append((parent_id, notice)))

        await engine.signal(x, "go")
        await _until(lambda: len(held) == 1)
        # The parent is taken up meanwhile from a row that holds x's end (here by resume(),
        # which takes up a parked row with a signal it waits for), takes it, and rests again
        # waiting for b.
        assert await engine.resume() == [pid]
        await _until(lambda: (run := e._live.get(pid)) is not None and run.resting == run.active == 1)
        await engine.signal(b, "go")
        await _until(lambda: len(held) == 2)
        # The shared read of its signals (for x's notice: b's end joins it) is slow: the parent
        # leaves memory while it is read.
        adapter.slow_for, adapter.slow = pid, 5.0
        # x's first, b's while x's waits for the children ending in the same pass to join its
        # read (a pass made a little longer here, so that which goes first is not left to
        # trio's order within a batch).
        real_checkpoint = trio.lowlevel.checkpoint

        async def checkpoint() -> None:
            if sys._getframe(1).f_code is EngineChildren._ended.__code__:
                await trio.sleep(0.01)
            else:
                await real_checkpoint()

        monkeypatch.setattr(trio.lowlevel, "checkpoint", checkpoint)
        e._supervisor.start_soon("notify", e._children._notify, *held[0])
        await trio.sleep(0.005)
        assert pid in e._children._fetching
        e._supervisor.start_soon("notify", e._children._notify, *held[1])
        with trio.fail_after(1000):
            done = await engine.wait(pid)
        assert done.status == "completed"
