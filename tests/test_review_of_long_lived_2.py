"""A long-lived engine holds nothing per finished instance, second review (see
test_long_lived_leaks.py for the first). Each test runs N and then 4N instances of one workload
shape through one engine and asserts that what is left behind in memory is bounded
independently of N: 64 entries, for an engine with no instance stored (or nothing of the
user's data left).

The review's first finding (``Engine._unanswered``: an entry per ``start(instance_id=...)``
whose create failed having stored nothing, never retried) failed at c5bd14c; fixed by the commit
that added this file: the engine looks for the row once storage answers, and drops the notes
of tries that stored none. Its second (``MemoryDriver.ledger`` keeps the entries of purged
instances, as README then said: "not deleted yet") was fixed by a driver method that deletes
them once the instance's end is stored: tests/test_ledger_records_go_when_their_instance_ends.py. The review also probed, and found
bounded: cancels, signals, waits given up, timeouts, retries, children compensated as units,
maps with tolerated failures, delayed starts, event subscriptions, ``execute_workflow`` and
driver transactions."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock

N = 250
BOUND = 64


async def ok(ctx: Any) -> int:
    return 1


async def declined(ctx: Any) -> int:
    raise ValueError("card declined")


# -- 1. Engine._unanswered: an entry per start(instance_id=) whose create failed, never retried --

class DatabaseDown(MemoryAdapter):
    """A create that fails before anything is written (a connection refused, a pool exhausted
    under load): what a network database does now and then in a service that runs for weeks.
    Only the ids of the failing requests are refused, so the rest of the service goes on."""

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if instance_id.startswith("order-"):
            raise tf.StorageUnavailableError("connection refused")
        return await super().create(instance_id, *args, **kwargs)


async def test_failed_starts_never_retried_leave_an_entry_each(autojump_clock: trio.testing.MockClock) -> None:
    """An HTTP handler starts ``checkout`` under the order's id (idempotent starts, as the README
    advises); storage refuses the create, having written nothing, and the handler answers 503.
    The client gives up (or retries under another order id). The engine keeps
    ``_unanswered[order_id] = {created_at: False}`` (runtime/_engine.py, ``_start``: "Stored,
    perhaps, its answer lost: a retry finds it"), dropped only by a retry of that very id, a run
    of it ending here, or a child step done with it: none ever comes. One dict entry (holding a
    one-entry dict) per failed request, for the life of the process: N + 4N failed requests
    leave 5N entries, with no instance stored (``get_instance`` says None for each)."""
    adapter = DatabaseDown()
    async with open_test_engine(adapter=adapter, clock=virtual_wall_clock(), retain_finished=0) as engine:
        engine.register(tf.workflow("checkout").step("charge", ok).build())
        k = 0
        for requests in (N, 4 * N):
            for _ in range(requests):
                k += 1
                try:
                    await engine.start("checkout", {"order": k}, instance_id=f"order-{k}")
                except tf.StorageUnavailableError:
                    pass  # 503; the client does not come back with this id
                # The service goes on meanwhile: other instances run and end.
                await engine.wait(await engine.start("checkout", {"other": k}))
            await trio.sleep(5)  # retention purges the others
            assert len(adapter._rows) == 0
            assert await engine.get_instance(f"order-{k}") is None
            assert len(engine._unanswered) <= BOUND, (
                f"{len(engine._unanswered)} unanswered-start entries after {k} failed starts, 0 stored instances")
