"""From a review that drove ``trioflow.testing.engine_portal`` on a SQLite file from several
threads, as a synchronous payments service would (request threads start, signal, cancel and
list; the process restarts and is SIGKILLed between phases). Each test but the last failed
until the commit that added this file; the last guards what held under SIGKILL. (A call that
waits for another thread's call is a limit of a portal whose time stands still: docs/testing.md.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import trio

import trioflow as tf
from trioflow.testing import engine_portal

HERE = Path(__file__).parent

confirmation = (tf.workflow("confirmation")
                .receive("confirm", signal="confirmed", timeout=3_600)
                .end("done")
                .build())


def test_the_first_call_after_a_portal_opens_on_a_file_sees_the_resumed_runs_settled(tmp_path: Path) -> None:
    """A service restarts on its SQLite file: a capture was in flight when the last process
    stopped. It opens ``engine_portal(setup=..., adapter=SQLiteAdapter(file))`` and its first
    request reads the payment. docs/testing.md: every call "returns, or raises, once the engine
    has done all it can at that virtual instant", and ``restart()`` "returns once the new engine
    has done all it can at that instant"; opening the portal on a file is the same restart, so
    the resumed capture (which can finish at once) is expected completed in the first read.
    Was: the first call saw it ``running`` in ``capture`` (the portal handed itself out
    before the resumed runs settled; the result was read before the call's own settle); the
    same call a moment later said ``completed``."""
    db = tmp_path / "payments.db"

    async def gateway_down(data: Any) -> None:
        await trio.sleep_forever()

    capture = tf.workflow("capture").task("capture", job="capture").end("done").build()
    with engine_portal(setup=lambda e: (e.jobs.register("capture", gateway_down), e.register(capture)),
                       adapter=tf.adapters.SQLiteAdapter(db)) as portal:
        portal.call(lambda e: e.start("capture", {"amount": 10}, instance_id="pay-1"))
    # The service starts again; the gateway answers now.
    with engine_portal(setup=lambda e: (e.jobs.register("capture", lambda data: "captured"), e.register(capture)),
                       adapter=tf.adapters.SQLiteAdapter(db)) as portal:
        first = portal.call(lambda e: e.get_instance("pay-1"))
        second = portal.call(lambda e: e.get_instance("pay-1"))
        assert second is not None and second.status == "completed"
        assert first is not None and first.status == "completed", (first.status, first.current_step)


def test_two_request_threads_restarting_the_portal_at_once_both_return(tmp_path: Path) -> None:
    """Two admin threads of the service restart the engine at the same moment (a config reload
    from two places). The user expects both ``portal.restart()`` calls to return (two restarts,
    or one refused with a clear trioflow error). Was: one returned and the other hung for
    ever: ``_Run.reopened`` was overwritten by the second restart, and the event the first waited
    for never set."""
    with engine_portal(setup=lambda e: e.register(confirmation), adapter=tf.adapters.SQLiteAdapter(tmp_path / "f.db")) as portal:
        portal.call(lambda e: e.start("confirmation", {}, instance_id="sub-1"))
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def restart() -> None:
            barrier.wait()
            try:
                portal.restart(downtime=1)
                outcomes.append("returned")
            except tf.TrioflowError as exc:
                outcomes.append(type(exc).__name__)

        threads = [threading.Thread(target=restart, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)  # (a bound on a hang, not a timing assertion)
        hung = [t for t in threads if t.is_alive()]
        assert not hung, f"{len(hung)} of the two restart() calls never returned; outcomes: {outcomes}"


def test_a_signal_stored_while_the_service_shuts_down_is_not_reported_as_refused(tmp_path: Path) -> None:
    """A webhook thread signals a subscription ("confirmed", with a refund) while the service
    leaves its ``engine_portal`` block (shutdown). The signal is stored and later taken by the
    instance, yet the webhook's ``portal.call`` raises ``EngineClosedError("the engine_portal's
    block has ended: its engine is closed")``: the webhook answers 5xx, the sender retries, and
    the retry is a second signal (a second refund). A user expects an error only when nothing
    was done, or a result. Was: the call's own work (``signal`` returned) succeeded; the
    portal's settle after it was cancelled by the run's end, and ``_in_run`` turned that
    ``trio.Cancelled`` into EngineClosedError."""
    db = tmp_path / "subs.db"
    release = threading.Event()

    async def busy_ledger(data: Any) -> str:
        # A step still at work when the service stops (it keeps the engine from settling).
        try:
            while not release.is_set():
                await trio.sleep(0)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                for _ in range(200):
                    await trio.sleep(0)
            raise
        return "booked"

    wf = (tf.workflow("refund").receive("confirm", signal="confirmed", timeout=3_600)
          .task("ledger", job="ledger").end("done").build())
    outcome: dict[str, str] = {}
    with engine_portal(setup=lambda e: (e.jobs.register("ledger", busy_ledger), e.register(wf)),
                       adapter=tf.adapters.SQLiteAdapter(db)) as portal:
        portal.call(lambda e: e.start("refund", {}, instance_id="sub-7"))
        stored = threading.Event()

        async def webhook(engine: tf.Engine) -> None:
            await engine.signal("sub-7", "confirmed", {"refund": 5})
            stored.set()

        def thread() -> None:
            try:
                portal.call(webhook)
                outcome["webhook"] = "ok"
            except tf.TrioflowError as exc:
                outcome["webhook"] = repr(exc)

        t = threading.Thread(target=thread)
        t.start()
        stored.wait()
    t.join(15)
    release.set()
    with engine_portal(setup=lambda e: (e.jobs.register("ledger", lambda data: "booked"), e.register(wf)),
                       adapter=tf.adapters.SQLiteAdapter(db)) as portal:
        portal.call(lambda e: None)
        instance = portal.call(lambda e: e.get_instance("sub-7"))
    assert instance is not None and instance.step_results["confirm"].output == {"refund": 5}  # it was delivered
    assert outcome["webhook"] == "ok", outcome["webhook"]


def test_guard_sigkill_mid_poll_loop_resumes_and_compensates_each_iteration_once(tmp_path: Path) -> None:
    """(A guard of what held, but for its first read, which needed the portal to settle as it
    opens.) A process polling a settlement in a choice loop is SIGKILLed in its
    third poll; the service opens a portal on the file: the poll runs again (at-least-once),
    the loop leaves, ``settle`` fails, and every poll execution is compensated once, newest
    first, then ``authorize``: the compensation calls carry each iteration's own output."""
    db, marker = tmp_path / "payments.db", tmp_path / "marker"
    child = subprocess.run([sys.executable, str(HERE / "portal_poll_kill_child.py"), str(db), str(marker)],
                           timeout=60, capture_output=True)
    assert child.returncode == -signal.SIGKILL and marker.exists(), child.stderr.decode()[-2000:]
    undone: list[tuple[str, Any]] = []

    def refuse(data: Any) -> None:
        raise PermissionError("settlement refused")

    jobs = {"authorize": lambda d: {"auth": "again"}, "void": lambda d: undone.append(("void", d)),
            "poll": lambda d: {"hold": 3}, "unhold": lambda d: undone.append(("unhold", d)), "settle": refuse}
    payment = (tf.workflow("payment")
               .task("authorize", job="authorize", compensate="void")
               .task("poll", job="poll", compensate="unhold")
               .choice("settled?", choices=[tf.when(lambda ctx: ctx.steps["poll"]["hold"] >= 3, next="settle")],
                       default="poll")
               .task("settle", job="settle")
               .build())

    def setup(engine: tf.Engine) -> None:
        for name, job in jobs.items():
            engine.jobs.register(name, job)
        engine.register(payment)

    with engine_portal(setup=setup, adapter=tf.adapters.SQLiteAdapter(db)) as portal:
        instance = portal.call(lambda e: e.get_instance("p1"))
    assert instance is not None and instance.status == "failed" and instance.failed_step == "settle"
    assert instance.compensated_steps == ("poll", "poll", "poll", "authorize")
    assert undone == [("unhold", {"hold": 3}), ("unhold", {"hold": 2}), ("unhold", {"hold": 1}),
                      ("void", {"auth": "A-p1"})]
    assert [r.execution for r in instance.history if r.step_name == "poll"] == [1, 2, 3]
