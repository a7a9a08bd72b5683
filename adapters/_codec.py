"""Snapshot codec: ``InstanceState`` <-> msgpack bytes, with a type tag and a format version.

Decoding builds plain values and attrs objects field by field; it never imports or calls
anything named by the data (no pickle, no msgpack ext hooks), so a hostile snapshot can at worst
be refused with :class:`SnapshotDecodeError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from trioflow._errors import SnapshotDecodeError, UnencodableValueError, ValueTooLargeError
from trioflow._snapshot import InstanceState, Lane, StepResult

TAG = "trioflow.instance"
#: Bumped on every incompatible change; a newer version than this is refused, never guessed at.
FORMAT_VERSION = 1
#: Largest encoded input, output or shared-data value: larger ones are refused, naming them.
MAX_VALUE_BYTES = 16 * 1024 * 1024
#: Largest snapshot encoded or decoded (a corrupt length can't make us allocate gigabytes).
MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024

_packer = msgpack.Packer(use_bin_type=True, datetime=False)

# msgpack packs values nested a few levels deeper than the 1,023 it unpacks, so a value
# could be stored and never read back. Values are checked wrapped in this many extra levels:
# anything accepted then sits well inside the unpacker's limit, even inside a snapshot.
_DEPTH_HEADROOM = 128
_MAX_DEPTH = 890
_SCALARS = frozenset({bool, int, float})


def encode(state: InstanceState) -> bytes:
    """The snapshot bytes of ``state``; :class:`UnencodableValueError` names the bad value."""
    try:
        packed: bytes = _packer.pack(_fields(state))
    except (TypeError, ValueError, OverflowError) as exc:
        _packer.reset()
        raise UnencodableValueError(_locate(state, exc)) from exc
    if len(packed) > MAX_SNAPSHOT_BYTES:
        raise ValueTooLargeError(
            f"the snapshot of instance {state.instance_id!r} is {len(packed) / 2**20:.1f} MiB,"
            f" over the {MAX_SNAPSHOT_BYTES >> 20} MiB limit"
        )
    return packed


def check_encodable(value: Any, what: str) -> None:
    """Raise :class:`UnencodableValueError` naming ``what`` (and the path inside it) unless
    ``value`` can be stored."""
    kind = type(value)
    if value is None or kind in _SCALARS:
        return
    try:
        packed = msgpack.packb(value, use_bin_type=True)
        size = len(packed)
        if size > _MAX_DEPTH:
            # Every level of nesting takes at least a byte, so only values at least this large
            # can be too deep: check them wrapped in the headroom the snapshot needs.
            wrapped = value
            for _ in range(_DEPTH_HEADROOM):
                wrapped = [wrapped]
            msgpack.packb(wrapped, use_bin_type=True)
    except ValueError as exc:
        if "recursion limit" in str(exc):
            raise UnencodableValueError(f"{what} is nested too deeply to be stored (about 890 levels at most)") from exc
        raise UnencodableValueError(_describe(what, value, exc)) from exc
    except (TypeError, OverflowError) as exc:
        raise UnencodableValueError(_describe(what, value, exc)) from exc
    if size > MAX_VALUE_BYTES:
        raise ValueTooLargeError(f"{what} is {size / 2**20:.1f} MiB encoded, over the {MAX_VALUE_BYTES >> 20} MiB limit")
    if kind is not str and kind is not bytes:
        _check_readable(packed, what, value)


def _check_readable(packed: bytes, what: str, value: Any) -> None:
    """Refuse a value that packs but cannot be unpacked: a dict key that is a tuple packs as an
    array, which unpacks as a list, which cannot be a key. Stored, it would make the whole
    snapshot unreadable (``get_instance`` and resume would fail), so it is refused up front."""
    try:
        msgpack.unpackb(packed, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:
        path, key = _find_unreadable_key(value, "")
        raise UnencodableValueError(
            f"{what}{path} has a dict key of type {type(key).__name__} ({key!r:.60}), which would be stored"
            " as a list and could not be read back as a key; use a string, number or bytes key"
        ) from exc


def _find_unreadable_key(value: Any, path: str) -> tuple[str, Any]:
    """The path to the first dict whose key is a list or tuple, and that key."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, (list, tuple)):
                return path, k
            found = _find_unreadable_key(v, f"{path}[{k!r}]")
            if found[0] or found[1] is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _find_unreadable_key(v, f"{path}[{i}]")
            if found[0] or found[1] is not None:
                return found
    return "", None


def decode(data: bytes) -> InstanceState:
    """Rebuild the state from snapshot bytes, or raise :class:`SnapshotDecodeError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SnapshotDecodeError(f"a snapshot must be bytes, got {type(data).__name__}")
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise SnapshotDecodeError(f"snapshot of {len(data)} bytes exceeds the {MAX_SNAPSHOT_BYTES}-byte limit")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:
        raise SnapshotDecodeError(f"snapshot is not valid msgpack: {exc}") from exc
    if not isinstance(raw, list) or len(raw) < 2 or raw[0] != TAG:
        raise SnapshotDecodeError("data is not a trioflow instance snapshot (missing type tag)")
    version = raw[1]
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise SnapshotDecodeError(
            f"snapshot format version {version!r} is not supported (this trioflow reads up to {FORMAT_VERSION})"
        )
    try:
        return _state(raw)
    except SnapshotDecodeError:
        raise
    except Exception as exc:
        raise SnapshotDecodeError(f"snapshot fields are malformed: {type(exc).__name__}: {exc}") from exc


def _fields(s: InstanceState) -> tuple[Any, ...]:
    # Tuples and plain loops: this runs for every stored step, and msgpack packs a tuple as the
    # same array a list would be.
    lanes = {}
    for key, lane in s.lanes.items():
        lanes[key] = (lane.step, lane.output)
    results = {}
    for key, r in s.step_results.items():
        results[key] = (r.status, r.input, r.output, r.error, r.started_at, r.completed_at, r.attempts)
    return (
        TAG, FORMAT_VERSION, s.instance_id, s.workflow_name, s.fingerprint, s.status, s.input, s.data, lanes,
        results, s.completed, s.phase, s.outcome, s.output, s.error, s.failed_step, s.compensated,
        s.compensation_errors, s.created_at, s.started_at, s.completed_at, s.rolled_back,
    )


_STATUSES = {"pending", "running", "completed", "failed", "cancelled", "timed_out"}
_STEP_STATUSES = {"pending", "running", "completed", "failed", "skipped", "compensated"}
_PHASES = {"forward", "compensating", "done"}


def _state(raw: list[Any]) -> InstanceState:
    (_, _, iid, name, fingerprint, status, input, data, lanes, results, completed, phase, outcome,
     output, error, failed_step, compensated, comp_errors, created_at, started_at, completed_at,
     rolled_back) = raw
    _expect(isinstance(iid, str) and isinstance(name, str), "instance id and workflow name must be strings")
    _expect(status in _STATUSES and phase in _PHASES, f"unknown status {status!r} or phase {phase!r}")
    _expect(outcome is None or outcome in _STATUSES, f"unknown outcome {outcome!r}")
    _expect(isinstance(data, dict) and isinstance(lanes, dict) and isinstance(results, dict), "malformed maps")
    step_results: dict[str, StepResult] = {}
    for key, (st, s_in, s_out, s_err, s_start, s_end, attempts) in results.items():
        _expect(st in _STEP_STATUSES, f"step {key!r} has unknown status {st!r}")
        step_results[key] = StepResult(
            step_name=key, status=st, input=s_in, output=s_out, error=s_err,
            started_at=s_start, completed_at=s_end, attempts=attempts,
        )
    _expect(isinstance(completed, list) and isinstance(compensated, list), "malformed step lists")
    _expect(isinstance(comp_errors, dict), "malformed compensation errors")
    return InstanceState(
        instance_id=iid, workflow_name=name, fingerprint=str(fingerprint), status=status, input=input,
        data=data, lanes={k: Lane(step=v[0], output=v[1]) for k, v in lanes.items()},
        step_results=step_results, completed=completed, phase=phase, outcome=outcome, output=output,
        error=error, failed_step=failed_step, compensated=compensated, compensation_errors=comp_errors,
        created_at=created_at, started_at=started_at, completed_at=completed_at, rolled_back=bool(rolled_back),
    )


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise SnapshotDecodeError(f"snapshot fields are malformed: {message}")


def _locate(state: InstanceState, exc: BaseException) -> str:
    """Find which part of a state could not be encoded, for the error message."""
    parts: list[tuple[str, Any]] = [("workflow input", state.input), ("shared data", state.data)]
    parts += [(f"output of step {k!r}", r.output) for k, r in state.step_results.items()]
    parts += [(f"input of step {k!r}", r.input) for k, r in state.step_results.items()]
    for what, value in parts:
        try:
            msgpack.packb(value, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as inner:
            return _describe(what, value, inner)
    return f"instance {state.instance_id!r} cannot be encoded: {exc}"


def _describe(what: str, value: Any, exc: BaseException) -> str:
    path, bad = _find(value, "")
    where = f"{what}{path}" if path else what
    return f"{where} is a {type(bad).__name__} ({bad!r:.60}), which msgpack cannot encode ({exc})"


def _find(value: Any, path: str) -> tuple[str, Any]:
    """The path to the first value msgpack refuses inside ``value``."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            for item, sub in ((k, f"{path}[key {k!r}]"), (v, f"{path}[{k!r}]")):
                try:
                    msgpack.packb(item, use_bin_type=True)
                except (TypeError, ValueError, OverflowError):
                    return _find(item, sub)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            try:
                msgpack.packb(v, use_bin_type=True)
            except (TypeError, ValueError, OverflowError):
                return _find(v, f"{path}[{i}]")
    return path, value
