"""trioflow.testing as a user who property-tests their own workflows uses it, from a review (each
failed before its fix): the crash explorer reports a one-step-at-a-time run that ends at another
step, or compensates otherwise, than the fault-free run, and accepts compensations that fail for
good in loops and maps; the adapter conformance kit fails adapters that break what the protocol
promises (each shown to break a real engine run first).
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._errors import UnknownInstanceError
from trioflow._snapshot import RESUMABLE
from trioflow.adapters._memory import MemoryAdapter
from trioflow.testing import (
    ScriptedJob,
    check_persistence_adapter,
    explore_crashes,
    open_test_engine,
    raises,
    returns,
)

# ---------------------------------------------------------------------------------------------
# explore_crashes: what it compares with the fault-free run
# ---------------------------------------------------------------------------------------------


class _Shop:
    """A payment provider's state, outside the workflow (what a real service keeps)."""

    charged: set[Any] = set()
    refunded: set[Any] = set()


class _FreshShop(MemoryAdapter):
    """Each explored run gets fresh storage and (the user's duty, docs/testing.md) a fresh world."""

    def __init__(self) -> None:
        super().__init__()
        _Shop.charged, _Shop.refunded = set(), set()


async def _reserve(ctx: Any) -> str:
    return "r-1"


async def _release(ctx: Any, reservation: Any) -> None:
    return None


async def _ship(ctx: Any) -> None:
    raise ValueError("no stock")


async def test_explorer_reports_a_compensation_that_is_not_idempotent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A refund that refuses to run twice for one charge ("already refunded") is not
    idempotent. When the write recording the refund is lost, the resumed run refunds again,
    the refund fails, and the run ends with a compensation error and ``charge`` left
    uncompensated, where the fault-free run compensated everything. docs/testing.md: the
    explorer checks that "the run compensates exactly its own completed compensable steps", and
    "a job whose result depends on such state is exactly what the explorer reports as a
    divergence"; no crash point is reported."""

    async def charge(ctx: Any) -> str:
        return "ch-1"

    async def refund(ctx: Any, charge_id: str) -> None:
        if charge_id in _Shop.refunded:
            raise RuntimeError(f"{charge_id} was refunded already")
        _Shop.refunded.add(charge_id)

    wf = (tf.workflow("checkout").step("reserve", _reserve, _release).step("charge", charge, refund)
          .step("ship", _ship).build())
    report = await explore_crashes(wf, {}, adapter_factory=_FreshShop, check=False)
    assert report.baseline.compensated_steps == ("charge", "reserve") and not report.baseline.compensation_errors
    differing = [p for p in report.points
                 if (p.outcome.compensated_steps, p.outcome.compensation_errors)
                 != (report.baseline.compensated_steps, report.baseline.compensation_errors)]
    assert differing, "precondition: some crash point ran the refund twice"
    # e.g. write 6 lost: compensated ('reserve',), compensation_errors ('charge',), divergence None
    assert all(p.divergence is not None for p in differing), [
        (p.write, p.lost, p.outcome.compensated_steps, p.outcome.compensation_errors, p.divergence)
        for p in differing]


async def test_explorer_reports_a_resumed_run_that_fails_at_another_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A charge that refuses a second call for one order ("already charged") is not idempotent.
    When the write recording the charge is lost, the resumed run fails at ``charge`` (and never
    refunds the money taken), where the fault-free run failed at ``ship`` and refunded it. Both
    end ``failed`` with output ``None``, and the explorer compares nothing else of a failed run
    (not the error, not the failed step, not the compensations against the baseline's): no
    divergence is reported."""

    async def charge(ctx: Any) -> str:
        order = ctx.input["order"]
        if order in _Shop.charged:
            raise RuntimeError(f"order {order} was charged already")
        _Shop.charged.add(order)
        return "ch-1"

    async def refund(ctx: Any, charge_id: str) -> None:
        return None

    wf = (tf.workflow("checkout").step("reserve", _reserve, _release).step("charge", charge, refund)
          .step("ship", _ship).build())
    report = await explore_crashes(wf, {"order": 7}, adapter_factory=_FreshShop, check=False)
    assert report.baseline.status == "failed" and report.baseline.compensated_steps == ("charge", "reserve")
    failed_at_charge = [p for p in report.points
                        if any(r.step_name == "charge" and r.status == "failed" for r in p.outcome.history)]
    assert failed_at_charge, "precondition: a resumed run charged again and failed there"
    # write 3 lost: history reserve compensated, charge failed; compensated ('reserve',); divergence None
    assert all(p.divergence is not None for p in failed_at_charge), [
        (p.write, p.lost, p.after, p.outcome.compensated_steps, p.divergence) for p in failed_at_charge]


def _loop_reserving_three_times() -> tf.WorkflowDefinition:
    return (tf.workflow("loop")
            .task("reserve", job="reserve", compensate="release")
            .choice("again", choices=[tf.when(
                lambda ctx: sum(r.step_name == "reserve" for r in ctx.instance.history) < 3, next="reserve")],
                default="pay")
            .task("pay", job="pay")
            .build())


def _map_charging_each_card() -> tf.WorkflowDefinition:
    return (tf.workflow("charge-all")
            .map("each", items=lambda ctx: ctx.input,
                 branch=tf.branch("one").task("reserve", job="reserve", compensate="release").build())
            .task("pay", job="pay")
            .build())


@pytest.mark.parametrize("make", [_loop_reserving_three_times, _map_charging_each_card], ids=["loop", "map"])
async def test_explorer_accepts_executions_whose_compensation_fails_for_good(
    autojump_clock: trio.testing.MockClock, make: Any,
) -> None:
    """A step that ran three times (a loop, or a map over three items) whose compensation fails
    for good each time (the warehouse is down): SPEC §1, a failing compensation "is recorded on
    the result and the remaining compensations still run". docs/testing.md: "Loops are fine:
    what it checks is per step execution". Every crash point resumes correctly (same status,
    same compensation_errors), yet the explorer raises CrashDivergenceError at the very first
    one (the instance just created, nothing compensated) saying "step 'reserve' had been
    compensated before the crash but was compensated again". Cause: _crashes.py
    _check_instance allows (compensated-after-resume + 1) * attempts compensation calls, and a
    compensation that failed is not counted as done, so three failed executions make three
    calls where one is allowed."""
    jobs = {"reserve": ScriptedJob(returns("r")), "release": ScriptedJob(raises(RuntimeError, "warehouse down")),
            "pay": ScriptedJob(raises(ValueError, "declined"))}
    report = await explore_crashes(make(), ["a", "b", "c"], jobs=jobs, check=False)
    assert report.baseline.status == "failed" and report.baseline.compensation_errors == ("reserve",)
    assert all((p.outcome.status, p.outcome.compensation_errors) == ("failed", ("reserve",)) for p in report.points)
    assert [(p.write, p.lost, p.divergence) for p in report.divergent] == []


# ---------------------------------------------------------------------------------------------
# check_persistence_adapter: subtly broken adapters it passes, each breaking the engine
# ---------------------------------------------------------------------------------------------


async def _kit_passes(cls: type) -> bool:
    stores: dict[str, Any] = {}
    try:
        await check_persistence_adapter(lambda key: stores.setdefault(key, cls()))
    except AssertionError:
        return False
    return True


class PerInstanceSignalSeqs(MemoryAdapter):
    """A signal's seq is 1 + the highest pending seq of its instance (``SELECT MAX(seq)+1``):
    once the pending ones are consumed, seqs start over. Protocol: "seqs only grow"."""

    def _store_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        row = self._rows[instance_id]
        if row.status not in RESUMABLE:
            return None
        if row.signals is None:
            row.signals = {}
        seq = max(row.signals, default=0) + 1
        row.signals[seq] = (name, payload)
        return seq


class SignalSeqRestartsOnOpen(MemoryAdapter):
    """The signal counter is kept in memory only: every open starts it at 0 again, so a signal
    sent after a restart reuses the seq of one still pending. Protocol: "seqs only grow"."""

    async def open(self) -> None:
        await super().open()
        self._signals = 0


class LoadWithoutSignals(MemoryAdapter):
    """``load()`` leaves out the pending signals. Protocol/docs: load gives "one instance with
    all its records in seq order, and its pending signals"."""

    async def load(self, instance_id: str) -> Any:
        stored = await super().load(instance_id)
        return None if stored is None else attrs.evolve(stored, signals=())


class AfterCursorMustMatchFilters(MemoryAdapter):
    """``after=`` is looked up among the rows the filters select (a SQL subquery with the same
    WHERE): a cursor whose status changed since selects nothing. Protocol: after= goes "by its
    place whatever its workflow or status is now"."""

    async def list_instances(self, workflow_name: Any = None, status: Any = None, *, after: Any = None,
                             limit: Any = None, newest_first: bool = False) -> Any:
        if after is not None:
            row = self._rows.get(after)
            if row is None:
                raise UnknownInstanceError(after)
            if workflow_name not in (None, row.workflow_name) or status not in (None, row.status):
                return []
        return await super().list_instances(workflow_name, status, after=after, limit=limit,
                                            newest_first=newest_first)


class CreationOrderLostOnReopen(MemoryAdapter):
    """Creation order is not stored: a reopen orders the rows by id. Docs: listings are "in
    creation order", the kit checks "durability across a reopen"."""

    async def open(self) -> None:
        await super().open()
        for n, instance_id in enumerate(sorted(self._rows), 1):
            self._rows[instance_id].order = n


class NoRecordsWhenListedByStatus(MemoryAdapter):
    """``list_instances(..., status=...)`` (another query) hands the instances back without their
    records. Protocol/docs: listings come "with their records"."""

    async def list_instances(self, workflow_name: Any = None, status: Any = None, **kw: Any) -> Any:
        listed = await super().list_instances(workflow_name, status, **kw)
        return listed if status is None else [attrs.evolve(s, records=()) for s in listed]


async def _completed_instances(cls: type) -> list[str]:
    """engine.get_instances(status="completed") of one completed instance: without its records
    the instance cannot be read, is reported failed, and the listing is empty."""
    wf = tf.workflow("w").task("a", job=ScriptedJob(returns(1))).task("b", job=ScriptedJob(returns(2))).build()
    async with open_test_engine(adapter=cls()) as engine:
        engine.register(wf)
        await engine.wait(await engine.start("w", {}, instance_id="done"))
        return [i.id for i in await engine.get_instances("w", status="completed")]


async def _two_receives_in_a_parallel_lose_the_second_signal(cls: type) -> str:
    """The instance stays in memory (a sibling branch runs) while it consumes signal 1 and gets
    signal 2, which reuses seq 1: the run takes it for one it consumed already."""
    wf = (tf.workflow("w").parallel("p", branches=[
        tf.branch("a").receive("r1", signal="go").receive("r2", signal="go").build(),
        tf.branch("b").task("slow", job=ScriptedJob(tf.testing.sleeps(100, returns("s")))).build()]).build())
    async with open_test_engine(adapter=cls()) as engine:
        engine.register(wf)
        iid = await engine.start("w", {})
        await engine.signal(iid, "go", 1)
        await trio.sleep(10)
        await engine.signal(iid, "go", 2)
        with trio.move_on_after(10_000):
            await engine.wait(iid)
        return (await engine.get_instance(iid)).status  # type: ignore[union-attr]


async def _signals_across_a_restart(cls: type) -> str:
    """Signal 1 is kept while the instance waits a day; the engine restarts; signal 2 overwrites
    it (same seq): the second receive step waits for ever."""
    wf = (tf.workflow("w").wait("nap", seconds=86400).receive("r1", signal="go").receive("r2", signal="go")
          .build())
    adapter = cls()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("w", {})
        await engine.signal(iid, "go", "first")
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        await engine.signal(iid, "go", "second")
        with trio.move_on_after(10**6):
            await engine.wait(iid)
        return (await engine.get_instance(iid)).status  # type: ignore[union-attr]


async def _signal_to_a_parked_instance(cls: type) -> str:
    """The instance parked on its receive step; the signal wakes it from a load() without the
    signal, and the engine does not deliver it otherwise: it waits for ever."""
    wf = tf.workflow("w").task("a", job=ScriptedJob(returns(0))).receive("r1", signal="go").build()
    async with open_test_engine(adapter=cls()) as engine:
        engine.register(wf)
        iid = await engine.start("w", {})
        await trio.sleep(10)
        await engine.signal(iid, "go", 1)
        with trio.move_on_after(10_000):
            await engine.wait(iid)
        return (await engine.get_instance(iid)).status  # type: ignore[union-attr]


async def _second_page_of_running_instances(cls: type) -> list[str]:
    """engine.get_instances docs: pages "none listed twice and none left out"; the next page
    after an instance that completed since is empty."""
    wf = tf.workflow("q").receive("r", signal="go").build()
    async with open_test_engine(adapter=cls()) as engine:
        engine.register(wf)
        for i in ("i1", "i2", "i3"):
            await engine.start("q", {}, instance_id=i)
        await trio.sleep(1)
        page = await engine.get_instances("q", status="running", limit=1)
        await engine.signal("i1", "go")
        await engine.wait("i1")
        return [i.id for i in await engine.get_instances("q", status="running", limit=5, after=page[-1])]


async def _listing_after_a_restart(cls: type) -> list[str]:
    wf = tf.workflow("q").receive("r", signal="go").build()
    adapter = cls()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        for i in ("b", "a", "c"):
            await engine.start("q", {}, instance_id=i)
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        return [i.id for i in await engine.get_instances("q")]


BROKEN = [
    (PerInstanceSignalSeqs, _two_receives_in_a_parallel_lose_the_second_signal, "completed"),
    (SignalSeqRestartsOnOpen, _signals_across_a_restart, "completed"),
    (LoadWithoutSignals, _signal_to_a_parked_instance, "completed"),
    (AfterCursorMustMatchFilters, _second_page_of_running_instances, ["i2", "i3"]),
    (CreationOrderLostOnReopen, _listing_after_a_restart, ["b", "a", "c"]),
    (NoRecordsWhenListedByStatus, _completed_instances, ["done"]),
]


@pytest.mark.parametrize(("cls", "scenario", "right"), BROKEN, ids=[b[0].__name__ for b in BROKEN])
async def test_the_conformance_kit_fails_an_adapter_that_breaks_the_engine(
    autojump_clock: trio.testing.MockClock, cls: type, scenario: Any, right: Any,
) -> None:
    """docs/adapters.md: "run the conformance kit in your own test suite" (signals, listings,
    durability across a reopen). Each adapter here breaks a real engine run (a signal lost for
    ever, a page of instances left out, listing order changed by a restart), shown first with
    MemoryAdapter as the reference; check_persistence_adapter passes every one of them."""
    assert await scenario(MemoryAdapter) == right
    wrong = await scenario(cls)
    assert wrong != right, "precondition: the adapter breaks the engine run"
    assert not await _kit_passes(cls), (
        f"check_persistence_adapter passed {cls.__name__}, with which the engine run gave {wrong!r}, not {right!r}")
