"""What child steps ask of the engine that runs their instance (``trioflow.actors._run.Children``):
start a child, cancel it, compensate it as a unit, and pass its end notice on to its parent."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import trio

from ._errors import EngineClosedError

if TYPE_CHECKING:
    from ._engine import Engine


class EngineChildren:
    """The engine's side of child steps, for the runs it spawns."""

    __slots__ = ("_engine", "_fetching")

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        #: Parents running here whose pending signals are about to be read: the children that
        #: end before that read share it (a parent of many children would read all its pending
        #: notices once per child otherwise).
        self._fetching: set[str] = set()

    @property
    def closing(self) -> bool:
        return self._engine._closed

    async def start(self, workflow: str, input: Any, child_id: str, parent_id: str) -> None:
        await self._engine._start_child(workflow, input, child_id, parent_id)

    async def cancel(self, child_id: str) -> None:
        with contextlib.suppress(EngineClosedError):  # stopping meanwhile: the child resumes later
            await self._engine.cancel(child_id)

    async def compensate(self, child_id: str) -> str | None:
        return await self._engine._undo_child(child_id)

    async def ended(self, parent_id: str, notice: str) -> None:
        engine = self._engine
        if engine._closed:
            return  # stored: the next engine's resume finds it pending for the parent
        run = engine._live.get(parent_id)
        if run is not None:
            if parent_id in self._fetching:
                return  # a read yet to start will see this notice too
            self._fetching.add(parent_id)
            try:
                await trio.lowlevel.checkpoint()  # the children ending in this pass join the read
            finally:
                # Before the read: a notice stored once it started needs a read of its own.
                self._fetching.discard(parent_id)
            run.deliver_stored(await engine.adapter.signals(parent_id))
        else:  # parked: resumed if it waits for this child
            await engine._wake_if_waiting(parent_id, lambda waiting: waiting.get("signal") == notice)
