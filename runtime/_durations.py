"""Durations: seconds as a number, or a ``datetime.timedelta``, wherever trioflow takes one."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Union

#: What a duration argument accepts (trio takes seconds; Temporal users write timedeltas).
Seconds = Union[float, timedelta]


def seconds(value: Any) -> Any:
    """``value`` in seconds if it is a ``timedelta``; anything else as it is, for the caller's
    own check to accept or name."""
    return value.total_seconds() if isinstance(value, timedelta) else value
