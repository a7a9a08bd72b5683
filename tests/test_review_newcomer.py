"""A newcomer's review (someone who knows Temporal, DBOS and Step Functions, trying trioflow for
the first time): what the README, the docstrings and the type hints promise, checked against
what the code does. Each test failed at c5bd14c, and was fixed by the commit that added this
file; its docstring says what is promised (and where), the reproduction, and what happened
instead. Autojump MockClock where time passes."""

from __future__ import annotations

import datetime
import sqlite3
import types
import typing
from pathlib import Path
from typing import Any

import pytest

import trioflow as tf
from trioflow.testing import engine_portal, sleeps


def _union_members(hint: Any) -> set[Any]:
    """The types a (possibly nested) Union / ``X | Y`` hint admits."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return {m for arg in typing.get_args(hint) for m in _union_members(arg)}
    return {hint}


# --------------------------------------------------------------------------------------------
# run_workflow: a step given a job's name can never run, and the error points at a `jobs=`
# that run_workflow does not take
# --------------------------------------------------------------------------------------------

async def test_run_workflow_job_name_steps_can_run_or_are_refused_without_pointing_at_a_missing_jobs_argument() -> None:
    """README, "A saga without an engine": ``tf.run_workflow(driver, "name", [tf.step(...), ...])``
    "builds such a saga and runs it at once"; ``tf.step(name, execute, ...)`` takes
    ``execute: StepFn | str`` (runtime/_builder.py), a job's name being documented for saga steps
    (README, "A state machine on an engine": ``.step("a", "validate-order")``).

    Reproduction: ``await tf.run_workflow(None, "n", [tf.step("a", "charge-card")])``.

    What happens: the run fails with ``UnknownJobError`` whose cause says the job is "not in
    jobs=" -- but ``run_workflow`` has no ``jobs=`` parameter (``run_workflow(..., jobs={...})``
    is a ``TypeError``), nor does its mapping form (``DefinitionError``: not one of its keys).
    A user told to pass ``jobs=`` cannot; such a step can never run through ``run_workflow``.
    Expected: ``run_workflow`` forwards a ``jobs=`` mapping to ``execute_workflow`` (as it
    forwards ``services=``), or it refuses a job-name step up front saying to use
    ``execute_workflow(..., jobs=...)``."""
    async def charge(ctx: tf.WorkflowContext) -> str:
        return "charged"

    try:
        result = await tf.run_workflow(None, "n", [tf.step("a", "charge-card")],  # type: ignore[call-arg]
                                       jobs={"charge-card": charge})
    except TypeError as error:
        # No jobs= at all: then at least the failure must not send the user to it.
        result = await tf.run_workflow(None, "n", [tf.step("a", "charge-card")])
        assert "jobs=" not in (result.cause or ""), (
            f"run_workflow takes no jobs= ({error}), yet its failure says: {result.cause}")
    else:
        assert result.status == "completed" and result.output == "charged"


# --------------------------------------------------------------------------------------------
# durations: "a number or a datetime.timedelta, everywhere one is taken"
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("function, parameter", [
    (tf.run_workflow, "timeout"),
    (tf.create_entity_step, "timeout"),
    (tf.update_entity_step, "timeout"),
    (tf.delete_entity_step, "timeout"),
])
def test_duration_parameters_are_typed_to_take_a_timedelta(function: Any, parameter: str) -> None:
    """README, end of "Defining workflows": "durations are seconds, as a number or a
    ``datetime.timedelta``, everywhere one is taken (timeouts, retry intervals, waits, delays,
    ...)"; the rest of the API types them ``Seconds = float | timedelta`` (runtime/_durations.py:
    ``tf.step(timeout=)``, ``.with_timeout``, ``Retry``, ``start(delay=)``, ...), and pyproject
    says ``Typing :: Typed``.

    Reproduction: ``tf.run_workflow(None, "n", steps, timeout=timedelta(seconds=3))`` or
    ``tf.create_entity_step("c", "orders", fn, timeout=timedelta(seconds=3))`` in code checked
    with ``mypy --strict``.

    What happens: it runs (the values go through the builder's converter), but mypy fails the
    user's code: ``Argument "timeout" to "run_workflow" has incompatible type "timedelta";
    expected "float | None"`` (runtime/_inprocess.py ``run_workflow``, runtime/_entity_steps.py
    the three factories, all ``timeout: float | None``)."""
    hint = typing.get_type_hints(function)[parameter]
    assert datetime.timedelta in _union_members(hint), f"{function.__name__}({parameter}=) is typed {hint}"


def test_engine_portal_advance_and_restart_take_a_timedelta() -> None:
    """README: durations are "a number or a ``datetime.timedelta``, everywhere one is taken";
    docs/testing.md has the portal drive "orders that wait a day for approval", where a test
    naturally writes ``portal.advance(timedelta(days=1))``.

    Reproduction: ``with engine_portal() as portal: portal.advance(timedelta(days=1))`` (and
    ``portal.restart(downtime=timedelta(hours=1))``).

    What happens: ``InvalidArgumentError: advance(): seconds must be a finite number >= 0, got
    datetime.timedelta(days=1)`` (runtime/testing/_portal.py ``_seconds``), and the same for
    ``restart()``; both are typed ``float`` only."""
    with engine_portal() as portal:
        before = portal.now
        portal.advance(datetime.timedelta(days=1))
        assert portal.now - before == pytest.approx(86_400, abs=0.01)
        portal.restart(downtime=datetime.timedelta(hours=1))
        assert portal.now - before == pytest.approx(86_400 + 3_600, abs=0.01)


def test_scripted_sleeps_takes_a_timedelta() -> None:
    """README: durations are "a number or a ``datetime.timedelta``, everywhere one is taken";
    docs/testing.md: ``sleeps(seconds, then=returns(), *, times=1)`` "waits virtual seconds".

    Reproduction: ``trioflow.testing.sleeps(timedelta(minutes=5))`` (a job that answers after
    five minutes, to test a step timeout).

    What happens: ``InvalidArgumentError: sleeps(): seconds must be a finite number >= 0, got
    datetime.timedelta(seconds=300)``."""
    behaviour = sleeps(datetime.timedelta(minutes=5))
    assert behaviour.seconds == 300


# --------------------------------------------------------------------------------------------
# execute_workflow(instance_id=) is not checked, where engine.start's is
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad_id", [5, ""])
async def test_execute_workflow_checks_its_instance_id_as_start_does(bad_id: Any) -> None:
    """``execute_workflow(..., instance_id: str | None = None)`` (runtime/_inprocess.py);
    ``engine.start(..., instance_id=5)`` and ``instance_id=""`` raise ``InvalidArgumentError:
    instance_id must be a non-empty string of valid text``.

    Reproduction: ``await tf.execute_workflow(None, wf, instance_id=5)`` (an order's integer
    key, a natural mistake) and ``instance_id=""``.

    What happens: both run. ``5`` becomes ``result.instance_id``, ``ctx.metadata.id`` and
    ``tf.current_step().instance_id`` as an ``int`` (all typed ``str``: an idempotency key
    built from it, ``"charge-" + info.instance_id``, raises ``TypeError`` inside the step);
    ``""`` is silently replaced by a generated id (``instance_id or new_instance_id()``), so the
    caller's id is dropped without a word."""
    async def step(ctx: tf.WorkflowContext) -> str:
        return "charge-" + tf.current_step().instance_id

    wf = tf.workflow("w").step("a", step).build()
    with pytest.raises(tf.InvalidArgumentError, match="instance_id"):
        await tf.execute_workflow(None, wf, instance_id=bad_id)


# --------------------------------------------------------------------------------------------
# data drivers: a where-clause that is not a mapping
# --------------------------------------------------------------------------------------------

def _drivers(tmp_path: Path) -> list[Any]:
    path = tmp_path / "app.db"
    connection = sqlite3.connect(path)
    connection.executescript("CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT);"
                             "INSERT INTO orders VALUES (1, 'new');")
    connection.close()
    memory = tf.adapters.MemoryDriver({"orders": [{"id": 1, "status": "new"}]})
    return [tf.adapters.SQLiteDriver(path), memory]


@pytest.mark.parametrize("where", ["id = 1", None, [("id", 1)]], ids=["sql-text", "none", "pairs"])
async def test_a_where_clause_that_is_not_a_mapping_is_a_driver_error_that_says_so(tmp_path: Path, where: Any) -> None:
    """README, "Data drivers": both drivers offer ``find_one``, ``find_many``, ``update``,
    ``delete``: "the ``tf.adapters.Driver`` protocol, whose docstrings give each signature
    (``where`` is a mapping of column to value, and required; ``{}`` matches every row)"; the
    SQLiteDriver "checks table and column names ... (an unknown one is an
    ``adapters.UnknownEntityError`` / ``adapters.UnknownColumnError`` naming it)". The brief a
    user expects: bad input gets a trioflow error naming what was wrong.

    Reproduction: in a step, ``await ctx.driver.find_one("orders", "id = 1")`` (SQL habits),
    ``find_many("orders", None)`` (None for "no filter", as ``execute_workflow(None, ...)``
    means no driver), or ``find_one("orders", [("id", 1)])``.

    What happens: SQLiteDriver says ``UnknownColumnError: table 'orders' has no column 'i'``
    for the text (it iterates the string's characters), ``... has no column ('id', 1)`` for
    pairs, and raises a bare ``TypeError: 'NoneType' object is not iterable`` for ``None``;
    MemoryDriver raises bare ``AttributeError: '...' object has no attribute 'items'`` for all
    three. None of them says that ``where`` must be a mapping."""
    for driver in _drivers(tmp_path):
        try:
            with pytest.raises(tf.adapters.DriverError) as caught:
                await driver.find_one("orders", where)
            message = str(caught.value)
            assert "where" in message and "column 'i'" not in message, f"{type(driver).__name__}: {message}"
        finally:
            if isinstance(driver, tf.adapters.SQLiteDriver):
                await driver.aclose()


# --------------------------------------------------------------------------------------------
# From the same review's notes (report-only there; fixed with the rest)
# --------------------------------------------------------------------------------------------

async def test_memory_driver_rows_share_no_nested_value_with_the_caller() -> None:
    """The MemoryDriver stands in for a database in tests: a list handed to ``create``, or one
    in a row ``find_one`` returned, is the caller's own; changing it changes no stored row (it
    used to: rows were copied one level deep, so a nested list was shared)."""
    driver = tf.adapters.MemoryDriver()
    tags = ["new"]
    await driver.create("orders", {"id": 1, "tags": tags})
    tags.append("changed by the caller")
    found = await driver.find_one("orders", {"id": 1})
    assert found is not None and found["tags"] == ["new"]
    found["tags"].append("changed through a read")
    updated = await driver.update("orders", {}, {"labels": ["a"]})
    updated[0]["labels"].append("changed through an update's answer")
    assert await driver.find_one("orders", {"id": 1}) == {"id": 1, "tags": ["new"], "labels": ["a"]}


async def test_caught_and_retry_events_carry_error_name_and_cause(autojump_clock: Any) -> None:
    """README, Events: every step event about a failure carries ``error_name`` and ``cause``, so
    one handler reads them off ``workflow.step.failed``, ``.retry`` and ``.caught`` alike (caught
    events had only ``error``, there the name; retry events only ``error``, "Name: cause")."""
    calls = []

    async def flaky(ctx: tf.WorkflowContext) -> None:
        calls.append(1)
        raise ConnectionError("card service down")

    async def notify(ctx: tf.WorkflowContext) -> str:
        return "notified"

    wf = (tf.workflow("w").step("charge", flaky, retry=tf.Retry(max_attempts=2, interval=1),
                                catch=tf.Catch(errors=[ConnectionError], next="notify"))
          .step("notify", notify).build())
    async with tf.open_engine() as engine:
        events: list[dict[str, Any]] = []
        engine.events.on("workflow.step.*", events.append)
        engine.register(wf)
        done = await engine.wait(await engine.start("w"))
    assert done.status == "completed" and len(calls) == 2
    for kind in ("workflow.step.retry", "workflow.step.caught"):
        event = next(e for e in events if e["event"] == kind)
        assert (event["error_name"], event["cause"]) == ("ConnectionError", "card service down"), event


async def test_the_kits_run_inside_a_trio_run_says_what_to_do_instead() -> None:
    """``trioflow.testing.run()`` is ``trio.run`` on a MockClock, for synchronous code; called
    inside a trio run it raised trio's own ``RuntimeError`` where ``engine_portal()`` raises a
    trioflow ``InvalidArgumentError`` that says what to use instead. Now it does too."""
    from trioflow.testing import run

    async def nothing() -> None:
        return None

    with pytest.raises(tf.InvalidArgumentError, match="await"):
        run(nothing)


async def test_sqlite_driver_binds_dates_without_sqlite3s_default_adapters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``created``/``due`` column is the first thing an order table has. sqlite3's default
    adapters for ``date`` and ``datetime`` warn on every use since Python 3.12 (which trioflow
    lists) and are to go: the SQLiteDriver now makes the same ISO text itself. Here they are
    taken out, as a Python without them would have it: before, ``create`` then raised
    ``sqlite3.ProgrammingError`` (unsupported type); the text stored is the one they made."""
    monkeypatch.delitem(sqlite3.adapters, (datetime.date, sqlite3.PrepareProtocol))
    monkeypatch.delitem(sqlite3.adapters, (datetime.datetime, sqlite3.PrepareProtocol))
    path = tmp_path / "app.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, placed TEXT, due TEXT)")
    connection.close()
    driver = tf.adapters.SQLiteDriver(path)
    placed, due = datetime.datetime(2026, 12, 6, 13, 46, 30, 76047), datetime.date(2026, 12, 9)
    try:
        row = await driver.create("orders", {"placed": placed, "due": due})
        assert (row["placed"], row["due"]) == ("2026-12-06 13:46:30.076047", "2026-12-09")
        assert await driver.find_one("orders", {"placed": placed}) == row  # (bound in a where too)
        updated = await driver.update("orders", {"due": due}, {"due": datetime.date(2027, 1, 1)})
        assert updated[0]["due"] == "2027-01-01"
    finally:
        await driver.aclose()
