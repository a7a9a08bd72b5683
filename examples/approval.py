"""An expense report that waits for people: a reminder timer, a manager's approval with a
3-day timeout, and an escalation to a director when the manager stays silent (durable waiting).

Submit the report, wait a day, remind the manager, then wait up to 3 more days for the manager's
``approved`` signal. A timeout fails that receive step with ``SignalTimeoutError``, which a
catch routes to "escalate": the director is asked, and the report waits for the director's
``director-approved`` signal. Whoever approved, the report is paid. (An approval sent before the
reminder is kept, and taken when the receive step runs; the reminder still goes out.)

Two reports run on virtual time (``trioflow.testing``: trio's ``MockClock``, and an engine whose
wall clock follows it), stored in a SQLite file in a temporary directory, so days of waiting
take milliseconds. exp-1's manager approves on day 2. The engine then stops; a day later a new
engine opens the same file; exp-2's manager never answers, so its receive times out on day 4,
it is escalated, and the director approves on day 5. Waits longer than a second let an instance
leave memory: it is stored with what it waits for, which ``get_instance(...).waiting`` shows.

    python examples/approval.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import trio

import trioflow as tf
from trioflow.testing import open_test_engine, run, virtual_wall_clock

DAY = 86400.0


class Payments:
    def __init__(self) -> None:
        self.paid: dict[str, int] = {}

    async def pay(self, report_id: str, employee: str, amount: int) -> dict[str, Any]:
        self.paid[report_id] = amount  # keyed by report: paying again after a restart is harmless
        return {"report_id": report_id, "paid_to": employee, "amount": amount}


async def submit(ctx: tf.WorkflowContext) -> dict[str, Any]:
    report = ctx.input
    ctx.resolve("outbox").append(
        f"to {report['manager']}: please approve {report['report_id']} ({report['amount']} EUR)")
    return {"report_id": report["report_id"], "amount": report["amount"]}


async def remind_manager(ctx: tf.WorkflowContext) -> dict[str, Any]:
    ctx.resolve("outbox").append(f"to {ctx.input['manager']}: reminder, {ctx.input['report_id']} awaits your approval")
    return {"reminded": ctx.input["manager"]}


async def escalate(ctx: tf.WorkflowContext) -> dict[str, Any]:
    # The caught timeout is the receive step's output, and ctx.error: {"error": ..., "cause": ...}.
    error = ctx.error
    assert error is not None and error["error"] == "SignalTimeoutError"
    ctx.resolve("outbox").append(
        f"to {ctx.input['director']}: {ctx.input['report_id']} was not approved in time, please decide")
    return {"escalated_to": ctx.input["director"], "because": error["cause"]}


async def pay(ctx: tf.WorkflowContext) -> dict[str, Any]:
    # The payload of the signal that approved it is the output of the receive step that took it.
    approval = ctx.steps["director-approval"] if "director-approval" in ctx.steps else ctx.steps["manager-approval"]
    payment: dict[str, Any] = await ctx.resolve("payments").pay(
        ctx.input["report_id"], ctx.input["employee"], ctx.input["amount"])
    return {**payment, "approved_by": approval["by"]}


expense_report = (
    tf.workflow("expense-report")
    .step("submit", submit)
    .wait("remind-later", seconds=DAY)  # durable: a restart waits only what is left
    .step("remind-manager", remind_manager)
    .receive("manager-approval", signal="approved", timeout=3 * DAY,
             catch=[tf.Catch(errors=[tf.SignalTimeoutError], next="escalate")])
    .step("pay", pay)
    .succeed("paid")  # ends the approved-in-time path with pay's output
    .step("escalate", escalate)
    .receive("director-approval", signal="director-approved", next="pay")
    .build()
)


def _days(seconds: float) -> str:
    return f"day {seconds / DAY:.1f}"


def _relative(waiting: dict[str, Any] | None, epoch: float) -> dict[str, Any] | None:
    """What an instance waits for, with its due times as days since the demo began."""
    if waiting is None:
        return None
    return {k: _days(v - epoch) if isinstance(v, float) else v for k, v in waiting.items()}


async def main() -> None:
    services = {"payments": Payments(), "outbox": []}
    events: list[tuple[float, dict[str, Any]]] = []
    report = {"employee": "ada", "manager": "kim", "director": "lee"}
    amounts = {"exp-1": 420, "exp-2": 1250}
    clock = virtual_wall_clock()  # Unix seconds moving with virtual time (the test engine's default)
    epoch, t0 = clock(), trio.current_time()

    def record(event: dict[str, Any]) -> None:
        events.append((trio.current_time() - t0, event))

    async def show(engine: tf.Engine, label: str) -> None:
        print(f"{label} ({_days(trio.current_time() - t0)}):")
        for report_id in amounts:
            inst = await engine.get_instance(report_id)
            assert inst is not None
            print(f"  {report_id}: {inst.status}, waiting {_relative(inst.waiting, epoch)}")

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "expenses.db"
        async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), services=services, clock=clock) as engine:
            engine.events.on("workflow.step.waiting", record)
            engine.events.on("workflow.signal.received", record)
            engine.register(expense_report)
            for report_id, amount in amounts.items():
                await engine.start("expense-report", {**report, "report_id": report_id, "amount": amount},
                                   instance_id=report_id)
            await trio.sleep(1.0)
            await show(engine, "after submitting")
            await trio.sleep(2 * DAY - 1.0)
            await show(engine, "after the reminders")
            await engine.signal("exp-1", "approved", {"by": "kim"})
            done = await engine.wait("exp-1")
            print(f"exp-1 approved by kim on {_days(trio.current_time() - t0)}: {done.status}, output {done.output}")
        print(f"engine stopped on {_days(trio.current_time() - t0)}; exp-2 stays stored, waiting")
        await trio.sleep(DAY)  # no engine runs for a day
        async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db), services=services, clock=clock) as engine:
            engine.events.on("workflow.step.waiting", record)
            engine.events.on("workflow.signal.received", record)
            engine.register(expense_report)
            await show(engine, "a new engine on the same file")
            await trio.sleep(2 * DAY)  # exp-2's manager stays silent: its receive times out on day 4
            await show(engine, "after the manager's timeout")
            await engine.signal("exp-2", "director-approved", {"by": "lee"})
            escalated = await engine.wait("exp-2")
            print(f"exp-2 approved by lee on {_days(trio.current_time() - t0)}: {escalated.status},"
                  f" output {escalated.output}")
            caught = escalated.step_results["manager-approval"]
            print(f"  manager-approval: {caught.status}, {caught.error_name}: {caught.cause}")
            print(f"  steps run: {[r.step_name for r in escalated.history]}")
    for at, event in events:
        what = _relative(event["waiting"], epoch) if "waiting" in event else {
            "signal": event["signal"], "payload": event["payload"]}
        print(f"{_days(at)} {event['event']}: {event['instance_id']} {event['step_name']} {what}")
    print("paid:", services["payments"].paid)  # type: ignore[attr-defined]
    print("outbox:")
    for message in services["outbox"]:  # type: ignore[attr-defined]
        print(f"  {message}")


if __name__ == "__main__":
    run(main)
