"""SIGKILL crash-safety of durable waiting and child cancellation, real processes on SQLite files
(a review of this session's waiting fixes, which found them holding): retried attempts killed
twice, a cancel stored in a child whose workflow is not registered, a parent timing out while
its child is parked. Child script: waiting_kill_child.py; every job call is logged with one
fsynced O_APPEND line, so the log survives the kill."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

CHILD = str(Path(__file__).with_name("waiting_kill_child.py"))


# -- helpers ---------------------------------------------------------------------------------------

def lines(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def spawn(db: Path, log: Path, scenario: str, mode: str, n: int, extra: str = "") -> subprocess.Popen[str]:
    args = [sys.executable, CHILD, str(db), str(log), scenario, mode, str(n)] + ([extra] if extra else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_started(child: subprocess.Popen[str], timeout: float = 30) -> None:
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.strip() == "started", f"child said {line!r}: {child.stderr.read() if child.poll() is not None else ''}"


def kill(child: subprocess.Popen[str]) -> None:
    assert child.poll() is None, f"the child died before it was killed: {child.stderr.read()}"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    child.stdout.close()  # type: ignore[union-attr]
    child.stderr.close()  # type: ignore[union-attr]


def wait_for(ready: Any, child: subprocess.Popen[str], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert child.poll() is None, f"the child died waiting for {what}: {child.stderr.read()}"  # type: ignore
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.02)


def final(db: Path, log: Path, scenario: str, n: int, extra: str = "") -> dict[str, Any]:
    args = [sys.executable, CHILD, str(db), str(log), scenario, "final", str(n)] + ([extra] if extra else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0] == "started", done.stdout
    result: dict[str, Any] = json.loads(out[1])
    return result


def peek(db: Path, log: Path, scenario: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, CHILD, str(db), str(log), scenario, "peek", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# -- retries: delays that leave memory (1.5 s) and that stay (0.3 s), killed twice -------------------

MAX = 4


def fails_before(iid: str, step: str) -> int:
    n = int(iid[1:])
    return (n + (0 if step == "a" else 2)) % 5


@pytest.mark.parametrize("scenario", ["retry"])
def test_retried_steps_killed_twice_run_exactly_the_attempts_their_policy_allows(tmp_path: Path,
                                                                                 scenario: str) -> None:
    """Each instance's steps "a" (Retry interval 1.5 s: parks between attempts) and "b"
    (interval 0.3 s: stays in memory) fail a set number of times; the process is SIGKILLed
    twice, during attempts and delays, and a third one runs everything to its end.

    Expected (docs/waiting.md, "What survives a restart"): a retry keeps its attempt count; a
    restart during an attempt runs that attempt again, counted as it was. So every attempt
    number 1..k (k = failures + 1, at most max_attempts) ends, once in each process (again in a
    later one only if a kill came before what it left was stored), no attempt beyond k is made,
    step_results' attempts == k, and the instance completes, or fails (b's failure compensates
    a, once in each process) as the policy says."""
    n = 150
    db, log = tmp_path / "flows.db", tmp_path / "jobs.log"
    child = spawn(db, log, scenario, "run", n)
    wait_started(child)
    time.sleep(2.4)
    kill(child)
    child = spawn(db, log, scenario, "resume", n)
    wait_started(child)
    time.sleep(random.uniform(1.6, 2.6))
    kill(child)
    summary = final(db, log, scenario, n)

    calls: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    ends: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    undos: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    twice_in_one_process = []
    seen_ends: set[tuple[str, str, str, int]] = set()
    for parts in lines(log):
        if parts[0] == "call":
            calls[(parts[2], parts[3])].append(int(parts[4]))
        elif parts[0] == "end":
            ends[(parts[2], parts[3])].append(int(parts[4]))
            if (parts[1], parts[2], parts[3], int(parts[4])) in seen_ends:
                twice_in_one_process.append(parts)
            seen_ends.add((parts[1], parts[2], parts[3], int(parts[4])))
        elif parts[0] == "undo":
            undos[(parts[2], parts[3])].append(parts[1])
    assert not twice_in_one_process, f"an attempt ended twice in one process: {twice_in_one_process[:3]}"
    killed = sum(len(calls[key]) - len(ends[key]) for key in calls)
    assert killed > 0, "no attempt was in flight at a kill: the test proves nothing"
    problems = []
    for i in range(n):
        iid = f"i{i}"
        inst = summary[iid]
        ka = min(fails_before(iid, "a") + 1, MAX)
        a_ok = fails_before(iid, "a") < MAX
        b_ok = fails_before(iid, "b") < MAX
        kb = min(fails_before(iid, "b") + 1, MAX) if a_ok else 0
        expected_status = "completed" if a_ok and b_ok else "failed"
        expected_comp = ["a"] if a_ok and not b_ok else []
        got = {
            "status": inst["status"], "compensated": inst["compensated"],
            "a ends": sorted(set(ends[(iid, "a")])), "b ends": sorted(set(ends[(iid, "b")])),
            "a calls": calls[(iid, "a")], "b calls": calls[(iid, "b")],
            "undo a": 1 if undos[(iid, "a")] and len(set(undos[(iid, "a")])) == len(undos[(iid, "a")]) else len(
                undos[(iid, "a")]), "attempts": inst["attempts"],
        }
        want = {
            "status": expected_status, "compensated": expected_comp,
            "a ends": list(range(1, ka + 1)), "b ends": list(range(1, kb + 1)),
            "undo a": 1 if expected_comp else 0,
        }
        bad = [k for k in want if got[k] != want[k]]
        if any(x > ka for x in calls[(iid, "a")]) or any(x > kb for x in calls[(iid, "b")]):
            bad.append("attempt beyond the policy")
        if inst["attempts"].get("a") != ka or (kb and inst["attempts"].get("b") != kb):
            bad.append("recorded attempts")
        if bad:
            problems.append((iid, bad, got, want))
    assert not problems, f"{len(problems)} of {n} instances broke their retry policy, e.g. {problems[:3]}"


# -- a cancel stored in a child whose workflow is not registered ------------------------------------

@pytest.mark.parametrize("kill_after,last", [(0.96, "kid-late")])
def test_cancel_stored_in_an_unregistered_child_killed_then_registered(tmp_path: Path, kill_after: float,
                                                                      last: str) -> None:
    """Parents wait on children parked on a 30 s timer. A process that registers only the
    parent's workflow cancels every parent (compensation timeout 1 s: the child's cancel is
    stored in it) and is SIGKILLed about when those cancels are being written. A last process
    registers both (the child's workflow at once, or 0.5 s after the parent's) and re-issues
    the cancels.

    Expected (docs/fanout.md): every parent ends cancelled, "pa" compensated once; every child
    ends cancelled, "k1" compensated exactly once, "k2" never run."""
    n = 100
    db, log = tmp_path / "flows.db", tmp_path / "jobs.log"
    child = spawn(db, log, "cancel-stored", "run", n, "both")
    wait_started(child)
    wait_for(lambda: sum(1 for p in lines(log) if p[0] == "call" and p[3] == "k1") >= n, child, "every k1")
    time.sleep(0.5)
    kill(child)
    child = spawn(db, log, "cancel-stored", "cancel", n, "parent")
    wait_started(child)
    wait_for(lambda: any(p[0] == "cancelled-all" for p in lines(log)), child, "the cancels")
    time.sleep(kill_after)
    kill(child)
    at_kill = peek(db, log, "cancel-stored")
    stored_cancelled = sum(1 for v in at_kill.values() if v["workflow"] == "kid" and v["error"])
    print("at kill:", collections.Counter((v["workflow"], v["status"], bool(v["error"])) for v in at_kill.values()))
    summary = final(db, log, "cancel-stored", n, last)
    undo = collections.Counter((p[2], p[3]) for p in lines(log) if p[0] == "undo")
    k2 = collections.Counter(p[2] for p in lines(log) if p[0] == "call" and p[3] == "k2")
    problems = []
    for k in range(n):
        pid = f"i{k}"
        parent = summary[pid]
        kids = parent["children"]
        # (An undo logged by the killed process whose checkpoint it did not write runs again:
        # compensations are at least once.)
        stored_done = at_kill[pid]["results"].get("pa") == "compensated"
        allowed = {1} if stored_done else {1, 2}
        if (parent["status"], parent["compensated"], len(kids)) != ("cancelled", ["pa"], 1) \
                or undo[(pid, "pa")] not in allowed:
            problems.append(("parent", pid, parent, undo[(pid, "pa")]))
            continue
        kid = summary[kids[0]]
        if (kid["status"], kid["compensated"], undo[(kids[0], "k1")], k2[kids[0]]) != ("cancelled", ["k1"], 1, 0):
            problems.append(("kid", kids[0], kid, undo[(kids[0], "k1")], k2[kids[0]], at_kill.get(kids[0])))
    assert not problems, f"{len(problems)} of {n} (kids with an error at the kill: {stored_cancelled}): {problems[:3]}"


# -- a parent's workflow timeout fires while its child is parked ------------------------------------

def _undo_counts(log: Path) -> tuple[dict[tuple[str, str], collections.Counter[str]], collections.Counter[str]]:
    undo: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(collections.Counter)
    k2: collections.Counter[str] = collections.Counter()
    for p in lines(log):
        if p[0] == "undo":
            undo[(p[2], p[3])][p[1]] += 1
        elif p[0] == "call" and p[3] == "k2":
            k2[p[2]] += 1
    return undo, k2


@pytest.mark.parametrize("middle", ["parent"])
def test_parent_timed_out_while_its_child_is_parked_killed_while_ending(tmp_path: Path, middle: str) -> None:
    """Parents (with_timeout(3), compensation timeout 1 s) wait on a child parked on a 30 s
    timer. The first process (both workflows) is killed once every child parked; the second
    (both, or only the parent's: the child's cancel is then stored in it) is killed while the
    parents' timeouts fire and they end (their decision stored before their children are
    cancelled); the last registers both.

    Expected: every parent timed_out, "pa" compensated (its undo run again only if the kill
    came between the undo and its checkpoint); every child cancelled, "k1" undone once (the
    same allowance), "k2" never run."""
    n = 100
    db, log = tmp_path / "flows.db", tmp_path / "jobs.log"
    child = spawn(db, log, "timeout-parent", "run", n, "both")
    wait_started(child)
    wait_for(lambda: sum(1 for p in lines(log) if p[0] == "call" and p[3] == "k1") >= n, child, "every k1")
    time.sleep(0.5)
    kill(child)
    child = spawn(db, log, "timeout-parent", "resume", n, middle)
    wait_started(child)
    # The timeouts fall due 3 s after the parents started; with only the parent's workflow,
    # the children's cancels are stored 1 s later.
    seen = len(lines(log))
    wait_for(lambda: any(p[0] == "undo" for p in lines(log)[seen:]), child, "the first undo in the second process")
    time.sleep(random.uniform(0.0, 0.04))
    kill(child)
    at_kill = peek(db, log, "timeout-parent")
    print("at kill:", collections.Counter((v["workflow"], v["status"], bool(v["error"])) for v in at_kill.values()))
    summary = final(db, log, "timeout-parent", n, "both")
    undo, k2 = _undo_counts(log)
    problems = []
    for k in range(n):
        pid = f"i{k}"
        parent = summary[pid]
        kids = parent["children"]
        pa = undo[(pid, "pa")]
        pa_ok = sum(pa.values()) == 1 or (sum(pa.values()) == 2 and at_kill[pid]["results"].get("pa") != "compensated")
        if (parent["status"], parent["compensated"], len(kids)) != ("timed_out", ["pa"], 1) or not pa_ok:
            problems.append(("parent", pid, parent, dict(pa), at_kill[pid]))
            continue
        kid = summary[kids[0]]
        k1 = undo[(kids[0], "k1")]
        k1_ok = sum(k1.values()) == 1 or (sum(k1.values()) == 2 and at_kill[kids[0]]["results"].get("k1") != "compensated")
        if (kid["status"], kid["compensated"], k2[kids[0]]) != ("cancelled", ["k1"], 0) or not k1_ok:
            problems.append(("kid", kids[0], kid, dict(k1), k2[kids[0]], at_kill.get(kids[0])))
    assert not problems, f"{len(problems)} of {n}: {problems[:3]}"
