"""Reviewer soakcan: a stateful soak of a subscription service on a SQLite file.

Each subscriber is a loop that bills (a compensated step recording to an in-memory ledger keyed
by instance id, start and ``tf.current_step().execution_id``, refusing duplicates), optionally
starts an invoice child per renewal (a durable 2 h wait, then a job that fails on odd months,
caught), waits a month for a ``cancel-subscription`` signal (receive with timeout) and continues
as new with a counter. Rules: starts (ids reused after purge), time from an hour to 90 days,
signals, cancels, restarts with downtime, compatible releases (``replace=True``: other bill job,
``with_data``, receive and step timeouts) and an incompatible one (the receive renamed), purges.
After each rule it checks, against a plain model: no execution billed or refunded twice; an
acknowledged signal completes its instance with the first payload acknowledged (at once in the
receive, at the child's end in the child step); ``runs`` never decreases and equals the model's
renewals; each run billed once, by the release current as it began, with that release's
``with_data``; every stored instance readable; finished statuses allowed by the README; each
invoice child's run prefix at most its parent's ``runs`` and its input that run's; the current
run's children stored; per instance at most 6 records and a row under 3 kB on the SQLite file,
and no orphan signals or records.

Run at 60 to 300 examples of 30 steps over about 1,500 examples (seeds 4 to 44, also with
``max_running=1``), nothing failed except the model's own mistakes; kept here at a CI size as
a guard (see REPORT.md).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import trioflow as tf
from trioflow.testing import engine_portal

HOUR = 3600.0
DAY = 24 * HOUR
MONTH = 30 * DAY
CANCEL = "cancel-subscription"
FINISHED = {"completed", "failed", "cancelled", "timed_out", "compensated"}

# What the jobs did outside trioflow, reset per example.
ledger: dict[tuple[str, int, str], dict[str, Any]] = {}
problems: list[str] = []


def _key(ctx: tf.WorkflowContext) -> tuple[str, int, str]:
    return (ctx.metadata.id, ctx.input["gen"], tf.current_step().execution_id)


def _record(ctx: tf.WorkflowContext, release: str) -> dict[str, Any]:
    key = _key(ctx)
    if key in ledger:
        problems.append(f"billed twice: {key}")
        raise ValueError(f"duplicate bill {key}")
    ledger[key] = {"refunded": 0, "release": release, "n": ctx.input["n"]}
    return {"billed": ctx.input["n"], "release": release}


async def bill(ctx: tf.WorkflowContext) -> dict[str, Any]:
    return _record(ctx, "v1")


async def bill_v2(ctx: tf.WorkflowContext) -> dict[str, Any]:
    out = _record(ctx, "v2")
    out["plan"] = ctx.get("plan")
    return out


def bill_v3(ctx: tf.WorkflowContext) -> dict[str, Any]:  # a plain def (called inline in tests)
    return _record(ctx, "v3")


async def refund(ctx: tf.WorkflowContext, billed: Any) -> None:
    key = _key(ctx)
    if key not in ledger:
        problems.append(f"refund of a bill never made: {key}")
        return
    ledger[key]["refunded"] += 1
    if ledger[key]["refunded"] > 1:
        problems.append(f"refunded twice: {key}")


async def issue(ctx: tf.WorkflowContext) -> dict[str, Any]:
    if ctx.input["fail"]:
        raise RuntimeError("invoice service down")
    return {"invoice": ctx.input["n"]}


CHILD = 2 * HOUR
INVOICE = tf.workflow("invoice").wait("processing", seconds=CHILD).step("issue", issue).build()


def make(name: str, release: str, kid: bool) -> tf.WorkflowDefinition:
    job = {"v1": "bill", "v2": "bill_v2", "v3": "bill_v3", "bad": "bill"}[release]
    wait = "wait" if release != "bad" else "wait-for-cancel"  # the incompatible one renames it
    timeout = {"v1": MONTH, "v2": 31 * DAY, "v3": MONTH, "bad": MONTH}[release]
    b = tf.workflow(name).step("bill", job, refund, timeout=60.0 if release == "v2" else None)
    if kid:
        b = b.child("invoice", workflow="invoice",
                    input=lambda ctx: {"n": ctx.input["n"], "fail": ctx.input["n"] % 2 == 1},
                    catch=[tf.Catch(errors=[tf.ALL], next=wait)])
    b = (b.receive(wait, signal=CANCEL, timeout=timeout,
                   catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="renew")])
         .succeed("ended")
         .continue_as_new("renew", input=lambda ctx: {"gen": ctx.input["gen"], "n": ctx.input["n"] + 1}))
    b = b.with_data({"plan": {"v1": "basic", "v2": "pro", "v3": "basic", "bad": "basic"}[release]})
    return b.build()


TIMEOUT = {"v1": MONTH, "v2": 31 * DAY, "v3": MONTH, "bad": MONTH}
WAITNAME = {"v1": "wait", "v2": "wait", "v3": "wait", "bad": "wait-for-cancel"}
JOBREL = {"v1": "v1", "v2": "v2", "v3": "v3", "bad": "v1"}
PLAN = {"v1": "basic", "v2": "pro", "v3": "basic", "bad": "basic"}


OPTIONS: dict[str, Any] = {}  # (``max_running=1`` held too; ``retain_finished`` see REPORT.md)


class Releases:
    current = "v1"


async def setup(engine: tf.Engine) -> None:
    engine.jobs.register("bill", bill)
    engine.jobs.register("bill_v2", bill_v2)
    engine.jobs.register("bill_v3", bill_v3)
    engine.register(INVOICE)
    for kid, name in ((False, "sub"), (True, "subkid")):
        engine.register(make(name, Releases.current, kid))


class Subscriptions(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        ledger.clear()
        problems.clear()
        Releases.current = "v1"
        self.directory = tempfile.mkdtemp(prefix="soakcan-")
        self.adapter = tf.adapters.SQLiteAdapter(Path(self.directory) / "subs.db")
        self._cm = engine_portal(setup=setup, adapter=self.adapter, **OPTIONS)
        self.portal = self._cm.__enter__()
        self.gen = 0
        self.payload = 0
        # iid -> model of its current incarnation
        self.subs: dict[str, dict[str, Any]] = {}
        self.max_records = 0
        self.log: list[str] = []

    def teardown(self) -> None:
        try:
            self._cm.__exit__(None, None, None)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _view(self, iid: str) -> tf.WorkflowInstance | None:
        return self.portal.call(lambda e: e.get_instance(iid))

    # ---- rules -----------------------------------------------------------------------------

    @rule(kid=st.booleans(), reuse=st.sampled_from([None, None, "s0", "s1", "s2"]))
    def start(self, kid: bool, reuse: str | None) -> None:
        self.gen += 1
        wf = "subkid" if kid else "sub"
        data = {"gen": self.gen, "n": 0}
        kwargs: dict[str, Any] = {} if reuse is None else {"instance_id": reuse}
        self.log.append(f"start {wf} {reuse} gen={self.gen}")
        known = self.subs.get(reuse) if reuse is not None else None
        if known is not None:
            seen = self._view(reuse)  # type: ignore[arg-type]
            try:
                got = self.portal.call(lambda e: e.start(wf, data, **kwargs))
            except tf.InstanceIdConflictError:
                return
            # (documented: a start with the id of an instance that continued gets it if the
            # workflow is the same, its first input not being kept)
            assert got == reuse and seen is not None and seen.runs > 0 and known["wf"] == wf, (seen, known, wf)
            return
        iid = self.portal.call(lambda e: e.start(wf, data, **kwargs))
        if reuse is not None:
            assert iid == reuse
        self.subs[iid] = {"wf": wf, "gen": self.gen, "runs": 0, "acked": [], "ended": None,
                          "due": self.portal.now + TIMEOUT[Releases.current], "step": WAITNAME[Releases.current],
                          "phase": "child" if kid else "wait", "until": self.portal.now + CHILD, "kid": kid,
                          "releases": [Releases.current], "model_runs": 0, "mismatch_ok": False}

    @rule(hours=st.sampled_from([1, 5, 23, 24 * 7, 24 * 29, 720, 721, 24 * 31, 24 * 90]))
    def advance(self, hours: int) -> None:
        self.log.append(f"advance {hours}h")
        self.portal.advance(hours * HOUR)
        self._renewals(self.portal.now, at=None)

    def _renewals(self, now: float, at: float | None) -> None:
        """What the model says renewed by ``now`` (``at``: every timer due fires then, a restart)."""
        for sub in self.subs.values():
            if sub["ended"] is not None:
                continue
            cur = Releases.current
            while True:
                if sub["phase"] == "child":
                    if sub["until"] > now + 1e-3:
                        break
                    t = sub["until"] if at is None else at
                    if sub["acked"]:
                        sub["ended"] = "completed"
                        break
                    sub["phase"], sub["step"], sub["due"] = "wait", WAITNAME[cur], t + TIMEOUT[cur]
                    continue
                if sub["due"] > now + 1e-3:
                    break
                if sub["step"] != WAITNAME[cur]:
                    sub["mismatch_ok"] = True  # it fails as it wakes
                    break
                t = sub["due"] if at is None else at
                sub["model_runs"] += 1
                sub["releases"].append(cur)
                if sub["kid"]:
                    sub["phase"], sub["until"] = "child", t + CHILD
                else:
                    sub["step"], sub["due"] = WAITNAME[cur], t + TIMEOUT[cur]

    @precondition(lambda self: self.subs)
    @rule(data=st.data())
    def signal(self, data: st.DataObject) -> None:
        iid = data.draw(st.sampled_from(sorted(self.subs)))
        self.payload += 1
        payload = {"p": self.payload}
        before = self._view(iid)
        self.log.append(f"signal {iid} {payload}")
        try:
            self.portal.call(lambda e: e.signal(iid, CANCEL, payload))
        except (tf.InstanceNotLiveError, tf.UnknownInstanceError):
            assert before is None or before.status in FINISHED, before
            return
        assert before is not None and before.status not in FINISHED, ("signal acknowledged by a finished instance", before)
        self.subs[iid]["acked"].append(payload)
        after = self._view(iid)
        assert after is not None
        if self.subs[iid]["phase"] == "child" and self.subs[iid]["ended"] is None:
            assert after.status == "running" and "child" in (after.waiting or {}), after
        if before.status == "running" and (before.waiting or {}).get("signal") == CANCEL:
            first = self.subs[iid]["acked"][0]
            self.subs[iid]["ended"] = after.status
            if after.error_name == "DefinitionMismatchError":
                assert after.status == "failed" and self.subs[iid]["step"] != WAITNAME[Releases.current], after
            else:
                assert (after.status, after.output) == ("completed", first), (before, after)

    @precondition(lambda self: self.subs)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        iid = data.draw(st.sampled_from(sorted(self.subs)))
        before = self._view(iid)
        self.log.append(f"cancel {iid}")
        got = self.portal.call(lambda e: e.cancel(iid))
        live = before is not None and before.status not in FINISHED
        assert got is live, (got, before)
        if live:
            after = self._view(iid)
            assert after is not None, iid
            self.subs[iid]["ended"] = after.status
            # (one parked under a release it no longer fits fails as it is taken up, as documented)
            assert after.status == "cancelled" or (after.status, after.error_name) == (
                "failed", "DefinitionMismatchError"), after
            sub = self.subs[iid]
            bills = [k for k in ledger if k[:2] == (iid, sub["gen"])]
            last = max(bills, key=lambda k: ledger[k]["n"])
            assert ledger[last]["refunded"] == 1, (last, ledger[last])

    @rule(hours=st.sampled_from([0, 1, 24, 24 * 40]))
    def restart(self, hours: int) -> None:
        self.log.append(f"restart {hours}h")
        before = self.portal.now
        self.portal.restart(downtime=hours * HOUR)
        assert self.portal.now == before + hours * HOUR, (before, self.portal.now)
        self._renewals(self.portal.now, at=self.portal.now)

    @rule(release=st.sampled_from(["v1", "v2", "v3", "v2", "v1", "bad"]))
    def deploy(self, release: str) -> None:
        self.log.append(f"deploy {release}")
        Releases.current = release

        def reg(e: tf.Engine) -> None:
            e.register(make("sub", release, False), replace=True)
            e.register(make("subkid", release, True), replace=True)

        self.portal.call(reg)

    @rule()
    def purge(self) -> None:
        self.log.append("purge")
        self.portal.call(lambda e: e.purge(older_than=0))
        for iid in list(self.subs):
            if self._view(iid) is None:
                del self.subs[iid]

    # ---- invariants ------------------------------------------------------------------------

    @invariant()
    def holds(self) -> None:
        assert not problems, problems

        async def read(e: tf.Engine) -> tuple[Any, ...]:
            listed = await e.get_instances()
            views = {}
            records = {}
            for i in listed:
                views[i.id] = await e.get_instance(i.id)
                row = await self.adapter.load(i.id)
                records[i.id] = None if row is None else len(row.records)
            mine = {iid: await e.get_instance(iid) for iid in self.subs}
            return listed, views, records, mine

        listed, views, records, mine = self.portal.call(read)
        for iid, sub in list(self.subs.items()):
            v = mine[iid]
            if v is None and "retain_finished" in OPTIONS and (sub["ended"] or sub.get("seen_finished")):
                del self.subs[iid]
                continue
            assert v is not None, f"{iid} vanished"
            sub["seen_finished"] = v.status in FINISHED
            assert v.input["gen"] == sub["gen"], (iid, v.input, sub)
            assert v.runs >= sub["runs"], f"{iid}: runs went from {sub['runs']} to {v.runs}"
            sub["runs"] = v.runs
            if v.status == "failed" and v.error_name == "DefinitionMismatchError" and sub["ended"] is None:
                assert sub["mismatch_ok"] or sub["step"] != WAITNAME[Releases.current], (iid, sub)
                sub["ended"] = "failed"
            if sub["ended"] == "completed":
                assert v.status == "completed", (iid, v.status, sub)
            if sub["ended"] is None and not sub["mismatch_ok"]:
                assert v.status == "running", (iid, v.status, v.error, sub)
            if sub["ended"] is None and v.status == "running":
                assert v.runs == sub["model_runs"], (iid, v.runs, sub, v.waiting)
                assert v.data.get("plan") == PLAN[sub["releases"][-1]], (iid, v.data, sub["releases"])
                mine_bills = sorted((ledger[k]["n"], ledger[k]["release"]) for k in ledger if k[:2] == (iid, sub["gen"]))
                assert [r for _, r in mine_bills] == [JOBREL[r] for r in sub["releases"]], (iid, mine_bills, sub["releases"])
            assert v.input["n"] == v.runs, (iid, v.input, v.runs)
            bills = [k for k in ledger if k[:2] == (iid, sub["gen"])]
            assert len(bills) == v.runs + 1, (iid, v.status, v.runs, sorted(bills))
            if v.status in FINISHED:
                assert v.status in {"completed", "cancelled", "failed", "timed_out"}, v.status
                if v.status == "completed":
                    assert sub["acked"] and v.output == sub["acked"][0], (v.output, sub["acked"])
            else:
                assert v.status == "running", v.status
        for cid, cv in views.items():
            assert cv is not None
            if cv.workflow_name != "invoice":
                continue
            assert cv.parent_id is not None, cv
            parent = views.get(cv.parent_id)
            assert parent is not None, f"child {cid} kept without its parent"
            rest = cid[len(cv.parent_id) + 1:]
            run = int(rest[1:].split("/")[0]) if rest.startswith("#") else 0
            assert run <= parent.runs, (cid, parent.runs)
            assert cv.input["n"] == run, (cid, cv.input)
        for pid, pv in views.items():
            if pv is None or pv.status in FINISHED:
                continue
            for cid in pv.children:
                rest = cid[len(pid) + 1:]
                run = int(rest[1:].split("/")[0]) if rest.startswith("#") else 0
                if run == pv.runs:
                    assert cid in views, (pid, pv.runs, pv.children, "current run's child not stored")
        conn = sqlite3.connect(f"file:{Path(self.directory) / 'subs.db'}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT instance_id, status, length(header), length(start), "
                                "(SELECT count(*) FROM trioflow_records r WHERE r.instance_id = i.instance_id) "
                                "FROM trioflow_instances i").fetchall()
            orphans = conn.execute("SELECT count(*) FROM trioflow_signals s WHERE NOT EXISTS "
                                   "(SELECT 1 FROM trioflow_instances i WHERE i.instance_id = s.instance_id)").fetchone()[0]
            orphan_records = conn.execute("SELECT count(*) FROM trioflow_records s WHERE NOT EXISTS "
                                   "(SELECT 1 FROM trioflow_instances i WHERE i.instance_id = s.instance_id)").fetchone()[0]
        finally:
            conn.close()
        assert orphans == 0 and orphan_records == 0, (orphans, orphan_records)
        assert {r[0] for r in rows} == set(views), (sorted(r[0] for r in rows), sorted(views))
        for iid, status, header, start, nrec in rows:
            size = (header or 0) + (start or 0)
            assert size < 3000 and nrec <= 6, (iid, status, header, start, nrec, views[iid] and views[iid].runs)
        for iid, n in records.items():
            if n is not None:
                self.max_records = max(self.max_records, n)
                assert n <= 6, f"{iid} keeps {n} records"


Subscriptions.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
TestSubscriptionsSoak = Subscriptions.TestCase
