"""An adversarial review of storage v2 and execution identity (SPEC §10 and §11,
docs/adapters.md, README "Storage and durability" and "Every step execution is its own
record"), as a sceptical user tries them: loops through a choice back-edge (one record and one
id per execution, ``history`` in order, ``step_results`` / ``ctx.steps`` the newest), per
execution compensation newest first with each execution's own output, a parallel step inside a
loop, restarts in the middle of a loop and of its compensation; the SQLite file read directly
(earlier records never rewritten, bytes per step not growing with the position); bad input
leaving nothing half-written; names that collide with the lane-key separator; damaged rows;
listings after many instances and purges beside running ones. On MemoryAdapter and SQLite
(engines closed and reopened on one storage), on trio's autojumping MockClock."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
import trioflow as tf
from storages import finish, storage  # noqa: F401  (storage: the fixture)
from test_review_of_fanout_38 import Rig
from trioflow.adapters import Adapter, SQLiteAdapter


class Declined(Exception):
    pass


class Ledger:
    """What the jobs of one test did, in ``log``: ("do", execution id, output) and ("undo",
    execution id, result handed to the compensation), in the order they happened. A ``reserve``
    execution whose output would be in ``hold_do`` (or a compensation whose result is in
    ``hold_undo``) parks once, for ever, setting ``parked``: the engine holding it is then closed
    (a restart); the rerun in the next engine goes on (with ``sticky``, every execution that
    gets there parks, until the holds are cleared). Compensations of results in ``undo_fails``
    raise, once logged."""

    def __init__(self, hold_do: Iterable[int] = (), hold_undo: Iterable[Any] = (),
                 undo_fails: Iterable[Any] = (), sticky: bool = False) -> None:
        self.log: list[tuple[str, str, Any]] = []
        self.sticky = sticky
        self.hold_do = set(hold_do)
        self.hold_undo = set(hold_undo)
        self.undo_fails = set(undo_fails)
        self.parked = trio.Event()

    async def _park_if(self, key: Any, held: set[Any]) -> None:
        if key in held:
            if not self.sticky:
                held.discard(key)
            self.parked.set()
            await trio.sleep_forever()

    async def reserve(self, ctx: tf.WorkflowContext) -> int:
        """Counts its own executions through ``ctx.steps`` (the newest output): 1, 2, 3, ..."""
        n = (ctx.steps.get("reserve") or 0) + 1
        await self._park_if(n, self.hold_do)
        self.log.append(("do", tf.current_step().execution_id, n))
        return n

    async def mark(self, ctx: tf.WorkflowContext) -> str:
        """A branch step: its output is its own execution id."""
        me = tf.current_step().execution_id
        self.log.append(("do", me, me))
        return me

    async def release(self, ctx: tf.WorkflowContext, result: Any) -> None:
        await self._park_if(result, self.hold_undo)
        self.log.append(("undo", tf.current_step().execution_id, result))
        if result in self.undo_fails:
            raise RuntimeError(f"cannot release {result}")

    def done(self) -> list[str]:
        """Execution ids of the executions that completed, in order."""
        return [entry[1] for entry in self.log if entry[0] == "do"]

    def undone(self) -> list[tuple[str, Any]]:
        """(execution id, result) of every compensation that ran, in order."""
        return [(entry[1], entry[2]) for entry in self.log if entry[0] == "undo"]


def charging(fails: bool) -> Callable[[tf.WorkflowContext], Any]:
    """The step after a loop: fails with ``Declined``, or returns the newest ``reserve``."""
    async def charge(ctx: tf.WorkflowContext) -> Any:
        if fails:
            raise Declined("card declined")
        return ctx.steps["reserve"]
    return charge


def looping(ledger: Ledger, times: int, *, fails: bool = False) -> tf.WorkflowDefinition:
    """Workflow "loop": reserve, then choice "again" back to reserve until it ran ``times``
    times, then "charge" (failing if ``fails``)."""
    return (tf.workflow("loop")
            .step("reserve", ledger.reserve, ledger.release)
            .choice("again", choices=[tf.when(lambda ctx: ctx.steps["reserve"] < times, next="reserve")],
                    default="charge")
            .step("charge", charging(fails))
            .build())


def fanning(ledger: Ledger, times: int) -> tf.WorkflowDefinition:
    """Workflow "fan": parallel "fan" (branches a: "pa", b: "pb", compensable, each returning
    its execution id), then "reserve" (the loop counter), back to "fan" until it ran ``times``
    times, then "charge", which fails."""
    branches = [tf.branch(b).step(f"p{b}", ledger.mark, ledger.release).build() for b in "ab"]
    return (tf.workflow("fan")
            .parallel("fan", branches=branches)
            .step("reserve", ledger.reserve)
            .choice("again", choices=[tf.when(lambda ctx: ctx.steps["reserve"] < times, next="fan")],
                    default="charge")
            .step("charge", charging(True))
            .build())


def ids(inst: tf.WorkflowInstance, *steps: str) -> list[str]:
    """The ids of ``inst``'s history entries (of ``steps`` only, if given), in order."""
    return [r.id for r in inst.history if not steps or r.step_name in steps]


def loop_ids(times: int) -> list[str]:
    """The history of a "loop" run of ``times`` turns, up to its charge."""
    out: list[str] = []
    for n in range(1, times + 1):
        out += [f"reserve#{n}", f"again#{n}"]
    return out + ["charge#1"]


class Restarts(Rig):
    """Engines opened one after another on one storage, on one virtual wall clock (the fan-out
    review's rig), with an instance parked by a ``Ledger`` job at each close."""

    async def until_parked(self, ledger: Ledger, wf: tf.WorkflowDefinition, iid: str | None = None) -> str:
        """Start ``wf`` (or resume ``iid``) in a new engine and close it once a job of
        ``ledger`` parks: the instance's id."""
        async with self.engine(wf) as engine:
            if iid is None:
                iid = await engine.start(wf.name)
            with trio.fail_after(10**6):
                await ledger.parked.wait()
        ledger.parked = trio.Event()
        return iid

    async def resume_and_read(self, iid: str, wf: tf.WorkflowDefinition) -> tf.WorkflowInstance:
        """A new engine (a restart) until ``iid`` ends; the instance as a third engine reads it."""
        async with self.engine(wf) as engine:
            await finish(engine, iid)
        async with self.engine(wf, resume=False) as engine:
            inst = await engine.get_instance(iid)
        assert inst is not None
        return inst


@pytest.fixture
def restarts(storage: Callable[[], Adapter]) -> Restarts:  # noqa: F811  (the fixture)
    return Restarts(storage)


# -- loops: identity, history, newest results ------------------------------------------------------


async def test_every_loop_execution_has_its_own_record_and_the_newest_is_the_result(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    ledger = Ledger()
    inst = await restarts.run(None, looping(ledger, 4))
    assert (inst.status, inst.output) == ("completed", 4)
    assert ids(inst) == loop_ids(4)
    assert [r.seq for r in inst.history] == list(range(len(inst.history)))
    assert [(r.lane, r.execution) for r in inst.history if r.step_name == "reserve"] == [("", n) for n in range(1, 5)]
    assert [r.output for r in inst.history if r.step_name == "reserve"] == [1, 2, 3, 4]
    assert inst.step_results["reserve"].output == 4 and inst.step_results["reserve"].execution == 4
    assert ledger.done() == [f"reserve#{n}" for n in range(1, 5)]
    assert ledger.undone() == []


async def test_a_failure_after_a_loop_compensates_every_execution_once_newest_first(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    ledger = Ledger()
    inst = await restarts.run(None, looping(ledger, 3, fails=True))
    assert (inst.status, inst.failed_step, inst.error_name) == ("failed", "charge", "Declined")
    assert ledger.undone() == [("reserve#3", 3), ("reserve#2", 2), ("reserve#1", 1)]
    assert inst.compensated_steps == ("reserve", "reserve", "reserve")
    assert [r.status for r in inst.history if r.step_name == "reserve"] == ["compensated"] * 3
    assert ids(inst) == loop_ids(3)


async def test_a_restart_in_the_middle_of_a_loop_runs_no_finished_execution_again(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    ledger = Ledger(hold_do={3})
    wf = looping(ledger, 5, fails=True)
    iid = await restarts.until_parked(ledger, wf)
    assert ledger.done() == ["reserve#1", "reserve#2"]
    inst = await restarts.resume_and_read(iid, wf)
    assert ledger.done() == [f"reserve#{n}" for n in range(1, 6)]
    assert ledger.undone() == [(f"reserve#{n}", n) for n in range(5, 0, -1)]
    assert ids(inst) == loop_ids(5)
    assert inst.compensated_steps == ("reserve",) * 5


async def test_a_restart_in_the_middle_of_compensation_undoes_each_execution_exactly_once(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    ledger = Ledger(hold_undo={2})
    wf = looping(ledger, 4, fails=True)
    iid = await restarts.until_parked(ledger, wf)
    assert ledger.undone() == [("reserve#4", 4), ("reserve#3", 3)]
    inst = await restarts.resume_and_read(iid, wf)
    assert ledger.undone() == [(f"reserve#{n}", n) for n in range(4, 0, -1)]
    assert inst.status == "failed" and inst.compensated_steps == ("reserve",) * 4
    assert inst.compensation_errors == {}
    assert ledger.done() == [f"reserve#{n}" for n in range(1, 5)]


async def test_a_parallel_step_in_a_loop_records_and_compensates_each_branch_execution(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    ledger = Ledger(hold_do={2})
    wf = fanning(ledger, 3)
    iid = await restarts.until_parked(ledger, wf)
    inst = await restarts.resume_and_read(iid, wf)
    branch_ids = ids(inst, "pa", "pb")
    assert sorted(branch_ids) == sorted(f"fan/{b}/p{b}#{n}" for b in "ab" for n in (1, 2, 3))
    assert {r.lane for r in inst.history if r.step_name == "pa"} == {"fan/a"}
    assert ids(inst, "fan") == ["fan#1", "fan#2", "fan#3"]
    assert inst.step_results["pa"].output == "fan/a/pa#3"
    # branch executions ran once each (none ran again after the restart)
    assert sorted(i for i in ledger.done() if "/" in i) == sorted(branch_ids)
    undone = ledger.undone()
    assert all(me == result for me, result in undone), "each compensation gets its own execution's output"
    assert [me for me, _ in undone] == branch_ids[::-1], "newest first, every execution once"
    assert inst.compensated_steps == tuple(i.split("/")[2].split("#")[0] for i in branch_ids[::-1])


# -- the SQLite file: append-only records, constant bytes per step ----------------------------------


Rows = tuple[bytes, bytes, list[bytes]]


def read_rows(path: Path, iid: str) -> Rows:
    """(header, start, records in seq order) of ``iid`` as the SQLite file holds them."""
    with sqlite3.connect(path) as db:
        header, start = db.execute("SELECT header, start FROM trioflow_instances WHERE instance_id = ?",
                                   (iid,)).fetchone()
        records = [row[0] for row in db.execute(
            "SELECT data FROM trioflow_records WHERE instance_id = ? ORDER BY seq", (iid,))]
    db.close()
    return bytes(header), bytes(start), [bytes(r) for r in records]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "flows.db"


async def two_stops(db: Path, ledger: Ledger, wf: tf.WorkflowDefinition) -> tuple[Restarts, str, Rows, Rows]:
    """Run ``wf`` on the SQLite file ``db`` until a ``ledger`` job parks, then again (a restart)
    until one parks again: the rig, the instance id and its rows at each stop."""
    restarts = Restarts(lambda: SQLiteAdapter(db))
    iid = await restarts.until_parked(ledger, wf)
    early = read_rows(db, iid)
    await restarts.until_parked(ledger, wf, iid)
    return restarts, iid, early, read_rows(db, iid)


async def test_records_are_never_rewritten_and_bytes_per_step_do_not_grow(
        autojump_clock: trio.testing.MockClock, db: Path) -> None:
    ledger = Ledger(hold_do={5, 150})
    wf = looping(ledger, 200)
    restarts, iid, early, late = await two_stops(db, ledger, wf)
    inst = await restarts.resume_and_read(iid, wf)
    final = read_rows(db, iid)
    assert inst.status == "completed" and len(inst.history) == 401
    assert len(early[2]) == 8 and len(late[2]) == 298 and len(final[2]) == 401
    assert late[2][:8] == early[2] and final[2][:298] == late[2], "earlier records are never rewritten"
    assert early[1] == late[1] == final[1], "the start bytes are written once"
    assert abs(len(early[0]) - len(late[0])) <= 8, (len(early[0]), len(late[0]))
    fifth, hundred_fiftieth = early[2][2 * 4 - 2], final[2][2 * 149]
    assert abs(len(fifth) - len(hundred_fiftieth)) <= 8, (len(fifth), len(hundred_fiftieth))


# -- bad input leaves nothing half-written ----------------------------------------------------------


def deep(levels: int) -> Any:
    """A list nested ``levels`` deep."""
    value: Any = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(("bad", "named"), [
    (object(), "workflow input is an object"), ({"a": [1, {2, 3}]}, "workflow input['a'][1] is a set"),
    (deep(5000), "nested too deeply"), (b"x" * (16 * 2**20 + 16), "over the 16 MiB limit"),
], ids=["object", "set-inside", "too-deep", "over-16MiB"])
async def test_start_with_unstorable_input_raises_and_stores_nothing(
        autojump_clock: trio.testing.MockClock, restarts: Restarts, bad: Any, named: str) -> None:
    ledger = Ledger()
    wf = looping(ledger, 1)
    async with restarts.engine(wf) as engine:
        with pytest.raises(tf.UnencodableValueError, match=named.replace("[", r"\[")):
            await engine.start("loop", bad, instance_id="order-1")
        assert await engine.get_instance("order-1") is None
        assert await engine.get_instances() == []
    async with restarts.engine(wf) as engine:
        assert await engine.get_instances() == []
        inst = await finish(engine, await engine.start("loop", {"ok": 1}, instance_id="order-1"))
        with pytest.raises(tf.TrioflowError):
            await engine.start("loop", bad, instance_id="order-1")
        kept = await engine.get_instance("order-1")
    assert inst.status == "completed" and ledger.done() == ["reserve#1"]
    assert kept is not None and (kept.status, kept.input, ids(kept)) == ("completed", {"ok": 1}, ids(inst))


def unstorable_step(ledger: Ledger, body: Callable[[tf.WorkflowContext], Any]) -> tf.WorkflowDefinition:
    """Workflow "bad": "reserve" (compensable), then "bad" running ``body``, then "after",
    which returns whether the shared data holds "k"."""
    async def bad(ctx: tf.WorkflowContext) -> Any:
        return body(ctx)

    async def after(ctx: tf.WorkflowContext) -> bool:
        return "k" in ctx.data
    return (tf.workflow("bad").step("reserve", ledger.reserve, ledger.release)
            .step("bad", bad).step("after", after).build())


def set_unstorable(ctx: tf.WorkflowContext) -> None:
    ctx.set("k", {"fine": 1, "inner": [object()]})


@pytest.mark.parametrize(("body", "named"), [
    (lambda ctx: {"x": [1, object()]}, "output of step 'bad'['x'][1]"),
    (set_unstorable, "ctx.set('k')['inner'][0]"),
], ids=["output", "ctx.set"])
async def test_an_unstorable_value_fails_its_step_and_keeps_earlier_records(
        autojump_clock: trio.testing.MockClock, restarts: Restarts, body: Any, named: str) -> None:
    ledger = Ledger()
    wf = unstorable_step(ledger, body)
    first = await restarts.run(None, wf)
    assert (first.status, first.failed_step, first.error_name) == ("failed", "bad", "UnencodableValueError")
    assert first.cause is not None and named in first.cause
    assert ids(first) == ["reserve#1", "bad#1"]
    assert first.history[0].output == 1 and first.history[0].status == "compensated"
    assert ledger.undone() == [("reserve#1", 1)]
    async with restarts.engine(wf, resume=False) as engine:
        again = await engine.get_instance(first.id)
    assert again is not None
    assert (again.status, again.error, ids(again)) == ("failed", first.error, ids(first))


async def test_a_refused_ctx_set_writes_nothing_and_names_the_key(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    refused: list[str] = []

    def body(ctx: tf.WorkflowContext) -> str:
        try:
            set_unstorable(ctx)
        except tf.UnencodableValueError as error:
            refused.append(str(error))
        return "went on"
    inst = await restarts.run(None, unstorable_step(Ledger(), body))
    assert inst.status == "completed" and inst.output is False, "the refused value must not be in ctx.data"
    assert len(refused) == 1 and "'k'" in refused[0]


# -- names that collide with the lane-key separator -------------------------------------------------


async def nothing(data: Any) -> None:
    return None


def one_task(name: str) -> tf.Branch:
    return tf.branch(name).task("t", job=nothing).build()


BUILDERS: dict[str, Callable[[str], Any]] = {
    "step": lambda n: tf.workflow("w").step(n, nothing).build(),
    "task": lambda n: tf.workflow("w").task(n, job=nothing).build(),
    "pass": lambda n: tf.workflow("w").pass_(n, result=1).build(),
    "choice": lambda n: tf.workflow("w").choice(n, choices=[tf.when(bool, next="z")], default="z")
    .pass_("z", result=1).build(),
    "parallel": lambda n: tf.workflow("w").parallel(n, branches=[one_task("b")]).build(),
    "branch": lambda n: tf.workflow("w").parallel("p", branches=[one_task(n)]).build(),
    "map": lambda n: tf.workflow("w").map(n, items=lambda ctx: [], branch=one_task("b")).build(),
    "in-branch": lambda n: tf.workflow("w").parallel("p", branches=[
        tf.branch("b").task(n, job=nothing).build()]).build(),
}


@pytest.mark.parametrize("where", sorted(BUILDERS))
@pytest.mark.parametrize("name", ["a/b", "ship#1", "/", "#", "p/#2"])
def test_names_holding_the_lane_separator_or_counter_mark_are_refused_by_build(where: str, name: str) -> None:
    with pytest.raises(tf.DefinitionError) as raised:
        BUILDERS[where](name)
    assert repr(name) in str(raised.value)
    assert "'/'" in str(raised.value) or "'#'" in str(raised.value)


@pytest.mark.parametrize("where", sorted(BUILDERS))
def test_a_legal_name_with_other_punctuation_builds(where: str) -> None:
    assert BUILDERS[where]("a.b-c_d:e") is not None


# -- damaged rows in the SQLite file ----------------------------------------------------------------


def damage_record(db: sqlite3.Connection, iid: str, other: str) -> None:
    db.execute("UPDATE trioflow_records SET data = x'c1c1c1' WHERE instance_id = ? AND seq = 0", (iid,))


def damage_header(db: sqlite3.Connection, iid: str, other: str) -> None:
    db.execute("UPDATE trioflow_instances SET header = substr(header, 1, length(header) / 2) "
               "WHERE instance_id = ?", (iid,))


def drop_record(db: sqlite3.Connection, iid: str, other: str) -> None:
    db.execute("DELETE FROM trioflow_records WHERE instance_id = ? AND seq = 0", (iid,))


def raise_count(db: sqlite3.Connection, iid: str, other: str) -> None:
    db.execute("UPDATE trioflow_instances SET next_seq = next_seq + 1 WHERE instance_id = ?", (iid,))


def swap_start(db: sqlite3.Connection, iid: str, other: str) -> None:
    db.execute("UPDATE trioflow_instances SET start = (SELECT start FROM trioflow_instances WHERE "
               "instance_id = ?) WHERE instance_id = ?", (other, iid))


def swap_header(db: sqlite3.Connection, iid: str, other: str) -> None:
    db.execute("UPDATE trioflow_instances SET header = (SELECT header FROM trioflow_instances WHERE "
               "instance_id = ?) WHERE instance_id = ?", (other, iid))


def lower_count(db: sqlite3.Connection, iid: str, other: str) -> None:
    db.execute("UPDATE trioflow_instances SET next_seq = next_seq - 1 WHERE instance_id = ?", (iid,))


def drop_start(db: sqlite3.Connection, iid: str, other: str) -> None:
    db.execute("UPDATE trioflow_instances SET start = x'' WHERE instance_id = ?", (iid,))


DAMAGES = [damage_record, damage_header, drop_record, raise_count, swap_start, lower_count, drop_start]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.__name__ for d in DAMAGES])
async def test_a_damaged_row_fails_alone_with_a_reason_and_is_left_untouched(
        autojump_clock: trio.testing.MockClock, db: Path, damage: Callable[..., None]) -> None:
    restarts = Restarts(lambda: SQLiteAdapter(db))
    ledger = Ledger(hold_do={2}, sticky=True)
    wf = looping(ledger, 3)
    async with restarts.engine(wf) as engine:
        victim = await engine.start("loop", {"who": "victim"})
        other = await engine.start("loop", {"who": "other"})
        await trio.sleep(1)  # both park in their second reserve
    assert ledger.done() == ["reserve#1", "reserve#1"]
    ledger.hold_do.clear()
    with sqlite3.connect(db) as conn:
        damage(conn, victim, other)
    conn.close()
    before = read_rows(db, victim)
    async with restarts.engine(wf, resume=False) as engine:
        assert other in await engine.resume(), "an unreadable row never stops the others resuming"
        resumed = await finish(engine, other)
        assert (resumed.status, ids(resumed)) == ("completed", loop_ids(3))
        seen = await finish(engine, victim)
        listed = {i.id: i for i in await engine.get_instances()}
        got = await engine.get_instance(victim)
    assert got is not None
    for inst in (seen, listed[victim], got):
        assert (inst.status, inst.error_name) == ("failed", "SnapshotDecodeError"), inst
        assert inst.cause and ("record" in inst.cause or "header" in inst.cause or "snapshot" in inst.cause)
    assert listed[other].status == "completed"
    assert read_rows(db, victim) == before, "an unreadable row's bytes are left untouched"


# -- listings and retention -------------------------------------------------------------------------


KINDS = ("ok", "fail", "hold", "cancel")
#: Workflow names a LIKE pattern or a prefix match would confuse.
NAMES = ("w_", "wa")


class Mixed:
    """The workflows NAMES, their jobs held by one ``gate``."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.workflows = [mixed(name, self.gate) for name in NAMES]


def mixed(name: str, gate: trio.Event) -> tf.WorkflowDefinition:
    """Workflow ``name``: one task that does what its input's "kind" says (holding until ``gate``
    for "hold" and "cancel")."""
    async def work(data: dict[str, Any]) -> str:
        if data["kind"] == "fail":
            raise Declined(data["n"])
        if data["kind"] in ("hold", "cancel"):
            await gate.wait()
        return data["n"]
    return tf.workflow(name).task("work", job=work).build()


async def start_mixed(engine: tf.Engine, count: int) -> dict[str, tuple[str, str]]:
    """Start ``count`` instances over the workflows NAMES and KINDS; cancel the "cancel" ones
    and let the others settle: id -> (workflow, expected status)."""
    expected: dict[str, tuple[str, str]] = {}
    for n in range(count):
        kind, wf = KINDS[n % 4], NAMES[n // 4 % 2]
        iid = await engine.start(wf, {"kind": kind, "n": str(n)})
        status = {"ok": "completed", "fail": "failed", "hold": "running", "cancel": "cancelled"}[kind]
        expected[iid] = (wf, status)
    await trio.sleep(1)
    for iid, (_, status) in expected.items():
        if status == "cancelled":
            assert await engine.cancel(iid)
    return expected


async def check_listings(engine: tf.Engine, expected: dict[str, tuple[str, str]]) -> None:
    """Every (workflow, status) listing, whole and in pages of 7, newest first too."""
    order = list(expected)
    for wf in (None, *NAMES):
        for status in (None, "completed", "failed", "running", "cancelled"):
            want = [i for i in order if wf in (None, expected[i][0]) and status in (None, expected[i][1])]
            got = await engine.get_instances(wf, status=status)
            assert [i.id for i in got] == want, (wf, status)
            assert all(i.status == expected[i.id][1] for i in got)
            newest = await engine.get_instances(wf, status=status, order="newest")
            assert [i.id for i in newest] == want[::-1]
            paged: list[str] = []
            after: str | None = None
            while True:
                page = await engine.get_instances(wf, status=status, limit=7, after=after)
                paged += [i.id for i in page]
                if len(page) < 7:
                    break
                after = page[-1].id
            assert paged == want, (wf, status)


async def test_listings_by_workflow_and_status_after_many_instances_and_a_restart(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    run = Mixed()
    async with restarts.engine(*run.workflows) as engine:
        expected = await start_mixed(engine, 80)
        await check_listings(engine, expected)
    async with restarts.engine(*run.workflows) as engine:
        await trio.sleep(1)
        await check_listings(engine, expected)
        run.gate.set()
        for iid, (_, status) in expected.items():
            if status == "running":
                assert (await finish(engine, iid)).status == "completed"
    ended = {iid: (wf, "completed" if status == "running" else status) for iid, (wf, status) in expected.items()}
    async with restarts.engine() as engine:  # nothing registered: listings come from storage alone
        await check_listings(engine, ended)


async def test_purge_and_retention_never_touch_running_or_queued_instances(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    run = Mixed()
    async with restarts.engine(*run.workflows) as engine:
        expected = await start_mixed(engine, 24)
        await trio.sleep(3600)
        with pytest.raises(ValueError):
            await engine.purge(older_than=0, status="running")
        finished = [i for i, (_, s) in expected.items() if s != "running"]
        assert await engine.purge(older_than=60) == len(finished)
        held = [i for i, (_, s) in expected.items() if s == "running"]
        assert [i.id for i in await engine.get_instances()] == held
        with pytest.raises(tf.UnknownInstanceError):
            await engine.get_instances(after=finished[0])
    async with restarts.engine(*run.workflows, retain_finished=1, max_running=len(held) + 2) as engine:
        quick = [await engine.start("w_", {"kind": "ok", "n": f"ok{n}"}) for n in range(2)]
        assert [(await finish(engine, iid)).status for iid in quick] == ["completed"] * 2
        queued = [await engine.start("wa", {"kind": "hold", "n": f"q{n}"}) for n in range(3)]
        await trio.sleep(3600)
        listed = {i.id: i.status for i in await engine.get_instances()}
        assert list(listed) == held + queued, "retention took the finished ones, and only them"
        assert "pending" in [listed[i] for i in queued], "one more instance than slots: a new one waits"
        run.gate.set()
        for iid in [*held, *queued]:
            assert (await finish(engine, iid)).status == "completed"


# -- more: retries, compensation across a restart in a parallel loop, compensation bytes -----------


async def test_a_retried_execution_keeps_one_id_and_one_record_across_attempts(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    seen: list[tuple[str, int]] = []

    async def flaky(ctx: tf.WorkflowContext) -> int:
        info = tf.current_step()
        seen.append((info.execution_id, info.attempt))
        if info.attempt == 1:
            raise Declined("try again")
        return (ctx.steps.get("flaky") or 0) + 1
    wf = (tf.workflow("retry-loop")
          .step("flaky", flaky, retry=tf.Retry(max_attempts=2, interval=5.0))
          .choice("again", choices=[tf.when(lambda ctx: ctx.steps["flaky"] < 3, next="flaky")], default="end")
          .pass_("end")
          .build())
    inst = await restarts.run(None, wf)
    assert (inst.status, inst.output) == ("completed", 3)
    assert seen == [(f"flaky#{n}", a) for n in (1, 2, 3) for a in (1, 2)]
    assert [(r.id, r.attempts, r.output) for r in inst.history if r.step_name == "flaky"] == [
        (f"flaky#{n}", 2, n) for n in (1, 2, 3)]


async def test_a_restart_while_compensating_a_parallel_loop_undoes_each_branch_execution_once(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    ledger = Ledger(hold_undo={"fan/b/pb#2"})
    wf = fanning(ledger, 3)
    iid = await restarts.until_parked(ledger, wf)
    before = ledger.undone()
    assert {"fan/a/pa#3", "fan/b/pb#3"} <= {me for me, _ in before} and len(before) in (2, 3)
    inst = await restarts.resume_and_read(iid, wf)
    undone = ledger.undone()
    assert undone[:len(before)] == before
    branch_ids = ids(inst, "pa", "pb")
    assert [me for me, _ in undone] == branch_ids[::-1]
    assert all(me == result for me, result in undone)
    assert [r.status for r in inst.history if r.step_name in ("pa", "pb")] == ["compensated"] * 6


async def test_compensation_checkpoints_do_not_grow_with_the_executions_compensated(
        autojump_clock: trio.testing.MockClock, db: Path) -> None:
    """The header replaced by each compensation's checkpoint stays about one size: undoing a
    long loop does not write bytes quadratic in its length."""
    ledger = Ledger(hold_undo={190, 10})
    wf = looping(ledger, 200, fails=True)
    restarts, iid, early, late = await two_stops(db, ledger, wf)
    inst = await restarts.resume_and_read(iid, wf)
    assert inst.compensated_steps == ("reserve",) * 200
    # Since count6 each compensation that ran appends a record of its own (the header keeps the
    # cursor alone): reserve#190's to reserve#11's between the stops, and nothing else.
    assert late[2][:len(early[2])] == early[2], "compensating rewrites no record"
    assert [msgpack.unpackb(r, strict_map_key=False)[4] for r in late[2][len(early[2]):]] == [
        "compensation_completed"] * 180
    assert len(late[0]) - len(early[0]) <= 16, (len(early[0]), len(late[0]))


async def test_failing_compensations_are_recorded_per_execution_and_the_rest_still_run(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    ledger = Ledger(undo_fails={1, 3})
    inst = await restarts.run(None, looping(ledger, 3, fails=True))
    assert ledger.undone() == [("reserve#3", 3), ("reserve#2", 2), ("reserve#1", 1)]
    per_execution = {r.id: (r.status, r.compensation_error) for r in inst.history if r.step_name == "reserve"}
    assert per_execution["reserve#2"] == ("compensated", None)
    for failed in ("reserve#1", "reserve#3"):
        status, error = per_execution[failed]
        assert status == "completed" and error is not None and f"cannot release {failed[-1]}" in error
    assert "cannot release 3" in inst.compensation_errors["reserve"], "the newest failing execution's error"


def remembering(gate: trio.Event) -> tf.WorkflowDefinition:
    """Workflow "who": "remember" puts the input's "who" in the shared data, "hold" waits for
    ``gate``, "answer" gives the shared "who"."""
    async def remember(ctx: tf.WorkflowContext) -> None:
        ctx.set("who", ctx.input["who"])

    async def hold(ctx: tf.WorkflowContext) -> None:
        await gate.wait()

    async def answer(ctx: tf.WorkflowContext) -> Any:
        return ctx.data["who"]
    return tf.workflow("who").step("remember", remember).step("hold", hold).step("answer", answer).build()


async def test_a_header_holding_another_instances_data_is_reported_not_run(
        autojump_clock: trio.testing.MockClock, db: Path) -> None:
    restarts = Restarts(lambda: SQLiteAdapter(db))
    gate = trio.Event()
    wf = remembering(gate)
    async with restarts.engine(wf) as engine:
        victim = await engine.start("who", {"who": "victim"})
        other = await engine.start("who", {"who": "other"})
        await trio.sleep(1)
    with sqlite3.connect(db) as conn:
        swap_header(conn, victim, other)
    conn.close()
    gate.set()
    async with restarts.engine(wf) as engine:
        assert (await finish(engine, other)).output == "other"
        seen = await finish(engine, victim)
    assert seen.output != "other", "the victim must never answer with another instance's data"
    assert (seen.status, seen.error_name) == ("failed", "SnapshotDecodeError")


async def test_an_unstorable_branch_output_fails_its_branch_and_its_sibling_is_compensated(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    ledger = Ledger()

    async def unstorable(ctx: tf.WorkflowContext) -> Any:
        await trio.sleep(5)
        return {"when": object()}
    wf = (tf.workflow("split")
          .parallel("fan", branches=[tf.branch("a").step("pa", ledger.mark, ledger.release).build(),
                                     tf.branch("b").step("pbad", unstorable).build()])
          .build())
    inst = await restarts.run(None, wf)
    assert (inst.status, inst.failed_step, inst.error_name) == ("failed", "pbad", "UnencodableValueError")
    assert ledger.undone() == [("fan/a/pa#1", "fan/a/pa#1")]
    async with restarts.engine(wf, resume=False) as engine:
        again = await engine.get_instance(inst.id)
    assert again is not None and again.status == "failed"
    assert [(r.id, r.status) for r in again.history if r.step_name != "fan"] == [
        ("fan/a/pa#1", "compensated"), ("fan/b/pbad#1", "failed")]


async def test_a_damaged_finished_instance_is_reported_failed_and_left_untouched(
        autojump_clock: trio.testing.MockClock, db: Path) -> None:
    restarts = Restarts(lambda: SQLiteAdapter(db))
    wf = looping(Ledger(), 2)
    done = await restarts.run(None, wf)
    fine = await restarts.run(None, wf)
    with sqlite3.connect(db) as conn:
        damage_record(conn, done.id, fine.id)
    conn.close()
    before = read_rows(db, done.id)
    async with restarts.engine(wf) as engine:
        got = await engine.get_instance(done.id)
        listed = {i.id: i for i in await engine.get_instances("loop")}
    assert got is not None and (got.status, got.error_name) == ("failed", "SnapshotDecodeError")
    assert listed[done.id].status == "failed" and listed[fine.id].status == "completed"
    assert read_rows(db, done.id) == before


def counter() -> tf.WorkflowBuilder:
    """A workflow "counted" beginning with pass step "count": 1, 2, 3, ... through ``ctx.steps``."""
    return tf.workflow("counted").pass_("count", transform=lambda ctx: (ctx.steps.get("count") or 0) + 1)


def turn() -> int:
    """The turn of the loop the current step runs in: its execution counter."""
    return int(tf.current_step().execution_id.rpartition("#")[2])


def loop_back(builder: tf.WorkflowBuilder, times: int, *, to: str = "count") -> tf.WorkflowDefinition:
    """``builder`` then choice "again" back to ``to`` until "count" reached ``times``, then a
    step "charge" that fails."""
    return (builder.choice("again", choices=[tf.when(lambda ctx: ctx.steps["count"] < times, next=to)],
                           default="charge")
            .step("charge", charging(True)).build())


async def test_a_caught_execution_in_a_loop_is_never_compensated_and_the_others_are(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    ledger = Ledger()

    async def attempt(ctx: tf.WorkflowContext) -> int:
        if turn() == 2:
            raise Declined("second turn declined")
        ledger.log.append(("do", tf.current_step().execution_id, turn()))
        return turn()
    wf = loop_back(counter().step("reserve", attempt, ledger.release,
                                  catch=[tf.Catch(errors=[Declined], next="again")]), 3)
    inst = await restarts.run(None, wf)
    assert ledger.undone() == [("reserve#3", 3), ("reserve#1", 1)]
    assert [(r.id, r.status) for r in inst.history if r.step_name == "reserve"] == [
        ("reserve#1", "compensated"), ("reserve#2", "caught"), ("reserve#3", "compensated")]
    assert inst.compensated_steps == ("reserve", "reserve")


async def test_a_task_compensation_by_job_name_gets_each_executions_output_after_a_restart(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    released: list[tuple[str, Any]] = []
    parked = trio.Event()

    async def book(data: Any) -> str:
        if turn() == 2 and not parked.is_set():
            parked.set()
            await trio.sleep_forever()
        return f"booking-{turn()}"

    async def unbook(output: Any) -> None:
        released.append((tf.current_step().execution_id, output))
    wf = loop_back(counter().task("book", job="book", compensate="unbook"), 3)
    async with restarts.engine(wf) as engine:
        engine.jobs.register("book", book)
        engine.jobs.register("unbook", unbook)
        iid = await engine.start("counted")
        await parked.wait()
    async with restarts.engine(wf) as engine:
        engine.jobs.register("book", book)
        engine.jobs.register("unbook", unbook)
        inst = await finish(engine, iid)
    assert inst.status == "failed"
    assert released == [(f"book#{n}", f"booking-{n}") for n in (3, 2, 1)]
    assert ids(inst, "book", "count") == [f"{s}#{n}" for n in (1, 2, 3) for s in ("count", "book")]


def mapping(ledger: Ledger, times: int) -> tf.WorkflowDefinition:
    """Workflow "fan" again, with map "fan" over two items instead of a parallel step."""
    return (tf.workflow("fan")
            .map("fan", items=lambda ctx: [1, 2], branch=tf.branch("item").step("pm", ledger.mark).build())
            .step("reserve", ledger.reserve)
            .choice("again", choices=[tf.when(lambda ctx: ctx.steps["reserve"] < times, next="fan")],
                    default="end")
            .pass_("end")
            .build())


@pytest.mark.parametrize("shape", [fanning, mapping], ids=["parallel", "map"])
async def test_the_header_does_not_grow_with_the_turns_of_a_fan_out_loop(
        autojump_clock: trio.testing.MockClock, db: Path, shape: Callable[[Ledger, int], tf.WorkflowDefinition]) -> None:
    ledger = Ledger(hold_do={5, 95})
    _, _, early, late = await two_stops(db, ledger, shape(ledger, 100))
    assert late[2][:len(early[2])] == early[2]
    assert len(late[0]) - len(early[0]) <= 16, (len(early[0]), len(late[0]))


async def test_an_unstorable_task_input_fails_its_step_before_the_job_runs(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    given: list[Any] = []

    async def job(data: Any) -> int:
        given.append(data)
        return len(given)
    wf = (tf.workflow("mapped").task("first", job=job)
          .task("second", job=job, input=lambda ctx: {"when": object()}).build())
    inst = await restarts.run({"n": 1}, wf)
    assert (inst.status, inst.failed_step, inst.error_name) == ("failed", "second", "UnencodableValueError")
    assert inst.cause is not None and "input of step 'second'['when']" in inst.cause
    assert given == [{"n": 1}], "the job never got a value that could not be stored"
    assert [(r.id, r.status, r.output) for r in inst.history] == [("first#1", "completed", 1), ("second#1", "failed", None)]


async def test_a_compensation_that_failed_before_a_restart_is_not_run_again(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    ledger = Ledger(hold_undo={1}, undo_fails={3})
    wf = looping(ledger, 3, fails=True)
    iid = await restarts.until_parked(ledger, wf)
    inst = await restarts.resume_and_read(iid, wf)
    assert ledger.undone() == [("reserve#3", 3), ("reserve#2", 2), ("reserve#1", 1)]
    assert [r.compensation_error is not None for r in inst.history if r.step_name == "reserve"] == [
        False, False, True]
    assert inst.compensated_steps == ("reserve", "reserve")


async def test_cancelling_in_the_middle_of_a_loop_compensates_the_finished_turns_newest_first(
        autojump_clock: trio.testing.MockClock, restarts: Restarts) -> None:
    ledger = Ledger(hold_do={3})
    wf = looping(ledger, 5)
    async with restarts.engine(wf) as engine:
        iid = await engine.start("loop")
        await ledger.parked.wait()
        assert await engine.cancel(iid)
        inst = await finish(engine, iid)
    assert inst.status == "cancelled"
    assert ledger.undone() == [("reserve#2", 2), ("reserve#1", 1)]
    assert inst.compensated_steps == ("reserve", "reserve")
    statuses = [(r.id, r.status) for r in inst.history if r.step_name == "reserve"]
    assert statuses[:2] == [("reserve#1", "compensated"), ("reserve#2", "compensated")]
    assert [i for i, status in statuses[2:]] in ([], ["reserve#3"])
    assert all(status not in ("completed", "compensated") for _, status in statuses[2:]), statuses
