"""Service review s23: a long-lived service process that embeds one engine and runs many short
sagas at once (request handlers starting, waiting on, cancelling and listing instances from
many trio tasks and from worker threads; metrics from events; shutdown, restart and resume on a
SQLite file; a database another process locks; retention of finished instances).

Most tests pin documented behaviour the review checked under load (they pass). The tests in the
first section fail now: they mark a hang or a monitoring gap that such a service would hit and
that the docs do not cover. Timers run on the autojumping MockClock; SQLite files go in tmp_path;
no mocks of trioflow."""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import SQLiteAdapter


def sqlite(tmp_path: Path, name: str = "svc.db", **kw: Any) -> SQLiteAdapter:
    return SQLiteAdapter(tmp_path / name, **kw)


# --------------------------------------------------------------------------------------------
# Where the code does not do what a service relies on (fail now)
# --------------------------------------------------------------------------------------------


async def test_a_step_that_starts_and_waits_for_another_instance_does_not_deadlock_on_max_running(
        autojump_clock: trio.testing.MockClock) -> None:
    """A step that calls ``engine.start(...)`` then ``engine.wait(...)`` on another instance (an
    order saga that kicks off a separate "fraud-check" workflow by id, rather than as a child
    step) holds its ``max_running`` slot while the instance it waits for is queued for one.
    With as many such steps in flight as there are slots, nothing can ever run: every outer
    instance hangs until its step timeout (for ever without one). Nothing is logged, and the
    docs only say that *child steps* share their parent's slot so that they cannot deadlock
    ("A family shares slots where waiting for one would deadlock"). Temporal keeps workflow and
    activity slots apart, so an activity that starts and awaits another workflow never starves
    it. A service expects these to complete, or else a prompt error that names ``max_running``
    (or the docs to warn that a step must not wait on an instance it starts with
    ``engine.start``)."""
    holder: dict[str, tf.Engine] = {}

    async def fraud_check(ctx: Any) -> Any:
        return {"ok": True}

    async def order(ctx: Any) -> Any:
        engine = holder["engine"]
        iid = await engine.start("fraud-check", {"order": ctx.input["k"]},
                                 instance_id=f"fraud-{ctx.input['k']}")
        return (await engine.wait(iid)).output

    async with tf.open_engine(max_running=2) as engine:
        holder["engine"] = engine
        engine.register(tf.workflow("fraud-check").step("check", fraud_check).build())
        engine.register(tf.workflow("order").step("place", order, timeout=60).build())
        ids = [await engine.start("order", {"k": k}) for k in range(4)]
        results = [await engine.wait(i) for i in ids]
    for result in results:
        assert result.status == "completed" or "max_running" in (result.error or ""), (
            f"an order step waiting on an instance it started hung for its whole timeout: {result.error}")


async def test_the_slow_subscriber_warning_names_the_subscriber(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """A service with several event consumers (a metrics stream, an audit stream) learns that
    one drops events only from the WARNING ``event subscriber is too slow; dropping events for
    it``: it does not say which subscriber (its pattern, its callback), nor how many events were
    lost, so an operator cannot tell which consumer to fix or how large the gap in the metrics
    is. (The bus counts the drops, ``_Subscriber.dropped``, but nothing reports the count.)"""
    async def step(ctx: Any) -> Any:
        return 1

    with caplog.at_level(logging.WARNING, logger="trioflow"):
        async with tf.open_engine() as engine:
            engine.register(tf.workflow("w").step("a", step).build())
            async with engine.events.subscribe("workflow.completed", buffer=1):
                ids = [await engine.start("w", {"k": k}) for k in range(50)]
                for iid in ids:
                    await engine.wait(iid)
    warnings = [r.getMessage() for r in caplog.records
                if r.name.startswith("trioflow") and "slow" in r.getMessage()]
    assert warnings, "no warning at all for dropped events"
    assert any("workflow.completed" in w for w in warnings), (
        f"the drop warning does not name the subscriber's pattern: {warnings}")


async def test_a_subscriber_that_drops_again_after_catching_up_is_warned_of_again(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """The drop warning is logged once per subscriber for the life of the process (``if not
    sub.dropped``: the count is never reset). In a long-lived service a consumer that fell
    behind once during start-up, caught up, and starts dropping again a week later loses events
    silently: the second gap is never reported. A monitoring consumer expects every new burst of
    drops (after its queue drained) to be warned of, or a count it can read."""
    async def step(ctx: Any) -> Any:
        return 1

    with caplog.at_level(logging.WARNING, logger="trioflow"):
        async with tf.open_engine() as engine:
            engine.register(tf.workflow("w").step("a", step).build())
            async with engine.events.subscribe("workflow.completed", buffer=1) as stream:
                async def burst(n: int) -> None:
                    ids = [await engine.start("w", {"n": n, "k": k}) for k in range(10)]
                    for iid in ids:
                        await engine.wait(iid)
                await burst(1)       # drops: warned
                first = len(caplog.records)
                # The consumer catches up: it drains what is queued and reads a fresh event.
                await stream.receive()
                iid = await engine.start("w", {"alone": True})
                await engine.wait(iid)
                await stream.receive()
                await burst(2)       # drops again, days later in a real service
    slow = [r for r in caplog.records[first:] if "slow" in r.getMessage()]
    assert slow, "a second burst of dropped events, after the subscriber had caught up, was not reported"


async def test_a_start_refused_by_a_locked_database_names_the_database(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """Another process holding the SQLite write lock makes ``start()`` raise
    ``StorageUnavailableError('SQLite create failed: database is locked')``: neither the
    database file nor the instance id is named. Several engines may run in one process ("nothing
    is process-wide"), each on its own file: the service's log line must say which database was
    locked (the wait()/checkpoint error names the instance; this one names nothing)."""
    async def step(ctx: Any) -> Any:
        return 1

    db = tmp_path / "orders.db"
    async with tf.open_engine(adapter=SQLiteAdapter(db, busy_timeout=0.05)) as engine:
        engine.register(tf.workflow("w").step("a", step).build())
        other = sqlite3.connect(db, timeout=0)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(tf.StorageUnavailableError) as raised:
                await engine.start("w", {"k": 1}, instance_id="order-1")
        finally:
            other.rollback()
            other.close()
    message = str(raised.value)
    assert "orders.db" in message or "order-1" in message, (
        f"a locked-database error that names neither the database nor the instance: {message!r}")


# --------------------------------------------------------------------------------------------
# Documented behaviour the review checked under load (passes)
# --------------------------------------------------------------------------------------------


async def test_two_thousand_concurrent_starts_of_one_id_run_it_once(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    runs: list[str] = []
    events: Counter[str] = Counter()

    async def charge(ctx: Any) -> Any:
        runs.append(ctx.metadata.id)
        await trio.sleep(1)
        return {"charged": ctx.input["total"]}

    async with tf.open_engine(adapter=sqlite(tmp_path)) as engine:
        engine.register(tf.workflow("checkout").step("charge", charge).build())
        engine.events.on("workflow.*", lambda e: events.update([e["event"]]))
        got: list[str] = []

        async def client() -> None:
            got.append(await engine.start("checkout", {"total": 42}, instance_id="order-7"))

        async with trio.open_nursery() as nursery:
            for _ in range(2000):
                nursery.start_soon(client)
        assert got == ["order-7"] * 2000
        assert (await engine.wait("order-7")).status == "completed"
    assert runs == ["order-7"]
    assert events["workflow.started"] == 1 and events["workflow.completed"] == 1


@pytest.mark.parametrize("memory", [True, False])
async def test_concurrent_starts_of_one_id_with_different_inputs_one_wins_the_rest_conflict(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, memory: bool) -> None:
    runs: list[Any] = []

    async def step(ctx: Any) -> Any:
        runs.append(ctx.input)
        return 1

    adapter = tf.adapters.MemoryAdapter() if memory else sqlite(tmp_path)
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("w").step("a", step).build())
        outcome: Counter[Any] = Counter()

        async def client(k: int) -> None:
            try:
                await engine.start("w", {"variant": k % 3}, instance_id="x")
                outcome[k % 3] += 1
            except tf.InstanceIdConflictError:
                outcome["conflict"] += 1

        async with trio.open_nursery() as nursery:
            for k in range(1500):
                nursery.start_soon(client, k)
        await engine.wait("x")
    winners = [v for v in (0, 1, 2) if outcome[v]]
    assert len(winners) == 1 and outcome["conflict"] == 1000
    assert runs == [{"variant": winners[0]}]


@pytest.mark.parametrize("memory", [True, False])
async def test_cancel_racing_the_last_step_says_yes_only_if_it_cancelled(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, memory: bool) -> None:
    """cancel() and wait() issued in the instant the last step's job returns: the answer and
    the outcome agree (True and cancelled, or False and completed), a single terminal event, and
    a step whose job returned is compensated if the instance is cancelled after all."""
    charged: list[str] = []
    refunded: list[str] = []
    returned: dict[str, trio.Event] = {}

    async def reserve(ctx: Any) -> Any:
        return 1

    async def charge(ctx: Any) -> Any:
        await trio.sleep(1)
        charged.append(ctx.metadata.id)
        returned[ctx.metadata.id].set()
        return {"charge": "ch_1"}

    async def refund(ctx: Any, result: Any) -> None:
        refunded.append(ctx.metadata.id)

    async def mail(ctx: Any) -> Any:
        await trio.sleep(1)
        return 1

    adapter = tf.adapters.MemoryAdapter() if memory else sqlite(tmp_path)
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("last").step("reserve", reserve).step("charge", charge, refund).build())
        engine.register(tf.workflow("middle").step("reserve", reserve).step("charge", charge, refund)
                        .step("mail", mail).build())
        ends: Counter[str] = Counter()
        engine.events.on("workflow.*", lambda e: ends.update(
            [e["instance_id"]] if e["event"] in ("workflow.completed", "workflow.cancelled") else []))
        for name in ("last", "middle"):
            for k in range(5):
                iid = f"{name}-{k}"
                returned[iid] = trio.Event()
                await engine.start(name, {"k": k}, instance_id=iid)
                await returned[iid].wait()
                for _ in range(k):
                    await trio.lowlevel.checkpoint()
                said: dict[str, Any] = {}

                async def waiter(iid: str = iid) -> None:
                    said["result"] = await engine.wait(iid)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(waiter)
                    said["cancel"] = await engine.cancel(iid)
                status = said["result"].status
                assert (said["cancel"], status) in {(True, "cancelled"), (False, "completed")}
                assert (await engine.get_instance(iid)).status == status
                assert ends[iid] == 1
                assert (iid in refunded) == (status == "cancelled")
                assert await engine.cancel(iid) is False


async def test_retain_finished_zero_callers_that_start_then_wait_get_their_outcome(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    async def step(ctx: Any) -> Any:
        return ctx.input["k"]

    async with tf.open_engine(adapter=sqlite(tmp_path), retain_finished=0) as engine:
        engine.register(tf.workflow("w").step("a", step).build())
        outputs: dict[int, Any] = {}

        async def handler(k: int) -> None:
            iid = await engine.start("w", {"k": k})
            outputs[k] = (await engine.wait(iid)).output

        async with trio.open_nursery() as nursery:
            for k in range(2000):
                nursery.start_soon(handler, k)
        assert outputs == {k: k for k in range(2000)}
        await trio.sleep(120)
        assert await engine.get_instances() == []


async def test_leaving_the_block_mid_compensation_releases_waiters_and_the_next_engine_finishes(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    failed_events: Counter[str] = Counter()
    on_failed: list[str] = []

    async def reserve(ctx: Any) -> Any:
        return ctx.metadata.id

    async def release(ctx: Any, result: Any) -> None:
        await trio.sleep(10)

    async def charge(ctx: Any) -> Any:
        raise PermissionError("card declined")

    wf = (tf.workflow("checkout").step("reserve", reserve, release).step("hold", reserve, release)
          .step("charge", charge).with_hooks(on_failed=lambda r: on_failed.append(r.instance_id)).build())
    outcomes: dict[str, str] = {}
    async with trio.open_nursery() as nursery:
        async with tf.open_engine(adapter=sqlite(tmp_path)) as engine:
            engine.register(wf)
            engine.events.on("workflow.failed", lambda e: failed_events.update([e["instance_id"]]))
            ids = [await engine.start("checkout", {"i": i}) for i in range(300)]

            async def waiter(iid: str) -> None:
                try:
                    outcomes[iid] = (await engine.wait(iid)).status
                except tf.EngineClosedError:
                    outcomes[iid] = "closed"

            for iid in ids:
                nursery.start_soon(waiter, iid)
            await trio.sleep(12)   # "hold" released, "reserve" being released
    assert set(outcomes.values()) == {"closed"}
    async with tf.open_engine(adapter=sqlite(tmp_path)) as engine:
        engine.register(wf)
        engine.events.on("workflow.failed", lambda e: failed_events.update([e["instance_id"]]))
        for iid in ids:
            result = await engine.wait(iid)
            assert result.status == "failed" and result.compensated_steps == ("hold", "reserve")
        await trio.sleep(1)
    assert len(failed_events) == 300 and set(failed_events.values()) == {1}
    assert sorted(on_failed) == sorted(ids)


@pytest.mark.parametrize("how", ["leave", "cancel"])
async def test_starts_racing_the_engines_close_either_return_a_stored_id_or_say_so(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, how: str) -> None:
    ran: Counter[str] = Counter()

    async def step(ctx: Any) -> Any:
        ran[ctx.metadata.id] += 1
        return 1

    wf = tf.workflow("w").step("a", step).build()
    answers: dict[int, Any] = {}
    async with trio.open_nursery() as handlers:
        with trio.CancelScope() as scope:
            async with tf.open_engine(adapter=sqlite(tmp_path)) as engine:
                engine.register(wf)

                async def handler(k: int) -> None:
                    await trio.sleep(k * 0.001)
                    try:
                        answers[k] = await engine.start("w", {"k": k}, instance_id=f"o{k}")
                    except tf.EngineClosedError as exc:
                        answers[k] = exc

                for k in range(1000):
                    handlers.start_soon(handler, k)
                await trio.sleep(0.5)
                if how == "cancel":
                    scope.cancel()
    async with tf.open_engine(adapter=sqlite(tmp_path)) as engine:
        engine.register(wf)
        stored = {i.id for i in await engine.get_instances()}
        for k, answer in answers.items():
            if isinstance(answer, str):
                assert answer in stored
            elif f"o{k}" in stored:
                assert "stored" in str(answer) and "resumes" in str(answer)
        for iid in stored:
            assert (await engine.wait(iid)).status == "completed"
    assert set(ran.values()) == {1}


async def test_a_lock_held_past_storage_retry_for_stalls_instances_until_resume(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    async def step(ctx: Any) -> Any:
        await trio.sleep(1)
        return 1

    db = tmp_path / "svc.db"
    async with tf.open_engine(adapter=SQLiteAdapter(db, busy_timeout=0.01), storage_retry_for=3,
                              retain_finished=1) as engine:
        engine.register(tf.workflow("w").step("a", step).step("b", step).build())
        ids = [await engine.start("w", {"k": k}) for k in range(20)]
        other = sqlite3.connect(db, timeout=0)
        other.execute("BEGIN EXCLUSIVE")
        await trio.sleep(20)
        for iid in ids:
            with pytest.raises(tf.StorageUnavailableError) as raised:
                await engine.wait(iid)
            assert iid in str(raised.value) and "locked" in str(raised.value)
        other.rollback()
        other.close()
        await engine.resume()
        for iid in ids:
            try:
                assert (await engine.wait(iid)).status == "completed"
            except tf.UnknownInstanceError:
                pass   # finished and purged by retention already
        await trio.sleep(100)
        assert await engine.get_instances() == []   # retention survived the outage


async def test_listing_pages_while_instances_churn_list_each_once_in_creation_order(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    async def step(ctx: Any) -> Any:
        await trio.sleep(ctx.input["d"])
        return 1

    async with tf.open_engine(adapter=sqlite(tmp_path), max_running=50) as engine:
        engine.register(tf.workflow("w").step("a", step).build())
        ids = [await engine.start("w", {"d": (i * 7) % 13}) for i in range(600)]

        async def more() -> None:
            for _ in range(200):
                await engine.start("w", {"d": 1})
                await trio.sleep(0.01)

        seen: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(more)
            after: Any = None
            while True:
                page = await engine.get_instances("w", limit=37, after=after)
                seen += [i.id for i in page]
                if len(page) < 37:
                    break
                after = page[-1]
                await trio.sleep(0.05)
        assert len(seen) == len(set(seen)) and seen[:600] == ids
        for status in ("running", "pending", "completed"):
            after = None
            listed: list[str] = []
            while True:
                page = await engine.get_instances(status=status, limit=20, after=after)
                assert all(i.status == status for i in page)
                listed += [i.id for i in page]
                if len(page) < 20:
                    break
                after = page[-1]
                await trio.sleep(0.3)
            assert len(listed) == len(set(listed))


async def test_max_running_one_with_children_maps_and_timers_completes(
        autojump_clock: trio.testing.MockClock) -> None:
    async def step(ctx: Any) -> Any:
        return 1

    child = tf.workflow("invoice").step("a", step).wait("t", seconds=5).step("b", step).build()
    parent = (tf.workflow("batch").step("x", step).child("one", workflow="invoice")
              .map("each", items=lambda ctx: [1, 2, 3], branch=tf.branch("b").child("bill", workflow="invoice").build())
              .wait("later", seconds=3).build())
    async with tf.open_engine(max_running=1) as engine:
        engine.register(child)
        engine.register(parent)
        ids = [await engine.start("batch", {"n": n}) for n in range(5)]
        with trio.fail_after(10_000):
            for iid in ids:
                assert (await engine.wait(iid)).status == "completed"


async def test_threads_call_the_engine_through_trio_from_thread(tmp_path: Path) -> None:
    async def double(ctx: Any) -> Any:
        return ctx.input["n"] * 2

    async with tf.open_engine(adapter=sqlite(tmp_path)) as engine:
        engine.register(tf.workflow("w").step("a", double).build())
        completed: list[dict[str, Any]] = []
        token = engine.trio_token
        await trio.to_thread.run_sync(lambda: trio.from_thread.run_sync(
            engine.events.on, "workflow.completed", completed.append, trio_token=token))

        def worker(n: int) -> Any:
            iid = trio.from_thread.run(engine.start, "w", {"n": n}, trio_token=token)
            return trio.from_thread.run(engine.wait, iid, trio_token=token).output

        outputs: list[Any] = []
        async with trio.open_nursery() as nursery:
            async def run(n: int) -> None:
                outputs.append(await trio.to_thread.run_sync(worker, n))
            for n in range(40):
                nursery.start_soon(run, n)
        assert sorted(o["a"] if isinstance(o, dict) else o for o in outputs) == [2 * n for n in range(40)]
        assert len(completed) == 40

        def direct() -> BaseException | None:
            try:
                engine.register(tf.workflow("v").step("a", double).build())
            except BaseException as exc:
                return exc
            return None

        refused = await trio.to_thread.run_sync(direct)
        assert isinstance(refused, tf.WrongTrioRunError) and "from_thread" in str(refused)


async def test_slow_and_raising_subscribers_do_not_slow_the_sagas(
        autojump_clock: trio.testing.MockClock) -> None:
    async def slow(event: dict[str, Any]) -> None:
        await trio.sleep(100)

    def raises(event: dict[str, Any]) -> None:
        raise RuntimeError("metrics backend down")

    async def step(ctx: Any) -> Any:
        return 1

    async with tf.open_engine() as engine:
        engine.register(tf.workflow("w").step("a", step).build())
        engine.events.on("workflow.*", slow)
        engine.events.on("workflow.*", raises)
        began = trio.current_time()
        ids = [await engine.start("w", {"k": k}) for k in range(300)]
        for iid in ids:
            assert (await engine.wait(iid)).status == "completed"
        assert trio.current_time() - began < 1


async def test_a_second_engine_on_the_same_file_is_refused_by_name(tmp_path: Path) -> None:
    async with tf.open_engine(adapter=sqlite(tmp_path)):
        with pytest.raises(tf.AdapterInUseError) as raised:
            async with tf.open_engine(adapter=sqlite(tmp_path)):
                pass
    assert "svc.db" in str(raised.value) and "one engine per database file" in str(raised.value)
    async with tf.open_engine(adapter=sqlite(tmp_path)):
        pass   # free again once the first closed
