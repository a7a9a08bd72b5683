"""A review of damaged and hostile stored bytes, through the public API only.

Each test stores real instances with this release's own engine (on trio's MockClock, in a
SQLite file unless said otherwise), damages what one of them stored as a disk fault, a bug,
another program or a hand edit would (with the ``sqlite3`` module, between engine runs), opens
the file again and checks what README.md, docs/adapters.md and SPEC §6/§8/§10 promise:

- "Bad input gets a clear error from trioflow's own hierarchy, naming what was wrong, with
  nothing half-written to storage."
- SPEC §6: "an unreadable snapshot fails that one instance with a clear error and never stops
  the engine."
- README (Durability): "A stored row this release cannot read (corrupt, malformed, ...) is
  reported ``failed`` to callers (``wait``, ``get_instance``, ``get_instances``) with the reason
  ..., and its stored bytes are **left untouched** ...; every other row still resumes."

The tests before the properties each failed on 5f5d68c (one per distinct bug; their names say
what happened then) and are fixed by the commit that added this file: SQLite text that is not
UTF-8 is read with its bad bytes kept (a row, not the query, is unreadable), a map position is
checked against the items its start record stores, a compensating header against the outcomes
an instance compensates for, a stored wait for the keys its kind needs and for NaN times, a
child's end notice for its fields, and a format-1 lane for its step. The property tests at the
end passed already, and pin what holds: byte damage and wrong-shaped msgpack in any stored blob
never escape as anything but trioflow's own errors, never hang the engine and never touch the
other instances.
"""

from __future__ import annotations

import copy
import math
import sqlite3
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trioflow as tf

T0 = 1_800_000_000.0
#: While true, the jobs that hang do (the first engine, which leaves instances running).
HANG = {"on": True}
CALLS: list[str] = []


async def ok(ctx: Any) -> Any:
    return {"v": 1}


async def hang(ctx: Any) -> Any:
    if HANG["on"]:
        await trio.sleep_forever()
    return {"h": 1}


async def undo(ctx: Any, result: Any) -> None:
    CALLS.append(f"undo:{ctx.metadata.id}")


async def undo_hangs(ctx: Any, result: Any) -> None:
    CALLS.append(f"undo:{ctx.metadata.id}")
    if HANG["on"]:
        await trio.sleep_forever()


async def boom(ctx: Any) -> Any:
    raise ValueError("boom")


def _workflows() -> list[tf.WorkflowDefinition]:
    return [
        tf.workflow("lin").step("a", ok, undo).step("b", hang).build(),
        tf.workflow("done").step("a", ok).build(),
        tf.workflow("sig").step("a", ok).receive("r", signal="go").step("b", ok).build(),
        tf.workflow("timer").step("a", ok).wait("t", seconds=100).step("b", ok).build(),
        tf.workflow("map").map("m", items=lambda ctx: [1, 2, 3, 4], max_concurrency=2,
                               branch=tf.branch("it").step("i1", ok).receive("ir", signal="go").build()).build(),
        tf.workflow("comping").step("a", ok, undo_hangs).step("b", ok, undo).step("c", boom).build(),
        tf.workflow("parent").step("a", ok, undo).child("kid", workflow="kid").step("after", ok).build(),
        tf.workflow("kid").step("k1", ok).receive("kr", signal="go").build(),
    ]


def _register(engine: tf.Engine, only: set[str] | None = None) -> None:
    for wf in _workflows():
        if only is None or wf.name in only:
            engine.register(wf)


def _run(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


def _make(db: Path, *starts: tuple[str, str], signals: tuple[tuple[str, str, Any], ...] = ()) -> None:
    """Store each ``(workflow, instance_id)`` with a first engine that stops while they run or wait."""

    async def make() -> None:
        HANG["on"] = True
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=lambda: T0 + trio.current_time()) as e:
            _register(e)
            for workflow, iid in starts:
                await e.start(workflow, {"k": iid}, instance_id=iid)
            for iid, name, payload in signals:
                await e.signal(iid, name, payload)
            await trio.sleep(5)

    try:
        _run(make)
    finally:
        HANG["on"] = False


async def _reopen(db: Path, body: Callable[[tf.Engine], Awaitable[Any]], only: set[str] | None = None) -> Any:
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=lambda: T0 + 50 + trio.current_time()) as e:
        _register(e, only)
        return await body(e)


def _sql(db: Path, sql: str, *params: Any) -> list[Any]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(sql, params).fetchall()
        conn.commit()
    finally:
        conn.close()
    return rows


def _row(db: Path, iid: str) -> tuple[Any, ...]:
    """What storage holds for ``iid``: status, header, start and its records, as bytes."""
    (status, header, start) = _sql(
        db, "SELECT status, CAST(header AS BLOB), CAST(start AS BLOB) FROM trioflow_instances WHERE instance_id = ?",
        iid)[0]
    records = _sql(db, "SELECT seq, data FROM trioflow_records WHERE instance_id = ? ORDER BY seq", iid)
    return status, bytes(header), start, tuple(records)


def _edit_header(db: Path, iid: str, change: Callable[[list[Any]], None]) -> None:
    (blob,) = _sql(db, "SELECT header FROM trioflow_instances WHERE instance_id = ?", iid)[0]
    header = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    change(header)
    _sql(db, "UPDATE trioflow_instances SET header = ? WHERE instance_id = ?",
         msgpack.packb(header, use_bin_type=True), iid)


#: The header's fields used here (format 4: see trioflow._codec.encode_header).
H_OUTCOME, H_LANES = 5, 8


async def _outcome(engine: tf.Engine, iid: str, within: float = 10_000) -> tf.WorkflowInstance | str:
    """``wait(iid)``, or ``"HANG"`` if it does not end within ``within`` virtual seconds."""
    with trio.move_on_after(within):
        return await engine.wait(iid)
    return "HANG"


def _is_reported_unreadable(instance: Any) -> bool:
    return isinstance(instance, tf.WorkflowInstance) and instance.status == "failed" \
        and instance.error_name == "SnapshotDecodeError"


def _describe(instance: Any) -> str:
    if not isinstance(instance, tf.WorkflowInstance):
        return repr(instance)
    return f"status={instance.status!r} error_name={instance.error_name!r} cause={instance.cause!r}"


# ----------------------------------------------------------------------------------------------
# Bug 1: a TEXT column damaged into bytes that are not UTF-8 fails every read that meets it
# ----------------------------------------------------------------------------------------------


def test_sqlite_one_rows_workflow_name_damaged_into_invalid_utf8_stops_the_engine_opening(tmp_path: Path) -> None:
    """SPEC §6: an unreadable snapshot "fails that one instance with a clear error and never
    stops the engine"; README: "every other row still resumes". adapters/_sqlite.py reads
    ``header`` and ``start`` with ``CAST(... AS BLOB)`` precisely because "a value damaged into
    TEXT that is not UTF-8 would otherwise fail the whole query (every instance it reads), not
    its row alone" -- but not ``workflow_name``, ``status``, ``instance_id`` nor a signal's
    ``name``. One row whose ``workflow_name`` holds a stray 0xff byte makes ``resumable()``
    raise ``DatabaseError: SQLite select failed: Could not decode to UTF-8 column
    'workflow_name'``, and ``open_engine`` fails: no instance resumes."""
    db = tmp_path / "f.db"
    _make(db, ("lin", "good"), ("lin", "bad"))
    _sql(db, "UPDATE trioflow_instances SET workflow_name = CAST(X'6c69ff' AS TEXT) WHERE instance_id = 'bad'")

    async def body(engine: tf.Engine) -> Any:
        return await _outcome(engine, "good")

    try:
        good = _run(_reopen, db, body)
    except tf.TrioflowError as exc:
        pytest.fail(f"one damaged row stopped the engine from opening: {type(exc).__name__}: {exc}")
    assert isinstance(good, tf.WorkflowInstance) and good.status == "completed", _describe(good)


def test_sqlite_one_finished_rows_status_damaged_into_invalid_utf8_breaks_every_listing(tmp_path: Path) -> None:
    """README: an unreadable row "is reported ``failed`` to callers (``wait``, ``get_instance``,
    ``get_instances``) with the reason". One finished row whose ``status`` column holds a
    byte that is not UTF-8 makes ``get_instances()`` (every workflow, every status) raise
    ``DatabaseError: SQLite list failed: Could not decode to UTF-8 column 'status'`` for every
    caller: the other instances cannot be listed at all. (The same for ``instance_id``.)"""
    db = tmp_path / "f.db"
    _make(db, ("done", "good"), ("done", "bad"))
    _sql(db, "UPDATE trioflow_instances SET status = CAST(X'636f6dff' AS TEXT) WHERE instance_id = 'bad'")

    async def body(engine: tf.Engine) -> Any:
        try:
            return [i.id for i in await engine.get_instances()]
        except tf.TrioflowError as exc:
            return f"{type(exc).__name__}: {exc}"

    listed = _run(_reopen, db, body)
    assert isinstance(listed, list) and "good" in listed, listed


def test_sqlite_a_finished_row_whose_id_is_damaged_into_invalid_utf8_is_purged_with_the_others(tmp_path: Path) -> None:
    """(Added with the fix of bug 1: ids are read with their bad bytes kept, so a purge that
    reads the ids it deletes must delete such a row by its bytes, not fail on it.) README:
    ``purge`` deletes the finished instances older than ``older_than``."""
    db = tmp_path / "f.db"
    _make(db, ("done", "good"), ("done", "bad"))
    _sql(db, "UPDATE trioflow_instances SET instance_id = CAST(X'6261ff' AS TEXT) WHERE instance_id = 'bad'")
    _sql(db, "UPDATE trioflow_records SET instance_id = CAST(X'6261ff' AS TEXT) WHERE instance_id = 'bad'")

    async def body(engine: tf.Engine) -> Any:
        listed = [i.id for i in await engine.get_instances()]
        return listed, await engine.purge(older_than=0)

    listed, purged = _run(_reopen, db, body)
    assert len(listed) == 2 and "good" in listed and purged == 2
    assert _sql(db, "SELECT COUNT(*) FROM trioflow_instances")[0][0] == 0
    assert _sql(db, "SELECT COUNT(*) FROM trioflow_records")[0][0] == 0


# ----------------------------------------------------------------------------------------------
# Bug 2: a pending signal whose name is damaged destroys its instance
# ----------------------------------------------------------------------------------------------


def test_sqlite_a_pending_signals_name_damaged_into_invalid_utf8_overwrites_its_instance(tmp_path: Path) -> None:
    """README: a row this release cannot read is reported failed "and its stored bytes are
    **left untouched**"; a signal payload that cannot be read is handled so ("a signal in its
    inbox" fails the instance as unreadable, leaving it as stored). A pending signal whose
    ``name`` column holds a byte that is not UTF-8 instead makes the run's signal read raise
    ``DatabaseError``, which the engine's safety net takes as an internal error: the instance
    is *stored* ``failed`` (``"internal error: DatabaseError: SQLite signals failed: Could
    not decode to UTF-8 column 'name'"``), nothing of it compensated: the damage of one signal
    row is made permanent in the instance's own row (and a purge or retention then deletes it
    with its signals). ``signal()``, ``cancel()`` and ``get_instance()`` of it raise the
    ``DatabaseError`` meanwhile."""
    db = tmp_path / "f.db"
    _make(db, ("sig", "sig"), signals=(("sig", "other", {"p": 1}),))
    _sql(db, "UPDATE trioflow_signals SET name = CAST(X'6f74ff' AS TEXT) WHERE instance_id = 'sig'")
    before = _row(db, "sig")

    async def body(engine: tf.Engine) -> Any:
        return await _outcome(engine, "sig", within=1000)

    seen = _run(_reopen, db, body)
    after = _row(db, "sig")
    signals = _sql(db, "SELECT seq FROM trioflow_signals WHERE instance_id = 'sig'")
    assert (after, len(signals)) == (before, 1), (
        f"the instance was rewritten ({_describe(seen)}); stored status now {after[0]!r}, pending signals {signals}")


# ----------------------------------------------------------------------------------------------
# Bugs 3 and 4: a map's stored position is not checked against the items its start record holds
# ----------------------------------------------------------------------------------------------


def test_a_map_position_counting_more_items_than_its_start_record_holds_is_run_into_an_internal_error(
    tmp_path: Path,
) -> None:
    """README: a malformed stored row "is reported ``failed`` ... with the reason ..., and its
    stored bytes are **left untouched**"; trioflow._decide.misfit: "a damaged row must fail
    alone, not crash its run". A map whose header position says 10 items (its start record
    stores 4) is read as fine (``get_instance``: ``running``), run, and fails with ``internal
    error: IndexError: list index out of range`` (actors/_map.py: ``items[index]``), its row
    overwritten as ``failed``. (Items that are not a list -- an int, a str, the workflow input
    -- end the same way with ``TypeError``/``KeyError``/``IndexError``; a count *below* the
    items silently drops the last ones from the map's output.)"""
    db = tmp_path / "f.db"
    _make(db, ("map", "m"))
    _edit_header(db, "m", lambda h: h[H_LANES][""][5].__setitem__(slice(0, 2), [10, 10]))
    before = _row(db, "m")

    async def body(engine: tf.Engine) -> Any:
        viewed = await engine.get_instance("m")
        for _ in range(12):
            try:
                await engine.signal("m", "go", 1)
            except tf.InstanceNotLiveError:
                break  # (it has ended)
        return viewed, await _outcome(engine, "m")

    viewed, ended = _run(_reopen, db, body)
    assert _is_reported_unreadable(viewed) and _is_reported_unreadable(ended) and _row(db, "m") == before, (
        f"get_instance: {_describe(viewed)}; wait: {_describe(ended)}; row untouched: {_row(db, 'm') == before}")


def test_a_map_position_of_a_few_bytes_claiming_200000_items_allocates_a_lane_for_each_on_every_read(
    tmp_path: Path,
) -> None:
    """runtime/_codec.py: "Largest snapshot encoded or decoded (a corrupt length can't make us
    allocate gigabytes)"; the brief's "huge lengths meant to allocate a lot". A header of under 200 bytes
    whose map position claims N items (its start record holds 4), with the branch's first step
    named, makes every decode build a lane per claimed item (``_put_back_untouched_items`` over
    ``MapProgress.running()``): with N = 1,000,000 one ``get_instance`` takes seconds and
    250 MiB; N is bounded by nothing (2**63), so a read-only call can exhaust memory. Checked
    here with N = 200,000 and a modest bound."""
    db = tmp_path / "f.db"
    _make(db, ("map", "m"))
    claimed = 200_000
    _edit_header(db, "m", lambda h: h[H_LANES][""][5].__setitem__(slice(0, 2), [claimed, claimed]))

    async def body(engine: tf.Engine) -> Any:
        tracemalloc.start()
        began = time.perf_counter()
        try:
            viewed = await engine.get_instance("m")
            return viewed, time.perf_counter() - began, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    async def only_look(engine: tf.Engine) -> Any:
        return await body(engine)

    viewed, took, peak = _run(_reopen, db, only_look, {"lin"})  # (map not registered: nothing runs it)
    assert peak < 16 * 2**20, (
        f"get_instance of a row whose header is {len(_row(db, 'm')[1])} bytes allocated {peak / 2**20:.0f} MiB"
        f" in {took:.1f} s ({_describe(viewed)})")


# ----------------------------------------------------------------------------------------------
# Bug 5: a compensating header whose outcome is not a failure's
# ----------------------------------------------------------------------------------------------


def test_a_compensating_header_whose_outcome_is_completed_runs_compensations_then_an_internal_error(
    tmp_path: Path,
) -> None:
    """README: a malformed row is reported failed with the reason and "its stored bytes are
    **left untouched**". The decoder accepts any status as the outcome of a compensating
    header (``outcome in STATUSES``); the engine only knows failed, cancelled and timed_out
    (actors/_instance.py ``_ENDED[outcome]``). A header damaged to outcome ``"completed"``
    (or ``"running"``) is read as fine, its compensations *run* (work is undone), the
    instance is first stored ``completed``, and then ``KeyError: 'completed'`` ends it as
    ``failed`` with ``internal error: KeyError: 'completed'``."""
    db = tmp_path / "f.db"
    _make(db, ("comping", "c"))
    _edit_header(db, "c", lambda h: h.__setitem__(H_OUTCOME, "completed"))
    before = _row(db, "c")
    CALLS.clear()

    async def body(engine: tf.Engine) -> Any:
        return await _outcome(engine, "c")

    ended = _run(_reopen, db, body)
    undone = [c for c in CALLS if c.startswith("undo:")]
    assert _is_reported_unreadable(ended) and not undone and _row(db, "c") == before, (
        f"wait: {_describe(ended)}; compensations run: {undone}; row untouched: {_row(db, 'c') == before}")


# ----------------------------------------------------------------------------------------------
# Bug 6: a stored wait that lacks a key its kind needs
# ----------------------------------------------------------------------------------------------


def test_a_stored_signal_wait_without_its_timeout_key_ends_in_an_internal_key_error(tmp_path: Path) -> None:
    """README: a malformed row is reported failed with the reason, bytes untouched; the codec's
    ``_WAIT_FIELDS``: "the kernel computes with them, so a damaged one fails its row here
    rather than the code that wakes it". ``_well_formed_wait`` checks the types of the keys
    present, not that the keys its kind needs are there: a receive step's wait stored as
    ``{"signal": "go", "since": ...}`` (no ``"timeout"``) is read as fine and fails the run
    with ``internal error: KeyError: 'timeout'`` (actors/_wait.py ``lane.waiting["timeout"]``),
    overwriting the row. (A child step's wait without ``"signal"`` ends the same way, with
    ``KeyError: 'signal'`` in actors/_child.py.)"""
    db = tmp_path / "f.db"
    _make(db, ("sig", "s"))
    _edit_header(db, "s", lambda h: h[H_LANES][""][3].pop("timeout"))
    before = _row(db, "s")

    async def body(engine: tf.Engine) -> Any:
        await engine.signal("s", "go", 1)
        return await _outcome(engine, "s")

    ended = _run(_reopen, db, body)
    assert _is_reported_unreadable(ended) and _row(db, "s") == before, (
        f"wait: {_describe(ended)}; row untouched: {_row(db, 's') == before}")


# ----------------------------------------------------------------------------------------------
# Bug 7: a NaN due time
# ----------------------------------------------------------------------------------------------


def test_a_stored_timer_due_at_nan_leaves_its_instance_waiting_for_ever(tmp_path: Path) -> None:
    """Bad stored input gets "a clear error ..., naming what was wrong"; README: a malformed row
    is reported failed with the reason. The codec checks a wait's ``timer`` (and ``retry``,
    ``timeout``) is an int or a float, and NaN is a float: a timer stored as NaN is read as
    fine, never fires (it compares false with every time), and its instance stays ``running``
    for ever, ``waiting={'timer': nan, ...}``: ``wait()`` never returns, and nothing says
    why. (A retry delay stored as NaN does the same.)"""
    db = tmp_path / "f.db"
    _make(db, ("timer", "t"))
    _edit_header(db, "t", lambda h: h[H_LANES][""][3].__setitem__("timer", math.nan))

    async def body(engine: tf.Engine) -> Any:
        return await _outcome(engine, "t", within=100_000)

    ended = _run(_reopen, db, body)
    assert _is_reported_unreadable(ended), f"wait: {_describe(ended)}"


# ----------------------------------------------------------------------------------------------
# Bug 8: a child's end notice of the wrong shape
# ----------------------------------------------------------------------------------------------


def _parent_with_a_stored_notice(db: Path) -> None:
    """A parent whose child ended while the parent's workflow was not registered: the child's
    end notice is stored among the parent's signals, not taken yet."""
    _make(db, ("parent", "p"))

    async def finish_kid(engine: tf.Engine) -> None:
        await engine.signal("p/kid#1", "go", 1)
        assert (await engine.wait("p/kid#1")).status == "completed"

    _run(_reopen, db, finish_kid, {"kid"})


def test_a_childs_end_notice_of_the_wrong_shape_fails_the_parent_with_an_internal_error(tmp_path: Path) -> None:
    """README: a row (here, "a signal in its inbox") this release cannot read is reported
    failed with the reason and left untouched; docs/fanout.md: a child's end reaches its parent
    as a stored notice. The notice's payload is used as it is read (actors/_child.py:
    ``outcome["status"]``, ``outcome["output"]``, ``RecordedError(outcome["error"] ...)``): one
    damaged into ``{"status": "completed"}`` fails the parent with ``internal error: KeyError:
    'output'``, overwriting it, and its completed step ``a`` is never compensated. (``None``
    or a list gives ``TypeError``, a cause that is not a str ``AttributeError: ... 'isascii'``,
    and an unknown status such as ``"bogus"`` fails the parent with ``error_name == "bogus"``.)"""
    db = tmp_path / "f.db"
    _parent_with_a_stored_notice(db)
    [(seq, name)] = _sql(db, "SELECT seq, name FROM trioflow_signals WHERE instance_id = 'p'")
    assert name.startswith("trioflow.child-ended:"), name
    _sql(db, "UPDATE trioflow_signals SET payload = ? WHERE seq = ?", msgpack.packb({"status": "completed"}), seq)
    before = _row(db, "p")

    async def body(engine: tf.Engine) -> Any:
        return await _outcome(engine, "p")

    ended = _run(_reopen, db, body)
    assert _is_reported_unreadable(ended) and _row(db, "p") == before, (
        f"wait: {_describe(ended)}; row untouched: {_row(db, 'p') == before}")


# ----------------------------------------------------------------------------------------------
# Bug 9: a format-1 row is read more leniently than the format-2 row its own view makes of it
# ----------------------------------------------------------------------------------------------

V1_REVIEW = Path(__file__).parent / "fixtures" / "v1_review.db"


def test_get_instance_of_a_live_format1_instance_with_a_non_text_lane_step_raises_instead_of_reporting(
    tmp_path: Path,
) -> None:
    """README: a stored row this release cannot read "is reported ``failed`` to callers
    (``wait``, ``get_instance``, ``get_instances``) with the reason". A format-1 snapshot (the
    previous release's, tests/fixtures/v1_review.db) whose branch lane ``p/y`` stands at ``2``
    rather than a step name is accepted by ``_state_v1`` (which checks no lane's step), and the
    instance runs. While it does, ``get_instance`` builds its view by encoding the live state
    in format 4 and decoding it again (``copied_view``), which refuses the lane: the
    ``SnapshotDecodeError`` is *raised* to the ``get_instance`` caller -- and to a
    ``get_instances()`` caller, whose whole listing is lost for one instance -- while ``wait``
    reports the same instance ``failed``, as ``get_instance`` does too once the run has
    ended."""
    import sys

    sys.path.insert(0, str(V1_REVIEW.parent))
    from v1_review_workflows import definitions, jobs  # (the fixture's own workflows)

    db = tmp_path / "v1.db"
    src, out = sqlite3.connect(V1_REVIEW), sqlite3.connect(db)
    src.backup(out)
    src.close()
    out.close()
    (snapshot,) = _sql(db, "SELECT snapshot FROM trioflow_instances WHERE instance_id = 'par2-1'")[0]
    value = msgpack.unpackb(snapshot, raw=False, strict_map_key=False)
    value[8]["p/y"][0] = 2  # (format 1: [tag, version, id, name, fingerprint, status, input, data, lanes, ...])
    _sql(db, "UPDATE trioflow_instances SET snapshot = ? WHERE instance_id = 'par2-1'",
         msgpack.packb(value, use_bin_type=True))

    async def body() -> Any:
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
            for name, job in jobs(False).items():
                engine.jobs.register(name, job)
            for definition in definitions():
                engine.register(definition)
            try:
                return await engine.get_instance("par2-1")
            except tf.TrioflowError as exc:
                return f"raised {type(exc).__name__}: {exc}"

    viewed = _run(body)
    assert isinstance(viewed, tf.WorkflowInstance), viewed


def test_a_finished_header_whose_error_name_is_not_text_is_reported_unreadable_not_handed_out(tmp_path: Path) -> None:
    """(Added with the fixes, from the review's third question: ``WorkflowInstance.error_name``
    came back as ``7``.) README: a malformed row "is reported ``failed`` ... with the reason";
    ``WorkflowInstance.error_name`` is text. And an invalid msgpack blob's reason names
    msgpack's error rather than ending in an empty explanation."""
    db = tmp_path / "f.db"
    _make(db, ("done", "d"), ("done", "e"))
    H_ERROR_NAME = 17
    _edit_header(db, "d", lambda h: h.__setitem__(H_ERROR_NAME, 7))
    _sql(db, "UPDATE trioflow_instances SET header = X'c1' WHERE instance_id = 'e'")

    async def body(engine: tf.Engine) -> Any:
        return await engine.get_instance("d"), await engine.get_instance("e")

    d, e = _run(_reopen, db, body)
    assert _is_reported_unreadable(d) and "not text" in (d.cause or ""), _describe(d)
    assert _is_reported_unreadable(e) and not (e.cause or "").endswith(": "), _describe(e)


def test_a_damaged_run_ledger_record_reports_its_instance_unreadable_rather_than_storage_down() -> None:
    """(Added with the fixes, from the review's seventh question.) README: a stored row this
    release cannot read is reported ``failed`` "with the reason", its stored bytes left
    untouched. A transactional run's ledger record (what the driver committed) damaged in the
    driver was taken as the driver not answering: ``StorageUnavailableError`` after the
    storage retries, the instance left ``running`` for every later engine to ask again."""
    import test_transaction_once as once

    async def main() -> tuple[Any, Any, Any]:
        adapter, driver = once.HangOnTerminalSave(), tf.adapters.MemoryDriver()
        wf = once.order_flow()
        iid = await once.crash_after_commit(adapter, driver, wf)
        driver.ledger[iid] = b"\xc1"  # (not msgpack)
        stored = await adapter.load(iid)
        with trio.fail_after(5):
            instance = await once.resume_and_wait(adapter, driver, wf, iid)
        return stored, instance, await adapter.load(iid)

    before, instance, after = _run(main)
    assert _is_reported_unreadable(instance), _describe(instance)
    assert (after.status, after.header, after.records) == (before.status, before.header, before.records)


# ----------------------------------------------------------------------------------------------
# Properties that hold today (kept as regression guards)
# ----------------------------------------------------------------------------------------------

#: The instances of every kind the properties damage: running (linear, in a map, in
#: compensation), waiting (on a timer, on a signal, with a signal stored it does not take), a
#: parent and its child, and finished ones.
_KINDS = (("lin", "lin"), ("map", "map"), ("comping", "comping"), ("timer", "timer"), ("sig", "sig"),
          ("parent", "parent"), ("done", "done"))
_CLEAN: dict[str, Any] = {}


def _base(tmp: Path) -> Path:
    """One database holding every kind, made once per process; copied for each example."""
    if "db" not in _CLEAN:
        db = tmp / "base.db"
        _make(db, *_KINDS, signals=(("sig", "other", {"p": 1}),))
        _CLEAN["db"] = db
        _CLEAN["outcomes"] = _run(_reopen, _copy(db, tmp / "clean.db"), _exercise)
    db: Path = _CLEAN["db"]
    return db


def _copy(src: Path, dst: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dst}{suffix}").unlink(missing_ok=True)
    conn, out = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        conn.backup(out)
    finally:
        conn.close()
        out.close()
    return dst


def _ids(db: Path) -> list[str]:
    return [iid for (iid,) in _sql(db, "SELECT instance_id FROM trioflow_instances ORDER BY rowid")]


async def _exercise(engine: tf.Engine) -> dict[str, Any]:
    """Every public read, then what lets every instance end (signals, time), then every wait."""
    ids = [i.id for i in await engine.get_instances()]
    views = {iid: await engine.get_instance(iid) for iid in ids}
    await engine.get_instances(status="running")
    await engine.get_instances(order="newest", limit=2, after=ids[len(ids) // 2])
    for iid in ids:
        for _ in range(4 if iid == "map" else 1):
            try:
                await engine.signal(iid, "go", {"ok": 1})
            except (tf.InstanceNotLiveError, tf.UnknownInstanceError):
                pass
    await trio.sleep(2000)
    outcomes = {iid: await _outcome(engine, iid, within=5000) for iid in ids}
    await engine.resume()
    return {"views": views, "ends": outcomes}


def _blobs(db: Path) -> list[tuple[str, str, Any]]:
    """Every stored blob: (table, column, key)."""
    found: list[tuple[str, str, Any]] = []
    for (iid,) in _sql(db, "SELECT instance_id FROM trioflow_instances ORDER BY rowid"):
        found += [("trioflow_instances", "header", iid), ("trioflow_instances", "start", iid)]
        found += [("trioflow_records", "data", (iid, seq))
                  for (seq,) in _sql(db, "SELECT seq FROM trioflow_records WHERE instance_id = ? ORDER BY seq", iid)]
    found += [("trioflow_signals", "payload", seq) for (seq,) in _sql(db, "SELECT seq FROM trioflow_signals")]
    return found


def _where(table: str, key: Any) -> tuple[str, tuple[Any, ...]]:
    if table == "trioflow_records":
        return "instance_id = ? AND seq = ?", tuple(key)
    return ("seq = ?", (key,)) if table == "trioflow_signals" else ("instance_id = ?", (key,))


def _owner(table: str, key: Any, db: Path) -> str:
    if table == "trioflow_records":
        return str(key[0])
    if table == "trioflow_signals":
        return str(_sql(db, "SELECT instance_id FROM trioflow_signals WHERE seq = ?", key)[0][0])
    return str(key)


_DAMAGE = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("grow"), st.binary(min_size=1, max_size=6), st.just(0)),
)


def _damaged(blob: bytes, damage: tuple[str, Any, int]) -> bytes:
    kind, at, bit = damage
    if kind == "flip":
        i = at % len(blob)
        return blob[:i] + bytes([blob[i] ^ (1 << bit)]) + blob[i + 1:]
    if kind == "cut":
        return blob[:at % len(blob)]
    return blob + at


def _family(iid: str) -> set[str]:
    """An instance and those whose outcome may follow from it (a parent and its child)."""
    return {"parent", "parent/kid#1"} if iid in ("parent", "parent/kid#1") else {iid}


#: Error names an instance may end with when what it stored was damaged: trioflow's own, each
#: naming what was wrong (an internal error's ``Error`` is not among them).
_CLEAR = {"SnapshotDecodeError", "DefinitionMismatchError", "InstanceIdConflictError", "ChildWorkflowError"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 10_000), damage=_DAMAGE)
def test_property_damaged_bytes_fail_one_instance_alone_with_a_trioflow_error(
    tmp_path_factory: pytest.TempPathFactory, which: int, damage: tuple[str, Any, int],
) -> None:
    """SPEC §6 / README: a stored row that cannot be read fails alone, with a clear error,
    left untouched, and every other row still resumes. For one stored blob of any kind
    (header, start record, step record, signal payload) with a bit flipped, cut short or grown:
    the engine opens, every read answers, no call hangs, every instance outside the damaged
    one's family ends as it does undamaged, and the damaged one ends as it would have or fails
    with one of trioflow's own errors (not an internal error); one reported unreadable keeps its
    stored bytes."""
    tmp = tmp_path_factory.getbasetemp()
    base = _base(tmp)
    db = _copy(base, tmp / "damaged.db")
    blobs = _blobs(db)
    table, column, key = blobs[which % len(blobs)]
    where, params = _where(table, key)
    (blob,) = _sql(db, f"SELECT CAST({column} AS BLOB) FROM {table} WHERE {where}", *params)[0]
    changed = _damaged(bytes(blob), damage)
    _sql(db, f"UPDATE {table} SET {column} = ? WHERE {where}", changed, *params)
    owner = _owner(table, key, db)
    stored = _row(db, owner)

    seen = _run(_reopen, db, _exercise)
    clean = _CLEAN["outcomes"]["ends"]
    for iid, ended in seen["ends"].items():
        assert ended != "HANG" or clean.get(iid) == "HANG", f"{iid} hangs after {table}.{column} of {owner} was damaged"
        if iid not in _family(owner) and iid in clean:
            assert _describe(ended) == _describe(clean[iid]), f"{iid} was changed by damage to {owner}"
    mine = seen["ends"].get(owner)
    if isinstance(mine, tf.WorkflowInstance) and mine.status != getattr(clean.get(owner), "status", None):
        assert mine.error_name in _CLEAR, f"{owner}: {_describe(mine)}"
        if mine.error_name == "SnapshotDecodeError":
            assert _row(db, owner) == stored, f"{owner} was rewritten although reported unreadable"


_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(), st.text(max_size=8),
              st.binary(max_size=8), st.sampled_from(["", "main", "a", "m", "m/#0", "m/#9", "p/x", "running",
                                                      "completed", "compensating", "started", "go"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=4), st.integers(-2**63, 2**63 - 1)),
                                                                          inner, max_size=3)),
    max_leaves=8,
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*path, i))
    elif isinstance(value, dict):
        for k, item in value.items():
            found += _paths(item, (*path, k))
    return found


def _replaced(value: Any, path: tuple[Any, ...], new: Any, drop: bool) -> Any:
    if not path:
        return new
    value = copy.deepcopy(value)
    holder = value
    for part in path[:-1]:
        holder = holder[part]
    if drop:
        del holder[path[-1]]
    else:
        holder[path[-1]] = new
    return value


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 10_000), at=st.integers(0, 10_000), new=_VALUES, drop=st.booleans())
def test_property_wrong_shaped_msgpack_never_breaks_a_read(
    tmp_path_factory: pytest.TempPathFactory, which: int, at: int, new: Any, drop: bool,
) -> None:
    """README: an unreadable row "is reported ``failed`` to callers (``wait``, ``get_instance``,
    ``get_instances``) with the reason". Valid msgpack of the wrong shape (any field of a
    header, start record, step record or signal payload replaced by another value, or
    removed), read with no workflow registered: ``get_instance`` of every instance and
    ``get_instances`` (every status, one status, a newest-first page) answer, and each view of
    the damaged instance is either a readable one or ``failed`` with ``SnapshotDecodeError``."""
    tmp = tmp_path_factory.getbasetemp()
    db = _copy(_base(tmp), tmp / "shaped.db")
    blobs = _blobs(db)
    table, column, key = blobs[which % len(blobs)]
    where, params = _where(table, key)
    (blob,) = _sql(db, f"SELECT CAST({column} AS BLOB) FROM {table} WHERE {where}", *params)[0]
    value = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    paths = _paths(value)
    path = paths[at % len(paths)]
    changed = msgpack.packb(_replaced(value, path, new, drop and bool(path)), use_bin_type=True)
    _sql(db, f"UPDATE {table} SET {column} = ? WHERE {where}", changed, *params)
    owner = _owner(table, key, db)

    async def read(engine: tf.Engine) -> dict[str, Any]:
        with trio.fail_after(100):
            views = {iid: await engine.get_instance(iid) for iid in _ids(db)}
            listed = await engine.get_instances()
            await engine.get_instances(status="running")
            await engine.get_instances(order="newest", limit=2, after="sig")
        assert {i.id for i in listed} == set(views)
        return views

    views = _run(_reopen, db, read, set())  # (nothing registered: nothing runs)
    mine = views[owner]
    assert mine is not None and mine.status in ("pending", "running", "completed", "failed", "cancelled",
                                                "timed_out", "compensated"), _describe(mine)
    if mine.status == "failed" and views[owner] != _CLEAN["outcomes"]["views"].get(owner):
        assert isinstance(mine.error, str), _describe(mine)
