"""Child process for the SIGKILL tests in test_waiting_sigkill.py (not collected).

    python waiting_kill_child.py DB LOG SCENARIO MODE N [EXTRA]

Every job logs one line per event with one O_APPEND write, fsynced:
    call PID IID STEP ATTEMPT TIME      # a job call began
    end PID IID STEP ATTEMPT RESULT TIME  # it returned (ok) or raised (fail)
    undo PID IID STEP TIME              # a compensation ran
MODE "run" starts instances and runs until killed; "resume" runs until killed; "final" waits
for every instance and prints a JSON summary.
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

db, log_path, scenario, mode, count = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
extra = sys.argv[6] if len(sys.argv) > 6 else ""
log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
PID = os.getpid()
IDS = [f"i{i}" for i in range(count)]


def log(line: str) -> None:
    os.write(log_fd, (line + "\n").encode())
    os.fsync(log_fd)


# -- retry ------------------------------------------------------------------------------------------
#: Attempts the step's job fails before it succeeds, by instance number: 0..4 (4: never, with 4
#: attempts at most, the instance fails and "a" is compensated).
MAX = 4


def fails_before(iid: str, step: str) -> int:
    n = int(iid[1:])
    return (n + (0 if step == "a" else 2)) % 5


def retry_job(step: str) -> Any:
    async def run(ctx: tf.WorkflowContext) -> str:
        info = tf.current_step()
        iid = ctx.metadata.id
        log(f"call {PID} {iid} {step} {info.attempt} {time.time():.3f}")
        await trio.sleep(random.uniform(0.1, 0.6))
        if info.attempt <= fails_before(iid, step):
            log(f"end {PID} {iid} {step} {info.attempt} fail {time.time():.3f}")
            raise RuntimeError(f"{step} attempt {info.attempt} fails")
        log(f"end {PID} {iid} {step} {info.attempt} ok {time.time():.3f}")
        return f"{step}-ok"
    return run


def undo(step: str) -> Any:
    async def run(ctx: tf.WorkflowContext, result: Any) -> None:
        log(f"undo {PID} {ctx.metadata.id} {step} {time.time():.3f}")
    return run


def retry_workflows() -> list[tf.WorkflowDefinition]:
    # "a": a delay of 1.5 s (the instance leaves memory); "b": 0.3 s (it stays in memory).
    return [tf.workflow("retry")
            .step("a", retry_job("a"), undo("a"), retry=tf.Retry(max_attempts=MAX, interval=1.5, backoff_rate=1))
            .step("b", retry_job("b"), retry=tf.Retry(max_attempts=MAX, interval=0.3, backoff_rate=1))
            .build()]


def long_job(step: str, seconds: float) -> Any:
    async def run(ctx: tf.WorkflowContext) -> str:
        iid = ctx.metadata.id
        log(f"call {PID} {iid} {step} 0 {time.time():.3f}")
        await trio.sleep(seconds)
        log(f"end {PID} {iid} {step} 0 ok {time.time():.3f}")
        return step
    return run


# -- a cancel stored in a child ---------------------------------------------------------------------

def parent_workflow() -> tf.WorkflowDefinition:
    return (tf.workflow("parent").with_compensation_timeout(1.0)
            .step("pa", long_job("pa", 0.05), undo("pa"))
            .child("kid", workflow="kid", input=lambda ctx: {"p": ctx.metadata.id})
            .step("pb", long_job("pb", 0.05))
            .build())


def kid_workflow() -> tf.WorkflowDefinition:
    return (tf.workflow("kid")
            .step("k1", long_job("k1", 0.05), undo("k1"))
            .wait("nap", seconds=lambda ctx: 30 if ctx.input.get("long", True) else 0)
            .step("k2", long_job("k2", 0.05), undo("k2"))
            .build())


def tparent_workflow() -> tf.WorkflowDefinition:
    return (tf.workflow("tparent").with_timeout(3).with_compensation_timeout(1.0)
            .step("pa", long_job("pa", 0.05), undo("pa"))
            .child("kid", workflow="kid", input=lambda ctx: {"p": ctx.metadata.id})
            .step("pb", long_job("pb", 0.05))
            .build())


# -- processes --------------------------------------------------------------------------------------

def view(inst: tf.WorkflowInstance) -> dict[str, Any]:
    return {"workflow": inst.workflow_name, "status": inst.status, "compensated": list(inst.compensated_steps), "error": inst.error,
            "attempts": {name: r.attempts for name, r in inst.step_results.items()},
            "results": {name: r.status for name, r in inst.step_results.items()},
            "waiting": inst.waiting, "children": list(inst.children)}


async def summary(engine: tf.Engine, names: list[str], timeout: float = 60) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with trio.move_on_after(timeout):
        for name in names:
            for inst in await engine.get_instances(name):
                await engine.wait(inst.id)
    for name in names:
        for inst in await engine.get_instances(name):
            out[inst.id] = view(inst)
    return out


async def peek() -> None:
    """What storage holds, nothing registered (so nothing resumes)."""
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        print(json.dumps({inst.id: view(inst) for inst in await engine.get_instances()}), flush=True)


async def main() -> None:
    if mode == "peek":
        return await peek()
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        if scenario == "retry":
            for wf in retry_workflows():
                engine.register(wf)
            if mode == "run":
                for iid in IDS:
                    await engine.start("retry", instance_id=iid)
            names = ["retry"]
        elif scenario == "cancel-stored":
            # extra: "both" (both registered), "parent" (the kid's workflow left out), "kid-late"
            # (the parent's first, the kid's 0.5 s later)
            engine.register(parent_workflow())
            if extra == "both":
                engine.register(kid_workflow())
            if mode == "run":
                for iid in IDS:
                    await engine.start("parent", instance_id=iid)
            if mode == "cancel":
                print("started", flush=True)
                await trio.sleep(0.3)
                for iid in IDS:
                    await engine.cancel(iid)
                log(f"cancelled-all {PID} x x {time.time():.3f}")
                await trio.sleep_forever()
            if extra == "kid-late":
                await trio.sleep(0.5)
                engine.register(kid_workflow())
            if mode == "final":
                # The user issues the cancels again (yes again for those still being cancelled,
                # no for those over).
                for iid in IDS:
                    await engine.cancel(iid)
            names = ["parent", "kid"]
        elif scenario == "timeout-parent":
            engine.register(tparent_workflow())
            if extra == "both":
                engine.register(kid_workflow())
            if mode == "run":
                for iid in IDS:
                    await engine.start("tparent", instance_id=iid)
            names = ["tparent", "kid"]
        else:
            raise SystemExit(f"unknown scenario {scenario}")
        print("started", flush=True)
        if mode != "final":
            await trio.sleep_forever()
        print(json.dumps(await summary(engine, names)), flush=True)


trio.run(main)
