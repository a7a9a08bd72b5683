"""What a persistence adapter is. Adapters store snapshot bytes; they never decode them."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import attrs

from trioflow._snapshot import Status


@attrs.frozen(kw_only=True)
class InstanceRecord:
    """One stored instance: the fields an adapter indexes, and the opaque snapshot."""

    instance_id: str
    workflow_name: str
    status: Status
    snapshot: bytes


@runtime_checkable
class Adapter(Protocol):
    """Persistence for instances. Every method is a checkpoint-free await on the hot path.

    ``save`` returns only once the snapshot is as durable as the adapter promises: the engine
    does not start an instance's next step before that.
    """

    async def open(self) -> None:
        """Acquire what the adapter needs (files, locks, threads); called by ``open_engine``."""
        ...

    async def close(self) -> None:
        """Flush and release; called when the engine stops. The adapter may be opened again."""
        ...

    async def create(self, instance_id: str, workflow_name: str, status: Status, snapshot: bytes) -> bool:
        """Store a new instance; ``False`` (and no write) when the id already exists."""
        ...

    async def save(self, instance_id: str, workflow_name: str, status: Status, snapshot: bytes) -> None:
        """Replace the snapshot of an existing instance."""
        ...

    async def load(self, instance_id: str) -> InstanceRecord | None:
        """One instance, or ``None``."""
        ...

    async def list_instances(self, workflow_name: str, status: Status | None = None) -> list[InstanceRecord]:
        """Instances of a workflow, optionally of one status, oldest first."""
        ...

    async def resumable(self) -> list[InstanceRecord]:
        """Instances a resume must pick up: status ``pending`` or ``running``."""
        ...

    async def delete(self, instance_id: str) -> bool:
        """Remove an instance; whether it existed."""
        ...
