"""Every example runs as a program and prints what the seeds say happens; checkout_catch's and
approval's outcomes are also checked value by value, and under a crash at every checkpoint."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import explore_crashes, open_test_engine, virtual_wall_clock

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "approval.py": [
        "after submitting (day 0.0):",
        "  exp-1: running, waiting {'timer': 'day 1.0'}",
        "  exp-2: running, waiting {'signal': 'approved', 'timeout': 'day 4.0'}",
        "exp-1 approved by kim on day 2.0: completed, output {'report_id': 'exp-1', 'paid_to': 'ada', 'amount': 420,"
        " 'approved_by': 'kim'}",
        "engine stopped on day 2.0; exp-2 stays stored, waiting",
        "a new engine on the same file (day 3.0):",
        "  exp-2: running, waiting {'signal': 'director-approved', 'timeout': None}",
        "exp-2 approved by lee on day 5.0: completed, output {'report_id': 'exp-2', 'paid_to': 'ada', 'amount': 1250,"
        " 'approved_by': 'lee'}",
        "  manager-approval: caught, SignalTimeoutError: step 'manager-approval': no signal 'approved' arrived"
        " within 259200 s",
        "  steps run: ['submit', 'remind-later', 'remind-manager', 'manager-approval', 'escalate',"
        " 'director-approval', 'pay', 'paid']",
        "day 4.0 workflow.step.waiting: exp-2 director-approval {'signal': 'director-approved', 'timeout': None}",
        "day 5.0 workflow.signal.received: exp-2 director-approval {'signal': 'director-approved', 'payload':"
        " {'by': 'lee'}}",
        "paid: {'exp-1': 420, 'exp-2': 1250}",
        "  to lee: exp-2 was not approved in time, please decide",
    ],
    "batch_invoices.py": [
        "batch 1: completed",
        "  {'error': 'CardDeclined', 'cause': 'card 4000-0000-0000-0002 declined'}",
        "  {'invoice': 'A-3', 'paid': 100}",
        "  A-1: failed, compensated ['reserve']",
        "batch 2: failed: map step 'invoices': 1 of 3 items failed, 0 tolerated: item 2 failed with CardDeclined:"
        " card 4000-0000-0000-0002 declined",
        "  compensated, newest first: ['bill', 'bill']",
        "  B-0: compensated, compensated ['charge', 'reserve']",
        "  B-1: compensated, compensated ['charge', 'reserve']",
        "  undone, in order: ['release A-1', 'release B-2', 'refund B-0', 'release B-0', 'refund B-1', 'release B-1']",
        "still reserved: {'A-0': 'item-0', 'A-2': 'item-2', 'A-3': 'item-3'}",
        "still charged: {'A-0': 400, 'A-2': 200, 'A-3': 100}",
    ],
    "checkout_saga.py": [
        "checkout ord-1 with card-ok: success=True",
        "checkout ord-2 with card-declined: success=False",
        "failed at 'charge-payment': card declined",
        "compensated, newest first: ['reserve-inventory']",
        "reservations left: {'res-1': ['book', 'pen']}",
    ],
    "checkout_catch.py": [
        "ord-1 with card 4242-4242-4242-4242: completed",
        "ord-2 with card 4000-0000-0000-0002: failed",
        "error_name='OrderCancelled' cause='order ord-2: card 4000-0000-0000-0002 declined: insufficient funds'",
        "charge-card: caught, output {'error': 'CardDeclined', 'cause': 'card 4000-0000-0000-0002 declined:",
        "steps run: ['reserve-stock', 'charge-card', 'notify-customer', 'order-cancelled']",
        "compensated, newest first: ['reserve-stock']",
        "event workflow.step.caught: charge-card CardDeclined -> notify-customer",
        "stock reserved: {'ord-1': ['book', 'pen']}",
        "outbox:         ['ada@example.com: your payment failed (card 4000-0000-0000-0002 declined",
    ],
    "order_state_machine.py": [
        "ORD-123: completed; ran ['validate', 'check-inventory',",
        "ORD-124: completed; ran ['validate', 'check-inventory', 'backorder', 'complete']",
        "100% (next: None)",
    ],
    "ecommerce_sqlite.py": [
        "success=True rolled_back=False",
        "    order     [(1, 1, 2, 5000, 'paid', 'ch_1')]",
        "success=False rolled_back=True failed_step='charge-payment' error=card 4000-0000-0000-0002 declined",
        "charges: {'ch_1': 5000}",
    ],
    "subscription.py": [
        "month 8: run 7, waiting ['signal', 'timeout'], 1 record(s) stored",
        "a year later: 1 record(s) stored",
        "sub-ada: completed, output {'months': 20, 'reason': 'moved abroad'}, after 19 renewals",
        "  its last run: ['bill#1', 'cancelled#1', 'ended#1']",
        "invoices: 20, months 1 to 20; billed as 'bill#1', '#1/bill#1', ..., '#19/bill#1'",
    ],
    "onboarding.py": [
        "Ada (enterprise): completed -> {'user_id': 'user-ada', 'plan': 'enterprise', 'setup_complete': True}",
        "skipped: ['standard-setup']; send-welcome-email attempts: 2",
        "Bob (free): completed",
        "workflow.step.retry",
    ],
}


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_and_reports(name: str) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for line in EXPECTED[name]:
        assert line in done.stdout, f"{line!r} not in output of {name}:\n{done.stdout}"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name.removesuffix('.py')}", EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_checkout_catch_routes_a_declined_card(autojump_clock: trio.testing.MockClock) -> None:
    example = _load("checkout_catch.py")
    services = {"warehouse": example.Warehouse(), "cards": example.Cards(), "outbox": []}
    caught: list[dict[str, Any]] = []
    async with open_test_engine(services=services) as engine:
        engine.events.on("workflow.step.caught", caught.append)
        engine.register(example.checkout)
        order = {"items": ["book"], "total": 100, "email": "ada@example.com"}
        ok = await engine.wait(await engine.start(
            "checkout-catch", {**order, "order_id": "ord-1", "card": "4242-4242-4242-4242"}))
        bad = await engine.wait(await engine.start(
            "checkout-catch", {**order, "order_id": "ord-2", "card": "4000-0000-0000-0002"}))

    assert ok.status == "completed" and ok.error_name is None and ok.cause is None
    assert ok.output == {"order_id": "ord-1", "tracking": "trk-ord-1"}  # the succeed step passes ship's output on
    assert ok.compensated_steps == ()

    declined = {"error": "CardDeclined", "cause": "card 4000-0000-0000-0002 declined: insufficient funds"}
    assert bad.status == "failed"
    assert bad.error_name == "OrderCancelled"
    assert bad.cause == "order ord-2: card 4000-0000-0000-0002 declined: insufficient funds"
    assert bad.error == f"OrderCancelled: {bad.cause}"
    assert bad.failed_step == "order-cancelled"
    assert [(r.step_name, r.status) for r in bad.history] == [
        ("reserve-stock", "compensated"), ("charge-card", "caught"), ("notify-customer", "completed"),
        ("order-cancelled", "failed")]
    charge = bad.step_results["charge-card"]
    assert (charge.error_name, charge.cause, charge.output, charge.attempts) == (
        "CardDeclined", declined["cause"], declined, 1)  # retry_on=[ConnectionError]: not retried
    fail = bad.step_results["order-cancelled"]
    assert (fail.error_name, fail.cause) == ("OrderCancelled", bad.cause)
    assert bad.compensated_steps == ("reserve-stock",)  # the caught charge compensates nothing

    assert services["warehouse"].reserved == {"ord-1": ["book"]}  # ord-2's reservation was released
    assert services["cards"].charges == {"ch-1": 100}
    assert services["outbox"] == [f"ada@example.com: your payment failed ({declined['cause']})"]
    assert [(e["step_name"], e["error"], e["cause"], e["next"]) for e in caught] == [
        ("charge-card", "CardDeclined", declined["cause"], "notify-customer")]
    assert isinstance(example.checkout, tf.WorkflowDefinition)


@pytest.mark.parametrize("card", ["4242-4242-4242-4242", "4000-0000-0000-0002"])
async def test_checkout_catch_survives_a_crash_at_every_checkpoint(
        autojump_clock: trio.testing.MockClock, card: str) -> None:
    example = _load("checkout_catch.py")
    services = {"warehouse": example.Warehouse(), "cards": example.Cards(), "outbox": []}
    order = {"order_id": "ord-9", "items": ["book"], "total": 100, "card": card, "email": "ada@example.com"}
    report = await explore_crashes(example.checkout, order, services=services)  # raises on a divergence
    assert report.baseline.status == ("completed" if card.endswith("4242") else "failed")
    assert all(point.outcome.status == report.baseline.status for point in report.points)


DAY = 86400.0
REPORT = {"employee": "ada", "manager": "kim", "director": "lee"}


async def _waiting(engine: tf.Engine, iid: str) -> dict[str, Any] | None:
    inst = await engine.get_instance(iid)
    assert inst is not None and inst.status == "running"
    return inst.waiting


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_approval_pays_in_time_or_escalates_after_three_days(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str) -> None:
    example = _load("approval.py")
    services = {"payments": example.Payments(), "outbox": []}
    events: list[dict[str, Any]] = []
    clock = virtual_wall_clock()
    adapter = MemoryAdapter() if storage == "memory" else SQLiteAdapter(tmp_path / "expenses.db")
    # On SQLite, virtual time runs at real speed while the writer thread commits: a little slack.
    slack = 0.0 if storage == "memory" else 5.0
    async with open_test_engine(adapter=adapter, services=services, clock=clock) as engine:
        engine.events.on("workflow.step.waiting", events.append)
        engine.events.on("workflow.signal.received", events.append)
        engine.register(example.expense_report)
        t0, epoch = trio.current_time(), clock()
        for report_id, amount in (("exp-1", 420), ("exp-2", 1250)):
            await engine.start("expense-report", {**REPORT, "report_id": report_id, "amount": amount},
                               instance_id=report_id)
        await trio.sleep(60)
        for iid in ("exp-1", "exp-2"):  # the reminder timer, stored with its due time
            waiting = await _waiting(engine, iid)
            assert waiting is not None and set(waiting) == {"timer"}
            assert waiting["timer"] == pytest.approx(epoch + DAY, abs=slack + 1)
        await trio.sleep(2 * DAY - 60)  # day 2: both reminded, both wait for their manager
        for iid in ("exp-1", "exp-2"):
            waiting = await _waiting(engine, iid)
            assert waiting is not None and waiting["signal"] == "approved"
            assert waiting["timeout"] == pytest.approx(epoch + 4 * DAY, abs=slack + 1)  # 3 days after the reminder
        await engine.signal("exp-1", "approved", {"by": "kim"})
        approved = await engine.wait("exp-1")
        assert trio.current_time() - t0 == pytest.approx(2 * DAY, abs=slack + 1)
        await trio.sleep(2 * DAY + 60)  # day 4 has passed: exp-2's receive timed out and was escalated
        assert await _waiting(engine, "exp-2") == {"signal": "director-approved", "timeout": None}
        await engine.signal("exp-2", "director-approved", {"by": "lee"})
        escalated = await engine.wait("exp-2")
        with pytest.raises(tf.InstanceNotLiveError):
            await engine.signal("exp-2", "approved", {"by": "kim"})  # too late: it has ended

    assert approved.status == "completed" and approved.waiting is None
    assert approved.output == {"report_id": "exp-1", "paid_to": "ada", "amount": 420, "approved_by": "kim"}
    assert [(r.step_name, r.status) for r in approved.history] == [
        ("submit", "completed"), ("remind-later", "completed"), ("remind-manager", "completed"),
        ("manager-approval", "completed"), ("pay", "completed"), ("paid", "completed")]
    assert approved.step_results["manager-approval"].output == {"by": "kim"}  # the payload is the output

    timeout = {"error": "SignalTimeoutError",
               "cause": "step 'manager-approval': no signal 'approved' arrived within 259200 s"}
    assert escalated.status == "completed" and escalated.waiting is None
    assert escalated.output == {"report_id": "exp-2", "paid_to": "ada", "amount": 1250, "approved_by": "lee"}
    assert [(r.step_name, r.status) for r in escalated.history] == [
        ("submit", "completed"), ("remind-later", "completed"), ("remind-manager", "completed"),
        ("manager-approval", "caught"), ("escalate", "completed"), ("director-approval", "completed"),
        ("pay", "completed"), ("paid", "completed")]
    caught = escalated.step_results["manager-approval"]
    assert (caught.error_name, caught.cause, caught.output) == (timeout["error"], timeout["cause"], timeout)
    assert escalated.step_results["escalate"].output == {"escalated_to": "lee", "because": timeout["cause"]}
    assert escalated.step_results["director-approval"].output == {"by": "lee"}
    assert escalated.compensated_steps == ()

    assert services["payments"].paid == {"exp-1": 420, "exp-2": 1250}
    assert sorted(services["outbox"]) == [  # the two reports run side by side: in either order
        "to kim: please approve exp-1 (420 EUR)", "to kim: please approve exp-2 (1250 EUR)",
        "to kim: reminder, exp-1 awaits your approval", "to kim: reminder, exp-2 awaits your approval",
        "to lee: exp-2 was not approved in time, please decide"]
    seen = [(e["event"], e["instance_id"], e["step_name"]) for e in events]
    assert sorted(seen) == sorted([
        ("workflow.step.waiting", "exp-1", "remind-later"), ("workflow.step.waiting", "exp-2", "remind-later"),
        ("workflow.step.waiting", "exp-1", "manager-approval"), ("workflow.step.waiting", "exp-2", "manager-approval"),
        ("workflow.signal.received", "exp-1", "manager-approval"),
        ("workflow.step.waiting", "exp-2", "director-approval"),
        ("workflow.signal.received", "exp-2", "director-approval")])
    received = [e for e in events if e["event"] == "workflow.signal.received"]
    assert [(e["signal"], e["payload"]) for e in received] == [
        ("approved", {"by": "kim"}), ("director-approved", {"by": "lee"})]


async def test_approval_keeps_an_approval_sent_before_the_reminder(autojump_clock: trio.testing.MockClock) -> None:
    example = _load("approval.py")
    services = {"payments": example.Payments(), "outbox": []}
    async with open_test_engine(services=services) as engine:
        engine.register(example.expense_report)
        t0 = trio.current_time()
        iid = await engine.start("expense-report", {**REPORT, "report_id": "exp-3", "amount": 80})
        await trio.sleep(3600)
        await engine.signal(iid, "approved", {"by": "kim"})  # kept until the receive step runs, on day 1
        done = await engine.wait(iid)
    assert trio.current_time() - t0 == pytest.approx(DAY)
    assert done.status == "completed" and done.output["approved_by"] == "kim"
    assert [r.step_name for r in done.history] == [
        "submit", "remind-later", "remind-manager", "manager-approval", "pay", "paid"]


@pytest.mark.parametrize("signal, approver", [("approved", "kim"), ("director-approved", "lee")])
async def test_approval_survives_a_crash_at_every_checkpoint(
        autojump_clock: trio.testing.MockClock, signal: str, approver: str) -> None:
    example = _load("approval.py")
    services = {"payments": example.Payments(), "outbox": []}
    report = {**REPORT, "report_id": "exp-9", "amount": 99}
    # Sent right after the start and kept: "approved" is taken on day 1; "director-approved" only
    # once the manager's receive has timed out on day 4 and the report was escalated.
    report_out = await explore_crashes(example.expense_report, report, services=services,
                                       signals=[(signal, {"by": approver})])  # raises on a divergence
    assert report_out.baseline.status == "completed"
    assert report_out.baseline.output == {"report_id": "exp-9", "paid_to": "ada", "amount": 99,
                                          "approved_by": approver}
    assert all(point.outcome.status == "completed" for point in report_out.points)
    assert ("escalate" in report_out.baseline.completion_order) == (signal == "director-approved")
