"""Adversarial review of 469511c and 4e41d96 (lost-answer retries: ``Engine._look_for_lost_start``
looks, beside the actors, for the row of a ``start(instance_id=...)`` whose create raised, once
storage answers, and drops the notes (``Engine._unanswered``) of tries that stored nothing; the
store after the hook of a row stored ``pending`` no longer resets ``Run.announced``; a retry
that takes up a ``pending`` row of its own keeps the note; ``_release_start(step_over=True)``
keeps the note of a child that runs here). On trio's MockClock (``autojump_clock``), on the
MemoryAdapter and on ``SQLiteAdapter`` over a real file.

README promises relied on. Storage failures: ``start()`` raises at once ("retry it with the
same ``instance_id``"); "the engine keeps a note of such a try until storage answers again and
it has looked for the row, or, if the try stored it, until the row is taken up". Hooks: "an
engine that closes lets them [end hooks] (and async event callbacks ...) finish first, for up
to 30 s". The long-lived contract (tests/test_review_of_long_lived_2.py): nothing per finished
or failed start is kept by a long-lived engine.

Every test here failed at 4e41d96. The look ran beside the actors, so a close waited for it
(fixed by f815883: it runs with the actors now), and it stopped as soon as the id ran here,
where that run may be of a row stored before the failed tries (fixed by the commit that added
this file: it looks again once that run is over). The review also probed and found sound: a
child's lost create with its parent cancelled, lost starts cancelled or resumed, the look racing
a retry, storage down for an hour under 50 failed starts, and 4e41d96's pending-row paths.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine


def _refusing(base: type) -> type:
    class Refusing(base):  # type: ignore[misc, valid-type]
        """``create`` of an id in ``refuse`` raises having written nothing (a connection
        refused, a pool exhausted); while ``reads_down``, every ``load`` raises too."""

        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self.refuse: set[str] = set()
            self.reads_down = False

        async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
            if instance_id in self.refuse:
                raise tf.StorageUnavailableError("connection refused")
            return await super().create(instance_id, *args, **kwargs)

        async def load(self, instance_id: str) -> Any:
            if self.reads_down:
                raise tf.StorageUnavailableError("storage down for reads")
            return await super().load(instance_id)

    return Refusing


_RefusingMemory = _refusing(MemoryAdapter)
_RefusingSQLite = _refusing(SQLiteAdapter)


@pytest.fixture(params=["memory", "sqlite"])
def make_adapter(request: Any, tmp_path: Any) -> Any:
    """A maker of the adapter: the same one each call (memory), or a new one on the same file."""
    if request.param == "memory":
        one = _RefusingMemory()
        return lambda: one
    return lambda: _RefusingSQLite(tmp_path / "review.db")


async def _ship(ctx: tf.WorkflowContext) -> Any:
    await trio.sleep(30)
    return "shipped"


async def _slow(ctx: tf.WorkflowContext) -> Any:
    await trio.sleep(100)
    return "done"


async def test_a_failed_duplicate_start_of_an_instance_woken_meanwhile_leaves_its_note_for_ever(
    autojump_clock: trio.testing.MockClock, make_adapter: Any,
) -> None:
    """Relied on: a long-lived engine keeps nothing per failed start (README, Storage
    failures: the note of a try is kept "until storage answers again and it has looked for
    the row"; 469511c's own promise: "a never-retried failed start leaves no memory behind").

    Reproduction: an order service. ``order`` waits for a ``paid`` signal (out of memory after
    a second), then ships (30 s). Each order is started with ``instance_id=order-k``; a client's
    duplicate request comes while the order waits, and its ``start()`` raises
    ``StorageUnavailableError`` (the create refused, nothing written: the row is the order's,
    stored long before); the client gives up. The payment arrives right after:
    ``signal(order-k, "paid")`` takes the order up, it ships and completes; retention purges it.
    20 orders, then 10 quiet minutes.

    Expected: storage answers at once; the row found is not one of the failed try's (it was
    stored long before), so the note goes: ``len(engine._unanswered) == 0``.

    What happens: 20 notes, one per failed request, with no row stored at all. The look
    (``_look_for_lost_start``, runtime/_engine.py:605) returns without reading as soon as the
    id is live here ("a run of it here notes what it needs"), but the run's end only drops or
    marks a note under its own row's creation time (runtime/_engine.py:1980, ``state.created_at
    in tries``), never the failed try's: nothing drops it. (Later failed tries of the id add
    entries to it and start no look: ``len(tries) == 1``, runtime/_engine.py:480.)"""
    adapter = make_adapter()
    async with open_test_engine(adapter=adapter, retain_finished=0) as engine:
        engine.register(tf.workflow("order").receive("paid", signal="paid").step("ship", _ship).build())
        for k in range(20):
            oid = f"order-{k}"
            await engine.start("order", instance_id=oid)
            await trio.sleep(5)  # waits for its payment, out of memory
            assert oid not in engine._live
            adapter.refuse.add(oid)
            with pytest.raises(tf.StorageUnavailableError):
                await engine.start("order", instance_id=oid)  # a duplicate request: 503, not retried
            adapter.refuse.discard(oid)
            await engine.signal(oid, "paid", {"amount": 1})
            assert (await engine.wait(oid)).status == "completed"
        await trio.sleep(600)
        assert await engine.get_instance("order-0") is None  # purged: nothing stored for any
        assert len(engine._unanswered) == 0, engine._unanswered


async def test_a_failed_start_of_a_stored_instance_resumed_meanwhile_leaves_its_note_for_ever(
    autojump_clock: trio.testing.MockClock, make_adapter: Any,
) -> None:
    """Relied on: as above (a note is kept until storage answers and the row was looked for).

    Reproduction: an engine stores ``x`` (one step of 100 s) and closes with it unfinished. The
    next engine opens with ``resume=False``; a ``start("w", instance_id="x")`` raises (its
    create refused, nothing written), never retried; ``engine.resume()`` takes ``x`` up at
    once, and it completes.

    Expected: ``engine._unanswered`` empty once ``x`` has ended (storage answered throughout).

    What happens: ``{"x": {<the failed try's creation time>: False}}`` for the life of the
    engine: the look returned because ``x`` was live (runtime/_engine.py:605), and ``x``'s run
    drops only a note under its own creation time (runtime/_engine.py:1980)."""
    async with open_test_engine(adapter=make_adapter()) as engine:
        engine.register(tf.workflow("w").step("s", _slow).build())
        await engine.start("w", instance_id="x")
        await trio.sleep(1)
    adapter = make_adapter()
    async with open_test_engine(adapter=adapter, resume=False) as engine:
        engine.register(tf.workflow("w").step("s", _slow).build())
        adapter.refuse.add("x")
        with pytest.raises(tf.StorageUnavailableError):
            await engine.start("w", instance_id="x")
        adapter.refuse.discard("x")
        assert await engine.resume() == ["x"]
        assert (await engine.wait("x")).status == "completed"
        await trio.sleep(600)
        assert engine._unanswered == {}


async def test_an_engine_closing_while_storage_is_down_waits_30_s_for_the_look_for_a_lost_start(
    autojump_clock: trio.testing.MockClock, make_adapter: Any, caplog: Any,
) -> None:
    """Relied on: leaving the engine's ``async with`` block closes it; what a closing engine
    waits for is end hooks and async event callbacks, "for up to 30 s" (README, Hooks), and it
    warns only when those are cut short.

    Reproduction: storage goes down, for creates and reads. ``start("w", instance_id="x")``
    raises ``StorageUnavailableError``. No hook, no event callback, no instance in flight. An
    hour later (storage still down) the service shuts down: the block is left.

    Expected: the engine closes at once (well under a second; the next engine looks for ``x``'s row, or a retry
    does), with no warning. Without the failed start (or with an id made by the engine, which
    starts no look) it does.

    What happens: the close takes 30 s (virtual), then logs "the engine closed with end hooks
    or async event callbacks still running after 30 s; they were cancelled". The look
    ``_look_for_lost_start`` runs in the ``beside`` nursery (runtime/_engine.py:482, the end
    hooks' nursery, which a closing engine lets finish for ``HOOK_TIMEOUT``:
    runtime/_engine.py:2391) and loops ``while True`` (runtime/_engine.py:601-616) on
    ``StorageError`` without ever checking ``self._closed``."""
    adapter = make_adapter()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("w").step("s", _slow).build())
        adapter.refuse.add("x")
        adapter.reads_down = True
        with pytest.raises(tf.StorageUnavailableError):
            await engine.start("w", instance_id="x")
        await trio.sleep(3600)
        caplog.clear()
        left = trio.current_time()
    took = trio.current_time() - left
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert took < 1 and warned == [], (took, warned)
