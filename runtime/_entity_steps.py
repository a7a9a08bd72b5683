"""Prebuilt entity steps (seed 000): create / update / delete rows through ``ctx.driver``, each
compensated automatically. What a compensation needs (the created key, the previous values, the
deleted rows) is the step's output, so it is in the snapshot and survives a crash and resume.
Multi-row changes run in a transaction of their own (a savepoint inside a transactional run)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from trioflow.adapters._driver import Driver, DriverError, EntityNotFoundError

from ._context import WorkflowContext
from ._definition import TaskStep
from ._retry import Retry

Fn = Callable[[WorkflowContext], Mapping[str, Any]]


def _driver(ctx: WorkflowContext, step: str) -> Driver:
    if ctx.driver is None:
        raise DriverError(f"step {step!r} needs a data driver: pass driver= to execute_workflow or open_engine")
    driver: Driver = ctx.driver
    return driver


def create_entity_step(
    name: str, entity: str, data_fn: Fn, *, store_as: str | None = None, compensate: bool = True,
    retry: Retry | None = None, timeout: float | None = None,
) -> TaskStep:
    """Create a row from ``data_fn(ctx)``; output: the row as stored. ``store_as`` also puts its
    key in ``ctx.data``. Compensation deletes the row."""

    async def execute(ctx: WorkflowContext) -> dict[str, Any]:
        driver = _driver(ctx, name)
        row = await driver.create(entity, data_fn(ctx))
        if store_as is not None:
            ctx.set(store_as, row[await driver.primary_key(entity)])
        return row

    async def delete_created(ctx: WorkflowContext, row: dict[str, Any]) -> None:
        driver = _driver(ctx, name)
        key = await driver.primary_key(entity)
        await driver.delete(entity, {key: row[key]})

    return TaskStep(name=name, run=execute, compensate=delete_created if compensate else None,
                    retry=retry, timeout=timeout, entity=entity)


def update_entity_step(
    name: str, entity: str, where_fn: Fn, data_fn: Fn, *, compensate: bool = True,
    retry: Retry | None = None, timeout: float | None = None,
) -> TaskStep:
    """Set ``data_fn(ctx)`` on the rows matching ``where_fn(ctx)`` (at least one must match).
    Output: ``{"updated": rows after, "previous": key and old values of the changed columns}``.
    Compensation writes the old values back."""

    async def execute(ctx: WorkflowContext) -> dict[str, Any]:
        driver = _driver(ctx, name)
        where, data = dict(where_fn(ctx)), dict(data_fn(ctx))
        key = await driver.primary_key(entity)
        async with driver.transaction():
            before = await driver.find_many(entity, where)
            if not before:
                raise EntityNotFoundError(f"step {name!r}: no {entity!r} row matches {where!r}")
            updated = [row for old in before for row in await driver.update(entity, {key: old[key]}, data)]
        previous = [{key: old[key], **{c: old.get(c) for c in data}} for old in before]
        return {"updated": updated, "previous": previous}

    async def restore(ctx: WorkflowContext, output: dict[str, Any]) -> None:
        driver = _driver(ctx, name)
        key = await driver.primary_key(entity)
        async with driver.transaction():
            for old in output["previous"]:
                await driver.update(entity, {key: old[key]}, {c: v for c, v in old.items() if c != key})

    return TaskStep(name=name, run=execute, compensate=restore if compensate else None,
                    retry=retry, timeout=timeout, entity=entity)


def delete_entity_step(
    name: str, entity: str, where_fn: Fn, *, compensate: bool = True,
    retry: Retry | None = None, timeout: float | None = None,
) -> TaskStep:
    """Delete the rows matching ``where_fn(ctx)`` (at least one must match). Output:
    ``{"deleted": the rows as they were}``. Compensation re-creates them with the same keys."""

    async def execute(ctx: WorkflowContext) -> dict[str, Any]:
        driver = _driver(ctx, name)
        where = dict(where_fn(ctx))
        key = await driver.primary_key(entity)
        async with driver.transaction():
            rows = await driver.find_many(entity, where)
            if not rows:
                raise EntityNotFoundError(f"step {name!r}: no {entity!r} row matches {where!r}")
            for row in rows:
                await driver.delete(entity, {key: row[key]})
        return {"deleted": rows}

    async def recreate(ctx: WorkflowContext, output: dict[str, Any]) -> None:
        driver = _driver(ctx, name)
        async with driver.transaction():
            for row in output["deleted"]:
                await driver.create(entity, row)

    return TaskStep(name=name, run=execute, compensate=recreate if compensate else None,
                    retry=retry, timeout=timeout, entity=entity)
