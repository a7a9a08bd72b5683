"""A complete state machine: user onboarding with a plan-dependent setup step.

Shows events, a flaky job that succeeds on retry, and the instance inspection API.

    python examples/onboarding.py
"""

from __future__ import annotations

from typing import Any

import trio

import trioflow as tf

onboarding = (
    tf.workflow("user-onboarding")
    .timeout(24 * 3600)
    .default_retry(tf.Retry(max_attempts=3, interval=0.05))
    .task("create-account", job="create-user-account", input=lambda ctx: ctx.input)
    .task("send-welcome-email", job="send-email", input=lambda ctx: {
        "to": ctx.input["email"], "template": "welcome", "user_id": ctx.steps["create-account"]["user_id"]})
    .choice("check-plan",
            choices=[tf.when(lambda ctx: ctx.input["plan"] == "enterprise", next="enterprise-setup")],
            default="standard-setup")
    .task("enterprise-setup", job="setup-enterprise",
          input=lambda ctx: {"user_id": ctx.steps["create-account"]["user_id"]}, next="complete")
    .task("standard-setup", job="setup-standard",
          input=lambda ctx: {"user_id": ctx.steps["create-account"]["user_id"]}, next="complete")
    .pass_("complete", transform=lambda ctx: {
        "user_id": ctx.steps["create-account"]["user_id"], "plan": ctx.input["plan"], "setup_complete": True},
        end=True)
    .build()
)


async def main() -> None:
    mail_attempts = 0
    async with tf.open_engine() as engine:
        @engine.job("create-user-account")
        async def create_user_account(data: dict[str, Any]) -> dict[str, Any]:
            return {"user_id": f"user-{data['name'].lower()}"}

        @engine.job("send-email")
        async def send_email(data: dict[str, Any]) -> dict[str, Any]:
            nonlocal mail_attempts
            mail_attempts += 1
            if mail_attempts == 1:
                raise ConnectionError("mail server busy")
            return {"sent": True}

        engine.jobs.register("setup-enterprise", lambda data: {"sso": True, **data})  # plain def: runs in a thread
        engine.jobs.register("setup-standard", lambda data: {"sso": False, **data})

        async with engine.events.subscribe("workflow.*") as events:
            engine.register(onboarding)
            for name, plan in (("Ada", "enterprise"), ("Bob", "free")):
                iid = await engine.start("user-onboarding", {"email": f"{name.lower()}@example.com", "name": name,
                                                            "plan": plan})
                inst = await engine.wait(iid)
                print(f"{name} ({plan}): {inst.status} -> {inst.output}")
                skipped = [n for n, r in inst.step_results.items() if r.status == "skipped"]
                print(f"  skipped: {skipped}; send-welcome-email attempts: "
                      f"{inst.step_results['send-welcome-email'].attempts}")
            seen: list[str] = []
            while True:
                try:
                    seen.append(events.receive_nowait()["event"])
                except trio.WouldBlock:
                    break
        print("events:", ", ".join(sorted(set(seen))))


if __name__ == "__main__":
    trio.run(main)
