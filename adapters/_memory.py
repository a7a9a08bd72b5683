"""In-memory adapter: encoded instances in dicts, shared by every engine opened on it."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

import attrs

from trioflow._errors import CheckpointConflictError, StorageError, UnknownInstanceError
from trioflow._snapshot import RESUMABLE, TERMINAL, Status

from ._protocol import StoredInstance


class _Row:
    """One stored instance. Slotted and mutable: checkpoints are the hot path."""

    __slots__ = ("order", "workflow_name", "status", "start", "header", "records", "signals", "wake_at")

    def __init__(self, order: int, workflow_name: str, status: Status, start: bytes | None, header: bytes) -> None:
        #: Creation order: listings are oldest first.
        self.order = order
        self.workflow_name = workflow_name
        self.status: Status = status
        self.start = start
        self.header = header
        #: An empty tuple until the first record, a list while the instance runs, a tuple again
        #: once it has ended: the cyclic garbage collector tracks no list for the many waiting
        #: or finished instances a process holds.
        self.records: list[bytes] | tuple[bytes, ...] = ()
        #: Pending signals by seq (``None`` until the first one).
        self.signals: dict[int, tuple[str, bytes]] | None = None
        #: When a waiting instance is due (``None``: it does not wait).
        self.wake_at: float | None = None


class MemoryAdapter:
    """Keeps encoded instances, exactly as a durable adapter would, so everything that is
    stored went through the codec. Lives as long as the object: a second engine opened on the
    same adapter resumes what the first left running.

    Indexed by workflow and status, so listing the running instances of a workflow, or what a
    resume must pick up, never scans the finished ones.
    """

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}
        self._created = 0
        #: The last signal seq handed out (seqs only grow, across instances).
        self._signals = 0
        #: ``(wake_at, order, instance_id)`` of waiting instances; entries an instance has
        #: since left (woken, ended, deleted) are dropped when they come up.
        self._wakes: list[tuple[float, int, str]] = []
        self._by_status: dict[str, dict[str, None]] = {}
        self._by_workflow: dict[str, dict[str, None]] = {}

    async def open(self) -> None:
        """Nothing to acquire: the storage is this object."""

    async def close(self) -> None:
        """Nothing to release: what is stored stays for the next engine."""

    async def create(self, instance_id: str, workflow_name: str, status: Status, *, start: bytes, header: bytes) -> bool:
        if instance_id in self._rows:
            return False
        start, header = _blob(start, "start"), _blob(header, "header")
        self._created += 1
        self._rows[instance_id] = _Row(self._created, workflow_name, status, start, header)
        self._by_status.setdefault(status, {})[instance_id] = None
        self._by_workflow.setdefault(workflow_name, {})[instance_id] = None
        return True

    async def checkpoint(
        self, instance_id: str, status: Status, header: bytes, records: Sequence[bytes], *,
        first_seq: int, start: bytes | None = None, consumed: Sequence[int] = (), wake_at: float | None = None,
    ) -> None:
        row = self._rows.get(instance_id)
        if row is None:
            raise UnknownInstanceError(f"no stored instance {instance_id!r} to checkpoint")
        if first_seq != len(row.records):
            raise CheckpointConflictError(
                f"instance {instance_id!r} has {len(row.records)} records stored; a checkpoint"
                f" appending at {first_seq} is refused"
            )
        if consumed:
            missing = [seq for seq in consumed if not row.signals or seq not in row.signals]
            if missing or len(set(consumed)) != len(consumed):
                raise CheckpointConflictError(
                    f"instance {instance_id!r}: a checkpoint consuming signals {list(consumed)} is refused"
                    f" ({missing or 'repeated'} not pending)"
                )
        # Everything is converted before anything changes: all or nothing. (``bytes`` of a
        # bytes object is that object: the usual case copies nothing.)
        new = records
        for r in records:
            if type(r) is not bytes:
                new = [_blob(r, f"record {first_seq + k}") for k, r in enumerate(records)]
                break
        if type(header) is not bytes:
            header = _blob(header, "header")
        if start is not None and type(start) is not bytes:
            start = _blob(start, "start")
        if status != row.status:
            del self._by_status[row.status][instance_id]
            self._by_status.setdefault(status, {})[instance_id] = None
            row.status = status
        row.header = header
        if new:
            if isinstance(row.records, list):
                row.records.extend(new)
            else:
                row.records = [*row.records, *new]
        if status in TERMINAL:
            row.records = tuple(row.records)
        if start is not None:
            row.start = start
        if consumed and row.signals is not None:
            for seq in consumed:
                del row.signals[seq]
        if wake_at is not None:
            heapq.heappush(self._wakes, (wake_at, row.order, instance_id))
        row.wake_at = wake_at

    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        row = self._rows.get(instance_id)
        if row is None:
            raise UnknownInstanceError(f"no stored instance {instance_id!r} to signal")
        payload = _blob(payload, "signal payload")
        if row.status not in RESUMABLE:
            return None
        self._signals += 1
        if row.signals is None:
            row.signals = {}
        row.signals[self._signals] = (name, payload)
        return self._signals

    async def signals(self, instance_id: str) -> list[tuple[int, str, bytes]]:
        row = self._rows.get(instance_id)
        if row is None or not row.signals:
            return []
        return [(seq, name, payload) for seq, (name, payload) in sorted(row.signals.items())]

    async def load(self, instance_id: str) -> StoredInstance | None:
        row = self._rows.get(instance_id)
        if row is None:
            return None
        stored = _stored(instance_id, row)
        if row.signals:
            stored = attrs.evolve(stored, signals=tuple(
                (seq, name, payload) for seq, (name, payload) in sorted(row.signals.items())))
        return stored

    async def list_instances(self, workflow_name: str, status: Status | None = None) -> list[StoredInstance]:
        ids: Iterable[str] = self._by_workflow.get(workflow_name, {})
        if status is not None:
            # Walk the smaller index, look up in the other: never a scan of every stored row.
            small, large = sorted((self._by_workflow.get(workflow_name, {}), self._by_status.get(status, {})), key=len)
            ids = [i for i in small if i in large]
        return self._oldest_first(ids)

    async def resumable(self) -> list[StoredInstance]:
        rows = self._rows
        ids = [i for status in RESUMABLE for i in self._by_status.get(status, {})
               if rows[i].wake_at is None or rows[i].signals]
        return self._oldest_first(ids)

    async def due(self, before: float, limit: int) -> list[StoredInstance]:
        out: list[StoredInstance] = []
        kept: list[tuple[float, int, str]] = []
        wakes = self._wakes
        while wakes and wakes[0][0] <= before and len(out) < limit:
            entry = heapq.heappop(wakes)
            row = self._rows.get(entry[2])
            if row is not None and row.wake_at == entry[0] and row.status in RESUMABLE:
                out.append(_stored(entry[2], row))
                kept.append(entry)  # it stays due until its next checkpoint says otherwise
        for entry in kept:
            heapq.heappush(wakes, entry)
        return out

    async def next_wake(self) -> float | None:
        wakes = self._wakes
        while wakes:
            wake_at, _, instance_id = wakes[0]
            row = self._rows.get(instance_id)
            if row is not None and row.wake_at == wake_at and row.status in RESUMABLE:
                return wake_at
            heapq.heappop(wakes)  # stale: the instance woke, ended or was deleted since
        return None

    async def delete(self, instance_id: str) -> bool:
        row = self._rows.pop(instance_id, None)
        if row is None:
            return False
        del self._by_status[row.status][instance_id]
        del self._by_workflow[row.workflow_name][instance_id]
        return True

    def _oldest_first(self, ids: Iterable[str]) -> list[StoredInstance]:
        rows = self._rows
        return [_stored(i, rows[i]) for i in sorted(ids, key=lambda i: rows[i].order)]


def _stored(instance_id: str, row: _Row) -> StoredInstance:
    return StoredInstance(
        instance_id=instance_id, workflow_name=row.workflow_name, status=row.status, start=row.start,
        header=row.header, records=tuple(row.records),
    )


def _blob(value: object, what: str) -> bytes:
    """``value`` as ``bytes`` (a copy of a bytearray or memoryview); anything else is refused,
    naming ``what`` (``bytes(3)`` would quietly store three zero bytes)."""
    if type(value) is bytes:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise StorageError(f"{what} must be bytes, got {type(value).__name__}; nothing was written")
