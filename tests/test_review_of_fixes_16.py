"""Review of f3b53d4 / 55b6a81 (signal() cancelled after its signal was stored; explore_crashes
bounding every run's wait; _lanes.is_signal_name); each test failed before its fix.

All on trio's autojumping MockClock (virtual time); adapters are MemoryAdapter subclasses whose
calls take (virtual) time.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from test_review_of_fixes_15 import picks_again_after_a_resume, routed_by
from trioflow.testing import open_test_engine


class LoadCleansUpOnCancel(tf.adapters.MemoryAdapter):
    """``load()`` takes 1 s; cancelled, it cleans up for 0.1 s, shielded, before it raises
    (as an async database client returning its connection to a pool does)."""

    async def load(self, instance_id: str) -> Any:
        try:
            await trio.sleep(1.0)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.1)
            raise
        return await super().load(instance_id)


async def test_signal_cancelled_by_an_outer_shutdown_is_a_clean_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The application shuts down: a cancel scope around the engine's block and a request
    handler inside it (sending a signal) is cancelled while signal() reads the row to wake the
    parked instance. The engine's own nursery winds down at once and closes; ``_closed`` is only
    set once the block's body exits, which it cannot do before the handler has finished.

    Expected: the shutdown is clean (everything raises Cancelled; the scope catches it; the
    stored signal waits for the next engine).
    Actual: signal()'s ``except trio.Cancelled`` sees ``_closed`` False and calls
    ``self._supervisor.start_soon`` on the closed nursery: ``RuntimeError: Nursery is closed to
    new arrivals`` replaces the Cancelled and escapes the block. (A load that takes even one
    checkpoint, shielded, on its way out is enough; with none the race goes the other way.)"""
    wf = tf.workflow("w").receive("r", signal="go").build()
    problem: BaseException | None = None
    with trio.move_on_after(1000) as outer:
        try:
            async with open_test_engine(adapter=LoadCleansUpOnCancel()) as engine:
                engine.register(wf)
                iid = await engine.start("w")
                await trio.sleep(5)  # parked
                async with trio.open_nursery() as handlers:
                    handlers.start_soon(engine.signal, iid, "go", "yes")
                    await trio.sleep(0.5)  # the signal is stored; the wake's load is in flight
                    outer.cancel()  # shutdown
                    await trio.sleep_forever()
        except BaseException as exc:  # a group of nothing but Cancelled is the clean case
            rest = exc.split(trio.Cancelled)[1] if isinstance(exc, BaseExceptionGroup) else (
                None if isinstance(exc, trio.Cancelled) else exc)
            if rest is None:
                raise
            problem = rest
    assert problem is None, f"the shutdown raised {problem!r} instead of being cancelled cleanly"
    assert outer.cancelled_caught


class CancelledThenBusy(tf.adapters.MemoryAdapter):
    """Once armed: ``load()`` takes 1 s (the caller's request times out meanwhile), and the next
    load made by the engine's wake task fails once with StorageUnavailableError (busy: a failure
    that may pass); every other load works at once."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.slow_done = False
        self.failed = False

    async def load(self, instance_id: str) -> Any:
        if self.armed and not self.slow_done:
            self.slow_done = True
            await trio.sleep(1.0)
        elif self.armed and not self.failed and trio.lowlevel.current_task().name.startswith("wake signalled"):
            self.failed = True
            raise tf.StorageUnavailableError("database is locked")
        return await super().load(instance_id)


async def test_cancelled_signal_wake_survives_one_busy_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """f3b53d4: a signal() cancelled after storing its signal starts ``_wake_signalled`` beside
    it, since 'a parked receive with no timeout has nothing else to wake it before a restart'.
    Storage that is slow enough for the caller to time out is likely busy a moment later.

    Expected: a failure that may pass (StorageUnavailableError, which the engine retries for
    checkpoints) does not lose the wake: the instance takes its stored signal and completes.
    Actual: the task's one load raises, the supervisor logs 'actor wake signalled ... crashed',
    and nothing wakes the instance again: it stays parked (an hour, virtual) until a restart."""
    wf = tf.workflow("w").receive("r", signal="go").build()
    adapter = CancelledThenBusy()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(5)  # parked
        adapter.armed = True
        with trio.move_on_after(0.5):
            await engine.signal(iid, "go", "yes")  # stored; cancelled during the wake's load
        with trio.move_on_after(3600):
            done = await engine.wait(iid)
            assert done.status == "completed"
            return
    assert adapter.failed  # the one busy read hit the wake task
    raise AssertionError("the stored signal was never taken: the wake beside the caller was lost")


async def test_explore_crashes_reports_a_crash_run_sent_to_a_wait_that_never_ends_as_a_divergence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``pick`` is not idempotent: the first call of a run says "a", a call again after a resume
    "b" (its per-run count is reset by adapter_factory, called once per run). With "b" the run
    goes to a receive without a timeout that ``signals=`` never sends.

    The same workflow with "b" leading to a pass step is reported as it should be:
    CrashDivergenceError, "step 'pick' ... ran again after the crash and returned 'b', where its
    first run returned 'a': it is not idempotent". Here, f3b53d4 bounds the crash run's wait and
    raises from it.

    Expected: CrashDivergenceError naming the crash point and the non-idempotent step (with
    ``check=False``: a report with that point divergent) -- the fault-free run ended, so the
    arguments were fine.
    Actual: InvalidArgumentError 'waits for signal 'never' ... no signal of that name is left to
    send (signals= sends: none)': blames signals=, names no crash point, drops the divergence
    the explorer had found, and check=False cannot get a report."""
    from trioflow.testing import CrashDivergenceError, explore_crashes

    pick, fresh_storage = picks_again_after_a_resume()

    wf = routed_by(pick)
    raised: BaseException | None = None
    with trio.move_on_after(10**11):
        try:
            await explore_crashes(wf, adapter_factory=fresh_storage)
        except Exception as exc:  # noqa: BLE001
            raised = exc
    assert isinstance(raised, CrashDivergenceError), f"expected CrashDivergenceError, got {raised!r}"
    assert "not idempotent" in str(raised)
