"""Fan-outs inside map items: a map's branch may hold a parallel step or another map step.

Every item runs the branch at once, so the lanes a fan-out opens in an item are keyed under
the item's own (``"orders/#3/checks/fraud"``, ``"orders/#3/lines/#0"``). What a user relies on:
outputs nested in item order, ``ctx.item`` the innermost item (and a branch of a parallel step
in an item sees that item), ``ctx.steps`` showing the item's own steps and those of the items
around it, a failure confined to its item as the outer map's ``tolerated_failures`` says,
compensation of every completed execution newest first, catches and ``ctx.error`` per item,
waits and child workflows in nested lanes, and crashes at every checkpoint ending as without.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from storages import finish, storage  # noqa: F401  (storage: a fixture on both adapters)
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import explore_crashes, open_test_engine, virtual_wall_clock


class Declined(Exception):
    pass


async def run_one(adapter: Adapter, input: Any, *workflows: tf.WorkflowDefinition,
                  events: list[dict[str, Any]] | None = None) -> tf.WorkflowInstance:
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        if events is not None:
            engine.events.on("workflow.*", events.append)
        for wf in workflows:
            engine.register(wf)
        return await finish(engine, await engine.start(workflows[0].name, input))


def map_of_maps(log: list[str], *, fail_after: bool = False) -> tf.WorkflowDefinition:
    """Orders (each a label and lines) -> each line reserved (compensable) and priced; then,
    with ``fail_after``, a step that fails, so that everything is undone."""
    async def reserve(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(3 - ctx.item_index)  # later lines end first
        log.append(f"reserve {ctx.steps['label']}/{ctx.item}")
        return f"{ctx.steps['label']}/{ctx.item}"

    async def release(ctx: tf.WorkflowContext, held: str) -> None:
        assert held == f"{ctx.steps['label']}/{ctx.item}"  # the item it ran for, compensating too
        log.append(f"release {held}")

    async def boom(ctx: tf.WorkflowContext) -> None:
        raise Declined("card declined")

    line = (tf.branch("line")
            .step("reserve", reserve, release)
            .pass_("price", transform=lambda ctx: {"line": ctx.item, "at": ctx.item_index, "held": ctx.steps["reserve"]})
            .build())
    order = (tf.branch("order")
             .pass_("label", transform=lambda ctx: ctx.item["label"])
             .map("lines", items=lambda ctx: ctx.item["lines"], branch=line)
             .build())
    wf = tf.workflow("orders").map("each", items=lambda ctx: ctx.input, branch=order)
    if fail_after:
        wf = wf.step("charge", boom)
    return wf.build()


ORDERS = [{"label": "A", "lines": ["a1", "a2"]}, {"label": "B", "lines": ["b1"]}, {"label": "C", "lines": []}]


async def test_a_map_in_a_map_item_gives_nested_outputs_in_item_order(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    inst = await run_one(storage(), ORDERS, map_of_maps(log))
    assert inst.status == "completed", inst.error
    assert inst.output == [
        [{"line": "a1", "at": 0, "held": "A/a1"}, {"line": "a2", "at": 1, "held": "A/a2"}],
        [{"line": "b1", "at": 0, "held": "B/b1"}],
        [],
    ]
    assert sorted(log) == ["reserve A/a1", "reserve A/a2", "reserve B/b1"]
    lanes = {r.step_name: set() for r in inst.history}
    for r in inst.history:
        lanes[r.step_name].add(r.id.rpartition("#")[0])
    assert lanes["reserve"] == {"each/#0/lines/#0/reserve", "each/#0/lines/#1/reserve", "each/#1/lines/#0/reserve"}


async def test_a_failure_after_a_map_of_maps_undoes_every_inner_execution_newest_first(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    inst = await run_one(storage(), ORDERS, map_of_maps(log, fail_after=True))
    assert inst.status == "failed" and inst.error_name == "Declined"
    reserved = [entry.split()[1] for entry in log if entry.startswith("reserve")]
    released = [entry.split()[1] for entry in log if entry.startswith("release")]
    assert released == reserved[::-1]  # each once, newest first
    assert Counter(inst.compensated_steps) == {"reserve": 3}


def checked_orders(log: list[str], *, on_error: str = "fail-fast", tolerated: int = 0) -> tf.WorkflowDefinition:
    """Each item runs a parallel step of two checks (fraud fails for "bad"); the address check
    catches its own failure for "odd" and goes on to a step that reads ``ctx.error``."""
    async def fraud(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1 + ctx.item_index)
        if ctx.item == "bad":
            raise Declined(f"fraud on {ctx.item}")
        log.append(f"fraud {ctx.item}")
        return f"fraud-ok {ctx.item}"

    async def address(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(2)
        if ctx.item == "odd":
            raise LookupError("no street")
        return f"address-ok {ctx.item}"

    async def undo_address(ctx: tf.WorkflowContext, out: str) -> None:
        log.append(f"undo {out}")

    checks = [
        tf.branch("fraud").step("fraud-check", fraud).build(),
        tf.branch("address")
        .step("address-check", address, undo_address, catch=[tf.Catch(errors=["LookupError"], next="patch")])
        .pass_("fine", transform=lambda ctx: ctx.steps["address-check"], end=True)
        .pass_("patch", transform=lambda ctx: {"patched": ctx.item, "because": ctx.error})
        .build(),
    ]
    item = tf.branch("order").parallel("checks", branches=checks, on_error=on_error).build()
    return (tf.workflow("checked")
            .map("each", items=lambda ctx: ctx.input, branch=item, tolerated_failures=tolerated)
            .build())


async def test_a_parallel_step_in_map_items_gives_each_item_its_branches(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    inst = await run_one(storage(), ["x", "odd", "y"], checked_orders(log))
    assert inst.status == "completed", inst.error
    assert inst.output == [
        {"fraud": "fraud-ok x", "address": "address-ok x"},
        {"fraud": "fraud-ok odd", "address": {"patched": "odd", "because": {"error": "LookupError", "cause": "no street"}}},
        {"fraud": "fraud-ok y", "address": "address-ok y"},
    ]
    assert sorted(log) == ["fraud odd", "fraud x", "fraud y"]


async def test_a_failed_branch_fails_its_item_alone_as_tolerated(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    inst = await run_one(storage(), ["x", "bad", "y"], checked_orders(log, tolerated=1))
    assert inst.status == "completed", inst.error
    assert inst.output[0] == {"fraud": "fraud-ok x", "address": "address-ok x"}
    assert inst.output[1] == {"error": "Declined", "cause": "fraud on bad"}
    assert inst.output[2] == {"fraud": "fraud-ok y", "address": "address-ok y"}
    # The failed item's address check was cancelled by its own fail-fast (or undone): no other item's was.
    assert "undo address-ok x" not in log and "undo address-ok y" not in log


async def test_a_failed_branch_beyond_tolerance_fails_the_map_and_undoes_the_other_items(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    inst = await run_one(storage(), ["x", "y", "bad"], checked_orders(log, on_error="wait-all"))
    assert inst.status == "failed"
    assert inst.failed_step == "checks" and "item 2" in str(inst.error) and "fraud on bad" in str(inst.error)
    assert sorted(entry for entry in log if entry.startswith("undo")) == [
        "undo address-ok bad", "undo address-ok x", "undo address-ok y"]


async def test_waits_in_branches_of_map_items_resume_after_a_restart(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A day's timer in a branch of every item: the instance waits in storage, a new engine
    takes it up, and each item goes on once its own timer fired."""
    wf = (tf.workflow("reminders")
          .map("each", items=lambda ctx: ctx.input, branch=tf.branch("one").parallel("both", branches=[
              tf.branch("remind").wait("a-day", seconds=86_400).pass_("sent", transform=lambda ctx: f"remind {ctx.item}").build(),
              tf.branch("note").pass_("noted", transform=lambda ctx: f"note {ctx.item_index}").build(),
          ]).build())
          .build())
    clock = virtual_wall_clock()
    path = tmp_path / "nested.db"
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(wf)
        iid = await engine.start("reminders", ["p", "q"])
        await trio.sleep(3_600)
        waiting = await engine.get_instance(iid)
        assert waiting is not None and waiting.status == "running"
    await trio.sleep(86_400)
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        engine.register(wf)
        inst = await finish(engine, iid)
    assert inst.output == [{"remind": "remind p", "note": "note 0"}, {"remind": "remind q", "note": "note 1"}]


async def test_a_child_workflow_per_inner_item_has_an_id_under_both_items(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    kid = tf.workflow("kid").pass_("echo", transform=lambda ctx: f"kid {ctx.input}").build()
    wf = (tf.workflow("family")
          .map("outer", items=lambda ctx: ctx.input, branch=tf.branch("o").map(
              "inner", items=lambda ctx: ctx.item, branch=tf.branch("i").child(
                  "bill", workflow="kid", input=lambda ctx: ctx.item).build()).build())
          .build())
    inst = await run_one(storage(), [["a", "b"], ["c"]], wf, kid)
    assert inst.status == "completed", inst.error
    assert inst.output == [["kid a", "kid b"], ["kid c"]]
    assert sorted(inst.children) == sorted(f"{inst.id}/outer/#{o}/inner/#{i}/bill#1" for o, i in ((0, 0), (0, 1), (1, 0)))


async def test_progress_events_of_an_inner_map_count_its_own_items_and_name_the_lane_it_runs_in(
        autojump_clock: trio.testing.MockClock) -> None:
    events: list[dict[str, Any]] = []
    await run_one(MemoryAdapter(), ORDERS, map_of_maps([]), events=events)
    inner = [(e["lane"], e["done"], e["total"]) for e in events
             if e["event"] == "workflow.map.progress" and e["step_name"] == "lines"]
    assert sorted(inner) == [("each/#0", 1, 2), ("each/#0", 2, 2), ("each/#1", 1, 1)]
    outer = [e for e in events if e["event"] == "workflow.map.progress" and e["step_name"] == "each"]
    assert len(outer) == 3 and all("lane" not in e for e in outer)  # (the main line's: no lane)


async def test_step_events_name_the_lane_of_the_execution_they_are_about(
        autojump_clock: trio.testing.MockClock) -> None:
    """The same step runs in every item at once: an event's ``lane`` tells them apart."""
    events: list[dict[str, Any]] = []
    async with open_test_engine(clock=virtual_wall_clock()) as engine:
        engine.events.on("workflow.*", events.append)
        engine.register(map_of_maps([], fail_after=True))
        await finish(engine, await engine.start("orders", ORDERS))
    def lanes(kind: str, step: str) -> list[str | None]:
        return sorted(e.get("lane") for e in events if e["event"] == kind and e["step_name"] == step)

    reserved = ["each/#0/lines/#0", "each/#0/lines/#1", "each/#1/lines/#0"]
    assert lanes("workflow.step.started", "reserve") == reserved
    assert lanes("workflow.step.completed", "reserve") == reserved
    assert lanes("workflow.step.compensated", "reserve") == reserved
    assert lanes("workflow.step.completed", "label") == ["each/#0", "each/#1", "each/#2"]
    assert lanes("workflow.step.failed", "charge") == [None]  # the main line's


@pytest.mark.parametrize("adapter", ["memory", "sqlite"])
async def test_crashes_at_every_checkpoint_of_a_map_of_maps_end_as_without(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, adapter: str) -> None:
    runs = iter(range(10**6))

    def fresh() -> Adapter:
        return MemoryAdapter() if adapter == "memory" else SQLiteAdapter(tmp_path / f"run{next(runs)}.db")

    orders = [{"label": "A", "lines": ["a1", "a2"]}, {"label": "B", "lines": ["b1"]}]
    report = await explore_crashes(map_of_maps([], fail_after=True), orders, adapter_factory=fresh)
    assert report.baseline.status == "failed" and Counter(report.baseline.compensated_steps) == {"reserve": 3}
    assert report.writes >= 8 and report.divergent == ()


async def test_crashes_at_every_checkpoint_of_parallel_steps_in_map_items_end_as_without(
        autojump_clock: trio.testing.MockClock) -> None:
    report = await explore_crashes(checked_orders([], tolerated=1), ["x", "bad", "odd"])
    assert report.baseline.status == "completed"
    assert report.baseline.output[1] == {"error": "Declined", "cause": "fraud on bad"}
    assert report.writes >= 8 and report.divergent == ()


def looping_items(log: list[str]) -> tf.WorkflowDefinition:
    """Each item runs a parallel step twice (a choice loops back once, per item, at its own
    pace), and the whole map runs twice (a loop on the main line): every execution starts
    afresh, sees only its own item's outputs, and is undone once when the last step fails."""
    async def take(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1 + 2 * ctx.item_index)
        round_ = ctx.steps.get("count", 0)
        log.append(f"take {ctx.item}{round_}")
        return f"{ctx.item}{round_}"

    async def give(ctx: tf.WorkflowContext, out: str) -> None:
        log.append(f"give {out}")

    async def boom(ctx: tf.WorkflowContext) -> None:
        raise Declined("at the end")

    item = (tf.branch("item")
            .parallel("pair", branches=[
                tf.branch("left").step("take", take, give).build(),
                tf.branch("right").pass_("mark", transform=lambda ctx: ctx.item_index).build()])
            .pass_("count", transform=lambda ctx: ctx.steps.get("count", 0) + 1)
            .choice("again", choices=[tf.when(lambda ctx: ctx.steps["count"] < 2, next="pair")], default="done")
            .pass_("done", transform=lambda ctx: ctx.steps["pair"])
            .build())
    return (tf.workflow("loops")
            .map("each", items=lambda ctx: ctx.input, branch=item)
            .pass_("rounds", transform=lambda ctx: ctx.steps.get("rounds", 0) + 1)
            .choice("more", choices=[tf.when(lambda ctx: ctx.steps["rounds"] < 2, next="each")], default="end")
            .step("end", boom)
            .build())


async def test_loops_in_and_around_map_items_run_nested_fan_outs_afresh_and_undo_each_execution(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    inst = await run_one(storage(), ["p", "q"], looping_items(log))
    assert inst.status == "failed" and inst.error_name == "Declined"
    takes = [entry.split()[1] for entry in log if entry.startswith("take")]
    assert sorted(takes) == ["p0", "p0", "p1", "p1", "q0", "q0", "q1", "q1"]  # two rounds of the map, two per item
    gives = [entry.split()[1] for entry in log if entry.startswith("give")]
    assert gives == takes[::-1]


async def test_crashes_at_every_checkpoint_of_loops_in_map_items_end_as_without(
        autojump_clock: trio.testing.MockClock) -> None:
    report = await explore_crashes(looping_items([]), ["p", "q"])
    assert report.baseline.status == "failed" and Counter(report.baseline.compensated_steps) == {"take": 8}
    assert report.divergent == ()


# -- properties over generated nested maps -------------------------------------------------------

LINES = st.lists(st.tuples(st.sampled_from([0.0, 1.0, 2.5]), st.booleans()), max_size=3)


def scripted_orders(log: list[tuple[str, int, int]], inner_concurrency: int | None,
                    fail_after: bool) -> tf.WorkflowDefinition:
    """Orders of lines ``(seconds, fails)``: each line is reserved (compensable) after that
    long, or fails; a failed line fails its order, and the order the run."""
    async def reserve(ctx: tf.WorkflowContext) -> list[int]:
        seconds, fails = ctx.item["line"]
        await trio.sleep(seconds)
        if fails:
            raise Declined(f"line {ctx.item['order']}.{ctx.item_index}")
        log.append(("reserve", ctx.item["order"], ctx.item_index))
        return [ctx.item["order"], ctx.item_index]

    async def release(ctx: tf.WorkflowContext, held: list[int]) -> None:
        assert held == [ctx.item["order"], ctx.item_index]
        log.append(("release", *held))

    async def boom(ctx: tf.WorkflowContext) -> None:
        raise Declined("after")

    line = tf.branch("line").step("reserve", reserve, release).build()
    order = (tf.branch("order")
             .map("lines", items=lambda ctx: [{"order": ctx.item_index, "line": x} for x in ctx.item],
                  branch=line, max_concurrency=inner_concurrency)
             .build())
    wf = tf.workflow("scripted").map("orders", items=lambda ctx: ctx.input, branch=order, on_error="wait-all")
    return (wf.step("after", boom) if fail_after else wf).build()


@settings(max_examples=40, deadline=None)
@given(orders=st.lists(LINES, max_size=4), inner_concurrency=st.sampled_from([None, 1, 2]), fail_after=st.booleans())
def test_generated_maps_of_maps_give_nested_outputs_or_undo_every_reservation_once_newest_first(
        orders: list[list[tuple[float, bool]]], inner_concurrency: int | None, fail_after: bool) -> None:
    async def main() -> None:
        log: list[tuple[str, int, int]] = []
        wf = scripted_orders(log, inner_concurrency, fail_after)
        inst = await run_one(MemoryAdapter(), [[list(x) for x in lines] for lines in orders], wf)
        reserved = [entry[1:] for entry in log if entry[0] == "reserve"]
        released = [entry[1:] for entry in log if entry[0] == "release"]
        failing = any(fails for lines in orders for _, fails in lines)
        if failing or fail_after:
            assert inst.status == "failed"
            assert released == reserved[::-1]
        else:
            assert inst.status == "completed", inst.error
            assert inst.output == [[[o, i] for i in range(len(lines))] for o, lines in enumerate(orders)]
            assert released == []

    tf.testing.run(main)


@settings(max_examples=6, deadline=None)
@given(orders=st.lists(st.lists(st.tuples(st.sampled_from([0.0, 1.0]), st.booleans()), min_size=1, max_size=2),
                       min_size=1, max_size=2),
       inner_concurrency=st.sampled_from([None, 1]))
def test_crash_exploration_of_generated_maps_of_maps_finds_no_divergence(
        orders: list[list[tuple[float, bool]]], inner_concurrency: int | None) -> None:
    async def main() -> None:
        report = await explore_crashes(scripted_orders([], inner_concurrency, fail_after=False),
                                       [[list(x) for x in lines] for lines in orders])
        assert report.divergent == ()

    tf.testing.run(main)


@pytest.mark.parametrize("waits_on", ["timer", "signal"])
async def test_a_wait_that_began_while_a_failed_branch_held_the_instance_rests_once_its_parallel_ended(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], waits_on: str) -> None:
    """A failed branch keeps the instance in memory until its parallel step ends. Here a catch
    takes that failure while a sibling lane already waits a day: the wait rests from then on,
    and the instance leaves memory (before, it held a task and a slot the whole day)."""
    async def fails(ctx: tf.WorkflowContext) -> None:
        raise Declined("no")

    waiting = (tf.branch("later").wait("a-day", seconds=86_400) if waits_on == "timer"
               else tf.branch("later").receive("a-day", signal="go"))
    wf = (tf.workflow("held")
          .parallel("outer", branches=[
              tf.branch("checks").parallel("inner", branches=[
                  tf.branch("bad").step("fails", fails).build(),
                  tf.branch("slow").wait("a-moment", seconds=5).build()],
                  catch=[tf.Catch(errors=["Declined"], next="noted")])
              .succeed("fine").pass_("noted", result="caught").build(),
              waiting.pass_("done", result="done").build()])
          .build())
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("held", None)
        await trio.sleep(600)
        parked = iid not in engine._live
        if waits_on == "signal":
            await engine.signal(iid, "go")
        inst = await finish(engine, iid)
    assert parked, "every lane left waits a day, yet the instance stays in memory"
    assert (inst.status, inst.output) == ("completed", {"checks": "caught", "later": "done"})


async def test_parallel_steps_that_end_without_failure_wake_no_waiting_lane(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a failed branch no longer holds the instance, the waits it kept from resting are
    woken once to look again; a parallel step ending later with no failed branch wakes none
    (every item's did, after item 0's failure: wake-ups growing with the items squared)."""
    from trioflow.actors import _run

    wakes: list[str] = []
    ended = _run.Run.parallel_ended

    def counted(self: Any, place: str) -> None:
        waiting = len(self.arrived or ())
        ended(self, place)
        if waiting and not self.arrived:
            wakes.append(place)

    monkeypatch.setattr(_run.Run, "parallel_ended", counted)

    async def checked(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(1 + ctx.item_index)
        if ctx.item_index == 0:
            raise Declined("item 0")
        return 1

    item = (tf.branch("i")
            .parallel("p", branches=[tf.branch("a").step("check", checked).build(),
                                     tf.branch("b").pass_("noted", result=2).build()])
            .receive("go", signal="go").build())
    wf = tf.workflow("herd").map("m", items=lambda ctx: ctx.input, branch=item, tolerated_failures=1).build()
    async with open_test_engine(clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("herd", list(range(20)))
        await trio.sleep(100)
        await engine.cancel(iid)
    assert len(wakes) <= 1, wakes
