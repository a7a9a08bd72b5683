"""An adversarial review of snapshot format 4 (README "Storage and durability", docs/adapters.md
"Snapshot format 3's headers"): a compensation that fails for good is a step record of its own
(status "compensation_failed", the id of the execution it compensated, its error) rather than an
entry in the instance header; ``InstanceState.compensation_errors`` is an index rebuilt from those
records; older headers' errors become such records, stored by the next checkpoint.

As a sceptical user and maintainer tries it: generated loops mixing compensable steps whose
compensations fail or succeed, parallel branches, map items and child workflows compensated as
units, engines closed in the middle of compensating on one SQLite file (every stored failure read
from the file); what the caller waits for, what ``get_instance`` shows while the instance runs and
what a later engine reads from storage; the crash explorer on workflows whose compensations fail;
compensations that time out, retry, or fail with odd errors; damaged failure records; the
format-2 and format-3 fixtures reopened several times; events, ``to_dict``, listings and purges on
MemoryAdapter and SQLite. On trio's autojumping MockClock."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storages import finish, storage  # noqa: F401  (storage: the fixture)
from test_review_of_header_v3 import Shape as LoopShape
from test_review_of_storage_38 import Ledger, Restarts, charging, counter, loop_back, looping, read_rows

import trioflow as tf
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import explore_crashes

FIXTURES = Path(__file__).with_name("fixtures")
sys.path.insert(0, str(FIXTURES))
from make_v2_compensating import Failed  # noqa: E402  (the fixtures' workflow)
from make_v2_compensating import loop as fixture_loop  # noqa: E402

# -- reading what is stored ----------------------------------------------------------------------

#: A record's fields: [seq, lane, step_name, execution, status, uses_input, input, output, passes,
#: error, started_at, completed_at, attempts, error_name, cause].
SEQ, LANE, STEP, EXECUTION, STATUS, ERROR, ERROR_NAME, CAUSE = 0, 1, 2, 3, 4, 9, 13, 14
#: The statuses of the records of compensations (those that ran have had records since count6).
OF_COMPENSATIONS = ("compensation_failed", "compensation_completed")
#: Format 4's header: the number of records it counts.
COUNT_V4 = 16


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, strict_map_key=False)


def failure_records(records: Sequence[bytes]) -> list[list[Any]]:
    """The stored "compensation_failed" records, in seq order, as their fields."""
    return [f for f in map(unpack, records) if f[STATUS] == "compensation_failed"]


def execution_id(fields: list[Any]) -> str:
    lane, step, execution = fields[LANE], fields[STEP], fields[EXECUTION]
    return f"{lane}/{step}#{execution}" if lane else f"{step}#{execution}"


async def load(factory: Callable[[], Adapter], iid: str) -> tuple[bytes, bytes, list[bytes]]:
    """(header, start, records) of ``iid`` as storage holds them (no engine open on it)."""
    adapter = factory()
    await adapter.open()
    try:
        stored = await adapter.load(iid)
    finally:
        await adapter.close()
    assert stored is not None
    return bytes(stored.header), bytes(stored.start or b""), [bytes(r) for r in stored.records]


def views_agree(*views: tf.WorkflowInstance | None) -> None:
    """What callers see of one instance is the same in every view."""
    first = views[0]
    assert first is not None
    for other in views[1:]:
        assert other is not None
        assert other.history == first.history
        assert other.compensation_errors == first.compensation_errors
        assert other.compensated_steps == first.compensated_steps
        assert (other.status, other.error, other.failed_step, other.children) == (
            first.status, first.error, first.failed_step, first.children)


def no_failure_rows_in_views(inst: tf.WorkflowInstance) -> None:
    assert all(r.status != "compensation_failed" for r in inst.history), "history lists executions only"
    assert all(r.status != "compensation_failed" for r in inst.step_results.values())


# -- generated loops with branches, map items and children, across restarts -----------------------


class Shape(LoopShape):
    """Workflow "counted": pass "count", the body's steps ``s0``.. (each compensable or not),
    maybe parallel "fan" (branch a's "pa" compensable, branch b's "pb" compensable or not),
    maybe map "each" over two items (item step "it", compensable), maybe child step "kid"
    (workflow "kid": compensable "k" returning "kid-<turn>"), back to "count" until it ran
    ``times`` turns, then a failing "charge". Every compensable execution's output is the key
    its compensation is known by (its execution id; a child's "kid-<turn>")."""

    def __init__(self, times: int, body: list[bool], fan: tuple[bool, bool] | None, each: bool, kid: bool) -> None:
        super().__init__(times, body, fan)
        self.each, self.kid = each, kid

    def compensable(self) -> set[str]:
        return super().compensable() | ({"it"} if self.each else set()) | ({"kid"} if self.kid else set())

    def keys(self) -> list[str]:
        """The key of every compensable execution."""
        out = self.executions()
        for turn in range(1, self.times + 1):
            if self.each:
                out += [f"each/#{i}/it#{turn}" for i in (0, 1)]
            if self.kid:
                out.append(f"kid-{turn}")
        return sorted(out)

    def definitions(self, ledger: Ledger) -> list[tf.WorkflowDefinition]:
        builder = self.body_of(ledger)
        if self.each:
            builder = builder.map("each", items=lambda ctx: [1, 2],
                                  branch=tf.branch("it").step("it", ledger.mark, ledger.release).build())
        if self.kid:
            builder = builder.child("kid", workflow="kid", input=lambda ctx: ctx.steps["count"])
        defs = [loop_back(builder, self.times)]

        async def k(ctx: tf.WorkflowContext) -> str:
            return f"kid-{ctx.input}"
        if self.kid:
            defs.append(tf.workflow("kid").step("k", k, ledger.release).build())
        return defs


@st.composite
def shapes(draw: st.DrawFn) -> tuple[Shape, set[str], list[str]]:
    """A shape, the keys whose compensation fails, and those whose compensation parks once (the
    engine is closed there: a restart in the middle of compensating)."""
    shape = Shape(draw(st.integers(1, 3)), draw(st.lists(st.booleans(), min_size=1, max_size=2)),
                  draw(st.one_of(st.none(), st.tuples(st.booleans(), st.booleans()))),
                  draw(st.booleans()), draw(st.booleans()))
    keys = shape.keys()
    if not keys:
        return shape, set(), []
    fails = draw(st.sets(st.sampled_from(keys)))
    holds = draw(st.lists(st.sampled_from(keys), unique=True, max_size=2))
    return shape, fails, holds


async def run_shape(path: Path, shape: Shape, fails: set[str], holds: list[str]) -> dict[str, Any]:
    ledger = Ledger(hold_undo=holds, undo_fails=fails)
    defs = shape.definitions(ledger)
    restarts = Restarts(lambda: SQLiteAdapter(path))
    iid: str | None = None
    parked: list[tuple[tf.WorkflowInstance | None, tf.WorkflowInstance | None]] = []
    for _ in holds:
        async with restarts.engine(*defs) as engine:
            if iid is None:
                iid = await engine.start("counted")
            with trio.fail_after(10**6):
                await ledger.parked.wait()
            live = await engine.get_instance(iid)  # while compensating, parked
        ledger.parked = trio.Event()
        async with restarts.engine(*defs, resume=False) as engine:
            parked.append((live, await engine.get_instance(iid)))  # as storage has it
    async with restarts.engine(*defs) as engine:
        if iid is None:
            iid = await engine.start("counted")
        waited = await finish(engine, iid)
        asked = await engine.get_instance(iid)
    async with restarts.engine(*defs, resume=False) as engine:
        later = await engine.get_instance(iid)
        children = {c: await engine.get_instance(c) for c in waited.children}
    return {"ledger": ledger, "parked": parked, "waited": waited, "asked": asked, "later": later,
            "children": children, "rows": read_rows(path, iid),
            "child_rows": {c: read_rows(path, c) for c in waited.children}}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes())
def test_generated_loops_store_each_failed_compensation_once_newest_first_across_restarts(
        case: tuple[Shape, set[str], list[str]]) -> None:
    shape, fails, holds = case
    with tempfile.TemporaryDirectory() as tmp:
        got = tf.testing.run(run_shape, Path(tmp) / "flows.db", shape, fails, holds)
    inst: tf.WorkflowInstance = got["later"]
    compensable = shape.compensable()
    views_agree(got["waited"], got["asked"], inst)
    for live, stored in got["parked"]:
        views_agree(live, stored)
    no_failure_rows_in_views(inst)
    assert (inst.status, inst.failed_step) == ("failed", "charge")

    done = [r for r in inst.history if r.step_name in compensable and r.status in ("completed", "compensated")]
    assert sorted(r.output for r in done) == shape.keys(), "every compensable execution has its record"
    newest_first = [r.output for r in reversed(done)]
    undone = got["ledger"].undone()
    assert [result for _, result in undone] == newest_first, "each compensation ran once, newest first"

    # What the views say of each execution.
    for r in inst.history:
        if r.step_name not in compensable or r.status == "started":
            assert r.compensation_error is None and r.status != "compensated", r
        elif r.output in fails:
            assert r.status == "completed" and r.compensation_error is not None, r
            assert f"cannot release {r.output}" in r.compensation_error
            if r.step_name == "kid":
                assert r.compensation_error.startswith("ChildCompensationError: ")
            else:
                assert r.compensation_error == f"RuntimeError: cannot release {r.output}"
        else:
            assert (r.status, r.compensation_error) == ("compensated", None), r
    assert inst.compensated_steps == tuple(r.step_name for r in reversed(done) if r.output not in fails)
    newest_failing: dict[str, str] = {}
    for r in done:
        if r.output in fails:
            newest_failing[r.step_name] = r.compensation_error or ""
    assert inst.compensation_errors == newest_failing

    # What the SQLite file holds: each failure once, newest first, after every execution.
    header, _, records = got["rows"]
    stored = failure_records(records)
    by_id = {r.id: r for r in done}
    assert [execution_id(f) for f in stored] == [r.id for r in reversed(done) if r.output in fails]
    for f in stored:
        compensated = by_id[execution_id(f)]
        assert f[ERROR] == compensated.compensation_error
        assert f"{f[ERROR_NAME]}: {f[CAUSE]}" == f[ERROR]
    executions = [unpack(r) for r in records if unpack(r)[STATUS] not in OF_COMPENSATIONS]
    assert len(executions) == len(inst.history), "one record per execution, plus one per compensation"
    assert all(f[SEQ] > max(e[SEQ] for e in executions) for f in stored)
    # (Since count6: each compensation that ran has a record too, newest first, interleaved.)
    handled = [execution_id(f) for f in map(unpack, records) if f[STATUS] in OF_COMPENSATIONS]
    assert handled == [r.id for r in reversed(done)], "one record per compensation, newest first"
    assert unpack(header)[COUNT_V4] == len(records)
    # Each child undone as a unit keeps its own failure, once.
    for child_id, child in got["children"].items():
        assert child is not None and child.status == "compensated", child
        (k,) = child.history
        child_failures = failure_records(got["child_rows"][child_id][2])
        if k.output in fails:
            assert [(f[STEP], f[ERROR]) for f in child_failures] == [("k", f"RuntimeError: cannot release {k.output}")]
            assert child.compensation_errors == {"k": f"RuntimeError: cannot release {k.output}"}
        else:
            assert child_failures == [] and child.compensated_steps == ("k",)


# -- events, to_dict, listings and purge, on MemoryAdapter and SQLite -----------------------------


async def test_events_json_listings_and_purge_of_an_instance_whose_compensations_failed(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    ledger = Ledger(undo_fails={1, 3})
    wf = looping(ledger, 3, fails=True)
    restarts = Restarts(storage)
    events: list[dict[str, Any]] = []
    async with restarts.engine(wf) as engine:
        engine.events.on("workflow.*", events.append)
        iid = await engine.start("loop")
        waited = await finish(engine, iid)
        await trio.sleep(1)
    compensated = [e for e in events if e["event"] == "workflow.step.compensated"]
    assert [e["step_name"] for e in compensated] == ["reserve"], "only the release that worked is announced"
    assert [e["event"] for e in events].count("workflow.failed") == 1
    # Each release that failed is announced as such (since 2026-12-06), once; no other event
    # shows the failure records' own status.
    failed = [e for e in events if e["event"] == "workflow.step.compensation_failed"]
    assert [(e["execution_id"], e["error"]) for e in failed] == [
        ("reserve#3", "RuntimeError: cannot release 3"), ("reserve#1", "RuntimeError: cannot release 1")]
    assert "compensation_failed" not in json.dumps([e for e in events if e not in failed], default=str)
    _, _, records = await load(storage, iid)
    assert [(execution_id(f), f[ERROR]) for f in failure_records(records)] == [
        ("reserve#3", "RuntimeError: cannot release 3"), ("reserve#1", "RuntimeError: cannot release 1")]
    assert len(records) == 7 + 3, "and reserve#2's, whose release ran (since count6)"

    async with restarts.engine(wf, resume=False) as engine:
        stored = await engine.get_instance(iid)
        listed = await engine.get_instances("loop", status="failed")
        newest = await engine.get_instances(order="newest")
        views_agree(waited, stored, *listed, *newest)
        assert [i.id for i in listed] == [iid]
        assert stored is not None
        doc = json.loads(json.dumps(stored.to_dict()))
        assert doc["compensation_errors"] == {"reserve": "RuntimeError: cannot release 3"}
        assert doc["compensated_steps"] == ["reserve"]
        assert [(h["id"], h["status"], h["compensation_error"]) for h in doc["history"] if h["step_name"] == "reserve"] \
            == [("reserve#1", "completed", "RuntimeError: cannot release 1"), ("reserve#2", "compensated", None),
                ("reserve#3", "completed", "RuntimeError: cannot release 3")]
        assert all(h["status"] != "compensation_failed" for h in doc["history"])
        assert doc["step_results"]["reserve"]["compensation_error"] == "RuntimeError: cannot release 3"
        await trio.sleep(3600)
        assert await engine.purge(older_than=60) == 1
        assert await engine.get_instance(iid) is None
        assert await engine.get_instances() == []
    adapter = storage()
    await adapter.open()
    try:
        assert await adapter.load(iid) is None, "purged with its records, failures included"
    finally:
        await adapter.close()


# -- compensations that time out, retry, or fail with odd errors ----------------------------------


def slow_release_loop(log: list[int], gate: trio.Event, *, hang_on: int, times: int = 3) -> tf.WorkflowDefinition:
    """Workflow "slow": reserve (counting 1, 2, ...) ``times`` times, then a failing charge;
    the release of ``hang_on`` outlives the workflow's 5-second compensation timeout (``gate``
    is set as it starts)."""
    async def reserve(ctx: tf.WorkflowContext) -> int:
        return int(ctx.steps.get("reserve") or 0) + 1

    async def release(ctx: tf.WorkflowContext, result: int) -> None:
        log.append(result)
        if result == hang_on:
            gate.set()
            await trio.sleep(3600)

    async def charge(ctx: tf.WorkflowContext) -> None:
        raise Failed("card declined")
    return (tf.workflow("slow").step("reserve", reserve, release)
            .choice("again", choices=[tf.when(lambda ctx: ctx.steps["reserve"] < times, next="reserve")],
                    default="charge")
            .step("charge", charge).with_compensation_timeout(5).build())


async def test_a_compensation_that_times_out_across_a_restart_is_one_record(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """The engine closes while the hanging release runs; the next engine runs it again, it
    times out, and its failure is stored once; the releases around it run."""
    db = tmp_path / "flows.db"
    log: list[int] = []
    gate = trio.Event()
    restarts = Restarts(lambda: SQLiteAdapter(db))
    wf = slow_release_loop(log, gate, hang_on=2)
    async with restarts.engine(wf) as engine:
        iid = await engine.start("slow")
        with trio.fail_after(10**6):
            await gate.wait()
        while_hanging = await engine.get_instance(iid)
    assert while_hanging is not None and while_hanging.compensation_errors == {}
    async with restarts.engine(wf) as engine:
        started = trio.current_time()
        waited = await finish(engine, iid)
        took = trio.current_time() - started
    async with restarts.engine(wf, resume=False) as engine:
        later = await engine.get_instance(iid)
    views_agree(waited, later)
    assert log == [3, 2, 2, 1], "the release in flight at the close ran again, the others once"
    assert 5 <= took < 60, "bounded by the compensation timeout, not the release's hour"
    error = "CompensationTimeoutError: compensation of step 'reserve' did not finish within 5 s"
    assert waited.compensation_errors == {"reserve": error}
    assert waited.compensated_steps == ("reserve", "reserve")
    assert [(r.id, r.status, r.compensation_error) for r in waited.history if r.step_name == "reserve"] == [
        ("reserve#1", "compensated", None), ("reserve#2", "completed", error), ("reserve#3", "compensated", None)]
    stored = failure_records(read_rows(db, iid)[2])
    assert [(execution_id(f), f[ERROR], f[ERROR_NAME]) for f in stored] == [
        ("reserve#2", error, "CompensationTimeoutError")]


async def test_a_retried_compensation_that_fails_every_attempt_is_stored_once(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    calls: list[tuple[str, int]] = []

    async def reserve(ctx: tf.WorkflowContext) -> int:
        return int(ctx.steps.get("reserve") or 0) + 1

    async def release(ctx: tf.WorkflowContext, result: int) -> None:
        info = tf.current_step()
        calls.append((info.execution_id, info.attempt))
        if result == 2:
            raise Failed(f"attempt {info.attempt} refused")

    async def charge(ctx: tf.WorkflowContext) -> None:
        raise Failed("card declined")
    wf = (tf.workflow("retrying").step("reserve", reserve, release, retry=tf.Retry(max_attempts=3, interval=2.0))
          .choice("again", choices=[tf.when(lambda ctx: ctx.steps["reserve"] < 3, next="reserve")], default="charge")
          .step("charge", charge).build())
    restarts = Restarts(storage)
    inst = await restarts.run(None, wf)
    assert calls == [("reserve#3", 1), ("reserve#2", 1), ("reserve#2", 2), ("reserve#2", 3), ("reserve#1", 1)]
    assert inst.compensation_errors == {"reserve": "Failed: attempt 3 refused"}
    _, _, records = await load(storage, inst.id)
    assert [(execution_id(f), f[ERROR]) for f in failure_records(records)] == [
        ("reserve#2", "Failed: attempt 3 refused")], "one record for the compensation, not one per attempt"


class Halt(BaseException):
    """Not an Exception."""


ODD_ERRORS: dict[str, Callable[[], BaseException]] = {
    "base-exception": lambda: Halt("stop: now"),
    "colon-in-class-name": lambda: type("Bad name: x", (Exception,), {})("a: b: c"),
    "unicode-and-surrogate": lambda: RuntimeError("заказ ü 😀 e\u0301 \udc80 tab\there"),
    "multiline": lambda: ValueError("line one\nline two: more"),
    "group": lambda: ExceptionGroup("several", [ValueError("v"), KeyError("k")]),
    "empty": lambda: RuntimeError(),
    "one-megabyte": lambda: RuntimeError("x" * 2**20),
}


def odd(make_error: Callable[[], BaseException], log: list[str]) -> tf.WorkflowDefinition:
    """Workflow "odd": "first" (its release logs), "a" (its release raises ``make_error()``),
    "c" fails."""
    async def step(ctx: tf.WorkflowContext) -> str:
        return tf.current_step().execution_id

    async def release(ctx: tf.WorkflowContext, result: str) -> None:
        log.append(result)

    async def broken(ctx: tf.WorkflowContext, result: str) -> None:
        log.append(result)
        raise make_error()

    async def c(ctx: tf.WorkflowContext) -> None:
        raise Failed("card declined")
    return tf.workflow("odd").step("first", step, release).step("a", step, broken).step("c", c).build()


@pytest.mark.parametrize("kind", sorted(ODD_ERRORS))
async def test_an_odd_compensation_error_reads_back_as_it_was_shown_and_the_header_stays_small(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str) -> None:
    db = tmp_path / "flows.db"
    restarts = Restarts(lambda: SQLiteAdapter(db))
    log: list[str] = []
    wf = odd(ODD_ERRORS[kind], log)
    plain = odd(lambda: RuntimeError("x"), [])
    async with restarts.engine(wf) as engine:
        waited = await finish(engine, await engine.start("odd", instance_id="odd-one"))
        live = await engine.get_instance("odd-one")
    async with restarts.engine(wf, resume=False) as engine:
        later = await engine.get_instance("odd-one")
        listed = await engine.get_instances("odd")
    async with restarts.engine(plain) as engine:
        await finish(engine, await engine.start("odd", instance_id="odd-two"))
    views_agree(waited, live, later, *listed)
    assert later is not None
    assert log == ["a#1", "first#1"], "the failing compensation did not stop the one before it"
    assert later.compensated_steps == ("first",)
    error = later.compensation_errors["a"]
    assert error and later.step_results["a"].compensation_error == error
    json.dumps(later.to_dict())
    header, _, records = read_rows(db, "odd-one")
    (stored,) = failure_records(records)
    assert (execution_id(stored), stored[ERROR]) == ("a#1", error)
    name, cause = stored[ERROR_NAME], stored[CAUSE]
    assert (f"{name}: {cause}" if cause else name) == error, "the name and the cause say the error"
    assert len(header) <= len(read_rows(db, "odd-two")[0]) + 8, "the error is in its record, not the header"


# -- damaged failure records are refused, and left as they are ------------------------------------


def pack(fields: Any) -> bytes:
    packed: bytes = msgpack.packb(fields)
    return packed


def failure_of(seq: int, execution: int, error: Any = "RuntimeError: made up") -> list[Any]:
    """A "compensation_failed" record at ``seq`` for reserve's ``execution``."""
    return [seq, "", "reserve", execution, "compensation_failed", False, None, None, None, error, None, 1.0, 0,
            "RuntimeError", "made up"]


Damage = Callable[[list[Any], list[list[Any]]], tuple[list[Any], dict[int, list[Any]], list[list[Any]]]]


def of_no_execution(header: list[Any], records: list[list[Any]]) -> Any:
    """Appended: the failure of reserve#9, which never ran."""
    return header, {}, [failure_of(len(records), 9)]


def twice(header: list[Any], records: list[list[Any]]) -> Any:
    """Appended: reserve#3's failure again (its first is stored already)."""
    (first,) = [r for r in records if r[STATUS] == "compensation_failed"]
    return header, {}, [[len(records), *first[1:]]]


def non_string_error(header: list[Any], records: list[list[Any]]) -> Any:
    """Appended: the failure of reserve#4 (released) with an int for its error."""
    return header, {}, [failure_of(len(records), 4, 42)]


def also_in_a_format_3_header(header: list[Any], records: list[list[Any]]) -> Any:
    """The header rewritten as format 3 wrote it, its errors in it, the records kept."""
    (first,) = [r for r in records if r[STATUS] == "compensation_failed"]
    old = [*header[:13], {4: first[ERROR]}, *header[13:]]
    old[1] = 3
    return old, {}, []


def before_its_execution(header: list[Any], records: list[list[Any]]) -> Any:
    """Record 3 (again#2) replaced by the failure of reserve#4, which is record 6."""
    assert (records[3][STEP], records[6][STEP], records[6][EXECUTION]) == ("again", "reserve", 4)
    return header, {3: failure_of(3, 4)}, []


#: Damages made through the adapter's own calls (any adapter), and those only an edit of the
#: SQLite file makes (a stored record rewritten).
APPENDED = [of_no_execution, twice, non_string_error, also_in_a_format_3_header]
REWRITTEN = [before_its_execution]
#: Why each is refused.
REFUSED = {
    # ({last}: the appended record's seq, since count6 after the records of the compensations
    # that ran too.)
    "of_no_execution": "step record {last} records a failed compensation of no completed execution",
    "twice": "step record {last} records a failed compensation of no completed execution",
    "non_string_error": "step record {last} records a failed compensation of no completed execution",
    "also_in_a_format_3_header": "compensation errors both in the header and in records",
    "before_its_execution": "step record 3 records a failed compensation of no completed execution",
}


async def damage_through_adapter(factory: Callable[[], Adapter], iid: str, damage: Damage) -> None:
    adapter = factory()
    await adapter.open()
    try:
        stored = await adapter.load(iid)
        assert stored is not None
        header, replaced, appended = damage(unpack(stored.header), [unpack(r) for r in stored.records])
        assert not replaced
        if header[1] == 4:
            header[COUNT_V4] = len(stored.records) + len(appended)
        await adapter.checkpoint(iid, stored.status, pack(header), [pack(r) for r in appended],
                                 first_seq=len(stored.records))
    finally:
        await adapter.close()


def damage_sqlite_file(db: Path, iid: str, damage: Damage) -> None:
    header_bytes, _, records = read_rows(db, iid)
    header, replaced, appended = damage(unpack(header_bytes), [unpack(r) for r in records])
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE trioflow_instances SET header = ? WHERE instance_id = ?", (pack(header), iid))
        for seq, fields in replaced.items():
            conn.execute("UPDATE trioflow_records SET data = ? WHERE instance_id = ? AND seq = ?", (pack(fields), iid, seq))
        assert not appended
    conn.close()


def storage_of(kind: str, tmp_path: Path) -> Callable[[], Adapter]:
    """Adapters on one storage, as a restart gets them (see ``storages.storage``)."""
    if kind == "memory":
        memory = MemoryAdapter()
        return lambda: memory
    return lambda: SQLiteAdapter(tmp_path / "flows.db")


def on_a_step_never_compensated(header: list[Any], records: list[list[Any]]) -> Any:
    """Appended: a failed compensation of again#3, an execution of the choice "again", which
    has no compensation and is not among the steps the header's cursor says were handled."""
    assert records[5][STEP] == "again" and "again" not in header[12]
    failure = failure_of(len(records), 3)
    failure[STEP] = "again"
    return header, {}, [failure]


# A record naming a completed execution of a step that has no compensation and is not among the
# header's compensated names (was accepted until the review: the views showed compensation_errors
# {'again': ...} for a choice step).
REFUSED["on_a_step_never_compensated"] = "failed compensation"


async def damaged_rows_are_refused(kind: str, tmp_path: Path, damage: Damage) -> None:
    storage = storage_of(kind, tmp_path)
    ledger = Ledger(undo_fails={3})
    wf = looping(ledger, 4, fails=True)
    restarts = Restarts(storage)
    async with restarts.engine(wf) as engine:
        finished = await finish(engine, await engine.start("loop", instance_id="finished"))
        ledger.hold_undo = {2}  # the next instance parks releasing reserve#2: stored compensating
        await engine.start("loop", instance_id="compensating")
        with trio.fail_after(10**6):
            await ledger.parked.wait()
    assert finished.compensation_errors == {"reserve": "RuntimeError: cannot release 3"}
    ledger.log.clear()
    for iid in ("finished", "compensating"):
        if damage in REWRITTEN:
            damage_sqlite_file(tmp_path / "flows.db", iid, damage)
        else:
            await damage_through_adapter(storage, iid, damage)
    before = {iid: await load(storage, iid) for iid in ("finished", "compensating")}

    async with restarts.engine(wf) as engine:
        healthy = await finish(engine, await engine.start("loop", instance_id="healthy"))
        seen = {iid: await finish(engine, iid) for iid in ("finished", "compensating")}
        got = {iid: await engine.get_instance(iid) for iid in ("finished", "compensating")}
        listed = {i.id: i for i in await engine.get_instances()}
    for iid in ("finished", "compensating"):
        for inst in (seen[iid], got[iid], listed[iid]):
            assert inst is not None and (inst.status, inst.error_name) == ("failed", "SnapshotDecodeError"), (
                iid, inst.error_name, inst.compensation_errors)
            refused = REFUSED[damage.__name__].format(last=len(before[iid][2]) - 1)
            assert inst.cause and refused in inst.cause, inst.cause
        assert await load(storage, iid) == before[iid], "an unreadable row's bytes are left untouched"
    assert healthy.status == "failed" and healthy.compensation_errors == {"reserve": "RuntimeError: cannot release 3"}
    assert [result for _, result in ledger.undone()] == [4, 3, 2, 1], "only the healthy instance compensated"


@pytest.mark.parametrize(("kind", "damage"), [
    *[(k, d) for d in APPENDED for k in ("memory", "sqlite")],
    *[("sqlite", d) for d in REWRITTEN],
    *[(k, on_a_step_never_compensated) for k in ("memory", "sqlite")],
], ids=lambda v: getattr(v, "__name__", v))
def test_a_damaged_failure_record_fails_its_instance_alone_and_is_left_untouched(
        tmp_path: Path, kind: str, damage: Damage) -> None:
    tf.testing.run(damaged_rows_are_refused, kind, tmp_path, damage)


# -- the format-2 and format-3 fixtures, opened again and again ------------------------------------


V2_COMPENSATING = FIXTURES / "v2_compensating.db"
V3_COMPENSATING = FIXTURES / "v3_compensating.db"
FIXTURE_ERROR = "Failed: cannot release 3"


def fixture_rows(db: Path) -> dict[str, tuple[bytes, bytes, list[bytes]]]:
    return {iid: read_rows(db, iid) for iid in ("failed-1", "done-1", "mid-1")}


@pytest.mark.parametrize(("fixture", "version"), [(V2_COMPENSATING, 2), (V3_COMPENSATING, 3)], ids=["v2", "v3"])
async def test_an_older_header_s_error_is_stored_once_however_often_the_database_is_reopened(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, fixture: Path, version: int) -> None:
    """mid-1 (stopped releasing reserve#2, reserve#3's release failed, in its header) is resumed
    three times: stopped in its first compensation (before it stores it), stopped after one
    compensation is stored (the converted error with it), then to its end; each open reads the
    header's error from wherever it is, and it is stored once."""
    db = tmp_path / "flows.db"
    shutil.copy(fixture, db)
    restarts = Restarts(lambda: SQLiteAdapter(db))
    released: list[int] = []
    original = fixture_rows(db)

    # 1. Parked releasing reserve#2, the first compensation it resumes with: nothing stored.
    hold = trio.Event()
    async with restarts.engine(fixture_loop(released, hold)) as engine:
        with trio.fail_after(10**6):
            await hold.wait()
        first = await engine.get_instance("mid-1")
    assert released == []
    # 2. reserve#2 released (a checkpoint: the conversion is stored with it), parked on reserve#1.
    gate = trio.Event()
    async with restarts.engine(fixture_loop(released, gate, park_on=1)) as engine:
        with trio.fail_after(10**6):
            await gate.wait()
        second = await engine.get_instance("mid-1")
    assert released == [2]
    middle = read_rows(db, "mid-1")
    # 3. To its end.
    async with restarts.engine(fixture_loop(released)) as engine:
        ended = await finish(engine, "mid-1")
    assert released == [2, 1], "each release once; reserve#3's failed before, and is not run again"
    # 4. Read only.
    async with restarts.engine(fixture_loop(released), resume=False) as engine:
        later = {iid: await engine.get_instance(iid) for iid in ("mid-1", "failed-1", "done-1")}
        listed = {i.id: i for i in await engine.get_instances("loop")}
    final = fixture_rows(db)

    for inst in (first, second):
        assert inst is not None and inst.status == "running"
        assert inst.compensation_errors == {"reserve": FIXTURE_ERROR}
        assert [r.compensation_error for r in inst.history if r.step_name == "reserve"] == [
            None, None, FIXTURE_ERROR, None]
    views_agree(ended, later["mid-1"], listed["mid-1"])
    views_agree(later["failed-1"], listed["failed-1"])
    for inst in (ended, later["failed-1"]):
        assert inst is not None and inst.compensated_steps == ("reserve",) * 3
        assert [(r.id, r.status, r.compensation_error) for r in inst.history if r.step_name == "reserve"] == [
            ("reserve#1", "compensated", None), ("reserve#2", "compensated", None),
            ("reserve#3", "completed", FIXTURE_ERROR), ("reserve#4", "compensated", None)]
        no_failure_rows_in_views(inst)

    header, _, records = final["mid-1"]
    # (Since count6 the compensations that ran have records too: reserve#4's, converted from the
    # header with the error, reserve#2's with that checkpoint, reserve#1's at the end.)
    assert len(middle[2]) == 12 and middle[2] == records[:12], "stored by the checkpoint after the conversion, once"
    assert [(execution_id(f), f[SEQ], f[ERROR], f[ERROR_NAME], f[CAUSE]) for f in failure_records(records)] == [
        ("reserve#3", 10, FIXTURE_ERROR, "Failed", "cannot release 3")]
    assert [(execution_id(f), f[STATUS]) for f in map(unpack, records[9:])] == [
        ("reserve#4", "compensation_completed"), ("reserve#3", "compensation_failed"),
        ("reserve#2", "compensation_completed"), ("reserve#1", "compensation_completed")]
    assert records[:9] == original["mid-1"][2], "the records the older release wrote are never rewritten"
    assert unpack(header)[1] == 4 and unpack(header)[COUNT_V4] == 13
    assert unpack(middle[0])[1] == 4
    for iid in ("failed-1", "done-1"):
        assert final[iid] == original[iid], "a finished row is read as it is, never rewritten"
        assert unpack(final[iid][0])[1] == version


# -- the crash explorer on workflows whose compensations fail ------------------------------------


def undo_jobs(fails: set[str]) -> dict[str, Any]:
    """Jobs "mark" (its output is its execution id) and "undo" (fails for the outputs in
    ``fails``, the same way each time it is called: idempotent, as the explorer demands)."""
    async def mark(ctx: tf.WorkflowContext) -> str:
        return tf.current_step().execution_id

    async def undo(ctx: tf.WorkflowContext, result: str) -> None:
        if result in fails:
            raise RuntimeError(f"cannot undo {result}")
    return {"mark": mark, "undo": undo}


def explored(times: int, body: int, fan: bool, each: bool) -> tf.WorkflowDefinition:
    builder = counter()
    for i in range(body):
        builder = builder.step(f"s{i}", "mark", "undo")
    if fan:
        builder = builder.parallel("fan", branches=[tf.branch("a").step("pa", "mark", "undo").build(),
                                                    tf.branch("b").step("pb", "mark").build()])
    if each:
        builder = builder.map("each", items=lambda ctx: [1, 2], branch=tf.branch("it").step("it", "mark", "undo").build())
    return loop_back(builder, times)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(times=st.integers(1, 2), body=st.integers(1, 2), fan=st.booleans(), each=st.booleans(), data=st.data())
def test_the_crash_explorer_finds_no_divergence_where_compensations_fail(
        times: int, body: int, fan: bool, each: bool, data: st.DataObject) -> None:
    keys = [f"s{i}#{t}" for i in range(body) for t in range(1, times + 1)]
    keys += [f"fan/a/pa#{t}" for t in range(1, times + 1)] if fan else []
    keys += [f"each/#{i}/it#{t}" for i in (0, 1) for t in range(1, times + 1)] if each else []
    fails = data.draw(st.sets(st.sampled_from(sorted(keys)), min_size=1))
    wf = explored(times, body, fan, each)

    async def main() -> Any:
        return await explore_crashes(wf, {}, jobs=undo_jobs(fails))  # raises on a divergence
    report = tf.testing.run(main)
    base = report.baseline
    assert base.status == "failed" and not report.divergent
    assert len(report.points) == 2 * report.writes
    failing = {r.output for r in base.history if r.compensation_error is not None}
    assert failing == fails
    for point in report.points:
        assert {r.output for r in point.outcome.history if r.compensation_error is not None} == fails, point.after
    assert any("failed for good" in p.after for p in report.points), "a failure's own write is a crash point"


def family(fails_in_kid: bool) -> tuple[tf.WorkflowDefinition, tf.WorkflowDefinition]:
    """Parent "parent": child step "kid" (workflow "kid": "k", compensated by "undo-k", which
    fails if ``fails_in_kid``), "own" (compensated), then "charge", which fails."""
    kid = tf.workflow("kid").task("k", job="k", compensate="undo-k").build()
    parent = (tf.workflow("parent").child("kid", workflow="kid").task("own", job="own", compensate="undo-own")
              .task("charge", job="charge").build())
    return parent, kid


def family_jobs(fails_in_kid: bool) -> dict[str, Any]:
    async def k(data: Any) -> str:
        return "K"

    async def undo_k(result: Any) -> None:
        if fails_in_kid:
            raise RuntimeError("cannot undo k")

    async def own(data: Any) -> str:
        return "O"

    async def undo_own(result: Any) -> None:
        return None

    async def charge(data: Any) -> None:
        raise Failed("card declined")
    return {"k": k, "undo-k": undo_k, "own": own, "undo-own": undo_own, "charge": charge}


# A child compensated as a unit whose own compensation failed is stored 'compensated' first, and
# only then does its parent store the record of its child step's failed compensation. Until the
# review, a parent whose write did not happen (a crash, storage unavailable past
# storage_retry_for) asked for the undo again after the restart and took the already
# 'compensated' child as undone whole: its compensation_errors lost the child's failure.


def test_a_crash_after_a_child_s_failed_undo_keeps_the_failure_in_its_parent() -> None:
    parent, kid = family(fails_in_kid=True)

    async def main() -> Any:
        return await explore_crashes(parent, {}, jobs=family_jobs(True), also=[kid], check=False)
    report = tf.testing.run(main)
    base = report.baseline
    assert (base.compensated_steps, base.compensation_errors) == (("own",), ("kid",))
    for point in report.points:
        got = point.outcome
        assert (got.compensated_steps, got.compensation_errors) == (("own",), ("kid",)), (
            f"crash after write {point.write} ({point.after}, lost={point.lost}): {point.divergence}")


class StorageBlip(MemoryAdapter):
    """A MemoryAdapter whose first checkpoint of ``parent`` that stores a failed compensation
    raises StorageUnavailableError (a disk hiccup) without writing anything."""

    def __init__(self, parent: str) -> None:
        super().__init__()
        self.parent, self.armed = parent, True

    async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Sequence[bytes],
                         **options: Any) -> int | None:
        if self.armed and instance_id == self.parent and failure_records(records):
            self.armed = False
            raise tf.StorageUnavailableError("disk hiccup")
        result: int | None = await super().checkpoint(instance_id, status, header, records, **options)
        return result


async def blip_after_a_child_s_failed_undo() -> tuple[tf.WorkflowInstance, tf.WorkflowInstance | None]:
    """Parent "p" (child step "kid", whose child's only compensation fails; "own"; a failing
    "charge"); its checkpoint storing the child step's failed compensation meets a storage
    blip (``storage_retry_for=0``: it stops, resumable), and the next engine resumes it."""
    async def k(ctx: tf.WorkflowContext) -> str:
        return "K"

    async def undo_k(ctx: tf.WorkflowContext, result: str) -> None:
        raise RuntimeError("cannot undo k")

    async def own(ctx: tf.WorkflowContext) -> str:
        return "O"

    async def undo_own(ctx: tf.WorkflowContext, result: str) -> None:
        return None

    async def charge(ctx: tf.WorkflowContext) -> None:
        raise Failed("card declined")
    kid = tf.workflow("kid").step("k", k, undo_k).build()
    parent = tf.workflow("parent").child("kid", workflow="kid").step("own", own, undo_own).step("charge", charge).build()
    memory = StorageBlip("p")
    restarts = Restarts(lambda: memory)
    async with restarts.engine(parent, kid, storage_retry_for=0) as engine:
        await engine.start("parent", instance_id="p")
        with pytest.raises(tf.StorageUnavailableError), trio.fail_after(10**6):
            await engine.wait("p")
    async with restarts.engine(parent, kid) as engine:
        inst = await finish(engine, "p")
        child = await engine.get_instance(inst.children[0])
    return inst, child


def test_a_storage_blip_after_a_child_s_failed_undo_keeps_the_failure_in_its_parent() -> None:
    inst, child = tf.testing.run(blip_after_a_child_s_failed_undo)
    assert child is not None and (child.status, child.compensation_errors) == (
        "compensated", {"k": "RuntimeError: cannot undo k"})
    assert inst.status == "failed"
    assert inst.compensated_steps == ("own",), "the child's undo failed: its step is not compensated"
    assert set(inst.compensation_errors) == {"kid"}
    assert "cannot undo k" in inst.compensation_errors["kid"]


def test_the_crash_explorer_on_a_family_whose_child_undoes_cleanly() -> None:
    """The same family with a child whose compensation works: no divergence (the tests above
    are about the failure alone)."""
    parent, kid = family(fails_in_kid=False)

    async def main() -> Any:
        return await explore_crashes(parent, {}, jobs=family_jobs(False), also=[kid])
    report = tf.testing.run(main)
    assert report.baseline.compensated_steps == ("own", "kid") and not report.divergent


# -- a child undone as a unit, its own compensation failing before a restart ----------------------


def two_step_family(ledger: Ledger) -> tuple[tf.WorkflowDefinition, tf.WorkflowDefinition]:
    """Parent "parent": child step "kid" (workflow "kid": "k1" then "k2", each compensated by
    ``ledger``), "own" (compensated), then "charge", which fails."""
    kid = tf.workflow("kid").step("k1", ledger.mark, ledger.release).step("k2", ledger.mark, ledger.release).build()
    parent = (tf.workflow("parent").child("kid", workflow="kid").step("own", ledger.mark, ledger.release)
              .step("charge", charging(True)).build())
    return parent, kid


async def until_parked(engine: tf.Engine, ledger: Ledger) -> str:
    """Start "parent" on ``engine`` and return its id once a ``ledger`` job parks."""
    iid = await engine.start("parent")
    with trio.fail_after(10**6):
        await ledger.parked.wait()
    return iid


async def test_a_child_s_compensation_that_failed_before_a_restart_still_fails_its_parent_s_undo(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """The child's k2 release fails, then its k1 release parks and the engine closes: the next
    engine takes the child's undo up where it stood (k1 only), and the failure stored before the
    restart still makes the parent's child step fail to compensate."""
    db = tmp_path / "flows.db"
    ledger = Ledger(hold_undo={"k1#1"}, undo_fails={"k2#1"})
    parent, kid = two_step_family(ledger)
    restarts = Restarts(lambda: SQLiteAdapter(db))
    async with restarts.engine(parent, kid) as engine:
        iid = await until_parked(engine, ledger)
        parent_live = await engine.get_instance(iid)
        assert parent_live is not None
        (child_id,) = parent_live.children
        child_live = await engine.get_instance(child_id)
    async with restarts.engine(parent, kid, resume=False) as engine:
        parent_stored = await engine.get_instance(iid)
        child_stored = await engine.get_instance(child_id)
    views_agree(parent_live, parent_stored)
    views_agree(child_live, child_stored)
    error = "RuntimeError: cannot release k2#1"
    assert child_stored is not None and child_stored.compensation_errors == {"k2": error}, (
        "the failure is stored as it happens, before the undo ends")
    assert failure_records(read_rows(db, child_id)[2]) and not failure_records(read_rows(db, iid)[2])

    async with restarts.engine(parent, kid) as engine:
        waited = await finish(engine, iid)
        child = await engine.get_instance(child_id)
    async with restarts.engine(parent, kid, resume=False) as engine:
        later = await engine.get_instance(iid)
    views_agree(waited, later)
    assert [result for _, result in ledger.undone()] == ["own#1", "k2#1", "k1#1"], "each undone once, newest first"
    assert child is not None and child.status == "compensated"
    assert child.compensation_errors == {"k2": error} and child.compensated_steps == ("k1",)
    assert waited.compensated_steps == ("own",)
    kid_error = waited.compensation_errors["kid"]
    assert kid_error.startswith("ChildCompensationError: ") and error in kid_error
    assert [(execution_id(f), f[ERROR]) for f in failure_records(read_rows(db, child_id)[2])] == [("k2#1", error)]
    assert [(execution_id(f), f[ERROR_NAME]) for f in failure_records(read_rows(db, iid)[2])] == [
        ("kid#1", "ChildCompensationError")]


# -- a format-1 snapshot whose compensations failed ------------------------------------------------


def v1_snapshot_mid_undo(iid: str) -> bytes:
    """A format-1 snapshot (schema 1, one snapshot per instance) of workflow "v1comp" stopped
    while compensating: c was compensated, b's compensation failed (kept by step name), a is
    still to undo."""
    t = 1_700_000_000.0
    results = {name: ["completed", None, name.upper(), None, t, t, 1] for name in "abc"}
    results["d"] = ["failed", None, None, "Failed: card declined", t, t, 1]
    return pack(["trioflow.instance", 1, iid, "v1comp", "0" * 16, "running", {}, {}, {"": ["d", None]}, results,
                 ["a", "b", "c"], "compensating", "failed", None, "Failed: card declined", "d", ["c"],
                 {"b": "RuntimeError: nope"}, t, t, None, False])


async def test_a_format_1_snapshot_s_failed_compensation_becomes_one_record(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    db = tmp_path / "flows.db"
    shutil.copy(FIXTURES / "v1_flows.db", db)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO trioflow_instances VALUES (?, ?, ?, ?)", ("v1-mid", "v1comp", "running",
                                                                           v1_snapshot_mid_undo("v1-mid")))
    conn.close()
    released: list[str] = []

    async def step(ctx: tf.WorkflowContext) -> str:
        raise AssertionError("no step runs again")

    async def release(ctx: tf.WorkflowContext, result: str) -> None:
        released.append(result)
    wf = (tf.workflow("v1comp").step("a", step, release).step("b", step, release).step("c", step, release)
          .step("d", step).build())
    restarts = Restarts(lambda: SQLiteAdapter(db))
    async with restarts.engine(wf) as engine:
        waited = await finish(engine, "v1-mid")
    rows = read_rows(db, "v1-mid")
    async with restarts.engine(wf) as engine:
        later = await engine.get_instance("v1-mid")
    views_agree(waited, later)
    assert released == ["A"], "only a was left to undo"
    assert waited.compensated_steps == ("c", "a")
    assert waited.compensation_errors == {"b": "RuntimeError: nope"}
    assert [(r.id, r.status, r.compensation_error) for r in waited.history] == [
        ("a#1", "compensated", None), ("b#1", "completed", "RuntimeError: nope"), ("c#1", "compensated", None),
        ("d#1", "failed", None)]
    header, _, records = rows
    # (Since count6 the compensations that ran have records too: c's, converted with b's error
    # and before it, newest first, and a's.)
    assert [(f[SEQ], execution_id(f), f[ERROR]) for f in failure_records(records)] == [(5, "b#1", "RuntimeError: nope")]
    assert [(execution_id(f), f[STATUS]) for f in map(unpack, records[4:])] == [
        ("c#1", "compensation_completed"), ("b#1", "compensation_failed"), ("a#1", "compensation_completed")]
    assert len(records) == 7 and unpack(header)[1] == 4
    assert read_rows(db, "v1-mid") == rows, "a finished row is not rewritten by reading it"


def as_format_3(db: Path, iid: str) -> None:
    """Rewrite ``iid``'s row as the last release of format 3 would have stored it: the failed
    compensations in the header (by the seq of the execution each was for), not in records, and
    the names of the steps handled beside the cursor (no record of a compensation that ran)."""
    header_bytes, _, records = read_rows(db, iid)
    header, fields = unpack(header_bytes), [unpack(r) for r in records]
    executions = [f for f in fields if f[STATUS] not in OF_COMPENSATIONS]
    handled = fields[len(executions):]
    assert all(f[STATUS] in OF_COMPENSATIONS for f in handled), "compensations come after every execution"
    failures = [f for f in handled if f[STATUS] == "compensation_failed"]
    seq_of = {execution_id(f): f[SEQ] for f in executions if f[STATUS] == "completed"}
    header[12] = list(dict.fromkeys(f[STEP] for f in handled))
    old = [*header[:13], {seq_of[execution_id(f)]: f[ERROR] for f in failures}, *header[13:]]
    old[1], old[COUNT_V4 + 1] = 3, len(executions)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE trioflow_instances SET header = ?, next_seq = ? WHERE instance_id = ?",
                     (pack(old), len(executions), iid))
        conn.execute("DELETE FROM trioflow_records WHERE instance_id = ? AND seq >= ?", (iid, len(executions)))
    conn.close()


async def test_a_parent_and_its_child_stopped_mid_undo_under_format_3_store_their_errors_once(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """The parent's "own" release failed, then its child's k2 release, then the child's k1
    release parked and the engine closed; both rows are then made format-3 rows (errors in the
    headers). The next engine resumes the parent, which takes the child's undo up: each error
    becomes one record, stored by its instance's next checkpoint, and the child's still fails the
    parent's child step."""
    db = tmp_path / "flows.db"
    ledger = Ledger(hold_undo={"k1#1"}, undo_fails={"k2#1", "own#1"})
    parent, kid = two_step_family(ledger)
    restarts = Restarts(lambda: SQLiteAdapter(db))
    async with restarts.engine(parent, kid) as engine:
        iid = await until_parked(engine, ledger)
        parked = await engine.get_instance(iid)
    assert parked is not None
    (child_id,) = parked.children
    for row in (iid, child_id):
        as_format_3(db, row)
    async with restarts.engine(parent, kid, resume=False) as engine:
        read_back = await engine.get_instance(iid)
        child_read_back = await engine.get_instance(child_id)
    views_agree(parked, read_back)
    assert child_read_back is not None and child_read_back.compensation_errors == {"k2": "RuntimeError: cannot release k2#1"}

    async with restarts.engine(parent, kid) as engine:
        waited = await finish(engine, iid)
        child = await engine.get_instance(child_id)
    async with restarts.engine(parent, kid, resume=False) as engine:
        later = await engine.get_instance(iid)
    views_agree(waited, later)
    assert [result for _, result in ledger.undone()] == ["own#1", "k2#1", "k1#1"]
    assert child is not None and (child.status, child.compensated_steps) == ("compensated", ("k1",))
    assert child.compensation_errors == {"k2": "RuntimeError: cannot release k2#1"}
    assert waited.compensated_steps == ()
    assert waited.compensation_errors["own"] == "RuntimeError: cannot release own#1"
    assert "cannot release k2#1" in waited.compensation_errors["kid"]
    assert [(execution_id(f), f[ERROR_NAME]) for f in failure_records(read_rows(db, iid)[2])] == [
        ("own#1", "RuntimeError"), ("kid#1", "ChildCompensationError")]
    assert [execution_id(f) for f in failure_records(read_rows(db, child_id)[2])] == ["k2#1"]
    for row in (iid, child_id):
        header = unpack(read_rows(db, row)[0])
        assert header[1] == 4 and header[COUNT_V4] == len(read_rows(db, row)[2])
