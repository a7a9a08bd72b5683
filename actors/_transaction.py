"""A transactional workflow's forward run: inside one ``driver.transaction()``.

The transaction is the unit of durability: step snapshots taken inside it are not written until
it commits, because a crash rolls the database back to before the transaction, and the stored
instance must not claim steps whose writes are gone. A resume then starts the run afresh.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from trioflow._snapshot import Status

from ._run import Run

#: How a forward run ended: the outcome, the error (``None``: completed) and the failed step.
Forward = tuple[Status, "BaseException | None", "str | None"]


class _RollBack(Exception):
    """Leaves the transaction block so that the driver rolls it back."""


async def forward_in_transaction(run: Run, forward: Callable[[Run], Awaitable[Forward]]) -> Forward:
    """``forward(run)`` inside one driver transaction: committed on success, rolled back otherwise."""
    result: Forward = ("failed", None, None)
    run.deferred = True
    try:
        async with run.driver.transaction():
            result = await forward(run)
            if result[1] is not None:
                raise _RollBack
        return result
    except BaseException as exc:
        run.state.rolled_back = True
        if isinstance(exc, _RollBack):
            return result
        if isinstance(exc, Exception):  # the commit itself failed
            return "failed", exc, None
        raise
    finally:
        run.deferred = False
