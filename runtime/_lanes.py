"""Lane keys and step-execution ids: built and parsed here, and nowhere else.

A *lane* is a line of steps run by one actor: the main line (key ``""``), one branch of a
running parallel step (key ``"parallel/branch"``), or one item of a running map step (key
``"map/#3"``: the counter mark and the item's index, which no branch name can be). Every
execution of a step has an id made of its lane, its step and a counter: ``"charge#1"``,
``"fulfill/shipping/ship#2"``, ``"charge-all/#3/charge#1"``. Names that contain the separator or
the counter mark would make keys ambiguous, so ``build()`` refuses them.
"""

from __future__ import annotations

from ._errors import DefinitionError

MAIN = ""
SEPARATOR = "/"
COUNTER_MARK = "#"


def branch_lane(parallel: str, branch: str) -> str:
    """The key of a parallel step's branch lane."""
    return f"{parallel}{SEPARATOR}{branch}"


def item_lane(map_step: str, index: int) -> str:
    """The key of the lane running item ``index`` (from 0) of a map step."""
    return f"{map_step}{SEPARATOR}{COUNTER_MARK}{index}"


def item_lanes(map_step: str) -> str:
    """What every item lane key of a map step starts with (and, in a definition's lookup, the
    lane the map's branch steps live in)."""
    return f"{map_step}{SEPARATOR}{COUNTER_MARK}"


def parallel_of(lane: str) -> str | None:
    """The parallel step whose branch ``lane`` is; ``None`` for the main line and item lanes."""
    if lane == MAIN or item_of(lane) is not None:
        return None
    return lane.rpartition(SEPARATOR)[0]


def item_of(lane: str) -> tuple[str, int] | None:
    """``(map step, item index)`` of an item lane key; ``None`` for any other lane."""
    head, sep, tail = lane.rpartition(f"{SEPARATOR}{COUNTER_MARK}")
    if not sep or not tail.isdigit():
        return None
    return head, int(tail)


def lane_in_definition(lane: str) -> str:
    """The lane a definition's lookup places the steps of ``lane`` in: item lanes of one map
    share their map's (see :func:`item_lanes`); any other lane is its own."""
    item = item_of(lane)
    return lane if item is None else item_lanes(item[0])


#: Signal names trioflow sends itself (a child's end, to its parent): refused to users.
RESERVED_SIGNALS = "trioflow."


def child_instance_id(parent_id: str, execution: str) -> str:
    """The id of the child instance a child step's execution starts: the same after a restart,
    so a resume never starts it twice (``"0190ab.../charge-all/#3/invoice#1"``)."""
    return f"{parent_id}{SEPARATOR}{execution}"


def child_ended_signal(child_id: str) -> str:
    """The name of the signal a child's end sends its parent."""
    return f"{RESERVED_SIGNALS}child-ended:{child_id}"


def step_key(lane: str, step: str) -> str:
    """What executions of ``step`` in ``lane`` are counted by."""
    return f"{lane}{SEPARATOR}{step}" if lane else step


def execution_id(lane: str, step: str, execution: int) -> str:
    """The id of the ``execution``-th run (from 1) of ``step`` in ``lane``."""
    return f"{step_key(lane, step)}{COUNTER_MARK}{execution}"


def is_signal_name(name: object) -> bool:
    """Whether ``name`` can name a signal a caller sends and a receive step waits for: a
    non-empty string of valid text, not under trioflow's own prefix."""
    return isinstance(name, str) and bool(name) and not name.startswith(RESERVED_SIGNALS) and valid_text(name)


def valid_text(name: str) -> bool:
    """Whether a name can be stored: a lone surrogate has no UTF-8."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_name(owner: str, kind: str, name: str) -> None:
    """Refuse a step or branch name that would make lane keys or execution ids ambiguous, or
    that could not be stored."""
    if not valid_text(name):
        raise DefinitionError(f"{owner}: {kind} name {name!r} is not valid text (it holds a lone surrogate)")
    for mark in (SEPARATOR, COUNTER_MARK):
        if mark in name:
            raise DefinitionError(
                f"{owner}: {kind} name {name!r} contains {mark!r}, which trioflow uses in lane keys and"
                " step-execution ids"
            )
