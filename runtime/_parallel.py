"""A wide parallel step's start record: what lets a header leave its branches out.

Every checkpoint rewrites the header, and a header naming each branch of a parallel step in
flight grows with the step's width: a step of a thousand branches ending one by one wrote
header bytes per branch growing with its branches, and in all with their square. A parallel
step of :data:`START_RECORD_FROM` branches or more therefore stores, as it begins, a start
record (status ``"started"``, as a map's holding its items) naming its branches, the step
each begins at, and where each of their steps that goes one way (not a choice) sends its
lane. Its lane holds that record's seq (``Lane.begun``), and a header leaves out each of its
branches that stands untouched at its first step or where its newest record's step sends it;
reading the header puts them back from the record (``trioflow._codec``). A narrower step
stores no such record: its branches' lanes cost less in the header than the record would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._definition import ParallelStep, has_fixed_next
from ._lanes import COUNTER_MARK, SEPARATOR, fanout_key, item_scope
from ._snapshot import StepResult

#: From this many branches, a parallel step stores a start record and its branches may be
#: left out of the header (the header's kept entries start at as many lanes: see
#: ``trioflow._header_lanes.WIDE``).
START_RECORD_FROM = 32

#: A parallel step's layout as its start record holds it: ``(branch, first step)`` of each
#: branch in order, and where each branch step that goes one way sends its lane.
Layout = tuple[list[tuple[str, str]], Mapping[str, str | None]]


def start_input(step: ParallelStep) -> dict[str, Any] | None:
    """What the start record of an execution of ``step`` holds (see the module's docstring);
    ``None`` for a step narrower than :data:`START_RECORD_FROM`, which stores none."""
    if len(step.branches) < START_RECORD_FROM:
        return None
    moves = {s.name: None if s.end else s.next for b in step.branches for s in b.steps if has_fixed_next(s)}
    return {"branches": [[b.name, b.steps[0].name] for b in step.branches], "next": moves}


def layout(record: StepResult) -> Layout | None:
    """The layout a parallel step's start record holds; ``None`` if ``record`` is none (a map's
    start holds a list of items, a child step's names its child in its output) or is
    malformed."""
    held = record.input
    if record.status != "started" or record.output is not None or type(held) is not dict \
            or held.keys() != {"branches", "next"}:
        return None
    branches, moves = held["branches"], held["next"]
    if not (isinstance(branches, list) and isinstance(moves, dict)):
        return None
    pairs: list[tuple[str, str]] = []
    for pair in branches:
        if not (isinstance(pair, list) and len(pair) == 2 and _name(pair[0]) and _name(pair[1])):
            return None
        pairs.append((pair[0], pair[1]))
    if not all(_name(name) and (to is None or _name(to)) for name, to in moves.items()):
        return None
    return pairs, moves


def _name(value: Any) -> bool:
    """Whether ``value`` can be a step's or a branch's name (one that makes no other lane key)."""
    return isinstance(value, str) and bool(value) and SEPARATOR not in value and COUNTER_MARK not in value


def branch_place(record: StepResult) -> str:
    """The place of the parallel step execution a start record began, as each of its branch
    lanes' keys gives it (see ``trioflow._lanes.fanout_place``)."""
    return fanout_key(record.step_name, item_scope(record.lane))
