"""Continue-as-new (README, "Continue as new"): a ``continue_as_new`` step ends an instance's run
and starts its next one under the same id, with a history of its own, so an instance that loops
for ever stores and reads no more as it ages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trioflow as tf
from storages import storage  # noqa: F401  (a fixture: the tests taking it run on both adapters)
from trioflow.testing import explore_crashes, open_test_engine

DAY = 86_400.0


async def _bill(ctx: Any) -> int:
    return int(ctx.input["n"])


def _renewals(last: int = 5, *, wait: float | None = None) -> tf.WorkflowDefinition:
    """A subscription that bills, waits a period (``wait``), and renews as a new run until the
    ``last``-th period, whose number it completes with."""
    builder = tf.workflow("renewals").step("bill", _bill)
    if wait is not None:
        builder = builder.wait("period", seconds=wait)
    return (builder
            .choice("more", choices=[tf.Choice(condition=lambda ctx: ctx.input["n"] < last, next="renew")],
                    default="done")
            .continue_as_new("renew", input=lambda ctx: {"n": ctx.input["n"] + 1})
            .succeed("done", output=lambda ctx: ctx.input["n"])
            .build())


async def test_an_instance_that_continues_keeps_only_its_latest_runs_history(
    storage: Callable[[], Any], autojump_clock: trio.testing.MockClock,
) -> None:
    adapter = storage()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_renewals(5))
        iid = await engine.start("renewals", {"n": 0})
        done = await engine.wait(iid)
        assert (done.status, done.output, done.runs) == ("completed", 5, 5)
        assert [r.id for r in done.history] == ["bill#1", "more#1", "done#1"]
        assert done.input == {"n": 5}  # the latest run's
        view = await engine.get_instance(iid)
        assert (view.runs, [r.id for r in view.history]) == (5, ["bill#1", "more#1", "done#1"])
        stored = await adapter.load(iid)
        assert stored is not None and len(stored.records) == 3


async def test_the_storage_work_of_a_renewal_stays_flat_as_a_subscription_ages(
    storage: Callable[[], Any], autojump_clock: trio.testing.MockClock,
) -> None:
    """The billing service of tests/test_review_of_billing_service.py, renewing with
    continue_as_new: each wake reads the one run's records, however many periods went by."""
    adapter = storage()
    read: list[int] = []

    class Counting(type(adapter)):  # type: ignore[misc]
        async def due(self, *args: Any, **kwargs: Any) -> Any:
            rows = await super().due(*args, **kwargs)
            read.extend(len(row.records) for row in rows)
            return rows

    adapter.__class__ = Counting
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_renewals(40, wait=30 * DAY))
        iid = await engine.start("renewals", {"n": 0})
        done = await engine.wait(iid)
    assert (done.status, done.output, done.runs) == ("completed", 40, 40)
    assert len(read) >= 40 and set(read) == {1}, read  # bill#1, read as each period ends


async def test_signals_sent_to_one_run_are_received_by_the_next_in_order(
    storage: Callable[[], Any], autojump_clock: trio.testing.MockClock,
) -> None:
    definition = (
        tf.workflow("inbox")
        .receive("take", signal="item")
        .choice("more", choices=[tf.Choice(condition=lambda ctx: ctx.steps["take"] != "stop", next="again")],
                default="done")
        .continue_as_new("again", input=lambda ctx: [*ctx.input, ctx.steps["take"]])
        .succeed("done", output=lambda ctx: ctx.input)
        .build())
    async with open_test_engine(adapter=storage()) as engine:
        engine.register(definition)
        iid = await engine.start("inbox", [])
        for payload in ("a", "b", "c", "stop"):
            await engine.signal(iid, "item", payload)
        done = await engine.wait(iid)
    assert (done.status, done.output, done.runs) == ("completed", ["a", "b", "c"], 3)


async def _charge(ctx: Any) -> str:
    return f"charged {ctx.input}"


async def test_each_run_starts_children_of_its_own(
    storage: Callable[[], Any], autojump_clock: trio.testing.MockClock,
) -> None:
    """A child step counts its executions afresh in each run: the run's number keeps the ids of
    its children apart from the runs' before (one would otherwise be taken for the first run's
    child, and its outcome read back rather than run)."""
    charge = tf.workflow("charge").step("charge", _charge).build()
    parent = (
        tf.workflow("monthly")
        .child("pay", workflow="charge", input=lambda ctx: ctx.input)
        .choice("more", choices=[tf.Choice(condition=lambda ctx: ctx.input < 3, next="renew")], default="done")
        .continue_as_new("renew", input=lambda ctx: ctx.input + 1)
        .succeed("done", output=lambda ctx: ctx.steps["pay"])
        .build())
    async with open_test_engine(adapter=storage()) as engine:
        engine.register(charge)
        engine.register(parent)
        iid = await engine.start("monthly", 1, instance_id="m-1")
        done = await engine.wait(iid)
        assert (done.status, done.output, done.runs) == ("completed", "charged 3", 2)
        assert done.children == ("m-1/#2/pay#1",)
        outputs = {cid: (await engine.get_instance(cid)).output for cid in ("m-1/pay#1", "m-1/#1/pay#1", "m-1/#2/pay#1")}
    assert outputs == {"m-1/pay#1": "charged 1", "m-1/#1/pay#1": "charged 2", "m-1/#2/pay#1": "charged 3"}


async def test_a_restart_takes_the_instance_up_in_the_run_it_stood_in(
    tmp_path: Path, autojump_clock: trio.testing.MockClock,
) -> None:
    db = tmp_path / "restart.db"
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(_renewals(6, wait=DAY))
        iid = await engine.start("renewals", {"n": 0})
        await trio.sleep(2.5 * DAY)
        view = await engine.get_instance(iid)
        assert (view.runs, view.input, view.current_step) == (2, {"n": 2}, "period")
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(_renewals(6, wait=DAY))
        done = await engine.wait(iid)
    assert (done.status, done.output, done.runs) == ("completed", 6, 6)


async def test_shared_data_starts_afresh_and_the_workflow_timeout_spans_the_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []

    async def note(ctx: Any) -> None:
        seen.append(dict(ctx.data))
        ctx.set("count", ctx.data["count"] + 1)

    definition = (
        tf.workflow("ticker").with_data({"count": 0}).with_timeout(3.5 * DAY)
        .step("note", note).wait("day", seconds=DAY).continue_as_new("again")
        .build())
    async with open_test_engine() as engine:
        engine.register(definition)
        iid = await engine.start("ticker", "in")
        done = await engine.wait(iid)
    assert seen == [{"count": 0}] * 4
    # (No input given: the next run's is the main line's last output, which the wait passed on
    # from ``note``: None.)
    assert (done.status, done.runs, done.input) == ("timed_out", 3, None)


async def test_what_ran_before_the_run_is_never_compensated(autojump_clock: trio.testing.MockClock) -> None:
    undone: list[Any] = []

    async def reserve(ctx: Any) -> Any:
        return ctx.input

    async def release(ctx: Any, result: Any) -> None:
        undone.append(result)

    async def check(ctx: Any) -> None:
        if ctx.input == 2:
            raise ValueError("out of stock")

    definition = (
        tf.workflow("stock").step("reserve", reserve, release).step("check", check)
        .continue_as_new("next", input=lambda ctx: ctx.input + 1)
        .build())
    async with open_test_engine() as engine:
        engine.register(definition)
        done = await engine.wait(await engine.start("stock", 0))
    assert (done.status, done.runs, done.failed_step, undone) == ("failed", 2, "check", [2])


async def test_the_next_runs_input_that_fails_fails_the_step(autojump_clock: trio.testing.MockClock) -> None:
    definition = (
        tf.workflow("bad").step("bill", _bill)
        .continue_as_new("again", input=lambda ctx: {"n": object()})
        .build())
    async with open_test_engine() as engine:
        engine.register(definition)
        done = await engine.wait(await engine.start("bad", {"n": 1}))
    assert (done.status, done.failed_step, done.error_name, done.runs) == (
        "failed", "again", "UnencodableValueError", 0)
    assert "the input step 'again' continues with" in (done.cause or "")


async def test_each_continue_is_published_once(autojump_clock: trio.testing.MockClock) -> None:
    events: list[Any] = []
    async with open_test_engine() as engine:
        engine.events.on("workflow.continued", lambda event: events.append((event["run"], event["step_name"])))
        engine.events.on("workflow.step.*", lambda event: event["step_name"] == "renew" and events.append(
            (event["event"], event.get("execution_id"), event.get("output"))))
        engine.register(_renewals(2))
        await engine.wait(await engine.start("renewals", {"n": 0}))
    assert events == [
        ("workflow.step.started", "renew#1", None), ("workflow.step.completed", "renew#1", {"n": 1}), (1, "renew"),
        ("workflow.step.started", "renew#1", None), ("workflow.step.completed", "renew#1", {"n": 2}), (2, "renew"),
    ]


async def test_without_storage_the_runs_go_on_in_memory() -> None:
    result = await tf.execute_workflow(None, _renewals(4), {"n": 0})
    assert (result.status, result.output) == ("completed", 4)


@pytest.mark.parametrize("make", [tf.adapters.MemoryAdapter, None], ids=["memory", "sqlite"])
async def test_crashes_at_every_write_end_as_the_run_without_one(
    make: Any, tmp_path: Path, autojump_clock: trio.testing.MockClock,
) -> None:
    count = iter(range(10_000))

    def sqlite() -> Any:
        return tf.adapters.SQLiteAdapter(tmp_path / f"crash-{next(count)}.db")

    report = await explore_crashes(_renewals(3, wait=DAY), {"n": 0}, adapter_factory=make or sqlite)
    assert (report.baseline.status, report.baseline.output, report.baseline.runs) == ("completed", 3, 3)
    assert report.writes > 10 and not report.divergent


def test_refused_where_a_run_would_take_an_earlier_runs_records_for_its_own() -> None:
    with pytest.raises(tf.DefinitionError, match="transactional workflow cannot continue as new"):
        tf.workflow("t").transactional().step("a", _bill).continue_as_new("again").build()
    with pytest.raises(tf.DefinitionError, match="step 'again'.*entity steps"):
        (tf.workflow("e").step(tf.create_entity_step("a", "account", lambda ctx: {"id": 1}))
         .continue_as_new("again").build())

    async def coroutine_input(ctx: Any) -> int:
        return 1

    with pytest.raises(tf.DefinitionError, match="input .* is an async function"):
        tf.workflow("c").step("a", _bill).continue_as_new("again", input=coroutine_input).build()


async def test_an_adapter_that_cannot_restart_a_history_is_refused_at_register() -> None:
    class Older(tf.adapters.MemoryAdapter):
        async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Any, *, first_seq: int,
                             start: bytes | None = None, consumed: Any = (), wake_at: float | None = None,
                             notify: Any = None) -> int | None:
            return await super().checkpoint(instance_id, status, header, records, first_seq=first_seq, start=start,
                                            consumed=consumed, wake_at=wake_at, notify=notify)

    async with tf.open_engine(adapter=Older()) as engine:
        with pytest.raises(tf.InvalidArgumentError, match="step 'renew' continues as new.*Older"):
            engine.register(_renewals())


async def test_a_step_that_is_not_idempotent_is_still_found_in_a_later_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The crash explorer names executions by their run too: a step whose repeat after a crash
    returns another value is reported, in a run after the first as in the first."""
    calls: dict[str, int] = {}

    async def charge(ctx: Any) -> int:
        execution = tf.current_step().execution_id
        calls[execution] = calls.get(execution, 0) + 1
        # A new charge id every call in the third run (not idempotent); the same before.
        return calls[execution] if execution.startswith("#2/") else 1

    definition = (
        tf.workflow("charges").step("charge", charge)
        .choice("more", choices=[tf.Choice(condition=lambda ctx: ctx.input < 2, next="again")], default="done")
        .continue_as_new("again", input=lambda ctx: ctx.input + 1)
        .succeed("done")
        .build())
    with pytest.raises(tf.testing.CrashDivergenceError, match="step 'charge' \\(#2/charge#1, attempt 1\\)"):
        await explore_crashes(definition, 0, before_run=calls.clear)


async def test_a_child_that_continues_ends_its_parents_step_with_its_last_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    child = _renewals(3, wait=DAY)
    parent = tf.workflow("holder").child("sub", workflow="renewals").build()
    async with open_test_engine() as engine:
        engine.register(child)
        engine.register(parent)
        done = await engine.wait(await engine.start("holder", {"n": 0}, instance_id="h-1"))
        kid = await engine.get_instance("h-1/sub#1")
    assert (done.status, done.output) == ("completed", 3)
    assert (kid.status, kid.runs, kid.parent_id) == ("completed", 3, "h-1")


async def test_a_cancel_in_a_later_run_compensates_that_run_alone(autojump_clock: trio.testing.MockClock) -> None:
    undone: list[Any] = []

    async def reserve(ctx: Any) -> Any:
        return ctx.input

    async def release(ctx: Any, result: Any) -> None:
        undone.append(result)

    definition = (
        tf.workflow("holds").step("reserve", reserve, release).wait("a-day", seconds=DAY)
        .continue_as_new("again", input=lambda ctx: ctx.input + 1)
        .build())
    async with open_test_engine() as engine:
        engine.register(definition)
        iid = await engine.start("holds", 0)
        await trio.sleep(2.5 * DAY)
        assert await engine.cancel(iid)
        done = await engine.wait(iid)
    assert (done.status, done.runs, undone) == ("cancelled", 2, [2])


def test_a_start_record_of_a_later_run_reads_back_with_its_run_and_parent() -> None:
    from trioflow._codec import decode, encode_header, encode_start, parent_named_in
    from trioflow._decide import new_state, next_run

    first = new_state(_renewals(), "i-1", {"n": 0}, 1_000.0)
    first.parent_id = "p-1"
    later = next_run(next_run(first, _renewals(), {"n": 1}), _renewals(), {"n": 2})
    start = encode_start(later)
    back = decode(start, encode_header(later))
    assert (back.runs, back.parent_id, back.input, back.created_at) == (2, "p-1", {"n": 2}, 1_000.0)
    assert parent_named_in(start) == "p-1"
    first.parent_id = None
    alone = next_run(first, _renewals(), {"n": 1})
    assert decode(encode_start(alone), encode_header(alone)).runs == 1
    assert decode(encode_start(first), encode_header(first)).runs == 0  # seven fields, as before


@given(last=st.integers(min_value=0, max_value=6), stop_after=st.floats(min_value=0, max_value=7.5))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_whenever_the_engine_stops_the_instance_ends_as_if_it_had_not(
    tmp_path_factory: pytest.TempPathFactory, last: int, stop_after: float,
) -> None:
    """Property: an engine closed at any moment of a chain of runs, and another opened on the
    same file, ends the instance with the same output and run count as an engine never closed."""
    db = tmp_path_factory.mktemp("prop") / "chain.db"

    async def main() -> tuple[Any, int]:
        async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
            engine.register(_renewals(last, wait=DAY))
            iid = await engine.start("renewals", {"n": 0})
            await trio.sleep(stop_after * DAY)
        async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
            engine.register(_renewals(last, wait=DAY))
            done = await engine.wait(iid)
        return done.output, done.runs

    assert tf.testing.run(main) == (last, last)
