"""Counters for the counting reviews (tests/test_review_of_count*.py): what a call costs,
counted rather than timed, so that a cost that grows with the work around it shows on any
machine (not collected: no tests here)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import trioflow as tf

_ROOT = Path(tf.__file__).resolve().parent.parent
#: trioflow's own Python: the directories its package is mapped from.
_OURS = tuple(str(_ROOT / d) + "/" for d in ("runtime", "actors", "adapters"))


class Lines:
    """Counts the lines of trioflow's own Python run while entered (this thread: the engine's)."""

    def __init__(self) -> None:
        self.count = 0
        self._seen: dict[str, bool] = {}

    def _local(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            self.count += 1
        return self._local

    def _global(self, frame: Any, event: str, arg: Any) -> Any:
        name = frame.f_code.co_filename
        ours = self._seen.get(name)
        if ours is None:
            ours = self._seen[name] = name.startswith(_OURS)
        return self._local if ours else None

    def __enter__(self) -> Lines:
        self.count = 0
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)


class VMSteps:
    """A SQLite progress handler (``set_progress_handler(steps, 1)``) counting virtual-machine
    steps."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        self.count += 1
        return 0
