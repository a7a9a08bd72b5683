"""The behaviours every persistence adapter must have, as one awaitable check.

Third-party adapters run it in their own test suite (see docs/adapters.md)::

    async def test_my_adapter(tmp_path):
        await check_persistence_adapter(lambda key: MyAdapter(tmp_path / key))
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from trioflow._builder import workflow
from trioflow._engine import open_engine
from trioflow._errors import UnencodableValueError
from trioflow.adapters._codec import decode
from trioflow.adapters._protocol import Adapter

OpenAdapter = Callable[[str], Adapter]
_BLOB = bytes(range(256)) * 3


async def check_persistence_adapter(open_adapter: OpenAdapter) -> list[str]:
    """Run every conformance check; returns the names of the checks, all passed.

    ``open_adapter(key)`` must return a new, unopened adapter on the storage named ``key``:
    the same key means the same storage (a reopen), a new key an empty one. Raises
    ``AssertionError`` naming the first check that fails.
    """
    passed = []
    for check in _CHECKS:
        try:
            await check(open_adapter)
        except AssertionError as exc:
            raise AssertionError(f"adapter conformance check {check.__name__!r} failed: {exc}") from exc
        passed.append(check.__name__)
    return passed


@asynccontextmanager
async def _opened(open_adapter: OpenAdapter, key: str) -> AsyncIterator[Adapter]:
    adapter = open_adapter(key)
    await adapter.open()
    try:
        yield adapter
    finally:
        await adapter.close()


async def create_and_load(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "create_and_load") as a:
        assert await a.create("i1", "wf", "running", _BLOB) is True, "create of a new id must return True"
        record = await a.load("i1")
        assert record is not None, "load after create returned None"
        assert (record.instance_id, record.workflow_name, record.status) == ("i1", "wf", "running"), record
        assert bytes(record.snapshot) == _BLOB, "snapshot bytes must round-trip unchanged"
        assert await a.load("missing") is None, "load of an unknown id must return None"


async def create_is_idempotent(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "create_is_idempotent") as a:
        await a.create("i1", "wf", "running", b"first")
        assert await a.create("i1", "wf", "pending", b"second") is False, "create of an existing id must return False"
        record = await a.load("i1")
        assert record is not None and bytes(record.snapshot) == b"first", "a refused create must not write"


async def save_replaces(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "save_replaces") as a:
        await a.create("i1", "wf", "running", b"v1")
        await a.save("i1", "wf", "completed", b"v2")
        record = await a.load("i1")
        assert record is not None and record.status == "completed" and bytes(record.snapshot) == b"v2", record


async def list_by_name_and_status(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "list_by_name_and_status") as a:
        rows = [("i1", "a", "running"), ("i2", "b", "running"), ("i3", "a", "completed"), ("i4", "a", "running")]
        for iid, name, status in rows:
            await a.create(iid, name, status, iid.encode())  # type: ignore[arg-type]
        ids = [r.instance_id for r in await a.list_instances("a")]
        assert ids == ["i1", "i3", "i4"], f"list_instances('a') must list a's instances oldest first, got {ids}"
        ids = [r.instance_id for r in await a.list_instances("a", "running")]
        assert ids == ["i1", "i4"], f"list_instances('a', 'running') got {ids}"
        assert await a.list_instances("nobody") == [], "an unknown workflow lists nothing"


async def resumable_lists_pending_and_running(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "resumable") as a:
        for iid, status in (("p", "pending"), ("r", "running"), ("c", "completed"), ("f", "failed"),
                            ("x", "cancelled"), ("t", "timed_out")):
            await a.create(iid, "wf", status, b".")  # type: ignore[arg-type]
        ids = sorted(r.instance_id for r in await a.resumable())
        assert ids == ["p", "r"], f"resumable() must return exactly the pending and running instances, got {ids}"


async def delete_removes(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "delete") as a:
        await a.create("i1", "wf", "running", b".")
        assert await a.delete("i1") is True and await a.load("i1") is None, "delete must remove the instance"
        assert await a.delete("i1") is False, "delete of an unknown id must return False"


async def survives_reopen(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "reopen") as a:
        await a.create("i1", "wf", "running", b"v1")
        await a.save("i1", "wf", "running", b"v2")
    async with _opened(open_adapter, "reopen") as b:
        record = await b.load("i1")
        assert record is not None and bytes(record.snapshot) == b"v2", "what was saved must be there after a reopen"
        assert [r.instance_id for r in await b.resumable()] == ["i1"], "a reopened adapter must offer it for resume"


async def step_is_durable_before_the_next_starts(open_adapter: OpenAdapter) -> None:
    adapter = open_adapter("durability")
    seen: dict[str, Any] = {}

    async def first(data: Any) -> str:
        return "one"

    async def second(data: Any) -> str:
        record = await adapter.load(seen["id"])
        assert record is not None
        state = decode(record.snapshot)
        seen["first_stored"] = state.step_results.get("first")
        return "two"

    wf = workflow("conformance").task("first", job=first).task("second", job=second).build()
    async with open_engine(adapter=adapter) as engine:
        engine.register(wf)
        seen["id"] = await engine.start("conformance", {"n": 1})
        with trio.fail_after(60):
            done = await engine.wait(seen["id"])
    stored = seen["first_stored"]
    assert stored is not None and stored.status == "completed" and stored.output == "one", (
        f"step 'first' must be stored as completed before 'second' starts; stored: {stored}"
    )
    assert done.status == "completed" and done.output == "two", done


async def bad_data_is_never_stored(open_adapter: OpenAdapter) -> None:
    adapter = open_adapter("bad-data")
    wf = workflow("conformance").task("only", job=lambda data: data).build()
    async with open_engine(adapter=adapter) as engine:
        engine.register(wf)
        try:
            await engine.start("conformance", {"bad": object()})
        except UnencodableValueError:
            pass
        else:
            raise AssertionError("an unencodable input must be refused")
        stored = await adapter.list_instances("conformance")
    assert stored == [], f"a refused start must store nothing, found {stored}"


_CHECKS: list[Callable[[OpenAdapter], Awaitable[None]]] = [
    create_and_load, create_is_idempotent, save_replaces, list_by_name_and_status,
    resumable_lists_pending_and_running, delete_removes, survives_reopen,
    step_is_durable_before_the_next_starts, bad_data_is_never_stored,
]
