"""``resume()`` (and an engine's open) leaves a parked instance to the waker when the signals
storage holds for it are none its lanes wait for: taken up, it would only park again, one
checkpoint per instance at every resume. One whose lanes wait for a pending signal (a crash
between the signal's store and its wake) is still taken up at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import trioflow as tf
from trioflow._codec import encode_payload
from trioflow.testing import engine_portal

REMINDER = tf.workflow("reminder").wait("later", seconds=50).step("remind", lambda ctx: "reminded").build()
APPROVAL = tf.workflow("approval").receive("approve", signal="approved", timeout=3_600).build()


def _register(engine: tf.Engine) -> None:
    engine.register(REMINDER)
    engine.register(APPROVAL)


def _sqlite(tmp_path: Path) -> tf.adapters.SQLiteAdapter:
    return tf.adapters.SQLiteAdapter(tmp_path / "flows.db")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_parked_instance_holding_a_stray_signal_is_left_to_its_timer(tmp_path: Path, kind: str) -> None:
    adapter: Any = tf.adapters.MemoryAdapter() if kind == "memory" else _sqlite(tmp_path)
    with engine_portal(setup=_register, adapter=adapter) as portal:
        iid = portal.call(lambda e: e.start("reminder"))
        portal.call(lambda e: e.signal(iid, "bogus", {"k": 1}))  # nobody will take it
        portal.advance(5)
        assert portal.call(lambda e: e.resume()) == []
        portal.restart(downtime=10)  # the open's resume leaves it out too
        assert portal.call(lambda e: e.resume()) == []
        seen = portal.call(lambda e: e.get_instance(iid))
        assert seen is not None and seen.status == "running" and seen.waiting is not None
        portal.advance(35)  # 50 s after its start: the waker takes it up
        done = portal.call(lambda e: e.get_instance(iid))
        assert done is not None and done.status == "completed" and done.step_results["remind"].output == "reminded"
        assert [name for _, name, _ in portal.call(lambda e: e.adapter.signals(iid))] == ["bogus"]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_parked_instance_whose_signal_was_stored_but_not_delivered_is_taken_up(tmp_path: Path, kind: str) -> None:
    """As if a crash came between the signal's store and its wake: stored straight through the
    adapter, which wakes nothing. The resume takes it up, and the receive takes the signal."""
    adapter: Any = tf.adapters.MemoryAdapter() if kind == "memory" else _sqlite(tmp_path)
    with engine_portal(setup=_register, adapter=adapter) as portal:
        iid = portal.call(lambda e: e.start("approval"))
        portal.advance(5)  # out of memory, waiting for "approved"
        portal.call(lambda e: e.adapter.send_signal(iid, "approved", encode_payload({"by": "ann"}, "payload")))
        assert portal.call(lambda e: e.resume()) == [iid]
        done = portal.call(lambda e: e.wait(iid))
        assert done.status == "completed" and done.output == {"by": "ann"}
