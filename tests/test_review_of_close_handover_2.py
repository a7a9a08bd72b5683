"""A second adversarial review of the fixes from the review of engines closing (6df97be: a
child's end notice stored while its parked parent's row is read counts as a signal stored
meanwhile; 0da29e7: the cleanup of an engine whose scope was cancelled, and resume() lifting
the hold on children stored again).

Promises under review (SPEC §13/§14, docs/waiting.md, docs/fanout.md): a parent finishes once
its children have; no child runs twice; ``wait()`` returns or raises ``EngineClosedError``;
no trio internal error escapes an engine call.

Every test here fails on main at 6df97be. Everything runs on trio's MockClock, with storage
delays and failures fixed by the test (no randomness).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine

from handover_setups import SlowCreate, resumed_while_the_child_is_stored_again

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


# -- helpers --------------------------------------------------------------------------------------


async def _kid_step(ctx: tf.WorkflowContext) -> Any:
    await trio.sleep(ctx.input)
    return ctx.input


def _items(ctx: tf.WorkflowContext) -> list[Any]:
    return list(ctx.input)


KID = tf.workflow("kid").step("k", _kid_step).build()
#: A parent that maps its input's items to children (each sleeps its item's seconds).
MAP_OF_KIDS = tf.workflow("parent").map(
    "m", items=_items, branch=tf.branch("b").child("c", workflow="kid").build()).build()


async def _assert_the_parent_finishes(engine: tf.Engine, adapter: MemoryAdapter) -> None:
    """Parent ``p`` of MAP_OF_KIDS completes within 600 s; else say where its row stands."""
    done = None
    with trio.move_on_after(600):
        done = await engine.wait("p")
    row = adapter._load("p")
    assert row is not None
    held = [name for _, name, _ in row.signals]
    assert done is not None and (done.status, done.output) == ("completed", [10, 10.5]), (
        f"the parent hangs: its row is {row.status}, wake_at={row.wake_at}, holding {held}")


class _SlowSignalsOnceArmed(MemoryAdapter):
    """Once armed, the next read of ``slow_signals``'s pending signals takes ``delay`` seconds
    (answered with what storage held when asked)."""

    slow_signals: str | None = None
    delay = 0.0
    _armed = False

    async def signals(self, instance_id: str) -> Any:
        found = await super().signals(instance_id)
        if instance_id == self.slow_signals and self._armed:
            self._armed = False
            await trio.sleep(self.delay)
        return found


class LostEndAnswer(_SlowSignalsOnceArmed):
    """The checkpoint storing the end of instance ``lose_for`` is stored, but its answer is
    lost (``StorageUnavailableError``, as a commit whose reply never came back): the run
    tries it again, finds it stored (``CheckpointConflictError``, then a read back), and
    goes on. The first read of ``slow_signals``'s pending signals after that takes
    ``delay`` seconds (answered with what storage held when asked). Every write all or
    nothing."""

    lose_for: str | None = None

    async def checkpoint(self, instance_id: str, status: Any, *args: Any, **kwargs: Any) -> Any:
        stored = await super().checkpoint(instance_id, status, *args, **kwargs)
        if instance_id == self.lose_for and status in ("completed", "failed", "cancelled"):
            self.lose_for, self._armed = None, True
            raise tf.StorageUnavailableError("the answer was lost (the checkpoint is stored)")
        return stored


# -- a child's end whose checkpoint's answer was lost, its parent leaving memory ----------------


@pytest.mark.trio
async def test_a_parent_leaving_memory_as_a_lost_answer_childs_end_is_read_for_it_finishes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A parent maps two children, which end at 10 s and 10.5 s; it waits out of memory, and is
    in memory again at 10 s (its children's check time, as the first one ends), takes that
    end, waits for the second one in memory, and leaves memory again (``PARK_AFTER``, 1 s) at
    11 s. The second child's end checkpoint is stored at 10.5 s, but
    its answer is lost; the child's run tries again, finds it stored, and has no seq for the
    notice: ``EngineChildren.deliver_notice`` hands nothing to the parent's run (live then)
    and leaves it to ``EngineChildren._ended`` (``ended_soon``), which reads the parent's
    pending signals (2 s here) and hands them to the run it found live when it began. By then
    that run has parked and left memory (its park checkpoint stored ``wake_at`` infinite,
    the notice pending in its row): ``Run.deliver_stored`` on a run that is over keeps the
    notice for nobody, and nothing wakes the parked parent.

    Users rely on a parent finishing once its children have (SPEC §14), on storage whose
    answers may be lost (the run retries its checkpoint for that very case); instead the
    parent stays parked for ever, its row holding the child's end notice (only a restart's
    resume takes it up)."""
    adapter = LostEndAnswer()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(KID)
        engine.register(MAP_OF_KIDS)
        await engine.start("parent", [10, 10.5], instance_id="p")
        await trio.sleep(0.5)
        parent = await engine.get_instance("p")
        assert parent is not None and "p/m/#1/c#1" in parent.children  # the second item's child
        adapter.lose_for, adapter.slow_signals, adapter.delay = "p/m/#1/c#1", "p", 2.0
        await _assert_the_parent_finishes(engine, adapter)


class NoNoticeSeqs(_SlowSignalsOnceArmed):
    """``checkpoint()`` returns ``None`` always, also when it stores a child's end notice
    (docs/adapters.md: "returning ``None`` always is allowed: the engine then reads the
    signals"). The first read of ``slow_signals``'s pending signals after the end of
    ``slow_after`` is stored takes ``delay`` seconds (answered with what storage held when
    asked). Every write all or nothing."""

    slow_after: str | None = None

    async def checkpoint(self, instance_id: str, status: Any, *args: Any, **kwargs: Any) -> Any:
        await super().checkpoint(instance_id, status, *args, **kwargs)
        if instance_id == self.slow_after and kwargs.get("notify") is not None:
            self._armed = True
        return None


@pytest.mark.trio
async def test_a_parent_leaving_memory_as_its_childs_end_is_read_for_it_finishes_with_an_adapter_returning_no_seqs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The test above, with no lost answer: the adapter's ``checkpoint()`` returns ``None`` for
    a stored end notice, as docs/adapters.md allows ("the engine then reads the signals"). So
    every child's end reaches a parent in memory through ``EngineChildren._ended``, whose read
    of the parent's signals (2 s here, for the second child's end at 10.5 s) is handed to the
    run it found live when it began; the parent leaves memory at 11 s meanwhile, and the notice
    is handed to a run that is over.

    Users rely on a parent finishing once its children have, with any adapter the docs allow;
    instead it stays parked for ever, its row holding the child's end notice."""
    adapter = NoNoticeSeqs()
    adapter.slow_after, adapter.slow_signals, adapter.delay = "p/m/#1/c#1", "p", 2.0
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(KID)
        engine.register(MAP_OF_KIDS)
        await engine.start("parent", [10, 10.5], instance_id="p")
        await _assert_the_parent_finishes(engine, adapter)


# -- resume=False, then resume(): a parent cancelled while it stores its child again ------------


@pytest.mark.trio
async def test_cancelling_a_parent_that_stores_its_child_again_after_resume_cancels_that_child(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The set-up of ``test_resume_while_a_parent_stores_its_held_back_child_again_resumes_that_child``
    (tests/test_review_of_close_handover.py), the parent cancelled as it stores its child again.

    The first engine closes while a parent waits out of memory and its child's step runs (the
    child is stored ``running``). The next engine opens with ``resume=False``; at the child's
    check time (8 s in) the waker takes the parent up, and its child step stores the child
    again (a ``create()`` that takes 2 s). ``resume()`` is called meanwhile, and passes the
    child over (being stored here). Half a second later the service cancels the parent: its child
    step is cancelled mid-``create()`` (so ``_start`` never reaches the resume 0da29e7 added
    there), and the parent cancels its child: ``cancel()`` stores the cancel in the child's
    row (``_cancel_not_running``), and ``Engine._replace_old_row`` would resume it from that
    row, but returns at once when auto-resume is off (``self._leftovers is None``), though
    ``resume()`` was called: the hold lifted, nothing else will take the child up. The
    parent's ``EngineChildren.cancel`` then waits on the child and gets ``InstanceNotLiveError``
    (logged); the parent ends ``cancelled``.

    Users rely on "cancelling the parent cancels its running children" (SPEC §14) and on
    ``resume()`` having resumed every stored unfinished instance; instead the child stays
    ``running`` in storage (its cancel stored, never carried out in this engine), and
    ``wait()`` on it raises ``InstanceNotLiveError: ... call resume()`` (called already).
    (With resume() called at 3 s rather than 8 s, the child is resumed and ends cancelled.)"""
    adapter = SlowCreate()
    seen: list[Any] = []
    async with resumed_while_the_child_is_stored_again(adapter) as (engine, kid_id, resumed):
        await trio.sleep(0.5)  # the create() still in flight
        assert await engine.cancel("p") is True
        with trio.move_on_after(600):
            seen.append((await engine.wait("p")).status)
        with trio.move_on_after(600):
            try:
                seen.append((await engine.wait(kid_id)).status)
            except tf.TrioflowError as exc:
                seen.append(exc)
        kid = adapter._load(kid_id)
    assert seen == ["cancelled", "cancelled"], (
        f"resume() resumed {resumed}; the parent was cancelled, its child is {kid.status if kid else None} in"
        f" storage: {seen}")


# -- cancel() while a checkpoint whose answer was lost is tried again ---------------------------


class LostAnswer(MemoryAdapter):
    """The first checkpoint of instance ``"w"`` appending records at ``lose_at`` is stored,
    but its answer is lost (``StorageUnavailableError``); the read of the row that follows
    (the run's read-back after the retry's ``CheckpointConflictError``) takes ``delay``
    seconds. Every write all or nothing."""

    lose_at: int | None = None
    delay = 0.0
    _armed = False

    async def checkpoint(self, instance_id: str, status: Any, header: Any, records: Any, *, first_seq: int,
                         **kwargs: Any) -> Any:
        stored = await super().checkpoint(instance_id, status, header, records, first_seq=first_seq, **kwargs)
        if instance_id == "w" and first_seq == self.lose_at and records:
            self.lose_at, self._armed = None, True
            raise tf.StorageUnavailableError("the answer was lost (the checkpoint is stored)")
        return stored

    async def load(self, instance_id: str) -> Any:
        found = await super().load(instance_id)
        if instance_id == "w" and self._armed:
            self._armed = False
            await trio.sleep(self.delay)
        return found


UNDONE: list[Any] = []


async def _one(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(1)
    return "one"


async def _undo_one(ctx: tf.WorkflowContext, result: Any) -> None:
    UNDONE.append(result)


async def _two(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(100)
    return "two"


TWO_STEPS = tf.workflow("w").step("s1", _one, compensate=_undo_one).step("s2", _two).build()


@pytest.mark.trio
async def test_cancel_while_a_checkpoint_whose_answer_was_lost_is_tried_again_compensates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Step s1 (with a compensation) completes at 1 s; its checkpoint is stored, but the answer
    is lost. The run tries again after its back-off, is refused (``CheckpointConflictError``:
    the records are there) and reads the row back to see whether its first try was stored
    (``Run._stored_already``; 2 s here). ``cancel()`` comes at 1.5 s, during that read: the
    ``Cancelled`` leaves ``Run._write`` through its ``except BaseException``, which puts the
    checkpoint's records back as not stored (``not_taken``), though the first try stored
    them. The compensation's checkpoint then appends at the old place, is refused
    (``CheckpointConflictError``, not retried: no storage error came before it), and the
    instance fails "and its failure could not be stored": its actor crashes.

    Users rely on ``cancel()`` of a running instance compensating its completed steps and
    ``wait()`` returning it ``cancelled`` (SPEC: "``cancel()`` really stops the running step,
    then compensates; ``wait()`` returns once that is done"), on storage whose answers may be
    lost (the retry is there for it). Instead s1 is never compensated, the row stays
    ``running``, and ``wait()`` raises ``InstanceNotLiveError: instance 'w' failed
    (CheckpointConflictError ...) and its failure could not be stored``. (Cancelled at 3 s,
    after the read-back, the instance ends ``cancelled`` with s1 undone.) The same happens to
    a child whose parent is cancelled as its checkpoint is tried again (found by the
    exploration: the parent ends, the child stays ``running``)."""
    UNDONE.clear()
    adapter = LostAnswer()
    seen: list[Any] = []
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(TWO_STEPS)
        await engine.start("w", instance_id="w")
        await trio.sleep(0.5)
        row = adapter._load("w")
        assert row is not None
        adapter.lose_at, adapter.delay = len(row.records), 2.0  # s1's checkpoint, at 1 s
        await trio.sleep(1)  # 1.5 s: the run reads its row back
        assert await engine.cancel("w") is True
        with trio.move_on_after(600):
            try:
                seen.append((await engine.wait("w")).status)
            except tf.TrioflowError as exc:
                seen.append(exc)
        row = adapter._load("w")
    assert seen == ["cancelled"] and UNDONE == ["one"], (
        f"wait() gave {seen}; the row is {row.status if row else None}; s1 compensated with {UNDONE}")


# -- the cleanup of an engine whose scope was cancelled: register() and resume() ----------------


async def _work_long(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(100)
    return "worked"


WORKS = tf.workflow("works").step("s", _work_long).build()
PARKS = tf.workflow("parks").receive("r", signal="go").build()


@pytest.mark.trio
async def test_register_in_the_cleanup_of_a_cancelled_engine_raises_no_trio_error_and_wait_still_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An engine (auto-resume on) opens on storage an earlier engine left an instance of
    ``works`` running in. Its service registers ``parks`` and starts an instance of it; SIGTERM
    cancels the scope around the engine's block, and the service's shielded section (its
    start-up, say, or a cleanup: reads and signals still work there, and since 0da29e7
    ``wait()`` and ``cancel()`` say ``EngineClosedError``) registers ``works``.

    ``Engine.register`` hands the leftovers to ``_resume_soon``, which counts a resume in
    (``_resume_begins``) and then starts it in the actors' nursery, closed by now: ``RuntimeError:
    Nursery is closed to new arrivals`` out of ``register()`` (it checks ``_closed``, not
    ``_actors_stopped``, as ``_replace_old_row`` did before 0da29e7). The resume counted never
    ends, so every later ``wait()`` of that engine waits on ``_resumes_settled`` for ever,
    even for the parked instance ``wait()`` answered ``EngineClosedError`` for a moment before.

    Users rely on no trio internal error escaping an engine call, and on ``wait()`` returning
    or raising ``EngineClosedError`` (the review's earlier tests pin that for this very
    cleanup); instead ``register()`` raises ``RuntimeError`` and ``wait()`` hangs."""
    adapter = MemoryAdapter()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(WORKS)
        await engine.start("works", instance_id="left")
        await trio.sleep(1)  # the engine closes with it running: it is left for the next one
    seen: list[Any] = []
    with trio.CancelScope() as outer:
        async with open_test_engine(adapter=adapter) as engine:
            engine.register(PARKS)
            await engine.start("parks", instance_id="parked")
            await trio.sleep(5)
            try:
                outer.cancel()  # SIGTERM cancels the service's root
                await trio.sleep(1)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(0.1)  # any await of the shielded section: the actors stop meanwhile
                    try:
                        engine.register(WORKS)
                        seen.append("registered")
                    except Exception as exc:  # noqa: BLE001 (what it raises is what the test looks at)
                        seen.append(exc)
                    with trio.move_on_after(50) as waited:
                        try:
                            seen.append(await engine.wait("parked"))
                        except Exception as exc:  # noqa: BLE001
                            seen.append(exc)
                    if waited.cancelled_caught:
                        seen.append("wait('parked'): no answer after 50 s")
    assert len(seen) == 2 and (seen[0] == "registered" or isinstance(seen[0], tf.EngineClosedError)) \
        and isinstance(seen[1], tf.EngineClosedError), seen


async def _kid_long(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(100)
    return "kid"


SLOW_KID = tf.workflow("slow-kid").step("k", _kid_long).build()
WAITS_ON_CHILD = tf.workflow("parent").child("c", workflow="slow-kid").build()


@pytest.mark.trio
async def test_resume_in_the_cleanup_of_a_cancelled_engine_with_an_unreadable_child_raises_no_trio_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """SIGTERM cancels the scope around the engine's block while a parent waits for its child;
    the child's stored row cannot be read by this release (a newer release wrote it: a
    rolled-back deploy; here its header is damaged). The service's shielded cleanup calls
    ``resume()`` (it says ``[]`` otherwise: nothing runs once the actors stopped).

    ``Engine._resume`` goes on while the actors are stopped (it checks ``_closed`` only); the
    child's row fails to decode in ``_resume_one`` before its ``_actors_stopped`` check, and
    ``_refuse_unreadable`` tells the parent through ``EngineChildren.unreadable``, which starts
    a task in the actors' nursery, closed by now (``_refuse_unreadable`` checks ``_closed``,
    not ``_actors_stopped``): ``RuntimeError: Nursery is closed to new arrivals`` out of
    ``resume()``.

    Users rely on no trio internal error escaping an engine call: ``resume()`` there returns
    (``[]``) or raises ``EngineClosedError``."""
    adapter = MemoryAdapter()
    seen: list[Any] = []
    with trio.CancelScope() as outer:
        async with open_test_engine(adapter=adapter) as engine:
            engine.register(SLOW_KID)
            engine.register(WAITS_ON_CHILD)
            await engine.start("parent", instance_id="p")
            await trio.sleep(5)
            parent = await engine.get_instance("p")
            assert parent is not None and len(parent.children) == 1
            kid_id = parent.children[0]
            try:
                outer.cancel()  # SIGTERM cancels the service's root
                await trio.sleep(1)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(0.1)  # any await of the cleanup: the actors stop meanwhile
                    adapter._rows[kid_id].header = b"\x93damaged"  # as a newer release's row reads here
                    with trio.move_on_after(50):
                        try:
                            seen.append(await engine.resume())
                        except Exception as exc:  # noqa: BLE001 (what it raises is what the test looks at)
                            seen.append(exc)
    assert len(seen) == 1 and (seen[0] == [] or isinstance(seen[0], tf.EngineClosedError)), seen


# -- an engine closing while a checkpoint whose answer was lost is tried again --------------------


class LostMapAnswer(MemoryAdapter):
    """The next checkpoint of instance ``"w"`` that appends records once ``lose_next`` is set is
    stored, but its answer is lost (``StorageUnavailableError``); the read of its row that
    follows (the run's read-back) takes ``delay`` seconds. Every write all or nothing."""

    lose_next = False
    delay = 0.0
    _armed = False

    async def checkpoint(self, instance_id: str, status: Any, header: Any, records: Any, **kwargs: Any) -> Any:
        stored = await super().checkpoint(instance_id, status, header, records, **kwargs)
        if instance_id == "w" and self.lose_next and records:
            self.lose_next, self._armed = False, True
            raise tf.StorageUnavailableError("the answer was lost (the checkpoint is stored)")
        return stored

    async def load(self, instance_id: str) -> Any:
        found = await super().load(instance_id)
        if instance_id == "w" and self._armed:
            self._armed = False
            await trio.sleep(self.delay)
        return found


async def _sleep_item(ctx: tf.WorkflowContext) -> Any:
    await trio.sleep(ctx.item)
    return ctx.item


MAP_OF_STEPS = tf.workflow("w").map("m", items=_items, branch=tf.branch("b").step("s", _sleep_item).build()).build()


@pytest.mark.trio
async def test_an_engine_closing_while_a_lost_answers_checkpoint_is_tried_again_raises_nothing_out_of_its_block(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A map of three items (steps of 1 s, 1.5 s, 50 s). Item 0's checkpoint at 1 s is stored,
    but its answer is lost; the run tries again, is refused (the record is there) and reads its
    row back (2 s here). Item 1 ends at 1.5 s; its checkpoint waits for the one in flight. The
    service leaves the engine's block at 1.7 s (a redeploy): the read-back is cancelled, and
    ``Run._write``'s ``except BaseException`` puts item 0's record back as not stored
    (``not_taken``), though storage holds it. Item 1's checkpoint, written as the run stops
    (shielded), then appends item 0's record again at its old place: ``CheckpointConflictError``,
    raised beside the ``Cancelled`` of the close; ``Engine._instance_actor`` lets a group that
    holds a ``Cancelled`` go on (``goes_on``) as if it were only the close, and the conflict
    leaves ``open_engine``'s block as an ``ExceptionGroup``.

    Users rely on leaving the block closing the engine quietly (the next engine resumes what
    is stored), on storage whose answers may be lost (the run's retry is there for it);
    instead the service's ``async with`` raises a storage error group it cannot act on."""
    adapter = LostMapAnswer()
    seen: list[Any] = []
    try:
        async with open_test_engine(adapter=adapter) as engine:
            engine.register(MAP_OF_STEPS)
            await engine.start("w", [1, 1.5, 50], instance_id="w")
            await trio.sleep(0.5)
            adapter.lose_next, adapter.delay = True, 2.0  # item 0's checkpoint, at 1 s
            await trio.sleep(1.2)  # 1.7 s: the run reads its row back, item 1's checkpoint waits
        seen.append("closed")
    except BaseException as exc:  # noqa: BLE001 (what leaves the block is what the test looks at)
        seen.append(exc)
    assert seen == ["closed"], seen
