"""From an adversarial review of 354e118 and 39ac6fa. Each test but the predicate's failed until
the commit that added this file; that one asserts the limit docs/errors.md now names. On trio's
autojumping MockClock, real adapters (MemoryAdapter subclasses that only sleep before a call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


# -- 39ac6fa: a compensation taken up in its retry delay by a release allowing no more ------

async def test_a_deploy_that_removes_a_retry_policy_still_retries_a_parked_compensation(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A user's ``charge`` step (compensated by ``refund``) had ``Retry(max_attempts=5,
    interval=60)``; refunds that fail get retried, and a retried refund double-refunds. They
    deploy a release without ``retry=`` (README: a step without retry= is tried once; 39ac6fa
    made a step parked in a retry delay fail with its last error rather than try again under
    such a release). An instance whose refund is in its retry delay (kept on the main lane's
    "undo" wait, README: its compensation's attempts survive a restart) is taken up by the new
    release. The user expects no refund attempt beyond what the running release allows, as
    39ac6fa gives a forward step. Was: the compensation made attempt 2 under a policy of
    max_attempts=1 (a second refund)."""
    db = tmp_path / "flows.db"
    refunds: list[int] = []

    def release(retry: tf.Retry | None) -> tf.WorkflowDefinition:
        async def charge(ctx: Any) -> str:
            return "ch_1"

        async def refund(ctx: Any, result: Any) -> None:
            refunds.append(tf.current_step().attempt)
            raise ConnectionError("refund gateway timed out (the refund may have gone through)")

        async def ship(ctx: Any) -> None:
            raise RuntimeError("out of stock")

        return (tf.workflow("pay").step("charge", charge, compensate=refund, retry=retry)
                .step("ship", ship).build())

    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(release(tf.Retry(max_attempts=5, interval=60.0, max_interval=60.0, backoff_rate=1.0)))
        iid = await engine.start("pay", {"order": 1})
        await trio.sleep(10)  # ship failed at t=0, refund attempt 1 failed; attempt 2 due at t=60
    assert refunds == [1]
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:  # the deploy
        engine.register(release(None))
        done = await engine.wait(iid)
    assert done.status == "failed"
    assert refunds == [1], f"no refund attempt beyond what the running release allows; made {refunds}"


# -- 39ac6fa: every lane in a retry delay now carries its error (up to 32 KB) in the header ---

async def test_a_map_of_items_in_retry_delays_keeps_its_header_small(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A map over 200 URLs whose fetch fails with the server's error page (a 32 KB message,
    which the docs say a cause is cut to) and is retried an hour later. README (storage model)
    and docs/adapters.md: the header rewritten by every checkpoint is *small* (lane positions,
    errors of the instance); README's benchmark shows about 6 KB for a map of 4,000 items in
    flight. Was: since 39ac6fa each item's lane kept its last attempt's error name and
    whole cause in its retry wait, inside the header: 200 parked items make a header of over
    6 MB, rewritten by each item's checkpoint (a map of 8,200 would pass the 256 MiB limit and
    fail to store at all)."""
    big = "<html>" + "x" * 40_000 + "</html>"

    async def fetch(ctx: Any) -> None:
        raise ConnectionError(f"HTTP 503 from {ctx.item}: {big}")

    item = tf.workflow.branch("item").step("fetch", fetch, retry=tf.Retry(max_attempts=3, interval=3600.0, max_interval=3600.0)).build()
    wf = tf.workflow("crawl").map("fetch_all", items=lambda ctx: [f"u{i}" for i in range(200)], branch=item).build()
    adapter = tf.adapters.SQLiteAdapter(tmp_path / "flows.db")
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(wf)
        iid = await engine.start("crawl", {})
        await trio.sleep(60)  # every item failed its first attempt; the next is due in an hour
        stored = await adapter.load(iid)
        assert stored is not None
        await engine.cancel(iid)
    assert len(stored.header) < 1_000_000, f"header of {len(stored.header):,} bytes"


async def test_a_task_steps_catch_predicate_after_a_deploy_lowering_retries_sees_the_recorded_error(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A user's ``charge`` step routes a gateway error with a catch predicate. They deploy a
    release lowering ``max_attempts`` from 5 to 2 while an instance waits out its third
    attempt's delay: the step fails then with the last attempt's error as its wait kept it
    (the live one is gone with the process that raised it). The reviewer expected the predicate
    to see the live ``ConnectionError`` (docs/errors.md said task steps' predicates always do);
    docs/errors.md now names this exception: the predicate gets a ``tf.RecordedError``, and one
    written on ``tf.error_name(e)``, as the docs advise, routes it; one on ``isinstance`` does
    not."""
    db = tmp_path / "flows.db"
    seen: list[str] = []

    def release(retry: tf.Retry) -> tf.WorkflowDefinition:
        async def charge(ctx: Any) -> None:
            raise ConnectionError("payment gateway timed out")

        async def give_up(ctx: Any) -> str:
            return "queued for a person"

        def gateway(e: BaseException) -> bool:
            seen.append(type(e).__name__)
            return tf.error_name(e) == "ConnectionError"

        return (tf.workflow("pay").step("charge", charge, retry=retry,
                                        catch=[tf.Catch(errors=[gateway], next="give_up")])
                .succeed("paid").step("give_up", give_up).build())

    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(release(tf.Retry(max_attempts=5, interval=60.0, max_interval=60.0, backoff_rate=1.0)))
        iid = await engine.start("pay", {"order": 1})
        await trio.sleep(130)  # attempts at 0, 60 and 120 failed; the fourth is due at 180
    async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
        engine.register(release(tf.Retry(max_attempts=2, interval=60.0, max_interval=60.0)), replace=True)
        done = await engine.wait(iid)
    assert (done.status, done.output) == ("completed", "queued for a person"), (done.status, done.error)
    assert seen == ["RecordedError"]


# -- open_engine: the block's own exception loses its __context__ ----------------------------

def test_the_blocks_own_exception_keeps_the_exception_it_was_raised_while_handling() -> None:
    """A user's code in an engine's block catches a ``KeyError`` and raises ``ValueError("bad
    config")`` while handling it. The engine hands the block's own exception back "as the
    caller raised it" (open_engine; 354e118: "the block's own exceptions go on as raised"), so
    the user expects Python's usual traceback: ``__context__`` the KeyError, printed as "During
    handling of the above exception...". Was: open_engine re-raised it with ``raise exc
    from exc.__cause__`` inside its ``except BaseExceptionGroup``: ``__context__`` becomes
    trio's nursery group (holding the ValueError itself) and ``__suppress_context__`` is set,
    so the KeyError is gone from the traceback. (The same happens to a step's SystemExit handed
    on bare.)"""

    async def main() -> None:
        async with open_test_engine():
            try:
                {}["missing"]
            except KeyError:
                raise ValueError("bad config")

    raised: BaseException | None = None
    try:
        tf.testing.run(main)
    except ValueError as exc:
        raised = exc
    assert raised is not None
    assert isinstance(raised.__context__, KeyError), repr(raised.__context__)
    assert not raised.__suppress_context__


# -- 354e118: a queued child whose parent is cut and whose own cancel() was abandoned --------

class _SlowChildAndParent(tf.adapters.MemoryAdapter):
    """A child's create sleeps 5 s; checkpoints of instance 'p' after t=1 sleep 2 s (a busy
    database: the parent's cancel decision is slow to store). (As in test_review_of_fixes_30.)"""

    async def create(self, instance_id: str, *args: Any, parent_id: Any = None, **kwargs: Any) -> Any:
        if parent_id is not None:
            await trio.sleep(5)
        return await super().create(instance_id, *args, parent_id=parent_id, **kwargs)

    async def checkpoint(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if instance_id == "p" and trio.current_time() > 1:
            await trio.sleep(2)
        return await super().checkpoint(instance_id, *args, **kwargs)


async def test_queued_child_of_a_cancelled_parent_runs_no_step_after_an_abandoned_cancel_of_it(
        autojump_clock: trio.testing.MockClock) -> None:
    """As test_review_of_fixes_30's first test (a saga's child charges a card, max_running=2,
    another instance busy, the child's store slow), plus: an operator's tool first tried
    ``engine.cancel(child_id)`` with a 1 s budget (``trio.move_on_after(1)``; README: cancel
    may wait for the decision to be stored) and gave up, then cancelled the parent. 354e118
    promises a child made while its parent's step was cut "is cancelled from the queue, before
    its first step". The user expects the card never charged. Was: the abandoned cancel()
    left the store's ``cancel_wanted`` set, so ``_cancel_as_made_run`` leaves the queued run
    to a cancel() call that is no longer there: the child takes the next free slot and charges
    (then is compensated)."""
    charged: list[float] = []

    async def charge(ctx: Any) -> str:
        charged.append(trio.current_time())
        return "charged"

    async def refund(ctx: Any, result: Any) -> None:
        pass

    async def busy(ctx: Any) -> None:
        await trio.sleep(5.5)

    card = tf.workflow("card").step("charge", charge, refund).build()
    other = tf.workflow("other").step("busy", busy).build()
    parent = tf.workflow("parent").child("pay", workflow="card").build()
    async with open_test_engine(adapter=_SlowChildAndParent(), max_running=2) as engine:
        for definition in (card, other, parent):
            engine.register(definition)
        pid = await engine.start("parent", instance_id="p")
        await engine.start("other", instance_id="x")
        await trio.sleep(0.1)  # the child's store is in flight
        with trio.move_on_after(1):
            await engine.cancel("p/pay#1")
        assert await engine.cancel(pid) is True
        ended = await engine.wait(pid)
        await trio.sleep(30)  # let anything left over run
    assert ended.status == "cancelled"
    assert charged == [], f"the child charged at {charged} after its parent's cancel"
