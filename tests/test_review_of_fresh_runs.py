"""Review of the fresh-run changes (f5beff7, 30c3e5e, 0b27a6c, 7b5f582, e08e804).

What a user relies on: a signal ``signal()`` acknowledged reaches the instance exactly once, and
signals of one name are taken in the order they were stored, whether the instance was started
here a moment ago (its start still being stored), queued for a slot, delayed, or resumed; a
child's end always reaches its parent; ``wait()`` and ``cancel()`` return.

The first three tests and the generated one pinned a bug of e08e804, fixed with them: a signal
stored while its instance's start was still being stored reached the new run only once its
``signal()`` call got back, and a signal sent after ``start()`` returned was taken before it.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
import trioflow as tf
from storages import engine_on, finish, storage  # noqa: F401  (storage: a fixture)
from trioflow.adapters import Adapter, MemoryAdapter


def receiver(*names: str) -> tf.WorkflowDefinition:
    """Receives ``names`` in order (steps r0, r1, ...); output: the list of what they gave."""
    b = tf.workflow("recv")
    for i, name in enumerate(names):
        b = b.receive(f"r{i}", signal=name)
    return b.pass_("collect", transform=lambda ctx: [ctx.steps[f"r{i}"] for i in range(len(names))],
                   end=True).build()


class SlowStorage(MemoryAdapter):
    """Storage that answers late: the write (or read) is made at once, its answer comes
    ``create_takes`` / ``signals_takes`` seconds later (a database across a network)."""

    def __init__(self, create_takes: float = 0.0, signals_takes: float = 0.0) -> None:
        super().__init__()
        self.create_takes, self.signals_takes = create_takes, signals_takes

    async def create(self, *args: Any, **kwargs: Any) -> bool:
        created = await super().create(*args, **kwargs)
        await trio.sleep(self.create_takes)
        return created

    async def signals(self, instance_id: str) -> list[tuple[int, str, bytes]]:
        found = await super().signals(instance_id)
        await trio.sleep(self.signals_takes)
        return found


# -- e08e804: signals sent while the start is being stored ---------------------------------------

async def test_signals_sent_during_and_right_after_a_start_are_taken_in_the_order_stored(
        autojump_clock: trio.testing.MockClock) -> None:
    """One signal is stored while the instance's start is still being stored, a second once
    ``start()`` has returned: the first receive takes the first (FIFO, docs/waiting.md)."""
    adapter = SlowStorage(create_takes=1.0, signals_takes=1.0)
    async with engine_on(adapter) as engine:
        engine.register(receiver("x", "x"))

        async def start_then_signal() -> None:
            await engine.start("recv", instance_id="the-id")
            await engine.signal("the-id", "x", "second")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_then_signal)
            await trio.sleep(0.5)  # the start is stored, its answer not back yet
            await engine.signal("the-id", "x", "first")
        done = await finish(engine, "the-id")
    assert done.status == "completed"
    assert done.output == ["first", "second"]


async def test_a_signal_acknowledged_before_the_next_is_sent_is_taken_first(
        autojump_clock: trio.testing.MockClock) -> None:
    """The first ``signal()`` returns (its caller gave up waiting: the signal is stored, and
    delivered beside it) before the second is sent; the first receive still takes the first."""
    adapter = SlowStorage(create_takes=1.0, signals_takes=1.0)
    happened: list[str] = []
    async with engine_on(adapter) as engine:
        engine.register(receiver("x", "x"))

        async def start_then_signal() -> None:
            await engine.start("recv", instance_id="the-id")
            happened.append("second sent")
            await engine.signal("the-id", "x", "second")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_then_signal)
            await trio.sleep(0.5)  # the start is stored, its answer not back yet
            with trio.move_on_after(0.2):
                await engine.signal("the-id", "x", "first")  # stored, then given up on
            happened.append("first acknowledged")
        done = await finish(engine, "the-id")
    assert happened == ["first acknowledged", "second sent"]
    assert done.status == "completed"
    assert done.output == ["first", "second"]


async def test_a_signal_stored_as_a_start_is_stored_is_taken_before_one_sent_after_on_both_adapters(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """Starts of given ids, each with one signal sent as it is being stored (tried until the id
    is known) and one sent right after ``start()`` returned. Where the first was stored (its
    adapter call returned) before the second was even sent, the first receive takes the first.
    (Where both were in flight together, each is taken once.)"""
    stored: dict[str, list[str]] = {}
    adapter = storage()
    send, send_and_load = adapter.send_signal, getattr(adapter, "send_signal_and_load", None)

    async def recorded_send(iid: str, name: str, payload: bytes) -> int | None:
        seq = await send(iid, name, payload)
        stored.setdefault(iid, []).append(msgpack.unpackb(payload))
        return seq

    async def recorded_send_and_load(iid: str, name: str, payload: bytes) -> Any:
        assert send_and_load is not None
        seq, row = await send_and_load(iid, name, payload)
        stored.setdefault(iid, []).append(msgpack.unpackb(payload))
        return seq, row

    adapter.send_signal = recorded_send  # type: ignore[method-assign]
    if send_and_load is not None:
        adapter.send_signal_and_load = recorded_send_and_load  # type: ignore[attr-defined]
    ids = [f"id-{n}" for n in range(40)]
    first_stored_before_second_sent: set[str] = set()
    async with engine_on(adapter) as engine:
        engine.register(receiver("x", "x"))

        async def start_then_signal(iid: str) -> None:
            await engine.start("recv", instance_id=iid)
            if "first" in stored.get(iid, []):
                first_stored_before_second_sent.add(iid)
            await engine.signal(iid, "x", "second")

        async def signal_as_it_starts(iid: str) -> None:
            while True:
                try:
                    await engine.signal(iid, "x", "first")
                    return
                except tf.UnknownInstanceError:
                    await trio.lowlevel.checkpoint()

        for iid in ids:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(start_then_signal, iid)
                nursery.start_soon(signal_as_it_starts, iid)
        done = {iid: await finish(engine, iid) for iid in ids}
    for iid in ids:
        assert done[iid].status == "completed" and sorted(done[iid].output) == ["first", "second"]
        if iid in first_stored_before_second_sent:
            assert done[iid].output == ["first", "second"], iid


# -- e08e804: fresh runs that do not run at once --------------------------------------------------

@pytest.mark.parametrize("delay", [0.5, 30.0])
async def test_signals_sent_to_a_delayed_start_are_taken_once_in_order(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter], delay: float) -> None:
    """A delayed start, in memory (a short delay) or out of it (a long one): signals sent while
    it waits to start, and once it runs, are each taken once, in the order sent."""
    async with engine_on(storage()) as engine:
        engine.register(receiver("x", "x", "x"))
        iid = await engine.start("recv", delay=delay)
        await engine.signal(iid, "x", 1)
        await trio.sleep(delay / 3)
        await engine.signal(iid, "x", 2)
        await trio.sleep(delay)
        await engine.signal(iid, "x", 3)
        done = await finish(engine, iid)
        left = await engine.adapter.signals(iid)
    assert done.status == "completed" and done.output == [1, 2, 3]
    assert left == []


async def test_signals_sent_to_an_instance_queued_for_a_slot_are_taken_in_order(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """``max_running=1``: a fresh instance waits in the queue (pending) while signals come; each
    is taken once, in order, once it runs."""
    blocker = tf.workflow("block").receive("hold", signal="free").build()
    async with engine_on(storage(), max_running=1) as engine:
        engine.register(receiver("x", "x"))
        engine.register(blocker)
        holding = await engine.start("block")
        iid = await engine.start("recv", instance_id="queued")
        assert (await engine.get_instance(iid)).status == "pending"  # type: ignore[union-attr]
        await engine.signal(iid, "x", "a")
        await engine.signal(iid, "x", "b")
        await engine.signal(holding, "free")
        done = await finish(engine, iid)
        assert (await finish(engine, holding)).status == "completed"
    assert done.status == "completed" and done.output == ["a", "b"]


async def test_repeated_starts_of_one_id_with_signals_between_take_each_once(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """``start()`` of one id three times at once (idempotent), signals sent among them: one
    instance, each signal taken once."""
    async with engine_on(storage()) as engine:
        engine.register(receiver("x", "x", "x"))

        async def start() -> None:
            assert await engine.start("recv", {"same": True}, instance_id="one") == "one"

        async def send(n: int) -> None:
            while True:
                try:
                    await engine.signal("one", "x", n)
                    return
                except tf.UnknownInstanceError:
                    await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(start)
                nursery.start_soon(send, n)
        done = await finish(engine, "one")
        listed = await engine.get_instances("recv")
    assert [i.id for i in listed] == ["one"]
    assert done.status == "completed" and sorted(done.output) == [0, 1, 2]


class LostCreateAnswer(MemoryAdapter):
    """The first ``create`` is stored, then fails (its answer lost): a start that raises though
    the instance is there."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def create(self, *args: Any, **kwargs: Any) -> bool:
        created = await super().create(*args, **kwargs)
        await trio.sleep(1.0)
        if not self.failed:
            self.failed = True
            raise tf.StorageUnavailableError("the answer was lost")
        return created


async def test_a_signal_sent_as_a_start_fails_reaches_the_run_of_the_start_made_again(
        autojump_clock: trio.testing.MockClock) -> None:
    """A start whose answer is lost raises, though the instance is stored; a signal sent as it
    was stored waits, and the start made again (same id) runs the instance, which takes it."""
    async with engine_on(LostCreateAnswer()) as engine:
        engine.register(receiver("x"))
        async with trio.open_nursery() as nursery:
            async def start_once() -> None:
                with pytest.raises(tf.StorageUnavailableError):
                    await engine.start("recv", instance_id="lost")
            nursery.start_soon(start_once)
            await trio.sleep(0.5)
            await engine.signal("lost", "x", "kept")
        assert await engine.start("recv", instance_id="lost") == "lost"
        done = await finish(engine, "lost")
    assert done.status == "completed" and done.output == ["kept"]


async def test_a_cancel_as_the_start_is_stored_ends_the_instance_and_returns(
        autojump_clock: trio.testing.MockClock) -> None:
    """``cancel()`` and ``signal()`` of an instance whose start is still being stored: both wait
    for it; the cancel ends it cancelled; ``wait()`` returns."""
    async with engine_on(SlowStorage(create_takes=1.0)) as engine:
        engine.register(receiver("x", "x"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(engine.start, "recv", instance_id="c"))
            await trio.sleep(0.5)
            await engine.signal("c", "x", "one")
            with trio.fail_after(60):
                assert await engine.cancel("c") is True
        done = await finish(engine, "c")
    assert done.status == "cancelled"


# -- e08e804: children started here -----------------------------------------------------------------

def quick_child() -> tf.WorkflowDefinition:
    async def echo(ctx: tf.WorkflowContext) -> Any:
        return ctx.input

    return tf.workflow("kid").step("echo", echo).build()


async def test_children_that_end_before_their_parent_waits_are_taken(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """Children that end at once (before the parent's lane waits on them), in a map and on the
    main line, with one slot for the family or many: the parent takes every end."""
    parent = (tf.workflow("parent")
              .child("first", workflow="kid")
              .map("each", items=lambda ctx: ctx.input,
                   branch=tf.branch("one").child("c", workflow="kid").build())
              .build())
    for max_running in (1, 3, 100):
        async with engine_on(storage(), max_running=max_running) as engine:
            engine.register(quick_child())
            engine.register(parent)
            iid = await engine.start("parent", list(range(6)))
            done = await finish(engine, iid)
        assert done.status == "completed", max_running
        assert done.output == list(range(6))


async def test_a_child_ending_while_its_parent_leaves_memory_wakes_it(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """A child that ends as its parent rests or has left memory (its end comes at every
    moment around the parent's parking): the parent wakes and takes it."""
    kid = tf.workflow("slowkid").wait("nap", seconds=lambda ctx: ctx.input).build()
    parent = tf.workflow("p").child("c", workflow="slowkid", input=lambda ctx: ctx.input).build()
    async with engine_on(storage()) as engine:
        engine.register(kid)
        engine.register(parent)
        ids = [await engine.start("p", t) for t in (0.0, 0.5, 0.99, 1.0, 1.01, 1.5, 2.0, 2.02, 5.0)]
        for iid in ids:
            assert (await finish(engine, iid)).status == "completed"


# -- restarts -------------------------------------------------------------------------------------

async def test_a_signal_sent_to_a_fresh_run_just_before_the_engine_closes_is_taken_once(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """Signals sent to a run started here, the engine closing at once after (before or while the
    run takes them): the next engine's resume takes each exactly once, in order."""
    for pause in (0.0, 0.001, 0.5, 2.0):
        adapter = storage()
        async with engine_on(adapter) as engine:
            engine.register(receiver("x", "x"))
            iid = await engine.start("recv")
            await engine.signal(iid, "x", "a")
            await engine.signal(iid, "x", "b")
            await trio.sleep(pause)
        async with engine_on(storage()) as engine:
            engine.register(receiver("x", "x"))
            done = await finish(engine, iid)
            left = await engine.adapter.signals(iid)
        assert done.status == "completed" and done.output == ["a", "b"], pause
        assert left == []
        if isinstance(adapter, MemoryAdapter):
            break  # (the memory fixture gives one adapter: later rounds would see the ids before)


async def test_crashes_of_a_receiving_parent_with_a_child_end_as_without(
        autojump_clock: trio.testing.MockClock) -> None:
    """Crash exploration: a parent that receives two signals around a child step ends as the run
    without a crash at every write, each signal taken once."""
    wf = (tf.workflow("fam")
          .receive("one", signal="go")
          .child("kid", workflow="kid", input=lambda ctx: ctx.steps["one"])
          .receive("two", signal="go")
          .pass_("both", transform=lambda ctx: [ctx.steps["kid"], ctx.steps["two"]], end=True)
          .build())
    report = await tf.testing.explore_crashes(wf, signals=[("go", 1), ("go", 2)], also=[quick_child()])
    assert report.baseline.status == "completed" and report.baseline.output == [1, 2]
    assert report.divergent == ()


# -- 30c3e5e: Flag against trio.Event ---------------------------------------------------------------

from trioflow.actors._flag import Flag  # noqa: E402


async def test_a_flag_set_before_anyone_waits_returns_at_once_yet_checkpoints(
        autojump_clock: trio.testing.MockClock) -> None:
    flag = Flag()
    flag.set()
    flag.set()  # (again: nothing)
    assert flag.is_set()
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await flag.wait()  # a checkpoint, as Event.wait is on a set event


async def test_a_flag_wakes_every_waiter_and_none_cancelled_while_waiting(
        autojump_clock: trio.testing.MockClock) -> None:
    """Many waiters (the first in its slot, the others in the list), some cancelled while they
    wait (the first among them, so that a later waiter takes its slot): set() wakes exactly the
    ones still waiting, and a cancelled one is not woken (nor broken) later."""
    flag = Flag()
    woken: list[int] = []
    scopes: dict[int, trio.CancelScope] = {}

    async def waiter(n: int) -> None:
        with trio.CancelScope() as scope:
            scopes[n] = scope
            await flag.wait()
            woken.append(n)

    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(waiter, n)
        await trio.sleep(1)
        for n in (0, 3, 7):  # (0: whichever took the first slot, maybe; the others in the list)
            scopes[n].cancel()
        await trio.sleep(1)
        for n in range(10, 13):  # new waiters after the cancels
            nursery.start_soon(waiter, n)
        await trio.sleep(1)
        flag.set()
    assert sorted(woken) == [n for n in range(13) if n not in (0, 3, 7)]


async def test_a_cancel_and_a_set_in_one_pass_wake_the_waiter_once(autojump_clock: trio.testing.MockClock) -> None:
    """set() and a cancellation of the waiter in the same pass: the waiter ends once, either
    woken or cancelled, as with trio.Event."""
    for set_first in (True, False):
        for event_kind in (Flag, trio.Event):
            flag = event_kind()
            ends: list[str] = []

            async def waiter(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
                with trio.CancelScope() as scope:
                    task_status.started(scope)
                    await flag.wait()
                    ends.append("woken")
                    return
                ends.append("cancelled")  # pragma: no cover (only when cancelled)

            async with trio.open_nursery() as nursery:
                scope = await nursery.start(waiter)
                await trio.sleep(1)
                if set_first:
                    flag.set()
                    scope.cancel()
                else:
                    scope.cancel()
                    flag.set()
            assert len(ends) == 1, (event_kind, set_first, ends)


def test_a_flag_set_for_good_is_waited_on_from_another_trio_run() -> None:
    flag = Flag()

    async def set_it() -> None:
        flag.set()

    async def wait_it() -> str:
        await flag.wait()
        return "ok"

    trio.run(set_it)
    assert trio.run(wait_it) == "ok"


async def test_many_callers_of_wait_on_one_instance_all_return_and_one_cancelled_does_not_matter(
        autojump_clock: trio.testing.MockClock, storage: Callable[[], Adapter]) -> None:
    """Many ``wait()`` callers of one running instance, some giving up (cancelled) while they
    wait, and some calling once it has ended: all the others get its end."""
    async with engine_on(storage()) as engine:
        engine.register(receiver("x"))
        iid = await engine.start("recv")
        got: list[str] = []

        async def waiter(give_up: bool) -> None:
            with trio.move_on_after(0.5 if give_up else math.inf):
                got.append((await engine.wait(iid)).status)

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(waiter, n % 4 == 0)
            await trio.sleep(1)
            await engine.signal(iid, "x", 1)
        assert got == ["completed"] * 15
        assert (await finish(engine, iid)).status == "completed"


# -- generated interleavings of start, signal and cancel ----------------------------------------------

from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


class Jittery(MemoryAdapter):
    """A MemoryAdapter whose answers come late (the write or read is made at once): a create by
    the first drawn delay, a read of signals by the last, the others by the delays in turn;
    starts, signals and reads overlap in every order."""

    def __init__(self, delays: list[float], events: Any = None) -> None:
        super().__init__()
        self.delays, self.n = delays or [0.0], 0
        #: By signal payload: when its adapter call returned (the signal stored, for ``signal()``).
        self.returned: dict[Any, int] = {}
        self.events = events

    async def _late(self, delay: float | None = None) -> None:
        if delay is None:
            self.n += 1
            delay = self.delays[self.n % len(self.delays)]
        if delay >= 0:  # (negative: an answer at once, without a checkpoint, as a MemoryAdapter's)
            await trio.sleep(delay)

    async def create(self, *args: Any, **kwargs: Any) -> bool:
        created = await super().create(*args, **kwargs)
        await self._late(self.delays[0])
        return created

    async def send_signal(self, *args: Any) -> int | None:
        seq = await super().send_signal(*args)
        await self._late()
        self._returned(args[0], args[2])
        return seq

    async def send_signal_and_load(self, *args: Any) -> Any:
        answer = await super().send_signal_and_load(*args)
        await self._late()
        self._returned(args[0], args[2])
        return answer

    def _returned(self, instance_id: str, payload: bytes) -> None:
        if self.events is not None and instance_id == "it":
            self.returned[msgpack.unpackb(payload)] = next(self.events)

    async def signals(self, instance_id: str) -> list[tuple[int, str, bytes]]:
        found = await super().signals(instance_id)
        await self._late(self.delays[-1])
        return found

    async def load(self, instance_id: str) -> Any:
        found = await super().load(instance_id)
        await self._late()
        return found


_op = st.one_of(
    st.tuples(st.just("start"), st.sampled_from([None, 0.5, 3.0])),
    st.tuples(st.just("signal"), st.just(None)),
    st.tuples(st.just("start, then signal"), st.sampled_from([None, 0.5])),
    st.tuples(st.just("cancel"), st.just(None)),
)


@given(
    ops=st.lists(st.tuples(st.sampled_from([0.0, 0.1, 0.3, 0.7, 1.5, 4.0]), _op), min_size=1, max_size=10),
    delays=st.lists(st.sampled_from([-1.0, 0.0, 0.05, 0.2, 0.5, 1.2]), max_size=6),
    queued=st.booleans(),
)
@example(ops=[(0.0, ("signal", None)), (0.0, ("signal", None)), (0.0, ("start", None)), (0.0, ("start", None)),
              (0.0, ("start", None)), (0.0, ("signal", None))], delays=[0.0, -1.0], queued=False)  # (found at e08e804)
def test_generated_starts_signals_and_cancels_take_each_signal_once_in_order(
        ops: list[tuple[float, tuple[str, Any]]], delays: list[float], queued: bool) -> None:
    """Starts (given id, maybe delayed; maybe queued behind an instance holding the only slot),
    signals and cancels at generated times over storage answering late: ``wait()`` returns; each
    signal stored is taken at most once, and those not taken are still stored; a signal stored
    (its adapter call returned, as docs/waiting.md counts it) before another was sent is taken
    before it."""
    tf.testing.run(_run_generated, ops, delays, queued)


async def _run_generated(ops: list[tuple[float, tuple[str, Any]]], delays: list[float], queued: bool) -> None:
    events = iter(range(10**6))
    adapter = Jittery(delays, events)
    called: dict[int, int] = {}
    acked: dict[int, int] = {}
    async with engine_on(adapter, max_running=1 if queued else 10) as engine:
        engine.register(receiver("x", "x", "x"))
        engine.register(tf.workflow("block").receive("hold", signal="free").build())
        holder = await engine.start("block") if queued else None

        async def do(at: float, op: str, arg: Any, n: int) -> None:
            await trio.sleep(at)
            if op.startswith("start"):
                await engine.start("recv", instance_id="it", delay=arg)
            if op.endswith("signal"):
                called[n] = next(events)
                try:
                    await engine.signal("it", "x", n)
                except (tf.UnknownInstanceError, tf.InstanceNotLiveError):
                    del called[n]
                    return
                acked[n] = next(events)
            elif op == "cancel":
                try:
                    await engine.cancel("it")
                except tf.UnknownInstanceError:
                    pass

        with trio.fail_after(10**5):
            async with trio.open_nursery() as nursery:
                for n, (at, (op, arg)) in enumerate(ops):
                    nursery.start_soon(do, at, op, arg, n)
            if holder is not None:
                await engine.signal(holder, "free")
            if await engine.get_instance("it") is None:
                return
            await trio.sleep(10)
            with contextlib.suppress(tf.InstanceNotLiveError):
                for n in range(100, 103):  # enough to finish it, if it is still waiting
                    called[n] = next(events)
                    await engine.signal("it", "x", n)
                    acked[n] = next(events)
            done = await engine.wait("it")
            left = [msgpack.unpackb(p) for _, _, p in await engine.adapter.signals("it")]
    taken = [r.output for r in done.history if r.step_name.startswith("r") and r.status == "completed"]
    assert len(taken) == len(set(taken))
    assert set(taken) | set(left) == set(acked) | (set(called) & (set(taken) | set(left)))
    assert not set(taken) & set(left)
    stored = adapter.returned
    for a in stored:
        for b in called:
            if stored[a] < called[b] and b in taken:
                assert a in taken and taken.index(a) < taken.index(b), (a, b, taken)
