"""Testing-kit review s23, from the side of a user who property-tests their workflows: README's
"Testing your workflows" and docs/testing.md followed as written on workflows of the reviewer's
own (a saga with compensation, a polling state machine with a choice loop and retries, an
approval with a timer and a receive, a map whose items start a child), then the obvious
mistakes tried (a flaky job, a job with a side effect outside trioflow, a non-deterministic
choice, a job left out of ``jobs=``, the fixture under ``@given``, an exploration over waits,
signals and children), and the adapter conformance kit run on an adapter of the reviewer's own.

The first section pins what the review checked and found as documented (these pass). The
second holds, one test each, what the docs promise and the kit does not do, or an error that
does not say what was wrong (these fail now). Virtual time only (pytest-trio's
``autojump_clock``, the ``trioflow_engine`` fixture, ``trioflow.testing.run``); no mocks of
trioflow."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow.adapters import MemoryAdapter, StoredInstance
from trioflow.testing import (
    CrashDivergenceError,
    NotOnMockClockError,
    ScriptedJob,
    check_persistence_adapter,
    explore_crashes,
    open_test_engine,
    raises,
    returns,
    run,
)
from trioflow.testing.strategies import job_behaviours, retry_policies


# --------------------------------------------------------------------------------------------
# The reviewer's workflows
# --------------------------------------------------------------------------------------------

def saga(retry: tf.Retry | None = None) -> tf.WorkflowDefinition:
    return (tf.workflow("saga")
            .task("reserve", job="reserve", compensate="release")
            .task("charge", job="charge", compensate="refund", retry=retry or tf.Retry(max_attempts=3, interval=1.0))
            .task("ship", job="ship")
            .build())


def saga_jobs(ship: ScriptedJob | None = None) -> dict[str, Any]:
    return {"reserve": ScriptedJob(returns("r-1")), "release": ScriptedJob(),
            "charge": ScriptedJob(raises(ConnectionError), returns("ch-1")), "refund": ScriptedJob(),
            "ship": ship or ScriptedJob(returns("shipped"))}


def poller() -> tf.WorkflowDefinition:
    """A state machine: poll, and until ready, nap a minute and poll again."""
    return (tf.workflow("poller")
            .task("poll", job="poll", retry=tf.Retry(max_attempts=3, interval=0.5))
            .choice("ready?", choices=[tf.when(lambda ctx: ctx.steps["poll"]["ready"], next="done")], default="nap")
            .wait("nap", seconds=60, next="poll")
            .pass_("done", transform=lambda ctx: {"polls": ctx.steps["poll"]["n"]}, end=True)
            .build())


def approval() -> tf.WorkflowDefinition:
    return (tf.workflow("approval")
            .task("submit", job="submit", compensate="withdraw")
            .wait("cool-off", seconds=3600)
            .receive("approve", signal="approved", timeout=86_400,
                     catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="expire")])
            .task("pay", job="pay", end=True)
            .task("expire", job="expire", end=True)
            .build())


def approval_jobs() -> dict[str, Any]:
    return {"submit": ScriptedJob(returns("s-1")), "withdraw": ScriptedJob(),
            "pay": ScriptedJob(returns("paid")), "expire": ScriptedJob(returns("expired"))}


SHIP_ONE = (tf.workflow("ship-one")
            .task("label", job="label", compensate="void")
            .task("send", job="send")
            .build())

BATCH = (tf.workflow("batch")
         .task("open", job="open", compensate="close")
         .map("each", items=lambda ctx: ctx.input["items"],
              branch=tf.workflow.branch("item").child("ship", workflow="ship-one").build())
         .task("report", job="report")
         .build())


def batch_jobs(report: ScriptedJob) -> dict[str, Any]:
    async def label(item: dict[str, str]) -> str:  # decides from its input: items run side by side
        return f"L-{item['sku']}"

    async def send(item: dict[str, str]) -> str:
        return f"S-{item['sku']}"

    return {"open": ScriptedJob(returns("o")), "close": ScriptedJob(), "label": label, "void": ScriptedJob(),
            "send": send, "report": report}


# --------------------------------------------------------------------------------------------
# Documented, and as documented (pass)
# --------------------------------------------------------------------------------------------


async def test_the_fixture_runs_a_saga_that_compensates_on_virtual_time(trioflow_engine: tf.Engine) -> None:
    release = ScriptedJob()
    jobs = saga_jobs(ship=ScriptedJob(raises(PermissionError, "no carrier")))
    jobs["release"] = release
    for name, job in jobs.items():
        trioflow_engine.jobs.register(name, job)
    trioflow_engine.register(saga())
    instance = await trioflow_engine.wait(await trioflow_engine.start("saga", {"order": 1}))
    assert instance.status == "failed" and instance.compensated_steps == ("charge", "reserve")
    assert instance.step_results["charge"].attempts == 2 and [c.args for c in release.calls] == [("r-1",)]
    assert trio.current_time() == 1.0  # the retry's second, virtual


async def test_the_fixture_takes_a_timer_then_a_signal(trioflow_engine: tf.Engine) -> None:
    for name, job in approval_jobs().items():
        trioflow_engine.jobs.register(name, job)
    trioflow_engine.register(approval())
    iid = await trioflow_engine.start("approval")
    await trio.sleep(3_600 + 10)
    await trioflow_engine.signal(iid, "approved", {"by": "ann"})
    instance = await trioflow_engine.wait(iid)
    assert (instance.status, instance.output) == ("completed", "paid")


async def test_a_job_left_out_of_jobs_is_named(autojump_clock: trio.testing.MockClock) -> None:
    jobs = saga_jobs()
    del jobs["refund"]
    with pytest.raises(tf.UnknownJobError, match="'refund'"):
        await explore_crashes(saga(), {"order": 1}, jobs=jobs)


async def test_the_state_machine_survives_a_crash_at_every_write(autojump_clock: trio.testing.MockClock) -> None:
    poll = ScriptedJob(raises(ConnectionError), returns({"ready": False, "n": 1}),
                       returns({"ready": False, "n": 2}), returns({"ready": True, "n": 3}))
    report = await explore_crashes(poller(), {}, jobs={"poll": poll})
    assert report.baseline.output == {"polls": 3} and len(report.points) == 2 * report.writes
    assert report.divergent == ()


async def test_a_flaky_job_by_a_counter_of_its_own_is_reported(autojump_clock: trio.testing.MockClock) -> None:
    state = {"n": 0}

    async def poll(data: Any) -> dict[str, Any]:
        state["n"] += 1
        return {"ready": state["n"] >= 3, "n": state["n"]}

    with pytest.raises(CrashDivergenceError, match="not idempotent"):
        await explore_crashes(poller(), {}, jobs={"poll": poll}, before_run=lambda: state.update(n=0))


async def test_a_choice_on_a_random_number_is_reported_by_its_path(autojump_clock: trio.testing.MockClock) -> None:
    rng = random.Random(3)
    coin = (tf.workflow("coin")
            .task("a", job="a")
            .choice("flip", choices=[tf.when(lambda ctx: rng.random() < 0.5, next="heads")], default="tails")
            .task("heads", job="h", end=True)
            .task("tails", job="t", end=True)
            .build())
    same = {"a": ScriptedJob(), "h": ScriptedJob(returns("X")), "t": ScriptedJob(returns("X"))}
    with pytest.raises(CrashDivergenceError, match="took the path"):
        await explore_crashes(coin, {}, jobs=same)


async def test_after_run_catches_a_mail_sent_twice(autojump_clock: trio.testing.MockClock) -> None:
    mailed: list[Any] = []

    async def mail(data: Any) -> str:
        mailed.append(data)
        return "sent"

    def once(outcome: Any) -> None:
        assert len(mailed) == 1, f"mailed {len(mailed)} times"

    wf = tf.workflow("mail").task("a", job="a").task("mail", job="mail").task("b", job="b").build()
    with pytest.raises(CrashDivergenceError, match="after_run: mailed 2 times"):
        await explore_crashes(wf, {"to": "x"}, jobs={"a": ScriptedJob(), "mail": mail, "b": ScriptedJob()},
                              before_run=mailed.clear, after_run=once)


async def test_an_approval_with_a_timer_and_a_receive_is_explored(autojump_clock: trio.testing.MockClock) -> None:
    report = await explore_crashes(approval(), {}, jobs=approval_jobs(), signals=[("approved", {"by": "ann"})])
    assert report.baseline.output == "paid" and all(p.outcome.output == "paid" for p in report.points)
    unsent = await explore_crashes(approval(), {}, jobs=approval_jobs())
    assert unsent.baseline.output == "expired"


async def test_a_map_of_children_that_fails_compensates_each_child(autojump_clock: trio.testing.MockClock) -> None:
    report = await explore_crashes(BATCH, {"items": [{"sku": "a"}, {"sku": "b"}]},
                                   jobs=batch_jobs(ScriptedJob(raises(ValueError))), also=[SHIP_ONE])
    assert report.baseline.compensated_steps == ("ship", "ship", "open")
    assert sorted(c.status for c in report.baseline.children.values()) == ["compensated", "compensated"]


async def test_a_signal_only_a_child_receives_is_refused_with_why(autojump_clock: trio.testing.MockClock) -> None:
    child = tf.workflow("child-rx").receive("ok", signal="ok").build()
    parent = tf.workflow("parent-rx").child("c", workflow="child-rx").build()
    with pytest.raises(tf.InvalidArgumentError, match="not to its children"):
        await explore_crashes(parent, {}, also=[child], signals=[("ok", 1)])


def _failures_before_success(script: Sequence[Any]) -> int:
    from trioflow.testing import Raises, Sleeps
    n = 0
    for b in script:
        if isinstance(b, Raises) or (isinstance(b, Sleeps) and isinstance(b.then, Raises)):
            n += b.times
        else:
            break
    return n


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(job_behaviours(), retry_policies())
def test_drawn_charge_scripts_end_the_saga_as_a_model_says(script: tuple[Any, ...], retry: tf.Retry) -> None:
    jobs = saga_jobs()
    jobs["charge"] = ScriptedJob(*script)

    async def main() -> Any:
        return await explore_crashes(saga(retry), {"order": 1}, jobs=jobs)

    report = run(main)
    charged = _failures_before_success(script) < retry.max_attempts
    assert report.baseline.status == ("completed" if charged else "failed")
    if not charged:
        assert report.baseline.compensated_steps == ("reserve",)


# --------------------------------------------------------------------------------------------
# Not as documented, or not said (fail now)
# --------------------------------------------------------------------------------------------


async def _double(n: int) -> int:
    return n * 2


def _price(data: dict[str, int]) -> int:
    """A plain job that calls into trio, as README says a plain job may (its
    ``trio.from_thread.run`` "counts as the step's while the call is on")."""
    return trio.from_thread.run(_double, data["n"])


PRICED = tf.workflow("priced").task("price", job="price").build()


async def test_the_explorer_runs_a_plain_job_that_calls_into_trio_as_an_engine_does(
        autojump_clock: trio.testing.MockClock) -> None:
    """An engine runs a plain ``def`` job in a worker thread, from which it may call into trio
    (README: "What the thread runs through ``trio.from_thread.run`` counts as the step's").
    ``explore_crashes`` always opens its engines with ``threads=False`` and has no option to
    change it, so every run of such a workflow fails in the job with trio's "this thread wasn't
    created by Trio", the fault-free run included; all runs then agree and the exploration
    PASSES, reporting no divergence over a workflow that never ran. docs/testing.md mentions
    the inline call only for the test engine (with ``threads=True`` as the way out), not for
    the explorer. A user expects the explorer to run the job as the engine does, or to refuse
    with a word about plain jobs run inline."""
    async with open_test_engine(threads=True) as engine:  # how it runs in the program
        engine.jobs.register("price", _price)
        engine.register(PRICED)
        assert (await engine.wait(await engine.start("priced", {"n": 2}))).output == 4
    try:
        report = await explore_crashes(PRICED, {"n": 2}, jobs={"price": _price})
    except tf.InvalidArgumentError as exc:
        assert "price" in str(exc) and "thread" in str(exc)
        return
    assert report.baseline.status == "completed", (
        f"the explorer's fault-free run failed where an engine completes: {report.baseline.history[0].error}"
        f" (and no crash point diverged: {len(report.divergent)})")
    assert report.baseline.output == 4


async def test_a_plain_job_calling_into_trio_on_the_test_engine_is_told_why(
        autojump_clock: trio.testing.MockClock) -> None:
    """docs/testing.md, Notes: such a job on the test engine "gets trio's RuntimeError ("this
    is a blocking function; call it from a thread"): test it on open_test_engine(threads=True)
    ... or make it an async def". What the step records is another message of trio's, "this
    thread wasn't created by Trio, pass kwarg trio_token=...", whose advice (pass a token)
    does not help: the job runs in trio's own thread. The same holds for the
    ``trioflow_engine`` fixture. A user expects the documented message, or one that names the
    cause (the test engine calls plain jobs inline) and the remedy."""
    async with open_test_engine() as engine:
        engine.jobs.register("price", _price)
        engine.register(PRICED)
        instance = await engine.wait(await engine.start("priced", {"n": 2}))
    assert instance.status == "failed"
    error = instance.error or ""
    assert "blocking function" in error or "threads=True" in error, error


class _Wrapper:
    """An adapter of the user's own: every protocol method, handed to a ``MemoryAdapter``, and
    none of the optional ones (``send_signal_and_load``, keyed signals, ``load_head``,
    ``restart=``)."""

    def __init__(self, inner: MemoryAdapter) -> None:
        self.inner = inner

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def create(self, instance_id: str, workflow_name: str, status: Any, *, start: bytes, header: bytes,
                     parent_id: str | None = None, wake_at: float | None = None) -> bool:
        return await self.inner.create(instance_id, workflow_name, status, start=start, header=header,
                                       parent_id=parent_id, wake_at=wake_at)

    async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Sequence[bytes], *,
                         first_seq: int, start: bytes | None = None, consumed: Sequence[int] = (),
                         wake_at: float | None = None, notify: tuple[str, str, bytes] | None = None) -> int | None:
        return await self.inner.checkpoint(instance_id, status, header, records, first_seq=first_seq, start=start,
                                           consumed=consumed, wake_at=wake_at, notify=notify)

    async def due(self, before: float, limit: int, *, skip_workflows: Collection[str] = ()) -> list[StoredInstance]:
        return await self.inner.due(before, limit, skip_workflows=skip_workflows)

    async def next_wake(self, *, skip_workflows: Collection[str] = ()) -> float | None:
        return await self.inner.next_wake(skip_workflows=skip_workflows)

    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        return await self.inner.send_signal(instance_id, name, payload)

    async def signals(self, instance_id: str) -> list[tuple[int, str, bytes]]:
        return await self.inner.signals(instance_id)

    async def load(self, instance_id: str) -> StoredInstance | None:
        return await self.inner.load(instance_id)

    async def list_instances(self, workflow_name: str | None = None, status: Any = None, *, after: str | None = None,
                             limit: int | None = None, newest_first: bool = False) -> list[StoredInstance]:
        return await self.inner.list_instances(workflow_name, status, after=after, limit=limit,
                                               newest_first=newest_first)

    async def resumable(self) -> list[StoredInstance]:
        return await self.inner.resumable()

    async def delete(self, instance_id: str) -> bool:
        return await self.inner.delete(instance_id)

    def use_clock(self, clock: Callable[[], float]) -> None:
        self.inner.use_clock(clock)

    async def purge(self, finished_by: float, limit: int, *, status: Any = None,
                    workflow_name: str | None = None) -> int:
        return await self.inner.purge(finished_by, limit, status=status, workflow_name=workflow_name)


async def test_the_conformance_kit_lists_as_passed_only_the_checks_it_made() -> None:
    """``check_persistence_adapter`` "returns the names of the checks, all passed". An adapter
    without the optional methods passes, and the list holds ``keyed_signals_are_stored_once``,
    ``signal_and_load_is_one_call``, ``load_head_leaves_out_the_records`` and
    ``restart_replaces_the_history``, checks that returned at once because the adapter has no
    such method: the author of an adapter reads in the result that keyed signals and
    continue-as-new were checked, when the engine will refuse a ``continue_as_new`` workflow on
    it. A user expects the list to hold only what was checked (or the skipped ones to be said)."""
    stores: dict[str, MemoryAdapter] = {}
    passed = await check_persistence_adapter(lambda key: _Wrapper(stores.setdefault(key, MemoryAdapter())))
    made_without_the_method = {"keyed_signals_are_stored_once", "keyed_signal_and_load_is_one_call",
                               "signal_and_load_is_one_call", "load_head_leaves_out_the_records",
                               "restart_replaces_the_history"}
    assert not made_without_the_method & set(passed), sorted(made_without_the_method & set(passed))


async def test_the_conformance_kit_names_the_check_when_every_key_opens_one_storage() -> None:
    """adapters.md: "A failing check raises AssertionError naming it". An ``open_adapter`` that
    gives the same adapter object for every key (the obvious first try with a memory adapter:
    ``lambda key: adapter``) makes the kit raise a bare ``CheckpointConflictError`` ("instance
    'i1' has 1 records stored; a checkpoint appending at 0 is refused") from inside some check,
    naming neither the check nor the mistake (a new key must mean new, empty storage)."""
    shared = MemoryAdapter()
    try:
        await check_persistence_adapter(lambda key: shared)
    except AssertionError as exc:
        assert "adapter conformance check '" in str(exc)
    except tf.InvalidArgumentError as exc:
        assert "key" in str(exc)
    except Exception as exc:  # what happens now
        pytest.fail(f"the kit raised {type(exc).__name__}: {exc}, naming no check")
    else:
        pytest.fail("the kit passed an open_adapter that gives one storage for every key")


async def test_the_conformance_kit_says_a_reopen_reached_other_storage_in_a_few_words() -> None:
    """``lambda key: MemoryAdapter()`` (fresh storage at each call, so a reopen finds nothing)
    fails ``survives_reopen`` with a message of some 5,000 characters: the stored row's bytes in
    full (a 256-byte start, a 512-byte header, records), then "now None" at the very end, and
    no word of the likely mistake (open_adapter must give the same storage for the same key,
    which docs/testing.md's pitfalls explain). A user expects a message that fits a screen and
    points at open_adapter."""
    with pytest.raises(AssertionError) as failed:
        await check_persistence_adapter(lambda key: MemoryAdapter())
    message = str(failed.value)
    assert "survives_reopen" in message
    assert len(message) < 1_500, f"{len(message)} characters"
    assert "same key" in message or "same storage" in message


async def test_a_crash_point_at_a_timer_says_which_timer_it_stored(autojump_clock: trio.testing.MockClock) -> None:
    """docs/testing.md: ``CrashPoint.after`` says "what that write stored", and a divergence
    names the crash point by it. The write that stores a durable timer's due time is described
    as ``"instance running"``, whichever timer it is: in a workflow with two timers two points
    read the same, and a divergence "after snapshot write 4 of 5 (instance running)" leaves the
    user to count writes. A user expects the description to name the timer step (as it names
    the steps a write completes)."""
    two = (tf.workflow("two-timers")
           .wait("first", seconds=60)
           .task("a", job="a")
           .wait("second", seconds=3_600)
           .task("b", job="b")
           .build())
    report = await explore_crashes(two, {}, jobs={"a": ScriptedJob(), "b": ScriptedJob()})
    afters = [p.after for p in report.points if not p.lost]
    assert len(set(afters)) == len(afters), afters
    assert any("'first'" in a and "completed" not in a for a in afters), afters
    assert any("'second'" in a and "completed" not in a for a in afters), afters


@settings(max_examples=1, deadline=None)
@given(st.just(1))
async def test_the_clock_error_under_given_says_what_works_there(n: int) -> None:
    """An async ``@given`` test (pytest-trio runs them) that opens a test engine gets
    ``NotOnMockClockError``: "run the test with trioflow.testing.run(), the trioflow_engine
    fixture, or pytest-trio's autojump_clock fixture". Under ``@given`` two of the three fail:
    the plugin refuses the fixture there, and hypothesis refuses ``autojump_clock``
    (function_scoped_fixture health check). The error does not say that the test is under
    ``@given`` nor that the way there is a plain ``def`` test calling ``run()`` (docs/testing.md's
    last worked example), though hypothesis tells (``hypothesis.currently_in_test_context()``)."""
    with pytest.raises(NotOnMockClockError) as raised:
        async with open_test_engine():
            pass
    message = str(raised.value)
    assert "@given" in message or "hypothesis" in message, message
