"""The lanes part of an instance's header (see ``trioflow._codec.encode_header``): how each lane
is written, and, for an instance with many lanes in flight, the entries kept from one
checkpoint to the next, so that a checkpoint encodes again only the lanes that changed.

A wide fan-out (a parallel step of a thousand branches, a map of thousands of items in flight)
checkpoints once for each branch or item step that ends, and its header holds every lane still
in flight: written out anew each time, the header cost a walk over all of them per checkpoint,
a cost per branch growing with the branches. Its lanes are :class:`~trioflow._snapshot.TrackedLane`
objects that note each change, so the kept entries stay those a walk over every lane would
write; the main line (a plain ``Lane``) and the lanes holding a map's progress (changed in place)
are encoded every time, and there are few of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgpack

from ._lanes import MAIN, item_lanes, item_prefix, item_scope
from ._snapshot import ChildWait, InstanceState, Lane, StepResult
from ._values import to_ext

#: From this many lanes, a header's lane entries are kept between checkpoints (below it, a walk
#: over the lanes costs less than the bookkeeping).
WIDE = 32
#: When set (the test suite sets it), every header written from kept entries is checked against
#: the walk over every lane: a change to a lane that went unnoted fails loudly.
CHECK_KEPT = False

#: Packs as ``trioflow._codec``'s packer does (lane entries hold plain values only).
_pack = msgpack.Packer(use_bin_type=True, datetime=False, default=to_ext).pack
_map_header = msgpack.Packer(use_bin_type=True).pack_map_header

#: A step -> what the item lane keys of each running map whose branch starts there begin with.
Firsts = dict[str | None, set[str]]
#: The lanes listed in full (key -> entry), and those named by their last record's seq,
#: grouped by the step they stand at (``None`` if there are none).
Written = tuple[dict[str, tuple[Any, ...]], dict[str | None, list[int]] | None]


def written_lanes(lanes: Iterable[tuple[str, Lane]], records: list[StepResult] | tuple[()], compact: bool) -> Written:
    """How the header holds ``lanes`` (key and lane, a running map's lane before its items').

    A map's items that stand untouched at its branch's first step are left out: the decoder
    puts them back from the map's position (``MapProgress.first``). A branch's or item's lane
    standing just after its last record (a plain move on, no wait, no failure) is named by that
    record's seq, grouped by the step it stands at: thousands in a wide fan-out would otherwise
    be written out in full with each one's end (see ``trioflow._codec._put_back_moved_on``).
    Not in a header that is not ``compact`` (an ended instance's: its last header lists every
    lane, so that the release before that field, which refuses a header holding it, still shows
    a finished instance after a rollback). Every other lane is listed in full."""
    listed: dict[str, tuple[Any, ...]] = {}
    moved_on: dict[str | None, list[int]] | None = None
    firsts: Firsts | None = None
    # (One loop with the rules inline: it runs at every checkpoint, over every lane of most.)
    for key, lane in lanes:
        if lane.begun is not None:
            f = lane.fanout
            if f is not None and f.first is not None and lane.step is not None:
                firsts = _add_first(firsts, key, lane)
            waiting: dict[str, Any] | int | None = lane.waiting
            if type(waiting) is ChildWait:
                waiting = waiting.word  # (the start record, at ``begun``, holds the rest)
            listed[key] = (lane.step, lane.last, lane.failed, waiting, lane.begun,
                           None if f is None else (f.count, f.started, f.ended, f.ended_count, f.failed, f.first))
        elif lane.waiting is not None:
            listed[key] = (lane.step, lane.last, lane.failed, lane.waiting)
        elif lane.last is None:
            if (firsts is not None and lane.failed is None
                    and (items := firsts.get(lane.step)) is not None and item_prefix(key) in items):
                continue
            listed[key] = (lane.step, None, lane.failed)
        elif compact and key and lane.failed is None and records[lane.last].lane == key:
            if moved_on is None:
                moved_on = {lane.step: [lane.last]}
            elif (group := moved_on.get(lane.step)) is None:
                moved_on[lane.step] = [lane.last]
            else:
                group.append(lane.last)
        else:
            listed[key] = (lane.step, lane.last, lane.failed)
    return listed, moved_on


def _add_first(firsts: Firsts | None, key: str, lane: Lane) -> Firsts:
    """``firsts`` with what the lane ``key`` of a running map whose branch's first step is
    named adds: its untouched items are left out of the header."""
    assert lane.fanout is not None
    firsts = {} if firsts is None else firsts
    firsts.setdefault(lane.fanout.first, set()).add(item_lanes(lane.step or "", item_scope(key)))
    return firsts


def _firsts(lanes: dict[str, Lane], keys: Iterable[str]) -> Firsts | None:
    firsts = None
    for key in keys:
        lane = lanes[key]
        if lane.fanout is not None and lane.fanout.first is not None and lane.step is not None:
            firsts = _add_first(firsts, key, lane)
    return firsts


class KeptLanes:
    """A wide instance's header lane entries as last written (see the module's docstring):
    those listed in full packed (key and entry), those named by seq grouped by step, the keys
    of those left out, of those whose entry is written every time (the main line's, and those
    holding a map's progress, which changes in place), and what the running maps' first steps
    were."""

    __slots__ = ("of", "packed", "moved", "moved_step", "left_out", "parents", "firsts")

    def __init__(self, state: InstanceState) -> None:
        lanes = state.lanes
        self.of = lanes  # (a state given new lanes wholesale builds anew)
        self.packed: dict[str, bytes] = {}
        self.moved: dict[str | None, dict[str, int]] = {}
        self.moved_step: dict[str, str | None] = {}
        self.left_out: set[str] = set()
        # (An ordered set: the main line's first, where a walk over every lane has it.)
        self.parents: dict[str, None] = dict.fromkeys(
            [MAIN] if MAIN in lanes else [], None) | {key: None for key, lane in lanes.items() if lane.begun is not None}
        self.firsts = _firsts(lanes, self.parents)
        self._take([*((key, lanes[key]) for key in self.parents),
                    *((key, lane) for key, lane in lanes.items() if key not in self.parents)], state.records)
        if state.lane_notes:
            state.lane_notes.clear()

    def update(self, state: InstanceState) -> bool:
        """Bring the entries up to date with ``state``'s lanes; ``False`` if they must be built
        anew (a running map began or ended, which changes which items are left out; or the
        count of lanes is off: a lane added or dropped unnoted)."""
        lanes, notes, parents = state.lanes, state.lane_notes or (), self.parents
        for key in notes:
            lane = lanes.get(key)
            if lane is not None and lane.begun is not None:
                parents[key] = None
            elif key != MAIN:
                parents.pop(key, None)
        if not parents.keys() <= lanes.keys() or _firsts(lanes, parents) != self.firsts:
            return False
        batch = [(key, lanes[key]) for key in parents]  # (first: the maps before their items)
        for key in notes:
            if key not in parents:
                lane = lanes.get(key)
                if lane is None:
                    self._forget(key)
                else:
                    batch.append((key, lane))
        self._take(batch, state.records)
        if len(self.packed) + len(self.moved_step) + len(self.left_out) != len(lanes):
            return False
        if isinstance(notes, set):
            notes.clear()
        return True

    def _take(self, batch: list[tuple[str, Lane]], records: list[StepResult] | tuple[()]) -> None:
        """Keep the entries of the lanes in ``batch`` (the running maps' before their items')."""
        listed, _ = written_lanes(batch, records, True)
        packed, moved, moved_step = self.packed, self.moved, self.moved_step
        for key, lane in batch:
            entry = listed.get(key)
            if entry is not None:
                if key not in packed:
                    self._forget(key)
                # (Updated in place, a key keeps its place: the main line's stays first.)
                packed[key] = _pack((key, entry))[1:]  # (the pair without its array's header)
            elif lane.last is None:  # (left out: an untouched item)
                self._forget(key)
                self.left_out.add(key)
            else:  # (named by its last record)
                step = lane.step
                if moved_step.get(key, _NOWHERE) != step:
                    self._forget(key)
                group = moved.get(step)
                if group is None:
                    group = moved[step] = {}
                group[key] = lane.last
                moved_step[key] = step

    def _forget(self, key: str) -> None:
        self.packed.pop(key, None)
        self.left_out.discard(key)
        if key in self.moved_step:
            step = self.moved_step.pop(key)
            group = self.moved[step]
            del group[key]
            if not group:
                del self.moved[step]

    def written(self) -> tuple[bytes, dict[str | None, list[int]] | None]:
        """The lanes listed in full as a packed map, and those named by seq."""
        packed = self.packed
        lanes = b"".join((_map_header(len(packed)), *packed.values()))
        return lanes, {step: list(group.values()) for step, group in self.moved.items()} or None


#: Not a step name (``None`` is one: a lane that ended).
_NOWHERE = object()


def kept_lanes(state: InstanceState) -> KeptLanes:
    """``state``'s kept header lane entries, brought up to date (built on first use)."""
    kept = state.header_lanes
    if not (isinstance(kept, KeptLanes) and kept.of is state.lanes and kept.update(state)):
        kept = state.header_lanes = KeptLanes(state)
    return kept


def check_kept(state: InstanceState, lanes: dict[str, Any], moved_on: dict[Any, list[int]] | None) -> None:
    """Fail unless ``lanes`` and ``moved_on`` (read back from a header written from kept entries)
    are what a walk over every lane writes (:data:`CHECK_KEPT`)."""
    walked, walked_moved = written_lanes(state.lanes.items(), state.records, True)
    expected = msgpack.unpackb(_pack(walked), strict_map_key=False)
    same_moved = ({step: sorted(seqs) for step, seqs in (moved_on or {}).items()}
                  == {step: sorted(seqs) for step, seqs in (walked_moved or {}).items()})
    if lanes != expected or not same_moved:
        raise AssertionError(
            f"instance {state.instance_id!r}: the header's kept lanes {lanes!r} / {moved_on!r} are not"
            f" those of its lanes, {expected!r} / {walked_moved!r}")
