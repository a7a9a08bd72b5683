"""Generated families under few ``max_running`` slots (issue 15: "parents waiting on children
never deadlock on ``max_running``"): parents that map over children, some with a branch that
polls in brief waits beside the map (a short timer or a receive with a short timeout, which keep
the parent in memory, holding its slot), children that take a while or none, one to three
slots. Whatever the mix, every parent and child ends completed, each child's job runs exactly
once, nothing is left running or queued, and while no parent polls, no more child jobs run at
once than there are slots. On trio's MockClock (autojump)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow.testing import open_test_engine, virtual_wall_clock

family = st.fixed_dictionaries({
    "max_running": st.integers(1, 3),
    "parents": st.lists(st.fixed_dictionaries({
        "children": st.lists(st.sampled_from([0.0, 0.4, 3.0]), min_size=1, max_size=4),
        "poll": st.sampled_from([None, ("timer", 0.2), ("timer", 0.9), ("receive", 0.5)]),
        "at": st.sampled_from([0.0, 0.3, 2.0]),
    }), min_size=1, max_size=4),
})


class Board:
    def __init__(self) -> None:
        self.ran: list[str] = []
        self.done: dict[str, int] = {}
        self.now = 0
        self.peak = 0

    async def work(self, ctx: tf.WorkflowContext) -> str:
        parent, seconds = ctx.input["parent"], ctx.input["seconds"]
        self.ran.append(ctx.instance.id)
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await trio.sleep(seconds)
        finally:
            self.now -= 1
        self.done[parent] = self.done.get(parent, 0) + 1
        return ctx.instance.id

    async def all_done(self, ctx: tf.WorkflowContext) -> bool:
        return self.done.get(ctx.instance.id, 0) >= len(ctx.input["children"])


def _parent(poll: tuple[str, float] | None) -> tf.WorkflowDefinition:
    name = "plain" if poll is None else f"{poll[0]}-{poll[1]}"
    children = tf.branch("run").map(
        "each", items=lambda ctx: [{"parent": ctx.instance.id, "seconds": s} for s in ctx.input["children"]],
        branch=tf.branch("item").child("c", workflow="kid").build()).build()
    if poll is None:
        return tf.workflow(name).parallel("both", branches=[children]).build()
    kind, seconds = poll
    looker = tf.branch("poll")
    if kind == "timer":
        looker = looker.wait("nap", seconds=seconds)
    else:
        looker = looker.receive("nap", signal="never", timeout=seconds,
                                catch=[tf.Catch(errors=["SignalTimeoutError"], next="look")])
    looker = (looker.step("look", "all-done")
              .choice("again", choices=[tf.when(lambda ctx: ctx.steps["look"], next="seen")], default="nap")
              .pass_("seen", end=True))
    return tf.workflow(name).parallel("both", branches=[children, looker.build()]).build()


@settings(max_examples=40, deadline=None)
@given(family)
def test_generated_families_under_few_slots_all_end_and_run_each_child_once(spec: dict[str, Any]) -> None:
    board = Board()
    polls = {p["poll"] for p in spec["parents"]}

    async def main() -> list[tf.WorkflowInstance]:
        async with open_test_engine(clock=virtual_wall_clock(), max_running=spec["max_running"]) as engine:
            engine.job("all-done")(board.all_done)
            engine.register(tf.workflow("kid").step("work", board.work).build())
            for poll in polls:
                engine.register(_parent(poll))
            ids: list[str] = []
            for p in spec["parents"]:
                await trio.sleep(p["at"])
                name = "plain" if p["poll"] is None else f"{p['poll'][0]}-{p['poll'][1]}"
                ids.append(await engine.start(name, {"children": p["children"]}))
            with trio.fail_after(600):  # (virtual: far past what the slowest family needs)
                ends = [await engine.wait(iid) for iid in ids]
                kids = [await engine.wait(kid) for end in ends for kid in end.children]
            assert engine._running == 0 and not engine._waiting
            return ends + kids

    ends = tf.testing.run(main)
    assert [e.status for e in ends] == ["completed"] * len(ends), [(e.id, e.status, e.error) for e in ends]
    children = [e for e in ends if e.parent_id is not None]
    assert len(children) == sum(len(p["children"]) for p in spec["parents"])
    assert sorted(board.ran) == sorted(c.id for c in children), "a child's job ran twice, or not at all"
    if polls == {None}:
        assert board.peak <= spec["max_running"], f"{board.peak} child jobs at once, {spec['max_running']} slots"
