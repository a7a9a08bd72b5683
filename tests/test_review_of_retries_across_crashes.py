"""From an adversarial review: crash exploration of workflows whose steps and compensations
retry, and restarts under releases lowering max_attempts. The catch test failed until the
commit that added this file; the other two held and are kept as guards."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings, strategies as st

import trioflow as tf
from trioflow.testing import explore_crashes, open_test_engine, run

LONG = tf.Retry(max_attempts=3, interval=5.0, backoff_rate=1.0, max_interval=5.0)   # parks
SHORT = tf.Retry(max_attempts=3, interval=0.1, backoff_rate=1.0)                     # in memory


def _fails_until(n: int, value: Any) -> Any:
    async def job(ctx: tf.WorkflowContext) -> Any:
        if tf.current_step().attempt < n:
            raise ConnectionError(f"attempt {tf.current_step().attempt}")
        return value
    return job


def _saga(*, ship_caught: bool) -> tf.WorkflowDefinition:
    async def undo(ctx: tf.WorkflowContext, out: Any) -> None:
        if tf.current_step().attempt < 2:
            raise TimeoutError("undo busy")

    async def pack(ctx: tf.WorkflowContext) -> Any:
        if tf.current_step().attempt < 2:
            raise ConnectionError("pack")
        return ctx.item * 10

    async def ship(ctx: tf.WorkflowContext) -> Any:
        raise PermissionError("no courier")

    async def notify(ctx: tf.WorkflowContext) -> str:
        return "notified"

    branch = tf.branch("item").step("pack", pack, undo, retry=SHORT).build()
    b = (tf.workflow("saga")
         .step("reserve", _fails_until(1, "r"), undo, retry=LONG)
         .step("charge", _fails_until(3, "c"), undo, retry=LONG)
         .map("packs", items=lambda ctx: [1, 2, 3], branch=branch)
         .step("ship", ship, retry=tf.Retry(max_attempts=2, interval=3.0),
               catch=[tf.Catch(errors=[PermissionError], next="notify")] if ship_caught else ()))
    if ship_caught:
        b = b.succeed("done").step("notify", notify)
    return b.build()


def test_guard_crash_exploration_of_a_retrying_saga_whose_compensations_retry() -> None:
    """Guard: a saga whose steps retry (long, parked, and short delays), a map whose items retry,
    and whose compensations fail once then succeed on retry (kept on the main lane's undo wait)
    gives the crash-free outcome at every checkpoint, each completed execution compensated once."""
    async def main() -> None:
        report = await explore_crashes(_saga(ship_caught=False), {"o": 1})
        assert not report.divergent
        base = report.baseline
        assert base.status == "failed" and base.error_name == "PermissionError"
        assert sorted(base.compensated_steps) == ["charge", "pack", "pack", "pack", "reserve"]
        assert base.compensated_steps[-2:] == ("charge", "reserve")
        caught = await explore_crashes(_saga(ship_caught=True), {"o": 1})
        assert not caught.divergent and caught.baseline.output == "notified"
    run(main)


def _pay(calls: list[int], max_attempts: int, interval: float, work: float) -> tf.WorkflowDefinition:
    async def charge(ctx: tf.WorkflowContext) -> None:
        calls.append(tf.current_step().attempt)
        await trio.sleep(work)
        raise ConnectionError("gateway")

    retry = tf.Retry(max_attempts=max_attempts, interval=interval, backoff_rate=1.0, max_interval=interval)
    return tf.workflow("pay").step("charge", charge, retry=retry).build()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(old=st.integers(2, 5), new=st.integers(1, 5), interval=st.sampled_from([0.3, 5.0, 60.0]),
       stop_at=st.floats(0.01, 200.0), restarts=st.integers(1, 3),
       work=st.sampled_from([0.0, 0.2, 3.0]))
def test_guard_lowered_max_attempts_across_restarts_on_sqlite(
        old: int, new: int, interval: float, stop_at: float, restarts: int, work: float) -> None:
    """Guard: replacing the definition with another max_attempts between SIGKILL-free restarts
    on a SQLite file never runs an attempt beyond max(attempts made, attempts the release allows)."""
    calls: list[int] = []

    async def main() -> tf.WorkflowInstance:
        with tempfile.TemporaryDirectory() as folder:
            db = Path(folder) / "flows.db"
            async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
                engine.register(_pay(calls, old, interval, work))
                iid = await engine.start("pay", {})
                await trio.sleep(stop_at)
            bound = max(calls) if calls else 0
            for i in range(restarts):
                allowed = new if i % 2 == 0 else old
                async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
                    engine.register(_pay(calls, allowed, interval, work), replace=True)
                    got = await engine.get_instance(iid)
                    if got.status != "running":
                        return got
                    if i == restarts - 1:
                        return await engine.wait(iid)
                    await trio.sleep(stop_at)
                made = max(calls)
                assert made <= max(bound, allowed), (calls, bound, allowed)
                bound = max(bound, made)
            raise AssertionError("unreachable")

    done = run(main)
    assert done.status == "failed" and done.error_name == "ConnectionError"
    assert sorted(set(calls)) == list(range(1, max(calls) + 1))


def _charge_with_catch(calls: list[int], retry: tf.Retry | None) -> tf.WorkflowDefinition:
    async def charge(ctx: tf.WorkflowContext) -> None:
        calls.append(tf.current_step().attempt)
        raise ConnectionError("gateway")

    async def engine_trouble(ctx: tf.WorkflowContext) -> str:
        return "handled an engine error"

    return (tf.workflow("pay")
            .step("charge", charge, retry=retry,
                  catch=[tf.Catch(errors=[tf.TrioflowError], next="engine_trouble")])
            .succeed("paid")
            .step("engine_trouble", engine_trouble)
            .build())


async def test_a_catch_for_trioflow_errors_does_not_catch_a_kept_connection_error_after_a_lowering_release(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A user's `charge` step retries (`Retry(max_attempts=5, interval=20)`) and has a catch for
    trioflow's own errors (`errors=[tf.TrioflowError]`: its step timeouts and the like), not for a
    `ConnectionError`, which must fail the instance. While an instance waits out a retry delay on a
    SQLite file they deploy a release without `retry=` (README, Registration: the step "fails then
    with the last attempt's error ... rather than try again"). They expect what that release does
    without any restart: the `ConnectionError` fails the step and the instance (docs/errors.md: a
    recorded failure's types are matched "by the recorded class name (the type or one of its
    loaded subclasses has that name)"; `ConnectionError` is no `TrioflowError`).
    Was: the step was `caught` and the instance completes through `engine_trouble`: the kept
    error is a `tf.RecordedError`, itself a `TrioflowError`, and the matcher's `isinstance` check
    matches the wrapper rather than the recorded class."""
    db = tmp_path / "flows.db"
    calls: list[int] = []
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(_charge_with_catch(calls, tf.Retry(max_attempts=5, interval=20.0, max_interval=20.0)))
        iid = await engine.start("pay", {})
        await trio.sleep(10)  # attempt 1 failed at t=0; attempt 2 due at t=20, parked
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(_charge_with_catch(calls, None), replace=True)
        done = await engine.wait(iid)
    assert calls == [1]
    async with open_test_engine() as engine:  # the same release, no restart: the reference
        engine.register(_charge_with_catch([], None))
        reference = await engine.wait(await engine.start("pay", {}))
    assert (reference.status, reference.error_name) == ("failed", "ConnectionError")
    record = done.step_results["charge"]
    assert (done.status, record.status, record.error_name) == ("failed", "failed", "ConnectionError"), (
        done.status, done.output, record.status)
