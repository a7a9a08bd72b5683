"""Running a map step: each item runs the map's branch as an actor in the step's nursery."""

from __future__ import annotations

import inspect
from typing import Any

import trio

from trioflow._context import WorkflowContext
from trioflow._current import swap_lane
from trioflow._definition import MapStep
from trioflow._escapes import failure_of, raise_keeping_context
from trioflow._errors import ItemError, UnencodableValueError
from trioflow._decide import inner_lanes
from trioflow._fanout_failures import item_failure, map_failure
from trioflow._lanes import item_scope
from trioflow._map import (
    failed_items,
    item_ended,
    item_finished,
    items_list,
    items_of,
    map_output,
    open_items,
    running_items,
    start_item,
    start_record,
    tolerated,
)
from trioflow._snapshot import MapProgress

from . import _lane
from ._child import bound_child_stores, cancel_children, waited_on
from ._run import Run, StepFailure, unwrapped
from ._wait import settle


async def run_map(run: Run, step: MapStep, lane_key: str, ctx: WorkflowContext) -> list[Any]:
    """Store the items, then run them (at most ``max_concurrency`` at once); returns their
    outputs in item order, or raises :class:`StepFailure` when more fail than are tolerated.

    A resumed map step runs only the items that had not ended: those with a lane go on from
    where their lane stands, the others start in index order after the last one started.
    """
    state = run.state
    lane = state.lanes[lane_key]
    scope = item_scope(lane_key)  # (the items of a map in a map item are that item's)
    progress = lane.fanout
    if progress is None:
        try:
            items = step.items(ctx)
            if inspect.isawaitable(items):  # an async def: its items come once awaited
                items = await items
            items = items_list(step, items)
            run.check_value(items, f"items of map step {step.name!r}")
        except BaseException as exc:
            raise StepFailure(step.name, failure_of(exc), 1) from exc
        start = start_record(state, lane_key, step, items, run.clock())
        try:
            start = run.stage(start)
        except UnencodableValueError as exc:
            raise StepFailure(step.name, exc, 1) from exc
        progress = open_items(state, step, lane, start)
        await run.persist()  # the items are stored before any item runs
    fanout = _Items(run, step, lane_key, progress, ctx._fanouts)
    resumed = []
    for index, key in running_items(state, step, scope):
        finished = item_finished(state.lanes[key])
        if finished is None:
            resumed.append((index, key))
        else:  # ended before the restart, its progress event sent then: counted, not run again
            item_ended(state, step, progress, index, key, failed=finished)
    limit = step.max_concurrency or max(progress.count, 1)
    fanout.slots = trio.Semaphore(max(0, limit - len(resumed)))
    escaped: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            if step.on_error == "fail-fast":
                fanout.cancel = nursery.cancel_scope
                fanout.fanouts = (*fanout.fanouts, nursery.cancel_scope)
                if fanout.over():  # failed too often before the restart: what runs on is cancelled
                    run.fail_fast(nursery.cancel_scope)
                    bound_child_stores(run, nursery.cancel_scope)
            items = items_of(state, lane)
            for index, key in resumed:
                run.lane_runs()  # (counted now, not as it starts: see trioflow.actors._wait.settle)
                nursery.start_soon(fanout.item_actor, index, key, items[index])
            while progress.started < progress.count and not fanout.over():
                try:
                    # Free slots are taken without a trip through the scheduler per item.
                    fanout.slots.acquire_nowait()
                except trio.WouldBlock:
                    await fanout.slots.acquire()
                index, key = start_item(state, step, progress, scope)
                run.lane_runs()
                nursery.start_soon(fanout.item_actor, index, key, items[index])
    except BaseExceptionGroup as group:
        escaped = unwrapped(group)
    if escaped is not None:
        raise_keeping_context(escaped)  # (out here, not in the handler, and as it was raised)
    if progress.failed > fanout.tolerated:
        # Items a fail-fast cancelled may wait on children: those go too.
        await cancel_children(run, waited_on(state.lanes[k] for k in inner_lanes(state, step, scope)))
        raise fanout.failure()
    return map_output(state, step, lane, scope)


class _Items:
    """What the item actors of one map execution share."""

    __slots__ = ("run", "step", "key", "lane", "scope", "progress", "tolerated", "slots", "cancel", "live", "fanouts")

    def __init__(self, run: Run, step: MapStep, key: str, progress: MapProgress, fanouts: tuple[object, ...]) -> None:
        self.run = run
        self.step = step
        #: The lane running the map, and its scope (its items' keys start with it).
        self.key = key
        self.lane = run.state.lanes[key]
        self.scope = item_scope(key)
        self.progress = progress
        self.tolerated = tolerated(step, progress.count)
        self.slots = trio.Semaphore(0)
        #: The nursery's scope under ``fail-fast``: cancelled once one failure too many is in.
        self.cancel: trio.CancelScope | None = None
        #: The errors this run saw items fail with, by index (others are known as recorded).
        self.live: dict[int, tuple[str, BaseException]] = {}
        #: The fail-fast fan-outs the items run in (see ``WorkflowContext._fanouts``).
        self.fanouts = fanouts

    def over(self) -> bool:
        """Whether a fail-fast map has had more failures than it tolerates."""
        return self.cancel is not None and self.progress.failed > self.tolerated

    async def item_actor(self, index: int, key: str, item: Any) -> None:
        run, step = self.run, self.step
        assert self.lane.begun is not None  # the map execution's start record
        ctx = run.context(key, len(step.branch.steps), (index, item, self.lane.begun))
        ctx._fanouts = self.fanouts
        swap_lane(ctx)  # the item's steps report its lane
        failed = False
        try:
            await _lane.run_lane(run, key, step.branch.index, ctx)
        except StepFailure as failure:
            failed = True
            self.live[index] = (failure.step_name, failure.error)
        except BaseException as exc:
            run.note_escaping(exc)
            raise
        finally:
            swap_lane(None)
            self.slots.release()
            run.active -= 1
        progress = self.progress
        item_ended(run.state, step, progress, index, key, failed=failed)
        over = self.over()
        if over:
            assert self.cancel is not None
            run.fail_fast(self.cancel)
            bound_child_stores(run, self.cancel)  # (an item storing a child: see trioflow.actors._child)
        if run.bus.active:
            run.emit("workflow.map.progress", self.key, step_name=step.name, done=progress.ended_count, total=progress.count,
                     failed=progress.failed)
        if not over and progress.ended_count < progress.started:
            await settle(run, None)  # the other items running may all rest

    def failure(self) -> StepFailure:
        """The map's failure. Fail-fast with nothing tolerated fails as its first failed item
        did (as a fail-fast parallel step fails as its branch did); otherwise with a
        :class:`MapError` naming every failed item."""
        step, state, lane = self.step, self.run.state, self.lane
        if self.cancel is not None and self.tolerated == 0:
            if self.live:
                index = next(iter(self.live))  # the first to fail (others may have in the same pass)
                step_name, error = self.live[index]
            else:  # it failed before a restart
                index, record = min(failed_items(state, step, lane, self.scope), key=lambda r: r[1].seq)
                step_name, error = item_failure(state, self.run.definition.lookup, step, record)
            return StepFailure(step_name, ItemError(step.name, index, step_name, error), 1)
        return StepFailure(step.name, map_failure(state, self.run.definition.lookup, step, lane, self.scope,
                                                  self.live), 1)
