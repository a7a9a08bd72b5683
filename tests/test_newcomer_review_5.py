"""A fifth newcomer's review: README and docs/ followed as written (an order that waits for a
payment webhook across a restart, a map of child sagas, bad input everywhere). Tests of defects
fail until fixed; the others pin documented behaviour that had no test of its own (autojump
MockClock, no real sleeps)."""

from __future__ import annotations

import datetime as dt
import gc
import warnings
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter, SQLiteAdapter
from trioflow.testing import virtual_wall_clock


def sqlite(tmp_path: Path) -> SQLiteAdapter:
    return SQLiteAdapter(tmp_path / "orders.db")


# --------------------------------------------------------------------------------------------
# Defects
# --------------------------------------------------------------------------------------------


async def test_wait_seconds_given_an_async_def_is_refused_by_build_or_awaited(
        autojump_clock: trio.testing.MockClock) -> None:
    """docs/waiting.md: ``seconds=``/``until=`` may be "a callable of ctx". An ``async def``
    (as ``items=``, ``input=`` and child ``input=`` may be) is accepted by ``build()``, then
    fails the step at run time with "seconds must give a finite number of seconds >= 0, got
    <coroutine object ...>" and leaves a "coroutine ... was never awaited" RuntimeWarning.
    Conditions, transforms and predicates given as ``async def`` are refused by ``build()``
    with a message saying so; a timer's callable should be too (or be awaited)."""
    async def due_in(ctx: Any) -> float:
        return 5.0

    try:
        wf = tf.workflow("nap").wait("t", seconds=due_in).build()
    except tf.DefinitionError as exc:
        assert "async" in str(exc)
        return
    async with tf.open_engine() as engine:
        engine.register(wf)
        started = trio.current_time()
        done = await engine.wait(await engine.start("nap"))
    gc.collect()
    assert done.status == "completed", (done.error_name, done.cause)
    assert trio.current_time() - started == pytest.approx(5.0)


def test_wait_until_given_an_async_def_is_refused_by_build() -> None:
    async def when(ctx: Any) -> float:
        return 0.0

    with pytest.raises(tf.DefinitionError, match="async"):
        tf.workflow("nap").wait("t", until=when).build()


async def test_open_engine_resume_false_holds_in_flight_instances_and_wakes_waiting_ones(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """README (Storage and durability) said an engine "resumes the instances that adapter held as
    pending or running when the engine opened ... (``open_engine(resume=False)`` to opt out)",
    while an instance parked on a timer, stored ``running``, still ran its next step when the
    timer fell due in an engine opened with ``resume=False``: the reviewer took the opt-out to
    cover it. Decided (and now said in README and docs/waiting.md): ``resume=False`` holds back
    the instances an earlier engine left in flight, until ``engine.resume()``; an instance that
    waits out of memory (a timer, a delayed start, a signal) is woken as it falls due by any
    engine that has its workflow registered, as a Temporal worker picks up a due timer. An
    engine that registers no workflow runs nothing it finds in storage, and reads all of it."""
    ran: list[str] = []
    release = trio.Event()

    async def remind(ctx: Any) -> str:
        ran.append(f"remind {ctx.input}")
        return "reminded"

    async def slow(ctx: Any) -> str:
        ran.append("slow")
        await release.wait()
        return "done"

    order = tf.workflow("order").wait("reminder", seconds=100).step("remind", remind).build()
    busy = tf.workflow("busy").step("slow", slow).build()
    clock = virtual_wall_clock()
    async with tf.open_engine(adapter=sqlite(tmp_path), clock=clock) as engine:
        engine.register(order)
        engine.register(busy)
        parked = await engine.start("order", "parked")
        in_flight = await engine.start("busy")
        await trio.sleep(5)  # one parked (out of memory, its wake time stored), one mid-step
    assert ran == ["slow"]
    # Nothing registered: nothing runs, and every instance can still be read.
    async with tf.open_engine(adapter=sqlite(tmp_path), clock=clock) as engine:
        await trio.sleep(200)  # the timer is long due
        assert ran == ["slow"]
        assert (await engine.get_instance(parked)).status == "running"  # type: ignore[union-attr]
        assert (await engine.get_instance(in_flight)).status == "running"  # type: ignore[union-attr]
    async with tf.open_engine(adapter=sqlite(tmp_path), clock=clock, resume=False) as engine:
        engine.register(order)
        engine.register(busy)
        assert (await engine.wait(parked)).output == "reminded"  # woken as it fell due
        await trio.sleep(10)
        assert ran == ["slow", "remind parked"]  # the instance in flight is held back
        release.set()
        assert await engine.resume() == [in_flight]
        assert (await engine.wait(in_flight)).output == "done"
    assert ran == ["slow", "remind parked", "slow"]


async def test_events_subscribe_checks_its_buffer(autojump_clock: trio.testing.MockClock) -> None:
    """README: ``async with engine.events.subscribe(pattern, buffer=10_000)``. A bad ``buffer``
    reaches trio unchecked: ``-1`` raises trio's ``ValueError: max_buffer_size must be >= 0``
    and ``"x"``/``1.5`` a ``TypeError`` about ``max_buffer_size``, neither naming ``buffer`` nor
    of trioflow's hierarchy; ``0`` (and ``True``) are accepted, and a stream with ``buffer=0``
    drops all but the first event of a three-step run (``WouldBlock`` whenever the reader is
    not already parked)."""
    async with tf.open_engine() as engine:
        for bad in (-1, "x", 1.5, 0, True):
            with pytest.raises(tf.InvalidArgumentError, match="buffer"):
                async with engine.events.subscribe("workflow.*", buffer=bad):  # type: ignore[arg-type]
                    pass


async def test_a_transactional_run_on_a_driver_that_is_not_one_fails_with_a_clear_error(
        autojump_clock: trio.testing.MockClock) -> None:
    """``open_engine(driver="biz.db")`` (a newcomer who takes ``driver=`` for a path, as
    ``SQLiteAdapter`` takes one) is accepted; a ``.transactional()`` run then ends ``failed``
    with ``error_name == "Error"`` and cause ``"internal error: AttributeError: 'str' object
    has no attribute 'transaction'"`` (the engine's path for its own bugs). ``register()``
    refuses a transactional workflow on an engine with no driver; one whose driver is not a
    ``tf.adapters.Driver`` should be refused the same way (or at ``open_engine``)."""
    wf = tf.workflow("tx").step("a", lambda ctx: 1).transactional().build()
    try:
        async with tf.open_engine(driver="biz.db") as engine:
            engine.register(wf)
            done = await engine.wait(await engine.start("tx"))
    except tf.TrioflowError as exc:
        assert "driver" in str(exc)
        return
    assert done.status == "failed"
    assert "internal error" not in (done.cause or ""), done.cause
    assert done.error_name != "Error"
    assert "driver" in (done.cause or "")


async def test_execute_workflow_reports_a_transaction_that_cannot_begin_on_its_result(
        autojump_clock: trio.testing.MockClock) -> None:
    """README: "``execute_workflow`` ... a failure is reported on the ``WorkflowResult``, not
    raised", and "A transaction that cannot begin or commit fails the run with the driver's
    error". A driver whose ``transaction()`` raises when called (a pool that is closed, say)
    makes ``execute_workflow`` raise that error out of the call; in an engine the same run ends
    ``failed`` with ``error_name == "Error"`` and cause ``"internal error: ConnectionError:
    database down"`` (``actors/_transaction.py`` calls ``run.driver.transaction()`` outside
    the ``try`` that turns a failed begin into the run's failure)."""
    class ClosedPool(tf.adapters.MemoryDriver):
        def transaction(self) -> Any:
            raise ConnectionError("database down")

    wf = tf.workflow("tx").step("a", lambda ctx: 1).transactional().build()
    result = await tf.execute_workflow(ClosedPool(), wf, {})
    assert result.status == "failed"
    assert result.error_name == "ConnectionError" and result.cause == "database down"
    async with tf.open_engine(driver=ClosedPool()) as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("tx"))
    assert done.error_name == "ConnectionError", (done.error_name, done.cause)
    assert done.cause == "database down"


async def test_an_entity_step_on_a_driver_that_is_not_one_fails_with_a_driver_error(
        autojump_clock: trio.testing.MockClock) -> None:
    """``execute_workflow("biz.db", ...)`` / ``open_engine(driver=5)``: an entity step fails
    with a bare ``AttributeError: 'str' object has no attribute 'transaction'``. README: an
    entity step's problems are ``adapters.DriverError``s naming what is wrong (as "step 'c'
    needs a data driver" is, with no driver at all)."""
    wf = tf.workflow("w").step(tf.create_entity_step("c", "orders", lambda ctx: {"a": 1})).build()
    result = await tf.execute_workflow("biz.db", wf, {})
    assert isinstance(result.error, tf.TrioflowError), repr(result.error)
    assert "driver" in (result.cause or "")


def test_sqlite_adapter_and_driver_check_their_path() -> None:
    """``SQLiteAdapter(5)`` raises Python's ``TypeError: expected str, bytes or os.PathLike
    object, not int`` (while ``SQLiteAdapter(":memory:")`` gets a trioflow error saying what
    to do); ``SQLiteDriver(5)`` is accepted, and its first step fails with that same bare
    ``TypeError``."""
    with pytest.raises(tf.TrioflowError):
        SQLiteAdapter(5)  # type: ignore[arg-type]
    with pytest.raises(tf.TrioflowError):
        tf.adapters.SQLiteDriver(5)  # type: ignore[arg-type]


def test_end_takes_only_true_or_false() -> None:
    """``open_engine`` refuses a non-bool ``resume``/``threads`` ("takes True or False");
    the builder's ``end=`` keeps whatever it is given (``end="no"`` ends the lane, and the
    error then blames the next step: "step 'z': can never be reached")."""
    async def a(ctx: Any) -> int:
        return 1

    with pytest.raises(tf.DefinitionError, match="end"):
        tf.workflow("w").step("a", a, end="no").step("z", a).build()  # type: ignore[arg-type]
    with pytest.raises(tf.DefinitionError, match="end"):
        tf.workflow("w").wait("t", seconds=1, end=1).build()  # type: ignore[arg-type]


async def test_run_workflow_says_its_steps_must_be_a_list_of_steps() -> None:
    """``run_workflow(None, "q", "x")`` reported "step 'x': execute is missing" (a string is a
    sequence of one-letter names), and ``None`` a bare ``TypeError``."""
    for bad in ("x", None, 5, ["x"]):
        with pytest.raises(tf.DefinitionError, match="list of steps made by tf.step"):
            await tf.run_workflow(None, "q", bad)  # type: ignore[arg-type]


async def test_a_timer_until_callable_giving_a_duration_is_told_it_gives_a_moment(
        autojump_clock: trio.testing.MockClock) -> None:
    """The error for an ``until=`` callable's bad value said "until must give a finite number
    of seconds >= 0": ``until`` is a moment (Unix seconds or an aware datetime)."""
    wf = tf.workflow("nap").wait("t", until=lambda ctx: "tomorrow").build()
    async with tf.open_engine() as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("nap"))
    assert done.error_name == "InvalidArgumentError"
    assert "until must give Unix seconds" in (done.cause or "") and "aware datetime" in (done.cause or "")


# --------------------------------------------------------------------------------------------
# Documented behaviour, pinned (these pass)
# --------------------------------------------------------------------------------------------


def order_workflow(log: list[str]) -> tf.WorkflowDefinition:
    async def place(ctx: Any) -> dict[str, str]:
        log.append("place " + ctx.input["order"])
        return {"order": ctx.input["order"]}

    async def cancel_order(ctx: Any, result: Any) -> None:
        log.append("cancel " + result["order"])

    async def remind(ctx: Any) -> str:
        log.append("remind " + ctx.input["order"])
        return "reminded"

    async def ship(ctx: Any) -> str:
        log.append(f"ship {ctx.input['order']} {ctx.steps['payment']}")
        return "shipped"

    async def escalate(ctx: Any) -> str:
        log.append(f"escalate {ctx.input['order']} {ctx.error['error']}")
        return "escalated"

    return (tf.workflow("order")
            .step("place", place, cancel_order)
            .wait("reminder", seconds=3600)
            .step("remind", remind)
            .receive("payment", signal="payment.webhook", timeout=86400,
                     catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="escalate", result="pay_err")])
            .step("ship", ship)
            .succeed("done")
            .step("escalate", escalate)
            .fail("unpaid", error="Unpaid", cause=lambda ctx: ctx.get("pay_err")["cause"])
            .build())


async def test_an_order_waits_for_its_webhook_across_restarts(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """README "Waiting for time and for people" and docs/waiting.md "What survives a restart":
    the reminder keeps its due time over a restart, the receive its deadline; a webhook sent
    after the restart is the step's output; the order nobody pays escalates, then the fail step
    fails it and compensates; a signal to it then raises InstanceNotLiveError."""
    log: list[str] = []
    wf = order_workflow(log)
    clock = virtual_wall_clock()
    async with tf.open_engine(adapter=sqlite(tmp_path), clock=clock) as engine:
        engine.register(wf)
        paid = await engine.start("order", {"order": "A"}, instance_id="A")
        unpaid = await engine.start("order", {"order": "B"}, instance_id="B")
        await trio.sleep(60)
        waiting = (await engine.get_instance(paid)).waiting
        assert waiting is not None and set(waiting) == {"timer"}
        reminder_due = waiting["timer"]
    await trio.sleep(1800)  # no engine runs
    async with tf.open_engine(adapter=sqlite(tmp_path), clock=clock) as engine:
        engine.register(wf)
        assert (await engine.get_instance(paid)).waiting == {"timer": reminder_due}
        await trio.sleep(1800)
        waiting = (await engine.get_instance(paid)).waiting
        assert waiting is not None and waiting["signal"] == "payment.webhook"
        assert waiting["timeout"] - reminder_due == pytest.approx(86400, abs=5)
    assert log.count("remind A") == 1
    async with tf.open_engine(adapter=sqlite(tmp_path), clock=clock) as engine:
        engine.register(wf)
        await engine.signal(paid, "payment.webhook", {"amount": 10})
        done = await engine.wait(paid)
        assert done.status == "completed" and done.output == "shipped"
        assert done.step_results["payment"].output == {"amount": 10}
        failed = await engine.wait(unpaid)
        assert failed.status == "failed" and failed.failed_step == "unpaid"
        assert failed.error_name == "Unpaid"
        assert failed.cause == "step 'payment': no signal 'payment.webhook' arrived within 86400 s"
        assert failed.step_results["payment"].status == "caught"
        assert failed.compensated_steps == ("place",)
        with pytest.raises(tf.InstanceNotLiveError):
            await engine.signal(unpaid, "payment.webhook", {"amount": 10})
    assert "cancel B" in log and "cancel A" not in log


async def test_a_map_of_child_sagas_tolerates_one_then_a_later_failure_undoes_the_children(
        autojump_clock: trio.testing.MockClock) -> None:
    """docs/fanout.md: a tolerated failed item's slot is ``{"error", "cause"}`` (the child's
    own error); when the parent fails later, each completed child is compensated as a unit and
    ends ``compensated``; the failed child compensated itself and stays ``failed``; the
    parent's ``compensated_steps`` lists the child steps, newest first, then its own."""
    log: list[str] = []

    async def reserve(ctx: Any) -> str:
        log.append("reserve " + ctx.input["sku"])
        return str(ctx.input["sku"])

    async def release(ctx: Any, result: Any) -> None:
        log.append("release " + result)

    async def charge(ctx: Any) -> str:
        if ctx.input["sku"] == "bad":
            raise PermissionError("declined bad")
        return "ch-" + ctx.input["sku"]

    async def refund(ctx: Any, result: Any) -> None:
        log.append("refund " + result)

    async def box(ctx: Any) -> str:
        return "box"

    async def unbox(ctx: Any, result: Any) -> None:
        log.append("unbox")

    async def ship(ctx: Any) -> None:
        raise RuntimeError("truck broke down")

    line = tf.workflow("line").step("reserve", reserve, release).step("charge", charge, refund).build()
    order = (tf.workflow("order")
             .step("box", box, unbox)
             .map("lines", items=lambda ctx: ctx.input["lines"], tolerated_failures=1, max_concurrency=2,
                  branch=tf.branch("line").child("buy", workflow="line").build())
             .step("ship", ship)
             .build())
    async with tf.open_engine() as engine:
        engine.register(line)
        engine.register(order)
        done = await engine.wait(await engine.start(
            "order", {"lines": [{"sku": "a"}, {"sku": "bad"}, {"sku": "c"}]}, instance_id="O"))
        children = {c: await engine.get_instance(c) for c in done.children}
    assert done.status == "failed" and done.failed_step == "ship" and done.error_name == "RuntimeError"
    assert done.step_results["lines"].output == [
        "ch-a", {"error": "PermissionError", "cause": "declined bad"}, "ch-c"]
    assert done.compensated_steps == ("buy", "buy", "box")
    assert sorted(children) == ["O/lines/#0/buy#1", "O/lines/#1/buy#1", "O/lines/#2/buy#1"]
    status = {c: (i.status, i.compensated_steps, i.parent_id) for c, i in children.items() if i is not None}
    assert status["O/lines/#0/buy#1"] == ("compensated", ("charge", "reserve"), "O")
    assert status["O/lines/#1/buy#1"] == ("failed", ("reserve",), "O")
    assert status["O/lines/#2/buy#1"] == ("compensated", ("charge", "reserve"), "O")
    assert log.count("release bad") == 1 and log[-1] == "unbox"


async def test_a_retry_delay_is_shown_waiting_and_its_count_survives_a_restart(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """docs/waiting.md "Retry delays": ``waiting == {"retry": due, "attempt": attempts made so
    far}``; after a restart a ``max_attempts=3`` step is tried three times in all, on its
    schedule (0, 100, 300 s with ``interval=100`` and the default ``backoff_rate=2.0``)."""
    calls: list[float] = []

    async def flaky(ctx: Any) -> None:
        calls.append(trio.current_time())
        raise ConnectionError("down")

    wf = tf.workflow("r").step("s", flaky, retry=tf.Retry(max_attempts=3, interval=100, max_interval=1000)).build()
    clock = virtual_wall_clock()
    async with tf.open_engine(adapter=sqlite(tmp_path), clock=clock) as engine:
        engine.register(wf)
        iid = await engine.start("r")
        await trio.sleep(10)
        waiting = (await engine.get_instance(iid)).waiting
        assert waiting is not None and waiting["attempt"] == 1 and set(waiting) == {"retry", "attempt"}
    async with tf.open_engine(adapter=sqlite(tmp_path), clock=clock) as engine:
        engine.register(wf)
        done = await engine.wait(iid)
    assert done.status == "failed" and done.step_results["s"].attempts == 3
    assert [round(c - calls[0]) for c in calls] == [0, 100, 300]


@pytest.mark.parametrize(("fraction", "tolerated"), [(0.29, 2), (0.3, 3), (0.34, 3), (1.0, 10)])
async def test_a_fraction_of_tolerated_failures_is_the_most_failures_within_it(
        autojump_clock: trio.testing.MockClock, fraction: float, tolerated: int) -> None:
    """docs/fanout.md: "the most failures ``f`` with ``f / count <= fraction``" (4 of 10 fail)."""
    async def every_third_fails(ctx: Any) -> int:
        if ctx.item % 3 == 0:
            raise ValueError(f"item {ctx.item}")
        return int(ctx.item)

    wf = (tf.workflow("frac")
          .map("m", items=lambda ctx: list(range(10)), tolerated_failures=fraction, on_error="wait-all",
               branch=tf.branch("b").step("x", every_third_fails).build())
          .build())
    async with tf.open_engine() as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("frac"))
    if tolerated >= 4:
        assert done.status == "completed"
    else:
        assert done.error_name == "MapError"
        assert f"4 of 10 items failed, {tolerated} tolerated" in (done.cause or "")


async def test_a_delayed_start_has_no_started_at_and_its_timeout_counts_from_its_start(
        autojump_clock: trio.testing.MockClock) -> None:
    """docs/waiting.md "Delayed starts": stored ``running`` with ``waiting={"start": due}``; a
    workflow timeout counts from when it starts, not from ``start()``."""
    async def five_seconds(ctx: Any) -> str:
        await trio.sleep(5)
        return "ok"

    wf = tf.workflow("slow").step("a", five_seconds).with_timeout(10).build()
    async with tf.open_engine() as engine:
        engine.register(wf)
        iid = await engine.start("slow", delay=100)
        await trio.sleep(1)
        waiting = await engine.get_instance(iid)
        assert waiting.status == "running" and waiting.started_at is None
        assert waiting.waiting == {"start": pytest.approx(waiting.created_at + 100)}
        done = await engine.wait(iid)
    assert done.status == "completed"
    assert done.started_at is not None and done.started_at - done.created_at == pytest.approx(100)


async def test_parallel_failures_read_as_docs_errors_md_says(autojump_clock: trio.testing.MockClock) -> None:
    """docs/errors.md "Structured errors", word for word."""
    async def x1(ctx: Any) -> None:
        raise ValueError("bx")

    async def y1(ctx: Any) -> None:
        await trio.sleep(1)
        raise KeyError("ky")

    def wf(mode: str) -> tf.WorkflowDefinition:
        return (tf.workflow(mode).parallel("fan-out", branches=[
            tf.branch("x").step("x1", x1).build(), tf.branch("y").step("y1", y1).build()], on_error=mode).build())

    async with tf.open_engine() as engine:
        engine.register(wf("fail-fast"))
        engine.register(wf("wait-all"))
        fast = await engine.wait(await engine.start("fail-fast"))
        everyone = await engine.wait(await engine.start("wait-all"))
    assert (fast.error_name, fast.cause, fast.failed_step) == ("ValueError", "bx", "x1")
    assert fast.error == "BranchError: branch 'x', step 'x1': ValueError: bx"
    assert everyone.error_name == "ParallelError"
    assert everyone.cause == ("parallel step 'fan-out': branch 'x' failed with ValueError: bx; "
                              "branch 'y' failed with KeyError: 'ky'")


async def test_a_timer_callable_giving_bad_values_fails_its_step(autojump_clock: trio.testing.MockClock) -> None:
    """docs/waiting.md: a naive ``datetime`` from an ``until`` callable fails the step; so do
    negative, infinite and NaN seconds."""
    async def a(ctx: Any) -> str:
        return "A"

    cases = {
        "naive": {"until": lambda ctx: dt.datetime(2030, 1, 1)},
        "negative": {"seconds": lambda ctx: -5},
        "infinite": {"seconds": lambda ctx: float("inf")},
        "nan": {"seconds": lambda ctx: float("nan")},
    }
    async with tf.open_engine() as engine:
        for name, kwargs in cases.items():
            engine.register(tf.workflow(name).step("a", a).wait("t", **kwargs).build())
            done = await engine.wait(await engine.start(name))
            assert done.status == "failed" and done.failed_step == "t", name
            assert done.error_name == "InvalidArgumentError", name
        engine.register(tf.workflow("past").step("a", a).wait("t", until=lambda ctx: 5).build())
        done = await engine.wait(await engine.start("past"))
    assert done.status == "completed" and done.output == "A"


async def test_a_refused_start_stores_nothing(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """SPEC §8 and docs/waiting.md ("``start`` checks its arguments and the input before
    anything is stored"): each refusal is of trioflow's hierarchy and leaves no row."""
    wf = tf.workflow("w").receive("r", signal="go").build()
    bad_starts: list[tuple[type[Exception], dict[str, Any]]] = [
        (tf.UnknownWorkflowError, {"workflow_name": "nope"}),
        (tf.UnencodableValueError, {"input": {"x": {1}}}),
        (tf.UnencodableValueError, {"input": {(1, 2): 1}}),
        (tf.InvalidArgumentError, {"delay": -1}),
        (tf.InvalidArgumentError, {"delay": dt.timedelta(seconds=-1)}),
        (tf.InvalidArgumentError, {"start_at": dt.datetime(2030, 1, 1)}),
        (tf.InvalidArgumentError, {"delay": 1, "start_at": 5.0}),
        (tf.InvalidArgumentError, {"instance_id": ""}),
    ]
    async with tf.open_engine(adapter=sqlite(tmp_path)) as engine:
        engine.register(wf)
        for error, kwargs in bad_starts:
            args = {"workflow_name": "w", **kwargs}
            with pytest.raises(error):
                await engine.start(args.pop("workflow_name"), args.pop("input", None), **args)
        assert await engine.get_instances() == []


async def test_unencodable_definition_constants_are_refused_by_register_only_for_with_data(
        autojump_clock: trio.testing.MockClock) -> None:
    """As it stands (friction, not a doc contradiction): ``with_data({"x": {1}})`` is refused by
    ``register()``, while ``succeed(output={1})`` and ``pass_(result={1})``, as constant, are
    accepted and fail every run with ``UnencodableValueError`` (docs/errors.md allows this)."""
    async with tf.open_engine() as engine:
        with pytest.raises(tf.UnencodableValueError, match="with_data"):
            engine.register(tf.workflow("d").pass_("p").with_data({"x": {1}}).build())
        engine.register(tf.workflow("s").succeed("s", output={1}).build())
        done = await engine.wait(await engine.start("s"))
    assert done.status == "failed" and done.error_name == "UnencodableValueError"


def test_memory_adapter_default_is_fresh_per_engine() -> None:
    """README: ``MemoryAdapter()`` is the default; one engine at a time on one object."""
    async def main() -> None:
        adapter = MemoryAdapter()
        async with tf.open_engine(adapter=adapter):
            with pytest.raises(tf.AdapterInUseError):
                async with tf.open_engine(adapter=adapter):
                    pass

    with warnings.catch_warnings():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
