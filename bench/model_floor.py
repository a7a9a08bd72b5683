"""The spec's model with nothing else: the engine's benchmark loads (``engine_memory``,
``durable_sqlite``, ``signals``, ``timers_firing``, ``children``) run doing only what SPEC.md asks
of every instance, so that ``bench/run.py`` can say how much of the engine's time is its own logic.

What each keeps is what the spec requires: an actor task per instance in the engine's nursery,
with a cancel scope round it, which ``cancel()`` and workflow timeouts need (SPEC.md's opening:
every instance a supervised actor, timeouts as cancel scopes); at most ``max_running`` of them,
the rest queued as data; one record per step execution (§11), a tuple of the fields trioflow's
records have (its frozen attrs ``StepResult`` costs fourteen times as much to build); a msgpack
snapshot of the header and the new records handed to storage after every step, before the next
one starts (§10); the caller woken when the instance ends. What it leaves out is everything else
an engine does: an instance state, the definition's lookups, a step context, compensation lists,
events, the result view, idempotent ids, checks of bad input, format versions. Its header is a
few fields, not the real one's eighteen.

It is not a proof that nothing could be faster: it stores through trioflow's own adapters (their
thread hand-off and statements are choices, not the spec's), and where scheduling is a choice
(when the waker looks again, how a parent's items share a write) it does what the engine does.
"""

from __future__ import annotations

import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import trio

from trioflow import adapters
from trioflow._ids import new_instance_id

STEPS = ("a", "b", "c")

T = TypeVar("T")
_pack = msgpack.Packer().pack


async def _noop(_: Any) -> Any:
    """A no-op job, as the engine's cases run."""
    return None


def _record(name: str, seq: int, output: Any, started_at: float) -> tuple[Any, ...]:
    """A completed execution's record, in ``StepResult``'s field order."""
    return (name, "completed", None, output, None, started_at, time.time(), 1, "", 1, seq, None, False, None,
            None, None)


def _stored(record: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a completed execution's record must store: the rest is its place, or defaults."""
    return record[:2] + record[3:4] + record[5:8]


def in_memory(n: int, limit: int) -> dict[str, float]:
    """``n`` sagas started at once, as ``cases.engine_memory`` starts them, ``limit`` running at
    a time (the rest queued as data, a task started for each as a slot frees); each snapshot
    packed and kept as bytes in a dict (less than any adapter does)."""
    async def main() -> None:
        stored: dict[str, tuple[bytes, list[bytes]]] = {}
        queued: deque[tuple[str, trio.Event]] = deque()
        running = 0

        async with trio.open_nursery() as engine_nursery:
            async def actor(instance_id: str, ended: trio.Event) -> None:
                nonlocal running
                with trio.CancelScope():
                    records = stored[instance_id][1]
                    for seq, name in enumerate(STEPS):
                        started_at = time.time()
                        records.append(_pack(_stored(_record(name, seq, await _noop(None), started_at))))
                        stored[instance_id] = (_pack(("running", name, seq + 1)), records)
                ended.set()
                if queued:  # its slot goes to the next one queued
                    engine_nursery.start_soon(actor, *queued.popleft())
                else:
                    running -= 1

            async def saga(instance_id: str) -> None:  # the caller: start, then wait
                nonlocal running
                ended = trio.Event()
                stored[instance_id] = (_pack(("pending", None, 0)), [])
                if running < limit:
                    running += 1
                    engine_nursery.start_soon(actor, instance_id, ended)
                else:
                    queued.append((instance_id, ended))
                await ended.wait()

            async with trio.open_nursery() as callers:
                for i in range(n):
                    callers.start_soon(saga, str(i))

    start = time.perf_counter()
    trio.run(main)
    return {"sagas_per_s": n / (time.perf_counter() - start)}


def _on_sqlite(main: Callable[[adapters.SQLiteAdapter], Awaitable[T]]) -> T:
    """Run ``main`` on a fresh SQLite file (FULL, as the engine's cases use it)."""
    async def run(path: Path) -> T:
        adapter = adapters.SQLiteAdapter(path)
        await adapter.open()
        try:
            return await main(adapter)
        finally:
            await adapter.close()

    with tempfile.TemporaryDirectory(dir=Path(__file__).parent, prefix="tmp-") as tmp:
        return trio.run(run, Path(tmp) / "floor.db")


async def _started(adapter: adapters.SQLiteAdapter, engine: trio.Nursery, actor: Callable[[str, trio.Event], Any],
                   workflow_name: str, input: Any, header: bytes) -> None:
    """What a caller of ``start()`` then ``wait()`` has done: the instance stored, its actor
    started, its end awaited."""
    instance_id, ended = new_instance_id(), trio.Event()
    await adapter.create(instance_id, workflow_name, "running", start=_pack((instance_id, input)), header=header)
    engine.start_soon(actor, instance_id, ended)
    await ended.wait()


async def _seconds(n: int, task: Callable[[], Awaitable[None]]) -> float:
    """How long ``n`` runs of ``task``, all started at once, take to end."""
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(task)
    return time.perf_counter() - start


async def _stored_waiting(adapter: adapters.SQLiteAdapter, n: int, header: bytes, wake_at: float | None = None,
                          ) -> list[str]:
    """``n`` instances stored waiting (on a timer due at ``wake_at``, or a signal), 1,000 stores
    in flight at a time; their ids."""
    ids = [new_instance_id() for _ in range(n)]
    numbers = iter(ids)

    async def creator() -> None:
        for instance_id in numbers:
            await adapter.create(instance_id, "w", "running", start=_pack((instance_id, None)), header=header)
            if wake_at is not None:
                await adapter.checkpoint(instance_id, "running", header, [], first_seq=0, wake_at=wake_at)

    await _seconds(min(n, 1000), creator)
    return ids


def on_sqlite(quick: bool, concurrency: int) -> dict[str, float]:
    """As ``bench/durable_steps.py`` measures SQLite FULL at ``concurrency``: every step's
    record and header committed through trioflow's SQLiteAdapter before the next step."""
    instances = 20 if quick else max(200, 3 * concurrency)

    async def main(adapter: adapters.SQLiteAdapter) -> float:
        async with trio.open_nursery() as engine:
            slots = trio.Semaphore(concurrency)

            async def actor(instance_id: str, ended: trio.Event) -> None:
                with trio.CancelScope():
                    for seq, name in enumerate(STEPS):
                        started_at = time.time()
                        record = _record(name, seq, await _noop(None), started_at)
                        status = "completed" if seq == len(STEPS) - 1 else "running"
                        await adapter.checkpoint(instance_id, status, _pack((status, name, seq + 1)),
                                                 [_pack(_stored(record))], first_seq=seq)
                ended.set()

            async def one() -> None:
                async with slots:
                    await _started(adapter, engine, actor, "bench", None, _pack(("running", "a", 0)))

            elapsed = await _seconds(instances, one)
        return instances * len(STEPS) / elapsed

    return {f"FULL_{concurrency}": _on_sqlite(main)}


def signals_on_sqlite(n: int, senders: int) -> dict[str, float]:
    """As ``waiting.signals_delivered`` measures: ``n`` instances stored waiting for a signal,
    with no task; ``senders`` tasks send one each. A signal is stored and its instance read
    back in the same call (``send_signal_and_load``, what ``signal()`` returns after: a waiting
    instance is not kept in memory), its header unpacked, an actor started in a cancel scope,
    the receive step's record made and checkpointed with the signal consumed, the instance
    completed, in one write."""
    async def main(adapter: adapters.SQLiteAdapter) -> float:
        ids = await _stored_waiting(adapter, n, _pack(("running", "approval", 0, {"signal": "approved"})))
        queue = iter(ids)
        payload = _pack({"by": "manager"})
        start = time.perf_counter()
        async with trio.open_nursery() as engine:
            async def actor(stored: adapters.StoredInstance) -> None:
                with trio.CancelScope():
                    seq, _, signal = stored.signals[0]
                    record = _record(msgpack.unpackb(stored.header)[1], 0, msgpack.unpackb(signal), time.time())
                    await adapter.checkpoint(stored.instance_id, "completed", _pack(("completed", None, 1)),
                                             [_pack(_stored(record))], first_seq=0, consumed=(seq,))

            async def sender() -> None:
                for instance_id in queue:
                    _, stored = await adapter.send_signal_and_load(instance_id, "approved", payload)
                    assert stored is not None
                    engine.start_soon(actor, stored)

            await _seconds(senders, sender)
        return n / (time.perf_counter() - start)

    return {"signals_per_s": _on_sqlite(main)}


def timers_on_sqlite(n: int) -> dict[str, float]:
    """As ``waiting.timers_firing`` measures: ``n`` instances stored waiting for one moment,
    with no task. From that moment the waker looks as the engine's does: rows read from the
    wake index (a batch of 256, passing over those on their way), each woken row's header
    unpacked, an actor started in a cancel scope, the timer's record made, the next step run and
    both records checkpointed with the instance completed; while more than half a batch is on
    its way, the waker waits for it rather than look."""
    batch = 256

    async def main(adapter: adapters.SQLiteAdapter) -> tuple[float, float]:
        ahead = 2.0 + n / 2000
        due = time.time() + ahead
        await _stored_waiting(adapter, n, _pack(("running", "until", 0, {"timer": due})), wake_at=due)
        if time.time() >= due:
            raise RuntimeError(f"storing {n} waiting instances took longer than the {ahead} s lead")
        ends: list[float] = []
        on_their_way: set[str] = set()
        ended: set[str] = set()
        progress = [trio.Event()]  # set as each one on its way is stored

        async def actor(stored: Any) -> None:
            with trio.CancelScope():
                fired = _record(msgpack.unpackb(stored.header)[1], 0, None, time.time())
                started_at = time.time()
                after = _record("after", 1, await _noop(None), started_at)
                await adapter.checkpoint(stored.instance_id, "completed", _pack(("completed", None, 2)),
                                         [_pack(_stored(fired)), _pack(_stored(after))], first_seq=0, wake_at=None)
            ends.append(time.time())
            on_their_way.discard(stored.instance_id)
            ended.add(stored.instance_id)
            progress[0].set()

        async def until_on_their_way(most: int) -> None:
            while len(on_their_way) > most:
                progress[0] = trio.Event()
                await progress[0].wait()

        await trio.sleep(max(0.0, due - time.time()))
        async with trio.open_nursery() as engine:
            while len(ended) + len(on_their_way) < n:
                await until_on_their_way(batch // 2)
                rows = await adapter.due(time.time(), batch + len(on_their_way))
                fresh = [r for r in rows if r.instance_id not in on_their_way and r.instance_id not in ended]
                if not fresh:  # all that is due is on its way: wait for one to be stored
                    await until_on_their_way(len(on_their_way) - 1)
                for row in fresh:
                    on_their_way.add(row.instance_id)
                    engine.start_soon(actor, row)
        last = max(ends) - due
        return n / last, last

    rate, latest = _on_sqlite(main)
    return {"timers_per_s": rate, "latest_s": latest}


def children_on_sqlite(parents: int, per_parent: int = 10) -> dict[str, float]:
    """As ``fanout.children_completed`` measures: ``parents`` instances started at once, each
    mapping over ``per_parent`` items whose branch is one child step. A parent stores its item
    list, then runs each item as a task of its own; an item stores its child (an instance: a
    row of its own, an actor in a cancel scope that records and checkpoints its one step, the
    child completed) and, once the child has ended, has its step's record checkpointed in the
    parent: the items that end while a write of the parent is in flight share the next one, as
    the engine's do. The parent then completes."""
    async def main(adapter: adapters.SQLiteAdapter) -> float:
        async with trio.open_nursery() as engine:
            async def child(child_id: str, ended: trio.Event) -> None:
                with trio.CancelScope():
                    started_at = time.time()
                    record = _record("work", 0, await _noop(None), started_at)
                    await adapter.checkpoint(child_id, "completed", _pack(("completed", None, 1)),
                                             [_pack(_stored(record))], first_seq=0)
                ended.set()

            async def parent(parent_id: str, ended: trio.Event) -> None:
                with trio.CancelScope():
                    started_at = time.time()
                    items = list(range(per_parent))
                    await adapter.checkpoint(parent_id, "running", _pack(("running", "each", 0, items)), [],
                                             first_seq=0)
                    written = 0
                    gathered: list[tuple[Any, ...]] = []
                    stored_with = [trio.Event()]  # set once the records gathered now are stored
                    writing = False

                    async def store(record: tuple[Any, ...]) -> None:
                        nonlocal written, writing
                        stored = stored_with[0]
                        gathered.append(record)
                        if not writing:
                            writing = True
                            await trio.sleep(0)  # items ending in this pass of the scheduler join
                            while gathered:
                                records = [_pack(_stored(r)) for r in gathered]
                                gathered.clear()
                                done, stored_with[0] = stored_with[0], trio.Event()
                                # (Handed to the adapter in order, one write at a time: each is
                                # fenced on the records stored before it.)
                                seq, written = written, written + len(records)
                                await adapter.checkpoint(parent_id, "running", _pack(("running", "each", written)),
                                                         records, first_seq=seq)
                                done.set()
                            writing = False
                        await stored.wait()

                    async def item(index: int) -> None:
                        child_id, child_ended = f"{parent_id}/each/{index}/run#1", trio.Event()
                        item_started = time.time()
                        await adapter.create(child_id, "child", "running", start=_pack((child_id, index, parent_id)),
                                             header=_pack(("running", "work", 0)))
                        engine.start_soon(child, child_id, child_ended)
                        await child_ended.wait()
                        await store(_record("run", index, None, item_started))

                    async with trio.open_nursery() as running_items:
                        for index in items:
                            running_items.start_soon(item, index)
                    await adapter.checkpoint(parent_id, "completed", _pack(("completed", None, written + 1)),
                                             [_pack(_stored(_record("each", written, None, started_at)))],
                                             first_seq=written)
                ended.set()

            async def one() -> None:
                await _started(adapter, engine, parent, "parent", per_parent, _pack(("running", "each", 0)))

            elapsed = await _seconds(parents, one)
        return parents * per_parent / elapsed

    return {"children_per_s": _on_sqlite(main)}
