"""Run as a child process by test_fanout_crash_review.py, so that a hang can be stopped: runs
``explore_crashes`` on a fail-fast parallel step whose catch routes on, one branch failing at
the very instant the child of the other completes, for trio scheduler seeds 0..SEEDS-1.
Prints ``returned <seed> <outcome>`` each time the explorer comes back (a report, or a
CrashDivergenceError: either is an answer)."""
from __future__ import annotations

import sys

import trio
import trio._core._run as trio_run

import trioflow as tf
from trioflow.testing import CrashDivergenceError, explore_crashes, run


class Declined(Exception):
    pass


def sleeper(name: str, seconds: float, fails: bool = False, spins: int = 0):
    async def job(ctx: tf.WorkflowContext) -> str:
        await trio.sleep(seconds)
        for _ in range(spins):
            await trio.sleep(0)
        if fails:
            raise Declined(name)
        return name
    return job


async def undo(ctx: tf.WorkflowContext, result: object) -> None:
    await trio.sleep(0.25)


kid = tf.workflow("kid").step("k1", sleeper("k1", 0.5), undo).step("k2", sleeper("k2", 0.5, spins=2), undo).build()
root = (tf.workflow("root")
        .parallel("fan", branches=[tf.branch("A").step("a", sleeper("a", 1.0, fails=True)).build(),
                                   tf.branch("B").child("c", workflow="kid").build()],
                  catch=[tf.Catch(errors=[tf.ALL], next="after")])
        .succeed("done")
        .pass_("after", result="caught")
        .build())


async def main() -> str:
    try:
        report = await explore_crashes(root, None, also=[kid])
    except CrashDivergenceError as exc:
        return f"divergence: {exc}"
    return f"{report.baseline.status} after {report.writes} writes"


for seed in range(int(sys.argv[1])):
    trio_run._r.seed(seed)
    print("returned", seed, run(main), flush=True)
