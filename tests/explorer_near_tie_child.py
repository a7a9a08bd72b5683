"""Run as a child process by test_fanout_crash_review.py, so that a hang can be stopped: runs
``explore_crashes`` on a fail-fast parallel step whose catch routes on, one branch failing at
the very instant the child of the other completes, for trio scheduler seeds 0..SEEDS-1.
Prints ``returned <seed> <outcome>`` each time the explorer comes back (a report, or a
CrashDivergenceError: either is an answer)."""
from __future__ import annotations

import sys

import trio._core._run as trio_run

from test_fanout_crash_review import kid as make_kid, root as make_root  # the workflows under test
from trioflow.testing import CrashDivergenceError, explore_crashes, run

kid, root = make_kid(), make_root()


async def main() -> str:
    try:
        report = await explore_crashes(root, None, also=[kid])
    except CrashDivergenceError as exc:
        return f"divergence: {exc}"
    return f"{report.baseline.status} after {report.writes} writes"


for seed in range(int(sys.argv[1])):
    trio_run._r.seed(seed)
    print("returned", seed, run(main), flush=True)
