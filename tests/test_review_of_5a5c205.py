"""Adversarial review of 5a5c205 (lost-answer retries: ``Run.announced`` is False during the
store right after the ``on_start`` hook; a fresh retry keeps its ``Engine._unanswered`` note;
``_instance_actor`` drops the note once the row's end is stored, else marks it announced;
``_resume_one`` announces a lost try's row no run here announced). On trio's MockClock, on the
MemoryAdapter and on ``SQLiteAdapter`` over a real file. Every test here failed at 5a5c205; fixed
by the commit that added this file: the store after the hook of a row stored pending counts as
announcing it (its status says whether it was made); a retry that takes up a pending row of its
own keeps the note until the run announces it; a child step done storing its child leaves the
note to the child's run.

README promises relied on. Hooks: ``on_start`` and ``workflow.started`` come "when the instance
starts its first step"; an instance of a workflow with an ``on_start`` hook "is stored
``pending`` until the hook has run, then ``running`` with what the hook set in the shared data,
before its first step: a crash before that store leaves an instance that never started, whose
next run runs the hook again (at least once, as a step is), so a step never runs without what
the hook sets". Storage failures: an instance whose storage stays unusable "stops where it was
last stored, resumable by the next engine or ``engine.resume()``"; ``start()``: "retry it with
the same ``instance_id``; a retry on the same engine that finds the instance its earlier try
stored, the answer lost, runs it as a start made here, announced if it had not started".
``register()``: instances "taken up from storage" use the definition registered now.

* ``test_resume_then_retry_does_not_run_on_start_again_once_its_checkpoint_is_stored``: a
  regression of 5a5c205 (passes on c5bd14c).
* The other two: gaps 5a5c205's fix leaves (they fail on c5bd14c too): the note it now keeps
  for a fresh retry is still dropped by a retry that is not fresh, and by a child step once it
  has stored its child.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine

from lost_answers import LosesCreateAnswers
from test_review_of_c5bd14c import _Seen, _w


def _storage(base: type) -> type:
    class Storage(LosesCreateAnswers, base):  # type: ignore[misc, valid-type]
        """Loses the answers of the first creates of the ids in ``lose`` (``lose_next_but``: of
        the next create of an id other than it, calling ``on_lost(id)`` first). For an id in
        ``lost_all``: its first checkpoint is stored, then answered ``StorageUnavailableError``
        (the answer lost); every later one raises, unstored. For an id in ``down``: every
        checkpoint raises, unstored."""

        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self.lose = set()
            self.lost_all: set[str] = set()
            self.down: set[str] = set()
            self._stored_once: set[str] = set()
            self.lose_next_but: str | None = None
            self.on_lost: Any = None

        async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
            if self.lose_next_but is not None and instance_id != self.lose_next_but:
                self.lose_next_but = None
                self.lose.add(instance_id)
                if self.on_lost is not None:
                    self.on_lost(instance_id)
            return await super().create(instance_id, *args, **kwargs)

        async def checkpoint(self, instance_id: str, status: Any, header: Any, records: Any, **kwargs: Any) -> Any:
            if instance_id in self.down:
                raise tf.StorageUnavailableError("storage down, nothing written")
            if instance_id in self.lost_all:
                if instance_id not in self._stored_once:
                    self._stored_once.add(instance_id)
                    await super().checkpoint(instance_id, status, header, records, **kwargs)
                raise tf.StorageUnavailableError("the answer was lost")
            return await super().checkpoint(instance_id, status, header, records, **kwargs)

    return Storage


_Memory = _storage(MemoryAdapter)
_SQLite = _storage(SQLiteAdapter)


@pytest.fixture(params=["memory", "sqlite"])
def adapter(request: Any, tmp_path: Any) -> Any:
    return _Memory() if request.param == "memory" else _SQLite(tmp_path / "review.db")


async def _block(ctx: tf.WorkflowContext) -> Any:
    await trio.sleep(10)
    return "b"


@pytest.mark.parametrize("then", ["retry", "resume"])
async def test_resume_then_retry_does_not_run_on_start_again_once_its_checkpoint_is_stored(
    autojump_clock: trio.testing.MockClock, adapter: Any, then: str,
) -> None:
    """Relied on: Hooks, ``on_start``/``workflow.started`` again only for an instance a crash
    (or lost store) left stored ``pending``, before the checkpoint after the hook; Storage
    failures, an instance whose storage stays down "stops where it was last stored" and
    ``resume()`` goes on from there; a retry announces it only "if it had not started". The
    commit's own rule: "a lost try's row counts as announced once the store after its on_start
    hook is made".

    Reproduction: ``w`` has an ``on_start`` hook (``n += 1``) from the start;
    ``open_test_engine(resume=False, storage_retry_for=5)``. ``start("w", instance_id="x")``
    stores ``x`` ``pending`` (pending until announced) and loses its answer. ``engine.resume()``
    admits it: ``workflow.started``, the hook (n=1), and the checkpoint right after the hook IS
    stored (``x`` is now ``running`` with n=1 in storage) but its answer is lost and storage
    stays down past ``storage_retry_for``: ``x`` stops. Storage comes back; the caller retries
    ``start()`` (or calls ``resume()`` again).

    Expected: the hook's checkpoint was made (storage says ``running``, n=1; a restart would go
    on from it, not announce again): ``on_start`` and ``workflow.started`` once, and the first
    step returns 1. That is what c5bd14c gave.

    What happens: both come a second time; the hook runs on top of the stored n=1 and the
    first step returns 2. 5a5c205 sets ``run.announced = False`` around that store
    (actors/_instance.py:243-245), so the failed answer leaves ``_unanswered["x"]`` False, and
    the retry (``fresh``, runtime/_engine.py:526-527) or ``_resume_one``'s new check
    (runtime/_engine.py:1459-1465) trusts the note over storage: a row created ``pending`` that
    is found ``running`` was announced (the store after its hook is what made it running)."""
    seen = _Seen()
    async with open_test_engine(adapter=adapter, storage_retry_for=5, resume=False) as engine:
        engine.register(_w(seen, hooked=True))
        seen.listen(engine)
        adapter.lose.add("x")
        with pytest.raises(tf.StorageUnavailableError):
            await engine.start("w", instance_id="x")  # stored pending (hook), answer lost
        adapter.lost_all.add("x")
        assert await engine.resume() == ["x"]
        await trio.sleep(40)  # hook run; its checkpoint stored, answer lost, then storage down
        adapter.lost_all.discard("x")
        stored = await adapter.load("x")
        assert stored is not None and (stored.status, len(stored.records)) == ("running", 0)
        assert (seen.hooks, seen.started) == (["x"], ["x"])
        if then == "retry":
            assert await engine.start("w", instance_id="x") == "x"  # the caller's retry
        else:
            await engine.resume()
        with trio.fail_after(600):
            done = await engine.wait("x")
    assert (done.status, done.output, seen.hooks, seen.started) == ("completed", 1, ["x"], ["x"]), \
        (done.status, done.output, seen.hooks, seen.started)


@pytest.mark.parametrize("shape", ["queued", "hook removed since"])
async def test_a_retry_that_finds_a_pending_row_keeps_the_note_until_its_run_announces_it(
    autojump_clock: trio.testing.MockClock, adapter: Any, shape: str,
) -> None:
    """Relied on: Storage failures, a retry "runs it as a start made here, announced if it had
    not started"; Hooks, ``workflow.started`` when the instance starts its first step.

    Reproduction ("queued"): ``max_running=1``, ``b`` holds the slot for 10 s; ``w`` has no
    hook. ``start("w", instance_id="x")`` queues: stored ``pending``, its answer lost. The
    caller retries at once: the retry finds the pending row and queues ``x`` here. At t=10 ``x``
    gets the slot; its admission store (``running``, made before it is announced, the workflow
    having no hook) is stored but its answer is lost, and storage stays down past
    ``storage_retry_for``: ``x`` stops, stored ``running`` with no records, never announced.
    Storage comes back; the caller retries again. ("hook removed since": ``w`` has an
    ``on_start`` hook, so ``x`` is stored ``pending`` without queueing;
    ``register(w_without_hook, replace=True)`` before the first retry; the rest as above.)

    Expected: ``workflow.started`` for ``x`` once (it never started). The same with
    ``resume()`` instead of the first retry works (tests/test_review_of_d175e8f.py).

    What happens: never published; ``x`` runs to its end unannounced. The first retry finds a
    ``pending`` row, not ``fresh``, and drops ``_unanswered["x"]``
    (runtime/_engine.py:528-531): 5a5c205 keeps the note only for a fresh retry, though the run
    this retry resumes announces the row too (as it is admitted) and may stop before it does.
    The next retry then has no note (``ours`` False, ``never_ran`` False) and takes the
    ``running`` row as started. (Also on c5bd14c: a gap in the fix.)"""
    seen = _Seen()
    queued = shape == "queued"
    async with open_test_engine(adapter=adapter, storage_retry_for=5, max_running=1) as engine:
        engine.register(_w(seen, hooked=not queued))
        engine.register(tf.workflow("blk").step("s", _block).build())
        seen.listen(engine)
        if queued:
            await engine.start("blk", instance_id="b")
        adapter.lose.add("x")
        with pytest.raises(tf.StorageUnavailableError):
            await engine.start("w", instance_id="x")  # stored pending, answer lost
        if not queued:
            engine.register(_w(seen, hooked=False), replace=True)
        adapter.lost_all.add("x")
        assert await engine.start("w", instance_id="x") == "x"  # the caller's retry
        await trio.sleep(40)  # admitted: its store made, the answer lost, storage down
        adapter.lost_all.discard("x")
        stored = await adapter.load("x")
        assert stored is not None and (stored.status, len(stored.records)) == ("running", 0)
        assert "x" not in seen.started
        assert await engine.start("w", instance_id="x") == "x"  # the caller retries again
        with trio.fail_after(600):
            done = await engine.wait("x")
    assert (done.status, seen.started.count("x")) == ("completed", 1), (done.status, seen.started)


async def test_a_child_whose_fresh_start_stopped_before_its_hook_checkpoint_runs_the_hook_again_on_resume(
    autojump_clock: trio.testing.MockClock, adapter: Any,
) -> None:
    """Relied on: Hooks, "a step never runs without what the hook sets" (a store after the hook
    that fails past ``storage_retry_for`` leaves the instance as a crash does, "where it was
    last stored"); ``register()``, instances taken up from storage use the definition
    registered now; Storage failures, ``engine.resume()`` resumes a stopped instance. This is
    the child-step twin of tests/test_review_of_c5bd14c.py's first test, which 5a5c205 fixed
    for ``start()``.

    Reproduction: ``p`` has one child step running ``cw`` (``with_data({"n": 0})``, first step
    returns ``n``), registered with no hook; ``open_test_engine(resume=False,
    storage_retry_for=5)``. ``start("p")``: the child ``p/c#1`` is stored ``running`` (no hook:
    not pending until announced) and the create's answer is lost; just then
    ``register(cw_with_on_start, replace=True)`` (the hook sets ``n += 1``), and storage goes
    down for the child. The child step tries again, finds its row never started (``fresh``),
    and runs it: ``on_start`` runs (n=1), and the checkpoint right after it is not stored, past
    ``storage_retry_for``: the child stops, stored ``running``, no records, n=0. Storage comes
    back; ``engine.resume()``.

    Expected: the child never got past the checkpoint after its hook, so its next run runs the
    hook again and its first step returns 1.

    What happens: the resume takes the child up as started: no hook, its first step returns 0
    (and so does ``p``'s child step). The note 5a5c205 keeps for a fresh retry's run is dropped
    as soon as the child step is done storing its child: ``run.children.release(held)``
    (actors/_child.py:213) calls ``_release_start(held, step_over=True)``, which pops
    ``_unanswered[child]`` (runtime/_engine.py:395-396) before the child's run has announced
    it; ``_resume_one``'s new check then finds no note. (Also on c5bd14c.)"""
    seen = _Seen()
    async with open_test_engine(adapter=adapter, storage_retry_for=5, resume=False) as engine:
        engine.register(_w(seen, hooked=False, name="cw"))
        engine.register(tf.workflow("p").child("c", workflow="cw").build())
        seen.listen(engine)
        lost: list[str] = []

        def on_lost(child_id: str) -> None:
            lost.append(child_id)
            engine.register(_w(seen, hooked=True, name="cw"), replace=True)
            adapter.down.add(child_id)

        adapter.lose_next_but = "p"
        adapter.on_lost = on_lost
        await engine.start("p", instance_id="p")
        await trio.sleep(30)
        (child_id,) = lost
        adapter.down.discard(child_id)
        stored = await adapter.load(child_id)
        assert stored is not None and (stored.status, len(stored.records)) == ("running", 0)
        # (Run by the child step's try, and again by each later take-up of the child while its
        # storage was down, the parent's check among them: every store after it was lost.)
        assert seen.hooks and set(seen.hooks) == {child_id}
        hooked_before = len(seen.hooks)
        await engine.resume()
        with trio.fail_after(600):
            child = await engine.wait(child_id)
            parent = await engine.wait("p")
    assert (child.status, child.output, parent.output) == ("completed", 1, 1), \
        (child.status, child.output, parent.output, seen.hooks, seen.started)
    assert len(seen.hooks) == hooked_before + 1  # (once more, by the resume: its store made)


class _GoneOnRead(MemoryAdapter):
    """The first ``create`` of ``"x"`` says the id is taken (a row there), and the read after
    finds none: deleted or purged in between."""

    refused = False

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id == "x" and not self.refused:
            self.refused = True
            return False
        return await super().create(instance_id, *args, **kwargs)


async def test_a_start_whose_row_is_gone_by_the_time_it_is_read_returns(autojump_clock: trio.testing.MockClock) -> None:
    """Found while fixing the above: a start whose create finds the id taken, and whose read
    then finds no row (deleted or purged meanwhile), returns the id as before 5a5c205, which
    raised ``UnboundLocalError`` there (its note was kept or dropped by a flag set only for a
    row found). (Since 9414396 it returns once an instance is stored under the id: before, it
    returned with nothing stored, which a start racing a purge met; test_review_of_start_and_purge.py.
    An adapter whose create refuses for ever while its load finds nothing is refused there too.)"""
    async with open_test_engine(adapter=_GoneOnRead()) as engine:
        engine.register(tf.workflow("w").step("first", _block).build())
        assert await engine.start("w", instance_id="x") == "x"
        view = await engine.get_instance("x")
        assert view is not None and view.status == "running"
