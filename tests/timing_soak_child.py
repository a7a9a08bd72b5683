"""Child process for tests/test_review_of_timing_soak.py (not collected).

    python timing_soak_child.py DIR GEN MODE SEED

Two engines in one process, each on its own SQLite file in DIR: engine A (``a.db``, the
default ``max_running``) runs "runner", "sleepy", "family" (and its children "quick" and
"slow"); engine B (``b.db``, ``max_running=2``) runs "slot" and "slotparent" (and its child
"slotkid"), so that runs queue for a slot there.

MODE "run" (generations 0..K-1) starts the instances of waves 0..GEN (idempotent: a service
starting them again), cancels those whose plan says so, and runs until killed; "final" starts
every wave, waits until every instance has ended and prints a JSON summary of both files;
"peek" prints what both files hold (nothing registered, so nothing runs).

``TIMING_SOAK_DIE_AT=KIND`` makes the process SIGKILL itself at the first (``TIMING_SOAK_DIE_AFTER``:
N-th) moment of that kind
(it logs ``die GEN KIND`` first): ``cut`` (a job cut by a step or workflow timeout, in an
instance no cancel is planned for), ``retry`` (a ``workflow.step.retry`` event: the retry's
delay is about to be stored), ``undo-fail`` (a compensation failing for good, before that is
stored), ``hook-end`` (an ``on_complete``/``on_failed`` hook), ``hook-step`` (an
``on_step_complete`` hook, after the step's completion is stored), ``compensated`` (a
``workflow.step.compensated`` event).

Every line of DIR/log is one O_APPEND write (it survives the SIGKILL once written); the
wall-clock time (``time.time()``, the engines' clock) is the last field:
    call GEN IID EXEC STEP ATTEMPT                    a job began
    end GEN IID EXEC STEP ATTEMPT ok|fail|fatal      it returned / raised
    data GEN IID EXEC SEEN WANTED                     the shared data a step began with (JSON)
    cut GEN IID EXEC STEP ATTEMPT                     it was cancelled (a timeout, a cancel)
    undo GEN IID EXEC STEP ATTEMPT                    a compensation began
    undo-end GEN IID EXEC STEP ATTEMPT ok|fail        it returned / raised
    undo-cut GEN IID EXEC STEP ATTEMPT                it was cancelled (the compensation timeout)
    hook GEN NAME IID JSON                            a hook was called
    event GEN NAME IID JSON                           an event was published
    start-try GEN IID DUE                             engine.start() is about to be called (DUE: the
                                                      earliest its delayed start can be due, or -)
    start-ok GEN IID                                  it returned
    cancel-try GEN IID / cancel-yes GEN IID / cancel-no GEN IID
    open GEN                                          the engines are open, nothing registered yet
    die GEN KIND
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from typing import Any

import trio

import trioflow as tf

#: Set by the main block (the test imports this module for ``inputs()`` and the constants).
DIR, GEN, MODE, SEED = "", 0, "", 0
DIE_AT = os.environ.get("TIMING_SOAK_DIE_AT", "")
WAVES = 7
log_fd = -1
rng = random.Random()

#: Workflow timeouts (seconds), and the other durations the test checks against.
TIMEOUTS = {"sleepy": 2.0, "family": 2.5, "slot": 2.2, "slotparent": 1.5, "napper": 4.5}
NAPPER_NAPS = (1.5, 0.5)
FLAKY_TIMEOUT = 0.4
FLAKY_INTERVAL = 1.2      # parks (over PARK_AFTER)
DEFAULT_INTERVAL = 0.3    # default_retry's, in memory
ZRETRY_INTERVAL = 1.5
COMPENSATION_TIMEOUT = 0.8
SLOW_NAP = 5.0
SLEEPY_NAP = 6.0


def log(*parts: Any) -> None:
    os.write(log_fd, (" ".join(str(p) for p in parts) + f" {time.time():.4f}\n").encode())


#: ``TIMING_SOAK_DIE_AFTER=N``: at the N-th moment of that kind, not the first.
DIE_AFTER = int(os.environ.get("TIMING_SOAK_DIE_AFTER", "1"))
_seen = [0]


def die(kind: str) -> None:
    if DIE_AT == kind:
        _seen[0] += 1
        if _seen[0] >= DIE_AFTER:
            log("die", GEN, kind)
            os.kill(os.getpid(), signal.SIGKILL)


# -- inputs: a pure function of the seed -----------------------------------------------------------

FLAKY_PLANS = [["ok"], ["fail", "ok"], ["hang", "ok"], ["hang", "fail", "ok"], ["hang"] * 4,
               ["fail", "fatal"], ["hang", "hang", "hang", "ok"], ["fatal"]]


def _start_plan(r: random.Random) -> list[Any] | None:
    return r.choice([None, None, None, ["delay", 0.6], ["delay", 1.8], ["at", -100.0], ["at", 1.3]])


def _cancel_plan(r: random.Random) -> dict[str, Any] | None:
    if r.random() >= 0.3:
        return None
    return {"at": r.uniform(0.0, 3.0), "repeat": r.random() < 0.5}


def inputs(seed: int) -> dict[str, dict[str, Any]]:
    """iid -> {"workflow", "engine", "wave", "start", "cancel", "input"}."""
    r = random.Random(seed)
    out: dict[str, dict[str, Any]] = {}
    for wave in range(WAVES):
        for i in range(3):
            out[f"w{wave}-run{i}"] = {
                "workflow": "runner", "engine": "a", "wave": wave, "start": _start_plan(r), "cancel": _cancel_plan(r),
                "input": {"flaky": r.choice(FLAKY_PLANS), "wobbly": r.random() < 0.5, "doom": r.random() < 0.5}}
        for i in range(3):
            out[f"w{wave}-zzz{i}"] = {
                "workflow": "sleepy", "engine": "a", "wave": wave, "start": _start_plan(r), "cancel": _cancel_plan(r),
                "input": {"how": r.choice(["timer", "receive", "retry", "hang"])}}
        out[f"w{wave}-nap"] = {"workflow": "napper", "engine": "a", "wave": wave, "start": _start_plan(r),
                               "cancel": _cancel_plan(r), "input": {"nb": r.choice([0.3, 1.6, 3.5])}}
        out[f"w{wave}-fam"] = {"workflow": "family", "engine": "a", "wave": wave, "start": None,
                               "cancel": _cancel_plan(r), "input": {}}
        for i in range(3):
            out[f"w{wave}-slot{i}"] = {
                "workflow": "slot", "engine": "b", "wave": wave, "start": _start_plan(r), "cancel": _cancel_plan(r),
                "input": {"nap": r.uniform(0.3, 0.6)}}
        out[f"w{wave}-sp"] = {"workflow": "slotparent", "engine": "b", "wave": wave, "start": None,
                              "cancel": _cancel_plan(r), "input": {}}
    return out


INPUTS: dict[str, dict[str, Any]] = {}


# -- steps --------------------------------------------------------------------------------------

class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


class SourError(Exception):
    pass


def _planned_cancel(iid: str) -> bool:
    top = iid.split("/")[0]
    return top in INPUTS and INPUTS[top]["cancel"] is not None


async def _nap(ctx: tf.WorkflowContext, nap: Any, where: tuple[str, str, str, int], hang: bool = False) -> None:
    """A job's work: ``nap(ctx)`` seconds (a short random time if none; 30 s more if it hangs).
    A cut (a cancel, a timeout) is logged, and kills the process unless a cancel was planned."""
    try:
        if hang:
            await trio.sleep(30)
        await trio.sleep(nap(ctx) if nap is not None else random.uniform(0.0, 0.08))
    except trio.Cancelled:
        log("cut", GEN, *where)
        if not _planned_cancel(where[0]):
            die("cut")
        raise


def job(step: str, behave: Any = None, nap: Any = None) -> Any:
    """A job that logs; ``behave(ctx, attempt)`` says "ok", "fail", "fatal" or "hang"."""
    async def run(ctx: tf.WorkflowContext) -> str:
        info = tf.current_step()
        iid, exe, attempt = info.instance_id, info.execution_id, info.attempt
        log("call", GEN, iid, exe, step, attempt)
        how = behave(ctx, attempt) if behave is not None else "ok"
        await _nap(ctx, nap, (iid, exe, step, attempt), hang=how == "hang")
        if how in ("fail", "fatal"):
            log("end", GEN, iid, exe, step, attempt, how)
            raise (Flaky if how == "fail" else Fatal)(f"{step} attempt {attempt}")
        log("end", GEN, iid, exe, step, attempt, "ok")
        return f"{iid}|{exe}|{attempt}|{GEN}"
    return run


def undo(kind: str = "ok") -> Any:
    async def run(ctx: tf.WorkflowContext, result: Any) -> None:
        info = tf.current_step()
        assert info.compensating
        iid, exe, step, attempt = info.instance_id, info.execution_id, info.step_name, info.attempt
        log("undo", GEN, iid, exe, step, attempt)
        try:
            await trio.sleep(30 if kind == "glacial" else random.uniform(0.0, 0.04))
        except trio.Cancelled:
            log("undo-cut", GEN, iid, exe, step, attempt)
            raise
        if kind == "sour" or (kind == "sticky" and attempt == 1):
            log("undo-end", GEN, iid, exe, step, attempt, "fail")
            if kind == "sour" and attempt == 2:
                die("undo-fail")  # its last attempt: the failure is not stored yet
            raise SourError(f"cannot undo {exe} (attempt {attempt})")
        log("undo-end", GEN, iid, exe, step, attempt, "ok")
    return run


# -- hooks and events ---------------------------------------------------------------------------

def _iid(ctx: tf.WorkflowContext) -> str:
    return ctx.metadata.id


def on_start(ctx: tf.WorkflowContext) -> None:
    log("hook", GEN, "on_start", _iid(ctx), "{}")


def on_step_complete(name: str, output: Any, ctx: tf.WorkflowContext) -> None:
    log("hook", GEN, "on_step_complete", _iid(ctx), json.dumps({"step": name, "output": output}, separators=(",", ":")))
    die("hook-step")


def on_step_failed(name: str, error: BaseException, ctx: tf.WorkflowContext) -> None:
    log("hook", GEN, "on_step_failed", _iid(ctx), json.dumps({"step": name, "error": type(error).__name__},
                                                             separators=(",", ":")))


def on_compensate(name: str, ctx: tf.WorkflowContext) -> None:
    log("hook", GEN, "on_compensate", _iid(ctx), json.dumps({"step": name}, separators=(",", ":")))


def _end_hook(name: str) -> Any:
    def hook(result: tf.WorkflowResult) -> None:
        log("hook", GEN, name, result.instance_id, json.dumps(
            {"status": result.status, "success": result.success, "compensated": list(result.compensated_steps),
             "errors": sorted(result.compensation_errors_by_execution)}, separators=(",", ":")))
        die("hook-end")
    return hook


HOOKS = dict(on_start=on_start, on_step_complete=on_step_complete, on_step_failed=on_step_failed,
             on_compensate=on_compensate, on_complete=_end_hook("on_complete"), on_failed=_end_hook("on_failed"))


def on_event(event: dict[str, Any]) -> None:
    name = event["event"]
    if name == "workflow.progress":
        return
    keep = {k: event[k] for k in ("step_name", "attempt", "lane", "output", "error_name", "parent_id") if k in event}
    log("event", GEN, name, event["instance_id"], json.dumps(keep, separators=(",", ":"), default=str))
    if name == "workflow.step.retry":
        die("retry")
    elif name == "workflow.step.compensated":
        die("compensated")


# -- workflows ----------------------------------------------------------------------------------

def _flaky(ctx: tf.WorkflowContext, attempt: int) -> str:
    plan = ctx.input["flaky"]
    return plan[min(attempt, len(plan)) - 1]


def definitions() -> tuple[list[tf.WorkflowDefinition], list[tf.WorkflowDefinition]]:
    runner = (tf.workflow("runner")
              .default_retry(tf.Retry(max_attempts=2, interval=DEFAULT_INTERVAL, backoff_rate=1.0))
              .step("r-prep", job("r-prep"), undo())
              .step("r-wobbly", job("r-wobbly", lambda ctx, a: "fail" if ctx.input["wobbly"] and a == 1 else "ok"),
                    undo())
              .step("r-sour", job("r-sour"), undo("sour"), retry=tf.Retry(max_attempts=2, interval=0.2))
              .step("r-sticky", job("r-sticky"), undo("sticky"), retry=tf.Retry(max_attempts=2, interval=0.2))
              .step("r-glacial", job("r-glacial"), undo("glacial"), retry=tf.Retry(max_attempts=1))
              .step("r-flaky", job("r-flaky", _flaky), undo(), timeout=FLAKY_TIMEOUT,
                    retry=tf.Retry(max_attempts=4, interval=FLAKY_INTERVAL, backoff_rate=1.0,
                                   retry_on=[tf.StepTimeoutError, Flaky]),
                    catch=[tf.Catch(errors=[tf.StepTimeoutError], next="r-late"),
                           tf.Catch(errors=[Fatal], next="r-fatal")])
              .choice("r-doom", choices=[tf.when(lambda ctx: ctx.input["doom"], next="r-boom")], default="r-done")
              .succeed("r-done")
              .step("r-late", job("r-late"), undo(), next="r-doom")
              .step("r-fatal", job("r-fatal"), next="r-doom")
              .fail("r-boom", error="Doomed", cause="the run is doomed")
              .with_compensation_timeout(COMPENSATION_TIMEOUT)
              .with_hooks(**HOOKS)
              .build())
    sleepy = (tf.workflow("sleepy").with_timeout(TIMEOUTS["sleepy"])
              .step("z-a", job("z-a"), undo())
              .choice("z-how", choices=[tf.when(lambda ctx: ctx.input["how"] == "timer", next="z-nap"),
                                        tf.when(lambda ctx: ctx.input["how"] == "receive", next="z-ear"),
                                        tf.when(lambda ctx: ctx.input["how"] == "retry", next="z-retry")],
                      default="z-hang")
              .wait("z-nap", seconds=SLEEPY_NAP, next="z-after")
              .receive("z-ear", signal="never", next="z-after")
              .step("z-retry", job("z-retry", lambda ctx, a: "fail"), undo(), next="z-after",
                    retry=tf.Retry(max_attempts=5, interval=ZRETRY_INTERVAL, backoff_rate=1.0))
              .step("z-hang", job("z-hang", lambda ctx, a: "hang"), undo(), next="z-after")
              .step("z-after", job("z-after"), undo())
              .with_hooks(**HOOKS)
              .build())
    quick = tf.workflow("quick").step("q-a", job("q-a"), undo()).with_hooks(**HOOKS).build()
    slow = (tf.workflow("slow")
            .step("w-a", job("w-a"), undo())
            .wait("w-nap", seconds=SLOW_NAP)
            .step("w-b", job("w-b"), undo())
            .with_hooks(**HOOKS)
            .build())
    family = (tf.workflow("family").with_timeout(TIMEOUTS["family"])
              .step("f-a", job("f-a"), undo())
              .parallel("f-fan", branches=[tf.branch("fq").child("f-quick", workflow="quick").build(),
                                           tf.branch("fs").child("f-slow", workflow="slow").build()],
                        on_error="wait-all")
              .step("f-after", job("f-after"), undo())
              .with_hooks(**HOOKS)
              .build())
    slot = (tf.workflow("slot").with_timeout(TIMEOUTS["slot"])
            .step("sl-a", job("sl-a", nap=lambda ctx: ctx.input["nap"]), undo())
            .step("sl-b", job("sl-b", nap=lambda ctx: ctx.input["nap"]), undo())
            .with_hooks(**HOOKS)
            .build())
    slotkid = (tf.workflow("slotkid")
               .step("sk-a", job("sk-a", nap=lambda ctx: 3.0), undo())
               .with_hooks(**HOOKS)
               .build())
    slotparent = (tf.workflow("slotparent").with_timeout(TIMEOUTS["slotparent"])
                  .step("sp-a", job("sp-a"), undo())
                  .child("sp-kid", workflow="slotkid")
                  .step("sp-after", job("sp-after"), undo())
                  .with_hooks(**HOOKS)
                  .build())
    # No hooks: a timer that fires in a run woken from storage is then stored with the step after
    # it (or beside it, by the waker, if that step runs over a second), with the shared data as
    # the timer left it (docs/waiting.md).
    napper = (tf.workflow("napper").with_timeout(TIMEOUTS["napper"])
              .step("n-a", data_job("n-a", None, 1), undo())
              .wait("n-nap", seconds=NAPPER_NAPS[0])
              .step("n-b", data_job("n-b", 1, 2, nap=lambda ctx: ctx.input["nb"]), undo())
              .wait("n-nap2", seconds=NAPPER_NAPS[1])
              .step("n-c", data_job("n-c", 2, 3), undo())
              .build())
    return [runner, sleepy, quick, slow, family, napper], [slot, slotkid, slotparent]


def data_job(step: str, sees: int | None, sets: int, nap: Any = None) -> Any:
    """A job that logs the shared data it starts with (``k``), sets it at once, then naps."""
    async def run(ctx: tf.WorkflowContext) -> str:
        info = tf.current_step()
        iid, exe, attempt = info.instance_id, info.execution_id, info.attempt
        log("call", GEN, iid, exe, step, attempt)
        log("data", GEN, iid, exe, json.dumps(ctx.get("k")), json.dumps(sees))
        ctx.set("k", sets)
        await _nap(ctx, nap, (iid, exe, step, attempt))
        log("end", GEN, iid, exe, step, attempt, "ok")
        return f"{iid}|{exe}|{attempt}|{GEN}"
    return run


# -- the caller ---------------------------------------------------------------------------------

def logged(kinds: tuple[str, ...]) -> list[list[str]]:
    path = os.path.join(DIR, "log")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f.read().split("\n")[:-1] if line.split()[0] in kinds]


async def start_one(engine: tf.Engine, iid: str) -> None:
    spec = INPUTS[iid]
    plan = spec["start"]
    kwargs: dict[str, Any] = {}
    due = "-"
    if plan is not None:
        now = time.time()
        if plan[0] == "delay":
            kwargs["delay"] = plan[1]
        else:
            kwargs["start_at"] = now + plan[1]
        due = f"{now + plan[1]:.4f}"  # (the engine reads its clock after this: due is no earlier)
    log("start-try", GEN, iid, due)
    await engine.start(spec["workflow"], spec["input"], instance_id=iid, **kwargs)
    log("start-ok", GEN, iid)


async def canceller(engine: tf.Engine, iid: str, answered: bool, cut: bool, again_done: bool) -> None:
    plan = INPUTS[iid]["cancel"]
    assert plan is not None
    if answered:
        if not plan["repeat"] or again_done:
            return
        await trio.sleep(rng.uniform(0.0, 0.5))  # repeated after a restart
    else:
        await trio.sleep(rng.uniform(0.0, 0.1) if cut else plan["at"] * rng.uniform(0.5, 1.5))
    log("cancel-try", GEN, iid)
    said = await engine.cancel(iid)
    log("cancel-yes" if said else "cancel-no", GEN, iid)
    if plan["repeat"] and not answered:
        await trio.sleep(rng.uniform(0.0, 0.6))
        log("cancel-try", GEN, iid)
        said = await engine.cancel(iid)
        log("cancel-yes" if said else "cancel-no", GEN, iid)


def view(inst: tf.WorkflowInstance) -> dict[str, Any]:
    return {
        "workflow": inst.workflow_name, "status": inst.status, "input": inst.input, "error_name": inst.error_name,
        "error": inst.error, "failed_step": inst.failed_step, "parent_id": inst.parent_id,
        "children": list(inst.children), "compensated": list(inst.compensated_steps),
        "compensation_errors": dict(inst.compensation_errors),
        "compensation_errors_by_execution": dict(inst.compensation_errors_by_execution),
        "waiting": inst.waiting, "created_at": inst.created_at, "started_at": inst.started_at,
        "completed_at": inst.completed_at,
        "history": [{"id": r.id, "lane": r.lane, "step": r.step_name, "execution": r.execution, "seq": r.seq,
                     "status": r.status, "output": r.output, "attempts": r.attempts, "started_at": r.started_at,
                     "completed_at": r.completed_at, "error_name": r.error_name, "cause": r.cause,
                     "compensation_error": r.compensation_error} for r in inst.history],
        "results": {name: {"id": r.id, "status": r.status, "seq": r.seq, "attempts": r.attempts}
                    for name, r in inst.step_results.items()},
    }


async def everything(engine: tf.Engine, which: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    after: str | None = None
    while True:
        page = await engine.get_instances(limit=500, after=after)
        for inst in page:
            out[inst.id] = {**view(inst), "engine": which}
        if len(page) < 500:
            return out
        after = page[-1].id


async def main() -> None:
    a_db, b_db = os.path.join(DIR, "a.db"), os.path.join(DIR, "b.db")
    if MODE == "peek":
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(a_db)) as a, \
                tf.open_engine(adapter=tf.adapters.SQLiteAdapter(b_db)) as b:
            print(json.dumps({**await everything(a, "a"), **await everything(b, "b")}), flush=True)
        return
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(a_db)) as a, \
            tf.open_engine(adapter=tf.adapters.SQLiteAdapter(b_db), max_running=2) as b:
        log("open", GEN)  # (before anything is registered: nothing is resumed yet)
        engines = {"a": a, "b": b}
        on_a, on_b = definitions()
        for wf in on_a:
            a.register(wf)
        for wf in on_b:
            b.register(wf)
        a.events.on("workflow.*", on_event)
        b.events.on("workflow.*", on_event)
        waves = WAVES if MODE == "final" else GEN + 1
        mine = [iid for iid, spec in INPUTS.items() if spec["wave"] < waves]
        async with trio.open_nursery() as nursery:
            for iid in mine:
                nursery.start_soon(start_one, engines[INPUTS[iid]["engine"]], iid)
        print("started", flush=True)
        answered = {p[2] for p in logged(("cancel-yes", "cancel-no")) if int(p[1]) < GEN}
        tried = {p[2] for p in logged(("cancel-try",)) if int(p[1]) < GEN}
        again = {p[2] for p in logged(("cancel-again",))}
        async with trio.open_nursery() as nursery:
            for iid in mine:
                if INPUTS[iid]["cancel"] is not None:
                    if iid in answered and INPUTS[iid]["cancel"]["repeat"] and iid not in again:
                        log("cancel-again", GEN, iid)
                    nursery.start_soon(canceller, engines[INPUTS[iid]["engine"]], iid, iid in answered,
                                       iid in tried - answered, iid in again)
            if MODE == "final":
                with trio.fail_after(60):
                    for iid in mine:
                        await engines[INPUTS[iid]["engine"]].wait(iid)
                    for which, engine in engines.items():
                        for other in list(await everything(engine, which)):
                            await engine.wait(other)
        if MODE != "final":
            await trio.sleep_forever()
        print(json.dumps({**await everything(a, "a"), **await everything(b, "b")}), flush=True)


if __name__ == "__main__":
    DIR, GEN, MODE, SEED = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    log_fd = os.open(os.path.join(DIR, "log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rng = random.Random(SEED * 1000 + GEN)
    INPUTS = inputs(SEED)
    trio.run(main)
