"""Adversarial review of bef6988 (an instance whose workflow has an ``on_start`` hook is stored
``pending`` until the hook has run, then ``running`` with what it set; a crash before that store
leaves one that never started, announced again by its next run). Everything runs on trio's
MockClock. The test here failed on bef6988 (and 63acf37, which changed only docs), and is fixed
by the commit that added this file. Held up (about 370 probe cases, not kept): cancel() during
the hook, before the actor ran, queued behind ``max_running=1`` and during the hook's own save;
a workflow timeout while the hook runs; hooks that raise or run past 30 s; listings and
``get_instance`` while pending; signals while pending and across restarts; ``resume=False``
and ``engine.resume()``; idempotent and lost-answer starts (a child's too); children and maps
of children with restarts at many instants; transactional workflows; delayed starts with
restarts; ``explore_crashes`` over a dozen shapes, a hook that is not safe to repeat among them."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine

from lost_answers import AnswerLostFor


class LostAnswerThenStepStoresFail(AnswerLostFor):
    """``AnswerLostFor``: the first ``create()`` of each id in ``lose`` stores the row and then
    raises ``StorageUnavailableError`` (its answer is lost). Also, while ``down`` is set, every
    checkpoint that holds records (a step's completion) raises ``StorageUnavailableError``.
    Header-only checkpoints still work, so the one right after ``on_start`` is stored."""

    down = False

    async def checkpoint(self, instance_id: str, status: Any, header: Any, records: Any, **kwargs: Any) -> Any:
        if self.down and records:
            raise tf.StorageUnavailableError("storage down")
        return await super().checkpoint(instance_id, status, header, records, **kwargs)


async def announced_then_stalled(engine: Any, adapter: LostAnswerThenStepStoresFail, started: list[str],
                                 hooks: list[str]) -> None:
    """``start("w", instance_id="x")`` stores its row pending and loses its answer; ``resume()``
    runs it: announced once, its hook's checkpoint stored, then its first step's store fails past
    ``storage_retry_for``: it stops stored running with no records, storage back up."""
    with pytest.raises(tf.StorageUnavailableError):
        await engine.start("w", instance_id="x")  # stored pending, the answer lost
    adapter.down = True
    await engine.resume()  # x runs: announced, its hook's checkpoint stored, its step's not
    await trio.sleep(30)
    adapter.down = False
    stored = await engine.adapter.load("x")
    assert stored is not None and (stored.status, len(stored.records)) == ("running", 0)
    assert (started, hooks) == (["x"], ["x"])


@pytest.mark.parametrize("resume", [False, True], ids=["resume=False", "resume=True"])
async def test_a_retried_start_does_not_announce_again_an_instance_whose_on_start_checkpoint_is_stored(
    autojump_clock: trio.testing.MockClock, resume: bool,
) -> None:
    """Promises broken. README, Storage failures: a retry of ``start()`` on the same engine "that
    finds the instance its earlier try stored, the answer lost, runs it as a start made here,
    announced if it had not started". README, Hooks (new in this commit): the instance is
    stored ``pending`` until ``on_start`` has run, then ``running`` with what the hook set. Only
    "a crash before that store" runs the hook again. ``take_up`` says of the hook's data: "what
    its on_start hook set, which runs once".

    Scenario: ``with_data({"n": 0})``. ``on_start`` increments ``n``, and the first step returns
    ``n``. ``start("w", instance_id="x")`` stores the row ``pending`` and loses its answer.
    ``engine.resume()`` takes ``x`` up: it is announced once (``workflow.started``, ``on_start``:
    n=1), and the checkpoint after the hook stores it ``running`` with n=1. Its first step's
    completion checkpoint then fails past ``storage_retry_for``, so the run stops, stored
    ``running`` with no records (README: "resumable by the next engine or engine.resume()").
    Storage comes back, and the caller retries ``start()`` with the same id, as the README says
    to.

    What happens instead: ``workflow.started`` and ``on_start`` come a second time. The hook
    runs again on top of the data its first run stored, so the instance completes with
    output 2, not 1. Before this commit the output was 1 (that row was stored ``running`` at
    creation and was not announced until the retry).

    Cause: ``Engine._start`` (runtime/_engine.py, the not-``created`` branch) still decides
    ``fresh = never_ran and existing.status == "running" and found.lanes[MAIN].waiting is None``.
    For this row that means "never announced", and it sets ``run.unannounced = True``. But since
    this commit, a non-delayed instance of a workflow with ``on_start`` is stored ``running`` only
    by the checkpoint right after its hook (``pending_until_announced``). A ``running`` row of
    such a workflow has always been announced, so ``fresh`` should be false for it."""
    hooks: list[str] = []
    started: list[str] = []

    def on_start(ctx: tf.WorkflowContext) -> None:
        hooks.append(ctx.metadata.id)
        ctx.set("n", ctx.get("n") + 1)

    async def first(ctx: tf.WorkflowContext) -> Any:
        await trio.sleep(5)
        return ctx.get("n")

    definition = tf.workflow("w").with_data({"n": 0}).step("first", first).with_hooks(on_start=on_start).build()
    adapter = LostAnswerThenStepStoresFail("x")
    async with open_test_engine(adapter=adapter, resume=resume, storage_retry_for=5) as engine:
        engine.register(definition)
        engine.events.on("workflow.started", lambda event: started.append(event["instance_id"]))
        await announced_then_stalled(engine, adapter, started, hooks)
        assert await engine.start("w", instance_id="x") == "x"  # the caller's retry
        with trio.fail_after(600):
            done = await engine.wait("x")
    assert (done.status, started, hooks, done.output) == ("completed", ["x"], ["x"], 1), \
        (done.status, started, hooks, done.output)
