"""Storage formats are promises: databases written by earlier releases (tests/fixtures/
review_formats_<rev>.db, made by tests/fixtures/make_review_formats.py with each commit's own
code) open with today's code, describe their instances as the release that wrote them did, and
resume to the outcome that release reaches itself (checked by running the same script under each
release's code: every end below is what the old code reached too).

From a review of stored formats across releases, which found no bug: this guard is kept because the header's
fields changed within format 4 (child waits in a word since 9735094, lanes named by their records
since 7d0889c, a receive's 'within' since eed0750) and nothing else reads headers those
releases wrote with waits, queued signals, retry delays, maps, children, stored cancels and delayed
starts in them."""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import review_formats_workflows as w  # noqa: E402

#: The end of each instance, as the release that wrote the file reaches it too.
ENDS: dict[str, tuple[str, Any]] = {
    "timer-1": ("completed", "b"),
    "sig-1": ("completed", [1, 2, 3]),
    "retry-1": ("completed", "ok"),
    "fan-1": ("completed", [0, 10, 20, 30, 40]),
    "parent-1": ("completed", "b"),
    "parent-1/c#1": ("completed", 5),
    "parents-1": ("completed", "b"),
    "parents-1/each/#0/c#1": ("completed", 7),
    "parents-1/each/#1/c#1": ("completed", 8),
    "parents-1/each/#2/c#1": ("completed", 9),
    "comp-1": ("failed", None),
    "delayed-1": ("completed", "a"),
    "cancelme-1": ("cancelled", None),
    "rcvto-1": ("failed", None),
    "wto-1": ("timed_out", None),
    "brto-1": ("failed", None),
    "mapretry-1": ("completed", ["ok", "ok"]),
    "kids3-1": ("cancelled", None),
    "kids3-1/each/#0/c#1": ("cancelled", None),
    "kids3-1/each/#1/c#1": ("cancelled", None),
}

#: Every job call of the resumed runs: steps whose end was stored never run again.
CALLS = Counter({
    ("cancelme-1", "undo", "a"): 1, ("comp-1", "undo", "a"): 1, ("comp-1", "undo_hang", "b"): 1,
    ("delayed-1", "a", None): 1, ("fan-1", "after", 3): 1, ("fan-1", "after", 4): 1,
    ("parent-1", "b", None): 1, ("parents-1", "b", None): 1, ("retry-1", "flaky", None): 1,
    ("sig-1", "collect", None): 1, ("sig-1", "slow_a", None): 1, ("timer-1", "b", None): 1,
    ("brto-1", "flaky", None): 1, ("mapretry-1", "flaky", None): 2,
})


@pytest.mark.parametrize("rev", ["c5a33b6", "5a6d002", "389f06b", "c508bd6"])
def test_instances_an_earlier_release_stopped_in_awkward_places_resume_as_it_would(rev: str, tmp_path: Path) -> None:
    """A user upgrades with instances stopped in every kind of wait (timer, signals queued,
    retry delay, a map half done, parents on children, compensating, a delayed start, a cancel
    stored in the row, timeouts). They expect each described as before, and each to end as the
    old release would have ended it, timers firing at their stored time, nothing done twice."""
    db = tmp_path / "old.db"
    shutil.copy(FIXTURES / f"review_formats_{rev}.db", db)
    old = json.loads((FIXTURES / f"review_formats_{rev}.json").read_text())

    async def main() -> None:
        w.MODE, w.LOG[:] = "check", []
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db),
                                  clock=lambda: w.T0 + 250 + trio.current_time()) as engine:
            for instance in await engine.get_instances():
                was, now = old[instance.id], instance.to_dict()
                for field in ("status", "current_step", "waiting", "created_at", "started_at", "parent_id",
                              "children", "error", "failed_step"):
                    assert now[field] == was[field], (instance.id, field)
                # (A start record shows no attempt since the twentieth session of December 7th, as
                # a step under way does: review newcomer7. The old release showed 1.)
                assert ([(h["step_name"], h["status"], h["attempts"], h["lane"]) for h in now["history"]]
                        == [(h["step_name"], h["status"], 0 if h["status"] == "started" else h["attempts"], h["lane"])
                            for h in was["history"]])
            for definition in w.definitions():
                engine.register(definition)
            await trio.sleep(1)
            await engine.signal("parent-1/c#1", "go", 5)
            await engine.signal("parents-1/each/#1/c#1", "go", 8)
            await trio.sleep(5)
            await engine.signal("parents-1/each/#2/c#1", "go", 9)
            await engine.signal("sig-1", "go", 3)
            await trio.sleep_until(3340)  # t = 3590: the 3600 s timer and the delayed start not yet due
            assert ("timer-1", "b", None) not in w.LOG and ("delayed-1", "a", None) not in w.LOG
            assert (await engine.get_instance("wto-1")).status == "timed_out"  # type: ignore[union-attr]
            await trio.sleep(4000)
            ends = {i.id: (i.status, i.output) for i in await engine.get_instances()}
        assert ends == ENDS
        assert Counter(w.LOG) == CALLS

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
