"""Storage v2 as the engine uses it (issue 12): what each checkpoint writes, coalescing, and
records that are never rewritten."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow._codec import decode_stored


class Recording(tf.adapters.MemoryAdapter):
    """A MemoryAdapter that keeps every checkpoint's (first_seq, record count, header size)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[int, int, int]] = []

    async def checkpoint(self, instance_id: str, status: Any, header: bytes, records: Sequence[bytes], *,
                         first_seq: int, start: bytes | None = None) -> None:
        self.writes.append((first_seq, len(records), len(header)))
        await super().checkpoint(instance_id, status, header, records, first_seq=first_seq, start=start)


async def noop(data: Any) -> None:
    return None


async def test_branches_that_end_together_share_one_checkpoint(autojump_clock: trio.testing.MockClock) -> None:
    branches = 50
    adapter = Recording()
    wf = tf.workflow("wide").parallel("p", branches=[
        tf.branch(f"b{i}").task(f"t{i}", job=noop).build() for i in range(branches)]).task("after", job=noop).build()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(wf)
        done = await engine.wait(await engine.start("wide"))
    # (Its 50 branches: p stores a start record naming them, see trioflow._parallel.)
    assert done.status == "completed" and len(done.history) == branches + 3
    assert done.history[0].status == "started" and done.history[0].step_name == "p"
    assert len(adapter.writes) <= 3, adapter.writes  # the branches' records, p, then the terminal write
    assert sum(n for _, n, _ in adapter.writes) == branches + 3, "every record written exactly once"


async def test_each_checkpoint_appends_only_new_records_and_a_header_of_constant_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adapter = Recording()
    builder = tf.workflow("long")
    for i in range(200):
        builder.task(f"s{i}", job=noop)
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(builder.build())
        iid = await engine.start("long", {"payload": "x" * 10_000})
        await engine.wait(iid)
    assert [(first, n) for first, n, _ in adapter.writes] == [(i, 1) for i in range(199)] + [(199, 1)]
    sizes = {size for _, _, size in adapter.writes[:-1]}
    # Only the widths of the step name ("s7" / "s123") and two integers change.
    assert max(sizes) - min(sizes) <= 6, "the header does not grow with the steps run"
    assert max(sizes) < 200, "and it holds neither the input nor any output"
    stored = await adapter.load(iid)
    assert stored is not None and len(stored.records) == 200
    assert decode_stored(stored).records[0].input == {"payload": "x" * 10_000}


async def test_a_branch_goes_on_only_once_its_own_step_is_stored(autojump_clock: trio.testing.MockClock) -> None:
    """Coalescing never lets a lane run ahead of its checkpoint."""
    adapter = Recording()
    seen: list[int] = []

    async def second(data: Any) -> None:
        stored = await adapter.load("i")
        assert stored is not None
        state = decode_stored(stored)
        seen.append(sum(1 for r in state.records if r.step_name.startswith("first")))

    wf = tf.workflow("w").parallel("p", branches=[
        tf.branch(f"b{i}").task(f"first{i}", job=noop).task(f"second{i}", job=second).build() for i in range(5)
    ]).build()
    async with tf.open_engine(adapter=adapter) as engine:
        engine.register(wf)
        await engine.wait(await engine.start("w", instance_id="i"))
    assert len(seen) == 5 and all(n >= 1 for n in seen) and seen[0] == 5
