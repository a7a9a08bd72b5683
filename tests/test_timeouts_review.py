"""How workflow timeouts, durable waits, engine.wait() and restarts interact, an adversarial
review (each test failed before its fix; each docstring says what a user expects). All run on
trio's MockClock (virtual time)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


class OneSlowLoad(tf.adapters.MemoryAdapter):
    """One load reads the row at once and hands it back 5 s later, as a load queued behind
    other work can (the same adapter tests/test_waiting_review.py uses to show the engine must
    cope with a row that is stale by the time it arrives)."""

    slow_next = False

    async def load(self, instance_id: str) -> Any:
        record = await super().load(instance_id)
        if self.slow_next:
            self.slow_next = False
            await trio.sleep(5)
        return record


async def test_wait_on_a_parked_instance_that_ends_while_its_row_is_read_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """README ("The engine"): `wait()` returns once the instance's end is stored;
    docs/waiting.md: "`wait()` follows it across: it returns once the woken run has ended".

    Here the instance is parked on a 10 s timer and `wait()` is called at t=8. `wait()` reads
    the row through `get_instance()` -> `adapter.load()` (a plain load, not the engine's own
    `_load_fresh`, which exists for exactly this race). While that read is in flight the timer
    fires, the waker resumes the instance and it completes (t=10). The read comes back at
    t=13 with the row as it was (still waiting on its timer), and since the instance is no
    longer in `_live`, `wait()` parks on `_next_run[iid]`, an event nothing will ever set:
    `wait()` hangs forever on an instance that completed. (Expected: it returns the completed
    instance.)"""
    wf = tf.workflow("w").wait("t", seconds=10).pass_("p", result="done").build()
    adapter = OneSlowLoad()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("w")
        await trio.sleep(8)  # parked: the timer is due at t=10
        adapter.slow_next = True  # wait()'s read comes back after the run has ended
        with trio.fail_after(1000):
            done = await engine.wait(iid)
    assert done.status == "completed" and done.output == "done"
