"""Review of bad inputs: wrong values fed to public entry points (builder, adapters, engine,
in-process runs, testing kit). Every test here failed on main at 676c10c because of a library
defect, each fixed in the commit that added this file.

The project's rule: "Bad input gets a clear error from trioflow's own hierarchy
(trioflow.TrioflowError subclasses, see docs/errors.md), naming what was wrong, with nothing
half-written to storage. Decoding never executes code."
"""

from __future__ import annotations

import decimal
import math
import threading
from pathlib import Path

import pytest
import trio

import trioflow as tf
from trioflow.testing import ScriptedJob, engine_portal, explore_crashes, open_test_engine, returns

LONE_SURROGATE = "x\ud800"


async def ok(ctx: tf.WorkflowContext) -> str:
    return "ok"


async def boom(ctx: tf.WorkflowContext) -> None:
    raise ValueError("boom")


# --- builder: generator functions where a plain function's answer is used ----------------------


def never_true_generator(ctx: tf.WorkflowContext):  # type: ignore[no-untyped-def]
    if False:
        yield
    return False


async def never_true_async_generator(ctx: tf.WorkflowContext):  # type: ignore[no-untyped-def]
    if False:
        yield


@pytest.mark.parametrize("condition", [never_true_generator, never_true_async_generator],
                         ids=["generator", "async-generator"])
async def test_a_generator_function_as_a_choice_condition_is_refused_not_silently_true(
        autojump_clock: trio.testing.MockClock, condition) -> None:  # type: ignore[no-untyped-def]
    """README: "A choice's conditions are plain functions of ctx (an `async def` is refused by
    `build()` ...)"; runtime/_validate.py refuses an async condition because "a coroutine would
    count as true, and the first rule would always win". A generator function (or an async
    generator function) gives a generator object, which is just as true: build() accepts it and
    the first rule always wins, here taking the branch the condition never chose."""
    try:
        definition = (tf.workflow("gen-choice")
                      .choice("c", choices=[tf.when(condition, next="yes")], default="no")
                      .succeed("yes", output="took yes")
                      .succeed("no", output="took no")
                      .build())
    except tf.DefinitionError:
        return  # refused at build: what the docs promise for conditions that are not plain
    async with open_test_engine() as engine:
        engine.register(definition)
        instance = await engine.wait(await engine.start("gen-choice"))
    assert instance.output == "took no", (
        f"build() accepted {condition.__name__} as a condition and its generator counted as true:"
        f" the run took {instance.output!r}")


def never_matches_generator(error: BaseException):  # type: ignore[no-untyped-def]
    if False:
        yield
    return False


async def never_matches_async_generator(error: BaseException):  # type: ignore[no-untyped-def]
    if False:
        yield


@pytest.mark.parametrize("predicate", [never_matches_generator, never_matches_async_generator],
                         ids=["generator", "async-generator"])
async def test_a_generator_function_as_a_catch_predicate_is_refused_not_a_match_for_everything(
        autojump_clock: trio.testing.MockClock, predicate) -> None:  # type: ignore[no-untyped-def]
    """docs/errors.md, Catch matching: "predicates, `predicate(error) -> bool`, plain functions
    (an `async def` one is refused: it is called, not awaited)". runtime/_matching.py refuses an
    async predicate because "Called without being awaited, it would give a coroutine, which is
    true: a match." A generator function is called the same way and gives a generator, also
    true: `tf.Catch` accepts it and it catches every error, routing a failure the predicate
    never matched."""
    try:
        catcher = tf.Catch(errors=predicate, next="handled")
    except tf.DefinitionError:
        return  # refused as it is made: what the docs promise for predicates that are not plain
    definition = (tf.workflow("gen-catch")
                  .step("a", boom, catch=catcher)
                  .succeed("done")
                  .step("handled", ok)
                  .build())
    async with open_test_engine() as engine:
        engine.register(definition)
        instance = await engine.wait(await engine.start("gen-catch"))
    assert instance.status == "failed" and instance.error_name == "ValueError", (
        f"a generator predicate matched ValueError('boom'): the instance ended {instance.status!r},"
        f" its failure routed to 'handled'")


@pytest.mark.parametrize("predicate", [never_matches_generator, never_matches_async_generator],
                         ids=["generator", "async-generator"])
def test_a_generator_function_as_a_retry_on_predicate_is_refused(predicate) -> None:  # type: ignore[no-untyped-def]
    """README: "`retry_on` takes exception types, strings ..., `tf.ALL` and predicates", and
    "`Retry.retry_on` uses the same matcher" as Catch, whose async predicates are refused since
    an unawaited call is always true. A generator predicate is always true too (every error is
    retried), yet `tf.Retry` accepts it."""
    with pytest.raises(tf.DefinitionError):
        tf.Retry(max_attempts=3, interval=0, retry_on=[predicate])


def cause_generator(ctx: tf.WorkflowContext):  # type: ignore[no-untyped-def]
    yield "card declined"


async def test_a_generator_function_as_a_fail_cause_is_refused_not_recorded_as_its_repr(
        autojump_clock: trio.testing.MockClock) -> None:
    """docs/errors.md: "`.fail(name, error="Name", cause=...)` fails its lane with ... the cause
    (text, or `cause(ctx)` turned into text" and README: "a fail step's `cause` are plain
    functions of `ctx` (an `async def` is refused at `build()`)". A generator function is
    accepted and the instance's cause is recorded as `"<generator object cause_generator at
    0x...>"`, not anything the function yields or returns."""
    try:
        definition = tf.workflow("gen-cause").fail("f", error="OrderCancelled", cause=cause_generator).build()
    except tf.DefinitionError:
        return
    async with open_test_engine() as engine:
        engine.register(definition)
        instance = await engine.wait(await engine.start("gen-cause"))
    assert "generator object" not in (instance.cause or ""), f"the cause recorded is {instance.cause!r}"


async def test_a_generator_function_as_a_hook_or_event_callback_is_refused_not_silently_never_run(
        autojump_clock: trio.testing.MockClock) -> None:
    """README, Hooks: "`on_complete(result)` ... One that raises is logged and ignored"; Events:
    "`on(pattern, callback)` takes sync or async callbacks". A generator function given as a
    hook or an event callback is accepted (`engine.jobs.register` and `.step` refuse generator
    functions: "a step returns its output"), and is then called for a generator that nobody
    iterates: its body never runs, and nothing is logged or raised anywhere."""
    ran: list[str] = []

    def on_complete(result: tf.WorkflowResult):  # type: ignore[no-untyped-def]
        ran.append("on_complete")
        yield

    def on_event(event: dict):  # type: ignore[no-untyped-def, type-arg]
        ran.append("event")
        yield

    refused = []
    async with open_test_engine() as engine:
        try:
            engine.events.on("workflow.completed", on_event)
        except tf.TrioflowError:
            refused.append("event")
        try:
            definition = tf.workflow("gen-hook").step("a", ok).with_hooks(on_complete=on_complete).build()
        except tf.DefinitionError:
            refused.append("on_complete")
            definition = tf.workflow("gen-hook").step("a", ok).build()
        engine.register(definition)
        await engine.wait(await engine.start("gen-hook"))
        await trio.sleep(1)
    assert sorted(ran + refused) == ["event", "on_complete"], (
        f"accepted and never run: {sorted({'event', 'on_complete'} - set(ran) - set(refused))}")


# --- builder: names that cannot be stored ------------------------------------------------------


def test_a_map_branch_name_that_is_not_valid_text_is_a_definition_error() -> None:
    """README: `build()` "rejects, with a `DefinitionError` (also a `ValueError`) naming the
    step: ... malformed options". A parallel step's branch named with a lone surrogate is
    refused that way ("branch name 'x\\ud800' is not valid text"); a map step's branch of the
    same name makes build() raise a bare UnicodeEncodeError from the fingerprint
    (runtime/_builder.py:_fingerprint)."""
    branch = tf.branch(LONE_SURROGATE).step("a", ok).build()
    with pytest.raises(tf.DefinitionError):
        tf.workflow("w").map("m", items=lambda ctx: [1], branch=branch).build()


async def test_a_workflow_name_that_cannot_be_stored_is_refused_naming_the_name(
        autojump_clock: trio.testing.MockClock) -> None:
    """Rule: bad input gets a clear error "naming what was wrong". A workflow named with a lone
    surrogate is built and registered (step, branch and signal names of that kind are refused
    by build(): "is not valid text"); every start then fails with
    `UnencodableValueError: instance '<id>' cannot be encoded`, which names the instance and
    not the workflow name that is at fault (and a child step that starts that workflow fails
    its parent with `error_name == "Error"`, `cause == "internal error: ..."`)."""
    try:
        definition = tf.workflow(LONE_SURROGATE).step("a", ok).build()
    except tf.DefinitionError:
        return  # refused at build, as step names of that kind are
    async with open_test_engine() as engine:
        try:
            engine.register(definition)
        except tf.TrioflowError:
            return  # refused at register: fine too
        with pytest.raises(tf.TrioflowError) as raised:
            await engine.start(LONE_SURROGATE, 1, instance_id="i-1")
        assert await engine.get_instance("i-1") is None
    message = str(raised.value)
    assert "workflow" in message and "name" in message, (
        f"the error does not say the workflow's name is what cannot be stored: {message!r}")


async def test_a_catch_result_key_that_cannot_be_stored_is_not_silently_dropped(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """docs/errors.md: "with `result="payment_error"`, it is also set in the shared data,
    `ctx.data["payment_error"]`". `tf.Catch(result=...)` checks only for a non-empty string, so
    a key holding a lone surrogate (refused by `with_data` as a key that cannot be stored) is
    accepted; in an engine the caught error is then silently left out of `ctx.data`: no
    DefinitionError at build, no step failure, the next step sees `{}` and the run completes."""
    key = LONE_SURROGATE
    try:
        catcher = tf.Catch(errors=tf.ALL, next="after", result=key)
    except tf.DefinitionError:
        return  # refused as it is made: fine
    try:
        definition = (tf.workflow("catch-result")
                      .step("a", boom, catch=catcher)
                      .succeed("never")
                      .step("after", lambda ctx: sorted(ctx.data))
                      .build())
    except tf.DefinitionError:
        return  # refused at build: fine
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(tmp_path / "flows.db")) as engine:
        engine.register(definition)
        instance = await engine.wait(await engine.start("catch-result"))
    if instance.status == "failed" and instance.error_name == "UnencodableValueError":
        return  # the step failed, naming the key that cannot be stored: acceptable
    assert instance.output == [key], (
        f"the caught error was silently dropped from ctx.data: the step after the catch saw keys"
        f" {instance.output!r} and the instance ended {instance.status!r}")


# --- entity steps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("store_as", [["order_id"], {"k": 1}, ("order_id",)], ids=["list", "dict", "tuple"])
async def test_a_create_entity_step_with_a_store_as_that_is_no_key_leaves_no_row_behind(
        autojump_clock: trio.testing.MockClock, store_as: object) -> None:
    """README: "`tf.create_entity_step(name, entity, data_fn, store_as=None)` | creates a row |
    the row | deletes it" and "Entity steps create, update or delete rows through the driver and
    are compensated automatically". `store_as` is not checked by the factory nor by build():
    a list (or a dict, or a tuple) is accepted, the run creates the row, and only then
    `ctx.set(store_as, key)` fails the step (a bare `TypeError: unhashable type: 'list'`, or an
    UnencodableValueError for the tuple). The step did not complete, so nothing compensates
    it: the instance ends `failed` with the row it created left in the business table."""
    driver = tf.adapters.MemoryDriver()
    try:
        definition = (tf.workflow("mk-order")
                      .step(tf.create_entity_step("create-order", "orders", lambda ctx: {"total": 5},
                                                  store_as=store_as))  # type: ignore[arg-type]
                      .build())
    except tf.DefinitionError:
        return  # refused before anything runs: what "bad input gets a clear error" asks
    async with open_test_engine(driver=driver) as engine:
        engine.register(definition)
        instance = await engine.wait(await engine.start("mk-order"))
    rows = await driver.find_many("orders", {})
    assert rows == [], (
        f"store_as={store_as!r} was accepted; the run ended {instance.status!r} with"
        f" {instance.error_name}: {instance.cause} and left {rows!r} in the table")


async def test_a_create_entity_step_on_an_entity_that_is_not_a_name_is_a_definition_error() -> None:
    """README: entity steps take a table name (`tf.create_entity_step(name, entity, data_fn)`),
    and "an unknown one is an `adapters.UnknownEntityError` ... naming it". An entity given as a
    list is accepted by the factory and by build(), and the step then fails with a bare
    `TypeError: unhashable type: 'list'` (on `MemoryDriver` and `SQLiteDriver` alike);
    `entity=None` or `1` is accepted too, and `MemoryDriver` silently creates a table of that
    name."""
    with pytest.raises(tf.TrioflowError):
        definition = (tf.workflow("mk")
                      .step(tf.create_entity_step("create", ["orders"], lambda ctx: {"total": 5}))  # type: ignore[arg-type]
                      .build())
        result = await tf.execute_workflow(tf.adapters.MemoryDriver(), definition)
        assert not result.success
        raise result.error  # type: ignore[misc]


# --- adapters' constructors -----------------------------------------------------------------------


def test_sqlite_adapter_busy_timeout_too_large_for_a_float_is_a_database_error(tmp_path: Path) -> None:
    """adapters/_sqlite.py: `busy_timeout` is checked ("busy_timeout must be a number of seconds
    >= 0") with a `DatabaseError`, and README: "durations are seconds, as a number or a
    `datetime.timedelta`, everywhere one is taken (... SQLite's `busy_timeout`)". An int past
    what a float holds passes the check and the constructor raises a bare OverflowError from
    `float(busy_timeout)` (SQLiteAdapter.__init__); `inf` is accepted, so the value means "wait
    the longest", as `timedelta.max` does."""
    try:
        tf.adapters.SQLiteAdapter(tmp_path / "flows.db", busy_timeout=2**1100)
    except tf.TrioflowError:
        pass


async def test_sqlite_adapter_path_with_a_nul_byte_is_refused_with_a_database_error(tmp_path: Path) -> None:
    """README's error list: "`StorageError` ... (`adapters.DatabaseError` ... on SQLite; a
    database whose directory is missing, so that its lock file cannot be created, is an
    `adapters.DatabaseError` that says so)"; SQLiteAdapter's constructor refuses paths it
    cannot use (non-str, "", ":memory:") with `DatabaseError`. A path holding a NUL byte is
    accepted, and `open_engine` then raises a bare `ValueError: embedded null byte` from
    `os.path.realpath` (SQLiteAdapter._lock)."""
    path = str(tmp_path / "a\x00b.db")
    try:
        adapter = tf.adapters.SQLiteAdapter(path)
    except tf.TrioflowError:
        return
    with pytest.raises(tf.TrioflowError):
        async with tf.open_engine(adapter=adapter):
            pass


async def test_sqlite_driver_path_with_a_nul_byte_fails_with_a_driver_error(tmp_path: Path) -> None:
    """README: "`SQLiteDriver(path_or_connection)` ... An unknown one is an
    `adapters.UnknownEntityError` ...", and a database that cannot be opened is reported as
    `DriverError` ("reading the schema of 't' failed: unable to open database file"; "begin
    failed: file is not a database"). A path with a NUL byte is taken by the constructor, and
    every call then raises a bare `ValueError: embedded null byte` (here a create entity step
    fails with `error_name == "ValueError"`)."""
    try:
        driver = tf.adapters.SQLiteDriver(str(tmp_path / "a\x00b.db"))
    except tf.TrioflowError:
        return
    with pytest.raises(tf.TrioflowError):
        await driver.find_many("t", {})


# --- in-process runs ---------------------------------------------------------------------------


async def test_run_workflow_hooks_with_a_non_string_key_is_a_definition_error() -> None:
    """README: `run_workflow(..., hooks=...)` sets the hooks "as the builder's ... `with_hooks`
    set them"; run_workflow refuses hooks that are not a mapping with a `DefinitionError`, and
    `with_hooks` names an unknown hook ("unknown hook on_foo"). A mapping with a non-string key
    raises a bare `TypeError: keywords must be strings` from `builder.with_hooks(**hooks)`
    (runtime/_inprocess.py:run_workflow)."""
    with pytest.raises(tf.DefinitionError):
        await tf.run_workflow(None, "n", [tf.step("a", ok)], hooks={1: ok})  # type: ignore[dict-item]


# --- engine: idempotent start -----------------------------------------------------------------


async def test_an_idempotent_start_with_a_signalling_nan_decimal_input_returns_the_instance(
        autojump_clock: trio.testing.MockClock) -> None:
    """README, Instance ids: "`start(..., instance_id=)` is idempotent ... Inputs are compared as
    they read back from storage"; `Decimal` is "stored exactly", and a float NaN input is taken
    as the same as itself (runtime/_codec.py:_same). `Decimal('sNaN')` reads back as itself,
    but comparing it raises `decimal.InvalidOperation`, which `same_value` swallows as "not the
    same": the second start of the same id with the same input raises
    `InstanceIdConflictError`."""
    async with open_test_engine() as engine:
        engine.register(tf.workflow("w").step("a", ok).build())
        value = {"amount": decimal.Decimal("sNaN")}
        first = await engine.start("w", value, instance_id="order-1")
        again = await engine.start("w", value, instance_id="order-1")
    assert first == again == "order-1"


# --- testing kit -------------------------------------------------------------------------------


async def test_returns_of_a_value_it_cannot_copy_is_refused_as_it_is_made() -> None:
    """docs/testing.md: the behaviour functions refuse "with `InvalidArgumentError` what cannot
    play"; "`returns(value)` gives a fresh deep copy of `value` at each call";
    runtime/testing/_scripted.py: "Each behaviour refuses, as it is made, what it could not
    play: the mistake would otherwise fail the step under test with a bare error, as if the
    workflow were wrong." `returns({"conn": threading.Lock()})` is accepted, and every call then
    fails the step with a bare `TypeError: cannot pickle '_thread.lock' object` from
    `copy.deepcopy`."""
    try:
        behaviour = returns({"conn": threading.Lock()})
    except tf.InvalidArgumentError:
        return
    job = ScriptedJob(behaviour)
    result = await tf.execute_workflow(None, tf.workflow("w").task("a", job="j").build(), 1, jobs={"j": job})
    assert result.success, f"the scripted job failed the step with {result.error_name}: {result.cause}"


@pytest.mark.parametrize("option", ["adapter_factory", "driver_factory"])
async def test_explore_crashes_refuses_an_instance_given_for_a_factory(autojump_clock: trio.testing.MockClock,
                                                                         option: str) -> None:
    """docs/testing.md, explore_crashes: refused "with `InvalidArgumentError` or
    `DefinitionError` naming the mistake" are its argument mistakes (a builder, `also=` given
    one definition, `jobs=` holding a behaviour ...), and `before_run=3` is refused so
    ("before_run must be a function or None"). Handing the adapter (or driver) itself where its
    factory goes, `adapter_factory=tf.adapters.MemoryAdapter()`, raises a bare
    `TypeError: 'MemoryAdapter' object is not callable` (and `adapter_factory=lambda: None` a bare
    AttributeError) from runtime/testing/_crashes.py."""
    made = tf.adapters.MemoryAdapter() if option == "adapter_factory" else tf.adapters.MemoryDriver()
    definition = tf.workflow("w").step("a", ok).build()
    with pytest.raises(tf.TrioflowError):
        await explore_crashes(definition, 1, **{option: made})


@pytest.mark.parametrize("method", ["advance", "restart"])
def test_portal_seconds_too_large_for_a_float_are_an_invalid_argument_error(method: str) -> None:
    """docs/testing.md: `portal.advance(seconds)`, `portal.restart(downtime=seconds)`;
    runtime/testing/_portal.py refuses bad seconds with `InvalidArgumentError` ("advance():
    seconds must be a finite number >= 0", for NaN, inf, negatives, bools, strings). An int past
    what a float holds raises a bare `OverflowError` from `math.isfinite` instead
    (_portal.py:_seconds)."""
    with engine_portal() as portal:
        with pytest.raises(tf.InvalidArgumentError):
            getattr(portal, method)(2**1100)


def test_engine_portal_setup_that_is_not_callable_is_an_invalid_argument_error() -> None:
    """docs/testing.md: "`engine_portal(setup=fn, **options)` runs `fn(engine)` (awaited if
    `async`) each time an engine opens"; the kit refuses its other non-callable hooks that way
    (`explore_crashes(before_run=3)`: "before_run must be a function or None") and
    `engine_portal(bogus=1)` with InvalidArgumentError. `engine_portal(setup=3)` raises a bare
    `TypeError: 'int' object is not callable` from inside the portal's run."""
    with pytest.raises(tf.InvalidArgumentError):
        with engine_portal(setup=3):  # type: ignore[arg-type]
            pass
