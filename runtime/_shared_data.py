"""The shared data (``ctx.data``): a dict that remembers which lane last wrote each key.

Branches of a parallel step and items of a map share one dict. A step may hold a value there
that cannot be stored while it runs (a connection) and take it out before it ends; when a
sibling's step ends meanwhile, the check of the shared data must not blame that sibling, nor
drop the value from under the step that holds it. Knowing the writer tells the two apart.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from ._current import lane_of_caller
from ._values import detached


class SharedData(dict[str, Any]):
    """A ``dict`` (it is one: code that checks or serializes it sees no difference) that notes,
    for each key set through it, the lane context that set it (``None`` outside any lane)."""

    # No ``__init__`` of its own: one is made per instance, and most are never written to.
    __slots__ = ("writers",)

    #: Who set each key last: the lane context (``WorkflowContext``, ``None`` outside any lane)
    #: and the step whose callable it was running then (``None``: none, a hook or a mapper).
    #: Unset until a key is set: see :func:`held`.
    writers: dict[str, tuple[Any, str | None]]

    def __setitem__(self, key: str, value: Any) -> None:
        ctx = lane_of_caller()
        if ctx is not None and ctx._call_over:
            # A worker thread its step gave up (see WorkflowContext.for_thread_call), writing
            # through the mapping ``ctx.data`` gave it: not the step's any more.
            ctx._refuse_if_over(f"setting {key!r} in ctx.data")
        # A live view (``ctx.steps``) is kept as it shows now: stored at each checkpoint as it
        # stood then, it would read back after a restart as less than a run without one saw.
        super().__setitem__(key, detached(value))
        try:
            writers = self.writers
        except AttributeError:
            writers = self.writers = {}
        writers[key] = (ctx, None if ctx is None else ctx._calling)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> SharedData:  # type: ignore[override,misc]
        self.update(other)
        return self

    # Copies are plain dicts: what a caller keeps is data, not the run's bookkeeping.
    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return copy.deepcopy(dict(self), memo)

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (dict(self),)


def held(
    data: dict[str, Any], key: str, lanes: Mapping[str, Any], *, ended: str | None = None, calling: bool = False,
) -> bool:
    """Whether a step that has not ended holds ``key``: its callable set it, and its lane is
    still at that step (``calling``: and in its callable now, not between attempts). ``ended``:
    the key of the lane whose step just ended, whose own values do not count."""
    writers = getattr(data, "writers", None)
    writer = None if writers is None else writers.get(key)
    if writer is None:
        return False
    ctx, step = writer
    if ctx is None or step is None or ctx.lane == ended:
        return False
    lane = lanes.get(ctx.lane)
    return lane is not None and lane.step == step and (not calling or ctx._calling == step)
