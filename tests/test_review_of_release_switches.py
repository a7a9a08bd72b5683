"""An adversarial review of 05951a9 and 4d8c331: ``Run.take_up_release`` (a run that has run
nothing yet starts on the definition registered as it starts), ``Engine._take_up_queued``, the
delayed start's ``finally`` in ``wait_for_start``, ``_live_view`` and ``_add_running``. Every
test here failed at 4d8c331 and passes since the commit that added this file (queued runs switch
as the replacement's jobs are registered; a transactional run that started does not switch; a
delayed start's view while its on_start hook runs is as stored), save one case, older than these
commits, a strict xfail until the commit that removed its mark (a resumed run that started and
stored no record asks its driver's ledger whatever its release now: see
``trioflow.actors._transaction.may_have_committed``). Each docstring quotes the promise, the reproduction,
what was expected and what happened.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trioflow as tf


async def _v(data: object) -> str:
    return "v"


def _blocker(engine: tf.Engine, gate: trio.Event, running: dict[str, int] | None = None) -> None:
    """Workflow "blocker": one step that holds its slot until ``gate`` is set."""
    async def hold(data: object) -> None:
        if running is not None:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        try:
            await gate.wait()
        finally:
            if running is not None:
                running["now"] -= 1

    engine.jobs.register("hold", hold)
    engine.register(tf.workflow("blocker").task("hold", job="hold").build())


# --- 1 and 2. A queued run whose replacement's jobs arrive later keeps the old deadline -------


async def _resumed_queued_jobs_later(
    tmp_path: object, running: dict[str, int], old: tf.WorkflowDefinition, new: tf.WorkflowDefinition,
    later_at: float, gate_at: float,
) -> tuple[tf.WorkflowInstance, tf.WorkflowInstance]:
    """An instance of ``old`` ("w", job "slow": a 50 s step) is stored running (the engine
    closed 1 s into its first step). A new engine (max_running=1) runs a blocker, registers
    ``old`` (the instance is resumed and queues), 1 s later ``register(new, replace=True)``,
    ``new`` using job "later", not registered yet; "later" is registered at ``later_at`` s, the
    blocker released at ``gate_at`` s (``mid``: the view just before that)."""
    path = str(tmp_path / "flows.db")  # type: ignore[operator]

    async def slow(data: object) -> str:
        running["now"] += 1
        running["most"] = max(running["most"], running["now"])
        try:
            await trio.sleep(50)
        finally:
            running["now"] -= 1
        return "slow"

    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.jobs.register("slow", slow)
        engine.register(old)
        iid = await engine.start("w", None)
        await trio.sleep(1)  # closed during its first step: it has run nothing
    running["most"] = 0
    gate = trio.Event()
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path), max_running=1) as engine:
        engine.jobs.register("slow", slow)
        _blocker(engine, gate, running)
        await engine.start("blocker", None)
        t0 = trio.current_time()
        engine.register(old)  # resumed, queued behind the blocker
        await trio.sleep(1)
        engine.register(new, replace=True)  # its job "later" missing: the queued run stays on `old`
        await trio.sleep(later_at - (trio.current_time() - t0))
        engine.jobs.register("later", slow)  # now every job of `new` is registered
        await trio.sleep(gate_at - (trio.current_time() - t0))
        mid = await engine.get_instance(iid)
        gate.set()
        with trio.fail_after(300):
            done = await engine.wait(iid)
    assert mid is not None
    return mid, done


async def test_queued_run_whose_new_release_gets_its_jobs_later_runs_beyond_max_running(
    autojump_clock: trio.testing.MockClock, tmp_path: object,
) -> None:
    """README, open_engine: "At most `max_running` instances run at once; ... (an instance
    resumed by a new engine waits for a slot with the status it was stored with; one still
    waiting at its workflow deadline then runs at once, as a cancelled instance does, and ends
    `timed_out`)". README, Registration: one that has run nothing yet starts at the new
    release's first step, "in memory (queued here ...) as after a restart, save that one in
    memory runs on the release it was started with while the new one's jobs are not all
    registered"; register() docstring: "(once that one's jobs are registered: until then on
    its own)".

    Reproduction: SQLite; "w" (`with_timeout(100)`, a 50 s step) is resumed by an engine with
    max_running=1 and queues behind a blocker; `register(w2, replace=True)` (w2: no workflow
    timeout, its step on job "later", not registered); at t=10 `jobs.register("later", ...)`;
    the blocker is released at t=160.
    Expected: from t=10 its release is w2 (no deadline): it keeps waiting for the slot, and
    never more than one instance runs at once (or, had it stayed on "w", it would end
    `timed_out` at t≈101 without running its step).
    Actual: at the old release's deadline (t≈101) it is launched with no slot, as a timed-out
    one is, then switches to w2 as it launches (Run.take_up_release in
    Engine._instance_actor), which has no deadline: it runs its whole 50 s step beside the
    blocker (2 instances running with max_running=1) and completes. (Passed before 05951a9.)
    """
    running = {"now": 0, "most": 0}
    old = tf.workflow("w").task("a1", job="slow").with_timeout(100).build()
    new = tf.workflow("w").task("b1", job="later").build()
    mid, done = await _resumed_queued_jobs_later(tmp_path, running, old, new, 10, 160)
    assert running["most"] == 1, (
        f"{running['most']} instances ran at once with max_running=1; the instance ended {done.status}"
        f" after {list(done.step_results)}")


async def test_queued_run_whose_new_release_gets_its_jobs_later_times_out_at_its_deadline(
    autojump_clock: trio.testing.MockClock, tmp_path: object,
) -> None:
    """README, open_engine: "an instance resumed by a new engine waits for a slot with the
    status it was stored with; one still waiting at its workflow deadline then runs at once,
    as a cancelled instance does, and ends `timed_out`". Registration: a queued run starts on
    the release registered now once its jobs are all registered (register() docstring: "once
    that one's jobs are registered: until then on its own"); 4d8c331: "queued runs switch as
    the replacement is registered, so the deadline watched while they queue is the new
    release's".

    Reproduction: as above, but "w" has no timeout and w2 has `with_timeout(100)` (its step
    on job "later", registered at t=10); the blocker is released at t≈200.
    Expected: from t=10 it is on w2, whose deadline is t≈100 from its start: still queued
    then, it ends `timed_out` at that deadline.
    Actual: nothing watches w2's deadline while it queues (Engine._jobs_registered does not
    switch queued runs, as Engine._take_up_queued does on register()): at t=200 its view is
    still `running` at "a1", the old release's step; it times out only once the blocker
    frees the slot.
    """
    running = {"now": 0, "most": 0}
    old = tf.workflow("w").task("a1", job="slow").build()
    new = tf.workflow("w").task("b1", job="later").with_timeout(100).build()
    mid, done = await _resumed_queued_jobs_later(tmp_path, running, old, new, 10, 200)
    assert done.status == "timed_out", done.status
    assert mid.status == "timed_out", f"at t=200, 100 s past its deadline, it is {mid.status!r} at {mid.current_step!r}"


# --- 3. A committed transaction is run again once a non-transactional release replaces it ----


class _EndNeverStored(tf.adapters.MemoryAdapter):
    """Storage that never answers the checkpoint of an end while ``stuck``: the engine closes
    after the transaction committed and before the instance's end was stored."""

    stuck = False

    async def checkpoint(self, instance_id, status, header, records, **kw):  # type: ignore[no-untyped-def]
        if self.stuck and status in ("completed", "failed"):
            await trio.sleep_forever()
        return await super().checkpoint(instance_id, status, header, records, **kw)


@pytest.mark.parametrize("how", ["queued-then-replaced", "taken-up-by-the-replacement"])
async def test_a_committed_transactional_run_is_not_run_again_by_a_replacement(
    autojump_clock: trio.testing.MockClock, how: str,
) -> None:
    """docs/adapters.md, run ledger: "If the process dies between the two, the instance is
    still stored `running` and a resume would run the forward part, and write its rows, a
    second time. To close that window a driver may keep a run ledger ... `find_run`: on
    resume ... A record found ... is taken as the outcome of the forward run: nothing runs
    again ... and the instance is finished as `completed` with the recorded state." Both
    shipped drivers have it (MemoryDriver here).

    Reproduction: "w" (`.transactional()`, step "w1" writes {"ref": "r1"} to "orders") runs;
    its transaction commits (ledger recorded), and the engine closes before its end is stored.
    A new engine (max_running=1) with a blocker:
    - queued-then-replaced: registers "w" (the instance is resumed and queues behind the
      blocker), then `register(w2, replace=True)`, w2 a non-transactional release of "w"
      (step "p1", the same write); the blocker is released.
    - taken-up-by-the-replacement: registers w2 directly (the resume takes it up under w2).
    Expected: the instance ends `completed` from what committed; "orders" holds one "r1".
    Was: it completes after running w2's "p1": "orders" holds ["r1", "r1"]. The committed
    run "has run nothing yet" to Run.take_up_release / take_up (its records were deferred to
    the commit, so none is stored), and _forward asks the ledger only when the release it now
    runs is transactional. The queued variant passed before 05951a9 (the queued run launched
    on "w", which asked the ledger); the other is the same gap on the storage path.
    """
    driver = tf.adapters.MemoryDriver()
    adapter = _EndNeverStored()

    async def write(ctx: tf.WorkflowContext) -> str:
        await ctx.driver.create("orders", {"ref": ctx.input})
        return "w"

    old = tf.workflow("w").step("w1", write).transactional().build()
    new = tf.workflow("w").step("p1", write).build()
    adapter.stuck = True
    async with tf.open_engine(adapter=adapter, driver=driver) as engine:
        engine.register(old)
        iid = await engine.start("w", "r1")
        await trio.sleep(1)
    adapter.stuck = False
    assert [r["ref"] for r in await driver.find_many("orders", {})] == ["r1"]  # it committed
    gate = trio.Event()
    async with tf.open_engine(adapter=adapter, driver=driver, max_running=1) as engine:
        _blocker(engine, gate)
        await engine.start("blocker", None)
        if how == "queued-then-replaced":
            engine.register(old)
            await trio.sleep(1)
            engine.register(new, replace=True)
        else:
            engine.register(new)
        gate.set()
        with trio.fail_after(10):
            done = await engine.wait(iid)
    rows = [r["ref"] for r in await driver.find_many("orders", {})]
    assert (done.status, rows) == ("completed", ["r1"]), (done.status, list(done.step_results), rows)


# --- 4. A delayed start's view, while its on_start hook runs, shows a start not stored -------


@pytest.mark.parametrize("delay", [0.5, 30])
async def test_delayed_start_view_during_its_on_start_hook_lists_no_step_running(
    autojump_clock: trio.testing.MockClock, delay: float,
) -> None:
    """README, Defining workflows (05951a9): "`instance.step_results[name]` the newest
    execution (while a running instance stands in a step, a task running or a timer or
    signal waited for, that step's entry is its execution under way, status `running`, with
    its `started_at` where stored ...)"; Hooks: "`on_start` runs ... when the instance starts
    its first step: a delayed start's once its delay is over (again after a restart that came
    before that start was stored)"; `_live_view` (4d8c331): "a view says what is stored ...
    (Admitted, ... or its on_start hook running: storage holds no start time for it either,
    and its first step has not begun.)" 4d8c331 made a pending instance's view, its hook
    running, list no step running and no start time; a delayed start's is the same moment.

    Reproduction: "w" (task "s1", an `on_start` hook that takes 5 s); `start(delay=0.5)` (waited
    in memory) or `delay=30` (out of memory); 2 s after the delay, while the hook runs,
    `get_instance()` and `get_instances()`.
    Expected: as stored (the row still says `waiting={"start": due}` and `started_at=None`
    until the hook is over, and a restart then announces it again with a new start time): no
    step running, no `started_at`.
    Actual: both views show `started_at` set, `waiting=None` and
    `step_results == {"s1": running, execution 1}` although "s1" has not begun (no
    `workflow.step.started` yet); `_add_running` (runtime/_snapshot.py) only skips a lane
    whose `waiting` holds "start", which wait_for_start cleared in memory before the hook.
    """
    async def hook(ctx: tf.WorkflowContext) -> None:
        await trio.sleep(5)

    async with tf.open_engine() as engine:
        engine.jobs.register("v", _v)
        engine.register(tf.workflow("w").task("s1", job="v").with_hooks(on_start=hook).build())
        iid = await engine.start("w", None, delay=delay)
        await trio.sleep(delay + 2)
        one = await engine.get_instance(iid)
        (listed,) = [i for i in await engine.get_instances("w") if i.id == iid]
        done = await engine.wait(iid)
    assert done.status == "completed"
    for view in (one, listed):
        assert view is not None
        running = {k: (r.status, r.execution) for k, r in view.step_results.items()}
        assert (running, view.started_at) == ({}, None), (view.status, view.waiting, view.started_at, running)
