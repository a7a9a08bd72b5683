"""A signal that no receive step of its instance's workflow takes (a misspelt name) is stored as
any signal is, and ``signal()`` warns of it on the ``trioflow`` logger, naming the signal, the
workflow and the names it does take: the instance would otherwise wait for ever without a word.
Said whether the instance runs here or waits parked out of memory; not for a name a branch's
or a map item's receive step takes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import SQLiteAdapter


def _untaken(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "trioflow" and "no receive step" in r.getMessage()]


async def test_a_misspelt_signal_is_stored_and_warned_of_naming_what_the_workflow_takes(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    wf = tf.workflow("expense").receive("approval", signal="approved").build()
    adapter = tf.adapters.MemoryAdapter()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("expense")
        with caplog.at_level(logging.WARNING, logger="trioflow"):
            await engine.signal(iid, "aproved", {"by": "kim"})
            await engine.signal(iid, "approved", {"by": "lee"})
        done = await engine.wait(iid)
    assert done.status == "completed" and done.output == {"by": "lee"}
    [warning] = _untaken(caplog)
    assert warning.levelno == logging.WARNING
    message = warning.getMessage()
    assert "'aproved'" in message and "'expense'" in message and "['approved']" in message and iid in message
    assert warning.instance_id == iid and warning.workflow_name == "expense"  # type: ignore[attr-defined]
    # Stored all the same (a later release may take it): it is still there, untaken.
    assert [name for _, name, _ in await adapter.signals(iid)] == ["aproved"]


async def test_the_warning_comes_for_an_instance_parked_out_of_memory_on_sqlite(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    wf = tf.workflow("expense").receive("approval", signal="approved").build()
    async with tf.open_engine(adapter=SQLiteAdapter(tmp_path / "s.db")) as engine:
        engine.register(wf)
        iid = await engine.start("expense")
        await trio.sleep(60)  # it leaves memory (PARK_AFTER)
        assert iid not in engine._live
        with caplog.at_level(logging.WARNING, logger="trioflow"):
            await engine.signal(iid, "Approved")
            await engine.signal(iid, "approved", idempotency_key="k1")
            await engine.signal(iid, "nope", idempotency_key="k2")
            await engine.signal(iid, "nope", idempotency_key="k2")  # (the same again: stored once, said once)
        assert (await engine.wait(iid)).status == "completed"
    assert sorted(r.args[0] for r in _untaken(caplog)) == ["Approved", "nope"]  # type: ignore[index]


async def test_no_warning_for_a_name_a_branch_or_a_map_item_takes(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    branch = tf.branch("item").receive("ok", signal="item-ok").build()
    wf = (tf.workflow("w")
          .parallel("both", branches=[tf.branch("a").receive("wait-a", signal="a-ok").build(),
                                      tf.branch("b").wait("pause", seconds=1).build()])
          .map("each", items=lambda ctx: [1], branch=branch)
          .build())
    async with tf.open_engine() as engine:
        engine.register(wf)
        iid = await engine.start("w")
        with caplog.at_level(logging.WARNING, logger="trioflow"):
            await engine.signal(iid, "a-ok")
            await engine.signal(iid, "item-ok")
            assert (await engine.wait(iid)).status == "completed"
            await trio.sleep(0)
    assert _untaken(caplog) == []


async def test_a_workflow_with_no_receive_step_says_it_has_none(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    async def hold(ctx: object) -> None:
        await trio.sleep(10)

    wf = tf.workflow("plain").step("hold", hold).build()
    async with tf.open_engine() as engine:
        engine.register(wf)
        iid = await engine.start("plain")
        with caplog.at_level(logging.WARNING, logger="trioflow"):
            await engine.signal(iid, "go")
        assert (await engine.wait(iid)).status == "completed"
    [warning] = _untaken(caplog)
    assert "(it has none)" in warning.getMessage()


def test_a_definition_lists_the_signals_its_receive_steps_take() -> None:
    wf = (tf.workflow("w").receive("first", signal="one")
          .parallel("p", branches=[tf.branch("a").receive("second", signal="two").build(),
                                   tf.branch("b").receive("third", signal="one").build()])
          .build())
    assert wf.signals == frozenset({"one", "two"})
    assert tf.workflow("none").pass_("p").build().signals == frozenset()
