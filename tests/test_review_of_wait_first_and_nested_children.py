"""From a re-review of 1a7e247..21f7eb7 (wait first in its lane, build()'s loop check,
execute_workflow and child steps): no bug found; two guards of what those changes made fragile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import engine_portal


def test_guard_a_wait_first_in_a_branch_inside_a_map_item_passes_the_item_across_restarts(tmp_path: Path) -> None:
    """(A guard.) A Step Functions user puts a Parallel, whose branch starts with a Wait, first in a
    Map iterator, and restarts the process twice while the timers run (SQLite). They expect each
    branch to pass its item on, as ASL's Wait does and docs/waiting.md promises ("in a branch what
    the lane running the parallel step had": here the map item's item), and a task after a wait
    first in a map item to see the item in ``ctx.steps``. ``passed_on`` recurses from the branch's
    lane to the item's lane and needs ``ctx.item`` there, rebuilt after each restart."""
    nested = (tf.workflow("nested").map("m", items=lambda ctx: ctx.input, branch=tf.branch("it").parallel(
        "p", branches=[tf.branch("b1").wait("w1", seconds=10).build(), tf.branch("b2").pass_("b2p").build()]).build())
        .build())
    flat = (tf.workflow("flat").map("m", items=lambda ctx: ctx.input, branch=tf.branch("it").wait("w", seconds=10)
                                    .step("s", lambda ctx: [ctx.steps["w"], ctx.item]).build()).build())

    def setup(engine: tf.Engine) -> None:
        engine.register(nested)
        engine.register(flat)

    items: list[Any] = [1, {"k": 2}]
    with engine_portal(setup, adapter=tf.adapters.SQLiteAdapter(str(tmp_path / "w.db"))) as portal:
        ids = [portal.call(lambda e, name=name: e.start(name, items)) for name in ("nested", "flat")]
        portal.advance(3)
        portal.restart(downtime=2)
        portal.advance(3)
        portal.restart()
        portal.advance(10)
        done = [portal.call(lambda e, i=i: e.get_instance(i)) for i in ids]
    assert [d.status for d in done] == ["completed", "completed"]
    assert done[0].output == [{"b1": 1, "b2": 1}, {"b1": {"k": 2}, "b2": {"k": 2}}]
    assert done[1].output == [[1, 1], [{"k": 2}, {"k": 2}]]


async def test_guard_execute_workflow_refuses_children_nested_anywhere_before_anything_runs(
        autojump_clock: trio.testing.MockClock) -> None:
    """(A guard.) ``execute_workflow`` on workflows whose only child step is deep: in a map item's
    branch inside a parallel branch, or reached only through a catch. The README promises the run
    fails "before any step runs" with ``InvalidArgumentError`` naming the step: no step ran, no
    ``on_step_complete`` hook for the first step."""
    ran: list[Any] = []
    deep = (tf.workflow("deep").step("t", lambda ctx: ran.append("t")).parallel("p", branches=[
        tf.branch("b").map("m", items=lambda ctx: [1], branch=tf.branch("bb").child("kid", workflow="x").build()).build()])
        .with_hooks(on_step_complete=lambda n, o, ctx: ran.append(("hook", n))).build())
    caught = (tf.workflow("caught").step("t", lambda ctx: ran.append("t"), catch=[tf.Catch(errors=[tf.ALL], next="kid")])
              .succeed("s").child("kid", workflow="x").build())
    for wf in (deep, caught):
        result = await tf.execute_workflow(None, wf, None)
        assert not result.success and result.error_name == "InvalidArgumentError" and "'kid'" in (result.cause or "")
    assert ran == []
