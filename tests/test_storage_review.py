"""Reproductions from a review of storage v2 (each fixed since), and a pin of per-execution
compensation in a loop."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow._codec import decode_stored


class SlowAdapter(tf.adapters.MemoryAdapter):
    """A MemoryAdapter whose checkpoints take a while, as any real storage does."""

    async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Sequence[bytes], *,
                         first_seq: int, start: bytes | None = None) -> None:
        await trio.sleep(0.5)
        await super().checkpoint(instance_id, status, header, records, first_seq=first_seq, start=start)


def sleeper(seconds: float) -> Any:
    async def job(data: Any) -> str:
        await trio.sleep(seconds)
        return f"slept {seconds}"
    return job


async def test_a_record_staged_while_a_branch_checkpoint_is_in_flight_is_not_written_twice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adapter = SlowAdapter()
    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch("a").task("ta", job=sleeper(1.0)).build(),
        tf.branch("b").task("tb", job=sleeper(1.2)).build(),
    ]).task("after", job=sleeper(0)).build()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("w"))
    assert done.status == "completed", done.error
    stored = await adapter.load(done.id)
    assert stored is not None
    assert len(stored.records) == 4, "ta, tb, p, after: each written once"
    decode_stored(stored)


async def test_a_pass_step_first_in_a_workflow_passes_none(autojump_clock: trio.testing.MockClock) -> None:
    wf = tf.workflow("w").pass_("first").task("t", job=sleeper(0)).build()
    async with tf.open_engine() as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("w"))
    assert done.status == "completed", done.error


async def test_one_sqlite_row_with_a_missing_record_does_not_stop_the_others(
    tmp_path: Any, autojump_clock: trio.testing.MockClock,
) -> None:
    path = tmp_path / "flows.db"
    gate = trio.Event()

    async def hang(data: Any) -> str:
        await gate.wait()
        return "ok"

    wf = tf.workflow("w").task("s1", job=sleeper(0)).task("s2", job=hang).build()
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        first = await engine.start("w")
        second = await engine.start("w")
        await trio.sleep(1)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM trioflow_records WHERE instance_id = ?", (first,))
    conn.close()
    gate.set()
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        assert (await engine.wait(second)).status == "completed"
        assert (await engine.get_instance(first)).status == "failed"


async def test_sqlite_a_branch_step_ending_during_a_sibling_checkpoint_corrupts_the_row(
    tmp_path: Any, autojump_clock: trio.testing.MockClock,
) -> None:
    async def a(data: Any) -> str:
        await trio.sleep(1.0)
        return "a"

    async def b(data: Any) -> str:
        await trio.sleep(1.0)
        for _ in range(5):  # ends a few scheduler passes after a: while a's checkpoint is written
            await trio.sleep(0)
        return "b"

    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch("a").task("ta", job=a).build(), tf.branch("b").task("tb", job=b).build(),
    ]).task("after", job=sleeper(0)).build()
    path = tmp_path / "flows.db"
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        assert (await engine.wait(iid)).status == "completed"
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        stored = await engine.get_instance(iid)
        assert stored is not None and stored.status == "completed", stored and stored.error
        assert [r.id for r in stored.history] == ["p/a/ta#1", "p/b/tb#1", "p#1", "after#1"]


async def test_a_branch_never_goes_on_before_its_step_is_stored_when_the_checkpoint_leader_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adapter = SlowAdapter()
    unstored: list[str] = []

    async def boom(data: Any) -> None:
        await trio.sleep(1.0)
        raise RuntimeError("boom")

    async def check(data: Any) -> None:
        current = tf.current_step()
        stored = await adapter.load(current.instance_id)
        assert stored is not None
        if "tb" not in [r.step_name for r in decode_stored(stored).records]:
            unstored.append(current.instance_id)

    inner = tf.branch("inner").parallel("q", branches=[
        tf.branch("x").task("tx", job=sleeper(1.0)).build(), tf.branch("y").task("ty", job=boom).build(),
    ]).build()
    outer = tf.branch("b").task("tb", job=sleeper(1.0)).task("check", job=check).build()
    wf = tf.workflow("w").parallel("o", branches=[inner, outer], on_error="wait-all").build()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(wf)
        for _ in range(40):  # the leader of a shared checkpoint is chosen by scheduler order
            assert (await engine.wait(await engine.start("w"))).status == "failed"
    assert unstored == [], f"{len(unstored)} of 40 runs started 'check' before 'tb' was stored"


async def test_pin_loop_compensates_each_execution_with_its_own_output_newest_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    released: list[Any] = []
    again = [False, True]  # loop back once

    async def reserve(data: Any) -> int:
        return len(tf.current_step().execution_id)  # differs per execution: "reserve#1" vs "reserve#2"

    async def release(output: Any) -> None:
        released.append(output)

    async def fail(data: Any) -> None:
        raise RuntimeError("no")

    wf = (tf.workflow("w")
          .task("reserve", job=reserve, compensate=release)
          .choice("again", choices=[tf.Choice(condition=lambda ctx: len(released) < 0 or again.pop(), next="reserve")],
                  default="look")
          .pass_("look")
          .task("fail", job=fail).build())
    async with tf.open_engine(adapter=tf.adapters.MemoryAdapter()) as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("w"))
    assert done.status == "failed"
    reserves = [r for r in done.history if r.step_name == "reserve"]
    assert [r.id for r in reserves] == [f"reserve#{i + 1}" for i in range(len(reserves))]
    assert done.compensated_steps == ("reserve",) * len(reserves)
    assert released == [r.output for r in reversed(reserves)]
    look = next(r for r in done.history if r.step_name == "look")
    assert look.passes is not None and done.history[look.passes].step_name == "again"
    assert look.output == reserves[-1].output
