"""From a review of trioflow.testing as a hypothesis user sees it (crash exploration,
strategies). The test failed until the commit that added this file."""

from __future__ import annotations

import itertools

import pytest

import trioflow as tf
from trioflow.testing import CrashDivergenceError, explore_crashes, run


def test_explore_crashes_reports_a_non_idempotent_step_that_writes_shared_data() -> None:
    """A user's ``charge`` step asks a payment service for a new charge id on every call (no
    idempotency key) and keeps it with ``ctx.set("charge_id", ...)`` for the later steps and the
    refund, returning nothing itself (``ctx.set`` is the documented way to share data between
    steps). They run ``explore_crashes`` expecting it to catch exactly this: docs/testing.md says a
    lost write makes the step run again, "and a step that is not idempotent shows as a
    divergent output", and "the explorer sees what trioflow stores" (the shared data is stored
    with the instance).

    Expected: a ``CrashDivergenceError`` at the crash point where ``charge``'s completion write
    is lost (the re-run stored ``ch-2`` where the fault-free run stored ``ch-1``).

    Was: the exploration passed: ``Outcome`` had no shared data in it and the check only
    compared what a step *returned* (``None`` both times) and the workflow output, so the
    instance ended with a second charge id in its stored data and nothing was reported."""
    service = {"minted": itertools.count(1)}  # the fake payment service, reset before each run

    def reset() -> None:
        service["minted"] = itertools.count(1)

    async def charge(ctx: tf.WorkflowContext) -> None:
        ctx.set("charge_id", f"ch-{next(service['minted'])}")  # a new charge on every call

    async def ship(ctx: tf.WorkflowContext) -> str:
        return "shipped"

    order = tf.workflow("order").step("charge", charge).step("ship", ship).build()

    async def main() -> None:
        await explore_crashes(order, {"order": 1}, before_run=reset)

    with pytest.raises(CrashDivergenceError, match="charge"):
        run(main)
