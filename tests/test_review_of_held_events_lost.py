"""Review of 52954d1: the last step's held events are taken off the run as its terminal
checkpoint begins and dropped if that write raises; ``not_taken`` puts the step's record back,
so the run's next checkpoint (its failure, stored by the instance actor) stores the step's
completion, and its ``workflow.step.completed`` never goes out (README: "goes out once its
completion is stored, the main line's last step's once the instance's end is")."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine


class FailsFirstEnd(MemoryAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def checkpoint(self, instance_id: str, status: str, *args: Any, **kwargs: Any) -> Any:
        if status == "completed" and not self.failed:
            self.failed = True
            raise RuntimeError("a bug in the adapter")  # not retried: the instance fails alone
        return await super().checkpoint(instance_id, status, *args, **kwargs)


async def _ok(_: Any) -> str:
    return "ok"


async def test_last_step_stored_completed_is_published(autojump_clock: trio.testing.MockClock) -> None:
    events: list[dict[str, Any]] = []
    adapter = FailsFirstEnd()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("two").step("first", _ok).step("last", _ok).build())
        engine.events.on("workflow.*", events.append)
        iid = await engine.start("two")
        done = await engine.wait(iid)
        await trio.sleep(1)
    steps = [r.step_name for r in done.history if r.status == "completed"]
    stored = await adapter.load(iid)
    assert stored is not None and done.status == "failed"
    published = [e.get("step_name") for e in events if e["event"] == "workflow.step.completed"]
    assert "last" in steps, steps  # the failure checkpoint stored the last step completed
    assert published == ["first", "last"], f"published {published}; stored steps {steps}"
