"""A hypothesis state machine driving MemoryAdapter and SQLiteAdapter side by side against a
plain model of docs/adapters.md's contract for waiting instances (create/checkpoint wake_at,
consumed, notify; due, next_wake, resumable; signals; delete; purge; listings by status).

Imported by tests/test_review_of_adapter_wakes.py (not collected itself)."""

from __future__ import annotations

import itertools
import math
import tempfile
import shutil
import threading
from pathlib import Path
from typing import Any

import attrs
import trio
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from trioflow import (
    CheckpointConflictError,
    InstanceStillRunningError,
    StorageError,
    UnknownInstanceError,
)
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow._snapshot import RESUMABLE, TERMINAL

IDS = ["i0", "i1", "i2", "i3", "i4"]
WORKFLOWS = ["a", "b"]
STATUSES = ["pending", "running", "completed", "failed", "compensated"]
WAKES = [None, None, 0.0, 1.0, 1.0, 2.5, 5.0, math.inf, -math.inf]
BEFORES = [-1.0, 0.0, 1.0, 2.5, 3.0, 5.0, math.inf]


class Loop:
    """A trio run in a thread of its own, so that the (synchronous) rules can await."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        self._ready.wait()

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        self._ready.set()
        await self._stop.wait()

    def run(self, afn: Any, *args: Any) -> Any:
        return trio.from_thread.run(afn, *args, trio_token=self.token)

    def run_sync(self, fn: Any, *args: Any) -> Any:
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def close(self) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join()


@attrs.define
class MRow:
    order: int
    workflow_name: str
    status: str
    start: bytes
    header: bytes
    records: list[bytes] = attrs.Factory(list)
    wake_at: float | None = None
    signals: dict[int, tuple[str, bytes]] = attrs.Factory(dict)
    finished_at: float | None = None
    parent_id: str | None = None


def _kind(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    for cls in (UnknownInstanceError, CheckpointConflictError, InstanceStillRunningError):
        if isinstance(exc, cls):
            return cls.__name__
    if isinstance(exc, StorageError):
        return "StorageError"
    return type(exc).__name__


class Model:
    """What docs/adapters.md and adapters/_protocol.py say, as plain Python."""

    def __init__(self) -> None:
        self.rows: dict[str, MRow] = {}
        self.created = 0
        self.seq = 0

    def create(self, iid: str, wf: str, status: str, start: bytes, header: bytes, parent: str | None,
               wake_at: float | None, now: float) -> bool:
        if iid in self.rows:
            return False
        self.created += 1
        self.rows[iid] = MRow(self.created, wf, status, start, header, wake_at=wake_at,
                              finished_at=now if status in TERMINAL else None,
                              parent_id=parent if parent in self.rows else None)
        return True

    def checkpoint(self, iid: str, status: str, header: bytes, records: list[bytes], first_seq: int,
                   consumed: list[int], wake_at: float | None, notify: tuple[str, str, bytes] | None,
                   now: float) -> int | None:
        row = self.rows.get(iid)
        if row is None:
            raise UnknownInstanceError(iid)
        if first_seq != len(row.records):
            raise CheckpointConflictError(iid)
        if len(set(consumed)) != len(consumed) or any(s not in row.signals for s in consumed):
            raise CheckpointConflictError(iid)
        if status != row.status:
            row.finished_at = now if status in TERMINAL else None
        row.status = status
        row.header = header
        row.records.extend(records)
        for s in consumed:
            del row.signals[s]
        row.wake_at = wake_at
        if notify is not None and notify[0] in self.rows:
            return self.signal(*notify)
        return None

    def signal(self, iid: str, name: str, payload: bytes) -> int | None:
        row = self.rows.get(iid)
        if row is None:
            raise UnknownInstanceError(iid)
        if row.status not in RESUMABLE:
            return None
        self.seq += 1
        row.signals[self.seq] = (name, payload)
        return self.seq

    def delete(self, iid: str) -> bool:
        row = self.rows.get(iid)
        if row is None:
            return False
        if row.status in RESUMABLE:
            raise InstanceStillRunningError(iid, row.status)
        self._remove(iid)
        return True

    def _remove(self, iid: str) -> None:
        del self.rows[iid]
        for other in self.rows.values():
            if other.parent_id == iid:
                other.parent_id = None  # let go

    def _takes(self, row: MRow, finished_by: float, status: str | None, wf: str | None) -> bool:
        return (row.status in TERMINAL and row.finished_at is not None and row.finished_at <= finished_by
                and (status is None or row.status == status) and (wf is None or row.workflow_name == wf))

    def purge(self, finished_by: float, limit: int, status: str | None, wf: str | None) -> int:
        top = sorted((r.finished_at, i) for i, r in self.rows.items()
                     if r.parent_id is None and self._takes(r, finished_by, status, wf))[:limit]
        doomed: list[str] = [i for _, i in top]
        todo = list(doomed)
        while todo:
            parent = todo.pop()
            for i, r in self.rows.items():
                if r.parent_id == parent and i not in doomed and self._takes(r, finished_by, status, wf):
                    doomed.append(i)
                    todo.append(i)
        for i in doomed:
            self._remove(i)
        return len(doomed)

    def waiting(self, before: float, skip: tuple[str, ...]) -> list[tuple[float, int, str]]:
        return sorted((r.wake_at, r.order, i) for i, r in self.rows.items()
                      if r.status in RESUMABLE and r.wake_at is not None and r.wake_at <= before
                      and r.workflow_name not in skip)

    def stored(self, iid: str, *, signals: bool) -> dict[str, Any]:
        r = self.rows[iid]
        return dict(instance_id=iid, workflow_name=r.workflow_name, status=r.status, start=r.start,
                    header=r.header, records=tuple(r.records), wake_at=r.wake_at,
                    signals=tuple((s, n, p) for s, (n, p) in sorted(r.signals.items())) if signals else ())

    def oldest_first(self, ids: Any) -> list[str]:
        return sorted(ids, key=lambda i: self.rows[i].order)


def as_dict(stored: Any) -> dict[str, Any] | None:
    if stored is None:
        return None
    d = attrs.asdict(stored, recurse=False)
    d["records"] = tuple(bytes(r) for r in d["records"])
    d["signals"] = tuple((s, n, bytes(p)) for s, n, p in d["signals"])
    if d["wake_at"] is not None:
        d["wake_at"] = float(d["wake_at"])
    return d


_files = itertools.count()


class WakesMachine(RuleBasedStateMachine):
    """Applies each call to the model, a MemoryAdapter and a SQLiteAdapter, and compares."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.headers = itertools.count()
        self.model = Model()
        self.dir = Path(tempfile.mkdtemp(prefix="wakes-"))
        self.memory = MemoryAdapter()
        self.sqlite = SQLiteAdapter(self.dir / f"w{next(_files)}.db", synchronous="NORMAL")
        for adapter in (self.memory, self.sqlite):
            adapter.use_clock(lambda: self.now)
        self.loop = Loop()
        self.loop.run(self.memory.open)
        self.loop.run(self.sqlite.open)

    def teardown(self) -> None:
        try:
            self.loop.run(self.sqlite.close)
            self.loop.run(self.memory.close)
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------------------

    def both(self, name: str, *args: Any, **kwargs: Any) -> list[tuple[Any, BaseException | None]]:
        out = []
        for adapter in (self.memory, self.sqlite):
            try:
                out.append((self.loop.run(lambda: getattr(adapter, name)(*args, **kwargs)), None))
            except Exception as exc:  # noqa: BLE001
                out.append((None, exc))
        return out

    def agree(self, what: str, expected: Any, error: BaseException | None,
              got: list[tuple[Any, BaseException | None]]) -> None:
        for label, (value, exc) in zip(("MemoryAdapter", "SQLiteAdapter"), got):
            assert _kind(exc) == _kind(error), f"{what}: {label} raised {exc!r}, the contract says {error!r}"
            if error is None:
                assert value == expected, f"{what}: {label} returned {value!r}, the contract says {expected!r}"

    def model_call(self, fn: Any, *args: Any) -> tuple[Any, BaseException | None]:
        try:
            return fn(*args), None
        except Exception as exc:  # noqa: BLE001
            return None, exc

    def tick(self) -> None:
        self.now += 1.0

    # -- rules ----------------------------------------------------------------------------------

    @rule(iid=st.sampled_from(IDS), wf=st.sampled_from(WORKFLOWS), status=st.sampled_from(STATUSES),
          wake_at=st.sampled_from(WAKES), parent=st.sampled_from([None, None, *IDS]))
    def create(self, iid: str, wf: str, status: str, wake_at: float | None, parent: str | None) -> None:
        self.tick()
        header = f"h{next(self.headers)}".encode()
        start = f"s-{iid}".encode()
        expected, error = self.model_call(self.model.create, iid, wf, status, start, header, parent, wake_at,
                                          self.now)
        got = self.both("create", iid, wf, status, start=start, header=header, parent_id=parent, wake_at=wake_at)
        self.agree(f"create({iid!r}, {wf!r}, {status!r}, parent_id={parent!r}, wake_at={wake_at!r})",
                   expected, error, got)

    @rule(iid=st.sampled_from(IDS), status=st.sampled_from(STATUSES), wake_at=st.sampled_from(WAKES),
          n=st.integers(0, 2), fence=st.sampled_from([0, 0, 0, 0, 1, -1]),
          consume=st.sampled_from(["none", "none", "first", "all", "bogus", "twice", "other"]),
          notify=st.sampled_from([None, None, *IDS]))
    def checkpoint(self, iid: str, status: str, wake_at: float | None, n: int, fence: int, consume: str,
                   notify: str | None) -> None:
        self.tick()
        row = self.model.rows.get(iid)
        stored = len(row.records) if row is not None else 0
        pending = sorted(row.signals) if row is not None else []
        consumed = {"none": [], "first": pending[:1], "all": pending, "bogus": [10_000],
                    "twice": pending[:1] * 2,
                    "other": sorted(s for i, r in self.model.rows.items() if i != iid for s in r.signals)[:1]}[consume]
        first_seq = max(0, stored + fence)
        header = f"h{next(self.headers)}".encode()
        records = [f"r{first_seq + k}-{iid}-{header.decode()}".encode() for k in range(n)]
        notice = None if notify is None else (notify, "done", f"from-{iid}".encode())
        expected, error = self.model_call(self.model.checkpoint, iid, status, header, records, first_seq, consumed,
                                          wake_at, notice, self.now)
        got = self.both("checkpoint", iid, status, header, records, first_seq=first_seq, consumed=consumed,
                        wake_at=wake_at, notify=notice)
        self.agree(f"checkpoint({iid!r}, {status!r}, first_seq={first_seq}, consumed={consumed}, wake_at={wake_at!r},"
                   f" notify={notice!r})", expected, error, got)

    @rule(iid=st.sampled_from(IDS), name=st.sampled_from(["go", "stop"]), and_load=st.booleans())
    def send_signal(self, iid: str, name: str, and_load: bool) -> None:
        self.tick()
        payload = f"p{next(self.headers)}".encode()
        seq, error = self.model_call(self.model.signal, iid, name, payload)
        if not and_load:
            self.agree(f"send_signal({iid!r})", seq, error, self.both("send_signal", iid, name, payload))
            return
        got = self.both("send_signal_and_load", iid, name, payload)
        expected = (seq, None if seq is None else self.model.stored(iid, signals=True))
        got = [((value[0], as_dict(value[1])) if value is not None else None, exc) for value, exc in got]
        self.agree(f"send_signal_and_load({iid!r})", expected, error, got)

    @rule(iid=st.sampled_from(IDS))
    def delete(self, iid: str) -> None:
        self.tick()
        expected, error = self.model_call(self.model.delete, iid)
        self.agree(f"delete({iid!r})", expected, error, self.both("delete", iid))

    @rule(back=st.sampled_from([0.0, 1.0, 2.0, 3.0, 5.0, 100.0]), limit=st.sampled_from([0, 1, 2, 1000]),
          status=st.sampled_from([None, None, "completed", "failed"]), wf=st.sampled_from([None, None, *WORKFLOWS]))
    def purge(self, back: float, limit: int, status: str | None, wf: str | None) -> None:
        self.tick()
        finished_by = self.now - back
        expected, error = self.model_call(self.model.purge, finished_by, limit, status, wf)
        self.agree(f"purge({finished_by}, {limit}, status={status!r}, workflow_name={wf!r})", expected, error,
                   self.both("purge", finished_by, limit, status=status, workflow_name=wf))

    @rule()
    def reopen(self) -> None:
        """Close and open both adapters again (a restart): everything must read back the same."""
        for adapter in (self.sqlite, self.memory):
            self.loop.run(adapter.close)
            self.loop.run(adapter.open)

    @rule(before=st.sampled_from(BEFORES), limit=st.sampled_from([0, 1, 2, 100]),
          skip=st.sampled_from([(), (), ("a",), ("b",), ("a", "b")]))
    def due(self, before: float, limit: int, skip: tuple[str, ...]) -> None:
        self.check_due(before, limit, skip)

    # -- checks -----------------------------------------------------------------------------------

    def check_due(self, before: float, limit: int, skip: tuple[str, ...]) -> None:
        waiting = self.model.waiting(before, skip)
        expected = [self.model.stored(i, signals=False) for _, _, i in waiting[:limit]]
        for label, (value, exc) in zip(("MemoryAdapter", "SQLiteAdapter"),
                                        self.both("due", before, limit, skip_workflows=skip)):
            assert exc is None, f"due({before}, {limit}, skip_workflows={skip}): {label} raised {exc!r}"
            got = [as_dict(s) for s in value]
            assert got == expected, (
                f"due({before}, {limit}, skip_workflows={skip}): {label} returned"
                f" {[(g['instance_id'], g['wake_at'], g['status']) for g in got]}, the contract says"
                f" {[(e['instance_id'], e['wake_at'], e['status']) for e in expected]}")

    def read_calls(self) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
        calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        for skip in ((), ("a",)):
            calls.append(("next_wake", (), {"skip_workflows": skip}))
        calls.append(("due", (math.inf, 100), {}))
        calls.append(("resumable", (), {}))
        for iid in IDS:
            calls.append(("load", (iid,), {}))
            calls.append(("signals", (iid,), {}))
        for wf, status in LISTINGS:
            calls.append(("list_instances", (wf, status), {}))
        return calls

    def expected_reads(self) -> list[Any]:
        model = self.model
        out: list[Any] = []
        for skip in ((), ("a",)):
            waiting = model.waiting(math.inf, skip)
            out.append(waiting[0][0] if waiting else None)
        out.append([model.stored(i, signals=False) for _, _, i in model.waiting(math.inf, ())[:100]])
        resumable = model.oldest_first(i for i, r in model.rows.items()
                                       if r.status in RESUMABLE and (r.wake_at is None or r.signals))
        out.append([model.stored(i, signals=False) for i in resumable])
        for iid in IDS:
            row = model.stored(iid, signals=True) if iid in model.rows else None
            out.append(row)
            out.append(list(row["signals"]) if row else [])
        for wf, status in LISTINGS:
            ids = model.oldest_first(i for i, r in model.rows.items()
                                     if (wf is None or r.workflow_name == wf) and (status is None or r.status == status))
            out.append([model.stored(i, signals=False) for i in ids])
        return out

    @invariant()
    def reads_agree_with_the_model(self) -> None:
        calls = self.read_calls()
        expected = self.expected_reads()
        for label, adapter in (("MemoryAdapter", self.memory), ("SQLiteAdapter", self.sqlite)):
            got = self.loop.run(read_all, adapter, calls)
            for (name, args, kwargs), want, value in zip(calls, expected, got):
                assert value == want, f"{name}{args}{kwargs or ''}: {label} gave {value!r}, the contract says {want!r}"

    @invariant()
    def memory_bookkeeping_holds(self) -> None:
        self.loop.run_sync(check_memory_internals, self.memory, self.model)


LISTINGS = [(None, None), *((None, s) for s in STATUSES), *((w, None) for w in WORKFLOWS), ("a", "running"),
            ("b", "completed")]


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if hasattr(value, "__attrs_attrs__"):
        return as_dict(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value
    return value


async def read_all(adapter: Any, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
    out = []
    for name, args, kwargs in calls:
        try:
            out.append(_plain(await getattr(adapter, name)(*args, **kwargs)))
        except Exception as exc:  # noqa: BLE001
            out.append(exc)
    return out


def check_memory_internals(memory: MemoryAdapter, model: Model) -> None:
    """MemoryAdapter's indexes, wake heaps, waiting counts and finish order against its rows."""
    rows = memory._rows
    assert set(rows) == set(model.rows)
    for iid, row in rows.items():
        assert iid in memory._by_status.get(row.status, {}), f"{iid} missing from _by_status[{row.status}]"
        assert iid in memory._by_workflow.get(row.workflow_name, {})
        assert row.parent_id == model.rows[iid].parent_id, (
            f"{iid}: parent_id {row.parent_id!r}, the model says {model.rows[iid].parent_id!r}")
        assert row.finished_at == model.rows[iid].finished_at, (
            f"{iid}: finished_at {row.finished_at!r}, the model says {model.rows[iid].finished_at!r}")
    for index in (memory._by_status, memory._by_workflow):
        for key, ids in index.items():
            for iid in ids:
                assert iid in rows, f"a removed row {iid} is still indexed under {key}"
    waits = {wf: 0 for wf in WORKFLOWS}
    for iid, row in rows.items():
        if row.wake_at is not None and row.status in RESUMABLE:
            waits[row.workflow_name] += 1
            heap = memory._wakes.get(row.workflow_name, [])
            assert any(w == row.wake_at and i == iid for w, _, i in heap), (
                f"{iid} waits until {row.wake_at} but has no entry in its workflow's wake heap {heap}")
    for wf in WORKFLOWS:
        assert memory._waiting_rows.get(wf, 0) == waits[wf], (
            f"_waiting_rows[{wf!r}] is {memory._waiting_rows.get(wf, 0)}, {waits[wf]} rows really wait")
    for wf, heap in memory._wakes.items():
        for k in range(1, len(heap)):
            assert heap[(k - 1) // 2] <= heap[k], f"wake heap of {wf!r} broken: {heap}"
    # Children kept: exactly the rows whose parent is stored.
    kept = {}
    for iid, row in rows.items():
        if row.parent_id is not None:
            assert row.parent_id in rows, f"{iid} names a parent {row.parent_id} that is not stored"
            kept.setdefault(row.parent_id, set()).add(iid)
    assert {p: set(c) for p, c in memory._children.items() if c} == kept, (
        f"_children {memory._children} disagrees with the rows' parents {kept}")
    # Finish order: every finished row no parent keeps holds a current place, found in the
    # deque or the released list; kept or unfinished rows hold none; stale counts the rest.
    order = memory._order
    places = list(order.finished) + list(order.released)
    current = [p for p in places if p[1].place is p and p[1].instance_id in rows and rows[p[1].instance_id] is p[1]]
    for iid, row in rows.items():
        if row.status in TERMINAL and row.parent_id is None:
            assert row.place is not None and any(p is row.place for p in places), (
                f"finished row {iid} is not in the finish order: no purge will find it")
            assert row.place[0] == row.finished_at
        else:
            assert row.place is None, f"{iid} ({row.status}, parent {row.parent_id}) holds a place in the finish order"
    assert order.stale == len(places) - len(current), (
        f"finish order counts {order.stale} stale places, {len(places) - len(current)} are")
    times = [p[0] for p in order.finished]
    assert times == sorted(times), f"finish deque out of order: {times}"
    released = [p[0] for p in order.released]
    assert released == sorted(released)
