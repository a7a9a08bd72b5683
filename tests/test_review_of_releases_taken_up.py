"""An adversarial review of 05951a9: ``Run.take_up_release`` (a run that has run nothing yet
starts on the definition registered as it starts) and ``to_instance``'s ``running`` entries in
``step_results``. Every test here failed on 05951a9 and passes since the commit that added
this file: a run in memory switches only to a release whose jobs are all registered (the
review asked that it wait for them, as one taken up from storage does; in memory it has a
release that runs, its own, and runs on it, as README says); a pending instance's view lists no
step running; queued runs switch as the replacement is registered, so the deadline watched is
the new release's; a delayed start cancelled in memory ends on the new release. Each docstring
quotes the promise, the reproduction, what was expected and what happened.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trioflow as tf


async def _v(data: object) -> str:
    return "v"


# --- 1. A run switched in memory to a release whose jobs are not registered fails ------------


@pytest.mark.parametrize("how", ["queued", "delayed-in-memory", "held-ahead"])
async def test_run_in_memory_replaced_by_a_release_with_missing_jobs_runs_on_its_own(
    autojump_clock: trio.testing.MockClock, how: str,
) -> None:
    """README, Registration: one that has run nothing yet "starts at the new release's first
    step ..., in memory (queued here, or waiting out a short delay) as after a restart, save
    that one in memory runs on the release it was started with while the new one's jobs are not
    all registered".

    Reproduction: "w" (job "v1") has an instance queued behind a blocker (max_running=1), or
    started with delay=0.5 (kept in memory), or with delay=5 and taken up by the waker ahead
    of its time (replace at 4.8 s, during the hold); `register(w2, replace=True)` where w2's
    step uses job "later", never registered.
    Expected: it completes on "w" ("old-step"), as before 05951a9.
    Was (05951a9): it started on w2 at once and failed: `UnknownJobError: no job registered
    as 'later'`.
    """
    gate = trio.Event()

    async def hold(data: object) -> None:
        await gate.wait()

    async with tf.open_engine(max_running=1) as engine:
        engine.jobs.register("v1", _v)
        engine.jobs.register("hold", hold)
        engine.register(tf.workflow("blocker").task("hold", job="hold").build())
        engine.register(tf.workflow("w").task("old-step", job="v1").build())
        new = tf.workflow("w").task("new-step", job="later").build()
        if how == "queued":
            await engine.start("blocker", None)
            iid = await engine.start("w", None)
            await trio.sleep(0.1)
            engine.register(new, replace=True)
            gate.set()
        elif how == "delayed-in-memory":
            iid = await engine.start("w", None, delay=0.5)
            await trio.sleep(0.1)
            engine.register(new, replace=True)
        else:
            iid = await engine.start("w", None, delay=5)
            await trio.sleep(4.8)
            engine.register(new, replace=True)
        with trio.fail_after(10):
            done = await engine.wait(iid)
        gate.set()
    assert (done.status, list(done.step_results)) == ("completed", ["old-step"]), (how, done.status, done.error)


# --- 2. A pending instance's view lists its first step as running -------------------------


async def test_pending_instance_lists_no_running_step(autojump_clock: trio.testing.MockClock) -> None:
    """README, Defining workflows: "`instance.step_results[name]` the newest execution (while a
    *running* instance stands in a step, a task running or a timer or signal waited for, that
    step's entry is its execution under way, status `running` ...)"; README, open_engine: "the
    rest wait in a queue (stored as `pending`, no task of their own, as is an instance whose
    `on_start` hook has not run yet: see Hooks)". `_add_running` (05951a9): only for
    `state.status == "running"`.

    Reproduction: a workflow ("s1") with an `on_start` hook that takes 5 s; `start()`; 1 s
    later `get_instance()` and `get_instances()`.
    Expected: the instance is `pending` (as it is), with no step running: "s1" has not begun,
    the hook runs before it (a pending instance has no entry, as a queued one has none).
    Actual: status "pending" with `step_results == {"s1": StepResult(status="running",
    execution=1, ...)}` in both views: the status is the stored one while the entries were
    built from the state in memory (already "running").
    """
    async def hook(ctx: object) -> None:
        await trio.sleep(5)

    async with tf.open_engine() as engine:
        engine.jobs.register("v", _v)
        engine.register(tf.workflow("w").task("s1", job="v").with_hooks(on_start=hook).build())
        iid = await engine.start("w", None)
        await trio.sleep(1)
        inst = await engine.get_instance(iid)
        (listed,) = [i for i in await engine.get_instances("w") if i.id == iid]
        done = await engine.wait(iid)
    assert inst is not None and done.status == "completed"
    assert inst.status == listed.status == "pending"
    assert {k: r.status for k, r in inst.step_results.items()} == {}, inst.step_results
    assert {k: r.status for k, r in listed.step_results.items()} == {}, listed.step_results


# --- 3. A queued run's workflow deadline is watched on the release it was queued with ------


async def _resumed_queued(
    tmp_path: object, running: dict[str, int], replacement: tf.WorkflowDefinition, old_timeout: float | None,
    gate: trio.Event, wait_before_gate: float,
) -> tuple[tf.WorkflowInstance, tf.WorkflowInstance]:
    path = str(tmp_path / "flows.db")  # type: ignore[operator]

    async def slow(data: object) -> str:
        running["now"] += 1
        running["most"] = max(running["most"], running["now"])
        try:
            await trio.sleep(50)
        finally:
            running["now"] -= 1
        return "slow"

    async def hold(data: object) -> None:
        running["now"] += 1
        running["most"] = max(running["most"], running["now"])
        try:
            await gate.wait()
        finally:
            running["now"] -= 1

    builder = tf.workflow("w").task("a1", job="slow")
    old = (builder.with_timeout(old_timeout) if old_timeout is not None else builder).build()
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.jobs.register("slow", slow)
        engine.register(old)
        iid = await engine.start("w", None)
        await trio.sleep(1)  # closed during its first step: it has run nothing
    running["most"] = 0
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path), max_running=1) as engine:
        engine.jobs.register("slow", slow)
        engine.jobs.register("hold", hold)
        engine.register(tf.workflow("blocker").task("hold", job="hold").build())
        await engine.start("blocker", None)
        engine.register(old)  # resumed, queued behind the blocker
        await trio.sleep(1)
        engine.register(replacement, replace=True)
        await trio.sleep(wait_before_gate)
        mid = await engine.get_instance(iid)
        gate.set()
        done = await engine.wait(iid)
    assert mid is not None
    return mid, done


async def test_queued_run_launched_at_the_old_release_deadline_takes_no_slot_beyond_max_running(
    autojump_clock: trio.testing.MockClock, tmp_path: object,
) -> None:
    """README, open_engine: "At most `max_running` instances run at once; ... (an instance
    resumed by a new engine waits for a slot with the status it was stored with; one still
    waiting at its workflow deadline then runs at once, as a cancelled instance does, and ends
    `timed_out`)".

    Reproduction: SQLite; "w" (`with_timeout(100)`, a 50 s step) starts and the engine closes
    1 s into its first step. A new engine (max_running=1) runs a blocker, then registers "w":
    the instance is resumed and queues. `register(w2, replace=True)`, w2 the same step with no
    workflow timeout. 120 s later the blocker is released.
    Expected: the instance, which will start on w2 (no timeout), keeps waiting for a slot:
    never more than one instance runs at once.
    Actual: at the old release's deadline (t=101) it is launched with no slot, as a timed-out
    one is, then starts on w2 (take_up_release), which has no deadline: it runs its whole
    50 s step beside the blocker, two instances running with max_running=1, and completes.
    """
    running = {"now": 0, "most": 0}
    gate = trio.Event()
    new = tf.workflow("w").task("b1", job="slow").build()
    mid, done = await _resumed_queued(tmp_path, running, new, 100, gate, 160)
    assert done.status == "completed" and list(done.step_results) == ["b1"]
    assert running["most"] == 1, f"{running['most']} instances ran at once with max_running=1 (status at t=162: {mid.status})"


async def test_queued_run_times_out_at_the_new_release_deadline(
    autojump_clock: trio.testing.MockClock, tmp_path: object,
) -> None:
    """README, open_engine: "an instance resumed by a new engine waits for a slot with the
    status it was stored with; one still waiting at its workflow deadline then runs at once,
    as a cancelled instance does, and ends `timed_out`". Registration: one that has run
    nothing yet starts on the new release.

    Reproduction: as above, but the old release has no timeout and the replacement w2 has
    `with_timeout(100)`; the blocker is released at t≈202.
    Expected: the instance, whose workflow (w2) gives it 100 s from its start, ends
    `timed_out` at its deadline (t≈101), still waiting for a slot.
    Actual: nothing watches w2's deadline while it queues: it is still `running` at t=202,
    and times out only once the blocker frees the slot.
    """
    running = {"now": 0, "most": 0}
    gate = trio.Event()
    new = tf.workflow("w").task("b1", job="slow").with_timeout(100).build()
    mid, done = await _resumed_queued(tmp_path, running, new, None, gate, 200)
    assert done.status == "timed_out"
    assert mid.status == "timed_out", f"at t=202, 100 s past its deadline, it is {mid.status!r}"


# --- 4. Which release's end hook a cancelled delayed start runs depends on its delay --------


async def test_cancelled_delayed_start_runs_the_registered_release_hook(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Registration: "A replaced definition is used by instances started from then on
    and by instances taken up from storage ..."; register() docstring (05951a9): "one that has
    run nothing yet (queued for a slot, or waiting in memory for its delayed start) starts on
    the one registered as it starts, as one taken up from storage does" (the commit's own test:
    which release a delayed start runs must not depend "on the length of its delay").

    Reproduction: "w" with `on_failed` recording "old"; `start(delay=0.5)`; 0.1 s later
    `register(w2, replace=True)`, w2's `on_failed` recording "new"; 0.2 s later `cancel()`.
    Expected: the same hook whatever the delay: "new", as a 5 s delay (out of memory) and a
    run queued for a slot (cancelled after the same replacement) both give.
    Actual: with delay=0.5 (kept in memory) the replaced release's hook runs: ["old"]
    (wait_for_start's cancel goes before take_up_release).
    """
    seen: list[str] = []
    delay = 0.5
    async with tf.open_engine() as engine:
        engine.jobs.register("v", _v)
        engine.register(tf.workflow("w").task("a1", job="v").with_hooks(on_failed=lambda r: seen.append("old")).build())
        iid = await engine.start("w", None, delay=delay)
        await trio.sleep(0.1)
        engine.register(tf.workflow("w").task("b1", job="v").with_hooks(
            on_failed=lambda r: seen.append("new")).build(), replace=True)
        await trio.sleep(0.2)
        await engine.cancel(iid)
        done = await engine.wait(iid)
        await trio.sleep(0.1)
    assert done.status == "cancelled"
    assert seen == ["new"], f"delay={delay}: on_failed hooks run: {seen}"
