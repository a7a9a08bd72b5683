"""What a persistence adapter is (protocol version 2). Adapters store bytes; they never decode.

An instance is stored as three kinds of bytes (SPEC §10):

- ``start``: written once, by :meth:`Adapter.create` (input, creation time, definition
  fingerprint): what never changes;
- ``header``: small, replaced by every checkpoint (status, lane positions, shared data, errors);
- ``records``: one per step execution, appended by the checkpoint that follows the execution's
  end and never rewritten. Record ``n`` (its *seq*) is the instance's ``n``-th record, from 0.

So the bytes a checkpoint writes do not grow with the number of steps already run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs

from trioflow._snapshot import Status


@attrs.frozen(kw_only=True)
class StoredInstance:
    """One stored instance as an adapter holds it: the fields it indexes, and opaque bytes."""

    instance_id: str
    workflow_name: str
    status: Status
    #: ``None`` for a row written before format 2, whose header still holds what start holds.
    start: bytes | None
    header: bytes
    #: Every record, in seq order (``records[n]`` is seq ``n``).
    records: tuple[bytes, ...] = ()
    #: Pending signals ``(seq, name, payload)`` in seq order: given by :meth:`Adapter.load`
    #: (listings leave them out).
    signals: tuple[tuple[int, str, bytes], ...] = ()


@runtime_checkable
class Adapter(Protocol):
    """Persistence for instances. ``create`` and ``checkpoint`` return only once what they
    wrote is as durable as the adapter promises: the engine does not start an instance's next
    step before that. Each is atomic: all of it is stored, or none of it."""

    async def open(self) -> None:
        """Acquire what the adapter needs (files, locks, threads); called by ``open_engine``."""
        ...

    async def close(self) -> None:
        """Flush and release; called when the engine stops. The adapter may be opened again."""
        ...

    async def create(self, instance_id: str, workflow_name: str, status: Status, *, start: bytes, header: bytes) -> bool:
        """Store a new instance with no records; ``False`` (and no write) when the id exists."""
        ...

    async def checkpoint(
        self, instance_id: str, status: Status, header: bytes, records: Sequence[bytes], *,
        first_seq: int, start: bytes | None = None, consumed: Sequence[int] = (), wake_at: float | None = None,
    ) -> None:
        """In one atomic write: replace the status, header and ``wake_at``, append ``records`` as seq
        ``first_seq``, ``first_seq + 1``, ..., and delete the pending signals whose seqs are in
        ``consumed`` (the engine passes it only when a receive step consumed some). ``first_seq``
        must equal the number of records stored, and every consumed signal must be pending:
        otherwise (a write repeated or lost) raise :class:`CheckpointConflictError` and write
        nothing. ``start``, when given, sets the start bytes (a row from before format 2 gets
        them on its first checkpoint). An unknown instance raises :class:`UnknownInstanceError`.

        ``wake_at`` (Unix seconds, ``inf`` allowed) marks an instance that waits with no task:
        :meth:`resumable` leaves it out and :meth:`due` hands it back once its time has come.
        ``None`` (the default, and what the engine passes by leaving it out) means it does not wait."""
        ...

    async def due(self, before: float, limit: int) -> list[StoredInstance]:
        """Waiting ``pending``/``running`` instances whose ``wake_at`` is at most ``before``,
        soonest first, at most ``limit`` of them."""
        ...

    async def next_wake(self) -> float | None:
        """The soonest ``wake_at`` of a waiting ``pending``/``running`` instance (``None``: none)."""
        ...

    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        """Store a signal for an instance, durably, and return its seq (seqs only grow, so
        signals sort in the order they were stored). ``None``, and nothing stored, when the
        instance has ended; an unknown instance raises :class:`UnknownInstanceError`."""
        ...

    async def signals(self, instance_id: str) -> list[tuple[int, str, bytes]]:
        """The instance's pending signals, ``(seq, name, payload)`` in seq order."""
        ...

    async def load(self, instance_id: str) -> StoredInstance | None:
        """One instance with all its records and its pending signals, or ``None``."""
        ...

    async def list_instances(self, workflow_name: str, status: Status | None = None) -> list[StoredInstance]:
        """Instances of a workflow, optionally of one status, oldest first, with their records."""
        ...

    async def resumable(self) -> list[StoredInstance]:
        """Instances a resume must pick up, oldest first: status ``pending`` or ``running``, and
        not waiting with a ``wake_at`` unless signals are pending for it (one stored just before
        a crash must still reach it)."""
        ...

    async def delete(self, instance_id: str) -> bool:
        """Remove an instance, its records and its signals; whether it existed."""
        ...
