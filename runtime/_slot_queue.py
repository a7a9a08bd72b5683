"""The queue of runs waiting for a ``max_running`` slot: first in, first out, and asked "is this
run queued?" (and since when) at every cancel, at every child end notice to a queued parent and
at every wait in memory of a parent, which must not cost a walk of thousands of queued runs."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class SlotQueue(Generic[T]):
    """A deque of runs with a dict beside it (each run's time of queueing): membership in O(1).
    (Removing one from the middle, a cancel's, still walks the deque: it is rare, and a queued
    run is found only once.)"""

    __slots__ = ("_order", "_members")

    def __init__(self) -> None:
        self._order: collections.deque[T] = collections.deque()
        self._members: dict[T, float] = {}

    def append(self, run: T, at: float) -> None:
        """Queue ``run`` last, at ``at`` (trio time)."""
        self._order.append(run)
        self._members[run] = at

    def appendleft(self, run: T, at: float) -> None:
        self._order.appendleft(run)
        self._members[run] = at

    def popleft(self) -> T:
        run = self._order.popleft()
        del self._members[run]
        return run

    def remove(self, run: T) -> None:
        self._order.remove(run)
        del self._members[run]

    def queued_at(self, run: T) -> float | None:
        """When ``run`` was queued (``None``: it is not)."""
        return self._members.get(run)

    def __contains__(self, run: object) -> bool:
        return run in self._members

    def __bool__(self) -> bool:
        return bool(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[T]:
        return iter(self._order)
