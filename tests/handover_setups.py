"""The set-up two reviews of engines handing over share (tests/test_review_of_close_handover.py
and _2): a parent whose child's row a second engine, opened with ``resume=False``, stores
again while ``resume()`` runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine


class SlowCreate(MemoryAdapter):
    """``create()`` of the instance ``slow_id`` takes ``delay`` seconds before it stores (or
    finds the row there)."""

    slow_id: str | None = None
    delay = 0.0

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id == self.slow_id and self.delay:
            await trio.sleep(self.delay)
        return await super().create(instance_id, *args, **kwargs)


async def _kid_twenty_seconds(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(20)
    return "kid done"


LONG_KID = tf.workflow("kid").step("k", _kid_twenty_seconds).build()
ONE_CHILD = tf.workflow("parent").child("c", workflow="kid").build()


@asynccontextmanager
async def resumed_while_the_child_is_stored_again(
    adapter: SlowCreate,
) -> AsyncIterator[tuple[tf.Engine, str, list[str]]]:
    """The first engine closes while parent ``p`` waits out of memory and its child's step
    runs (the child stored ``running``). The next engine opens with ``resume=False``; at the
    child's check time (8 s in) the waker takes the parent up, and its child step stores the
    child again (a ``create()`` of 2 s), while ``resume()`` is called. Yields that engine,
    the child's id and what ``resume()`` returned."""
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(LONG_KID)
        engine.register(ONE_CHILD)
        await engine.start("parent", instance_id="p")
        await trio.sleep(3)  # the parent waits out of memory; its child's step runs
        parent = await engine.get_instance("p")
        assert parent is not None and parent.waiting is not None and len(parent.children) == 1
        kid_id = parent.children[0]
    adapter.slow_id, adapter.delay = kid_id, 2.0
    async with open_test_engine(adapter=adapter, resume=False) as engine:
        engine.register(LONG_KID)
        engine.register(ONE_CHILD)
        await trio.sleep(8)  # the parent, taken up at its child's check time, stores the child again
        resumed = await engine.resume()
        yield engine, kid_id, resumed
