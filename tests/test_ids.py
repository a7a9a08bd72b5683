"""Instance ids: unique, time-ordered, and not shared with a forked child."""

from __future__ import annotations

import os
import re

import pytest

from trioflow._ids import new_instance_id


def test_ids_are_unique_hex_and_time_ordered_past_a_block() -> None:
    ids = [new_instance_id() for _ in range(2_000)]  # several blocks of read-ahead randomness
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)  # the time part never goes back


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
