"""From a review of 5bfc778 (Engine._store_cancel_as_made: the cancel stored in a child made as
the engine closes). Each test failed on 5bfc778; the first passes since the commit that added
this file (that write is bounded as any decision stored as the engine closes); the second is a
strict xfail naming a limit left. Storage is slowed only by subclasses of the real adapters;
time is trio's MockClock, so every "time" below is virtual."""
from __future__ import annotations

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine

STORE = 5.0       # storing the child takes this long
STUCK = 10_000.0  # a checkpoint storage does not answer for this long


def _run(fn):
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def _adapter(kind, tmp_path, on_checkpoint):
    """Slow to create a child; ``on_checkpoint`` runs before the child's first checkpoint."""
    base = tf.adapters.MemoryAdapter if kind == "memory" else tf.adapters.SQLiteAdapter

    class Adapter(base):  # type: ignore[misc, valid-type]
        touched = False

        async def create(self, instance_id, *args, parent_id=None, **kwargs):
            if parent_id is not None:
                await trio.sleep(STORE)
                return await super().create(instance_id, *args, parent_id=parent_id, **kwargs)
            return await super().create(instance_id, *args, **kwargs)

        async def checkpoint(self, instance_id, *args, **kwargs):
            if instance_id == "p/pay#1" and not Adapter.touched:
                Adapter.touched = True
                await on_checkpoint()
            return await super().checkpoint(instance_id, *args, **kwargs)

    if kind == "memory":
        one = Adapter()
        return lambda: one
    return lambda: Adapter(str(tmp_path / "cut.db"))


def _definitions(log):
    async def charge(ctx):
        log.append("charge")
        return "charged"

    async def refund(ctx, result):
        log.append("refund")

    async def hold(ctx):
        return "held"

    card = tf.workflow("card").step("charge", charge, refund).build()
    parent = tf.workflow("parent").step("hold", hold).child("pay", workflow="card").build()
    return card, parent


async def _cancel_parent_then_close(engine, nursery):
    """Start the parent, cancel it while its child is being stored (0.1 s), leave at 1 s."""
    await engine.start("parent", "x", instance_id="p")
    await trio.sleep(0.1)
    nursery.start_soon(engine.cancel, "p")
    await trio.sleep(0.9)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_engine_close_is_not_held_by_an_unanswered_cancel_store_of_a_child_made_as_it_closes(kind, tmp_path):
    """A user's order saga starts a child that charges a card; storing the child is slow (5 s);
    the user cancels the order at 0.1 s and the service shuts down at 1 s (the engine's
    block is left). Storage then stops answering (a network partition to the database) just
    as the engine writes the cancel into the child it has just made.

    Expected: the close ends in bounded time, as it does when storage stops answering the
    child's create itself (then the block is left at 10.1 s, virtual: the close does not wait
    for storage that hangs); the next engine goes on with whatever was stored (README, The
    engine: "an engine that closes before a decision could be stored leaves the instance as
    last stored, for the next engine to go on with"). A Temporal/DBOS user expects a worker
    shutdown not to hang on one unresponsive write.

    Was: `_store_cancel_as_made` wrote under `trio.CancelScope(shield=True)` with no
    deadline, so leaving the `async with` block waits for as long as storage does not answer:
    here 10,005 s (virtual); a hung database hangs the service's shutdown for ever."""
    log: list = []
    card, parent = _definitions(log)
    adapter = _adapter(kind, tmp_path, lambda: trio.sleep(STUCK))
    left: list = []

    async def main():
        async with trio.open_nursery() as nursery:
            async with open_test_engine(adapter=adapter()) as engine:
                engine.register(card)
                engine.register(parent)
                await _cancel_parent_then_close(engine, nursery)
            left.append(trio.current_time())
            nursery.cancel_scope.cancel()

    _run(main)
    assert left[0] < 60, f"the engine's close waited {left[0]:.0f} s (virtual) for an unanswered checkpoint"


@pytest.mark.xfail(strict=True, reason=(
    "known, left (December 7th): a start whose store ends after its engine closed is taken up by the next"
    " engine as a resumed instance, never announced (nothing stored says whether a run announced it before a"
    " crash)"))
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_child_run_by_the_next_engine_after_its_cancel_store_failed_publishes_workflow_started(kind, tmp_path):
    """As above, but storage refuses the cancel's checkpoint in the just-made child
    (`StorageUnavailableError`); the next engine, as documented in the commit's warning
    ("the next engine runs it"), runs the child's first step (charging the card) and the
    parent then compensates it as a unit. That part holds.

    Expected (README, Events and hooks): `workflow.started` comes "when the instance starts
    its first step" (and `workflow.step.started` of a step follows it); the child ran its
    `charge` step and completed (`workflow.completed`, then `workflow.compensated`), so a
    subscriber that tracks instances by their `workflow.started` (a dashboard, a metrics
    counter of started vs. ended) sees it start once.

    Actual: neither engine ever publishes `workflow.started` for the child: the first did not
    run it (closed), and the next takes it up as a resumed instance (stored `running`), so
    its events begin with `workflow.step.started` and end with `workflow.completed` /
    `workflow.compensated` for an instance that never "started"."""
    log: list = []
    card, parent = _definitions(log)

    async def refuse():
        raise tf.StorageUnavailableError("database unavailable")

    adapter = _adapter(kind, tmp_path, refuse)
    events: list = []

    def record(engine):
        engine.events.on("workflow.*", lambda e: events.append((e["event"], e["instance_id"])))

    async def main():
        async with trio.open_nursery() as nursery:
            async with open_test_engine(adapter=adapter()) as engine:
                record(engine)
                engine.register(card)
                engine.register(parent)
                await _cancel_parent_then_close(engine, nursery)
        async with open_test_engine(adapter=adapter()) as engine:
            record(engine)
            engine.register(card)
            engine.register(parent)
            with trio.fail_after(1000):
                done = await engine.wait("p")
            return done, await engine.get_instance("p/pay#1")

    done, child = _run(main)
    assert done.status == "cancelled"
    assert "charge" in log and "refund" in log               # (holds: it ran, and was undone as a unit)
    assert child is not None and child.status == "compensated"
    mine = [name for name, iid in events if iid == "p/pay#1"]
    assert "workflow.step.started" in mine
    assert mine.count("workflow.started") == 1, f"the child's events: {mine}"
    assert mine.index("workflow.started") < mine.index("workflow.step.started")
