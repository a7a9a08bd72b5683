"""A hypothesis state machine drives the engine API (start, cancel, wait, advance time, resume)
against a simple model; the engine is stopped and reopened on the same storage between every
two rules, so every rule also exercises a restart. Invariants are checked after every rule."""

from __future__ import annotations

import collections
from typing import Any

import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

import trioflow as tf
from trioflow._codec import decode_stored

STEPS = ("reserve", "charge", "ship")


def order_workflow(calls: collections.Counter[tuple[str, str]]) -> tf.WorkflowDefinition:
    def job(name: str) -> Any:
        async def run(data: dict[str, Any]) -> dict[str, Any]:
            calls[(data["id"], name)] += 1
            await trio.sleep(data["durations"][STEPS.index(name)])
            if data["fail_at"] == name:
                raise RuntimeError(f"{name} failed")
            return {"id": data["id"], "step": name}
        return run

    def undo(name: str) -> Any:
        async def run(output: dict[str, Any]) -> None:
            calls[(output["id"], f"undo-{name}")] += 1
        return run

    return (tf.workflow("order")
            .task("reserve", job=job("reserve"), compensate=undo("reserve"))
            .task("charge", job=job("charge"), compensate=undo("charge"))
            .task("ship", job=job("ship"))
            .build())


class EngineMachine(RuleBasedStateMachine):
    instances = Bundle("instances")

    @initialize()
    def setup(self) -> None:
        self.adapter = tf.adapters.MemoryAdapter()
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self.workflow = order_workflow(self.calls)
        self.expected: dict[str, str] = {}  # id -> the terminal status it must reach
        self.terminal_seen: dict[str, str] = {}
        self.frozen_counts: dict[tuple[str, str], int] = {}
        self.next_id = 0

    def session(self, action: Any, advance: float = 0.0, **engine_options: Any) -> Any:
        """One engine lifetime: open on the shared storage (resuming), act, let time pass, stop."""
        async def main() -> Any:
            async with tf.testing.open_test_engine(adapter=self.adapter, **engine_options) as engine:
                engine.register(self.workflow)
                result = await action(engine)
                await trio.sleep(advance)
                return result
        return tf.testing.run(main)

    @rule(target=instances, fail_at=st.sampled_from((None, "charge", "ship")),
          durations=st.lists(st.sampled_from((0.0, 1.0, 5.0)), min_size=3, max_size=3),
          advance=st.sampled_from((0.0, 0.5, 3.0, 20.0)))
    def start(self, fail_at: str | None, durations: list[float], advance: float) -> str:
        iid = f"i{self.next_id}"
        self.next_id += 1

        async def action(engine: tf.Engine) -> str:
            return await engine.start("order", {"id": iid, "fail_at": fail_at, "durations": durations},
                                      instance_id=iid)

        assert self.session(action, advance) == iid
        self.expected[iid] = "completed" if fail_at is None else "failed"
        return iid

    @rule(iid=instances, advance=st.sampled_from((0.0, 2.0)))
    def cancel(self, iid: str, advance: float) -> None:
        async def action(engine: tf.Engine) -> bool:
            return await engine.cancel(iid)

        if self.session(action, advance):
            assert iid not in self.terminal_seen, "cancel() accepted an instance that had already ended"
            self.expected[iid] = "cancelled"

    @rule(iid=instances)
    def wait(self, iid: str) -> None:
        async def action(engine: tf.Engine) -> tf.WorkflowInstance:
            return await engine.wait(iid)

        instance = self.session(action)
        assert instance.status == self.expected[iid]
        if instance.status == "completed":
            assert instance.output == {"id": iid, "step": "ship"} and instance.compensated_steps == ()
        else:
            done = [s for s in ("charge", "reserve") if instance.step_results.get(s) and
                    instance.step_results[s].status == "compensated"]
            assert list(instance.compensated_steps) == done

    @rule(seconds=st.sampled_from((1.0, 10.0)))
    def advance(self, seconds: float) -> None:
        async def action(engine: tf.Engine) -> None:
            return None

        self.session(action, seconds)

    @rule()
    def explicit_resume(self) -> None:
        async def action(engine: tf.Engine) -> tuple[list[str], list[str], set[str]]:
            stored = {r.instance_id for r in await self.adapter.resumable()}
            return await engine.resume(), await engine.resume(), stored

        first, second, stored = self.session(action, resume=False)
        assert set(first) == stored and second == [], "resume() must start each instance once"

    @invariant()
    def storage_agrees_with_the_model(self) -> None:
        async def load() -> list[tf.adapters.StoredInstance]:
            return await self.adapter.list_instances("order")

        records = {r.instance_id: r for r in trio.run(load)}
        assert set(records) == set(self.expected), "an instance was lost or invented"
        for iid, record in records.items():
            state = decode_stored(record)
            assert state.status == record.status
            if iid in self.terminal_seen:
                assert state.status == self.terminal_seen[iid], f"{iid} left its terminal status"
            if state.status in ("completed", "failed", "cancelled", "timed_out"):
                self.terminal_seen[iid] = state.status
                assert state.status == self.expected[iid]
            # A step stored as completed never runs again, a stored compensation never reruns.
            done = [(iid, r.step_name) for r in state.records if r.status == "completed"]
            done += [(iid, f"undo-{state.records[seq].step_name}") for seq in state.compensated]
            for key in done:
                count = self.frozen_counts.setdefault(key, self.calls[key])
                assert self.calls[key] == count >= 1, f"{key} ran again after it was stored as done"


EngineMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=12, deadline=None)
test_engine_state_machine = EngineMachine.TestCase
