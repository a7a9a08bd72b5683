"""From a review written as the operator of a service embedding trioflow on SQLite (listings,
views, storage trouble). Both tests failed until the commit that added this file."""

from __future__ import annotations

import logging
import sqlite3

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import SQLiteAdapter


async def _quick(ctx: tf.WorkflowContext) -> int:
    return 1


async def test_listing_is_answered_while_another_connection_writes(tmp_path: object) -> None:
    """An operator's ``sqlite3`` shell (or a backup job) holds a write transaction on the
    engine's file; the service's dashboard lists instances with ``get_instances()`` and reads
    one with ``get_instance()``. docs/adapters.md: a transaction that only reads begins
    deferred, "in WAL mode a reader takes no write lock, so reads are answered while another
    connection (an operator's sqlite3 shell) writes"; "A batch of reads alone takes no write
    lock". The user expects both reads to be answered, as ``get_instance`` is.

    Was: ``get_instances()`` raises ``DatabaseUnavailableError: SQLite list failed: database
    is locked`` after ``busy_timeout``: the listing (a pure read, two SELECTs) runs under
    ``BEGIN IMMEDIATE`` because ``"list"`` is not in ``_READS`` (adapters/_sqlite.py:78)."""
    path = f"{tmp_path}/flows.db"
    async with tf.open_engine(adapter=SQLiteAdapter(path, busy_timeout=0.1)) as engine:
        engine.register(tf.workflow("s").step("a", _quick).build())
        iid = await engine.start("s", 1)
        await engine.wait(iid)
        shell = sqlite3.connect(path, isolation_level=None)
        try:
            shell.execute("BEGIN IMMEDIATE")  # the operator's shell, mid-write
            one = await engine.get_instance(iid)  # answered (deferred read)
            assert one is not None and one.status == "completed"
            listed = await engine.get_instances()  # Was: DatabaseUnavailableError
            assert [v.id for v in listed] == [iid]
        finally:
            shell.execute("ROLLBACK")
            shell.close()


async def test_view_of_an_instance_whose_end_is_being_stored_matches_storage(
    tmp_path: object, autojump_clock: trio.testing.MockClock,
) -> None:
    """The last step of a saga returns, and its terminal checkpoint cannot be stored yet (the
    database is locked by another connection; the engine retries). The operator's JSON API
    calls ``get_instance()``. README (Views/Listing): "while the checkpoint of a change is in
    flight (an admission from the queue, an end), get_instance and get_instances say the
    status before it, as wait() does (an end being stored shows no output nor completed_at
    yet)". The user expects a coherent view of the instance before its end: ``running`` at
    step ``b``, with ``history`` what storage holds (only ``a#1``: a crash now runs ``b`` again).

    Was: the view is a hybrid: status ``running`` but ``current_step`` ``None``, and
    ``history``/``step_results`` list ``b#1`` ``completed`` (and ``data`` holds what ``b`` set),
    none of which is stored (storage: status running, next_seq 1). ``_live_view``
    (runtime/_engine.py:2851) evolves only ``status``, ``output`` and ``completed_at``."""
    gate = trio.Event()

    async def b(ctx: tf.WorkflowContext) -> str:
        await gate.wait()
        return "B"

    path = f"{tmp_path}/flows.db"
    logging.getLogger("trioflow").disabled = True  # (the storage retries' warnings)
    try:
        async with tf.open_engine(adapter=SQLiteAdapter(path, busy_timeout=0.02), storage_retry_for=3600) as engine:
            engine.register(tf.workflow("s").step("a", _quick).step("b", b).build())
            iid = await engine.start("s", 1)
            await trio.sleep(1)
            shell = sqlite3.connect(path, isolation_level=None)
            try:
                shell.execute("BEGIN IMMEDIATE")
                gate.set()
                await trio.sleep(1)  # b returned; its end cannot be stored meanwhile
                stored = shell.execute("SELECT status, next_seq FROM trioflow_instances").fetchall()
                view = await engine.get_instance(iid)
            finally:
                shell.execute("ROLLBACK")
                shell.close()
            assert stored == [("running", 1)]
            assert view is not None and view.status == "running"
            assert (view.current_step, [h.id for h in view.history]) == ("b", ["a#1"])  # Was: (None, ['a#1', 'b#1'])
            assert (await engine.wait(iid)).status == "completed"
    finally:
        logging.getLogger("trioflow").disabled = False
