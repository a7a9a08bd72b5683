"""A sixth newcomer's review: README.md, docs/waiting.md, docs/fanout.md, docs/errors.md and
docs/adapters.md followed as written, with bad arguments given to what they name. Every test
here fails on the commit it was written against (7933207) and passes once its defect is fixed
(autojump MockClock, no real sleeps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import check_persistence_adapter


async def ok(ctx: Any) -> str:
    return "one"


async def other(ctx: Any) -> str:
    return "two"


# --------------------------------------------------------------------------------------------
# Switches that take True or False
# --------------------------------------------------------------------------------------------


async def test_register_replace_takes_only_true_or_false(autojump_clock: trio.testing.MockClock) -> None:
    """README.md, Registration: "another under a registered name raises ``DefinitionError``
    unless ``replace=True``". ``engine.register(definition, replace="no")`` (and ``0.0``-like
    text from a config file) is taken as true: the registered definition is silently replaced,
    and the next start runs the other one. ``.step(end=...)``, ``.wait(end=...)`` and
    ``open_engine(resume=..., threads=...)`` already refuse anything but ``True``/``False``
    ("end takes True or False, got 'no'"); ``replace`` should too, before it replaces."""
    async with tf.open_engine() as engine:
        engine.register(tf.workflow("w").step("a", ok).build())
        with pytest.raises((tf.DefinitionError, tf.InvalidArgumentError), match="replace"):
            engine.register(tf.workflow("w").step("a", other).build(), replace="no")  # type: ignore[arg-type]
        done = await engine.wait(await engine.start("w"))
    assert done.output == "one"


async def test_jobs_register_replace_takes_only_true_or_false(autojump_clock: trio.testing.MockClock) -> None:
    """README.md, Registration: ``engine.jobs.register(name, fn)``: "another under a registered
    name raises ``DefinitionError`` unless ``replace=True``". ``replace="no"`` replaces the job
    without a word."""
    async def job_one(data: Any) -> str:
        return "one"

    async def job_two(data: Any) -> str:
        return "two"

    async with tf.open_engine() as engine:
        engine.jobs.register("j", job_one)
        with pytest.raises((tf.DefinitionError, tf.InvalidArgumentError), match="replace"):
            engine.jobs.register("j", job_two, replace="no")  # type: ignore[arg-type]
        engine.register(tf.workflow("w").task("t", job="j").build())
        done = await engine.wait(await engine.start("w"))
    assert done.output == "one"


# --------------------------------------------------------------------------------------------
# Messages that do not say what was wrong
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("until", [-5, float("inf"), float("nan")])
def test_a_timer_until_out_of_range_says_why(until: float) -> None:
    """docs/waiting.md: ``.wait(name, until=...)`` waits until "Unix seconds, an **aware**
    ``datetime``, or a callable of ctx giving either ... negative, infinite and NaN numbers are
    refused". ``until=-5`` is refused with "until must be Unix seconds, an aware datetime, or
    a callable of ctx, got -5": -5 *is* a number of Unix seconds, so the message names no
    fault. The same value from a callable says it: "until must give Unix seconds (a finite
    number >= 0) or an aware datetime, got ...". The builder's message should say so too."""
    with pytest.raises(tf.DefinitionError, match=r"finite|>= ?0|negative"):
        tf.workflow("w").wait("t", until=until).build()


@pytest.mark.parametrize("start_at", [-5, float("inf"), float("nan")])
async def test_a_start_at_out_of_range_says_why(autojump_clock: trio.testing.MockClock, start_at: float) -> None:
    """docs/waiting.md, Delayed starts: ``start_at=`` takes "an aware ``datetime`` or Unix
    seconds". ``start(..., start_at=-5)`` raises "start_at must be an aware datetime or Unix
    seconds, got -5", which reads as if -5 were neither; ``delay=-5`` says "delay must be a
    finite number of seconds >= 0, got -5"."""
    async with tf.open_engine() as engine:
        engine.register(tf.workflow("w").step("a", ok).build())
        with pytest.raises(tf.InvalidArgumentError, match=r"finite|>= ?0|negative"):
            await engine.start("w", start_at=start_at)
        assert await engine.get_instances() == []


# --------------------------------------------------------------------------------------------
# The adapter conformance kit and the adapters' own methods
# --------------------------------------------------------------------------------------------


async def test_check_persistence_adapter_given_an_adapter_says_it_takes_a_factory() -> None:
    """docs/adapters.md: "``await check_persistence_adapter(lambda key: MyAdapter(...))``".
    The natural first try, ``check_persistence_adapter(MyAdapter(...))`` (the name reads
    "check this adapter"), raises a bare ``TypeError: 'MemoryAdapter' object is not
    callable`` from inside the kit; the class itself, ``check_persistence_adapter(MyAdapter)``,
    gives ``TypeError: MemoryAdapter.__init__() takes 1 positional argument but 2 were given``.
    The kit should say what it takes: a callable ``open_adapter(key)`` giving a new, unopened
    adapter on the storage named ``key``."""
    with pytest.raises(tf.InvalidArgumentError, match="key"):
        await check_persistence_adapter(MemoryAdapter())  # type: ignore[arg-type]


async def _three_finished(adapter: Any) -> None:
    adapter.use_clock(lambda: 1000.0)
    await adapter.open()
    for n in range(3):
        await adapter.create(f"i{n}", "wf", "completed", start=b"s", header=b"h")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_adapter_purge_with_a_negative_limit_deletes_nothing(kind: str, tmp_path: Path) -> None:
    """docs/adapters.md: ``purge(finished_by, limit, ...)``: "delete, atomically, up to
    ``limit`` finished instances". README.md hands users the adapter
    (``await engine.adapter.delete(instance_id)``), so its methods are called by hand. Both
    bundled adapters take ``limit=-1`` as "no limit" and delete every finished instance
    (``MemoryAdapter`` does the same with ``limit=1.5``; on SQLite ``limit="2"`` deletes two
    and ``finished_by="x"`` raises a bare ``ValueError``). A limit that is not an int >= 0
    should be refused (a ``StorageError``, as their other bad arguments are), deleting
    nothing."""
    adapter = MemoryAdapter() if kind == "memory" else SQLiteAdapter(tmp_path / "a.db")
    await _three_finished(adapter)
    try:
        try:
            deleted = await adapter.purge(2000.0, -1)
        except tf.TrioflowError:
            deleted = 0
        assert deleted == 0
        assert len(await adapter.list_instances()) == 3
    finally:
        await adapter.close()


async def test_bundled_adapters_agree_on_a_negative_listing_limit(tmp_path: Path) -> None:
    """docs/adapters.md: ``list_instances(..., limit=None, ...)``: "at most ``limit``".
    ``MemoryAdapter().list_instances(limit=-1)`` gives ``[]``, ``SQLiteAdapter``'s gives every
    instance (SQLite's ``LIMIT -1``); ``limit="2"`` is a bare ``TypeError`` on the first and
    ``[]`` on the second, ``limit=1.5`` a ``TypeError`` and a ``DatabaseError``. The two
    bundled adapters should refuse such a limit alike (or at least list at most it)."""
    results = []
    for adapter in (MemoryAdapter(), SQLiteAdapter(tmp_path / "a.db")):
        await _three_finished(adapter)
        try:
            try:
                results.append(len(await adapter.list_instances(limit=-1)))
            except tf.TrioflowError:
                results.append("refused")
        finally:
            await adapter.close()
    assert results[0] == results[1]
    assert results[1] in (0, "refused")


# --------------------------------------------------------------------------------------------
# Values nested past the limit
# --------------------------------------------------------------------------------------------


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


async def test_a_step_output_nested_past_the_limit_fails_the_step_that_made_it(
        autojump_clock: trio.testing.MockClock) -> None:
    """docs/adapters.md: "Values that must be stored (inputs, step outputs, ``ctx.set``
    values) are checked as they are encoded: one ... nested more than about 890 levels deep is
    refused with an ``UnencodableValueError`` naming it"; docs/errors.md: "a value that cannot
    be stored fails **the step that produced it**". A step returning a list nested 1,000 deep
    is recorded ``completed`` (its output stored and read back); the *next* step, which only
    reads ``ctx.steps["a"]``, then fails with "UnencodableValueError: output of step 'a' is
    nested too deeply to be stored (about 890 levels at most)" (``failed_step == "b"``), and
    fails the same way on every retry or restart. (The workflow input and a signal's payload
    are refused from 897 levels; a step's output is stored up to 1,023.) Either the output is
    refused as step 'a' ends, or a step that reads it can."""
    async def deep(ctx: Any) -> Any:
        return _nested(1000)

    async def reads(ctx: Any) -> str:
        ctx.steps["a"]
        return "read"

    async with tf.open_engine() as engine:
        engine.register(tf.workflow("w").step("a", deep).step("b", reads).build())
        done = await engine.wait(await engine.start("w"))
    assert done.status == "completed" or (
        done.failed_step == "a" and done.error_name == "UnencodableValueError"), (
        done.status, done.failed_step, done.cause)


async def test_a_completed_step_whose_output_is_nested_past_the_limit_is_still_compensated(
        autojump_clock: trio.testing.MockClock) -> None:
    """README.md, Compensation: "Every completed step with a compensation is compensated exactly
    once". Step 'a' returns a list nested 1,000 deep and is recorded ``completed``; when a
    later step fails, its compensation never runs: ``compensation_errors == {"a":
    "UnencodableValueError: output of step 'a' is nested too deeply to be stored (about 890
    levels at most)"}`` and ``compensated_steps == ()``, so what 'a' did (a reservation) is
    never undone. Either 'a' fails as it ends (and, not completed, is not compensated), or its
    compensation runs."""
    undone: list[Any] = []

    async def deep(ctx: Any) -> Any:
        return _nested(1000)

    async def undo(ctx: Any, result: Any) -> None:
        undone.append("a")

    async def boom(ctx: Any) -> None:
        raise KeyError("later")

    async with tf.open_engine() as engine:
        engine.register(tf.workflow("w").step("a", deep, undo).step("z", boom).build())
        done = await engine.wait(await engine.start("w"))
    assert done.status == "failed"
    if done.failed_step != "a":
        assert done.compensated_steps == ("a",) and undone == ["a"], dict(done.compensation_errors)


# --------------------------------------------------------------------------------------------
# execute_workflow and run_workflow keywords
# --------------------------------------------------------------------------------------------


async def test_execute_workflow_checks_its_jobs_mapping(autojump_clock: trio.testing.MockClock) -> None:
    """README.md, A saga without an engine: "a job name missing from its ``jobs=`` fails the
    run before any step runs". ``jobs=`` given as a list (of functions, say) raises a bare
    ``AttributeError: 'list' object has no attribute 'items'``; ``services=[...]`` beside it
    says "services must be a mapping of names to objects (a dict), got [...]"."""
    async def job(data: Any) -> str:
        return "ran"

    with pytest.raises((tf.InvalidArgumentError, tf.DefinitionError), match="jobs"):
        await tf.execute_workflow(None, tf.workflow("w").task("t", job="j").build(), jobs=[job])  # type: ignore[arg-type]


@pytest.mark.parametrize("hooks", ["on_complete", [print]])
async def test_run_workflow_checks_its_hooks_mapping(autojump_clock: trio.testing.MockClock, hooks: Any) -> None:
    """README.md, A saga without an engine: ``run_workflow`` takes "``hooks=`` ... as
    keywords". Anything but a mapping raises a bare ``TypeError: trioflow._builder.
    WorkflowBuilder.with_hooks() argument after ** must be a mapping, not str``, naming a
    method the caller never called; ``initial_data="bad"`` beside it says "with_data takes a
    mapping, got 'bad'" and ``services="s"`` "services must be a mapping ...". (An unknown
    hook name is already refused well: "unknown hook on_complet; hooks are ...".)"""
    with pytest.raises((tf.InvalidArgumentError, tf.DefinitionError), match="hooks"):
        await tf.run_workflow(None, "w", [tf.step("a", ok)], hooks=hooks)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_adapter_purge_and_listing_take_numbers_past_64_bits(kind: str, tmp_path: Path) -> None:
    """From a re-review of the adapters' argument checks: ``purge(10**400, ...)`` raised a bare
    ``OverflowError``, and SQLite refused a limit of 2**63 or more with its own error
    ("int too large") where the MemoryAdapter took it. A finishing time past any float is as
    far off as infinity, and a limit past SQLite's limits nothing more."""
    adapter = MemoryAdapter() if kind == "memory" else SQLiteAdapter(tmp_path / "a.db")
    await _three_finished(adapter)
    try:
        assert len(await adapter.list_instances(limit=2**70)) == 3
        assert await adapter.purge(10**400, 2**70) == 3
        assert await adapter.list_instances() == []
    finally:
        await adapter.close()
