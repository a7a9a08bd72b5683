"""The data-driver protocol (seed 000's ``ctx.driver``) and what the shipped drivers share.

Transactions: an open transaction belongs to the task that opened it and to that task's child
tasks (a context variable, inherited when tasks are spawned), so the parallel branches of a
transactional workflow take part in it; any other task's call waits until it ends. That is what
makes a rollback safe with many workflows on one driver: it can only discard its own writes.
"""

from __future__ import annotations

import contextvars
import itertools
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, runtime_checkable

import trio

from trioflow._errors import TrioflowError

Row = dict[str, Any]


class DriverError(TrioflowError):
    """A data driver could not do what was asked (the message says what and where)."""


class UnknownEntityError(DriverError, LookupError):
    """The entity (table) does not exist."""


class UnknownColumnError(DriverError, LookupError):
    """A column named in data or a where-clause does not exist in the entity."""


@runtime_checkable
class Driver(Protocol):
    """What workflows use through ``ctx.driver``. All calls are awaitable."""

    async def create(self, entity: str, data: Mapping[str, Any]) -> Row:
        """Insert a row; returns it as stored (with its generated key)."""
        ...

    async def find_one(self, entity: str, where: Mapping[str, Any]) -> Row | None:
        """The first row whose columns equal every item of ``where``, or ``None``."""
        ...

    async def find_many(self, entity: str, where: Mapping[str, Any]) -> list[Row]:
        """Every row matching ``where``, in key order."""
        ...

    async def update(self, entity: str, where: Mapping[str, Any], data: Mapping[str, Any]) -> list[Row]:
        """Set ``data`` on every row matching ``where``; returns the rows as updated."""
        ...

    async def delete(self, entity: str, where: Mapping[str, Any]) -> int:
        """Delete every row matching ``where``; returns how many."""
        ...

    async def primary_key(self, entity: str) -> str:
        """The name of the entity's key column."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[None]:
        """Commit on success, roll back on error. Nests (inner blocks are savepoints)."""
        ...


@runtime_checkable
class RunLedger(Protocol):
    """Optional driver capability: a small record of committed transactional runs, kept in the
    driver's own storage (the user's database) and written inside the run's transaction.

    Why: a transactional run commits its writes first and stores its terminal snapshot after.
    A crash between the two leaves the instance stored ``running``; the record, committed
    atomically with the writes, tells the resume that the forward part is done and what state
    it ended in, so it is not run (and its rows not written) a second time. DBOS records
    transaction outputs the same way. A driver without these methods keeps the older behaviour:
    such a resume runs the forward part again.
    """

    async def record_run(self, key: str, payload: bytes) -> None:
        """Store ``payload`` under ``key`` (replacing any earlier one) in the transaction that is
        open: a rollback discards it with the rest. Outside a transaction: :class:`DriverError`."""
        ...

    async def find_run(self, key: str) -> bytes | None:
        """The payload committed under ``key``, or ``None``."""
        ...


class TransactionOwnership:
    """Who may use a driver while a transaction is open (see the module docstring)."""

    _ids = itertools.count()

    def __init__(self) -> None:
        self._lock = trio.Lock()
        self._depth = contextvars.ContextVar[int](f"trioflow-driver-{next(self._ids)}", default=0)

    def inside(self) -> bool:
        """Whether the calling task takes part in an open transaction (opened it or was spawned
        inside it)."""
        return self._depth.get() > 0

    def require_transaction(self, what: str) -> None:
        """Refuse ``what`` outside a transaction: its write must commit or roll back with one."""
        if not self.inside():
            raise DriverError(f"{what} must be called inside driver.transaction()")

    @asynccontextmanager
    async def call(self) -> AsyncIterator[None]:
        """Around one driver call: waits for another task's open transaction to end."""
        if self._depth.get():
            yield
        else:
            async with self._lock:
                yield

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[int]:
        """Around a transaction block; yields its nesting level (1: outermost)."""
        depth = self._depth.get()
        if depth:
            token = self._depth.set(depth + 1)
            try:
                yield depth + 1
            finally:
                self._depth.reset(token)
            return
        async with self._lock:
            token = self._depth.set(1)
            try:
                yield 1
            finally:
                self._depth.reset(token)


class EntityNotFoundError(DriverError, LookupError):
    """An entity step's where-clause matched no row."""
