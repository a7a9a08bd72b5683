"""Third review of bad inputs: cases the two earlier rounds (test_review_of_bad_inputs.py,
test_review_of_bad_input_fixes.py) did not cover. Each test failed on f029359, fixed by the commit that added this file.

The project's rule: bad input gets a clear error from trioflow's own hierarchy
(``tf.TrioflowError`` subclasses) naming what was wrong, raised as it is given where possible,
with nothing half-written to storage; valid documented input keeps working.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings

import trioflow as tf
from trioflow.testing import open_test_engine
from trioflow.testing.strategies import workflows


# -- engine.events.on(..., buffer=...) -----------------------------------------------------------


@pytest.mark.parametrize("buffer", [-1, "10", None, 2.5])
async def test_on_with_an_async_callback_refuses_a_bad_buffer_with_invalid_argument_error(
        autojump_clock: trio.testing.MockClock, buffer: Any) -> None:
    """``events.subscribe(pattern, buffer=...)`` checks its ``buffer`` ("an int >= 1, or
    ``math.inf``", README) and raises ``InvalidArgumentError`` naming it; ``events.on(pattern,
    callback, *, buffer=...)`` takes the same keyword for an async callback's queue but never
    checks it: ``buffer=-1`` raises trio's bare ``ValueError("max_buffer_size must be >= 0")``,
    ``buffer="10"``/``None``/``2.5`` trio's ``TypeError``, none of them a ``tf.TrioflowError``
    and none naming ``on()``'s ``buffer``."""
    async def callback(event: dict[str, Any]) -> None:
        pass

    async with open_test_engine() as engine:
        with pytest.raises(tf.InvalidArgumentError, match="buffer"):
            engine.events.on("workflow.*", callback, buffer=buffer)


async def test_on_with_an_async_callback_refuses_a_buffer_of_zero_as_subscribe_does(
        autojump_clock: trio.testing.MockClock) -> None:
    """``subscribe`` refuses ``buffer=0`` because "0 would drop every event the reader is not
    parked for at the moment it is sent" (runtime/_events.py); ``on(pattern, async_callback,
    buffer=0)`` accepts it silently, so an async callback that awaits anything loses the events
    published meanwhile (logged as "too slow"), a misconfiguration that should be refused as it
    is given."""
    async def callback(event: dict[str, Any]) -> None:
        await trio.sleep(1)

    async with open_test_engine() as engine:
        with pytest.raises(tf.InvalidArgumentError, match="buffer"):
            engine.events.on("workflow.*", callback, buffer=0)


# -- tf.adapters.SQLiteDriver: values SQLite cannot bind ---------------------------------------


def _table(tmp_path: Path) -> str:
    path = str(tmp_path / "data.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a)")
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize("value", [1 << 70, "x\udc80"], ids=["int-past-64-bits", "lone-surrogate"])
@pytest.mark.parametrize("method", ["create", "find_many"])
async def test_sqlite_driver_value_it_cannot_bind_is_a_driver_error(tmp_path: Path, value: Any, method: str) -> None:
    """``SQLiteDriver`` "binds every value as a parameter" (README), and a value it cannot bind
    is a ``DriverError`` ("A data driver could not do what was asked (the message says what and
    where)") for an ``object()`` or a ``dict`` ("create in 't' failed: Error binding
    parameter 1: ..."). An ``int`` past 64 bits, or text with a lone surrogate, instead escape
    as Python's bare ``OverflowError("Python int too large to convert to SQLite INTEGER")`` /
    ``UnicodeEncodeError``: ``_run`` only wraps ``sqlite3.Error``, and these are not. An entity
    step's ``catch=[tf.Catch(errors=[tf.adapters.DriverError], ...)]`` never matches them.
    (``MemoryDriver`` takes both values.)"""
    driver = tf.adapters.SQLiteDriver(_table(tmp_path))
    try:
        with pytest.raises(tf.adapters.DriverError):
            if method == "create":
                await driver.create("t", {"a": value})
            else:
                await driver.find_many("t", {"a": value})
    finally:
        await driver.aclose()
    conn = sqlite3.connect(str(tmp_path / "data.db"))
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    conn.close()


# -- trioflow.testing.strategies.workflows(...) arguments ---------------------------------------


@pytest.mark.parametrize("options", [{"max_steps": 0}, {"max_steps": -1}, {"maps": True, "max_items": -1},
                                     {"timing": "no"}])
def test_workflows_strategy_refuses_bad_arguments_with_invalid_argument_error(options: dict[str, Any]) -> None:
    """``workflows()`` checks some of its arguments with trioflow's ``InvalidArgumentError``
    ("workflows(nested=True) generates fan-outs in map items: pass maps=True too"), and the
    project's switches take "True or False, nothing merely truthy (``"no"`` from a
    configuration file is)". But ``workflows(max_steps=0)`` (or ``-1``, or ``max_items=-1``)
    fails only when drawn, with hypothesis's own ``InvalidArgument("Cannot have max_value=0 <
    min_value=1")``, naming neither ``workflows()`` nor ``max_steps``; and
    ``workflows(timing="no")`` is taken as ``timing=True`` and draws timed workflows."""
    drawn: list[Any] = []

    def draw_some() -> None:
        @settings(max_examples=3, database=None, deadline=None, suppress_health_check=list(HealthCheck))
        @given(workflows(**options))
        def draw(generated: Any) -> None:
            drawn.append(generated)

        draw()

    with pytest.raises(tf.InvalidArgumentError):
        draw_some()
