"""How parallel and map steps fail, worked out from an instance's state: the step a fan-out's
recorded failure names (:func:`failed_step_of`), and what the ends of children a parent waits on
do to the fan-outs around them before its run consumes their notices: whether one makes a
fail-fast parallel or map step fail, whose other children must then be cancelled at once.

The engine asks the latter of a parent taken up from storage, or queued for a ``max_running`` slot,
when a child's end notice is pending: such a parent runs at once, in its children's slots,
rather than wait for a slot behind its own family (see ``Engine._must_cancel_children``). The
ends are followed outward as the lanes would take them: a child's end ends its lane (a failure
no catch may take, or a completion at the lane's last step); a fan-out whose lanes have all
ended completes or fails, and that ends the lane it runs in, and so on. So a wait-all map
nested in a fail-fast parallel step, failed by its last child's end (a completion), fails the
parallel step too.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._decide import branch_keys, next_of, recorded_failure
from ._definition import (ChildStep, FailStep, MapStep, ParallelStep, PassStep, Step, SucceedStep,
                          WorkflowDefinition)
from ._lanes import (SEPARATOR, child_lane, enclosing_scope, ended_child, index_under, item_lanes, item_of,
                     item_scope, parallel_of)
from ._errors import ItemError, MapError, RecordedError
from ._map import branch_step, failed_items, tolerated
from ._snapshot import InstanceState, Lane, StepResult


def failed_step_of(
    state: InstanceState, lookup: Mapping[str, tuple[Step, str]], step: Step, key: str, lane: Lane | None,
    failed: StepResult | None = None,
) -> tuple[str, StepResult | None]:
    """The step a failure of ``step`` (in lane ``key``) recorded before a restart names, as the
    live failure did: a fail-fast parallel step (or a fail-fast map that tolerates no failure)
    fails as its branch (or item) that failed first did, at the step that branch failed at, and
    so on inward; with that step's failed record, found inward (``None``: ``step``'s own).
    ``lane``: ``None`` once it went (a map item's goes as the item ends, and the lanes inside it
    with it), ``step``'s own failed record then given as ``failed``."""
    found: StepResult | None = None
    while isinstance(step, (ParallelStep, MapStep)) and step.on_error == "fail-fast":
        scope = item_scope(key)
        if lane is None:
            first = None if failed is None else _first_failed_inside(state, step, scope, failed)
            if first is None:
                break
        else:
            if isinstance(step, ParallelStep):
                lanes = [state.lanes[k] for k in branch_keys(step, scope) if k in state.lanes]
                firsts = [branch.failed for branch in lanes if branch.failed is not None]
            elif lane.fanout is None or tolerated(step, lane.fanout.count) > 0:
                break
            else:  # (an item's lane goes once the item ends: its records tell)
                firsts = [record.seq for _, record in failed_items(state, step, lane, scope)]
            if not firsts:
                break
            first = state.records[min(firsts)]
        found = failed = first
        step = lookup[first.step_name][0]
        key, lane = first.lane, state.lanes.get(first.lane)
    return step.name, found


def item_failure(
    state: InstanceState, lookup: Mapping[str, tuple[Step, str]], step: MapStep, record: StepResult,
) -> tuple[str, RecordedError]:
    """A failed map item's failure as its records tell it after a restart (``record``: of the
    step of the map's branch it failed at): the step it names and its error, found inward as
    :func:`failed_step_of` finds a fan-out's (the item's lanes went as it ended)."""
    first, inner = failed_step_of(state, lookup, branch_step(step, record.step_name), record.lane,
                                  state.lanes.get(record.lane), record)
    return first, recorded_failure(record, lookup[first][0], state, raised_by=inner)


def map_failure(
    state: InstanceState, lookup: Mapping[str, tuple[Step, str]], step: MapStep, lane: Lane, scope: str,
    live: dict[int, tuple[str, BaseException]],
) -> MapError:
    """The error of a map execution whose items failed beyond what it tolerates: each failed
    item's step and error, the exception itself where this run saw it (``live``), else as
    recorded."""
    errors = []
    for index, record in failed_items(state, step, lane, scope):
        step_name, error = live.get(index) or item_failure(state, lookup, step, record)
        errors.append(ItemError(step.name, index, step_name, error))
    assert lane.fanout is not None
    count = lane.fanout.count
    return MapError(step.name, errors, count, tolerated(step, count))


def _first_failed_inside(state: InstanceState, step: ParallelStep | MapStep, scope: str,
                         failed: StepResult) -> StepResult | None:
    """For a fail-fast fan-out whose lanes went (with the map item it ran in), whose execution's
    failed record is ``failed``: the record of its branch's (item's) step it failed as, the
    first failed one of this execution, in one of its lanes, of the same error (siblings the
    fail-fast cut are recorded failed too, with another); ``None`` if none is found (nor for a
    map that tolerates failures: it fails with a MapError of its own)."""
    # This execution's records come after the record before it in the fan-out's own lane (the
    # step before it, a catch of an earlier execution's failure, a map's start record).
    begun = next((seq for seq in range(failed.seq - 1, -1, -1) if state.records[seq].lane == failed.lane), -1)
    if isinstance(step, ParallelStep):
        lanes = set(branch_keys(step, scope))

        def inside(lane: str) -> bool:
            return lane in lanes
    else:
        start = state.records[begun] if begun >= 0 else None
        if start is None or start.status != "started" or not isinstance(start.input, list) \
                or tolerated(step, len(start.input)) > 0:
            return None
        items = item_lanes(step.name, scope)

        def inside(lane: str) -> bool:
            return index_under(lane, items) is not None and SEPARATOR not in lane[len(items):]
    for seq in range(begun + 1, failed.seq):
        record = state.records[seq]
        if record.status == "failed" and inside(record.lane) and record.error_name == failed.error_name \
                and record.cause == failed.cause:
            return record
    return None


def lane_ends(definition: WorkflowDefinition, lane: Lane, badly: bool) -> bool | None:
    """How lane ``lane``, standing at a child step, goes once its child ends (``badly``: other
    than completed): ``True``, it fails; ``False``, it completes; ``None``, it goes on (where
    a catch may route the failure; a completion, see :func:`_after_completion`)."""
    found = None if lane.step is None else definition.lookup.get(lane.step)
    if found is None or not isinstance(found[0], ChildStep):
        return None
    if badly:
        return None if found[0].catch else True
    return _after_completion(definition, found[0])


def _after_completion(definition: WorkflowDefinition, step: Step) -> bool | None:
    """How the lane of ``step``, which just completed, goes: ``False``, it completes (``step``
    is its last, or only pass steps that run no code lead to a succeed step or to its end);
    ``True``, it fails (they lead to a fail step); ``None``, it goes on to something that may
    run, wait or route otherwise."""
    seen: set[str] = set()
    while (following := next_of(step)) is not None and following not in seen:
        seen.add(following)
        found = definition.lookup.get(following)
        if found is None:
            return None
        step = found[0]
        if isinstance(step, SucceedStep):
            return False
        if isinstance(step, FailStep):
            return True
        if not (isinstance(step, PassStep) and step.transform is None):
            return None
    return False if following is None else None


def completion_changes_nothing(definition: WorkflowDefinition, state: InstanceState, notice: str) -> bool:
    """Whether the completion a child's end ``notice`` tells cannot make a fail-fast fan-out of
    its parent fail, given that the parent's other pending child ends were found to fail
    nothing fast: its lane goes on, or it ends an item of a map with more items yet to end than
    end notices pending (the map cannot end yet). A cheap look (no walk of every lane's key)
    for a queued parent of thousands of children, asked at each of their completions."""
    child = ended_child(notice)
    key = None if child is None else child_lane(state.instance_id, child, state.runs)
    lane = None if key is None else state.lanes.get(key)
    if key is None or lane is None:
        return False
    how = lane_ends(definition, lane, False)
    if how is None:
        return True
    item = item_of(key)
    if how or item is None:
        return False
    name, scope = item[0], enclosing_scope(key)
    for owner, running in state.lanes.items():
        progress = running.fanout
        if running.step == name and progress is not None and item_scope(owner) == scope:
            return progress.count - progress.ended_count > len(state.signals)
    return False


def fails_a_fail_fast_fanout(definition: WorkflowDefinition, state: InstanceState, ends: Mapping[str, bool]) -> bool:
    """Whether the lanes ``ends`` names ending (``True``: failed, ``False``: completed; see
    :func:`lane_ends`) make a fail-fast parallel or map step fail: a fail-fast parallel step
    that a branch fails, a fail-fast map that more items fail than it tolerates, counting those
    that fail as the fan-outs inside them fail in turn. Each fan-out is counted once per lane
    that ends in it from inside (not once per ended lane): linear in the ends."""
    ended = dict(ends)
    owners = {(lane.step, item_scope(key)): key for key, lane in state.lanes.items() if lane.step is not None}
    # The ends, by the lane that runs the fan-out they end in: (its step, {lane: failed}).
    around: dict[str, tuple[ParallelStep | MapStep, dict[str, bool]]] = {}

    def place(key: str) -> str | None:
        found = _fanout_around(definition, owners, key)
        if found is None:
            return None
        step, owner = found
        around.setdefault(owner, (step, {}))[1][key] = ended[key]
        return owner

    todo = {owner for key in ends if (owner := place(key)) is not None}
    while todo:
        owner = todo.pop()
        step, inner = around[owner]
        left, failures, allowed = _count(state, step, owner, inner)
        if step.on_error == "fail-fast" and failures > allowed and any(inner.values()):
            return True
        if left or owner in ended:
            continue
        # It ends: failed (unless a catch of it may route on), or completed, and its lane
        # goes as what follows it says.
        how = (None if step.catch else True) if failures > allowed else _after_completion(definition, step)
        if how is None:
            continue  # its lane goes on
        ended[owner] = how
        if (outer := place(owner)) is not None:
            todo.add(outer)
    return False


def _fanout_around(
    definition: WorkflowDefinition, owners: Mapping[tuple[str, str], str], key: str,
) -> tuple[ParallelStep | MapStep, str] | None:
    """The parallel or map step lane ``key`` runs for, and the key of the lane that runs it
    (``owners``: lane keys by the step they stand at and their scope), or ``None`` (the main
    line, or a fan-out not found as stored)."""
    item = item_of(key)
    if item is not None:
        name, scope = item[0], enclosing_scope(key)
    else:
        parallel = parallel_of(key)
        if parallel is None:
            return None
        name, scope = parallel, item_scope(key)
    found = definition.lookup.get(name)
    owner = owners.get((name, scope))
    if found is None or not isinstance(found[0], (ParallelStep, MapStep)) or owner is None or owner == key:
        return None
    return found[0], owner


def _count(
    state: InstanceState, step: ParallelStep | MapStep, owner: str, ended: Mapping[str, bool],
) -> tuple[bool, int, int]:
    """For the fan-out ``step`` that lane ``owner`` runs, with the lanes ``ended`` names (its
    own) ended too: whether any of its lanes has yet to end, how many failed, and how many it
    tolerates."""
    scope = item_scope(owner)
    if isinstance(step, ParallelStep):
        left, failures = False, 0
        for key in branch_keys(step, scope):
            lane = state.lanes.get(key)
            if key in ended:
                failures += ended[key]
            elif lane is None or (lane.failed is None and lane.step is not None):
                left = True
            else:
                failures += lane.failed is not None
        return left, failures, 0
    progress = state.lanes[owner].fanout
    if progress is None:  # (its items not started yet)
        return True, 0, 0
    more = [failed for key, failed in ended.items()
            if (found := item_of(key)) is not None and not progress.has_ended(found[1])]
    return (progress.ended_count + len(more) < progress.count, progress.failed + sum(more),
            tolerated(step, progress.count))
