"""Children of parents that stop going forward, under a third review of a session's fixes (a test
each, on MemoryAdapter and SQLite where storage matters): children whose workflow or jobs are
registered after their parent's, and a parent parked on its child past its workflow timeout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import subprocess
import sys
import textwrap

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


def _adapter_factory(storage: str, tmp_path: Path) -> Any:
    memory = MemoryAdapter()
    return lambda: memory if storage == "memory" else SQLiteAdapter(tmp_path / "flows.db")


async def _slow_kid(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(100)
    return "k"


async def _a(ctx: tf.WorkflowContext) -> str:
    return "a"


def _defs() -> tuple[tf.WorkflowDefinition, tf.WorkflowDefinition]:
    kid = tf.workflow("kid").step("k", _slow_kid).build()
    parent = tf.workflow("p").step("a", _a).child("c", workflow="kid").build()
    return kid, parent


async def _cancel_as_engine_closes(adapter: Any, clock: Any) -> str:
    kid, parent = _defs()
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(kid)
        engine.register(parent)
        pid = await engine.start("p")
        await trio.sleep(5)
        assert await engine.cancel(pid)
    return pid


async def _kj(data: Any) -> str:
    await trio.sleep(100)
    return "kj"


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_the_child_of_a_cancelled_parent_is_cancelled_even_if_its_jobs_are_registered_after_the_parent_resumes(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str) -> None:
    """README (Storage and durability): an instance whose workflow's jobs are not all registered
    is held back and resumes as soon as they are. 36d419a made a child's cancel wait for its
    workflow to be registered ("registered after its parent's, it ran on"), but not for its
    jobs: the parent, cancelled as its engine closed, is taken up compensating by the next
    engine while its child (running job 'kj') is held for 'kj'; EngineChildren.cancel's
    engine.cancel says False (the child is held, not parked), engine.wait raises
    InstanceNotLiveError, which is only logged; the parent ends 'cancelled'. When 'kj' is
    registered a moment later the child resumes and runs on to 'completed' for good, neither
    cancelled nor compensated. Expected: the child ends cancelled (or compensated).
    Likely cause: runtime/_children.py EngineChildren.cancel waits for the workflow
    (_until_registered) but not for a held child's jobs (Engine._held / _missing_jobs)."""
    adapter, clock = _adapter_factory(storage, tmp_path), virtual_wall_clock()
    kid = tf.workflow("kid").task("k", job="kj").build()
    parent = tf.workflow("p").step("a", _a).child("c", workflow="kid").build()
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.jobs.register("kj", _kj)
        engine.register(kid)
        engine.register(parent)
        pid = await engine.start("p")
        await trio.sleep(5)
        assert await engine.cancel(pid)
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.register(kid)             # held: its job "kj" is not registered yet
        engine.register(parent)
        await trio.sleep(5)
        engine.jobs.register("kj", _kj)  # the deploy registers it a moment later
        with trio.fail_after(1000):
            inst = await engine.wait(pid)
            await trio.sleep(300)
            child = await engine.wait(f"{pid}/c#1")
    assert inst.status == "cancelled", inst.status
    assert child.status in ("cancelled", "compensated"), child.status


async def _undo_k(ctx: tf.WorkflowContext, result: Any) -> None:
    _UNDONE.append(result)


_UNDONE: list[Any] = []


async def _b_slow(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(100)
    return "b"


class _Declined(Exception):
    pass


async def _b_fails(ctx: tf.WorkflowContext) -> str:
    raise _Declined("b")


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_a_completed_child_is_compensated_with_its_parent_whatever_the_registration_order(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str) -> None:
    """docs/fanout.md (Nested sagas): when a parent compensates, every child step whose child
    completed is compensated as a unit. 36d419a made a child's *cancel* wait for the child's
    workflow to be registered (an engine starting up registers workflows in any order), but a
    completed child's *undo* does not: the parent, resumed with its workflow registered a moment
    before the child's, fails at 'b' and its compensation reaches child step 'c' at once;
    Engine._undo_once answers "its workflow 'kid' is not registered", recorded for good as a
    ChildCompensationError, and the child stays 'completed' (its 'k' never undone) although
    'kid' is registered one second later. Expected: the child is compensated ('compensated',
    undo of 'k' run once) and the parent lists 'c' in compensated_steps.
    Likely cause: runtime/_engine.py Engine._undo_once returns a problem for an unregistered
    workflow instead of waiting for it as EngineChildren.cancel now does (_until_registered)."""
    _UNDONE.clear()
    adapter, clock = _adapter_factory(storage, tmp_path), virtual_wall_clock()
    kid = tf.workflow("kid").step("k", _a, _undo_k).build()
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.register(kid)
        engine.register(tf.workflow("p").child("c", workflow="kid").step("b", _b_slow).build())
        pid = await engine.start("p")
        await trio.sleep(5)              # the child completed; the parent runs b
        assert (await engine.get_instance(f"{pid}/c#1")).status == "completed"  # type: ignore[union-attr]
    async with open_test_engine(adapter=adapter(), clock=clock) as engine:
        engine.register(tf.workflow("p").child("c", workflow="kid").step("b", _b_fails).build())
        await trio.sleep(1)
        engine.register(kid)
        with trio.fail_after(1000):
            inst = await engine.wait(pid)
            await trio.sleep(10)
            child = await engine.wait(f"{pid}/c#1")
    assert inst.status == "failed", inst.status
    assert inst.compensation_errors == {} and inst.compensated_steps == ("c",), (
        inst.compensated_steps, inst.compensation_errors)
    assert child.status == "compensated" and _UNDONE == ["a"], (child.status, _UNDONE)



_HOT_LOOP = textwrap.dedent("""
    import trio
    import trioflow as tf
    from trioflow.testing import open_test_engine, run

    async def a(ctx):
        return "a"

    async def k(ctx):
        await trio.sleep(5)
        return "k"

    async def main():
        kid = tf.workflow("kid").step("k", k).build()
        parent = tf.workflow("p").with_timeout(0.8).step("a", a).child("c", workflow="kid").build()
        async with open_test_engine() as engine:
            engine.register(kid)
            engine.register(parent)
            done = await engine.wait(await engine.start("p"))
            print("ended", done.status, flush=True)

    run(main)
""")


def test_a_parent_parked_on_its_child_times_out_at_its_workflow_timeout() -> None:
    """README/SPEC: a workflow timeout ends the instance 'timed_out'; a parent waiting on its
    child leaves memory and is woken when its timeout falls due. With with_timeout(0.8) (also
    3.3; 1.0 and 2.0 pass: float rounding of clock() - started_at decides) the woken parent
    gets a cancel-scope deadline of "now", which trio only processes at the next scheduler
    pass; the run parks again in the same step (signal_or_timeout's checkpoint_if_cancelled
    sees no cancel yet), the waker finds it still due and wakes it again: a hot loop at 100%
    CPU with virtual time frozen at 0.8; wait() never returns, the engine never times it out.
    Same with a receive step (pre-existing, also at 8dba464; not a child-specific regression).
    Expected: the parent ends 'timed_out' (and cancels its child).
    Likely cause: actors/_instance.py _deadline / actors/_wait.py signal_or_timeout (and
    _park): a run resumed at or past its workflow deadline may park before the expired scope
    is processed; runtime/_engine.py _wake_due wakes it again at once.
    Run in a child process so that the hang can be stopped."""
    try:
        done = subprocess.run([sys.executable, "-c", _HOT_LOOP], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError("the parent never timed out: the engine spun at a frozen virtual time for 15 s") from None
    assert "ended timed_out" in done.stdout, (done.stdout, done.stderr[-2000:])
