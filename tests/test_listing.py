"""Listing (issue 16 item 2): ``engine.get_instances`` lists every workflow or one, by status,
oldest or newest first, in pages that stay stable while instances are created; SQLite serves
each listing from an index."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._codec import encode_header, encode_start
from trioflow._decide import new_state
from trioflow.adapters import Adapter, SQLiteAdapter, _sqlite
from trioflow.testing import open_test_engine

from storages import storage  # noqa: F401  (a fixture: every test here runs on both adapters)


async def ok(data: Any) -> Any:
    return data


async def held(data: Any) -> None:
    await trio.sleep_forever()  # until the engine stops: the instance stays running


@asynccontextmanager
async def nine_instances(adapter: Adapter) -> AsyncIterator[tuple[tf.Engine, list[str]]]:
    """An engine and the ids of nine instances, created in this order: i0, i3 and i6 of
    workflow "slow" keep running, the others (of "quick") have completed."""
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("quick").task("a", job=ok).build())
        engine.register(tf.workflow("slow").task("a", job=held).build())
        ids = []
        for n in range(9):
            name = "slow" if n % 3 == 0 else "quick"
            ids.append(await engine.start(name, {"n": n}, instance_id=f"i{n}"))
            if name == "quick":
                await engine.wait(ids[-1])
        yield engine, ids


def names(instances: list[tf.WorkflowInstance]) -> list[str]:
    return [i.id for i in instances]


async def test_every_workflow_by_status_oldest_or_newest_first(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    async with nine_instances(storage()) as (engine, ids):
        assert names(await engine.get_instances()) == ids, "every workflow, oldest first by default"
        assert names(await engine.get_instances(order="newest")) == ids[::-1]
        assert names(await engine.get_instances(status="running")) == ["i0", "i3", "i6"]
        assert names(await engine.get_instances(None, "completed", order="newest")) == [
            "i8", "i7", "i5", "i4", "i2", "i1"]
        # Today's positional call, and its order.
        assert names(await engine.get_instances("slow", "running")) == ["i0", "i3", "i6"]
        assert names(await engine.get_instances("quick")) == ["i1", "i2", "i4", "i5", "i7", "i8"]


@pytest.mark.parametrize("order", ["oldest", "newest"])
async def test_pages_list_each_instance_once_while_instances_are_created(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], order: Any,
) -> None:
    async with nine_instances(storage()) as (engine, ids):
        seen: list[str] = []
        created: list[str] = []
        after = None
        while True:
            page = await engine.get_instances(limit=2, after=after, order=order)
            seen += names(page)
            if len(page) < 2:
                break
            after = page[-1].id
            # Created between pages: listed on a later page oldest first, never newest first.
            created.append(await engine.start("quick", instance_id=f"new-{len(created)}"))
        assert created
        assert seen == (ids + created if order == "oldest" else ids[::-1]), seen


async def test_pages_of_one_workflow_and_status(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    async with nine_instances(storage()) as (engine, _):
        first = await engine.get_instances("quick", "completed", limit=4, order="newest")
        assert names(first) == ["i8", "i7", "i5", "i4"]
        rest = await engine.get_instances("quick", "completed", limit=4, order="newest", after=first[-1].id)
        assert names(rest) == ["i2", "i1"]
        # ``after`` is a place: it may name an instance of another workflow or status.
        assert names(await engine.get_instances("slow", after="i4")) == ["i6"]


async def test_a_page_stays_full_when_unreadable_rows_are_left_out(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """A row whose snapshot cannot be read is reported failed, so a ``status="running"`` page
    leaves it out; the page is filled from the rows after it instead of coming back short."""
    adapter = storage()
    async with nine_instances(adapter) as (engine, _):
        await adapter.create("garbage", "slow", "running", start=b"\x00", header=b"\x00")
        await engine.start("slow", instance_id="i9")
        page = await engine.get_instances(status="running", limit=4)
        assert names(page) == ["i0", "i3", "i6", "i9"]
        assert names(await engine.get_instances(status="running", limit=2, after="i6")) == ["i9"]


async def test_after_an_instance_that_is_gone_is_a_clear_error(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    async with nine_instances(storage()) as (engine, _):
        await engine.purge(older_than=0)
        with pytest.raises(tf.UnknownInstanceError, match="no stored instance 'i1' to list after"):
            await engine.get_instances(after="i1")


async def test_a_page_given_its_last_instance_tells_an_id_started_again_from_it(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """The cursor's instance purged and its id started again (an idempotent retry): given as an
    id, the next page starts from the new instance's place, skipping the running i3 and i6;
    given as the instance the previous page ended with, it is refused as a cursor that is gone."""
    async with nine_instances(storage()) as (engine, _):
        first = await engine.get_instances(limit=2)
        assert names(first) == ["i0", "i1"]
        await engine.purge(older_than=0)  # the completed ones: i1 among them
        await engine.wait(await engine.start("quick", {"n": 1}, instance_id="i1"))
        assert names(await engine.get_instances(after="i1")) == []  # the gap an id alone leaves
        with pytest.raises(tf.UnknownInstanceError, match="'i1', the cursor, was deleted or purged since"):
            await engine.get_instances(after=first[-1])
        page = await engine.get_instances(limit=1)
        assert names(page) == ["i0"]
        assert names(await engine.get_instances(after=page[-1])) == ["i3", "i6", "i1"]  # running: live views


@pytest.mark.parametrize(("options", "message"), [
    ({"status": "done"}, "status must be one of"),
    ({"status": 3}, "status must be one of"),
    ({"workflow_name": 3}, "workflow_name must be a workflow name or None"),
    ({"limit": 0}, "limit must be an int >= 1"),
    ({"limit": -5}, "limit must be an int >= 1"),
    ({"limit": True}, "limit must be an int >= 1"),
    ({"limit": 2.0}, "limit must be an int >= 1"),
    ({"after": ""}, "after must be the last instance of the previous page, or its id"),
    ({"after": 7}, "after must be the last instance of the previous page, or its id"),
    ({"order": "sideways"}, "order must be 'oldest' or 'newest'"),
])
async def test_bad_listing_arguments_are_refused(
    autojump_clock: trio.testing.MockClock, options: dict[str, Any], message: str,
) -> None:
    async with open_test_engine() as engine:
        with pytest.raises(tf.InvalidArgumentError, match=message):
            await engine.get_instances(**options)


async def test_sqlite_listings_are_served_by_an_index(tmp_path: Path) -> None:
    """Every shape of listing reads through an index (or the table's own rowid order), never by
    scanning or sorting rows: checked on the statements the adapter runs, with ANALYZE stats of
    a table large enough for the planner to care."""
    path = tmp_path / "f.db"
    adapter = SQLiteAdapter(path)
    await adapter.open()
    await adapter.close()
    state = new_state(tf.workflow("w").task("a", job=ok).build(), "x", None, 0.0)
    statements: list[str] = []
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO trioflow_instances (instance_id, workflow_name, status, start, header) VALUES (?, ?, ?, ?, ?)",
            [(f"i{n:05d}", f"w{n % 7}", ("running", "completed", "failed")[n % 3], encode_start(state),
              encode_header(state)) for n in range(20_000)])
        conn.execute("ANALYZE")
        conn.set_trace_callback(statements.append)  # statements with their parameters filled in
        for workflow_name in (None, "w3"):
            for status in (None, "failed"):
                for newest_first in (False, True):
                    page = _sqlite._list(conn, workflow_name, status, "i10000", 5, newest_first)
                    assert page is not None and len(page) == 5
        conn.set_trace_callback(None)
        listings = [s for s in statements if "i.rowid IN (SELECT rowid" in s and "JOIN" not in s]
        assert len(listings) == 8
        for sql in listings:
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            assert not any(step.startswith("SCAN") or "TEMP B-TREE" in step for step in plan), (sql, plan)
