"""Review of "retention and purges keep a child workflow while its parent is stored": an
adversarial tester's checks (grandchildren, filters, batches, old adapters and files)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
import trioflow._engine
from storages import Declined, finish, reservation_jobs, storage  # noqa: F401  (storage: a fixture, both adapters)
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.adapters._protocol import keeps_families
from trioflow.testing import open_test_engine, virtual_wall_clock

FIXTURES = Path(__file__).with_name("fixtures")


def three_generations(log: list[str], *, wait: float = 86_400) -> list[tf.WorkflowDefinition]:
    """order -> kid -> grandkid: the grandkid reserves, the kid reserves and runs the grandkid;
    the order runs the kid, waits ``wait`` s, then fails: everything must be undone."""
    reserve, release, charge = reservation_jobs(log)
    grandkid = tf.workflow("grandkid").step("reserve", reserve, release).build()
    kid = (tf.workflow("kid").step("reserve", reserve, release)
           .child("sub", workflow="grandkid", input=lambda ctx: f"g-{ctx.input}").build())
    order = (tf.workflow("order")
             .child("hold", workflow="kid", input=lambda ctx: "k")
             .wait("a-day", seconds=wait)
             .step("charge", charge)
             .build())
    return [order, kid, grandkid]


def register(engine: tf.Engine, definitions: list[tf.WorkflowDefinition]) -> None:
    for d in definitions:
        engine.register(d)


async def ids(engine: tf.Engine) -> list[str]:
    return sorted(i.id for i in await engine.get_instances())


# -- grandchildren ----------------------------------------------------------------------------


async def test_retention_keeps_grandchildren_across_restarts_and_the_parent_undoes_them_all(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    defs = three_generations(log)
    clock = virtual_wall_clock()
    async with open_test_engine(adapter=storage(), clock=clock, retain_finished=60) as engine:
        register(engine, defs)
        iid = await engine.start("order", instance_id="o")
        await trio.sleep(3_600)
        assert len(await ids(engine)) == 3, await ids(engine)
    async with open_test_engine(adapter=storage(), clock=clock, retain_finished=60) as engine:
        register(engine, defs)
        await trio.sleep(3_600)
        assert len(await ids(engine)) == 3, "the kid and grandkid are kept through a restart"
    async with open_test_engine(adapter=storage(), clock=clock, retain_finished=60) as engine:
        register(engine, defs)
        inst = await finish(engine, iid)
        assert (inst.status, inst.compensation_errors) == ("failed", {})
        assert log == ["reserve k", "reserve g-k", "release g-k", "release k"]
        await trio.sleep(600)  # retention: the whole family goes once the parent is past its time
        assert await ids(engine) == []


async def test_one_purge_takes_three_generations(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    defs = three_generations(log, wait=1)
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as engine:
        register(engine, defs)
        await finish(engine, await engine.start("order", instance_id="o"))
        await trio.sleep(10)
        assert await engine.purge(older_than=0, workflow="grandkid") == 0
        assert await engine.purge(older_than=0, workflow="kid") == 0
        assert await engine.purge(older_than=0) == 3
        assert await ids(engine) == []


# -- filters ----------------------------------------------------------------------------------


async def test_a_purge_by_status_deletes_the_parent_and_leaves_children_of_another_status(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    defs = three_generations(log, wait=1)
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as engine:
        register(engine, defs)
        assert (await finish(engine, await engine.start("order", instance_id="o"))).status == "failed"
        await trio.sleep(10)
        assert await engine.purge(older_than=0, status="compensated") == 0, "their parent is stored"
        assert await engine.purge(older_than=0, status="failed") == 1
        assert await engine.purge(older_than=0, status="compensated") == 2, "orphans: by their finish times"
        assert await ids(engine) == []


async def test_a_family_goes_by_the_cutoff(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """Nothing of a family that finished after the cutoff goes; once past it, all of it."""
    async def slow(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(100)
        return 1

    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as engine:
        engine.register(tf.workflow("kid").step("s", slow).build())
        engine.register(tf.workflow("order").child("c", workflow="kid").build())
        await finish(engine, await engine.start("order", instance_id="o"))
        assert await engine.purge(older_than=50) == 0  # finished just now, both
        await trio.sleep(60)
        assert await engine.purge(older_than=50) == 2


# -- batches ----------------------------------------------------------------------------------


def fan(items: int) -> list[tf.WorkflowDefinition]:
    async def ok(ctx: tf.WorkflowContext) -> int:
        return int(ctx.input)

    kid = tf.workflow("kid").step("s", ok).build()
    orders = [
        tf.workflow(name)
        .map("each", items=lambda ctx: list(range(items)), max_concurrency=2,
             branch=tf.branch("b").child("c", workflow="kid", input=lambda ctx: ctx.item).build())
        .wait("w", seconds=wait).build()
        for name, wait in (("order", 0.5), ("slow-order", 10**6))]
    return [*orders, kid]


async def test_small_purge_batches_take_families_spanning_them(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trioflow._engine, "PURGE_BATCH", 2)
    calls: list[int] = []
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as engine:
        register(engine, fan(5))
        for n in range(3):
            await finish(engine, await engine.start("order", instance_id=f"o{n}"))
            await trio.sleep(1)
        await engine.start("slow-order", instance_id="later")
        await trio.sleep(1)
        purge = engine.adapter.purge

        async def counted(*args: Any, **kwargs: Any) -> int:
            calls.append(got := await purge(*args, **kwargs))
            return got

        engine.adapter.purge = counted  # type: ignore[method-assign]
        assert await engine.purge(older_than=0) == 18
        # At most two parents a call, each with the five children it kept (which come along),
        # until a call comes back short.
        assert calls[-1] < 2 and all(c <= 2 * 6 for c in calls)
        assert await ids(engine) == ["later", *sorted(f"later/each/#{n}/c#1" for n in range(5))]


# -- the memory adapter's finish order stays bounded --------------------------------------------


async def test_memory_stays_bounded_behind_a_kept_child_at_the_front(
        autojump_clock: trio.testing.MockClock) -> None:
    """A parent that waits a long time keeps its child at the front of the finish order;
    short sagas finishing and purged behind it must not pile up in the deque."""
    async def ok(ctx: tf.WorkflowContext) -> int:
        return 1

    adapter = MemoryAdapter()
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock(), retain_finished=0) as engine:
        engine.register(tf.workflow("kid").step("s", ok).build())
        engine.register(tf.workflow("order").child("c", workflow="kid").wait("w", seconds=10**6).build())
        engine.register(tf.workflow("short").step("s", ok).build())
        await engine.start("order", instance_id="o")
        await trio.sleep(1)
        for _ in range(5):
            async with trio.open_nursery() as n:
                for _ in range(1000):
                    n.start_soon(engine.start, "short")
            await trio.sleep(2)
        assert await ids(engine) == ["o", "o/c#1"]
        places = len(adapter._order.finished) + len(adapter._order.released)
        assert places < 1000, places


# -- adapters that predate parent_id ------------------------------------------------------------


class Tracing:
    """A wrapper a user writes around an adapter (metrics, tracing): delegates every call,
    ``create`` with ``*args, **kwargs``."""

    def __init__(self, inner: Adapter) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        return await self.inner.create(instance_id, *args, **kwargs)


class TracingWithParents(Tracing):
    """The same wrapper, its ``create`` naming ``parent_id`` (and handing it on)."""

    async def create(self, instance_id: str, *args: Any, parent_id: str | None = None, **kwargs: Any) -> bool:
        return await self.inner.create(instance_id, *args, parent_id=parent_id, **kwargs)


async def test_a_kwargs_wrapper_is_warned_of_and_one_naming_parent_id_keeps_children(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """A wrapper whose ``create`` takes ``**kwargs`` alone may wrap an adapter written before
    ``parent_id``: the engine gives it none (and retention warns); one that names it keeps
    children."""
    async with open_test_engine(adapter=Tracing(MemoryAdapter()),  # type: ignore[arg-type]
                                clock=virtual_wall_clock(), retain_finished=60):
        pass
    assert "Tracing.create() takes no parent_id" in caplog.text
    log: list[str] = []
    defs = three_generations(log)
    async with open_test_engine(adapter=TracingWithParents(MemoryAdapter()),  # type: ignore[arg-type]
                                clock=virtual_wall_clock(), retain_finished=60) as engine:
        register(engine, defs)
        inst = await finish(engine, await engine.start("order", instance_id="o"))
    assert (inst.status, inst.compensation_errors) == ("failed", {})
    assert log == ["reserve k", "reserve g-k", "release g-k", "release k"]


async def test_an_adapter_without_parent_id_still_runs_families(autojump_clock: trio.testing.MockClock) -> None:
    class Old(MemoryAdapter):
        async def create(self, instance_id: str, workflow_name: str, status: Any, *,  # type: ignore[override]
                         start: bytes, header: bytes) -> bool:
            return await super().create(instance_id, workflow_name, status, start=start, header=header)

    assert not keeps_families(Old())
    log: list[str] = []
    async with open_test_engine(adapter=Old(), clock=virtual_wall_clock()) as engine:
        register(engine, three_generations(log, wait=1))
        inst = await finish(engine, await engine.start("order", instance_id="o"))
    assert inst.status == "failed" and log[-1] == "release k"


# -- older files ------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.db")))
async def test_every_older_file_gets_the_parent_column_and_keeps_new_children(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, fixture: str) -> None:
    import shutil
    path = tmp_path / fixture
    shutil.copy(FIXTURES / fixture, path)
    # The parent each row names (none in a file from before the column; kept_children.db has
    # it, and a child whose parent a purge deleted without it names that parent still).
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        columns = {r[1] for r in conn.execute("PRAGMA table_info(trioflow_instances)")}
        before: dict[str, str | None] = dict(conn.execute(
            f"SELECT instance_id, {'parent_id' if 'parent_id' in columns else 'NULL'} FROM trioflow_instances")) \
            if "trioflow_instances" in tables else {}
    log: list[str] = []
    defs = three_generations(log, wait=3_600)
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=virtual_wall_clock(), retain_finished=60,
                                resume=False) as engine:
        register(engine, defs)
        inst = await finish(engine, await engine.start("order", instance_id="new-o"))
        assert (inst.status, inst.compensation_errors) == ("failed", {})
    assert log == ["reserve k", "reserve g-k", "release g-k", "release k"]
    with sqlite3.connect(path) as conn:
        parents = dict(conn.execute("SELECT instance_id, parent_id FROM trioflow_instances"))
    assert parents.get("new-o/hold#1") == "new-o"
    # A row keeps the parent it named while that parent is stored; one whose parent is gone
    # (or that named none) names none.
    assert all(parents.get(i) == (parent if parent in parents else None) for i, parent in before.items())


# -- the crash explorer -----------------------------------------------------------------------


class Recording(MemoryAdapter):
    """A MemoryAdapter that notes the parent each create was given."""

    parents: dict[str, str | None] = {}

    async def create(self, instance_id: str, workflow_name: str, status: Any, *, start: bytes, header: bytes,
                     parent_id: str | None = None) -> bool:
        Recording.parents[instance_id] = parent_id
        return await super().create(instance_id, workflow_name, status, start=start, header=header,
                                    parent_id=parent_id)


async def test_the_crash_explorer_passes_parents_on_and_explores_three_generations(
        autojump_clock: trio.testing.MockClock) -> None:
    from trioflow.testing import explore_crashes
    log: list[str] = []
    order, kid, grandkid = three_generations(log, wait=1)
    Recording.parents = {}
    report = await explore_crashes(order, None, also=[kid, grandkid], adapter_factory=Recording)
    assert report.baseline.status == "failed" and not report.divergent
    children = {i: p for i, p in Recording.parents.items() if p is not None}
    assert children and all(i.startswith(p + "/") for i, p in children.items()), Recording.parents


async def test_the_crash_explorer_on_sqlite_with_a_family(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    from trioflow.testing import explore_crashes
    log: list[str] = []
    order, kid, grandkid = three_generations(log, wait=1)
    made = iter(range(10**6))
    report = await explore_crashes(order, None, also=[kid, grandkid], lost_writes=False,
                                   adapter_factory=lambda: SQLiteAdapter(tmp_path / f"x{next(made)}.db"))
    assert report.baseline.status == "failed" and not report.divergent


# -- a parent that loops ----------------------------------------------------------------------


async def test_a_looping_parent_keeps_and_undoes_the_child_of_every_round(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []

    async def count(ctx: tf.WorkflowContext) -> int:
        return int(ctx.steps.get("count") or 0) + 1

    reserve, release, charge = reservation_jobs(log)
    kid = tf.workflow("kid").step("reserve", reserve, release).build()
    order = (tf.workflow("order")
             .step("count", count)
             .child("c", workflow="kid", input=lambda ctx: ctx.steps["count"])
             .wait("w", seconds=3_600)
             .choice("again", choices=[tf.when(lambda ctx: ctx.steps["count"] < 3, next="count")], default="charge")
             .step("charge", charge)
             .build())
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock(), retain_finished=60) as engine:
        register(engine, [order, kid])
        inst = await finish(engine, await engine.start("order", instance_id="o"))
        assert inst.status == "failed"
        assert inst.compensation_errors == {}, inst.compensation_errors
    assert sorted(log) == sorted(["reserve 1", "reserve 2", "reserve 3", "release 3", "release 2", "release 1"]), log


# -- a parent that ends (and is purged) before its child ------------------------------------------


async def test_a_parent_purged_while_its_cancelled_child_still_compensates(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []

    async def reserve(ctx: tf.WorkflowContext) -> str:
        log.append("reserve")
        return "r"

    async def release(ctx: tf.WorkflowContext, held: str) -> None:
        await trio.sleep(1_000)
        log.append("release")

    async def hang(ctx: tf.WorkflowContext) -> None:
        await trio.sleep(10**7)

    async def boom(ctx: tf.WorkflowContext) -> None:
        await trio.sleep(5)
        raise Declined("no")

    kid = tf.workflow("kid").step("reserve", reserve, release).step("hang", hang).build()
    order = (tf.workflow("order")
             .parallel("both", branches=[tf.branch("a").child("c", workflow="kid").build(),
                                         tf.branch("b").step("boom", boom).build()])
             .build())
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as engine:
        register(engine, [order, kid])
        inst = await finish(engine, await engine.start("order", instance_id="o"))
        assert inst.status == "failed"
        child = await engine.get_instance("o/both/a/c#1")
        await trio.sleep(1)
        gone = await engine.purge(older_than=0)
        if child is not None and child.status not in ("completed", "compensated", "failed", "cancelled"):
            assert gone == 1  # the parent only
        await trio.sleep(2_000)
        assert await engine.purge(older_than=0) in (0, 1)
        assert await ids(engine) == []
    assert log[0] == "reserve"


# -- a compensated child's finish time ----------------------------------------------------------


async def test_a_compensated_childs_finish_time_is_when_its_undo_ended(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """Pins what both adapters do. (docs/fanout.md says otherwise: once the parent is purged,
    the child goes by its own finish time, "which is when it completed (the checkpoints of its
    undo do not move it)"; a child the parent undid ended ``compensated``, and that status
    change restamps it.)"""
    async def ok(ctx: tf.WorkflowContext) -> int:
        return 1

    async def undo(ctx: tf.WorkflowContext, out: Any) -> None:
        await trio.sleep(100)

    async def fail_late(ctx: tf.WorkflowContext) -> None:
        await trio.sleep(200)
        raise Declined("late")

    adapter = storage()
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(tf.workflow("kid").step("x", ok, undo).build())
        engine.register(tf.workflow("p").child("c", workflow="kid").step("f", fail_late).build())
        await engine.start("p", instance_id="p")
        inst = await finish(engine, "p")  # child completed at ~0, undone from 200 to 300
        assert inst.status == "failed" and inst.compensation_errors == {}
        assert (await engine.get_instance("p/c#1")).status == "compensated"  # type: ignore[union-attr]
        await trio.sleep(50)  # now ~350
        assert await adapter.delete("p")
        # Completed at ~0, but compensated at ~300: only 50 s ago.
        assert await engine.purge(older_than=100) == 0
        assert await engine.purge(older_than=40) == 1


async def test_the_crash_explorer_on_an_adapter_written_before_parent_id(
        autojump_clock: trio.testing.MockClock) -> None:
    from trioflow.testing import explore_crashes

    class Old(MemoryAdapter):
        async def create(self, instance_id: str, workflow_name: str, status: Any, *,  # type: ignore[override]
                         start: bytes, header: bytes) -> bool:
            return await super().create(instance_id, workflow_name, status, start=start, header=header)

    log: list[str] = []
    order, kid, grandkid = three_generations(log, wait=1)
    report = await explore_crashes(order, None, also=[kid, grandkid], adapter_factory=Old)
    assert report.baseline.status == "failed" and not report.divergent


async def test_the_kit_passes_both_shipped_adapters(tmp_path: Path) -> None:
    from trioflow.testing import check_persistence_adapter
    from trioflow.testing._conformance import _CHECKS
    stores: dict[str, MemoryAdapter] = {}
    names = [c.__name__ for c in _CHECKS]
    assert await check_persistence_adapter(lambda key: stores.setdefault(key, MemoryAdapter())) == names
    assert await check_persistence_adapter(lambda key: SQLiteAdapter(tmp_path / f"{key}.db")) == names


# -- a family purged over two adapter calls -----------------------------------------------------


async def test_an_id_started_again_between_a_parents_purge_and_its_childrens_is_not_blocked(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """engine.purge now deletes a parent before its children (they wait for a later adapter
    call), where it used to delete the children first (they finished first). A start of the
    parent's id again (an idempotent re-submission) that lands between the two calls finds the
    old children kept for it, and its child step collides with them."""
    async def ok(ctx: tf.WorkflowContext) -> int:
        return 1

    adapter = storage()
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(tf.workflow("kid").step("s", ok).build())
        engine.register(tf.workflow("order").child("c", workflow="kid").build())
        assert (await finish(engine, await engine.start("order", instance_id="o"))).status == "completed"
        await trio.sleep(10)
        purge = adapter.purge
        started: list[str] = []

        async def racing(*args: Any, **kwargs: Any) -> int:
            got = await purge(*args, **kwargs)
            if not started and await adapter.load("o") is None:
                started.append(await engine.start("order", instance_id="o"))  # lands between two calls
            return got

        adapter.purge = racing  # type: ignore[method-assign]
        await engine.purge(older_than=0)
        again = await finish(engine, "o")
    assert (again.status, again.error) == ("completed", None), again.error
