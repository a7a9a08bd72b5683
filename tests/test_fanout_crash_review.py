"""Nested fan-out under crashes (a crash-exploration review, a test each): a child being
compensated as a unit when the process died, and the crash explorer on that workflow."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio
import trio._core._run as trio_run  # the scheduler's random source: seeded for determinism

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine, run

HERE = Path(__file__).parent


class Declined(Exception):
    pass


def sleeper(name: str, seconds: float, *, fails: bool = False, spins: int = 0) -> Any:
    """A job that takes ``seconds`` of (virtual) time, then ``spins`` scheduler passes more,
    then returns its name (or fails)."""
    async def job(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(seconds)
        for _ in range(spins):
            await trio.sleep(0)
        if fails:
            raise Declined(name)
        return name
    return job


async def undo(ctx: tf.WorkflowContext, result: Any) -> None:
    await trio.sleep(0.25)


def kid() -> tf.WorkflowDefinition:
    # Its last step ends at t=1.0, two scheduler passes after the sibling branch below fails.
    return tf.workflow("kid").step("k1", sleeper("k1", 0.5), undo).step("k2", sleeper("k2", 0.5, spins=2), undo).build()


def root() -> tf.WorkflowDefinition:
    return (tf.workflow("root")
            .parallel("fan", branches=[tf.branch("A").step("a", sleeper("a", 1.0, fails=True)).build(),
                                       tf.branch("B").child("c", workflow="kid").build()],
                      catch=[tf.Catch(errors=[tf.ALL], next="after")])
            .succeed("done")
            .pass_("after", result="caught")
            .build())


class SnapshotAfterFirstUndo:
    """Storage that keeps a copy of itself as it stood right after the checkpoint that stored
    the child's first compensation (its second checkpoint with status 'completed': the undo as a
    unit keeps that status until it is done): what a process killed just then leaves behind."""

    def __init__(self, inner: MemoryAdapter, child_id: str) -> None:
        self.inner = inner
        self.child_id = child_id
        self.completed_writes = 0
        self.snapshot: MemoryAdapter | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def checkpoint(self, instance_id: str, status: str, *args: Any, **kwargs: Any) -> Any:
        result = await self.inner.checkpoint(instance_id, status, *args, **kwargs)
        if instance_id == self.child_id and status == "completed":
            self.completed_writes += 1
            if self.completed_writes == 2 and self.snapshot is None:
                self.snapshot = copy.deepcopy(self.inner)
                self.snapshot._open = False  # the copy is closed storage, ready for the next engine
        return result


CHILD = "r/fan/B/c#1"


def test_a_child_whose_undo_as_a_unit_a_crash_cut_short_is_not_kept_half_undone() -> None:
    """A caught fail-fast parallel step cancels its other branch while that branch's child has
    just completed: the engine compensates that child as a unit (its step never completes), as
    docs/fanout.md says. If the process dies in the middle of that undo (one of the child's two
    compensations done), the resumed parent's branch takes the child's stored end notice and
    completes its child step with the child's output: the parent completes keeping the child,
    and the child stays ``completed`` with ``k2`` compensated and ``k1`` not: half undone, for
    good (nothing will ever finish or report that undo). What should happen: the resume ends as
    the crash-free run does: the child's undo is taken up where it stood (``compensated``,
    ``("k2", "k1")``) and the parent's step for it is not recorded completed; at the least the
    child is never left ``completed`` with some of its compensations run.
    Likely cause: actors/_child.py:run_child takes a pending end notice of a child whose undo
    as a unit has begun (EngineChildren.cancel / Engine._undo_child), and the parent's
    resumed fail-fast (actors/_lane.py:run_parallel) lets the branch complete before it
    cancels it."""
    kid_def, root_def = kid(), root()
    snapshot = None
    for seed in range(20):  # the scheduler order in which the child completes after the cancel
        trio_run._r.seed(seed)
        storage = SnapshotAfterFirstUndo(MemoryAdapter(), CHILD)

        async def first_run() -> None:
            async with open_test_engine(adapter=storage) as engine:
                engine.register(kid_def)
                engine.register(root_def)
                assert (await engine.wait(await engine.start("root", None, instance_id="r"))).status == "completed"
                assert (await engine.wait(CHILD)).status in ("compensated", "completed")

        run(first_run)
        if storage.snapshot is not None:
            snapshot = storage.snapshot
            break
    assert snapshot is not None, "no scheduler order compensated the child as a unit"

    outcomes = []
    for seed in range(8):  # the resumed branches' order
        trio_run._r.seed(seed)
        stored = copy.deepcopy(snapshot)

        async def resume() -> tuple[Any, ...]:
            async with open_test_engine(adapter=stored) as engine:
                engine.register(kid_def)
                engine.register(root_def)
                parent = await engine.wait("r")
                child = await engine.wait(CHILD)
                kept = [r.id for r in parent.history if r.step_name == "c" and r.status == "completed"]
                return parent.status, parent.output, kept, child.status, child.compensated_steps

        outcomes.append(run(resume))
    half_undone = [o for o in outcomes if o[3] == "completed" and o[4]]
    assert not half_undone, (
        f"child left completed with {half_undone[0][4]} compensated (parent: {half_undone[0][:3]});"
        f" every resume: {outcomes}")
    assert all(o == ("completed", "caught", [], "compensated", ("k2", "k1")) for o in outcomes), outcomes


def test_explore_crashes_returns_when_a_crash_lands_in_a_cancelled_childs_undo() -> None:
    """``explore_crashes`` (the testing kit's public crash explorer) on the workflow above never
    returns: for a crash point that lands while the parent's fail-fast cancel compensates the
    completed child as a unit, the dead engine's shielded work (actors/_child.py:cancel_children
    runs in ``CancelScope(shield=True)``) keeps going, its next write blocks for ever in
    ``_CrashingAdapter._before_write`` (``trio.sleep_forever()``: "a dead process writes
    nothing more"), and the crash run's ``open_engine`` block waits on it for ever: the
    test suite hangs instead of getting a report or a CrashDivergenceError. What should happen:
    the explorer returns (a crash kills shielded work too). Likely cause:
    runtime/testing/_crashes.py:_CrashingAdapter (the crash is a cancel, which shields defeat).
    Run in a child process (explorer_near_tie_child.py) so that a hang can be stopped."""
    try:
        done = subprocess.run([sys.executable, str(HERE / "explorer_near_tie_child.py"), "2"],
                              capture_output=True, text=True, timeout=9)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise AssertionError(f"explore_crashes did not return within 9 s (seeds done: {out.splitlines()})") from None
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("returned") == 2, done.stdout
    assert "divergence" not in done.stdout, done.stdout  # every crash point resumes to the same end
