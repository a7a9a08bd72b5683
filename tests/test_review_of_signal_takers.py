"""An adversarial review of 9af319f (``signal()`` hands a signal stored while the instance was
taken up to the live run at once unless a run that ended during its watch took it;
``_deliver_later`` reads storage until no run ended during the read; ``open_engine(resume=False)``
wakes parked rows holding a pending signal they wait for, once their workflow is registered).

Promises under review (SPEC §13, docs/waiting.md "First in, first out", "Consumed once",
"Timeout", "What survives a restart"): once ``signal()`` returned a signal is delivered exactly
once; signals of one name are taken in the order they were stored; a signal whose ``signal()``
had it stored before a receive's deadline is taken; ``resume=False`` holds back only what an
earlier engine left in flight.

Tests whose docstring starts with ``FAILS ON CURRENT CODE`` fail on main at 9af319f; the others
pass and pin behaviour worth keeping. Everything runs on trio's MockClock.

Run from a checkout:  .venv/bin/pytest -q -p no:cacheprovider /tmp/review_9af319f/
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


# -- helpers --------------------------------------------------------------------------------------


class Lagging(MemoryAdapter):
    """A MemoryAdapter with latency on ``load`` (and failures), set for the next call: it keeps
    the adapter protocol (each write all or nothing, seqs growing); only latency differs.

    It overrides ``send_signal`` and ``load`` but not ``send_signal_and_load``, so the engine
    stores a signal with ``send_signal`` and reads the row with ``load`` (as for any adapter
    without the combined call: see ``adapters._protocol.sends_and_loads``).

    ``next_load``: ``(delay, snapshot_first)`` for the next ``load()``: it waits ``delay``
    seconds, reading storage before the wait (``snapshot_first``: a reply's latency, the row as
    it stood when the read began) or after it. ``load_failures``: how many of the next loads of
    ``fail_id`` raise ``StorageUnavailableError`` (a database busy for a moment)."""

    def __init__(self) -> None:
        super().__init__()
        self.next_load: tuple[float, bool] | None = None
        self.load_failures = 0
        self.fail_id: str | None = None
        self.stored_at: list[float] = []
        #: Seconds the next ``send_signal`` waits after it stored, before it returns.
        self.send_delay_after_store = 0.0
        #: Trio times between which ``checkpoint`` stores nothing and raises
        #: ``StorageUnavailableError`` (``None``: never).
        self.checkpoints_fail: tuple[float, float] | None = None

    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        seq = await super().send_signal(instance_id, name, payload)
        self.stored_at.append(trio.current_time())
        after, self.send_delay_after_store = self.send_delay_after_store, 0.0
        if after:
            await trio.sleep(after)
        return seq

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        window = self.checkpoints_fail
        if window is not None and window[0] <= trio.current_time() < window[1]:
            raise tf.StorageUnavailableError("disk I/O error (injected)")
        return await super().checkpoint(*args, **kwargs)

    async def load(self, instance_id: str) -> Any:
        if self.load_failures and instance_id == self.fail_id:
            self.load_failures -= 1
            raise tf.StorageUnavailableError("database is locked (injected)")
        plan, self.next_load = self.next_load, None
        if plan is None:
            return await super().load(instance_id)
        delay, snapshot_first = plan
        if snapshot_first:
            found = await super().load(instance_id)
            await trio.sleep(delay)
            return found
        await trio.sleep(delay)
        return await super().load(instance_id)


def _both(ctx: tf.WorkflowContext) -> list[Any]:
    return [ctx.steps["r1"], ctx.steps["r2"]]


def _late(ctx: tf.WorkflowContext) -> str:
    return "timed out"


async def _work_ten_seconds(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(10)
    return "worked"


#: Branch a takes "go" twice; branch b takes "poke". Both rest: it leaves memory at t~1.
GO_TWICE_AND_POKE = (
    tf.workflow("go-twice-and-poke")
    .parallel("p", branches=[
        tf.branch("a").receive("r1", signal="go").receive("r2", signal="go")
        .pass_("both", transform=_both, end=True).build(),
        tf.branch("b").receive("rp", signal="poke").build(),
    ])
    .build()
)


# -- a hand-over that reads the row first: a run taken up during that read ------------------------


@pytest.mark.trio
async def test_fifo_holds_when_the_instance_is_taken_up_while_the_wake_reads_its_row(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """FAILS ON CURRENT CODE.

    Promised (docs/waiting.md "First in, first out"; SPEC §13): signals of one name are taken in
    the order they were stored.

    Setup (an adapter without ``send_signal_and_load``): the instance rests out of memory (t=1).
    At t=1.2 ``signal("poke")`` stores at once; the read of the row for its wake sees storage
    as at 1.2 and answers at 4.2. At t=1.5 ``signal("go", "A")`` stores A (seq 2) at once; no run
    is live, so its hand-over reads the row to wake the instance: that read answers at 6.5.
    At 4.2 the poke's wake takes the instance up (run r2) from its row (without A). At t=5
    ``signal("go", "B")`` is stored (seq 3) and handed to r2 at once.

    Expected: r1 takes A (stored at 1.5), r2 takes B (stored at 5).

    What happens: r1 takes B. ``_deliver`` found no run live, so ``_wake_if_waiting`` reads the
    row; when the read returns (6.5) the instance is live (r2, taken up meanwhile from an older
    row) and A is handed over only then: B, sent to r2 meanwhile, was handed over at once and
    taken first. The same overtaking 9af319f removed from the "run taken up while the signal
    was stored" branch, one read later.
    """
    adapter = Lagging()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(GO_TWICE_AND_POKE)
        iid = await engine.start("go-twice-and-poke", {})
        await trio.sleep(1.2)
        assert iid not in engine._live, "it rests out of memory"
        async with trio.open_nursery() as nursery:
            adapter.next_load = (3.0, True)  # the poke's wake: the row as at 1.2, answered at 4.2
            nursery.start_soon(engine.signal, iid, "poke", None)
            await trio.sleep(0.3)
            adapter.next_load = (5.0, False)  # A's wake: answered at 6.5
            nursery.start_soon(engine.signal, iid, "go", "A")
            await trio.sleep(3.5)  # t=5.0
            assert iid in engine._live, "the poke took it up at 4.2"
            await engine.signal(iid, "go", "B")
        with trio.fail_after(100):
            done = await engine.wait(iid)
    assert adapter.stored_at == [pytest.approx(1.2), pytest.approx(1.5), pytest.approx(5.0)]
    assert done.status == "completed"
    assert done.output["a"] == ["A", "B"], f"A was stored 3.5 s before B: got {done.output['a']}"


#: Branch a waits for "go" until t=5.5 (timeout 5.5 from t=0); branch b for "poke", then works
#: 10 s (which keeps the run taken up for the poke in memory past that deadline).
GO_BY_DEADLINE_AND_POKE = (
    tf.workflow("go-by-deadline-and-poke")
    .parallel("p", branches=[
        tf.branch("a").receive("r1", signal="go", timeout=5.5,
                               catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="late")])
        .succeed("got").step("late", _late, end=True).build(),
        tf.branch("b").receive("rp", signal="poke").step("work", _work_ten_seconds).build(),
    ])
    .build()
)


@pytest.mark.trio
async def test_a_signal_stored_before_the_deadline_is_taken_when_the_wake_reads_its_row_slowly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """FAILS ON CURRENT CODE (same root cause as the test above).

    Promised (docs/waiting.md "Timeout"): a receive fails with SignalTimeoutError only "if no
    signal came in time. 'In time' is when signal() had the signal stored (its adapter call
    returned)".

    Setup (an adapter without ``send_signal_and_load``): r1 waits for "go" until t=5.5, the
    instance out of memory. At 1.2 ``signal("poke")`` is stored; its wake reads the row as at
    1.2 and answers at 4.2, taking the instance up (without "go"; branch b then works till
    14.2, which keeps that run in memory). At 1.5 ``signal("go")`` is
    stored (its adapter call returns at 1.5); its wake reads the row, answered at 6.5.

    Expected: r1 takes "go", stored 4 s before its deadline.

    What happens: r1 times out at 5.5 ("late"): the run taken up at 4.2 is handed "go" only
    when the second read returns, at 6.5.
    """
    adapter = Lagging()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(GO_BY_DEADLINE_AND_POKE)
        iid = await engine.start("go-by-deadline-and-poke", {})
        await trio.sleep(1.2)
        assert iid not in engine._live
        async with trio.open_nursery() as nursery:
            adapter.next_load = (3.0, True)
            nursery.start_soon(engine.signal, iid, "poke", None)
            await trio.sleep(0.3)
            adapter.next_load = (5.0, False)
            nursery.start_soon(engine.signal, iid, "go", "payload")
        with trio.fail_after(100):
            done = await engine.wait(iid)
    assert adapter.stored_at == [pytest.approx(1.2), pytest.approx(1.5)]
    assert done.status == "completed"
    assert done.output["a"] == "payload", f"stored at 1.5, deadline 5.5: got {done.output['a']!r}"


# -- open_engine(resume=False): parked rows holding a signal, woken at register -------------------

ONE_RECEIVE = tf.workflow("one-receive").receive("r", signal="go").build()


async def _parked_with_a_pending_signal(adapter: MemoryAdapter, count: int) -> list[str]:
    """``count`` instances of ONE_RECEIVE left waiting out of memory by an engine, then a "go"
    stored for each as no engine runs (as one stored while the engine before closed is)."""
    async with open_test_engine(adapter=adapter) as first:
        first.register(ONE_RECEIVE)
        ids = [await first.start("one-receive", {}) for _ in range(count)]
        await trio.sleep(2)
        assert not any(iid in first._live for iid in ids), "they wait out of memory"
    for n, iid in enumerate(ids):
        assert await adapter.send_signal(iid, "go", _encoded(f"p{n}")) is not None
    return ids


def _encoded(value: Any) -> bytes:
    from trioflow._codec import encode_payload
    return encode_payload(value, "payload")


@pytest.mark.trio
async def test_resume_false_wakes_a_parked_row_holding_its_signal_after_a_storage_hiccup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """FAILS ON CURRENT CODE.

    Promised (README, docs/waiting.md "What survives a restart"): ``resume=False`` holds back
    only what an earlier engine left in flight; a waiting instance gets every signal
    ``signal()`` acknowledged; a read of storage that fails in a way that may pass (database
    busy) is tried again (``storage_retry_for``), as every other wake does (``_wake_for``, a
    child's end notice to its parent: ``retried``).

    Setup: an instance waits out of memory for "go" (wake_at inf); "go" is stored for it while
    no engine runs. The next engine is opened with ``resume=False`` and registers the workflow;
    the first ``load()`` of that instance raises ``StorageUnavailableError`` once.

    Expected: the instance is woken (the read tried again) and completes.

    What happens: it waits for ever (here: an hour). ``_wake_signalled``, which 9af319f now
    runs for every parked row an engine opened with ``resume=False`` found, calls
    ``_wake_if_waiting`` once per id with no retry and no per-id containment: the error ends
    the task (logged as an actor crash), the instance is never looked at again (the waker
    never takes up a row with wake_at inf), and the rows after it in the set are not looked at
    at all.
    """
    adapter = Lagging()
    (iid,) = await _parked_with_a_pending_signal(adapter, 1)
    adapter.fail_id, adapter.load_failures = iid, 1
    async with open_test_engine(adapter=adapter, resume=False) as second:
        second.register(ONE_RECEIVE)
        await trio.sleep(1)
        assert adapter.load_failures == 0, "the wake at register read the row (and failed once)"
        with trio.move_on_after(3600):
            done = await second.wait(iid)
            assert done.status == "completed" and done.output == "p0"
            return
        pytest.fail("a transient storage error at register left the parked instance waiting for ever"
                    " for the signal storage holds for it")


@pytest.mark.trio
async def test_pin_resume_false_wakes_every_parked_row_holding_its_signal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Pin (9af319f): with ``resume=False``, every instance an earlier engine left waiting out of
    memory with a signal it waits for stored gets it once its workflow is registered, each
    once."""
    adapter = Lagging()
    ids = await _parked_with_a_pending_signal(adapter, 3)
    async with open_test_engine(adapter=adapter, resume=False) as second:
        second.register(ONE_RECEIVE)
        with trio.fail_after(60):
            outputs = [(await second.wait(iid)).output for iid in ids]
    assert outputs == ["p0", "p1", "p2"]
    for iid in ids:
        stored = await adapter.load(iid)
        assert stored is not None and stored.signals == ()


# -- a run that took the signal, then stalled (its checkpoint failed for good) --------------------

async def _work_one_second(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(1)
    return "worked"


#: Branch a takes "go"; branch b waits 2 s (a run is taken up for it), then works 1 s.
GO_AND_TIMER = (
    tf.workflow("go-and-timer")
    .parallel("p", branches=[
        tf.branch("a").receive("r", signal="go").build(),
        tf.branch("b").wait("t", seconds=2).step("work", _work_one_second).build(),
    ])
    .build()
)


@pytest.mark.trio
async def test_pin_a_signal_taken_by_a_run_that_stalled_during_the_send_is_taken_once_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Pin: a run that took the signal while ``signal()`` stored it and whose checkpoints then
    failed past ``storage_retry_for`` (the consumption undone: the signal is pending in storage
    still) does not make the signal lost nor taken twice: the instance completes with it once
    and storage holds it no more. (Here the hand-over finds no run live and wakes the instance
    from its row; ``EndsDuringReads.took`` is not reached, so this pins the outcome, not that
    branch: ``consumed_seqs`` keeps seqs whose consumption was undone, and ``took()`` would say
    yes for them, which is safe only because any run taken up after the stalled one reads
    storage, never a row read before it ended.)

    Setup: the instance rests out of memory (t~1). ``signal("go")`` stores at 1.2 and returns at
    6.2. At 2 the waker takes it up for its timer (run r1): r1 reads "go" from storage and takes
    it; every checkpoint from 2 to 4.5 fails, storage_retry_for is 1 s: r1 stalls. At 7 storage
    works again and ``resume()`` is called.
    """
    adapter = Lagging()
    async with open_test_engine(adapter=adapter, storage_retry_for=1.0) as engine:
        engine.register(GO_AND_TIMER)
        iid = await engine.start("go-and-timer", {})
        await trio.sleep(1.2)
        assert iid not in engine._live
        adapter.checkpoints_fail = (1.5, 4.5)
        adapter.send_delay_after_store = 5.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.signal, iid, "go", "once")
            await trio.sleep(3.0)  # t=4.2
            stored = await adapter.load(iid)
            assert stored is not None and [n for _, n, _ in stored.signals] == ["go"], "still pending in storage"
        assert trio.current_time() == pytest.approx(6.2)
        await trio.sleep(0.8)
        await engine.resume()
        with trio.fail_after(60):
            done = await engine.wait(iid)
    assert done.status == "completed"
    assert done.output["a"] == "once"
    stored = await adapter.load(iid)
    assert stored is not None and stored.signals == ()
