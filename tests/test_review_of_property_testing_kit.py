"""From a review (kit1) that property-tested an order-fulfilment workflow with trioflow.testing;
each test failed until the commit that added this file.

The explorer crashed at write numbers up to the fault-free run's count, so a crash run that made
one write more never had its last write crashed (a duplicate `ship` missed about 1 time in 3),
and labelled a lost write by the fault-free run's write of that number; jittered retries were
drawn from an unseeded generator on the test engine. The stateful test at the end passed and
guards view equality across restarts on SQLite.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import trio
import trioflow as tf
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from trioflow.testing import ScriptedJob, engine_portal, explore_crashes, open_test_engine, raises, returns, run


class Declined(Exception):
    pass


line = tf.workflow("line").task("pick", job="pick", compensate="unpick").build()

# The smallest shape that shows the explorer's gap: a map whose items are child workflows,
# then a step with an effect outside trioflow.
lines_then_ship = (tf.workflow("lines-then-ship")
                   .map("lines", items=lambda ctx: ctx.input["lines"],
                        branch=tf.branch("one").child("line", workflow="line").build())
                   .task("ship", job="ship")
                   .build())


def validate(ctx: tf.WorkflowContext) -> dict[str, Any]:  # plain def saga step, shared data
    ctx.set("line_count", len(ctx.input["lines"]))
    return {"order": ctx.input["order"]}


async def note_approval(ctx: tf.WorkflowContext) -> str:
    ctx.set("approved_by", (ctx.steps.get("approval") or {}).get("by", "auto"))
    return str(ctx.get("approved_by"))


fulfil = (tf.workflow("fulfil")
          .step("validate", validate)
          .task("reserve", job="reserve", compensate="release")
          .task("charge", job="charge", compensate="refund", retry=tf.Retry(max_attempts=3, interval=2.0),
                timeout=10.0, catch=[tf.Catch(errors=[Declined], next="declined")])
          .parallel("prepare", branches=[tf.branch("pack").task("pack", job="pack").build(),
                                         tf.branch("invoice").task("invoice", job="invoice").build()])
          .map("lines", items=lambda ctx: ctx.input["lines"],
               branch=tf.branch("one").child("line", workflow="line").build())
          .receive("approval", signal="approved", timeout=3600,
                   catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="auto")])
          .step("note", note_approval, next="cooloff")
          .step("auto", note_approval, next="cooloff")
          .wait("cooloff", seconds=600)
          .task("ship", job="ship")
          .succeed("done", output=lambda ctx: {"approved_by": ctx.get("approved_by"), "lines": ctx.steps["lines"]})
          .fail("declined", error="OrderDeclined", cause="card declined")
          .build())


def fulfil_jobs() -> dict[str, Any]:
    return {"reserve": ScriptedJob(returns("r-1")), "release": ScriptedJob(),
            "charge": ScriptedJob(raises(ConnectionError), returns("ch-1")), "refund": ScriptedJob(),
            "pack": ScriptedJob(returns("packed")), "invoice": ScriptedJob(returns("inv-1")),
            "pick": ScriptedJob(returns("picked")), "unpick": ScriptedJob(), "ship": ScriptedJob(returns("shipped"))}


def explore_non_idempotent_ship() -> tf.testing.CrashReport:
    """One exploration of lines_then_ship whose ship job has an effect outside trioflow."""
    shipped: list[int] = []

    def ship(data: Any) -> str:  # plain def job, no idempotency key: a lost write ships twice
        shipped.append(1)
        return "shipped"

    def exactly_once(outcome: tf.testing.Outcome) -> None:
        assert len(shipped) == 1, f"shipped {len(shipped)} times"

    jobs = {"pick": ScriptedJob(returns("picked")), "unpick": ScriptedJob(), "ship": ship}

    async def main() -> tf.testing.CrashReport:
        return await explore_crashes(lines_then_ship, {"lines": [{"sku": "a"}, {"sku": "b"}]}, jobs=jobs,
                                     also=[line], before_run=shipped.clear, after_run=exactly_once, check=False)

    return run(main)


def test_explore_crashes_always_catches_a_non_idempotent_step_after_a_map_of_children() -> None:
    """A user explores a workflow (map of child workflows, then `ship`, a plain job with no
    idempotency key) with `after_run` checking "shipped exactly once". docs/testing.md promises a
    crash at every checkpoint, including the write that records `ship` lost, so the double ship
    must be reported by every exploration.

    Was: about one exploration in three reports no divergence at all. Crash runs of a map of
    children make a varying number of writes (10 or 11); `explore_crashes` only crashes at write
    k <= the fault-free run's count, so when a crash run makes one more write, the write that
    records `ship` is never crashed. The same test passes or fails from run to run (flaky)."""
    missed = [i for i in range(12) if not explore_non_idempotent_ship().divergent]
    assert missed == [], f"{len(missed)} of 12 explorations missed the duplicate ship"


def test_a_lost_write_point_labelled_with_ship_really_lost_ships_write() -> None:
    """A user reads `CrashPoint.after` to see which write was lost: "write lost (step 'ship'
    completed; instance completed)". A lost write of `ship`'s completion means `ship` ran again
    after the resume (docs/testing.md: "that step runs again after the resume").

    Was: the label is taken from the fault-free run's write k (`clean.states`), while the crash
    hit the crash run's own write k, which may be another one ('lines' completed): points labelled
    as losing `ship`'s write have `calls_after_resume` without `ship` and a single ship call."""
    wrong = []
    for _ in range(12):
        for p in explore_non_idempotent_ship().points:
            if p.lost and p.after.startswith("write lost (step 'ship' completed"):
                if p.outcome.calls.get("ship") != 2:
                    wrong.append((p.write, p.after, p.outcome.calls.get("ship")))
    assert wrong == []


jittered = tf.workflow("jittered").task("charge", job="charge",
                                        retry=tf.Retry(max_attempts=4, interval=10.0, jitter=1.0)).build()


def jittered_call_times() -> list[float]:
    charge = ScriptedJob(raises(ConnectionError, times=3), returns("ch-1"))

    async def main() -> list[float]:
        async with open_test_engine() as engine:
            engine.jobs.register("charge", charge)
            engine.register(jittered)
            await engine.wait(await engine.start("jittered", {}))
        return [c.time - charge.calls[0].time for c in charge.calls]

    return run(main)


def test_jittered_retries_are_deterministic_on_the_test_clock() -> None:
    """A user property-tests a charge retried with `jitter` (as README recommends against
    thundering herds). docs/testing.md: on the test engine "retries, timeouts and sleeps of hours
    take no real time, deterministically"; hypothesis needs an example to replay the same way.

    Was: the jitter is drawn from a module-level `random.Random()` (runtime/_retry.py:48) that
    neither hypothesis nor the test kit seeds or lets the test seed, so two identical runs retry
    at different virtual times (e.g. [0, 9.7, 13.9, 29.2] then [0, 7.2, 24.9, 46.0]); a property
    on timing is flaky (hypothesis's FlakyFailure) and a shrunk example does not replay."""
    assert jittered_call_times() == jittered_call_times()


# --- a guard (passes): views across restarts, on SQLite, through engine_portal ---------------

class Orders(RuleBasedStateMachine):
    """Orders go through the whole fulfilment workflow; the process restarts at any time."""

    def __init__(self) -> None:
        super().__init__()
        self.stack = contextlib.ExitStack()
        folder = self.stack.enter_context(tempfile.TemporaryDirectory())
        jobs = fulfil_jobs()

        def setup(engine: tf.Engine) -> None:
            for name, job in jobs.items():
                engine.jobs.register(name, job)
            engine.register(line)
            engine.register(fulfil)

        self.portal = self.stack.enter_context(
            engine_portal(setup=setup, adapter=tf.adapters.SQLiteAdapter(Path(folder) / "flows.db")))
        self.lines: dict[str, int] = {}
        self.approved: set[str] = set()

    def view(self, iid: str) -> tf.WorkflowInstance:
        return self.portal.call(lambda engine: engine.get_instance(iid))

    @rule(n=st.integers(0, 3))
    def place(self, n: int) -> None:
        data = {"order": len(self.lines), "lines": [{"sku": str(i)} for i in range(n)]}
        self.lines[self.portal.call(lambda engine: engine.start("fulfil", data))] = n

    @rule(data=st.data())
    def approve(self, data: st.DataObject) -> None:
        waiting = [i for i in self.lines if (self.view(i).waiting or {}).get("signal") == "approved"]
        if waiting:
            iid = data.draw(st.sampled_from(waiting))
            self.portal.call(lambda engine: engine.signal(iid, "approved", {"by": "kim"}))
            self.approved.add(iid)

    @rule(seconds=st.sampled_from([1, 600, 3599, 7200]))
    def time_passes(self, seconds: int) -> None:
        self.portal.advance(seconds)

    @rule()
    def the_process_restarts(self) -> None:
        before = {i: self.view(i).to_dict() for i in self.lines}
        self.portal.restart()
        assert {i: self.view(i).to_dict() for i in self.lines} == before

    @invariant()
    def completed_orders_are_as_the_model_says(self) -> None:
        for iid, n in self.lines.items():
            got = self.view(iid)
            assert got.status in ("running", "completed")
            if got.status == "completed":
                assert got.output == {"approved_by": "kim" if iid in self.approved else "auto",
                                      "lines": ["picked"] * n}

    def teardown(self) -> None:
        self.stack.close()


TestOrders = settings(max_examples=10, stateful_step_count=15, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])(Orders).TestCase


# --- added with the fix --------------------------------------------------------------------------

def test_every_write_a_crash_run_makes_is_a_crash_point_both_ways() -> None:
    """Writes that only some runs make (the map's items recorded one write each rather than in
    one) are crashed at too, after and while making them, in `extra_points`; `points` keeps two
    per write of the fault-free run, and every point is named by the write its own run made."""
    made: set[tuple[str, bool]] = set()
    for _ in range(12):
        report = explore_non_idempotent_ship()
        assert len(report.points) == 2 * report.writes
        for p in (*report.points, *report.extra_points):
            if not p.after.startswith("no crash"):
                made.add((p.after.removeprefix("write lost (").split("), after")[0], p.lost))
        assert all(not p.after.startswith("no crash") for p in report.extra_points)
    ship = "step 'ship' completed; instance completed"
    assert (ship, False) in made and (ship, True) in made
    alone = {what for what, _ in made if what.startswith("step 'line' of item") and "," not in what}
    assert alone, "a run recording one item's end alone: seen in 12 explorations of 10 or 11 writes"


def test_the_explorer_retries_at_the_same_jittered_times_run_after_run() -> None:
    """Each run of the explorer draws its jitter from a generator seeded afresh: two explorations
    of a jittered retry call the job at the same virtual times in every run, crash runs included."""
    def explored() -> list[list[float]]:
        calls: list[float] = []
        runs: list[list[float]] = []

        async def charge(data: Any) -> str:
            calls.append(trio.current_time())
            if tf.current_step().attempt < 4:
                raise ConnectionError("the card service is down")
            return "ch-1"

        def kept(outcome: tf.testing.Outcome) -> None:
            runs.append([t - calls[0] for t in calls])

        async def main() -> None:
            await explore_crashes(jittered, {}, jobs={"charge": charge}, before_run=calls.clear, after_run=kept)
        run(main)
        return runs

    first = explored()
    assert len(first) > 4 and first == explored()
