"""The data-driver protocol (seed 000's ``ctx.driver``) and what the shipped drivers share.

Transactions: an open transaction belongs to the task that opened it and to that task's
descendants in trio's task tree, so the parallel branches of a transactional workflow take part
in it; any other task's call waits until it ends. That is what makes a rollback safe with many
workflows on one driver: it can only discard its own writes. Ownership follows the task tree and
not a context variable, because trio copies context variables into every task a task spawns,
wherever it spawns it: an engine actor started from a step would inherit the step's transaction.

A nested transaction (a savepoint) is exclusive within that tree: while one is open, only the
task that opened it and its descendants use the driver; other tasks of the tree (a sibling
branch, the outer transaction's own task) wait for it to end. So savepoints never interleave,
and rolling one back discards exactly the writes made inside it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeGuard, TypeVar, runtime_checkable


import trio

from trioflow._current import descends
from trioflow._errors import TrioflowError, safe_repr

Row = dict[str, Any]
S = TypeVar("S")


#: Why an update that would change a row's primary key is refused: entity steps find (and
#: compensate) rows by their key.
_KEY_CHANGE = "update of {entity!r} may not change a row's primary key {key!r}; create a new row and delete the old one"


class DriverError(TrioflowError):
    """A data driver could not do what was asked (the message says what and where)."""


class UnknownEntityError(DriverError, LookupError):
    """The entity (table) does not exist."""


class UnknownColumnError(DriverError, LookupError):
    """A column named in data or a where-clause does not exist in the entity."""


def check_columns(value: object, what: str, entity: str) -> None:
    """``where`` or ``data`` as a driver takes them: a mapping of column to value, or
    :class:`DriverError` saying so (SQL text, a list of pairs and ``None`` are common slips)."""
    if not isinstance(value, Mapping):
        hint = " ({} matches every row)" if what == "where" else ""
        raise DriverError(f"{entity!r}: {what} must be a mapping of column to value{hint}, got {safe_repr(value)}")


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


@runtime_checkable
class ForgetsRuns(Protocol):
    """Optional capability of a :class:`RunLedger`: delete records once nothing can read them.
    The engine calls it beside an instance that has ended (stored ``completed``, ``failed``,
    ``cancelled``, ``timed_out`` or ``compensated``) with the keys of what its runs recorded:
    nothing runs that instance again, and a service that runs entity steps for months would
    otherwise keep a record per execution. A driver without it keeps them (as before)."""

    async def forget_runs(self, keys: Sequence[str]) -> None:
        """Delete the records under ``keys``, those there are, in a transaction of its own."""
        ...


def _methods(protocol: type) -> tuple[str, ...]:
    """The methods a runtime-checkable protocol asks of an object, read off its class body."""
    return tuple(name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_"))


_LEDGER_METHODS = _methods(RunLedger)
_FORGET_METHODS = _methods(ForgetsRuns)


def _has_methods(driver: object, names: tuple[str, ...]) -> bool:
    # (What typing's isinstance() of a protocol of methods checks on 3.11: each is there, not None.)
    for name in names:
        if getattr(driver, name, None) is None:
            return False
    return True


def is_run_ledger(driver: object) -> TypeGuard[RunLedger]:
    """Whether ``driver`` keeps a run ledger: it has :class:`RunLedger`'s methods (found as any
    attribute is, a ``__getattr__`` that hands calls to another driver included), not ``None``.
    What ``isinstance(driver, RunLedger)`` said on Python 3.11, without typing's walk over the
    protocol's members on every call (some 7 us): every resumed run asks it."""
    return _has_methods(driver, _LEDGER_METHODS)


def forgets_runs(driver: object) -> TypeGuard[ForgetsRuns]:
    """Whether ``driver`` has :class:`ForgetsRuns`'s method, as :func:`is_run_ledger` asks."""
    return _has_methods(driver, _FORGET_METHODS)


class TransactionOwnership:
    """Who may use a driver, and when, while transactions are open (see the module docstring).

    A driver wraps each call in :meth:`call` and each transaction block in :meth:`transaction`,
    handing it the statements that open and close a block; this class decides who waits.

    State: ``_holders`` is the stack of open blocks, one task per block (``[0]`` owns the
    outermost transaction, the last one is the innermost block). A task of the owner tree may
    run a call when it descends from the innermost holder. ``_lock`` keeps every task outside
    the tree out for the whole outer transaction (and makes their plain calls wait for each
    other, as before: FIFO, so a transaction waiting to start is not starved by them).
    """

    def __init__(self) -> None:
        self._lock = trio.Lock()
        self._holders: list[trio.lowlevel.Task] = []
        #: Calls of the owner tree in progress. A block opens and closes only when none is: in
        #: SQLiteDriver a call is several awaits, and a sibling's statement that ran after a
        #: ``SAVEPOINT`` would be rolled back with a block it was never part of.
        self._calls = 0
        #: A block's opening or closing statement is running: no other statement may run.
        self._switching = False
        #: An admitted opener waiting for the calls in progress to end: new calls wait behind
        #: it, or a steady stream of sibling calls could keep it out for ever.
        self._draining: trio.lowlevel.Task | None = None
        #: Woken (all at once; each waiter checks again) whenever any of the above changes.
        self._changed = trio.lowlevel.ParkingLot()

    @property
    def depth(self) -> int:
        """How many blocks are open (0: no transaction), the one being opened or closed
        included: a driver that keeps a record of each block's writes (MemoryDriver's undo
        logs) writes to the innermost one's, and to none outside a transaction."""
        return len(self._holders)

    def inside(self) -> bool:
        """Whether the calling task takes part in an open transaction (it opened it, or it
        descends from the task that did)."""
        return self._inside(trio.lowlevel.current_task())

    def require_transaction(self, what: str) -> None:
        """Refuse ``what`` outside a transaction: its write must commit or roll back with one."""
        if not self.inside():
            raise DriverError(f"{what} must be called inside driver.transaction()")

    @asynccontextmanager
    async def call(self) -> AsyncIterator[None]:
        """Around one driver call: outside the owner tree, waits for an open transaction to end;
        inside it, waits while a block that the calling task is not part of is open."""
        task = trio.lowlevel.current_task()
        # Checked again after every wait: the transaction may have ended meanwhile.
        while self._inside(task):
            if self._admits(task) and self._draining is None:
                self._calls += 1
                try:
                    yield
                finally:
                    self._calls -= 1
                    if not self._calls:
                        self._changed.unpark_all()
                return
            await self._changed.park()
        async with self._lock:
            yield

    @asynccontextmanager
    async def transaction(
        self,
        begin: Callable[[int], Awaitable[S]],
        commit: Callable[[int, S], Awaitable[None]],
        rollback: Callable[[int, S], Awaitable[None]],
    ) -> AsyncIterator[int]:
        """Around a transaction block; yields its nesting level (1: outermost).

        ``begin(level)`` opens the block in the driver and returns what ``commit`` or
        ``rollback`` (``level``, that value) need to close it. They run here, while no other
        statement can, shielded from cancellation: a block half opened or half closed would
        leave the driver and this stack disagreeing. ``rollback`` runs when the body raises,
        and also when ``commit`` fails (the block must not stay open).
        """
        task = trio.lowlevel.current_task()
        while self._inside(task):  # a nested block: wait for the tree to let this task switch
            if self._admits(task) and self._draining in (None, task):
                if not self._calls:
                    self._draining = None
                    async with self._block(task, begin, commit, rollback) as level:
                        yield level
                    return
                self._draining = task
            try:
                await self._changed.park()
            except BaseException:
                if self._draining is task:  # cancelled while draining: let the calls go on
                    self._draining = None
                    self._changed.unpark_all()
                raise
        if self._draining is task:  # the transaction ended while this task waited in it
            self._draining = None
            self._changed.unpark_all()
        async with self._lock:
            async with self._block(task, begin, commit, rollback) as level:
                yield level

    @asynccontextmanager
    async def _block(
        self,
        task: trio.lowlevel.Task,
        begin: Callable[[int], Awaitable[S]],
        commit: Callable[[int, S], Awaitable[None]],
        rollback: Callable[[int, S], Awaitable[None]],
    ) -> AsyncIterator[int]:
        """Push ``task`` as the innermost holder and open its block; close it at the end."""
        self._holders.append(task)
        level = len(self._holders)
        self._switching = True
        try:
            with trio.CancelScope(shield=True):
                state = await begin(level)
        except BaseException:
            self._holders.pop()
            raise
        finally:
            self._switching = False
            self._changed.unpark_all()

        async def finish() -> None:
            try:
                await commit(level, state)
            except BaseException:
                await rollback(level, state)
                raise

        try:
            yield level
        except BaseException:
            await self._close(level, lambda: rollback(level, state))
            raise
        await self._close(level, finish)

    async def _close(self, level: int, statement: Callable[[], Awaitable[None]]) -> None:
        """Run the statement that closes the block at ``level``, then pop it.

        It waits, shielded, until that block is the innermost one and no call is in progress:
        a descendant spawned before the block opened may still be in a call or in a deeper
        block of its own (like a nursery, a block does not end before what runs inside it)."""
        with trio.CancelScope(shield=True):
            while len(self._holders) != level or self._calls or self._switching:
                await self._changed.park()
            self._switching = True
            try:
                await statement()
            finally:
                self._holders.pop()
                self._switching = False
                self._changed.unpark_all()

    def _inside(self, task: trio.lowlevel.Task) -> bool:
        # (Or of a block inside: a task trio ran for a worker thread's call opened it while the
        # step's call was on, and, the thread given up since, goes on inside it to its end.)
        return any(descends(task, holder) for holder in self._holders)

    def _admits(self, task: trio.lowlevel.Task) -> bool:
        """Whether ``task`` may use the driver now, as far as the blocks go: it is part of the
        innermost open block and no block is being opened or closed."""
        return not self._switching and descends(task, self._holders[-1])


def in_a_transaction_of(driver: object) -> bool:
    """Whether the calling task takes part in an open transaction of ``driver`` (one of the
    shipped drivers, or any that keeps its :class:`TransactionOwnership` as ``_ownership``)."""
    ownership = getattr(driver, "_ownership", None)
    return isinstance(ownership, TransactionOwnership) and ownership.inside()


class EntityNotFoundError(DriverError, LookupError):
    """An entity step's where-clause matched no row."""
