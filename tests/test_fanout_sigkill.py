"""SIGKILL test of a fan-out of child workflows (SPEC §14, issue 15): parents, each a map whose
branch is one child step starting a saga (reserve, charge, mail), run on SQLite in a real
process that is killed while children run; a new process resumes from the file.

What must hold: every parent completes with its children's outputs in item order; no child is
started twice (each item has exactly one child, ``PARENT/each/#I/bill#1``, and a child stored at
the kill is never started fresh); no saga step that storage shows completed at the kill runs
again (a step cut by the kill may run again: at least once); every item's child step completes
exactly once in its parent's history, and each child's steps exactly once in its own.

Size: 100 parents x 100 items (10,000 child sagas, 30,000 saga steps), as the issue asks; about
20 s on a 2-core machine (~6.5 s until the kill at 45 %, ~12 s to resume and read everything
back, ~1.5 s to check).
``TRIOFLOW_FANOUT_SIZE=PARENTSxITEMS`` (say ``20x100``) runs another size.
The child is tests/fanout_child.py; each process logs to its own file, one fsynced O_APPEND
write a line.
"""

from __future__ import annotations

import collections
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from processes import kill_when

CHILD = str(Path(__file__).with_name("fanout_child.py"))
SAGA = ("reserve", "charge", "mail")
PARENTS, ITEMS = (int(n) for n in os.environ.get("TRIOFLOW_FANOUT_SIZE", "100x100").split("x"))
#: The kill lands once this share of all sagas has begun its last step: then about 40 % of
#: the children have completed, 5-10 % run (some steps cut mid-run), the rest are not started.
KILL_AT = 0.45


def log_lines(log: Path) -> list[list[str]]:
    # A line cut by the kill (no newline yet) is not counted: it is not a record.
    text = log.read_text() if log.exists() else ""
    return [line.split() for line in text.split("\n")[:-1]]


def steps_run(log: Path) -> collections.Counter[tuple[str, str]]:
    return collections.Counter((line[1], line[2]) for line in log_lines(log) if line[0] == "step")


def started(log: Path) -> collections.Counter[str]:
    return collections.Counter(line[1] for line in log_lines(log) if line[0] == "started")


def last_steps_begun(log: Path) -> int:
    return log.read_bytes().count(b" mail\n") if log.exists() else 0


def child_id(parent: str, item: int) -> str:
    return f"{parent}/each/#{item}/bill#1"


def expected_output(parent: str, item: int) -> dict[str, str]:
    name = f"{parent}.{item}"
    return {"item": name, **{step: f"{step}-{name}" for step in SAGA}}


def test_sigkill_while_a_fanout_of_child_sagas_runs_then_resume_runs_each_child_and_step_once(tmp_path: Path) -> None:
    db, run_log, resume_log = tmp_path / "flows.db", tmp_path / "run.log", tmp_path / "resume.log"
    total = PARENTS * ITEMS
    parents = [f"p{k}" for k in range(PARENTS)]
    children = {child_id(p, i): (p, i) for p in parents for i in range(ITEMS)}

    child = subprocess.Popen([sys.executable, CHILD, str(db), str(run_log), "run", str(PARENTS), str(ITEMS)],
                             stdout=subprocess.DEVNULL)
    kill_when(child, lambda: last_steps_begun(run_log) >= KILL_AT * total,
              lambda: f"only {last_steps_begun(run_log)} of {total} sagas began their last step", timeout=240)

    with sqlite3.connect(db) as conn:
        counts = dict(conn.execute("SELECT workflow_name || ' ' || status, count(*) FROM trioflow_instances"
                                   " GROUP BY workflow_name, status").fetchall())
    assert counts.get("batch running", 0) > 0, f"the kill must land while parents run: {counts}"
    assert 0 < counts.get("invoice completed", 0) < total, f"the kill must land after some children ended: {counts}"
    assert counts.get("invoice running", 0) > 0, f"the kill must land while children run: {counts}"

    done = subprocess.run([sys.executable, CHILD, str(db), str(resume_log), "resume", str(PARENTS), str(ITEMS)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    at_kill, final = summary["at_open"], summary["final"]

    # -- what storage held at the kill ------------------------------------------------------------
    stored_at_kill: dict[str, dict[str, Any]] = at_kill["invoice"]
    assert set(stored_at_kill) <= set(children), f"unexpected child ids: {sorted(set(stored_at_kill) - set(children))[:5]}"
    assert len(stored_at_kill) < total, "the kill must land before every item started its child"
    completed_at_kill = {(cid, name) for cid, inst in stored_at_kill.items()
                         for _, name, _, status in inst["history"] if status == "completed" and name in SAGA}
    run_steps, resume_steps = steps_run(run_log), steps_run(resume_log)
    assert all(run_steps[key] == 1 for key in completed_at_kill), \
        "every step stored completed at the kill ran once in the first process (its log says so)"
    cut = {key for key in run_steps if key not in completed_at_kill}
    assert cut, "the kill must cut some steps mid-run"
    assert all(resume_steps[key] == 1 for key in cut), "a step cut by the kill runs again, once"

    # -- parents ----------------------------------------------------------------------------------
    assert set(final["batch"]) == set(parents)
    for p in parents:
        inst = final["batch"][p]
        assert inst["status"] == "completed", (p, inst["status"], inst["error"])
        assert inst["output"] == [expected_output(p, i) for i in range(ITEMS)], f"{p}: outputs not in item order"
        assert sorted(inst["children"]) == sorted(child_id(p, i) for i in range(ITEMS)), f"{p}: children"
        bills = collections.Counter((lane, status) for lane, name, _, status in inst["history"] if name == "bill")
        for i in range(ITEMS):
            lane = f"each/#{i}"
            assert (bills[(lane, "started")], bills[(lane, "completed")]) == (1, 1), (
                f"{p} item {i}: the child step must start and complete exactly once: {bills}")
        assert set(bills) == {(f"each/#{i}", s) for i in range(ITEMS) for s in ("started", "completed")}, bills
        maps = [status for lane, name, _, status in inst["history"] if name == "each"]
        assert maps == ["started", "completed"], f"{p}: the map step itself: {maps}"

    # -- children: one per item, never started twice ----------------------------------------------
    assert set(final["invoice"]) == set(children), (
        f"{len(final['invoice'])} children stored, {total} expected;"
        f" unexpected: {sorted(set(final['invoice']) - set(children))[:5]}")
    for cid, (p, i) in children.items():
        inst = final["invoice"][cid]
        assert (inst["status"], inst["parent_id"]) == ("completed", p), (cid, inst["status"], inst["error"])
        assert inst["output"] == expected_output(p, i), cid
        steps = [(name, status) for _, name, _, status in inst["history"]]
        assert steps == [(name, "completed") for name in (*SAGA, "receipt")], f"{cid}: {steps}"
    run_started, resume_started = started(run_log), started(resume_log)
    assert set(run_started) <= set(stored_at_kill) | set(parents), "a child logged as started was not stored"
    twice = [i for i, n in (run_started + resume_started).items() if n > 1]
    assert not twice, f"instances started twice: {twice[:10]}"
    restarted = sorted(set(resume_started) & (set(stored_at_kill) | set(parents)))
    assert not restarted, f"instances stored at the kill were started fresh by the resume: {restarted[:10]}"
    never = sorted(set(children) - set(stored_at_kill) - set(resume_started))
    assert not never, f"children not stored at the kill were never started by the resume: {never[:10]}"

    # -- steps: completed ones never again; each at most once per process ------------------------
    again = sorted(completed_at_kill & set(resume_steps))
    assert not again, f"{len(again)} steps stored completed at the kill ran again: {again[:10]}"
    for name, counter in (("first", run_steps), ("resuming", resume_steps)):
        many = [key for key, n in counter.items() if n > 1]
        assert not many, f"steps run more than once in the {name} process: {many[:10]}"
    all_steps = {(cid, name) for cid in children for name in SAGA}
    assert set(run_steps) | set(resume_steps) == all_steps
    assert not [line for log in (run_log, resume_log) for line in log_lines(log) if line[0] == "undo"], \
        "nothing failed, so nothing is compensated"
