"""In-memory adapter: encoded instances in dicts, shared by every engine opened on it."""

from __future__ import annotations

import bisect
import collections
import heapq
import math
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence

import attrs

from trioflow._errors import (
    AdapterInUseError,
    CheckpointConflictError,
    InstanceStillRunningError,
    StorageError,
    UnknownInstanceError,
)
from trioflow._snapshot import RESUMABLE, TERMINAL, FinishedStatus, Status
from trioflow._engine_arguments import refuses_unbound_arguments

from ._arguments import checked_limit, checked_names, checked_time
from ._protocol import StoredInstance


#: Fewest entries a wake heap (or the finish order) holds beyond twice its live ones before
#: the stale ones are swept out.
_COMPACT_AT = 64


class _Row:
    """One stored instance. Slotted and mutable: checkpoints are the hot path."""

    __slots__ = ("instance_id", "order", "workflow_name", "status", "start", "header", "records", "signals", "wake_at",
                 "finished_at", "parent_id", "place", "signal_keys")

    def __init__(
        self, instance_id: str, order: int, workflow_name: str, status: Status, start: bytes | None, header: bytes,
        parent_id: str | None = None,
    ) -> None:
        self.instance_id = instance_id
        #: Creation order: listings go by it.
        self.order = order
        self.workflow_name = workflow_name
        self.status: Status = status
        self.start = start
        self.header = header
        #: An empty tuple until the first record, a list while the instance runs, a tuple again
        #: once it has ended: the cyclic garbage collector tracks no list for the many waiting
        #: or finished instances a process holds.
        self.records: list[bytes] | tuple[bytes, ...] = ()
        #: Pending signals by seq (``None`` until the first one).
        self.signals: dict[int, tuple[str, bytes]] | None = None
        #: The seqs of the signals sent with a key, by key (``None`` until the first): see
        #: ``KeyedSignals``.
        self.signal_keys: dict[str, int] | None = None
        #: When a waiting instance is due (``None``: it does not wait).
        self.wake_at: float | None = None
        #: When it finished (``None``: it has not), on the adapter's clock.
        self.finished_at: float | None = None
        #: The instance that started it as a child workflow (a purge keeps it while that one is stored).
        self.parent_id = parent_id
        #: Its place in the finish order (``None``: it has none, unfinished or kept by a parent).
        self.place: tuple[float, _Row] | None = None


class MemoryAdapter:
    """Keeps encoded instances, exactly as a durable adapter would, so everything that is
    stored went through the codec. Lives as long as the object: a second engine opened on the
    same adapter resumes what the first left running.

    Indexed by workflow and status, so listing the running instances of a workflow, or what a
    resume must pick up, never scans the finished ones; and finished rows in the order they
    finished, all of them and by status, by workflow and by both, so a purge walks only those
    it may delete, whatever it is filtered by.
    """

    @refuses_unbound_arguments
    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}
        self._created = 0
        #: The last signal seq handed out (seqs only grow, across instances).
        self._signals = 0
        #: A heap of ``(wake_at, order, instance_id)`` of waiting instances per workflow (so that
        #: leaving a workflow out costs nothing); entries an instance has since left (woken,
        #: ended, deleted, or waiting until another time) are dropped when they come up, and all
        #: at once they outnumber the live ones (``_waiting``: rows that wait, per workflow): an
        #: entry left behind an instance that waits for ever would never come up.
        self._wakes: dict[str, list[tuple[float, int, str]]] = {}
        self._waiting_rows: dict[str, int] = {}
        self._by_status: dict[str, dict[str, None]] = {}
        self._by_workflow: dict[str, dict[str, None]] = {}
        #: The finished rows nothing keeps, by finish time: what unfiltered purges walk.
        self._order = _FinishOrder()
        #: The same places by ``(status, None)``, ``(None, workflow_name)`` and ``(status,
        #: workflow_name)``, the filters a purge may be given: a purge by status or workflow
        #: walks the rows it may delete only, not every finished row of another status or
        #: workflow it keeps. (Each place is one tuple shared by its four orders.) Kept once
        #: made, empty or not, as the indexes by workflow and status keep theirs.
        self._filtered: dict[tuple[str | None, str | None], _FinishOrder] = {}
        #: The three of those a finished row of each (status, workflow) has its place in: one
        #: look for them all (every row a purge takes comes here).
        self._filed: dict[tuple[str, str], tuple[_FinishOrder, ...]] = {}
        #: The ids of the child instances each stored parent keeps (a purge that deletes a
        #: parent takes them along; those it leaves, and a deleted parent's, are let go). A
        #: row's ``parent_id`` is a stored parent's, or ``None``.
        self._children: dict[str, set[str]] = {}
        self._clock: Callable[[], float] = time.time
        self._open = False

    def use_clock(self, clock: Callable[[], float]) -> None:
        if not self._open:  # (open: a second engine's, refused next; see Adapter.use_clock)
            self._clock = clock

    async def open(self) -> None:
        """The storage is this object: one engine at a time may have it open."""
        if self._open:
            raise AdapterInUseError(
                "this MemoryAdapter is open in another engine; one engine per storage (close that engine first)")
        self._open = True

    async def close(self) -> None:
        """What is stored stays for the next engine."""
        self._open = False

    async def create(
        self, instance_id: str, workflow_name: str, status: Status, *, start: bytes, header: bytes,
        parent_id: str | None = None, wake_at: float | None = None,
    ) -> bool:
        if instance_id in self._rows:
            return False
        start, header = _blob(start, "start"), _blob(header, "header")
        if parent_id is not None and not isinstance(parent_id, str):
            raise StorageError(f"parent_id must be a str or None, got {type(parent_id).__name__}; nothing was written")
        if wake_at is not None:  # (checked only when given: most writes have none)
            wake_at = checked_time(wake_at, "wake_at")
        if parent_id not in self._rows:
            parent_id = None  # nothing keeps it: it goes by its own finish time
        self._created += 1
        row = self._rows[instance_id] = _Row(instance_id, self._created, workflow_name, status, start, header,
                                             parent_id)
        if parent_id is not None:
            self._children.setdefault(parent_id, set()).add(instance_id)
        self._by_status.setdefault(status, {})[instance_id] = None
        self._by_workflow.setdefault(workflow_name, {})[instance_id] = None
        if wake_at is not None:
            row.wake_at = wake_at
            if status in RESUMABLE:
                heapq.heappush(self._wakes.setdefault(workflow_name, []), (wake_at, row.order, instance_id))
                self._count_waiting(row, 1)  # (as a checkpoint's wait: its end counts it out)
        self._stamp(row)
        return True

    async def checkpoint(
        self, instance_id: str, status: Status, header: bytes, records: Sequence[bytes], *,
        first_seq: int, start: bytes | None = None, consumed: Sequence[int] = (), wake_at: float | None = None,
        notify: tuple[str, str, bytes] | None = None, restart: bool = False,
    ) -> int | None:
        row = self._rows.get(instance_id)
        if row is None:
            raise UnknownInstanceError(f"no stored instance {instance_id!r} to checkpoint")
        if restart and (start is None or status in TERMINAL or notify is not None):
            raise StorageError(f"instance {instance_id!r}: a checkpoint that restarts its history stores new start"
                               f" bytes and a status it runs in, and notifies no one; nothing was done")
        if first_seq != len(row.records):
            raise CheckpointConflictError(
                f"instance {instance_id!r} has {len(row.records)} records stored; a checkpoint"
                f" appending at {first_seq} is refused"
            )
        if consumed:
            missing = [seq for seq in consumed if not row.signals or seq not in row.signals]
            if missing or len(set(consumed)) != len(consumed):
                raise CheckpointConflictError(
                    f"instance {instance_id!r}: a checkpoint consuming signals {list(consumed)} is refused"
                    f" ({missing or 'repeated'} not pending)"
                )
        if wake_at is not None:  # (checked only when given: most writes have none)
            wake_at = checked_time(wake_at, "wake_at")
        # Everything is converted before anything changes: all or nothing. (``bytes`` of a
        # bytes object is that object: the usual case copies nothing.)
        new = records
        for r in records:
            if type(r) is not bytes:
                new = [_blob(r, f"record {first_seq + k}") for k, r in enumerate(records)]
                break
        if type(header) is not bytes:
            header = _blob(header, "header")
        if start is not None and type(start) is not bytes:
            start = _blob(start, "start")
        if notify is not None:
            notify = (notify[0], notify[1], _blob(notify[2], "notice payload"))
        # (Written out, not _waits(): every checkpoint of every instance asks.)
        waited = row.wake_at is not None and row.status in RESUMABLE
        if status != row.status:
            del self._by_status[row.status][instance_id]
            self._by_status.setdefault(status, {})[instance_id] = None
            was = row.status
            if row.place is not None:
                # It finished before (a completed child later compensated; most rows have
                # none): its place, filed under the status it had, goes stale there.
                self._leave(row)
                row.status = status
                self._stamp(row)
                self._tidy(((was, row.workflow_name),), trim=False)
            else:
                row.status = status
                self._stamp(row)
        row.header = header
        if restart:
            row.records = list(new)
            self._let_go_finished_children(instance_id)
        elif new:
            if isinstance(row.records, list):
                row.records.extend(new)
            else:
                row.records = [*row.records, *new]
        if status in TERMINAL:
            row.records = tuple(row.records)
        if start is not None:
            row.start = start
        if consumed and row.signals is not None:
            for seq in consumed:
                del row.signals[seq]
        row_wake, row.wake_at = row.wake_at, wake_at
        waits = wake_at is not None and status in RESUMABLE
        pushed = False
        # (Unchanged, and waiting before: its entry is there. Not waiting before, as a row
        # stored finished was, its entry may have gone by.)
        if wake_at is not None and (wake_at != row_wake or waits and not waited):
            heapq.heappush(self._wakes.setdefault(row.workflow_name, []), (wake_at, row.order, instance_id))
            pushed = True
        if pushed or waits != waited:
            self._count_waiting(row, waits - waited)
        if notify is not None and notify[0] in self._rows:
            return self._store_signal(*notify)
        return None

    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        return self._send_signal(instance_id, name, payload)

    async def send_signal_and_load(
        self, instance_id: str, name: str, payload: bytes,
    ) -> tuple[int | None, StoredInstance | None]:
        seq = self._send_signal(instance_id, name, payload)
        return seq, None if seq is None else self._load(instance_id)

    async def send_keyed_signal(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool]:
        return self._send_keyed_signal(instance_id, name, payload, key)

    async def send_keyed_signal_and_load(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool, StoredInstance | None]:
        seq, seen = self._send_keyed_signal(instance_id, name, payload, key)
        return seq, seen, None if seq is None or seen else self._load(instance_id)

    def _send_keyed_signal(self, instance_id: str, name: str, payload: bytes, key: str) -> tuple[int | None, bool]:
        row = self._rows.get(instance_id)
        if row is not None and row.signal_keys is not None and key in row.signal_keys:
            stored_seq = row.signal_keys[key]
            return (stored_seq if row.signals and stored_seq in row.signals else None), True
        seq = self._send_signal(instance_id, name, payload)  # (an unknown instance raises)
        if seq is not None:
            stored = self._rows[instance_id]
            if stored.signal_keys is None:
                stored.signal_keys = {key: seq}
            else:
                stored.signal_keys[key] = seq
        return seq, False

    def _send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        if instance_id not in self._rows:
            raise UnknownInstanceError(f"no stored instance {instance_id!r} to signal")
        return self._store_signal(instance_id, name, _blob(payload, "signal payload"))

    def _store_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        """Store a signal for a known instance unless it has ended; its seq."""
        row = self._rows[instance_id]
        if row.status not in RESUMABLE:
            return None
        self._signals += 1
        if row.signals is None:
            row.signals = {}
        row.signals[self._signals] = (name, payload)
        return self._signals

    async def signals(self, instance_id: str) -> list[tuple[int, str, bytes]]:
        row = self._rows.get(instance_id)
        if row is None or not row.signals:
            return []
        return [(seq, name, payload) for seq, (name, payload) in sorted(row.signals.items())]

    async def load(self, instance_id: str) -> StoredInstance | None:
        return self._load(instance_id)

    async def load_head(self, instance_id: str) -> StoredInstance | None:
        row = self._rows.get(instance_id)
        return None if row is None else _stored(instance_id, row, records=())

    def _load(self, instance_id: str) -> StoredInstance | None:
        row = self._rows.get(instance_id)
        if row is None:
            return None
        stored = _stored(instance_id, row)
        if row.signals:
            stored = attrs.evolve(stored, signals=tuple(
                (seq, name, payload) for seq, (name, payload) in sorted(row.signals.items())))
        return stored

    async def list_instances(
        self, workflow_name: str | None = None, status: Status | None = None, *,
        after: str | None = None, limit: int | None = None, newest_first: bool = False,
    ) -> list[StoredInstance]:
        if limit is not None:
            checked_limit(limit, "list_instances")
        rows = self._rows
        # Walk the smaller index that applies, look up in the other: every stored row is read
        # only when neither a workflow nor a status is given.
        indexes = sorted((index.get(key, {}) for index, key in ((self._by_workflow, workflow_name),
                                                               (self._by_status, status)) if key is not None), key=len)
        ids: Iterable[str] = indexes[0] if indexes else rows
        if len(indexes) == 2:
            ids = [i for i in indexes[0] if i in indexes[1]]
        if after is not None:
            cursor = rows.get(after)
            if cursor is None:
                raise UnknownInstanceError(f"no stored instance {after!r} to list after (deleted or purged since?)")
            place = cursor.order
            ids = [i for i in ids if (rows[i].order < place if newest_first else rows[i].order > place)]
        if limit is None:
            chosen = sorted(ids, key=lambda i: rows[i].order, reverse=newest_first)
        else:
            chosen = (heapq.nlargest if newest_first else heapq.nsmallest)(limit, ids, key=lambda i: rows[i].order)
        return [_stored(i, rows[i]) for i in chosen]

    async def resumable(self) -> list[StoredInstance]:
        rows = self._rows
        ids = [i for status in RESUMABLE for i in self._by_status.get(status, {})
               if rows[i].wake_at is None or rows[i].signals]
        return self._oldest_first(ids)

    async def due(
        self, before: float, limit: int, *, skip_workflows: Collection[str] = (), exclude: Collection[str] = (),
    ) -> list[StoredInstance]:
        return [_stored(instance_id, row) for instance_id, row in self._waiting(
            checked_time(before, "due's before"), checked_limit(limit, "due"),
            checked_names(skip_workflows, "due's skip_workflows"), frozenset(checked_names(exclude, "due's exclude")))]

    async def next_wake(self, *, skip_workflows: Collection[str] = ()) -> float | None:
        found = self._waiting(math.inf, 1, checked_names(skip_workflows, "next_wake's skip_workflows"))
        return found[0][1].wake_at if found else None

    def _waiting(
        self, before: float, limit: int, skip_workflows: Collection[str], exclude: frozenset[str] = frozenset(),
    ) -> list[tuple[str, _Row]]:
        """Up to ``limit`` waiting rows due by ``before`` (``inf`` included), soonest first,
        none of the workflows ``skip_workflows`` names (the heads of the other workflows' heaps
        merged, so that what is left out costs nothing) nor of the ids in ``exclude``."""
        skipped = frozenset(skip_workflows)
        listed: set[str] = set()
        heads: list[tuple[tuple[float, int, str], str]] = []
        for name in list(self._wakes):
            if name not in skipped and self._live_head(name, listed):
                heads.append((self._wakes[name][0], name))
        heapq.heapify(heads)
        out: list[tuple[str, _Row]] = []
        taken: list[tuple[str, tuple[float, int, str]]] = []
        while heads and heads[0][0][0] <= before and len(out) < limit:
            entry, name = heads[0]
            heapq.heappop(self._wakes[name])
            if entry[2] not in exclude:
                out.append((entry[2], self._rows[entry[2]]))
            listed.add(entry[2])
            taken.append((name, entry))
            if self._live_head(name, listed):
                heapq.heapreplace(heads, (self._wakes[name][0], name))
            else:
                heapq.heappop(heads)
        for name, entry in taken:  # they stay due until their next checkpoint says otherwise
            heapq.heappush(self._wakes.setdefault(name, []), entry)
        return out

    def _count_waiting(self, row: _Row, change: int) -> None:
        """``row`` began (1) or stopped (-1) waiting, or neither (0); sweep its workflow's heap
        once stale entries outnumber live ones: in time linear in the heap, once for every
        so many changes, so that a change costs the same amortized."""
        name = row.workflow_name
        waiting = self._waiting_rows[name] = self._waiting_rows.get(name, 0) + change
        heap = self._wakes.get(name)
        if heap is not None and len(heap) > 2 * waiting + _COMPACT_AT:
            live = {(w, o, i) for w, o, i in heap
                    if (r := self._rows.get(i)) is not None and r.order == o and r.wake_at == w and _waits(r)}
            heap[:] = live
            heapq.heapify(heap)

    def _live_head(self, name: str, listed: set[str]) -> bool:
        """Drop the stale entries at the head of a workflow's heap (an instance that woke,
        ended, was deleted, or waits until another time since; one ``listed`` already: an
        entry twice, from a wake time set back to an earlier one); whether an entry is left."""
        heap = self._wakes[name]
        while heap:
            wake_at, order, instance_id = heap[0]
            row = self._rows.get(instance_id)
            # (The row stored under the id now: one deleted and made again, perhaps of another
            # workflow, is another row.)
            if row is not None and row.order == order and row.wake_at == wake_at and row.status in RESUMABLE \
                    and instance_id not in listed:
                return True
            heapq.heappop(heap)
        del self._wakes[name]
        return False

    async def delete(self, instance_id: str) -> bool:
        row = self._rows.get(instance_id)
        if row is None:
            return False
        if row.status in RESUMABLE:
            raise InstanceStillRunningError(instance_id, row.status)
        self._remove(row)
        self._release_children(instance_id)
        self._tidy(((row.status, row.workflow_name),), trim=False)
        return True

    async def purge(
        self, finished_by: float, limit: int, *, status: FinishedStatus | None = None, workflow_name: str | None = None,
    ) -> int:
        finished_by = checked_time(finished_by, "purge's finished_by")
        checked_limit(limit, "purge")
        # The order of the rows of that status and workflow alone (none: no row of them has
        # finished with nothing keeping it: there is nothing this purge may take).
        order = self._order if status is None and workflow_name is None else self._filtered.get((status, workflow_name))
        if order is None:
            return 0
        orphans: list[_Row] = []  # children whose parent this purge deletes, and it leaves
        # (status, workflow) of the rows it deletes: their orders hold stale places now.
        touched: set[tuple[Status, str]] = set()
        purged = taken = 0  # (taken: the rows the limit counts, not the children they take along)
        for place in order.walk():  # rows leave the dicts here, never the order: walking it is safe
            if not self._current(place):
                continue
            finished_at, row = place
            if finished_at > finished_by or taken == limit:
                # Finish order: the rows after this one finished later (a wall clock stepped
                # back only delays them until this one is due).
                break
            # (Of that status and workflow: a current place in a filtered order is of its
            # row's status, a row whose status changes after it finished takes a new place.)
            touched.add((row.status, row.workflow_name))
            self._remove(row)
            taken += 1
            purged += 1 + self._purge_children(row.instance_id, finished_by, status, workflow_name, orphans)
        self._release(orphans)
        # (A purge by status or workflow also drops the stale places at the fronts of the
        # filtered orders it left places in, looking at each: those of the rows it deleted stand
        # there, and the next purge of its kind would pass over them again. An unfiltered one,
        # the engine's retention, looks at what it took and no more: see _trim.)
        self._tidy(touched, trim=True, trim_filtered=order is not self._order)
        return purged

    def _purge_children(self, parent_id: str, finished_by: float, status: Status | None,
                        workflow_name: str | None, orphans: list[_Row]) -> int:
        """Delete the children a purged parent kept, and theirs, that this purge takes (finished
        by then, of its status and workflow): in the same call, so that no child outlives its
        parent there (a new instance given the parent's id would find its children's ids taken).
        Those it leaves (another status, finished later) nothing keeps any more: they join
        ``orphans``. How many it deleted."""
        purged = 0
        todo = [parent_id]
        while todo:
            for child_id in self._children.pop(todo.pop(), ()):
                row = self._rows.get(child_id)
                if row is None:
                    continue
                if (row.finished_at is not None and row.finished_at <= finished_by
                        and (status is None or row.status == status)
                        and (workflow_name is None or row.workflow_name == workflow_name)):
                    self._remove(row)
                    purged += 1
                    todo.append(child_id)
                else:
                    row.parent_id = None
                    orphans.append(row)
        return purged

    def _let_go_finished_children(self, parent_id: str) -> None:
        """A parent's history started afresh: the children of its runs before that have finished
        go by their own finish times (those that still run stay kept)."""
        kept = self._children.get(parent_id)
        if not kept:
            return
        done = [row for child_id in kept if (row := self._rows.get(child_id)) and row.status in TERMINAL]
        for row in done:
            kept.discard(row.instance_id)
            row.parent_id = None
        if not kept:
            del self._children[parent_id]
        self._release(done)

    def _release_children(self, parent_id: str) -> None:
        """The children ``parent_id`` kept, itself deleted: nothing keeps them any more."""
        orphans = [row for child_id in self._children.pop(parent_id, ()) if (row := self._rows.get(child_id))]
        for row in orphans:
            row.parent_id = None
        self._release(orphans)

    def _stamp(self, row: _Row) -> None:
        """A row that has just taken a status (and left the place it had, if any): note when it
        finished, if it did."""
        if row.status in TERMINAL:
            row.finished_at = self._clock()
            if row.parent_id is None:
                # A child its parent keeps is not: purges never walk past the children of the
                # parents stored (a map's thousands), which go with their parent or, once it is
                # deleted, join the order then (``_release``).
                place = row.place = (row.finished_at, row)
                self._order.finished.append(place)
                for order in self._orders_of(row.status, row.workflow_name):
                    order.finished.append(place)
        else:
            row.finished_at = None

    def _orders_of(self, status: Status, workflow_name: str) -> tuple[_FinishOrder, ...]:
        """The filtered orders of a row of that status and workflow (made as it first needs them)."""
        orders = self._filed.get((status, workflow_name))
        if orders is None:
            orders = self._filed[status, workflow_name] = tuple(
                self._filtered.setdefault(key, _FinishOrder()) for key in _filters(status, workflow_name))
        return orders

    def _release(self, rows: list[_Row]) -> None:
        """Children let go: those that have finished take their place by their finish time in
        each of their orders (one that has not joins them as it finishes)."""
        for row in rows:
            if row.finished_at is not None:
                place = row.place = (row.finished_at, row)
                self._order.insert(place)
                for order in self._orders_of(row.status, row.workflow_name):
                    order.insert(place)

    def _leave(self, row: _Row) -> None:
        """``row`` gives up its place, if it has one (deleted, or finishing again): stale in
        each of its orders, those of the status it has (call this before it changes)."""
        if row.place is not None:
            row.place = None
            self._order.stale += 1
            for order in self._filed[row.status, row.workflow_name]:
                order.stale += 1

    def _tidy(self, left: Iterable[tuple[Status, str]], *, trim: bool, trim_filtered: bool = False) -> None:
        """After places were left in the orders of these (status, workflow) pairs, and in the
        order of all: with ``trim``, drop the stale places at the front of the order of all
        (see :meth:`_trim`), with ``trim_filtered`` those at the fronts of the filtered ones
        too; then all the stale places of an order once they outnumber the current ones."""
        current = self._current
        if trim:
            self._trim()
        self._order.compact(current)
        for order in {order for pair in left for order in self._filed.get(pair, ())}:
            if trim_filtered:
                order.trim(current)
            order.compact(current)

    def _trim(self) -> None:
        """Drop the stale places at the fronts of the order of all, and each from the front of
        its filtered orders where it stands first there too: a filtered order holds its places
        in the order of all (they join both at once), so a place comes first in them once the
        places before it have gone, and goes then, found by what it is, not by a look at
        whether it is current (an unfiltered purge looks at what it takes and no more, however
        many orders hold it). What this misses (a place behind one the order of all swept out
        first, or of a row that finished again under another status) goes with its own order's
        trim or sweep."""
        order, current, filed = self._order, self._current, self._filed
        finished = order.finished
        while finished and not current(finished[0]):
            place = finished.popleft()
            order.stale -= 1
            row = place[1]
            # (A row finished again is filed under its new status now: its old orders keep the
            # place until their own trim or sweep.)
            for other in filed.get((row.status, row.workflow_name), ()):
                if other.finished and other.finished[0] is place:
                    other.finished.popleft()
                    other.stale -= 1
        released = order.released
        gone = 0
        firsts: dict[_FinishOrder, int] = {}  # (places are dropped from a list all at once)
        while gone < len(released) and not current(released[gone]):
            place = released[gone]
            row = place[1]
            for other in filed.get((row.status, row.workflow_name), ()):
                at = firsts.get(other, 0)
                if at < len(other.released) and other.released[at] is place:
                    firsts[other] = at + 1
            gone += 1
        del released[:gone]
        order.stale -= gone
        for other, at in firsts.items():
            del other.released[:at]
            other.stale -= at

    def _current(self, place: tuple[float, _Row]) -> bool:
        """Whether a place in the finish order is its row's. (The order keeps the places of
        rows deleted since, and of rows that finished again, such as a completed child later
        compensated, even at the same time: those are passed over, the row's newest place
        counts.)"""
        return place[1].place is place

    def _remove(self, row: _Row) -> None:
        self._leave(row)
        waited = _waits(row)
        del self._rows[row.instance_id]
        if row.parent_id is not None and (siblings := self._children.get(row.parent_id)) is not None:
            siblings.discard(row.instance_id)
            if not siblings:
                del self._children[row.parent_id]
        del self._by_status[row.status][row.instance_id]
        del self._by_workflow[row.workflow_name][row.instance_id]
        row.finished_at = None  # its place in the finish order is dropped when it comes up
        self._count_waiting(row, -waited)

    def _oldest_first(self, ids: Iterable[str]) -> list[StoredInstance]:
        rows = self._rows
        return [_stored(i, rows[i]) for i in sorted(ids, key=lambda i: rows[i].order)]


class _FinishOrder:
    """The finished rows no stored parent keeps (all of them, or those of one status, workflow
    or both), by finish time (the clock permitting), for
    purges: a deque that rows join at its end as they finish, and a sorted list of the children
    let go since by their parent's deletion, whose finish times may lie anywhere before; a purge
    walks the two merged. A row holds its current place (``_Row.place``), the same tuple in
    each of its orders; a row deleted or
    finished again leaves a stale one behind (a dict would keep the holes: places are dropped
    from the front as purges pass them, and all at once when they outnumber the current ones),
    so that every change costs the same amortized, whatever is stored. (A child let go takes
    its place in the list by a binary search, and a move of the list's tail in memory.)"""

    __slots__ = ("finished", "released", "stale")

    def __init__(self) -> None:
        self.finished: collections.deque[tuple[float, _Row]] = collections.deque()
        self.released: list[tuple[float, _Row]] = []
        self.stale = 0

    def insert(self, place: tuple[float, _Row]) -> None:
        """A child let go takes its place by its finish time."""
        bisect.insort(self.released, place, key=_finish_time)

    def walk(self) -> Iterator[tuple[float, _Row]]:
        if not self.released:
            return iter(self.finished)
        return heapq.merge(self.finished, self.released, key=_finish_time)

    def trim(self, current: Callable[[tuple[float, _Row]], bool]) -> None:
        """Drop the stale places at the fronts."""
        finished, released = self.finished, self.released
        while finished and not current(finished[0]):
            finished.popleft()
            self.stale -= 1
        gone = 0
        while gone < len(released) and not current(released[gone]):
            gone += 1
        del released[:gone]
        self.stale -= gone

    def compact(self, current: Callable[[tuple[float, _Row]], bool]) -> None:
        """Drop every stale place once they outnumber the current ones (a row kept for longer
        at the front, a failed one a purge by status leaves, would keep every later one's
        place, and with it the whole row)."""
        if self.stale > len(self.finished) + len(self.released) - self.stale + _COMPACT_AT:
            self.finished = collections.deque(place for place in self.finished if current(place))
            self.released = [place for place in self.released if current(place)]
            self.stale = 0


def _finish_time(place: tuple[float, _Row]) -> float:
    return place[0]


def _filters(status: str, workflow_name: str) -> tuple[tuple[str | None, str | None], ...]:
    """The filtered finish orders a row of that status and workflow has its place in: keyed as
    a purge is filtered, ``(status, workflow_name)`` with ``None`` for either left out."""
    return (status, None), (None, workflow_name), (status, workflow_name)


def _waits(row: _Row) -> bool:
    """Whether a row waits to be woken (an unfinished instance with a time to wake it at)."""
    return row.wake_at is not None and row.status in RESUMABLE


def _stored(instance_id: str, row: _Row, records: tuple[bytes, ...] | None = None) -> StoredInstance:
    """The row as stored, with ``records`` (``None``: all of them)."""
    return StoredInstance(
        instance_id=instance_id, workflow_name=row.workflow_name, status=row.status, start=row.start,
        header=row.header, records=tuple(row.records) if records is None else records, wake_at=row.wake_at,
    )


def _blob(value: object, what: str) -> bytes:
    """``value`` as ``bytes`` (a copy of a bytearray or memoryview); anything else is refused,
    naming ``what`` (``bytes(3)`` would quietly store three zero bytes)."""
    if type(value) is bytes:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise StorageError(f"{what} must be bytes, got {type(value).__name__}; nothing was written")
