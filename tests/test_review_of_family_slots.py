"""Adversarial review of family slots (a parent that must cancel its children runs in their
slots), slot-pressure rest (``settle`` at once while instances queue) and
``compensation_errors_by_execution`` (December 4th, sixth session). Eight failed before the
fixes they found: a caught child failure ran its parent outside ``max_running``, a fail-fast
failure behind a hanging grandchild was lost, and a completed child's undo overlapped a
cancelled sibling still stopping in the only slot.

On trio's MockClock (autojump), on the MemoryAdapter and SQLite (``storage`` fixture) where it
matters; every wait is bounded (``finish``'s ``trio.fail_after``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import Adapter, SQLiteAdapter

from storages import engine_on, finish, storage  # noqa: F401  (a fixture)


class Declined(Exception):
    pass


class Gauge:
    """How many job bodies run at once (the only honest measure of ``max_running``)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[str, float]] = []

    def job(self, name: str, seconds: float = 0.0, fail: bool = False, result: Any = None) -> Any:
        async def body(ctx: tf.WorkflowContext) -> Any:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.calls[name] += 1
            self.log.append((name, trio.current_time()))
            try:
                if seconds == float("inf"):
                    await trio.sleep_forever()
                await trio.sleep(seconds)
                if fail:
                    raise Declined(name)
                return name if result is None else result
            finally:
                self.now -= 1
                self.log.append(("end:" + name, trio.current_time()))
        return body

    def undo(self, name: str, seconds: float = 0.0, fail: bool = False) -> Any:
        async def comp(ctx: tf.WorkflowContext, result: Any) -> None:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.calls["undo:" + name] += 1
            self.log.append(("undo:" + name, trio.current_time()))
            try:
                await trio.sleep(seconds)
                if fail:
                    raise RuntimeError(f"cannot undo {name}")
            finally:
                self.now -= 1
                self.log.append(("end-undo:" + name, trio.current_time()))
        return comp


def one(name: str, job: Any, undo: Any = None) -> tf.WorkflowDefinition:
    return tf.workflow(name).step("s", job, undo).build()


# -- 1. max_running keeps bounding a parent that has nothing to cancel -------------------------


@pytest.mark.parametrize("shape", ["parallel", "map-wait-all"])
async def test_a_caught_child_failure_runs_the_catch_route_within_max_running(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], shape: str) -> None:
    # Failed before its fix: any badly-ended child made its parent "must cancel", even when a
    # catch inside the branch (or wait-all) routes it on: the parent ran its catch step without
    # a slot while a sibling child ran, 2 job bodies at max_running=1.
    g = Gauge()
    bad = one("bad", g.job("bad", 1, fail=True))
    slow = one("slow", g.job("slow", 20))
    catch = [tf.Catch(errors=[tf.ALL], next="fallback")]
    if shape == "parallel":
        parent = tf.workflow("p").parallel("par", branches=[
            tf.branch("a").child("ca", workflow="bad", catch=catch).succeed("ok")
            .step("fallback", g.job("fallback", 5)).build(),
            # (a moment later: the failing child is queued first, the slow one after it)
            tf.branch("b").wait("w", seconds=0.1).child("cb", workflow="slow").build(),
        ]).build()
    else:
        parent = tf.workflow("p").map(
            "m", items=lambda ctx: [0, 1], on_error="wait-all",
            branch=tf.branch("i").wait("w", seconds=lambda ctx: 0.01 + 0.1 * ctx.item)
            .child("c", workflow="either", catch=catch).succeed("ok")
            .step("fallback", g.job("fallback", 5)).build(),
        ).build()

        async def either(ctx: tf.WorkflowContext) -> Any:
            return await (g.job("bad", 1, fail=True) if ctx.input == 0 else g.job("slow", 20))(ctx)
        bad = one("either", either)
    async with engine_on(storage(), max_running=1) as engine:
        for wf in (bad, slow, parent):
            engine.register(wf)
        done = await finish(engine, await engine.start("p"), limit=600)
    assert done.status == "completed", (done.status, done.error)
    assert g.calls["fallback"] == 1
    assert g.peak <= 1, f"{g.peak} job bodies ran at once at max_running=1: {g.log}"


# -- 2. a queued parent leaves the queue at its deadline, whatever its family ------------------


@pytest.mark.parametrize("max_running", [1, 2])
async def test_a_parent_whose_grandchildren_hang_in_every_slot_still_times_out(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], max_running: int) -> None:
    """The children it waits on are parked on grandchildren that hang in every slot: the
    parent's workflow timeout still ends it at its deadline (fanout.md: "Queued for a slot when
    its workflow timeout comes, it leaves the queue then")."""
    g = Gauge()
    quick = one("quick", g.job("quick", 1))
    grand = one("grand", g.job("grand", float("inf")))
    mid = tf.workflow("mid").child("g", workflow="grand").build()
    parent = tf.workflow("p").parallel("par", branches=[
        tf.branch("a").child("c0", workflow="quick").build(),
        *[tf.branch(f"b{i}").child(f"c{i + 1}", workflow="mid").build() for i in range(max_running)],
    ]).with_timeout(50).build()
    async with engine_on(storage(), max_running=max_running) as engine:
        for wf in (quick, grand, mid, parent):
            engine.register(wf)
        start = trio.current_time()
        iid = await engine.start("p")
        try:
            done = await finish(engine, iid, limit=300)
        except trio.TooSlowError:
            stuck = await engine.get_instance(iid)
            pytest.fail(f"parent still {stuck.status} at {trio.current_time() - start:.0f} s (timeout 50 s); "
                        f"queued: {[r.state.instance_id for r in engine._waiting]}")
        took = trio.current_time() - start
        kids = [await finish(engine, c, limit=300) for c in done.children]
    assert done.status == "timed_out" and took < 60, (done.status, took)
    assert all(k.status in ("cancelled", "compensated") for k in kids), [(k.id, k.status) for k in kids]


async def test_a_three_level_fail_fast_failure_behind_a_hanging_grandchild_cancels_the_family(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # Failed before its fix: the fail-fast failure was lost. The parent, woken by it while its
    # other child was parked (not live here), queued behind the hanging grandchild for ever (it
    # ran at once only when a child it waited on was live here).
    """max_running=1: branch a's child waits (parked) on a grandchild that hangs in the only
    slot; branch b's child fails. The fail-fast parallel step must cancel branch a's child
    (and it its grandchild), and the parent fail."""
    g = Gauge()
    grand = one("grand", g.job("grand", float("inf")))
    mid = tf.workflow("mid").child("g", workflow="grand").build()
    bad = one("bad", g.job("bad", 5, fail=True))
    parent = tf.workflow("p").parallel("par", branches=[
        tf.branch("a").child("ca", workflow="mid").build(),
        tf.branch("b").wait("w", seconds=0.1).child("cb", workflow="bad").build(),
    ]).build()
    async with engine_on(storage(), max_running=1) as engine:
        for wf in (grand, mid, bad, parent):
            engine.register(wf)
        iid = await engine.start("p")
        try:
            done = await finish(engine, iid, limit=300)
        except trio.TooSlowError:
            stuck = await engine.get_instance(iid)
            pytest.fail(f"parent still {stuck.status} after 300 s; queued: "
                        f"{[r.state.instance_id for r in engine._waiting]}; log {g.log}")
        kids = {c: (await finish(engine, c, limit=300)).status for c in done.children}
        grands = {}
        for c in done.children:
            for gc in (await engine.get_instance(c)).children:
                grands[gc] = (await finish(engine, gc, limit=300)).status
    assert done.status == "failed", (done.status, done.error)
    assert sorted(kids.values()) == ["cancelled", "failed"], kids
    assert list(grands.values()) == ["cancelled"], grands
    assert g.calls["grand"] == 1 and g.calls["bad"] >= 1


@pytest.mark.parametrize("max_running", [1, 2])
async def test_a_timed_out_parent_undoes_its_steps_within_max_running_and_each_once(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], max_running: int) -> None:
    """The parent times out queued behind a child that hangs; unrelated instances queue too.
    Its compensation runs once, its children start once, and no more job bodies (compensations
    included) run at once than max_running, before, during and after the family's cancel."""
    g = Gauge()
    quick = one("quick", g.job("quick", 1), g.undo("quick"))
    hang = one("hang", g.job("hang", float("inf")), g.undo("hang"))
    other = one("other", g.job("other", 3))
    parent = (tf.workflow("p").step("hold", g.job("hold", 0.5), g.undo("hold", 2))
              .parallel("par", branches=[
                  tf.branch("a").child("ca", workflow="quick").build(),
                  *[tf.branch(f"b{i}").wait(f"w{i}", seconds=0.1).child(f"cb{i}", workflow="hang").build()
                    for i in range(max_running)],
              ]).with_timeout(30).build())
    async with engine_on(storage(), max_running=max_running) as engine:
        for wf in (quick, hang, other, parent):
            engine.register(wf)
        iid = await engine.start("p")
        await trio.sleep(10)
        others = [await engine.start("other") for _ in range(3)]
        done = await finish(engine, iid, limit=300)
        kids = [await finish(engine, c, limit=300) for c in done.children]
        rest = [await finish(engine, o, limit=300) for o in others]
    assert done.status == "timed_out", (done.status, done.error)
    assert "hold" in done.compensated_steps, done.compensated_steps
    assert g.calls["undo:hold"] == 1 and g.calls["undo:quick"] == 1 and g.calls["hold"] == 1
    assert g.calls["quick"] == 1 and g.calls["hang"] == max_running
    assert sorted(k.status for k in kids) == ["cancelled"] * max_running + ["compensated"]
    assert all(r.status == "completed" for r in rest)
    # (The parent's own undo runs once the children it cancelled ended: see the next test for
    # the undo of a completed child, which does not wait.)
    hold_undo = next(t for n, t in g.log if n == "undo:hold")
    assert all(t <= hold_undo for n, t in g.log if n == "end:hang")


async def test_undoing_a_completed_child_waits_for_the_slot_its_cancelled_sibling_holds(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # Failed before its fix: a parent taken out of the queue at its deadline takes no slot, yet
    # undid its completed child (end not taken yet) at once while the sibling it cancels still
    # stopped in the only slot: 2 compensation/job bodies at max_running=1 for as long as the
    # undo took. Children that completed all the same are now undone once every cancelled one
    # has ended.
    g = Gauge()
    quick = one("quick", g.job("quick", 1), g.undo("quick", 5))
    parent = tf.workflow("p").parallel("par", branches=[
        tf.branch("a").child("ca", workflow="quick").build(),
        tf.branch("b").wait("w", seconds=0.1).child("cb", workflow="hang").build(),
    ]).with_timeout(30).build()

    async def slow_to_cancel(ctx: tf.WorkflowContext) -> None:
        g.now += 1
        g.peak = max(g.peak, g.now)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(3)  # (a job that takes a while to stop: cleanup)
            g.now -= 1
    hang = one("hang", slow_to_cancel)
    async with engine_on(storage(), max_running=1) as engine:
        for wf in (quick, hang, parent):
            engine.register(wf)
        done = await finish(engine, await engine.start("p"), limit=300)
    assert done.status == "timed_out"
    assert g.peak <= 1, f"{g.peak} bodies at once at max_running=1: {g.log}"


# -- the watcher across close and restart ------------------------------------------------------


async def test_an_engine_with_a_watched_queued_parent_closes_and_the_next_times_it_out(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A parent queued behind a hanging child (its deadline watched) when the engine closes:
    the close is prompt (the watcher task ends), and the next engine on the same SQLite file
    times it out at its deadline, with each child started once."""
    g = Gauge()
    quick = one("quick", g.job("quick", 1))
    hang = one("hang", g.job("hang", float("inf")))
    parent = tf.workflow("p").parallel("par", branches=[
        tf.branch("a").child("ca", workflow="quick").build(),
        tf.branch("b").wait("w", seconds=0.1).child("cb", workflow="hang").build(),
    ]).with_timeout(40).build()
    path = tmp_path / "flows.db"
    with trio.fail_after(60):
        async with engine_on(SQLiteAdapter(path), max_running=1) as engine:
            for wf in (quick, hang, parent):
                engine.register(wf)
            iid = await engine.start("p")
            await trio.sleep(10)
            assert engine._queued_deadlines_changed is not None or iid not in engine._live
    assert g.calls["hang"] == 1
    start = trio.current_time()
    async with engine_on(SQLiteAdapter(path), max_running=1) as engine:
        for wf in (quick, hang, parent):
            engine.register(wf)
        done = await finish(engine, iid, limit=300)
        kids = sorted([(await finish(engine, c, limit=300)).status for c in done.children])
    assert done.status == "timed_out" and trio.current_time() - start < 40, trio.current_time() - start
    assert kids in (["cancelled", "compensated"], ["cancelled", "completed"]), kids
    assert g.calls["quick"] == 1 and g.calls["hang"] == 2  # (the hang resumed once: it had no checkpoint)


# -- other badly-ended children, catch routes and signals ---------------------------------------


@pytest.mark.parametrize("how", ["cancelled", "timed_out", "failed"])
async def test_a_child_ending_badly_sends_a_queued_parent_down_its_catch_route_once(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], how: str) -> None:
    """max_running=1: branch a's child ends ``how`` while branch b's child hangs; the fail-fast
    parallel step's catch routes the parent to ``sorry`` after cancelling branch b: each step
    runs once, the parent completes, and the hanging child ends cancelled."""
    g = Gauge()
    if how == "timed_out":
        first = tf.workflow("first").step("s", g.job("first", 1000)).with_timeout(5).build()
    else:
        first = one("first", g.job("first", 5, fail=how == "failed"))
    hang = one("hang", g.job("hang", float("inf")))
    parent = (tf.workflow("p").step("pre", g.job("pre", 0.1), g.undo("pre"))
              .parallel("par", branches=[
                  tf.branch("a").child("ca", workflow="first").build(),
                  tf.branch("b").wait("w", seconds=0.1).child("cb", workflow="hang").build(),
              ], catch=[tf.Catch(errors=[tf.ALL], next="sorry")])
              .succeed("ok").step("sorry", g.job("sorry", 1)).build())
    async with engine_on(storage(), max_running=1) as engine:
        for wf in (first, hang, parent):
            engine.register(wf)
        iid = await engine.start("p")
        if how == "cancelled":
            await trio.sleep(2)
            kid = next(c for c in (await engine.get_instance(iid)).children if "/ca#" in c)
            assert await engine.cancel(kid)
        done = await finish(engine, iid, limit=300)
        kids = {c.split("/")[-1]: (await finish(engine, c, limit=300)).status for c in done.children}
    assert done.status == "completed", (done.status, done.error)
    assert kids == {"ca#1": how, "cb#1": "cancelled"}, kids
    assert g.calls["sorry"] == 1 and g.calls["pre"] == 1 and g.calls["undo:pre"] == 0
    assert g.calls["first"] == 1 and g.calls["hang"] <= 1
    assert g.peak <= 1 or how == "cancelled", g.log


async def test_a_signal_racing_a_failed_childs_notice_to_a_queued_parent_is_kept(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """The parent's branch a waits on a signal with a catch on its receive timeout; branch b's
    child fails while the signal arrives in the same instant. The parent fails fast, its
    compensation runs once, and the signal is neither lost as a crash nor taken twice."""
    g = Gauge()
    bad = one("bad", g.job("bad", 5, fail=True))
    hang = one("hang", g.job("hang", float("inf")))
    parent = (tf.workflow("p").step("pre", g.job("pre", 0.1), g.undo("pre"))
              .parallel("par", branches=[
                  tf.branch("a").receive("r", signal="go").build(),
                  tf.branch("b").wait("w", seconds=0.1).child("cb", workflow="bad").build(),
                  tf.branch("c").wait("w2", seconds=0.2).child("cc", workflow="hang").build(),
              ]).build())
    async with engine_on(storage(), max_running=1) as engine:
        for wf in (bad, hang, parent):
            engine.register(wf)
        iid = await engine.start("p")
        await trio.sleep(5.3)
        await engine.signal(iid, "go", {"x": 1})
        done = await finish(engine, iid, limit=300)
        kids = sorted([(await finish(engine, c, limit=300)).status for c in done.children])
    assert done.status == "failed" and done.error_name == "Declined", (done.status, done.error)
    assert kids == ["cancelled", "failed"], kids
    assert g.calls["undo:pre"] == 1 and g.calls["bad"] == 1 and g.calls["hang"] <= 1


# -- compensation_errors_by_execution ----------------------------------------------------------


async def test_compensation_errors_by_execution_of_parallel_branches_survive_a_sqlite_restart(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    g = Gauge()
    wf = (tf.workflow("w").parallel("par", branches=[
        tf.branch(f"b{i}").step(f"s{i}", g.job(f"s{i}", 0.1 * (i + 1)), g.undo(f"s{i}", fail=True)).build()
        for i in range(3)])
        .step("x", g.job("x", 0.1), g.undo("x", fail=True))
        .receive("r", signal="never", timeout=100)
        .build())
    path = tmp_path / "flows.db"
    async with engine_on(SQLiteAdapter(path)) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(10)
    async with engine_on(SQLiteAdapter(path)) as engine:
        engine.register(wf)
        done = await finish(engine, iid, limit=1000)
        again = await engine.get_instance(iid)
    assert done.status == "failed", done.status
    want = {f"par/b{i}/s{i}#1": f"RuntimeError: cannot undo s{i}" for i in range(3)}
    want["x#1"] = "RuntimeError: cannot undo x"
    assert done.compensation_errors_by_execution == want, done.compensation_errors_by_execution
    assert list(done.compensation_errors_by_execution) == list(want)  # in the order they ended
    assert again.compensation_errors_by_execution == want
    assert all(g.calls[f"undo:s{i}"] >= 1 for i in range(3))
