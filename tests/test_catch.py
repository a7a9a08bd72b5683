"""Errors as values (SPEC §12, issue 13): Catch, Succeed and Fail steps, structured errors.

What a user relies on: which catcher routes a failure (and only once retries are spent), what
a caught failure leaves for the next step, what it compensates (nothing) and what a later
failure compensates (everything completed, newest first), catch in and on parallel steps,
succeed / fail steps, error names and causes that survive storage, and what ``build()`` refuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import trioflow as tf


class PaymentError(Exception):
    pass


class CardDeclined(PaymentError):
    """A subclass: a catcher naming ``PaymentError`` catches it by ``isinstance``."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class Boom(Exception):
    pass


async def run_engine(
    wf: tf.WorkflowDefinition, input: Any = None, *, adapter: tf.adapters.Adapter | None = None,
    events: list[dict[str, Any]] | None = None,
) -> tf.WorkflowInstance:
    async with tf.open_engine(adapter=adapter) as engine:
        if events is not None:
            engine.events.on("workflow.*", events.append)
        engine.register(wf)
        return await engine.wait(await engine.start(wf.name, input))


def ran(inst: tf.WorkflowInstance, step: str) -> bool:
    return any(r.step_name == step for r in inst.history)


def raising(error: BaseException, calls: list[str] | None = None, name: str = "") -> Any:
    async def job(data: Any) -> Any:
        if calls is not None:
            calls.append(name)
        raise error
    return job


def returning(value: Any, calls: list[str] | None = None, name: str = "") -> Any:
    async def job(data: Any) -> Any:
        if calls is not None:
            calls.append(name)
        return value
    return job


def routed(errors: Any, error: BaseException) -> tf.WorkflowDefinition:
    """charge raises ``error``; a catcher with ``errors`` routes to "handled"."""
    return (tf.workflow("w")
            .task("charge", job=raising(error), catch=[tf.Catch(errors=errors, next="handled")])
            .pass_("paid", result="paid", end=True)
            .pass_("handled", transform=lambda ctx: ctx.error, end=True)
            .build())


# -- matching -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("errors", "error", "caught"),
    [
        # exception types: isinstance, so a subclass is caught and an unrelated type is not
        ([PaymentError], CardDeclined("card 4242 declined"), True),
        ([CardDeclined], CardDeclined("card 4242 declined"), True),
        (CardDeclined, CardDeclined("card 4242 declined"), True),  # one matcher, not in a list
        ([KeyError, ValueError], CardDeclined("card 4242 declined"), False),
        ([CardDeclined], PaymentError("gateway down"), False),
        # strings: the error's name exactly, or a fragment of its message
        (["CardDeclined"], CardDeclined("card 4242 declined"), True),
        (["CardDecl"], CardDeclined("card 4242 declined"), False),  # a partial name is no name
        (["PaymentError"], CardDeclined("card 4242 declined"), False),  # names do not follow the MRO
        (["4242 decl"], CardDeclined("card 4242 declined"), True),
        (["5555"], CardDeclined("card 4242 declined"), False),
        # predicates get the error itself
        ([lambda e: getattr(e, "code", None) == 51], CardDeclined("no", code=51), True),
        ([lambda e: getattr(e, "code", None) == 51], CardDeclined("no", code=12), False),
        # ALL: every error except trioflow's own definition and storage errors
        (tf.ALL, CardDeclined("no"), True),
        ([tf.ALL], KeyError("k"), True),
        ([tf.ALL], tf.UnknownJobError("no job"), True),
        ([tf.ALL], tf.DefinitionError("bad definition"), False),
        ([tf.ALL], tf.StorageError("disk gone"), False),
        ([tf.ALL], tf.CheckpointConflictError("conflict"), False),
        ([tf.ALL], tf.StorageUnavailableError("disk busy"), False),
        ([tf.ALL], tf.adapters.DatabaseError("database gone"), False),
    ],
)
async def test_a_catcher_matches_types_names_message_fragments_predicates_and_all(
    autojump_clock: trio.testing.MockClock, errors: Any, error: BaseException, caught: bool,
) -> None:
    inst = await run_engine(routed(errors, error))
    if caught:
        assert inst.status == "completed"
        assert inst.output == {"error": type(error).__name__, "cause": str(error)}
        assert inst.step_results["charge"].status == "caught"
    else:
        assert inst.status == "failed" and inst.failed_step == "charge"
        assert inst.error_name == type(error).__name__ and inst.cause == str(error)
        assert inst.step_results["charge"].status == "failed"
        assert not ran(inst, "handled")


async def test_a_type_or_name_that_matches_is_tried_before_a_predicate_that_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    called: list[BaseException] = []

    def predicate(error: BaseException) -> bool:
        called.append(error)
        raise RuntimeError("predicate broke")

    for errors in ([predicate, CardDeclined], [predicate, "CardDeclined"], [predicate, tf.ALL]):
        inst = await run_engine(routed(errors, CardDeclined("declined")))
        assert inst.status == "completed" and inst.output == {"error": "CardDeclined", "cause": "declined"}
    assert called == []


async def test_a_catch_predicate_that_raises_fails_the_step_and_compensates_like_any_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As with a ``retry_on`` predicate that raises: the run goes on to fail and compensate,
    never an internal error that skips the compensations."""
    log: list[str] = []

    def predicate(error: BaseException) -> bool:
        raise RuntimeError("predicate broke")

    wf = (tf.workflow("w")
          .step("reserve", lambda ctx: "r-1", lambda ctx, r: log.append(f"release {r}"))
          .step("charge", raising_step(CardDeclined("declined")), catch=[tf.Catch(errors=[predicate], next="h")])
          .step("ship", lambda ctx: "shipped", end=True)
          .step("h", lambda ctx: "handled")
          .build())
    inst = await run_engine(wf)
    assert inst.status == "failed" and inst.failed_step == "charge", inst.error
    assert inst.error_name in ("CardDeclined", "RuntimeError")
    assert "internal error" not in (inst.error or "")
    assert inst.compensated_steps == ("reserve",) and log == ["release r-1"]

    log.clear()
    result = await tf.execute_workflow(None, wf)
    assert result.status == "failed" and result.failed_step == "charge"
    assert result.compensated_steps == ("reserve",) and log == ["release r-1"]


# Kinds of matcher a generated catcher can have, each matching CardDeclined("card 4242 declined")
# (or not).
MATCHING: dict[str, Any] = {
    "type": PaymentError, "name": "CardDeclined", "fragment": "4242", "predicate": lambda e: e.code == 7,
    "all": tf.ALL,
}
NOT_MATCHING: dict[str, Any] = {
    "type": KeyError, "name": "KeyError", "fragment": "9999", "predicate": lambda e: e.code == 8,
}


@given(catchers=st.lists(st.tuples(st.booleans(), st.sampled_from(sorted(MATCHING))), min_size=1, max_size=6))
def test_the_first_matching_catcher_wins_whatever_kind_of_matcher_the_others_have(
    catchers: list[tuple[bool, str]],
) -> None:
    entered: list[str] = []
    chosen = [tf.Catch(errors=[MATCHING[kind] if match or kind == "all" else NOT_MATCHING[kind]], next=f"t{i}")
              for i, (match, kind) in enumerate(catchers)]
    builder = tf.workflow("w").step("charge", raising_step(CardDeclined("card 4242 declined", code=7)), catch=chosen)
    builder.pass_("paid", end=True)
    for i in range(len(catchers)):
        builder.step(f"t{i}", marker(entered, f"t{i}"), end=True)
    if any(kind == "all" for _, kind in catchers[:-1]):
        # A catcher after one that matches every error could never run: refused, as Amazon
        # States Language refuses States.ALL anywhere but last.
        with pytest.raises(tf.DefinitionError, match="put it last"):
            builder.build()
        return
    wf = builder.build()

    result: tf.WorkflowResult = trio.run(tf.execute_workflow, None, wf)
    first = next((i for i, (match, kind) in enumerate(catchers) if match or kind == "all"), None)
    if first is None:
        assert not result.success and result.failed_step == "charge" and isinstance(result.error, CardDeclined)
        assert entered == []
    else:
        assert result.success and entered == [f"t{first}"]
        assert result.output == {"error": "CardDeclined", "cause": "card 4242 declined"}


def raising_step(error: BaseException) -> Any:
    async def execute(ctx: tf.WorkflowContext) -> None:
        raise error
    return execute


def marker(entered: list[str], name: str) -> Any:
    async def execute(ctx: tf.WorkflowContext) -> Any:
        entered.append(name)
        return ctx.error
    return execute


async def test_the_first_catcher_in_list_order_wins_even_when_a_later_one_is_more_specific(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wf = (tf.workflow("w")
          .task("charge", job=raising(CardDeclined("declined")), catch=[
              tf.Catch(errors=[KeyError], next="on-key"),
              tf.Catch(errors=[PaymentError], next="on-payment"),
              tf.Catch(errors=[CardDeclined], next="on-declined"),
              tf.Catch(errors=[tf.ALL], next="on-all"),
          ])
          .pass_("on-key", result="key", end=True)
          .pass_("on-payment", result="payment", end=True)
          .pass_("on-declined", result="declined", end=True)
          .pass_("on-all", result="all", end=True)
          .build())
    inst = await run_engine(wf)
    assert inst.status == "completed" and inst.output == "payment"
    assert [r.step_name for r in inst.history] == ["charge", "on-payment"]


async def test_catch_routes_only_after_every_retry_is_spent(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []

    async def charge(data: Any) -> None:
        times.append(trio.current_time())
        raise CardDeclined("declined")

    wf = (tf.workflow("w")
          .task("charge", job=charge, retry=tf.Retry(max_attempts=4, interval=1.0, backoff_rate=2.0),
                catch=[tf.Catch(errors=[CardDeclined], next="handled")])
          .pass_("paid", end=True)
          .pass_("handled", transform=lambda ctx: ctx.error, end=True)
          .build())
    inst = await run_engine(wf)
    assert inst.status == "completed" and inst.output == {"error": "CardDeclined", "cause": "declined"}
    assert len(times) == 4
    assert [b - a for a, b in zip(times, times[1:])] == pytest.approx([1.0, 2.0, 4.0])
    assert inst.step_results["charge"].attempts == 4 and inst.step_results["charge"].status == "caught"
    assert [(r.step_name, r.status) for r in inst.history] == [("charge", "caught"), ("handled", "completed")]


async def test_an_error_retry_on_does_not_retry_is_caught_after_one_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[str] = []
    wf = (tf.workflow("w")
          .task("charge", job=raising(CardDeclined("declined"), calls, "charge"),
                retry=tf.Retry(max_attempts=5, retry_on=[TimeoutError]),
                catch=tf.Catch(errors=[tf.ALL], next="handled"))
          .pass_("paid", end=True)
          .pass_("handled", end=True)
          .build())
    inst = await run_engine(wf)
    assert inst.status == "completed" and calls == ["charge"]
    assert inst.step_results["charge"].attempts == 1 and inst.step_results["charge"].status == "caught"


async def test_a_step_that_succeeds_on_a_retry_is_not_caught(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[int] = []

    async def flaky(data: Any) -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 3:
            raise CardDeclined("not yet")
        return "charged"

    wf = (tf.workflow("w")
          .task("charge", job=flaky, retry=tf.Retry(max_attempts=3, interval=0.5),
                catch=[tf.Catch(errors=[tf.ALL], next="handled")])
          .pass_("paid", transform=lambda ctx: [ctx.steps["charge"], ctx.error], end=True)
          .pass_("handled", result="handled", end=True)
          .build())
    inst = await run_engine(wf)
    assert inst.status == "completed" and inst.output == ["charged", None]
    assert attempts == [1, 2, 3]
    assert [(r.step_name, r.status) for r in inst.history] == [("charge", "completed"), ("paid", "completed")]


async def test_an_unstorable_value_set_through_ctx_set_in_a_job_is_not_retried_and_is_catchable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[int] = []

    async def charge(ctx: tf.WorkflowContext) -> str:
        calls.append(1)
        ctx.set("receipt", object())
        return "charged"  # pragma: no cover - ctx.set raised

    wf = (tf.workflow("w")
          .step("charge", charge, retry=tf.Retry(max_attempts=5, interval=1.0),
                catch=[tf.Catch(errors=[tf.UnencodableValueError], next="handled", result="why")])
          .step("paid", returning_step("paid"), end=True)
          .step("handled", lambda ctx: ["receipt" in ctx.data, ctx.data["why"]], end=True)
          .build())
    inst = await run_engine(wf)
    assert calls == [1], "an unstorable value fails the same way on every attempt: not retried"
    assert inst.status == "completed"
    assert inst.step_results["charge"].attempts == 1 and inst.step_results["charge"].status == "caught"
    in_data, why = inst.output
    assert in_data is False
    assert why["error"] == "UnencodableValueError" and "ctx.set('receipt')" in why["cause"]


def returning_step(value: Any) -> Any:
    async def execute(ctx: tf.WorkflowContext) -> Any:
        return value
    return execute


# -- what a caught failure leaves ------------------------------------------------------------------


def checkout(log: list[str], *, final: Any = None) -> tf.WorkflowDefinition:
    """reserve -> charge (declines; caught, result="payment_error") -> notify -> [final]."""

    async def reserve(ctx: tf.WorkflowContext) -> str:
        log.append("reserve")
        ctx.set("reserved", True)
        return "r-1"

    async def charge(ctx: tf.WorkflowContext) -> str:
        log.append("charge")
        raise CardDeclined(f"card {ctx.input['card']} declined")

    async def notify(ctx: tf.WorkflowContext) -> dict[str, Any]:
        log.append("notify")
        return {"steps": ctx.steps["charge"], "error": ctx.error, "data": ctx.get("payment_error"),
                "reserved": ctx.get("reserved"), "reserve": ctx.steps["reserve"]}

    builder = (tf.workflow("checkout")
               .step("reserve", reserve, lambda ctx, r: log.append(f"release {r}"))
               .step("charge", charge, lambda ctx, r: log.append(f"refund {r}"),
                     catch=[tf.Catch(errors=[PaymentError], next="notify", result="payment_error")])
               .step("ship", lambda ctx: log.append("ship"))
               .step("notify", notify, lambda ctx, r: log.append("unnotify")))
    if final is not None:
        builder.step("final", final)
    return builder.build()


async def test_a_caught_failure_is_the_step_output_ctx_error_and_shared_data_and_the_instance_completes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    events: list[dict[str, Any]] = []
    inst = await run_engine(checkout(log), {"card": "4242"}, events=events)
    caught = {"error": "CardDeclined", "cause": "card 4242 declined"}
    assert inst.status == "completed" and inst.error is None and inst.error_name is None and inst.cause is None
    assert inst.output == {"steps": caught, "error": caught, "data": caught, "reserved": True, "reserve": "r-1"}
    assert log == ["reserve", "charge", "notify"], "ship is skipped; nothing is compensated"
    assert inst.compensated_steps == ()
    assert [(r.step_name, r.status) for r in inst.history] == [
        ("reserve", "completed"), ("charge", "caught"), ("notify", "completed")]
    record = inst.step_results["charge"]
    assert record.status == "caught" and record.output == caught
    assert record.error_name == "CardDeclined" and record.cause == "card 4242 declined"
    assert not ran(inst, "ship") and inst.step_results["ship"].status == "skipped"
    caught_events = [e for e in events if e["event"] == "workflow.step.caught"]
    assert len(caught_events) == 1
    assert {k: caught_events[0].get(k) for k in ("step_name", "error", "cause", "next")} == {
        "step_name": "charge", "error": "CardDeclined", "cause": "card 4242 declined", "next": "notify"}
    assert "workflow.completed" in [e["event"] for e in events]
    assert "workflow.failed" not in [e["event"] for e in events]
    assert "workflow.step.failed" not in [e["event"] for e in events]


async def test_ctx_error_is_none_when_nothing_was_caught(autojump_clock: trio.testing.MockClock) -> None:
    wf = tf.workflow("w").task("a", job=returning("a")).pass_("b", transform=lambda ctx: ctx.error).build()
    inst = await run_engine(wf)
    assert inst.status == "completed" and inst.output is None


async def test_a_later_failure_compensates_every_completed_execution_newest_first_but_never_the_caught_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    async def final(ctx: tf.WorkflowContext) -> None:
        raise Boom("warehouse closed")

    inst = await run_engine(checkout(log, final=final), {"card": "4242"})
    assert inst.status == "failed" and inst.failed_step == "final"
    assert inst.error_name == "Boom" and inst.cause == "warehouse closed"
    assert log == ["reserve", "charge", "notify", "unnotify", "release r-1"]
    assert inst.compensated_steps == ("notify", "reserve")
    assert [(r.step_name, r.status) for r in inst.history] == [
        ("reserve", "compensated"), ("charge", "caught"), ("notify", "compensated"), ("final", "failed")]


async def test_a_catch_that_loops_back_compensates_each_execution_once_newest_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """reserve runs twice (the catch sends the lane back), so a later failure releases twice."""
    log: list[str] = []
    tries: list[int] = []

    async def reserve(ctx: tf.WorkflowContext) -> str:
        tries.append(1)
        return f"hold-{len(tries)}"

    async def charge(ctx: tf.WorkflowContext) -> str:
        if len(tries) < 2:
            raise CardDeclined("first card declined")
        return "charged"

    async def ship(ctx: tf.WorkflowContext) -> None:
        raise Boom("no truck")

    wf = (tf.workflow("w")
          .step("reserve", reserve, lambda ctx, r: log.append(f"release {r}"))
          .step("charge", charge, lambda ctx, r: log.append(f"refund {r}"),
                catch=[tf.Catch(errors=["CardDeclined"], next="reserve")])
          .step("ship", ship)
          .build())
    inst = await run_engine(wf)
    assert inst.status == "failed" and inst.failed_step == "ship"
    assert [(r.id, r.status) for r in inst.history] == [
        ("reserve#1", "compensated"), ("charge#1", "caught"), ("reserve#2", "compensated"),
        ("charge#2", "compensated"), ("ship#1", "failed")]
    assert log == ["refund charged", "release hold-2", "release hold-1"]
    assert inst.compensated_steps == ("charge", "reserve", "reserve")


# -- catch and parallel steps ----------------------------------------------------------------------


@pytest.mark.parametrize("on_error", ["fail-fast", "wait-all"])
async def test_a_catch_inside_a_branch_lets_the_branch_go_on_and_its_siblings_finish(
    autojump_clock: trio.testing.MockClock, on_error: Any,
) -> None:
    log: list[str] = []

    async def fails_soon(data: Any) -> None:
        await trio.sleep(1)
        log.append("a1 failed")
        raise Boom("a1 broke")

    async def slow(data: Any) -> str:
        await trio.sleep(10)
        log.append("b1 done")
        return "b1"

    wf = (tf.workflow("w")
          .parallel("p", on_error=on_error, branches=[
              tf.branch("a")
              .task("a1", job=fails_soon, catch=[tf.Catch(errors=[Boom], next="a-recover")])
              .task("a2", job=returning("a2", log, "a2"))
              .pass_("a-recover", transform=lambda ctx: {"recovered": ctx.error})
              .build(),
              tf.branch("b").task("b1", job=slow).build(),
          ])
          .pass_("after", transform=lambda ctx: [ctx.steps["p"], ctx.error])
          .build())
    inst = await run_engine(wf)
    assert inst.status == "completed"
    caught = {"error": "Boom", "cause": "a1 broke"}
    assert inst.output == [{"a": {"recovered": caught}, "b": "b1"}, None], "ctx.error is per lane"
    assert log == ["a1 failed", "b1 done"], "a2 skipped, b not cancelled"
    assert inst.step_results["a1"].status == "caught" and inst.step_results["p"].status == "completed"


async def test_a_catch_on_a_fail_fast_parallel_cancels_the_siblings_then_routes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    async def fails_soon(data: Any) -> None:
        await trio.sleep(1)
        raise CardDeclined("declined in a")

    async def slow(data: Any) -> str:
        try:
            await trio.sleep(10)
        except trio.Cancelled:
            log.append(f"b2 cancelled at {trio.current_time():.0f}")
            raise
        log.append("b2 done")  # pragma: no cover - cancelled
        return "b2"  # pragma: no cover

    async def handle(ctx: tf.WorkflowContext) -> Any:
        log.append(f"handle at {trio.current_time():.0f}")
        return [ctx.steps["p"], ctx.error, ctx.data["why"]]

    start = trio.current_time()
    wf = (tf.workflow("w")
          .parallel("p", catch=[tf.Catch(errors=[PaymentError], next="handle", result="why")], branches=[
              tf.branch("a").task("a1", job=fails_soon).build(),
              tf.branch("b").task("b1", job=returning("b1"), compensate=lambda r: log.append("undo b1"))
              .task("b2", job=slow).build(),
          ])
          .pass_("after", result="not here", end=True)
          .step("handle", handle)
          .build())
    inst = await run_engine(wf)
    caught = {"error": "CardDeclined", "cause": "declined in a"}
    assert inst.status == "completed" and inst.output == [caught, caught, caught]
    assert log == [f"b2 cancelled at {start + 1:.0f}", f"handle at {start + 1:.0f}"]
    assert inst.step_results["p"].status == "caught" and inst.step_results["p"].output == caught
    assert inst.step_results["b1"].status == "completed", "a caught failure compensates nothing"
    assert not ran(inst, "after") and inst.compensated_steps == ()


async def test_a_catch_on_a_wait_all_parallel_routes_with_every_failed_branch_named(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    async def slow_ok(data: Any) -> str:
        await trio.sleep(10)
        log.append("c done")
        return "c"

    wf = (tf.workflow("w")
          .parallel("p", on_error="wait-all", catch=[tf.Catch(errors=[tf.ParallelError], next="handle")],
                    branches=[
                        tf.branch("a").task("a1", job=raising(CardDeclined("card declined"))).build(),
                        tf.branch("b").task("b1", job=raising(KeyError("sku-9"))).build(),
                        tf.branch("c").task("c1", job=slow_ok).build(),
                    ])
          .pass_("after", result="not here", end=True)
          .pass_("handle", transform=lambda ctx: ctx.error)
          .build())
    inst = await run_engine(wf)
    assert inst.status == "completed" and log == ["c done"], "wait-all lets c finish"
    assert inst.output["error"] == "ParallelError"
    cause = inst.output["cause"]
    assert cause == ("parallel step 'p': branch 'a' failed with CardDeclined: card declined;"
                     " branch 'b' failed with KeyError: 'sku-9'")
    assert "'c'" not in cause
    assert inst.step_results["p"].status == "caught" and inst.step_results["p"].error_name == "ParallelError"


async def test_a_wait_all_failure_without_catch_names_each_branch_error_name_and_cause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wf = (tf.workflow("w")
          .parallel("p", on_error="wait-all", branches=[
              tf.branch("a").task("a1", job=raising(Boom("x broke"))).build(),
              tf.branch("b").fail("b-fail", error="OutOfStock", cause="sku 9 sold out").build(),
          ])
          .build())
    inst = await run_engine(wf)
    assert inst.status == "failed" and inst.error_name == "ParallelError"
    assert inst.cause == ("parallel step 'p': branch 'a' failed with Boom: x broke;"
                          " branch 'b' failed with OutOfStock: sku 9 sold out")
    result = await tf.execute_workflow(None, wf)
    assert isinstance(result.error, tf.ParallelError)
    assert str(result.error) == inst.cause
    branches = [e for e in result.error.exceptions if isinstance(e, tf.BranchError)]
    assert [(e.branch_name, type(e.error).__name__) for e in branches] == [("a", "Boom"), ("b", "FailStepError")]


async def test_a_catch_on_a_parallel_step_inside_a_branch_routes_within_that_branch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wf = (tf.workflow("w")
          .parallel("outer", branches=[
              tf.branch("a")
              .parallel("inner", catch=[tf.Catch(errors=[Boom], next="a-handle")], branches=[
                  tf.branch("i").task("i1", job=raising(Boom("deep"))).build(),
              ])
              .pass_("a-ok", result="not here", end=True)
              .pass_("a-handle", transform=lambda ctx: ctx.error)
              .build(),
              tf.branch("b").task("b1", job=returning("b1")).build(),
          ])
          .build())
    inst = await run_engine(wf)
    assert inst.status == "completed" and inst.output == {"a": {"error": "Boom", "cause": "deep"}, "b": "b1"}


async def test_a_wait_all_message_names_a_nested_parallels_failure_by_its_error_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Branch 'a' failed because its fail-fast inner parallel did, with Boom: that is the name
    its record has, and the name the outer message gives."""
    wf = (tf.workflow("w")
          .parallel("outer", on_error="wait-all", branches=[
              tf.branch("a").parallel("inner", branches=[
                  tf.branch("i").task("i1", job=raising(Boom("deep"))).build(),
              ]).build(),
              tf.branch("b").task("b1", job=returning("b1")).build(),
          ])
          .build())
    inst = await run_engine(wf)
    assert inst.status == "failed" and inst.error_name == "ParallelError"
    assert (inst.step_results["inner"].error_name, inst.step_results["inner"].cause) == ("Boom", "deep")
    assert inst.cause == "parallel step 'outer': branch 'a' failed with Boom: deep"


@pytest.mark.parametrize("on_error", ["fail-fast", "wait-all"])
async def test_a_fail_step_in_a_branch_is_caught_by_the_parallel_steps_catch_by_its_error_name(
    autojump_clock: trio.testing.MockClock, on_error: Any,
) -> None:
    log: list[str] = []

    async def other(data: Any) -> str:
        await trio.sleep(5)
        log.append("other done")
        return "other"

    wf = (tf.workflow("w")
          .parallel("p", on_error=on_error, catch=[
              tf.Catch(errors=[KeyError], next="wrong"),
              tf.Catch(errors=["OrderRejected"], next="rejected"),
          ], branches=[
              tf.branch("check").fail("reject", error="OrderRejected", cause="order over the limit").build(),
              tf.branch("other").task("o1", job=other).build(),
          ])
          .pass_("ok", result="ok", end=True)
          .pass_("wrong", result="wrong", end=True)
          .pass_("rejected", transform=lambda ctx: ctx.error, end=True)
          .build())
    inst = await run_engine(wf)
    assert inst.status == "completed"
    if on_error == "fail-fast":
        assert inst.output == {"error": "OrderRejected", "cause": "order over the limit"}
        assert log == []
    else:
        assert inst.output["error"] == "ParallelError"
        assert "branch 'check' failed with OrderRejected: order over the limit" in inst.output["cause"]
        assert log == ["other done"]
    assert inst.step_results["reject"].status == "failed"
    assert inst.step_results["reject"].error_name == "OrderRejected"
    assert inst.step_results["p"].status == "caught"


async def test_a_later_failure_compensates_branch_steps_that_completed_before_a_caught_parallel_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    async def fails_later(data: Any) -> None:
        await trio.sleep(1)
        raise Boom("a broke")

    wf = (tf.workflow("w")
          .task("reserve", job=returning("r"), compensate=lambda r: log.append("release"))
          .parallel("p", on_error="wait-all", catch=[tf.Catch(errors=[tf.ALL], next="handle")], branches=[
              tf.branch("a").task("a1", job=fails_later).build(),
              tf.branch("b").task("b1", job=returning("b1"), compensate=lambda r: log.append("undo b1")).build(),
          ])
          .pass_("after", end=True)
          .task("handle", job=returning("h"), compensate=lambda r: log.append("undo handle"))
          .task("boom", job=raising(Boom("late")))
          .build())
    inst = await run_engine(wf)
    assert inst.status == "failed" and inst.failed_step == "boom" and inst.cause == "late"
    assert log == ["undo handle", "undo b1", "release"]
    assert inst.compensated_steps == ("handle", "b1", "reserve")
    assert inst.step_results["p"].status == "caught"


async def test_a_step_timeout_is_catchable_by_type_and_by_name(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(data: Any) -> None:
        await trio.sleep(100)

    for errors in ([tf.StepTimeoutError], [TimeoutError], ["StepTimeoutError"]):
        wf = (tf.workflow("w")
              .task("call", job=slow, timeout=2.0, retry=tf.Retry(max_attempts=2, interval=1.0),
                    catch=[tf.Catch(errors=errors, next="fallback")])
              .pass_("ok", end=True)
              .pass_("fallback", transform=lambda ctx: ctx.error["error"], end=True)
              .build())
        start = trio.current_time()
        inst = await run_engine(wf)
        assert inst.status == "completed" and inst.output == "StepTimeoutError"
        assert inst.step_results["call"].attempts == 2
        assert trio.current_time() - start == pytest.approx(5.0)


async def test_a_workflow_timeout_and_a_cancel_are_never_caught(autojump_clock: trio.testing.MockClock) -> None:
    log: list[str] = []

    async def slow(data: Any) -> None:
        await trio.sleep(100)

    def build(timeout: float | None) -> tf.WorkflowDefinition:
        builder = (tf.workflow("w")
                   .task("reserve", job=returning("r"), compensate=lambda r: log.append("release"))
                   .task("call", job=slow, catch=[tf.Catch(errors=[tf.ALL, BaseException], next="handled")])
                   .pass_("ok", end=True)
                   .task("handled", job=returning("handled", log, "handled")))
        if timeout is not None:
            builder.with_timeout(timeout)
        return builder.build()

    inst = await run_engine(build(5.0))
    assert inst.status == "timed_out" and log == ["release"]

    log.clear()
    async with tf.open_engine() as engine:
        engine.register(build(None))
        iid = await engine.start("w")
        await trio.sleep(3)
        assert await engine.cancel(iid)
        inst = await engine.wait(iid)
    assert inst.status == "cancelled" and log == ["release"]
    assert not ran(inst, "handled")


async def test_crashes_at_every_checkpoint_of_workflows_with_catch_succeed_and_fail_end_as_without(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from trioflow.testing import ScriptedJob, explore_crashes, raises, returns

    def jobs() -> dict[str, Any]:
        return {"reserve": ScriptedJob(returns("r-1")), "release": ScriptedJob(),
                "charge": ScriptedJob(raises(CardDeclined("declined"))), "refund": ScriptedJob(),
                "notify": ScriptedJob(returns("notified")), "cancel": ScriptedJob()}

    caught_then_succeed = (tf.workflow("caught")
                           .task("reserve", job="reserve", compensate="release")
                           .task("charge", job="charge", compensate="refund",
                                 catch=[tf.Catch(errors=["CardDeclined"], next="notify", result="why")])
                           .succeed("paid", output="paid")
                           .task("notify", job="notify", compensate="cancel")
                           .pass_("summary", transform=lambda ctx: [ctx.error, ctx.data["why"], ctx.steps["notify"]])
                           .succeed("done")
                           .build())
    report = await explore_crashes(caught_then_succeed, jobs=jobs())
    caught = {"error": "CardDeclined", "cause": "declined"}
    assert report.baseline.status == "completed"
    assert report.baseline.output == [caught, caught, "notified"]
    assert report.writes >= 3 and report.divergent == ()

    caught_then_fail = (tf.workflow("failing")
                        .task("reserve", job="reserve", compensate="release")
                        .task("charge", job="charge", compensate="refund",
                              catch=[tf.Catch(errors=[tf.ALL], next="notify")])
                        .task("ship", job="notify")
                        .task("notify", job="notify", compensate="cancel")
                        .parallel("p", branches=[
                            tf.branch("x").task("x1", job="notify", compensate="cancel").build(),
                            tf.branch("y").fail("y-fail", error="Rejected", cause="no").build(),
                        ], on_error="wait-all")
                        .build())
    report = await explore_crashes(caught_then_fail, jobs=jobs())
    assert report.baseline.status == "failed"
    assert report.baseline.compensated_steps == ("x1", "notify", "reserve")
    assert report.divergent == ()

    # A parallel step's catch routes on the branches' errors, also when the branch failures were
    # stored before a crash and are known after the resume only as they were recorded.
    # (A fail-fast catch by exception type: see the next test, which reaches that crash point
    # on purpose rather than by scheduling luck.)
    cases: list[tuple[Literal["fail-fast", "wait-all"], list[Any]]] = [
        ("wait-all", [tf.ParallelError]), ("wait-all", ["CardDeclined"]), ("fail-fast", ["CardDeclined"])]
    for on_error, errors in cases:
        parallel_caught = (tf.workflow("parallel-caught")
                           .task("reserve", job="reserve", compensate="release")
                           .parallel("p", on_error=on_error, catch=[tf.Catch(errors=errors, next="handle")],
                                     branches=[
                                         tf.branch("x").task("x1", job="notify", compensate="cancel")
                                         .task("x2", job="charge").build(),
                                         tf.branch("y").task("y1", job="notify", compensate="cancel")
                                         .task("y2", job="notify").build(),
                                     ])
                           .succeed("ok", output="not here")
                           .pass_("handle", transform=lambda ctx: [ctx.error, ctx.steps["p"]])
                           .build())
        report = await explore_crashes(parallel_caught, jobs=jobs())
        assert report.baseline.status == "completed", (on_error, errors)
        error = report.baseline.output[0]
        assert report.baseline.output == [error, error]
        if on_error == "wait-all":
            assert error == {"error": "ParallelError",
                             "cause": "parallel step 'p': branch 'x' failed with CardDeclined: declined"}
        else:
            assert error == {"error": "CardDeclined", "cause": "declined"}
        assert report.divergent == ()


# -- succeed and fail steps ------------------------------------------------------------------------


def early_exit(**succeed: Any) -> tf.WorkflowDefinition:
    return (tf.workflow("w")
            .task("a", job=lambda data: {"n": data["n"]})
            .choice("route", choices=[tf.when(lambda ctx: ctx.input["early"], next="done")], default="more")
            .succeed("done", **succeed)
            .task("more", job=lambda data: "more")
            .build())


@pytest.mark.parametrize(
    ("succeed", "expected"),
    [
        ({"output": {"ok": True}}, {"ok": True}),
        ({"output": lambda ctx: ctx.steps["a"]["n"] * 2}, 42),
        ({"output": None}, None),
        ({}, {"n": 21}),  # no output given: the lane's last output passes on
    ],
    ids=["value", "callable", "none", "pass-through"],
)
async def test_a_succeed_step_ends_the_workflow_with_its_output(
    autojump_clock: trio.testing.MockClock, succeed: dict[str, Any], expected: Any,
) -> None:
    wf = early_exit(**succeed)
    inst = await run_engine(wf, {"n": 21, "early": True})
    assert inst.status == "completed" and inst.output == expected
    assert [r.step_name for r in inst.history] == ["a", "route", "done"]
    assert inst.step_results["done"].status == "completed"
    assert not ran(inst, "more") and inst.step_results["more"].status == "skipped"
    late = await run_engine(wf, {"n": 21, "early": False})
    assert late.status == "completed" and late.output == "more"
    assert [r.step_name for r in late.history] == ["a", "route", "more"]


async def test_a_catch_can_route_to_a_succeed_step(autojump_clock: trio.testing.MockClock) -> None:
    wf = (tf.workflow("w")
          .task("charge", job=raising(CardDeclined("declined")),
                catch=[tf.Catch(errors=[CardDeclined], next="declined")])
          .task("ship", job=lambda data: "shipped")
          .succeed("declined", output=lambda ctx: {"status": "declined", **ctx.error})
          .build())
    inst = await run_engine(wf)
    assert inst.status == "completed"
    assert inst.output == {"status": "declined", "error": "CardDeclined", "cause": "declined"}
    assert [r.step_name for r in inst.history] == ["charge", "declined"]


async def test_a_succeed_step_in_a_branch_ends_only_that_branch(autojump_clock: trio.testing.MockClock) -> None:
    log: list[str] = []
    wf = (tf.workflow("w")
          .parallel("p", branches=[
              tf.branch("x")
              .task("x1", job=returning("x1", log, "x1"))
              .choice("x-route", choices=[tf.when(lambda ctx: True, next="x-done")], default="x2")
              .task("x2", job=returning("x2", log, "x2"))
              .succeed("x-done", output=lambda ctx: f"x ended after {ctx.steps['x1']}")
              .build(),
              tf.branch("y").task("y1", job=returning("y1", log, "y1")).succeed("y-done").build(),
          ])
          .task("after", job=returning("after", log, "after"))
          .pass_("out", transform=lambda ctx: ctx.steps["p"])
          .build())
    inst = await run_engine(wf)
    assert inst.status == "completed"
    assert inst.output == {"x": "x ended after x1", "y": "y1"}
    assert sorted(log) == ["after", "x1", "y1"] and log[-1] == "after"
    assert not ran(inst, "x2")


async def test_a_fail_step_fails_the_workflow_with_its_name_and_cause_and_compensates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    events: list[dict[str, Any]] = []
    wf = (tf.workflow("w")
          .step("reserve", lambda ctx: "r-1", lambda ctx, r: log.append(f"release {r}"))
          .step("charge", lambda ctx: "c-1", lambda ctx, r: log.append(f"refund {r}"))
          .fail("reject", error="OrderRejected", cause=lambda ctx: f"order {ctx.input['id']}: {ctx.steps['charge']}")
          .build())
    inst = await run_engine(wf, {"id": "o-7"}, events=events)
    assert inst.status == "failed" and inst.failed_step == "reject"
    assert inst.error_name == "OrderRejected" and inst.cause == "order o-7: c-1"
    assert inst.error == "OrderRejected: order o-7: c-1"
    assert log == ["refund c-1", "release r-1"] and inst.compensated_steps == ("charge", "reserve")
    last = inst.history[-1]
    assert (last.step_name, last.status, last.error_name, last.cause) == (
        "reject", "failed", "OrderRejected", "order o-7: c-1")
    failed = [e for e in events if e["event"] == "workflow.step.failed"]
    assert [e["step_name"] for e in failed] == ["reject"]

    log.clear()
    result = await tf.execute_workflow(None, wf, {"id": "o-8"})
    assert not result.success and result.status == "failed" and result.failed_step == "reject"
    assert result.error_name == "OrderRejected" and result.cause == "order o-8: c-1"
    assert isinstance(result.error, tf.FailStepError)
    assert result.compensated_steps == ("charge", "reserve") and log == ["refund c-1", "release r-1"]


async def test_a_fail_step_with_a_text_cause_or_none(autojump_clock: trio.testing.MockClock) -> None:
    inst = await run_engine(tf.workflow("w").fail("stop", error="Halted", cause="by request").build())
    assert (inst.status, inst.error_name, inst.cause) == ("failed", "Halted", "by request")
    assert inst.error == "Halted: by request"
    inst = await run_engine(tf.workflow("w").fail("stop", error="Halted").build())
    assert (inst.status, inst.error_name, inst.cause) == ("failed", "Halted", "")


async def test_an_exception_failure_has_its_class_name_and_message(autojump_clock: trio.testing.MockClock) -> None:
    inst = await run_engine(tf.workflow("w").task("a", job=raising(CardDeclined("card 1 declined"))).build())
    assert (inst.error_name, inst.cause) == ("CardDeclined", "card 1 declined")
    assert inst.error == "CardDeclined: card 1 declined"
    assert (inst.history[0].error_name, inst.history[0].cause) == ("CardDeclined", "card 1 declined")
    result = await tf.execute_workflow(None, tf.workflow("w").task("a", job=raising(KeyError("k"))).build())
    assert (result.error_name, result.cause) == ("KeyError", "'k'")


# -- structured errors survive storage -------------------------------------------------------------


def _summary(inst: tf.WorkflowInstance) -> Any:
    return (inst.status, inst.error, inst.error_name, inst.cause, inst.failed_step, inst.output,
            inst.compensated_steps,
            [(r.id, r.status, r.error, r.error_name, r.cause, r.output, r.attempts) for r in inst.history])


async def test_error_names_and_causes_read_back_identically_from_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    wf = (tf.workflow("w")
          .task("reserve", job=lambda data: "r-1", compensate=lambda r: None)
          .task("charge", job=raising(CardDeclined("card 4242: declined")),
                catch=[tf.Catch(errors=[PaymentError], next="check", result="why")])
          .task("ship", job=lambda data: "shipped")
          .parallel("check", on_error="wait-all", catch=[tf.Catch(errors=["NotAnError"], next="ship")], branches=[
              tf.branch("b1").task("b1-a", job=lambda data: "ok").build(),
              tf.branch("b2").fail("b2-fail", error="Fraud.Suspected", cause="score: 0.97").build(),
          ])
          .build())
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        iid = await engine.start("w", {"id": 1})
        live = await engine.wait(iid)
    assert live.status == "failed" and live.error_name == "ParallelError"
    assert live.cause == "parallel step 'check': branch 'b2' failed with Fraud.Suspected: score: 0.97"
    assert live.step_results["charge"].status == "caught"
    assert live.step_results["b2-fail"].error_name == "Fraud.Suspected"
    assert live.step_results["b2-fail"].cause == "score: 0.97"

    for registered in (True, False):
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
            if registered:
                engine.register(wf)
            stored = await engine.get_instance(iid)
            assert stored is not None
            assert _summary(stored) == _summary(live)
            assert (await engine.wait(iid)).error_name == "ParallelError"


async def test_a_fail_step_error_name_that_is_not_an_identifier_reads_back_as_given(tmp_path: Path) -> None:
    """Names such as "Fraud.Suspected" are stored as given, not parsed back out of the one-line
    description. (Amazon States Language's own, "States.TaskFailed", are refused: see
    test_review_of_matcher_refusals.)"""
    path = tmp_path / "x.db"
    wf = tf.workflow("w").fail("stop", error="Fraud.Suspected", cause="a: b: c").build()
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        live = await engine.wait(iid)
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        stored = await engine.get_instance(iid)
    assert stored is not None
    assert (stored.status, stored.error_name, stored.cause) == ("failed", "Fraud.Suspected", "a: b: c")
    assert (stored.history[0].error_name, stored.history[0].cause) == ("Fraud.Suspected", "a: b: c")
    assert _summary(stored) == _summary(live)


@pytest.mark.parametrize("errors", [[CardDeclined], [PaymentError], ["CardDeclined"], ["declined"]],
                         ids=["type", "base-type", "name", "fragment"])
async def test_a_fail_fast_parallel_catch_routes_a_branch_failure_stored_before_a_restart(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, errors: list[Any],
) -> None:
    """Branch x fails; while its on_step_failed hook runs, branch y completes a step, and that
    checkpoint stores x's failure. The engine stops there. After the restart the parallel step's
    catch must route the failure as it would have without the restart."""
    path = tmp_path / "x.db"
    handled: list[Any] = []

    async def on_step_failed(step_name: str, error: BaseException, ctx: tf.WorkflowContext) -> None:
        await trio.sleep(1)

    async def x2(data: Any) -> None:
        await trio.sleep(1)
        raise CardDeclined("card declined")

    async def y2(data: Any) -> str:
        await trio.sleep(1.5)
        return "y2"

    async def y3(data: Any) -> str:
        await trio.sleep(100)
        return "y3"  # pragma: no cover - cancelled by fail-fast

    def handle(ctx: tf.WorkflowContext) -> Any:
        handled.append(ctx.error)
        return ctx.error

    wf = (tf.workflow("w")
          .parallel("p", catch=[tf.Catch(errors=errors, next="handle")], branches=[
              tf.branch("x").task("x1", job=returning("x1")).task("x2", job=x2).build(),
              tf.branch("y").task("y1", job=returning("y1")).task("y2", job=y2).task("y3", job=y3).build(),
          ])
          .succeed("ok", output="not here")
          .step("handle", handle)
          .with_hooks(on_step_failed=on_step_failed)
          .build())
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(1.7)  # y2's checkpoint (t=1.5) holds x2's failure; the hook still runs
        stored = await engine.get_instance(iid)
        assert stored is not None and stored.status == "running"
        assert [(r.step_name, r.status) for r in stored.history if r.step_name in ("x2", "y2")] == [
            ("x2", "failed"), ("y2", "completed")]
    assert handled == []
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        inst = await engine.wait(iid)
    caught = {"error": "CardDeclined", "cause": "card declined"}
    assert inst.status == "completed", (inst.error, inst.failed_step)
    assert inst.output == caught and handled == [caught]
    assert inst.step_results["p"].status == "caught"


async def test_a_fail_steps_name_and_cause_survive_a_restart_during_compensation(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    path = tmp_path / "x.db"
    log: list[str] = []
    hang = True

    async def release(ctx: tf.WorkflowContext, result: Any) -> None:
        if hang:
            await trio.sleep_forever()
        log.append(f"release {result}")

    wf = (tf.workflow("w")
          .step("reserve", lambda ctx: "r-1", release)
          .step("charge", lambda ctx: "c-1", lambda ctx, r: log.append(f"refund {r}"))
          .fail("reject", error="Order.Rejected", cause=lambda ctx: f"charge {ctx.steps['charge']}: too big")
          .build())
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(5)  # the engine stops while reserve's compensation hangs
    assert log == ["refund c-1"]
    hang = False
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(path)) as engine:
        before = await engine.get_instance(iid)
        assert before is not None and before.status == "running"
        engine.register(wf)  # resumes the compensation
        inst = await engine.wait(iid)
    assert log == ["refund c-1", "release r-1"]
    assert inst.status == "failed" and inst.failed_step == "reject"
    assert (inst.error_name, inst.cause) == ("Order.Rejected", "charge c-1: too big")
    assert inst.error == "Order.Rejected: charge c-1: too big"
    assert inst.compensated_steps == ("charge", "reserve")
    assert (inst.history[-1].error_name, inst.history[-1].cause) == ("Order.Rejected", "charge c-1: too big")


# -- what build() refuses --------------------------------------------------------------------------


def _ok(data: Any) -> None:
    return None


@pytest.mark.parametrize(
    "make",
    [
        lambda: tf.workflow("w").task("charge", job=_ok, catch=[tf.Catch(errors=[tf.ALL], next="nowhere")]),
        lambda: tf.workflow("w").step("charge", _ok, catch=tf.Catch(errors=[tf.ALL], next="nowhere")),
        lambda: tf.workflow("w").step(tf.step("charge", _ok, catch=[tf.Catch(errors=[Boom], next="nowhere")])),
        lambda: tf.workflow("w").parallel("charge", branches=[tf.branch("b").task("b1", job=_ok).build()],
                                          catch=[tf.Catch(errors=[tf.ALL], next="nowhere")]),
    ],
    ids=["task", "step", "prebuilt-step", "parallel"],
)
def test_build_rejects_a_catch_target_that_is_not_a_step(make: Any) -> None:
    builder = make().pass_("after")
    with pytest.raises(tf.DefinitionError, match=r"step 'charge'.*'nowhere'"):
        builder.build()


def test_build_rejects_a_catch_target_in_another_lane() -> None:
    with pytest.raises(tf.DefinitionError, match=r"step 'a1'.*'b1'"):
        tf.workflow("w").parallel("p", branches=[
            tf.branch("a").task("a1", job=_ok, catch=[tf.Catch(errors=[tf.ALL], next="b1")]).build(),
            tf.branch("b").task("b1", job=_ok).build(),
        ]).build()
    with pytest.raises(tf.DefinitionError, match=r"step 'a1'.*'after'"):
        tf.workflow("w").parallel("p", branches=[
            tf.branch("a").task("a1", job=_ok, catch=[tf.Catch(errors=[tf.ALL], next="after")]).build(),
        ]).pass_("after").build()
    with pytest.raises(tf.DefinitionError, match=r"step 'main'.*'a2'"):
        (tf.workflow("w")
         .task("main", job=_ok, catch=[tf.Catch(errors=[tf.ALL], next="a2")])
         .parallel("p", branches=[tf.branch("a").task("a1", job=_ok).task("a2", job=_ok).build()])
         .build())


def test_a_step_reached_only_through_a_catch_is_reachable() -> None:
    wf = (tf.workflow("w")
          .task("a", job=_ok, catch=[tf.Catch(errors=[tf.ALL], next="handler")], end=True)
          .pass_("handler")
          .build())
    assert [s.name for s in wf.steps] == ["a", "handler"]
    with pytest.raises(tf.DefinitionError, match="handler"):
        tf.workflow("w").task("a", job=_ok, end=True).pass_("handler").build()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"errors": [], "next": "x"}, "Catch.errors"),
        ({"errors": (), "next": "x"}, "Catch.errors"),
        ({"errors": [int], "next": "x"}, "Catch.errors"),
        ({"errors": [3], "next": "x"}, "Catch.errors"),
        ({"errors": 3, "next": "x"}, "Catch.errors"),
        ({"errors": [Boom], "next": 3}, "Catch.next"),
        ({"errors": [Boom], "next": ""}, "Catch.next"),
        ({"errors": [Boom], "next": None}, "Catch.next"),
        ({"errors": [Boom], "next": "x", "result": ""}, "Catch.result"),
        ({"errors": [Boom], "next": "x", "result": 5}, "Catch.result"),
    ],
)
def test_a_bad_catch_is_a_definition_error_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(tf.DefinitionError, match=field.replace(".", r"\.")):
        tf.Catch(**kwargs)


def test_a_good_catch_keeps_its_fields() -> None:
    catcher = tf.Catch(errors=Boom, next="x", result="why")
    assert (catcher.errors, catcher.next, catcher.result) == ((Boom,), "x", "why")
    assert tf.Catch(errors=[tf.ALL, "Name", Boom], next="x").errors == (tf.ALL, "Name", Boom)


@pytest.mark.parametrize(
    "catch",
    [
        ["handler"],
        [("errors", "handler")],
        [{"errors": [tf.ALL], "next": "handler"}],
        [tf.Catch(errors=[tf.ALL], next="handler"), "handler"],
    ],
    ids=["string-item", "tuple-item", "dict-item", "mixed"],
)
@pytest.mark.parametrize("kind", ["task", "step", "parallel"])
def test_catch_items_that_are_not_catch_are_rejected_naming_the_step(catch: Any, kind: str) -> None:
    with pytest.raises(tf.DefinitionError, match=r"step 'charge'"):
        with_catch(kind, catch).build()


@pytest.mark.parametrize("catch", ["handler", {"errors": [tf.ALL], "next": "handler"}, 3],
                         ids=["string", "dict", "int"])
def test_a_catch_argument_that_is_not_a_list_of_catch_is_rejected_naming_the_step(catch: Any) -> None:
    with pytest.raises(tf.DefinitionError, match=r"'charge'"):
        with_catch("task", catch).build()


def with_catch(kind: str, catch: Any) -> Any:
    builder = tf.workflow("w")
    if kind == "task":
        builder.task("charge", job=_ok, catch=catch)
    elif kind == "step":
        builder.step("charge", _ok, catch=catch)
    else:
        builder.parallel("charge", branches=[tf.branch("b").task("b1", job=_ok).build()], catch=catch)
    return builder.pass_("handler")


@pytest.mark.parametrize("error", ["", None, 3])
def test_a_fail_step_needs_an_error_name(error: Any) -> None:
    with pytest.raises(tf.DefinitionError, match=r"step 'stop'.*error"):
        tf.workflow("w").task("a", job=_ok).fail("stop", error=error, cause="why").build()
    with pytest.raises(tf.DefinitionError, match=r"step 'stop'"):
        tf.workflow("w").parallel("p", branches=[
            tf.branch("b").fail("stop", error=error).build(),
        ]).build()


def test_a_fail_step_cause_must_be_text_or_callable() -> None:
    with pytest.raises(tf.DefinitionError, match=r"step 'stop'.*cause"):
        tf.workflow("w").fail("stop", error="Halted", cause=42).build()  # type: ignore[arg-type]


def test_steps_after_succeed_or_fail_are_unreachable_unless_routed_to() -> None:
    with pytest.raises(tf.DefinitionError, match="'after'"):
        tf.workflow("w").succeed("done").pass_("after").build()
    with pytest.raises(tf.DefinitionError, match="'after'"):
        tf.workflow("w").fail("stop", error="Halted").pass_("after").build()
