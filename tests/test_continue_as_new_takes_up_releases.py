"""A ``continue_as_new`` step's next run starts on the definition registered now (README,
"Continue as new"): ``register(replace=True)`` reaches an instance that loops for ever at its
next run, in memory or not, as a Temporal workflow's continue-as-new runs the latest code. What
the run under way does stays its own definition's; a replacement whose jobs are not registered
yet, or that is transactional, is not taken up by the continue (the run goes on as it was)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

import trioflow as tf
from storages import storage  # noqa: F401  (a fixture: the tests taking it run on both adapters)
from trioflow.adapters import MemoryDriver
from trioflow.testing import open_test_engine

DAY = 86_400.0


def _more(last: int) -> tf.Choice:
    return tf.Choice(condition=lambda ctx: ctx.input < last, next="again")


def _loop(version: str, seen: list[tuple[str, int]], released: trio.Event | None = None, *,
          last: int = 2) -> tf.WorkflowBuilder:
    """A loop whose ``work`` notes its version and run number (its input), held at ``gate``
    until ``released`` is set (none: not held), continuing with the next number until ``last``."""
    async def work(ctx: Any) -> None:
        seen.append((version, ctx.input))

    async def gate(ctx: Any) -> None:
        if released is not None:
            await released.wait()

    return (tf.workflow("loop").step("work", work).step("gate", gate)
            .choice("more", choices=[_more(last)], default="done")
            .continue_as_new("again", input=lambda ctx: ctx.input + 1)
            .succeed("done", output=lambda ctx: [version, ctx.input]))


async def test_the_next_run_starts_on_the_definition_registered_while_the_run_went_on(
    storage: Callable[[], Any], autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[str, int]] = []
    released = trio.Event()
    ended: list[Any] = []
    async with open_test_engine(adapter=storage()) as engine:
        engine.register(_loop("v1", seen, released).build())
        iid = await engine.start("loop", 0)
        await trio.sleep(1)  # (held at its gate, in memory, its first run on v1)
        engine.register(_loop("v2", seen).with_hooks(on_complete=ended.append).build(), replace=True)
        released.set()
        done = await engine.wait(iid)
    # The first run ends as it began, on v1; the next ones run v2's steps, hooks included.
    assert seen == [("v1", 0), ("v2", 1), ("v2", 2)]
    assert (done.status, done.output, done.runs) == ("completed", ["v2", 2], 2)
    assert [result.output for result in ended] == [["v2", 2]]


async def test_the_taken_up_definitions_timeout_counts_from_the_instances_first_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """v1 has no timeout; v2, registered five days into the first run, times out at seven days:
    counted from the instance's first start, as it is across runs and at a resume."""
    released = trio.Event()

    async def gate(ctx: Any) -> None:
        await released.wait()

    async def slow(ctx: Any) -> None:
        await trio.sleep(100 * DAY)

    v1 = (tf.workflow("loop").step("gate", gate).choice("more", choices=[_more(1)], default="done")
          .continue_as_new("again", input=lambda ctx: ctx.input + 1).succeed("done").build())
    v2 = tf.workflow("loop").step("slow", slow).with_timeout(7 * DAY).build()
    async with open_test_engine() as engine:
        engine.register(v1)
        iid = await engine.start("loop", 0)
        await trio.sleep(5 * DAY)
        engine.register(v2, replace=True)
        released.set()
        done = await engine.wait(iid)
        ended_at = trio.current_time()
    assert (done.status, done.runs, done.error_name) == ("timed_out", 1, "WorkflowTimeoutError")
    assert 7 * DAY <= ended_at < 7 * DAY + 1


async def test_a_replacement_whose_jobs_are_not_registered_yet_is_not_taken_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[str, int]] = []
    released = trio.Event()
    async with open_test_engine() as engine:
        engine.register(_loop("v1", seen, released).build())
        iid = await engine.start("loop", 0)
        await trio.sleep(1)
        engine.register(tf.workflow("loop").task("charge", job="charge-v2").build(), replace=True)
        released.set()
        done = await engine.wait(iid)
    # (Its next run would need a job no one registered: it goes on as it was.)
    assert seen == [("v1", 0), ("v1", 1), ("v1", 2)]
    assert (done.status, done.output) == ("completed", ["v1", 2])


async def test_a_transactional_replacement_is_not_taken_up_by_a_run_under_way(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A transactional run holds the driver's transaction from its first step, which a run under
    way (continuing in its own actor) does not open: it goes on as it was."""
    seen: list[tuple[str, int]] = []
    released = trio.Event()

    async def work(ctx: Any) -> None:
        seen.append(("v2", ctx.input))

    async with open_test_engine(driver=MemoryDriver()) as engine:
        engine.register(_loop("v1", seen, released).build())
        iid = await engine.start("loop", 0)
        await trio.sleep(1)
        engine.register(tf.workflow("loop").step("work", work).transactional().build(), replace=True)
        released.set()
        done = await engine.wait(iid)
    assert seen == [("v1", 0), ("v1", 1), ("v1", 2)]
    assert (done.status, done.output) == ("completed", ["v1", 2])
