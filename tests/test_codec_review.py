"""How instances are encoded, decoded and migrated, from a review (each failed before its fix):
v1 rows whose outputs hold NaN or 1/True resume; errors with lone surrogates are stored; a
history past 256 MiB is viewed; damaged rows (a malformed wait or skipped list, a header
damaged into TEXT) and a newer release's signal fail alone, left untouched; ints outside 64
bits and too-deep or tuple-keyed shared data are refused at once, named.

fixtures/v1_review.db was written by trioflow's previous release (commit c0163ee, SQLite schema 1,
snapshot format 1) with fixtures/make_v1_review.py, as tests/fixtures/v1_flows.db was made.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest
import trio
import trio.testing

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "fixtures"))

import trioflow as tf  # noqa: E402
from trioflow._codec import decode_stored, encode_header  # noqa: E402

from v1_review_workflows import definitions, jobs  # noqa: E402
from storages import engine_on, finish, returning  # noqa: E402
from test_engine import Jobs, three_steps  # noqa: E402

V1_REVIEW = HERE / "fixtures" / "v1_review.db"


async def left_in_b(adapter: tf.adapters.Adapter, *ids: str) -> None:
    """Leave instances stored as running, inside step ``b``, as a killed engine would."""
    async with tf.open_engine(adapter=adapter) as engine:
        Jobs(b_hangs=True).register(engine)
        engine.register(three_steps())
        for iid in ids:
            await engine.start("w", {"id": iid}, instance_id=iid)
        await trio.sleep(1)


def v1_copy(tmp_path: Path) -> Path:
    db = tmp_path / "flows.db"
    shutil.copy(V1_REVIEW, db)
    return db


def register_review(engine: tf.Engine) -> None:
    for name, job in jobs(False).items():
        engine.jobs.register(name, job)
    for definition in definitions():
        engine.register(definition)


# -- a database of the previous release (schema 1, format 1) -------------------------------------


async def test_v1_instances_whose_last_output_holds_a_nan_resume_and_read_back(
    tmp_path: Path, autojump_clock: trio.testing.MockClock,
) -> None:
    """The previous release stored a running instance whose step ``a`` returned
    ``{"score": nan}`` (it is inside step b), and a completed one whose output holds a NaN.
    docs/adapters.md: the migrated file's running instances resume and finish. Observed: both
    are reported failed with 'lane '' holds an output no completed step produced'
    (_codec._state_v1 finds a lane's last record by ``r.output == lane_output``; NaN != NaN)."""
    db = v1_copy(tmp_path)
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        register_review(engine)
        running = await finish(engine, "nanwf-1")
        done = await engine.get_instance("nanwf-1")
        completed = await engine.get_instance("nandone-1")
    assert running.status == "completed", running.error
    assert math.isnan(running.step_results["a"].output["score"]), "the step completed under the old release is kept"
    assert done is not None and done.status == "completed"
    assert completed is not None and completed.status == "completed", completed.error if completed else None
    assert math.isnan(completed.output["score"])


async def test_a_v1_parallel_branch_output_keeps_its_type_across_the_migration(
    tmp_path: Path, autojump_clock: trio.testing.MockClock,
) -> None:
    """The previous release left ``par2-1`` inside parallel step ``p``: branch ``y`` ended with
    ``True``, then branch ``x``'s step ``x1`` returned ``1``. Resumed here, the parallel output
    says ``{"y": 1}``: _codec._state_v1 picks the newest record whose output ``== True``, which is
    x1's ``1`` (README: values read back as themselves; same_value: 1 and True are not the same)."""
    db = v1_copy(tmp_path)
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        register_review(engine)
        done = await finish(engine, "par2-1")
    assert done.status == "completed", done.error
    branch_y = done.step_results["p"].output["y"]
    assert branch_y is True, f"branch y returned True, its output is now {branch_y!r}"


# -- failures whose text cannot be stored ---------------------------------------------------------


async def test_a_step_failing_with_a_lone_surrogate_in_its_message_is_recorded_and_compensated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A step's error names a file decoded with surrogateescape (what os.listdir gives for a
    non-UTF-8 name). SPEC §1: the completed steps are compensated; docs/errors.md: "a failure
    must always be storable, to be compensated and caught like any other". Observed: the
    instance fails with 'internal error: UnencodableValueError: step record 'b#1' cannot be
    encoded', nothing is compensated, and the step's own error is lost (runtime/_errors.py
    describe_error/_capped keep the lone surrogate; _codec._encode_record refuses the record)."""
    undone: list[Any] = []

    async def ok(data: Any) -> str:
        return "ok"

    async def undo(output: Any) -> None:
        undone.append(output)

    async def bad(data: Any) -> None:
        raise FileNotFoundError("no such file: '/data/caf\udce9.csv'")

    wf = tf.workflow("w").task("a", job=ok, compensate=undo).task("b", job=bad).build()
    async with engine_on(tf.adapters.MemoryAdapter()) as engine:
        engine.register(wf)
        done = await finish(engine, await engine.start("w"))
    assert done.status == "failed" and done.failed_step == "b", done.error
    assert done.error_name == "FileNotFoundError", done.error
    assert done.compensated_steps == ("a",) and undone == ["ok"]


async def test_a_compensation_failing_with_a_lone_surrogate_does_not_leave_the_instance_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A compensation's error holds a lone surrogate. SPEC §9: a failing compensation is on
    the result (compensation_errors); §12: nothing is left running forever. Observed: wait()
    raises InstanceNotLiveError '... its failure could not be stored ...; it stays running in
    storage' (the header holding compensation_errors cannot be encoded; same cause as above)."""
    async def ok(data: Any) -> str:
        return "ok"

    async def undo(output: Any) -> None:
        raise OSError("cannot remove '/data/caf\udce9.csv'")

    async def bad(data: Any) -> None:
        raise RuntimeError("declined")

    wf = tf.workflow("w").task("a", job=ok, compensate=undo).task("b", job=bad).build()
    adapter = tf.adapters.MemoryAdapter()
    async with engine_on(adapter) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        done = await finish(engine, iid)
    assert done.status == "failed" and "a" in done.compensation_errors
    stored = await adapter.load(iid)
    assert stored is not None and stored.status == "failed"


# -- whole-instance copies bounded by the snapshot limit -------------------------------------------


BIG = b"x" * (15 * 2**20)  # under the 16 MiB per-value limit


def looping(count: int, last: Any) -> Any:
    """``chunk`` runs ``count`` times (each output 15 MiB, each stored as its own record), then
    ``last`` runs."""
    async def chunk(ctx: tf.WorkflowContext) -> bytes:
        ctx.data["n"] = ctx.data.get("n", 0) + 1
        return BIG

    return (tf.workflow("w").step("chunk", chunk)
            .choice("more", choices=[tf.when(lambda ctx: ctx.data["n"] < count, next="chunk")], default="last")
            .step("last", last))


async def test_a_live_instance_whose_history_passes_256_mib_can_be_viewed(autojump_clock: trio.testing.MockClock) -> None:
    """A loop whose 18 executions each stored a 15 MiB output (each record is stored on its
    own, under the 16 MiB per-value limit; SPEC §10: bytes per step do not grow with the steps
    run) is inside its last step. get_instance() and get_instances() raise SnapshotDecodeError
    'recorded instance of 283117514 bytes exceeds the 268435456-byte limit': the live view is
    a copy made with encode_whole/decode_whole (runtime/_engine.py _copy), one blob that
    _codec._unpack bounds by MAX_SNAPSHOT_BYTES. Read from storage it is fine."""
    gate = trio.Event()

    async def last(ctx: tf.WorkflowContext) -> str:
        await gate.wait()
        return "done"

    async with engine_on(tf.adapters.MemoryAdapter()) as engine:
        engine.register(looping(18, last).build())
        iid = await engine.start("w")
        await trio.sleep(5)
        try:
            live = await engine.get_instance(iid)
            listed = await engine.get_instances("w")
        finally:
            gate.set()
        done = await finish(engine, iid)
    assert live is not None and live.status == "running" and live.current_step == "last"
    assert [i.id for i in listed] == [iid]
    assert done.status == "completed"


async def test_an_on_complete_hook_does_not_fail_an_instance_with_a_large_history(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Same loop, with an on_complete hook. Every step completes, then the instance is stored
    **failed** 'internal error: SnapshotDecodeError: recorded instance of ... bytes exceeds the
    268435456-byte limit' and the hook never runs: Run.end_hook hands the hook
    ``self.result(copy=True)`` (actors/_run.py result: decode_whole(encode_whole(state)))."""
    seen: list[str] = []

    async def last(ctx: tf.WorkflowContext) -> str:
        return "done"

    wf = looping(18, last).with_hooks(on_complete=lambda result: seen.append(result.status)).build()
    adapter = tf.adapters.MemoryAdapter()
    async with engine_on(adapter) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        done = await finish(engine, iid)
        await trio.sleep(1)
    assert done.status == "completed", done.error
    assert seen == ["completed"]


# -- rows this release cannot read -----------------------------------------------------------------


async def test_a_row_with_a_malformed_wait_fails_alone_and_the_others_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A damaged row whose main lane waits ``{"timer": "soon"}`` (decodes: waiting is only
    checked to be a dict). README: a row this release cannot read is reported failed, its
    bytes left untouched, and every other row still resumes. Observed: ``good`` (stored after
    it) is never resumed (wait() raises InstanceNotLiveError), and the damaged one runs and is
    overwritten: _engine._resume_one calls wake_at() outside its try, the TypeError ends the
    resume task (logged 'actor resume w crashed') before the next row."""
    adapter = tf.adapters.MemoryAdapter()
    await left_in_b(adapter, "bad", "good")
    record = await adapter.load("bad")
    assert record is not None
    state = decode_stored(record)
    state.lanes[""].waiting = {"timer": "soon"}
    bad_header = encode_header(state)
    await adapter.checkpoint("bad", "running", bad_header, [], first_seq=len(record.records))
    async with tf.open_engine(adapter=adapter) as engine:
        Jobs().register(engine)
        engine.register(three_steps())
        good = await finish(engine, "good")
        bad = await finish(engine, "bad")
    assert good.status == "completed"
    assert bad.status == "failed" and "SnapshotDecodeError" in (bad.error or "")
    stored = await adapter.load("bad")
    assert stored is not None and stored.header == bad_header, "the malformed row was overwritten"


async def test_a_finished_row_with_malformed_skipped_steps_does_not_break_views(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A damaged finished row whose header lists a skipped step that is not a name (``[1]``).
    decode() accepts it (skipped is only checked to be a list); then get_instance() and every
    get_instances() of that workflow raise TypeError 'unhashable type: list' from
    _snapshot.to_instance (``results.setdefault(name, ...)``), instead of reporting that one
    row failed with SnapshotDecodeError (README; tests/test_reliability.py item 17)."""
    adapter = tf.adapters.MemoryAdapter()
    async with tf.open_engine(adapter=adapter) as engine:
        Jobs().register(engine)
        engine.register(three_steps())
        good = await finish(engine, await engine.start("w"))
        broken = await finish(engine, await engine.start("w", instance_id="broken"))
    record = await adapter.load("broken")
    assert record is not None and good.status == broken.status == "completed"
    raw = msgpack.unpackb(record.header, strict_map_key=False)
    raw[12] = [[1]]  # skipped steps
    await adapter.open()
    await adapter.checkpoint("broken", "completed", msgpack.packb(raw), [], first_seq=len(record.records))
    await adapter.close()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(three_steps())
        listed = {i.id: i for i in await engine.get_instances("w")}
        one = await engine.get_instance("broken")
    assert listed[good.id].status == "completed"
    assert listed["broken"].status == "failed" and one is not None and one.status == "failed"


async def test_sqlite_a_header_damaged_into_non_utf8_text_fails_alone(
    tmp_path: Path, autojump_clock: trio.testing.MockClock,
) -> None:
    """One row's header column holds TEXT that is not UTF-8 (damaged: bytes no snapshot holds). The adapter already turns a str header into SnapshotDecodeError for
    that row, but this one makes open_engine itself fail with DatabaseError 'SQLite select
    failed: Could not decode to UTF-8 column 'header'' (adapters/_sqlite.py _select reads with
    the default text_factory): no instance resumes. README: every other row still resumes."""
    path = tmp_path / "flows.db"
    await left_in_b(tf.adapters.SQLiteAdapter(path), "bad", "good")
    conn = sqlite3.connect(path)
    try:
        conn.execute("UPDATE trioflow_instances SET header = CAST(X'C1FF' AS TEXT) WHERE instance_id = 'bad'")
        conn.commit()
    finally:
        conn.close()
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        Jobs().register(engine)
        engine.register(three_steps())
        good = await finish(engine, "good")
        bad = await finish(engine, "bad")
    assert good.status == "completed"
    assert bad.status == "failed"


async def test_a_signal_payload_of_a_newer_release_leaves_the_instance_untouched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a rolled-back deploy, an instance parked on a receive step has a signal a newer
    release stored with a value type this release does not know (an unknown msgpack extension
    type). README: what a newer release wrote is reported failed and left untouched ('rolling
    a deploy back never destroys what the newer release wrote'). Observed: the run decodes the
    payload (actors/_run.py deliver_stored -> decode_payload), SnapshotDecodeError escapes
    the run, and the row is overwritten 'failed: internal error: SnapshotDecodeError ...'."""
    wf = tf.workflow("w").receive("r", signal="go").task("x", job=returning("x")).build()
    adapter = tf.adapters.MemoryAdapter()
    async with engine_on(adapter) as engine:
        engine.register(wf)
        await engine.start("w", instance_id="a")
        await trio.sleep(10)  # parked, waiting for "go"
    await adapter.open()
    await adapter.send_signal("a", "go", msgpack.packb(msgpack.ExtType(42, b"a newer release's type")))
    before = await adapter.load("a")
    await adapter.close()
    assert before is not None and before.status == "running"
    async with engine_on(adapter) as engine:
        engine.register(wf)
        await trio.sleep(10)
        seen = await engine.get_instance("a")
    assert seen is not None and seen.status == "failed"
    after = await adapter.load("a")
    assert after is not None and (after.status, after.header) == ("running", before.header), \
        "the newer release's instance was overwritten"


# -- values that cannot be stored ----------------------------------------------------------------


async def test_a_signal_payload_outside_64_bits_raises_trioflows_own_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """engine.signal(iid, "go", 2**64) raises a bare TypeError "can not serialize 'int'
    object" (a nested {"n": 2**64} gets UnencodableValueError). SPEC §8: a value msgpack cannot
    encode is a clear error of trioflow's own hierarchy. Cause: _codec.as_stored returns plain
    ints at once (``kind in _SCALARS``) without the 64-bit check, so encode_payload's _pack
    raises msgpack's error."""
    wf = tf.workflow("w").receive("r", signal="go").build()
    async with engine_on(tf.adapters.MemoryAdapter()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        with pytest.raises(tf.UnencodableValueError, match="outside 64 bits"):
            await engine.signal(iid, "go", 2**64)


async def test_ctx_set_refuses_an_int_outside_64_bits_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """docs/errors.md: ``ctx.set("x", value)`` of a value that cannot be stored is refused at
    once, inside the step (and says to store a big int as a str). A step that does so and
    falls back to a str never gets the chance: ctx.set("total", 2**70) passes (same
    as_stored shortcut) and the step fails when it ends."""
    refused: list[str] = []

    async def total(ctx: tf.WorkflowContext) -> str:
        try:
            ctx.set("total", 2**70)
        except tf.UnencodableValueError:
            refused.append("total")
            ctx.set("total", str(2**70))
        return "ok"

    async with engine_on(tf.adapters.MemoryAdapter()) as engine:
        engine.register(tf.workflow("w").step("total", total).build())
        done = await finish(engine, await engine.start("w"))
    assert refused == ["total"]
    assert done.status == "completed", done.error


async def test_a_value_nested_1023_levels_in_ctx_data_fails_its_step_and_is_not_left_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """SPEC §12: a value put straight into ctx.data that cannot be stored fails that step with
    UnencodableValueError; nothing is left running forever. A list nested 1,023 levels passes
    check_data (it packs and reads back on its own, with no depth headroom, unlike as_stored),
    so it becomes the "last good" data; the header, one level deeper, cannot be packed, and
    restore_data puts back that same value. Observed: wait() raises InstanceNotLiveError
    '... its failure could not be stored ...; it stays running in storage'."""
    def deep(n: int) -> Any:
        value: Any = "leaf"
        for _ in range(n):
            value = [value]
        return value

    async def put(ctx: tf.WorkflowContext) -> str:
        ctx.data["tree"] = deep(1023)
        return "ok"

    adapter = tf.adapters.MemoryAdapter()
    async with engine_on(adapter) as engine:
        engine.register(tf.workflow("w").step("put", put).step("next", returning("n")).build())
        iid = await engine.start("w")
        done = await finish(engine, iid)
    assert done.status == "failed" and done.failed_step == "put"
    assert "UnencodableValueError" in (done.error or "")
    stored = await adapter.load(iid)
    assert stored is not None and stored.status == "failed"


async def test_a_tuple_key_put_in_ctx_data_is_named(autojump_clock: trio.testing.MockClock) -> None:
    """docs/errors.md: the step fails with UnencodableValueError "whose cause names what and
    where". ``ctx.data[("eu", 1)] = ...`` fails the step with 'instance '0190...' cannot be
    encoded': _codec.check_data checks each value when the data does not read back, never the
    keys (a nested tuple key is named: 'shared data['k'] has a dict key of type tuple')."""
    async def put(ctx: tf.WorkflowContext) -> str:
        ctx.data[("eu", 1)] = "rate"
        return "ok"

    async with engine_on(tf.adapters.MemoryAdapter()) as engine:
        engine.register(tf.workflow("w").step("put", put).build())
        done = await finish(engine, await engine.start("w"))
    assert done.status == "failed" and "UnencodableValueError" in (done.error or "")
    assert "shared data" in (done.error or "") and "tuple" in (done.error or ""), done.error


# -- value types stored exactly -------------------------------------------------------------------


async def test_a_time_with_a_zoneinfo_is_stored_exactly(autojump_clock: trio.testing.MockClock) -> None:
    """README: a ``time`` is stored exactly. ``datetime.timetz()`` of a ZoneInfo datetime (an
    opening hour in local time) read back naive (a ZoneInfo gives a bare time no offset, and
    the zone was not kept); ``datetime.combine`` in the next step then gave a naive datetime."""
    opens = dt.datetime(2026, 6, 1, 9, 0, tzinfo=ZoneInfo("Europe/Paris")).timetz()
    seen: list[Any] = []

    async def hours(ctx: tf.WorkflowContext) -> Any:
        return {"opens": opens}

    async def look(ctx: tf.WorkflowContext) -> str:
        seen.append(ctx.steps["hours"]["opens"])
        return "ok"

    async with engine_on(tf.adapters.MemoryAdapter()) as engine:
        engine.register(tf.workflow("w").step("hours", hours).step("look", look).build())
        done = await finish(engine, await engine.start("w"))
    assert done.status == "completed"
    back = seen[0]
    assert back == opens and back.tzinfo == opens.tzinfo, (back, back.tzinfo)
    assert dt.datetime.combine(dt.date(2026, 6, 1), back).utcoffset() == dt.timedelta(hours=2)


def test_a_time_stored_by_the_release_before_zones_were_kept_reads_back() -> None:
    """A time packed as (isoformat, fold), as every release before this one did, still reads."""
    from trioflow._values import from_ext

    packed = msgpack.packb(("09:30:00+02:00", 0))
    assert from_ext(3, packed) == dt.time(9, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
