"""JSON-ready views of stored values (``WorkflowInstance.to_dict``)."""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import math
import uuid
from typing import Any


def json_ready(value: Any) -> Any:
    """``value`` with only what JSON holds: dicts with string keys, lists, strings, numbers,
    booleans and None. Dates and times become ISO 8601 text, a ``timedelta`` its seconds, a
    ``Decimal`` or ``UUID`` its text, bytes base64 text, tuples lists; NaN and the infinities,
    which JSON has no words for (``json.dumps`` writes ``NaN``, which ``JSON.parse`` refuses),
    None, as JavaScript's ``JSON.stringify`` writes them."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
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
