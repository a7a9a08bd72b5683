"""A fixture for tests that run on every adapter trioflow ships (retention, listing), and the
helpers of tests on a test engine."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Adapter]:
    """Adapters on one storage, as a restart gets them: the same MemoryAdapter each call, or a
    new SQLiteAdapter on the same file."""
    if request.param == "memory":
        memory = MemoryAdapter()
        return lambda: memory
    return lambda: SQLiteAdapter(tmp_path / "flows.db")


class Declined(Exception):
    """A job's failure, raised on purpose."""


def reservation_jobs(log: list[str]) -> tuple[Callable[..., Awaitable[str]], Callable[..., Awaitable[None]],
                                               Callable[..., Awaitable[None]]]:
    """``(reserve, release, decline)`` saga jobs: reserve ``ctx.input`` (logged ``"reserve
    X"``), release what it reserved (``"release X"``), and fail with :class:`Declined`."""
    async def reserve(ctx: tf.WorkflowContext) -> str:
        log.append(f"reserve {ctx.input}")
        return str(ctx.input)

    async def release(ctx: tf.WorkflowContext, held: str) -> None:
        log.append(f"release {held}")

    async def decline(ctx: tf.WorkflowContext) -> None:
        raise Declined("card declined")

    return reserve, release, decline


def written_before_parents(adapter: Adapter) -> Adapter:
    """``adapter`` as one whose ``create`` predates ``parent_id``: the engine gives it no
    parents, and its purges take a child workflow by its own finish time, while its parent
    runs (what every adapter did before children were kept for their parents)."""
    create = adapter.create

    async def old_create(instance_id: str, workflow_name: str, status: Any, *, start: bytes, header: bytes) -> bool:
        return await create(instance_id, workflow_name, status, start=start, header=header)

    adapter.create = old_create  # type: ignore[method-assign]
    return adapter


class BusyLoop(Exception):
    """Raised from a watched ``due()`` once the waker spins: it kills the waker, so that the
    test fails rather than hang."""


class DueWatch:
    """Watches the waker's ``due()`` questions to adapters made by :func:`watched`: how many in
    all and per virtual second (the waker asks at most 20 a second while it has work, every
    ``WAKE_RETRY``; more than ``busy_at`` is a busy loop, which ends in :class:`BusyLoop`); each
    answer takes ``takes`` seconds (storage slow to answer)."""

    def __init__(self, busy_at: int, takes: float = 0.0) -> None:
        self.busy_at, self.takes = busy_at, takes
        self.reset()

    def reset(self) -> None:
        self.per_second: dict[int, int] = {}
        self.total = 0
        self.busy = False

    async def asked(self) -> None:
        second = int(trio.current_time())
        count = self.per_second[second] = self.per_second.get(second, 0) + 1
        self.total += 1
        if count > self.busy_at:
            self.busy = True
            raise BusyLoop(f"due() asked {count} times in one virtual second")
        if self.takes:
            await trio.sleep(self.takes)

    def most_in_a_second(self) -> int:
        return max(self.per_second.values(), default=0)


def _watching(base: type[Any], watch: DueWatch) -> type[Any]:
    class Watched(base):  # type: ignore[misc, valid-type]
        async def due(self, before: float, limit: int, **options: Any) -> Any:
            await watch.asked()
            return await super().due(before, limit, **options)
    return Watched


def watched(kind: str, tmp_path: Path, watch: DueWatch) -> Callable[[], Adapter]:
    """What the ``storage`` fixture gives for ``kind`` ("memory" or "sqlite"), with ``due()``
    watched by ``watch`` (reset now)."""
    watch.reset()
    if kind == "memory":
        memory = _watching(MemoryAdapter, watch)()
        return lambda: memory
    sqlite = _watching(SQLiteAdapter, watch)
    return lambda: sqlite(tmp_path / "flows.db")


Clock = Callable[[], float]


@asynccontextmanager
async def engine_on(adapter: Adapter, clock: Clock | None = None, **options: Any) -> AsyncIterator[tf.Engine]:
    """A test engine on ``adapter``, on the virtual wall clock (or ``clock``)."""
    async with open_test_engine(adapter=adapter, clock=clock or virtual_wall_clock(), **options) as engine:
        yield engine


class StorageBusy:
    """When (on the engine's clock) calls to adapters made by :meth:`timed` were in flight,
    those named in ``uncounted`` aside. On SQLite that time is real time (the mock clock runs at
    real speed while storage works): tens of milliseconds on a loaded machine, which a test
    must not count as the engine's lateness."""

    def __init__(self, clock: Callable[[], float], uncounted: Collection[str] = ()) -> None:
        self.clock = clock
        self.uncounted = frozenset(uncounted)
        self.spans: list[list[float]] = []  # [start, end] of each stretch with a call in flight
        self.in_flight = 0

    def timed(self, make: Callable[[], Adapter]) -> Callable[[], Adapter]:
        def make_timed() -> Adapter:
            adapter = make()
            for name in dir(type(adapter)):
                method = getattr(adapter, name)
                if name not in self.uncounted and not name.startswith("_") and inspect.iscoroutinefunction(method):
                    setattr(adapter, name, self._wrapped(method))
            return adapter
        return make_timed

    def _wrapped(self, method: Callable[..., Any]) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.in_flight == 0:
                self.spans.append([self.clock(), float("inf")])
            self.in_flight += 1
            try:
                return await method(*args, **kwargs)
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self.spans[-1][1] = self.clock()
        return call

    def between(self, start: float, end: float) -> float:
        """How long, from ``start`` to ``end``, storage was working."""
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in self.spans)


def returning(value: Any) -> Any:
    """An async job that returns ``value``."""
    async def job(data: Any) -> Any:
        return value
    return job


async def finish(engine: tf.Engine, iid: str, limit: float = 10**6) -> tf.WorkflowInstance:
    """``engine.wait(iid)``, failing (at once, on the autojumping clock) instead of hanging."""
    with trio.fail_after(limit):
        return await engine.wait(iid)


class HeaderSizes(MemoryAdapter):
    """A MemoryAdapter that keeps the size of the largest header a checkpoint handed it."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Any, **kw: Any) -> Any:
        self.largest = max(self.largest, len(header))
        return await super().checkpoint(instance_id, status, header, records, **kw)


async def largest_header_of_staggered_map(items: int, first_step: bool = False) -> int:
    """The largest header a map of ``items`` items ending one after another writes (on a test
    engine, under a MockClock); ``first_step``: each item runs a step first, so that the items
    in flight stand past it."""
    async def first(ctx: tf.WorkflowContext) -> int:
        return int(ctx.item)

    async def slow(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(1 + ctx.item)  # every item ends at its own moment: one checkpoint each
        return int(ctx.item)

    branch = tf.branch("item").step("first", first) if first_step else tf.branch("item")
    wf = (tf.workflow("stagger").map("each", items=lambda ctx: list(range(items)),
                                     branch=branch.step("work", slow).build()).build())
    adapter = HeaderSizes()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("stagger"))
    assert done.status == "completed" and done.output == list(range(items))
    return adapter.largest
