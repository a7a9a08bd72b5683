"""Storage formats are promises (review "formats", of 488ed80 and fd148ba): databases written by
the release before continue-as-new (488ed80) and by the first with it (fd148ba), their instances
stopped mid-flight in every state an upgraded service leaves them in, open with today's code and
resume to the end the making release reaches itself.

The files are ``tests/fixtures/review_formats2_<rev>.db`` (the engine closed under the instances)
and ``review_formats2_<rev>_killed.db`` (the maker's process SIGKILLed with its steps in flight),
made by ``tests/fixtures/make_review_formats2.py`` with each commit's own code; the ``.json``
beside each holds that release's views of its stored instances and what it reaches when it
resumes a copy of the file itself (the same ``check()`` of ``review_formats2_workflows.py``).

This review found no bug: both tests are guards kept because what they hold is fragile. The
start record of an instance that continued as new grew a run number (9 fields) and nothing else
reads rows written mid-run-2 of a loop with a pending signal, earlier runs' children and a
compensation under way; and every release since c5a33b6 has changed what a header holds.
(Checked by hand, not kept as tests as they need the old code: 488ed80 refuses a continued
instance's row as malformed, leaving it untouched, and today's code then resumes it; fd148ba
resumes a file today's code wrote as today's code does.)"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import review_formats2_workflows as w  # noqa: E402

VIEW_FIELDS = ("status", "current_step", "waiting", "created_at", "started_at", "parent_id", "children", "error",
               "failed_step", "input")


def _copy(name: str, tmp_path: Path) -> Path:
    db = tmp_path / "old.db"
    shutil.copy(FIXTURES / f"review_formats2_{name}.db", db)
    return db


async def _views(db: Path) -> dict[str, dict[str, Any]]:
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), resume=False,
                              clock=lambda: w.T0 + w.MADE_AT + trio.current_time()) as engine:
        return {i.id: i.to_dict() for i in await engine.get_instances()}


@pytest.mark.parametrize("name", ["488ed80", "488ed80_killed", "fd148ba", "fd148ba_killed"])
def test_instances_stopped_mid_flight_by_an_earlier_release_resume_as_it_would(name: str, tmp_path: Path) -> None:
    """A user upgrades from 488ed80 or fd148ba with instances in a step (the process closed or
    killed), a timer, a receive with and without signals delivered or queued, parents on a
    child and on a map of children, a map half done, compensating, a delayed start, queued for
    a max_running slot, and (fd148ba) loops in their 2nd/3rd run after continue_as_new. They
    expect each described as before, and each to end as the old release would have ended it:
    same outputs, histories, children, runs, and every job called as often (signals received
    once, nothing done twice)."""
    old = json.loads((FIXTURES / f"review_formats2_{name}.json").read_text())
    db = _copy(name, tmp_path)
    views = trio.run(_views, db, clock=trio.testing.MockClock(autojump_threshold=0))
    assert set(views) == set(old["views"])
    for iid, was in old["views"].items():
        now = views[iid]
        assert {f: now[f] for f in VIEW_FIELDS} == {f: was[f] for f in VIEW_FIELDS}, iid
        assert now.get("runs", 0) == (was["runs"] or 0), iid
        # (A start record shows no attempt since the twentieth session of December 7th, as a step
        # under way does: review newcomer7. The old releases showed 1.)
        assert [[h["step_name"], h["status"], h["attempts"], h["lane"]] for h in now["history"]] == [
            [step, status, 0 if status == "started" else attempts, lane] for step, status, attempts, lane in was["history"]
        ], iid
    continues = name.startswith("fd148ba")
    got = json.loads(json.dumps(trio.run(w.check, str(db), continues,
                                         clock=trio.testing.MockClock(autojump_threshold=0)), default=repr))
    assert got["ends"] == old["own_resume"]["ends"]
    assert got["calls"] == old["own_resume"]["calls"]


def test_loops_continued_as_new_under_fd148ba_resume_in_their_run(tmp_path: Path) -> None:
    """A subscription loop (child "pay", a 100 s period, a receive, continue_as_new) stopped by
    fd148ba in its third run (run 2), waiting on its period with the "go" meant for it already
    queued; a loop in run 2 waiting on its run's child; one compensating in run 2. After the
    upgrade the user expects: the queued signal received by run 2 and the next by run 3, each
    once; the run counted (runs=3); the child ids of run 3 carrying its number and earlier runs'
    children let go (not listed) but kept as they were; only run 2's steps compensated."""
    db = _copy("fd148ba", tmp_path)
    got = trio.run(w.check, str(db), True, clock=trio.testing.MockClock(autojump_threshold=0))
    ends, calls = got["ends"], dict((tuple(k), v) for k, v in got["calls"])
    assert (ends["loop-1"]["status"], ends["loop-1"]["output"], ends["loop-1"]["runs"]) == (
        "completed", [3, "g3", "charged 3"], 3)
    assert ends["loop-1"]["children"] == ["loop-1/#3/pay#1"]
    assert [(i, ends[i]["output"]) for i in ("loop-1/pay#1", "loop-1/#1/pay#1", "loop-1/#2/pay#1", "loop-1/#3/pay#1")] == [
        ("loop-1/pay#1", "charged 0"), ("loop-1/#1/pay#1", "charged 1"), ("loop-1/#2/pay#1", "charged 2"),
        ("loop-1/#3/pay#1", "charged 3")]
    assert {k: v for k, v in calls.items() if k[0].startswith("loop-1")} == {
        ("loop-1", "note", "g2"): 1, ("loop-1", "note", "g3"): 1, ("loop-1/#3/pay#1", "charge", 3): 1}
    assert (ends["loop3-1"]["output"], ends["loop3-1"]["runs"], ends["loop3-1"]["children"]) == (
        [2, "k2"], 2, ["loop3-1/#2/pay#1"])
    assert (ends["loop2-1"]["status"], ends["loop2-1"]["output"], ends["loop2-1"]["runs"]) == ("completed", 2, 2)
    assert (calls[("loop2-1", "work", 1)], calls[("loop2-1", "work", 2)]) == (1, 1)
    assert (ends["loopc-1"]["status"], ends["loopc-1"]["runs"], ends["loopc-1"]["history"]) == (
        "failed", 2, [("a", "compensated"), ("more", "completed"), ("b", "compensated"), ("c", "failed")])
    assert (calls[("loopc-1", "undo", "a")], calls[("loopc-1", "undo_hang", "b")]) == (1, 1)
