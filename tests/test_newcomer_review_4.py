"""A newcomer's review (a service built from the docs alone, restarted and killed; then the
usual mistakes): each test of a fix failed before it (autojump MockClock, no real sleeps)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from storages import engine_on, finish, storage  # noqa: F401  (storage: a fixture)
from trioflow.adapters import Adapter
from trioflow.testing import virtual_wall_clock


def order_flow(undone: list[str]) -> tf.WorkflowDefinition:
    async def reserve(ctx: Any) -> str:
        return "reserved"

    async def release(ctx: Any, result: Any) -> None:
        undone.append(result)

    return tf.workflow("order").step("reserve", reserve, release).receive("paid", signal="paid").build()


async def test_cancel_of_a_parked_instance_whose_workflow_is_not_registered_is_stored(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """An admin endpoint served before the workflow's module is imported: ``cancel()`` said
    ``False`` (as for an unknown id) and stored nothing; the next engine ran the order on. Now
    the cancel is stored in it and the engine that runs it next compensates it."""
    undone: list[str] = []
    clock = virtual_wall_clock()
    async with engine_on(storage(), clock) as engine:
        engine.register(order_flow(undone))
        iid = await engine.start("order")
        await trio.sleep(5)  # parked in its receive step
    async with engine_on(storage(), clock) as engine:
        assert await engine.cancel(iid) is True
        assert await engine.cancel(iid) is True  # (a repeated call says yes too)
        assert (await engine.get_instance(iid)).status == "running"  # compensated once it can run
        assert await engine.cancel("no-such-order") is False
    async with engine_on(storage(), clock) as engine:
        engine.register(order_flow(undone))
        inst = await finish(engine, iid)
    assert inst.status == "cancelled"
    assert inst.compensated_steps == ("reserve",)
    assert undone == ["reserved"]


async def test_cancel_of_an_instance_held_for_its_jobs_is_honoured_once_they_are_registered(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """Resumed before the jobs it uses are registered, an instance is held: ``cancel()`` of it
    said ``False`` and the instance ran on once the jobs came."""
    ran: list[str] = []

    async def charge(data: Any) -> str:
        ran.append("charge")
        return "charged"

    async def refund(data: Any) -> None:
        ran.append("refund")

    wf = (tf.workflow("pay").task("charge", job="charge", compensate="refund")
          .wait("cool_off", seconds=1).task("ship", job="ship").build())
    clock = virtual_wall_clock()
    async with engine_on(storage(), clock) as engine:
        engine.jobs.register("charge", charge)
        engine.jobs.register("refund", refund)
        engine.jobs.register("ship", charge)
        engine.register(wf)
        iid = await engine.start("pay")
        await trio.sleep(0.5)  # waiting in memory, after its first step
    ran.clear()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)  # held: its jobs are not registered yet
        assert await engine.cancel(iid) is True
        engine.jobs.register("charge", charge)
        engine.jobs.register("refund", refund)
        engine.jobs.register("ship", charge)
        inst = await finish(engine, iid)
    assert inst.status == "cancelled"
    assert ran == ["refund"]


async def test_cancel_of_an_instance_compensating_already_says_no(autojump_clock: trio.testing.MockClock) -> None:
    """It ends as the failure that began its compensation (as documented), not ``cancelled``."""
    async def slow_undo(ctx: Any, result: Any) -> None:
        await trio.sleep(10)

    async def boom(ctx: Any) -> None:
        raise ValueError("declined")

    wf = tf.workflow("w").step("a", lambda ctx: 1, slow_undo).step("b", boom).build()
    async with engine_on(tf.adapters.MemoryAdapter()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(1)
        assert (await engine.get_instance(iid)).status == "running"
        assert await engine.cancel(iid) is False
        assert (await finish(engine, iid)).status == "failed"


async def test_cancel_without_auto_resume_is_stored_and_resume_compensates(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """``open_engine(resume=False)``: nothing runs it until ``resume()``, which compensates it
    (held before the fix too: cancel() woke it; a guard for the new path's fall-through)."""
    undone: list[str] = []
    clock = virtual_wall_clock()
    async with engine_on(storage(), clock) as engine:
        engine.register(order_flow(undone))
        iid = await engine.start("order")
        await trio.sleep(5)
    async with engine_on(storage(), clock, resume=False) as engine:
        engine.register(order_flow(undone))
        assert await engine.cancel(iid) is True
        await engine.resume()
        inst = await finish(engine, iid)
    assert inst.status == "cancelled"
    assert undone == ["reserved"]


async def test_a_step_that_yields_is_refused_where_it_is_given(autojump_clock: trio.testing.MockClock) -> None:
    """An ``async def`` with a ``yield`` (progress reports, say) was taken for a step and failed
    as it ran, with its output "an async_generator that cannot be stored"; a ``def`` with a
    ``yield`` likewise."""
    async def progress(ctx: Any) -> Any:
        yield 50

    def chunks(data: Any) -> Any:
        yield 1

    with pytest.raises(tf.DefinitionError, match=r"step 'a'.* is an async generator function .*return"):
        tf.workflow("w").step("a", progress).build()
    with pytest.raises(tf.DefinitionError, match=r"step 'a'.* is a generator function"):
        tf.workflow("w").task("a", job=chunks).build()
    with pytest.raises(tf.DefinitionError, match=r"compensate .* is an async generator function"):
        tf.workflow("w").step("a", lambda ctx: 1, _undo_yielding).build()
    async with engine_on(tf.adapters.MemoryAdapter()) as engine:
        with pytest.raises(tf.DefinitionError, match=r"job 'chunks'.* is a generator function"):
            engine.jobs.register("chunks", chunks)


async def _undo_yielding(ctx: Any, result: Any) -> Any:
    yield None


def test_catch_none_means_no_catchers_as_retry_none_means_no_retry() -> None:
    """Options read from a config file: ``catch=None`` was refused ("catch must be a list of
    trioflow.Catch, got None") while ``retry=None`` and ``timeout=None`` were taken."""
    wf = (tf.workflow("w").step("a", lambda ctx: 1, catch=None, retry=None, timeout=None)
          .task("b", job=lambda data: 2, catch=None).receive("r", signal="go", catch=None).build())
    assert all(not step.catch for step in wf.steps)


def payout_flows(paid: list[int], reversed_: list[int]) -> tuple[tf.WorkflowDefinition, tf.WorkflowDefinition]:
    async def pay(ctx: Any) -> int:
        await trio.sleep(1)
        paid.append(ctx.input)
        return int(ctx.input)

    async def reverse(ctx: Any, result: Any) -> None:
        reversed_.append(result)

    payout = tf.workflow("payout").step("pay", pay, reverse).build()
    async def prepare(ctx: Any) -> None:
        await trio.sleep(2)

    batch = (tf.workflow("batch").wait("cut_off", seconds=10).step("prepare", prepare)
             .map("payouts", items=lambda ctx: list(range(6)), max_concurrency=2,
                  branch=tf.branch("one").child("run", workflow="payout").build())
             .build())
    return batch, payout


async def started_batch(adapter: Adapter, clock: Callable[[], float], flows: tuple[tf.WorkflowDefinition, ...],
                        seconds: float) -> str:
    """Start a batch in an engine that has every workflow, and stop that engine ``seconds`` later."""
    async with engine_on(adapter, clock) as engine:
        for wf in flows:
            engine.register(wf)
        iid = await engine.start("batch")
        await trio.sleep(seconds)
    return iid


async def test_a_parent_taken_up_before_its_child_workflow_is_registered_waits_for_it(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """A service whose modules register their workflows each in its own async set-up: the
    parent's resume began at the first ``await``, its child steps failed with
    ``UnknownWorkflowError``, and the map failed and compensated every payout it had made.
    A parent taken up from storage now has its child steps wait for their workflow."""
    paid: list[int] = []
    reversed_: list[int] = []
    batch, payout = payout_flows(paid, reversed_)
    clock = virtual_wall_clock()
    iid = await started_batch(storage(), clock, (payout, batch), 11)  # past its timer, preparing
    assert paid == []
    async with engine_on(storage(), clock) as engine:
        engine.register(batch)
        await trio.sleep(5)  # another module's set-up, longer than the step that runs again
        with trio.move_on_after(100):
            await engine.wait(iid)
        assert (await engine.get_instance(iid)).status == "running"
        engine.register(payout)
        inst = await finish(engine, iid)
    assert inst.status == "completed", inst.error
    assert inst.output == [0, 1, 2, 3, 4, 5]
    assert reversed_ == []


async def test_a_parked_parent_whose_timer_falls_due_before_its_child_workflow_is_registered_waits(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """Woken, its child steps wait for their workflow rather than fail."""
    paid: list[int] = []
    batch, payout = payout_flows(paid, [])
    clock = virtual_wall_clock()
    iid = await started_batch(storage(), clock, (payout, batch), 2)  # parked on its cut-off timer
    async with engine_on(storage(), clock) as engine:
        engine.register(batch)
        await trio.sleep(30)  # the timer falls due
        assert (await engine.get_instance(iid)).status == "running"
        engine.register(payout)
        inst = await finish(engine, iid)
    assert inst.status == "completed", inst.error
    assert sorted(paid) == [0, 1, 2, 3, 4, 5]


async def test_a_started_parent_whose_child_workflow_is_not_registered_still_fails_its_step(
        autojump_clock: trio.testing.MockClock) -> None:
    """Only instances taken up from storage wait: a parent started now that runs into the step
    fails it at once, catchable, as documented."""
    batch = (tf.workflow("batch").map("payouts", items=lambda ctx: [1, 2],
                                      branch=tf.branch("one").child("run", workflow="payout").build()).build())
    async with engine_on(tf.adapters.MemoryAdapter()) as engine:
        engine.register(batch)
        inst = await finish(engine, await engine.start("batch"))
    assert inst.status == "failed"
    assert "UnknownWorkflowError" in (inst.error or "")


async def test_a_parent_waiting_for_its_child_workflow_can_be_cancelled_or_left_for_the_next_engine(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """Its wait is a step's: an engine that closes leaves it as stored, and ``cancel()``
    reaches it."""
    paid: list[int] = []
    batch, payout = payout_flows(paid, [])
    clock = virtual_wall_clock()
    iid = await started_batch(storage(), clock, (payout, batch), 11)  # past its timer, preparing
    async with engine_on(storage(), clock) as engine:
        engine.register(batch)
        await trio.sleep(20)  # waits for 'payout'; closed meanwhile
        assert (await engine.get_instance(iid)).status == "running"
    async with engine_on(storage(), clock) as engine:
        engine.register(batch)
        await trio.sleep(20)
        assert await engine.cancel(iid) is True
        inst = await finish(engine, iid)
    assert inst.status == "cancelled"
    assert paid == []
