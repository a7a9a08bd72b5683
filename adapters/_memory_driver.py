"""In-memory data driver: tables of dicts, with real transactions (a rollback leaves no trace).

It also keeps the run ledger (:class:`~._driver.RunLedger`) of transactional runs, as a dict
that a rollback restores along with the tables.

A transaction block keeps an undo log: what each row, id counter, table and ledger entry it
changes was before its first change in the block. A savepoint then costs what the block writes,
not a copy of every row stored (a copy of every table per entity step made each step's cost
grow with the rows all other instances had written).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from trioflow._engine_arguments import refuses_unbound_arguments

from ._driver import _KEY_CHANGE, DriverError, check_columns, Row, TransactionOwnership, UnknownEntityError

#: A block's undo log: by what changed (``("row", entity, key)``, ``("next", entity)``,
#: ``("table", entity)``, ``("ledger", key)``), what it was when the block opened (a row as a
#: copy of its own, or :data:`_ABSENT`). Kept in the order of first changes: a table made in the
#: block comes before its rows.
_Undo = dict[tuple[Any, ...], Any]
#: In an undo log: there was none.
_ABSENT = object()


class MemoryDriver:
    """Entities are dicts of rows keyed by ``id``. ``create`` assigns integer ids (1, 2, ...)
    unless the data carries one. ``entities`` fixes the known entities (others are refused with
    :class:`UnknownEntityError`); by default any entity name is accepted and created on use.

    ``ledger`` holds the run records of committed transactional runs (see :meth:`record_run`).
    Rows go in and come out as copies, nested values too, as a database's would: changing a
    list that ``create`` was handed, or that ``find_one`` returned, changes no stored row.
    """

    @refuses_unbound_arguments
    def __init__(self, entities: Mapping[str, list[Row]] | None = None, *, strict: bool | None = None) -> None:
        self.tables: dict[str, dict[Any, Row]] = {}
        self._next_id: dict[str, int] = {}
        self._strict = bool(entities) if strict is None else strict
        for entity, rows in (entities or {}).items():
            table = self.tables.setdefault(entity, {})
            for row in rows:
                table[row["id"]] = copy.deepcopy(dict(row))
            self._next_id[entity] = max((r for r in table if isinstance(r, int)), default=0) + 1
        #: Run records by key: payloads are immutable bytes, so a shallow copy snapshots it.
        self.ledger: dict[str, bytes] = {}
        self._ownership = TransactionOwnership()
        #: The undo log of each open block, outermost first (``[depth - 1]`` is the innermost).
        self._undo: list[_Undo] = []

    async def create(self, entity: str, data: Mapping[str, Any]) -> Row:
        async with self._ownership.call():
            table = self._table(entity)
            check_columns(data, "data", entity)
            row = copy.deepcopy(dict(data))
            if row.get("id") is None:  # (as SQLite gives an INTEGER PRIMARY KEY left NULL the next one)
                row["id"] = self._next_id.get(entity, 1)
            if row["id"] in table:
                raise DriverError(f"{entity}: a row with id {row['id']!r} already exists")
            log = self._log()
            if isinstance(row["id"], int):
                if log is not None and ("next", entity) not in log:
                    log["next", entity] = self._next_id.get(entity, _ABSENT)
                self._next_id[entity] = max(self._next_id.get(entity, 1), row["id"] + 1)
            if log is not None:
                log.setdefault(("row", entity, row["id"]), _ABSENT)
            table[row["id"]] = row
            return copy.deepcopy(row)

    async def find_one(self, entity: str, where: Mapping[str, Any]) -> Row | None:
        rows = await self.find_many(entity, where)
        return rows[0] if rows else None

    async def find_many(self, entity: str, where: Mapping[str, Any]) -> list[Row]:
        async with self._ownership.call():
            return copy.deepcopy(self._matching(entity, where))

    async def update(self, entity: str, where: Mapping[str, Any], data: Mapping[str, Any]) -> list[Row]:
        async with self._ownership.call():
            rows = self._matching(entity, where)
            check_columns(data, "data", entity)
            if "id" in data and any(row["id"] != data["id"] for row in rows):
                raise DriverError(_KEY_CHANGE.format(entity=entity, key="id"))
            log = self._log()
            for row in rows:
                if log is not None and ("row", entity, row["id"]) not in log:
                    log["row", entity, row["id"]] = copy.deepcopy(row)  # (changed in place next)
                row.update(copy.deepcopy(dict(data)))  # (a copy each: no two rows share a value)
            return copy.deepcopy(rows)

    async def delete(self, entity: str, where: Mapping[str, Any]) -> int:
        async with self._ownership.call():
            table = self._table(entity)
            rows = self._matching(entity, where)
            log = self._log()
            for row in rows:
                if log is not None:
                    log.setdefault(("row", entity, row["id"]), row)  # (out of the table: never changed again)
                del table[row["id"]]
            return len(rows)

    async def primary_key(self, entity: str) -> str:
        self._table(entity)
        return "id"

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Commit on success, roll back on error; nests. A block's rollback restores the tables
        as they were when it opened, which discards exactly its own writes: while it is open,
        only its task and that task's descendants can write (see :class:`TransactionOwnership`)."""
        async with self._ownership.transaction(self._save, self._keep, self._restore):
            yield

    async def _save(self, level: int) -> _Undo:
        # (Logs left by a block whose closing failed halfway, in a subclass, are dropped here.)
        del self._undo[level - 1:]
        log: _Undo = {}
        self._undo.append(log)
        return log

    async def _keep(self, level: int, saved: _Undo) -> None:
        """Committing keeps the writes as they are: they were made in place. The enclosing
        block takes over what this one's log holds of what it had not changed itself (as it
        was when this one opened, so as it was when that one did): its rollback undoes them."""
        del self._undo[level - 1:]
        if level > 1:
            outer = self._undo[level - 2]
            for what, before in saved.items():
                outer.setdefault(what, before)

    async def _restore(self, level: int, saved: _Undo) -> None:
        del self._undo[level - 1:]
        for what, before in saved.items():
            kind = what[0]
            if kind == "row":
                table = self.tables.get(what[1])
                if table is None:  # (made in this block, and gone already: see "table")
                    continue
                if before is _ABSENT:
                    table.pop(what[2], None)
                else:
                    table[what[2]] = before
                continue
            place: dict[Any, Any] = self.ledger if kind == "ledger" else self._next_id if kind == "next" else self.tables
            if before is _ABSENT:
                place.pop(what[1], None)
            else:
                place[what[1]] = before

    def _log(self) -> _Undo | None:
        """The innermost open block's undo log, or ``None`` outside a transaction (no other
        task writes while one is open: see :class:`TransactionOwnership`)."""
        depth = self._ownership.depth
        return self._undo[depth - 1] if depth and len(self._undo) >= depth else None

    # -- the RunLedger protocol ---------------------------------------------------------------

    async def record_run(self, key: str, payload: bytes) -> None:
        """Store ``payload`` under ``key`` in the open transaction (its rollback removes it)."""
        self._ownership.require_transaction("record_run")
        async with self._ownership.call():  # not while a sibling's nested block is open
            self._log_ledger(key)
            self.ledger[key] = bytes(payload)

    async def forget_runs(self, keys: Sequence[str]) -> None:
        """Delete the run records under ``keys`` (see :class:`~._driver.ForgetsRuns`)."""
        async with self._ownership.call():  # (not inside another task's open transaction)
            for key in keys:
                self._log_ledger(key)
                self.ledger.pop(key, None)

    async def find_run(self, key: str) -> bytes | None:
        """The payload recorded under ``key`` by a transaction that did not roll back."""
        async with self._ownership.call():
            return self.ledger.get(key)

    def _log_ledger(self, key: str) -> None:
        log = self._log()
        if log is not None and ("ledger", key) not in log:
            log["ledger", key] = self.ledger.get(key, _ABSENT)  # (bytes: never changed in place)

    def _table(self, entity: str) -> dict[Any, Row]:
        if entity not in self.tables:
            if self._strict:
                raise UnknownEntityError(f"no entity {entity!r} (entities: {', '.join(sorted(self.tables))})")
            log = self._log()
            if log is not None:  # (a rollback takes away a table made in its block, as before)
                log.setdefault(("table", entity), _ABSENT)
            self.tables[entity] = {}
        return self.tables[entity]

    def _matching(self, entity: str, where: Mapping[str, Any]) -> list[Row]:
        check_columns(where, "where", entity)
        items = list(where.items())
        # A column never set matches None, as NULL does in SQL (``IS NULL``).
        return [r for _, r in sorted(self._table(entity).items(), key=_key_order)
                if all(r.get(k) == v for k, v in items)]


def _key_order(item: tuple[Any, Row]) -> tuple[int, Any]:
    """Rows in key order as SQLite sorts keys: numbers by value, then text, then bytes (anything
    else after, by its text)."""
    key = item[0]
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        return 0, key
    if isinstance(key, str):
        return 1, key
    if isinstance(key, bytes):
        return 2, key
    return 3, str(key)
