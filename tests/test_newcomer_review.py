"""What a newcomer meets first (a review of README and docs; each test failed before its fix): documented
behaviour that did not hold, and mistakes whose errors did not say what was wrong or what to do."""

import asyncio

import pytest
import trio

import trioflow as tf
from trioflow.testing import ScriptedJob, open_test_engine


async def ok(ctx):
    return {"id": 1}


async def boom(ctx):
    raise ValueError("boom")


WF = tf.workflow("checkout").step("a", ok).build()


# -- 2. claims the code contradicts ------------------------------------------------------------


async def test_wait_on_parked_instance_whose_jobs_are_missing_raises_instance_not_live():
    """README "Storage and durability": an instance whose workflow's jobs are not all registered
    yet is held back ... (`wait()` on it meanwhile raises `InstanceNotLiveError` naming the
    missing jobs). For an instance parked on a delayed start (or a timer) wait() blocks instead."""
    wf = tf.workflow("held").task("t", job="later").build()
    adapter = tf.adapters.MemoryAdapter()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(wf)
        engine.jobs.register("later", lambda data: "x")
        await engine.start("held", {}, instance_id="j1", delay=0.2)
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(wf)  # the job "later" is not registered in this engine
        with trio.fail_after(3):
            with pytest.raises(tf.InstanceNotLiveError, match="later"):
                await engine.wait("j1")


async def test_cause_is_cut_to_32768_characters(autojump_clock):
    """docs/errors.md: `cause` ... cut to 32,768 characters (as Step Functions caps a cause)."""
    async def long_error(ctx):
        raise ValueError("x" * 40_000)

    async with open_test_engine() as engine:
        engine.register(tf.workflow("long").step("a", long_error).build())
        instance = await engine.wait(await engine.start("long"))
    assert len(instance.cause) <= 32_768, len(instance.cause)


# -- 3. unclear errors for newcomer mistakes ----------------------------------------------------


async def test_lambda_returning_a_coroutine_says_so_in_a_real_engine():
    """`.step("a", lambda ctx: ok(ctx))`: the test engine (threads=False) says "<lambda> is a plain
    function that returned a coroutine; make it an async def", but open_engine() (threads=True,
    the default) and execute_workflow fail with "Trio expected a sync function, but
    'in_lane.<locals>.call' appears to be asynchronous": internal names, no hint."""
    wf = tf.workflow("lam").step("a", lambda ctx: ok(ctx)).build()
    async with tf.open_engine() as engine:
        engine.register(wf)
        instance = await engine.wait(await engine.start("lam"))
    assert instance.status == "failed"
    assert "in_lane.<locals>" not in instance.cause
    assert "coroutine" in instance.cause


async def test_lambda_returning_a_coroutine_says_so_in_execute_workflow():
    result = await tf.execute_workflow(None, tf.workflow("lam").step("a", lambda ctx: ok(ctx)).build())
    assert not result.success
    assert "coroutine" in result.cause, result.cause


@pytest.mark.parametrize("method", ["wait", "get_instance", "cancel"])
async def test_instance_methods_given_a_definition_say_what_to_pass(autojump_clock, method):
    """start(definition) says "pass its name"; wait/get_instance/cancel(definition) raise
    TypeError: unhashable type: 'dict'."""
    async with open_test_engine() as engine:
        engine.register(WF)
        with pytest.raises(tf.InvalidArgumentError):
            await getattr(engine, method)(WF)


async def test_signal_given_a_definition_says_what_to_pass(autojump_clock):
    async with open_test_engine() as engine:
        engine.register(WF)
        with pytest.raises(tf.InvalidArgumentError):
            await engine.signal(WF, "go")


async def test_wait_given_an_instance_object_says_to_pass_its_id(autojump_clock):
    """get_instances(after=) takes an instance or its id; wait(instance) raised
    TypeError: unhashable type: 'dict'. It says to pass the id."""
    async with open_test_engine() as engine:
        engine.register(WF)
        instance = await engine.wait(await engine.start("checkout"))
        with pytest.raises(tf.InvalidArgumentError, match=f"pass its id, {instance.id!r}"):
            await engine.wait(instance)


async def test_engine_job_decorator_without_parentheses_is_refused(autojump_clock):
    """`@engine.job` (no name) silently turns the function into a decorator and registers
    nothing."""
    async with open_test_engine() as engine:
        with pytest.raises((tf.DefinitionError, tf.InvalidArgumentError)):
            @engine.job
            async def validate(data):
                return 1


async def test_execute_workflow_without_the_driver_argument_hints_at_it():
    """`execute_workflow(checkout, input)` (the driver forgotten) says "needs a built
    WorkflowDefinition, got {'items': []}" although a definition was passed."""
    with pytest.raises(tf.DefinitionError) as info:
        await tf.execute_workflow(WF, {"items": []})
    assert "driver" in str(info.value)


@pytest.mark.parametrize("adapter", ["orders.db", tf.adapters.SQLiteAdapter], ids=["str", "class"])
async def test_open_engine_with_a_wrong_adapter_names_it(adapter):
    """adapter="orders.db" -> AttributeError: 'str' object has no attribute 'open';
    adapter=SQLiteAdapter (the class) -> TypeError from use_clock()."""
    with pytest.raises(tf.InvalidArgumentError, match="adapter"):
        async with tf.open_engine(adapter=adapter):
            pass


async def test_open_engine_services_not_a_mapping():
    """services=[...] -> TypeError: cannot convert dictionary update sequence element #0 ..."""
    with pytest.raises(tf.InvalidArgumentError, match="services"):
        async with tf.open_engine(services=[object()]):
            pass


async def test_events_on_refuses_a_non_callable(autojump_clock):
    """events.on("workflow.completed", "x") is accepted; every event then logs an exception
    (invisible unless logging is configured)."""
    async with open_test_engine() as engine:
        with pytest.raises((TypeError, tf.InvalidArgumentError)):
            engine.events.on("workflow.completed", "not a callable")


async def test_events_on_with_swapped_arguments(autojump_clock):
    """events.on(print, "workflow.completed") -> TypeError: object of type
    'builtin_function_or_method' has no len()."""
    async with open_test_engine() as engine:
        with pytest.raises((TypeError, tf.InvalidArgumentError)) as info:
            engine.events.on(print, "workflow.completed")
        assert "pattern" in str(info.value)


def test_scripted_job_given_a_plain_value():
    """ScriptedJob("r-1") -> AttributeError: 'str' object has no attribute 'times'."""
    with pytest.raises((TypeError, ValueError)) as info:
        ScriptedJob("r-1")
    assert "returns" in str(info.value)


def test_with_hooks_names_only_the_unknown_hook():
    """with_hooks(on_start=..., on_finish=...) says "unknown hook in ['on_finish', 'on_start']"."""
    with pytest.raises(tf.DefinitionError) as info:
        tf.workflow("w").step("a", ok).with_hooks(on_start=print, on_finish=print)
    assert "on_start" not in str(info.value).split(";")[0]


def test_child_given_a_definition_says_pass_its_name():
    """.child(workflow=definition) dumps the whole definition's repr; start() says "pass its
    name, 'child'"."""
    child = tf.workflow("child").step("c1", ok).build()
    with pytest.raises(tf.DefinitionError) as info:
        tf.workflow("w").child("c", workflow=child).build()
    assert "TaskStep(" not in str(info.value)
    assert "'child'" in str(info.value)


async def test_get_instances_given_a_definition_says_pass_its_name(autojump_clock):
    async with open_test_engine() as engine:
        engine.register(WF)
        with pytest.raises(tf.InvalidArgumentError) as info:
            await engine.get_instances(WF)
        assert "TaskStep(" not in str(info.value)


def test_open_engine_under_asyncio_says_trio_is_needed():
    """Under asyncio (FastAPI...) the error is trio's "must be called from async context"."""
    async def main():
        async with tf.open_engine():
            pass

    with pytest.raises(Exception) as info:
        asyncio.run(main())
    assert "trio" in str(info.value).lower()


async def test_failure_events_carry_the_error_name_and_cause_as_caught_events_do(autojump_clock):
    """``workflow.step.caught`` gives the error's name and cause apart; ``workflow.step.failed``
    and ``workflow.failed`` gave only the whole text, "ValueError: boom"."""
    events = []
    async with open_test_engine() as engine:
        engine.events.on("workflow.*", events.append)
        engine.register(tf.workflow("bad").step("a", boom).build())
        await engine.wait(await engine.start("bad"))
    step = next(e for e in events if e["event"] == "workflow.step.failed")
    ended = next(e for e in events if e["event"] == "workflow.failed")
    for event in (step, ended):
        assert (event["error"], event["error_name"], event["cause"]) == ("ValueError: boom", "ValueError", "boom")


async def test_a_step_output_asked_of_a_step_not_completed_names_those_that_are(autojump_clock):
    """``ctx.steps["zzz"]`` raised a bare ``KeyError('zzz')``."""
    async def look(ctx):
        return ctx.steps["zzz"]

    async def check(ctx):
        return ("a" in ctx.steps, "zzz" in ctx.steps, ctx.steps.get("zzz", "none"), ctx.steps.get("a"))

    async with open_test_engine() as engine:
        engine.register(tf.workflow("look").step("a", ok).step("b", look).build())
        engine.register(tf.workflow("check").step("a", ok).step("b", check).build())
        failed = await engine.wait(await engine.start("look"))
        checked = await engine.wait(await engine.start("check"))
    assert failed.error_name == "KeyError"
    assert "no completed step named 'zzz' (completed: 'a')" in (failed.cause or "")
    assert checked.output == [True, False, "none", {"id": 1}]


def test_a_step_name_used_twice_in_the_main_line_says_so():
    """It said "used twice (workflow 'w' and workflow 'w')"."""
    with pytest.raises(tf.DefinitionError, match="step name 'a' is used twice in its main line"):
        tf.workflow("w").step("a", ok).step("a", ok).build()


async def test_open_engine_used_without_async_with_says_how_to_use_it():
    """``engine = tf.open_engine(); engine.register(...)`` raised AttributeError about an
    '_AsyncGeneratorContextManager'; ``await tf.open_engine()`` returned it silently."""
    with pytest.raises(AttributeError, match="async with tf.open_engine"):
        tf.open_engine().register(WF)
    with pytest.raises(TypeError, match="async with tf.open_engine"):
        await tf.open_engine()
    with pytest.raises(TypeError, match="needs async with, not with"):
        with tf.open_engine():
            pass
    async with tf.open_engine() as engine:
        assert isinstance(engine, tf.Engine)


async def test_an_event_pattern_no_event_matches_is_logged_and_every_event_sent_is_known(
        autojump_clock, caplog):
    """A typo in an event name (``workflow.complete``) was accepted silently and never fired."""
    from trioflow._events import EVENT_NAMES

    seen = []
    tries = []

    async def flaky(data):
        tries.append(1)
        if len(tries) == 1:
            raise ValueError("once")
        return data

    async def undo(data):
        return None

    wf = (tf.workflow("all").task("a", job=flaky, compensate=undo, retry=tf.Retry(max_attempts=2, interval=1.0))
          .step("bad", boom, catch=tf.Catch(errors=tf.ALL, next="nap")).wait("nap", seconds=5)
          .receive("go", signal="go")
          .map("each", items=lambda ctx: [1, 2], branch=tf.branch("item").task("i", job=flaky).build())
          .step("last", boom).build())
    with caplog.at_level("WARNING", logger="trioflow.events"):
        async with open_test_engine() as engine:
            engine.events.on("workflow.complete", seen.append)
            assert "no event the engine sends matches 'workflow.complete'" in caplog.text
            caplog.clear()
            engine.events.on("*", seen.append)
            engine.events.on("workflow.step.*", lambda e: None)
            assert caplog.text == ""
            engine.register(wf)
            iid = await engine.start("all", 1)
            await trio.sleep(10)
            await engine.signal(iid, "go")
            assert (await engine.wait(iid)).status == "failed"
    names = {e["event"] for e in seen}
    assert names <= EVENT_NAMES, names - EVENT_NAMES
    assert len(names) >= 12, names


def test_a_fail_step_error_name_longer_than_256_characters_is_refused_at_build():
    """Error names are capped, as Step Functions caps them (the cause is cut at 32,768)."""
    with pytest.raises(tf.DefinitionError, match="error must be an error name of 1 to 256 characters"):
        tf.workflow("w").fail("f", error="E" * 257, cause="why").build()
    tf.workflow("w").fail("f", error="E" * 256, cause="why").build()


# -- a second newcomer review (December 4th, sixth session) --------------------------------------


async def test_a_builder_given_where_a_definition_goes_is_told_to_call_build(autojump_clock):
    """`engine.register(tf.workflow("w").step(...))` (no `.build()`) said only "needs a built
    WorkflowDefinition, got <trioflow.WorkflowBuilder object ...>"."""
    builder = tf.workflow("w").step("a", ok)
    async with open_test_engine() as engine:
        with pytest.raises(tf.DefinitionError, match=r"it is a builder, call its \.build\(\)"):
            engine.register(builder)
    with pytest.raises(tf.DefinitionError, match=r"it is a builder, call its \.build\(\)"):
        await tf.execute_workflow(None, builder)
    with pytest.raises(tf.DefinitionError) as info:
        await tf.execute_workflow(None, {"not": "one"})
    assert ".build()" not in str(info.value)


async def test_initial_data_that_cannot_be_stored_is_named_as_a_path_in_with_data(autojump_clock):
    """A set in `with_data` said "the initial data (with_data) of workflow 'wd'['s'] is a set":
    the path glued onto the workflow's name."""
    wf = tf.workflow("wd").with_data({"s": {1}}).step("a", ok).build()
    async with open_test_engine() as engine:
        with pytest.raises(tf.UnencodableValueError, match=r"initial data of workflow 'wd': with_data\['s'\] is a set"):
            engine.register(wf)
