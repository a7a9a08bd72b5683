"""A subscription that renews every month for as long as the customer stays: a loop that runs
for ever, kept small with ``continue_as_new``.

Each run bills the month, then waits up to 30 days for a ``cancel`` signal. No signal in time
(the receive times out, and a catch routes it on): the run continues as new, with the next
month's number as its input; its records are replaced by none, so the instance stores and reads
no more in its twentieth month than in its first. A ``cancel`` signal ends the subscription.

It runs on virtual time (``trioflow.testing``), stored in a SQLite file in a temporary
directory, so two years take milliseconds. The engine stops in month 8 and a new one opens the
same file a week later; the customer cancels in month 20.

    python examples/subscription.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import trio

import trioflow as tf
from trioflow.testing import open_test_engine, run

MONTH = 30 * 86400.0


async def bill(ctx: tf.WorkflowContext) -> dict[str, Any]:
    month = ctx.input["month"]
    # Keyed by the execution id, which tells the runs apart: a bill sent again after a restart
    # replaces the same entry, and next month's is a new one.
    ctx.resolve("invoices")[tf.current_step().execution_id] = (ctx.input["customer"], month)
    return {"month": month}


subscription = (
    tf.workflow("subscription")
    .step("bill", bill)
    .receive("cancelled", signal="cancel", timeout=MONTH,
             catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="renew")])
    .succeed("ended", output=lambda ctx: {"months": ctx.input["month"], "reason": ctx.steps["cancelled"]})
    .continue_as_new("renew", input=lambda ctx: {**ctx.input, "month": ctx.input["month"] + 1})
    .build()
)


async def main() -> None:
    invoices: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "subscriptions.db"
        adapter = tf.adapters.SQLiteAdapter(db)
        async with open_test_engine(adapter=adapter, services={"invoices": invoices}) as engine:
            engine.register(subscription)
            await engine.start("subscription", {"customer": "ada", "month": 1}, instance_id="sub-ada")
            await trio.sleep(7.5 * MONTH)
            view = await engine.get_instance("sub-ada")
            stored = await adapter.load("sub-ada")
            assert view is not None and stored is not None
            print(f"month {view.input['month']}: run {view.runs}, waiting {sorted(view.waiting or {})},"
                  f" {len(stored.records)} record(s) stored")
        print("engine stopped; a week later a new engine opens the same file")
        await trio.sleep(7 * 86400.0)
        adapter = tf.adapters.SQLiteAdapter(db)
        async with open_test_engine(adapter=adapter, services={"invoices": invoices}) as engine:
            engine.register(subscription)
            await trio.sleep(12 * MONTH)
            stored = await adapter.load("sub-ada")
            assert stored is not None
            print(f"a year later: {len(stored.records)} record(s) stored")
            await engine.signal("sub-ada", "cancel", "moved abroad")
            done = await engine.wait("sub-ada")
            print(f"sub-ada: {done.status}, output {done.output}, after {done.runs} renewals")
            print(f"  its last run: {[r.id for r in done.history]}")
    by_month = {month: execution for execution, (_, month) in invoices.items()}
    print(f"invoices: {len(invoices)}, months {min(by_month)} to {max(by_month)};"
          f" billed as {by_month[1]!r}, {by_month[2]!r}, ..., {by_month[20]!r}")


if __name__ == "__main__":
    run(main)
