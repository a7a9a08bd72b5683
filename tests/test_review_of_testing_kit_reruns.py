"""From a review of the testing kit (trioflow.testing) used as documented by a user who
property-tests their own workflows: two false passes of ``explore_crashes``. Each test failed
until the commit that added this file (an attempt run again that raises where it returned is
reported; a job's result msgpack refuses is compared by the output its ``output=`` mapper makes)."""

from __future__ import annotations

import trioflow as tf
from trioflow.testing import explore_crashes


class AlreadyMailed(Exception):
    """What a mail service answers to a repeated request."""


async def test_explorer_reports_a_rerun_that_raises_where_the_first_run_returned(autojump_clock) -> None:
    """A user explores a workflow whose last step mails a receipt; the mail service refuses a
    repeated request (AlreadyMailed), which the step catches and routes to a pass step. The
    workflow also has an (unrelated) parallel step earlier on. docs/testing.md promises, for any
    workflow: "an attempt that runs again after the resume (the one in flight at the crash)
    returns what it returned the first time", and "a step that is not idempotent shows as a
    divergent output". Here the mail step's attempt, run again after its completion write was
    lost, raises where it first returned "mailed": the step is not idempotent and the resumed
    run took another path. Expected: that lost-write point is divergent.

    Was: no point is divergent (report.divergent == ()); only the return value of a re-run
    attempt is compared, never an exception it raises, and the path is compared only for
    workflows without parallel/map steps. (Without the parallel step the same run is caught,
    through the path comparison.)"""
    mailed: list[str] = []

    async def mail(ctx: tf.WorkflowContext) -> str:
        if mailed:
            raise AlreadyMailed("receipt already mailed")
        mailed.append("receipt")
        return "mailed"

    async def prepare(ctx: tf.WorkflowContext) -> str:
        return "ready"

    receipt = (tf.workflow("receipt")
               .parallel("prepare", branches=[tf.branch("a").step("pa", prepare).build(),
                                              tf.branch("b").step("pb", prepare).build()])
               .step("mail", mail, catch=[tf.Catch(errors=[AlreadyMailed], next="done")])
               .pass_("done", result="ok", end=True)
               .build())
    report = await explore_crashes(receipt, None, check=False, before_run=mailed.clear)
    assert report.baseline.status == "completed"
    rerun = [p for p in report.points if p.lost and "step 'mail' completed" in p.after.split("), after")[0]]
    assert rerun, [p.after for p in report.points]
    assert all(p.divergence is not None for p in rerun), [(p.after, p.outcome.history[-2:]) for p in rerun]


async def test_explorer_reports_a_non_idempotent_job_whose_result_an_output_mapper_converts(autojump_clock) -> None:
    """A user's charge job calls a payment SDK that answers with an object (here a dataclass,
    as stripe.Charge is an object), and the task's `output=` mapper keeps its id. The charge is
    not idempotent: called again it makes a new charge. docs/testing.md: "an attempt that runs
    again after the resume ... returns what it returned the first time, even if that never
    reaches the output (a charge that makes a new charge id when called again is reported: give
    the call an idempotency key)". Expected: the point where the charge's completion write is
    lost (the charge runs again, charging the customer twice) is divergent, as it is when the
    job returns a plain dict.

    Was: no point is divergent. _returned() (runtime/testing/_crashes.py) compares a re-run's
    result only when encode_payload() can encode it, and gives anything else "the benefit of the
    doubt", although the step's stored output (the mapped id) differs: 'ch-1' then 'ch-2'."""
    import dataclasses

    @dataclasses.dataclass
    class Charge:  # what a payment SDK returns
        id: str
        amount: int

    charges: list[Charge] = []

    async def charge(data: dict[str, int]) -> Charge:
        made = Charge(id=f"ch-{len(charges) + 1}", amount=data["amount"])
        charges.append(made)
        return made

    async def ship(ctx: tf.WorkflowContext) -> str:
        return "shipped"

    checkout = (tf.workflow("checkout")
                .task("charge", job=charge, output=lambda result, ctx: result.id)
                .step("ship", ship)
                .build())
    report = await explore_crashes(checkout, {"amount": 5}, check=False, before_run=charges.clear)
    assert report.baseline.status == "completed" and report.baseline.output == "shipped"
    rerun = [p for p in report.points if p.lost and p.after.startswith("write lost (step 'charge' completed")]
    assert rerun, [p.after for p in report.points]
    assert all(p.divergence is not None for p in rerun), [
        (p.after, [r.output for r in p.outcome.history if r.step_name == "charge"]) for p in rerun]
