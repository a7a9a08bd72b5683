"""An adversarial review of an engine closing (its block exiting, or the scope around it
cancelled) and a new engine taking over the same storage, while signals are being sent,
parents wait on child workflows (alone, in a map), and timers fire.

Promises under review (SPEC §13/§14, docs/waiting.md, docs/fanout.md): a parent whose child
ended is woken and finishes; nothing hangs; every ``signal()`` that returned is delivered once,
in order; close raises no internal error; ``wait()`` callers learn the engine closed.

Tests whose docstring starts with ``FAILS ON CURRENT CODE`` fail on main at 7933207; the others
pass and pin behaviour worth keeping. Everything runs on trio's MockClock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine

from handover_setups import SlowCreate, resumed_while_the_child_is_stored_again

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


# -- helpers --------------------------------------------------------------------------------------


class _SlowRowReads:
    """Reads of one instance's row (``load``) answer ``delay`` seconds late, with the row as it
    stood when asked (the latency of a reply's round trip). Everything else as the base
    adapter: each write all or nothing, seqs growing."""

    watch: str | None = None
    delay = 0.0

    async def load(self, instance_id: str) -> Any:
        found = await super().load(instance_id)  # type: ignore[misc]
        if instance_id == self.watch and self.delay:
            await trio.sleep(self.delay)
        return found


class SlowMemory(_SlowRowReads, MemoryAdapter):
    pass


class SlowSQLite(_SlowRowReads, SQLiteAdapter):
    pass


async def _kid_step(ctx: tf.WorkflowContext) -> Any:
    await trio.sleep(ctx.input)
    return ctx.input


def _two_items(ctx: tf.WorkflowContext) -> list[int]:
    return [30, 31]


KID = tf.workflow("kid").step("k", _kid_step).build()
#: Two children that end a second apart; the parent leaves memory while it waits for them.
MAP_OF_TWO = tf.workflow("parent").map(
    "m", items=_two_items, branch=tf.branch("b").child("c", workflow="kid").build()).build()


# -- a parked parent whose two children end a second apart ------------------------------------


@pytest.mark.trio
async def test_a_parked_parent_is_woken_for_a_child_end_stored_while_its_row_was_read_for_another(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """FAILS ON CURRENT CODE.

    A parent maps two children (they end at 30 s and 31 s) and leaves memory while it waits.
    Reads of its row take 2 s. The first child's end wakes it: its row is read (holding only
    that child's end notice); the second child's end notice is stored while that read is in
    flight. The second wake reads the row (holding both notices), finds the parent running
    here by then, and does nothing with it; the run, taken up from the older row as if it
    held every signal stored, never looks at storage again. It parks waiting for the second
    child's end, which its row holds (``wake_at`` infinite): the parent hangs for ever, though
    both children completed (SPEC §14: "the child's output is the step's output").

    Users rely on a parent whose children ended finishing; instead ``wait()`` never returns
    (only a restart's ``resume()`` takes the row up)."""
    adapter = SlowMemory()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(KID)
        engine.register(MAP_OF_TWO)
        await engine.start("parent", instance_id="p")
        await trio.sleep(3)  # parked, waiting for both children
        adapter.watch, adapter.delay = "p", 2.0
        done = None
        with trio.move_on_after(600):
            done = await engine.wait("p")
        adapter.delay = 0.0
        row = adapter._load("p")
        assert row is not None
        held = [name for _, name, _ in row.signals]
    assert done is not None and (done.status, done.output) == ("completed", [30, 31]), (
        f"the parent hangs: its row is {row.status}, wake_at={row.wake_at}, holding {held}")


@pytest.mark.trio
@pytest.mark.parametrize("storage", ["memory", "sqlite"])
@pytest.mark.parametrize("close", ["exit", "cancel"])
async def test_a_parent_taken_over_by_a_new_engine_finishes_when_its_children_end_during_a_slow_row_read(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str, close: str,
) -> None:
    """FAILS ON CURRENT CODE.

    The hand-over version of the test above: the first engine closes (a redeploy: its block
    exits, or SIGTERM cancels the scope around it) while the parent waits out of memory and
    its two children run. The next engine resumes the children; they end a second apart
    while the parent's row is read (2 s a read). The parent is taken up from the row read
    for the first child's end, the second child's end is lost to it, and it parks for ever
    in the new engine though both children completed there."""
    memory = SlowMemory()

    def adapter() -> Any:
        return memory if storage == "memory" else SlowSQLite(tmp_path / "flows.db")

    with trio.CancelScope() as outer:
        async with open_test_engine(adapter=adapter()) as engine:
            engine.register(KID)
            engine.register(MAP_OF_TWO)
            await engine.start("parent", instance_id="p")
            await trio.sleep(3)  # the parent is parked, its children run
            parked = await engine.get_instance("p")
            assert parked is not None and parked.waiting is not None
            if close == "cancel":
                outer.cancel()
                await trio.sleep(1)
    second = adapter()
    second.watch, second.delay = "p", 2.0
    async with open_test_engine(adapter=second) as engine:
        engine.register(KID)
        engine.register(MAP_OF_TWO)
        done = None
        with trio.move_on_after(600):
            done = await engine.wait("p")
        second.delay = 0.0
        now = await engine.get_instance("p")
    assert done is not None and (done.status, done.output) == ("completed", [30, 31]), (
        f"the parent hangs in the new engine: {now.status if now else None}, waiting={now.waiting if now else None}")


# -- wait() in the block's cleanup, the engine cancelled from outside ------------------------


async def _work_long(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(100)
    return "worked"


WORKS = tf.workflow("works").step("s", _work_long).build()
PARKS = tf.workflow("parks").receive("r", signal="go").build()


async def _wait_in_cleanup(instance_id: str) -> list[Any]:
    """Start one running and one parked instance, cancel the scope around the engine's block
    (SIGTERM), and in the block's shielded cleanup ``wait()`` for ``instance_id`` (at most
    50 s): what the call raised, or ``"no answer after 50 s"``."""
    seen: list[Any] = []
    with trio.CancelScope() as outer:
        async with open_test_engine() as engine:
            engine.register(WORKS)
            engine.register(PARKS)
            await engine.start("works", instance_id="running")
            await engine.start("parks", instance_id="parked")
            await trio.sleep(5)
            parked = await engine.get_instance("parked")
            assert parked is not None and parked.waiting is not None
            await _in_the_cleanup_of_a_cancel(outer, lambda: engine.wait(instance_id), seen)
    return seen


async def _in_the_cleanup_of_a_cancel(outer: trio.CancelScope, call: Any, seen: list[Any]) -> None:
    """Cancel ``outer`` (SIGTERM cancels the service's root), then, in the block's shielded
    cleanup, once the actors have stopped, note what ``call()`` gives or raises in ``seen``
    (or that it gave no answer within 50 s)."""
    try:
        outer.cancel()
        await trio.sleep(1)
    finally:
        with trio.CancelScope(shield=True):
            await trio.sleep(0.1)  # any await of the cleanup: the actors stop meanwhile
            with trio.move_on_after(50) as waited:
                try:
                    seen.append(await call())
                except Exception as exc:  # noqa: BLE001 (what it raises is what the test looks at)
                    seen.append(exc)
            if waited.cancelled_caught:
                seen.append("no answer after 50 s")


@pytest.mark.trio
async def test_wait_for_a_parked_instance_in_the_cleanup_of_a_cancelled_engine_does_not_hang(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """FAILS ON CURRENT CODE.

    SIGTERM cancels the scope around the engine's block; the service's shielded cleanup (as in
    ``test_an_engine_cancelled_from_outside_still_answers_its_blocks_cleanup``: reads and
    signals still work there) calls ``wait()`` for an instance parked on a receive. The
    engine's actors have stopped, so nothing will ever run it here; yet ``wait()`` parks on
    the instance's next-run event, which only ``Engine._close()`` sets, and ``_close()`` runs
    once the block's body has ended: the cleanup waits for itself. Without the test's 50 s
    bound the service hangs at shutdown for ever.

    Users rely on ``wait()`` answering as the engine stops (``EngineClosedError``, as it does
    for a caller outside the block); instead it never returns."""
    seen = await _wait_in_cleanup("parked")
    assert len(seen) == 1 and isinstance(seen[0], tf.EngineClosedError), seen


@pytest.mark.trio
async def test_wait_for_a_running_instance_in_the_cleanup_of_a_cancelled_engine_says_the_engine_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """FAILS ON CURRENT CODE.

    As above, for an instance whose step was running when the engine's actors stopped: its
    run ended (stopped, stored ``running`` for the next engine), and ``wait()`` raises
    ``InstanceNotLiveError: instance 'running' is running in storage but not running in this
    engine; register its workflow or call resume()``: advice that cannot help (its workflow
    is registered, and ``resume()`` now resumes nothing: the actors have stopped).

    Users rely on a clear ``EngineClosedError`` ("the engine stopped before instance ...
    ended; it stays in storage for the next engine"), which a caller outside the block gets."""
    seen = await _wait_in_cleanup("running")
    assert len(seen) == 1 and isinstance(seen[0], tf.EngineClosedError), seen


# -- resume=False: resume() while a parent taken up again stores its child again ----------------


@pytest.mark.trio
async def test_resume_while_a_parent_stores_its_held_back_child_again_resumes_that_child(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """FAILS ON CURRENT CODE.

    The first engine closes while a parent waits out of memory and its child's step runs (the
    child is stored ``running``). The next engine opens with ``resume=False`` (the service
    migrates first), which holds the child back. At its child's check time (10 s after the
    step began) the waker takes the parent up, and its child step stores the child again (a
    ``create()`` that finds it there; 2 s here). The service calls ``resume()`` meanwhile:
    it passes the child over (``Engine._resume_one``: being stored here), and returns ``[]``;
    ``_start`` then finds the child stored and unfinished but resumes it only with auto-resume
    on (``self._leftovers is not None``), though ``resume()`` has just lifted the hold. The
    child never runs here, and the parent waits for it for ever.

    Users rely on ``resume()`` resuming every stored unfinished instance ("Resume every stored
    pending/running instance of a registered workflow"), and on a parent finishing once its
    child can run; instead the child stays ``running`` in storage and ``wait()`` never returns.
    (Called a second earlier or later, ``resume()`` resumes the child and the parent finishes.)"""
    async with resumed_while_the_child_is_stored_again(SlowCreate()) as (engine, kid_id, resumed):
        done = None
        with trio.move_on_after(600):
            done = await engine.wait("p")
        kid = await engine.get_instance(kid_id)
    assert done is not None and (done.status, done.output) == ("completed", "kid done"), (
        f"resume() resumed {resumed}; the child is {kid.status if kid else None}, the parent never finishes")


# -- cancel() in the block's cleanup, the engine cancelled from outside ----------------------


async def _kid_long(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(100)
    return "kid"


WAITS_ON_CHILD = tf.workflow("parent").child("c", workflow="slow-kid").build()
SLOW_KID = tf.workflow("slow-kid").step("k", _kid_long).build()


@pytest.mark.trio
@pytest.mark.parametrize("target", ["running", "parked", "parent"])
async def test_cancel_in_the_cleanup_of_a_cancelled_engine_raises_no_trio_error(
    autojump_clock: trio.testing.MockClock, target: str,
) -> None:
    """FAILS ON CURRENT CODE.

    SIGTERM cancels the scope around the engine's block; the service's shielded cleanup
    cancels an order (``engine.cancel()``) for an instance whose step was running, one parked
    on a receive, or a parent waiting out of memory for its child. No run of it is live any
    more, so ``cancel()`` stores the cancel in the row (``_cancel_not_running`` ->
    ``_cancel_stored``), then ``_replace_old_row`` hands the row to ``_resume_soon``, which
    starts a task in the actors' nursery, closed by now: ``RuntimeError: Nursery is closed to
    new arrivals`` out of ``cancel()`` (``_replace_old_row`` checks ``self._closed``, not
    ``self._actors_stopped``). ``_resume_begins()`` has run first, so every later ``wait()``
    or ``cancel()`` of that engine also waits for a resume that never ends.

    Users rely on close never raising a trio or trioflow internal error (as
    ``test_a_start_storing_as_the_service_is_cancelled_finds_the_engine_closed`` pins for
    ``start()``): ``True`` (the cancel is stored, the next engine compensates) or
    ``EngineClosedError``."""
    seen: list[Any] = []
    with trio.CancelScope() as outer:
        async with open_test_engine() as engine:
            for definition in (WORKS, PARKS, WAITS_ON_CHILD, SLOW_KID):
                engine.register(definition)
            await engine.start("works", instance_id="running")
            await engine.start("parks", instance_id="parked")
            await engine.start("parent", instance_id="parent")
            await trio.sleep(5)
            await _in_the_cleanup_of_a_cancel(outer, lambda: engine.cancel(target), seen)
    assert len(seen) == 1 and (seen[0] is True or isinstance(seen[0], tf.EngineClosedError)), seen
