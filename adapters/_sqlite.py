"""SQLite adapter: a real database file, WAL mode, group commit, commits in a writer thread.

Calls made while a transaction commits are gathered into the next one (up to ``MAX_BATCH``), so
one fsync covers many instances' checkpoints (group commit). One transaction is in flight at a
time. Its statements run in the trio thread when they are all operations on one instance
(creates, checkpoints, signals, loads, deletes; and ``next_wake``) and the write lock is free:
SQLite then works in its page cache (reading the pages it lacks, writing log pages for a
transaction larger than the cache), and nothing waits on the GIL between two threads at every
statement. Its ``COMMIT``, which writes the log (and with FULL syncs it), always runs in the
writer thread, as do transactions that hold listings, ``due``, purges or the resume scan, or
that must wait for another connection's lock: the trio thread never waits for an fsync or a
lock. Each caller's task stays parked until the transaction
holding its own write has committed, so "``checkpoint`` returned" still means "on disk".

Storage (schema version 2, protocol version 3): one row per instance in ``trioflow_instances``
(indexed fields, the ``start`` bytes, the ``header`` bytes, ``next_seq``: how many records it
has, and ``finished_at``: when it finished), and one row per step-execution record in
``trioflow_records``, keyed by (instance, seq) and never rewritten. A checkpoint is fenced on
``next_seq``: it applies only where the instance has exactly ``first_seq`` records. A file of schema version 1 (one snapshot per instance) is migrated
in place when opened.

One engine per database file: a second adapter opened on a file that is in use (by this process
or another, through a symlink or a hard link) is refused with :class:`DatabaseLockedError`. The
lock is an ``flock`` on the file and on a sidecar ``.lock`` file, which the kernel drops when
the process dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import outcome
import trio

from trioflow._durations import Seconds, in_range, seconds
from trioflow._engine_arguments import refuses_unbound_arguments
from trioflow._errors import (
    AdapterInUseError,
    CheckpointConflictError,
    InstanceStillRunningError,
    StorageError,
    StorageUnavailableError,
    UnknownInstanceError,
)
from trioflow._snapshot import RESUMABLE, TERMINAL, FinishedStatus, Status
from trioflow._virtual_time import mock_clock, threads_under

from ._arguments import checked_limit, checked_names, checked_time
from ._protocol import StoredInstance

if TYPE_CHECKING:
    from trio.testing import MockClock

log = logging.getLogger("trioflow")

#: Version of the table layout, kept in ``PRAGMA user_version``: 1 had one snapshot per
#: instance; 2 has a header per instance and one row per step-execution record.
SCHEMA_VERSION = 2
#: Most operations in one transaction. Small enough that the trio side runs the next steps of
#: one slice while the next slice is written (measured: recovery of 10k instances, 256 best).
MAX_BATCH = 256
#: Operations whose statements may run in the trio thread: each touches one instance (and a
#: checkpoint's ``notify`` its parent's signals; ``next_wake`` reads one index entry). Listings, purges, the resume scan and ``due`` (a thousand instances with all
#: their records) go to the writer.
_INLINE = frozenset({"create", "checkpoint", "signal", "signal_load", "signal_keyed", "signal_keyed_load", "signals",
                     "load", "load_head", "delete", "next_wake"})
#: Operations that write nothing: a transaction of these alone begins deferred (``BEGIN``: in
#: WAL mode a reader waits for no other connection's write), and, of those inline, ends in the
#: trio thread too. (``due`` and ``next_wake`` may fill a temporary table: not the file.)
_READS = frozenset({"signals", "load", "load_head", "next_wake", "list", "select", "due"})

Synchronous = Literal["FULL", "NORMAL"]


class DatabaseError(StorageError):
    """The SQLite database cannot be used (wrong version, locked, closed, I/O failure)."""


class DatabaseLockedError(DatabaseError, AdapterInUseError):
    """Another engine (in this process or another) has the database open."""


class DatabaseUnavailableError(DatabaseError, StorageUnavailableError):
    """A write or read failed for a reason that may pass: another connection holds the write
    lock past the busy timeout, the disk is full, I/O failed. The engine retries checkpoints."""


#: Schema version 2, as statements run in one transaction (``IF NOT EXISTS``: a reopen).
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS trioflow_instances (
        instance_id   TEXT PRIMARY KEY,
        workflow_name TEXT NOT NULL,
        status        TEXT NOT NULL,
        header        BLOB NOT NULL,
        start         BLOB,
        next_seq      INTEGER NOT NULL DEFAULT 0,
        wake_at       REAL,
        finished_at   REAL,
        parent_id     TEXT
    )""",
    # Each index ends in the rowid (creation order), so that listings page through it.
    "CREATE INDEX IF NOT EXISTS trioflow_instances_by_workflow ON trioflow_instances (workflow_name, status)",
    "CREATE INDEX IF NOT EXISTS trioflow_instances_by_status ON trioflow_instances (status)",
    # Listings of one workflow, all statuses (added within schema version 2: only adds).
    "CREATE INDEX IF NOT EXISTS trioflow_instances_by_workflow_name ON trioflow_instances (workflow_name)",
    """CREATE TABLE IF NOT EXISTS trioflow_records (
        instance_id TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        data        BLOB NOT NULL,
        PRIMARY KEY (instance_id, seq)
    ) WITHOUT ROWID""",
    # Signals sent to instances and not consumed yet. AUTOINCREMENT: a seq is never handed out
    # twice, so an instance's signals sort in the order they were stored. (Added within schema
    # version 2: a file without the table gets it when it opens.)
    """CREATE TABLE IF NOT EXISTS trioflow_signals (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        instance_id TEXT NOT NULL,
        name        TEXT NOT NULL,
        payload     BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS trioflow_signals_by_instance ON trioflow_signals (instance_id, seq)",
    # The keys of the signals sent with one, kept as long as their instance is (see
    # ``KeyedSignals`` and ``_FORGET_KEYS_TRIGGER``). (Added within schema version 2: a file
    # without the table gets it when it opens; a release from before it leaves it alone.)
    """CREATE TABLE IF NOT EXISTS trioflow_signal_keys (
        instance_id TEXT NOT NULL,
        key         TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        PRIMARY KEY (instance_id, key)
    ) WITHOUT ROWID""",
)

#: From schema version 1 (``trioflow_instances(instance_id, workflow_name, status, snapshot)``):
#: a v1 row keeps its snapshot bytes as its header, with no start and no records; the kernel
#: reads them as a format-1 snapshot, and the row's first checkpoint writes start and records.
_MIGRATE_FROM_1 = (
    "ALTER TABLE trioflow_instances RENAME COLUMN snapshot TO header",
    "ALTER TABLE trioflow_instances ADD COLUMN start BLOB",
    "ALTER TABLE trioflow_instances ADD COLUMN next_seq INTEGER NOT NULL DEFAULT 0",
    *_SCHEMA,
)

#: Columns added within schema version 2, with their types: a file without one gets it when it
#: opens (wake_at: waiting instances; finished_at: retention; parent_id: a child workflow's
#: parent, which a purge keeps it for: a child stored before the column has none, and goes by
#: its own finish time, as it did then).
_ADDED_COLUMNS = (("wake_at", "REAL"), ("finished_at", "REAL"), ("parent_id", "TEXT"))
#: SQL for "the row is finished", as written in the partial index on finish times (a query uses
#: that index only if its WHERE clause holds this very term). Comparisons joined by OR, not
#: ``status IN (...)``: SQLite evaluates an IN list of more than two constants through a
#: temporary B-tree it builds on every run of the statement, and every insert and every
#: status-changing update evaluates this term (about 5 us each, a third of a create's cost).
_FINISHED = "(" + " OR ".join(f"status = {status!r}" for status in sorted(TERMINAL)) + ")"
#: SQL for "the row is live" (pending or running), comparisons joined by OR as in _FINISHED.
_LIVE = "(" + " OR ".join(f"status = {status!r}" for status in sorted(RESUMABLE)) + ")"
#: SQL for "the row is live and has no wake time", as written in the partial index on such rows
#: (added within schema version 2, made at open), which ``resumable()`` reads instead of every
#: live row: a row parked on a timer is never in it. (A wake time that is not a number, damaged
#: by hand, is not in its terms: each write evaluates them, and such rows are found through the
#: index on wake times, see _RESUMABLE_ROWS.)
_UNPARKED = f"{_LIVE} AND wake_at IS NULL"
_UNPARKED_INDEX = f"CREATE INDEX IF NOT EXISTS trioflow_instances_unparked ON trioflow_instances (status) WHERE {_UNPARKED}"
#: Partial: only finished rows are in it, so a checkpoint of a running instance never touches
#: it, and a purge finds what finished before a time without reading anything else; nor the
#: children a stored parent keeps (``parent_id``), which go with their parent, so that a purge
#: never walks past the thousands a long-lived parent's map may keep. Its ``finished_at IS
#: NULL`` end holds finished rows not stamped yet (see :meth:`_prepare_schema`). Written as
#: SQLite keeps it in ``sqlite_master``: a file whose index was made otherwise (by another
#: release) has it made again.
_FINISH_INDEX = (f"CREATE INDEX trioflow_instances_by_finish ON trioflow_instances (finished_at)"
                 f" WHERE {_FINISHED} AND parent_id IS NULL")
#: The index a purge reads finished rows through, earliest first, by (whether a workflow is
#: given, whether a status is): the one on finish times alone for an unfiltered purge (the
#: engine's retention), and for a filtered one the same rows by status, workflow or both, so
#: that it never reads past the finished rows of another status or workflow it keeps. Partial
#: as that one is (same WHERE: a query uses such an index only if it holds that very term),
#: so a running instance's checkpoints never touch them: a row enters them as it finishes.
_PURGE_INDEXES = {
    (False, False): "trioflow_instances_by_finish",
    (False, True): "trioflow_instances_by_status_finish",
    (True, False): "trioflow_instances_by_workflow_finish",
    (True, True): "trioflow_instances_by_workflow_status_finish",
}
#: The filtered purges' indexes, as SQLite keeps them in ``sqlite_master`` (made again, as
#: :data:`_FINISH_INDEX` is, in a file whose index was made otherwise). Added within schema
#: version 2: a file without them gets them when it opens; a release before them keeps
#: them up to date without knowing of them (SQLite does, on every write).
_FILTERED_FINISH_INDEXES = tuple(
    (name, f"CREATE INDEX {name} ON trioflow_instances ({columns}, finished_at) WHERE {_FINISHED} AND parent_id IS NULL")
    for name, columns in ((_PURGE_INDEXES[False, True], "status"), (_PURGE_INDEXES[True, False], "workflow_name"),
                          (_PURGE_INDEXES[True, True], "workflow_name, status")))

#: Deleting a row lets go of the children it kept that stay (a purge takes those it may along):
#: they enter the index on finish times. A trigger, so that every delete does it, in its own
#: transaction, whichever release makes it (one from before this, run on the file after an
#: upgrade was rolled back, deletes rows too); through the index on parents, a look per row.
_LET_GO_TRIGGER = (
    "CREATE TRIGGER IF NOT EXISTS trioflow_let_go AFTER DELETE ON trioflow_instances"
    " BEGIN UPDATE trioflow_instances SET parent_id = NULL WHERE parent_id = OLD.instance_id; END"
)
#: Deleting a row forgets the keys of the signals sent to it (see ``KeyedSignals``): a new
#: instance given its id must take a signal whatever key it comes with. A trigger, as the one
#: above, so that a release from before keys, run on the file, deletes them too.
_FORGET_KEYS_TRIGGER = (
    "CREATE TRIGGER IF NOT EXISTS trioflow_forget_signal_keys AFTER DELETE ON trioflow_instances"
    " BEGIN DELETE FROM trioflow_signal_keys WHERE instance_id = OLD.instance_id; END"
)
#: A row's parent is stored (in a WHERE clause, of the row it reads).
_PARENT_STORED = ("SELECT 1 FROM trioflow_instances AS parent"
                  " WHERE parent.instance_id = trioflow_instances.parent_id")

_Op = tuple[str, tuple[Any, ...]]
_STOP = object()
#: The longest busy timeout SQLite keeps (an int of milliseconds; it takes a larger one as 0).
_LONGEST_BUSY_MS = 2**31 - 1


def _cannot_abort(_: Any) -> trio.lowlevel.Abort:
    # A queued write is not taken back: the caller learns its fate when the batch is done, so a
    # cancelled task never leaves a write that may or may not have happened.
    return trio.lowlevel.Abort.FAILED


#: The database files engines of this process hold locked, by device and inode (whatever the
#: link they were opened through): each one's locked descriptor.
_LOCKED_FILES: dict[tuple[int, int], int] = {}
#: The descriptors holding this process's flocks. A forked child (a job's ``multiprocessing``
#: helper) shares every flock through them: it closes its copies, or a restarted engine would
#: find its file locked for as long as the dead engine's helper lives.
_FLOCKED: set[int] = set()


def _flocked(path: str, database: Path) -> int:
    """A descriptor on ``path`` holding an ``flock`` for the engine of ``database``, or raise."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DatabaseError(
            f"cannot open {database}: {path} cannot be opened ({exc.strerror}); the directory must exist and be"
            " writable"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, BlockingIOError):
            raise DatabaseLockedError(
                f"{database} is in use by another trioflow engine (the lock on {path} is held);"
                " one engine per database file"
            ) from None
        if isinstance(exc, OSError):  # a file system without locks (ENOLCK), ...
            raise DatabaseError(f"cannot open {database}: {path} cannot be locked ({exc})") from exc
        raise
    _FLOCKED.add(fd)
    return fd


def _lock_database(real: str, database: Path) -> tuple[int, int]:
    """``flock`` the database file at ``real`` for an engine; returns its key for
    :func:`_unlock_database`. A file an engine of this process holds is refused without
    opening it again: SQLite's locks belong to the process, and closing *any* descriptor of the
    file (this one, refused) would drop them from under that engine's connection."""
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(real)
        if (st.st_dev, st.st_ino) in _LOCKED_FILES:
            raise DatabaseLockedError(
                f"{database} is in use by another trioflow engine of this process; one engine per database file")
    fd = _flocked(real, database)
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    _LOCKED_FILES[key] = fd
    return key


def _unlock_database(key: tuple[int, int]) -> None:
    fd = _LOCKED_FILES.pop(key)
    _FLOCKED.discard(fd)
    os.close(fd)  # the engine's connection is closed already: closing releases the flock


def _forget_locks_in_child() -> None:
    for fd in _FLOCKED:
        with contextlib.suppress(OSError):
            os.close(fd)
    _FLOCKED.clear()
    _LOCKED_FILES.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)


class SQLiteAdapter:
    """Instances in a SQLite file. ``synchronous="FULL"`` (default) survives power loss;
    ``"NORMAL"`` survives a process crash but may lose the last commits on power loss."""

    @refuses_unbound_arguments
    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: Synchronous = "FULL", busy_timeout: Seconds = 5.0
    ) -> None:
        # (Either case, as SQLite's own pragma takes it.)
        if not isinstance(synchronous, str) or synchronous.upper() not in ("FULL", "NORMAL"):
            raise DatabaseError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        synchronous = cast(Synchronous, synchronous.upper())
        wait = seconds(busy_timeout)
        if not in_range(wait, infinite=True):  # (inf: the longest SQLite waits)
            raise DatabaseError(f"busy_timeout must be a number of seconds >= 0, got {busy_timeout!r}")
        if not isinstance(path, (str, os.PathLike)) or not isinstance(where := os.fspath(path), str):
            raise DatabaseError(f"SQLiteAdapter needs the path of a database file (a str or a Path), got {path!r}")
        if where in ("", ":memory:"):
            # SQLite's names for a temporary or an in-memory database: nothing durable (nor a
            # file to lock) for an engine to resume from.
            raise DatabaseError(
                f"SQLiteAdapter needs the path of a database file, got {path!r} (for storage in memory,"
                " use MemoryAdapter)")
        if "\0" in where:
            raise DatabaseError(f"SQLiteAdapter needs the path of a database file, got {path!r}: a path cannot hold a NUL")
        if os.fspath(Path(where)).startswith("file:"):
            # A SQLite built to read URI filenames (many are) reads such a name as a URI: it opens
            # the file it names ("file:orders.db": orders.db) or one in memory ("file::memory:"),
            # while the one-engine lock is taken on a file literally so named: a second engine
            # would open a live database. Refused rather than parsed as SQLite would, as its
            # options (mode=memory, nolock, immutable, vfs) may undo durability or the lock. (As
            # stored: Path drops a leading "./", so "./file:x" is refused too.)
            raise DatabaseError(
                f"SQLiteAdapter needs the path of a database file, got {path!r}: SQLite may read a name beginning"
                " with 'file:' as a URI, and open another file than the one locked against a second engine; give"
                " the file's path (for storage in memory, use MemoryAdapter)")
        self.path = Path(path)
        self.synchronous = synchronous
        #: How long a write waits for another connection's lock before failing (and being retried).
        self.busy_timeout = float(wait)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: list[tuple[Any, _Op]] = []
        #: A transaction is in flight (handed to the writer, which commits it and says so).
        self._committing = False
        #: The connection, used by the trio thread to start a transaction and by the writer to
        #: finish it: never by both at once (one transaction in flight).
        self._conn: sqlite3.Connection | None = None
        #: Statuses committed so far, for checkpoints that keep theirs (see :func:`_apply`).
        self._known: dict[str, str] = {}
        #: Set if the writer thread stopped on an error (a bug): every call gets it.
        self._dead: DatabaseError | None = None
        # SQLite keeps its busy timeout in an int of milliseconds and takes a larger one as 0 (no
        # wait at all): longer ones wait the longest it can, about 24.8 days.
        self._busy_ms = int(min(self.busy_timeout * 1000, _LONGEST_BUSY_MS))
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        self._lock_fds: list[int] = []
        #: The key of the locked database file (see :func:`_lock_database`).
        self._database: tuple[int, int] | None = None
        #: The run's clock while open, if it is trio's MockClock (tests): see :meth:`_in_thread`.
        self._clock: MockClock | None = None
        #: What finish times are stamped with (see :meth:`use_clock`).
        self._wall_clock: Callable[[], float] = time.time
        #: Its time when the file was last opened: the finish time of finished rows that have
        #: none (see :meth:`_prepare_schema`).
        self._opened_at = 0.0
        #: Transactions committed and operations in them, counted by the writer (group-commit ratio).
        self.transactions = 0
        self.operations = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def use_clock(self, clock: Callable[[], float]) -> None:
        if self._thread is None:  # (open: a second engine's, refused next; see Adapter.use_clock)
            self._wall_clock = clock

    async def open(self) -> None:
        """Open the file, take the lock, create or check the schema, start the writer."""
        if self._thread is not None:
            raise DatabaseLockedError(f"{self.path} is already open through this adapter")
        self._clock = mock_clock()
        self._opened_at = self._wall_clock()  # read here: a clock on virtual time works in the trio thread only
        with self._in_thread():
            # A limiter of its own: the default one may be held by abandoned job threads.
            conn = await trio.to_thread.run_sync(self._connect, limiter=trio.CapacityLimiter(1))
        self._queue = queue.SimpleQueue()
        self._pending = []
        self._committing = False
        self._conn, self._known, self._dead = conn, {}, None
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
        if self._pending:  # after the transaction in flight, if any: it is in the queue already
            leftovers, self._pending = self._pending, []
            self._queue.put((leftovers, None))
        self._queue.put(_STOP)
        with self._in_thread():
            await trio.to_thread.run_sync(thread.join, limiter=trio.CapacityLimiter(1))
        self._conn = None
        self._unlock()

    def _in_thread(self) -> contextlib.AbstractContextManager[None]:
        """Around a wait for this adapter's threads. Under an autojumping MockClock, a task
        parked on the writer looks idle to trio, which would leap virtual time to the next
        deadline while the disk works (a 600 s workflow timeout would fire during a commit);
        while a wait is in flight virtual time runs at real speed instead, as it does for jobs
        in threads. Costs nothing on a real clock."""
        return threads_under(self._clock)

    def _connect(self) -> sqlite3.Connection:
        self._lock()
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_ms / 1000)
            try:
                # Checked before anything is changed: a file refused is left as it was.
                self._check_version(conn.execute("PRAGMA user_version").fetchone()[0], conn)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
                self._prepare_schema(conn)
            except BaseException:
                conn.close()
                raise
        except sqlite3.DatabaseError as exc:
            self._unlock()
            if _may_pass(exc):  # (locked by another connection past busy_timeout, full, failing I/O)
                raise DatabaseUnavailableError(f"cannot open {self.path} now: {exc}") from exc
            raise DatabaseError(f"cannot open {self.path} as a trioflow database: {exc}") from exc
        except BaseException:
            self._unlock()
            raise
        return conn

    def _check_version(self, version: int, conn: sqlite3.Connection) -> None:
        # Another application's database keeps its own schema version in user_version,
        # whatever its number: a high one without our table may be either.
        foreign = version != 0 and conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'trioflow_instances'").fetchone() is None
        if version > SCHEMA_VERSION:
            raise DatabaseError(
                f"{self.path} was written by a newer trioflow (schema version {version}; "
                f"this one reads up to {SCHEMA_VERSION})" + (
                    ", or is another application's database (it has no trioflow_instances table)"
                    if foreign else "")
            )
        if foreign:
            raise DatabaseError(
                f"{self.path} is not a trioflow database (its user_version is {version}, and it has no"
                " trioflow_instances table)")

    def _prepare_schema(self, conn: sqlite3.Connection) -> None:
        """Create schema version 2, or migrate a version 1 file to it: in one transaction, so a
        crash leaves the file at one version or the other, never between.

        Finished rows with no finish time (all of them in a file from before retention; those a
        release before it finished since) get the time of this open: adapters never decode the
        header that holds the real time, so they are purgeable ``older_than`` after this open."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: the version decides what runs.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            self._check_version(version, conn)
            for statement in _MIGRATE_FROM_1 if version == 1 else _SCHEMA:
                conn.execute(statement)
            present = {row[1] for row in conn.execute("PRAGMA table_info(trioflow_instances)")}
            for column, kind in _ADDED_COLUMNS:
                if column not in present:
                    conn.execute(f"ALTER TABLE trioflow_instances ADD COLUMN {column} {kind}")
            conn.execute(
                "CREATE INDEX IF NOT EXISTS trioflow_instances_by_wake ON trioflow_instances (wake_at)"
                " WHERE wake_at IS NOT NULL")
            conn.execute(
                "CREATE INDEX IF NOT EXISTS trioflow_instances_by_parent ON trioflow_instances (parent_id)"
                " WHERE parent_id IS NOT NULL")
            conn.execute(_UNPARKED_INDEX)
            conn.execute(_LET_GO_TRIGGER)
            conn.execute(_FORGET_KEYS_TRIGGER)
            made = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'trioflow_instances_by_finish'").fetchone()
            if made is None or made[0] != _FINISH_INDEX:
                conn.execute("DROP INDEX IF EXISTS trioflow_instances_by_finish")
                # A child whose parent is gone (deleted by a release that left it the parent's
                # id) is kept by nothing: it goes by its own finish time, in the index made next.
                conn.execute(f"UPDATE trioflow_instances SET parent_id = NULL WHERE parent_id IS NOT NULL"
                             f" AND NOT EXISTS ({_PARENT_STORED})")
                conn.execute(_FINISH_INDEX)
            for name, sql in _FILTERED_FINISH_INDEXES:
                made = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
                if made is None or made[0] != sql:
                    conn.execute(f"DROP INDEX IF EXISTS {name}")
                    conn.execute(sql)
            # Through the index's NULL end: costs nothing once every finished row is stamped.
            # (Not the children stored parents keep, out of that index: one a release from
            # before retention finished goes with its parent all the same, see _purge, or is
            # stamped here once it is let go.)
            conn.execute(f"UPDATE trioflow_instances SET finished_at = ? WHERE {_FINISHED} AND parent_id IS NULL"
                         " AND finished_at IS NULL", (self._opened_at,))
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            _roll_back(conn)
            raise

    def _lock(self) -> None:
        """Take the one-engine-per-file lock: an ``flock`` on the database file itself, which a
        symlink or a hard link to it reaches too, and one on its sidecar ``.lock`` file, which
        earlier releases take (so an engine of either kind refuses the other)."""
        real = os.path.realpath(self.path)
        self._lock_fds = [_flocked(f"{real}.lock", self.path)]
        try:
            self._database = _lock_database(real, self.path)
        except BaseException:
            self._unlock()
            raise

    def _unlock(self) -> None:
        for fd in self._lock_fds:
            _FLOCKED.discard(fd)
            os.close(fd)  # closing the descriptor releases the flock (SQLite never opens the sidecar)
        self._lock_fds = []
        if self._database is not None:
            _unlock_database(self._database)
            self._database = None

    # -- the Adapter protocol -----------------------------------------------------------------

    async def create(
        self, instance_id: str, workflow_name: str, status: Status, *, start: bytes, header: bytes,
        parent_id: str | None = None, wake_at: float | None = None,
    ) -> bool:
        args: tuple[Any, ...] = (instance_id, workflow_name, status, _blob(start, "start"), _blob(header, "header"))
        if parent_id is not None and not isinstance(parent_id, str):
            raise DatabaseError(f"parent_id must be a str or None, got {type(parent_id).__name__}; nothing was written")
        if wake_at is not None:  # (checked only when given: most writes have none)
            wake_at = checked_time(wake_at, "wake_at", DatabaseError)
            args += (self._wall_clock() if status in TERMINAL else None, parent_id, wake_at)  # (see _create_sql)
        elif parent_id is not None:
            args += (self._wall_clock() if status in TERMINAL else None, parent_id)
        elif status in TERMINAL:
            args += (self._wall_clock(),)  # its finish time (see _create_sql)
        created: bool = await self._submit(("create", args))
        return created

    async def checkpoint(
        self, instance_id: str, status: Status, header: bytes, records: Sequence[bytes], *,
        first_seq: int, start: bytes | None = None, consumed: Sequence[int] = (), wake_at: float | None = None,
        notify: tuple[str, str, bytes] | None = None, restart: bool = False,
    ) -> int | None:
        # Everything is checked and copied here, before anything is handed to the writer: a
        # value that cannot be stored fails the call and nothing is written.
        if restart and (start is None or status in TERMINAL or notify is not None):
            raise DatabaseError(f"instance {instance_id!r}: a checkpoint that restarts its history stores new start"
                                f" bytes and a status it runs in, and notifies no one; nothing was done")
        if type(first_seq) is not int or first_seq < 0:
            raise DatabaseError(f"first_seq must be an int >= 0, got {first_seq!r}")
        stored = _record_blobs(records, first_seq)
        header_blob = _blob(header, "header")
        start_blob = None if start is None else _blob(start, "start")
        if consumed:
            consumed = tuple(consumed)
            for seq in consumed:  # (a loop, not any() over a generator: every receive's checkpoint asks)
                if type(seq) is not int:
                    raise DatabaseError(f"consumed must be signal seqs, got {consumed!r}")
            if len(consumed) > 1 and len(set(consumed)) != len(consumed):
                raise CheckpointConflictError(f"instance {instance_id!r}: a signal cannot be consumed twice: {consumed!r}")
        if wake_at is not None:  # (checked only when given: most writes have none)
            wake_at = checked_time(wake_at, "wake_at", DatabaseError)
        if restart:
            refused: Exception | None = await self._submit(("restart", (
                status, header_blob, start_blob, wake_at, instance_id, first_seq, stored, tuple(consumed))))
            if refused is not None:
                raise refused
            return None
        notice_args = None if notify is None else (notify[0], notify[1], _blob(notify[2], "notice payload"))
        finished_at = self._wall_clock() if status in TERMINAL else None
        notice: int | None = await self._submit(("checkpoint", (
            status, header_blob, start_blob, len(stored), wake_at, instance_id, first_seq, finished_at, stored,
            tuple(consumed), notice_args)))
        return notice

    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        known, seq = await self._submit(("signal", (instance_id, name, _blob(payload, "signal payload"))))
        if not known:
            raise UnknownInstanceError(f"no stored instance {instance_id!r} to signal")
        result: int | None = seq
        return result

    async def send_signal_and_load(
        self, instance_id: str, name: str, payload: bytes,
    ) -> tuple[int | None, StoredInstance | None]:
        known, seq, stored = await self._submit(("signal_load", (instance_id, name, _blob(payload, "signal payload"))))
        if not known:
            raise UnknownInstanceError(f"no stored instance {instance_id!r} to signal")
        return seq, stored

    async def send_keyed_signal(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool]:
        known, seq, seen = await self._submit(("signal_keyed", (
            instance_id, name, _blob(payload, "signal payload"), key)))
        if not known:
            raise UnknownInstanceError(f"no stored instance {instance_id!r} to signal")
        return seq, seen

    async def send_keyed_signal_and_load(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool, StoredInstance | None]:
        known, seq, seen, stored = await self._submit(("signal_keyed_load", (
            instance_id, name, _blob(payload, "signal payload"), key)))
        if not known:
            raise UnknownInstanceError(f"no stored instance {instance_id!r} to signal")
        return seq, seen, stored

    async def signals(self, instance_id: str) -> list[tuple[int, str, bytes]]:
        rows: list[tuple[int, str, bytes]] = await self._submit(("signals", (instance_id,)))
        return rows

    async def load(self, instance_id: str) -> StoredInstance | None:
        stored: StoredInstance | None = await self._submit(("load", (instance_id,)))
        return stored

    async def load_head(self, instance_id: str) -> StoredInstance | None:
        stored: StoredInstance | None = await self._submit(("load_head", (instance_id,)))
        return stored

    async def list_instances(
        self, workflow_name: str | None = None, status: Status | None = None, *,
        after: str | None = None, limit: int | None = None, newest_first: bool = False,
    ) -> list[StoredInstance]:
        if limit is not None:
            limit = checked_limit(limit, "list_instances")
        if after is not None and not isinstance(after, str):
            # (As MemoryAdapter says: no instance has such an id, to list after.)
            raise UnknownInstanceError(f"no stored instance {after!r} to list after (an instance id is a str)")
        rows: list[StoredInstance] | None = await self._submit(
            ("list", (workflow_name, status, after, limit, newest_first)))
        if rows is None:
            raise UnknownInstanceError(f"no stored instance {after!r} to list after (deleted or purged since?)")
        return rows

    async def resumable(self) -> list[StoredInstance]:
        rows: list[StoredInstance] = await self._submit(("select", (_RESUMABLE_ROWS, ())))
        return rows

    async def due(
        self, before: float, limit: int, *, skip_workflows: Collection[str] = (), exclude: Collection[str] = (),
    ) -> list[StoredInstance]:
        rows: list[StoredInstance] = await self._submit(
            ("due", (checked_time(before, "due's before"), checked_limit(limit, "due"),
                     _texts(skip_workflows, "due's skip_workflows", "skip_workflows must be workflow names"),
                     _texts(exclude, "due's exclude", "exclude must be instance ids"))))
        return rows

    async def next_wake(self, *, skip_workflows: Collection[str] = ()) -> float | None:
        wake: float | None = await self._submit(
            ("next_wake", (_texts(skip_workflows, "next_wake's skip_workflows",
                                  "skip_workflows must be workflow names"),)))
        return wake

    async def delete(self, instance_id: str) -> bool:
        status: str | None = await self._submit(("delete", (instance_id,)))
        if status in RESUMABLE:
            raise InstanceStillRunningError(instance_id, status)
        return status is not None

    async def purge(
        self, finished_by: float, limit: int, *, status: FinishedStatus | None = None, workflow_name: str | None = None,
    ) -> int:
        # One transaction per call: the engine purges in batches, so the writer commits other
        # instances' checkpoints between them.
        purged: int = await self._submit(("purge", (checked_time(finished_by, "purge's finished_by"),
                                                    checked_limit(limit, "purge"), status, workflow_name)))
        return purged

    # -- the trio side of the writer ------------------------------------------------------------

    def _submit(self, op: _Op) -> Awaitable[Any]:
        """Queue ``op`` for the next transaction; await what this returns for its result.

        A plain function handing back trio's parking awaitable, not a coroutine: one frame
        fewer for every call, and every checkpoint of every instance is one."""
        if self._thread is None or self._token is None:
            raise DatabaseError(f"{self.path} is not open (use the adapter inside open_engine)")
        if self._dead is not None:
            raise self._dead
        if not self._pending:
            # First call of this scheduler pass: hand the whole pass's calls over at its end.
            self._token.run_sync_soon(self._flush)
        self._pending.append((trio.lowlevel.current_task(), op))
        if self._clock is None:
            return trio.lowlevel.wait_task_rescheduled(_cannot_abort)
        return self._parked_in_thread()

    async def _parked_in_thread(self) -> Any:
        with self._in_thread():
            return await trio.lowlevel.wait_task_rescheduled(_cannot_abort)

    def _flush(self) -> None:
        # ``close`` may have handed this pass's calls over already; a transaction in flight
        # starts the next one when it has committed.
        if self._pending and not self._committing and self._thread is not None:
            self._next_transaction()

    def _next_transaction(self) -> None:
        """Start a transaction of the oldest pending calls and hand it to the writer: with its
        statements run here if they are all small ones and the write lock is free, else whole.
        One that only read ends here: its ``COMMIT`` writes nothing and waits for no disk, and
        a read (``wait()`` or ``get_instance()`` of an instance not in memory, a parent's
        signals) would otherwise wait for the writer thread's turn and the trio thread's
        again, some hundred microseconds. The next transaction after one that ended here
        starts in a callback of its own, once the loop's other tasks have had a turn (trio runs
        a callback queued by a callback after a checkpoint): thousands of reads pending at once
        neither nest a call for each batch nor hold the event loop until all are read."""
        batch = self._pending[:MAX_BATCH]
        del self._pending[:MAX_BATCH]
        results = self._start(batch)
        if results is None:
            return  # the writer has it: _committed goes on once it has committed
        self._wake(results)
        if self._pending and self._thread is not None and self._token is not None:
            self._token.run_sync_soon(self._flush)

    def _start(self, batch: list[tuple[Any, _Op]]) -> list[tuple[Any, outcome.Outcome[Any]]] | None:
        """Run ``batch``: its callers' results if it ended here, ``None`` once the writer has it."""
        if self._dead is not None:  # nobody would take it
            return [(task, outcome.Error(self._dead)) for task, _ in batch]
        self._committing = True
        applied = None
        conn = self._conn
        if conn is not None and all(op[0] in _INLINE for _, op in batch):
            reads = all(op[0] in _READS for _, op in batch)
            applied = _run_inline(conn, [op for _, op in batch], self._known, self._busy_ms,
                                  "BEGIN" if reads else "BEGIN IMMEDIATE")
            if applied is not None and reads:
                try:
                    conn.execute("COMMIT")
                except Exception:  # (not seen: the writer then runs it again, whole)
                    _roll_back(conn)
                    applied = None
                else:
                    self.transactions += 1
                    self.operations += len(batch)
                    return [(task, result) for (task, _), result in zip(batch, applied[0])]
        self._queue.put((batch, applied))
        return None

    def _committed(self, results: list[tuple[Any, outcome.Outcome[Any]]]) -> None:
        """The writer finished a transaction: wake its callers, start the next one."""
        self._wake(results)
        if self._pending and self._thread is not None:
            self._next_transaction()

    def _wake(self, results: list[tuple[Any, outcome.Outcome[Any]]]) -> None:
        """A transaction is over: its callers go on."""
        self._committing = False
        for task, result in results:
            trio.lowlevel.reschedule(task, result)

    # -- the writer thread --------------------------------------------------------------------

    def _writer(self, conn: sqlite3.Connection, token: trio.lowlevel.TrioToken) -> None:
        known = self._known
        pending: list[tuple[Any, _Op]] = []
        try:
            while True:
                # What the last transaction read and wrote is not kept alive while the writer
                # waits for the next (a resume's thousands of rows, a due look's).
                item = applied = results = batch = None
                item = self._queue.get()
                if item is _STOP:
                    return
                pending, applied = item
                if applied is not None:  # its statements ran in the trio thread: commit it
                    results = _apply(conn, pending, known, applied, self.path)
                    self.transactions += 1
                    self.operations += len(pending)
                    pending = []
                    token.run_sync_soon(self._committed, results)
                    continue
                # In slices (what ``close`` hands over may be more than one batch): the first
                # slice's tasks go on while the next is written. (Only then: the adapter is
                # closed, so ``_committed`` starts no transaction on the connection meanwhile.)
                while pending:
                    batch = pending[:MAX_BATCH]
                    results = _apply(conn, batch, known, None, self.path)
                    pending = pending[MAX_BATCH:]  # only now: a bug in _apply refuses this slice too
                    self.transactions += 1
                    self.operations += len(batch)
                    token.run_sync_soon(self._committed, results)
        except Exception as exc:
            # A bug: what it held and every call after get this error rather than wait for ever.
            log.error("the SQLite writer thread of %s stopped", self.path, exc_info=True)
            self._dead = DatabaseError(f"the writer thread of {self.path} stopped: {exc!r}")
            held: list[tuple[Any, outcome.Outcome[Any]]] = [(task, outcome.Error(self._dead)) for task, _ in pending]
            token.run_sync_soon(self._committed, held)
        finally:
            conn.close()
            self._refuse_leftovers(token)

    def _refuse_leftovers(self, token: trio.lowlevel.TrioToken) -> None:
        """Calls handed over after the stop get an error instead of waiting forever."""
        closed = self._dead or DatabaseError(f"{self.path} was closed before this operation ran")
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                refused: list[tuple[Any, outcome.Outcome[Any]]] = [(task, outcome.Error(closed)) for task, _ in item[0]]
                token.run_sync_soon(self._committed, refused)


def _run_inline(
    conn: sqlite3.Connection, ops: list[_Op], known: dict[str, str], busy_ms: int, begin: str = "BEGIN IMMEDIATE",
) -> tuple[list[outcome.Outcome[Any]], dict[str, str | None]] | None:
    """Begin a transaction and run ``ops`` in it (in the trio thread), leaving the ``COMMIT`` to
    :func:`_apply` in the writer: ``(results, changes)``. ``None``, with nothing left open, if
    the write lock is taken (the writer waits for it, ``busy_ms``) or a statement failed (the
    writer runs the batch again, each op alone if need be)."""
    changes: dict[str, str | None] = {}
    try:
        # Only this BEGIN may wait for a lock: it must not, in the event loop's thread. The
        # connection waits everywhere else (the writer's transactions).
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.execute(begin)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
        return _run_all(conn, ops, known, changes), changes
    except Exception:
        _roll_back(conn)
        return None


def _apply(
    conn: sqlite3.Connection, batch: list[tuple[Any, _Op]], known: dict[str, str],
    applied: tuple[list[outcome.Outcome[Any]], dict[str, str | None]] | None = None, database: Path | None = None,
) -> list[tuple[Any, outcome.Outcome[Any]]]:
    """Apply a batch in one transaction (``applied``: its statements ran already, in the open
    transaction, see :func:`_run_inline`; only the ``COMMIT`` is left). If one op fails, apply
    each op alone so that only the op at fault gets the error. If the database itself fails
    (busy, locked, full, I/O), every op gets that error at once: trying each alone would wait
    out the busy timeout once per op.

    ``known`` holds the status last committed for each pending or running
    instance: a checkpoint that keeps its instance's status does not write the status column,
    which spares SQLite the update of both status indexes (most checkpoints keep it). What a
    transaction writes enters ``known`` only once it has committed; after any failure (a
    failed COMMIT may still have committed) ``known`` starts over empty. (One engine per file:
    no one else writes these rows.)"""
    # A batch of reads alone takes no write lock (WAL: it waits for no other connection).
    begin = "BEGIN" if all(op[0] in _READS for _, op in batch) else "BEGIN IMMEDIATE"
    try:
        if applied is None:
            changes: dict[str, str | None] = {}
            conn.execute(begin)
            done = _run_all(conn, [op for _, op in batch], known, changes)
        else:
            done, changes = applied
        conn.execute("COMMIT")
        _learn(known, changes)
        return [(task, result) for (task, _), result in zip(batch, done)]
    except Exception as exc:
        _roll_back(conn)
        known.clear()
        if _may_pass(exc):
            return [(task, outcome.Error(_failure(op[0], exc, database))) for task, op in batch]
    results: list[tuple[Any, outcome.Outcome[Any]]] = []
    for task, op in batch:
        changes = {}
        try:
            conn.execute("BEGIN" if op[0] in _READS else "BEGIN IMMEDIATE")
            result = _run_all(conn, [op], known, changes)[0]
            conn.execute("COMMIT")
            _learn(known, changes)
        except Exception as exc:
            _roll_back(conn)
            known.clear()
            result = outcome.Error(_failure(op[0], exc, database))
        results.append((task, result))
    return results


def _learn(known: dict[str, str], changes: dict[str, str | None]) -> None:
    """After a commit: the statuses it wrote. Finished, deleted and waiting instances (``None``)
    are forgotten, so ``known`` holds no more than the instances that run."""
    for instance_id, status in changes.items():
        if status is None or status not in RESUMABLE:
            known.pop(instance_id, None)
        else:
            known[instance_id] = status


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


def _failure(kind: str, exc: Exception, database: Path | None) -> DatabaseError:
    """The error a caller gets for a failed operation, :class:`DatabaseUnavailableError` when it
    may pass; it names the database (a process may hold engines on several)."""
    where = "" if database is None else f" on {database}"
    if _may_pass(exc):
        return DatabaseUnavailableError(f"SQLite {kind} failed{where}: {exc}")
    return DatabaseError(f"SQLite {kind} failed{where}: {exc}")


def _run_all(
    conn: sqlite3.Connection, ops: list[_Op], known: dict[str, str], changes: dict[str, str | None],
) -> list[outcome.Outcome[Any]]:
    """Apply ops in order, inside the caller's transaction, noting in ``changes`` the status each
    write leaves (``None``: deleted). A refused checkpoint (fence, unknown instance) is an
    ``Error`` outcome of that op alone, having written nothing; any other failure raises, and
    the caller rolls the whole transaction back.

    Writes go in runs: each run of consecutive creates and checkpoints is applied as one
    ``executemany`` per statement shape of creates and of header updates (see :func:`_update`),
    and one of record inserts. Inside a
    run, creates go before checkpoints; a run ends before an op on an instance that an op of the
    other kind in the run touches, so that reordering never changes what any op sees."""
    results: list[outcome.Outcome[Any]] = []
    i, n = 0, len(ops)
    while i < n:
        kind = ops[i][0]
        if kind != "create" and kind != "checkpoint":
            if kind == "delete":
                changes[ops[i][1][0]] = None
            elif kind == "restart":
                changes[ops[i][1][4]] = None  # (its status as stored: not known here)
            result = _OPS[kind](conn, *ops[i][1])
            if kind == "due" and ops[i][1][0] != math.inf:
                # Woken next: their first checkpoint keeps the status read here, and need not
                # rewrite it (nor its two index entries). (Not those of a look at when the next
                # is due, ``before`` unbounded: they may wait for days.)
                for stored in result:
                    changes[stored.instance_id] = stored.status
            results.append(outcome.Value(result))
            i += 1
            continue
        creates: list[tuple[Any, ...]] = []
        checkpoints: list[tuple[Any, ...]] = []
        created: set[str] = set()
        checkpointed: set[str] = set()
        j = i
        while j < n:
            kind, args = ops[j]
            if kind == "create":
                if args[0] in checkpointed:
                    break
                created.add(args[0])
                creates.append(args)
            elif kind == "checkpoint":
                if args[5] in created:
                    break
                checkpointed.add(args[5])
                checkpoints.append(args)
            else:
                break
            j += 1
        if not checkpoints:
            results.extend(_create_many(conn, creates, changes))
        elif not creates:
            results.extend(_checkpoint_many(conn, checkpoints, known, changes))
        else:
            created_iter = iter(_create_many(conn, creates, changes))
            checkpointed_iter = iter(_checkpoint_many(conn, checkpoints, known, changes))
            results.extend(next(created_iter if ops[k][0] == "create" else checkpointed_iter) for k in range(i, j))
        i = j
    return results


# The statements come in shapes that bind no NULL where the common case has none: Python's
# sqlite3 looks for an adapter for every None it binds (about 3,000 instructions each, seven
# per three-step instance), as it does for bytes (see :func:`_blob`).

#: Parameters: instance id, workflow name, status, start, header (not finished: no finish time).
_CREATE_SQL = (
    "INSERT INTO trioflow_instances (instance_id, workflow_name, status, start, header)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (instance_id) DO NOTHING"
)
#: The same, finished, with its finish time.
_CREATE_FINISHED_SQL = (
    "INSERT INTO trioflow_instances (instance_id, workflow_name, status, start, header, finished_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (instance_id) DO NOTHING"
)
#: A child workflow's: its finish time (``None`` unless finished) and its parent, if stored
#: (one that is not keeps it from nothing: it goes by its own finish time).
_CREATE_CHILD_SQL = (
    "INSERT INTO trioflow_instances (instance_id, workflow_name, status, start, header, finished_at, parent_id)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, (SELECT instance_id FROM trioflow_instances WHERE instance_id = ?7))"
    " ON CONFLICT (instance_id) DO NOTHING"
)
#: One that waits from the start (a delayed start): the same, with its ``wake_at``.
_CREATE_WAITING_SQL = (
    "INSERT INTO trioflow_instances (instance_id, workflow_name, status, start, header, finished_at, parent_id, wake_at)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, (SELECT instance_id FROM trioflow_instances WHERE instance_id = ?7), ?8)"
    " ON CONFLICT (instance_id) DO NOTHING"
)
#: The create statements by the number of their arguments (see :meth:`SQLiteAdapter.create`).
_CREATES = {5: _CREATE_SQL, 6: _CREATE_FINISHED_SQL, 7: _CREATE_CHILD_SQL, 8: _CREATE_WAITING_SQL}
#: Fenced: applies only where the instance has exactly ``first_seq`` records. Parameters:
#: status, header, start, number of records, wake_at, instance id, first_seq, finished_at:
#: numbered, as they are the checkpoint op's arguments, handed over as a slice of them.
_CHECKPOINT_SQL = (
    "UPDATE trioflow_instances SET status = ?1, header = ?2, start = coalesce(?3, start), next_seq = next_seq + ?4,"
    " wake_at = ?5, finished_at = CASE WHEN status = ?1 THEN finished_at ELSE ?8 END"
    " WHERE instance_id = ?6 AND next_seq = ?7"
)
#: The same for a checkpoint that keeps the stored status (and so its finish time): parameters
#: 2 to 7 of the above.
_SAME_STATUS_SQL = (
    "UPDATE trioflow_instances SET header = ?, start = coalesce(?, start), next_seq = next_seq + ?, wake_at = ?"
    " WHERE instance_id = ? AND next_seq = ?"
)
#: The checkpoint of most steps: the same status, no start, no wake time. Parameters: header,
#: number of records, instance id, first_seq.
_STEP_SQL = (
    "UPDATE trioflow_instances SET header = ?, next_seq = next_seq + ?, wake_at = NULL"
    " WHERE instance_id = ? AND next_seq = ?"
)
#: An instance finishing: a status with a finish time, no start, no wake time. Parameters:
#: status, header, number of records, instance id, first_seq, finished_at.
_FINISH_SQL = (
    "UPDATE trioflow_instances SET status = ?1, header = ?2, next_seq = next_seq + ?3, wake_at = NULL,"
    " finished_at = CASE WHEN status = ?1 THEN finished_at ELSE ?6 END WHERE instance_id = ?4 AND next_seq = ?5"
)


def _update(args: tuple[Any, ...], same_status: bool) -> tuple[str, tuple[Any, ...]]:
    """The statement that applies a checkpoint op's header update, with its parameters."""
    status, header, start, count, wake_at, instance_id, first_seq, finished_at = args[:8]
    if start is None and wake_at is None:
        if same_status:
            return _STEP_SQL, (header, count, instance_id, first_seq)
        if finished_at is not None:
            return _FINISH_SQL, (status, header, count, instance_id, first_seq, finished_at)
    return (_SAME_STATUS_SQL, args[1:7]) if same_status else (_CHECKPOINT_SQL, args[:8])


def _create_sql(args: tuple[Any, ...]) -> str:
    """The statement for a create op's arguments: by their number (see :meth:`SQLiteAdapter.create`)."""
    return _CREATES[len(args)]


_RECORD_SQL = "INSERT INTO trioflow_records (instance_id, seq, data) VALUES (?, ?, ?)"
_CONSUME_SQL = "DELETE FROM trioflow_signals WHERE seq = ? AND instance_id = ?"


def _create_many(
    conn: sqlite3.Connection, creates: list[tuple[Any, ...]], changes: dict[str, str | None],
) -> list[outcome.Outcome[Any]]:
    """Insert new instances; for each, whether it was new."""
    if len(creates) > 1:
        # All at once; if some id existed already, take it back and go one by one to know which.
        conn.execute("SAVEPOINT trioflow_creates")
        # In runs of one shape, in call order: a child looks its parent up as it is inserted,
        # and finds it if, and only if, it was created before (as one at a time would).
        runs: list[tuple[str, list[tuple[Any, ...]]]] = []
        for args in creates:
            sql = _create_sql(args)
            if runs and runs[-1][0] == sql:
                runs[-1][1].append(args)
            else:
                runs.append((sql, [args]))
        if sum(conn.executemany(sql, rows).rowcount for sql, rows in runs) == len(creates):
            conn.execute("RELEASE trioflow_creates")
            for args in creates:
                changes[args[0]] = args[2]
            return [outcome.Value(True) for _ in creates]
        conn.execute("ROLLBACK TO trioflow_creates")
        conn.execute("RELEASE trioflow_creates")
    results: list[outcome.Outcome[Any]] = []
    for args in creates:
        created = conn.execute(_create_sql(args), args).rowcount == 1
        if created:
            changes[args[0]] = args[2]
        results.append(outcome.Value(created))
    return results


def _checkpoint_many(
    conn: sqlite3.Connection, checkpoints: list[tuple[Any, ...]], known: dict[str, str],
    changes: dict[str, str | None],
) -> list[outcome.Outcome[Any]]:
    """Apply fenced checkpoints: the header updates in one ``executemany`` per statement shape
    (:func:`_update`), then every record in another. If some update found its instance unknown
    or at another seq, take the run back and apply each alone, so that only the refused ones
    get an error. A run holding two checkpoints of one instance is applied one at a time, in
    order, from the start: grouped by shape, the later one could run first, and the fence
    cannot tell apart two that add no record (the older header would be left)."""
    if len(checkpoints) > 1 and len({args[5] for args in checkpoints}) == len(checkpoints):
        conn.execute("SAVEPOINT trioflow_checkpoints")
        shapes: dict[str, list[tuple[Any, ...]]] = {}
        leaves: dict[str, str | None] = {}
        for args in checkpoints:
            status, instance_id = args[0], args[5]
            was = changes[instance_id] if instance_id in changes else known.get(instance_id)
            sql, params = _update(args, was == status)
            shapes.setdefault(sql, []).append(params)
            # A waiting instance (wake_at) is forgotten: it may wait for days, and ``known``
            # should hold no more than the instances that run.
            leaves[instance_id] = status if args[4] is None else None
        updated = sum(conn.executemany(sql, rows).rowcount for sql, rows in shapes.items())
        consumed = [(seq, args[5]) for args in checkpoints for seq in args[9]]
        if consumed and updated == len(checkpoints):
            updated -= len(consumed) - conn.executemany(_CONSUME_SQL, consumed).rowcount
        if updated == len(checkpoints):
            conn.executemany(_RECORD_SQL, _record_rows(checkpoints))
            # Each checkpoint's result: the seq of the end notice it stored, if any.
            done: list[outcome.Outcome[Any]] = [
                outcome.Value(None if args[10] is None else _signal(conn, *args[10])[1]) for args in checkpoints]
            conn.execute("RELEASE trioflow_checkpoints")
            changes.update(leaves)
            return done
        conn.execute("ROLLBACK TO trioflow_checkpoints")
        conn.execute("RELEASE trioflow_checkpoints")
    return [_checkpoint_one(conn, args, known, changes) for args in checkpoints]


def _checkpoint_one(
    conn: sqlite3.Connection, args: tuple[Any, ...], known: dict[str, str], changes: dict[str, str | None],
) -> outcome.Outcome[Any]:
    status, instance_id, first_seq, consumed = args[0], args[5], args[6], args[9]
    if consumed:
        pending = conn.execute(
            f"SELECT count(*) FROM trioflow_signals WHERE instance_id = ? AND seq IN ({', '.join('?' * len(consumed))})",
            (instance_id, *consumed)).fetchone()[0]
        if pending != len(consumed):
            if conn.execute("SELECT 1 FROM trioflow_instances WHERE instance_id = ?", (instance_id,)).fetchone() is None:
                return outcome.Error(UnknownInstanceError(f"no stored instance {instance_id!r} to checkpoint"))
            return outcome.Error(CheckpointConflictError(
                f"instance {instance_id!r}: a checkpoint consuming signals {list(consumed)} is refused"
                " (not all of them are pending)"))
    was = changes[instance_id] if instance_id in changes else known.get(instance_id)
    updated = conn.execute(*_update(args, was == status)).rowcount
    if updated != 1:
        # Nothing was written: say why.
        row = conn.execute("SELECT next_seq FROM trioflow_instances WHERE instance_id = ?", (instance_id,)).fetchone()
        if row is None:
            return outcome.Error(UnknownInstanceError(f"no stored instance {instance_id!r} to checkpoint"))
        return outcome.Error(CheckpointConflictError(
            f"instance {instance_id!r} has {row[0]} records stored; a checkpoint appending at {first_seq} is refused"
        ))
    if args[3]:
        conn.executemany(_RECORD_SQL, _record_rows((args,)))
    if consumed:
        conn.executemany(_CONSUME_SQL, [(seq, instance_id) for seq in consumed])
    notice = None if args[10] is None else _signal(conn, *args[10])[1]
    changes[instance_id] = status if args[4] is None else None  # a waiting instance is forgotten
    return outcome.Value(notice)


def _restart(
    conn: sqlite3.Connection, status: str, header: bytes, start: bytes, wake_at: float | None, instance_id: str,
    first_seq: int, records: Sequence[bytes], consumed: tuple[int, ...],
) -> Exception | None:
    """A checkpoint that restarts the instance's history (see ``Adapter.checkpoint``): fenced
    as any, its records all replaced by ``records`` from seq 0. The refusal, if refused (nothing
    written then)."""
    if consumed:
        pending = conn.execute(
            f"SELECT count(*) FROM trioflow_signals WHERE instance_id = ? AND seq IN ({', '.join('?' * len(consumed))})",
            (instance_id, *consumed)).fetchone()[0]
        if pending != len(consumed):
            return CheckpointConflictError(
                f"instance {instance_id!r}: a checkpoint consuming signals {list(consumed)} is refused"
                " (not all of them are pending)")
    updated = conn.execute(
        "UPDATE trioflow_instances SET status = ?, header = ?, start = ?, next_seq = ?, wake_at = ?"
        " WHERE instance_id = ? AND next_seq = ?",
        (status, header, start, len(records), wake_at, instance_id, first_seq)).rowcount
    if updated != 1:
        row = conn.execute("SELECT next_seq FROM trioflow_instances WHERE instance_id = ?", (instance_id,)).fetchone()
        if row is None:
            return UnknownInstanceError(f"no stored instance {instance_id!r} to checkpoint")
        return CheckpointConflictError(
            f"instance {instance_id!r} has {row[0]} records stored; a checkpoint restarting its history at"
            f" {first_seq} is refused")
    conn.execute("DELETE FROM trioflow_records WHERE instance_id = ?", (instance_id,))
    # The finished children of the runs before are kept no more: they go by their own finish
    # times (those that still run stay kept, until their parent is deleted).
    conn.execute(f"UPDATE trioflow_instances SET parent_id = NULL WHERE parent_id = ? AND {_FINISHED}", (instance_id,))
    conn.executemany(_RECORD_SQL, [(instance_id, seq, data) for seq, data in enumerate(records)])
    if consumed:
        conn.executemany(_CONSUME_SQL, [(seq, instance_id) for seq in consumed])
    return None


def _record_rows(checkpoints: Sequence[tuple[Any, ...]]) -> list[tuple[str, int, bytes]]:
    return [
        (instance_id, first_seq + k, data)
        for _, _, _, _, _, instance_id, first_seq, _, records, _, _ in checkpoints
        for k, data in enumerate(records)
    ]


_LENIENT_TEXT = functools.partial(str, encoding="utf-8", errors="surrogateescape")


def _read(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """The rows of a query that reads text (ids, workflow names, statuses, signal names). Text
    that is not UTF-8 (a damaged row) fails the whole query in ``sqlite3``: from then on the
    connection reads such text with its bad bytes kept as lone surrogates, so that the row it
    is in matches nothing this release wrote and is reported as it is (held back, or
    unreadable), every other row read as it is. (Only then: ``sqlite3``'s own decoding is the
    faster.)"""
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if conn.text_factory is _LENIENT_TEXT or "decode" not in str(exc):
            raise
        conn.text_factory = _LENIENT_TEXT
        return conn.execute(sql, params).fetchall()

#: The stored bytes are read as BLOBs whatever they hold: a value damaged into TEXT that is not
#: UTF-8 would otherwise fail the whole query (every instance it reads), not its row alone.
_COLUMNS = ("i.instance_id, i.workflow_name, i.status, CAST(i.start AS BLOB), CAST(i.header AS BLOB), i.next_seq,"
            # Whether records lie beyond the count (a probe of the records' key, in the same
            # statement: a row with no records asks for none of them).
            " EXISTS (SELECT 1 FROM trioflow_records AS b WHERE b.instance_id = i.instance_id AND b.seq >= i.next_seq),"
            " i.wake_at")
#: More records than one instance writes (16.7 million: a step a second for half a year): a
#: count above it is damage, not that many slots to make room for.
_MOST_RECORDS = 1 << 24


def _select(
    conn: sqlite3.Connection, where: str, params: tuple[Any, ...], signals: tuple[tuple[int, str, bytes], ...] = (),
) -> list[StoredInstance]:
    """Instances matching ``where``, oldest first, each with all its records: one query for the
    instances and one for the records of all of them, whatever their number. (``signals``: the
    pending signals of the one instance ``where`` matches, for :func:`_load`.)"""
    return _selected(conn, *_select_sql(where), params, signals)


def _select_sql(where: str) -> tuple[str, str]:
    """:func:`_select`'s two queries for ``where``: the instances', and their records'."""
    return (f"SELECT {_COLUMNS} FROM trioflow_instances AS i WHERE {where} ORDER BY i.rowid",
            "SELECT r.instance_id, r.seq, CAST(r.data AS BLOB) FROM trioflow_instances AS i"
            f" JOIN trioflow_records AS r ON r.instance_id = i.instance_id WHERE {where}")


#: :func:`_select`'s queries for one instance (:func:`_load`: every signal to a parked instance
#: reads its row), made once rather than at each read.
_LOAD_SQL, _LOAD_RECORDS_SQL = _select_sql("i.instance_id = ?")


def _selected(
    conn: sqlite3.Connection, rows_sql: str, records_sql: str, params: tuple[Any, ...],
    signals: tuple[tuple[int, str, bytes], ...],
) -> list[StoredInstance]:
    """:func:`_select`, its queries made (loops rather than comprehensions: each of those makes
    a function and a frame, and a parked instance's wake reads one row here)."""
    rows = _read(conn, rows_sql, params)
    # A damaged count (not an int, negative, or more records than any instance writes) gets no
    # records: the kernel then finds the header's count unmet and reports that one instance
    # unreadable, and the others go on.
    records: dict[str, list[Any]] = {}
    for row in rows:
        count = row[5]
        if type(count) is int and 0 < count <= _MOST_RECORDS:
            records[row[0]] = [None] * count
    if records:
        # Each record goes to its place by seq: no ORDER BY, so SQLite never sorts the data.
        for instance_id, seq, data in _read(conn, records_sql, params):
            slots = records.get(instance_id)
            if slots is not None and type(seq) is int and 0 <= seq < len(slots):
                slots[seq] = data  # (one beyond the count is told by the rows' last column)
        for instance_id, found in records.items():
            if None in found:
                # A damaged instance (records missing, or a count too high) is handed back with
                # an empty record in each gap: the kernel cannot read it (nor a count its
                # header does not have) and reports that one instance unreadable; the others go on.
                records[instance_id] = [b"" if data is None else data for data in found]
    selected = []
    for instance_id, workflow_name, status, start, header, count, beyond, wake in rows:
        # (A damaged count where no record is stored: the row is unreadable, as one with records
        # beyond its count is.)
        beyond = beyond or not (type(count) is int and 0 <= count <= _MOST_RECORDS)
        held = records.get(instance_id, ())
        selected.append(StoredInstance(
            instance_id=instance_id, workflow_name=workflow_name, status=status, start=start, header=header,
            # Records beyond the count (its row restored from an older backup than its records,
            # or the count lowered by hand; read in the same transaction, so never a write in
            # between): one empty record more, so that the kernel reports it unreadable and
            # runs nothing of it (the step those records hold would run again at every start).
            records=(*held, b"") if beyond else tuple(held),
            signals=signals,
            wake_at=_wake_time(wake),
        ))
    return selected


def _wake_time(wake: Any) -> float | None:
    """A row's ``wake_at`` as stored. (A wake time damaged by hand, not a number, is no time:
    see ``resumable``.)"""
    return float(wake) if type(wake) in (float, int) else None


#: Waiting instances, soonest first, read through the index on wake_at: forced, as the planner
#: would take the status index (no statistics tell it most running rows do not wait), read
#: every pending and running row and sort them all at each look (1 ms a look with 3,000 rows,
#: growing with every instance that waits; the waker looks after every batch it wakes).
_WAITING_FROM = "trioflow_instances AS i INDEXED BY trioflow_instances_by_wake"
_WAITING = "i.status IN ('pending', 'running') AND i.wake_at IS NOT NULL"
#: ``resumable()``'s rows, read through what finds each of them and nothing else: those with no
#: wake time through the partial index on them (forced, as the planner would take the status
#: index); those whose wake time is not a number (damaged by hand: never due, so resumed instead,
#: and their run stores their wait's time again) at the end of the index on wake times, where
#: text and blobs sort after every number; and parked ones with a signal pending through the
#: signals' index. Not a walk over every live row testing each: an engine opened beside 400
#: reminders parked on timers walked them all (21 VM steps each) to resume none of them. The
#: signalled instances are found by a skip over that index, one probe per instance (the next id
#: after the last): a collector parked with 100,000 readings kept for it costs one look, not
#: 100,000. (Instances that ended leaving signals unconsumed are looked at too, until they are
#: deleted.) All in rowid order through the IN list: oldest first, with no sort.
_RESUMABLE_ROWS = (
    f"i.rowid IN (SELECT rowid FROM trioflow_instances INDEXED BY trioflow_instances_unparked WHERE {_UNPARKED}"
    " UNION ALL SELECT rowid FROM trioflow_instances INDEXED BY trioflow_instances_by_wake"
    f" WHERE {_LIVE} AND wake_at IS NOT NULL AND wake_at >= ''"
    " UNION ALL SELECT p.rowid FROM (WITH RECURSIVE signalled(id) AS (SELECT min(instance_id) FROM trioflow_signals"
    " UNION ALL SELECT (SELECT min(s.instance_id) FROM trioflow_signals AS s WHERE s.instance_id > signalled.id)"
    " FROM signalled WHERE signalled.id IS NOT NULL) SELECT id FROM signalled) AS g"
    f" JOIN trioflow_instances AS p ON p.instance_id = g.id WHERE {_LIVE} AND typeof(p.wake_at) IN ('real', 'integer'))"
)


def _due(
    conn: sqlite3.Connection, before: float, limit: int, skip: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
) -> list[StoredInstance]:
    """Waiting instances due by ``before``, soonest first (the index on wake_at finds them),
    none of the workflows ``skip`` names nor of the ids ``exclude`` holds."""
    skipping, names = _skipping(conn, skip)
    excluding, excluded = _leaving_out(conn, "i.instance_id", "trioflow_excluded", exclude)
    soonest = f"SELECT i.instance_id FROM {_WAITING_FROM} WHERE {_WAITING} AND i.wake_at <= ?{skipping}{excluding}" \
              " ORDER BY i.wake_at LIMIT ?"
    params = (before, *names, *excluded, limit)
    ids = [row[0] for row in _read(conn, soonest, params)]
    if not ids:
        return []
    # The same question again, as a subquery: no parameter per id (SQLite caps their number).
    found = {s.instance_id: s for s in _select(conn, f"i.instance_id IN ({soonest})", params)}
    return [found[i] for i in ids if i in found]


def _next_wake(conn: sqlite3.Connection, skip: tuple[str, ...] = ()) -> float | None:
    skipping, names = _skipping(conn, skip)
    # In wake_at's order, the first that passes: a scan stops there (min() would read them all
    # when workflows are left out).
    # (Text sorts after every number: one not a number, damaged by hand, is never the next;
    # resumable() hands its instance back instead.)
    row = conn.execute(
        f"SELECT i.wake_at FROM {_WAITING_FROM} WHERE {_WAITING}{skipping}"
        " AND typeof(i.wake_at) IN ('real', 'integer') ORDER BY i.wake_at LIMIT 1",
        names).fetchone()
    return None if row is None or row[0] is None else float(row[0])


#: Most values left out by parameters; more go through a temporary table, since SQLite caps
#: the number of parameters (999 before 3.32).
_LEFT_OUT_PARAMETERS = 32


def _skipping(conn: sqlite3.Connection, names: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """The condition leaving out the workflows ``names``, and its parameters."""
    return _leaving_out(conn, "i.workflow_name", "trioflow_skipped", names)


def _leaving_out(conn: sqlite3.Connection, column: str, table: str, values: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """The condition leaving out the rows whose ``column`` is one of ``values`` (through the
    temporary ``table`` when they are many), and its parameters."""
    if not values:
        return "", ()
    if len(values) <= _LEFT_OUT_PARAMETERS:
        return f" AND {column} NOT IN ({', '.join('?' * len(values))})", values
    # In the connection's temporary database: nothing of it reaches the file.
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} (value TEXT PRIMARY KEY)")
    conn.execute(f"DELETE FROM temp.{table}")
    conn.executemany(f"INSERT OR IGNORE INTO temp.{table} (value) VALUES (?)", [(value,) for value in values])
    return f" AND {column} NOT IN (SELECT value FROM temp.{table})", ()


def _texts(values: Collection[str], what: str, refusal: str) -> tuple[str, ...]:
    """``values`` handed to SQLite, or :class:`DatabaseError` (``refusal``, or naming ``what``
    given one ``str``) for anything else."""
    texts = tuple(checked_names(values, what, DatabaseError))
    if any(type(value) is not str for value in texts):
        raise DatabaseError(f"{refusal}, got {texts!r}")
    return texts


def _load(conn: sqlite3.Connection, iid: str) -> StoredInstance | None:
    """One instance, its records and its pending signals."""
    # Its signals first: the row is then built once, with them (a read transaction holds both).
    rows = _selected(conn, _LOAD_SQL, _LOAD_RECORDS_SQL, (iid,), tuple(_signals(conn, iid)))
    return rows[0] if rows else None


#: :func:`_load_head`'s query: the instance's row alone, none of its records.
_LOAD_HEAD_SQL = ("SELECT i.instance_id, i.workflow_name, i.status, CAST(i.start AS BLOB), CAST(i.header AS BLOB),"
                  " i.wake_at FROM trioflow_instances AS i WHERE i.instance_id = ?")


def _load_head(conn: sqlite3.Connection, iid: str) -> StoredInstance | None:
    """One instance's row without its records and its signals (see ``HeadLoads``)."""
    for instance_id, workflow_name, status, start, header, wake in _read(conn, _LOAD_HEAD_SQL, (iid,)):
        return StoredInstance(instance_id=instance_id, workflow_name=workflow_name, status=status, start=start,
                              header=header, wake_at=_wake_time(wake))
    return None


#: A signal stored only if its instance has not ended: parameters instance id, name, payload.
_SIGNAL_SQL = (
    "INSERT INTO trioflow_signals (instance_id, name, payload) SELECT ?1, ?2, ?3 WHERE EXISTS"
    f" (SELECT 1 FROM trioflow_instances WHERE instance_id = ?1 AND {_LIVE})"
)


def _signal(conn: sqlite3.Connection, iid: str, name: str, payload: bytes) -> tuple[bool, int | None]:
    """Store a signal unless its instance has ended: (whether the instance exists, the seq)."""
    cursor = conn.execute(_SIGNAL_SQL, (iid, name, payload))
    if cursor.rowcount == 1:  # (most signals: one statement)
        return True, cursor.lastrowid
    return conn.execute("SELECT 1 FROM trioflow_instances WHERE instance_id = ?", (iid,)).fetchone() is not None, None


#: The signal stored before under a key, if any: its seq if it is pending still, else NULL.
_KEYED_SQL = (
    "SELECT s.seq FROM trioflow_signal_keys AS k LEFT JOIN trioflow_signals AS s"
    " ON s.seq = k.seq AND s.instance_id = k.instance_id WHERE k.instance_id = ? AND k.key = ?"
)


def _signal_keyed(
    conn: sqlite3.Connection, iid: str, name: str, payload: bytes, key: str,
) -> tuple[bool, int | None, bool]:
    """:func:`_signal`, unless a signal with ``key`` was stored for the instance before: (whether
    the instance exists, the seq: of the one stored now, or of the one stored before if it is
    pending still; whether the key was known)."""
    before = conn.execute(_KEYED_SQL, (iid, key)).fetchone()
    if before is not None:
        return True, before[0], True
    known, seq = _signal(conn, iid, name, payload)
    if seq is not None:
        conn.execute("INSERT INTO trioflow_signal_keys (instance_id, key, seq) VALUES (?, ?, ?)", (iid, key, seq))
    return known, seq, False


def _signal_load(
    conn: sqlite3.Connection, iid: str, name: str, payload: bytes,
) -> tuple[bool, int | None, StoredInstance | None]:
    """:func:`_signal`, then the instance's row read back in the same transaction (``None`` if
    nothing was stored): (whether the instance exists, the seq, the row)."""
    known, seq = _signal(conn, iid, name, payload)
    return known, seq, None if seq is None else _load(conn, iid)


def _signal_keyed_load(
    conn: sqlite3.Connection, iid: str, name: str, payload: bytes, key: str,
) -> tuple[bool, int | None, bool, StoredInstance | None]:
    """:func:`_signal_keyed`, then, if it stored the signal now, the instance's row read back in
    the same transaction: (whether the instance exists, the seq, whether the key was known, the
    row or ``None``)."""
    known, seq, seen = _signal_keyed(conn, iid, name, payload, key)
    return known, seq, seen, None if seq is None or seen else _load(conn, iid)


def _signals(conn: sqlite3.Connection, iid: str) -> list[tuple[int, str, bytes]]:
    # (The rows as sqlite3 makes them: tuples of those three already.)
    signals: list[tuple[int, str, bytes]] = _read(
        conn, "SELECT seq, name, CAST(payload AS BLOB) FROM trioflow_signals WHERE instance_id = ? ORDER BY seq",
        (iid,))
    return signals


#: What deleting an instance runs (one parameter each: its id): nothing of it is left behind.
#: (The id as text or as the bytes stored: an id damaged into text that is not UTF-8 is found
#: by its bytes.)
_REMOVE_SQL = (
    "DELETE FROM trioflow_signals WHERE instance_id = CAST(? AS TEXT)",
    "DELETE FROM trioflow_records WHERE instance_id = CAST(? AS TEXT)",
    "DELETE FROM trioflow_instances WHERE instance_id = CAST(? AS TEXT)",
)


def _remove(conn: sqlite3.Connection, ids: list[tuple[str]] | list[tuple[bytes]]) -> None:
    """Delete the instances ``ids`` (letting go of the children they kept: ``_LET_GO_TRIGGER``)."""
    for sql in _REMOVE_SQL:
        conn.executemany(sql, ids)


def _delete(conn: sqlite3.Connection, iid: str) -> str | None:
    """Remove a finished instance with its records and signals; the status it had (``None``: it
    was not stored). One that has not finished is left as it is."""
    found = _read(conn, "SELECT status FROM trioflow_instances WHERE instance_id = ?", (iid,))
    row = found[0] if found else None
    if row is not None and row[0] not in RESUMABLE:
        _remove(conn, [(iid,)])
    return None if row is None else str(row[0])


def _matching(workflow_name: str | None, status: str | None) -> tuple[list[str], list[Any]]:
    """SQL terms and their parameters for "of this workflow, of this status" (``None``: any)."""
    terms: list[str] = []
    params: list[Any] = []
    for column, value in (("workflow_name", workflow_name), ("status", status)):
        if value is not None:
            terms.append(f"{column} = ?")
            params.append(value)
    return terms, params


def _purge(conn: sqlite3.Connection, finished_by: float, limit: int, status: str | None,
           workflow_name: str | None) -> int:
    """Remove up to ``limit`` instances finished by then, earliest first; how many."""
    taken, params = _matching(workflow_name, status)
    taken += [_FINISHED, "finished_at <= ?"]
    params.append(finished_by)
    # A child stays while its parent is stored (it is not in the index on finish times),
    # unless this purge deletes the parent: then those of its children (and theirs) that it
    # takes go with it, found through the index on parents (with no finish time, one a release
    # from before retention finished: it finished before the parent went); those it leaves are
    # let go (see _LET_GO_TRIGGER).
    # INDEXED BY: with a status or workflow to match, the planner could take their index and
    # sort every finished row of it by time, or the index on finish times alone and read past
    # every finished row of another status or workflow; this way it reads the finished rows of
    # that status and workflow by time, from the earliest, and stops at ``limit``.
    index = _PURGE_INDEXES[workflow_name is not None, status is not None]
    ids = conn.execute(
        "WITH RECURSIVE doomed(instance_id) AS ("
        f" SELECT * FROM (SELECT instance_id FROM trioflow_instances INDEXED BY {index}"
        f" WHERE {' AND '.join(taken)} AND parent_id IS NULL"
        " ORDER BY finished_at LIMIT ?)"
        " UNION SELECT child.instance_id FROM doomed"
        " JOIN trioflow_instances AS child INDEXED BY trioflow_instances_by_parent ON child.parent_id = doomed.instance_id"
        f" WHERE {' AND '.join(taken[:-1])} AND (finished_at <= ? OR finished_at IS NULL))"
        " SELECT CAST(instance_id AS BLOB) FROM doomed", (*params, limit, *params)).fetchall()
    _remove(conn, ids)
    return len(ids)


#: The index each listing pages through (each ends in the rowid, the creation order), by
#: (whether a workflow is given, whether a status is): forced, as the planner might sort a
#: whole workflow instead; none given, the table itself, which is in rowid order.
_LISTING_INDEX = {
    (True, True): "INDEXED BY trioflow_instances_by_workflow",
    (True, False): "INDEXED BY trioflow_instances_by_workflow_name",
    (False, True): "INDEXED BY trioflow_instances_by_status",
    (False, False): "NOT INDEXED",
}


def _list(conn: sqlite3.Connection, workflow_name: str | None, status: str | None, after: str | None,
          limit: int | None, newest_first: bool) -> list[StoredInstance] | None:
    """A page of instances in creation order (rowid); ``None`` if ``after`` is not stored."""
    terms, params = _matching(workflow_name, status)
    if after is not None:
        # (By the id's bytes: an id damaged into text that is not UTF-8 is listed, and paged past.)
        place = conn.execute("SELECT rowid FROM trioflow_instances WHERE instance_id = CAST(? AS TEXT)",
                             (after.encode("utf-8", "surrogateescape"),)).fetchone()
        if place is None:
            return None
        terms.append("rowid < ?" if newest_first else "rowid > ?")
        params.append(place[0])
    page = (
        f"i.rowid IN (SELECT rowid FROM trioflow_instances {_LISTING_INDEX[workflow_name is not None, status is not None]}"
        f" WHERE {' AND '.join(['1', *terms])} ORDER BY rowid {'DESC' if newest_first else 'ASC'} LIMIT ?)"
    )
    rows = _select(conn, page, (*params, -1 if limit is None else limit))  # -1: no limit
    return rows[::-1] if newest_first else rows


#: Ops applied one at a time (creates and checkpoints go in runs: see :func:`_run_all`).
_OPS: dict[str, Callable[..., Any]] = {
    "select": _select, "list": _list, "load": _load, "load_head": _load_head, "delete": _delete, "purge": _purge, "signal": _signal,
    "signals": _signals, "signal_load": _signal_load, "signal_keyed": _signal_keyed,
    "signal_keyed_load": _signal_keyed_load, "due": _due, "next_wake": _next_wake, "restart": _restart,
}


def _record_blobs(records: Sequence[bytes], first_seq: int) -> tuple[bytearray, ...]:
    """The records a checkpoint appends, as :func:`_blob` copies them. (Not inline in
    ``checkpoint``: a comprehension there naming ``first_seq`` would make it a cell of that
    frame, one object more for the cyclic collector for every checkpoint in flight.)"""
    return tuple([bytearray(r) if type(r) is bytes else _blob(r, f"record {first_seq + k}")
                  for k, r in enumerate(records)])


def _blob(value: Any, what: str) -> bytearray:
    """A copy of ``value`` (which the caller might change before the writer gets to it) as a
    ``bytearray``: Python's sqlite3 binds a bytearray as it is, but looks for an adapter for
    every ``bytes`` value it binds (a dict lookup and two attribute lookups that fail, about
    0.6 us, more than the copy of a small value costs). :class:`DatabaseError` naming ``what``
    for anything else (SQLite would store an int or a str without complaint, in a column meant
    for bytes)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytearray(value)
    raise DatabaseError(f"{what} must be bytes, got {type(value).__name__}; nothing was written")
