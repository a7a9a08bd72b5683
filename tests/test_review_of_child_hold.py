"""From a review of 1a2c908 (a child step holds its child's id as being stored from before
its parent's write that lists it) and 00bf536.

Each test here failed on main at 1a2c908 because of a library bug, fixed by the commit that added this file.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import trioflow as tf
from trioflow.testing import open_test_engine

from test_review_of_signal_states import _listed_child


kid = tf.workflow("kid").receive("approve", signal="go").build()
dad = tf.workflow("dad").child("c", workflow="kid").build()


class FirstChildCreateFails(tf.adapters.MemoryAdapter):
    """The first ``create()`` of a child (an id with a ``/``) fails with
    ``StorageUnavailableError`` before it stores anything (a dropped connection); the engine
    retries it after a backoff, and the retry stores it."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = trio.Event()

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if "/" in instance_id and not self.failed.is_set():
            await trio.sleep(1)
            self.failed.set()
            raise tf.StorageUnavailableError("connection dropped")
        return await super().create(instance_id, *args, **kwargs)


async def _child_listed_while_its_create_is_retried(engine: tf.Engine, adapter: FirstChildCreateFails) -> tuple[str, str]:
    listed = await _listed_child(engine)
    await adapter.failed.wait()  # the first create failed; its retry comes 50 ms later
    return listed


async def test_a_signal_to_a_listed_child_whose_create_is_retried_is_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """1a2c908 (actors/_child.py ``_start``): a child is "held as being stored from before the
    write that lists it in its parent: a signal(), cancel() or wait() of it meanwhile (a caller
    that read the parent's children) waits for its store rather than find no such instance".
    docs/waiting.md: a signal "sent while its start is still being stored waits for that start";
    storage failures that may pass (``StorageUnavailableError``) are retried.

    What happens instead: the first ``create()`` of the child fails with
    ``StorageUnavailableError`` and ``_start``'s ``finally`` drops the hold (``del
    self._storing[...]``); during the backoff before the retry (which stores the child) the
    id is neither live nor held, so ``signal(child_id, ...)`` goes to the adapter and raises
    ``UnknownInstanceError``; the child, stored 50 ms later, waits for the signal for ever."""
    adapter = FirstChildCreateFails()
    async with open_test_engine(adapter=adapter) as engine:
        parent_id, child_id = await _child_listed_while_its_create_is_retried(engine, adapter)
        await engine.signal(child_id, "go", {"by": "kim"})  # raises UnknownInstanceError
        with trio.fail_after(60):
            done = await engine.wait(parent_id)
        assert done.status == "completed" and done.output == {"by": "kim"}


async def test_cancel_of_a_listed_child_whose_create_is_retried_cancels_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As above, with README's "`engine.cancel(iid)` returns whether the instance is being
    cancelled (`True` [...]; `False` for an unknown or finished instance [...])" and
    1a2c908's promise that ``cancel()`` of a held child "waits for its store rather than find
    no such instance (a cancel would say False, and it would run)".

    What happens instead: during the backoff after the child's first failed create,
    ``cancel(child_id)`` says ``False``; the retry then stores the child, which runs on
    uncancelled (still ``running`` ten seconds later)."""
    adapter = FirstChildCreateFails()
    async with open_test_engine(adapter=adapter) as engine:
        _, child_id = await _child_listed_while_its_create_is_retried(engine, adapter)
        said = await engine.cancel(child_id)
        await trio.sleep(10)
        child = await engine.get_instance(child_id)
        assert child is not None
        assert (said, child.status) == (True, "cancelled"), (said, child.status)


async def test_wait_of_a_listed_child_whose_create_is_retried_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As above, for ``wait()``: 1a2c908 says ``wait()`` of a held child waits for its store.

    What happens instead: ``wait(child_id)`` during the backoff after the child's first failed
    create raises ``UnknownInstanceError``."""
    adapter = FirstChildCreateFails()
    async with open_test_engine(adapter=adapter) as engine:
        _, child_id = await _child_listed_while_its_create_is_retried(engine, adapter)
        with trio.move_on_after(5) as scope:
            await engine.wait(child_id)  # raises UnknownInstanceError
        assert scope.cancelled_caught, "wait() of the child, not yet over, should still be waiting"


async def _three_seconds(ctx: tf.WorkflowContext) -> str:
    await trio.sleep(3)
    return "slow done"


#: Branch "a" starts a child after a timer; branch "b" runs a slow step after the same timer.
two_lanes = (tf.workflow("two-lanes")
             .parallel("both", branches=[
                 tf.branch("a").wait("t", seconds=10).child("c", workflow="kid").build(),
                 tf.branch("b").wait("t2", seconds=10).step("slow", _three_seconds).build()])
             .build())


async def test_a_child_listed_by_a_sibling_lanes_checkpoint_before_its_workflow_is_registered_is_held(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """1a2c908 (actors/_child.py ``_start``): "Held as being stored from before the write that
    lists it in its parent: a signal(), cancel() or wait() of it meanwhile (a caller that read
    the parent's children) waits for its store rather than find no such instance (a cancel
    would say False, and it would run)". docs/fanout.md, Links (quoted in
    tests/test_review_of_signal_states.py): the only listed child that may be missing is one an
    engine stop left unstored. README: ``cancel()`` says ``False`` for an unknown or finished
    instance.

    What happens instead: in a parent taken up from storage, the child step stages its start
    record (naming the child) and then awaits ``until_registered`` *before* it takes the hold
    (moved there by 1a2c908). A sibling branch's checkpoint meanwhile stores that staged start
    record, so the parent lists the child, which is neither held nor stored:
    ``cancel(child_id)`` says ``False``, and once the child's workflow is registered the child
    is stored and runs on, uncancelled."""
    adapter = tf.adapters.MemoryAdapter()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(kid)
        engine.register(two_lanes)
        parent_id = await engine.start("two-lanes")
        await trio.sleep(1)
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(two_lanes)  # "kid" comes later (a module registering after an await)
        await trio.sleep(15)  # the timers fired at 10 s; the slow step ended at 13 s
        parent = await engine.get_instance(parent_id)
        assert parent is not None and parent.status == "running", parent
        # (Since the fix, the child step stages nothing before the child's workflow is
        # registered: no child is listed yet. Every child listed is cancelled, whatever comes.)
        said = {child_id: await engine.cancel(child_id) for child_id in parent.children}
        engine.register(kid)
        await trio.sleep(10)
        for child_id, answer in said.items():
            child = await engine.get_instance(child_id)
            assert child is not None
            assert (answer, child.status) == (True, "cancelled"), (answer, child.status)
        parent = await engine.get_instance(parent_id)
        assert parent is not None and len(parent.children) == 1, parent  # started once registered


#: Six receive steps of one signal name, in a row: the output lists the payloads in the order taken.
SIX = 6
_six_builder = tf.workflow("six")
for _i in range(SIX):
    _six_builder = _six_builder.receive(f"r{_i}", signal="go")
six = _six_builder.step("out", lambda ctx: [ctx.steps[f"r{i}"] for i in range(SIX)]).build()


async def test_on_sqlite_signals_sent_one_after_another_while_the_start_is_stored_keep_their_order(
    autojump_clock: trio.testing.MockClock, tmp_path: Any,
) -> None:
    """docs/waiting.md, Signals: "First in, first out. Signals of one name are taken in the
    order they were stored", and a signal "sent while its start is still being stored waits for
    that start". Before 1a2c908, on SQLite, each such ``signal()`` was queued behind the
    create, in the order the calls were made, and they were taken 0, 1, 2, 3, 4, 5 every time.

    What happens instead: each ``signal()`` now waits on the ``_Storing`` event; the create
    ends, the event wakes every waiter at once, and trio runs woken tasks in no set order
    (it reverses or shuffles each batch), so they reach ``send_signal`` and are stored in a
    scrambled order ([1, 2, 4, 5, 0, 3], [3, 0, 2, 1, 5, 4], ...), although each call began,
    and blocked, before the next one was made.

    Reproduction: on a fresh SQLite file, ``start("six", instance_id="o")`` in a task; then six
    times: ``signal("o", "go", i)`` in a task, and ``wait_all_tasks_blocked()`` before the next."""
    outputs = []
    for attempt in range(8):
        async with open_test_engine(adapter=tf.adapters.SQLiteAdapter(tmp_path / f"f{attempt}.db")) as engine:
            engine.register(six)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: engine.start("six", None, instance_id="o"))
                await trio.testing.wait_all_tasks_blocked()
                for i in range(SIX):
                    nursery.start_soon(engine.signal, "o", "go", i)
                    await trio.testing.wait_all_tasks_blocked()  # this call is under way before the next
            with trio.fail_after(60):
                outputs.append((await engine.wait("o")).output)
    assert all(output == list(range(SIX)) for output in outputs), outputs


class SlowCreates(tf.adapters.MemoryAdapter):
    """Storage that takes a second to create a row (a remote database)."""

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        await trio.sleep(1)
        return await super().create(instance_id, *args, **kwargs)


async def test_signals_sent_a_tenth_of_a_second_apart_while_the_start_is_stored_keep_their_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As above, with storage whose create takes a second (the case 1a2c908 made work: such a
    signal used to raise ``UnknownInstanceError``): six ``signal("o", "go", i)`` calls made
    0.1 s apart, all while the start stores, are stored (and taken) in a scrambled order,
    as the ``_Storing`` event wakes them all together. A webhook that forwards events as they
    come, each in its own request, has them taken out of order."""
    outputs = []
    for _attempt in range(4):
        async with open_test_engine(adapter=SlowCreates()) as engine:
            engine.register(six)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: engine.start("six", None, instance_id="o"))
                for i in range(SIX):
                    await trio.sleep(0.1)
                    nursery.start_soon(engine.signal, "o", "go", i)
            with trio.fail_after(60):
                outputs.append((await engine.wait("o")).output)
    assert all(output == list(range(SIX)) for output in outputs), outputs


class StopsBeforeTheChildIsStored(tf.adapters.MemoryAdapter):
    """``stuck``: a child's ``create()`` never returns (the engine stops meanwhile, between
    storing the child step's start and storing its child). ``slow_reads``: reads of a root
    instance take two seconds (a busy database)."""

    stuck = True
    slow_reads = False

    async def create(self, instance_id: str, *args: Any, **kwargs: Any) -> bool:
        if "/" in instance_id and self.stuck:
            await trio.sleep_forever()
        return await super().create(instance_id, *args, **kwargs)

    async def signals(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if self.slow_reads and "/" not in instance_id:
            await trio.sleep(2)
        return await super().signals(instance_id, *args, **kwargs)

    async def load(self, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        if self.slow_reads and "/" not in instance_id:
            await trio.sleep(2)
        return await super().load(instance_id, *args, **kwargs)


async def test_cancel_of_the_child_a_resumed_running_parent_lists_and_is_about_to_store_cancels_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """docs/fanout.md, Links: "A parent that *ended* after an engine stopped between storing a
    child step's start and storing its child may list a child that was never stored" (only
    one that ended); README: ``cancel()`` says ``False`` for an unknown or finished instance;
    1a2c908: a listed child's ``cancel()`` waits for its store "rather than find no such
    instance (a cancel would say False, and it would run)".

    What happens instead: the parent, resumed by the next engine and *running*, lists the
    child; its resumed child step (``run_child``'s "taken up again" branch) first reads the
    parent's signals and then calls ``_store_child`` with no hold, so meanwhile
    ``cancel(child_id)`` finds no row and says ``False``; the resumed step then stores the
    child, which runs on, uncancelled, waiting for its signal."""
    adapter = StopsBeforeTheChildIsStored()
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(kid)
        engine.register(dad)
        parent_id = await engine.start("dad")
        await trio.sleep(1)  # the child step's start is stored; its child's create never ends
    adapter.stuck, adapter.slow_reads = False, True
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(kid)
        engine.register(dad)
        await trio.sleep(0.5)
        adapter.slow_reads = False
        parent = await engine.get_instance(parent_id)
        assert parent is not None and parent.status == "running" and len(parent.children) == 1
        child_id = parent.children[0]
        said = await engine.cancel(child_id)
        await trio.sleep(10)
        child = await engine.get_instance(child_id)
        assert child is not None
        assert (said, child.status) == (True, "cancelled"), (said, child.status)


async def test_run_workflow_mapping_without_steps_takes_steps_as_a_keyword() -> None:
    """run_workflow's docstring (00bf536): "``run_workflow(driver, {"name": ..., "steps":
    [...], ...})`` [...] gives the name, the steps and any of the other arguments in one
    mapping; the keywords add to it (one given both ways is refused)"; the merge in
    runtime/_inprocess.py lists ``steps`` among the keywords that add to the mapping.

    What happens instead: ``run_workflow(None, {"name": "x"}, steps=[...])`` is refused with
    ``DefinitionError: run_workflow's mapping needs 'steps'``: ``_run_options`` demands
    ``steps`` in the mapping before the keywords are merged, so the ``steps`` entry of the
    merge can never be used (it can only refuse)."""
    result = await tf.run_workflow(None, {"name": "x"}, steps=[tf.step("a", lambda ctx: 1)])
    assert result.status == "completed"


async def test_a_parent_cancelled_while_its_child_is_created_lists_only_a_stored_child(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """actors/_child.py ``_start``: "the child is stored once its start is, cancelled or not,
    and the cancel then stops the lane (and cancel_children the child) as for one started
    before it"; 1a2c908: ``wait()`` of a held child "waits for its store rather than find no
    such instance"; docs/fanout.md, Links: only "a parent that ended after an engine stopped
    between storing a child step's start and storing its child may list a child that was
    never stored".

    What happens instead: with storage whose create takes a second, ``cancel(parent)`` while
    the child's create is in flight cancels that create (``_store_child`` runs outside the
    shield that covers the announce): the child is never stored, yet the cancelled parent
    lists it (``get_instance(child)`` is ``None``, no engine stopped), and a ``wait(child)``
    that was waiting on the hold raises ``UnknownInstanceError``. (A workflow timeout or a
    fail-fast sibling landing in that second does the same.)"""
    async with open_test_engine(adapter=SlowCreates()) as engine:
        engine.register(kid)
        engine.register(dad)
        parent_id = await engine.start("dad")
        await trio.sleep(0.5)  # the parent lists its child; the child's create is in flight
        parent = await engine.get_instance(parent_id)
        assert parent is not None and len(parent.children) == 1
        child_id = parent.children[0]
        waited: list[Any] = []

        async def wait_for_child() -> None:
            try:
                waited.append((await engine.wait(child_id)).status)
            except tf.UnknownInstanceError as exc:
                waited.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_child)
            await trio.sleep(0.1)
            assert await engine.cancel(parent_id)
        with trio.fail_after(60):
            ended = await engine.wait(parent_id)
        child = await engine.get_instance(child_id)
        assert ended.status == "cancelled" and ended.children == (child_id,)
        assert child is not None and child.status == "cancelled", child
        assert waited == ["cancelled"], waited
