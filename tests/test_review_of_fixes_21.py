"""Review of the commits since 93b4757 (SQLite statement shapes, one-statement signals, the
receive output staged "as stored", ...). Each test here failed before its fix (at feb4370) and
passes on 93b4757."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters._sqlite import SQLiteAdapter


async def _opened(path: Path) -> SQLiteAdapter:
    adapter = SQLiteAdapter(path)
    await adapter.open()
    return adapter


async def test_two_checkpoints_of_one_instance_in_one_batch_apply_in_the_order_they_were_made(
    tmp_path: Path,
) -> None:
    """Two checkpoints of instance "a" that append no record (both fenced at first_seq 0) go
    in one batch with checkpoints of other instances. The one made last must be what the row
    holds, as when each is applied alone.

    Before the fix ``_checkpoint_many`` groups the batch's updates by statement shape (``_update``:
    ``_STEP_SQL`` for "same status, no start, no wake time", ``_SAME_STATUS_SQL`` for one with a
    start) and runs one ``executemany`` per shape in the order the shapes were first seen. Another
    instance's checkpoint of the other shape earlier in the batch makes a's second checkpoint
    run before its first; the fence (next_seq = first_seq) cannot tell them apart when the
    first adds no record, so both apply and the older header wins. Before, every same-status
    checkpoint went through one statement, in order. (Trio runs the four tasks forwards or
    backwards; both orders go wrong, and the order made is noted for the assertion.)"""
    adapter = await _opened(tmp_path / "f.db")
    try:
        for round in range(6):
            ids = {k: f"{k}{round}" for k in "abc"}
            for iid in ids.values():
                assert await adapter.create(iid, "w", "running", start=b"S", header=b"H0") is True
            made: list[bytes] = []

            async def checkpoint(iid: str, header: bytes, start: bytes | None) -> None:
                if iid == ids["a"]:
                    made.append(header)  # (no await between this and the call's submit)
                await adapter.checkpoint(iid, "running", header, [], first_seq=0, start=start)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(checkpoint, ids["b"], b"B", b"S-b")    # same status, a start
                nursery.start_soon(checkpoint, ids["a"], b"A-step", None)  # same status, no start
                nursery.start_soon(checkpoint, ids["a"], b"A-start", b"S-a")  # same status, a start
                nursery.start_soon(checkpoint, ids["c"], b"C", None)     # same status, no start
            stored = await adapter.load(ids["a"])
            assert stored is not None
            assert stored.header == made[-1], (round, made, stored.header)
    finally:
        await adapter.close()


async def _echo(data: Any) -> Any:
    return data


async def test_an_on_step_complete_hook_editing_a_receive_output_does_not_change_the_next_step(
    tmp_path: Path, autojump_clock: trio.testing.MockClock,
) -> None:
    """A hook gets the step's output; what it edits there must not reach the record (the next
    step's input, the instance's history), as for a task step, whose record holds a copy read
    back from the stored bytes. And a restart would read the record as stored, unedited.

    Before the fix ``run_lane`` stages a receive step's record with ``output_as_stored=True``
    (runtime/_codec.py ``stage``/``_encode_record``): the record's output is the very payload
    object that ``run.hook("on_step_complete", name, output, ctx)`` is then handed, so the
    hook's edit shows in ``ctx.steps["r"]`` and in step b's input and output."""

    def hook(name: str, output: Any, ctx: tf.WorkflowContext) -> None:
        if name == "r":
            output.pop("secret")
            output["roles"].append("hacked")

    wf = (tf.workflow("w")
          .receive("r", signal="go")
          .task("b", job="echo", input=lambda ctx: ctx.steps["r"])
          .with_hooks(on_step_complete=hook)
          .build())
    payload = {"user": "ada", "secret": "s3cr3t", "roles": ["admin"]}
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(tmp_path / "f.db")) as engine:
        engine.jobs.register("echo", _echo)
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(1)
        await engine.signal(iid, "go", {"user": "ada", "secret": "s3cr3t", "roles": ["admin"]})
        inst = await engine.wait(iid)
    assert inst.status == "completed"
    assert inst.step_results["r"].output == payload
    assert inst.step_results["b"].input == payload and inst.output == payload
