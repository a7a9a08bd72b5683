"""Adversarial review of bbb2193 (a parent kept in memory by a brief wait lends its slot to the
children it waits on that queued for a second or more): cancels, timeouts, fail-fast failures,
parking, nesting, restarts and ``max_running`` accounting around a lent slot.

On trio's MockClock (autojump), on the MemoryAdapter and SQLite; every wait is bounded."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import Adapter

from storages import engine_on, finish, storage  # noqa: F401  (a fixture)

LIMIT = 600  # virtual seconds: far past anything these tests need; a hang fails there


class Board:
    """A side channel: what child job bodies did (as an external system a child provisions
    and its parent polls)."""

    def __init__(self) -> None:
        self.started: list[str] = []  # instance ids whose job body began
        self.done: list[str] = []  # instance ids whose job body ended
        self.tags: dict[str, str] = {}  # instance id -> tag (the parent it reports to)
        self.running = 0
        self.peak = 0

    async def work(self, ctx: tf.WorkflowContext) -> str:
        """A child's job: ``ctx.input`` is ``{"tag": parent id, "secs": seconds}``."""
        self.started.append(ctx.instance.id)
        self.tags[ctx.instance.id] = ctx.input["tag"]
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await trio.sleep(ctx.input.get("secs", 0))
        finally:
            self.running -= 1
        self.done.append(ctx.instance.id)
        return ctx.instance.id

    def done_for(self, tag: str) -> int:
        return sum(self.tags[d] == tag for d in self.done)

    async def all_done(self, ctx: tf.WorkflowContext) -> bool:
        return self.done_for(ctx.instance.id) >= ctx.input["n"]


def kid(board: Board, name: str = "kid") -> tf.WorkflowDefinition:
    return tf.workflow(name).step("work", board.work).build()


def poll(nap: float = 0.5, receive: bool = False) -> tf.Branch:
    """A branch that looks at the board after each brief wait until the parent's children are
    all done."""
    b = tf.branch("poll")
    if receive:
        b = b.receive("nap", signal="never", timeout=nap,
                      catch=[tf.Catch(errors=["SignalTimeoutError"], next="look")])
    else:
        b = b.wait("nap", seconds=nap)
    return (b.step("look", "all-done")
            .choice("again", choices=[tf.when(lambda ctx: ctx.steps["look"], next="seen")], default="nap")
            .pass_("seen", end=True).build())


def child_input(secs: float) -> Callable[[tf.WorkflowContext], dict[str, Any]]:
    return lambda ctx: {"tag": ctx.instance.id, "secs": secs}


def polling_parent(secs: float = 0.0, *, name: str = "parent", child: str = "kid", nap: float = 0.5,
                   receive: bool = False, timeout: float | None = 3600) -> tf.WorkflowDefinition:
    """A parent running one child beside a brief poll (the commit's case)."""
    wf = tf.workflow(name).parallel("both", branches=[
        tf.branch("run").child("c", workflow=child, input=child_input(secs)).build(),
        poll(nap, receive),
    ])
    if timeout is not None:
        wf = wf.with_timeout(timeout)
    return wf.build()


async def drained(engine: tf.Engine) -> None:
    """Wait (virtual time) until the engine runs nothing and queues nothing."""
    with trio.fail_after(30):
        while engine._running or engine._waiting:
            await trio.sleep(0.1)


async def assert_still_bounded(engine: tf.Engine, max_running: int, n: int = 6) -> None:
    """After all that: the engine's books are clean, and unrelated instances still run at most
    ``max_running`` job bodies at once."""
    await drained(engine)
    assert engine._running == 0, engine._running
    assert not engine._waiting
    count = {"now": 0, "peak": 0}

    async def solo(ctx: tf.WorkflowContext) -> None:
        count["now"] += 1
        count["peak"] = max(count["peak"], count["now"])
        try:
            await trio.sleep(1)
        finally:
            count["now"] -= 1

    engine.register(tf.workflow("solo").step("s", solo).build())
    ids = [await engine.start("solo", None) for _ in range(n)]
    for iid in ids:
        assert (await finish(engine, iid, limit=LIMIT)).status == "completed"
    assert count["peak"] == max_running, f"{count['peak']} unrelated bodies at once at max_running={max_running}"
    await drained(engine)


async def kid_ids(engine: tf.Engine, name: str = "kid") -> list[str]:
    return [i.id for i in await engine.get_instances(name)]


async def until(pred: Callable[[], bool], limit: float = 60) -> None:
    with trio.fail_after(limit):
        while not pred():
            await trio.sleep(0.05)


# --- nesting -------------------------------------------------------------------------------


async def test_a_grandchild_of_a_lent_child_runs(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # max_running=1: the parent polls beside a child "mid", which itself runs a child step
    # "kid". mid is lent the parent's slot; its own child must run too, or the parent (waiting,
    # through mid, on it) and mid wait for ever: the deadlock the change is about, one level down.
    board = Board()
    mid = tf.workflow("mid").child("g", workflow="kid", input=lambda ctx: ctx.input).build()
    parent = polling_parent(0.5, child="mid", timeout=300)
    start = trio.current_time()
    async with engine_on(storage(), max_running=1) as engine:
        engine.job("all-done")(board.all_done)
        for d in (kid(board), mid, parent):
            engine.register(d)
        pid = await engine.start("parent", {"n": 1})
        done = await finish(engine, pid, limit=LIMIT)
        assert done.status == "completed", (done.status, done.error, trio.current_time() - start)
        assert len(board.done) == 1
        assert trio.current_time() - start < 30
        await assert_still_bounded(engine, 1)


async def test_a_lent_child_polling_beside_its_own_child_lends_on(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # Both levels poll briefly: the grandchild is lent the lent child's slot in turn.
    board = Board()
    mid = polling_parent(0.5, name="mid", timeout=None)
    parent = tf.workflow("parent").parallel("both", branches=[
        tf.branch("run").child("c", workflow="mid", input=lambda ctx: {"n": 1}).build(),
        tf.branch("poll").wait("nap", seconds=0.5).step("look", "mid-done")
        .choice("again", choices=[tf.when(lambda ctx: ctx.steps["look"], next="seen")], default="nap")
        .pass_("seen", end=True).build(),
    ]).with_timeout(300).build()

    async def mid_done(ctx: tf.WorkflowContext) -> bool:
        return bool(board.done)

    async with engine_on(storage(), max_running=1) as engine:
        engine.job("all-done")(board.all_done)
        engine.job("mid-done")(mid_done)
        for d in (kid(board), mid, parent):
            engine.register(d)
        pid = await engine.start("parent", None)
        done = await finish(engine, pid, limit=LIMIT)
        assert done.status == "completed", (done.status, done.error)
        assert len(board.done) == 1
        await assert_still_bounded(engine, 1)


async def test_a_lent_child_that_parked_and_came_back_still_gets_its_own_child_run(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # mid is lent the slot, parks on a 20 s timer (giving it up), comes back to the queue, is
    # lent again, and only then starts its child: that one must run too.
    board = Board()
    mid = (tf.workflow("mid").wait("long", seconds=20)
           .child("g", workflow="kid", input=lambda ctx: ctx.input).build())
    start = trio.current_time()
    async with engine_on(storage(), max_running=1) as engine:
        engine.job("all-done")(board.all_done)
        for d in (kid(board), mid, polling_parent(0.5, child="mid", timeout=300)):
            engine.register(d)
        pid = await engine.start("parent", {"n": 1})
        done = await finish(engine, pid, limit=LIMIT)
        assert done.status == "completed", (done.status, done.error, trio.current_time() - start)
        assert len(board.done) == 1 and len(board.started) == 1
        assert trio.current_time() - start < 60
        await assert_still_bounded(engine, 1)


async def test_an_engine_closed_while_a_lent_childs_child_runs_and_the_next_one_finishes(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    board = Board()
    mid = tf.workflow("mid").child("g", workflow="kid", input=lambda ctx: ctx.input).build()

    def setup(engine: tf.Engine) -> None:
        engine.job("all-done")(board.all_done)
        for d in (kid(board), mid, polling_parent(10, child="mid", timeout=300)):
            engine.register(d)

    async with engine_on(storage(), max_running=1) as engine:
        setup(engine)
        pid = await engine.start("parent", {"n": 1})
        await until(lambda: bool(board.started))
        await trio.sleep(2)  # the grandchild's body is mid-run
    assert board.done == []
    start = trio.current_time()
    async with engine_on(storage(), max_running=1) as engine:
        setup(engine)
        parent_end = await finish(engine, pid, limit=LIMIT)
        assert parent_end.status == "completed", (parent_end.status, parent_end.error, trio.current_time() - start)
        assert {i.status for i in await engine.get_instances()} == {"completed"}
        assert len(board.done) == 1 and len(board.started) == 2
        await assert_still_bounded(engine, 1)


async def test_a_lent_child_waiting_on_a_signal_from_unrelated_queued_work_gets_it(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # max_running=2: the parent polls (slot 1), an unrelated 10 s instance holds slot 2, the
    # parent's child is lent the parent's slot and waits for a signal that a second unrelated
    # instance, queued behind it, sends. Once the first unrelated one ends, the sender must get a
    # slot: the lent child waiting on a signal must not keep it (as a child of its own would).
    board = Board()
    got: list[str] = []

    async def record(ctx: tf.WorkflowContext) -> None:
        got.append(ctx.instance.id)

    child = (tf.workflow("kid").step("work", board.work).receive("go", signal="go")
             .step("after", record).build())

    async def hold(ctx: tf.WorkflowContext) -> None:
        await trio.sleep(10)

    async def send(ctx: tf.WorkflowContext) -> None:
        await engine.signal(ctx.input, "go", None)

    async def child_through(ctx: tf.WorkflowContext) -> bool:
        return bool(got)  # (the parent polls until its child is past the signal)

    async with engine_on(storage(), max_running=2) as engine:
        engine.job("all-done")(child_through)
        engine.register(child)
        engine.register(polling_parent(0, timeout=600))
        engine.register(tf.workflow("hold").step("h", hold).build())
        engine.register(tf.workflow("send").step("s", send).build())
        pid = await engine.start("parent", {"n": 1})
        holder = await engine.start("hold", None)
        with trio.fail_after(5):
            while not (ids := await kid_ids(engine)):
                await trio.sleep(0.05)
        [cid] = ids
        sender = await engine.start("send", cid)
        for iid in (holder, sender, pid, cid):
            end = await finish(engine, iid, limit=LIMIT)
            assert end.status == "completed", (iid, end.status, end.error, trio.current_time())
        assert got == [cid]
        await assert_still_bounded(engine, 2)


# --- the lent child parks, is cancelled, its parent ends badly -------------------------------


async def test_a_lent_child_that_parks_on_a_long_timer_comes_back_and_ends_once(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    board = Board()
    firsts: list[str] = []

    async def first(ctx: tf.WorkflowContext) -> None:
        firsts.append(ctx.instance.id)

    child = tf.workflow("kid").step("first", first).wait("long", seconds=20).step("work", board.work).build()
    start = trio.current_time()
    async with engine_on(storage(), max_running=1) as engine:
        engine.job("all-done")(board.all_done)
        engine.register(child)
        engine.register(polling_parent(0.0, timeout=300))
        pid = await engine.start("parent", {"n": 1})
        done = await finish(engine, pid, limit=LIMIT)
        assert done.status == "completed", (done.status, done.error)
        [cid] = await kid_ids(engine)
        assert (await engine.get_instance(cid)).status == "completed"  # type: ignore[union-attr]
        assert firsts == [cid] and board.started == [cid] and board.done == [cid]
        assert trio.current_time() - start < 40  # 20 s of timer, and a few of lending
        await assert_still_bounded(engine, 1)


async def test_cancelling_a_lent_child_while_it_runs(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    board = Board()
    async with engine_on(storage(), max_running=1) as engine:
        engine.job("all-done")(board.all_done)
        engine.register(kid(board))
        engine.register(polling_parent(100))
        pid = await engine.start("parent", {"n": 1})
        await until(lambda: bool(board.started))  # lent: its body runs
        [cid] = await kid_ids(engine)
        with trio.fail_after(30):
            assert await engine.cancel(cid)
        child_end = await finish(engine, cid, limit=LIMIT)
        parent_end = await finish(engine, pid, limit=LIMIT)
        assert child_end.status == "cancelled", child_end.status
        assert parent_end.status == "failed", (parent_end.status, parent_end.error)
        assert board.started == [cid] and board.done == []
        await assert_still_bounded(engine, 1)


async def test_cancelling_the_parent_while_its_lent_child_runs(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    board = Board()
    async with engine_on(storage(), max_running=1) as engine:
        engine.job("all-done")(board.all_done)
        engine.register(kid(board))
        engine.register(polling_parent(100))
        pid = await engine.start("parent", {"n": 1})
        await until(lambda: bool(board.started))
        [cid] = await kid_ids(engine)
        with trio.fail_after(30):
            assert await engine.cancel(pid)
        parent_end = await finish(engine, pid, limit=LIMIT)
        child_end = await finish(engine, cid, limit=LIMIT)
        assert parent_end.status == "cancelled", (parent_end.status, parent_end.error)
        assert child_end.status == "cancelled", child_end.status
        assert board.done == []
        await assert_still_bounded(engine, 1)


async def test_the_parent_timing_out_while_its_lent_child_runs(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    board = Board()
    start = trio.current_time()
    async with engine_on(storage(), max_running=1) as engine:
        engine.job("all-done")(board.all_done)
        engine.register(kid(board))
        engine.register(polling_parent(100, timeout=5))
        pid = await engine.start("parent", {"n": 1})
        parent_end = await finish(engine, pid, limit=LIMIT)
        [cid] = await kid_ids(engine)
        child_end = await finish(engine, cid, limit=LIMIT)
        assert parent_end.status == "timed_out", (parent_end.status, parent_end.error)
        assert child_end.status == "cancelled", child_end.status
        assert board.started == [cid] and board.done == []  # it was lent, then cancelled
        assert trio.current_time() - start < 20
        await assert_still_bounded(engine, 1)


async def test_the_poll_failing_fail_fast_while_the_lent_child_runs(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    board = Board()
    looks: list[float] = []

    async def look(ctx: tf.WorkflowContext) -> bool:
        looks.append(trio.current_time())
        if board.started:
            raise RuntimeError("the thing it provisions is broken")
        return False

    async with engine_on(storage(), max_running=1) as engine:
        engine.job("all-done")(look)
        engine.register(kid(board))
        engine.register(polling_parent(100))
        pid = await engine.start("parent", {"n": 1})
        parent_end = await finish(engine, pid, limit=LIMIT)
        [cid] = await kid_ids(engine)
        child_end = await finish(engine, cid, limit=LIMIT)
        assert parent_end.status == "failed", (parent_end.status, parent_end.error)
        assert "broken" in (parent_end.error or "")
        assert child_end.status == "cancelled", child_end.status
        assert board.started == [cid] and board.done == []
        await assert_still_bounded(engine, 1)


async def test_a_queued_child_cancelled_before_it_is_lent(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # Cancelled 0.2 s after it queued (before any lend): it never runs its body; its parent's
    # child step fails, and the parent ends; nothing is left running or queued.
    board = Board()
    async with engine_on(storage(), max_running=1) as engine:
        engine.job("all-done")(board.all_done)
        engine.register(kid(board))
        engine.register(polling_parent(0))
        pid = await engine.start("parent", {"n": 1})
        with trio.fail_after(5):
            while not (ids := await kid_ids(engine)):
                await trio.sleep(0.05)
        [cid] = ids
        assert engine._live[cid] in engine._waiting
        with trio.fail_after(30):
            assert await engine.cancel(cid)
        child_end = await finish(engine, cid, limit=LIMIT)
        parent_end = await finish(engine, pid, limit=LIMIT)
        assert child_end.status == "cancelled"
        assert parent_end.status == "failed", (parent_end.status, parent_end.error)
        assert board.started == []
        await assert_still_bounded(engine, 1)


# --- many parents, many children ---------------------------------------------------------------


@pytest.mark.parametrize("receive", [False, True], ids=["short-timer", "short-receive"])
async def test_maps_of_children_beside_polls_run_each_child_once_and_stay_bounded_after(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], receive: bool) -> None:
    board = Board()
    parent = tf.workflow("parent").parallel("both", branches=[
        tf.branch("run").map("each", items=lambda ctx: [{"tag": ctx.instance.id, "secs": 1 + i % 3}
                                                        for i in range(ctx.input["n"])],
                             branch=tf.branch("item").child("c", workflow="kid").build()).build(),
        poll(0.3, receive),
    ]).with_timeout(3600).build()
    async with engine_on(storage(), max_running=2) as engine:
        engine.job("all-done")(board.all_done)
        engine.register(kid(board))
        engine.register(parent)
        pids = [await engine.start("parent", {"n": 5}) for _ in range(4)]
        ends = [await finish(engine, p, limit=LIMIT) for p in pids]
        assert [e.status for e in ends] == ["completed"] * 4, [(e.status, e.error) for e in ends]
        assert len(board.done) == 20
        assert Counter(board.started) == Counter(board.done) and max(Counter(board.started).values()) == 1
        kids = await engine.get_instances("kid")
        assert len(kids) == 20 and {k.status for k in kids} == {"completed"}
        await assert_still_bounded(engine, 2)


async def test_unrelated_work_queued_behind_lent_children_runs_and_stays_bounded(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # While a child runs in a lent slot, unrelated instances queue: at most max_running of their
    # bodies ever run at once, and they all run.
    board = Board()
    solo_now = {"now": 0, "peak": 0}

    async def solo(ctx: tf.WorkflowContext) -> None:
        solo_now["now"] += 1
        solo_now["peak"] = max(solo_now["peak"], solo_now["now"])
        try:
            await trio.sleep(2)
        finally:
            solo_now["now"] -= 1

    async with engine_on(storage(), max_running=2) as engine:
        engine.job("all-done")(board.all_done)
        engine.register(kid(board))
        engine.register(polling_parent(5))
        engine.register(tf.workflow("other").step("s", solo).build())
        pids = [await engine.start("parent", {"n": 1}) for _ in range(2)]
        others = [await engine.start("other", None) for _ in range(6)]
        for iid in pids + others:
            end = await finish(engine, iid, limit=LIMIT)
            assert end.status == "completed", (iid, end.status, end.error)
        assert solo_now["peak"] <= 2
        assert len(board.done) == 2
        await assert_still_bounded(engine, 2)


# --- restart ------------------------------------------------------------------------------------


async def test_an_engine_closed_while_a_lent_child_runs_and_the_next_one_finishes(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    board = Board()

    def setup(engine: tf.Engine) -> None:
        engine.job("all-done")(board.all_done)
        engine.register(kid(board))
        engine.register(polling_parent(10))

    async with engine_on(storage(), max_running=1) as engine:
        setup(engine)
        pid = await engine.start("parent", {"n": 1})
        await until(lambda: bool(board.started))
        await trio.sleep(2)  # the lent child's body is mid-run
        [cid] = await kid_ids(engine)
    assert board.done == []
    async with engine_on(storage(), max_running=1) as engine:
        setup(engine)
        parent_end = await finish(engine, pid, limit=LIMIT)
        child_end = await finish(engine, cid, limit=LIMIT)
        assert parent_end.status == "completed", (parent_end.status, parent_end.error)
        assert child_end.status == "completed", (child_end.status, child_end.error)
        assert board.done == [cid]  # ran to its end once (the first body was cut off by the close)
        assert board.started == [cid, cid]
        await assert_still_bounded(engine, 1)
