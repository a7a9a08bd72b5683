"""Map steps (SPEC §14, issue 15): a branch run once per item of a list known at run time.

What a user relies on: outputs in item order whatever order items end in, ``ctx.item`` and
``ctx.item_index``, at most ``max_concurrency`` items at once, tolerated failures (a count or a
fraction) and their error slots, fail-fast and wait-all, catch, compensation of every completed
item step newest first (with the item in ``ctx``), a resume that reruns only unfinished items
and never works the item list out again, a header that stays small however many items ran,
loops, progress events, and what ``build()`` refuses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
from storages import storage  # noqa: F401  (a fixture: tests taking it run on both adapters)
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


class Declined(Exception):
    pass


async def run_one(wf: tf.WorkflowDefinition, input: Any, adapter: Adapter,
                  events: list[dict[str, Any]] | None = None) -> tf.WorkflowInstance:
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        if events is not None:
            engine.events.on("workflow.*", events.append)
        engine.register(wf)
        return await engine.wait(await engine.start(wf.name, input))


def mapping(branch: tf.Branch, **options: Any) -> tf.WorkflowDefinition:
    return (tf.workflow("batch")
            .map("each", items=lambda ctx: ctx.input, branch=branch, **options)
            .build())


# -- outputs, items, concurrency ----------------------------------------------------------------


async def test_outputs_are_in_item_order_whatever_order_items_end_in(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    async def slow_first(ctx: tf.WorkflowContext) -> Any:
        await trio.sleep(10 - ctx.item_index)  # item 0 ends last
        return {"item": ctx.item, "index": ctx.item_index}

    wf = mapping(tf.branch("b").step("work", slow_first).pass_("shape", transform=lambda ctx: ctx.steps["work"]).build())
    inst = await run_one(wf, ["a", "b", "c", "d"], storage())
    assert inst.status == "completed"
    assert inst.output == [{"item": x, "index": i} for i, x in enumerate("abcd")]


async def test_no_more_than_max_concurrency_items_run_at_once(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    running = 0
    most = 0

    async def work(ctx: tf.WorkflowContext) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await trio.sleep(1 + ctx.item % 3)
        running -= 1
        return int(ctx.item)

    wf = mapping(tf.branch("b").step("work", work).build(), max_concurrency=3)
    inst = await run_one(wf, list(range(20)), storage())
    assert inst.output == list(range(20))
    assert most == 3


async def test_an_empty_list_gives_an_empty_output(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    wf = mapping(tf.branch("b").step("work", lambda ctx: 1).build())
    inst = await run_one(wf, [], storage())
    assert (inst.status, inst.output) == ("completed", [])


async def test_each_item_execution_has_its_own_id_and_the_map_one_record_of_its_start(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    async def work(ctx: tf.WorkflowContext) -> Any:
        return ctx.item

    wf = (tf.workflow("ids").map("each", items=lambda ctx: ["x", "y"], branch=tf.branch("b").step("work", work).build())
          .step("after", lambda ctx: ctx.steps["each"]).build())
    inst = await run_one(wf, None, storage())
    ids = [(r.id, r.status) for r in inst.history]
    assert ids[0] == ("each#1", "started")
    assert sorted(ids[1:3]) == [("each/#0/work#1", "completed"), ("each/#1/work#1", "completed")]
    assert ids[3:] == [("each#1", "completed"), ("after#1", "completed")]
    assert inst.history[0].input == ["x", "y"]
    assert inst.output == ["x", "y"]
    assert inst.step_results["each"].output == ["x", "y"]


async def test_an_items_ctx_steps_are_its_own_whatever_order_items_interleave_in(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # Item a ends "r" first and reads it last; item b ends "r" last and reads it first: an
    # instance-wide "newest r" would hand both items b's output.
    async def r(ctx: tf.WorkflowContext) -> str:
        await trio.sleep({"a": 1, "b": 5}[ctx.item])
        return f"r-{ctx.item}"

    async def p(ctx: tf.WorkflowContext) -> Any:
        await trio.sleep({"a": 10, "b": 1}[ctx.item])
        return [ctx.steps["r"], sorted(ctx.steps), "r" in ctx.steps, ctx.steps.get("before")]

    wf = (tf.workflow("batch").pass_("before", result="main")
          .map("each", items=lambda ctx: ["a", "b"], branch=tf.branch("b").step("r", r).step("p", p).build())
          .pass_("after", transform=lambda ctx: ["r" in ctx.steps, ctx.steps["each"][1][0]])
          .build())
    inst = await run_one(wf, None, storage())
    assert inst.status == "completed"
    # Each item sees its own "r" and the main line's steps; the main line sees the map's
    # output, not some item's step.
    assert inst.history[-2].output == [["r-a", ["before", "r"], True, "main"], ["r-b", ["before", "r"], True, "main"]]
    assert inst.output == [False, "r-b"]


async def test_an_items_ctx_steps_are_its_own_after_a_restart(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    gate = trio.Event()

    async def r(ctx: tf.WorkflowContext) -> str:
        return f"r-{ctx.item}"

    async def p(ctx: tf.WorkflowContext) -> Any:
        if ctx.item != "b":
            await gate.wait()  # a and c are taken up by the next engine, b's "r" the newest
        return ctx.steps["r"]

    wf = mapping(tf.branch("b").step("r", r).step("p", p).build())
    clock = virtual_wall_clock()
    async with open_test_engine(adapter=SQLiteAdapter(tmp_path / "flows.db"), clock=clock) as engine:
        engine.register(wf)
        iid = await engine.start("batch", ["a", "b", "c"])
        await trio.sleep(10)
    gate.set()
    async with open_test_engine(adapter=SQLiteAdapter(tmp_path / "flows.db"), clock=clock) as engine:
        engine.register(wf)
        inst = await engine.wait(iid)
    assert inst.output == ["r-a", "r-b", "r-c"]


async def test_an_item_of_a_map_run_again_by_a_loop_sees_nothing_of_the_earlier_run(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # Item lanes are keyed by the map and the index: item 0 of the second run shares its key
    # with item 0 of the first, and must not see that one's outputs nor its caught error.
    runs = Counter[str]()

    async def tag(ctx: tf.WorkflowContext) -> str:
        if ctx.item == "A":
            raise Declined("A is bad")
        return f"tag-{ctx.item}"

    def items(ctx: tf.WorkflowContext) -> list[str]:
        runs["map"] += 1
        return ["A", "B"] if runs["map"] == 1 else ["C"]

    look = lambda ctx: {"item": ctx.item, "tag": ctx.steps.get("tag"), "error": ctx.error}  # noqa: E731
    wf = (tf.workflow("w")
          .map("m", items=items, branch=(
              tf.branch("b").pass_("look", transform=look)
              .step("tag", tag, catch=[tf.Catch(errors=tf.ALL, next="fallback")])
              .succeed("ok", output=lambda ctx: ctx.steps["look"])
              .pass_("fallback", transform=lambda ctx: ctx.steps["look"]).build()))
          .choice("again", choices=[tf.when(lambda ctx: runs["map"] < 2, next="m")], default="done")
          .pass_("done", transform=lambda ctx: ctx.steps["m"])
          .build())
    inst = await run_one(wf, None, storage())
    assert inst.status == "completed", inst.error
    assert inst.output == [{"item": "C", "tag": None, "error": None}]


# -- failures -------------------------------------------------------------------------------------


def failing_on(bad: set[int], calls: Counter[int] | None = None) -> Any:
    async def work(ctx: tf.WorkflowContext) -> Any:
        if calls is not None:
            calls[ctx.item_index] += 1
        await trio.sleep(1)
        if ctx.item in bad:
            raise Declined(f"card {ctx.item} declined")
        return ctx.item
    return work


@pytest.mark.parametrize("on_error", ["fail-fast", "wait-all"])
async def test_tolerated_failures_leave_their_error_in_their_slot(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], on_error: str) -> None:
    wf = mapping(tf.branch("b").step("work", failing_on({1, 3})).build(), tolerated_failures=2, on_error=on_error)
    inst = await run_one(wf, [0, 1, 2, 3, 4], storage())
    assert inst.status == "completed"
    error = {"error": "Declined", "cause": "card 1 declined"}
    assert inst.output == [0, error, 2, {"error": "Declined", "cause": "card 3 declined"}, 4]


@pytest.mark.parametrize(("tolerated", "failures", "completes"), [
    (0, 0, True), (0, 1, False), (2, 2, True), (2, 3, False),
    (0.2, 2, True), (0.2, 3, False), (0.25, 2, True), (1.0, 10, True), (0.0, 1, False),
])
async def test_tolerated_failures_is_a_count_or_a_fraction_of_the_items(
        autojump_clock: trio.testing.MockClock, tolerated: float, failures: int, completes: bool) -> None:
    wf = mapping(tf.branch("b").step("work", failing_on(set(range(failures)))).build(),
                 tolerated_failures=tolerated, on_error="wait-all")
    inst = await run_one(wf, list(range(10)), MemoryAdapter())
    assert (inst.status == "completed") is completes
    if not completes:
        assert inst.error_name == "MapError"
        assert f"{failures} of 10 items failed" in (inst.cause or "")


async def test_fail_fast_cancels_the_running_items_and_fails_as_the_item_did(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    started: list[int] = []

    async def work(ctx: tf.WorkflowContext) -> Any:
        started.append(ctx.item_index)
        if ctx.item == 2:
            await trio.sleep(1)
            raise Declined("no")
        await trio.sleep(100)
        return ctx.item

    wf = mapping(tf.branch("b").step("work", work).build(), max_concurrency=4)
    inst = await run_one(wf, list(range(10)), storage())
    assert inst.status == "failed"
    assert (inst.error_name, inst.cause, inst.failed_step) == ("Declined", "no", "work")
    assert sorted(started) == [0, 1, 2, 3]  # nothing started after the failure
    assert not any(r.step_name == "work" and r.status == "completed" for r in inst.history)


async def test_wait_all_runs_every_item_then_names_every_failure(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    calls: Counter[int] = Counter()
    wf = mapping(tf.branch("b").step("work", failing_on({1, 4}, calls)).build(), on_error="wait-all")
    inst = await run_one(wf, list(range(6)), storage())
    assert inst.status == "failed"
    assert set(calls) == set(range(6))
    assert inst.error_name == "MapError"
    assert inst.cause == ("map step 'each': 2 of 6 items failed, 0 tolerated: item 1 failed with Declined: card 1"
                          " declined; item 4 failed with Declined: card 4 declined")


async def test_a_catch_on_the_map_routes_its_failure(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    wf = (tf.workflow("caught")
          .map("each", items=lambda ctx: [1, 2, 3], branch=tf.branch("b").step("work", failing_on({2})).build(),
               catch=[tf.Catch(errors=[Declined], next="recover", result="why")])
          .succeed("done", output="unreachable")
          .pass_("recover", transform=lambda ctx: {"error": ctx.error, "why": ctx.data["why"]})
          .build())
    inst = await run_one(wf, None, storage())
    assert inst.status == "completed"
    assert inst.output == {"error": {"error": "Declined", "cause": "card 2 declined"},
                           "why": {"error": "Declined", "cause": "card 2 declined"}}
    assert inst.step_results["each"].status == "caught"


async def test_items_that_are_not_a_list_fail_the_step_clearly(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    wf = (tf.workflow("bad").map("each", items=lambda ctx: {"a": 1}, branch=tf.branch("b").step("w", lambda c: 1).build())
          .build())
    inst = await run_one(wf, None, storage())
    assert (inst.status, inst.error_name, inst.failed_step) == ("failed", "InvalidItemsError", "each")
    assert "must give a list or tuple of items, got dict" in (inst.cause or "")


async def test_items_that_cannot_be_stored_fail_the_step_before_any_item_runs(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    ran: list[Any] = []
    wf = (tf.workflow("bad").map("each", items=lambda ctx: [1, object()],
                                 branch=tf.branch("b").step("w", lambda c: ran.append(c.item)).build())
          .build())
    inst = await run_one(wf, None, storage())
    assert (inst.status, inst.error_name) == ("failed", "UnencodableValueError")
    assert "items of map step 'each'[1] is an object" in (inst.cause or "")
    assert ran == []


# -- compensation ------------------------------------------------------------------------------------


async def test_a_failure_after_the_map_compensates_every_item_step_newest_first(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    released: list[tuple[Any, Any]] = []

    async def reserve(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(3 - ctx.item_index)  # item 2 ends first
        return f"r{ctx.item}"

    async def release(ctx: tf.WorkflowContext, result: Any) -> None:
        released.append((ctx.item, result))

    async def boom(ctx: tf.WorkflowContext) -> None:
        raise Declined("after the map")

    wf = (tf.workflow("comp")
          .map("each", items=lambda ctx: ["a", "b", "c"], branch=tf.branch("b").step("reserve", reserve, release).build())
          .step("boom", boom)
          .build())
    inst = await run_one(wf, None, storage())
    assert inst.status == "failed"
    # newest first: item 0 ended last, so it is released first
    assert released == [("a", "ra"), ("b", "rb"), ("c", "rc")]
    assert inst.compensated_steps == ("reserve", "reserve", "reserve")


async def test_a_fail_fast_map_compensates_the_items_that_completed(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    released: list[int] = []

    async def reserve(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(1)
        return int(ctx.item)

    async def charge(ctx: tf.WorkflowContext) -> None:
        if ctx.item == 3:
            raise Declined("no")
        await trio.sleep(50)

    async def release(ctx: tf.WorkflowContext, result: int) -> None:
        released.append(result)

    wf = mapping(tf.branch("b").step("reserve", reserve, release).step("charge", charge).build(), max_concurrency=2)
    inst = await run_one(wf, list(range(8)), storage())
    assert inst.status == "failed"
    # items 0..3 reserved (2 and 3 started when 0 and 1 moved on to charge); 3 failed at charge
    assert sorted(released) == [0, 1, 2, 3]


# -- resume ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{"on_error": "wait-all"}, {"tolerated_failures": 1}])
async def test_an_item_that_failed_is_not_run_again_after_a_restart(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], options: dict[str, Any]) -> None:
    # Item 0 fails for good while the others still run: its failure is stored then, so the
    # next engine takes it as failed instead of running it again (and, tolerated, its slot
    # keeps the error it had).
    calls: Counter[int] = Counter()
    gate = trio.Event()

    async def work(ctx: tf.WorkflowContext) -> Any:
        calls[ctx.item_index] += 1
        if ctx.item_index == 0:
            raise Declined("card declined")
        await gate.wait()
        return ctx.item

    wf = mapping(tf.branch("b").step("work", work).build(), **options)
    clock = virtual_wall_clock()
    adapter = storage()
    async with open_test_engine(adapter=adapter, clock=clock) as engine:
        engine.register(wf)
        iid = await engine.start("batch", [0, 1, 2])
        await trio.sleep(60)
    gate.set()
    async with open_test_engine(adapter=storage(), clock=clock) as engine:
        engine.register(wf)
        inst = await engine.wait(iid)
    assert calls == Counter({0: 1, 1: 2, 2: 2})
    if "tolerated_failures" in options:
        assert inst.status == "completed"
        assert inst.output == [{"error": "Declined", "cause": "card declined"}, 1, 2]
    else:
        assert inst.status == "failed"


async def test_a_resume_reruns_only_the_items_that_had_not_ended(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    calls: Counter[int] = Counter()
    items_made = 0
    gate = trio.Event()

    def items(ctx: tf.WorkflowContext) -> list[int]:
        nonlocal items_made
        items_made += 1
        return list(range(20))

    async def work(ctx: tf.WorkflowContext) -> int:
        calls[ctx.item_index] += 1
        if ctx.item_index >= 5:
            await gate.wait()  # never set in the first engine
        return int(ctx.item) * 2

    wf = tf.workflow("resumed").map("each", items=items, branch=tf.branch("b").step("work", work).build(),
                                    max_concurrency=8).build()
    clock = virtual_wall_clock()
    async with open_test_engine(adapter=storage(), clock=clock) as engine:
        engine.register(wf)
        iid = await engine.start("resumed", None)
        await trio.sleep(5)
        assert sum(calls.values()) == 13  # 0-4 ended; 5-12 hold the 8 slots
    assert items_made == 1
    gate.set()
    async with open_test_engine(adapter=storage(), clock=clock) as engine:
        engine.register(wf)
        inst = await engine.wait(iid)
    assert inst.status == "completed"
    assert inst.output == [i * 2 for i in range(20)]
    assert items_made == 1  # the stored list was used
    assert all(calls[i] == 1 for i in range(5))  # ended before the restart: not run again
    assert all(calls[i] == 2 for i in range(5, 13))  # interrupted: run again
    assert all(calls[i] == 1 for i in range(13, 20))  # never started before


async def test_the_header_holds_no_lane_for_items_that_ended(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """The header is rewritten by every checkpoint: were every ended item's lane kept in it, a
    map's cost per item would grow with the number of items."""
    async def work(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(1 + ctx.item_index % 7)
        return 0

    sizes: dict[int, int] = {}
    for count in (100, 2000):
        adapter = SQLiteAdapter(tmp_path / f"{count}.db")
        gate = trio.Event()

        async def last(ctx: tf.WorkflowContext) -> int:
            await gate.wait()
            return 0

        wf = (tf.workflow("wide").map("each", items=lambda ctx: ctx.input, max_concurrency=10,
                                      branch=tf.branch("b").step("work", work).build())
              .step("last", last).build())
        async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
            engine.register(wf)
            iid = await engine.start("wide", list(range(count)))
            while (await engine.get_instance(iid)).current_step != "last":  # type: ignore[union-attr]
                await trio.sleep(1)
            stored = await adapter.load(iid)
            assert stored is not None
            sizes[count] = len(stored.header)
            gate.set()
            assert (await engine.wait(iid)).status == "completed"
    # the same but for wider numbers (record counts, item indexes)
    assert sizes[2000] <= sizes[100] + 8


async def test_a_map_run_again_by_a_loop_gets_new_executions(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    async def work(ctx: tf.WorkflowContext) -> Any:
        return [ctx.item, ctx.data.setdefault("round", 0)]

    wf = (tf.workflow("loop")
          .map("each", items=lambda ctx: ["a", "b"], branch=tf.branch("b").step("work", work).build())
          .step("count", lambda ctx: ctx.data.update(round=ctx.data["round"] + 1))
          .choice("again", choices=[tf.when(lambda ctx: ctx.data["round"] < 2, next="each")], default="done")
          .pass_("done", transform=lambda ctx: ctx.steps["each"])
          .build())
    inst = await run_one(wf, None, storage())
    assert inst.status == "completed"
    assert inst.output == [["a", 1], ["b", 1]]
    ids = {r.id for r in inst.history}
    assert {"each#1", "each#2", "each/#0/work#1", "each/#0/work#2", "each/#1/work#2"} <= ids


async def test_progress_events_count_items_done(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    events: list[dict[str, Any]] = []
    wf = mapping(tf.branch("b").step("work", failing_on({1})).build(), tolerated_failures=1, max_concurrency=1)
    await run_one(wf, [0, 1, 2], storage(), events)
    progress = [(e["done"], e["total"], e["failed"]) for e in events if e["event"] == "workflow.map.progress"]
    assert progress == [(1, 3, 0), (2, 3, 1), (3, 3, 1)]


# -- definitions -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"items": [1, 2]}, "items must be a callable of ctx"),
    ({"branch": "b"}, "branch must be a branch"),
    ({"max_concurrency": 0}, "max_concurrency must be an int >= 1 or None"),
    ({"max_concurrency": True}, "max_concurrency must be an int >= 1 or None"),
    ({"tolerated_failures": -1}, "tolerated_failures must be a count"),
    ({"tolerated_failures": 1.5}, "tolerated_failures must be a count"),
    ({"tolerated_failures": "1"}, "tolerated_failures must be a count"),
    ({"on_error": "later"}, "on_error must be 'fail-fast' or 'wait-all'"),
])
def test_build_refuses_a_malformed_map(options: dict[str, Any], message: str) -> None:
    kwargs: dict[str, Any] = {"items": lambda ctx: [], "branch": tf.branch("b").step("w", lambda c: 1).build()}
    kwargs.update(options)
    with pytest.raises(tf.DefinitionError, match=message) as info:
        tf.workflow("w").map("each", **kwargs).build()
    assert "step 'each'" in str(info.value)


def test_a_map_branch_may_fan_out_again() -> None:
    """(Each item's lanes are scoped by its own: see tests/test_nested_fanout.py.)"""
    inner = tf.branch("b").parallel("p", branches=[tf.branch("x").step("x1", lambda c: 1).build()]).build()
    wf = tf.workflow("w").map("each", items=lambda ctx: [], branch=inner).build()
    assert wf.lookup["x1"][1] == "p/x"


def test_step_names_inside_a_map_branch_are_unique_in_the_workflow() -> None:
    with pytest.raises(tf.DefinitionError, match="used twice"):
        (tf.workflow("w").step("work", lambda c: 1)
         .map("each", items=lambda ctx: [], branch=tf.branch("b").step("work", lambda c: 1).build()).build())


async def test_a_map_may_sit_in_a_parallel_branch(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    async def double(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(1)
        return int(ctx.item) * 2

    mapped = tf.branch("m").map("each", items=lambda ctx: ctx.input, branch=tf.branch("b").step("w", double).build())
    other = tf.branch("o").step("other", lambda ctx: "x")
    wf = tf.workflow("w").parallel("p", branches=[mapped.build(), other.build()]).build()
    assert wf.lookup["w"][1] == "each/#"
    inst = await run_one(wf, [1, 2, 3], storage())
    assert (inst.status, inst.output) == ("completed", {"m": [2, 4, 6], "o": "x"})
    assert "p/m/each#1" in {r.id for r in inst.history}  # the map runs in the branch's lane
    assert {r.id for r in inst.history if r.step_name == "w"} == {"each/#0/w#1", "each/#1/w#1", "each/#2/w#1"}
