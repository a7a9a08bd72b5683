"""Child process for the transactional SIGKILL test (run by tests/test_transaction_once.py, not
collected).

    python tx_crash_child.py DB USERDB LOG run N   # starts N instances; each hangs in its terminal save
    python tx_crash_child.py DB USERDB LOG resume  # resumes them all and prints a JSON summary

Each instance of the transactional workflow creates one ``orders`` row (ref ``r<k>``) in USERDB
through a SQLiteDriver. In "run" mode the adapter hangs every terminal snapshot after logging
"terminal <instance>" to LOG with one O_APPEND write (which survives SIGKILL): by then the
driver's transaction has committed, so a kill at that point is a crash right in the window
between the COMMIT and the terminal snapshot.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import trio

import trioflow as tf
from trioflow._snapshot import TERMINAL, Status

db, userdb, log_path, mode = sys.argv[1:5]
log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


class HangingTerminalSave(tf.adapters.SQLiteAdapter):
    """Stores every snapshot but the terminal ones: those are logged, then never return."""

    async def checkpoint(self, instance_id: str, status: Status, header: bytes, records: Any, **kw: Any) -> None:
        if status in TERMINAL:
            os.write(log_fd, f"terminal {instance_id}\n".encode())
            await trio.sleep_forever()
        await super().checkpoint(instance_id, status, header, records, **kw)


def definition() -> tf.WorkflowDefinition:
    return (tf.workflow("tx")
            .step(tf.create_entity_step("create-order", "orders", lambda ctx: {"ref": ctx.input["ref"]},
                                        store_as="order_id"))
            .transactional()
            .build())


async def main() -> None:
    adapter = HangingTerminalSave(db) if mode == "run" else tf.adapters.SQLiteAdapter(db)
    driver = tf.adapters.SQLiteDriver(userdb)
    async with tf.open_engine(adapter=adapter, driver=driver) as engine:
        engine.register(definition())
        if mode == "run":
            for k in range(int(sys.argv[5])):
                await engine.start("tx", {"ref": f"r{k}"}, instance_id=f"i{k}")
            await trio.sleep_forever()
        summary: dict[str, Any] = {}
        for inst in await engine.get_instances("tx"):
            done = await engine.wait(inst.id)
            summary[inst.id] = {"status": done.status, "output": done.output, "rolled_back": done.rolled_back,
                                "steps": {n: r.status for n, r in done.step_results.items()}}
        print(json.dumps(summary))
    await driver.aclose()


trio.run(main)
