"""Durable waiting: cases a review found (each failed before its fix)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


class SlowCheckpoints(tf.adapters.MemoryAdapter):
    """Every checkpoint takes 0.1 s, as on a busy disk."""

    async def checkpoint(self, *args: Any, **kwargs: Any) -> None:
        await trio.sleep(0.1)
        await super().checkpoint(*args, **kwargs)


async def test_a_signal_sent_while_the_wait_is_being_stored_is_taken(autojump_clock: trio.testing.MockClock) -> None:
    wf = tf.workflow("w").receive("approval", signal="approved").build()
    async with open_test_engine(adapter=SlowCheckpoints()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(0.05)  # the receive step is storing its wait
        await engine.signal(iid, "approved", "yes")
        with trio.fail_after(60):
            done = await engine.wait(iid)
    assert done.status == "completed" and done.output == "yes"


async def test_a_workflow_timeout_counts_on_the_engines_clock(autojump_clock: trio.testing.MockClock) -> None:
    async def ok(data: Any) -> str:
        return "ok"

    wf = tf.workflow("w").wait("hour", seconds=3600).task("after", job=ok).with_timeout(86400).build()
    async with open_test_engine() as engine:
        engine.register(wf)
        await trio.sleep(5 * 86400)  # virtual time moves on before the instance starts
        done = await engine.wait(await engine.start("w"))
    assert done.status == "completed", done.error


async def test_wait_on_an_instance_out_of_memory_raises_when_the_engine_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wf = tf.workflow("w").wait("day", seconds=86400).build()
    errors: list[BaseException] = []
    async with open_test_engine() as engine:
        engine.register(wf)
        iid = await engine.start("w")

        async def waiter() -> None:
            try:
                await engine.wait(iid)
            except tf.EngineClosedError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(10)
            engine._close()
    assert len(errors) == 1


async def test_a_signal_sent_before_the_workflow_is_registered_wakes_the_instance_once_it_is(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adapter = tf.adapters.MemoryAdapter()
    wf = tf.workflow("w").receive("approval", signal="approved").build()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(1)
    async with open_test_engine(adapter=adapter) as engine:
        await engine.signal(iid, "approved", "late")
        engine.register(wf)
        with trio.fail_after(60):
            done = await engine.wait(iid)
    assert done.output == "late"


async def test_execute_workflow_times_a_receive_out_on_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    wf = tf.workflow("w").receive("approval", signal="approved", timeout=3 * 86400).build()
    started = time.monotonic()
    result = await tf.execute_workflow(None, wf)
    assert result.status == "failed" and result.error_name == "SignalTimeoutError"
    assert time.monotonic() - started < 2, "virtual time: no real wait, no busy loop"


async def test_an_adapter_from_before_waiting_instances_still_runs_waits_in_memory(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Older:
        """Delegates everything but due() and next_wake()."""

        def __init__(self) -> None:
            self.inner = tf.adapters.MemoryAdapter()

        def __getattr__(self, name: str) -> Any:
            if name in ("due", "next_wake"):
                raise AttributeError(name)
            return getattr(self.inner, name)

    async def ok(data: Any) -> str:
        return "ok"

    wf = tf.workflow("w").wait("day", seconds=86400).task("after", job=ok).build()
    async with tf.open_engine(adapter=Older()) as engine:  # type: ignore[arg-type]
        engine.register(wf)
        done = await engine.wait(await engine.start("w"))
    assert done.status == "completed" and done.output == "ok"


async def test_a_delayed_starts_timeout_counts_from_its_start(autojump_clock: trio.testing.MockClock) -> None:
    async def ok(data: Any) -> str:
        await trio.sleep(60)
        return "ok"

    wf = tf.workflow("w").task("a", job=ok).with_timeout(3600).build()
    async with open_test_engine() as engine:
        engine.register(wf)
        t0 = trio.current_time()
        done = await engine.wait(await engine.start("w", delay=7200))
    assert done.status == "completed", done.error
    assert trio.current_time() - t0 == pytest.approx(7260, abs=1)


async def test_an_instance_that_no_longer_fits_its_definition_compensates_what_it_can(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 16, item 10: it fails, and the completed steps the new definition still has are
    compensated, newest first (a reservation no longer leaks)."""
    released: list[str] = []

    async def reserve(data: Any) -> str:
        return "stock-1"

    async def release(output: Any) -> None:
        released.append(output)

    async def hang(data: Any) -> None:
        await trio.sleep_forever()

    adapter = tf.adapters.MemoryAdapter()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("w").task("reserve", job=reserve, compensate=release)
                        .task("charge", job=hang).build())
        iid = await engine.start("w")
        await trio.sleep(1)
    changed = tf.workflow("w").task("reserve", job=reserve, compensate=release).task("pay", job=reserve).build()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(changed)
        done = await engine.wait(iid)
    assert done.status == "failed" and done.error_name == "DefinitionMismatchError"
    assert "'charge'" in (done.cause or "")
    assert released == ["stock-1"] and done.compensated_steps == ("reserve",)


# -- stale rows and stalled runs (an adversarial review) ---------------------------------------


class BreakableCheckpoints(tf.adapters.MemoryAdapter):
    """Checkpoints fail while ``broken`` (as a full disk would; not a failure that may pass)."""

    broken = False

    async def checkpoint(self, *args: Any, **kwargs: Any) -> int | None:
        if self.broken:
            raise RuntimeError("disk hiccup")
        return await super().checkpoint(*args, **kwargs)


async def test_a_woken_instance_that_stalled_is_taken_up_again_by_resume(autojump_clock: trio.testing.MockClock) -> None:
    wf = tf.workflow("w").receive("r", signal="go").pass_("p", transform=lambda ctx: ctx.steps["r"]).build()
    adapter = BreakableCheckpoints()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(100)  # parked on the receive step
        adapter.broken = True
        await engine.signal(iid, "go", 1)  # wakes it; its checkpoint fails: it stalls
        await trio.sleep(10)
        with pytest.raises(tf.InstanceNotLiveError, match=r"engine\.resume\(\)"):
            await engine.wait(iid)
        adapter.broken = False
        assert await engine.resume() == [iid]  # as the stall's message says
        done = await engine.wait(iid)
    assert (done.status, done.output) == ("completed", 1)


class OneSlowLoad(tf.adapters.MemoryAdapter):
    """One load reads the row at once and returns it 5 s later, as a load queued behind other
    work can: stale by then."""

    slow_next = False

    async def load(self, instance_id: str) -> Any:
        record = await super().load(instance_id)
        if self.slow_next:
            self.slow_next = False
            await trio.sleep(5)
        return record


async def test_a_row_read_before_a_runs_last_checkpoint_is_not_resumed(autojump_clock: trio.testing.MockClock) -> None:
    # The first signal's load comes back after the second signal has woken the instance, which
    # took both signals and parked again: resuming the old row would run the loop again from
    # before them (its checkpoint then refused: the instance stalled, signal 3 never taken).
    wf = (tf.workflow("loop").receive("r", signal="go")
          .pass_("acc", transform=lambda ctx: ctx.data.update(seen=ctx.data.get("seen", []) + [ctx.steps["r"]]))
          .choice("more", choices=[tf.when(lambda ctx: len(ctx.data["seen"]) < 3, next="r")], default="done")
          .pass_("done", transform=lambda ctx: ctx.data["seen"]).build())
    adapter = OneSlowLoad()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("loop")
        await trio.sleep(100)
        async with trio.open_nursery() as nursery:
            adapter.slow_next = True
            nursery.start_soon(engine.signal, iid, "go", 1)  # its load comes back stale
            await trio.sleep(1)
            await engine.signal(iid, "go", 2)  # wakes it: it takes 1 and 2, and parks again
        await engine.signal(iid, "go", 3)
        with trio.fail_after(1000):
            done = await engine.wait(iid)
    assert (done.status, done.output) == ("completed", [1, 2, 3])


async def test_instances_woken_and_ended_are_not_remembered(autojump_clock: trio.testing.MockClock) -> None:
    # A long-lived engine wakes many timers: what it keeps of each must go once it has ended
    # (a memory leak otherwise; white-box: the engine's sets of instances by id).
    wf = tf.workflow("w").wait("later", seconds=3600).build()
    async with open_test_engine() as engine:
        engine.register(wf)
        ids = [await engine.start("w") for _ in range(50)]
        for iid in ids:
            assert (await engine.wait(iid)).status == "completed"
        # (The waker's set of those on their way is pruned each time it looks: at most a batch.)
        assert not engine._live and not engine._old_rows


async def test_a_leftover_row_is_not_resumed_after_its_instance_ran_and_parked(
        autojump_clock: trio.testing.MockClock) -> None:
    # An engine's leftovers are rows read when it opened. A start() of one of those ids right
    # after register() resumes it from a fresh read; if that run parks (a timer) before the
    # leftovers are worked through, the old row must be passed over, not run again (its
    # checkpoint then refused: the instance stalled). Which task goes first is the
    # scheduler's pick: twenty rounds make the bad order all but certain.
    for _ in range(20):
        adapter = tf.adapters.MemoryAdapter()
        calls: list[str] = []
        hang = trio.Event()

        async def step(data: Any) -> str:
            calls.append("a")
            if not hang.is_set():
                await trio.sleep_forever()  # the first engine stops while it runs
            return "a"

        wf = tf.workflow("w").task("a", job=step).wait("later", seconds=3600).build()
        async with open_test_engine(adapter=adapter) as engine:
            engine.register(wf)
            await engine.start("w", instance_id="x")
            await trio.sleep(1)
        hang.set()
        async with open_test_engine(adapter=adapter) as engine:
            engine.register(wf)
            await engine.start("w", instance_id="x")  # resumes it: the step ends, the timer parks it
            done = await engine.wait("x")
        assert (done.status, calls) == ("completed", ["a", "a"])


# -- an adversarial review of events, hooks and delays -----------------------------------------


async def _one(data: Any) -> int:
    return 1


@pytest.mark.parametrize("delay", [0.9, 60.0])
async def test_a_delay_waited_in_memory_is_not_part_of_the_workflow_timeout(
        autojump_clock: trio.testing.MockClock, delay: float) -> None:
    # 0.9 s is short enough to be waited in memory; a transactional workflow never leaves it.
    plain = tf.workflow("plain").task("a", job=_one).with_timeout(0.5).build()
    held = tf.workflow("held").task("a", job=_one).with_timeout(0.5).transactional().build()
    async with tf.open_engine(driver=tf.adapters.MemoryDriver()) as engine:
        engine.register(plain)
        engine.register(held)
        for name in ("plain", "held"):
            done = await engine.wait(await engine.start(name, delay=delay))
            assert done.status == "completed", (name, done.status, done.error)


async def test_a_closing_engine_lets_end_hooks_and_async_event_callbacks_finish(
        autojump_clock: trio.testing.MockClock) -> None:
    # A service that waits for an instance and leaves the block must not lose its on_complete
    # hook (stored completed, no later engine would run it) nor what an async callback holds.
    sent: list[str] = []
    audit: list[str] = []

    async def on_complete(result: tf.WorkflowResult) -> None:
        await trio.sleep(1)  # an HTTP call
        sent.append(result.instance_id)

    async def audit_log(event: dict[str, Any]) -> None:
        await trio.sleep(0.1)
        audit.append(event["event"])

    wf = tf.workflow("w").task("a", job=_one).task("b", job=_one).with_hooks(on_complete=on_complete).build()
    async with tf.open_engine() as engine:
        engine.events.on("workflow.*", audit_log)
        engine.register(wf)
        iid = await engine.start("w")
        assert (await engine.wait(iid)).status == "completed"
    assert sent == [iid]
    assert audit[0] == "workflow.started" and audit[-1] == "workflow.completed"


async def test_an_object_with_an_async_call_is_an_async_event_callback(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[str] = []

    class Sink:
        async def __call__(self, event: dict[str, Any]) -> None:
            seen.append(event["event"])

    async with tf.open_engine() as engine:
        engine.events.on("workflow.completed", Sink())
        engine.register(tf.workflow("w").task("a", job=_one).build())
        await engine.wait(await engine.start("w"))
    assert seen == ["workflow.completed"]


async def test_a_callback_that_returns_a_coroutine_is_said_not_left_unawaited(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    async def later(event: dict[str, Any]) -> None:
        pass

    async with tf.open_engine() as engine:
        engine.events.on("workflow.completed", lambda e: later(e))
        engine.register(tf.workflow("w").task("a", job=_one).build())
        await engine.wait(await engine.start("w"))
    assert "returned a coroutine, which was not run" in caplog.text
