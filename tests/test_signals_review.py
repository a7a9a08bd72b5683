"""Signal delivery, an adversarial review (SPEC §13, README, docs/waiting.md); each test failed
before its fix. All run on trio's autojumping MockClock (pytest-trio's ``autojump_clock``) with
trioflow's virtual wall clock: no real sleeps.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock


class SlowFirstLoad(MemoryAdapter):
    """A MemoryAdapter whose next ``load()`` takes ``slow_next`` (virtual) seconds once it is
    set: the read latency any real store can have (a busy database, a network round trip).
    Nothing else about it differs from MemoryAdapter, so it keeps the adapter protocol."""

    def __init__(self) -> None:
        super().__init__()
        self.slow_next = 0.0

    async def load(self, instance_id: str) -> Any:
        delay, self.slow_next = self.slow_next, 0.0
        if delay:
            await trio.sleep(delay)
        return await super().load(instance_id)


async def _slow_step(data: Any) -> str:
    await trio.sleep(20)  # virtual: the run is in memory (live) meanwhile
    return "slow"


async def test_a_signal_is_not_delivered_again_to_a_later_run_of_the_instance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """SPEC §13 / docs/waiting.md "Consumed once": "Once signal() has returned, a signal is never
    lost and never taken twice"; signals of one name are taken first in, first out.

    What a user expects: r1 takes "a", r2 takes "b", r3 takes "c", and r4 (whose signal never
    comes) times out into its catch; the instance completes, and "a" is received exactly once.

    What happens instead: ``engine.signal(iid, "x", "a")`` finds the instance parked and, in
    ``Engine._wake_if_waiting``, reads its row. While that read is in flight another signal
    resumes the instance, that run takes "a" and "b", consumes them in storage and leaves
    memory again, and a third signal resumes it once more (a new ``Run``, which never saw "a").
    When the first call's (re-)read returns, ``_wake_if_waiting`` sees the instance live and
    hands that run back, and ``signal()`` delivers "a" to it with ``run.deliver(seq, ...)``
    without checking that the seq is still pending in the row it just read. The new run does
    not know the seq was consumed by the run before it, so r4 takes "a" a second time; the
    checkpoint consuming it is refused (``CheckpointConflictError: [1] not pending``), the
    instance crashes with an internal error whose failure cannot be stored either, and it stays
    ``running`` in storage (``wait()`` raises InstanceNotLiveError). The only "fault" injected
    is read latency on ``load()``; a MemoryAdapter subclass is used to make the interleaving
    deterministic.
    """
    wf = (tf.workflow("w")
          .receive("r1", signal="x")
          .receive("r2", signal="x")
          .receive("r3", signal="y")
          .task("slow", job=_slow_step)
          .receive("r4", signal="x", timeout=100, catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="done")])
          .end("done")
          .build())
    adapter = SlowFirstLoad()
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(10)  # r1 waits out of memory (a wait without timeout parks)
        with trio.fail_after(10**5):
            async with trio.open_nursery() as nursery:
                adapter.slow_next = 10.0  # the read this signal() makes is slow
                nursery.start_soon(engine.signal, iid, "x", "a")
                await trio.sleep(1)
                await engine.signal(iid, "x", "b")  # resumes it: r1 takes "a", r2 "b", r3 parks
                await trio.sleep(2)
                await engine.signal(iid, "y", "c")  # resumes it again: r3 takes "c", "slow" runs
            try:
                done = await engine.wait(iid)
            except tf.InstanceNotLiveError as exc:
                pytest.fail(f"the instance crashed instead of completing: {exc}")
        received = [(r.step_name, r.output) for r in done.history if r.step_name.startswith("r")]
    assert done.status == "completed", done.error
    assert [out for _, out in received].count("a") == 1, f"signal 'a' was taken twice: {received}"
    assert received[:3] == [("r1", "a"), ("r2", "b"), ("r3", "c")]
    assert done.step_results["r4"].status == "caught"


async def test_a_receive_for_a_signal_name_that_cannot_be_stored_is_refused_or_fails_cleanly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``engine.signal`` refuses a signal name that is not valid text (a lone surrogate) with
    InvalidArgumentError, and ``build()`` refuses a *step* name with a lone surrogate ("step name
    '\\ud800' is not valid text"). SPEC §12: "Nothing is left `running` forever."

    What a user expects: ``.receive("r", signal="\\ud800")`` is refused by ``build()`` with a
    DefinitionError (it waits for a signal nobody can ever send), or at the very least the
    instance ends (failed) with an error naming the problem.

    What happens instead: ``build()`` accepts it (``_validate`` checks only that the signal is a
    non-empty str not starting with "trioflow."). When the step starts waiting, the header
    holding ``waiting={"signal": "\\ud800"}`` cannot be encoded: the instance actor crashes
    ("internal error"), its failure cannot be stored either, and it stays ``running`` in storage
    for good; ``wait()`` raises InstanceNotLiveError.
    """
    try:
        wf = tf.workflow("w").receive("r", signal="\ud800", timeout=5).build()
    except tf.DefinitionError:
        return  # refused up front: what a user expects
    async with open_test_engine(adapter=MemoryAdapter(), clock=virtual_wall_clock()) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        with trio.fail_after(10**5):
            try:
                done = await engine.wait(iid)
            except tf.InstanceNotLiveError as exc:
                pytest.fail(f"build() accepted the receive step, and the instance is stuck running: {exc}")
    assert done.status == "failed"
