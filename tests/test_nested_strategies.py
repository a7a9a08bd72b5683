"""The testing kit's generated workflows with fan-outs in map items (``workflows(maps=True,
nested=True)``): a map's branch holding a parallel step of item tasks, or a map over each item's
own items. What the kit's model predicts (status, error names, each map's output, tolerated
failures' slots included) is what the engine does; every completed execution, inner items' and
branches' included, is compensated once, newest first; crashes at every checkpoint end as a run
without them.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow._definition import MapStep, ParallelStep
from trioflow.testing import explore_crashes
from trioflow.testing.strategies import GeneratedWorkflow, ItemScript, task_steps, workflows

from test_fanout_properties import run_generated


def assert_as_the_model_says(gen: GeneratedWorkflow) -> tf.WorkflowInstance:
    """Run ``gen``: its status, error and every map's output are what the kit's model says."""
    instance = run_generated(gen)
    assert instance.status == gen.expected_status(), (instance.error, gen.expected_error_names())
    if instance.status == "failed":
        assert instance.error_name in gen.expected_error_names()
    for name in gen.input["items"]:
        expected = gen.expected_map_output(name)
        for record in instance.history:
            if record.step_name == name and record.status in ("completed", "compensated"):
                assert record.output == expected, name
            if record.step_name == name and record.status == "caught":
                assert expected is None, f"{name} tolerates its failures but was caught"
    return instance


@settings(max_examples=80)
@given(workflows(maps=True, nested=True, catches=True))
def test_generated_nested_maps_end_and_output_as_the_model_says(gen: GeneratedWorkflow) -> None:
    assert_as_the_model_says(gen)


@settings(max_examples=60)
@given(workflows(maps=True, nested=True))
def test_generated_nested_maps_compensate_every_completed_execution_once_newest_first(gen: GeneratedWorkflow) -> None:
    instance = run_generated(gen)
    compensable = {s.name for s in task_steps(gen.definition) if s.compensate is not None}
    ran = [r for r in instance.history if r.status in ("completed", "compensated") and r.step_name in compensable]
    if instance.status == "completed":
        assert instance.compensated_steps == ()
        assert not any(c.compensating for script in gen.item_scripts.values() for c in script.calls)
        return
    errors = set(instance.compensation_errors)
    assert all(r.step_name in errors for r in ran if r.status == "completed"), "a completed execution was not undone"
    assert list(instance.compensated_steps) == [r.step_name for r in reversed(ran) if r.status == "compensated"]
    for name, script in gen.item_scripts.items():
        undone = [c.execution_id for c in script.calls if c.compensating]
        assert undone == [r.id for r in reversed(ran) if r.step_name == name], name
        # Each with its own item: an inner item's index, or the item a parallel branch runs in.
        assert all(f"/#{c.index}/" in c.execution_id for c in script.calls if c.compensating)


@settings(max_examples=20)
@given(workflows(maps=True, nested=True, max_steps=2, catches=True))
def test_crash_exploration_of_generated_nested_maps_finds_no_divergence(gen: GeneratedWorkflow) -> None:
    async def main() -> None:
        report = await explore_crashes(gen.definition, gen.input, jobs=gen.jobs)
        assert report.baseline.status == gen.expected_status()

    tf.testing.run(main)


@pytest.mark.parametrize("kind", [ParallelStep, MapStep])
def test_nested_generation_puts_each_kind_of_fan_out_in_items(kind: type) -> None:
    """Not vacuous: the strategy draws maps whose branch holds a parallel step, and maps whose
    branch holds a map, with items that fail inside them, and the model tells their output."""
    def fans_out_and_fails(gen: GeneratedWorkflow) -> bool:
        inner = [s for m, _ in gen.definition.lookup.values() if isinstance(m, MapStep) for s in m.branch.steps]
        slots = [o for name in gen.input["items"] for o in (gen.expected_map_output(name) or [])]
        return any(isinstance(s, kind) for s in inner) and any(isinstance(o, dict) and "error" in o for o in slots)

    # (Found as a flag, not as the workflow: no shrinking, and no repr of a large example.)
    assert find(workflows(maps=True, nested=True, max_steps=2).map(fans_out_and_fails), bool,
                settings=settings(database=None, max_examples=2_000, phases=[Phase.generate]))


@settings(max_examples=1)
@given(st.data())
def test_nested_without_maps_is_refused(data: Any) -> None:
    with pytest.raises(tf.InvalidArgumentError, match="maps=True"):
        data.draw(workflows(nested=True))


def test_the_output_of_a_map_inside_items_is_asked_of_the_map_holding_it() -> None:
    async def work(ctx: Any) -> int:
        return int(ctx.item)

    gen = GeneratedWorkflow(
        definition=tf.workflow("generated").map("m-0", items=lambda ctx: ctx.input["items"]["m-0"], branch=(
            tf.branch("items-0").map("im-1", items=lambda ctx: ctx.item["inner"]["im-1"],
                                     branch=tf.branch("inner-1").step("i-2", work).build()).build())).build(),
        jobs={}, input={"flags": [], "items": {"m-0": []}})
    assert gen.expected_map_output("m-0") == []
    with pytest.raises(tf.InvalidArgumentError, match="a map in a map's branch"):
        gen.expected_map_output("im-1")


def _scripted(*names: str) -> dict[str, ItemScript]:
    return {name: ItemScript(name) for name in names}


@pytest.mark.parametrize("inner", ["parallel", "map"])
def test_the_model_gives_the_slot_a_tolerated_item_failing_in_a_fan_out_leaves(inner: str) -> None:
    """Two of the fan-out's branches (or items) fail, in an item the map tolerates: its slot
    names both, in branch (or item) order, as the engine records them."""
    scripts = _scripted("i-1", "i-2", "i-3")
    if inner == "parallel":
        fan_out = tf.branch("items-0").parallel("ip-4", on_error="wait-all", branches=[
            tf.branch(f"b{k}").step(f"i-{k}", scripts[f"i-{k}"].run).build() for k in (1, 2, 3)]).build()
        items = [{"plan": {"i-1": [0.0, 9], "i-2": [0.0, 0], "i-3": [3.0, 9]}},
                 {"plan": {"i-1": [0.0, 0], "i-2": [1.0, 0], "i-3": [0.0, 0]}}]
    else:
        fan_out = tf.branch("items-0").map("im-4", items=lambda ctx: ctx.item["inner"]["im-4"], tolerated_failures=1,
                                           branch=tf.branch("inner-4").step("i-1", scripts["i-1"].run).build()).build()
        items = [{"plan": {}, "inner": {"im-4": [{"plan": {"i-1": [3.0, 9]}}, {"plan": {"i-1": [0.0, 0]}},
                                                 {"plan": {"i-1": [0.0, 9]}}]}},
                 {"plan": {}, "inner": {"im-4": [{"plan": {"i-1": [1.0, 0]}}]}}]
    gen = GeneratedWorkflow(
        definition=tf.workflow("generated").map("m-0", items=lambda ctx: ctx.input["items"]["m-0"], branch=fan_out,
                                                tolerated_failures=1).build(),
        jobs={}, input={"flags": [], "items": {"m-0": items}}, item_scripts=scripts)
    expected = gen.expected_map_output("m-0")
    assert expected is not None and set(expected[0]) == {"error", "cause"}
    assert expected[0]["error"] == ("ParallelError" if inner == "parallel" else "MapError")
    instance = run_generated(gen)
    assert instance.status == "completed" == gen.expected_status()
    assert instance.output == expected
