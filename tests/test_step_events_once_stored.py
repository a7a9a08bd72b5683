"""``workflow.step.completed`` and ``workflow.progress`` for a step go out once the step's
completion is stored, also for the main line's last step, which has no checkpoint of its own
(the instance's terminal checkpoint stores it): a subscriber that acts on the event never sees
a completion a crash then takes back (the restart would run that step again, and publish it
again). Found by the timing soak (tests/test_review_of_timing_soak.py), which killed an engine
while a terminal write was in flight, after the event had gone out."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine


class WatchedTerminalWrite(MemoryAdapter):
    """A MemoryAdapter that notes the events published so far as each terminal checkpoint
    begins, and fails that checkpoint (as a process killed during it would leave it) while
    ``fail_ends`` is set."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        super().__init__()
        self.events = events
        self.at_terminal: list[list[str]] = []
        self.fail_ends = False

    async def checkpoint(self, instance_id: str, status: str, *args: Any, **kwargs: Any) -> Any:
        if status in ("completed", "failed", "cancelled", "timed_out", "compensated"):
            self.at_terminal.append([_name(e) for e in self.events])
            await trio.sleep(0.5)  # a write that takes a while: nothing may go out meanwhile
            if self.fail_ends:
                raise RuntimeError("the disk went away")
        return await super().checkpoint(instance_id, status, *args, **kwargs)


def _name(event: dict[str, Any]) -> str:
    return f"{event['event']}:{event.get('step_name', '')}"


async def _ok(_: Any) -> str:
    return "ok"


FLOW = tf.workflow("two").step("first", _ok).step("last", _ok).build()


async def test_the_last_steps_events_wait_for_the_terminal_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[dict[str, Any]] = []
    adapter = WatchedTerminalWrite(events)
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(FLOW)
        engine.events.on("workflow.*", events.append)
        done = await engine.wait(await engine.start("two"))
    assert done.status == "completed"
    assert adapter.at_terminal == [["workflow.started:", "workflow.step.started:first", "workflow.step.completed:first",
                                    "workflow.progress:", "workflow.step.started:last"]]
    assert [_name(e) for e in events][5:] == ["workflow.step.completed:last", "workflow.progress:",
                                              "workflow.completed:"]
    assert events[-2]["progress"] == 100


async def test_a_terminal_checkpoint_that_fails_publishes_nothing_of_the_last_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The end is not stored: a restart runs 'last' again and publishes its completion then,
    once: the subscriber sees it once in all."""
    events: list[dict[str, Any]] = []
    adapter = WatchedTerminalWrite(events)
    adapter.fail_ends = True
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(FLOW)
        engine.events.on("workflow.*", events.append)
        iid = await engine.start("two")
        await trio.sleep(5)
    assert "workflow.step.completed:last" not in [_name(e) for e in events]
    adapter.fail_ends = False
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(FLOW)
        engine.events.on("workflow.*", events.append)
        done = await engine.wait(iid)
    assert done.status == "completed"
    assert [_name(e) for e in events].count("workflow.step.completed:last") == 1
