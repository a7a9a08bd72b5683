"""Databases written by earlier releases open with this one, and their unfinished instances
resume and finish: SQLite schema 1 with snapshot format 1 (issue 12), schema 2 before durable
waiting, snapshot formats 2 and 3's headers, and format 4's that named the steps compensated
(each fixture made by the script beside it in tests/fixtures/ with that release's own code)."""

from __future__ import annotations

import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest

import trioflow as tf
from trioflow._codec import FORMAT_VERSION

FIXTURE = Path(__file__).with_name("fixtures") / "v1_flows.db"

WORKFLOW = tf.workflow("fixture").task("a", job="a").task("b", job="b", compensate="undo-b").task("c", job="c").build()


def register(engine: tf.Engine, calls: list[str]) -> None:
    def job(name: str) -> Any:
        async def run(data: Any) -> dict[str, Any]:
            calls.append(f"{name} {data['mode']}")
            return {name: data["mode"]}
        return run

    for name in ("a", "b", "c"):
        engine.jobs.register(name, job(name))

    async def undo_b(result: Any) -> None:
        calls.append("undo-b")

    engine.jobs.register("undo-b", undo_b)


async def test_a_database_of_the_previous_release_opens_and_its_instances_resume(tmp_path: Path) -> None:
    db = tmp_path / "flows.db"
    shutil.copy(FIXTURE, db)
    calls: list[str] = []
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        register(engine, calls)
        engine.register(WORKFLOW)
        running = await engine.wait("running-1")
        pending = await engine.wait("pending-1")
        done = await engine.get_instance("done-1")
        failed = await engine.get_instance("failed-1")
    assert running.status == "completed" and running.output == {"c": "hang"}
    assert [r.step_name for r in running.history] == ["a", "b", "c"]
    assert running.history[0].output == {"a": "hang"}, "the step completed under the old release is kept"
    assert pending.status == "completed" and pending.output == {"c": "ok"}
    assert sorted(calls) == sorted(["b hang", "c hang", "a ok", "b ok", "c ok"]), "nothing completed runs again"
    assert done is not None and done.status == "completed" and done.output == {"c": "ok"}
    assert [r.status for r in done.history] == ["completed"] * 3
    assert failed is not None and failed.status == "failed" and failed.compensated_steps == ("b",)
    assert failed.step_results["c"].status == "failed" and "c fails on purpose" in (failed.error or "")

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        rows = dict(conn.execute("SELECT instance_id, start IS NOT NULL FROM trioflow_instances").fetchall())
        records = dict(conn.execute("SELECT instance_id, count(*) FROM trioflow_records GROUP BY instance_id"))
    assert rows == {"done-1": 0, "failed-1": 0, "running-1": 1, "pending-1": 1}, "finished rows are read as they are"
    assert records == {"running-1": 3, "pending-1": 3}

    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        register(engine, calls)
        engine.register(WORKFLOW)
        again = {i.id: i for i in await engine.get_instances("fixture")}
    assert again["running-1"].history == running.history and again["done-1"].output == {"c": "ok"}


V2_FIXTURE = Path(__file__).with_name("fixtures") / "v2_flows.db"


async def test_a_database_of_storage_v2_before_waiting_opens_and_its_instances_resume(tmp_path: Path) -> None:
    """Schema 2 without the signals table and the wake_at column, records of 13 fields and
    headers of 16 (no error name and cause), as written by commit cca1d7c: it opens, gets the
    table and column, its unfinished instances resume and finish, and the errors it stored as
    one line read back with a name and a cause."""
    db = tmp_path / "flows.db"
    shutil.copy(V2_FIXTURE, db)
    calls: list[str] = []
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        register(engine, calls)
        engine.register(WORKFLOW)
        running = await engine.wait("running-1")
        pending = await engine.wait("pending-1")
        failed = await engine.get_instance("failed-1")
        done = await engine.get_instance("done-1")
    assert running.status == "completed" and running.output == {"c": "hang"}
    assert running.history[0].output == {"a": "hang"}, "the step completed under the old release is kept"
    assert pending.status == "completed" and pending.output == {"c": "ok"}
    assert sorted(calls) == sorted(["b hang", "c hang", "a ok", "b ok", "c ok"]), "nothing completed runs again"
    assert done is not None and done.status == "completed"
    assert failed is not None and failed.status == "failed" and failed.compensated_steps == ("b",)
    assert (failed.error_name, failed.cause) == ("RuntimeError", "c fails on purpose")
    c = failed.step_results["c"]
    assert (c.status, c.error_name, c.cause) == ("failed", "RuntimeError", "c fails on purpose")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        columns = [r[1] for r in conn.execute("PRAGMA table_info(trioflow_instances)")]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert columns[-3:] == ["wake_at", "finished_at", "parent_id"] and "trioflow_signals" in tables


V2_COMPENSATING = Path(__file__).with_name("fixtures") / "v2_compensating.db"
#: The same instances, written by the last release of format 3 (856723c) with the same script.
V3_COMPENSATING = V2_COMPENSATING.with_name("v3_compensating.db")
sys.path.insert(0, str(V2_COMPENSATING.parent))
from make_v2_compensating import loop  # noqa: E402  (the fixture's workflow)


@pytest.mark.parametrize(("fixture", "version"), [(V2_COMPENSATING, 2), (V3_COMPENSATING, 3)])
async def test_an_instance_stopped_while_compensating_under_an_older_format_finishes_each_release_once(
        tmp_path: Path, fixture: Path, version: int) -> None:
    """Format 2's header listed the executions compensated; format 3's holds a cursor; both
    kept the compensations that failed in the header, format 4 in records of their own. A
    database written by the last release of format 2 (commit 1e48bd3) or 3 (856723c) with an
    instance stopped in the middle of undoing a loop resumes: the executions released before
    the stop are not released again, the one whose release failed keeps its error, the rest are
    released newest first; finished instances read back as they were."""
    db = tmp_path / "flows.db"
    shutil.copy(fixture, db)
    released: list[int] = []
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(loop(released))
        failed = await engine.get_instance("failed-1")
        done = await engine.get_instance("done-1")
        mid = await engine.wait("mid-1")
    assert released == [2, 1], "reserve#4 was released before the stop, reserve#3's release failed"
    for inst in (failed, mid):
        assert inst is not None and (inst.status, inst.error_name, inst.cause) == ("failed", "Failed", "card declined")
        assert inst.compensated_steps == ("reserve",) * 3
        undone = [(r.id, r.status, r.compensation_error) for r in inst.history if r.step_name == "reserve"]
        assert undone == [("reserve#1", "compensated", None), ("reserve#2", "compensated", None),
                          ("reserve#3", "completed", "Failed: cannot release 3"), ("reserve#4", "compensated", None)]
        assert inst.compensation_errors == {"reserve": "Failed: cannot release 3"}
    assert done is not None and (done.status, done.output, done.compensated_steps) == ("completed", "charged", ())
    with sqlite3.connect(db) as conn:
        header = dict(conn.execute("SELECT instance_id, header FROM trioflow_instances"))
        records = [msgpack.unpackb(r) for (r,) in conn.execute(
            "SELECT data FROM trioflow_records WHERE instance_id = 'mid-1' ORDER BY seq")]
    conn.close()
    assert msgpack.unpackb(header["mid-1"], strict_map_key=False)[1] == FORMAT_VERSION, (
        "the resumed instance's header is rewritten in the current format")
    assert [(r[2], r[3], r[4], r[9]) for r in records[9:]] == [
        ("reserve", 4, "compensation_completed", None),
        ("reserve", 3, "compensation_failed", "Failed: cannot release 3"),
        ("reserve", 2, "compensation_completed", None), ("reserve", 1, "compensation_completed", None)], (
        "the header's error, and each compensation, is stored as a record of its own, newest first")
    assert msgpack.unpackb(header["failed-1"], strict_map_key=False)[1] == version, "a finished row is read as it is"


V4_SAGA = Path(__file__).with_name("fixtures") / "v4_saga.db"
from make_v4_saga import saga  # noqa: E402  (the fixture's workflow)


async def test_a_saga_stopped_while_compensating_under_headers_that_name_the_steps_compensated_finishes(
        tmp_path: Path) -> None:
    """Format 4's headers named the steps compensated beside the cursor (rewritten at each
    compensation: a saga of distinct steps grew them), before each compensation that ran had a
    record of its own. A database written by that release (commit 0651b9e) with a saga stopped
    while releasing r1 (r4 released, r3's release failed for good, in a record, r2 released)
    resumes: only r1 and r0 are released; what the header said becomes records, after those
    stored; the row reads back the same from each later open; finished rows are read as they are."""
    db = tmp_path / "flows.db"
    shutil.copy(V4_SAGA, db)

    def rows() -> tuple[dict[str, bytes], list[list[Any]]]:
        with sqlite3.connect(db) as conn:
            headers = dict(conn.execute("SELECT instance_id, header FROM trioflow_instances"))
            records = [msgpack.unpackb(r) for (r,) in conn.execute(
                "SELECT data FROM trioflow_records WHERE instance_id = 'mid-1' ORDER BY seq")]
        conn.close()
        return headers, records

    before, stored = rows()
    released: list[str] = []
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), resume=False) as engine:
        engine.register(saga(released))
        parked = await engine.get_instance("mid-1")
    assert parked is not None and parked.compensated_steps == ("s4", "s2")
    assert parked.compensation_errors == {"s3": "Failed: cannot release r3"}
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(saga(released))
        mid = await engine.wait("mid-1")
    assert released == ["r1", "r0"], "r4 and r2 were released before the stop, r3's release failed"
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), resume=False) as engine:
        engine.register(saga(released))
        views = [mid, await engine.get_instance("mid-1"), await engine.get_instance("failed-1")]
        done = await engine.get_instance("done-1")
    for inst in views:
        assert inst is not None
        assert (inst.status, inst.error_name, inst.cause) == ("failed", "Failed", "activation refused")
        assert inst.compensated_steps == ("s4", "s2", "s1", "s0")
        assert inst.compensation_errors == {"s3": "Failed: cannot release r3"}
        assert [(r.id, r.status, r.compensation_error) for r in inst.history] == [
            ("s0#1", "compensated", None), ("s1#1", "compensated", None), ("s2#1", "compensated", None),
            ("s3#1", "completed", "Failed: cannot release r3"), ("s4#1", "compensated", None),
            ("activate#1", "failed", None)]
    assert done is not None and (done.status, done.output, done.compensated_steps) == ("completed", "active", ())
    after, records = rows()
    assert records[:7] == stored, "the records the older release wrote are never rewritten"
    assert [(r[2], r[4], r[11] is None) for r in records[7:]] == [
        ("s4", "compensation_completed", True), ("s2", "compensation_completed", True),  # (from the header)
        ("s1", "compensation_completed", False), ("s0", "compensation_completed", False)]
    header = msgpack.unpackb(after["mid-1"], strict_map_key=False)
    assert (header[1], header[11], header[12]) == (FORMAT_VERSION, 0, []), "the cursor alone"
    assert after["failed-1"] == before["failed-1"] and after["done-1"] == before["done-1"], (
        "a finished row is read as it is")


MAP_LANES = Path(__file__).with_name("fixtures") / "v4_map_lanes.db"
#: The same instance, written by the first release to leave out of its headers a map's items
#: that stand where their last record's step sends them (commit d51bda3).
MAP_ITEMS_LEFT_OUT = Path(__file__).with_name("fixtures") / "map_items_left_out.db"
from make_map_lanes import fan  # noqa: E402  (the fixture's workflow)


@pytest.mark.parametrize("fixture", [MAP_LANES, MAP_ITEMS_LEFT_OUT], ids=["every-lane", "items-left-out"])
async def test_a_map_stopped_under_headers_that_list_every_item_lane_resumes_where_each_item_stood(
        tmp_path: Path, fixture: Path) -> None:
    """Headers written before a map's position named its branch's first step list every running
    item's lane (five fields of map position). A database written then (commit cdf788a), with a
    map stopped mid-way, resumes: the items that ended are not run again, item 2 goes on from
    its "finish", items 3 to 5 run from their "work"; the map's output is in item order. So does
    one whose header leaves every item out (d51bda3: item 2 stands where "work" sends it)."""
    db = tmp_path / "flows.db"
    shutil.copy(fixture, db)
    ran: list[tuple[str, int]] = []
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(fan(ran))
        done = await engine.wait("map-1")
    assert (done.status, done.output) == ("completed", [1, 11, 21, 31, 41, 51]), done.error
    assert sorted(ran) == [("finish", 2), ("finish", 3), ("finish", 4), ("finish", 5),
                           ("work", 3), ("work", 4), ("work", 5)], ran
    assert sorted(r.id for r in done.history if r.step_name == "work") == [f"each/#{i}/work#1" for i in range(6)]


#: An instance stopped in a parallel step of 33 branches, written by the last release whose
#: headers list every branch in flight (commit 8b88a09), and by the first whose wide parallel
#: steps store a start record and whose headers leave their branches out.
WIDE_EVERY_BRANCH = Path(__file__).with_name("fixtures") / "wide_parallel_every_branch.db"
WIDE_BRANCHES_LEFT_OUT = Path(__file__).with_name("fixtures") / "wide_parallel_branches_left_out.db"
from make_parallel_lanes import BRANCHES, wide  # noqa: E402  (the fixtures' workflow)


@pytest.mark.parametrize("fixture", [WIDE_EVERY_BRANCH, WIDE_BRANCHES_LEFT_OUT],
                         ids=["every-branch", "branches-left-out"])
async def test_a_wide_parallel_step_stopped_mid_way_resumes_where_each_branch_stood(
        tmp_path: Path, fixture: Path) -> None:
    """A database written with a parallel step of 33 branches stopped mid-way resumes, whether
    its header lists every branch (8b88a09) or names none (the branches left out, their places
    in the step's start record): the branches that ended are not run again, branch 2 goes on
    from its ``f2``, branches 3 to 32 from their ``w``; the output holds every branch's."""
    db = tmp_path / "flows.db"
    shutil.copy(fixture, db)
    ran: list[str] = []
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(wide(ran))
        done = await engine.wait("wide-1")
    assert done.status == "completed", done.error
    assert done.output == {f"b{i}": i * 10 + 1 for i in range(BRANCHES)}
    assert sorted(ran) == sorted(["f2", *(f"{step}{i}" for i in range(3, BRANCHES) for step in "wf")]), ran
    assert sorted(r.id for r in done.history if r.step_name == "w5") == ["p/b5/w5#1"]
