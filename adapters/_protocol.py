"""What a persistence adapter is (protocol version 3). Adapters store bytes; they never decode.

An instance is stored as three kinds of bytes (SPEC §10):

- ``start``: written by :meth:`Adapter.create` (input, creation time, definition
  fingerprint): what never changes, but for an instance that continues as new (a checkpoint
  that restarts its history gives it new ones);
- ``header``: small, replaced by every checkpoint (status, lane positions, shared data, errors);
- ``records``: one per step execution, appended by the checkpoint that follows the execution's
  end and never rewritten (a checkpoint that restarts the history deletes them all). Record
  ``n`` (its *seq*) is the instance's ``n``-th record, from 0.

So the bytes a checkpoint writes do not grow with the number of steps already run.

Beside the bytes, an adapter keeps what it indexes: the workflow name, the status, the creation
order (listings page through it), the *finish time* of a finished instance (``purge`` deletes
by it), stamped by the adapter itself from the clock :meth:`Adapter.use_clock` gives it, and a
child instance's *parent* (``purge`` keeps a child while its parent is stored).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Sequence
from typing import Protocol, runtime_checkable

import attrs

from trioflow._snapshot import FinishedStatus, Status


@attrs.frozen(kw_only=True)
class StoredInstance:
    """One stored instance as an adapter holds it: the fields it indexes, and opaque bytes."""

    instance_id: str
    workflow_name: str
    status: Status
    #: ``None`` for a row written before format 2, whose header still holds what start holds.
    start: bytes | None
    header: bytes
    #: Every record, in seq order (``records[n]`` is seq ``n``).
    records: tuple[bytes, ...] = ()
    #: Pending signals ``(seq, name, payload)`` in seq order: given by :meth:`Adapter.load`
    #: (listings leave them out).
    signals: tuple[tuple[int, str, bytes], ...] = ()
    #: When the engine is to wake the instance (the ``wake_at`` of its last checkpoint; ``inf``:
    #: only a signal wakes it), or ``None``: it waits for nothing, or the adapter does not say.
    #: What :meth:`Adapter.due` goes by: the engine leaves such a row to it rather than resume it.
    wake_at: float | None = None


@runtime_checkable
class Adapter(Protocol):
    """Persistence for instances. ``create`` and ``checkpoint`` return only once what they
    wrote is as durable as the adapter promises: the engine does not start an instance's next
    step before that. Each is atomic: all of it is stored, or none of it."""

    async def open(self) -> None:
        """Acquire what the adapter needs (files, locks, threads); called by ``open_engine``."""
        ...

    async def close(self) -> None:
        """Flush and release; called when the engine stops. The adapter may be opened again."""
        ...

    async def create(
        self, instance_id: str, workflow_name: str, status: Status, *, start: bytes, header: bytes,
        parent_id: str | None = None, wake_at: float | None = None,
    ) -> bool:
        """Store a new instance with no records; ``False`` (and no write) when the id exists.
        ``parent_id``: the instance that started it as a child workflow, kept for :meth:`purge`.
        ``wake_at``: an instance that waits from the start (a delayed start), as
        :meth:`checkpoint` stores it. (The engine passes each only to an adapter whose
        ``create`` takes it: one written before it existed keeps working, without what it
        brings.)"""
        ...

    async def checkpoint(
        self, instance_id: str, status: Status, header: bytes, records: Sequence[bytes], *,
        first_seq: int, start: bytes | None = None, consumed: Sequence[int] = (), wake_at: float | None = None,
        notify: tuple[str, str, bytes] | None = None,
    ) -> int | None:
        """In one atomic write: replace the status, header and ``wake_at``, append ``records`` as seq
        ``first_seq``, ``first_seq + 1``, ..., and delete the pending signals whose seqs are in
        ``consumed`` (the engine passes it only when a receive step consumed some). ``first_seq``
        must equal the number of records stored, and every consumed signal must be pending:
        otherwise (a write repeated or lost) raise :class:`CheckpointConflictError` and write
        nothing. ``start``, when given, sets the start bytes (a row from before format 2 gets
        them on its first checkpoint). An unknown instance raises :class:`UnknownInstanceError`.

        ``wake_at`` (Unix seconds, ``inf`` allowed) marks an instance that waits with no task:
        :meth:`resumable` leaves it out and :meth:`due` hands it back once its time has come.
        ``None`` (the default, and what the engine passes by leaving it out) means it does not wait.

        ``notify`` ``(instance_id, name, payload)``: also store that signal for that instance, as
        :meth:`send_signal` would (nothing if it has ended or is unknown), in the same atomic
        write. The engine passes it with the checkpoint that records a child instance's end:
        its notice to its parent is then never lost, nor sent for an end that was not stored.

        Returns the seq of the notice it stored, or ``None`` (no ``notify``, or nothing stored).
        An adapter may return ``None`` always: the engine then reads the parent's signals to
        find the notice, a read more per child.

        ``restart`` (an option: an adapter without it runs no workflow that continues as new,
        see :func:`restarts_history`): the instance starts its history afresh, in the same
        atomic write: every stored record is deleted and ``records`` stored as seq 0, 1, ...
        (``first_seq`` is still the number stored before, the fence), and ``start`` (always
        given then) replaces the start bytes; its pending signals stay, but those it consumes;
        and its finished children are kept no more (:meth:`purge` takes them by their own
        finish times, as the children of a deleted parent). The engine passes it with a status
        an instance runs in, and no ``notify``."""
        ...

    async def due(self, before: float, limit: int, *, skip_workflows: Collection[str] = ()) -> list[StoredInstance]:
        """Waiting ``pending``/``running`` instances whose ``wake_at`` is at most ``before``,
        soonest first, at most ``limit`` of them, leaving out those of the workflows named in
        ``skip_workflows`` (the engine cannot run them now). An adapter written before
        ``skip_workflows`` existed is still used: the engine then passes it over itself.

        An adapter may also take ``exclude: Collection[str] = ()`` (the bundled ones do): the
        ids of instances to leave out, not counted in ``limit`` (woken already and due until
        their next checkpoint: not read again, records and all, at every look of the waker).
        Without it, the engine asks for that many rows more and passes them over itself."""
        ...

    async def next_wake(self, *, skip_workflows: Collection[str] = ()) -> float | None:
        """The soonest ``wake_at`` of a waiting ``pending``/``running`` instance, leaving out
        those of the workflows named in ``skip_workflows`` (``None``: none)."""
        ...

    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        """Store a signal for an instance, durably, and return its seq (seqs only grow, so
        signals sort in the order they were stored). ``None``, and nothing stored, when the
        instance has ended; an unknown instance raises :class:`UnknownInstanceError`."""
        ...

    async def signals(self, instance_id: str) -> list[tuple[int, str, bytes]]:
        """The instance's pending signals, ``(seq, name, payload)`` in seq order."""
        ...

    async def load(self, instance_id: str) -> StoredInstance | None:
        """One instance with all its records and its pending signals, or ``None``."""
        ...

    async def list_instances(
        self, workflow_name: str | None = None, status: Status | None = None, *,
        after: str | None = None, limit: int | None = None, newest_first: bool = False,
    ) -> list[StoredInstance]:
        """Instances of one workflow (``None``: of every workflow), optionally of one status,
        with their records, in creation order: oldest first, or newest first. At most ``limit``
        of them (``None``: all). ``after`` (an instance id) lists only the instances that come
        after that one in this order, by its place whatever its workflow or status is now: pages
        are stable while instances are created (new ones come after the last page oldest first,
        before the first page newest first). An ``after`` that is not stored raises
        :class:`UnknownInstanceError`. Served from the adapter's indexes on workflow and status
        (a SQL adapter also pages through them in creation order), not by reading every
        stored instance."""
        ...

    async def resumable(self) -> list[StoredInstance]:
        """Instances a resume must pick up, oldest first: status ``pending`` or ``running``, and
        not waiting with a ``wake_at`` unless signals are pending for it (one stored just before
        a crash must still reach it)."""
        ...

    async def delete(self, instance_id: str) -> bool:
        """Remove a finished instance, its records and its signals (and the keys of those sent
        with one, see :class:`KeyedSignals`); whether it existed. An
        instance that is ``pending`` or ``running`` is refused with
        :class:`InstanceStillRunningError`, nothing deleted (its run would store it again)."""
        ...

    def use_clock(self, clock: Callable[[], float]) -> None:
        """The wall clock (Unix seconds) to stamp finish times with from now on. ``open_engine``
        gives the engine's own before it calls :meth:`open`, so finish times and the cutoffs
        the engine passes to :meth:`purge` are on one clock; an adapter given none uses
        ``time.time``. While the adapter is open, a clock given changes nothing: it comes from
        a second engine, which :meth:`open` then refuses, and the first keeps its own."""
        ...

    async def purge(
        self, finished_by: float, limit: int, *, status: FinishedStatus | None = None, workflow_name: str | None = None,
    ) -> int:
        """Delete up to ``limit`` finished instances (status in ``TERMINAL``) that finished at or
        before ``finished_by``, earliest finish first, optionally only those of one status or
        one workflow, with their records, pending signals and signal keys; returns how many. Atomic, and
        found through an index on finish time that leaves out the children stored parents
        keep (for a call given a status, a workflow or both, one on finish time within that
        status, workflow or both: the bundled adapters keep one of each): its cost follows what
        it deletes, not what is stored nor what it keeps, finished rows of another status or
        workflow included. An instance's finish time is stamped when a
        create or checkpoint gives it a finished status, and survives a reopen.

        A child instance (one created with a ``parent_id``) is kept, whatever its finish time,
        while its parent is stored: the parent may yet compensate it as a unit (its own parent
        may compensate it), and lists it among its children. A call that deletes a parent
        deletes in the same write the children it kept that the call takes (finished by
        ``finished_by``, of ``status`` and ``workflow_name``), and theirs, beyond ``limit`` if
        need be: a new instance given the parent's id must not find its children's ids taken.
        A child whose parent is gone otherwise (deleted, or purged by a call that left the
        child, of another status or finished later) goes by its own finish time, as does one
        created with a ``parent_id`` that is not stored."""
        ...


class SignalsAndLoads(Protocol):
    """What an adapter may also have (not part of :class:`Adapter`: adapters written without it
    keep working, a storage round trip more per signal)."""

    async def send_signal_and_load(
        self, instance_id: str, name: str, payload: bytes,
    ) -> tuple[int | None, StoredInstance | None]:
        """In one atomic operation, what :meth:`Adapter.send_signal` does and then what
        :meth:`Adapter.load` does: ``(seq, the instance's row)``, the row holding the new signal
        among its pending ones. ``(None, None)``, and nothing stored, when the instance has
        ended; an unknown instance raises :class:`UnknownInstanceError`. The engine uses it for
        a signal to an instance that is not running in its process: the row it wakes the
        instance from comes back with the write that stored the signal."""
        ...


class KeyedSignals(Protocol):
    """What an adapter may also have (not part of :class:`Adapter`: adapters written without it
    keep working, but ``engine.signal(..., idempotency_key=)`` is refused on them)."""

    async def send_keyed_signal(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool]:
        """:meth:`Adapter.send_signal`, once per instance and ``key``, in one atomic operation:
        ``(seq, False)`` when the signal is stored now; ``(seq, True)``, storing nothing, when
        a signal with that key was stored for the instance before and is pending still (its
        seq: the call that stored it may have lost its answer before the engine handed it
        over); ``(None, True)``, storing nothing, when it was stored and has been consumed
        since (keys are kept as long as the instance is, and go with it on ``delete`` and
        ``purge``); ``(None, False)``, storing nothing, when the instance has ended and knows
        no such key.
        An unknown instance raises :class:`UnknownInstanceError`. The engine uses it for a
        signal sent with an idempotency key: a webhook delivered twice, or a caller that lost
        ``signal()``'s answer and sends again, stores it once."""
        ...


class KeyedSignalsAndLoads(Protocol):
    """What an adapter with :class:`KeyedSignals` may also have (not part of :class:`Adapter`:
    adapters written without it keep working, a storage round trip more per keyed signal)."""

    async def send_keyed_signal_and_load(
        self, instance_id: str, name: str, payload: bytes, key: str,
    ) -> tuple[int | None, bool, StoredInstance | None]:
        """In one atomic operation, what :meth:`KeyedSignals.send_keyed_signal` does and, when it
        stores the signal now, what :meth:`Adapter.load` does: ``(seq, False, the instance's
        row)``, the row holding the new signal among its pending ones; otherwise what
        ``send_keyed_signal`` returns, storing nothing, and ``None`` (``(seq, True, None)``,
        ``(None, True, None)``, ``(None, False, None)``). Keys are the ones ``send_keyed_signal``
        knows. An unknown instance raises :class:`UnknownInstanceError`. The engine uses it, as
        :meth:`SignalsAndLoads.send_signal_and_load`, for a keyed signal to an instance that is
        not running in its process."""
        ...


class HeadLoads(Protocol):
    """What an adapter may also have (not part of :class:`Adapter`: adapters written without it
    keep working, the engine then reading the whole row where the head alone would do)."""

    async def load_head(self, instance_id: str) -> StoredInstance | None:
        """The instance's row as :meth:`Adapter.load` gives it, but without its records and its
        pending signals (``records`` and ``signals`` empty), or ``None``: what it costs must not
        grow with the records stored. The engine uses it where the start, the status and the
        header will do (an idempotent ``start`` or a ``cancel`` of an instance that has ended):
        the header counts the records, which such a row does not hold."""
        ...


def sends_and_loads(adapter: object) -> bool:
    """Whether the engine may store ``adapter``'s signals with ``send_signal_and_load`` (see
    :class:`SignalsAndLoads`) in place of ``send_signal`` then ``load``: only if neither of
    those two is overridden below the class that defines it, so that a subclass which changes
    one of them alone (to add a delay, to count, to refuse) keeps seeing every call. An adapter
    that hands all three over from another one (``__getattr__``) is judged by that one."""
    return _stands_in_for(adapter, "send_signal_and_load", ("send_signal", "load"))


def sends_keyed(adapter: object) -> bool:
    """Whether the engine may store ``adapter``'s keyed signals with ``send_keyed_signal`` (see
    :class:`KeyedSignals`): only if ``send_signal`` is not overridden below the class that
    defines it, so that a subclass which changes ``send_signal`` (to refuse, to count) keeps
    seeing every signal; keyed ones are then refused."""
    return _stands_in_for(adapter, "send_keyed_signal", ("send_signal",))


def sends_keyed_and_loads(adapter: object) -> bool:
    """Whether the engine may store ``adapter``'s keyed signals with ``send_keyed_signal_and_load``
    (see :class:`KeyedSignalsAndLoads`) in place of ``send_keyed_signal`` then ``load``: only if
    none of those two and ``send_signal`` is overridden below the class that defines it, as for
    :func:`sends_and_loads` (a subclass that counts or refuses keyed signals keeps seeing every one)."""
    return _stands_in_for(adapter, "send_keyed_signal_and_load", ("send_keyed_signal", "send_signal", "load"))


def loads_heads(adapter: object) -> bool:
    """Whether the engine may read ``adapter``'s rows with ``load_head`` (see :class:`HeadLoads`)
    where it needs no records: only if ``load`` is not overridden below the class that defines
    ``load_head``, so that a subclass which changes ``load`` alone keeps seeing every read."""
    return _stands_in_for(adapter, "load_head", ("load",))


def _stands_in_for(adapter: object, method: str, replaced: tuple[str, ...]) -> bool:
    """Whether ``adapter``'s ``method`` may be called in place of the methods ``replaced``: it
    has all of them, bound to one object, and none is defined below the class defining it."""
    combined = getattr(adapter, method, None)
    owner = getattr(combined, "__self__", None)
    if owner is None or any(getattr(getattr(adapter, name, None), "__self__", None) is not owner
                            for name in replaced):
        return False
    depths = [next((depth for depth, cls in enumerate(type(owner).__mro__) if name in vars(cls)), None)
              for name in (method, *replaced)]
    return None not in depths and all(depth >= depths[0] for depth in depths[1:])  # type: ignore[operator]


def stores_signals(adapter: object) -> bool:
    """Whether ``adapter`` stores signals (``send_signal`` and ``signals``): one written before
    they existed does not, and runs no workflow that receives them or starts children (whose
    ends reach their parents as signals)."""
    return callable(getattr(adapter, "send_signal", None)) and callable(getattr(adapter, "signals", None))


def waits_out_of_memory(adapter: object) -> bool:
    """Whether ``adapter`` keeps waiting instances for the engine's waker (``due`` and
    ``next_wake``): one written before they existed does not, and its instances wait in memory."""
    return callable(getattr(adapter, "due", None)) and callable(getattr(adapter, "next_wake", None))


def skips_workflows(adapter: object) -> bool:
    """Whether ``adapter``'s ``due()`` and ``next_wake()`` take ``skip_workflows``."""
    return _takes(adapter, "due", "skip_workflows")


def excludes_instances(adapter: object) -> bool:
    """Whether ``adapter``'s ``due()`` takes ``exclude``."""
    return _takes(adapter, "due", "exclude")


def restarts_history(adapter: object) -> bool:
    """Whether ``adapter``'s ``checkpoint()`` takes ``restart`` (a workflow that continues as
    new needs it)."""
    return _takes(adapter, "checkpoint", "restart")


def creates_waiting(adapter: object) -> bool:
    """Whether ``adapter``'s ``create()`` takes ``wake_at`` (a delayed start's row then waits
    from its creation on)."""
    return _takes(adapter, "create", "wake_at")


def keeps_families(adapter: object) -> bool:
    """Whether ``adapter``'s ``create()`` takes ``parent_id`` (and its ``purge()`` keeps a child
    while its parent is stored)."""
    return _takes(adapter, "create", "parent_id")


def _takes(adapter: object, method: str, parameter: str) -> bool:
    """Whether ``adapter``'s ``method`` names ``parameter`` (an adapter written before the
    parameter existed does not, and keeps working without what it brings). Not a method that
    takes ``**kwargs`` alone: a wrapper that hands its calls on to an adapter written before
    would fail on every call given it; a wrapper declares the parameters it hands on."""
    try:
        return parameter in inspect.signature(getattr(adapter, method)).parameters
    except (AttributeError, TypeError, ValueError):
        return False
