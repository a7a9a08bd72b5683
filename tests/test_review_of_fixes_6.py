"""A review of ca381f3 (skip_workflows in due()/next_wake(), the waker leaving out workflows it
cannot run); each test failed before its fix."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


def returning(value: Any) -> Any:
    async def job(data: Any) -> Any:
        return value
    return job


class SQLiteWith999Variables(SQLiteAdapter):
    """SQLiteAdapter on an SQLite library with the default variable limit of SQLite < 3.32.0
    (SQLITE_MAX_VARIABLE_NUMBER = 999): e.g. Python 3.11 linked against Ubuntu 20.04's
    libsqlite3 3.31.1. Nothing else changes."""

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        return conn


async def test_sqlite_waker_keeps_firing_timers_with_a_thousand_unregistered_workflows_due(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    """docs/waiting.md (ca381f3): due instances the waker cannot resume "are left out, and never
    crowd out the others"; the commit says "any number of their due rows never delay another
    timer".

    1,000 workflows ("old0".."old999", one parked instance each, due 10 s after start) are not
    registered after a restart (a deploy that dropped them); a registered workflow's 100 s
    timer must still fire, about on time. SQLite with the 999-variable limit of SQLite
    < 3.32.0 (still what Python 3.11 links against on e.g. Ubuntu 20.04); on this build
    (limit 250,000) the same happens with 250,000 such workflow names.

    Expected: the "new" instance completes, its timer at most ~1 s late.
    Observed: it never completes: once the waker's skip set holds 998+ names, every ``due()``
    and ``next_wake()`` fails with "SQLite due failed: too many SQL variables" (a
    StorageError), and the waker retries every 5 s for ever with the same set, so no parked
    instance of any workflow is woken again until a registration empties the set (and it
    fills up again at the next look).

    Suspected cause: adapters/_sqlite.py ``_skipping`` / ``_due`` / ``_next_wake``: one SQL
    parameter per skipped name (``NOT IN (?, ?, ...)``) with no cap or chunking (a temp table,
    ``json_each(?)``, or leaving out only as many names as fit); runtime/_engine.py
    ``_wake_due`` adds names without bound and ``_waker`` treats the resulting error as
    storage being down."""
    path = tmp_path / "flows.db"
    clock = virtual_wall_clock()
    olds = [tf.workflow(f"old{i}").wait("nap", seconds=10).build() for i in range(1000)]
    new = tf.workflow("new").wait("nap", seconds=100).task("y", job=returning("y")).build()
    async with open_test_engine(adapter=SQLiteWith999Variables(path), clock=clock) as engine:
        for wf in olds:
            engine.register(wf)
        for i in range(1000):
            await engine.start(f"old{i}", instance_id=f"o{i}")
        await trio.sleep(2)  # all parked
    done = None
    async with open_test_engine(adapter=SQLiteWith999Variables(path), clock=clock) as engine:
        engine.register(new)  # none of the "old*" workflows
        iid = await engine.start("new")
        due = clock() + 100
        with trio.move_on_after(400):
            done = await engine.wait(iid)
        late = clock() - due
    assert done is not None and done.status == "completed", (
        "the registered instance's 100 s timer never fired within 400 s")
    assert late <= 1.5, f"a timer fired {late:.1f} s late"


async def test_sqlite_due_and_next_wake_accept_more_skipped_names_than_sql_variables(tmp_path: Path) -> None:
    """Adapter protocol (adapters/_protocol.py, docs/adapters.md): ``due(before, limit, *,
    skip_workflows)`` / ``next_wake(*, skip_workflows)`` leave out the workflows named, any
    collection of names; the engine passes every workflow name it could not run.

    Expected: with one more name than this SQLite build's variable limit (250,000 here; 999
    on SQLite < 3.32), the waiting instance of an unnamed workflow is returned.
    Observed: DatabaseError "SQLite due failed: too many SQL variables" (same for next_wake).

    Suspected cause: adapters/_sqlite.py ``_skipping``: one ``?`` per name in ``NOT IN (...)``."""
    adapter = SQLiteAdapter(tmp_path / "flows.db")
    await adapter.open()
    try:
        await adapter.create("n", "new", "running", start=b"s", header=b"h0")
        await adapter.checkpoint("n", "running", b"h1", [], first_seq=0, wake_at=10.0)
        limit = sqlite3.connect(":memory:").getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        names = [f"old{i}" for i in range(limit + 1)]
        outcome: list[Any] = []
        for ask in (lambda: adapter.due(100.0, 10, skip_workflows=names),
                    lambda: adapter.next_wake(skip_workflows=names)):
            try:
                got = await ask()
                outcome.append([s.instance_id for s in got] if isinstance(got, list) else got)
            except tf.StorageError as exc:
                outcome.append(f"{type(exc).__name__}: {exc}")
        assert outcome == [["n"], 10.0], outcome
    finally:
        await adapter.close()


async def test_memory_adapter_due_and_next_wake_do_not_walk_every_skipped_row(monkeypatch: Any) -> None:
    """The waker leaves out workflows it cannot run through ``skip_workflows``, so that any
    number of their due rows costs the others nothing; it asks ``next_wake(skip_workflows=...)``
    after every park of any instance and ``due(...)`` on every look, and MemoryAdapter calls run
    in the trio thread (the whole engine stands still meanwhile). 100,000 parked rows of a
    skipped workflow, all due, one other instance waiting: a call takes as many heap steps as
    the rows it gives back, not one per row left out. (It walked them all, popping and pushing
    each back: 150 ms a call here.) Counted in heap operations, not timed."""
    import heapq

    from trioflow.adapters import _memory

    adapter = MemoryAdapter()
    await adapter.open()
    n = 100_000
    for i in range(n):
        await adapter.create(f"o{i}", "old", "running", start=b"s", header=b"h0")
        await adapter.checkpoint(f"o{i}", "running", b"h1", [], first_seq=0, wake_at=1000.0 + i)
    await adapter.create("n", "new", "running", start=b"s", header=b"h0")
    await adapter.checkpoint("n", "running", b"h1", [], first_seq=0, wake_at=500_000.0)
    steps = [0]

    class Counting:
        def __getattr__(self, name: str) -> Any:
            fn = getattr(heapq, name)

            def counted(*args: Any) -> Any:
                steps[0] += 1
                return fn(*args)
            return counted

    monkeypatch.setattr(_memory, "heapq", Counting())
    for ask, expected in ((lambda: adapter.next_wake(skip_workflows=("old",)), 500_000.0),
                          (lambda: adapter.due(1e9, 10, skip_workflows=("old",)), ["n"])):
        steps[0] = 0
        got = await ask()
        assert (got if not isinstance(got, list) else [s.instance_id for s in got]) == expected
        assert steps[0] <= 10, f"{steps[0]} heap operations for one call"
