"""Child process for tests/test_review_of_mixed_soak.py (not collected).

    python mixed_soak_child.py DB LOG GEN MODE SEED N

MODE "run" (generation 0) starts N "order" instances and sends their signals until killed;
"resume" sends what is left until killed; "final" sends what is left, waits for every instance
and prints a JSON summary; "peek" prints what storage holds (nothing registered, so nothing runs).

Every line of LOG is one fsynced O_APPEND write (so a line survives the SIGKILL once written):
    call GEN IID EXEC STEP ATTEMPT          a step's callable began (tf.current_step())
    end GEN IID EXEC STEP ATTEMPT ok|fail   it returned / raised
    undo GEN IID EXEC STEP                  a compensation began
    sig-send GEN IID NAME TOKEN             engine.signal() is about to be called
    sig-ack GEN IID NAME TOKEN              engine.signal() returned
    sig-found GEN IID NAME TOKEN            a send cut by the kill is found stored (at start-up)
    sig-notlive GEN IID NAME TOKEN          InstanceNotLiveError
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import sys
import time
from typing import Any

import trio

import trioflow as tf

db, log_path, GEN, mode, SEED, N = (sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]),
                                     int(sys.argv[6]))
log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
rng = random.Random(SEED * 1000 + GEN)
#: A few slots for many instances and their children: runs queue for them.
MAX_RUNNING = int(os.environ.get("MIXED_SOAK_MAX_RUNNING", "1000"))
#: This process SIGKILLs itself as its first cancel() returns.
DIE_AFTER_CANCEL = os.environ.get("MIXED_SOAK_DIE_AFTER_CANCEL") == "1"


def log(*parts: Any) -> None:
    """One line, the wall-clock time (the engine's clock) last."""
    os.write(log_fd, (" ".join(str(p) for p in parts) + f" {time.time():.4f}\n").encode())
    os.fsync(log_fd)


# -- inputs: a pure function of the seed (every generation computes the same) ----------------------

def inputs(seed: int, n: int) -> dict[str, dict[str, Any]]:
    r = random.Random(seed)
    out = {}
    for i in range(n):
        iid = f"o{i}"
        bad_line = r.choice([None, None, 0, 1, 2])
        bad_bill = r.choice([None, None, 0, 1])
        out[iid] = {
            "k": r.randint(1, 3),                        # loop iterations (receive "go" + count)
            "flaky": r.randint(0, 2),                    # failed attempts of "reserve"
            "nap": r.choice([0.3, 1.3]),                 # 1.3: the timer parks
            "maybe": r.choice(["early", "late", "none"]),  # when the "maybe" signal is sent
            "decline": r.random() < 0.3,                 # "charge" fails, caught
            "doom": r.random() < 0.35,                   # fails at the end: everything compensates
            "kid_nap": r.choice([0.2, 1.2]),
            "cancel": r.random() < 0.3,                  # the sender cancels it at some moment
            "lines": [{"tag": f"L{j}", "bad": j == bad_line} for j in range(3)],
            "bills": [{"tag": f"B{j}", "bad": j == bad_bill, "nap": r.choice([0.1, 1.1])} for j in range(3)],
        }
    return out


INPUTS = inputs(SEED, N)


# -- steps --------------------------------------------------------------------------------------

class CardDeclined(Exception):
    pass


class LineBad(Exception):
    pass


class KidBad(Exception):
    pass


class Flaky(Exception):
    pass


def _tag(ctx: tf.WorkflowContext) -> str:
    item = ctx.item if isinstance(getattr(ctx, "item", None), dict) else None
    return item["tag"] if item else "-"


def job(step: str, *, sleep: tuple[float, float] = (0.0, 0.15), fail: Any = None, out: Any = None) -> Any:
    async def run(ctx: tf.WorkflowContext) -> Any:
        info = tf.current_step()
        log("call", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt)
        await trio.sleep(random.uniform(*sleep))
        if fail is not None:
            error = fail(ctx, info)
            if error is not None:
                log("end", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt, "fail")
                raise error
        log("end", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt, "ok")
        return out(ctx) if out is not None else f"{step}:{_tag(ctx)}"
    return run


def ship(ctx: tf.WorkflowContext) -> dict[str, Any]:  # a plain def: runs in a worker thread
    info = tf.current_step()
    log("call", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt)
    # what the run knows by now, after restarts and parked waits: shared data and step outputs
    seen = {"n": ctx.get("n"), "count": ctx.steps["count"], "declined": ctx.get("declined"),
            "maybe": ctx.steps["maybe"], "nap": ctx.steps["nap"], "fan": ctx.steps["fan"],
            "lines": ctx.steps["lines"], "bills": ctx.steps["bills"]}
    log("end", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt, "ok")
    return seen


async def undo(ctx: tf.WorkflowContext, result: Any) -> None:
    info = tf.current_step()
    assert info.compensating
    log("undo", GEN, info.instance_id, info.execution_id, info.step_name)
    await trio.sleep(random.uniform(0, 0.05))


async def count(ctx: tf.WorkflowContext) -> int:
    info = tf.current_step()
    log("call", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt)
    n = (ctx.get("n") or 0) + 1
    ctx.set("n", n)
    await trio.sleep(random.uniform(0, 0.05))
    log("end", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt, "ok")
    return n


def definitions() -> list[tf.WorkflowDefinition]:
    kid = (tf.workflow("kid")
           .step("k1", job("k1"), undo)
           .choice("k-ask", choices=[tf.when(lambda ctx: ctx.input.get("sig", False), next="k-go")],
                   default="k-nap")
           .receive("k-go", signal="kid-go", next="k-nap")
           .wait("k-nap", seconds=lambda ctx: ctx.input.get("nap", 0.2))
           .step("k2", job("k2", fail=lambda ctx, info: KidBad("kid is bad") if ctx.input.get("bad") else None,
                           out=lambda ctx: {"k1": ctx.steps["k1"], "nap": ctx.steps["k-nap"]}),
                 undo)
           .pass_("k-out", transform=lambda ctx: f"kid:{ctx.input['tag']}")
           .build())
    line = (tf.branch("line")
            .step("line-a", job("line-a"), undo)
            .receive("line-go", signal="line-go")  # every item waits for one, taken in any order
            .wait("line-nap", seconds=0.2)
            .step("line-b", job("line-b", fail=lambda ctx, info: LineBad(ctx.item["tag"]) if ctx.item["bad"] else None,
                                out=lambda ctx: f"line-b:{ctx.item['tag']}:{ctx.steps['line-nap']['tok']}"),
                  undo)
            .build())
    bill = tf.branch("bill").child("bill", workflow="kid").build()
    pa = (tf.branch("pa")
          .step("pa1", job("pa1"), undo)
          .wait("pa-nap", seconds=lambda ctx: ctx.input["nap"])
          .step("pa2", job("pa2", out=lambda ctx: f"pa2:{ctx.steps['pa-nap']}"), undo)
          .build())
    pb = tf.branch("pb").child("kid-b", workflow="kid",
                               input=lambda ctx: {"tag": "KB", "bad": False, "nap": ctx.input["kid_nap"],
                                                 "sig": ctx.input.get("kid_sig", True)}).build()
    slowkid = (tf.workflow("slowkid").with_timeout(1.5)  # always times out, parked on its timer
               .step("s1", job("s1"), undo)
               .wait("s-nap", seconds=2.5)
               .step("s2", job("s2"), undo)
               .build())
    pc = (tf.branch("pc")
          .child("slow", workflow="slowkid", input=lambda ctx: {"tag": "SK"},
                 catch=[tf.Catch(errors=[tf.ChildWorkflowError], next="slow-late")])
          .succeed("slow-ok")
          .pass_("slow-late", transform=lambda ctx: {"late": ctx.error["error"]})
          .build())
    order = (tf.workflow("order")
             .step("reserve", job("reserve", fail=lambda ctx, info: Flaky(f"attempt {info.attempt}")
                                  if info.attempt <= ctx.input["flaky"] else None),
                   undo, retry=tf.Retry(max_attempts=3, interval=1.2, backoff_rate=1.0))
             .receive("approve", signal="go")
             .step("count", count, undo)
             .choice("more", choices=[tf.when(lambda ctx: ctx.get("n") < ctx.input["k"], next="approve")],
                     default="nap")
             .wait("nap", seconds=lambda ctx: ctx.input["nap"])
             .receive("maybe", signal="maybe", timeout=1.0,
                      catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="charge")])
             .step("charge", job("charge", fail=lambda ctx, info: CardDeclined("declined")
                                 if ctx.input["decline"] else None), undo,
                   catch=[tf.Catch(errors=[CardDeclined], next="apologise", result="declined")])
             .parallel("fan", branches=[pa, pb, pc], on_error="wait-all")
             .map("lines", items=lambda ctx: ctx.input["lines"], branch=line, max_concurrency=2,
                  tolerated_failures=1)
             .map("bills", items=lambda ctx: ctx.input["bills"], branch=bill, max_concurrency=2,
                  tolerated_failures=1)
             .step("ship", ship, undo)
             .choice("doomed", choices=[tf.when(lambda ctx: ctx.input["doom"], next="boom")], default="done")
             .succeed("done")
             .step("apologise", job("apologise"), next="fan")
             .fail("boom", error="Doomed", cause="the order is doomed")
             .build())
    return [order, kid, slowkid]


# -- signals ------------------------------------------------------------------------------------

def tokens_of(iid: str) -> list[tuple[str, str]]:
    """(name, token) in the order a sender sends them to ``iid``."""
    spec = INPUTS[iid]
    out = []
    if spec["maybe"] == "early":
        out.append(("maybe", f"{iid}:maybe:0"))
    out += [("go", f"{iid}:go:{i}") for i in range(spec["k"])]
    if spec["maybe"] == "late":
        out.append(("maybe", f"{iid}:maybe:0"))
    out += [("line-go", f"{iid}:line-go:{j}") for j in range(len(spec["lines"]))]
    return out


def settled_tokens() -> set[str]:
    """Tokens already acknowledged, found stored or refused: not sent again. A send cut by the
    kill (logged, no answer) is looked up in the file: stored (in the signals table, or taken
    into a record) or not (sent again)."""
    sent: set[str] = set()
    done: set[str] = set()
    if os.path.exists(log_path):
        with open(log_path) as f:
            for line in f.read().split("\n")[:-1]:
                p = line.split()
                if p[0] == "sig-send":
                    sent.add(p[4])
                elif p[0] in ("sig-ack", "sig-found", "sig-notlive", "sig-nokid"):
                    done.add(p[4])
    cut = sent - done
    if cut and os.path.exists(db):
        with sqlite3.connect(db) as conn:
            blobs = [bytes(b) for (b,) in conn.execute("SELECT payload FROM trioflow_signals")]
            blobs += [bytes(b) for (b,) in conn.execute("SELECT data FROM trioflow_records")]
        everything = b"\0".join(blobs)
        for token in sorted(cut):
            if token.encode() in everything:
                iid, name, _ = token.split(":")
                log("sig-found", GEN, iid, name, token)
                done.add(token)
    return done


def kid_token(iid: str) -> str:
    return f"{iid}/fan/pb/kid-b#1:kid-go:0"


async def kid_sender(engine: tf.Engine, iid: str, settled: set[str]) -> None:
    """The kid of the parallel step's branch "pb" waits for "kid-go": sent once it exists."""
    token = kid_token(iid)
    kid_id = token.split(":")[0]
    if token in settled:
        return
    await trio.sleep(rng.uniform(0.0, 1.0))
    logged = False
    while True:
        try:
            if not logged:
                log("sig-send", GEN, kid_id, "kid-go", token)
                logged = True
            await engine.signal(kid_id, "kid-go", {"tok": token, "gen": GEN})
        except tf.InstanceNotLiveError:
            log("sig-notlive", GEN, kid_id, "kid-go", token)
            return
        except tf.UnknownInstanceError:
            parent = await engine.get_instance(iid)
            if parent is not None and parent.status not in ("pending", "running"):
                log("sig-nokid", GEN, kid_id, "kid-go", token)
                return
            await trio.sleep(0.1)
            continue
        log("sig-ack", GEN, kid_id, "kid-go", token)
        return


def cancels() -> tuple[set[str], set[str]]:
    """The instances whose cancel() was answered, and those whose cancel() a kill cut."""
    answered, tried = set(), set()
    if os.path.exists(log_path):
        with open(log_path) as f:
            for line in f.read().split("\n")[:-1]:
                p = line.split()
                if p[0] in ("cancel-yes", "cancel-no"):
                    answered.add(p[2])
                elif p[0] == "cancel-try":
                    tried.add(p[2])
    return answered, tried - answered


async def canceller(engine: tf.Engine, iid: str, again: bool) -> None:
    # A cancel() a kill cut is asked again at once, as a caller that got no answer would.
    await trio.sleep(rng.uniform(0.0, 0.1) if again else rng.uniform(0.2, 2.5))
    log("cancel-try", GEN, iid)
    said = await engine.cancel(iid)
    if DIE_AFTER_CANCEL:
        # the process dies as cancel() returns: its caller never learns the answer
        os.kill(os.getpid(), signal.SIGKILL)
    log("cancel-yes" if said else "cancel-no", GEN, iid)


async def sender(engine: tf.Engine, iid: str, settled: set[str]) -> None:
    for name, token in tokens_of(iid):
        if token in settled:
            continue
        if name == "maybe" and token.endswith(":0") and INPUTS[iid]["maybe"] == "late":
            await trio.sleep(rng.uniform(0.0, 2.5))
        else:
            await trio.sleep(rng.uniform(0.0, 0.4))
        log("sig-send", GEN, iid, name, token)
        while True:
            try:
                await engine.signal(iid, name, {"tok": token, "gen": GEN})
            except tf.InstanceNotLiveError:
                log("sig-notlive", GEN, iid, name, token)
                break
            except tf.UnknownInstanceError:  # not stored yet (a start cut by the kill)
                await trio.sleep(0.1)
                continue
            log("sig-ack", GEN, iid, name, token)
            break


# -- views ----------------------------------------------------------------------------------------

def view(inst: tf.WorkflowInstance) -> dict[str, Any]:
    return {
        "workflow": inst.workflow_name, "status": inst.status, "input": inst.input, "output": inst.output,
        "error_name": inst.error_name, "error": inst.error, "parent_id": inst.parent_id,
        "children": list(inst.children), "compensated": list(inst.compensated_steps),
        "compensation_errors": {k: str(v) for k, v in inst.compensation_errors.items()},
        "waiting": inst.waiting, "created_at": inst.created_at, "started_at": inst.started_at,
        "completed_at": inst.completed_at,
        "history": [{"id": r.id, "lane": r.lane, "step": r.step_name, "execution": r.execution, "seq": r.seq,
                     "status": r.status, "output": r.output, "attempts": r.attempts,
                     "started_at": r.started_at, "completed_at": r.completed_at,
                     "error_name": r.error_name} for r in inst.history],
        "results": {name: {"id": r.id, "status": r.status, "seq": r.seq} for name, r in inst.step_results.items()},
    }


async def everything(engine: tf.Engine) -> dict[str, Any]:
    out: dict[str, Any] = {}
    after: str | None = None
    while True:
        page = await engine.get_instances(limit=500, after=after)
        out.update((inst.id, view(inst)) for inst in page)
        if len(page) < 500:
            return out
        after = page[-1].id


async def main() -> None:
    if mode == "peek":
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
            print(json.dumps(await everything(engine)), flush=True)
        return
    settled = settled_tokens()
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), max_running=MAX_RUNNING) as engine:
        for wf in definitions():
            engine.register(wf)
        if mode in ("run", "final"):  # (start is idempotent: a service starting them again)
            async with trio.open_nursery() as nursery:
                for iid, data in INPUTS.items():
                    nursery.start_soon(lambda i=iid, d=data: engine.start("order", d, instance_id=i))
        print("started", flush=True)
        async with trio.open_nursery() as nursery:
            answered, cut = cancels()
            for iid in INPUTS:
                nursery.start_soon(sender, engine, iid, settled)
                nursery.start_soon(kid_sender, engine, iid, settled)
                if INPUTS[iid]["cancel"] and iid not in answered:
                    nursery.start_soon(canceller, engine, iid, iid in cut)
            if mode == "final":
                with trio.fail_after(90):
                    for iid in INPUTS:
                        await engine.wait(iid)
                    # children end before their parents' steps do; a last look for stragglers
                    for other in list((await everything(engine))):
                        await engine.wait(other)
        if mode != "final":
            await trio.sleep_forever()
        print(json.dumps(await everything(engine)), flush=True)


trio.run(main)
