"""Value types stored beyond msgpack's own: ``datetime`` (aware and naive), ``date``, ``time``,
``timedelta``, ``Decimal`` and ``UUID``, as msgpack extension types.

Each round-trips exactly (an aware ``datetime`` keeps its instant and, for a ``ZoneInfo``, its
zone; a ``time`` keeps its ``ZoneInfo`` by name). Decoding builds these types from plain fields and never imports or calls anything the
data names, so stored bytes cannot run code.
"""

from __future__ import annotations

import datetime as _dt
import sys
from collections.abc import Callable
from typing import Any

import msgpack

#: Extension type codes: a promise of the storage format, never reused.
_DATETIME, _DATE, _TIME, _TIMEDELTA, _DECIMAL, _UUID = 1, 2, 3, 4, 5, 6

#: The types stored as extensions, by name, for messages.
SUPPORTED = "datetime, date, time, timedelta, Decimal and UUID"


def to_ext(value: Any) -> msgpack.ExtType:
    """msgpack's ``default`` hook: a supported value as an extension type; anything else
    ``TypeError`` (msgpack's way to say it cannot be encoded)."""
    kind = type(value)
    if kind is _dt.datetime:
        zone = getattr(value.tzinfo, "key", None)  # a ZoneInfo: kept by name
        return msgpack.ExtType(_DATETIME, msgpack.packb((value.isoformat(), value.fold, zone)))
    if kind is _dt.date:
        return msgpack.ExtType(_DATE, value.isoformat().encode())
    if kind is _dt.time:
        # A time's ZoneInfo gives no offset (that needs a date): kept by name, a third field.
        zone = getattr(value.tzinfo, "key", None)
        fields = (value.isoformat(), value.fold) if zone is None else (value.isoformat(), value.fold, zone)
        return msgpack.ExtType(_TIME, msgpack.packb(fields))
    if kind is _dt.timedelta:
        return msgpack.ExtType(_TIMEDELTA, msgpack.packb((value.days, value.seconds, value.microseconds)))
    # ``decimal`` and ``uuid`` are not imported here (2.5 ms of ``import trioflow``, which
    # trio's own import does not pay): a value of their types exists only once its module is.
    if kind is getattr(sys.modules.get("decimal"), "Decimal", None):
        return msgpack.ExtType(_DECIMAL, str(value).encode())
    if kind is getattr(sys.modules.get("uuid"), "UUID", None):
        return msgpack.ExtType(_UUID, value.bytes)
    # trioflow's own read-only views (``ctx.steps``), stored as the plain value they show.
    if _is_view(kind):
        return kind.stored_value(value)
    raise TypeError(f"can not serialize {kind.__name__!r} object")


def _is_view(kind: type) -> bool:
    """Whether values of ``kind`` are trioflow's own live views (``ctx.steps``)."""
    return getattr(kind, "stored_value", None) is not None and kind.__module__.startswith("trioflow.")


_CONTAINERS = frozenset({dict, list, tuple})
#: The same, subclasses included (an OrderedDict, a namedtuple): stored as their base types.
_CONTAINER_BASES = (dict, list, tuple)
#: What most outputs and data are: nothing to look into, nor a view.
PLAIN = frozenset({type(None), bool, int, float, str, bytes})


def detached(value: Any) -> Any:
    """``value`` with each of trioflow's live views in it (``ctx.steps``, at any depth inside
    dicts, lists and tuples, their subclasses too) replaced by the plain value it shows now, so
    that what is kept (in the shared data, or as a step's output in a run that stores nothing)
    no longer changes as later steps end. ``value`` itself when it holds none (the common case:
    no copy); a container that held one comes back as the plain type storage reads it back as."""
    kind = type(value)
    if kind in PLAIN:
        return value
    if kind not in _CONTAINERS and not _is_view(kind) and not isinstance(value, _CONTAINER_BASES):
        return value
    try:
        return _detached(value, {})
    except RecursionError:
        return value  # (nested deeper than storage takes: left for its checks to refuse, named)


def _detached(value: Any, done: dict[int, Any]) -> Any:
    """See :func:`detached`; ``done`` maps each container met so far (by id: each is alive, held
    by ``value``) to what it became, so that one met twice (a list shared by two keys) becomes
    the same, detached, both times."""
    kind = type(value)
    if kind not in _CONTAINERS:
        if _is_view(kind):
            return _detached(kind.stored_value(value), done)
        if not isinstance(value, _CONTAINER_BASES):
            return value
    became = done.get(id(value))
    if became is not None:
        return became
    done[id(value)] = value  # (a container holding itself: left as it is)
    changed = False
    if isinstance(value, dict):
        items = {}
        for key, item in value.items():
            new = items[key] = _detached(item, done)
            changed = changed or new is not item
        result: Any = items if changed else value
    else:
        parts = []
        for item in value:
            new = _detached(item, done)
            parts.append(new)
            changed = changed or new is not item
        result = value if not changed else parts if isinstance(value, list) else tuple(parts)
    done[id(value)] = result
    return result


def _datetime(data: bytes) -> _dt.datetime:
    iso, fold, zone = msgpack.unpackb(data)
    value = _dt.datetime.fromisoformat(iso).replace(fold=fold)
    if zone is not None:
        from zoneinfo import ZoneInfo  # a zone name, looked up in the tz database: no code runs

        value = value.astimezone(ZoneInfo(zone))
    return value


def _time(data: bytes) -> _dt.time:
    iso, fold, *zone = msgpack.unpackb(data)
    value = _dt.time.fromisoformat(iso).replace(fold=fold)
    if zone:
        from zoneinfo import ZoneInfo  # a zone name, looked up in the tz database: no code runs

        value = value.replace(tzinfo=ZoneInfo(zone[0]))
    return value


def _timedelta(data: bytes) -> _dt.timedelta:
    days, seconds, microseconds = msgpack.unpackb(data)
    return _dt.timedelta(days=days, seconds=seconds, microseconds=microseconds)


def _decimal(data: bytes) -> Any:
    import decimal  # on first use (see ``to_ext``)

    return decimal.Decimal(data.decode())


def _uuid(data: bytes) -> Any:
    import uuid  # on first use (see ``to_ext``)

    return uuid.UUID(bytes=data)


_DECODERS: dict[int, Callable[[bytes], Any]] = {
    _DATETIME: _datetime,
    _DATE: lambda data: _dt.date.fromisoformat(data.decode()),
    _TIME: _time,
    _TIMEDELTA: _timedelta,
    _DECIMAL: _decimal,
    _UUID: _uuid,
}


def from_ext(code: int, data: bytes) -> Any:
    """msgpack's ``ext_hook``: the value of a known extension type; an unknown code is an
    error (a newer release's type, or damage), never guessed at."""
    decoder = _DECODERS.get(code)
    if decoder is None:
        raise ValueError(f"unknown msgpack extension type {code}")
    return decoder(data)

