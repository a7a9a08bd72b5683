"""An engine process whose job hands work to a forked helper process (multiprocessing's "fork"
start method, Python's default on Linux before 3.14). Usage: fork_lock_child.py DB PIDFILE"""
import multiprocessing, sys, time, trio, trioflow as tf
db, pidfile = sys.argv[1], sys.argv[2]

def crunch() -> None:
    time.sleep(20)

async def work(data):
    helper = multiprocessing.get_context("fork").Process(target=crunch, daemon=True)
    helper.start()
    with open(pidfile, "w") as f:
        f.write(str(helper.pid))
    await trio.sleep_forever()

async def main():
    async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(tf.workflow("w").task("work", job=work).build())
        await engine.start("w", instance_id="i0")
        await trio.sleep_forever()

trio.run(main)
