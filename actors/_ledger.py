"""An instance's records in its driver's run ledger (see
:class:`~trioflow.adapters._driver.RunLedger`): the end state a transactional run recorded,
read for a resume, and every record of an instance deleted once it has ended."""

from __future__ import annotations

import logging

from trioflow._codec import decode_whole
from trioflow._definition import WorkflowDefinition
from trioflow._errors import describe_error
from trioflow._ledger_keys import ended_run_keys
from trioflow._snapshot import InstanceState
from trioflow.adapters._driver import ForgetsRuns, RunLedger, is_run_ledger

log = logging.getLogger("trioflow")


async def recorded_end(ledger: RunLedger, state: InstanceState) -> InstanceState | None:
    """The state this instance's transactional run recorded as it committed, if it did. (It is
    recorded under the instance's id alone: another instance that had the id, an engine on
    other storage with the same database, may have left one, which is not this one's.)"""
    payload = await ledger.find_run(state.instance_id)
    if payload is None:
        return None
    recorded = decode_whole(payload)
    identity = (state.instance_id, state.workflow_name, state.created_at)
    if (recorded.instance_id, recorded.workflow_name, recorded.created_at) != identity:
        log.warning("ignoring the ledger record of an earlier instance %r in the driver", state.instance_id)
        return None
    return recorded


async def forget_ended_runs(driver: ForgetsRuns, state: InstanceState, definition: WorkflowDefinition) -> None:
    """Delete what an instance that has ended recorded in the ledger: nothing runs it again
    (a parent that compensates it as a unit records its compensations anew, and they go as that
    ends). Beside its run; a failure is logged and leaves them, which no run reads."""
    keys = ended_run_keys(state, definition)
    transaction = getattr(driver, "transaction", None)  # (all a transactional run needs of a driver)
    try:
        ledger: object = driver  # (a driver that forgets runs may keep its own records too)
        if definition.transactional and is_run_ledger(ledger) and callable(transaction):
            # Its record is under its id alone: looked at and deleted in one transaction, so
            # that another instance with the id cannot record in between (and lose its record).
            async with transaction():
                if await recorded_end(ledger, state):
                    keys.append(state.instance_id)
                if keys:
                    await driver.forget_runs(keys)
        elif keys:
            await driver.forget_runs(keys)
    except Exception as exc:  # (the driver's database down, a damaged record: they stay)
        log.warning("the run ledger records of instance %s could not be deleted (%s); they stay in the driver",
                    state.instance_id, describe_error(exc),
                    extra={"instance_id": state.instance_id, "workflow_name": state.workflow_name})
