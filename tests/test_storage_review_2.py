"""A review of storage: each test failed before its fix (expected vs what happened in its
docstring): ids that are not valid text, and adapters with subtle bugs the conformance kit let
pass (autojump MockClock, no real sleeps)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._snapshot import TERMINAL
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import check_persistence_adapter, open_test_engine, virtual_wall_clock


async def ok(data: Any) -> Any:
    return data


async def boom(data: Any) -> None:
    raise RuntimeError("boom")


# ----------------------------------------------------------------------------------------------
# Ids that are not valid text: SQLite blames the database, memory says "unknown"
# ----------------------------------------------------------------------------------------------


async def test_an_instance_id_that_is_not_valid_text_is_not_a_database_failure_on_sqlite(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    """``get_instance`` / ``wait`` / ``cancel`` / ``get_instances(after=...)`` with an id holding
    a lone surrogate (e.g. built from an ``os.fsdecode``'d file name).

    Expected (as on MemoryAdapter, and as the fix for signal names in
    tests/test_sqlite_review.py decided): no such instance (``None`` /
    ``UnknownInstanceError``), or an ``InvalidArgumentError`` naming the id; the same on every
    adapter.

    Before the fix, on SQLiteAdapter: ``DatabaseError: SQLite load failed: 'utf-8' codec can't encode
    character '\\ud800' ...`` -- a storage failure blaming the database for the caller's
    argument (and the op's whole batch is rolled back and replayed op by op). Cause:
    runtime/_engine.py:_check_instance_id only checks ``isinstance(str)``; adapters/_sqlite.py
    binds the str, which sqlite3 cannot encode."""
    adapter = SQLiteAdapter(tmp_path / "f.db")  # (the same calls on MemoryAdapter give None / UnknownInstanceError)
    bad = "order-\ud800"
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("w").task("a", job=ok).build())
        await engine.wait(await engine.start("w", 1))
        outcomes: dict[str, str] = {}
        for name, call in (("get_instance", lambda: engine.get_instance(bad)), ("wait", lambda: engine.wait(bad)),
                           ("cancel", lambda: engine.cancel(bad)),
                           ("get_instances", lambda: engine.get_instances(after=bad))):
            try:
                result = await call()
                outcomes[name] = f"returned {result!r}"
            except (tf.UnknownInstanceError, tf.InvalidArgumentError) as exc:
                outcomes[name] = f"ok: {type(exc).__name__}"
            except tf.TrioflowError as exc:
                outcomes[name] = f"BAD {type(exc).__name__}: {exc}"
    bad_ones = {k: v for k, v in outcomes.items() if v.startswith("BAD")}
    assert not bad_ones, bad_ones


# ----------------------------------------------------------------------------------------------
# Conformance kit: subtly broken adapters it passes, whose bugs the engine then hits
# ----------------------------------------------------------------------------------------------


class _PurgeLimitsBeforeFiltering(MemoryAdapter):
    """purge(): takes the ``limit`` earliest finished rows first, then keeps those of the
    asked status/workflow (a SQL adapter doing ``... ORDER BY finished_at LIMIT ?`` in a
    subquery and filtering outside it)."""

    async def purge(self, finished_by: float, limit: int, *, status: Any = None, workflow_name: Any = None) -> int:
        candidates = []
        for place in self._order.walk():
            if not self._current(place):
                continue
            at, row = place
            if at > finished_by or len(candidates) == limit:
                break
            candidates.append(row)
        purged = 0
        for row in candidates:
            if (status is None or row.status == status) and (workflow_name is None or row.workflow_name == workflow_name):
                self._remove(row)
                purged += 1
        return purged


async def _kit_result(cls: type[MemoryAdapter]) -> str:
    stores: dict[str, MemoryAdapter] = {}
    try:
        await check_persistence_adapter(lambda key: stores.setdefault(key, cls()))
    except AssertionError as exc:
        return f"caught: {exc}"
    return "passed"


async def test_the_kit_catches_a_purge_that_limits_before_it_filters(autojump_clock: trio.testing.MockClock) -> None:
    """docs/adapters.md: the kit checks "purge by finish time (earliest first, ``limit``, by
    status and by workflow ...)".

    Expected: an adapter whose ``purge(limit, status=/workflow_name=)`` applies ``limit``
    before the status/workflow filter fails the kit.

    Before the fix: it passes (runtime/testing/_conformance.py:purge_by_finish_time only purges by
    status/workflow with limit=10 over 4 rows, so the limit never bites). With such an adapter
    ``engine.purge(status="failed")`` deletes nothing once 1,000 completed instances finished
    before the failed ones (the first batch of PURGE_BATCH=1000 holds no failed row, returns
    0 < 1000, and Engine.purge stops: runtime/_engine.py:779-782), so failed instances are
    never purged."""
    adapter = _PurgeLimitsBeforeFiltering()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("ok").task("a", job=ok).build())
        engine.register(tf.workflow("bad").task("a", job=boom).build())
        for n in range(1000):
            await engine.wait(await engine.start("ok", n))
        await engine.wait(await engine.start("bad", instance_id="failed-one"))
        purged = await engine.purge(older_than=0, status="failed")
    assert purged == 0, "the broken adapter really loses the failed row's purge"  # the consequence
    assert (await _kit_result(_PurgeLimitsBeforeFiltering)).startswith("caught"), (
        "the conformance kit passes an adapter whose purge applies limit before status/workflow")


class _ListLimitsBeforeStatus(MemoryAdapter):
    """list_instances(status=, no workflow): the page of every workflow first, then its rows
    of that status."""

    async def list_instances(self, workflow_name: Any = None, status: Any = None, *, after: Any = None,
                             limit: Any = None, newest_first: bool = False) -> Any:
        if workflow_name is None and status is not None:
            rows = await super().list_instances(None, None, after=after, limit=limit, newest_first=newest_first)
            return [r for r in rows if r.status == status]
        return await super().list_instances(workflow_name, status, after=after, limit=limit, newest_first=newest_first)


async def test_the_kit_catches_a_status_listing_of_every_workflow_that_limits_before_it_filters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Expected: the kit's paged-listing check fails an adapter whose
    ``list_instances(None, status, limit=n)`` takes n rows and then filters by status.

    Before the fix: it passes (runtime/testing/_conformance.py:lists_pages_in_creation_order pages
    with a status only together with a workflow; ``ids(None, "running")`` has no limit). With
    such an adapter ``engine.get_instances(status="running", limit=2)`` returns a short page,
    which the engine (and its docstring: "A page shorter than limit is the last") takes as the
    end of the listing: running instances are never listed."""
    adapter = _ListLimitsBeforeStatus()
    gate = trio.Event()

    async def held(data: Any) -> None:
        await gate.wait()

    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("ok").task("a", job=ok).build())
        engine.register(tf.workflow("held").task("a", job=held).build())
        for n in range(3):
            await engine.wait(await engine.start("ok", n))
        running = [await engine.start("held", n) for n in range(3)]
        page = await engine.get_instances(status="running", limit=2)
        gate.set()
    assert len(page) < 2 and running, "the broken adapter really gives a short first page"  # the consequence
    assert (await _kit_result(_ListLimitsBeforeStatus)).startswith("caught"), (
        "the conformance kit passes an adapter whose status listing of every workflow limits before filtering")


class _ClockChangesWhileOpen(MemoryAdapter):
    """use_clock(): takes the clock whenever given, open or not."""

    def use_clock(self, clock: Callable[[], float]) -> None:
        self._clock = clock


async def test_the_kit_catches_an_adapter_whose_clock_a_refused_engine_changes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """docs/adapters.md (use_clock): "one given while the adapter is open changes nothing (a
    second engine's, which open() then refuses)". tests/test_retention_review.py shows why: a
    refused second engine must not move the first engine's finish times.

    Expected: the kit fails an adapter that takes a clock given while it is open.

    Before the fix: the kit never calls use_clock on an open adapter
    (runtime/testing/_conformance.py:_opened calls it only before open()), so it passes; and
    with it, a refused second engine a day behind makes the first engine purge an instance
    that finished a moment ago as "an hour old"."""
    adapter = _ClockChangesWhileOpen()
    base = virtual_wall_clock()
    async with open_test_engine(adapter=adapter, clock=base) as engine:
        engine.register(tf.workflow("ok").task("a", job=ok).build())
        with pytest.raises(tf.AdapterInUseError):
            async with open_test_engine(adapter=adapter, clock=lambda: base() - 86_400):
                pass
        await engine.wait(await engine.start("ok", instance_id="just-finished"))
        purged = await engine.purge(older_than=timedelta(hours=1))
    assert purged == 1, "the broken adapter really purges an instance that finished a moment ago"  # the consequence
    assert (await _kit_result(_ClockChangesWhileOpen)).startswith("caught"), (
        "the conformance kit passes an adapter whose clock changes while it is open")


class _RestampsFinishedRows(MemoryAdapter):
    """checkpoint(): stamps the finish time again at every checkpoint of a finished row, even
    one that keeps its status."""

    async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Any, **kwargs: Any) -> Any:
        row = self._rows.get(instance_id)
        same = row is not None and row.status == status and status in TERMINAL
        result = await super().checkpoint(instance_id, status, header, records, **kwargs)
        if same and row is not None:
            self._stamp(row)
        return result


async def test_the_kit_catches_an_adapter_that_restamps_a_finished_rows_finish_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """docs/adapters.md: the finish time "is stamped ... when a create or checkpoint gives it a
    finished status"; a checkpoint that keeps a finished status (a completed child whose
    compensation a parent runs later) must keep it (the repo tests this for the shipped
    adapters: test_events_listings_review.py::test_both_adapters_keep_a_finished_rows_finish_time...).

    Expected: the kit's purge checks fail an adapter that re-stamps it.

    Before the fix: runtime/testing/_conformance.py:purge_by_finish_time never checkpoints a finished
    row again, so the kit passes it."""
    assert (await _kit_result(_RestampsFinishedRows)).startswith("caught"), (
        "the conformance kit passes an adapter that re-stamps finish times on later checkpoints")
