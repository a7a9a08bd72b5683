"""The bundled adapters' checks of the numbers their listings and purges take. Users call
these methods by hand too (``engine.adapter.purge(...)``), and a limit of ``-1`` means "no limit"
to SQLite and "none" to a slice: refused alike here, before anything is read or deleted."""

from __future__ import annotations

import math

from trioflow._errors import StorageError, safe_repr


def checked_limit(limit: object, what: str) -> int:
    """``limit`` as given, if it is an ``int`` >= 0 (not a ``bool``); :class:`StorageError`
    naming ``what`` otherwise."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise StorageError(f"{what}'s limit must be an int >= 0, got {safe_repr(limit)}; nothing was done")
    return limit


def checked_time(value: object, what: str) -> float:
    """``value`` (Unix seconds) as a float, if it is a number that is not NaN;
    :class:`StorageError` naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise StorageError(f"{what} must be Unix seconds (a number), got {safe_repr(value)}; nothing was done")
    return float(value)
