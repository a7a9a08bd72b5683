"""From an adversarial review of 2fa7dd1. On trio's autojumping MockClock, real adapters
(MemoryAdapter / SQLiteAdapter on a tmp_path file; a MemoryAdapter subclass that only sleeps
before a call). The first test failed until the commit that added this file; the last two
guard fragile behaviour that held under review."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow.testing import open_test_engine

_R5 = tf.Retry(max_attempts=5, interval=60.0, max_interval=60.0, backoff_rate=1.0)

# A class made with type() (a generated client's error, an exception factory): 354e118 made
# class names recorded whole again, so that such an error still matches a catch by class.
_LongNamedGatewayError = type("PaymentGateway" + "Timeout" * 40 + "Error", (ConnectionError,), {})


async def test_a_deploy_lowering_retries_still_catches_a_long_named_error_by_class(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A user's ``charge`` step raises an exception class with a long generated name (over 256
    characters) and routes it with ``catch=[tf.Catch(errors=[ThatClass], next="give_up")]``.
    They deploy a release lowering ``max_attempts`` from 5 to 2 while an instance waits out
    its third attempt's delay. README: the step then fails with the last attempt's error
    rather than try again; 354e118: "exception class names are recorded whole again (cut, a
    child's long-named error no longer matched its parent's catch by class)". The user expects
    the catch to route it to ``give_up``, as it routes the same error under either release.
    Was: the retry delay's wait kept the error name cut to 256 characters
    (``_kept_error``: ``capped(error_name(error), KEPT_ERROR_TEXT)``, with a "... (N more
    characters cut)" note, not even a prefix), so the recorded error's name no longer matches
    the class: the catch is skipped and the instance fails at ``charge``."""
    db = tmp_path / "flows.db"

    def release(retry: tf.Retry) -> tf.WorkflowDefinition:
        async def charge(ctx: Any) -> None:
            raise _LongNamedGatewayError("payment gateway timed out")

        async def give_up(ctx: Any) -> str:
            return "queued for a person"

        return (tf.workflow("pay").step("charge", charge, retry=retry,
                                        catch=[tf.Catch(errors=[_LongNamedGatewayError], next="give_up")])
                .succeed("paid").step("give_up", give_up).build())

    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(release(_R5))
        iid = await engine.start("pay", {"order": 1})
        await trio.sleep(130)  # attempts at 0, 60 and 120 failed; the fourth is due at 180
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:  # the deploy
        engine.register(release(tf.Retry(max_attempts=2, interval=60.0, max_interval=60.0)), replace=True)
        done = await engine.wait(iid)
    assert (done.status, done.output) == ("completed", "queued for a person"), (done.status, done.error_name)


# -- guards (held under review) -----------------------------------------------------------

class _SlowCreate(tf.adapters.MemoryAdapter):
    """Creating instance 'p' takes ``delay`` seconds (a busy database)."""

    delay = 0.0

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id == "p":
            await trio.sleep(self.delay)
        return await super().create(instance_id, *args, **kwargs)


async def test_guard_cancels_waiting_on_the_start_of_a_queued_resumed_row_compensate_it_once(
        autojump_clock: trio.testing.MockClock) -> None:
    """Guard for 2fa7dd1's ``_cancel_as_made_run`` (a queued run is cancelled from the queue
    whatever a cancel() waiting for the store does). A row 'p' charged and parked on a timer;
    the next engine has its one slot taken; ``start`` of 'p' again (idempotent) takes the row
    up while two ``cancel('p')`` calls wait for that store, one of them past
    CANCEL_STORE_WAIT (it gives up and owes the cancel). Each says True (README: cancel says yes
    until the instance is over), the instance ends cancelled, refunded exactly once. Held."""
    charged: list[int] = []
    refunded: list[int] = []

    async def charge(ctx: Any) -> str:
        charged.append(1)
        return "ch_1"

    async def refund(ctx: Any, result: Any) -> None:
        refunded.append(1)

    async def busy(ctx: Any) -> None:
        await trio.sleep(20)

    pay = tf.workflow("pay").step("charge", charge, refund).wait("later", seconds=1000).build()
    other = tf.workflow("other").step("busy", busy).build()
    adapter = _SlowCreate()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(pay)
        await engine.start("pay", {"o": 1}, instance_id="p")
        await trio.sleep(1)
    adapter.delay = 15.0  # past CANCEL_STORE_WAIT: the first cancel() gives up and owes it
    said: list[bool] = []
    async with open_test_engine(adapter=adapter, max_running=1) as engine:
        engine.register(pay)
        engine.register(other)
        await engine.start("other", instance_id="x")

        async def cancel_it(after: float) -> None:
            await trio.sleep(after)
            said.append(await engine.cancel("p"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(engine.start, "pay", {"o": 1}, instance_id="p"))
            nursery.start_soon(cancel_it, 0.1)
            nursery.start_soon(cancel_it, 12.0)
        done = await engine.wait("p")
        await trio.sleep(50)
    assert said == [True, True]
    assert done.status == "cancelled"
    assert (charged, refunded) == ([1], [1])


_OPS = st.lists(st.tuples(st.sampled_from(["create", "checkpoint", "delete", "purge"]), st.integers(0, 3),
                          st.sampled_from(["pending", "running", "completed", "cancelled"]),
                          st.one_of(st.none(), st.floats(0, 100))), max_size=40)


@settings(deadline=None)
@given(_OPS)
def test_guard_memory_adapter_counts_each_waiting_row_once(ops: list[tuple[str, int, str, float | None]]) -> None:
    """Guard for 2fa7dd1's MemoryAdapter change (a delayed start counted waiting from its
    creation): over any sequence of creates (with or without a wake time, of an id that may
    exist), checkpoints, deletes and purges, the count of waiting rows per workflow equals the
    rows that wait (unfinished, with a wake time): never negative, never drifting. Held."""

    async def main() -> None:
        adapter = tf.adapters.MemoryAdapter()
        await adapter.open()
        for op, n, status, wake_at in ops:
            iid = f"i{n}"
            try:
                if op == "create":
                    await adapter.create(iid, "w", status, start=b"s", header=b"h", wake_at=wake_at)
                elif op == "checkpoint":
                    stored = await adapter.load(iid)
                    if stored is None or stored.status in ("completed", "cancelled"):
                        continue
                    await adapter.checkpoint(iid, status, b"h", [], first_seq=len(stored.records), wake_at=wake_at)
                elif op == "delete":
                    await adapter.delete(iid)
                else:
                    await adapter.purge(1e12, 100)
            except tf.TrioflowError:
                pass
            waiting = [i for i in ("i0", "i1", "i2", "i3")
                       if (s := await adapter.load(i)) is not None and s.wake_at is not None
                       and s.status in ("pending", "running")]
            assert adapter._waiting_rows.get("w", 0) == len(waiting), (op, iid, status, wake_at)

    trio.run(main)
