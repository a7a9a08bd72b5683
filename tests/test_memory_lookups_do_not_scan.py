"""The MemoryAdapter's lookups by workflow, by status and of what to resume do not read every
stored row (issue 12: "lookups that do not scan"; ``get_instances(name, status="running")``
took 17.8 ms with 100k stored before the indexes). Measured as work, not time: the Python
lines the call executes (``sys.settrace``) stay the same whether 100 or 10,000 finished rows of
another workflow are stored beside the few it finds. A scan over the rows (a filter of every
stored row, as before) runs a line per row, and fails this (the spec audit of December 5th made
that change, and no test failed)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

import pytest
import trio

from trioflow.adapters import MemoryAdapter


async def _adapter_with(finished_elsewhere: int) -> MemoryAdapter:
    """3 running instances of workflow "b", 2 completed ones of "b", and ``finished_elsewhere``
    completed instances of workflow "a"."""
    adapter = MemoryAdapter()
    await adapter.open()
    n = 0

    async def add(workflow: str, status: Any) -> None:
        nonlocal n
        n += 1
        iid = f"{workflow}-{n:06d}"
        await adapter.create(iid, workflow, "running", start=b"s", header=b"h")
        if status != "running":
            await adapter.checkpoint(iid, status, b"h2", [b"r"], first_seq=0)

    for _ in range(finished_elsewhere):
        await add("a", "completed")
    for status in ("running", "completed", "running", "completed", "running"):
        await add("b", status)
    return adapter


def _lines_run(call: Callable[[], Coroutine[Any, Any, Any]]) -> tuple[int, Any]:
    """The lines of Python that running ``call()`` to its end executes, and what it returns.
    (Its coroutine awaits nothing: the MemoryAdapter's lookups run in one go.)"""
    lines = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal lines
        if event == "line":
            lines += 1
        return tracer

    coro = call()
    sys.settrace(tracer)
    try:
        coro.send(None)
    except StopIteration as done:
        return lines, done.value
    finally:
        sys.settrace(None)
    raise AssertionError("the lookup awaited something")


LOOKUPS: dict[str, Callable[[MemoryAdapter], Callable[[], Coroutine[Any, Any, Any]]]] = {
    "by workflow and status": lambda a: lambda: a.list_instances("b", "running"),
    "by status": lambda a: lambda: a.list_instances(None, "running"),
    "by workflow": lambda a: lambda: a.list_instances("b"),
    "by workflow, a page": lambda a: lambda: a.list_instances("b", limit=2, newest_first=True),
    "what to resume": lambda a: lambda: a.resumable(),
    "due": lambda a: lambda: a.due(float("inf"), 10),
}


@pytest.mark.parametrize("lookup", list(LOOKUPS))
def test_a_lookup_does_the_same_work_beside_100_or_10_000_other_rows(lookup: str) -> None:
    few = trio.run(_adapter_with, 100)
    many = trio.run(_adapter_with, 10_000)
    work_few, found_few = _lines_run(LOOKUPS[lookup](few))
    work_many, found_many = _lines_run(LOOKUPS[lookup](many))
    assert [s.instance_id.split("-")[0] for s in found_few] == [s.instance_id.split("-")[0] for s in found_many]
    assert all(s.workflow_name == "b" for s in found_many)
    assert work_many <= work_few + 5, (
        f"{lookup}: {work_few} lines beside 100 other rows, {work_many} beside 10,000: it reads every row")


def test_the_lookups_find_what_they_ask_for() -> None:
    # (What the work above is spent on: the same answers a scan would give.)
    adapter = trio.run(_adapter_with, 50)

    def ids(call: Callable[[], Coroutine[Any, Any, Any]]) -> list[str]:
        return [s.instance_id for s in _lines_run(call)[1]]

    running = ["b-000051", "b-000053", "b-000055"]
    assert ids(LOOKUPS["by workflow and status"](adapter)) == running
    assert ids(LOOKUPS["by status"](adapter)) == running
    assert ids(LOOKUPS["by workflow"](adapter)) == [f"b-0000{n}" for n in range(51, 56)]
    assert ids(LOOKUPS["by workflow, a page"](adapter)) == ["b-000055", "b-000054"]
    assert ids(LOOKUPS["what to resume"](adapter)) == running
    assert ids(LOOKUPS["due"](adapter)) == []
