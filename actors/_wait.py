"""Steps that wait: durable timers (``wait``) and signals (``receive``); child steps wait for
their child's end the way a receive step waits for a signal (see ``_child``).

What a lane waits for is stored in its header entry before it waits (``Lane.waiting``), on the
engine's wall clock, so a resumed instance waits only what is left and a timer that fell due
while no engine ran fires at once. A signal is taken from those delivered to the run (or
stored before it ran here) and deleted from storage by the checkpoint that records the receive
step: never lost once sent, never delivered twice.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, NoReturn

import trio

from trioflow._callables import plain_result
from trioflow._context import WorkflowContext
from trioflow._decide import not_before_creation, running_execution_id, wake_at
from trioflow._definition import ReceiveStep, Step, WaitStep
from trioflow._durations import in_range, seconds, unix_seconds
from trioflow._escapes import failure_of
from trioflow._errors import InvalidArgumentError, SignalTimeoutError
from trioflow._snapshot import Lane, waiting_view

from ._flag import Flag
from ._run import Parked, Run, StepFailure


async def run_wait(run: Run, step: WaitStep, lane: Lane, ctx: WorkflowContext, started_at: float) -> None:
    """Wait until the timer's due time, stored when the step first starts."""
    if not lane.waits():
        try:
            due = _due(run, step, ctx)
        except BaseException as exc:  # the step's callable raised, or gave no due time
            raise StepFailure(step.name, failure_of(exc), 1) from exc
        lane.waiting = {"timer": due, "since": started_at}
        await announce(run, step, ctx.lane, lane, rests=_rests(run, due))
    await _wait_stored(run, lane, "timer")


async def wait_for_start(run: Run, lane: Lane) -> None:
    """A delayed start: wait (or leave memory) until the time stored under ``start``; the
    instance's workflow timeout counts from then (stored with the next checkpoint)."""
    assert lane.waiting is not None
    run.start_due = lane.waiting["start"]
    try:
        await _wait_stored(run, lane, "start")
        # A cancel that came before its time did (the wait may have been over already, awaiting
        # nothing): it never starts, and ends with no start time, unannounced.
        await trio.lowlevel.checkpoint_if_cancelled()
    finally:
        # Replaced while it waited: it starts on the definition registered now, or, cancelled,
        # ends on it (its hooks), as one taken up from storage does.
        run.take_up_release()
    run.state.started_at = not_before_creation(run.state, run.clock())


async def wait_for_retry(run: Run, lane: Lane) -> None:
    """Between two attempts of a step: wait (or leave memory) until the time stored under
    ``retry``, then store that the wait is over (see :func:`past_stored_wait`), keeping the
    attempts made so far: a restart during the next attempt takes the count up from there."""
    assert lane.waiting is not None
    kept: dict[str, Any] = {key: lane.waiting[key] for key in ("attempt", "since") if key in lane.waiting}
    await _wait_stored(run, lane, "retry")
    lane.waiting = kept
    await past_stored_wait(run)


async def past_stored_wait(run: Run) -> None:
    """Checkpoint, if storage still says the instance waits: until then the engine's waker
    reads it as due, and counts it among those it woke that are on their way, of which it
    lets only so many be. A long step run first (an attempt after a retry delay, the first
    step after a delayed start) would hold the other due timers back for as long."""
    if run.stored_wake_at is not None:
        await run.persist()


async def _wait_stored(run: Run, lane: Lane, key: str) -> None:
    assert lane.waiting is not None
    due = lane.waiting[key]
    delay = due - run.clock()
    while not run.may_park(delay) and delay > 0 and (held := run.held_by_failures()) is not None:
        # A branch that failed holds the instance in memory only until its parallel step ends
        # (in a map item that failed, say, while this lane waits on): then this wait may rest.
        with trio.move_on_after(delay):
            await held.wait()
        delay = due - run.clock()
    if run.may_park(delay):
        if len(run.state.lanes) == 1:
            await _store_wake(run)
            await _park(run)
        # One lane of several: it rests, and the instance leaves memory once all of them do.
        run.resting += 1
        try:
            await settle(run, due)
            delay = due - run.clock()
            if delay > 0:
                await trio.sleep(delay)
        finally:
            _woke(run)
        _stop_if_parked(run)
    elif delay > 0:
        if run.children is not None:
            run.children.lend_slot(run)  # (it holds its slot meanwhile)
        await trio.sleep(delay)
    lane.waiting = None


async def run_receive(run: Run, step: ReceiveStep, key: str, lane: Lane, started_at: float) -> Any:
    """Take the next signal named ``step.signal``, waiting for it (until the timeout, if any);
    returns its payload, or raises :class:`StepFailure` with :class:`SignalTimeoutError`. Taken
    up again, it waits for what it stored as it began (the signal's name, its deadline), as a
    wait step keeps its due time, whatever a later release of the definition says."""
    if run.children is None and _never_ends(step.timeout) and _never_ends(run.definition.timeout):
        # No engine (``execute_workflow``): nothing can send it a signal, so without a timeout
        # (its own or the workflow's) it would wait for ever. It fails at once, as a child
        # step there does.
        raise StepFailure(step.name, InvalidArgumentError(
            f"step {step.name!r} waits for signal {step.signal!r} with no timeout, and execute_workflow has no"
            " engine to signal it; give it a timeout, or run it on an engine (open_engine)"), 1)
    signal, timeout = step.signal, step.timeout
    if not lane.waits():
        due = None if timeout is None or timeout == math.inf else run.clock() + timeout  # (inf: none)
        lane.waiting = {"signal": signal, "timeout": due, "since": started_at}
        if due is not None:
            lane.waiting["within"] = timeout  # (named by its error: a release may give another)
        taken = await take(run, signal, due)
        if taken is None:
            # Stored: a resume waits on, with the same timeout.
            await announce(run, step, key, lane, rests=_rests(run, due))
    else:
        assert lane.waiting is not None  # (it waits: lane.waits())
        signal, due = lane.waiting["signal"], lane.waiting["timeout"]
        timeout = lane.waiting.get("within", timeout)  # (stored by releases since December 5th 2026)
        # (take() inline when the run has its stored signals already, as one woken by a signal
        # has: a coroutine fewer for every wake.)
        taken = run.take_signal(signal, by=due) if run.signals_fetched else await take(run, signal, due)
    if taken is None:  # (signal_or_timeout hands a signal taken already back as it is)
        taken = await signal_or_timeout(run, lane, signal, taken)
    lane.waiting = None
    if taken is None:
        assert due is not None  # (its deadline passed: it had one)
        if timeout is None:  # (stored without its timeout, which a release then dropped)
            timeout = due - started_at
        raise StepFailure(step.name, SignalTimeoutError(step.name, signal, timeout), 1)
    seq, payload = taken
    if run.bus.active and run.bus.wants("workflow.signal.received"):
        run.emit("workflow.signal.received", key, step_name=step.name,
                 execution_id=running_execution_id(run.state, key, step.name), signal=signal, seq=seq, payload=payload)
    return payload


def _never_ends(timeout: float | None) -> bool:
    return timeout is None or timeout == math.inf


async def signal_or_timeout(
    run: Run, lane: Lane, name: str, taken: tuple[int, Any] | None,
) -> tuple[int, Any] | None:
    """``taken``, or else the next signal named ``name`` delivered to the run, waited for until
    ``lane.waiting["timeout"]`` (``None``: no timeout; a timeout gives ``None``). A long wait of
    a lane that runs alone leaves memory instead (:class:`Parked`): what it waits for is
    stored, and a signal or the timeout wakes it."""
    assert lane.waiting is not None
    due = lane.waiting["timeout"]
    rests = False  # (one lane of several: it rests, and the instance leaves memory once all do)
    if taken is None and run.may_park(math.inf if due is None else due - run.clock()):
        if len(run.state.lanes) == 1:
            await _store_wake(run)
            await trio.lowlevel.checkpoint_if_cancelled()  # a cancel that woke it goes first
            # A signal delivered while the wait was being stored (or just now) is taken, not
            # left behind: from here to leaving memory nothing awaits, so none can slip in.
            taken = run.take_signal(name, by=due)
            if taken is None:
                _leave(run)  # a signal for it, or its timeout, wakes it
        rests = True
    while taken is None:
        # Taken before waiting (one delivered while the wait was being stored set no event) if
        # it came by the deadline, even if the deadline has passed since. From here to the wait
        # nothing awaits, so any later one sets the event.
        taken = run.take_signal(name, by=due)
        if taken is not None:
            break
        left = math.inf if due is None else due - run.clock()
        if left <= 0:
            return None
        # One event per signal name: a signal wakes the lanes that wait for its name only (a
        # map's items each wait for their own child's end notice: not all of them for each).
        if run.arrived is None:
            run.arrived = {}
        arrived = run.arrived.get(name)
        if arrived is None:
            arrived = run.arrived[name] = Flag()
        if rests:
            run.resting += 1
            try:
                # (What settling stored or waited, a signal may have come in: the event is set.)
                await settle(run, due, arrived)
                if due is None:
                    await arrived.wait()  # (no cancel scope to make: a child's end notice has no timeout)
                else:
                    # (Its due time may have passed as it settled: the rest ends there at the
                    # latest, and the wall clock reads later than trio's deadline by then.)
                    with trio.move_on_after(max(0.0, due - run.clock())):
                        await arrived.wait()
            finally:
                _woke(run)
            _stop_if_parked(run)
        else:
            if run.children is not None:
                run.children.lend_slot(run)  # (it holds its slot meanwhile)
            if due is None:
                await arrived.wait()  # (no cancel scope to make: a child's end notice has no timeout)
            else:
                with trio.move_on_after(left):
                    await arrived.wait()
        taken = run.take_signal(name, by=due)
        if taken is None and not rests and len(run.state.lanes) > 1:
            # Woken with nothing for it: no failed branch holds the instance in memory any
            # longer (see ``Run.parallel_ended``), so this wait may rest now.
            rests = run.may_park(math.inf if due is None else due - run.clock())
    return taken


#: Seconds more that the lanes of an instance must all stay at rest before it leaves memory, for
#: each lane it has: taking it up again costs a load and a restart of every lane, so the more
#: lanes, the longer it stays, and the time spent taking it up stays a small share of the time
#: its lanes rest (a map of 10,000 items waiting on children that end every few seconds is
#: not loaded again at each end).
REST_PER_LANE = 0.01


async def settle(run: Run, until: float | None, woken: Flag | None = None) -> None:
    """Leave memory (:class:`Parked`) if every lane of the run that has an actor rests in a long
    wait (the calling one's counted: it rests, or its actor has ended), and they all stay at
    rest for ``park_after`` seconds, and :data:`REST_PER_LANE` more for each lane (no time at
    all while instances wait for a slot): a fan-out whose children or signals come within a
    moment stays. Returns at once if some lane runs,
    or once one wakes or starts; early if ``until`` (the calling lane's own due time, if any)
    comes first, or ``woken`` (the event the calling lane waits on) is set. (Not called by the
    last branch or item of a fan-out to end: the step they ran for goes on at once.) Whether
    the instance may leave is only worked out (a look at every lane) once they have all stayed
    at rest."""
    while (run.resting and run.resting == run.active and run.settling is None and run.park_after is not None
           and (woken is None or not woken.is_set())):
        settling = run.settling = trio.Event()
        # While instances wait for a slot, one whose lanes all rest gives its own up at once:
        # with few slots (``max_running=1``), a parent resting a second for each wave of its
        # map's children, which wait for its slot, took seconds for what takes milliseconds.
        # (One that starts waiting meanwhile disturbs the rest: see ``watch_slots``.)
        children = run.children
        pressed = children is not None and children.slots_wanted()
        at_rest = 0.0 if pressed else run.park_after + REST_PER_LANE * len(run.state.lanes)
        grace = at_rest if until is None else min(at_rest, until - run.clock())
        watched = None if children is None or pressed else children
        if watched is not None:
            watched.watch_slots(settling)
        try:
            with trio.move_on_after(max(grace, 0.0)):
                await settling.wait()
        finally:
            run.settling = None
            if watched is not None:
                watched.unwatch_slots(settling)
        if settling.is_set():
            # Something moved (a lane woke or started, a signal came): look again. They may all
            # rest again already, and a lane that went back to rest meanwhile found this one
            # settling, and left it to it.
            continue
        if grace < at_rest or not _may_leave(run):
            return
        if run.stored_wake_at != wake_at(run.state, run.definition):
            await run.persist()
            if not _may_leave(run) or run.stored_wake_at != wake_at(run.state, run.definition):
                return
        await trio.lowlevel.checkpoint_if_cancelled()  # a cancel (the workflow timeout's) goes first
        _leave(run)


def _may_leave(run: Run) -> bool:
    """Whether the run may leave memory now: every lane that has an actor rests, storage is
    to know when to wake it (every lane with a step to run waits), no cancel is under way, and
    no signal a lane waits for is here yet, which storage would never wake it for."""
    state = run.state
    if run.resting != run.active or run.cancel_requested or wake_at(state, run.definition) is None:
        return False
    if not state.signals:
        return True
    wanted = {lane.waiting.get("signal") for lane in state.lanes.values() if lane.waiting is not None}
    return not any(signal in wanted for _, signal, _ in state.signals)


def _woke(run: Run) -> None:
    """A resting lane wakes (or is cancelled): the run no longer rests as a whole."""
    run.resting -= 1
    if run.settling is not None:
        run.settling.set()


def _stop_if_parked(run: Run) -> None:
    """After a rest: a lane woken just as the instance decided to leave memory stops here,
    before it changes what storage holds (a sibling may be cancelled later, in an outer
    nursery)."""
    if run.parked:
        raise Parked()


async def take(run: Run, name: str, by: float | None = None) -> tuple[int, Any] | None:
    """The oldest signal named ``name`` delivered to the run (that came by ``by``, a
    deadline), looking in storage once per run for those sent before it ran here (first: they
    are older than any delivered to the run since, and signals are taken in the order they were
    stored); later ones are delivered to it as they are sent."""
    if not run.signals_fetched:
        await run.fetch_signals()  # (shared by the lanes that ask while it reads)
    return run.take_signal(name, by=by)


async def _store_wake(run: Run) -> None:
    """Before leaving memory: checkpoint, unless storage holds the time to wake the instance at
    already. A run taken up from storage does not know what its row holds (another release may
    have stored it, its workflow timeout another): it checkpoints, or the waker would wake it
    again and again at the time stored, past."""
    if run.stored_wake_at != wake_at(run.state, run.definition):  # (NaN: not known)
        await run.persist()


async def _park(run: Run) -> NoReturn:
    """Leave memory: what the lane waits for is stored already (see ``Run.may_park``)."""
    await trio.lowlevel.checkpoint_if_cancelled()  # a cancel that woke it goes first
    _leave(run)


def _leave(run: Run) -> NoReturn:
    run.parked = True
    raise Parked()


async def announce(run: Run, step: Step, key: str, lane: Lane, *, rests: bool = False, shielded: bool = False) -> None:
    """Store what the lane ``key`` waits for, then tell listeners. ``rests``: a lane of several
    that rests once its wait is stored (see :func:`_rests`) counts as resting for this
    checkpoint: when every other lane rests already (or announces its rest in the same
    checkpoint: branches that start waiting together), it stores when to wake the instance,
    and the instance leaves memory after its rest with no write of its own. ``shielded``: the
    store, and the event after it, are shielded from a cancel (see ``Run.persist_shielded``)."""
    if rests:
        run.announcing += 1
    try:
        await (run.persist_shielded() if shielded else run.persist())
    finally:
        if rests:
            run.announcing -= 1
    if not run.bus.active:
        return
    if shielded:
        # A cancel that came during the shielded store waits for the lane's next checkpoint: a
        # sync callback of the event, run inline here, must not see it either (a scope made only
        # when someone listens: the store's own wait needs none, see Flag.wait_shielded).
        with trio.CancelScope(shield=True):
            _publish_waiting(run, step, key, lane)
    else:
        _publish_waiting(run, step, key, lane)


def _publish_waiting(run: Run, step: Step, key: str, lane: Lane) -> None:
    run.emit("workflow.step.waiting", key, step_name=step.name,
             execution_id=running_execution_id(run.state, key, step.name), waiting=waiting_view(lane.waiting or {}))


def _rests(run: Run, due: float | None) -> bool:
    """Whether a lane of several that starts to wait until ``due`` (``None``: no end) will rest
    once its wait is stored, as long as nothing changes meanwhile."""
    return len(run.state.lanes) > 1 and run.may_park(math.inf if due is None else due - run.clock())


def _due(run: Run, step: WaitStep, ctx: WorkflowContext) -> float:
    """The timer's due time in Unix seconds on the engine's clock."""
    if step.seconds is not None:
        value = seconds(plain_result(step.seconds, ctx) if callable(step.seconds) else step.seconds)
        _check_number(step, "seconds", value, "a finite number of seconds >= 0 or a timedelta")
        return float(run.clock() + value)
    assert step.until is not None
    value = plain_result(step.until, ctx) if callable(step.until) else step.until
    if isinstance(value, datetime):
        moment = unix_seconds(value)
        if moment is None:
            raise InvalidArgumentError(f"step {step.name!r}: until gave a naive datetime; give an aware one")
        value = moment
    _check_number(step, "until", value, "Unix seconds (a finite number >= 0) or an aware datetime")
    return float(value)


def _check_number(step: WaitStep, field: str, value: object, allowed: str) -> None:
    if not in_range(value):
        raise InvalidArgumentError(f"step {step.name!r}: {field} must give {allowed}, got {value!r}")
