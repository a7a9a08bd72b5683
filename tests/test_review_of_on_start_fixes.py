"""Adversarial review of bef6988 / f2b9534 / 3357bbd / c848f5f (on_start: stored ``pending``
until the hook has run; a retried start that finds its row ``running`` takes it as announced
when its workflow has an ``on_start`` hook). On trio's MockClock, MemoryAdapter.

Every test here failed on 06e0d86, and is fixed by the commit that added this file (``_unanswered``
keeps the status each lost try created its row with, and ``fresh`` goes by that). Held up
(probes not kept): ``explore_crashes`` over hooked plain, child, map and parallel shapes on both
adapters; ``cancel()`` around a lost create of a hooked instance; views while the hook runs and
while an end is stored; decoding every fixture database with c848f5f against its parent. The root
cause was the same: f2b9534 decides whether a row found by
a retried start was announced from the workflow's *current* definition
(``pending_until_announced(definition, found)`` in ``Engine._start``), not from how the row was
stored. A ``running`` row with no records means "its hook has run" only if the definition that
stored it had a hook. ``register(..., replace=True)`` between the lost create and the retry (or
between a child's lost create and its step's retry) breaks that link either way:

* hook added: the row was stored ``running`` at creation (no hook then) and never announced. The
  retry takes it as announced: ``on_start`` never runs, ``workflow.started`` is never published,
  and the first step runs without what the hook sets. These tests pass on f2b9534^ (regression).
* hook removed: the row was stored ``running`` by the checkpoint after the hook (announced).
  The retry takes it as never announced: ``workflow.started`` is published a second time.

README promises: Storage failures, "a retry on the same engine that finds the instance its
earlier try stored, the answer lost, runs it as a start made here, announced if it had not
started". Hooks: ``on_start`` runs "when the instance starts its first step ... so a step never
runs without what the hook sets". Hooks (since bef6988), ``on_start`` and ``workflow.started`` come
again only for an instance the earlier run left stored ``pending``. ``register()``: "instances
started from now on use it, and so do instances taken up from storage".

A possible fix: decide from what this engine's lost try stored (``_unanswered`` could keep the
status it created the row with: ``pending`` for a pending-until-announced row, so ``running``
now means announced; ``running`` means never announced here). Or decide from the row's
fingerprint against the definition that stored it.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine

from lost_answers import AnswerLostFor
from test_review_of_on_start_pending import LostAnswerThenStepStoresFail, announced_then_stalled


def _counting_hook(hooks: list[str]) -> Any:
    def on_start(ctx: tf.WorkflowContext) -> None:
        hooks.append(ctx.metadata.id)
        ctx.set("n", ctx.get("n") + 1)
    return on_start


async def _first(ctx: tf.WorkflowContext) -> Any:
    await trio.sleep(5)
    return ctx.get("n")


async def test_a_retried_start_announces_a_never_started_row_after_an_on_start_hook_is_registered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Broken: the Storage-failures promise of a retried ``start()`` ("announced if it had not
    started"), and the Hooks promise that a step never runs without what ``on_start`` sets.

    Scenario: ``w`` is registered with no hook. ``start("w", instance_id="x")`` stores the row
    (``running``: no hook, so not pending-until-announced) and loses its answer. Nothing runs or
    announces ``x``. ``register(w_with_on_start, replace=True)``: the hook increments ``n``.
    The caller retries ``start("w", instance_id="x")``. README, register(): instances taken up
    from storage use the new definition.

    Expected: ``x`` never started, so the retry starts it: ``workflow.started`` and ``on_start``
    once, and the first step sees n=1. That is what f2b9534^ does.

    What happens instead: no ``workflow.started`` and no ``on_start``. The step returns 0.

    Cause: ``Engine._start`` computes ``fresh = never_ran and status == "running" and ... and
    not pending_until_announced(definition, found)`` with the *new* definition, which has a
    hook. So it takes a row stored running by the hook-less definition as "its hook has run".
    ``run.unannounced`` is never set."""
    hooks: list[str] = []
    started: list[str] = []
    plain = tf.workflow("w").with_data({"n": 0}).step("first", _first).build()
    hooked = tf.workflow("w").with_data({"n": 0}).step("first", _first).with_hooks(on_start=_counting_hook(hooks)).build()
    adapter = AnswerLostFor("x")
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(plain)
        engine.events.on("workflow.started", lambda event: started.append(event["instance_id"]))
        with pytest.raises(tf.StorageUnavailableError):
            await engine.start("w", instance_id="x")  # stored running, its answer lost, never run
        stored = await engine.adapter.load("x")
        assert stored is not None and (stored.status, len(stored.records)) == ("running", 0)
        assert started == []
        engine.register(hooked, replace=True)
        assert await engine.start("w", instance_id="x") == "x"  # the caller's retry
        with trio.fail_after(600):
            done = await engine.wait("x")
    assert (done.status, started, hooks, done.output) == ("completed", ["x"], ["x"], 1), \
        (done.status, started, hooks, done.output)


class _LoseChildCreate(MemoryAdapter):
    """The first ``create()`` of an id other than ``"p"`` (the parent's child) stores the row,
    calls ``on_lost()``, then raises ``StorageUnavailableError`` (its answer is lost). The
    child step backs off and tries again."""

    on_lost: Any = None

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        created = await super().create(instance_id, *args, **kwargs)
        if instance_id != "p" and self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost()
            raise tf.StorageUnavailableError("connection dropped after the write")
        return created


@pytest.mark.parametrize("mapped", [False, True], ids=["child step", "map of child steps"])
async def test_a_child_whose_lost_create_is_retried_runs_the_on_start_hook_registered_meanwhile(
    autojump_clock: trio.testing.MockClock, mapped: bool,
) -> None:
    """Broken: Hooks, "``on_start`` runs ... when the instance starts its first step ... so a
    step never runs without what the hook sets". Also ``register()``: "instances started from
    now on use it".

    Scenario: parent ``p`` has a child step (alone, or in a map of one item) of workflow ``c``.
    ``c`` is registered with no hook. The child's ``create()`` stores its row ``running`` and
    its answer is lost. Before the child step's retry (its back-off), ``c`` is re-registered
    with ``replace=True`` and an ``on_start`` hook that sets ``tenant``. The child step tries
    again and finds the row: never run, never announced.

    Expected: the child starts as a start made here: ``workflow.started`` for it, and its hook
    once, so its step returns "acme". That is what f2b9534^ does.

    What happens instead: the child is taken as already announced. It never gets
    ``workflow.started`` or its hook, and its step returns None.

    Cause: the same as the test above. f2b9534's ``not pending_until_announced(definition,
    found)`` judges the row by the definition registered now, not by the one that stored it."""
    hooks: list[str] = []
    started: list[str] = []

    def on_start(ctx: tf.WorkflowContext) -> None:
        hooks.append(ctx.metadata.id)
        ctx.set("tenant", "acme")

    async def step(ctx: tf.WorkflowContext) -> Any:
        return ctx.get("tenant")

    plain = tf.workflow("c").step("s", step).build()
    hooked = tf.workflow("c").step("s", step).with_hooks(on_start=on_start).build()
    if mapped:
        parent = tf.workflow("p").map(
            "m", items=lambda ctx: [1], branch=tf.branch("item").child("k", workflow="c").build()).build()
    else:
        parent = tf.workflow("p").child("k", workflow="c").build()
    adapter = _LoseChildCreate()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(plain)
        engine.register(parent)
        engine.events.on("workflow.started", lambda event: started.append(event["instance_id"]))
        adapter.on_lost = lambda: engine.register(hooked, replace=True)
        await engine.start("p", instance_id="p")
        with trio.fail_after(600):
            done = await engine.wait("p")
        children = [i for i in await engine.get_instances() if i.parent_id == "p"]
    assert done.status == "completed"
    assert len(children) == 1
    child = children[0]
    assert (sorted(started), hooks, child.output) == (sorted(["p", child.id]), [child.id], "acme"), \
        (started, hooks, child.output)


async def test_a_retried_start_does_not_announce_again_a_row_whose_hook_ran_before_the_hook_was_removed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Broken: Storage failures, a retried ``start()`` "runs it as a start made here, announced
    if it had not started". Also the bef6988 Hooks rule that ``workflow.started`` comes again only
    for an instance left stored ``pending``. f2b9534's own scenario, with the hook removed.

    Scenario (as tests/test_review_of_on_start_pending.py): ``w`` has an ``on_start`` hook.
    ``start("w", instance_id="x")`` stores the row ``pending`` and loses its answer.
    ``engine.resume()`` runs ``x``: ``workflow.started`` is published and the hook runs. The
    checkpoint after the hook stores it ``running`` with n=1. Its first step's completion cannot
    be stored, so it stalls, stored ``running`` with no records. Storage comes back.
    ``register(w_without_hook, replace=True)``. The caller retries ``start()``.

    Expected: ``x`` had started, so the retry does not announce it again. ``workflow.started``
    comes once.

    What happens instead: ``workflow.started`` is published a second time. With the new
    definition having no hook, ``not pending_until_announced(definition, found)`` is true, so
    ``fresh`` holds and ``run.unannounced`` is set for a row that was announced. The hook-less
    definition says nothing about the definition that stored the row."""
    hooks: list[str] = []
    started: list[str] = []
    hooked = tf.workflow("w").with_data({"n": 0}).step("first", _first).with_hooks(on_start=_counting_hook(hooks)).build()
    plain = tf.workflow("w").with_data({"n": 0}).step("first", _first).build()
    adapter = LostAnswerThenStepStoresFail("x")
    async with open_test_engine(adapter=adapter, storage_retry_for=5) as engine:
        engine.register(hooked)
        engine.events.on("workflow.started", lambda event: started.append(event["instance_id"]))
        await announced_then_stalled(engine, adapter, started, hooks)
        engine.register(plain, replace=True)
        assert await engine.start("w", instance_id="x") == "x"  # the caller's retry
        with trio.fail_after(600):
            done = await engine.wait("x")
    assert (done.status, started, hooks, done.output) == ("completed", ["x"], ["x"], 1), \
        (done.status, started, hooks, done.output)
