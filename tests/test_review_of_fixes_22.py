"""Review of bbafa17: a timer that fired in a woken instance is stored by the next step's
checkpoint, or by the engine's waker (``Run.store_fired``) once it is ``STORE_FIRED_AFTER`` old.

Every test here fails on bbafa17; each docstring says why."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing
import trioflow as tf
from trioflow._codec import decode_stored
from trioflow._engine import WAKE_BATCH
from trioflow._errors import StorageUnavailableError
from trioflow._snapshot import to_instance
from trioflow.adapters import Adapter, MemoryAdapter
from trioflow.testing import virtual_wall_clock

from storages import engine_on, finish, returning, storage  # noqa: F401  (storage: the fixture)


async def stored_view(engine: tf.Engine, iid: str) -> tf.WorkflowInstance:
    """The instance as storage holds it (not the live run's state)."""
    record = await engine.adapter.load(iid)
    assert record is not None
    return to_instance(decode_stored(record))


def _short_timer_then_long_step() -> tf.WorkflowDefinition:
    """A timer long enough to park (woken by the waker), a 5 s step (its checkpoint, or the
    waker's store, stores the first timer: storage then says nothing is due), a timer short
    enough to stay in memory (0.5 s, under PARK_AFTER), then an hour-long step."""
    async def mid(_: Any) -> str:
        await trio.sleep(5)
        return "mid"

    async def work(_: Any) -> str:
        await trio.sleep(3600)
        return "worked"

    return (tf.workflow("t").wait("nap", seconds=60).task("mid", job=mid)
            .wait("blink", seconds=0.5).task("work", job=work).task("done", job=returning("done")).build())


async def test_a_short_timer_later_in_a_woken_run_stays_due_in_storage_for_the_whole_step_after_it(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """A woken run (``run.woken`` stays set for the run's whole life) runs a 0.5 s in-memory
    timer later on, followed by an hour-long step: run_lane (actors/_lane.py, the new
    ``if run.woken and _fired_unstored(...)``) leaves the timer unstored, and storage says the
    instance is due (its ``wake_at`` past) for the whole hour, not "within about a second" as
    README/docs say. Nothing has it stored: announcing the short timer stored a new ``wake_at``
    without telling the waker (``_wake_changed`` is set only when a run parks or ends), and the
    waker, which stopped looking once storage held nothing due, never calls ``_store_fired``.
    (Before the commit the timer's own checkpoint stored it as it fired.)"""
    clock = virtual_wall_clock()
    async with engine_on(storage(), clock) as engine:
        engine.register(_short_timer_then_long_step())
        iid = await engine.start("t")
        await trio.sleep(60 + 5 + 0.5 + 30)  # woken, "mid" done, "blink" fired; "work" runs its hour
        stored = await stored_view(engine, iid)
        due = [d.instance_id for d in await engine.adapter.due(clock(), 10)]
        assert (stored.waiting, [r.step_name for r in stored.history], iid in due) == (
            None, ["nap", "mid", "blink"], False), "the fired short timer is still unstored, the row due"


async def test_woken_runs_past_a_short_timer_crowd_every_other_timer_out_of_the_waker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A wake batch of woken runs, each past a short in-memory timer and into an hour-long step
    (as above): their rows stay due, with the soonest ``wake_at`` of all, and they are no longer
    in ``Engine._waking`` (the waker dropped them while storage held nothing due for them, after
    the first timer's store). ``_wake_due`` then asks ``due()`` for ``WAKE_BATCH`` rows, gets
    exactly these, passes each over as running here (``_resume_one`` gives ``None``; neither
    woken, nor counted, nor passed over by id, nor stored by ``_store_fired``), and wakes
    nothing: a timer that falls due meanwhile fires an hour late, and the waker reads the same
    thousand rows every second meanwhile. (Before the commit each short timer was stored as it
    fired.)"""
    clock = virtual_wall_clock()
    async with engine_on(MemoryAdapter(), clock) as engine:
        engine.register(_short_timer_then_long_step())
        engine.register(tf.workflow("timer").wait("nap", seconds=lambda ctx: ctx.input["s"]).task("ok", job=returning("ok")).build())
        for _ in range(WAKE_BATCH):
            await engine.start("t")
        # Due while the thousand run "mid" (their first timer stored): the waker looks, and
        # drops them from those on their way. (Timers fall due all the time in a busy engine.)
        await engine.start("timer", {"s": 63})
        other = await engine.start("timer", {"s": 100})
        await trio.sleep(100 + 30)
        seen = await engine.get_instance(other)
        assert seen is not None and seen.status == "completed", (
            f"30 s after its 100 s timer was due it is still {seen and seen.status}, waiting {seen and seen.waiting}")


class FullDisk(MemoryAdapter):
    """Checkpoints fail with ``StorageUnavailableError`` (a full disk) while ``full`` is set;
    reads still work."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        if self.full:
            raise StorageUnavailableError("disk full")
        return await super().checkpoint(*args, **kwargs)


async def test_a_fired_timer_the_waker_could_not_store_is_never_stored_until_the_step_after_it_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The waker's store of a woken run's fired timer fails (a full disk past
    ``storage_retry_for``; ``_store_one_fired`` logs it and goes on). ``Run._write`` set
    ``fired_at = None`` before the write, and nothing puts it back when the write fails, so
    ``_store_fired`` never tries again: once the disk has room again, storage still says the
    instance is due for the rest of the hour-long step, and the waker keeps counting it among
    the runs on their way (``run.stored_wake_at`` is not ``None``), which is exactly what
    ``store_fired`` exists to prevent (more than half a batch of them hold every timer back).
    (Before the commit, the timer's own checkpoint retried until it was stored.)"""
    clock = virtual_wall_clock()

    async def work(_: Any) -> str:
        await trio.sleep(3600)
        return "worked"

    adapter = FullDisk()
    async with engine_on(adapter, clock) as engine:
        engine.register(tf.workflow("t").wait("nap", seconds=60).task("work", job=work).build())
        iid = await engine.start("t")
        await trio.sleep(60.5)  # woken at 60, its timer fired: "work" runs
        adapter.full = True
        await trio.sleep(150)  # the waker's store gave up after storage_retry_for (60 s)
        adapter.full = False
        await trio.sleep(300)  # the disk has had room for five minutes
        stored = await stored_view(engine, iid)
        due = [d.instance_id for d in await adapter.due(clock(), 10)]
        assert (stored.waiting, iid in due) == (None, False), (
            f"storage still says it waits for {stored.waiting}: due, and counted among those on their way")


async def test_the_wakers_store_keeps_the_running_steps_half_done_shared_data_and_a_restart_applies_it_twice(
    autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter],
) -> None:
    """The waker's ``Run.store_fired`` checkpoints a single-lane run in the middle of the step
    after the timer (actors/_run.py ``store_fired`` -> ``_write``, at any await of that step),
    so the header it stores holds the shared data as the running step has half changed it.
    Restarted during that step, the step runs again on top of its own interrupted changes
    (``n`` is 2 on the second run). Before the commit a single main line was only ever stored
    between steps (the timer's checkpoint, then the step's), and a restart ran the step again on
    the data as the step before it left it, as the README promises ("completed steps never run
    again; the step in flight runs again")."""
    clock = virtual_wall_clock()
    runs: list[int] = []

    async def work(ctx: tf.WorkflowContext) -> str:
        ctx.data["n"] = ctx.data.get("n", 0) + 1
        runs.append(ctx.data["n"])
        await trio.sleep(3600)
        return "worked"

    wf = tf.workflow("t").wait("nap", seconds=60).step("work", work).build()
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        iid = await engine.start("t")
        await trio.sleep(60 + 10)  # woken, fired: "work" runs, the waker stored the timer
    async with engine_on(storage(), clock) as engine:
        engine.register(wf)
        done = await finish(engine, iid)
    assert done.status == "completed", done.error
    assert runs == [1, 1], "the step ran again on the shared data its interrupted run had half changed"


async def test_the_wakers_store_puts_back_shared_data_the_running_step_changed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No restart at all: the step after a woken timer holds a connection inside a value of
    ``ctx.data`` while it runs and takes it out before it ends (single-lane, so no checkpoint
    used to come in between). ``store_fired``'s checkpoint cannot encode the data, goes through
    ``take_changes_holding``, whose ``restore_data`` puts ``ctx.data["session"]`` back to its
    last stored value in the *live* state (the key is not ``held``: the step changed a value
    inside it): the running step's own changes (``count``) are silently lost and it ends with
    output 0, working on an object the instance no longer holds. Before the commit, nothing
    checkpointed a lone main line while its step ran."""
    seen: list[Any] = []

    async def setup(ctx: tf.WorkflowContext) -> str:
        ctx.data["session"] = {"count": 0}
        return "set up"

    async def work(ctx: tf.WorkflowContext) -> int:
        session = ctx.data["session"]
        session["conn"] = object()  # a connection, held while the step runs
        session["count"] += 1
        await trio.sleep(30)
        seen.append(ctx.data["session"] is session)
        del session["conn"]
        return int(ctx.data["session"]["count"])

    wf = tf.workflow("t").step("setup", setup).wait("nap", seconds=60).step("work", work).build()
    async with engine_on(MemoryAdapter()) as engine:
        engine.register(wf)
        done = await finish(engine, await engine.start("t"))
    assert (done.status, done.output, seen) == ("completed", 1, [True])
