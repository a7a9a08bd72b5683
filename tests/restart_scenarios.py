"""Scenario runner for tests/test_review_of_restarts_with_signals.py: signals, timers, children
and cancels across engine restarts (one seeded trio.run per scenario)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing
from trio._core import _run as trio_run

import trioflow as tf
from trioflow.testing import open_test_engine
from waiting_scenarios import ErrorLog

TERMINAL = {"completed", "failed", "cancelled", "timed_out", "compensated"}
N_ITEMS = 2
JOB_SLEEP = 0.25


times: list = []


def workflows(log: list[tuple[str, str]]) -> list[tf.WorkflowDefinition]:
    async def hold(ctx: tf.WorkflowContext) -> str:
        log.append((ctx.metadata.id, "hold"))
        await trio.sleep(JOB_SLEEP)
        return "held"

    async def unhold(ctx: tf.WorkflowContext, result: Any) -> None:
        log.append((ctx.metadata.id, "unhold"))
        await trio.sleep(JOB_SLEEP)

    async def after(ctx: tf.WorkflowContext) -> str:
        log.append((ctx.metadata.id, "after"))
        times.append((ctx.metadata.id, trio.current_time()))
        await trio.sleep(JOB_SLEEP)
        return "after"

    async def expired(ctx: tf.WorkflowContext) -> str:
        return "expired"

    return [
        tf.workflow("kid").step("hold", hold, unhold).receive("r", signal="go").build(),
        (tf.workflow("fan")
         .map("items", items=lambda ctx: list(range(N_ITEMS)), max_concurrency=N_ITEMS,
              branch=tf.branch("one").child("kid", workflow="kid").build())
         .build()),
        (tf.workflow("fanrecv")
         .map("items", items=lambda ctx: list(range(3)), max_concurrency=3,
              branch=tf.branch("one").receive("r", signal="go")
              .wait("w", seconds=1.5).receive("r2", signal="go", timeout=2.0,
                  catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="late")])
              .succeed("ok").pass_("late", end=True).build())
         .build()),
        tf.workflow("recv").receive("r", signal="go").receive("r2", signal="go").build(),
        (tf.workflow("recv_to")
         .receive("r", signal="go", timeout=3.0,
                  catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="expired")])
         .succeed("ok")
         .step("expired", expired, end=True).build()),
        tf.workflow("wait_short").wait("t", seconds=0.5).step("after", after).build(),
        tf.workflow("wait_long").wait("t", seconds=5.0).step("after", after).build(),
    ]


RECEIVE_STEPS = {"fanrecv": {"r", "r2"}, "kid": {"r"}, "recv": {"r", "r2"}, "recv_to": {"r"}}


@dataclass
class Target:
    iid: str
    kind: str
    sent: list[int] = field(default_factory=list)
    maybe: list[int] = field(default_factory=list)
    cancel_true: bool = False
    cancel_tried: bool = False
    t0: float = 0.0
    sent_at: list[float] = field(default_factory=list)


async def _scenario(ops: list[tuple], sqlite_path: str | None, max_running: int) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    trace: list[str] = []
    log: list[tuple[str, str]] = []
    wfs = workflows(log)
    adapter: Any = tf.adapters.SQLiteAdapter(sqlite_path) if sqlite_path else tf.adapters.MemoryAdapter()
    targets: dict[str, Target] = {}
    tops: list[str] = []
    counter = [0]
    handler = ErrorLog()
    logger = logging.getLogger("trioflow")
    logger.addHandler(handler)

    events: list[tuple[str, str, Any, Any]] = []

    def note(e: dict[str, Any]) -> None:
        events.append((e["event"], e["instance_id"], e.get("execution_id"), e.get("seq")))

    def pick(idx: int, k: int | None) -> Target | None:
        if not tops:
            return None
        top = targets[tops[idx % len(tops)]]
        if top.kind == "fan" and k is not None:
            cid = f"{top.iid}/items/#{k % N_ITEMS}/kid#1"
            return targets.setdefault(cid, Target(cid, "kid"))
        return top

    async def do_signal(engine: tf.Engine, t: Target) -> None:
        counter[0] += 1
        n = counter[0]
        try:
            await engine.signal(t.iid, "go", {"n": n})
        except (tf.InstanceNotLiveError, tf.UnknownInstanceError) as exc:
            trace.append(f"signal {t.iid} {n}: {type(exc).__name__}")
            return
        except tf.EngineClosedError:
            t.maybe.append(n)
            trace.append(f"signal {t.iid} {n}: closed")
            return
        t.sent.append(n)
        t.sent_at.append(trio.current_time())
        trace.append(f"signal {t.iid} {n}: ok")

    async def do_cancel(engine: tf.Engine, t: Target) -> None:
        t.cancel_tried = True
        try:
            ok = await engine.cancel(t.iid)
        except tf.EngineClosedError:
            return
        except tf.UnknownInstanceError:
            return
        trace.append(f"cancel {t.iid}: {ok}")
        if ok:
            t.cancel_true = True

    try:
        i = 0
        resume_mode = "resume"
        while True:
            restart = None
            async with trio.open_nursery() as bg:
                async with open_test_engine(adapter=adapter, resume=resume_mode == "resume", max_running=max_running) as engine:
                    engine.events.on("workflow.step.*", note)
                    engine.events.on("workflow.signal.received", note)
                    for wf in wfs:
                        engine.register(wf)
                    if resume_mode == "noresume":
                        trace.append(f"resume() -> {await engine.resume()}")
                    while i < len(ops):
                        op = ops[i]
                        i += 1
                        kind = op[0]
                        if kind == "restart":
                            restart = op[1]
                            break
                        if kind == "start":
                            _, wname, delay = op
                            iid = f"{wname}-{len(tops)}"
                            kw = {} if delay is None else {"delay": delay}
                            before = trio.current_time()
                            await engine.start(wname, {}, instance_id=iid, **kw)
                            targets[iid] = Target(iid, wname, t0=before + (delay or 0.0))
                            tops.append(iid)
                            trace.append(f"start {iid} {kw}")
                        elif kind in ("signal", "bgsignal"):
                            t = pick(op[1], op[2])
                            if t is None or t.kind not in RECEIVE_STEPS:
                                continue
                            if kind == "bgsignal":
                                bg.start_soon(do_signal, engine, t)
                                await trio.lowlevel.checkpoint()
                            else:
                                await do_signal(engine, t)
                        elif kind in ("cancel", "bgcancel"):
                            t = pick(op[1], op[2])
                            if t is None:
                                continue
                            if kind == "bgcancel":
                                bg.start_soon(do_cancel, engine, t)
                                await trio.lowlevel.checkpoint()
                            else:
                                await do_cancel(engine, t)
                        elif kind == "resume":
                            trace.append(f"resume() -> {await engine.resume()}")
                        elif kind == "again":
                            if not tops:
                                continue
                            iid = tops[op[1] % len(tops)]
                            wname = targets[iid].kind
                            got = await engine.start(wname, {}, instance_id=iid)
                            trace.append(f"start again {iid} -> {got}")
                        elif kind == "sleep":
                            await trio.sleep(op[1])
                            trace.append(f"sleep {op[1]}")
            if restart is None:
                break
            resume_mode = restart
            trace.append(f"restart {restart}")
        # final phase: time passes, everything still waiting is cancelled, all are waited for
        async with open_test_engine(adapter=adapter) as engine:
            engine.events.on("workflow.step.*", note)
            engine.events.on("workflow.signal.received", note)
            for wf in wfs:
                engine.register(wf)
            await trio.sleep(100)
            for iid in tops:
                got = await engine.get_instance(iid)
                if got.status not in TERMINAL:
                    await engine.cancel(iid)
            with trio.move_on_after(10_000) as scope:
                for iid in tops:
                    await engine.wait(iid)
            if scope.cancelled_caught:
                problems.append("wait() of a cancelled instance never returned")
            views: dict[str, tf.WorkflowInstance] = {}
            for iid in tops:
                views[iid] = await engine.get_instance(iid)
                for cid in views[iid].children:
                    got = await engine.get_instance(cid)
                    if got is not None:
                        views[cid] = got
            pending = {iid: await adapter.signals(iid) for iid in views}
        check(targets, tops, views, pending, log, problems)
        ends = Counter((iid, ex) for ev, iid, ex, _ in events
                       if ev in ("workflow.step.completed", "workflow.step.failed", "workflow.step.caught"))
        for key, c in ends.items():
            if c > 1:
                problems.append(f"{key}: {c} end events: {[ev for ev, i, x, _ in events if (i, x) == key]}")
        recv = Counter((iid, seq) for ev, iid, _, seq in events if ev == "workflow.signal.received")
        for key, c in recv.items():
            if c > 1:
                problems.append(f"signal {key} received {c} times in events")
        for iid, v in views.items():
            for h in v.history:
                if h.status in ("started",):
                    continue
                evs = [ev for ev, i, x, _ in events if (i, x) == (iid, h.id) and ev in (
                    "workflow.step.completed", "workflow.step.failed", "workflow.step.caught")]
                want = {"completed": "workflow.step.completed", "compensated": "workflow.step.completed",
                        "failed": "workflow.step.failed", "caught": "workflow.step.caught"}.get(h.status)
                if want and evs and evs[-1] != want:
                    problems.append(f"{iid} {h.id}: record {h.status} but events {evs}")
    finally:
        logger.removeHandler(handler)
    for rec in handler.records:
        problems.append(f"ERROR log: {rec.getMessage()}")
    return problems, trace


def check(targets: dict[str, Target], tops: list[str], views: dict[str, tf.WorkflowInstance],
          pending: dict[str, list], log: list[tuple[str, str]], problems: list[str]) -> None:
    from trioflow._codec import decode_payload  # type: ignore[attr-defined]

    for iid, v in views.items():
        # each execution ends once in history
        ends = Counter(h.id for h in v.history if h.status != "started")
        twice = [e for e, c in ends.items() if c > 1]
        if twice:
            problems.append(f"{iid}: executions ended twice: {twice}")
        if v.error_name not in (None, "Cancelled", "WorkflowCancelledError", "ChildWorkflowError", "ItemError") and not (
                v.workflow_name == "fan" and v.error_name in ("Cancelled", "CancelledError", "WorkflowCancelledError")):
            problems.append(f"{iid}: unexpected error {v.status} {v.error}")
        if v.status not in TERMINAL:
            w = v.waiting or {}
            if not ("signal" in w and w.get("timeout") is None and "child" not in w):
                problems.append(f"{iid}: still {v.status} waiting={v.waiting}")
        # signals
        t = targets.get(iid)
        kind = v.workflow_name
        if kind in RECEIVE_STEPS:
            got = [h.output["n"] for h in sorted(v.history, key=lambda h: h.seq)
                   if h.step_name in RECEIVE_STEPS[kind] and h.status in ("completed", "compensated")]
            pend = []
            for _seq, name, payload in pending.get(iid, []):
                if name == "go":
                    p = decode_payload(payload) if isinstance(payload, (bytes, bytearray)) else payload
                    pend.append(p["n"])
            seen = got + pend
            sent = t.sent if t else []
            maybe = t.maybe if t else []
            if len(set(seen)) != len(seen):
                problems.append(f"{iid}: a signal taken twice: received {got} pending {pend}")
            lost = [n for n in sent if n not in seen]
            if lost:
                problems.append(f"{iid}: signals lost {lost}: sent {sent} received {got} pending {pend}")
            extra = [n for n in seen if n not in sent and n not in maybe]
            if extra:
                problems.append(f"{iid}: signals invented {extra}")
            order = [n for n in seen if n in sent]
            if order != sorted(order) and kind != "fanrecv":
                problems.append(f"{iid}: signals out of order: received {got} pending {pend} sent {sent}")
        if kind in ("wait_short", "wait_long") and v.status == "completed":
            fired = [h for h in v.history if h.step_name == "t" and h.status in ("completed", "compensated")]
            calls = [x for x in log if x == (iid, "after")]
            if len(fired) != 1 or len(calls) < 1:
                problems.append(f"{iid}: timer fired {len(fired)} times, after called {len(calls)}")
        if t and kind == "recv_to" and not t.cancel_tried:
            early = [n for n, at in zip(t.sent, t.sent_at) if at < t.t0 + 3.0 - 0.05]
            if early and (v.status != "completed" or v.output != {"n": early[0]}):
                problems.append(f"{iid}: signal {early[0]} sent in time but it ended {v.status} {v.output!r}")
        if t and kind in ("wait_short", "wait_long"):
            due = t.t0 + (0.5 if kind == "wait_short" else 5.0)
            bad = [at for i2, at in times if i2 == iid and at < due - 1e-6]
            if bad:
                problems.append(f"{iid}: timer fired early at {bad} (due {due})")
        if t and t.cancel_true and v.status not in ("cancelled", "compensated"):
            problems.append(f"{iid}: cancel() said True but it ended {v.status}")
        if kind == "fan":
            if len(set(v.children)) != len(v.children) or len(v.children) > N_ITEMS:
                problems.append(f"{iid}: children {v.children}")
            for cid in v.children:
                if not cid.endswith("/kid#1"):
                    problems.append(f"{iid}: a child started again: {cid}")
                c = views.get(cid)
                if c is None:
                    problems.append(f"{iid}: child {cid} not stored")
                    continue
                if v.status in ("cancelled", "failed", "timed_out", "compensated") and c.status == "completed":
                    problems.append(f"{iid} ended {v.status} but its child {cid} ended completed")
                if c.status in ("cancelled", "compensated", "failed") and any(
                        h.step_name == "hold" and h.status == "completed" for h in c.history):
                    problems.append(f"{cid}: ended {c.status} but its hold was never undone")
            if v.status == "completed":
                if any(views.get(c) is None or views[c].status != "completed" for c in v.children):
                    problems.append(f"{iid}: completed with children {[views.get(c) and views[c].status for c in v.children]}")


def run_scenario(ops: list[tuple], seed: int = 0, sqlite_path: str | None = None,
                 max_running: int = 10_000) -> tuple[list[str], list[str]]:
    times.clear()
    saved = trio_run._r.getstate()
    try:
        trio_run._r.seed(seed)
        return trio.run(_scenario, ops, sqlite_path, max_running, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        trio_run._r.setstate(saved)
