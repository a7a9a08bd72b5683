"""The least work the spec's model allows for the 3-step sagas of ``engine_memory`` and
``durable_sqlite``: a lower bound on what any engine built to SPEC.md can reach, measured in the
same run as the engine.

What it keeps is what the spec requires of every instance: an actor task in the engine's nursery
(§1), admitted by ``max_running``; a cancel scope round it, which ``cancel()`` and workflow
timeouts need; one record per step execution (§11) with ``StepResult``'s sixteen fields, as a
tuple, the cheapest value that holds them (trioflow's frozen attrs class costs fourteen times
as much to build); a msgpack snapshot written after every step, before the next one starts
(§1, §10); the caller woken when the instance ends. What it leaves out is everything else an engine does: an instance
state, the definition's lookups, a step context, compensation lists, events, the result view,
idempotent ids, checks of bad input. Its header is three fields, not the real one's eighteen.

So an engine's figure over this one is the share of its time that is its own logic, and a target
above this one's figure cannot be met without changing the model.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import trio

from trioflow import adapters
from trioflow._ids import new_instance_id

STEPS = ("a", "b", "c")


async def _noop(_: Any) -> None:
    return None


def _record(name: str, seq: int, output: Any, started_at: float) -> tuple[Any, ...]:
    """A completed execution's record, in ``StepResult``'s field order."""
    return (name, "completed", None, output, None, started_at, time.time(), 1, "", 1, seq, None, False, None,
            None, None)


def _stored(record: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a completed execution's record must store: the rest is its place, or defaults."""
    return record[:2] + record[3:4] + record[5:8]


def in_memory(n: int, limit: int) -> dict[str, float]:
    """``n`` sagas started at once, as ``cases.engine_memory`` starts them; snapshots kept as
    bytes in a dict (less than any adapter does)."""
    async def main() -> None:
        stored: dict[str, bytes] = {}
        pack = msgpack.Packer().pack
        slots = trio.CapacityLimiter(limit)  # max_running

        async with trio.open_nursery() as engine_nursery:
            async def actor(instance_id: str, ended: trio.Event) -> None:
                async with slots:
                    with trio.CancelScope():
                        records = []
                        for seq, name in enumerate(STEPS):
                            started_at = time.time()
                            records.append(_record(name, seq, await _noop(None), started_at))
                            stored[instance_id] = pack(("running", name, seq + 1))
                ended.set()

            async def saga(instance_id: str) -> None:  # the caller: start, then wait
                ended = trio.Event()
                stored[instance_id] = pack(("pending", None, 0))
                engine_nursery.start_soon(actor, instance_id, ended)
                await ended.wait()

            async with trio.open_nursery() as callers:
                for i in range(n):
                    callers.start_soon(saga, str(i))

    start = time.perf_counter()
    trio.run(main)
    return {"sagas_per_s": n / (time.perf_counter() - start)}


def on_sqlite(quick: bool, concurrency: int) -> dict[str, float]:
    """As ``bench/durable_steps.py`` measures SQLite FULL at ``concurrency``: every step's
    record and header committed through trioflow's SQLiteAdapter before the next step."""
    instances = 20 if quick else max(200, 3 * concurrency)

    async def main(path: Path) -> float:
        adapter = adapters.SQLiteAdapter(path, synchronous="FULL")
        pack = msgpack.Packer().pack
        await adapter.open()
        try:
            async with trio.open_nursery() as engine_nursery:
                slots = trio.Semaphore(concurrency)

                async def actor(instance_id: str, ended: trio.Event) -> None:
                    with trio.CancelScope():
                        for seq, name in enumerate(STEPS):
                            started_at = time.time()
                            record = _record(name, seq, await _noop(None), started_at)
                            status = "completed" if seq == len(STEPS) - 1 else "running"
                            await adapter.checkpoint(
                                instance_id, status, pack((status, name, seq + 1)),
                                [pack(_stored(record))], first_seq=seq)
                    ended.set()

                async def one() -> None:
                    async with slots:
                        instance_id, ended = new_instance_id(), trio.Event()
                        await adapter.create(instance_id, "bench", "running", start=pack((instance_id, None)),
                                             header=pack(("running", "a", 0)))
                        engine_nursery.start_soon(actor, instance_id, ended)
                        await ended.wait()

                start = time.perf_counter()
                async with trio.open_nursery() as callers:
                    for _ in range(instances):
                        callers.start_soon(one)
                elapsed = time.perf_counter() - start
        finally:
            await adapter.close()
        return instances * len(STEPS) / elapsed

    with tempfile.TemporaryDirectory(dir=Path(__file__).parent, prefix="tmp-") as tmp:
        return {f"FULL_{concurrency}": trio.run(main, Path(tmp) / "floor.db")}


def signals_on_sqlite(n: int, senders: int) -> dict[str, float]:
    """As ``waiting.signals_delivered`` measures: ``n`` instances stored waiting for a signal,
    with no task; ``senders`` tasks send one each. A signal is stored (what ``signal()``
    returns after), then its instance is read back (a waiting instance is not kept in memory),
    its header unpacked, an actor started in a cancel scope, the receive step's record made and
    checkpointed with the signal consumed, the instance completed, in one write."""
    async def main(path: Path) -> float:
        adapter = adapters.SQLiteAdapter(path)
        pack, unpack = msgpack.Packer().pack, msgpack.unpackb
        await adapter.open()
        try:
            ids = [new_instance_id() for _ in range(n)]
            waiting = pack(("running", "approval", 0, {"signal": "approved"}))
            numbers = iter(ids)

            async def creator() -> None:
                for instance_id in numbers:
                    await adapter.create(instance_id, "w", "running", start=pack((instance_id, None)), header=waiting)

            async with trio.open_nursery() as nursery:
                for _ in range(min(n, 1000)):
                    nursery.start_soon(creator)
            async with trio.open_nursery() as engine_nursery:
                async def actor(instance_id: str) -> None:
                    with trio.CancelScope():
                        stored = await adapter.load(instance_id)
                        assert stored is not None
                        step = unpack(stored.header)[1]
                        seq, _, payload = stored.signals[0]
                        record = _record(step, 0, unpack(payload), time.time())
                        await adapter.checkpoint(
                            instance_id, "completed", pack(("completed", None, 1)),
                            [pack(_stored(record))], first_seq=0, consumed=(seq,))

                queue = iter(ids)
                payload = pack({"by": "manager"})

                async def sender() -> None:
                    for instance_id in queue:
                        await adapter.send_signal(instance_id, "approved", payload)
                        engine_nursery.start_soon(actor, instance_id)

                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for _ in range(senders):
                        nursery.start_soon(sender)
            return n / (time.perf_counter() - start)
        finally:
            await adapter.close()

    with tempfile.TemporaryDirectory(dir=Path(__file__).parent, prefix="tmp-") as tmp:
        return {"signals_per_s": trio.run(main, Path(tmp) / "floor.db")}
