"""Review of the bad-input fixes of 05643f3 (tests/test_review_of_bad_inputs.py): valid input
they now break, and the same classes of mistake they missed elsewhere. Every test here failed on
05643f3 because of a library defect, each fixed in the commit that added this file.

The project's rule: bad input gets a clear error from trioflow's own hierarchy
(trioflow.TrioflowError subclasses, docs/errors.md), naming what was wrong, raised as it is
given where possible, with nothing half-written to storage; valid input keeps working.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


def logged(fn: Any) -> Any:
    """An everyday decorator: a plain ``def`` wrapper (functools.wraps) that calls what it
    wraps and hands its result back."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    return wrapper


def never_true_generator(ctx: tf.WorkflowContext):  # type: ignore[no-untyped-def]
    if False:
        yield
    return False


def never_matches_generator(error: BaseException):  # type: ignore[no-untyped-def]
    if False:
        yield
    return False


async def ok(ctx: tf.WorkflowContext) -> str:
    return "ok"


async def boom(ctx: tf.WorkflowContext) -> None:
    raise ValueError("boom")


# --- 1. a generator function behind a decorator: the runtime guard covers awaitables only -------


async def test_a_decorated_generator_function_as_a_choice_condition_is_not_silently_true(
        autojump_clock: trio.testing.MockClock) -> None:
    """README: "A choice's conditions are plain functions of `ctx` ... (an `async def` or a
    generator function is refused by `build()` ...)"; runtime/_callables.py:plain_result exists
    so that "an `async def` behind a wrapper the build-time check cannot see through raises
    `TypeError` rather than have its coroutine taken for the answer". A generator function
    behind the same kind of wrapper (functools.wraps) passes build() (the check cannot see
    through it) and plain_result hands its generator back: the generator is true, so the rule
    whose condition never holds always wins. Here the run ends "completed" with "yes"."""
    try:
        definition = (tf.workflow("wrapped-gen-choice")
                      .choice("c", choices=[tf.when(logged(never_true_generator), next="yes")], default="no")
                      .succeed("yes", output="yes")
                      .succeed("no", output="no")
                      .build())
    except tf.DefinitionError:
        return  # refused at build: fine
    async with open_test_engine() as engine:
        engine.register(definition)
        instance = await engine.wait(await engine.start("wrapped-gen-choice"))
    assert instance.output != "yes", (
        "a decorated generator function's generator counted as a true condition: the run took"
        f" 'yes' (status {instance.status!r}); an async def behind the same wrapper fails the run instead")


async def test_a_decorated_generator_function_as_a_catch_predicate_is_not_a_match_for_everything(
        autojump_clock: trio.testing.MockClock) -> None:
    """docs/errors.md: "predicates, `predicate(error) -> bool`, plain functions (an `async def`
    or a generator function is refused: it is called, not awaited nor iterated, and its
    coroutine or generator would count as a match)". Behind a functools.wraps decorator the
    generator function is not refused, and runtime/_matching.py:matches takes its generator
    (via plain_result, which refuses only awaitables) as a match: a predicate that never
    matches catches the ValueError and the run ends "completed" through the catch route."""
    try:
        definition = (tf.workflow("wrapped-gen-catch")
                      .step("s", boom, catch=[tf.Catch(errors=[logged(never_matches_generator)], next="caught")])
                      .succeed("caught", output="caught")
                      .build())
    except tf.DefinitionError:
        return
    async with open_test_engine() as engine:
        engine.register(definition)
        instance = await engine.wait(await engine.start("wrapped-gen-catch"))
    assert instance.output != "caught", (
        "a predicate that never matches caught the error: its generator counted as a match"
        f" (status {instance.status!r})")


# --- 2. generator functions as a task's or child's mappers and a map's items: not refused ---------


def output_generator(result: Any, ctx: tf.WorkflowContext):  # type: ignore[no-untyped-def]
    yield result


async def test_a_generator_function_as_a_task_output_mapper_is_refused_before_the_job_runs(
        autojump_clock: trio.testing.MockClock) -> None:
    """README: "A task's mappers: ... `output=lambda result, ctx: ...` turns what the job
    returned into the step's output", and runtime/_callables.py:generator_kind refuses a job
    that yields because "a step's job that `yield`s hands back a generator rather than its
    output: a mistake that would only show as an output that cannot be stored, so it is
    refused where the job is given". An `output=` mapper that yields is the same mistake, but
    build() accepts it (runtime/_validate.py:_check_task checks only that it is callable): the
    job runs (its side effect happens), then the step fails with UnencodableValueError ("output
    of step 't' is a generator") and, as README says of unstorable outputs, "its compensation
    does not run"."""
    charged: list[Any] = []

    def charge(data: Any) -> str:
        charged.append(data)
        return "charge-1"

    with pytest.raises(tf.DefinitionError):
        definition = tf.workflow("gen-output").task("t", job="charge", output=output_generator).build()
        async with open_test_engine() as engine:
            engine.jobs.register("charge", charge)
            engine.register(definition)
            instance = await engine.wait(await engine.start("gen-output", {"amount": 5}))
        pytest.fail(f"build() took a generator function as output=; the job ran ({charged!r}) and the"
                    f" instance ended {instance.status!r}: {instance.error}")


def input_generator(ctx: tf.WorkflowContext):  # type: ignore[no-untyped-def]
    yield ctx.input


child_definition = tf.workflow("child-of-gen").step("s", ok).build()


@pytest.mark.parametrize("make", [
    lambda: tf.workflow("w").task("t", job="j", input=input_generator),
    lambda: tf.workflow("w").child("c", workflow="child-of-gen", input=input_generator),
    lambda: tf.workflow("w").map("m", items=input_generator, branch=tf.branch("b").step("x", ok).build()),
], ids=["task-input", "child-input", "map-items"])
def test_a_generator_function_where_a_mapper_answer_is_used_is_refused_at_build(make: Any) -> None:
    """README: "Conditions, transforms, a succeed step's `output` and a fail step's `cause` are
    plain functions of `ctx` (an `async def` or a generator function is refused at `build()`);
    a task's `input=` and `output=` mappers may be `async def` (they are awaited)". A task's
    `input=`, a child's `input=` and a map's `items=` are called for their answer just as
    these are (an async def is awaited, a generator function's generator is taken as the
    answer), yet a generator function is accepted by build() and only fails the step at run
    time (UnencodableValueError for the inputs, InvalidItemsError for the items): the commit's
    own reasoning ("a mistake that would only show as an output that cannot be stored, so it
    is refused where the job is given") applies, and the rule asks for an error "raised as it
    is given where possible"."""
    with pytest.raises(tf.DefinitionError):
        make().build()


# --- 3. SQLite paths: the NUL check breaks a path-like object whose path is bytes ---------------


class BytesPath(os.PathLike):  # type: ignore[type-arg]
    def __init__(self, path: bytes) -> None:
        self.path = path

    def __fspath__(self) -> bytes:
        return self.path


async def test_sqlite_driver_takes_a_path_like_whose_path_is_bytes_as_before(tmp_path: Path) -> None:
    """README: "`SQLiteDriver(path_or_connection)` ... which works on your existing tables";
    the constructor takes `str | os.PathLike`. Before 05643f3 a path-like object whose
    __fspath__ gives bytes (sqlite3.connect takes it) worked: a create wrote its row. The NUL
    check added to SQLiteDriver.__init__ (`"\\0" in os.fspath(path)`) compares a str with
    bytes: the constructor now raises a bare `TypeError: a bytes-like object is required, not
    'str'`, neither working nor a DriverError."""
    database = tmp_path / "shop.db"
    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")
    connection.commit()
    connection.close()
    try:
        driver = tf.adapters.SQLiteDriver(BytesPath(os.fsencode(database)))  # type: ignore[arg-type]
    except tf.TrioflowError:
        return  # refused, named: acceptable
    try:
        assert (await driver.create("orders", {"total": 5}))["total"] == 5
    finally:
        await driver.aclose()


def test_sqlite_adapter_path_like_whose_path_is_bytes_is_a_database_error(tmp_path: Path) -> None:
    """adapters/_sqlite.py: SQLiteAdapter refuses paths it cannot use with `DatabaseError`
    ("SQLiteAdapter needs the path of a database file (a str or a Path)"), and the rule asks
    for "a clear error from trioflow's own hierarchy". A path-like object whose __fspath__
    gives bytes passes the isinstance check and then meets the new NUL check
    (`"\\0" in os.fspath(path)`), which raises a bare `TypeError: a bytes-like object is
    required, not 'str'`: it names neither the path nor what is wrong with it."""
    try:
        tf.adapters.SQLiteAdapter(BytesPath(os.fsencode(tmp_path / "flows.db")))  # type: ignore[arg-type]
    except tf.TrioflowError:
        pass


# --- 4. an int no float holds, missed by the fix: the engine's clock --------------------------------


async def test_open_engine_clock_giving_an_int_no_float_holds_is_an_invalid_argument_error() -> None:
    """runtime/_engine.py:open_engine asks the clock once "so that a clock that gives no number
    fails here, not in a start", raising InvalidArgumentError ("clock must give Unix seconds as
    a number (as time.time does)"). A clock giving an int past what a float holds (the class of
    value 05643f3 guarded for busy_timeout and the portal's seconds) makes the check itself
    (`math.isfinite(now)`) raise a bare `OverflowError: int too large to convert to float`."""
    try:
        async with tf.open_engine(clock=lambda: 10**400):
            pass
    except tf.TrioflowError:
        pass
