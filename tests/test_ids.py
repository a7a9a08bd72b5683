"""Instance ids: unique, time-ordered, and not shared with a forked child; creation times."""

from __future__ import annotations

import os
import re
import time
import uuid

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._ids import new_instance_id


def test_ids_are_unique_hex_and_time_ordered_past_a_block() -> None:
    ids = [new_instance_id() for _ in range(2_000)]  # several blocks of read-ahead randomness
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)  # the time part never goes back


def test_ids_are_uuid7s_whose_time_is_their_creation() -> None:
    before = int(time.time() * 1000)
    ids = [new_instance_id() for _ in range(600)]
    after = int(time.time() * 1000)
    for i in ids:
        parsed = uuid.UUID(i)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and parsed.hex == i
        assert before <= parsed.int >> 80 <= after
    # 74 random bits each: the version and variant digits are fixed, the others vary.
    assert {i[12] for i in ids} == {"7"} and {i[16] for i in ids} == set("89ab")
    assert all(len({i[k] for i in ids}) == 16 for k in (13, 17, 31))


# Python 3.12 warns of a fork in a process with threads (pytest's may have some): this child
# only writes to a pipe and exits.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_forked_child_does_not_hand_out_its_parents_next_ids() -> None:
    new_instance_id()  # the block is read: both processes would pop the same next parts from it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, "".join(new_instance_id()[12:] for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 1000).decode()
    os.close(read)
    os.waitpid(pid, 0)
    mine = "".join(new_instance_id()[12:] for _ in range(3))
    assert len(child) == 60
    assert child != mine


async def _noop(ctx: object) -> None:
    pass


async def _started_ended(count: int, skip: float = 0.0) -> list[tf.WorkflowInstance]:
    """``count`` instances started at one virtual instant (``skip`` virtual seconds after the
    engine opened, with the run's wall clock), each run to its end."""
    async with tf.open_engine() as engine:
        engine.register(tf.workflow("w").step("a", _noop).build())
        await trio.sleep(skip)
        ids = [await engine.start("w") for _ in range(count)]
        return [await engine.wait(iid) for iid in ids]


def test_an_instance_is_never_created_after_it_started_or_ended() -> None:
    # Creation times are told apart by the least a float can step where the virtual clock
    # stands still; starts and ends are not earlier for it.
    ended = trio.run(_started_ended, 5, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len({i.created_at for i in ended}) == 5
    for i in ended:
        assert i.started_at is not None and i.completed_at is not None
        assert i.created_at <= i.started_at <= i.completed_at


def test_a_run_whose_virtual_clock_skipped_ahead_does_not_move_the_next_runs_creation_times() -> None:
    # A test on a MockClock that ran half a virtual second ahead of the wall clock, then
    # another test in the same process: its instances are created at its own clock's time,
    # not after the first test's, and so never after they end.
    trio.run(_started_ended, 1, 0.5, clock=trio.testing.MockClock(autojump_threshold=0))
    (instance,) = trio.run(_started_ended, 1, clock=trio.testing.MockClock(autojump_threshold=0))
    assert instance.started_at is not None and instance.completed_at is not None
    assert instance.created_at <= instance.started_at <= instance.completed_at
    assert instance.completed_at - instance.created_at < 0.1
