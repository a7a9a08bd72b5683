"""Child process for test_review_can3's SIGKILL test (not collected).

    python can3_continue_kill_child.py DB LOG MODE N
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import trio

import trioflow as tf

db, log_path, mode, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
PID = os.getpid()
LAST = 12


def log(line: str) -> None:
    os.write(log_fd, (line + "\n").encode())
    os.fsync(log_fd)


async def bill(ctx: Any) -> int:
    log(f"bill {ctx.metadata.id} {ctx.input['n']} {tf.current_step().execution_id}")
    await trio.sleep(0.01)
    return int(ctx.input["n"])


async def issue(ctx: Any) -> Any:
    log(f"issue {ctx.metadata.id} {ctx.input}")
    return ctx.input


def definitions() -> list[tf.WorkflowDefinition]:
    kid = tf.workflow("kid").step("issue", issue).build()
    sub = (tf.workflow("sub")
           .step("bill", bill)
           .child("invoice", workflow="kid", input=lambda ctx: ctx.input["n"])
           .wait("period", seconds=0.02)
           .choice("more", choices=[tf.Choice(condition=lambda ctx: ctx.input["n"] < LAST, next="renew")],
                   default="done")
           .continue_as_new("renew", input=lambda ctx: {"n": ctx.input["n"] + 1})
           .succeed("done", output=lambda ctx: ctx.input["n"])
           .build())
    return [kid, sub]


async def main() -> None:
    adapter = tf.adapters.SQLiteAdapter(db)
    async with tf.open_engine(adapter=adapter) as engine:
        for d in definitions():
            engine.register(d)
        if mode == "run":
            for i in range(count):
                await engine.start("sub", {"n": 0}, instance_id=f"s{i}")
            log("started")
            await trio.sleep_forever()
        elif mode == "resume":
            await trio.sleep_forever()
        else:
            out = {}
            for i in range(count):
                with trio.fail_after(120):
                    r = await engine.wait(f"s{i}")
                out[f"s{i}"] = [r.status, r.output, r.runs, r.error]
            rows = [(r.id, r.status) for r in await engine.get_instances()]
            print(json.dumps({"results": out, "rows": rows}))


trio.run(main)
