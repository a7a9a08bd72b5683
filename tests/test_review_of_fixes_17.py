"""Review of 8a249c1 (each test failed before its fix)."""

from __future__ import annotations


import trio
import trio.testing

import trioflow as tf
from test_review_of_fixes_15 import picks_again_after_a_resume, routed_by


async def test_explore_crashes_crash_run_whose_stuck_instance_is_a_child_does_not_hang(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """8a249c1 lets a crash run that never ends return its instance as it stands, so the checks
    report a divergence. But the code after ``_end_or_never`` is ``_children``, which calls
    ``engine.wait(child_id)`` unbounded on every child the (stuck) parent lists. Here the
    non-idempotent step is in the child (``also=``): after a resume the child is routed to a
    receive nobody signals, the parent waits on it, ``_end_or_never`` gives the parent back at
    the bound, and ``_children`` then waits for the stuck child for ever.

    Expected: CrashDivergenceError (the child's ``pick`` is not idempotent / never ended).
    Actual: explore_crashes never returns (the outer scope, 10**11 virtual s, cancels it)."""
    from trioflow.testing import CrashDivergenceError, explore_crashes

    pick, fresh_storage = picks_again_after_a_resume()

    kid = routed_by(pick, "kid")
    parent = tf.workflow("parent").child("c", workflow="kid").build()
    raised: BaseException | None = None
    with trio.move_on_after(10**11) as bound:
        try:
            await explore_crashes(parent, adapter_factory=fresh_storage, also=[kid])
        except Exception as exc:  # noqa: BLE001
            raised = exc
    assert not bound.cancelled_caught, "explore_crashes hung on the stuck child of a crash run"
    assert isinstance(raised, CrashDivergenceError), f"expected CrashDivergenceError, got {raised!r}"
