"""An operator's review of stored formats: damaged rows, and a database whose rows disagree.

Each test makes a small SQLite database with this release's own engine (on trio's MockClock),
damages one row of it as a disk fault, a partial restore or a hand edit would, opens it again
and checks what SPEC §6/§10 and docs/adapters.md promise: an unreadable instance fails alone
with a clear error, runs nothing, and never stops the engine. Each test fails on the code it
was written against.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

import trioflow as tf

T0 = 1_800_000_000.0


def _workflows() -> list[Any]:
    return [
        tf.workflow("w").task("a", job="a").wait("w", seconds=100).task("b", job="a").build(),
        tf.workflow("h").task("a", job="hang").task("b", job="a").build(),
        tf.workflow("f").task("a", job="a").build(),
    ]


def _register(engine: tf.Engine, runs: list[str], hang: bool) -> None:
    async def a(data: Any) -> Any:
        runs.append("a")
        return {"v": 1}

    async def hang_job(data: Any) -> Any:
        runs.append("hang")
        if hang:
            await trio.sleep_forever()
        return {"h": 1}

    engine.jobs.register("a", a)
    engine.jobs.register("hang", hang_job)
    for wf in _workflows():
        engine.register(wf)


def _run(fn: Any, *args: Any) -> Any:
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


def _make(db: Path) -> None:
    """``waiter`` (parked in a 100 s timer after a), ``hanger`` (running inside step a, whose
    job hangs: no record stored yet) and ``done`` (completed)."""

    async def make() -> None:
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=lambda: T0 + trio.current_time()) as e:
            _register(e, [], hang=True)
            await e.start("w", {"x": 1}, instance_id="waiter")
            await e.start("h", {"x": 1}, instance_id="hanger")
            await e.start("f", {"x": 1}, instance_id="done")
            await e.wait("done")
            await trio.sleep(5)

    _run(make)


def _edit(db: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    conn = sqlite3.connect(db)
    try:
        for sql, params in statements:
            conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


def _blob(db: Path, column: str, iid: str) -> Any:
    conn = sqlite3.connect(db)
    try:
        (blob,) = conn.execute(f"SELECT {column} FROM trioflow_instances WHERE instance_id = ?", (iid,)).fetchone()
    finally:
        conn.close()
    return msgpack.unpackb(blob, strict_map_key=False)


async def _reopen(db: Path, body: Any, runs: list[str] | None = None) -> Any:
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db),
                              clock=lambda: T0 + 50 + trio.current_time()) as engine:
        _register(engine, [] if runs is None else runs, hang=False)
        return await body(engine)


async def _a_fresh_instance_completes(engine: tf.Engine) -> None:
    await engine.start("f", {}, instance_id="fresh")
    with trio.fail_after(100):
        assert (await engine.wait("fresh")).status == "completed"


def test_a_start_record_whose_creation_time_is_not_a_number_fails_that_instance_not_the_engine(
        tmp_path: Path) -> None:
    """An operator relies on SPEC §6: an unreadable snapshot fails that one instance with a
    clear error and never stops the engine. Instead, a start record whose creation time is not
    a number (a string, nil: a bit flip in the type byte) is decoded without complaint; the
    resumed run's end (and the engine's own "internal error" fallback, which compares the same
    field) raises TypeError, and the whole ``open_engine`` block dies with an ExceptionGroup,
    at every open: no instance of the database can run."""
    db = tmp_path / "flows.db"
    _make(db)
    start = _blob(db, "start", "hanger")
    start[6] = "yesterday"
    _edit(db, ("UPDATE trioflow_instances SET start = ? WHERE instance_id = 'hanger'", (msgpack.packb(start),)))

    async def body(engine: tf.Engine) -> Any:
        await _a_fresh_instance_completes(engine)
        with trio.fail_after(1000):
            return await engine.wait("hanger")

    hanger = _run(_reopen, db, body)
    assert hanger.status == "failed" and hanger.error_name == "SnapshotDecodeError", hanger


def test_a_running_header_without_its_main_lane_is_reported_unreadable(tmp_path: Path) -> None:
    """docs/adapters.md: a damaged instance is reported unreadable, runs nothing, and the
    others resume. A running instance's header whose lanes map is empty (no main line) is
    decoded as good instead: the resumed run fails with ``KeyError: ''``, "its failure could
    not be stored (KeyError: ''); it stays running in storage and resumes with the next
    engine", so it is taken up again at every start, ``get_instance`` says ``running`` for
    ever, and ``wait()`` raises InstanceNotLiveError instead of giving the failed instance."""
    db = tmp_path / "flows.db"
    _make(db)
    header = _blob(db, "header", "hanger")
    header[8] = {}
    _edit(db, ("UPDATE trioflow_instances SET header = ? WHERE instance_id = 'hanger'", (msgpack.packb(header),)))

    async def body(engine: tf.Engine) -> Any:
        await _a_fresh_instance_completes(engine)
        with trio.fail_after(1000):
            waited = await engine.wait("hanger")
        return waited, await engine.get_instance("hanger")

    waited, seen = _run(_reopen, db, body)
    assert (waited.status, waited.error_name) == ("failed", "SnapshotDecodeError"), waited
    assert seen is not None and seen.status == "failed", seen


def test_records_beyond_the_stored_count_do_not_run_a_step_again_at_every_restart(tmp_path: Path) -> None:
    """docs/adapters.md: "An instance whose records do not match its count ... is handed back
    ...: the kernel then reports that one instance unreadable, runs nothing of it". A row
    whose record table holds more than its count says (its instances row restored from an
    older backup than its records, or the count lowered by hand) is read as if the extra
    records were not there: the step they record as completed runs its job again, the
    checkpoint then fails on the UNIQUE key of the record already stored ("DatabaseError:
    SQLite checkpoint failed: UNIQUE constraint failed"), the instance stays running, and the
    next engine runs the job again: a charge repeated at every restart, for ever."""
    db = tmp_path / "flows.db"
    _make(db)
    record = [0, "", "a", 1, "completed", True, None, {"h": 1}, None, None, T0 + 1, T0 + 2, 1, None, None]
    _edit(db, ("INSERT INTO trioflow_records VALUES ('hanger', 0, ?)", (msgpack.packb(record),)))

    async def body(engine: tf.Engine) -> Any:
        await _a_fresh_instance_completes(engine)
        with trio.move_on_after(1000):
            try:
                await engine.wait("hanger")
            except tf.TrioflowError:
                pass
        return await engine.get_instance("hanger")

    runs: list[str] = []
    _run(_reopen, db, body, runs)
    seen = _run(_reopen, db, body, runs)
    assert runs.count("hang") == 0, f"the step recorded completed ran {runs.count('hang')} times over two restarts"
    assert seen is not None and seen.status == "failed", seen


def test_a_row_whose_status_column_says_finished_while_its_header_runs_is_reported_not_left_running(
        tmp_path: Path) -> None:
    """An operator who marks a stuck row finished by hand (``UPDATE trioflow_instances SET
    status = 'cancelled'``, the usual first aid) relies on the engine to report the row one
    way or the other. The adapter's status column and the header now disagree, and nothing
    checks it (the workflow-name column is checked against the start: "the row of instance
    ... holds the snapshot of ..."): ``get_instance`` says ``running`` (the header), resume
    never takes it up (the column), and ``engine.wait()`` raises InstanceNotLiveError telling
    the operator to "register its workflow or call resume()", neither of which does anything:
    the instance is neither run nor reported, at every open."""
    db = tmp_path / "flows.db"
    _make(db)
    _edit(db, ("UPDATE trioflow_instances SET status = 'cancelled' WHERE instance_id = 'hanger'", ()))

    async def body(engine: tf.Engine) -> Any:
        await _a_fresh_instance_completes(engine)
        await engine.resume()
        try:
            with trio.fail_after(10_000):
                waited = await engine.wait("hanger")
        except tf.InstanceNotLiveError as exc:
            waited = exc
        return waited, await engine.get_instance("hanger")

    waited, seen = _run(_reopen, db, body)
    assert isinstance(waited, tf.WorkflowInstance), f"wait() raised {waited!r}; get_instance says {seen.status!r}"
    assert waited.status in ("failed", "cancelled") and seen.status == waited.status, (waited, seen)


def test_one_rows_damaged_wake_time_does_not_stop_the_engine(tmp_path: Path) -> None:
    """SPEC §6: a damaged row fails that one instance and never stops the engine. A parked
    instance whose ``wake_at`` column holds text (a hand edit to reschedule it, 'soon' or an
    ISO date) stops the whole engine instead: ``next_wake`` calls ``float()`` on it,
    DatabaseError ("SQLite next_wake failed: could not convert string to float") escapes the
    waker and ends ``open_engine`` with it, at every open, so no instance of the database runs
    until the row is found and mended by hand."""
    db = tmp_path / "flows.db"
    _make(db)
    _edit(db, ("UPDATE trioflow_instances SET wake_at = 'soon' WHERE instance_id = 'waiter'", ()))

    async def body(engine: tf.Engine) -> Any:
        await _a_fresh_instance_completes(engine)
        await trio.sleep(200)
        return await engine.get_instance("waiter")

    waiter = _run(_reopen, db, body)
    assert waiter is not None and waiter.status == "completed", waiter  # resumed: its header holds the wait


def test_a_database_locked_by_another_connection_at_open_is_a_passing_failure(tmp_path: Path) -> None:
    """docs/adapters.md: "Failures that may pass (another connection holding the write lock
    past busy_timeout, a full disk, failing I/O) raise DatabaseUnavailableError". A supervisor
    that retries the engine's start on StorageUnavailableError (a backup or an operator's
    sqlite3 shell holding the write lock for a moment) relies on that. At open, the same lock
    raises plain DatabaseError, "cannot open ... as a trioflow database: database is locked",
    the class (and wording) of a file that is not a trioflow database at all."""
    db = tmp_path / "flows.db"

    async def create() -> None:
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)):
            pass

    trio.run(create)
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")

        async def reopen() -> None:
            async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db, busy_timeout=0.1)):
                pass

        with pytest.raises(tf.TrioflowError) as caught:
            trio.run(reopen)
        assert isinstance(caught.value, tf.StorageUnavailableError), repr(caught.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
