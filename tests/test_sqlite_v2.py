"""SQLiteAdapter on adapter protocol version 2 (SPEC §10): schema version 2, fenced atomic
checkpoints, group commit of many instances' checkpoints, reads in two queries, and the
migration of a database written by the previous release (tests/fixtures/v1_flows.db).

These drive the adapter directly, not through an engine."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import outcome
import pytest
import trio

import trioflow as tf
from trioflow.adapters import _sqlite
from trioflow._snapshot import Status
from trioflow.adapters._sqlite import SCHEMA_VERSION, SQLiteAdapter

FIXTURE = Path(__file__).parent / "fixtures" / "v1_flows.db"


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection that writes nothing, not even a -wal or -shm file beside ``path``."""
    return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)


async def _opened(path: Path) -> SQLiteAdapter:
    adapter = SQLiteAdapter(path)
    await adapter.open()
    return adapter


async def _gather(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` concurrently (so that they share one batch): each one's result or error."""
    results: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        try:
            results[i] = await calls[i]()
        except Exception as exc:
            results[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(len(calls)):
            nursery.start_soon(one, i)
    return results


# -- layout ------------------------------------------------------------------------------------


async def test_a_new_file_gets_schema_version_2(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    await (await _opened(path)).close()
    with _raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        columns = [(r[1], r[2], r[3]) for r in conn.execute("PRAGMA table_info(trioflow_instances)")]
        assert columns == [
            ("instance_id", "TEXT", 0), ("workflow_name", "TEXT", 1), ("status", "TEXT", 1),
            ("header", "BLOB", 1), ("start", "BLOB", 0), ("next_seq", "INTEGER", 1), ("wake_at", "REAL", 0),
            ("finished_at", "REAL", 0), ("parent_id", "TEXT", 0),
        ]
        columns = [(r[1], r[2], r[3]) for r in conn.execute("PRAGMA table_info(trioflow_signals)")]
        assert columns == [("seq", "INTEGER", 0), ("instance_id", "TEXT", 1), ("name", "TEXT", 1), ("payload", "BLOB", 1)]
        columns = [(r[1], r[2], r[5]) for r in conn.execute("PRAGMA table_info(trioflow_records)")]
        assert columns == [("instance_id", "TEXT", 1), ("seq", "INTEGER", 2), ("data", "BLOB", 0)]
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'trioflow_records'").fetchone()[0]
        assert sql.rstrip().endswith("WITHOUT ROWID")
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(trioflow_instances)")}
        assert {"trioflow_instances_by_workflow", "trioflow_instances_by_status", "trioflow_instances_by_wake",
                "trioflow_instances_by_workflow_name", "trioflow_instances_by_finish"} <= indexes
    # A reopen leaves it as it is.
    await (await _opened(path)).close()
    with _raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2


# -- checkpoints --------------------------------------------------------------------------------


async def test_checkpoints_replace_the_header_and_append_records(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    adapter = await _opened(path)
    assert await adapter.create("i", "w", "pending", start=b"S", header=b"H0") is True
    assert await adapter.load("i") == tf.adapters.StoredInstance(
        instance_id="i", workflow_name="w", status="pending", start=b"S", header=b"H0", records=())
    await adapter.checkpoint("i", "running", b"H1", [b"r0", b"r1"], first_seq=0)
    await adapter.checkpoint("i", "running", b"H2", (), first_seq=2)  # a header alone
    await adapter.checkpoint("i", "completed", b"H3", (b"r2",), first_seq=2)
    stored = await adapter.load("i")
    assert stored is not None
    assert (stored.status, stored.start, stored.header, stored.records) == ("completed", b"S", b"H3", (b"r0", b"r1", b"r2"))
    assert all(type(r) is bytes for r in stored.records)
    assert [s.instance_id for s in await adapter.list_instances("w", "completed")] == ["i"]
    assert await adapter.list_instances("w", "running") == []
    await adapter.close()
    with _raw(path) as conn:
        assert conn.execute("SELECT next_seq FROM trioflow_instances").fetchall() == [(3,)]
        assert conn.execute("SELECT seq, data FROM trioflow_records ORDER BY seq").fetchall() == [
            (0, b"r0"), (1, b"r1"), (2, b"r2")]


async def test_a_checkpoint_at_the_wrong_seq_or_of_an_unknown_instance_writes_nothing(tmp_path: Path) -> None:
    adapter = await _opened(tmp_path / "f.db")
    await adapter.create("i", "w", "running", start=b"S", header=b"H0")
    await adapter.checkpoint("i", "running", b"H1", [b"r0", b"r1"], first_seq=0)
    before = await adapter.load("i")
    for first_seq in (0, 1, 3):  # repeated, overlapping, one lost before it
        with pytest.raises(tf.CheckpointConflictError, match=rf"'i' has 2 records stored; a checkpoint appending at {first_seq} is refused"):
            await adapter.checkpoint("i", "failed", b"BAD", [b"x"], first_seq=first_seq, start=b"BAD")
    with pytest.raises(tf.UnknownInstanceError, match="no stored instance 'nobody'"):
        await adapter.checkpoint("nobody", "running", b"H", [b"x"], first_seq=0)
    assert await adapter.load("i") == before
    assert await adapter.load("nobody") is None
    await adapter.close()


async def test_start_is_set_by_a_checkpoint_that_gives_it(tmp_path: Path) -> None:
    adapter = await _opened(tmp_path / "f.db")
    await adapter.create("i", "w", "running", start=b"S0", header=b"H")
    await adapter.checkpoint("i", "running", b"H", [], first_seq=0, start=b"S1")
    await adapter.checkpoint("i", "running", b"H", [b"r"], first_seq=0)
    stored = await adapter.load("i")
    assert stored is not None and stored.start == b"S1" and stored.records == (b"r",)
    await adapter.close()


async def test_values_that_are_not_bytes_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    adapter = await _opened(tmp_path / "f.db")
    await adapter.create("i", "w", "running", start=b"S", header=b"H")
    before = await adapter.load("i")
    # SQLite itself would store an int or a str in a BLOB column without complaint.
    for bad in (7, "text", None):
        with pytest.raises(tf.adapters.DatabaseError, match=r"record 1 must be bytes, got \w+; nothing was written"):
            await adapter.checkpoint("i", "failed", b"X", [b"r0", bad], first_seq=0)  # type: ignore[list-item]
        with pytest.raises(tf.adapters.DatabaseError, match="header must be bytes"):
            await adapter.checkpoint("i", "failed", bad, [b"r0"], first_seq=0)  # type: ignore[arg-type]
        with pytest.raises(tf.adapters.DatabaseError, match="start must be bytes"):
            await adapter.create("j", "w", "running", start=bad, header=b"H")  # type: ignore[arg-type]
    assert await adapter.load("i") == before and await adapter.load("j") is None
    with pytest.raises(tf.adapters.DatabaseError, match="first_seq must be an int >= 0"):
        await adapter.checkpoint("i", "failed", b"X", [b"r0"], first_seq=-1)
    # Other bytes-like values are stored as bytes.
    records: list[Any] = [bytearray(b"r0"), memoryview(b"r1")]
    await adapter.checkpoint("i", "running", bytearray(b"H1"), records, first_seq=0)  # type: ignore[arg-type]
    stored = await adapter.load("i")
    assert stored is not None and stored.header == b"H1" and stored.records == (b"r0", b"r1")
    assert type(stored.header) is bytes and all(type(r) is bytes for r in stored.records)
    await adapter.close()


async def test_many_instances_checkpoint_in_one_transaction_and_only_the_refused_ones_fail(tmp_path: Path) -> None:
    adapter = await _opened(tmp_path / "f.db")
    ids = [f"i{n:03d}" for n in range(200)]
    assert await _gather(*[lambda i=i: adapter.create(i, "w", "running", start=b"S", header=b"H") for i in ids]) == [True] * 200
    transactions = adapter.transactions

    def checkpoint(i: str) -> Callable[[], Any]:
        first_seq = 5 if i == "i007" else 0  # i007's checkpoint is refused
        return lambda: adapter.checkpoint(i, "running", f"H-{i}".encode(), [f"{i}-0".encode(), f"{i}-1".encode()], first_seq=first_seq)

    results = await _gather(*[checkpoint(i) for i in ids], lambda: adapter.checkpoint("ghost", "running", b"H", [b"x"], first_seq=0))
    assert adapter.transactions - transactions <= 2, "one batch, in at most MAX_BATCH-sized slices"
    assert isinstance(results[7], tf.CheckpointConflictError)
    assert isinstance(results[-1], tf.UnknownInstanceError)
    assert [r for n, r in enumerate(results[:-1]) if n != 7] == [None] * 199
    stored = {s.instance_id: s for s in await adapter.list_instances("w")}
    assert sorted(stored) == ids
    assert stored["i007"].header == b"H" and stored["i007"].records == ()
    assert all(s.header == f"H-{i}".encode() and s.records == (f"{i}-0".encode(), f"{i}-1".encode())
               for i, s in stored.items() if i != "i007")
    await adapter.close()


async def test_a_write_that_finds_the_lock_taken_waits_for_it_within_the_busy_timeout(tmp_path: Path) -> None:
    """Real time: another connection holds the write lock for a moment. The adapter's calls
    neither fail nor block the trio thread meanwhile (its transactions go to the writer, which
    waits for the lock), and once the lock is free they are stored."""
    path = tmp_path / "f.db"
    adapter = SQLiteAdapter(path, busy_timeout=5.0)
    await adapter.open()
    await adapter.create("i", "w", "running", start=b"S", header=b"H0")
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        await trio.to_thread.run_sync(blocker.execute, "BEGIN IMMEDIATE")
        ticks = 0
        done = trio.Event()

        async def ticking() -> None:
            nonlocal ticks
            while not done.is_set():
                await trio.sleep(0.01)
                ticks += 1

        async def release() -> None:
            await trio.sleep(0.3)
            await trio.to_thread.run_sync(blocker.execute, "COMMIT")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticking)
            nursery.start_soon(release)
            results = await _gather(
                lambda: adapter.checkpoint("i", "running", b"H1", [b"r0"], first_seq=0),
                lambda: adapter.create("j", "w", "running", start=b"S", header=b"H0"),
                lambda: adapter.load("i"))
            done.set()
        assert results[:2] == [None, True]
        assert ticks >= 10, "the trio thread kept running while the lock was held"
        stored = await adapter.load("i")
        assert stored is not None and (stored.header, stored.records) == (b"H1", (b"r0",))
    finally:
        blocker.close()
        await adapter.close()


async def test_a_checkpoint_that_fails_part_way_writes_nothing_and_fails_alone(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    adapter = await _opened(path)
    for i in ("bad", "good1", "good2"):
        await adapter.create(i, "w", "running", start=b"S", header=b"H0")
    await adapter.close()
    with _raw(path) as conn:
        # The second record of 'bad' fails to insert: after its header update and first record.
        conn.execute(
            "CREATE TRIGGER fail_part_way BEFORE INSERT ON trioflow_records"
            " WHEN NEW.instance_id = 'bad' AND NEW.seq = 1 BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
    adapter = await _opened(path)
    results = await _gather(
        lambda: adapter.checkpoint("good1", "running", b"H1", [b"g0", b"g1"], first_seq=0),
        lambda: adapter.checkpoint("bad", "completed", b"H1", [b"b0", b"b1"], first_seq=0, start=b"S1"),
        lambda: adapter.checkpoint("good2", "completed", b"H1", [b"g0"], first_seq=0),
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], tf.adapters.DatabaseError) and "disk says no" in str(results[1])
    assert not isinstance(results[1], tf.adapters.DatabaseUnavailableError), "a constraint does not pass by itself"
    bad = await adapter.load("bad")
    assert bad is not None and (bad.status, bad.start, bad.header, bad.records) == ("running", b"S", b"H0", ())
    good = await adapter.load("good1")
    assert good is not None and good.header == b"H1" and good.records == (b"g0", b"g1")
    good = await adapter.load("good2")
    assert good is not None and good.status == "completed" and good.records == (b"g0",)
    with _raw(path) as conn:
        assert conn.execute("SELECT next_seq FROM trioflow_instances WHERE instance_id = 'bad'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM trioflow_records WHERE instance_id = 'bad'").fetchone() == (0,)
        conn.execute("DROP TRIGGER fail_part_way")  # the failure passes
    # The same checkpoint again: everything of it is stored, its status change included.
    await adapter.checkpoint("bad", "completed", b"H1", [b"b0", b"b1"], first_seq=0, start=b"S1")
    bad = await adapter.load("bad")
    assert bad is not None and (bad.status, bad.start, bad.header, bad.records) == ("completed", b"S1", b"H1", (b"b0", b"b1"))
    assert [s.instance_id for s in await adapter.list_instances("w", "completed")] == ["bad", "good2"]
    await adapter.close()


async def test_ops_on_one_instance_in_one_batch_keep_their_order(tmp_path: Path) -> None:
    """Creates and checkpoints of one batch are applied in runs (creates first); a run never
    reorders two ops on the same instance. Driven below the trio side, where the order of the
    ops in the batch is exact."""
    path = tmp_path / "f.db"
    adapter = await _opened(path)
    await adapter.create("old", "w", "running", start=b"S", header=b"H")
    await adapter.close()

    def create(i: str) -> Any:
        return ("create", (i, "w", "running", b"S", b"H", None))

    def checkpoint(i: str, first_seq: int, *records: bytes, status: str = "running") -> Any:
        return ("checkpoint", (status, f"H{first_seq}".encode(), None, len(records), None, i, first_seq, None,
                               records, (), None))

    batch = [
        checkpoint("x", 0, b"x0"),          # before x is created: unknown
        create("x"),
        checkpoint("x", 0, b"x0"),
        checkpoint("x", 1, b"x1", b"x2"),   # two checkpoints of x in one run
        create("y"),
        create("y"),                        # a second create of y in the same run: refused
        checkpoint("old", 0, b"o0"),
        create("z"),
        checkpoint("old", 1, b"o1"),
        checkpoint("z", 0, b"z0", status="completed"),
        ("delete", ("z",)),                 # gives the status it deleted
        checkpoint("z", 1, b"z1"),          # after the delete: unknown
        ("select", ("i.instance_id = ?", ("x",))),
    ]
    with _raw(path) as conn:
        results = [result for _, result in _sqlite._apply(conn, [(None, op) for op in batch], {})]
    values: list[Any] = [r.value if isinstance(r, outcome.Value) else type(r.error).__name__ for r in results]  # type: ignore[attr-defined]
    assert values[:12] == [
        "UnknownInstanceError", True, None, None, True, False, None, True, None, None, "completed",
        "UnknownInstanceError",
    ]
    [x] = values[12]
    assert x.records == (b"x0", b"x1", b"x2") and x.header == b"H1"
    adapter = await _opened(path)
    old = await adapter.load("old")
    assert old is not None and old.records == (b"o0", b"o1")
    assert await adapter.load("z") is None
    await adapter.close()


async def test_the_status_indexes_follow_every_status_a_checkpoint_stores(tmp_path: Path) -> None:
    """Checkpoints that keep their instance's status skip writing it (the writer remembers what it
    committed); every change must still reach the status indexes, batched or not."""
    path = tmp_path / "f.db"
    adapter = await _opened(path)
    ids = [f"i{n:02d}" for n in range(40)]
    await _gather(*[lambda i=i: adapter.create(i, "w", "pending", start=b"S", header=b"H") for i in ids])
    steps: list[Status] = ["running", "running", "pending", "pending", "running", "completed", "completed", "running"]
    for seq, status in enumerate(steps):
        # Half the instances move on together (one batch), the other half one by one.
        await _gather(*[lambda i=i: adapter.checkpoint(i, status, f"H{seq}".encode(), [b"r"], first_seq=seq) for i in ids[::2]])
        for i in ids[1::2]:
            await adapter.checkpoint(i, status, f"H{seq}".encode(), [b"r"], first_seq=seq)
        for listed_status in ("pending", "running", "completed"):
            listed = sorted(s.instance_id for s in await adapter.list_instances("w", listed_status))  # type: ignore[arg-type]
            assert listed == (ids if listed_status == status else []), (seq, status, listed_status)
        assert len(await adapter.resumable()) == (40 if status != "completed" else 0)
    await adapter.close()
    with _raw(path) as conn:
        assert conn.execute("SELECT DISTINCT status, next_seq FROM trioflow_instances").fetchall() == [("running", 8)]
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# -- reads and deletes --------------------------------------------------------------------------


async def test_reads_take_two_queries_whatever_the_number_of_instances(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = connect(*args, **kwargs)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)  # the module the adapter connects through
    adapter = await _opened(tmp_path / "f.db")
    ids = [f"i{n:03d}" for n in range(300)]
    await _gather(*[lambda i=i: adapter.create(i, "w", "running", start=b"S", header=b"H") for i in ids])
    await _gather(*[lambda i=i: adapter.checkpoint(i, "running", b"H", [b"a", b"b", b"c"], first_seq=0) for i in ids[::2]])

    def selects() -> int:
        return sum(s.lstrip().upper().startswith("SELECT") for s in statements)

    for read in (adapter.resumable, lambda: adapter.list_instances("w"), lambda: adapter.list_instances("w", "running")):
        statements.clear()
        stored = await read()
        assert sorted(s.instance_id for s in stored) == ids
        assert all(s.records == ((b"a", b"b", b"c") if int(s.instance_id[1:]) % 2 == 0 else ()) for s in stored)
        assert selects() == 2, statements
    statements.clear()
    # A load also reads the instance's pending signals: its row and its signals, and no records
    # query for an instance without records.
    assert (await adapter.load("i001")) is not None and selects() == 2, statements
    await adapter.close()


async def test_delete_removes_the_instance_and_its_records(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    adapter = await _opened(path)
    for i in ("a", "b"):
        await adapter.create(i, "w", "running", start=b"S", header=b"H")
        await adapter.checkpoint(i, "completed", b"H", [b"0", b"1"], first_seq=0)
    assert await adapter.delete("a") is True
    assert await adapter.delete("a") is False
    # The id can be used again, from seq 0.
    assert await adapter.create("a", "w", "running", start=b"S", header=b"H") is True
    await adapter.checkpoint("a", "running", b"H", [b"new"], first_seq=0)
    stored = await adapter.load("a")
    assert stored is not None and stored.records == (b"new",)
    await adapter.close()
    with _raw(path) as conn:
        assert conn.execute("SELECT instance_id, seq FROM trioflow_records ORDER BY 1, 2").fetchall() == [
            ("a", 0), ("b", 0), ("b", 1)]


async def test_close_finishes_the_calls_of_its_pass_and_refuses_later_ones(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    adapter = await _opened(path)
    await adapter.create("i", "w", "running", start=b"S", header=b"H")
    done: list[Any] = []

    async def write() -> None:
        await adapter.checkpoint("i", "completed", b"H1", [b"r"], first_seq=0)
        done.append("written")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        while not adapter._pending and not done:  # the write is queued (usually not handed over yet)
            await trio.sleep(0)
        await adapter.close()
    assert done == ["written"]
    with pytest.raises(tf.adapters.DatabaseError, match="is not open"):
        await adapter.checkpoint("i", "completed", b"H2", [b"r"], first_seq=1)
    adapter = await _opened(path)
    stored = await adapter.load("i")
    assert stored is not None and stored.status == "completed" and stored.records == (b"r",)
    await adapter.close()


async def test_close_while_a_transaction_commits_finishes_it_and_the_calls_waiting_behind_it(tmp_path: Path) -> None:
    """One transaction is in flight at a time; calls made meanwhile wait for the next. A close
    then lets both finish (the later ones in the writer), and nobody is left waiting."""
    path = tmp_path / "f.db"
    adapter = await _opened(path)
    ids = [f"i{n:03d}" for n in range(600)]  # more than one transaction's worth
    written: list[str] = []

    async def create(i: str) -> None:
        await adapter.create(i, "w", "running", start=b"S", header=b"H")
        written.append(i)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in ids:
                nursery.start_soon(create, i)
            # A transaction in flight and calls waiting behind it (600 calls take three).
            while not (adapter._committing and adapter._pending):
                await trio.sleep(0)
            await adapter.close()
    assert sorted(written) == ids
    adapter = await _opened(path)
    assert sorted(s.instance_id for s in await adapter.list_instances("w")) == ids
    await adapter.close()


@pytest.mark.parametrize("with_listing", [False, True], ids=["statements-in-the-loop", "whole-in-the-writer"])
async def test_a_writer_thread_stopped_by_a_bug_fails_every_call_instead_of_leaving_it_waiting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, with_listing: bool) -> None:
    adapter = await _opened(tmp_path / "f.db")
    await adapter.create("i", "w", "running", start=b"S", header=b"H")

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(_sqlite, "_apply", broken)
    listing = [lambda: adapter.list_instances("w")] if with_listing else []  # a listing runs whole in the writer
    with trio.fail_after(10):
        results = await _gather(
            lambda: adapter.checkpoint("i", "running", b"H1", [b"r0"], first_seq=0),
            lambda: adapter.create("j", "w", "running", start=b"S", header=b"H"), *listing)
        assert all(isinstance(r, tf.adapters.DatabaseError) and "a bug in the writer" in str(r) for r in results), results
        with pytest.raises(tf.adapters.DatabaseError, match="writer thread .* stopped"):
            await adapter.load("i")
        await adapter.close()
    assert "writer thread" in caplog.text


# -- schema version 1 ---------------------------------------------------------------------------


def _v1_rows(path: Path) -> list[tuple[str, str, str, bytes]]:
    with _read_only(path) as conn:
        rows: list[tuple[str, str, str, bytes]] = conn.execute(
            "SELECT instance_id, workflow_name, status, snapshot FROM trioflow_instances ORDER BY rowid").fetchall()
    return rows


async def test_a_database_written_by_the_previous_release_is_migrated(tmp_path: Path) -> None:
    v1 = _v1_rows(FIXTURE)
    assert [(r[0], r[2]) for r in v1] == [
        ("done-1", "completed"), ("failed-1", "failed"), ("running-1", "running"), ("pending-1", "pending")]
    path = tmp_path / "flows.db"
    shutil.copyfile(FIXTURE, path)
    with _raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    adapter = await _opened(path)
    with _raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert [r[1] for r in conn.execute("PRAGMA table_info(trioflow_instances)")] == [
            "instance_id", "workflow_name", "status", "header", "start", "next_seq", "wake_at", "finished_at",
            "parent_id"]
    stored = await adapter.list_instances("fixture")
    assert [(s.instance_id, s.workflow_name, s.status, s.header) for s in stored] == v1, "v1 snapshots become headers, unchanged"
    assert all(s.start is None and s.records == () for s in stored)
    for instance_id, _, _, snapshot in v1:
        one = await adapter.load(instance_id)
        assert one is not None and one.header == snapshot and one.start is None
    assert [s.instance_id for s in await adapter.resumable()] == ["running-1", "pending-1"]
    # The engine's first checkpoint of a v1 row writes its start and every record from seq 0.
    await adapter.checkpoint("running-1", "running", b"H", [b"a", b"b"], first_seq=0, start=b"S")
    with pytest.raises(tf.CheckpointConflictError):
        await adapter.checkpoint("pending-1", "running", b"H", [b"a"], first_seq=1, start=b"S")
    await adapter.close()
    adapter = await _opened(path)  # a reopen does not migrate again
    running = await adapter.load("running-1")
    assert running is not None and (running.start, running.header, running.records) == (b"S", b"H", (b"a", b"b"))
    pending = await adapter.load("pending-1")
    assert pending is not None and pending.header == v1[3][3] and pending.start is None
    await adapter.close()
    assert _v1_rows(FIXTURE) == v1, "the fixture itself is never written"


async def test_a_migration_that_fails_leaves_the_file_at_version_1(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    with _raw(path) as conn:
        # A version 1 layout with a column in the way of the migration's second step.
        conn.execute("CREATE TABLE trioflow_instances (instance_id TEXT PRIMARY KEY, workflow_name TEXT NOT NULL,"
                     " status TEXT NOT NULL, snapshot BLOB NOT NULL, start BLOB)")
        conn.execute("INSERT INTO trioflow_instances VALUES ('i', 'w', 'running', x'00', NULL)")
        conn.execute("PRAGMA user_version = 1")
    with pytest.raises(tf.adapters.DatabaseError, match="cannot open .* as a trioflow database: duplicate column name: start"):
        await SQLiteAdapter(path).open()
    with _raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert [r[1] for r in conn.execute("PRAGMA table_info(trioflow_instances)")] == [
            "instance_id", "workflow_name", "status", "snapshot", "start"], "the rename was rolled back"
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'trioflow_records'").fetchone() is None
    await (await _opened(tmp_path / "other.db")).close()  # and the lock was released
    await (await _opened(tmp_path / "f.db.2")).close()


async def test_a_database_of_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    with _raw(path) as conn:
        conn.execute("PRAGMA user_version = 3")
    with pytest.raises(tf.adapters.DatabaseError, match=r"written by a newer trioflow \(schema version 3; this one reads up to 2\)"):
        await SQLiteAdapter(path).open()
    with _raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


async def test_thousands_of_reads_pending_at_once_end_in_one_pass_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads end in the event loop's thread, one transaction after another: the transactions
    pending at once (here each read in one of its own) are followed in a loop, not by calls
    nested one in the other (329 deep for these, at 9560075: a backlog some three times as
    deep would have been a RecursionError in the event loop)."""
    adapter = SQLiteAdapter(tmp_path / "reads.db")
    await adapter.open()
    try:
        for n in range(3):
            await adapter.create(f"i{n}", "w", "completed", start=b"s", header=b"h")
        monkeypatch.setattr(_sqlite, "MAX_BATCH", 1)
        nesting = [0, 0]
        start_next = _sqlite.SQLiteAdapter._next_transaction

        def counted(self: SQLiteAdapter) -> None:
            nesting[0] += 1
            nesting[1] = max(nesting)
            try:
                start_next(self)
            finally:
                nesting[0] -= 1

        monkeypatch.setattr(_sqlite.SQLiteAdapter, "_next_transaction", counted)
        found: list[str] = []

        async def read(n: int) -> None:
            stored = await adapter.load(f"i{n % 3}")
            assert stored is not None
            found.append(stored.instance_id)

        async with trio.open_nursery() as nursery:
            for n in range(3_000):
                nursery.start_soon(read, n)
        assert sorted(found) == sorted(f"i{n % 3}" for n in range(3_000))
        assert nesting[1] == 1
    finally:
        await adapter.close()
