"""The adapter conformance kit, run against the adapters trioflow ships, and against adapters
broken on purpose (the kit must catch them, naming the check)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest

import trioflow as tf
from trioflow._snapshot import Status
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
            first_seq: int, start: bytes | None = None,
        ) -> None:
            await super().checkpoint(instance_id, status, header, [], first_seq=first_seq, start=start)
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
    assert "check 'signals_are_kept_in_order_and_consumed_once' failed" in message
