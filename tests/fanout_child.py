"""Child process for the SIGKILL test of a fan-out of child workflows (run by
tests/test_fanout_sigkill.py, not collected).

    python fanout_child.py DB LOG run PARENTS ITEMS     # starts PARENTS parents "p0"...: each a
        map over ITEMS items whose branch is one child step starting an "invoice" saga
        (reserve, charge, mail); prints "started" once every parent is stored, then runs on
        until it is killed
    python fanout_child.py DB LOG resume PARENTS ITEMS  # reads what storage holds (before any
        workflow is registered, so before anything resumes), registers the workflows, waits
        for every parent and prints a JSON summary: {"at_open": ..., "final": ...}

Each process logs to its own LOG, one line per O_APPEND write, fsynced, so a line survives the
process (and the machine) once written:

    step INSTANCE STEP     # a saga step's job began (every execution, retries and reruns too)
    undo INSTANCE STEP     # a saga step's compensation began (none should)
    started INSTANCE       # an instance was started fresh (not resumed): "workflow.started"
"""

from __future__ import annotations

import json
import os
import random
import sys
from typing import Any

import trio

import trioflow as tf

db, log_path, mode, parents, items = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
#: At most this many items of one parent run at once: at the kill, each parent has items done,
#: items whose child runs, and items not begun.
MAX_CONCURRENCY = 10
SAGA = ("reserve", "charge", "mail")


def log(line: str) -> None:
    os.write(log_fd, (line + "\n").encode())
    os.fsync(log_fd)


def saga_step(name: str) -> Any:
    async def run(ctx: tf.WorkflowContext) -> str:
        log(f"step {ctx.metadata.id} {name}")
        # In flight for a while, some much longer than others: with only a few milliseconds,
        # the children ran in waves (every parent's items begun together, ended together) and
        # a kill between two waves cut no step; with up to 0.1 s they drift apart, so whenever
        # the kill lands some steps run. (The run takes no longer: it is bound by the CPU.)
        await trio.sleep(random.uniform(0, 0.1))
        return f"{name}-{ctx.input['item']}"
    return run


def saga_undo(name: str) -> Any:
    async def run(ctx: tf.WorkflowContext, result: Any) -> None:
        log(f"undo {ctx.metadata.id} {name}")
    return run


def definitions() -> list[tf.WorkflowDefinition]:
    builder = tf.workflow("invoice")
    for name in SAGA:
        builder = builder.step(name, saga_step(name), saga_undo(name))
    invoice = builder.pass_("receipt", transform=lambda ctx: {
        "item": ctx.input["item"], **{name: ctx.steps[name] for name in SAGA}}).build()
    batch = (tf.workflow("batch")
             .map("each", items=lambda ctx: ctx.input, max_concurrency=MAX_CONCURRENCY,
                  branch=tf.branch("one").child("bill", workflow="invoice",
                                                input=lambda ctx: {"item": ctx.item}).build())
             .build())
    return [batch, invoice]


def parent_ids() -> list[str]:
    return [f"p{k}" for k in range(parents)]


def items_of(parent_id: str) -> list[str]:
    return [f"{parent_id}.{i}" for i in range(items)]


def on_started(event: dict[str, Any]) -> None:
    log(f"started {event['instance_id']}")


def view(inst: tf.WorkflowInstance) -> dict[str, Any]:
    return {
        "status": inst.status, "error": inst.error, "output": inst.output,
        "parent_id": inst.parent_id, "children": list(inst.children),
        "history": [[r.lane, r.step_name, r.execution, r.status] for r in inst.history],
    }


async def stored(engine: tf.Engine, workflow_name: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    after: str | None = None
    while True:
        page = await engine.get_instances(workflow_name, limit=1000, after=after)
        out.update((inst.id, view(inst)) for inst in page)
        if len(page) < 1000:
            return out
        after = page[-1].id


async def run() -> None:
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.events.on("workflow.started", on_started)
        for wf in definitions():
            engine.register(wf)

        async def start(pid: str) -> None:
            await engine.start("batch", items_of(pid), instance_id=pid)

        async with trio.open_nursery() as nursery:
            for pid in parent_ids():
                nursery.start_soon(start, pid)
        print("started", flush=True)
        await trio.sleep_forever()


async def resume() -> None:
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        # As stored at the kill: nothing runs before its workflow is registered.
        at_open = {"batch": await stored(engine, "batch"), "invoice": await stored(engine, "invoice")}
        engine.events.on("workflow.started", on_started)
        for wf in definitions():
            engine.register(wf)
        with trio.move_on_after(120):  # what did not end by then is reported as it stands
            for pid in parent_ids():
                await engine.wait(pid)
            for child_id in (await stored(engine, "invoice")):
                await engine.wait(child_id)
        final = {"batch": await stored(engine, "batch"), "invoice": await stored(engine, "invoice")}
    print(json.dumps({"at_open": at_open, "final": final}))


trio.run(run if mode == "run" else resume)
