"""A code review of 6df983d..HEAD: what it found that a test can show (each failed before its fix;
autojump MockClock, no real sleeps)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


class SlowLoad(tf.adapters.MemoryAdapter):
    """``load()`` takes 1 s."""

    async def load(self, instance_id: str) -> Any:
        await trio.sleep(1.0)
        return await super().load(instance_id)


async def test_signal_cancelled_after_it_was_stored_still_wakes_the_parked_receive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """(Adjacent to the change: Engine.signal's wake path, which now takes ``pending=``.)
    A receive without a timeout has left memory. ``signal()`` stores the signal, then reads the
    row to wake the instance; the caller is cancelled during that read (a request timeout).
    The signal is stored ('once signal() has returned, a signal is never lost'; here it did not
    return, but it is stored and the instance waits for it), yet nothing wakes the instance in
    this engine: its wake_at is None, and only a restart's resume() looks at pending signals."""
    wf = tf.workflow("w").receive("r", signal="go").build()
    async with open_test_engine(adapter=SlowLoad()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(5)  # parked
        with trio.move_on_after(0.5):
            await engine.signal(iid, "go", "yes")  # stored at once; cancelled in the wake's load
        with trio.move_on_after(3600):
            done = await engine.wait(iid)
            assert done.status == "completed"
            return
    raise AssertionError("the instance never took the stored signal in this engine")


async def test_explore_crashes_reports_a_crash_run_that_never_ends_rather_than_hang(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """c9b5e8f bounds only the fault-free run (``crash_after is None``: ``_fault_free_end``);
    crash runs still ``await engine.wait()`` unbounded. A step that is not idempotent (what
    explore_crashes exists to find) can route a resumed run to a receive without a timeout
    for a signal ``signals=`` does not send: the explorer then hangs for ever instead of
    raising CrashDivergenceError (or the TrioflowError the fault-free run gets)."""
    from trioflow.testing import CrashDivergenceError, explore_crashes

    calls = {"n": 0}

    def pick(ctx: Any) -> str:
        calls["n"] += 1
        return "a" if calls["n"] == 1 else "b"  # not idempotent: only the very first call says "a"

    wf = routed_by(pick)
    raised: BaseException | None = None
    with trio.move_on_after(10**11):  # virtual: far past NEVER_ENDS_AFTER (3.2e9)
        try:
            await explore_crashes(wf)
        except (CrashDivergenceError, tf.TrioflowError) as exc:
            raised = exc
    assert raised is not None, "explore_crashes hung on a crash run that can never end"


def routed_by(pick: Any, name: str = "w") -> tf.WorkflowDefinition:
    """A workflow whose step ``pick`` routes it: "b" to a receive without a timeout for a
    signal nobody sends, anything else to its end."""
    return (tf.workflow(name)
            .step("pick", pick)
            .choice("route", choices=[tf.when(lambda ctx: ctx.steps["pick"] == "b", next="stuck")], default="done")
            .receive("stuck", signal="never", next="done")
            .pass_("done", result="ok")
            .build())


def picks_again_after_a_resume() -> tuple[Any, Any]:
    """A step callable that is not idempotent (the first call of a run says "a", a call again
    after a resume "b") and an ``adapter_factory`` that starts each run's count afresh (a
    run's first call is a new process's first)."""
    calls = {"n": 0}

    def pick(ctx: Any) -> str:
        calls["n"] += 1
        return "a" if calls["n"] == 1 else "b"

    def fresh_storage() -> tf.adapters.MemoryAdapter:
        calls["n"] = 0
        return tf.adapters.MemoryAdapter()

    return pick, fresh_storage
