"""Supervision of instance actors, mirroring trio's nursery API (as tractor does).

An actor that crashes (a bug, a failing adapter) is logged; the crash never propagates into the
nursery, so it never cancels the other actors. Actors record their own failure first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trioflow._escapes import goes_on

log = logging.getLogger("trioflow")


class Supervisor:
    """Starts actors in a nursery and contains their crashes."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def start_soon(self, name: str, actor: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``actor(*args)`` as a supervised task named ``name``."""
        self._nursery.start_soon(self._supervise, name, actor, args, name=name)

    def start_contained_soon(self, name: str, actor: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``actor(*args)``, an actor that contains its own crashes (it logs them and
        returns), as a task named ``name`` with no supervising frame around it: one frame and
        two objects fewer for as long as it runs (instance actors: one per instance in flight)."""
        self._nursery.start_soon(actor, *args, name=name)

    async def _supervise(self, name: str, actor: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            await actor(*args)
        except BaseException as exc:
            if goes_on(exc):  # (the engine closing; the process stopping)
                raise
            log.exception("actor %s crashed", name)
