"""The engine asks whether a driver keeps a run ledger (and forgets its records) with its own
checks, not typing's protocol isinstance (too slow for every resumed run): they must say what
``isinstance`` says, for the shipped drivers and for the shapes users' drivers take."""

from __future__ import annotations

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


DRIVERS: list[Any] = [
    None, object(), "driver", Plain(), LedgerOnly(), HalfLedger(), Forgetting(), ForgettingSwitchedOff(),
    Wrapper(Plain()), Wrapper(Forgetting()), Wrapper(HalfLedger()), _given_methods(), LedgerOnly,
]


@pytest.mark.parametrize("driver", DRIVERS, ids=lambda d: type(d).__name__ if not isinstance(d, type) else "a class")
def test_the_checks_say_what_isinstance_says(driver: object) -> None:
    assert is_run_ledger(driver) is isinstance(driver, RunLedger)
    assert forgets_runs(driver) is isinstance(driver, ForgetsRuns)


def test_the_shipped_drivers_keep_a_ledger_and_forget_it(tmp_path: Path) -> None:
    for driver in (MemoryDriver(), SQLiteDriver(tmp_path / "d.db")):
        assert is_run_ledger(driver) and forgets_runs(driver)
