"""Regressions and incomplete fixes a review of this session's fixes found (each failed before its
fix): a signal a newer release stored, seen by signal(), cancel() and listings; a resumed
fail-fast failure nested in a wait-all parallel; the crash explorer and workflow timeouts; a
fail step's error name that cannot be stored; an async retry_on predicate behind a decorator."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import explore_crashes, open_test_engine, virtual_wall_clock
from storages import engine_on, returning


class Declined(Exception):
    pass


# -- a signal a newer release stored ---------------------------------------------------------------


async def _parked_with_a_newer_releases_signal(adapter: MemoryAdapter) -> tf.WorkflowDefinition:
    wf = tf.workflow("w").receive("r", signal="go").task("x", job=returning("x")).build()
    async with engine_on(adapter) as engine:
        engine.register(wf)
        await engine.start("w", instance_id="a")
        await trio.sleep(10)  # parked on its receive step
    await adapter.open()
    await adapter.send_signal("a", "go", msgpack.packb(msgpack.ExtType(42, b"a newer release's type")))
    await adapter.close()
    return wf


async def test_signal_to_an_instance_holding_a_newer_releases_signal_does_not_raise_a_decode_error(
        autojump_clock: trio.testing.MockClock) -> None:
    """138c4c0 leaves an instance whose pending signal this release cannot read stored running
    (reported failed). A later ``engine.signal(iid, "go", 1)`` stores the new signal, then wakes
    the parked instance: ``_wake_if_waiting`` (runtime/_engine.py:477) calls
    ``run.deliver_stored(stored.signals)``, which decodes the newer release's payload and raises
    SnapshotDecodeError out of ``signal()`` *after* the signal was stored (a caller that retries
    sends it twice). ``cancel()`` raises the same way. Before the fix the instance was stored
    failed and signal() raised InstanceNotLiveError, storing nothing."""
    adapter = MemoryAdapter()
    wf = await _parked_with_a_newer_releases_signal(adapter)
    async with engine_on(adapter) as engine:
        engine.register(wf)
        await trio.sleep(10)
        seen = await engine.get_instance("a")
        assert seen is not None and seen.status == "failed"
        try:
            await engine.signal("a", "go", 1)
        except tf.InstanceNotLiveError:
            pass  # fine: it is reported failed
        except tf.SnapshotDecodeError as exc:
            pytest.fail(f"signal() raised SnapshotDecodeError for another signal's payload: {exc}")


async def test_an_instance_holding_a_newer_releases_signal_is_listed_as_get_instance_reports_it(
        autojump_clock: trio.testing.MockClock) -> None:
    """get_instance() and wait() report the instance failed (``_unreadable``, filled now from
    ``_instance_actor``, runtime/_engine.py:990), but listings decode its row, which is
    readable: get_instances(status="running") lists it as running, and an unpaged
    status="failed" listing lists it too (runtime/_engine.py:657-659). One instance is both
    running and failed, depending on which call asks."""
    adapter = MemoryAdapter()
    wf = await _parked_with_a_newer_releases_signal(adapter)
    async with engine_on(adapter) as engine:
        engine.register(wf)
        await trio.sleep(10)
        one = await engine.get_instance("a")
        running = [i.id for i in await engine.get_instances("w", status="running")]
        failed = [i.id for i in await engine.get_instances("w", status="failed")]
    assert one is not None and one.status == "failed"
    assert not ("a" in running and "a" in failed), (running, failed)
    assert running == [], f"get_instance says failed, get_instances(status='running') lists {running}"


# -- a fail-fast parallel failure taken up after a restart -----------------------------------------


async def test_a_resumed_fail_fast_failure_names_a_nested_wait_all_parallel_as_live(
        autojump_clock: trio.testing.MockClock) -> None:
    """Live, a fail-fast parallel step whose branch fails at a wait-all parallel step ``q`` fails
    the instance with failed_step ``q`` (the wait-all step fails as itself). Taken up after a
    restart between storing the failure and deciding on it, ``_failed_step_of``
    (actors/_lane.py:163-166) takes the lowest failed seq over *every* nested lane, the
    wait-all step's own branch lanes included, and names ``t1`` inside ``q`` instead."""
    async def bad(ctx: tf.WorkflowContext) -> None:
        raise Declined("card declined")

    async def fine(ctx: tf.WorkflowContext) -> str:
        return "ok"

    async def slow(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(50)
        return "slow"

    async def on_step_failed(step_name: str, error: BaseException, ctx: tf.WorkflowContext) -> None:
        if step_name == "p":
            await trio.sleep_forever()  # the engine closes here: p's failure is stored

    def definition(hooked: bool) -> tf.WorkflowDefinition:
        inner = tf.branch("x").parallel("q", on_error="wait-all", branches=[
            tf.branch("q1").step("t1", bad).build(), tf.branch("q2").step("t2", fine).build()]).build()
        builder = tf.workflow("w").parallel("p", branches=[inner, tf.branch("y").step("s", slow).build()])
        return (builder.with_hooks(on_step_failed=on_step_failed) if hooked else builder).build()

    adapter = MemoryAdapter()
    clock = virtual_wall_clock()
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(definition(hooked=False))
        live = await engine.wait(await engine.start("w"))
    assert (live.status, live.failed_step) == ("failed", "q")
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(definition(hooked=True))
        iid = await engine.start("w")
        await trio.sleep(1)
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(definition(hooked=False))
        with trio.fail_after(100):
            resumed = await engine.wait(iid)
    assert (resumed.status, resumed.failed_step, resumed.error_name) == ("failed", "q", live.error_name)


# -- the crash explorer -----------------------------------------------------------------------------


async def test_explore_crashes_does_not_report_a_sequential_workflow_timeout_as_diverging(
        autojump_clock: trio.testing.MockClock) -> None:
    """A sequential saga with a workflow timeout: a, b (each 2 s, compensated), c (2 s); the
    5 s timeout fires in c, so b and a are compensated. A write lost with a step in flight runs
    that step again after the resume (at-least-once, docs/testing.md), which takes its 2 s
    again: the timeout now fires in b and only a is compensated, exactly what the engine must
    do. 1a27f51's new check (runtime/testing/_crashes.py:329-339) demands the fault-free run's
    compensated steps of every one-step-at-a-time workflow and reports 'compensated ['a'], the
    fault-free run ['b', 'a']' (the previous release's explorer passed this workflow)."""
    async def a(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(2)
        return "a"

    async def b(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(2)
        return "b"

    async def c(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(2)
        return "c"

    async def undo(ctx: tf.WorkflowContext, result: Any) -> None:
        return None

    wf = tf.workflow("t").step("a", a, undo).step("b", b, undo).step("c", c).with_timeout(5).build()
    report = await explore_crashes(wf, check=False)
    assert report.baseline.status == "timed_out"
    assert [(p.write, p.lost, p.divergence) for p in report.divergent] == []


# -- whole-instance copies past the snapshot limit: the transaction ledger -------------------------

BIG = b"x" * (15 * 2**20)  # under the 16 MiB per-value limit


class _DyingAdapter(MemoryAdapter):
    """Kills its engine (cancels ``process``) while the instance's terminal checkpoint is
    being made: that write never lands, as if the process died right after the commit."""

    process: trio.CancelScope | None = None
    armed = False

    async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Any, **kw: Any) -> Any:
        if self.armed and status == "completed":
            self.armed = False
            assert self.process is not None
            self.process.cancel()
            await trio.lowlevel.checkpoint()
        return await super().checkpoint(instance_id, status, header, records, **kw)


# -- lone surrogates ---------------------------------------------------------------------------------


async def test_a_fail_steps_error_name_with_a_lone_surrogate_is_refused_or_stored_and_compensated(
        autojump_clock: trio.testing.MockClock) -> None:
    """138c4c0 escapes lone surrogates in error *texts* (``_capped``), so a failing step is
    recorded and compensated. A ``.fail(error=...)`` name is neither escaped nor refused by
    build() (runtime/_validate.py:137-140 checks its type and length only; step and branch
    names are refused with ``valid_text``): the fail step's record cannot be encoded, the
    instance ends 'internal error: UnencodableValueError: step record 'f#1' cannot be encoded'
    and the completed step ``a`` is never compensated (SPEC §1)."""
    async def ok(ctx: tf.WorkflowContext) -> int:
        return 1

    async def undo(ctx: tf.WorkflowContext, result: Any) -> None:
        return None

    try:
        wf = tf.workflow("w").step("a", ok, undo).fail("f", error="Bad\udcff", cause="x").build()
    except tf.DefinitionError:
        return  # refused at build(), naming the step: fine
    async with open_test_engine() as engine:
        engine.register(wf)
        with trio.fail_after(100):
            done = await engine.wait(await engine.start("w"))
    assert done.status == "failed" and done.failed_step == "f", done.error
    assert done.compensated_steps == ("a",), (done.compensated_steps, done.error)


# -- async predicates in retry_on / Catch.errors --------------------------------------------------


def _logged(fn: Any) -> Any:
    """A typical sync decorator (functools.wraps), as used to log or time a predicate."""
    import functools

    @functools.wraps(fn)
    def wrapper(error: BaseException) -> Any:
        return fn(error)
    return wrapper


@_logged
async def _is_transient(error: BaseException) -> bool:
    return isinstance(error, ConnectionError)


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_decorated_async_retry_on_predicate_is_refused_or_never_matches(
        autojump_clock: trio.testing.MockClock) -> None:
    """4f80ad3 refuses async predicates at build() (docs/errors.md: 'an async def one is
    refused: it is called, not awaited'), but only by ``inspect.iscoroutinefunction`` on the
    object (runtime/_matching.py:55-58), which does not look through ``functools.wraps``. The
    decorated ``async def`` passes build(), and ``matches`` (runtime/_matching.py:80) takes the
    coroutine it returns as true: a ValueError the predicate would reject is retried 4 times
    ('coroutine ... was never awaited'). Either refuse it (inspect.unwrap) or never treat an
    awaitable result as a match."""
    calls = 0

    async def charge(ctx: tf.WorkflowContext) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("card number is malformed")

    try:
        wf = (tf.workflow("w")
              .step("charge", charge, retry=tf.Retry(max_attempts=4, interval=1, retry_on=[_is_transient]))
              .build())
    except tf.DefinitionError:
        return  # refused at build(): fine
    async with open_test_engine() as engine:
        engine.register(wf)
        with trio.fail_after(100):
            done = await engine.wait(await engine.start("w"))
    assert done.status == "failed"
    assert calls == 1, f"a ValueError the predicate rejects was tried {calls} times"
