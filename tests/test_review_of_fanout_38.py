"""An adversarial review of map steps, child workflows and nested sagas (SPEC §14,
docs/fanout.md, README "Fanning out"), as a sceptical user tries them: item order and
concurrency, empty and malformed item lists, tolerated failures at their exact boundaries,
fail-fast and wait-all, catch, a restart in the middle of a map (job calls counted per item),
compensation of every item's completed executions newest first; children's ids across a
restart, their outcomes, cancellation down to grandchildren, links; children compensated as
units at their step's place, grandchildren included, and a child's failed compensation on its
parent. On MemoryAdapter and SQLite (engines closed and reopened on one storage), on trio's
autojumping MockClock with the wall clock on virtual time."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
from storages import engine_on, finish, storage, written_before_parents  # noqa: F401  (storage: the fixture)
from trioflow.adapters import Adapter, MemoryAdapter
from trioflow.testing import virtual_wall_clock


class Declined(Exception):
    pass


Seconds = Callable[[Any], float]
Verdict = Callable[[Any], bool]


def never(who: Any) -> bool:
    """The verdict that is never true."""
    return False


def who_of(ctx: tf.WorkflowContext) -> Any:
    """Whom a job works for: its map item, else its instance's input (a child's invoice); a
    list as a tuple (a key of ``Journal.calls``)."""
    who = ctx.item if ctx.item_index is not None else ctx.input
    return tuple(who) if isinstance(who, list) else who


class Journal:
    """What the jobs of one test did: ``log`` of ("do", step, who) and ("undo", step, who,
    result) in the order they happened, calls per (step, who), jobs cancelled while running,
    and how many ran at once at the most. Jobs ``held`` wait for ``gate`` (never set in the
    first engine of a restart test)."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.calls: Counter[tuple[str, Any]] = Counter()
        self.first_call: dict[tuple[str, Any], float] = {}
        self.cancelled: list[tuple[str, Any]] = []
        self.running = 0
        self.peak = 0
        self.gate = trio.Event()

    def saga(self, name: str, *, seconds: Seconds = lambda who: 0, fails: Verdict = never, held: Verdict = never,
             undo_fails: Verdict = never, undo_held: Verdict = never) -> tuple[Any, Any]:
        """An ``(execute, compensate)`` pair for step ``name``; execute returns f"{name}-{who}".
        A compensation is logged once past the gate (if ``undo_held``), before it fails."""
        async def execute(ctx: tf.WorkflowContext) -> str:
            who = who_of(ctx)
            self.calls[(name, who)] += 1
            self.first_call.setdefault((name, who), trio.current_time())
            self.running += 1
            self.peak = max(self.peak, self.running)
            try:
                await trio.sleep(seconds(who))
                if held(who):
                    await self.gate.wait()
            except trio.Cancelled:
                self.cancelled.append((name, who))
                raise
            finally:
                self.running -= 1
            if fails(who):
                raise Declined(f"{name} {who} declined")
            self.log.append(("do", name, who))
            return f"{name}-{who}"

        async def compensate(ctx: tf.WorkflowContext, result: Any) -> None:
            if undo_held(who_of(ctx)):
                await self.gate.wait()
            self.log.append(("undo", name, who_of(ctx), result))
            if undo_fails(who_of(ctx)):
                raise RuntimeError(f"cannot undo {name} {who_of(ctx)}")

        return execute, compensate

    def did(self) -> list[tuple[str, Any]]:
        """(step, who) of every execution that completed, in order."""
        return [(entry[1], entry[2]) for entry in self.log if entry[0] == "do"]

    def undid(self) -> list[tuple[str, Any]]:
        """(step, who) of every compensation that ran, in order, each checked to have been
        handed the output of the execution it undoes (so ``ctx.item`` named the right item)."""
        for entry in self.log:
            if entry[0] == "undo":
                assert entry[3] == f"{entry[1]}-{entry[2]}", entry
        return [(entry[1], entry[2]) for entry in self.log if entry[0] == "undo"]


def line(journal: Journal, name: str = "line", **steps: dict[str, Any]) -> tf.Branch:
    """A branch of saga steps, one per keyword (step name: ``Journal.saga`` options and maybe
    a "retry" policy), in order."""
    builder = tf.branch(name)
    for step, options in steps.items():
        saga = dict(options)
        retry = saga.pop("retry", None)
        builder = builder.step(step, *journal.saga(step, **saga), retry=retry)
    return builder.build()


def batch(branch: tf.Branch, *, after: tuple[Any, Any] | None = None, catch: list[tf.Catch] | None = None,
          **options: Any) -> tf.WorkflowDefinition:
    """Workflow "batch": map "each" over its input with ``branch``; then step "after" (if given);
    a catch routes to "recover", a pass step giving ``ctx.error``."""
    builder = tf.workflow("batch").map("each", items=lambda ctx: ctx.input, branch=branch, catch=catch or [],
                                       **options)
    if after is not None:
        builder = builder.step("after", *after)
    if catch:
        builder = builder.succeed("ok").pass_("recover", transform=lambda ctx: ctx.error)
    return builder.build()


def declining(journal: Journal, bad: set[Any], seconds: float = 1.0) -> tf.Branch:
    """A one-step branch ("work") whose items in ``bad`` fail after ``seconds``."""
    return line(journal, work={"seconds": lambda who: seconds, "fails": lambda who: who in bad})


class Rig:
    """Engines opened one after another on one storage (a restart each), on one virtual wall
    clock; ``seen`` holds every instance as the last engine listed it before it closed."""

    def __init__(self, adapter: Callable[[], Adapter]) -> None:
        self.storage = adapter
        self.clock: Callable[[], float] | None = None
        self.seen: dict[str, tf.WorkflowInstance] = {}

    @asynccontextmanager
    async def engine(self, *workflows: tf.WorkflowDefinition, **options: Any) -> AsyncIterator[tf.Engine]:
        """A test engine with ``workflows`` registered."""
        if self.clock is None:
            self.clock = virtual_wall_clock()
        async with engine_on(self.storage(), self.clock, **options) as engine:
            for wf in workflows:
                engine.register(wf)
            yield engine
            self.seen.update((i.id, i) for i in await engine.get_instances())

    async def run(self, input: Any, *workflows: tf.WorkflowDefinition, **options: Any) -> tf.WorkflowInstance:
        """Start the first of ``workflows`` with ``input`` and wait for its end."""
        async with self.engine(*workflows, **options) as engine:
            return await finish(engine, await engine.start(workflows[0].name, input))

    async def stop_after(self, seconds: float, input: Any, *workflows: tf.WorkflowDefinition) -> str:
        """Start the first of ``workflows``, let the engine run ``seconds``, close it: the id."""
        async with self.engine(*workflows) as engine:
            iid: str = await engine.start(workflows[0].name, input)
            await trio.sleep(seconds)
        return iid

    async def resume(self, iid: str, *workflows: tf.WorkflowDefinition) -> tf.WorkflowInstance:
        """A new engine (a restart) with ``workflows``, until ``iid`` ends."""
        async with self.engine(*workflows) as engine:
            return await finish(engine, iid)

    def children_of(self, inst: tf.WorkflowInstance) -> list[tf.WorkflowInstance]:
        """``inst``'s children as last listed, in the order of their ids."""
        return [self.seen[c] for c in sorted(inst.children)]


@pytest.fixture
def rig(storage: Callable[[], Adapter]) -> Rig:  # noqa: F811  (the fixture)
    return Rig(storage)


@pytest.fixture
def memory_rig() -> Rig:
    memory = MemoryAdapter()
    return Rig(lambda: memory)


def slots(inst: tf.WorkflowInstance) -> list[Any]:
    """The map step's output, checking every failed slot holds exactly "error" and "cause"."""
    out: list[Any] = inst.step_results["each"].output
    for slot in out:
        if isinstance(slot, dict):
            assert set(slot) == {"error", "cause"}, slot
    return out


def statuses(inst: tf.WorkflowInstance, step: str) -> list[str]:
    return [r.status for r in inst.history if r.step_name == step]


# -- map: order, concurrency, items ----------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3, None])
async def test_outputs_keep_item_order_and_never_more_than_max_concurrency_run(
        autojump_clock: trio.testing.MockClock, rig: Rig, limit: int | None) -> None:
    journal = Journal()
    wf = batch(line(journal, work={"seconds": lambda who: 1 + (who * 7) % 5}), max_concurrency=limit)
    inst = await rig.run(list(range(10)), wf)
    assert (inst.status, inst.output) == ("completed", [f"work-{i}" for i in range(10)])
    assert journal.peak == (limit or 10)
    if limit != 1:
        assert journal.did() != sorted(journal.did()), "items should have ended out of order"
    assert all(n == 1 for n in journal.calls.values()) and len(journal.calls) == 10
    # items start in index order (those starting at one instant in whatever order trio runs them)
    starts = [journal.first_call[("work", i)] for i in range(10)]
    assert starts == sorted(starts)


async def test_an_empty_item_list_runs_nothing_and_hands_on_an_empty_list(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    wf = (tf.workflow("batch")
          .map("each", items=lambda ctx: (), branch=line(journal, work={}), max_concurrency=2,
               tolerated_failures=0.5, on_error="wait-all")
          .pass_("after", transform=lambda ctx: {"each": ctx.steps["each"]})
          .build())
    inst = await rig.run(None, wf)
    assert (inst.status, inst.output) == ("completed", {"each": []})
    assert journal.calls == Counter()


@pytest.mark.parametrize("items", [
    lambda ctx: "abc", lambda ctx: None, lambda ctx: {"a": 1}, lambda ctx: frozenset({1}),
    lambda ctx: (x for x in [1]), lambda ctx: 3,
], ids=["str", "none", "dict", "frozenset", "generator", "int"])
async def test_items_that_are_not_a_list_fail_clearly_before_anything_is_stored(
        autojump_clock: trio.testing.MockClock, rig: Rig, items: Any) -> None:
    journal = Journal()
    wf = (tf.workflow("batch")
          .map("each", items=items, branch=line(journal, work={}),
               catch=[tf.Catch(errors=[tf.InvalidItemsError], next="recover")])
          .succeed("ok")
          .pass_("recover", transform=lambda ctx: ctx.error)
          .build())
    inst = await rig.run(None, wf)
    assert inst.status == "completed"
    assert inst.output["error"] == "InvalidItemsError"
    assert "list or tuple" in inst.output["cause"]
    assert journal.calls == Counter()
    assert statuses(inst, "each") == ["caught"]  # no start record holding a half list


async def test_unstorable_items_fail_the_step_and_leave_a_readable_failed_instance(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    wf = tf.workflow("batch").map("each", items=lambda ctx: [1, {"deep": [2, object()]}],
                                  branch=line(journal, work={})).build()
    inst = await rig.run(None, wf)
    assert (inst.status, inst.error_name, inst.failed_step) == ("failed", "UnencodableValueError", "each")
    assert "[1]" in (inst.cause or "")
    assert journal.calls == Counter()
    assert statuses(inst, "each") == ["failed"]
    async with rig.engine(wf) as engine:  # a restart reads it back as it ended, and runs nothing
        again = await engine.get_instance(inst.id)
        await trio.sleep(5)
    assert again is not None and (again.status, again.error_name) == ("failed", "UnencodableValueError")
    assert journal.calls == Counter()


async def test_an_items_callable_that_raises_fails_the_map_with_its_error_and_is_catchable(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    async def items(ctx: tf.WorkflowContext) -> list[int]:
        raise Declined("no items today")

    journal = Journal()
    wf = (tf.workflow("batch")
          .map("each", items=items, branch=line(journal, work={}), catch=[tf.Catch(errors=[Declined], next="recover")])
          .succeed("ok")
          .pass_("recover", transform=lambda ctx: ctx.error)
          .build())
    inst = await rig.run(None, wf)
    assert (inst.status, inst.output) == ("completed", {"error": "Declined", "cause": "no items today"})


# -- map: tolerated failures at their boundaries ----------------------------------------------------


@pytest.mark.parametrize(("tolerated", "count", "failures", "completes"), [
    (2, 6, 2, True), (2, 6, 3, False),
    (1, 3, 1, True), (1, 3, 2, False),          # an int 1 is one item ...
    (1.0, 3, 3, True),                          # ... a float 1.0 all of them
    (0.5, 4, 2, True), (0.5, 4, 3, False),
    (0.5, 3, 1, True), (0.5, 3, 2, False),      # 1/3 <= 0.5 < 2/3
    (0.29, 100, 29, True), (0.29, 100, 30, False),
    (0.1, 9, 1, False),                         # 0.1 of 9 items tolerates none
])
@pytest.mark.parametrize("on_error", ["fail-fast", "wait-all"])
async def test_tolerated_failures_hold_up_to_the_boundary_and_no_further(
        autojump_clock: trio.testing.MockClock, memory_rig: Rig, on_error: str, tolerated: float, count: int,
        failures: int, completes: bool) -> None:
    journal = Journal()
    bad = set(range(count - failures, count))  # the last items fail
    wf = batch(declining(journal, bad), tolerated_failures=tolerated, on_error=on_error)
    inst = await memory_rig.run(list(range(count)), wf)
    if completes:
        assert inst.status == "completed", inst.error
        assert slots(inst) == [{"error": "Declined", "cause": f"work {i} declined"} if i in bad else f"work-{i}"
                               for i in range(count)]
        return
    assert (inst.status, inst.failed_step) == ("failed", "work" if inst.error_name == "Declined" else "each")
    expected = "Declined" if on_error == "fail-fast" and tolerated == 0.1 else "MapError"  # 0.1 of 9: none
    assert inst.error_name == expected, (inst.error_name, inst.cause)
    if expected == "MapError":
        assert f"{failures} of {count} items failed" in (inst.cause or "")


# -- map: fail-fast and wait-all ---------------------------------------------------------------------


async def test_fail_fast_cancels_running_items_starts_no_more_and_compensates_what_completed(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    branch = line(journal, reserve={"seconds": lambda who: 1},
                  charge={"seconds": lambda who: 2 if who == 2 else 50, "fails": lambda who: who == 2})
    inst = await rig.run(list(range(8)), batch(branch, max_concurrency=3))
    assert (inst.status, inst.error_name, inst.cause) == ("failed", "Declined", "charge 2 declined")
    started = {who for (step, who) in journal.calls if step == "reserve"}
    assert started == {0, 1, 2}  # nothing started after the failure
    assert sorted(journal.cancelled) == [("charge", 0), ("charge", 1)]
    assert sorted(journal.undid()) == [("reserve", 0), ("reserve", 1), ("reserve", 2)]
    assert inst.compensated_steps == ("reserve",) * 3


async def test_wait_all_lets_every_item_end_then_compensates_every_completed_execution_newest_first(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    branch = line(journal, reserve={"seconds": lambda who: 5 - who},
                  charge={"seconds": lambda who: 1 + 2 * who, "fails": lambda who: who == 0})
    inst = await rig.run(list(range(5)), batch(branch, on_error="wait-all", max_concurrency=2))
    assert (inst.status, inst.error_name) == ("failed", "MapError")
    assert journal.cancelled == []
    assert {who for (step, who) in journal.calls if step == "charge"} == set(range(5))  # all ran after 0 failed
    completed = journal.did()
    assert len(completed) == 9  # 5 reserves, 4 charges
    assert journal.undid() == completed[::-1]


async def test_a_caught_map_failure_compensates_nothing_until_the_workflow_fails_later(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    branch = line(journal, reserve={"seconds": lambda who: 1 + who}, charge={"fails": lambda who: who == 3})
    wf = (tf.workflow("batch")
          .map("each", items=lambda ctx: ctx.input, branch=branch, on_error="wait-all",
               catch=[tf.Catch(errors=["MapError"], next="recover", result="why")])
          .succeed("ok")
          .step("recover", *journal.saga("recover", fails=lambda who: True))
          .build())
    inst = await rig.run([0, 1, 2, 3], wf)
    assert (inst.status, inst.failed_step, inst.cause) == ("failed", "recover", "recover (0, 1, 2, 3) declined")
    completed = journal.did()
    assert len(completed) == 7
    log_at_failure = [entry[0] for entry in journal.log]
    assert log_at_failure[:7] == ["do"] * 7  # nothing undone when the catch routed
    assert journal.undid() == completed[::-1]
    assert statuses(inst, "each") == ["started", "caught"]


async def test_a_catch_on_the_items_own_error_routes_a_fail_fast_map(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    wf = batch(declining(journal, {2}), catch=[tf.Catch(errors=[Declined], next="recover")], max_concurrency=2)
    inst = await rig.run([0, 1, 2, 3, 4], wf)
    assert (inst.status, inst.output) == ("completed", {"error": "Declined", "cause": "work 2 declined"})


# -- map: restarts ----------------------------------------------------------------------------------


async def test_a_restart_mid_map_reruns_only_unfinished_executions_and_keeps_the_items(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    listed = Counter[str]()

    def items(ctx: tf.WorkflowContext) -> list[int]:
        listed["items"] += 1
        return list(range(6))

    branch = line(journal, reserve={"seconds": lambda who: 1}, charge={"held": lambda who: who in (1, 2)})
    wf = tf.workflow("batch").map("each", items=items, branch=branch, max_concurrency=3).build()
    iid = await rig.stop_after(30, None, wf)
    assert {who for (step, who) in journal.did() if step == "charge"} == {0, 3, 4, 5}  # 1 and 2 held
    before = Counter(journal.calls)
    journal.gate.set()
    inst = await rig.resume(iid, wf)
    assert (inst.status, inst.output) == ("completed", [f"charge-{i}" for i in range(6)])
    assert listed["items"] == 1
    rerun = journal.calls - before
    # reserve never runs again for an item whose reserve completed; charge 1 and 2 were in flight
    assert all(rerun[("reserve", i)] == 0 for i in range(6) if before[("reserve", i)])
    assert all(journal.calls[("reserve", i)] == 1 for i in range(6))
    assert journal.calls[("charge", 0)] == 1
    assert journal.calls[("charge", 1)] == journal.calls[("charge", 2)] == 2
    assert sorted(journal.did()) == sorted({(s, i) for s in ("reserve", "charge") for i in range(6)})


async def test_compensation_after_a_restart_undoes_every_items_executions_once_newest_first(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    branch = line(journal, reserve={"seconds": lambda who: 1 + who % 3}, charge={"held": lambda who: who >= 2})
    wf = batch(branch, max_concurrency=2, after=journal.saga("after", fails=lambda who: True))
    iid = await rig.stop_after(30, list(range(5)), wf)
    journal.gate.set()
    inst = await rig.resume(iid, wf)
    assert (inst.status, inst.failed_step) == ("failed", "after")
    completed = journal.did()
    assert len(completed) == 10
    assert journal.undid() == completed[::-1]
    assert inst.compensated_steps == tuple(step for step, _ in completed[::-1])
    recorded = [(r.step_name, r.id) for r in inst.history if r.status == "compensated"]
    assert len(recorded) == 10 and len({rid for _, rid in recorded}) == 10


# -- child workflows ---------------------------------------------------------------------------------


def invoice(journal: Journal, *, fails: Verdict = never, held: Verdict = never,
            undo_fails: Verdict = never) -> tf.WorkflowDefinition:
    """Workflow "invoice": saga steps reserve, charge (which may fail, or wait for the gate, or
    whose compensation may fail); its output is charge's."""
    return (tf.workflow("invoice")
            .step("reserve", *journal.saga("reserve", undo_fails=undo_fails))
            .step("charge", *journal.saga("charge", fails=fails, held=held))
            .build())


def mailed_invoice(journal: Journal, **charge: Any) -> tf.WorkflowDefinition:
    """Workflow "invoice": saga steps reserve, charge (with ``charge``'s saga options), mail."""
    return (tf.workflow("invoice").step("reserve", *journal.saga("reserve"))
            .step("charge", *journal.saga("charge", **charge)).step("mail", *journal.saga("mail")).build())


def failing_order(journal: Journal, **ship: Any) -> tf.WorkflowDefinition:
    """Workflow "order": step hold, child step "bill" of "invoice", then step ship, which fails
    (after ``ship``'s other saga options, such as waiting for the gate)."""
    return (tf.workflow("order").step("hold", *journal.saga("hold")).child("bill", workflow="invoice")
            .step("ship", *journal.saga("ship", fails=lambda who: True, **ship)).build())


def billing_batch(**options: Any) -> tf.WorkflowDefinition:
    """Workflow "batch": a map whose branch is one child step "bill" of workflow "invoice"."""
    return batch(tf.branch("one").child("bill", workflow="invoice").build(), **options)


async def test_a_restart_never_starts_a_map_items_child_twice(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    child = invoice(journal, held=lambda who: who != "A")
    parent = billing_batch()
    iid = await rig.stop_after(10, ["A", "B", "C"], parent, child)
    journal.gate.set()
    inst = await rig.resume(iid, parent, child)
    assert (inst.status, inst.output) == ("completed", ["charge-A", "charge-B", "charge-C"])
    expected = [f"{iid}/each/#{i}/bill#1" for i in range(3)]
    assert sorted(inst.children) == expected
    invoices = {i.id: i for i in rig.seen.values() if i.workflow_name == "invoice"}
    assert sorted(invoices) == expected
    assert all(i.parent_id == iid and i.status == "completed" for i in invoices.values())
    assert [journal.calls[("reserve", w)] for w in "ABC"] == [1, 1, 1]
    assert journal.calls[("charge", "A")] == 1


async def test_a_child_step_run_again_by_a_loop_starts_a_new_child_each_execution(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    parent = (tf.workflow("order")
              .child("bill", workflow="invoice", input=lambda ctx: f"n{ctx.get('round') or 0}")
              .pass_("count", transform=lambda ctx: ctx.set("round", (ctx.get("round") or 0) + 1))
              .choice("again", choices=[tf.when(lambda ctx: ctx.get("round") < 3, next="bill")], default="done")
              .pass_("done", transform=lambda ctx: ctx.steps["bill"])
              .build())
    inst = await rig.run(None, parent, invoice(journal))
    assert (inst.status, inst.output) == ("completed", "charge-n2")
    assert inst.children == tuple(f"{inst.id}/bill#{n}" for n in (1, 2, 3))
    assert [rig.seen[c].input for c in inst.children] == ["n0", "n1", "n2"]
    assert inst.parent_id is None


async def test_a_child_cancelled_on_its_own_fails_the_parents_step_as_a_catchable_child_failure(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    parent = (tf.workflow("order")
              .child("bill", workflow="invoice", catch=[tf.Catch(errors=["ChildWorkflowError"], next="recover")])
              .succeed("ok")
              .pass_("recover", transform=lambda ctx: ctx.steps["bill"])
              .build())
    async with rig.engine(parent, invoice(journal, held=lambda who: True)) as engine:
        iid = await engine.start("order", "X")
        await trio.sleep(5)
        assert await engine.cancel(f"{iid}/bill#1")
        inst = await finish(engine, iid)
    assert inst.status == "completed"
    assert set(inst.output) == {"error", "cause"}
    assert rig.seen[f"{iid}/bill#1"].status == "cancelled"
    assert journal.undid() == [("reserve", "X")]  # the child compensated itself, once


async def test_a_timed_out_child_fails_the_step_and_a_catch_by_class_routes_it(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    child = (tf.workflow("invoice").step("charge", *journal.saga("charge", seconds=lambda who: 100))
             .with_timeout(10).build())
    parent = (tf.workflow("order")
              .child("bill", workflow="invoice", catch=[tf.Catch(errors=[tf.ChildWorkflowError], next="recover")])
              .succeed("ok")
              .pass_("recover", result="recovered")
              .build())
    inst = await rig.run("X", parent, child)
    assert (inst.status, inst.output) == ("completed", "recovered")
    assert rig.seen[f"{inst.id}/bill#1"].status == "timed_out"
    assert inst.step_results["bill"].status == "caught"


async def test_a_failed_child_fails_the_step_uncaught_and_the_parent_says_so(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    parent = (tf.workflow("order").step("hold", *journal.saga("hold"))
              .child("bill", workflow="invoice").build())
    inst = await rig.run("X", parent, invoice(journal, fails=lambda who: True))
    assert (inst.status, inst.failed_step, inst.error_name, inst.cause) == (
        "failed", "bill", "Declined", "charge X declined")
    assert (inst.error or "").startswith("ChildWorkflowError: child ")
    assert "invoice" in (inst.error or "")
    # the child undid itself; the parent undid hold, and did not undo the failed child again
    assert journal.undid() == [("reserve", "X"), ("hold", "X")]
    assert inst.compensated_steps == ("hold",)


async def cancel_down_two_levels(engine: tf.Engine, iid: str) -> tf.WorkflowInstance:
    """Cancel ``iid``, then wait for its end, its children's and their "deeper#1" children's."""
    assert await engine.cancel(iid)
    inst = await finish(engine, iid)
    for child in inst.children:
        await finish(engine, child)
        await finish(engine, f"{child}/deeper#1")
    return inst


@pytest.mark.parametrize("restart", [False, True], ids=["same-engine", "after-restart"])
@pytest.mark.parametrize("shape", ["map-items", "main-line"])
async def test_cancelling_a_parent_cancels_its_children_and_grandchildren(
        autojump_clock: trio.testing.MockClock, rig: Rig, restart: bool, shape: str) -> None:
    journal = Journal()
    leaf = tf.workflow("leaf").step("hang", *journal.saga("hang", held=lambda who: True)).build()
    mid = tf.workflow("invoice").step("reserve", *journal.saga("reserve")).child("deeper", workflow="leaf").build()
    parent = billing_batch() if shape == "map-items" else tf.workflow("batch").child("bill", workflow="invoice").build()
    workflows = (parent, mid, leaf)
    async with rig.engine(*workflows) as engine:
        iid = await engine.start("batch", ["A", "B"])
        await trio.sleep(10)
        if not restart:
            inst = await cancel_down_two_levels(engine, iid)
    if restart:
        async with rig.engine(*workflows) as engine:
            await trio.sleep(10)
            inst = await cancel_down_two_levels(engine, iid)
    assert inst.status == "cancelled"
    mids = rig.children_of(inst)
    assert len(mids) == (2 if shape == "map-items" else 1)
    assert {m.status for m in mids} == {"cancelled"}
    assert {rig.seen[f"{m.id}/deeper#1"].status for m in mids} == {"cancelled"}
    assert [rig.seen[f"{m.id}/deeper#1"].parent_id for m in mids] == [m.id for m in mids]
    assert sorted(journal.undid()) == sorted(("reserve", m.input if shape == "map-items" else ("A", "B"))
                                             for m in mids)
    assert [entry for entry in journal.did() if entry[0] == "hang"] == []


@pytest.mark.parametrize("restart", [False, True], ids=["same-engine", "after-restart"])
@pytest.mark.parametrize("shape", ["map-items", "main-line"])
async def test_a_parent_that_times_out_while_waiting_cancels_its_children(
        autojump_clock: trio.testing.MockClock, rig: Rig, restart: bool, shape: str) -> None:
    journal = Journal()
    if shape == "map-items":
        parent = (tf.workflow("order").map("each", items=lambda ctx: ["X", "Y"],
                                           branch=tf.branch("one").child("bill", workflow="invoice").build())
                  .with_timeout(50).build())
    else:
        parent = tf.workflow("order").child("bill", workflow="invoice").with_timeout(50).build()
    child = invoice(journal, held=lambda who: True)
    if restart:
        iid = await rig.stop_after(10, "X", parent, child)
        inst = await rig.resume(iid, parent, child)
    else:
        inst = await rig.run("X", parent, child)
    assert inst.status == "timed_out"
    async with rig.engine(parent, child) as engine:
        billed = [await finish(engine, c) for c in sorted(inst.children)]
    assert [b.status for b in billed] == ["cancelled"] * (2 if shape == "map-items" else 1)
    assert sorted(journal.undid()) == sorted(("reserve", b.input) for b in billed)


async def test_a_map_of_children_tolerates_a_failed_child_and_holds_its_own_error_in_the_slot(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    inst = await rig.run(["A", "B", "C"], billing_batch(tolerated_failures=1),
                         invoice(journal, fails=lambda who: who == "B"))
    assert inst.status == "completed", inst.error
    assert slots(inst) == ["charge-A", {"error": "Declined", "cause": "charge B declined"}, "charge-C"]
    assert [c.status for c in rig.children_of(inst)] == ["completed", "failed", "completed"]
    assert journal.undid() == [("reserve", "B")]


async def test_a_fail_fast_map_of_children_fails_as_the_child_did_and_a_catch_on_child_failure_routes_it(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    parent = billing_batch(catch=[tf.Catch(errors=[tf.ChildWorkflowError], next="recover")])
    inst = await rig.run(["A", "B", "C"], parent, invoice(journal, fails=lambda who: who == "B",
                                                           held=lambda who: who != "B"))
    assert (inst.status, inst.output) == ("completed", {"error": "Declined", "cause": "charge B declined"})
    # the siblings a fail-fast cancelled are cancelled children, their reserve undone
    assert [c.status for c in rig.children_of(inst)] == ["cancelled", "failed", "cancelled"]
    assert sorted(journal.undid()) == [("reserve", "A"), ("reserve", "B"), ("reserve", "C")]


# -- nested sagas ----------------------------------------------------------------------------------------


async def test_a_compensating_parent_undoes_each_completed_child_as_a_unit_at_its_place(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    parent = (tf.workflow("order")
              .step("hold", *journal.saga("hold"))
              .child("bill", workflow="invoice")
              .step("pack", *journal.saga("pack"))
              .step("ship", *journal.saga("ship", fails=lambda who: True))
              .build())
    inst = await rig.run("X", parent, invoice(journal))
    assert inst.status == "failed"
    assert journal.undid() == [("pack", "X"), ("charge", "X"), ("reserve", "X"), ("hold", "X")]
    assert inst.compensated_steps == ("pack", "bill", "hold")
    (child,) = rig.children_of(inst)
    assert (child.status, child.compensated_steps, child.parent_id) == (
        "compensated", ("charge", "reserve"), inst.id)


async def test_a_grandchild_is_undone_as_a_unit_inside_its_parents_undo(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    leaf = (tf.workflow("leaf").step("l1", *journal.saga("l1")).step("l2", *journal.saga("l2")).build())
    mid = (tf.workflow("mid").step("m1", *journal.saga("m1")).child("deeper", workflow="leaf")
           .step("m2", *journal.saga("m2")).build())
    parent = (tf.workflow("top").step("t1", *journal.saga("t1")).child("sub", workflow="mid")
              .step("t2", *journal.saga("t2", fails=lambda who: True)).build())
    inst = await rig.run("X", parent, mid, leaf)
    assert inst.status == "failed"
    assert [step for step, _ in journal.undid()] == ["m2", "l2", "l1", "m1", "t1"]
    sub = rig.seen[f"{inst.id}/sub#1"]
    deeper = rig.seen[f"{sub.id}/deeper#1"]
    assert (sub.status, sub.compensated_steps) == ("compensated", ("m2", "deeper", "m1"))
    assert (deeper.status, deeper.compensated_steps) == ("compensated", ("l2", "l1"))
    assert inst.compensated_steps == ("sub", "t1")


async def test_map_items_children_are_undone_as_units_newest_first_after_a_restart(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    parent = (tf.workflow("batch")
              .step("hold", *journal.saga("hold"))
              .map("each", items=lambda ctx: ctx.input, max_concurrency=1,
                   branch=tf.branch("one").child("bill", workflow="invoice").build())
              .step("ship", *journal.saga("ship", held=lambda who: True, fails=lambda who: True))
              .build())
    iid = await rig.stop_after(30, ["A", "B"], parent, invoice(journal))
    journal.gate.set()
    inst = await rig.resume(iid, parent, invoice(journal))
    assert inst.status == "failed"
    assert journal.undid() == [("charge", "B"), ("reserve", "B"), ("charge", "A"), ("reserve", "A"),
                               ("hold", ("A", "B"))]
    assert inst.compensated_steps == ("bill", "bill", "hold")
    assert [(c.status, c.compensated_steps) for c in rig.children_of(inst)] == [
        ("compensated", ("charge", "reserve"))] * 2


@pytest.mark.parametrize("restart", [False, True], ids=["same-engine", "after-restart"])
async def test_a_childs_failed_compensation_is_on_the_parent_and_the_rest_still_run(
        autojump_clock: trio.testing.MockClock, rig: Rig, restart: bool) -> None:
    journal = Journal()
    child = mailed_invoice(journal, undo_fails=lambda who: True)
    parent = failing_order(journal, held=lambda who: restart)
    if restart:
        iid = await rig.stop_after(10, "X", parent, child)
        journal.gate.set()
        inst = await rig.resume(iid, parent, child)
    else:
        inst = await rig.run("X", parent, child)
    assert inst.status == "failed"
    assert journal.undid() == [("mail", "X"), ("charge", "X"), ("reserve", "X"), ("hold", "X")]
    assert set(inst.compensation_errors) == {"bill"}
    assert "ChildCompensationError" in inst.compensation_errors["bill"]
    assert f"{inst.id}/bill#1" in inst.compensation_errors["bill"]
    billed = rig.seen[f"{inst.id}/bill#1"]
    assert billed.compensation_errors == {"charge": "RuntimeError: cannot undo charge X"}
    assert "hold" in inst.compensated_steps


# -- more: limits across restarts, tolerance and compensation together ------------------------------


async def test_max_concurrency_holds_for_resumed_and_new_items_after_a_restart(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    wf = batch(line(journal, work={"seconds": lambda who: 5, "held": lambda who: who < 3}), max_concurrency=3)
    iid = await rig.stop_after(2, list(range(8)), wf)
    assert sorted(journal.calls) == [("work", 0), ("work", 1), ("work", 2)]
    journal.gate.set()
    journal.peak = 0
    inst = await rig.resume(iid, wf)
    assert (inst.status, inst.output) == ("completed", [f"work-{i}" for i in range(8)])
    assert journal.peak == 3
    assert [journal.calls[("work", i)] for i in range(8)] == [2, 2, 2, 1, 1, 1, 1, 1]


async def test_failures_before_and_after_a_restart_add_up_against_the_tolerance(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    branch = line(journal, work={"seconds": lambda who: 1, "held": lambda who: who != 0,
                                 "fails": lambda who: who in (0, 3)})
    wf = batch(branch, tolerated_failures=1, max_concurrency=3)
    iid = await rig.stop_after(10, list(range(5)), wf)
    journal.gate.set()
    inst = await rig.resume(iid, wf)
    assert (inst.status, inst.error_name) == ("failed", "MapError")
    assert "2 of 5 items failed, 1 tolerated" in (inst.cause or ""), inst.cause
    assert journal.calls[("work", 0)] == 1  # its failure was stored: not run again


async def test_fail_fast_with_a_tolerance_stops_at_the_first_failure_too_many(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    branch = line(journal, work={"seconds": lambda who: {0: 1, 1: 2}.get(who, 10), "fails": lambda who: who < 2})
    inst = await rig.run(list(range(6)), batch(branch, tolerated_failures=1, max_concurrency=2))
    assert (inst.status, inst.error_name) == ("failed", "MapError")
    assert "2 of 6 items failed, 1 tolerated" in (inst.cause or ""), inst.cause
    assert sorted(who for _, who in journal.calls) == [0, 1, 2]  # 2 started after 0's tolerated failure
    assert journal.cancelled == [("work", 2)]


async def test_a_tolerated_items_completed_steps_are_undone_exactly_once_when_the_workflow_fails(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    branch = line(journal, reserve={"seconds": lambda who: 1 + who}, charge={"fails": lambda who: who == 1})
    wf = batch(branch, tolerated_failures=1, after=journal.saga("after", fails=lambda who: True))
    inst = await rig.run([0, 1, 2], wf)
    assert (inst.status, inst.failed_step) == ("failed", "after")
    completed = journal.did()
    assert ("reserve", 1) in completed and ("charge", 1) not in completed
    assert journal.undid() == completed[::-1]


async def test_children_of_map_items_and_their_children_run_with_one_slot(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    leaf = tf.workflow("leaf").step("tick", *journal.saga("tick", seconds=lambda who: 1)).build()
    mid = tf.workflow("invoice").child("deeper", workflow="leaf").build()
    inst = await rig.run(["A", "B", "C"], billing_batch(max_concurrency=2), mid, leaf, max_running=1)
    assert (inst.status, inst.output) == ("completed", ["tick-A", "tick-B", "tick-C"])


async def test_a_childs_undo_interrupted_by_a_restart_goes_on_where_it_stood(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    child = mailed_invoice(journal, undo_held=lambda who: True)
    parent = failing_order(journal)
    iid = await rig.stop_after(10, "X", parent, child)
    assert journal.undid() == [("mail", "X")]
    journal.gate.set()
    inst = await rig.resume(iid, parent, child)
    assert inst.status == "failed"
    assert journal.undid() == [("mail", "X"), ("charge", "X"), ("reserve", "X"), ("hold", "X")]
    assert inst.compensated_steps == ("bill", "hold")
    billed = rig.seen[f"{iid}/bill#1"]
    assert (billed.status, billed.compensated_steps) == ("compensated", ("mail", "charge", "reserve"))


async def test_a_wait_all_map_of_children_undoes_the_completed_children_when_it_fails(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    inst = await rig.run(["A", "B", "C"], billing_batch(on_error="wait-all"),
                         invoice(journal, fails=lambda who: who == "B"))
    assert (inst.status, inst.error_name) == ("failed", "MapError")
    assert [c.status for c in rig.children_of(inst)] == ["compensated", "failed", "compensated"]
    assert Counter(journal.undid()) == Counter([("reserve", "A"), ("charge", "A"), ("reserve", "B"),
                                                ("reserve", "C"), ("charge", "C")])
    assert inst.compensated_steps == ("bill", "bill")


# -- more: items ending in a fail step, retries, progress, children's inputs and places -------------


async def test_an_item_ended_by_a_fail_step_holds_that_steps_error_in_its_slot(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    branch = (tf.branch("line")
              .choice("odd", choices=[tf.when(lambda ctx: ctx.item % 2 == 1, next="refuse")], default="keep")
              .pass_("keep", transform=lambda ctx: ctx.item * 10, end=True)
              .fail("refuse", error="OddItem", cause=lambda ctx: f"item {ctx.item} is odd")
              .build())
    inst = await rig.run([0, 1, 2, 3], batch(branch, tolerated_failures=2))
    assert inst.status == "completed", inst.error
    assert slots(inst) == [0, {"error": "OddItem", "cause": "item 1 is odd"}, 20,
                           {"error": "OddItem", "cause": "item 3 is odd"}]


async def test_an_items_retry_count_survives_a_restart_during_its_retry_delay(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    policy = tf.Retry(max_attempts=3, interval=100.0, backoff_rate=1.0, max_interval=100.0)
    branch = line(journal, work={"fails": lambda who: journal.calls[("work", who)] < 3 or who == 1,
                                 "retry": policy})
    wf = batch(branch, tolerated_failures=1)
    iid = await rig.stop_after(150, [0, 1], wf)  # each failed twice: waiting for its third attempt
    assert journal.calls == Counter({("work", 0): 2, ("work", 1): 2})
    inst = await rig.resume(iid, wf)
    assert inst.status == "completed", inst.error
    assert slots(inst) == ["work-0", {"error": "Declined", "cause": "work 1 declined"}]
    assert journal.calls == Counter({("work", 0): 3, ("work", 1): 3})


async def test_progress_events_after_a_restart_go_on_counting_from_what_had_ended(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    wf = batch(line(journal, work={"seconds": lambda who: 1 + who, "held": lambda who: who >= 3}),
               max_concurrency=2)
    iid = await rig.stop_after(20, list(range(6)), wf)
    journal.gate.set()
    progress: list[tuple[int, int, int]] = []
    async with rig.engine(wf) as engine:
        engine.events.on("workflow.map.progress", lambda e: progress.append((e["done"], e["total"], e["failed"])))
        inst = await finish(engine, iid)
    assert inst.status == "completed"
    assert progress == [(done, 6, 0) for done in range(4, 7)]


def ordering(journal: Journal, input: Callable[[Any], Any] | None) -> tf.WorkflowDefinition:
    """Workflow "order": step hold, child step "bill" of "invoice" with ``input``, step ship."""
    return (tf.workflow("order").step("hold", *journal.saga("hold"))
            .child("bill", workflow="invoice", input=input, catch=[tf.Catch(errors=tf.ALL, next="recover")])
            .step("ship", *journal.saga("ship"))
            .succeed("shipped")
            .pass_("recover", transform=lambda ctx: ctx.error)
            .build())


async def no_input(ctx: tf.WorkflowContext) -> Any:
    raise Declined("no invoice")


@pytest.mark.parametrize(("input", "name"), [(no_input, "Declined"), (lambda ctx: {"x": object()},
                                                                       "UnencodableValueError")])
async def test_a_child_input_that_fails_fails_the_step_catchably_and_starts_no_child(
        autojump_clock: trio.testing.MockClock, rig: Rig, input: Any, name: str) -> None:
    journal = Journal()
    inst = await rig.run("X", ordering(journal, input), invoice(journal))
    assert (inst.status, inst.output["error"]) == ("completed", name)
    assert inst.children == ()
    assert not any(i.workflow_name == "invoice" for i in rig.seen.values())
    assert journal.calls == Counter({("hold", "X"): 1})


async def test_a_child_ended_by_a_fail_step_is_caught_by_that_steps_error_name(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    child = (tf.workflow("invoice").step("reserve", *journal.saga("reserve"))
             .fail("stop", error="OrderCancelled", cause="customer changed their mind").build())
    parent = (tf.workflow("order")
              .child("bill", workflow="invoice", catch=[tf.Catch(errors=["OrderCancelled"], next="recover",
                                                                 result="why")])
              .succeed("ok")
              .pass_("recover", transform=lambda ctx: ctx.data["why"])
              .build())
    inst = await rig.run("X", parent, child)
    assert (inst.status, inst.output) == ("completed", {"error": "OrderCancelled",
                                                        "cause": "customer changed their mind"})
    assert journal.undid() == [("reserve", "X")]


@pytest.mark.parametrize("child_last", [True, False])
async def test_a_childs_undo_takes_the_place_of_its_steps_end_beside_a_parallel_sibling(
        autojump_clock: trio.testing.MockClock, rig: Rig, child_last: bool) -> None:
    """The child step starts before its sibling branch's step ends; its place in the reverse
    order is where it completed, as a plain step's is."""
    journal = Journal()
    child = (tf.workflow("invoice").step("reserve", *journal.saga("reserve"))
             .step("charge", *journal.saga("charge", seconds=lambda who: 10 if child_last else 1)).build())
    parent = (tf.workflow("order")
              .parallel("both", branches=[
                  tf.branch("billing").child("bill", workflow="invoice").build(),
                  tf.branch("packing").step("pack", *journal.saga("pack", seconds=lambda who: 5)).build()])
              .step("ship", *journal.saga("ship", fails=lambda who: True))
              .build())
    inst = await rig.run("X", parent, child)
    assert inst.status == "failed"
    unit = [("charge", "X"), ("reserve", "X")]
    expected = unit + [("pack", "X")] if child_last else [("pack", "X")] + unit
    assert journal.undid() == expected
    assert inst.compensated_steps == (("bill", "pack") if child_last else ("pack", "bill"))


async def test_a_fail_fast_map_undoes_the_children_its_items_completed_as_units(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    branch = (tf.branch("one").child("bill", workflow="invoice")
              .step("post", *journal.saga("post", seconds=lambda who: 1 if who == "B" else 50,
                                          fails=lambda who: who == "B"))
              .build())
    inst = await rig.run(["A", "B"], batch(branch), invoice(journal))
    assert (inst.status, inst.error_name) == ("failed", "Declined")
    assert journal.cancelled == [("post", "A")]
    assert [c.status for c in rig.children_of(inst)] == ["compensated", "compensated"]
    assert Counter(journal.undid()) == Counter([("charge", "A"), ("reserve", "A"), ("charge", "B"),
                                                ("reserve", "B")])


# -- more: slots across restarts, cancel during a map, unregistered children, racing ends ----------


async def test_nested_children_resume_after_a_restart_with_one_slot(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    leaf = tf.workflow("leaf").step("tick", *journal.saga("tick", held=lambda who: True)).build()
    mid = tf.workflow("invoice").child("deeper", workflow="leaf").build()
    workflows = (billing_batch(max_concurrency=2), mid, leaf)
    async with rig.engine(*workflows, max_running=1) as engine:
        iid = await engine.start("batch", ["A", "B", "C"])
        await trio.sleep(10)
    journal.gate.set()
    async with rig.engine(*workflows, max_running=1) as engine:
        inst = await finish(engine, iid)
    assert (inst.status, inst.output) == ("completed", ["tick-A", "tick-B", "tick-C"])


async def test_cancelling_a_parent_mid_map_undoes_what_its_items_completed_newest_first(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    branch = line(journal, reserve={"seconds": lambda who: 1 + who % 2}, charge={"seconds": lambda who: 3})
    async with rig.engine(batch(branch, max_concurrency=2)) as engine:
        iid = await engine.start("batch", list(range(6)))
        await trio.sleep(9.5)
        assert await engine.cancel(iid)
        inst = await finish(engine, iid)
    assert inst.status == "cancelled"
    completed = journal.did()
    assert 0 < len(completed) < 12
    assert journal.undid() == completed[::-1]
    assert sorted(set(journal.cancelled)) == sorted(set(journal.calls) - set(completed))


async def test_a_completed_child_whose_workflow_is_gone_after_a_restart_is_a_compensation_error(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    parent = failing_order(journal, held=lambda who: True)
    iid = await rig.stop_after(10, "X", parent, invoice(journal))
    journal.gate.set()
    inst = await rig.resume(iid, parent)  # "invoice" is not registered any more
    assert inst.status == "failed"
    assert "ChildCompensationError" in inst.compensation_errors.get("bill", ""), inst.compensation_errors
    assert journal.undid() == [("hold", "X")]
    assert rig.seen[f"{iid}/bill#1"].status == "completed"


@pytest.mark.parametrize("at", [4.0, 4.999, 5.0, 5.001, 6.0])
async def test_a_cancel_racing_a_childs_end_leaves_none_of_the_childs_work_done(
        autojump_clock: trio.testing.MockClock, rig: Rig, at: float) -> None:
    journal = Journal()
    child = (tf.workflow("invoice").step("reserve", *journal.saga("reserve"))
             .step("charge", *journal.saga("charge", seconds=lambda who: 5)).build())
    parent = (tf.workflow("order").child("bill", workflow="invoice")
              .step("ship", *journal.saga("ship", seconds=lambda who: 100)).build())
    async with rig.engine(parent, child) as engine:
        iid = await engine.start("order", "X")
        await trio.sleep(at)
        assert await engine.cancel(iid)
        inst = await finish(engine, iid)
        billed = await finish(engine, f"{iid}/bill#1")
    assert inst.status == "cancelled"
    assert billed.status in ("cancelled", "compensated")
    assert Counter(journal.undid()) == Counter(journal.did())


async def test_a_completed_child_purged_before_its_parent_compensates_is_a_compensation_error(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    parent = failing_order(journal, held=lambda who: True)
    kept = rig.storage
    # (An adapter that keeps no parents: one that does keeps the child while its parent is stored.)
    rig.storage = lambda: written_before_parents(kept())
    async with rig.engine(parent, invoice(journal)) as engine:
        iid = await engine.start("order", "X")
        await trio.sleep(10)
        assert await engine.purge(older_than=1, workflow="invoice") == 1
        journal.gate.set()
        inst = await finish(engine, iid)
    assert inst.status == "failed"
    assert "ChildCompensationError" in inst.compensation_errors.get("bill", ""), inst.compensation_errors
    assert journal.undid() == [("hold", "X")]
    assert inst.compensated_steps == ("hold",)


async def test_a_map_of_children_run_again_by_a_loop_starts_new_children_for_the_new_items(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    parent = (tf.workflow("batch")
              .map("each", items=lambda ctx: ["A", "B"] if not ctx.get("round") else ["C"],
                   branch=tf.branch("one").child("bill", workflow="invoice").build())
              .pass_("count", transform=lambda ctx: ctx.set("round", (ctx.get("round") or 0) + 1))
              .choice("again", choices=[tf.when(lambda ctx: ctx.get("round") < 2, next="each")], default="done")
              .pass_("done", transform=lambda ctx: ctx.steps["each"])
              .build())
    inst = await rig.run(None, parent, invoice(journal))
    assert (inst.status, inst.output) == ("completed", ["charge-C"])
    assert len(set(inst.children)) == len(inst.children) == 3
    assert sorted(c.input for c in rig.children_of(inst)) == ["A", "B", "C"]
    assert journal.calls[("charge", "C")] == 1


async def test_children_in_parallel_branches_are_started_once_across_a_restart(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    journal = Journal()
    parent = (tf.workflow("order")
              .parallel("both", branches=[
                  tf.branch("first").child("bill-a", workflow="invoice", input=lambda ctx: "A").build(),
                  tf.branch("second").child("bill-b", workflow="invoice", input=lambda ctx: "B").build()])
              .build())
    child = invoice(journal, held=lambda who: True)
    iid = await rig.stop_after(10, None, parent, child)
    journal.gate.set()
    inst = await rig.resume(iid, parent, child)
    assert (inst.status, inst.output) == ("completed", {"first": "charge-A", "second": "charge-B"})
    assert sorted(inst.children) == [f"{iid}/both/first/bill-a#1", f"{iid}/both/second/bill-b#1"]
    assert [journal.calls[("reserve", w)] for w in "AB"] == [1, 1]
    assert sum(1 for i in rig.seen.values() if i.workflow_name == "invoice") == 2


async def test_an_items_execution_id_is_the_same_when_a_restart_runs_it_again(
        autojump_clock: trio.testing.MockClock, rig: Rig) -> None:
    seen: list[tuple[Any, str]] = []
    gate = trio.Event()

    async def work(ctx: tf.WorkflowContext) -> str:
        seen.append((ctx.item, tf.current_step().execution_id))
        if ctx.item == "B":
            await gate.wait()
        return str(tf.current_step().execution_id)

    wf = batch(tf.branch("line").step("work", work).build())
    iid = await rig.stop_after(10, ["A", "B"], wf)
    gate.set()
    inst = await rig.resume(iid, wf)
    assert inst.output == ["each/#0/work#1", "each/#1/work#1"]
    assert sorted(seen) == [("A", "each/#0/work#1"), ("B", "each/#1/work#1"), ("B", "each/#1/work#1")]
    # the item list is in the map execution's start record, stored once, before any item ran
    assert [(r.status, r.input) for r in inst.history if r.step_name == "each" and r.status == "started"] == [
        ("started", ["A", "B"])]
