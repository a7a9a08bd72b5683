"""A checkout saga that handles a declined card instead of just failing (errors as values).

Reserve stock (compensated by releasing it), charge the card, ship. A declined card is caught:
the lane goes to "notify-customer", then to a fail step that ends the order as
``OrderCancelled``, so the reservation is released and the instance fails with that error name.
A second order with a good card completes.

    python examples/checkout_catch.py
"""

from __future__ import annotations

from typing import Any

import trio

import trioflow as tf


class CardDeclined(Exception):
    """The card issuer said no: retrying will not help, but the customer should hear about it."""


class Warehouse:
    def __init__(self) -> None:
        self.reserved: dict[str, list[str]] = {}

    async def reserve(self, order_id: str, items: list[str]) -> dict[str, Any]:
        self.reserved[order_id] = items
        return {"order_id": order_id, "items": items}

    async def release(self, order_id: str) -> None:
        self.reserved.pop(order_id, None)  # idempotent: a resume after a crash may release again


class Cards:
    def __init__(self) -> None:
        self.charges: dict[str, int] = {}
        self._by_key: dict[str, dict[str, Any]] = {}

    async def charge(self, card: str, amount: int, *, idempotency_key: str) -> dict[str, Any]:
        """As payment APIs do, a charge made again with the same key gives back the first one:
        a step run again after a crash (at least once) charges the card once."""
        if idempotency_key in self._by_key:
            return self._by_key[idempotency_key]
        if card.endswith("0002"):
            raise CardDeclined(f"card {card} declined: insufficient funds")
        cid = f"ch-{len(self.charges) + 1}"
        self.charges[cid] = amount
        charge = self._by_key[idempotency_key] = {"id": cid, "amount": amount}
        return charge

    async def refund(self, cid: str) -> None:
        self.charges.pop(cid, None)


async def reserve_stock(ctx: tf.WorkflowContext) -> dict[str, Any]:
    reservation: dict[str, Any] = await ctx.resolve("warehouse").reserve(ctx.input["order_id"], ctx.input["items"])
    return reservation


async def release_stock(ctx: tf.WorkflowContext, reservation: dict[str, Any]) -> None:
    await ctx.resolve("warehouse").release(reservation["order_id"])


async def charge_card(ctx: tf.WorkflowContext) -> dict[str, Any]:
    charge: dict[str, Any] = await ctx.resolve("cards").charge(
        ctx.input["card"], ctx.input["total"], idempotency_key=ctx.input["order_id"])
    return charge


async def refund_card(ctx: tf.WorkflowContext, charge: dict[str, Any]) -> None:
    await ctx.resolve("cards").refund(charge["id"])


async def ship(ctx: tf.WorkflowContext) -> dict[str, Any]:
    return {"order_id": ctx.input["order_id"], "tracking": f"trk-{ctx.input['order_id']}"}


async def notify_customer(ctx: tf.WorkflowContext) -> dict[str, Any]:
    # ctx.error (and ctx.steps["charge-card"], and ctx.data["payment_error"]) hold the caught
    # error as {"error": name, "cause": message}.
    error = ctx.error
    assert error is not None and error == ctx.steps["charge-card"] == ctx.get("payment_error")
    ctx.resolve("outbox").append(f"{ctx.input['email']}: your payment failed ({error['cause']})")
    return {"notified": ctx.input["email"]}


checkout = (
    tf.workflow("checkout-catch")
    .step("reserve-stock", reserve_stock, release_stock)
    .step("charge-card", charge_card, refund_card,
          retry=tf.Retry(max_attempts=3, interval=0.01, retry_on=[ConnectionError]),
          catch=[tf.Catch(errors=[CardDeclined], next="notify-customer", result="payment_error")])
    .step("ship", ship)
    .succeed("order-complete")  # ends the happy path with ship's output
    .step("notify-customer", notify_customer)
    .fail("order-cancelled", error="OrderCancelled",
          cause=lambda ctx: f"order {ctx.input['order_id']}: {ctx.get('payment_error')['cause']}")
    .build()
)


async def main() -> None:
    services = {"warehouse": Warehouse(), "cards": Cards(), "outbox": []}
    caught: list[dict[str, Any]] = []
    async with tf.open_engine(services=services) as engine:
        engine.events.on("workflow.step.caught", caught.append)
        engine.register(checkout)
        for order_id, card in (("ord-1", "4242-4242-4242-4242"), ("ord-2", "4000-0000-0000-0002")):
            iid = await engine.start("checkout-catch", {"order_id": order_id, "items": ["book", "pen"],
                                                        "total": 4200, "card": card, "email": "ada@example.com"})
            inst = await engine.wait(iid)
            print(f"{order_id} with card {card}: {inst.status}")
            if inst.status == "completed":
                print(f"  output: {inst.output}")
                continue
            print(f"  error_name={inst.error_name!r} cause={inst.cause!r}")
            charge = inst.step_results["charge-card"]
            print(f"  charge-card: {charge.status}, output {charge.output}")
            print(f"  steps run: {[r.step_name for r in inst.history]}")
            print(f"  compensated, newest first: {list(inst.compensated_steps)}")
    for event in caught:
        print(f"event {event['event']}: {event['step_name']} {event['error']} -> {event['next']}")
    print("stock reserved:", services["warehouse"].reserved)  # type: ignore[attr-defined]
    print("charges:       ", services["cards"].charges)  # type: ignore[attr-defined]
    print("outbox:        ", services["outbox"])


if __name__ == "__main__":
    trio.run(main)
