"""Regressions and incomplete fixes a second review of this session's fixes found (each failed
before its fix): an instance holding a newer release's signal, cancelled or taking two at once;
a resumed fail-fast map failure; ctx.error while compensating a branch; an unstorable value set
in a job's own nursery; the crash explorer and a timeout reached by a step run again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import explore_crashes, open_test_engine, virtual_wall_clock
from storages import engine_on, returning


class Declined(Exception):
    pass


def _newer_releases_payload() -> bytes:
    """A signal payload as a newer release may write it: an extension type this one lacks."""
    return msgpack.packb(msgpack.ExtType(42, b"a newer release's type"))


# -- 1. _unreadable is never forgotten ------------------------------------------------------------


async def test_a_cancelled_instance_that_held_a_newer_releases_signal_is_reported_cancelled(
        autojump_clock: trio.testing.MockClock) -> None:
    """An instance parked on ``receive("go")`` holds a "go" signal a newer release stored: its run
    stops at the receive and ``_refuse_unreadable`` puts it in ``Engine._unreadable``. Since
    27aa213, ``cancel()`` no longer raises: it wakes the instance, which is cancelled, compensates
    and is *stored* ``cancelled`` (``wait()`` says so too). But nothing ever removes the entry
    from ``_unreadable`` (runtime/_engine.py:827 adds, no code deletes; ``_spawn`` leaves it), so
    ``get_instance`` (runtime/_engine.py:499) and, newly, listings (runtime/_engine.py:651) go on
    reporting it ``failed`` with the decode error; ``get_instances(status="cancelled")`` leaves it
    out. A restarted engine reports it cancelled."""
    async def a(ctx: tf.WorkflowContext) -> str:
        return "a"

    async def undo(ctx: tf.WorkflowContext, result: Any) -> None:
        return None

    wf = tf.workflow("w").step("a", a, undo).receive("r", signal="go").task("x", job=returning("x")).build()
    adapter = MemoryAdapter()
    async with engine_on(adapter) as engine:
        engine.register(wf)
        await engine.start("w", instance_id="i")
        await trio.sleep(10)  # parked on its receive step
    await adapter.open()
    await adapter.send_signal("i", "go", _newer_releases_payload())
    await adapter.close()
    async with engine_on(adapter) as engine:
        engine.register(wf)
        await trio.sleep(10)
        assert await engine.cancel("i") is True
        with trio.fail_after(100):
            done = await engine.wait("i")
        assert done.status == "cancelled" and done.compensated_steps == ("a",)
        stored = await adapter.load("i")
        assert stored is not None and stored.status == "cancelled"
        one = await engine.get_instance("i")
        listed = {i.id: i.status for i in await engine.get_instances("w")}
        cancelled = [i.id for i in await engine.get_instances("w", status="cancelled")]
    assert one is not None and one.status == "cancelled", (one and one.status, one and one.error)
    assert listed == {"i": "cancelled"}, listed
    assert cancelled == ["i"], cancelled


# -- 2. two receives taking a newer release's signals ---------------------------------------------


async def test_two_branches_taking_a_newer_releases_signals_leave_the_instance_stored_as_it_was(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """27aa213: "a newer release's signal fails only the receive that takes it", and the instance
    is left stored as that release wrote it, reported failed here (one receive does exactly that).
    A parallel step whose two branches each receive such a signal: both ``take_signal`` calls
    (actors/_run.py:368-371) raise SnapshotDecodeError in the same pass (the second branch waits
    on the first one's signal read), ``unwrapped`` (actors/_run.py:125) returns the group of two,
    which ``_instance_actor``'s ``except SnapshotDecodeError`` (runtime/_engine.py:986) does not
    catch: the instance is failed for good with "internal error: ExceptionGroup ..." and stored
    ``failed``: the newer release can never finish it."""
    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch("b1").receive("r1", signal="a").build(),
        tf.branch("b2").receive("r2", signal="b").build()]).build()
    path = tmp_path / "flows.db"
    async with engine_on(SQLiteAdapter(path)) as engine:
        engine.register(wf)
        await engine.start("w", instance_id="i")
        await trio.sleep(10)  # both branches wait (in memory: a branch never parks)
    adapter = SQLiteAdapter(path)
    await adapter.open()
    for name in ("a", "b"):
        await adapter.send_signal("i", name, _newer_releases_payload())
    await adapter.close()
    async with engine_on(SQLiteAdapter(path)) as engine:
        engine.register(wf)
        await trio.sleep(10)
        seen = await engine.get_instance("i")
    assert seen is not None and seen.status == "failed"
    assert "SnapshotDecodeError" in (seen.error or ""), seen.error
    adapter = SQLiteAdapter(path)
    await adapter.open()
    try:
        stored = await adapter.load("i")
    finally:
        await adapter.close()
    assert stored is not None and stored.status == "running", f"stored {stored and stored.status}: {seen.error}"


# -- 3. _failed_step_of and maps -------------------------------------------------------------------


async def test_a_resumed_fail_fast_map_failure_names_the_item_step_as_live(
        autojump_clock: trio.testing.MockClock) -> None:
    """Live, a fail-fast map that tolerates no failure fails the instance as its first failed
    item did: failed_step ``t`` (the step inside the item). 27aa213's ``_failed_step_of``
    (actors/_lane.py:165-170) looks for the failed item among the *lanes* of ``state.lanes``, but
    an item's lane leaves the header as soon as the item ends (``item_ended``,
    runtime/_map.py:79), before the map's own failure is stored: taken up after a restart between
    storing that failure and deciding on it, the instance ends with failed_step ``m`` (while its
    error still says "item 0, step 't'")."""
    async def bad(ctx: tf.WorkflowContext) -> None:
        raise Declined("card declined")

    async def on_step_failed(step_name: str, error: BaseException, ctx: tf.WorkflowContext) -> None:
        if step_name == "m":
            await trio.sleep_forever()  # the engine closes here: m's failure is stored

    def definition(hooked: bool) -> tf.WorkflowDefinition:
        builder = tf.workflow("w").map("m", items=lambda ctx: [1, 2], branch=tf.branch("each").step("t", bad).build())
        return (builder.with_hooks(on_step_failed=on_step_failed) if hooked else builder).build()

    adapter = MemoryAdapter()
    clock = virtual_wall_clock()
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(definition(hooked=False))
        live = await engine.wait(await engine.start("w"))
    assert (live.status, live.failed_step) == ("failed", "t")
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(definition(hooked=True))
        iid = await engine.start("w")
        await trio.sleep(1)
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(definition(hooked=False))
        with trio.fail_after(100):
            resumed = await engine.wait(iid)
    assert (resumed.status, resumed.failed_step, resumed.error_name) == ("failed", "t", live.error_name), \
        (resumed.failed_step, resumed.error)


# -- 4. ctx.error in a parallel branch's compensation ---------------------------------------------


async def test_ctx_error_in_a_branch_compensation_is_the_branch_catch_as_in_a_map_item(
        autojump_clock: trio.testing.MockClock) -> None:
    """A branch catches ``Declined`` and goes on to handler ``h``; a later step fails the workflow,
    so ``h`` is compensated in its branch lane. Before 87ecafe its compensation saw the caught
    error as ``ctx.error`` (as a map item's compensation still does). 87ecafe bounds a branch's
    ``ctx.error`` by the parallel step's newest record (runtime/_context.py:159-160), which for
    a compensation is this very execution's completion record: ``ctx.error`` is now ``None``."""
    seen: dict[str, Any] = {}

    async def bad(ctx: tf.WorkflowContext) -> None:
        raise Declined("card declined")

    async def handle(ctx: tf.WorkflowContext) -> str:
        return "handled"

    async def undo_in_branch(ctx: tf.WorkflowContext, result: Any) -> None:
        seen["branch"] = ctx.error

    async def undo_in_item(ctx: tf.WorkflowContext, result: Any) -> None:
        seen["item"] = ctx.error

    async def boom(ctx: tf.WorkflowContext) -> None:
        raise RuntimeError("later")

    par = (tf.workflow("w")
           .parallel("p", branches=[
               tf.branch("b").step("charge", bad, catch=[tf.Catch(errors=Declined, next="h")])
                             .step("h", handle, undo_in_branch).build(),
               tf.branch("c").step("x", handle).build()])
           .step("z", boom).build())
    mapped = (tf.workflow("m")
              .map("each", items=lambda ctx: [1], branch=tf.branch("item")
                   .step("charge2", bad, catch=[tf.Catch(errors=Declined, next="h2")])
                   .step("h2", handle, undo_in_item).build())
              .step("z2", boom).build())
    async with open_test_engine() as engine:
        engine.register(par)
        engine.register(mapped)
        done = await engine.wait(await engine.start("w"))
        item_done = await engine.wait(await engine.start("m"))
    assert done.compensated_steps == ("h",) and item_done.compensated_steps == ("h2",)
    caught = {"error": "Declined", "cause": "card declined"}
    assert seen["item"] == caught
    assert seen["branch"] == caught, seen


# -- 5. a group of one UnencodableValueError ------------------------------------------------------


async def test_a_value_that_cannot_be_stored_set_in_a_jobs_own_nursery_is_not_retried(
        autojump_clock: trio.testing.MockClock) -> None:
    """902bfb1: a job failing with an exception group of one error is "matched, retried, caught,
    named and recorded as that error". A job whose nursery task calls ``ctx.set`` with a value
    that cannot be stored fails with a group of one UnencodableValueError: it is named and
    recorded as such, but retried like any error: ``attempt`` checks
    ``isinstance(error, UnencodableValueError)`` on the group (actors/_task.py:76). SPEC §12 / the
    bare error: such a value fails its step, not retried."""
    calls = 0

    async def job(ctx: tf.WorkflowContext) -> None:
        nonlocal calls
        calls += 1

        async def worker() -> None:
            ctx.set("k", object())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker)

    wf = tf.workflow("w").step("s", job, retry=tf.Retry(max_attempts=3, interval=1)).build()
    async with open_test_engine() as engine:
        engine.register(wf)
        with trio.fail_after(100):
            done = await engine.wait(await engine.start("w"))
    assert (done.status, done.error_name) == ("failed", "UnencodableValueError")
    assert calls == 1, f"a value that cannot be stored was tried {calls} times"


# -- 6. the crash explorer and a workflow timeout -------------------------------------------------


async def test_explore_crashes_does_not_report_a_timeout_reached_by_a_step_run_again(
        autojump_clock: trio.testing.MockClock) -> None:
    """27aa213 stops the explorer demanding the fault-free run's failed step and compensations of
    a workflow with a timeout, because "a step run again after a resume takes its time again"
    (runtime/testing/_crashes.py:254-268, docs/testing.md). The same holds for the final status:
    a, b (2 s each) under a 5 s timeout complete at 4 s; a write lost with a step in flight runs
    that step again, the run reaches 6 s and ends ``timed_out``, as the engine must. The explorer
    still compares status first (runtime/testing/_crashes.py:325-326) and reports both lost-write
    points as divergent."""
    async def a(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(2)
        return "a"

    async def b(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(2)
        return "b"

    async def undo(ctx: tf.WorkflowContext, result: Any) -> None:
        return None

    wf = tf.workflow("t").step("a", a, undo).step("b", b, undo).with_timeout(5).build()
    report = await explore_crashes(wf, check=False)
    assert report.baseline.status == "completed"
    assert [(p.write, p.lost, p.divergence) for p in report.divergent] == []
