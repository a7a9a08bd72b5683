"""Prebuilt entity steps: create / update / delete rows through ``ctx.driver``, each
compensated automatically. What a compensation needs (the created key, the previous values, the
deleted rows) is the step's output, so it is in the snapshot and survives a crash and resume.
Multi-row changes run in a transaction of their own (a savepoint inside a transactional run).

Each execution (and each compensation) writes at most once: with a driver that keeps a run
ledger (both shipped drivers do), its transaction also records its output under a key made of
the instance and the execution, and an execution run again after a crash (its checkpoint was
lost, so at least once runs it again) gets that output back instead of writing again. Run
again, an update would otherwise take its own new values for the previous ones, a delete would
find nothing, and a re-created row would already exist."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from trioflow.adapters._driver import Driver, DriverError, EntityNotFoundError, RunLedger, is_run_ledger

from ._builder import catchers
from ._callables import check_arguments
from ._codec import decode_payload, encode_payload
from ._context import WorkflowContext
from ._decide import next_execution_id
from ._errors import DefinitionError, safe_repr
from ._definition import Catch, TaskStep
from ._durations import Seconds
from ._engine_arguments import refuses_unbound_arguments
from ._lanes import execution_id, valid_text
from ._ledger_keys import entity_key
from ._retry import Retry

#: ``data_fn`` / ``where_fn``: the columns from the context, a plain or an ``async def``.
Fn = Callable[[WorkflowContext], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]


def _driver(ctx: WorkflowContext, step: str) -> Driver:
    if ctx.driver is None:
        raise DriverError(f"step {step!r} needs a data driver: pass driver= to execute_workflow or open_engine")
    if not callable(getattr(ctx.driver, "transaction", None)):
        # (Any object may be given as ctx.driver, for a workflow's own steps; every entity step
        # writes in a transaction of the driver's.)
        raise DriverError(f"step {step!r} needs a data driver (trioflow.adapters.Driver), and the one given has no"
                          f" transaction(): {safe_repr(ctx.driver)}")
    driver: Driver = ctx.driver
    return driver


async def _once(ctx: WorkflowContext, step: str, write: Callable[[Driver], Awaitable[Any]], *, undo: bool = False) -> Any:
    """``write(driver)`` in a transaction, at most once for this execution of ``step`` (or its
    compensation, ``undo``): see the module docstring. Without a ledger, or where nothing
    resumes the run (``execute_workflow``: a record would only take room), it just runs."""
    driver = _driver(ctx, step)
    ledger: RunLedger | None = None
    key = ""
    if is_run_ledger(driver) and ctx._encodable is not None:  # (values are stored: a durable run)
        ledger, state = driver, ctx._state
        executed = execution_id(ctx.lane, step, ctx._compensating) if undo and ctx._compensating is not None \
            else next_execution_id(state, ctx.lane, step)
        key = entity_key(state, executed, undo)
    async with driver.transaction():
        if ledger is not None:
            done = await ledger.find_run(key)
            if done is not None:
                return decode_payload(done)
        output = await write(driver)
        if ledger is not None:
            await ledger.record_run(key, encode_payload(output, f"the output of step {step!r}"))
    return output


def _check_step(step: str, entity: object, store_as: object = None, **fns: object) -> None:
    """What an entity step is made of, or :class:`DefinitionError` raised as the step is made
    rather than as it runs: the entity is a table's name; ``store_as`` a key of the shared data
    (found bad only once the row is created, the step would fail without its compensation,
    leaving the row); each column function callable (not a dict of fixed columns, say)."""
    if not isinstance(entity, str) or not entity or not valid_text(entity):
        raise DefinitionError(f"entity step {step!r}: entity must be a table's name (a non-empty string), got"
                              f" {safe_repr(entity)}")
    if store_as is not None and (not isinstance(store_as, str) or not store_as or not valid_text(store_as)):
        raise DefinitionError(f"entity step {step!r}: store_as must be a key of the shared data (a non-empty string)"
                              f" or None, got {safe_repr(store_as)}")
    for what, fn in fns.items():
        if not callable(fn):
            raise DefinitionError(
                f"entity step {step!r}: {what} must be a function of ctx giving a dict of columns, got"
                f" {safe_repr(fn)}{' (for fixed columns: lambda ctx: {...})' if isinstance(fn, Mapping) else ''}")
        check_arguments(f"entity step {step!r}", what, fn, ("ctx",))


async def _columns(fn: Fn, ctx: WorkflowContext, step: str, what: str) -> dict[str, Any]:
    """``fn(ctx)`` (awaited if it is an ``async def``, as other mappers may be) as a dict of
    column names to values; anything else fails the step, named, before the driver sees it."""
    value = fn(ctx)
    if inspect.isawaitable(value):
        value = await value
    try:
        columns = dict(value)  # (pairs too, as dict() takes them)
    except (TypeError, ValueError):
        columns = None
    if columns is None or not all(isinstance(column, str) for column in columns):
        raise DriverError(
            f"step {step!r}: {what} must return a dict of column names to values, got {safe_repr(value)}")
    return columns


def _keyed(rows: list[dict[str, Any]], key: str, step: str, entity: str, where: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows an update or delete step changes: at least one, each with a key (its
    compensation finds and restores rows by their key; a NULL one would name every such row)."""
    if not rows:
        raise EntityNotFoundError(f"step {step!r}: no {entity!r} row matches {where!r}")
    if any(row.get(key) is None for row in rows):
        raise DriverError(f"step {step!r}: a {entity!r} row matching {where!r} has no {key!r} (NULL): it could not be"
                          " restored by its key")
    return rows


@refuses_unbound_arguments
def create_entity_step(
    name: str, entity: str, data_fn: Fn, *, store_as: str | None = None, compensate: bool = True,
    retry: Retry | None = None, timeout: Seconds | None = None, catch: Sequence[Catch] | Catch | None = (),
    next: str | None = None, end: bool = False,
) -> TaskStep:
    """Create a row from ``data_fn(ctx)``; output: the row as stored. ``store_as`` also puts its
    key in ``ctx.data``. Compensation deletes the row."""
    _check_step(name, entity, store_as, data_fn=data_fn)

    async def execute(ctx: WorkflowContext) -> dict[str, Any]:
        data = await _columns(data_fn, ctx, name, "data_fn")

        async def create(driver: Driver) -> dict[str, Any]:
            return await driver.create(entity, data)

        row: dict[str, Any] = await _once(ctx, name, create)
        if store_as is not None:
            ctx.set(store_as, row[await _driver(ctx, name).primary_key(entity)])
        return row

    async def delete_created(ctx: WorkflowContext, row: dict[str, Any]) -> None:
        async def delete(driver: Driver) -> None:
            key = await driver.primary_key(entity)
            await driver.delete(entity, {key: row[key]})

        await _once(ctx, name, delete, undo=True)

    return TaskStep(name=name, run=execute, compensate=delete_created if compensate else None, retry=retry,
                    timeout=timeout, catch=catchers(name, catch), next=next, end=end, entity=entity)


@refuses_unbound_arguments
def update_entity_step(
    name: str, entity: str, where_fn: Fn, data_fn: Fn, *, compensate: bool = True,
    retry: Retry | None = None, timeout: Seconds | None = None, catch: Sequence[Catch] | Catch | None = (),
    next: str | None = None, end: bool = False,
) -> TaskStep:
    """Set ``data_fn(ctx)`` on the rows matching ``where_fn(ctx)`` (at least one must match).
    Output: ``{"updated": rows after, "previous": key and old values of the changed columns}``.
    Compensation writes the old values back."""
    _check_step(name, entity, where_fn=where_fn, data_fn=data_fn)

    async def execute(ctx: WorkflowContext) -> dict[str, Any]:
        where = await _columns(where_fn, ctx, name, "where_fn")
        data = await _columns(data_fn, ctx, name, "data_fn")

        async def update(driver: Driver) -> dict[str, Any]:
            key = await driver.primary_key(entity)
            before = _keyed(await driver.find_many(entity, where), key, name, entity, where)
            updated = [row for old in before for row in await driver.update(entity, {key: old[key]}, data)]
            previous = [{key: old[key], **{c: old.get(c) for c in data}} for old in before]
            return {"updated": updated, "previous": previous}

        output: dict[str, Any] = await _once(ctx, name, update)
        return output

    async def restore(ctx: WorkflowContext, output: dict[str, Any]) -> None:
        async def write_back(driver: Driver) -> None:
            key = await driver.primary_key(entity)
            for old in output["previous"]:
                await driver.update(entity, {key: old[key]}, {c: v for c, v in old.items() if c != key})

        await _once(ctx, name, write_back, undo=True)

    return TaskStep(name=name, run=execute, compensate=restore if compensate else None, retry=retry,
                    timeout=timeout, catch=catchers(name, catch), next=next, end=end, entity=entity)


@refuses_unbound_arguments
def delete_entity_step(
    name: str, entity: str, where_fn: Fn, *, compensate: bool = True,
    retry: Retry | None = None, timeout: Seconds | None = None, catch: Sequence[Catch] | Catch | None = (),
    next: str | None = None, end: bool = False,
) -> TaskStep:
    """Delete the rows matching ``where_fn(ctx)`` (at least one must match). Output:
    ``{"deleted": the rows as they were}``. Compensation re-creates them with the same keys."""
    _check_step(name, entity, where_fn=where_fn)

    async def execute(ctx: WorkflowContext) -> dict[str, Any]:
        where = await _columns(where_fn, ctx, name, "where_fn")

        async def delete(driver: Driver) -> dict[str, Any]:
            key = await driver.primary_key(entity)
            rows = _keyed(await driver.find_many(entity, where), key, name, entity, where)
            for row in rows:
                await driver.delete(entity, {key: row[key]})
            return {"deleted": rows}

        output: dict[str, Any] = await _once(ctx, name, delete)
        return output

    async def recreate(ctx: WorkflowContext, output: dict[str, Any]) -> None:
        async def create(driver: Driver) -> None:
            for row in output["deleted"]:
                await driver.create(entity, row)

        await _once(ctx, name, create, undo=True)

    return TaskStep(name=name, run=execute, compensate=recreate if compensate else None, retry=retry,
                    timeout=timeout, catch=catchers(name, catch), next=next, end=end, entity=entity)
