"""From an adversarial review of trioflow as a Temporal (Python SDK) or DBOS user porting their
workflows reads it. The first two tests failed until the commit that added this file; the last
holds a documented difference (README, Retention) to what it says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


def _charge_workflow(calls: list[int], retry: tf.Retry | None) -> tf.WorkflowDefinition:
    async def charge(ctx: Any) -> None:
        calls.append(tf.current_step().attempt)
        raise ConnectionError("payment gateway timed out (the charge may have gone through)")

    return tf.workflow("pay").step("charge", charge, retry=retry).build()


async def test_a_deploy_that_removes_a_retry_policy_still_retries_parked_instances(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A user's `charge` step had `Retry(max_attempts=3, interval=60)`. They find that retrying
    it double-charges customers, and deploy a release whose `charge` step has no `retry=` (README:
    "A step without retry= ... is tried once"). Instances already waiting out a retry delay are
    taken up by the new release (README, Registration: "A replaced definition is used by ...
    instances taken up from storage (after a restart, or waking from a wait out of memory)"); the
    README says such a step keeps "its attempts" (the count), not the old policy. The user
    expects no further charge attempt under a policy that allows none (a Temporal user would at
    worst expect the old policy, which is fixed when the activity is scheduled; never a mix).
    Was: the parked instance made one more attempt (attempt 2 of a policy with
    max_attempts=1: `tf.current_step().attempt == 2`), a second charge. The same happens with a
    release that lowers max_attempts below the attempts already made (3 made, new max 2: a 4th
    attempt runs) or whose retry_on no longer matches the error."""
    db = tmp_path / "flows.db"
    calls: list[int] = []
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(_charge_workflow(calls, tf.Retry(max_attempts=3, interval=60.0, max_interval=60.0)))
        iid = await engine.start("pay", {"order": 1})
        await trio.sleep(10)  # attempt 1 failed at t=0; attempt 2 is due at t=60, parked
    assert calls == [1]
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:  # the deploy
        engine.register(_charge_workflow(calls, None))
        done = await engine.wait(iid)
    assert done.status == "failed"
    assert calls == [1], f"no attempt beyond what the running release allows; made attempts {calls}"


async def test_a_deploy_that_lowers_max_attempts_below_those_made_fails_the_step_with_the_last_error(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """The same with a release lowering ``max_attempts`` from 5 to 2 while an instance waits
    out its third attempt's delay: no fourth attempt; the step fails with the error its last
    attempt raised, as recorded (a catch by that error's class routes it). Was: a fourth
    attempt ran (``attempts == 4`` recorded)."""
    db = tmp_path / "flows.db"
    calls: list[int] = []

    def release(retry: tf.Retry) -> tf.WorkflowDefinition:
        async def charge(ctx: Any) -> None:
            calls.append(tf.current_step().attempt)
            raise ConnectionError("payment gateway timed out")

        async def give_up(ctx: Any) -> str:
            return "queued for a person"

        return (tf.workflow("pay").step("charge", charge, retry=retry,
                                        catch=[tf.Catch(errors=[ConnectionError], next="give_up")])
                .succeed("paid").step("give_up", give_up).build())

    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(release(tf.Retry(max_attempts=5, interval=60.0, max_interval=60.0, backoff_rate=1.0)))
        iid = await engine.start("pay", {"order": 1})
        await trio.sleep(130)  # attempts at 0, 60 and 120 failed; the fourth is due at 180
    assert calls == [1, 2, 3]
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(release(tf.Retry(max_attempts=2, interval=60.0, max_interval=60.0)), replace=True)
        done = await engine.wait(iid)
    assert calls == [1, 2, 3]
    assert (done.status, done.output) == ("completed", "queued for a person")
    record = done.step_results["charge"]
    assert (record.status, record.attempts, record.error_name) == ("caught", 3, "ConnectionError")
    assert record.cause == "payment gateway timed out"


async def test_a_filtered_purge_leaves_children_whose_ids_a_parent_started_again_meets(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """README, Retention: the purge that deletes a parent deletes its children of the status
    and workflow it asks for; the others go later by their own finish times, their ids taken
    until then: a parent started again under its id fails its child step with
    ``InstanceIdConflictError``; purged without a filter, the family goes whole and the id
    starts again cleanly. (The reviewer expected the filtered purge to take the child too, as
    Temporal's id reuse would allow; kept as documented, the adapters' purge contract being
    what it is.)"""
    async def take(ctx: Any) -> str:
        return "paid"

    payment = tf.workflow("payment").step("take", take).build()
    order = tf.workflow("order").child("pay", workflow="payment").build()
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(tmp_path / "flows.db")) as engine:
        engine.register(payment)
        engine.register(order)
        first = await engine.wait(await engine.start("order", {"o": 1}, instance_id="o-1"))
        assert first.status == "completed"
        await trio.sleep(10)
        assert await engine.purge(older_than=0, workflow="order") == 1
        assert await engine.get_instance("o-1/pay#1") is not None
        again = await engine.wait(await engine.start("order", {"o": 1}, instance_id="o-1"))
        assert (again.status, again.error_name) == ("failed", "InstanceIdConflictError")
        await trio.sleep(10)
        assert await engine.purge(older_than=0) == 2
        third = await engine.wait(await engine.start("order", {"o": 1}, instance_id="o-1"))
    assert third.status == "completed", third.error
