"""Child process for tests/test_review_porting.py (not collected): an order-fulfilment service
ported from Temporal/DBOS, run on a real SQLite file and SIGKILLed by the test.

    python review_porting_child.py DB LEDGER LOG run N
        starts orders o0..o{N-1} (idempotent), then reads stdin lines "signal ID PAYLOAD" /
        "cancel ID" and logs "ack ID PAYLOAD" / "cancelled ID RESULT" once each call returned.
    python review_porting_child.py DB LEDGER LOG finish N
        resumes, waits for every order to end, prints a JSON summary of every instance.

Every side effect (execute and compensate) is one committed row in the LEDGER SQLite file,
keyed by (instance, execution id, kind) with the process id, so the test can check
at-least-once / exactly-once as the docs promise them. Log lines are single O_APPEND writes.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
import time
from typing import Any

import trio
import trioflow as tf

db, ledger_path, log_path, mode, count = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
IDS = [f"o{i}" for i in range(count)]
PID = os.getpid()
PAY_TIMEOUT = float(os.environ.get("PAY_TIMEOUT", "4"))
REMIND = float(os.environ.get("REMIND", "1.2"))
LINES = int(os.environ.get("LINES", "3"))
MAXC = int(os.environ.get("MAXC", "2")) or None
CARRIER = bool(os.environ.get("CARRIER"))
HOLD = bool(os.environ.get("HOLD"))
RETAIN = float(os.environ["RETAIN"]) if os.environ.get("RETAIN") else None

ledger = sqlite3.connect(ledger_path, isolation_level=None, timeout=30)
ledger.execute("PRAGMA journal_mode=WAL")
ledger.execute("CREATE TABLE IF NOT EXISTS fx (seq INTEGER PRIMARY KEY AUTOINCREMENT, iid TEXT, exec_id TEXT,"
               " step TEXT, kind TEXT, attempt INTEGER, pid INTEGER, t REAL)")


def log(line: str) -> None:
    os.write(log_fd, (line + "\n").encode())


def effect(kind: str) -> None:
    info = tf.current_step()
    ledger.execute("INSERT INTO fx (iid, exec_id, step, kind, attempt, pid, t) VALUES (?,?,?,?,?,?,?)",
                   (info.instance_id, info.execution_id, info.step_name, kind, info.attempt, PID, time.time()))


async def busy() -> None:
    await trio.sleep(random.random() * float(os.environ.get("BUSY", "0.05")))


def saga_step(name: str, fail_if: Any = None) -> tuple[Any, Any]:
    async def execute(ctx: Any) -> Any:
        if fail_if is not None and fail_if(ctx):
            await busy()
            effect("fail")
            raise RuntimeError(f"{name} failed for {ctx.input}")
        effect("execute")
        await busy()
        return {"done": name}

    async def compensate(ctx: Any, result: Any) -> None:
        effect("compensate")
        await busy()

    execute.__name__ = name
    compensate.__name__ = "undo_" + name
    return execute, compensate


def workflows() -> list[tf.WorkflowDefinition]:
    pick = saga_step("pick")
    label = saga_step("label")
    dispatch = saga_step("dispatch", fail_if=lambda ctx: ctx.input.get("bad", False))
    ship_line = tf.workflow("ship-line").step("pick", *pick).step("label", *label)
    if CARRIER:  # the carrier's pick-up webhook, which never comes in this test
        ship_line = ship_line.receive("carrier", signal="carrier")
    ship_line = ship_line.step("dispatch", *dispatch).build()
    reserve = saga_step("reserve")
    charge = saga_step("charge")
    cancel_order = saga_step("cancel_order")
    final = saga_step("finalize")
    order = (tf.workflow("order")
             .step("reserve", *reserve)
             .receive("payment", signal="paid", timeout=PAY_TIMEOUT,
                      catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="cancel_order")])
             .step("charge", *charge)
             .wait("reminder", seconds=REMIND)
             .map("ship", items=lambda ctx: ctx.input["lines"], max_concurrency=MAXC,
                  branch=tf.branch("line").child("ship_line", workflow="ship-line").build())
             .step("finalize", *final, next="hold" if HOLD else "done")
             .succeed("done")
             .step("cancel_order", *cancel_order)
             .fail("unpaid", error="PaymentMissing", cause="no payment in time"))
    if HOLD:  # the order stays open for returns until it is closed (or cancelled)
        order = order.receive("hold", signal="close", next="done")
    order = order.build()
    return [ship_line, order]


def order_input(i: int) -> dict[str, Any]:
    # o{i}: i % 4 == 3 never paid (timeout path); i % 3 == 1 has a bad line (children compensate)
    lines = [{"sku": f"s{i}-{k}", "bad": (i % 3 == 1 and k == LINES - 1)} for k in range(LINES)]
    return {"order": i, "lines": lines}


async def run() -> None:
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), retain_finished=RETAIN) as engine:
        for wf in workflows():
            engine.register(wf)
        with open(log_path) as f:
            first = "started" not in f.read().split()
        for i, iid in enumerate(IDS):
            if first or RETAIN is None:  # a purged order's id would start a new order
                await engine.start("order", order_input(i), instance_id=iid)
        log("started")
        async with trio.open_nursery() as nursery:
            async def handle(line: str) -> None:
                parts = line.split()
                if parts[0] == "signal":
                    try:
                        await engine.signal(parts[1], "paid", parts[2])
                        log(f"ack {parts[1]} {parts[2]} {time.time()}")
                    except (tf.InstanceNotLiveError, tf.UnknownInstanceError):
                        log(f"notlive {parts[1]} {parts[2]}")
                elif parts[0] == "cancel":
                    ok = await engine.cancel(parts[1]) if parts[1].split("/")[0] in IDS else None
                    log(f"cancelled {parts[1]} {ok}")

            stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            buffered = b""
            while data := await stdin.receive_some():
                buffered += data
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    nursery.start_soon(handle, line.decode())
            await trio.sleep_forever()


def _ts(v: Any) -> Any:
    return v.timestamp() if hasattr(v, "timestamp") else v


def view(inst: tf.WorkflowInstance) -> dict[str, Any]:
    return {
        "id": inst.id, "status": inst.status, "parent_id": inst.parent_id, "children": list(inst.children),
        "compensated_steps": list(getattr(inst, "compensated_steps", ()) or ()),
        "error_name": inst.error_name, "output": inst.output,
        "history": [{"id": r.id, "step": r.step_name, "status": r.status, "seq": r.seq, "output": r.output,
                     "started_at": _ts(r.started_at), "completed_at": _ts(r.completed_at), "error_name": r.error_name}
                    for r in inst.history],
    }


async def stands_on(engine: Any, one: tf.WorkflowInstance) -> dict[str, Any]:
    """What an instance still unfinished after the wait stands on: its stored row (status,
    wake_at: ``inf`` waits for a signal alone, the waker never takes it up), whether a run of
    it is in memory here (and what that run holds), the signals storage keeps for it, and its
    children's statuses: enough to tell a lost wake from a run stuck in memory."""
    iid = one.id
    out: dict[str, Any] = {"view_status": one.status, "current_step": one.current_step, "waiting": one.waiting}
    try:
        row = await engine.adapter.load(iid)
        out["row"] = None if row is None else {"status": row.status, "wake_at": repr(row.wake_at),
                                              "signals": [(seq, name) for seq, name, _ in row.signals]}
        out["signals"] = [(seq, name) for seq, name, _ in await engine.adapter.signals(iid)]
    except Exception as exc:  # (a diagnostic: never the reason the summary is missing)
        out["storage_error"] = repr(exc)
    run = engine._live.get(iid)
    out["live"] = run is not None
    out["storing"] = iid in engine._storing
    out["waking"] = iid in engine._waking
    if run is not None:
        out["run"] = {
            "parked": run.parked, "late": sorted(run.late or ()), "resting": run.resting, "active": run.active,
            "hold": run.hold is not None, "signals_fetched": run.signals_fetched,
            "held_signals": [(seq, name) for seq, name, _ in run.state.signals],
            "lanes": {key: repr(lane.waiting) for key, lane in run.state.lanes.items()},
        }
    children = {}
    for child in one.children:
        got = await engine.get_instance(child)
        children[child] = None if got is None else got.status
    out["children"] = children
    return out


async def finish() -> None:
    summary: dict[str, Any] = {"instances": {}, "listing": {}, "unfinished": [], "resumed": []}
    late = mode == "finish-late"
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), resume=not late) as engine:
        if late:
            # a service that registers its workflows after an await, then resumes explicitly,
            # twice at once (two start-up hooks), while the webhook endpoint already signals
            engine.register(workflows()[1])
            await trio.sleep(0.2)
            engine.register(workflows()[0])
            async with trio.open_nursery() as nursery:
                async def resume() -> None:
                    summary["resumed"].append(await engine.resume())

                async def signals() -> None:
                    for iid in IDS:
                        try:
                            await engine.signal(iid, "paid", f"{iid}-late")
                            log(f"ack {iid} {iid}-late")
                        except tf.InstanceNotLiveError:
                            pass
                nursery.start_soon(resume)
                nursery.start_soon(resume)
                nursery.start_soon(signals)
        else:
            for wf in workflows():
                engine.register(wf)
        # Cancels sent before the SIGKILL whose call never returned: the caller sends them again
        # (an unacknowledged cancel may not be stored, and its order waits on for ever).
        for iid in os.environ.get("CANCEL_AGAIN", "").split():
            try:
                await engine.cancel(iid)
            except tf.UnknownInstanceError:
                pass
        if HOLD:  # returns window over: cancel every order still open; kept children are undone
            for iid in IDS:
                try:
                    await engine.cancel(iid)
                except tf.UnknownInstanceError:
                    pass
        with trio.move_on_after(60):
            for iid in IDS:
                try:
                    await engine.wait(iid)
                except tf.UnknownInstanceError:
                    pass
        all_instances = await engine.get_instances()
        for inst in all_instances:
            summary["listing"][inst.id] = inst.status
            one = await engine.get_instance(inst.id)
            assert one is not None
            summary["instances"][inst.id] = view(one)
            if one.status in ("running", "pending"):
                summary["unfinished"].append(inst.id)
                summary.setdefault("stands_on", {})[inst.id] = await stands_on(engine, one)
        # paging and filtered listings agree with the full listing
        for order_ in ("oldest", "newest"):
            paged: list[str] = []
            after = None
            while True:
                page = await engine.get_instances(limit=7, after=after, order=order_)
                paged += [i.id for i in page]
                if len(page) < 7:
                    break
                after = page[-1]
            full = [i.id for i in await engine.get_instances(order=order_)]
            if paged != full:
                summary.setdefault("listing_problems", []).append(f"paged {order_} {paged} != {full}")
        for wf_name in ("order", "ship-line"):
            for status in ("completed", "failed", "cancelled", "compensated", "running"):
                got = sorted(i.id for i in await engine.get_instances(wf_name, status))
                want = sorted(iid for iid, v in summary["instances"].items()
                              if v["status"] == status and ("/" in iid) == (wf_name == "ship-line"))
                if got != want:
                    summary.setdefault("listing_problems", []).append(f"{wf_name} {status}: {got} != {want}")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    trio.run(run if mode == "run" else finish)
