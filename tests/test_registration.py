"""Registration and instance ids (issue 16, items 6 and 7): what is registered twice, and what a
repeated ``start(instance_id=...)`` returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow as tf


async def noop(data: Any) -> Any:
    return data


async def other(data: Any) -> Any:
    return "other"


def one_step(name: str = "w", job: Any = noop) -> tf.WorkflowDefinition:
    return tf.workflow(name).task("a", job=job).build()


async def test_the_same_definition_registered_twice_is_a_no_op() -> None:
    async with tf.open_engine() as engine:
        engine.register(one_step())
        engine.register(one_step())  # built again from the same callables: equal
        assert (await engine.wait(await engine.start("w", 1))).output == 1


async def test_another_definition_under_a_registered_name_is_refused_unless_replaced() -> None:
    async with tf.open_engine() as engine:
        engine.register(one_step())
        with pytest.raises(tf.DefinitionError, match="'w' is registered already.*replace=True"):
            engine.register(one_step(job=other))
        assert (await engine.wait(await engine.start("w", 1))).output == 1  # the first one still
        engine.register(one_step(job=other), replace=True)
        assert (await engine.wait(await engine.start("w", 1))).output == "other"


async def test_another_callable_under_a_registered_job_name_is_refused_unless_replaced() -> None:
    async with tf.open_engine() as engine:
        engine.jobs.register("j", noop)
        engine.jobs.register("j", noop)  # the same callable: nothing happens
        with pytest.raises(tf.DefinitionError, match="job 'j' is registered already.*replace=True"):
            engine.jobs.register("j", other)
        engine.register(tf.workflow("w").task("a", job="j").build())
        assert (await engine.wait(await engine.start("w", 5))).output == 5
        engine.jobs.register("j", other, replace=True)
        assert (await engine.wait(await engine.start("w", 5))).output == "other"


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_an_existing_id_with_another_input_is_a_conflict(storage: str, tmp_path: Path) -> None:
    adapter = tf.adapters.MemoryAdapter() if storage == "memory" else tf.adapters.SQLiteAdapter(tmp_path / "x.db")
    release = trio.Event()

    async def slow(data: Any) -> Any:
        await release.wait()
        return data

    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(one_step(job=slow))
        assert await engine.start("w", {"n": [1, 2]}, instance_id="order-1") == "order-1"
        # While it runs: the same input (a tuple stores as a list) returns it, another is refused.
        assert await engine.start("w", {"n": (1, 2)}, instance_id="order-1") == "order-1"
        with pytest.raises(tf.InstanceIdConflictError, match="'order-1'.*another input"):
            await engine.start("w", {"n": [1, 3]}, instance_id="order-1")
        release.set()
        assert (await engine.wait("order-1")).output == {"n": [1, 2]}
        # Once it is finished and only stored: the same holds.
        assert await engine.start("w", {"n": [1, 2]}, instance_id="order-1") == "order-1"
        with pytest.raises(tf.InstanceIdConflictError, match="another input"):
            await engine.start("w", None, instance_id="order-1")
    async with tf.open_engine(adapter=adapter) as engine:  # and from another engine
        engine.register(one_step(job=slow))
        with pytest.raises(tf.InstanceIdConflictError, match="another input"):
            await engine.start("w", "x", instance_id="order-1")
        assert (await engine.get_instance("order-1")) is not None


def test_statuses_are_exported_as_types() -> None:
    from typing import get_args

    assert set(get_args(tf.Status)) == {
        "pending", "running", "completed", "failed", "cancelled", "timed_out", "compensated"}
    assert {"caught", "started"} <= set(get_args(tf.StepStatus))


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_every_engine_method_after_close_raises_engine_closed(storage: str, tmp_path: Path) -> None:
    """Issue 16, item 9, on every adapter: nothing is read or written through a closed engine."""
    adapter = tf.adapters.MemoryAdapter() if storage == "memory" else tf.adapters.SQLiteAdapter(tmp_path / "x.db")
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(one_step())
        iid = await engine.wait(await engine.start("w", 1))
    calls: list[Any] = [
        lambda: engine.start("w", 2), lambda: engine.wait(iid.id), lambda: engine.get_instance(iid.id),
        lambda: engine.get_instances("w"), lambda: engine.cancel(iid.id), lambda: engine.resume(),
        lambda: engine.signal(iid.id, "go"),
    ]
    for call in calls:
        with pytest.raises(tf.EngineClosedError):
            await call()
    for sync_call in (lambda: engine.register(one_step("v")), lambda: engine.job("j"),
                      lambda: engine.jobs.register("k", noop)):
        with pytest.raises(tf.EngineClosedError):
            sync_call()
