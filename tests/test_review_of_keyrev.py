"""Review (helper keyrev) of ``engine.signal(..., idempotency_key=)``: findings as failing tests."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


def _one_payment() -> tf.WorkflowDefinition:
    """Waits, with no timeout, for one "paid" signal."""
    return tf.workflow("pay-once").receive("r0", signal="paid").succeed("end").build()


def _taken(instance: tf.WorkflowInstance) -> list[Any]:
    return [r.output for r in instance.history if r.step_name.startswith("r") and r.status == "completed"]


class _AnswerLost(tf.adapters.MemoryAdapter):
    """Storage whose first keyed write is made but whose answer is lost: the call raises
    ``StorageUnavailableError`` after the signal and its key were stored (a COMMIT that failed
    late, a networked database whose reply never came). ``send_signal`` is not overridden, so
    the engine still calls ``send_keyed_signal``."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    async def send_keyed_signal(self, instance_id: str, name: str, payload: bytes, key: str) -> Any:
        result = await super().send_keyed_signal(instance_id, name, payload, key)
        if not self.lost:
            self.lost += 1
            raise tf.StorageUnavailableError("the write was made, its answer was lost")
        return result


@pytest.mark.parametrize("parked", [False, True], ids=["in-memory", "parked"])
async def test_a_retry_after_a_lost_answer_delivers_the_stored_signal(
        autojump_clock: trio.testing.MockClock, parked: bool) -> None:
    """What a user relies on: docs/waiting.md "Idempotency keys" tells them to send again with
    the same key "when your code sends again after signal() raised (... storage that failed
    after the write)", and README promises "a call sent again after a lost answer, is not taken
    twice"; SPEC §13: "returns once the signal is stored" and a stored signal is "never lost".
    So after signal() raised and the retry with the same key returned, the waiting receive
    must take the signal.

    Actual: the retry finds the key (``send_keyed_signal`` -> ``(None, True)``) and
    ``Engine._send`` returns at once (``if seen: return``), handing nothing over. The first
    call stored the signal but raised before its hand-over, so no one ever hands it to the
    instance: a receive with no timeout waits for ever (the signal pending in storage) until
    an engine restart or another signal happens to wake it; one with a timeout takes it only
    at its deadline (found: 600 s late in a 600 s receive). Both when the run is in memory
    and when it is parked.

    Why wrong: the retry the docs prescribe for exactly this failure leaves the signal
    undelivered; the seen-key path must make sure the stored signal reaches the instance
    (hand it over / wake the instance from storage), as the first call would have."""
    adapter = _AnswerLost()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_one_payment())
        iid = await engine.start("pay-once", None)
        await trio.sleep(30 if parked else 0.1)  # waiting on its receive (parked after 1 s)
        with pytest.raises(tf.StorageUnavailableError):
            await engine.signal(iid, "paid", "ch_1", idempotency_key="evt_1")
        await engine.signal(iid, "paid", "ch_1", idempotency_key="evt_1")  # the retry the docs prescribe
        done = None
        with trio.move_on_after(3600):
            done = await engine.wait(iid)
        pending = await adapter.signals(iid)
        assert done is not None, (
            f"an hour after the keyed retry returned, the instance still waits on its receive; the signal sits in"
            f" storage undelivered: {pending}")
    assert _taken(done) == ["ch_1"]


class _Counting(tf.adapters.MemoryAdapter):
    """A subclass that counts signals (overrides ``send_signal``); it still has
    ``send_keyed_signal``, inherited."""

    sent = 0

    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        self.sent += 1
        return await super().send_signal(instance_id, name, payload)


async def test_the_refusal_of_a_keyed_signal_names_its_real_cause(autojump_clock: trio.testing.MockClock) -> None:
    """What a user relies on: docs/adapters.md says a keyed signal is refused with
    StorageError "without it [send_keyed_signal] (or on a subclass that overrides send_signal
    below the class that defines it)": two different causes, and the user must know which one
    to fix (add send_keyed_signal, or also override it / stop overriding send_signal).

    Actual: for a MemoryAdapter subclass that only overrides send_signal, the message says
    "signal 'paid' cannot be stored with an idempotency key: _Counting has no
    send_keyed_signal() (...)", although ``hasattr(adapter, "send_keyed_signal")`` is True
    (inherited). The same for a wrapper adapter delegating via ``__getattr__``. The user is
    sent looking for a method they have.

    Why wrong: the message misstates the cause; it should say that send_signal is overridden
    below the class defining send_keyed_signal (docs/adapters.md's second case). (Nothing is
    stored: that part holds.)"""
    adapter = _Counting()
    assert hasattr(adapter, "send_keyed_signal")
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_one_payment())
        iid = await engine.start("pay-once", None, delay=60)
        with pytest.raises(tf.StorageError) as info:
            await engine.signal(iid, "paid", 1, idempotency_key="evt_1")
        assert await adapter.signals(iid) == []
    message = str(info.value)
    assert "has no send_keyed_signal" not in message and "send_signal()" in message, message
