"""A process-order state machine on an engine: validate, choose, fulfil in parallel.

Two orders: one in stock (parallel shipping + notification), one backordered. Progress events
are printed as they arrive.

    python examples/order_state_machine.py
"""

from __future__ import annotations

from typing import Any

import trio

import trioflow as tf

STOCK = {"ORD-123": True, "ORD-124": False}

process_order = (
    tf.workflow("process-order")
    .default_retry(tf.Retry(max_attempts=3, interval=0.1))
    .task("validate", job="validate-order", input=lambda ctx: {"order_id": ctx.input["order_id"]})
    .choice("check-inventory",
            choices=[tf.when(lambda ctx: ctx.steps["validate"]["in_stock"], next="fulfill")],
            default="backorder")
    .parallel("fulfill", branches=[
        tf.workflow.branch("shipping").task("ship", job="create-shipment").build(),
        tf.workflow.branch("notification").task("notify", job="send-confirmation").build(),
    ], next="complete")
    .task("backorder", job="create-backorder", next="complete")
    .pass_("complete", transform=lambda ctx: {"order_id": ctx.input["order_id"], "steps": sorted(ctx.steps)}, end=True)
    .build()
)


async def main() -> None:
    async with tf.open_engine() as engine:
        @engine.job("validate-order")
        async def validate_order(data: dict[str, Any]) -> dict[str, Any]:
            return {"order_id": data["order_id"], "in_stock": STOCK[data["order_id"]]}

        @engine.job("create-shipment")
        async def create_shipment(data: dict[str, Any]) -> dict[str, Any]:
            await trio.sleep(0.01)
            return {"tracking": f"TRK-{data['order_id']}"}

        @engine.job("send-confirmation")
        async def send_confirmation(data: dict[str, Any]) -> dict[str, Any]:
            return {"sent": True}

        @engine.job("create-backorder")
        async def create_backorder(data: dict[str, Any]) -> dict[str, Any]:
            return {"backordered": data["order_id"]}

        engine.events.on("workflow.progress", lambda e: print(
            f"  [{e['instance_id']}] {e['progress']:3d}% (next: {e['current_step']})"))
        engine.register(process_order)
        ids = [await engine.start("process-order", {"order_id": oid}, instance_id=oid) for oid in STOCK]
        for iid in ids:
            inst = await engine.wait(iid)
            ran = [n for n, r in inst.step_results.items() if r.status == "completed"]
            print(f"{iid}: {inst.status}; ran {ran}")
            print(f"  output: {inst.output}")


if __name__ == "__main__":
    trio.run(main)
