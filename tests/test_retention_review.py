"""Retention, purge and listings as an operator uses them, from a review (each failed before its
fix): a refused second engine leaves the first one's clock alone; a resumed parent does not start
again a child that ended and was purged; unpaged failed listings hold unreadable rows in creation
order; a first page is never refused for a cursor the caller did not give; bad limits, statuses
and durations are InvalidArgumentErrors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import Adapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock

from storages import storage  # noqa: F401  (fixture: memory and sqlite)


async def ok(data: Any) -> Any:
    return data


async def boom(data: Any) -> None:
    raise RuntimeError("boom")


def register(engine: tf.Engine) -> None:
    engine.register(tf.workflow("ok").task("a", job=ok).build())
    engine.register(tf.workflow("bad").task("a", job=boom).build())


def names(instances: list[tf.WorkflowInstance]) -> list[str]:
    return [i.id for i in instances]


# -- 1. a refused second open_engine on the same adapter changes the running engine's clock -------


async def test_a_refused_second_engine_does_not_change_the_first_engines_finish_times(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """An engine runs with retention of an hour. Somebody opens a second engine on the same
    adapter object with another clock (a day behind); it is refused (AdapterInUseError /
    DatabaseLockedError), as documented. But ``open_engine`` called ``adapter.use_clock`` before
    ``adapter.open()`` refused it, so the running engine's adapter now stamps finish times on
    the refused engine's clock: an instance that has just finished is already "a day old" and
    a purge of what finished an hour ago deletes it."""
    adapter = storage()
    base = virtual_wall_clock()
    async with open_test_engine(adapter=adapter, clock=base) as engine:
        register(engine)
        with pytest.raises(tf.AdapterInUseError):
            async with open_test_engine(adapter=adapter, clock=lambda: base() - 86_400):
                pass
        done = await engine.wait(await engine.start("ok", instance_id="just-finished"))
        assert done.status == "completed"
        purged = await engine.purge(older_than=timedelta(hours=1))
        assert purged == 0, "an instance that finished a moment ago is not an hour old"
        assert await engine.get_instance("just-finished") is not None


# -- 2. unreadable finished rows: in no status listing -------------------------------------------


async def test_an_unreadable_finished_row_is_in_the_failed_listing(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """A row this release cannot read, stored ``completed`` (a newer release finished it, then
    the deploy was rolled back), is reported failed by ``get_instance`` and by the unfiltered
    ``get_instances()``. ``get_instances``' docstring: "an unpaged status="failed" listing
    includes those stored with another status too". It is not there: the status listing drops
    it (its view is failed, not completed) and the failed listing adds only the rows this engine
    tried to resume (``Engine._unreadable``), never a finished one. It is in no status listing."""
    async with open_test_engine(adapter=storage()) as engine:
        register(engine)
        await engine.wait(await engine.start("bad", instance_id="f1"))
        await engine.adapter.create("newer", "ok", "completed", start=b"\x00", header=b"\x00")
    async with open_test_engine(adapter=storage()) as engine:
        register(engine)
        assert (await engine.get_instance("newer")).status == "failed"
        assert ("newer", "failed") in [(i.id, i.status) for i in await engine.get_instances()]
        assert "newer" in names(await engine.get_instances(status="failed"))


async def test_the_failed_listing_keeps_creation_order_with_unreadable_rows(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """An unreadable running row (left by a newer release; reported failed once the engine
    tried to resume it) created between two failed instances: ``get_instances(status="failed")``
    lists it last, after the newer failed instance, in both orders; the listing is promised in
    creation order (oldest or newest first). The rows are appended after the paged walk
    (runtime/_engine.py:658-660; the walk itself drops them at :652) instead of being placed where the walk read them."""
    async with open_test_engine(adapter=storage()) as engine:
        register(engine)
        await engine.wait(await engine.start("bad", instance_id="f1"))
        await engine.adapter.create("newer", "bad", "running", start=b"\x00", header=b"\x00")
        await engine.wait(await engine.start("bad", instance_id="f2"))
    async with open_test_engine(adapter=storage()) as engine:
        register(engine)
        await trio.sleep(1)  # the resume at open has found the unreadable row
        assert names(await engine.get_instances()) == ["f1", "newer", "f2"]
        assert names(await engine.get_instances(status="failed")) == ["f1", "newer", "f2"]
        assert names(await engine.get_instances(status="failed", order="newest")) == ["f2", "newer", "f1"]


# -- 3. the engine's own refill cursor, purged meanwhile ------------------------------------------


class PurgesBetweenReads(SQLiteAdapter):
    """SQLite, with the retention task's purge landing between two reads of one listing (it
    can: each read goes through the writer thread and the engine yields meanwhile)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.between: Callable[[], Any] | None = None
        self.reads = 0

    async def list_instances(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        if self.reads == 2 and self.between is not None:
            await self.between()
        return await super().list_instances(*args, **kwargs)


async def test_a_first_page_is_not_refused_for_a_cursor_the_caller_never_gave(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    """``get_instances(status="completed", limit=2)``, no ``after``: an unreadable completed
    row is left out of the first read, so the engine reads again from the last row it read
    (runtime/_engine.py:656, ``cursor = records[-1].instance_id``). A purge that lands between
    the two reads and deletes that row makes the first page fail with UnknownInstanceError
    "no stored instance 'c1' to list after (deleted or purged since?)" though the caller gave no
    cursor at all."""
    adapter = PurgesBetweenReads(tmp_path / "flows.db")
    async with open_test_engine(adapter=adapter) as engine:
        register(engine)
        await engine.adapter.create("newer", "ok", "completed", start=b"\x00", header=b"\x00")
        await engine.wait(await engine.start("ok", instance_id="c1"))
        await trio.sleep(100)
        await engine.wait(await engine.start("ok", instance_id="c2"))
        adapter.between = lambda: engine.purge(older_than=50)  # c1 (and "newer") are due
        page = await engine.get_instances(status="completed", limit=2)
        assert "c2" in names(page)


# -- 4. argument checks ---------------------------------------------------------------------------


async def test_a_limit_too_large_for_sqlite_is_refused_or_served(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """``limit`` is checked as "an int >= 1"; a large one (an operator's "everything",
    ``limit=2**64``) is served by the MemoryAdapter but fails on SQLite with
    ``DatabaseError: SQLite list failed: Python int too large to convert to SQLite INTEGER``
    (adapters/_sqlite.py:1124 binds it as is)."""
    async with open_test_engine(adapter=storage()) as engine:
        register(engine)
        await engine.wait(await engine.start("ok", instance_id="a"))
        try:
            listed = names(await engine.get_instances(limit=2**64))
        except tf.InvalidArgumentError:
            return  # refused as a bad argument: fine too
        assert listed == ["a"]


@pytest.mark.parametrize("call", [
    pytest.param(lambda e: e.get_instances(status=["running"]), id="listing-status-list"),
    pytest.param(lambda e: e.purge(older_than=0, status=["failed"]), id="purge-status-list"),
    pytest.param(lambda e: e.purge(older_than=10**400), id="purge-older-than-huge-int"),
])
async def test_bad_arguments_are_invalid_argument_errors(autojump_clock: trio.testing.MockClock, call: Any) -> None:
    """Bad arguments are promised an InvalidArgumentError naming them (as ``status=3`` gets);
    a list for ``status`` raises ``TypeError: unhashable type: 'list'`` (``status not in
    STATUSES``/``TERMINAL``, runtime/_engine.py:1443 and :689), and an ``older_than`` too large
    for a float ``OverflowError`` (``float(number)`` in ``_duration``, runtime/_engine.py:1404)."""
    async with open_test_engine() as engine:
        with pytest.raises(tf.InvalidArgumentError):
            await call(engine)


# -- 5. a purged child of an unfinished parent runs again ----------------------------------------


class _DiesBeforeParentRecordsItsChild:
    """The process dies (the engine stops) after the parent "P" stored its child and before the
    parent's checkpoint that records the child step's start: that write never happens."""

    armed = True
    child_created = False

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id.startswith("P/"):
            self.child_created = True
        return await super().create(instance_id, *args, **kwargs)  # type: ignore[misc]

    async def checkpoint(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if self.armed and instance_id == "P" and self.child_created:
            await trio.sleep_forever()
        return await super().checkpoint(instance_id, *args, **kwargs)  # type: ignore[misc]


class _MemoryDies(_DiesBeforeParentRecordsItsChild, tf.adapters.MemoryAdapter):
    pass


class _SQLiteDies(_DiesBeforeParentRecordsItsChild, SQLiteAdapter):
    pass


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_purging_a_completed_child_of_an_unfinished_parent_does_not_run_the_child_again(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str,
) -> None:
    """A parent starts a child; the process dies before the parent's checkpoint records the
    child step (at-least-once: the step runs again on resume, and "the child's id comes from
    the parent's id ... so a resume never starts it twice", SPEC section 14). The child completes
    (its end notice is stored with the parent) and, before the parent is taken up (it is held
    until its jobs are registered, or waits for a slot), a purge deletes the completed child.
    The resumed parent's child step then creates a fresh child under the same id and the
    child's job runs a second time (runtime/_engine.py:_start creates it; ``_check_end_noticed``
    only looks at the parent's pending notice when the child row still exists). docs/fanout.md
    says purging such a child only costs its compensation (a ChildCompensationError)."""
    runs: list[Any] = []

    async def work(data: Any) -> Any:
        runs.append(data)
        return len(runs)

    child = tf.workflow("child").task("work", job="work").build()
    parent = tf.workflow("parent").child("c", workflow="child").task("after", job="after").build()
    adapter: Any = _MemoryDies() if kind == "memory" else _SQLiteDies(tmp_path / "flows.db")
    async with open_test_engine(adapter=adapter) as engine:
        engine.jobs.register("work", work)
        engine.jobs.register("after", ok)
        engine.register(child)
        engine.register(parent)
        await engine.start("parent", {"x": 1}, instance_id="P")
        await trio.sleep(5)
    assert len(runs) == 1
    adapter.armed = False
    async with open_test_engine(adapter=adapter) as engine:
        engine.jobs.register("work", work)
        engine.register(child)
        engine.register(parent)  # "after" is not registered yet: P is held
        await trio.sleep(5)
        assert await engine.purge(older_than=0) == 1  # the completed child
        engine.jobs.register("after", ok)
        with trio.fail_after(1000):
            done = await engine.wait("P")
        await trio.sleep(5)
    assert done.status == "completed"
    assert len(runs) == 1, f"the child's job ran {len(runs)} times"
