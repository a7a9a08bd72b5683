"""From a second adversarial review of continue-as-new: children of earlier runs, end notices
carried across runs, and a SIGKILL guard on SQLite. Each test but the last (a guard) failed until
the commit that added this file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf
from storages import storage  # noqa: F401  (a fixture: the tests taking it run on both adapters)
from trioflow.testing import open_test_engine

sys.path.insert(0, str(Path(__file__).parent))

DAY = 86_400.0


async def _echo(ctx: Any) -> Any:
    return ctx.input


async def test_children_of_earlier_runs_are_purged_while_a_continuing_parent_lives(
    storage: Callable[[], Any], autojump_clock: trio.testing.MockClock,
) -> None:
    """A user's monthly subscription starts an invoice child workflow each month, waits a month
    and continues as new; the engine runs with retention (or the user calls purge()). README:
    continue-as-new makes "an instance's storage and wakes cost the same in its hundredth month
    as in its first", and "what ran before is never compensated", so an earlier run's child can
    never be compensated by its parent any more: retention should take it once it is old enough,
    as it takes any finished instance nothing can need.
    Was: purge() keeps every child "while its parent is stored" (the parent may yet compensate
    it), whichever run started it: after six months purge deletes nothing and storage holds the
    parent plus all six completed invoices of earlier runs; a subscription that lives for years
    keeps every invoice instance for ever, growing by one row (and its records) a month."""
    adapter = storage()
    definition = (tf.workflow("monthly")
                  .child("invoice", workflow="invoice", input=lambda ctx: ctx.input)
                  .wait("month", seconds=30 * DAY)
                  .continue_as_new("renew", input=lambda ctx: ctx.input + 1)
                  .build())
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("invoice").step("issue", _echo).build())
        engine.register(definition)
        iid = await engine.start("monthly", 0)
        await trio.sleep(6 * 30 * DAY + 1)  # runs 0..5 have ended; run 6 waits its month
        parent = await engine.get_instance(iid)
        assert parent.runs == 6
        purged = await engine.purge(older_than=DAY)
        left = sorted(row.id for row in await engine.get_instances())
    # The parent, and at most the child of its current run (which it may yet compensate).
    assert left == sorted([iid, f"{iid}/#6/invoice#1"]), (purged, left)


async def _declined(ctx: Any) -> Any:
    await trio.sleep(10)
    raise ValueError("card declined")


async def test_end_notices_of_an_earlier_runs_cancelled_children_are_not_carried_into_every_run(
    storage: Callable[[], Any], autojump_clock: trio.testing.MockClock,
) -> None:
    """A user's loop runs a fail-fast parallel step each run: one branch starts a child workflow,
    the other charges a card; a decline cancels the child, a catch routes to continue_as_new,
    and the next run tries again. Five runs later the instance waits for a "stop" signal.
    README: the next run keeps the instance's pending signals (the user's, for its receive
    steps) while its history and its storage stay the size of one run.
    Was: the end notice of each cancelled child (a signal trioflow sends the parent,
    "trioflow.child-ended:<child id>") is never consumed, and continue-as-new carries it into
    every later run as a pending signal: after five runs five notices of children of earlier
    runs are pending, one more per run, for ever (read by every wake of the instance). Nothing
    can take them: no step of a later run waits for a child of an earlier one."""
    adapter = storage()
    definition = (tf.workflow("retry-loop")
                  .choice("first", choices=[tf.Choice(condition=lambda ctx: ctx.input >= 5, next="listen")],
                          default="both")
                  .parallel("both", branches=[
                      tf.branch("a").child("kid", workflow="hold", input=lambda ctx: ctx.input).build(),
                      tf.branch("b").step("charge", _declined).build()],
                      catch=[tf.Catch(errors=tf.ALL, next="again")])
                  .continue_as_new("again", input=lambda ctx: ctx.input + 1)
                  .receive("listen", signal="stop")
                  .succeed("done")
                  .build())
    async with open_test_engine(adapter=adapter) as engine:
        engine.register(tf.workflow("hold").step("reserve", _echo).wait("hold", seconds=1000).build())
        engine.register(definition)
        iid = await engine.start("retry-loop", 0)
        await trio.sleep(30_000)
        view = await engine.get_instance(iid)
        assert (view.status, view.runs, view.current_step) == ("running", 5, "listen")
        pending = [name for _, name, _ in await adapter.signals(iid)]
        await engine.signal(iid, "stop", None)
        assert (await engine.wait(iid)).status == "completed"
    stale = [name for name in pending if name.startswith("trioflow.child-ended:")]
    assert stale == [], stale


def _kill_child(tmp_path: Path, mode: str, n: int) -> subprocess.Popen[bytes]:
    child = Path(__file__).with_name("continue_as_new_kill_child.py")
    return subprocess.Popen(
        [sys.executable, str(child), str(tmp_path / "k.db"), str(tmp_path / "log"), mode, str(n)],
        stdout=subprocess.PIPE if mode == "final" else subprocess.DEVNULL)


def test_sigkill_while_subscriptions_continue_on_sqlite_loses_and_doubles_no_run(tmp_path: Path) -> None:
    """Guard (held on 358b3be): six subscriptions (bill, an invoice child, a short real wait,
    continue as new; twelve times) on SQLite; the process is SIGKILLed five times at arbitrary
    points, resumed each time. Every instance completes its 12th run, each run billed, and
    every run's invoice child exists once, completed (13 per instance)."""
    from processes import kill_when  # type: ignore[import-not-found]

    n = 6
    log = tmp_path / "log"
    proc = _kill_child(tmp_path, "run", n)
    kill_when(proc, lambda: log.exists() and "started" in log.read_text() and log.read_text().count("bill") > 10,
              lambda: "waiting for bills")
    for _ in range(4):
        before = log.read_text().count("\n")
        proc = _kill_child(tmp_path, "resume", n)
        kill_when(proc, lambda: log.read_text().count("\n") > before + 5, lambda: "waiting for progress")
    proc = _kill_child(tmp_path, "final", n)
    out, _ = proc.communicate(timeout=300)
    summary = json.loads(out)
    for iid, (status, output, runs, error) in summary["results"].items():
        assert (status, output, runs) == ("completed", 12, 12), (iid, error)
    rows = dict(summary["rows"])
    bills = [line.split() for line in log.read_text().splitlines() if line.startswith("bill")]
    for i in range(n):
        assert sorted({int(b[2]) for b in bills if b[1] == f"s{i}"}) == list(range(13))
        kids = [k for k in rows if k.startswith(f"s{i}/")]
        assert len(kids) == 13 and all(rows[k] == "completed" for k in kids), kids
