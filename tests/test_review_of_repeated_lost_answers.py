"""From a review of a8e93ce (ownership of a retried start's row by creation time; unannounced
runs). Each test here failed on a8e93ce because of a library bug, fixed by the commit that added this file."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


class LosesTwice(tf.adapters.MemoryAdapter):
    """The first two ``create()`` calls of ``x`` lose their answer: the first stores the row,
    then raises ``StorageUnavailableError``; the second (a retry) is refused before it writes
    (``refuse_second``) or finds the row (returns False) and then loses its answer too."""

    def __init__(self, refuse_second: bool) -> None:
        super().__init__()
        self.tries = 0
        self.refuse_second = refuse_second

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id != "x":
            return await super().create(instance_id, *args, **kwargs)
        self.tries += 1
        if self.tries == 2 and self.refuse_second:
            raise tf.StorageUnavailableError("database is locked; nothing was written")
        created = await super().create(instance_id, *args, **kwargs)
        if self.tries <= 2:
            raise tf.StorageUnavailableError("connection dropped after the write")
        return created


async def _quick(ctx: tf.WorkflowContext) -> int:
    return 1


def _workflow(starts: list[str]) -> tf.WorkflowDefinition:
    def on_start(ctx: Any) -> None:
        starts.append(ctx.metadata.id)

    return tf.workflow("w").step("s", _quick).with_hooks(on_start=on_start).build()


async def _retried_twice(refuse_second: bool) -> tuple[list[str], list[str], Any]:
    hooks: list[str] = []
    started: list[str] = []
    async with open_test_engine(adapter=LosesTwice(refuse_second), resume=False) as engine:
        engine.register(_workflow(hooks))
        engine.events.on("workflow.started", lambda e: started.append(e["instance_id"]))
        for _ in range(2):
            try:
                await engine.start("w", None, instance_id="x")
            except tf.StorageUnavailableError:
                await trio.sleep(1)
            else:
                raise AssertionError("the create was to lose its answer")
        assert await engine.start("w", None, instance_id="x") == "x"
        result: Any
        with trio.fail_after(60):
            try:
                result = (await engine.wait("x")).output
            except tf.InstanceNotLiveError as exc:
                result = f"not run: {exc}"
        return hooks, started, result


async def test_a_start_whose_answer_was_lost_twice_still_runs_its_own_row(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Storage failures: "``start()``: retry it with the same ``instance_id``; a retry
    on the same engine that finds the instance its earlier try stored, the answer lost, runs it
    as a start made here, announced if it had not started, whatever ``resume=`` says".

    Reproduction: ``open_test_engine(resume=False)``; ``start("w", instance_id="x")``: its
    ``create()`` stores the row, then raises ``StorageUnavailableError``; the caller retries:
    that ``create()`` finds the row (returns False) and loses its answer too; the caller
    retries again, and that ``start()`` returns ``"x"``.

    What happens instead: ``Engine._start`` keeps one creation time per id
    (``self._unanswered[id] = state.created_at``), overwritten by the second try's stamp, so
    the third try compares the row's ``created_at`` (the first try's) with the second try's,
    finds them different, and takes the row for an earlier engine's: held back by
    ``resume=False``, never run: ``wait("x")`` raises ``InstanceNotLiveError`` ("running in
    storage but not running in this engine"), no ``workflow.started``, ``on_start`` never runs."""
    hooks, started, result = await _retried_twice(refuse_second=False)
    assert (hooks, started, result) == (["x"], ["x"], 1)


async def test_a_start_whose_retry_wrote_nothing_still_runs_the_row_its_first_try_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README, Storage failures (as above): "a retry on the same engine that finds the
    instance its earlier try stored, the answer lost, runs it as a start made here, announced
    if it had not started, whatever ``resume=`` says".

    Reproduction: ``open_test_engine(resume=False)``; the first ``create()`` of ``x`` stores
    the row, then raises; the retry's ``create()`` is refused before writing anything
    (database locked); the third try returns ``"x"``.

    What happens instead: the refused try's ``except BaseException`` overwrites
    ``_unanswered["x"]`` with its own creation time (it stored nothing), so the third try
    finds the first try's row, compares its ``created_at`` with the refused try's, and treats
    it as an earlier engine's: held back, never run or announced."""
    hooks, started, result = await _retried_twice(refuse_second=True)
    assert (hooks, started, result) == (["x"], ["x"], 1)
