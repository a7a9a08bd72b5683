"""From an adversarial review of 13d4ce0 (``_Storing`` ended at close, a start that holds its id
until its call is over, ``_unanswered`` only for retryable ids, a retried fresh start run as one
made here, a child's store bounded only once a cancel, timeout or close comes).

Each test here failed on 13d4ce0 and is fixed by the commit that added this file: a fail-fast
parallel or map step whose cancelled sibling was storing a child on storage that never answers
hung for ever (its store is bounded now too); a retried start whose lost-answer row was queued
or delayed still ran as one taken up from storage; a cancel() of a child whose store never
answers never returned (it waits 10 s, as for any decision). All run on a MockClock with
adapter wrappers, no real sleeps."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine

from lost_answers import AnswerLostFor


class FirstChildCreateHangs(MemoryAdapter):
    """Storage whose ``create()`` of one child (an id holding ``"#0"``, or ``"/a/"``: the
    first map item's, or parallel branch ``a``'s) never answers (a remote database that
    hangs); every other call answers at once."""

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if "#0/" in instance_id or "/a/" in instance_id:
            await trio.sleep_forever()
        return await super().create(instance_id, *args, **kwargs)


def _kid_fails(ctx: tf.WorkflowContext) -> None:
    raise ValueError("kid failed")


async def _fails_after_a_second(ctx: tf.WorkflowContext) -> None:
    await trio.sleep(1)
    raise ValueError("branch failed")


failing_kid = tf.workflow("kid").step("s", _kid_fails).build()
fail_fast_map = tf.workflow("mp").map(
    "m", items=lambda ctx: [0, 1], branch=tf.branch("i").child("c", workflow="kid").build()).build()
fail_fast_parallel = tf.workflow("par").parallel("p", branches=[
    tf.branch("a").child("c", workflow="kid").build(),
    tf.branch("b").step("f", _fails_after_a_second).build()], on_error="fail-fast").build()


@pytest.mark.parametrize("workflow", ["par", "mp"])
async def test_a_fail_fast_step_whose_cancelled_sibling_stores_a_child_on_hung_storage_still_fails(
    autojump_clock: trio.testing.MockClock, workflow: str,
) -> None:
    """docs/fanout.md, Links: "a cancel or timeout of the parent (or the engine's close) in that
    span lets the store finish first, for up to 10 s from then (past that the cancel goes on
    [...]). With nothing cancelling, a store takes as long as storage does"; docs/fanout.md,
    Cancel: "so does a fail-fast map or parallel step for the children of the items or branches
    it cancels"; README, Parallel: "`fail-fast` cancels the sibling branches at the first
    failure (their running steps are really cancelled)"; docs/fanout.md, Map: "`fail-fast`
    cancels the running items and starts no more".

    Reproduction: storage whose create of one child never answers. ``par``: a fail-fast
    parallel step, branch ``a`` a child step (its child's store hangs), branch ``b`` a step
    that fails after 1 s. ``mp``: a fail-fast map of two items, each a child step; item 0's
    child store hangs, item 1's child fails at once. Nothing else cancels: no timeout, no
    ``cancel()``, the engine stays open.

    What happens instead: the fail-fast cancel of the sibling (``_lane.py`` ``_branch_actor``:
    ``cancel_siblings.cancel()``; ``_map.py``: ``self.cancel.cancel()``) reaches a store that
    ``actors/_child.py`` ``_store_child`` shielded with ``deadline=_store_bound()``, which is
    ``math.inf`` with no workflow timeout; only ``engine.cancel()`` and the engine's close
    call ``bound_child_stores(run)``. The step never fails: the parent stays ``running`` for
    ever (on 13d4ce0^ it ended ``failed`` at 10 s, the store cut at its bound)."""
    async with open_test_engine(adapter=FirstChildCreateHangs()) as engine:
        engine.register(failing_kid)
        engine.register(fail_fast_parallel)
        engine.register(fail_fast_map)
        await engine.start(workflow, instance_id="p")
        with trio.move_on_after(300):
            ended = await engine.wait("p")
            assert ended.status == "failed", ended
            return
        got = await engine.get_instance("p")
        raise AssertionError(f"p is still {got.status if got else None} 300 s after its step failed")


async def _twenty_seconds(ctx: tf.WorkflowContext) -> int:
    await trio.sleep(20)
    return 1


slot_holder = tf.workflow("holder").step("s", _twenty_seconds).build()
unregistered_child = tf.workflow("w").child("c", workflow="nope").build()


async def test_a_retried_start_that_was_queued_for_a_slot_runs_as_a_start_made_here(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Storage failures: "`start()`: retry it with the same `instance_id`; a retry on
    the same engine that finds the instance its earlier try stored, the answer lost, runs it as
    a start made here, announced if it had not started, whatever `resume=` says"; README,
    Registration: "A child step whose workflow is not registered fails (catchable) in a run
    that started here, and waits for it in a run taken up from storage".

    Reproduction: ``max_running=1``, the slot held 20 s by ``holder``. ``w`` is one child step
    of ``"nope"``, never registered. ``start("w", instance_id="x")`` stores ``x`` ``pending``
    (queued for the slot) and its answer is lost (``AnswerLostFor("x")``); the caller retries
    as README says. Without the lost answer ``x`` fails (``UnknownWorkflowError``) once it
    gets the slot at 20 s.

    What happens instead: 13d4ce0 sets ``run.from_storage = False`` only for a ``fresh`` row
    (runtime/_engine.py ``_start``, not-created branch), and ``fresh`` requires
    ``existing.status == "running"``: the retry's own ``pending`` row is resumed through
    ``_resume_one`` as one taken up from storage, and its child step waits in
    ``run.children.until_registered("nope")``: ``x`` stays ``running`` for ever."""
    async with open_test_engine(adapter=AnswerLostFor("x"), max_running=1) as engine:
        engine.register(slot_holder)
        engine.register(unregistered_child)
        await engine.start("holder", instance_id="h")
        with pytest.raises(tf.StorageUnavailableError):
            await engine.start("w", instance_id="x")
        await engine.start("w", instance_id="x")  # the caller's retry
        with trio.move_on_after(100):
            ended = await engine.wait("x")
            assert ended.status == "failed" and ended.error_name == "UnknownWorkflowError", ended
            return
        got = await engine.get_instance("x")
        raise AssertionError(f"x is still {got.status if got else None} at {trio.current_time():g} s")


class ChildCreatesHang(MemoryAdapter):
    """Storage whose ``create()`` of a child (an id with a ``/``) never answers; every other
    call answers at once."""

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if "/" in instance_id:
            await trio.sleep_forever()
        return await super().create(instance_id, *args, **kwargs)


kid = tf.workflow("kid").step("s", lambda ctx: 1).build()
dad = tf.workflow("dad").child("c", workflow="kid").build()


async def test_cancel_of_a_child_whose_store_does_not_answer_returns_within_its_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Lifecycle: `cancel()` "returns `True` once that decision is stored [...],
    waiting 10 s at most for a step that holds its cancellation off, or storage slow to answer
    (the engine stores the decision beside the caller, so a caller that gives up meanwhile does
    not undo it)"; docs/fanout.md, Links: while a parent stores a child, "`cancel()` [...] of
    the child wait[s] for that store rather than answer that there is no such instance".

    Reproduction: storage whose child creates never answer; ``start("dad")``, whose one step
    starts a child; once the parent lists it (``get_instance("p").children``), a caller
    cancels the child: ``cancel("p/c#1")``. Nothing cancels the parent.

    What happens instead: ``cancel()`` waits on the child's ``_Storing`` (runtime/_engine.py
    ``cancel``: ``await storing.wait()``, with no bound), and since 13d4ce0 the store it waits
    for has no bound either (``actors/_child.py`` ``_store_child``: ``deadline=_store_bound()``,
    ``math.inf`` with nothing cancelling the parent): the call never returns (on 13d4ce0^ it
    returned ``False`` after 73 s, the 10 s cut and then ``storage_retry_for``)."""
    async with open_test_engine(adapter=ChildCreatesHang()) as engine:
        engine.register(kid)
        engine.register(dad)
        await engine.start("dad", instance_id="p")
        await trio.sleep(1)
        (child,) = (await engine.get_instance("p")).children
        with trio.move_on_after(60):
            await engine.cancel(child)
            return
        raise AssertionError(f"cancel({child!r}) had not returned 60 s later")
