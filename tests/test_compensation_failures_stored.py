"""A compensation that fails for good is stored as a record of its own (snapshot format 4), not
in the instance's header: undoing a long loop whose compensations all fail writes bytes linear
in the loop's length, and each failure is kept once, across restarts (README "Storage and
durability"). Read from the SQLite file, on trio's autojumping MockClock."""

from __future__ import annotations

from pathlib import Path

import msgpack
import trio
import trio.testing
from test_review_of_storage_38 import Ledger, Restarts, looping, read_rows, two_stops

import trioflow as tf
from trioflow.adapters import SQLiteAdapter

TIMES = 200


def failed_compensations(records: list[bytes]) -> list[tuple[str, int, str]]:
    """(step, execution, error) of each stored record of a failed compensation, in seq order."""
    fields = [msgpack.unpackb(r) for r in records]
    return [(f[2], f[3], f[9]) for f in fields if f[4] == "compensation_failed"]


async def test_every_release_of_a_long_loop_failing_keeps_the_header_as_it_was(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    db = tmp_path / "flows.db"
    # Every release fails; the engine is closed while releasing reserve#150 and reserve#10.
    ledger = Ledger(hold_undo={150, 10}, undo_fails=range(1, TIMES + 1))
    wf = looping(ledger, TIMES, fails=True)
    restarts, iid, early, late = await two_stops(db, ledger, wf)
    inst = await restarts.resume_and_read(iid, wf)
    final = read_rows(db, iid)

    forward = 2 * TIMES + 1  # reserve and again each turn, then charge
    assert failed_compensations(early[2]) == [("reserve", n, f"RuntimeError: cannot release {n}")
                                              for n in range(TIMES, 150, -1)]
    assert failed_compensations(late[2]) == failed_compensations(final[2])[:TIMES - 10]
    assert failed_compensations(final[2]) == [("reserve", n, f"RuntimeError: cannot release {n}")
                                              for n in range(TIMES, 0, -1)], "each failure stored once, newest first"
    assert len(final[2]) == forward + TIMES
    assert late[2][:len(early[2])] == early[2] and final[2][:len(late[2])] == late[2], "records are never rewritten"
    assert abs(len(late[0]) - len(early[0])) <= 8, (len(early[0]), len(late[0]))

    assert [n for _, n in ledger.undone()] == [*range(TIMES, 150, -1), *range(150, 10, -1), *range(10, 0, -1)], (
        "each release ran once, newest first, the two the closes cut short again")
    assert (inst.status, inst.compensated_steps) == ("failed", ())
    assert len(inst.history) == forward, "the history lists executions, not their compensations"
    reserves = [(r.id, r.status, r.compensation_error) for r in inst.history if r.step_name == "reserve"]
    assert reserves == [(f"reserve#{n}", "completed", f"RuntimeError: cannot release {n}") for n in range(1, TIMES + 1)]
    assert inst.compensation_errors == {"reserve": f"RuntimeError: cannot release {TIMES}"}


async def test_a_failed_compensation_in_memory_is_what_storage_reads_back(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """What the caller waits for, the instance read while its engine runs, the instance read
    from storage by a later engine, and an in-process run's result agree."""
    ledger = Ledger(undo_fails={2})
    wf = looping(ledger, 3, fails=True)
    restarts = Restarts(lambda: SQLiteAdapter(tmp_path / "flows.db"))
    async with restarts.engine(wf) as engine:
        iid = await engine.start("loop")
        waited = await engine.wait(iid)
        live = await engine.get_instance(iid)
    async with restarts.engine(wf, resume=False) as engine:
        stored = await engine.get_instance(iid)
    in_process = await tf.execute_workflow(None, looping(Ledger(undo_fails={2}), 3, fails=True))
    assert stored is not None and live is not None
    for view in (waited, live, stored, in_process):
        assert view.compensation_errors == {"reserve": "RuntimeError: cannot release 2"}
        assert view.compensated_steps == ("reserve", "reserve")
    assert waited.history == live.history == stored.history
    assert [(r.id, r.status, r.compensation_error) for r in stored.history if r.step_name == "reserve"] == [
        ("reserve#1", "compensated", None), ("reserve#2", "completed", "RuntimeError: cannot release 2"),
        ("reserve#3", "compensated", None)]
