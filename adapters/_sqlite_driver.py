"""SQLite data driver over the user's own tables (real columns), through a worker thread.

Table and column names are checked against the database's real schema before any SQL is built,
and only then quoted into the statement (by :func:`_quote`, the one place that does it); values
are always bound parameters.

The driver also keeps the run ledger (:class:`~._driver.RunLedger`) of transactional runs in a
table of the user's database, ``trioflow_transactions``, created on first use inside the run's
own transaction, so the record commits (or rolls back) with the run's writes.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import date, datetime
from typing import Any, TypeVar

import trio

from trioflow._errors import SnapshotDecodeError
from trioflow._engine_arguments import refuses_unbound_arguments
from trioflow._virtual_time import waiting_on_a_thread

from ._driver import _KEY_CHANGE, DriverError, check_columns, Row, TransactionOwnership, UnknownColumnError, UnknownEntityError

T = TypeVar("T")

#: The run ledger's table in the user's database (see :meth:`SQLiteDriver.record_run`).
LEDGER_TABLE = "trioflow_transactions"
_LEDGER_SCHEMA = f"CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (run_key TEXT PRIMARY KEY, state BLOB NOT NULL)"


class SQLiteDriver:
    """Works on existing tables of a SQLite file (a path) or of a connection you hand over.

    A connection handed over must have been made with ``check_same_thread=False``; the driver
    switches it to autocommit mode and manages transactions itself (``BEGIN``/``SAVEPOINT``).
    Every call runs in a worker thread, one at a time, never blocking the event loop.
    """

    @refuses_unbound_arguments
    def __init__(self, path_or_connection: str | os.PathLike[str] | sqlite3.Connection) -> None:
        if not isinstance(path_or_connection, (str, os.PathLike, sqlite3.Connection)):
            raise DriverError(
                f"SQLiteDriver takes the path of a database file or a sqlite3.Connection, got {path_or_connection!r}")
        where = None if isinstance(path_or_connection, sqlite3.Connection) else os.fspath(path_or_connection)
        if where is not None and ("\0" if isinstance(where, str) else b"\0") in where:
            raise DriverError(f"SQLiteDriver needs the path of a database file, got {path_or_connection!r}: a path"
                              " cannot hold a NUL")
        self._source = path_or_connection
        self._conn: sqlite3.Connection | None = None
        self._columns: dict[str, tuple[list[str], str]] = {}
        #: The tables declared WITHOUT ROWID (their rows are found by their key alone).
        self._without_rowid: set[str] = set()
        #: Each rowid table's name for its rowid that no column of its own takes (``rowid``,
        #: ``_rowid_`` or ``oid``).
        self._rowid_alias: dict[str, str] = {}
        #: The tables whose declared key is their rowid (an INTEGER PRIMARY KEY).
        self._key_is_rowid: set[str] = set()
        #: Each table's generated columns (computed by SQLite: read, never written).
        self._generated: dict[str, frozenset[str]] = {}
        self._limiter = trio.CapacityLimiter(1)
        self._ownership = TransactionOwnership()

    @property
    def path(self) -> str | os.PathLike[str] | None:
        """The database file it was given (``None``: it was handed a connection)."""
        return None if isinstance(self._source, sqlite3.Connection) else self._source

    # -- the Driver protocol ------------------------------------------------------------------

    async def create(self, entity: str, data: Mapping[str, Any]) -> Row:
        async with self._ownership.call():
            columns, key = await self._schema(entity)
            names = self._writable(entity, self._checked(entity, columns, data))
            table = _quote(entity)
            alias = self._rowid_alias.get(entity)
            key_is_rowid = entity in self._key_is_rowid

            def insert(conn: sqlite3.Connection) -> Row:
                cols = ", ".join(_quote(c) for c in names)
                marks = ", ".join("?" for _ in names)
                sql = f"INSERT INTO {table} ({cols}) VALUES ({marks})" if names else f"INSERT INTO {table} DEFAULT VALUES"
                if alias is None:
                    # No rowid to find it by (a WITHOUT ROWID table, or every name of it a
                    # column's): by its key, which may come from a default (then as RETURNING
                    # gives it), read again as stored (after AFTER triggers).
                    given = data.get(key)
                    if _RETURNING:
                        returned = _rows(conn.execute(f"{sql} RETURNING {_quote(key)}", _bound(data, names)))
                        given = returned[0][key] if returned else None
                    else:
                        cur = conn.execute(sql, _bound(data, names))
                        if given is None and key_is_rowid:
                            given = cur.lastrowid  # (an INTEGER PRIMARY KEY left NULL is the rowid)
                    found = conn.execute(f"SELECT * FROM {table} WHERE {_quote(key)} = ?", (given,))
                else:  # by the rowid SQLite gave it (the key may be an alias of it, given NULL)
                    cur = conn.execute(sql, _bound(data, names))
                    found = conn.execute(f"SELECT {self._select(entity)} FROM {table} WHERE {alias} = ?",
                                         (cur.lastrowid,))
                rows = _rows(found)
                if not rows:
                    raise DriverError(f"create in {entity!r}: give the row its primary key {key!r}")
                row = rows[0]
                if row[key] is None:
                    # (SQLite lets a rowid table's non-integer key be NULL.) A row no key names
                    # cannot be found again, nor undone by its entity step's compensation.
                    raise DriverError(f"create in {entity!r}: its primary key {key!r} is NULL; give the row one")
                return row

            # One unit: a row that cannot be read back is not left behind.
            return await self._run(_atomic(insert), f"create in {entity!r}")

    async def find_one(self, entity: str, where: Mapping[str, Any]) -> Row | None:
        rows = await self.find_many(entity, where)
        return rows[0] if rows else None

    async def find_many(self, entity: str, where: Mapping[str, Any]) -> list[Row]:
        async with self._ownership.call():
            columns, key = await self._schema(entity)
            clause, params = self._where(entity, columns, where)
            sql = f"SELECT {self._select(entity)} FROM {_quote(entity)}{clause} ORDER BY {_quote(key)}"

            def select(conn: sqlite3.Connection) -> list[Row]:
                return _rows(conn.execute(sql, params))

            return await self._run(select, f"find in {entity!r}")

    async def update(self, entity: str, where: Mapping[str, Any], data: Mapping[str, Any]) -> list[Row]:
        async with self._ownership.call():
            columns, key = await self._schema(entity)
            names = self._writable(entity, self._checked(entity, columns, data))
            clause, params = self._where(entity, columns, where)
            if not names:
                raise DriverError(f"update of {entity!r}: no columns to set")

            table, key_col = _quote(entity), _quote(key)
            sets = ", ".join(f"{_quote(c)} = ?" for c in names)

            def update(conn: sqlite3.Connection) -> list[Row]:
                keys = [r[0] for r in conn.execute(f"SELECT {key_col} FROM {table}{clause}", params).fetchall()]
                if key in data and any(k != data[key] for k in keys):
                    raise DriverError(_KEY_CHANGE.format(entity=entity, key=key))
                for k in keys:
                    conn.execute(f"UPDATE {table} SET {sets} WHERE {key_col} = ?", _bound(data, names) + [k])
                return [_rows(conn.execute(f"SELECT {self._select(entity)} FROM {table} WHERE {key_col} = ?", (k,)))[0]
                        for k in keys]

            return await self._run(_atomic(update), f"update of {entity!r}")

    async def delete(self, entity: str, where: Mapping[str, Any]) -> int:
        async with self._ownership.call():
            columns, _ = await self._schema(entity)
            clause, params = self._where(entity, columns, where)
            sql = f"DELETE FROM {_quote(entity)}{clause}"

            def delete(conn: sqlite3.Connection) -> int:
                return conn.execute(sql, params).rowcount

            return await self._run(delete, f"delete from {entity!r}")

    async def primary_key(self, entity: str) -> str:
        return (await self._schema(entity))[1]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, nested blocks as savepoints ``trioflow_<level>``.

        Savepoint names are unique because blocks never interleave: a nested block is exclusive
        within its transaction's task tree (see :class:`TransactionOwnership`), so the open
        savepoints are always one stack, as SQLite keeps them."""
        async with self._ownership.transaction(self._open_block, self._commit_block, self._roll_back_block):
            yield

    async def _open_block(self, level: int) -> None:
        await self._run(lambda c: c.execute("BEGIN IMMEDIATE" if level == 1 else f"SAVEPOINT trioflow_{level}"),
                        "begin")

    async def _commit_block(self, level: int, _: None) -> None:
        await self._run(lambda c: c.execute("COMMIT" if level == 1 else f"RELEASE trioflow_{level}"), "commit")

    async def _roll_back_block(self, level: int, _: None) -> None:
        await self._run(_rollback(level, f"trioflow_{level}"), "rollback")

    # -- the RunLedger protocol ---------------------------------------------------------------

    async def record_run(self, key: str, payload: bytes) -> None:
        """Store ``payload`` under ``key`` in the open transaction (its rollback removes it).

        The ledger table is created here, in the same transaction, rather than up front: a
        database that only ever sees plain runs never gets it.
        """
        self._ownership.require_transaction("record_run")
        data = bytes(payload)

        def record(conn: sqlite3.Connection) -> None:
            conn.execute(_LEDGER_SCHEMA)
            conn.execute(f"INSERT OR REPLACE INTO {LEDGER_TABLE} (run_key, state) VALUES (?, ?)", (key, data))

        async with self._ownership.call():  # not while a sibling's nested block is open
            await self._run(record, f"recording run {key!r}")

    async def forget_runs(self, keys: Sequence[str]) -> None:
        """Delete the run records under ``keys`` (see :class:`~._driver.ForgetsRuns`), if the
        ledger table is there at all."""
        wanted = [(key,) for key in keys]

        def forget(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LEDGER_TABLE,)).fetchone():
                conn.executemany(f"DELETE FROM {LEDGER_TABLE} WHERE run_key = ?", wanted)

        async with self._ownership.call():
            await self._run(_atomic(forget), f"forgetting {len(wanted)} run records")

    async def find_run(self, key: str) -> bytes | None:
        """The payload committed under ``key`` (``None`` if there is none, or no ledger yet)."""
        async with self._ownership.call():
            def find(conn: sqlite3.Connection) -> bytes | None:
                exists = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LEDGER_TABLE,)).fetchone()
                if exists is None:
                    return None
                # (As a BLOB whatever it holds: a record damaged into text or a number is then
                # unreadable, as a damaged blob is, rather than an error of the query.)
                row = conn.execute(f"SELECT CAST(state AS BLOB) FROM {LEDGER_TABLE} WHERE run_key = ?",
                                   (key,)).fetchone()
                if row is None:
                    return None
                if row[0] is None:
                    raise SnapshotDecodeError(f"the ledger record of run {key!r} is empty (NULL)")
                return bytes(row[0])

            return await self._run(find, f"looking up run {key!r}")

    async def aclose(self) -> None:
        """Close the connection the driver opened itself (a handed-over one stays open)."""
        if self._conn is not None and not isinstance(self._source, sqlite3.Connection):
            conn, self._conn = self._conn, None
            with waiting_on_a_thread():
                await trio.to_thread.run_sync(conn.close, limiter=self._limiter)

    # -- internals ----------------------------------------------------------------------------

    async def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            source = self._source

            def connect() -> sqlite3.Connection:
                conn = source if isinstance(source, sqlite3.Connection) else sqlite3.connect(
                    source, check_same_thread=False)
                conn.isolation_level = None
                return conn

            with waiting_on_a_thread():
                self._conn = await trio.to_thread.run_sync(connect, limiter=self._limiter)
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T], what: str) -> T:
        try:
            conn = await self._connection()
            with waiting_on_a_thread():  # a test's MockClock must not leap while SQLite works
                return await trio.to_thread.run_sync(fn, conn, limiter=self._limiter)
        except sqlite3.ProgrammingError as exc:
            if "thread" in str(exc):
                raise DriverError(
                    "the connection given to SQLiteDriver was made in another thread; "
                    "create it with sqlite3.connect(..., check_same_thread=False)") from exc
            raise DriverError(f"{what} failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise DriverError(f"{what} failed: {exc}") from exc
        except (OverflowError, UnicodeEncodeError) as exc:  # (a value no SQLite column takes)
            raise DriverError(f"{what} failed: an int past 64 bits or text with a lone surrogate: {exc}") from exc

    async def _schema(self, entity: str) -> tuple[list[str], str]:
        if entity not in self._columns:
            def read(conn: sqlite3.Connection) -> tuple[list[str], list[str], str]:
                tables = [r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name != ?", (LEDGER_TABLE,))]
                if entity not in tables:
                    return tables, [], ""
                # (table_xinfo lists generated columns too: hidden 2 or 3; 1 is a virtual table's.)
                info = conn.execute(
                    "SELECT name, pk, hidden, type FROM pragma_table_xinfo(?) WHERE hidden != 1", (entity,)).fetchall()
                self._generated[entity] = frozenset(r[0] for r in info if r[2])
                keys = [r[0] for r in sorted(info, key=lambda r: r[1]) if r[1]]
                if len(keys) > 1:
                    # Rows are told apart, updated and deleted by one key column (entity steps
                    # compensate by it): with several, one would stand for many rows.
                    raise DriverError(
                        f"table {entity!r} has a primary key of several columns ({', '.join(keys)}); the driver works"
                        " on tables with a primary key of one column (or none: the rowid)")
                # The table's name for its rowid that no column of its own takes.
                names = {r[0].lower() for r in info}
                alias = next((a for a in ("rowid", "_rowid_", "oid") if a not in names), None)
                if _without_rowid(conn, entity, alias):
                    self._without_rowid.add(entity)
                elif alias is not None:
                    self._rowid_alias[entity] = alias
                if keys:
                    # An INTEGER PRIMARY KEY of a rowid table is its rowid: left NULL, it gets one.
                    if entity not in self._without_rowid and any(
                            r[0] == keys[0] and (r[3] or "").upper() == "INTEGER" for r in info):
                        self._key_is_rowid.add(entity)
                    return tables, [r[0] for r in info], keys[0]
                if alias is None or entity in self._without_rowid:
                    raise DriverError(
                        f"table {entity!r} has no primary key, and columns named rowid, _rowid_ and oid: the driver"
                        " has no name left to tell its rows apart by")
                # No declared key: SQLite's rowid is the key, read with every row (and usable in
                # a where, so that an entity step's compensation finds its row again).
                return tables, [alias, *(r[0] for r in info)], alias

            tables, columns, key = await self._run(read, f"reading the schema of {entity!r}")
            if not columns:
                raise UnknownEntityError(
                    f"no table {entity!r} in the database (tables: {', '.join(sorted(tables)) or 'none'})")
            self._columns[entity] = (columns, key)
        return self._columns[entity]

    def _select(self, entity: str) -> str:
        """The columns a row is read with: all, and the rowid too where it is the key (a table
        with no declared key)."""
        key = self._columns[entity][1]
        # (A declared key is a column of the table, and the rowid's name here is none of them.)
        return f"{key} AS {key}, *" if key == self._rowid_alias.get(entity) else "*"

    def _writable(self, entity: str, names: list[str]) -> list[str]:
        """``names`` without the table's generated columns: SQLite computes those (a row read
        back, and handed to ``create`` again by an entity step's compensation, holds them)."""
        generated = self._generated.get(entity)
        return [c for c in names if c not in generated] if generated else names

    @staticmethod
    def _checked(entity: str, columns: list[str], data: Mapping[str, Any], what: str = "data") -> list[str]:
        check_columns(data, what, entity)
        unknown = [c for c in data if c not in columns]
        if unknown:
            raise UnknownColumnError(
                f"table {entity!r} has no column {unknown[0]!r} (columns: {', '.join(columns)})")
        return list(data)

    def _where(self, entity: str, columns: list[str], where: Mapping[str, Any]) -> tuple[str, list[Any]]:
        names = self._checked(entity, columns, where, "where")
        if not names:
            return "", []
        return " WHERE " + " AND ".join(f"{_quote(c)} IS ?" for c in names), _bound(where, names)


#: Whether this SQLite has ``INSERT ... RETURNING`` (3.35 and later).
_RETURNING = sqlite3.sqlite_version_info >= (3, 35)


def _without_rowid(conn: sqlite3.Connection, entity: str, alias: str | None) -> bool:
    """Whether ``entity`` is a WITHOUT ROWID table, asked of SQLite itself: its table list
    (3.37 and later), else whether the rowid can be selected by a name no column takes (a
    table that leaves none is taken for a rowid table)."""
    try:
        # The table the driver's unqualified statements reach: a temporary one first.
        row = conn.execute("SELECT wr FROM pragma_table_list WHERE name = ? AND schema IN ('temp', 'main')"
                           " ORDER BY schema = 'temp' DESC LIMIT 1", (entity,)).fetchone()
        return bool(row[0]) if row is not None else False
    except sqlite3.OperationalError:
        pass
    if alias is None:
        return False
    try:
        conn.execute(f"SELECT {alias} FROM {_quote(entity)} LIMIT 0")
    except sqlite3.OperationalError:
        return True
    return False


def _bound(values: Mapping[str, Any], names: list[str]) -> list[Any]:
    """The values of columns ``names`` as they are bound: dates and datetimes as the ISO text
    sqlite3's default adapters made of them, made here (those adapters warn on every use since
    Python 3.12, and are to go)."""
    return [_as_sql(values[c]) for c in names]


def _as_sql(value: Any) -> Any:
    if isinstance(value, datetime):  # (a date too: first)
        return value.isoformat(" ")
    if isinstance(value, date):
        return value.isoformat()
    return value


def _quote(name: str) -> str:
    """``name`` as a SQL identifier: in double quotes, with any double quote in it doubled.

    Only names already found in the real schema reach here; quoting them exactly still matters,
    since a real name may contain a double quote, which a plain ``f'"{name}"'`` would end early.
    """
    return '"' + name.replace('"', '""') + '"'


def _rows(cursor: sqlite3.Cursor) -> list[Row]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def _rollback(level: int, name: str) -> Callable[[sqlite3.Connection], None]:
    def rollback(conn: sqlite3.Connection) -> None:
        if level == 1:
            conn.execute("ROLLBACK")
        else:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
    return rollback


def _atomic(fn: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
    """Several statements as one unit, in one thread call: a savepoint works both inside an open
    transaction and outside one (where releasing it commits)."""
    def atomic(conn: sqlite3.Connection) -> T:
        conn.execute("SAVEPOINT trioflow_op")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK TO trioflow_op")
            conn.execute("RELEASE trioflow_op")
            raise
        conn.execute("RELEASE trioflow_op")
        return result
    return atomic
