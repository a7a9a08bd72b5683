"""The lanes part of an instance's header (see ``trioflow._codec.encode_header``): how each lane
is written, and, for an instance with many lanes in flight, the entries kept from one
checkpoint to the next, so that a checkpoint encodes again only the lanes that changed.

A wide fan-out (a parallel step of a thousand branches, a map of thousands of items in flight)
checkpoints once for each branch or item step that ends, and its header holds every lane still
in flight: written out anew each time, the header cost a walk over all of them per checkpoint,
a cost per branch growing with the branches. Its lanes are :class:`~trioflow._snapshot.TrackedLane`
objects that note each change (and so does a map's position kept in one, through its
``owner``), so the kept entries stay those a walk over every lane would write, in the same
order; the main line, a plain ``Lane``, is encoded every time. A checkpoint in which most
lanes changed (see :data:`BUSY`) is written out anew instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgpack

from ._lanes import MAIN, SEPARATOR, fanout_place, item_lanes, item_of, item_prefix, item_scope
from ._parallel import branch_place, layout
from ._snapshot import ChildWait, InstanceState, Lane, StepResult
from ._values import to_ext

#: From this many lanes, a header's lane entries are kept between checkpoints (below it, a walk
#: over the lanes costs less than the bookkeeping).
WIDE = 32
#: A checkpoint in which more than this share of the lanes changed (all items ending together,
#: say) writes the header out anew, as below ``WIDE``, and the entries are built again at the
#: next quieter one: packed one by one, entries cost some five times what packing every lane
#: in one go costs.
BUSY = 0.25
#: When set (the test suite sets it), every header written from kept entries is checked against
#: the walk over every lane: a change to a lane that went unnoted fails loudly.
CHECK_KEPT = False

#: Packs as ``trioflow._codec``'s packer does (lane entries hold plain values only).
_pack = msgpack.Packer(use_bin_type=True, datetime=False, default=to_ext).pack
_map_header = msgpack.Packer(use_bin_type=True).pack_map_header

#: A step -> what the item lane keys of each running map whose branch starts there begin with.
Firsts = dict[str | None, set[str]]
#: The running parallel steps that stored a start record (see ``trioflow._parallel``), by the
#: place their branch lanes' keys give: the record's seq, each branch's first step by name, and
#: where each branch step that goes one way sends its lane.
Running = tuple[int, dict[str, str], Mapping[str, str | None]]
Parallels = dict[str, Running]
#: The lanes listed in full (key -> entry); those named by their last record's seq, grouped by
#: the step they stand at (``None`` if there are none); the keys of the item lanes left out as
#: standing where their last record sends them, and of the branch lanes left out (each ``None``
#: if there are none).
Written = tuple[dict[str, tuple[Any, ...]], dict[str | None, list[int]] | None, set[str] | None, set[str] | None]


def written_lanes(
    lanes: Iterable[tuple[str, Lane]], records: list[StepResult] | tuple[()], compact: bool,
    firsts: Firsts | None = None, item_next: Mapping[str, str | None] | None = None,
    parallels: Parallels | None = None,
) -> Written:
    """How the header holds ``lanes`` (key and lane, a running map's lane before its items';
    or, ``firsts`` given, the running maps' first steps, from wherever their lanes are).

    A map's items that stand untouched at its branch's first step are left out: the decoder
    puts them back from the map's position (``MapProgress.first``). So are those that stand
    where the completed execution their last record holds sends them, by ``item_next`` (the
    definition's :attr:`~trioflow.WorkflowDefinition.item_next`, which the header then holds):
    the decoder puts each back after its newest record, and a map with thousands of items in
    flight keeps a header that does not grow with them. Any other branch's or item's lane
    standing just after its last record (a plain move on, no wait, no failure) is named by that
    record's seq, grouped by the step it stands at (see ``trioflow._codec._put_back_moved_on``).
    A parallel step that stored a start record (``parallels``, or found in ``lanes`` when not
    given) has its branches left out where they stand untouched at their first step or where
    their newest record sends them: the decoder puts them back from that record (see
    ``trioflow._codec._put_back_branches``). Not in a header that is not ``compact`` (an ended instance's: its last header lists every
    lane, so that the release before that field, which refuses a header holding it, still shows
    a finished instance after a rollback). Every other lane is listed in full."""
    listed: dict[str, tuple[Any, ...]] = {}
    moved_on: dict[str | None, list[int]] | None = None
    derived: set[str] | None = None
    branches_out: set[str] | None = None
    walked = firsts is None
    walked_parallels = parallels is None
    # (One loop with the rules inline: it runs at every checkpoint, over every lane of most.)
    for key, lane in lanes:
        if lane.begun is not None:
            f = lane.fanout
            if walked and f is not None and f.first is not None and lane.step is not None:
                firsts = _add_first(firsts, key, lane)
            elif walked_parallels and compact and f is None and (found := parallel_of(lane, records)) is not None:
                if parallels is None:
                    parallels = {}
                parallels[found[0]] = found[1]
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
            if parallels is not None and compact and lane.failed is None \
                    and (p := parallels.get(fanout_place(key))) is not None \
                    and p[1].get(key.rpartition(SEPARATOR)[2], _NOWHERE) == lane.step:
                if branches_out is None:
                    branches_out = set()
                branches_out.add(key)
                continue
            listed[key] = (lane.step, None, lane.failed)
        elif compact and key and lane.failed is None and (last := records[lane.last]).lane == key:
            if item_next is not None and firsts is not None and last.status == "completed" \
                    and item_next.get(last.step_name, _NOWHERE) == lane.step and _in_running_map(key, firsts):
                if derived is None:
                    derived = set()
                derived.add(key)
                continue
            if parallels is not None and last.status == "completed" \
                    and (p := parallels.get(fanout_place(key))) is not None and last.seq > p[0] \
                    and p[2].get(last.step_name, _NOWHERE) == lane.step:
                if branches_out is None:
                    branches_out = set()
                branches_out.add(key)
                continue
            if moved_on is None:
                moved_on = {lane.step: [lane.last]}
            elif (group := moved_on.get(lane.step)) is None:
                moved_on[lane.step] = [lane.last]
            else:
                group.append(lane.last)
        else:
            listed[key] = (lane.step, lane.last, lane.failed)
    return listed, moved_on, derived, branches_out


def parallel_of(lane: Lane, records: list[StepResult] | tuple[()]) -> tuple[str, Running] | None:
    """The place and layout (see :data:`Parallels`) of the parallel step ``lane`` runs, if it
    stored a start record; else ``None`` (a lane at a map or child step, or at none)."""
    if lane.begun is None or lane.step is None or lane.fanout is not None:
        return None
    start = records[lane.begun]
    found = layout(start) if start.step_name == lane.step else None
    if found is None:
        return None
    return branch_place(start), (start.seq, dict(found[0]), found[1])


def _in_running_map(key: str, firsts: Firsts) -> bool:
    """Whether ``key`` is the lane of an item of a running map (one ``firsts`` holds)."""
    if item_of(key) is None:
        return False
    prefix = item_prefix(key)
    return any(prefix in prefixes for prefixes in firsts.values())


def _add_first(firsts: Firsts | None, key: str, lane: Lane) -> Firsts:
    """``firsts`` with what the lane ``key`` of a running map whose branch's first step is
    named adds: its untouched items are left out of the header."""
    assert lane.fanout is not None
    firsts = {} if firsts is None else firsts
    firsts.setdefault(lane.fanout.first, set()).add(item_lanes(lane.step or "", item_scope(key)))
    return firsts


def _first_of(key: str, lane: Lane | None) -> tuple[str | None, str] | None:
    """What the lane ``key`` adds to the running maps' first steps (see ``written_lanes``)."""
    if lane is None or lane.begun is None or lane.fanout is None or lane.fanout.first is None or lane.step is None:
        return None
    return lane.fanout.first, item_lanes(lane.step, item_scope(key))


class KeptLanes:
    """A wide instance's header lane entries as last written (see the module's docstring): a
    slot per lane in the order of the state's lanes, which a header keeps (a view shows the
    first waiting branch's wait, or the first item's), holding its packed key and entry if it
    is listed in full, else nothing; the lanes named by seq, grouped by step; those left out;
    and the running maps' first steps (which of their items are left out follows from them)."""

    __slots__ = ("of", "slots", "listed", "moved", "moved_step", "left_out", "derived", "firsts", "first_of",
                 "item_next", "branches_out", "parallels", "place_of")

    def __init__(self, state: InstanceState) -> None:
        lanes = state.lanes
        self.of = lanes  # (a state given new lanes wholesale builds anew)
        self.item_next = state.item_next  # (as is the state of another release's steps)
        self.slots: dict[str, bytes] = dict.fromkeys(lanes, b"")
        self.listed = 0
        self.moved: dict[str | None, dict[str, int]] = {}
        self.moved_step: dict[str, str | None] = {}
        self.left_out: set[str] = set()
        #: The item lanes left out as standing where their last record sends them.
        self.derived: set[str] = set()
        self.firsts: Firsts = {}
        self.first_of: dict[str, tuple[str | None, str]] = {}
        #: The branch lanes left out, and the running parallel steps whose branches may be (by
        #: place, and the place of each lane that runs one).
        self.branches_out: set[str] = set()
        self.parallels: Parallels = {}
        self.place_of: dict[str, str] = {}
        for key, lane in lanes.items():
            self._refile_first(key, lane)
            self._refile_parallel(key, lane, state.records)
        self._take(list(lanes.items()), state.records)
        if state.lane_notes:
            state.lane_notes.clear()

    def update(self, state: InstanceState) -> bool:
        """Bring the entries up to date with ``state``'s lanes; ``False`` if they must be built
        anew (the count of lanes is off: a lane added or dropped unnoted)."""
        lanes, notes, slots = state.lanes, state.lane_notes or {}, self.slots
        batch = []
        main = lanes.get(MAIN)
        if main is not None:  # (a plain lane: it notes nothing)
            self._refile_first(MAIN, main)
            self._refile_parallel(MAIN, main, state.records)
            batch.append((MAIN, main))
        for key in notes:  # (in the order first noted: new lanes in the state's order)
            lane = lanes.get(key)
            self._refile_first(key, lane)
            self._refile_parallel(key, lane, state.records)
            if lane is None:
                self._forget(key)
                continue
            if key not in slots:
                slots[key] = b""  # (its place, before it is filled in)
            batch.append((key, lane))
        self._take(batch, state.records)
        if len(slots) != len(lanes):
            return False
        if notes:
            notes.clear()
        return True

    def _refile_first(self, key: str, lane: Lane | None) -> None:
        was, now = self.first_of.get(key), _first_of(key, lane)
        if was == now:
            return
        if was is not None:
            prefixes = self.firsts[was[0]]
            prefixes.discard(was[1])
            if not prefixes:
                del self.firsts[was[0]]
            del self.first_of[key]
        if now is not None:
            self.firsts.setdefault(now[0], set()).add(now[1])
            self.first_of[key] = now

    def _refile_parallel(self, key: str, lane: Lane | None, records: list[StepResult] | tuple[()]) -> None:
        was = self.place_of.get(key)
        if was is not None and lane is not None and lane.begun == self.parallels[was][0] and lane.step is not None:
            return  # (the same execution, at every checkpoint of its lane: its layout is read once)
        now = None if lane is None else parallel_of(lane, records)
        if was is not None and (now is None or now[0] != was or now[1][0] != self.parallels[was][0]):
            del self.parallels[was], self.place_of[key]
        if now is not None:
            self.parallels[now[0]] = now[1]
            self.place_of[key] = now[0]

    def _take(self, batch: list[tuple[str, Lane]], records: list[StepResult] | tuple[()]) -> None:
        """Keep the entries of the lanes in ``batch``."""
        listed, _, derived, branches_out = written_lanes(batch, records, True, self.firsts, self.item_next,
                                                         self.parallels)
        slots, moved, moved_step = self.slots, self.moved, self.moved_step
        for key, lane in batch:
            entry = listed.get(key)
            was_listed = bool(slots.get(key))
            if entry is not None:
                if not was_listed:
                    self._unfile(key)
                    self.listed += 1
                # (A key's slot, new or updated in place, keeps its place: the state's order.)
                slots[key] = _pack((key, entry))[1:]  # (the pair without its array's header)
                continue
            if was_listed:
                self.listed -= 1
            slots[key] = b""
            if branches_out is not None and key in branches_out:  # (left out: a parallel's start record says)
                self._unfile(key)
                self.branches_out.add(key)
            elif lane.last is None:  # (left out: an untouched item)
                self._unfile(key)
                self.left_out.add(key)
            elif derived is not None and key in derived:  # (left out: where its last record sends it)
                self._unfile(key)
                self.derived.add(key)
            else:  # (named by its last record)
                step = lane.step
                if moved_step.get(key, _NOWHERE) != step:
                    self._unfile(key)
                group = moved.get(step)
                if group is None:
                    group = moved[step] = {}
                group[key] = lane.last
                moved_step[key] = step

    def _unfile(self, key: str) -> None:
        """Take lane ``key`` out of the lanes named by seq and those left out."""
        self.left_out.discard(key)
        self.derived.discard(key)
        self.branches_out.discard(key)
        if key in self.moved_step:
            step = self.moved_step.pop(key)
            group = self.moved[step]
            del group[key]
            if not group:
                del self.moved[step]

    def _forget(self, key: str) -> None:
        if self.slots.pop(key, b""):
            self.listed -= 1
        self._unfile(key)

    def written(self) -> tuple[bytes, dict[str | None, list[int]] | None, bool, list[int] | None]:
        """The lanes listed in full as a packed map, those named by seq, whether any item lanes
        are left out as standing where their last record sends them, and, if any branch lanes
        are left out, the seqs of the start records that say where those stand."""
        lanes = b"".join((_map_header(self.listed), *self.slots.values()))
        return (lanes, {step: list(group.values()) for step, group in self.moved.items()} or None, bool(self.derived),
                starts_of(self.parallels) if self.branches_out else None)


#: Not a step name (``None`` is one: a lane that ended).
_NOWHERE = object()


def kept_lanes(state: InstanceState) -> KeptLanes:
    """``state``'s kept header lane entries, brought up to date (built on first use)."""
    kept = state.header_lanes
    if not (isinstance(kept, KeptLanes) and kept.of is state.lanes and kept.item_next is state.item_next
            and kept.update(state)):
        kept = state.header_lanes = KeptLanes(state)
    return kept


def starts_of(parallels: Parallels) -> list[int]:
    """The seqs of the start records of ``parallels``, as a header holds them (see
    ``trioflow._codec._header_tail``)."""
    return sorted(seq for seq, _, _ in parallels.values())


def check_kept(state: InstanceState, lanes: dict[str, Any], moved_on: dict[Any, list[int]] | None) -> None:
    """Fail unless ``lanes`` and ``moved_on`` (read back from a header written from kept entries)
    are what a walk over every lane writes (:data:`CHECK_KEPT`)."""
    walked, walked_moved, _, _ = written_lanes(state.lanes.items(), state.records, True, item_next=state.item_next)
    expected = msgpack.unpackb(_pack(walked), strict_map_key=False)
    same_moved = ({step: sorted(seqs) for step, seqs in (moved_on or {}).items()}
                  == {step: sorted(seqs) for step, seqs in (walked_moved or {}).items()})
    if lanes != expected or list(lanes) != list(expected) or not same_moved:  # (the order too)
        raise AssertionError(
            f"instance {state.instance_id!r}: the header's kept lanes {lanes!r} / {moved_on!r} are not"
            f" those of its lanes, {expected!r} / {walked_moved!r}")
