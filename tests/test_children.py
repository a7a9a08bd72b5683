"""Child workflows and nested sagas (SPEC §14, issue 15).

What a user relies on: a child's output is its step's output; parent and child are linked
(``parent_id``, ``children``) by an id that is the same after a restart, so a resume never starts
a child twice; a parent waiting on its child holds no task and no ``max_running`` slot; a child
that fails fails the step (catchable, by the child's own error); cancelling a parent cancels its
running children and theirs; when a parent compensates, each completed child is compensated as a
unit at its step's place, and says so; a map whose branch starts a child per item.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
import trioflow as tf
from storages import storage  # noqa: F401  (a fixture: tests taking it run on both adapters)
from trioflow.adapters import Adapter, MemoryAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


class Declined(Exception):
    pass


async def run_all(adapter: Adapter, *workflows: tf.WorkflowDefinition, input: Any = None,
                  **options: Any) -> tuple[tf.WorkflowInstance, dict[str, tf.WorkflowInstance]]:
    """Run the first workflow; returns it and every instance stored, by id."""
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock(), **options) as engine:
        for wf in workflows:
            engine.register(wf)
        inst = await engine.wait(await engine.start(workflows[0].name, input))
        stored: dict[str, tf.WorkflowInstance] = {}
        for wf in workflows:
            for i in await engine.get_instances(wf.name):
                stored[i.id] = i
        return inst, stored


def invoice_saga(log: list[str], *, decline: Callable[[Any], bool] = lambda _: False) -> tf.WorkflowDefinition:
    async def reserve(ctx: tf.WorkflowContext) -> str:
        log.append(f"reserve {ctx.input}")
        return f"r-{ctx.input}"

    async def release(ctx: tf.WorkflowContext, result: str) -> None:
        log.append(f"release {result}")

    async def charge(ctx: tf.WorkflowContext) -> str:
        if decline(ctx.input):
            raise Declined(f"card for {ctx.input} declined")
        log.append(f"charge {ctx.input}")
        return f"c-{ctx.input}"

    async def refund(ctx: tf.WorkflowContext, result: str) -> None:
        log.append(f"refund {result}")

    return (tf.workflow("invoice").step("reserve", reserve, release).step("charge", charge, refund)
            .pass_("receipt", transform=lambda ctx: {"invoice": ctx.input, "paid": ctx.steps["charge"]}).build())


# -- outputs and links ----------------------------------------------------------------------------


async def test_the_childs_output_is_the_steps_output_and_both_are_linked(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    parent = (tf.workflow("order").child("bill", workflow="invoice", input=lambda ctx: ctx.input["invoice"])
              .pass_("done", transform=lambda ctx: ctx.steps["bill"]).build())
    inst, stored = await run_all(storage(), parent, invoice_saga(log), input={"invoice": "A1"})
    assert (inst.status, inst.output) == ("completed", {"invoice": "A1", "paid": "c-A1"})
    (child_id,) = inst.children
    assert child_id == f"{inst.id}/bill#1"
    child = stored[child_id]
    assert (child.status, child.parent_id, child.input) == ("completed", inst.id, "A1")
    assert inst.parent_id is None
    assert [r.status for r in inst.history if r.step_name == "bill"] == ["started", "completed"]


async def test_the_child_input_defaults_to_the_workflow_input(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    echo = tf.workflow("echo").pass_("same", transform=lambda ctx: ctx.input).build()
    parent = tf.workflow("p").child("c", workflow="echo").build()
    inst, _ = await run_all(storage(), parent, echo, input={"x": [1, 2]})
    assert inst.output == {"x": [1, 2]}


async def test_a_parent_waiting_on_its_child_holds_no_slot(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """With one slot, a parent that held it while waiting would wait forever for its child."""
    async def slow(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(5)
        return int(ctx.input) + 1

    child = tf.workflow("slow").step("work", slow).build()
    parent = tf.workflow("p").child("c", workflow="slow", input=lambda ctx: ctx.input).build()
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock(), max_running=2) as engine:
        engine.register(parent)
        engine.register(child)
        ids = [await engine.start("p", i) for i in range(20)]
        results = [await engine.wait(i) for i in ids]
    assert [r.output for r in results] == [i + 1 for i in range(20)]


async def test_a_map_can_start_a_child_per_item(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    parent = (tf.workflow("batch")
              .map("each", items=lambda ctx: ctx.input, max_concurrency=3,
                   branch=tf.branch("one").child("bill", workflow="invoice", input=lambda ctx: ctx.item).build())
              .build())
    inst, stored = await run_all(storage(), parent, invoice_saga(log), input=["A", "B", "C", "D", "E"],
                                 max_running=2)
    assert inst.status == "completed"
    assert inst.output == [{"invoice": x, "paid": f"c-{x}"} for x in "ABCDE"]
    assert sorted(inst.children) == sorted(f"{inst.id}/each/#{i}/bill#1" for i in range(5))
    assert all(stored[c].parent_id == inst.id for c in inst.children)


class CountedSignalReads(MemoryAdapter):
    """Counts the reads of each instance's stored signals; each read lets other tasks run
    while it is in flight, as SQLite's does."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    async def signals(self, instance_id: str) -> list[tuple[int, str, bytes]]:
        self.reads[instance_id] += 1
        await trio.sleep(0)
        return await super().signals(instance_id)


async def test_the_items_of_a_map_waiting_on_children_read_none_of_the_parents_signals(
        autojump_clock: trio.testing.MockClock) -> None:
    """A parent started here looks in storage for no signal: every one sent to it (its
    children's end notices too) is handed to it as it is stored. (Ten items read ten times
    once, each read longer than the last; then once, shared.)"""
    log: list[str] = []
    parent = (tf.workflow("batch")
              .map("each", items=lambda ctx: ctx.input,
                   branch=tf.branch("one").child("bill", workflow="invoice", input=lambda ctx: ctx.item).build())
              .build())
    adapter = CountedSignalReads()
    inst, _ = await run_all(adapter, parent, invoice_saga(log), input=list("ABCDEFGHIJ"))
    assert inst.status == "completed"
    assert inst.output == [{"invoice": x, "paid": f"c-{x}"} for x in "ABCDEFGHIJ"]
    assert adapter.reads[inst.id] == 0


async def test_the_items_of_a_resumed_map_read_the_instances_signals_once(
        autojump_clock: trio.testing.MockClock) -> None:
    """Resumed, an instance looks for the signals stored for it before it ran here, once: its
    items that ask while the read is in flight share it, and each takes one of them."""
    wf = (tf.workflow("inbox")
          .map("each", items=lambda ctx: ctx.input, branch=tf.branch("one").receive("get", signal="go").build())
          .build())
    adapter = CountedSignalReads()
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("inbox", list(range(10)))
        await trio.sleep(0.1)  # its items wait (in memory: they rest for a second first)
    for n in range(10):
        assert await adapter.send_signal(iid, "go", msgpack.packb(n)) is not None
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        inst = await engine.wait(iid)
    assert inst.status == "completed"
    assert sorted(inst.output) == list(range(10))
    assert adapter.reads[iid] == 1


async def test_a_signal_sent_while_the_instance_is_being_stored_reaches_its_run(
        autojump_clock: trio.testing.MockClock) -> None:
    """A signal sent to an instance whose start is still being stored (its id given) is
    handed to the run the start makes, which looks for none in storage."""
    class SlowCreates(MemoryAdapter):
        async def create(self, *args: Any, **kwargs: Any) -> bool:
            created = await super().create(*args, **kwargs)
            await trio.sleep(1.0)  # stored, the answer not back yet
            return created

    wf = tf.workflow("one").receive("get", signal="go").build()
    async with open_test_engine(adapter=SlowCreates(), clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(engine.start, "one", instance_id="the-id"))
            await trio.sleep(0.5)
            await engine.signal("the-id", "go", "early")
        with trio.fail_after(60):
            inst = await engine.wait("the-id")
    assert inst.status == "completed" and inst.output == "early"


class SilentNotices(MemoryAdapter):
    """An adapter written before checkpoints returned the seq of the end notice they store."""

    async def checkpoint(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        await super().checkpoint(*args, **kwargs)


class TruthyNotices(MemoryAdapter):
    """One from before that returned something else (a row count, say): not taken for a seq."""

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        await super().checkpoint(*args, **kwargs)
        return True


@pytest.mark.parametrize("adapter", [MemoryAdapter, SilentNotices, TruthyNotices])
async def test_a_parent_gets_its_childrens_ends_whether_or_not_the_adapter_says_where_it_stored_them(
        autojump_clock: trio.testing.MockClock, adapter: Callable[[], Adapter]) -> None:
    """The engine hands a stored end notice to a parent that runs here (its seq came back from
    the child's last checkpoint) or, from an adapter that says nothing, reads it from storage."""
    log: list[str] = []
    parent = (tf.workflow("batch")
              .map("each", items=lambda ctx: ctx.input,
                   branch=tf.branch("one").child("bill", workflow="invoice").build())
              .build())
    inst, stored = await run_all(adapter(), parent, invoice_saga(log), input=list("ABCDEFGH"))
    assert inst.status == "completed"
    assert inst.output == [{"invoice": x, "paid": f"c-{x}"} for x in "ABCDEFGH"]
    assert all(stored[c].status == "completed" for c in inst.children)


# -- failures --------------------------------------------------------------------------------------


async def test_a_failed_child_fails_the_step_with_its_own_error(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    parent = tf.workflow("order").child("bill", workflow="invoice", input=lambda ctx: "A1").build()
    inst, stored = await run_all(storage(), parent, invoice_saga(log, decline=lambda _: True))
    assert inst.status == "failed"
    assert (inst.error_name, inst.cause, inst.failed_step) == ("Declined", "card for A1 declined", "bill")
    assert inst.error is not None and inst.error.startswith("ChildWorkflowError: child")
    child = stored[inst.children[0]]
    assert child.status == "failed" and child.compensated_steps == ("reserve",)
    assert log == ["reserve A1", "release r-A1"]  # the child compensated itself, once


async def test_a_catch_routes_a_failed_child_by_the_childs_error(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []
    parent = (tf.workflow("order")
              .child("bill", workflow="invoice", input=lambda ctx: "A1",
                     catch=[tf.Catch(errors=["Declined"], next="apologise")])
              .succeed("paid")
              .pass_("apologise", transform=lambda ctx: ctx.error)
              .build())
    inst, _ = await run_all(storage(), parent, invoice_saga(log, decline=lambda _: True))
    assert (inst.status, inst.output) == ("completed", {"error": "Declined", "cause": "card for A1 declined"})


async def test_an_unknown_child_workflow_fails_the_step(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    parent = tf.workflow("order").child("bill", workflow="nobody").build()
    inst, _ = await run_all(storage(), parent)
    assert (inst.status, inst.error_name, inst.failed_step) == ("failed", "UnknownWorkflowError", "bill")
    assert inst.children == ()


async def test_execute_workflow_refuses_child_steps_clearly() -> None:
    parent = tf.workflow("order").child("bill", workflow="invoice").build()
    result = await tf.execute_workflow(None, parent)
    assert result.status == "failed"
    assert "needs an engine" in str(result.error)


async def test_signal_names_trioflow_sends_itself_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(tf.DefinitionError, match="not starting with 'trioflow.'"):
        tf.workflow("w").receive("r", signal="trioflow.child-ended:x").build()
    wf = tf.workflow("w").receive("r", signal="go").build()
    async with open_test_engine(clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        with pytest.raises(tf.InvalidArgumentError, match="trioflow."):
            await engine.signal(iid, "trioflow.child-ended:x", {"status": "completed"})
        await engine.cancel(iid)


# -- cancel and resume --------------------------------------------------------------------------


async def test_cancelling_a_parent_cancels_its_children_and_theirs(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    async def forever(ctx: tf.WorkflowContext) -> None:
        await trio.sleep_forever()

    grandchild = tf.workflow("grand").step("hang", forever).build()
    child = tf.workflow("child").child("deeper", workflow="grand").build()
    parent = tf.workflow("parent").child("first", workflow="child").build()
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as engine:
        for wf in (parent, child, grandchild):
            engine.register(wf)
        iid = await engine.start("parent")
        await trio.sleep(10)
        assert await engine.cancel(iid)
        assert (await engine.wait(iid)).status == "cancelled"
        child_id = f"{iid}/first#1"
        assert (await engine.wait(child_id)).status == "cancelled"
        assert (await engine.wait(f"{child_id}/deeper#1")).status == "cancelled"


async def test_a_resume_never_starts_a_child_twice(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    calls: Counter[str] = Counter()
    gate = trio.Event()

    async def work(ctx: tf.WorkflowContext) -> str:
        calls[ctx.metadata.id] += 1
        await gate.wait()  # never set while the first engine runs
        return "done"

    child = tf.workflow("child").step("work", work).build()
    parent = tf.workflow("parent").child("c", workflow="child").pass_("after", transform=lambda c: c.steps["c"]).build()
    clock = virtual_wall_clock()
    async with open_test_engine(adapter=storage(), clock=clock) as engine:
        engine.register(parent)
        engine.register(child)
        iid = await engine.start("parent")
        await trio.sleep(5)
    gate.set()
    async with open_test_engine(adapter=storage(), clock=clock) as engine:
        engine.register(parent)
        engine.register(child)
        inst = await engine.wait(iid)
        assert (inst.status, inst.output) == ("completed", "done")
        assert len(await engine.get_instances("child")) == 1
    assert list(calls.values()) == [2]  # the one child, interrupted once, run again


# -- nested sagas -----------------------------------------------------------------------------------


async def test_a_parent_compensates_each_completed_child_as_a_unit_in_its_reverse_order(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    log: list[str] = []

    async def hold(ctx: tf.WorkflowContext) -> str:
        log.append("hold")
        return "h"

    async def unhold(ctx: tf.WorkflowContext, result: str) -> None:
        log.append("unhold")

    async def ship(ctx: tf.WorkflowContext) -> None:
        raise Declined("no courier")

    parent = (tf.workflow("order")
              .step("hold", hold, unhold)
              .child("bill-a", workflow="invoice", input=lambda ctx: "A")
              .child("bill-b", workflow="invoice", input=lambda ctx: "B")
              .step("ship", ship)
              .build())
    inst, stored = await run_all(storage(), parent, invoice_saga(log))
    assert inst.status == "failed"
    assert log == [
        "hold", "reserve A", "charge A", "reserve B", "charge B",
        # newest first: child B as a unit (its own steps newest first), child A, then hold
        "refund c-B", "release r-B", "refund c-A", "release r-A", "unhold",
    ]
    assert inst.compensated_steps == ("bill-b", "bill-a", "hold")
    for child_id in inst.children:
        child = stored[child_id]
        assert child.status == "compensated"
        assert child.compensated_steps == ("charge", "reserve")
        assert child.output is None


async def test_a_child_whose_compensation_fails_is_reported_on_the_parent(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    async def take(ctx: tf.WorkflowContext) -> str:
        return "t"

    async def cannot(ctx: tf.WorkflowContext, result: str) -> None:
        raise RuntimeError("ledger closed")

    async def boom(ctx: tf.WorkflowContext) -> None:
        raise Declined("late")

    child = tf.workflow("child").step("take", take, cannot).build()
    parent = tf.workflow("p").child("c", workflow="child").step("boom", boom).build()
    inst, stored = await run_all(storage(), parent, child)
    assert inst.status == "failed"
    assert "c" in inst.compensation_errors
    assert "ledger closed" in inst.compensation_errors["c"]
    assert stored[inst.children[0]].compensation_errors == {"take": "RuntimeError: ledger closed"}


async def test_children_of_map_items_started_while_siblings_record_steps(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """Starting a child awaits storage; sibling items record their steps meanwhile. The child
    step's start record must take its place after theirs (it once took the place it would have
    had before the wait, and the instance could no longer be read)."""
    async def pre(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(ctx.item % 3)
        return int(ctx.item)

    async def slow_child(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(1 + ctx.input % 4)
        return int(ctx.input) * 10

    child = tf.workflow("tens").step("times", slow_child).build()
    parent = (tf.workflow("batch")
              .map("each", items=lambda ctx: list(range(12)),
                   branch=tf.branch("one").step("pre", pre).child("kid", workflow="tens",
                                                                  input=lambda ctx: ctx.item).build())
              .build())
    adapter = storage()
    inst, _ = await run_all(adapter, parent, child)
    assert (inst.status, inst.output) == ("completed", [i * 10 for i in range(12)])
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as engine:
        engine.register(parent)
        engine.register(child)
        again = await engine.get_instance(inst.id)  # read back from storage
        assert again is not None and (again.status, again.output) == ("completed", inst.output)
        assert [r.seq for r in again.history] == list(range(len(again.history))) and len(again.history) > 36


async def test_a_child_id_taken_by_an_instance_that_is_not_the_parents_child_fails_the_step(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """A parent deleted (purged) and started again under its id, or an instance a caller started
    under the child's id: the child step must not take that instance for its child (it would
    wait for ever for an end notice nobody sends)."""
    async def boom(ctx: tf.WorkflowContext) -> None:
        if ctx.input == "fail":
            raise Declined("first attempt fails")

    leaf = tf.workflow("leaf").pass_("leaf-done", result="leaf").build()
    parent = tf.workflow("p").child("c", workflow="leaf").step("b", boom).build()
    async with open_test_engine(adapter=storage(), clock=virtual_wall_clock()) as engine:
        engine.register(parent)
        engine.register(leaf)
        first = await engine.wait(await engine.start("p", "fail", instance_id="ORD-7"))
        assert first.status == "failed"
        assert (await engine.wait("ORD-7/c#1")).status == "compensated"
        assert await engine.purge(older_than=0, workflow="p") == 1  # the parent only
        again = await engine.wait(await engine.start("p", "retry", instance_id="ORD-7"))
        assert (again.status, again.error_name, again.failed_step) == ("failed", "InstanceIdConflictError", "c")
        assert "not that instance's child" in (again.cause or "")

        await engine.start("leaf", None, instance_id="X/c#1")  # a caller's instance with the child's id
        other = await engine.wait(await engine.start("p", "ok", instance_id="X"))
        assert (other.status, other.error_name) == ("failed", "InstanceIdConflictError")


@pytest.mark.parametrize("errors", [["Declined"], ["ChildWorkflowError"], [tf.ChildWorkflowError], [Declined]])
async def test_a_failed_child_is_caught_by_its_own_error_or_as_a_child_failure(
        autojump_clock: trio.testing.MockClock, errors: list[Any]) -> None:
    async def declined(ctx: tf.WorkflowContext) -> None:
        raise Declined("no")

    child = tf.workflow("kid").step("pay", declined).build()
    parent = (tf.workflow("p").child("c", workflow="kid", catch=[tf.Catch(errors=errors, next="caught")])
              .succeed("fine").pass_("caught", transform=lambda ctx: ctx.error).build())
    inst, _ = await run_all(MemoryAdapter(), parent, child)
    assert (inst.status, inst.output) == ("completed", {"error": "Declined", "cause": "no"})


async def test_in_a_map_item_the_child_input_defaults_to_the_item_and_may_come_from_async_callables(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    async def items(ctx: tf.WorkflowContext) -> list[str]:
        return ["a", "b"]

    async def shout(ctx: tf.WorkflowContext) -> str:
        return f"{ctx.item}!"

    echo = tf.workflow("echo").pass_("same", transform=lambda ctx: ctx.input).build()
    parent = (tf.workflow("p")
              .map("plain", items=items, branch=tf.branch("x").child("default", workflow="echo").build())
              .map("async", items=items, branch=tf.branch("y").child("mapped", workflow="echo", input=shout).build())
              .pass_("both", transform=lambda ctx: [ctx.steps["plain"], ctx.steps["async"]])
              .build())
    inst, _ = await run_all(storage(), parent, echo, input="the workflow input")
    assert (inst.status, inst.output) == ("completed", [["a", "b"], ["a!", "b!"]])


async def test_a_child_that_fails_alone_on_a_changed_definition_still_tells_its_parent(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """A child stopped while compensating, then taken up under a definition it no longer fits,
    fails alone without running anything: its parent must still hear of that end."""
    gate = trio.Event()

    async def keep(ctx: tf.WorkflowContext) -> str:
        return "kept"

    async def undo_slowly(ctx: tf.WorkflowContext, result: str) -> None:
        await gate.wait()  # never set: the first engine stops during this compensation

    async def fails(ctx: tf.WorkflowContext) -> None:
        raise Declined("no")

    kid = tf.workflow("kid").step("keep", keep, undo_slowly).step("fails", fails).build()
    changed = tf.workflow("kid").step("other", keep).build()  # "fails" and "keep" are gone
    parent = tf.workflow("p").child("c", workflow="kid").build()
    clock = virtual_wall_clock()
    async with open_test_engine(adapter=storage(), clock=clock) as engine:
        engine.register(parent)
        engine.register(kid)
        iid = await engine.start("p")
        await trio.sleep(5)
        child = await engine.get_instance(f"{iid}/c#1")
        assert child is not None and child.status == "running"  # compensating, stopped in undo_slowly
    async with open_test_engine(adapter=storage(), clock=clock) as engine:
        engine.register(parent)
        engine.register(changed)
        with trio.fail_after(600):
            inst = await engine.wait(iid)
        assert (inst.status, inst.error_name) == ("failed", "DefinitionMismatchError")


async def test_a_parent_resumed_at_register_finds_a_child_workflow_registered_right_after_it(
        autojump_clock: trio.testing.MockClock) -> None:
    """docs/fanout.md: ``register()`` resumes a workflow's unfinished instances once the
    registering task next awaits, so a service that registers a parent and then its child
    workflow, with no await in between, has the parent find its child's workflow."""
    adapter = MemoryAdapter()
    blocking = True

    async def prepare(ctx: tf.WorkflowContext) -> str:
        if blocking:
            await trio.sleep_forever()  # the first engine stops here
        return "prepared"

    log: list[str] = []
    parent = (tf.workflow("order").step("prepare", prepare)
              .child("bill", workflow="invoice", input=lambda ctx: "A1").build())
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(parent)
        engine.register(invoice_saga(log))
        iid = await engine.start("order")
        await trio.sleep(1)
    assert (await adapter.load(iid)) is not None
    blocking = False
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(parent)  # resumed from here on: its next step starts the child
        engine.register(invoice_saga(log))
        inst = await engine.wait(iid)
    assert (inst.status, inst.output) == ("completed", {"invoice": "A1", "paid": "c-A1"})
    assert log == ["reserve A1", "charge A1"]
