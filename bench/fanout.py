"""Bench cases for Map steps and child workflows (issue 15), on SQLite (FULL) on the real clock.
Called by ``bench/cases.py``; alone:

    python bench/fanout.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

import trioflow as tf

HERE = Path(__file__).resolve().parent


async def _noop_item(ctx: Any) -> None:
    return None


def _map_seconds(items: int, concurrency: int) -> float:
    """Seconds one instance takes to map ``items`` items of one no-op async step, from start to
    completed (the item list stored, every item's step checkpointed, the map's output stored)."""
    wf = (tf.workflow("w").map("each", items=lambda ctx: list(range(ctx.input)), max_concurrency=concurrency,
                               branch=tf.branch("item").step("work", _noop_item).build())
          .build())

    async def main() -> float:
        with tempfile.TemporaryDirectory(dir=HERE, prefix="tmp-") as tmp:
            async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(Path(tmp) / "m.db")) as engine:
                engine.register(wf)
                start = time.perf_counter()
                done = await engine.wait(await engine.start("w", items))
                seconds = time.perf_counter() - start
                if done.status != "completed":
                    raise RuntimeError(f"the map ended {done.status}: {done.error}")
                return seconds

    return trio.run(main)


def map_items(small: int, large: int, concurrency: int = 1000) -> dict[str, float]:
    """Items per second through one map of ``small`` items, and the cost per item of ``large``
    items over that of ``small`` (cost per item must not grow with the item count)."""
    small_s = _map_seconds(small, concurrency)
    large_s = _map_seconds(large, concurrency)
    return {"items_per_s": small / small_s, "large_over_small_per_item": (large_s / large) / (small_s / small)}


def children_completed(parents: int, per_parent: int = 10) -> dict[str, float]:
    """Children completed per second: ``parents`` instances each map over ``per_parent`` items
    whose branch is one child step, the child a workflow of one no-op step (each child is an
    instance of its own, started, checkpointed and ended on SQLite, its end noticed by its
    parent), from the first start until every parent has completed."""
    child = tf.workflow("child").step("work", _noop_item).build()
    parent = (tf.workflow("parent").map("each", items=lambda ctx: list(range(ctx.input)),
                                        branch=tf.branch("item").child("run", workflow="child").build())
              .build())

    async def main() -> float:
        with tempfile.TemporaryDirectory(dir=HERE, prefix="tmp-") as tmp:
            async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(Path(tmp) / "c.db")) as engine:
                engine.register(parent)
                engine.register(child)
                start = time.perf_counter()
                ids: list[str] = []
                async with trio.open_nursery() as nursery:
                    async def one() -> None:
                        ids.append(await engine.start("parent", per_parent))

                    for _ in range(parents):
                        nursery.start_soon(one)
                for iid in ids:
                    done = await engine.wait(iid)
                    if done.status != "completed":
                        raise RuntimeError(f"a parent ended {done.status}: {done.error}")
                return parents * per_parent / (time.perf_counter() - start)

    return {"children_per_s": trio.run(main)}


class _HeaderBytes(tf.adapters.MemoryAdapter):
    """Counts the checkpoints and the header bytes they hand over."""

    def __init__(self) -> None:
        super().__init__()
        self.checkpoints = 0
        self.header_bytes = 0

    async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Any, **kw: Any) -> Any:
        self.checkpoints += 1
        self.header_bytes += len(header)
        return await super().checkpoint(instance_id, status, header, records, **kw)


def _staggered(items: int, moved_on: bool = False) -> tuple[float, float]:
    """One map of ``items`` one-step items, all started at once (no ``max_concurrency``), item
    ``i`` ending ``i`` half-milliseconds after the start, each in a checkpoint of its own; on a
    MemoryAdapter. ``moved_on``: each item runs a no-op step first, so that the items in flight
    stand past their first step. The header bytes per checkpoint, and the process's CPU
    microseconds per item."""
    async def take(ctx: Any) -> None:
        return None

    async def work(ctx: Any) -> None:
        await trio.sleep(ctx.item * 0.0005)

    branch = tf.branch("item").step("take", take).step("work", work) if moved_on else tf.branch("item").step("work", work)
    wf = tf.workflow("w").map("each", items=lambda ctx: list(range(ctx.input)), branch=branch.build()).build()

    async def main() -> tuple[float, float]:
        adapter = _HeaderBytes()
        async with tf.open_engine(adapter=adapter) as engine:
            engine.register(wf)
            cpu = time.process_time()
            done = await engine.wait(await engine.start("w", items))
            cpu = time.process_time() - cpu
            if done.status != "completed":
                raise RuntimeError(f"the map ended {done.status}: {done.error}")
        return adapter.header_bytes / adapter.checkpoints, cpu / items * 1e6

    return trio.run(main)


def map_staggered(small: int, large: int) -> dict[str, float]:
    """Header bytes per checkpoint of a map of ``large`` items ending one after another, and
    over those of ``small`` items: they should not grow with the items in flight (the no-op
    items of :func:`map_items` end together, and share their checkpoints). The same with items
    that ran a first step (each lane in flight is then named by its last record's seq), and
    their CPU time per item, ``large`` over ``small`` items."""
    (small_bytes, _), (large_bytes, _) = _staggered(small), _staggered(large)
    (_, small_us), (moved_bytes, large_us) = _staggered(small, moved_on=True), _staggered(large, moved_on=True)
    return {"header_bytes_large": large_bytes, "header_bytes_large_over_small": large_bytes / small_bytes,
            "moved_on_header_bytes_large": moved_bytes, "moved_on_us_per_item_large_over_small": large_us / small_us}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(map_items(1_000, 5_000) if args.quick else map_items(10_000, 100_000)))
    print(json.dumps(map_staggered(100, 400) if args.quick else map_staggered(400, 4_000)))
    print(json.dumps(children_completed(100 if args.quick else 1_000)))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
