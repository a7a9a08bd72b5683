"""From a review ("dbos": a DBOS user moving a request-scoped service to trioflow) of
``start(..., instance_id=X)`` racing a purge of a finished instance X; each test failed until the
commit that added this file (the guard passed before it too).

The review's own test leaves the order of the start's calls and the purge's to trio's
scheduler (about half of its 30 tries hit the race); the tests after it hit the race every
time, with an adapter whose refused create answers only once a purge has deleted the row."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import open_test_engine

pytestmark = pytest.mark.trio


async def echo(ctx: Any) -> Any:
    return ctx.input


async def charge(ctx: Any) -> dict[str, Any]:
    info = tf.current_step()
    CHARGES.append((info.instance_id, info.execution_id))
    await trio.sleep(1)
    return {"charged": ctx.input["amount"]}


CHARGES: list[tuple[str, str]] = []

quick = tf.workflow("quick").step("s", echo).build()
pay = tf.workflow("pay").step("charge", charge).build()


def sqlite(tmp_path: Any) -> tf.adapters.SQLiteAdapter:
    return tf.adapters.SQLiteAdapter(str(tmp_path / "service.db"))


async def test_start_racing_a_purge_returns_an_id_with_nothing_stored(autojump_clock: Any, tmp_path: Any) -> None:
    """A request handler retries ``start("quick", x, instance_id=request_id)`` for a request
    whose instance finished a while ago, while retention (``retain_finished`` or an operator's
    ``purge()``) deletes that instance. The user expects ``start()`` to keep its documented
    contract, "return its id once it is stored": either the old instance (read before the
    purge) or a new one stored under the id, so that ``wait()``/``get_instance()`` of the
    returned id find it (DBOS's start_workflow either returns the existing workflow's handle or
    inserts a new one; it never hands back an id with no workflow behind it).

    Was: when the purge lands between the start's refused ``create`` (the row exists) and its
    read of that row (same SQLite group commit: create refused, purge deletes), ``start()``
    returns the id although nothing is stored under it and nothing runs: ``get_instance`` gives
    ``None`` and ``wait`` raises ``UnknownInstanceError``. The order of the two calls is left to
    trio's scheduler, so the test tries 30 ids; about half of them lose their instance."""
    async with open_test_engine(adapter=sqlite(tmp_path)) as engine:
        engine.register(quick)
        lost = []
        for n in range(30):
            request_id = f"req-{n}"
            await engine.wait(await engine.start("quick", request_id, instance_id=request_id))
            await trio.sleep(10)  # finished 10 s ago: the purge below takes it
            returned = []
            async with trio.open_nursery() as nursery:
                async def retried_request() -> None:
                    returned.append(await engine.start("quick", request_id, instance_id=request_id))
                nursery.start_soon(retried_request)
                nursery.start_soon(lambda: engine.purge(older_than=1))
            assert returned == [request_id]
            if await engine.get_instance(request_id) is None:
                lost.append(request_id)
        assert lost == [], f"start() returned these ids with no instance stored under them: {lost}"


async def test_guard_request_id_idempotent_across_restart_and_refused_with_other_input(
    autojump_clock: Any, tmp_path: Any,
) -> None:
    """Guard (passes today; the DBOS-style contract the service is built on, across several
    code paths that interleave): five concurrent starts of one request id run it once; after a
    restart on the same SQLite file the same start returns the finished instance and its
    output, without running the step again; the same id with another input is refused with
    ``InstanceIdConflictError`` before and after the restart."""
    CHARGES.clear()
    async with open_test_engine(adapter=sqlite(tmp_path)) as engine:
        engine.register(pay)
        got: list[str] = []
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                async def handler() -> None:
                    got.append(await engine.start("pay", {"amount": 5}, instance_id="req-1"))
                nursery.start_soon(handler)
        assert got == ["req-1"] * 5
        assert (await engine.wait("req-1")).output == {"charged": 5}
        with pytest.raises(tf.InstanceIdConflictError):
            await engine.start("pay", {"amount": 6}, instance_id="req-1")
    async with open_test_engine(adapter=sqlite(tmp_path)) as engine:
        engine.register(pay)
        assert await engine.start("pay", {"amount": 5}, instance_id="req-1") == "req-1"
        assert (await engine.wait("req-1")).output == {"charged": 5}
        with pytest.raises(tf.InstanceIdConflictError):
            await engine.start("pay", {"amount": 6}, instance_id="req-1")
    assert CHARGES == [("req-1", "charge#1")]


# -- the same race, hit every time ----------------------------------------------------------


class PurgedAsCreateIsRefused:
    """Adapter mixin: once ``hold`` names an id, a create of it refused because its row exists
    sets ``refused`` and answers only once ``go_on`` is set (a purge deleting the row between)."""

    hold: str | None = None

    def hold_refused_create(self, instance_id: str) -> None:
        self.hold, self.refused, self.go_on = instance_id, trio.Event(), trio.Event()

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        created: bool = await super().create(instance_id, *args, **kwargs)  # type: ignore[misc]
        if not created and instance_id == self.hold:
            self.hold = None
            self.refused.set()
            await self.go_on.wait()
        return created


class MemoryPurgedAsCreateIsRefused(PurgedAsCreateIsRefused, tf.adapters.MemoryAdapter):
    pass


class SQLitePurgedAsCreateIsRefused(PurgedAsCreateIsRefused, tf.adapters.SQLiteAdapter):
    pass


def adapter_of(storage: str, tmp_path: Any) -> Any:
    if storage == "memory":
        return MemoryPurgedAsCreateIsRefused()
    return SQLitePurgedAsCreateIsRefused(str(tmp_path / "race.db"))


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
@pytest.mark.parametrize("same_input", [True, False], ids=["same-input", "other-input"])
async def test_start_whose_row_is_purged_after_its_create_is_refused_stores_a_new_instance(
    autojump_clock: Any, tmp_path: Any, storage: str, same_input: bool,
) -> None:
    """A start of a finished instance's id whose create is refused (the row exists), the row
    then purged before the start reads it: the id is free again, and the start stores a new
    instance under it, which runs (with the start's input: the purged one's is no more, so
    another input is no conflict). ``start()`` returns the id only once it is stored.

    Was: ``start()`` returned the id with nothing stored under it, nothing run
    (``get_instance`` ``None``), and with another input than the purged instance's no
    ``InstanceIdConflictError`` either (the same-input check skipped)."""
    adapter = adapter_of(storage, tmp_path)
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(quick)
        assert (await engine.wait(await engine.start("quick", "old", instance_id="r"))).output == "old"
        await trio.sleep(10)
        new_input = "old" if same_input else "new"
        adapter.hold_refused_create("r")
        returned: list[str] = []
        async with trio.open_nursery() as nursery:
            async def retried_request() -> None:
                returned.append(await engine.start("quick", new_input, instance_id="r"))
            nursery.start_soon(retried_request)
            await adapter.refused.wait()
            assert await engine.purge(older_than=1) == 1
            adapter.go_on.set()
        assert returned == ["r"]
        view = await engine.get_instance("r")
        assert view is not None, "start() returned an id with nothing stored under it"
        assert (await engine.wait("r")).output == new_input
        with pytest.raises(tf.InstanceIdConflictError):
            await engine.start("quick", "third", instance_id="r")  # the new instance's input holds
    if storage == "sqlite":
        async with open_test_engine(adapter=sqlite_at(tmp_path)) as engine:
            engine.register(quick)
            assert (await engine.wait("r")).output == new_input  # stored, not only run here


def sqlite_at(tmp_path: Any) -> tf.adapters.SQLiteAdapter:
    return tf.adapters.SQLiteAdapter(str(tmp_path / "race.db"))


class CreateAndLoadDisagree(tf.adapters.MemoryAdapter):
    """An adapter breaking the contract: its create refuses ``"r"`` as existing, and its load
    finds no row under it."""

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id == "r":
            await trio.sleep(0)
            return False
        return await super().create(instance_id, *args, **kwargs)


async def test_start_whose_create_is_refused_and_nothing_found_each_time_gives_up(autojump_clock: Any) -> None:
    """The retry of a start whose refused create's row is gone is bounded: an adapter whose
    create refuses an id its load never finds gets a ``StorageError`` naming the instance, not
    a start that tries for ever (nor the id back with nothing stored); the engine starts other
    instances as before.

    Was: ``start()`` returned ``"r"`` with nothing stored under it."""
    async with open_test_engine(adapter=CreateAndLoadDisagree()) as engine:
        engine.register(quick)
        with pytest.raises(tf.StorageError, match="'r'"):
            await engine.start("quick", 1, instance_id="r")
        assert await engine.get_instance("r") is None
        assert (await engine.wait(await engine.start("quick", 2, instance_id="s"))).output == 2
