"""SQLite adapter: a real database file, WAL mode, one writer thread with group commit.

Calls made during one pass of trio's scheduler are gathered into one batch and handed to one
thread that owns the connection; that thread applies everything handed over since its last
commit in one transaction, so one fsync covers many instances' snapshots (group commit). Each
caller's task stays parked until the transaction holding its own write has committed, so
"``save`` returned" still means "on disk". The trio thread never touches the disk.

One engine per database file: a second adapter opened on a file that is in use (by this process
or another) is refused with :class:`DatabaseLockedError`. The lock is an ``flock`` on a sidecar
file, which the kernel drops when the process dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import outcome
import trio

from trioflow._errors import StorageError, StorageUnavailableError
from trioflow._snapshot import Status
from trioflow._virtual_time import mock_clock, real_time_while_threads

from ._protocol import InstanceRecord

if TYPE_CHECKING:
    from trio.testing import MockClock

#: Version of the table layout, kept in ``PRAGMA user_version``.
SCHEMA_VERSION = 1
#: Most operations in one transaction. Small enough that the trio side runs the next steps of
#: one slice while the next slice is written (measured: recovery of 10k instances, 256 best).
MAX_BATCH = 256

Synchronous = Literal["FULL", "NORMAL"]


class DatabaseError(StorageError):
    """The SQLite database cannot be used (wrong version, locked, closed, I/O failure)."""


class DatabaseLockedError(DatabaseError):
    """Another engine (in this process or another) has the database open."""


class DatabaseUnavailableError(DatabaseError, StorageUnavailableError):
    """A write or read failed for a reason that may pass: another connection holds the write
    lock past the busy timeout, the disk is full, I/O failed. The engine retries checkpoints."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS trioflow_instances (
    instance_id   TEXT PRIMARY KEY,
    workflow_name TEXT NOT NULL,
    status        TEXT NOT NULL,
    snapshot      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS trioflow_instances_by_workflow ON trioflow_instances (workflow_name, status);
CREATE INDEX IF NOT EXISTS trioflow_instances_by_status ON trioflow_instances (status);
"""

_Op = tuple[str, tuple[Any, ...]]
_STOP = object()


def _cannot_abort(_: Any) -> trio.lowlevel.Abort:
    # A queued write is not taken back: the caller learns its fate when the batch is done, so a
    # cancelled task never leaves a write that may or may not have happened.
    return trio.lowlevel.Abort.FAILED


class SQLiteAdapter:
    """Instances in a SQLite file. ``synchronous="FULL"`` (default) survives power loss;
    ``"NORMAL"`` survives a process crash but may lose the last commits on power loss."""

    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: Synchronous = "FULL", busy_timeout: float = 5.0
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise DatabaseError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float)) or not busy_timeout >= 0:
            raise DatabaseError(f"busy_timeout must be a number of seconds >= 0, got {busy_timeout!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        #: How long a write waits for another connection's lock before failing (and being retried).
        self.busy_timeout = float(busy_timeout)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: list[tuple[Any, _Op]] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        #: The run's clock while open, if it is trio's MockClock (tests): see :meth:`_in_thread`.
        self._clock: MockClock | None = None
        #: Transactions committed and operations applied by the writer (group-commit ratio).
        self.transactions = 0
        self.operations = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the file, take the lock, create or check the schema, start the writer."""
        if self._thread is not None:
            raise DatabaseLockedError(f"{self.path} is already open through this adapter")
        self._clock = mock_clock()
        with self._in_thread():
            # A limiter of its own: the default one may be held by abandoned job threads.
            conn = await trio.to_thread.run_sync(self._connect, limiter=trio.CapacityLimiter(1))
        self._queue = queue.SimpleQueue()
        self._pending = []
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(
            target=self._writer, args=(conn, self._token),
            name=f"trioflow-sqlite-writer:{self.path.name}", daemon=True,
        )
        self._thread.start()

    async def close(self) -> None:
        """Finish what is queued, stop the writer, release the lock.

        Calls of this scheduler pass that are not handed over yet go before the stop, so no
        caller is left parked on a write nobody will do; later calls get :class:`DatabaseError`.
        """
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        if self._pending:
            self._flush()
        self._queue.put(_STOP)
        with self._in_thread():
            await trio.to_thread.run_sync(thread.join, limiter=trio.CapacityLimiter(1))
        self._unlock()

    @contextlib.contextmanager
    def _in_thread(self) -> Iterator[None]:
        """Around a wait for this adapter's threads. Under an autojumping MockClock, a task
        parked on the writer looks idle to trio, which would leap virtual time to the next
        deadline while the disk works (a 600 s workflow timeout would fire during a commit);
        while a wait is in flight virtual time runs at real speed instead, as it does for jobs
        in threads. Costs nothing on a real clock."""
        clock = self._clock
        if clock is None:
            yield
            return
        real_time_while_threads(clock, +1)
        try:
            yield
        finally:
            real_time_while_threads(clock, -1)

    def _connect(self) -> sqlite3.Connection:
        self._lock()
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout)
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise DatabaseError(
                        f"{self.path} was written by a newer trioflow (schema version {version}; "
                        f"this one reads up to {SCHEMA_VERSION})"
                    )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            except BaseException:
                conn.close()
                raise
        except sqlite3.DatabaseError as exc:
            self._unlock()
            raise DatabaseError(f"cannot open {self.path} as a trioflow database: {exc}") from exc
        except BaseException:
            self._unlock()
            raise
        return conn

    def _lock(self) -> None:
        lock_path = f"{self.path}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DatabaseError(
                f"cannot open {self.path}: its lock file {lock_path} cannot be created ({exc.strerror});"
                " the directory must exist and be writable"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatabaseLockedError(
                f"{self.path} is in use by another trioflow engine (lock {lock_path} is held);"
                " one engine per database file"
            ) from None
        except OSError as exc:  # a file system without locks (ENOLCK), ...
            os.close(fd)
            raise DatabaseError(f"cannot open {self.path}: its lock file {lock_path} cannot be locked ({exc})") from exc
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # -- the Adapter protocol -----------------------------------------------------------------

    async def create(self, instance_id: str, workflow_name: str, status: Status, snapshot: bytes) -> bool:
        created: bool = await self._submit(("create", (instance_id, workflow_name, status, snapshot)))
        return created

    async def save(self, instance_id: str, workflow_name: str, status: Status, snapshot: bytes) -> None:
        await self._submit(("save", (instance_id, workflow_name, status, snapshot)))

    async def load(self, instance_id: str) -> InstanceRecord | None:
        rows = await self._submit(("select", ("WHERE instance_id = ?", (instance_id,))))
        return rows[0] if rows else None

    async def list_instances(self, workflow_name: str, status: Status | None = None) -> list[InstanceRecord]:
        where: tuple[str, tuple[Any, ...]]
        if status is None:
            where = ("WHERE workflow_name = ? ORDER BY rowid", (workflow_name,))
        else:
            where = ("WHERE workflow_name = ? AND status = ? ORDER BY rowid", (workflow_name, status))
        rows: list[InstanceRecord] = await self._submit(("select", where))
        return rows

    async def resumable(self) -> list[InstanceRecord]:
        rows: list[InstanceRecord] = await self._submit(
            ("select", ("WHERE status IN ('pending', 'running') ORDER BY rowid", ()))
        )
        return rows

    async def delete(self, instance_id: str) -> bool:
        deleted: bool = await self._submit(("delete", (instance_id,)))
        return deleted

    # -- the trio side of the writer ------------------------------------------------------------

    async def _submit(self, op: _Op) -> Any:
        if self._thread is None or self._token is None:
            raise DatabaseError(f"{self.path} is not open (use the adapter inside open_engine)")
        if not self._pending:
            # First call of this scheduler pass: hand the whole pass's calls over at its end.
            self._token.run_sync_soon(self._flush)
        self._pending.append((trio.lowlevel.current_task(), op))
        if self._clock is None:
            return await trio.lowlevel.wait_task_rescheduled(_cannot_abort)
        with self._in_thread():
            return await trio.lowlevel.wait_task_rescheduled(_cannot_abort)

    def _flush(self) -> None:
        if self._pending:  # ``close`` may have handed this pass's calls over already
            batch, self._pending = self._pending, []
            self._queue.put(batch)

    @staticmethod
    def _wake(results: list[tuple[Any, outcome.Outcome[Any]]]) -> None:
        for task, result in results:
            trio.lowlevel.reschedule(task, result)

    # -- the writer thread --------------------------------------------------------------------

    def _writer(self, conn: sqlite3.Connection, token: trio.lowlevel.TrioToken) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                pending = list(item)
                stop = False
                while len(pending) < MAX_BATCH:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stop = True
                        break
                    pending.extend(nxt)
                # Commit in slices: the tasks of the first slice run their next steps while
                # the next slice is written, instead of everyone waiting for one huge commit.
                for start in range(0, len(pending), MAX_BATCH):
                    batch = pending[start:start + MAX_BATCH]
                    results = _apply(conn, batch)
                    self.transactions += 1
                    self.operations += len(batch)
                    token.run_sync_soon(self._wake, results)
                if stop:
                    return
        finally:
            conn.close()
            self._refuse_leftovers(token)

    def _refuse_leftovers(self, token: trio.lowlevel.TrioToken) -> None:
        """Calls handed over after the stop get an error instead of waiting forever."""
        closed = DatabaseError(f"{self.path} was closed before this operation ran")
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                refused: list[tuple[Any, outcome.Outcome[Any]]] = [(task, outcome.Error(closed)) for task, _ in item]
                token.run_sync_soon(self._wake, refused)


def _apply(conn: sqlite3.Connection, batch: list[tuple[Any, _Op]]) -> list[tuple[Any, outcome.Outcome[Any]]]:
    """Apply a batch in one transaction; if one op fails, apply each op alone so that only the
    op at fault gets the error. If the database itself fails (busy, locked, full, I/O), every op
    gets that error at once: trying each alone would wait out the busy timeout once per op."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        values = _run_all(conn, [op for _, op in batch])
        conn.execute("COMMIT")
        return [(task, outcome.Value(v)) for (task, _), v in zip(batch, values)]
    except Exception as exc:
        _roll_back(conn)
        if _may_pass(exc):
            return [(task, outcome.Error(_failure(op[0], exc))) for task, op in batch]
    results: list[tuple[Any, outcome.Outcome[Any]]] = []
    for task, op in batch:
        try:
            conn.execute("BEGIN IMMEDIATE")
            value = _run(conn, op)
            conn.execute("COMMIT")
            results.append((task, outcome.Value(value)))
        except Exception as exc:
            _roll_back(conn)
            results.append((task, outcome.Error(_failure(op[0], exc))))
    return results


def _roll_back(conn: sqlite3.Connection) -> None:
    # A failing disk can make the rollback fail too; SQLite has then rolled back already.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


#: SQLite result codes of failures that may pass: BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL.
_PASSING_CODES = frozenset({5, 6, 10, 13, 14, 15})


def _may_pass(exc: Exception) -> bool:
    """Busy, locked, full and I/O failures may pass (the engine retries them); a missing table or
    a constraint violation will not."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF in _PASSING_CODES


def _failure(kind: str, exc: Exception) -> DatabaseError:
    """The error a caller gets for a failed operation, :class:`DatabaseUnavailableError` when it
    may pass."""
    if _may_pass(exc):
        return DatabaseUnavailableError(f"SQLite {kind} failed: {exc}")
    return DatabaseError(f"SQLite {kind} failed: {exc}")


def _run_all(conn: sqlite3.Connection, ops: list[_Op]) -> list[Any]:
    """Apply ops in order; each run of consecutive saves goes through one ``executemany``."""
    values: list[Any] = []
    i = 0
    while i < len(ops):
        j = i
        while j < len(ops) and ops[j][0] == "save":
            j += 1
        if j > i:
            conn.executemany(_SAVE_SQL, [op[1] for op in ops[i:j]])
            values.extend([None] * (j - i))
            i = j
        else:
            values.append(_run(conn, ops[i]))
            i += 1
    return values


def _run(conn: sqlite3.Connection, op: _Op) -> Any:
    kind, args = op
    return _OPS[kind](conn, *args)


def _create(conn: sqlite3.Connection, iid: str, name: str, status: str, snapshot: bytes) -> bool:
    cur = conn.execute(
        "INSERT INTO trioflow_instances (instance_id, workflow_name, status, snapshot) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (instance_id) DO NOTHING",
        (iid, name, status, snapshot),
    )
    return cur.rowcount == 1


_SAVE_SQL = (
    "INSERT INTO trioflow_instances (instance_id, workflow_name, status, snapshot) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (instance_id) DO UPDATE SET status = excluded.status, snapshot = excluded.snapshot"
)


def _save(conn: sqlite3.Connection, iid: str, name: str, status: str, snapshot: bytes) -> None:
    conn.execute(_SAVE_SQL, (iid, name, status, snapshot))


def _select(conn: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> list[InstanceRecord]:
    rows = conn.execute(
        f"SELECT instance_id, workflow_name, status, snapshot FROM trioflow_instances {where}", params
    ).fetchall()
    return [InstanceRecord(instance_id=r[0], workflow_name=r[1], status=r[2], snapshot=r[3]) for r in rows]


def _delete(conn: sqlite3.Connection, iid: str) -> bool:
    return conn.execute("DELETE FROM trioflow_instances WHERE instance_id = ?", (iid,)).rowcount == 1


_OPS: dict[str, Callable[..., Any]] = {"create": _create, "save": _save, "select": _select, "delete": _delete}
