"""Review keyrev2 of "Keyed signals stored and their row read back in one adapter call
(send_keyed_signal_and_load)".

The engine's combined keyed path held up under every race tried (concurrent sends of one key,
sends racing a receive's timeout, resume(), cancel(), a slow first answer, parked children,
continue_as_new, purge, crash exploration). What did not: the conformance kit, which is what an
adapter author relies on (docs/adapters.md: "Then run the conformance kit in your own test
suite"). It passed adapters whose ``send_keyed_signal_and_load`` breaks the promises
docs/waiting.md ("Idempotency keys") and docs/adapters.md make of keys, and the engine calls
that method for every keyed signal to a parked instance (the common case: a webhook for a
waiting workflow). Each test below builds such an adapter, a ``MemoryAdapter`` subclass that
changes the combined method alone (its ``send_keyed_signal`` stays correct, so
``keyed_signals_are_stored_once`` passes), and expects the kit to fail it. Every one failed
until the commit that added this file.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, StoredInstance
from trioflow.adapters._protocol import sends_keyed_and_loads
from trioflow.testing import check_persistence_adapter, open_test_engine, virtual_wall_clock


async def _kit(make: Any) -> None:
    stores: dict[str, Any] = {}
    await check_persistence_adapter(lambda key: stores.setdefault(key, make()))


def _two_receives() -> tf.WorkflowDefinition:
    return (tf.workflow("w")
            .receive("r1", signal="go")
            .receive("r2", signal="go", timeout=50, catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="done")])
            .end("done")
            .build())


# -- 1. keys matched across instances ----------------------------------------------------------


class _KeysAcrossInstances(MemoryAdapter):
    """The combined call looks a key up among every instance's keys (an SQL adapter whose
    combined statement forgot ``AND instance_id = ?`` in its key lookup)."""

    async def send_keyed_signal_and_load(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool, StoredInstance | None]:
        for iid, row in self._rows.items():
            if row.signal_keys and key in row.signal_keys:
                seq = row.signal_keys[key]
                pending = iid == instance_id and bool(row.signals) and seq in row.signals
                return (seq if pending else None), True, None
        return await super().send_keyed_signal_and_load(instance_id, name, payload, key)


async def test_kit_fails_a_combined_call_that_matches_keys_across_instances(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A user relies on a key being the instance's own: docs/waiting.md "stores the signal once
    per instance and key"; the kit's keyed_signals_are_stored_once checks it for
    send_keyed_signal ("a key is the instance's own: another instance takes a signal with it").

    Actual: keyed_signal_and_load_is_one_call only ever signals instance "i", so an adapter
    whose send_keyed_signal_and_load treats a key stored for any instance as seen passes the
    whole kit. With the engine (which calls that method for every keyed signal to a parked
    instance), the second of two parked instances sent a signal under the same key (a request
    id reused per customer, an event id delivered to two workflows) returns from signal() as a
    duplicate and its signal is silently dropped: the instance waits for ever.

    Wrong because the kit is the adapter author's proof of conformance (docs/adapters.md) and
    the check added for this method does not test the per-instance rule it must keep."""
    assert sends_keyed_and_loads(_KeysAcrossInstances())
    # (What the engine does with it: instance b's signal is lost.)
    async with open_test_engine(adapter=_KeysAcrossInstances(), clock=virtual_wall_clock()) as engine:
        engine.register(_two_receives())
        a, b = await engine.start("w"), await engine.start("w")
        await trio.sleep(10)
        await engine.signal(a, "go", "for a", idempotency_key="evt-1")
        await engine.signal(b, "go", "for b", idempotency_key="evt-1")
        assert await engine.adapter.signals(b) == []  # dropped: the broken adapter does what the kit lets pass
    with pytest.raises(AssertionError):  # (the kit must fail it, whichever check catches it)
        await _kit(_KeysAcrossInstances)


# -- 2. keys stored by the combined call outlive delete ----------------------------------------


class _SideKeys(MemoryAdapter):
    """The combined call keeps the keys it stores in a map of its own, which both keyed methods
    read (keys shared, as the kit checks) but ``delete``/``purge`` never clear (an SQL adapter
    whose combined statement writes keys to a table the delete trigger does not cover)."""

    def __init__(self) -> None:
        super().__init__()
        self.side: dict[tuple[str, str], int] = {}

    async def send_keyed_signal(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool]:
        if (instance_id, key) in self.side:
            seq = self.side[instance_id, key]
            row = self._rows.get(instance_id)
            return (seq if row is not None and row.signals and seq in row.signals else None), True
        return await super().send_keyed_signal(instance_id, name, payload, key)

    async def send_keyed_signal_and_load(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool, StoredInstance | None]:
        if (instance_id, key) in self.side:
            return (*await self.send_keyed_signal(instance_id, name, payload, key), None)
        row = self._rows.get(instance_id)
        if row is not None and row.signal_keys and key in row.signal_keys:
            return await super().send_keyed_signal_and_load(instance_id, name, payload, key)
        seq = self._send_signal(instance_id, name, payload)
        if seq is None:
            return None, False, None
        self.side[instance_id, key] = seq
        return seq, False, self._load(instance_id)


async def test_kit_fails_combined_keys_that_outlive_delete(autojump_clock: trio.testing.MockClock) -> None:
    """A user relies on keys going with the instance: docs/waiting.md "go with it when it is
    deleted or purged: an instance started again under its id takes a signal whatever key it
    comes with"; docs/adapters.md requires it of the adapter ("go with the instance on delete
    and purge").

    Actual: the kit checks that only for keys stored by send_keyed_signal
    (keyed_signals_are_stored_once); keyed_signal_and_load_is_one_call never deletes. An adapter
    whose combined call keeps its keys where delete does not reach passes the kit, and with the
    engine an instance started again under a deleted id silently drops a keyed signal sent while
    it is parked (the combined path) under a key its predecessor got.

    Wrong because the combined call is where the engine stores most keyed signals (every one to
    a parked instance), so the kit leaves that promise unchecked for them."""
    with pytest.raises(AssertionError):  # (the kit must fail it, whichever check catches it)
        await _kit(_SideKeys)


# -- 3. keys stored by the combined call forgotten at a reopen ---------------------------------


class _KeysForgottenOnReopen(_SideKeys):
    """As _SideKeys, its map cleared when opened again (keys written to a TEMP table, or a cache
    in front of the database, on the combined path only)."""

    async def open(self) -> None:
        self.side.clear()
        await super().open()


async def test_kit_fails_combined_keys_that_do_not_survive_a_reopen(autojump_clock: trio.testing.MockClock) -> None:
    """A user relies on keys being durable: docs/adapters.md "Keys are kept as long as the
    instance is, survive a reopen"; docs/waiting.md sends a retry "after signal() raised (a
    restart, ...)", which only works if the key outlives the engine.

    Actual: keyed_signal_and_load_is_one_call never reopens the adapter (only
    keyed_signals_are_stored_once does, for keys send_keyed_signal stored), so an adapter whose
    combined call's keys are lost at a restart passes the kit; a webhook redelivered after a
    restart is then stored and taken a second time.

    Wrong for the same reason as above: the kit's new check is the only proof of the
    combined path, and it leaves durability out."""
    with pytest.raises(AssertionError):  # (the kit must fail it, whichever check catches it)
        await _kit(_KeysForgottenOnReopen)


# -- 4. a key kept for a signal that was not stored ---------------------------------------------


class _KeyWithoutSignal(MemoryAdapter):
    """The combined call records the key even when it stores nothing (an instance that has
    ended): an SQL adapter that inserts the key row unconditionally."""

    async def send_keyed_signal_and_load(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool, StoredInstance | None]:
        answer = await super().send_keyed_signal_and_load(instance_id, name, payload, key)
        if answer == (None, False, None):
            row = self._rows[instance_id]
            if row.signal_keys is None:
                row.signal_keys = {}
            row.signal_keys[key] = -1
        return answer


async def test_kit_fails_a_combined_call_that_keeps_a_key_it_stored_no_signal_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A user relies on signal() to an ended instance raising InstanceNotLiveError, "and nothing
    is stored" (docs/waiting.md, SPEC §13), every time: a key is only "a key stored before".

    Actual: the kit sends a new key to a finished instance once (k3) and checks the answer, not
    that nothing was kept; an adapter that records the key anyway passes, and then the retry
    the docs prescribe returns normally (the key is "seen"), telling the caller its signal was
    stored when it never was.

    Wrong: a silent success for a signal that does not exist; the kit should send the same new
    key to an ended instance twice (or check it stays unknown)."""
    async with open_test_engine(adapter=_KeyWithoutSignal(), clock=virtual_wall_clock()) as engine:
        engine.register(_two_receives())
        iid = await engine.start("w")
        await trio.sleep(10)
        await engine.cancel(iid)
        await engine.wait(iid)
        with pytest.raises(tf.InstanceNotLiveError):
            await engine.signal(iid, "go", "late", idempotency_key="evt-9")
        await engine.signal(iid, "go", "late", idempotency_key="evt-9")  # (the broken adapter: no error now)
    with pytest.raises(AssertionError):  # (the kit must fail it, whichever check catches it)
        await _kit(_KeyWithoutSignal)


# -- 5. the combined keyed write is not checked under cancellation -----------------------------


class _TornKeyed(MemoryAdapter):
    """The combined call stores the signal, waits (a round trip), then stores its key: cancelled
    in between, the signal is stored and its key is not."""

    async def send_keyed_signal_and_load(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool, StoredInstance | None]:
        row = self._rows.get(instance_id)
        if row is not None and row.signal_keys and key in row.signal_keys:
            return await super().send_keyed_signal_and_load(instance_id, name, payload, key)
        seq = self._send_signal(instance_id, name, payload)
        if seq is None:
            return None, False, None
        await trio.sleep(0)
        stored = self._rows[instance_id]
        if stored.signal_keys is None:
            stored.signal_keys = {}
        stored.signal_keys[key] = seq
        return seq, False, self._load(instance_id)


async def test_kit_fails_a_combined_keyed_write_that_is_torn_by_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A user relies on a keyed signal being stored "once per instance and key ... in one atomic
    operation" (docs/adapters.md) and on the retry after "signal() raised (... a cancellation
    ...)" storing nothing (docs/waiting.md). docs/adapters.md: "A write must be all or nothing
    under cancellation too", and the kit claims to check "that every kind of write cancelled at
    each of its first waits in turn is made whole or not at all".

    Actual: writes_are_all_or_nothing_under_cancellation covers create, send_signal,
    checkpoint, delete and purge only; send_keyed_signal_and_load (and send_keyed_signal) are
    never cancelled. An adapter whose combined call stores the signal and then, after a wait,
    its key passes the kit; with the engine, a caller cancelled in that window (an HTTP request
    timing out) leaves the signal without its key, and its retry under the same key stores a
    second copy: both receives take "a" (the signal delivered twice).

    Wrong: the one property the keyed path exists for is lost on the path the engine uses for
    parked instances, and the kit that should catch it does not look."""
    async with open_test_engine(adapter=_TornKeyed(), clock=virtual_wall_clock()) as engine:
        engine.register(_two_receives())
        iid = await engine.start("w")
        await trio.sleep(10)
        with trio.CancelScope() as scope:
            scope.cancel()
            await engine.signal(iid, "go", "a", idempotency_key="evt-1")
        await engine.signal(iid, "go", "a", idempotency_key="evt-1")  # the retry the docs prescribe
        done = await engine.wait(iid)
        assert [r.output for r in done.history if r.step_name in ("r1", "r2")] == ["a", "a"]  # (taken twice)
    with pytest.raises(AssertionError):
        await _kit(_TornKeyed)
