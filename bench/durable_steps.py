"""Durable steps per second on the SQLiteAdapter (issue 4; SPEC target: >= 10,000/s at 1,000
concurrent instances on a 2-core machine).

Each instance runs a 3-step workflow of no-op async jobs; every step's completion is committed
to the SQLite file before the next step starts. "Durable steps" counts step completions. Each
figure is the median (min-max) over --repeats runs, each on a fresh database file.

    python bench/durable_steps.py [--repeats 3] [--quick] [--dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

import trioflow as tf

STEPS = 3


async def _noop(data: Any) -> None:
    return None


WORKFLOW = tf.workflow("bench").task("a", job=_noop).task("b", job=_noop).task("c", job=_noop).build()


async def measure(path: Path, concurrency: int, instances: int, synchronous: Any) -> float:
    """Durable steps per second for ``instances`` runs, ``concurrency`` at a time."""
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path, synchronous=synchronous)) as engine:
        engine.register(WORKFLOW)
        slots = trio.Semaphore(concurrency)

        async def one() -> None:
            async with slots:
                await engine.wait(await engine.start("bench"))

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(instances):
                nursery.start_soon(one)
        elapsed = time.perf_counter() - start
    return instances * STEPS / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--dir", default=".", help="where the temporary databases go (use a real disk)")
    args = parser.parse_args()
    print(f"{'synchronous':<12}{'concurrent':>11}{'durable steps/s (median)':>27}{'min':>10}{'max':>10}")
    results: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="trioflow-bench-") as tmp:
        for repeat in range(args.repeats):  # interleaved: each repeat runs every case once
            for synchronous in ("FULL", "NORMAL"):
                for concurrency in (1, 100, 1000):
                    instances = 20 if args.quick else max(200, 3 * concurrency)
                    path = Path(tmp) / f"{synchronous}-{concurrency}-{repeat}.db"
                    rate = trio.run(measure, path, concurrency, instances, synchronous)
                    results.setdefault((synchronous, concurrency), []).append(rate)
    for (synchronous, concurrency), rates in results.items():
        print(f"{synchronous:<12}{concurrency:>11}{statistics.median(rates):>27,.0f}{min(rates):>10,.0f}{max(rates):>10,.0f}")
    measured = statistics.median(results[("FULL", 1000)])
    for wave, target in (("wave 1", 10_000), ("wave 2", 25_000)):
        print(f"{wave} target >= {target:,} durable steps/s at 1,000 concurrent (FULL): {measured:,.0f} -> "
              f"{'met' if measured >= target else 'NOT met'}")


if __name__ == "__main__":
    main()
