"""From a re-review of 28a148d (a map item's failure at a fan-out inside it read back inward after
a restart, runtime/_fanout_failures.py) and 7161a98 (a cancel() decided in the instant of a
process stop stored as the stop leaves the run, actors/_instance.py). Each test failed on
28a148d (the wait-all cases of the first excepted: guards) and passes since the commit that added
this file (the inner map's tolerance worked out from its item count; the first failure of the
execution taken, not the newest; the stop goes on whatever storage answers). Real adapters, trio's autojumping MockClock, trioflow.testing.explore_crashes (every
crash point compared with the crash-free run on what a user sees: status, output, the failed
step and the error's name)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import explore_crashes, open_test_engine


async def _slow(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(1)
    return "ok"


async def _handled(ctx: tf.WorkflowContext) -> str:
    return "handled"


def _seen(outcome: Any) -> tuple[Any, ...]:
    return outcome.status, outcome.output, outcome.failed_step, outcome.error_name


def _orders_error(outcome: Any) -> str | None:
    return next((r.error for r in outcome.history if r.step_name == "orders" and r.status in ("failed", "caught")),
                None)


@pytest.mark.parametrize("on_error", ["fail-fast", "wait-all"])
@pytest.mark.parametrize("tolerated", [0.1, 0.5])
async def test_an_inner_map_tolerating_a_fraction_that_rounds_to_no_item_fails_as_its_item_did_after_a_restart(
        autojump_clock: trio.testing.MockClock, tolerated: float, on_error: str) -> None:
    """A user's map ``orders`` runs per item an inner map ``check`` (fail-fast) with
    ``tolerated_failures=0.1`` (or ``0.5``): over its one item that tolerates no failure
    (docs/fanout.md: a fraction tolerates the most failures f with f / count <= fraction, here
    0), so ``check``, "with fail-fast and nothing tolerated", fails as its item did, at the fail
    step ``refuse``. Fail-fast ``orders`` catches ``tf.FailStepError``: crash-free the catch
    takes it and the instance completes through ``handle``; a wait-all ``orders`` fails with a
    ``MapError`` whose ``ItemError`` names ``refuse``. They expect the same at every crash point.
    Was: resumed once the outer item's ``check`` failure is stored (its lanes gone),
    ``_first_failed_inside`` (runtime/_fanout_failures.py) gives up on any map whose
    ``tolerated_failures`` is non-zero (``elif step.tolerated_failures: return None``), where
    the live path asks ``tolerated(step, count) > 0``: the item's error is read back as the
    inner map's own, so the fail-fast catch misses and the instance fails at ``check``, and the
    wait-all ``MapError`` names step ``check`` rather than ``refuse``."""
    refuse = tf.branch("r").fail("refuse", error="OrderCancelled", cause="out of stock").build()
    item = tf.branch("item").map("check", items=lambda ctx: [1], branch=refuse, tolerated_failures=tolerated).build()
    if on_error == "fail-fast":
        wf = (tf.workflow("w")
              .map("orders", items=lambda ctx: [1], branch=item,
                   catch=[tf.Catch(errors=[tf.FailStepError], next="handle")])
              .succeed("done")
              .step("handle", _handled)
              .build())
    else:
        wf = tf.workflow("w").map("orders", items=lambda ctx: [1], branch=item, on_error=on_error).build()
    report = await explore_crashes(wf, {}, check=False)
    if on_error == "fail-fast":
        assert _seen(report.baseline) == ("completed", "handled", None, None)
    base = (_seen(report.baseline), _orders_error(report.baseline))
    assert [(p.after, _seen(p.outcome), _orders_error(p.outcome)) for p in report.points
            if (_seen(p.outcome), _orders_error(p.outcome)) != base] == []


_NAMED = re.compile(r"ItemError: map step 'orders', item 0, step '([^']+)': BranchError: branch '[^']+', step '([^']+)'")


async def test_two_branches_failing_alike_in_one_instant_name_the_same_step_after_a_restart(
        autojump_clock: trio.testing.MockClock) -> None:
    """A user's map ``orders`` runs per item a fail-fast parallel ``check`` whose branches a and b
    end at fail steps ``refuse-a`` and ``refuse-b``, both ``error="Refused", cause="no"`` (one
    rule checked two ways), beside a slow branch. Both fail in the same instant; live, the
    parallel fails as the branch that failed first (its record first), and the instance fails at
    that step: ``failed_step`` and the map's ``ItemError`` name it, and the ``BranchError``
    inside names the same step. They expect that after a restart too.
    Was: resumed once the item's ``check`` failure is stored, ``_first_failed_inside``
    (runtime/_fanout_failures.py) takes the *newest* failed record of that name and cause, the
    branch that failed second, where the live path (``failed_step_of`` with lanes:
    ``min(firsts)``) takes the oldest: the instance fails at ``refuse-b`` while its error reads
    "step 'refuse-b': BranchError: branch 'a', step 'refuse-a'" (the parallel's record), a
    failed step the error does not name."""
    a = tf.branch("a").fail("refuse-a", error="Refused", cause="no").build()
    b = tf.branch("b").fail("refuse-b", error="Refused", cause="no").build()
    item = tf.branch("item").parallel("check", branches=[a, b, tf.branch("s").step("s", _slow).build()]).build()
    wf = tf.workflow("w").map("orders", items=lambda ctx: [1], branch=item).build()
    report = await explore_crashes(wf, {}, check=False)
    bad = []
    for after, outcome in [("no crash", report.baseline)] + [(p.after, p.outcome) for p in report.points]:
        error = next(r.error for r in outcome.history if r.step_name == "orders" and r.status == "failed")
        named = _NAMED.search(error or "")
        assert named is not None, error
        if not (named[1] == named[2] == outcome.failed_step):
            bad.append((after, outcome.failed_step, error))
    assert bad == []


class _Unavailable(tf.adapters.MemoryAdapter):
    broken = False

    async def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        if self.broken:
            raise tf.StorageUnavailableError("database is locked")
        return await super().checkpoint(*args, **kwargs)


@pytest.mark.parametrize("stop", [SystemExit, KeyboardInterrupt])
def test_a_process_stop_goes_on_when_storing_a_cancel_in_its_instant_fails(stop: type[BaseException]) -> None:
    """A user's step calls a helper that does ``sys.exit(3)`` (or is hit by Ctrl+C) just as an
    operator's ``engine.cancel(order)`` says True (here: the step's cleanup on that cancel
    stops the process); storage is locked at that moment. The engine runs with
    ``storage_retry_for=2`` (the README's knob for how long a checkpoint is retried). README: a
    process stop raised by user code is let go on (it is not taken for the step's failure), and
    7161a98 stores the cancel decision "as the engine's close stores one": bounded, best effort.
    They expect the process to stop: the ``SystemExit``/``KeyboardInterrupt`` leaves
    ``open_engine``'s block, whether the decision was stored or not.
    Was: ``run_instance``'s new ``except BaseException`` (actors/_instance.py:131-136) awaits
    ``store_cancel(run)``; its checkpoint gives up after ``storage_retry_for`` (2 s, inside the
    10 s ``DECISION_TIMEOUT``) with ``StorageUnavailableError``, which replaces the stop: the
    instance is reported stopped for storage, and the engine runs on (the block's
    ``sleep(100)`` ends normally): ``sys.exit(3)`` and Ctrl+C are swallowed."""
    storage = _Unavailable()

    async def work(ctx: Any) -> None:
        try:
            await trio.sleep(10)
        except trio.Cancelled:
            storage.broken = True
            raise stop(3) if stop is SystemExit else stop()

    wf = tf.workflow("w").step("a", work).build()
    said: list[Any] = []

    async def main() -> None:
        async with open_test_engine(adapter=storage, storage_retry_for=2) as engine:
            engine.register(wf)
            iid = await engine.start("w", instance_id="order-1")
            await trio.sleep(1)
            said.append(await engine.cancel(iid))
            await trio.sleep(100)

    with pytest.raises(stop):
        tf.testing.run(main)
    assert said == [True]
