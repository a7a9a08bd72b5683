"""Adversarial review of 9ce91ef (a cancel during a resumed transactional run's ledger lookup),
2cd877e (a queued cancel keeps its error) and d91153f (``Engine._starts_to_cancel``).

Tests whose docstring starts with "BUG" fail on the code reviewed; the others pin behaviour
that holds."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow._snapshot import TERMINAL, Status
from trioflow.adapters import MemoryAdapter, MemoryDriver
from trioflow.testing import open_test_engine


class HangOnTerminalSave(MemoryAdapter):
    """While ``hang`` is set a terminal snapshot is never stored: closing the engine then is a
    crash right after the driver's COMMIT and before the instance's end is stored."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = True
        self.reached = trio.Event()

    async def checkpoint(self, instance_id: str, status: Status, header: bytes, records: Any, **kw: Any) -> None:
        if self.hang and status in TERMINAL:
            self.reached.set()
            await trio.sleep_forever()
        await super().checkpoint(instance_id, status, header, records, **kw)


def order_flow(log: list[str] | None = None) -> tf.WorkflowDefinition:
    log = log if log is not None else []

    async def reserve(ctx: tf.WorkflowContext) -> str:
        log.append("reserve")
        return "res-1"

    async def release(ctx: tf.WorkflowContext, result: Any) -> None:
        log.append("release")

    return (tf.workflow("order")
            .step(tf.create_entity_step("create-order", "orders", lambda ctx: {"ref": ctx.input["ref"]},
                                        store_as="order_id"))
            .step("reserve", reserve, compensate=release)
            .transactional()
            .build())


async def _crash_after_commit(driver: MemoryDriver, adapter: HangOnTerminalSave, wf: tf.WorkflowDefinition) -> str:
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("order", {"ref": "r1"})
        with trio.fail_after(100):
            await adapter.reached.wait()
    adapter.hang = False
    assert [r["ref"] for r in await driver.find_many("orders", {})] == ["r1"], "the transaction committed"
    return iid


# -- 9ce91ef -------------------------------------------------------------------------------------


async def test_a_cancel_stored_in_a_committed_transactional_instance_compensates_what_committed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """BUG. A transactional instance committed (its order row, its reservation), then its engine
    stopped before its end was stored. The next engine does not run ``order`` (not registered
    there), and ``engine.cancel(iid)`` stores the cancel in the instance: ``True``. An engine
    that runs ``order`` then takes it up.

    A user relies on ``cancel()`` (README: "its completed steps are compensated"), and on
    9ce91ef: a cancel that says yes to a resumed transactional run whose transaction committed
    compensates what committed, entity steps among them. So the instance ends ``cancelled``
    with its order row deleted and its reservation released.

    Instead it ends ``cancelled`` with nothing compensated: the row stays, ``release`` never
    runs. The stored cancel leaves the instance ``compensating`` from the state stored before the
    transaction, and ``committed_before_a_crash`` (actors/_transaction.py) asks the ledger only
    for a run going ``forward``: what committed is never taken up, nor undone."""
    adapter, driver, log = HangOnTerminalSave(), MemoryDriver(), []
    wf = order_flow(log)
    iid = await _crash_after_commit(driver, adapter, wf)
    async with open_test_engine(driver=driver, adapter=adapter) as engine:  # "order" not registered
        with trio.fail_after(100):
            said = await engine.cancel(iid)
    assert said
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        with trio.fail_after(100):
            inst = await engine.wait(iid)
    rows = await driver.find_many("orders", {})
    assert inst.status == "cancelled"
    assert (rows, log, sorted(inst.compensated_steps)) == ([], ["reserve", "release"], ["create-order", "reserve"])


class SlowRunLookup(MemoryDriver):
    """The lookup of a run's record (not an entity step's) waits for ``gate`` once set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: trio.Event | None = None
        self.asked = trio.Event()

    async def find_run(self, key: str) -> bytes | None:
        if not key.startswith("trioflow.entity/"):
            self.asked.set()
            if self.gate is not None:
                await self.gate.wait()
        return await super().find_run(key)


async def test_a_cancel_during_the_ledger_lookup_stored_by_an_engine_closing_compensates_what_committed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """BUG. As 9ce91ef's own case (a cancel says yes while the resumed transactional run asks
    the driver whether it committed; the database is slow), but the engine closes before the
    driver answers. ``cancel()`` returns ``True`` once the engine closing stores the decision
    (``store_cancel``), as README promises: "a process killed then still compensates the
    instance, with the next engine".

    A user relies on that cancel being honoured as 9ce91ef honours it when the driver answers:
    the next engine compensates what committed, the order row deleted, the reservation
    released. Instead the next engine ends it ``cancelled`` with nothing compensated, the row
    and the reservation left: the decision was stored over the state from before the
    transaction, and a run going back never asks the ledger (``committed_before_a_crash``)."""
    adapter, driver, log = HangOnTerminalSave(), SlowRunLookup(), []
    wf = order_flow(log)
    iid = await _crash_after_commit(driver, adapter, wf)
    driver.gate = trio.Event()
    said: list[bool] = []
    async with trio.open_nursery() as nursery:
        async with open_test_engine(driver=driver, adapter=adapter) as engine:
            engine.register(wf)
            with trio.fail_after(100):
                await driver.asked.wait()

            async def cancel() -> None:
                said.append(await engine.cancel(iid))
            nursery.start_soon(cancel)
            await trio.sleep(0.5)  # (shorter than CANCEL_STORE_WAIT: cancel() still waits)
        # the engine closed, the driver never having answered
    driver.gate = None
    assert said == [True]
    async with open_test_engine(driver=driver, adapter=adapter) as engine:
        engine.register(wf)
        with trio.fail_after(100):
            inst = await engine.wait(iid)
    rows = await driver.find_many("orders", {})
    assert inst.status == "cancelled"
    assert (rows, log) == ([], ["reserve", "release"])


# -- 2cd877e -------------------------------------------------------------------------------------


async def test_a_queued_cancel_of_an_instance_that_no_longer_fits_reports_one_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """BUG. An instance stands in step ``b`` when its engine closes; a later release replaces
    ``b`` with ``c`` (the instance no longer fits: it fails alone). The next engine
    (``max_running=1``, the slot held by another instance) has it queued for a slot, and
    ``cancel()`` stores the decision to compensate it (``store_queued_cancel``). When it gets
    its slot it fails with ``DefinitionMismatchError``, compensating nothing.

    A user relies on ``on_failed``'s ``WorkflowResult`` telling one story, as ``wait()``,
    ``get_instance`` and the stored row do: status ``failed``, ``error_name``
    ``DefinitionMismatchError`` and ``error`` that error. Instead its ``error`` is the
    ``WorkflowCancelledError`` that 2cd877e put in ``run.error`` in ``store_queued_cancel``,
    while its ``status``/``error_name`` say the definition mismatch (``_fail_alone`` never
    replaces ``run.error``; before 2cd877e it read the stored error)."""
    adapter, seen = MemoryAdapter(), []  # type: ignore[var-annotated]

    async def block(ctx: tf.WorkflowContext) -> None:
        await trio.sleep_forever()

    async def a(ctx: tf.WorkflowContext) -> str:
        return "a"

    async def undo_a(ctx: tf.WorkflowContext, result: Any) -> None:
        seen.append("undo a")

    blocker = tf.workflow("blocker").step("block", block).build()
    old = tf.workflow("w").step("a", a, compensate=undo_a).step("b", block).build()
    new = (tf.workflow("w").step("a", a, compensate=undo_a).step("c", block)
           .with_hooks(on_failed=lambda result: seen.append(result)).build())
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(blocker)
        engine.register(old)
        await engine.start("blocker", {})
        await trio.sleep(1)
        iid = await engine.start("w", {})
        await trio.sleep(1)
    async with open_test_engine(adapter=adapter, max_running=1) as engine:
        engine.register(blocker)
        await trio.sleep(1)
        engine.register(new)
        await trio.sleep(1)
        assert any(r.state.instance_id == iid for r in engine._waiting), "setup: queued for a slot"
        with trio.fail_after(100):
            assert await engine.cancel(iid)
            for other in await engine.get_instances("blocker"):
                await engine.cancel(other.id)
            waited = await engine.wait(iid)
            await trio.sleep(1)  # (on_failed runs beside the instance)
        stored = await engine.get_instance(iid)
    assert (waited.status, waited.error_name) == (stored.status, stored.error_name) == ("failed", "DefinitionMismatchError")
    [result] = [r for r in seen if not isinstance(r, str)]
    assert (result.status, result.error_name) == ("failed", "DefinitionMismatchError")
    assert "no longer in workflow" in str(result.error), (result.status, result.error_name, repr(result.error))


# -- d91153f -------------------------------------------------------------------------------------


async def test_many_cancels_of_queued_instances_with_nothing_to_undo_leave_max_running_and_the_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Pin: with ``max_running=1``, nine instances queued behind one that runs; every other one
    is cancelled (each, with nothing to undo, ends at once outside the slot). The others then
    run one at a time, in the order they were started: max_running holds afterwards."""
    order: list[int] = []
    running = [0]
    peak = [0]

    async def work(ctx: tf.WorkflowContext) -> None:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        order.append(ctx.input["n"])
        await trio.sleep(1)
        running[0] -= 1

    wf = tf.workflow("w").step("work", work).build()
    async with open_test_engine(max_running=1) as engine:
        engine.register(wf)
        ids = [await engine.start("w", {"n": n}) for n in range(10)]
        with trio.fail_after(100):
            said = [await engine.cancel(iid) for iid in ids[1::2]]
            ended = [await engine.wait(iid) for iid in ids]
    assert all(said)
    assert [i.status for i in ended] == ["completed" if n % 2 == 0 else "cancelled" for n in range(10)]
    assert order == [0, 2, 4, 6, 8] and peak[0] == 1
