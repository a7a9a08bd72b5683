"""From an adversarial review of e80610c (a compensation's retry attempts stored on the main lane
before each delay, as ``{"undo": seq, "undo_attempt": n, "undo_at": due}``). Both failed until the
commit that added this file: a checkpoint made between a step's or a compensation's attempts that
storage refuses is the run's failure (it stops as last stored, for a resume), not the step's
(the first, new in e80610c; the second older). On trio's autojumping MockClock."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


class _StorageBlip(tf.adapters.MemoryAdapter):
    """A MemoryAdapter whose next ``fail`` checkpoints raise StorageUnavailableError (a database
    locked by another connection for a moment), then work again."""

    fail = 0

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail:
            self.fail -= 1
            raise tf.StorageUnavailableError("database is locked")
        return await super().checkpoint(*args, **kwargs)


async def _wait_through_outage(engine: Any, iid: str) -> Any:
    """``wait()``; if the instance stopped on storage (README: it stops where it was last stored,
    resumable by ``engine.resume()``), resume it and wait again."""
    for _ in range(3):
        try:
            return await engine.wait(iid)
        except tf.StorageUnavailableError:
            await engine.resume()
    raise AssertionError("never ended")


async def test_a_storage_blip_while_a_compensation_stores_its_attempts_does_not_give_up_the_refund(
        autojump_clock: trio.testing.MockClock) -> None:
    """A user's refund (Retry(max_attempts=3, interval=10)) fails once; the payment service is
    back a moment later. While the engine stores the refund's attempt count before the retry
    delay (new in e80610c), the database is locked for about a second, a bit longer than
    ``storage_retry_for=1``. README, Storage failures: "If storage is still unusable then, the
    instance stops where it was last stored, resumable by the next engine or engine.resume() ...
    It is never marked failed without compensation." Before e80610c a compensation's retries
    stored nothing, so a storage blip could not touch them. The user expects the refund tried
    again once resumed (as attempt 1: its count was not stored) and ``charge`` compensated.
    Was: the StorageUnavailableError of that checkpoint is taken for the refund's own failure:
    the compensation is given up after one attempt, ``compensation_errors == {"charge":
    "StorageUnavailableError: database is locked"}``; the money is never refunded."""
    calls: list[int] = []
    adapter = _StorageBlip()

    async def charge(ctx: Any) -> str:
        return "ch-1"

    async def refund(ctx: Any, result: str) -> None:
        calls.append(tf.current_step().attempt)
        if len(calls) == 1:  # (the first call only: a resume runs attempt 1 again)
            adapter.fail = 5  # (retried at 0, .05, .15, .35, .75 s; gives up before 1.55 s)
            raise ConnectionError("payments down")

    async def ship(ctx: Any) -> None:
        raise ValueError("out of stock")

    wf = (tf.workflow("order")
          .step("charge", charge, refund, retry=tf.Retry(max_attempts=3, interval=10.0))
          .step("ship", ship).build())
    async with open_test_engine(adapter=adapter, storage_retry_for=1.0) as engine:
        engine.register(wf)
        iid = await engine.start("order", {})
        done = await _wait_through_outage(engine, iid)
    assert done.compensation_errors == {}, "a storage blip is not the refund's failure"
    assert done.compensated_steps == ("charge",)
    assert len(calls) == 2  # (the count's store failed: after the resume it is attempt 1 again)


async def test_a_storage_blip_while_a_step_stores_its_retry_delay_does_not_fail_the_step(
        autojump_clock: trio.testing.MockClock) -> None:
    """The same blip on a forward step (left by e80610c, the path it copied): a charge with
    Retry(max_attempts=3, interval=10) fails once; the checkpoint that stores its retry delay
    meets a database locked a bit longer than ``storage_retry_for=1``. README, Storage failures:
    the instance "stops where it was last stored, resumable by ... engine.resume()". The user
    expects the charge tried again and the instance completed.
    Was: the charge's execution is recorded failed with "StorageUnavailableError: database is
    locked" (attempts 1) and the instance fails; nothing is retried."""
    calls: list[int] = []
    adapter = _StorageBlip()

    async def charge(ctx: Any) -> str:
        calls.append(tf.current_step().attempt)
        if len(calls) == 1:  # (the first call only: a resume runs attempt 1 again)
            adapter.fail = 5
            raise ConnectionError("payments down")
        return "ch-1"

    wf = tf.workflow("pay").step("charge", charge, retry=tf.Retry(max_attempts=3, interval=10.0)).build()
    async with open_test_engine(adapter=adapter, storage_retry_for=1.0) as engine:
        engine.register(wf)
        iid = await engine.start("pay", {})
        done = await _wait_through_outage(engine, iid)
    assert done.status == "completed", done.error
    assert done.output == "ch-1" and len(calls) == 2
