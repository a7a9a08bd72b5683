"""Child process for tests/test_review_of_portal_from_threads.py (not collected): a payments service that polls a
settlement in a choice loop; it dies by SIGKILL in the third poll, after writing MARKER.

    python portal_poll_kill_child.py DB MARKER
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import trio

import trioflow as tf

db, marker = Path(sys.argv[1]), Path(sys.argv[2])
polls = 0


async def authorize(data: Any) -> dict[str, str]:
    return {"auth": f"A-{data['pid']}"}


async def poll(data: Any) -> dict[str, int]:
    global polls
    polls += 1
    if polls == 3:
        marker.write_text("in the third poll")
        os.kill(os.getpid(), signal.SIGKILL)
    return {"hold": polls}


async def nothing(data: Any) -> None:
    return None


payment = (tf.workflow("payment")
           .task("authorize", job="authorize", compensate="void")
           .task("poll", job="poll", compensate="unhold")
           .choice("settled?", choices=[tf.when(lambda ctx: ctx.steps["poll"]["hold"] >= 3, next="settle")],
                   default="poll")
           .task("settle", job="settle")
           .build())


async def main() -> None:
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        for name, job in {"authorize": authorize, "void": nothing, "poll": poll, "unhold": nothing,
                          "settle": nothing}.items():
            engine.jobs.register(name, job)
        engine.register(payment)
        await engine.start("payment", {"pid": "p1"}, instance_id="p1")
        await trio.sleep_forever()


trio.run(main)
