"""A full e-commerce checkout whose entity steps write to your own tables in a real SQLite file
(through ``SQLiteDriver``; the workflow itself runs with ``execute_workflow``, not stored: see
``approval.py`` and ``batch_invoices.py`` for instances stored in a ``SQLiteAdapter``).

Tables `product`, `inventory` and `order` are ordinary SQLite tables; the workflow reaches them
through `ctx.driver` (a SQLiteDriver) with entity steps, and reaches payment and mail through
services (`ctx.resolve`). The run is transactional: the first checkout succeeds and commits; the
second has its card declined, so the transaction rolls back and the tables are as before.

    python examples/ecommerce_sqlite.py
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import trio

import trioflow as tf

SCHEMA = """
CREATE TABLE product (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL);
CREATE TABLE inventory (product_id INTEGER PRIMARY KEY REFERENCES product(id), stock INTEGER NOT NULL);
CREATE TABLE "order" (id INTEGER PRIMARY KEY, product_id INTEGER NOT NULL, quantity INTEGER NOT NULL,
                      total_cents INTEGER NOT NULL, status TEXT NOT NULL DEFAULT 'pending', payment_id TEXT);
INSERT INTO product VALUES (1, 'trio t-shirt', 2500);
INSERT INTO inventory VALUES (1, 10);
"""


class Payments:
    """Stands in for a payment provider: declines one card, remembers charges and refunds."""

    def __init__(self) -> None:
        self.charges: dict[str, int] = {}

    async def charge(self, amount_cents: int, card: str) -> dict[str, Any]:
        if card == "4000-0000-0000-0002":
            raise PermissionError(f"card {card} declined")
        charge_id = f"ch_{len(self.charges) + 1}"
        self.charges[charge_id] = amount_cents
        return {"id": charge_id, "amount_cents": amount_cents}

    async def refund(self, charge_id: str) -> None:
        del self.charges[charge_id]


class Mailer:
    def __init__(self) -> None:
        self.outbox: list[str] = []

    async def send(self, to: str, text: str) -> None:
        self.outbox.append(f"to {to}: {text}")


async def check_stock(ctx: tf.WorkflowContext) -> int:
    row = await ctx.driver.find_one("inventory", {"product_id": ctx.input["product_id"]})
    if row is None or row["stock"] < ctx.input["quantity"]:
        raise LookupError(f"not enough stock for product {ctx.input['product_id']}")
    stock: int = row["stock"]
    return stock


async def charge_payment(ctx: tf.WorkflowContext) -> dict[str, Any]:
    order = ctx.steps["create-order"]
    charge: dict[str, Any] = await ctx.resolve("payments").charge(order["total_cents"], ctx.input["card"])
    ctx.set("payment_id", charge["id"])
    return charge


async def refund_payment(ctx: tf.WorkflowContext, charge: dict[str, Any]) -> None:
    await ctx.resolve("payments").refund(charge["id"])


async def send_confirmation(ctx: tf.WorkflowContext) -> dict[str, bool]:
    await ctx.resolve("mailer").send(ctx.input["email"], f"order {ctx.get('order_id')} is paid")
    return {"email_sent": True}


checkout = (
    tf.workflow("checkout")
    .step("check-stock", check_stock)
    .step(tf.create_entity_step(
        "create-order", "order",
        lambda ctx: {"product_id": ctx.input["product_id"], "quantity": ctx.input["quantity"],
                     "total_cents": 2500 * ctx.input["quantity"]},
        store_as="order_id"))
    .step(tf.update_entity_step(
        "reserve-inventory", "inventory",
        lambda ctx: {"product_id": ctx.input["product_id"]},
        lambda ctx: {"stock": ctx.steps["check-stock"] - ctx.input["quantity"]}))
    .step("charge-payment", charge_payment, refund_payment, retry=tf.Retry(max_attempts=2, interval=0.01,
                                                                           retry_on=[ConnectionError]))
    .step(tf.update_entity_step(
        "mark-paid", "order",
        lambda ctx: {"id": ctx.get("order_id")},
        lambda ctx: {"status": "paid", "payment_id": ctx.get("payment_id")}))
    .step("send-confirmation", send_confirmation)
    .transactional()
    .build()
)


def show(path: Path, title: str) -> None:
    with sqlite3.connect(path) as conn:
        print(f"  {title}")
        for table in ("inventory", "order"):
            rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
            print(f"    {table:<9} {rows}")


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shop.db"
        with sqlite3.connect(path) as conn:
            conn.executescript(SCHEMA)
        driver = tf.adapters.SQLiteDriver(path)
        services = {"payments": Payments(), "mailer": Mailer()}
        for card in ("4242-4242-4242-4242", "4000-0000-0000-0002"):
            print(f"checkout with card {card}:")
            show(path, "before")
            order = {"product_id": 1, "quantity": 2, "card": card, "email": "ada@example.com"}
            result = await tf.execute_workflow(driver, checkout, order, services=services)
            print(f"  success={result.success} rolled_back={result.rolled_back}"
                  + (f" failed_step={result.failed_step!r} error={result.error}" if not result.success else ""))
            show(path, "after")
        await driver.aclose()
        print("charges:", services["payments"].charges)  # type: ignore[attr-defined]
        print("outbox: ", services["mailer"].outbox)  # type: ignore[attr-defined]


if __name__ == "__main__":
    trio.run(main)
