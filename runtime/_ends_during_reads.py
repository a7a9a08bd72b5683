"""The engine's watch on the runs that end, and the signals stored, while its reads of storage
are in flight (see :class:`EndsDuringReads`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator


class EndsDuringReads:
    """Which runs end while reads of storage are in flight. A row read before a run's last
    checkpoint is stale: resumed, it would run that instance again from an old snapshot. And,
    for reads of one row, whether signals were stored for it meanwhile: a read answered after
    one was stored may not hold it, and a run taken up from it must look in storage itself."""

    __slots__ = ("_all", "_one", "_ends", "_taken", "_signals")

    def __init__(self) -> None:
        #: Reads of many rows in flight: the ids of the runs that ended since each began.
        self._all: list[set[str]] = []
        #: Reads of one row in flight, by id: how many, and the runs of it that ended since the
        #: oldest began (counted, not listed: one signal each, for a thousand senders at once).
        self._one: dict[str, int] = {}
        self._ends: dict[str, int] = {}
        #: The seqs of the signals those runs took, by id (see :meth:`took`).
        self._taken: dict[str, set[int]] = {}
        #: The signals stored for it since the oldest began, by id (see :meth:`signal_stored`).
        self._signals: dict[str, int] = {}

    def ended(self, instance_id: str, taken: Collection[int] | None = None) -> None:
        """A run of ``instance_id`` ended (or left memory) here, having taken the signals whose
        seqs are ``taken``."""
        for ended in self._all:
            ended.add(instance_id)
        if instance_id in self._one:
            self._ends[instance_id] = self._ends.get(instance_id, 0) + 1
            if taken:
                self._taken.setdefault(instance_id, set()).update(taken)

    def signal_stored(self, instance_id: str) -> None:
        """A signal for ``instance_id`` was stored (told as its write returns, with no await in
        between: a read answered before then made a run that is in memory by then)."""
        if instance_id in self._one:
            self._signals[instance_id] = self._signals.get(instance_id, 0) + 1

    def took(self, instance_id: str, seq: int) -> bool:
        """Whether a run of ``instance_id`` that ended while one of its rows was watched (see
        :meth:`watching`; asked inside that block) took the signal ``seq``. A signal stored
        inside the block can be taken only by runs that ended inside it, if any."""
        return seq in self._taken.get(instance_id, ())

    @contextlib.contextmanager
    def watching_all(self) -> Iterator[set[str]]:
        """Around a read of many rows: yields the set of the ids whose runs end meanwhile."""
        ended: set[str] = set()
        self._all.append(ended)
        try:
            yield ended
        finally:
            # By identity: ``list.remove`` matches equal sets, and two reads in flight whose
            # sets hold the same ids would then drop each other's.
            for place, watched in enumerate(self._all):
                if watched is ended:
                    del self._all[place]
                    break

    def watching(self, instance_id: str) -> _Watching:
        """Around a read of one row: gives a function saying whether a run of it ended since."""
        return _Watching(self, instance_id)


class _Watching:
    """:meth:`EndsDuringReads.watching`: a plain object, not a generator's context manager,
    as every signal sent to a parked instance reads its row under one."""

    __slots__ = ("_reads", "_instance_id", "_before", "_signals_before")

    def __init__(self, reads: EndsDuringReads, instance_id: str) -> None:
        self._reads, self._instance_id = reads, instance_id
        self._before = self._signals_before = 0

    def __enter__(self) -> Callable[[], bool]:
        reads, instance_id = self._reads, self._instance_id
        reads._one[instance_id] = reads._one.get(instance_id, 0) + 1
        self._before = reads._ends.get(instance_id, 0)
        self._signals_before = reads._signals.get(instance_id, 0)
        return self._ended

    def _ended(self) -> bool:
        return self._reads._ends.get(self._instance_id, 0) != self._before

    def signals_stored(self) -> int:
        """How many signals were stored for the instance since the block began (asked inside it)."""
        return self._reads._signals.get(self._instance_id, 0) - self._signals_before

    def __exit__(self, *exc: object) -> None:
        reads, instance_id = self._reads, self._instance_id
        left = reads._one[instance_id] - 1
        if left:
            reads._one[instance_id] = left
        else:  # nobody reads it now: forget it (asked inside the block, not after)
            del reads._one[instance_id]
            reads._ends.pop(instance_id, None)
            reads._taken.pop(instance_id, None)
            reads._signals.pop(instance_id, None)
