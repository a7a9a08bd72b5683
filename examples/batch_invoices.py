"""A batch of invoices: a map over the invoices, each one a child saga that reserves the goods,
charges the card and mails the receipt (Map steps and child workflows, nested sagas).

Each invoice runs as its own child instance (``.child`` in the map's branch), so its history is
its own, and at most two run at once (``max_concurrency``). A declined card fails that invoice's
saga, which releases its own reservation.

- Batch 1 tolerates one failed invoice: it completes, and the declined invoice's slot in the
  output holds its error.
- Batch 2 tolerates none: once every invoice has ended (``on_error="wait-all"``) it fails, and
  compensates: each invoice that completed is compensated as a unit (its charge refunded, then
  its reservation released) and ends ``compensated``.

Everything is stored in a SQLite file in a temporary directory, on virtual time.

    python examples/batch_invoices.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import trio

import trioflow as tf
from trioflow.testing import open_test_engine, run, virtual_wall_clock


class CardDeclined(Exception):
    pass


class Ledger:
    """Stock, cards and mail, outside the workflows (keyed by invoice: a rerun is harmless)."""

    def __init__(self) -> None:
        self.reserved: dict[str, str] = {}
        self.charged: dict[str, int] = {}
        self.mailed: list[str] = []
        #: What was done and undone, in order.
        self.log: list[str] = []


async def reserve(ctx: tf.WorkflowContext) -> str:
    ledger: Ledger = ctx.resolve("ledger")
    invoice = ctx.input
    item: str = invoice["item"]
    ledger.reserved[invoice["id"]] = item
    ledger.log.append(f"reserve {invoice['id']}")
    return item


async def release(ctx: tf.WorkflowContext, item: str) -> None:
    ledger: Ledger = ctx.resolve("ledger")
    ledger.reserved.pop(ctx.input["id"], None)
    ledger.log.append(f"release {ctx.input['id']}")


async def charge(ctx: tf.WorkflowContext) -> int:
    invoice = ctx.input
    await trio.sleep(invoice["amount"] / 100)  # cards take their time: invoices end out of order
    if invoice["card"].endswith("0002"):
        raise CardDeclined(f"card {invoice['card']} declined")
    ledger: Ledger = ctx.resolve("ledger")
    ledger.charged[invoice["id"]] = invoice["amount"]
    ledger.log.append(f"charge {invoice['id']}")
    return int(invoice["amount"])


async def refund(ctx: tf.WorkflowContext, amount: int) -> None:
    ledger: Ledger = ctx.resolve("ledger")
    ledger.charged.pop(ctx.input["id"], None)
    ledger.log.append(f"refund {ctx.input['id']}")


async def mail(ctx: tf.WorkflowContext) -> dict[str, Any]:
    ledger: Ledger = ctx.resolve("ledger")
    ledger.mailed.append(ctx.input["id"])
    return {"invoice": ctx.input["id"], "paid": ctx.steps["charge"]}


invoice_saga = (
    tf.workflow("invoice")
    .step("reserve", reserve, release)
    .step("charge", charge, refund)
    .step("mail", mail)
    .build()
)


def batch(tolerated: int) -> tf.WorkflowDefinition:
    return (
        tf.workflow(f"batch-tolerating-{tolerated}")
        .map("invoices", items=lambda ctx: ctx.input, max_concurrency=2, on_error="wait-all",
             tolerated_failures=tolerated,
             branch=tf.branch("one-invoice").child("bill", workflow="invoice", input=lambda ctx: ctx.item).build())
        .build()
    )


def invoices(prefix: str, declined: int, count: int) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{n}", "item": f"item-{n}", "amount": 100 * (count - n),
             "card": "4000-0000-0000-0002" if n == declined else "4242-4242-4242-4242"} for n in range(count)]


async def show_children(engine: tf.Engine, batch: tf.WorkflowInstance) -> None:
    """Each invoice's own instance: a child of the batch (ids ``<batch id>/invoices/#<n>/bill#1``)."""
    for child_id in sorted(batch.children):
        child = await engine.get_instance(child_id)
        assert child is not None and child.parent_id == batch.id
        print(f"  {child.input['id']}: {child.status}, compensated {list(child.compensated_steps)}")


async def main() -> None:
    ledger = Ledger()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = tf.adapters.SQLiteAdapter(Path(tmp) / "invoices.db")
        async with open_test_engine(adapter=adapter, services={"ledger": ledger}, clock=virtual_wall_clock()) as engine:
            engine.register(invoice_saga)
            engine.register(batch(1))
            engine.register(batch(0))

            first = await engine.wait(await engine.start("batch-tolerating-1", invoices("A", 1, 4)))
            print(f"batch 1: {first.status}")
            for slot in first.output:
                print(f"  {slot}")
            await show_children(engine, first)

            second = await engine.wait(await engine.start("batch-tolerating-0", invoices("B", 2, 3)))
            print(f"batch 2: {second.status}: {second.cause}")
            print(f"  compensated, newest first: {list(second.compensated_steps)}")
            await show_children(engine, second)
            undone = [entry for entry in ledger.log if entry.startswith(("refund", "release"))]
            print(f"  undone, in order: {undone}")
    print(f"still reserved: {dict(sorted(ledger.reserved.items()))}")
    print(f"still charged: {dict(sorted(ledger.charged.items()))}")


if __name__ == "__main__":
    run(main)
