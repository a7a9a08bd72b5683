"""``explore_crashes(before_run=, after_run=)``: reset and check what a workflow's steps change
outside trioflow, which the explorer cannot see: here a fake mail service that must send one
receipt per order, crash or not."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import CrashDivergenceError, Outcome, explore_crashes


class Mailer:
    """A mail service without idempotency keys: a send run again sends a second mail."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.resets = 0
        self.checked: list[Outcome] = []

    def reset(self) -> None:
        self.sent.clear()
        self.resets += 1

    async def send(self, ctx: Any) -> None:
        self.sent.append(ctx.input["to"])

    def one_receipt(self, outcome: Outcome) -> None:
        self.checked.append(outcome)
        assert self.sent == ["ann@example.com"], f"receipts sent: {self.sent}"


async def total(ctx: Any) -> int:
    return 42


def receipt_flow(mailer: Mailer) -> tf.WorkflowDefinition:
    return tf.workflow("receipt").step("total", total).step("mail", mailer.send).step("done", total).build()


async def test_after_run_reports_a_side_effect_run_twice_by_a_lost_write() -> None:
    mailer = Mailer()
    with pytest.raises(CrashDivergenceError) as caught:
        await explore_crashes(receipt_flow(mailer), {"to": "ann@example.com"},
                              before_run=mailer.reset, after_run=mailer.one_receipt)
    # The write that records the mail step is lost: the step runs again after the resume, and
    # the check sees the second mail (status and output alone look fine).
    report = caught.value.report
    twice = [p for p in report.divergent if p.divergence and p.divergence.startswith("after_run:")]
    assert twice and all(p.lost for p in twice)
    assert "receipts sent: ['ann@example.com', 'ann@example.com']" in twice[0].divergence
    assert "after_run: receipts sent" in str(caught.value)


async def test_each_run_is_reset_before_it_and_checked_after_it() -> None:
    mailer = Mailer()
    report = await explore_crashes(receipt_flow(mailer), {"to": "ann@example.com"}, lost_writes=False,
                                   before_run=mailer.reset, after_run=mailer.one_receipt)
    # After-write crashes only: no step runs twice, so each run sent one mail.
    assert not report.divergent
    runs = 1 + len(report.points)
    assert mailer.resets == runs
    assert mailer.checked == [report.baseline, *(p.outcome for p in report.points)]


async def test_without_reset_state_leaks_from_run_to_run() -> None:
    mailer = Mailer()
    # The same check without the reset: the second run already finds the first one's mail.
    report = await explore_crashes(receipt_flow(mailer), {"to": "ann@example.com"}, lost_writes=False,
                                   before_run=lambda: None, after_run=lambda outcome: None, check=False)
    assert not report.divergent
    assert len(mailer.sent) == 1 + len(report.points)


async def test_async_hooks_are_awaited() -> None:
    mailer = Mailer()
    events: list[str] = []

    async def reset() -> None:
        await trio.lowlevel.checkpoint()
        mailer.reset()
        events.append("before")

    async def check(outcome: Outcome) -> None:
        await trio.lowlevel.checkpoint()
        events.append(f"after {outcome.status}")
        mailer.one_receipt(outcome)

    report = await explore_crashes(receipt_flow(mailer), {"to": "ann@example.com"}, lost_writes=False,
                                   before_run=reset, after_run=check)
    assert events == ["before", "after completed"] * (1 + len(report.points))


async def test_a_check_the_fault_free_run_fails_is_raised_as_it_is() -> None:
    mailer = Mailer()

    def two_receipts(outcome: Outcome) -> None:
        assert len(mailer.sent) == 2, "expected a receipt and a copy"

    with pytest.raises(AssertionError, match="expected a receipt and a copy") as caught:
        await explore_crashes(receipt_flow(mailer), {"to": "ann@example.com"},
                              before_run=mailer.reset, after_run=two_receipts)
    assert not isinstance(caught.value, CrashDivergenceError)
    assert mailer.resets == 1  # nothing explored past the fault-free run


async def test_other_errors_from_a_hook_propagate() -> None:
    mailer = Mailer()

    def broken(outcome: Outcome) -> None:
        raise KeyError("no such mailbox")

    with pytest.raises(KeyError, match="no such mailbox"):
        await explore_crashes(receipt_flow(mailer), {"to": "ann@example.com"}, after_run=broken)


@pytest.mark.parametrize("name", ["before_run", "after_run"])
async def test_a_hook_that_is_not_callable_is_refused(name: str) -> None:
    mailer = Mailer()
    with pytest.raises(tf.InvalidArgumentError, match=f"{name} must be a function or None, got 'reset'"):
        await explore_crashes(receipt_flow(mailer), {"to": "ann@example.com"}, **{name: "reset"})
    assert mailer.sent == []  # refused before anything ran


async def test_a_child_waiting_for_a_signal_is_told_signals_reach_the_root_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The message said the signal was sent and that none was left to send: a newcomer could not
    # tell that signals= never reaches a child. (Since December 5th it is refused before any
    # run, naming the child's workflow: with a timeout on the child's receive, the run had
    # explored that timeout, and passed.)
    child = tf.workflow("approval").receive("wait", signal="go").build()
    parent = tf.workflow("order").child("approve", workflow="approval").build()
    with pytest.raises(tf.InvalidArgumentError, match=(
            "signal 'go' is taken only by workflow 'approval', a child \\(in also=\\), and signals= is"
            " sent to the explored instance only, not to its children")):
        await explore_crashes(parent, None, also=[child], signals=[("go", 1)])
