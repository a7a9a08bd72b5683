"""An adversarial review of snapshot format 3's instance header (docs/adapters.md "Snapshot
format 2's headers", README "Storage and durability"): a compensation cursor and the names of
the steps compensated instead of the list of executions compensated, and the instance's id
checked against the start record (ids whose CRC-32s collide included: the first format-3
headers carried only the CRC). As a sceptical user tries it: generated loops mixing
compensable and plain steps (and parallel branches), some compensations failing, engines
closed in the middle of compensating and reopened on the same SQLite file; the header bytes
read from the file while undoing a long loop; headers swapped between two instances stopped at
the same position (compensating, and finished); a child undone as a unit by a compensating
parent across a restart. On trio's autojumping MockClock."""

from __future__ import annotations

import sqlite3
import tempfile
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storages import finish
from test_review_of_storage_38 import (
    Ledger,
    Restarts,
    counter,
    ids,
    loop_back,
    looping,
    read_rows,
    remembering,
    swap_header,
    two_stops,
)

import trioflow as tf
from trioflow.adapters import SQLiteAdapter


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "flows.db"


def sqlite_rig(db: Path) -> Restarts:
    return Restarts(lambda: SQLiteAdapter(db))


def edit(db: Path, change: Any, *args: Any) -> None:
    """Run ``change(connection, *args)`` on the SQLite file, committed."""
    with sqlite3.connect(db) as conn:
        change(conn, *args)
    conn.close()


# -- generated loops: every completed compensable execution undone once, newest first -------------


class Shape:
    """A generated workflow "counted": pass "count", then the body's steps ``s0``.. (each
    compensable or not), then (maybe) parallel "fan" with branch a's "pa" (compensable) and
    branch b's "pb" (compensable or not), then choice "again" back to "count" until it ran
    ``times`` turns, then "charge", which fails. Every step's output is its execution id."""

    def __init__(self, times: int, body: list[bool], fan: tuple[bool, bool] | None) -> None:
        self.times, self.body, self.fan = times, body, fan

    def compensable(self) -> set[str]:
        names = {f"s{i}" for i, c in enumerate(self.body) if c}
        if self.fan is not None:
            names |= {f"p{b}" for b, c in zip("ab", self.fan) if c}
        return names

    def executions(self) -> list[str]:
        """Execution ids of the compensable steps (in no particular order)."""
        out = []
        for turn in range(1, self.times + 1):
            out += [f"s{i}#{turn}" for i, c in enumerate(self.body) if c]
            if self.fan is not None:
                out += [f"fan/{b}/p{b}#{turn}" for b, c in zip("ab", self.fan) if c]
        return out

    def definition(self, ledger: Ledger) -> tf.WorkflowDefinition:
        return loop_back(self.body_of(ledger), self.times)

    def body_of(self, ledger: Ledger) -> tf.WorkflowBuilder:
        """The loop's steps up to the choice that goes back."""
        builder = counter()
        for i, compensable in enumerate(self.body):
            builder = builder.step(f"s{i}", ledger.mark, ledger.release if compensable else None)
        if self.fan is not None:
            branches = [tf.branch(b).step(f"p{b}", ledger.mark, ledger.release if c else None).build()
                        for b, c in zip("ab", self.fan)]
            builder = builder.parallel("fan", branches=branches)
        return builder


@st.composite
def cases(draw: st.DrawFn) -> tuple[Shape, set[str], list[str]]:
    """A shape, the executions whose compensation fails, and those whose compensation parks (an
    engine restart each, in the middle of compensating)."""
    shape = Shape(draw(st.integers(1, 4)), draw(st.lists(st.booleans(), min_size=1, max_size=3)),
                  draw(st.one_of(st.none(), st.tuples(st.booleans(), st.booleans()))))
    executions = sorted(shape.executions())
    if not executions:
        return shape, set(), []
    fails = draw(st.sets(st.sampled_from(executions)))
    holds = draw(st.lists(st.sampled_from(executions), unique=True, max_size=2))
    return shape, fails, holds


async def run_case(path: Path, shape: Shape, fails: set[str], holds: list[str]) -> tuple[Ledger, tf.WorkflowInstance]:
    ledger = Ledger(hold_undo=holds, undo_fails=fails)
    wf = shape.definition(ledger)
    restarts = sqlite_rig(path)
    iid = None
    for _ in holds:  # each held compensation parks once: the engine is closed there
        iid = await restarts.until_parked(ledger, wf, iid)
    if iid is None:
        return ledger, await restarts.run(None, wf)
    return ledger, await restarts.resume_and_read(iid, wf)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_generated_loops_compensate_each_execution_once_newest_first_across_restarts(
        case: tuple[Shape, set[str], list[str]]) -> None:
    shape, fails, holds = case
    with tempfile.TemporaryDirectory() as tmp:
        ledger, inst = tf.testing.run(run_case, Path(tmp) / "flows.db", shape, fails, holds)
    compensable = shape.compensable()
    assert (inst.status, inst.failed_step) == ("failed", "charge")
    ran = ids(inst, *compensable) if compensable else []
    assert sorted(ran) == sorted(shape.executions()), "every compensable execution has its record"
    undone = ledger.undone()
    assert [me for me, _ in undone] == ran[::-1], "every execution undone exactly once, newest first"
    assert all(me == result for me, result in undone), "each compensation gets its own execution's output"
    for record in inst.history:
        if record.step_name not in compensable:
            assert record.compensation_error is None and record.status != "compensated", record
        elif record.id in fails:
            assert record.status == "completed", record
            assert record.compensation_error is not None and f"cannot release {record.id}" in record.compensation_error
        else:
            assert (record.status, record.compensation_error) == ("compensated", None), record
    by_id = {r.id: r for r in inst.history}
    assert inst.compensated_steps == tuple(by_id[me].step_name for me in ran[::-1] if me not in fails)
    newest_failing: dict[str, str] = {}
    for me in ran:
        if me in fails:
            newest_failing[by_id[me].step_name] = me
    assert set(inst.compensation_errors) == set(newest_failing)
    for name, me in newest_failing.items():
        assert f"cannot release {me}" in inst.compensation_errors[name]


# -- the header's bytes while compensating ----------------------------------------------------------


def mixed_loop(ledger: Ledger, times: int) -> tf.WorkflowDefinition:
    """A long loop of two compensable steps around a plain one, and a parallel step with one
    compensable branch; then a failing "charge"."""
    branches = [tf.branch("a").step("pa", ledger.mark, ledger.release).build(),
                tf.branch("b").step("pb", ledger.mark).build()]
    return loop_back(counter().step("hold", ledger.mark, ledger.release).step("plain", ledger.mark)
                     .step("book", ledger.mark, ledger.release).parallel("fan", branches=branches), times)


async def test_the_header_does_not_grow_while_undoing_a_long_mixed_loop(
        autojump_clock: trio.testing.MockClock, db: Path) -> None:
    ledger = Ledger(hold_undo={"hold#115", "hold#5"})
    wf = mixed_loop(ledger, 120)
    restarts, iid, early, late = await two_stops(db, ledger, wf)
    inst = await restarts.resume_and_read(iid, wf)
    final = read_rows(db, iid)
    assert len(ledger.undone()) == 3 * 120
    assert inst.compensated_steps.count("hold") == 120 and inst.compensation_errors == {}
    # Since count6 each compensation that ran appends a record of its own (the header keeps the
    # cursor alone): none is rewritten, and compensating appends nothing else.
    assert late[2][:len(early[2])] == early[2] and final[2][:len(late[2])] == late[2], "compensating rewrites no record"
    undone = [msgpack.unpackb(r, strict_map_key=False)[4] for r in final[2][len(final[2]) - 3 * 120 - 1:]]
    assert undone[0] != "compensation_completed" and set(undone[1:]) == {"compensation_completed"}, (
        "one record per compensation, and no other")
    assert len(early[2]) < len(late[2]) and all(
        msgpack.unpackb(r, strict_map_key=False)[4] == "compensation_completed" for r in final[2][len(early[2]):])
    assert len(late[0]) - len(early[0]) <= 16, (len(early[0]), len(late[0]))
    assert len(final[0]) - len(early[0]) <= 16, (len(early[0]), len(final[0]))


async def test_failed_compensations_grow_the_header_by_their_errors_only(
        autojump_clock: trio.testing.MockClock, db: Path) -> None:
    """A failed compensation's error is kept per execution; the executions compensated between
    add nothing."""
    ledger = Ledger(hold_undo={150, 10}, undo_fails={180})
    wf = looping(ledger, 200, fails=True)
    restarts, iid, early, late = await two_stops(db, ledger, wf)
    inst = await restarts.resume_and_read(iid, wf)
    assert inst.compensated_steps == ("reserve",) * 199
    assert [r.id for r in inst.history if r.compensation_error] == ["reserve#180"]
    assert len(late[0]) - len(early[0]) <= 16, (len(early[0]), len(late[0]))


# -- a header copied from another instance's row ----------------------------------------------------


async def park_two_compensating(restarts: Restarts, ledger: Ledger, wf: tf.WorkflowDefinition,
                                count: int = 2) -> list[str]:
    """Start ``count`` instances of ``wf`` and close the engine once all park in one place."""
    async with restarts.engine(wf) as engine:
        started = [await engine.start(wf.name, {"n": n}) for n in range(count)]
        await trio.sleep(10)
    return started


async def test_a_header_swapped_while_compensating_at_the_same_position_is_refused(
        autojump_clock: trio.testing.MockClock, db: Path) -> None:
    restarts = sqlite_rig(db)
    ledger = Ledger(hold_undo={2}, sticky=True)
    wf = looping(ledger, 4, fails=True)
    victim, other = await park_two_compensating(restarts, ledger, wf)
    assert sorted(ledger.undone()) == sorted([("reserve#4", 4), ("reserve#3", 3)] * 2), "both at one position"
    edit(db, swap_header, victim, other)
    before = read_rows(db, victim)
    ledger.hold_undo.clear()
    ledger.log.clear()
    async with restarts.engine(wf) as engine:
        ended = await finish(engine, other)
        seen = await finish(engine, victim)
        listed = {i.id: i for i in await engine.get_instances()}
        got = await engine.get_instance(victim)
    assert ended.status == "failed" and ended.compensated_steps == ("reserve",) * 4
    assert ledger.undone() == [("reserve#2", 2), ("reserve#1", 1)], "only the other instance compensated"
    for inst in (seen, listed[victim], got):
        assert inst is not None and (inst.status, inst.error_name) == ("failed", "SnapshotDecodeError"), inst
    assert read_rows(db, victim) == before, "the refused row is left byte-identical"


async def test_headers_exchanged_between_two_compensating_instances_refuse_both_and_a_third_runs(
        autojump_clock: trio.testing.MockClock, db: Path) -> None:
    restarts = sqlite_rig(db)
    ledger = Ledger(hold_undo={2}, sticky=True)
    wf = looping(ledger, 3, fails=True)
    first, second, third = await park_two_compensating(restarts, ledger, wf, 3)

    def exchange(conn: sqlite3.Connection) -> None:
        rows = dict(conn.execute("SELECT instance_id, header FROM trioflow_instances"))
        conn.execute("UPDATE trioflow_instances SET header = ? WHERE instance_id = ?", (rows[second], first))
        conn.execute("UPDATE trioflow_instances SET header = ? WHERE instance_id = ?", (rows[first], second))
    edit(db, exchange)
    before = {i: read_rows(db, i) for i in (first, second)}
    ledger.hold_undo.clear()
    ledger.log.clear()
    async with restarts.engine(wf) as engine:
        done = await finish(engine, third)
        got = {i: await engine.get_instance(i) for i in (first, second)}
    assert done.status == "failed" and done.compensated_steps == ("reserve",) * 3
    assert ledger.undone() == [("reserve#2", 2), ("reserve#1", 1)]
    for iid, inst in got.items():
        assert inst is not None and (inst.status, inst.error_name) == ("failed", "SnapshotDecodeError"), inst
        assert read_rows(db, iid) == before[iid]


async def test_a_header_swapped_between_two_finished_compensated_instances_is_refused(
        autojump_clock: trio.testing.MockClock, db: Path) -> None:
    restarts = sqlite_rig(db)
    wf = looping(Ledger(undo_fails={2}), 3, fails=True)
    victim = (await restarts.run(None, wf)).id
    other = (await restarts.run(None, wf)).id
    edit(db, swap_header, victim, other)
    before = read_rows(db, victim)
    async with restarts.engine(wf) as engine:
        got = await engine.get_instance(victim)
        fine = await engine.get_instance(other)
        listed = {i.id: i for i in await engine.get_instances("loop")}
    assert got is not None and (got.status, got.error_name) == ("failed", "SnapshotDecodeError")
    assert listed[victim].error_name == "SnapshotDecodeError"
    assert fine is not None and fine.status == "failed" and fine.error_name == "Declined"
    assert [r.id for r in fine.history if r.compensation_error] == ["reserve#2"]
    assert read_rows(db, victim) == before


#: Two instance ids a user might choose whose CRC-32s are the same (a birthday search over
#: "order-N" finds such a pair).
COLLIDING = ("order-29685295", "order-32060020")


def test_the_colliding_ids_collide() -> None:
    a, b = (zlib.crc32(i.encode()) for i in COLLIDING)
    assert a == b


async def test_a_header_copied_between_ids_with_the_same_crc32_is_refused(
        autojump_clock: trio.testing.MockClock, db: Path) -> None:
    restarts = sqlite_rig(db)
    gate = trio.Event()
    wf = remembering(gate)
    victim, other = COLLIDING
    async with restarts.engine(wf) as engine:
        await engine.start("who", {"who": "victim"}, instance_id=victim)
        await engine.start("who", {"who": "other"}, instance_id=other)
        await trio.sleep(1)
    edit(db, swap_header, victim, other)
    gate.set()
    async with restarts.engine(wf) as engine:
        assert (await finish(engine, other)).output == "other"
        seen = await finish(engine, victim)
    assert (seen.status, seen.error_name) == ("failed", "SnapshotDecodeError"), (seen.status, seen.output)


@pytest.mark.parametrize("iid", ["заказ-ü-😀", "a" * 300, "x\u00e9\u0301"], ids=["unicode", "long", "combining"])
async def test_any_legal_instance_id_reads_its_own_header_back_while_compensating(
        autojump_clock: trio.testing.MockClock, db: Path, iid: str) -> None:
    restarts = sqlite_rig(db)
    ledger = Ledger(hold_undo={2})
    wf = looping(ledger, 3, fails=True)
    async with restarts.engine(wf) as engine:
        await engine.start("loop", instance_id=iid)
        with trio.fail_after(10**6):
            await ledger.parked.wait()
    inst = await restarts.resume_and_read(iid, wf)
    assert (inst.status, inst.error_name) == ("failed", "Declined")
    assert ledger.undone() == [("reserve#3", 3), ("reserve#2", 2), ("reserve#1", 1)]


# -- a child undone as a unit by a compensating parent ----------------------------------------------


def family(ledger: Ledger, times: int) -> tuple[tf.WorkflowDefinition, tf.WorkflowDefinition]:
    """Parent "parent": count, child step "kid" (workflow "kid": compensable "k" returning
    "kid-<turn>"), compensable "own", back to count ``times`` turns, then a failing "charge"."""
    async def k(ctx: tf.WorkflowContext) -> str:
        return f"kid-{ctx.input}"
    kid = tf.workflow("kid").step("k", k, ledger.release).build()
    parent = loop_back(tf.workflow("parent")
                       .pass_("count", transform=lambda ctx: (ctx.steps.get("count") or 0) + 1)
                       .child("kid", workflow="kid", input=lambda ctx: ctx.steps["count"])
                       .step("own", ledger.mark, ledger.release), times)
    return parent, kid


async def test_children_of_a_compensating_loop_are_each_undone_once_across_a_restart(
        autojump_clock: trio.testing.MockClock, db: Path) -> None:
    ledger = Ledger(hold_undo={"kid-2"})
    parent, kid = family(ledger, 3)
    restarts = sqlite_rig(db)
    async with restarts.engine(parent, kid) as engine:
        iid = await engine.start("parent")
        with trio.fail_after(10**6):
            await ledger.parked.wait()
    async with restarts.engine(parent, kid) as engine:
        inst = await finish(engine, iid)
        children = [await engine.get_instance(c) for c in sorted(inst.children)]
    assert [result for _, result in ledger.undone()] == [
        "own#3", "kid-3", "own#2", "kid-2", "own#1", "kid-1"], "each undone once, newest first"
    assert (inst.status, inst.failed_step) == ("failed", "charge")
    assert [(r.id, r.status) for r in inst.history if r.step_name in ("kid", "own") and r.status != "started"] == [
        (f"{s}#{n}", "compensated") for n in (1, 2, 3) for s in ("kid", "own")]
    assert inst.compensated_steps == ("own", "kid") * 3
    assert len(children) == 3
    for child in children:
        assert child is not None and child.status == "compensated", child
        assert [r.status for r in child.history] == ["compensated"]
