"""An adversarial review of signals delivered into fan-outs (parallel branches and map items that
receive, several receives of one signal name, receives with ``timeout=`` and ``catch=``),
across engine restarts on a SQLite file and SIGKILL of a real process, mixed with
``engine.cancel()`` and workflow timeouts.

The promises under review (SPEC §13, README "Waiting for time and for people",
docs/waiting.md): once ``await engine.signal(...)`` has returned, the signal is delivered exactly
once (never lost, never twice); signals of one name are taken first in, first out; a receive
with a timeout gets the payload or times out, never both; a waiting instance leaves memory and
is loaded back when its signal arrives.

Tests marked ``FAILS ON CURRENT CODE`` in their docstring fail today; the others pin behaviour
that held under review and is worth keeping. Everything runs on trio's MockClock (virtual time,
no real sleeps), except the SIGKILL test, which runs real processes (a few seconds).

Run from a checkout:  .venv/bin/pytest -q -p no:cacheprovider /tmp/review_signals_fanout/
"""

from __future__ import annotations

import json
import os
import signal as os_signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import engine_portal, open_test_engine

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


# -- helpers --------------------------------------------------------------------------------------


class SlowSignalPath(MemoryAdapter):
    """A MemoryAdapter whose next signal write (``send_signal`` / ``send_signal_and_load``)
    takes ``slow_send`` virtual seconds before it stores, and whose next ``signals()`` read
    after that write takes ``slow_read`` seconds. Nothing else differs: it keeps the adapter
    protocol (every write all or nothing, seqs growing); the latency is what any real store
    (a busy database, a network round trip) can have."""

    def __init__(self) -> None:
        super().__init__()
        self.slow_send = 0.0
        self.slow_read_after_send = 0.0
        self._slow_read = 0.0
        self.stored = 0  # signal writes that returned

    async def _before_send(self) -> float:
        delay, self.slow_send = self.slow_send, 0.0
        if delay:
            await trio.sleep(delay)
        return delay

    async def send_signal(self, instance_id: str, name: str, payload: bytes) -> int | None:
        slowed = await self._before_send()
        seq = await super().send_signal(instance_id, name, payload)
        self.stored += 1
        if slowed:
            self._slow_read = self.slow_read_after_send
        return seq

    async def send_signal_and_load(self, instance_id: str, name: str, payload: bytes) -> Any:
        slowed = await self._before_send()
        result = await super().send_signal_and_load(instance_id, name, payload)
        self.stored += 1
        if slowed:
            self._slow_read = self.slow_read_after_send
        return result

    async def signals(self, instance_id: str) -> list[tuple[int, str, bytes]]:
        delay, self._slow_read = self._slow_read, 0.0
        if delay:
            await trio.sleep(delay)
        return await super().signals(instance_id)


async def _work_ten_seconds(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(10)
    return "worked"


def _both(ctx: tf.WorkflowContext) -> list[Any]:
    return [ctx.steps["r1"], ctx.steps["r2"]]


# -- first in, first out --------------------------------------------------------------------------

#: Branch ``a`` receives "go" twice; branch ``b`` waits 5 s on a timer, then works 10 s, which
#: keeps the instance in memory while ``a`` waits for its signals.
FIFO_FANOUT = (
    tf.workflow("fifo-fanout")
    .parallel("p", branches=[
        tf.branch("a").receive("r1", signal="go").receive("r2", signal="go")
        .pass_("both", transform=_both, end=True).build(),
        tf.branch("b").wait("t", seconds=5).step("work", _work_ten_seconds).build(),
    ])
    .build()
)


@pytest.mark.trio
async def test_signals_of_one_name_are_taken_in_the_order_stored_when_the_run_was_taken_up_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """FAILS ON CURRENT CODE.

    Promised (docs/waiting.md "First in, first out"; SPEC §13): "Signals of one name are taken
    in the order they were stored"; a receive step takes "the oldest stored signal of that name".

    Setup: both branches rest, so the instance leaves memory. At t=4.2 ``signal("go", "first")``
    is called; storage takes 3 s to store it (t=7.2). Meanwhile (t=4.5) the waker takes the
    instance up for branch b's timer; branch a's r1 reads the stored signals at once (none yet)
    and waits. "first" is stored at 7.2 (seq 1). At t=8 ``signal("go", "second")`` is called and
    stored (seq 2), and returns.

    Expected: r1 takes "first" (stored first), r2 takes "second".

    What happens: r1 takes "second" and r2 "first". ``Engine._deliver`` found a run of the
    instance live that was not the one live when ``signal()`` began (``run is not running``), and
    before handing it "first" reads ``adapter.signals()`` to check the seq is still pending (a
    run before may have taken it). That read takes a while (here 3 s); "second", sent to the
    live run meanwhile, is handed over at once (``running`` is that run) and taken by r1 while
    the older "first" sits stored, pending, and not yet handed to the run.
    """
    adapter = SlowSignalPath()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(FIFO_FANOUT)
        iid = await engine.start("fifo-fanout", {})
        await trio.sleep(4.2)
        assert iid not in engine._live, "both branches rest: the instance has left memory"

        async def send_first() -> None:
            adapter.slow_send = 3.0
            adapter.slow_read_after_send = 3.0
            await engine.signal(iid, "go", "first")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_first)
            await trio.sleep(0.6)
            assert iid in engine._live, "the waker took it up for branch b's timer"
            await trio.sleep(3.2)  # t=8.0: "first" was stored at 7.2
            assert adapter.stored == 1, "'first' is stored (pending, or taken by r1 already)"
            await engine.signal(iid, "go", "second")
        with trio.fail_after(100):
            done = await engine.wait(iid)
    assert done.status == "completed"
    assert done.output["a"] == ["first", "second"], (
        f"r1 must take the oldest stored signal: got {done.output['a']}")


def _late(ctx: tf.WorkflowContext) -> str:
    return "timed out"


TIMEOUT_FANOUT = (
    tf.workflow("timeout-fanout")
    .parallel("p", branches=[
        tf.branch("a").receive("r1", signal="go", timeout=6,
                               catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="late")])
        .succeed("got").step("late", _late, end=True).build(),
        tf.branch("b").wait("t", seconds=5).step("work", _work_ten_seconds).build(),
    ])
    .build()
)


@pytest.mark.trio
async def test_a_signal_stored_before_the_receive_deadline_is_taken_not_timed_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """FAILS ON CURRENT CODE (same root cause as the test above).

    Promised (docs/waiting.md "Timeout"): the step fails with SignalTimeoutError "if no signal
    came in time. 'In time' is when signal() had the signal stored (its adapter call returned),
    not when the run got to look".

    Setup: branch a's r1 waits for "go" with timeout=6 (deadline t=6); branch b keeps the
    instance in memory from t=4.5 (the waker takes it up for its timer at 5). ``signal("go")``
    is called at t=4.2 and is stored at t=5.7 (its adapter call returns then).

    Expected: r1 takes the payload (stored 0.3 s before its deadline).

    What happens: r1 times out (caught: "late"), and the payload stays pending for nobody.
    ``Engine._deliver`` holds the signal back from the live run while it reads
    ``adapter.signals()`` to check it is still pending (``run is not running``: the run was
    taken up from storage while the signal was being stored); the deadline passes meanwhile.
    """
    adapter = SlowSignalPath()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(TIMEOUT_FANOUT)
        iid = await engine.start("timeout-fanout", {})
        await trio.sleep(4.2)
        assert iid not in engine._live
        adapter.slow_send = 1.5
        adapter.slow_read_after_send = 1.0
        await engine.signal(iid, "go", "in time")  # (stored at 5.7; it returns at 6.7, once handed over)
        with trio.fail_after(100):
            done = await engine.wait(iid)
    assert done.status == "completed"
    assert done.output["a"] == "in time", (
        f"stored at t=5.7, before r1's deadline at t=6: got {done.output['a']!r}")


# -- SIGKILL of a real process --------------------------------------------------------------------

_KILL_CHILD = textwrap.dedent('''
    """Run: python child.py DB LOG run N  |  python child.py DB LOG resume N ACKED_JSON"""
    import json, os, sys
    import trio
    import trioflow as tf

    db, log_path, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    IDS = [f"k{i}" for i in range(n)]
    ITEMS = 3
    RECEIVES = ("item-r", "side-r")

    def log(line):
        os.write(fd, (line + "\\n").encode())

    def late(ctx):
        return "late"

    def workflow():
        item = (tf.branch("item")
                .receive("item-r", signal="go", timeout=3600,
                         catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="item-late")])
                .succeed("item-got").step("item-late", late, end=True).build())
        return (tf.workflow("fan")
                .parallel("p", branches=[
                    tf.branch("m").map("items", items=lambda ctx: list(range(ITEMS)), branch=item).build(),
                    tf.branch("side").receive("side-r", signal="go").build()])
                .build())

    async def run():
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
            engine.register(workflow())
            for iid in IDS:
                await engine.start("fan", instance_id=iid)
            while engine._live:  # every lane rests: they all leave memory
                await trio.sleep(0.05)
            print("parked", flush=True)

            async def sender(iid):
                for k in range(ITEMS + 1):
                    await engine.signal(iid, "go", f"{iid}:{k}")
                    log(f"ack {iid} {iid}:{k}")

            async with trio.open_nursery() as nursery:
                for iid in IDS:
                    nursery.start_soon(sender, iid)
            await trio.sleep_forever()

    async def resume(acked_path):
        acked = json.load(open(acked_path))
        out = {}
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
            engine.register(workflow())
            # The acknowledged signals must be taken without help (a pending signal gets its
            # instance resumed); then a top-up for whatever was not acknowledged.
            async def behind():
                for i in IDS:
                    inst = await engine.get_instance(i)
                    done = sum(1 for r in inst.history if r.step_name in RECEIVES and r.status == "completed")
                    if done < len(acked.get(i, [])):
                        return True
                return False

            still_behind = True
            with trio.move_on_after(3):
                while (still_behind := await behind()):
                    await trio.sleep(0.05)
            out["__behind__"] = still_behind
            for iid in IDS:
                missing = ITEMS + 1 - len(acked.get(iid, []))
                for k in range(missing):
                    try:
                        await engine.signal(iid, "go", f"{iid}:top{k}")
                    except tf.InstanceNotLiveError:
                        break
            with trio.move_on_after(5):
                for iid in IDS:
                    await engine.wait(iid)
            for iid in IDS:
                inst = await engine.get_instance(iid)
                out[iid] = {"status": inst.status,
                            "taken": [[r.step_name, r.status, r.output] for r in inst.history
                                      if r.step_name in RECEIVES],
                            "pending": len(await engine.adapter.signals(iid))}
        print(json.dumps(out))

    trio.run(run) if mode == "run" else trio.run(resume, sys.argv[5])
''')


def test_sigkill_while_signals_wake_parked_map_items_then_each_acknowledged_signal_is_taken_once(
    tmp_path: Path,
) -> None:
    """Passes on current code (pins it). Map items and a sibling branch each receive "go"
    (the items with a timeout and a catch); every instance has left memory (all lanes at rest)
    when the signals come, so each signal loads its instance back, one lane takes it, and it
    leaves again. The process is SIGKILLed mid-way; a new process on the same SQLite file must
    deliver every signal whose ``signal()`` returned exactly once, to a receive step that
    completed (none timed out: the deadline is an hour away), and none twice."""
    script = tmp_path / "child.py"
    script.write_text(_KILL_CHILD)
    db, log = tmp_path / "fan.db", tmp_path / "fan.log"
    n = 40
    child = subprocess.Popen([sys.executable, str(script), str(db), str(log), "run", str(n)],
                             stdout=subprocess.PIPE)
    assert child.stdout is not None

    def acks() -> list[list[str]]:
        lines = log.read_text().splitlines() if log.exists() else []
        return [line.split() for line in lines if line.startswith("ack ") and len(line.split()) == 3]

    try:
        assert child.stdout.readline().strip() == b"parked"
        deadline = time.monotonic() + 8
        while len(acks()) < n * 4 * 0.4:
            assert child.poll() is None, "the child died before it was killed"
            assert time.monotonic() < deadline, f"too few acknowledgements: {len(acks())}"
            time.sleep(0.002)
    finally:
        os.kill(child.pid, os_signal.SIGKILL)
        child.wait()
        child.stdout.close()
    acked: dict[str, list[str]] = {}
    for _, iid, payload in acks():
        acked.setdefault(iid, []).append(payload)
    assert 0 < sum(map(len, acked.values())) < n * 4, "the kill must land mid-way"
    acked_path = tmp_path / "acked.json"
    acked_path.write_text(json.dumps(acked))
    done = subprocess.run([sys.executable, str(script), str(db), str(log), "resume", str(n), str(acked_path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads(done.stdout)
    assert final.pop("__behind__") is False, "acknowledged signals must be taken with no new signal to wake them"
    seen: dict[str, int] = {}
    for iid, got in final.items():
        assert got["status"] == "completed", (iid, got)
        taken = [output for step, status, output in got["taken"] if status == "completed"]
        assert all(status == "completed" for _, status, _ in got["taken"]), (iid, got["taken"])
        assert len(taken) == 4, (iid, got["taken"])
        for payload in taken:
            seen[payload] = seen.get(payload, 0) + 1
        for payload in acked.get(iid, []):
            assert payload in taken, f"{iid}: acknowledged {payload} was not taken: {got}"
    twice = [p for p, count in seen.items() if count > 1]
    assert not twice, f"taken twice: {twice}"


# -- open_engine(resume=False) --------------------------------------------------------------------

_work_calls: list[float] = []


async def _work_long(ctx: tf.WorkflowContext) -> str:
    _work_calls.append(trio.current_time())
    await trio.sleep(100)
    return "worked"


IN_FLIGHT_FANOUT = (
    tf.workflow("in-flight-fanout")
    .parallel("p", branches=[
        tf.branch("a").receive("r", signal="go").build(),
        tf.branch("b").step("work", _work_long).build(),
    ])
    .build()
)


def test_a_signal_does_not_take_up_a_fanout_that_resume_false_holds_back(tmp_path: Path) -> None:
    """FAILS ON CURRENT CODE.

    Promised (docs/waiting.md "What survives a restart"; README "an engine opened on an
    adapter resumes ... (open_engine(resume=False) to opt out; engine.resume() to resume
    explicitly)"): with ``open_engine(resume=False)``, "that opt-out holds back only the
    instances an earlier engine left in flight (mid-step), until ``engine.resume()``"; a signal
    sent meanwhile is stored (and taken once the instance runs again).

    Setup, on a SQLite file: branch a waits for "go", branch b is in the middle of a 100 s task
    step when the engine stops (so storage says the instance runs: no wake time). The next
    engine is opened with ``resume=False``; ``signal("go")`` is sent to the instance.

    Expected: the signal is stored; the instance stays held back (not running here, its
    in-flight step not run again) until ``engine.resume()``.

    What happens: ``Engine._deliver`` -> ``_wake_if_waiting`` sees a lane waiting for "go" and
    ``_resume_one`` takes the instance up at once: branch b's in-flight step runs a second
    time, with no ``engine.resume()``. (An instance with one lane is never mid-step and waiting
    for a signal at once; only a fan-out can be taken up this way.)
    """
    _work_calls.clear()
    adapter = tf.adapters.SQLiteAdapter(tmp_path / "held.db")
    with engine_portal(setup=lambda e: e.register(IN_FLIGHT_FANOUT), adapter=adapter, resume=False) as portal:
        iid = portal.call(lambda e: e.start("in-flight-fanout", {}))
        portal.advance(5)
        assert len(_work_calls) == 1
        portal.restart(downtime=1)  # branch b's step was cut short: in flight
        assert portal.call(lambda e: iid in e._live) is False, "resume=False holds it back"
        portal.call(lambda e: e.signal(iid, "go", "x"))
        portal.advance(1)
        live = portal.call(lambda e: iid in e._live)
        assert (live, len(_work_calls)) == (False, 1), (
            f"held back by resume=False, yet taken up by a signal: live={live}, work ran {len(_work_calls)} times")
        # engine.resume() takes it up; the signal stored meanwhile is taken then.
        portal.call(lambda e: e.resume())
        portal.advance(101)
        done = portal.call(lambda e: e.get_instance(iid))
    assert done is not None and done.status == "completed" and done.output == {"a": "x", "b": "worked"}


# -- pinned: behaviour that held under review -----------------------------------------------------


def _item_list(ctx: tf.WorkflowContext) -> list[int]:
    return list(range(4))


SEQUENTIAL_ITEMS = (
    tf.workflow("sequential-items")
    .wait("first", seconds=10)
    .map("m", items=_item_list, max_concurrency=1,
         branch=tf.branch("item").receive("ir", signal="go", timeout=50,
                                          catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="il")])
         .succeed("ig").step("il", _late, end=True).build())
    .build()
)


def test_map_items_one_at_a_time_take_early_signals_in_the_order_stored_across_restarts(tmp_path: Path) -> None:
    """Passes (pins it). Signals sent while the instance waits on a timer before the map are
    kept; items that run one at a time take them first in, first out, across restarts on a
    SQLite file (the engine stops between the signals, and again while items wait); a signal
    that comes later than an item's timeout goes to the next item, and the item that timed out
    is caught, not given a payload too."""
    adapter = tf.adapters.SQLiteAdapter(tmp_path / "items.db")
    with engine_portal(setup=lambda e: e.register(SEQUENTIAL_ITEMS), adapter=adapter) as portal:
        iid = portal.call(lambda e: e.start("sequential-items", {}))
        portal.call(lambda e: e.signal(iid, "go", "s1"))
        portal.restart(downtime=2)
        portal.call(lambda e: e.signal(iid, "go", "s2"))
        portal.advance(10)  # the map starts: items 0 and 1 take s1 and s2 at once
        portal.restart(downtime=60)  # item 2 waited since t=12: its timeout passed while stopped
        portal.call(lambda e: e.signal(iid, "go", "s3"))  # for item 3
        portal.advance(1)
        done = portal.call(lambda e: e.get_instance(iid))
        assert done is not None
        pending = portal.call(lambda e: e.adapter.signals(iid))
    assert done.status == "completed"
    assert done.output == ["s1", "s2", "timed out", "s3"]
    assert pending == []


CANCEL_FANOUT = (
    tf.workflow("cancel-fanout")
    .parallel("p", branches=[
        tf.branch("a").receive("ra", signal="go", timeout=100).build(),
        tf.branch("b").map("m", items=_item_list, branch=tf.branch("i").receive("ir", signal="go").build()).build(),
    ])
    .build()
)


def test_cancel_of_a_parked_fanout_then_a_signal_is_refused_and_what_was_taken_stays_taken(tmp_path: Path) -> None:
    """Passes (pins it). A fan-out of receives out of memory, on a SQLite file, after a
    restart: two signals are taken (it is loaded back for each and leaves again), then
    ``cancel()`` says yes; a signal after that raises ``InstanceNotLiveError`` and stores
    nothing, and the two taken stay recorded as taken, once each."""
    adapter = tf.adapters.SQLiteAdapter(tmp_path / "cancel.db")
    with engine_portal(setup=lambda e: e.register(CANCEL_FANOUT), adapter=adapter) as portal:
        iid = portal.call(lambda e: e.start("cancel-fanout", {}))
        portal.advance(5)
        assert portal.call(lambda e: iid in e._live) is False
        portal.restart(downtime=3)
        for payload in ("s1", "s2"):
            portal.call(lambda e: e.signal(iid, "go", payload))
            portal.advance(5)
            assert portal.call(lambda e: iid in e._live) is False, "it leaves memory again"
        assert portal.call(lambda e: e.cancel(iid)) is True
        with pytest.raises(tf.InstanceNotLiveError):
            portal.call(lambda e: e.signal(iid, "go", "s3"))
        done = portal.call(lambda e: e.get_instance(iid))
        pending = portal.call(lambda e: e.adapter.signals(iid))
    assert done is not None and done.status == "cancelled"
    taken = sorted(r.output for r in done.history if r.step_name in ("ra", "ir") and r.status == "completed")
    assert taken == ["s1", "s2"]
    assert pending == []
