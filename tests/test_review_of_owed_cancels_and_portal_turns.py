"""From an adversarial re-review of add02a1 (owed cancels of a row stored from before) and
70541d2 (engine_portal from several threads). Each test failed until the commit that added
this file. Real adapters, trio's autojumping MockClock (or the portal's own clock): no real
sleeps in what is asserted."""
from __future__ import annotations

import functools
import threading
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import engine_portal, open_test_engine

from slow_starts import SlowStarts, card, noting

T0 = 1_800_000_000.0


@pytest.mark.parametrize("close_at", [12.0, 30.0], ids=["closed-before-the-store-ends", "open-throughout"])
def test_owed_cancel_of_a_row_from_before_is_honoured_when_the_next_process_clock_is_behind(close_at: float) -> None:
    """A service stored card instance ``c`` (a delayed charge) and stopped. Its next process
    (``resume=False``) runs on a host whose wall clock is a minute behind (an NTP step back, or
    another host of the service with skew). A client's retry calls ``start("card", "x",
    instance_id="c")`` (idempotent); storage is slow (15 s) and loses the answer after writing.
    The customer calls ``cancel("c")`` at 0.1 s: it waits 10 s and says True. README (cancel):
    an instance whose start was still being stored is cancelled once that store is over, also
    when the engine closes first. add02a1 says the row "found stored from before" is cancelled,
    "whatever the wall clock says". A Temporal user: an acknowledged cancel of id ``c`` holds.

    Was: the row was told "from before" by ``created_at <= cancel_owed``, wall-clock readings
    of two different processes (runtime/_engine.py ``_owed_cancel_of`` and
    ``_store_cancel_in_its_row``); the old row's creation time was later than this process's
    clock at the cancel, so nothing was cancelled and the next engine charged the card."""
    log: list[str] = []
    wf = card(log)
    one = SlowStarts()
    said: list[Any] = []
    back = {"by": 0.0}

    def clock() -> float:
        return T0 + trio.current_time() - back["by"]

    call = noting(said)

    async def main() -> Any:
        async with open_test_engine(adapter=one, clock=clock) as engine:
            engine.register(wf)
            await engine.start("card", "x", instance_id="c", delay=1000)
        back["by"] = 60.0  # the next process's wall clock is a minute behind
        one.slow = one.lose = True
        async with trio.open_nursery() as nursery:
            async with open_test_engine(adapter=one, resume=False, clock=clock) as engine:
                engine.register(wf)
                nursery.start_soon(functools.partial(call, engine.start, "card", "x", instance_id="c"))
                await trio.sleep(0.1)
                nursery.start_soon(call, engine.cancel, "c")
                await trio.sleep(close_at - 0.1)
        one.slow = one.lose = False
        async with open_test_engine(adapter=one, clock=clock) as engine:
            engine.register(wf)
            with trio.fail_after(5000):
                return await engine.wait("c")

    done = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert True in said, said  # cancel() acknowledged it
    assert log == [], f"the card was charged after cancel() said True: {log}"
    assert done.status == "cancelled"


class _FailsTheOwedCancelsRead(SlowStarts):
    """Once ``fail_loads`` is set, the next read of ``c`` fails (a transient storage error)."""

    fail_loads = 0

    async def load(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if self.fail_loads and instance_id == "c":
            self.fail_loads -= 1
            raise tf.StorageUnavailableError("read failed (transient)")
        return await super().load(instance_id, *args, **kwargs)


def test_owed_cancel_is_not_dropped_for_good_by_one_failed_read_while_the_engine_stays_open() -> None:
    """As in add02a1's tests: card ``c`` stored (delayed) by a process before; the next process
    (``resume=False``) gets a client's idempotent retry of its start; storage is slow (15 s) and
    loses the answer; ``cancel("c")`` says True at 10.1 s. Just as the store ends, one read of
    ``c`` fails (a transient ``StorageUnavailableError``); the engine then stays open 185 s more.
    README (cancel): the decision "stands in this engine, and is stored as soon as it can be";
    an instance whose start was being stored "is cancelled once that store is over". A
    Temporal user: an acknowledged cancel survives a transient database error.

    Was: ``_owed_cancel_of`` (runtime/_engine.py, the ``except TrioflowError`` around
    ``_load_fresh``) read the row once; the failed read is logged ("could not be cancelled")
    and the cancel dropped, nothing retried nor kept: the next engine charged the card and
    completed ``c``."""
    log: list[str] = []
    wf = card(log)
    one = _FailsTheOwedCancelsRead()
    said: list[Any] = []
    call = noting(said)

    async def main() -> Any:
        async with open_test_engine(adapter=one) as engine:
            engine.register(wf)
            await engine.start("card", "x", instance_id="c", delay=1000)
        one.slow = one.lose = True
        async with trio.open_nursery() as nursery:
            async with open_test_engine(adapter=one, resume=False) as engine:
                engine.register(wf)
                nursery.start_soon(functools.partial(call, engine.start, "card", "x", instance_id="c"))
                await trio.sleep(0.1)
                nursery.start_soon(call, engine.cancel, "c")
                await trio.sleep(14.8)
                one.fail_loads = 1  # the next read of "c" (the owed cancel's) fails once
                await trio.sleep(185)
        one.slow = one.lose = False
        one.fail_loads = 0
        async with open_test_engine(adapter=one) as engine:
            engine.register(wf)
            with trio.fail_after(5000):
                return await engine.wait("c")

    done = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert True in said, said
    assert log == [], f"the card was charged after cancel() said True: {log}"
    assert done.status == "cancelled"


# -- engine_portal (70541d2) ---------------------------------------------------------------------


def _one(ctx: Any) -> int:
    return 1


_W = tf.workflow("w").step("s", _one).build()


def test_portal_restart_from_another_thread_as_the_block_is_left_does_not_hang_the_exit() -> None:
    """docs/testing.md (engine_portal): "calls from several threads each run, and restart()s
    take turns [...] a call under way as the block is left returns (or raises) what its function
    did"; "Leaving the block closes the engine". A request thread calls ``portal.restart()``;
    while its new engine opens (``setup`` running), the test's thread leaves the block. The user
    expects the block's exit to return (and the restart to return or raise
    ``EngineClosedError``).

    Was: both hung for ever. The exit set ``run.reopened = None`` from the caller's thread and
    set the *old* engine's ``run.stop`` (already set by the restart); ``main`` opened the
    restart's engine, found ``run.reopened`` None so never woke the restart, and waited on the
    new ``run.stop``, which nobody set. (The test's thread joins the block's thread with a 20 s
    bound only to see a hang; the threads are daemons.)"""
    import time

    opened = [0]
    holder: list[Any] = []
    in_second, leaving = threading.Event(), threading.Event()
    outcome: dict[str, str] = {}

    async def setup(engine: tf.Engine) -> None:
        engine.register(_W)
        opened[0] += 1
        if opened[0] == 2:  # the restart's engine opens: wait till the block is being left
            in_second.set()

            def until_left() -> None:
                leaving.wait(20)
                time.sleep(0.05)  # (let the exit go on)

            await trio.to_thread.run_sync(until_left)

    def restarter() -> None:
        try:
            holder[0].restart()
            outcome["restart"] = "returned"
        except tf.EngineClosedError:
            outcome["restart"] = "EngineClosedError"

    restarting = threading.Thread(target=restarter, daemon=True)

    def block() -> None:
        with engine_portal(setup=setup) as portal:
            holder.append(portal)
            restarting.start()
            in_second.wait(20)
            leaving.set()
        outcome["block"] = "left"

    thread = threading.Thread(target=block, daemon=True)
    thread.start()
    thread.join(20)
    assert outcome.get("block") == "left", f"leaving the portal's block hangs: {outcome}"
    restarting.join(20)  # (it returns as the block's exit does: its thread notes it just after)
    assert outcome.get("restart") in ("returned", "EngineClosedError"), outcome


def test_portal_call_from_another_thread_during_a_restart_is_not_told_the_engine_is_closed() -> None:
    """docs/testing.md: "calls from several threads each run, and restart()s take turns"; "a
    portal called after that [the block is left] raises EngineClosedError"; a restart is "a
    process that stops and starts again". One request thread restarts the portal; another
    calls ``get_instance("a")`` while the new engine is opening (its ``setup`` running). The
    block is open: the user expects the call to run, on the engine that opens (as a client's
    request waits for the restarted service), or at least not be told the portal is closed.

    Was: ``call`` handed the function ``self._engine``, the engine just closed (it is
    swapped only once the next one has opened: runtime/testing/_portal.py ``main``,
    ``handed[0]._engine = engine``), and nothing orders calls after a restart under way
    (``_restarting`` is held only by restarts): the call raised ``EngineClosedError``, which
    the docs give for a portal whose block has ended."""
    opened = [0]
    in_second = threading.Event()
    ran = threading.Event()
    out: dict[str, Any] = {}

    async def setup(engine: tf.Engine) -> None:
        engine.register(_W)
        opened[0] += 1
        if opened[0] == 2:
            in_second.set()
            await trio.to_thread.run_sync(ran.wait, 5)  # till the call has run (5 s bound if it waits)

    def get_a(engine: tf.Engine) -> Any:
        ran.set()
        return engine.get_instance("a")

    with engine_portal(setup=setup) as portal:
        portal.call(lambda e: e.start("w", instance_id="a"))
        restarter = threading.Thread(target=portal.restart)
        restarter.start()
        assert in_second.wait(20)

        def caller() -> None:
            try:
                out["call"] = portal.call(get_a).status
            except tf.TrioflowError as exc:
                out["call"] = type(exc).__name__

        calling = threading.Thread(target=caller)
        calling.start()
        calling.join(30)
        restarter.join(30)
    assert out.get("call") == "completed", out
