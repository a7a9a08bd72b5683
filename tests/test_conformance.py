"""The adapter conformance kit, run against the adapters trioflow ships, and against adapters
broken on purpose (the kit must catch them, naming the check)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

import trioflow as tf
from trioflow._snapshot import TERMINAL, Status
from trioflow.adapters import StoredInstance
from trioflow.testing import check_persistence_adapter
from trioflow.testing._conformance import _CHECKS, OpenAdapter

CHECK_NAMES = [check.__name__ for check in _CHECKS]


def _memory() -> OpenAdapter:
    stores: dict[str, tf.adapters.MemoryAdapter] = {}
    return lambda key: stores.setdefault(key, tf.adapters.MemoryAdapter())


def _sqlite(tmp_path: Path) -> OpenAdapter:
    return lambda key: tf.adapters.SQLiteAdapter(tmp_path / f"{key}.db")


async def test_memory_adapter_conforms() -> None:
    assert await check_persistence_adapter(_memory()) == CHECK_NAMES


async def test_sqlite_adapter_conforms(tmp_path: Path) -> None:
    assert await check_persistence_adapter(_sqlite(tmp_path)) == CHECK_NAMES


# One test per check as well, so that a failure (or a deselection with -k) names the check.
@pytest.mark.parametrize("check", _CHECKS, ids=CHECK_NAMES)
async def test_memory_adapter_passes(check: Callable[[OpenAdapter], Awaitable[None]]) -> None:
    await check(_memory())


@pytest.mark.parametrize("check", _CHECKS, ids=CHECK_NAMES)
async def test_sqlite_adapter_passes(check: Callable[[OpenAdapter], Awaitable[None]], tmp_path: Path) -> None:
    await check(_sqlite(tmp_path))


async def _kit_failure(adapter_class: type[tf.adapters.MemoryAdapter]) -> str:
    stores: dict[str, tf.adapters.MemoryAdapter] = {}
    with pytest.raises(AssertionError) as failed:
        await check_persistence_adapter(lambda key: stores.setdefault(key, adapter_class()))
    return str(failed.value)


async def test_the_kit_names_the_failing_check() -> None:
    class UndeletingAdapter(tf.adapters.MemoryAdapter):
        async def delete(self, instance_id: str) -> bool:
            return await self.load(instance_id) is not None

    assert "check 'delete_removes' failed: delete must remove the instance" in await _kit_failure(UndeletingAdapter)


async def test_the_kit_fails_an_adapter_that_writes_before_checking_the_fence() -> None:
    class HeaderFirstAdapter(tf.adapters.MemoryAdapter):
        async def checkpoint(
            self, instance_id: str, status: Status, header: bytes, records: Sequence[bytes], *,
            first_seq: int, start: bytes | None = None,
        ) -> None:
            row = self._rows.get(instance_id)
            if row is not None:
                row.header = bytes(header)  # before the fence is checked
            await super().checkpoint(instance_id, status, header, records, first_seq=first_seq, start=start)

    message = await _kit_failure(HeaderFirstAdapter)
    assert "check 'checkpoint_is_fenced' failed" in message
    assert "a refused checkpoint at first_seq=0 must write nothing" in message


async def test_the_kit_fails_an_adapter_whose_checkpoint_is_not_all_or_nothing() -> None:
    class RecordByRecordAdapter(tf.adapters.MemoryAdapter):
        """Checks the fence, then writes the header, then converts and appends each record:
        a record that cannot be stored leaves the header and the records before it written."""

        async def checkpoint(
            self, instance_id: str, status: Status, header: bytes, records: Sequence[bytes], *,
            first_seq: int, start: bytes | None = None, consumed: Sequence[int] = (),
        ) -> None:
            await super().checkpoint(instance_id, status, header, [], first_seq=first_seq, start=start,
                                     consumed=consumed)
            row = self._rows[instance_id]
            for record in records:
                row.records = [*row.records, bytes(record)]

    message = await _kit_failure(RecordByRecordAdapter)
    assert "check 'checkpoint_is_atomic' failed" in message
    assert "failed part way (a record that is None) must write nothing" in message


async def test_the_kit_fails_an_adapter_that_consumes_signals_apart_from_its_checkpoint() -> None:
    class ConsumesFirstAdapter(tf.adapters.MemoryAdapter):
        """Deletes the consumed signals before it checks the fence: a refused checkpoint has
        consumed them anyway, and a signal is lost."""

        async def checkpoint(self, instance_id: str, status: Status, header: bytes, records: Sequence[bytes], *,
                             first_seq: int, start: bytes | None = None, consumed: Sequence[int] = ()) -> None:
            row = self._rows.get(instance_id)
            if row is not None and row.signals:
                for seq in consumed:
                    row.signals.pop(seq, None)
            await super().checkpoint(instance_id, status, header, records, first_seq=first_seq, start=start)

    message = await _kit_failure(ConsumesFirstAdapter)
    # (Its checkpoint that fails part way has consumed them too: the atomicity check, which
    # runs first, sees the signal lost.)
    assert "check 'checkpoint_is_atomic' failed" in message
    assert "must consume no signal: the signal would be lost" in message


async def test_the_kit_fails_an_adapter_whose_signal_and_load_reads_the_row_before_storing_the_signal() -> None:
    class StaleRowAdapter(tf.adapters.MemoryAdapter):
        """Reads the row, then stores the signal: the row the engine wakes the instance from
        lacks the signal just stored."""

        async def send_signal_and_load(
            self, instance_id: str, name: str, payload: bytes,
        ) -> tuple[int | None, StoredInstance | None]:
            row = await self.load(instance_id)
            return await self.send_signal(instance_id, name, payload), row

    assert "check 'signal_and_load_is_one_call' failed" in await _kit_failure(StaleRowAdapter)


async def test_the_kit_fails_an_adapter_whose_scans_give_records_out_of_order() -> None:
    class RecordsReversedInScans(tf.adapters.MemoryAdapter):
        """``load`` is right; listings, resumes and wakes hand records back newest first (a
        real engine then finds every resumed instance unreadable)."""

        async def list_instances(self, *args: Any, **kwargs: Any) -> list[StoredInstance]:
            return [attrs.evolve(s, records=s.records[::-1]) for s in await super().list_instances(*args, **kwargs)]

    message = await _kit_failure(RecordsReversedInScans)
    assert "check 'scans_hand_back_every_record_in_order' failed" in message


async def test_the_kit_fails_an_adapter_that_does_not_resume_a_signalled_waiting_instance() -> None:
    class ResumableDropsSignalled(tf.adapters.MemoryAdapter):
        """Leaves out waiting instances even with a pending signal: a signal stored just before
        a crash never reaches its instance."""

        async def resumable(self) -> list[StoredInstance]:
            return [s for s in await super().resumable() if self._rows[s.instance_id].wake_at is None]

    message = await _kit_failure(ResumableDropsSignalled)
    assert "must include a waiting instance that has a pending signal" in message


async def test_the_kit_fails_an_adapter_that_purges_in_creation_order() -> None:
    class PurgesOldestCreated(tf.adapters.MemoryAdapter):
        async def purge(self, finished_by: float, limit: int, *, status: Status | None = None,
                        workflow_name: str | None = None) -> int:
            done = [s for s in await self.list_instances(status=status) if s.status in TERMINAL
                    and (workflow_name is None or s.workflow_name == workflow_name)
                    and self._rows[s.instance_id].finished_at <= finished_by][:limit]  # type: ignore[operator]
            for s in done:
                await self.delete(s.instance_id)
            return len(done)

    message = await _kit_failure(PurgesOldestCreated)
    assert "check 'purge_goes_by_finish_order_not_creation_order' failed" in message


async def test_the_kit_fails_an_adapter_that_takes_skip_workflows_and_ignores_it() -> None:
    class IgnoringAdapter(tf.adapters.MemoryAdapter):
        async def due(self, before: float, limit: int, *, skip_workflows: Collection[str] = ()) -> list[StoredInstance]:
            return await super().due(before, limit)

    message = await _kit_failure(IgnoringAdapter)
    assert "check 'waiting_instances_of_skipped_workflows_are_left_out' failed" in message


async def test_the_kit_fails_an_adapter_that_takes_exclude_and_ignores_it() -> None:
    class IgnoringAdapter(tf.adapters.MemoryAdapter):
        async def due(self, before: float, limit: int, *, skip_workflows: Collection[str] = (),
                      exclude: Collection[str] = ()) -> list[StoredInstance]:
            return await super().due(before, limit, skip_workflows=skip_workflows)

    message = await _kit_failure(IgnoringAdapter)
    assert "check 'waiting_instances_excluded_are_left_out' failed" in message


async def test_the_kit_passes_an_adapter_written_before_skip_workflows() -> None:
    """The engine passes over the workflows it cannot run itself with such an adapter."""
    class OlderAdapter(tf.adapters.MemoryAdapter):
        async def due(self, before: float, limit: int) -> list[StoredInstance]:  # type: ignore[override]
            return await super().due(before, limit)

        async def next_wake(self) -> float | None:  # type: ignore[override]
            return await super().next_wake()

    stores: dict[str, tf.adapters.MemoryAdapter] = {}
    # (The checks of what it does not have are not made, nor listed as passed.)
    not_made = {"waiting_instances_of_skipped_workflows_are_left_out", "waiting_instances_excluded_are_left_out"}
    assert await check_persistence_adapter(lambda key: stores.setdefault(key, OlderAdapter())) == [
        name for name in CHECK_NAMES if name not in not_made]
