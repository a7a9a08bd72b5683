"""Reproductions from a review of the issue 11 reliability work, each fixed since, and a few
subtle behaviours worth pinning. Each test's docstring says what was wrong and where."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf

from trioflow._codec import decode_stored, encode_header

from test_engine import Jobs, three_steps
from test_reliability import left_in_b


class Boom(Exception):
    pass


async def ok(data: Any) -> str:
    return "ok"


# -- start() and resume() races -----------------------------------------------------------------


class SlowCreate(tf.adapters.MemoryAdapter):
    """``create`` takes a second (a remote database), and fails while ``down`` is set."""

    def __init__(self, *, down: bool = False) -> None:
        super().__init__()
        self.down = down

    async def create(self, *args: Any, **kwargs: Any) -> bool:
        await trio.sleep(1)
        if self.down:
            raise tf.StorageUnavailableError("database unreachable (test)")
        created: bool = await super().create(*args, **kwargs)
        return created


async def test_a_concurrent_start_of_the_same_id_returns_only_once_the_instance_is_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Was broken: ``start`` promises "return its id once it is stored". A second ``start`` of an id
    the first is still storing returns at once (``_storing`` hit in Engine.start); when the first
    store then fails, the second caller holds an id for an instance that does not exist."""
    adapter = SlowCreate(down=True)
    outcomes: list[str] = []
    async with tf.open_engine(adapter=adapter) as engine:
        engine.jobs.register("a", ok)
        engine.register(tf.workflow("w").task("a", job="a").build())

        async def start(who: str) -> None:
            try:
                outcomes.append(f"{who} returned {await engine.start('w', instance_id='x')!r}")
            except tf.StorageUnavailableError:
                outcomes.append(f"{who} raised StorageUnavailableError")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start, "first")
            await trio.sleep(0.1)
            nursery.start_soon(start, "second")
        stored = await engine.get_instance("x")
    assert stored is not None or all("raised" in o for o in outcomes), f"nothing stored, yet {outcomes}"


async def test_wait_on_an_id_being_stored_does_not_spin(autojump_clock: trio.testing.MockClock) -> None:
    """Was broken: ``wait`` polls ``while instance_id in self._storing: await trio.sleep(0)``: a busy
    loop that burns CPU for as long as the store takes, and under an autojumping MockClock keeps
    the run from ever being idle, so virtual time can no longer jump: here a 2 s store takes 2 s
    of real time (with rate 0 it would hang forever). Park on an event instead."""
    autojump_clock.rate = 1.0  # so that the spin costs real time instead of hanging the test
    async with tf.open_engine(adapter=SlowCreate()) as engine:
        engine.jobs.register("a", ok)
        engine.register(tf.workflow("w").task("a", job="a").build())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: engine.start("w", instance_id="x"))
            await trio.sleep(0.01)
            began = time.monotonic()
            assert (await engine.wait("x")).status == "completed"
            spent = time.monotonic() - began
    assert spent < 0.5, f"wait() spun for {spent:.1f} s of real time while start stored the instance"


async def test_an_explicit_resume_racing_a_start_does_not_run_the_instance_twice(tmp_path: Path) -> None:
    """Was broken: The
    ``resume()``'s read lands in the same group-commit batch as ``start``'s insert, finds the new
    row, and spawns it (``_resume`` checks ``_live`` but not ``_storing``); then ``start``'s
    create returns True and spawns it again: two actors, every step run twice. Skip ids in
    ``_storing`` in ``_resume_one``, and have ``start`` not spawn an id that is live by then."""
    calls: Counter[str] = Counter()

    async def job(data: Any) -> str:
        calls[data["id"]] += 1
        await trio.sleep(0.01)
        return "ok"

    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(tmp_path / "f.db")) as engine:
        engine.jobs.register("a", job)
        engine.register(tf.workflow("w").task("a", job="a").build())
        for round in range(10):
            iid = f"x{round}"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: engine.start("w", {"id": iid}, instance_id=iid))
                await trio.sleep(0)
                await engine.resume()
            with trio.fail_after(10):
                await engine.wait(iid)
        await trio.sleep(0.3)
    assert all(n == 1 for n in calls.values()), f"runs per instance: {dict(calls)}"


class SlowFirstFailedWrite(tf.adapters.MemoryAdapter):
    """The first time row ``misfit`` is rewritten as failed, the write takes 5 s."""

    slow = False

    async def _slow(self, args: tuple[Any, ...]) -> None:
        if self.slow and args[0] == "misfit" and "failed" in args[1:3]:  # status: either API
            self.slow = False
            await trio.sleep(5)

    async def checkpoint(self, *args: Any, **kwargs: Any) -> None:
        await self._slow(args)
        await super().checkpoint(*args, **kwargs)


async def test_a_background_resume_does_not_rerun_an_instance_that_ended_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Was broken: ``register`` resumes the rows read when the engine opened. While that background
    resume awaits the rewrite of a misfit row (an instance of an older definition), an explicit
    ``engine.resume()`` resumes the next row, which runs to its end; the background resume then
    reaches that row's stale record, finds it no longer in ``_live`` and runs it again from the
    old snapshot (steps ``b`` and ``c`` twice, the completed row overwritten). ``_resume`` should
    skip ids this engine has already run (or reload the row) after any await."""
    adapter = SlowFirstFailedWrite()
    old = tf.workflow("w").task("a", job="a").task("b-old", job="b").task("c", job="c").build()
    for definition, iid in ((old, "misfit"), (three_steps(), "x")):  # each left running in its b
        async with tf.open_engine(adapter=adapter, resume=False) as engine:
            Jobs(b_hangs=True).register(engine)
            engine.register(definition)
            await engine.start("w", instance_id=iid)  # "misfit" stands in "b-old": gone now
            await trio.sleep(1)
    adapter.slow = True
    async with tf.open_engine(adapter=adapter) as engine:
        jobs = Jobs()
        jobs.register(engine)
        engine.register(three_steps())  # background resume: "misfit" (slow rewrite), then "x"
        await trio.sleep(0.1)
        await engine.resume()  # "misfit" is still stored running; "x" runs now
        await trio.sleep(10)
        assert (await engine.get_instance("misfit")).status == "failed"  # type: ignore[union-attr]
    assert not adapter.slow, "the slow rewrite of the misfit row never happened"
    assert jobs.calls == ["b", "c"], f"x ran {jobs.calls}"


async def test_start_that_finishes_storing_after_the_engine_closed_raises_engine_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Was broken: A ``start`` from a task outside the engine block whose store completes after the
    block has ended calls ``_spawn`` on the closed nursery: trio's RuntimeError "Nursery is closed
    to new arrivals" (item 17's complaint, fixed for ``cancel`` only). Re-check ``_closed`` after
    ``adapter.create`` returns (the instance is stored: return its id or raise
    EngineClosedError)."""
    errors: list[BaseException] = []

    async def client(engine: tf.Engine) -> None:
        try:
            await engine.start("w", instance_id="late")
        except Exception as exc:
            errors.append(exc)

    async with trio.open_nursery() as outside:
        async with tf.open_engine(adapter=SlowCreate()) as engine:
            engine.jobs.register("a", ok)
            engine.register(tf.workflow("w").task("a", job="a").build())
            outside.start_soon(client, engine)
            await trio.sleep(0.5)
    assert not errors or isinstance(errors[0], tf.EngineClosedError), repr(errors)


# -- parallel steps: cancellation and storage failures in several branches at once --------------


async def test_a_cancelled_execute_workflow_caller_compensates_during_a_parallel_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Was broken: Cancelling the caller while two branches run: each branch raises Cancelled, the
    nursery raises a BaseExceptionGroup of two Cancelled, ``_first_fatal`` (actors/_lane.py)
    returns the group, and ``run_instance``'s ``except trio.Cancelled`` does not match a group:
    the completed step is never compensated (README: "Cancellation ... compensate the same
    way"). ``_first_fatal`` should return one Cancelled when every leaf is a Cancelled (or
    ``run_instance`` should catch groups of them with ``except*``)."""
    undone: list[str] = []

    async def undo(ctx: Any, result: Any) -> None:
        undone.append("a")

    async def slow(ctx: Any) -> None:
        await trio.sleep(100)

    wf = (tf.workflow("w").step("a", lambda ctx: "a", undo)
          .parallel("p", branches=[tf.branch("x").step("x1", slow).build(),
                                   tf.branch("y").step("y1", slow).build()])
          .build())
    with trio.move_on_after(5):
        await tf.execute_workflow(None, wf)
    assert undone == ["a"]


async def test_storage_down_for_two_branches_at_once_leaves_the_instance_resumable(tmp_path: Path) -> None:
    """Was broken: Item 4 ("never failed without compensation") holds for one
    branch but not two: another connection holds the write lock, both branches' checkpoints are
    in one group-commit batch, give up in the same tick, and the nursery raises an
    ExceptionGroup of two DatabaseUnavailableErrors. ``_first_fatal`` (actors/_lane.py) returns
    the group, ``_instance_actor``'s ``except StorageUnavailableError`` misses it and ``except
    Exception`` stores "failed: internal error" once the lock is gone, step ``a`` never
    compensated. Fix: collapse a group whose leaves are all StorageUnavailableError (in
    ``_first_fatal``, or ``except*`` in ``_instance_actor``)."""
    path = tmp_path / "f.db"
    locked = trio.Event()
    undone: list[str] = []

    async def undo(ctx: Any, result: Any) -> None:
        undone.append("a")

    async def branch_step(ctx: Any) -> str:
        await locked.wait()
        return "done"

    wf = (tf.workflow("w").step("a", lambda ctx: "a", undo)
          .parallel("p", branches=[tf.branch("x").step("x1", branch_step).build(),
                                   tf.branch("y").step("y1", branch_step).build()])
          .build())
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path, busy_timeout=0.05),
                              storage_retry_for=0.5) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(0.3)  # step a is stored; both branches wait
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        blocker.execute("BEGIN IMMEDIATE")
        locked.set()
        await trio.sleep(0.8)
        blocker.execute("ROLLBACK")
        blocker.close()
        with trio.fail_after(10):
            try:
                await engine.wait(iid)
            except tf.StorageUnavailableError:
                pass  # what item 4 promises
        inst = await engine.get_instance(iid)
    assert inst is not None
    assert not (inst.status == "failed" and not undone), f"failed without compensation: {inst.error}"


# -- checkpoints that store what cannot be read back (item 3 "at every checkpoint") ------------


async def test_a_job_input_with_tuple_keys_is_refused_not_stored_unreadable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Was broken: Outputs and ``ctx.set`` are checked with ``check_encodable``, but a task's mapped
    job input (``input=``), stored as the step's input, is not (actors/_task.py run_task): a
    dict with tuple keys is stored, the snapshot can no longer be read, and ``get_instance`` of a
    completed instance says "failed" (SnapshotDecodeError); a restart refuses the row. Check
    ``data`` in run_task like the output (the step fails, naming "input of step 'a'")."""
    async with tf.open_engine() as engine:
        engine.jobs.register("a", ok)
        engine.register(tf.workflow("w").task("a", job="a", input=lambda ctx: {(1, 2): "x"})
                        .task("b", job="a").build())
        iid = await engine.start("w")
        waited = await engine.wait(iid)
        stored = await engine.get_instance(iid)
    assert stored is not None and stored.status == waited.status, (waited.status, stored.error if stored else None)


async def test_a_job_input_that_cannot_be_encoded_fails_the_step_and_compensates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Was broken: An unencodable job input (a set) makes the next checkpoint raise in ``encode``;
    ``_instance_actor``'s fallback ``fail_alone`` cannot store either (the state still holds
    the set), so the instance stays "running" in storage, is never compensated, and ``wait``
    says "register its workflow or call resume()" although it is registered, and a restart
    re-runs it into the same wall."""
    undone: list[str] = []

    async def undo(output: Any) -> None:
        undone.append("a")

    async with tf.open_engine() as engine:
        engine.jobs.register("a", ok)
        engine.register(tf.workflow("w").task("a", job="a", compensate=undo)
                        .task("b", job="a", input=lambda ctx: {"ids": {1, 2}})
                        .task("c", job="a").build())
        iid = await engine.start("w")
        inst = await engine.wait(iid)
    assert inst.status == "failed" and undone == ["a"], (inst.status, inst.error)


async def test_with_data_that_cannot_be_read_back_is_refused_at_start(autojump_clock: trio.testing.MockClock) -> None:
    """Was broken: ``start`` checks the input only; initial shared data (``with_data``) with tuple
    keys is stored as is, so the instance's row is unreadable from its first snapshot (refuse
    it at ``build()`` or ``start()``, as the input is)."""
    async with tf.open_engine() as engine:
        engine.jobs.register("a", ok)
        with pytest.raises((tf.UnencodableValueError, tf.DefinitionError)):
            engine.register(tf.workflow("w").with_data({"m": {(1, 2): "x"}}).task("a", job="a").build())
            await engine.start("w", instance_id="d")


# -- unreadable / malformed rows ----------------------------------------------------------------


async def test_a_malformed_row_with_the_current_fingerprint_is_left_untouched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Was broken: Item 6's test sets ``fingerprint = "changed"`` so that ``misfit`` sees the bad lane;
    with the current fingerprint ``misfit`` returns None at once, the run crashes in
    ``run_lane`` (TypeError) and ``_instance_actor`` overwrites the row with "failed: internal
    error", although README says malformed rows are reported failed with their bytes left
    untouched. Validate lane positions (and completed names) against the definition on resume
    whatever the fingerprint, as part of the unreadable check."""
    adapter = tf.adapters.MemoryAdapter()
    await left_in_b(adapter, "bad")
    record = await adapter.load("bad")
    assert record is not None
    state = decode_stored(record)
    state.lanes[""].step = ["not", "a", "name"]  # type: ignore[assignment]
    bad_bytes = encode_header(state)
    await adapter.checkpoint("bad", "running", bad_bytes, [], first_seq=len(record.records))
    async with tf.open_engine(adapter=adapter) as engine:
        Jobs().register(engine)
        engine.register(three_steps())
        assert (await engine.wait("bad")).status == "failed"
    stored = await adapter.load("bad")
    assert stored is not None and stored.header == bad_bytes, "the malformed row was overwritten"


async def test_get_instances_filters_unreadable_rows_by_the_status_it_reports(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Was broken: An unreadable row stored ``running`` is reported ``failed`` (README), but
    ``get_instances(wf, "failed")`` leaves it out while ``get_instances(wf, "running")`` returns
    it with ``status == "failed"``: a dashboard of failed instances never shows it. Filter on
    the reported status (list without the status filter, then filter the views)."""
    adapter = tf.adapters.MemoryAdapter()
    await adapter.create("future", "w", "running", start=b"\xc1", header=b"\xc1")
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(three_steps())
        running = await engine.get_instances("w", "running")
        failed = await engine.get_instances("w", "failed")
    assert [i.status for i in running] == [] and [i.id for i in failed] == ["future"], (running, failed)


async def test_an_instance_queued_by_concurrent_starts_is_pending(autojump_clock: trio.testing.MockClock) -> None:
    """Was broken: ``start`` picks "pending" or "running" before awaiting the store and
    ``_spawn`` decides by the slots free after it: with ``max_running=1`` two concurrent starts
    both store "running" (and a start time), one of them then waits in the queue reported as
    "running". README: the rest "wait in a queue (stored as pending...)". Decide the status in
    ``_spawn`` (and store it with the first step's snapshot, as ``admit`` does)."""
    async with tf.open_engine(adapter=SlowCreate(), max_running=1) as engine:
        Jobs(b_hangs=True).register(engine)
        engine.register(three_steps())
        async with trio.open_nursery() as nursery:
            for iid in ("one", "two"):
                nursery.start_soon(partial(engine.start, "w", instance_id=iid))
        await trio.sleep(1)
        statuses = sorted([(await engine.get_instance(i)).status for i in ("one", "two")])  # type: ignore[union-attr]
    assert statuses == ["pending", "running"]


# -- what wait() hands back ---------------------------------------------------------------------


async def test_an_end_hook_that_redacts_its_result_does_not_change_what_wait_returned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Was broken: Item 16's copy rule stops at events: ``wait`` returns ``to_instance(run.state)``
    (live objects), and ``on_complete`` now runs *beside* the waiters with ``run.result()``
    sharing the same output dict; a hook that pops a secret before logging changes the instance
    the caller already holds. Return a decoded copy from ``wait`` as ``get_instance`` does, and
    give hooks their own copy."""
    def redact(result: tf.WorkflowResult) -> None:
        result.output.pop("card", None)

    async with tf.open_engine() as engine:
        engine.jobs.register("a", lambda data: {"card": "4111", "ref": "r"})
        engine.register(tf.workflow("w").task("a", job="a").with_hooks(on_complete=redact).build())
        inst = await engine.wait(await engine.start("w"))
        await trio.sleep(1)
    assert inst.output == {"card": "4111", "ref": "r"}


# -- subtle behaviours worth keeping (these pass) ------------------------------------------------


async def test_pin_a_held_instance_runs_once_when_its_jobs_arrive_even_if_resumed_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """PASSES (pin). A held instance gets appended to ``_held`` by ``register`` and again by an
    explicit ``resume()``; when the jobs arrive it must run
    once (the duplicate held record is skipped because the first is live by then)."""
    adapter = tf.adapters.MemoryAdapter()
    await left_in_b(adapter, "x")
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(three_steps())
        assert await engine.resume() == []
        jobs = Jobs()
        jobs.register(engine)
        assert (await engine.wait("x")).status == "completed"
        await trio.sleep(1)
    assert jobs.calls == ["b", "c"]


async def test_pin_keyboard_interrupt_wins_over_cancelled_siblings(autojump_clock: trio.testing.MockClock) -> None:
    """PASSES (pin). A KeyboardInterrupt from one branch while the caller is being cancelled
    (so the group also holds Cancelled) comes out as itself."""
    async def stop(ctx: Any) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            raise KeyboardInterrupt from None

    async def slow(ctx: Any) -> None:
        await trio.sleep(100)

    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch("x").step("stop", stop).build(), tf.branch("y").step("slow", slow).build(),
        tf.branch("z").step("slow2", slow).build()]).build()
    with pytest.raises(KeyboardInterrupt):
        with trio.move_on_after(1):  # the caller's cancel turns into an interrupt in one branch
            await tf.execute_workflow(None, wf)


async def test_pin_thread_capacity_and_mock_clock_come_back_after_cancelled_waits_and_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """PASSES (pin). Jobs cancelled while *waiting* for a thread slot (the limiter full) take
    no slot with them; a job that raises and jobs abandoned mid-run leave the MockClock's
    settings exactly as they were, across two engines sharing the clock."""
    gate = __import__("threading").Event()

    def blocking(data: Any) -> str:
        gate.wait(5)
        return "late"

    def raising(data: Any) -> None:
        raise Boom("in a thread")

    wf_block = tf.workflow("block").task("a", job="block", timeout=0.5).build()
    wf_raise = tf.workflow("raise").task("a", job="raise").build()
    before = (autojump_clock.rate, autojump_clock.autojump_threshold)
    async with tf.open_engine() as one, tf.open_engine() as two:
        for engine in (one, two):
            engine.jobs.register("block", blocking)
            engine.jobs.register("raise", raising)
            engine.register(wf_block)
            engine.register(wf_raise)
        ids = [await one.start("block") for _ in range(45)]  # 40 slots: 5 wait for one
        failed = await two.wait(await two.start("raise"))
        for iid in ids:
            assert (await one.wait(iid)).status == "failed"  # each cut at its 0.5 s timeout
        assert one._threads is not None and one._threads._limiter is not None
        assert one._threads._limiter.borrowed_tokens == 0
        gate.set()
    assert failed.status == "failed" and "in a thread" in (failed.error or "")
    assert (autojump_clock.rate, autojump_clock.autojump_threshold) == before


async def test_a_lane_at_a_step_the_definition_does_not_have_fails_alone_whatever_the_fingerprint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A damaged row (its main lane at a step name that does not exist) with the definition's
    own fingerprint: the instance fails alone with a clear error, the others still run."""
    adapter = tf.adapters.MemoryAdapter()
    await left_in_b(adapter, "bad", "good")
    record = await adapter.load("bad")
    assert record is not None
    state = decode_stored(record)
    state.lanes[""].step = "no-such-step"
    await adapter.checkpoint("bad", "running", encode_header(state), [], first_seq=len(record.records))
    async with tf.open_engine(adapter=adapter) as engine:
        Jobs().register(engine)
        engine.register(three_steps())
        assert (await engine.wait("good")).status == "completed"
        bad = await engine.wait("bad")
    assert bad.status == "failed" and "'no-such-step'" in (bad.error or "")


# -- a restart while a hook awaits (an adversarial review) ---------------------------------------


async def test_a_step_that_failed_for_good_stays_failed_across_a_restart_during_its_hook(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """The main line's failure was stored only with the instance's end, after the
    ``on_step_failed`` hook: a restart during the hook ran the step again, and the instance
    completed although the hook and the listeners had been told it failed."""
    path = tmp_path / "flows.db"
    calls: list[int] = []
    released: list[str] = []

    async def charge(ctx: tf.WorkflowContext) -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise Boom(f"declined {len(calls)}")
        return "charged"

    async def on_step_failed(name: str, error: BaseException, ctx: tf.WorkflowContext) -> None:
        await trio.sleep(10)

    wf = (tf.workflow("w")
          .step("reserve", lambda ctx: "r", lambda ctx, r: released.append(r))
          .step("charge", charge, retry=tf.Retry(max_attempts=2, interval=1))
          .with_hooks(on_step_failed=on_step_failed)
          .build())
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(5)  # charge failed for good at 1 s; its hook runs until 11 s
    assert len(calls) == 2
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        inst = await engine.wait(iid)
    assert len(calls) == 2
    assert (inst.status, inst.failed_step, released) == ("failed", "charge", ["r"])


async def test_the_last_step_is_not_run_again_after_a_restart_during_its_hook(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """The main line's last step was stored only with the instance's end, after the
    ``on_step_complete`` hook: a restart during the hook ran it again."""
    path = tmp_path / "flows.db"
    calls: list[int] = []

    async def ship(ctx: tf.WorkflowContext) -> str:
        calls.append(1)
        return f"shipment-{len(calls)}"

    async def on_step_complete(name: str, output: Any, ctx: tf.WorkflowContext) -> None:
        await trio.sleep(10)

    wf = (tf.workflow("w").step("reserve", lambda ctx: "r").step("ship", ship)
          .with_hooks(on_step_complete=on_step_complete).build())
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(15)  # ship completed at 10 s (reserve's hook); its own runs until 20 s
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        inst = await engine.wait(iid)
    assert (inst.status, inst.output, len(calls)) == ("completed", "shipment-1", 1)
