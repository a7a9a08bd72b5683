"""Many signals pending at once: each receive step takes the oldest pending signal of its own
name, whatever else is pending (SPEC §13: first in, first out per name). A run holding many
takes them through an index by name (actors/_run.py, ``INDEX_FROM``); these properties hold it
to the order a walk over them all gives, with signals of several names interleaved, some never
taken, and more sent while the instance takes them."""

from __future__ import annotations

from collections import deque
from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow.testing import open_test_engine

NAMES = ("a", "b", "c", "d")


def _receiver(takes: list[str]) -> tf.WorkflowDefinition:
    builder = tf.workflow("receiver")
    for i, name in enumerate(takes):
        builder.receive(f"r{i}", signal=name)
    # (Last, a signal sent after all the others: the instance is live while they are sent.)
    return builder.receive("done", signal="done").build()


def _model(sent: list[tuple[str, int]], takes: list[str]) -> list[int]:
    """What each receive step takes: the oldest signal of its name sent and not taken yet."""
    queues: dict[str, deque[int]] = {name: deque() for name in NAMES}
    for name, payload in sent:
        queues[name].append(payload)
    return [queues[name].popleft() for name in takes]


async def _run(before: list[tuple[str, int]], after: list[tuple[str, int]], takes: list[str],
               adapter: Any) -> list[Any]:
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(_receiver(takes))
        # A delayed start: every signal sent before it runs is pending when its first receive
        # step looks (and stays stored, then held, while it takes them one by one).
        iid = await engine.start("receiver", None, delay=60)
        for name, payload in before:
            await engine.signal(iid, name, payload)
        await trio.sleep(120)
        for name, payload in after:
            await engine.signal(iid, name, payload)
        await engine.signal(iid, "done")
        done = await engine.wait(iid)
    assert done.status == "completed", done.error
    return [record.output for record in done.history][:-1]


def _plan(draw: Any) -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[str]]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=60))
    sent = [(name, i) for i, name in enumerate(names)]
    split = draw(st.integers(0, len(sent)))
    # The receive steps take some of what is sent, by name, in any order of names.
    taken = draw(st.lists(st.sampled_from(sorted(set(names))), max_size=len(names)))
    counts = {name: names.count(name) for name in NAMES}
    takes = []
    for name in taken:
        if counts[name]:
            counts[name] -= 1
            takes.append(name)
    return sent[:split], sent[split:], takes or [names[0]]


@st.composite
def plans(draw: Any) -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[str]]:
    return _plan(draw)


@settings(max_examples=60, deadline=None)
@given(plan=plans())
def test_each_receive_takes_the_oldest_pending_signal_of_its_name(
        plan: tuple[list[tuple[str, int]], list[tuple[str, int]], list[str]]) -> None:
    before, after, takes = plan
    got = trio.run(_run, before, after, takes, tf.adapters.MemoryAdapter(),
                   clock=trio.testing.MockClock(autojump_threshold=0))
    assert got == _model(before + after, takes)


def test_forty_pending_signals_of_four_names_are_taken_first_in_first_out_per_name(tmp_path: Any) -> None:
    """On SQLite too, past the count from which a run indexes them by name."""
    sent = [(NAMES[i % 4], i) for i in range(40)]
    takes = ["d", "a", "a", "c", "b", "d"] * 5
    got = trio.run(_run, sent, [], takes, tf.adapters.SQLiteAdapter(tmp_path / "s.db"),
                   clock=trio.testing.MockClock(autojump_threshold=0))
    assert got == _model(sent, takes)
