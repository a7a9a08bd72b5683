"""Crash tests with real processes: SIGKILL mid-step, mid-compensation and inside parallel
branches, then a new process resumes from the SQLite file (SPEC §6, issue 4)."""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from processes import kill_when

CHILD = str(Path(__file__).with_name("crash_child.py"))
N = 300


def calls(log: Path) -> collections.Counter[tuple[str, str]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return collections.Counter(tuple(line.split()) for line in lines)  # type: ignore[misc]


def run_and_kill(tmp_path: Path, scenario: str, ready: set[str], stored: int = 0) -> tuple[Path, Path]:
    """Start the child, wait until every instance has logged every step in ``ready`` and has
    ``stored`` step records in the file, SIGKILL it."""
    db, log = tmp_path / "flows.db", tmp_path / "jobs.log"
    child = subprocess.Popen([sys.executable, CHILD, str(db), str(log), scenario, "run", str(N)],
                             stdout=subprocess.DEVNULL)

    def has_stored() -> bool:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT count(*) FROM trioflow_instances WHERE next_seq >= ?", (stored,)).fetchone()[0] == N

    kill_when(child, lambda: all(sum(1 for (_, s) in calls(log) if s == step) >= N for step in ready) and (
              not stored or has_stored()),
              lambda: f"instances never reached {ready}: {calls(log).most_common(3)}")
    with sqlite3.connect(db) as conn:
        running = conn.execute("SELECT count(*) FROM trioflow_instances WHERE status = 'running'").fetchone()[0]
    assert running == N, "every instance must be left running by the crash"
    return db, log


def resume(db: Path, log: Path, scenario: str, mode: str = "resume") -> dict[str, dict[str, object]]:
    done = subprocess.run([sys.executable, CHILD, str(db), str(log), scenario, mode, str(N)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary: dict[str, dict[str, object]] = json.loads(done.stdout)
    assert len(summary) == N, "no instance may be lost"
    return summary


def test_sigkill_inside_step_two_then_resume(tmp_path: Path) -> None:
    db, log = run_and_kill(tmp_path, "linear", {"b"})
    summary = resume(db, log, "linear")
    counts = calls(log)
    for i in range(N):
        iid = f"i{i}"
        assert summary[iid]["status"] == "completed"
        assert counts[(iid, "a")] == 1, "a completed step never runs again"
        assert counts[(iid, "b")] == 2, "the step in flight at the crash runs again"
        assert counts[(iid, "c")] == 1


def test_sigkill_then_clients_resubmit_every_id_while_the_resume_runs(tmp_path: Path) -> None:
    """Issue 11, item 5: idempotent re-submission right after a restart must not orphan the
    instance; each runs once more from where it stood."""
    db, log = run_and_kill(tmp_path, "linear", {"b"})
    summary = resume(db, log, "linear", mode="resubmit")
    counts = calls(log)
    for i in range(N):
        iid = f"i{i}"
        assert summary[iid]["status"] == "completed", summary[iid]
        assert (counts[(iid, "a")], counts[(iid, "b")], counts[(iid, "c")]) == (1, 2, 1)


def test_sigkill_after_a_branch_failed_for_good_then_resume(tmp_path: Path) -> None:
    """A step that failed for good, its failure stored by a sibling branch's checkpoint, is not
    run again by the resume: the instance fails as it would have, compensating once."""
    db, log = run_and_kill(tmp_path, "failed-branch", {"y1"})
    summary = resume(db, log, "failed-branch")
    counts = calls(log)
    for i in range(N):
        iid = f"i{i}"
        assert summary[iid] == {"status": "failed", "compensated": ["y0"], "output": None}, summary[iid]
        assert counts[(iid, "x1")] == 1, "the step that failed for good runs no more"
        assert (counts[(iid, "y0")], counts[(iid, "y1")], counts[(iid, "after")]) == (1, 2, 0)
        assert counts[(iid, "undo-y0")] == 1


def test_sigkill_during_compensation_then_resume(tmp_path: Path) -> None:
    db, log = run_and_kill(tmp_path, "compensation", {"undo-b"})
    summary = resume(db, log, "compensation")
    counts = calls(log)
    for i in range(N):
        iid = f"i{i}"
        assert summary[iid] == {"status": "failed", "compensated": ["b", "a"], "output": None}
        assert counts[(iid, "c")] == 1, "the failed step is not retried by the resume"
        assert counts[(iid, "undo-b")] == 2, "the compensation in flight runs again"
        assert counts[(iid, "undo-a")] == 1, "every other compensation runs exactly once"


def test_sigkill_inside_parallel_branches_then_resume(tmp_path: Path) -> None:
    # x2 logs before its checkpoint is written: the kill waits for both of x's records (x1,
    # x2) to be stored, or a last x2 could still be in flight, and rightly run again.
    db, log = run_and_kill(tmp_path, "parallel", {"x2", "y1"}, stored=2)
    summary = resume(db, log, "parallel")
    counts = calls(log)
    for i in range(N):
        iid = f"i{i}"
        assert summary[iid]["status"] == "completed" and summary[iid]["output"] == "after-done"
        assert counts[(iid, "x1")] == counts[(iid, "x2")] == 1, "a finished branch is not run again"
        assert counts[(iid, "y1")] == 2 and counts[(iid, "after")] == 1


def test_a_second_engine_on_a_live_database_is_refused(tmp_path: Path) -> None:
    scenario = "linear"
    db, log = tmp_path / "flows.db", tmp_path / "jobs.log"
    child = subprocess.Popen([sys.executable, CHILD, str(db), str(log), scenario, "run", "1"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "started"
        second = subprocess.run([sys.executable, CHILD, str(db), str(log), scenario, "resume"],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode != 0 and "DatabaseLockedError" in second.stderr
        assert "in use by another trioflow engine" in second.stderr
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
