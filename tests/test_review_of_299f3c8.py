"""Adversarial review of 299f3c8 (delayed starts: the store after a delayed start's ``on_start``
hook counts as announcing it; a delayed start cancelled before it ran never starts, even past its
start time; ``resume()`` tells the waker to look again). On trio's MockClock
(``autojump_clock``), on the MemoryAdapter and on ``SQLiteAdapter`` over a real file; restarts
are two ``open_test_engine`` on one adapter.

README promises relied on. Hooks: ``on_start`` and ``workflow.started`` come "when the instance
starts its first step: a delayed start's once its delay is over (again after a restart that
came before that start was stored)", and "(started without a delay: a delayed one's start is
stored once it is announced ...)": a restart after the start was announced and stored does
not announce it again. docs/waiting.md, Delayed starts: the instance "runs its first step at
that time, even if the engine restarted in between"; ``open_engine(resume=False)`` "holds back
only the instances an earlier engine left in flight (mid-step) ...; a waiting instance is woken
as it falls due".

Found sound (no test here): the new ``checkpoint_if_cancelled`` fires only for cancels that
should stop the start: an engine closing during the wait, in the waker's early hold
(``WAKE_AHEAD``), or right at the start time leaves the row as stored and the next engine starts
it on time, hook once, data kept; ``cancel()`` before the start time (parked, in memory, held
early, queued behind ``max_running=1``, transactional) ends it ``cancelled`` with no
``started_at``, no hook, no ``workflow.started``, and one after it started compensates; the
workflow timeout counts from the start; ``resume()`` in a loop (also concurrently, and through
the waker's early take-up window) never takes a delayed start up twice and returns ``[]`` for
rows left to the waker.

Both tests failed at 299f3c8 (and before it). The first was fixed by the commit that added this
file: a delayed start's start is stored once it is announced, whatever its delay (a short one,
waited in memory, stored it only with a timeout or a transaction). The second was a strict
xfail until ``create(wake_at=)`` (a delayed start's row waits from its creation on).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine


@pytest.fixture(params=["memory", "sqlite"])
def adapter(request: Any, tmp_path: Any) -> Any:
    if request.param == "memory":
        return MemoryAdapter()
    return SQLiteAdapter(str(tmp_path / "db.sqlite"))


class _Seen:
    def __init__(self) -> None:
        self.hooks: list[str] = []
        self.started: list[str] = []
        self.firsts: list[float] = []


def _w(seen: _Seen, *, hooked: bool) -> tf.WorkflowDefinition:
    """A workflow with no shared data (``with_data`` not used), no timeout; its first step runs
    5 s; ``hooked``: an ``on_start`` hook that only records that it ran."""

    async def first(ctx: tf.WorkflowContext) -> None:
        seen.firsts.append(trio.current_time())
        await trio.sleep(5)

    async def second(ctx: tf.WorkflowContext) -> str:
        return "done"

    def on_start(ctx: tf.WorkflowContext) -> None:
        seen.hooks.append(ctx.metadata.id)

    b = tf.workflow("w").step("first", first).step("second", second)
    return (b.with_hooks(on_start=on_start) if hooked else b).build()


def _listen(engine: Any, seen: _Seen) -> None:
    engine.events.on("workflow.started", lambda event: seen.started.append(event["instance_id"]))


@pytest.mark.parametrize("hooked", [True, False], ids=["on_start hook without data", "no hook"])
async def test_a_short_delayed_start_restarted_during_its_first_step_is_announced_again(
    autojump_clock: trio.testing.MockClock, adapter: Any, hooked: bool,
) -> None:
    """Relied on: Hooks, ``on_start`` and ``workflow.started`` come once, when a delayed start's
    delay is over, "again after a restart that came before that start was stored" only; "a
    delayed one's start is stored once it is announced"; ``started_at`` is when it started.

    Reproduction: a workflow without shared data and without a timeout (with an ``on_start``
    hook that sets nothing, or with no hook). ``start("w", {}, delay=0.5)``: the run waits in
    memory (shorter than ``PARK_AFTER``), is announced at t=0.5 and runs its 5 s first step.
    The engine closes at t=2.5, during that step, long after the start was announced. A second
    engine on the same adapter resumes it.

    Expected: the start was announced and (as the README says) stored: the next engine runs the
    first step again (at least once) but neither ``on_start`` nor ``workflow.started`` comes a
    second time, and ``started_at`` is 0.5 s after creation. The same workflow with
    ``delay=10`` (parked, then woken) gets exactly that.

    What happens: both come a second time (hook twice, two ``workflow.started``) and
    ``started_at`` is the second engine's take-up time (2.5 s after creation). The start is never
    stored before the first step: after ``_announce_start`` (which stores only when the hook
    may have set data: ``run.state.data or stored_status == "pending"``,
    actors/_instance.py:236-237) the delayed branch calls ``past_stored_wait``
    (actors/_instance.py:195), which stores only if ``run.stored_wake_at is not None``
    (actors/_wait.py:73); a fresh short delayed start's run never stored a wake time
    (``stored_wake_at`` stays None: the created row has ``wake_at`` None), so the row still says
    ``waiting={"start": ...}`` and the next engine takes the delayed branch again
    (actors/_instance.py:181-190), announcing it anew. (A long delay is woken with
    ``stored_wake_at`` NaN, runtime/_engine.py:1519, and does store its start.)"""
    seen = _Seen()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_w(seen, hooked=hooked))
        _listen(engine, seen)
        iid = await engine.start("w", {}, delay=0.5)
        await trio.sleep(2.5)  # announced at 0.5; its first step runs
        assert len(seen.firsts) == 1 and len(seen.started) == 1
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_w(seen, hooked=hooked))
        _listen(engine, seen)
        with trio.fail_after(600):
            done = await engine.wait(iid)
    assert done.status == "completed"
    assert done.started_at is not None
    assert (len(seen.hooks), len(seen.started)) == ((1 if hooked else 0), 1), (seen.hooks, seen.started)
    assert abs(done.started_at - done.created_at - 0.5) < 0.1, done.started_at - done.created_at


async def test_a_short_delayed_start_never_starts_in_an_engine_opened_with_resume_false(
    autojump_clock: trio.testing.MockClock, adapter: Any,
) -> None:
    """Relied on: docs/waiting.md, Delayed starts: the instance "runs its first step at that
    time, even if the engine restarted in between"; ``open_engine(resume=False)`` "holds back
    only the instances an earlier engine left in flight (mid-step), until ``engine.resume()``
    ...; a waiting instance is woken as it falls due" (README: "instances waiting out of memory
    on a timer ... are woken when due either way").

    Reproduction: ``start("w", {}, delay=0.5)``; the engine closes at once (the instance has run
    nothing: it waits for its start). A second engine on the same adapter, opened with
    ``resume=False``, registers ``w`` and waits 100 s.

    Expected: it starts at its start time, as it does with ``delay=10`` under the very same
    ``resume=False`` engine (the waker takes that one up at t=10).

    A strict xfail until the commit that removed its mark (``create(wake_at=)``: a delayed
    start's row waits from its creation on). What happened: it never started (``wait()`` still blocks after 100 s): a delayed start shorter
    than ``PARK_AFTER`` is created with no ``wake_at`` in its row (it waits in memory, see
    ``Run.persist``'s ``wake`` and ``_wait_stored``, actors/_wait.py:80-100), so the next engine
    treats it as an instance left mid-step, held back by ``resume=False``, not as a waiting one
    the waker wakes when due. Whether a delayed start starts after a restart with
    ``resume=False`` depends on whether its delay was over or under one second."""
    ran: list[float] = []

    async def s(ctx: tf.WorkflowContext) -> None:
        ran.append(trio.current_time())

    def make() -> tf.WorkflowDefinition:
        return tf.workflow("w").step("s", s).build()

    async with open_test_engine(adapter=adapter) as engine:
        engine.register(make())
        iid = await engine.start("w", {}, delay=0.5)
    async with open_test_engine(adapter=adapter, resume=False) as engine:
        engine.register(make())
        done = None
        with trio.move_on_after(100):
            done = await engine.wait(iid)
    assert done is not None and done.status == "completed", ("never started", ran)
