"""Review of 5a6d002 (the waker sleeps until the next other due row while every due row is on
its way), 9735094 / d6d4309 (a lane waiting for its child's end is a ``ChildWait``, written in
the header as a word rebuilt from the child step's start record; a checkpoint of several lanes
works out its wake time only while they all rest; ``settle`` loops when disturbed; the last
branch or item to end does not settle).

Everything runs on trio's MockClock. One test found a defect, fixed since; its docstring says
what it found (in the past tense: "what happens" there is what happened).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._codec import decode_stored
from trioflow._snapshot import ChildWait, child_wait
from trioflow.adapters import Adapter, MemoryAdapter
from trioflow.testing import explore_crashes

from storages import DueWatch, engine_on, finish, storage, watched  # noqa: F401  (a fixture)

HOUR = 3600.0


def in_memory(engine: tf.Engine, iid: str) -> bool:
    return iid in engine._live


async def header_lanes(adapter: Adapter, iid: str) -> dict[str, Any]:
    stored = await adapter.load(iid)
    assert stored is not None
    return msgpack.unpackb(stored.header, raw=False, strict_map_key=False)[8]  # type: ignore[no-any-return]


# -- 1. the waker while every due row is on its way (5a6d002) --------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_the_waker_does_not_spin_when_the_next_rows_own_wake_time_is_sooner_than_stored(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str,
) -> None:
    """Found a defect of 5a6d002 (fixed). ``Engine._until_next_other`` (runtime/_engine.py) works out
    how long to sleep from the next other row's wake time *as the registered definition
    computes it* (``wake_at(_decoded(stored), definition)``), while ``due()`` picks rows by the
    *stored* ``wake_at`` column. When the two differ the wrong way (the definition registered
    now has a shorter workflow timeout than the release that stored the row: docs/waiting.md
    says a row taken up "does not know the wake time its row holds (another release, with
    another workflow timeout, may have stored it)"), then once the computed time is past,
    ``_until_next_other`` returns ``max(0, ...) == 0`` at every look, the row is not due by its
    stored column, so ``_wake_due`` finds only the ones on their way again, and the waker loops
    with no sleep: ``due()``, ``due(inf)``, ``next_wake()``, forever, for as long as the woken
    instance waits for a slot (100 % CPU and a storage query storm in production; under the
    autojump clock virtual time stops, and the watch below sees thousands of ``due()`` calls
    in one virtual second). Before 5a6d002 the waker slept ``_look_again`` (50 ms) there.

    Reproduction: release 1 stores "slow" waiting on a 1-hour timer with no workflow timeout;
    release 2 registers "slow" with ``timeout=600``; with ``max_running=1`` held by a blocked
    job, an instance "early" due at 100 s is woken and queues for the slot: from 599.5 s on,
    the waker spins.
    Fix idea: clamp to the stored order, e.g. return ``WAKE_RETRY`` (or ``_look_again``) when
    the computed time is not in the future, or compare with the row's stored ``wake_at``."""
    watch = DueWatch(busy_at=400)
    make = watched(kind, tmp_path, watch)
    gate = trio.Event()

    async def hold(data: Any) -> None:
        await gate.wait()

    async def after(data: Any) -> str:
        return "ok"

    def slow(timeout: float | None) -> tf.WorkflowDefinition:
        b = tf.workflow("slow")
        if timeout is not None:
            b = b.with_timeout(timeout)
        return b.wait("w", seconds=HOUR).task("after", job=after).build()

    async with engine_on(make()) as engine:
        engine.register(slow(None))
        t0 = trio.current_time()
        sid = await engine.start("slow")
        await trio.sleep(5)
        assert not in_memory(engine, sid)
    async with engine_on(make(), max_running=1) as engine:
        engine.register(slow(600))
        engine.register(tf.workflow("early").wait("w", seconds=100).task("after", job=after).build())
        engine.register(tf.workflow("block").task("hold", job=hold).build())
        early = await engine.start("early")
        await trio.sleep(5)
        await engine.start("block")  # holds the one slot from here on
        await trio.sleep_until(t0 + 900)
        assert not watch.busy and watch.most_in_a_second() <= 40, \
            f"the waker spun: {watch.most_in_a_second()} due() calls in one virtual second"
        gate.set()
        assert (await finish(engine, early)).status == "completed"
        # ("slow" is taken up at its stored time, past the timeout registered now: late, as
        # docs/waiting.md allows for a row another release stored; not asserted here.)
        assert (await finish(engine, sid)).status in ("timed_out", "completed")


# -- 2. ChildWait words across restarts (9735094, d6d4309) -----------------------------------------


def _looping_parent() -> tuple[tf.WorkflowDefinition, tf.WorkflowDefinition]:
    """A parent whose child step is caught and run again (its lane gets a second start record
    and a second child); the child fails when its input says so."""
    def kid_job(data: Any) -> str:
        if data == "fail":
            raise ValueError("told to fail")
        return f"kid:{data}"

    kid = tf.workflow("kid").receive("r", signal="go").task("k", job=kid_job).build()
    parent = tf.workflow("parent").child(
        "c", workflow="kid", input=lambda ctx: "ok" if ctx.error is not None else "fail",
        catch=tf.Catch(errors=[ValueError, tf.ChildWorkflowError], next="c"),
    ).build()
    return parent, kid


async def test_a_child_step_run_again_by_a_catch_is_read_back_with_its_second_child(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """The lane has two start records for "c"; the word is rebuilt from ``records[begun]``,
    the second one, across restarts before and after the check-in (check = inf)."""
    parent, kid = _looping_parent()
    adapter = storage()
    async with engine_on(adapter) as engine:
        engine.register(parent)
        engine.register(kid)
        iid = await engine.start("parent")
        await trio.sleep(5)
        assert not in_memory(engine, iid)
        first = (await engine.get_instance(iid)).children
        assert len(first) == 1
        await engine.signal(first[0], "go", 1)
        await trio.sleep(5)  # the first child failed; the catch started a second one
        view = await engine.get_instance(iid)
        assert len(view.children) == 2 and not in_memory(engine, iid)
    second = [c for c in view.children if c != first[0]][0]
    adapter = storage()
    async with engine_on(adapter) as engine:
        lanes = await header_lanes(adapter, iid)
        assert lanes[""][3] == ChildWait.UNCHECKED
        stored = await adapter.load(iid)
        state = decode_stored(stored)
        starts = [r for r in state.records if r.step_name == "c" and r.status == "started"]
        assert len(starts) == 2
        assert state.lanes[""].waiting == child_wait(second, starts[1].started_at)
        engine.register(parent)
        engine.register(kid)
        await trio.sleep(30)  # the check-in: the second child is stored, says the word
        assert not in_memory(engine, iid)
    adapter = storage()
    async with engine_on(adapter) as engine:
        lanes = await header_lanes(adapter, iid)
        assert lanes[""][3] == ChildWait.STORED
        engine.register(parent)
        engine.register(kid)
        loads = 0
        load = adapter.load

        async def counted(i: str) -> Any:
            nonlocal loads
            loads += i == iid
            return await load(i)
        adapter.load = counted  # type: ignore[method-assign]
        await trio.sleep(HOUR)  # no check-in again, nor anything else
        assert not in_memory(engine, iid) and loads == 0
        await engine.signal(second, "go", 2)
        done = await finish(engine, iid)
    assert done.status == "completed" and done.output == "kid:ok"
    assert sorted(done.children) == sorted([first[0], second])


def _fanout_parent(max_concurrency: int | None) -> tuple[tf.WorkflowDefinition, tf.WorkflowDefinition]:
    kid = tf.workflow("kid").receive("r", signal="go").build()
    parent = tf.workflow("parent").parallel("p", branches=[
        tf.branch("A").child("ca", workflow="kid").build(),
        tf.branch("B").map("m", items=lambda ctx: [0, 1, 2, 3], max_concurrency=max_concurrency,
                           branch=tf.branch("it").child("ci", workflow="kid").build()).build(),
        tf.branch("C").receive("rc", signal="c").build(),
    ]).build()
    return parent, kid


@pytest.mark.parametrize("max_concurrency", [None, 2])
async def test_children_of_branches_and_map_items_each_end_once_across_restarts(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], max_concurrency: int | None,
) -> None:
    """Branch and map-item lanes waiting on children (words in the header), restarted before
    the check-in, after it, and between each child's end: every child's end reaches the lane
    that started it, once; the parent leaves memory after each."""
    parent, kid = _fanout_parent(max_concurrency)
    adapter = storage()
    async with engine_on(adapter) as engine:
        engine.register(parent)
        engine.register(kid)
        iid = await engine.start("parent")
        await trio.sleep(5)
        assert not in_memory(engine, iid)
    for k in range(8):
        adapter = storage()
        async with engine_on(adapter) as engine:
            lanes = await header_lanes(adapter, iid)
            words = [f[3] for key, f in lanes.items() if key and len(f) > 3 and type(f[3]) is int]
            assert set(words) <= {ChildWait.UNCHECKED, ChildWait.STORED}
            assert words or k > 0
            engine.register(parent)
            engine.register(kid)
            await trio.sleep(15 if k == 0 else 3)
            view = await engine.get_instance(iid)
            if view.status != "running":
                break
            running = []
            for c in view.children:
                got = await engine.get_instance(c)
                if got.status == "running":
                    running.append(c)
            if k < 6 and running:
                await engine.signal(running[0], "go", running[0])
            elif k == 6:
                await engine.signal(iid, "c", "c")
            await trio.sleep(5)
            view = await engine.get_instance(iid)
            assert view.status in ("running", "completed")
            if view.status == "running":
                # (Past the check-in of a child an item started meanwhile: 10 s after its start.)
                await trio.sleep(12)
                assert not in_memory(engine, iid), k
    async with engine_on(storage()) as engine:
        engine.register(parent)
        engine.register(kid)
        done = await finish(engine, iid)
    assert done.status == "completed", done.error
    assert len(done.children) == 5
    out = done.output
    assert out["A"] in done.children and sorted(out["B"]) == sorted(set(out["B"]))
    assert set(out["B"]) | {out["A"]} == set(done.children) and out["C"] == "c"


async def test_crashes_at_every_write_of_a_looped_child_in_a_branch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A branch's child step, caught and run again (two start records in its lane), beside a
    branch resting on a timer and a signal: every crash point resumes to the same outcome,
    the words rebuilt from the right start record."""
    def kid_job(data: Any) -> str:
        if data == "fail":
            raise ValueError("told to fail")
        return f"kid:{data}"

    kid = tf.workflow("kid").task("k", job=kid_job).wait("kw", seconds=2 * HOUR).build()
    wf = tf.workflow("lp").parallel("p", branches=[
        tf.branch("A").child("ca", workflow="kid", input=lambda ctx: "ok" if ctx.error is not None else "fail",
                             catch=tf.Catch(errors=[tf.ChildWorkflowError], next="ca")).build(),
        tf.branch("B").wait("tb", seconds=HOUR).receive("rb", signal="go").build(),
    ]).build()
    report = await explore_crashes(wf, signals=[("go", 1)], also=[kid], check=False)
    assert report.baseline.status == "completed"
    assert report.baseline.output == {"A": "kid:ok", "B": 1}
    assert len(report.points) >= 6
    assert [(p.write, p.after, p.lost, p.divergence) for p in report.divergent] == []


# -- 3. settle, disturbed, for map items (d6d4309) --------------------------------------------------


async def test_map_items_that_rest_again_after_a_signal_leave_memory_whatever_comes_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two items wait for "x", a third on a timer; one "x" comes just as they have all rested
    long enough (the start is swept, as the maintainers' test for branches does): the item
    that takes it ends (it settles for the others, ``ended_count < started``), the instance
    leaves memory again."""
    wf = tf.workflow("w").map("m", items=lambda ctx: [0, 1, 2], branch=tf.branch("it").choice(
        "which", choices=[tf.Choice(condition=lambda ctx: ctx.item == 2, next="t")], default="r",
    ).receive("r", signal="x", end=True).wait("t", seconds=HOUR).build()).build()
    stayed = []
    for k in range(40):
        async with engine_on(MemoryAdapter()) as engine:
            engine.register(wf)
            await trio.sleep(k * 0.0137)
            t0 = trio.current_time()
            iid = await engine.start("w")
            await trio.sleep_until(t0 + 1.04)
            await engine.signal(iid, "x", 1)
            await trio.sleep(10)
            if in_memory(engine, iid):
                stayed.append(k)
            await engine.signal(iid, "x", 2)
            await trio.sleep(5)
            if in_memory(engine, iid):
                stayed.append(k)
            done = await finish(engine, iid)
        assert done.status == "completed"
    assert stayed == []
