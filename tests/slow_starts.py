"""What the tests of cancels said while a start is stored share (not collected): storage slow to
store a start, a card workflow that notes each charge, and a recorder of what calls said."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

import trioflow as tf

#: Storing a start takes this long: longer than cancel()'s CANCEL_STORE_WAIT (10 s).
STORE = 15.0


class SlowStarts(tf.adapters.MemoryAdapter):
    """Once ``slow`` is set, storing a start takes 15 s; with ``lose``, the driver then raises
    after the write (the connection dropped on the reply)."""

    slow = False
    lose = False

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if self.slow:
            await trio.sleep(STORE)
        created = await super().create(instance_id, *args, **kwargs)
        if self.lose:
            raise tf.StorageUnavailableError("connection lost before the answer")
        return created


def card(log: list[str]) -> tf.WorkflowDefinition:
    """Workflow "card": one step that charges, noting "charge" in ``log``."""
    async def charge(ctx: Any) -> str:
        log.append("charge")
        return "charged"

    return tf.workflow("card").step("charge", charge).build()


def noting(said: list[Any]) -> Callable[..., Awaitable[None]]:
    """``call(fn, *args, **kwargs)``: awaits ``fn``, noting in ``said`` what it returned, or the
    name of the trioflow error it raised."""
    async def call(fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> None:
        try:
            said.append(await fn(*args, **kwargs))
        except tf.TrioflowError as exc:
            said.append(type(exc).__name__)

    return call


#: When ``pay`` ran (trio's clock): each entry a card charged.
paid: list[float] = []


async def pay(ctx: Any) -> str:
    """Workflow "card"'s one step in the tests that play many scheduling orders."""
    paid.append(trio.current_time())  # (the side effect: a card charged)
    return "paid"


CARD = tf.workflow("card").step("pay", pay).build()


def in_scheduling_order(seed: int) -> None:
    """Make the order in which trio runs tasks ready at the same moment repeatable (its
    scheduler's own random source, seeded), or skip the test where this trio keeps it elsewhere:
    races the tests of owed cancels find depend on that order."""
    import trio._core._run as trio_run

    if not hasattr(trio_run, "_r"):
        pytest.skip("trio's scheduler keeps its random order elsewhere in this release")
    trio_run._r.seed(seed)


class LostThenSlow(tf.adapters.MemoryAdapter):
    """Instance ``"c"``: its first create takes 15 s, writes the row and loses the answer; each
    read of it takes ``read`` s, each checkpoint of it ``write`` s (both under the engine's
    10 s DECISION_TIMEOUT). ``fast()`` makes storage quick again (the next service's)."""

    def __init__(self, read: float, write: float = 0.0) -> None:
        super().__init__()
        self.read, self.write, self.lost = read, write, False

    def fast(self) -> None:
        self.read = self.write = 0.0

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id != "c" or self.lost:
            return await super().create(instance_id, *args, **kwargs)
        self.lost = True
        await trio.sleep(15)
        await super().create(instance_id, *args, **kwargs)
        raise tf.StorageUnavailableError("connection dropped after the write")

    async def load(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id == "c":
            await trio.sleep(self.read)
        return await super().load(instance_id, *args, **kwargs)

    async def checkpoint(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id == "c":
            await trio.sleep(self.write)
        return await super().checkpoint(instance_id, *args, **kwargs)
