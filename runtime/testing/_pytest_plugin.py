"""pytest plugin (entry point ``pytest11``): the ``trioflow_engine`` fixture, and
``trioflow_engine_options``, the options it opens the engine with (override it to give it
services, a driver, ``max_running``...).

A test that uses the fixture runs on an autojump ``MockClock`` without asking for a clock itself:
the plugin marks it ``trio(run=...)`` with a runner that supplies one (needs pytest-trio).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from trioflow._engine import Engine
from trioflow._errors import InvalidArgumentError

from ._engine import open_test_engine, refuse_unknown_options

FIXTURE = "trioflow_engine"


def _run_on_mock_clock(
    fn: Callable[..., Any], *args: Any, clock: trio.abc.Clock | None = None,
    instruments: Sequence[trio.abc.Instrument] = (),
) -> Any:
    if clock is None:
        clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(fn, *args, clock=clock, instruments=instruments)


#: What a test using the fixture needs and this installation may lack.
MISSING_PYTEST_TRIO = (
    "the trioflow_engine fixture needs pytest-trio; install trioflow's testing extra:"
    " pip install 'trioflow[testing]'"
)


def _has_pytest_trio(config: pytest.Config) -> bool:
    """Whether pytest-trio is loaded: by its entry point (named ``trio``), or by its module's
    name (``-p pytest_trio.plugin``, ``pytest_plugins = ["pytest_trio.plugin"]``)."""
    manager = config.pluginmanager
    return manager.hasplugin("trio") or manager.hasplugin("pytest_trio.plugin")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _has_pytest_trio(config):
        # Its marker is pytest-trio's: unknown without it (an error of the whole session under
        # --strict-markers). The set-up hook below fails each test that asks for the fixture.
        return
    for item in items:
        if FIXTURE in getattr(item, "fixturenames", ()):
            # Prepended: pytest-trio uses the first trio marker with a runner, and its trio_mode
            # marks every async test with the plain one.
            item.add_marker(pytest.mark.trio(run=_run_on_mock_clock), append=False)


# (Not tryfirst: a test marked skip or xfail(run=False) is skipped before this looks at it.
# Plugins' set-up hooks run before pytest's own, which sets the fixtures up.)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if FIXTURE not in getattr(item, "fixturenames", ()):
        return
    if not _has_pytest_trio(item.config):
        # Without pytest-trio nothing runs the async fixture: say what to install.
        pytest.fail(MISSING_PYTEST_TRIO, pytrace=False)
    test = getattr(item, "obj", None)
    if hasattr(test, "hypothesis"):
        # Hypothesis refuses a function-scoped fixture; told not to, its examples would share
        # one engine, which pytest-trio runs on trio's own clock (it ignores this plugin's
        # runner for hypothesis tests): NotOnMockClockError, naming this very fixture.
        pytest.fail(f"{item.name} uses the {FIXTURE} fixture under hypothesis's @given: the fixture"
                    " makes one engine per test, not per example; open one per example with"
                    " trioflow.testing.open_test_engine inside trioflow.testing.run()", pytrace=False)
    if test is not None and not inspect.iscoroutinefunction(test):
        # pytest-trio would say only that the test "is marked trio but is not async": the
        # marker is this plugin's, which the user never wrote.
        pytest.fail(f"{item.name} uses the {FIXTURE} fixture, which is async: define it with"
                    f" `async def` and await the engine's calls", pytrace=False)


@pytest.fixture
def trioflow_engine_options() -> dict[str, Any]:
    """The keyword arguments ``trioflow_engine`` passes to ``open_test_engine`` (none): override
    this fixture in a module or ``conftest.py`` to give its engine services, a driver, an
    adapter or ``max_running``."""
    return {}


@pytest.fixture
def _trioflow_checked_options(trioflow_engine_options: dict[str, Any]) -> dict[str, Any]:
    """``trioflow_engine_options``, its keys checked at set-up: a misspelt one fails the test's
    set-up naming that fixture, rather than its run with an error group from the engine."""
    if not isinstance(trioflow_engine_options, Mapping):
        pytest.fail(f"the trioflow_engine_options fixture must return a dict of open_engine's options, got"
                    f" {trioflow_engine_options!r}", pytrace=False)
    try:
        refuse_unknown_options(dict(trioflow_engine_options), "the trioflow_engine_options fixture")
    except InvalidArgumentError as exc:
        pytest.fail(str(exc), pytrace=False)
    return trioflow_engine_options


@pytest.fixture
async def trioflow_engine(_trioflow_checked_options: dict[str, Any]) -> AsyncIterator[Engine]:
    """A time-skipping test engine (see ``trioflow.testing.open_test_engine``), opened with
    ``trioflow_engine_options``."""
    async with open_test_engine(**_trioflow_checked_options) as engine:
        yield engine
