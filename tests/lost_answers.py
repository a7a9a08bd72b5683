"""A storage whose checkpoint's answer is lost after it stored (or did not store) it, and
whose reads can fail: what the reviews of lost answers run on, on the MemoryAdapter and on
SQLite (the ``make_adapter`` fixture); and one whose creates' answers are lost."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import trio

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter


def losing(base: type) -> type:
    """``base`` whose checkpoint chosen by ``lose`` is stored (or, ``store_it`` False, not
    stored), then answered with ``StorageUnavailableError``; the next checkpoint of that
    instance waits ``delay`` seconds first. ``look_fails``: every load raises."""

    class Losing(base):  # type: ignore[misc, valid-type]
        lose: Callable[..., bool] | None = None
        store_it = True
        delay = 0.0
        look_fails = False
        _slow: str | None = None

        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self.writes: list[Any] = []

        async def checkpoint(self, instance_id: str, status: Any, header: Any, records: Any, **kwargs: Any) -> Any:
            if instance_id == self._slow:
                self._slow = None
                await trio.sleep(self.delay)
            if self.lose is not None and self.lose(instance_id, status, records, kwargs):
                self.lose = None
                self._slow = instance_id
                if self.store_it:
                    await super().checkpoint(instance_id, status, header, records, **kwargs)
                raise tf.StorageUnavailableError("the answer was lost")
            stored = await super().checkpoint(instance_id, status, header, records, **kwargs)
            self.writes.append((instance_id, status, len(records), kwargs.get("first_seq")))
            return stored

        async def load(self, instance_id: str) -> Any:
            if self.look_fails:
                raise tf.StorageUnavailableError("storage still down")
            return await super().load(instance_id)

    return Losing


LostMemory = losing(MemoryAdapter)
LostSQLite = losing(SQLiteAdapter)


@pytest.fixture(params=["memory", "sqlite"])
def make_adapter(request: Any, tmp_path: Any) -> Callable[[], Any]:
    if request.param == "memory":
        one = LostMemory()
        return lambda: one
    return lambda: LostSQLite(tmp_path / "lost.db")


class LosesCreateAnswers:
    """For an adapter class (before it among the bases): the first ``create()`` of each id in
    ``lose`` stores the row, then raises ``StorageUnavailableError`` (its answer lost): a start
    that raises though it stored."""

    lose: set[str]

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        created: bool = await super().create(instance_id, *args, **kwargs)  # type: ignore[misc]
        if instance_id in self.lose:
            self.lose.discard(instance_id)
            raise tf.StorageUnavailableError("connection dropped after the write")
        return created


class AnswerLostFor(LosesCreateAnswers, MemoryAdapter):
    """A MemoryAdapter that loses the answers of the first creates of ``lose``."""

    def __init__(self, *lose: str) -> None:
        super().__init__()
        self.lose = set(lose)


class FirstAnswerLost(MemoryAdapter):
    """The first ``create()``, whatever its id, stores the row, then raises
    ``StorageUnavailableError`` (its answer lost on the way back)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = False

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        created = await super().create(instance_id, *args, **kwargs)
        if not self.lost:
            self.lost = True
            raise tf.StorageUnavailableError("connection dropped after the write")
        return created
