"""An adversarial review of the storage layer: migrations from every fixture, newer and foreign
files, locks, damaged rows, paging, purges and the conformance kit against 25 broken adapters
held. The tests below failed until the commit that added this file: MemoryAdapter refuses a
``wake_at`` that is not a number (or NaN) before it writes anything, as SQLiteAdapter does; an
adapter that stores no signals is refused clearly (``register()`` of a workflow that needs
them, ``signal()``); the kit asks ``due()`` at a stored wake time itself.

Each test quotes the promise it checks (README.md, docs/adapters.md, docs/waiting.md,
adapters/_protocol.py, SPEC.md) and says what happened instead.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio

import trioflow as tf

T0 = 1_800_000_000.0


# -- MemoryAdapter.checkpoint and wake_at ------------------------------------------------------


async def test_memory_checkpoint_with_a_wake_at_that_is_not_a_number_writes_nothing_and_says_so() -> None:
    """Promise (adapters/_protocol.py, Adapter.checkpoint; docs/adapters.md): "In one atomic
    write: replace the status, header and wake_at, append records ... all of it is stored, or
    none of it", and "A value that is not bytes-like ... is refused before anything is written";
    errors of the storage layer are ``StorageError``s (README, Errors). ``SQLiteAdapter`` refuses
    such a ``wake_at`` with ``DatabaseError`` and writes nothing.

    Reproduction: a MemoryAdapter holding one waiting instance of workflow "wf"; a checkpoint of
    another instance of "wf" with ``wake_at="soon"`` (and a record, a status change, a consumed
    signal).

    Expected: a ``StorageError`` (as SQLite gives), nothing of the checkpoint stored, and the
    adapter still usable for the other instances.

    Actual: a bare ``TypeError`` from ``heapq`` raised AFTER the status, header, record, consumed
    signal and wake_at were all written (half a checkpoint that "raised"), and from then on every
    checkpoint with a wake time for that workflow raises ``TypeError`` (the string sits in the
    workflow's wake heap).
    """
    a = tf.adapters.MemoryAdapter()
    await a.open()
    await a.create("other", "wf", "running", start=b"s", header=b"h")
    await a.checkpoint("other", "running", b"h", [], first_seq=0, wake_at=100.0)
    await a.create("r", "wf", "running", start=b"s", header=b"h0")
    await a.checkpoint("r", "running", b"h1", [b"r0"], first_seq=0)
    seq = await a.send_signal("r", "go", b"p")
    before = await a.load("r")
    assert before is not None

    with pytest.raises(tf.StorageError):
        await a.checkpoint("r", "completed", b"h2", [b"r1"], first_seq=1, consumed=[int(seq or 0)],
                           wake_at="soon")  # type: ignore[arg-type]
    after = await a.load("r")
    assert after is not None
    assert (after.status, after.header, after.records, after.signals) == (
        before.status, before.header, before.records, before.signals), "a refused checkpoint must write nothing"

    # The adapter must still work for the other instances of the workflow.
    await a.create("z", "wf", "running", start=b"s", header=b"h0")
    await a.checkpoint("z", "running", b"h1", [], first_seq=0, wake_at=5.0)
    assert await a.next_wake() == 5.0


async def test_memory_checkpoint_refuses_a_nan_wake_at_as_sqlite_does(tmp_path: Any) -> None:
    """Promise (docs/waiting.md, For adapter authors): ``checkpoint(..., wake_at=t)`` stores
    "wake_at (Unix seconds, inf allowed)"; ``due()`` hands back waiting instances whose wake_at
    has come and ``resumable()`` the others: an unfinished instance is always reachable by one
    of them. ``SQLiteAdapter`` refuses ``wake_at=nan`` ("wake_at must be a number of Unix seconds
    or None, got nan", ``DatabaseError``, nothing written); the two bundled adapters should agree.

    Reproduction: ``MemoryAdapter.checkpoint("n", "running", ..., wake_at=math.nan)``.

    Expected: a ``StorageError``, as ``SQLiteAdapter`` raises, nothing written.

    Actual: accepted; the instance is then neither in ``resumable()`` nor ever in ``due()``
    nor ``next_wake()``: stranded for good, with no error anywhere.
    """
    sqlite = tf.adapters.SQLiteAdapter(tmp_path / "nan.db")
    await sqlite.open()
    try:
        await sqlite.create("n", "wf", "running", start=b"s", header=b"h0")
        with pytest.raises(tf.StorageError):
            await sqlite.checkpoint("n", "running", b"h1", [], first_seq=0, wake_at=math.nan)
    finally:
        await sqlite.close()

    a = tf.adapters.MemoryAdapter()
    await a.open()
    await a.create("n", "wf", "running", start=b"s", header=b"h0")
    try:
        await a.checkpoint("n", "running", b"h1", [], first_seq=0, wake_at=math.nan)
    except tf.StorageError:
        return
    reachable = ["n" in [s.instance_id for s in await a.resumable()],
                 "n" in [s.instance_id for s in await a.due(math.inf, 10)]]
    raise AssertionError(
        f"MemoryAdapter stored wake_at=nan (SQLiteAdapter refuses it); the instance is now in resumable(): "
        f"{reachable[0]}, in due(inf): {reachable[1]}")


# -- the engine with an adapter written before waiting instances ------------------------------


class _BeforeWaiting:
    """A user's adapter written before waiting instances existed (docs/waiting.md): no
    ``due``/``next_wake``, and so no ``send_signal``/``signals`` either; the rest hands over to a
    MemoryAdapter."""

    def __init__(self) -> None:
        self.inner = tf.adapters.MemoryAdapter()

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    def use_clock(self, clock: Any) -> None:
        self.inner.use_clock(clock)

    async def create(self, instance_id: str, workflow_name: str, status: Any, *, start: bytes, header: bytes,
                     parent_id: str | None = None) -> bool:
        return await self.inner.create(instance_id, workflow_name, status, start=start, header=header,
                                       parent_id=parent_id)

    async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Any, *, first_seq: int,
                         start: bytes | None = None, consumed: Any = (), wake_at: float | None = None,
                         notify: Any = None) -> int | None:
        return await self.inner.checkpoint(instance_id, status, header, records, first_seq=first_seq, start=start,
                                           consumed=consumed, wake_at=wake_at, notify=notify)

    async def load(self, instance_id: str) -> Any:
        return await self.inner.load(instance_id)

    async def list_instances(self, workflow_name: str | None = None, status: Any = None, *, after: str | None = None,
                             limit: int | None = None, newest_first: bool = False) -> Any:
        return await self.inner.list_instances(workflow_name, status, after=after, limit=limit,
                                               newest_first=newest_first)

    async def resumable(self) -> Any:
        return await self.inner.resumable()

    async def delete(self, instance_id: str) -> bool:
        return await self.inner.delete(instance_id)

    async def purge(self, finished_by: float, limit: int, *, status: Any = None, workflow_name: Any = None) -> int:
        return await self.inner.purge(finished_by, limit, status=status, workflow_name=workflow_name)


async def _ok(data: Any) -> Any:
    return {"v": 1}


APPROVAL = tf.workflow("approval").step("a", _ok).receive("go", signal="go").step("b", _ok).build()
PLAIN = tf.workflow("plain").step("a", _ok).wait("nap", seconds=10).step("b", _ok).build()


async def test_an_adapter_without_signals_is_refused_clearly_for_what_needs_them(autojump_clock: Any) -> None:
    """Promise (docs/waiting.md, For adapter authors): "An adapter written before waiting
    instances existed (without due() and next_wake()) still works: instances then wait in
    memory, holding their task." SPEC §8: bad input gets "a clear error of trioflow's own
    exception hierarchy"; README (Errors): "One hierarchy rooted at tf.TrioflowError".

    Reproduction: an adapter with every method but the four that came with waiting instances
    (``due``, ``next_wake``, ``send_signal``, ``signals``); a workflow step, receive "go", step;
    then ``engine.signal(iid, "go", 1)``.

    Expected: a workflow without receive or child steps runs (its timer waits in memory); one
    with a receive step (or a child step, whose end comes as a signal) is refused by
    ``register()`` naming the step and what the adapter lacks; ``signal()`` raises a
    ``StorageError``, storing nothing.

    Was: the receive workflow registered and its instance waited in memory for ever, and
    ``engine.signal`` raised a bare ``AttributeError: '_BeforeWaiting' object has no attribute
    'send_signal'`` (not a TrioflowError)."""
    async with tf.open_engine(adapter=_BeforeWaiting(), clock=lambda: T0 + trio.current_time()) as engine:
        engine.register(PLAIN)
        iid = await engine.start("plain", {})
        with trio.fail_after(60):
            assert (await engine.wait(iid)).status == "completed"
        with pytest.raises(tf.InvalidArgumentError, match="step 'go' receives a signal.*send_signal"):
            engine.register(APPROVAL)
        parent = tf.workflow("parent").child("kid", workflow="plain").build()
        with pytest.raises(tf.InvalidArgumentError, match="step 'kid' starts a child workflow"):
            engine.register(parent)
        with pytest.raises(tf.StorageError, match="send_signal"):
            await engine.signal(iid, "go", 1)


# -- the conformance kit ---------------------------------------------------------------------


class _DueOnlyBeforeItsTime(tf.adapters.MemoryAdapter):
    """``due(before)`` hands back instances whose wake_at is strictly before ``before``: one due
    exactly then is left out."""

    async def due(self, before: float, limit: int, *, skip_workflows: Any = ()) -> Any:
        return await super().due(math.nextafter(before, -math.inf), limit, skip_workflows=skip_workflows)


async def test_the_kit_fails_an_adapter_whose_due_leaves_out_what_is_due_exactly_then() -> None:
    """Promise (adapters/_protocol.py, Adapter.due): "Waiting pending/running instances whose
    wake_at is at most before"; docs/waiting.md: due() gives instances "with wake_at <= before",
    and "check_persistence_adapter checks them all".

    Reproduction: a MemoryAdapter subclass whose ``due(before)`` uses ``<`` instead of ``<=``
    (``before`` moved one ulp down), run through ``check_persistence_adapter``.

    Expected: ``AssertionError`` naming a waiting check.

    Actual: every check passes (the kit only asks ``due()`` at times strictly after or before
    the stored wake times: 1500 for 1000, 1e12, 100 for 10..30), so the adapter is certified.
    """
    stores: dict[str, tf.adapters.MemoryAdapter] = {}
    with pytest.raises(AssertionError, match="waiting"):
        await tf.testing.check_persistence_adapter(lambda key: stores.setdefault(key, _DueOnlyBeforeItsTime()))
