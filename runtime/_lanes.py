"""Lane keys and step-execution ids: built and parsed here, and nowhere else.

A *lane* is a line of steps run by one actor: the main line (key ``""``) or one branch of a
running parallel step (key ``"parallel/branch"``). Every execution of a step has an id made of
its lane, its step and a counter: ``"charge#1"``, ``"fulfill/shipping/ship#2"``. Names that
contain the separator or the counter mark would make keys ambiguous, so ``build()`` refuses them.
"""

from __future__ import annotations

from ._errors import DefinitionError

MAIN = ""
SEPARATOR = "/"
COUNTER_MARK = "#"


def branch_lane(parallel: str, branch: str) -> str:
    """The key of a parallel step's branch lane."""
    return f"{parallel}{SEPARATOR}{branch}"


def step_key(lane: str, step: str) -> str:
    """What executions of ``step`` in ``lane`` are counted by."""
    return f"{lane}{SEPARATOR}{step}" if lane else step


def execution_id(lane: str, step: str, execution: int) -> str:
    """The id of the ``execution``-th run (from 1) of ``step`` in ``lane``."""
    return f"{step_key(lane, step)}{COUNTER_MARK}{execution}"


def check_name(owner: str, kind: str, name: str) -> None:
    """Refuse a step or branch name that would make lane keys or execution ids ambiguous."""
    for mark in (SEPARATOR, COUNTER_MARK):
        if mark in name:
            raise DefinitionError(
                f"{owner}: {kind} name {name!r} contains {mark!r}, which trioflow uses in lane keys and"
                " step-execution ids"
            )
