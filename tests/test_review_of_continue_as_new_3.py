"""From a re-review of continue-as-new's handling of children (a restart lets go of finished
children; the write that starts the next run consumes stale end notices): two strict xfails
naming a limit left, a child of an earlier run that ends after its parent continued."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from storages import storage  # noqa: F401  (a fixture: the tests taking it run on both adapters)
from trioflow.testing import open_test_engine

sys.path.insert(0, str(Path(__file__).parent))

DAY = 86_400.0
KID = "P/both/a/kid#1"  # the child run 0 of "P" starts


async def _reserve(value: Any) -> Any:
    return value


async def _declined(ctx: tf.WorkflowContext) -> Any:
    raise ValueError("card declined")


def _definitions() -> list[tf.WorkflowDefinition]:
    """A retry loop: run 0 starts a child ("hold") beside a branch that waits for "decline" and
    then fails; the catch continues as new, and run 1 waits for "stop". The child's step is
    cancelled by the fail-fast parallel step; compensation_timeout bounds the cancel."""
    parent = (tf.workflow("loop").with_compensation_timeout(5)
              .choice("first", choices=[tf.Choice(condition=lambda ctx: ctx.input >= 1, next="listen")],
                      default="both")
              .parallel("both", branches=[
                  tf.branch("a").child("kid", workflow="hold", input=lambda ctx: ctx.input).build(),
                  tf.branch("b").receive("decline", signal="decline").step("fail", _declined).build()],
                  catch=[tf.Catch(errors=tf.ALL, next="again")])
              .continue_as_new("again", input=lambda ctx: ctx.input + 1)
              .receive("listen", signal="stop")
              .succeed("done")
              .build())
    hold = tf.workflow("hold").task("reserve", job="reserve").wait("hold", seconds=1000).build()
    return [parent, hold]


async def _child_ends_after_its_parent_continued(adapter: Callable[[], Any]) -> Any:
    """Engine 1 starts "P" (run 0) and its child; it stops. Engine 2 starts up with the
    workflows but not yet the child's job "reserve" (docs: a child's workflow or job "may be
    registered after its parent's, as an engine starts up"): "decline" fails the branch, the
    child cannot be cancelled here within compensation_timeout, its cancel is stored in it, and
    the parent continues as new (run 1, waiting for "stop"). Engine 3 has the job: the child
    ends cancelled then, after its parent's continue. Ten days later the user purges. Returns
    (pending signal names of P, ids left after purge(older_than=1 day), P's run)."""
    async with open_test_engine(adapter=adapter()) as engine:
        engine.jobs.register("reserve", _reserve)
        for definition in _definitions():
            engine.register(definition)
        await engine.start("loop", 0, instance_id="P")
        await trio.sleep(1)
    async with open_test_engine(adapter=adapter()) as engine:
        for definition in _definitions():
            engine.register(definition)
        await trio.sleep(1)
        await engine.signal("P", "decline", None)
        await trio.sleep(100)
    async with open_test_engine(adapter=adapter()) as engine:
        engine.jobs.register("reserve", _reserve)
        for definition in _definitions():
            engine.register(definition)
        await trio.sleep(10 * DAY)
        view = await engine.get_instance("P")
        kid = await engine.get_instance(KID)
        assert (view.status, view.runs, view.current_step) == ("running", 1, "listen")
        assert kid.status == "cancelled"
        pending = [name for _, name, _ in await engine.adapter.signals("P")]
        await engine.purge(older_than=DAY)
        left = sorted(row.id for row in await engine.get_instances())
    return pending, left


@pytest.mark.xfail(strict=True, reason=(
    "known, left (December 7th): a restart lets go of the children finished by then; one still ending"
    " (its cancel being carried out) is let go at the parent's next continue, or goes with the parent,"
    " and its end notice is consumed then: at most the children of one run linger"))
async def test_an_earlier_runs_child_that_ends_after_the_continue_is_purged_while_the_parent_lives(
    storage: Callable[[], Any], autojump_clock: trio.testing.MockClock,
) -> None:
    """A user's retry loop (see _definitions) continues as new while the child of its run 0 is
    still running (its cancel stored in it, not yet carried out: the child's job was registered
    late). The child ends cancelled soon after; ten days later the user calls
    purge(older_than=1 day) while the parent waits in run 1. README (continue as new): "what
    ran before is never compensated ... so the finished children of its runs before are kept by
    it no more (purge() and retain_finished take them by their own finish times)".
    Actual: the child stays: MemoryAdapter._let_go_finished_children and SQLite's _restart
    UPDATE let go only of the children finished at the instant of the restart; a child that
    finishes afterwards keeps its parent_id and is kept for as long as the parent lives (a
    subscription's every such child, for ever)."""
    _, left = await _child_ends_after_its_parent_continued(storage)
    assert left == ["P"], left


@pytest.mark.xfail(strict=True, reason=(
    "known, left (December 7th): a restart lets go of the children finished by then; one still ending"
    " (its cancel being carried out) is let go at the parent's next continue, or goes with the parent,"
    " and its end notice is consumed then: at most the children of one run linger"))
async def test_the_end_notice_of_an_earlier_runs_child_arriving_after_the_continue_is_dropped(
    storage: Callable[[], Any], autojump_clock: trio.testing.MockClock,
) -> None:
    """Same run as above. README: "end notices of children no step waits for any more are
    dropped" when an instance continues as new; no step of run 1 can ever take the end notice
    of run 0's child.
    Actual: the notice of a child that ends after the continue's write stays pending in run 1
    ("trioflow.child-ended:P/both/a/kid#1"), read at every wake of the instance, until a later
    continue (if any) consumes it: actors/_continue.py _stale_notices only looks at the
    notices stored at the instant of the continue; a notice for a child of an earlier run that
    arrives later is neither refused nor consumed."""
    pending, _ = await _child_ends_after_its_parent_continued(storage)
    assert [name for name in pending if name.startswith("trioflow.child-ended:")] == [], pending
