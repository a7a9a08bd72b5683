"""Two refusals a review of the service API and of storage noted (December 6th): services named
by something other than a str, which ``ctx.resolve`` (it takes a name) could never find, and
``SQLiteAdapter.list_instances(after=)`` given something other than an id, which said
"'int' object has no attribute 'encode'" where MemoryAdapter names the missing instance. Both
failed until the commit that added this file."""

from __future__ import annotations

from pathlib import Path

import pytest

import trioflow as tf


async def _step(ctx: tf.WorkflowContext) -> None:
    return None


@pytest.mark.parametrize("key", [1, None, ("db",)])
async def test_services_not_named_by_a_str_are_refused_as_the_engine_opens_and_as_a_run_starts(key: object) -> None:
    """README: ``services=`` is a mapping of names to objects, looked up with ``ctx.resolve(name)``."""
    with pytest.raises(tf.InvalidArgumentError, match="services must be named by str"):
        async with tf.open_engine(services={"ok": object(), key: object()}):
            pass
    wf = tf.workflow("w").step("s", _step).build()
    with pytest.raises(tf.InvalidArgumentError, match="services must be named by str"):
        await tf.execute_workflow(None, wf, services={key: object()})


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_listing_after_something_that_is_no_id_names_no_such_instance(kind: str, tmp_path: Path) -> None:
    """docs/adapters.md: ``list_instances(..., after=...)``: "``UnknownInstanceError`` if it is
    not stored"; both bundled adapters the same."""
    adapter = tf.adapters.MemoryAdapter() if kind == "memory" else tf.adapters.SQLiteAdapter(tmp_path / "a.db")
    await adapter.open()
    try:
        await adapter.create("a", "w", "running", start=b"s", header=b"h")
        with pytest.raises(tf.UnknownInstanceError, match="no stored instance 3 to list after"):
            await adapter.list_instances(after=3)  # type: ignore[arg-type]
        assert [s.instance_id for s in await adapter.list_instances(after="a")] == []
    finally:
        await adapter.close()
