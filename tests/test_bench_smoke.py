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
