"""Bench cases for durable waiting (issue 14): what a waiting instance costs the engine process,
how fast timers that fall due together fire, and how fast signals reach waiting instances. Each
runs on SQLite (FULL) on the real clock. Called by ``bench/cases.py``; alone:

    python bench/waiting.py [--quick] [--large]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

import trioflow as tf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cases import noop as _noop  # noqa: E402  (bench/ is a folder of scripts, not a package)
from cases import settled_memory as _settled  # noqa: E402
from cases import size_options  # noqa: E402


async def _start_all(engine: tf.Engine, n: int, input_of: Any = None, **options: Any) -> list[str]:
    """Start ``n`` instances, 1,000 at a time in flight: 1,000 tasks take the next number in
    turn (a task per instance, queued on a limiter, would make the harness itself hold some
    hundred megabytes at once, which the memory case would then count). Each instance's input
    is its number, or what ``input_of`` makes of it."""
    ids: list[str] = []
    numbers = iter(range(n))

    async def starter() -> None:
        for i in numbers:
            ids.append(await engine.start("w", i if input_of is None else input_of(i), **options))

    async with trio.open_nursery() as nursery:
        for _ in range(min(n, 1000)):
            nursery.start_soon(starter)
    return ids


def memory_per_waiting_instance(n: int, on: str = "timer") -> dict[str, float]:
    """Memory of the engine process per instance waiting on a day-long timer (``on="signal"``:
    for a signal, with a day's timeout; ``on="branches"``: two parallel branches, one on a
    timer, one for a signal), once every instance has left memory: RSS growth over ``n``
    instances (SQLite's page cache and the allocators' own keep part of it), and the Python
    memory blocks still allocated (what the engine itself keeps per waiting instance)."""
    waits = {
        "timer": lambda: tf.workflow("w").wait("sleep", seconds=86_400),
        "signal": lambda: tf.workflow("w").receive("sleep", signal="approved", timeout=86_400),
        "branches": lambda: tf.workflow("w").parallel("both", branches=[
            tf.branch("timer").wait("sleep", seconds=86_400).build(),
            tf.branch("signal").receive("approval", signal="approved", timeout=86_400).build()]),
    }
    wf = waits[on]().task("after", job=_noop).build()

    async def main() -> dict[str, float]:
        with tempfile.TemporaryDirectory(dir=HERE, prefix="tmp-") as tmp:
            async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(Path(tmp) / "w.db")) as engine:
                engine.register(wf)
                await _start_all(engine, 1000)  # warm: statements, caches, the first pages
                while engine._live:
                    await trio.sleep(0.05)
                rss, blocks = _settled()
                await _start_all(engine, n)
                while engine._live:
                    await trio.sleep(0.05)
                rss_after, blocks_after = _settled()
                return {"bytes_per_waiting_instance": (rss_after - rss) / n,
                        "python_blocks_per_waiting_instance": (blocks_after - blocks) / n}

    return trio.run(main)


def timers_firing(n: int, lead: float | None = None, among: int = 0) -> dict[str, float]:
    """``n`` instances wait until one moment (``lead`` seconds after the first start, enough
    for every instance to be started and out of memory); from that moment, how many per second
    are resumed and have their next step checkpointed, and how late the last one is. ``among``:
    as many other instances wait for a day meanwhile (started first)."""
    wf = (tf.workflow("w").wait("until", until=lambda ctx: ctx.input["due"])
          .task("after", job=_noop).build())

    async def main() -> tuple[float, float]:
        with tempfile.TemporaryDirectory(dir=HERE, prefix="tmp-") as tmp:
            async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(Path(tmp) / "t.db")) as engine:
                engine.register(wf)
                if among:
                    await _start_all(engine, among, input_of=lambda i: {"due": time.time() + 86_400})
                    while engine._live:
                        await trio.sleep(0.05)
                ahead = 2.0 + n / 2000 if lead is None else lead
                due = time.time() + ahead
                ends: list[float] = []
                all_done = trio.Event()

                def completed(event: dict[str, Any]) -> None:
                    ends.append(time.time())
                    if len(ends) == n:
                        all_done.set()

                engine.events.on("workflow.completed", completed)
                limit = trio.CapacityLimiter(1000)

                async def one() -> None:
                    async with limit:
                        await engine.start("w", {"due": due})

                async with trio.open_nursery() as nursery:
                    for _ in range(n):
                        nursery.start_soon(one)
                while engine._live:
                    await trio.sleep(0.05)
                if time.time() >= due:
                    raise RuntimeError(f"starting {n} instances took longer than the {ahead} s lead")
                await all_done.wait()  # counted from events: callers of wait() would add reads
                last = max(ends) - due
                return n / last, last

    rate, latest = trio.run(main)
    return {"timers_per_s": rate, "latest_s": latest}


def signals_delivered(n: int, senders: int = 1000, keyed: bool = False) -> dict[str, float]:
    """``n`` instances wait in a receive step (no task each); ``senders`` concurrent tasks send
    one signal to each (``keyed``: each with an idempotency key, as a webhook's are); signals
    per second until every receive step is checkpointed."""
    wf = tf.workflow("w").receive("approval", signal="approved").build()

    async def main() -> float:
        with tempfile.TemporaryDirectory(dir=HERE, prefix="tmp-") as tmp:
            async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(Path(tmp) / "s.db")) as engine:
                engine.register(wf)
                ids = await _start_all(engine, n)
                while engine._live:
                    await trio.sleep(0.05)
                done = 0
                all_done = trio.Event()

                def completed(event: dict[str, Any]) -> None:
                    nonlocal done
                    done += 1
                    if done == n:
                        all_done.set()

                engine.events.on("workflow.completed", completed)
                start = time.perf_counter()
                queue = iter(ids)

                async def sender() -> None:
                    for iid in queue:
                        await engine.signal(iid, "approved", {"by": "manager"}, idempotency_key=f"evt-{iid}" if keyed else None)

                async with trio.open_nursery() as nursery:
                    for _ in range(senders):
                        nursery.start_soon(sender)
                await all_done.wait()  # counted from events: callers of wait() would add reads
                return n / (time.perf_counter() - start)

    return {"signals_per_s": trio.run(main)}


def main() -> None:
    args = size_options(__doc__.splitlines()[0], "1,000,000 waiting instances")
    n = 2_000 if args.quick else 1_000_000 if args.large else 100_000
    print(json.dumps(memory_per_waiting_instance(n)))
    print(json.dumps(memory_per_waiting_instance(n, on="signal")))
    print(json.dumps(timers_firing(2_000 if args.quick else 10_000)))
    print(json.dumps(timers_firing(1_000 if args.quick else 10_000, among=5_000 if args.quick else 100_000)))
    print(json.dumps(signals_delivered(2_000 if args.quick else 20_000)))


if __name__ == "__main__":
    main()
