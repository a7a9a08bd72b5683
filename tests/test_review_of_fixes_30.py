"""From an adversarial review of the fixes in c12ec9f..96575b6: open_engine's unwrapping of
SystemExit/KeyboardInterrupt, error class names cut to 256 characters, and children whose store
was in flight as their parent's step was cut. Each test but the last (a guard) failed until the
commit that added this file (the cut of class names was undone: a child's error is matched by
its class's full name). trio's MockClock (autojump) throughout; real MemoryAdapter subclasses
that only sleep before a call."""
from __future__ import annotations

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine


def run_virtual(fn):
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


# -- 1. a queued child of a cancelled parent runs its first step --------------------------------

class _SlowChildAndParent(tf.adapters.MemoryAdapter):
    """A child's create sleeps 5 s; checkpoints of instance 'p' after t=1 sleep 2 s (a busy
    database: the parent's cancel decision is slow to store)."""

    async def create(self, instance_id, *args, parent_id=None, **kwargs):
        if parent_id is not None:
            await trio.sleep(5)
        return await super().create(instance_id, *args, parent_id=parent_id, **kwargs)

    async def checkpoint(self, instance_id, *args, **kwargs):
        if instance_id == "p" and trio.current_time() > 1:
            await trio.sleep(2)
        return await super().checkpoint(instance_id, *args, **kwargs)


def test_queued_child_of_a_cancelled_parent_runs_no_step():
    """A saga's child charges a card; the engine runs at ``max_running=2``, busy with another
    instance. The child's store is slow (5 s); ``engine.cancel(parent)`` comes at 0.1 s. The
    fix 96575b6 and docs/fanout.md promise that the child the store makes "is cancelled before
    its first step, as the parent's step is cut". A user expects the card never charged.
    Was: the child was made at t=5 while both slots were taken, so it was queued; the cut was
    not applied to a queued run; the other instance ended at 5.5 s, before the parent's slow
    cancel reached ``cancel_children``, the child took the slot and charged the card at t=5.5,
    and was only then cancelled and compensated (the behaviour 96575b6 meant to end)."""
    charged: list[float] = []

    async def charge(ctx):
        charged.append(trio.current_time())
        return "charged"

    async def refund(ctx, result):
        pass

    async def busy(ctx):
        await trio.sleep(5.5)

    card = tf.workflow("card").step("charge", charge, refund).build()
    other = tf.workflow("other").step("busy", busy).build()
    parent = tf.workflow("parent").child("pay", workflow="card").build()

    async def main():
        async with open_test_engine(adapter=_SlowChildAndParent(), max_running=2) as engine:
            for definition in (card, other, parent):
                engine.register(definition)
            pid = await engine.start("parent", instance_id="p")
            await engine.start("other", instance_id="x")
            await trio.sleep(0.1)               # the child's store is in flight
            assert await engine.cancel(pid) is True
            ended = await engine.wait(pid)
            await trio.sleep(30)                # let anything left over run
            kids = [await engine.get_instance(c) for c in ended.children]
            return ended, kids

    ended, kids = run_virtual(main)
    assert ended.status == "cancelled"
    assert charged == [], f"the child charged at {charged} after its parent's cancel; kids: {[k.status for k in kids if k]}"


# -- 2. a child's long-named error no longer matches the parent's catch by class -----------------

LongDeclined = type("CardDeclined" + "X" * 300, (ValueError,), {})


def test_parent_catches_a_childs_long_named_error_by_its_class():
    """README: a child that fails fails its step "with the child's own error (catchable)"; a
    ``Catch(errors=[SomeError])`` on the child step routes it. The child's step raises an
    exception class whose name is over 256 characters (made with ``type()``, as generated
    error classes are). A user expects the parent's catch by that class to route to
    ``declined``, as it does for a short name. Was: the parent failed with
    ChildWorkflowError: 1f9d79e recorded the child's error name cut to 256 characters, and the
    parent matches a child's recorded error by class through its full ``__name__``."""

    async def charge(ctx):
        raise LongDeclined("card declined")

    card = tf.workflow("card").step("charge", charge).build()
    parent = (tf.workflow("parent")
              .child("pay", workflow="card", catch=[tf.Catch(errors=[LongDeclined], next="declined")])
              .succeed("paid")
              .pass_("declined", result="declined", end=True)
              .build())

    async def main():
        async with open_test_engine() as engine:
            engine.register(card)
            engine.register(parent)
            return await engine.wait(await engine.start("parent"))

    done = run_virtual(main)
    assert (done.status, done.output) == ("completed", "declined"), (done.status, done.cause)


# -- 3. the caller's own group holding a KeyboardInterrupt is cut to the KeyboardInterrupt -----

def test_callers_own_group_with_a_keyboard_interrupt_keeps_its_other_errors():
    """A service opens its own nursery inside the engine's block; one task fails with
    ValueError("db down") and, in the same tick, another meets a KeyboardInterrupt (Ctrl+C).
    trio raises ``BaseExceptionGroup([ValueError, KeyboardInterrupt])`` and the user's
    ``except* ValueError`` (logging the db failure) relies on it; before 1f9d79e open_engine
    handed the caller's group back as raised. Was: open_engine's ``except
    BaseExceptionGroup`` split out any SystemExit/KeyboardInterrupt, whoever raised it, and
    raised the first bare: the ValueError and its traceback were gone (only a suppressed
    ``__context__`` held them)."""

    async def main():
        async with open_test_engine():
            async def fails():
                raise ValueError("db down")

            async def interrupted():
                raise KeyboardInterrupt

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fails)
                nursery.start_soon(interrupted)

    raised: BaseException | None = None
    try:
        run_virtual(main)
    except BaseException as exc:  # (caught here: a bare KeyboardInterrupt would stop pytest)
        raised = exc
    assert isinstance(raised, BaseExceptionGroup), f"got {type(raised).__name__}: {raised!r}"
    assert raised.subgroup(ValueError) is not None


# -- guard (held): an engine closing under a child's store leaves the child for the next ------

class _SlowChild(tf.adapters.MemoryAdapter):
    async def create(self, instance_id, *args, parent_id=None, **kwargs):
        if parent_id is not None:
            await trio.sleep(5)
        return await super().create(instance_id, *args, parent_id=parent_id, **kwargs)


def test_close_during_a_child_store_leaves_the_child_for_the_next_engine():
    """Guard: a parent with a workflow timeout (so its store records a finite ``cut_at``) is
    storing its child as the engine's block is left; the next engine completes the parent,
    the child charging once (docs/fanout.md: the engine's close leaves it stored)."""
    charged: list[float] = []

    async def charge(ctx):
        charged.append(trio.current_time())
        return "charged"

    card = tf.workflow("card").step("charge", charge).build()
    parent = tf.workflow("parent").with_timeout(100).child("pay", workflow="card").build()

    async def main():
        adapter = _SlowChild()
        async with open_test_engine(adapter=adapter) as engine:
            engine.register(card)
            engine.register(parent)
            await engine.start("parent", instance_id="p")
            await trio.sleep(0.1)
        async with open_test_engine(adapter=adapter) as engine:
            engine.register(card)
            engine.register(parent)
            return await engine.wait("p")

    done = run_virtual(main)
    assert done.status == "completed" and len(charged) == 1
