"""Child process for the SIGKILL tests of durable waiting (run by tests/test_signals_crash.py,
not collected).

    python signals_child.py DB LOG signals-run N     # starts N instances that each receive
        "go" twice, then sends the signals read from stdin ("ID PAYLOAD" lines), logging
        "ack ID PAYLOAD" once each engine.signal() has returned (SHAPE=branches in the
        environment: each receives it once in each of two parallel branches, and all have left
        memory before the first signal is sent; KEYED=1: each sent with its payload as its
        idempotency key, and sent again by the resume in place of the top-up)
    python signals_child.py DB LOG signals-resume N ACKED  # resumes them; prints a JSON summary
        (ACKED: a JSON file {id: [acknowledged payloads]}, to know who needs no top-up)
    python signals_child.py DB LOG timers-run N      # starts N instances that wait (timers and
        signal timeouts), logging "waiting ID DUE" for each stored wait and "b ID TIME" when
        the step after the wait runs
    python signals_child.py DB LOG timers-resume N   # resumes them; prints a JSON summary

Every log line is one O_APPEND write, so the log survives SIGKILL.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import trio
import trioflow as tf

db, log_path, mode, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
IDS = [f"i{i}" for i in range(count)]


def log(line: str) -> None:
    os.write(log_fd, (line + "\n").encode())


# -- signals --------------------------------------------------------------------------------------

BRANCHES = os.environ.get("SHAPE") == "branches"
#: Each signal sent with its payload as its idempotency key; the resume sends them all again.
KEYED = os.environ.get("KEYED") == "1"
#: The receive steps of an instance.
RECEIVES = ("rx", "ry") if BRANCHES else ("r1", "r2")


def signals_workflow() -> tf.WorkflowDefinition:
    if BRANCHES:
        return (tf.workflow("sig")
                .parallel("both", branches=[tf.branch(f"b{name}").receive(name, signal="go").build()
                                            for name in RECEIVES])
                .build())
    return (tf.workflow("sig")
            .receive("r1", signal="go")
            .receive("r2", signal="go")
            .pass_("both", transform=lambda ctx: [ctx.steps["r1"], ctx.steps["r2"]], end=True)
            .build())


async def signals_run() -> None:
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(signals_workflow())
        for iid in IDS:
            await engine.start("sig", instance_id=iid)
        while BRANCHES and engine._live:  # (they leave once both branches have rested a second)
            await trio.sleep(0.05)
        print("started", flush=True)
        # One sender per instance: an instance's signals are sent (and stored) in the order read.
        channels = {iid: trio.open_memory_channel[str](1000) for iid in IDS}

        async def sender(iid: str, receive: trio.MemoryReceiveChannel[str]) -> None:
            async for payload in receive:
                await engine.signal(iid, "go", payload, idempotency_key=payload if KEYED else None)
                log(f"ack {iid} {payload}")

        async with trio.open_nursery() as nursery:
            for iid, (_, receive) in channels.items():
                nursery.start_soon(sender, iid, receive)
            stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            buffered = b""
            while data := await stdin.receive_some():
                buffered += data
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    iid, payload = line.decode().split()
                    channels[iid][0].send_nowait(payload)
            await trio.sleep_forever()


async def signals_resume(acked_path: str) -> None:
    with open(acked_path) as f:
        acked: dict[str, list[str]] = json.load(f)
    summary: dict[str, Any] = {"unwoken": [], "final": {}, "pending": {}}
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(signals_workflow())
        # Phase 1: with no new signal, each instance must take the signals acknowledged to it
        # (they are stored): its receive steps complete at least that many times.
        def received(inst: tf.WorkflowInstance) -> int:
            return sum(1 for r in inst.history if r.step_name in RECEIVES and r.status == "completed")

        behind = set(acked)
        with trio.move_on_after(5):
            while behind:
                for iid in list(behind):
                    inst = await engine.get_instance(iid)
                    assert inst is not None
                    if received(inst) >= len(acked[iid]):
                        behind.discard(iid)
                await trio.sleep(0.05)
        summary["unwoken"] = sorted(behind)
        # Phase 2: a top-up of two more signals each (after any stored ones: first in, first out).
        # KEYED: the first process's two signals sent again, with their keys, as a webhook's
        # sender does that had no answer (an instance that has ended knows both keys).
        for iid in IDS:
            for k in range(2):
                if KEYED:
                    await engine.signal(iid, "go", f"{iid}:{k}", idempotency_key=f"{iid}:{k}")
                    continue
                try:
                    await engine.signal(iid, "go", f"{iid}:top{k}")
                except tf.InstanceNotLiveError:
                    break
        with trio.move_on_after(20):
            for iid in IDS:
                await engine.wait(iid)
        for iid in IDS:
            inst = await engine.get_instance(iid)
            assert inst is not None
            summary["final"][iid] = {
                "status": inst.status,
                "receives": [[r.step_name, r.status, r.output] for r in inst.history if r.step_name in RECEIVES],
            }
            summary["pending"][iid] = [name for _, name, _ in await engine.adapter.signals(iid)]
    print(json.dumps(summary))


# -- timers ---------------------------------------------------------------------------------------

#: Kinds of waits, by instance number: a short timer (fires around the kill), a long timer
#: (fires after the restart), a receive whose timeout fires after the restart (caught).
def kind(i: int) -> str:
    return ("short", "long", "receive")[i % 3]


def timers_workflow(first_delay: float) -> tf.WorkflowDefinition:
    async def a(data: Any) -> str:
        log(f"a {data['id']}")
        return "a"

    async def b(data: Any) -> str:
        log(f"b {data['id']} {time.time():.6f}")
        return "b"

    ident = lambda ctx: {"id": ctx.input["id"]}
    return (tf.workflow("tim")
            .task("a", job=a, input=ident)
            .choice("which", choices=[tf.when(lambda ctx: ctx.input["kind"] == "receive", next="r")], default="w")
            .wait("w", seconds=lambda ctx: ctx.input["delay"], next="b")
            .receive("r", signal="never", timeout=first_delay + 1.0,
                     catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="b")], next="b")
            .task("b", job=b, input=ident)
            .build())


def delay_of(i: int, first_delay: float) -> float:
    if kind(i) == "short":
        return first_delay + (i % 20) * 0.04
    return first_delay + 1.0


async def timers_run(first_delay: float) -> None:
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.events.on("workflow.step.waiting", lambda e: log(
            f"waiting {e['instance_id']} {e['waiting'].get('timer') or e['waiting'].get('timeout'):.6f}"))
        engine.register(timers_workflow(first_delay))
        for i, iid in enumerate(IDS):
            await engine.start("tim", {"id": iid, "kind": kind(i), "delay": delay_of(i, first_delay)},
                               instance_id=iid)
        print("started", flush=True)
        await trio.sleep_forever()


async def timers_resume(first_delay: float) -> None:
    summary: dict[str, Any] = {"opened": 0.0, "stored_waiting": {}, "stored_steps": {}, "final": {}}
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        summary["opened"] = time.time()
        for iid in IDS:  # as stored, before the workflow is registered (and its instances resumed)
            inst = await engine.get_instance(iid)
            assert inst is not None
            summary["stored_waiting"][iid] = inst.waiting
            summary["stored_steps"][iid] = [r.step_name for r in inst.history]
        engine.register(timers_workflow(first_delay))
        with trio.move_on_after(20):
            for iid in IDS:
                await engine.wait(iid)
        for iid in IDS:
            inst = await engine.get_instance(iid)
            assert inst is not None
            summary["final"][iid] = {
                "status": inst.status, "error": inst.error,
                "history": [[r.step_name, r.status] for r in inst.history],
            }
    print(json.dumps(summary))


async def main() -> None:
    if mode == "signals-run":
        await signals_run()
    elif mode == "signals-resume":
        await signals_resume(sys.argv[5])
    elif mode == "timers-run":
        await timers_run(float(sys.argv[5]))
    elif mode == "timers-resume":
        await timers_resume(float(sys.argv[5]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


trio.run(main)
