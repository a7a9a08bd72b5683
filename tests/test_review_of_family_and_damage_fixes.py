"""Adversarial review of e9426e3 (damaged stored rows fail alone) and 29fd364 (a parent told
of an unreadable child, late child completions, contextvars).

Each test fails on the code as reviewed because of a real problem; its docstring says what a
user relies on and what happens instead.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import virtual_wall_clock


async def _ok(ctx: tf.WorkflowContext) -> str:
    return "done"


async def test_a_parent_is_told_of_a_child_whose_start_record_is_damaged(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    """29fd364 promises (commit message, ``_refuse_unreadable``): "a parent waiting on a child
    whose snapshot cannot be read is told it failed (SnapshotDecodeError), once, instead of
    waiting for ever"; SPEC 12: nothing is left ``running`` for ever.

    That holds when the child's *header* is damaged, not when its *start record* is: the parent
    is found only through ``parent_named_in(record.start)``, which reads the damaged start
    record itself and gives ``None``. The child is reported failed, the parent is never told:
    it stays ``running`` for ever, waiting for ``trioflow.child-ended:P/c#1``, and its completed
    step ``p1`` is never compensated. The engine even has the parent in hand: the parent is
    taken up, stores its child again (``_store_child`` -> ``start()``), meets the unreadable row
    there ("unreadable: reported as such elsewhere") and goes on waiting. (SQLite also keeps
    the parent in its ``parent_id`` column.)"""
    undone: list[str] = []

    async def undo(ctx: tf.WorkflowContext, result: Any) -> None:
        undone.append(tf.current_step().step_name)

    def register(engine: tf.Engine) -> None:
        engine.register(tf.workflow("kid").step("k1", _ok).wait("w", seconds=1000).build())
        engine.register(tf.workflow("parent").step("p1", _ok, undo).child("c", workflow="kid").build())

    db, clock = tmp_path / "flows.db", virtual_wall_clock()
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock) as engine:
        register(engine)
        await engine.start("parent", instance_id="P")
        await trio.sleep(10)
        parent = await engine.get_instance("P")
        assert parent is not None and len(parent.children) == 1
        kid_id = parent.children[0]
    conn = sqlite3.connect(db)
    try:  # a disk fault in the child's start record (not valid msgpack)
        conn.execute("UPDATE trioflow_instances SET start = X'c1c1' WHERE instance_id = ?", (kid_id,))
        conn.commit()
    finally:
        conn.close()

    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), clock=clock) as engine:
        register(engine)
        with trio.move_on_after(2_000):
            await engine.wait("P")
        kid = await engine.get_instance(kid_id)
        parent = await engine.get_instance("P")
    assert kid is not None and (kid.status, kid.error_name) == ("failed", "SnapshotDecodeError"), kid
    assert parent is not None and parent.status == "failed" and undone == ["p1"], (
        parent.status if parent else None, parent.waiting if parent else None, undone)
