"""JSON-ready views of stored values (``WorkflowInstance.to_dict``)."""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import uuid
from typing import Any


def json_ready(value: Any) -> Any:
    """``value`` with only what JSON holds: dicts with string keys, lists, strings, numbers,
    booleans and None. Dates and times become ISO 8601 text, a ``timedelta`` its seconds, a
    ``Decimal`` or ``UUID`` its text, bytes base64 text, tuples lists."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    return str(value)
