"""Retention and purges keep a child workflow while its parent is stored: the parent may yet
compensate it as a unit, and lists it among its children (adapters keep each child's parent)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from storages import finish, reservation_jobs
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import check_persistence_adapter, open_test_engine, virtual_wall_clock
from trioflow.testing._conformance import _CHECKS

FIXTURES = Path(__file__).with_name("fixtures")


def family(log: list[str], *, items: int = 3) -> tuple[tf.WorkflowDefinition, tf.WorkflowDefinition]:
    """A parent that runs a child saga per item, waits a day, then fails: every child must be
    undone, newest first. ``log`` gets every job call."""
    reserve, release, charge = reservation_jobs(log)
    kid = tf.workflow("kid").step("reserve", reserve, release).build()
    parent = (tf.workflow("order")
              .map("each", items=lambda ctx: list(range(items)), max_concurrency=1,
                   branch=tf.branch("b").child("hold", workflow="kid", input=lambda ctx: ctx.item).build())
              .wait("a-day", seconds=86_400)
              .step("charge", charge)
              .build())
    return parent, kid


@pytest.mark.parametrize("adapter", ["memory", "sqlite"])
async def test_retention_across_a_restart_keeps_the_children_a_parent_undoes_a_day_later(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, adapter: str) -> None:
    log: list[str] = []
    parent, kid = family(log)
    memory = MemoryAdapter()

    def storage() -> tf.adapters.Adapter:
        return memory if adapter == "memory" else SQLiteAdapter(tmp_path / "family.db")

    clock = virtual_wall_clock()
    async with open_test_engine(adapter=storage(), clock=clock, retain_finished=60) as engine:
        engine.register(parent)
        engine.register(kid)
        iid = await engine.start("order", instance_id="o")
        await trio.sleep(3_600)  # the children completed an hour ago; retention ran every minute
        kept = [await engine.get_instance(f"o/each/#{n}/hold#1") for n in range(3)]
        assert [k.status if k is not None else None for k in kept] == ["completed"] * 3
    async with open_test_engine(adapter=storage(), clock=clock, retain_finished=60) as engine:
        engine.register(parent)
        engine.register(kid)
        await trio.sleep(3_600)  # (the parent still waits: its children stay through the restart)
        assert len([i for i in await engine.get_instances("kid") if i.status == "completed"]) == 3
        inst = await finish(engine, iid)
    assert (inst.status, inst.compensation_errors) == ("failed", {})
    assert log == ["reserve 0", "reserve 1", "reserve 2", "release 2", "release 1", "release 0"]


async def test_a_purge_takes_a_family_whose_parent_it_deletes(autojump_clock: trio.testing.MockClock) -> None:
    """One engine.purge deletes a finished parent and then the children it kept (over as many
    adapter calls as that takes)."""
    log: list[str] = []
    parent, kid = family(log, items=2)
    async with open_test_engine(clock=virtual_wall_clock()) as engine:
        engine.register(parent)
        engine.register(kid)
        await finish(engine, await engine.start("order", instance_id="o"))
        await engine.start("order", instance_id="later")
        await trio.sleep(10)
        assert await engine.purge(older_than=0, workflow="kid") == 0  # both parents are stored
        assert await engine.purge(older_than=0) == 3  # o, then its two children
        assert sorted(i.id for i in await engine.get_instances()) == [
            "later", "later/each/#0/hold#1", "later/each/#1/hold#1"]


async def test_the_kit_fails_an_adapter_that_takes_parent_id_and_purges_children_anyway() -> None:
    class Forgetful(MemoryAdapter):
        async def create(self, instance_id: str, workflow_name: str, status: Any, *, start: bytes, header: bytes,
                         parent_id: str | None = None) -> bool:
            return await super().create(instance_id, workflow_name, status, start=start, header=header)

    stores: dict[str, MemoryAdapter] = {}
    with pytest.raises(AssertionError, match="check 'purge_keeps_children_while_their_parent_is_stored' failed"):
        await check_persistence_adapter(lambda key: stores.setdefault(key, Forgetful()))


class WrittenBeforeParents(MemoryAdapter):
    """An adapter whose ``create`` predates ``parent_id``."""

    async def create(self, instance_id: str, workflow_name: str, status: Any, *,  # type: ignore[override]
                     start: bytes, header: bytes) -> bool:
        return await super().create(instance_id, workflow_name, status, start=start, header=header)


async def test_an_adapter_written_before_parent_id_passes_the_kit_and_runs_children(
        autojump_clock: trio.testing.MockClock) -> None:
    """The engine gives it no parent: it runs families as before, children purged by their own
    finish times."""
    stores: dict[str, MemoryAdapter] = {}
    # (The checks of what its create does not take, parents and wake times, are not made, nor
    # listed as passed.)
    not_made = {"created_waiting_instances_wait", "restart_lets_go_of_finished_children", "purge_keeps_children_while_their_parent_is_stored",
                "purge_lets_go_of_the_children_a_deleted_parent_kept"}
    assert await check_persistence_adapter(lambda key: stores.setdefault(key, WrittenBeforeParents())) == [
        check.__name__ for check in _CHECKS if check.__name__ not in not_made]
    log: list[str] = []
    parent, kid = family(log, items=2)
    async with open_test_engine(adapter=WrittenBeforeParents(), clock=virtual_wall_clock()) as engine:
        engine.register(parent)
        engine.register(kid)
        iid = await engine.start("order")
        await trio.sleep(10)
        assert await engine.purge(older_than=0, workflow="kid") == 2
        assert (await finish(engine, iid)).status == "failed"
    assert log == ["reserve 0", "reserve 1"]  # the children were gone: nothing to undo


async def test_retention_on_an_adapter_that_keeps_no_parents_is_warned_of(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    async with open_test_engine(adapter=WrittenBeforeParents(), retain_finished=60):
        pass
    assert "WrittenBeforeParents.create() takes no parent_id" in caplog.text
    caplog.clear()
    async with open_test_engine(adapter=MemoryAdapter(), retain_finished=60):
        pass
    async with open_test_engine(adapter=WrittenBeforeParents()):  # (no retention: nothing to warn of)
        pass
    assert "takes no parent_id" not in caplog.text


async def test_a_database_from_before_the_parent_column_opens_and_keeps_the_children_started_since(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A file written by an earlier release (no parent_id column) gets the column when it
    opens; what it stored resumes, and the children started from then on are kept."""
    path = tmp_path / "old.db"
    shutil.copy(FIXTURES / "v4_map_lanes.db", path)
    with sqlite3.connect(path) as conn:
        assert "parent_id" not in {row[1] for row in conn.execute("PRAGMA table_info(trioflow_instances)")}
    log: list[str] = []
    parent, kid = family(log, items=2)
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=virtual_wall_clock()) as engine:
        engine.register(parent)
        engine.register(kid)
        iid = await engine.start("order")
        await trio.sleep(10)
        assert await engine.purge(older_than=0, workflow="kid") == 0
        assert (await finish(engine, iid)).status == "failed"
        assert await engine.get_instance("map-1") is not None  # the old row is still there
    assert log == ["reserve 0", "reserve 1", "release 1", "release 0"]
    with sqlite3.connect(path) as conn:
        parents = dict(conn.execute("SELECT instance_id, parent_id FROM trioflow_instances"))
    assert parents[f"{iid}/each/#1/hold#1"] == iid and parents["map-1"] is None


class LooksCounted(MemoryAdapter):
    """Counts the places in the finish order a purge looks at."""

    looks = 0

    def _current(self, place: Any) -> bool:
        self.looks += 1
        return super()._current(place)


async def _kept_then_purged(adapter: tf.adapters.Adapter, kept: int) -> None:
    """Store a running parent keeping ``kept`` finished children, and 10 finished rows of their
    own; then a purge of the 10 (what it costs is measured around it)."""
    await adapter.create("p", "order", "running", start=b"s", header=b".")
    for n in range(kept):
        await adapter.create(f"p/k#{n}", "kid", "completed", start=b"s", header=b".", parent_id="p")
    for n in range(10):
        await adapter.create(f"plain-{n}", "order", "completed", start=b"s", header=b".")


@pytest.mark.parametrize("kept", [10, 2_000])
async def test_a_purge_on_the_memory_adapter_looks_at_no_child_a_stored_parent_keeps(kept: int) -> None:
    """A long-lived parent's map may keep thousands of finished children: a purge (every
    thousand instances that end, under retention) must not walk past them each time."""
    adapter = LooksCounted()
    await adapter.open()
    await _kept_then_purged(adapter, kept)
    adapter.looks = 0
    assert await adapter.purge(1e12, 100) == 10
    assert adapter.looks <= 21  # the ten it takes, each looked at twice (and the end of the order)
    assert len(await adapter.list_instances(workflow_name="kid")) == kept


async def test_a_purge_on_sqlite_reads_no_child_a_stored_parent_keeps(tmp_path: Path) -> None:
    """As on the memory adapter: SQLite's work for a purge (virtual machine instructions,
    counted by a progress handler) is the same with 2,000 children kept as with 10."""
    work = []
    for kept in (10, 2_000):
        adapter = SQLiteAdapter(tmp_path / f"kept-{kept}.db")
        await adapter.open()
        try:
            await _kept_then_purged(adapter, kept)
            steps = [0]

            def count() -> int:
                steps[0] += 1
                return 0  # go on

            conn = adapter._conn
            assert conn is not None
            conn.set_progress_handler(count, 10)
            assert await adapter.purge(1e12, 100) == 10
            conn.set_progress_handler(None, 0)
            work.append(steps[0])
            assert len(await adapter.list_instances(workflow_name="kid")) == kept
        finally:
            await adapter.close()
    assert work[1] <= 1.2 * work[0], work  # (before: some 70 times as much with 2,000 kept)


async def test_a_database_whose_purges_walked_kept_children_opens_and_purges_as_before(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A file written by the release before (``fixtures/make_kept_children.py``: its index on
    finish times held every finished row, and children a purge took the parent of without
    them still name it) opens: its index is made again, leaving out the children kept, those
    whose parent is gone go by their own finish time, and the parent waiting resumes, keeps
    its children until it is purged, and takes them along then."""
    from fixtures.make_kept_children import workflows

    path = tmp_path / "old.db"
    shutil.copy(FIXTURES / "kept_children.db", path)
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=virtual_wall_clock()) as engine:
        for definition in workflows():
            engine.register(definition)
        assert await engine.purge(older_than=0) == 3  # quick-1's two children, plain-1
        assert sorted(i.id for i in await engine.get_instances()) == [
            "holder-1", "holder-1/each/#0/run#1", "holder-1/each/#1/run#1", "holder-1/each/#2/run#1"]
        await engine.signal("holder-1", "go", "now")
        done = await finish(engine, "holder-1")
        assert (done.status, done.output) == ("completed", "now")
        assert sorted(done.children) == ["holder-1/each/#0/run#1", "holder-1/each/#1/run#1", "holder-1/each/#2/run#1"]
        assert await engine.purge(older_than=0) == 4
        assert await engine.get_instances() == []
    with sqlite3.connect(path) as conn:
        (index,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'trioflow_instances_by_finish'").fetchone()
    assert index.endswith("AND parent_id IS NULL")
