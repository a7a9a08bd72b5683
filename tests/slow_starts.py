"""What the tests of cancels said while a start is stored share (not collected): storage slow to
store a start, a card workflow that notes each charge, and a recorder of what calls said."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

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
