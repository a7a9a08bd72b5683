"""``execute_workflow`` looks up every job name its workflow uses before any step runs, as an
engine's ``start`` does: a misspelt name in a late step used to charge a card in the first step,
then refund it when the late step failed (the wave-1 spec audit of December 5th; SPEC §8: "a
job name nobody registered ... a clear error ... raised to the caller, with nothing
half-written"). The run fails at once with :class:`UnknownJobError` naming the missing jobs,
on its result, as the step's failure was reported before."""

from __future__ import annotations

from typing import Any

import trioflow as tf
from trioflow.testing import run


def _order(log: list[str], ship_job: str, refund_job: str = "refund") -> tuple[tf.WorkflowDefinition, dict[str, Any]]:
    def charge(data: Any) -> str:
        log.append("charged")
        return "ch-1"

    def refund(output: Any) -> None:
        log.append("refunded")

    wf = (tf.workflow("order").task("charge", job="charge", compensate=refund_job)
          .task("ship", job=ship_job).build())
    return wf, {"charge": charge, "refund": refund, "create-shipment": lambda data: "shipped"}


def test_a_misspelt_job_in_a_late_step_fails_the_run_before_any_step_runs() -> None:
    log: list[str] = []
    wf, jobs = _order(log, "create-shipmnet")
    result = run(lambda: tf.execute_workflow(None, wf, {}, jobs=jobs))
    assert not result.success
    assert isinstance(result.error, tf.UnknownJobError)
    assert "'create-shipmnet'" in str(result.error)
    assert log == [], "a step ran (and was compensated) though the workflow could never complete"
    assert result.compensated_steps == ()


def test_a_missing_compensation_job_is_found_before_anything_runs_too() -> None:
    log: list[str] = []
    wf, jobs = _order(log, "create-shipment", refund_job="refnud")
    result = run(lambda: tf.execute_workflow(None, wf, {}, jobs=jobs))
    assert isinstance(result.error, tf.UnknownJobError) and "'refnud'" in str(result.error)
    assert log == []


def test_every_missing_job_is_named_at_once() -> None:
    wf = tf.workflow("w").task("a", job="one").task("b", job="two").build()
    result = run(lambda: tf.execute_workflow(None, wf, {}, jobs={}))
    assert isinstance(result.error, tf.UnknownJobError)
    assert "'one'" in str(result.error) and "'two'" in str(result.error)


def test_with_every_job_given_the_run_goes_as_before() -> None:
    log: list[str] = []
    wf, jobs = _order(log, "create-shipment")
    result = run(lambda: tf.execute_workflow(None, wf, {}, jobs=jobs))
    assert result.success and result.output == "shipped"
    assert log == ["charged"]


def test_an_entity_step_given_columns_instead_of_a_function_is_refused_as_it_is_made() -> None:
    # (The same audit: a dict of fixed columns built, then failed at run time with a bare
    # TypeError that named no step.)
    import pytest

    with pytest.raises(tf.DefinitionError, match=r"entity step 'c': data_fn .* lambda ctx"):
        tf.create_entity_step("c", "order", {"a": 1})  # type: ignore[arg-type]
    with pytest.raises(tf.DefinitionError, match=r"entity step 'u': data_fn"):
        tf.update_entity_step("u", "order", lambda ctx: {"id": 1}, 5)  # type: ignore[arg-type]
    with pytest.raises(tf.DefinitionError, match=r"entity step 'd': where_fn"):
        tf.delete_entity_step("d", "order", "id = 1")  # type: ignore[arg-type]
