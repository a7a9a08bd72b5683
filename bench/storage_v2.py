"""Storage-v2 cases (issue 12): cost that must not grow with the work already in an instance.

Each function runs one measurement and returns its figures; ``bench/cases.py`` calls them in a
fresh process. Bytes are what trioflow hands to the adapter (start, header and records), counted
by a thin wrapper around the real adapter: SQLite then writes those pages to its WAL once.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf

CONCURRENCY = 50


async def noop(_: Any) -> None:
    return None


def counting(base: type[Any]) -> type[Any]:
    """``base`` (an adapter class) that also counts the bytes each write hands over."""

    class Counting(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.written = 0
            self.checkpoints: list[int] = []

        async def create(self, instance_id: str, workflow_name: str, status: Any, *, start: bytes,
                         header: bytes) -> bool:
            self.written += len(start) + len(header)
            created: bool = await super().create(instance_id, workflow_name, status, start=start, header=header)
            return created

        async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Sequence[bytes], *,
                             first_seq: int, start: bytes | None = None) -> None:
            size = len(header) + sum(len(r) for r in records) + len(start or b"")
            self.written += size
            self.checkpoints.append(size)
            await super().checkpoint(instance_id, status, header, records, first_seq=first_seq, start=start)

    return Counting


def linear(steps: int) -> tf.WorkflowDefinition:
    builder = tf.workflow(f"linear-{steps}")
    for i in range(steps):
        builder.task(f"s{i}", job=noop)
    return builder.build()


async def run_all(adapter: Any, wf: tf.WorkflowDefinition, instances: int, input: Any = None) -> float:
    """Seconds to run ``instances`` instances of ``wf``, ``CONCURRENCY`` at a time."""
    limiter = trio.CapacityLimiter(CONCURRENCY)
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(wf)

        async def one() -> None:
            async with limiter:
                await engine.wait(await engine.start(wf.name, input))

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(instances):
                nursery.start_soon(one)
        return time.perf_counter() - start


def adapter_of(kind: str, tmp: str, name: str) -> Any:
    if kind == "memory":
        return counting(tf.adapters.MemoryAdapter)()
    return counting(tf.adapters.SQLiteAdapter)(Path(tmp) / f"{name}.db")


def long_workflows(quick: bool) -> dict[str, float]:
    """Per-step cost of 1,000-step instances against 3-step ones (same number of steps in all,
    same concurrency), on both adapters; and the bytes each checkpoint hands to SQLite late in a
    1,000-step instance against early in it."""
    long_steps = 200 if quick else 1_000
    total = 2 * CONCURRENCY * long_steps if not quick else 2_000
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent, prefix="tmp-") as tmp:
        for kind in ("memory", "sqlite"):
            for steps in (3, long_steps):
                adapter = adapter_of(kind, tmp, f"{kind}-{steps}")
                seconds = trio.run(run_all, adapter, linear(steps), total // steps)
                out[f"{kind}_{steps if steps == 3 else 'long'}_us_per_step"] = seconds / total * 1e6
                if kind == "sqlite" and steps == long_steps:
                    # One instance's checkpoints are interleaved with others': take them all, in
                    # order, and compare the last tenth with the first (each is one step's).
                    sizes = adapter.checkpoints
                    tenth = max(1, len(sizes) // 10)
                    out["sqlite_long_bytes_late_over_early"] = (sum(sizes[-tenth:]) / tenth) / (sum(sizes[:tenth]) / tenth)
                    out["sqlite_long_bytes_per_step"] = adapter.written / total
    return out


def wide_parallel(quick: bool) -> dict[str, float]:
    """Per-branch cost of a parallel step with 1,000 branches against one with 10 (MemoryAdapter,
    same number of branches in all)."""
    wide = 200 if quick else 1_000
    total = 20_000 if not quick else 2_000
    out: dict[str, float] = {}
    for branches in (10, wide):
        wf = tf.workflow(f"wide-{branches}").parallel("p", branches=[
            tf.branch(f"b{i}").task(f"t{i}", job=noop).build() for i in range(branches)]).build()
        adapter = counting(tf.adapters.MemoryAdapter)()
        seconds = trio.run(run_all, adapter, wf, total // branches)
        out[f"us_per_branch_{10 if branches == 10 else 'wide'}"] = seconds / total * 1e6
        out[f"bytes_per_branch_{10 if branches == 10 else 'wide'}"] = adapter.written / total
    return out


def wide_parallel_staggered(quick: bool) -> dict[str, float]:
    """As :func:`wide_parallel`, but branch ``i`` sleeps ``i`` half-milliseconds (on trio's
    MockClock: no real time passes) before its step ends, so that each branch ends in a
    checkpoint of its own, as branches doing real work do; the no-op branches of
    :func:`wide_parallel` all end in one pass of the scheduler and share one checkpoint. Also
    the bytes handed to storage per branch: every header names the branches in flight."""
    wide = 200 if quick else 1_000
    total = 20_000 if not quick else 2_000
    out: dict[str, float] = {}
    for branches in (10, wide):
        wf = tf.workflow(f"staggered-{branches}").parallel("p", branches=[
            tf.branch(f"b{i}").task(f"t{i}", job=_sleeper(i * 0.0005)).build() for i in range(branches)]).build()
        adapter = counting(tf.adapters.MemoryAdapter)()
        seconds = trio.run(run_all, adapter, wf, total // branches, clock=trio.testing.MockClock(autojump_threshold=0))
        out[f"us_per_branch_{10 if branches == 10 else 'wide'}"] = seconds / total * 1e6
        out[f"bytes_per_branch_{10 if branches == 10 else 'wide'}"] = adapter.written / total
    return out


def _sleeper(seconds: float) -> Any:
    async def sleep(_: Any) -> None:
        await trio.sleep(seconds)

    return sleep


def big_outputs(quick: bool) -> dict[str, float]:
    """Three steps returning 1 MB each, on SQLite: bytes handed to the adapter per instance over
    the outputs' encoded size."""
    size = 1024 * 1024
    instances = 3 if quick else 10

    async def megabyte(_: Any) -> bytes:
        return b"x" * size

    wf = tf.workflow("big").task("a", job=megabyte).task("b", job=megabyte).task("c", job=megabyte).build()
    encoded = len(__import__("msgpack").packb(b"x" * size, use_bin_type=True))
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent, prefix="tmp-") as tmp:
        adapter = adapter_of("sqlite", tmp, "big")
        seconds = trio.run(run_all, adapter, wf, instances)
    return {
        "bytes_over_outputs": adapter.written / instances / (3 * encoded),
        "durable_steps_per_s": 3 * instances / seconds,
    }
