"""SQLiteAdapter specifics: group commit, locking, schema versions, permissions, indexes."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow._codec import encode_header, encode_start
from trioflow._decide import new_state
from trioflow.adapters import _sqlite
from trioflow.adapters._sqlite import SCHEMA_VERSION


async def test_group_commit_puts_many_instances_in_one_transaction(tmp_path: Path) -> None:
    adapter = tf.adapters.SQLiteAdapter(tmp_path / "f.db")

    async def step(data: Any) -> int:
        return 1

    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("w").task("a", job=step).task("b", job=step).build())
        statuses = []
        async with trio.open_nursery() as nursery:
            async def run_one() -> None:
                statuses.append((await engine.wait(await engine.start("w"))).status)
            for _ in range(500):
                nursery.start_soon(run_one)
    assert statuses == ["completed"] * 500
    # 500 creates + 500 x 2 saves (step a; the terminal snapshot, which records step b) + one
    # read by the resume + one look by the waker for instances waiting in storage
    assert adapter.operations == 1502
    assert adapter.transactions <= 20, (adapter.operations, adapter.transactions)


async def test_a_second_adapter_on_an_open_file_is_refused_until_it_closes(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    first = tf.adapters.SQLiteAdapter(path)
    await first.open()
    with pytest.raises(tf.adapters.DatabaseLockedError, match="in use by another trioflow engine"):
        await tf.adapters.SQLiteAdapter(path).open()
    with pytest.raises(tf.adapters.DatabaseLockedError, match="already open"):
        await first.open()
    await first.close()
    second = tf.adapters.SQLiteAdapter(path)
    await second.open()
    await second.close()


async def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(tf.adapters.DatabaseError, match="written by a newer trioflow"):
        await tf.adapters.SQLiteAdapter(path).open()
    await tf.adapters.SQLiteAdapter(tmp_path / "other.db").open()  # the lock was released


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(tf.adapters.DatabaseError, match="cannot open .* as a trioflow database"):
        await tf.adapters.SQLiteAdapter(path).open()


async def test_bad_options_and_use_without_open_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(tf.adapters.DatabaseError, match="synchronous must be 'FULL' or 'NORMAL'"):
        tf.adapters.SQLiteAdapter(tmp_path / "f.db", synchronous="OFF")  # type: ignore[arg-type]
    with pytest.raises(tf.adapters.DatabaseError, match="is not open"):
        await tf.adapters.SQLiteAdapter(tmp_path / "f.db").load("x")


async def test_synchronous_is_taken_in_either_case_as_sqlite_takes_it(tmp_path: Path) -> None:
    adapter = tf.adapters.SQLiteAdapter(tmp_path / "f.db", synchronous="normal")  # type: ignore[arg-type]
    assert adapter.synchronous == "NORMAL"
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("w").pass_("p", result=1).build())
        assert (await engine.wait(await engine.start("w"))).output == 1
    with pytest.raises(tf.adapters.DatabaseError, match="synchronous must be 'FULL' or 'NORMAL'"):
        tf.adapters.SQLiteAdapter(tmp_path / "f.db", synchronous=1)  # type: ignore[arg-type]


async def test_files_follow_the_umask_and_are_never_world_writable(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        adapter = tf.adapters.SQLiteAdapter(tmp_path / "f.db")
        await adapter.open()
        await adapter.create("i", "w", "running", start=b".", header=b".")
        for name in ("f.db", "f.db.lock", "f.db-wal"):
            mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
            assert not mode & stat.S_IWOTH, f"{name} is world-writable ({oct(mode)})"
        await adapter.close()
    finally:
        os.umask(old)


async def test_listing_by_workflow_and_status_uses_an_index(tmp_path: Path) -> None:
    adapter = tf.adapters.SQLiteAdapter(tmp_path / "f.db")
    await adapter.open()
    await adapter.close()
    with sqlite3.connect(tmp_path / "f.db") as conn:
        for sql, args in (
            ("SELECT * FROM trioflow_instances WHERE workflow_name = ? AND status = ? ORDER BY rowid", ("w", "r")),
            ("SELECT * FROM trioflow_instances WHERE status IN ('pending', 'running') ORDER BY rowid", ()),
        ):
            plan = " ".join(str(row) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
            assert "USING INDEX" in plan and "SCAN trioflow_instances" not in plan, plan


async def _hang(data: Any) -> None:
    await trio.sleep_forever()


async def _ok(data: Any) -> str:
    return "ok"


async def test_an_unreadable_row_fails_alone_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "f.db"

    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(tf.workflow("w").task("a", job=_hang).build())
        good = await engine.start("w")
        with trio.move_on_after(0.1):
            await engine.wait(good)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO trioflow_instances (instance_id, workflow_name, status, header, start)"
                     " VALUES ('bad', 'w', 'running', x'c1c1c1', x'c1c1c1')")
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(tf.workflow("w").task("a", job=_ok).build())
        assert (await engine.wait(good)).output == "ok"
        bad = await engine.wait("bad")
    assert bad.status == "failed" and "SnapshotDecodeError" in (bad.error or "")


async def test_oversized_values_are_refused_naming_them(autojump_clock: trio.testing.MockClock) -> None:
    big = "x" * (17 * 1024 * 1024)

    async def huge_output(data: Any) -> str:
        return big

    async with tf.open_engine() as engine:
        engine.register(tf.workflow("w").task("t", job=huge_output).build())
        with pytest.raises(tf.ValueTooLargeError, match="workflow input is 17.0 MiB encoded, over the 16 MiB limit"):
            await engine.start("w", big)
        inst = await engine.wait(await engine.start("w"))
    assert inst.status == "failed" and "output of step 't' is 17.0 MiB" in (inst.error or "")


@pytest.mark.parametrize("second", ["symlink", "hard link"])
async def test_a_link_to_an_open_database_is_refused_too(tmp_path: Path, second: str) -> None:
    # Each would let a second engine resume (and run again) what the first one runs.
    path, alias = tmp_path / "flows.db", tmp_path / "current.db"
    first = tf.adapters.SQLiteAdapter(path)
    await first.open()
    (os.symlink if second == "symlink" else os.link)(path, alias)
    with pytest.raises(tf.adapters.DatabaseLockedError, match="in use by another trioflow engine"):
        await tf.adapters.SQLiteAdapter(alias).open()
    await first.close()
    other = tf.adapters.SQLiteAdapter(alias)  # released with the first
    await other.open()
    await other.close()


@pytest.mark.parametrize("count", ["'abc'", "1.5", "-2", str(10**12)])
async def test_a_row_with_a_damaged_record_count_fails_alone(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, count: str) -> None:
    path = tmp_path / "f.db"

    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(tf.workflow("w").task("a", job=_ok).task("b", job=_hang).build())
        for n in range(3):
            await engine.start("w", instance_id=f"i{n}")
        await trio.sleep(1)
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE trioflow_instances SET next_seq = {count} WHERE instance_id = 'i1'")
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(tf.workflow("w").task("a", job=_ok).task("b", job=_ok).build())
        assert (await engine.wait("i0")).status == "completed"
        assert (await engine.wait("i2")).status == "completed"
        damaged = await engine.get_instance("i1")
        assert damaged is not None and damaged.status == "failed"
        assert len(await engine.get_instances("w")) == 3


async def test_the_wakers_looks_read_the_wake_index_not_every_running_instance(tmp_path: Path) -> None:
    """The waker asks for due instances and for the next wake after every batch it wakes: each
    look reads the waiting rows through the index on ``wake_at``, soonest first, and stops; it
    does not read every pending and running row and sort them (a cost that grew with every
    instance waiting, 1 ms a look with 3,000 of them)."""
    adapter = tf.adapters.SQLiteAdapter(tmp_path / "f.db")
    await adapter.open()
    await adapter.close()
    state = new_state(tf.workflow("w").task("a", job=_ok).build(), "x", None, 0.0)
    statements: list[str] = []
    with sqlite3.connect(tmp_path / "f.db") as conn:
        conn.executemany(
            "INSERT INTO trioflow_instances (instance_id, workflow_name, status, start, header, wake_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(f"i{n:05d}", "w", "running", encode_start(state), encode_header(state), 1000.0 - n if n < 10 else None)
             for n in range(3_000)])
        conn.set_trace_callback(statements.append)  # statements with their parameters filled in
        for skip in ((), ("other",), tuple(f"other{k}" for k in range(40))):
            due = _sqlite._due(conn, 995.5, 3, skip)
            assert [stored.instance_id for stored in due] == ["i00009", "i00008", "i00007"]
            assert _sqlite._next_wake(conn, skip) == 991.0
        conn.set_trace_callback(None)
        looks = [s for s in statements if "wake_at" in s and s.startswith("SELECT")]
        assert len(looks) == 9  # the ids due, their rows, the next wake: for each skip
        for sql in looks:
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            # (The rows of the ids found are then sorted: a sort of ``limit`` rows at most.)
            assert not any(step.startswith("SCAN") or "by_status" in step for step in plan), (sql, plan)
            assert any("trioflow_instances_by_wake" in step for step in plan), (sql, plan)
