"""Adversarial review of retention and purges (``open_engine(retain_finished=...)``,
``engine.purge``) where instances form families (child steps, maps of child steps, nested
children) that are cancelled, time out, compensate and are resumed after a restart.

Self-contained: run from a trioflow checkout with
``pytest -q -c pyproject.toml /tmp/review_retention/test_review_of_retention_in_families.py``
(or copy it into tests/). Deterministic: trio's MockClock (autojump) or an engine_portal.

Failing tests (bugs): ``test_an_end_whose_answer_was_lost_then_purged_*``.
The others pin behaviour worth keeping."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import engine_portal, open_test_engine, virtual_wall_clock

class Declined(Exception):
    """A job's failure, raised on purpose."""


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Adapter]:
    """One storage as a restart gets it: the same MemoryAdapter, or a new SQLiteAdapter on one file."""
    if request.param == "memory":
        memory = MemoryAdapter()
        return lambda: memory
    return lambda: SQLiteAdapter(tmp_path / "flows.db")


async def finish(engine: tf.Engine, iid: str, limit: float = 10**6) -> tf.WorkflowInstance:
    with trio.fail_after(limit):
        return await engine.wait(iid)


async def listed(engine: tf.Engine) -> list[tuple[str, str]]:
    return sorted((i.id, i.status) for i in await engine.get_instances())


# -- bugs ---------------------------------------------------------------------------------------


def losing_the_end_of(base: type[Any], instance_id: str) -> type[Any]:
    """An adapter whose checkpoint giving ``instance_id`` its end is stored and then raises
    StorageUnavailableError (a commit that failed late: the answer is lost), once; ``lost`` is
    set then."""
    class Lossy(base):  # type: ignore[misc, valid-type]
        lost = trio.Event()

        async def checkpoint(self, iid: str, status: Any, header: bytes, records: Any, **kw: Any) -> Any:
            got = await super().checkpoint(iid, status, header, records, **kw)
            if iid == instance_id and status in ("completed", "failed") and not self.lost.is_set():
                self.lost.set()
                raise tf.StorageUnavailableError("commit failed late: its answer is lost")
            return got
    return Lossy


def lossy_storage(kind: str, tmp_path: Path, instance_id: str) -> Any:
    if kind == "memory":
        return losing_the_end_of(MemoryAdapter, instance_id)()
    return losing_the_end_of(SQLiteAdapter, instance_id)(tmp_path / "flows.db")


async def _purge_once_lost(engine: tf.Engine, adapter: Any, got: list[int]) -> None:
    """What retention does at that moment (retain_finished=0 purges every second, and after
    every 1,000 ends): the end is stored, so the instance is purgeable."""
    await adapter.lost.wait()
    got.append(await engine.purge(older_than=0))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_end_whose_answer_was_lost_then_purged_is_still_the_waiters_outcome(
        autojump_clock: trio.testing.MockClock, kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Promised: wait() returns once the instance's end is stored; an outcome read (wait called)
    before the purge is the outcome; a purged instance gives UnknownInstanceError, never a crash;
    storage answers that are lost are retried and a checkpoint found stored counts as stored.

    What happens: the terminal checkpoint is stored, its answer is lost, and retention purges
    the (finished) row during the 0.05 s back-off. The retry gets UnknownInstanceError (only
    CheckpointConflictError is taken as "maybe stored already", and _stored_already reads
    None as "not stored"), the run's failure cannot be stored either, the actor "crashed"
    (ERROR), and wait() raises InstanceNotLiveError saying the instance "stays running in
    storage and resumes with the next engine": false twice over (it completed; it is gone)."""
    adapter = lossy_storage(kind, tmp_path, "x")

    async def ok(ctx: tf.WorkflowContext) -> int:
        return 1

    purged: list[int] = []
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(tf.workflow("w").step("s", ok).build())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_purge_once_lost, engine, adapter, purged)
            await engine.start("w", instance_id="x")
            outcome = await finish(engine, "x", 100)
        assert purged == [1]
        assert (outcome.status, outcome.output) == ("completed", 1)
        assert await engine.get_instance("x") is None
    crashes = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert crashes == []


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_end_whose_answer_was_lost_then_purged_with_its_children(
        autojump_clock: trio.testing.MockClock, kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The same in a family: a parent that ran a child and failed (compensating that child
    whole) stores its end, loses the answer, and the purge takes the parent and the child it
    kept. Promised: wait(parent) gives the failure (Declined, compensation clean). What
    happens: InstanceNotLiveError ("stays running in storage ... resumes with the next
    engine"), and "instance actor o crashed" is logged: the next engine finds nothing to resume."""
    adapter = lossy_storage(kind, tmp_path, "o")
    log: list[str] = []

    async def reserve(ctx: tf.WorkflowContext) -> str:
        log.append("reserve")
        return "r"

    async def release(ctx: tf.WorkflowContext, held: str) -> None:
        log.append("release")

    async def decline(ctx: tf.WorkflowContext) -> None:
        raise Declined("no")

    purged: list[int] = []
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(tf.workflow("kid").step("reserve", reserve, release).build())
        engine.register(tf.workflow("order").child("c", workflow="kid").step("charge", decline).build())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_purge_once_lost, engine, adapter, purged)
            await engine.start("order", instance_id="o")
            outcome = await finish(engine, "o", 100)  # raises InstanceNotLiveError today
        assert purged == [2], "the parent and the child it kept"
        assert log == ["reserve", "release"]
        assert (outcome.status, outcome.compensation_errors) == ("failed", {})
    crashes = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert crashes == []


# -- pinned: what holds ---------------------------------------------------------------------------


def map_of_children(log: list[str], *, wait: float = 86_400) -> list[tf.WorkflowDefinition]:
    """batch: a map of three child steps (kid: two reservations), a day's wait, then a failure."""
    async def reserve(ctx: tf.WorkflowContext) -> str:
        log.append(f"reserve {ctx.input}")
        return str(ctx.input)

    async def release(ctx: tf.WorkflowContext, held: str) -> None:
        log.append(f"release {held}")

    async def decline(ctx: tf.WorkflowContext) -> None:
        raise Declined("no")

    kid = tf.workflow("kid").step("r1", reserve, release).step("r2", reserve, release).build()
    batch = (tf.workflow("batch")
             .map("m", items=lambda ctx: ["a", "b", "c"], branch=tf.branch("one").child("k", workflow="kid").build())
             .wait("day", seconds=wait)
             .step("decline", decline)
             .build())
    return [kid, batch]


async def test_map_children_outlive_retention_zero_across_a_restart_and_are_all_undone(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """retain_finished=0, a parent whose map's children completed an hour in, ten days of
    downtime: the children are kept, the parent undoes each (both reservations), then the whole
    family goes, and each purged id gives None / UnknownInstanceError."""
    log: list[str] = []
    clock = virtual_wall_clock()
    async with open_test_engine(adapter=storage(), clock=clock, retain_finished=0) as engine:
        for d in map_of_children(log):
            engine.register(d)
        await engine.start("batch", instance_id="b")
        await trio.sleep(3_600)
        assert await listed(engine) == [("b", "running"), ("b/m/#0/k#1", "completed"),
                                        ("b/m/#1/k#1", "completed"), ("b/m/#2/k#1", "completed")]
    await trio.sleep(10 * 86_400)
    async with open_test_engine(adapter=storage(), clock=clock, retain_finished=0) as engine:
        for d in map_of_children(log):
            engine.register(d)
        inst = await finish(engine, "b")
        assert (inst.status, inst.compensation_errors) == ("failed", {})
        assert sorted(inst.children) == ["b/m/#0/k#1", "b/m/#1/k#1", "b/m/#2/k#1"]
        for child in inst.children:
            assert (await engine.get_instance(child)).status == "compensated"  # type: ignore[union-attr]
        assert sorted(x for x in log if x.startswith("release")) == sorted(
            f"release {x}" for x in "aabbcc")
        await trio.sleep(5)
        assert await listed(engine) == []
        for iid in ("b", *inst.children):
            assert await engine.get_instance(iid) is None
            with pytest.raises(tf.UnknownInstanceError):
                await engine.wait(iid)


async def test_a_parent_id_started_again_after_its_cancelled_familys_purge_gets_a_child_of_its_own(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """A fail-fast sibling fails the parent while its child runs: the parent waits for the
    child's cancel and slow compensation before its own end, so the purge takes both, and the
    parent's id started again (other input) runs a new child on the same child id with the new
    input (no stale child adopted, no stale end notice)."""
    log: list[str] = []

    async def reserve(ctx: tf.WorkflowContext) -> str:
        log.append(f"reserve {ctx.input}")
        return str(ctx.input)

    async def release(ctx: tf.WorkflowContext, held: str) -> None:
        await trio.sleep(100)  # (under the default compensation timeout, 300 s)
        log.append(f"release {held}")

    async def work(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(50)
        return f"done {ctx.input}"

    async def boom(ctx: tf.WorkflowContext) -> None:
        await trio.sleep(5)
        if ctx.input == "old":
            raise Declined("no")

    kid = tf.workflow("kid").step("reserve", reserve, release).step("work", work).build()
    order = (tf.workflow("order")
             .parallel("both", branches=[tf.branch("a").child("c", workflow="kid").build(),
                                         tf.branch("b").step("boom", boom).build()])
             .build())
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as engine:
        engine.register(kid)
        engine.register(order)
        first = await finish(engine, await engine.start("order", "old", instance_id="o"))
        assert first.status == "failed"
        assert (await engine.get_instance("o/both/a/c#1")).status == "cancelled"  # type: ignore[union-attr]
        assert log == ["reserve old", "release old"]
        await trio.sleep(1)
        assert await engine.purge(older_than=0) == 2
        again = await finish(engine, await engine.start("order", "new", instance_id="o"))
        assert (again.status, again.error) == ("completed", None)
        assert again.output["a"] == "done new"
        child = await engine.get_instance("o/both/a/c#1")
        assert child is not None and (child.status, child.input, child.parent_id) == ("completed", "new", "o")


def three_generations(log: list[str], timeout: float | None) -> list[tf.WorkflowDefinition]:
    """order -> kid -> a map of two grandkids; order waits a day, then fails (or times out)."""
    async def reserve(ctx: tf.WorkflowContext) -> str:
        log.append(f"reserve {ctx.input}")
        return str(ctx.input)

    async def release(ctx: tf.WorkflowContext, held: str) -> None:
        log.append(f"release {held}")

    async def decline(ctx: tf.WorkflowContext) -> None:
        raise Declined("no")

    grandkid = tf.workflow("grandkid").step("reserve", reserve, release).build()
    kid = (tf.workflow("kid").step("reserve", reserve, release)
           .map("subs", items=lambda ctx: ["x", "y"],
                branch=tf.branch("one").child("g", workflow="grandkid", input=lambda ctx: f"g-{ctx.item}").build())
           .build())
    order = (tf.workflow("order").child("hold", workflow="kid", input=lambda ctx: "k")
             .wait("day", seconds=86_400).step("charge", decline))
    if timeout is not None:
        order = order.with_timeout(timeout)
    return [order.build(), kid, grandkid]


@pytest.mark.parametrize("timeout", [None, 3_600], ids=["fails", "times-out"])
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_portal_restart_past_retention_keeps_three_generations_for_their_undo(
        kind: str, timeout: float | None, tmp_path: Path) -> None:
    """engine_portal, retain_finished=60, two days of downtime (past the parent's timeout in
    one variant): kid and grandkids completed long before, are kept, and undone newest first;
    listings name each one's parent; 60 s later retention takes the family whole."""
    log: list[str] = []
    defs = three_generations(log, timeout)

    def setup(engine: tf.Engine) -> None:
        for d in defs:
            engine.register(d)

    options: dict[str, Any] = {} if kind == "memory" else {"adapter": SQLiteAdapter(tmp_path / "f.db")}
    family = ["o", "o/hold#1", "o/hold#1/subs/#0/g#1", "o/hold#1/subs/#1/g#1"]
    with engine_portal(setup=setup, retain_finished=60, **options) as portal:
        portal.call(lambda e: e.start("order", instance_id="o"))
        portal.advance(600)
        assert portal.call(listed) == list(zip(family, ["running", "completed", "completed", "completed"]))
        portal.restart(downtime=2 * 86_400)
        portal.advance(1)
        end = "failed" if timeout is None else "timed_out"
        views = portal.call(lambda e: e.get_instances())
        assert sorted((i.id, i.status, i.parent_id) for i in views) == [
            ("o", end, None), ("o/hold#1", "compensated", "o"),
            ("o/hold#1/subs/#0/g#1", "compensated", "o/hold#1"), ("o/hold#1/subs/#1/g#1", "compensated", "o/hold#1")]
        assert portal.call(lambda e: e.get_instance("o")).children == ("o/hold#1",)
        assert log[-1] == "release k" and sorted(log[-3:-1]) == ["release g-x", "release g-y"]
        portal.advance(120)
        assert portal.call(listed) == []
        for iid in family:
            with pytest.raises(tf.UnknownInstanceError):
                portal.call(lambda e, iid=iid: e.wait(iid))
