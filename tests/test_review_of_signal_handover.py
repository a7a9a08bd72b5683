"""An adversarial review of 75bfbc6 (``Engine.signal()`` hands a signal stored while the
instance was taken up to the live run at once, unless a run of it ended here since the send;
``open_engine(resume=False)`` holds back in-flight instances from signals) and 562045b
(``resume()`` watches for runs that end across its whole loop).

Promises under review (SPEC §13, docs/waiting.md "First in, first out", "Consumed once",
"Timeout", "What survives a restart"): once ``signal()`` returned, a signal is delivered exactly
once; signals of one name are taken in the order they were stored; a signal whose ``signal()``
had it stored before a receive's deadline is taken, not timed out; ``resume=False`` holds back
only what an earlier engine left in flight.

Tests whose docstring starts with ``FAILS ON CURRENT CODE`` fail on main at 562045b/aefa23a;
the others pass and pin behaviour worth keeping. Everything runs on trio's MockClock.

Run from a checkout:  .venv/bin/pytest -q -p no:cacheprovider /tmp/review_signal_fixes/
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


class Slow(MemoryAdapter):
    """A MemoryAdapter with latency, set per call kind for the next call(s) of that kind:
    ``send_delay`` (before a signal write stores), ``send_delay_after_store`` (after
    it stored, before it returns), ``signals_delay_after_send`` (the next
    ``signals()`` read once a slowed write returned; ``snapshot_first``: it reads, then waits), ``load_delay``. It keeps the adapter
    protocol (each write all or nothing, seqs growing): only the latency differs, which any real
    store can have."""

    def __init__(self) -> None:
        super().__init__()
        self.send_delay = 0.0
        self.send_delay_after_store = 0.0
        self.signals_delay_after_send = 0.0
        self._signals_delay = 0.0
        self.load_delay = 0.0
        #: The slowed ``signals()`` read answers as storage stood when it began (the latency
        #: comes after the read, as a reply's round trip does), rather than when it returns.
        self.snapshot_first = False
        self.stored_at: list[float] = []  # trio time of each signal write's store

    async def _slowed_send(self, call: Any) -> Any:
        delay, self.send_delay = self.send_delay, 0.0
        if delay:
            await trio.sleep(delay)
        result = await call()
        self.stored_at.append(trio.current_time())
        after, self.send_delay_after_store = self.send_delay_after_store, 0.0
        if after:
            await trio.sleep(after)
        if delay:
            self._signals_delay = self.signals_delay_after_send
        return result

    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        return await self._slowed_send(lambda: super(Slow, self).send_signal(instance_id, name, payload))

    async def go_slowly(self, engine: tf.Engine, instance_id: str, payload: str) -> None:
        """``engine.signal(instance_id, "go", payload)``, its write stored 6 s after the call,
        the ``signals()`` read after it 3 s long."""
        self.send_delay = 6.0
        self.signals_delay_after_send = 3.0
        await engine.signal(instance_id, "go", payload)

    async def send_signal_and_load(self, instance_id: str, name: str, payload: bytes) -> Any:
        return await self._slowed_send(lambda: super(Slow, self).send_signal_and_load(instance_id, name, payload))

    async def signals(self, instance_id: str) -> list[tuple[int, str, bytes]]:
        delay, self._signals_delay = self._signals_delay, 0.0
        if delay and self.snapshot_first:
            found = await super().signals(instance_id)
            await trio.sleep(delay)
            return found
        if delay:
            await trio.sleep(delay)
        return await super().signals(instance_id)

    async def load(self, instance_id: str) -> Any:
        delay, self.load_delay = self.load_delay, 0.0
        if delay:
            await trio.sleep(delay)
        return await super().load(instance_id)


def _quick(ctx: tf.WorkflowContext) -> str:
    return "quick"


async def _work_ten_seconds(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(10)
    return "worked"


def _both(ctx: tf.WorkflowContext) -> list[Any]:
    return [ctx.steps["r1"], ctx.steps["r2"]]


def _late(ctx: tf.WorkflowContext) -> str:
    return "timed out"


# -- a run ended during the send: the storage read before the hand-over is still there ----------

#: Branch a receives "go" twice. Branch b: a 5 s timer, a quick step, a 2 s timer (the instance
#: leaves memory again: that run ends), then 10 s of work, which keeps the next run in memory.
FIFO_TWO_RUNS = (
    tf.workflow("fifo-two-runs")
    .parallel("p", branches=[
        tf.branch("a").receive("r1", signal="go").receive("r2", signal="go")
        .pass_("both", transform=_both, end=True).build(),
        tf.branch("b").wait("t1", seconds=5).step("q", _quick).wait("t2", seconds=2)
        .step("work", _work_ten_seconds).build(),
    ])
    .build()
)


@pytest.mark.trio
async def test_fifo_holds_when_a_run_left_memory_while_the_first_signal_was_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """FAILS ON CURRENT CODE.

    Promised (docs/waiting.md "First in, first out"; SPEC §13): signals of one name are taken
    in the order they were stored.

    Setup: the instance rests (both branches wait; out of memory at t=1). At t=1.2
    ``signal("go", "first")`` is called; storage takes 6 s to store it (t=7.2). Meanwhile run r1 is taken up for timer t1
    (t=4.5), runs q, and leaves memory on t2 (t=6) (a run of the instance ended here since the send);
    run r2 is taken up for t2 (t=6.5), reads the signals stored (none yet) and works till 17.
    "first" is stored at 7.2 (seq 1); at t=8 ``signal("go", "second")`` is stored (seq 2).

    Expected: r1 takes "first", r2 takes "second".

    What happens: r1 takes "second". 75bfbc6 hands over at once only when no run ended since
    the send; here one did, so ``_deliver`` still reads ``adapter.signals()`` before handing
    "first" to r2, and "second", sent to r2 meanwhile, is handed over at once and taken first.
    """
    adapter = Slow()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(FIFO_TWO_RUNS)
        iid = await engine.start("fifo-two-runs", {})
        await trio.sleep(1.2)
        assert iid not in engine._live

        async with trio.open_nursery() as nursery:
            nursery.start_soon(adapter.go_slowly, engine, iid, "first")
            await trio.sleep(5.0)  # t=6.2: r1 ran q and left memory on t2 (at 6.0)
            assert iid not in engine._live
            await trio.sleep(0.8)  # t=7.0: r2 is live (taken up for t2)
            assert iid in engine._live
            await trio.sleep(1.0)  # t=8.0: "first" was stored at 7.2
            assert len(adapter.stored_at) == 1
            await engine.signal(iid, "go", "second")
        with trio.fail_after(100):
            done = await engine.wait(iid)
    assert done.status == "completed"
    assert done.output["a"] == ["first", "second"], f"r1 must take the oldest stored signal: got {done.output['a']}"


TIMEOUT_TWO_RUNS = (
    tf.workflow("timeout-two-runs")
    .parallel("p", branches=[
        tf.branch("a").receive("r1", signal="go", timeout=8,
                               catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="late")])
        .succeed("got").step("late", _late, end=True).build(),
        tf.branch("b").wait("t1", seconds=5).step("q", _quick).wait("t2", seconds=2)
        .step("work", _work_ten_seconds).build(),
    ])
    .build()
)


@pytest.mark.trio
async def test_a_signal_stored_before_the_deadline_is_taken_when_a_run_left_memory_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """FAILS ON CURRENT CODE (same root cause as the test above).

    Promised (docs/waiting.md "Timeout"): the receive fails with SignalTimeoutError only "if no
    signal came in time. 'In time' is when signal() had the signal stored (its adapter call
    returned)".

    Setup: branch a's r1 waits for "go" with timeout=8 (deadline t=8). ``signal("go")`` is
    called at t=1.2 and its adapter call returns at t=7.2. Meanwhile run r1 was taken up for
    t1 and left memory again on t2 (t=6), and run r2 taken up (t=6.5) keeps it in memory.

    Expected: r1 takes the payload, stored 0.8 s before its deadline.

    What happens: r1 times out ("late"); ``_deliver`` reads ``adapter.signals()`` (a run ended
    since the send) before handing it over, and the deadline passes during that read.
    """
    adapter = Slow()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(TIMEOUT_TWO_RUNS)
        iid = await engine.start("timeout-two-runs", {})
        await trio.sleep(1.2)

        await adapter.go_slowly(engine, iid, "payload")
        with trio.fail_after(100):
            done = await engine.wait(iid)
    assert adapter.stored_at == [pytest.approx(7.2)]
    assert done.status == "completed"
    assert done.output["a"] == "payload", f"stored at 7.2, deadline 8: got {done.output['a']!r}"


#: Branch a receives "go" twice. Branch b goes through timers that each let the instance
#: leave memory, so that one run after another is taken up: t1 (5 s), t2 (2 s), t3 (1.5 s),
#: t4 (1.5 s), then 10 s of work.
MANY_RUNS = (
    tf.workflow("many-runs")
    .parallel("p", branches=[
        tf.branch("a").receive("r1", signal="go").receive("r2", signal="go")
        .pass_("both", transform=_both, end=True).build(),
        tf.branch("b").wait("t1", seconds=5).step("q1", _quick).wait("t2", seconds=2)
        .step("q2", _quick).wait("t3", seconds=1.5).step("q3", _quick).wait("t4", seconds=1.5)
        .step("work", _work_ten_seconds).build(),
    ])
    .build()
)


@pytest.mark.trio
async def test_a_signal_is_not_taken_twice_when_the_check_of_storage_answers_late(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """FAILS ON CURRENT CODE.

    Promised (SPEC §13; docs/waiting.md "Consumed once"): once ``signal()`` has returned, a
    signal is never taken twice.

    Setup: ``signal("go", "A")`` is called at t=1.2 while the instance rests; storage stores
    it at 7.2. A run of the instance ended here meanwhile (r1, t=4.5..6) and r2 is live (taken
    up at 6.5 from a row without A), so ``_deliver`` checks ``adapter.signals()`` before the
    hand-over. That read sees storage as it stood at 7.2 (A pending) and its answer comes back
    at 12.2 (a reply's latency). Meanwhile r2 leaves memory (t=8), r3 is taken up, reads A from
    storage, receive r1 takes it (the checkpoint deletes it), r3 leaves memory (t=9.5), and r4
    is taken up from a row without A.

    ``wait()`` is called at t=12.3; ``signal("go", "B")`` is sent at t=15.3.

    Expected: r1 takes A, r2 takes B, the instance completes with ["A", "B"].

    What happens: r2 takes A as well. After the read, ``_deliver`` hands A to whichever run is
    live then (``self._live.get``) with no look at whether a run ended during the read: r4,
    taken up after r3's checkpoint consumed A, has no record of A and its receive r2 takes it
    again. The MemoryAdapter refuses that checkpoint (CheckpointConflictError: [1] not pending),
    the instance actor crashes ("failed and its failure could not be stored"), its 10 s work
    step is cut off, and ``wait()`` raises InstanceNotLiveError (it stays stopped until a
    signal or ``resume()`` takes it up again, the work step then running again). (An adapter that did not check ``consumed`` would record A taken twice.)
    """
    adapter = Slow()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(MANY_RUNS)
        iid = await engine.start("many-runs", {})
        await trio.sleep(1.2)
        assert iid not in engine._live
        runs: list[Any] = []

        async def watch() -> None:
            while True:
                run = engine._live.get(iid)
                if run is not None and (not runs or runs[-1] is not run):
                    runs.append(run)
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            adapter.send_delay = 6.0
            adapter.signals_delay_after_send = 5.0
            adapter.snapshot_first = True
            t0 = trio.current_time() - 1.2
            await engine.signal(iid, "go", "A")  # (returns at 12.2 on main: its check's answer)
            await trio.sleep_until(t0 + 12.3)
            nursery.cancel_scope.cancel()
        # (On main, r1..r4 were taken up in turn: ``runs`` holds them, for a look in a debugger.)

        async def send_b() -> None:
            await trio.sleep(3)
            await engine.signal(iid, "go", "B")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_b)
            with trio.fail_after(100):
                try:
                    done = await engine.wait(iid)
                except tf.InstanceNotLiveError as exc:
                    pytest.fail(f"A, then B at t=15.3: wait() must give the completed instance; it raised: {exc}")
    assert done.status == "completed"
    assert done.output["a"] == ["A", "B"]


# -- open_engine(resume=False) ---------------------------------------------------------------------

ONE_RECEIVE = tf.workflow("one-receive").receive("r", signal="go").build()


@pytest.mark.trio
async def test_resume_false_still_delivers_a_signal_stored_as_the_engine_before_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """FAILS ON CURRENT CODE.

    Promised (docs/waiting.md "What survives a restart"; README): ``open_engine(resume=False)``
    "holds back only the instances an earlier engine left in flight (mid-step), until
    engine.resume(); a waiting instance is woken as it falls due"; "every signal ``signal()``
    acknowledged is still stored until a receive step takes it"; and a signal stored just
    before an engine stops "must still reach" the instance waiting for it.

    Setup: an instance waits out of memory for "go" (no timeout). ``signal("go")`` is called and
    its write is slow; the engine closes meanwhile; the write returns (``signal()`` returns: the
    signal is stored, "the next engine delivers it"). The next engine, on the same adapter, is
    opened with ``resume=False`` and registers the workflow.

    Expected: the instance, which was not in flight but waiting, gets its signal and completes.

    What happens: it waits for ever. Its row has ``wake_at=inf``, so the waker never takes it
    up; only the open-time resume (off) or ``engine.resume()`` reads parked rows with pending
    signals. The hold-back is meant for rows left mid-step; this one is held back as well.
    """
    adapter = Slow()
    async with trio.open_nursery() as outer:
        async with open_test_engine(adapter=adapter) as first:
            first.register(ONE_RECEIVE)
            iid = await first.start("one-receive", {})
            await trio.sleep(2)
            assert iid not in first._live, "it waits out of memory"
            returned = trio.Event()

            async def send() -> None:
                adapter.send_delay = 1.0
                await first.signal(iid, "go", "payload")
                returned.set()

            outer.start_soon(send)
            await trio.sleep(0.5)
        await returned.wait()  # signal() returned once the write did, the engine closed
    stored = await adapter.load(iid)
    assert stored is not None and [name for _, name, _ in stored.signals] == ["go"]
    async with open_test_engine(adapter=adapter, resume=False) as second:
        second.register(ONE_RECEIVE)
        with trio.move_on_after(3600):
            done = await second.wait(iid)
            assert done.status == "completed" and done.output == "payload"
            return
        pytest.fail("the waiting instance never got the signal signal() acknowledged (an hour later)")



# -- pins: behaviour that held under review --------------------------------------------------------


@pytest.mark.trio
async def test_pin_a_signal_taken_consumed_and_parked_with_while_signal_is_slow_is_not_handed_over_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Passes (pins it). ``signal("go", "A")`` stores A at t=1.2, but its adapter call returns
    only at 8.2. Meanwhile r1 is taken up for timer t1 (t=4.5), reads A from storage, receive
    r1 takes it (its checkpoint deletes it), r1 leaves memory (t=6), and r2 is taken up (6.5)
    from a row without A. The hand-over finds a run ended since the send, checks storage, finds
    A gone, and hands nothing to r2: r2 takes B, sent later."""
    adapter = Slow()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(FIFO_TWO_RUNS)
        iid = await engine.start("fifo-two-runs", {})
        await trio.sleep(1.2)
        assert iid not in engine._live
        adapter.send_delay_after_store = 7.0
        await engine.signal(iid, "go", "A")
        assert trio.current_time() == pytest.approx(8.2)
        assert iid in engine._live
        await engine.signal(iid, "go", "B")
        with trio.fail_after(100):
            done = await engine.wait(iid)
    assert done.status == "completed"
    assert done.output["a"] == ["A", "B"]


QUEUED = (
    tf.workflow("queued")
    .parallel("p", branches=[
        tf.branch("a").receive("r1", signal="go").receive("r2", signal="go")
        .pass_("both", transform=_both, end=True).build(),
        tf.branch("b").wait("t1", seconds=5).step("q", _quick).build(),
    ])
    .build()
)
HOG = tf.workflow("hog").step("work", _work_ten_seconds).build()


@pytest.mark.trio
async def test_pin_a_run_queued_for_a_slot_while_the_signal_was_stored_gets_it_once_and_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Passes (pins it). ``max_running=1``. The instance rests; ``signal("go", "first")`` is
    called at t=1.2 and stored at 7.2. At t=4.5 the waker takes the instance up for t1, but a
    "hog" instance started at t=3 holds the only slot till 13: the run is live, queued, taken
    up from a row without "first". No run ended since the send: "first" is handed to the queued
    run at once; "second" (t=8) after it. Once it gets the slot, r1 takes "first", r2 "second",
    each once."""
    adapter = Slow()
    async with open_test_engine(adapter=adapter, max_running=1) as engine:
        engine.register(QUEUED)
        engine.register(HOG)
        iid = await engine.start("queued", {})
        await trio.sleep(1.2)
        assert iid not in engine._live

        async with trio.open_nursery() as nursery:
            nursery.start_soon(adapter.go_slowly, engine, iid, "first")
            await trio.sleep(1.8)
            hog = await engine.start("hog", {})
            await trio.sleep(4.0)  # t=7.0
            run = engine._live.get(iid)
            assert run is not None and run in engine._waiting, "taken up, queued for the slot the hog holds"
            await trio.sleep(1.0)  # t=8.0
            await engine.signal(iid, "go", "second")
        assert trio.current_time() == pytest.approx(8.0)
        with trio.fail_after(100):
            done = await engine.wait(iid)
            assert (await engine.wait(hog)).status == "completed"
    assert done.status == "completed"
    assert done.output["a"] == ["first", "second"]


_work_calls: list[float] = []


async def _work_hundred_seconds(ctx: tf.WorkflowContext) -> str:
    _work_calls.append(trio.current_time())
    await trio.sleep(100)
    return "worked"


KID = tf.workflow("kid").receive("r", signal="go").build()
FAMILY = (
    tf.workflow("family")
    .parallel("p", branches=[
        tf.branch("a").child("c", workflow="kid").build(),
        tf.branch("b").step("work", _work_hundred_seconds).build(),
    ])
    .build()
)


@pytest.mark.trio
async def test_pin_resume_false_runs_a_parked_child_for_its_signal_and_holds_its_in_flight_parent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Passes (pins it). An earlier engine closed with a parent in flight (branch b mid-step)
    and its child waiting out of memory for "go". In an engine opened with ``resume=False``:
    ``signal(child, "go")`` takes the child up (it was waiting, not in flight) and it
    completes; its end notice does not take the parent up (held back: its work step is not run
    again); ``resume()`` then runs the parent, which takes the notice and completes."""
    _work_calls.clear()
    adapter = MemoryAdapter()
    async with open_test_engine(adapter=adapter) as first:
        first.register(KID)
        first.register(FAMILY)
        pid = await first.start("family", {})
        await trio.sleep(5)
        parent = await first.get_instance(pid)
        assert parent is not None and len(parent.children) == 1
        kid_id = parent.children[0] if isinstance(parent.children[0], str) else parent.children[0].instance_id
        assert kid_id not in first._live and pid in first._live
    assert len(_work_calls) == 1
    async with open_test_engine(adapter=adapter, resume=False) as second:
        second.register(KID)
        second.register(FAMILY)
        await second.signal(kid_id, "go", "kid payload")
        with trio.fail_after(10):
            kid = await second.wait(kid_id)
        assert kid.status == "completed"
        await trio.sleep(10)
        assert pid not in second._live and len(_work_calls) == 1, "the parent stays held back until resume()"
        assert await second.resume() == [pid]
        with trio.fail_after(1000):
            done = await second.wait(pid)
    assert done.status == "completed", done
    assert len(_work_calls) == 2  # (the step in flight runs again, once, after resume())
