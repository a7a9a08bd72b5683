"""A listing page that refills after an unreadable row, when the row it went on from is purged
meanwhile, goes on from the row read before it (a fifth review of this session's fixes; it
failed before): newest first, it restarted from the newest end and listed an instance twice."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine

from storages import finish, storage  # noqa: F401


async def ok(data: Any) -> Any:
    return data


async def boom(data: Any) -> None:
    raise RuntimeError("boom")


class _HookOnSecondRead:
    """Runs ``between`` (once) before the second ``list_instances`` call of a listing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.between: Any = None
        self.reads = 0

    async def list_instances(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        if self.reads == 2 and self.between is not None:
            between, self.between = self.between, None
            await between()
        return await super().list_instances(*args, **kwargs)  # type: ignore[misc]


class _MemoryHook(_HookOnSecondRead, MemoryAdapter):
    pass


class _SQLiteHook(_HookOnSecondRead, SQLiteAdapter):
    pass


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_newest_first_page_restarted_after_a_purged_refill_cursor_stays_in_order_and_is_not_relisted(
    autojump_clock: trio.testing.MockClock, tmp_path: Any, kind: str,
) -> None:
    """Completed a, b, c, d, then an unreadable completed row u. Newest first, limit=3: the first
    read [u, d, c] keeps d, c; the refill goes on from c. Meanwhile c is deleted and a new
    instance n completes. The refill raises UnknownInstanceError and get_instances restarts
    from the caller's cursor (None = the newest end), where it finds n and appends it:
    page 1 is [d, c, n] (not newest first), and page 2, after=n, lists d again."""
    adapter: Any = _MemoryHook() if kind == "memory" else _SQLiteHook(tmp_path / "flows.db")
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("ok").task("a", job=ok).build())
        for iid in "abcd":
            await finish(engine, await engine.start("ok", instance_id=iid))
        await engine.adapter.create("u", "ok", "completed", start=b"\x00", header=b"\x00")

        async def between() -> None:
            await finish(engine, await engine.start("ok", instance_id="n"))
            assert await engine.adapter.delete("c")

        adapter.reads = 0
        adapter.between = between
        page1 = await engine.get_instances(status="completed", limit=3, order="newest")
        page2 = await engine.get_instances(status="completed", limit=3, order="newest", after=page1[-1])
        created = {i.id: i.created_at for i in page1}
        listed = [i.id for i in page1 + page2]
        # newest first within the page
        assert [i.id for i in page1] == sorted(created, key=lambda k: created[k], reverse=True), listed
        # "instances created meanwhile are never listed twice nor make others ... newest first not at all"
        assert len(listed) == len(set(listed)), listed
