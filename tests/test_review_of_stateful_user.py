"""A user's stateful test of durable waiting: hypothesis interleaves starts (delayed, with reused
ids), signals (right and wrong names, to ended and unknown instances), cancels, virtual time
and engine restarts on one MemoryAdapter, and checks every instance against a plain-Python
model after each rule. Plain deterministic tests below it pin what the machine found."""

from __future__ import annotations

import dataclasses
from typing import Any

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
# (Model times are multiples of 0.25 s: a workflow timeout of 60.125 s never falls on one, and is
# probed 0.125 s either side. Exactly at it, a timeout may fire a few ulps late: see
# test_workflow_timeouts_of_instances_started_together_fire_late below.)
WORKFLOW_TIMEOUT = 60.125
RETRY = tf.Retry(max_attempts=3, interval=20.0, backoff_rate=2.0, max_interval=40.0)
ATTEMPTS_AT = (0.0, 20.0, 60.0)  # after the start
TOL = 1e-3

# What steps did outside trioflow (reset per example).
remind_log: list[tuple[str, float]] = []   # (instance id, wall time the reminder ran)
reserve_log: list[str] = []
release_log: list[str] = []
attempt_log: list[tuple[str, float]] = []  # (instance id, wall time of the attempt)
_wall: list[Any] = [None]                  # the current engine's wall clock


async def escalate(ctx: tf.WorkflowContext) -> dict[str, Any]:
    return {"escalated": ctx.input["n"]}


async def remind(ctx: tf.WorkflowContext) -> dict[str, Any]:
    remind_log.append((ctx.metadata.id, _wall[0]()))
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
    attempt_log.append((ctx.metadata.id, _wall[0]()))
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
TERMINAL = {"completed", "failed", "cancelled", "timed_out"}
INF = float("inf")


@dataclasses.dataclass
class Inst:
    iid: str
    wf: str
    input: dict[str, Any]
    start: float                              # model time its first step runs
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


def first(signals: list[tuple[float, str, Any]], name: str, before: float = INF, skip: int = 0) -> tuple[float, Any] | None:
    found = [(t, p) for t, n, p in signals if n == name and t < before]
    return found[skip] if len(found) > skip else None


def natural(inst: Inst, children: dict[str, Inst]) -> Expect:
    """What the instance does if nobody cancels it (as far as the signals so far say)."""
    s = inst.start
    if inst.wf == "approval":
        deadline = s + APPROVE_TIMEOUT
        got = first(inst.signals, "approved", before=deadline)
        if got is not None:
            return Expect("completed", max(s, got[0]), got[1], consumed=[got[1]])
        director = first(inst.signals, "director")
        if director is not None:
            return Expect("completed", max(deadline, director[0]), director[1], consumed=[director[1]])
        return Expect("running", INF, waiting={"signal": "director", "timeout": None})
    if inst.wf == "reminder":
        return Expect("completed", s + REMIND_AFTER, {"reminded": inst.input["n"]})
    if inst.wf == "blink":
        return Expect("completed", s + 1.5, {"reminded": inst.input["n"]})
    if inst.wf == "saga":
        if inst.input["fail"]:
            return Expect("failed", s + HOLD, compensated=("reserve",), failed_step="charge")
        return Expect("completed", s + HOLD, "charged")
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
        return Expect("completed", s + REMIND_AFTER, {"after": {"reminded": inst.input["n"]}})
    if inst.wf == "deadline":
        go = first(inst.signals, "go", before=s + WORKFLOW_TIMEOUT)
        if go is not None:
            return Expect("completed", max(s, go[0]), go[1], consumed=[go[1]])
        return Expect("timed_out", s + WORKFLOW_TIMEOUT, compensated=("reserve",))
    if inst.wf == "flaky":
        ok_at = inst.input["ok_at"]
        if ok_at <= len(ATTEMPTS_AT):
            return Expect("completed", s + ATTEMPTS_AT[ok_at - 1], "ok")
        return Expect("failed", s + ATTEMPTS_AT[-1], failed_step="try")
    raise AssertionError(inst.wf)


def expected(inst: Inst, now: float, children: dict[str, Inst]) -> Expect:
    nat = natural(inst, children)
    if inst.cancel_at is not None and inst.cancel_at < nat.end:
        c = inst.cancel_at
        comp = ("reserve",) if inst.wf in ("saga", "deadline") and c >= inst.start else ()
        consumed = [p for p in nat.consumed]  # (only those taken before the cancel: see below)
        if inst.wf == "approval":
            got = first(inst.signals, "approved", before=min(c, inst.start + APPROVE_TIMEOUT))
            consumed = [got[1]] if got is not None and max(inst.start, got[0]) <= c else []
        if inst.wf == "collector":
            consumed = [p for t, n, p in inst.signals if n == "item" and max(inst.start, t) <= c][:2]
        if inst.wf == "deadline":
            consumed = []
        return Expect("cancelled", c, compensated=comp, consumed=consumed)
    if nat.end <= now:
        return nat
    # Running: what does it wait for now?
    s = inst.start
    consumed: list[Any] = []
    if now < s:
        waiting: dict[str, Any] | None = {"start": s}
    elif inst.wf == "approval":
        if now < s + APPROVE_TIMEOUT:
            waiting = {"signal": "approved", "timeout": s + APPROVE_TIMEOUT}
        else:
            waiting = {"signal": "director", "timeout": None}
    elif inst.wf == "reminder":
        waiting = {"timer": s + REMIND_AFTER}
    elif inst.wf == "blink":
        waiting = {"timer": s + 0.5 if now < s + 0.5 else s + 1.5}
    elif inst.wf == "saga":
        waiting = {"timer": s + HOLD}
    elif inst.wf == "collector":
        waiting = {"signal": "item", "timeout": None}
        consumed = nat.consumed
    elif inst.wf == "deadline":
        waiting = {"signal": "go"}
    elif inst.wf == "flaky":
        done = sum(1 for a in ATTEMPTS_AT if s + a <= now)
        waiting = {"retry": s + ATTEMPTS_AT[done], "attempt": done}
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


class WallClock:
    """The engines' wall clock: model time 0 is EPOCH, and it goes on where the last engine left
    off when a new portal (a new trio run, whose MockClock starts at 0) opens."""

    def __init__(self) -> None:
        self.offset = EPOCH

    def __call__(self) -> float:
        return self.offset + trio.current_time()


async def _get_all(engine: tf.Engine, ids: list[str]) -> dict[str, tf.WorkflowInstance | None]:
    return {iid: await engine.get_instance(iid) for iid in ids}


async def _listed(engine: tf.Engine) -> dict[str, dict[str, str]]:
    """Every instance as get_instances lists it: unfiltered, and by each status."""
    out: dict[str, dict[str, str]] = {"all": {i.id: i.status for i in await engine.get_instances()}}
    for status in ("pending", "running", "completed", "failed", "cancelled", "timed_out"):
        out[status] = {i.id: i.status for i in await engine.get_instances(status=status)}  # type: ignore[arg-type]
    return out


async def _waited(engine: tf.Engine, ids: list[str]) -> dict[str, tuple[str, Any]]:
    out = {}
    for iid in ids:
        done = await engine.wait(iid)
        out[iid] = (done.status, done.output)
    return out


class Waiting(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        remind_log.clear(), reserve_log.clear(), release_log.clear(), attempt_log.clear()
        self.adapter = tf.adapters.MemoryAdapter()
        self.clock = WallClock()
        _wall[0] = self.clock
        self.now = 0.0
        self.opened_at = 0.0
        self.insts: dict[str, Inst] = {}
        self.events: list[dict[str, Any]] = []
        self.payloads = 0
        self.restarts = 0
        self._cm: Any = None
        self._open()

    def _open(self, resume: bool = True) -> None:
        self.clock.offset = EPOCH + self.now
        self.opened_at = self.now
        self._cm = engine_portal(adapter=self.adapter, clock=self.clock, resume=resume)
        self.portal = self._cm.__enter__()

        def register(engine: tf.Engine) -> None:
            for definition in WORKFLOWS:
                engine.register(definition)
            engine.events.on("workflow.*", self.events.append)

        self.portal.call(register)
        assert self.portal.now == 0.0, "opening the engine moved virtual time"
        if not resume:
            # (Instances left in flight wait for resume(); parked ones wake when due anyway.)
            first_ids = self.portal.call(lambda e: e.resume())
            again = self.portal.call(lambda e: e.resume())
            kids = self.children()
            # A second resume() finds nothing new to resume, except (see the plain test
            # test_a_second_resume_resumes_parked_instances_that_hold_a_stray_signal below) an
            # instance parked with a signal it is not waiting for.
            stray = {i for i, inst in self.insts.items()
                     if len(inst.signals) > len(expected(inst, self.now, kids).consumed)}
            assert len(set(first_ids)) == len(first_ids) and set(again) <= stray, (first_ids, again, stray)
            for iid in first_ids:
                assert iid in self.insts and expected(self.insts[iid], self.now, kids).status not in TERMINAL, iid

    def teardown(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)

    # ---- rules ---------------------------------------------------------------------------

    @rule(wf=st.sampled_from([w.name for w in WORKFLOWS]), n=st.integers(0, 1), fail=st.booleans(),
          delay=st.sampled_from([None, 0, 0.5, 20, 75]), reuse=st.sampled_from([None, "u0", "u1", "u2"]))
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
        """A signal its workflow takes (3 times in 4), or one of another name, or none at all."""
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
        if expected(inst, self.now, self.children()).status in TERMINAL:
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
        live = expected(inst, self.now, self.children()).status not in TERMINAL
        assert got is live, (iid, got, live)
        if not live:
            return
        inst.cancel_at = self.now
        if inst.child is not None:
            kid = self.insts[inst.child]
            if expected(kid, self.now, self.children()).status not in TERMINAL:
                kid.cancel_at = self.now
        if inst.parent is not None:
            self.insts[inst.parent].child_cancelled_at = self.now

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 10.0, 20.0, 29.0, 30.0, 50.0, 100.0, 250.0]))
    def advance(self, seconds: float) -> None:
        self.portal.advance(seconds)
        self.now += seconds

    @precondition(lambda self: self._due_times())
    @rule(data=st.data(), delta=st.sampled_from([-0.25, 0.0, 0.0, 0.25]))
    def advance_to_a_due_time(self, data: st.DataObject, delta: float) -> None:
        """Right before, at, or right after a time something is due (the edges of timeouts)."""
        due = data.draw(st.sampled_from(self._due_times()[:3]))
        seconds = max(0.0, due + delta - self.now)
        self.portal.advance(seconds)
        self.now += seconds

    @precondition(lambda self: self._due_times())
    @rule(data=st.data(), delta=st.sampled_from([-0.25, 0.0, 0.25]), act=st.sampled_from(["signal", "cancel"]))
    def act_at_an_edge(self, data: st.DataObject, delta: float, act: str) -> None:
        """Go to just before, at or just after one instance's due time, and signal or cancel it."""
        iid = data.draw(st.sampled_from([i for i in sorted(self.insts) if self._due_times(i)]))
        due = data.draw(st.sampled_from(self._due_times(iid)))
        seconds = max(0.0, due + delta - self.now)
        self.portal.advance(seconds)
        self.now += seconds
        if act == "cancel":
            self._cancel(iid)
        else:
            takes = SIGNALS.get(self.insts[iid].wf, ("bogus",))
            self._signal(iid, data.draw(st.sampled_from(takes)))

    def _due_times(self, only: str | None = None) -> list[float]:
        out: set[float] = set()
        for inst in self.insts.values():
            if inst.cancel_at is not None or (only is not None and inst.iid != only):
                continue
            s = inst.start
            out.update({s, s + APPROVE_TIMEOUT} if inst.wf == "approval" else {s})
            out.update({"reminder": [s + REMIND_AFTER], "parent": [s + REMIND_AFTER], "saga": [s + HOLD],
                        "deadline": [s + WORKFLOW_TIMEOUT - 0.125, s + WORKFLOW_TIMEOUT + 0.125], "flaky": [s + a for a in ATTEMPTS_AT],
                        "blink": [s + 0.5, s + 1.5]}.get(inst.wf, []))
        return sorted(t for t in out if t > self.now)

    @rule(resume=st.booleans())
    def restart(self, resume: bool) -> None:
        self._cm.__exit__(None, None, None)
        self._cm = None
        self.restarts += 1
        self._open(resume)

    # ---- invariants ----------------------------------------------------------------------

    def children(self) -> dict[str, Inst]:
        return {i.iid: i for i in self.insts.values() if i.parent is not None}

    def _adopt_children(self, seen: dict[str, tf.WorkflowInstance | None]) -> None:
        for iid, inst in list(self.insts.items()):
            view = seen.get(iid)
            if inst.wf != "parent" or view is None:
                continue
            if inst.child is None and view.children:
                assert len(view.children) == 1, view.children
                cid = view.children[0]
                inst.child = cid
                kid = Inst(cid, "reminder", {"n": inst.input["n"]}, inst.start, parent=iid)
                self.insts[cid] = kid

    @invariant()
    def virtual_time_agrees(self) -> None:
        # (An advance may end on a deadline up to DUE_SLACK past its end.)
        assert abs(self.portal.now - (self.now - self.opened_at)) < 1e-5, (self.portal.now, self.now)

    @invariant()
    def every_instance_is_where_the_model_says(self) -> None:
        ids = sorted(self.insts)
        seen = self.portal.call(lambda e: _get_all(e, ids))
        self._adopt_children(seen)
        # (Children adopted just now: read them too.)
        missing = sorted(set(self.insts) - set(seen))
        if missing:
            seen.update(self.portal.call(lambda e: _get_all(e, missing)))
        kids = self.children()
        for iid, inst in self.insts.items():
            view = seen[iid]
            assert view is not None, f"{iid} is not stored"
            want = expected(inst, self.now, kids)
            where = (iid, inst.wf, self.now, inst.start, want, view.status, view.output, view.waiting, view.error)
            assert view.status == want.status, where
            started = self.now >= inst.start and (inst.cancel_at is None or inst.cancel_at >= inst.start)
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
            # Side effects outside trioflow.
            if inst.wf == "flaky":
                tried = [round(t - EPOCH - inst.start, 3) for i, t in attempt_log if i == iid]
                end = inst.cancel_at if inst.cancel_at is not None else self.now
                due = [a for a in ATTEMPTS_AT if inst.start + a <= end][:inst.input["ok_at"]]
                assert tried == due, ("attempts at", tried, due, where)
            if inst.wf in ("saga", "deadline"):
                ran = self.now >= inst.start and (inst.cancel_at is None or inst.cancel_at >= inst.start)
                assert reserve_log.count(iid) == (1 if ran else 0), ("reserve ran", reserve_log.count(iid), where)
                assert release_log.count(iid) == len(want.compensated), ("release ran", release_log.count(iid), where)
            if inst.wf in ("reminder", "blink"):
                fired = [t for i, t in remind_log if i == iid]
                if want.status == "completed":
                    assert len(fired) == 1, ("reminder fired", fired, where)
                    assert abs(fired[0] - (EPOCH + natural(inst, {}).end)) < TOL, ("fired late/early", fired, where)
                else:
                    assert fired == [], ("a reminder fired that should not have", fired, where)
            # Events.
            mine = [e for e in self.events if e.get("instance_id") == iid]
            ends = [e["event"] for e in mine if e["event"] in
                    {"workflow.completed", "workflow.failed", "workflow.cancelled", "workflow.timed_out"}]
            if want.status in TERMINAL:
                assert ends == [f"workflow.{want.status}"], ("terminal events", ends, where)
            else:
                assert ends == [], ("terminal events of a live instance", ends, where)
            received = [e["payload"] for e in mine if e["event"] == "workflow.signal.received"]
            assert received == want.consumed, ("signals received", received, where)
            seqs = [e["seq"] for e in mine if e["event"] == "workflow.signal.received"]
            assert len(set(seqs)) == len(seqs), ("a signal taken twice", seqs, where)
            started = [e for e in mine if e["event"] == "workflow.started"]
            assert len(started) <= 1, ("started twice", len(started), where)
            done_steps = [e["step_name"] for e in mine if e["event"] == "workflow.step.completed"]
            assert len(done_steps) == len(set(done_steps)), ("a step completed twice", done_steps, where)
            waits = [e["step_name"] for e in mine if e["event"] == "workflow.step.waiting"]
            assert len(waits) == len(set(waits)), ("a step started waiting twice", waits, where)
            early = first(inst.signals, "approved", before=inst.start)
            if inst.wf == "approval" and early is not None and (inst.cancel_at is None or inst.cancel_at >= inst.start):
                assert "approve" not in waits, ("waited although its signal was there", waits, where)
            comp_events = [e["step_name"] for e in mine if e["event"] == "workflow.step.compensated"]
            assert tuple(comp_events) == (want.compensated if want.status in TERMINAL else ()), (
                "compensated events", comp_events, where)
        # Listings agree with get_instance.
        listed = self.portal.call(_listed)
        assert listed["all"] == {iid: seen[iid].status for iid in self.insts}, listed["all"]  # type: ignore[union-attr]
        for status, members in listed.items():
            if status != "all":
                assert members == {i: s for i, s in listed["all"].items() if s == status}, (status, members)
        # wait() of an ended instance returns it at once, as stored.
        ended = sorted(i for i, s in listed["all"].items() if s in TERMINAL)
        waited = self.portal.call(lambda e: _waited(e, ended))
        for iid in ended:
            assert waited[iid] == (seen[iid].status, seen[iid].output), (iid, waited[iid])  # type: ignore[union-attr]


Waiting.TestCase.settings = settings(
    max_examples=70, stateful_step_count=50, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestWaitingMachine = Waiting.TestCase


# ---- plain tests of what the machine found ------------------------------------------------

def _register_all(engine: tf.Engine) -> None:
    for definition in WORKFLOWS:
        engine.register(definition)


def test_a_second_resume_resumes_parked_instances_that_hold_a_stray_signal() -> None:
    """What a user relies on: ``engine.resume()`` "resumes every stored pending/running
    instance ... not already running here ... Never starts an instance twice", and the
    project's own stateful test asserts that a second ``resume()`` returns ``[]``. A parked
    instance is left to the waker (docs/waiting.md: ``resumable()`` leaves out instances with a
    ``wake_at``), unless a signal is pending "stored just before a crash".

    What happens instead: an instance parked on a timer (or a receive) that holds a signal it
    is not waiting for yet (kept early, as documented, or a late ``approved`` after its receive
    timed out, which nothing will ever take) is listed by ``resumable()`` for good. Every
    ``resume()`` call takes it up again, returns it again, and writes a checkpoint for it,
    although nothing changed; so does every engine open. (The adapters' ``resumable()`` lists
    any row with pending signals, whatever their names; the engine now leaves a parked row
    whose lanes wait for none of them to the waker, which fires its timer when due.)"""
    remind_log.clear()
    adapter = tf.adapters.MemoryAdapter()
    clock = WallClock()
    _wall[0] = clock
    with engine_portal(adapter=adapter, clock=clock) as portal:
        portal.call(_register_all)
        iid = portal.call(lambda e: e.start("reminder", {"n": 0}))
        portal.call(lambda e: e.signal(iid, "bogus", {"k": 1}))  # kept: nobody takes it yet
        portal.advance(5)
    writes: list[str] = []
    checkpoint = adapter.checkpoint

    async def counted(instance_id: str, *args: Any, **kwargs: Any) -> Any:
        writes.append(instance_id)
        return await checkpoint(instance_id, *args, **kwargs)

    adapter.checkpoint = counted  # type: ignore[method-assign]
    clock.offset = EPOCH + 5
    with engine_portal(adapter=adapter, clock=clock, resume=False) as portal:
        portal.call(_register_all)
        first_ids = portal.call(lambda e: e.resume())
        second = portal.call(lambda e: e.resume())
        third = portal.call(lambda e: e.resume())
        seen = portal.call(lambda e: e.get_instance(iid))
        assert seen is not None and seen.status == "running" and seen.waiting is not None
        # Left to the waker: nothing of it is to run before its timer.
        assert (first_ids, second, third, len(writes)) == ([], [], [], 0), (
            f"resume() took the parked instance up: {first_ids}, {second}, {third}; {len(writes)} checkpoints")
        portal.advance(REMIND_AFTER)
        seen = portal.call(lambda e: e.get_instance(iid))
        assert seen is not None and seen.status == "completed", (seen and seen.status, seen and seen.waiting)


@pytest.mark.xfail(strict=True, reason="a portal per engine cannot share a wall clock (each is a trio run of"
                   " its own); EnginePortal.restart(downtime=) restarts within one portal, keeping virtual time"
                   " (tests/test_engine_portal.py)")
def test_a_restart_through_a_new_engine_portal_keeps_virtual_time() -> None:
    """What a user relies on: restarting by closing a portal and opening another on the same
    MemoryAdapter (the only way the kit offers), then advancing, fires a stored timer when its
    due time comes: 10 s + restart + 40 s = the 50 s reminder.

    What happens instead: each portal is a trio run of its own whose default wall clock
    (virtual_wall_clock) starts again at the real time, so the second engine's clock is 10 s
    behind the first's: after 40 s the timer is still 10 s away. ``virtual_wall_clock()`` cannot be
    shared between portals (it must be called inside a trio run, and its offset is per run);
    the user must hand both portals a clock of their own (``WallClock`` above)."""
    remind_log.clear()
    _wall[0] = lambda: 0.0
    adapter = tf.adapters.MemoryAdapter()
    with engine_portal(adapter=adapter) as portal:
        portal.call(_register_all)
        iid = portal.call(lambda e: e.start("reminder", {"n": 0}))
        portal.advance(10)
    with engine_portal(adapter=adapter) as portal:
        portal.call(_register_all)
        portal.advance(40)
        seen = portal.call(lambda e: e.get_instance(iid))
        assert seen is not None and seen.status == "completed", (seen and seen.status, seen and seen.waiting)


def test_workflow_timeouts_of_instances_started_together_fire_late() -> None:
    """What a user relies on: ``portal.advance(seconds)`` "runs what falls due at its own time
    (to the microsecond)", and a workflow timeout counts from the instance's start. Six
    instances with a 60 s workflow timeout, started in one virtual instant, have all timed out
    once 60 s have passed.

    What happens instead: only the first ones. Each instance's ``created_at`` (its
    ``started_at``) is nudged one ulp (2.4e-7 s at Unix ~1.7e9) past the previous one made at the
    same clock reading, and the workflow timeout counts from it, so the n-th instance's timeout
    falls due n ulps late; from the 5th on that is past the portal's DUE_SLACK of 1e-6 s, and
    after ``advance(60)`` it is still ``running`` (it times out a microsecond or so later). A
    stateful test that advances to exactly a timeout sees an instance that should have ended
    take a signal instead. (Suspected cause: runtime/_ids.py:71 ``CreationTimes.stamp`` nudges
    by ``nextafter``; runtime/_decide.py:53 makes that the ``started_at`` the timeout counts
    from; runtime/testing/_portal.py:33 ``DUE_SLACK`` assumes a few tenths of a microsecond.)
    Fixed in the portal: its slack is a tenth of a millisecond (the start times stay nudged, as
    an instance must never be created after it started: tests/test_ids.py)."""
    clock = WallClock()
    _wall[0] = clock
    with engine_portal(clock=clock) as portal:
        portal.call(_register_all)
        timed = tf.workflow("timed").receive("go", signal="go").with_timeout(60).build()
        portal.call(lambda e: e.register(timed))
        ids = [portal.call(lambda e: e.start("timed", {"n": k})) for k in range(6)]
        portal.advance(60)
        seen = portal.call(lambda e: _get_all(e, ids))
        late = {iid: round(v.started_at - seen[ids[0]].started_at, 9)  # type: ignore[union-attr,operator]
                for iid, v in seen.items() if v is not None and v.status != "timed_out"}
        assert late == {}, f"still running 60 s after their start (started_at later by): {late}"
