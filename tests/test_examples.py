"""Every example runs as a program and prints what the seeds say happens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "checkout_saga.py": [
        "checkout ord-1 with card-ok: success=True",
        "checkout ord-2 with card-declined: success=False",
        "failed at 'charge-payment': card declined",
        "compensated, newest first: ['reserve-inventory']",
        "reservations left: {'res-1': ['book', 'pen']}",
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
