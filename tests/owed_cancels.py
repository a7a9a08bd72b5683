"""What the reviews of cancels said yes to while their instance was being stored share: steps
that take a while, storage whose create of ``"x"`` is slow, and a start of it beside the test."""

from __future__ import annotations

from typing import Any

import trio

import trioflow as tf
from trioflow.adapters import MemoryAdapter


async def one_second(ctx: Any) -> str:
    await trio.sleep(1)
    return "done"


async def thousand_seconds(ctx: Any) -> str:
    await trio.sleep(1000)
    return "done"


class SlowCreateOfX(MemoryAdapter):
    """``create()`` of instance ``"x"`` takes 20 s (storage slow to answer)."""

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id == "x":
            await trio.sleep(20)
        return await super().create(instance_id, *args, **kwargs)


class SlowCreateOfXAndSlowSignalsOfParked(MemoryAdapter):
    """The first ``create()`` of ``"x"`` takes 11 s; once ``slow_signals``, reading the
    signals of ``"parked"`` takes 200 s (a resume in the background looking at it)."""

    slow_signals = False
    x_created = False

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id == "x" and not self.x_created:
            self.x_created = True
            await trio.sleep(11)
        return await super().create(instance_id, *args, **kwargs)

    async def signals(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id == "parked" and self.slow_signals:
            await trio.sleep(200)
        return await super().signals(instance_id, *args, **kwargs)


def start_beside(nursery: trio.Nursery, engine: tf.Engine, workflow: str = "w",
                 instance_id: str = "x") -> tuple[trio.Event, list[Any]]:
    """``engine.start(workflow, instance_id=...)`` in a task of ``nursery``: an event set once
    it is over, and a list holding what it returned or the trioflow error it raised."""
    done: trio.Event = trio.Event()
    outcome: list[Any] = []

    async def start() -> None:
        try:
            outcome.append(await engine.start(workflow, instance_id=instance_id))
        except tf.TrioflowError as exc:
            outcome.append(exc)
        finally:
            done.set()

    nursery.start_soon(start)
    return done, outcome


#: A workflow whose instance waits out of memory (a day-long receive) for a signal named "go".
PARKER = tf.workflow("parker").receive("go", signal="go", timeout=100_000).build()


async def leave_parked(adapter: Any) -> None:
    """A first engine on ``adapter`` leaves instance ``"parked"`` of :data:`PARKER` waiting,
    with a signal it does not take stored for it (a resume reads its signals)."""
    from trioflow.testing import open_test_engine

    async with open_test_engine(adapter=adapter) as engine:
        engine.register(PARKER)
        await engine.start("parker", instance_id="parked")
        await trio.sleep(5)
        await engine.signal("parked", "other")  # kept for a later receive: it stays parked
        await trio.sleep(5)


async def end_in_a_new_engine(adapter: Any) -> str:
    """How ``"x"`` (workflow ``"w"``: one second-long step) ends in a new engine on ``adapter``."""
    from trioflow.testing import open_test_engine

    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("w").step("s", one_second).build())
        with trio.fail_after(600):
            return (await engine.wait("x")).status


async def cancel_as_x_is_stored_and_a_resume_begins(engine: tf.Engine, parker: Any) -> list[bool]:
    """In ``engine``: ``start("w", instance_id="x")`` beside (its caller gives up when the
    store fails), ``cancel("x")`` 0.5 s later (storage slow: it says yes after 10 s), then
    ``parker`` registered (a resume in the background). What ``cancel()`` said."""
    said: list[bool] = []
    engine.register(tf.workflow("w").step("s", one_second).build())

    async def start() -> None:
        try:
            await engine.start("w", instance_id="x")
        except tf.StorageUnavailableError:
            pass  # its caller gives up

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start)
        await trio.sleep(0.5)
        said.append(await engine.cancel("x"))  # True at 10.5 s: storage is slow
        engine.register(parker)  # a resume in the background
    return said
