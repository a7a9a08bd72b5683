"""Issue 11: reproductions of lost, doubled, orphaned and stuck work, each fixed (SPEC §6, §9)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import attrs
import msgpack
import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._codec import HEADER_TAG, decode_stored, encode_header

from test_engine import Jobs, three_steps


class Boom(Exception):
    pass


@attrs.define
class Release:
    """A compensation that is an unhashable callable object (attrs classes with eq are)."""

    calls: list[str]

    async def __call__(self, output: Any) -> None:
        self.calls.append(f"release {output}")


async def test_an_unhashable_compensation_callable_is_compensated_like_any_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[str] = []

    async def ok(data: Any) -> str:
        return "ok"

    async def fails(data: Any) -> None:
        raise Boom("no")

    wf = (tf.workflow("w").task("a", job=ok, compensate=Release(calls)).task("b", job=ok, compensate=Release(calls))
          .task("c", job=fails).build())
    result = await tf.execute_workflow(None, wf)
    assert result.compensated_steps == ("b", "a") and calls == ["release ok", "release ok"]
    assert result.compensation_errors == {}


async def test_a_retry_on_predicate_that_raises_in_compensation_fails_only_that_compensation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[str] = []

    def bad_predicate(error: BaseException) -> bool:
        raise RuntimeError("predicate broke")

    async def ok(data: Any) -> str:
        return "ok"

    async def undo_a(output: Any) -> None:
        calls.append("undo-a")

    async def undo_b(output: Any) -> None:
        calls.append("undo-b")
        raise Boom("undo-b failed")

    async def fails(data: Any) -> None:
        raise Boom("no")

    wf = (tf.workflow("w").task("a", job=ok, compensate=undo_a)
          .task("b", job=ok, compensate=undo_b, retry=tf.Retry(max_attempts=3, retry_on=bad_predicate))
          .task("c", job=fails).build())
    async with tf.open_engine() as engine:
        engine.register(wf)
        inst = await engine.wait(await engine.start("w"))
    assert inst.status == "failed" and "Boom: no" in (inst.error or "")
    assert calls == ["undo-b", "undo-a"], "the compensation after the broken one still runs"
    assert inst.compensated_steps == ("a",)
    assert "predicate broke" in inst.compensation_errors["b"]


@attrs.define(weakref_slot=True)
class Payload:
    data: bytearray


async def test_step_callables_are_not_kept_alive_by_the_engine(autojump_clock: trio.testing.MockClock) -> None:
    """Per-request workflows with closures: once a run is over, nothing of trioflow holds them."""
    refs: list[weakref.ref[Any]] = []
    for i in range(50):
        payload = Payload(bytearray(256 * 1024))

        async def handler(ctx: Any, payload: Payload = payload) -> int:
            return len(payload.data)

        refs.append(weakref.ref(payload))
        wf = tf.workflow(f"request-{i}").step("s", handler).build()
        assert (await tf.execute_workflow(None, wf)).output == 256 * 1024
        del handler, wf, payload
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


# -- helpers for the engine items -----------------------------------------------------------------


async def left_in_b(adapter: tf.adapters.Adapter, *ids: str) -> None:
    """Leave instances stored as running, inside step ``b``, as a killed engine would."""
    async with tf.open_engine(adapter=adapter) as engine:
        Jobs(b_hangs=True).register(engine)
        engine.register(three_steps())
        for iid in ids:
            await engine.start("w", {"id": iid}, instance_id=iid)
        await trio.sleep(1)


async def test_resubmitting_an_id_right_after_a_restart_runs_the_instance(
    tmp_path: Path, autojump_clock: trio.testing.MockClock,
) -> None:
    """Item 5: a client retrying ``start(instance_id=...)`` while the restart resumes it."""
    path = tmp_path / "flows.db"
    await left_in_b(tf.adapters.SQLiteAdapter(path), "order-0")
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        jobs = Jobs()
        jobs.register(engine)
        engine.register(three_steps())
        assert await engine.start("w", {"id": "order-0"}, instance_id="order-0") == "order-0"
        done = await engine.wait("order-0")
    assert done.status == "completed" and jobs.calls == ["b", "c"]


async def test_a_malformed_row_does_not_stop_the_resume_of_the_others(autojump_clock: trio.testing.MockClock) -> None:
    """Item 6: a decodable snapshot with a lane position of the wrong type fails alone."""
    adapter = tf.adapters.MemoryAdapter()
    await left_in_b(adapter, "first", "bad", "last")
    record = await adapter.load("bad")
    assert record is not None
    state = decode_stored(record)
    state.lanes[""].step = ["not", "a", "name"]  # type: ignore[assignment]
    await adapter.checkpoint("bad", "running", encode_header(state), [], first_seq=len(record.records))
    async with tf.open_engine(adapter=adapter) as engine:
        Jobs().register(engine)
        engine.register(three_steps())
        assert (await engine.wait("first")).status == "completed"
        assert (await engine.wait("last")).status == "completed"
        bad = await engine.wait("bad")
    assert bad.status == "failed" and "SnapshotDecodeError" in (bad.error or "")


async def test_a_row_holding_another_instances_snapshot_is_not_run(autojump_clock: trio.testing.MockClock) -> None:
    """Item 7: a copied row would otherwise run its instance twice at once."""
    adapter = tf.adapters.MemoryAdapter()
    await left_in_b(adapter, "real")
    record = await adapter.load("real")
    assert record is not None
    await adapter.create("copy", "w", "running", start=record.start or b"", header=record.header)
    await adapter.checkpoint("copy", "running", record.header, record.records, first_seq=0)
    async with tf.open_engine(adapter=adapter) as engine:
        jobs = Jobs()
        jobs.register(engine)
        engine.register(three_steps())
        assert (await engine.wait("real")).status == "completed"
        copy = await engine.wait("copy")
    assert jobs.calls == ["b", "c"], "the instance ran once"
    assert copy.status == "failed" and "holds the snapshot of instance 'real'" in (copy.error or "")
    stored = await adapter.load("copy")
    assert stored is not None and (stored.start, stored.header, stored.records) == (
        record.start, record.header, record.records), "the row is left as it was"


async def test_a_snapshot_from_a_newer_release_is_refused_and_left_untouched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Item 2: after a rolled-back deploy, the newer release's rows must survive the older one."""
    adapter = tf.adapters.MemoryAdapter()
    await left_in_b(adapter, "mine")
    record = await adapter.load("mine")
    assert record is not None
    newer = msgpack.packb([HEADER_TAG, 99, "running", "..."])
    assert record.start is not None
    await adapter.create("future", "w", "running", start=record.start, header=newer)
    async with tf.open_engine(adapter=adapter) as engine:
        Jobs().register(engine)
        engine.register(three_steps())
        assert (await engine.wait("mine")).status == "completed"
        future = await engine.wait("future")
        assert (await engine.get_instance("future")) == future
        listed = {i.id: i for i in await engine.get_instances("w")}
    assert future.status == "failed" and "format version 99 is not supported" in (future.error or "")
    assert listed["future"].status == "failed" and listed["mine"].status == "completed"
    stored = await adapter.load("future")
    assert stored is not None and stored.header == newer and stored.status == "running"


async def test_one_corrupt_finished_row_does_not_break_listing(autojump_clock: trio.testing.MockClock) -> None:
    """Item 17: ``get_instances`` lists the readable rows and reports the unreadable one failed."""
    adapter = tf.adapters.MemoryAdapter()
    async with tf.open_engine(adapter=adapter) as engine:
        Jobs().register(engine)
        engine.register(three_steps())
        good = await engine.start("w")
        await engine.wait(good)
    await adapter.create("corrupt", "w", "completed", start=b"\xc1\xc1", header=b"\xc1\xc1")
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(three_steps())
        listed = {i.id: i for i in await engine.get_instances("w")}
    assert listed[good].status == "completed"
    assert listed["corrupt"].status == "failed" and "SnapshotDecodeError" in (listed["corrupt"].error or "")


async def test_a_resume_waits_for_the_jobs_it_needs(autojump_clock: trio.testing.MockClock) -> None:
    """Item 8: registering the workflow before its jobs must not fail its instances for good."""
    adapter = tf.adapters.MemoryAdapter()
    await left_in_b(adapter, "x")
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(three_steps())
        await trio.sleep(1)
        with pytest.raises(tf.InstanceNotLiveError, match="missing: a, b, c"):
            await engine.wait("x")
        jobs = Jobs()
        jobs.register(engine)
        done = await engine.wait("x")
    assert done.status == "completed" and jobs.calls == ["b", "c"]


async def test_a_live_instance_id_cannot_be_reused_for_another_workflow(autojump_clock: trio.testing.MockClock) -> None:
    """Item 9: the conflict is raised while the instance runs, as it is once it has finished."""
    async with tf.open_engine() as engine:
        Jobs(b_hangs=True).register(engine)
        engine.register(three_steps("w"))
        engine.register(three_steps("other"))
        await engine.start("w", instance_id="shared")
        with pytest.raises(tf.InstanceIdConflictError, match="already belongs to workflow 'w'"):
            await engine.start("other", instance_id="shared")
        assert await engine.start("w", instance_id="shared") == "shared"


async def test_a_waiter_on_a_queued_instance_is_released_when_the_engine_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Item 10: ``max_running=1``, the second instance queued, the engine leaves its block."""
    outcome: list[BaseException] = []

    async def waiter(engine: tf.Engine, iid: str) -> None:
        try:
            await engine.wait(iid)
        except tf.EngineClosedError as exc:
            outcome.append(exc)

    with trio.fail_after(60):
        async with trio.open_nursery() as outer:
            async with tf.open_engine(max_running=1) as engine:
                Jobs(b_hangs=True).register(engine)
                engine.register(three_steps())
                await engine.start("w")
                queued = await engine.start("w")
                assert (await engine.get_instance(queued)).status == "pending"  # type: ignore[union-attr]
                outer.start_soon(waiter, engine, queued)
                await trio.sleep(1)
    assert len(outcome) == 1


async def test_engine_calls_after_close_raise_engine_closed(autojump_clock: trio.testing.MockClock) -> None:
    """Item 17: ``cancel()`` after close said "Nursery is closed to new arrivals"."""
    async with tf.open_engine() as engine:
        Jobs().register(engine)
        engine.register(three_steps())
        iid = await engine.start("w")
        await engine.wait(iid)
    with pytest.raises(tf.EngineClosedError):
        await engine.cancel(iid)
    with pytest.raises(tf.EngineClosedError):
        await engine.get_instance(iid)


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
async def test_keyboard_interrupt_and_system_exit_from_a_branch_come_out_as_themselves(
    fatal: type[BaseException], autojump_clock: trio.testing.MockClock
) -> None:
    """Item 17: not wrapped in a BaseExceptionGroup, so ``except KeyboardInterrupt`` works."""

    async def stop(ctx: Any) -> None:
        raise fatal()

    async def slow(ctx: Any) -> None:
        await trio.sleep(10)

    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch("x").step("stop", stop).build(), tf.branch("y").step("slow", slow).build()]).build()
    with pytest.raises(fatal):
        await tf.execute_workflow(None, wf)


async def test_inputs_and_outputs_that_cannot_be_read_back_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    """Item 3: a dict with tuple keys packs, but unpacks as list keys, which Python refuses."""
    adapter = tf.adapters.MemoryAdapter()

    async def tuple_keys(data: Any) -> Any:
        return {"totals": {("eu", 2026): 10}}

    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("w").task("t", job=tuple_keys).build())
        with pytest.raises(tf.UnencodableValueError, match=r"workflow input\['by'\] has a dict key of type tuple"):
            await engine.start("w", {"by": {(1, 2): 3}}, instance_id="refused")
        assert await adapter.load("refused") is None, "nothing is stored"
        iid = await engine.start("w")
        done = await engine.wait(iid)
        assert done.status == "failed" and "output of step 't'['totals'] has a dict key" in (done.error or "")
        assert (await engine.get_instance(iid)) is not None
        assert [i.id for i in await engine.get_instances("w")] == [iid]


async def test_current_step_names_the_execution_and_attempt_for_idempotency_keys(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Jobs build idempotency keys from ``tf.current_step()``: stable across retries of one
    execution, new for the next execution; plain ``def`` jobs in threads see it too."""
    seen: list[tuple[str, str, int, bool]] = []

    async def flaky(data: Any) -> str:
        info = tf.current_step()
        seen.append((info.step_name, info.execution_id, info.attempt, info.compensating))
        if info.attempt == 1:
            raise Boom("first attempt fails")
        return info.instance_id

    def in_thread(data: Any) -> str:
        info = tf.current_step()
        seen.append((info.step_name, info.execution_id, info.attempt, info.compensating))
        return info.workflow_name

    async def undo(output: Any) -> None:
        info = tf.current_step()
        seen.append((info.step_name, info.execution_id, info.attempt, info.compensating))

    async def fail(data: Any) -> None:
        raise Boom("no")

    wf = (tf.workflow("keys").task("charge", job=flaky, retry=tf.Retry(max_attempts=2, interval=0.0),
                                   compensate=undo)
          .task("thread", job=in_thread).task("fail", job=fail).build())
    async with tf.open_engine() as engine:
        engine.register(wf)
        inst = await engine.wait(await engine.start("keys", instance_id="order-7"))
    assert inst.step_results["charge"].output == "order-7" and inst.step_results["thread"].output == "keys"
    assert seen == [("charge", "charge#1", 1, False), ("charge", "charge#1", 2, False),
                    ("thread", "thread#1", 1, False), ("charge", "charge#1", 1, True)]
    with pytest.raises(tf.NotInStepError):
        tf.current_step()
