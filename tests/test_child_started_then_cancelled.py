"""A cancel that reaches a branch's child step while the checkpoint storing its start is in
flight (the mixed crash soak, 1 of ~160 runs under load: "o18 lists child o18/fan/pb/kid-b#1,
stored with parent None", in the soak's last process, where no engine stopped).

docs/fanout.md, "Links": ``children`` is "every child its child steps started"; only "a parent
that ended after an engine stopped between storing a child step's start and storing its child
may list a child that was never stored". Branches that start their child steps in one
scheduler pass share one checkpoint (``Run._persist_together``): the first writes it, the
others wait for it (``_Gathering.joined``), and a cancel landing meanwhile stops those before
they store their child (``actors/_child.py`` ``_start``: ``announce`` then ``_store_child``),
while the shared write (or the cancel's own checkpoint) stores their start. The parent then
ends cancelled listing a child that no engine ever stores, and ``cancel_children`` finds
nothing to cancel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

import trioflow as tf
from storages import storage  # noqa: F401  (a fixture: tests taking it run on both adapters)
from trioflow.adapters import Adapter
from trioflow.testing import open_test_engine, virtual_wall_clock


async def _forever(ctx: tf.WorkflowContext) -> None:
    await trio.sleep_forever()


async def test_a_cancel_while_branches_store_their_child_steps_start_leaves_no_listed_child_unstored(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    adapter = storage()
    in_flight = trio.Event()
    checkpoint = adapter.checkpoint

    async def slow_checkpoint(instance_id: str, *args: Any, **kwargs: Any) -> Any:
        # The parent's checkpoint holding both branches' child-step starts takes a second (and,
        # as every adapter's write once handed over, cannot be cancelled).
        if instance_id == "P" and len(args[2]) >= 2 and not in_flight.is_set():
            in_flight.set()
            with trio.CancelScope(shield=True):
                await trio.sleep(1)
        return await checkpoint(instance_id, *args, **kwargs)

    adapter.checkpoint = slow_checkpoint  # type: ignore[method-assign]
    kid = tf.workflow("kid").step("hang", _forever).build()
    a = tf.branch("a").child("ka", workflow="kid").build()
    b = tf.branch("b").child("kb", workflow="kid").build()
    parent = tf.workflow("parent").parallel("fan", branches=[a, b]).build()
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(kid)
        engine.register(parent)
        await engine.start("parent", instance_id="P")
        await in_flight.wait()
        await trio.sleep(0.5)
        assert await engine.cancel("P")
        ended = await engine.wait("P")
        assert ended.status == "cancelled"
        kids = {cid: await engine.get_instance(cid) for cid in ended.children}
        assert sorted(kids) == ["P/fan/a/ka#1", "P/fan/b/kb#1"]
        missing = [cid for cid, inst in kids.items() if inst is None]
        assert not missing, f"the parent lists children that were never stored: {missing}"
        assert {cid: inst.status for cid, inst in kids.items() if inst is not None} == {
            cid: "cancelled" for cid in kids}
