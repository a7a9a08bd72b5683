"""An e-commerce checkout as a saga: reserve inventory, charge, update the order, mail.

Run twice: once the charge goes through; once the card is declined, and the reservation made
by the first step is released by its compensation.

    python examples/checkout_saga.py
"""

from __future__ import annotations

from typing import Any

import trio

import trioflow as tf


class Inventory:
    def __init__(self) -> None:
        self.reserved: dict[str, list[str]] = {}

    async def reserve(self, items: list[str]) -> dict[str, Any]:
        rid = f"res-{len(self.reserved) + 1}"
        self.reserved[rid] = items
        return {"id": rid, "items": items}

    async def release(self, rid: str) -> None:
        del self.reserved[rid]


class Payments:
    def __init__(self) -> None:
        self.charges: dict[str, int] = {}

    async def charge(self, amount: int, method: str) -> dict[str, Any]:
        if method == "card-declined":
            raise PermissionError("card declined")
        cid = f"ch-{len(self.charges) + 1}"
        self.charges[cid] = amount
        return {"id": cid, "amount": amount}

    async def refund(self, cid: str) -> None:
        del self.charges[cid]


class Mailer:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, template: str, to: str) -> None:
        self.sent.append(f"{template} -> {to}")


async def reserve_inventory(ctx: tf.WorkflowContext) -> dict[str, Any]:
    reservation: dict[str, Any] = await ctx.resolve("inventory").reserve(ctx.input["items"])
    ctx.set("reservation_id", reservation["id"])
    return reservation


async def release_inventory(ctx: tf.WorkflowContext, reservation: dict[str, Any]) -> None:
    await ctx.resolve("inventory").release(reservation["id"])


async def charge_payment(ctx: tf.WorkflowContext) -> dict[str, Any]:
    charge: dict[str, Any] = await ctx.resolve("payments").charge(ctx.input["total"], ctx.input["payment_method"])
    ctx.set("payment_id", charge["id"])
    return charge


async def refund_payment(ctx: tf.WorkflowContext, charge: dict[str, Any]) -> None:
    await ctx.resolve("payments").refund(charge["id"])


async def update_order(ctx: tf.WorkflowContext) -> dict[str, Any]:
    ctx.resolve("orders")[ctx.input["order_id"]] = {"status": "paid", "payment_id": ctx.get("payment_id")}
    return {"status": "paid"}


async def reset_order(ctx: tf.WorkflowContext, _: Any) -> None:
    ctx.resolve("orders")[ctx.input["order_id"]] = {"status": "pending", "payment_id": None}


async def send_confirmation(ctx: tf.WorkflowContext) -> dict[str, Any]:
    await ctx.resolve("mailer").send("order-confirmation", ctx.input["email"])
    return {"email_sent": True}


checkout = (
    tf.workflow("checkout")
    .step("reserve-inventory", reserve_inventory, release_inventory)
    .step("charge-payment", charge_payment, refund_payment,
          retry=tf.Retry(max_attempts=2, interval=0.01, retry_on=[ConnectionError]))
    .step("update-order", update_order, reset_order)
    .step("send-confirmation", send_confirmation)  # no compensation: mail can't be unsent
    .with_data({"source": "web"})
    .with_timeout(30.0)
    .with_hooks(on_compensate=lambda name, ctx: print(f"  {ctx.input['order_id']}: compensating {name}"))
    .build()
)


async def main() -> None:
    services = {"inventory": Inventory(), "payments": Payments(), "mailer": Mailer(), "orders": {}}
    for order_id, method in (("ord-1", "card-ok"), ("ord-2", "card-declined")):
        order = {"order_id": order_id, "items": ["book", "pen"], "total": 4200, "payment_method": method,
                 "email": "ada@example.com"}
        result = await tf.execute_workflow(None, checkout, order, services=services)
        print(f"checkout {order_id} with {method}: success={result.success}")
        if not result.success:
            print(f"  failed at {result.failed_step!r}: {result.error}")
            print(f"  compensated, newest first: {list(result.compensated_steps)}")
    print("reservations left:", services["inventory"].reserved)  # type: ignore[attr-defined]
    print("charges left:     ", services["payments"].charges)  # type: ignore[attr-defined]
    print("orders:           ", services["orders"])
    print("mails sent:       ", services["mailer"].sent)  # type: ignore[attr-defined]


if __name__ == "__main__":
    trio.run(main)
