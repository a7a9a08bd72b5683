"""Regressions an adversarial review of this session's fixes found (each test failed before its
fix): entity-step ledger keys of a reused id, listings by status, false reports of the crash
explorer's idempotency check, matching past the message cap, and a cancel of a queued instance."""
from __future__ import annotations

import sqlite3
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, MemoryDriver, SQLiteAdapter, SQLiteDriver
from trioflow.testing import explore_crashes, open_test_engine, run, virtual_wall_clock


# -- 1. Entity-step run ledger: an instance id reused at the same clock instant takes the
#       earlier instance's ledger entry (key = instance id + created_at + execution) ---------------

def _item_driver(kind: str, tmp_path: Any) -> Any:
    if kind == "memory":
        return MemoryDriver({"item": [{"id": 1, "n": 0}]})
    path = tmp_path / "d.db"
    with sqlite3.connect(path) as c:
        c.executescript("CREATE TABLE item (id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO item VALUES (1, 0);")
    return SQLiteDriver(path)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_instance_id_started_again_in_the_same_instant_writes_its_own_rows(kind, tmp_path, autojump_clock) -> None:
    driver = _item_driver(kind, tmp_path)
    wf = tf.workflow("w").step(tf.create_entity_step("mk", "item", lambda c: {"n": c.input})).build()
    async with open_test_engine(driver=driver) as engine:
        engine.register(wf)
        first = await engine.wait(await engine.start("w", 5, instance_id="i"))
        assert await engine.purge(older_than=0) == 1            # finished: purged
        second = await engine.wait(await engine.start("w", 5, instance_id="i"))   # started again
    assert first.created_at < second.created_at  # the same virtual instant, told apart
    rows = await driver.find_many("item", {})
    # Got 2 rows: the second instance's create "found" the first instance's ledger entry and
    # returned the first row ({'n': 5, 'id': 2}) without creating anything.
    assert len(rows) == 3, rows


# -- 2. get_instances(status=X) returns views whose status is not X -----------------------------

class SlowList(MemoryAdapter):
    """A store whose listing answer takes a while to travel back (any remote adapter)."""

    async def list_instances(self, *a: Any, **kw: Any) -> Any:
        out = await super().list_instances(*a, **kw)
        await trio.sleep(5)
        return out


async def test_a_listing_by_status_holds_only_that_status_while_an_admission_lands(autojump_clock) -> None:
    gate = trio.Event()

    async def job(d: Any) -> None:
        if d == "first":
            await gate.wait()
        else:
            await trio.sleep(100)

    async with open_test_engine(adapter=SlowList(), max_running=1) as engine:
        engine.register(tf.workflow("w").task("a", job=job).build())
        await engine.start("w", "first")
        second = await engine.start("w", "second")              # queued: stored pending

        async def free() -> None:
            await trio.sleep(1)
            gate.set()                                           # second is admitted meanwhile

        async with trio.open_nursery() as n:
            n.start_soon(free)
            pending = await engine.get_instances(status="pending")
        running = await engine.get_instances(status="running")
        await engine.cancel(second)
    # Got [second] with status 'running': listed under two statuses, and a "pending" listing
    # holds a running view.
    assert all(i.status == "pending" for i in pending), [(i.id, i.status) for i in pending]
    assert [i.id for i in running] == [second]


async def test_listings_by_status_hold_only_that_status_on_sqlite_with_real_threads(tmp_path) -> None:
    async def job(d: Any) -> None:
        await trio.sleep(0.001)

    bad: list[tuple[str, str]] = []
    with trio.fail_after(60):
        async with tf.open_engine(adapter=SQLiteAdapter(tmp_path / "f.db", synchronous="NORMAL"),
                                  max_running=2) as engine:
            engine.register(tf.workflow("w").task("a", job=job).build())
            ids = [await engine.start("w", i) for i in range(300)]
            done = False

            async def lister() -> None:
                while not done:
                    for st in ("pending", "running"):
                        for i in await engine.get_instances(status=st):
                            if i.status != st:
                                bad.append((st, i.status))

            async with trio.open_nursery() as n:
                n.start_soon(lister)
                for i in ids:
                    await engine.wait(i)
                done = True
    # Got dozens of ('running', 'pending') and ('pending', 'running') pairs.
    assert not bad, bad[:5]


# -- 3. explore_crashes' new "returns what it returned first" check: false positives --------------

class Response:  # what an HTTP client returns: no __eq__
    def __init__(self, body: Any) -> None:
        self.body = body


async def _ship(d: Any) -> str:
    return "s"


def test_the_explorer_takes_nan_for_the_same_result() -> None:
    async def measure(d: Any) -> float:
        return float("nan")            # a fresh NaN each call (0/0 ratio, parsed "NaN", ...)

    wf = tf.workflow("w").task("m", job=measure).task("r", job=_ship).build()
    run(lambda: explore_crashes(wf, None))   # CrashDivergenceError: "returned nan, where its first run returned nan"


def test_the_explorer_does_not_judge_a_result_that_is_not_storable_as_it_is() -> None:
    async def call(d: Any) -> Response:
        return Response({"id": "x-1"})

    wf = tf.workflow("w").task("a", job=call, output=lambda r, ctx: r.body).task("b", job=_ship).build()
    run(lambda: explore_crashes(wf, None))   # CrashDivergenceError: "<Response object at 0x..>" twice


def test_the_explorer_compares_a_result_as_returned_before_an_output_mapper_trims_it() -> None:
    async def fetch(d: Any) -> dict[str, str]:
        return {"id": "x-1", "raw": "<big payload>"}

    def trim(result: dict[str, str], ctx: Any) -> dict[str, str]:
        del result["raw"]
        return result

    wf = tf.workflow("w").task("a", job=fetch, output=trim).task("b", job=_ship).build()
    run(lambda: explore_crashes(wf, None))   # "returned {..'raw'..}, where its first run returned {'id': 'x-1'}"


def test_the_explorer_does_not_judge_what_a_compensation_returns() -> None:
    async def reserve(d: Any) -> str:
        return "r"

    async def release(d: Any) -> Response:
        return Response("released")    # a compensation's return value is discarded by trioflow

    async def boom(d: Any) -> None:
        raise RuntimeError("x")

    wf = tf.workflow("w").task("a", job=reserve, compensate=release).task("b", job=boom).build()
    run(lambda: explore_crashes(wf, None))


# -- 4. The 32,768-character cap also cuts what retry_on / catch strings match against ----------

async def test_retry_on_matches_text_past_the_recorded_messages_cap(autojump_clock) -> None:
    calls: list[int] = []

    async def flaky(d: Any) -> str:
        calls.append(1)
        if len(calls) < 2:
            raise RuntimeError("x" * 40_000 + " (temporarily unavailable)")
        return "ok"

    wf = tf.workflow("w").task("a", job=flaky, retry=tf.Retry(max_attempts=3, retry_on="temporarily unavailable")).build()
    async with open_test_engine() as engine:
        engine.register(wf)
        inst = await engine.wait(await engine.start("w"))
    assert inst.status == "completed", inst.status              # got 'failed', not retried


async def test_catch_matches_text_past_the_recorded_messages_cap(autojump_clock) -> None:
    async def bad(d: Any) -> None:
        raise RuntimeError("x" * 40_000 + " CardDeclined")

    wf = (tf.workflow("w").task("a", job=bad, catch=[tf.Catch(errors=["CardDeclined"], next="n")])
          .succeed("s").pass_("n", end=True).build())
    async with open_test_engine() as engine:
        engine.register(wf)
        inst = await engine.wait(await engine.start("w"))
    assert inst.status == "completed", inst.status              # got 'failed', not caught


# -- 5. cancel() of a woken instance queued for a slot: acknowledged, then lost by a restart ------

async def test_a_cancel_of_a_woken_instance_queued_for_a_slot_survives_a_restart(autojump_clock) -> None:
    log: list[str] = []

    async def reserve(d: Any) -> str:
        log.append("reserve")
        return "r"

    async def release(d: Any) -> None:
        log.append("release")

    async def ship(d: Any) -> str:
        log.append("ship")
        return "s"

    async def block(d: Any) -> None:
        await trio.sleep(10_000)

    saga = (tf.workflow("saga").task("reserve", job=reserve, compensate=release)
            .wait("later", seconds=100).task("ship", job=ship).build())
    blocker = tf.workflow("blocker").task("b", job=block).build()
    adapter, clock = MemoryAdapter(), virtual_wall_clock()
    async with open_test_engine(adapter=adapter, clock=clock, max_running=1) as engine:
        engine.register(saga)
        engine.register(blocker)
        x = await engine.start("saga")
        await trio.sleep(10)                      # reserved, parked on its timer (no slot)
        await engine.start("blocker")             # takes the only slot
        await trio.sleep(1)
        assert await engine.cancel(x) is True     # "now being cancelled": woken, queued
        await trio.sleep(1)
    async with open_test_engine(adapter=adapter, clock=clock) as engine:   # a deploy/restart
        engine.register(saga)
        engine.register(blocker)
        with trio.fail_after(1000):
            inst = await engine.wait(x)
    # Got 'completed' with log ['reserve', 'ship']: the cancel that returned True never happened.
    assert inst.status == "cancelled", (inst.status, log)
