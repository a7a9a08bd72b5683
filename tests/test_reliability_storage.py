"""Reliability around storage, threads, hooks and compensations (issue items 4, 11-14, 17).

Each test states the behaviour a user relies on. Tests that involve real SQLite lock timing or
real worker threads run in real time (and stay short); the others run on trio's MockClock.
"""

from __future__ import annotations

import logging
import errno
import fcntl
import re
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._snapshot import Status

# -- helpers ------------------------------------------------------------------------------------


class RecordingSQLite(tf.adapters.SQLiteAdapter):
    """A SQLiteAdapter that remembers every checkpoint that failed, and why."""

    def __init__(self, path: Path, **options: Any) -> None:
        super().__init__(path, **options)
        self.failed_saves: list[tuple[str, BaseException]] = []

    async def checkpoint(self, instance_id: str, status: Status, header: bytes, records: Any, **kw: Any) -> None:
        try:
            await super().checkpoint(instance_id, status, header, records, **kw)
        except Exception as exc:
            self.failed_saves.append((instance_id, exc))
            raise


class SmallDisk(RecordingSQLite):
    """The writer's connection may grow the file by only ``room`` pages: past that, real SQLite
    fails writes with SQLITE_FULL ("database or disk is full"), as a full disk would."""

    def __init__(self, path: Path, *, room: int) -> None:
        super().__init__(path)
        self.room = room

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + self.room}")
        return conn


class FlakyMemory(tf.adapters.MemoryAdapter):
    """A MemoryAdapter whose checkpoints fail with StorageUnavailableError while ``broken`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False
        self.refused = 0
        self.saved_statuses: list[str] = []

    async def checkpoint(self, instance_id: str, status: Status, header: bytes, records: Any, **kw: Any) -> None:
        if self.broken:
            self.refused += 1
            raise tf.StorageUnavailableError("the storage service is down (test)")
        self.saved_statuses.append(status)
        await super().checkpoint(instance_id, status, header, records, **kw)


def stored_statuses(path: Path) -> dict[str, str]:
    """What is in the file, read with a plain connection (after the engine has closed it)."""
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT instance_id, status FROM trioflow_instances").fetchall())


async def wait_for(condition: Any, *, within: float, what: str) -> None:
    """Poll ``condition()`` every 10 ms (real or virtual) until it holds; fail after ``within`` s."""
    with trio.move_on_after(within):
        while not condition():
            await trio.sleep(0.01)
        return
    pytest.fail(f"gave up after {within} s waiting for {what}")


# -- 1. transient storage errors: a write lock held by another connection ------------------------


async def test_saves_refused_while_another_connection_holds_the_write_lock_are_retried_and_every_instance_completes(
    tmp_path: Path,
) -> None:
    """Real time: another process (here another connection) holds SQLite's write lock for about
    a second; every checkpoint in that window fails with DatabaseUnavailableError, is retried by
    the engine, and once the lock is released every instance completes with nothing compensated."""
    path = tmp_path / "f.db"
    adapter = RecordingSQLite(path, busy_timeout=0.05)
    locked = trio.Event()
    ran: Counter[str] = Counter()
    compensated: list[str] = []

    async def first(ctx: tf.WorkflowContext) -> int:
        await locked.wait()  # finishes only once the lock is held: its checkpoint must wait
        ran["a"] += 1
        return 1

    async def then(ctx: tf.WorkflowContext) -> int:
        ran[f"step {ctx.step_index}"] += 1
        return int(ctx.step_index) + 1

    async def undo(ctx: tf.WorkflowContext, result: Any) -> None:
        compensated.append(ctx.metadata.id)

    wf = tf.workflow("w").step("a", first, undo).step("b", then, undo).step("c", then, undo).build()
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    n = 20
    try:
        with trio.fail_after(10):
            async with tf.open_engine(adapter=adapter) as engine:
                engine.register(wf)
                ids = [await engine.start("w", instance_id=f"i{i}") for i in range(n)]
                await trio.to_thread.run_sync(blocker.execute, "BEGIN IMMEDIATE")
                held_since = time.monotonic()
                locked.set()
                # Hold the lock until every instance has seen its checkpoint refused, and ~1 s.
                await wait_for(lambda: {iid for iid, _ in adapter.failed_saves} == set(ids), within=3.0,
                               what="every instance's checkpoint to be refused")
                await trio.sleep(max(0.0, 1.0 - (time.monotonic() - held_since)))
                await trio.to_thread.run_sync(blocker.execute, "COMMIT")
                instances = [await engine.wait(iid) for iid in ids]
    finally:
        blocker.close()
    assert [i.status for i in instances] == ["completed"] * n
    assert all(i.output == 3 and i.compensated_steps == () and i.compensation_errors == {} for i in instances)
    assert compensated == []
    assert ran == {"a": n, "step 1": n, "step 2": n}, "no step ran twice"
    errors = [exc for _, exc in adapter.failed_saves]
    assert all(isinstance(e, tf.adapters.DatabaseUnavailableError) for e in errors)
    assert all(isinstance(e, tf.StorageUnavailableError) and "database is locked" in str(e) for e in errors)
    assert stored_statuses(path) == {iid: "completed" for iid in ids}


# -- 2. storage that stays unusable: left resumable, never stored as failed -----------------------


async def test_an_instance_whose_checkpoint_cannot_be_stored_stays_as_last_stored_and_resumes_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adapter = FlakyMemory()
    ran: Counter[str] = Counter()

    def job(name: str, *, breaks: bool = False) -> Any:
        async def run(data: Any) -> str:
            ran[name] += 1
            if breaks and ran[name] == 1:
                adapter.broken = True  # storage goes away while step b runs, the first time
            return f"{name} done"
        return run

    def register(engine: tf.Engine) -> None:
        engine.jobs.register("a", job("a"))
        engine.jobs.register("b", job("b", breaks=True))
        engine.jobs.register("c", job("c"))
        engine.register(tf.workflow("w").task("a", job="a").task("b", job="b").task("c", job="c").build())

    with trio.fail_after(600):
        async with tf.open_engine(adapter=adapter, storage_retry_for=5) as engine:
            register(engine)
            iid = await engine.start("w")
            t0 = trio.current_time()
            with pytest.raises(tf.StorageUnavailableError) as info:
                await engine.wait(iid)
            gave_up_after = trio.current_time() - t0
            stored = await engine.get_instance(iid)
    message = str(info.value)
    assert "the storage service is down (test)" in message
    assert re.search(r"stays running in storage and resumes with the next engine", message), message
    assert adapter.refused >= 3, "the checkpoint was retried"
    assert 0 < gave_up_after <= 5.0
    assert "failed" not in adapter.saved_statuses, "never stored as failed"
    assert stored is not None and stored.status == "running"
    # The row is as last stored: after step a, standing in b (listed running, as the step a
    # running instance stands in is: its completion was never stored).
    assert [r.step_name for r in stored.history] == ["a"], "the row is as last stored: after step a"
    assert {name: r.status for name, r in stored.step_results.items()} == {"a": "completed", "b": "running"}

    adapter.broken = False
    with trio.fail_after(600):
        async with tf.open_engine(adapter=adapter) as engine:
            register(engine)
            inst = await engine.wait(iid)
    assert inst.status == "completed" and inst.output == "c done"
    # a's completion was stored: it never runs again; b's was not: it runs again (at-least-once).
    assert ran == {"a": 1, "b": 2, "c": 1}


# -- 3. disk full ---------------------------------------------------------------------------------


async def test_a_full_disk_is_retried_then_wait_names_the_failure_and_the_instance_resumes_once_there_is_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Real SQLite, real SQLITE_FULL: the writer's connection may only grow the file by a few
    pages, and step ``grow`` outputs 200 kB."""
    path = tmp_path / "f.db"
    ran: Counter[str] = Counter()

    async def small(data: Any) -> str:
        ran["small"] += 1
        return "ok"

    async def grow(data: Any) -> str:
        ran["grow"] += 1
        return "x" * 200_000

    wf = tf.workflow("w").task("small", job=small).task("grow", job=grow).task("last", job=small).build()
    adapter = SmallDisk(path, room=4)
    caplog.set_level(logging.WARNING, logger="trioflow")
    with trio.fail_after(10):
        async with tf.open_engine(adapter=adapter, storage_retry_for=0.3) as engine:
            engine.register(wf)
            iid = await engine.start("w")
            with pytest.raises(tf.StorageUnavailableError) as info:
                await engine.wait(iid)
    message = str(info.value)
    assert "database or disk is full" in message, message
    assert "register its workflow or call resume()" not in message
    assert "resumes with the next engine" in message
    assert len(adapter.failed_saves) >= 2 and all(
        isinstance(e, tf.adapters.DatabaseUnavailableError) for _, e in adapter.failed_saves)
    assert sum("checkpoint of instance" in r.getMessage() for r in caplog.records) >= 2, "retries are logged"
    assert stored_statuses(path) == {iid: "running"}

    # Room again (a connection without the page limit): the instance resumes after step "small".
    with trio.fail_after(10):
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
            engine.register(wf)
            inst = await engine.wait(iid)
    assert inst.status == "completed" and inst.output == "ok"
    assert ran == {"small": 2, "grow": 2}  # small + last; grow's output was never stored


# -- 4. a database file that cannot be opened where it is ------------------------------------------


def _missing_directory(tmp_path: Path) -> Path:
    return tmp_path / "nope" / "f.db"


def _parent_is_a_file(tmp_path: Path) -> Path:
    (tmp_path / "plain-file").write_text("not a directory")
    return tmp_path / "plain-file" / "f.db"


def _path_is_a_directory(tmp_path: Path) -> Path:
    (tmp_path / "f.db").mkdir()
    return tmp_path / "f.db"


@pytest.mark.parametrize(
    "where", [_missing_directory, _parent_is_a_file, _path_is_a_directory],
    ids=lambda f: f.__name__.strip("_"),
)
async def test_a_database_path_that_cannot_be_used_is_a_database_error_naming_it_not_an_os_error(
    tmp_path: Path, where: Any,
) -> None:
    path: Path = where(tmp_path)
    with pytest.raises(tf.adapters.DatabaseError, match=re.escape(str(path))) as info:
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)):
            pytest.fail("the engine opened")  # pragma: no cover
    assert not isinstance(info.value, OSError)
    assert not isinstance(info.value, tf.StorageUnavailableError), "not a transient failure"


async def test_a_missing_directory_can_be_created_and_the_same_adapter_then_opens(tmp_path: Path) -> None:
    """A failed open leaves nothing held (no lock, no thread): fix the cause, open again."""
    path = tmp_path / "later" / "f.db"
    adapter = tf.adapters.SQLiteAdapter(path)
    with pytest.raises(tf.adapters.DatabaseError, match="the directory must exist and be writable"):
        async with tf.open_engine(adapter=adapter):
            pass  # pragma: no cover
    path.parent.mkdir()
    async with tf.open_engine(adapter=adapter) as engine:
        assert await engine.get_instance("none") is None


async def test_a_file_system_without_locks_is_a_database_error_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """flock failing for another reason than "held" (ENOLCK on some network file systems)."""
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # the adapter calls fcntl.flock
    path = tmp_path / "f.db"
    with pytest.raises(tf.adapters.DatabaseError, match=rf"cannot open {re.escape(str(path))}: .*cannot be locked"):
        await tf.adapters.SQLiteAdapter(path).open()


# -- 5. waiters outside the engine block at shutdown -------------------------------------------


async def test_waiters_outside_the_engine_block_get_engine_closed_when_the_sqlite_engine_stops(
    tmp_path: Path, autojump_clock: trio.testing.MockClock,
) -> None:
    """A waiter in an outer nursery (a web handler, say) on a running instance and on one queued
    for a slot: leaving the engine block releases both with EngineClosedError, promptly."""
    path = tmp_path / "f.db"

    async def hang(data: Any) -> None:
        await trio.sleep_forever()

    outcomes: dict[str, BaseException | tf.WorkflowInstance] = {}

    async def waiter(engine: tf.Engine, iid: str) -> None:
        try:
            outcomes[iid] = await engine.wait(iid)
        except tf.TrioflowError as exc:
            outcomes[iid] = exc

    with trio.fail_after(600):  # virtual: the failure mode is a hang
        async with trio.open_nursery() as outer:
            async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path), max_running=1) as engine:
                engine.register(tf.workflow("w").task("hang", job=hang).build())
                running = await engine.start("w", instance_id="running")
                queued = await engine.start("w", instance_id="queued")
                outer.start_soon(waiter, engine, running)
                outer.start_soon(waiter, engine, queued)
                await trio.testing.wait_all_tasks_blocked()  # both waiters are parked in wait()
                assert outcomes == {}
                left_at = trio.current_time()
        released_after = trio.current_time() - left_at
    assert set(outcomes) == {"running", "queued"}
    for iid, got in outcomes.items():
        assert isinstance(got, tf.EngineClosedError), (iid, got)
        assert "stays in storage" in str(got)
    assert released_after < 1.0
    assert stored_statuses(path) == {"running": "running", "queued": "pending"}, "left for the next engine"


async def test_on_a_mock_clock_virtual_time_does_not_leap_over_deadlines_while_sqlite_commits(
    tmp_path: Path, autojump_clock: trio.testing.MockClock,
) -> None:
    """A test on the autojump clock with a real SQLite file: while the writer thread commits,
    trio sees every task parked; the clock must not leap to the next deadline meanwhile (a 600 s
    workflow timeout would fire during a commit that takes milliseconds)."""
    async def ok(data: Any) -> str:
        return "ok"

    wf = tf.workflow("w").task("a", job=ok).task("b", job=ok).task("c", job=ok).with_timeout(600).build()
    with trio.fail_after(600):
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(tmp_path / "f.db")) as engine:
            engine.register(wf)
            ids = [await engine.start("w") for _ in range(50)]
            instances = [await engine.wait(iid) for iid in ids]
    assert [i.status for i in instances] == ["completed"] * 50
    assert trio.current_time() < 60
    assert (autojump_clock.rate, autojump_clock.autojump_threshold) == (0.0, 0.0), "the clock's settings are back"


# -- 6. abandoned thread jobs -------------------------------------------------------------------


async def test_abandoned_blocking_jobs_neither_starve_other_jobs_nor_hold_up_leaving_the_engine(
    tmp_path: Path,
) -> None:
    """Real threads, real time. 45 plain ``def`` jobs block (for up to 3 s) past their 0.2 s step
    timeout and are abandoned; a quick plain job started next still runs at once, and leaving the
    engine (on SQLite) does not wait for the stuck threads."""
    release = threading.Event()
    entered: list[int] = []
    returned: list[int] = []

    def stuck(data: int) -> None:
        entered.append(data)
        release.wait(3.0)
        returned.append(data)

    def quick(data: Any) -> int:
        return 42

    stuck_wf = tf.workflow("stuck").task("block", job=stuck, input=lambda ctx: ctx.input, timeout=0.2).build()
    quick_wf = tf.workflow("quick").task("q", job=quick, timeout=1.0).build()
    try:
        with trio.fail_after(10):
            async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(tmp_path / "f.db")) as engine:
                engine.register(stuck_wf)
                engine.register(quick_wf)
                ids = [await engine.start("stuck", i) for i in range(45)]
                failed = [await engine.wait(iid) for iid in ids]
                assert len(entered) >= 40 and returned == [], "the stuck threads are still blocked"
                t0 = time.monotonic()
                done = await engine.wait(await engine.start("quick"))
                quick_took = time.monotonic() - t0
                leaving = time.monotonic()
            left_in = time.monotonic() - leaving
        assert returned == [], "the block was left while the threads were still stuck"
    finally:
        release.set()  # let the abandoned threads end
    assert all(i.status == "failed" and "StepTimeoutError" in (i.error or "") for i in failed)
    assert done.status == "completed" and done.output == 42, done.error
    assert quick_took < 0.9
    assert left_in < 1.5, f"leaving the engine took {left_in:.2f} s"


# -- 7. hanging hooks -------------------------------------------------------------------------


async def _ok(data: Any) -> str:
    return "ok"


async def _boom(data: Any) -> None:
    raise RuntimeError("boom")


@pytest.mark.parametrize("hook", ["on_complete", "on_failed"])
async def test_an_end_hook_that_hangs_holds_neither_its_waiter_nor_its_slot_and_is_cancelled_after_30_s(
    hook: str, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    async def hangs(result: tf.WorkflowResult) -> None:
        calls.append(result.instance_id)
        await trio.sleep_forever()

    wf = tf.workflow("w").task("a", job=_ok if hook == "on_complete" else _boom).with_hooks(**{hook: hangs}).build()
    expected = "completed" if hook == "on_complete" else "failed"
    with trio.fail_after(1000):
        async with tf.open_engine(max_running=1) as engine:
            engine.register(wf)
            t0 = trio.current_time()
            first = await engine.start("w")
            second = await engine.start("w")  # queued behind the first (max_running=1)
            assert (await engine.wait(first)).status == expected
            assert (await engine.wait(second)).status == expected
            assert trio.current_time() - t0 < 1.0, "no waiter and no slot waited for the hook"
            await trio.testing.wait_all_tasks_blocked()
            assert calls == [first, second], "both hooks were called, and hang"
            await trio.sleep(31)  # the hooks outlive their 30 s bound: cancelled and logged
    overran = [r for r in caplog.records if "ran over 30 s; cancelled" in r.getMessage()]
    assert len(overran) == 2 and all(hook in r.getMessage() for r in overran)


async def test_an_on_start_hook_that_hangs_does_not_stop_a_cancel(autojump_clock: trio.testing.MockClock) -> None:
    started = trio.Event()
    ran: list[str] = []

    async def hangs(ctx: tf.WorkflowContext) -> None:
        started.set()
        await trio.sleep_forever()

    async def step(data: Any) -> None:
        ran.append("step")

    wf = tf.workflow("w").task("a", job=step).with_hooks(on_start=hangs).build()
    with trio.fail_after(1000):
        async with tf.open_engine() as engine:
            engine.register(wf)
            t0 = trio.current_time()
            iid = await engine.start("w")
            await started.wait()
            assert await engine.cancel(iid) is True
            inst = await engine.wait(iid)
            took = trio.current_time() - t0
    assert inst.status == "cancelled" and ran == []
    assert took < 1.0, f"the cancel waited {took} s (virtual) for the hook"


async def test_a_hook_that_runs_past_30_s_is_cancelled_and_logged_and_the_instance_is_unaffected(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    async def slow(name: str, output: Any, ctx: tf.WorkflowContext) -> None:
        await trio.sleep(1000)

    wf = tf.workflow("w").task("a", job=_ok).task("b", job=_ok).with_hooks(on_step_complete=slow).build()
    with trio.fail_after(5000):
        async with tf.open_engine() as engine:
            engine.register(wf)
            t0 = trio.current_time()
            inst = await engine.wait(await engine.start("w"))
            took = trio.current_time() - t0
    assert inst.status == "completed" and inst.output == "ok" and inst.error is None
    assert 60 <= took < 61, "each of the two hook calls was cut at 30 s"
    overran = [r for r in caplog.records if "ran over 30 s; cancelled" in r.getMessage()]
    assert len(overran) == 2 and all("on_step_complete" in r.getMessage() for r in overran)
    assert all(r.levelno == logging.ERROR for r in overran)


# -- 8. hanging compensations ----------------------------------------------------------------


async def test_a_compensation_that_hangs_is_cut_at_the_compensation_timeout_and_the_others_still_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[str] = []

    def undo(name: str) -> Any:
        async def run(output: Any) -> None:
            calls.append(name)
            if name == "b":
                await trio.sleep_forever()
        return run

    wf = (tf.workflow("w").task("a", job=_ok, compensate=undo("a")).task("b", job=_ok, compensate=undo("b"))
          .task("c", job=_ok, compensate=undo("c")).task("d", job=_boom).build())
    assert wf.compensation_timeout == 300.0
    with trio.fail_after(10_000):
        async with tf.open_engine() as engine:
            engine.register(wf)
            t0 = trio.current_time()
            inst = await engine.wait(await engine.start("w"))
            took = trio.current_time() - t0
    assert inst.status == "failed" and inst.failed_step == "d"
    assert calls == ["c", "b", "a"], "newest first, and the one after the hang still ran"
    assert inst.compensated_steps == ("c", "a")
    assert list(inst.compensation_errors) == ["b"] and "CompensationTimeoutError" in inst.compensation_errors["b"]
    assert 300 <= took < 301


async def test_a_cancelled_execute_workflow_caller_whose_compensation_hangs_gets_its_cancellation_after_the_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The caller's cancellation compensates under a shield, which no outer timeout can cut; a
    compensation stuck there must still end, at the compensation timeout. (It "hangs" for 10**6
    virtual seconds rather than forever, so that a regression fails this test instead of hanging
    it: nothing can cancel a shielded task.)"""
    calls: list[str] = []
    results: list[tf.WorkflowResult] = []

    async def do(ctx: tf.WorkflowContext) -> str:
        return "done"

    async def hang_forever(ctx: tf.WorkflowContext) -> None:
        await trio.sleep_forever()

    def undo(name: str) -> Any:
        async def run(ctx: tf.WorkflowContext, result: Any) -> None:
            calls.append(name)
            if name == "b":
                await trio.sleep(10**6)
        return run

    async def on_failed(result: tf.WorkflowResult) -> None:
        results.append(result)

    wf = (tf.workflow("w").step("a", do, undo("a")).step("b", do, undo("b")).step("c", hang_forever)
          .with_hooks(on_failed=on_failed).build())
    t0 = trio.current_time()
    with trio.move_on_after(1) as scope:
        await tf.execute_workflow(None, wf)
    took = trio.current_time() - t0
    assert scope.cancelled_caught, "the caller's Cancelled came back out of execute_workflow"
    assert 301 <= took < 302, took
    assert calls == ["b", "a"]
    [result] = results
    assert result.status == "cancelled" and result.compensated_steps == ("a",)
    assert "CompensationTimeoutError" in result.compensation_errors["b"]
