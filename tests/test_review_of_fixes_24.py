"""Adversarial review of the changes cd4af4f..HEAD: repeated cancel after a restart, fail-fast
maps of children that exceed their tolerance, queued parents' deadlines, wait() callers giving
up, SQLite's due(inf), input checks, the lazy codec import and RecordedError results.

Two failed on the changes reviewed, both fixed: a child's failure that a catch takes counted
against its map's tolerance (its parent then ran past ``max_running``), and entity steps
refused a driver with only the methods they use. A third showed an older gap, fixed since
(a wait-all step nested in a fail-fast one, failed by a child's completion)."""

from __future__ import annotations

import functools
import math
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from storages import finish, storage  # noqa: F401  (storage: a fixture on both adapters)
from trioflow._errors import ChildWorkflowError, RecordedError, describe_error
from trioflow.adapters import Adapter, DriverError, MemoryAdapter, MemoryDriver, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


class Declined(Exception):
    pass


async def ok(ctx: Any) -> str:
    return "ok"


# -- 1. cancel() repeated after a restart -----------------------------------------------------

def _saga(undo_hangs: list[Any], fail: bool) -> tf.WorkflowDefinition:
    """``undo_hangs[0]``: True (the compensation hangs), or an event it waits for."""
    async def reserve(ctx: Any) -> str:
        return "r"

    async def release(ctx: Any, out: Any) -> None:
        if undo_hangs[0] is True:
            await trio.sleep_forever()
        elif isinstance(undo_hangs[0], trio.Event):
            await undo_hangs[0].wait()

    async def charge(ctx: Any) -> None:
        if fail:
            raise Declined("declined")
        await trio.sleep(10_000)

    return tf.workflow("saga").step("reserve", reserve, release).step("charge", charge).build()


@pytest.mark.parametrize("queued", [False, True])
async def test_repeated_cancel_after_a_restart_says_yes_to_a_cancel_compensating(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], queued: bool) -> None:  # noqa: F811
    hangs = [True]
    wf = _saga(hangs, fail=False)

    async def hog(ctx: Any) -> None:
        await trio.sleep(500)

    hog_wf = tf.workflow("hog").step("h", hog).build()
    clock = virtual_wall_clock()
    async with open_test_engine(adapter=storage(), clock=clock) as eng:
        eng.register(wf)
        iid = await eng.start("saga")
        await trio.sleep(5)
        assert await eng.cancel(iid) is True
        await trio.sleep(5)  # compensating reserve, which hangs: the engine closes meanwhile
    hangs[0] = go = trio.Event()
    async with open_test_engine(adapter=storage(), clock=clock, max_running=1) as eng:
        eng.register(hog_wf)
        if queued:
            await eng.start("hog")  # holds the only slot: the resumed instance queues
            await trio.sleep(1)
        eng.register(wf)
        assert await eng.cancel(iid) is True  # (racing the resume)
        await trio.sleep(1)
        assert await eng.cancel(iid) is True
        go.set()
        done = await finish(eng, iid)
        assert done.status == "cancelled"
        assert await eng.cancel(iid) is False  # over


async def test_repeated_cancel_after_a_restart_says_no_to_a_failure_compensating(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    hangs = [True]
    wf = _saga(hangs, fail=True)
    clock = virtual_wall_clock()
    async with open_test_engine(adapter=storage(), clock=clock) as eng:
        eng.register(wf)
        iid = await eng.start("saga")
        await trio.sleep(5)
        assert await eng.cancel(iid) is False
    async with open_test_engine(adapter=storage(), clock=clock) as eng:
        assert await eng.cancel(iid) is False  # not registered here: read from storage
    hangs[0] = False
    async with open_test_engine(adapter=storage(), clock=clock) as eng:
        eng.register(wf)
        assert await eng.cancel(iid) is False
        done = await finish(eng, iid)
        assert (done.status, done.error_name) == ("failed", "Declined")


# -- 2. fail-fast maps of children past their tolerance ----------------------------------------

async def _map_with_hogs(items: int, failing: set[int], tolerated: float | int, *,
                         catch_on_first: bool = False) -> tuple[tf.WorkflowInstance, float, list[int]]:
    """A parent maps ``items`` children (fail-fast, ``tolerated``): those of ``failing`` fail
    together at t=10, the others run to t=2000 in their slots. Hogs queued at t=2 take the
    failed children's slots: a parent that has to cancel its children runs at once (ends by
    ~t=10); one that need not waits for a slot (a hog's end, t>=1010).
    ``catch_on_first``: item 0 runs a child step with a catch (its failure is taken), the
    others one without."""
    finished: list[int] = []

    async def work(ctx: Any) -> int:
        if ctx.input in failing:
            await trio.sleep(10)
            raise Declined(f"item {ctx.input}")
        await trio.sleep(2000)
        finished.append(int(ctx.input))
        return int(ctx.input)

    async def hog(ctx: Any) -> None:
        await trio.sleep(1000)

    kid = tf.workflow("kid").step("w", work).build()
    hog_wf = tf.workflow("hog").step("h", hog).build()
    if catch_on_first:
        branch = (tf.branch("b")
                  .choice("route", choices=[tf.when(lambda ctx: ctx.item == 0, next="caught")], default="plain")
                  .child("caught", workflow="kid", catch=[tf.Catch(errors=[tf.ChildWorkflowError], next="after")],
                         next="after")
                  .child("plain", workflow="kid", next="after")
                  .end("after").build())
    else:
        branch = tf.branch("b").child("c", workflow="kid").build()
    parent = (tf.workflow("p").map("each", items=lambda ctx: list(range(items)), tolerated_failures=tolerated,
                                   branch=branch).build())
    async with open_test_engine(adapter=MemoryAdapter(), clock=virtual_wall_clock(), max_running=items) as eng:
        for wf in (parent, kid, hog_wf):
            eng.register(wf)
        iid = await eng.start("p")
        await trio.sleep(2)
        for _ in failing:
            await eng.start("hog")
        done = await finish(eng, iid)
        return done, trio.current_time(), finished


@pytest.mark.parametrize(("items", "failing", "tolerated", "fails"), [
    (4, {0, 1}, 0.5, False),        # 2 of 4 at exactly one half: tolerated
    (4, {0, 1, 2}, 0.5, True),
    (3, {0}, 1 / 3, False),         # k/n of n items is k
    (3, {0, 1}, 1 / 3, True),
    (3, {0, 1}, 2 / 3, False),
    (4, {0}, 0.2499, True),         # just under one item of four: none tolerated
    (4, {0}, 0.25, False),
    (2, {0, 1}, 0.99, True),
    (2, {0, 1}, 1.0, False),        # every item may fail
    (3, {0, 1}, 1, True),           # a count, two failing at the same moment
    (3, {0, 1, 2}, 2, True),
])
async def test_fail_fast_map_boundaries_with_failures_at_one_moment(
        autojump_clock: trio.testing.MockClock, items: int, failing: set[int], tolerated: float,
        fails: bool) -> None:
    done, ended, finished = await _map_with_hogs(items, failing, tolerated)
    if fails:
        assert done.status == "failed", (done.status, done.error_name)
        assert ended < 100, f"the parent ran only at {ended}: it queued behind the hogs"
        assert finished == [], "siblings the fail-fast map should have cancelled ran on"
    else:
        assert done.status == "completed", (done.status, done.error_name, done.cause)
        assert ended >= 1010, f"the parent ran at {ended} without a slot (max_running bounds it)"
        assert sorted(finished) == sorted(set(range(items)) - failing)


async def test_a_caught_childs_failure_is_not_counted_against_the_maps_tolerance(
        autojump_clock: trio.testing.MockClock) -> None:
    """Item 0's child step has a catch (its failure is taken, the item goes on), item 1's has
    none: one failed item of a map tolerating one. The parent need not cancel anything, so it
    waits for a slot as any run does (docs/fanout.md: 'A parent whose child's failure a catch
    may take ... waits for a slot as any run does'). _must_cancel_children counts item 0's
    failure too, and runs the parent at once, past max_running."""
    done, ended, finished = await _map_with_hogs(2, {0, 1}, 1, catch_on_first=True)
    assert done.status == "completed", (done.status, done.error_name)
    assert ended >= 1010, f"the parent ran at {ended}, without a slot, with nothing to cancel"


@pytest.mark.parametrize("max_running", [1, 2, 3])
async def test_fail_fast_map_of_children_of_children(
        autojump_clock: trio.testing.MockClock, max_running: int) -> None:
    """Parent -> fail-fast map (1 tolerated) of children -> each a fail-fast map (none
    tolerated) of grandchildren. Grandchildren 0 of items 0 and 1 fail 10 and 20 s after they
    start; the others run for 2000 s. (Slots go in an order trio's scheduler may shuffle: the
    long ones may hold them first.) The parent fails within moments of the second failure,
    and no long grandchild running or queued then runs on to its end."""
    finished: list[float] = []
    failed_at: list[float] = []

    async def grand(ctx: Any) -> Any:
        item, sub = ctx.input
        if sub == 0 and item in (0, 1):
            await trio.sleep(10 + 10 * item)
            failed_at.append(trio.current_time())
            raise Declined(f"{item}/{sub}")
        await trio.sleep(2_000)
        finished.append(trio.current_time())
        return ctx.input

    g = tf.workflow("g").step("w", grand).build()
    c = (tf.workflow("c").map("subs", items=lambda ctx: [[ctx.input, 0], [ctx.input, 1]],
                              branch=tf.branch("sb").child("gc", workflow="g").build()).build())
    p = (tf.workflow("p").map("items", items=lambda ctx: [0, 1, 2], tolerated_failures=1,
                              branch=tf.branch("ib").child("cc", workflow="c").build()).build())
    async with open_test_engine(adapter=MemoryAdapter(), clock=virtual_wall_clock(), max_running=max_running) as eng:
        for wf in (p, c, g):
            eng.register(wf)
        done = await finish(eng, await eng.start("p"))
        ended = trio.current_time()
    assert done.status == "failed"
    assert len(failed_at) == 2
    assert ended - max(failed_at) < 60, (ended, failed_at)
    assert all(at <= max(failed_at) for at in finished), (finished, failed_at)


async def test_fail_fast_parallel_failing_through_a_nested_wait_all_map(
        autojump_clock: trio.testing.MockClock) -> None:
    """A fail-fast parallel: branch A holds a wait-all map of two children (one fails at t=10,
    the other completes at t=20: the map, so branch A, fails then), branch B a child of 5000 s.
    With max_running=3 the three children run; two hogs started next queue for a slot. At t=10
    the failure frees a slot, which the first hog takes, and wakes the parent (not urgent:
    wait-all), which queues behind the second. At t=20 the completion that fails the map,
    and so branch A, frees a slot for the second hog; the parent must run at once, in its
    children's slots, to cancel B's child: queued, it would wait for B's child's end (or a
    hog's) 'for ever'. (A known gap until 2026-12-05: a completion was not looked at. The
    first version of this test, max_running=1 and no hogs, ran B's child first, alone: no
    parent could cancel it before A's children even ran.)"""
    ran_on: list[float] = []

    async def work(ctx: Any) -> Any:
        t, fail = ctx.input
        await trio.sleep(t)
        if fail:
            raise Declined("no")
        if t > 100:
            ran_on.append(trio.current_time())
        return t

    kid = tf.workflow("kid").step("w", work).build()
    hog = tf.workflow("hog").step("h", work).build()
    inner = tf.branch("A").map("m", items=lambda ctx: [(10, True), (20, False)], on_error="wait-all",
                               branch=tf.branch("mb").child("c", workflow="kid").build()).build()
    other = tf.branch("B").child("long", workflow="kid", input=lambda ctx: (5000, False)).build()
    parent = tf.workflow("p").parallel("par", branches=[inner, other]).build()
    async with open_test_engine(adapter=MemoryAdapter(), clock=virtual_wall_clock(), max_running=3) as eng:
        for wf in (parent, kid, hog):
            eng.register(wf)
        iid = await eng.start("p")
        await trio.sleep(1)
        for _ in range(2):
            await eng.start("hog", (100_000, False))
        done = await finish(eng, iid)
        ended = trio.current_time()
        long_child = await eng.get_instance(next(c for c in done.children if "/par/B/" in c))
    assert done.status == "failed"
    assert ran_on == [], f"B's child ran to its end at {ran_on}; the parent failed only at {ended}"
    assert ended < 30, ended
    assert long_child.status == "cancelled"


# -- 3. deadlines of queued parents ------------------------------------------------------------

async def test_queued_parents_leave_the_queue_at_their_deadline_after_the_heap_is_compacted(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    """Many parents (workflow timeout 1000) are queued for a slot when their first child ends,
    then run and wait out of memory again (their entries forgotten, the heap compacted); one
    more, queued behind a hog at t~501, must still leave the queue at its deadline and time
    out then, cancelling its children; so must those parked (the waker)."""
    n = 80

    async def kid_step(ctx: Any) -> None:
        await trio.sleep(1)

    async def hog(ctx: Any) -> None:
        await trio.sleep(10_000)

    kid = tf.workflow("kid").wait("w", seconds=lambda ctx: ctx.input).step("s", kid_step).build()
    hog_wf = tf.workflow("hog").step("h", hog).build()
    parent = (tf.workflow("p").parallel("par", on_error="wait-all", branches=[
        tf.branch("quick").child("q", workflow="kid", input=lambda ctx: ctx.input).build(),
        tf.branch("long").child("l", workflow="kid", input=lambda ctx: 100_000).build()])
        .with_timeout(1000).build())
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock(), max_running=1) as eng:
        for wf in (parent, kid, hog_wf):
            eng.register(wf)
        many = [await eng.start("p", 50) for _ in range(n)]
        last = await eng.start("p", 500)
        await trio.sleep(500.5)
        e: Any = eng
        assert len(e._queued_deadlines) <= 2 * len(e._queued_deadlines_known) + 64
        await eng.start("hog")  # queued: the last parent's quick child holds the slot
        done = await finish(eng, last)
        ended = trio.current_time()
        assert done.status == "timed_out", done.status
        assert ended < 1100, f"the queued parent timed out only at {ended}"
        for iid in many:
            assert (await finish(eng, iid)).status == "timed_out"
        assert len(e._queued_deadlines_known) == 0
        assert len(e._queued_deadlines) <= 64


async def test_a_parent_queued_again_after_parking_leaves_the_queue_at_its_deadline(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    """Queued at t~51 behind a hog of 100 s (its deadline watched), run at t~151 and parked
    (forgotten), queued again at t~301 behind a hog of 10^4 s: it still leaves the queue at
    its deadline (t~1000) and times out then, its long child cancelled."""
    async def kid_step(ctx: Any) -> None:
        await trio.sleep(1)

    async def hog(ctx: Any) -> None:
        await trio.sleep(ctx.input)

    kid = tf.workflow("kid").wait("w", seconds=lambda ctx: ctx.input).step("s", kid_step).build()
    hog_wf = tf.workflow("hog").step("h", hog).build()
    parent = (tf.workflow("p").parallel("par", on_error="wait-all", branches=[
        tf.branch(f"b{t}").child(f"c{t}", workflow="kid", input=lambda ctx, t=t: t).build()
        for t in (50, 300, 100_000)]).with_timeout(1000).build())
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock(), max_running=1) as eng:
        for wf in (parent, kid, hog_wf):
            eng.register(wf)
        iid = await eng.start("p")
        await trio.sleep(50.5)
        await eng.start("hog", 100)
        await trio.sleep(10)
        e: Any = eng
        assert iid in e._live and e._live[iid] in e._waiting, "queued behind the first hog"
        await trio.sleep(290.5 - 60.5)  # t=290.5... the hog ended, the parent ran and parked
        assert iid not in e._live
        await trio.sleep(10)  # t=300.5: the 300 s child runs
        await eng.start("hog", 10_000)
        await trio.sleep(5)
        assert iid in e._live and e._live[iid] in e._waiting, "queued again behind the second hog"
        assert [entry[1] for entry in e._queued_deadlines_known] == [iid]
        done = await finish(eng, iid)
        ended = trio.current_time()
    assert done.status == "timed_out"
    assert ended < 1100, f"timed out only at {ended}"


async def test_a_parent_cancelled_while_queued_leaves_no_deadline_behind(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    async def hog(ctx: Any) -> None:
        await trio.sleep(10_000)

    async def kid_step(ctx: Any) -> None:
        await trio.sleep(1)

    kid = tf.workflow("kid").wait("w", seconds=lambda ctx: ctx.input).step("s", kid_step).build()
    hog_wf = tf.workflow("hog").step("h", hog).build()
    parent = (tf.workflow("p").parallel("par", on_error="wait-all", branches=[
        tf.branch("quick").child("q", workflow="kid", input=lambda ctx: 50).build(),
        tf.branch("long").child("l", workflow="kid", input=lambda ctx: 100_000).build()])
        .with_timeout(86_400).build())
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock(), max_running=1) as eng:
        for wf in (parent, kid, hog_wf):
            eng.register(wf)
        iids = [await eng.start("p") for _ in range(3)]
        await trio.sleep(50.2)  # the quick children run (one slot)
        await eng.start("hog")
        await trio.sleep(10)  # the parents are queued behind the hog, deadlines watched
        e: Any = eng
        assert len(e._queued_deadlines_known) == 3, e._queued_deadlines_known
        for iid in iids:
            assert await eng.cancel(iid) is True
        for iid in iids:
            assert (await finish(eng, iid)).status == "cancelled"
        assert len(e._queued_deadlines_known) == 0


# -- 4. wait() callers giving up ---------------------------------------------------------------

async def test_waiters_giving_up_as_the_instance_wakes(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    """Callers of wait() on a parked instance whose own timeouts fall at the moment it is
    woken (some before, some at, some after): none raises anything but its own timeout, one
    patient caller gets the end, and nothing stays in _next_run."""
    async def slow(ctx: Any) -> str:
        await trio.sleep(3)
        return "done"

    wf = tf.workflow("later").wait("t", seconds=100).step("go", slow).build()
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as eng:
        eng.register(wf)
        iid = await eng.start("later")
        await trio.sleep(10)
        e: Any = eng
        assert iid not in e._live
        results: list[str] = []
        gave_up: list[float] = []

        async def impatient(limit: float) -> None:
            with trio.move_on_after(limit):
                results.append((await eng.wait(iid)).status)
                return
            gave_up.append(limit)

        async with trio.open_nursery() as nursery:
            for limit in (89.0, 89.5, 89.6, 90.0, 90.5, 91.0, 95.0, 1000.0):
                for _ in range(3):
                    nursery.start_soon(impatient, limit)
        assert results and set(results) == {"completed"}
        assert all(limit < 93.5 for limit in gave_up), gave_up
        assert e._next_run == {}


async def test_a_waiter_giving_up_leaves_the_event_of_another_that_waits_on(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    wf = tf.workflow("later").wait("t", seconds=1000).step("go", ok).build()
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as eng:
        eng.register(wf)
        iid = await eng.start("later")
        await trio.sleep(10)
        e: Any = eng
        got: list[str] = []

        async def patient() -> None:
            got.append((await eng.wait(iid)).status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(patient)
            for k in range(20):
                with trio.move_on_after(1 + k):
                    await eng.wait(iid)
            assert list(e._next_run) == [iid]
        assert got == ["completed"] and e._next_run == {}


# -- 5. SQLite's due(inf) ----------------------------------------------------------------------

async def test_sqlite_due_unbounded_marks_nothing(autojump_clock: trio.testing.MockClock, tmp_path: Any) -> None:
    wf = tf.workflow("later").wait("t", seconds=86_400).step("go", ok).build()
    adapter = SQLiteAdapter(tmp_path / "d.db")
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as eng:
        eng.register(wf)
        for _ in range(20):
            await eng.start("later")
        await trio.sleep(10)
        a: Any = adapter
        before = dict(a._known)
        rows = await adapter.due(math.inf, 100)
        assert len(rows) == 20
        assert a._known == before
        assert not any(row.instance_id in a._known for row in rows)


# -- 6. input checks ---------------------------------------------------------------------------

async def _async_seconds(ctx: Any) -> float:
    return 1.0


class _AsyncCallable:
    async def __call__(self, ctx: Any) -> float:
        return 1.0


@pytest.mark.parametrize("field", ["seconds", "until"])
@pytest.mark.parametrize("fn", [_async_seconds, functools.partial(_async_seconds), _AsyncCallable()],
                         ids=["async-def", "partial", "async-call"])
def test_a_timer_given_an_async_callable_is_refused_at_build(field: str, fn: Any) -> None:
    with pytest.raises(tf.DefinitionError, match="async"):
        tf.workflow("w").wait("t", **{field: fn}).step("s", ok).build()


async def test_a_timer_callable_handing_back_an_awaitable_fails_its_step(
        autojump_clock: trio.testing.MockClock) -> None:
    wf = tf.workflow("w").wait("t", seconds=lambda ctx: _async_seconds(ctx)).step("s", ok).build()
    async with open_test_engine(adapter=MemoryAdapter(), clock=virtual_wall_clock()) as eng:
        eng.register(wf)
        done = await finish(eng, await eng.start("w"))
    assert done.status == "failed" and done.failed_step == "t"


@pytest.mark.parametrize("buffer", [0, -1, True, 1.5, "3", None, math.nan, -math.inf])
async def test_subscribe_refuses_bad_buffers(autojump_clock: trio.testing.MockClock, buffer: Any) -> None:
    async with open_test_engine(adapter=MemoryAdapter()) as eng:
        with pytest.raises(tf.InvalidArgumentError):
            async with eng.events.subscribe("*", buffer=buffer):
                pass


@pytest.mark.parametrize("buffer", [1, 5, math.inf])
async def test_subscribe_takes_good_buffers(autojump_clock: trio.testing.MockClock, buffer: Any) -> None:
    async with open_test_engine(adapter=MemoryAdapter()) as eng:
        eng.register(tf.workflow("w").step("s", ok).build())
        async with eng.events.subscribe("workflow.*", buffer=buffer) as events:
            iid = await eng.start("w")
            await eng.wait(iid)
            first = await events.receive()
        assert first["instance_id"] == iid


class _AnyObject:
    value = 42


async def test_any_object_is_a_driver_for_the_workflows_own_steps(autojump_clock: trio.testing.MockClock) -> None:
    async def use(ctx: Any) -> int:
        return int(ctx.driver.value)

    wf = tf.workflow("w").step("u", use).build()
    assert (await tf.execute_workflow(_AnyObject(), wf, None)).output == 42
    async with open_test_engine(adapter=MemoryAdapter(), driver=_AnyObject(), clock=virtual_wall_clock()) as eng:
        eng.register(wf)
        assert (await finish(eng, await eng.start("w"))).output == 42


async def test_a_driver_with_only_a_transaction_runs_a_transactional_workflow() -> None:
    memory = MemoryDriver()

    class OnlyTransactions:
        value = 7

        def transaction(self) -> Any:
            return memory.transaction()

    async def use(ctx: Any) -> int:
        return int(ctx.driver.value)

    wf = tf.workflow("w").step("u", use).transactional().build()
    assert (await tf.execute_workflow(OnlyTransactions(), wf, None)).output == 7
    with pytest.raises(tf.InvalidArgumentError, match="transaction"):
        await tf.execute_workflow(_AnyObject(), wf, None)


async def test_a_partial_driver_with_what_a_create_step_uses_still_runs_it() -> None:
    """Before cd4af4f..HEAD a driver with create/delete/primary_key/transaction (all a create
    entity step calls) ran one; ``_driver`` now asks ``isinstance(driver, Driver)``, every
    method of the protocol, and fails the step."""
    memory = MemoryDriver()

    class CreatesOnly:
        async def create(self, entity: str, data: Any) -> Any:
            return await memory.create(entity, data)

        async def delete(self, entity: str, where: Any) -> int:
            return await memory.delete(entity, where)

        async def primary_key(self, entity: str) -> str:
            return await memory.primary_key(entity)

        def transaction(self) -> Any:
            return memory.transaction()

    wf = tf.workflow("w").step(tf.create_entity_step("mk", "t", lambda ctx: {"name": "x"}, store_as="id")).build()
    result = await tf.execute_workflow(CreatesOnly(), wf, None)
    assert result.status == "completed", result.error


async def test_an_entity_step_given_a_path_as_its_driver_names_it() -> None:
    wf = tf.workflow("w").step(tf.create_entity_step("mk", "t", lambda ctx: {"name": "x"})).build()
    result = await tf.execute_workflow("/tmp/x.db", wf, None)
    assert result.status == "failed"
    assert isinstance(result.error, DriverError) and "mk" in str(result.error)


@pytest.mark.parametrize("end", [1, "yes", 0])
def test_end_takes_a_bool(end: Any) -> None:
    with pytest.raises(tf.DefinitionError, match="end"):
        tf.workflow("w").step("a", ok, end=end).build()


@pytest.mark.parametrize("steps", [["a"], "ab", None, [tf.step("a", ok), "b"]])
async def test_run_workflow_names_steps_that_are_not_steps(steps: Any) -> None:
    with pytest.raises(tf.DefinitionError, match="steps"):
        await tf.run_workflow(None, "w", steps)


async def test_run_workflow_takes_a_tuple_of_steps() -> None:
    result = await tf.run_workflow(None, "w", (tf.step("a", ok), tf.step("b", ok)))
    assert result.status == "completed"


# -- 7. lazy codec, RecordedError, ChildWorkflowError.read_back ---------------------------------

def test_the_context_loads_the_codec_when_a_step_first_copies_a_value() -> None:
    code = ("import sys, trio, trioflow as tf\n"
            "assert 'trioflow._codec' not in sys.modules\n"
            "async def s(ctx): return ctx.input['k'] + len(ctx.steps)\n"
            "async def main():\n"
            "    async with tf.open_engine() as eng:\n"
            "        eng.register(tf.workflow('w').step('a', s).step('b', s).build())\n"
            "        print((await eng.wait(await eng.start('w', {'k': 1}))).output)\n"
            "trio.run(main)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "2", done.stderr


@pytest.mark.parametrize(("error", "named"), [
    (RecordedError("E: c", "E", "c", named_by_workflow=True), True),
    (RecordedError("E: c", "E", "c"), False),
    (Declined("failed at a fail step: spoof"), False),
])
@pytest.mark.parametrize("status", ["failed", "cancelled", "timed_out"])
def test_child_workflow_error_reads_back_what_it_wrote(error: BaseException, named: bool, status: str) -> None:
    child = "0190/each/#3/c#1"
    written = describe_error(ChildWorkflowError(child, "kid", status, error))
    assert ChildWorkflowError.read_back(written, child, "kid") == (True, named and status == "failed")
    assert ChildWorkflowError.read_back(written, child, "ki") == (False, False)
    assert ChildWorkflowError.read_back(written, child + "0", "kid") == (False, False)
    assert ChildWorkflowError.read_back("Declined: x", child, "kid") == (False, False)


async def test_a_resumed_timeout_reaches_on_failed_hooks_as_a_recorded_error(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    seen: list[tf.WorkflowResult] = []
    hangs = [True]

    async def reserve(ctx: Any) -> str:
        return "r"

    async def release(ctx: Any, out: Any) -> None:
        if hangs[0]:
            await trio.sleep_forever()

    async def slow(ctx: Any) -> None:
        await trio.sleep(1000)

    async def on_failed(result: tf.WorkflowResult) -> None:
        seen.append(result)

    wf = (tf.workflow("w").step("reserve", reserve, release).step("slow", slow).with_timeout(10)
          .with_hooks(on_failed=on_failed).build())
    clock = virtual_wall_clock()
    async with open_test_engine(adapter=storage(), clock=clock) as eng:
        eng.register(wf)
        iid = await eng.start("w")
        await trio.sleep(20)
    hangs[0] = False
    async with open_test_engine(adapter=storage(), clock=clock) as eng:
        eng.register(wf)
        done = await finish(eng, iid)
        await trio.sleep(1)
    assert done.status == "timed_out"
    assert [type(r.error) for r in seen] == [tf.RecordedError]
    error = seen[0].error
    assert isinstance(error, tf.RecordedError)
    assert error.error_name == done.error_name and error.cause == done.cause
