"""bench/run.py --quick still runs and writes well-formed records (it asserts nothing about speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def test_the_benchmark_suite_runs_quick(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--repeats", "1", "--no-peer", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("machine: cpus ")
    report = json.loads(out.read_text())
    names = [f["name"] for f in report["figures"]]
    assert "execute_workflow / bare trio" in names and "recovery: open_engine to all completed" in names
    for record in report["figures"]:
        assert set(record) == {"name", "value", "unit", "target", "met"}
        assert (record["target"] is None) == (record["met"] is None)


def test_a_case_runs_with_the_collector_thresholds_asked_for() -> None:
    """``--gc-threshold`` reaches the process that runs the case; a malformed one is refused."""
    cases = BENCH.parent / "cases.py"
    probe = ("import gc, runpy, sys; sys.argv = [sys.argv[1], 'recovery', '--quick', '--gc-threshold', '2000,10,10'];"
             " runpy.run_path(sys.argv[0], run_name='__main__'); print(gc.get_threshold())")
    done = subprocess.run([sys.executable, "-c", probe, str(cases)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    figures, thresholds = done.stdout.strip().splitlines()[-2:]
    assert json.loads(figures)["seconds"] > 0 and thresholds == "(2000, 10, 10)"
    refused = subprocess.run([sys.executable, str(BENCH), "--gc-threshold", "many"], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode != 0 and "--gc-threshold takes" in refused.stderr


def test_a_run_of_some_cases_prints_only_their_figures(tmp_path: Path) -> None:
    """``--cases`` runs the cases named and reports the figures those make, ratios between
    them included; a name it does not know is refused with the list of those it does."""
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--repeats", "1", "--cases", "floor_memory,bare_trio",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    names = [f["name"] for f in json.loads(out.read_text())["figures"]]
    assert names == ["bare trio: 3-step sagas", "  the model alone / bare trio"]
    refused = subprocess.run([sys.executable, str(BENCH), "--cases", "bare_trio,engine"], capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode != 0 and "--cases takes case names" in refused.stderr and "engine_memory" in refused.stderr
