"""The keys of the records an instance's runs leave in its driver's run ledger (see
:class:`~trioflow.adapters._driver.RunLedger`), in one place: what an entity step's execution
and its compensation record, and which of them an instance that has ended leaves behind."""

from __future__ import annotations

from ._definition import TaskStep, WorkflowDefinition
from ._snapshot import InstanceState


def entity_key(state: InstanceState, execution: str, undo: bool) -> str:
    """The record of an entity step's execution (``undo``: of its compensation). The creation
    time tells this instance from an earlier one with its id (deleted, then started again),
    whose records must not be taken for its own."""
    return f"trioflow.entity/{state.instance_id}/{state.created_at!r}/{execution}{'/undo' if undo else ''}"


def ended_run_keys(state: InstanceState, definition: WorkflowDefinition) -> list[str]:
    """Every record an instance that has ended may have left: one per execution of its entity
    steps and per compensation of one (whether or not it ran: deleting a record that is not
    there changes nothing), and of steps ``definition`` no longer has as plain steps (an
    instance that ended for a definition changed since it ran them). A transactional run's record, under the instance's id alone, is
    not among them: another instance with that id may own it (see ``_transaction``)."""
    executions = dict.fromkeys(r.id for r in state.records if _is_entity_step(definition, r.step_name))
    return [entity_key(state, execution, undo) for execution in executions for undo in (False, True)]


def _is_entity_step(definition: WorkflowDefinition, name: str) -> bool:
    found = definition.lookup.get(name)
    return found is None or isinstance(found[0], TaskStep) and found[0].entity is not None
