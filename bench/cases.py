"""One benchmark case per process: ``python bench/cases.py CASE [--quick]`` prints one JSON object
of figures. ``bench/run.py`` runs these in fresh processes, interleaved, and aggregates."""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

SAGAS = 20_000
STEPS = 3
LIMIT = 1_000


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def settled_memory() -> tuple[int, int]:
    """Resident bytes and Python's allocated blocks, after a collection and after glibc gave
    back the memory it holds free (so that RSS counts what is in use, not a high-water mark)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS then includes freed memory
        pass
    return rss_bytes(), sys.getallocatedblocks()


async def noop(_: Any) -> None:
    return None


# -- throughput of short sagas ----------------------------------------------------------------


def sagas_per_second(n: int, saga: Callable[[], Awaitable[None]]) -> dict[str, float]:
    """Run ``n`` sagas, one task each in one nursery behind a CapacityLimiter(1000), and time
    the whole run."""
    async def main() -> None:
        limiter = trio.CapacityLimiter(LIMIT)

        async def one() -> None:
            async with limiter:
                await saga()

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)

    start = time.perf_counter()
    trio.run(main)
    return {"sagas_per_s": n / (time.perf_counter() - start)}


def bare_trio(n: int) -> dict[str, float]:
    """The baseline: 3 awaited no-op steps per saga."""
    async def saga() -> None:
        for _ in range(STEPS):
            await noop(None)

    return sagas_per_second(n, saga)


def three_noop_steps() -> Any:
    import trioflow as tf
    return tf.workflow("bench").step("a", noop).step("b", noop).step("c", noop).build()


def execute_workflow(n: int) -> dict[str, float]:
    """The same load through tf.execute_workflow (no storage)."""
    import trioflow as tf
    wf = three_noop_steps()
    run = tf.execute_workflow  # loaded on first use: import it before the clock starts, as trio is

    async def saga() -> None:
        await run(None, wf)

    return sagas_per_second(n, saga)


def engine_memory(n: int) -> dict[str, float]:
    """The same load through an engine on a MemoryAdapter; its max_running=1000 is the limit.
    Timed like the others: the whole trio.run, engine start and stop included."""
    import trioflow as tf
    wf = three_noop_steps()
    open_engine = tf.open_engine  # loaded on first use: import it before the clock starts, as trio is

    async def main() -> None:
        async with open_engine(max_running=LIMIT) as engine:
            engine.register(wf)

            async def saga() -> None:
                await engine.wait(await engine.start("bench"))

            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(saga)

    start = time.perf_counter()
    trio.run(main)
    return {"sagas_per_s": n / (time.perf_counter() - start)}


# -- durable steps on SQLite ---------------------------------------------------------------------


def durable(quick: bool) -> dict[str, float]:
    sys.path.insert(0, str(Path(__file__).parent))
    from durable_steps import measure  # the same code as bench/durable_steps.py

    out = {}
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent, prefix="tmp-") as tmp:
        for synchronous in ("FULL", "NORMAL"):
            for concurrency in (1, 100, 1000):
                instances = 20 if quick else max(200, 3 * concurrency)
                path = Path(tmp) / f"{synchronous}-{concurrency}.db"
                out[f"{synchronous}_{concurrency}"] = trio.run(measure, path, concurrency, instances, synchronous)
    return out


# -- memory per parked instance ----------------------------------------------------------------


def parked_bare(n: int) -> dict[str, float]:
    async def main() -> float:
        release = trio.Event()
        gc.collect()
        before = rss_bytes()

        async def parked() -> None:
            await release.wait()

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(parked)
            await trio.testing.wait_all_tasks_blocked()
            gc.collect()
            used = rss_bytes() - before
            release.set()
        return used / n

    import trio.testing
    return {"bytes_per_task": trio.run(main)}


def parked_engine(n: int) -> dict[str, float]:
    import trioflow as tf

    async def main() -> float:
        release = trio.Event()

        async def park(_: Any) -> None:
            await release.wait()

        wf = tf.workflow("park").task("wait", job=park).build()
        async with tf.open_engine(max_running=n) as engine:
            engine.register(wf)
            gc.collect()
            before = rss_bytes()
            for _ in range(n):
                await engine.start("park")
            await trio.testing.wait_all_tasks_blocked()
            gc.collect()
            used = rss_bytes() - before
            release.set()
        return used / n

    import trio.testing
    return {"bytes_per_instance": trio.run(main)}


# -- recovery after SIGKILL -----------------------------------------------------------------------

RECOVERY_CHILD = r'''
import gc, sys, trio, trioflow as tf
db, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
gc.set_threshold(*map(int, sys.argv[4].split(",")))  # the collector's, as in the case's process
async def step(data):
    return None
async def hang(data):
    if mode == "crash":
        await trio.sleep_forever()
wf = tf.workflow("recover").task("a", job=step).task("b", job=hang).task("c", job=step).build()
async def main():
    import time
    t0 = time.perf_counter()
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), resume=(mode == "crash")) as engine:
        engine.register(wf)
        if mode == "crash":
            ids = []
            async with trio.open_nursery() as nursery:
                async def start():
                    ids.append(await engine.start("recover"))
                for _ in range(n):
                    nursery.start_soon(start)
            while True:  # until every instance is inside step b
                running = await engine.get_instances("recover", status="running")
                if sum(1 for i in running if i.current_step == "b") == n:
                    break
                await trio.sleep(0.1)
            print("ready", flush=True)
            await trio.sleep_forever()
        resumed = await engine.resume()
        async with trio.open_nursery() as nursery:  # every resumed instance, waited on at once
            for iid in resumed:
                nursery.start_soon(engine.wait, iid)
        print(time.perf_counter() - t0, len(resumed), flush=True)
trio.run(main)
'''


def recovery(n: int) -> dict[str, float]:
    thresholds = ",".join(map(str, gc.get_threshold()))
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent, prefix="tmp-") as tmp:
        db = str(Path(tmp) / "recover.db")
        child = subprocess.Popen([sys.executable, "-c", RECOVERY_CHILD, db, "crash", str(n), thresholds],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        line = child.stdout.readline()
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        if line.strip() != "ready":
            raise RuntimeError("the crashing child never got every instance into step b")
        done = subprocess.run([sys.executable, "-c", RECOVERY_CHILD, db, "resume", str(n), thresholds],
                              capture_output=True, text=True, check=True)
        seconds, resumed = done.stdout.split()
        if int(resumed) != n:
            raise RuntimeError(f"resumed {resumed} of {n} instances")
        return {"seconds": float(seconds)}


# -- reads of instances not in memory -----------------------------------------------------------


def finished_reads(n: int) -> dict[str, float]:
    """``n`` 3-step sagas run to their end on SQLite; in a new engine on the file (nothing of
    them in memory), ``wait()`` on each, one after another, as a caller collecting outcomes
    would: microseconds per call (each a read of the row and its records, decoded)."""
    import trioflow as tf
    wf = three_noop_steps()

    async def main(path: Path) -> float:
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
            engine.register(wf)
            ids = [await engine.start("bench") for _ in range(n)]
            for iid in ids:
                await engine.wait(iid)
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
            engine.register(wf)
            start = time.perf_counter()
            for iid in ids:
                await engine.wait(iid)
            return (time.perf_counter() - start) / n * 1e6

    with tempfile.TemporaryDirectory(dir=Path(__file__).parent, prefix="tmp-") as tmp:
        return {"us_per_wait": trio.run(main, Path(tmp) / "reads.db")}


# -- import time --------------------------------------------------------------------------------


def import_time(repeats: int) -> dict[str, float]:
    """Seconds ``import trio`` and ``import trioflow`` add to an empty interpreter start.

    trioflow is imported from a copy laid out as its wheel installs it (runtime/ as trioflow/,
    actors/ and adapters/ inside it), not through the development venv's editable-install
    finder; the imports alternate, so each round sees the same machine load, and the medians
    are taken over the rounds.
    """
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent, prefix="tmp-") as tmp:
        skip = shutil.ignore_patterns("__pycache__")
        shutil.copytree(root / "runtime", Path(tmp) / "trioflow", ignore=skip)
        for sub in ("actors", "adapters"):
            shutil.copytree(root / sub, Path(tmp) / "trioflow" / sub, ignore=skip)
        # Bytecode caches on, as trio's installed copy has them (PYTHONDONTWRITEBYTECODE would
        # have trioflow compiled from source on every import).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPATH"] = tmp
        subprocess.run([sys.executable, "-c", "import trioflow"], check=True, env=env)  # writes .pyc

        def timed(code: str) -> float:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env)
            return time.perf_counter() - start

        pairs = [(timed("pass"), timed("import trio"), timed("import trioflow")) for _ in range(repeats)]
    empty = sorted(p[0] for p in pairs)[len(pairs) // 2]
    trio_s = sorted(p[1] - empty for p in pairs)[len(pairs) // 2]
    flow_s = sorted(p[2] - empty for p in pairs)[len(pairs) // 2]
    return {"trio_s": trio_s, "trioflow_s": flow_s}


def size_options(description: str, large: str) -> argparse.Namespace:
    """The command line of a case module run alone: ``--quick`` (tiny sizes, a smoke test) and
    ``--large`` (``large`` says what it runs)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--large", action="store_true", help=large)
    return parser.parse_args()


def _module(name: str) -> Any:
    """A module of cases beside this one (bench/ is a folder of scripts, not a package)."""
    sys.path.insert(0, str(Path(__file__).parent))
    return importlib.import_module(name)


CASES = {
    "bare_trio": lambda q: bare_trio(2_000 if q else SAGAS),
    "execute_workflow": lambda q: execute_workflow(2_000 if q else SAGAS),
    "engine_memory": lambda q: engine_memory(2_000 if q else SAGAS),
    "durable_sqlite": durable,
    "floor_memory": lambda q: _module("model_floor").in_memory(2_000 if q else SAGAS, LIMIT),
    "floor_sqlite": lambda q: _module("model_floor").on_sqlite(q, LIMIT),
    "parked_bare": lambda q: parked_bare(5_000 if q else 100_000),
    "parked_engine": lambda q: parked_engine(5_000 if q else 100_000),
    "recovery": lambda q: recovery(500 if q else 10_000),
    "finished_reads": lambda q: finished_reads(200 if q else 2_000),
    "import_time": lambda q: import_time(3 if q else 15),
    "long_workflows": lambda q: _module("storage_v2").long_workflows(q),
    "wide_parallel": lambda q: _module("storage_v2").wide_parallel(q),
    "wide_parallel_staggered": lambda q: _module("storage_v2").wide_parallel_staggered(q),
    "big_outputs": lambda q: _module("storage_v2").big_outputs(q),
    "waiting_memory": lambda q: _module("waiting").memory_per_waiting_instance(2_000 if q else 100_000),
    "waiting_memory_signal": lambda q: _module("waiting").memory_per_waiting_instance(
        2_000 if q else 100_000, on="signal"),
    "waiting_memory_branches": lambda q: _module("waiting").memory_per_waiting_instance(
        2_000 if q else 100_000, on="branches"),
    "timers_firing": lambda q: _module("waiting").timers_firing(2_000 if q else 10_000),
    "floor_timers": lambda q: _module("model_floor").timers_on_sqlite(2_000 if q else 10_000),
    "timers_among_waiting": lambda q: _module("waiting").timers_firing(
        2_000 if q else 10_000, among=5_000 if q else 100_000),
    "signals": lambda q: _module("waiting").signals_delivered(2_000 if q else 20_000),
    "signals_keyed": lambda q: _module("waiting").signals_delivered(2_000 if q else 20_000, keyed=True),
    "floor_signals": lambda q: _module("model_floor").signals_on_sqlite(2_000 if q else 20_000, LIMIT),
    "retention": lambda q: _module("retention").memory_with_retention(5_000 if q else 200_000),
    "retention_kept_memory": lambda q: _module("retention").beside_kept_children(
        *((2_000, 1_000) if q else (20_000, 20_000)), "memory"),
    "retention_kept_sqlite": lambda q: _module("retention").beside_kept_children(
        *((2_000, 1_000) if q else (20_000, 20_000)), "sqlite"),
    "map_items": lambda q: _module("fanout").map_items(*((1_000, 5_000) if q else (10_000, 100_000))),
    "map_staggered": lambda q: _module("fanout").map_staggered(*((100, 400) if q else (400, 4_000))),
    "children": lambda q: _module("fanout").children_completed(100 if q else 1_000),
    "floor_children": lambda q: _module("model_floor").children_on_sqlite(100 if q else 1_000),
}

if __name__ == "__main__":
    case, options = sys.argv[1], sys.argv[2:]
    if "--gc-threshold" in options:  # see bench/run.py
        gc.set_threshold(*(int(t) for t in options[options.index("--gc-threshold") + 1].split(",")))
    print(json.dumps(CASES[case]("--quick" in options)))
