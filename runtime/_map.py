"""The map step's decisions, as plain functions over an :class:`InstanceState` (see ``_decide``).

A map execution is stored as a *start record* (status ``started``, its input the list of items,
appended before any item runs) and, once every item has ended, the execution's record proper,
which shares its id. Each item runs the map's branch in a lane of its own
(:func:`trioflow._lanes.item_lane`) whose step executions are records like any other; its lane
leaves the header once the item has ended, and the lane's :class:`MapProgress` says which
items have, so the header stays small however many items there are.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from ._decide import new_execution
from ._definition import MapStep, ParallelStep, Step
from ._errors import InvalidItemsError
from ._context import ItemPlace
from ._lanes import enclosing_scope, item_lane, item_lanes, item_of, item_scope, within
from ._snapshot import InstanceState, Lane, MapProgress, StepResult, drop_lane, new_lane


def items_list(step: MapStep, items: Any) -> list[Any]:
    """``items(ctx)``'s result as the list of items, or :class:`InvalidItemsError`."""
    if isinstance(items, (list, tuple)):
        return list(items)
    raise InvalidItemsError(
        f"map step {step.name!r}: items(ctx) must give a list or tuple of items, got {type(items).__name__}")


def start_record(state: InstanceState, lane_key: str, step: MapStep, items: list[Any], now: float) -> StepResult:
    """The record of a map execution's start, holding its items (not added yet: the actor
    first encodes it, and items that cannot be stored fail the step)."""
    return new_execution(state, lane_key, step.name, "started", input=items, started_at=now, now=now)


def open_items(state: InstanceState, step: MapStep, lane: Lane, start: StepResult) -> MapProgress:
    """Add a map execution's start record and put the lane's map progress at its first item."""
    state.add(start)
    lane.begun = start.seq
    progress = lane.fanout = MapProgress(count=len(start.input), first=step.branch.steps[0].name)
    return progress


def items_of(state: InstanceState, lane: Lane) -> list[Any]:
    """The items of the map execution ``lane`` runs, from its start record."""
    assert lane.begun is not None
    items: list[Any] = state.records[lane.begun].input
    return items


def running_items(state: InstanceState, step: MapStep, scope: str) -> list[tuple[int, str]]:
    """``(index, lane key)`` of the items of ``step`` (running in a lane of ``scope``) that
    have a lane (a resume finds them), in index order."""
    prefix = item_lanes(step.name, scope)
    found = []
    for key in state.lanes:
        if key.startswith(prefix):
            item = item_of(key)
            if item is not None and item[0] == step.name:
                found.append((item[1], key))
    return sorted(found)


def start_item(state: InstanceState, step: MapStep, progress: MapProgress, scope: str) -> tuple[int, str]:
    """Give the next item its lane: ``(index, lane key)``."""
    index = progress.started
    progress.started += 1
    key = item_lane(step.name, index, scope)
    state.lanes[key] = new_lane(state, key, step.branch.steps[0].name)
    return index, key


def item_ended(state: InstanceState, step: MapStep, progress: MapProgress, index: int, key: str, *,
               failed: bool) -> None:
    """An item's lane is done (``failed``: with a step that failed for good): it leaves the
    header, and the progress counts it. So do the lanes a fan-out in it left (the branches of a
    parallel step that failed in it, the items an inner map cancelled): nothing runs them now,
    and left standing they would keep the instance from waiting out of memory."""
    if key in state.lanes:
        drop_lane(state, key)
    if failed and _fans_out(step):  # (an item that completed left none: its fan-outs completed)
        inside = within(key)
        for nested in [k for k in state.lanes if k.startswith(inside)]:
            drop_lane(state, nested)
    if not progress.has_ended(index):
        progress.end(index)
        if failed:
            progress.failed += 1


def _fans_out(step: MapStep) -> bool:
    """Whether the map's branch holds a parallel or map step (its items may open lanes)."""
    return any(isinstance(s, (MapStep, ParallelStep)) for s in step.branch.steps)


def item_finished(lane: Lane) -> bool | None:
    """What a resume makes of an item's stored lane: ``False`` if it completed before the
    restart, ``True`` if a step failed it for good, ``None`` if it must run on."""
    if lane.failed is not None:
        return True
    return False if lane.step is None else None


def final_records(state: InstanceState, step: MapStep, lane: Lane, scope: str) -> dict[int, StepResult]:
    """The newest record of each item of the map execution ``lane`` (of ``scope``) runs."""
    assert lane.begun is not None
    last: dict[int, StepResult] = {}
    prefix = item_lanes(step.name, scope)
    for record in state.records[lane.begun + 1:]:
        if record.lane.startswith(prefix):
            item = item_of(record.lane)
            if item is not None and item[0] == step.name:
                last[item[1]] = record
    return last


def map_output(state: InstanceState, step: MapStep, lane: Lane, scope: str) -> list[Any]:
    """The items' outputs in item order; a (tolerated) failed item's slot holds its error as
    ``{"error": name, "cause": message}``."""
    last = final_records(state, step, lane, scope)
    out: list[Any] = []
    assert lane.fanout is not None
    for index in range(lane.fanout.count):
        record = last.get(index)
        if record is None:
            out.append(None)
        elif record.status == "failed":
            out.append({"error": record.error_name, "cause": record.cause})
        else:
            out.append(record.output)
    return out


def failed_items(state: InstanceState, step: MapStep, lane: Lane, scope: str) -> list[tuple[int, StepResult]]:
    """The items of the map execution ``lane`` runs that failed for good, with the record of
    the step they failed at, in index order. Items a fail-fast cancelled are not among them:
    their newest record is of a step cancelled while running, but they did not fail (nor end)."""
    progress = lane.fanout
    assert progress is not None
    return [(index, record) for index, record in sorted(final_records(state, step, lane, scope).items())
            if record.status == "failed" and progress.has_ended(index)]


def tolerated(step: MapStep, count: int) -> int:
    """How many of ``count`` items ``step`` lets fail: a count as it is; a fraction, the most
    failures ``f`` with ``f / count <= fraction``, so a fraction tolerates what it says as
    written (``0.29`` of 100 items is 29, though ``0.29 * 100`` is ``28.999...``; ``k / n`` of
    ``n`` items is ``k``)."""
    allowed = step.tolerated_failures
    if not isinstance(allowed, float):
        return allowed
    if count <= 0:
        return 0
    # The product is within a rounding of the answer: step to it, and past none too many.
    most = min(count, int(allowed * count))
    while most < count and (most + 1) / count <= allowed:
        most += 1
    while most > 0 and most / count > allowed:
        most -= 1
    return most


def branch_step(step: MapStep, name: str) -> Step:
    """The step of a map's branch named ``name`` (what each item runs)."""
    return step.branch.steps[step.branch.index[name]]


class ItemIndex:
    """Finds the item a record of a map item ran for (``ctx.item`` while compensating) in one
    pass over the records, however many are asked about."""

    def __init__(self, records: Sequence[StepResult]) -> None:
        self._records = records
        #: Seqs of the start records by (scope, map step): one map's executions in one scope,
        #: which run one after another (a step runs in one lane of its scope at a time).
        self._starts: dict[tuple[str, str], list[int]] | None = None

    def item(self, record: StepResult) -> ItemPlace | None:
        """Where a record of a map item (of its lane, or of a lane inside it) ran (see
        :data:`trioflow._context.ItemPlace`), else ``None``."""
        scope = item_scope(record.lane)
        found = item_of(scope)
        if found is None:
            return None
        if self._starts is None:
            self._starts = {}
            for r in self._records:
                if r.status == "started":
                    self._starts.setdefault((item_scope(r.lane), r.step_name), []).append(r.seq)
        name, index = found
        seqs = self._starts.get((enclosing_scope(scope), name), [])
        at = bisect.bisect_left(seqs, record.seq) - 1
        if at < 0:
            return None
        items = self._records[seqs[at]].input
        return (index, items[index], seqs[at]) if isinstance(items, list) and index < len(items) else None
