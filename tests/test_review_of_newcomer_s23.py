"""Newcomer review s23: README (quick start, the tour's saga, state machine, waiting and fan-out
sections, Errors) and docs/waiting.md and docs/fanout.md followed as written, then changed the
obvious ways: a typo in a step name, a wrong argument type, a job that raises, a signal to an
unknown instance, a timer in the past, a map over an empty list, a child workflow not
registered, cancelling a parent that waits on children, resume after a restart on SQLite.

Most tests pin documented behaviour the review checked (they pass). The test that fails marks
behaviour a user of Temporal, Step Functions or DBOS would trip over and that the docs do not
cover. Timers run on the autojumping MockClock; SQLite files go in tmp_path; no mocks."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import SQLiteAdapter

UTC = dt.timezone.utc


def sqlite(tmp_path: Path, name: str = "orders.db") -> SQLiteAdapter:
    return SQLiteAdapter(tmp_path / name)


class CardDeclined(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Surprising and not documented (fails now)
# --------------------------------------------------------------------------------------------


async def test_a_signal_no_step_of_the_workflow_can_receive_is_flagged(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """A typo in a signal name (``"aproved"`` for ``"approved"``) is accepted and stored
    quietly: ``signal()`` returns as for a real signal, nothing is logged, and the instance waits
    for ever on ``{"signal": "approved"}``. The definition is static, so the engine knows that
    no receive step of ``expense`` can take ``"aproved"``. waiting.md only says "signals nobody
    receives stay stored". Temporal at least logs a warning for a signal that no handler takes.
    A user expects either a refusal or a WARNING on the ``trioflow`` logger that names the
    signal."""
    wf = tf.workflow("expense").receive("manager-approval", signal="approved").build()
    async with tf.open_engine() as engine:
        engine.register(wf)
        iid = await engine.start("expense")
        await trio.sleep(5)
        with caplog.at_level(logging.WARNING, logger="trioflow"):
            try:
                await engine.signal(iid, "aproved", {"by": "kim"})
            except tf.InvalidArgumentError as exc:
                assert "aproved" in str(exc)
                return
        await trio.sleep(5)
        assert (await engine.get_instance(iid)).waiting == {"signal": "approved", "timeout": None}
        flagged = [r for r in caplog.records
                   if r.name.startswith("trioflow") and r.levelno >= logging.WARNING and "aproved" in r.getMessage()]
        assert flagged, "a signal no receive step of the workflow can take was stored without a word"


# --------------------------------------------------------------------------------------------
# Documented behaviour the review checked (passes)
# --------------------------------------------------------------------------------------------


async def test_quick_start_checkout_on_a_sqlite_file_prints_what_the_readme_says(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    printed: list[str] = []

    async def reserve(ctx: Any) -> Any:
        printed.append(f"reserved {ctx.input['items']}")
        return {"id": "res-1"}

    async def release(ctx: Any, result: Any) -> None:
        printed.append(f"released {result['id']}")

    async def charge(ctx: Any) -> Any:
        raise PermissionError("card declined")

    checkout = tf.workflow("checkout").step("reserve", reserve, release).step("charge", charge).build()
    async with tf.open_engine(adapter=sqlite(tmp_path)) as engine:
        engine.register(checkout)
        instance = await engine.wait(await engine.start("checkout", {"items": ["book"]}))
        with pytest.raises(tf.adapters.DatabaseLockedError):
            async with tf.open_engine(adapter=sqlite(tmp_path)):
                pass  # pragma: no cover
    assert printed == ["reserved ['book']", "released res-1"]
    assert (instance.status, instance.failed_step, instance.error_name, instance.cause) == (
        "failed", "charge", "PermissionError", "card declined")
    assert instance.compensated_steps == ("reserve",)


def test_a_typo_in_a_step_name_or_a_wrong_argument_type_is_refused_naming_it() -> None:
    async def a(ctx: Any) -> int:
        return 1

    with pytest.raises(tf.DefinitionError, match=r"step 'c': choice next 'fulfil' is not a step"):
        (tf.workflow("w").choice("c", choices=[tf.when(lambda ctx: True, next="fulfil")], default="x")
         .pass_("fulfill", end=True).pass_("x", end=True).build())
    with pytest.raises(tf.DefinitionError, match="catch next 'nope'"):
        tf.workflow("w").step("a", a, catch=[tf.Catch(errors=[ValueError], next="nope")]).build()
    with pytest.raises(tf.DefinitionError, match="retry must be a trioflow.Retry, got 3"):
        tf.workflow("w").step("a", a, retry=3).build()  # type: ignore[arg-type]
    with pytest.raises(tf.DefinitionError, match="max_attempts must be an int >= 1, got '3'"):
        tf.Retry(max_attempts="3")  # type: ignore[arg-type]
    with pytest.raises(tf.DefinitionError, match="timeout must be a number of seconds > 0, got '5'"):
        tf.workflow("w").step("a", a, timeout="5").build()  # type: ignore[arg-type]
    with pytest.raises(tf.InvalidArgumentError, match=r"did you mean signal=\?"):
        tf.workflow("w").receive("r", signals="x")  # type: ignore[call-arg]
    with pytest.raises(tf.DefinitionError, match="workflow takes a registered workflow's name: pass 'x'"):
        tf.workflow("w").child("c", workflow=tf.workflow("x").step("a", a).build()).build()  # type: ignore[arg-type]


async def test_a_misspelt_completed_step_in_ctx_steps_names_the_ones_there(
        autojump_clock: trio.testing.MockClock) -> None:
    async def validate(ctx: Any) -> Any:
        return {"in_stock": True}

    wf = (tf.workflow("w").step("validate", validate)
          .choice("c", choices=[tf.when(lambda ctx: ctx.steps["validte"]["in_stock"], next="p")], default="p")
          .pass_("p", end=True).build())
    async with tf.open_engine() as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("w"))
    assert (done.status, done.failed_step) == ("failed", "c")
    assert "'validte'" in (done.cause or "") and "'validate'" in (done.cause or "")


async def test_a_task_job_that_raises_is_retried_then_its_completed_task_is_undone_by_a_job_name(
        autojump_clock: trio.testing.MockClock) -> None:
    calls: list[Any] = []

    def reserve(data: Any) -> Any:
        calls.append(("reserve", data, tf.current_step().execution_id))
        return {"id": f"r-{data['n']}"}

    def release(output: Any) -> None:
        calls.append(("release", output))

    async def charge(data: Any) -> Any:
        calls.append(("charge", trio.current_time()))
        raise CardDeclined("card declined")

    wf = (tf.workflow("t")
          .task("reserve", job="reserve", compensate="release", input=lambda ctx: {"n": ctx.input["n"]})
          .task("charge", job="charge", retry=tf.Retry(max_attempts=3, interval=1.0))
          .build())
    async with tf.open_engine() as engine:
        engine.jobs.register("reserve", reserve)
        engine.jobs.register("release", release)
        engine.jobs.register("charge", charge)
        engine.register(wf)
        done = await engine.wait(await engine.start("t", {"n": 1}))
    assert (done.status, done.error_name, done.cause) == ("failed", "CardDeclined", "card declined")
    assert done.step_results["charge"].attempts == 3
    times = [c[1] for c in calls if c[0] == "charge"]
    assert [round(b - a, 3) for a, b in zip(times, times[1:])] == [1.0, 2.0]  # interval * 2**(n-1)
    assert calls[0] == ("reserve", {"n": 1}, "reserve#1")
    assert calls[-1] == ("release", {"id": "r-1"})
    assert done.compensated_steps == ("reserve",)


async def test_signal_to_an_unknown_ended_or_reserved_target_says_what_was_wrong(
        autojump_clock: trio.testing.MockClock) -> None:
    wf = tf.workflow("w").receive("r", signal="s").build()
    async with tf.open_engine() as engine:
        engine.register(wf)
        with pytest.raises(tf.UnknownInstanceError, match="'nope'"):
            await engine.signal("nope", "s")
        iid = await engine.start("w")
        with pytest.raises(tf.InvalidArgumentError, match="trioflow."):
            await engine.signal(iid, f"trioflow.child-ended:{iid}/x#1", {})
        with pytest.raises(tf.UnencodableValueError, match="set"):
            await engine.signal(iid, "s", {1, 2})
        await engine.signal(iid, "s", "p1", idempotency_key="evt_1")
        await engine.signal(iid, "s", "p2", idempotency_key="evt_1")  # a webhook delivered again
        done = await engine.wait(iid)
        assert done.output == "p1"
        assert await engine.adapter.signals(iid) == []
        await engine.signal(iid, "s", "p3", idempotency_key="evt_1")  # ended, key seen: no error
        with pytest.raises(tf.InstanceNotLiveError, match="has ended"):
            await engine.signal(iid, "s", "p4")
        assert await engine.cancel("nope") is False
        assert await engine.get_instance("nope") is None
        with pytest.raises(tf.UnknownInstanceError):
            await engine.wait("nope")


async def test_timers_in_the_past_fire_at_once_and_pass_the_lane_input_on(
        autojump_clock: trio.testing.MockClock) -> None:
    wf_past = tf.workflow("past").wait("w", until=dt.datetime(2020, 1, 1, tzinfo=UTC)).build()
    wf_1960 = tf.workflow("y1960").wait("w", until=dt.datetime(1960, 1, 1, tzinfo=UTC)).build()
    wf_naive = tf.workflow("naive").wait("w", until=lambda ctx: dt.datetime(2030, 1, 1)).build()
    async with tf.open_engine() as engine:
        for wf in (wf_past, wf_1960, wf_naive):
            engine.register(wf)
        started = trio.current_time()
        past = await engine.wait(await engine.start("past", {"x": 1}))
        y1960 = await engine.wait(await engine.start("y1960", 7))
        assert trio.current_time() == started
        naive = await engine.wait(await engine.start("naive"))
        delayed = await engine.wait(await engine.start("past", {"x": 2}, start_at=dt.datetime(2020, 1, 1, tzinfo=UTC)))
    assert (past.status, past.output) == ("completed", {"x": 1})
    assert (y1960.status, y1960.output) == ("completed", 7)
    assert naive.status == "failed" and "naive" in (naive.cause or "")
    assert delayed.status == "completed"
    with pytest.raises(tf.DefinitionError, match="seconds must be a finite number"):
        tf.workflow("x").wait("t", seconds=-1).build()
    with pytest.raises(tf.DefinitionError, match="aware datetime"):
        tf.workflow("x").wait("t", until=dt.datetime(2030, 1, 1))


async def test_a_map_over_an_empty_list_completes_with_an_empty_list(
        autojump_clock: trio.testing.MockClock) -> None:
    async def one(ctx: Any) -> Any:
        return ctx.item

    branch = tf.branch("b").step("one", one).build()
    wf = tf.workflow("m0").map("m", items=lambda ctx: ctx.input, tolerated_failures=0.5, branch=branch).build()
    kids = tf.workflow("m0c").map("m", items=lambda ctx: ctx.input,
                                  branch=tf.branch("bc").child("c", workflow="m0").build()).build()
    async with tf.open_engine() as engine:
        engine.register(wf)
        engine.register(kids)
        empty = await engine.wait(await engine.start("m0", []))
        tup = await engine.wait(await engine.start("m0", ()))
        no_kids = await engine.wait(await engine.start("m0c", []))
        not_a_list = await engine.wait(await engine.start("m0", {"a": 1}))
    assert (empty.status, empty.output) == ("completed", [])
    assert (tup.status, tup.output) == ("completed", [])
    assert (no_kids.status, no_kids.output, no_kids.children) == ("completed", [], ())
    assert (not_a_list.status, not_a_list.error_name) == ("failed", "InvalidItemsError")
    assert "got dict" in (not_a_list.cause or "")


async def test_a_child_workflow_not_registered_fails_its_step_catchably_and_compensates(
        autojump_clock: trio.testing.MockClock) -> None:
    undone: list[Any] = []

    async def hold(ctx: Any) -> str:
        return "held"

    async def unhold(ctx: Any, result: Any) -> None:
        undone.append(result)

    plain = tf.workflow("p").step("hold", hold, unhold).child("bill", workflow="nobody").build()
    caught = (tf.workflow("pc").step("hold", hold, unhold)
              .child("bill", workflow="nobody", catch=[tf.Catch(errors=[tf.UnknownWorkflowError], next="h")])
              .succeed("ok").pass_("h", end=True).build())
    async with tf.open_engine() as engine:
        engine.register(plain)
        engine.register(caught)
        failed = await engine.wait(await engine.start("p"))
        routed = await engine.wait(await engine.start("pc"))
    assert (failed.status, failed.error_name, failed.compensated_steps) == ("failed", "UnknownWorkflowError", ("hold",))
    assert "'nobody'" in (failed.cause or "")
    assert routed.status == "completed" and routed.step_results["bill"].status == "caught"
    assert undone == ["held"]


async def test_a_child_error_is_caught_by_its_class_a_base_class_its_name_or_child_workflow_error(
        autojump_clock: trio.testing.MockClock) -> None:
    async def lookup(ctx: Any) -> Any:
        return {}["missing"]

    async def declines(ctx: Any) -> Any:
        raise CardDeclined("card 4000 declined")

    async with tf.open_engine() as engine:
        engine.register(tf.workflow("kid-key").step("k", lookup).build())
        engine.register(tf.workflow("kid-card").step("k", declines).build())
        cases = {"base": ("kid-key", [LookupError]), "cls": ("kid-card", [CardDeclined]),
                 "name": ("kid-card", ["CardDeclined"]), "cwe": ("kid-card", [tf.ChildWorkflowError])}
        for tag, (kid, errors) in cases.items():
            engine.register(tf.workflow(f"par-{tag}").child("c", workflow=kid, catch=[tf.Catch(errors=errors, next="h")])
                            .succeed("ok").pass_("h", end=True).build())
        for tag in cases:
            done = await engine.wait(await engine.start(f"par-{tag}"))
            assert done.status == "completed", tag
            assert done.step_results["c"].status == "caught", tag
        engine.register(tf.workflow("par-none").child("c", workflow="kid-card").build())
        failed = await engine.wait(await engine.start("par-none"))
    assert failed.error_name == "CardDeclined" and failed.cause == "card 4000 declined"
    assert (failed.error or "").startswith("ChildWorkflowError: child ")


async def test_cancelling_a_parent_waiting_on_children_cancels_them_and_undoes_completed_ones(
        autojump_clock: trio.testing.MockClock) -> None:
    log: list[Any] = []

    async def quick(ctx: Any) -> Any:
        return ctx.input

    async def unquick(ctx: Any, result: Any) -> None:
        log.append(("undo", result))

    async def slow(ctx: Any) -> str:
        await trio.sleep(1000)
        return "slow"

    kid = tf.workflow("kid").step("q", quick, unquick).step("s", slow).build()
    quick_kid = tf.workflow("quick-kid").step("q", quick, unquick).build()
    waits = tf.workflow("waits").map("m", items=lambda ctx: list(range(5)), max_concurrency=2,
                                     branch=tf.branch("b").child("c", workflow="kid").build()).build()
    later = (tf.workflow("later").map("m", items=lambda ctx: [0, 1],
                                      branch=tf.branch("bq").child("cq", workflow="quick-kid").build())
             .step("s", slow).build())
    async with tf.open_engine() as engine:
        for wf in (kid, quick_kid, waits, later):
            engine.register(wf)
        p = await engine.start("waits", instance_id="pm")
        await trio.sleep(20)
        assert len((await engine.get_instance(p)).children) == 2  # max_concurrency
        assert await engine.cancel(p) is True
        parent = await engine.wait(p)
        assert parent.status == "cancelled"
        for cid in parent.children:
            child = await engine.get_instance(cid)
            assert child is not None and child.status == "cancelled", cid
        q = await engine.start("later", instance_id="pq")
        await trio.sleep(20)
        assert await engine.cancel(q) is True
        parent = await engine.wait(q)
        assert parent.status == "cancelled"
        assert parent.compensated_steps == ("cq", "cq")
        for cid in parent.children:
            child = await engine.get_instance(cid)
            assert child is not None and child.status == "compensated", cid
    assert sorted(log) == [("undo", 0), ("undo", 0), ("undo", 1), ("undo", 1)]  # pm's two started, pq's two


async def test_a_fail_fast_map_fails_as_its_item_did_and_a_catch_on_the_item_error_routes_it(
        autojump_clock: trio.testing.MockClock) -> None:
    async def charge(ctx: Any) -> Any:
        await trio.sleep(ctx.item.get("after", 0))
        if ctx.item.get("decline"):
            raise CardDeclined(f"card of {ctx.item['n']} declined")
        return ctx.item["n"]

    items = [{"n": 0}, {"n": 1, "decline": True, "after": 1}, {"n": 2, "after": 10}]
    wf = (tf.workflow("mapff").map("m", items=lambda ctx: ctx.input, branch=tf.branch("b").step("c", charge).build(),
                                   catch=[tf.Catch(errors=[CardDeclined], next="sorry")])
          .succeed("ok").pass_("sorry", end=True).build())
    bare = tf.workflow("mapff2").map("m", items=lambda ctx: ctx.input,
                                     branch=tf.branch("b2").step("c2", charge).build()).build()
    async with tf.open_engine() as engine:
        engine.register(wf)
        engine.register(bare)
        routed = await engine.wait(await engine.start("mapff", items))
        failed = await engine.wait(await engine.start("mapff2", items))
    assert routed.status == "completed"
    assert routed.output == {"error": "CardDeclined", "cause": "card of 1 declined"}
    assert (failed.error_name, failed.cause) == ("CardDeclined", "card of 1 declined")
    assert (failed.error or "").startswith("ItemError: map step 'm', item 1")


async def test_an_expense_report_resumes_across_a_restart_on_a_sqlite_file(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    log: list[Any] = []

    async def submit(ctx: Any) -> Any:
        log.append("submit")
        return {"amount": ctx.input["amount"]}

    async def remind_manager(ctx: Any) -> str:
        log.append("remind")
        return "reminded"

    async def pay(ctx: Any) -> str:
        log.append(("pay", ctx.steps["manager-approval"]))
        return "paid"

    async def escalate(ctx: Any) -> str:
        log.append("escalate")
        return "escalated"

    expense_report = (tf.workflow("expense-report")
                      .step("submit", submit)
                      .wait("remind-later", seconds=86400)
                      .step("remind-manager", remind_manager)
                      .receive("manager-approval", signal="approved", timeout=3 * 86400,
                               catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="escalate")])
                      .step("pay", pay)
                      .succeed("paid")
                      .step("escalate", escalate)
                      .receive("director-approval", signal="director-approved", next="pay")
                      .build())
    async with tf.open_engine(adapter=sqlite(tmp_path, "exp.db")) as engine:
        engine.register(expense_report)
        iid = await engine.start("expense-report", {"amount": 5}, delay=3600, instance_id="exp-1")
        waiting = (await engine.get_instance(iid)).waiting
        assert waiting is not None and set(waiting) == {"start"}
        await trio.sleep(3700)
        waiting = (await engine.get_instance(iid)).waiting
        assert waiting is not None and set(waiting) == {"timer"}
        await trio.sleep(86400)
        before = (await engine.get_instance(iid)).waiting
        assert before is not None and before["signal"] == "approved"
    assert log == ["submit", "remind"]
    await trio.sleep(86400)  # a day with no engine
    async with tf.open_engine(adapter=sqlite(tmp_path, "exp.db")) as engine:
        engine.register(expense_report)
        assert (await engine.get_instance("exp-1")).waiting == before  # the deadline was kept
        await engine.signal("exp-1", "approved", {"by": "kim"})
        done = await engine.wait("exp-1")
    assert (done.status, done.output) == ("completed", "paid")
    assert log == ["submit", "remind", ("pay", {"by": "kim"})]


async def test_a_timer_and_a_retry_count_survive_a_restart_on_sqlite(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    ran: list[float] = []
    attempts: list[tuple[int, float]] = []

    async def after(ctx: Any) -> str:
        ran.append(trio.current_time())
        return "after"

    async def flaky(ctx: Any) -> Any:
        attempts.append((tf.current_step().attempt, trio.current_time()))
        raise ValueError("flaky")

    timer = tf.workflow("timer").wait("t", seconds=100).step("after", after).build()
    retried = tf.workflow("retried").step(
        "f", flaky, retry=tf.Retry(max_attempts=3, interval=50, max_interval=100)).build()
    t0 = trio.current_time()
    async with tf.open_engine(adapter=sqlite(tmp_path, "t.db")) as engine:
        engine.register(timer)
        engine.register(retried)
        await engine.start("timer", instance_id="i")
        await engine.start("retried", instance_id="j")
        await trio.sleep(30)
    await trio.sleep(10)
    async with tf.open_engine(adapter=sqlite(tmp_path, "t.db")) as engine:
        engine.register(timer)
        engine.register(retried)
        await engine.wait("i")
        j = await engine.wait("j")
    # SQLite commits run virtual time at real speed: a few seconds of slack
    assert ran[0] - t0 == pytest.approx(100, abs=5)
    assert j.status == "failed" and j.step_results["f"].attempts == 3
    assert [a for a, _ in attempts] == [1, 2, 3]
    assert attempts[2][1] - t0 == pytest.approx(150, abs=5)


async def test_cancel_of_a_parent_resumed_before_its_child_workflow_is_registered(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """fanout.md: a child whose workflow is registered after its parent's is cancelled once it
    is, waited for at most the parent's compensation timeout; a child still not registered then
    is stored cancelled, its status `running` until an engine that runs it ends it."""
    log: list[str] = []

    async def k1(ctx: Any) -> str:
        log.append("k1")
        return "k1"

    async def uk1(ctx: Any, result: Any) -> None:
        log.append("undo-k1")

    async def slow(ctx: Any) -> int:
        await trio.sleep(1000)
        return 1

    async def hold(ctx: Any) -> str:
        return "h"

    async def unhold(ctx: Any, result: Any) -> None:
        log.append("undo-h")

    kid = tf.workflow("kid").step("k1", k1, uk1).step("s", slow).build()
    par = tf.workflow("par").step("h", hold, unhold).child("c", workflow="kid").build()
    async with tf.open_engine(adapter=sqlite(tmp_path, "cr.db")) as engine:
        engine.register(kid)
        engine.register(par)
        await engine.start("par", instance_id="p")
        await trio.sleep(10)
    async with tf.open_engine(adapter=sqlite(tmp_path, "cr.db")) as engine:
        engine.register(par)
        await trio.sleep(5)
        t0 = trio.current_time()
        assert await engine.cancel("p") is True
        parent = await engine.wait("p")
        assert parent.status == "cancelled" and parent.compensated_steps == ("h",)
        assert trio.current_time() - t0 == pytest.approx(300, abs=5)  # the compensation timeout
        assert (await engine.get_instance("p/c#1")).status == "running"
        engine.register(kid)
        child = await engine.wait("p/c#1")
    assert (child.status, child.compensated_steps) == ("cancelled", ("k1",))
    assert log == ["k1", "undo-h", "undo-k1"]
