"""From a review (rr1, an adversarial re-review) of 7056aef, b14f6c0, 5d79b75 and ed945d3: the
views of an instance whose end is being stored (``before_its_end``, 5d79b75) and the views
``wait()`` gives each of its callers (with ``data``, ed945d3). Each test failed until the commit
that added this file (the last two are guards added with the fix)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import SQLiteAdapter


async def _quick(ctx: tf.WorkflowContext) -> int:
    return 1


@pytest.fixture
def quiet() -> Iterator[None]:
    """(The storage retries' warnings while the file is locked.)"""
    logger = logging.getLogger("trioflow")
    was, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = was


async def test_view_of_a_reminder_whose_end_is_being_stored_says_it_waits_for_its_timer(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, quiet: None,
) -> None:
    """A user's workflow ends with a durable timer (a reminder: ``a`` then ``wait("w",
    seconds=5)``). The timer fires while the instance's end cannot be stored yet (an operator's
    ``sqlite3`` shell holds the write lock; the engine retries). Their dashboard calls
    ``get_instance()``. README (Listing): "an end being stored shows the instance as storage
    holds it until then: the executions stored, the step the main line stood in running"; and
    (Defining workflows) a running step that waits shows "with its started_at where stored";
    ``waiting`` is ``{"timer": due}`` while a timer is waited for. Storage holds exactly that
    (status running, ``wake_at`` the due time, ``w`` begun at its stored time), and the view
    just before the timer fired said so. The user expects the same view until the end is
    stored.

    Was: the view says ``waiting`` ``None`` and ``w`` running with ``started_at`` ``None``:
    neither what storage holds nor what the view said a moment before (``before_its_end``,
    runtime/_snapshot.py, rebuilds the standing step as a bare ``StepResult`` and keeps the
    ended state's ``waiting``)."""
    path = str(tmp_path / "flows.db")
    async with tf.open_engine(adapter=SQLiteAdapter(path, busy_timeout=0.02), storage_retry_for=3600) as engine:
        engine.register(tf.workflow("reminder").step("a", _quick).wait("w", seconds=5).build())
        iid = await engine.start("reminder", 1)
        await trio.sleep(3)
        parked = await engine.get_instance(iid)
        assert parked is not None and parked.waiting is not None and "timer" in parked.waiting
        shell = sqlite3.connect(path, isolation_level=None)
        try:
            shell.execute("BEGIN IMMEDIATE")  # the operator's shell, mid-write
            await trio.sleep(5)  # the timer fired; its end cannot be stored meanwhile
            stored = shell.execute("SELECT status, next_seq, wake_at FROM trioflow_instances").fetchall()
            view = await engine.get_instance(iid)
        finally:
            shell.execute("ROLLBACK")
            shell.close()
        assert (await engine.wait(iid)).status == "completed"
    assert stored == [("running", 1, parked.waiting["timer"])]  # storage: still waiting for w's timer
    assert view is not None and view.status == "running" and view.current_step == "w"
    assert view.step_results["w"].started_at == parked.step_results["w"].started_at  # Was: None
    assert view.waiting == parked.waiting  # Was: None


async def test_view_of_an_instance_whose_end_is_being_stored_lists_no_skipped_steps(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, quiet: None,
) -> None:
    """A workflow ``a`` -> choice ``ch`` (to ``h``, else ``x``) -> ``h``; ``h`` returns while
    the end cannot be stored (an operator's shell holds the write lock). README: a step never
    reached is listed as ``skipped`` "on a completed run"; an end being stored "shows the
    instance as storage holds it until then" (a running instance standing in ``h``). The user
    expects the view's ``step_results`` to be what the running instance showed (``a``, ``ch``,
    ``h`` running), as a view read back from storage would.

    Was: ``step_results`` also holds ``x`` as ``skipped`` on an instance that says it is
    ``running`` in ``h``: ``before_its_end`` (runtime/_snapshot.py) keeps the ended view's
    skipped entries."""
    gate = trio.Event()

    async def h(ctx: tf.WorkflowContext) -> str:
        await gate.wait()
        return "H"

    wf = (tf.workflow("route").step("a", _quick)
          .choice("ch", choices=[tf.when(lambda ctx: True, next="h")], default="x")
          .step("x", _quick, end=True).step("h", h).build())
    path = str(tmp_path / "flows.db")
    async with tf.open_engine(adapter=SQLiteAdapter(path, busy_timeout=0.02), storage_retry_for=3600) as engine:
        engine.register(wf)
        iid = await engine.start("route", 1)
        await trio.sleep(1)
        running = await engine.get_instance(iid)
        shell = sqlite3.connect(path, isolation_level=None)
        try:
            shell.execute("BEGIN IMMEDIATE")
            gate.set()
            await trio.sleep(1)  # h returned; its end cannot be stored meanwhile
            view = await engine.get_instance(iid)
        finally:
            shell.execute("ROLLBACK")
            shell.close()
        done = await engine.wait(iid)
    assert done.status == "completed" and done.step_results["x"].status == "skipped"
    assert running is not None and sorted(running.step_results) == ["a", "ch", "h"]
    assert view is not None and view.status == "running" and view.current_step == "h"
    assert sorted(view.step_results) == ["a", "ch", "h"]  # Was: ['a', 'ch', 'h', 'x'] (x skipped)


async def test_two_callers_waiting_for_one_instance_get_views_that_do_not_share_values(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two request handlers ``await engine.wait(iid)`` for the same subscription (a page and
    an API call). One redacts its view before answering: it removes the card from
    ``view.data["payment"]`` (the shared data, new in ed945d3) and from ``view.output``.
    README (Views): "A view is a snapshot: changing it changes nothing." The user expects the
    other handler's view to still hold the card.

    Was: the other handler's view lost it too: ``wait()`` returns ``to_instance(run.state)``
    of the finished run (runtime/_engine.py, ``Engine.wait``) to every waiter, and
    ``data=dict(state.data)`` (runtime/_snapshot.py, ``to_instance``) copies only the top
    mapping: both views hold the same nested values (and the same ``output`` and ``input``)."""
    async def subscribe(ctx: tf.WorkflowContext) -> dict[str, object]:
        ctx.set("payment", {"card": "4242", "plan": "gold"})
        await trio.sleep(1)
        return {"card": "4242", "period": 1}

    got: list[tf.WorkflowInstance] = []
    async with tf.open_engine() as engine:
        engine.register(tf.workflow("sub").step("s", subscribe).build())
        iid = await engine.start("sub", {"customer": "c1"})

        async def waiter() -> None:
            got.append(await engine.wait(iid))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            nursery.start_soon(waiter)
    first, second = got
    del first.data["payment"]["card"]  # the first handler redacts its own view
    del first.output["card"]
    assert second.data["payment"] == {"card": "4242", "plan": "gold"}  # Was: {'plan': 'gold'}
    assert second.output == {"card": "4242", "period": 1}  # Was: {'period': 1}


# -- guards added with the fix -------------------------------------------------------------------


async def test_listing_an_instance_whose_end_is_being_stored_agrees_with_get_instance(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, quiet: None,
) -> None:
    """``get_instances`` builds the view of an instance whose end is being stored from the row
    it read, as ``get_instance`` does: the reminder still waits for its timer; and the shared
    data is as it stands (README: "its shared data as it stands"), here what ``b`` set as the
    timer fired, while ``b`` shows running (it is not stored yet)."""
    async def b(ctx: tf.WorkflowContext) -> str:
        ctx.set("reminded", True)
        return "sent"

    path = str(tmp_path / "flows.db")
    async with tf.open_engine(adapter=SQLiteAdapter(path, busy_timeout=0.02), storage_retry_for=3600) as engine:
        engine.register(tf.workflow("reminder").step("a", _quick).wait("w", seconds=5).step("b", b).build())
        iid = await engine.start("reminder", 1)
        await trio.sleep(3)
        parked = await engine.get_instance(iid)
        shell = sqlite3.connect(path, isolation_level=None)
        try:
            shell.execute("BEGIN IMMEDIATE")
            await trio.sleep(5)  # the timer fired and b ran; nothing of it can be stored meanwhile
            view = await engine.get_instance(iid)
            listed = await engine.get_instances()
        finally:
            shell.execute("ROLLBACK")
            shell.close()
        done = await engine.wait(iid)
    assert parked is not None and view is not None and done.status == "completed"
    assert listed == [view]
    assert (view.status, view.current_step, view.waiting) == ("running", "w", parked.waiting)
    assert [r.id for r in view.history] == ["a#1"] and view.output is None and view.completed_at is None
    assert view.data == {"reminded": True} == done.data


async def test_views_wait_gives_share_no_input_nor_history_output(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each ``wait()`` caller's view is its own in every value, not only ``data`` and
    ``output``: the input, and the outputs and inputs the history holds. Changing them changes
    neither another caller's view nor what a later ``get_instance`` reads."""
    async def order(ctx: tf.WorkflowContext) -> dict[str, object]:
        await trio.sleep(1)
        return {"lines": [1, 2]}

    got: list[tf.WorkflowInstance] = []
    async with tf.open_engine() as engine:
        engine.register(tf.workflow("o").step("s", order)
                        .task("t", job=lambda order: order, input=lambda ctx: ctx.steps["s"]).build())
        iid = await engine.start("o", {"customer": ["c1"]})

        async def waiter() -> None:
            got.append(await engine.wait(iid))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(waiter)
        first, *others = got
        first.input["customer"].append("c2")
        first.history[0].output["lines"].append(3)
        first.history[1].input["lines"].clear()
        later = await engine.get_instance(iid)
    for view in [*others, later]:
        assert view is not None
        assert view.input == {"customer": ["c1"]}
        assert view.history[0].output == view.history[1].input == view.output == {"lines": [1, 2]}
