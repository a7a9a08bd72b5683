"""The timing soak's one-off failure (seed 38434, at 605db3f):

    gen 6: killed after 1.07 s: 1 problems, e.g.
      w5-sp lists child w5-sp/sp-kid#1, which is not stored

Reproduced here without subprocesses: a ``MemoryAdapter`` whose state is copied at the moment
the child's ``create`` comes (after the parent's checkpoint that stored the child step's start,
before the child's row) is exactly what a SIGKILL there leaves; a new engine takes it up.

1. ``test_..._passes_the_soaks_excuse``: the documented case (docs/fanout.md, "Links": "A parent
   that ended after an engine stopped between storing a child step's start and storing its
   child may list a child that was never stored"). The parent waits out of memory on its
   child's end with a ``check`` 10 s on (CHECK_CHILD_STORED_AFTER), past slotparent's 1.5 s
   timeout, so it is never taken up forward to store the child: it times out (or is
   cancelled), ``cancel_children`` finds no child row (``EngineChildren.cancel`` returns
   ``None``) and, since 2b19ed1 ("A child step cut short ends once its child's cancel settles
   how"), records the child step ``failed`` (Cancelled: cut short). The soak's excuse
   (tests/test_review_of_timing_soak.py, ``check_soak``) still demands that the child step did
   *not* end (``not step_ended``), written when no end was recorded for it (f35acbc, 4bb0b2b,
   before 2b19ed1 had ``if ended is None: return``): it no longer excused the one case it was
   written for. The check now takes an end recorded as cut short (Cancelled) as no end, and
   this test applies it as check_soak does.

2. ``test_..._without_any_engine_stopping``: a smaller, separate library gap (not the soak's
   cause: SQLiteAdapter's and MemoryAdapter's ``create``/``signals`` cannot be cancelled).
   ``actors._child._start`` shields only ``announce`` (storing the start) and says "the child
   is stored once its start is, cancelled or not"; ``_store_child`` -> ``Engine._start`` is
   not shielded. With an adapter whose ``create`` (or, for a resumed parent,
   ``_ended_before``'s ``signals`` read) has a cancellable await, a workflow timeout or cancel
   arriving there leaves the start stored and the child never stored, though no engine
   stopped: outside what docs/fanout.md allows. A strict xfail: shielding the store would make
   a cancel or an engine's close wait for as long as such an adapter's create hangs.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine, virtual_wall_clock

from soak_peeks import killed_between

CHILD = str(Path(__file__).with_name("timing_soak_child.py"))
_spec = importlib.util.spec_from_file_location("timing_soak_child_for_flake", CHILD)
assert _spec is not None and _spec.loader is not None
kit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kit)

KID = "P/sp-kid#1"


class KilledAtChildCreate(tf.adapters.MemoryAdapter):
    """Copies what it holds into ``left`` as the first child's ``create`` comes (what a SIGKILL
    between the parent's checkpoint of its child step's start and the child's row leaves), then
    hangs there."""

    def __init__(self) -> None:
        super().__init__()
        self.left: tf.adapters.MemoryAdapter | None = None

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if "/" in instance_id and self.left is None:
            left = tf.adapters.MemoryAdapter()
            held = {k: v for k, v in self.__dict__.items() if k not in ("_clock", "left")}
            left.__dict__.update(copy.deepcopy(held))
            left._open = False
            left._clock = self._clock
            self.left = left
            await trio.sleep_forever()
        return await super().create(instance_id, *args, **kwargs)


async def _quick(ctx: Any) -> str:
    return "ok"


async def _undo(ctx: Any, result: Any) -> None:
    pass


async def _kid_step(ctx: Any) -> str:
    await trio.sleep(3.0)
    return "kid"


def _definitions() -> list[tf.WorkflowDefinition]:
    """The soak's engine-B pair (tests/timing_soak_child.py), without its logging jobs."""
    slotkid = tf.workflow("slotkid").step("sk-a", _kid_step, _undo).build()
    slotparent = (tf.workflow("slotparent").with_timeout(kit.TIMEOUTS["slotparent"])
                  .step("sp-a", _quick, _undo)
                  .child("sp-kid", workflow="slotkid")
                  .step("sp-after", _quick, _undo)
                  .build())
    return [slotkid, slotparent]


async def _killed_between(clock: Any) -> tf.adapters.MemoryAdapter:
    adapter = KilledAtChildCreate()
    with trio.CancelScope() as scope:
        async with open_test_engine(adapter=adapter, clock=clock, max_running=2) as engine:
            for definition in _definitions():
                engine.register(definition)
            await engine.start("slotparent", instance_id="P")
            while adapter.left is None:
                await trio.sleep(0.001)
            scope.cancel()  # (what it stores from here on is not looked at: ``left`` is the kill)
    assert adapter.left is not None
    return adapter.left


@pytest.mark.parametrize("how", ["timed_out", "cancelled"])
async def test_a_parent_killed_between_its_child_steps_start_and_its_child_passes_the_soaks_excuse(
        autojump_clock: trio.testing.MockClock, how: str) -> None:
    clock = virtual_wall_clock()
    left = await _killed_between(clock)
    async with open_test_engine(adapter=left, clock=clock, max_running=2) as engine:
        # The peek after the kill (nothing registered yet: nothing resumes).
        peeked = await engine.get_instance("P")
        assert peeked is not None
        peeks: list[dict[str, Any]] = [{}, {"P": kit.view(peeked)}]
        for definition in _definitions():
            engine.register(definition)
        if how == "cancelled":
            assert await engine.cancel("P")
        with trio.fail_after(60):
            await engine.wait("P")
        inst = await engine.get_instance("P")
        assert inst is not None
        summary = {"P": kit.view(inst)}
        kid_row = await engine.get_instance(KID)

    # What docs/fanout.md "Links" allows, and the soak's own preconditions for it:
    assert inst.status == how
    assert list(inst.children) == [KID] and kid_row is None
    assert killed_between(peeks, "P", KID)
    # The soak's excuse, as check_soak has it, its log conditions trivially true here:
    iid, kid, row = "P", KID, summary["P"]
    step_ended = any(r["id"] == kid[len(iid) + 1:] and r["status"] != "started"
                     and not (r["status"] == "failed" and r["error_name"] == "Cancelled")
                     for r in row["history"])
    excused = kid not in summary and row["status"] in ("timed_out", "cancelled") and not step_ended \
        and killed_between(peeks, iid, kid)
    ends = [(r["id"], r["status"], r["cause"]) for r in row["history"] if r["id"] == "sp-kid#1"]
    assert excused, (
        f"the soak would report 'P lists child {KID}, which is not stored': the child step's records {ends} "
        f"(cut short by cancel_children since 2b19ed1), and check_soak excuses only a child step that did not end")


class CancellableCreate(tf.adapters.MemoryAdapter):
    """A child's ``create`` that waits (a connection pool, a lock) before it writes."""

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if "/" in instance_id:
            await trio.sleep(0.3)
        return await super().create(instance_id, *args, **kwargs)


async def _nap(ctx: Any) -> str:
    await trio.sleep(ctx.input)
    return "ok"


async def test_a_parent_lists_a_never_stored_child_without_any_engine_stopping(
        autojump_clock: trio.testing.MockClock) -> None:
    """sp-a takes 1.4 s of the parent's 1.5 s; the child's create waits 0.3 s: the timeout
    comes while ``_store_child`` awaits it, after the start was stored. (A strict xfail until
    the child's store was shielded for a bounded time, 10 s: the child was listed, never stored.)"""
    parent = (tf.workflow("parent").with_timeout(1.5).step("a", _nap, _undo)
              .child("kid", workflow="slotkid").step("after", _quick, _undo).build())
    async with open_test_engine(adapter=CancellableCreate(), clock=virtual_wall_clock()) as engine:
        engine.register(_definitions()[0])
        engine.register(parent)
        await engine.start("parent", 1.4, instance_id="P")
        with trio.fail_after(60):
            await engine.wait("P")
        inst = await engine.get_instance("P")
        assert inst is not None and inst.status == "timed_out"
        unstored = [kid for kid in inst.children if await engine.get_instance(kid) is None]
    assert unstored == [], (
        f"no engine stopped, yet P ended listing {unstored}, never stored (its start was: the create was cut)")
