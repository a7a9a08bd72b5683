"""Review of f46351d / 8d9fa80 (draft probes)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
import trioflow._engine as engine_module
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import virtual_wall_clock

from storages import engine_on, finish, returning


class Counting:
    calls: dict[int, int]


def _counting(base: type) -> type:
    class Spy(base):  # type: ignore[misc, valid-type]
        calls: dict[int, int] = {}

        async def due(self, before: float, limit: int, **kw: Any) -> Any:
            second = int(trio.current_time())
            Spy.calls[second] = Spy.calls.get(second, 0) + 1
            return await super().due(before, limit, **kw)
    return Spy


@pytest.fixture(params=["memory", "sqlite"])
def spy(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Adapter]:
    cls = _counting(MemoryAdapter if request.param == "memory" else SQLiteAdapter)
    cls.calls = {}
    if request.param == "memory":
        memory = cls()
        return lambda: memory
    return lambda: cls(tmp_path / "f.db")


async def test_probe_many_due_among_far(autojump_clock: trio.testing.MockClock, spy: Callable[[], Adapter]) -> None:
    n, far = 2500, 1500
    fired: dict[int, list[float]] = {}
    clock = virtual_wall_clock()

    async def after(data: Any) -> None:
        fired.setdefault(data["i"], []).append(clock())

    wf = tf.workflow("w").wait("nap", until=lambda ctx: ctx.input["due"]).task("after", job=after,
        ).build()
    wf2 = (tf.workflow("w2").wait("nap", until=lambda ctx: ctx.input["due"])
           .task("after", job=lambda d: None).build())
    adapter = spy()
    async with engine_on(adapter, clock) as engine:
        engine.register(wf)
        t0 = clock()
        for i in range(far):
            await engine.start("w", {"due": t0 + 86400, "i": -1})
        due = t0 + 600
        ids = [await engine.start("w", {"due": due, "i": i}) for i in range(n)]
        with trio.fail_after(5000):
            done = [await engine.wait(iid) for iid in ids]
        print("late", max(v[0] for v in fired.values()) - due, "real", )
    print(sorted(type(adapter).calls.items(), key=lambda kv: -kv[1])[:5])
    assert all(d.status == "completed" for d in done)
