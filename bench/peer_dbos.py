"""Peer comparison (issue 7, case 8): the same 3-step durable workflow on DBOS Transact with a
SQLite system database, in a virtual environment of its own (bench/.dbos-venv, created here).

DBOS workflows are synchronous, so concurrency comes from threads; the figure is durable steps
per second with CONCURRENCY threads, compared with trioflow's SQLite figure at the same
concurrency. Returns ``None`` (with a message) where DBOS cannot be installed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".dbos-venv"
CONCURRENCY = 100

SCRIPT = r'''
import sys, time
from concurrent.futures import ThreadPoolExecutor
from dbos import DBOS
n, concurrency, db = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

@DBOS.step()
def noop():
    return None

@DBOS.workflow()
def three_steps():
    noop(); noop(); noop()

DBOS(config={"name": "trioflow-bench", "system_database_url": f"sqlite:///{db}"})
DBOS.launch()
three_steps()  # warm-up: schema and connections
start = time.perf_counter()
with ThreadPoolExecutor(concurrency) as pool:
    list(pool.map(lambda _: three_steps(), range(n)))
print(n * 3 / (time.perf_counter() - start))
DBOS.destroy()
'''


def run_peer(quick: bool) -> dict[str, float] | None:
    python = VENV / "bin" / "python"
    if not python.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", "dbos"], check=True,
                           capture_output=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            print(f"peer skipped: DBOS Transact could not be installed ({exc})")
            return None
    n = 60 if quick else 600
    with tempfile.TemporaryDirectory(dir=HERE, prefix="tmp-") as tmp:
        try:
            done = subprocess.run([str(python), "-c", SCRIPT, str(n), str(CONCURRENCY), f"{tmp}/dbos.sqlite"],
                                  capture_output=True, text=True, check=True, timeout=900)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            print(f"peer skipped: the DBOS run failed ({exc}; {getattr(exc, 'stderr', '')[-500:]})")
            return None
    return {"steps_per_s": float(done.stdout.strip().splitlines()[-1]), "concurrency": CONCURRENCY}


if __name__ == "__main__":
    print(run_peer("--quick" in sys.argv))
