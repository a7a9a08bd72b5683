"""Signals sent while an instance's start is stored, and after: none overtakes a call made
before it that is still under way (from a review of 3502ee7, which found them taken out of
order; they pass since the calls for an id go one at a time while any is queued)."""

from __future__ import annotations

import trio
import trio.testing

from trioflow.testing import open_test_engine

from test_review_of_child_hold import SIX, SlowCreates, six


async def test_signals_sent_once_the_start_returned_do_not_overtake_those_sent_while_it_was_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """docs/waiting.md, Signals: "First in, first out. Signals of one name are taken in the
    order they were stored"; a signal "sent while its start is still being stored is stored at
    once if its row is there, else once that start is; such calls store their signals one at
    a time, in the order they were made". runtime/_engine.py ``signal()``: "One at a time, in
    the order called: a signal must not overtake one sent before it." ``signal()`` "returns
    once it is stored".

    Reproduction: storage whose create takes 1 s; ``start("six", instance_id="o")`` in a task;
    ``signal("o", "go", i)`` for i = 0, 1, 2 in tasks 0.1 s apart while it stores; the task
    that started it then, once ``start()`` returned, awaits ``signal("o", "go", i)`` for
    i = 3, 4, 5, one after another.

    Before a8e93ce the receives took ``[3, 4, 5, 0, 1, 2]`` every time. Signal 0 (called
    0.7 s before ``start()`` even returned) found no row, and waits under the per-id FIFO lock
    for the store to end before it sends again; signals made once the run is live skip that
    lock (``running`` is set, ``storing`` is ``None``) and are stored, and return, before it.
    Three calls that each began after signal 0 began, and each returned (stored) before it, are
    taken first."""
    outputs = []
    for _attempt in range(3):
        async with open_test_engine(adapter=SlowCreates()) as engine:
            engine.register(six)
            async with trio.open_nursery() as nursery:

                async def start_then_signal() -> None:
                    await engine.start("six", None, instance_id="o")
                    for i in range(3, SIX):
                        await engine.signal("o", "go", i)

                nursery.start_soon(start_then_signal)
                for i in range(3):
                    await trio.sleep(0.1)
                    nursery.start_soon(engine.signal, "o", "go", i)
            with trio.fail_after(60):
                outputs.append((await engine.wait("o")).output)
    assert all(output == list(range(SIX)) for output in outputs), outputs
