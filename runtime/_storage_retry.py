"""Storage calls tried again while storage is unavailable for a while (a database locked by
another connection, a disk full, a server down: :class:`StorageUnavailableError`), with
backoff and a warning per retry, for up to the engine's ``storage_retry_for`` seconds; after
that the error goes to the caller. The calls a run or a wake-up makes on its own go through
here, not only checkpoints: one failed read must not leave an instance stopped, unwoken or
uncompensated when the next try would have worked. (Calls made for a caller, ``start()`` or
``get_instance()``, raise at once: the caller decides whether to try again.)"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from ._errors import StorageUnavailableError

log = logging.getLogger("trioflow")

T = TypeVar("T")

#: The first wait before a failed storage call is tried again (seconds); each retry doubles it,
#: up to :data:`BACKOFF_MAX`.
FIRST_BACKOFF = 0.05
BACKOFF_MAX = 5.0


async def retried(call: Callable[[], Awaitable[T]], *, retry_for: float, what: str, instance_id: str) -> T:
    """``await call()``, tried again while it raises :class:`StorageUnavailableError`, for up
    to ``retry_for`` seconds from the first failure. ``what`` names the call in the log."""
    deadline: float | None = None
    delay = FIRST_BACKOFF
    while True:
        try:
            return await call()
        except StorageUnavailableError as exc:
            if deadline is None:
                deadline = trio.current_time() + retry_for
            await back_off(exc, deadline, delay, what, instance_id)
            delay = min(delay * 2, BACKOFF_MAX)


async def back_off(error: StorageUnavailableError, deadline: float, delay: float, what: str, instance_id: str,
                   workflow_name: str | None = None) -> None:
    """Before a failed storage call is tried again: log, and sleep ``delay``, or re-raise
    ``error`` if that would pass ``deadline``."""
    extra = {"instance_id": instance_id} if workflow_name is None else \
        {"instance_id": instance_id, "workflow_name": workflow_name}
    log.warning("%s failed (%s); retrying in %.2f s", what, error, delay, extra=extra)
    if trio.current_time() + delay > deadline:
        raise error
    await trio.sleep(delay)
