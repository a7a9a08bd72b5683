"""What child steps ask of the engine that runs their instance (``trioflow.actors._run.Children``):
start a child, cancel it, compensate it as a unit, and pass its end notice on to its parent."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import trio

from ._codec import decode_payload, decode_stored, encode_payload
from ._fanout_failures import completion_changes_nothing
from ._errors import (
    EngineClosedError,
    SnapshotDecodeError,
    StorageUnavailableError,
    TrioflowError,
    describe_error,
    split_description,
)
from ._lanes import child_ended_signal
from ._snapshot import RESUMABLE, WorkflowInstance
from ._storage_retry import retried

if TYPE_CHECKING:
    from trioflow.actors._run import Run

    from ._engine import Engine

log = logging.getLogger("trioflow")


class EngineChildren:
    """The engine's side of child steps, for the runs it spawns."""

    __slots__ = ("_engine", "_fetching", "_slots_watched")

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        #: Parents running here whose pending signals are about to be read: the children that
        #: end before that read share it (a parent of many children would read all its pending
        #: notices once per child otherwise).
        self._fetching: set[str] = set()
        #: Events of runs that rest, set when an instance starts waiting for a slot.
        self._slots_watched: set[trio.Event] = set()

    @property
    def closing(self) -> bool:
        # (Stopped without being closed: a cancel of the scope around the engine's block.)
        return self._engine._closed or self._engine._actors_stopped

    def start(
        self, workflow: str, input: Any, child_id: str, parent_id: str, held: object = None, ours: bool = False,
    ) -> Awaitable[str]:
        # The engine's coroutine itself, not one around it: a frame fewer per child starting.
        return self._engine._start_child(workflow, input, child_id, parent_id, held, ours)

    def hold(self, child_id: str, workflow: str, before: object = None) -> object:
        return self._engine._hold_start(child_id, workflow, before)

    def release(self, held: object, *, for_now: bool = False) -> object:
        self._engine._release_start(held, step_over=not for_now)
        return held

    def cancel_as_made(self, held: object, at: float = -math.inf) -> None:
        self._engine._cancel_as_made(held, at)

    def check_runnable(self, workflow: str) -> None:
        self._engine._runnable(workflow)

    def runnable(self, workflow: str) -> bool:
        definition = self._engine._definitions.get(workflow)
        return definition is not None and not self._engine._missing_jobs(definition)

    async def until_registered(self, workflow: str) -> None:
        engine = self._engine
        while not self.runnable(workflow):
            if engine._closed:
                # Nothing registers it now: the engine cancels its runs right after it closes,
                # and this one stops as stored, for the next engine.
                await trio.lowlevel.checkpoint_if_cancelled()
                engine._check_open()
            await engine._registered_more.wait()

    def slots_wanted(self) -> bool:
        """Whether instances wait in the queue for a ``max_running`` slot (see ``settle``)."""
        return bool(self._engine._waiting)

    def watch_slots(self, event: trio.Event) -> None:
        self._slots_watched.add(event)

    def unwatch_slots(self, event: trio.Event) -> None:
        self._slots_watched.discard(event)

    def slot_wanted(self) -> None:
        """An instance starts waiting for a slot: resting runs look again (see ``settle``)."""
        if self._slots_watched:
            for event in self._slots_watched:
                event.set()
            self._slots_watched.clear()

    def in_parent_slot(self, parent_id: str) -> bool:
        parent = self._engine._live.get(parent_id)
        # A parent that cannot leave memory while it waits keeps its slot (``_start_child``
        # starts its children without one), and so does one that itself runs in its parent's.
        return parent is not None and not parent.may_park(math.inf)

    def lend_slot(self, run: Run, *, at_once: bool = False) -> None:
        engine = self._engine
        queue, lend_after = engine._waiting, engine._park_after
        if not queue or lend_after is None:
            return  # (no waker, no parking: children of a waiting parent never queue)
        soon = math.inf if at_once else trio.current_time() - lend_after
        for lane in run.state.lanes.values():
            waiting = lane.waiting
            if waiting is not None and "child" in waiting and (child := engine._live.get(waiting["child"])) is not None \
                    and (since := queue.queued_at(child)) is not None and since <= soon:
                # Its own children run in its slot, and it stays while it waits on them (see
                # ``Run.may_park``): parked, it would leave them queued for slots its parent holds.
                child.lent = True
                engine._adopt_child(child.state.instance_id)

    def stored_queued(self, parent_id: str, child: Run) -> None:
        """A child stored to wait for a slot of its own: if its parent can no longer leave
        memory meanwhile (a wait-all branch of it failed as the child was stored: see
        ``Run.lends``), it runs in the parent's slot now, as those queued before do."""
        parent = self._engine._live.get(parent_id)
        if parent is not None and parent.lends and child in self._engine._waiting:
            child.lent = True
            self._engine._adopt_child(child.state.instance_id)

    async def cancel(self, child_id: str, bound: float | None, *, undo: bool = True) -> WorkflowInstance | None:
        engine = self._engine
        try:
            if child_id not in engine._live:
                stored = await retried(lambda: engine.adapter.load(child_id), retry_for=engine._storage_retry_for,
                                       what=f"loading child {child_id} to cancel it", instance_id=child_id)
                if stored is None:
                    # Not stored: its parent stored the step's start and stopped before it
                    # stored the child (see trioflow.actors._child), or it ended and was purged
                    # before its parent took its end. Nothing left to cancel.
                    return None
                # Its workflow (or a job of it) may be registered after its parent's, as an
                # engine starts up: it is cancelled once it is, not left to run on; for as long
                # as the parent's compensations may take, no longer.
                if stored is not None and stored.status in RESUMABLE \
                        and not await engine.until_runnable(stored.workflow_name, bound) \
                        and await engine._cancel_stored(child_id, stored.workflow_name):
                    # Nothing here can run it: the cancel is stored in it instead, and the
                    # engine that runs it next compensates it (and cancels its own children).
                    log.warning(
                        "child %s, whose step was cancelled, is stored cancelled: its workflow %r was not registered"
                        " with the jobs it uses within %s s; an engine that has them compensates it",
                        child_id, stored.workflow_name, bound, extra={"instance_id": child_id})
                    return None
            # (Tried again while storage fails for a reason that may pass, as the instance's own
            # storage calls are: engine.cancel() raises at once, as any call a user makes.)
            await retried(lambda: engine.cancel(child_id), retry_for=engine._storage_retry_for,
                          what=f"cancelling child {child_id}", instance_id=child_id)
            # Its end, whatever it is. A cancel that reaches a child past its last checkpoint
            # does not stop it from completing; nor does one that comes after it completed,
            # its end not yet taken by the step that waited on it (a fail-fast sibling, or the
            # parent's own end, cancelled that step first). Either way the step never
            # completes, so the parent's compensation never reaches that child: it is
            # compensated as a unit now, as a child cancelled while running compensates itself.
            ended = await engine.wait(child_id)
            if ended.status != "completed":
                return None
            if not undo:
                return ended
            problem = await engine._undo_child(child_id, bound)
        except EngineClosedError:
            return None  # stopping meanwhile: the child resumes later
        except StorageUnavailableError:
            # Storage down past storage_retry_for: the parent stops as stored, its step on the
            # child unended, and cancels it again once taken up (left, it would run on, alone).
            raise
        except TrioflowError as exc:  # it cannot be waited on here (its jobs are missing)
            problem = describe_error(exc)
        if problem is not None:
            log.warning("child %s, whose step was cancelled, could not be cancelled or compensated: %s", child_id,
                        problem, extra={"instance_id": child_id})
        return None

    def adopt(self, child_id: str, parent_id: str) -> None:
        """A parent taken up again here waits in memory, in its slot, for ``child_id``: the
        child runs in that slot too, whether it is queued here for a slot of its own or stored
        as waiting (it waited in its parent's slot for a child of its own before a restart, so
        nothing else would resume it; that grandchild then runs in its slot in turn)."""
        if not self.in_parent_slot(parent_id):
            return
        engine = self._engine
        if child_id in engine._live:
            engine._adopt_child(child_id)
        else:
            engine._supervisor.start_soon(f"adopt child {child_id}", self._wake_child, child_id)

    async def _wake_child(self, child_id: str) -> None:
        engine = self._engine
        if engine._closed:
            return
        try:
            await retried(lambda: engine._wake_if_waiting(child_id, lambda waiting: True, signalled=False),
                          retry_for=engine._storage_retry_for, what=f"resuming child {child_id}", instance_id=child_id)
        except EngineClosedError:
            return  # stopping meanwhile: the child resumes later
        except TrioflowError as exc:  # storage is down: a later engine takes it up
            log.warning("child %s could not be resumed in its parent's slot: %s", child_id, describe_error(exc),
                        extra={"instance_id": child_id})

    async def compensate(self, child_id: str, bound: float | None) -> str | None:
        try:
            return await self._engine._undo_child(child_id, bound)
        except EngineClosedError:
            # Stopping while it waited for the child's workflow to be registered: not a failed
            # compensation. The engine cancels its runs right after it closes, and the parent
            # stops as stored; the next engine's compensation undoes the child.
            await trio.lowlevel.checkpoint_if_cancelled()
            raise

    def deliver_notice(self, parent_id: str, notice: str, seq: int | None, payload: bytes) -> bool:
        # Stored as a signal is: a read of the parent's row in flight (a wake for an earlier
        # child's end) may not hold it, and the run taken up from that read must look again.
        self._engine._ends.signal_stored(parent_id)
        run = self._engine._live.get(parent_id)
        if run is None or type(seq) is not int or self._engine._closed:
            # Closed: stored, the next engine's resume finds it pending. (Not an int: an adapter
            # from before checkpoints returned the notice's seq, returning something else.)
            return self._engine._closed
        # What storage holds: no read needed. (A race, harmless: with an adapter that awaits
        # more after storing the notice, the parent could read the notice itself, consume it,
        # leave memory and come back as a new run before this call; that run then holds the
        # notice as delivered and never takes it, since no lane of it waits for that child.)
        outcome = decode_payload(payload)
        run.deliver(seq, notice, outcome)
        if ended_badly(outcome) or (run.definition.completions_may_fail
                                    and not completion_changes_nothing(run.definition, run.state, notice)):
            self._engine._run_to_cancel_children(run)  # (queued behind its children: see there)
        return True

    def ended_soon(self, parent_id: str, notice: str) -> None:
        self._engine._supervisor.start_soon(f"notify parent {parent_id}", self._notify, parent_id, notice)

    async def _notify(self, parent_id: str, notice: str) -> None:
        # A parent parked on its child has no wake time: if this fails, nothing else wakes it.
        await retried(lambda: self._ended(parent_id, notice), retry_for=self._engine._storage_retry_for,
                      what=f"waking parent {parent_id} for its child's end", instance_id=parent_id)

    def unreadable(self, parent_id: str, child_id: str, error: SnapshotDecodeError) -> None:
        """``child_id`` cannot be read here: its parent, if it waits for that child's end, is
        told it failed with ``error`` (once: not a parent that holds a notice of it already,
        or has moved on)."""
        self._engine._supervisor.start_soon(
            f"tell parent {parent_id} of unreadable child {child_id}", self._tell_unreadable, parent_id, child_id, error)

    async def _tell_unreadable(self, parent_id: str, child_id: str, error: SnapshotDecodeError) -> None:
        engine = self._engine
        notice = child_ended_signal(child_id)
        description = describe_error(error)
        name, cause = split_description(description)
        outcome = {"status": "failed", "output": None, "error": description, "error_name": name, "cause": cause}

        async def tell() -> bool:
            stored = await engine.adapter.load(parent_id)
            if stored is None or stored.status not in RESUMABLE or any(n == notice for _, n, _ in stored.signals):
                return False
            try:
                parent = decode_stored(stored)
            except SnapshotDecodeError:
                return False  # (reported on its own when it is read to run)
            if not any(lane.waiting is not None and lane.waiting.get("signal") == notice
                       for lane in parent.lanes.values()):
                return False
            sent = await engine.adapter.send_signal(parent_id, notice, encode_payload(outcome, "the child's outcome"))
            return sent is not None

        try:
            told = await retried(tell, retry_for=engine._storage_retry_for,
                                 what=f"telling parent {parent_id} its child cannot be read", instance_id=parent_id)
        except TrioflowError as exc:
            log.warning("parent %s could not be told its child %s cannot be read: %s", parent_id, child_id,
                        describe_error(exc), extra={"instance_id": parent_id})
            return
        if told:
            await self._notify(parent_id, notice)

    async def _ended(self, parent_id: str, notice: str) -> None:
        engine = self._engine
        if engine._closed:
            return  # stored: the next engine's resume finds it pending for the parent
        run = engine._live.get(parent_id)
        if run is not None:
            if parent_id in self._fetching:
                return  # a read yet to start will see this notice too
            self._fetching.add(parent_id)
            try:
                await trio.lowlevel.checkpoint()  # the children ending in this pass join the read
            finally:
                # Before the read: a notice stored once it started needs a read of its own.
                self._fetching.discard(parent_id)
            run.deliver_stored(await engine.adapter.signals(parent_id))
            if engine._live.get(parent_id) is run:
                if any(name == notice and (run.definition.completions_may_fail or ended_badly(payload))
                       for _, name, payload in run.state.signals):
                    engine._run_to_cancel_children(run)  # (queued behind its children: see there)
                return
            if engine._closed:
                return
            # It left memory while its signals were read (what was handed to it went with it):
            # parked, its row holds the notices read, which wake it as they would have had it
            # left first. Any of them, not this one alone: the read was shared with the
            # children that ended in the same pass (their calls left it to this one), and the
            # parent may have taken this notice already (taken up from a row that held it),
            # and left waiting for one of theirs, which nothing else would wake it for.
            await engine._wake_if_waiting(parent_id, None)
            return
        # Parked: resumed if it waits for this child.
        await engine._wake_if_waiting(parent_id, lambda waiting: waiting.get("signal") == notice)


def ended_badly(payload: Any) -> bool:
    """Whether a child's end notice (its payload, packed or not) says it did not complete."""
    if isinstance(payload, bytes):
        try:
            payload = decode_payload(payload)
        except SnapshotDecodeError:
            return False  # (a newer release's: its parent's run says so)
    return isinstance(payload, dict) and payload.get("status") != "completed"
