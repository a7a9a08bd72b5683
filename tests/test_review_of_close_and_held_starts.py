"""From an adversarial review of b1ac480..5f5d68c (held starts, ``_Storing``, the per-id
``_InOrder`` FIFO of ``signal()`` calls, retried starts after a lost create answer, the shielded
child store) and of the engine's close around them.

Each test here failed on 5f5d68c and is fixed by the commit that added this file: calls that
waited for a start's store went on to storage after the engine closed; failed starts nobody
would retry were remembered for the engine's life; a retried start let go of its id before it
read and resumed its own row (a cancel() meanwhile was run over, a wait() raised); a retry whose
read failed forgot the earlier tries; a retried start ran as one taken up from storage (a child
step of an unregistered workflow waited for ever); every child store was cut at 10 s, a cancel
or not. All run on a MockClock with adapter wrappers, no real sleeps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine

from lost_answers import FirstAnswerLost
from test_review_of_retried_starts import AnswerLostThenSlowLoad

one_receive = tf.workflow("one").receive("r", signal="go").build()


class SlowAnswerSQLite(SQLiteAdapter):
    """``create()`` stores the row at once, and its answer comes 5 s later (a busy database's
    commit acknowledgement)."""

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        created = await super().create(instance_id, *args, **kwargs)
        await trio.sleep(5)
        return created


async def test_calls_that_waited_for_a_start_being_stored_raise_engine_closed_once_the_engine_closed(
    autojump_clock: trio.testing.MockClock, tmp_path: Any,
) -> None:
    """README, Lifecycle: "Leaving the `async with` stops every instance's task and releases
    every waiter [...] with `EngineClosedError`; [...] `register`, `start`, `wait`, `signal`,
    `cancel` [...] after that raise `EngineClosedError`"; docs/waiting.md: calls made while a
    start is stored "store their signals one at a time, in the order they were made [...]; each
    returns once the start is stored".

    Reproduction: SQLite whose create's answer takes 5 s (the row is written at once). From
    tasks outside the engine's block (request handlers of a service whose engine closes at
    shutdown): ``start("one", instance_id="x")``; then, 0.1 s apart while it is stored,
    ``signal("x", "go", i)`` for i = 0, 1, 2, ``cancel("x")`` and the same
    ``start("one", instance_id="x")`` again (an idempotent retry by another handler). The
    block is left at 0.6 s; the store ends at 5 s.

    What happens instead: ``signal 0`` (the ``_InOrder`` lock's holder, its signal stored at
    once as the row was there) returns; every other call waited for the store, and at 5 s goes
    to storage without looking whether the engine closed meanwhile, and raises
    ``adapters.DatabaseError("... is not open (use the adapter inside open_engine)")``:
    ``signal 1``/``signal 2`` (runtime/_engine.py ``signal()``: ``if instance_id not in
    self._storing: await self._send(...)`` right after ``async with queue.lock``), ``cancel``
    (``_wake_if_waiting`` reads the row before ``cancel()``'s ``self._check_open()``) and the
    second ``start`` (``_start`` goes on to ``adapter.create`` after ``await storing.wait()``).
    (On a MemoryAdapter the two signals are stored after the close returned, and
    acknowledged, while ``signal 0``'s like call a moment before them, had its row not been
    there yet, raises ``EngineClosedError``.)"""
    results: dict[str, Any] = {}

    async def call(key: str, fn: Any, *args: Any) -> None:
        try:
            results[key] = await fn(*args)
        except Exception as exc:
            results[key] = exc

    async with trio.open_nursery() as outside:
        async with open_test_engine(adapter=SlowAnswerSQLite(tmp_path / "close.db")) as engine:
            engine.register(one_receive)
            outside.start_soon(call, "start", lambda: engine.start("one", None, instance_id="x"))
            await trio.sleep(0.1)
            for i in range(3):
                outside.start_soon(call, f"signal {i}", engine.signal, "x", "go", i)
                await trio.sleep(0.1)
            outside.start_soon(call, "cancel", engine.cancel, "x")
            await trio.sleep(0.1)
            outside.start_soon(call, "start again", lambda: engine.start("one", None, instance_id="x"))
            await trio.sleep(0.1)
    storage_errors = {key: repr(value) for key, value in results.items() if isinstance(value, tf.StorageError)}
    assert not storage_errors, sorted(storage_errors)
    assert all(isinstance(results[key], tf.EngineClosedError) for key in ("cancel", "start again")), results


class SlowCreates(MemoryAdapter):
    """``create()`` takes 5 s before it stores anything (a remote database)."""

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        await trio.sleep(5)
        return await super().create(instance_id, *args, **kwargs)


async def test_starts_abandoned_by_their_callers_leave_nothing_behind_in_a_long_lived_engine(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """tests/test_long_lived_leaks.py: "A long-lived engine holds nothing per finished
    instance"; ``Engine.wait``'s own rule for callers who give up: "Its last caller gave up (an
    HTTP handler's timeout, say): nothing is kept"; ``Engine._unanswered``: "Ids whose create
    raised here [...], with the creation times those tries stored, if they stored".

    Reproduction: storage whose create takes 5 s; 200 ``start("one")`` calls, each abandoned by
    its caller's ``move_on_after(1)`` (nothing is stored: the create is cancelled before it
    writes), as a request handler's timeout does.

    What happens instead: ``_start``'s ``except BaseException`` appends each try's creation
    time to ``self._unanswered[instance_id]``, which only a later ``_start`` of the same id
    pops: 200 entries (one per random id nobody will retry) stay for the engine's life. (A
    child whose stores failed until its parent was cancelled leaves one too, with a time per
    try.)"""
    async with open_test_engine(adapter=SlowCreates()) as engine:
        engine.register(one_receive)
        for _ in range(200):
            with trio.move_on_after(1):
                await engine.start("one")
        assert await engine.get_instances() == []
        assert len(engine._unanswered) == 0, len(engine._unanswered)


async def _twenty_seconds(ctx: tf.WorkflowContext) -> int:
    await trio.sleep(20)
    return 1


slow_one = tf.workflow("w").step("s", _twenty_seconds).build()


async def test_with_resume_false_a_cancel_racing_a_retried_start_is_not_run_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Lifecycle: "`cancel()` [...] returns `True` once that decision is stored (a
    process killed right after still compensates the instance [...])"; ``Engine.cancel``:
    "``True`` if it is now being cancelled"; README, Storage failures: a retried start "that
    finds the instance its earlier try stored, the answer lost, runs it as a start made here
    [...] whatever `resume=` says".

    Reproduction: ``open_test_engine(resume=False)``; ``start("w", instance_id="x")``'s create
    stores the row and loses its answer. The caller retries; the retry's create says the row
    exists and the retry reads it (the read's answer takes 1 s). Meanwhile ``cancel("x")``:
    ``x`` is neither live nor held, so the cancel is stored in the row (``_cancel_stored``) and
    says ``True``; with ``resume=False``, ``_replace_old_row`` leaves the row for ``resume()``.

    What happens instead: the retry then resumes ``x`` from the row it read before the cancel
    was stored (runtime/_engine.py ``_start``, not-created branch: ``existing`` from
    ``_load_fresh``, then ``_resume_one(definition, existing)``; the cancel's guard in
    ``_storing`` is gone by then), going forward over the stored cancel: ``x`` completes
    (its step ran to the end) although ``cancel()`` said ``True``. With auto-resume on, the
    cancel's ``_replace_old_row`` resumes it first and it ends ``cancelled``."""
    adapter = AnswerLostThenSlowLoad()
    async with open_test_engine(adapter=adapter, resume=False) as engine:
        engine.register(slow_one)
        with pytest.raises(tf.StorageUnavailableError):
            await engine.start("w", instance_id="x")
        adapter.slow_load = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: engine.start("w", instance_id="x"))
            await adapter.loading.wait()  # the retry reads the row it stored
            adapter.slow_load = False
            said = await engine.cancel("x")
        with trio.fail_after(100):
            ended = await engine.wait("x")
        assert (said, ended.status) == (True, "cancelled"), (said, ended.status)


class AnswerLostThenOneReadFails(FirstAnswerLost):
    """The first ``create()`` stores the row, then raises ``StorageUnavailableError`` (its
    answer lost); once ``fail_next_load`` is set, the next ``load()`` raises it (a dropped
    connection), and the ones after it read."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next_load = False

    async def load(self, instance_id: str) -> Any:
        if self.fail_next_load:
            self.fail_next_load = False
            raise tf.StorageUnavailableError("connection dropped")
        return await super().load(instance_id)


async def test_with_resume_false_a_start_retried_after_a_retry_whose_read_failed_still_runs_its_own_row(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Storage failures: "Calls you make raise at once (`start()`: retry it with the
    same `instance_id`; a retry on the same engine that finds the instance its earlier try
    stored, the answer lost, runs it as a start made here, announced if it had not started,
    whatever `resume=` says". f029359 made a start whose answer was lost more than once keep
    "every creation time its failed tries may have stored, so its retry still finds its own
    row".

    Reproduction: ``open_test_engine(resume=False)``; ``start("w", instance_id="x")`` stores the
    row and its answer is lost; the caller's first retry is told the row exists, and its read
    of the row fails (``StorageUnavailableError``, raised to the caller, as README says); the
    caller retries again, and everything answers.

    What happens instead: the first retry popped the creation times
    (``tried = self._unanswered.pop(instance_id, ())`` in ``_start``) before its read, and the
    read's failure dropped them; the second retry finds the row under no time of its own: not
    ``ours``, it is held back for ``resume()``. ``start()`` returns ``"x"``, nothing runs it,
    and ``wait("x")`` raises ``InstanceNotLiveError`` ("running in storage but not running in
    this engine"). (So does a retry whose caller gives up during that read.)"""
    adapter = AnswerLostThenOneReadFails()
    async with open_test_engine(adapter=adapter, resume=False) as engine:
        engine.register(slow_one)
        with pytest.raises(tf.StorageUnavailableError):
            await engine.start("w", instance_id="x")  # stored; its answer lost
        adapter.fail_next_load = True
        with pytest.raises(tf.StorageUnavailableError):
            await engine.start("w", instance_id="x")  # told it exists; the read of it fails
        assert await engine.start("w", instance_id="x") == "x"
        with trio.fail_after(100):
            ended = await engine.wait("x")  # raises InstanceNotLiveError
        assert ended.status == "completed"


from lost_answers import AnswerLostFor  # noqa: E402

unregistered_child = tf.workflow("w").child("c", workflow="nope").build()


async def test_a_retried_start_whose_child_workflow_is_not_registered_fails_as_a_start_made_here(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Storage failures: a retried `start()` "that finds the instance its earlier try
    stored, the answer lost, runs it as a start made here, announced if it had not started,
    whatever `resume=` says"; README, Registration: "A child step whose workflow is not
    registered fails (catchable) in a run that started here, and waits for it in a run taken
    up from storage, where a restart may have registered the parent first".

    Reproduction: ``w`` is one child step of ``"nope"``, never registered. Without a lost answer
    ``start("w", instance_id="x")`` makes ``x`` fail at once (``UnknownWorkflowError``). Here
    the start's create stores ``x`` and loses its answer (``AnswerLostFor("x")``), and the
    caller retries as README says.

    What happens instead: the retry finds its own row (``fresh``) and runs it through
    ``_resume_one``, which spawns it ``resumed=True``; ``Run.from_storage`` follows ``resumed``
    and only the announce is put right (``run.unannounced = True``): the child step takes the
    "taken up from storage" branch of ``actors/_child.py`` ``_start``
    (``await run.children.until_registered(step.workflow)``) and ``x`` waits, ``running``, for
    ever. (A child whose create's answer was lost, run through the same branch, does the same
    with a grandchild's unregistered workflow.)"""
    async with open_test_engine(adapter=AnswerLostFor("x")) as engine:
        engine.register(unregistered_child)
        with pytest.raises(tf.StorageUnavailableError):
            await engine.start("w", instance_id="x")
        await engine.start("w", instance_id="x")  # the caller's retry
        with trio.move_on_after(60):
            ended = await engine.wait("x")
            assert ended.status == "failed" and ended.error_name == "UnknownWorkflowError", ended
            return
        got = await engine.get_instance("x")
        raise AssertionError(f"x is still {got.status if got else None} a minute later")


done_kid = tf.workflow("done-kid").step("s", lambda ctx: "kid done").build()
done_dad = tf.workflow("dad").child("c", workflow="done-kid").build()


class TwelveSecondCreates(MemoryAdapter):
    """Storage that works, slowly: every ``create()`` takes 12 s before it stores (a remote
    database under load); nothing fails."""

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        await trio.sleep(12)
        return await super().create(instance_id, *args, **kwargs)


async def test_a_child_store_slower_than_ten_seconds_with_no_cancel_around_it_is_not_cut_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """docs/fanout.md, Links: "a cancel or timeout of the parent in that span lets the store
    finish first, for up to 10 s (past that the cancel goes on [...])": the 10 s bound is on a
    store a cancel or timeout is waiting for. README, Storage failures: what is retried, and
    stalls the instance past ``storage_retry_for``, is a storage call "that fails for a reason
    that may pass".

    Reproduction: every ``create()`` takes 12 s and succeeds (``start()`` of a plain workflow
    returns after 12 s); ``start("dad")``, whose one step starts child ``done-kid``; nothing
    cancels anything, and ``dad`` has no timeout.

    What happens instead: ``actors/_child.py`` ``_store_child`` gives every try a
    ``CancelScope(shield=True, deadline=now + STORE_CHILD_MOST)``, cancel or not: each create is
    cut short at 10 s (nothing stored), turned into ``StorageUnavailableError("storing child
    ... took over 10 s")`` and tried again, each try again cut at 10 s, until
    ``storage_retry_for`` (60 s) is over: ``dad`` stops, ``wait("dad")`` raising
    ``StorageUnavailableError`` ("storage stayed unavailable"), though storage never failed."""
    async with open_test_engine(adapter=TwelveSecondCreates()) as engine:
        engine.register(done_kid)
        engine.register(done_dad)
        await engine.start("dad", instance_id="p")
        with trio.fail_after(300):
            ended = await engine.wait("p")  # raises StorageUnavailableError at 97 s
        assert (ended.status, ended.output) == ("completed", "kid done")


class ChildStoreKeepsFailing(MemoryAdapter):
    """The first ``create()`` of child ``p/kid#1`` stores it and loses its answer; every later
    one raises ``StorageUnavailableError`` (the step keeps trying, backing off)."""

    def __init__(self) -> None:
        super().__init__()
        self.tries = 0

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id == "p/kid#1":
            self.tries += 1
            if self.tries == 1:
                await super().create(instance_id, *args, **kwargs)
            raise tf.StorageUnavailableError("connection dropped")
        return await super().create(instance_id, *args, **kwargs)


@asynccontextmanager
async def dad_cancelled_while_its_kid_is_stored(adapter: ChildStoreKeepsFailing) -> AsyncIterator[tf.Engine]:
    """An engine (resume=False) on ``adapter`` in which ``dad`` (instance ``p``), whose one step
    starts child ``p/kid#1``, was cancelled while its step kept trying to store the child, and
    has ended ``cancelled``."""

    async def kid_step(ctx: Any) -> int:
        return 1

    async with open_test_engine(adapter=adapter, resume=False) as engine:
        engine.register(tf.workflow("kid").step("k", kid_step).build())
        engine.register(tf.workflow("dad").child("kid", workflow="kid").build())
        await engine.start("dad", instance_id="p")
        await trio.sleep(3)
        assert adapter.tries >= 2
        assert await engine.cancel("p")
        assert (await engine.wait("p")).status == "cancelled"
        yield engine


async def test_with_resume_false_a_child_stored_before_its_parent_was_cancelled_ends_cancelled_here(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """(The review's second question, decided with the fixes.) docs/fanout.md: "Cancelling the
    parent cancels its running children"; README, Storage failures: a row this engine stored
    runs here "whatever ``resume=`` says". A child whose create stored it, its answer lost,
    while its step kept trying until its parent was cancelled, had the cancel stored in it and
    then waited, ``running``, for a ``resume()`` nobody calls (``wait()`` of it raised
    ``InstanceNotLiveError``, and the parent's cancel logged that the child "could not be
    cancelled or compensated"): its parent runs here, so it ends ``cancelled`` here."""

    async with dad_cancelled_while_its_kid_is_stored(ChildStoreKeepsFailing()) as engine:
        kid = await engine.wait("p/kid#1")
        assert (kid.status, kid.history) == ("cancelled", ())

