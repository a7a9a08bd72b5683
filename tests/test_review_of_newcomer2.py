"""A second newcomer's review (December 7th; someone who knows Temporal and Step Functions,
embedding trioflow in a trio service): what README and the docstrings promise, checked against
what the code does. Each test failed at 55c3dfb and was fixed by the commit that added this file;
its docstring says what a user relies on, what happened ("Was: ..."), and why that was wrong.
Autojump MockClock where time passes."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow as tf

async def _reserve(ctx: tf.WorkflowContext) -> dict[str, str]:
    return {"id": "res-1"}


async def _decline(ctx: tf.WorkflowContext) -> None:
    raise PermissionError("card declined")


async def test_a_sqlite_uri_spelling_of_an_open_database_is_refused_as_a_second_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README, "A first example": while an engine is open on ``orders.db`` "it holds a lock on
    it (and on ``orders.db.lock`` beside it), so a second engine on the same file is refused with
    ``DatabaseLockedError``" -- one engine per database file, or the second engine resumes the
    first one's running instances and their steps run twice.

    Was: ``SQLiteAdapter("file:orders.db")`` -- the SQLite URI spelling many users know from
    sqlite3 and SQLAlchemy -- is handed to ``sqlite3.connect`` as it is, and this Python's SQLite
    (like Debian's and many distributions' builds, compiled with URI filenames on) opens
    ``orders.db`` itself; but the one-engine lock is taken on ``realpath("file:orders.db")``, a
    different (new, empty) file. So a second engine opens on the live database, lists and would
    resume the first engine's instances. (``"file::memory:"`` likewise gives a non-durable
    in-memory database that ``":memory:"``'s own refusal was written to prevent, plus a stray empty
    file named ``file::memory:``.) Either refuse a ``file:`` name or take the lock on the file
    SQLite actually opens.
    """
    monkeypatch.chdir(tmp_path)
    sqlite3.connect("file:probe.db").close()
    if not (tmp_path / "probe.db").exists():  # (a SQLite built without URI filenames: no such hole)
        pytest.skip("this SQLite takes file: names literally")

    async def slow(ctx: tf.WorkflowContext) -> int:
        await trio.sleep(0.5)
        return 1

    wf = tf.workflow("w").step("a", slow).build()
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter("orders.db")) as first:
        first.register(wf)
        await first.start("w", {}, instance_id="one")
        # Refused: as it is made (DatabaseError, the fix's choice: no lock can be trusted on a
        # name SQLite reads as a URI) or by the lock (DatabaseLockedError, a DatabaseError).
        with pytest.raises(tf.adapters.DatabaseError):
            async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter("file:orders.db")) as second:
                # (reached on this checkout: the second engine sees the first one's instance)
                assert [i.id for i in await second.get_instances()] == ["one"]
        await first.wait("one")


async def test_a_job_registered_by_name_is_checked_for_its_arguments_as_a_callable_is(
    autojump_clock: Any,
) -> None:
    """README, "A saga without an engine" / "The step context": saga compensations are called
    ``compensate(ctx, result)``; ``build()`` checks every callable it is given against the call
    it will get (``compensate is called as compensate(ctx, result), but release(ctx) cannot take
    2 arguments``), so that a mistake is a ``DefinitionError`` at start-up, not a surprise in
    production. README also says a step "given a job's name instead" is called the same way.

    Was: the same ``release(ctx)`` registered with ``engine.jobs.register("release", ...)``
    and named as the compensation (``.step("reserve", reserve, "release")``) passes
    ``register()`` and ``start()``; the instance runs, fails at ``charge``, and only then does the
    compensation blow up with ``TypeError: release() takes 1 positional argument but 2 were
    given``: the reservation is never released, and the mistake surfaces as a
    ``compensation_errors`` entry on a failed order -- the least-tested path, where it costs the
    most. The engine knows, at ``register()``/``start()`` (where it already checks that every
    named job exists: ``UnknownJobError``), how each named job is called, and could refuse the
    mismatch as ``build()`` does for the same function given directly.
    """

    async def release(ctx: tf.WorkflowContext) -> None:  # forgot `result`
        pass

    with pytest.raises(tf.DefinitionError):  # the same function, given directly: refused
        tf.workflow("checkout").step("reserve", _reserve, release).step("charge", _decline).build()

    checkout = tf.workflow("checkout").step("reserve", _reserve, "release").step("charge", _decline).build()
    async with tf.testing.open_test_engine() as engine:
        # Refused where the job and the workflow naming it meet (the fix's choice: at whichever
        # registration comes second, so that start() never finds a mismatch), naming the step.
        engine.jobs.register("release", release)
        with pytest.raises((tf.DefinitionError, tf.InvalidArgumentError), match="'reserve'.*compensate"):
            engine.register(checkout)
            iid = await engine.start("checkout", {})
            instance = await engine.wait(iid)
            # (this checkout:) failed, nothing compensated, the TypeError in compensation_errors
            assert instance.compensated_steps == ("reserve",), instance.compensation_errors
    async with tf.testing.open_test_engine() as engine:  # the other order
        engine.register(checkout)
        with pytest.raises(tf.DefinitionError, match="'reserve'.*compensate"):
            engine.jobs.register("release", release)
        with pytest.raises(tf.UnknownJobError):
            await engine.start("checkout", {})


async def test_an_event_callback_that_cannot_take_the_event_is_refused_by_on(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """README, Events: ``on(pattern, callback)``: the callback is called with the event's payload
    dict. ``on()`` already refuses a callback that is not a function (``on() calls
    callback(event) for each event: got 42, not a function``), and ``with_hooks()`` refuses a hook
    that cannot take its arguments at ``build()``.

    Was: ``engine.events.on("workflow.completed", lambda: notify())`` (or a Node-style
    ``lambda name, data: ...``, as the seed's TypeScript ``events.on`` reads) is accepted; at each
    event the call raises ``TypeError``, which is "logged and ignored" -- on the ``trioflow``
    logger, which has a ``NullHandler`` (README, Logging: "nothing is printed unless your
    application configures logging"). So a newcomer's completion notification silently never
    fires. ``on()`` can check the callback against ``callback(event)`` as ``build()`` checks hooks.
    """

    async def a(ctx: tf.WorkflowContext) -> int:
        return 1

    async with tf.testing.open_test_engine() as engine:
        engine.register(tf.workflow("w").step("a", a).build())
        with pytest.raises(tf.InvalidArgumentError):
            engine.events.on("workflow.completed", lambda: None)
        with pytest.raises(tf.InvalidArgumentError, match=r"callback\(event\)"):
            engine.events.on("workflow.completed", lambda name, data: None)
        with caplog.at_level(logging.ERROR, logger="trioflow"):
            await engine.wait(await engine.start("w", {}))
        assert not [r for r in caplog.records if "callback" in r.getMessage()]


async def test_only_main_line_steps_a_choice_skipped_are_listed_as_skipped_as_readme_says(autojump_clock: Any) -> None:
    """README, Reference ("Every step execution is its own record") said: "on a completed run, a
    step it never reached (a choice took another way) is listed there [``step_results``] as
    ``skipped``". Step names are unique across the whole workflow, branches included, so a
    dashboard that lists ``step_results`` to show every step of an order reads them from there.
    Fixed in README, which now says what the code does: a main-line step never reached is listed
    ``skipped``; a branch's or map item's step never reached (a skipped parallel step's too) is
    not listed.

    Was: with README's own ``process-order`` state machine on its backorder path, the parallel
    step ``fulfill`` is listed ``skipped``, but its branch steps ``ship`` and ``notify``, never
    reached either, are missing from ``step_results`` altogether (the code records only the
    main line's steps: ``_decide.py``, "main-lane steps that never ran are recorded as skipped"),
    while on the other path ``backorder`` is listed ``skipped``. Either list them or say main line.
    """

    async def job(data: Any) -> Any:
        return data

    process_order = (tf.workflow("process-order")
        .task("validate", job=lambda data: {"in_stock": False})
        .choice("check-inventory",
                choices=[tf.when(lambda ctx: ctx.steps["validate"]["in_stock"], next="fulfill")],
                default="backorder")
        .parallel("fulfill", branches=[
            tf.branch("shipping").task("ship", job=job).build(),
            tf.branch("notification").task("notify", job=job).build()],
            on_error="fail-fast", next="complete")
        .task("backorder", job=job, next="complete")
        .pass_("complete", end=True)
        .build())
    async with tf.testing.open_test_engine() as engine:
        engine.register(process_order)
        instance = await engine.wait(await engine.start("process-order", {"order_id": "ORD-124"}))
    assert instance.status == "completed"
    assert instance.step_results["fulfill"].status == "skipped"
    assert instance.step_results["backorder"].status == "completed"
    assert "ship" not in instance.step_results and "notify" not in instance.step_results


async def test_a_sqlite_uri_for_memory_is_refused_as_memory_is_or_else_keeps_instances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: Any
) -> None:
    """README, Storage: ``SQLiteAdapter`` "keeps them in a SQLite file" so that "a process that
    restarts picks up where the last one stopped"; ``SQLiteAdapter(":memory:")`` is refused with
    ``DatabaseError`` ("SQLiteAdapter needs the path of a database file ... for storage in memory,
    use MemoryAdapter"), because nothing in memory survives for an engine to resume.

    Was: ``SQLiteAdapter("file::memory:")`` (SQLite's URI spelling of the same thing, which
    this Python's SQLite honours) is accepted; the engine runs on an in-memory database, creates
    an empty file literally named ``file::memory:`` (and its ``.lock``) in the working directory,
    which looks like a database, and an instance started on it is gone once the engine closes:
    the next engine on "the same file" finds nothing to resume.
    """
    monkeypatch.chdir(tmp_path)
    sqlite3.connect("file:probe.db").close()
    if not (tmp_path / "probe.db").exists():
        pytest.skip("this SQLite takes file: names literally")

    async def a(ctx: tf.WorkflowContext) -> int:
        return 1

    wf = tf.workflow("w").wait("later", seconds=3600).step("a", a).build()
    try:
        async with tf.testing.open_test_engine(adapter=tf.adapters.SQLiteAdapter("file::memory:")) as engine:
            engine.register(wf)
            await engine.start("w", {}, instance_id="kept")
    except tf.StorageError:
        return  # refused, as ":memory:" is: fine
    async with tf.testing.open_test_engine(adapter=tf.adapters.SQLiteAdapter("file::memory:")) as engine:
        engine.register(wf)
        assert await engine.get_instance("kept") is not None, sorted(os.listdir(tmp_path))


async def test_jobs_register_refuses_a_job_no_call_can_bind_as_it_refuses_a_generator(autojump_clock: Any) -> None:
    """README: "A job is called with one argument, its data" (a saga step's job with ``ctx``, a
    compensation with the output, or ``ctx`` and the result): every call of a job passes at least
    one argument. ``engine.jobs.register`` already inspects what it is given and refuses what can
    never work (``job 'gen': ... is a generator function (it yields); a job returns its output``),
    and ``.task(job=fn)`` refuses ``fn`` at ``build()`` when it cannot take ``data``.

    Was: ``@engine.job("send-email") async def send_email(): ...`` (or
    ``async def send_email(to, subject)``, a Step Functions user's "parameters" as arguments) is
    registered without a word; every instance that reaches it then fails the step with
    ``TypeError: send_email() takes 0 positional arguments but 1 was given`` -- after any
    ``default_retry`` attempts and delays, and after compensating the steps before it.
    """

    async def send_email() -> None:
        pass

    async with tf.testing.open_test_engine() as engine:
        with pytest.raises(tf.DefinitionError):
            engine.jobs.register("send-email", send_email)  # type: ignore[arg-type]

        async def send_parameters(to: str, subject: str) -> None:  # (could be a saga's compensation)
            pass

        engine.jobs.register("send-email", send_parameters)
        with pytest.raises(tf.DefinitionError, match="job is called as job\\(data\\)"):
            engine.register(tf.workflow("mail").task("send", job="send-email").build())
