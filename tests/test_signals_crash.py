"""SIGKILL tests of durable waiting with real processes (SPEC §13, issue 14): a child engine on
SQLite is killed while signals are being sent to instances that wait for them, and while
instances wait on timers (some firing at that moment); a new process resumes from the file.

What must hold: every signal whose ``engine.signal()`` returned is delivered exactly once (to
one receive step, in the order sent to that instance), none twice, and an instance that has
all it needs finishes without further help; every timer fires once, never early, and a resumed
one waits only what is left (a timer that fell due while no process ran fires at once).
The child is tests/signals_child.py; it logs with single O_APPEND writes, which survive SIGKILL.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from processes import kill_when

CHILD = str(Path(__file__).with_name("signals_child.py"))
N_SIGNALS = 500
N_TIMERS = 500


def log_lines(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def resume(db: Path, log: Path, mode: str, count: int, *extra: str, shape: str = "line") -> dict[str, Any]:
    done = subprocess.run([sys.executable, CHILD, str(db), str(log), mode, str(count), *extra],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "SHAPE": shape})
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


# -- signals --------------------------------------------------------------------------------------


def _kill_while_signals_are_sent(tmp_path: Path, shape: str, keyed: bool = False) -> dict[str, list[str]]:
    """Start the signals child on ``tmp_path``/flows.db, send every instance its two signals,
    SIGKILL it mid-way; the payloads acknowledged to each instance."""
    db, log = tmp_path / "flows.db", tmp_path / "signals.log"
    ids = [f"i{i}" for i in range(N_SIGNALS)]
    child = subprocess.Popen([sys.executable, CHILD, str(db), str(log), "signals-run", str(N_SIGNALS)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env={**os.environ, "SHAPE": shape, "KEYED": "1" if keyed else ""})
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == b"started"
        # Every instance's first signal, then every second one, all at once: the child works
        # through them while the kill lands (some stored and acknowledged, some stored and not
        # acknowledged yet, some not stored; some consumed, some not yet).
        lines = [f"{iid} {iid}:{k}\n" for k in range(2) for iid in ids]
        child.stdin.write("".join(lines).encode())
        child.stdin.flush()
        target = int(len(lines) * 0.45)
        deadline = time.monotonic() + 60
        while sum(1 for line in log_lines(log) if line[0] == "ack") < target:
            assert child.poll() is None, "the child died before it was killed"
            assert time.monotonic() < deadline, "the child acknowledged too few signals"
            time.sleep(0.002)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdin.close()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    acked: dict[str, list[str]] = collections.defaultdict(list)
    for line in log_lines(log):
        if line[0] == "ack" and len(line) == 3:  # (a line cut by the kill is not an acknowledgement)
            acked[line[1]].append(line[2])
    total_acked = sum(len(v) for v in acked.values())
    assert 0 < total_acked < 2 * N_SIGNALS, "the kill must land mid-way"
    with sqlite3.connect(db) as conn:
        running = conn.execute("SELECT count(*) FROM trioflow_instances WHERE status = 'running'").fetchone()[0]
    assert running > 0, "some instances must still wait when the process dies"
    return acked


@pytest.mark.parametrize("shape", ["line", "branches"])
def test_sigkill_while_signals_are_sent_then_every_acknowledged_signal_is_delivered_once(
    tmp_path: Path, shape: str,
) -> None:
    """``line``: two receive steps one after the other; ``branches``: one in each of two
    parallel branches, the instance out of memory (both branches at rest) when signals come, so
    each signal wakes it, one branch takes it, and it leaves again once the other has rested."""
    db, log = tmp_path / "flows.db", tmp_path / "signals.log"
    ids = [f"i{i}" for i in range(N_SIGNALS)]
    receives = ("rx", "ry") if shape == "branches" else ("r1", "r2")
    acked = _kill_while_signals_are_sent(tmp_path, shape)

    acked_path = tmp_path / "acked.json"
    acked_path.write_text(json.dumps(acked))
    summary = resume(db, log, "signals-resume", N_SIGNALS, str(acked_path), shape=shape)

    delivered: collections.Counter[str] = collections.Counter()
    for iid in ids:
        final = summary["final"][iid]
        assert final["status"] == "completed", (iid, final)
        steps = final["receives"]
        assert sorted((step, status) for step, status, _ in steps) == [(r, "completed") for r in receives], \
            f"{iid}: each receive step ran to completion once: {steps}"
        # In the order they took them (by seq): two branches take them in either order.
        outputs = [out for _, _, out in steps]
        delivered.update(outputs)
        assert all(out.startswith(f"{iid}:") for out in outputs), f"{iid} got another instance's signal: {outputs}"
        # First in, first out: what was acknowledged came first, in the order sent.
        mine = acked.get(iid, [])
        assert outputs[:len(mine)] == mine, f"{iid}: acknowledged {mine}, delivered {outputs}"
        # Nothing sent in the first process but its own two signals; a top-up only after them.
        if len(mine) < 2:
            assert all(out in (f"{iid}:0", f"{iid}:1", f"{iid}:top0", f"{iid}:top1") for out in outputs)
    twice = [p for p, n in delivered.items() if n > 1]
    assert not twice, f"signals delivered twice: {twice[:10]}"
    missing = [p for ps in acked.values() for p in ps if delivered[p] != 1]
    assert not missing, f"acknowledged signals not delivered exactly once: {missing[:10]}"
    assert not summary["unwoken"], (
        f"{len(summary['unwoken'])} instances did not take the signals acknowledged to them until more"
        f" signals came: {[(i, acked[i]) for i in summary['unwoken'][:10]]}")
    with sqlite3.connect(db) as conn:
        stored = {row[0] for row in conn.execute("SELECT DISTINCT instance_id FROM trioflow_signals")}
    # Left over: only top-ups (or unacknowledged second signals) an instance did not need.
    assert stored <= set(ids)


def test_sigkill_while_keyed_signals_are_sent_then_sending_them_all_again_delivers_each_once(
    tmp_path: Path,
) -> None:
    """A webhook's sender that had no answer from the killed process (stored and acknowledged,
    stored and not acknowledged, not stored) sends every signal again, with its key, to the
    next process: each instance takes its two signals once each, in the order sent, and nothing
    is left pending (README, docs/waiting.md: idempotency keys)."""
    db, log = tmp_path / "flows.db", tmp_path / "signals.log"
    acked = _kill_while_signals_are_sent(tmp_path, "line", keyed=True)
    acked_path = tmp_path / "acked.json"
    acked_path.write_text(json.dumps(acked))
    env_keyed = {**os.environ, "KEYED": "1"}
    done = subprocess.run([sys.executable, CHILD, str(db), str(log), "signals-resume", str(N_SIGNALS),
                           str(acked_path)], capture_output=True, text=True, timeout=120, env=env_keyed)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    wrong = {iid: final for iid, final in summary["final"].items()
             if final != {"status": "completed",
                          "receives": [["r1", "completed", f"{iid}:0"], ["r2", "completed", f"{iid}:1"]]}}
    assert not wrong, f"{len(wrong)} instances did not take their two signals once each: {list(wrong.items())[:5]}"
    assert not summary["unwoken"]
    assert not any(summary["pending"].values()), "a copy of a keyed signal was kept"


# -- timers ---------------------------------------------------------------------------------------


def _timers_run(tmp_path: Path, first_delay: float, fired_before_kill: int) -> tuple[Path, Path, float]:
    """Start the timer child, wait until every instance's wait is stored and ``fired_before_kill``
    of the step after the wait have run, and SIGKILL it; returns the db, the log and the time."""
    db, log = tmp_path / "flows.db", tmp_path / "timers.log"
    child = subprocess.Popen([sys.executable, CHILD, str(db), str(log), "timers-run", str(N_TIMERS), str(first_delay)],
                             stdout=subprocess.DEVNULL)

    def ready() -> bool:
        lines = log_lines(log)
        waiting = {line[1] for line in lines if line[0] == "waiting" and len(line) == 3}
        fired = sum(1 for line in lines if line[0] == "b")
        return len(waiting) == N_TIMERS and fired >= fired_before_kill

    kill_when(child, ready, lambda: f"never ready: {collections.Counter(line[0] for line in log_lines(log))}",
              timeout=60)
    return db, log, time.time()


def _check_timers(log: Path, summary: dict[str, Any], killed_at: float, *, all_overdue: bool) -> None:
    lines = log_lines(log)
    due = {line[1]: float(line[2]) for line in lines if line[0] == "waiting" and len(line) == 3}
    fired: dict[str, list[float]] = collections.defaultdict(list)
    for line in lines:
        if line[0] == "b" and len(line) == 3:
            fired[line[1]].append(float(line[2]))
    ran_a = collections.Counter(line[1] for line in lines if line[0] == "a")
    opened = summary["opened"]
    assert opened > killed_at
    for i in range(N_TIMERS):
        iid = f"i{i}"
        final = summary["final"][iid]
        assert final["status"] == "completed", (iid, final)
        steps = [step for step, _ in final["history"]]
        waited = "r" if i % 3 == 2 else "w"
        assert steps == ["a", "which", waited, "b"], (iid, final["history"])
        assert ran_a[iid] == 1, f"{iid}: a step completed before the wait never runs again"
        times = fired[iid]
        assert 1 <= len(times) <= 2, f"{iid}: the step after the timer ran {len(times)} times"
        assert all(t >= due[iid] - 0.05 for t in times), f"{iid}: fired before its due time"
        before = [t for t in times if t < killed_at]
        after = [t for t in times if t >= killed_at]
        if len(times) == 2:
            assert len(before) == 1, f"{iid}: ran twice, but not because the first run was cut by the kill"
        stored = summary["stored_waiting"][iid]
        if not before:
            # The wait was stored with its due time, and the resume kept it; or the wait had
            # ended and that was stored, just before the kill cut the step after it.
            if stored is None:
                assert waited in summary["stored_steps"][iid], (
                    f"{iid} had not fired, yet storage says it waits for nothing and its wait never ended")
            else:
                kept = stored.get("timer") if waited == "w" else stored.get("timeout")
                assert abs(kept - due[iid]) < 1e-3, f"{iid}: stored due {kept}, announced {due[iid]}"
            (t,) = after
            # Waits only what is left: a timer started over would fire a full delay after the open.
            assert t <= max(due[iid], opened) + 0.75, (
                f"{iid}: fired {t - due[iid]:.2f} s after due, {t - opened:.2f} s after the open")
            if all_overdue:
                assert t <= opened + 1.0, f"{iid}: overdue at the open, fired {t - opened:.2f} s after it"


def test_sigkill_while_timers_wait_and_fire_then_each_fires_once_waiting_only_what_is_left(tmp_path: Path) -> None:
    first_delay = 0.5
    db, log, killed_at = _timers_run(tmp_path, first_delay, fired_before_kill=N_TIMERS // 3 // 2)
    fired_at_kill = {line[1] for line in log_lines(log) if line[0] == "b"}
    assert 0 < len(fired_at_kill) < N_TIMERS, "the kill must land while timers fire"
    summary = resume(db, log, "timers-resume", N_TIMERS, str(first_delay))
    _check_timers(log, summary, killed_at, all_overdue=False)


def test_sigkill_while_timers_wait_then_timers_that_fell_due_meanwhile_fire_at_once(tmp_path: Path) -> None:
    first_delay = 1.2
    db, log, killed_at = _timers_run(tmp_path, first_delay, fired_before_kill=0)
    due = [float(line[2]) for line in log_lines(log) if line[0] == "waiting" and len(line) == 3]
    time.sleep(max(0.0, max(due) + 0.2 - time.time()))  # every timer falls due while no process runs
    summary = resume(db, log, "timers-resume", N_TIMERS, str(first_delay))
    _check_timers(log, summary, killed_at, all_overdue=True)
