"""Durations: seconds as a number, or a ``datetime.timedelta``, wherever trioflow takes one;
moments as Unix seconds, or an aware ``datetime``."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Union

from ._errors import InvalidArgumentError, safe_repr

#: What a duration argument accepts (trio takes seconds; Temporal users write timedeltas).
Seconds = Union[float, timedelta]


def seconds(value: Any) -> Any:
    """``value`` in seconds if it is a ``timedelta``; anything else as it is, for the caller's
    own check to accept or name."""
    return value.total_seconds() if isinstance(value, timedelta) else value


def virtual_seconds(value: Any, method: str) -> float:
    """What the testing kit's ``method`` takes as a span of virtual time: a ``timedelta``, or any
    real number trio sleeps for (finite, not negative), in seconds; else
    :class:`InvalidArgumentError` naming ``method``."""
    import numbers  # (here: only the testing kit's clock takes any real number)

    value = seconds(value)
    try:
        good = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) \
            and float(value) >= 0
    except OverflowError:  # (an int no float holds)
        good = False
    if not good:
        raise InvalidArgumentError(f"{method}(): seconds must be a finite number >= 0, got {safe_repr(value)}")
    return float(value)


def unix_seconds(moment: datetime) -> float | None:
    """An aware ``datetime`` as Unix seconds; one before 1970 as 0: a moment long past, which
    comes at once as any past one does (Unix seconds given as numbers must not be negative).
    ``None`` for a naive one, for the caller to refuse: no tzinfo, or one that gives no UTC
    offset (naive by Python's own definition, as the codec reads it too)."""
    if moment.utcoffset() is None:
        return None
    return max(0.0, moment.timestamp())


def in_range(value: Any, minimum: float = 0.0, *, infinite: bool = False) -> bool:
    """Whether ``value`` is a number (``bool`` is not, though it is an ``int``: ``True`` is a
    mistake, not 1 s) from ``minimum`` up, finite unless ``infinite``, that a float holds (an
    int past about 1e308 does not: it would overflow where it is used). NaN is out: the test is
    "in range?", which NaN fails, never "below the minimum?", which it would pass."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        number = float(value)
    except OverflowError:
        return False
    return minimum <= number and (infinite or number < math.inf)
