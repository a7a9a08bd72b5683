"""The bundled adapters' checks of the numbers their listings, purges, looks for due instances
and wake times take, and of the names they leave out. Users call these methods by hand too
(``engine.adapter.purge(...)``), and a limit of ``-1`` means "no limit" to SQLite and "none" to
a slice: refused alike here, before anything is read, written or deleted."""

from __future__ import annotations

import math
from collections.abc import Collection

from trioflow._errors import StorageError, safe_repr


#: Largest limit SQLite takes (a 64-bit signed integer); a larger one limits nothing more.
_MOST = (1 << 63) - 1


def checked_limit(limit: object, what: str) -> int:
    """``limit`` (at most :data:`_MOST`), if it is an ``int`` >= 0 (not a ``bool``);
    :class:`StorageError` naming ``what`` otherwise."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise StorageError(f"{what}'s limit must be an int >= 0, got {safe_repr(limit)}; nothing was done")
    return min(limit, _MOST)


def checked_time(value: object, what: str, error: type[StorageError] = StorageError) -> float:
    """``value`` (Unix seconds) as a float, if it is a number that is not NaN; ``error`` (a
    :class:`StorageError`: the adapter's own kind) naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{what} must be Unix seconds (a number), got {safe_repr(value)}; nothing was done")
    try:
        seconds = float(value)
    except OverflowError:  # (an int past any float: as far off as infinity)
        return math.inf if value > 0 else -math.inf
    if math.isnan(seconds):
        raise error(f"{what} must be Unix seconds (a number), got nan; nothing was done")
    return seconds


def checked_names(values: Collection[str], what: str, error: type[StorageError] = StorageError) -> Collection[str]:
    """``values``, unless it is one ``str`` (or ``bytes``) where a collection of them is asked:
    taken as one, it would be its characters, and leave out or skip what no one named.
    ``error`` (the adapter's own kind) naming ``what`` then."""
    if isinstance(values, (str, bytes)):
        raise error(f"{what} must be a collection of names, got the single {safe_repr(values)}"
                    f" (pass [{safe_repr(values)}]); nothing was done")
    return values
