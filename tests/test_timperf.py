"""The cuts of the timers_firing session: what each keeps of the behaviour it made cheaper."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, strategies as st

import trioflow as tf
from trioflow import _codec, _context
from trioflow._context import WorkflowContext
from trioflow._shared_data import SharedData
from trioflow._snapshot import new_instance_state


_FLAT = st.dictionaries(
    st.text(max_size=8),
    st.none() | st.booleans() | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=False) | st.text(max_size=8),
    max_size=6,
)


def _context_of(value: Any) -> WorkflowContext:
    state = new_instance_state("i", "w", "f", "running", value, SharedData({}), {}, 0.0, 0.0)
    return WorkflowContext(state, lane="", total_steps=1, services={}, driver=None, encodable=_codec.check_encodable)


@given(_FLAT)
def test_a_step_copy_of_the_input_is_what_storage_gives_back(value: dict[str, Any]) -> None:
    # The codec's copier, kept once loaded, is the codec's own: the copy is a round trip's.
    ctx = _context_of(value)
    copied = ctx.input
    assert _context._as_stored is _codec.as_stored
    assert copied == _codec.decode_payload(_codec.encode_payload(value, "input"))
    assert copied is not value
    assert ctx.input is copied  # (one copy per step execution)


async def _change_in_place(data: dict[str, Any]) -> None:
    data["n"] = 99


async def _seen(data: dict[str, Any]) -> dict[str, Any]:
    return data


async def test_a_job_that_changes_its_input_in_place_changes_nothing_stored(
        autojump_clock: trio.testing.MockClock) -> None:
    async with tf.open_engine() as engine:
        engine.register(tf.workflow("w").task("a", job=_change_in_place).task("b", job=_seen).build())
        done = await engine.wait(await engine.start("w", {"n": 1}))
    assert done.status == "completed"
    assert done.output == {"n": 1}


@pytest.mark.parametrize("returned", [None, 0, "", False, []])
async def test_a_callback_result_other_than_a_coroutine_is_left_alone(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, returned: Any) -> None:
    seen: list[str] = []

    def callback(event: dict[str, Any]) -> Any:
        seen.append(event["event"])
        return returned

    async with tf.open_engine() as engine:
        engine.events.on("workflow.completed", callback)
        engine.register(tf.workflow("w").task("a", job=_seen).build())
        await engine.wait(await engine.start("w", {}))
    assert seen == ["workflow.completed"]
    assert "returned a coroutine" not in caplog.text


async def test_a_callback_that_returns_a_coroutine_still_has_it_closed(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    async def later(event: dict[str, Any]) -> None:
        pass

    with caplog.at_level(logging.WARNING):
        async with tf.open_engine() as engine:
            engine.events.on("workflow.completed", lambda e: later(e))
            engine.register(tf.workflow("w").task("a", job=_seen).build())
            await engine.wait(await engine.start("w", {}))
    assert "returned a coroutine, which was not run" in caplog.text
