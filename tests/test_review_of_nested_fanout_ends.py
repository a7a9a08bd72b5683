"""Adversarial review of 57a39bd/b6bcda0: a parent parked (or queued for a ``max_running``
slot) on children started inside nested parallel/map steps must run at once, in its children's
slots, when the ends of those children make a fail-fast parallel or map step fail (followed
outward through wait-all fan-outs), and only then.

Every scenario runs the parent with ``max_running`` equal to the number of children it starts
at first, and queues long hogs behind them: a parent that is not run at once waits behind a
hog. The tests check what a user relies on: the fail-fast step's other children are cancelled
soon after the failure, the parent ends with the right status, and, when nothing fails fast,
no more instances run at once than ``max_running`` (a parent run "at once" takes no slot).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from storages import finish, storage  # noqa: F401  (storage: a fixture on both adapters)
from trioflow.adapters import Adapter
from trioflow.testing import open_test_engine, virtual_wall_clock

LONG = 5000.0  # a child that a fail-fast must cancel long before it ends
FOREVER = 100_000.0  # a hog that never ends within a test


class Declined(Exception):
    pass


class Jobs:
    """The kids' job: input ``[tag, seconds, fail]``; records how and when each tag ended."""

    def __init__(self) -> None:
        self.ended: dict[str, tuple[float, str]] = {}

    async def work(self, ctx: Any) -> Any:
        tag, seconds, fail = ctx.input
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            self.ended[tag] = (trio.current_time(), "cancelled")
            raise
        self.ended[tag] = (trio.current_time(), "failed" if fail else "done")
        if fail:
            raise Declined(f"{tag} declined")
        return tag


async def hog_job(ctx: Any) -> None:
    await trio.sleep(ctx.input)


async def quick(ctx: Any) -> str:
    return "quick"


class Watch:
    """Spies on an engine: every time it decides a run must cancel its children at once (an
    urgent run, taking no slot), and how many instance actors run at once."""

    def __init__(self, engine: tf.Engine) -> None:
        self.urgent: list[tuple[float, str]] = []
        self.active = 0
        self.most = 0
        self.most_at = 0.0
        self.counted: set[int] = set()
        e: Any = engine
        must = e._must_cancel_children
        actor = e._instance_actor

        def spied_must(state: Any, definition: Any, signals: Any) -> bool:
            answer = must(state, definition, signals)
            if answer:
                self.urgent.append((trio.current_time(), state.instance_id))
            return answer

        unhold = e._unhold

        def count_in(run: Any) -> None:
            self.counted.add(id(run))
            self.active += 1
            if self.active > self.most:
                self.most, self.most_at = self.active, trio.current_time()

        def spied_unhold(run: Any) -> bool:
            took = unhold(run)
            if took:  # (a run taken up ahead of its time holds no slot while it sleeps)
                count_in(run)
            return took

        async def spied_actor(run: Any) -> None:
            if run.hold is None:
                count_in(run)
            try:
                await actor(run)
            finally:
                if id(run) in self.counted:
                    self.counted.discard(id(run))
                    self.active -= 1

        e._unhold = spied_unhold
        e._must_cancel_children = spied_must
        e._instance_actor = spied_actor


def kid_and_hog(jobs: Jobs) -> list[tf.WorkflowDefinition]:
    return [tf.workflow("hog").step("h", hog_job).build(), tf.workflow("kid").step("w", jobs.work).build()]


async def run_scenario(
    adapter: Adapter, parent: tf.WorkflowDefinition, jobs: Jobs, *, max_running: int, hogs: int,
    hog_seconds: float = FOREVER, input: Any = None,
) -> tuple[tf.WorkflowInstance, float, Watch]:
    """Start ``parent``; at t=2 (every first child running, the parent parked) queue ``hogs``
    hogs; wait for the parent's end: ``(instance, when, watch)``."""
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock(), max_running=max_running) as eng:
        watch = Watch(eng)
        for wf in (*kid_and_hog(jobs), parent):
            eng.register(wf)
        iid = await eng.start(parent.name, input)
        await trio.sleep(2)
        for _ in range(hogs):
            await eng.start("hog", hog_seconds)
        done = await finish(eng, iid)
        return done, trio.current_time(), watch


def child(name: str, spec: list[Any], **kw: Any) -> tf.BranchBuilder:
    return tf.branch(f"b-{name}").child(name, workflow="kid", input=lambda ctx: spec, **kw)


def kid_map(name: str, items: list[list[Any]], **kw: Any) -> Any:
    """A map of one child step per item (the item is the child's input)."""
    return dict(name=name, items=lambda ctx: items, branch=tf.branch(f"{name}-item").child(f"{name}-c", workflow="kid").build(),
                **kw)


def assert_cancelled_soon(jobs: Jobs, tags: list[str], by: float) -> None:
    for tag in tags:
        assert tag in jobs.ended, f"{tag} never ended: {jobs.ended}"
        at, how = jobs.ended[tag]
        assert how == "cancelled" and at < by, f"{tag} ended {how} at {at}, not cancelled by {by}"


# -- 1. shapes that must make the parent run at once ------------------------------------------

async def test_wait_all_map_in_fail_fast_parallel(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    """A's wait-all map fails once its last child completes (t=20): the fail-fast parallel must
    cancel B's child then, not once a hog frees a slot."""
    jobs = Jobs()
    a = tf.branch("A").map(**kid_map("m", [["m0", 10, True], ["m1", 20, False]], on_error="wait-all")).build()
    parent = tf.workflow("p").parallel("par", branches=[a, child("B", ["B", LONG, False]).build()]).build()
    done, ended, watch = await run_scenario(storage(), parent, jobs, max_running=3, hogs=4)
    assert done.status == "failed"
    assert ended < 40, ended
    assert_cancelled_soon(jobs, ["B"], by=40)


async def test_simultaneous_ends_failing_a_nested_wait_all_map(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    """Both children of the wait-all map end at the same instant (one failed): two notices wake
    the parked parent at once; together they fail the map, so the fail-fast parallel."""
    jobs = Jobs()
    a = tf.branch("A").map(**kid_map("m", [["m0", 20, True], ["m1", 20, False]], on_error="wait-all")).build()
    parent = tf.workflow("p").parallel("par", branches=[a, child("B", ["B", LONG, False]).build()]).build()
    done, ended, watch = await run_scenario(storage(), parent, jobs, max_running=3, hogs=4)
    assert done.status == "failed"
    assert ended < 40, (ended, watch.urgent)
    assert_cancelled_soon(jobs, ["B"], by=40)


def _parallel_items(last_fails: bool) -> list[dict[str, Any]]:
    """Three items of x/y children: item 0 fails at t=20 (y), item 1 at t=40 (y) or completes
    (``last_fails`` false), item 2 runs long."""
    return [
        {"x": ["0x", 10, False], "y": ["0y", 20, True]},
        {"x": ["1x", 30, False], "y": ["1y", 40, last_fails]},
        {"x": ["2x", LONG, False], "y": ["2y", LONG, False]},
    ]


def _map_of_wait_all_parallels(tolerated: int | float, items: list[dict[str, Any]], **kw: Any) -> tf.WorkflowDefinition:
    inner = (tf.branch("item").parallel("p", on_error="wait-all", branches=[
        tf.branch("x").child("cx", workflow="kid", input=lambda ctx: ctx.item["x"]).build(),
        tf.branch("y").child("cy", workflow="kid", input=lambda ctx: ctx.item["y"]).build()]).build())
    return (tf.workflow("p").map("m", items=lambda ctx: items, branch=inner, on_error="fail-fast",
                                 tolerated_failures=tolerated, **kw).build())


@pytest.mark.parametrize("tolerated", [1, 0.34, 0.5])
async def test_wait_all_parallel_in_fail_fast_map_over_its_tolerance(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], tolerated: Any) -> None:  # noqa: F811
    """Each item is a wait-all parallel of two children. Item 0 fails at t=20 (tolerated: the
    parent waits for a slot), item 1 at t=40: one failure more than tolerated: the map fails
    fast and item 2's children must be cancelled then."""
    jobs = Jobs()
    parent = _map_of_wait_all_parallels(tolerated, _parallel_items(True))
    done, ended, watch = await run_scenario(storage(), parent, jobs, max_running=6, hogs=7)
    assert done.status == "failed"
    assert ended < 60, (ended, watch.urgent)
    assert_cancelled_soon(jobs, ["2x", "2y"], by=60)
    assert all(at >= 40 for at, _ in watch.urgent), watch.urgent


@pytest.mark.parametrize("tolerated", [2, 0.67, 1.0])
async def test_wait_all_parallel_in_fail_fast_map_within_its_tolerance_takes_slots(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], tolerated: Any) -> None:  # noqa: F811
    """As above, but both failures are tolerated: nothing fails fast, so the parent never runs
    at once and ``max_running`` holds throughout; it completes once the hogs let it."""
    jobs = Jobs()
    items = _parallel_items(True)
    items[2] = {"x": ["2x", 60, False], "y": ["2y", 70, False]}
    parent = _map_of_wait_all_parallels(tolerated, items)
    done, ended, watch = await run_scenario(storage(), parent, jobs, max_running=6, hogs=7, hog_seconds=1000)
    assert done.status == "completed", done.error
    assert watch.urgent == []
    assert watch.most <= 6, (watch.most, watch.most_at)


async def test_fail_fast_map_in_wait_all_parallel_in_fail_fast_parallel(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    """The innermost fail-fast map F must cancel its long item when its other item fails (t=20),
    though the parallel around it waits for all; that wait-all fails when W2 completes (t=50),
    and the outer fail-fast parallel must cancel Y's child then."""
    jobs = Jobs()
    w1 = tf.branch("W1").map(**kid_map("f", [["f0", 10, False], ["f1", 20, True], ["f2", LONG, False]])).build()
    w2 = child("W2", ["W2", 50, False]).build()
    x = tf.branch("X").parallel("w", on_error="wait-all", branches=[w1, w2]).build()
    parent = tf.workflow("p").parallel("outer", branches=[x, child("Y", ["Y", LONG, False]).build()]).build()
    done, ended, watch = await run_scenario(storage(), parent, jobs, max_running=5, hogs=6)
    assert done.status == "failed"
    assert_cancelled_soon(jobs, ["f2"], by=40)
    assert jobs.ended["W2"][1] == "done"
    assert_cancelled_soon(jobs, ["Y"], by=70)
    assert ended < 70, ended


@pytest.mark.parametrize("tolerated", [0, 1])
async def test_wait_all_map_in_items_of_a_fail_fast_map(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], tolerated: int) -> None:  # noqa: F811
    """Maps in map items (lanes ``o/#0/i/#1``): outer item 0's wait-all inner map fails when its
    last child completes (t=20). Tolerating nothing, the outer fail-fast map must cancel item
    1's children then; tolerating one, nothing is urgent and ``max_running`` holds."""
    jobs = Jobs()
    second = 60 if tolerated else LONG
    items = [{"inner": [["00", 10, True], ["01", 20, False]]}, {"inner": [["10", second, False], ["11", second, False]]}]
    inner = tf.branch("o-item").map("i", items=lambda ctx: ctx.item["inner"], on_error="wait-all",
                                    branch=tf.branch("i-item").child("c", workflow="kid").build()).build()
    parent = tf.workflow("p").map("o", items=lambda ctx: items, branch=inner, tolerated_failures=tolerated).build()
    done, ended, watch = await run_scenario(storage(), parent, jobs, max_running=4, hogs=5,
                                            hog_seconds=1000 if tolerated else FOREVER)
    if tolerated:
        assert done.status == "completed", done.error
        assert watch.urgent == []
        assert watch.most <= 4, (watch.most, watch.most_at)
    else:
        assert done.status == "failed"
        assert ended < 40, ended
        assert_cancelled_soon(jobs, ["10", "11"], by=40)


async def test_wait_all_parallel_in_fail_fast_map_item_failing_on_a_completion_after_a_map(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    """Three levels: fail-fast map o; its item is a wait-all parallel whose branch x holds a
    wait-all map of children (one fails at t=10), branch y one child (completes at t=30). At
    t=20 the inner map fails (its last child completes), x fails, but the parallel waits for
    y; y's completion at t=30 fails the parallel, the item and the fail-fast map: item 1's
    children must be cancelled then."""
    jobs = Jobs()
    items = [{"x": [["0a", 10, True], ["0b", 20, False]], "y": ["0y", 30, False]},
             {"x": [["1a", LONG, False]], "y": ["1y", LONG, False]}]
    inner = tf.branch("o-item").parallel("p", on_error="wait-all", branches=[
        tf.branch("x").map("i", items=lambda ctx: ctx.item["x"], on_error="wait-all",
                           branch=tf.branch("i-item").child("c", workflow="kid").build()).build(),
        tf.branch("y").child("cy", workflow="kid", input=lambda ctx: ctx.item["y"]).build()]).build()
    parent = tf.workflow("p").map("o", items=lambda ctx: items, branch=inner).build()
    done, ended, watch = await run_scenario(storage(), parent, jobs, max_running=5, hogs=6)
    assert done.status == "failed"
    assert ended < 50, (ended, watch.urgent)
    assert_cancelled_soon(jobs, ["1a", "1y"], by=50)


# -- 2. shapes where nothing is urgent (yet) ---------------------------------------------------

async def test_map_with_items_not_started_is_not_over(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    """A wait-all map of three children, two at a time, in a fail-fast parallel: when the second
    child completes (t=20) the third has not started, so the map is not over and nothing is
    urgent: the parent waits behind the hogs (1000 s) for a slot to start it. Only the third
    child's completion fails the map: then B's child must be cancelled at once."""
    jobs = Jobs()
    a = tf.branch("A").map(**kid_map("m", [["m0", 10, True], ["m1", 20, False], ["m2", 30, False]],
                                     on_error="wait-all", max_concurrency=2)).build()
    parent = tf.workflow("p").parallel("par", branches=[a, child("B", ["B", LONG, False]).build()]).build()
    done, ended, watch = await run_scenario(storage(), parent, jobs, max_running=3, hogs=4, hog_seconds=1000)
    assert done.status == "failed"
    m2_at, m2_how = jobs.ended["m2"]
    assert m2_how == "done"
    assert watch.urgent and all(at >= m2_at for at, _ in watch.urgent), (watch.urgent, m2_at)
    assert_cancelled_soon(jobs, ["B"], by=m2_at + 20)


async def test_a_completion_followed_by_a_step_does_not_end_the_lane(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    """The map's branch runs a step after its child: the second child's completion (t=20) does
    not end its item, so nothing is urgent; the parent runs that step once a slot is free,
    then fails the map and the parallel, cancelling B's child."""
    jobs = Jobs()
    branch = tf.branch("item").child("c", workflow="kid").step("after", quick).build()
    a = tf.branch("A").map("m", items=lambda ctx: [["m0", 10, True], ["m1", 20, False]], on_error="wait-all",
                           branch=branch).build()
    parent = tf.workflow("p").parallel("par", branches=[a, child("B", ["B", LONG, False]).build()]).build()
    done, ended, watch = await run_scenario(storage(), parent, jobs, max_running=3, hogs=4, hog_seconds=1000)
    assert done.status == "failed"
    assert watch.urgent == []
    assert watch.most <= 3, (watch.most, watch.most_at)
    assert_cancelled_soon(jobs, ["B"], by=LONG)


async def test_catch_on_the_child_step_makes_nothing_urgent(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    jobs = Jobs()
    a = (tf.branch("A").child("c", workflow="kid", input=lambda ctx: ["A", 10, True],
                              catch=[tf.Catch(errors=["Declined"], next="handled")])
         .succeed("fine").step("handled", quick).build())
    parent = tf.workflow("p").parallel("par", branches=[a, child("B", ["B", 1500, False]).build()]).build()
    done, ended, watch = await run_scenario(storage(), parent, jobs, max_running=2, hogs=3, hog_seconds=1000)
    assert done.status == "completed", done.error
    assert watch.urgent == []
    assert watch.most <= 2, (watch.most, watch.most_at)


@pytest.mark.parametrize("kind", ["map", "parallel"])
async def test_catch_on_the_inner_fanout_makes_nothing_urgent(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], kind: str) -> None:  # noqa: F811
    """The wait-all fan-out in branch A fails (on a completion, t=20) but has a catch: branch A
    goes on, the fail-fast parallel does not fail, so the parent waits for a slot."""
    jobs = Jobs()
    catch = [tf.Catch(errors=[tf.ALL], next="handled")]
    if kind == "map":
        a = tf.branch("A").map(**kid_map("m", [["m0", 10, True], ["m1", 20, False]], on_error="wait-all",
                                         catch=catch))
    else:
        a = tf.branch("A").parallel("q", on_error="wait-all", catch=catch, branches=[
            child("q0", ["q0", 10, True]).build(), child("q1", ["q1", 20, False]).build()])
    a = a.succeed("fine").step("handled", quick).build()
    parent = tf.workflow("p").parallel("par", branches=[a, child("B", ["B", 1500, False]).build()]).build()
    done, ended, watch = await run_scenario(storage(), parent, jobs, max_running=3, hogs=4, hog_seconds=1000)
    assert done.status == "completed", done.error
    assert watch.urgent == []
    assert watch.most <= 3, (watch.most, watch.most_at)


async def test_nested_wait_all_that_completes_makes_nothing_urgent(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    """Nested fan-outs where every child completes: each completion is looked at (nested
    fan-outs), none may make the parent run past ``max_running``."""
    jobs = Jobs()
    a = tf.branch("A").map(**kid_map("m", [["m0", 10, False], ["m1", 20, False]], on_error="wait-all")).build()
    parent = tf.workflow("p").parallel("par", branches=[a, child("B", ["B", 30, False]).build()]).build()
    done, ended, watch = await run_scenario(storage(), parent, jobs, max_running=3, hogs=4, hog_seconds=1000)
    assert done.status == "completed", done.error
    assert watch.urgent == []
    assert watch.most <= 3, (watch.most, watch.most_at)


# -- 3. a lane that ends through a succeed step -------------------------------------------------

async def test_a_completion_followed_by_succeed_ends_the_lane(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    """The map's branch is a child then a succeed step: the child's completion ends the item as
    surely as at the branch's last step. The wait-all map then fails, and so the fail-fast
    parallel around it: B's child must be cancelled at once."""
    jobs = Jobs()
    branch = tf.branch("item").child("c", workflow="kid").succeed("ok").build()
    a = tf.branch("A").map("m", items=lambda ctx: [["m0", 10, True], ["m1", 20, False]], on_error="wait-all",
                           branch=branch).build()
    parent = tf.workflow("p").parallel("par", branches=[a, child("B", ["B", LONG, False]).build()]).build()
    done, ended, watch = await run_scenario(storage(), parent, jobs, max_running=3, hogs=4)
    assert done.status == "failed"
    assert ended < 40, (ended, watch.urgent)
    assert_cancelled_soon(jobs, ["B"], by=40)


async def test_a_completion_followed_by_a_fail_step_fails_the_fail_fast_parallel(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    """Branch A is a child then a fail step: the child's completion (t=20) fails A, so the
    fail-fast parallel, with no fan-out nested in another. The parent, queued behind the hogs
    for a slot once the child's end wakes it, must run at once and cancel B's child."""
    jobs = Jobs()
    a = tf.branch("A").child("a", workflow="kid", input=lambda ctx: ["A", 20, False]).fail(
        "no", error="Refused").build()
    parent = tf.workflow("p").parallel("par", branches=[a, child("B", ["B", LONG, False]).build()]).build()
    done, ended, watch = await run_scenario(storage(), parent, jobs, max_running=2, hogs=4)
    assert done.status == "failed" and done.error_name == "Refused", (done.status, done.error_name)
    assert ended < 40, (ended, watch.urgent)
    assert_cancelled_soon(jobs, ["B"], by=40)


async def test_a_nested_map_completing_into_a_fail_step_fails_the_fail_fast_parallel(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:  # noqa: F811
    """Branch A is a wait-all map of two children (both complete, the last at t=20) then a fail
    step: the map's end fails A, so the fail-fast parallel; B's child must be cancelled then.
    (What follows a fan-out that ends is read as what follows a child step that ends.)"""
    jobs = Jobs()
    a = tf.branch("A").map(**kid_map("m", [["m0", 10, False], ["m1", 20, False]], on_error="wait-all")).fail(
        "no", error="Refused").build()
    parent = tf.workflow("p").parallel("par", branches=[a, child("B", ["B", LONG, False]).build()]).build()
    done, ended, watch = await run_scenario(storage(), parent, jobs, max_running=3, hogs=4)
    assert done.status == "failed" and done.error_name == "Refused", (done.status, done.error_name)
    assert ended < 40, (ended, watch.urgent)
    assert_cancelled_soon(jobs, ["B"], by=40)


# -- 4. restart: the take-up path decides the same ----------------------------------------------

from trioflow._children import EngineChildren  # noqa: E402


class _Mute(EngineChildren):
    """The engine's children, telling no parent of a child's end (stored all the same): as an
    engine that died right after storing them."""

    __slots__ = ()

    def deliver_notice(self, *args: Any) -> bool:
        return True

    def ended_soon(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("fails", [True, False])
@pytest.mark.parametrize("shape", ["nested", "direct"])
async def test_restart_with_the_failing_end_pending(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], fails: bool,  # noqa: F811
        shape: str) -> None:
    """Engine 1 stops telling parents of their children's ends at t=15 (as if it died right
    after storing them), and closes at t=25: the parent is stored parked with m1's end notice
    pending (a completion that fails the wait-all map, or, ``fails`` false, one that does not).
    Engine 2 resumes the hogs first (the parent's workflow registered a second later): the
    parent must run at once only if the notice fails the fail-fast parallel. (``direct``: branch
    A is one child, whose failure at t=20, or completion, is the notice pending: the shape
    looked at before the change.)"""
    jobs = Jobs()
    first = ["m0", 10, True] if fails else ["m0", 10, False]
    if shape == "nested":
        a = tf.branch("A").map(**kid_map("m", [first, ["m1", 20, False]], on_error="wait-all")).build()
    else:
        a = child("A", ["m1", 20, fails]).build()
    parent = tf.workflow("p").parallel("par", branches=[
        a, child("B", ["B", LONG if fails else 1500, False]).build()]).build()
    clock = virtual_wall_clock()
    adapter_of = storage
    async with open_test_engine(adapter=adapter_of(), clock=clock, max_running=3) as eng:
        for wf in (*kid_and_hog(jobs), parent):
            eng.register(wf)
        iid = await eng.start("p")
        await trio.sleep(2)
        for _ in range(4):
            await eng.start("hog", 1000.0)
        await trio.sleep(13)
        e: Any = eng
        e._children.__class__ = _Mute  # (the ends are stored; no parent hears of them)
        await trio.sleep(10)
        stored = await eng.adapter.load(iid)
        assert stored is not None and stored.status == "running"
        assert any(("m/#1" if shape == "nested" else "/par/b-A/") in name for _, name, _ in stored.signals), \
            stored.signals
    async with open_test_engine(adapter=adapter_of(), clock=clock, max_running=3) as eng:
        watch = Watch(eng)
        for wf in kid_and_hog(jobs):
            eng.register(wf)
        await trio.sleep(1)  # the hogs resumed first take the slots (and B's child queues)
        restarted = trio.current_time()
        eng.register(parent)
        done = await finish(eng, iid)
        ended = trio.current_time()
    if fails:
        assert done.status == "failed"
        assert ended - restarted < 20, (ended, restarted, watch.urgent)
        assert_cancelled_soon(jobs, ["B"], by=restarted + 20)
    else:
        assert done.status == "completed", done.error
        assert watch.urgent == []
        assert watch.most <= 3, (watch.most, watch.most_at)
