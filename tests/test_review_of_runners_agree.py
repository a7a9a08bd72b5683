"""Differential review: one workflow and input run by ``execute_workflow``, by engines on a
MemoryAdapter and on a SQLite file, and by ``run_workflow``; each test here shows a disagreement
the docs do not explain. Each failed on main at f6f8291, and is fixed by the commit
that added this file."""

from __future__ import annotations

from typing import Any

import trioflow as tf


async def test_run_workflow_mapping_form_drops_the_documented_keywords(autojump_clock: Any) -> None:
    """README, "A saga without an engine": "`tf.run_workflow(driver, "name", [tf.step(...),
    ...])`, or `tf.run_workflow(driver, {"name": ..., "steps": [...]})`, builds such a saga and
    runs it at once (`input=`, `timeout=`, `initial_data=`, `services=`, `hooks=` and
    `use_transaction=` as keywords ...)".

    The same saga and the same keywords give another run in the mapping form: every keyword is
    silently dropped (the step sees no input, no shared data, no service; the hook never runs),
    while giving ``steps`` both ways is refused with a DefinitionError. The positional form, and
    the builder with ``execute_workflow`` or an engine, honour them.
    """
    seen: list[Any] = []
    hooked: list[str] = []

    async def a(ctx: tf.WorkflowContext) -> Any:
        seen.append((ctx.input, dict(ctx.data), ctx.resolve("svc")))
        return ctx.input

    keywords: dict[str, Any] = dict(input={"x": 1}, initial_data={"k": 1}, services={"svc": "S"},
                                    hooks={"on_complete": lambda r: hooked.append(r.status)})
    positional = await tf.run_workflow(None, "saga", [tf.step("a", a)], **keywords)
    assert positional.status == "completed" and positional.output == {"x": 1}
    assert seen == [({"x": 1}, {"k": 1}, "S")] and hooked == ["completed"]

    seen.clear()
    hooked.clear()
    mapping = await tf.run_workflow(None, {"name": "saga", "steps": [tf.step("a", a)]}, **keywords)
    # Either honoured (as the positional form) or refused (as steps given twice is); today: dropped.
    assert (mapping.status, mapping.output, mapping.error_name) == ("completed", {"x": 1}, None), \
        (mapping.status, mapping.output, mapping.error_name, mapping.cause)
    assert seen == [({"x": 1}, {"k": 1}, "S")] and hooked == ["completed"]


async def test_run_workflow_mapping_form_drops_use_transaction(autojump_clock: Any) -> None:
    """README: run_workflow takes "`use_transaction=` as keywords: the saga's ... transaction
    [is] set on the definition it builds, as the builder's ... `transactional` set[s] them";
    "Transactional runs (`.transactional()`, `run_workflow(..., use_transaction=True)`) ... On
    failure ... it rolls back and the result says `rolled_back=True`".

    With the mapping form, ``use_transaction=True`` is ignored: the entity step's row is not
    rolled back by a transaction (its compensation deletes it instead) and the result says
    ``rolled_back=False``, whereas the positional form rolls back.
    """
    async def boom(ctx: tf.WorkflowContext) -> None:
        raise ValueError("boom")

    def steps() -> list[Any]:
        return [tf.create_entity_step("mk", "orders", lambda ctx: {"x": 1}), tf.step("boom", boom)]

    driver = tf.adapters.MemoryDriver()
    positional = await tf.run_workflow(driver, "t", steps(), use_transaction=True)
    assert positional.rolled_back is True and positional.compensated_steps == ()

    driver = tf.adapters.MemoryDriver()
    mapping = await tf.run_workflow(driver, {"name": "t", "steps": steps()}, use_transaction=True)
    assert (mapping.rolled_back, mapping.compensated_steps) == (True, ()), \
        (mapping.rolled_back, mapping.compensated_steps)


def _shared_view_workflow(seen: list[Any]) -> tf.WorkflowDefinition:
    async def a(ctx: tf.WorkflowContext) -> Any:
        shown = [ctx.steps]            # one list, referenced twice in the output
        return {"x": shown, "y": shown}

    async def b(ctx: tf.WorkflowContext) -> str:
        return "b"

    async def c(ctx: tf.WorkflowContext) -> None:
        out = ctx.steps["a"]
        seen.append((sorted(out["x"][0]), sorted(out["y"][0])))

    return tf.workflow("views").pass_("p0", result="p0").step("a", a).step("b", b).step("c", c).build()


async def test_ctx_steps_returned_twice_stays_live_in_execute_workflow(autojump_clock: Any) -> None:
    """README, "Every step execution is its own record": "`ctx.steps` itself, returned by a step
    or put in `ctx.data`, is kept as a dict of what it shows then" (and `detached`'s own
    docstring: every live view "at any depth inside dicts, lists and tuples" is replaced).

    A step returning one list holding `ctx.steps` under two keys: an engine keeps both as they
    showed when the step ended (`["p0"]`), but `execute_workflow` detaches only the first
    occurrence; the second stays the live view, so later steps see it grow (`a`, `b`, ...) and
    the output holds itself (a cycle: walking it raises RecursionError).
    """
    from trioflow.testing import open_test_engine

    in_engine: list[Any] = []
    async with open_test_engine() as engine:
        engine.register(_shared_view_workflow(in_engine))
        done = await engine.wait(await engine.start("views", None))
    assert done.status == "completed"
    assert in_engine == [(["p0"], ["p0"])]

    in_process: list[Any] = []
    result = await tf.execute_workflow(None, _shared_view_workflow(in_process), None)
    assert result.status == "completed"
    assert in_process == in_engine, in_process   # today: [(['p0'], ['a', 'b', 'p0'])]


async def test_ctx_steps_put_twice_in_ctx_data_stays_live_in_an_engine(autojump_clock: Any, tmp_path: Any) -> None:
    """README: "`ctx.steps` itself, returned by a step or put in `ctx.data`, is kept as a dict of
    what it shows then"; and in an engine "a step behaves the same whether or not a restart
    came between".

    Same root cause as above, through `ctx.data` (whose `__setitem__` detaches the value): one
    list holding `ctx.steps` put under two keys keeps the live view under the second, in every
    runner (an engine on SQLite included), so a later step sees it show the steps that ended
    since (`a`, `b`), where a restart in between would have read back what it showed then.
    """
    from trioflow.testing import open_test_engine

    def workflow(seen: list[Any]) -> tf.WorkflowDefinition:
        async def a(ctx: tf.WorkflowContext) -> str:
            shown = [ctx.steps]
            ctx.data["snap"] = {"x": shown, "y": shown}
            return "a"

        async def b(ctx: tf.WorkflowContext) -> str:
            return "b"

        async def c(ctx: tf.WorkflowContext) -> None:
            snap = ctx.data["snap"]
            seen.append((sorted(snap["x"][0]), sorted(snap["y"][0])))

        return tf.workflow("data-views").pass_("p0", result="p0").step("a", a).step("b", b).step("c", c).build()

    seen: list[Any] = []
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(str(tmp_path / "views.db"))) as engine:
        engine.register(workflow(seen))
        done = await engine.wait(await engine.start("data-views", None))
    assert done.status == "completed"
    assert seen == [(["p0"], ["p0"])], seen   # today: [(['p0'], ['a', 'b', 'p0'])]


async def test_ctx_steps_inside_a_dict_subclass_stays_live_in_execute_workflow(autojump_clock: Any) -> None:
    """README: "`ctx.steps` itself, returned by a step or put in `ctx.data`, is kept as a dict of
    what it shows then".

    A step returning `OrderedDict(s=ctx.steps)` (or a defaultdict, or a namedtuple, which an
    engine stores as a dict or a list as any dict or tuple): the engine keeps what the view
    showed when the step ended (`["p0"]`), while `execute_workflow` keeps the live view, which
    later shows every step ended since (`a`, `b`): `_detached` looks only inside exact
    `dict`/`list`/`tuple` types.
    """
    import collections

    from trioflow.testing import open_test_engine

    def workflow(seen: list[Any]) -> tf.WorkflowDefinition:
        async def a(ctx: tf.WorkflowContext) -> Any:
            return collections.OrderedDict(s=ctx.steps)

        async def b(ctx: tf.WorkflowContext) -> str:
            return "b"

        async def c(ctx: tf.WorkflowContext) -> None:
            seen.append(sorted(ctx.steps["a"]["s"]))

        return tf.workflow("subclass").pass_("p0", result="p0").step("a", a).step("b", b).step("c", c).build()

    in_engine: list[Any] = []
    async with open_test_engine() as engine:
        engine.register(workflow(in_engine))
        assert (await engine.wait(await engine.start("subclass", None))).status == "completed"
    assert in_engine == [["p0"]]

    in_process: list[Any] = []
    assert (await tf.execute_workflow(None, workflow(in_process), None)).status == "completed"
    assert in_process == in_engine, in_process   # today: [['a', 'b', 'p0']]


async def test_catch_result_shares_the_caught_record_in_an_engine(autojump_clock: Any, tmp_path: Any) -> None:
    """README, "Values you can store": "in an engine a run goes on with what it stored, not with
    the objects it was given ... so a step behaves the same whether or not a restart came
    between. Each step execution gets its own copy of ... the outputs of earlier steps
    (`ctx.steps`) ...: a step that changes them in place changes nothing stored and nothing a
    later step or attempt sees". docs/errors.md: the caught output "is `ctx.steps[name]` and
    `ctx.error` (and `ctx.data[result]`)".

    In an engine, `Catch(result="err")` puts the caught record's own output object in the shared
    data. A later step that adds a key to `ctx.data["err"]` (its own shared data, which it may
    change) thereby rewrites the caught execution's record in memory: the next step sees the
    key in `ctx.steps["c"]` and `ctx.error`, and `wait()` returns it in `step_results["c"]`, while
    storage holds the record without it (`get_instance` on the same SQLite engine, or after a
    restart, where the next step would see `ctx.steps["c"]` without it).
    """
    from trioflow.testing import open_test_engine

    def workflow(seen: list[Any]) -> tf.WorkflowDefinition:
        async def c(ctx: tf.WorkflowContext) -> None:
            raise ValueError("declined")

        async def h(ctx: tf.WorkflowContext) -> int:
            ctx.data["err"]["seen_by"] = "h"      # the shared data's own value
            return 1

        async def i(ctx: tf.WorkflowContext) -> None:
            seen.append(dict(ctx.steps["c"]))

        return (tf.workflow("caught")
                .step("c", c, catch=[tf.Catch(errors=ValueError, next="h", result="err")])
                .step("h", h).step("i", i).build())

    seen: list[Any] = []
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(str(tmp_path / "caught.db"))) as engine:
        engine.register(workflow(seen))
        iid = await engine.start("caught", None)
        waited = await engine.wait(iid)
        stored = await engine.get_instance(iid)
    assert stored is not None
    record = {"error": "ValueError", "cause": "declined"}
    assert stored.step_results["c"].output == record            # what storage holds
    assert waited.step_results["c"].output == record, waited.step_results["c"].output
    assert seen == [record], seen   # today: [{'error': 'ValueError', 'cause': 'declined', 'seen_by': 'h'}]
