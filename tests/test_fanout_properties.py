"""Map steps and child workflows as properties (SPEC §14, issue 15), and crash exploration of both.

- generated maps (``workflows(maps=True)``): outputs in item order whatever order items end in
  (random per-item sleeps on virtual time, ties included); every completed step execution, item
  steps included, compensated exactly once on failure, newest first; the status and error the
  model predicts, catches included;
- ``tolerated_failures`` at its boundaries: a count or a fraction, fail-fast and wait-all, the
  step completes iff no more items fail than it tolerates, and tolerated failed slots hold
  ``{"error", "cause"}``;
- generated families (a parent and the child workflows its child steps start, some from map
  items, children of children; one, two or plenty of ``max_running`` slots): the status and
  output the model predicts; every completed execution in the family compensated exactly once
  when the root fails, a child's compensations as a unit at its step's place, newest first;
  each child started once, by a parent that lists it;
- ``explore_crashes`` at every checkpoint of a map and of a parent with children (``also=``),
  on memory and SQLite, over fixed and generated workflows;
- what these found, each pinned by a test of its own: a fraction tolerated one failure too few
  (``0.29 * 100`` is ``28.999...``); a fail-fast map counted the items it cancelled as failed;
  a child that completed as its step was cancelled (by a fail-fast sibling or its parent's own
  cancel) was never compensated; grandchildren waited for the slot their grandparent held.
"""

from __future__ import annotations

import itertools
import math
import re
import tempfile
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow._definition import MapStep, TaskStep
from trioflow.adapters import Adapter, MemoryAdapter, SQLiteAdapter
from trioflow.testing import explore_crashes, open_test_engine, virtual_wall_clock
from trioflow.testing.strategies import GeneratedWorkflow, ScriptedFailure, task_steps, workflows


def run_generated(gen: GeneratedWorkflow) -> tf.WorkflowInstance:
    """Run ``gen`` on a test engine (virtual time: the items' sleeps take none), sending its
    signals right after the start."""
    gen.reset()

    async def main() -> tf.WorkflowInstance:
        async with open_test_engine(clock=virtual_wall_clock()) as engine:
            for name, job in gen.jobs.items():
                engine.jobs.register(name, job)
            engine.register(gen.definition)
            instance_id = await engine.start("generated", gen.input)
            for name, payload in gen.signals:
                await engine.signal(instance_id, name, payload)
            return await engine.wait(instance_id)

    return tf.testing.run(main)


def map_steps(gen: GeneratedWorkflow) -> list[MapStep]:
    return [s for s, _ in gen.definition.lookup.values() if isinstance(s, MapStep)]


# -- generated maps --------------------------------------------------------------------------------


@given(workflows(maps=True, catches=True))
def test_generated_maps_give_item_order_and_end_as_the_model_says(gen: GeneratedWorkflow) -> None:
    instance = run_generated(gen)
    assert instance.status == gen.expected_status()
    if instance.status == "failed":
        assert instance.error_name in gen.expected_error_names()
    for step in map_steps(gen):
        expected = gen.expected_map_output(step.name)
        for record in instance.history:
            if record.step_name == step.name and record.status in ("completed", "compensated"):
                # Whatever order the items ended in (their records are in that order), the
                # output is in item order.
                assert record.output == expected, step.name
            if record.step_name == step.name and record.status == "caught":
                assert expected is None, f"{step.name} tolerates its failures but was caught"


@given(workflows(maps=True))
def test_generated_maps_compensate_every_completed_execution_once_newest_first(gen: GeneratedWorkflow) -> None:
    instance = run_generated(gen)
    compensable = {s.name for s in task_steps(gen.definition) if s.compensate is not None}
    ran = [r for r in instance.history if r.status in ("completed", "compensated") and r.step_name in compensable]
    if instance.status == "completed":
        assert instance.compensated_steps == ()
        assert all(r.status == "completed" for r in ran)
        assert not any(c.compensating for script in gen.item_scripts.values() for c in script.calls)
        return
    errors = set(instance.compensation_errors)
    kept = [r for r in ran if r.status == "completed"]
    assert all(r.step_name in errors for r in kept), "a completed execution was not compensated"
    assert list(instance.compensated_steps) == [r.step_name for r in reversed(ran) if r.status == "compensated"]
    for name, script in gen.item_scripts.items():
        undone = [c.execution_id for c in script.calls if c.compensating]
        # Item steps always compensate: one call per completed execution, newest first.
        assert undone == [r.id for r in reversed(ran) if r.step_name == name], name
        # The compensation ran with the item it undoes (ctx.item_index).
        assert all(f"/#{c.index}/" in c.execution_id for c in script.calls if c.compensating)


# -- tolerated failures ----------------------------------------------------------------------------


async def failing_items(ctx: tf.WorkflowContext) -> Any:
    await trio.sleep(ctx.item["sleep"])
    if ctx.item["fails"]:
        raise ScriptedFailure(f"item {ctx.item_index} declined")
    return ctx.item_index


@st.composite
def tolerance_cases(draw: st.DrawFn) -> tuple[list[dict[str, Any]], int | float, int]:
    """Items (each failing or not, sleeping a while), ``tolerated_failures``, and how many
    failures that tolerates: a count, or a fraction written as ``k / n`` or as a short decimal."""
    count = draw(st.integers(0, 40))
    failing = draw(st.sets(st.integers(0, count - 1), max_size=count)) if count else set()
    items = [{"fails": i in failing, "sleep": draw(st.sampled_from((0, 1, 2)))} for i in range(count)]
    kind = draw(st.sampled_from(("count", "ratio", "decimal")))
    if kind == "count":
        allowed: int | float = draw(st.integers(0, count + 1))
        return items, allowed, int(allowed)
    if kind == "ratio" and count:
        k = draw(st.integers(0, count))
        return items, k / count, k  # a user's k / n tolerates exactly k of n
    allowed = draw(st.integers(0, 100)) / 100
    exact = Fraction(repr(allowed)) * count  # 0.29 of 40 items: 11.6, so 11
    return items, allowed, math.floor(exact)


@given(tolerance_cases(), st.sampled_from(("fail-fast", "wait-all")), st.sampled_from((None, 1, 3)))
def test_a_map_completes_iff_no_more_items_fail_than_it_tolerates(
        case: tuple[list[dict[str, Any]], int | float, int], on_error: str, bound: int | None) -> None:
    items, allowed, tolerates = case
    failures = sum(item["fails"] for item in items)
    wf = (tf.workflow("tolerant")
          .map("each", items=lambda ctx: ctx.input, branch=tf.branch("b").step("work", failing_items).build(),
               tolerated_failures=allowed, on_error=on_error, max_concurrency=bound)  # type: ignore[arg-type]
          .build())

    async def main() -> tf.WorkflowInstance:
        async with open_test_engine(clock=virtual_wall_clock()) as engine:
            engine.register(wf)
            return await engine.wait(await engine.start("tolerant", items))

    instance = tf.testing.run(main)
    assert (instance.status == "completed") is (failures <= tolerates), (failures, tolerates)
    if instance.status == "completed":
        assert instance.output == [
            {"error": "ScriptedFailure", "cause": f"item {i} declined"} if item["fails"] else i
            for i, item in enumerate(items)]
    elif on_error == "fail-fast" and tolerates == 0:
        assert (instance.error_name, instance.failed_step) == ("ScriptedFailure", "work")
    else:
        assert (instance.error_name, instance.failed_step) == ("MapError", "each")
        found = re.match(r"map step 'each': (\d+) of (\d+) items failed, (\d+) tolerated", instance.cause or "")
        assert found is not None, instance.cause
        failed, total, told = map(int, found.groups())
        assert (total, told) == (len(items), tolerates)
        # Fail-fast stops at one failure too many (more, when several end at the same instant).
        assert failed == failures if on_error == "wait-all" else tolerates < failed <= failures


# -- generated families: a parent and the children its steps start ---------------------------------


#: How long a generated task sleeps, and how many of its attempts fail (9: all of them).
SLEEPS = (0.0, 0.5, 1.0, 3.0)
FAILURES = (0, 0, 0, 1, 9)


@attrs.frozen(kw_only=True)
class Part:
    """One step of a generated family workflow: a task, a child step, or a map whose branch is
    one task (``map-task``) or one child step (``map-child``)."""

    kind: str
    name: str
    compensated: bool = False
    attempts: int = 1
    child: Spec | None = None
    on_error: str = "fail-fast"
    tolerated: int | float = 0
    bound: int | None = None

    @property
    def inner(self) -> str:
        """The name of the one step of a map's branch."""
        return f"{self.name}-each"


@attrs.frozen(kw_only=True)
class Spec:
    """A generated workflow: its name and its steps, in order."""

    name: str
    parts: tuple[Part, ...]


class Journal:
    """The one job of every task step of a family: it does what the instance's input (or, in
    a map item, the item) plans for the step, keyed by attempt so that a step run again after a
    restart does the same, and logs every call, compensations included, in the order made."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, int]] = []

    async def run(self, ctx: tf.WorkflowContext) -> list[Any]:
        info = tf.current_step()
        self.calls.append((info.instance_id, info.execution_id, "do", info.attempt))
        source = ctx.item if ctx.item_index is not None else ctx.input
        seconds, failures = source["plan"][info.step_name]
        if seconds:
            await trio.sleep(seconds)
        if info.attempt <= failures:
            raise ScriptedFailure(f"{info.step_name} of {source['tag']} declined")
        return [info.step_name, source["tag"]]

    async def undo(self, ctx: tf.WorkflowContext, result: Any) -> None:
        info = tf.current_step()
        self.calls.append((info.instance_id, info.execution_id, "undo", info.attempt))


#: A failed item's slot in a model's output: any ``{"error", "cause"}`` (a child's error is
#: its own failing step's).
SLOT = "an error slot"


@attrs.frozen(kw_only=True, eq=False)
class Family:
    """A generated parent workflow (``definitions[0]``), the workflows its child steps start
    (the rest), the input of its instance, and the job they share."""

    spec: Spec
    definitions: tuple[tf.WorkflowDefinition, ...]
    input: dict[str, Any]
    journal: Journal
    max_running: int

    def outcome(self, spec: Spec | None = None, given: Any = None) -> tuple[bool, Any]:
        """Whether an instance of ``spec`` (default: the parent) with input ``given``
        completes, and its output if it does."""
        spec = spec or self.spec
        given = self.input if given is None else given
        output: Any = None
        for part in spec.parts:
            if part.kind == "task":
                if given["plan"][part.name][1] >= part.attempts:
                    return False, None
                output = [part.name, given["tag"]]
            elif part.kind == "child":
                assert part.child is not None
                ok, output = self.outcome(part.child, given["inputs"][part.name])
                if not ok:
                    return False, None
            else:
                items = given["items"][part.name]
                outs = []
                for item in items:
                    if part.kind == "map-task":
                        ok = item["plan"][part.inner][1] < part.attempts
                        out = [part.inner, item["tag"]]
                    else:
                        assert part.child is not None
                        ok, out = self.outcome(part.child, item)
                    outs.append(out if ok else SLOT)
                allowed = part.tolerated
                if isinstance(allowed, float):
                    allowed = math.floor(Fraction(repr(allowed)) * len(items))
                if outs.count(SLOT) > allowed:
                    return False, None
                output = outs
        return True, output

    def expected_status(self) -> str:
        return "completed" if self.outcome()[0] else "failed"


def _given(name: str) -> Callable[[tf.WorkflowContext], Any]:
    return lambda ctx: ctx.input["inputs"][name]


def _items_of(name: str) -> Callable[[tf.WorkflowContext], Any]:
    return lambda ctx: ctx.input["items"][name]


def _item(ctx: tf.WorkflowContext) -> Any:
    return ctx.item


@st.composite
def families(draw: st.DrawFn, *, max_parts: int = 3, max_depth: int = 2, max_items: int = 3) -> Family:
    """A parent workflow whose steps are tasks, child steps and maps (over tasks or child
    steps), its children's workflows likewise down to ``max_depth``, and an input that plans
    every task of every instance: how long it takes, how many attempts fail."""
    ids = itertools.count()
    journal = Journal()
    definitions: list[tf.WorkflowDefinition] = []

    def spec(depth: int) -> Spec:
        name = "family" if depth == 0 else f"child-{next(ids)}"
        kinds = ["task"] + (["child", "map-child"] if depth < max_depth else []) + ["map-task"]
        parts = []
        for _ in range(draw(st.integers(1, max_parts))):
            kind = draw(st.sampled_from(kinds))
            n = next(ids)
            child = spec(depth + 1) if kind in ("child", "map-child") else None
            parts.append(Part(
                kind=kind, name=f"{kind.split('-')[0]}{n}", child=child,
                compensated=kind != "child" and draw(st.booleans()), attempts=draw(st.integers(1, 2)),
                on_error=draw(st.sampled_from(("fail-fast", "wait-all"))),
                tolerated=draw(st.sampled_from((0, 0, 1, 0.5))), bound=draw(st.sampled_from((None, 1, 2))),
            ))
        made = Spec(name=name, parts=tuple(parts))
        definitions.append(build(made))
        return made

    def build(made: Spec) -> tf.WorkflowDefinition:
        builder = tf.workflow(made.name)
        for part in made.parts:
            retry = tf.Retry(max_attempts=part.attempts, interval=0.5)
            undo = journal.undo if part.compensated else None
            if part.kind == "task":
                builder.step(part.name, journal.run, undo, retry=retry)
                continue
            if part.kind == "child":
                assert part.child is not None
                builder.child(part.name, workflow=part.child.name, input=_given(part.name))
                continue
            body = tf.branch("item")
            if part.kind == "map-task":
                body.step(part.inner, journal.run, undo, retry=retry)
            else:
                assert part.child is not None
                body.child(part.inner, workflow=part.child.name, input=_item)
            builder.map(part.name, items=_items_of(part.name), branch=body.build(), on_error=part.on_error,  # type: ignore[arg-type]
                        tolerated_failures=part.tolerated, max_concurrency=part.bound)
        return builder.build()

    def given(made: Spec, tag: str) -> dict[str, Any]:
        out: dict[str, Any] = {"tag": tag, "plan": {}, "inputs": {}, "items": {}}
        for part in made.parts:
            if part.kind == "task":
                out["plan"][part.name] = plan()
            elif part.kind == "child":
                assert part.child is not None
                out["inputs"][part.name] = given(part.child, f"{tag}/{part.name}")
            else:
                items = []
                for i in range(draw(st.integers(0, max_items))):
                    if part.kind == "map-task":
                        items.append({"tag": f"{tag}/{part.name}[{i}]", "plan": {part.inner: plan()}})
                    else:
                        assert part.child is not None
                        items.append(given(part.child, f"{tag}/{part.name}[{i}]"))
                out["items"][part.name] = items
        return out

    def plan() -> list[float]:
        return [draw(st.sampled_from(SLEEPS)), draw(st.sampled_from(FAILURES))]

    root = spec(0)
    definitions.reverse()  # the parent first
    return Family(spec=root, definitions=tuple(definitions), input=given(root, "root"), journal=journal,
                  max_running=draw(st.sampled_from((100, 2, 1))))


async def run_family(family: Family, adapter: Adapter | None = None) -> dict[str, tf.WorkflowInstance]:
    """Run the family's parent; every instance stored once all have ended, by id (the parent's
    is ``"root"``)."""
    async with open_test_engine(adapter=adapter or MemoryAdapter(), clock=virtual_wall_clock(),
                                max_running=family.max_running) as engine:
        for definition in family.definitions:
            engine.register(definition)
        root = await engine.start("family", family.input, instance_id="root")
        await engine.wait(root)
        stored = {}
        for instance in await engine.get_instances():
            stored[instance.id] = await engine.wait(instance.id)  # a cancelled child may still compensate
        return stored


def definition_of(family: Family, instance: tf.WorkflowInstance) -> tf.WorkflowDefinition:
    return next(d for d in family.definitions if d.name == instance.workflow_name)


def check_family(family: Family, instances: dict[str, tf.WorkflowInstance]) -> None:
    """What must hold of a family's run, whatever order its steps ended in."""
    root = instances["root"]
    completes, output = family.outcome()
    assert root.status == family.expected_status()
    if completes:
        assert _fits(root.output, output), (root.output, output)
    undone: dict[str, list[str]] = {}
    for instance_id, execution, kind, _ in family.journal.calls:
        if kind == "undo":
            undone.setdefault(instance_id, []).append(execution)
    listed: list[str] = []
    for instance in instances.values():
        definition = definition_of(family, instance)
        compensable = {s.name for s, _ in definition.lookup.values() if isinstance(s, TaskStep) and s.compensate}
        ran = [r for r in reversed(instance.history) if r.status in ("completed", "compensated")]
        # Each instance that did not complete undid each of its completed executions once,
        # newest first (the journal's calls are in the order made); one that did, none.
        expected = [r.id for r in ran if r.step_name in compensable] if instance.status != "completed" else []
        assert undone.get(instance.id, []) == expected, instance.id
        children = {s.name for s, _ in definition.lookup.values() if s.kind == "child"}
        assert all(r.status == ("completed" if instance.status == "completed" else "compensated") for r in ran
                   if r.step_name in compensable | children), instance.id
        listed += instance.children
        for r in instance.history:
            if r.status in ("completed", "compensated") and definition.lookup[r.step_name][0].kind == "child":
                child = instances[f"{instance.id}/{r.id}"]
                # A child step's child ends as its step: kept, or compensated as a unit.
                assert child.status == r.status, (instance.id, r.id, child.status)
        if instance.id != "root":
            assert instance.parent_id is not None and instance.parent_id in instances
    assert sorted(listed) == sorted(i for i in instances if i != "root"), "each child started once, by a known parent"
    if root.status != "completed":
        # Nothing the family did is left in place: each instance that completed a step is
        # compensated (by its parent, as a unit), or compensated itself.
        assert all(i.status != "completed" for i in instances.values()), {
            i.id: i.status for i in instances.values()}
    # A child's compensations run as a unit at its step's place: each instance that compensated
    # itself made, with the children it compensated (and theirs), the calls its history says.
    for instance in instances.values():
        if instance.status in ("failed", "cancelled"):
            unit = _unit(family, instances, instance)
            members = {i for i, _ in unit}
            made = [(i, e) for i, e, kind, _ in family.journal.calls if kind == "undo" and i in members]
            assert made == unit, instance.id


def _unit(family: Family, instances: dict[str, tf.WorkflowInstance],
          instance: tf.WorkflowInstance) -> list[tuple[str, str]]:
    """The compensations an instance's compensation makes, in order: each of its compensated
    executions newest first, a child step's being its child's, as a unit."""
    definition = definition_of(family, instance)
    out: list[tuple[str, str]] = []
    for r in reversed(instance.history):
        if r.status != "compensated":
            continue
        if definition.lookup[r.step_name][0].kind == "child":
            out += _unit(family, instances, instances[f"{instance.id}/{r.id}"])
        else:
            out.append((instance.id, r.id))
    return out


def _fits(got: Any, model: Any) -> bool:
    """Whether an output equals the model's, an error slot standing for any ``{"error", "cause"}``."""
    if model == SLOT:
        return isinstance(got, dict) and set(got) == {"error", "cause"}
    if isinstance(model, list) and isinstance(got, list):
        return len(got) == len(model) and all(_fits(g, m) for g, m in zip(got, model))
    return bool(got == model)


@given(families())
def test_generated_families_end_as_the_model_says_and_compensate_as_units(family: Family) -> None:
    check_family(family, tf.testing.run(run_family, family))


@settings(max_examples=20)
@given(families(max_parts=2))
def test_generated_families_on_sqlite_end_as_on_memory(family: Family) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_family(family, tf.testing.run(run_family, family, SQLiteAdapter(Path(tmp) / "f.db")))


# -- crash exploration -------------------------------------------------------------------------------


def fresh(storage: str, tmp_path: Path) -> Callable[[], Adapter]:
    """A fresh, empty adapter per call: each run of an exploration starts on its own storage.
    (SQLite without an fsync per commit: the explorer's crashes lose no file, and an fsync per
    checkpoint would take most of the run.)"""
    if storage == "memory":
        return MemoryAdapter
    files = itertools.count()
    return lambda: SQLiteAdapter(tmp_path / f"{next(files)}.db", synchronous="NORMAL")


#: Where each exploration runs. On SQLite only the failing run: it has every checkpoint the
#: completing one has, and those of compensation (an SQLite run costs an open and a close).
EXPLORED = pytest.mark.parametrize(("storage", "ship_fails"), [("memory", False), ("memory", True), ("sqlite", True)])


class Declined(Exception):
    pass


async def reserve(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(3 - ctx.item_index % 3)  # later items end first
    return f"r-{ctx.item}"


async def release(ctx: tf.WorkflowContext, result: str) -> None:
    assert result == f"r-{ctx.item}"


async def charge(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(1)
    if ctx.item == "declined":
        raise Declined(f"card {ctx.item_index} declined")
    return f"c-{ctx.item}"


async def refund(ctx: tf.WorkflowContext, result: str) -> None:
    pass


def charge_all(*, ship_fails: bool) -> tf.WorkflowDefinition:
    async def ship(ctx: tf.WorkflowContext) -> Any:
        if ship_fails:
            raise Declined("no courier")
        return ctx.steps["each"]

    return (tf.workflow("charge-all")
            .map("each", items=lambda ctx: ctx.input, max_concurrency=2, tolerated_failures=1, on_error="wait-all",
                 branch=tf.branch("one").step("reserve", reserve, release).step("charge", charge, refund).build())
            .step("ship", ship)
            .build())


@EXPLORED
async def test_crashes_at_every_checkpoint_of_a_map_end_as_without(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str, ship_fails: bool) -> None:
    report = await explore_crashes(charge_all(ship_fails=ship_fails), ["a", "declined", "c", "d"],
                                   adapter_factory=fresh(storage, tmp_path))
    baseline = report.baseline
    if ship_fails:
        # Each completed item step compensated once, newest first; the failed item's reserve
        # was compensated by nobody but the map's own failure: it is compensated with the rest.
        assert baseline.status == "failed"
        assert Counter(baseline.compensated_steps) == {"reserve": 4, "charge": 3}
    else:
        assert baseline.status == "completed"
        assert baseline.output == ["c-a", {"error": "Declined", "cause": "card 1 declined"}, "c-c", "c-d"]
    assert report.writes >= 8 and report.divergent == ()


def mailer() -> tf.WorkflowDefinition:
    async def mail(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1)
        return f"mailed {ctx.input}"

    return tf.workflow("mailer").step("mail", mail, refund).build()


def invoice() -> tf.WorkflowDefinition:
    async def reserve_one(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(2)
        return f"r-{ctx.input}"

    async def charge_one(ctx: tf.WorkflowContext) -> str:
        if ctx.input == "declined":
            raise Declined("card declined")
        return f"c-{ctx.input}"

    return (tf.workflow("invoice")
            .step("reserve", reserve_one, refund)
            .step("charge", charge_one, refund)
            .child("notify", workflow="mailer", input=lambda ctx: ctx.input)
            .build())


def order(*, ship_fails: bool) -> tf.WorkflowDefinition:
    async def hold(ctx: tf.WorkflowContext) -> str:
        return "held"

    async def ship(ctx: tf.WorkflowContext) -> Any:
        if ship_fails:
            raise Declined("no courier")
        return [ctx.steps["bill"], ctx.steps["each"]]

    return (tf.workflow("order")
            .step("hold", hold, refund)
            .child("bill", workflow="invoice", input=lambda ctx: "first")
            .map("each", items=lambda ctx: ctx.input, tolerated_failures=1, on_error="wait-all", max_concurrency=2,
                 branch=tf.branch("one").child("sub", workflow="invoice", input=lambda ctx: ctx.item).build())
            .step("ship", ship)
            .build())


@EXPLORED
async def test_crashes_at_every_checkpoint_of_a_parent_with_children_end_as_without(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str, ship_fails: bool) -> None:
    report = await explore_crashes(order(ship_fails=ship_fails), ["x", "declined", "y"],
                                   adapter_factory=fresh(storage, tmp_path), also=[invoice(), mailer()])
    baseline = report.baseline
    children = baseline.children
    # A child for "bill", one per item, and a grandchild per invoice that got as far as mailing.
    assert len(children) == 4 + 3
    declined = children["explored-instance/each/#1/sub#1"]
    assert (declined.status, declined.compensated_steps) == ("failed", ("reserve",))
    if ship_fails:
        assert baseline.status == "failed"
        assert baseline.compensated_steps == ("sub", "sub", "bill", "hold")
        for child_id, child in children.items():
            if child_id != "explored-instance/each/#1/sub#1":
                assert child.status == "compensated", child_id
    else:
        assert baseline.status == "completed"
        assert baseline.output[1][1] == {"error": "Declined", "cause": "card declined"}
        assert all(c.status == "completed" for i, c in children.items() if i != "explored-instance/each/#1/sub#1")
    assert report.writes >= 30 and report.divergent == ()


@settings(max_examples=25)
@given(workflows(maps=True, max_steps=2, catches=True))
def test_crash_exploration_of_generated_maps_finds_no_divergence(gen: GeneratedWorkflow) -> None:
    async def main() -> None:
        report = await explore_crashes(gen.definition, gen.input, jobs=gen.jobs)
        assert report.baseline.status == gen.expected_status()

    tf.testing.run(main)


@settings(max_examples=25)
@given(families(max_parts=2))
def test_crash_exploration_of_generated_families_finds_no_divergence(family: Family) -> None:
    async def main() -> None:
        report = await explore_crashes(family.definitions[0], family.input, also=family.definitions[1:])
        assert report.baseline.status == family.expected_status()

    tf.testing.run(main)


@settings(max_examples=3)
@given(families(max_parts=2), workflows(maps=True, max_steps=2))
def test_crash_exploration_of_generated_maps_and_families_on_sqlite(family: Family, gen: GeneratedWorkflow) -> None:
    async def main(tmp: str) -> None:
        files = itertools.count()

        def factory() -> Adapter:
            return SQLiteAdapter(Path(tmp) / f"{next(files)}.db", synchronous="NORMAL")

        report = await explore_crashes(family.definitions[0], family.input, also=family.definitions[1:],
                                       adapter_factory=factory)
        assert report.baseline.status == family.expected_status()
        report = await explore_crashes(gen.definition, gen.input, jobs=gen.jobs, adapter_factory=factory)
        assert report.baseline.status == gen.expected_status()

    with tempfile.TemporaryDirectory() as tmp:
        tf.testing.run(main, tmp)  # virtual time: the generated sleeps and retry delays take none


async def test_the_explorer_reports_a_child_started_twice(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its family checks are not vacuous: an engine whose resumed parent started its child again
    (here, under a second id beside the first) is caught at the crash point that shows it."""
    start_child = tf.Engine._start_child

    async def twice(self: tf.Engine, workflow: str, input: Any, child_id: str, parent_id: str,
                    *rest: Any) -> None:
        if await self.adapter.load(child_id) is not None:
            await start_child(self, workflow, input, f"{child_id}-again", parent_id)
        await start_child(self, workflow, input, child_id, parent_id, *rest)

    monkeypatch.setattr(tf.Engine, "_start_child", twice)
    with pytest.raises(tf.testing.CrashDivergenceError, match="no parent lists it") as info:
        await explore_crashes(tf.workflow("p").child("c", workflow="mailer").build(), "x", also=[mailer()])
    assert info.value.report.divergent[0].after == "child 'explored-instance/c#1': instance created"


# -- found by the properties above -------------------------------------------------------------------


@pytest.mark.parametrize(("fraction", "count", "tolerates"), [
    (0.29, 100, 29), (0.57, 100, 57), (0.58, 100, 58), (15 / 22, 22, 15), (0.1, 3, 0), (0.25, 10, 2),
    (1.0, 7, 7), (0.0, 5, 0), (0.5, 0, 0),
])
async def test_a_fraction_tolerates_what_it_says_as_written(
        autojump_clock: trio.testing.MockClock, fraction: float, count: int, tolerates: int) -> None:
    """``0.29 * 100`` is ``28.999...``: truncating the product tolerated 28 failures of 100
    items where the user wrote 29 %. A fraction tolerates the most failures ``f`` with
    ``f / count <= fraction``."""
    wf = (tf.workflow("tolerant")
          .map("each", items=lambda ctx: ctx.input, branch=tf.branch("b").step("work", failing_items).build(),
               tolerated_failures=fraction, on_error="wait-all")
          .build())
    async with open_test_engine(clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        for failures in (tolerates, tolerates + 1):
            if failures > count:
                continue
            items = [{"fails": i < failures, "sleep": 0} for i in range(count)]
            instance = await engine.wait(await engine.start("tolerant", items))
            assert (instance.status == "completed") is (failures == tolerates), (failures, instance.cause)
            if instance.status == "failed":
                assert f"{failures} of {count} items failed, {tolerates} tolerated" in (instance.cause or "")


async def test_a_fail_fast_map_names_the_items_that_failed_not_those_it_cancelled(
        autojump_clock: trio.testing.MockClock) -> None:
    """A fail-fast map tolerating some failures cancels its running items at one failure too
    many; their steps' records say they were cancelled, but the items did not fail. The
    ``MapError`` counted and named them as failed items ("item 2 failed with Cancelled")."""
    wf = (tf.workflow("fast")
          .map("each", items=lambda ctx: ctx.input, branch=tf.branch("b").step("work", failing_items).build(),
               tolerated_failures=1, on_error="fail-fast")
          .build())
    items = [{"fails": True, "sleep": 1}, {"fails": True, "sleep": 1}] + [{"fails": False, "sleep": 5}] * 3
    async with open_test_engine(clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        instance = await engine.wait(await engine.start("fast", items))
    assert (instance.status, instance.error_name) == ("failed", "MapError")
    assert instance.cause == ("map step 'each': 2 of 5 items failed, 1 tolerated: item 0 failed with ScriptedFailure:"
                              " item 0 declined; item 1 failed with ScriptedFailure: item 1 declined")
    cancelled = [r for r in instance.history if r.error_name == "Cancelled"]
    assert len(cancelled) == 3  # recorded as cancelled, as they were


async def test_a_child_that_completes_as_a_fail_fast_cancels_its_step_is_compensated(
        autojump_clock: trio.testing.MockClock) -> None:
    """Two items each start a child; one child completes in the scheduler pass in which the
    other item's failure cancels the map's items. Its end notice is stored, but the step waiting
    on it is cancelled before it takes it: the step never completes, so the parent's
    compensation never reaches that child, and cancelling a completed child does nothing. It was
    left ``completed`` beside a failed parent. Which pass each ends in is swept here (trio's
    checkpoints in the child's step before it ends)."""
    async def work(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1)
        for _ in range(ctx.input["spins"]):
            await trio.lowlevel.checkpoint()
        if ctx.input["fails"]:
            raise Declined("no")
        return "ok"

    child = tf.workflow("child").step("work", work, refund).build()
    parent = (tf.workflow("parent")
              .map("each", items=lambda ctx: ctx.input,
                   branch=tf.branch("b").child("c", workflow="child", input=lambda ctx: ctx.item).build())
              .build())
    ends: Counter[str] = Counter()
    for spins in range(16, 26):
        for lead in range(1, 10):
            async with open_test_engine(clock=virtual_wall_clock()) as engine:
                engine.register(parent)
                engine.register(child)
                items = [{"spins": spins, "fails": False}, {"spins": spins - lead, "fails": True}]
                root = await engine.wait(await engine.start("parent", items))
                completed = await engine.wait(f"{root.id}/each/#0/c#1")
            assert root.status == "failed"
            # Cancelled while running its step (nothing to compensate), or completed and then
            # compensated as a unit: never left completed.
            assert completed.status in ("cancelled", "compensated"), (spins, lead)
            work = [r.status for r in completed.history if r.step_name == "work"]
            assert completed.compensated_steps == ("work",) * work.count("compensated") and "completed" not in work
            ends[completed.status] += 1
    assert ends["compensated"] > 0 and ends["cancelled"] > 0  # both interleavings were met


async def test_a_child_that_completes_although_its_parent_cancelled_it_is_compensated(
        autojump_clock: trio.testing.MockClock) -> None:
    """A parent cancelled as its child ends: the cancel reaches the child after its last
    checkpoint (here, as its map's one item ends: ``engine.cancel`` says it is being cancelled)
    or just after it completed, and the child completes all the same. The parent's step never
    took its end, so its compensation never reached the child: it was left ``completed``
    beside a cancelled parent. Which scheduler pass the cancel comes in is swept here."""
    async def work(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1)
        for _ in range(ctx.item):
            await trio.lowlevel.checkpoint()
        return "done"

    child = (tf.workflow("child")
             .map("m", items=lambda ctx: [ctx.input], branch=tf.branch("b").step("work", work, refund).build())
             .build())
    parent = tf.workflow("parent").child("c", workflow="child", input=lambda ctx: ctx.input).build()
    ends: Counter[str] = Counter()
    for spins in (5, 7, 9):
        for delay in range(8):
            async with open_test_engine(clock=virtual_wall_clock()) as engine:
                engine.register(parent)
                engine.register(child)
                root = await engine.start("parent", spins)
                await trio.sleep(1)
                for _ in range(delay):
                    await trio.lowlevel.checkpoint()
                await engine.cancel(root)
                assert (await engine.wait(root)).status == "cancelled"
                ended = await engine.wait(f"{root}/c#1")
            # Cancelled (compensating its item's step if that had completed), or completed and
            # then compensated as a unit: never left completed.
            assert ended.status in ("cancelled", "compensated"), (spins, delay)
            work = [r.status for r in ended.history if r.step_name == "work"]
            assert ended.compensated_steps == ("work",) * work.count("compensated") and "completed" not in work
            ends[ended.status] += 1
    assert ends["compensated"] > 0 and ends["cancelled"] > 0  # both interleavings were met


def nested(*, grandchild: tf.WorkflowDefinition) -> tuple[tf.WorkflowDefinition, ...]:
    """A parent mapping over two items, each starting a child that starts a grandchild."""
    child = tf.workflow("child").child("deeper", workflow=grandchild.name, input=lambda ctx: ctx.input).build()
    parent = (tf.workflow("parent")
              .map("each", items=lambda ctx: [1, 2],
                   branch=tf.branch("b").child("c", workflow="child", input=lambda ctx: ctx.item).build())
              .build())
    return parent, child, grandchild


async def test_grandchildren_of_a_parent_that_holds_the_only_slot_are_not_left_waiting_for_it(
        autojump_clock: trio.testing.MockClock) -> None:
    """A parent whose map items wait on children cannot leave memory, so it keeps its slot and
    its children run in it. A child that waits on its own child could leave memory, and its
    child then waited for a slot of its own, which the parent, waiting on them, held: with
    ``max_running=1`` (or as many parents as slots) nothing ever ran again. A child that runs
    in its parent's slot now stays in memory, and so its own children run in that slot too."""
    async def work(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(5)
        return int(ctx.input) * 10

    workflows_ = nested(grandchild=tf.workflow("grand").step("work", work).build())
    async with open_test_engine(clock=virtual_wall_clock(), max_running=1) as engine:
        for definition in workflows_:
            engine.register(definition)
        with trio.move_on_after(3600):
            instance = await engine.wait(await engine.start("parent"))
            assert (instance.status, instance.output) == ("completed", [10, 20])
            return
    pytest.fail("the family never ended: its grandchildren waited for the slot their grandparent held")


async def test_a_parent_that_holds_the_only_slot_gets_its_children_back_after_a_restart(
        autojump_clock: trio.testing.MockClock) -> None:
    """After a restart every unfinished instance is resumed with a slot of its own to wait for,
    children too: the parent (which cannot leave memory while its map items wait) takes the only
    slot, and its children queue behind it for ever. A resumed child whose parent waits for it
    in memory should run in that parent's slot, as it did when it was started."""
    async def work(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(10)
        return int(ctx.input)

    child = tf.workflow("child").step("work", work).build()
    parent = (tf.workflow("parent")
              .map("each", items=lambda ctx: [1, 2],
                   branch=tf.branch("b").child("c", workflow="child", input=lambda ctx: ctx.item).build())
              .build())
    storage, clock = MemoryAdapter(), virtual_wall_clock()
    async with open_test_engine(adapter=storage, clock=clock, max_running=1) as engine:
        engine.register(parent)
        engine.register(child)
        root = await engine.start("parent")
        await trio.sleep(5)
    async with open_test_engine(adapter=storage, clock=clock, max_running=1) as engine:
        engine.register(parent)
        await trio.sleep(1)  # the parent is resumed first (each workflow's resume is a task of its own)
        engine.register(child)
        with trio.move_on_after(3600):
            assert (await engine.wait(root)).output == [1, 2]
            return
    pytest.fail("after the restart the parent held the only slot and its children waited for it")
