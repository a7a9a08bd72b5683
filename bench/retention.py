"""Bench case for retention (issue 16 item 1): a long-lived process running many short sagas on a
MemoryAdapter with ``retain_finished=0`` keeps resident memory flat. Called by
``bench/cases.py``; alone (200,000 sagas, or the issue's 1,000,000 with ``--large``):

    python bench/retention.py [--quick] [--large]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import trio

import trioflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import LIMIT, noop, settled_memory, size_options, three_noop_steps  # noqa: E402  (bench/: scripts)


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


def beside_kept_children(n: int, kept: int, storage: str) -> dict[str, float]:
    """``n`` 3-step sagas, ``LIMIT`` at a time, with ``retain_finished=0`` (a purge every
    thousand ends), timed once with no other instance stored and once beside a parent whose map
    ran ``kept`` children and that waits for a signal: the children stay stored for it, and a
    purge must not walk past them each time. The time per saga then over before; ``storage``:
    ``"memory"`` or ``"sqlite"`` (a file in a temporary folder beside this script)."""
    saga = three_noop_steps()
    kid = tf.workflow("kid").step("work", noop).build()
    holder = (tf.workflow("holder").map("each", items=lambda ctx: list(range(ctx.input)),
                                        branch=tf.branch("item").child("run", workflow="kid").build())
              .receive("hold", signal="go").build())

    async def rate(adapter: tf.adapters.Adapter, keeping: int) -> float:
        async with tf.open_engine(adapter=adapter, max_running=LIMIT, retain_finished=0) as engine:
            for definition in (saga, kid, holder):
                engine.register(definition)
            if keeping:
                iid = await engine.start("holder", keeping)
                while ((await engine.get_instance(iid)).waiting or {}).get("signal") != "go":  # type: ignore[union-attr]
                    await trio.sleep(0.05)  # (its map's children have all run)
            left = iter(range(n))

            async def worker() -> None:
                for _ in left:
                    await engine.wait(await engine.start("bench"))

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(LIMIT):
                    nursery.start_soon(worker)
            return n / (time.perf_counter() - start)

    async def main() -> dict[str, float]:
        with tempfile.TemporaryDirectory(dir=Path(__file__).parent, prefix="tmp-") as tmp:
            def adapter(name: str) -> tf.adapters.Adapter:
                if storage == "memory":
                    return tf.adapters.MemoryAdapter()
                return tf.adapters.SQLiteAdapter(Path(tmp) / f"{name}.db")

            alone = await rate(adapter("alone"), 0)
            beside = await rate(adapter("beside"), kept)
        return {"sagas_per_s_alone": alone, "sagas_per_s_beside_kept": beside, "time_beside_over_alone": alone / beside}

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
