"""Instance codec (a start, a header, one record per step execution): round trips,
refusals, constant-size headers, references instead of copies, and no code execution; format
2's headers read as format 3's."""

from __future__ import annotations

from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import trioflow as tf
from trioflow._codec import (
    FORMAT_VERSION,
    HEADER_TAG,
    START_TAG,
    TAG,
    as_stored,
    check_encodable,
    decode,
    encode_header,
    encode_record,
    encode_start,
    instance_mark,
    stage,
    take_changes,
    taken,
)
from trioflow._decide import (
    complete_step,
    new_execution,
    new_state,
    pending_compensations,
    record_compensated,
    record_compensation_failed,
)
from trioflow._snapshot import (
    PASSES_WORKFLOW_INPUT, InstanceState, StepResult, failed_compensation, new_instance_state, new_record, to_instance,
)

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)

WF = tf.workflow("w").task("a", job="j").task("b", job="j").build()


def ran(state: InstanceState, name: str, output: Any, next_step: str | None, **fields: Any) -> None:
    """Record a completed execution of step ``name`` on the main lane."""
    fields.setdefault("attempts", 1)
    record = new_execution(state, "", name, "completed", output=output, started_at=1.0, now=2.0, **fields)
    stage(state, record)  # as the actors do: each record is encoded once, when it is added
    complete_step(state, WF.lookup[name][0], record, next_step)


def round_trip(state: InstanceState) -> InstanceState:
    return decode(encode_start(state), encode_header(state), [encode_record(r) for r in state.records])


@given(input=values, output=values, data=st.dictionaries(st.text(max_size=5), values, max_size=3))
def test_state_round_trips(input: Any, output: Any, data: dict[str, Any]) -> None:
    state = new_state(WF, "id-1", input, 1.5)
    state.data.update(data)
    ran(state, "a", output, "b", input=input, attempts=2)
    again = round_trip(state)
    assert encode_header(again) == encode_header(state) and encode_start(again) == encode_start(state)
    assert again.latest["a"].output == output and again.latest["a"].attempts == 2
    assert again.latest["a"].input == input and again.latest["a"].id == "a#1"
    assert again.lanes[""].step == "b" and again.lane_output("") == output


def test_the_header_does_not_grow_with_the_steps_run() -> None:
    loop = tf.workflow("w").task("a", job="j").build()
    state = new_state(loop, "i", {"big": "x" * 1000}, 0.0)
    sizes = []
    for n in range(50):
        record = new_execution(state, "", "a", "completed", output={"n": n, "pad": "y" * 100}, started_at=0.0, now=1.0)
        complete_step(state, loop.steps[0], record, "a")
        sizes.append(len(encode_header(state)))
    assert max(sizes) - min(sizes) <= 2, sizes  # only the record count's own width may change
    assert sizes[-1] < 200, "no output and no input in the header"
    assert state.records[-1].id == "a#50" and state.records[-1].execution == 50


def test_pass_through_outputs_and_the_workflow_input_are_stored_by_reference() -> None:
    big = "z" * 10_000
    state = new_state(WF, "i", big, 0.0)
    ran(state, "a", {"payload": big}, "b", input=big, input_is_workflow_input=True)
    ran(state, "b", state.lane_output(""), None, passes=0)
    records = [encode_record(r) for r in state.records]
    assert all(len(r) < 200 for r in records[1:]) and len(records[0]) < 10_200
    again = round_trip(state)
    assert again.records[0].input == big and again.records[1].output == {"payload": big}


def test_a_record_passing_the_workflow_input_on_refers_to_it() -> None:
    """A choice, pass or wait step first on the main line passes the workflow input on: its
    record holds ``PASSES_WORKFLOW_INPUT``, not a copy, and reads back as that input; a
    reference to no record (below -1, or -1 as another type) is refused, not misread."""
    big = {"doc": "z" * 10_000}
    state = new_state(WF, "i", big, 0.0)
    ran(state, "a", big, "b", passes=PASSES_WORKFLOW_INPUT)
    assert len(encode_record(state.records[0])) < 200
    assert round_trip(state).records[0].output == big
    for wrong in (-2, -1.0):
        fields = msgpack.unpackb(encode_record(state.records[0]))
        fields[8] = wrong
        with pytest.raises(tf.SnapshotDecodeError, match=f"passes on record {wrong!r}"):
            decode(encode_start(state), encode_header(state), [msgpack.packb(fields)])


def test_checkpoint_changes_hold_only_what_is_not_stored() -> None:
    state = new_state(WF, "i", None, 0.0)
    ran(state, "a", 1, "b")
    _, records, first_seq, start, consumed = take_changes(state)
    assert (first_seq, len(records), start, tuple(consumed)) == (0, 1, None, ())
    taken(state, len(records))
    ran(state, "b", 2, None)
    _, records, first_seq, _, _ = take_changes(state)
    assert (first_seq, len(records)) == (1, 1)


def test_newer_format_version_is_refused() -> None:
    state = new_state(WF, "i", None, 0.0)
    raw = msgpack.unpackb(encode_header(state))
    raw[1] = FORMAT_VERSION + 1
    with pytest.raises(tf.SnapshotDecodeError, match=f"format version {FORMAT_VERSION + 1} is not supported"):
        decode(encode_start(state), msgpack.packb(raw))


def test_missing_records_are_detected() -> None:
    state = new_state(WF, "i", None, 0.0)
    ran(state, "a", 1, "b")
    with pytest.raises(tf.SnapshotDecodeError, match="counts 1 step records, 0 are stored"):
        decode(encode_start(state), encode_header(state), [])


@pytest.mark.parametrize("data", [b"", b"\xc1garbage", msgpack.packb({"a": 1}), msgpack.packb([TAG, 1, "short"]),
                                  msgpack.packb([HEADER_TAG, 2, "short"])])
def test_garbage_is_refused_with_snapshot_decode_error(data: bytes) -> None:
    start = encode_start(new_state(WF, "i", None, 0.0))
    with pytest.raises(tf.SnapshotDecodeError):
        decode(start, data)
    with pytest.raises(tf.SnapshotDecodeError):
        decode(data, encode_header(new_state(WF, "i", None, 0.0)))


def test_ext_types_are_never_interpreted() -> None:
    # A pickle payload hidden in an ext type stays inert: decoding refuses the shape, runs nothing.
    evil = msgpack.packb([START_TAG, 2, msgpack.ExtType(1, b"cos\nsystem\n(S'echo pwned'\ntR.")])
    with pytest.raises(tf.SnapshotDecodeError):
        decode(evil, encode_header(new_state(WF, "i", None, 0.0)))


def test_unencodable_value_names_the_path_and_what_to_do() -> None:
    class Money:
        pass

    with pytest.raises(tf.UnencodableValueError, match=r"workflow input\['order'\]\['total'\] is a Money .*"
                       r"convert it to a supported type"):
        check_encodable({"order": {"total": Money()}}, "workflow input")


def test_unencodable_state_names_the_part() -> None:
    state = new_state(WF, "i", None, 0.0)
    state.data["bad"] = {1, 2}
    with pytest.raises(tf.UnencodableValueError, match=r"shared data\['bad'\] is a set"):
        encode_header(state)


def test_an_unencodable_output_is_named_by_its_record() -> None:
    state = new_state(WF, "i", None, 0.0)
    record = new_execution(state, "", "a", "completed", output={"at": {1, 2}}, started_at=0.0, now=1.0)
    with pytest.raises(tf.UnencodableValueError, match=r"output of step 'a'\['at'\] is a set"):
        encode_record(record)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def test_values_nested_too_deeply_to_read_back_are_refused_up_front() -> None:
    with pytest.raises(tf.UnencodableValueError, match="workflow input is nested too deeply"):
        check_encodable(nested(1000), "workflow input")


def test_accepted_deep_values_read_back_inside_a_record() -> None:
    value = nested(850)
    check_encodable(value, "workflow input")
    state = new_state(WF, "i", value, 0.0)
    ran(state, "a", value, "b", input=value)
    assert round_trip(state).latest["a"].output == value


def test_decoding_never_blows_the_stack() -> None:
    with pytest.raises(tf.SnapshotDecodeError):
        decode(None, b"\x91" * 5000)


flat_dicts = st.dictionaries(
    st.text(max_size=8),
    st.none() | st.booleans() | st.integers(-(2**64), 2**65) | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.binary(max_size=4) | st.lists(st.integers(), max_size=2),
    max_size=20,
)


@given(value=flat_dicts)
def test_a_dict_is_handed_out_as_storage_reads_it_back(value: dict[str, Any]) -> None:
    """``as_stored`` (what a step is handed: its copy of the input, of an earlier output) gives
    what a round trip through storage gives, or the error storing it would: small flat dicts
    are copied without one."""
    try:
        packed = msgpack.packb(value, use_bin_type=True)
    except (ValueError, OverflowError, TypeError):
        with pytest.raises(tf.UnencodableValueError):
            as_stored(value, "v")
        return
    copy = as_stored(value, "v")
    assert copy is not value
    expected = msgpack.unpackb(packed, raw=False)
    assert copy == expected
    assert [(type(k), type(v)) for k, v in copy.items()] == [(type(k), type(v)) for k, v in expected.items()]


def test_a_large_flat_dict_is_refused_as_a_large_value_is() -> None:
    with pytest.raises(tf.ValueTooLargeError):
        as_stored({"text": "x" * (17 * 2**20)}, "workflow input")


@given(fields=st.fixed_dictionaries({}, optional={
    "input": values, "output": values, "error": st.none() | st.text(), "started_at": st.none() | st.floats(allow_nan=False),
    "completed_at": st.none() | st.floats(allow_nan=False), "attempts": st.integers(0, 9), "lane": st.text(max_size=5),
    "execution": st.integers(0, 9), "seq": st.integers(-1, 99), "passes": st.none() | st.integers(0, 9),
    "input_is_workflow_input": st.booleans(), "compensation_error": st.none() | st.text(),
    "error_name": st.none() | st.text(), "cause": st.none() | st.text(),
}), status=st.sampled_from(["completed", "failed", "caught", "started"]))
def test_the_fast_record_constructor_builds_what_step_result_builds(fields: dict[str, Any], status: str) -> None:
    """The engine builds records with new_record (faster than attrs' frozen __init__): the same
    value, field for field and default for default, and as frozen."""
    fast = new_record(step_name="s", status=status, **fields)  # type: ignore[arg-type]
    slow = StepResult(step_name="s", status=status, **fields)  # type: ignore[arg-type]
    assert attrs.asdict(fast, recurse=False) == attrs.asdict(slow, recurse=False)
    assert type(fast) is StepResult
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast.output = 1  # type: ignore[misc]


@given(fields=st.fixed_dictionaries({
    "instance_id": st.text(min_size=1), "workflow_name": st.text(min_size=1), "fingerprint": st.text(),
    "status": st.sampled_from(["pending", "running", "completed"]), "input": values,
    "data": st.dictionaries(st.text(max_size=5), values, max_size=3), "created_at": st.floats(allow_nan=False),
    "started_at": st.none() | st.floats(allow_nan=False),
}))
def test_the_fast_state_constructor_builds_what_instance_state_builds(fields: dict[str, Any]) -> None:
    """Starts and decodes build states with new_instance_state (faster than attrs' keyword
    __init__): the same value, field for field and default for default, with containers of its
    own (two states never share an index that grows)."""
    lanes: dict[str, Any] = {}
    fast = new_instance_state(lanes=lanes, **fields)
    slow = InstanceState(lanes=lanes, **fields)
    assert attrs.asdict(fast, recurse=False) == attrs.asdict(slow, recurse=False)
    assert type(fast) is InstanceState
    assert fast.executions is not new_instance_state(lanes=lanes, **fields).executions


UNDOABLE = tf.workflow("w").task("a", job="j", compensate="undo").task("b", job="j").build()


def looped(kinds: list[bool]) -> InstanceState:
    """An instance of :data:`UNDOABLE` that ran "a" (True) and "b" (False) in this order."""
    state = new_state(UNDOABLE, "i", None, 0.0)
    for n, undoable in enumerate(kinds):
        name = "a" if undoable else "b"
        record = new_execution(state, "", name, "completed", output=n, started_at=0.0, now=1.0)
        complete_step(state, UNDOABLE.lookup[name][0], record, name)
    state.phase, state.outcome = "compensating", "failed"
    return state


def fail_compensation(state: InstanceState, record: StepResult, error: str) -> None:
    """``record``'s compensation failed for good with ``error``, as the engine records it."""
    record_compensation_failed(state, record, failed_compensation(record, error, len(state.records), 1.0))


def executions(state: InstanceState) -> list[StepResult]:
    """``state``'s records without those of compensations (which come after them all)."""
    return [r for r in state.records if r.status not in ("compensation_failed", "compensation_completed")]


def as_format_3(state: InstanceState) -> list[Any]:
    """``state``'s header as format 3 wrote it (unpacked): the names of the steps compensated
    beside the cursor, in the order first handled, and the compensations that failed in it, by
    seq, rather than records of the compensations."""
    raw: list[Any] = msgpack.unpackb(encode_header(state), strict_map_key=False)
    raw[1] = 3
    raw[12] = list(dict.fromkeys(state.records[q].step_name for q in sorted(
        {*state.compensated, *state.compensation_errors}, reverse=True)))
    raw[13:13] = [dict(state.compensation_errors)]
    raw[17] = len(executions(state))  # the records counted
    return raw


def as_format_2(state: InstanceState) -> bytes:
    """``state``'s header as format 2 wrote it: no mark, and the list of executions compensated."""
    (tag, _, _, status, phase, outcome, rolled_back, data, lanes, error, failed_step, _, _, errors, *rest) = as_format_3(
        state)
    packed: bytes = msgpack.packb([tag, 2, status, phase, outcome, rolled_back, data, lanes, error, failed_step,
                                   list(state.compensated), errors, *rest])
    return packed


@given(kinds=st.lists(st.booleans(), max_size=12), handled=st.integers(0, 12), fails=st.sets(st.integers(0, 11)))
def test_what_was_compensated_round_trips_in_every_header_format(kinds: list[bool], handled: int, fails: set[int]) -> None:
    """Formats 2 and 3 kept the compensations that failed in the header; read, they become
    records (staged: the next checkpoint stores them) and the instance stands where it did."""
    state = looped(kinds)
    for n, record in enumerate(pending_compensations(state, UNDOABLE)[:handled]):
        if n in fails:
            fail_compensation(state, record, f"Broken: undo {n}")
        else:
            record_compensated(state, record)
    records = [encode_record(r) for r in state.records]
    older = [encode_record(r) for r in executions(state)]
    for header, stored in ((encode_header(state), records), (msgpack.packb(as_format_3(state)), older),
                           (as_format_2(state), older)):
        again = decode(encode_start(state), header, stored)
        assert again.compensated == state.compensated and again.compensation_errors == state.compensation_errors
        assert pending_compensations(again, UNDOABLE) == pending_compensations(state, UNDOABLE)
        assert encode_header(again) == encode_header(state)
        assert len(again.staged) == len(records) - len(stored), "an older header's errors go with the next checkpoint"
        assert [(r.id, r.error) for r in again.records if r.status == "compensation_failed"] == [
            (r.id, r.error) for r in state.records if r.status == "compensation_failed"], "newest first, as they failed"
    assert len(state.compensated) + len(state.compensation_errors) == min(handled, kinds.count(True))


def test_the_header_does_not_grow_with_the_compensations_that_fail() -> None:
    """Each failed compensation is a record of its own, appended; the header stays as it was."""
    state = looped([True] * 100)
    sizes = []
    for n, record in enumerate(pending_compensations(state, UNDOABLE)):
        fail_compensation(state, record, f"Broken: undo {n} " + "x" * 50)
        sizes.append(len(encode_header(state)))
    assert max(sizes) - min(sizes) <= 2, sizes  # only the cursor's and the count's own widths may change
    assert len(state.compensation_errors) == 100 and state.compensated == ()
    view = to_instance(state)
    assert len(view.history) == 100 and [r.compensation_error for r in view.history][:2] == [
        "Broken: undo 99 " + "x" * 50, "Broken: undo 98 " + "x" * 50]
    assert view.compensation_errors == {"a": "Broken: undo 0 " + "x" * 50}, "the newest execution's"


def test_the_header_does_not_grow_with_the_executions_compensated() -> None:
    state = looped([True, False] * 100)
    sizes = []
    for n, record in enumerate(pending_compensations(state, UNDOABLE)):
        record_compensated(state, record)
        sizes.append(len(encode_header(state)))
    assert max(sizes) - min(sizes) <= 2, sizes  # only the cursor's own width may change
    assert state.compensated == tuple(range(198, -1, -2))
    assert to_instance(state).compensated_steps == ("a",) * 100


def test_a_header_of_another_instance_is_refused() -> None:
    mine, theirs = new_state(WF, "mine", None, 0.0), new_state(WF, "theirs", None, 0.0)
    with pytest.raises(tf.SnapshotDecodeError, match="row of instance 'mine' holds the header of instance 'theirs'"):
        decode(encode_start(mine), encode_header(theirs))


def test_a_header_marked_with_a_crc_of_its_id_as_commit_7cb9446_wrote_is_read() -> None:
    """Format 3's first headers carried a CRC-32 of the id rather than the id: still read,
    and still refused on another instance's row."""
    state = new_state(WF, "mine", {"n": 1}, 0.0)
    ran(state, "a", 1, "b")
    raw = msgpack.unpackb(encode_header(state), strict_map_key=False)
    records = [encode_record(r) for r in state.records]
    raw[2] = instance_mark("mine")
    again = decode(encode_start(state), msgpack.packb(raw), records)
    assert again.lane_output("") == 1 and encode_header(again) == encode_header(state)
    raw[2] = instance_mark("theirs")
    with pytest.raises(tf.SnapshotDecodeError, match="row of instance 'mine' holds the header of another instance"):
        decode(encode_start(state), msgpack.packb(raw), records)


@pytest.mark.parametrize(("cursor", "names", "errors"), [
    (None, ["a"], {}), (0, [], {}), (5, ["a"], {}), (-1, ["a"], {}), (2, ["a"], {0: "Broken: x"}),
    (None, [], {0: "Broken: x"}), (0, [1], {}), (0, "a", {}),
])
def test_a_malformed_compensation_cursor_is_refused(cursor: Any, names: Any, errors: dict[int, str]) -> None:
    state = looped([True, False, True])
    raw = as_format_3(state)
    raw[11:14] = [cursor, names, errors]
    with pytest.raises(tf.SnapshotDecodeError, match="compensation"):
        decode(encode_start(state), msgpack.packb(raw), [encode_record(r) for r in state.records])
    # Format 4: the errors in records.
    for seq, error in errors.items():
        fail_compensation(state, state.records[seq], error)
    raw = msgpack.unpackb(encode_header(state), strict_map_key=False)
    raw[11:13] = [cursor, names]
    with pytest.raises(tf.SnapshotDecodeError, match="compensation"):
        decode(encode_start(state), msgpack.packb(raw), [encode_record(r) for r in state.records])


@pytest.mark.parametrize(("lane", "step", "execution", "error"), [
    ("", "a", 9, "Broken: x"), ("", "b", 1, "Broken: x"), ("other", "a", 1, "Broken: x"), ("", "a", 1, None),
])
def test_a_failed_compensation_of_no_completed_execution_is_refused(
        lane: str, step: str, execution: int, error: str | None) -> None:
    state = looped([True, True])
    state.compensated_from = 0
    bad = new_record(step_name=step, status="compensation_failed", lane=lane, execution=execution, error=error,
                     seq=len(state.records))
    records = [*(encode_record(r) for r in state.records), encode_record(bad)]
    raw = msgpack.unpackb(encode_header(state), strict_map_key=False)
    raw[16] = len(records)
    # The cursor with the names of the steps compensated (as format 4 wrote it before the
    # records of the compensations that ran), and alone.
    for raw[12] in (["a"], []):
        with pytest.raises(tf.SnapshotDecodeError, match="failed compensation of no completed execution"):
            decode(encode_start(state), msgpack.packb(raw), records)


def test_the_same_compensation_failing_twice_is_refused() -> None:
    state = looped([True, True])
    first = state.records[1]
    fail_compensation(state, first, "Broken: once")
    records = [encode_record(r) for r in state.records]
    twice = failed_compensation(first, "Broken: twice", len(records), 1.0)
    raw = msgpack.unpackb(encode_header(state), strict_map_key=False)
    raw[16] = len(records) + 1
    with pytest.raises(tf.SnapshotDecodeError, match="failed compensation of no completed execution"):
        decode(encode_start(state), msgpack.packb(raw), [*records, encode_record(twice)])
