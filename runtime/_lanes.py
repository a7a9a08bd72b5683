"""Lane keys and step-execution ids: built and parsed here, and nowhere else.

A *lane* is a line of steps run by one actor: the main line (key ``""``), one branch of a
running parallel step (key ``"parallel/branch"``), or one item of a running map step (key
``"map/#3"``: the counter mark and the item's index, which no branch name can be). Every
execution of a step has an id made of its lane, its step and a counter: ``"charge#1"``,
``"fulfill/shipping/ship#2"``, ``"charge-all/#3/charge#1"``. Names that contain the separator or
the counter mark would make keys ambiguous, so ``build()`` refuses them.

A fan-out inside a map item (a parallel or a map step in the map's branch) runs once per item
at the same time, so its lanes' keys start with the item's: ``"orders/#3/checks/fraud"``,
``"orders/#3/lines/#0"``. That prefix is the lane's *scope* (:func:`item_scope`); a lane in no
map item has scope ``""``, and its key is as above. (Branches of a parallel step do not scope
what runs in them: each branch runs once per execution of its step, and step names are unique
in a workflow, so their keys cannot meet.)
"""

from __future__ import annotations

from ._errors import DefinitionError

MAIN = ""
SEPARATOR = "/"
COUNTER_MARK = "#"


def _scoped(scope: str, key: str) -> str:
    return f"{scope}{SEPARATOR}{key}" if scope else key


def branch_lane(parallel: str, branch: str, scope: str = MAIN) -> str:
    """The key of a parallel step's branch lane (the step running in a lane of that scope)."""
    return _scoped(scope, f"{parallel}{SEPARATOR}{branch}")


def item_lane(map_step: str, index: int, scope: str = MAIN) -> str:
    """The key of the lane running item ``index`` (from 0) of a map step (the step running in a
    lane of that scope)."""
    return _scoped(scope, f"{map_step}{SEPARATOR}{COUNTER_MARK}{index}")


def item_lanes(map_step: str, scope: str = MAIN) -> str:
    """What every item lane key of a map step (running in a lane of that scope) starts with;
    with no scope, in a definition's lookup, the lane the map's branch steps live in."""
    return _scoped(scope, f"{map_step}{SEPARATOR}{COUNTER_MARK}")


def holds_items(lane: str) -> bool:
    """Whether ``lane``, a lane of a definition's lookup, is where a map's branch steps live
    (see :func:`item_lanes`)."""
    return lane.endswith(f"{SEPARATOR}{COUNTER_MARK}")


def index_under(lane: str, items: str) -> int | None:
    """The index of the item ``lane`` is, or runs in, of the map execution whose item lanes
    start with ``items`` (see :func:`item_lanes`); ``None`` if it is none of its items'."""
    if not lane.startswith(items):
        return None
    part = lane[len(items):].partition(SEPARATOR)[0]
    return int(part) if part.isdigit() else None


def _is_index(part: str) -> bool:
    return part[:1] == COUNTER_MARK and part[1:].isdigit()


def item_scope(lane: str) -> str:
    """The key of the innermost map item lane ``lane`` runs in (itself, if it is one); ``""``
    for a lane in no map item. The lanes a fan-out step running in ``lane`` opens are scoped by it."""
    if COUNTER_MARK not in lane:  # (most lanes: the main line, branches)
        return MAIN
    parts = lane.split(SEPARATOR)
    for end in range(len(parts), 1, -1):
        if _is_index(parts[end - 1]):
            return SEPARATOR.join(parts[:end])
    return MAIN


def fanout_key(step: str, scope: str) -> str:
    """A fan-out step running in a lane of ``scope``, within it (``"p"``, ``"orders/#3/p"``):
    what tells apart the executions of one step running in several items at once."""
    return _scoped(scope, step)


def fanout_place(lane: str) -> str:
    """The :func:`fanout_key` of the parallel step a branch lane runs for."""
    return lane.rpartition(SEPARATOR)[0]


def enclosing_scope(item: str) -> str:
    """The scope the map step whose item lane is ``item`` ran in: the key of the item around
    it, or ``""`` (``"orders/#3/lines/#0"`` -> ``"orders/#3"``, ``"orders/#3"`` -> ``""``)."""
    return item.rsplit(SEPARATOR, 2)[0] if item.count(SEPARATOR) > 1 else MAIN


def within(lane: str) -> str:
    """What the keys of every lane opened inside ``lane`` (a map item's) start with."""
    return f"{lane}{SEPARATOR}"


def item_prefix(lane: str) -> str:
    """For an item lane, what every item lane key of its map execution starts with (see
    :func:`item_lanes`): ``"orders/#3/lines/#0"`` -> ``"orders/#3/lines/#"`` (``""`` for a
    lane in no map item)."""
    return lane[:lane.rfind(COUNTER_MARK) + 1]


def parallel_of(lane: str) -> str | None:
    """The parallel step whose branch ``lane`` is; ``None`` for the main line and item lanes."""
    if lane == MAIN or item_of(lane) is not None:
        return None
    return fanout_place(lane).rpartition(SEPARATOR)[2]


def item_of(lane: str) -> tuple[str, int] | None:
    """``(map step, item index)`` of an item lane key; ``None`` for any other lane."""
    head, sep, tail = lane.rpartition(f"{SEPARATOR}{COUNTER_MARK}")
    if not sep or not tail.isdigit():
        return None
    return head.rpartition(SEPARATOR)[2], int(tail)


def lane_in_definition(lane: str) -> str:
    """The lane a definition's lookup places the steps of ``lane`` in: its own key without its
    scope, and item lanes of one map share their map's (see :func:`item_lanes`)."""
    if lane == MAIN:  # (the main line's, which most instances run alone: every resume asks)
        return MAIN
    item = item_of(lane)
    if item is not None:
        return item_lanes(item[0])
    scope = item_scope(lane)
    return lane[len(scope) + 1:] if scope else lane


#: Signal names trioflow sends itself (a child's end, to its parent): refused to users.
RESERVED_SIGNALS = "trioflow."


def in_run(execution: str, run: int) -> str:
    """An execution's id among every run of its instance: in a run after the first (the
    instance continued as new) the counters start again, and the run's number, after the
    counter mark where no lane key starts, keeps it apart (``"#2/invoice#1"``)."""
    return f"{COUNTER_MARK}{run}{SEPARATOR}{execution}" if run else execution


def child_instance_id(parent_id: str, execution: str, run: int = 0) -> str:
    """The id of the child instance a child step's execution (in the parent's run ``run``)
    starts: the same after a restart, so a resume never starts it twice
    (``"0190ab.../charge-all/#3/invoice#1"``; ``"0190ab.../#2/invoice#1"`` in its third run)."""
    return f"{parent_id}{SEPARATOR}{in_run(execution, run)}"


def child_lane(parent_id: str, child_id: str, run: int = 0) -> str | None:
    """The key of the lane of ``parent_id`` (in its run ``run``) whose child step started
    ``child_id`` (see :func:`child_instance_id`); ``None`` if that id is not one of its
    children's in that run."""
    prefix = f"{parent_id}{SEPARATOR}{COUNTER_MARK}{run}{SEPARATOR}" if run else f"{parent_id}{SEPARATOR}"
    if not child_id.startswith(prefix) or not run and child_id[len(prefix):len(prefix) + 1] == COUNTER_MARK:
        return None
    return child_id[len(prefix):].rpartition(SEPARATOR)[0]  # (a step name holds no separator)


_CHILD_ENDED = f"{RESERVED_SIGNALS}child-ended:"


def child_ended_signal(child_id: str) -> str:
    """The name of the signal a child's end sends its parent."""
    return f"{_CHILD_ENDED}{child_id}"


def ended_child(notice: str) -> str | None:
    """The id of the child whose end the signal ``notice`` tells (``None``: not such a signal)."""
    return notice[len(_CHILD_ENDED):] if notice.startswith(_CHILD_ENDED) else None


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
