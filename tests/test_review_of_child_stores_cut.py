"""From an adversarial review of edges an earlier review left unchecked: the "in time" rule of
a receive with a timeout, signal() under a caller's cancel, the waker's batches, and children
whose store is in flight while their parent ends (docs/waiting.md, docs/fanout.md). The first
test failed until the commit that added this file; the second held and is kept as a guard.

Storage is slowed only by test adapters that subclass the real ones (MemoryAdapter,
SQLiteAdapter on a tmp_path file) and sleep before a call; time is trio's MockClock."""
from __future__ import annotations

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


def run_virtual(fn):
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def _slow_child_create(base: type, seconds: float) -> type:
    """An adapter whose ``create`` of a child whose id does not name item #0 sleeps first (then
    writes it all at once: all or nothing under cancellation, as docs/adapters.md asks)."""
    class SlowChildCreate(base):  # type: ignore[misc, valid-type]
        async def create(self, instance_id, *args, parent_id=None, **kwargs):
            if parent_id is not None and "/#0/" not in instance_id:
                await trio.sleep(seconds)
            return await super().create(instance_id, *args, parent_id=parent_id, **kwargs)
    return SlowChildCreate


# -- Finding 1: a child stored after its parent was cancelled runs its first step -------------

def _adapter(kind: str, tmp_path, seconds: float):
    if kind == "memory":
        return _slow_child_create(tf.adapters.MemoryAdapter, seconds)()
    return _slow_child_create(tf.adapters.SQLiteAdapter, seconds)(str(tmp_path / "edges.db"))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("how", ["cancel", "timeout", "fail-fast"])
def test_child_stored_after_its_parent_ended_badly_runs_no_step(kind, how, tmp_path):
    """A user's saga starts a child that charges a card. Storage is slow to store the child
    (5 s). Meanwhile the parent ends badly before the child exists: `engine.cancel(parent)` at
    0.1 s, or the parent's `with_timeout(2)`, or a fail-fast map whose sibling item failed at
    once. docs/fanout.md: "a cancel or timeout of the parent ... in that span lets the store
    finish first", and the parent "cancels the children it waits on"; a `cancel()` of the child
    itself in that span "cancels the child before its first step". A user expects the parent's
    cancel to stop the child the same way: the card is never charged (Temporal/Step Functions
    users expect a cancelled saga to start no new side effects).

    Was: once the store returned, the child was launched as if nothing had happened, ran its
    `charge` step (the card was charged at t=5 s, as the store returned), and was only then
    cancelled and refunded. With a 30 s store (an adapter whose write, like SQLiteAdapter's,
    cannot be cancelled once queued) the charge came at t=30 s, 20 s after `cancel()`
    returned True and the parent's cancel went on without it."""
    charged: list[tuple[str, float]] = []

    async def charge(ctx):
        if ctx.input == "bad":
            raise ValueError("declined")
        charged.append((ctx.input, trio.current_time()))
        return "charged"

    async def refund(ctx, result):
        pass

    card = tf.workflow("card").step("charge", charge, refund).build()
    if how == "fail-fast":
        parent = (tf.workflow("parent")
                  .map("each", items=lambda ctx: ctx.input,
                       branch=tf.branch("one").child("pay", workflow="card").build())
                  .build())
        start_input = ["bad", "ok"]          # item #0 fails at once; item #1's child store is slow
    elif how == "timeout":
        parent = tf.workflow("parent").with_timeout(2).child("pay", workflow="card").build()
        start_input = "ok"
    else:
        parent = tf.workflow("parent").child("pay", workflow="card").build()
        start_input = "ok"

    async def main():
        async with open_test_engine(adapter=_adapter(kind, tmp_path, 5.0)) as engine:
            engine.register(card)
            engine.register(parent)
            pid = await engine.start("parent", start_input, instance_id="p")
            if how == "cancel":
                await trio.sleep(0.1)            # the child's store is in flight
                assert await engine.cancel(pid) is True
            ended = await engine.wait(pid)
            await trio.sleep(30)                 # let anything left over run
            kids = [await engine.get_instance(c) for c in ended.children]
            return ended, kids

    ended, kids = run_virtual(main)
    assert ended.status in ("cancelled", "timed_out", "failed")
    assert charged == [], f"the child charged the card after its parent had ended {ended.status}: {charged}"
    assert [k.status for k in kids if k is not None and k.input == "ok"] in ([], ["cancelled"])


# -- A guard (passes today): the "in time" rule around a receive's deadline ------------------

class _SlowSignals(tf.adapters.MemoryAdapter):
    """send_signal stores only after a delay (all or nothing under cancellation)."""
    delay = 0.0

    async def send_signal(self, *args, **kwargs):
        await trio.sleep(self.delay)
        return await super().send_signal(*args, **kwargs)

    async def send_signal_and_load(self, *args, **kwargs):
        await trio.sleep(self.delay)
        return await super().send_signal_and_load(*args, **kwargs)


@pytest.mark.parametrize("timeout,sent_at,delay,restart", [
    (0.5, 0.5, 0.0, False),     # in memory: the signal and the timeout in the same instant
    (0.5, 0.4, 0.2, False),     # in memory: signal() began in time, stored after the deadline
    (5, 5, 0.0, False),         # parked: the same instant as the deadline
    (5, 4.9, 0.2, False),       # parked and taken up early by the waker; stored after the deadline
    (5, 20, 0.0, True),         # deadline passed while no engine ran; signal right after the open
])
def test_receive_gets_the_signal_or_times_out_never_both_nor_loses_it(timeout, sent_at, delay, restart):
    """Guard for a fragile rule (docs/waiting.md, Timeout): a receive with a timeout whose
    signal comes around its deadline either takes it or times out; when it times out, the
    signal stays for the next receive of the same name; it is never taken twice."""
    definition = (tf.workflow("approval")
                  .receive("first", signal="go", timeout=timeout,
                           catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="second")])
                  .succeed("done")
                  .receive("second", signal="go")
                  .build())
    received: list[str] = []

    async def across_a_restart():
        adapter = _SlowSignals()
        adapter.delay = delay
        async with open_test_engine(adapter=adapter) as engine:
            engine.register(definition)
            await engine.start("approval", instance_id="x")
            await trio.sleep(2)                  # parked on its receive; then no engine runs
        await trio.sleep(sent_at - 2)
        async with open_test_engine(adapter=adapter) as engine:
            engine.register(definition)
            engine.events.on("workflow.signal.received", lambda event: received.append(event["step_name"]))
            await engine.signal("x", "go", "yes")
            with trio.fail_after(1000):
                return await engine.wait("x")

    async def in_one_engine():
        adapter = _SlowSignals()
        adapter.delay = delay
        async with open_test_engine(adapter=adapter) as engine:
            engine.register(definition)
            engine.events.on("workflow.signal.received", lambda event: received.append(event["step_name"]))
            await engine.start("approval", instance_id="x")
            await trio.sleep(sent_at)
            await engine.signal("x", "go", "yes")
            with trio.fail_after(1000):
                return await engine.wait("x")

    done = run_virtual(across_a_restart if restart else in_one_engine)
    assert done.status == "completed"
    assert len(received) == 1
    first = done.step_results["first"]
    if first.status == "completed":
        assert first.output == "yes"
    else:
        assert first.status == "caught" and done.step_results["second"].output == "yes"
