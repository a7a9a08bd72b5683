"""A user's stateful test of durable waiting on a real SQLite file: ONE engine portal per
example, on ``tf.adapters.SQLiteAdapter(tmp file)``, opened with ``engine_portal(setup=...,
adapter=...)`` and restarted through ``portal.restart(downtime=...)`` (no downtime, a few
seconds, past a timer's due time, past a receive's timeout, past a workflow timeout),
interleaved with starts (delayed ones too), signals, cancels and advances. After each rule every
instance is checked against a plain-Python model of its timeline, in which what falls due during
a downtime happens as the next engine opens. Plain deterministic tests below it pin what the
machine found."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import trioflow as tf
from trioflow.testing import engine_portal

EPOCH = 1_700_000_000.0  # the model's time 0 on the engine's wall clock
APPROVE_TIMEOUT = 100.0
REMIND_AFTER = 50.0
HOLD = 30.0
WORKFLOW_TIMEOUT = 60.125  # (never on a model time: those are multiples of 0.25 s)
RETRY = tf.Retry(max_attempts=3, interval=20.0, backoff_rate=2.0, max_interval=40.0)
INTERVALS = (20.0, 40.0)  # between attempts 1-2 and 2-3
TOL = 1e-3
TERMINAL = {"completed", "failed", "cancelled", "timed_out"}
INF = float("inf")

# What steps did outside trioflow (reset per example).
remind_log: list[tuple[str, float]] = []   # (instance id, wall time the reminder ran)
reserve_log: list[str] = []
release_log: list[str] = []
attempt_log: list[tuple[str, float]] = []  # (instance id, wall time of the attempt)


def wall() -> float:
    """The engines' wall clock: model time 0 is EPOCH. One portal is one trio run, whose
    MockClock goes on across restarts, so it needs no offset of its own."""
    return EPOCH + trio.current_time()


async def escalate(ctx: tf.WorkflowContext) -> dict[str, Any]:
    return {"escalated": ctx.input["n"]}


async def remind(ctx: tf.WorkflowContext) -> dict[str, Any]:
    remind_log.append((ctx.metadata.id, wall()))
    return {"reminded": ctx.input["n"]}


async def reserve(ctx: tf.WorkflowContext) -> str:
    reserve_log.append(ctx.metadata.id)
    return f"r-{ctx.metadata.id}"


async def release(ctx: tf.WorkflowContext, held: str) -> None:
    release_log.append(ctx.metadata.id)


async def charge(ctx: tf.WorkflowContext) -> str:
    if ctx.input["fail"]:
        raise PermissionError("card declined")
    return "charged"


async def flaky(ctx: tf.WorkflowContext) -> str:
    attempt_log.append((ctx.metadata.id, wall()))
    if sum(1 for i, _ in attempt_log if i == ctx.metadata.id) < ctx.input["ok_at"]:
        raise ConnectionError("try again")
    return "ok"


async def pack(ctx: tf.WorkflowContext) -> list[Any]:
    return [ctx.steps["first"], ctx.steps["second"]]


async def after(ctx: tf.WorkflowContext) -> dict[str, Any]:
    return {"after": ctx.steps["kid"]}


APPROVAL = (tf.workflow("approval")
            .receive("approve", signal="approved", timeout=APPROVE_TIMEOUT,
                     catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="escalate")])
            .succeed("approved-in-time")
            .step("escalate", escalate)
            .receive("director", signal="director")
            .build())
REMINDER = tf.workflow("reminder").wait("later", seconds=REMIND_AFTER).step("remind", remind).build()
SAGA = (tf.workflow("saga").step("reserve", reserve, release).wait("hold", seconds=HOLD)
        .step("charge", charge).build())
COLLECTOR = (tf.workflow("collector").receive("first", signal="item").receive("second", signal="item")
             .step("pack", pack).build())
PARENT = (tf.workflow("parent").child("kid", workflow="reminder", input=lambda ctx: {"n": ctx.input["n"]})
          .step("after", after).build())
DEADLINE = (tf.workflow("deadline").step("reserve", reserve, release).receive("go", signal="go")
            .with_timeout(WORKFLOW_TIMEOUT).build())
BLINK = tf.workflow("blink").wait("a", seconds=0.5).wait("b", seconds=1.0).step("remind", remind).build()
FLAKY = tf.workflow("flaky").step("try", flaky, retry=RETRY).build()
WORKFLOWS = (APPROVAL, REMINDER, SAGA, COLLECTOR, PARENT, DEADLINE, FLAKY, BLINK)
SIGNALS = {"approval": ("approved", "director"), "collector": ("item",), "deadline": ("go",)}
ALL_SIGNALS = ("approved", "director", "item", "go")
TIMER_STEPS = {"later", "hold", "a", "b"}


def setup_engine(events: list[dict[str, Any]]) -> Callable[[tf.Engine], None]:
    def setup(engine: tf.Engine) -> None:
        for definition in WORKFLOWS:
            engine.register(definition)
        engine.events.on("workflow.*", events.append)
    return setup


# ---- the model -----------------------------------------------------------------------------

Eff = Callable[[float], float]  # a due time -> when it happens (the end of a downtime it fell in)


@dataclasses.dataclass
class Inst:
    iid: str
    wf: str
    input: dict[str, Any]
    start_at: float                           # model time its start is due
    parent: str | None = None
    child: str | None = None
    signals: list[tuple[float, str, Any]] = dataclasses.field(default_factory=list)
    cancel_at: float | None = None
    child_cancelled_at: float | None = None   # (a parent: its child was cancelled on its own)


@dataclasses.dataclass
class Expect:
    status: str
    end: float                                # when it ended (inf: not yet)
    output: Any = None
    waiting: dict[str, Any] | None = None
    consumed: list[Any] = dataclasses.field(default_factory=list)
    compensated: tuple[str, ...] = ()
    failed_step: str | None = None
    fired: list[float] = dataclasses.field(default_factory=list)  # remind / attempt times


def first(signals: list[tuple[float, str, Any]], name: str, before: float = INF, skip: int = 0) -> tuple[float, Any] | None:
    found = [(t, p) for t, n, p in signals if n == name and t < before]
    return found[skip] if len(found) > skip else None


def attempts(inst: Inst, eff: Eff) -> list[float]:
    s = eff(inst.start_at)
    out = [s]
    for gap in INTERVALS:
        out.append(eff(out[-1] + gap))
    return out[:inst.input["ok_at"]]


def natural(inst: Inst, eff: Eff) -> Expect:
    """What the instance does if nobody cancels it (as far as the signals so far say)."""
    s = eff(inst.start_at)
    if inst.wf == "approval":
        deadline = s + APPROVE_TIMEOUT
        got = first(inst.signals, "approved", before=deadline)
        if got is not None:
            return Expect("completed", max(s, got[0]), got[1], consumed=[got[1]])
        director = first(inst.signals, "director")
        if director is not None:
            return Expect("completed", max(eff(deadline), director[0]), director[1], consumed=[director[1]])
        return Expect("running", INF, waiting={"signal": "director", "timeout": None})
    if inst.wf == "reminder":
        end = eff(s + REMIND_AFTER)
        return Expect("completed", end, {"reminded": inst.input["n"]}, fired=[end])
    if inst.wf == "blink":
        end = eff(eff(s + 0.5) + 1.0)
        return Expect("completed", end, {"reminded": inst.input["n"]}, fired=[end])
    if inst.wf == "saga":
        end = eff(s + HOLD)
        if inst.input["fail"]:
            return Expect("failed", end, compensated=("reserve",), failed_step="charge")
        return Expect("completed", end, "charged")
    if inst.wf == "collector":
        one, two = first(inst.signals, "item"), first(inst.signals, "item", skip=1)
        if two is not None:
            assert one is not None
            return Expect("completed", max(s, two[0]), [one[1], two[1]], consumed=[one[1], two[1]])
        return Expect("running", INF, consumed=[] if one is None else [one[1]],
                      waiting={"signal": "item", "timeout": None})
    if inst.wf == "parent":
        if inst.child_cancelled_at is not None:
            return Expect("failed", inst.child_cancelled_at, failed_step="kid")
        return Expect("completed", eff(s + REMIND_AFTER), {"after": {"reminded": inst.input["n"]}})
    if inst.wf == "deadline":
        go = first(inst.signals, "go", before=s + WORKFLOW_TIMEOUT)
        if go is not None:
            return Expect("completed", max(s, go[0]), go[1], consumed=[go[1]])
        return Expect("timed_out", eff(s + WORKFLOW_TIMEOUT), compensated=("reserve",))
    if inst.wf == "flaky":
        tries = attempts(inst, eff)
        if inst.input["ok_at"] <= 3:
            return Expect("completed", tries[-1], "ok", fired=tries)
        return Expect("failed", tries[-1], failed_step="try", fired=tries)
    raise AssertionError(inst.wf)


def expected(inst: Inst, now: float, eff: Eff) -> Expect:
    nat = natural(inst, eff)
    s = eff(inst.start_at)
    if inst.cancel_at is not None and inst.cancel_at < nat.end:
        c = inst.cancel_at
        comp = ("reserve",) if inst.wf in ("saga", "deadline") and c >= s else ()
        consumed = list(nat.consumed)
        if inst.wf == "approval":
            got = first(inst.signals, "approved", before=min(c, s + APPROVE_TIMEOUT))
            consumed = [got[1]] if got is not None and max(s, got[0]) <= c else []
        if inst.wf == "collector":
            consumed = [p for t, n, p in inst.signals if n == "item" and max(s, t) <= c][:2]
        if inst.wf == "deadline":
            consumed = []
        return Expect("cancelled", c, compensated=comp, consumed=consumed,
                      fired=[t for t in nat.fired if t <= c and inst.wf == "flaky"])
    if nat.end <= now:
        return nat
    consumed: list[Any] = []
    if now < s:
        waiting: dict[str, Any] | None = {"start": inst.start_at}
    elif inst.wf == "approval":
        if now < eff(s + APPROVE_TIMEOUT):
            waiting = {"signal": "approved", "timeout": s + APPROVE_TIMEOUT}
        else:
            waiting = {"signal": "director", "timeout": None}
    elif inst.wf == "reminder":
        waiting = {"timer": s + REMIND_AFTER}
    elif inst.wf == "blink":
        a = eff(s + 0.5)
        waiting = {"timer": s + 0.5 if now < a else a + 1.0}
    elif inst.wf == "saga":
        waiting = {"timer": s + HOLD}
    elif inst.wf == "collector":
        waiting = {"signal": "item", "timeout": None}
        consumed = nat.consumed
    elif inst.wf == "deadline":
        waiting = {"signal": "go"}
    elif inst.wf == "flaky":
        tries = attempts(inst, eff)
        done = [t for t in tries if t <= now]
        waiting = {"retry": done[-1] + INTERVALS[len(done) - 1], "attempt": len(done)}
        return Expect("running", INF, waiting=waiting, fired=done)
    else:
        waiting = {"child": inst.child}
    return Expect("running", INF, waiting=waiting, consumed=consumed)


def same_waiting(seen: dict[str, Any] | None, want: dict[str, Any] | None) -> bool:
    if seen is None or want is None:
        return seen is want
    for key, value in want.items():
        if key not in seen:
            return False
        if isinstance(value, float):
            if seen[key] is None or abs(seen[key] - (EPOCH + value)) > TOL:
                return False
        elif seen[key] != value:
            return False
    return True


async def _get_all(engine: tf.Engine, ids: list[str]) -> dict[str, tf.WorkflowInstance | None]:
    return {iid: await engine.get_instance(iid) for iid in ids}


async def _listed(engine: tf.Engine) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {"all": {i.id: i.status for i in await engine.get_instances()}}
    for status in ("pending", "running", "completed", "failed", "cancelled", "timed_out"):
        out[status] = {i.id: i.status for i in await engine.get_instances(status=status)}  # type: ignore[arg-type]
    return out


class RestartsOnSQLite(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        for log in (remind_log, reserve_log, release_log, attempt_log):
            log.clear()
        self.directory = tempfile.mkdtemp(prefix="trioflow-review-")
        self.events: list[dict[str, Any]] = []
        self.now = 0.0
        self.downs: list[tuple[float, float]] = []   # (stopped at, reopened at)
        self.insts: dict[str, Inst] = {}
        self.payloads = 0
        self._cm = engine_portal(setup=setup_engine(self.events), clock=wall,
                                 adapter=tf.adapters.SQLiteAdapter(Path(self.directory) / "flows.db"))
        self.portal = self._cm.__enter__()
        assert self.portal.now == 0.0

    def teardown(self) -> None:
        try:
            self._cm.__exit__(None, None, None)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def eff(self, due: float) -> float:
        for a, b in self.downs:
            if a < due < b:
                return b
        return due

    def exp(self, inst: Inst) -> Expect:
        return expected(inst, self.now, self.eff)

    # ---- rules ---------------------------------------------------------------------------

    @rule(wf=st.sampled_from([w.name for w in WORKFLOWS]), n=st.integers(0, 1), fail=st.booleans(),
          delay=st.sampled_from([None, 0, 0.5, 20, 75]), reuse=st.sampled_from([None, None, "u0", "u1"]))
    def start(self, wf: str, n: int, fail: bool, delay: float | None, reuse: str | None) -> None:
        data: dict[str, Any] = {"n": n, "fail": fail} if wf == "saga" else {"n": n}
        if wf == "flaky":
            data = {"n": n, "ok_at": 2 + n + fail}  # 2, 3 or 4 (fails for good)
        kwargs: dict[str, Any] = {"delay": delay}
        if reuse is not None:
            kwargs["instance_id"] = reuse
        known = self.insts.get(reuse) if reuse is not None else None
        if known is not None and (known.wf != wf or known.input != data):
            with pytest.raises(tf.InstanceIdConflictError):
                self.portal.call(lambda e: e.start(wf, data, **kwargs))
            return
        iid = self.portal.call(lambda e: e.start(wf, data, **kwargs))
        if known is not None:
            assert iid == reuse
            return
        assert iid not in self.insts
        self.insts[iid] = Inst(iid, wf, data, self.now + (delay or 0.0))

    @precondition(lambda self: self.insts)
    @rule(data=st.data(), right=st.integers(0, 3))
    def signal(self, data: st.DataObject, right: int) -> None:
        iid = data.draw(st.sampled_from(sorted(self.insts) + ["nobody"]))
        takes = SIGNALS.get(self.insts[iid].wf, ()) if iid in self.insts else ()
        name = data.draw(st.sampled_from(takes if right and takes else ("bogus",) + ALL_SIGNALS))
        self._signal(iid, name)

    def _signal(self, iid: str, name: str) -> None:
        self.payloads += 1
        payload = {"k": self.payloads}
        if iid == "nobody":
            with pytest.raises(tf.UnknownInstanceError):
                self.portal.call(lambda e: e.signal(iid, name, payload))
            return
        inst = self.insts[iid]
        if self.exp(inst).status in TERMINAL:
            with pytest.raises(tf.InstanceNotLiveError):
                self.portal.call(lambda e: e.signal(iid, name, payload))
            return
        self.portal.call(lambda e: e.signal(iid, name, payload))
        inst.signals.append((self.now, name, payload))

    @precondition(lambda self: self.insts)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self._cancel(data.draw(st.sampled_from(sorted(self.insts) + ["nobody"])))

    def _cancel(self, iid: str) -> None:
        got = self.portal.call(lambda e: e.cancel(iid))
        if iid == "nobody":
            assert got is False
            return
        inst = self.insts[iid]
        live = self.exp(inst).status not in TERMINAL
        assert got is live, (iid, got, live)
        if not live:
            return
        inst.cancel_at = self.now
        if inst.child is not None:
            kid = self.insts[inst.child]
            if self.exp(kid).status not in TERMINAL:
                kid.cancel_at = self.now
        if inst.parent is not None:
            self.insts[inst.parent].child_cancelled_at = self.now

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 10.0, 20.0, 30.0, 50.0, 100.0]))
    def advance(self, seconds: float) -> None:
        self.portal.advance(seconds)
        self.now += seconds

    def _due_times(self, only: str | None = None) -> list[float]:
        out: set[float] = set()
        for inst in self.insts.values():
            if inst.cancel_at is not None or (only is not None and inst.iid != only):
                continue
            want = self.exp(inst)
            if want.status in TERMINAL:
                continue
            for key in ("start", "timer", "retry", "timeout"):
                value = (want.waiting or {}).get(key)
                if value is not None:
                    out.add(value)
            if inst.wf == "deadline":
                s = self.eff(inst.start_at)
                out.update({s + WORKFLOW_TIMEOUT - 0.125, s + WORKFLOW_TIMEOUT + 0.125})
        return sorted(t for t in out if t > self.now)

    @precondition(lambda self: self._due_times())
    @rule(data=st.data(), delta=st.sampled_from([-0.25, 0.0, 0.25]), act=st.sampled_from(["signal", "cancel", None]))
    def act_at_an_edge(self, data: st.DataObject, delta: float, act: str | None) -> None:
        """Go to just before, at or just after one instance's due time, and signal or cancel it."""
        iid = data.draw(st.sampled_from([i for i in sorted(self.insts) if self._due_times(i)]))
        due = data.draw(st.sampled_from(self._due_times(iid)))
        seconds = max(0.0, due + delta - self.now)
        self.portal.advance(seconds)
        self.now += seconds
        if act == "cancel":
            self._cancel(iid)
        elif act == "signal":
            takes = SIGNALS.get(self.insts[iid].wf, ("bogus",))
            self._signal(iid, data.draw(st.sampled_from(takes)))

    def _targets(self, kind: str) -> list[float]:
        out: list[float] = []
        for inst in self.insts.values():
            want = self.exp(inst)
            if want.status in TERMINAL:
                continue
            w = want.waiting or {}
            if kind == "timer":
                out += [w[k] for k in ("timer", "retry", "start") if w.get(k) is not None]
            elif kind == "receive" and w.get("timeout") is not None:
                out.append(w["timeout"])
            elif kind == "workflow" and inst.wf == "deadline" and inst.cancel_at is None:
                out.append(self.eff(inst.start_at) + WORKFLOW_TIMEOUT)
        return sorted(t for t in out if t > self.now)

    @rule(data=st.data(), kind=st.sampled_from(["zero", "few", "timer", "receive", "workflow"]),
          past=st.sampled_from([0.0, 0.25, 3.0, 40.0]))
    def restart(self, data: st.DataObject, kind: str, past: float) -> None:
        """The process stops and starts again ``downtime`` later."""
        targets = self._targets(kind) if kind not in ("zero", "few") else []
        if kind == "zero":
            downtime = 0.0
        elif not targets:
            downtime = 3.0
        else:
            downtime = data.draw(st.sampled_from(targets)) - self.now + past
            if kind == "workflow":
                downtime += 0.125 if past == 0.0 else 0.0  # (past it, not at it)
        before = self.portal.now
        self.portal.restart(downtime=downtime)
        assert self.portal.now == before + downtime, ("restart moved time by", self.portal.now - before, downtime)
        if downtime > 0:
            self.downs.append((self.now, self.now + downtime))
        self.now += downtime

    # ---- invariants ----------------------------------------------------------------------

    def _adopt_children(self, seen: dict[str, tf.WorkflowInstance | None]) -> None:
        for iid, inst in list(self.insts.items()):
            view = seen.get(iid)
            if inst.wf != "parent" or view is None:
                continue
            if inst.child is None and view.children:
                assert len(view.children) == 1, view.children
                cid = view.children[0]
                inst.child = cid
                kid = Inst(cid, "reminder", {"n": inst.input["n"]}, self.eff(inst.start_at), parent=iid)
                if inst.cancel_at is not None and inst.cancel_at >= kid.start_at:
                    kid.cancel_at = inst.cancel_at  # (cancelled with its parent, before we saw it)
                self.insts[cid] = kid

    @invariant()
    def virtual_time_agrees(self) -> None:
        assert abs(self.portal.now - self.now) < 1e-3, (self.portal.now, self.now)

    @invariant()
    def every_instance_is_where_the_model_says(self) -> None:
        ids = sorted(self.insts)
        seen = self.portal.call(lambda e: _get_all(e, ids))
        self._adopt_children(seen)
        missing = sorted(set(self.insts) - set(seen))
        if missing:
            seen.update(self.portal.call(lambda e: _get_all(e, missing)))
        for iid, inst in self.insts.items():
            view = seen[iid]
            assert view is not None, f"{iid} is not stored"
            want = self.exp(inst)
            s = self.eff(inst.start_at)
            where = (iid, inst.wf, self.now, inst.start_at, self.downs, want, view.status, view.output,
                     view.waiting, view.error)
            assert view.status == want.status, where
            started = self.now >= s and (inst.cancel_at is None or inst.cancel_at >= s)
            if inst.wf == "parent" and started:
                assert inst.child is not None, ("a started parent has no child", where)
            if want.status == "completed":
                assert view.output == want.output, where
            if want.status == "running":
                want_w = dict(want.waiting or {})
                if want_w.get("child", 0) is None:
                    want_w.pop("child")
                assert same_waiting(view.waiting, want_w), where
            if want.status == "failed":
                assert view.failed_step == want.failed_step, where
            if want.status in TERMINAL:
                assert view.waiting is None, where
                assert tuple(view.compensated_steps) == want.compensated, where
            # Times: started when its start fell due, ended when the model says.
            if started:
                assert view.started_at is not None and abs(view.started_at - (EPOCH + s)) < TOL, (
                    "started_at", view.started_at and view.started_at - EPOCH, where)
            if want.status in TERMINAL:
                assert view.completed_at is not None and abs(view.completed_at - (EPOCH + want.end)) < TOL, (
                    "completed_at", view.completed_at and view.completed_at - EPOCH, where)
            else:
                assert view.completed_at is None, ("completed_at of a live instance", where)
            # History: each step once (no loops here), and the timers' ends at their times.
            # (A child step is stored "started" first, then ended: tests/test_child_started_first.py.)
            names = [r.step_name for r in view.history if r.status != "started"]
            assert len(names) == len(set(names)), ("a step ended twice in history", view.history, where)
            if inst.wf == "flaky" and want.status in ("completed", "failed"):
                assert view.step_results["try"].attempts == len(want.fired), (view.step_results["try"], where)
            if inst.wf == "reminder" and want.status == "completed":
                later = view.step_results["later"]
                assert later.completed_at is not None and abs(later.completed_at - EPOCH - want.end) < TOL, (later, where)
            # Side effects outside trioflow: each exactly once, at its time.
            if inst.wf == "flaky":
                tried = [round(t - EPOCH, 3) for i, t in attempt_log if i == iid]
                assert tried == [round(t, 3) for t in want.fired], ("attempts at", tried, want.fired, where)
            if inst.wf in ("saga", "deadline"):
                assert reserve_log.count(iid) == (1 if started else 0), ("reserve ran", reserve_log.count(iid), where)
                assert release_log.count(iid) == len(want.compensated), ("release ran", release_log.count(iid), where)
            if inst.wf in ("reminder", "blink"):
                fired = [round(t - EPOCH, 3) for i, t in remind_log if i == iid]
                if want.status == "completed":
                    assert fired == [round(t, 3) for t in want.fired], ("reminder fired at", fired, where)
                else:
                    assert fired == [], ("a reminder fired that should not have", fired, where)
            self._check_events(iid, want, where)
        # Listings agree with get_instance.
        listed = self.portal.call(_listed)
        assert listed["all"] == {iid: seen[iid].status for iid in self.insts}, listed["all"]  # type: ignore[union-attr]
        for status, members in listed.items():
            if status != "all":
                assert members == {i: s for i, s in listed["all"].items() if s == status}, (status, members)

    def _check_events(self, iid: str, want: Expect, where: Any) -> None:
        mine = [e for e in self.events if e.get("instance_id") == iid]
        ends = [e["event"] for e in mine if e["event"] in
                {"workflow.completed", "workflow.failed", "workflow.cancelled", "workflow.timed_out"}]
        assert ends == ([f"workflow.{want.status}"] if want.status in TERMINAL else []), ("terminal events", ends, where)
        received = [e["payload"] for e in mine if e["event"] == "workflow.signal.received"]
        assert received == want.consumed, ("signals received", received, where)
        seqs = [e["seq"] for e in mine if e["event"] == "workflow.signal.received"]
        assert len(set(seqs)) == len(seqs), ("a signal taken twice", seqs, where)
        assert len([e for e in mine if e["event"] == "workflow.started"]) <= 1, ("started twice", where)
        comp = [e["step_name"] for e in mine if e["event"] == "workflow.step.compensated"]
        assert tuple(comp) == (want.compensated if want.status in TERMINAL else ()), ("compensated events", comp, where)
        # Each step start has exactly one end (a timer's completion may be published again
        # by the engine after a restart: README, Events).
        steps = {e["step_name"] for e in mine if e["event"].startswith("workflow.step.") and "step_name" in e}
        for step in steps:
            starts = sum(1 for e in mine if e["event"] == "workflow.step.started" and e.get("step_name") == step)
            done = [e["event"] for e in mine if e.get("step_name") == step
                    and e["event"] in ("workflow.step.completed", "workflow.step.failed", "workflow.step.caught")]
            if step in TIMER_STEPS:
                done = sorted(set(done))
            live = want.status not in TERMINAL
            assert len(done) <= 1, ("a step ended twice", step, done, where)
            assert starts <= 1 or inst_is_flaky(step), ("a step started twice", step, starts, where)
            if not live and starts:
                assert len(done) == 1, ("a started step never ended", step, starts, done, where)


def inst_is_flaky(step: str) -> bool:
    return step == "try"


RestartsOnSQLite.TestCase.settings = settings(
    max_examples=45, stateful_step_count=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestRestartsOnSQLite = RestartsOnSQLite.TestCase
