"""A step's job that starts another instance and waits for it with ``engine.wait()`` holds its
instance's ``max_running`` slot meanwhile; the instance it waits for, queued for a slot, runs in
that one (as a child step's instance runs in its parent's), so that such jobs never deadlock
however few the slots. Callers outside any step lend nothing: the limit holds for them."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf


async def test_nested_waits_in_steps_complete_with_one_slot(autojump_clock: trio.testing.MockClock) -> None:
    holder: dict[str, tf.Engine] = {}

    async def leaf(ctx: Any) -> int:
        await trio.sleep(1)
        return int(ctx.input) * 10

    async def middle(ctx: Any) -> int:
        engine = holder["engine"]
        return (await engine.wait(await engine.start("leaf", ctx.input))).output + 1  # type: ignore[no-any-return]

    async def top(ctx: Any) -> list[int]:
        engine = holder["engine"]
        ids = [await engine.start("middle", k) for k in range(3)]
        return [(await engine.wait(iid)).output for iid in ids]

    async with tf.open_engine(max_running=1) as engine:
        holder["engine"] = engine
        engine.register(tf.workflow("leaf").step("work", leaf).build())
        engine.register(tf.workflow("middle").step("call", middle).build())
        engine.register(tf.workflow("top").step("fan", top).build())
        with trio.fail_after(60):
            done = await engine.wait(await engine.start("top"))
    assert (done.status, done.output) == ("completed", [1, 11, 21])


async def test_a_plain_def_job_waiting_through_from_thread_lends_its_slot(
        autojump_clock: trio.testing.MockClock) -> None:
    holder: dict[str, tf.Engine] = {}

    async def check(ctx: Any) -> str:
        return f"checked {ctx.input}"

    def place(ctx: Any) -> Any:  # a plain def job: the engine runs it in a worker thread
        engine = holder["engine"]
        iid = trio.from_thread.run(engine.start, "check", ctx.input)
        return trio.from_thread.run(engine.wait, iid).output

    async with tf.open_engine(max_running=1) as engine:
        holder["engine"] = engine
        engine.register(tf.workflow("check").step("c", check).build())
        engine.register(tf.workflow("order").step("place", place).build())
        with trio.fail_after(60):
            done = [await engine.wait(iid) for iid in [await engine.start("order", k) for k in range(2)]]
    assert [d.output for d in done] == ["checked 0", "checked 1"]


async def test_callers_outside_steps_wait_their_turn_for_a_slot(autojump_clock: trio.testing.MockClock) -> None:
    running = 0
    most = 0

    async def work(ctx: Any) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await trio.sleep(1)
        running -= 1

    async with tf.open_engine(max_running=2) as engine:
        engine.register(tf.workflow("w").step("work", work).build())
        ids = [await engine.start("w") for _ in range(6)]
        async with trio.open_nursery() as nursery:
            for iid in ids:
                nursery.start_soon(engine.wait, iid)
    assert most == 2
