"""The behaviours every persistence adapter must have, as one awaitable check.

Third-party adapters run it in their own test suite (see docs/adapters.md)::

    async def test_my_adapter(tmp_path):
        await check_persistence_adapter(lambda key: MyAdapter(tmp_path / key))
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, overload

import trio

from trioflow._builder import workflow
from trioflow._codec import decode_stored
from trioflow._engine import open_engine
from trioflow._engine_arguments import refuses_unbound_arguments
from trioflow._errors import (
    CheckpointConflictError,
    InstanceStillRunningError,
    InvalidArgumentError,
    StorageError,
    UnencodableValueError,
    UnknownInstanceError,
    safe_repr,
)
from trioflow._snapshot import TERMINAL
from trioflow.adapters._protocol import (
    Adapter, HeadLoads, KeyedSignals, KeyedSignalsAndLoads, SignalsAndLoads, StoredInstance, creates_waiting,
    excludes_instances, keeps_families, loads_heads, restarts_history, sends_and_loads, sends_keyed,
    sends_keyed_and_loads, skips_workflows,
)

OpenAdapter = Callable[[str], Adapter]
_BLOB = bytes(range(256)) * 3
_START = b"start:" + bytes(range(255, -1, -1))


@refuses_unbound_arguments
async def check_persistence_adapter(open_adapter: OpenAdapter) -> list[str]:
    """Run every conformance check; returns the names of the checks made, all passed (a check
    of an optional method the adapter does not have is not made, and not listed).

    ``open_adapter(key)`` must return a new, unopened adapter on the storage named ``key``:
    the same key means the same storage (a reopen), a new key an empty one. Raises
    ``AssertionError`` naming the first check that fails.
    """
    if not callable(open_adapter):
        # (An adapter is the natural first try: it would fail as a bare TypeError from inside
        # the first check.)
        raise InvalidArgumentError(
            "check_persistence_adapter takes a function open_adapter(key) giving a new, unopened adapter on"
            f" the storage named key (e.g. lambda key: MyAdapter(tmp_path / key)), got {safe_repr(open_adapter)}")
    if open_adapter("distinct-1") is open_adapter("distinct-2"):
        raise InvalidArgumentError(
            "check_persistence_adapter: open_adapter gave the same adapter for two keys; a new key must mean"
            " new, empty storage (e.g. lambda key: MyAdapter(tmp_path / key), or a dict of stores by key)")
    passed = []
    for check in _CHECKS:
        try:
            await check(open_adapter)
        except _NotMade:
            continue
        except AssertionError as exc:
            raise AssertionError(f"adapter conformance check {check.__name__!r} failed: {exc}") from exc
        passed.append(check.__name__)
    return passed


class _NotMade(Exception):
    """A check of an optional method (see ``adapters._protocol``) the adapter does not have:
    not made, so not listed as passed."""


@asynccontextmanager
async def _opened(
    open_adapter: OpenAdapter, key: str, clock: Callable[[], float] | None = None,
) -> AsyncIterator[Adapter]:
    adapter = open_adapter(key)
    if clock is not None:
        # (An engine works with an adapter that has none, on two clocks: these checks cannot.)
        assert hasattr(adapter, "use_clock"), (
            "the adapter has no use_clock(clock): finish times must be stamped on the clock the engine gives")
        adapter.use_clock(clock)  # before open, as open_engine gives it (see Adapter.use_clock)
    await adapter.open()
    try:
        yield adapter
    finally:
        await adapter.close()


async def _refused(call: Awaitable[Any], error: type[BaseException], message: str) -> None:
    """``call`` must raise ``error``; ``message`` says what the check expected otherwise."""
    try:
        await call
    except error:
        return
    raise AssertionError(message)


async def signal_and_load_is_one_call(open_adapter: OpenAdapter) -> None:
    """(Only for an adapter the engine would call ``send_signal_and_load`` on.)"""
    async with _opened(open_adapter, "signal_and_load") as a:
        if not sends_and_loads(a):
            raise _NotMade
        combined: SignalsAndLoads = a  # type: ignore[assignment]
        await _refused(combined.send_signal_and_load("nobody", "go", b"x"), UnknownInstanceError,
                       "send_signal_and_load to an instance never created must raise UnknownInstanceError")
        first = await _parked_with_a_signal(a)
        seq, row = await combined.send_signal_and_load("i", "go", _BLOB)
        assert isinstance(seq, int) and seq > first, (
            f"send_signal_and_load must store the signal as send_signal does and return its seq, got {seq}"
            f" after {first}")
        await _is_the_row(a, row, [(first, "go", b"one"), (seq, "go", _BLOB)], "send_signal_and_load")
        await a.checkpoint("i", "completed", b"h2", [b"r1"], first_seq=1, consumed=[first, seq])
        assert await combined.send_signal_and_load("i", "go", b"late") == (None, None), (
            "send_signal_and_load to a finished instance must store nothing and return (None, None)")
        assert await a.signals("i") == [], "nothing is stored for a finished instance"


async def _parked_with_a_signal(a: Adapter) -> int:
    """Store the instance ``"i"`` waiting, with one signal pending (``"go"``, ``b"one"``): its seq."""
    await a.create("i", "wf", "running", start=b"s", header=b"h0")
    await a.checkpoint("i", "running", b"h1", [b"r0"], first_seq=0, wake_at=float("inf"))
    first = await a.send_signal("i", "go", b"one")
    assert isinstance(first, int), f"send_signal to a running instance must return its seq, got {first}"
    return first


async def _is_the_row(a: Adapter, row: StoredInstance | None, pending: list[tuple[int, str, bytes]],
                      method: str) -> None:
    """``row``, as ``method`` returned it with the signal it stored, must be ``"i"``'s as
    ``load()`` gives it, holding the signals ``pending``."""
    assert row is not None and _view(row) == await _stored(a, "i"), (
        f"{method} must return the instance's row as load() gives it, got {_view(row)}")
    held = [(q, n, bytes(p)) for q, n, p in row.signals]
    assert held == pending, (
        f"the row {method} returns must hold every pending signal, the new one included, got {held}")


async def load_head_leaves_out_the_records(open_adapter: OpenAdapter) -> None:
    """(Only for an adapter the engine would call ``load_head`` on.)"""
    async with _opened(open_adapter, "load_head") as a:
        if not loads_heads(a):
            raise _NotMade
        heads: HeadLoads = a  # type: ignore[assignment]
        assert await heads.load_head("nobody") is None, "load_head of an instance never created must return None"
        await a.create("i", "wf", "running", start=b"s", header=b"h0")
        await a.checkpoint("i", "running", _BLOB, [b"r0", b"r1"], first_seq=0, wake_at=float("inf"))
        seq = await a.send_signal("i", "go", b"one")
        await _same_head(a, heads)
        await a.checkpoint("i", "completed", b"h2", [b"r2"], first_seq=2, consumed=[] if seq is None else [seq])
        await _same_head(a, heads)


async def keyed_signals_are_stored_once(open_adapter: OpenAdapter) -> None:
    """(Only for an adapter the engine would call ``send_keyed_signal`` on.)"""
    async with _opened(open_adapter, "keyed_signals") as a:
        if not sends_keyed(a):
            raise _NotMade
        keyed: KeyedSignals = a  # type: ignore[assignment]
        await _refused(keyed.send_keyed_signal("nobody", "go", b"x", "k1"), UnknownInstanceError,
                       "send_keyed_signal to an instance never created must raise UnknownInstanceError")
        for iid in ("i", "j"):
            await a.create(iid, "wf", "running", start=b"s", header=b"h0")
        seq, seen = await keyed.send_keyed_signal("i", "go", _BLOB, "k1")
        assert isinstance(seq, int) and seen is False, (
            f"send_keyed_signal with a new key must store the signal and return (seq, False), got {(seq, seen)}")
        assert await keyed.send_keyed_signal("i", "go", b"again", "k1") == (seq, True), (
            "send_keyed_signal with a key stored before for the instance, its signal pending still, must store nothing"
            " and return (that signal's seq, True)")
        other, _ = await keyed.send_keyed_signal("j", "go", b"j", "k1")
        assert isinstance(other, int), "a key is the instance's own: another instance takes a signal with it"
        plain = await a.send_signal("i", "go", b"plain")
        later, _ = await keyed.send_keyed_signal("i", "go", b"k2", "k2")
        pending = [(q, n, bytes(p)) for q, n, p in await a.signals("i")]
        assert pending == [(seq, "go", _BLOB), (plain, "go", b"plain"), (later, "go", b"k2")], (
            f"keyed signals must be stored as send_signal stores them, in seq order, once each, got {pending}")
        await a.checkpoint("i", "running", b"h1", [b"r0"], first_seq=0, consumed=[seq])
        assert await keyed.send_keyed_signal("i", "go", b"again", "k1") == (None, True), (
            "a key must be kept once its signal is consumed: a retry then stores nothing and returns (None, True)")
    async with _opened(open_adapter, "keyed_signals") as a:
        keyed = a  # type: ignore[assignment]
        assert await keyed.send_keyed_signal("i", "go", b"again", "k2") == (later, True), "keys must survive a reopen"
        assert await keyed.send_keyed_signal("i", "go", b"again", "k1") == (None, True), "keys must survive a reopen"
        await a.checkpoint("i", "completed", b"h2", [b"r1"], first_seq=1)
        assert await keyed.send_keyed_signal("i", "go", b"late", "k1") == (None, True), (
            "a key stored before the instance ended must still be known: a retry of that signal is not an error")
        for _ in range(2):  # (twice: a key that stored no signal must not be kept as seen)
            assert await keyed.send_keyed_signal("i", "go", b"late", "k3") == (None, False), (
                "send_keyed_signal with a new key to a finished instance must store nothing, its key included, and"
                " return (None, False), a retry of it too")
        assert await a.delete("i")
        await a.create("i", "wf", "running", start=b"s", header=b"h0")
        seq, seen = await keyed.send_keyed_signal("i", "go", b"new", "k1")
        assert isinstance(seq, int) and seen is False, (
            "delete must forget the instance's keys: a new instance under its id takes a signal whatever its key")


async def keyed_signal_and_load_is_one_call(open_adapter: OpenAdapter) -> None:
    """(Only for an adapter the engine would call ``send_keyed_signal_and_load`` on.) What
    :func:`keyed_signals_are_stored_once` asks of keys, asked of the keys this method stores: the
    engine stores a keyed signal to a parked instance (most of them) through it."""
    async with _opened(open_adapter, "keyed_signal_and_load") as a:
        if not sends_keyed_and_loads(a):
            raise _NotMade
        combined: KeyedSignalsAndLoads = a  # type: ignore[assignment]
        keyed: KeyedSignals = a  # type: ignore[assignment]
        await _refused(combined.send_keyed_signal_and_load("nobody", "go", b"x", "k1"), UnknownInstanceError,
                       "send_keyed_signal_and_load to an instance never created must raise UnknownInstanceError")
        first = await _parked_with_a_signal(a)
        seq, seen, row = await combined.send_keyed_signal_and_load("i", "go", _BLOB, "k1")
        assert isinstance(seq, int) and seq > first and seen is False, (
            f"send_keyed_signal_and_load with a new key must store the signal as send_signal does and return"
            f" (seq, False, row), got {(seq, seen)} after {first}")
        await _is_the_row(a, row, [(first, "go", b"one"), (seq, "go", _BLOB)], "send_keyed_signal_and_load")
        await a.create("j", "wf", "running", start=b"s", header=b"h0")
        other_seq, other_seen, other_row = await combined.send_keyed_signal_and_load("j", "go", b"j", "k1")
        assert isinstance(other_seq, int) and other_seen is False and other_row is not None, (
            "a key is the instance's own: send_keyed_signal_and_load must store another instance's signal with it,"
            f" got {(other_seq, other_seen)}")
        # A key is one whichever of the two methods stored it (the engine calls either).
        assert await combined.send_keyed_signal_and_load("i", "go", b"again", "k1") == (seq, True, None), (
            "send_keyed_signal_and_load with a key stored before, its signal pending still, must store nothing and"
            " return (that signal's seq, True, None)")
        assert await keyed.send_keyed_signal("i", "go", b"again", "k1") == (seq, True), (
            "a key stored by send_keyed_signal_and_load must be known to send_keyed_signal")
        other, _ = await keyed.send_keyed_signal("i", "go", b"k2", "k2")
        assert isinstance(other, int), f"send_keyed_signal with a new key must store the signal, got {other}"
        assert await combined.send_keyed_signal_and_load("i", "go", b"again", "k2") == (other, True, None), (
            "a key stored by send_keyed_signal must be known to send_keyed_signal_and_load")
        await a.checkpoint("i", "running", b"h2", [b"r1"], first_seq=1, consumed=[seq])
    async with _opened(open_adapter, "keyed_signal_and_load") as a:
        combined = a  # type: ignore[assignment]
        assert await combined.send_keyed_signal_and_load("i", "go", b"again", "k1") == (None, True, None), (
            "send_keyed_signal_and_load with a key whose signal was consumed must store nothing and return"
            " (None, True, None), after a reopen too: keys must survive one")
        assert await combined.send_keyed_signal_and_load("i", "go", b"again", "k2") == (other, True, None), (
            "a key stored before a reopen must be known after it, its signal pending still")
        await a.checkpoint("i", "completed", b"h3", [b"r2"], first_seq=2, consumed=[first, other])
        assert await combined.send_keyed_signal_and_load("i", "go", b"late", "k2") == (None, True, None), (
            "a key stored before the instance ended must still be known to send_keyed_signal_and_load")
        for _ in range(2):  # (twice: a key that stored no signal must not be kept as seen)
            assert await combined.send_keyed_signal_and_load("i", "go", b"late", "k3") == (None, False, None), (
                "send_keyed_signal_and_load with a new key to a finished instance must store nothing, its key"
                " included, and return (None, False, None), a retry of it too")
        assert await a.signals("i") == [], "nothing is stored for a finished instance"
        assert await a.delete("i")
        await _parked_with_a_signal(a)
        seq, seen, row = await combined.send_keyed_signal_and_load("i", "go", b"new", "k1")
        assert isinstance(seq, int) and seen is False and row is not None, (
            "delete must forget the keys send_keyed_signal_and_load stored: a new instance under the id takes a"
            f" signal whatever its key, got {(seq, seen)}")


async def _same_head(a: Adapter, heads: HeadLoads) -> None:
    whole, head = await a.load("i"), await heads.load_head("i")
    assert whole is not None and head is not None
    view, whole_view = _view(head), _view(whole)
    assert view is not None and whole_view is not None and view == (*whole_view[:5], ()), (
        f"load_head must return the row as load() gives it, without its records, got {view}")
    assert head.signals == () and head.wake_at == whole.wake_at, (
        f"load_head must leave out the pending signals and give wake_at as load() does, got {head.signals},"
        f" {head.wake_at}")


def _view(stored: StoredInstance | None) -> tuple[Any, ...] | None:
    """What a stored instance holds, as plain values (bytes-like values as ``bytes``)."""
    if stored is None:
        return None
    return (
        stored.instance_id, stored.workflow_name, stored.status,
        None if stored.start is None else bytes(stored.start), bytes(stored.header),
        tuple(bytes(r) for r in stored.records),
    )


async def _stored(a: Adapter, instance_id: str) -> tuple[Any, ...]:
    view = _view(await a.load(instance_id))
    assert view is not None, f"load({instance_id!r}) returned None for a stored instance"
    return view


async def create_and_load(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "create_and_load") as a:
        assert await a.create("i1", "wf", "running", start=_START, header=_BLOB) is True, (
            "create of a new id must return True")
        stored = await a.load("i1")
        assert stored is not None, "load after create returned None"
        assert isinstance(stored, StoredInstance), f"load must return a StoredInstance, got {type(stored).__name__}"
        assert _view(stored) == ("i1", "wf", "running", _START, _BLOB, ()), (
            f"start and header must round-trip unchanged, with no records; got {stored}")
        assert await a.load("missing") is None, "load of an unknown id must return None"


async def create_is_idempotent(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "create_is_idempotent") as a:
        await a.create("i1", "wf", "running", start=b"start-1", header=b"first")
        await a.checkpoint("i1", "running", b"second", [b"r0"], first_seq=0)
        before = await _stored(a, "i1")
        assert await a.create("i1", "other", "pending", start=b"start-2", header=b"third") is False, (
            "create of an existing id must return False")
        after = await _stored(a, "i1")
        assert after == before, f"a refused create must write nothing: was {before}, now {after}"


async def checkpoint_appends(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "checkpoint_appends") as a:
        await a.create("i1", "wf", "pending", start=_START, header=b"h0")
        await a.create("i2", "wf", "running", start=b"other", header=b"x0")
        await a.checkpoint("i1", "running", b"h1", [b"r0", b"r1"], first_seq=0)
        await a.checkpoint("i2", "running", b"x1", [b"x-r0"], first_seq=0)
        await a.checkpoint("i1", "running", b"h2", [], first_seq=2)
        await a.checkpoint("i1", "completed", b"h3", (b"r2",), first_seq=2)
        stored = await _stored(a, "i1")
        assert stored == ("i1", "wf", "completed", _START, b"h3", (b"r0", b"r1", b"r2")), (
            "a checkpoint must replace status and header and append its records in seq order, start"
            f" unchanged; got {stored}")
        other = await _stored(a, "i2")
        assert other == ("i2", "wf", "running", b"other", b"x1", (b"x-r0",)), (
            f"a checkpoint must touch only its own instance; got {other}")
        completed = [s.instance_id for s in await a.list_instances("wf", "completed")]
        running = [s.instance_id for s in await a.list_instances("wf", "running")]
        resumable = [s.instance_id for s in await a.resumable()]
        assert (completed, running, resumable) == (["i1"], ["i2"], ["i2"]), (
            "listings must follow the status a checkpoint stored: completed, running, resumable were"
            f" {completed}, {running}, {resumable}")


async def checkpoint_is_fenced(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "checkpoint_is_fenced") as a:
        await a.create("i1", "wf", "running", start=_START, header=b"h0")
        await a.checkpoint("i1", "running", b"h1", [b"r0", b"r1"], first_seq=0)
        before = await _stored(a, "i1")
        for first_seq, what in ((0, "repeated"), (1, "overlapping"), (3, "after a lost one")):
            await _refused(
                a.checkpoint("i1", "failed", b"bad", [b"bad"], first_seq=first_seq, start=b"bad"),
                CheckpointConflictError,
                f"a checkpoint at first_seq={first_seq} ({what}) of an instance with 2 records must"
                " raise CheckpointConflictError")
            after = await _stored(a, "i1")
            assert after == before, (
                f"a refused checkpoint at first_seq={first_seq} must write nothing: was {before}, now {after}")
        await a.checkpoint("i1", "running", b"h2", [b"r2"], first_seq=2)
        assert (await _stored(a, "i1"))[4:] == (b"h2", (b"r0", b"r1", b"r2")), "the right seq must still be accepted"


async def checkpoint_of_unknown_instance(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "checkpoint_of_unknown_instance") as a:
        await _refused(a.checkpoint("nobody", "running", b"h", [b"r0"], first_seq=0), UnknownInstanceError,
                       "a checkpoint of an instance never created must raise UnknownInstanceError")
        assert await a.load("nobody") is None, "a refused checkpoint must not create the instance"
        assert await a.list_instances("wf") == [] and await a.resumable() == [], "a refused checkpoint must store nothing"


class _FailsPartWay(Sequence[bytes]):
    """Records whose second one cannot be read: storing them fails after the first."""

    def __len__(self) -> int:
        return 2

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(2))]
        if index in (0, -2):
            return b"part-1"
        if index in (1, -1):
            raise OSError("the second record cannot be read (a conformance check's deliberate failure)")
        raise IndexError(index)

    def __iter__(self) -> Iterator[bytes]:
        yield self[0]
        yield self[1]


async def checkpoint_is_atomic(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "checkpoint_is_atomic") as a:
        await a.create("i1", "wf", "running", start=_START, header=b"h0")
        await a.checkpoint("i1", "running", b"h1", [b"r0"], first_seq=0)
        seq = await a.send_signal("i1", "go", b"payload")
        before = await _stored(a, "i1")
        # A record that is not bytes-like (None: also what a NOT NULL column refuses), and records
        # that fail while being read: either way the first new record, or the deletion of the
        # consumed signal, could be written first.
        for what, records in (("a record that is None", [b"part-1", None]), ("a record that fails to read", _FailsPartWay())):
            await _refused(
                a.checkpoint("i1", "completed", b"new-header", records, first_seq=1, start=b"new-start",  # type: ignore[arg-type]
                             consumed=[int(seq or 0)]),
                Exception, f"a checkpoint with {what} must raise")
            after = await _stored(a, "i1")
            assert after == before, (
                f"a checkpoint that failed part way ({what}) must write nothing, neither status, header, start"
                f" nor records: was {before}, now {after}")
            assert [q for q, _, _ in await a.signals("i1")] == [seq], (
                f"a checkpoint that failed part way ({what}) must consume no signal: the signal would be lost")
        await a.checkpoint("i1", "running", b"h2", [b"r1"], first_seq=1, consumed=[int(seq or 0)])
        assert (await _stored(a, "i1"))[4:] == (b"h2", (b"r0", b"r1")), (
            "after a failed checkpoint, the next one at the same seq must be accepted")


async def start_set_once(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "start_set_once") as a:
        await a.create("i1", "wf", "running", start=b"start-0", header=b"h0")
        await a.checkpoint("i1", "running", b"h1", [b"r0"], first_seq=0, start=_START)
        stored = await _stored(a, "i1")
        assert stored[3] == _START, f"a checkpoint given start= must store those start bytes; got {stored[3]!r}"
        await a.checkpoint("i1", "running", b"h2", [b"r1"], first_seq=1)
        stored = await _stored(a, "i1")
        assert stored[3] == _START, f"a checkpoint without start= must leave start as it is; got {stored[3]!r}"


async def list_by_name_and_status(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "list_by_name_and_status") as a:
        rows = [("i4", "a", "running"), ("i2", "b", "running"), ("i3", "a", "completed"), ("i1", "a", "running")]
        for iid, name, status in rows:
            await a.create(iid, name, status, start=b"s", header=iid.encode())  # type: ignore[arg-type]
        await a.checkpoint("i4", "running", b"i4", [b"i4-r0"], first_seq=0)
        listed = await a.list_instances("a")
        ids = [s.instance_id for s in listed]
        assert ids == ["i4", "i3", "i1"], f"list_instances('a') must list a's instances oldest first, got {ids}"
        assert [tuple(bytes(r) for r in s.records) for s in listed] == [(b"i4-r0",), (), ()], (
            "listed instances must come with their records")
        listed = await a.list_instances("a", "running")
        ids = [s.instance_id for s in listed]
        assert ids == ["i4", "i1"], f"list_instances('a', 'running') got {ids}"
        assert [tuple(bytes(r) for r in s.records) for s in listed] == [(b"i4-r0",), ()], (
            "instances listed by status must come with their records too")
        await a.checkpoint("i4", "completed", b"i4", [], first_seq=1)
        ids = [s.instance_id for s in await a.list_instances("a", "running")]
        assert ids == ["i1"], f"list_instances('a', 'running') after i4 completed got {ids}"
        ids = [s.instance_id for s in await a.list_instances("a", "completed")]
        assert ids == ["i4", "i3"], f"list_instances('a', 'completed') must stay oldest first, got {ids}"
        assert await a.list_instances("nobody") == [], "an unknown workflow lists nothing"


async def resumable_lists_pending_and_running(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "resumable") as a:
        for iid, status in (("r", "running"), ("c", "completed"), ("p", "pending"), ("f", "failed"),
                            ("x", "cancelled"), ("t", "timed_out"), ("q", "pending")):
            await a.create(iid, "wf", status, start=b"s", header=b".")  # type: ignore[arg-type]
        await a.checkpoint("r", "running", b".", [b"r-r0"], first_seq=0)
        found = await a.resumable()
        ids = [s.instance_id for s in found]
        assert ids == ["r", "p", "q"], (
            f"resumable() must return exactly the pending and running instances, oldest first, got {ids}")
        assert tuple(bytes(r) for r in found[0].records) == (b"r-r0",), "resumable instances must come with their records"
        await a.checkpoint("q", "completed", b".", [], first_seq=0)
        ids = [s.instance_id for s in await a.resumable()]
        assert ids == ["r", "p"], f"an instance checkpointed as completed must not be resumable, got {ids}"


async def delete_removes(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "delete") as a:
        await a.create("i1", "wf", "running", start=b"s", header=b".")
        await a.checkpoint("i1", "completed", b".", [b"r0", b"r1"], first_seq=0)
        assert await a.delete("i1") is True and await a.load("i1") is None, "delete must remove the instance"
        assert await a.delete("i1") is False, "delete of an unknown id must return False"
        assert await a.list_instances("wf") == [] and await a.resumable() == [], "a deleted instance must not be listed"
        assert await a.create("i1", "wf", "running", start=b"s2", header=b"h2") is True, (
            "after a delete, the id must be free for a new instance")
        assert await _stored(a, "i1") == ("i1", "wf", "running", b"s2", b"h2", ()), (
            "delete must remove the instance's records too")
        await a.checkpoint("i1", "running", b"h3", [b"new"], first_seq=0)
        assert (await _stored(a, "i1"))[5] == (b"new",), "a new instance under a deleted id starts at seq 0"


async def survives_reopen(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "reopen") as a:
        await a.create("i1", "wf", "running", start=_START, header=b"h0")
        await a.checkpoint("i1", "running", _BLOB, [b"r0", _BLOB], first_seq=0)
        for iid in ("z9", "a0"):  # created after i1: listed after it, whatever their ids
            await a.create(iid, "wf", "completed", start=b"s", header=b".")
        before = await _stored(a, "i1")
    async with _opened(open_adapter, "reopen") as b:
        after = _view(await b.load("i1"))
        assert after is not None, (
            "what was stored must be there after a reopen: the instance created is gone (does open_adapter(key)"
            " give the same storage for the same key?)")
        assert after == before, f"what was stored must be there after a reopen: was {before}, now {after}"
        ids = [s.instance_id for s in await b.list_instances("wf")]
        assert ids == ["i1", "z9", "a0"], f"listings must keep the creation order across a reopen, got {ids}"
        assert [s.instance_id for s in await b.resumable()] == ["i1"], "a reopened adapter must offer it for resume"
        await _refused(b.checkpoint("i1", "running", b"bad", [b"bad"], first_seq=0), CheckpointConflictError,
                       "after a reopen, the fence must still know how many records are stored")
        await b.checkpoint("i1", "completed", b"h2", [b"r2"], first_seq=2)
    async with _opened(open_adapter, "reopen") as c:
        after = await _stored(c, "i1")
        assert after == ("i1", "wf", "completed", _START, b"h2", (b"r0", _BLOB, b"r2")), (
            f"a checkpoint after a reopen must be there after the next one; got {after}")


async def step_is_durable_before_the_next_starts(open_adapter: OpenAdapter) -> None:
    adapter = open_adapter("durability")
    seen: dict[str, Any] = {}

    async def first(data: Any) -> str:
        return "one"

    async def second(data: Any) -> str:
        stored = await adapter.load(seen["id"])
        assert stored is not None
        seen["first_stored"] = decode_stored(stored).latest.get("first")
        return "two"

    wf = workflow("conformance").task("first", job=first).task("second", job=second).build()
    async with open_engine(adapter=adapter) as engine:
        engine.register(wf)
        seen["id"] = await engine.start("conformance", {"n": 1})
        with trio.fail_after(60):
            done = await engine.wait(seen["id"])
    stored = seen["first_stored"]
    assert stored is not None and stored.status == "completed" and stored.output == "one", (
        f"step 'first' must be stored as completed before 'second' starts; stored: {stored}"
    )
    assert done.status == "completed" and done.output == "two", done


async def bad_data_is_never_stored(open_adapter: OpenAdapter) -> None:
    adapter = open_adapter("bad-data")
    wf = workflow("conformance").task("only", job=lambda data: data).build()
    async with open_engine(adapter=adapter) as engine:
        engine.register(wf)
        await _refused(engine.start("conformance", {"bad": object()}), UnencodableValueError,
                       "an unencodable input must be refused")
        stored = await adapter.list_instances("conformance")
    assert stored == [], f"a refused start must store nothing, found {stored}"


async def signals_are_kept_in_order_and_consumed_once(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "signals") as a:
        await _refused(a.send_signal("nobody", "go", b"x"), UnknownInstanceError,
                       "a signal to an instance never created must raise UnknownInstanceError")
        await a.create("i1", "wf", "running", start=b"s", header=b"h0")
        await a.create("i2", "wf", "running", start=b"s", header=b"h0")
        seqs = [await a.send_signal(i, name, payload)
                for i, name, payload in (("i1", "go", b"one"), ("i2", "go", b"elsewhere"), ("i1", "stop", _BLOB),
                                         ("i1", "go", b"three"))]
        assert all(isinstance(q, int) for q in seqs), f"send_signal must return the seq it stored, got {seqs}"
        first, other, second, third = (int(q or 0) for q in seqs)
        assert first < second < third, f"signal seqs must grow in the order signals are stored, got {seqs}"
        pending = await a.signals("i1")
        assert pending == [(first, "go", b"one"), (second, "stop", _BLOB), (third, "go", b"three")], (
            f"signals() must list an instance's own pending signals in seq order, got {pending}")
        before = await _stored(a, "i1")
        await _refused(a.checkpoint("i1", "running", b"h1", [b"r0"], first_seq=0, consumed=[first, 10**9]),
                       CheckpointConflictError, "a checkpoint consuming a signal that is not pending must be refused")
        assert await _stored(a, "i1") == before and len(await a.signals("i1")) == 3, (
            "a checkpoint refused for its consumed signals must write nothing, and consume nothing")
        await a.checkpoint("i1", "running", b"h1", [b"r0"], first_seq=0, consumed=[first])
        assert [q for q, _, _ in await a.signals("i1")] == [second, third], (
            "a checkpoint must delete the signals it consumes, and only those")
        await _same_signals_loaded(a, "i1")
        await _refused(a.checkpoint("i1", "running", b"h2", [b"r1"], first_seq=1, consumed=[first]),
                       CheckpointConflictError, "a signal consumed once cannot be consumed again")
        await a.checkpoint("i1", "running", b"h1", [], first_seq=1, consumed=[third])
        await _same_signals_loaded(a, "i1")
        fourth = await a.send_signal("i1", "go", b"four")
        assert isinstance(fourth, int) and fourth > third, (
            f"seqs only grow: a signal stored after the newest was consumed got {fourth}, after {third}")
        await a.checkpoint("i1", "completed", b"h2", [b"r1"], first_seq=1, consumed=[fourth])
        assert await a.send_signal("i1", "go", b"late") is None, "a signal to a finished instance must not be stored"
        assert [q for q, _, _ in await a.signals("i1")] == [second], "nothing is stored for a finished instance"
        assert await a.delete("i1") is True and await a.signals("i1") == [], "delete must remove the signals too"
        assert [q for q, _, _ in await a.signals("i2")] == [other], "another instance's signals stay"
    async with _opened(open_adapter, "signals") as b:
        assert [q for q, _, _ in await b.signals("i2")] == [other], "pending signals must survive a reopen"
        stored = await b.load("i2")
        held = None if stored is None else [(q, n, bytes(p)) for q, n, p in stored.signals]
        assert held == [(other, "go", b"elsewhere")], f"load() must give the instance's pending signals, got {held}"
        later = await b.send_signal("i2", "go", b"after the reopen")
        assert isinstance(later, int) and later > fourth, (
            f"seqs only grow, across a reopen too: got {later}, after {fourth} before it")


async def _same_signals_loaded(a: Adapter, instance_id: str) -> None:
    """``load()`` must hand back the signals ``signals()`` lists, no consumed one among them."""
    stored = await a.load(instance_id)
    loaded = None if stored is None else [(q, n, bytes(p)) for q, n, p in stored.signals]
    pending = [(q, n, bytes(p)) for q, n, p in await a.signals(instance_id)]
    assert loaded == pending, (
        f"load() must give exactly the pending signals signals() lists, in seq order, none consumed: got {loaded},"
        f" pending {pending} (a signal consumed and loaded again is delivered twice)")


async def checkpoint_notifies_in_the_same_write(open_adapter: OpenAdapter) -> None:
    """A child's last checkpoint stores its end notice to its parent: both or neither."""
    async with _opened(open_adapter, "notify") as a:
        for i in ("parent", "child", "ended"):
            await a.create(i, "wf", "running", start=b"s", header=b"h0")
        await a.checkpoint("ended", "completed", b"h1", [], first_seq=0)
        await _refused(a.checkpoint("child", "completed", b"h1", [b"r0"], first_seq=5,
                                    notify=("parent", "trioflow.child-ended:child", b"outcome")),
                       CheckpointConflictError, "a fenced-out checkpoint with a notice must be refused")
        assert await a.signals("parent") == [], "a refused checkpoint must store no notice"
        seq = await a.checkpoint("child", "completed", b"h1", [b"r0"], first_seq=0,
                                 notify=("parent", "trioflow.child-ended:child", _BLOB))
        notices = await a.signals("parent")
        assert [(name, payload) for _, name, payload in notices] == [("trioflow.child-ended:child", _BLOB)], (
            f"a checkpoint's notice must be stored as a signal of the instance it names, got {notices}")
        # Returning None is allowed (the engine then reads the parent's signals); a seq must be the notice's.
        assert seq is None or seq == notices[0][0], f"checkpoint returned {seq!r}, the notice's seq is {notices[0][0]}"
        assert (await _stored(a, "child"))[2] == "completed", "the checkpoint itself must be stored with its notice"
        assert await a.checkpoint("child", "completed", b"h2", [], first_seq=1, notify=("ended", "n", b"x")) is None, (
            "a checkpoint whose notice was not stored (its instance has ended) must return None")
        await a.checkpoint("child", "completed", b"h3", [], first_seq=1, notify=("nobody", "n", b"x"))
        assert await a.signals("ended") == [], "no notice is stored for a finished instance"
        assert (await _stored(a, "child"))[4] == b"h3", "a notice to an unknown instance must not stop the checkpoint"


async def waiting_instances_wake_when_due(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "waiting") as a:
        assert await a.next_wake() is None and await a.due(1e12, 10) == [], "nothing waits in a new store"
        for i in ("later", "soon", "signal", "runs"):  # created in another order than they are due
            await a.create(i, "wf", "running", start=b"s", header=b"h0")
        await a.checkpoint("later", "running", b"h1", [], first_seq=0, wake_at=2000.0)
        await a.checkpoint("soon", "running", b"h1", [b"r0"], first_seq=0, wake_at=1000.0)
        await a.checkpoint("signal", "running", b"h1", [], first_seq=0, wake_at=float("inf"))
        assert [s.instance_id for s in await a.resumable()] == ["runs"], (
            "resumable() must leave out instances that wait with a wake_at")
        assert await a.next_wake() == 1000.0, "next_wake() must give the soonest wake_at"
        due = await a.due(1500.0, 10)
        assert [(s.instance_id, s.records) for s in due] == [("soon", (b"r0",))], (
            f"due() must give the instances due by then, with their records; got {due}")
        assert [s.instance_id for s in await a.due(1000.0, 10)] == ["soon"], (
            "due(before) must give an instance whose wake_at is before itself (at most before, not only under it)")
        assert [s.instance_id for s in await a.due(1e12, 10)] == ["soon", "later"], "soonest first, never inf"
        assert [s.instance_id for s in await a.due(1e12, 1)] == ["soon"], "at most limit"
        await a.checkpoint("soon", "running", b"h2", [], first_seq=1)  # woke: no wake_at
        assert await a.next_wake() == 2000.0 and sorted(s.instance_id for s in await a.resumable()) == ["runs", "soon"], (
            "a checkpoint without wake_at ends the wait")
        await a.checkpoint("later", "completed", b"h2", [], first_seq=0)
        assert await a.next_wake() == float("inf"), "a finished instance is not woken"
    async with _opened(open_adapter, "waiting") as b:
        assert await b.next_wake() == float("inf") and [s.instance_id for s in await b.due(1e12, 10)] == [], (
            "wake_at must survive a reopen")


async def created_waiting_instances_wait(open_adapter: OpenAdapter) -> None:
    """An instance created with a ``wake_at`` (a delayed start) waits from then on, as one a
    checkpoint gave it: left out of ``resumable()``, handed back by ``due()``, its wake time
    kept across a reopen and cleared by a checkpoint without one. (An adapter whose ``create``
    takes no ``wake_at`` passes: the engine gives it none.)"""
    async with _opened(open_adapter, "created waiting") as a:
        if not creates_waiting(a):
            raise _NotMade
        await a.create("later", "wf", "running", start=b"s", header=b"h0", wake_at=2000.0)
        await a.create("now", "wf", "running", start=b"s", header=b"h0")
        assert [s.instance_id for s in await a.resumable()] == ["now"], (
            "resumable() must leave out an instance created with a wake_at")
        assert await a.next_wake() == 2000.0 and [s.instance_id for s in await a.due(2000.0, 10)] == ["later"], (
            "next_wake() and due() must see the wake_at an instance was created with")
        assert await a.create("later", "wf", "running", start=b"x", header=b"x", wake_at=1.0) is False
        assert await a.next_wake() == 2000.0, "a create refused (the id exists) must not change its wake_at"
    async with _opened(open_adapter, "created waiting") as b:
        assert await b.next_wake() == 2000.0, "a created wake_at must survive a reopen"
        await b.checkpoint("later", "running", b"h1", [], first_seq=0)
        assert await b.next_wake() is None and sorted(s.instance_id for s in await b.resumable()) == ["later", "now"], (
            "a checkpoint without wake_at ends the wait an instance was created with")


async def waiting_instances_of_skipped_workflows_are_left_out(open_adapter: OpenAdapter) -> None:
    """``due()`` and ``next_wake()`` leave out the workflows named in ``skip_workflows``. (An
    adapter written before the keyword existed passes: the engine passes over those itself.)"""
    async with _opened(open_adapter, "skipping") as a:
        if not skips_workflows(a):
            raise _NotMade
        for i, workflow_name, wake in (("old-1", "old", 10.0), ("old-2", "old", 20.0), ("new", "new", 30.0),
                                       ("gone", "gone", 5.0)):
            await a.create(i, workflow_name, "running", start=b"s", header=b"h0")
            await a.checkpoint(i, "running", b"h1", [], first_seq=0, wake_at=wake)
        assert [s.instance_id for s in await a.due(100.0, 10, skip_workflows=("old", "gone"))] == ["new"], (
            "due() must leave out the instances of the workflows skip_workflows names")
        assert [s.instance_id for s in await a.due(100.0, 1, skip_workflows=["old"])] == ["gone"], (
            "due(limit=1) must count only the instances it does not leave out, soonest first")
        assert await a.next_wake(skip_workflows={"old", "gone"}) == 30.0, (
            "next_wake() must give the soonest wake_at of the workflows not left out")
        assert await a.next_wake(skip_workflows=("old", "new", "gone")) is None, (
            "next_wake() leaving every waiting instance out must give None")
        assert await a.next_wake() == 5.0 and len(await a.due(100.0, 10)) == 4, (
            "without skip_workflows, nothing is left out")


async def waiting_instances_excluded_are_left_out(open_adapter: OpenAdapter) -> None:
    """``due(exclude=...)`` leaves out the instances whose ids it names, not counted in its
    limit, and leaves them due. (An adapter without the keyword passes: the engine passes over
    those itself.)"""
    async with _opened(open_adapter, "excluding") as a:
        if not excludes_instances(a):
            raise _NotMade
        due: Any = a.due  # (the keyword is an adapter's option, not in the protocol's signature)
        ids = [f"w-{n}" for n in range(40)]  # (more than fit in one statement's parameters, too)
        for n, i in enumerate(ids):
            await a.create(i, "old" if n % 2 else "new", "running", start=b"s", header=b"h0")
            await a.checkpoint(i, "running", b"h1", [b"r0"], first_seq=0, wake_at=float(n))
        for exclude in (ids[:3], set(ids[:38])):
            wanted = [i for i in ids if i not in exclude]
            assert [s.instance_id for s in await due(100.0, 1, exclude=exclude)] == wanted[:1], (
                "due(exclude=, limit=1) must give the soonest instance it does not leave out")
            got = await due(100.0, 10, exclude=exclude)
            assert [s.instance_id for s in got] == wanted[:10] and all(s.records == (b"r0",) for s in got), (
                "due() must leave out the instances exclude names, counting only the others in its limit")
        assert [s.instance_id for s in await due(100.0, 2, skip_workflows=["new"], exclude=["w-1"])] == [
            "w-3", "w-5"], "due() must leave out what skip_workflows and exclude name, both"
        assert [s.instance_id for s in await due(100.0, 3)] == ids[:3], "what exclude left out stays due"


async def restart_replaces_the_history(open_adapter: OpenAdapter) -> None:
    """``checkpoint(..., restart=True)`` (an adapter's option: one without it passes, and runs
    no workflow that continues as new) deletes every record and stores its own from seq 0, with
    its start bytes, in one write fenced as any; the pending signals stay, but those it consumes."""
    async with _opened(open_adapter, "restart") as a:
        if not restarts_history(a):
            raise _NotMade
        checkpoint: Any = a.checkpoint  # (the keyword is an adapter's option, not in the protocol's signature)
        await a.create("i1", "wf", "running", start=_START, header=b"h0")
        await a.create("i2", "wf", "running", start=b"other", header=b"x0")
        await a.checkpoint("i1", "running", b"h1", [b"r0", b"r1", b"r2"], first_seq=0, wake_at=5.0)
        await a.checkpoint("i2", "running", b"x1", [b"x-r0"], first_seq=0)
        kept, taken = await a.send_signal("i1", "go", b"p1"), await a.send_signal("i1", "go", b"p2")
        assert kept is not None and taken is not None, "send_signal to a running instance must store it"
        before = await _stored(a, "i1")
        await _refused(checkpoint("i1", "running", b"bad", [], first_seq=2, start=b"bad", restart=True),
                       CheckpointConflictError, "a restart at first_seq=2 of an instance with 3 records must raise"
                       " CheckpointConflictError")
        assert await _stored(a, "i1") == before, "a refused restart must write nothing"
        await checkpoint("i1", "running", b"h2", [b"n0"], first_seq=3, start=b"start-2", consumed=[taken],
                         restart=True)
        stored = await _stored(a, "i1")
        assert stored == ("i1", "wf", "running", b"start-2", b"h2", (b"n0",)), (
            f"a restart must replace the start, header and every record, its own from seq 0; got {stored}")
        assert [seq for seq, _, _ in await a.signals("i1")] == [kept], (
            "a restart must keep the pending signals but those it consumes")
        assert await a.due(100.0, 10) == [], "a restart with no wake_at leaves the instance waiting for nothing"
        await a.checkpoint("i1", "running", b"h3", [b"n1"], first_seq=1)
        assert (await _stored(a, "i1"))[4:] == (b"h3", (b"n0", b"n1")), (
            "after a restart, checkpoints append after its records")
        assert await _stored(a, "i2") == ("i2", "wf", "running", b"other", b"x1", (b"x-r0",)), (
            "a restart must touch only its own instance")


async def restart_lets_go_of_finished_children(open_adapter: OpenAdapter) -> None:
    """A restart (see :func:`restart_replaces_the_history`) of an adapter that keeps families
    lets go of the instance's finished children: purge takes them by their own finish times."""
    async with _opened(open_adapter, "restart_children") as a:
        if not (restarts_history(a) and keeps_families(a)):
            raise _NotMade
        checkpoint: Any = a.checkpoint
        create: Any = a.create
        await a.create("p", "wf", "running", start=_START, header=b"h0")
        await create("p/done", "wf", "running", start=b"s", header=b"h", parent_id="p")
        await create("p/runs", "wf", "running", start=b"s", header=b"h", parent_id="p")
        await a.checkpoint("p/done", "completed", b"h-end", [], first_seq=0)
        assert await a.purge(math.inf, 10) == 0, "a finished child must be kept while its parent is stored"
        await checkpoint("p", "running", b"h1", [], first_seq=0, start=b"start-2", restart=True)
        await a.checkpoint("p/runs", "completed", b"h-end", [], first_seq=0)
        assert await a.purge(math.inf, 10) == 1 and await a.load("p/done") is None, (
            "a restart must let go of its instance's finished children (purge takes them then), and only them")
        assert await a.load("p/runs") is not None and await a.load("p") is not None, (
            "a child still running at a restart stays kept by its parent")


async def delete_refuses_unfinished(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "delete_unfinished") as a:
        for iid, status in (("p", "pending"), ("r", "running")):
            await a.create(iid, "wf", status, start=b"s", header=b".")  # type: ignore[arg-type]
            await a.checkpoint(iid, status, b"h", [b"r0"], first_seq=0)  # type: ignore[arg-type]
            await a.send_signal(iid, "go", b"x")
            before = await _stored(a, iid)
            await _refused(a.delete(iid), InstanceStillRunningError,
                           f"delete of a {status} instance must raise InstanceStillRunningError")
            assert await _stored(a, iid) == before and len(await a.signals(iid)) == 1, (
                f"a refused delete of a {status} instance must delete nothing")
        for status in sorted(TERMINAL):
            await a.create(status, "wf", "running", start=b"s", header=b".")
            await a.checkpoint(status, status, b"h", [], first_seq=0)  # type: ignore[arg-type]
            assert await a.delete(status) is True and await a.load(status) is None, (
                f"delete of a {status} instance must remove it")


class _Clock:
    """A wall clock the checks set by hand (Unix seconds)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def purge_by_finish_time(open_adapter: OpenAdapter) -> None:
    clock = _Clock(1000.0)
    finishing = [("a", "w1", "completed", 1000.0), ("b", "w1", "failed", 2000.0), ("c", "w2", "cancelled", 3000.0),
                 ("e", "w1", "timed_out", 4000.0)]
    async with _opened(open_adapter, "purge", clock) as a:
        for iid, name, _, _ in finishing:
            await a.create(iid, name, "running", start=b"s", header=b".")
        await a.create("d", "w1", "pending", start=b"s", header=b".")
        await a.create("r", "w1", "running", start=b"s", header=b".")
        await a.send_signal("a", "left", b"unconsumed")
        for iid, _, status, at in finishing:
            clock.now = at
            await a.checkpoint(iid, status, b"h", [b"r0", b"r1"], first_seq=0)  # type: ignore[arg-type]
        clock.now = 9000.0
        await a.checkpoint("r", "running", b"h", [b"r0"], first_seq=0)
        assert await a.purge(999.0, 10) == 0, "nothing finished by 999"
        assert await a.purge(2500.0, 1) == 1 and await a.load("a") is None, (
            "purge must delete the earliest finished instance first, at most limit")
        assert await a.signals("a") == [], "purge must delete an instance's pending signals"
        assert await a.purge(2500.0, 10, status="completed") == 0, "purge(status=) must leave other statuses"
        assert await a.purge(1e12, 10, workflow_name="w2") == 1 and await a.load("c") is None, (
            "purge(workflow_name=) must delete that workflow's finished instances")
        assert await a.purge(1e12, 10, status="failed") == 1 and await a.load("b") is None, (
            "purge(status=) must delete the finished instances of that status")
        assert await a.purge(3999.0, 10) == 0, "a finish time is when the instance finished, not when it was created"
        assert await a.purge(float("inf"), 10) == 1 and await a.load("e") is None, "purge must delete timed_out too"
        assert [s.instance_id for s in await a.list_instances()] == ["d", "r"], (
            "purge must never delete a pending or running instance")
        assert await a.create("a", "w1", "running", start=b"s2", header=b"h2") is True, (
            "after a purge, the id must be free for a new instance")
        await a.checkpoint("a", "running", b"h3", [b"new"], first_seq=0)
        assert (await _stored(a, "a"))[5] == (b"new",), "purge must delete the instance's records too"
        await a.create("made-finished", "w1", "completed", start=b"s", header=b".")
    async with _opened(open_adapter, "purge", _Clock(99_999.0)) as b:
        assert await b.purge(8999.0, 10) == 0, "finish times must survive a reopen"
        assert await b.purge(9000.0, 10) == 1 and await b.load("made-finished") is None, (
            "an instance created finished has the time of its create as its finish time")


async def purge_keeps_children_while_their_parent_is_stored(open_adapter: OpenAdapter) -> None:
    """A child (created with a ``parent_id``) is kept by purges while its parent is stored,
    grandchildren too; the call that deletes the parent deletes them with it, beyond its
    ``limit``; a child whose parent is not stored goes by its own finish time. Kept children
    use none of a purge's ``limit``. (An adapter whose ``create`` takes no ``parent_id``
    passes: the engine gives it none.)"""
    clock = _Clock(1000.0)
    async with _opened(open_adapter, "families", clock) as a:
        if not keeps_families(a):
            raise _NotMade
        await a.create("p", "order", "running", start=b"s", header=b".")
        await a.create("p/c#1", "kid", "running", start=b"s", header=b".", parent_id="p")
        await a.create("p/c#1/g#1", "grandkid", "running", start=b"s", header=b".", parent_id="p/c#1")
        await a.create("orphan", "kid", "running", start=b"s", header=b".", parent_id="never-stored")
        await a.create("plain", "order", "running", start=b"s", header=b".")
        for iid in ("p/c#1", "p/c#1/g#1"):
            await a.send_signal(iid, "left", b"unconsumed")
        for iid, at in (("p/c#1/g#1", 1000.0), ("p/c#1", 1100.0), ("orphan", 1200.0), ("plain", 1300.0)):
            clock.now = at
            await a.checkpoint(iid, "completed", b"h", [b"r0"], first_seq=0)
        await _refused(a.create("bad", "kid", "running", start=b"s", header=b".", parent_id=5),  # type: ignore[arg-type]
                       StorageError, "create(parent_id=) of something other than a str must raise StorageError")
        assert await a.load("bad") is None, "a refused create must store nothing"
        assert await a.purge(1e12, 1) == 1 and await a.load("orphan") is None, (
            "a child whose parent is not stored goes by its finish time; kept children use none of the limit")
    async with _opened(open_adapter, "families", _Clock(5000.0)) as b:
        assert await b.purge(1e12, 10) == 1 and await b.load("plain") is None, (
            "purge must keep a child while its parent is stored, and a grandchild while its parent is (after a reopen too)")
        assert await b.load("p/c#1") is not None and await b.load("p/c#1/g#1") is not None
        await b.checkpoint("p", "completed", b"h", [], first_seq=0)
        assert await b.purge(4999.0, 10) == 0, "the parent finished at 5000: its family stays"
        assert await b.purge(1e12, 1) == 3, (
            "a purge that deletes a parent deletes the children it kept, and theirs, in the same call (beyond limit)")
        assert [s.instance_id for s in await b.list_instances()] == [], "nothing of the family is left"
        for iid in ("p/c#1", "p/c#1/g#1"):  # (as a parent started again under the id makes them)
            await b.create(iid, "kid", "running", start=b"s2", header=b"h2", parent_id="p")
            assert await _stored(b, iid) == (iid, "kid", "running", b"s2", b"h2", ()) and await b.signals(iid) == [], (
                f"the purge that took {iid!r} along with its parent must delete its records and signals too")
            await b.checkpoint(iid, "running", b"h3", [b"new"], first_seq=0)


async def purge_lets_go_of_the_children_a_deleted_parent_kept(open_adapter: OpenAdapter) -> None:
    """Children a parent kept go by their own finish time once the parent is gone: deleted, or
    purged by a call that left them (of another workflow or status, or not finished), in the
    order they finished among the rows nothing keeps; a grandchild stays while the child that
    keeps it is stored. (An adapter whose ``create`` takes no ``parent_id`` passes.)"""
    clock = _Clock(1000.0)
    async with _opened(open_adapter, "released", clock) as a:
        if not keeps_families(a):
            raise _NotMade
        await a.create("p", "order", "running", start=b"s", header=b".")
        await a.create("q", "order", "running", start=b"s", header=b".")
        for iid, name, parent in (("p/k#1", "kid", "p"), ("p/k#1/g#1", "grandkid", "p/k#1"), ("q/k#1", "kid", "q"),
                                  ("q/k#2", "kid", "q")):
            await a.create(iid, name, "running", start=b"s", header=b".", parent_id=parent)
        await a.create("early", "plain", "running", start=b"s", header=b".")
        await a.create("late", "plain", "running", start=b"s", header=b".")
        for iid, at in (("p/k#1/g#1", 1000.0), ("p/k#1", 1100.0), ("q/k#1", 1150.0), ("early", 1160.0),
                        ("p", 1200.0), ("q", 1300.0), ("late", 1400.0)):
            clock.now = at
            await a.checkpoint(iid, "completed", b"h", [b"r0"], first_seq=0)
        assert await a.delete("p") is True
        assert await a.purge(1e12, 1, workflow_name="grandkid") == 0, (
            "a grandchild stays while the child keeping it is stored, its grandparent deleted")
        assert await a.purge(1e12, 1, workflow_name="kid") == 1 and await a.load("p/k#1") is None, (
            "a child whose parent was deleted goes by its own finish time")
        assert await a.purge(1e12, 10, workflow_name="order") == 1 and await a.load("q") is None, (
            "a purge of the parent's workflow takes the parent alone, and leaves its children of another")
        assert [s.instance_id for s in await a.list_instances()] == ["p/k#1/g#1", "q/k#1", "q/k#2", "early", "late"]
    async with _opened(open_adapter, "released", _Clock(2000.0)) as b:
        assert await b.purge(1e12, 2) == 2, "the rows let go take their place in the finish order"
        assert [s.instance_id for s in await b.list_instances()] == ["q/k#2", "early", "late"], (
            "the children let go go in the order they finished, before the rows that finished after them"
            " (after a reopen too)")
        await b.checkpoint("q/k#2", "failed", b"h", [b"r0"], first_seq=0)
        assert await b.purge(1e12, 1) == 1 and await b.load("early") is None, (
            "a child let go while it ran goes by the time it finishes, after the rows that finished before")
        assert await b.purge(1e12, 10) == 2 and await b.list_instances() == []


async def lists_pages_in_creation_order(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "pages") as a:
        rows = [("n1", "x", "running"), ("n2", "y", "completed"), ("n3", "x", "completed"), ("n4", "y", "running"),
                ("n5", "x", "running")]
        for iid, name, status in rows:
            await a.create(iid, name, status, start=b"s", header=b".")  # type: ignore[arg-type]

        async def ids(*args: Any, **kwargs: Any) -> list[str]:
            return [s.instance_id for s in await a.list_instances(*args, **kwargs)]

        assert await ids() == ["n1", "n2", "n3", "n4", "n5"], "list_instances() must list every workflow, oldest first"
        assert await ids(newest_first=True) == ["n5", "n4", "n3", "n2", "n1"], "newest_first=True lists newest first"
        assert await ids(None, "running") == ["n1", "n4", "n5"], "a status, every workflow"
        assert await ids("x", limit=2) == ["n1", "n3"] and await ids("x", limit=2, after="n3") == ["n5"], (
            "limit and after page through a workflow")
        assert await ids("x", "running", limit=1, after="n1") == ["n5"], "pages of a workflow and status"
        assert await ids(limit=2, after="n4", newest_first=True) == ["n3", "n2"], "pages newest first"
        assert await ids(after="n5") == [] and await ids(after="n1", newest_first=True) == [], "past the end"
        await a.checkpoint("n3", "running", b".", [], first_seq=0)
        assert await ids("x", "completed", after="n3") == [], (
            "after= goes by the instance's place, whatever its status is now")
        await a.checkpoint("n1", "completed", b".", [], first_seq=0)
        assert await ids("x", "running", after="n1") == ["n3", "n5"], (
            "after= an instance whose status no longer matches the filter goes by its place")
        await a.create("n6", "x", "running", start=b"s", header=b".")
        assert await ids("x", after="n3") == ["n5", "n6"], "an instance created since comes on a later page, oldest first"
        assert await ids("x", after="n3", newest_first=True) == ["n1"], "and never again on a page newest first"
        await _refused(a.list_instances(after="never-stored"), UnknownInstanceError,
                       "after= an instance that is not stored must raise UnknownInstanceError")


async def scans_hand_back_every_record_in_order(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "scans") as a:
        for iid in ("many", "waits"):
            await a.create(iid, "wf", "running", start=b"s", header=b"h")
            for seq in range(3):
                await a.checkpoint(iid, "running", b"h", [f"{iid}-r{seq}".encode()], first_seq=seq)
        await a.checkpoint("waits", "running", b"h", [b"waits-r3"], first_seq=3, wake_at=10.0)
        want = {"many": tuple(f"many-r{n}".encode() for n in range(3)),
                "waits": tuple(f"waits-r{n}".encode() for n in range(4))}
        for what, found in (("list_instances()", await a.list_instances()), ("resumable()", await a.resumable()),
                            ("due()", await a.due(100.0, 10))):
            for stored in found:
                got = tuple(bytes(r) for r in stored.records)
                assert got == want[stored.instance_id], (
                    f"{what} must hand back every record of {stored.instance_id!r} in seq order, got {got}")
        assert [s.instance_id for s in await a.resumable()] == ["many"], "a waiting instance is not resumable"
        await a.send_signal("waits", "go", b"x")
        assert [s.instance_id for s in await a.resumable()] == ["many", "waits"], (
            "resumable() must include a waiting instance that has a pending signal (one stored just before a"
            " crash must still reach it)")


async def refused_writes_leave_everything(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "refused_writes") as a:
        await a.create("i1", "wf", "running", start=_START, header=b"h0")
        await a.checkpoint("i1", "running", b"h1", [b"r0"], first_seq=0)
        before = await _stored(a, "i1")
        await _refused(a.checkpoint("i1", "completed", None, [b"r1"], first_seq=1),  # type: ignore[arg-type]
                       Exception, "a checkpoint whose header is None must raise")
        await _refused(a.checkpoint("i1", "running", b"h2", [b"r1"], first_seq=5, wake_at=50.0),
                       CheckpointConflictError, "a checkpoint at the wrong seq must raise CheckpointConflictError")
        assert await _stored(a, "i1") == before, "a refused checkpoint must append no record and change no header"
        assert await a.next_wake() is None and await a.due(1e12, 10) == [], (
            "a refused checkpoint must not store its wake_at")
        await a.create("p", "wf", "pending", start=b"s", header=b".")
        assert [s.instance_id for s in await a.list_instances(status="pending")] == ["p"], (
            "list_instances(status='pending') must list the pending instances")


async def purge_goes_by_finish_order_not_creation_order(open_adapter: OpenAdapter) -> None:
    clock = _Clock(1000.0)
    async with _opened(open_adapter, "purge_order", clock) as a:
        for iid in ("older", "younger"):
            await a.create(iid, "wf", "running", start=b"s", header=b".")
        await a.checkpoint("younger", "completed", b"h", [], first_seq=0)  # finishes first, at 1000
        clock.now = 2000.0
        await a.checkpoint("older", "completed", b"h", [], first_seq=0)
        assert await a.purge(5000.0, 1) == 1 and await a.load("younger") is None and await a.load("older") is not None, (
            "purge must delete the instance that finished first, whatever the order they were created in")


async def fences_hold_for_every_kind_of_checkpoint(open_adapter: OpenAdapter) -> None:
    async with _opened(open_adapter, "fences_everywhere") as a:
        await a.create("long", "wf", "running", start=b"s", header=b"h")
        for n in range(12):  # past ten: seqs are numbers, not text ("10" before "2")
            await a.checkpoint("long", "running", b"h", [f"r{n}".encode()], first_seq=n)
        want = tuple(f"r{n}".encode() for n in range(12))
        for what, found in (("load()", [await a.load("long")]), ("list_instances()", await a.list_instances()),
                            ("resumable()", await a.resumable())):
            got = [tuple(bytes(r) for r in s.records) for s in found if s is not None]
            assert got == [want], f"{what} must hand back 12 records in seq order (0, 1, 2, ... 11), got {got}"
        seq = await a.send_signal("long", "go", b"payload")
        assert seq is not None, "send_signal to a running instance must return the signal's seq"
        before = await _stored(a, "long")
        await _refused(a.checkpoint("long", "completed", b"bad", [], first_seq=5),
                       CheckpointConflictError, "a checkpoint with no records at the wrong seq must raise"
                       " CheckpointConflictError: the fence holds for every checkpoint, not only for appends")
        await _refused(a.checkpoint("long", "running", b"bad", [], first_seq=11, consumed=[seq]),
                       CheckpointConflictError, "a checkpoint consuming a signal at the wrong seq must raise"
                       " CheckpointConflictError")
        assert await _stored(a, "long") == before, "a refused checkpoint must change nothing"
        assert [s for s, _, _ in await a.signals("long")] == [seq], (
            "a refused checkpoint must not consume its signals: the signal would be lost")


async def filters_come_before_limits(open_adapter: OpenAdapter) -> None:
    clock = _Clock(1000.0)
    async with _opened(open_adapter, "filters_before_limits", clock) as a:
        rows = [("c0", "w1", "completed"), ("c1", "w1", "completed"), ("c2", "w1", "completed"), ("r0", "w1", "running"),
                ("x", "w2", "completed"), ("f", "w1", "failed"), ("r1", "w2", "running")]
        for iid, name, status in rows:
            await a.create(iid, name, "running", start=b"s", header=b".")
            if status != "running":
                clock.now = 2000.0 if iid == "f" else 1000.0
                await a.checkpoint(iid, status, b"h", [], first_seq=0)  # type: ignore[arg-type]

        async def ids(*args: Any, **kwargs: Any) -> list[str]:
            return [s.instance_id for s in await a.list_instances(*args, **kwargs)]

        assert await ids(None, "running", limit=1) == ["r0"] and await ids(None, "running", limit=1, after="r0") == ["r1"], (
            "list_instances(status=, limit=) of every workflow must filter by status before it limits")
        clock.now = 5000.0
        await a.checkpoint("c0", "completed", b"h2", [], first_seq=0)
        assert await a.purge(1500.0, 3, workflow_name="w1") == 3, (
            "a checkpoint that keeps a finished status must keep its finish time (c0 finished at 1000)")
        assert await a.purge(1e12, 1, status="failed") == 1 and await a.load("f") is None, (
            "purge(status=, limit=) must filter by status before it limits (the earliest finished is another status)")
        assert await a.purge(1e12, 1, workflow_name="w2") == 1 and await a.load("x") is None, (
            "purge(workflow_name=, limit=) must filter by workflow before it limits")
        a.use_clock(_Clock(10.0))  # (what a second engine, refused at open, gives)
        clock.now = 6000.0
        await a.create("late", "w1", "running", start=b"s", header=b".")
        await a.checkpoint("late", "completed", b"h", [], first_seq=0)
        assert await a.purge(5999.0, 10) == 0 and await a.load("late") is not None, (
            "a clock given while the adapter is open must change nothing (late finished at 6000)")


async def purge_by_status_goes_by_the_status_now(open_adapter: OpenAdapter) -> None:
    """A finished instance whose status changes later (a completed child its parent then
    compensates) is purged by the status it has now, never by the one it had: an adapter that
    keeps finished rows by status (an index on status and finish time) must move it."""
    clock = _Clock(1000.0)
    async with _opened(open_adapter, "status_now", clock) as a:
        for iid in ("undone", "done"):
            await a.create(iid, "kid", "running", start=b"s", header=b".")
            await a.checkpoint(iid, "completed", b"h", [b"r0"], first_seq=0)
        clock.now = 2000.0
        await a.checkpoint("undone", "compensated", b"h2", [b"r1"], first_seq=1)
    async with _opened(open_adapter, "status_now", _Clock(3000.0)) as b:
        assert await b.purge(1e12, 1, status="completed") == 1 and await b.load("done") is None \
            and await b.load("undone") is not None, (
                "purge(status=) must go by the status an instance has now (undone was completed, then compensated)")
        assert await b.purge(1e12, 10, status="completed", workflow_name="kid") == 0, (
            "purge(status=, workflow_name=) must go by the status an instance has now")
        assert await b.purge(1e12, 10, status="compensated", workflow_name="kid") == 1 \
            and await b.load("undone") is None, "an instance whose status changed is purged by its new one"


_CANCEL_PASSES = 12


class _CancelAtStep(trio.abc.Instrument):
    """Cancels ``scope`` as ``task`` is about to take its ``step``-th step since this was added
    (as it resumes from its ``step``-th wait), so that the cancel is delivered at its next wait:
    at a chosen wait of the write, whatever order trio's scheduler runs a pass's tasks in (a
    task of its own counting passes beside the write let a write that waits once end before
    the cancel, or not, by the draw)."""

    def __init__(self, task: trio.lowlevel.Task, step: int, scope: trio.CancelScope) -> None:
        self.task, self.step, self.scope, self.steps = task, step, scope, 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1
            if self.steps == self.step:
                self.scope.cancel()


async def _cancelled_after(passes: int, write: Callable[[], Awaitable[object]]) -> tuple[bool, bool]:
    """Run ``write()`` cancelled at its wait number ``passes + 1`` (its first: ``passes`` 0): whether
    it returned, and whether the cancel came before it did."""
    returned = cancelled_first = False
    with trio.CancelScope() as scope:
        at = _CancelAtStep(trio.lowlevel.current_task(), passes, scope)
        if passes == 0:
            scope.cancel()
        else:
            trio.lowlevel.add_instrument(at)
        try:
            await write()
        except Exception:  # (raising having written nothing is allowed, as Cancelled is)
            pass
        else:
            returned, cancelled_first = True, scope.cancel_called
        finally:
            if passes:
                trio.lowlevel.remove_instrument(at)
    return returned, cancelled_first


async def _held(a: Adapter, instance_id: str) -> tuple[Any, ...]:
    """An instance's row and its pending signals' names and payloads."""
    return _view(await a.load(instance_id)), tuple((n, bytes(p)) for _, n, p in await a.signals(instance_id))


async def writes_are_all_or_nothing_under_cancellation(open_adapter: OpenAdapter) -> None:
    """Each kind of write, cancelled in turn at each of its first waits, either returns having
    made all of it or raises having made none of it, after a reopen too: the engine cancels the
    writes in flight when its block is left, and takes one that raised as not made. (An
    adapter that cannot take a write back must keep its caller until it is acknowledged.)"""
    held: dict[str, tuple[Any, ...]] = {}
    async with _opened(open_adapter, "cancelled_writes", _Clock(1000.0)) as a:
        # (Each called only where sends_keyed, or sends_keyed_and_loads, says the engine would.)
        keyed: KeyedSignals = a  # type: ignore[assignment]
        combined: KeyedSignalsAndLoads = a  # type: ignore[assignment]
        await a.create("parent", "wf", "running", start=b"s", header=b"h0")
        for passes in range(_CANCEL_PASSES):
            c, d, g, n, k, ks, kl = (f"{what}{passes}" for what in ("c", "d", "g", "n", "k", "ks", "kl"))
            for iid in (c, d, g, k, ks, kl):
                await a.create(iid, "wf" if iid != g else g, "running", start=b"s", header=b"h0")
                await a.checkpoint(iid, "running", b"h1", [b"r0"], first_seq=0)
            for iid in (d, g):
                await a.checkpoint(iid, "completed", b"h2", [], first_seq=1)
            seq = int(await a.send_signal(c, "go", b"one") or 0)
            notices = len(await a.signals("parent"))
            made = {  # what each write stores, as _held shows it
                n: ((n, "wf", "running", b"s", _BLOB, ()), ()),
                **{iid: ((iid, "wf", "running", b"s", b"h1", (b"r0",)), (("go", b"one"), ("go", _BLOB)))
                   for iid in (k, ks, kl)},
                c: ((c, "wf", "completed", b"s", _BLOB, (b"r0", b"r1", _BLOB)), ()),
                d: (None, ()),
                g: (None, ()),
            }
            writes: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                (n, lambda: a.create(n, "wf", "running", start=b"s", header=_BLOB)),
                (k, lambda: a.send_signal(k, "go", _BLOB)),
                (c, lambda: a.checkpoint(c, "completed", _BLOB, [b"r1", _BLOB], first_seq=1, consumed=[seq],
                                         notify=("parent", "ended", b"n"))),
                (d, lambda: a.delete(d)),
                (g, lambda: a.purge(1e12, 10, workflow_name=g)),
            ]
            # A keyed signal's key is written with it: cancelled, both or neither (see _key_kept).
            if sends_keyed(a):
                writes.append((ks, lambda: keyed.send_keyed_signal(ks, "go", _BLOB, "key")))
            if sends_keyed_and_loads(a):
                writes.append((kl, lambda: combined.send_keyed_signal_and_load(kl, "go", _BLOB, "key")))
            for iid in (k, ks, kl):
                await a.send_signal(iid, "go", b"one")
            untouched = 0
            for iid, write in writes:
                before = await _held(a, iid)
                returned, cancelled_first = await _cancelled_after(passes, write)
                untouched += returned and not cancelled_first
                held[iid] = await _held(a, iid)
                want = made[iid] if returned else before
                assert held[iid] == want, (
                    f"a write to {iid!r} cancelled at its wait number {passes + 1} must have been made whole if it"
                    f" returned, or not at all if it raised: it {'returned' if returned else 'raised'}, and stored"
                    f" {held[iid]}, not {want}")
                if iid in (ks, kl):
                    # Sent again: its key was kept (nothing stored now) exactly when the write returned.
                    seen = (await write())[1]  # type: ignore[index]
                    assert seen == returned, (
                        f"a keyed signal to {iid!r} cancelled at its wait number {passes + 1} must have its key stored"
                        f" exactly when its signal is: it {'returned' if returned else 'raised'}")
                    held[iid] = await _held(a, iid)
            notices += held[c][0] is not None and held[c][0][2] == "completed"
            assert len(await a.signals("parent")) == notices, (
                "a cancelled checkpoint must store its notice exactly when it stores the rest")
            if untouched == len(writes):
                break  # every write now ends before the cancel comes
    async with _opened(open_adapter, "cancelled_writes") as b:
        for iid, before in held.items():
            after = await _held(b, iid)
            assert after == before, f"what a cancelled write left must be what is there after a reopen: {before}, now {after}"


_CHECKS: list[Callable[[OpenAdapter], Awaitable[None]]] = [
    create_and_load, create_is_idempotent, checkpoint_appends, checkpoint_is_fenced,
    checkpoint_of_unknown_instance, checkpoint_is_atomic, start_set_once, list_by_name_and_status,
    resumable_lists_pending_and_running, delete_removes, survives_reopen,
    step_is_durable_before_the_next_starts, bad_data_is_never_stored, signals_are_kept_in_order_and_consumed_once,
    signal_and_load_is_one_call, keyed_signals_are_stored_once, keyed_signal_and_load_is_one_call,
    load_head_leaves_out_the_records, checkpoint_notifies_in_the_same_write, waiting_instances_wake_when_due,
    created_waiting_instances_wait,
    waiting_instances_of_skipped_workflows_are_left_out, waiting_instances_excluded_are_left_out,
    restart_replaces_the_history, delete_refuses_unfinished, purge_by_finish_time,
    lists_pages_in_creation_order, scans_hand_back_every_record_in_order, refused_writes_leave_everything,
    purge_goes_by_finish_order_not_creation_order, fences_hold_for_every_kind_of_checkpoint,
    filters_come_before_limits, purge_keeps_children_while_their_parent_is_stored,
    purge_lets_go_of_the_children_a_deleted_parent_kept, writes_are_all_or_nothing_under_cancellation,
    restart_lets_go_of_finished_children, purge_by_status_goes_by_the_status_now,
]
