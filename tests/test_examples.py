"""Every example runs as a program and prints what the seeds say happens; checkout_catch's
outcome is also checked value by value, and under a crash at every checkpoint."""

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
from trioflow.testing import explore_crashes, open_test_engine

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
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
