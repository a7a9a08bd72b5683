"""From an adversarial review of BaseExceptions and odd exceptions out of user code, as a
service embedding the engine meets them. Each test but the guard failed until the commit that
added this file. On trio's autojumping MockClock (the ``autojump_clock`` fixture), real
adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import open_test_engine


async def _ok(ctx: tf.WorkflowContext) -> int:
    return 1


async def _fails(ctx: tf.WorkflowContext) -> None:
    raise ValueError("card declined")


def _adapter(kind: str, tmp_path: Path) -> Any:
    return tf.adapters.SQLiteAdapter(str(tmp_path / "flows.db")) if kind == "sqlite" else tf.adapters.MemoryAdapter()


def _stopping(kind: str) -> BaseException:
    return SystemExit(3) if kind == "SystemExit" else KeyboardInterrupt()


def _workflow(where: str, kind: str) -> tf.WorkflowDefinition:
    async def stops(ctx: tf.WorkflowContext, *_: Any) -> None:
        raise _stopping(kind)  # a step (or compensation) calling a helper that sys.exit()s

    def predicate(ctx: tf.WorkflowContext) -> bool:
        raise _stopping(kind)

    flow = tf.workflow("checkout").step("reserve", _ok)
    if where == "step":
        return flow.step("charge", stops).build()
    if where == "choice":
        return flow.choice("route", choices=[tf.when(predicate, next="ship")], default="ship").step("ship", _ok).build()
    assert where == "compensation"
    return tf.workflow("checkout").step("reserve", _ok, stops).step("charge", _fails).build()


@pytest.mark.parametrize("adapter", ["memory", "sqlite"])
@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
@pytest.mark.parametrize("where", ["step", "choice", "compensation"])
async def test_process_exit_from_user_code_leaves_a_waiting_block_bare(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, where: str, kind: str, adapter: str,
) -> None:
    """A service written as README's first example (``async with open_engine(...)``, then
    ``await engine.wait(iid)`` in the block) runs a step, a choice predicate or a compensation
    that calls ``sys.exit(3)`` (or meets a KeyboardInterrupt). README ("those two stop the
    process") and the fix in ca0157c ("a step's SystemExit leaves an engine's block bare")
    promise the block raises that exception itself, so ``except SystemExit`` /
    ``except KeyboardInterrupt`` around ``trio.run`` (or Python's own exit with status 3)
    sees it, as it would without trioflow; the instance stays resumable (a Temporal/DBOS user
    expects a process exit not to record the step failed).
    Was: the block raised ``BaseExceptionGroup([SystemExit(3), EngineClosedError(...)])``
    (for a choice, compensation or KeyboardInterrupt, nested a level deeper:
    ``[EngineClosedError, BaseExceptionGroup([SystemExit(3)])]``): the caller's ``wait()`` is
    released with EngineClosedError before the cancel reaches the block, and open_engine unwraps
    only a group of one. The process exits with status 1 and a group traceback; ``except
    SystemExit`` does not run. (With a block that only sleeps, as README's Hosting example
    serves, it comes out bare, so the fix covers that shape only.) Storage is fine: a new
    engine on the same file resumes it."""
    storage = _adapter(adapter, tmp_path)
    with pytest.raises((SystemExit, KeyboardInterrupt)) as raised:
        async with open_test_engine(adapter=storage) as engine:
            engine.register(_workflow(where, kind))
            await engine.wait(await engine.start("checkout", instance_id="order-1"))
    assert type(raised.value).__name__ == kind
    if kind == "SystemExit":
        assert raised.value.code == 3
    # Nothing was recorded as failed by the exit: a new engine on the same storage goes on.
    again = _adapter(adapter, tmp_path) if adapter == "sqlite" else storage
    async with open_test_engine(adapter=again, resume=False) as engine:
        stored = await engine.get_instance("order-1")
        assert stored is not None and stored.status == "running"


class _NoMessage(Exception):
    """An exception whose message cannot be built: its ``__str__`` raises a BaseException (a
    generator closed under it, a lazy message read from a closed coroutine)."""

    def __str__(self) -> str:
        raise GeneratorExit("message generator closed")


async def test_step_error_whose_str_raises_a_base_exception_fails_the_step_and_compensates(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    """docs/errors.md: "an exception whose ``str()`` raises is recorded as ``<str() of this Name
    raised ...>``", and README: a failed step fails the workflow and every completed step is
    compensated, newest first. A user's step raises an error whose ``__str__`` raises a
    ``GeneratorExit`` (a BaseException that README says fails a step like any Exception). They
    expect ``failed_step == "charge"``, ``error_name == "_NoMessage"`` and the reservation
    released. Was: the instance failed alone with ``error_name "Error"``, cause
    ``"internal error: GeneratorExit: message generator closed"``, no failed step, no record
    for ``charge``, and ``reserve`` is never compensated (runtime/_errors.py ``_text`` catches
    only ``Exception`` from ``str()``, so recording the failure raises, and the engine takes it
    for its own bug)."""
    released: list[str] = []

    async def release(ctx: tf.WorkflowContext, result: Any) -> None:
        released.append("reserve")

    async def charge(ctx: tf.WorkflowContext) -> None:
        raise _NoMessage()

    flow = tf.workflow("checkout").step("reserve", _ok, release).step("charge", charge).build()
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(str(tmp_path / "flows.db"))) as engine:
        engine.register(flow)
        instance = await engine.wait(await engine.start("checkout"))
    assert (instance.status, instance.failed_step, instance.error_name) == ("failed", "charge", "_NoMessage")
    assert instance.cause is not None and instance.cause.startswith("<str() of this _NoMessage raised")
    assert released == ["reserve"]
    assert instance.compensated_steps == ("reserve",)


async def test_guard_hosting_shape_exit_is_bare_and_the_file_resumes(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    """Guard (held at 5f70cf4): README's Hosting shape, a block that serves (here: sleeps)
    while a step calls ``sys.exit(3)``. The block raises ``SystemExit(3)`` itself, the step is
    not recorded failed (a process exit is not a step failure, as Temporal and DBOS treat a
    worker that dies), and a new engine on the same SQLite file runs the step again and
    completes."""
    calls: list[int] = []

    async def charge(ctx: tf.WorkflowContext) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit(3)
        return "charged"

    flow = tf.workflow("checkout").step("reserve", _ok).step("charge", charge).build()
    path = str(tmp_path / "flows.db")
    with pytest.raises(SystemExit) as raised:
        async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
            engine.register(flow)
            await engine.start("checkout", instance_id="order-1")
            await trio.sleep_forever()  # serve(app, config)
    assert raised.value.code == 3
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(flow)
        instance = await engine.wait("order-1")
    assert instance.status == "completed" and instance.output == "charged"
    assert [(r.step_name, r.status) for r in instance.history] == [("reserve", "completed"), ("charge", "completed")]

