"""Snapshot codec: round trips, refusals, and no code execution."""

from __future__ import annotations

import datetime
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import trioflow as tf
from trioflow._decide import complete_step, new_state
from trioflow.adapters._codec import FORMAT_VERSION, TAG, check_encodable, decode, encode

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)

WF = tf.workflow("w").task("a", job="j").task("b", job="j").build()


@given(input=values, output=values, data=st.dictionaries(st.text(max_size=5), values, max_size=3))
def test_state_round_trips(input: Any, output: Any, data: dict[str, Any]) -> None:
    state = new_state(WF, "id-1", input, 1.5)
    state.data.update(data)
    complete_step(state, "", WF.steps[0], output, "b", input=input, attempts=2, started_at=1.0, now=2.0)
    again = decode(encode(state))
    assert encode(again) == encode(state)
    assert again.step_results["a"].output == output and again.step_results["a"].attempts == 2
    assert again.lanes[""].step == "b"


def test_newer_format_version_is_refused() -> None:
    raw = msgpack.unpackb(encode(new_state(WF, "i", None, 0.0)))
    raw[1] = FORMAT_VERSION + 1
    with pytest.raises(tf.SnapshotDecodeError, match="format version 2 is not supported"):
        decode(msgpack.packb(raw))


@pytest.mark.parametrize("data", [b"", b"\xc1garbage", msgpack.packb({"a": 1}), msgpack.packb([TAG, 1, "short"])])
def test_garbage_is_refused_with_snapshot_decode_error(data: bytes) -> None:
    with pytest.raises(tf.SnapshotDecodeError):
        decode(data)


def test_ext_types_are_never_interpreted() -> None:
    # A pickle payload hidden in an ext type stays inert: decoding refuses the shape, runs nothing.
    evil = msgpack.packb([TAG, 1, msgpack.ExtType(1, b"cos\nsystem\n(S'echo pwned'\ntR.")])
    with pytest.raises(tf.SnapshotDecodeError):
        decode(evil)


def test_unencodable_value_names_the_path() -> None:
    with pytest.raises(tf.UnencodableValueError, match=r"workflow input\['order'\]\['when'\] is a datetime"):
        check_encodable({"order": {"when": datetime.datetime.now()}}, "workflow input")


def test_unencodable_state_names_the_part() -> None:
    state = new_state(WF, "i", None, 0.0)
    state.data["bad"] = {1, 2}
    with pytest.raises(tf.UnencodableValueError, match=r"shared data\['bad'\] is a set"):
        encode(state)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def test_values_nested_too_deeply_to_read_back_are_refused_up_front() -> None:
    with pytest.raises(tf.UnencodableValueError, match="workflow input is nested too deeply"):
        check_encodable(nested(1000), "workflow input")


def test_accepted_deep_values_read_back_inside_a_snapshot() -> None:
    value = nested(850)
    check_encodable(value, "workflow input")
    state = new_state(WF, "i", value, 0.0)
    complete_step(state, "", WF.steps[0], value, "b", input=value, attempts=1, started_at=0.0, now=1.0)
    assert decode(encode(state)).step_results["a"].output == value


def test_decoding_never_blows_the_stack() -> None:
    with pytest.raises(tf.SnapshotDecodeError):
        decode(b"\x91" * 5000)
