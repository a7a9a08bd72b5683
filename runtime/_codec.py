"""The instance codec: ``InstanceState`` <-> msgpack bytes (SPEC §10), beside the model it encodes.

Formats 2 to 4 store an instance as three kinds of bytes (see ``trioflow.adapters._protocol``): a
*start* written once, a small *header* rewritten by each checkpoint, and one *record* per step
execution, appended once. Each value is encoded once, when the record or header holding it is
written; a record stores a pass-through output or the workflow input as a reference, not a copy.
Format 1 (one snapshot holding everything, rewritten at every step), format 2's headers
(which listed every execution compensated, and carried no mark of their instance) and format
3's (which kept the compensations that failed) are still read: databases written by earlier
releases open and resume.

Decoding builds plain values and attrs objects field by field; it never imports or calls
anything named by the data (no pickle, no msgpack ext hooks), so hostile bytes can at worst be
refused with :class:`SnapshotDecodeError`.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, NoReturn, Protocol, TypeVar

import attrs
import msgpack

from . import _header_lanes
from ._header_lanes import written_lanes
from ._errors import SnapshotDecodeError, UnencodableValueError, ValueTooLargeError, safe_repr, split_description
from ._lanes import MAIN, branch_lane, index_under, item_lane, item_lanes, item_scope
from ._parallel import layout
from ._shared_data import SharedData, held
from ._snapshot import (
    HAS_OUTPUT,
    OF_COMPENSATIONS,
    PASSES_WORKFLOW_INPUT,
    PHASES,
    RESUMABLE,
    STATUSES,
    TERMINAL,
    STEP_STATUSES,
    InstanceState,
    MapProgress,
    new_lane,
    NO_ERRORS,
    ChildWait,
    Status,
    StepResult,
    child_wait,
    completed_compensation,
    failed_compensation,
    new_instance_state,
    new_record,
    note_compensation,
    with_values,
)
from ._values import SUPPORTED, from_ext, to_ext

#: Type tags: format 1's snapshot, the start and header of formats 2 to 4.
TAG = "trioflow.instance"
START_TAG = "trioflow.start"
HEADER_TAG = "trioflow.header"
#: Bumped on every change an older release could misread; a newer version than this is refused,
#: never guessed at. A field added where an older release cannot take it at all (its unpacking
#: fails, and it reports the instance unreadable, leaving the row as it is) stays in the version:
#: headers without it, most of them, stay readable by that release.
#: Format 3's header (see :func:`encode_header`) names its instance, and says what was
#: compensated with a cursor rather than a list; its start and records are format 2's. Format
#: 4 keeps a compensation that failed for good in a record of its own (status
#: ``"compensation_failed"``) rather than in the header, which no longer grows with them.
#: Format 4's header may also give a running map's position a sixth field, the first step of
#: its branch, and then leaves out the lanes of the map's items that stand there untouched
#: (a header written before it has five fields and lists every lane: both are read). And a lane
#: that waits for its child's end may say so in a word (``ChildWait.word``) rather than with
#: its child's ids, which its start record holds (a header written before says it in full: both
#: are read). A header may also end with a twentieth field that names the branch and item lanes
#: standing just after their last record by that record's seq (see :func:`encode_header`): a
#: header written before lists them all, and is read as it is; an older release refuses a
#: header with it, which only a fan-out's branches or items moving on give. And each compensation
#: that ran has a record of its own (status ``"compensation_completed"``), the header keeping
#: only the cursor, with no step names beside it: a header written before names the steps
#: compensated, and is read (see :func:`_compensations`); an older release refuses the record's
#: status and a cursor without names, which only an instance that compensated has.
FORMAT_VERSION = 4
#: Largest encoded input, output or shared-data value: larger ones are refused, naming them.
MAX_VALUE_BYTES = 16 * 1024 * 1024
#: Largest snapshot encoded or decoded (a corrupt length can't make us allocate gigabytes).
MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024

_packer = msgpack.Packer(use_bin_type=True, datetime=False, default=to_ext)


def _pack(value: Any) -> bytes:
    """One value on its own (checks, payloads), with the same value types as every snapshot."""
    packed: bytes = msgpack.packb(value, use_bin_type=True, datetime=False, default=to_ext)
    return packed


def _read(data: bytes) -> Any:
    """What :func:`_pack` (or the packer) wrote."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True, ext_hook=from_ext)

# msgpack packs values nested a few levels deeper than the 1,023 it unpacks, so a value
# could be stored and never read back. Values are checked wrapped in this many extra levels:
# anything accepted then sits well inside the unpacker's limit, even inside a snapshot.
_DEPTH_HEADROOM = 128
_MAX_DEPTH = 890
#: Packed bytes of those extra levels, each a list of one item, to read a value back inside them.
_HEADROOM = b"\x91" * _DEPTH_HEADROOM
_SCALARS = frozenset({bool, int, float})
_PLAIN = frozenset({bool, int, float, str, bytes})


class Stored(Protocol):
    """What an adapter hands back for one instance (``StoredInstance`` has these)."""

    @property
    def start(self) -> bytes | None: ...
    @property
    def header(self) -> bytes: ...
    @property
    def records(self) -> tuple[bytes, ...]: ...


def encode_start(state: InstanceState) -> bytes:
    """What never changes: written once, when the instance is created (and again when it
    continues as new, with its new input and run number)."""
    try:
        start: tuple[Any, ...] = (START_TAG, FORMAT_VERSION, state.instance_id, state.workflow_name,
                                  state.fingerprint, state.input, state.created_at)
        # A child instance's start also names its parent (one started by a caller: 7 fields),
        # and one that continued as new its run (9 fields: releases before it refuse the row, as
        # malformed, rather than run it from its first run's children's ids).
        if state.runs:
            start = (*start, state.parent_id, state.runs)
        elif state.parent_id is not None:
            start = (*start, state.parent_id)
        packed: bytes = _packer.pack(start)
    except (TypeError, ValueError, OverflowError) as exc:
        _packer.reset()
        raise UnencodableValueError(_locate(state, (("workflow input", state.input),))) from exc
    return packed


def encode_header(state: InstanceState) -> bytes:
    """Where the instance stands now: rewritten by every checkpoint, small, and no bigger for
    the steps run or compensated already (it holds no step outputs, and of a compensation only
    a cursor: the records of the compensations say which executions were handled). It names
    its instance: a header copied from another instance's row is refused on reading, not run
    as this one.

    Its lanes (see ``trioflow._header_lanes``) leave out a map's items that stand untouched at
    its branch's first step, which the decoder puts back (see ``MapProgress.first``), and name
    a branch's or item's lane that stands just after its last record by that record's seq: a
    map with thousands of items in flight would otherwise rewrite all their lanes with each
    item's end. An instance with many lanes keeps their entries from one checkpoint to the next."""
    compact = state.phase != "done"
    lanes: dict[str, Any]
    if len(state.lanes) == 1 and (main := state.lanes.get(MAIN)) is not None and main.begun is None \
            and main.waiting is None and not state.lane_notes:
        # Most checkpoints': the main line alone, between steps, listed in full as
        # ``written_lanes`` lists it (inline: this runs at every step of every instance). (Not
        # the first after a fan-out: it lets go of what was kept of the fan-out's lanes.)
        lanes, moved_on, derived, branches_out = {MAIN: (main.step, main.last, main.failed)}, None, None, None
    else:
        if len(state.lanes) > 1 or state.lane_notes:
            if compact and len(state.lanes) >= _header_lanes.WIDE \
                    and len(state.lane_notes or ()) <= len(state.lanes) * _header_lanes.BUSY:
                return _encode_wide_header(state)
            # (Most lanes changed since the last header: packed in one go, they cost less.)
            state.header_lanes = None
            if state.lane_notes:
                state.lane_notes.clear()
        # (A map's lane comes before its items' in the state's lanes: they are added after it.)
        lanes, moved_on, derived, branches_out = written_lanes(state.lanes.items(), state.records, compact,
                                                               item_next=state.item_next)
    # Packed inline, not through a helper: this runs at every checkpoint.
    fields = (
        # (Empty shared data, most runs', as a plain dict: msgpack packs a dict subclass
        # through its Python-level ``items()``.)
        HEADER_TAG, FORMAT_VERSION, state.instance_id, state.status, state.phase,
        state.outcome, state.rolled_back, state.data if state.data else _NO_MAP, lanes, state.error,
        state.failed_step, state.compensated_from, _NO_NAMES, state.skipped,
        state.started_at, state.completed_at,
        len(state.records), state.error_name, state.cause,
    )
    try:
        packed: bytes = _packer.pack(fields if moved_on is None and derived is None and branches_out is None
                                     else (*fields, *_header_tail(state, moved_on, bool(derived),
                                                                  _starts(state, branches_out))))
    except (TypeError, ValueError, OverflowError) as exc:
        _packer.reset()
        raise UnencodableValueError(_locate(state, (("shared data", state.data),))) from exc
    # (The size check is all _within_limit does when the header is within it: not called.)
    return packed if len(packed) <= MAX_SNAPSHOT_BYTES else _within_limit(state, packed)


def _encode_wide_header(state: InstanceState) -> bytes:
    """:func:`encode_header` of an instance with many lanes: the same fields, with its lanes as
    kept since its last checkpoint (see ``trioflow._header_lanes``), spliced in packed."""
    kept = _header_lanes.kept_lanes(state)
    lanes, moved_on, derived, starts = kept.written()
    tail = _header_tail(state, moved_on, derived, starts)
    try:
        # The array's header, then its fields before the lanes and after them, each packed as
        # an array of its own without that array's one-byte header.
        before = _packer.pack((HEADER_TAG, FORMAT_VERSION, state.instance_id, state.status, state.phase,
                               state.outcome, state.rolled_back, state.data if state.data else _NO_MAP))
        after = (state.error, state.failed_step, state.compensated_from, _NO_NAMES, state.skipped,
                 state.started_at, state.completed_at, len(state.records), state.error_name, state.cause)
        after_packed = _packer.pack((*after, *tail))
    except (TypeError, ValueError, OverflowError) as exc:
        _packer.reset()
        raise UnencodableValueError(_locate(state, (("shared data", state.data),))) from exc
    packed = b"".join((_WIDE_ARRAY[len(tail)], before[1:], lanes, after_packed[1:]))
    if _header_lanes.CHECK_KEPT:
        raw = _read(packed)
        _header_lanes.check_kept(state, raw[8], raw[19] if len(raw) > 19 else None)
    return _within_limit(state, packed)


def _header_tail(
    state: InstanceState, moved_on: dict[str | None, list[int]] | None, derived: bool, starts: list[int] | None,
) -> tuple[Any, ...]:
    """What a header holds after its nineteen fields: the lanes named by seq, if any; where
    item lanes are left out as standing where their last record sends them, the steps that say
    where (the definition's ``item_next``: releases before it refuse such a header, rather than
    run those items from their first step again); and where branch lanes of a parallel step are
    left out, the seqs of the start records that say where they stand (releases before it refuse
    such a header, rather than run those branches again: see ``trioflow._parallel``)."""
    if starts is not None:
        return moved_on, state.item_next if derived else None, starts
    if derived:
        return moved_on, state.item_next
    return () if moved_on is None else (moved_on,)


def _starts(state: InstanceState, branches_out: set[str] | None) -> list[int] | None:
    """The seqs of the start records of the running parallel steps, if any branch lane is left
    out (see :func:`_header_tail`); found in the state's lanes."""
    if not branches_out:
        return None
    return _header_lanes.starts_of(dict(found for lane in state.lanes.values()
                                        if (found := _header_lanes.parallel_of(lane, state.records)) is not None))


#: A header's array header: nineteen fields, twenty with lanes named by seq, twenty-one with
#: item lanes left out as standing where their last record sends them, twenty-two with branch
#: lanes left out.
_WIDE_ARRAY = (b"\xdc\x00\x13", b"\xdc\x00\x14", b"\xdc\x00\x15", b"\xdc\x00\x16")


def _within_limit(state: InstanceState, packed: bytes) -> bytes:
    if len(packed) > MAX_SNAPSHOT_BYTES:
        raise ValueTooLargeError(
            f"the header of instance {state.instance_id!r} is {len(packed) / 2**20:.1f} MiB,"
            f" over the {MAX_SNAPSHOT_BYTES >> 20} MiB limit"
        )
    return packed


def instance_mark(instance_id: str) -> int:
    """What format-3 headers written by commit 7cb9446 carry of their instance instead of its
    id: the CRC-32 of the id. Still read; no longer written, as two ids can share a CRC (the
    id itself packs in about 33 bytes and needs no hashing)."""
    return zlib.crc32(instance_id.encode("utf-8", "surrogatepass"))


#: Packed in place of empty shared data (a dict subclass, which msgpack packs slowly).
_NO_MAP: dict[Any, Any] = {}
#: Packed where headers written before the records of the compensations that ran named the
#: steps compensated (see :func:`_compensations`): a cursor without names says records tell.
_NO_NAMES = ()


#: Largest encoded shared data: what the header holds besides it is small.
MAX_DATA_BYTES = MAX_SNAPSHOT_BYTES - (1 << 20)


def check_data(state: InstanceState, ended: str | None = None) -> None:
    """Check, as a step execution ends, that the shared data can still be stored; it is
    remembered as it is now. If it cannot (a value put into ``ctx.data`` that msgpack refuses,
    or many values each under the limit that together pass it), the data goes back to what it
    was at the last check, and :class:`UnencodableValueError` (or :class:`ValueTooLargeError`)
    names what was wrong: that step fails, and its checkpoint can still be written. A value
    another lane's step that has not ended holds (see :func:`~trioflow._shared_data.held`;
    ``ended``: the key of the lane whose step ended, ``None``: a hook's) is left to that step, which may
    take it out before it ends, and is checked then: if it is all that is wrong, nothing
    changes now."""
    data = state.data
    if not data:
        state.good_data = None
        return
    try:
        packed: bytes = _packer.pack(data)
        if packed != state.good_data:  # changed since the last check: it must also read back
            if len(packed) > MAX_DATA_BYTES:
                raise ValueTooLargeError(
                    f"the shared data is {len(packed) / 2**20:.1f} MiB encoded, over the {MAX_DATA_BYTES >> 20} MiB"
                    " limit; keep large values out of ctx.data (in a step's output, or outside the workflow)")
            try:
                _read(packed)
                _check_depth(data, len(packed))
            except Exception:
                for key, value in data.items():
                    check_encodable(value, f"shared data[{key!r}]")
                check_encodable(data, "shared data")  # its keys (a tuple does not read back as one)
                raise
    except Exception as exc:
        _packer.reset()
        bad = unstorable_keys(data)
        kept = [key for key in bad if held(data, key, state.lanes, ended=ended)]
        if bad and len(kept) == len(bad):
            return
        error = exc if isinstance(exc, UnencodableValueError) else UnencodableValueError(
            _locate(state, (("shared data", data),)))
        if kept:  # name a value this step is to blame for, not one a running sibling holds
            error = _unstorable_value(data, next(key for key in bad if key not in kept)) or error
        restore_data(state, keep=kept)
        if error is exc:
            raise
        raise error from exc
    state.good_data = packed


def _unwrapped(value: Any) -> Any:
    """What :data:`_HEADROOM` wrapped, read back."""
    for _ in range(_DEPTH_HEADROOM):
        value = value[0]
    return value


def _check_depth(value: Any, size: int) -> None:
    """Raise ``ValueError`` (msgpack's "recursion limit") if ``value``, ``size`` bytes packed,
    is nested too deeply to be stored inside a snapshot. Every level of nesting takes at least
    a byte, so only values at least this large can be: they are packed again wrapped in the
    headroom the snapshot needs."""
    if size > _MAX_DEPTH:
        wrapped = value
        for _ in range(_DEPTH_HEADROOM):
            wrapped = [wrapped]
        _pack(wrapped)


def encode_payload(value: Any, what: str) -> bytes:
    """A value stored on its own (a signal's payload); :class:`UnencodableValueError` naming
    ``what`` if it cannot be stored. (Packed once: the check reads back these very bytes.)"""
    if value is None or type(value) in _SCALARS:
        as_stored(value, what)  # (an int outside 64 bits)
        packed: bytes = _pack(value)
        return packed
    return _checked(value, what)[0]


def decode_payload(data: bytes) -> Any:
    """The value of :func:`encode_payload`'s bytes."""
    return _unpack(data, "signal payload")


def parent_named_in(start: bytes | None) -> str | None:
    """The parent a stored start record names, read on its own (``None``: none, or it cannot
    be read): a child whose header cannot be read still has a parent that waits for its end."""
    try:
        raw = _unpack(start, "start record") if start is not None else None
    except SnapshotDecodeError:
        return None
    if isinstance(raw, list) and len(raw) in (8, 9) and raw[0] == START_TAG and isinstance(raw[7], str):
        return raw[7]
    return None


def same_value(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same value once stored: a tuple and a list with the same
    items are, and dicts whatever their keys' order; ``1``, ``1.0`` and ``True`` are not, as
    they read back as themselves. A value that cannot be stored is the same as nothing."""
    try:
        return _same(_read(_pack(a)), _read(_pack(b)))
    except Exception:
        return False


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same(value, b[key]) for key, value in a.items())
    if type(a) is list:
        return len(a) == len(b) and all(map(_same, a, b))
    try:
        return bool(a == b) or (a != a and b != b)  # NaN is the same as NaN
    except ArithmeticError:  # (a Decimal's signalling NaN refuses ==: the same only as itself)
        return bool(a.compare_total(b) == 0)


def remember_data(state: InstanceState) -> None:
    """Take the shared data as it is now as the last good one (a new or decoded instance)."""
    state.good_data = _packer.pack(state.data) if state.data else None


def copied(state: InstanceState) -> InstanceState:
    """A copy of ``state`` holding none of its values, as a restart would read it back: each
    part encoded and decoded on its own, as storage holds them (a history of many large
    outputs is no more refused here than there)."""
    return decode(encode_start(state), encode_header(state), [encode_record(r) for r in state.records])


def copied_view(state: InstanceState) -> InstanceState:
    """:func:`copied` for a view of a live instance: scratch values a running step holds in the
    shared data (a connection, say) show as the data stood at the last check, as a restart
    would read it, rather than fail the view. ``state`` itself is left as it is."""
    try:
        return copied(state)
    except UnencodableValueError:
        held = state.data
        state.data = {} if state.good_data is None else _read(state.good_data)
        try:
            return copied(state)
        finally:
            state.data = held


def detached(state: InstanceState) -> InstanceState:
    """``state`` to build a view from that shares with it, and with any other view of it, no
    value a caller may change: ``state`` itself when its values (input, output, shared data,
    each record's input and output) are all ``None``, numbers, text or bytes, as in most
    instances; else :func:`copied_view` of it. For an ended run's state, whose view each
    ``wait()`` caller gets (one that redacts its own must not redact another's)."""
    # (Inline type checks, no call per value: wait() asks this once per instance.)
    unchanging = _UNCHANGING
    if type(state.input) not in unchanging or type(state.output) not in unchanging:
        return copied_view(state)
    if state.data:
        for value in state.data.values():
            if type(value) not in unchanging:
                return copied_view(state)
    for r in state.records:
        if type(r.input) not in unchanging or type(r.output) not in unchanging:
            return copied_view(state)
    return state


#: The types of the values a view may share with the state it is of: none can be changed in
#: place (a tuple, a date, ... are not listed, to keep the check a set lookup: copied too).
_UNCHANGING = frozenset({type(None), *_PLAIN})


def unstorable_keys(data: dict[str, Any]) -> list[str]:
    """The keys of the shared data whose values (or the keys themselves) cannot be stored."""
    return [key for key, value in data.items() if not _storable(key, value)]


def _unstorable_value(data: dict[str, Any], key: str) -> UnencodableValueError | None:
    """The error naming what in ``data[key]`` cannot be stored (``None``: it can, alone)."""
    try:
        check_encodable({key: data[key]}, "shared data")
    except UnencodableValueError as exc:
        return exc
    return None


def storable_data(state: InstanceState) -> dict[str, Any]:
    """The shared data as a checkpoint stores it while a running step holds a value there that
    cannot be stored: that value as it was at the last check (or left out), the others as they
    are. ``state.data`` itself is left as it is, for the step that holds the value."""
    good = {} if state.good_data is None else _read(state.good_data)
    bad = unstorable_keys(state.data)
    if not bad:  # too large as a whole: as it stood at the last check
        return good
    return {key: value if key not in bad else good[key] for key, value in state.data.items()
            if key not in bad or key in good}


def restore_data(state: InstanceState, keep: Sequence[str] = ()) -> None:
    """Put back what in the shared data cannot be stored: each such value goes back to what it
    was at the last check (see :func:`check_data`), or goes if it was not there. Other values
    stay, a running sibling branch's among them, and so do those in ``keep`` (held by a step
    that has not ended); only when the data is too large as a whole does every value changed
    since the last check go back."""
    good = {} if state.good_data is None else _read(state.good_data)
    data = state.data
    bad = unstorable_keys(data)
    if not bad:
        bad = [key for key, value in data.items() if key not in good or not same_value(value, good[key])]
    for key in bad:
        if key in keep:
            continue
        if key in good:
            dict.__setitem__(data, key, good[key])  # (put back, not set by the lane that runs this)
        else:
            del data[key]


def _storable(key: Any, value: Any) -> bool:
    try:
        check_encodable({key: value}, "")
    except UnencodableValueError:
        return False
    return True


def encode_record(r: StepResult) -> bytes:
    """One step execution, encoded once, when it ends. Raises :class:`UnencodableValueError`
    naming the step's output or input (and the path inside it) when it cannot be stored: that
    fails the step."""
    return _encode_record(r)[0]


def _encode_record(r: StepResult, output_as_stored: bool = False) -> tuple[bytes, list[Any] | None]:
    """:func:`encode_record`, and the record's fields read back if a value in it is a
    container (it is read back to check it then): ``None`` if not. ``output_as_stored``: the
    output was read from storage (a signal's payload), so it reads back as it is."""
    input = None if r.input_is_workflow_input else r.input
    output = None if r.passes is not None else r.output
    try:
        packed: bytes = _packer.pack((
            r.seq, r.lane, r.step_name, r.execution, r.status, r.input_is_workflow_input, input, output, r.passes,
            r.error, r.started_at, r.completed_at, r.attempts, r.error_name, r.cause,
        ))
    except (TypeError, ValueError, OverflowError) as exc:
        _packer.reset()
        raise UnencodableValueError(_locate_in_record(r, input, output)) from exc
    if len(packed) > MAX_VALUE_BYTES or not (
        (output is None or output_as_stored or type(output) in _PLAIN) and (input is None or type(input) in _PLAIN)
    ):
        values = ((f"output of step {r.step_name!r}", output), (f"input of step {r.step_name!r}", input))
        try:
            if len(packed) > MAX_VALUE_BYTES:
                # The limit is per value, and a record holds two: one over it is named here.
                for what, value in values:
                    check_encodable(value, what)
            # Values that packed may still not read back (a dict key that is a tuple): one
            # unpack of the record finds out, and the per-value check below names the culprit.
            # A record that can hold a value nested past the limit (each level takes a byte) is
            # read back inside the headroom a snapshot needs: stored without it, it would read
            # back here and fail every later step that reads it.
            fields: list[Any] = _read(packed) if len(packed) <= _MAX_DEPTH else _unwrapped(_read(_HEADROOM + packed))
        except Exception as exc:
            for what, value in values:
                check_encodable(value, what)
            if isinstance(exc, msgpack.StackError):  # (within the packer's limit, past the reader's)
                raise UnencodableValueError(f"a value of step {r.step_name!r} is nested too deeply to be stored"
                                            " (about 890 levels at most)") from exc
            raise
        return packed, fields
    return packed, None


def stage(state: InstanceState, record: StepResult, output_as_stored: bool = False) -> StepResult:
    """Encode ``record`` (about to be added to ``state``) into the staging list; returns it as
    a restart would read it back (its output and input as stored: a tuple as a list, a copy of
    a container), for the run to go on with (``output_as_stored``: its output was read from
    storage, and is handed on as it is). Raises :class:`UnencodableValueError` naming the
    value, and then stages nothing."""
    packed, fields = _encode_record(record, output_as_stored)
    if isinstance(state.staged, list):
        state.staged.append(packed)
    else:
        state.staged = [packed]
    if fields is None:
        return record
    return with_values(
        record,
        output=record.output if record.passes is not None or output_as_stored else fields[7],
        input=record.input if record.input_is_workflow_input else fields[6],
    )


def take_changes(state: InstanceState) -> tuple[bytes, Sequence[bytes], int, bytes | None, Sequence[int]]:
    """What the next checkpoint of ``state`` writes (see ``Adapter.checkpoint``): the
    header, the staged records (taken out of the state: records staged from now on go with
    the next checkpoint), their first seq, the start bytes if they are not stored yet, and the
    seqs of the signals consumed since the last checkpoint.
    Call :func:`taken` once they are stored, or :func:`not_taken` if the write failed."""
    header = encode_header(state)  # first: if it raises, nothing is taken
    start = None if state.start_stored else encode_start(state)
    records, state.staged = state.staged, ()
    consumed, state.consumed = state.consumed, ()
    first_seq = state.stored + state.inflight
    state.inflight += len(records)
    return header, records, first_seq, start, consumed


def take_changes_holding(state: InstanceState) -> tuple[bytes, Sequence[bytes], int, bytes | None, Sequence[int]]:
    """:func:`take_changes` when the shared data cannot be stored as it is (changed in place
    since the last step ended): a value a step's callable holds now stays in ``state.data``,
    for that step, and the header holds :func:`storable_data`; any other goes back to what it
    was at the last check (one a failed attempt left, say)."""
    data = state.data
    restore_data(state, keep=[key for key in unstorable_keys(data) if held(data, key, state.lanes, calling=True)])
    state.data = storable_data(state)
    try:
        return take_changes(state)
    finally:
        state.data = data


def take_changes_with_data(
    state: InstanceState, data: bytes | None,
) -> tuple[bytes, Sequence[bytes], int, bytes | None, Sequence[int]]:
    """:func:`take_changes` with the shared data stored as ``data`` (packed, as
    :func:`check_data` remembers it; ``None``: empty) rather than as it is now: a checkpoint
    made while a step runs on the main line stores the data as it was before that step, not
    what the step has half done. ``state.data`` is left as it is."""
    live = state.data
    state.data = {} if data is None else _read(data)
    try:
        return take_changes(state)
    finally:
        state.data = live


def taken(state: InstanceState, count: int) -> None:
    """``count`` records taken by :func:`take_changes` are stored."""
    state.inflight -= count
    state.stored += count
    state.start_stored = True


def not_taken(state: InstanceState, records: Sequence[bytes], consumed: Sequence[int] = ()) -> None:
    """A write of records taken by :func:`take_changes` failed: they (and the signals it
    consumed) go back to the front, for the next checkpoint."""
    state.inflight -= len(records)
    state.staged = [*records, *state.staged]
    if consumed:
        state.consumed = [*consumed, *state.consumed]


def encode_whole(state: InstanceState) -> bytes:
    """An instance in one blob (start, header, every record), for the transaction ledger."""
    records = [encode_record(r) for r in state.records]
    packed: bytes = _packer.pack((encode_start(state), encode_header(state), records))
    return packed


def decode_whole(data: bytes) -> InstanceState:
    """The state of :func:`encode_whole`'s blob."""
    raw = _unpack(data, "recorded instance")
    if not (isinstance(raw, list) and len(raw) == 3 and all(isinstance(p, bytes) for p in raw[:2])
            and isinstance(raw[2], list)):
        raise SnapshotDecodeError("a recorded instance must be its start, header and records")
    return decode(raw[0], raw[1], raw[2])


def check_encodable(value: Any, what: str) -> None:
    """Raise :class:`UnencodableValueError` naming ``what`` (and the path inside it) unless
    ``value`` can be stored."""
    as_stored(value, what)


def as_stored(value: Any, what: str) -> Any:
    """``value`` as storage gives it back (a tuple as a list, ...: a copy of a container, the
    value itself otherwise), so that a run goes on with what a restarted run would read.
    Raises :class:`UnencodableValueError` naming ``what`` (and the path inside it) if it
    cannot be stored."""
    kind = type(value)
    if value is None or kind in _SCALARS:
        if kind is int and not -(1 << 63) <= value < (1 << 64):
            raise UnencodableValueError(
                f"{what} is an int ({value}) outside 64 bits, which cannot be stored; store it as a str or a Decimal")
        return value
    if kind is dict and len(value) <= _FLAT_MOST and _flat(value):
        return dict(value)  # reads back as it is: a copy is all a round trip would make
    return _checked(value, what)[1]


#: Most keys, and most characters of text, of a dict :func:`as_stored` copies without packing
#: it (see :func:`_flat`): a larger one is packed, its size checked against the limit.
_FLAT_MOST = 16
_FLAT_TEXT_MOST = 4096


def _flat(value: dict[Any, Any]) -> bool:
    """Whether a dict reads back from storage as an equal dict of the same types, well within
    the size limit: a few ASCII string keys (any other text may not encode), and values that
    are ``None``, bools, floats, ints within 64 bits or short ASCII strings. Most inputs and
    small outputs are: copied at every step that asks for them, they are copied without a
    round trip through msgpack."""
    text = 0
    for key, item in value.items():
        if type(key) is not str or not key.isascii():
            return False
        text += len(key)
        kind = type(item)
        if kind is str:
            if not item.isascii():
                return False
            text += len(item)
        elif kind is int:
            if not -(1 << 63) <= item < (1 << 64):
                return False
        elif item is not None and kind is not float and kind is not bool:
            return False
    return text <= _FLAT_TEXT_MOST


def _checked(value: Any, what: str) -> tuple[bytes, Any]:
    """``value`` packed, and read back from those bytes (see :func:`as_stored`)."""
    try:
        packed = _pack(value)
        size = len(packed)
        _check_depth(value, size)
    except ValueError as exc:
        if "recursion limit" in str(exc):
            raise UnencodableValueError(f"{what} is nested too deeply to be stored (about 890 levels at most)") from exc
        raise UnencodableValueError(_describe(what, value, exc)) from exc
    except (TypeError, OverflowError) as exc:
        raise UnencodableValueError(_describe(what, value, exc)) from exc
    if size > MAX_VALUE_BYTES:
        raise ValueTooLargeError(f"{what} is {size / 2**20:.1f} MiB encoded, over the {MAX_VALUE_BYTES >> 20} MiB limit")
    if type(value) is str or type(value) is bytes:
        return packed, value
    return packed, _readable(packed, what, value)


def _readable(packed: bytes, what: str, value: Any) -> Any:
    """``packed`` read back. Refuses a value that packs but cannot be unpacked: a dict key that
    is a tuple packs as an array, which unpacks as a list, which cannot be a key. Stored, it
    would make the whole snapshot unreadable (``get_instance`` and resume would fail), so it is
    refused up front."""
    try:
        return _read(packed)
    except Exception as exc:
        path, key = _find_unreadable_key(value, "")
        raise UnencodableValueError(
            f"{what}{path} has a dict key of type {type(key).__name__} ({safe_repr(key)}), which would be stored"
            " as a list and could not be read back as a key; use a string, number or bytes key"
        ) from exc


def _find_unreadable_key(value: Any, path: str) -> tuple[str, Any]:
    """The path to the first dict whose key is a list or tuple, and that key."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, (list, tuple)):
                return path, k
            found = _find_unreadable_key(v, f"{path}[{safe_repr(k)}]")
            if found[0] or found[1] is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _find_unreadable_key(v, f"{path}[{i}]")
            if found[0] or found[1] is not None:
                return found
    return "", None


def decode_stored(stored: Stored) -> InstanceState:
    """The state of a stored instance (see :func:`decode`)."""
    return decode(stored.start, stored.header, stored.records)


def decode(start: bytes | None, header: bytes, records: Sequence[bytes] = ()) -> InstanceState:
    """Rebuild the state from its stored bytes, or raise :class:`SnapshotDecodeError`.

    ``start`` is ``None`` for an instance stored in format 1, whose one snapshot is ``header``.
    """
    raw_header = _unpack(header, "header")
    if isinstance(raw_header, list) and len(raw_header) >= 2 and raw_header[0] == TAG:
        _version(raw_header[1], 1, 1)
        state = _fields_guarded(_state_v1, raw_header)
    else:
        state = _fields_guarded(_state_v2, _unpack_start(start, raw_header), raw_header,
                                [_unpack(r, "step record") for r in records] if records else [])
    _check_times_and_main(state.created_at, state.started_at, state.completed_at, state.status, state.lanes)
    remember_data(state)
    return state


@attrs.frozen(kw_only=True)
class StoredHead:
    """What a row's start and header say, its records left unread (:func:`decode_head`): the
    instance's start, its status, how many records it has and what its lanes wait for. Enough
    for a look that must not cost what the instance ran: an idempotent start of an instance
    that has ended, a signal to a parked instance that waits for another."""

    instance_id: str
    workflow_name: str
    status: Status
    input: Any
    created_at: float
    parent_id: str | None
    runs: int
    #: How many records the header counts (its row's records are not read).
    records: int
    #: What each lane that waits waits for (a header lists every such lane in full: see
    #: ``trioflow._header_lanes.written_lanes``); ``None`` when only the records tell it all (a
    #: wait for a child named by its start record, or a format-1 row).
    waits: tuple[dict[str, Any], ...] | None


def decode_head(stored: Stored) -> StoredHead:
    """The :class:`StoredHead` of a stored row, validated as :func:`decode` validates its start
    and header (or :class:`SnapshotDecodeError`); its records are neither read nor checked,
    so a row read without them (``load_head``) will do."""
    raw_header = _unpack(stored.header, "header")
    if isinstance(raw_header, list) and len(raw_header) >= 2 and raw_header[0] == TAG:
        # Format 1: one snapshot holds it all, records included (rows of long ago: decoded whole).
        state = decode(stored.start, stored.header, stored.records)
        return StoredHead(instance_id=state.instance_id, workflow_name=state.workflow_name, status=state.status,
                          input=state.input, created_at=state.created_at, parent_id=state.parent_id, runs=state.runs,
                          records=len(state.records), waits=None)
    return _fields_guarded(_head_v2, _unpack_start(stored.start, raw_header), raw_header)


def _unpack_start(start: bytes | None, raw_header: Any) -> Any:
    """The start of a row in format 2 or later, unpacked, its tag and its header's checked."""
    if start is None:
        raise SnapshotDecodeError("data is not a trioflow instance (no start record, and no format-1 snapshot)")
    raw_start = _unpack(start, "start record")
    for raw, tag in ((raw_start, START_TAG), (raw_header, HEADER_TAG)):
        if not isinstance(raw, list) or len(raw) < 2 or raw[0] != tag:
            raise SnapshotDecodeError(f"data is not a trioflow instance (missing {tag!r} tag)")
        _version(raw[1], 2, FORMAT_VERSION)
    return raw_start


def _check_times_and_main(
    created_at: Any, started_at: Any, completed_at: Any, status: str, lanes: Mapping[str, Any],
) -> None:
    """What every run reads, whatever the format: its times are compared and added to, and a
    live instance goes on from its main lane."""
    if not (_is_time(created_at) and (started_at is None or _is_time(started_at))
            and (completed_at is None or _is_time(completed_at))):
        _malformed("the instance's times are not numbers")
    if not (MAIN in lanes or status not in RESUMABLE):
        _malformed("a %s instance has no main lane", status)


def _head_v2(start: list[Any], header: list[Any]) -> StoredHead:
    iid, name, _, input, created_at, parent_id, runs = _start_fields(start)
    (status, _, _, _, _, lanes, _, _, _, _, _, _, _, started_at, completed_at, count, *_) = _header_fields(header, iid)
    if not (type(count) is int and count >= 0):
        _malformed("the header counts %r step records", count)
    _check_times_and_main(created_at, started_at, completed_at, status, lanes)
    waits: list[dict[str, Any]] = []
    told = True  # (not if a lane's wait is named by its start record: its child's ids are there)
    for key, fields in lanes.items():
        if not (isinstance(key, str) and isinstance(fields, list) and len(fields) >= 3):
            _malformed("lane %r is malformed", key)
        waiting = fields[3] if len(fields) > 3 else None
        if type(waiting) is int and waiting in (ChildWait.UNCHECKED, ChildWait.STORED):
            told = False
        elif waiting is not None:
            if not _well_formed_wait(waiting):
                _malformed("lane %r waits for something malformed", key)
            waits.append(waiting)
    return StoredHead(instance_id=iid, workflow_name=name, status=status, input=input, created_at=created_at,
                      parent_id=parent_id, runs=runs, records=count, waits=tuple(waits) if told else None)


def _is_time(value: Any) -> bool:
    # (NaN, a float, compares false with every time: a wait due then would never fall due.)
    return type(value) is int or type(value) is float and value == value


def _unpack(data: bytes, what: str) -> Any:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SnapshotDecodeError(f"a stored {what} must be bytes, got {type(data).__name__}")
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise SnapshotDecodeError(f"{what} of {len(data)} bytes exceeds the {MAX_SNAPSHOT_BYTES}-byte limit")
    try:
        return _read(data)
    except Exception as exc:
        # (msgpack's own errors often say nothing: their type does.)
        raise SnapshotDecodeError(f"{what} is not valid msgpack: {str(exc) or type(exc).__name__}") from exc


def _version(version: Any, lowest: int, highest: int) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or not lowest <= version <= highest:
        raise SnapshotDecodeError(
            f"snapshot format version {version!r} is not supported (this trioflow reads up to {FORMAT_VERSION})"
        )


_Built = TypeVar("_Built", InstanceState, "StoredHead")


def _fields_guarded(build: Callable[..., _Built], *fields: Any) -> _Built:
    try:
        return build(*fields)
    except SnapshotDecodeError:
        raise
    except Exception as exc:
        raise SnapshotDecodeError(f"snapshot fields are malformed: {type(exc).__name__}: {exc}") from exc


#: What a format-2 record or header written before errors had a name and a cause lacks.
_NO_NAME_NOR_CAUSE = (None, None)


def _start_fields(start: list[Any]) -> tuple[str, str, Any, Any, Any, str | None, int]:
    """A start's fields, checked: instance id, workflow name, fingerprint, input, creation
    time, parent id and run number."""
    (_, _, iid, name, fingerprint, input, created_at, parent_id, runs) = (
        start if len(start) == 9 else (*start, 0) if len(start) == 8 else (*start, None, 0))
    if not (parent_id is None or isinstance(parent_id, str)):
        _malformed("the parent id must be a string")
    if not (type(runs) is int and runs >= 0):
        _malformed("the run number must be an int >= 0")
    if not (isinstance(iid, str) and isinstance(name, str)):
        _malformed("instance id and workflow name must be strings")
    return iid, name, fingerprint, input, created_at, parent_id, runs


def _header_fields(header: list[Any], iid: str) -> tuple[Any, ...]:
    """A header's fields in every format from 2 on, those a look at its instance reads checked
    (that it is the row's, its status, errors and maps): status, phase, outcome, rolled back,
    data, lanes, error, failed step, compensated (format 2's list), compensated from,
    compensated names, compensation errors, skipped, started at, completed at, record count,
    error name, cause, and the lanes left out (moved on, item steps, branch starts)."""
    moved_on = item_next = starts = None
    if header[1] == 2:
        # Format 2's header: no mark, and a list of the executions compensated.
        (_, _, status, phase, outcome, rolled_back, data, lanes, error, failed_step, compensated, comp_errors,
         skipped, started_at, completed_at, count, error_name, cause) = header if len(header) == 18 else (
            *header, *_NO_NAME_NOR_CAUSE)
        compensated_from = compensated_names = None
    else:
        compensated = None  # (format 2's list: a cursor since)
        if header[1] == 3:  # the compensations that failed, in the header
            (_, _, mark, status, phase, outcome, rolled_back, data, lanes, error, failed_step, compensated_from,
             compensated_names, comp_errors, skipped, started_at, completed_at, count, error_name, cause) = header
        else:  # in records
            (_, _, mark, status, phase, outcome, rolled_back, data, lanes, error, failed_step, compensated_from,
             compensated_names, skipped, started_at, completed_at, count, error_name, cause,
             moved_on, item_next, starts) = header if len(header) == 22 else (*header, None) if len(header) == 21 \
                else (*header, None, None) if len(header) == 20 else (*header, None, None, None)
            comp_errors = NO_ERRORS
        if mark != iid and not (type(mark) is int and mark == instance_mark(iid)):
            # (The message is built only here: every row read passes this check.)
            _malformed("the row of instance %r holds the header of %s (copied from its row?)", iid,
                    f"instance {safe_repr(mark)}" if isinstance(mark, str) else "another instance")
    if not (status in STATUSES and phase in PHASES):
        _malformed("unknown status %r or phase %r", status, phase)
    if not (outcome is None or outcome in STATUSES):
        _malformed("unknown outcome %r", outcome)
    if phase == "compensating" and outcome not in _UNDOING:
        _malformed("an instance compensating for outcome %r", outcome)
    if not (isinstance(error, _TEXT_OR_NONE) and isinstance(error_name, _TEXT_OR_NONE)
            and isinstance(cause, _TEXT_OR_NONE) and isinstance(failed_step, _TEXT_OR_NONE)):
        _malformed("the instance's error or failed step is not text")
    if not (isinstance(data, dict) and isinstance(lanes, dict)):
        _malformed("malformed maps")
    return (status, phase, outcome, rolled_back, data, lanes, error, failed_step, compensated, compensated_from,
            compensated_names, comp_errors, skipped, started_at, completed_at, count, error_name, cause, moved_on,
            item_next, starts)


def _state_v2(start: list[Any], header: list[Any], records: list[Any]) -> InstanceState:
    iid, name, fingerprint, input, created_at, parent_id, runs = _start_fields(start)
    (status, phase, outcome, rolled_back, data, lanes, error, failed_step, compensated, compensated_from,
     compensated_names, comp_errors, skipped, started_at, completed_at, count, error_name, cause, moved_on, item_next,
     starts) = _header_fields(header, iid)
    if not (count == len(records)):
        _malformed("the header counts %r step records, %d are stored", count, len(records))
    state = new_instance_state(iid, name, str(fingerprint), status, input, SharedData(data), {}, created_at, started_at)
    state.phase, state.outcome, state.rolled_back, state.error = phase, outcome, bool(rolled_back), error
    state.failed_step, state.completed_at, state.error_name, state.cause = failed_step, completed_at, error_name, cause
    state.parent_id, state.runs = parent_id, runs
    if error is not None and error_name is None:
        state.error_name, state.cause = split_description(error)
    handled = []
    for seq, fields in enumerate(records):
        (r_seq, lane, step, execution, st, uses_input, s_in, s_out, passes, s_err, s_start, s_end, attempts,
         r_name, r_cause) = fields if len(fields) == 15 else (*fields, *_NO_NAME_NOR_CAUSE)
        if s_err is not None and r_name is None:
            r_name, r_cause = split_description(s_err)
        if not (r_seq == seq):
            _malformed("step record %d says it is record %r", seq, r_seq)
        if not (isinstance(step, str) and isinstance(lane, str)):
            _malformed("step record %d is malformed", seq)
        if not (isinstance(execution, int) and execution >= 1):
            _malformed("step record %d is malformed", seq)
        if not (st in STEP_STATUSES):
            _malformed("step record %d has unknown status %r", seq, st)
        if st == "started":
            # A start record says when an execution began, nothing more: earlier releases
            # stored its start time as its completion too, and an attempt (see new_execution).
            s_end, attempts = None, 0
        if passes is not None:
            if passes == PASSES_WORKFLOW_INPUT and type(passes) is int:
                s_out = input
            elif not (isinstance(passes, int) and 0 <= passes < seq):
                _malformed("step record %d passes on record %r", seq, passes)
            else:
                s_out = state.records[passes].output
        record = new_record(
            step_name=step, status=st, input=input if uses_input else s_in, output=s_out, error=s_err,
            started_at=s_start, completed_at=s_end, attempts=attempts,
            lane=lane, execution=execution, seq=seq, passes=passes, input_is_workflow_input=bool(uses_input),
            error_name=r_name, cause=r_cause,
        )
        state.add(record)
        if st in OF_COMPENSATIONS:
            handled.append(record)
    maps = False  # (whether a lane runs a map: most instances have none, and skip its checks)
    for key, fields in lanes.items():
        # A lane that waits (a timer, a signal) has a fourth field saying for what; one whose
        # step has a start record (a map, a child step), a fifth with its seq and a sixth saying
        # how far a map's items are.
        (step, last, failed, waiting, begun, fanout) = (*fields, None, None, None)[:6]
        if not (isinstance(key, str) and (step is None or isinstance(step, str))):
            _malformed("lane %r is malformed", key)
        count = len(records)
        # (None, most of them in a lane that waits: no call for it)
        if not ((last is None or _is_seq(last, count)) and (failed is None or _is_seq(failed, count))
                and (begun is None or _is_seq(begun, count))):
            _malformed("lane %r is malformed", key)
        if type(waiting) is int and waiting in (ChildWait.UNCHECKED, ChildWait.STORED):
            started = state.records[begun] if begun is not None else None
            _expect(started is not None and isinstance(started.output, str) and started.started_at is not None,
                    "lane %r waits for a child its records do not name", key)
            assert started is not None
            waiting = child_wait(started.output, started.started_at if waiting == ChildWait.UNCHECKED else None)
        if not (waiting is None or _well_formed_wait(waiting)):
            _malformed("lane %r waits for something malformed", key)
        if fanout is not None:
            maps = True
            fanout = _map_progress(key, fanout)
        state.lanes[key] = new_lane(state, key, step, last=last, failed=failed, waiting=waiting, begun=begun,
                                    fanout=fanout)
    if moved_on is not None:
        _put_back_moved_on(state, moved_on)
    if item_next is not None:
        _expect(isinstance(item_next, dict) and all(isinstance(k, str) and (v is None or isinstance(v, str))
                                                    for k, v in item_next.items()), "malformed item steps")
        state.item_next = item_next
    if maps:
        _check_map_items(state)
        _put_back_items(state, item_next)
    if starts is not None:
        _put_back_branches(state, starts)
    # (Most instances have compensated and skipped nothing: no generator is made for those.)
    # (Format 4's headers hold none: the constant, checked by identity rather than as a Mapping.)
    if not (comp_errors is NO_ERRORS or isinstance(comp_errors, Mapping) and (
            not comp_errors or all(isinstance(q, int) and 0 <= q < len(records) for q in comp_errors))):
        _malformed("malformed compensation errors")
    if not (isinstance(skipped, list) and (not skipped or all(isinstance(name, str) for name in skipped))):
        _malformed("malformed skipped steps")
    state.skipped = tuple(skipped)
    state.stored = len(records)
    _compensations(state, handled, compensated, compensated_from, compensated_names, comp_errors)
    return state


def _compensations(
    state: InstanceState, handled: list[StepResult], listed: Any, cursor: Any, names: Any, errors: Mapping[int, str],
) -> None:
    """What was compensated, checked, into ``state`` (see ``InstanceState.compensated_from``):
    from the records of the compensations (``handled``) and the header's cursor alone; or, in
    a header written before the records of those that ran, from the cursor and the names of
    the steps compensated (formats 3 and 4) or format 2's list of the executions compensated
    (``listed``), and the errors of those that failed (formats 2 and 3: ``errors``; format 4:
    their records). What such a header says becomes records (see :func:`_as_records`)."""
    _index_compensations(state, handled)
    if errors and handled:
        _malformed("compensation errors both in the header and in records")
    if names is None:  # format 2's list
        _expect(not handled and isinstance(listed, list) and (
            not listed or all(isinstance(q, int) and 0 <= q < len(state.records) for q in listed)),
                "malformed compensation list")
        _listed_compensations(state, listed, dict(errors))
        return
    if not (isinstance(names, list) and (not names or all(isinstance(n, str) for n in names))):
        _malformed("malformed compensation cursor")
    if not names:  # the cursor alone: at the oldest execution the records of compensations name
        _expect(not errors and cursor == state.compensated_from, "malformed compensation cursor")
        return
    for done in handled:
        _expect(done.step_name in names, "step record %d records a %s of a step the header does not name",
                done.seq, _what(done))
    failed = dict(errors or state.compensation_errors)
    _expect(not state.compensations and cursor is not None and _is_seq(cursor, len(state.records))
            and all(q >= cursor for q in failed), "malformed compensation cursor")
    _as_records(state, _from_cursor(state, cursor, names, failed), {} if handled else failed)
    state.compensated_from = cursor


def _from_cursor(state: InstanceState, cursor: int, names: Collection[str], failed: Mapping[int, str]) -> list[int]:
    """The executions a cursor and names (see :func:`_compensations`) say were compensated,
    newest first: every completed one from the cursor on of a step named was handled, since
    compensation goes newest first, one execution at a time; those that did not fail."""
    return [r.seq for r in reversed(state.records[cursor:])
            if r.status == "completed" and r.step_name in names and r.seq not in failed]


def _index_compensations(state: InstanceState, handled: list[StepResult]) -> None:
    """The records of compensations (see ``InstanceState.compensations``), each checked: it
    follows the completed execution whose id it carries, the only one for that execution; and
    one written as its compensation ended (it has a time) names an execution older than every
    one named before it, as compensation goes newest first. (Those made from an older header's
    cursor and names, or errors, have no time: they follow the ones stored before, and may
    name newer executions.) The cursor is left at the oldest execution named."""
    if not handled:
        return
    completed = {(r.lane, r.step_name, r.execution): r.seq for r in state.records if r.status == "completed"}
    oldest = None
    for done in handled:
        seq = completed.pop((done.lane, done.step_name, done.execution), None)
        _expect(seq is not None and seq < done.seq and (
            done.status == "compensation_completed" or isinstance(done.error, str)),
                "step record %d records a %s of no completed execution", done.seq, _what(done))
        assert seq is not None
        _expect(oldest is None or seq < oldest or done.completed_at is None,
                "step record %d records a %s of an execution newer than one handled before it", done.seq, _what(done))
        note_compensation(state, seq, done)
        oldest = seq if oldest is None else min(oldest, seq)
    state.compensated_from = oldest


def _what(done: StepResult) -> str:
    """A record of a compensation, in words (for the messages of the checks above)."""
    return "failed compensation" if done.status == "compensation_failed" else "compensation that ran"


def _as_records(state: InstanceState, compensated: list[int], errors: Mapping[int, str]) -> None:
    """What an earlier format's header said was compensated (``compensated``), or failed to be
    (``errors``), as records of those compensations, newest first as they ran, staged for the
    instance's next checkpoint (a finished row is only read)."""
    records = []
    for seq in sorted({*compensated, *errors}, reverse=True):
        done = state.records[seq]
        record = (failed_compensation(done, errors[seq], len(state.records), None) if seq in errors
                  else completed_compensation(done, len(state.records), None))
        state.add(record)
        note_compensation(state, seq, record)
        records.append(encode_record(record))
    state.staged = [*state.staged, *records]


#: What each key of a lane's wait holds (see ``Lane.waiting``): the kernel computes with them,
#: so a damaged one fails its row here rather than the code that wakes it. Keys of another
#: release are left as they are.
_WAIT_FIELDS: dict[str, tuple[type, ...]] = {
    "timer": (int, float), "retry": (int, float), "start": (int, float), "since": (int, float),
    "timeout": (int, float, type(None)), "attempt": (int,), "signal": (str,), "child": (str,), "check": (int, float),
    "within": (int, float), "undo": (int,), "undo_attempt": (int,), "undo_at": (int, float),
    "error_name": (str,), "cause": (str,),
}


def _well_formed_wait(waiting: Any) -> bool:
    if not isinstance(waiting, dict):
        return False
    for key, value in waiting.items():  # (a loop, not all() over a generator: every wake reads one)
        kinds = _WAIT_FIELDS.get(key)
        # (A value of one of the kinds itself, as msgpack gives them back, passes at once: bool
        # is none of them.)
        if kinds is not None and (type(value) not in kinds and (not isinstance(value, kinds) or isinstance(value, bool))
                                  or type(value) is float and value != value):  # (NaN: a time never reached)
            return False
    # The keys a wait of each kind needs beside the one that names it (the kernel reads them).
    return not ("signal" in waiting and "timeout" not in waiting or "retry" in waiting and "attempt" not in waiting
                or "child" in waiting and "signal" not in waiting
                or "undo" in waiting and not _UNDO_KEPT <= waiting.keys())


#: What the main lane keeps of a compensation under way (see ``actors._task.attempt``).
_UNDO_KEPT = frozenset({"undo", "undo_attempt", "undo_at"})


def _is_seq(value: Any, count: int) -> bool:
    """Whether ``value`` is ``None`` or the seq of one of ``count`` records."""
    return value is None or (isinstance(value, int) and 0 <= value < count)


def _map_progress(key: str, fields: Any) -> MapProgress:
    # (A sixth field names the branch's first step; a header without it lists every item's lane.)
    (count, started, ended, ended_count, failed, first) = fields if len(fields) == 6 else (*fields, None)
    for n in (count, started, ended_count, failed):
        _expect(isinstance(n, int) and 0 <= n <= count, f"lane {key!r} holds a malformed map position")
    _expect(isinstance(ended, list) and len(ended) % 2 == 0 and all(isinstance(i, int) for i in ended)
            and ended == sorted(ended) and (not ended or ended[-1] <= started),
            f"lane {key!r} holds a malformed map position")
    _expect(first is None or isinstance(first, str), f"lane {key!r} holds a malformed map position")
    return MapProgress(count=count, started=started, ended=ended, ended_count=ended_count, failed=failed,
                       first=first)


def _check_map_items(state: InstanceState) -> None:
    """Each map position against the items its execution's start record stores (the run takes
    its items from there, by index), and every item lane against that count: damage that said
    more items would fail the run, fewer would drop items from its output, and a few bytes
    claiming millions would make a lane for each at every read."""
    lanes, records = state.lanes, state.records
    for key, lane in lanes.items():
        progress = lane.fanout
        if progress is None:
            continue
        start = records[lane.begun] if lane.begun is not None else None
        # (A lane whose map failed stands at no step, its position kept.)
        _expect(start is not None and start.status == "started" and lane.step in (None, start.step_name)
                and isinstance(start.input, list) and len(start.input) == progress.count,
                "lane %r holds a map position its start record's items do not match", key)
        assert start is not None
        items = item_lanes(start.step_name, item_scope(key))
        for other in lanes:
            index = index_under(other, items)
            _expect(index is None or index < progress.count, "lane %r is an item its map does not have", other)


def _put_back_moved_on(state: InstanceState, moved_on: Any) -> None:
    """The lanes a header names by the seq of their last record, grouped by the step each
    stands at (see :func:`encode_header`): each in the lane its record names."""
    _expect(isinstance(moved_on, dict), "malformed lanes moved on")
    lanes, records = state.lanes, state.records
    # Each must name the newest record that moved its lane on or began an execution in it: an
    # older one (damage) would put the lane back where it stood before, to run steps again.
    newest = {r.lane: r.seq for r in records if r.status in _MOVES_A_LANE}
    for step, seqs in moved_on.items():
        _expect((step is None or isinstance(step, str)) and isinstance(seqs, list), "malformed lanes moved on")
        for last in seqs:
            _expect(_is_seq(last, len(records)) and last is not None, "malformed lanes moved on")
            key = records[last].lane
            _expect(key != MAIN and key not in lanes, "lane %r is named twice", key)
            _expect(newest.get(key) == last, "lane %r is named by record %r, not by its newest", key, last)
            lanes[key] = new_lane(state, key, step, last=last)


_TEXT_OR_NONE = (str, type(None))

#: What an instance may be compensating for (``None``: a release that did not say).
_UNDOING = frozenset({None, *TERMINAL} - {"completed"})

#: The statuses of the records that move a lane on (see ``trioflow._decide.complete_step``) or
#: begin an execution in it (a map's or a child step's start record).
_MOVES_A_LANE = frozenset({"completed", "caught", "started"})


def _put_back_items(state: InstanceState, item_next: dict[str, str | None] | None) -> None:
    """The lanes of a map's items that a header naming its first branch step left out (see
    ``trioflow._header_lanes.written_lanes``): each item started and not ended that has no lane
    stands untouched at that step; unless, in a header that holds ``item_next``, it has a
    record since its map began: it then stands where the completed execution its newest
    record holds sent it."""
    lanes, records = state.lanes, state.records
    newest = None if item_next is None else {r.lane: r.seq for r in records if r.status in _MOVES_A_LANE}
    for key, lane in list(lanes.items()):
        progress = lane.fanout
        if progress is not None and progress.first is not None and lane.step is not None:
            scope = item_scope(key)
            assert lane.begun is not None  # (see _check_map_items)
            for index in progress.running():
                item = item_lane(lane.step, index, scope)
                if item in lanes:
                    continue
                last = None if newest is None else newest.get(item)
                if last is None or last < lane.begun:
                    lanes[item] = new_lane(state, item, progress.first)
                    continue
                assert item_next is not None
                record = records[last]
                _expect(record.status == "completed" and record.step_name in item_next,
                        "item lane %r is left out, but its newest record says nothing of where it stands", item)
                lanes[item] = new_lane(state, item, item_next[record.step_name], last=last)


def _put_back_branches(state: InstanceState, starts: Any) -> None:
    """The branch lanes of the running parallel steps whose start records ``starts`` names
    that the header left out (see ``trioflow._header_lanes.written_lanes``): each stands after
    its newest completed record since its step began, where that record's step sends it, or,
    with none, untouched at its first step."""
    lanes, records = state.lanes, state.records
    _expect(isinstance(starts, list) and bool(starts) and all(_is_seq(seq, len(records)) and seq is not None
                                                        for seq in starts), "malformed parallel starts")
    newest = {r.lane: r.seq for r in records if r.status in HAS_OUTPUT}
    for seq in starts:
        start = records[seq]
        found = layout(start)
        lane = lanes.get(start.lane)
        _expect(found is not None and lane is not None and lane.begun == seq and lane.step == start.step_name
                and lane.fanout is None, "record %d is not the start of a parallel step its lane runs", seq)
        assert found is not None
        branches, moves = found
        scope = item_scope(start.lane)
        for branch, first in branches:
            key = branch_lane(start.step_name, branch, scope)
            if key in lanes:
                continue
            last = newest.get(key)
            if last is None or last < seq:
                lanes[key] = new_lane(state, key, first)
                continue
            record = records[last]
            _expect(record.status == "completed" and record.step_name in moves,
                    "branch lane %r is left out, but its newest record says nothing of where it stands", key)
            lanes[key] = new_lane(state, key, moves[record.step_name], last=last)


def _state_v1(raw: list[Any]) -> InstanceState:
    """A format-1 snapshot: step results by name plus the completion order. Its records are
    rebuilt from those; neither they nor the start are stored yet, so the first checkpoint
    after a resume writes them all (and the instance is in format 2 from then on)."""
    (_, _, iid, name, fingerprint, status, input, data, lanes, results, completed, phase, outcome,
     output, error, failed_step, compensated, comp_errors, created_at, started_at, completed_at,
     rolled_back) = raw
    _expect(isinstance(iid, str) and isinstance(name, str), "instance id and workflow name must be strings")
    _expect(status in STATUSES and phase in PHASES, f"unknown status {status!r} or phase {phase!r}")
    _expect(outcome is None or outcome in STATUSES, f"unknown outcome {outcome!r}")
    _expect(phase != "compensating" or outcome in _UNDOING, f"an instance compensating for outcome {outcome!r}")
    _expect(isinstance(data, dict) and isinstance(lanes, dict) and isinstance(results, dict), "malformed maps")
    _expect(isinstance(completed, list) and isinstance(compensated, list), "malformed step lists")
    _expect(isinstance(comp_errors, dict), "malformed compensation errors")
    state = new_instance_state(iid, name, str(fingerprint), status, input, SharedData(data), {}, created_at, started_at)
    state.phase, state.outcome, state.rolled_back, state.error = phase, outcome, bool(rolled_back), error
    state.failed_step, state.completed_at, state.start_stored = failed_step, completed_at, False
    if error is not None:
        state.error_name, state.cause = split_description(error)
    # Completed steps in completion order, then the failed one(s); format 1 kept one result per
    # step name, so each step has one execution.
    order = [n for n in dict.fromkeys(completed) if n in results] + [n for n in results if n not in completed]
    skipped = []
    for step in order:
        (st, s_in, s_out, s_err, s_start, s_end, attempts) = results[step]
        _expect(st in STEP_STATUSES, f"step {step!r} has unknown status {st!r}")
        if st == "skipped":
            skipped.append(step)
            continue
        r_name, r_cause = split_description(s_err) if s_err is not None else _NO_NAME_NOR_CAUSE
        state.add(StepResult(
            step_name=step, status="completed" if st == "compensated" else st, input=s_in, output=s_out,
            error=s_err, started_at=s_start, completed_at=s_end, attempts=attempts,
            execution=1, seq=len(state.records), error_name=r_name, cause=r_cause,
        ))
    for key, (step, lane_output) in lanes.items():
        _expect(isinstance(key, str) and (step is None or isinstance(step, str)), f"lane {key!r} is malformed")
        # Format 1 kept each lane's output itself and no lane per step: the lane's last step is
        # the newest completed record with that output (an output-less lane has none).
        last = None
        if lane_output is not None:
            # The same value as read back, not ``==``: NaN is not equal to itself, and 1 == True.
            last = next((r.seq for r in reversed(state.records)
                         if r.status == "completed" and _same(r.output, lane_output)), None)
            _expect(last is not None, f"lane {key!r} holds an output no completed step produced")
        state.lanes[key] = new_lane(state, key, step, last=last)
    if status == "completed":
        _expect(MAIN in state.lanes and _same(state.output, output), "the output is not the main line's")
    # None of these records is stored in format 2 yet: staged now, the instance's first
    # checkpoint writes them all.
    state.staged = [encode_record(r) for r in state.records]
    newest = {r.step_name: r.seq for r in state.records}
    _expect(all(n in newest for n in compensated) and all(n in newest for n in comp_errors),
            "a compensated step has no result")
    _listed_compensations(state, [newest[n] for n in compensated], {newest[n]: e for n, e in comp_errors.items()})
    state.skipped = tuple(skipped)
    return state


def _listed_compensations(state: InstanceState, compensated: list[int], errors: dict[int, str]) -> None:
    """What an earlier format's header listed (the executions compensated, and those whose
    compensation failed), checked to be what a compensation pass handles, newest first, one
    at a time (see :func:`_from_cursor`), as records (see :func:`_as_records`)."""
    handled = sorted({*compensated, *errors}, reverse=True)
    if handled:
        names = {state.records[q].step_name for q in handled}
        _expect(set(_from_cursor(state, handled[-1], names, errors)) == set(compensated),
                "the executions listed compensated are not the newest ones")
    _as_records(state, compensated, errors)


def _expect(condition: bool, message: str, *args: Any) -> None:
    """Raise :class:`SnapshotDecodeError` unless ``condition``; ``message % args`` is formatted
    only then (decoding checks every field of every record it reads)."""
    if not condition:
        _malformed(message, *args)


def _malformed(message: str, *args: Any) -> NoReturn:
    """Raise :class:`SnapshotDecodeError` saying ``message % args``. (The checks every row read
    passes call it only once one fails, rather than :func:`_expect` with each: no call, no tuple
    of arguments, for a field that is well formed.)"""
    raise SnapshotDecodeError(f"snapshot fields are malformed: {message % args if args else message}")


def _locate(state: InstanceState, parts: tuple[tuple[str, Any], ...]) -> str:
    """Which of ``parts`` could not be encoded, for the error message."""
    for what, value in parts:
        try:
            _pack(value)
        except (TypeError, ValueError, OverflowError) as inner:
            return _describe(what, value, inner)
    return f"instance {state.instance_id!r} cannot be encoded"


def _locate_in_record(r: StepResult, input: Any, output: Any) -> str:
    for what, value in ((f"output of step {r.step_name!r}", output), (f"input of step {r.step_name!r}", input)):
        try:
            check_encodable(value, what)
        except UnencodableValueError as exc:
            return str(exc)
    return f"step record {r.id!r} cannot be encoded"


def _describe(what: str, value: Any, exc: BaseException) -> str:
    path, bad = _find(value, "")
    where = f"{what}{path}" if path else what
    kind = type(bad).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    if isinstance(bad, int):
        return (f"{where} is an int ({safe_repr(bad)}) outside 64 bits, which cannot be stored; store it as a str or a"
                " Decimal")
    if inspect.isawaitable(bad):
        # Nobody means to store one: an ``async def`` that returned ``helper(ctx)`` unawaited.
        return f"{where} is {article} {kind} ({safe_repr(bad)}), which cannot be stored: an await is missing where it was made"
    return (f"{where} is {article} {kind} ({safe_repr(bad)}), which cannot be stored ({exc}); convert it to a"
            f" supported type: None, bool, int, float, str, bytes, lists, dicts, or {SUPPORTED}")


def _find(value: Any, path: str) -> tuple[str, Any]:
    """The path to the first value msgpack refuses inside ``value``."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            for item, sub in ((k, f"{path}[key {safe_repr(k)}]"), (v, f"{path}[{safe_repr(k)}]")):
                try:
                    _pack(item)
                except (TypeError, ValueError, OverflowError):
                    return _find(item, sub)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            try:
                _pack(v)
            except (TypeError, ValueError, OverflowError):
                return _find(v, f"{path}[{i}]")
    return path, value
