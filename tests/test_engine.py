"""The engine service (SPEC §5, §6, §8, §9), on trio's MockClock (pytest-trio's autojump_clock)."""

from __future__ import annotations

import contextvars
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._codec import decode_stored

class Boom(Exception):
    pass


def three_steps(name: str = "w") -> tf.WorkflowDefinition:
    return tf.workflow(name).task("a", job="a").task("b", job="b").task("c", job="c").build()


class Jobs:
    """Async jobs that log their calls; ``b`` can be made to hang or fail."""

    def __init__(self, b_hangs: bool = False, b_fails: bool = False) -> None:
        self.calls: list[str] = []
        self.b_hangs = b_hangs
        self.b_fails = b_fails

    def register(self, engine: tf.Engine) -> None:
        for name in ("a", "b", "c"):
            engine.jobs.register(name, self._job(name))

    def _job(self, name: str) -> Any:
        async def job(data: Any) -> str:
            self.calls.append(name)
            if name == "b" and self.b_hangs:
                await trio.sleep_forever()
            if name == "b" and self.b_fails:
                raise Boom("b failed")
            return f"{name}-out"
        return job


async def test_start_wait_and_inspect(autojump_clock: trio.testing.MockClock) -> None:
    async with tf.open_engine() as engine:
        jobs = Jobs()
        jobs.register(engine)
        engine.register(three_steps())
        iid = await engine.start("w", {"k": 1})
        inst = await engine.wait(iid)
        assert inst.status == "completed" and inst.output == "c-out" and inst.input == {"k": 1}
        assert [r.status for r in inst.step_results.values()] == ["completed"] * 3
        assert inst.step_results["b"].attempts == 1 and inst.step_results["a"].input == {"k": 1}
        assert inst.created_at <= inst.started_at <= inst.completed_at  # type: ignore[operator]
        assert await engine.get_instance("nope") is None
        with pytest.raises(tf.UnknownInstanceError):
            await engine.wait("nope")
        assert [i.id for i in await engine.get_instances("w", status="completed")] == [iid]
        assert await engine.get_instances("w", status="running") == []


async def test_a_waiter_that_gives_up_leaves_the_other_waiters_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()

    async def gated(data: Any) -> str:
        await release.wait()
        return "done"

    async with tf.open_engine() as engine:
        engine.register(tf.workflow("w").task("a", job=gated).build())
        iid = await engine.start("w")
        outputs: list[Any] = []

        async def patient() -> None:
            outputs.append((await engine.wait(iid)).output)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(patient)
            with trio.move_on_after(5) as scope:
                await engine.wait(iid)
            assert scope.cancelled_caught
            nursery.start_soon(patient)
            await trio.sleep(1)
            assert outputs == []
            release.set()
        assert outputs == ["done", "done"]


async def test_bad_input_is_refused_before_anything_is_stored(autojump_clock: trio.testing.MockClock) -> None:
    adapter = tf.adapters.MemoryAdapter()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(three_steps())
        with pytest.raises(tf.UnknownWorkflowError, match="no workflow registered as 'x' \\(registered: w\\)"):
            await engine.start("x")
        with pytest.raises(tf.InvalidArgumentError, match="takes a registered workflow's name, got WorkflowDefinition: pass its name, 'w'"):
            await engine.start(three_steps())  # type: ignore[arg-type]
        with pytest.raises(tf.UnknownJobError, match="uses jobs nobody registered: a, b, c"):
            await engine.start("w")
        Jobs().register(engine)
        with pytest.raises(tf.UnencodableValueError, match=r"workflow input\['when'\] is an object"):
            await engine.start("w", {"when": object()})
        with pytest.raises(tf.InvalidArgumentError, match="instance_id"):
            await engine.start("w", instance_id="")  # nothing stored for any of these
        assert await adapter.list_instances("w") == [] and await adapter.list_instances("x") == []


async def test_start_with_an_instance_id_is_idempotent(autojump_clock: trio.testing.MockClock) -> None:
    async with tf.open_engine() as engine:
        jobs = Jobs()
        jobs.register(engine)
        engine.register(three_steps())
        engine.register(three_steps("other"))
        first = await engine.start("w", {}, instance_id="ORD-1")
        again = await engine.start("w", {}, instance_id="ORD-1")
        await engine.wait("ORD-1")
        assert first == again == "ORD-1" and jobs.calls == ["a", "b", "c"]
        assert await engine.start("w", {}, instance_id="ORD-1") == "ORD-1"  # finished: still not rerun
        assert jobs.calls == ["a", "b", "c"]
        with pytest.raises(tf.InstanceIdConflictError, match="already belongs to workflow 'w'"):
            await engine.start("other", {}, instance_id="ORD-1")


@pytest.mark.parametrize(("first", "second"), [
    ({"flag": 1}, {"flag": True}), ({"amount": 1}, {"amount": 1.0}), ([0], [False])])
async def test_an_input_that_reads_back_otherwise_is_another_input(
        autojump_clock: trio.testing.MockClock, first: Any, second: Any) -> None:
    # 1, 1.0 and True are stored apart and read back as themselves: equal in Python, another
    # input all the same. A tuple for a list, or another key order, is the same input.
    async with tf.testing.open_test_engine() as engine:
        engine.register(tf.workflow("w").step("a", lambda ctx: ctx.input).build())
        await engine.wait(await engine.start("w", first, instance_id="x"))
        with pytest.raises(tf.InstanceIdConflictError, match="with another input"):
            await engine.start("w", second, instance_id="x")
        await engine.wait(await engine.start("w", {"a": (1, 2), "b": 3}, instance_id="y"))
        assert await engine.start("w", {"b": 3, "a": [1, 2]}, instance_id="y") == "y"


async def test_cancel_stops_the_running_step_then_compensates(autojump_clock: trio.testing.MockClock) -> None:
    undone: list[str] = []
    finished: list[str] = []

    async def reserve(data: Any) -> str:
        return "r-1"

    async def long_step(data: Any) -> None:
        await trio.sleep(1000)
        finished.append("long")

    async def release(out: str) -> None:
        undone.append(out)

    wf = tf.workflow("w").task("reserve", job=reserve, compensate=release).task("long", job=long_step).build()
    async with tf.open_engine() as engine:
        events: list[str] = []
        engine.events.on("workflow.*", lambda e: events.append(e["event"]))
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(10)
        assert (await engine.get_instance(iid)).current_step == "long"  # type: ignore[union-attr]
        assert await engine.cancel(iid) is True
        inst = await engine.wait(iid)
        assert inst.status == "cancelled" and finished == [] and undone == ["r-1"]
        assert inst.compensated_steps == ("reserve",) and inst.step_results["long"].status == "failed"
        assert events[-2:] == ["workflow.step.compensated", "workflow.cancelled"]
        assert await engine.cancel(iid) is False and await engine.cancel("unknown") is False


async def test_max_running_limits_concurrency_and_queues_as_pending(autojump_clock: trio.testing.MockClock) -> None:
    running = 0
    peak = 0

    async def work(data: Any) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1

    async with tf.open_engine(max_running=2) as engine:
        engine.register(tf.workflow("w").task("t", job=work).build())
        ids = [await engine.start("w") for _ in range(5)]
        statuses = [(await engine.get_instance(i)).status for i in ids]  # type: ignore[union-attr]
        assert statuses.count("pending") == 3
        assert all([(await engine.wait(i)).status == "completed" for i in ids])
        assert peak == 2


async def test_cancelling_a_queued_instance_ends_it_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(data: Any) -> str:
        await trio.sleep(10)
        return "ok"

    async with tf.open_engine(max_running=1) as engine:
        engine.register(tf.workflow("w").task("t", job=slow).build())
        first, queued = await engine.start("w"), await engine.start("w")
        assert (await engine.get_instance(queued)).status == "pending"  # type: ignore[union-attr]
        assert await engine.cancel(queued) is True
        start = trio.current_time()
        assert (await engine.wait(queued)).status == "cancelled"
        assert trio.current_time() == start  # not after the running instance's 10 s
        assert (await engine.wait(first)).status == "completed"


async def test_event_stream_is_well_formed_with_exact_names_and_payloads(autojump_clock: trio.testing.MockClock) -> None:
    async with tf.open_engine() as engine:
        jobs = Jobs()
        jobs.register(engine)
        engine.register(three_steps())
        async with engine.events.subscribe("workflow.*") as stream:
            iid = await engine.start("w", {"x": 1})
            await engine.wait(iid)
            events = []
            while True:
                try:
                    events.append(stream.receive_nowait())
                except trio.WouldBlock:
                    break
    names = [e["event"] for e in events]
    assert names[0] == "workflow.started" and names[-1] == "workflow.completed"
    assert names.count("workflow.step.started") == names.count("workflow.step.completed") == 3
    assert all(e["instance_id"] == iid and e["workflow_name"] == "w" for e in events)
    assert events[0]["input"] == {"x": 1}
    started = next(e for e in events if e["event"] == "workflow.step.started")
    assert started["step_name"] == "a" and started["step_type"] == "task"
    progress = [e for e in events if e["event"] == "workflow.progress"]
    assert [p["progress"] for p in progress] == [33, 66, 100]  # 100 on the last step, once
    assert set(progress[0]) >= {"progress", "current_step", "completed_steps", "total_steps"}
    assert events[-1]["output"] == "c-out"


async def test_progress_reaches_100_when_a_choice_skips_steps(autojump_clock: trio.testing.MockClock) -> None:
    wf = (tf.workflow("w").choice("c", choices=[tf.when(lambda ctx: True, next="z")], default="y")
          .pass_("y", end=True).pass_("z", end=True).build())
    async with tf.open_engine() as engine:
        seen: list[int] = []
        engine.events.on("workflow.progress", lambda e: seen.append(e["progress"]))
        engine.register(wf)
        inst = await engine.wait(await engine.start("w"))
        assert seen[-1] == 100 and seen == sorted(seen)
        assert inst.step_results["y"].status == "skipped"


async def test_retry_and_failure_events_carry_their_fields(autojump_clock: trio.testing.MockClock) -> None:
    wf = tf.workflow("w").task("a", job="a").task("b", job="b", retry=tf.Retry(max_attempts=2, interval=3)).build()
    async with tf.open_engine() as engine:
        events: list[dict[str, Any]] = []
        engine.events.on("workflow.step.*", events.append)
        engine.events.on("workflow.failed", events.append)
        Jobs(b_fails=True).register(engine)
        engine.jobs.register("c", lambda d: None, replace=True)
        engine.register(wf)
        inst = await engine.wait(await engine.start("w"))
    retry = next(e for e in events if e["event"] == "workflow.step.retry")
    assert retry == {"event": "workflow.step.retry", "instance_id": inst.id, "workflow_name": "w", "step_name": "b",
                     "execution_id": "b#1", "attempt": 2, "max_attempts": 2, "delay": 3.0, "error": "Boom: b failed", "error_name": "Boom",
                     "cause": "b failed"}
    failed = next(e for e in events if e["event"] == "workflow.step.failed")
    assert failed["step_name"] == "b" and failed["attempts"] == 2 and failed["error"] == "Boom: b failed"
    assert failed["execution_id"] == "b#1"
    assert events[-1]["event"] == "workflow.failed" and events[-1]["error"] == "Boom: b failed"


async def test_raising_and_slow_subscribers_never_break_or_stall_a_workflow(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(event: dict[str, Any]) -> None:
        await trio.sleep_forever()

    def explode(event: dict[str, Any]) -> None:
        raise RuntimeError("subscriber bug")

    async with tf.open_engine() as engine:
        Jobs().register(engine)
        engine.events.on("workflow.*", explode)
        engine.events.on("workflow.*", slow, buffer=1)
        engine.register(three_steps())
        async with engine.events.subscribe("*", buffer=1):  # never read
            with trio.fail_after(1):
                inst = await engine.wait(await engine.start("w"))
        assert inst.status == "completed"


async def test_unsubscribe_stops_delivery(autojump_clock: trio.testing.MockClock) -> None:
    async with tf.open_engine() as engine:
        Jobs().register(engine)
        engine.register(three_steps())
        seen: list[str] = []
        off = engine.events.on("workflow.completed", lambda e: seen.append(e["instance_id"]))
        first = await engine.start("w")
        await engine.wait(first)
        off()
        await engine.wait(await engine.start("w"))
        assert seen == [first]


async def test_a_subscriber_added_later_gets_the_step_events_nobody_wanted_before(
        autojump_clock: trio.testing.MockClock) -> None:
    """Steps skip building events nobody listens to; one who starts listening gets them."""
    async with tf.open_engine() as engine:
        Jobs().register(engine)
        engine.register(three_steps())
        done: list[str] = []
        engine.events.on("workflow.completed", lambda e: done.append(e["instance_id"]))
        await engine.wait(await engine.start("w"))
        steps: list[tuple[str, str]] = []
        engine.events.on("workflow.step.*", lambda e: steps.append((e["event"], e["step_name"])))
        engine.events.on("workflow.progress", lambda e: steps.append((e["event"], str(e["progress"]))))
        await engine.wait(await engine.start("w"))
        assert len(done) == 2
        assert [name for name, _ in steps if name == "workflow.step.completed"] == ["workflow.step.completed"] * 3
        assert ("workflow.progress", "100") in steps and ("workflow.step.started", "a") in steps


async def test_several_engines_run_side_by_side_without_shared_state(autojump_clock: trio.testing.MockClock) -> None:
    async with tf.open_engine() as one, tf.open_engine() as two:
        one.jobs.register("j", lambda d: "one")
        two.jobs.register("j", lambda d: "two")
        wf = tf.workflow("w").task("t", job="j").build()
        one.register(wf)
        two.register(wf)
        a, b = await one.start("w", instance_id="same"), await two.start("w", instance_id="same")
        assert (await one.wait(a)).output == "one" and (await two.wait(b)).output == "two"


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


async def test_caller_contextvars_are_visible_in_engine_steps(autojump_clock: trio.testing.MockClock) -> None:
    async def read(data: Any) -> str:
        return VAR.get()

    async with tf.open_engine() as engine:
        engine.register(tf.workflow("w").task("t", job=read).build())
        VAR.set("tenant-42")
        assert (await engine.wait(await engine.start("w"))).output == "tenant-42"


async def test_unencodable_output_or_data_fails_the_step_naming_it(autojump_clock: trio.testing.MockClock) -> None:
    async def bad_output(data: Any) -> Any:
        return {"when": object()}

    async def bad_set(ctx: tf.WorkflowContext) -> None:
        ctx.set("conn", object())

    async with tf.open_engine() as engine:
        engine.register(tf.workflow("w1").task("t", job=bad_output).build())
        engine.register(tf.workflow("w2").step("s", bad_set).build())
        one = await engine.wait(await engine.start("w1"))
        two = await engine.wait(await engine.start("w2"))
    assert one.status == "failed" and "output of step 't'['when'] is an object" in (one.error or "")
    assert two.status == "failed" and "ctx.set('conn') is an object" in (two.error or "")


async def test_workflow_timeout_in_the_engine_ends_timed_out(autojump_clock: trio.testing.MockClock) -> None:
    async with tf.open_engine() as engine:
        Jobs(b_hangs=True).register(engine)
        engine.register(tf.workflow("w").task("a", job="a").task("b", job="b").with_timeout(60).build())
        names: list[str] = []
        engine.events.on("workflow.*", lambda e: names.append(e["event"]))
        inst = await engine.wait(await engine.start("w"))
    assert inst.status == "timed_out" and "timed out after 60 s" in (inst.error or "")
    assert names[-1] == "workflow.timed_out" and "workflow.failed" not in names


async def test_the_engine_refuses_use_after_close(autojump_clock: trio.testing.MockClock) -> None:
    async with tf.open_engine() as engine:
        pass
    with pytest.raises(tf.EngineClosedError):
        await engine.start("w")
    with pytest.raises(tf.InvalidArgumentError):
        async with tf.open_engine(max_running=0):
            pass


async def test_exceptions_in_the_engine_block_are_not_wrapped(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(KeyError):
        async with tf.open_engine():
            raise KeyError("mine")


# -- durability and resume -------------------------------------------------------------------


async def test_leaving_the_engine_keeps_instances_running_and_a_new_engine_resumes_them(autojump_clock: trio.testing.MockClock) -> None:
    adapter = tf.adapters.MemoryAdapter()
    first = Jobs(b_hangs=True)
    async with tf.open_engine(adapter=adapter) as engine:
        first.register(engine)
        engine.register(three_steps())
        iid = await engine.start("w", {"n": 1})
        await trio.sleep(5)
    assert first.calls == ["a", "b"]
    record = await adapter.load(iid)
    assert record is not None and record.status == "running"

    second = Jobs()
    async with tf.open_engine(adapter=adapter) as engine:
        second.register(engine)
        engine.register(three_steps())  # resumes the instances of "w"
        inst = await engine.wait(iid)
    assert inst.status == "completed" and inst.output == "c-out"
    assert second.calls == ["b", "c"]  # completed "a" never runs again; in-flight "b" does


async def test_explicit_resume_never_starts_an_instance_twice(autojump_clock: trio.testing.MockClock) -> None:
    adapter = tf.adapters.MemoryAdapter()
    async with tf.open_engine(adapter=adapter) as engine:
        Jobs(b_hangs=True).register(engine)
        engine.register(three_steps())
        ids = {await engine.start("w") for _ in range(3)}
        await trio.sleep(1)
    async with tf.open_engine(adapter=adapter, resume=False) as engine:
        jobs = Jobs()
        jobs.register(engine)
        engine.register(three_steps())
        with pytest.raises(tf.InstanceNotLiveError):
            await engine.wait(next(iter(ids)))
        resumed = await engine.resume()
        assert set(resumed) == ids and await engine.resume() == []
        for iid in ids:
            assert (await engine.wait(iid)).status == "completed"
        assert sorted(jobs.calls) == ["b"] * 3 + ["c"] * 3


async def test_compensation_in_progress_resumes_and_compensates_each_step_once(autojump_clock: trio.testing.MockClock) -> None:
    adapter = tf.adapters.MemoryAdapter()
    undone: list[str] = []
    hang_undo_b = True

    def undo(name: str) -> Any:
        async def job(out: Any) -> None:
            if name == "b" and hang_undo_b:
                await trio.sleep_forever()
            undone.append(name)
        return job

    async def fail(data: Any) -> None:
        raise Boom("late failure")

    async def ok(data: Any) -> str:
        return "ok"

    wf = (tf.workflow("w").task("a", job="ok", compensate=undo("a")).task("b", job="ok", compensate=undo("b"))
          .task("c", job="ok", compensate=undo("c")).task("d", job=fail).build())
    async with tf.open_engine(adapter=adapter) as engine:
        engine.jobs.register("ok", ok)
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(5)  # c compensated, stuck compensating b
    assert undone == ["c"]
    hang_undo_b = False
    async with tf.open_engine(adapter=adapter) as engine:
        engine.jobs.register("ok", ok)
        engine.register(wf)
        inst = await engine.wait(iid)
    assert inst.status == "failed" and inst.failed_step == "d"
    assert undone == ["c", "b", "a"] and inst.compensated_steps == ("c", "b", "a")


async def test_parallel_branches_resume_branch_by_branch(autojump_clock: trio.testing.MockClock) -> None:
    adapter = tf.adapters.MemoryAdapter()
    calls: list[str] = []
    hang = True

    def job(name: str, delay: float) -> Any:
        async def run_it(data: Any) -> str:
            calls.append(name)
            await trio.sleep(delay)
            if name == "y2" and hang:
                await trio.sleep_forever()
            return name
        return run_it

    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch("x").task("x1", job=job("x1", 1)).task("x2", job=job("x2", 1)).build(),
        tf.branch("y").task("y1", job=job("y1", 1)).task("y2", job=job("y2", 1)).build(),
    ]).task("after", job=job("after", 0)).build()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(10)
    assert sorted(calls) == ["x1", "x2", "y1", "y2"]
    calls.clear()
    hang = False
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(wf)
        inst = await engine.wait(iid)
    assert calls == ["y2", "after"]
    assert inst.step_results["p"].output == {"x": "x2", "y": "y2"}


async def test_a_wait_all_branch_that_failed_is_not_run_again_after_a_restart(
        autojump_clock: trio.testing.MockClock) -> None:
    # The failed branch ends while its sibling still runs: its failure must be stored then, not
    # with the parallel step's end, or the next engine runs the failed step again.
    adapter = tf.adapters.MemoryAdapter()
    calls: list[str] = []
    gate = trio.Event()

    async def bad(ctx: tf.WorkflowContext) -> None:
        calls.append("bad")
        raise ValueError("declined")

    async def slow(ctx: tf.WorkflowContext) -> int:
        calls.append("slow")
        await gate.wait()
        return 1

    wf = tf.workflow("w").parallel("p", on_error="wait-all", branches=[
        tf.branch("x").step("bad", bad).build(), tf.branch("y").step("slow", slow).build()]).build()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(10)
    gate.set()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(wf)
        inst = await engine.wait(iid)
    assert inst.status == "failed"
    assert sorted(calls) == ["bad", "slow", "slow"]  # only the unfinished branch runs again
    assert [(r.step_name, r.status) for r in inst.history if r.step_name == "bad"] == [("bad", "failed")]


async def test_an_unreadable_snapshot_fails_alone(autojump_clock: trio.testing.MockClock) -> None:
    adapter = tf.adapters.MemoryAdapter()
    async with tf.open_engine(adapter=adapter) as engine:
        Jobs(b_hangs=True).register(engine)
        engine.register(three_steps())
        good = await engine.start("w")
        await trio.sleep(1)
    await adapter.create("broken", "w", "running", start=b"\x93garbage", header=b"\x93garbage")
    async with tf.open_engine(adapter=adapter) as engine:
        Jobs().register(engine)
        engine.register(three_steps())
        assert (await engine.wait(good)).status == "completed"
        broken = await engine.wait("broken")
    assert broken.status == "failed" and "SnapshotDecodeError" in (broken.error or "")


async def test_an_instance_that_no_longer_fits_the_definition_fails_alone_naming_the_step(autojump_clock: trio.testing.MockClock) -> None:
    adapter = tf.adapters.MemoryAdapter()
    async with tf.open_engine(adapter=adapter) as engine:
        Jobs(b_hangs=True).register(engine)
        engine.register(three_steps())
        iid = await engine.start("w")
        await trio.sleep(1)
    changed = tf.workflow("w").task("a", job="a").task("c", job="c").build()  # "b" is gone
    async with tf.open_engine(adapter=adapter) as engine:
        Jobs().register(engine)
        engine.register(changed)
        inst = await engine.wait(iid)
    assert inst.status == "failed"
    assert "DefinitionMismatchError" in (inst.error or "") and "'b'" in (inst.error or "")


async def test_a_failing_adapter_fails_its_instance_alone(autojump_clock: trio.testing.MockClock) -> None:
    class FlakyAdapter(tf.adapters.MemoryAdapter):
        async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Any, **kw: Any) -> None:
            if instance_id == "doomed":
                raise OSError("disk full")
            await super().checkpoint(instance_id, status, header, records, **kw)

    async with tf.open_engine(adapter=FlakyAdapter()) as engine:
        Jobs().register(engine)
        engine.register(three_steps())
        await engine.start("w", instance_id="doomed")
        fine = await engine.start("w")
        assert (await engine.wait(fine)).status == "completed"
        with pytest.raises(tf.InstanceNotLiveError, match="its failure could not be stored"):
            await engine.wait("doomed")  # stored as it was last written: running, and not live


async def test_snapshots_in_the_adapter_are_msgpack_bytes(autojump_clock: trio.testing.MockClock) -> None:
    adapter = tf.adapters.MemoryAdapter()
    async with tf.open_engine(adapter=adapter) as engine:
        Jobs().register(engine)
        engine.register(three_steps())
        iid = await engine.wait(await engine.start("w"))
    stored = await adapter.load(iid.id)
    assert stored is not None and stored.status == "completed" and stored.start is not None
    for blob in (stored.start, stored.header, *stored.records):
        assert isinstance(blob, bytes) and blob[:1] != b"\x80"  # msgpack, not a pickle
    assert len(stored.records) == 3 and decode_stored(stored).output == "c-out"


async def test_one_engine_at_a_time_on_a_memory_adapter(autojump_clock: trio.testing.MockClock) -> None:
    # Two engines on one storage would both resume (and run) the same instances.
    adapter = tf.adapters.MemoryAdapter()
    async with tf.open_engine(adapter=adapter):
        with pytest.raises(tf.AdapterInUseError, match="open in another engine"):
            async with tf.open_engine(adapter=adapter):
                pass
    async with tf.open_engine(adapter=adapter):  # closed: free again
        pass
    assert issubclass(tf.adapters.DatabaseLockedError, tf.AdapterInUseError)
