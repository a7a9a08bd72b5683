"""Review findings from the point of view of a third-party adapter author.

An adapter over plain dicts (``DictAdapter`` below) was written from docs/adapters.md alone: it
passes ``check_persistence_adapter`` and runs sagas, timers, signals, maps of child workflows,
cancels and restarts exactly as ``MemoryAdapter`` does. Each test below takes a deliberately
broken variant of it (a bug an author could plausibly write), shows what goes wrong in the
engine (or in storage) because of it, and then asserts that the public conformance kit rejects
it. Each fails today because the kit passes the broken adapter.
"""
from __future__ import annotations

import itertools
import time
from typing import Any

import attrs
import pytest
import trio

import trioflow as tf
from trioflow import (AdapterInUseError, CheckpointConflictError, InstanceStillRunningError, StorageError,
                      UnknownInstanceError)
from trioflow.adapters import StoredInstance
from trioflow.testing import check_persistence_adapter, virtual_wall_clock

RESUMABLE = ("pending", "running")

STORES: dict[Any, dict] = {}


def _b(v, what):
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise StorageError(f"{what} must be bytes, got {type(v).__name__}")


class DictAdapter:
    def __init__(self, store: dict):
        self.s = store
        self.s.setdefault("rows", {})
        self.s.setdefault("created", 0)
        self.s.setdefault("sig", 0)
        self.s.setdefault("finished", 0)
        self._clock = time.time
        self._open = False

    # -- lifecycle
    def use_clock(self, clock):
        if not self._open:
            self._clock = clock

    async def open(self):
        if self.s.get("opened"):
            raise AdapterInUseError("in use")
        self.s["opened"] = True
        self._open = True

    async def close(self):
        self.s["opened"] = False
        self._open = False

    @property
    def rows(self) -> dict:
        return self.s["rows"]

    def _stamp(self, row):
        if row["status"] in RESUMABLE:
            row["finished_at"] = None
        else:
            self.s["finished"] += 1
            row["finished_at"] = (self._clock(), self.s["finished"])

    def _view(self, row, signals=False):
        return StoredInstance(
            instance_id=row["id"], workflow_name=row["wf"], status=row["status"], start=row["start"],
            header=row["header"], records=tuple(row["records"]),
            signals=tuple((q, n, p) for q, (n, p) in sorted(row["signals"].items())) if signals else (),
        )

    # -- writes
    async def create(self, instance_id, workflow_name, status, *, start, header, parent_id=None):
        if instance_id in self.rows:
            return False
        start, header = _b(start, "start"), _b(header, "header")
        if parent_id is not None and not isinstance(parent_id, str):
            raise StorageError("parent_id must be a str")
        if parent_id not in self.rows:
            parent_id = None
        self.s["created"] += 1
        row = dict(id=instance_id, order=self.s["created"], wf=workflow_name, status=status, start=start,
                   header=header, records=[], signals={}, wake_at=None, finished_at=None, parent_id=parent_id)
        self._stamp(row)
        self.rows[instance_id] = row
        return True

    async def checkpoint(self, instance_id, status, header, records, *, first_seq, start=None, consumed=(),
                         wake_at=None, notify=None):
        row = self.rows.get(instance_id)
        if row is None:
            raise UnknownInstanceError(instance_id)
        if first_seq != len(row["records"]):
            raise CheckpointConflictError(f"{instance_id}: at {len(row['records'])}, not {first_seq}")
        if any(q not in row["signals"] for q in consumed) or len(set(consumed)) != len(consumed):
            raise CheckpointConflictError(f"{instance_id}: consumed {consumed} not pending")
        new = [_b(r, "record") for r in records]
        header = _b(header, "header")
        if start is not None:
            start = _b(start, "start")
        if notify is not None:
            notify = (notify[0], notify[1], _b(notify[2], "notice"))
        # all checked: apply
        if status != row["status"]:
            row["status"] = status
            self._stamp(row)
        row["header"] = header
        row["records"].extend(new)
        if start is not None:
            row["start"] = start
        for q in consumed:
            del row["signals"][q]
        row["wake_at"] = wake_at
        if notify is not None and notify[0] in self.rows:
            return self._store_signal(*notify)
        return None

    def _store_signal(self, instance_id, name, payload):
        row = self.rows[instance_id]
        if row["status"] not in RESUMABLE:
            return None
        self.s["sig"] += 1
        row["signals"][self.s["sig"]] = (name, payload)
        return self.s["sig"]

    async def send_signal(self, instance_id, name, payload):
        if instance_id not in self.rows:
            raise UnknownInstanceError(instance_id)
        return self._store_signal(instance_id, name, _b(payload, "payload"))

    async def signals(self, instance_id):
        row = self.rows.get(instance_id)
        if row is None:
            return []
        return [(q, n, p) for q, (n, p) in sorted(row["signals"].items())]

    # -- reads
    async def load(self, instance_id):
        row = self.rows.get(instance_id)
        return None if row is None else self._view(row, signals=True)

    def _sorted(self, rows, newest_first=False):
        return sorted(rows, key=lambda r: r["order"], reverse=newest_first)

    async def list_instances(self, workflow_name=None, status=None, *, after=None, limit=None, newest_first=False):
        rows = [r for r in self.rows.values()
                if (workflow_name is None or r["wf"] == workflow_name) and (status is None or r["status"] == status)]
        if after is not None:
            cur = self.rows.get(after)
            if cur is None:
                raise UnknownInstanceError(after)
            rows = [r for r in rows if (r["order"] < cur["order"] if newest_first else r["order"] > cur["order"])]
        rows = self._sorted(rows, newest_first)
        if limit is not None:
            rows = rows[:limit]
        return [self._view(r) for r in rows]

    async def resumable(self):
        return [self._view(r) for r in self._sorted(self.rows.values())
                if r["status"] in RESUMABLE and (r["wake_at"] is None or r["signals"])]

    def _waiting(self, skip):
        return [r for r in self.rows.values()
                if r["status"] in RESUMABLE and r["wake_at"] is not None and r["wf"] not in skip]

    async def due(self, before, limit, *, skip_workflows=()):
        rows = sorted((r for r in self._waiting(set(skip_workflows)) if r["wake_at"] <= before),
                      key=lambda r: (r["wake_at"], r["order"]))
        return [self._view(r) for r in rows[:limit]]

    async def next_wake(self, *, skip_workflows=()):
        rows = self._waiting(set(skip_workflows))
        return min((r["wake_at"] for r in rows), default=None)

    # -- deletes
    def _remove(self, row):
        del self.rows[row["id"]]
        for r in self.rows.values():
            if r["parent_id"] == row["id"]:
                r["parent_id"] = None  # let go

    async def delete(self, instance_id):
        row = self.rows.get(instance_id)
        if row is None:
            return False
        if row["status"] in RESUMABLE:
            raise InstanceStillRunningError(instance_id, row["status"])
        self._remove(row)
        return True

    def _takes(self, row, finished_by, status, workflow_name):
        return (row["status"] not in RESUMABLE and row["finished_at"][0] <= finished_by
                and (status is None or row["status"] == status)
                and (workflow_name is None or row["wf"] == workflow_name))

    async def purge(self, finished_by, limit, *, status=None, workflow_name=None):
        cands = sorted((r for r in self.rows.values()
                        if r["parent_id"] is None and self._takes(r, finished_by, status, workflow_name)),
                       key=lambda r: r["finished_at"])
        n = 0
        for row in cands[:limit]:
            todo = [row]
            while todo:
                r = todo.pop()
                kids = [k for k in self.rows.values() if k["parent_id"] == r["id"]]
                self._remove(r)
                n += 1
                todo.extend(k for k in kids if self._takes(k, finished_by, status, workflow_name))
        return n




# ---------------------------------------------------------------------------------------------
# harness

_keys = itertools.count()


def _opener(cls: type[DictAdapter]):
    """``open_adapter(key)`` for the kit: same key, same storage."""
    prefix = next(_keys)
    return lambda key: cls(STORES.setdefault((prefix, key), {}))


async def _kit_rejects(cls: type[DictAdapter]) -> None:
    """The correct adapter passes the kit (the harness is sound); ``cls`` must not."""
    await check_persistence_adapter(_opener(DictAdapter))
    try:
        await check_persistence_adapter(_opener(cls))
    except AssertionError:
        return
    raise AssertionError(f"check_persistence_adapter passed the broken adapter {cls.__name__}: {cls.__doc__}")


async def ok(ctx: Any) -> float:
    return trio.current_time()


# ---------------------------------------------------------------------------------------------
# 1. all or nothing under cancellation


class TornOnCancel(DictAdapter):
    """A checkpoint made of two requests (append the records, then replace header, status and
    consumed signals): a cancel between the two leaves the records stored and the call raising."""

    async def checkpoint(self, instance_id, status, header, records, *, first_seq, consumed=(), **kw):
        row = self.rows.get(instance_id)
        if row is None:
            raise UnknownInstanceError(instance_id)
        if first_seq != len(row["records"]) or any(q not in row["signals"] for q in consumed):
            raise CheckpointConflictError(instance_id)
        new = [_b(r, "record") for r in records]
        _b(header, "header")
        row["records"].extend(new)               # request 1
        await trio.sleep(0.5)                    # network round trip: a cancel lands here
        del row["records"][len(row["records"]) - len(new):]
        return await super().checkpoint(instance_id, status, header, new, first_seq=first_seq,
                                        consumed=consumed, **kw)   # request 2 (redoes 1 with 2)


async def test_kit_checks_checkpoints_are_all_or_nothing_under_cancellation(autojump_clock):
    """docs/adapters.md ("Cancellation"): "A write must be all or nothing under cancellation
    too: either it is made and the call returns, or the call raises (a trio.Cancelled included)
    having written nothing", and SPEC §10 says the kit checks that a checkpoint is
    all-or-nothing. An author relies on the kit to catch a write torn by a cancel. Instead the
    kit never cancels a write: an adapter whose checkpoint is two requests passes it, and the
    engine does cancel checkpoints in flight when its block exits: the instance is then stored
    with more records than its header counts, and the next engine reports it failed
    ("holds what this release cannot read") instead of finishing it."""
    prefix = next(_keys)
    store = STORES.setdefault((prefix, "k"), {})
    wf = tf.workflow("w").step("a", ok).step("b", ok).build()
    clock = virtual_wall_clock()
    async with tf.open_engine(adapter=TornOnCancel(store), clock=clock) as engine:
        engine.register(wf)
        await engine.start("w", {}, instance_id="w1")
        await trio.sleep(0.25)  # leave while the checkpoint after step 'a' is in flight
    async with tf.open_engine(adapter=TornOnCancel(store), clock=clock) as engine:
        engine.register(wf)
        with trio.fail_after(3600):
            done = await engine.wait("w1")
    assert done.status == "failed", done.status  # (what happens: the torn write made it unreadable)
    await _kit_rejects(TornOnCancel)


# ---------------------------------------------------------------------------------------------
# 2. consumed signals and the atomicity check


class ConsumeBeforeRecords(DictAdapter):
    """Deletes the consumed signals (one request), then writes the rest (another), which fails
    on a bad record: the signals are gone although the checkpoint raised."""

    async def checkpoint(self, instance_id, status, header, records, *, first_seq, consumed=(), **kw):
        row = self.rows.get(instance_id)
        if row is not None and first_seq == len(row["records"]) and all(q in row["signals"] for q in consumed):
            for q in consumed:
                del row["signals"][q]
            return await super().checkpoint(instance_id, status, header, records, first_seq=first_seq, **kw)
        return await super().checkpoint(instance_id, status, header, records, first_seq=first_seq,
                                        consumed=consumed, **kw)


async def test_kit_checks_a_failed_checkpoint_consumes_no_signal():
    """SPEC §13: "A signal is consumed in the same atomic write that completes its receive step:
    never lost"; the protocol's checkpoint deletes the consumed signals "in one atomic write".
    An author relies on the kit's 'checkpoint_is_atomic' to catch a checkpoint that consumes
    signals and then fails. Instead that check never passes consumed=: an adapter whose failed
    checkpoint has already deleted the signal passes the kit, and the signal is lost (the
    engine's retry of that checkpoint is then refused, the signal being no longer pending)."""
    a = ConsumeBeforeRecords(STORES.setdefault((next(_keys), "k"), {}))
    await a.open()
    await a.create("i", "wf", "running", start=b"s", header=b"h0")
    seq = await a.send_signal("i", "go", b"payload")
    with pytest.raises(StorageError):
        await a.checkpoint("i", "running", b"h1", [b"r0", None], first_seq=0, consumed=[seq])
    assert (await a.load("i")).records == () and await a.signals("i") == []  # nothing stored, signal lost
    await a.close()
    await _kit_rejects(ConsumeBeforeRecords)


# ---------------------------------------------------------------------------------------------
# 3. load() and consumed signals


class LoadKeepsConsumed(DictAdapter):
    """load() hands back signals consumed since (a soft-delete flag its query forgets):
    signals() is right, load() is not."""

    async def checkpoint(self, instance_id, *a, consumed=(), **kw):
        row = self.rows.get(instance_id)
        old = dict(row["signals"]) if row else {}
        out = await super().checkpoint(instance_id, *a, consumed=consumed, **kw)
        self.s.setdefault("gone", {}).setdefault(instance_id, {}).update({q: old[q] for q in consumed})
        return out

    async def load(self, instance_id):
        stored = await super().load(instance_id)
        gone = self.s.get("gone", {}).get(instance_id)
        if stored is None or not gone or stored.status not in RESUMABLE:
            return stored
        extra = tuple((q, n, p) for q, (n, p) in gone.items())
        return attrs.evolve(stored, signals=tuple(sorted(stored.signals + extra)))


async def test_kit_checks_load_leaves_out_consumed_signals(autojump_clock):
    """Protocol: load() gives "its pending signals"; SPEC §13: a signal is "never delivered
    twice". An author relies on the kit to check that load() no longer hands back a signal a
    checkpoint consumed. Instead the kit reads load().signals only for an instance that never
    consumed one: an adapter whose load() keeps consumed signals passes, and after a restart
    the engine delivers the consumed signal again; the instance's next checkpoint is refused
    (CheckpointConflictError), it fails and stays 'running' in storage for ever."""
    prefix = next(_keys)
    make = lambda: LoadKeepsConsumed(STORES.setdefault((prefix, "k"), {}))
    wf = tf.workflow("e").receive("r1", signal="x").wait("nap", seconds=3600).receive("r2", signal="x").build()
    clock = virtual_wall_clock()
    async with tf.open_engine(adapter=make(), clock=clock) as engine:
        engine.register(wf)
        await engine.start("e", {}, instance_id="e1")
        await trio.sleep(10)
        await engine.signal("e1", "x", 1)
        await trio.sleep(60)
    async with tf.open_engine(adapter=make(), clock=clock) as engine:
        engine.register(wf)
        await trio.sleep(7200)
        await engine.signal("e1", "x", 2)
        with pytest.raises(tf.InstanceNotLiveError, match="CheckpointConflictError"):
            with trio.fail_after(86400):
                await engine.wait("e1")
    await _kit_rejects(LoadKeepsConsumed)


# ---------------------------------------------------------------------------------------------
# 4. next_wake() must be the soonest


class NextWakeOldestCreated(DictAdapter):
    """An adapter written without skip_workflows (the docs say it still works) whose
    next_wake() gives the wake_at of the oldest created waiting instance, not the soonest
    (ORDER BY rowid instead of ORDER BY wake_at)."""

    async def due(self, before, limit):
        return await DictAdapter.due(self, before, limit)

    async def next_wake(self):
        rows = sorted(self._waiting(set()), key=lambda r: r["order"])
        return rows[0]["wake_at"] if rows else None


async def test_kit_checks_next_wake_is_the_soonest_without_skip_workflows(autojump_clock):
    """Protocol: next_wake() is "the soonest wake_at of a waiting instance". An author relies on
    the kit to check it. Instead 'waiting_instances_wake_when_due' creates its instances in the
    order they are due, and the only other check is skipped for an adapter whose due() takes
    no skip_workflows (allowed by docs/adapters.md): an adapter giving the oldest instance's
    wake time passes, and the engine's waker then sleeps until it: a 1-hour timer started
    after a 2-day one fires 2 days late."""
    prefix = next(_keys)
    wf = tf.workflow("t").wait("nap", seconds=lambda ctx: ctx.input["s"]).step("a", ok).build()
    async with tf.open_engine(adapter=NextWakeOldestCreated(STORES.setdefault((prefix, "k"), {})),
                              clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        t0 = trio.current_time()
        await engine.start("t", {"s": 2 * 86400})
        await trio.sleep(5)
        short = await engine.start("t", {"s": 3600})
        done = await engine.wait(short)
        assert done.output - t0 > 86400, done.output - t0  # what happens: it fired with the 2-day one
    await _kit_rejects(NextWakeOldestCreated)


# ---------------------------------------------------------------------------------------------
# 5. a purge that takes a family along must take all of it


class PurgeLeavesChildRecords(DictAdapter):
    """Records kept apart from rows (a records table): a purge deletes the children it takes
    along with a parent, but not their records, which a new instance of that id then finds."""

    async def purge(self, finished_by, limit, **kw):
        kids = {i: list(r["records"]) for i, r in self.rows.items() if r["parent_id"] is not None}
        n = await super().purge(finished_by, limit, **kw)
        self.s.setdefault("left", {}).update({i: recs for i, recs in kids.items() if i not in self.rows})
        return n

    async def create(self, instance_id, workflow_name, status, *, start, header, parent_id=None):
        made = await super().create(instance_id, workflow_name, status, start=start, header=header,
                                    parent_id=parent_id)
        if made and instance_id in self.s.get("left", {}):
            self.rows[instance_id]["records"].extend(self.s["left"].pop(instance_id))
        return made


async def kid_job(ctx: Any) -> str:
    return "kid"


async def test_kit_checks_a_purged_familys_records_are_gone(autojump_clock):
    """docs/adapters.md: the purge that deletes a parent deletes its children "in the same
    write ... a new instance started with the parent's id then never finds its children's ids
    taken", "with their records and signals". An author relies on the kit to check the
    children's records go too (it does check it for a plain purge, by creating the id again).
    Instead 'purge_keeps_children_while_their_parent_is_stored' only checks that nothing is
    *listed*: an adapter leaving the children's records behind passes, and a parent started
    again under the purged one's id fails (its child's first checkpoint is fenced out by the
    stale records, and the child cannot be read)."""
    kid = tf.workflow("kid").step("k", kid_job).build()
    parent = tf.workflow("par").child("c", workflow="kid").build()
    adapter = PurgeLeavesChildRecords(STORES.setdefault((next(_keys), "k"), {}))
    async with tf.open_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(kid)
        engine.register(parent)
        assert (await engine.wait(await engine.start("par", {}, instance_id="P"))).status == "completed"
        await trio.sleep(100)
        assert await engine.purge(older_than=10) == 2
        await engine.start("par", {}, instance_id="P")
        with trio.move_on_after(3600):
            again = await engine.wait("P")
        # What happens: the new P's child finds the stale records, cannot be read, and P fails
        # (before a parent was told of its unreadable child, it never ended).
        assert again.status == "failed" and again.error_name == "SnapshotDecodeError", again
    await _kit_rejects(PurgeLeavesChildRecords)
