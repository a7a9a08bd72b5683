"""A newcomer's review (README and docs tried as written, then the usual mistakes): each test
failed before its fix (autojump MockClock, no real sleeps)."""

from __future__ import annotations

import gc
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


@pytest.fixture
def shop_db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    con = sqlite3.connect(path)
    con.execute("create table orders(id integer primary key, total int, status text)")
    con.commit()
    con.close()
    return path


async def one(ctx: Any) -> int:
    return 1


async def undo(ctx: Any, result: Any) -> None:
    return None


async def boom(ctx: Any) -> None:
    raise ValueError("declined")


async def test_an_async_data_fn_of_an_entity_step_is_awaited(autojump_clock: trio.testing.MockClock,
                                                              shop_db: Path) -> None:
    """Every other mapper of the context may be an ``async def``; an entity step's ``data_fn``
    failed with a bare ``TypeError: 'coroutine' object is not iterable`` from the driver."""
    async def columns(ctx: Any) -> dict[str, Any]:
        return {"total": 6, "status": "async"}

    wf = tf.workflow("e").step(tf.create_entity_step("c", "orders", columns)).build()
    async with open_test_engine(driver=tf.adapters.SQLiteDriver(shop_db)) as engine:
        engine.register(wf)
        inst = await engine.wait(await engine.start("e"))
    assert inst.status == "completed", inst.error
    assert inst.output["status"] == "async"


@pytest.mark.parametrize("factory", ["create", "update", "delete"])
async def test_an_entity_step_whose_mapper_gives_no_dict_says_so(
        autojump_clock: trio.testing.MockClock, shop_db: Path, factory: str) -> None:
    """A ``data_fn`` that gave a list failed with ``UnknownColumnError: table 'orders' has no
    column 1``, a column nobody wrote; a ``where_fn`` likewise."""
    steps = {
        "create": lambda: tf.create_entity_step("s", "orders", lambda ctx: [1]),
        "update": lambda: tf.update_entity_step("s", "orders", lambda ctx: {"id": 1}, lambda ctx: [1]),
        "delete": lambda: tf.delete_entity_step("s", "orders", lambda ctx: ["id", 1]),
    }
    wf = tf.workflow("e").step(steps[factory]()).build()
    async with open_test_engine(driver=tf.adapters.SQLiteDriver(shop_db)) as engine:
        engine.register(wf)
        inst = await engine.wait(await engine.start("e"))
    assert (inst.status, inst.error_name) == ("failed", "DriverError"), inst.error
    assert "must return a dict of column names to values" in (inst.cause or ""), inst.cause


async def test_a_transactional_workflow_is_refused_by_an_engine_without_a_driver(
        autojump_clock: trio.testing.MockClock) -> None:
    """Without a driver it ran with no transaction at all, without a word: on failure
    ``rolled_back=False`` and ordinary compensations; its user believed the run atomic."""
    wf = tf.workflow("tx").step("a", one, undo).step("f", boom).transactional().build()
    async with open_test_engine() as engine:
        with pytest.raises(tf.DefinitionError, match="'tx' is transactional.*no driver.*open_engine"):
            engine.register(wf)
        assert await engine.get_instances() == []


async def test_execute_workflow_refuses_a_transactional_workflow_without_a_driver() -> None:
    wf = tf.workflow("tx").step("a", one, undo).step("f", boom).transactional().build()
    with pytest.raises(tf.DefinitionError, match="'tx' is transactional.*no driver"):
        await tf.execute_workflow(None, wf)
    with pytest.raises(tf.DefinitionError, match="'tx' is transactional"):
        await tf.run_workflow(None, "tx", [tf.step("a", one, undo)], use_transaction=True)


async def test_a_clock_that_gives_no_number_is_refused_at_open(autojump_clock: trio.testing.MockClock) -> None:
    """It failed at the first start() with a bare ``TypeError`` from inside trioflow."""
    for clock in (lambda: "now", lambda: float("nan"), lambda: True):
        with pytest.raises(tf.InvalidArgumentError, match="clock must give Unix seconds"):
            async with tf.open_engine(clock=clock):
                pass


@pytest.mark.parametrize("option", ["resume", "threads"])
async def test_open_engine_takes_only_true_or_false_for_its_switches(
        autojump_clock: trio.testing.MockClock, option: str) -> None:
    """``resume="no"`` was taken as True: the instances were resumed."""
    with pytest.raises(tf.InvalidArgumentError, match=f"{option} takes True or False, got 'no'"):
        async with tf.open_engine(**{option: "no"}):
            pass


async def test_execute_workflow_checks_its_services() -> None:
    """open_engine refused a list of services; execute_workflow took it, and the error came
    later, from ``ctx.resolve`` in a step."""
    wf = tf.workflow("w").step("a", one).build()
    with pytest.raises(tf.InvalidArgumentError, match="services must be a mapping"):
        await tf.execute_workflow(None, wf, services=["inventory"])  # type: ignore[arg-type]


async def test_events_on_a_closed_engine_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    """It returned a remover, for a callback that could never be called."""
    async with open_test_engine() as engine:
        pass
    with pytest.raises(tf.EngineClosedError):
        engine.events.on("workflow.completed", print)


async def test_an_async_step_that_forgot_an_await_is_told_so(autojump_clock: trio.testing.MockClock) -> None:
    """Its output, a coroutine, was refused with advice to convert it to an int or a str."""
    async def forgot(ctx: Any) -> Any:
        return one(ctx)  # no await

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the coroutine nobody awaited
        async with open_test_engine() as engine:
            engine.register(tf.workflow("w").step("a", forgot).build())
            inst = await engine.wait(await engine.start("w"))
        gc.collect()
    assert (inst.status, inst.error_name) == ("failed", "UnencodableValueError")
    assert "an await is missing" in (inst.cause or ""), inst.cause


async def release(ctx: Any) -> None:
    return None


def test_a_callable_that_cannot_take_its_arguments_is_refused_by_build() -> None:
    """A one-argument saga compensation was accepted; it failed only when a later step failed,
    recorded as a TypeError in ``compensation_errors``, and the reservation stayed made."""
    with pytest.raises(tf.DefinitionError, match=r"step 'a': compensate is called as compensate\(ctx, result\)"):
        tf.workflow("w").step("a", one, release).step("f", boom).build()
    with pytest.raises(tf.DefinitionError, match=r"step 'a': execute is called as execute\(ctx\)"):
        tf.workflow("w").step("a", lambda: 1).build()
    with pytest.raises(tf.DefinitionError, match=r"step 'a': job is called as job\(data\)"):
        tf.workflow("w").task("a", job=lambda a, b: 1).build()
    with pytest.raises(tf.DefinitionError, match=r"step 'a': compensate is called as compensate\(output\)"):
        tf.workflow("w").task("a", job=one, compensate=undo).build()
    # What binds is taken: defaults, *args, a callable object, a registered name.
    tf.workflow("w").step("a", one, lambda ctx, result=None, *rest: None).task("b", job=print).build()
    tf.workflow("w").task("a", job="charge", compensate="refund").build()
