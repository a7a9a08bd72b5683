"""A review of map steps, child workflows and nested sagas (SPEC §12, §14) found one bug, in the
shared data that map items and parallel branches share: each test failed before its fix
(autojump MockClock, no real sleeps)."""
from __future__ import annotations

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


class Conn:
    """Something a job holds in ctx.data while it runs (a connection); never stored."""

    def query(self) -> str:
        return "row"


async def run_wf(adapter, wf):
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        return await engine.wait(await engine.start(wf.name))


@pytest.fixture(params=["memory", "sqlite"])
def adapter(request, tmp_path):
    return MemoryAdapter() if request.param == "memory" else SQLiteAdapter(tmp_path / "flows.db")


async def test_a_map_items_scratch_value_in_ctx_data_fails_an_innocent_sibling_item(
        autojump_clock: trio.testing.MockClock, adapter) -> None:
    """Expected (README "Values you can store": a step "that *leaves* such a value in ctx.data,
    fails with it"; ctx.data "keeps what steps put in it"): item 0 holds a scratch object in
    ctx.data while its step runs and removes it before the step ends, so no step leaves an
    unstorable value and the map completes with ["row", "fast"]. (The same run with the step
    on the main line completes: see test_passing.py.)

    Before the fix: item 1, whose step touched nothing, ends first and fails with
    ``UnencodableValueError: shared data['conn'] is a Conn`` (item 0's value is blamed on it);
    fail-fast then cancels item 0 and the map/workflow fails with that ItemError.

    Cause: actors/_lane.py ran ``run.check_data()`` over the *whole* shared dict when
    any lane's step ends; runtime/_codec.py's check_data then blamed the step that
    happened to end and restore_data() deleted the running sibling's
    value from under it."""
    async def work(ctx: tf.WorkflowContext) -> str:
        if ctx.item == "slow":
            ctx.data["conn"] = Conn()
            await trio.sleep(10)
            return ctx.data.pop("conn").query()
        await trio.sleep(5)
        return "fast"

    wf = (tf.workflow("batch")
          .map("each", items=lambda ctx: ["slow", "fast"], branch=tf.branch("b").step("w", work).build())
          .build())
    inst = await run_wf(adapter, wf)
    assert inst.status == "completed", inst.error
    assert inst.output == ["row", "fast"]


async def test_a_map_items_scratch_value_set_as_a_sibling_checkpoints_is_lost_or_blamed(
        autojump_clock: trio.testing.MockClock, adapter) -> None:
    """Same contract, other interleaving: item 0 puts its scratch value in ctx.data at t=5, the
    moment item 1's step ends. Expected: the map completes with ["row", "fast"].

    Before the fix, depending on which task trio runs first in that pass: either item 1 is failed with
    UnencodableValueError for item 0's value (as above), or item 1's check passes, and its
    checkpoint (actors/_run.py, ``_write``: "what cannot be stored is dropped, not the
    checkpoint") silently deletes ``ctx.data["conn"]`` while item 0 still runs, so item 0 then
    fails with ``KeyError: 'conn'``. Either way a step that never left an unstorable value
    fails, and which one is down to scheduler luck."""
    async def work(ctx: tf.WorkflowContext) -> str:
        if ctx.item == "slow":
            await trio.sleep(5)
            ctx.data["conn"] = Conn()
            await trio.sleep(5)
            return ctx.data.pop("conn").query()
        await trio.sleep(5)
        return "fast"

    wf = (tf.workflow("batch")
          .map("each", items=lambda ctx: ["slow", "fast"], on_error="wait-all",
               branch=tf.branch("b").step("w", work).build())
          .build())
    inst = await run_wf(adapter, wf)
    assert inst.status == "completed", inst.error
    assert inst.output == ["row", "fast"]


async def test_a_branch_that_leaves_a_value_a_running_sibling_never_wrote_is_still_blamed(
        autojump_clock: trio.testing.MockClock, adapter) -> None:
    """The other side of the fix: a step that leaves a value that cannot be stored fails, even
    while a sibling still runs (it did not write the value), and the value goes."""
    async def leaks(ctx: tf.WorkflowContext) -> str:
        ctx.data["conn"] = Conn()
        return "left it"

    async def slow(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(10)
        return "slow"

    wf = (tf.workflow("w")
          .parallel("p", on_error="wait-all", branches=[
              tf.branch("a").step("a1", leaks, catch=tf.Catch(errors=tf.UnencodableValueError, next="a2"))
              .pass_("a2").build(),
              tf.branch("b").step("b1", slow).build()])
          .step("read", lambda ctx: sorted(ctx.data))
          .build())
    inst = await run_wf(adapter, wf)
    assert inst.status == "completed", inst.error
    assert inst.step_results["a1"].status == "caught"
    assert inst.output == []
