"""From a review of the owed cancel (760b6a1, fa13ec7, 4981ae1) in the scenario the last review
did not reach: a child step. ``cancel("p1/c#1")`` of a child whose store (``adapter.create``
with ``parent_id``) is slow says True (after CANCEL_STORE_WAIT, 10 s) while the store is under
way; the store then loses its answer or fails, and the engine closes about then. README: an
instance whose start was still being stored when a ``cancel()`` said yes "is cancelled once that
store is over ... even when the engine closes". Each test plays its scenario with trio's
scheduler seeded 0..7 (as tests/test_review_of_owed_cancels_in_any_order.py does), on an
autojumping MockClock and one MemoryAdapter reused by two engines. The first two failed until
the commit that added this file; the third is a strict xfail naming a limit left."""
from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine

from slow_starts import in_scheduling_order

SEEDS = range(8)
KID = "p1/c#1"
log: list[tuple[str, float]] = []


async def reserve(data: Any) -> str:
    log.append(("reserve", trio.current_time()))
    return "r"


async def release(data: Any) -> None:
    log.append(("release", trio.current_time()))


async def after(ctx: Any) -> str:
    log.append(("after", trio.current_time()))
    return "a"


async def book(data: Any) -> str:
    log.append(("book", trio.current_time()))
    return "b"


async def unbook(data: Any) -> None:
    log.append(("unbook", trio.current_time()))


async def done(ctx: Any) -> str:
    log.append(("done", trio.current_time()))
    return "d"


CHILD = tf.workflow("kid").task("reserve", job=reserve, compensate=release).step("after", after).build()
PARENT = tf.workflow("p").task("book", job=book, compensate=unbook).child("c", workflow="kid").step("done", done).build()


class SlowChildStores(tf.adapters.MemoryAdapter):
    """The creates of child instances follow ``plan``, one ``(seconds, how)`` each: after
    ``seconds``, ``"ok"`` stores it, ``"fail"`` raises having written nothing, ``"lost"``
    stores it and then raises (its answer lost on the way back)."""

    def __init__(self, *plan: tuple[float, str]) -> None:
        super().__init__()
        self.plan = list(plan)

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if "/" not in instance_id or not self.plan:
            return await super().create(instance_id, *args, **kwargs)
        seconds, how = self.plan.pop(0)
        await trio.sleep(seconds)
        if how == "fail":
            raise tf.StorageUnavailableError("connection refused")
        created = await super().create(instance_id, *args, **kwargs)
        if how == "lost":
            raise tf.StorageUnavailableError("connection dropped after the write")
        return created


def _each_seed(plan: tuple[tuple[float, str], ...], close_at: float) -> dict[int, Any]:
    """Start parent ``p1`` (its child step stores ``p1/c#1`` as ``plan`` says), ``cancel`` the
    child at 0.1 s, close the engine at ``close_at`` and run a second engine on the same storage.
    The seeds where the cancel said True but the child did not end cancelled, or a child step
    ran after the cancel said True."""
    wrong = {}
    for seed in SEEDS:
        in_scheduling_order(seed)
        log.clear()
        said: list[Any] = []

        async def main() -> str | None:
            storage = SlowChildStores(*plan)
            async with open_test_engine(adapter=storage) as engine:
                engine.register(PARENT)
                engine.register(CHILD)
                await engine.start("p", "x", instance_id="p1")

                async def cancel() -> None:
                    await trio.sleep(0.1)
                    said.append((await engine.cancel(KID), trio.current_time()))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel)
                    await trio.sleep(close_at)
                    nursery.cancel_scope.cancel()  # the service stops
            async with open_test_engine(adapter=storage) as engine:  # and starts again
                engine.register(PARENT)
                engine.register(CHILD)
                with trio.fail_after(5000):
                    await engine.wait("p1")
                kid = await engine.get_instance(KID)
                return None if kid is None else kid.status

        status = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        if said and said[0][0] is True:
            late = [(name, at) for name, at in log if name in ("reserve", "after") and at >= said[0][1]]
            if status not in ("cancelled", None) or late:
                wrong[seed] = (status, list(log), said)
    return wrong


def test_a_child_cancelled_as_it_was_stored_stays_cancelled_when_the_engine_closes_as_the_answer_is_lost() -> None:
    """A parent's child step stores its child ``p1/c#1``; storage is slow (15 s). At 0.1 s an
    operator's ``cancel("p1/c#1")`` says True (at 10.1 s). At 15 s the child's row is written but
    its answer lost, and at that same moment the service shuts down. The same scenario for a
    top-level start is guarded by test_review_of_owed_cancels_in_any_order (the next engine ends
    it cancelled). Expected: the child ends cancelled and neither ``reserve`` nor ``after`` runs.

    Was: in every scheduling order (8 of 8) the next engine ran the child: ``reserve`` and
    ``after`` ran at 15 s and the child (and its parent) ended ``completed``."""
    assert not _each_seed(((15, "lost"),), close_at=15)


def test_a_child_cancelled_as_it_was_stored_stays_cancelled_when_the_engine_closes_during_the_steps_next_try() -> None:
    """As above, but the engine stays open when the first store's answer is lost (15 s); the
    child step tries the store again (another 15 s, which writes nothing new: the row is there)
    and the service shuts down at 20 s, during that try. README: a cancel said yes while the
    start was stored is made once the store is over, "even when the engine closes"; the code
    says a child step's next try carries the owed cancel. Expected: the next engine ends the
    child cancelled without running a step.

    Was: in every scheduling order (8 of 8) the next engine ran ``reserve`` and ``after``
    (at 30 s) and the child ended ``completed``: the owed cancel, handed to the next try, was
    dropped when that try met the close (no owed cancel ran once the engine was closed)."""
    assert not _each_seed(((15, "lost"), (15, "ok")), close_at=20)


@pytest.mark.xfail(strict=True, reason=(
    "known, left (December 7th): a cancel() that said yes to a child whose store then wrote nothing"
    " is kept nowhere once the engine closes: the next engine's parent stores the child again and runs it"))
def test_a_child_cancelled_as_it_was_stored_stays_cancelled_when_the_engine_closes_before_a_failed_store() -> None:
    """As above, but the first store fails having written nothing (refused, at 15 s) and the
    service shuts down at 12 s, after ``cancel("p1/c#1")`` said True (10.1 s) and before the
    store is over. The parent, resumed by the next engine, stores its child step's child
    again. Expected: the child a cancel() said True to is not run: it ends cancelled (or is
    never made), and its steps do not run.

    Actual: in every scheduling order the next engine makes and runs the child (``reserve`` runs
    after the cancel said True): the yes is kept nowhere once the engine closes."""
    assert not _each_seed(((15, "fail"), (15, "lost")), close_at=12)
