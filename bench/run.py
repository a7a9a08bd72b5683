"""The benchmark suite (issue 7): every case in a fresh process, repetitions interleaved.

    python bench/run.py [--repeats 5] [--quick] [--json FILE] [--no-peer] [--gc-threshold 2000,10,10]
                        [--cases bare_trio,engine_memory]

Prints machine facts, then median (min-max) of every figure, each ratio against its baseline
from the same invocation (paired per repetition, then the median), and whether each SPEC
target is met. ``--quick`` runs tiny sizes as a smoke test: it says nothing about speed.
``--json FILE`` writes records ``{"name", "value", "unit", "target", "met"}``.
``--gc-threshold`` runs every case (baselines too) with those thresholds of CPython's cyclic
collector (``gc.set_threshold``) instead of the interpreter's defaults: what a service that
tunes its collector gets (docs/performance.md). Targets are judged at the defaults.
``--cases`` runs only the cases named, interleaved as ever, and prints the figures they make:
a few cases measured with their baselines, without running the whole suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ORDER = ["bare_trio", "execute_workflow", "engine_memory", "floor_memory", "durable_sqlite", "floor_sqlite",
         "parked_bare", "parked_engine", "recovery", "finished_reads", "import_time", "long_workflows", "wide_parallel",
         "wide_parallel_staggered", "big_outputs", "waiting_memory", "waiting_memory_signal", "waiting_memory_branches", "timers_firing", "floor_timers", "timers_among_waiting", "signals", "signals_keyed", "floor_signals",
         "retention", "retention_kept_memory", "retention_kept_sqlite", "map_items", "map_staggered", "children", "floor_children"]


def run_case(case: str, quick: bool, gc_threshold: str | None = None) -> dict[str, float]:
    args = [sys.executable, str(HERE / "cases.py"), case] + (["--quick"] if quick else [])
    if gc_threshold is not None:
        args += ["--gc-threshold", gc_threshold]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def machine_facts(gc_threshold: str | None) -> dict[str, str]:
    import gc

    import trio

    return {"cpus": str(os.cpu_count()), "python": platform.python_version(), "trio": trio.__version__,
            "sqlite": sqlite3.sqlite_version, "machine": platform.machine(),
            "gc thresholds": gc_threshold or ",".join(map(str, gc.get_threshold())) + " (defaults)"}


class Figure:
    """One reported figure: its samples (one per repetition) and its target."""

    def __init__(self, name: str, unit: str, samples: list[float], target: str = "",
                 met: Callable[[float], bool] | None = None) -> None:
        self.name, self.unit, self.samples, self.target, self._met = name, unit, samples, target, met

    @property
    def value(self) -> float:
        return statistics.median(self.samples)

    @property
    def met(self) -> bool | None:
        return None if self._met is None else self._met(self.value)

    def line(self) -> str:
        lo, hi = min(self.samples), max(self.samples)
        verdict = "" if self.met is None else ("  met" if self.met else "  NOT met")
        target = f"  (target {self.target})" if self.target else ""
        return f"{self.name:<46}{self.value:>12,.3f} {self.unit:<16}[{lo:,.3f} - {hi:,.3f}]{target}{verdict}"


def figures(results: dict[str, list[dict[str, float]]], peer: dict[str, float] | None) -> list[Figure]:
    def series(case: str, key: str) -> list[float]:
        return [r[key] for r in results[case]]

    def ratio(case: str, key: str, base: str, base_key: str) -> list[float]:
        return [a / b for a, b in zip(series(case, key), series(base, base_key))]

    out = [
        Figure("bare trio: 3-step sagas", "sagas/s", series("bare_trio", "sagas_per_s")),
        Figure("execute_workflow: 3-step sagas", "sagas/s", series("execute_workflow", "sagas_per_s")),
        Figure("execute_workflow / bare trio", "ratio", ratio("execute_workflow", "sagas_per_s", "bare_trio",
               "sagas_per_s"), ">= 0.50", lambda v: v >= 0.50),
        Figure("engine + MemoryAdapter: 3-step sagas", "sagas/s", series("engine_memory", "sagas_per_s")),
        Figure("engine + MemoryAdapter / bare trio", "ratio", ratio("engine_memory", "sagas_per_s", "bare_trio",
               "sagas_per_s"), ">= 0.45", lambda v: v >= 0.45),
        # The same load doing only what the spec asks of every instance (bench/model_floor.py):
        # how much of the engine's time is its own logic.
        Figure("  the model alone / bare trio", "ratio", ratio("floor_memory", "sagas_per_s", "bare_trio",
               "sagas_per_s")),
        Figure("  engine + MemoryAdapter / the model alone", "ratio", ratio(
            "engine_memory", "sagas_per_s", "floor_memory", "sagas_per_s")),
    ]
    for key in results["durable_sqlite"][0] if results["durable_sqlite"] else ():
        synchronous, concurrency = key.split("_")
        target = (">= 25,000", lambda v: v >= 25_000) if key == "FULL_1000" else ("", None)
        out.append(Figure(f"SQLite {synchronous}, {concurrency} concurrent", "durable steps/s",
                          series("durable_sqlite", key), target[0], target[1]))
    out += [
        Figure("  the model alone, SQLite FULL, 1,000", "durable steps/s", series("floor_sqlite", "FULL_1000")),
        Figure("  SQLite FULL, 1,000: engine / the model alone", "ratio", ratio(
            "durable_sqlite", "FULL_1000", "floor_sqlite", "FULL_1000")),
    ]
    per_instance = [e - b for e, b in zip(series("parked_engine", "bytes_per_instance"),
                                           series("parked_bare", "bytes_per_task"))]
    out += [
        Figure("bare trio task parked", "bytes", series("parked_bare", "bytes_per_task")),
        Figure("instance parked in a step, above a bare task", "bytes", per_instance, "<= 5,120",
               lambda v: v <= 5 * 1024),
        Figure("recovery: open_engine to all completed", "s", series("recovery", "seconds"), "<= 2.0",
               lambda v: v <= 2.0),
        Figure("wait() of a finished instance not in memory, SQLite", "us", series("finished_reads", "us_per_wait")),
        Figure("import trioflow / import trio", "ratio", ratio("import_time", "trioflow_s", "import_time", "trio_s"),
               "<= 1.3", lambda v: v <= 1.3),
    ]
    out += [
        Figure("1,000-step / 3-step, per step, MemoryAdapter", "ratio",
               ratio("long_workflows", "memory_long_us_per_step", "long_workflows", "memory_3_us_per_step"),
               "<= 1.5", lambda v: v <= 1.5),
        Figure("1,000-step / 3-step, per step, SQLite", "ratio",
               ratio("long_workflows", "sqlite_long_us_per_step", "long_workflows", "sqlite_3_us_per_step"),
               "<= 1.5", lambda v: v <= 1.5),
        Figure("SQLite bytes per checkpoint, late / early", "ratio",
               series("long_workflows", "sqlite_long_bytes_late_over_early"), "<= 1.1", lambda v: v <= 1.1),
        Figure("1,000 / 10 branches, per branch", "ratio",
               ratio("wide_parallel", "us_per_branch_wide", "wide_parallel", "us_per_branch_10"),
               "<= 2", lambda v: v <= 2.0),
        Figure("  the same, branches ending one after another", "ratio",
               ratio("wide_parallel_staggered", "us_per_branch_wide", "wide_parallel_staggered", "us_per_branch_10"),
               "<= 2", lambda v: v <= 2.0),
        # (Ours, no target: every header names a parallel step's branches in flight.)
        Figure("  the same, bytes handed to storage per branch", "ratio",
               ratio("wide_parallel_staggered", "bytes_per_branch_wide", "wide_parallel_staggered", "bytes_per_branch_10")),
        Figure("3 x 1 MB outputs: bytes written / outputs", "ratio", series("big_outputs", "bytes_over_outputs"),
               "<= 1.2", lambda v: v <= 1.2),
        Figure("instance waiting on a timer (100k, SQLite), RSS", "bytes", series("waiting_memory",
               "bytes_per_waiting_instance"), "<= 200", lambda v: v <= 200),
        Figure("  Python blocks the engine keeps per one", "blocks", series("waiting_memory",
               "python_blocks_per_waiting_instance")),
        Figure("instance waiting for a signal (100k, SQLite), RSS", "bytes", series("waiting_memory_signal",
               "bytes_per_waiting_instance"), "<= 200", lambda v: v <= 200),
        Figure("  Python blocks the engine keeps per one", "blocks", series("waiting_memory_signal",
               "python_blocks_per_waiting_instance")),
        Figure("instance whose 2 branches wait (100k, SQLite), RSS", "bytes", series("waiting_memory_branches",
               "bytes_per_waiting_instance"), "<= 200", lambda v: v <= 200),
        Figure("  Python blocks the engine keeps per one", "blocks", series("waiting_memory_branches",
               "python_blocks_per_waiting_instance")),
        Figure("timers due together, resumed + checkpointed", "timers/s", series("timers_firing", "timers_per_s"),
               ">= 10,000", lambda v: v >= 10_000),
        Figure("timers due together: last one late by", "s", series("timers_firing", "latest_s"), "<= 1",
               lambda v: v <= 1.0),
        Figure("  the model alone, timers", "timers/s", series("floor_timers", "timers_per_s")),
        Figure("  timers: engine / the model alone", "ratio",
               ratio("timers_firing", "timers_per_s", "floor_timers", "timers_per_s")),
        Figure("the same, among 100,000 waiting for a day", "timers/s",
               series("timers_among_waiting", "timers_per_s")),
        Figure("  timers/s among 100,000 waiting / alone", "ratio",
               ratio("timers_among_waiting", "timers_per_s", "timers_firing", "timers_per_s")),
        Figure("signals to waiting instances, 1,000 senders", "signals/s", series("signals", "signals_per_s"),
               ">= 10,000", lambda v: v >= 10_000),
        Figure("  the same, each with an idempotency key", "signals/s", series("signals_keyed", "signals_per_s")),
        Figure("  signals with a key / without", "ratio", ratio("signals_keyed", "signals_per_s", "signals",
                                                            "signals_per_s")),
        Figure("  the model alone, signals", "signals/s", series("floor_signals", "signals_per_s")),
        Figure("  signals: engine / the model alone", "ratio",
               ratio("signals", "signals_per_s", "floor_signals", "signals_per_s")),
        Figure("retain_finished=0: RSS after 200k sagas / after 20k", "ratio",
               series("retention", "rss_late_over_early"), "<= 1.10", lambda v: v <= 1.10),
        Figure("retain_finished=0 beside 20,000 children kept, time per saga / alone (memory)", "ratio",
               series("retention_kept_memory", "time_beside_over_alone"), "<= 1.10", lambda v: v <= 1.10),
        Figure("  the same on SQLite", "ratio", series("retention_kept_sqlite", "time_beside_over_alone"),
               "<= 1.10", lambda v: v <= 1.10),
        Figure("map, 10,000 items, max_concurrency 1,000", "items/s", series("map_items", "items_per_s"),
               ">= 15,000", lambda v: v >= 15_000),
        Figure("map, per item: 100,000 / 10,000 items", "ratio", series("map_items", "large_over_small_per_item"),
               "<= 1.3", lambda v: v <= 1.3),
        Figure("map of 4,000 staggered items: header bytes a checkpoint", "bytes",
               series("map_staggered", "header_bytes_large")),
        Figure("  the same, 4,000 / 400 items", "ratio", series("map_staggered", "header_bytes_large_over_small")),
        Figure("  items past their first step: header bytes a checkpoint", "bytes",
               series("map_staggered", "moved_on_header_bytes_large")),
        Figure("  the same, CPU per item, 4,000 / 400 items", "ratio",
               series("map_staggered", "moved_on_us_per_item_large_over_small")),
        Figure("1,000 parents x 10 children, completed", "children/s", series("children", "children_per_s"),
               ">= 5,000", lambda v: v >= 5_000),
        Figure("  the model alone, children", "children/s", series("floor_children", "children_per_s")),
        Figure("  children: engine / the model alone", "ratio",
               ratio("children", "children_per_s", "floor_children", "children_per_s")),
    ]
    if peer is not None:
        ours = statistics.median(series("durable_sqlite", f"FULL_{int(peer['concurrency'])}"))
        out += [
            Figure(f"DBOS Transact on SQLite, {int(peer['concurrency'])} threads", "durable steps/s",
                   [peer["steps_per_s"]]),
            Figure("trioflow / DBOS (durable steps/s, same concurrency)", "ratio", [ours / peer["steps_per_s"]],
                   ">= 50", lambda v: v >= 50),
        ]
    return out


def _cases(text: str | None) -> list[str]:
    """The cases ``--cases`` names, in the suite's order (all of them without it)."""
    if text is None:
        return ORDER
    named = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in named if name not in ORDER]
    if unknown or not named:
        raise SystemExit(f"--cases takes case names separated by commas, from: {', '.join(ORDER)};"
                         f" got {text!r}")
    return [case for case in ORDER if case in named]


def _thresholds(text: str) -> tuple[int, ...]:
    """``"2000,10,10"`` as the arguments of ``gc.set_threshold``."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not 1 <= len(values) <= 3 or any(v < 0 for v in values):
        raise SystemExit(f"--gc-threshold takes one to three integers >= 0 separated by commas, got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description="trioflow benchmark suite")
    parser.add_argument("--repeats", type=int, default=5,
                        help="repetitions of every case (medians of 5 hold still on a noisy machine)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--no-peer", action="store_true", help="skip the DBOS Transact comparison")
    parser.add_argument("--gc-threshold", metavar="T0,T1,T2",
                        help="run the cases with these cyclic collector thresholds (gc.set_threshold)")
    parser.add_argument("--cases", metavar="CASE,CASE",
                        help="run only these cases (and print only the figures they make), e.g."
                             " --cases bare_trio,engine_memory,floor_memory")
    args = parser.parse_args()
    if args.gc_threshold is not None:
        _thresholds(args.gc_threshold)  # refused here, not in the first case's process
    cases = _cases(args.cases)
    facts = machine_facts(args.gc_threshold)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    results: dict[str, list[dict[str, float]]] = {case: [] for case in ORDER}
    for repeat in range(args.repeats):
        for case in cases:
            results[case].append(run_case(case, args.quick, args.gc_threshold))
        print(f"repetition {repeat + 1}/{args.repeats} done", flush=True)
    peer = None
    if not args.no_peer and "durable_sqlite" in cases:
        sys.path.insert(0, str(HERE))
        from peer_dbos import run_peer

        peer = run_peer(args.quick)
    # (A figure whose cases did not run has no samples: left out.)
    rows = [figure for figure in figures(results, peer) if figure.samples]
    print()
    for figure in rows:
        print(figure.line())
    if args.json:
        records: list[dict[str, Any]] = [
            {"name": f.name, "value": f.value, "unit": f.unit, "target": f.target or None, "met": f.met}
            for f in rows
        ]
        Path(args.json).write_text(json.dumps({"machine": facts, "figures": records}, indent=2))


if __name__ == "__main__":
    main()
