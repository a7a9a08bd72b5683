"""A caller interrupted inside ``signal()`` or ``cancel()`` (its own ``move_on_after``, a
client gone, storage unavailable for a moment) leaves what those calls promise: a signal stored
is reported sent, and a cancel a repeated call says yes to is stored, so the next engine
compensates rather than goes forward. From an adversarial
review of callers cancelled at every await; each test failed before its fix (autojump
MockClock)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter


class Ledger:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def job(self, name: str) -> Any:
        async def run(ctx: Any) -> str:
            self.calls.append(name)
            return name
        return run

    def undo(self, name: str) -> Any:
        async def run(ctx: Any, result: Any) -> None:
            self.calls.append(f"undo {name}")
        return run


class SlowReads(MemoryAdapter):
    """A database across a network: a read takes half a second, and its caller may go."""

    async def load(self, instance_id: str) -> Any:
        row = await super().load(instance_id)
        await trio.sleep(0.5)
        return row


async def test_a_signal_stored_before_its_caller_went_is_reported_sent(autojump_clock: trio.testing.MockClock) -> None:
    """``signal()`` raised ``Cancelled`` (for trio: not done) once the signal was stored, at the
    read that wakes the parked instance; a caller that sent it again had it taken twice."""
    ledger = Ledger()
    wf = (tf.workflow("w").receive("r1", signal="go")
          .receive("r2", signal="go", timeout=50, catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="once")])
          .step("twice", ledger.job("twice"), end=True)
          .step("once", ledger.job("once")).build())
    async with tf.open_engine(adapter=SlowReads()) as engine:
        engine.register(wf)
        await engine.start("w", instance_id="i")
        await trio.sleep(10)  # parked on r1, out of memory
        sent = False
        with trio.move_on_after(0.1) as deadline:  # the caller's own, inside the wake's read
            await engine.signal("i", "go", 1)
            sent = True
            await trio.sleep(1)  # the caller's next checkpoint: its cancellation stands
        assert deadline.cancelled_caught
        if not sent:
            await engine.signal("i", "go", 1)  # "not sent": sent again
        done = await engine.wait("i")
    assert (sent, done.status, ledger.calls) == (True, "completed", ["once"])


# -- a queued instance (woken, waiting for a slot) whose cancel is not stored at once ---------

def _queued(ledger: Ledger) -> tuple[tf.WorkflowDefinition, tf.WorkflowDefinition, trio.Event]:
    gate = trio.Event()

    async def blocker(ctx: Any) -> str:
        await gate.wait()
        return "x"

    wf = (tf.workflow("w").step("a", ledger.job("a"), ledger.undo("a")).wait("t", seconds=5)
          .step("last", ledger.job("last")).build())
    return wf, tf.workflow("block").step("x", blocker).build(), gate


class StuckWrites(MemoryAdapter):
    """Writes that take two seconds (``"slow"``), whose caller may go before they are made,
    or fail as a database locked by another connection (``"locked"``)."""

    def __init__(self) -> None:
        super().__init__()
        self.trouble: str | None = None

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        if self.trouble == "slow":
            await trio.sleep(2)
        elif self.trouble == "locked":
            raise tf.StorageUnavailableError("database is locked (test)")
        return await super().checkpoint(*args, **kwargs)


async def _cancel_queued_and_close(trouble: str) -> tuple[tf.WorkflowInstance, list[str], bool]:
    ledger = Ledger()
    wf, block, gate = _queued(ledger)
    adapter = StuckWrites()
    async with tf.open_engine(adapter=adapter, max_running=1) as engine:
        engine.register(wf)
        engine.register(block)
        await engine.start("w", instance_id="i")
        await trio.sleep(2)  # 'a' done, parked on its timer
        await engine.start("block", instance_id="b")  # holds the only slot
        await trio.sleep(5)  # the timer is due: woken, queued for the slot
        adapter.trouble = trouble
        with trio.move_on_after(1):  # the caller gives up while the decision is being stored
            await engine.cancel("i")
        again = await engine.cancel("i")
        adapter.trouble = None
        # The engine closes before the slot frees.
    async with tf.open_engine(adapter=adapter) as engine:
        gate.set()
        engine.register(wf)
        engine.register(block)
        done = await engine.wait("i")
    return done, ledger.calls, again


async def test_a_queued_instance_whose_cancel_caller_went_mid_write_is_compensated(
        autojump_clock: trio.testing.MockClock) -> None:
    """The decision was stored by the caller's own task: cut short, nothing was stored, a
    repeated ``cancel()`` said yes, and the next engine ran the instance forward."""
    done, calls, again = await _cancel_queued_and_close("slow")
    assert again is True
    assert (done.status, calls) == ("cancelled", ["a", "undo a"])


async def test_a_queued_instance_cancelled_while_storage_is_locked_is_compensated(
        autojump_clock: trio.testing.MockClock) -> None:
    """Storage locked for eleven seconds, the first caller gone within one: the same."""
    done, calls, again = await _cancel_queued_and_close("locked")
    assert again is True
    assert (done.status, calls) == ("cancelled", ["a", "undo a"])


# -- an instance left by an earlier engine, its workflow not registered yet -------------------

class LostReadAfterCancel(MemoryAdapter):
    """The read that follows the header-only write of a stored cancel fails once: as a slow
    read whose caller goes (``"cancel"``), or as storage unavailable (``"unavailable"``)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.armed = False

    async def checkpoint(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        stored = await super().checkpoint(instance_id, *args, **kwargs)
        if kwargs.get("wake_at", 0) is None and not args[2]:  # the cancel's write: no records
            self.armed = True
        return stored

    async def load(self, instance_id: str) -> Any:
        row = await super().load(instance_id)
        if self.armed:
            self.armed = False
            if self.mode == "cancel":
                await trio.sleep_forever()
            raise tf.StorageUnavailableError("database is locked (test)")
        return row


async def test_a_cancel_stored_in_an_unregistered_instance_stands_though_the_read_after_it_failed(
        autojump_clock: trio.testing.MockClock) -> None:
    """The rows read at open still said forward: a repeated ``cancel()`` said yes, then the
    registration resumed the instance from them and it completed, never compensated."""
    for mode in ("cancel", "unavailable"):
        ledger = Ledger()

        async def slow(ctx: Any) -> str:
            ledger.calls.append("slow")
            await trio.sleep(10)
            return "slow"

        wf = (tf.workflow("w").step("a", ledger.job("a"), ledger.undo("a")).step("slow", slow)
              .step("last", ledger.job("last")).build())
        adapter = LostReadAfterCancel(mode)
        async with tf.open_engine(adapter=adapter) as engine:
            engine.register(wf)
            await engine.start("w", instance_id="i")
            await trio.sleep(5)  # 'slow' runs; the engine stops
        async with tf.open_engine(adapter=adapter) as engine:
            try:
                with trio.move_on_after(1):  # the workflow is not registered yet
                    await engine.cancel("i")
            except tf.StorageUnavailableError:
                pass
            assert await engine.cancel("i") is True
            engine.register(wf)
            done = await engine.wait("i")
        assert (mode, done.status, ledger.calls) == (mode, "cancelled", ["a", "slow", "undo a"])


class SlowReadAgain(MemoryAdapter):
    """After the header-only write of a stored cancel: the read that follows never answers
    (its caller goes), the next read of that instance takes five seconds, or fails for good
    (``failing``)."""

    def __init__(self, *, failing: bool = False) -> None:
        super().__init__()
        self.failing = failing
        self.armed = 0

    async def checkpoint(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        stored = await super().checkpoint(instance_id, *args, **kwargs)
        if instance_id == "i" and kwargs.get("wake_at", 0) is None and not args[2] and self.armed == 0:
            self.armed = 1
        return stored

    async def load(self, instance_id: str) -> Any:
        row = await super().load(instance_id)
        if instance_id == "i" and self.armed == 1:
            self.armed = 2
            await trio.sleep_forever()
        elif instance_id == "i" and self.armed >= 2:
            if self.failing:
                raise tf.StorageUnavailableError("database is locked (test)")
            if self.armed == 2:
                self.armed = 3
                await trio.sleep(5)
        return row


async def _left_running(adapter: MemoryAdapter, wf: tf.WorkflowDefinition) -> None:
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(wf)
        await engine.start("w", instance_id="i")
        await trio.sleep(5)  # mid-step: the engine stops


async def test_an_instance_resumed_while_its_row_is_read_again_is_not_run_twice(
        autojump_clock: trio.testing.MockClock) -> None:
    """The row read again beside a cancel's caller, slowly: ``resume()`` meanwhile ran the
    instance from storage (compensating it), and the row read before that run ended was then
    resumed again, so its compensation ran twice."""
    ledger = Ledger()

    async def slow(ctx: Any) -> str:
        await trio.sleep(10)
        return "slow"

    async def undo_a(ctx: Any, result: Any) -> None:
        ledger.calls.append("undo a")
        await trio.sleep(2)

    wf = tf.workflow("w").step("a", ledger.job("a"), undo_a).step("slow", slow).build()
    adapter = SlowReadAgain()
    await _left_running(adapter, wf)
    async with tf.open_engine(adapter=adapter) as engine:
        with trio.move_on_after(1):  # not registered yet: the cancel is stored in the row
            await engine.cancel("i")
        engine.register(wf)
        await engine.resume()
        await trio.sleep(1)
        done = await engine.wait("i")
        await trio.sleep(20)
    assert (done.status, ledger.calls) == ("cancelled", ["a", "undo a"])


async def test_a_row_read_again_while_storage_fails_holds_up_no_other_instance(
        autojump_clock: trio.testing.MockClock) -> None:
    """The read again counted as a resume in progress, which every ``wait()`` and ``cancel()``
    waits for: storage failing for that one instance held up a ``wait()`` on another for the
    whole storage retry time (a minute)."""
    async def slow(ctx: Any) -> str:
        await trio.sleep(100)
        return "slow"

    wf = tf.workflow("w").step("slow", slow).build()
    other = tf.workflow("other").step("quick", Ledger().job("quick")).build()
    adapter = SlowReadAgain(failing=True)
    await _left_running(adapter, wf)
    async with tf.open_engine(adapter=adapter, storage_retry_for=60) as engine:
        engine.register(other)
        with trio.move_on_after(1):
            await engine.cancel("i")
        await engine.start("other", instance_id="y")
        began = trio.current_time()
        assert (await engine.wait("y")).status == "completed"
        assert trio.current_time() - began < 1
