"""SQLite storage under what an adversarial review tried (a test each): values near the limits,
busy timeouts SQLite cannot keep, names that are not files, files that are not trioflow's, the
one-engine lock through hard links and forked helpers, and rows damaged by hand."""

from __future__ import annotations

import datetime
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf

MiB = 1024 * 1024


async def test_a_step_whose_input_and_output_are_each_under_the_16_mib_limit_completes(tmp_path: Path) -> None:
    """The documented limit is per value: "one [value] over 16 MiB encoded ... is refused with an
    UnencodableValueError naming it" (docs/adapters.md, README "Values you can store",
    docs/errors.md). A step that gets a 9 MiB document as its input (from an ``input=`` mapper)
    and returns a 9 MiB document stores two values each well under the limit, yet it fails
    with ``ValueTooLargeError: step record 'b#1' is too large``, a message that names no value:
    the codec applies the per-value limit to the whole step record (input + output + fields).
    The step should complete (or, at worst, its input be dropped from the record as the failure
    path does). Cause: runtime/_codec.py:_encode_record (``len(packed) > MAX_VALUE_BYTES``)."""
    doc = "x" * (9 * MiB)

    async def make(_: Any) -> str:
        return doc

    async def transform(text: str) -> str:
        return text.upper()

    wf = (tf.workflow("big").task("a", job=make)
          .task("b", job=transform, input=lambda ctx: ctx.steps["a"]).build())
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(tmp_path / "f.db")) as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("big"))
    assert done.status == "completed", done.error
    assert done.output == doc.upper()


async def test_an_infinite_busy_timeout_is_accepted_or_refused_with_a_trioflow_error(tmp_path: Path) -> None:
    """``SQLiteAdapter(busy_timeout=float("inf"))`` (a natural way to say "wait for the lock as
    long as it takes") passes the constructor's own check (``not busy_timeout >= 0`` is false
    for inf) and then crashes with a bare ``OverflowError: cannot convert float infinity to
    integer`` from ``int(self.busy_timeout * 1000)``: not a ``tf.TrioflowError``, unlike every
    other bad option (``synchronous="full"``, ``busy_timeout=-1`` or ``"5"`` raise
    ``DatabaseError``). It should be accepted (clamped) or refused with ``DatabaseError``.
    Cause: adapters/_sqlite.py:SQLiteAdapter.__init__."""
    try:
        adapter = tf.adapters.SQLiteAdapter(tmp_path / "f.db", busy_timeout=float("inf"))
    except tf.TrioflowError:
        return
    await adapter.open()
    await adapter.close()


async def test_a_busy_timeout_of_a_month_still_waits_for_another_connections_lock(tmp_path: Path) -> None:
    """SQLite's busy timeout is a C ``int`` of milliseconds: ``PRAGMA busy_timeout = N`` with N
    above 2**31 - 1 (about 24.8 days), and ``sqlite3.connect(timeout=...)`` likewise, silently
    set it to **0**. So ``SQLiteAdapter(busy_timeout=timedelta(days=30))`` (accepted by the
    constructor) never waits at all: a write that meets another connection's write lock (a
    backup, an operator's sqlite3 shell, the planned read-only CLI) fails at once with
    ``DatabaseUnavailableError`` instead of waiting the month the user asked for. Here the other
    connection holds the lock for 0.3 s; the create should wait and succeed. The value should
    be clamped to SQLite's maximum (or refused). Cause: adapters/_sqlite.py:SQLiteAdapter.__init__
    (``_busy_ms``), _connect (``timeout=``) and _run_inline (``PRAGMA busy_timeout``)."""
    path = tmp_path / "f.db"
    adapter = tf.adapters.SQLiteAdapter(path, busy_timeout=datetime.timedelta(days=30))
    await adapter.open()
    try:
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")

        async def release() -> None:
            await trio.sleep(0.3)
            other.execute("COMMIT")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(release)
            created = await adapter.create("i", "w", "running", start=b"s", header=b"h")
        assert created is True
        other.close()
    finally:
        await adapter.close()


def test_a_database_refused_at_open_is_left_untouched(tmp_path: Path) -> None:
    """Many applications keep their own schema version in ``PRAGMA user_version``. Pointing
    ``SQLiteAdapter`` at such a database (user_version 1, no trioflow tables) is refused with
    ``DatabaseError: ... no such table: trioflow_instances`` (it is taken for a trioflow schema-1
    file), but only after ``PRAGMA journal_mode=WAL`` was run on it outside the migration's
    transaction: the refused file comes back rewritten, switched for good from its rollback
    journal to WAL (file header bytes 18-19 go from 1 to 2, a ``-wal`` appears on next use,
    and it no longer works on network file systems or for readers of older SQLite). docs say
    a file the adapter cannot use is "refused with DatabaseError, untouched"; what is refused
    must not be modified. Cause: adapters/_sqlite.py:SQLiteAdapter._connect (journal mode set
    before the schema is checked; a user_version of 1 without ``trioflow_instances`` is not
    recognised as foreign)."""
    import trio as _trio

    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users VALUES (1, 'ada')")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    before = path.read_bytes()

    async def open_it() -> None:
        with pytest.raises(tf.adapters.DatabaseError):
            await tf.adapters.SQLiteAdapter(path).open()

    _trio.run(open_it)
    with sqlite3.connect(path) as conn:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert mode == "delete", f"the refused file was switched to journal_mode={mode}"
    assert path.read_bytes() == before


async def test_a_refused_second_open_through_a_hard_link_keeps_the_live_engines_sqlite_locks(
        tmp_path: Path) -> None:
    """docs/adapters.md: a second adapter on the same file, "through a symlink or a hard link
    too, gets DatabaseLockedError". Through a hard link in the same process it does, but
    ``_lock`` first opens a descriptor on the live database file and then closes it; POSIX
    advisory locks belong to the process and inode, and closing *any* descriptor of the file
    drops them all (sqlite.org/howtocorrupt.html section 2.2). The live engine's connection
    silently loses the SHARED lock SQLite holds on the database in WAL mode: another process
    (the sqlite3 shell, a backup or maintenance script) can now switch the file out of WAL and
    write it while the engine still writes its WAL, and the database is corrupted (here:
    the other process's rows vanish and ``PRAGMA integrity_check`` reports "wrong # of entries
    in index"). Before the refused open, that other process is refused with "database is
    locked", as it should be after it too. Cause: adapters/_sqlite.py:SQLiteAdapter._lock and
    _flock (an fd on the database file itself, closed on refusal; likewise at close() for other
    connections of the process, e.g. an SQLiteDriver on the same file)."""
    import sys

    other = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], timeout=0.2, isolation_level=None)\n"
        "try:\n"
        "    c.execute('PRAGMA journal_mode=DELETE')\n"
        "    for i in range(50):\n"
        "        c.execute(\"INSERT INTO trioflow_instances (instance_id, workflow_name, status, header)"
        " VALUES (?, 'q', 'completed', x'00')\", (f'q{i}',))\n"
        "    print('wrote')\n"
        "except sqlite3.OperationalError as e:\n"
        "    print('refused', e)\n"
    )
    path = tmp_path / "flows.db"
    adapter = tf.adapters.SQLiteAdapter(path)
    await adapter.open()
    try:
        await adapter.create("i0", "w", "running", start=b"s", header=b"h")
        os.link(path, tmp_path / "alias.db")
        with pytest.raises(tf.adapters.DatabaseLockedError):
            await tf.adapters.SQLiteAdapter(tmp_path / "alias.db").open()
        outsider = await trio.run_process([sys.executable, "-c", other, str(path)], capture_stdout=True)
        for i in range(1, 200):
            await adapter.create(f"i{i}", "w", "running", start=b"s", header=b"h" * 1000)
    finally:
        await adapter.close()
    with sqlite3.connect(path) as conn:
        check = conn.execute("PRAGMA integrity_check").fetchall()
    conn.close()
    assert outsider.stdout.decode().startswith("refused"), (
        f"another process got the write lock of a live engine's database: {outsider.stdout!r}; integrity: {check}")
    assert check == [("ok",)]


async def test_a_row_whose_record_count_is_damaged_within_range_fails_alone_and_runs_nothing(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """docs/adapters.md: "An instance whose records do not match its count (rows lost or
    deleted by hand) is handed back with what was found: the kernel then reports that one
    instance unreadable". The existing test covers counts that are not ints, negative or huge
    (10**12); a count that is merely wrong (here ``next_seq`` 5 for an instance with 1 record)
    is not noticed: ``_select`` drops the four empty slots, the kernel sees a consistent
    instance and resumes it, **step b runs again** (a side effect), its checkpoint is refused
    by the fence (``CheckpointConflictError``), ``wait()`` raises ``InstanceNotLiveError`` and
    the row stays ``running``, so every restart runs b again. It should be reported ``failed``
    (unreadable, left untouched) without running anything. Cause: adapters/_sqlite.py:_select
    (missing slots stripped instead of marking the instance damaged)."""
    path = tmp_path / "f.db"
    ran: list[str] = []

    async def hang(data: Any) -> None:
        await trio.sleep_forever()

    async def ok(data: Any) -> str:
        return "ok"

    async def b(data: Any) -> str:
        ran.append("b")
        return "b"

    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(tf.workflow("w").task("a", job=ok).task("b", job=hang).build())
        for n in range(2):
            await engine.start("w", instance_id=f"i{n}")
        await trio.sleep(1)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT next_seq FROM trioflow_instances WHERE instance_id = 'i1'").fetchone() == (1,)
        conn.execute("UPDATE trioflow_instances SET next_seq = 5 WHERE instance_id = 'i1'")
    conn.close()
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(tf.workflow("w").task("a", job=ok).task("b", job=b).build())
        assert (await engine.wait("i0")).status == "completed"
        damaged = await engine.get_instance("i1")
        assert damaged is not None and damaged.status == "failed"
        assert ran == ["b"], "only i0 runs b; the damaged i1 must run nothing"


async def test_a_restarted_process_can_open_the_database_while_a_forked_helper_of_the_killed_one_lives(
        tmp_path: Path) -> None:
    """docs/adapters.md: "The kernel drops the lock when the process dies, so a restarted
    process can always resume." The one-engine lock is an ``flock`` on two descriptors, and
    flock locks belong to the open file description, which ``fork()`` shares with the child.
    A job that hands CPU work to ``multiprocessing`` (the ``fork`` start method, Python's
    default on Linux) gives the helper the engine's lock; after the engine process is
    SIGKILLed, the restarted process gets ``DatabaseLockedError`` for as long as the orphaned
    helper lives (here 20 s; a pool worker or a long computation: indefinitely), and nothing
    resumes. The lock should die with the engine process (close the lock descriptors in the
    child with ``os.register_at_fork(after_in_child=...)``, or use POSIX ``fcntl`` locks, which
    a fork does not inherit). Cause: adapters/_sqlite.py:SQLiteAdapter._lock / _flock."""
    import signal
    import subprocess
    import sys

    db, pidfile = tmp_path / "f.db", tmp_path / "helper.pid"
    child = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fork_lock_child.py")), str(db), str(pidfile)])
    helper = None
    try:
        with trio.fail_after(20):
            while not (pidfile.exists() and pidfile.read_text().strip()):
                assert child.poll() is None, "the engine process died"
                await trio.sleep(0.05)
        helper = int(pidfile.read_text())
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        adapter = tf.adapters.SQLiteAdapter(db)
        # DatabaseLockedError while the helper lives (20 s). The helper lets go of the lock as
        # it starts (an at-fork hook), which a loaded machine may run some milliseconds after
        # the pid file is written: tried again for up to 5 s, well short of the helper's life.
        with trio.fail_after(5):
            while True:
                try:
                    await adapter.open()
                    break
                except tf.adapters.DatabaseLockedError:
                    await trio.sleep(0.05)
        stored = await adapter.load("i0")
        await adapter.close()
        assert stored is not None and stored.status == "running"
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        if helper is not None:
            try:
                os.kill(helper, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_an_in_memory_database_name_is_refused_and_creates_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``SQLiteAdapter(":memory:")`` (what a DBOS or SQLAlchemy user types for a throwaway test
    database) opened an in-memory database (not durable, unlike what the adapter promises),
    after taking its lock on files it created in the working directory, named ``:memory:`` and
    ``:memory:.lock``; a second one in the process was refused as locked. It is refused at
    once, pointing at MemoryAdapter, and touches no file."""
    monkeypatch.chdir(tmp_path)
    for name in (":memory:", "", Path(":memory:")):
        with pytest.raises(tf.adapters.DatabaseError, match="use MemoryAdapter"):
            tf.adapters.SQLiteAdapter(name)
    assert sorted(os.listdir(tmp_path)) == []


async def test_a_signal_name_that_is_not_valid_text_is_refused_as_a_bad_argument(tmp_path: Path) -> None:
    """A signal name holding a lone surrogate cannot be stored: it was refused as a storage
    failure (``DatabaseError: SQLite signal failed``), blaming the database for the caller's
    argument. It is an ``InvalidArgumentError`` naming the name, and nothing is stored."""
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(tmp_path / "f.db")) as engine:
        engine.register(tf.workflow("w").receive("r", signal="go").build())
        iid = await engine.start("w")
        with pytest.raises(tf.InvalidArgumentError, match="valid text"):
            await engine.signal(iid, "go\udc80")
        assert await engine.adapter.signals(iid) == []
        await engine.cancel(iid)


def test_another_applications_database_with_a_high_schema_version_is_not_blamed_on_a_newer_trioflow(
        tmp_path: Path) -> None:
    """Its own user_version 7, no trioflow table: the error said only that a newer trioflow
    wrote it, which sends its user looking for an upgrade rather than at the path."""
    import trio as _trio

    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
        conn.execute("PRAGMA user_version = 7")
    conn.close()
    before = path.read_bytes()

    async def open_it() -> None:
        with pytest.raises(tf.adapters.DatabaseError, match=r"or is another application's database \(it has no "
                                                            r"trioflow_instances table\)"):
            await tf.adapters.SQLiteAdapter(path).open()

    _trio.run(open_it)
    assert path.read_bytes() == before
