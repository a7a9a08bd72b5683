"""Review of deep child-workflow families (root -> child -> grandchild -> great-grandchild).

Adversarial probes of 3-4 level families mixing sagas, parallel branches, map items, receives and
timers at the leaves, cancels aimed at every level, workflow timeouts over a deeper compensation,
restarts (close/reopen and a real SIGKILL) and purges. No probe found a bug on current code, so
every test here passes today and pins behaviour users rely on (see each docstring).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trioflow as tf
from trioflow.adapters import SQLiteAdapter
from trioflow.testing import open_test_engine, virtual_wall_clock

LEVELS = 4


class Boom(Exception):
    pass


def chain(log: list[str], *, leaf: str = "none", root_fails: bool = False, slow_undo: int | None = None,
          timeout_level: int | None = None, fail_level: int | None = None) -> list[tf.WorkflowDefinition]:
    """w0 -> w1 -> w2 -> w3: each level ``pre`` (compensated), a child step (not the leaf), then
    the leaf's wait (``rx``: a receive, ``hang``: a job that never returns), then ``post``
    (compensated). ``root_fails``: w0's post raises after every child completed."""
    out = []
    for level in range(LEVELS):
        def steps(level: int) -> tuple[Any, ...]:
            async def pre(ctx: tf.WorkflowContext) -> int:
                log.append(f"pre{level}")
                return level

            async def unpre(ctx: tf.WorkflowContext, result: int) -> None:
                log.append(f"unpre{level}")
                if level == slow_undo:
                    await trio.sleep(100)

            async def post(ctx: tf.WorkflowContext) -> int:
                if level == fail_level:
                    await trio.sleep(10)
                    raise Boom(f"level {level} fails")
                log.append(f"post{level}")
                if level == 0 and root_fails:
                    raise Boom("root fails after its whole family completed")
                return level

            async def unpost(ctx: tf.WorkflowContext, result: int) -> None:
                log.append(f"unpost{level}")
            return pre, unpre, post, unpost
        pre, unpre, post, unpost = steps(level)
        b = tf.workflow(f"w{level}").step("pre", pre, unpre)
        if level < LEVELS - 1:
            b = b.child("kid", workflow=f"w{level + 1}")
        elif leaf == "rx":
            b = b.receive("rx", signal="go")
        elif leaf == "hang":
            async def hang(ctx: tf.WorkflowContext) -> None:
                await trio.sleep_forever()
            b = b.step("hang", hang)
        b = b.step("post", post, unpost)
        if level == timeout_level:
            b = b.with_timeout(50)
        out.append(b.build())
    return out


def member_ids(root: str) -> list[str]:
    return [root + "/kid#1" * depth for depth in range(LEVELS)]


async def statuses(engine: tf.Engine, ids: list[str]) -> list[str]:
    return [(await engine.get_instance(i)).status for i in ids]  # type: ignore[union-attr]


def once_each(log: list[str]) -> None:
    assert [k for k, v in Counter(log).items() if v != 1] == [], log


async def test_root_failing_after_its_family_completed_undoes_every_level_once_newest_first(
        autojump_clock: trio.testing.MockClock) -> None:
    """Passes today; pins the nested saga order across four levels: each child is undone as a unit
    at its step's place (its own newest first), each compensation exactly once, and every member
    below the root ends ``compensated``."""
    log: list[str] = []
    async with open_test_engine() as engine:
        for d in chain(log, root_fails=True):
            engine.register(d)
        root = await engine.start("w0", {})
        with trio.fail_after(100):
            inst = await engine.wait(root)
        assert (inst.status, inst.compensated_steps) == ("failed", ("kid", "pre"))
        assert await statuses(engine, member_ids(root)) == ["failed"] + ["compensated"] * 3
    assert log[8:] == ["unpost1", "unpost2", "unpost3", "unpre3", "unpre2", "unpre1", "unpre0"]
    once_each(log)


@pytest.mark.parametrize("leaf", ["rx", "hang"])
@pytest.mark.parametrize("target", range(LEVELS))
async def test_a_cancel_at_any_level_reaches_the_leaf_and_statuses_agree(
        autojump_clock: trio.testing.MockClock, target: int, leaf: str) -> None:
    """Passes today; pins that ``cancel()`` of the root, a middle member or the leaf ends every
    member below it ``cancelled``, every ancestor above it ``failed`` (its child failed), and each
    ``pre`` is compensated exactly once, leaf first."""
    log: list[str] = []
    async with open_test_engine() as engine:
        for d in chain(log, leaf=leaf):
            engine.register(d)
        root = await engine.start("w0", {})
        ids = member_ids(root)
        await trio.sleep(5)
        assert await engine.cancel(ids[target]) is True
        with trio.fail_after(100):
            for i in ids:
                await engine.wait(i)
        assert await statuses(engine, ids) == ["failed"] * target + ["cancelled"] * (LEVELS - target)
    assert log[LEVELS:] == ["unpre3", "unpre2", "unpre1", "unpre0"]
    once_each(log)


@pytest.mark.parametrize("timeout_level", range(LEVELS))
async def test_a_workflow_timeout_while_the_leaf_compensates_keeps_every_undo_single(
        autojump_clock: trio.testing.MockClock, timeout_level: int) -> None:
    """Passes today; pins that a workflow timeout (at t=50) at any level, falling while the leaf
    (failed at t=10) is still in a 100 s compensation, neither cuts that compensation short nor
    runs any compensation twice; the timed-out level ends ``timed_out``, the leaf ``failed``."""
    log: list[str] = []
    async with open_test_engine() as engine:
        for d in chain(log, slow_undo=3, fail_level=3, timeout_level=timeout_level):
            engine.register(d)
        root = await engine.start("w0", {})
        ids = member_ids(root)
        with trio.fail_after(1000):
            for i in ids:
                await engine.wait(i)
        got = await statuses(engine, ids)
    assert got[timeout_level] == ("timed_out" if timeout_level < 3 else "failed")
    assert got[:timeout_level] == ["failed"] * timeout_level
    assert got[timeout_level + 1:3] == ["cancelled"] * (2 - timeout_level if timeout_level < 3 else 0)
    assert got[3] == "failed"
    assert log[LEVELS:] == ["unpre3", "unpre2", "unpre1", "unpre0"]


@pytest.mark.parametrize("delay", [0, 0.001, 0.5])
@pytest.mark.parametrize("target", [0, 1, 2])
async def test_a_signal_to_the_leaf_racing_an_ancestors_cancel_undoes_each_step_once(
        autojump_clock: trio.testing.MockClock, target: int, delay: float) -> None:
    """Passes today; pins that a signal to the great-grandchild racing ``cancel()`` of an ancestor
    either is refused (``InstanceNotLiveError``) or lets the leaf complete, and whichever way it
    goes every completed step of the family is compensated exactly once (or none, if the family
    completed), and no member stays ``running``."""
    log: list[str] = []
    async with open_test_engine() as engine:
        for d in chain(log, leaf="rx"):
            engine.register(d)
        root = await engine.start("w0", {})
        ids = member_ids(root)
        await trio.sleep(5)

        async def send() -> None:
            try:
                await engine.signal(ids[3], "go")
            except tf.InstanceNotLiveError:
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.cancel, ids[target])
            await trio.sleep(delay)
            nursery.start_soon(send)
        with trio.fail_after(100):
            for i in ids:
                await engine.wait(i)
        assert "running" not in await statuses(engine, ids)
    once_each(log)
    done = {e for e in log if e.startswith(("pre", "post"))}
    undone = {e[2:] for e in log if e.startswith("un")}
    assert undone in (set(), done)


async def test_an_undo_cut_by_a_close_resumes_where_it_stood(autojump_clock: trio.testing.MockClock,
                                                             tmp_path: Path) -> None:
    """Passes today; pins that an engine closed while the root's compensation is undoing the
    grandchild (its ``pre`` compensation in flight) resumes on the same SQLite file with only that
    compensation run again, the others exactly once."""
    log: list[str] = []
    path, clock = str(tmp_path / "fam.db"), virtual_wall_clock()
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        for d in chain(log, root_fails=True, slow_undo=2):
            engine.register(d)
        root = await engine.start("w0", {})
        await trio.sleep(50)
        assert log[-1] == "unpre2"
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        for d in chain(log, root_fails=True, slow_undo=2):
            engine.register(d)
        with trio.fail_after(1000):
            for i in member_ids(root):
                await engine.wait(i)
        assert await statuses(engine, member_ids(root)) == ["failed"] + ["compensated"] * 3
    assert [k for k, v in Counter(log).items() if v != 1] == ["unpre2"]


async def test_a_purge_of_the_root_alone_leaves_its_descendants_for_the_next_purge(
        autojump_clock: trio.testing.MockClock) -> None:
    """Passes today; pins that ``purge(workflow="w0")`` deletes only the root, and that the
    descendants it left (no longer kept by a stored parent) go with the next purge: none stays
    stored for ever."""
    log: list[str] = []
    async with open_test_engine() as engine:
        for d in chain(log, root_fails=True):
            engine.register(d)
        root = await engine.start("w0", {})
        await engine.wait(root)
        await trio.sleep(100)
        assert await engine.purge(older_than=10, workflow="w0") == 1
        assert [await engine.get_instance(i) is None for i in member_ids(root)] == [True, False, False, False]
        await trio.sleep(100)
        assert await engine.purge(older_than=10) == 3
        assert await engine.get_instances() == []


KILLED = textwrap.dedent("""
    import os, signal, sys, trio, trioflow as tf
    db, log_path, mode = sys.argv[1:4]
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    def note(s):
        os.write(fd, (s + "\\n").encode())
        if mode == "run" and s == "unpre2":
            os.kill(os.getpid(), signal.SIGKILL)
    def defs():
        out = []
        for level in range(4):
            def mk(level):
                async def pre(ctx): note(f"pre{level}"); return level
                async def unpre(ctx, r): note(f"unpre{level}")
                async def post(ctx):
                    note(f"post{level}")
                    if level == 0: raise RuntimeError("root fails")
                    return level
                async def unpost(ctx, r): note(f"unpost{level}")
                return pre, unpre, post, unpost
            pre, unpre, post, unpost = mk(level)
            b = tf.workflow(f"w{level}").step("pre", pre, unpre)
            if level < 3: b = b.child("kid", workflow=f"w{level + 1}")
            out.append(b.step("post", post, unpost).build())
        return out
    async def main():
        async with tf.open_engine(adapter=tf.adapters.SQLiteAdapter(db)) as engine:
            for d in defs(): engine.register(d)
            if mode == "run":
                await engine.start("w0", {}, instance_id="root")
            with trio.fail_after(20):
                for i in ["root", "root/kid#1", "root/kid#1/kid#1", "root/kid#1/kid#1/kid#1"]:
                    print((await engine.wait(i)).status)
    trio.run(main)
""")


def test_sigkill_inside_a_grandchilds_undo_resumes_it_once(tmp_path: Path) -> None:
    """Passes today; pins that a process SIGKILLed inside the grandchild's ``pre`` compensation
    (during the root's compensation, after the levels below were undone) resumes in a new process
    with only that compensation run again, and the family ends failed / compensated."""
    script, db, log = tmp_path / "killed.py", str(tmp_path / "fam.db"), tmp_path / "log"
    script.write_text(KILLED)
    first = subprocess.run([sys.executable, str(script), db, str(log), "run"], capture_output=True, timeout=60)
    assert first.returncode == -9, first.stderr.decode()[-2000:]
    second = subprocess.run([sys.executable, str(script), db, str(log), "resume"], capture_output=True,
                            text=True, timeout=60)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.split() == ["failed", "compensated", "compensated", "compensated"]
    lines = log.read_text().split()
    assert [k for k, v in Counter(lines).items() if v != 1] == ["unpre2"]
    assert lines[-3:] == ["unpre2", "unpre1", "unpre0"]


async def test_cancel_through_an_unregistered_middle_leaves_the_grandchildren_running(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """Passes today; pins the documented (and questionable) behaviour: after a restart that has not
    registered the middle workflow w1, ``cancel(root)`` ends the root ``cancelled`` after its
    compensation bound while w1 keeps a stored cancel and w2, w3 (registered) go on running, their
    leaf step still in flight; once w1 is registered the cancel reaches them."""
    log: list[str] = []
    path, clock = str(tmp_path / "fam.db"), virtual_wall_clock()
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        for d in chain(log, leaf="rx"):
            engine.register(d)
        root = await engine.start("w0", {})
        await trio.sleep(5)
    ids = member_ids(root)
    async with open_test_engine(adapter=SQLiteAdapter(path), clock=clock) as engine:
        defs = chain(log, leaf="rx")
        for i, d in enumerate(defs):
            if i != 1:
                engine.register(d)
        await trio.sleep(1)
        assert await engine.cancel(root) is True
        await trio.sleep(400)
        assert await statuses(engine, ids) == ["cancelled", "running", "running", "running"]
        engine.register(defs[1])
        with trio.fail_after(1000):
            for i in ids:
                await engine.wait(i)
        assert await statuses(engine, ids) == ["cancelled"] * 4
    once_each(log)
