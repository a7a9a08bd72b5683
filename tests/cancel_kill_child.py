"""A process for tests/test_core_review.py: `python cancel_kill_child.py DB MODE(run|resume) WHICH(running|pending)`.

run: starts instances, cancels one while its step runs (or while it is queued), and kills
itself with SIGKILL right after cancel() returned; resume: reports how each instance ended."""
import json, os, signal, sys
import trio
import trioflow as tf

db, mode, which = sys.argv[1:4]


async def a(data):
    return "a"


async def undo_a(result):
    print("UNDO_A", flush=True)


IN_B = {}


async def b(data):
    if mode == "run":
        IN_B.setdefault("ev", trio.Event()).set()
        await trio.sleep_forever()
    return "b"


wf = tf.workflow("w").task("a", job=a, compensate=undo_a).task("b", job=b).build()


async def main():
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db), max_running=1) as engine:
        engine.register(wf)
        if mode == "run":
            first = await engine.start("w", instance_id="first")
            await IN_B.setdefault("ev", trio.Event()).wait()  # first is inside b
            if which == "pending":
                second = await engine.start("w", instance_id="second")
                target = second
            else:
                target = first
            ok = await engine.cancel(target)
            print("CANCELLED", ok, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # the process dies right after cancel() said yes
        out = {}
        for inst in await engine.get_instances("w"):
            if mode == "resume" and inst.id == "first" and which == "pending":
                continue
            done = await engine.wait(inst.id)
            out[inst.id] = done.status
        print(json.dumps(out), flush=True)


trio.run(main)
