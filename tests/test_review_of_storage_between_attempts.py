"""From an adversarial review of fac48b3 (a checkpoint refused between attempts is the run's
failure, not the step's) and d9d0ef6 (engine.events checks the calling thread): other storage
calls that sit inside handlers turning exceptions into a step's / compensation's failure. All
failed on 60e1aaa; three pass since the commit that added this file (a child compensated as a
unit whose storage is down stops its parent as stored; only storage that may come back is taken
for the run's failure between attempts, a refusal stays the step's, compensated; a plain
callback's unsubscribe checks the thread); the orphaned child was a strict xfail until the commit
that removed its mark (a parent's cancel of a child tries it again while storage may come back,
then stops the parent as stored, to cancel the child again once taken up). On trio's autojumping
MockClock; MemoryAdapter subclasses."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


class _Outage(tf.adapters.MemoryAdapter):
    """A MemoryAdapter whose chosen calls raise StorageUnavailableError while trio's clock is
    before ``until`` (a database locked by another connection for a few seconds), for every
    instance but ``spare`` (the one whose own storage keeps working)."""

    until = -1.0
    methods: frozenset[str] = frozenset()
    spare: str | None = None

    def _down(self, method: str, instance_id: str) -> bool:
        return method in self.methods and instance_id != self.spare and trio.current_time() < self.until

    async def load(self, instance_id: str) -> Any:
        if self._down("load", instance_id):
            raise tf.StorageUnavailableError("database is locked")
        return await super().load(instance_id)

    async def checkpoint(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if self._down("checkpoint", instance_id):
            raise tf.StorageUnavailableError("database is locked")
        return await super().checkpoint(instance_id, *args, **kwargs)

    def outage(self, seconds: float, *methods: str, spare: str | None = None) -> None:
        self.until = trio.current_time() + seconds
        self.methods = frozenset(methods)
        self.spare = spare


async def _wait_through_outage(engine: Any, iid: str) -> Any:
    """``wait()``; if the instance stopped on storage (README: it stops where it was last
    stored, resumable by ``engine.resume()``), resume it and wait again."""
    for _ in range(5):
        try:
            return await engine.wait(iid)
        except tf.StorageUnavailableError:
            await trio.sleep(10)  # (the outage is over by then)
            await engine.resume()
    raise AssertionError("never ended")


async def test_a_storage_blip_while_compensating_a_child_does_not_give_up_its_compensation(
        autojump_clock: trio.testing.MockClock) -> None:
    """A parent books a hotel through a child workflow (its ``book`` step has an ``unbook``
    compensation), then its ``pay`` step fails: the parent compensates the child as a unit.
    While it does, the database is locked for 3 s (``storage_retry_for=1``): reading the child
    to compensate it fails. README, Storage failures: storage calls an instance makes, "the
    reads that ... compensate a child" among them, are retried; past that "the instance stops
    where it was last stored, resumable by ... engine.resume() ... It is never marked failed
    without compensation." The user expects, once resumed, the hotel unbooked and no
    compensation error.
    Was: the StorageUnavailableError is taken for the child step's compensation failure
    (``_compensate_and_finish``'s ``except BaseException``): the parent ends failed with
    ``compensation_errors == {"hotel": "StorageUnavailableError: ..."}``, the child stays
    completed, the hotel is never unbooked."""
    adapter = _Outage()
    unbooked: list[str] = []

    async def book(ctx: Any) -> str:
        return "room-1"

    async def unbook(ctx: Any, room: str) -> None:
        unbooked.append(room)

    async def pay(ctx: Any) -> None:
        adapter.outage(3.0, "load", spare=tf.current_step().instance_id)
        raise ValueError("card declined")

    child = tf.workflow("hotel").step("book", book, unbook).build()
    parent = tf.workflow("trip").child("hotel", workflow="hotel").step("pay", pay).build()
    async with open_test_engine(adapter=adapter, storage_retry_for=1.0) as engine:
        engine.register(child)
        engine.register(parent)
        iid = await engine.start("trip", {})
        done = await _wait_through_outage(engine, iid)
        assert done.status == "failed", (done.status, done.error)
        assert done.error_name == "ValueError", done.error
        assert done.compensation_errors == {}, "a storage blip is not the child's compensation failure"
        assert unbooked == ["room-1"]


async def test_a_storage_blip_while_a_cancel_stops_a_child_does_not_orphan_the_child(
        autojump_clock: trio.testing.MockClock) -> None:
    """A parent waits on a child workflow that waits for a manager's approval (a receive with
    no timeout). The user cancels the parent; the parent cancels the child it waited on. While
    it does, the database is locked for 3 s for the child (``storage_retry_for=1``): the
    child's checkpoint of its cancel fails, it stops as last stored (waiting, forward). README,
    Storage failures: the instance "stops where it was last stored, resumable by ...
    engine.resume()"; Hosting/child docs: cancelling a parent cancels the children it waited on
    (Temporal: a parent's cancel reaches its children per their ParentClosePolicy). The user
    expects, once storage is back and ``engine.resume()`` has run, the child cancelled too.
    Was: ``Children.cancel`` takes the child's StorageUnavailableError (a TrioflowError) as
    "could not be cancelled", logs a warning and returns None; the parent records the child
    step cut short and ends ``cancelled``; the resumed child goes on waiting for its approval,
    forward, for ever: an orphan nobody will cancel or compensate."""
    adapter = _Outage()

    child = tf.workflow("approval").receive("wait-approval", signal="approved").build()
    parent = tf.workflow("order").child("approve", workflow="approval").build()
    async with open_test_engine(adapter=adapter, storage_retry_for=1.0) as engine:
        engine.register(child)
        engine.register(parent)
        iid = await engine.start("order", {})
        await trio.sleep(5)
        [kid] = [i for i in await engine.get_instances("approval")]
        assert kid.status in ("running", "waiting"), kid.status
        adapter.outage(3.0, "checkpoint", "load", spare=iid)
        await engine.cancel(iid)
        done = await _wait_through_outage(engine, iid)
        assert done.status == "cancelled", (done.status, done.error)
        await trio.sleep(10)
        await engine.resume()
        await trio.sleep(10)
        kid_now = await engine.get_instance(kid.id)
        assert kid_now is not None
        assert kid_now.status == "cancelled", f"child left {kid_now.status} after its parent was cancelled"


class _OneRefusal(tf.adapters.MemoryAdapter):
    """A MemoryAdapter whose next checkpoint, once ``refuse`` is set, raises ``refuse`` (an
    adapter's own StorageError: a write refused for good, not one that may pass)."""

    refuse: BaseException | None = None

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        if self.refuse is not None:
            error, self.refuse = self.refuse, None
            raise error
        return await super().checkpoint(*args, **kwargs)


def refused_retry_saga(adapter: _OneRefusal, refunds: list[str]) -> tuple[Any, Any, Any]:
    """A saga's jobs: ``charge`` (``refund`` appends to ``refunds``), then ``ship``, which fails
    its first try and has ``adapter`` refuse the checkpoint storing its retry delay."""
    tries: list[int] = []

    async def charge(ctx: Any) -> str:
        return "ch-1"

    async def refund(ctx: Any, charge_id: str) -> None:
        refunds.append(charge_id)

    async def ship(ctx: Any) -> str:
        tries.append(1)
        if len(tries) == 1:
            adapter.refuse = tf.StorageError("the write was refused")
            raise ConnectionError("carrier down")
        return "shipped"

    return charge, refund, ship


async def test_a_storage_error_at_a_retry_delays_checkpoint_is_not_a_failure_without_compensation(
        autojump_clock: trio.testing.MockClock) -> None:
    """A saga charges a card (with a ``refund`` compensation), then ships with
    ``Retry(max_attempts=3, interval=10)``; shipping fails once, and the checkpoint that stores
    its retry delay meets an adapter's StorageError (not StorageUnavailableError). fac48b3 says
    such a checkpoint's failure, "StorageUnavailableError ... or another StorageError", is the
    run's: "it stops as last stored, for a resume"; README, Storage failures: "It is never
    marked failed without compensation." Before fac48b3 it was the ship step's failure, and the
    charge was refunded. The user expects the charge refunded, or the instance left as stored
    for a resume (and then completed).
    Was: run_task raises the bare StorageError on; ``Engine._instance_actor`` handles only
    StorageUnavailableError as "stopped", so this one is an "internal error": the instance is
    stored ``failed`` (fail_alone) with no compensation: the card stays charged for good."""
    adapter = _OneRefusal()
    refunds: list[str] = []
    charge, refund, ship = refused_retry_saga(adapter, refunds)
    wf = (tf.workflow("order").step("charge", charge, refund)
          .step("ship", ship, retry=tf.Retry(max_attempts=3, interval=10.0)).build())
    async with open_test_engine(adapter=adapter, storage_retry_for=1.0) as engine:
        engine.register(wf)
        iid = await engine.start("order", {})
        try:
            done = await engine.wait(iid)
        except tf.TrioflowError:
            await engine.resume()
            done = await engine.wait(iid)
    assert done.status == "completed" or refunds == ["ch-1"], (
        f"ended {done.status} ({done.error}) with the charge never refunded")


def test_a_plain_callbacks_unsubscribe_from_another_thread_is_refused() -> None:
    """A service subscribes a plain (sync) callback in the engine's trio run, and a worker
    thread later calls the unsubscribe it was given directly (not through
    ``trio.from_thread.run_sync(..., trio_token=engine.trio_token)``). README, Hosting (d9d0ef6):
    a call from another thread "(and so for wait, signal, engine.events.on, ...)" "is refused
    with WrongTrioRunError before anything is done"; d9d0ef6 refuses an async callback's
    unsubscribe from another thread. The user expects the same for a plain callback's.
    Was: it is let through: ``EventBus._add``'s ``remove`` mutates ``_subscribers``,
    clears ``_routes`` and sets ``active`` from the foreign thread while the engine's thread
    may be in ``emit``/``_route`` building and caching the route for an event name: a route
    built with the callback before the removal and stored after the clear keeps calling the
    unsubscribed callback (and ``active`` may be left stale) until the next subscribe."""
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with tf.open_engine() as engine:
            unsubscribe = engine.events.on("workflow.*", lambda event: None)

            def foreign() -> None:
                try:
                    unsubscribe()
                except BaseException as exc:
                    seen["error"] = exc

            await trio.to_thread.run_sync(foreign)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert isinstance(seen.get("error"), tf.WrongTrioRunError), seen
