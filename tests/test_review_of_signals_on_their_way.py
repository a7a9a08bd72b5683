"""An adversarial review of 79fd3c3 (signals stored by ``signal()`` and not yet handed over are
counted per instance, ``_handing_over``; a run taken up from a row while some are on their way
reads storage at its first receive, ``_give_stored``), building on 75bfbc6 and 9af319f.

Promises under review (SPEC §13, docs/waiting.md "First in, first out", "Consumed once",
"Timeout"): once ``signal()`` returned a signal is delivered exactly once (never lost, never
twice); signals of one name are taken first in, first out; a signal stored before a receive's
deadline is taken, not timed out.

Tests whose docstring starts with ``FAILS ON CURRENT CODE`` fail on main at 79fd3c3; the others
pass and pin behaviour worth keeping. Everything runs on trio's MockClock.

Run from a checkout:  .venv/bin/pytest -q -p no:cacheprovider /tmp/review_handing/
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
    """A MemoryAdapter with a reply's latency on the next ``load``/``signals`` call: storage is
    read when the call is made (the row as it stood then) and the answer comes ``delay``
    seconds later, as over a network. Each write stays all or nothing, seqs growing.

    It overrides ``load`` and ``send_signal`` but not ``send_signal_and_load``, so the engine
    stores a signal with ``send_signal`` and reads the row for a wake with ``load`` (as for any
    adapter without the combined call)."""

    def __init__(self) -> None:
        super().__init__()
        self.next_load: float | None = None
        self.next_signals: float | None = None
        self.stored_at: list[float] = []

    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        seq = await super().send_signal(instance_id, name, payload)
        self.stored_at.append(trio.current_time())
        return seq

    async def load(self, instance_id: str) -> Any:
        delay, self.next_load = self.next_load, None
        found = await super().load(instance_id)
        if delay:
            await trio.sleep(delay)
        return found

    async def signals(self, instance_id: str) -> list[tuple[int, str, bytes]]:
        delay, self.next_signals = self.next_signals, None
        found = await super().signals(instance_id)
        if delay:
            await trio.sleep(delay)
        return found


def _one(ctx: tf.WorkflowContext) -> Any:
    return ctx.steps["ra"]


async def _work_ten_seconds(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(10)
    return "worked"


def _pair_in_branch(ctx: tf.WorkflowContext) -> list[Any]:
    return [ctx.steps["ra1"], ctx.steps["ra2"]]


#: Waits for "b" (out of memory: no timeout), then for "a" (no timeout).
B_THEN_A = (
    tf.workflow("b-then-a")
    .receive("rb", signal="b")
    .receive("ra", signal="a")
    .pass_("got", transform=_one, end=True)
    .build()
)

#: Waits for "b", then, in parallel: branch x takes "a" twice; branch y works 10 s (which keeps
#: the run in memory meanwhile).
B_THEN_A_TWICE_WHILE_WORKING = (
    tf.workflow("b-then-a-twice-while-working")
    .receive("rb", signal="b")
    .parallel("p", branches=[
        tf.branch("x").receive("ra1", signal="a").receive("ra2", signal="a")
        .pass_("both", transform=_pair_in_branch, end=True).build(),
        tf.branch("y").step("work", _work_ten_seconds).build(),
    ])
    .build()
)

#: Waits for "b", then for "a" until 30 s after it began waiting.
B_THEN_A_BY_DEADLINE = (
    tf.workflow("b-then-a-by-deadline")
    .receive("rb", signal="b")
    .receive("ra", signal="a", timeout=30)
    .pass_("got", transform=_one, end=True)
    .build()
)


# -- a wake that reads the row, answered after a later signal was stored and handed over ----------


@pytest.mark.trio
async def test_a_signal_stored_while_a_wake_reads_the_row_is_not_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """FAILS ON CURRENT CODE.

    Promised (docs/waiting.md "Consumed once"; SPEC §13): once ``signal()`` returned, the
    signal is taken by the instance's next receive for its name, now or later.

    Setup (an adapter without ``send_signal_and_load``; a reply's latency on one ``load``): the
    instance waits for "b", out of memory. At t=2 ``signal("b")`` is stored; the wake's read of
    the row sees storage as at t=2 and answers at t=5. At t=3 ``signal("a", "A")`` is stored
    (seq 2) and its hand-over reads the row at once: no lane waits for "a", nothing to wake;
    ``signal()`` returns at t=3 and A is no longer counted on its way. At t=5 the "b" wake
    takes the instance up from its row of t=2 (which lacks A): ``_give_stored`` sees only the
    "b" hand-over counted (``own``) and marks the run's signals as fetched.

    Expected: ra takes A; the instance completes with "A".

    What happens: ra looks only in memory, finds nothing, and the run leaves memory waiting for
    "a" with A pending in storage: nothing wakes it (no timeout; only ``resume()`` or a restart
    would). A is lost to the live engine.
    """
    adapter = Lagging()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(B_THEN_A)
        iid = await engine.start("b-then-a", {})
        await trio.sleep(2)
        assert iid not in engine._live, "it rests out of memory"
        async with trio.open_nursery() as nursery:
            adapter.next_load = 3.0  # the "b" wake: the row as at t=2, answered at t=5
            nursery.start_soon(engine.signal, iid, "b", None)
            await trio.sleep(1)
            await engine.signal(iid, "a", "A")  # t=3: returns at once
            assert trio.current_time() == pytest.approx(3.0)
        with trio.move_on_after(60):
            await engine.wait(iid)
        got = await engine.get_instance(iid)
        row = await adapter.load(iid)
        assert got is not None and row is not None
        pending = [name for _, name, _ in row.signals]
        assert got.status == "completed", (
            f"at t={trio.current_time():.0f} it still waits at {got.current_step} for {got.waiting},"
            f" with {pending} pending in storage")
        assert got.output == "A"


@pytest.mark.trio
async def test_fifo_holds_for_a_signal_stored_while_a_wake_reads_the_row(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """FAILS ON CURRENT CODE (same root cause as the test above).

    Promised (docs/waiting.md "First in, first out"): signals of one name are taken in the
    order they were stored (A's ``signal()`` returned before B's was called).

    Setup as above, but after "b" the run stays in memory (branch y works 10 s) while branch x
    takes "a" twice. A is stored at t=3 (its ``signal()`` returns then); the run is taken up at
    t=5 from the row of t=2; B is sent at t=5.5 and handed to the live run at once.

    Expected: ra1 takes A, ra2 takes B: ["A", "B"].

    What happens: ra1 takes B (stored 2.5 s after A); ra2 waits for ever, A stranded in
    storage (the run never reads it: its signals count as fetched).
    """
    adapter = Lagging()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(B_THEN_A_TWICE_WHILE_WORKING)
        iid = await engine.start("b-then-a-twice-while-working", {})
        await trio.sleep(2)
        assert iid not in engine._live
        async with trio.open_nursery() as nursery:
            adapter.next_load = 3.0
            nursery.start_soon(engine.signal, iid, "b", None)
            await trio.sleep(1)
            await engine.signal(iid, "a", "A")  # t=3
            await trio.sleep(2.5)  # t=5.5
            assert iid in engine._live, "the 'b' wake took it up at t=5 (branch y keeps it in memory)"
            await engine.signal(iid, "a", "B")
        with trio.move_on_after(60):
            await engine.wait(iid)
        got = await engine.get_instance(iid)
        assert got is not None
        ra1 = got.step_results.get("ra1")
        assert ra1 is not None and ra1.output == "A", f"ra1 took {None if ra1 is None else ra1.output!r}, not A"
        assert got.status == "completed"
        assert got.step_results["both"].output == ["A", "B"]


@pytest.mark.trio
async def test_a_signal_stored_before_the_deadline_while_a_wake_reads_the_row_is_taken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """FAILS ON CURRENT CODE (same root cause as the test above).

    Promised (docs/waiting.md "Timeout"): a receive fails with SignalTimeoutError only if no
    signal came in time ("in time": ``signal()`` had it stored by the deadline).

    Setup as above: the "b" wake's read sees the row as at t=2 and answers at t=5; "a" is
    stored at t=3 and its ``signal()`` returns then. ra waits from t=5 until t=35.

    Expected: ra takes "a" at once (stored 32 s before its deadline).

    What happens: ra does not see it: the run taken up at t=5 trusts the t=2 row, waits in
    memory, parks, and is only woken at its deadline (t=35) -- by a run that reads storage and
    takes "a" then, 30 s late; with ``within`` shorter than the waker's look-ahead the step
    would time out instead. Asserted: it is done well before the deadline.
    """
    adapter = Lagging()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(B_THEN_A_BY_DEADLINE)
        iid = await engine.start("b-then-a-by-deadline", {})
        await trio.sleep(2)
        assert iid not in engine._live
        async with trio.open_nursery() as nursery:
            adapter.next_load = 3.0
            nursery.start_soon(engine.signal, iid, "b", None)
            await trio.sleep(1)
            await engine.signal(iid, "a", "A")  # t=3
        assert trio.current_time() == pytest.approx(5.0)
        with trio.move_on_after(10):  # until t=15, well before ra's deadline (t=35)
            done = await engine.wait(iid)
        got = await engine.get_instance(iid)
        assert got is not None
        assert got.status == "completed", f"at t={trio.current_time():.0f} ra has not taken 'a' stored at t=3"
        assert done.output == "A"


# -- pinned: the count goes back to zero ----------------------------------------------------------


@pytest.mark.trio
async def test_a_caller_cancelled_during_the_hand_over_leaves_no_count_and_fifo_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Passes (pins 79fd3c3). ``signal("a", "A")`` to the live run, its caller's scope cancelled
    already, is handed over at once (nothing awaits). Later, the run out of memory waiting at
    ra2, ``signal("a", "B")``'s caller is cancelled while its hand-over reads the row (answered
    5 s later): ``signal()`` returns, ``_deliver_later`` delivers B beside the caller, the
    engine's watches on the instance are all gone after (no leak), and each signal is taken
    once, in order. (79fd3c3's count of signals on their way became a watch on the signals
    stored while a row is read.)"""
    adapter = Lagging()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(B_THEN_A_TWICE_WHILE_WORKING)
        iid = await engine.start("b-then-a-twice-while-working", {})
        await engine.signal(iid, "b")
        await trio.sleep(2)  # ra1 waits in memory (branch y works until t=10)
        assert iid in engine._live
        with trio.CancelScope() as scope:
            scope.cancel()
            await engine.signal(iid, "a", "A")  # handed at once to the live run: nothing to cancel
        assert not engine._ends._one and not engine._ends._signals, "no watch left behind"
        with trio.move_on_after(60):
            await engine.wait(iid)
        got = await engine.get_instance(iid)
        assert got is not None and got.status == "running"  # ra2 waits for a second "a"
        adapter.next_load = 5.0
        with trio.move_on_after(0.5):  # cancelled while the row is read (it left memory)
            await engine.signal(iid, "a", "B")
        await trio.sleep(10)
        assert not engine._ends._one and not engine._ends._signals, "no watch left behind"
        done = await engine.wait(iid)
    assert done.status == "completed"
    assert done.step_results["both"].output == ["A", "B"]
