"""Map steps and child workflows under what an adversarial review tried (SPEC §14,
docs/fanout.md; a test each): a caught fail-fast parallel step and the lanes nested in the
branches it cancelled, a parent that no longer fits its definition, catching a map's failure by
its item's child's error, and a child compensated under its parent's compensation timeout."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


class Declined(Exception):
    pass


async def _boom_after_one_second(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(1)
    raise Declined("boom")


# -- a caught fail-fast parallel step and what its cancelled branches left behind ----------------


async def test_a_caught_parallel_failure_cancels_the_children_of_a_map_in_its_cancelled_branch(
        autojump_clock: trio.testing.MockClock) -> None:
    """docs/fanout.md (Cancel): "so does a fail-fast map or parallel step for the children of
    the items or branches it cancels". A fail-fast parallel step whose branch B fails cancels
    branch A, which runs a map whose items each wait on a child. With a catch on the parallel
    step, the parent goes on and completes, but the map items' children are never cancelled:
    they stay `running` after the parent completed, then complete (their work never undone,
    since the child step that waited on them never completed). Expected: they end `cancelled`
    (or, if one completed all the same, `compensated`), as the children of a directly cancelled
    branch or of a fail-fast map's cancelled items do. (The same happens with a child step in a
    branch of a parallel nested inside the cancelled branch.)
    Cause: actors/_lane.py run_parallel calls cancel_children only for its own branch lanes,
    not for the lanes nested in them (a map's item lanes, a nested parallel's branch lanes);
    the map's own cancel_children is never reached since its nursery is cancelled."""
    done: list[Any] = []

    async def slow(ctx: tf.WorkflowContext) -> Any:
        await trio.sleep(100)
        done.append(ctx.input)
        return ctx.input

    leaf = tf.workflow("leaf").step("slow", slow).build()
    parent = (tf.workflow("p")
              .parallel("par", branches=[
                  tf.branch("A").map("m", items=lambda ctx: [1, 2, 3],
                                     branch=tf.branch("mb").child("c", workflow="leaf").build()).build(),
                  tf.branch("B").step("boom", _boom_after_one_second).build()],
                  catch=[tf.Catch(errors=tf.ALL, next="recover")])
              .succeed("ok")
              .pass_("recover", result="recovered")
              .build())
    async with open_test_engine(clock=virtual_wall_clock()) as engine:
        engine.register(parent)
        engine.register(leaf)
        inst = await engine.wait(await engine.start("p"))
        assert (inst.status, inst.output) == ("completed", "recovered")
        assert len(inst.children) == 3
        await trio.sleep(200)  # long enough for any child left running to complete
        statuses = {i.id: i.status for i in await engine.get_instances("leaf")}
    assert done == []  # the children's work was cancelled, not run to its end
    assert set(statuses.values()) <= {"cancelled", "compensated"}, statuses


async def test_a_map_in_a_parallel_branch_entered_again_after_a_caught_failure_runs_each_item_once(
        autojump_clock: trio.testing.MockClock) -> None:
    """A parallel step (fail-fast, with a catch) whose branch A maps over 3 items is cancelled
    by branch B's failure in the first round; the catch loops back (as a retry loop through a
    pass/choice does) and the second round succeeds. In the second round every item's job runs
    TWICE (`w#2` and `w#3` for each item): the item lanes of the cancelled first round were
    left in the instance's header, and the second map execution takes them for items a resume
    goes on with, while also starting every item afresh. A side-effecting item job (a charge)
    is run twice per item. Expected: each item of the second map execution runs once.
    Cause: runtime/_decide.py complete_step (ParallelStep) drops only the branch lanes, not
    the item lanes of a map inside a branch; actors/_map.py run_map then adopts them through
    running_items() as resumed items. Depending on trio's scheduling the same stale lanes can
    instead crash the instance ("internal error: KeyError: 'm/#0'"), so the run may also end
    `failed`; either way it is this bug."""
    calls: Counter[tuple[int, int]] = Counter()

    async def work(ctx: tf.WorkflowContext) -> Any:
        calls[(ctx.get("round") or 0, ctx.item_index)] += 1
        await trio.sleep(10)
        return ctx.item

    async def boom_first_round(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1)
        if not ctx.get("round"):
            raise Declined("first round fails")
        return "ok"

    parent = (tf.workflow("p")
              .parallel("par", branches=[
                  tf.branch("A").map("m", items=lambda ctx: [1, 2, 3],
                                     branch=tf.branch("mb").step("w", work).build()).build(),
                  tf.branch("B").step("boom", boom_first_round).build()],
                  catch=[tf.Catch(errors=tf.ALL, next="again")], next="done")
              .pass_("again", transform=lambda ctx: ctx.set("round", 1), next="par")
              .pass_("done", transform=lambda ctx: ctx.steps["par"])
              .build())
    async with open_test_engine(clock=virtual_wall_clock()) as engine:
        engine.register(parent)
        inst = await engine.wait(await engine.start("p"))
    assert (inst.status, inst.output) == ("completed", {"A": [1, 2, 3], "B": "ok"}), inst.error
    assert {k: n for k, n in calls.items() if k[0] == 1} == {(1, 0): 1, (1, 1): 1, (1, 2): 1}


# -- a parent that fails on a changed definition --------------------------------------------------


async def test_a_parent_failing_on_a_changed_definition_does_not_leave_its_child_running_or_done(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """README (Registration): an instance that no longer fits the registered definition "fails
    with DefinitionMismatchError and compensates what it can"; docs/fanout.md (Cancel): "A
    parent that is cancelled, times out or fails cancels the children it waits on ... A child
    that completes all the same ... is compensated as a unit then, since the step that waited
    on it never completes." Here a parent whose map items wait on children is resumed by an
    engine whose release renamed the item's child step: the parent fails at once with
    DefinitionMismatchError, but its children are neither cancelled nor compensated: they stay
    `running`, then complete, and their completed work is never undone.
    Cause: runtime/_engine.py _resume_one replaces the lanes with `{MAIN: Lane(step=None)}`
    (dropping what they waited on) and the run goes straight to compensation without
    cancel_children (actors/_instance.py _end_badly is never reached)."""
    gate = trio.Event()
    undone: list[Any] = []

    async def work(ctx: tf.WorkflowContext) -> Any:
        await gate.wait()
        return ctx.input

    async def undo(ctx: tf.WorkflowContext, result: Any) -> None:
        undone.append(result)

    child = tf.workflow("child").step("work", work, undo).build()

    def parent(child_step: str) -> tf.WorkflowDefinition:
        return (tf.workflow("p")
                .map("m", items=lambda ctx: [1, 2],
                     branch=tf.branch("b").child(child_step, workflow="child").build())
                .build())

    clock = virtual_wall_clock()
    path = tmp_path / "flows.db"
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(parent("bill"))
        engine.register(child)
        iid = await engine.start("p")
        await trio.sleep(5)
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(parent("bill-v2"))  # the new release renamed the child step
        engine.register(child)
        inst = await engine.wait(iid)
        assert (inst.status, inst.error_name) == ("failed", "DefinitionMismatchError")
        gate.set()
        await trio.sleep(10)
        statuses = {i.id: i.status for i in await engine.get_instances("child")}
    assert len(statuses) == 2
    # cancelled while running, or compensated as a unit if it completed: never left running/completed
    assert set(statuses.values()) <= {"cancelled", "compensated"}, statuses
    assert sorted(undone) == [] or sorted(undone) == [1, 2]


# -- catching a map or parallel step's failure caused by a child ----------------------------------


@pytest.mark.parametrize("errors", [["ChildWorkflowError"], [tf.ChildWorkflowError]])
async def test_a_catch_for_child_workflow_error_on_a_fail_fast_map_matches_an_item_whose_child_failed(
        autojump_clock: trio.testing.MockClock, errors: list[Any]) -> None:
    """docs/fanout.md: a fail-fast map with nothing tolerated "fails as its item did", and a
    child step's failure is caught by the child's own error "and so does one for
    ChildWorkflowError (the class or the name)". A map whose item's child fails is caught by
    `"Declined"` (the child's error) and by `"ItemError"`, but NOT by `ChildWorkflowError`,
    name or class, although that is exactly what its item failed with: a user who routes
    "any child of the batch failed" with `catch=[tf.Catch(errors=[tf.ChildWorkflowError])]`
    sees the whole workflow fail instead. (Same for a fail-fast parallel step whose branch's
    child failed.)
    Cause: runtime/_matching.py matches looks at the outermost error (ItemError/BranchError)
    and the root error (the child's RecordedError) only, skipping the ChildWorkflowError
    wrapper in between."""
    async def pay(ctx: tf.WorkflowContext) -> int:
        if ctx.input >= 1:
            raise Declined("no")
        return 1

    kid = tf.workflow("kid").step("pay", pay).build()
    parent = (tf.workflow("p")
              .map("m", items=lambda ctx: [0, 1, 2], max_concurrency=1,
                   branch=tf.branch("b").child("c", workflow="kid").build(),
                   catch=[tf.Catch(errors=errors, next="caught")])
              .succeed("fine")
              .pass_("caught", transform=lambda ctx: ctx.error)
              .build())
    async with open_test_engine(clock=virtual_wall_clock()) as engine:
        engine.register(parent)
        engine.register(kid)
        inst = await engine.wait(await engine.start("p"))
    assert (inst.status, inst.output) == ("completed", {"error": "Declined", "cause": "no"})


# -- a child compensated as a unit, under its parent's compensation timeout ----------------------


async def _undo_child_under_a_parent_bound(
        seconds: dict[str, float]) -> tuple[tf.WorkflowInstance, tf.WorkflowInstance | None, list[str]]:
    """A parent with ``with_compensation_timeout(5)`` fails after its child (steps a, b, c, each
    compensation taking ``seconds[step]``) completed: the parent, the child, and what the
    child's compensations undid, in order."""
    undone: list[str] = []

    async def do(ctx: tf.WorkflowContext) -> str:
        return tf.current_step().step_name

    async def undo(ctx: tf.WorkflowContext, result: str) -> None:
        await trio.sleep(seconds[result])
        undone.append(result)

    async def boom(ctx: tf.WorkflowContext) -> None:
        raise Declined("late")

    child = tf.workflow("child").step("a", do, undo).step("b", do, undo).step("c", do, undo).build()
    parent = (tf.workflow("p").child("k", workflow="child").step("boom", boom)
              .with_compensation_timeout(5).build())
    async with open_test_engine(clock=virtual_wall_clock()) as engine:
        engine.register(parent)
        engine.register(child)
        inst = await engine.wait(await engine.start("p"))
        return inst, await engine.get_instance(inst.children[0]), undone


async def test_a_parents_compensation_timeout_bounds_each_of_a_childs_compensations_not_its_whole_undo(
        autojump_clock: trio.testing.MockClock) -> None:
    """The parent's ``with_compensation_timeout(5)`` bounded a child's whole undo (three
    compensations of 3 s each): it was cut after the first, and the child was left ``completed``
    for good with one step undone. The bound applies to each of the child's compensations (as
    to each of the parent's own): all three run, and the child ends ``compensated``."""
    inst, kid, undone = await _undo_child_under_a_parent_bound({"a": 3, "b": 3, "c": 3})
    assert inst.status == "failed" and inst.compensated_steps == ("k",) and not inst.compensation_errors
    assert undone == ["c", "b", "a"]
    assert kid is not None and (kid.status, kid.compensated_steps) == ("compensated", ("c", "b", "a"))


async def test_a_childs_compensation_longer_than_its_parents_bound_fails_alone_and_the_child_still_ends(
        autojump_clock: trio.testing.MockClock) -> None:
    """A child compensation that outlasts the parent's bound is cut at it and recorded as the
    child's compensation error; the child's other compensations run, it ends ``compensated``,
    and the parent reports the child's failure as a ``ChildCompensationError``."""
    inst, kid, undone = await _undo_child_under_a_parent_bound({"a": 1, "b": 8, "c": 1})
    assert undone == ["c", "a"]
    assert kid is not None and kid.status == "compensated"
    assert "CompensationTimeoutError" in kid.compensation_errors["b"]
    assert "ChildCompensationError" in inst.compensation_errors["k"]
