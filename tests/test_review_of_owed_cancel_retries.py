"""From an adversarial re-review of 09e3aa0 (owed cancels told by what this engine stored since)
and ec7ee9a (explore_crashes compares shared data). The first two tests, and the last (the
README's retry made while the first store was under way, in some scheduling orders), failed
until the commit that added this file; the two between guard explore_crashes against false
reports. Real adapters, trio's autojumping MockClock."""
from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import CrashDivergenceError, explore_crashes, open_test_engine, run

from slow_starts import in_scheduling_order, noting


STORE = 15.0  # storing a start takes longer than cancel()'s 10 s wait


class _Storage(tf.adapters.MemoryAdapter):
    """``slow_create``: storing a start takes 15 s; ``fail_create``: it then raises having written
    nothing (a refused connection); ``slow_load``: reading a row takes 5 s before it reads."""

    slow_create = False
    fail_create = False
    slow_load = False
    fail_until = -1.0  # reads fail until then (trio time: a transient StorageUnavailableError)

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if self.slow_create:
            await trio.sleep(STORE)
            if self.fail_create:
                raise tf.StorageUnavailableError("connection refused")
        return await super().create(instance_id, *args, **kwargs)

    async def load(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if self.slow_load:
            await trio.sleep(5)
        if trio.current_time() < self.fail_until:
            raise tf.StorageUnavailableError("read failed (transient)")
        return await super().load(instance_id, *args, **kwargs)


def test_start_made_after_the_store_was_over_is_not_cancelled_whatever_the_scheduling_order() -> None:
    """``start("card", instance_id="c")`` is slow to store; ``cancel("c")`` at 0.1 s says True at
    10.1 s; at 15 s the store fails having written nothing (``StorageUnavailableError``). The
    client then starts ``c`` again (a new order, made after the cancel returned and after the
    first store was over). 09e3aa0 (``_Storing.made_it``): the owed cancel is of a row "one of
    its tries made" or there before, "as no start of the id made since in this engine made it"
    (``newer``). The user expects the same answer whether storage takes 0 s or 15 s to store the
    new start: the new order runs.

    Was: with storage fast, the new order ran (its creation time is in ``newer``); with
    storage slow, the owed cancel (runtime/_engine.py ``_owed_cancel_of``, ``attempt``) found the
    new start's store under way and handed itself on to it (``again.cancel_owed = ...``), so the
    order started after the cancel is cancelled before its first step, in some runs only: which
    runs first, the owed cancel's task or the client's retry, is trio's (random) scheduling
    order, so the test plays the scenario with trio's scheduler seeded 0..15 (about one in four
    cancels the new order)."""
    log: list[str] = []

    async def charge(ctx: Any) -> str:
        log.append("charge")
        return "charged"

    card = tf.workflow("card").step("charge", charge).build()
    storage = _Storage()
    said: list[Any] = []
    call = noting(said)

    async def main() -> Any:
        storage.slow_create = storage.fail_create = True
        async with open_test_engine(adapter=storage) as engine:
            engine.register(card)

            async def client() -> None:
                try:
                    await engine.start("card", "x", instance_id="c")
                except tf.StorageUnavailableError:
                    said.append("first start failed")
                storage.fail_create = False
                storage.slow_create = True  # (stored at once instead: never cancelled)
                said.append(await engine.start("card", "x", instance_id="c"))  # a new order

            async with trio.open_nursery() as nursery:
                nursery.start_soon(client)
                await trio.sleep(0.1)
                nursery.start_soon(call, engine.cancel, "c")
            with trio.fail_after(5000):
                return await engine.wait("c")

    outcomes = {}
    for seed in range(16):
        in_scheduling_order(seed)  # (trio's scheduling order, made repeatable)
        log.clear()
        said.clear()
        storage = _Storage()
        done = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        outcomes[seed] = (done.status, tuple(log), tuple(map(str, said)))
    wrong = {seed: got for seed, got in outcomes.items() if got[:2] != ("completed", ("charge",))}
    assert not wrong, wrong


# -- explore_crashes and shared data (ec7ee9a) --------------------------------------------------


def _minting_service() -> tuple[dict[str, Any], Any]:
    service: dict[str, Any] = {"n": 0}

    def reset() -> None:
        service["n"] = 0

    return service, reset


def test_explore_crashes_reports_a_childs_non_idempotent_shared_data() -> None:
    """The same non-idempotent ``charge`` step ec7ee9a's test catches (a new charge id on every
    call, kept with ``ctx.set``, returning nothing), moved into a child workflow ``payment`` that
    an ``order`` starts with a child step (``also=[payment]``). docs/testing.md: with ``also=``
    "each child is checked as the root is", and for a workflow that runs one step at a time with
    no timeout, its shared data is compared to the fault-free run's.

    Expected: ``CrashDivergenceError`` (the child's row ends with ``ch-2`` where the fault-free
    run's child has ``ch-1``).
    Was: the exploration passes: runtime/testing/_crashes.py reads the shared data of the
    root only (``_shared_data(engine, INSTANCE_ID)``); each child's ``Outcome`` is built with
    ``data={}``, so ``_same_run`` compares two empty dicts for every child."""
    service, reset = _minting_service()

    async def charge(ctx: tf.WorkflowContext) -> None:
        service["n"] += 1
        ctx.set("charge_id", f"ch-{service['n']}")

    async def done(ctx: tf.WorkflowContext) -> str:
        return "paid"

    payment = tf.workflow("payment").step("charge", charge).step("done", done).build()
    order = tf.workflow("order").child("pay", workflow="payment").build()

    async def main() -> None:
        await explore_crashes(order, {"order": 1}, also=[payment], before_run=reset)

    with pytest.raises(CrashDivergenceError, match="charge"):
        run(main)


def test_explore_crashes_passes_a_loop_that_counts_in_shared_data() -> None:
    """(A guard: passes today.) A Step Functions style loop: ``bump`` sets ``ctx.set("n", ctx.get("n", 0) + 1)`` and a
    choice goes back to it until ``n`` is 3. Deterministic and idempotent (a step run again
    after a resume starts from the data stored before it). Expected: no report."""

    async def bump(ctx: tf.WorkflowContext) -> None:
        ctx.set("n", ctx.get("n", 0) + 1)

    async def finish(ctx: tf.WorkflowContext) -> int:
        return ctx.get("n")

    wf = (tf.workflow("count")
          .step("bump", bump)
          .choice("again", choices=[tf.when(lambda ctx: ctx.get("n") < 3, next="bump")], default="finish")
          .step("finish", finish)
          .build())

    async def main() -> Any:
        return await explore_crashes(wf, {})

    run(main)


def test_explore_crashes_passes_data_set_by_a_compensation_and_a_catch() -> None:
    """(A guard: passes today.) ``reserve`` sets ``ctx.set("reserved", True)``; its compensation sets it False; ``pay``
    fails; a catch on ``risky`` puts the error into shared data (``result="err"``) and goes on.
    A tuple holding a NaN is kept too. Each is idempotent. Expected: no report."""

    async def reserve(ctx: tf.WorkflowContext) -> None:
        ctx.set("reserved", True)
        ctx.set("items", (1, 2.0, float("nan")))

    async def unreserve(ctx: tf.WorkflowContext, result: Any) -> None:
        ctx.set("reserved", False)

    async def risky(ctx: tf.WorkflowContext) -> None:
        raise ValueError("nope")

    async def pay(ctx: tf.WorkflowContext) -> None:
        raise RuntimeError("card declined")

    wf = (tf.workflow("saga")
          .step("reserve", reserve, compensate=unreserve)
          .step("risky", risky, catch=[tf.Catch(errors=["ValueError"], next="pay", result="err")])
          .step("pay", pay)
          .build())

    async def main() -> Any:
        return await explore_crashes(wf, {})

    run(main)


def test_a_retry_made_while_the_first_store_was_under_way_is_cancelled_whatever_the_scheduling_order() -> None:
    """README (cancel): "an instance whose start was still being stored is cancelled once that
    store is over, and so is what a retry of that start, under the same id and workflow, stores
    meanwhile". ``start("card", instance_id="c")`` is slow to store; the client, impatient,
    calls ``start`` again at 5 s (it waits for the first store); ``cancel("c")`` at 0.1 s says
    True at 10.1 s; at 15 s the first store fails having written nothing, and the retry stores
    the instance: it is cancelled before its first step, whatever the scheduling order."""
    log: list[str] = []

    async def charge(ctx: Any) -> str:
        log.append("charge")
        return "charged"

    card = tf.workflow("card").step("charge", charge).build()
    said: list[Any] = []

    async def main() -> Any:
        storage = _Storage()
        storage.slow_create = storage.fail_create = True
        async with open_test_engine(adapter=storage) as engine:
            engine.register(card)

            async def first() -> None:
                try:
                    await engine.start("card", "x", instance_id="c")
                except tf.StorageUnavailableError:
                    said.append("first start failed")
                    storage.slow_create = storage.fail_create = False

            async def retry() -> None:
                await trio.sleep(5)
                said.append(await engine.start("card", "x", instance_id="c"))

            async def cancel() -> None:
                await trio.sleep(0.1)
                said.append(await engine.cancel("c"))

            async with trio.open_nursery() as nursery:
                for task in (first, retry, cancel):
                    nursery.start_soon(task)
            with trio.fail_after(5000):
                return await engine.wait("c")

    for seed in range(8):
        in_scheduling_order(seed)  # (trio's scheduling order, made repeatable)
        log.clear()
        said.clear()
        done = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        assert True in said and "first start failed" in said, (seed, said)
        assert (done.status, log) == ("cancelled", []), (seed, done.status, log, said)
