"""A transactional workflow's forward run: inside one ``driver.transaction()``.

The transaction is the unit of durability: step snapshots taken inside it are not written until
it commits, because a crash rolls the database back to before the transaction, and the stored
instance must not claim steps whose writes are gone. A resume then starts the run afresh.

The other window, a crash after the commit but before the terminal snapshot, is closed by the
driver's run ledger (:class:`~trioflow.adapters._driver.RunLedger`), when it has one: the state
the forward run ended in is recorded inside the transaction, so it commits atomically with the
run's writes. A resume that finds that record takes it as the outcome of the forward run instead
of running it (and writing its rows) again. Without a ledger, such a resume runs it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from trioflow._lanes import MAIN
from trioflow._snapshot import InstanceState, Status
from trioflow._codec import encode_record, encode_whole
from trioflow.adapters._driver import RunLedger, is_run_ledger

from ._ledger import recorded_end
from ._run import Run, StepFailure, log

#: How a forward run ended: the outcome, the error (``None``: completed) and the failed step.
Forward = tuple[Status, "BaseException | None", "str | None"]

#: What a recorded state brings back; how much of it is in storage stays this run's own knowledge.
_FIELDS = tuple(
    f.name for f in attrs.fields(InstanceState) if f.name not in ("stored", "inflight", "start_stored", "staged")
)


async def forward_in_transaction(run: Run, lane: Callable[[], Awaitable[Any]]) -> Forward:
    """``lane()`` (the main lane's run, raising :class:`StepFailure` when a step fails for good)
    inside one driver transaction: committed on success, rolled back otherwise. The wait for
    the transaction (the driver's lock) is the caller's to cancel; once it is open, neither its
    commit nor its rollback is cut short (a cancel that comes then is honoured after it). A
    transaction that cannot begin, or commit, fails the run with that error.

    With a ledger, a successful run records its final state in the transaction (see
    :func:`committed_before_a_crash`).
    """
    ledger = _ledger(run)
    try:
        block = run.driver.transaction()
        await block.__aenter__()
    except Exception as exc:  # it could not begin (a pool closed, the database locked past its busy timeout, ...)
        return "failed", exc, None
    run.deferred = True
    try:
        try:
            await lane()
            if ledger is not None:
                await ledger.record_run(run.state.instance_id, encode_whole(run.state))
        except BaseException as exc:
            run.state.rolled_back = True
            try:
                with trio.CancelScope(shield=True):
                    await block.__aexit__(type(exc), exc, exc.__traceback__)  # rolls back
            except Exception as failed:
                # The run's own failure stands (the database rolls back what it cannot keep),
                # and its other compensations still run.
                log.error("instance %s: the rollback of its transaction failed: %s", run.state.instance_id, failed,
                          extra={"instance_id": run.state.instance_id, "workflow_name": run.state.workflow_name})
            if isinstance(exc, StepFailure):
                return "failed", exc.error, exc.step_name
            if isinstance(exc, Exception):  # the ledger failed
                return "failed", exc, None
            raise exc
        try:
            with trio.CancelScope(shield=True):
                await block.__aexit__(None, None, None)  # commits
        except Exception as exc:  # the commit failed
            run.state.rolled_back = True
            return "failed", exc, None
        return "completed", None, None
    finally:
        run.deferred = False


async def committed_before_a_crash(run: Run) -> bool:
    """Whether a resumed run's forward part committed before its engine stopped (the driver's
    ledger holds the state it ended in): that state is then taken, and nothing runs again.
    Asked before the run's cancel scope opens, so that what committed is its outcome whatever
    its deadline says (a cancel that said yes meanwhile is honoured after it, compensating what
    committed; an engine that closes meanwhile still stops it, as stored).
    Outside any transaction: no other run of the instance can commit meanwhile."""
    ledger = _ledger(run)
    if ledger is None or not run.resumed or run.state.phase != "forward":
        return False
    main = run.state.lanes.get(MAIN)
    if main is not None and main.waiting is not None and "start" in main.waiting:
        return False  # a delayed start not begun (its end is stored before its transaction opens)
    return await _recover(run, ledger)


def may_have_committed(run: Run) -> bool:
    """Whether a resumed run on a release that is not transactional may yet have committed a
    transaction under the release it started on: it started, stored no record and waits for
    nothing, as a transactional run stands until its end is stored (a release replaced since
    takes it up as having run nothing: see :func:`~trioflow._decide.take_up`). Its driver's
    ledger, if it keeps one, is asked then too: what committed is its outcome."""
    state = run.state
    if not run.resumed or state.started_at is None or state.records:
        return False
    # The lane first: a run taken up from a wait (most, a signal's or a timer's) is told so
    # without a look at the driver.
    main = state.lanes.get(MAIN)
    return main is not None and main.waiting is None and _ledger(run) is not None


#: What a cancel decided, kept over the committed state taken up under it.
_DECISION = ("status", "phase", "outcome", "error", "error_name", "cause", "failed_step")


async def committed_under_a_cancel(run: Run) -> bool:
    """Whether a transactional run taken up going back from a cancel, its compensation not
    begun, had committed before that cancel was stored (its engine stopped after the commit,
    and the cancel was stored by an engine its workflow was not registered in, or by one that
    closed while the driver was asked): the committed state is then taken, the cancel's
    decision kept, so that what committed is compensated, entity steps too."""
    ledger = _ledger(run)
    state = run.state
    if ledger is None or not run.resumed or state.phase != "compensating" or state.outcome != "cancelled" \
            or state.compensated_from is not None or not run.definition.transactional:
        return False
    decision = {name: getattr(state, name) for name in _DECISION}
    if not await _recover(run, ledger):
        return False
    for name, value in decision.items():
        setattr(state, name, value)
    return True


def _ledger(run: Run) -> RunLedger | None:
    """The driver as a run ledger, if it is one and the run can be resumed at all.

    ``execute_workflow`` runs (no adapter) are never resumed, so a record would only take room
    in the user's database.
    """
    if run.adapter is None or not is_run_ledger(run.driver):
        return None
    return run.driver


async def _recover(run: Run, ledger: RunLedger) -> bool:
    """Take the recorded end state of a forward run that committed before a crash.

    Returns whether there was one. The state is copied into ``run.state`` field by field rather
    than replacing the object: the instance actor's callers hold on to that object.
    """
    state = run.state
    recorded = await recorded_end(ledger, state)
    if recorded is None:
        return False  # (none, or another instance's: this run's own commit will replace it)
    for name in _FIELDS:
        setattr(state, name, getattr(recorded, name))
    # What the run stored before the transaction stays stored; the rest is staged for the
    # terminal checkpoint (nothing is in flight: the run wrote nothing inside the transaction).
    state.staged = [encode_record(r) for r in state.records[state.stored:]]
    return True
