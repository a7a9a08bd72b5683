"""From a review ("rrlast") of d5fff30 (retention waits while idle), 17e2791 (a cancelled
instance that no longer fits ends cancelled) and a01d3ad (engine.wait()'s frameless argument
check): each test failed until the commit that added this file."""

from __future__ import annotations

import gc
import warnings
from datetime import timedelta
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine

DAY = 86_400.0


class CountingPurges(MemoryAdapter):
    """A real MemoryAdapter that counts the purges the engine asks of it."""

    def __init__(self) -> None:
        super().__init__()
        self.purges = 0

    async def purge(self, *args: Any, **kwargs: Any) -> int:
        self.purges += 1
        return await super().purge(*args, **kwargs)


async def test_an_idle_engine_with_a_retention_of_a_week_makes_no_purge_a_minute(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A user opens an engine on a fresh, empty MemoryAdapter with
    ``retain_finished=timedelta(days=7)`` and lets it sit idle for a day (a service waiting for
    work; or a test moving virtual time through days). README (Retention): "once a purge has
    taken everything finished, it waits for the next instance to finish (looking again at least
    once an hour), so an idle engine makes no purges": at most ~24 looks a day.
    Was: 1,440 purges in the day (one a minute), and so on for the first 7 days after every
    opening: the idle wait starts only once the engine's opening is ``keep`` old
    (runtime/_engine.py ``_retain``: ``_last_finish = self._clock()`` at the start)."""
    adapter = CountingPurges()
    async with open_test_engine(adapter=adapter, retain_finished=timedelta(days=7)):
        await trio.sleep(DAY)
    assert adapter.purges <= 30, f"{adapter.purges} purges in one idle day"


async def test_a_misspelt_wait_never_awaited_warns_about_wait_not_an_internal_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A user forgets the ``await`` on a call of ``engine.wait`` whose keyword is misspelt.
    Python warns "coroutine '...' was never awaited" naming the coroutine the call made, as it
    does for a well-spelt call ("coroutine 'Engine.wait' was never awaited"), and as it did
    before a01d3ad. Was: the warning names trioflow's internal ``_raising``
    (runtime/_engine_arguments.py), which the user never called and cannot find in their code."""
    async with open_test_engine() as engine:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine.wait(instnace_id="x")  # type: ignore[call-arg,unused-coroutine]
            gc.collect()
    messages = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert messages and all(m.startswith("coroutine 'Engine.wait'") for m in messages), messages
