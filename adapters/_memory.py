"""In-memory adapter: encoded snapshots in a dict, shared by every engine opened on it."""

from __future__ import annotations

from trioflow._snapshot import RESUMABLE, Status

from ._protocol import InstanceRecord


_Row = tuple[str, Status, bytes]  # workflow name, status, snapshot


class MemoryAdapter:
    """Keeps encoded snapshots, exactly as a durable adapter would, so everything that is
    stored went through the codec. Lives as long as the object: a second engine opened on the
    same adapter resumes what the first left running."""

    def __init__(self) -> None:
        # Plain tuples: saves are the hot path; record objects are made only for reads.
        self._rows: dict[str, _Row] = {}

    async def open(self) -> None:
        """Nothing to acquire: the storage is this object."""

    async def close(self) -> None:
        """Nothing to release: what is stored stays for the next engine."""

    async def create(self, instance_id: str, workflow_name: str, status: Status, snapshot: bytes) -> bool:
        if instance_id in self._rows:
            return False
        self._rows[instance_id] = (workflow_name, status, bytes(snapshot))
        return True

    async def save(self, instance_id: str, workflow_name: str, status: Status, snapshot: bytes) -> None:
        self._rows[instance_id] = (workflow_name, status, bytes(snapshot))

    async def load(self, instance_id: str) -> InstanceRecord | None:
        row = self._rows.get(instance_id)
        return None if row is None else _record(instance_id, row)

    async def list_instances(self, workflow_name: str, status: Status | None = None) -> list[InstanceRecord]:
        return [
            _record(iid, row) for iid, row in self._rows.items()
            if row[0] == workflow_name and (status is None or row[1] == status)
        ]

    async def resumable(self) -> list[InstanceRecord]:
        return [_record(iid, row) for iid, row in self._rows.items() if row[1] in RESUMABLE]

    async def delete(self, instance_id: str) -> bool:
        return self._rows.pop(instance_id, None) is not None


def _record(instance_id: str, row: _Row) -> InstanceRecord:
    return InstanceRecord(instance_id=instance_id, workflow_name=row[0], status=row[1], snapshot=row[2])
