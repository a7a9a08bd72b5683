"""Child process for the SIGKILL crash tests (run by tests/test_crash.py, not collected).

    python crash_child.py DB LOG SCENARIO run N   # starts N instances; a chosen step hangs
    python crash_child.py DB LOG SCENARIO resume  # resumes them all and prints a JSON summary
    python crash_child.py DB LOG SCENARIO resubmit N  # the same, starting every id again first

Every job appends "instance step" to LOG with one O_APPEND write, so the log survives SIGKILL.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import trio

import trioflow as tf

db, log_path, scenario, mode = sys.argv[1:5]
HANG = {"linear": "b", "compensation": "undo-b", "parallel": "y1", "failed-branch": "y1"}[scenario]
#: failed-branch: x1 fails for good; y0 waits for that, so that y0's checkpoint stores x1's failure.
x1_failed: dict[str, trio.Event] = {}
log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def job(name: str) -> Any:
    async def run(data: Any) -> str:
        os.write(log_fd, f"{data['id']} {name}\n".encode())
        if mode == "run" and name == HANG:
            await trio.sleep_forever()
        if name == "c" and scenario == "compensation":
            raise RuntimeError("c fails for good")
        if scenario == "failed-branch" and name in ("x1", "y0"):
            failed = x1_failed.setdefault(data["id"], trio.Event())
            if name == "x1":
                failed.set()
                raise RuntimeError("x1 fails for good")
            await failed.wait()
        return f"{name}-done"
    return run


def compensation(name: str) -> Any:
    inner = job(name)

    async def run(output: Any) -> None:
        await inner({"id": output["id"]})
    return run


def definition() -> tf.WorkflowDefinition:
    ident = lambda ctx: {"id": ctx.input["id"]}  # noqa: E731
    if scenario == "parallel":
        return (tf.workflow("crash").parallel("p", branches=[
            tf.branch("x").task("x1", job=job("x1"), input=ident).task("x2", job=job("x2"), input=ident).build(),
            tf.branch("y").task("y1", job=job("y1"), input=ident).build(),
        ]).task("after", job=job("after"), input=ident).build())
    keep_id = lambda result, ctx: {"id": ctx.input["id"], "result": result}  # noqa: E731
    if scenario == "failed-branch":
        return (tf.workflow("crash").parallel("p", on_error="wait-all", branches=[
            tf.branch("x").task("x1", job=job("x1"), input=ident).build(),
            tf.branch("y").task("y0", job=job("y0"), input=ident, output=keep_id, compensate=compensation("undo-y0"))
            .task("y1", job=job("y1"), input=ident).build(),
        ]).task("after", job=job("after"), input=ident).build())
    return (tf.workflow("crash")
            .task("a", job=job("a"), input=ident, output=keep_id, compensate=compensation("undo-a"))
            .task("b", job=job("b"), input=ident, output=keep_id, compensate=compensation("undo-b"))
            .task("c", job=job("c"), input=ident).build())


async def main() -> None:
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(definition())
        if mode == "run":
            for i in range(int(sys.argv[5])):
                await engine.start("crash", {"id": f"i{i}"}, instance_id=f"i{i}")
            print("started", flush=True)
            await trio.sleep_forever()
        if mode == "resubmit":
            # A client retrying its requests right after the restart, while the resume runs.
            for i in range(int(sys.argv[5])):
                await engine.start("crash", {"id": f"i{i}"}, instance_id=f"i{i}")
        summary = {}
        for inst in await engine.get_instances("crash"):
            done = await engine.wait(inst.id)
            summary[inst.id] = {"status": done.status, "compensated": list(done.compensated_steps),
                                "output": done.output}
        print(json.dumps(summary))


trio.run(main)
