"""Review of 9560075 and ac8326a: a SQLite transaction that only reads (``load``, ``signals``,
``next_wake``) ends in the event loop's thread, and the transactions that end there are
followed in a loop (now: each in a callback of its own).

What a user relies on, checked here: every call answers as if the calls ran one at a time in
the order they were made (a read made after a write returned sees it; one made while a write
is in flight sees it whole or not at all); the connection is never used by two threads at
once; a read that fails (in the loop's thread, in the writer, or both) gets the adapter's own
error and leaves the adapter usable; a cancelled reader takes nothing from anyone; reads
pending when the adapter closes, or when its writer stops, are answered; the engine's reads of
instances not in memory are right while it writes hard.

Two tests pinned bugs, fixed with them (see each one's docstring):

* ``test_a_read_is_answered_while_another_connection_holds_the_write_lock``: a read-only
  transaction began with ``BEGIN IMMEDIATE``, so it took (and waited for) the write lock, and
  failed with ``DatabaseUnavailableError`` while any other connection wrote, though a WAL
  reader needs no lock at all.
* ``test_a_backlog_of_reads_lets_other_tasks_run_between_its_transactions``: ac8326a ran a
  whole backlog of read transactions in one go in the event loop's thread; before 9560075 the
  loop ran other tasks between two of them.
"""

from __future__ import annotations

import contextlib
import functools
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import SQLiteAdapter, _sqlite
from trioflow.testing import open_test_engine

RESUMABLE = {"pending", "running"}


# -- a connection that notices being used by two threads at once, and fails on demand -------------


class _Guarded(sqlite3.Connection):
    """The adapter's connection, made through ``sqlite3.connect(factory=...)``: every
    ``execute``/``executemany`` holds a non-blocking lock, so that two threads inside the
    connection at once are seen (``overlaps``); each call notes its thread (``threads``).
    ``fail`` may raise for a statement (``sql``, whether in the event loop's thread); ``gate``
    holds the writer thread's ``COMMIT`` until set."""

    overlaps: list[tuple[str, str]]
    threads: set[str]
    fail: Callable[[str, bool], None] | None
    gate: threading.Event | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = threading.Lock()
        self.overlaps = []
        self.threads = set()
        self.fail = None
        self.gate = None

    @contextlib.contextmanager
    def _using(self, sql: str) -> Iterator[None]:
        main = threading.current_thread() is threading.main_thread()
        self.threads.add("loop" if main else threading.current_thread().name)
        if not self._guard.acquire(blocking=False):
            self.overlaps.append((threading.current_thread().name, sql))
            yield
            return
        try:
            if self.fail is not None:
                self.fail(sql, main)
            if not main and sql == "COMMIT":
                if self.gate is not None:
                    self.gate.wait(10)
                time.sleep(0.0002)  # (a wider window for the loop's thread to step in)
            yield
        finally:
            self._guard.release()

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        with self._using(sql):
            return super().execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        with self._using(sql):
            return super().executemany(sql, *args)


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adapters opened in the test get a :class:`_Guarded` connection."""
    monkeypatch.setattr(sqlite3, "connect", functools.partial(sqlite3.connect, factory=_Guarded))


def _conn(adapter: SQLiteAdapter) -> _Guarded:
    conn = adapter._conn
    assert isinstance(conn, _Guarded)
    return conn


def _io_error() -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("disk I/O error")
    exc.sqlite_errorcode = 10  # SQLITE_IOERR: what SQLite's own error carries
    exc.sqlite_errorname = "SQLITE_IOERR"
    return exc


async def _opened(path: Path, **options: Any) -> SQLiteAdapter:
    adapter = SQLiteAdapter(path, **options)
    await adapter.open()
    return adapter


def _raw(path: Path) -> sqlite3.Connection:
    # (Not through the test's factory: the adapter's guard is for the adapter's connection.)
    return sqlite3.Connection(str(path), isolation_level=None)


# -- ordering: every call answers as if run alone, in call order ------------------------------------


class _Model:
    """The adapter's contract for the calls used here, applied one at a time."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}  # in creation order (dicts keep it)
        self.signals: dict[int, tuple[str, str, bytes]] = {}
        self.last_seq = 0

    def apply(self, kind: str, args: tuple[Any, ...]) -> tuple[str, Any]:
        if kind == "create":
            iid, workflow, status, start, header = args[:5]
            if iid in self.rows:
                return "value", False
            self.rows[iid] = dict(workflow=workflow, status=status, start=bytes(start), header=bytes(header),
                                  records=[], wake_at=None)
            return "value", True
        if kind == "checkpoint":
            status, header, _start, _count, wake_at, iid, first_seq, _finished, records, consumed, _notice = args
            row = self.rows.get(iid)
            if row is None:  # (before its signals: docs/adapters.md, tests/test_review_of_adapter_wakes.py)
                return "error", tf.UnknownInstanceError
            if consumed and not all(seq in self.signals and self.signals[seq][0] == iid for seq in consumed):
                return "error", tf.CheckpointConflictError
            if len(row["records"]) != first_seq:
                return "error", tf.CheckpointConflictError
            row.update(status=status, header=bytes(header), wake_at=wake_at)
            row["records"] += [bytes(r) for r in records]
            for seq in consumed:
                del self.signals[seq]
            return "value", None
        if kind == "signal":
            iid, name, payload = args
            row = self.rows.get(iid)
            if row is None:
                return "value", (False, None)
            if row["status"] not in RESUMABLE:
                return "value", (True, None)
            self.last_seq += 1
            self.signals[self.last_seq] = (iid, name, bytes(payload))
            return "value", (True, self.last_seq)
        if kind == "signals":
            return "value", self._signals(args[0])
        if kind == "load":
            row = self.rows.get(args[0])
            if row is None:
                return "value", None
            return "value", (args[0], row["workflow"], row["status"], row["start"], row["header"],
                             tuple(row["records"]), tuple(self._signals(args[0])))
        if kind == "delete":
            row = self.rows.get(args[0])
            if row is None:
                return "value", None
            if row["status"] not in RESUMABLE:
                del self.rows[args[0]]
                self.signals = {seq: s for seq, s in self.signals.items() if s[0] != args[0]}
            return "value", row["status"]
        if kind == "next_wake":
            wakes = [row["wake_at"] for row in self.rows.values()
                     if row["status"] in RESUMABLE and row["wake_at"] is not None]
            return "value", min(wakes, default=None)
        if kind == "list":
            return "value", [(iid, row["status"]) for iid, row in self.rows.items()]
        raise AssertionError(kind)

    def _signals(self, iid: str) -> list[tuple[int, str, bytes]]:
        return [(seq, name, payload) for seq, (owner, name, payload) in sorted(self.signals.items()) if owner == iid]


def _seen(kind: str, value: Any) -> Any:
    """What a call answered, in the model's terms."""
    if kind == "load" and value is not None:
        return (value.instance_id, value.workflow_name, value.status, value.start, value.header,
                tuple(value.records), tuple(value.signals))
    if kind == "signal":
        return tuple(value)
    if kind == "list":
        return [(s.instance_id, s.status) for s in value]
    return value


def _logging_submits(adapter: SQLiteAdapter) -> list[list[Any]]:
    """Note every operation in the order it was handed to the adapter (the order of its
    ``_pending`` list), with what it answered."""
    log: list[list[Any]] = []
    submit = adapter._submit

    def logged(op: Any) -> Any:
        entry: list[Any] = [op, None]
        log.append(entry)
        parked = submit(op)

        async def answer() -> Any:
            try:
                value = await parked
            except Exception as exc:
                entry[1] = ("error", type(exc))
                raise
            entry[1] = ("value", value)
            return value

        return answer()

    adapter._submit = logged  # type: ignore[method-assign]
    return log


async def _random_client(adapter: SQLiteAdapter, rng: random.Random, ids: list[str], calls: int) -> None:
    for _ in range(calls):
        for _ in range(rng.choice((0, 0, 1, 3))):
            await trio.sleep(0)
        iid = rng.choice(ids)
        kind = rng.choices(
            ["create", "checkpoint", "signal", "load", "signals", "next_wake", "delete", "list"],
            weights=[2, 4, 2, 6, 4, 2, 1, 1])[0]
        try:
            if kind == "create":
                await adapter.create(iid, "w", rng.choice(["pending", "running"]), start=b"s" + iid.encode(),
                                     header=b"h0")
            elif kind == "checkpoint":
                stored = await adapter.load(iid) if rng.random() < 0.8 else None
                first = len(stored.records) if stored is not None else rng.randrange(3)
                consumed = [seq for seq, _, _ in stored.signals][:1] if stored is not None and rng.random() < 0.5 else []
                status = rng.choice(["running", "running", "running", "completed", "failed"])
                await adapter.checkpoint(
                    iid, status, b"h%d" % rng.randrange(1000), [b"r%d" % first, b"x"][: rng.randrange(3)],
                    first_seq=first, consumed=consumed,
                    wake_at=rng.choice([None, None, float(rng.randrange(100, 200))]))
            elif kind == "signal":
                await adapter.send_signal(iid, rng.choice("ab"), b"p%d" % rng.randrange(100))
            elif kind == "load":
                await adapter.load(iid)
            elif kind == "signals":
                await adapter.signals(iid)
            elif kind == "next_wake":
                await adapter.next_wake()
            elif kind == "delete":
                await adapter.delete(iid)
            else:
                await adapter.list_instances()
        except (tf.CheckpointConflictError, tf.UnknownInstanceError, tf.InstanceStillRunningError):
            pass


@pytest.mark.parametrize("seed", range(6))
async def test_reads_and_writes_of_many_tasks_answer_as_if_run_one_at_a_time_in_call_order(
        tmp_path: Path, guarded: None, seed: int) -> None:
    """Twelve tasks make random calls on three instances, interleaved at random. Replayed one at a
    time in the order they were handed to the adapter, on a model of its contract, every
    answer is the same: a read right after a write returned sees it, and a read made while a
    write was in flight sees all of it or none of it. The connection was never used by two
    threads at once, and reads did end in the event loop's thread."""
    adapter = await _opened(tmp_path / "f.db", synchronous="NORMAL")
    try:
        log = _logging_submits(adapter)
        rng = random.Random(seed)
        ids = [f"i{n}" for n in range(3)]
        async with trio.open_nursery() as nursery:
            for n in range(12):
                nursery.start_soon(_random_client, adapter, random.Random(rng.random()), ids, 40)
        conn = _conn(adapter)
        model = _Model()
        for n, ((kind, args), answered) in enumerate(log):
            expected = model.apply(kind, args)
            assert answered is not None, f"call {n} ({kind}) never answered"
            got = answered if answered[0] == "error" else ("value", _seen(kind, answered[1]))
            assert got == expected, f"call {n}: {kind}{args!r} answered {got!r}, one at a time {expected!r}"
        assert conn.overlaps == [], "the connection was used by two threads at once"
        assert "loop" in conn.threads and any(name.startswith("trioflow-sqlite-writer") for name in conn.threads)
        assert adapter._pending == [] and not adapter._committing
    finally:
        await adapter.close()


async def test_each_read_made_right_after_a_write_returned_sees_that_write(tmp_path: Path, guarded: None) -> None:
    """Read-your-writes, read by read, while forty other tasks keep the adapter busy with
    reads (each one's transaction ending in the loop's thread) and writes of their own."""
    adapter = await _opened(tmp_path / "f.db", synchronous="NORMAL")
    try:
        for n in range(40):
            await adapter.create(f"noise{n}", "w", "running", start=b"s", header=b"h")
        done = trio.Event()

        async def noise(n: int) -> None:
            seq = 0
            while not done.is_set():
                await adapter.checkpoint(f"noise{n}", "running", b"h", [b"r"], first_seq=seq)
                seq += 1
                await adapter.load(f"noise{(n + 1) % 40}")
                await adapter.signals(f"noise{(n + 2) % 40}")

        async with trio.open_nursery() as nursery:
            for n in range(40):
                nursery.start_soon(noise, n)
            for k in range(30):
                iid = f"me{k}"
                assert await adapter.create(iid, "w", "running", start=b"s", header=b"h") is True
                assert (await adapter.load(iid)) is not None
                seq = await adapter.send_signal(iid, "go", b"%d" % k)
                assert [s for s, _, _ in await adapter.signals(iid)] == [seq]
                await adapter.checkpoint(iid, "running", b"h1", [b"a", b"b"], first_seq=0, consumed=[seq],
                                         wake_at=1000.0 - k)
                stored = await adapter.load(iid)
                assert stored is not None and (stored.header, stored.records, stored.signals) == (b"h1", (b"a", b"b"), ())
                assert await adapter.signals(iid) == []
                assert await adapter.next_wake() == 1000.0 - k
                await adapter.checkpoint(iid, "completed", b"h2", [b"c"], first_seq=2)
                stored = await adapter.load(iid)
                assert stored is not None and (stored.status, stored.records) == ("completed", (b"a", b"b", b"c"))
                assert await adapter.delete(iid) is True
                assert await adapter.load(iid) is None and await adapter.signals(iid) == []
            done.set()
        assert _conn(adapter).overlaps == []
    finally:
        await adapter.close()


# -- the write lock --------------------------------------------------------------------------------


async def test_a_read_is_answered_while_another_connection_holds_the_write_lock(tmp_path: Path) -> None:
    """(Failed before the fix it came with.) The database is in WAL mode, where readers never
    wait for a writer; but a transaction of reads alone began with ``BEGIN IMMEDIATE`` (``_run_inline``, and the
    writer's ``_apply`` when that fails), which took the write lock. So while any other
    connection writes (an operator's ``sqlite3`` shell, a migration script, the read-only CLI
    the docs plan with a write of its own) every ``load``, ``signals`` and ``next_wake`` waits
    up to ``busy_timeout`` (5 s by default, the whole adapter queued behind it, one transaction
    in flight) and then fails with ``DatabaseUnavailableError``; ``engine.get_instance()`` and
    ``engine.wait()`` of an instance not in memory with it. Here ``busy_timeout=0``, so that
    it fails at once rather than after 5 s. Since 9560075 a transaction of reads ends in the
    loop's thread and commits nothing: it can begin with a deferred ``BEGIN`` (a WAL read
    transaction takes no lock; the writer's ``_apply`` likewise for a batch of reads alone)."""
    path = tmp_path / "f.db"
    adapter = await _opened(path, busy_timeout=0)
    try:
        await adapter.create("i", "w", "running", start=b"s", header=b"h")
        seq = await adapter.send_signal("i", "go", b"p")
        await adapter.checkpoint("i", "running", b"h1", [b"r"], first_seq=0, wake_at=500.0)
        other = _raw(path)
        other.execute("BEGIN IMMEDIATE")
        other.execute("CREATE TABLE IF NOT EXISTS operators_notes (note TEXT)")
        try:
            stored = await adapter.load("i")
            assert stored is not None and stored.records == (b"r",) and stored.signals == ((seq, "go", b"p"),)
            assert await adapter.signals("i") == [(seq, "go", b"p")]
            assert await adapter.next_wake() == 500.0
        finally:
            other.execute("ROLLBACK")
            other.close()
    finally:
        await adapter.close()


# -- starvation ------------------------------------------------------------------------------------


async def test_a_backlog_of_reads_lets_other_tasks_run_between_its_transactions(tmp_path: Path) -> None:
    """(Failed before the fix it came with, since ac8326a.) 2,000 ``load`` calls pending at once
    make 8 transactions of 256; each ends in the event loop's thread, and ``_next_transaction``
    followed them in a loop: all 8 ran back to back in one callback, and no other task ran until
    the whole backlog was read. Before 9560075 each went through the writer and other tasks ran
    between two of them (the 2,000 loads saw the ticker below advance 7 times; before the fix, not once).
    The stall grows with the backlog, not with ``MAX_BATCH``: 1,000 loads of 20 instances of
    2,000 records each stalled the loop 2.3 s in one go here (1.0 s at most before 9560075):
    every other instance's steps, timers and every ``wait()`` of the engine stand still
    meanwhile. A fix that keeps ac8326a's flat stack: end ``_next_transaction`` after a read
    transaction, handing the rest to ``self._token.run_sync_soon(self._flush)`` (trio runs
    callbacks queued meanwhile after a checkpoint of its own, so ready tasks run in between)."""
    adapter = await _opened(tmp_path / "f.db")
    try:
        await adapter.create("i", "w", "completed", start=b"s", header=b"h")
        ticks = 0
        seen: list[int] = []
        load = _sqlite._OPS["load"]

        def noted(conn: sqlite3.Connection, iid: str) -> Any:
            seen.append(ticks)
            return load(conn, iid)

        done = trio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await trio.sleep(0)

        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(_sqlite._OPS, "load", noted)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker)
                await trio.sleep(0)
                async with trio.open_nursery() as readers:
                    for _ in range(2000):
                        readers.start_soon(adapter.load, "i")
                done.set()
        assert len(seen) == 2000
        batches = -(-2000 // _sqlite.MAX_BATCH)
        # (trio runs each ready task once per scheduling round, in an order of its choosing:
        # with one read transaction a round, the ticker turns at least once a round, save the
        # first and the last.)
        assert max(seen) - min(seen) >= batches - 2, (
            f"{batches} read transactions ran while another ready task turned {max(seen) - min(seen)} times")
    finally:
        await adapter.close()


async def test_neither_reads_nor_writes_starve_and_reads_never_go_back_in_time(tmp_path: Path, guarded: None) -> None:
    """200 tasks read in a loop (each read its own transaction's worth of company, ending in the
    loop's thread) while 20 writers checkpoint in a loop, until every writer has made 15
    checkpoints: the writers get through (no starvation by reads), every reader gets through
    rounds too, and each reader's successive loads of an instance never see fewer records than
    it saw before, nor fewer than its writer had been told were stored when the read was made."""
    adapter = await _opened(tmp_path / "f.db", synchronous="NORMAL")
    try:
        for n in range(20):
            await adapter.create(f"i{n}", "w", "running", start=b"s", header=b"h")
        acknowledged = [0] * 20
        writers_done = trio.Event()
        rounds = [0] * 200

        async def writer(n: int) -> None:
            for seq in range(15):
                await adapter.checkpoint(f"i{n}", "running", b"h%d" % seq, [b"r%d" % seq], first_seq=seq)
                acknowledged[n] = seq + 1

        async def reader(k: int) -> None:
            last = [0] * 20
            while not writers_done.is_set():
                n = (k + rounds[k]) % 20
                floor = acknowledged[n]
                stored = await adapter.load(f"i{n}")
                assert stored is not None
                assert len(stored.records) >= max(last[n], floor), (k, n, len(stored.records), last[n], floor)
                assert stored.records == tuple(b"r%d" % i for i in range(len(stored.records)))
                last[n] = len(stored.records)
                rounds[k] += 1

        async with trio.open_nursery() as nursery:
            for k in range(200):
                nursery.start_soon(reader, k)
            async with trio.open_nursery() as writers:
                for n in range(20):
                    writers.start_soon(writer, n)
            writers_done.set()
        assert acknowledged == [15] * 20 and min(rounds) >= 1
        assert _conn(adapter).overlaps == []
    finally:
        await adapter.close()


# -- failures --------------------------------------------------------------------------------------


async def test_a_read_failing_in_the_loops_thread_is_run_again_by_the_writer_and_answers(
        tmp_path: Path, guarded: None) -> None:
    """A read whose statement fails in the event loop's thread (an I/O error), and one whose
    ``COMMIT`` fails there, are rolled back and run again whole by the writer: both answer
    right, and the adapter goes on (nothing left open, no transaction left in flight)."""
    adapter = await _opened(tmp_path / "f.db")
    try:
        await adapter.create("i", "w", "running", start=b"s", header=b"h")
        seq = await adapter.send_signal("i", "go", b"p")
        conn = _conn(adapter)
        for failing in ("SELECT", "COMMIT"):
            times = [0]

            def fail(sql: str, main: bool, failing: str = failing, times: list[int] = times) -> None:
                if main and sql.startswith(failing) and times[0] == 0:
                    times[0] += 1
                    raise _io_error()

            conn.fail = fail
            results = await _gather(lambda: adapter.load("i"), lambda: adapter.signals("i"),
                                    lambda: adapter.next_wake())
            conn.fail = None
            assert times[0] == 1, f"no {failing} ran in the loop's thread"
            stored = results[0]
            assert stored is not None and stored.signals == ((seq, "go", b"p"),), results
            assert results[1:] == [[(seq, "go", b"p")], None]
            assert not conn.in_transaction and not adapter._committing
        await adapter.checkpoint("i", "completed", b"h", [b"r"], first_seq=0, consumed=[seq])
        assert (await adapter.load("i")).status == "completed"  # type: ignore[union-attr]
        assert conn.overlaps == []
    finally:
        await adapter.close()


async def test_a_read_failing_in_both_threads_gets_storage_unavailable_and_the_next_call_works(
        tmp_path: Path, guarded: None) -> None:
    """A read that fails in the loop's thread and again in the writer (I/O errors) gets the
    adapter's own ``DatabaseUnavailableError`` (a ``StorageUnavailableError``, which the engine
    retries), not SQLite's error nor a hang; the calls after it are answered."""
    adapter = await _opened(tmp_path / "f.db")
    try:
        await adapter.create("i", "w", "completed", start=b"s", header=b"h")
        conn = _conn(adapter)

        def fail(sql: str, main: bool) -> None:
            if sql.startswith("SELECT"):
                raise _io_error()

        conn.fail = fail
        with pytest.raises(tf.StorageUnavailableError) as caught:
            await adapter.load("i")
        assert isinstance(caught.value, _sqlite.DatabaseUnavailableError)
        with pytest.raises(tf.StorageUnavailableError):
            await adapter.signals("i")
        conn.fail = None
        assert not conn.in_transaction and not adapter._committing
        stored = await adapter.load("i")
        assert stored is not None and stored.status == "completed"
        assert await adapter.create("j", "w", "running", start=b"s", header=b"h") is True
    finally:
        await adapter.close()


# -- cancellation ----------------------------------------------------------------------------------


async def test_readers_cancelled_while_queued_behind_a_commit_take_nothing_from_the_others(
        tmp_path: Path, guarded: None) -> None:
    """Readers queued behind a commit in flight, half of them cancelled meanwhile: every
    reader that got an answer got its own instance's (none got another's), the others' reads
    are right, and the adapter goes on."""
    adapter = await _opened(tmp_path / "f.db")
    try:
        for n in range(20):
            await adapter.create(f"i{n}", "w", "completed", start=b"s%d" % n, header=b"h")
        await adapter.create("w", "w", "running", start=b"s", header=b"h")
        conn = _conn(adapter)
        gate = threading.Event()
        conn.gate = gate
        answers: dict[int, Any] = {}

        async def reader(n: int) -> None:
            answers[n] = await adapter.load(f"i{n % 20}")
            await trio.sleep(0)
            answers[n] = ("went on", answers[n])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(adapter.checkpoint, "w", "running", b"h", [b"r"], first_seq=0))
            await trio.testing.wait_all_tasks_blocked()
            assert adapter._committing
            doomed = trio.CancelScope()

            async def cancelled_readers() -> None:
                with doomed:
                    async with trio.open_nursery() as inner:
                        for n in range(0, 200, 2):
                            inner.start_soon(reader, n)

            nursery.start_soon(cancelled_readers)
            for n in range(1, 200, 2):
                nursery.start_soon(reader, n)
            await trio.testing.wait_all_tasks_blocked()
            assert len(adapter._pending) == 200
            doomed.cancel()
            await trio.testing.wait_all_tasks_blocked()
            conn.gate = None
            gate.set()
        for n, answer in answers.items():
            stored = answer[1] if isinstance(answer, tuple) else answer
            assert stored.instance_id == f"i{n % 20}" and stored.start == b"s%d" % (n % 20), (n, answer)
            if n % 2:
                assert answer[0] == "went on"
            else:
                assert not isinstance(answer, tuple), "a cancelled reader went on past its next checkpoint"
        assert all(n in answers for n in range(1, 200, 2))
        assert (await adapter.load("w")).records == (b"r",)  # type: ignore[union-attr]
        assert not adapter._committing and conn.overlaps == []
    finally:
        await adapter.close()


# -- close, and a writer that stopped --------------------------------------------------------------


@pytest.mark.parametrize("reads", [10, 600])
async def test_reads_pending_when_the_adapter_closes_are_answered(
        tmp_path: Path, guarded: None, reads: int) -> None:
    """Reads queued behind a commit in flight when ``close()`` is called (more than one
    transaction's worth too) are answered right, by the writer, before ``close()`` returns;
    a read after it gets ``DatabaseError``; the file reopens with everything in it."""
    path = tmp_path / "f.db"
    adapter = await _opened(path)
    await adapter.create("i", "w", "running", start=b"s", header=b"h")
    seq = await adapter.send_signal("i", "go", b"p")
    conn = _conn(adapter)
    gate = threading.Event()
    conn.gate = gate
    answers: list[Any] = []

    async def read(n: int) -> None:
        answers.append(await (adapter.load("i") if n % 2 else adapter.signals("i")))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(adapter.checkpoint, "i", "running", b"h1", [b"r"], first_seq=0))
        await trio.testing.wait_all_tasks_blocked()
        for n in range(reads):
            nursery.start_soon(read, n)
        await trio.testing.wait_all_tasks_blocked()
        assert len(adapter._pending) == reads

        async def close() -> None:
            await adapter.close()
            assert len(answers) == reads, "close() returned before the reads pending were answered"

        nursery.start_soon(close)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert len(answers) == reads
    for answer in answers:
        if isinstance(answer, list):
            assert answer == [(seq, "go", b"p")]
        else:
            assert (answer.records, answer.header, answer.signals) == ((b"r",), b"h1", ((seq, "go", b"p"),))
    assert conn.overlaps == []
    with pytest.raises(_sqlite.DatabaseError):
        await adapter.load("i")
    again = await _opened(path)
    try:
        assert (await again.load("i")).records == (b"r",)  # type: ignore[union-attr]
    finally:
        await again.close()


async def test_thousands_of_reads_queued_when_the_writer_stops_each_get_its_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The writer thread stops on a bug while 3,000 reads wait behind its transaction (one
    transaction each: ``MAX_BATCH`` 1): each gets the adapter's ``DatabaseError`` (none waits for
    ever, nothing recurses), later calls too, and ``close()`` works."""
    adapter = await _opened(tmp_path / "f.db")
    try:
        await adapter.create("i", "w", "completed", start=b"s", header=b"h")
        gate = threading.Event()

        def broken(*args: Any, **kwargs: Any) -> Any:
            gate.wait(10)
            raise RuntimeError("a bug in the writer")

        monkeypatch.setattr(_sqlite, "_apply", broken)
        monkeypatch.setattr(_sqlite, "MAX_BATCH", 1)
        errors: list[BaseException] = []

        async def call(fn: Callable[[], Any]) -> None:
            try:
                await fn()
            except _sqlite.DatabaseError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, functools.partial(adapter.create, "j", "w", "running", start=b"s", header=b"h"))
            await trio.testing.wait_all_tasks_blocked()
            for n in range(3000):
                nursery.start_soon(call, functools.partial(adapter.load if n % 2 else adapter.signals, "i"))
            await trio.testing.wait_all_tasks_blocked()
            assert len(adapter._pending) == 3000
            gate.set()
        assert len(errors) == 3001 and all("writer thread" in str(exc) for exc in errors)
        with pytest.raises(_sqlite.DatabaseError):
            await adapter.load("i")
    finally:
        await adapter.close()


# -- the engine on top -----------------------------------------------------------------------------


async def test_engine_reads_of_instances_not_in_memory_are_right_under_heavy_writes(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """While 150 three-step instances run (a stream of checkpoints), ``wait()`` and
    ``get_instance()`` of 40 finished instances (not in memory: read from the file), and
    ``signal()`` to 20 parked on a receive, all answer right, and the signalled ones finish
    with what was sent."""
    async def step(ctx: Any) -> str:
        return "ok"

    busy = tf.workflow("busy").step("a", step).step("b", step).step("c", step).build()
    parked = tf.workflow("parked").receive("r", signal="go").build()
    adapter = SQLiteAdapter(tmp_path / "f.db", synchronous="NORMAL")
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(busy)
        engine.register(parked)
        finished = [await engine.start("busy", instance_id=f"old{n}") for n in range(40)]
        for iid in finished:
            assert (await engine.wait(iid)).status == "completed"
        waiting = [await engine.start("parked", instance_id=f"park{n}") for n in range(20)]
        await trio.sleep(5)
        assert all(iid not in engine._live for iid in finished)
        seen: dict[str, Any] = {}

        async def read(iid: str) -> None:
            got = await engine.get_instance(iid)
            done = await engine.wait(iid)
            seen[iid] = (got.status if got else None, done.status, done.output)

        async with trio.open_nursery() as nursery:
            for n in range(150):
                nursery.start_soon(engine.start, "busy")
            for iid in finished:
                nursery.start_soon(read, iid)
            for n, iid in enumerate(waiting):
                nursery.start_soon(engine.signal, iid, "go", {"n": n})
        assert seen == {iid: ("completed", "completed", "ok") for iid in finished}
        for n, iid in enumerate(waiting):
            done = await engine.wait(iid)
            assert (done.status, done.output) == ("completed", {"n": n})


async def _gather(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` concurrently (so that they share one transaction): each one's answer."""
    results: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        results[i] = await calls[i]()

    async with trio.open_nursery() as nursery:
        for i in range(len(calls)):
            nursery.start_soon(one, i)
    return results


async def test_engine_reads_pending_when_the_engine_closes_each_answer_or_get_a_trioflow_error(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """``get_instance()`` of 300 finished instances not in memory, called as the engine closes:
    each caller gets the instance as stored, or ``EngineClosedError`` / a ``StorageError``:
    none waits for ever, none gets another instance, and the file reopens whole."""
    async def step(ctx: Any) -> str:
        return "ok"

    wf = tf.workflow("w").step("a", step).build()
    path = tmp_path / "f.db"
    answers: dict[str, Any] = {}

    async def reader(engine: tf.Engine, iid: str) -> None:
        try:
            got = await engine.get_instance(iid)
            answers[iid] = None if got is None else (got.id, got.status, got.output)
        except (tf.EngineClosedError, tf.StorageError) as exc:
            answers[iid] = type(exc)

    ids = [f"i{n}" for n in range(300)]
    async with trio.open_nursery() as nursery:
        async with open_test_engine(adapter=SQLiteAdapter(path, synchronous="NORMAL")) as engine:
            engine.register(wf)
            for iid in ids:
                await engine.start("w", instance_id=iid)
            for iid in ids:
                await engine.wait(iid)
            for iid in ids:
                nursery.start_soon(reader, engine, iid)
            await trio.sleep(0)
    assert sorted(answers) == sorted(ids)
    for iid, answer in answers.items():
        assert answer == (iid, "completed", "ok") or answer in (tf.EngineClosedError,) or (
            isinstance(answer, type) and issubclass(answer, tf.StorageError)), (iid, answer)
    async with open_test_engine(adapter=SQLiteAdapter(path)) as engine:
        engine.register(wf)
        for iid in ids:
            got = await engine.get_instance(iid)
            assert got is not None and (got.status, got.output) == ("completed", "ok")
