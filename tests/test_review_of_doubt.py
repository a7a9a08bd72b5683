"""Adversarial re-review of 5f47f2b (a checkpoint in doubt, settled by the next one) and of
``take_up`` (an instance that has run nothing starts afresh on the release taken up with).
Everything runs on trio's MockClock.

The doubt itself held up (parallel branches gathered into the lost checkpoint, stored or
not; a receive's consumed signal; the engine closing after the doubt; a cancel with reads
down 12 s): those probes are not kept here. The adapter below (a lost answer on demand) is
the one they used; the tests that fail are about what ``on_start`` set, lost at take-up."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


from lost_answers import make_adapter  # noqa: F401  (a fixture)


LOG: list[Any] = []


# -- take_up: what the on_start hook set --------------------------------------------------------

HOOKED: list[Any] = []


def _set_tenant(ctx: tf.WorkflowContext) -> None:
    HOOKED.append("on_start")
    ctx.set("tenant", "acme")


async def _first(ctx: tf.WorkflowContext) -> str:
    LOG.append(("first", ctx.get("tenant")))
    await trio.sleep(100)
    return "first"


async def _next(ctx: tf.WorkflowContext) -> str:
    LOG.append(("next", ctx.get("tenant")))
    return "next"


def _release(timeout: bool, report_step: bool) -> Any:
    """The same first step either way; ``report_step``: a step added at the end (a new release,
    another fingerprint)."""
    builder = tf.workflow("h").with_data({"v": 1})
    if timeout:
        builder = builder.timeout(10_000)
    builder = builder.step("first", _first).step("second", _next)
    if report_step:
        builder = builder.step("report", _next)
    return builder.with_hooks(on_start=_set_tenant).build()


@pytest.mark.trio
@pytest.mark.parametrize("timeout", [False, True], ids=["no-timeout", "timeout"])
async def test_a_delayed_start_whose_first_step_a_redeploy_cuts_short_keeps_what_on_start_set(
    autojump_clock: trio.testing.MockClock, make_adapter: Callable[[], Any], timeout: bool,
) -> None:
    """Started with a 10 s delay; once it is over, ``on_start`` sets ``tenant`` and the first
    step runs (the start stored, with what the hook set). The service is redeployed with a
    release that only adds a step at the end (its first step unchanged: the most ordinary
    deploy), cutting that first step short. Users rely on the steps reading what ``on_start``
    set (README §hooks: it runs when the instance starts its first step; it did, once): the
    first step, run again, and the rest see ``tenant == "acme"``. Instead ``take_up``
    (runtime/_decide.py, since 605db3f/5f47f2b) sees another fingerprint, starts the instance
    "afresh" with the release's ``with_data`` (the hook's value dropped), and the hook is not
    run again (the run is resumed): every later step sees ``tenant`` None. (At 0e5d925 this
    passed: take_up reset the lanes, not the data.)"""
    LOG.clear()
    HOOKED.clear()
    async with open_test_engine(adapter=make_adapter()) as engine:
        engine.register(_release(timeout, report_step=False))
        await engine.start("h", instance_id="i", delay=10)
        await trio.sleep(30)
    assert LOG == [("first", "acme")] and HOOKED == ["on_start"], (LOG, HOOKED)
    async with open_test_engine(adapter=make_adapter()) as engine:
        engine.register(_release(timeout, report_step=True))
        with trio.move_on_after(600):
            inst = await engine.wait("i")
    assert inst.status == "completed" and all(tenant == "acme" for _, tenant in LOG), (inst.status, LOG, HOOKED)


@pytest.mark.trio
async def test_a_first_step_cut_short_by_a_restart_under_the_same_release_keeps_what_on_start_set(
    autojump_clock: trio.testing.MockClock, make_adapter: Callable[[], Any],
) -> None:
    """Started at once (no delay) under a release whose ``on_start`` sets ``tenant``; the
    engine restarts, same release, while the first step runs. Users rely on README §deploys:
    "one begun under this very release keeps what it stored, what its on_start hook set
    included". Instead nothing stores the hook's data before the first step ends (the start
    row is created before the hook runs), and the resumed run does not announce its start
    again (actors/_instance.py run_instance: ``not run.resumed``): the first step, run again,
    and every later step see ``tenant`` None. (Also fails at 0e5d925: not from take_up.)"""
    LOG.clear()
    HOOKED.clear()
    async with open_test_engine(adapter=make_adapter()) as engine:
        engine.register(_release(False, report_step=False))
        await engine.start("h", instance_id="i")
        await trio.sleep(30)
    assert LOG == [("first", "acme")] and HOOKED == ["on_start"], (LOG, HOOKED)
    async with open_test_engine(adapter=make_adapter()) as engine:
        engine.register(_release(False, report_step=False))
        with trio.move_on_after(600):
            inst = await engine.wait("i")
    assert inst.status == "completed" and all(tenant == "acme" for _, tenant in LOG), (inst.status, LOG, HOOKED)
