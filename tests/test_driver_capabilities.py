"""The engine asks whether a driver keeps a run ledger (and forgets its records) with its own
checks, not typing's protocol isinstance (too slow for every resumed run): a driver has a
capability when it has its methods, not None, as found by attribute lookup (a wrapper that hands
calls on with ``__getattr__`` has what it wraps), which is what ``isinstance`` said on 3.11."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from trioflow.adapters import ForgetsRuns, MemoryDriver, RunLedger, SQLiteDriver
from trioflow.adapters._driver import forgets_runs, is_run_ledger


class Plain:
    async def create(self, entity: str, data: Any) -> Any: ...


class LedgerOnly:
    async def record_run(self, key: str, payload: bytes) -> None: ...

    async def find_run(self, key: str) -> bytes | None: ...


class HalfLedger:
    async def record_run(self, key: str, payload: bytes) -> None: ...


class Forgetting(LedgerOnly):
    async def forget_runs(self, keys: Any) -> None: ...


class ForgettingSwitchedOff(Forgetting):
    forget_runs = None  # type: ignore[assignment]  # (a subclass that turns the capability off)


class Wrapper:
    """A user's driver that hands every call to another (``__getattr__``): it has what the
    wrapped one has, so two wrappers of one class may differ."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _given_methods() -> object:
    driver = Plain()
    driver.record_run = LedgerOnly().record_run  # type: ignore[attr-defined]
    driver.find_run = LedgerOnly().find_run  # type: ignore[attr-defined]
    return driver


#: Each driver shape with whether it keeps a run ledger and whether it forgets its records.
DRIVERS: list[tuple[Any, bool, bool]] = [
    (None, False, False), (object(), False, False), ("driver", False, False), (Plain(), False, False),
    (LedgerOnly(), True, False), (HalfLedger(), False, False), (Forgetting(), True, True),
    (ForgettingSwitchedOff(), True, False), (Wrapper(Plain()), False, False), (Wrapper(Forgetting()), True, True),
    (Wrapper(HalfLedger()), False, False), (_given_methods(), True, False), (LedgerOnly, True, False),
]


@pytest.mark.parametrize(("driver", "ledger", "forgets"), DRIVERS,
                         ids=lambda d: type(d).__name__ if not isinstance(d, (type, bool)) else str(d))
def test_a_driver_has_a_capability_when_it_has_its_methods(driver: object, ledger: bool, forgets: bool) -> None:
    assert is_run_ledger(driver) is ledger
    assert forgets_runs(driver) is forgets


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12's isinstance() of a protocol skips __getattr__")
@pytest.mark.parametrize("driver", [d for d, _, _ in DRIVERS], ids=lambda d: type(d).__name__)
def test_the_checks_say_what_isinstance_said(driver: object) -> None:
    assert is_run_ledger(driver) is isinstance(driver, RunLedger)
    assert forgets_runs(driver) is isinstance(driver, ForgetsRuns)


def test_the_shipped_drivers_keep_a_ledger_and_forget_it(tmp_path: Path) -> None:
    for driver in (MemoryDriver(), SQLiteDriver(tmp_path / "d.db")):
        assert is_run_ledger(driver) and forgets_runs(driver)
