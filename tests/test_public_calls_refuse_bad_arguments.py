"""Every public call of trioflow, trioflow.testing and trioflow.adapters that takes arguments
refuses those that do not bind (a misspelt keyword, one left out, one too many) with
trioflow's own InvalidArgumentError naming them and the nearest keyword it takes, as the
engine's start(), signal(), cancel(), wait(), get_instance(s)() and purge() did already (README,
The engine). The builders, register(), resume(), the events, open_engine(), execute_workflow(),
the testing kit and the adapters' constructors let Python's TypeError through until the commit
that added this file. An engine call refused so leaves storage as it was."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._engine_arguments import refuses_unbound_arguments
from trioflow.adapters import MemoryAdapter, MemoryDriver, SQLiteAdapter, SQLiteDriver
from trioflow.testing import (
    ScriptedJob, check_persistence_adapter, engine_portal, explore_crashes, hangs, open_test_engine, raises, returns,
    run, sleeps, virtual_wall_clock,
)


def _noop(ctx: Any) -> None:
    return None


async def _async_noop() -> None:
    return None


def _definition() -> tf.WorkflowDefinition:
    return tf.workflow("order").step("take", _noop).receive("paid", signal="pay").build()


def _item() -> tf.Branch:
    return tf.branch("item").step("one", _noop).build()


Call = Callable[[Any], Any]  # (of an open engine; its result is awaited if it can be)

#: (what a message calls it, the function inspect and checkers see, the call, the misspelt
#: keyword, the keyword it meant: None where it takes none near).
CALLS: dict[str, tuple[str, Any, Call, str, str | None]] = {
    # The builders.
    "workflow": ("workflow", type(tf.workflow).__call__, lambda e: tf.workflow(nme="w"), "nme", "name"),
    "branch": ("branch", tf.branch, lambda e: tf.branch(nme="b"), "nme", "name"),
    "WorkflowBuilder": ("WorkflowBuilder", tf.WorkflowBuilder, lambda e: tf.WorkflowBuilder(nme="w"), "nme", "name"),
    "BranchBuilder": ("BranchBuilder", tf.BranchBuilder, lambda e: tf.BranchBuilder(nme="b"), "nme", "name"),
    "tf.step": ("step", tf.step, lambda e: tf.step("a", exeute=_noop), "exeute", "execute"),
    "when": ("when", tf.when, lambda e: tf.when(_noop, nxt="a"), "nxt", "next"),
    ".step": ("step", tf.WorkflowBuilder.step, lambda e: tf.workflow("w").step("a", exeute=_noop), "exeute", "execute"),
    "branch .step": ("step", tf.BranchBuilder.step, lambda e: tf.branch("b").step("a", exeute=_noop), "exeute",
                     "execute"),
    ".task": ("task", tf.WorkflowBuilder.task, lambda e: tf.workflow("w").task("a", jb="j"), "jb", "job"),
    ".choice": ("choice", tf.WorkflowBuilder.choice, lambda e: tf.workflow("w").choice("a", chioces=[]), "chioces",
                "choices"),
    ".parallel": ("parallel", tf.WorkflowBuilder.parallel,
                  lambda e: tf.workflow("w").parallel("a", branchs=[_item()]), "branchs", "branches"),
    ".map": ("map", tf.WorkflowBuilder.map, lambda e: tf.workflow("w").map("a", itmes=_noop, branch=_item()),
             "itmes", "items"),
    ".child": ("child", tf.WorkflowBuilder.child, lambda e: tf.workflow("w").child("a", workflw="x"), "workflw",
               "workflow"),
    ".pass_": ("pass_", tf.WorkflowBuilder.pass_, lambda e: tf.workflow("w").pass_("a", transfrom=_noop),
               "transfrom", "transform"),
    ".succeed": ("succeed", tf.WorkflowBuilder.succeed, lambda e: tf.workflow("w").succeed("a", outptu=1), "outptu",
                 "output"),
    ".fail": ("fail", tf.WorkflowBuilder.fail, lambda e: tf.workflow("w").fail("a", eror="E"), "eror", "error"),
    ".wait": ("wait", tf.WorkflowBuilder.wait, lambda e: tf.workflow("w").wait("a", secnds=1), "secnds", "seconds"),
    ".receive": ("receive", tf.WorkflowBuilder.receive, lambda e: tf.workflow("w").receive("a", signl="go"),
                 "signl", "signal"),
    ".end": ("end", tf.WorkflowBuilder.end, lambda e: tf.workflow("w").end(nam="a"), "nam", "name"),
    ".continue_as_new": ("continue_as_new", tf.WorkflowBuilder.continue_as_new,
                         lambda e: tf.workflow("w").continue_as_new("a", inptu=1), "inptu", "input"),
    ".with_data": ("with_data", tf.WorkflowBuilder.with_data, lambda e: tf.workflow("w").with_data(dat={}), "dat",
                   "data"),
    ".transactional": ("transactional", tf.WorkflowBuilder.transactional,
                       lambda e: tf.workflow("w").transactional(enabeld=True), "enabeld", "enabled"),
    ".with_timeout": ("with_timeout", tf.WorkflowBuilder.with_timeout,
                      lambda e: tf.workflow("w").with_timeout(secnds=1), "secnds", "seconds"),
    ".with_compensation_timeout": ("with_compensation_timeout", tf.WorkflowBuilder.with_compensation_timeout,
                                   lambda e: tf.workflow("w").with_compensation_timeout(secnds=1), "secnds", "seconds"),
    ".default_retry": ("default_retry", tf.WorkflowBuilder.default_retry,
                       lambda e: tf.workflow("w").default_retry(rety=tf.Retry()), "rety", "retry"),
    ".build": ("build", tf.WorkflowBuilder.build, lambda e: tf.workflow("w").end("a").build(strict=True), "strict",
               None),
    "branch .build": ("build", tf.BranchBuilder.build, lambda e: tf.branch("b").end("a").build(strict=True),
                      "strict", None),
    "Retry": ("Retry", tf.Retry, lambda e: tf.Retry(max_attemps=3), "max_attemps", "max_attempts"),
    "Catch": ("Catch", tf.Catch, lambda e: tf.Catch(error=["E"], next="a"), "error", "errors"),
    "create_entity_step": ("create_entity_step", tf.create_entity_step,
                           lambda e: tf.create_entity_step("a", "orders", _noop, store="id"), "store", "store_as"),
    "update_entity_step": ("update_entity_step", tf.update_entity_step,
                           lambda e: tf.update_entity_step("a", "orders", _noop, _noop, compensat=False), "compensat",
                           "compensate"),
    "delete_entity_step": ("delete_entity_step", tf.delete_entity_step,
                           lambda e: tf.delete_entity_step("a", "orders", _noop, compensat=False), "compensat",
                           "compensate"),
    "current_step": ("current_step", tf.current_step, lambda e: tf.current_step(step="a"), "step", None),
    # The jobs.
    "JobRegistry": ("JobRegistry", tf.JobRegistry, lambda e: tf.JobRegistry(job={}), "job", "jobs"),
    "jobs.register": ("register", tf.JobRegistry.register, lambda e: e.jobs.register("j", _noop, replac=True),
                      "replac", "replace"),
    "jobs.job": ("job", tf.JobRegistry.job, lambda e: e.jobs.job(nme="j"), "nme", "name"),
    # The engine.
    "open_engine": ("open_engine", tf.open_engine, lambda e: tf.open_engine(adaptr=None), "adaptr", "adapter"),
    "register": ("register", tf.Engine.register, lambda e: e.register(_definition(), replce=True), "replce",
                 "replace"),
    "resume": ("resume", tf.Engine.resume, lambda e: e.resume(now=True), "now", None),
    "job": ("job", tf.Engine.job, lambda e: e.job(nme="j"), "nme", "name"),
    "start": ("start", tf.Engine.start, lambda e: e.start("order", instanceid="a"), "instanceid", "instance_id"),
    "signal": ("signal", tf.Engine.signal, lambda e: e.signal("a", "pay", paylaod=1), "paylaod", "payload"),
    "cancel": ("cancel", tf.Engine.cancel, lambda e: e.cancel(instanceid="a"), "instanceid", "instance_id"),
    "wait": ("wait", tf.Engine.wait, lambda e: e.wait(instanceid="a"), "instanceid", "instance_id"),
    "get_instance": ("get_instance", tf.Engine.get_instance, lambda e: e.get_instance(instanceid="a"),
                     "instanceid", "instance_id"),
    "get_instances": ("get_instances", tf.Engine.get_instances, lambda e: e.get_instances(limt=1), "limt", "limit"),
    "purge": ("purge", tf.Engine.purge, lambda e: e.purge(older_tan=1), "older_tan", "older_than"),
    "events.on": ("on", tf.EventBus.on, lambda e: e.events.on("*", _noop, bufer=1), "bufer", "buffer"),
    "events.subscribe": ("subscribe", tf.EventBus.subscribe, lambda e: e.events.subscribe("*", bufer=1), "bufer",
                         "buffer"),
    "execute_workflow": ("execute_workflow", tf.execute_workflow,
                         lambda e: tf.execute_workflow(None, _definition(), inptu=1), "inptu", "input"),
    "run_workflow": ("run_workflow", tf.run_workflow,
                     lambda e: tf.run_workflow(None, "w", [tf.step("a", _noop)], inptu=1), "inptu", "input"),
    # The adapters.
    "MemoryAdapter": ("MemoryAdapter", MemoryAdapter, lambda e: MemoryAdapter(path="x"), "path", None),
    "SQLiteAdapter": ("SQLiteAdapter", SQLiteAdapter, lambda e: SQLiteAdapter("x.db", synchronus="FULL"),
                      "synchronus", "synchronous"),
    "MemoryDriver": ("MemoryDriver", MemoryDriver, lambda e: MemoryDriver(entites={}), "entites", "entities"),
    "SQLiteDriver": ("SQLiteDriver", SQLiteDriver, lambda e: SQLiteDriver(path_or_conection="x.db"),
                     "path_or_conection", "path_or_connection"),
    # The testing kit.
    "open_test_engine": ("open_test_engine", None, lambda e: open_test_engine(servces={}), "servces", "services"),
    "run": ("run", run, lambda e: run(_async_noop, asyncfn=1), "asyncfn", "async_fn"),
    "explore_crashes": ("explore_crashes", explore_crashes,
                        lambda e: explore_crashes(_definition(), lost_write=False), "lost_write", "lost_writes"),
    "check_persistence_adapter": ("check_persistence_adapter", check_persistence_adapter,
                                  lambda e: check_persistence_adapter(open_adaptr=MemoryAdapter), "open_adaptr",
                                  "open_adapter"),
    "returns": ("returns", returns, lambda e: returns(1, time=2), "time", "times"),
    "raises": ("raises", raises, lambda e: raises(ValueError, mesage="no"), "mesage", "message"),
    "sleeps": ("sleeps", sleeps, lambda e: sleeps(1, thn=returns()), "thn", "then"),
    "hangs": ("hangs", hangs, lambda e: hangs(time=1), "time", "times"),
    "ScriptedJob": ("ScriptedJob", ScriptedJob, lambda e: ScriptedJob(nam="x"), "nam", "name"),
    "virtual_wall_clock": ("virtual_wall_clock", virtual_wall_clock, lambda e: virtual_wall_clock(clock=None),
                           "clock", None),
}


def _expected(name: str, wrong: str, near: str | None) -> str:
    return (rf"{re.escape(name)}\(\): .*no keyword '{wrong}'" + (rf" \(did you mean {near}=\?\)" if near else "")
            if name != "open_test_engine" else  # (its **options are checked by the check it had already)
            rf"open_test_engine: no option '{wrong}'.*did you mean {near}= for '{wrong}'\?")


async def _made(call: Call, engine: tf.Engine) -> None:
    """Make ``call``, awaiting what it gives, and entering a block it gives."""
    made = call(engine)
    if inspect.isawaitable(made):
        await made
    elif hasattr(made, "__aenter__"):
        async with made:
            pass


@pytest.mark.parametrize("case", list(CALLS))
async def test_a_misspelt_keyword_is_refused_naming_it_and_the_nearest(
    case: str, autojump_clock: trio.testing.MockClock,
) -> None:
    name, target, call, wrong, near = CALLS[case]
    async with open_test_engine() as engine:
        engine.register(_definition())
        with pytest.raises(tf.InvalidArgumentError, match=_expected(name, wrong, near)) as caught:
            await _made(call, engine)
    # trioflow's own error, as before for every other bad argument: a ValueError, not a TypeError.
    assert isinstance(caught.value, ValueError) and not isinstance(caught.value, TypeError)
    if name != "open_test_engine":  # (Python's TypeError is not shown as its cause, nor its context)
        assert caught.value.__cause__ is None and caught.value.__suppress_context__
    if target is not None and near is not None:
        # The signature is still the function's, for inspect and checkers.
        assert near in inspect.signature(target).parameters


@pytest.mark.parametrize("call, message", [
    (lambda e: tf.workflow(), r"workflow\(\): name is missing"),
    (lambda e: tf.workflow("w").task("a", "j"), r"task\(\): job is missing; .*2 arguments given positionally, where"
                                                r" it takes 1 \(name\): pass job=, "),
    (lambda e: tf.workflow("w").with_hooks(_noop), r"with_hooks\(\): 1 argument given positionally, where it takes"
                                                    r" none: pass them by keyword"),
    (lambda e: tf.Retry(3, max_attempts=4), r"Retry\(\): max_attempts is given twice"),
    (lambda e: e.register(), r"register\(\): definition is missing"),
    (lambda e: tf.open_engine(MemoryAdapter()), r"open_engine\(\): 1 argument given positionally, where it takes"
                                                r" none: pass adapter=, max_running=, "),
    (lambda e: open_test_engine(MemoryAdapter()), r"open_test_engine\(\): 1 argument given positionally"),
    (lambda e: tf.adapters.SQLiteAdapter(), r"SQLiteAdapter\(\): path is missing"),
])
async def test_other_arguments_that_do_not_bind_are_refused_too(
    call: Call, message: str, autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_engine() as engine:
        with pytest.raises(tf.InvalidArgumentError, match=message):
            await _made(call, engine)


async def test_the_context_s_methods_refuse_them_in_a_step() -> None:
    refused: list[str] = []

    def step(ctx: tf.WorkflowContext) -> None:
        for call in (lambda: ctx.set("k", vale=1), lambda: ctx.get(ky="k"), lambda: ctx.get_step_result(nam="a"),
                     lambda: ctx.resolve(nme="db")):
            try:
                call()
            except tf.InvalidArgumentError as exc:
                refused.append(str(exc))

    result = await tf.execute_workflow(None, tf.workflow("ctx").step("look", step).build())
    assert result.status == "completed"
    assert [m.split(" (did you mean ")[1].split("=")[0] for m in refused] == ["value", "key", "name", "name"]
    assert [m.split("(")[0] for m in refused] == ["set", "get", "get_step_result", "resolve"]


def test_the_portal_refuses_them_from_synchronous_code() -> None:
    with pytest.raises(tf.InvalidArgumentError, match=r"engine_portal\(\): 2 arguments given positionally, where it takes 1 \(setup\): pass them by keyword"):
        engine_portal(None, MemoryAdapter())  # type: ignore[misc]
    with engine_portal() as portal:
        for call, message in (
            (lambda: portal.call(f=_noop), r"call\(\): no keyword 'f'.*fn is missing"),
            (lambda: portal.advance(secs=1), r"advance\(\): no keyword 'secs' \(did you mean seconds=\?\)"),
            (lambda: portal.restart(downtim=1), r"restart\(\): no keyword 'downtim' \(did you mean downtime=\?\)"),
        ):
            with pytest.raises(tf.InvalidArgumentError, match=message):
                call()


def test_a_type_error_the_body_raises_goes_on_as_it_was() -> None:
    """Only arguments that do not bind are refused so: a function that ran raises its own."""
    ran: list[int] = []

    @refuses_unbound_arguments
    def adds(x: int) -> int:
        ran.append(x)
        raise TypeError("its own")

    with pytest.raises(TypeError, match="^its own$") as caught:
        adds(1)
    assert not isinstance(caught.value, tf.InvalidArgumentError) and ran == [1]
    with pytest.raises(tf.InvalidArgumentError, match=r"adds\(\): no keyword 'y'"):
        adds(y=1)  # type: ignore[call-arg]
    assert ran == [1]  # (its body never ran)


ENGINE_CALLS = ["register", "resume", "job", "start", "signal", "cancel", "wait", "get_instance", "get_instances",
                "purge", "events.on", "events.subscribe", "jobs.register", "jobs.job"]


async def _stored(adapter: MemoryAdapter) -> list[Any]:
    rows = await adapter.list_instances()
    return [(row, await adapter.signals(row.instance_id)) for row in rows]


@pytest.mark.parametrize("case", ENGINE_CALLS)
async def test_an_engine_call_refused_leaves_storage_as_it_was(
    case: str, autojump_clock: trio.testing.MockClock,
) -> None:
    _, _, call, wrong, near = CALLS[case]
    adapter = MemoryAdapter()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_definition())
        await engine.start("order", instance_id="a")
        await trio.sleep(1)  # (it waits for its signal)
        before = await _stored(adapter)
        with pytest.raises(tf.InvalidArgumentError):
            await _made(call, engine)
        await trio.sleep(1)
        assert await _stored(adapter) == before
        assert (await engine.get_instance("a")).status == "running"  # type: ignore[union-attr]
