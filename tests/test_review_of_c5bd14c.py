"""Adversarial review of c5bd14c (lost-answer retries: a row of a lost try counts as announced
once a run here has announced it, ``Run.announced``, noted in ``_unanswered`` as that run ends;
``Engine._start`` announces a found row again, ``fresh``, only if it is ``running``, ran nothing,
does not wait, and no run here announced it). On trio's MockClock, on the MemoryAdapter and on
``SQLiteAdapter`` over a real file. Every test here failed on c5bd14c (and before it); fixed by
the commit that added this file: a lost try's row counts as announced only once the store after
its ``on_start`` hook is made, a fresh retry's run keeps the note of it, and a resume of it that
comes before the caller's retry announces it.

README promises relied on. Hooks: ``on_start`` runs, with ``workflow.started``, "when the
instance starts its first step"; an instance of a workflow with an ``on_start`` hook "is stored
``pending`` until the hook has run, then ``running`` with what the hook set in the shared data,
before its first step: a crash before that store leaves an instance that never started, whose
next run runs the hook again (at least once, as a step is), so a step never runs without what
the hook sets". Storage failures: ``start()``: "retry it with the same ``instance_id``; a retry
on the same engine that finds the instance its earlier try stored, the answer lost, runs it as a
start made here, announced if it had not started". ``register()``: "instances started from now
on use it, and so do instances taken up from storage".
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


def _lost_create(base: type) -> type:
    class LostCreate(LosesCreateAnswers, base):  # type: ignore[misc, valid-type]
        """Loses the answers of the first creates of the ids in ``lose``. While ``down`` holds
        an id, every checkpoint of that id raises ``StorageUnavailableError`` having stored
        nothing."""

        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self.lose = set()
            self.down: set[str] = set()

        async def checkpoint(self, instance_id: str, status: Any, header: Any, records: Any, **kwargs: Any) -> Any:
            if instance_id in self.down:
                raise tf.StorageUnavailableError("storage down, nothing written")
            return await super().checkpoint(instance_id, status, header, records, **kwargs)

    return LostCreate


_LostMemory = _lost_create(MemoryAdapter)
_LostSQLite = _lost_create(SQLiteAdapter)


@pytest.fixture(params=["memory", "sqlite"])
def adapter(request: Any, tmp_path: Any) -> Any:
    return _LostMemory() if request.param == "memory" else _LostSQLite(tmp_path / "review.db")


class _Seen:
    """What ``x`` was announced with: ``on_start`` runs and ``workflow.started`` events."""

    def __init__(self) -> None:
        self.hooks: list[str] = []
        self.started: list[str] = []

    def on_start(self, ctx: tf.WorkflowContext) -> None:
        self.hooks.append(ctx.metadata.id)
        ctx.set("n", ctx.get("n") + 1)

    def listen(self, engine: Any) -> None:
        engine.events.on("workflow.started", lambda event: self.started.append(event["instance_id"]))


async def _first(ctx: tf.WorkflowContext) -> Any:
    await trio.sleep(5)
    return ctx.get("n")  # what on_start set: 1 once it has run


def _w(seen: _Seen, hooked: bool, name: str = "w") -> tf.WorkflowDefinition:
    b = tf.workflow(name).with_data({"n": 0}).step("first", _first)
    return (b.with_hooks(on_start=seen.on_start) if hooked else b).build()


async def _lost_start(engine: Any, adapter: Any) -> None:
    adapter.lose.add("x")
    with pytest.raises(tf.StorageUnavailableError):
        await engine.start("w", instance_id="x")  # stored (running: a slot, no hook), answer lost


async def test_a_hook_run_by_a_retry_whose_checkpoint_is_not_stored_runs_again_before_the_first_step(
    autojump_clock: trio.testing.MockClock, adapter: Any,
) -> None:
    """Relied on: Hooks, "a crash before that store [the one right after ``on_start``] leaves an
    instance that never started, whose next run runs the hook again ..., so a step never runs
    without what the hook sets" (a store that fails past ``storage_retry_for`` leaves it as a
    crash does: "the instance stops where it was last stored").

    Reproduction: ``w`` (``with_data({"n": 0})``, first step returns ``n``) is registered with
    no hook. ``start("w", instance_id="x")`` stores ``x`` ``running`` (a slot, no hook: not
    pending until announced) and loses its answer. ``register(w_with_on_start, replace=True)``;
    the hook sets ``n += 1``. The caller retries ``start()``: c5bd14c finds the row ``fresh``
    (``_unanswered`` says no run here announced it) and announces it: ``on_start`` runs (n=1).
    The checkpoint right after the hook cannot be stored (storage down for ``x`` past
    ``storage_retry_for``): ``x`` stops, stored ``running``, no records, n=0 in storage. Storage
    comes back; the caller retries ``start()`` again (or calls ``resume()``: same result).

    Expected: the hook's store was lost before the checkpoint after the hook, so the next run
    runs the hook again and the first step returns 1.

    What happens: the second retry takes ``x`` as started (``_unanswered`` was dropped by the
    first retry, and the row is ``running``, not ``pending``): no hook, and the first step runs
    without what the hook set and returns 0."""
    seen = _Seen()
    async with open_test_engine(adapter=adapter, storage_retry_for=5) as engine:
        engine.register(_w(seen, hooked=False))
        seen.listen(engine)
        await _lost_start(engine, adapter)
        engine.register(_w(seen, hooked=True), replace=True)
        adapter.down.add("x")
        assert await engine.start("w", instance_id="x") == "x"  # the caller's retry: fresh
        await trio.sleep(30)  # the hook ran; the checkpoint after it failed past storage_retry_for
        adapter.down.discard("x")
        stored = await adapter.load("x")
        assert stored is not None and (stored.status, len(stored.records)) == ("running", 0)
        assert seen.hooks == ["x"]
        with pytest.raises(tf.StorageUnavailableError):
            await engine.wait("x")  # stopped: "resumable by ... engine.resume()"
        assert await engine.start("w", instance_id="x") == "x"  # the caller retries again
        with trio.fail_after(600):
            done = await engine.wait("x")
    assert (done.status, done.output) == ("completed", 1), (done.status, done.output, seen.hooks, seen.started)


async def test_resume_of_a_lost_try_that_no_run_here_announced_announces_it(
    autojump_clock: trio.testing.MockClock, adapter: Any,
) -> None:
    """Relied on: Hooks, ``workflow.started`` "when the instance starts its first step"; the
    engine knows ``x`` was never announced (c5bd14c keeps ``_unanswered["x"] = {created_at:
    False}``: no run here announced it) and Storage failures says such an instance is run as a
    start made here, "announced if it had not started".

    Reproduction: ``open_test_engine(resume=False)``; ``w`` has no hook. ``start("w",
    instance_id="x")`` stores ``x`` ``running`` and loses its answer. The caller, or a
    supervisor, calls ``engine.resume()`` (README: "resumable by the next engine or
    engine.resume()"); ``x`` runs to its end. The caller's retry of ``start()`` then returns
    ``"x"``.

    Expected: one ``workflow.started`` for ``x``.

    What happens: none, ever. ``resume()`` takes the ``running`` row up as resumed
    (``_resume_one``: ``resumed=True``, ``unannounced`` False), so ``_forward`` never calls
    ``_announce_start``; the run ends with ``run.announced`` False, and the retry finds ``x``
    completed, which it cannot announce any more."""
    seen = _Seen()
    async with open_test_engine(adapter=adapter, resume=False) as engine:
        engine.register(_w(seen, hooked=False))
        seen.listen(engine)
        await _lost_start(engine, adapter)
        assert await engine.resume() == ["x"]
        with trio.fail_after(600):
            done = await engine.wait("x")
        assert await engine.start("w", instance_id="x") == "x"  # the caller's retry
    assert (done.status, seen.started) == ("completed", ["x"]), (done.status, seen.started)


async def test_resume_of_a_lost_try_runs_the_on_start_hook_registered_since_before_the_first_step(
    autojump_clock: trio.testing.MockClock, adapter: Any,
) -> None:
    """Relied on: ``register()``, instances "taken up from storage" use the new definition;
    Hooks, ``on_start`` runs when the instance starts its first step, "so a step never runs
    without what the hook sets". Storage failures: the engine's own lost try is run "as a start
    made here, announced if it had not started" (the retry does so: see
    tests/test_review_of_on_start_fixes.py; ``resume()`` does not).

    Reproduction: ``w`` is registered with no hook; ``start("w", instance_id="x")`` stores
    ``x`` ``running`` and loses its answer (``_unanswered["x"]``: not announced).
    ``register(w_with_on_start, replace=True)`` (the hook sets ``n += 1``). ``engine.resume()``
    (``resume=False`` engine) takes ``x`` up; it runs to its end; the caller's retry returns
    ``"x"``.

    Expected: ``on_start`` once and ``workflow.started`` once, before the first step, which
    returns 1 (as a retry instead of ``resume()`` gives).

    What happens: neither ever comes; the first step returns 0."""
    seen = _Seen()
    async with open_test_engine(adapter=adapter, resume=False) as engine:
        engine.register(_w(seen, hooked=False))
        seen.listen(engine)
        await _lost_start(engine, adapter)
        engine.register(_w(seen, hooked=True), replace=True)
        assert await engine.resume() == ["x"]
        with trio.fail_after(600):
            done = await engine.wait("x")
        assert await engine.start("w", instance_id="x") == "x"  # the caller's retry
    assert (done.status, seen.hooks, seen.started, done.output) == ("completed", ["x"], ["x"], 1), \
        (done.status, seen.hooks, seen.started, done.output)
