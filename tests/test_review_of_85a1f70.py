"""An adversarial review of 85a1f70: ``execute_workflow`` checks its jobs first, ``ctx.steps``
can be stored, entity steps refuse non-callable column functions, and a task step cut short
publishes ``workflow.step.failed`` (``error_name`` ``"Cancelled"``) once its record is stored.

On trio's MockClock (autojump), on the MemoryAdapter and SQLite where storage matters; every
wait is bounded."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import Adapter, MemoryAdapter, MemoryDriver, SQLiteAdapter
from trioflow.testing import open_test_engine, run

from storages import engine_on, finish, storage  # noqa: F401  (a fixture)


# -- helpers ------------------------------------------------------------------------------------

async def _hang(ctx: tf.WorkflowContext) -> None:
    await trio.sleep_forever()


def _cut_events(events: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((e.get("lane", ""), e["step_name"]) for e in events
                   if e["event"] == "workflow.step.failed" and e.get("error_name") == "Cancelled")


def _cut_records(done: tf.WorkflowInstance) -> Counter[tuple[str, str]]:
    return Counter((r.lane, r.step_name) for r in done.history
                   if r.status == "failed" and r.error_name == "Cancelled")


def _assert_one_event_per_cut_record(events: list[dict[str, Any]], done: tf.WorkflowInstance) -> None:
    """Every step recorded cut short (a task step's execution; a map's, or a wide parallel's,
    since review newcomer7) has exactly one event, and no step has more than one. (Steps of
    other kinds cut short, a narrower parallel step around them, publish one too, with no
    record: README, Events.)"""
    events_seen = _cut_events(events)
    records = _cut_records(done)
    assert all(events_seen[key] == n for key, n in records.items()), (events_seen, records)
    assert all(n == 1 for n in events_seen.values()), events_seen


def _end_after_cut_events(events: list[dict[str, Any]], end: str) -> None:
    names = [e["event"] for e in events]
    assert end in names, names
    last_cut = max((i for i, e in enumerate(events) if e["event"] == "workflow.step.failed"), default=-1)
    assert last_cut < names.index(end), names


class Hiccups:
    """Mixed into a shipped adapter: the next checkpoint of ``instance`` fails once with
    ``StorageUnavailableError``, before the write (``"before"``) or after it (``"after"``: the
    write is made and its answer lost), once ``armed`` is set."""

    armed: str | None = None

    async def checkpoint(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if self.armed == "before":
            self.armed = None
            raise tf.StorageUnavailableError("checkpoint failed for a moment (test)")
        stored = await super().checkpoint(instance_id, *args, **kwargs)  # type: ignore[misc]
        if self.armed == "after":
            self.armed = None
            raise tf.StorageUnavailableError("checkpoint answer lost (test)")
        return stored


class HiccupMemory(Hiccups, MemoryAdapter):
    pass


class HiccupSQLite(Hiccups, SQLiteAdapter):
    pass


@pytest.fixture(params=["memory", "sqlite"])
def hiccups(request: pytest.FixtureRequest, tmp_path: Path) -> Hiccups:
    return HiccupMemory() if request.param == "memory" else HiccupSQLite(tmp_path / "h.db")


# == (4) cut-short steps publish workflow.step.failed once ======================================

async def test_every_map_item_cut_by_fail_fast_publishes_exactly_one_event(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    async def item(ctx: tf.WorkflowContext) -> None:
        if ctx.item == 0:
            await trio.sleep(1)
            raise RuntimeError("declined")
        await trio.sleep_forever()

    wf = tf.workflow("m").map("each", items=lambda ctx: list(range(25)),
                              branch=tf.branch("i").step("work", item).build()).build()
    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.register(wf)
        engine.events.on("workflow.*", events.append)
        done = await finish(engine, await engine.start("m"), limit=600)
        await trio.sleep(1)
    assert done.status == "failed"
    assert sum(_cut_records(done).values()) == 24
    _assert_one_event_per_cut_record(events, done)
    _end_after_cut_events(events, "workflow.failed")


async def test_a_parallel_nested_in_map_items_cut_by_a_timeout_publishes_once_per_step(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    inner = tf.branch("i").parallel("p", branches=[
        tf.branch("a").step("a1", _hang).build(), tf.branch("b").step("b1", _hang).build()]).build()
    wf = (tf.workflow("mp").map("each", items=lambda ctx: [1, 2, 3], branch=inner, max_concurrency=2)
          .with_timeout(10).build())
    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.register(wf)
        engine.events.on("workflow.*", events.append)
        done = await finish(engine, await engine.start("mp"), limit=600)
        await trio.sleep(1)
    assert done.status == "timed_out"
    # Two items in flight, two branches each; and, since the twentieth session of December 7th
    # (review newcomer7), the map step's own end: a map cut short ends with a record.
    assert sum(_cut_records(done).values()) == 5 and _cut_records(done)[("", "each")] == 1
    _assert_one_event_per_cut_record(events, done)
    _end_after_cut_events(events, "workflow.timed_out")


@pytest.mark.parametrize("when", ["before", "after"])
async def test_the_cancels_checkpoint_failing_once_still_publishes_the_event_exactly_once(
        autojump_clock: trio.testing.MockClock, hiccups: Hiccups, when: str) -> None:
    async def job(ctx: tf.WorkflowContext) -> None:
        await trio.sleep_forever()

    wf = tf.workflow("w").step("first", lambda ctx: 1).step("h", job).build()
    events: list[dict[str, Any]] = []
    async with open_test_engine(adapter=hiccups, storage_retry_for=60) as engine:
        engine.register(wf)
        engine.events.on("workflow.*", events.append)
        iid = await engine.start("w")
        await trio.sleep(2)
        hiccups.armed = when
        assert await engine.cancel(iid)
        done = await finish(engine, iid, limit=600)
        await trio.sleep(1)
    assert hiccups.armed is None, "no checkpoint was made after the cancel"
    assert done.status == "cancelled"
    assert _cut_records(done) == Counter({("", "h"): 1})
    _assert_one_event_per_cut_record(events, done)
    _end_after_cut_events(events, "workflow.cancelled")


async def test_a_cancel_during_a_retry_delay_records_and_publishes_the_attempts_made(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    calls: list[float] = []

    async def flaky(ctx: tf.WorkflowContext) -> None:
        calls.append(trio.current_time())
        raise RuntimeError("down")

    wf = tf.workflow("r").step("s", flaky, retry=tf.Retry(max_attempts=5, interval=10, max_interval=10)).build()
    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.register(wf)
        engine.events.on("workflow.*", events.append)
        iid = await engine.start("r")
        await trio.sleep(15)  # two attempts made, in the second delay
        assert await engine.cancel(iid)
        done = await finish(engine, iid, limit=600)
        await trio.sleep(1)
    assert done.status == "cancelled" and len(calls) == 2
    [record] = [r for r in done.history if r.step_name == "s"]
    assert record.error_name == "Cancelled" and record.attempts == 2
    _assert_one_event_per_cut_record(events, done)
    [event] = [e for e in events if e["event"] == "workflow.step.failed"]
    assert event["attempts"] == 2


async def test_a_cancel_of_a_step_parked_in_a_long_retry_delay_publishes_once(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # A delay of an hour: the instance leaves memory between attempts; the cancel takes it up.
    async def flaky(ctx: tf.WorkflowContext) -> None:
        raise RuntimeError("down")

    wf = tf.workflow("r").step("s", flaky, retry=tf.Retry(max_attempts=3, interval=3600, max_interval=3600)).build()
    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.register(wf)
        engine.events.on("workflow.*", events.append)
        iid = await engine.start("r")
        await trio.sleep(600)
        assert await engine.cancel(iid)
        done = await finish(engine, iid, limit=600)
        await trio.sleep(1)
    assert done.status == "cancelled"
    _assert_one_event_per_cut_record(events, done)
    assert sum(_cut_records(done).values()) == 1
    _end_after_cut_events(events, "workflow.cancelled")


async def test_a_transactional_run_cancelled_mid_step_publishes_the_cut_step_once(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    driver = MemoryDriver()

    async def write(ctx: tf.WorkflowContext) -> Any:
        return await ctx.driver.create("orders", {"ref": "r1"})

    wf = tf.workflow("t").step("create", write).step("h", _hang).transactional().build()
    events: list[dict[str, Any]] = []
    async with engine_on(storage(), driver=driver) as engine:
        engine.register(wf)
        engine.events.on("workflow.*", events.append)
        iid = await engine.start("t")
        await trio.sleep(2)
        assert await engine.cancel(iid)
        done = await finish(engine, iid, limit=600)
        await trio.sleep(1)
    assert done.status == "cancelled"
    assert await driver.find_many("orders", {}) == []  # rolled back
    assert sum(_cut_records(done).values()) == 1
    _assert_one_event_per_cut_record(events, done)
    _end_after_cut_events(events, "workflow.cancelled")


async def test_a_step_cut_by_a_cancel_after_a_restart_publishes_once_with_the_second_engine(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    wf = tf.workflow("w").step("a", lambda ctx: 1).step("h", _hang).build()
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.register(wf)
        engine.events.on("workflow.*", first.append)
        iid = await engine.start("w")
        await trio.sleep(2)
    async with engine_on(storage()) as engine:
        engine.register(wf)
        engine.events.on("workflow.*", second.append)
        await trio.sleep(2)  # taken up again, in "h"
        assert await engine.cancel(iid)
        done = await finish(engine, iid, limit=600)
        await trio.sleep(1)
    assert done.status == "cancelled"
    assert not _cut_events(first), first
    assert sum(_cut_records(done).values()) == 1
    _assert_one_event_per_cut_record(second, done)


def test_execute_workflow_cancelled_from_outside_compensates_and_reraises() -> None:
    # No engine, no event bus: the cut step must not break the run's unwinding.
    log: list[str] = []

    def undo(ctx: tf.WorkflowContext, out: Any) -> None:
        log.append(f"undo {out}")

    wf = tf.workflow("w").step("a", lambda ctx: "A", undo).step("h", _hang).build()

    async def main() -> None:
        with trio.move_on_after(5) as scope:
            await tf.execute_workflow(None, wf, {})
        assert scope.cancelled_caught

    run(main)
    assert log == ["undo A"]


# == (2) ctx.steps stored =======================================================================

def _set_view(ctx: tf.WorkflowContext) -> str:
    ctx.set("seen", ctx.steps)
    return "b"


_GATE = {"hang": False}


async def _maybe_hang(ctx: tf.WorkflowContext) -> str:
    if _GATE["hang"]:
        await trio.sleep_forever()
    return "d"


_SET = (tf.workflow("set").step("a", lambda ctx: "A").step("b", _set_view).step("c", lambda ctx: "C")
        .step("d", _maybe_hang).step("e", lambda ctx: ctx.get("seen")).build())


async def test_ctx_steps_put_into_shared_data_reads_the_same_with_or_without_a_restart(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    # What a later step reads from ctx.data must not depend on whether the engine restarted in
    # between (replays must be deterministic), and is what the view showed when it was set.
    _GATE["hang"] = False
    async with engine_on(storage()) as engine:
        engine.register(_SET)
        straight = await finish(engine, await engine.start("set"))
    _GATE["hang"] = True
    async with engine_on(storage()) as engine:
        engine.register(_SET)
        iid = await engine.start("set")
        await trio.sleep(2)  # in "d"
    _GATE["hang"] = False
    async with engine_on(storage()) as engine:
        engine.register(_SET)
        restarted = await finish(engine, iid)
    assert straight.status == restarted.status == "completed"
    assert straight.output == restarted.output, (straight.output, restarted.output)
    assert straight.output == {"a": "A"}, "the value stored is not what the view showed when it was set"
    assert type(straight.output) is dict and type(restarted.output) is dict


async def test_ctx_steps_nested_deep_in_an_output_is_stored_as_plain_dicts(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    wf = (tf.workflow("n").step("a", lambda ctx: {"x": 1})
          .step("b", lambda ctx: {"list": [ctx.steps, {"k": ctx.steps}], "t": (ctx.steps,)})
          .step("c", lambda ctx: ctx.steps["b"]).build())
    async with engine_on(storage()) as engine:
        engine.register(wf)
        done = await finish(engine, await engine.start("n"))
    want = {"list": [{"a": {"x": 1}}, {"k": {"a": {"x": 1}}}], "t": [{"a": {"x": 1}}]}
    assert done.status == "completed", done.error
    assert done.output == want
    assert type(done.output["list"][0]) is dict
    async with engine_on(storage()) as engine:
        engine.register(wf)
        again = await engine.get_instance(done.id)
    assert again is not None and again.output == want
    assert [r.output for r in again.history if r.step_name == "b"] == [want]


async def test_ctx_steps_as_a_childs_input(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    kid = tf.workflow("kid").step("echo", lambda ctx: ctx.input).build()
    wf = (tf.workflow("parent").step("a", lambda ctx: 7)
          .child("k", workflow="kid", input=lambda ctx: ctx.steps).build())
    async with engine_on(storage()) as engine:
        engine.register(kid)
        engine.register(wf)
        done = await finish(engine, await engine.start("parent"))
    assert done.status == "completed", done.error
    assert done.output == {"a": 7}
    assert type(done.output) is dict


async def test_ctx_steps_as_a_signal_payload_sent_from_a_step(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    box: dict[str, Any] = {}

    async def send(ctx: tf.WorkflowContext) -> str:
        await box["engine"].signal(box["target"], "go", payload=ctx.steps)
        return "sent"

    receiver = tf.workflow("rx").receive("r", signal="go").build()
    sender = tf.workflow("tx").step("a", lambda ctx: [1, 2]).step("send", send).build()
    async with engine_on(storage()) as engine:
        box["engine"] = engine
        engine.register(receiver)
        engine.register(sender)
        box["target"] = await engine.start("rx")
        tx = await finish(engine, await engine.start("tx"))
        rx = await finish(engine, box["target"])
    assert tx.status == "completed", tx.error
    assert rx.status == "completed", rx.error
    assert rx.output == {"a": [1, 2]}


async def test_ctx_steps_returned_in_a_map_of_a_map_of_a_map_after_a_restart(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    gate = {"hang": True}

    async def last(ctx: tf.WorkflowContext) -> str:
        if gate["hang"]:
            await trio.sleep_forever()
        return "end"

    innermost = tf.branch("c").step("leaf", lambda ctx: ctx.item).step("seen", lambda ctx: ctx.steps).build()
    middle = tf.branch("b").map("m3", items=lambda ctx: [ctx.item * 10], branch=innermost).build()
    outer = tf.branch("a").map("m2", items=lambda ctx: [ctx.item], branch=middle).build()
    wf = (tf.workflow("mmm").step("top", lambda ctx: "T").map("m1", items=lambda ctx: [1, 2], branch=outer)
          .step("last", last).build())
    async with engine_on(storage()) as engine:
        engine.register(wf)
        iid = await engine.start("mmm")
        await trio.sleep(2)
        before = await engine.get_instance(iid)
    gate["hang"] = False
    async with engine_on(storage()) as engine:
        engine.register(wf)
        done = await finish(engine, iid)
    assert done.status == "completed", done.error
    seen = lambda inst: [r.output for r in inst.history if r.step_name == "seen"]  # noqa: E731
    assert before is not None
    assert seen(before) == seen(done)
    assert sorted(map(repr, seen(done))) == sorted(map(repr, [{"top": "T", "leaf": 10}, {"top": "T", "leaf": 20}]))


class _UserView(Mapping[str, Any]):
    def __init__(self) -> None:
        self._d = {"k": 1}

    def __getitem__(self, key: str) -> Any:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def stored_value(self) -> dict[str, Any]:  # as trioflow's own views have
        return dict(self._d)


async def test_a_user_mapping_is_still_refused_even_with_a_stored_value_method(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    wf = tf.workflow("u").step("a", lambda ctx: {"v": _UserView()}).build()
    async with engine_on(storage()) as engine:
        engine.register(wf)
        done = await finish(engine, await engine.start("u"))
    assert done.status == "failed"
    assert done.error_name == "UnencodableValueError", (done.error_name, done.error)
    from trioflow._codec import check_encodable

    with pytest.raises(tf.UnencodableValueError, match="_UserView"):
        check_encodable({"v": _UserView()}, "value")


def test_execute_workflow_hands_on_ctx_steps_as_a_plain_dict_as_an_engine_does() -> None:
    # In an engine, a step returning ctx.steps has a dict as its output; execute_workflow kept
    # the live view, which then showed the steps after it, itself among them (RecursionError).
    wf = (tf.workflow("w").step("a", lambda ctx: 1).step("seen", lambda ctx: ctx.steps)
          .step("b", lambda ctx: 2).step("last", lambda ctx: ctx.steps["seen"]).build())
    result = run(lambda: tf.execute_workflow(None, wf, {}))
    assert result.success, result.error
    assert type(result.output) is dict, type(result.output)  # (a view's repr recurses: not shown)
    assert result.output == {"a": 1}


def test_execute_workflow_ctx_steps_in_shared_data_is_what_it_was_when_set() -> None:
    _GATE["hang"] = False
    result = run(lambda: tf.execute_workflow(None, _SET, {}))
    assert result.success, result.error
    assert type(result.output) is dict, type(result.output)
    assert result.output == {"a": "A"}


# == (1) execute_workflow checks its jobs first =================================================

def _charge_jobs(log: list[str]) -> dict[str, Callable[..., Any]]:
    def charge(data: Any) -> str:
        log.append("charged")
        return "ch"

    return {"charge": charge}


def test_a_missing_job_in_a_branch_no_choice_takes_is_refused_as_engine_start_refuses_it() -> None:
    log: list[str] = []
    wf = (tf.workflow("c").task("charge", job="charge")
          .choice("route", choices=[tf.when(lambda ctx: True, next="done")], default="legacy")
          .task("legacy", job="legacy-ship", end=True)
          .pass_("done", result="ok").build())
    result = run(lambda: tf.execute_workflow(None, wf, {}, jobs=_charge_jobs(log)))
    assert isinstance(result.error, tf.UnknownJobError) and "'legacy-ship'" in str(result.error)
    assert log == []

    async def on_engine() -> None:
        async with open_test_engine() as engine:
            engine.job("charge")(_charge_jobs(log)["charge"])
            engine.register(wf)
            with pytest.raises(tf.UnknownJobError, match="legacy-ship"):
                await engine.start("c")

    run(on_engine)
    assert log == []


@pytest.mark.parametrize("where", ["map", "parallel", "map-compensate", "default-retry"])
def test_a_missing_job_deep_in_a_branch_fails_before_any_step_runs(where: str) -> None:
    log: list[str] = []
    builder = tf.workflow("d").task("charge", job="charge")
    if where == "map":
        builder = builder.map("each", items=lambda ctx: [1], branch=tf.branch("i").task("x", job="nope").build())
    elif where == "parallel":
        builder = builder.parallel("p", branches=[tf.branch("a").task("x", job="nope").build(),
                                                 tf.branch("b").task("y", job="charge").build()])
    elif where == "map-compensate":
        builder = builder.map("each", items=lambda ctx: [1],
                              branch=tf.branch("i").task("x", job="charge", compensate="nope").build())
    else:
        builder = builder.default_retry(tf.Retry(max_attempts=3)).task("x", job="nope")
    result = run(lambda: tf.execute_workflow(None, builder.build(), {}, jobs=_charge_jobs(log)))
    assert isinstance(result.error, tf.UnknownJobError) and "'nope'" in str(result.error)
    assert log == []
    assert not result.success


def test_a_doomed_in_process_run_begins_no_driver_transaction() -> None:
    # A transactional workflow with a missing job: nothing written, nothing to roll back.
    driver = MemoryDriver()

    async def write(ctx: tf.WorkflowContext) -> Any:
        return await ctx.driver.create("orders", {"ref": "r"})

    wf = tf.workflow("t").step("w", write).task("x", job="nope").transactional().build()

    async def main() -> tf.WorkflowResult:
        result = await tf.execute_workflow(driver, wf, {})
        assert await driver.find_many("orders", {}) == []
        return result

    result = run(main)
    assert isinstance(result.error, tf.UnknownJobError)


def test_jobs_given_as_a_registry_are_found() -> None:
    from trioflow._jobs import JobRegistry

    registry = JobRegistry({"charge": lambda data: "ok"})
    wf = tf.workflow("w").task("c", job="charge").build()
    result = run(lambda: tf.execute_workflow(None, wf, {}, jobs=registry))
    assert result.success and result.output == "ok"


# == (3) entity steps ===========================================================================

@pytest.mark.parametrize("bad", [{"a": 1}, None, 5, "id = 1", [lambda ctx: {}]])
def test_entity_steps_refuse_every_non_callable_as_they_are_made(bad: Any) -> None:
    with pytest.raises(tf.DefinitionError, match="entity step 'c'"):
        tf.create_entity_step("c", "order", bad)
    with pytest.raises(tf.DefinitionError, match="entity step 'c'"):
        tf.update_entity_step("c", "order", bad, lambda ctx: {"a": 1})
    with pytest.raises(tf.DefinitionError, match="entity step 'c'"):
        tf.delete_entity_step("c", "order", bad)


def test_entity_steps_take_async_functions_and_callable_objects() -> None:
    class Columns:
        def __call__(self, ctx: Any) -> dict[str, Any]:
            return {"a": 1}

    async def columns(ctx: Any) -> dict[str, Any]:
        return {"a": 1}

    tf.create_entity_step("c", "order", Columns())
    tf.update_entity_step("u", "order", columns, Columns())
    tf.delete_entity_step("d", "order", columns)


# == (4) more cut-short cases ===================================================================

async def test_a_workflow_timeout_reaching_a_step_parked_in_its_retry_delay_publishes_once(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    async def flaky(ctx: tf.WorkflowContext) -> None:
        raise RuntimeError("down")

    wf = (tf.workflow("rt").step("s", flaky, retry=tf.Retry(max_attempts=3, interval=3600, max_interval=3600))
          .with_timeout(1800).build())
    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.register(wf)
        engine.events.on("workflow.*", events.append)
        done = await finish(engine, await engine.start("rt"), limit=7200)
        await trio.sleep(1)
    assert done.status == "timed_out"
    assert sum(_cut_records(done).values()) == 1
    _assert_one_event_per_cut_record(events, done)
    _end_after_cut_events(events, "workflow.timed_out")


async def test_a_fail_fast_caught_and_run_again_publishes_once_per_execution(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    tries = {"n": 0}

    async def boom(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(1)
        tries["n"] += 1
        if tries["n"] < 3:
            raise RuntimeError("declined")
        return "ok"

    async def slow(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(5)
        return "slow"

    wf = (tf.workflow("loop").parallel("p", branches=[
        tf.branch("a").step("a1", slow).build(), tf.branch("b").step("b1", boom).build()],
        catch=tf.Catch(errors=[tf.ALL], next="p")).build())
    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.register(wf)
        engine.events.on("workflow.*", events.append)
        done = await finish(engine, await engine.start("loop"), limit=600)
        await trio.sleep(1)
    assert done.status == "completed", (done.status, done.error)
    assert sum(_cut_records(done).values()) == 2  # a1, cut by each of b1's two failures
    # One event per cut execution: a Counter per (lane, step) counts executions.
    assert _cut_events(events) == _cut_records(done)


async def test_a_childs_step_cut_by_its_parents_cancel_publishes_once_naming_the_parent(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    kid = tf.workflow("kid").step("k1", _hang).build()
    wf = tf.workflow("parent").child("k", workflow="kid").build()
    events: list[dict[str, Any]] = []
    async with engine_on(storage()) as engine:
        engine.register(kid)
        engine.register(wf)
        engine.events.on("workflow.*", events.append)
        iid = await engine.start("parent")
        await trio.sleep(2)
        assert await engine.cancel(iid)
        done = await finish(engine, iid, limit=600)
        await trio.sleep(5)
        kids = [e["instance_id"] for e in events if e["event"] == "workflow.step.started" and e["step_name"] == "k1"]
        assert len(kids) == 1
        child = await finish(engine, kids[0], limit=600)
    assert done.status == "cancelled"
    assert child.status == "cancelled", child.status
    child_events = [e for e in events if e.get("instance_id") == child.id]
    _assert_one_event_per_cut_record(child_events, child)
    assert sum(_cut_records(child).values()) == 1
    [event] = [e for e in child_events if e["event"] == "workflow.step.failed"]
    assert event["parent_id"] == iid


async def test_ctx_data_assigned_the_view_directly_is_what_it_was_when_set(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    def keep(ctx: tf.WorkflowContext) -> str:
        ctx.data["seen"] = ctx.steps
        return "b"

    wf = (tf.workflow("direct").step("a", lambda ctx: "A").step("b", keep).step("c", lambda ctx: "C")
          .step("d", lambda ctx: ctx.get("seen")).build())
    async with engine_on(storage()) as engine:
        engine.register(wf)
        done = await finish(engine, await engine.start("direct"))
    assert done.status == "completed", done.error
    assert done.output == {"a": "A"}


class Outage:
    """Mixed into a shipped adapter: every checkpoint fails with ``StorageUnavailableError``
    while ``down`` is set (storage gone for longer than ``storage_retry_for``)."""

    down = False

    async def checkpoint(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise tf.StorageUnavailableError("storage down (test)")
        return await super().checkpoint(instance_id, *args, **kwargs)  # type: ignore[misc]


class OutageMemory(Outage, MemoryAdapter):
    pass


class OutageSQLite(Outage, SQLiteAdapter):
    pass


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_cut_step_whose_end_was_never_stored_publishes_nothing_until_a_later_end_is(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str) -> None:
    adapter: Outage = OutageMemory() if kind == "memory" else OutageSQLite(tmp_path / "o.db")
    wf = tf.workflow("w").step("a", lambda ctx: 1).step("h", _hang).build()
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    async with open_test_engine(adapter=adapter, storage_retry_for=5) as engine:
        engine.register(wf)
        engine.events.on("workflow.*", first.append)
        iid = await engine.start("w")
        await trio.sleep(2)
        adapter.down = True
        with trio.fail_after(60):
            assert await engine.cancel(iid)  # (the request is stored; the cancel's end cannot be)
        await trio.sleep(30)
        assert first[-1]["event"] != "workflow.cancelled", first
    assert not _cut_events(first), "published for a step whose failed record was never stored"
    adapter.down = False
    async with open_test_engine(adapter=adapter, storage_retry_for=5) as engine:
        engine.register(wf)
        engine.events.on("workflow.*", second.append)
        await trio.sleep(2)
        await engine.cancel(iid)
        done = await finish(engine, iid, limit=600)
        await trio.sleep(1)
    assert done.status == "cancelled"
    _assert_one_event_per_cut_record(second, done)
