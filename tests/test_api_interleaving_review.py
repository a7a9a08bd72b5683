"""The engine's API under interleaved operations (an adversarial review with a stateful
hypothesis test; each test failed before its fix): signal order after a resume, parents ending
badly while their children wait with max_running=1, and a cancel stored across a close."""
import trio
import trioflow as tf
from trioflow.testing import open_test_engine, run


async def slow(data):
    await trio.sleep(1.0)
    return "ok"


# -- Bug 1: signals taken out of order (FIFO broken) ------------------------------------------

timer_then_receive = (tf.workflow("twr")
                      .wait("w", seconds=2)          # > PARK_AFTER: the instance leaves memory
                      .task("work", job="slow")      # runs 1 s after the timer wakes it
                      .receive("r1", signal="go")
                      .receive("r2", signal="go")
                      .build())


def test_signal_fifo_after_wake_from_timer():
    """Signal 1 is sent while the instance is parked on its timer (only stored); signal 2 is sent
    after the waker resumed it but before it reaches its receive step (delivered in memory).
    The receive step must take 1 first (docs/waiting.md: 'First in, first out')."""
    async def main():
        async with open_test_engine() as engine:
            engine.jobs.register("slow", slow)
            engine.register(timer_then_receive)
            iid = await engine.start("twr")
            await trio.sleep(1.5)                          # parked on the 2 s timer
            await engine.signal(iid, "go", 1)
            await trio.sleep(1.0)                          # t=2.5: woken, running 'work'
            await engine.signal(iid, "go", 2)
            return await engine.wait(iid)
    inst = run(main)
    assert inst.status == "completed"
    assert [inst.step_results["r1"].output, inst.step_results["r2"].output] == [1, 2]


receive_once = tf.workflow("rx").receive("r", signal="go").build()
blocker = tf.workflow("blocker").task("work", job="slow").build()


def test_signal_fifo_after_restart_of_a_queued_instance():
    """max_running=1: 'rx' is queued behind 'blocker'. Signal 1 is stored, the engine restarts,
    signal 2 is sent to the resumed (still queued) instance. Its receive step must output 1."""
    async def main():
        adapter = tf.adapters.MemoryAdapter()
        async with open_test_engine(adapter=adapter, max_running=1) as engine:
            engine.jobs.register("slow", slow)
            engine.register(blocker)
            engine.register(receive_once)
            await engine.start("blocker")
            iid = await engine.start("rx")                 # pending: the only slot is taken
            await engine.signal(iid, "go", 1)
        async with open_test_engine(adapter=adapter, max_running=1) as engine:
            engine.jobs.register("slow", slow)
            engine.register(blocker)
            await trio.sleep(0.05)                         # blocker resumed first: it has the slot
            engine.register(receive_once)
            await trio.sleep(0.05)                         # rx resumed too: queued for the slot
            await engine.signal(iid, "go", 2)
            return await engine.wait(iid)
    inst = run(main)
    assert inst.status == "completed"
    assert inst.output == 1, f"took signal {inst.output} first; FIFO says 1"


# -- Bug 2: a parent that ends badly while its child waits deadlocks on max_running ------------

UNDONE: list = []


async def step_job(data):
    await trio.sleep(0.3)
    return "done"


async def undo_job(result):
    UNDONE.append(result)


kid = tf.workflow("kid").task("k1", job="step", compensate="undo").wait("kw", seconds=5).build()


async def _run_parent(parent_def, cancel_at=None, max_running=1):
    UNDONE.clear()
    async with open_test_engine(max_running=max_running) as engine:
        engine.jobs.register("step", step_job)
        engine.jobs.register("undo", undo_job)
        engine.register(kid)
        engine.register(parent_def)
        iid = await engine.start(parent_def.name)
        if cancel_at is not None:
            await trio.sleep(cancel_at)
            assert await engine.cancel(iid) is True
        with trio.move_on_after(1000):
            parent = await engine.wait(iid)
            child = await engine.get_instance(iid + "/ch#1")
            return parent.status, child.status, list(UNDONE)
        parent = await engine.get_instance(iid)
        child = await engine.get_instance(iid + "/ch#1")
        return ("STUCK", parent.status, child.status)


def test_parent_timeout_while_child_waits_does_not_deadlock():
    """max_running=1. The parent times out after 1 s while its child (k1 done, then a 5 s timer)
    is parked. Expected (fanout.md: 'A parent that is cancelled, times out or fails cancels the
    children it waits on, and waits for their ends'; 'any number of parents waiting on children
    never deadlock on max_running'): parent timed_out, child cancelled with k1 compensated.
    Observed: both stay 'running' for ever (1000 virtual seconds and beyond)."""
    parent_def = tf.workflow("par_to").child("ch", workflow="kid").with_timeout(1).build()
    outcome = run(_run_parent, parent_def)
    assert outcome[0] != "STUCK", outcome
    assert outcome == ("timed_out", "cancelled", ["done"])


def test_parent_cancel_while_child_parked_does_not_deadlock():
    """Same with engine.cancel(parent) at t=1 (child parked on its timer): cancel() says True,
    but the instance never ends."""
    parent_def = tf.workflow("par_c").child("ch", workflow="kid").build()
    outcome = run(_run_parent, parent_def, 1.0)
    assert outcome[0] != "STUCK", outcome
    assert outcome == ("cancelled", "cancelled", ["done"])


# -- Bug 3: cancelling a parent queued behind its running child never cancels the child --------

kid_short = tf.workflow("kid2").task("k1", job="step", compensate="undo").wait("kw", seconds=1.5).build()


def test_cancel_parent_queued_behind_its_child_cancels_the_child():
    """max_running=1. At t=0.1 the parent is parked waiting for its child, which runs k1 in the
    only slot. cancel(parent) returns True and the parent ends 'cancelled'; but its child is
    never cancelled: it runs k1 and its 1.5 s timer to the end, ends 'completed', and k1 is never
    compensated. Docs (fanout.md): 'Cancelling the parent cancels its children'; 'A child that
    completes all the same ... is compensated as a unit then'."""
    async def main():
        UNDONE.clear()
        async with open_test_engine(max_running=1) as engine:
            engine.jobs.register("step", step_job)
            engine.jobs.register("undo", undo_job)
            engine.register(kid_short)
            engine.register(tf.workflow("par_q").child("ch", workflow="kid2").build())
            iid = await engine.start("par_q")
            await trio.sleep(0.1)
            assert await engine.cancel(iid) is True
            parent = await engine.wait(iid)
            with trio.move_on_after(100):
                child = await engine.wait(iid + "/ch#1")
            return parent.status, child.status, list(UNDONE)
    parent_status, child_status, undone = run(main)
    assert parent_status == "cancelled"
    # The child is cancelled with its parent: in the middle of k1 (0.3 s), so nothing to undo.
    assert (child_status, undone) == ("cancelled", []), (child_status, undone)


# -- Bug 4: a cancel() that said yes is lost when the engine closes right after it --------------

CALLS: list = []


async def first_job(data):
    CALLS.append("first")
    return "r-1"


async def undo_first(result):
    CALLS.append("undo first")


async def slow_job(data):
    CALLS.append("slow")
    await trio.sleep(1.0)
    return "s"


async def last_job(data):
    CALLS.append("last")
    return "done"


class SlowWriteMemoryAdapter(tf.adapters.MemoryAdapter):
    """A MemoryAdapter whose checkpoints take 10 ms, as a real database write does (SQLite's
    writer thread): nothing else differs."""

    async def checkpoint(self, *args, **kwargs):
        await trio.sleep(0.01)
        return await super().checkpoint(*args, **kwargs)


cancellable = (tf.workflow("cancellable")
               .task("first", job="first", compensate="undo_first")
               .task("slow", job="slow")
               .task("last", job="last")
               .build())


def test_cancel_that_returned_true_survives_an_engine_close():
    """cancel() returns True while 'slow' runs; the engine closes 5 ms later (while the
    instance stores its 'cancelled' decision). The next engine on the same storage runs the
    instance on as if it had never been cancelled: 'slow' runs again, then 'last', and it ends
    'completed' with 'first' never compensated. Expected: 'cancelled', 'first' compensated:
    cancel() 'cancels the running step (its cancel scope) and then compensates' (README), and
    the engine's own comment in actors/_instance.py::run_instance promises that a cancel()
    that said yes is stored across a shutdown. The window is _end_badly(): its
    begin_compensation() + run.persist() run outside the shielded except-Cancelled path."""
    async def main():
        CALLS.clear()
        adapter = SlowWriteMemoryAdapter()
        jobs = {"first": first_job, "undo_first": undo_first, "slow": slow_job, "last": last_job}
        async with open_test_engine(adapter=adapter) as engine:
            for name, fn in jobs.items():
                engine.jobs.register(name, fn)
            engine.register(cancellable)
            iid = await engine.start("cancellable")
            await trio.sleep(0.5)                           # 'slow' is running
            assert await engine.cancel(iid) is True
            await trio.sleep(0.005)                         # the instance is storing the cancel
        async with open_test_engine(adapter=adapter) as engine:
            for name, fn in jobs.items():
                engine.jobs.register(name, fn)
            engine.register(cancellable)
            return await engine.wait(iid)
    inst = run(main)
    # Cancelled, and nothing ran forward after the cancel. (This adapter's checkpoint can be cut
    # short by the close, so the compensation that ran before it may run again with the next
    # engine: at least once, as any step whose record a stop cut short.)
    assert inst.status == "cancelled" and inst.compensated_steps == ("first",), (inst.status, CALLS)
    assert CALLS[:3] == ["first", "slow", "undo first"] and set(CALLS[3:]) <= {"undo first"}, CALLS
