"""From an adversarial review of 8adf7e2 (a child hold let go of for now, to wait for its
workflow's registration, runs its owed cancel at once, and the next hold takes the debt on too).

No bug was found: every test here passes on 8adf7e2. They are kept as guards of what the review
checked (see /tmp/h32/REPORT.md): the owed cancel now acts twice (once at the release for now,
once when the next hold is let go of), and the second action must be a no-op: the child is
cancelled and compensated once, with one ``workflow.cancelled`` event and one ``on_failed`` hook,
whichever order trio runs the registration's wake-ups in, and whether the child waited for its
workflow or only for a job it uses. All on trio's MockClock, no real sleeps.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine

undone: list[str] = []


async def _do(ctx: Any) -> int:
    return 1


async def _undo(ctx: Any, result: Any) -> None:
    undone.append("saga")


async def _undo_output(output: Any) -> None:
    undone.append("task")


async def _long(ctx: Any) -> int:
    await trio.sleep(1000)
    return 2


class KidRanThenSlowSignalReadOfP(MemoryAdapter):
    """Engine 1: once ``p/kid#1`` is created, ``p``'s checkpoints take 5 s (the child runs its
    first step before its parent lists it as stored). Engine 2 (``slow_signals``): reading
    ``p``'s signals takes 15 s, so the resumed child step holds ``p/kid#1`` that long."""

    slow_signals = False
    kid_created = False

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        created = await super().create(instance_id, *args, **kwargs)
        if instance_id == "p/kid#1":
            self.kid_created = True
        return created

    async def checkpoint(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id == "p" and self.kid_created and not self.slow_signals:
            await trio.sleep(5)
        return await super().checkpoint(instance_id, *args, **kwargs)

    async def signals(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id == "p" and self.slow_signals:
            await trio.sleep(15)
        return await super().signals(instance_id, *args, **kwargs)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cancel_at", [7.5, 21.0])
@pytest.mark.parametrize("register_at", [0.0, 30.0])
@pytest.mark.parametrize("missing", ["workflow", "job"])
@pytest.mark.parametrize("cancel_parent", [False, True])
async def test_an_owed_cancel_run_at_a_release_for_now_and_again_at_the_next_release_acts_once(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
    seed: int, cancel_at: float, register_at: float, missing: str, cancel_parent: bool,
) -> None:
    """README, The engine: ``cancel()`` "cancels the running step [...] and then compensates";
    "a repeated call waits for the same and says ``True`` too"; Events: an instance "ends with
    [...] ``workflow.cancelled``"; Hooks: ``on_failed(result)`` once its end is stored.

    ``p/kid#1`` ran its compensable first step under a first engine that closed before ``p``
    stored that it started it. A second engine takes ``p`` up with "kid" (or kid's job) not
    registered: ``cancel("p/kid#1")`` waits on the step's hold (owed, or not, by when it is
    made), the step lets go of it for now (its owed cancel stored in the child), then the
    registration comes and the next hold is let go of (the debt acts again). The child is
    cancelled and compensated once: one undo, one ``workflow.cancelled``, one ``on_failed``."""
    monkeypatch.setattr(trio._core._run, "_ALLOW_DETERMINISTIC_SCHEDULING", True)
    monkeypatch.setattr(trio._core._run, "_r", random.Random(seed))
    undone.clear()
    failed: list[Any] = []
    adapter = KidRanThenSlowSignalReadOfP()
    kid = (tf.workflow("kid").task("a", job="do-a", compensate=_undo_output).step("b", _long)
           .with_hooks(on_failed=failed.append).build())
    dad = tf.workflow("dad").step("x", _do, _undo).child("kid", workflow="kid").build()
    async with open_test_engine(adapter=adapter) as engine:
        engine.jobs.register("do-a", _do)
        engine.register(kid)
        engine.register(dad)
        await engine.start("dad", instance_id="p")
        await trio.sleep(3)
    stored = await adapter.load("p/kid#1")
    assert stored is not None and stored.status == "running"
    adapter.slow_signals = True
    events: list[tuple[Any, Any]] = []
    async with open_test_engine(adapter=adapter) as engine:
        engine.events.on("workflow.*", lambda e: events.append((e["event"], e["instance_id"])))
        engine.register(dad)
        if missing == "job":
            engine.register(kid)
        await trio.sleep(cancel_at)
        assert await engine.cancel("p/kid#1")
        if cancel_parent:
            assert await engine.cancel("p")
        await trio.sleep(register_at)
        adapter.slow_signals = False
        if missing == "workflow":
            engine.register(kid)
        engine.jobs.register("do-a", _do)
        with trio.fail_after(600):
            child = await engine.wait("p/kid#1")
            parent = await engine.wait("p")
        await trio.sleep(50)
    assert child.status == "cancelled" and child.compensated_steps == ("a",), child
    assert parent.status == ("cancelled" if cancel_parent else "failed"), parent
    assert sorted(undone) == ["saga", "task"], undone
    assert len(failed) == 1, failed
    ends = sorted(e for e in events if e[0] in ("workflow.cancelled", "workflow.failed", "workflow.completed"))
    assert ends == sorted([("workflow.cancelled", "p/kid#1"),
                           ("workflow.cancelled" if cancel_parent else "workflow.failed", "p")]), events
