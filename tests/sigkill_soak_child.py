"""Child process of tests/test_sigkill_soak.py (helper "soak"; not collected by pytest).

    python sigkill_soak_child.py DB LOG SEED GEN MODE N_PER_GEN

MODE "run": open the engine on DB (resuming what is stored), start (idempotently) every
instance planned for generations 0..GEN, send the signals and cancels not yet acknowledged,
and run until SIGKILLed. MODE "final": the same with no kill, then wait for every instance and
print a JSON dump of storage (get_instances pages and get_instance of each) on stdout.

Every line of LOG is one O_APPEND write followed by fsync, so a line survives a SIGKILL once
written:
    x GEN IID EXEC STEP ATTEMPT begin|ok|fail     a step callable (saga execute or job)
    c GEN IID EXEC STEP begin|ok                  a compensation
    sig-try GEN IID NAME KEY / sig-ack / sig-notlive
    cancel-try GEN IID / cancel-ack GEN IID True|False
    start-ack GEN IID
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from typing import Any

import trio

import trioflow as tf

LOG_FD: int | None = None
GEN = 0


def log(*parts: Any) -> None:
    assert LOG_FD is not None
    os.write(LOG_FD, (" ".join(str(p) for p in parts) + f" {time.time():.4f}\n").encode())
    os.fsync(LOG_FD)


DIE_P = float(os.environ.get("SOAK_DIE_AFTER_ACK_P", "0"))


def maybe_die() -> None:
    """SIGKILL this process right after an acknowledgement was logged (its caller's next line)."""
    if DIE_P and random.random() < DIE_P:
        os.kill(os.getpid(), 9)


class CardDeclined(Exception):
    pass


class Doomed(Exception):
    pass


class Flaky(Exception):
    pass


class ItemBad(Exception):
    pass


# -- the plan: a pure function of (seed, n_per_gen, gen) -------------------------------------------

def plan(seed: int, n_per_gen: int, gens: int) -> dict[str, dict[str, Any]]:
    """Every instance of generations 0..gens-1: iid -> {"wf", "input", "signals", "cancel"}."""
    out: dict[str, dict[str, Any]] = {}
    for g in range(gens):
        r = random.Random(seed * 100_003 + g)
        for i in range(n_per_gen):
            iid = f"s{seed}g{g}i{i}"
            kind = r.choice(["saga", "saga", "loop", "sm", "tsaga"])
            cancel = r.random() < float(os.environ.get("SOAK_CANCEL_P", "0.15"))
            if kind in ("saga", "tsaga"):
                bad_item = r.choice([None, None, 0, 1, 2])
                inp = {"tag": iid, "flaky": r.randint(0, 2), "nap": round(r.uniform(0.1, 2.0), 2),
                       "decline": r.random() < 0.3, "doom": r.random() < 0.3,
                       "items": [{"t": f"{iid}-L{j}", "bad": j == bad_item, "nap": round(r.uniform(0.1, 1.5), 2)}
                                 for j in range(3)],
                       "kid": {"tag": f"{iid}-kid", "bad": r.random() < 0.2, "nap": round(r.uniform(0.1, 1.5), 2)}}
                sigs = [("go", f"{iid}:go:0")]
            elif kind == "loop":
                k = r.randint(1, 4)
                inp = {"tag": iid, "n": 0, "K": k, "got": [], "nap": round(r.uniform(0.1, 0.6), 2)}
                sigs = [("tick", f"{iid}:tick:{j}") for j in range(k)]
            else:
                inp = {"tag": iid, "flaky": r.randint(0, 3), "big": r.random() < 0.6,
                       "nap": round(r.uniform(0.1, 1.2), 2)}
                sigs = [("poke", f"{iid}:poke:0")] if r.random() < 0.7 else []
            out[iid] = {"wf": kind, "input": inp, "signals": sigs, "cancel": cancel, "gen": g,
                        "cancel_kid": kind in ("saga", "tsaga") and not cancel
                        and r.random() < float(os.environ.get("SOAK_CANCEL_KID_P", "0"))}
    return out


# -- steps --------------------------------------------------------------------------------------

def expected_output(step: str, tag: Any, lane: str) -> dict[str, Any]:
    item = None
    if "/#" in lane:
        item = int(lane.split("/#")[1].split("/")[0])
    return {"s": step, "tag": tag, "item": item}


def saga_exec(step: str, fail: Any = None) -> Any:
    async def run(ctx: tf.WorkflowContext) -> Any:
        info = tf.current_step()
        log("x", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt, "begin")
        await trio.sleep(random.uniform(0, 0.08))
        if fail is not None:
            err = fail(ctx, info)
            if err is not None:
                log("x", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt, "fail")
                raise err
        log("x", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt, "ok")
        return {"s": info.step_name, "tag": ctx.input["tag"], "item": ctx.item_index}
    return run


async def saga_undo(ctx: tf.WorkflowContext, result: Any) -> None:
    info = tf.current_step()
    assert info.compensating
    log("c", GEN, info.instance_id, info.execution_id, info.step_name, "begin")
    await trio.sleep(random.uniform(0, 0.05))
    log("c", GEN, info.instance_id, info.execution_id, info.step_name, "ok")


async def job_fetch(data: Any) -> Any:
    info = tf.current_step()
    log("x", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt, "begin")
    await trio.sleep(random.uniform(0, 0.08))
    if info.attempt <= data["flaky"]:
        log("x", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt, "fail")
        raise Flaky(f"attempt {info.attempt}")
    log("x", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt, "ok")
    return {"s": info.step_name, "tag": data["tag"], "item": None}


async def job_plain(data: Any) -> Any:
    info = tf.current_step()
    log("x", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt, "begin")
    await trio.sleep(random.uniform(0, 0.1))
    log("x", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt, "ok")
    return {"s": info.step_name, "tag": data["tag"], "item": None}


def job_sync(data: Any) -> Any:  # a plain def: runs in a worker thread
    info = tf.current_step()
    log("x", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt, "begin")
    time.sleep(random.uniform(0, 0.1))
    log("x", GEN, info.instance_id, info.execution_id, info.step_name, info.attempt, "ok")
    return {"s": info.step_name, "tag": data["tag"], "item": None}


async def job_undo(result: Any) -> None:
    info = tf.current_step()
    assert info.compensating
    log("c", GEN, info.instance_id, info.execution_id, info.step_name, "begin")
    await trio.sleep(random.uniform(0, 0.05))
    log("c", GEN, info.instance_id, info.execution_id, info.step_name, "ok")


def definitions() -> list[tf.WorkflowDefinition]:
    kid = (tf.workflow("kid")
           .step("k1", saga_exec("k1"), saga_undo)
           .wait("k-nap", seconds=lambda ctx: ctx.input["nap"])
           .step("k2", saga_exec("k2", fail=lambda ctx, info: Doomed("kid bad") if ctx.input["bad"] else None),
                 saga_undo)
           .build())
    line = (tf.branch("line")
            .step("la", saga_exec("la"), saga_undo)
            .wait("lw", seconds=lambda ctx: ctx.item["nap"])
            .step("lb", saga_exec("lb", fail=lambda ctx, info: ItemBad(ctx.item["t"]) if ctx.item["bad"] else None),
                  saga_undo)
            .build())
    def saga_of(name: str) -> Any:
        return (tf.workflow(name)
            .step("a", saga_exec("a"), saga_undo)
            .step("b", saga_exec("b", fail=lambda ctx, info: Flaky(f"attempt {info.attempt}")
                                 if info.attempt <= ctx.input["flaky"] else None),
                  saga_undo, retry=tf.Retry(max_attempts=3, interval=0.3, backoff_rate=1.0))
            .receive("go", signal="go")
            .wait("nap", seconds=lambda ctx: ctx.input["nap"])
            .step("charge", saga_exec("charge", fail=lambda ctx, info: CardDeclined("declined")
                                      if ctx.input["decline"] else None), saga_undo,
                  catch=[tf.Catch(errors=[CardDeclined], next="apology")])
            .map("lines", items=lambda ctx: ctx.input["items"], branch=line, max_concurrency=2,
                 tolerated_failures=0)
            .child("kid", workflow="kid", input=lambda ctx: ctx.input["kid"])
            .step("final", saga_exec("final", fail=lambda ctx, info: Doomed("doom") if ctx.input["doom"] else None),
                  saga_undo, end=True)
            .step("apology", saga_exec("apology"), saga_undo, next="lines"))
    saga = saga_of("saga").build()
    tsaga = saga_of("tsaga").with_timeout(float(os.environ.get("SOAK_TSAGA_TIMEOUT", "3.0"))).build()
    loop = (tf.workflow("loop")
            .receive("tick", signal="tick")
            .step("count", saga_exec("count"), saga_undo)
            .wait("lnap", seconds=lambda ctx: ctx.input["nap"])
            .choice("more", choices=[tf.when(lambda ctx: ctx.input["n"] + 1 >= ctx.input["K"], next="done")],
                    default="again")
            .continue_as_new("again", input=lambda ctx: {**ctx.input, "n": ctx.input["n"] + 1,
                                                         "got": ctx.input["got"] + [ctx.steps["tick"]["key"]]})
            .succeed("done", output=lambda ctx: {"n": ctx.input["n"] + 1,
                                                 "got": ctx.input["got"] + [ctx.steps["tick"]["key"]]})
            .build())
    sm = (tf.workflow("sm")
          .task("fetch", job="fetch", retry=tf.Retry(max_attempts=3, interval=0.2, backoff_rate=1.5),
                compensate="undo", catch=[tf.Catch(errors=[Flaky], next="late")])
          .choice("route", choices=[tf.when(lambda ctx: ctx.input["big"], next="par")], default="poke")
          .parallel("par", branches=[
              tf.branch("p1").task("p1t", job="sync", compensate="undo").build(),
              tf.branch("p2").task("p2t", job="plain", compensate="undo")
              .wait("p2w", seconds=lambda ctx: ctx.input["nap"]).build()],
              on_error="fail-fast", next="poke")
          .receive("poke", signal="poke", timeout=1.0,
                   catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="late")])
          .task("finish", job="plain", compensate="undo", end=True)
          .pass_("late", transform=lambda ctx: {"late": True}, next="finish")
          .build())
    return [kid, saga, tsaga, loop, sm]


# -- the sender side --------------------------------------------------------------------------------

def read_log(path: str) -> list[list[str]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f.read().split("\n") if line.strip()]


async def starter(engine: tf.Engine, iid: str, spec: dict[str, Any], started: trio.Event) -> None:
    await engine.start(spec["wf"], spec["input"], instance_id=iid)
    log("start-ack", GEN, iid)
    started.set()


async def sender(engine: tf.Engine, iid: str, spec: dict[str, Any], settled: set[str],
                 started: trio.Event, rng: random.Random) -> None:
    await started.wait()
    for name, key in spec["signals"]:
        if key in settled:
            continue
        await trio.sleep(rng.uniform(0.0, 0.8))
        log("sig-try", GEN, iid, name, key)
        try:
            await engine.signal(iid, name, {"key": key}, idempotency_key=key)
        except tf.InstanceNotLiveError:
            log("sig-notlive", GEN, iid, name, key)
            return
        log("sig-ack", GEN, iid, name, key)
        maybe_die()
    # duplicates: keys acknowledged before (this process or an earlier one) sent again, some twice at once
    if os.environ.get("SOAK_DUPES", "1") == "1":
        for name, key in spec["signals"]:
            if key not in settled and rng.random() < 0.5:
                continue
            await trio.sleep(rng.uniform(0.0, 0.5))
            gone = False
            try:
                async with trio.open_nursery() as n:
                    for _ in range(rng.choice([1, 2])):
                        n.start_soon(lambda: engine.signal(iid, name, {"key": key, "dupe": True},
                                                           idempotency_key=key))
            except* tf.InstanceNotLiveError:
                gone = True
            if gone:
                return
            log("sig-dupe-ack", GEN, iid, name, key)


async def kid_canceller(engine: tf.Engine, iid: str, again: bool, started: trio.Event, rng: random.Random) -> None:
    """Cancel the saga's child (its id is "<iid>/kid#1") once it exists."""
    await started.wait()
    kid = f"{iid}/kid#1"
    await trio.sleep(rng.uniform(0.0, 0.1) if again else rng.uniform(0.0, 0.5))
    while True:
        parent = await engine.get_instance(iid)
        if parent is None or parent.status not in ("pending", "running"):
            return
        if await engine.get_instance(kid) is not None:
            await trio.sleep(rng.uniform(0.0, 0.6))
            log("cancel-try", GEN, kid)
            said = await engine.cancel(kid)
            log("cancel-ack", GEN, kid, said)
            maybe_die()
            return
        await trio.sleep(0.1)


async def canceller(engine: tf.Engine, iid: str, again: bool, started: trio.Event, rng: random.Random) -> None:
    await started.wait()
    await trio.sleep(rng.uniform(0.0, 0.1) if again else rng.uniform(0.1, 3.0))
    log("cancel-try", GEN, iid)
    said = await engine.cancel(iid)
    log("cancel-ack", GEN, iid, said)
    maybe_die()


def view(inst: tf.WorkflowInstance) -> dict[str, Any]:
    return {
        "id": inst.id, "workflow": inst.workflow_name, "status": inst.status, "input": inst.input,
        "output": inst.output, "error_name": inst.error_name, "error": inst.error, "parent_id": inst.parent_id,
        "children": list(inst.children), "compensated": list(inst.compensated_steps),
        "compensation_errors": {k: str(v) for k, v in inst.compensation_errors.items()},
        "runs": inst.runs, "waiting": inst.waiting,
        "created_at": inst.created_at, "started_at": inst.started_at, "completed_at": inst.completed_at,
        "history": [{"id": r.id, "lane": r.lane, "step": r.step_name, "execution": r.execution, "seq": r.seq,
                     "status": r.status, "output": r.output,
                     "started_at": r.started_at, "completed_at": r.completed_at, "attempts": r.attempts,
                     "error_name": r.error_name} for r in inst.history],
    }


async def dump(engine: tf.Engine) -> dict[str, Any]:
    listed: dict[str, Any] = {}
    after: str | None = None
    while True:
        page = await engine.get_instances(limit=37, after=after)
        listed.update((inst.id, view(inst)) for inst in page)
        if len(page) < 37:
            break
        after = page[-1].id
    single: dict[str, Any] = {}
    for iid in listed:
        inst = await engine.get_instance(iid)
        single[iid] = view(inst) if inst is not None else None
    by_wf: dict[str, list[str]] = {}
    for wf in ("kid", "saga", "tsaga", "loop", "sm"):
        ids: list[str] = []
        after = None
        while True:
            page = await engine.get_instances(wf, limit=11, after=after, order="newest")
            ids += [i.id for i in page]
            if len(page) < 11:
                break
            after = page[-1].id
        by_wf[wf] = sorted(ids)
    by_status: dict[str, list[str]] = {}
    for st in ("pending", "running", "completed", "failed", "cancelled", "timed_out", "compensated"):
        by_status[st] = sorted(i.id for i in await engine.get_instances(status=st))
    return {"listed": listed, "single": single, "by_status": by_status, "by_wf": by_wf}


async def main(db: str, log_path: str, seed: int, gen: int, mode: str, n_per_gen: int) -> None:
    global LOG_FD, GEN, DIE_P
    GEN = gen
    if mode == "final":
        DIE_P = 0.0
    LOG_FD = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rng = random.Random(seed * 7919 + gen)
    random.seed(seed * 31 + gen)
    lines = read_log(log_path)
    settled = {p[4] for p in lines if p[0] in ("sig-ack", "sig-notlive")}
    cancel_answered = {p[2] for p in lines if p[0] == "cancel-ack"}
    cancel_tried = {p[2] for p in lines if p[0] == "cancel-try"}
    the_plan = plan(seed, n_per_gen, gen + 1)
    max_running = int(os.environ.get("SOAK_MAX_RUNNING", "10000"))
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), max_running=max_running) as engine:
        for wf in definitions():
            engine.register(wf)
        engine.jobs.register("fetch", job_fetch)
        engine.jobs.register("plain", job_plain)
        engine.jobs.register("undo", job_undo)
        engine.jobs.register("sync", job_sync)
        print("open", flush=True)
        async with trio.open_nursery() as nursery:
            for iid, spec in the_plan.items():
                ev = trio.Event()
                nursery.start_soon(starter, engine, iid, spec, ev)
                nursery.start_soon(sender, engine, iid, spec, settled, ev, rng)
                # cancels are planned in the instance's own generation (or re-asked after a cut one)
                if spec["cancel"] and iid not in cancel_answered and (spec["gen"] == gen or iid in cancel_tried
                                                                       or mode == "final"):
                    nursery.start_soon(canceller, engine, iid, iid in cancel_tried, ev, rng)
                kid = f"{iid}/kid#1"
                if spec["cancel_kid"] and kid not in cancel_answered:
                    nursery.start_soon(kid_canceller, engine, iid, kid in cancel_tried, ev, rng)
        if mode != "final":
            await trio.sleep_forever()
        with trio.fail_after(180):
            for _ in range(3):
                d = await dump(engine)
                for iid in d["listed"]:
                    await engine.wait(iid)
        await trio.sleep(0.5)
        print(json.dumps(await dump(engine)), flush=True)


if __name__ == "__main__":
    import logging
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    a = sys.argv[1:]
    trio.run(main, a[0], a[1], int(a[2]), int(a[3]), a[4], int(a[5]))
