"""Adversarial review of 2c420ad and d175e8f (``Engine._start``: a retried ``start()`` that finds
the row its lost try stored, ``running`` with no records and not waiting, announces it again
(``fresh`` -> ``run.unannounced``) unless ``_unanswered`` says that try's row was stored running
only once announced). On trio's MockClock, MemoryAdapter. Every test here failed on d175e8f, and
is fixed by the commit that added this file: ``_unanswered`` keeps, for each lost try's row,
whether a run here has announced it since (``Run.announced``, noted as the run ends), and a
retry goes by that.

README promises. Storage failures: a retry on the same engine "that finds the instance its earlier
try stored, the answer lost, runs it as a start made here, announced if it had not started".
Hooks: ``on_start`` and ``workflow.started`` come when the instance starts its first step, and
again only for an instance left stored ``pending`` (a delayed start: only after a restart that
came before "that start was stored"; "a delayed one's start is stored once it is announced").

Root cause, common to all of them: a ``running`` row with no records and not waiting is
ambiguous. Whether its being ``running`` means "announced" depends on *how it came to be running*,
which is decided by the run that took it up (``engine.resume()`` here), not by the lost try:

* a delayed start clears ``waiting`` only in the store that follows its announcement;
* an admitted pending row is stored ``running`` *before* being announced when the definition the
  run uses now has no ``on_start`` hook, and only *after* (checkpoint after the hook) when it has.

d175e8f's flag (``pending_until_announced`` of the lost try's state) is False for every delayed
start, and describes the definition registered at the lost try, not the one the admitting run
used after a ``register(replace=True)``.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine

from lost_answers import AnswerLostFor
from test_review_of_on_start_fixes import _counting_hook, _first
from test_review_of_on_start_pending import LostAnswerThenStepStoresFail


async def _block(ctx: tf.WorkflowContext) -> Any:
    await trio.sleep(10)
    return "b"


def _w(hooks: list[str], hooked: bool) -> Any:
    b = tf.workflow("w").with_data({"n": 0}).step("first", _first)
    return (b.with_hooks(on_start=_counting_hook(hooks)) if hooked else b).build()


async def _queued_lost_admitted_then_stalled(engine: Any, adapter: LostAnswerThenStepStoresFail) -> None:
    """``b`` holds the only slot (``max_running=1``) for 10 s. ``start("w", instance_id="x")``
    queues: stored ``pending``, its answer lost. ``resume()`` takes ``x`` up; at t=10 it gets the
    slot, is announced, and its first step's completion (t=15) cannot be stored past
    ``storage_retry_for``: it stops stored ``running`` with no records. Storage comes back."""
    await engine.start("blk", instance_id="b")
    with pytest.raises(tf.StorageUnavailableError):
        await engine.start("w", instance_id="x")
    stored = await engine.adapter.load("x")
    assert stored is not None and stored.status == "pending"
    await _admitted_then_stalled(engine, adapter)


async def _admitted_then_stalled(engine: Any, adapter: LostAnswerThenStepStoresFail) -> None:
    """``resume()`` takes ``x`` up: it gets the slot at t=10, is announced, and its first step's
    completion cannot be stored past ``storage_retry_for``: stored running with no records."""
    await engine.resume()
    await trio.sleep(12)
    adapter.down = True
    await trio.sleep(30)
    adapter.down = False
    stored = await engine.adapter.load("x")
    assert stored is not None and (stored.status, len(stored.records)) == ("running", 0)


async def test_a_retry_does_not_announce_again_a_queued_instance_announced_when_admitted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Broken: Storage failures ("announced if it had not started") and Hooks (workflow.started
    again only for an instance left stored pending).

    Scenario: ``w`` has no hook. ``x`` queues for the slot, its create's answer lost. ``resume()``
    admits it (stored ``running``) and announces it (``workflow.started``); its first step's store
    then fails and it stalls, stored ``running`` with no records. The caller retries ``start()``.

    Expected: ``workflow.started`` for ``x`` once. 2c420ad gave that (it kept "created pending").

    What happens: published a second time.

    Cause: d175e8f records ``until_announced=False`` for the queued try (no hook), so ``fresh``
    holds for any ``running`` row found, though admission stores ``running`` and then announces
    (``_instance_actor``): a ``running`` row of a queued try may well have been announced. The
    commit message accepts this ("announced again as before") to cover an admission store that
    lost its answer; the two cases are not told apart from storage, but the engine itself ran the
    admission and could remember whether it announced it."""
    started: list[str] = []
    adapter = LostAnswerThenStepStoresFail("x")
    async with open_test_engine(adapter=adapter, storage_retry_for=5, max_running=1) as engine:
        engine.register(_w([], False))
        engine.register(tf.workflow("blk").step("s", _block).build())
        engine.events.on("workflow.started", lambda event: started.append(event["instance_id"]))
        await _queued_lost_admitted_then_stalled(engine, adapter)
        assert started == ["b", "x"]
        assert await engine.start("w", instance_id="x") == "x"  # the caller's retry
        with trio.fail_after(600):
            done = await engine.wait("x")
    assert (done.status, started.count("x")) == ("completed", 1), (done.status, started)


async def test_a_retry_does_not_run_on_start_again_for_a_queued_instance_admitted_under_a_hook_registered_since(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Broken: Hooks (``on_start`` comes again only for an instance left stored pending; what it
    sets is stored before the first step so it is not run twice) and Storage failures.

    Scenario: ``w`` has no hook; ``x`` queues, its create's answer lost (d175e8f records
    ``False``: "not pending until announced"). ``register(w_with_on_start, replace=True)``
    (README, register(): instances taken up from storage use it). ``resume()`` admits ``x`` under
    the hooked definition: announced, hook run (n=1), the checkpoint after the hook stores it
    ``running``; its first step's store fails and it stalls. The caller retries ``start()``.

    Expected: announced and hooked once; output 1. Held on 06e0d86 and on 2c420ad.

    What happens: ``workflow.started`` and ``on_start`` come again; the hook runs on top of the
    n=1 it stored, output 2. A regression of d175e8f.

    Cause: the flag describes the definition of the lost try, but whether ``running`` means
    announced is decided by the definition the admitting run used
    (``pending_until_announced(run.definition, state)`` in ``_instance_actor``)."""
    hooks: list[str] = []
    started: list[str] = []
    adapter = LostAnswerThenStepStoresFail("x")
    async with open_test_engine(adapter=adapter, storage_retry_for=5, max_running=1) as engine:
        engine.register(_w(hooks, False))
        engine.register(tf.workflow("blk").step("s", _block).build())
        engine.events.on("workflow.started", lambda event: started.append(event["instance_id"]))
        await engine.start("blk", instance_id="b")
        with pytest.raises(tf.StorageUnavailableError):
            await engine.start("w", instance_id="x")  # queued: stored pending, the answer lost
        engine.register(_w(hooks, True), replace=True)
        await _admitted_then_stalled(engine, adapter)
        assert (started, hooks) == (["b", "x"], ["x"])
        assert await engine.start("w", instance_id="x") == "x"  # the caller's retry
        with trio.fail_after(600):
            done = await engine.wait("x")
    assert (done.status, started.count("x"), hooks, done.output) == ("completed", 1, ["x"], 1), \
        (done.status, started, hooks, done.output)


@pytest.mark.parametrize("hooked", [False, True], ids=["no hook", "on_start hook"])
async def test_a_retry_does_not_announce_again_a_delayed_start_whose_start_was_stored(
    autojump_clock: trio.testing.MockClock, hooked: bool,
) -> None:
    """Broken: Hooks, a delayed start is announced "once its delay is over (again after a restart
    that came before that start was stored)"; "a delayed one's start is stored once it is
    announced". Storage failures: a retry announces only one that had not started.

    Scenario: ``start("w", instance_id="x", delay=10)`` stores ``running`` waiting for its start,
    its answer lost. ``resume()`` takes it up: at t=10 it is announced (and its hook run: n=1), and
    its start is stored (``waiting`` cleared). Its first step's store fails and it stalls, stored
    ``running``, no records, not waiting. The caller retries ``start(..., delay=10)``.

    Expected: announced once (hook once, output 1 with the hook).

    What happens: ``workflow.started`` again, and with the hook ``on_start`` again: output 2.
    With the hook this held on 06e0d86 (the current definition's hook made the row count as
    announced) and broke with 2c420ad ("created running"), still broken by d175e8f; without it,
    it was already broken.

    Cause: ``until_announced`` is ``pending_until_announced(definition, state)`` computed after
    ``waiting = {"start": ...}`` is set, so False for every delayed start; but a delayed row found
    with ``waiting`` cleared was announced before that store (``run_forward``: announce, then
    ``persist``/``past_stored_wait``). A delayed try's ``running`` row not waiting means announced
    (the flag should be ``until_announced or starts_at is not None``)."""
    hooks: list[str] = []
    started: list[str] = []
    adapter = LostAnswerThenStepStoresFail("x")
    async with open_test_engine(adapter=adapter, storage_retry_for=5) as engine:
        engine.register(_w(hooks, hooked))
        engine.events.on("workflow.started", lambda event: started.append(event["instance_id"]))
        with pytest.raises(tf.StorageUnavailableError):
            await engine.start("w", instance_id="x", delay=10)  # stored waiting for its start, answer lost
        adapter.down = True
        await engine.resume()
        await trio.sleep(40)
        adapter.down = False
        stored = await engine.adapter.load("x")
        assert stored is not None and (stored.status, len(stored.records)) == ("running", 0)
        assert (started, hooks) == (["x"], ["x"] if hooked else [])
        assert await engine.start("w", instance_id="x", delay=10) == "x"  # the caller's retry
        with trio.fail_after(600):
            done = await engine.wait("x")
    assert (done.status, started, hooks, done.output) == \
        ("completed", ["x"], ["x"] if hooked else [], 1 if hooked else 0), (done.status, started, hooks, done.output)


class _AdmissionLost(AnswerLostFor):
    """``AnswerLostFor``; while ``lost_all``: ``x``'s first checkpoint is stored and then raises
    (its answer lost), and every later one raises unstored, past ``storage_retry_for``."""

    lost_all = False
    stored_once = False

    async def checkpoint(self, instance_id: str, status: Any, header: Any, records: Any, **kwargs: Any) -> Any:
        if self.lost_all and instance_id == "x":
            if not self.stored_once:
                self.stored_once = True
                await super().checkpoint(instance_id, status, header, records, **kwargs)
            raise tf.StorageUnavailableError("the answer was lost")
        return await super().checkpoint(instance_id, status, header, records, **kwargs)


async def test_a_retry_announces_a_hooked_try_admitted_without_its_hook_whose_admission_store_lost_its_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Broken: Storage failures, a retry "runs it as a start made here, announced if it had not
    started"; Hooks, ``workflow.started`` when the instance starts its first step.

    Scenario: ``w`` has an ``on_start`` hook: ``start("w", instance_id="x")`` stores ``pending``,
    its answer lost (d175e8f records ``True``: "running means announced").
    ``register(w_without_hook, replace=True)``. ``resume()`` admits ``x`` under the hook-less
    definition, which stores ``running`` *before* announcing; that store's answer is lost and
    storage stays down: ``x`` stalls, stored ``running``, never announced. The caller retries.

    Expected: ``workflow.started`` for ``x`` once (it never started). 06e0d86 did so.

    What happens: never published; ``x`` runs to completion unannounced (also on 2c420ad).

    Cause: as above: the lost try's flag says how *that* definition stores the row, while the
    admission that made it ``running`` went by the definition registered since."""
    started: list[str] = []
    adapter = _AdmissionLost("x")
    async with open_test_engine(adapter=adapter, storage_retry_for=5) as engine:
        engine.register(_w([], True))
        engine.events.on("workflow.started", lambda event: started.append(event["instance_id"]))
        with pytest.raises(tf.StorageUnavailableError):
            await engine.start("w", instance_id="x")  # stored pending, the answer lost
        engine.register(_w([], False), replace=True)
        adapter.lost_all = True
        await engine.resume()
        await trio.sleep(40)
        adapter.lost_all = False
        stored = await engine.adapter.load("x")
        assert stored is not None and (stored.status, len(stored.records)) == ("running", 0)
        assert started == []
        assert await engine.start("w", instance_id="x") == "x"  # the caller's retry
        with trio.fail_after(600):
            done = await engine.wait("x")
    assert (done.status, started) == ("completed", ["x"]), (done.status, started)
