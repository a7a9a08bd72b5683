"""Bench case for retention (issue 16 item 1): a long-lived process running many short sagas on a
MemoryAdapter with ``retain_finished=0`` keeps resident memory flat. Called by
``bench/cases.py``; alone (200,000 sagas, or the issue's 1,000,000 with ``--large``):

    python bench/retention.py [--quick] [--large]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import trio

import trioflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import LIMIT, settled_memory, size_options, three_noop_steps  # noqa: E402  (bench/: scripts)


def memory_with_retention(n: int) -> dict[str, float]:
    """``n`` 3-step no-op sagas, ``LIMIT`` at a time, through an engine on a MemoryAdapter with
    ``retain_finished=0``: resident memory once all have run over resident memory once the
    first tenth had. Each is read once the retention task has purged everything that finished
    (it runs once a second), so both count the process at rest rather than the last second's
    finished instances."""
    wf = three_noop_steps()

    async def main() -> dict[str, float]:
        adapter = tf.adapters.MemoryAdapter()
        async with tf.open_engine(adapter=adapter, max_running=LIMIT, retain_finished=0) as engine:
            engine.register(wf)

            async def run(count: int) -> float:
                """Run ``count`` sagas; the resident bytes once retention has purged them. ``LIMIT``
                tasks each run saga after saga: a task per saga would make the phase with more
                sagas hold more parked tasks, and the trio containers they fill never shrink."""
                left = iter(range(count))

                async def worker() -> None:
                    for _ in left:
                        await engine.wait(await engine.start("bench"))

                async with trio.open_nursery() as nursery:
                    for _ in range(LIMIT):
                        nursery.start_soon(worker)
                while adapter._rows:
                    await trio.sleep(0.05)
                return settled_memory()[0]

            start = time.perf_counter()
            early = await run(n // 10)
            late = await run(n - n // 10)
            elapsed = time.perf_counter() - start
        return {"rss_late_over_early": late / early, "rss_early_bytes": early, "rss_late_bytes": late,
                "sagas_per_s": n / elapsed}

    return trio.run(main)


def main() -> None:
    args = size_options(__doc__.splitlines()[0], "1,000,000 sagas (the size the issue states the target for)")
    n = 5_000 if args.quick else 1_000_000 if args.large else 200_000
    figures = memory_with_retention(n)
    print(f"{n:,} sagas, retain_finished=0: RSS at the end / after the first {n // 10:,}:"
          f" {figures['rss_late_over_early']:.3f} (target <= 1.10)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
