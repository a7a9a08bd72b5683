"""Retention (issue 16 item 1): ``engine.purge`` deletes finished instances by finish time on
every adapter, ``open_engine(retain_finished=...)`` purges in the background, old SQLite files
get finish times, and deleting an unfinished instance is refused."""

from __future__ import annotations

import logging
import shutil
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
import trioflow._engine
from trioflow._errors import InstanceStillRunningError
from trioflow._snapshot import TERMINAL, Status
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock

from storages import storage  # noqa: F401  (a fixture: every test here runs on both adapters)

FIXTURES = Path(__file__).with_name("fixtures")


async def ok(data: Any) -> Any:
    return data


async def boom(data: Any) -> None:
    raise RuntimeError("boom")


def register(engine: tf.Engine, gate: trio.Event | None = None) -> None:
    """Workflows "ok" (completes), "bad" (fails) and "held" (runs until ``gate`` is set)."""
    async def held(data: Any) -> None:
        await (gate if gate is not None else trio.Event()).wait()

    engine.register(tf.workflow("ok").task("a", job=ok).task("b", job=ok).build())
    engine.register(tf.workflow("bad").task("a", job=boom).build())
    engine.register(tf.workflow("held").task("a", job=held).build())


async def ids(engine: tf.Engine, workflow_name: str | None = None) -> list[str]:
    return sorted(i.id for i in await engine.get_instances(workflow_name))


async def run(engine: tf.Engine, workflow_name: str, instance_id: str) -> tf.WorkflowInstance:
    return await engine.wait(await engine.start(workflow_name, instance_id=instance_id))


# -- engine.purge -----------------------------------------------------------------------------------


async def test_purge_deletes_what_finished_before_the_cutoff_and_never_what_runs(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    gate = trio.Event()
    async with open_test_engine(adapter=storage()) as engine:
        register(engine, gate)
        await run(engine, "ok", "early")
        await trio.sleep(100)
        assert (await run(engine, "bad", "late")).status == "failed"
        await engine.start("held", instance_id="held")
        await trio.sleep(10)
        assert await engine.purge(older_than=50) == 1, "only the instance that finished over 50 s ago"
        assert await engine.get_instance("early") is None
        assert await ids(engine) == ["held", "late"]
        assert await engine.purge(older_than=timedelta(0)) == 1
        assert await ids(engine) == ["held"], "a running instance is never purged"
        gate.set()
        assert (await engine.wait("held")).status == "completed"
        assert await engine.purge(older_than=0) == 1
        assert await ids(engine) == [] and await engine.purge(older_than=0) == 0


async def test_purge_takes_the_records_and_the_pending_signals_along(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    adapter = storage()
    gate = trio.Event()

    async def held(data: Any) -> None:
        await gate.wait()

    wf = tf.workflow("listen").receive("first", signal="go").task("hold", job=held).build()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("listen")
        await engine.signal(iid, "go", 1)
        await engine.signal(iid, "go", 2)  # never consumed: pending when the instance ends
        gate.set()
        assert (await engine.wait(iid)).status == "completed"
        assert len(await adapter.signals(iid)) == 1
        assert await engine.purge(older_than=0) == 1
        assert await adapter.load(iid) is None and await adapter.signals(iid) == []
        # The id is free again, from seq 0.
        assert await engine.start("listen", instance_id=iid) == iid
        await engine.signal(iid, "go", 3)
        again = await engine.wait(iid)
        assert again.status == "completed" and [r.step_name for r in again.history] == ["first", "hold"]


async def test_a_row_that_finished_again_does_not_hold_back_the_rows_after_it(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # A child completes early and is compensated (finished again, with another status) when its
    # parent fails much later: the rows that finished in between are purged all the same.
    async def ok(data: Any) -> str:
        return "ok"

    async def undo(data: Any) -> None:
        pass

    async def slow_fail(data: Any) -> None:
        await trio.sleep(1000)
        raise RuntimeError("declined")

    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as engine:
        engine.register(tf.workflow("kid").task("r", job=ok, compensate=undo).build())
        engine.register(tf.workflow("order").child("k", workflow="kid").task("pay", job=slow_fail).build())
        engine.register(tf.workflow("quick").task("a", job=ok).build())
        parent = await engine.start("order", instance_id="o")
        await trio.sleep(1)
        for n in range(5):
            await engine.wait(await engine.start("quick", instance_id=f"q{n}"))
        await engine.wait(parent)  # the child is compensated now, 1,000 s after it completed
        assert await engine.purge(older_than=500) == 5  # the quick ones ended 999 s ago
        assert sorted(i.id for i in await engine.get_instances()) == ["o", "o/k#1"]


async def test_purge_by_status_and_by_workflow(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    async with open_test_engine(adapter=storage()) as engine:
        register(engine)
        for n in range(3):
            await run(engine, "ok", f"ok-{n}")
            await run(engine, "bad", f"bad-{n}")
        await engine.start("held", instance_id="held")
        assert await engine.purge(older_than=0, status="failed") == 3
        assert await ids(engine) == ["held", "ok-0", "ok-1", "ok-2"]
        assert await engine.purge(older_than=0, workflow="held") == 0
        assert await engine.purge(older_than=0, workflow="ok", status="completed") == 3
        assert await ids(engine) == ["held"]


async def test_a_purge_deletes_in_batches(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many finished instances go in several adapter calls (on SQLite, one transaction each), so
    other instances' checkpoints are written between them."""
    monkeypatch.setattr(trioflow._engine, "PURGE_BATCH", 4)
    adapter = storage()
    calls: list[int] = []
    purge = adapter.purge

    async def counted(finished_by: float, limit: int, **filters: Any) -> int:
        calls.append(limit)
        return await purge(finished_by, limit, **filters)

    monkeypatch.setattr(adapter, "purge", counted)
    async with open_test_engine(adapter=adapter) as engine:
        register(engine)
        for n in range(10):
            await run(engine, "ok", f"i{n}")
        assert await engine.purge(older_than=0) == 10
    assert calls == [4, 4, 4], "batches of PURGE_BATCH until one comes back short"


@pytest.mark.parametrize("older_than", [-1, -0.5, float("nan"), float("inf"), "60", None, True, timedelta(seconds=-1)])
async def test_purge_refuses_a_bad_older_than(autojump_clock: trio.testing.MockClock, older_than: Any) -> None:
    async with open_test_engine() as engine:
        with pytest.raises(tf.InvalidArgumentError, match="older_than must be a finite number of seconds >= 0"):
            await engine.purge(older_than=older_than)


@pytest.mark.parametrize("status", ["running", "pending", "done", "Completed", 3])
async def test_purge_refuses_a_status_that_is_not_a_finished_one(
    autojump_clock: trio.testing.MockClock, status: Any,
) -> None:
    async with open_test_engine() as engine:
        with pytest.raises(tf.InvalidArgumentError, match=f"status must be one of {', '.join(sorted(TERMINAL))} "):
            await engine.purge(older_than=0, status=status)
        with pytest.raises(tf.InvalidArgumentError, match="workflow must be a workflow name"):
            await engine.purge(older_than=0, workflow=3)  # type: ignore[arg-type]


async def test_purge_after_the_engine_closed_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine() as engine:
        pass
    with pytest.raises(tf.EngineClosedError):
        await engine.purge(older_than=0)


async def test_finish_times_are_on_the_engine_clock_across_engines(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """The adapter stamps finish times with the clock ``open_engine`` runs on: a next engine
    whose clock says a day later finds the instance a day old."""
    base = virtual_wall_clock()
    async with open_test_engine(adapter=storage(), clock=base) as engine:
        register(engine)
        await run(engine, "ok", "old")
    async with open_test_engine(adapter=storage(), clock=lambda: base() + 86_400) as engine:
        register(engine)
        await run(engine, "ok", "new")
        assert await engine.purge(older_than=timedelta(hours=23)) == 1
        assert await ids(engine) == ["new"]


# -- retain_finished ------------------------------------------------------------------------------


async def test_retain_finished_purges_in_the_background(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    async with open_test_engine(adapter=storage(), retain_finished=timedelta(minutes=5)) as engine:
        register(engine)
        await run(engine, "ok", "done")
        await engine.start("held", instance_id="held")
        await trio.sleep(290)
        assert await ids(engine) == ["done", "held"], "kept for retain_finished"
        # Due at 300 s; the task looks at least once a minute. A second past that look: on SQLite
        # "done" ends a moment after the task's clock starts, so the look at 300 s misses it and
        # the one at ~360 s purges it, at the very moment a check at 360 s would read.
        await trio.sleep(10 + 60 + 1)
        assert await ids(engine) == ["held"], "purged in the background once due; running ones stay"


async def test_retain_finished_zero_keeps_nothing_finished(autojump_clock: trio.testing.MockClock) -> None:
    adapter = MemoryAdapter()
    async with open_test_engine(adapter=adapter, retain_finished=0) as engine:
        register(engine)
        for n in range(50):
            await run(engine, "ok" if n % 2 else "bad", f"i{n}")
        await trio.sleep(trioflow._engine.RETAIN_PERIOD_MIN + 0.5)
        assert await adapter.list_instances() == []


async def test_a_busy_engine_purges_after_every_so_many_finishes(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finished instances do not pile up for a whole period in an engine that finishes many: the
    task purges as soon as RETAIN_EVERY have finished here."""
    monkeypatch.setattr(trioflow._engine, "RETAIN_EVERY", 5)
    adapter = MemoryAdapter()
    async with open_test_engine(adapter=adapter, retain_finished=0) as engine:
        register(engine)
        for n in range(4):
            await run(engine, "ok", f"i{n}")
        await trio.sleep(0.1)
        assert len(await adapter.list_instances()) == 4, "not yet: 4 finished, and the period is 1 s"
        await run(engine, "ok", "i4")
        await trio.sleep(0.1)
        assert await adapter.list_instances() == [], "the fifth finish woke the task"


@pytest.mark.parametrize("retain", [-1, float("nan"), float("inf"), "1h", timedelta(days=-1)])
async def test_open_engine_refuses_a_bad_retain_finished(autojump_clock: trio.testing.MockClock, retain: Any) -> None:
    with pytest.raises(tf.InvalidArgumentError, match="retain_finished must be a finite number of seconds >= 0"):
        async with open_test_engine(retain_finished=retain):
            pass


async def test_a_failing_background_purge_is_logged_and_tried_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    class FlakyPurge(MemoryAdapter):
        failures = 1

        async def purge(self, finished_by: float, limit: int, *, status: Status | None = None,
                        workflow_name: str | None = None) -> int:
            if self.failures:
                self.failures -= 1
                raise tf.StorageUnavailableError("disk busy")
            return await super().purge(finished_by, limit, status=status, workflow_name=workflow_name)

    caplog.set_level(logging.WARNING, logger="trioflow")
    async with open_test_engine(adapter=FlakyPurge(), retain_finished=0) as engine:
        register(engine)
        await run(engine, "ok", "done")
        await trio.sleep(1.5)
        assert await ids(engine) == ["done"], "the first purge failed"
        assert "retention: purging finished instances failed (disk busy)" in caplog.text
        await trio.sleep(1)
        assert await ids(engine) == [], "the next one purged"


# -- delete is refused for unfinished instances --------------------------------------------------


async def test_deleting_a_running_instance_is_refused_and_it_stays(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """Before: ``delete`` returned True and the row came back with the next checkpoint."""
    gate = trio.Event()
    adapter = storage()
    async with open_test_engine(adapter=adapter) as engine:
        register(engine, gate)
        iid = await engine.start("held", instance_id="held")
        await trio.sleep(1)
        with pytest.raises(InstanceStillRunningError, match="'held' is running: only a finished instance can be"):
            await adapter.delete(iid)
        assert isinstance(InstanceStillRunningError("x", "running"), tf.TrioflowError)
        assert await adapter.load(iid) is not None
        gate.set()
        assert (await engine.wait(iid)).status == "completed"
        assert await adapter.delete(iid) is True and await engine.get_instance(iid) is None


# -- SQLite files from before retention -------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["v1_flows.db", "v2_flows.db"])
async def test_an_old_file_gets_finish_times_at_open_and_its_finished_rows_become_purgeable(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, fixture: str,
) -> None:
    """Adapters never decode headers, so the finished rows of a file written before retention
    get the time of the first open as their finish time; unfinished ones get none."""
    db = tmp_path / "flows.db"
    shutil.copy(FIXTURES / fixture, db)
    clock = virtual_wall_clock()
    opened_at = clock()
    async with open_test_engine(adapter=SQLiteAdapter(db), clock=clock) as engine:
        with sqlite3.connect(db) as conn:
            stamped = dict(conn.execute("SELECT instance_id, finished_at FROM trioflow_instances"))
        assert stamped == {"done-1": opened_at, "failed-1": opened_at, "running-1": None, "pending-1": None}
        assert await engine.purge(older_than=60) == 0
        await trio.sleep(61)
        # Not registered: the unfinished ones stay as they are.
        assert await engine.purge(older_than=60) == 2
        assert sorted(i.id for i in await engine.get_instances("fixture")) == ["pending-1", "running-1"]
    async with open_test_engine(adapter=SQLiteAdapter(db), clock=clock) as engine:
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM trioflow_instances WHERE finished_at IS NOT NULL").fetchone() == (0,)


async def test_finished_rows_written_without_a_finish_time_are_stamped_at_the_next_open(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    """A release from before retention, opened on a file that has the column, finishes rows
    without stamping them: the next open stamps them (found through the index, not a scan)."""
    db = tmp_path / "flows.db"
    clock = virtual_wall_clock()
    async with open_test_engine(adapter=SQLiteAdapter(db), clock=clock) as engine:
        register(engine)
        await run(engine, "ok", "stamped")
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO trioflow_instances (instance_id, workflow_name, status, header) "
                     "VALUES ('unstamped', 'ok', 'completed', x'00')")
    await trio.sleep(100)
    async with open_test_engine(adapter=SQLiteAdapter(db), clock=clock) as engine:
        assert await engine.purge(older_than=50) == 1, "the stamped one, finished 100 s ago"
        assert await engine.purge(older_than=0) == 1, "the one stamped now"


async def test_an_index_made_for_another_set_of_finished_statuses_is_made_again(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    """The partial index on finish times lists the finished statuses; a file whose index was
    made by a release with another list gets this release's at open (or purges could not use
    it)."""
    db = tmp_path / "flows.db"
    async with open_test_engine(adapter=SQLiteAdapter(db)) as engine:
        register(engine)
        await run(engine, "ok", "done")
    _index_as_an_older_release_made_it(db, "status IN ('completed')")
    async with open_test_engine(adapter=SQLiteAdapter(db)) as engine:
        assert await engine.purge(older_than=0) == 1
    with sqlite3.connect(db) as conn:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'trioflow_instances_by_finish'").fetchone()[0]
    assert all(repr(status) in sql for status in TERMINAL), sql


async def test_the_index_the_release_before_made_is_made_again_and_purges_go_through_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    """Releases up to 93b4757 wrote the partial index's condition as ``status IN (...)``, which
    SQLite evaluates through a temporary B-tree on every insert and status change; a file they
    wrote gets the cheaper condition at open, and purges still read finished rows through the
    index by time."""
    db = tmp_path / "flows.db"
    async with open_test_engine(adapter=SQLiteAdapter(db)) as engine:
        register(engine)
        await run(engine, "ok", "done")
        await run(engine, "ok", "again")
    _index_as_an_older_release_made_it(db, "status IN ('cancelled', 'compensated', 'completed', 'failed', 'timed_out')")
    async with open_test_engine(adapter=SQLiteAdapter(db)) as engine:
        register(engine)
        await run(engine, "ok", "third")
        assert await engine.purge(older_than=0) == 3
    with sqlite3.connect(db) as conn:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'trioflow_instances_by_finish'").fetchone()[0]
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT instance_id FROM trioflow_instances INDEXED BY trioflow_instances_by_finish"
            " WHERE status = 'completed'"
            f" AND {sql.split(' WHERE ', 1)[1]} AND finished_at <= 1 ORDER BY finished_at").fetchall()
    assert " IN " not in sql, sql
    assert all(f"status = {status!r}" in sql for status in TERMINAL), sql
    assert any("USING INDEX trioflow_instances_by_finish (finished_at<?)" in row[-1] for row in plan), plan


def _index_as_an_older_release_made_it(db: Path, condition: str) -> None:
    """Replace the partial index on finish times with one whose condition is ``condition``."""
    with sqlite3.connect(db) as conn:
        conn.execute("DROP INDEX trioflow_instances_by_finish")
        conn.execute(f"CREATE INDEX trioflow_instances_by_finish ON trioflow_instances (finished_at) WHERE {condition}")


class _CountsPurges(MemoryAdapter):
    """Counts the purges storage is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.purges = 0

    async def purge(self, *args: Any, **kwargs: Any) -> int:
        self.purges += 1
        return await super().purge(*args, **kwargs)


@pytest.mark.parametrize("keep", [0, 30])
async def test_an_idle_engine_waits_for_the_next_finish_rather_than_purge_every_second(
    autojump_clock: trio.testing.MockClock, keep: float,
) -> None:
    """Once a purge has taken everything finished here, retention waits for the next instance
    to finish (looking again at least once an hour): an idle service makes no purges, and a
    test on virtual time moves through a day without 86,400 of them (a review, soakcan, found
    advancing an engine portal with retain_finished=0 took about 3 s of real time per virtual
    day). What finishes later is still purged once due."""
    adapter = _CountsPurges()
    async with open_test_engine(adapter=adapter, retain_finished=keep) as engine:
        register(engine)
        await run(engine, "ok", "early")
        await trio.sleep(keep + 2 * trioflow._engine.RETAIN_PERIOD_MAX)
        assert await ids(engine) == [], "purged once due"
        before = adapter.purges
        await trio.sleep(86_400)
        assert adapter.purges - before <= 24 + 1, f"{adapter.purges - before} purges in an idle day"
        await run(engine, "ok", "late")
        await trio.sleep(keep + 2 * trioflow._engine.RETAIN_PERIOD_MAX)
        assert await ids(engine) == [], "a finish wakes it: purged once due"


async def test_a_busy_engine_after_an_idle_spell_purges_after_every_so_many_finishes(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Retention woken from its idle wait by a burst of finishes still purges once RETAIN_EVERY
    have finished, not only at its period: the finishes counted before it waited again passed
    the count (it compared with ``==``), and a busy phase after an idle one piled up a period's
    finished instances (``bench/retention.py``: RSS after 200k sagas 1.37x that after 20k)."""
    monkeypatch.setattr(trioflow._engine, "RETAIN_EVERY", 5)
    adapter = MemoryAdapter()
    async with open_test_engine(adapter=adapter, retain_finished=0) as engine:
        register(engine)
        await run(engine, "ok", "first")
        await trio.sleep(10)  # (purged, then idle)
        assert await adapter.list_instances() == []
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(run, engine, "ok", f"i{n}")
        await trio.sleep(0.1)
        assert len(await adapter.list_instances()) < 5, "purged as they passed the count, not a period later"
