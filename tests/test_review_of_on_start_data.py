"""Adversarial re-review of 445379e: what an ``on_start`` hook sets in the shared data is
checkpointed before the first step (actors/_instance.py ``_announce_start``), and ``take_up``
keeps the stored data of an instance that began. Everything runs on trio's MockClock.

Held up (probes not kept): a cancel or the workflow timeout while the hook's checkpoint is
slow (cancelled / timed_out, as expected); a restart during the first step, plain and
transactional (the hook's value is kept, workflow.started published once); execute_workflow
(no storage, the hook's value reaches the step); a hook whose only value is unencodable
(dropped, the instance completes). The tests below fail."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import explore_crashes, open_test_engine

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

LOG: list[Any] = []


@pytest.fixture(params=["memory", "sqlite"])
def make_adapter(request: Any, tmp_path: Any) -> Callable[[], Any]:
    if request.param == "memory":
        one = MemoryAdapter()
        return lambda: one
    return lambda: SQLiteAdapter(tmp_path / "on_start.db")


def _tenant_and_a_connection(ctx: tf.WorkflowContext) -> None:
    LOG.append("on_start")
    ctx.set("tenant", "acme")
    ctx.data["conn"] = object()  # cannot be stored: Run.hook's check drops it, with a warning


async def _slow_first(ctx: tf.WorkflowContext) -> Any:
    LOG.append(("first", ctx.get("tenant")))
    await trio.sleep(100)
    return ctx.get("tenant")


@pytest.mark.trio
async def test_a_hook_that_also_leaves_an_unstorable_value_has_its_good_value_stored_before_the_first_step(
    autojump_clock: trio.testing.MockClock, make_adapter: Callable[[], Any],
) -> None:
    """``on_start`` sets ``tenant`` (storable) and puts an unstorable value in ``ctx.data``.
    ``Run.hook``'s check drops only the unstorable one (README: a hook never fails the
    instance), so the first step sees ``tenant == "acme"``; the engine restarts during that
    step. 445379e promises the hook's data is stored before the first step, so the resumed
    step must see ``tenant == "acme"`` again. Instead it sees None: ``check_data``
    (runtime/_codec.py) raises after putting the bad key back, before it updates
    ``state.good_data``, so ``_announce_start`` (actors/_instance.py), which detects a change
    by ``good_data != before``, sees none and does not checkpoint; the value lives only in
    memory and is lost."""
    LOG.clear()
    definition = tf.workflow("h").step("first", _slow_first).with_hooks(on_start=_tenant_and_a_connection).build()
    async with open_test_engine(adapter=make_adapter()) as engine:
        engine.register(definition)
        await engine.start("h", instance_id="i")
        await trio.sleep(30)
    assert LOG == ["on_start", ("first", "acme")], LOG
    async with open_test_engine(adapter=make_adapter()) as engine:
        engine.register(definition)
        with trio.move_on_after(600):
            inst = await engine.wait("i")
    assert (inst.status, inst.output) == ("completed", "acme"), (inst.status, inst.output, LOG)


def _set_tenant(ctx: tf.WorkflowContext) -> None:
    ctx.set("tenant", "acme")


async def _first(ctx: tf.WorkflowContext) -> Any:
    return ctx.get("tenant")


@pytest.mark.trio
@pytest.mark.parametrize("lost_writes", [False, True], ids=["crash-after-write", "lost-write"])
async def test_every_crash_point_of_a_workflow_whose_on_start_sets_data_gives_the_crash_free_outcome(
    lost_writes: bool,
) -> None:
    """``explore_crashes`` over a one-step workflow whose ``on_start`` sets ``tenant`` and whose
    step returns it: the crash-free run gives ``"acme"``, and so does a crash at every write.
    A strict xfail until the commit that removed its mark: a crash after write 1 (the instance
    created: the hook has run, its new checkpoint not yet stored), or that checkpoint lost,
    resumed an instance whose stored data lacked ``tenant``; the resumed run was ``resumed``, so
    ``_forward`` (actors/_instance.py, ``not run.resumed``) did not announce it again and the
    hook never ran again: the output was None (CrashDivergenceError). Such an instance is now
    stored pending until the checkpoint after its hook (``pending_until_announced``): a crash
    before it leaves one that never started, whose next run announces it again."""
    definition = tf.workflow("h").step("first", _first).with_hooks(on_start=_set_tenant).build()
    await explore_crashes(definition, lost_writes=lost_writes)
