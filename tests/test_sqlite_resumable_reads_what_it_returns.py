"""``SQLiteAdapter.resumable()`` reads the rows it hands back through indexes (the unparked live
rows, wake times that are not numbers, parked rows a signal is pending for), not every live
row: checked to hand back what the walk it replaced did, in the same order, over random
files, and to scan no table."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

import trioflow as tf
from trioflow.adapters import _sqlite

#: The condition resumable() read every live row with before (see docs/adapters.md).
_WALKED = ("i.status IN ('pending', 'running') AND (i.wake_at IS NULL OR EXISTS"
           " (SELECT 1 FROM trioflow_signals AS s WHERE s.instance_id = i.instance_id)"
           " OR typeof(i.wake_at) NOT IN ('real', 'integer'))")


async def _made(path: Path) -> None:
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)):
        pass


@pytest.mark.parametrize("seed", range(8))
async def test_resumable_hands_back_what_the_walk_did(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "flows.db"
    await _made(path)
    with sqlite3.connect(path) as conn:
        ids = [f"i{k:03}" for k in range(120)]
        rng.shuffle(ids)  # (creation order is not id order)
        for iid in ids:
            status = rng.choice(["pending", "running", "running", "completed", "failed"])
            wake = rng.choice([None, None, 5.0, 7, 1e9, "soon", b"\x01", ""])
            conn.execute("INSERT INTO trioflow_instances (instance_id, workflow_name, status, header, wake_at)"
                         " VALUES (?, 'w', ?, x'00', ?)", (iid, status, wake))
        for _ in range(60):
            conn.execute("INSERT INTO trioflow_signals (instance_id, name, payload) VALUES (?, 's', x'00')",
                         (rng.choice(ids + ["gone"]),))
        walked = [row[0] for row in conn.execute(
            f"SELECT i.instance_id FROM trioflow_instances AS i WHERE {_WALKED} ORDER BY i.rowid")]
    adapter = tf.adapters.SQLiteAdapter(path)
    await adapter.open()
    try:
        found = [row.instance_id for row in await adapter.resumable()]
    finally:
        await adapter.close()
    assert found == walked and found


async def test_resumable_scans_no_table(tmp_path: Path) -> None:
    path = tmp_path / "flows.db"
    await _made(path)
    with sqlite3.connect(path) as conn:
        for sql in _sqlite._select_sql(_sqlite._RESUMABLE_ROWS):
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            assert not [step for step in plan if step.startswith("SCAN") and "signalled" not in step], plan
            assert not [step for step in plan if "TEMP B-TREE" in step], plan
