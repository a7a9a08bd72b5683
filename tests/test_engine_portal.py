"""``trioflow.testing.engine_portal``: a test engine driven from synchronous code, so that
hypothesis's ``RuleBasedStateMachine`` can test workflows that wait for time and for people.
Time stands still between rules and moves only by ``advance``, deadline by deadline."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import trioflow as tf
from trioflow.testing import engine_portal

DAY = 86_400.0
released: list[str] = []


async def reserve(ctx: tf.WorkflowContext) -> str:
    return f"r-{ctx.input['order']}"


async def release(ctx: tf.WorkflowContext, held: str) -> None:
    released.append(held)


async def charge(ctx: tf.WorkflowContext) -> str:
    return "charged"


ORDER = (tf.workflow("order").step("reserve", reserve, release)
         .receive("approve", signal="approved", timeout=DAY).wait("cool_off", seconds=3_600)
         .step("charge", charge).build())


def test_a_call_returns_once_the_engine_has_done_all_it_can_at_that_instant() -> None:
    with engine_portal() as portal:
        portal.call(lambda e: _register(e))
        iid = portal.call(lambda e: e.start("order", {"order": 1}))
        seen = portal.call(lambda e: e.get_instance(iid))
        assert seen is not None and seen.waiting is not None and seen.waiting["signal"] == "approved"
        portal.call(lambda e: e.signal(iid, "approved", {"by": "ann"}))
        seen = portal.call(lambda e: e.get_instance(iid))
        assert seen is not None and seen.current_step == "cool_off" and seen.status == "running"
        start = portal.now
        portal.advance(3_599)
        assert portal.call(lambda e: e.get_instance(iid)).status == "running"  # type: ignore[union-attr]
        portal.advance(1)
        done = portal.call(lambda e: e.get_instance(iid))
        assert done is not None and done.status == "completed" and portal.now == start + 3_600


def test_advance_runs_what_falls_due_at_its_own_time() -> None:
    """Two timers one after the other inside one advance: the second is due an hour after the
    first fired, not an hour after the advance ended."""
    twice = tf.workflow("twice").wait("a", seconds=3_600).wait("b", seconds=3_600).step("c", charge).build()
    with engine_portal() as portal:
        portal.call(lambda e: _register(e, twice))
        iid = portal.call(lambda e: e.start("twice", {}))
        portal.advance(7_200)
        assert portal.call(lambda e: e.get_instance(iid)).status == "completed"  # type: ignore[union-attr]


def test_exceptions_of_a_call_reach_the_caller_and_bad_advances_are_refused() -> None:
    with engine_portal() as portal:
        with pytest.raises(tf.UnknownWorkflowError):
            portal.call(lambda e: e.start("nobody", {}))
        for bad in (-1, float("inf"), float("nan"), True, "1"):
            with pytest.raises(tf.InvalidArgumentError, match="advance"):
                portal.advance(bad)  # type: ignore[arg-type]


def test_an_engine_that_cannot_open_raises_in_the_caller() -> None:
    with pytest.raises(tf.InvalidArgumentError, match="no option"):
        with engine_portal(max_runing=1):
            pass


def test_a_misspelt_option_is_named_as_engine_portals() -> None:
    """The error names the call the user wrote (``engine_portal``), and the options it takes."""
    with pytest.raises(tf.InvalidArgumentError, match=r"engine_portal\(\): no option 'max_runing'.*max_running"):
        with engine_portal(max_runing=1):  # type: ignore[call-arg]
            pass


async def _register(engine: tf.Engine, *definitions: tf.WorkflowDefinition) -> None:
    for definition in definitions or (ORDER,):
        engine.register(definition)


class Orders(RuleBasedStateMachine):
    """Orders that wait a day for approval, then an hour: approved in time, each completes an
    hour later; not, it fails with SignalTimeoutError and releases its reservation."""

    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = engine_portal(setup=_register, **self.engine_options())
        self.portal = self._portal_cm.__enter__()
        self.orders: dict[str, dict[str, Any]] = {}  # id -> started, approved (virtual times)
        released.clear()

    def engine_options(self) -> dict[str, Any]:
        return {}

    def teardown(self) -> None:
        self._portal_cm.__exit__(None, None, None)

    @rule()
    def start(self) -> None:
        n = len(self.orders)
        iid = self.portal.call(lambda e: e.start("order", {"order": n}))
        self.orders[iid] = {"started": self.portal.now, "approved": None}

    @precondition(lambda self: self.orders)
    @rule(data=st.data())
    def approve(self, data: st.DataObject) -> None:
        iid = data.draw(st.sampled_from(sorted(self.orders)))
        order = self.orders[iid]
        try:
            self.portal.call(lambda e: e.signal(iid, "approved", None))
        except tf.InstanceNotLiveError:  # (only once it has ended: timed out, or completed)
            ended = order["started"] + DAY if order["approved"] is None else order["approved"] + 3_600
            assert self.portal.now >= ended, (order, self.portal.now)
            return
        if order["approved"] is None and self.portal.now < order["started"] + DAY:
            order["approved"] = self.portal.now

    @rule(hours=st.sampled_from([0.5, 1, 6, 23, 24, 25]))
    def wait(self, hours: float) -> None:
        self.portal.advance(hours * 3_600)

    @rule(hours=st.sampled_from([0, 2, 25]))
    def restart(self, hours: float) -> None:
        """The process stops and starts again ``hours`` later: what fell due meanwhile fires
        as the new engine takes it up."""
        self.portal.restart(downtime=hours * 3_600)

    @invariant()
    def each_order_stands_where_its_times_say(self) -> None:
        now = self.portal.now
        for iid, order in self.orders.items():
            seen = self.portal.call(lambda e: e.get_instance(iid))
            assert seen is not None
            if order["approved"] is not None:
                done = now >= order["approved"] + 3_600
                assert seen.status == ("completed" if done else "running"), (seen.status, order, now)
            elif now >= order["started"] + DAY:
                assert (seen.status, seen.error_name) == ("failed", "SignalTimeoutError")
                assert f"r-{seen.input['order']}" in released
            else:
                assert seen.status == "running" and seen.waiting is not None


Orders.TestCase.settings = settings(max_examples=15, stateful_step_count=12, deadline=None)
TestOrders = Orders.TestCase


class OrdersOnSQLite(Orders):
    """The same orders on a SQLite file: the portal waits for the adapter's writer thread, and
    time stands still while it commits."""

    def engine_options(self) -> dict[str, Any]:
        self.directory = tempfile.mkdtemp(prefix="trioflow-portal-")
        return {"adapter": tf.adapters.SQLiteAdapter(Path(self.directory) / "orders.db")}

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


OrdersOnSQLite.TestCase.settings = settings(max_examples=5, stateful_step_count=12, deadline=None)
TestOrdersOnSQLite = OrdersOnSQLite.TestCase


def test_a_sqlite_engine_s_writes_are_waited_for_while_time_stands_still(tmp_path: Path) -> None:
    """Each call returns once the adapter's writer thread has committed what the call started
    (a call that only waited for that write used to raise PortalCallStuckError); virtual time
    does not move while it commits; what the portal's engine stored is in the file."""
    path = tmp_path / "orders.db"
    with engine_portal(adapter=tf.adapters.SQLiteAdapter(path)) as portal:
        portal.call(lambda e: _register(e))
        start = portal.now
        iid = portal.call(lambda e: e.start("order", {"order": 7}))
        seen = portal.call(lambda e: e.get_instance(iid))
        assert seen is not None and seen.waiting is not None and seen.waiting["signal"] == "approved"
        for _ in range(20):
            portal.call(lambda e: e.get_instances())
        assert portal.now == start
        portal.call(lambda e: e.signal(iid, "approved", {"by": "ann"}))
        portal.advance(3_600)
        done = portal.call(lambda e: e.wait(iid))
        assert done.status == "completed" and portal.now == start + 3_600

    async def reopened() -> tf.WorkflowInstance | None:
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path), resume=False) as engine:
            return await engine.get_instance(iid)

    stored = trio.run(reopened)
    assert stored is not None and stored.status == "completed" and stored.output == "charged"


async def slow(ctx: tf.WorkflowContext) -> int:
    runs.append(ctx.metadata.id)
    await trio.sleep(10)
    return len(runs)


runs: list[str] = []
SLOW = tf.workflow("slow").step("slow", slow).build()


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_restart_reopens_on_what_was_stored_and_time_moves_by_the_downtime(storage: str, tmp_path: Path) -> None:
    """``restart``: the engine stops as a process does and another opens on the same adapter
    (the portal's own MemoryAdapter, or the file), runs ``setup`` again and takes up what is
    stored; a timer that fell due during the downtime fires as it is taken up; a step cut
    short runs again; virtual time moves by the downtime exactly (a SQLite adapter's close takes
    real time, and none of virtual time)."""
    runs.clear()
    options: dict[str, Any] = {} if storage == "memory" else {"adapter": tf.adapters.SQLiteAdapter(tmp_path / "r.db")}
    setups: list[tf.Engine] = []

    def setup(engine: tf.Engine) -> None:
        setups.append(engine)
        engine.register(ORDER)
        engine.register(SLOW)

    with engine_portal(setup=setup, **options) as portal:
        start = portal.now
        iid = portal.call(lambda e: e.start("order", {"order": 1}))
        portal.call(lambda e: e.signal(iid, "approved", None))  # now in its hour's cool-off
        slow_id = portal.call(lambda e: e.start("slow", {}))
        assert runs == [slow_id]
        portal.restart(downtime=7_200)
        assert portal.now == start + 7_200 and len(setups) == 2
        done = portal.call(lambda e: e.get_instance(iid))
        assert done is not None and done.status == "completed"
        assert runs == [slow_id, slow_id]  # cut short by the stop, it runs again
        portal.advance(10)
        finished = portal.call(lambda e: e.wait(slow_id))
        assert finished.status == "completed" and finished.output == 2
        portal.restart()
        assert portal.now == start + 7_210 and len(setups) == 3
        with pytest.raises(tf.InvalidArgumentError, match="restart"):
            portal.restart(downtime=-1)


def test_a_setup_that_raises_on_restart_reaches_the_caller() -> None:
    opened: list[int] = []

    def setup(engine: tf.Engine) -> None:
        opened.append(1)
        if len(opened) == 2:
            raise LookupError("no such job registry")

    with pytest.raises(LookupError, match="no such job registry"):
        with engine_portal(setup=setup) as portal:
            with pytest.raises(LookupError, match="no such job registry"):
                portal.restart()
