"""In-memory adapter: encoded snapshots in a dict, shared by every engine opened on it."""

from __future__ import annotations

from trioflow._snapshot import RESUMABLE, Status

from ._protocol import InstanceRecord


class MemoryAdapter:
    """Keeps encoded snapshots, exactly as a durable adapter would, so everything that is
    stored went through the codec. Lives as long as the object: a second engine opened on the
    same adapter resumes what the first left running."""

    def __init__(self) -> None:
        self._records: dict[str, InstanceRecord] = {}

    async def open(self) -> None:
        """Nothing to acquire: the storage is this object."""

    async def close(self) -> None:
        """Nothing to release: what is stored stays for the next engine."""

    async def create(self, instance_id: str, workflow_name: str, status: Status, snapshot: bytes) -> bool:
        if instance_id in self._records:
            return False
        self._records[instance_id] = InstanceRecord(
            instance_id=instance_id, workflow_name=workflow_name, status=status, snapshot=bytes(snapshot)
        )
        return True

    async def save(self, instance_id: str, workflow_name: str, status: Status, snapshot: bytes) -> None:
        self._records[instance_id] = InstanceRecord(
            instance_id=instance_id, workflow_name=workflow_name, status=status, snapshot=bytes(snapshot)
        )

    async def load(self, instance_id: str) -> InstanceRecord | None:
        return self._records.get(instance_id)

    async def list_instances(self, workflow_name: str, status: Status | None = None) -> list[InstanceRecord]:
        return [
            r for r in self._records.values()
            if r.workflow_name == workflow_name and (status is None or r.status == status)
        ]

    async def resumable(self) -> list[InstanceRecord]:
        return [r for r in self._records.values() if r.status in RESUMABLE]

    async def delete(self, instance_id: str) -> bool:
        return self._records.pop(instance_id, None) is not None
