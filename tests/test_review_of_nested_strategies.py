"""A review of ``workflows(maps=True, nested=True)`` (d1ddce7): where the kit's model and the
engine part ways, and what a user of the kit may rely on.

The model is what a user's property tests trust: ``expected_status()``,
``expected_error_names()``, ``expected_caught()`` and ``expected_map_output()`` must say what the
engine does, whatever order the scheduler ends items in. The bugs' examples are workflows
``workflows(maps=True, nested=True, catches=True)`` can draw (the first was drawn by it, verbatim;
the second uses only what it draws: a fail-fast map tolerating 1, a wait-all ``ip-N`` after a
task in its branch, a ``"ParallelError"`` catcher to the lane's catch route), run on the test
engine on virtual time.

Bugs pinned here (each test fails on d1ddce7):

- a fail-fast map that tolerates some failures (a count, or a fraction worth at least one)
  cancels its other items once one failure too many is in, and its ``MapError`` names only the
  items that failed by then (``trioflow._map.failed_items``); the model names every item its
  plans fail. ``_first_failure_known`` only pins fail-fast fan-outs that tolerate none. So:
  an inner map's ``MapError`` slot in an item the outer map tolerates has another cause than
  ``expected_map_output`` gives; and a catcher on an outer fail-fast map listing
  ``"ParallelError"`` is expected to catch a ``MapError`` whose cancelled item was the only one
  to fail in a parallel step (the engine's message does not name it), so
  ``expected_status()`` says ``completed`` for a run that fails;
- ``expected_map_output`` of a map in a map's branch says its output is in the holding map's
  items but does not name that map (the commit says it does).
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings

import trioflow as tf
from trioflow._definition import MapStep, ParallelStep
from trioflow.testing import ScriptedJob, returns
from trioflow.testing.strategies import (
    GeneratedWorkflow,
    ItemScript,
    task_steps,
    tolerated,
    workflows,
)

from test_fanout_properties import run_generated
from test_nested_strategies import assert_as_the_model_says


def _scripts(*names: str) -> dict[str, ItemScript]:
    return {name: ItemScript(name) for name in names}


def _outer_items(ctx: Any) -> Any:
    return ctx.input["items"]["m-1"]


def _inner_items(name: str) -> Any:
    return lambda ctx: ctx.item["inner"][name]


def _gen(definition: tf.WorkflowDefinition, items: dict[str, list[Any]], scripts: dict[str, ItemScript],
         jobs: dict[str, ScriptedJob] | None = None) -> GeneratedWorkflow:
    return GeneratedWorkflow(definition=definition, jobs=jobs or {}, input={"flags": [], "items": items},
                             item_scripts=scripts)




# -- bugs ------------------------------------------------------------------------------------------


def test_a_tolerated_items_slot_from_an_inner_fail_fast_map_tolerating_one_is_as_the_model_says() -> None:
    """Drawn by ``workflows(maps=True, nested=True, catches=True)`` as it is here. Item 1's
    inner map ``im-2`` (fail-fast, tolerating half of 3 items: one) has three failing items;
    inner items 1 and 2 fail at 0.5 s and 1 s, which is one too many, and inner item 0 (still
    in ``i-4`` until 3 s) is cancelled. The engine's ``MapError`` names items 1 and 2
    ("2 of 3 items failed"); the model's slot names all three ("3 of 3"). Whichever two fail
    first is the scheduler's (and the sleeps') say: the plans should let at most
    tolerated + 1 of a fail-fast map's items fail (as ``_first_failure_known`` does for maps
    tolerating none).

    Fixed: the generator now lets at most tolerated + 1 items of a fail-fast map fail (see
    ``test_drawn_fail_fast_fan_outs_have_no_more_failures_than_they_stop_at``), so the plan
    above is no longer drawn: inner item 0 here gets through, as the generator would make it,
    and the two failures that are left are the ones the engine's ``MapError`` names."""
    scripts = _scripts("i-3", "i-4")
    inner = (tf.branch("inner-2").step("i-3", scripts["i-3"].run, retry=tf.Retry(max_attempts=1, interval=3.0))
             .step("i-4", scripts["i-4"].run, scripts["i-4"].undo).build())
    body = tf.branch("items-1").map("im-2", items=_inner_items("im-2"), branch=inner, on_error="fail-fast",
                                    tolerated_failures=0.5).build()
    definition = tf.workflow("generated").map("m-1", items=_outer_items, branch=body, on_error="fail-fast",
                                              tolerated_failures=0.5).build()
    items = {"m-1": [
        {"plan": {}, "inner": {"im-2": []}},
        {"plan": {}, "inner": {"im-2": [{"plan": {"i-3": [1.0, 0], "i-4": [3.0, 0]}},
                                        {"plan": {"i-3": [0.5, 1], "i-4": [0.5, 9]}},
                                        {"plan": {"i-3": [1.0, 1], "i-4": [0.5, 0]}}]}},
    ]}
    gen = _gen(definition, items, scripts)
    instance = run_generated(gen)
    assert instance.status == "completed" == gen.expected_status()
    slot = instance.output[1]
    assert slot["error"] == "MapError"
    assert instance.output == gen.expected_map_output("m-1"), slot["cause"]


def test_a_catch_on_an_outer_fail_fast_map_tolerating_one_routes_as_the_model_says() -> None:
    """An outer fail-fast map tolerating one failure, ``catch=[Catch("ParallelError")]`` (both
    among what ``workflows(catches=True)`` draws for a map). Items 0 and 1 fail at their task
    ``i-1`` (at 0 s and 0.5 s): one too many, so item 2, whose wait-all parallel step would
    fail with a ``ParallelError`` at 3 s, is cancelled. The engine's ``MapError`` names items 0
    and 1 only, no ``ParallelError`` in it: the catcher does not match and the run fails. The
    model puts item 2's ``ParallelError`` in the group, so it says the map is caught and the
    run completes. (Either the plans let at most tolerated + 1 items of a fail-fast map fail,
    or ``decidable`` must try every set of tolerated + 1 failed items.)

    Fixed the first way: a map whose items hold fan-outs gets no more failing items than it
    stops at, so item 2 gets through here, as the generator would make it; the map fails with
    a ``MapError`` of items 0 and 1, which the catcher does not match, and the model says so."""
    scripts = _scripts("i-1", "i-3", "i-4")
    body = (tf.branch("items-1").step("i-1", scripts["i-1"].run)
            .parallel("ip-2", on_error="wait-all", branches=[tf.branch("b3").step("i-3", scripts["i-3"].run).build(),
                                                            tf.branch("b4").step("i-4", scripts["i-4"].run).build()])
            .build())
    definition = (tf.workflow("generated")
                  .map("m-1", items=_outer_items, branch=body, on_error="fail-fast", tolerated_failures=1,
                       catch=[tf.Catch(errors=["ParallelError"], next="caught-0")])
                  .succeed("ok-0").pass_("caught-0").build())
    items = {"m-1": [{"plan": {"i-1": [0.0, 9], "i-3": [0.0, 0], "i-4": [0.0, 0]}},
                     {"plan": {"i-1": [0.5, 9], "i-3": [0.0, 0], "i-4": [0.0, 0]}},
                     {"plan": {"i-1": [0.0, 0], "i-3": [3.0, 0], "i-4": [0.0, 0]}}]}
    gen = _gen(definition, items, scripts)
    instance = run_generated(gen)
    assert instance.status == gen.expected_status() == "failed", instance.error
    assert instance.error_name in gen.expected_error_names() == {"MapError"}
    assert [r.step_name for r in instance.history if r.status == "caught"] == gen.expected_caught() == []


def test_the_refusal_of_an_inner_maps_output_names_the_map_holding_it() -> None:
    """The commit: "expected_map_output refuses a map in a map's branch, naming the map that
    holds its output". The message says "the map that holds it" without naming ``m-1``; in a
    workflow of several maps a user has to search the definition for it."""
    scripts = _scripts("i-3")
    body = tf.branch("items-1").map("im-2", items=_inner_items("im-2"),
                                    branch=tf.branch("inner-2").step("i-3", scripts["i-3"].run).build()).build()
    gen = _gen(tf.workflow("generated").map("m-1", items=_outer_items, branch=body).build(), {"m-1": []}, scripts)
    with pytest.raises(tf.InvalidArgumentError, match="a map in a map's branch") as caught:
        gen.expected_map_output("im-2")
    assert "'m-1'" in str(caught.value)


# -- the generation: what stays decidable ------------------------------------------------------------


def _fail_fast_fan_outs_in_items(gen: GeneratedWorkflow) -> list[tuple[Any, Any, int, list[bool]]]:
    """(outer map, its item, the fan-out in it, which of its branches or items fail for good)."""
    model = gen._model()
    found: list[Any] = []
    for name, items in gen.input["items"].items():
        outer = gen.definition.lookup[name][0]
        for index, item in enumerate(items):
            for step in outer.branch.steps:
                if isinstance(step, ParallelStep):
                    fails = [bool(model.item_errors(b.steps, item, index)) for b in step.branches]
                elif isinstance(step, MapStep):
                    inner = item["inner"][step.name]
                    fails = [bool(model.item_errors(step.branch.steps, it, i)) for i, it in enumerate(inner)]
                else:
                    continue
                found.append((outer, item, step, fails))
    return found


@settings(max_examples=150, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(workflows(maps=True, nested=True, catches=True))
def test_drawn_fail_fast_fan_outs_have_no_more_failures_than_they_stop_at(gen: GeneratedWorkflow) -> None:
    """A fail-fast fan-out in an item stops at its first failure (a parallel step, a map
    tolerating none) or at the one past what it tolerates: the plans let no more fail, nor
    in a map whose items hold fan-outs; and every drawn map's output is modelled without
    tripping the model's "a failed item's error is one" unpacking."""
    for _, _, step, fails in _fail_fast_fan_outs_in_items(gen):
        if step.on_error == "fail-fast":
            assert sum(fails) <= (1 if isinstance(step, ParallelStep) else tolerated(step, len(fails)) + 1), step.name
    model = gen._model()
    for name, items in gen.input["items"].items():
        outer = gen.definition.lookup[name][0]
        if outer.on_error == "fail-fast" and any(isinstance(s, (MapStep, ParallelStep)) for s in outer.branch.steps):
            failing = sum(bool(model.item_errors(outer.branch.steps, item, i)) for i, item in enumerate(items))
            assert failing <= tolerated(outer, len(items)) + 1, name
        gen.expected_map_output(name)  # (raises ValueError if an item had two possible errors)


# -- what passes: the model and the engine agree -------------------------------------------------------


@pytest.mark.parametrize("inner", ["parallel", "map"])
def test_a_groups_slot_lists_branches_and_items_in_their_order_not_the_order_they_failed_in(inner: str) -> None:
    """Later branches (items) fail first: the slot still names them in branch (item) order, as
    the model builds it."""
    scripts = _scripts("i-1", "i-2", "i-3")
    if inner == "parallel":
        body = tf.branch("items-1").parallel("ip-4", on_error="wait-all", branches=[
            tf.branch(f"b{k}").step(f"i-{k}", scripts[f"i-{k}"].run).build() for k in (1, 2, 3)]).build()
        items = [{"plan": {"i-1": [3.0, 9], "i-2": [0.0, 0], "i-3": [0.0, 9]}}]
    else:
        body = tf.branch("items-1").map("im-4", items=_inner_items("im-4"), on_error="wait-all",
                                        branch=tf.branch("inner-4").step("i-1", scripts["i-1"].run).build()).build()
        items = [{"plan": {}, "inner": {"im-4": [{"plan": {"i-1": [3.0, 9]}}, {"plan": {"i-1": [1.0, 0]}},
                                                 {"plan": {"i-1": [0.0, 9]}}]}}]
    gen = _gen(tf.workflow("generated").map("m-1", items=_outer_items, branch=body, tolerated_failures=1).build(),
               {"m-1": items}, scripts)
    instance = assert_as_the_model_says(gen)
    assert instance.status == "completed"
    assert instance.output[0]["error"] == ("ParallelError" if inner == "parallel" else "MapError")


@pytest.mark.parametrize("inner", ["parallel", "map"])
def test_a_fail_fast_fan_out_leaves_the_failing_tasks_own_slot(inner: str) -> None:
    """A fail-fast parallel step (or fail-fast map tolerating none) in an item fails as its one
    failing branch (item) did: the slot is ``ScriptedFailure`` with the task's own cause, not a
    ``ParallelError``/``MapError`` (which docs/testing.md's line on nested=True suggests)."""
    scripts = _scripts("i-1", "i-2")
    if inner == "parallel":
        body = tf.branch("items-1").parallel("ip-4", on_error="fail-fast", branches=[
            tf.branch("b1").step("i-1", scripts["i-1"].run).build(),
            tf.branch("b2").step("i-2", scripts["i-2"].run, scripts["i-2"].undo).build()]).build()
        items = [{"plan": {"i-1": [1.0, 9], "i-2": [3.0, 0]}}, {"plan": {"i-1": [0.0, 0], "i-2": [0.0, 0]}}]
        cause = "item 0 failed at i-1"
    else:
        body = tf.branch("items-1").map("im-4", items=_inner_items("im-4"), on_error="fail-fast",
                                        branch=tf.branch("inner-4").step("i-1", scripts["i-1"].run).build()).build()
        items = [{"plan": {}, "inner": {"im-4": [{"plan": {"i-1": [3.0, 0]}}, {"plan": {"i-1": [1.0, 9]}}]}},
                 {"plan": {}, "inner": {"im-4": [{"plan": {"i-1": [0.0, 0]}}]}}]
        cause = "item 1 failed at i-1"
    gen = _gen(tf.workflow("generated").map("m-1", items=_outer_items, branch=body, tolerated_failures=1).build(),
               {"m-1": items}, scripts)
    instance = assert_as_the_model_says(gen)
    assert instance.output[0] == {"error": "ScriptedFailure", "cause": cause}


def test_an_inner_map_over_no_items_gives_an_empty_list_and_tolerates_none() -> None:
    """An item whose own list is empty (its inner map tolerating a fraction: of no items, none)
    outputs ``[]``; beside it an item whose inner map fails beyond its fraction."""
    scripts = _scripts("i-3")
    body = tf.branch("items-1").map("im-2", items=_inner_items("im-2"), tolerated_failures=0.5, on_error="wait-all",
                                    branch=tf.branch("inner-2").step("i-3", scripts["i-3"].run).build()).build()
    items = [{"plan": {}, "inner": {"im-2": []}},
             {"plan": {}, "inner": {"im-2": [{"plan": {"i-3": [0.0, 9]}}, {"plan": {"i-3": [0.5, 9]}}]}}]
    gen = _gen(tf.workflow("generated").map("m-1", items=_outer_items, branch=body, tolerated_failures=1).build(),
               {"m-1": items}, scripts)
    expected = gen.expected_map_output("m-1")
    assert expected is not None and expected[0] == [] and expected[1]["error"] == "MapError"
    assert_as_the_model_says(gen)


def test_an_item_failing_in_several_parts_fails_as_its_first_part_does() -> None:
    """The item's plan fails its first task, its parallel step and its inner map: the slot is
    the first task's; an item getting through every part outputs its last part's (the inner
    map's list), and what came before (the parallel step's) is in no output."""
    scripts = _scripts("i-1", "i-3", "i-4", "i-6")
    body = (tf.branch("items-1").step("i-1", scripts["i-1"].run)
            .parallel("ip-2", on_error="wait-all", branches=[tf.branch("b3").step("i-3", scripts["i-3"].run).build(),
                                                            tf.branch("b4").step("i-4", scripts["i-4"].run).build()])
            .map("im-5", items=_inner_items("im-5"), branch=tf.branch("inner-5").step("i-6", scripts["i-6"].run).build())
            .build())
    items = [{"plan": {"i-1": [1.0, 9], "i-3": [0.0, 9], "i-4": [0.0, 0]}, "inner": {"im-5": [{"plan": {"i-6": [0.0, 9]}}]}},
             {"plan": {"i-1": [0.0, 0], "i-3": [0.5, 9], "i-4": [0.0, 9]}, "inner": {"im-5": [{"plan": {"i-6": [0.0, 9]}}]}},
             {"plan": {"i-1": [0.0, 0], "i-3": [0.0, 0], "i-4": [3.0, 0]},
              "inner": {"im-5": [{"plan": {"i-6": [0.0, 0]}}, {"plan": {"i-6": [1.0, 0]}}]}}]
    gen = _gen(tf.workflow("generated").map("m-1", items=_outer_items, branch=body, tolerated_failures=2).build(),
               {"m-1": items}, scripts)
    expected = gen.expected_map_output("m-1")
    assert expected is not None
    assert expected[0] == {"error": "ScriptedFailure", "cause": "item 0 failed at i-1"}
    assert expected[1]["error"] == "ParallelError"
    assert expected[2] == [["i-6", 0], ["i-6", 1]]
    assert_as_the_model_says(gen)
    with pytest.raises(tf.InvalidArgumentError):
        gen.expected_map_output("im-5")


@pytest.mark.parametrize("inner", ["parallel", "map"])
def test_an_outer_fail_fast_map_tolerating_none_fails_with_an_error_the_model_lists(inner: str) -> None:
    """Two items fail in nested fan-outs (a wait-all group in one, a task in the other): which
    fails first is the scheduler's, and the model lists both errors' names."""
    scripts = _scripts("i-1", "i-2")
    if inner == "parallel":
        fan = tf.branch("items-1").parallel("ip-3", on_error="wait-all", branches=[
            tf.branch("b1").step("i-1", scripts["i-1"].run).build(),
            tf.branch("b2").step("i-2", scripts["i-2"].run, scripts["i-2"].undo).build()]).build()
        items = [{"plan": {"i-1": [1.0, 9], "i-2": [0.0, 9]}}, {"plan": {"i-1": [1.0, 9], "i-2": [0.0, 0]}}]
        names = {"ParallelError"}
    else:
        fan = tf.branch("items-1").map("im-3", items=_inner_items("im-3"), on_error="wait-all",
                                       branch=tf.branch("inner-3").step("i-1", scripts["i-1"].run).build()).build()
        items = [{"plan": {}, "inner": {"im-3": [{"plan": {"i-1": [1.0, 9]}}]}},
                 {"plan": {}, "inner": {"im-3": [{"plan": {"i-1": [0.5, 0]}}]}}]
        names = {"MapError"}
    gen = _gen(tf.workflow("generated").map("m-1", items=_outer_items, branch=fan, on_error="fail-fast").build(),
               {"m-1": items}, scripts)
    assert gen.expected_error_names() == names
    assert gen.expected_map_output("m-1") is None
    instance = assert_as_the_model_says(gen)
    assert instance.status == "failed"


def test_a_map_with_fan_outs_in_a_parallel_branch_is_asked_for_by_name() -> None:
    """A drawn map may sit in a parallel step's branch: its items are in the input by name, and
    ``expected_map_output`` gives its output; a task step is refused as not a map."""
    scripts = _scripts("i-1", "i-2")
    body = tf.branch("items-1").parallel("ip-3", on_error="wait-all", branches=[
        tf.branch("b1").step("i-1", scripts["i-1"].run).build(), tf.branch("b2").step("i-2", scripts["i-2"].run).build()
    ]).build()
    definition = tf.workflow("generated").parallel("p-0", branches=[
        tf.branch("b0").map("m-1", items=_outer_items, branch=body, tolerated_failures=0.5).build(),
        tf.branch("b9").task("t-9", job="job-t-9").build()]).build()
    items = {"m-1": [{"plan": {"i-1": [0.0, 0], "i-2": [1.0, 0]}}, {"plan": {"i-1": [0.0, 9], "i-2": [0.5, 0]}}]}
    gen = _gen(definition, items, scripts, {"job-t-9": ScriptedJob(returns(1), name="job-t-9")})
    assert gen.expected_map_output("m-1") == [
        {"b1": ["i-1", 0], "b2": ["i-2", 0]},
        {"error": "ParallelError", "cause": "parallel step 'ip-3': branch 'b1' failed with ScriptedFailure: item 1 failed at i-1"}]
    assert_as_the_model_says(gen)
    with pytest.raises(tf.InvalidArgumentError, match="is a task step, not a map"):
        gen.expected_map_output("t-9")


def test_items_failing_in_nested_fan_outs_are_compensated_once_newest_first_when_the_run_fails() -> None:
    """An item the map tolerates failed in a wait-all parallel step after one branch completed
    (compensable), another completed its inner map; a later step fails the run: every completed
    execution (inside the tolerated failure too) is compensated once, newest first."""
    scripts = _scripts("i-1", "i-2", "i-5")
    body = (tf.branch("items-1")
            .parallel("ip-3", on_error="wait-all", branches=[
                tf.branch("b1").step("i-1", scripts["i-1"].run, scripts["i-1"].undo).build(),
                tf.branch("b2").step("i-2", scripts["i-2"].run, scripts["i-2"].undo).build()])
            .map("im-4", items=_inner_items("im-4"),
                 branch=tf.branch("inner-4").step("i-5", scripts["i-5"].run, scripts["i-5"].undo).build())
            .build())

    async def boom(ctx: Any) -> None:
        raise RuntimeError("later step fails")

    definition = tf.workflow("generated").map("m-1", items=_outer_items, branch=body, tolerated_failures=1) \
        .step("t-9", boom).build()
    items = {"m-1": [{"plan": {"i-1": [1.0, 0], "i-2": [0.0, 9]}, "inner": {"im-4": [{"plan": {"i-5": [0.0, 0]}}]}},
                     {"plan": {"i-1": [0.0, 0], "i-2": [0.5, 0]},
                      "inner": {"im-4": [{"plan": {"i-5": [1.0, 0]}}, {"plan": {"i-5": [0.0, 0]}}]}}]}
    gen = _gen(definition, items, scripts)
    instance = run_generated(gen)
    assert instance.status == "failed" and instance.error_name == "RuntimeError"
    compensable = {s.name for s in task_steps(gen.definition) if s.compensate is not None}
    ran = [r for r in instance.history if r.status in ("completed", "compensated") and r.step_name in compensable]
    assert all(r.status == "compensated" for r in ran) and len(ran) == 5
    assert list(instance.compensated_steps) == [r.step_name for r in reversed(ran)]
    for name, script in gen.item_scripts.items():
        undone = [c.execution_id for c in script.calls if c.compensating]
        assert undone == [r.id for r in reversed(ran) if r.step_name == name], name


def test_nested_without_maps_is_refused_whatever_else_is_asked_for() -> None:
    """The refusal comes at the first draw (``workflows()`` is a composite strategy), with the
    fix in the message."""
    strategy = workflows(nested=True, catches=True, loops=True)

    @settings(max_examples=1, database=None)
    @given(strategy)
    def draws(gen: GeneratedWorkflow) -> None:
        pass

    with pytest.raises(tf.InvalidArgumentError, match=r"nested=True.*pass maps=True too"):
        draws()


def test_the_workflows_docstring_names_what_nested_draws() -> None:
    doc = inspect.getdoc(workflows) or ""
    for needle in ("nested=True", "ip-N", "im-N", 'ctx.item["inner"]["im-N"]', "maps=True"):
        assert needle in doc, needle
